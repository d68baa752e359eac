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
template <typename scalar_t, int kLanes>
struct Lanes {
  typedef scalar_t Vector __attribute__((vector_size(sizeof(scalar_t) * kLanes)));
  static Vector load(const scalar_t* from) {
    Vector v;
    std::memcpy(&v, from, sizeof(Vector));
    return v;
  }
  static void add_to(scalar_t* to, Vector v) { store(to, load(to) + v); }
  static void store(scalar_t* to, Vector v) { std::memcpy(to, &v, sizeof(Vector)); }
  static scalar_t sum(Vector v) {
    scalar_t total = 0;
    for (int c = 0; c < kLanes; ++c) total += v[c];
    return total;
  }
};

}  // namespace lorem
