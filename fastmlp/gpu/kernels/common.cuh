// common.cuh: what every fastmlp kernel shares.
//
// Shape legend: M networks (S of them in the leading "slots" a call works on), B minibatch,
// R rows of a chunk, N samples, D input dim, H hidden width, L hidden layers, C = N_CLASSES = 2, K / F the fan-in /
// fan-out of a layer. Every array is dense row-major; a per-network array (S, R, F) holds network m's rows at
// m * R * F.
//
// Compile-time constants arrive as -D options built by fastmlp.gpu.compile_options from fastmlp/constants.py:
//   REAL                 float or double: the engine's dtype
//   N_CLASSES            output units (the softmax kernels are written for 2)
//   PHILOX_*, STREAM_*   see philox.cuh
// No system header is included: NVRTC (through CuPy) compiles these files at run time, and nvcc --cubin in the
// tests; fastmlp.gpu inlines the #include "..." lines itself so that CuPy's disk cache sees every byte. For the host
// (the simulator, the host-warnings test) g++ compiles them with host_cuda.h, which brings the CUDA built-ins.
#ifndef FASTMLP_COMMON_CUH
#define FASTMLP_COMMON_CUH

#ifndef REAL
#error "compile with -DREAL=float or -DREAL=double (fastmlp.gpu.compile_options)"
#endif
#if N_CLASSES != 2
#error "the softmax kernels are written for two classes"
#endif

// A network takes part in this epoch's training (and in the stop check) when it was active at the epoch's start
// (`trained`, set by epoch_begin) and has not diverged since (`diverged`, set by softmax_xent).
__device__ __forceinline__ bool is_live(const int* trained, const int* diverged, int m) {
    return trained[m] != 0 && diverged[m] == 0;
}

// Cross-entropy of the two logits z0, z1 against class y, in float64; *p1 = softmax(z)[1].
// Written exactly as fastmlp.cpu._xent (max as Python's max: z1 only if z1 > z0), so that a NaN logit gives a
// NaN loss on both backends.
__device__ __forceinline__ double xent2(double z0, double z1, int y, double* p1) {
    const double mx = z1 > z0 ? z1 : z0;
    const double lse = mx + log(exp(z0 - mx) + exp(z1 - mx));
    *p1 = exp(z1 - lse);
    return lse - (y == 1 ? z1 : z0);
}

// The training loss of one sample, of code loss_kind (fastmlp.constants.LOSSES: 0 xent, 1 mse, 2 hinge2), in
// float64, and *d1 = dloss/dz1 (dloss/dz0 = -*d1 for every one of them). Written exactly as fastmlp.cpu._loss:
//   xent    cross-entropy of the two logits (xent2), d1 = p1 - y
//   mse     (f - t)^2 / 2 with f = z1 - z0, t = 2y - 1, d1 = f - t
//   hinge2  max(0, 1 - t f)^2 / 2, d1 = -t max(0, 1 - t f)
__device__ __forceinline__ double out_loss(double z0, double z1, int y, int loss_kind, double* d1) {
    if (loss_kind == 0) {
        double p1;
        const double v = xent2(z0, z1, y, &p1);
        *d1 = p1 - (double)y;
        return v;
    }
    const double f = z1 - z0;
    const double t = 2.0 * (double)y - 1.0;
    if (loss_kind == 1) {
        *d1 = f - t;
        return 0.5 * (f - t) * (f - t);
    }
    const double gap = 1.0 - t * f;
    if (gap > 0.0) {
        *d1 = -t * gap;
        return 0.5 * gap * gap;
    }
    *d1 = 0.0;
    return 0.0;
}

// Sum over a warp; lane 0 holds the total.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block; thread 0 holds the total. blockDim.x must be a multiple of 32 (at most 1024), every thread
// of the block must call it, and `shared` must hold 32 values. Safe to call twice in a row with the same buffer.
template <typename T>
__device__ T block_sum(T v, T* shared) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();                         // a previous call may still be reading `shared`
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = threadIdx.x < (blockDim.x >> 5) ? shared[threadIdx.x] : T(0);
    if (warp == 0) v = warp_sum(v);
    return v;
}

#endif  // FASTMLP_COMMON_CUH
