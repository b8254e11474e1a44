// stop.cu: the per-network bookkeeping around an epoch, on the device; twin of the stop rule in
// fastmlp.engine.Engine.fit / train_epochs (and of the loss/error outputs of fastmlp.cpu.train_epoch).
//
//   epoch_begin  trained[m] = active[m]; an active network starts the epoch not diverged (the host activates
//                only networks that may train: fit the ones not stopped, train_epochs the ones not diverged, and
//                the CPU's fit, too, re-derives `diverged` of every network it trains); zero the epoch's
//                accumulators (minibatch loss sum and count, and the stop check's error count and loss sum).
//   epoch_end    for every network that trained this epoch (check = 1: fit's stop rule; check = 0: train_epochs):
//                  mean minibatch loss = loss_sum / steps (non-finite if the network diverged during the epoch)
//                  last  = epochs + 1 >= max_epochs; epochs += 1
//                  check: the stop check scanned the whole training subset (n[m] rows): err, eloss.
//                    diverged  |= non-finite check loss
//                    converged  = !diverged && err == 0                  (stop_loss = 0: the zero-error rule)
//                               = !diverged && eloss / n <= target_loss     (stop_loss = 1: the loss rule)
//                    train_error = err / n if (converged or last or stop_loss) and not diverged, else NaN
//                    train_loss  = eloss / n if (err == 0 or last or stop_loss or the check loss is non-finite)
//                                  and the network did not diverge while training, else the mean minibatch loss
//                    stopped = converged || diverged || epochs >= max_epochs;   active = !stopped
//                  no check: train_loss = mean minibatch loss; active = !diverged.
//                The reported train_error / train_loss follow the CPU engine's: exact values over the whole subset
//                once a network stops, NaN error and the minibatch loss while it trains (the CPU's check stops at
//                the first wrong sample under the zero-error rule; here the check always scans the whole subset,
//                one batched pass). Under the loss rule both scan the whole subset and report exact values.
//                Then every network m < S writes its report row (epochs, converged, diverged, stopped,
//                train_loss, train_error) as float64, which the host copies in one transfer per epoch.
//   One thread per network.
#include "common.cuh"

#define REPORT_COLS 6   // fastmlp.gpu.REPORT names the columns

extern "C" __global__ void epoch_begin(int* trained, int* diverged, double* loss_sum, int* steps, long long* err,
                                       double* eloss, const int* active, int S) {
    const int m = blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= S) return;
    trained[m] = active[m] != 0;
    if (active[m]) diverged[m] = 0;
    loss_sum[m] = 0.0;
    steps[m] = 0;
    err[m] = 0;
    eloss[m] = 0.0;
}

extern "C" __global__ void epoch_end(double* report, int* epochs, int* active, int* stopped, int* converged,
                                     int* diverged, double* train_loss, double* train_error, const int* trained,
                                     const double* loss_sum, const int* steps, const long long* err,
                                     const double* eloss, const int* n, int check, int max_epochs, int stop_loss,
                                     double target_loss, int S) {
    const int m = blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= S) return;
    if (trained[m]) {
        const double nan = __longlong_as_double(0x7ff8000000000000LL);
        const double mean = steps[m] > 0 ? loss_sum[m] / steps[m] : nan;
        const bool last = epochs[m] + 1 >= max_epochs;
        epochs[m] += 1;
        bool div = diverged[m] != 0 || !isfinite(mean);
        double tl = mean;
        if (check) {
            double te = nan;
            bool conv = false;
            if (!div) {
                const double ls = eloss[m];
                const long long e = err[m];
                const bool bad = !isfinite(ls);
                if (e == 0 || last || bad || stop_loss) tl = ls / n[m];
                div = bad;
                conv = !div && (stop_loss ? ls / n[m] <= target_loss : e == 0);
                if (!div && (e == 0 || last || stop_loss)) te = (double)e / n[m];
            }
            converged[m] = conv;
            train_error[m] = te;
            stopped[m] = conv || div || epochs[m] >= max_epochs;
            active[m] = !stopped[m];
        } else {
            active[m] = !div;
        }
        diverged[m] = div;
        train_loss[m] = tl;
    }
    double* row = report + (long long)m * REPORT_COLS;
    row[0] = epochs[m];
    row[1] = converged[m];
    row[2] = diverged[m];
    row[3] = stopped[m];
    row[4] = train_loss[m];
    row[5] = train_error[m];
}
