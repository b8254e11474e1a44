// rng.cu: raw Philox words and the per-network minibatch order; twins of fastmlp/rng.py.
//
//   philox_words  out (n, 4) uint32 = philox4x32(ctr (n, 4); k0, k1)            rng.philox4x32_np
//                 one thread per counter; exists so the tests can hold the words to the CPU's, bit for bit.
//   permutation   order (S, P) int32: row m = the Fisher-Yates shuffle of subsets[m, :n[m]] for (seeds[m],
//                 epochs[m])                                                    rng.permute_into
//                 one block per network. The shuffle itself is sequential (step i swaps p[i] and p[j_i], i = n-1
//                 down to 1), but its swap targets j_i = (w_i (i + 1)) >> 32 depend on i alone, so the block first
//                 draws all of them in parallel (one Philox call per four steps, as on the CPU), then one thread
//                 walks the swaps. Variant 1 (use_shared = 1, when 2 P words fit in shared memory): the row and its
//                 targets live in shared memory and only the finished row is written out. Variant 2: the same
//                 walk over the global rows `order` and `scratch` (S, P).
//   Networks with trained[m] == 0 (stopped, or diverged) are skipped: their order row is left as it was.
#include "common.cuh"
#include "philox.cuh"

extern "C" __global__ void philox_words(unsigned int* out, const unsigned int* ctr, int n, unsigned int k0,
                                        unsigned int k1) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const long long o = 4LL * i;
    const uint4 w = philox4x32(ctr[o], ctr[o + 1], ctr[o + 2], ctr[o + 3], k0, k1);
    out[o] = w.x;
    out[o + 1] = w.y;
    out[o + 2] = w.z;
    out[o + 3] = w.w;
}

extern "C" __global__ void permutation(int* order, unsigned int* scratch, const int* subsets, const int* n_sub,
                                       const unsigned int* seeds, const int* epochs, const int* trained, int P,
                                       int use_shared) {
    extern __shared__ unsigned int smem[];   // 2 P words when use_shared: the row, then its swap targets
    const int m = blockIdx.x;
    if (trained[m] == 0) return;             // uniform over the block: no thread reaches a barrier alone
    const int n = n_sub[m];
    const long long row0 = (long long)m * P;
    int* p = use_shared ? (int*)smem : order + row0;
    unsigned int* jt = use_shared ? smem + P : scratch + row0;
    const unsigned int seed = seeds[m];
    const unsigned int epoch = (unsigned int)epochs[m];

    // swap targets: step i uses word i % 4 of the Philox block i / 4
    for (int q = threadIdx.x; q < (n + 3) / 4; q += blockDim.x) {
        const uint4 w = philox4x32((unsigned int)q, epoch, 0u, 0u, seed, STREAM_ORDER);
        const unsigned int ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {        // constant indices after unrolling: ws stays in registers
            const int i = 4 * q + e;
            if (i >= 1 && i < n) jt[i] = __umulhi(ws[e], (unsigned int)(i + 1));   // in [0, i]
        }
    }
    for (int i = threadIdx.x; i < n; i += blockDim.x) p[i] = subsets[row0 + i];
    __syncthreads();                         // targets and row complete (global writes too: same block)

    if (threadIdx.x == 0) {
        for (int i = n - 1; i > 0; --i) {
            const int j = (int)jt[i];
            const int t = p[i];
            p[i] = p[j];
            p[j] = t;
        }
    }
    if (use_shared) {
        __syncthreads();
        for (int i = threadIdx.x; i < n; i += blockDim.x) order[row0 + i] = p[i];
    }
}
