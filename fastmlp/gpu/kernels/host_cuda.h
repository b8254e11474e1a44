// host_cuda.h: the CUDA built-ins fastmlp's kernels use, for a host C++ compiler (g++), so that every kernel file
// compiles for the host (tests/test_gpu.py, under -Wall -Wextra -Wshadow -Werror) and runs in the host simulator
// of the GPU engine (fastmlp.gpu.sim, FASTMLP_CUDASIM=1). Not part of the device build: NVRTC never sees it.
//
// It is not a CUDA implementation, only what these kernels use, with CUDA's semantics where a wrong kernel or a
// wrong launch would otherwise pass on the host:
//   blocks        run one after another, in blockIdx order (x fastest). Blocks of one launch never overlap, so
//                 __shared__ variables are plain static storage: one copy, shared by the block's threads.
//   threads       a block's threads run as fibers on one OS thread, switched only at a barrier, so each barrier
//                 is real: no thread passes __syncthreads (or a warp shuffle) before every thread that must
//                 arrive has arrived. A kernel without any barrier runs its threads as plain calls, one after
//                 another (fastmlp.gpu.sim decides which from the source); a barrier reached in that mode is an
//                 error, never a silent no-op.
//   __syncthreads every live thread of the block must arrive; a block where some threads wait at a barrier while
//                 others have returned is an error (undefined in CUDA), as is a shuffle some lanes skip.
//   warp shuffles __shfl_down_sync over the full warp (mask 0xffffffff), through a per-block exchange buffer:
//                 every lane of the warp must take part (a partial warp is an error, as the mask names lanes that
//                 do not exist).
//   atomics       plain read-modify-write: fibers switch only at barriers, so nothing interleaves inside one.
//   dynamic       `extern __shared__ T name[];` is rewritten by fastmlp.gpu.sim to a pointer into a buffer of the
//   shared mem    launch's size, filled with 0xFF bytes at every block (CUDA leaves it uninitialised) and followed
//                 by a guard that is checked after the launch.
//   math          the host's libm (exp, log, sqrt, sincos may differ from CUDA's by an ulp) and no FMA
//                 contraction (the simulator compiles with -ffp-contract=off; nvcc contracts by default), so
//                 results agree with a device to rounding, not bit for bit, except integer work (Philox words,
//                 orders, labels), which is exact.
#ifndef FASTMLP_HOST_CUDA_H
#define FASTMLP_HOST_CUDA_H

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };
struct uint4 { unsigned int x, y, z, w; };
struct double2 { double x, y; };

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

using std::isfinite;
using std::max;
using std::min;

inline uint4 make_uint4(unsigned int a, unsigned int b, unsigned int c, unsigned int d) { return {a, b, c, d}; }
inline double2 make_double2(double a, double b) { return {a, b}; }
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
// Round-to-nearest arithmetic without contraction: on the host every double operation already is one (SSE2,
// -ffp-contract=off).
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float __double2float_rn(double a) { return (float)a; }
inline double __longlong_as_double(long long a) {
    double d;
    std::memcpy(&d, &a, sizeof d);
    return d;
}

