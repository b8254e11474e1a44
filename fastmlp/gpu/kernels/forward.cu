// forward.cu: the elementwise work of the forward pass around cuBLAS's GEMMs; twin of reference.forward.
//
// A layer is  z = c (a @ W) + s b,  a (S, R, K), W (S, K, F), b (S, F). The GEMM (strided-batched over the S
// networks, alpha = c) writes c (a @ W) into z; the kernels here do the rest.
//
//   gather_rows  out (S, R, D): row r of network m = X[idx[m * idx_stride + start + r]] when network m is live and
//                start + r < n[m]; zeros otherwise (a short last minibatch, a network that has stopped). The
//                minibatch of every network is gathered into one dense (S, R, D) block so that the first layer is
//                one strided-batched GEMM; zero rows give activations relu(s b) that are finite, and their
//                gradient rows are zeroed by softmax_xent, so they change nothing.
//                grid (R, S), threads over D.
//   bias_relu    z (S, R, F) in place: z = v * (v > 0) with v = z + s b[m, :] when relu != 0, else z = v (logits).
//                v * (v > 0) is the CPU micro-kernels' ReLU: a NaN stays NaN, so a diverging network is seen.
//                grid-stride over the S R F elements: the bias add and the ReLU cost one read and one write of z,
//                instead of a bias GEMM or a second pass.
#include "common.cuh"

extern "C" __global__ void gather_rows(REAL* out, const REAL* X, const int* idx, const int* n, const int* trained,
                                       const int* diverged, int idx_stride, int start, int R, int D) {
    const int r = blockIdx.x;
    const int m = blockIdx.y;
    const int row = start + r;
    const bool valid = is_live(trained, diverged, m) && row < n[m];
    REAL* dst = out + ((long long)m * R + r) * D;
    if (valid) {
        const REAL* src = X + (long long)idx[(long long)m * idx_stride + row] * D;
        for (int d = threadIdx.x; d < D; d += blockDim.x) dst[d] = src[d];
    } else {
        for (int d = threadIdx.x; d < D; d += blockDim.x) dst[d] = REAL(0);
    }
}

extern "C" __global__ void bias_relu(REAL* z, const REAL* bias, REAL s, int relu, int S, int R, int F) {
    const long long total = (long long)S * R * F;
    const long long per_net = (long long)R * F;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long m = e / per_net;
        const int f = (int)(e % F);
        const REAL v = z[e] + s * bias[m * F + f];
        z[e] = relu ? v * (REAL)(v > REAL(0)) : v;
    }
}
