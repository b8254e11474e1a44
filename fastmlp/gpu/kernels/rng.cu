// rng.cu: raw Philox words and the per-network minibatch order; twins of fastmlp/rng.py.
//
//   philox_words  out (n, 4) uint32 = philox4x32(ctr (n, 4); k0, k1)            rng.philox4x32_np
//                 one thread per counter; exists so the tests can hold the words to the CPU's, bit for bit.
//   permutation   order (S, P) int32: row m = the Fisher-Yates shuffle of subsets[m, :n[m]] for (seeds[m],
//                 epochs[m])                                                    rng.permute_into
//                 one block per network, every thread of it working on the shuffle (see below). Variant 1
//                 (use_shared = 1, when 2 P words fit in shared memory): the row and its reservations live in
//                 shared memory and only the finished row is written out. Variant 2: the same over the global
//                 rows `order` (the row) and `scratch` (S, P) (the reservations).
//   Networks with trained[m] == 0 (stopped, or diverged) are skipped: their order row is left as it was.
//
// The shuffle in parallel, bit-identical to the CPU's sequential walk. The CPU runs step i = n-1 down to 1: swap
// p[i] and p[j_i], j_i = (w_i (i + 1)) >> 32 in [0, i], w_i word i % 4 of philox4x32(i / 4, epoch, 0, 0; seed,
// STREAM_ORDER). Step i touches positions i and j_i only, so it depends only on the earlier steps k > i that touch
// one of them (j_k == i or j_k == j_i); steps that touch disjoint positions commute. The kernel carries out the
// same steps in rounds ("deterministic reservations", Shun, Blelloch, Fineman and Gibbons, SPAA 2015: sequential
// random permutation is highly parallel):
//   reserve   every step i not yet done writes atomicMax(R[i], i) and atomicMax(R[j_i], i);
//   commit    a step that holds both of its reservations (R[i] == i and R[j_i] == i) swaps p[i] and p[j_i] and
//             marks itself done (R[i] = ORDER_DONE);
//   release   every step not yet done clears R[i] and R[j_i] (and thread 0 clears R[0], which has no step).
// A step holds both positions exactly when no earlier step (larger i) that is not yet done touches them, so it
// swaps the same two values as the sequential walk does; the steps committed in one round touch disjoint
// positions. The largest step not yet done always commits, so the loop ends; for random targets it ends after
// O(log n) rounds (about 30 at n = 10^4, 40 at 10^5), carrying out about 3.5 n step-rounds in all.
// Why the marks cannot collide: once step i is done, no step still to do touches position i (one with j_k == i
// would be larger and would have held R[i]), so ORDER_DONE in R[i] is never overwritten; position j_i of a step
// still to do is never done (step j_i comes after step i). The swap targets are drawn again from Philox in every
// phase (one call serves four steps) instead of being stored: the two rows are all the memory the kernel has.
// tests/test_gpu.py runs this kernel against rng.permutation_np for several block sizes, on the host simulator where
// no device is usable (host_cuda.h: the block's threads as fibers, a real barrier at each __syncthreads).
#include "common.cuh"
#include "philox.cuh"

#define ORDER_FREE 0u                       // R[pos]: no step holds position pos (steps are numbered from 1)
#define ORDER_DONE 0xFFFFFFFFu              // R[i]: step i is done, p[i] is final

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

// The swap targets of steps 4q .. 4q+3: j[e] = (w_e (4q + e + 1)) >> 32, w = philox4x32(q, epoch, 0, 0; seed,
// STREAM_ORDER), as rng.permute_into draws them.
__device__ __forceinline__ void order_targets(int q, unsigned int seed, unsigned int epoch, unsigned int j[4]) {
    const uint4 w = philox4x32((unsigned int)q, epoch, 0u, 0u, seed, STREAM_ORDER);
    const unsigned int i0 = 4u * (unsigned int)q;
    j[0] = __umulhi(w.x, i0 + 1u);
    j[1] = __umulhi(w.y, i0 + 2u);
    j[2] = __umulhi(w.z, i0 + 3u);
    j[3] = __umulhi(w.w, i0 + 4u);
}

// Which of the steps 4q .. 4q+3 are still to do: bit e for step i = 4q + e, 1 <= i < n, R[i] != ORDER_DONE.
__device__ __forceinline__ unsigned int steps_left(const volatile unsigned int* R, int q, int n) {
    unsigned int left = 0u;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const int i = 4 * q + e;
        if (i >= 1 && i < n && R[i] != ORDER_DONE) left |= 1u << e;
    }
    return left;
}

extern "C" __global__ void permutation(int* order, unsigned int* scratch, const int* subsets, const int* n_sub,
                                       const unsigned int* seeds, const int* epochs, const int* trained, int P,
                                       int use_shared) {
    extern __shared__ unsigned int smem[];   // 2 P words when use_shared: the row, then its reservations
    const int m = blockIdx.x;
    if (trained[m] == 0) return;             // uniform over the block: no thread reaches a barrier alone
    const int n = n_sub[m];
    const long long row0 = (long long)m * P;
    // volatile: a thread reads what others wrote (and reserved with atomics) in the phase before the barrier
    volatile int* p = use_shared ? (volatile int*)smem : (volatile int*)(order + row0);
    unsigned int* R = use_shared ? smem + P : scratch + row0;
    volatile unsigned int* Rv = R;
    const unsigned int seed = seeds[m];
    const unsigned int epoch = (unsigned int)epochs[m];
    const int groups = (n + 3) / 4;          // step i is in group i / 4, one Philox call per group

    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        p[i] = subsets[row0 + i];
        Rv[i] = ORDER_FREE;
    }
    __syncthreads();

    for (;;) {
        int busy = 0;
        for (int q = threadIdx.x; q < groups; q += blockDim.x) {          // reserve
            const unsigned int left = steps_left(Rv, q, n);
            if (left == 0u) continue;
            busy = 1;
            unsigned int j[4];
            order_targets(q, seed, epoch, j);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                if (left >> e & 1u) {
                    const unsigned int i = 4u * (unsigned int)q + e;
                    atomicMax(R + i, i);
                    atomicMax(R + j[e], i);
                }
            }
        }
        if (!__syncthreads_or(busy)) break;  // every step done (also a barrier)

        for (int q = threadIdx.x; q < groups; q += blockDim.x) {          // commit
            const unsigned int left = steps_left(Rv, q, n);
            if (left == 0u) continue;
            unsigned int j[4];
            order_targets(q, seed, epoch, j);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const unsigned int i = 4u * (unsigned int)q + e;
                if ((left >> e & 1u) && Rv[i] == i && Rv[j[e]] == i) {
                    const int t = p[i];
                    p[i] = p[j[e]];
                    p[j[e]] = t;
                    Rv[i] = ORDER_DONE;
                }
            }
        }
        __syncthreads();

        if (threadIdx.x == 0) Rv[0] = ORDER_FREE;                       // release
        for (int q = threadIdx.x; q < groups; q += blockDim.x) {
            const unsigned int left = steps_left(Rv, q, n);
            if (left == 0u) continue;
            unsigned int j[4];
            order_targets(q, seed, epoch, j);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                if (left >> e & 1u) {
                    Rv[4 * q + e] = ORDER_FREE;
                    Rv[j[e]] = ORDER_FREE;
                }
            }
        }
        __syncthreads();
    }
    if (use_shared) {
        for (int i = threadIdx.x; i < n; i += blockDim.x) order[row0 + i] = p[i];
    }
}
