// backward.cu: the elementwise work of the backward pass around cuBLAS's GEMMs; twin of reference.backward
// (+ the bias half of reference.sgd_step for the hidden layers).
//
// Per layer l = L..1 the engine runs
//   GEMM   da = c_l dz_l @ W_l^T                  the gradient reaching the layer below (old W_l)
//   GEMM   W_l += c_l a_{l-1}^T @ dzs_l           the weight update: dzs = -lr dz, beta = 1, so dW is never stored
//   relu_backward(da -> dz_{l-1}, dzs_{l-1}, b_{l-1})
// and finally W_0 += c_0 x^T @ dzs_0.
//
//   relu_backward  for a (S, R, K) the layer's post-ReLU activations and da (S, R, K) from the GEMM, in place:
//                    dz  = da * (a > 0)                   ReLU mask (a NaN in da stays NaN, as on the CPU)
//                    dzs = -lr[m] dz                      the SGD step's scaled gradient for the next GEMM
//                    b[m, k] -= lr[m] s sum_r dz[m, r, k] bias-gradient reduction fused with the bias update
//                  for the networks this step updates: live, with rows start.. of their subset (n[m] > start).
//                  The others (diverged in this step or before, stopped, past the end of their subset) get
//                  dz = dzs = 0 and keep their bias: da may be NaN there (0 * inf from overflowed weights), and
//                  the next weight-update GEMM must add exactly 0 (softmax_xent zeroed their activations).
//                  one thread per (m, k), looping over the R rows: the row loop reads da and a once, coalesced
//                  along k, and the bias gradient never goes to memory. grid (ceil(K / blockDim), S).
#include "common.cuh"

extern "C" __global__ void relu_backward(REAL* dz, REAL* dzs, REAL* bias, const REAL* a, const REAL* lrs,
                                         const int* n, const int* trained, const int* diverged, REAL s, int start,
                                         int R, int K) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    const int m = blockIdx.y;
    if (k >= K) return;
    long long o = (long long)m * R * K + k;
    if (!is_live(trained, diverged, m) || n[m] <= start) {   // no update from this step
        for (int r = 0; r < R; ++r, o += K) {
            dz[o] = REAL(0);
            dzs[o] = REAL(0);
        }
        return;
    }
    const REAL lr = lrs[m];
    REAL sum = REAL(0);
    for (int r = 0; r < R; ++r, o += K) {
        const REAL g = dz[o] * (REAL)(a[o] > REAL(0));
        dz[o] = g;
        dzs[o] = -lr * g;
        sum += g;
    }
    bias[(long long)m * K + k] -= lr * s * sum;
}
