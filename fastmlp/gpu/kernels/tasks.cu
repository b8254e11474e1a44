// tasks.cu: fused data generation; twins of fastmlp/tasks.py (_labeled_rows, _gaussian_rows).
//
//   labeled_rows   x (n, D) float32, y (n,) int8: sample i = start + i of a split is the Gaussian vector
//                  (seed, stream, a = start + i, b = 0), rounded to float32, and its label is computed from the row
//                  just drawn:  M = sum_{j < n_shifts} prod_t x[(j + offsets[t]) mod D],  y = [M > 0]
//                  (k-local: n_shifts = 1 and the offsets are the k indices; k-global: n_shifts = D).
//   gaussian_rows  z (n, D) float64: the same Gaussian vectors unrounded (the temperature task filters them by FFT,
//                  which fastmlp.gpu.generate does with cupy.fft).
//
// One block per sample: the block's threads draw the row's Philox blocks in parallel (four Gaussians each) and
// write it once; thread 0 then computes M from the float32 row it can see after the barrier, in float64, in the
// CPU's order (j ascending, t ascending) with explicit round-to-nearest products and sums (no FMA contraction),
// so the label equals the CPU's bit for bit whenever the row does. The row never leaves the block between draw
// and label, and no dataset crosses the bus.
#include "common.cuh"
#include "philox.cuh"

extern "C" __global__ void labeled_rows(float* x, signed char* y, const int* offsets, int k, int n_shifts,
                                        unsigned int seed, unsigned int stream, unsigned int start, int n, int D) {
    const int i = blockIdx.x;
    if (i >= n) return;
    float* row = x + (long long)i * D;
    const unsigned int a = start + (unsigned int)i;   // the sample index is one 32-bit counter word
    for (int q = threadIdx.x; q < (D + 3) / 4; q += blockDim.x) {
        const uint4 w = philox4x32((unsigned int)q, a, 0u, 0u, seed, stream);
        const double2 g01 = box_muller(w.x, w.y);
        const double2 g23 = box_muller(w.z, w.w);
        const int e = 4 * q;
        row[e] = __double2float_rn(g01.x);
        if (e + 1 < D) row[e + 1] = __double2float_rn(g01.y);
        if (e + 2 < D) row[e + 2] = __double2float_rn(g23.x);
        if (e + 3 < D) row[e + 3] = __double2float_rn(g23.y);
    }
    __syncthreads();                                  // the row is complete and visible to thread 0
    if (threadIdx.x == 0) {
        double feature = 0.0;
        for (int j = 0; j < n_shifts; ++j) {
            double p = 1.0;
            for (int t = 0; t < k; ++t) {
                int c = j + offsets[t];               // j < D and offsets < D: one subtraction is mod D
                if (c >= D) c -= D;
                p = __dmul_rn(p, (double)row[c]);
            }
            feature = __dadd_rn(feature, p);
        }
        y[i] = feature > 0.0 ? 1 : 0;
    }
}

extern "C" __global__ void gaussian_rows(double* z, unsigned int seed, unsigned int stream, unsigned int start,
                                         int n, int D) {
    const int i = blockIdx.x;
    if (i >= n) return;
    double* row = z + (long long)i * D;
    const unsigned int a = start + (unsigned int)i;
    for (int q = threadIdx.x; q < (D + 3) / 4; q += blockDim.x) {
        const uint4 w = philox4x32((unsigned int)q, a, 0u, 0u, seed, stream);
        const double2 g01 = box_muller(w.x, w.y);
        const double2 g23 = box_muller(w.z, w.w);
        const int e = 4 * q;
        row[e] = g01.x;
        if (e + 1 < D) row[e + 1] = g01.y;
        if (e + 2 < D) row[e + 2] = g23.x;
        if (e + 3 < D) row[e + 3] = g23.y;
    }
}
