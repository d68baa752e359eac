// One thread of the device kernel of the edge harmonics and their derivatives
// (lorem::harmonics, harmonics_vjp, harmonics_jvp, harmonics_hvp; docs/design.md
// sections 1.5 and 1.11), in plain C++ that nvcc compiles for the GPU and the host compiler
// for the CPU, so that the tests run every thread on the CPU against the CPU kernel.
//
// A thread owns one edge: the powers of its vector's components, then every output of the
// kind as a run of terms k_t x^a y^b z^c (times G[m_t] and D[axis_t] where the kind has a
// gradient or a direction), the term list sorted by output once per call on the host.
// Where CUDA would otherwise run the torch-op kernel over chunks of edges (a few dozen
// launches per chunk and kind), this is one launch per call.
#pragma once

#include <cstdint>

#include "sparse_form_threads.hpp"  // LOREM_HOST_DEVICE

namespace lorem::harmonics_threads {

// the highest power of a component a thread holds (degree 6 needs 6)
constexpr int kMaxPower = 12;

struct Step {
  int32_t m, axis, a, b, c;  // the term's component m, direction axis, powers
};

struct Run {
  int32_t key, begin, end;  // output `key` sums steps [begin, end)
};

template <typename T>
struct HarmonicsForm {
  const T* vectors = nullptr;    // [P, 3]
  const T* gradient = nullptr;   // [P, M] or null (values, jvp)
  const T* direction = nullptr;  // [P, 3] or null (values, vjp)
  T* out = nullptr;              // [P, width]
  const Step* steps = nullptr;
  const T* coefficients = nullptr;  // one per step
  const Run* runs = nullptr;
  int32_t num_runs = 0;
  int32_t width = 0;  // M (values, jvp) or 3 (vjp, hvp)
  int32_t components = 0;
  int32_t max_power = 0;  // <= kMaxPower
  int64_t num_edges = 0;
};

template <typename T>
LOREM_HOST_DEVICE inline void edge_thread(const HarmonicsForm<T>& f, int64_t p) {
  T power[3][kMaxPower + 1];
  for (int axis = 0; axis < 3; ++axis) {
    const T base = f.vectors[3 * p + axis];
    power[axis][0] = T(1);
    for (int k = 1; k <= f.max_power; ++k)
      power[axis][k] = k == 1 ? base : power[axis][k - 1] * base;
  }
  T* out = f.out + p * f.width;
  for (int key = 0; key < f.width; ++key) out[key] = T(0);  // outputs without terms
  const T* g = f.gradient ? f.gradient + p * f.components : nullptr;
  const T* d = f.direction ? f.direction + 3 * p : nullptr;
  for (int32_t r = 0; r < f.num_runs; ++r) {
    const Run run = f.runs[r];
    T total = T(0);
    for (int32_t k = run.begin; k < run.end; ++k) {
      const Step s = f.steps[k];
      T value = power[0][s.a] * power[1][s.b] * power[2][s.c] * f.coefficients[k];
      if (g) value *= g[s.m];
      if (d) value *= d[s.axis];
      total += value;
    }
    out[run.key] = total;
  }
}

// The GPU launch (harmonics_cuda.cu, compiled when LOREM_CUDA_KERNELS is on): one thread
// per edge; nullptr or the CUDA error's text.
template <typename T>
const char* launch_on_cuda(const HarmonicsForm<T>& form, void* stream);

}  // namespace lorem::harmonics_threads
