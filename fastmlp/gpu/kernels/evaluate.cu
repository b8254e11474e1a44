// evaluate.cu: error count and summed training loss (loss_kind, see common.cuh) of every network over a dataset,
// chunk by chunk; twin of reference.evaluate (and of fastmlp.cpu._evaluate_one).
//
//   evaluate  one block per network m, threads over the chunk's R rows (rows start..start+R-1 of the network's
//             index row idx[m * idx_stride + ...]; idx_stride = 0 when every network sees the same rows). With
//             logits z = zc + s bo[m] (zc (S, R, C) from the GEMM) and y = Y[idx[...]], for rows with
//             start + r < n[m]:
//               err[m]  += #(predicted class != y),  predicted = [z_1 > z_0]
//               loss[m] += sum l(z, y)               (float64; l the loss of code loss_kind)
//             Networks that are not live are skipped. One block per network and chunks launched in order: the
//             accumulators need no atomics. The rows are chunked by the caller so that the activations of a
//             chunk of every network fit in memory; test sets of any size are streamed.
#include "common.cuh"

extern "C" __global__ void evaluate(long long* err, double* loss, const REAL* zc, const REAL* bo, REAL s,
                                    const signed char* Y, const int* idx, const int* n, const int* trained,
                                    const int* diverged, int idx_stride, int start, int R, int loss_kind) {
    __shared__ double red_loss[32];
    __shared__ long long red_err[32];
    const int m = blockIdx.x;
    if (!is_live(trained, diverged, m)) return;              // uniform over the block
    const int rows = max(0, min(R, n[m] - start));
    const REAL b0 = bo[m * N_CLASSES];
    const REAL b1 = bo[m * N_CLASSES + 1];
    double lsum = 0.0;
    long long wrong = 0;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        const long long o = ((long long)m * R + r) * N_CLASSES;
        const REAL z0 = zc[o] + s * b0;
        const REAL z1 = zc[o + 1] + s * b1;
        const int y = Y[idx[(long long)m * idx_stride + start + r]];
        double d1;
        lsum += out_loss((double)z0, (double)z1, y, loss_kind, &d1);
        wrong += (z1 > z0 ? 1 : 0) != y;
    }
    lsum = block_sum(lsum, red_loss);
    wrong = block_sum(wrong, red_err);
    if (threadIdx.x == 0) {
        err[m] += wrong;
        loss[m] += lsum;
    }
}
