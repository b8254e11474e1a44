// f0.cu: a network's change from its initial function (the engines' f0 = "subtract", fastmlp.engine.F0S); twin of
// the F0 term of fastmlp.cpu._output_forward (reference.loss_and_grads with `initial`).
//
//   subtract_f0  zc (S, R, C) in place, one block per network m, threads over the chunk's R rows: for rows with
//                start + r < n[m], with row = idx[m * idx_stride + start + r] - f0_start,
//                  zc[m, r, u] = (zc[m, r, u] - f0[m * f0_stride + row * C + u]) - s bo0[m, u]
//                where f0 holds the raw logits c_L a_L @ W_L of the initial weights (no bias) and bo0 the initial
//                output bias, so that the logits the loss and the check then form, zc + s bo, are z - z0. Before
//                any step the two GEMMs are the same product of the same operands, so zc - f0 is exactly 0 and so
//                is z - z0: the function starts at exactly 0, as on the CPU. Launched between the output GEMM and
//                softmax_xent / evaluate, on the training rows (f0: the initial logits of the whole dataset, f0_start
//                0) or on a chunk of other inputs (f0: that chunk's initial logits, f0_start = start).
#include "common.cuh"

extern "C" __global__ void subtract_f0(REAL* zc, const REAL* f0, const REAL* bo0, REAL s, const int* idx,
                                       const int* n, int idx_stride, int start, int R, long long f0_stride,
                                       int f0_start) {
    const int m = blockIdx.x;
    const int rows = max(0, min(R, n[m] - start));
    const REAL b0 = s * bo0[m * N_CLASSES];
    const REAL b1 = s * bo0[m * N_CLASSES + 1];
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        const long long o = ((long long)m * R + r) * N_CLASSES;
        const long long row = (long long)idx[(long long)m * idx_stride + start + r] - f0_start;
        const REAL* z0 = f0 + (long long)m * f0_stride + row * N_CLASSES;
        zc[o] = (zc[o] - z0[0]) - b0;
        zc[o + 1] = (zc[o + 1] - z0[1]) - b1;
    }
}
