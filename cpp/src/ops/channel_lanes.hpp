// Fixed channel counts in registers for the operators' CPU kernels (message_ops.cpp,
// coupling_ops.cpp).
#pragma once

#include <cstring>

namespace lorem {

// The fixed-channel loops are compiled twice on x86-64 with GCC: for x86-64-v3 (AVX2 and
// FMA, where 8 float channels are one register and an entry one fused multiply-add) and
// for the baseline, chosen once when the library loads (target_clones, an ifunc).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define LOREM_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LOREM_VECTOR_CLONES
#endif

// A fixed number of channels as one value of GCC's (and Clang's) vector extension: the
// accumulators of the hot loops then live in registers. Accumulating into a small array
// through a pointer instead went through memory on every step (store-to-load forwarding
// in the dependency chain), about three times slower on the default model's 8 channels.
//
// Every member is always inlined: a vector passed or returned by value crosses a call
// with the calling convention of the caller's instruction set, so an out-of-line copy
// (compiled for the baseline) called from the x86-64-v3 clone would exchange it wrongly;
// unoptimised builds (-O0) did, and gave zeros.
#define LOREM_LANES_INLINE inline __attribute__((always_inline))
template <typename scalar_t, int kLanes>
struct Lanes {
  typedef scalar_t Vector __attribute__((vector_size(sizeof(scalar_t) * kLanes)));
  static LOREM_LANES_INLINE Vector load(const scalar_t* from) {
    Vector v;
    std::memcpy(&v, from, sizeof(Vector));
    return v;
  }
  static LOREM_LANES_INLINE void store(scalar_t* to, Vector v) {
    std::memcpy(to, &v, sizeof(Vector));
  }
  static LOREM_LANES_INLINE void add_to(scalar_t* to, Vector v) { store(to, load(to) + v); }
  static LOREM_LANES_INLINE scalar_t sum(Vector v) {
    scalar_t total = 0;
    for (int c = 0; c < kLanes; ++c) total += v[c];
    return total;
  }
};

}  // namespace lorem
