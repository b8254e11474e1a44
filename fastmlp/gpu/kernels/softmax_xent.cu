// softmax_xent.cu: loss and gradient of one training step at the output, fused with the output bias's SGD update;
// twin of reference.output_loss (+ the bias half of reference.sgd_step for the output layer). The file keeps the
// name of its first loss; loss_kind chooses any of fastmlp.constants.LOSSES (common.cuh, out_loss).
//
//   softmax_xent  one block per network m, threads over the B rows of the step's minibatch (rows start..start+B-1
//                 of the network's epoch order). With logits z = zc + s bo[m] (zc (S, B, C) from the GEMM),
//                 nb = the rows network m really has in this step (0 if it is not live):
//                   loss   = sum_{b < nb} l(z_b, y_b) / nb                             (float64, added to loss_sum[m])
//                   dz     (S, B, C) = dl/dz_b / nb, zero on rows b >= nb  (xent: softmax(z_b) - onehot(y_b))
//                   dzs    (S, B, C) = -lr[m] dz       the SGD step's scaled gradient: the weight-update GEMM
//                                                      W += c a^T dzs (beta = 1) applies the update in place
//                   bo[m] -= lr[m] s sum_b dz_b
//                 and steps[m] += 1 when nb > 0, as fastmlp.cpu.train_epoch counts its minibatches.
//                 A non-finite loss marks the network diverged (no more steps this epoch) and, like the CPU, the
//                 step updates nothing. Nor does it for a network with no rows in this step (nb = 0: not live,
//                 or past the end of its subset). For both, dz and dzs are zeroed and so are the network's hidden
//                 activations `act` (L, S, B, H), which the weight-update GEMMs of this step still read: they may
//                 hold inf or NaN (a diverging network, or 0 * inf from weights that overflowed in the network's
//                 last step), and 0 * inf would be NaN. relu_backward zeroes the lower layers' gradients for the
//                 same networks, so their parameters stay exactly as they were, as on the CPU.
//                 Float64 inside, as fastmlp.cpu._loss: z is cast from REAL, the gradient rounded back to REAL.
#include "common.cuh"

extern "C" __global__ void softmax_xent(REAL* dz, REAL* dzs, REAL* bo, double* loss_sum, int* steps, int* diverged,
                                        REAL* act, const REAL* zc, const signed char* Y, const int* idx,
                                        const int* n, const int* trained, const REAL* lrs, REAL s, int idx_stride,
                                        int start, int B, int L, int H, long long act_layer_stride,
                                        int loss_kind) {
    __shared__ double red[32];
    __shared__ int bad;
    const int m = blockIdx.x;
    const int nb = is_live(trained, diverged, m) ? max(0, min(B, n[m] - start)) : 0;
    const long long base = (long long)m * B * N_CLASSES;
    const REAL b0 = bo[m * N_CLASSES];
    const REAL b1 = bo[m * N_CLASSES + 1];

    // pass 1: per-row loss and gradient (threads stride over rows; dz rows are owned by one thread each)
    double lsum = 0.0;
    for (int b = threadIdx.x; b < B; b += blockDim.x) {
        const long long o = base + (long long)b * N_CLASSES;
        REAL d0 = REAL(0), d1 = REAL(0);
        if (b < nb) {
            const int y = Y[idx[(long long)m * idx_stride + start + b]];
            double dl1;                        // dloss/dz1 in float64 (not d1: that is the REAL written below)
            lsum += out_loss((double)(zc[o] + s * b0), (double)(zc[o + 1] + s * b1), y, loss_kind, &dl1);
            const double g1 = dl1 / nb;
            d0 = (REAL)(-g1);
            d1 = (REAL)g1;
        }
        dz[o] = d0;
        dz[o + 1] = d1;
    }
    const double total = block_sum(lsum, red);
    if (threadIdx.x == 0) {
        bad = 0;
        if (nb > 0) {
            const double loss = total / nb;
            loss_sum[m] += loss;
            steps[m] += 1;
            if (!isfinite(loss)) {
                bad = 1;
                diverged[m] = 1;
            }
        }
    }
    __syncthreads();

    if (bad || nb == 0) {                      // no update at all from this step (uniform: `bad` is shared)
        for (int e = threadIdx.x; e < B * N_CLASSES; e += blockDim.x) {
            dz[base + e] = REAL(0);
            dzs[base + e] = REAL(0);
        }
        const long long per_net = (long long)B * H;
        for (int l = 0; l < L; ++l) {
            REAL* a = act + l * act_layer_stride + m * per_net;
            for (long long e = threadIdx.x; e < per_net; e += blockDim.x) a[e] = REAL(0);
        }
        return;
    }

    // pass 2: the SGD step's scaled gradient and the output bias update
    const REAL lr = lrs[m];
    double g0sum = 0.0, g1sum = 0.0;
    for (int b = threadIdx.x; b < B; b += blockDim.x) {
        const long long o = base + (long long)b * N_CLASSES;
        const REAL d0 = dz[o], d1 = dz[o + 1];
        dzs[o] = -lr * d0;
        dzs[o + 1] = -lr * d1;
        g0sum += (double)d0;
        g1sum += (double)d1;
    }
    g0sum = block_sum(g0sum, red);
    g1sum = block_sum(g1sum, red);
    if (threadIdx.x == 0 && nb > 0) {
        // float64 product and difference, rounded once, as the CPU's float32 - float64 update
        bo[m * N_CLASSES] = (REAL)((double)b0 - (double)lr * (double)s * g0sum);
        bo[m * N_CLASSES + 1] = (REAL)((double)b1 - (double)lr * (double)s * g1sum);
    }
}