namespace fastmlp_sim {

enum FiberState { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_SHUFFLE, DONE };
constexpr int MAX_THREADS = 1024;
// Each fiber's stack: the kernels' frames and libm's with room to spare. Not a power of two: stacks a power of two
// apart put every fiber's hot top in the same cache set, and switching among 256 fibers then ran 10x slower.
constexpr size_t FIBER_STACK = 64 * 1024 + 13 * 64;
constexpr size_t GUARD = 64;                   // canary bytes after the dynamic shared memory

struct Fiber {
    void* sp;
    int state;
    unsigned int shuffles;                     // shuffles done: their parity picks the exchange buffer
#if !defined(__x86_64__)
    ucontext_t ctx;
#endif
};

struct State {
    std::vector<Fiber> fibers;
    char* stacks = nullptr;                   // FIBER_STACK bytes per fiber, touched only as far as they are used
    void* main_sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t main_ctx;
#endif
    int current = 0;
    bool fiber_mode = false;
    void (*run_thread)(void*) = nullptr;
    void* body = nullptr;
    int or_arrived = 0, or_result = 0;        // __syncthreads_or: the OR of the arrivals, and of the last release
    unsigned long long exchange[2][MAX_THREADS];
    std::vector<unsigned char> dynamic;       // dynamic shared memory, then GUARD canary bytes
    size_t dynamic_bytes = 0;
    bool failed = false;
    char error[512] = {0};
};
inline State state;

inline void fail(const char* what) {
    if (!state.failed) {
        state.failed = true;
        std::snprintf(state.error, sizeof state.error, "%s (block %u,%u,%u thread %u,%u,%u)", what, blockIdx.x,
                      blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    }
}

inline void* dynamic_shared() { return state.dynamic.data(); }

#if defined(__x86_64__)
// Switch stacks: push the callee-saved registers on the current stack, save its pointer in *from, load `to` and
// pop that fiber's registers; `ret` resumes it where it called this (or, the first time, at its entry). About a
// hundred times cheaper than swapcontext, which also saves the signal mask with a system call.
extern "C" void fastmlp_sim_switch(void** from, void* to);
asm(".text\n.p2align 4\n.globl fastmlp_sim_switch\n.hidden fastmlp_sim_switch\n"
    ".type fastmlp_sim_switch,@function\nfastmlp_sim_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n  ret\n"
    ".size fastmlp_sim_switch, .-fastmlp_sim_switch\n");
#endif

inline void to_scheduler(Fiber& f) {
#if defined(__x86_64__)
    fastmlp_sim_switch(&f.sp, state.main_sp);
#else
    swapcontext(&f.ctx, &state.main_ctx);
#endif
}

inline void to_fiber(Fiber& f) {
#if defined(__x86_64__)
    fastmlp_sim_switch(&state.main_sp, f.sp);
#else
    swapcontext(&state.main_ctx, &f.ctx);
#endif
}

extern "C" inline void fastmlp_sim_fiber_entry() {
    state.run_thread(state.body);
    Fiber& f = state.fibers[state.current];
    f.state = DONE;
    to_scheduler(f);
    __builtin_trap();                          // a finished fiber is never resumed
}

inline void start_fiber(int t) {
    Fiber& f = state.fibers[t];
    f.state = RUNNABLE;
    f.shuffles = 0;
    char* stack = state.stacks + (size_t)t * FIBER_STACK;
#if defined(__x86_64__)
    // The first switch pops six zero registers and returns into the entry with the stack aligned as after a call.
    void** sp = (void**)(((unsigned long long)(stack + FIBER_STACK)) & ~15ULL);
    *--sp = nullptr;                           // the entry's return address: it never returns
    *--sp = (void*)&fastmlp_sim_fiber_entry;
    for (int r = 0; r < 6; ++r) *--sp = nullptr;
    f.sp = sp;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stack;
    f.ctx.uc_stack.ss_size = FIBER_STACK;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, (void (*)())fastmlp_sim_fiber_entry, 0);
#endif
}

inline void set_thread(int t) {
    threadIdx.x = (unsigned int)t % blockDim.x;
    threadIdx.y = (unsigned int)t / blockDim.x % blockDim.y;
    threadIdx.z = (unsigned int)t / (blockDim.x * blockDim.y);
}

// The calling thread waits at a barrier of `kind` until the scheduler releases it.
inline void wait(int kind) {
    if (!state.fiber_mode) {
        fail("a barrier (__syncthreads or a warp shuffle) in a kernel the simulator ran without fibers: "
             "fastmlp.gpu.sim.uses_barriers missed it");
        return;
    }
    Fiber& f = state.fibers[state.current];
    f.state = kind;
    to_scheduler(f);
}

// Run one block of T threads as fibers: each runs until it waits or returns; then the warps whose lanes all wait
// at a shuffle are released, else, if every thread left waits at __syncthreads, the block barrier is.
inline void run_block_fibers(int T) {
    for (int t = 0; t < T; ++t) start_fiber(t);
    for (;;) {
        for (int t = 0; t < T && !state.failed; ++t) {
            if (state.fibers[t].state != RUNNABLE) continue;
            state.current = t;
            set_thread(t);
            to_fiber(state.fibers[t]);
        }
        if (state.failed) return;
        int done = 0, at_block = 0, at_warp = 0;
        for (int t = 0; t < T; ++t) {
            const int s = state.fibers[t].state;
            done += s == DONE;
            at_block += s == AT_BLOCK_BARRIER;
            at_warp += s == AT_WARP_SHUFFLE;
        }
        if (done == T) return;
        bool released = false;
        for (int w = 0; w * 32 < T; ++w) {
            const int lo = 32 * w, hi = std::min(T, lo + 32);
            int waiting = 0;
            for (int t = lo; t < hi; ++t) waiting += state.fibers[t].state == AT_WARP_SHUFFLE;
            if (waiting == 0) continue;
            set_thread(lo);
            if (hi - lo < 32) {
                fail("a full-mask warp shuffle in a partial warp (blockDim not a multiple of 32)");
                return;
            }
            if (waiting < hi - lo) {
                fail("a warp shuffle that some lanes of the warp skip (they returned or wait at __syncthreads)");
                return;
            }
            for (int t = lo; t < hi; ++t) state.fibers[t].state = RUNNABLE;
            released = true;
        }
        if (released) continue;
        if (done > 0) {
            set_thread(0);
            fail("__syncthreads reached by some threads of the block while others had returned");
            return;
        }
        state.or_result = state.or_arrived;
        state.or_arrived = 0;
        for (int t = 0; t < T; ++t) state.fibers[t].state = RUNNABLE;
    }
}

// One launch: grid, block (x, y, z), dynamic shared memory bytes, whether the kernel needs fibers, and the kernel
// call for the current thread. Returns 0, or 1 with the reason in state.error.
template <typename Body>
int launch(const unsigned int* grid, const unsigned int* block, unsigned long long shared_bytes, int fibers,
           Body& body) {
    state.failed = false;
    state.error[0] = 0;
    state.or_arrived = state.or_result = 0;
    state.fiber_mode = fibers != 0;
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    const int T = (int)(block[0] * block[1] * block[2]);
    if (T < 1 || T > MAX_THREADS) {
        std::snprintf(state.error, sizeof state.error, "%d threads per block (at most %d)", T, MAX_THREADS);
        return 1;
    }
    state.dynamic_bytes = (size_t)shared_bytes;
    state.dynamic.assign(state.dynamic_bytes + GUARD, 0xA5);
    state.run_thread = [](void* b) { (*(Body*)b)(); };
    state.body = &body;
    if (state.fiber_mode && (int)state.fibers.size() < T) {
        delete[] state.stacks;                 // not value-initialised: untouched stack pages cost nothing
        state.stacks = new char[(size_t)T * FIBER_STACK];
        state.fibers.resize(T);
    }
    for (unsigned int bz = 0; bz < grid[2]; ++bz)
        for (unsigned int by = 0; by < grid[1]; ++by)
            for (unsigned int bx = 0; bx < grid[0]; ++bx) {
                blockIdx = {bx, by, bz};
                std::memset(state.dynamic.data(), 0xFF, state.dynamic_bytes);
                if (state.fiber_mode) {
                    run_block_fibers(T);
                } else {
                    for (int t = 0; t < T && !state.failed; ++t) {
                        set_thread(t);
                        body();
                    }
                }
                if (state.failed) return 1;
            }
    for (size_t i = 0; i < GUARD; ++i) {
        if (state.dynamic[state.dynamic_bytes + i] != 0xA5) {
            std::snprintf(state.error, sizeof state.error,
                          "the kernel wrote past its %zu bytes of dynamic shared memory", state.dynamic_bytes);
            return 1;
        }
    }
    return 0;
}

}  // namespace fastmlp_sim

