// One thread of the device kernel of the PME mesh operators (lorem::mesh_spread,
// mesh_interpolate, mesh_gradient, with or without directions; mesh_ops.cpp and
// docs/design.md sections 1.8 and 1.11), in plain C++ that nvcc compiles for the GPU and the
// host compiler for the CPU, so that the tests run every thread on the CPU against the CPU
// kernel.
//
// A thread owns one atom: its B-spline weights along each axis (and their first and second
// derivatives), its stencil's mesh indices, then the operator's sum over the p^3 stencil
// points and the channels. The spread adds into the brick (atomically on the GPU, so its
// sums vary at round-off from run to run); interpolate and gradient write the atom's row.
// Where CUDA would otherwise run the torch-op kernel over chunks of atoms (a hundred
// launches and two host synchronisations per chunk at order 6), this is one launch.
#pragma once

#include <cstdint>

#include "sparse_form_threads.hpp"  // LOREM_HOST_DEVICE, add_to

namespace lorem::mesh_threads {

constexpr int kMaxOrder = 10;

enum Kind : int32_t { kSpread = 0, kInterpolate = 1, kGradient = 2 };

// what a thread found wrong with its atom (the host names the first such atom)
enum Status : int32_t { kFine = 0, kNotFinite = 1, kOutsideBrick = 2 };

template <typename T>
struct MeshForm {
  const T* coordinates = nullptr;  // [N, 3] mesh coordinates u
  const T* charges = nullptr;      // [N, C] (spread, gradient)
  const T* brick = nullptr;        // [C, b0, b1, b2] (interpolate, gradient)
  const T* directions = nullptr;   // [N, 3] h, or null
  T* out = nullptr;                // spread [C, b...] (zero on entry); [N, C]; [N, 3]
  int32_t* status = nullptr;       // [N]
  int64_t lo[3] = {0, 0, 0}, shape[3] = {0, 0, 0}, mesh[3] = {1, 1, 1};
  int32_t periodic = 0;
  int32_t order = 0;
  int32_t kind = kSpread;
  int64_t atoms = 0, channels = 0;
};

// M_p(x + j) for j = p - 1 - t at the stencil points t, and the first and second
// derivatives in x, from the recursion of long_range/bspline.py for the orders
// n = p - 2, p - 1, p: M_n(t) = (t M_{n-1}(t) + (n - t) M_{n-1}(t - 1)) / (n - 1). The
// derivatives are M_{p-1}(x + j) - M_{p-1}(x + j - 1) and M_{p-2}(x + j) -
// 2 M_{p-2}(x + j - 1) + M_{p-2}(x + j - 2). The CPU kernel's stencils use it as well.
template <typename T>
LOREM_HOST_DEVICE inline void spline_table(T x, int p, T* w, T* dw, T* ddw) {
  T value[kMaxOrder], next[kMaxOrder], lower1[kMaxOrder], lower2[kMaxOrder];
  value[0] = T(1);
  for (int n = 2; n <= p; ++n) {
    if (n == p - 1)
      for (int j = 0; j < n - 1; ++j) lower2[j] = value[j];
    if (n == p)
      for (int j = 0; j < n - 1; ++j) lower1[j] = value[j];
    for (int j = 0; j < n; ++j) {
      T term = T(0);
      if (j < n - 1) term += (x + T(j)) * value[j];
      if (j > 0) term += (T(n) - x - T(j)) * value[j - 1];
      next[j] = term / T(n - 1);
    }
    for (int j = 0; j < n; ++j) value[j] = next[j];
  }
  for (int t = 0; t < p; ++t) {
    const int j = p - 1 - t;
    w[t] = value[j];
    T d = T(0), dd = T(0);
    if (j <= p - 2) d += lower1[j];
    if (j >= 1) d -= lower1[j - 1];
    if (j <= p - 3) dd += lower2[j];
    if (j >= 1 && j - 1 <= p - 3) dd -= T(2) * lower2[j - 1];
    if (j >= 2) dd += lower2[j - 2];
    dw[t] = d;
    ddw[t] = dd;
  }
}

LOREM_HOST_DEVICE inline double magnitude(double v) { return v < 0 ? -v : v; }

template <typename T>
LOREM_HOST_DEVICE inline T floor_of(T v) {
  const int64_t truncated = static_cast<int64_t>(v);  // |v| < 4.5e15: exact
  return T(truncated) > v ? T(truncated - 1) : T(truncated);
}

template <typename T>
LOREM_HOST_DEVICE inline void atom_thread(const MeshForm<T>& f, int64_t i) {
  const int p = f.order;
  int64_t index[3][kMaxOrder];
  T w[3][kMaxOrder], dw[3][kMaxOrder], ddw[3][kMaxOrder];
  int32_t status = kFine;
  for (int a = 0; a < 3; ++a) {
    const T value = f.coordinates[3 * i + a];
    // non-finite, or too far out for an integer mesh index (|u| < 2^52 mesh points)
    if (!(magnitude(static_cast<double>(value)) < 4.5e15)) {
      status = kNotFinite;
      break;
    }
    const T below = floor_of(value);
    const int64_t start = static_cast<int64_t>(below) - (p - 1) - f.lo[a];
    if (f.periodic) {
      const int64_t n = f.mesh[a];
      const int64_t first = ((start % n) + n) % n;
      for (int t = 0; t < p; ++t) index[a][t] = (first + t) % n;
    } else {
      if (start < 0 || start + p > f.shape[a]) status = kOutsideBrick;  // named after the loop
      for (int t = 0; t < p; ++t) index[a][t] = start + t;
    }
    spline_table(value - below, p, w[a], dw[a], ddw[a]);
  }
  f.status[i] = status;
  if (status != kFine) return;
  const int64_t s1 = f.shape[1], s2 = f.shape[2], size = f.shape[0] * s1 * s2;
  const T* h = f.directions ? f.directions + 3 * i : nullptr;
  const int64_t C = f.channels;
  // the stencil weight of point (t0, t1, t2): w, or h . grad w
  auto weight = [&](int t0, int t1, int t2) {
    if (h == nullptr) return w[0][t0] * w[1][t1] * w[2][t2];
    return h[0] * dw[0][t0] * w[1][t1] * w[2][t2] + h[1] * w[0][t0] * dw[1][t1] * w[2][t2] +
           h[2] * w[0][t0] * w[1][t1] * dw[2][t2];
  };
  if (f.kind == kSpread) {
    for (int64_t c = 0; c < C; ++c) {
      const T charge = f.charges[i * C + c];
      if (charge == T(0)) continue;  // as the CPU kernel: a zero charge adds nothing
      T* plane = f.out + c * size;
      for (int t0 = 0; t0 < p; ++t0)
        for (int t1 = 0; t1 < p; ++t1) {
          const int64_t row = (index[0][t0] * s1 + index[1][t1]) * s2;
          for (int t2 = 0; t2 < p; ++t2)
            sparse_form::add_to(plane + row + index[2][t2], charge * weight(t0, t1, t2), true);
        }
    }
    return;
  }
  if (f.kind == kInterpolate) {
    for (int64_t c = 0; c < C; ++c) {
      const T* plane = f.brick + c * size;
      T total = T(0);
      for (int t0 = 0; t0 < p; ++t0)
        for (int t1 = 0; t1 < p; ++t1) {
          const int64_t row = (index[0][t0] * s1 + index[1][t1]) * s2;
          for (int t2 = 0; t2 < p; ++t2) total += plane[row + index[2][t2]] * weight(t0, t1, t2);
        }
      f.out[i * C + c] = total;
    }
    return;
  }
  // gradient: r(t) = sum_c B[c, f(i, t)] q[i, c] (no charge skipped: a NaN in the brick
  // stays NaN in the forces), contracted with the derivatives of the weights, or with the
  // Hessian of the weights times h
  T g[3] = {T(0), T(0), T(0)};
  for (int t0 = 0; t0 < p; ++t0)
    for (int t1 = 0; t1 < p; ++t1) {
      const int64_t row = (index[0][t0] * s1 + index[1][t1]) * s2;
      for (int t2 = 0; t2 < p; ++t2) {
        T r = T(0);
        for (int64_t c = 0; c < C; ++c)
          r += f.brick[c * size + row + index[2][t2]] * f.charges[i * C + c];
        const T a0 = w[0][t0], d0 = dw[0][t0], dd0 = ddw[0][t0];
        const T a1 = w[1][t1], d1 = dw[1][t1], dd1 = ddw[1][t1];
        const T a2 = w[2][t2], d2 = dw[2][t2], dd2 = ddw[2][t2];
        if (h == nullptr) {
          g[0] += r * d0 * a1 * a2;
          g[1] += r * a0 * d1 * a2;
          g[2] += r * a0 * a1 * d2;
        } else {
          g[0] += r * (h[0] * dd0 * a1 * a2 + h[1] * d0 * d1 * a2 + h[2] * d0 * a1 * d2);
          g[1] += r * (h[0] * d0 * d1 * a2 + h[1] * a0 * dd1 * a2 + h[2] * a0 * d1 * d2);
          g[2] += r * (h[0] * d0 * a1 * d2 + h[1] * a0 * d1 * d2 + h[2] * a0 * a1 * dd2);
        }
      }
    }
  for (int a = 0; a < 3; ++a) f.out[3 * i + a] = g[a];
}

// The GPU launch (mesh_cuda.cu, compiled when LOREM_CUDA_KERNELS is on): one thread per
// atom; nullptr or the CUDA error's text.
template <typename T>
const char* launch_on_cuda(const MeshForm<T>& form, void* stream);

}  // namespace lorem::mesh_threads
