// init.cu: every network's initial weights and biases, drawn on the device from the same Philox streams as the
// CPU; twin of reference.init_params (which says, through reference.init_draws, what each layer draws).
//
//   init_values  out (M, n) REAL: row m = round(factor x_e scale), e < n, x the vector (seeds[m], STREAM_INIT, a, b)
//                of rng.py's counter layout (element e from word e % 4 of philox4x32(e / 4, a, b, 0)):
//                  uniform = 0  a standard Gaussian (Box-Muller, as rng.gaussian_np)
//                  uniform = 1  2 u - 1, u = (w_e + 1/2) 2^-32 in (0, 1)         (as rng.uniform_np)
//                in float64 with explicit round-to-nearest products (the reference's factor * x, then * scale),
//                rounded once to REAL: the uniform draws equal the CPU's bit for bit, the Gaussians up to the ulp by
//                which CUDA's log and sincos may differ from the host's.
//                One thread per group of four elements (one Philox call), grid (ceil(n / 4 / blockDim), M): a layer
//                of every network in one launch, written once, and nothing crosses the bus (on the host, NumPy took
//                about 80 s and several GB for 400 networks at H = 500, L = 5).
#include "common.cuh"
#include "philox.cuh"

extern "C" __global__ void init_values(REAL* out, const unsigned int* seeds, int n, unsigned int a, unsigned int b,
                                       int uniform, double factor, double scale) {
    const int q = blockIdx.x * blockDim.x + threadIdx.x;
    const int m = blockIdx.y;
    if (4LL * q >= n) return;
    const uint4 w = philox4x32((unsigned int)q, a, b, 0u, seeds[m], STREAM_INIT);
    double x[4];
    if (uniform) {
        const unsigned int words[4] = {w.x, w.y, w.z, w.w};
        for (int e = 0; e < 4; ++e) {
            const double u = __dmul_rn(__dadd_rn((double)words[e], 0.5), 0x1p-32);
            x[e] = __dadd_rn(__dmul_rn(2.0, u), -1.0);
        }
    } else {
        const double2 g01 = box_muller(w.x, w.y);
        const double2 g23 = box_muller(w.z, w.w);
        x[0] = g01.x;
        x[1] = g01.y;
        x[2] = g23.x;
        x[3] = g23.y;
    }
    REAL* row = out + (long long)m * n;
    for (int e = 0; e < 4 && 4 * q + e < n; ++e) row[4 * q + e] = (REAL)__dmul_rn(__dmul_rn(factor, x[e]), scale);
}