inline void __syncthreads() { fastmlp_sim::wait(fastmlp_sim::AT_BLOCK_BARRIER); }

inline int __syncthreads_or(int predicate) {
    fastmlp_sim::state.or_arrived |= predicate != 0;
    fastmlp_sim::wait(fastmlp_sim::AT_BLOCK_BARRIER);
    return fastmlp_sim::state.or_result;
}

template <typename T>
T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = 32) {
    using namespace fastmlp_sim;
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of a value wider than 64 bits");
    if (mask != 0xffffffffu) fail("__shfl_down_sync with a partial mask (the simulator knows only full warps)");
    if (!state.fiber_mode) {
        wait(AT_WARP_SHUFFLE);                 // reports the error
        return var;
    }
    const int t = state.current;
    const unsigned int buffer = state.fibers[t].shuffles++ & 1u;
    std::memcpy(&state.exchange[buffer][t], &var, sizeof(T));
    wait(AT_WARP_SHUFFLE);
    const unsigned int lane = (unsigned int)t & 31u;
    if (lane % (unsigned int)width + delta >= (unsigned int)width) return var;   // CUDA: the caller's own value
    T out;
    std::memcpy(&out, &state.exchange[buffer][t + (int)delta], sizeof(T));
    return out;
}

inline unsigned int atomicMax(unsigned int* address, unsigned int val) {
    const unsigned int old = *address;
    if (val > old) *address = val;
    return old;
}

inline int atomicAdd(int* address, int val) {
    const int old = *address;
    *address = old + val;
    return old;
}

#endif  // FASTMLP_HOST_CUDA_H
