// philox.cuh: Philox4x32-10 and the Box-Muller transform, the device twins of fastmlp/rng.py.
//
// Every random number of the project is a pure function of (seed, stream, counter):
//   key = (k0, k1) = (seed, stream), counter = (c0, c1, c2, c3), all uint32 words.
// Counter layouts (rng.py's docstring is the authority):
//   Gaussian vector (seed, stream, a, b): element e is Gaussian number e % 4 of
//     philox4x32(e / 4, a, b, 0; seed, stream)
//   minibatch order of epoch `epoch`: word i % 4 of philox4x32(i / 4, epoch, 0, 0; seed, STREAM_ORDER) drives
//   Fisher-Yates step i.
// Constants come from fastmlp/constants.py as -D options:
//   PHILOX_M0, PHILOX_M1 (round multipliers), PHILOX_W0, PHILOX_W1 (Weyl key increments), PHILOX_ROUNDS,
//   STREAM_TRAIN_X, STREAM_TEST_X, STREAM_INIT, STREAM_ORDER, STREAM_FOLD;
// BOX_MULLER_TWO_PI is rng._TWO_PI (2 pi rounded to float64), also passed in.
//
// The words are bit-identical to the CPU's (integer arithmetic only). The Gaussians are float64 and go through
// CUDA's log, sqrt and sincos, which may differ from the host libm's by an ulp; rounded to float32 (the inputs of
// every dataset) they agree with the CPU's except in the rare case where that ulp crosses a float32 rounding
// boundary, which is why the tests compare inputs to float tolerance and labels exactly.
#ifndef FASTMLP_PHILOX_CUH
#define FASTMLP_PHILOX_CUH

#if !defined(PHILOX_M0) || !defined(PHILOX_ROUNDS) || !defined(STREAM_ORDER) || !defined(BOX_MULLER_TWO_PI)
#error "Philox constants missing: compile with fastmlp.gpu.compile_options"
#endif

// Philox4x32-10 of counter (c0..c3) under key (k0, k1). Each round: two 32x32 -> 64-bit products, hi/lo xor-mixed;
// the key is bumped by the Weyl increments before every round after the first (rng._philox_round).
__device__ __forceinline__ uint4 philox4x32(unsigned int c0, unsigned int c1, unsigned int c2, unsigned int c3,
                                            unsigned int k0, unsigned int k1) {
#pragma unroll
    for (int r = 0; r < PHILOX_ROUNDS; ++r) {
        if (r > 0) {
            k0 += PHILOX_W0;                 // uint32 wrap-around is the CPU's "& 0xFFFFFFFF"
            k1 += PHILOX_W1;
        }
        const unsigned int hi0 = __umulhi(PHILOX_M0, c0), lo0 = PHILOX_M0 * c0;
        const unsigned int hi1 = __umulhi(PHILOX_M1, c2), lo1 = PHILOX_M1 * c2;
        const unsigned int n0 = hi1 ^ c1 ^ k0;
        const unsigned int n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    return make_uint4(c0, c1, c2, c3);
}

// Two standard Gaussians (float64) from two words: u1 = (w0 + 1/2) 2^-32 in (0, 1), u2 = w1 2^-32,
// r = sqrt(-2 log u1), (r cos 2 pi u2, r sin 2 pi u2). Explicit _rn arithmetic: no FMA contraction.
__device__ __forceinline__ double2 box_muller(unsigned int w0, unsigned int w1) {
    const double u1 = __dmul_rn(__dadd_rn((double)w0, 0.5), 0x1p-32);
    const double u2 = __dmul_rn((double)w1, 0x1p-32);
    const double r = sqrt(-2.0 * log(u1));
    double s, c;
    sincos(__dmul_rn(BOX_MULLER_TWO_PI, u2), &s, &c);
    return make_double2(__dmul_rn(r, c), __dmul_rn(r, s));
}

#endif  // FASTMLP_PHILOX_CUH
