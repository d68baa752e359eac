// Fused particle-mesh operators of smooth PME (python/lorem_torch/long_range/pme.py,
// docs/design.md section 2): the B-spline assignment of charges to a mesh brick and the
// interpolation back, without the [N, p^3, C] stencil tables of the plain PyTorch path.
//
// All of them are derivatives of one form of a brick B [C, b0, b1, b2], charges q [N, C]
// and mesh coordinates u [N, 3] (u_a = N_a s_a, s the fractional coordinates):
//
//   T(B, q, u) = sum_i sum_t sum_c B[c, f(i, t)] q[i, c] w(u_i, t)
//
// with t = (t0, t1, t2) in [0, p)^3, w(u, t) = prod_a M_p(x_a + p - 1 - t_a), x = u - floor(u)
// and f(i, t) the brick index of mesh point floor(u_i) - p + 1 + t (wrapped around when the
// brick is the whole periodic mesh: lo = 0, shape = mesh). Then
//
//   mesh_spread(q, u)          = dT/dB  [C, b0, b1, b2]
//   mesh_interpolate(B, u)     = dT/dq  [N, C]
//   mesh_gradient(B, q, u)     = dT/du  [N, 3]
//
// and with directions h [N, 3] (the weights w replaced by h_i . grad_u w), the derivatives
// of h . dT/du, which are the backward of mesh_gradient (force training differentiates
// the forces once more):
//
//   mesh_spread(q, u, h)       = d(h . dT/du)/dB
//   mesh_interpolate(B, u, h)  = d(h . dT/du)/dq
//   mesh_gradient(B, q, u, h)  = d(h . dT/du)/du   (the Hessian of T in u times h)
//
// so every backward is made of the three operators, called through the dispatcher. A
// third derivative is refused by name. Kernels: CPU (loops; the spread in parallel over
// channels, so that no two threads write one mesh point; the others in parallel over
// atoms); CompositeExplicitAutograd (torch operations over chunks of atoms: bounded memory
// on CUDA and any other device, and the reference the CPU kernel is tested against through
// lorem::_mesh_op_by_chunks); Autograd.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "channel_lanes.hpp"
#include "mesh_threads.hpp"

#ifdef LOREM_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace {

using at::Tensor;
namespace mesh_threads = lorem::mesh_threads;

constexpr int64_t kMaxOrder = mesh_threads::kMaxOrder;  // orders 4, 6, 8, 10 (accuracy.py)
constexpr int64_t kChunkElements = 1 << 22;  // composite kernel: [atoms, p^3, C] per chunk

// Where the stencils of the atoms land: the brick [lo, lo + shape) of the mesh, periodic
// when it is the whole mesh.
struct Brick {
  std::array<int64_t, 3> lo{}, shape{}, mesh{};
  int64_t order = 0;
  bool periodic = false;
  int64_t size() const { return shape[0] * shape[1] * shape[2]; }
};

std::string list_string(const std::array<int64_t, 3>& v) {
  std::ostringstream s;
  s << "[" << v[0] << ", " << v[1] << ", " << v[2] << "]";
  return s.str();
}

Brick make_brick(at::IntArrayRef lo, at::IntArrayRef shape, at::IntArrayRef mesh, int64_t order,
                 const char* op) {
  TORCH_CHECK(lo.size() == 3 && shape.size() == 3 && mesh.size() == 3, op,
              ": brick_lo, brick shape and mesh must have 3 entries each");
  TORCH_CHECK(order >= 4 && order <= kMaxOrder && order % 2 == 0, op,
              ": PME order must be 4, 6, 8 or 10, got ", order);
  Brick brick;
  brick.order = order;
  brick.periodic = true;
  for (int a = 0; a < 3; ++a) {
    brick.lo[a] = lo[a];
    brick.shape[a] = shape[a];
    brick.mesh[a] = mesh[a];
    TORCH_CHECK(shape[a] >= 0 && mesh[a] > 0, op, ": brick shape ", shape, " and mesh ", mesh,
                " must be non-negative and positive");
    brick.periodic = brick.periodic && lo[a] == 0 && shape[a] == mesh[a];
  }
  return brick;
}

void check_coordinates(const Tensor& coordinates, const char* op) {
  TORCH_CHECK(coordinates.dim() == 2 && coordinates.size(1) == 3, op,
              ": mesh coordinates must be [N, 3], got ", coordinates.sizes());
  TORCH_CHECK(coordinates.is_floating_point(), op, ": mesh coordinates must be floating point");
}

void check_same(const Tensor& a, const Tensor& b, const char* what, const char* op) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", what, " of dtype ", a.scalar_type(),
              " against ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), op, ": ", what, " on ", a.device(), " against ",
              b.device());
}

void check_per_atom(const Tensor& t, int64_t atoms, int64_t width, const char* what,
                    const Tensor& coordinates, const char* op) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == atoms && (width < 0 || t.size(1) == width), op, ": ",
              what, " must be [", atoms, ", ",
              (width < 0 ? std::string("C") : std::to_string(width)), "], got ", t.sizes());
  check_same(t, coordinates, what, op);
}

void check_directions(const c10::optional<Tensor>& directions, const Tensor& coordinates,
                      const char* op) {
  if (directions.has_value() && directions->defined())
    check_per_atom(*directions, coordinates.size(0), 3, "directions", coordinates, op);
}

bool has(const c10::optional<Tensor>& t) { return t.has_value() && t->defined(); }

void check_brick_tensor(const Tensor& brick_tensor, const Tensor& coordinates, const char* op) {
  TORCH_CHECK(brick_tensor.dim() == 4, op, ": the brick must be [C, b0, b1, b2], got ",
              brick_tensor.sizes());
  check_same(brick_tensor, coordinates, "brick and mesh coordinates", op);
}

// Each operator's inputs checked against one another (every kernel's first step), and
// the brick they describe.
Brick checked_spread(const Tensor& charges, const Tensor& coordinates,
                     const c10::optional<Tensor>& directions, at::IntArrayRef brick_lo,
                     at::IntArrayRef brick_shape, at::IntArrayRef mesh, int64_t order,
                     const char* op) {
  check_coordinates(coordinates, op);
  check_per_atom(charges, coordinates.size(0), -1, "charges", coordinates, op);
  check_directions(directions, coordinates, op);
  return make_brick(brick_lo, brick_shape, mesh, order, op);
}

Brick checked_interpolate(const Tensor& brick_tensor, const Tensor& coordinates,
                          const c10::optional<Tensor>& directions, at::IntArrayRef brick_lo,
                          at::IntArrayRef mesh, int64_t order, const char* op) {
  check_coordinates(coordinates, op);
  check_brick_tensor(brick_tensor, coordinates, op);
  check_directions(directions, coordinates, op);
  return make_brick(brick_lo, brick_tensor.sizes().slice(1), mesh, order, op);
}

Brick checked_gradient(const Tensor& brick_tensor, const Tensor& charges, const Tensor& coordinates,
                       const c10::optional<Tensor>& directions, at::IntArrayRef brick_lo,
                       at::IntArrayRef mesh, int64_t order, const char* op) {
  check_coordinates(coordinates, op);
  check_brick_tensor(brick_tensor, coordinates, op);
  check_per_atom(charges, coordinates.size(0), brick_tensor.size(0), "charges", coordinates, op);
  check_directions(directions, coordinates, op);
  return make_brick(brick_lo, brick_tensor.sizes().slice(1), mesh, order, op);
}

// -- CPU kernels --

// Per atom: the brick index of each stencil point along each axis, and the 1D weights and
// their first and second derivatives (mesh_threads::spline_table, which the device threads
// use too): index [N, 3, p], weights [3 (w, dw, ddw), N, 3, p].
template <typename scalar_t>
struct Stencils {
  int64_t p = 0;
  std::vector<int64_t> index;
  std::vector<scalar_t> w, dw, ddw;
  std::vector<int64_t> order;  // atoms by mesh cell, so that consecutive stencils overlap

  const int64_t* index_of(int64_t i, int a) const { return index.data() + (i * 3 + a) * p; }
  const scalar_t* w_of(int64_t i, int a) const { return w.data() + (i * 3 + a) * p; }
  const scalar_t* dw_of(int64_t i, int a) const { return dw.data() + (i * 3 + a) * p; }
  const scalar_t* ddw_of(int64_t i, int a) const { return ddw.data() + (i * 3 + a) * p; }
};

template <typename scalar_t>
Stencils<scalar_t> make_stencils(const Tensor& coordinates, const Brick& brick, const char* op) {
  const int64_t atoms = coordinates.size(0), p = brick.order;
  const Tensor u = coordinates.contiguous();
  const scalar_t* u_data = u.data_ptr<scalar_t>();
  Stencils<scalar_t> s;
  s.p = p;
  s.index.resize(atoms * 3 * p);
  s.w.resize(atoms * 3 * p);
  s.dw.resize(atoms * 3 * p);
  s.ddw.resize(atoms * 3 * p);
  std::vector<int64_t> key(atoms);
  std::vector<int64_t> bad(atoms, 0);
  at::parallel_for(0, atoms, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t cell[3];
      for (int a = 0; a < 3; ++a) {
        const scalar_t value = u_data[i * 3 + a];
        // non-finite, or too far out for an integer mesh index (|u| < 2^52 mesh points)
        if (!(std::abs(static_cast<double>(value)) < 4.5e15)) {
          bad[i] = 1;
          cell[a] = 0;
          continue;
        }
        const scalar_t floor = std::floor(value);
        cell[a] = static_cast<int64_t>(floor);
        const int64_t start = cell[a] - (p - 1) - brick.lo[a];
        int64_t* index = s.index.data() + (i * 3 + a) * p;
        if (brick.periodic) {
          const int64_t n = brick.mesh[a];
          const int64_t first = ((start % n) + n) % n;
          for (int64_t t = 0; t < p; ++t) index[t] = (first + t) % n;
        } else {
          if ((start < 0 || start + p > brick.shape[a]) && bad[i] == 0) bad[i] = 2;
          for (int64_t t = 0; t < p; ++t)
            index[t] = std::min(std::max<int64_t>(start + t, 0), brick.shape[a] - 1);
        }
        mesh_threads::spline_table<scalar_t>(
            value - floor, static_cast<int>(p), s.w.data() + (i * 3 + a) * p,
            s.dw.data() + (i * 3 + a) * p, s.ddw.data() + (i * 3 + a) * p);
      }
      key[i] = (s.index_of(i, 0)[0] * brick.shape[1] + s.index_of(i, 1)[0]) * brick.shape[2] +
               s.index_of(i, 2)[0];
    }
  });
  for (int64_t i = 0; i < atoms; ++i) {
    TORCH_CHECK(bad[i] != 1, op, ": mesh coordinates of atom ", i,
                " are not finite (or beyond 4.5e15 mesh points)");
    TORCH_CHECK(bad[i] != 2, "PME: atoms reach mesh points outside the brick (lo ",
                list_string(brick.lo), ", shape ", list_string(brick.shape),
                "); compute the brick with brick_for");
  }
  s.order.resize(atoms);
  std::iota(s.order.begin(), s.order.end(), 0);
  std::stable_sort(s.order.begin(), s.order.end(),
                   [&](int64_t a, int64_t b) { return key[a] < key[b]; });
  return s;
}

// The loops of the CPU kernels for one PME order P, a compile-time constant so that the
// loops along axis 2 are P-wide vector operations (compiled for x86-64-v3 as well,
// channel_lanes.hpp). Along axis 2 the stencil of most atoms is P consecutive mesh
// points, read and written as one row; those of atoms whose stencil wraps around a
// periodic mesh go point by point. Each atom's P x P row offsets and row weights (axes 0
// and 1) are computed once and used for every channel.
template <typename scalar_t, int P>
struct MeshLoops {
  static constexpr int kRows = P * P;
  const Stencils<scalar_t>& s;
  int64_t s1, s2, size;  // the brick's strides along axes 0 and 1, and a channel's size

  MeshLoops(const Stencils<scalar_t>& stencils, const Brick& brick)
      : s(stencils), s1(brick.shape[1]), s2(brick.shape[2]), size(brick.size()) {}

  // One atom's rows: their offsets into a channel (plus the first point along axis 2 when
  // the stencil is consecutive there), and their weights: w0 w1, or with directions h the
  // factors of w2 and dw2 in h . grad w = (h0 dw0 w1 + h1 w0 dw1) w2 + (h2 w0 w1) dw2.
  struct Atom {
    int64_t rows[kRows];
    scalar_t along_w2[kRows], along_dw2[kRows];
    scalar_t w2[P], dw2[P];
    const int64_t* i2;
    bool consecutive;
  };

  LOREM_LANES_INLINE void prepare(int64_t i, const scalar_t* h, Atom& atom) const {
    const int64_t *i0 = s.index_of(i, 0), *i1 = s.index_of(i, 1);
    atom.i2 = s.index_of(i, 2);
    atom.consecutive = atom.i2[P - 1] == atom.i2[0] + (P - 1);
    const int64_t shift = atom.consecutive ? atom.i2[0] : 0;
    const scalar_t *w0 = s.w_of(i, 0), *w1 = s.w_of(i, 1);
    const scalar_t *dw0 = s.dw_of(i, 0), *dw1 = s.dw_of(i, 1);
    for (int t0 = 0; t0 < P; ++t0) {
      for (int t1 = 0; t1 < P; ++t1) {
        const int k = t0 * P + t1;
        atom.rows[k] = (i0[t0] * s1 + i1[t1]) * s2 + shift;
        if (h == nullptr) {
          atom.along_w2[k] = w0[t0] * w1[t1];
          atom.along_dw2[k] = 0;
        } else {
          atom.along_w2[k] = h[0] * dw0[t0] * w1[t1] + h[1] * w0[t0] * dw1[t1];
          atom.along_dw2[k] = h[2] * w0[t0] * w1[t1];
        }
      }
    }
    for (int t2 = 0; t2 < P; ++t2) {
      atom.w2[t2] = s.w_of(i, 2)[t2];
      atom.dw2[t2] = s.dw_of(i, 2)[t2];
    }
  }

  // mesh_spread for the channels [c_begin, c_end): every atom adds to every channel
  LOREM_VECTOR_CLONES void spread(const scalar_t* q, int64_t channels, const scalar_t* h,
                                  int64_t c_begin, int64_t c_end, scalar_t* out) const {
    Atom atom;
    for (const int64_t i : s.order) {
      bool any = false;
      for (int64_t c = c_begin; c < c_end; ++c) any = any || q[i * channels + c] != scalar_t(0);
      if (!any) continue;
      const scalar_t* hi = h ? h + i * 3 : nullptr;
      prepare(i, hi, atom);
      for (int64_t c = c_begin; c < c_end; ++c) {
        const scalar_t charge = q[i * channels + c];
        if (charge == scalar_t(0)) continue;
        scalar_t* plane = out + c * size;
        scalar_t along[P];
        for (int k = 0; k < kRows; ++k) {
          const scalar_t a = charge * atom.along_w2[k], b = charge * atom.along_dw2[k];
          for (int t2 = 0; t2 < P; ++t2) along[t2] = a * atom.w2[t2] + b * atom.dw2[t2];
          scalar_t* row = plane + atom.rows[k];
          if (atom.consecutive) {
            for (int t2 = 0; t2 < P; ++t2) row[t2] += along[t2];
          } else {
            for (int t2 = 0; t2 < P; ++t2) row[atom.i2[t2]] += along[t2];
          }
        }
      }
    }
  }

  // mesh_interpolate for the atoms s.order[begin, end)
  LOREM_VECTOR_CLONES void interpolate(const scalar_t* b, int64_t channels, const scalar_t* h,
                                       int64_t begin, int64_t end, scalar_t* out) const {
    Atom atom;
    for (int64_t n = begin; n < end; ++n) {
      const int64_t i = s.order[n];
      const scalar_t* hi = h ? h + i * 3 : nullptr;
      prepare(i, hi, atom);
      for (int64_t c = 0; c < channels; ++c) {
        const scalar_t* plane = b + c * size;
        scalar_t sum_w[P] = {}, sum_dw[P] = {};
        for (int k = 0; k < kRows; ++k) {
          scalar_t row[P];
          load_row(plane + atom.rows[k], atom, row);
          const scalar_t a = atom.along_w2[k], d = atom.along_dw2[k];
          for (int t2 = 0; t2 < P; ++t2) sum_w[t2] += a * row[t2];
          if (hi != nullptr)
            for (int t2 = 0; t2 < P; ++t2) sum_dw[t2] += d * row[t2];
        }
        scalar_t total = 0;
        for (int t2 = 0; t2 < P; ++t2) total += sum_w[t2] * atom.w2[t2] + sum_dw[t2] * atom.dw2[t2];
        out[i * channels + c] = total;
      }
    }
  }

  // mesh_gradient for the atoms s.order[begin, end): r(t) = sum_c B[c, f(i, t)] q[i, c]
  // first, then its contraction with the derivatives of the weights
  LOREM_VECTOR_CLONES void gradient(const scalar_t* b, const scalar_t* q, int64_t channels,
                                    const scalar_t* h, int64_t begin, int64_t end,
                                    scalar_t* out) const {
    Atom atom;
    scalar_t r[kRows][P];
    for (int64_t n = begin; n < end; ++n) {
      const int64_t i = s.order[n];
      prepare(i, nullptr, atom);
      for (int k = 0; k < kRows; ++k)
        for (int t2 = 0; t2 < P; ++t2) r[k][t2] = 0;
      // no charge skipped when zero: a NaN in the brick stays NaN in the forces
      for (int64_t c = 0; c < channels; ++c) {
        const scalar_t charge = q[i * channels + c];
        const scalar_t* plane = b + c * size;
        for (int k = 0; k < kRows; ++k) {
          scalar_t row[P];
          load_row(plane + atom.rows[k], atom, row);
          for (int t2 = 0; t2 < P; ++t2) r[k][t2] += charge * row[t2];
        }
      }
      const scalar_t *w0 = s.w_of(i, 0), *w1 = s.w_of(i, 1);
      const scalar_t *dw0 = s.dw_of(i, 0), *dw1 = s.dw_of(i, 1);
      const scalar_t *ddw0 = s.ddw_of(i, 0), *ddw1 = s.ddw_of(i, 1), *ddw2 = s.ddw_of(i, 2);
      scalar_t g[3] = {0, 0, 0};
      if (h == nullptr) {
        // dT/du_a = sum_t r(t) dw_a w_b w_c
        for (int t0 = 0; t0 < P; ++t0) {
          for (int t1 = 0; t1 < P; ++t1) {
            const scalar_t* rt = r[t0 * P + t1];
            scalar_t sum_w = 0, sum_dw = 0;
            for (int t2 = 0; t2 < P; ++t2) {
              sum_w += rt[t2] * atom.w2[t2];
              sum_dw += rt[t2] * atom.dw2[t2];
            }
            g[0] += dw0[t0] * w1[t1] * sum_w;
            g[1] += w0[t0] * dw1[t1] * sum_w;
            g[2] += w0[t0] * w1[t1] * sum_dw;
          }
        }
      } else {
        // (H h)_a = sum_b sum_t r(t) d_a d_b w h_b
        const scalar_t* hi = h + i * 3;
        for (int t0 = 0; t0 < P; ++t0) {
          for (int t1 = 0; t1 < P; ++t1) {
            const scalar_t* rt = r[t0 * P + t1];
            scalar_t sum_w = 0, sum_dw = 0, sum_ddw = 0;
            for (int t2 = 0; t2 < P; ++t2) {
              sum_w += rt[t2] * atom.w2[t2];
              sum_dw += rt[t2] * atom.dw2[t2];
              sum_ddw += rt[t2] * ddw2[t2];
            }
            const scalar_t a0 = w0[t0], d0 = dw0[t0], dd0 = ddw0[t0];
            const scalar_t a1 = w1[t1], d1 = dw1[t1], dd1 = ddw1[t1];
            // Hessian rows times h: H_00 = dd0 a1 w2, H_01 = d0 d1 w2, H_02 = d0 a1 dw2, ...
            g[0] += hi[0] * dd0 * a1 * sum_w + hi[1] * d0 * d1 * sum_w + hi[2] * d0 * a1 * sum_dw;
            g[1] += hi[0] * d0 * d1 * sum_w + hi[1] * a0 * dd1 * sum_w + hi[2] * a0 * d1 * sum_dw;
            g[2] += hi[0] * d0 * a1 * sum_dw + hi[1] * a0 * d1 * sum_dw + hi[2] * a0 * a1 * sum_ddw;
          }
        }
      }
      for (int a = 0; a < 3; ++a) out[i * 3 + a] = g[a];
    }
  }

  // the P values of one row of a channel, consecutive or point by point
  static LOREM_LANES_INLINE void load_row(const scalar_t* row, const Atom& atom, scalar_t* to) {
    if (atom.consecutive) {
      for (int t2 = 0; t2 < P; ++t2) to[t2] = row[t2];
    } else {
      for (int t2 = 0; t2 < P; ++t2) to[t2] = row[atom.i2[t2]];
    }
  }
};

// body(MeshLoops<scalar_t, P>) for the brick's order
template <typename scalar_t, typename Body>
void with_order(const Stencils<scalar_t>& s, const Brick& brick, Body&& body) {
  switch (brick.order) {
    case 4:
      body(MeshLoops<scalar_t, 4>(s, brick));
      break;
    case 6:
      body(MeshLoops<scalar_t, 6>(s, brick));
      break;
    case 8:
      body(MeshLoops<scalar_t, 8>(s, brick));
      break;
    case 10:
      body(MeshLoops<scalar_t, 10>(s, brick));
      break;
    default:
      TORCH_CHECK(false, "lorem::mesh_*: PME order must be 4, 6, 8 or 10, got ", brick.order);
  }
}

Tensor mesh_spread_cpu(const Tensor& charges, const Tensor& coordinates,
                       const c10::optional<Tensor>& directions, at::IntArrayRef brick_lo,
                       at::IntArrayRef brick_shape, at::IntArrayRef mesh, int64_t order) {
  const char* op = "lorem::mesh_spread";
  const Brick brick =
      checked_spread(charges, coordinates, directions, brick_lo, brick_shape, mesh, order, op);
  const int64_t atoms = coordinates.size(0), channels = charges.size(1);
  Tensor out =
      at::zeros({channels, brick.shape[0], brick.shape[1], brick.shape[2]}, charges.options());
  // the coordinates are checked (make_stencils) whenever there are atoms, even
  // when there is nothing to spread or interpolate
  if (atoms == 0) return out;
  const Tensor q = charges.contiguous();
  const Tensor h = has(directions) ? directions->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "lorem_mesh_spread", [&] {
    const Stencils<scalar_t> s = make_stencils<scalar_t>(coordinates, brick, op);
    if (channels == 0 || brick.size() == 0) return;
    const scalar_t* q_data = q.data_ptr<scalar_t>();
    const scalar_t* h_data = h.defined() ? h.data_ptr<scalar_t>() : nullptr;
    scalar_t* out_data = out.data_ptr<scalar_t>();
    with_order(s, brick, [&](const auto& loops) {
      // channels split between threads: no two threads write the same mesh point
      at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
        loops.spread(q_data, channels, h_data, begin, end, out_data);
      });
    });
  });
  return out;
}

// sum over channels and stencil points, for each atom, of brick values times (directional)
// weights: interpolate gives [N, C]; gradient gives [N, 3] from r(t) = sum_c B q
Tensor mesh_interpolate_cpu(const Tensor& brick_tensor, const Tensor& coordinates,
                            const c10::optional<Tensor>& directions, at::IntArrayRef brick_lo,
                            at::IntArrayRef mesh, int64_t order) {
  const char* op = "lorem::mesh_interpolate";
  const Brick brick =
      checked_interpolate(brick_tensor, coordinates, directions, brick_lo, mesh, order, op);
  const int64_t atoms = coordinates.size(0), channels = brick_tensor.size(0);
  Tensor out = at::zeros({atoms, channels}, brick_tensor.options());
  // the coordinates are checked (make_stencils) whenever there are atoms, even
  // when there is nothing to spread or interpolate
  if (atoms == 0) return out;
  const Tensor b = brick_tensor.contiguous();
  const Tensor h = has(directions) ? directions->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "lorem_mesh_interpolate", [&] {
    const Stencils<scalar_t> s = make_stencils<scalar_t>(coordinates, brick, op);
    if (channels == 0 || brick.size() == 0) return;
    const scalar_t* b_data = b.data_ptr<scalar_t>();
    const scalar_t* h_data = h.defined() ? h.data_ptr<scalar_t>() : nullptr;
    scalar_t* out_data = out.data_ptr<scalar_t>();
    with_order(s, brick, [&](const auto& loops) {
      at::parallel_for(0, atoms, 64, [&](int64_t begin, int64_t end) {
        loops.interpolate(b_data, channels, h_data, begin, end, out_data);
      });
    });
  });
  return out;
}

Tensor mesh_gradient_cpu(const Tensor& brick_tensor, const Tensor& charges,
                         const Tensor& coordinates, const c10::optional<Tensor>& directions,
                         at::IntArrayRef brick_lo, at::IntArrayRef mesh, int64_t order) {
  const char* op = "lorem::mesh_gradient";
  const Brick brick =
      checked_gradient(brick_tensor, charges, coordinates, directions, brick_lo, mesh, order, op);
  const int64_t atoms = coordinates.size(0), channels = brick_tensor.size(0);
  Tensor out = at::zeros({atoms, 3}, brick_tensor.options());
  // the coordinates are checked (make_stencils) whenever there are atoms, even
  // when there is nothing to spread or interpolate
  if (atoms == 0) return out;
  const Tensor b = brick_tensor.contiguous();
  const Tensor q = charges.contiguous();
  const Tensor h = has(directions) ? directions->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "lorem_mesh_gradient", [&] {
    const Stencils<scalar_t> s = make_stencils<scalar_t>(coordinates, brick, op);
    if (channels == 0 || brick.size() == 0) return;
    const scalar_t* b_data = b.data_ptr<scalar_t>();
    const scalar_t* q_data = q.data_ptr<scalar_t>();
    const scalar_t* h_data = h.defined() ? h.data_ptr<scalar_t>() : nullptr;
    scalar_t* out_data = out.data_ptr<scalar_t>();
    with_order(s, brick, [&](const auto& loops) {
      at::parallel_for(0, atoms, 64, [&](int64_t begin, int64_t end) {
        loops.gradient(b_data, q_data, channels, h_data, begin, end, out_data);
      });
    });
  });
  return out;
}

// -- composite kernels (torch operations over chunks of atoms; any device) --

// 1D weights [n, 3, p] and their first and second derivatives, as the CPU kernel's table
std::array<Tensor, 3> spline_tables(const Tensor& x, int64_t p) {
  std::vector<Tensor> value{at::ones_like(x)}, lower1, lower2;
  for (int64_t n = 2; n <= p; ++n) {
    if (n == p - 1) lower2 = value;
    if (n == p) lower1 = value;
    std::vector<Tensor> next;
    for (int64_t j = 0; j < n; ++j) {
      Tensor term = at::zeros_like(x);
      if (j < n - 1) term = term + (x + double(j)) * value[j];
      if (j > 0) term = term + (double(n - j) - x) * value[j - 1];
      next.push_back(term / double(n - 1));
    }
    value = next;
  }
  std::vector<Tensor> w, dw, ddw;
  const Tensor zero = at::zeros_like(x);
  for (int64_t t = 0; t < p; ++t) {
    const int64_t j = p - 1 - t;
    w.push_back(value[j]);
    Tensor d = zero;
    if (j <= p - 2) d = d + lower1[j];
    if (j >= 1) d = d - lower1[j - 1];
    Tensor dd = zero;
    if (j <= p - 3) dd = dd + lower2[j];
    if (j >= 1 && j - 1 <= p - 3) dd = dd - 2.0 * lower2[j - 1];
    if (j >= 2) dd = dd + lower2[j - 2];
    dw.push_back(d);
    ddw.push_back(dd);
  }
  return {at::stack(w, -1), at::stack(dw, -1), at::stack(ddw, -1)};
}

// The stencils of a chunk of atoms: flat brick indices [n, p^3], and the 1D tables
struct ChunkStencils {
  Tensor flat, w, dw, ddw;  // [n, p^3] int64; [n, 3, p] each
};

ChunkStencils chunk_stencils(const Tensor& u, const Brick& brick) {
  const int64_t p = brick.order, n = u.size(0);
  TORCH_CHECK((at::abs(u) < 4.5e15).all().item<bool>(),
              "lorem::mesh_*: mesh coordinates are not finite (or beyond 4.5e15 mesh points)");
  const Tensor floor = at::floor(u);
  auto tables = spline_tables(u - floor, p);
  const auto long_options = u.options().dtype(at::kLong);
  const Tensor lo =
      at::tensor(std::vector<int64_t>(brick.lo.begin(), brick.lo.end()), long_options);
  const Tensor start = floor.to(at::kLong) - (p - 1) - lo;          // [n, 3]
  Tensor index = start.unsqueeze(2) + at::arange(p, long_options);  // [n, 3, p]
  if (brick.periodic) {
    const Tensor sizes =
        at::tensor(std::vector<int64_t>(brick.mesh.begin(), brick.mesh.end()), long_options);
    index = at::remainder(index, sizes.view({1, 3, 1}));
  } else {
    const Tensor extent =
        at::tensor(std::vector<int64_t>(brick.shape.begin(), brick.shape.end()), long_options);
    const bool outside = ((start < 0) | (start + p > extent)).any().item<bool>();
    TORCH_CHECK(!outside, "PME: atoms reach mesh points outside the brick (lo ",
                list_string(brick.lo), ", shape ", list_string(brick.shape),
                "); compute the brick with brick_for");
  }
  const Tensor i0 = index.select(1, 0), i1 = index.select(1, 1), i2 = index.select(1, 2);
  const Tensor plane = i0.unsqueeze(2) * brick.shape[1] + i1.unsqueeze(1);  // [n, p, p]
  const Tensor flat =
      plane.unsqueeze(3) * brick.shape[2] + i2.unsqueeze(1).unsqueeze(1);  // [n,p,p,p]
  return {flat.reshape({n, p * p * p}), tables[0], tables[1], tables[2]};
}

// the 3D product of one table per axis: [n, p^3]
Tensor outer3(const Tensor& a, const Tensor& b, const Tensor& c) {
  const int64_t n = a.size(0), p = a.size(1);
  return (a.view({n, p, 1, 1}) * b.view({n, 1, p, 1}) * c.view({n, 1, 1, p}))
      .reshape({n, p * p * p});
}

// the stencil weights [n, p^3]: w, or h . grad w
Tensor chunk_weights(const ChunkStencils& s, const Tensor& h) {
  auto axis = [](const Tensor& t, int a) { return t.select(1, a); };
  if (!h.defined()) return outer3(axis(s.w, 0), axis(s.w, 1), axis(s.w, 2));
  return outer3(axis(s.dw, 0), axis(s.w, 1), axis(s.w, 2)) * h.select(1, 0).unsqueeze(1) +
         outer3(axis(s.w, 0), axis(s.dw, 1), axis(s.w, 2)) * h.select(1, 1).unsqueeze(1) +
         outer3(axis(s.w, 0), axis(s.w, 1), axis(s.dw, 2)) * h.select(1, 2).unsqueeze(1);
}

int64_t chunk_atoms_for(int64_t p, int64_t channels, int64_t chunk_atoms) {
  if (chunk_atoms > 0) return chunk_atoms;
  return std::max<int64_t>(1, kChunkElements / (p * p * p * std::max<int64_t>(1, channels)));
}

Tensor optional_rows(const c10::optional<Tensor>& t, int64_t begin, int64_t n) {
  return has(t) ? t->narrow(0, begin, n) : Tensor();
}

Tensor mesh_spread_chunked(const Tensor& charges, const Tensor& coordinates,
                           const c10::optional<Tensor>& directions, at::IntArrayRef brick_lo,
                           at::IntArrayRef brick_shape, at::IntArrayRef mesh, int64_t order,
                           int64_t chunk_atoms) {
  const char* op = "lorem::mesh_spread";
  const Brick brick =
      checked_spread(charges, coordinates, directions, brick_lo, brick_shape, mesh, order, op);
  const int64_t atoms = coordinates.size(0), channels = charges.size(1);
  Tensor out = at::zeros({channels, brick.size()}, charges.options());
  const int64_t chunk = chunk_atoms_for(brick.order, channels, chunk_atoms);
  for (int64_t begin = 0; begin < atoms; begin += chunk) {
    const int64_t n = std::min(chunk, atoms - begin);
    const ChunkStencils s = chunk_stencils(coordinates.narrow(0, begin, n), brick);
    const Tensor weights = chunk_weights(s, optional_rows(directions, begin, n));
    const Tensor values = charges.narrow(0, begin, n).t().unsqueeze(2) * weights.unsqueeze(0);
    out.index_add_(1, s.flat.reshape(-1), values.reshape({channels, s.flat.numel()}));
  }
  return out.view({channels, brick.shape[0], brick.shape[1], brick.shape[2]});
}

// B gathered at every stencil point of a chunk: [C, n, p^3]
Tensor gather_stencils(const Tensor& rows, const ChunkStencils& s) {
  return rows.index_select(1, s.flat.reshape(-1))
      .view({rows.size(0), s.flat.size(0), s.flat.size(1)});
}

Tensor mesh_interpolate_chunked(const Tensor& brick_tensor, const Tensor& coordinates,
                                const c10::optional<Tensor>& directions, at::IntArrayRef brick_lo,
                                at::IntArrayRef mesh, int64_t order, int64_t chunk_atoms) {
  const char* op = "lorem::mesh_interpolate";
  const Brick brick =
      checked_interpolate(brick_tensor, coordinates, directions, brick_lo, mesh, order, op);
  const int64_t atoms = coordinates.size(0), channels = brick_tensor.size(0);
  const Tensor rows = brick_tensor.reshape({channels, brick.size()});
  std::vector<Tensor> pieces;
  const int64_t chunk = chunk_atoms_for(brick.order, channels, chunk_atoms);
  for (int64_t begin = 0; begin < atoms; begin += chunk) {
    const int64_t n = std::min(chunk, atoms - begin);
    const ChunkStencils s = chunk_stencils(coordinates.narrow(0, begin, n), brick);
    const Tensor weights = chunk_weights(s, optional_rows(directions, begin, n));
    pieces.push_back((gather_stencils(rows, s) * weights.unsqueeze(0)).sum(2).t());
  }
  if (pieces.empty()) return at::zeros({0, channels}, brick_tensor.options());
  return at::cat(pieces, 0);
}

Tensor mesh_gradient_chunked(const Tensor& brick_tensor, const Tensor& charges,
                             const Tensor& coordinates, const c10::optional<Tensor>& directions,
                             at::IntArrayRef brick_lo, at::IntArrayRef mesh, int64_t order,
                             int64_t chunk_atoms) {
  const char* op = "lorem::mesh_gradient";
  const Brick brick =
      checked_gradient(brick_tensor, charges, coordinates, directions, brick_lo, mesh, order, op);
  const int64_t atoms = coordinates.size(0), channels = brick_tensor.size(0);
  const Tensor rows = brick_tensor.reshape({channels, brick.size()});
  std::vector<Tensor> pieces;
  const int64_t chunk = chunk_atoms_for(brick.order, channels, chunk_atoms);
  auto axis = [](const Tensor& t, int a) { return t.select(1, a); };
  for (int64_t begin = 0; begin < atoms; begin += chunk) {
    const int64_t n = std::min(chunk, atoms - begin);
    const ChunkStencils s = chunk_stencils(coordinates.narrow(0, begin, n), brick);
    // r [n, p^3] = sum_c B q
    const Tensor r =
        (gather_stencils(rows, s) * charges.narrow(0, begin, n).t().unsqueeze(2)).sum(0);
    std::vector<Tensor> columns;
    if (!has(directions)) {
      for (int a = 0; a < 3; ++a) {
        Tensor f[3] = {axis(s.w, 0), axis(s.w, 1), axis(s.w, 2)};
        f[a] = axis(s.dw, a);
        columns.push_back((r * outer3(f[0], f[1], f[2])).sum(1));
      }
    } else {
      const Tensor h = directions->narrow(0, begin, n);
      for (int a = 0; a < 3; ++a) {
        Tensor total = at::zeros({n}, r.options());
        for (int b = 0; b < 3; ++b) {
          Tensor f[3] = {axis(s.w, 0), axis(s.w, 1), axis(s.w, 2)};
          if (a == b) {
            f[a] = axis(s.ddw, a);
          } else {
            f[a] = axis(s.dw, a);
            f[b] = axis(s.dw, b);
          }
          total = total + (r * outer3(f[0], f[1], f[2])).sum(1) * h.select(1, b);
        }
        columns.push_back(total);
      }
    }
    pieces.push_back(at::stack(columns, 1));
  }
  if (pieces.empty()) return at::zeros({0, 3}, brick_tensor.options());
  return at::cat(pieces, 0);
}

Tensor mesh_spread_composite(const Tensor& charges, const Tensor& coordinates,
                             const c10::optional<Tensor>& directions, at::IntArrayRef brick_lo,
                             at::IntArrayRef brick_shape, at::IntArrayRef mesh, int64_t order) {
  return mesh_spread_chunked(charges, coordinates, directions, brick_lo, brick_shape, mesh, order,
                             0);
}

Tensor mesh_interpolate_composite(const Tensor& brick_tensor, const Tensor& coordinates,
                                  const c10::optional<Tensor>& directions, at::IntArrayRef brick_lo,
                                  at::IntArrayRef mesh, int64_t order) {
  return mesh_interpolate_chunked(brick_tensor, coordinates, directions, brick_lo, mesh, order, 0);
}

Tensor mesh_gradient_composite(const Tensor& brick_tensor, const Tensor& charges,
                               const Tensor& coordinates, const c10::optional<Tensor>& directions,
                               at::IntArrayRef brick_lo, at::IntArrayRef mesh, int64_t order) {
  return mesh_gradient_chunked(brick_tensor, charges, coordinates, directions, brick_lo, mesh,
                               order, 0);
}

// The composite kernels on any device with a chosen chunk length: what tests compare the
// CPU kernels against (forward values only; no autograd). first: charges (spread) or the
// brick; second: the charges of mesh_gradient.
Tensor mesh_op_by_chunks(const std::string& name, const Tensor& first,
                         const c10::optional<Tensor>& second, const Tensor& coordinates,
                         const c10::optional<Tensor>& directions, at::IntArrayRef brick_lo,
                         at::IntArrayRef brick_shape, at::IntArrayRef mesh, int64_t order,
                         int64_t chunk_atoms) {
  TORCH_CHECK(chunk_atoms > 0, "lorem::_mesh_op_by_chunks: chunk_atoms must be positive");
  if (name == "spread")
    return mesh_spread_chunked(first, coordinates, directions, brick_lo, brick_shape, mesh, order,
                               chunk_atoms);
  if (name == "interpolate")
    return mesh_interpolate_chunked(first, coordinates, directions, brick_lo, mesh, order,
                                    chunk_atoms);
  if (name == "gradient") {
    TORCH_CHECK(has(second), "lorem::_mesh_op_by_chunks: gradient needs the charges");
    return mesh_gradient_chunked(first, *second, coordinates, directions, brick_lo, mesh, order,
                                 chunk_atoms);
  }
  TORCH_CHECK(false, "lorem::_mesh_op_by_chunks: unknown operator '", name, "'");
}

// -- device kernel: one thread per atom (mesh_threads.hpp) --

// The operator `kind` by the threads: on CUDA the compiled kernel (LOREM_CUDA_KERNELS), on
// the CPU one atom after another (what the tests hold to the CPU kernel). The inputs are
// checked by the callers; the atoms' coordinates here, with one copy to the host, and the
// first bad atom named as the CPU kernel names it.
Tensor mesh_on_threads(int32_t kind, const Tensor& first, const Tensor& second,
                       const Tensor& coordinates, const c10::optional<Tensor>& directions,
                       const Brick& brick, const char* op) {
  const int64_t atoms = coordinates.size(0);
  const int64_t channels = kind == mesh_threads::kSpread ? first.size(1) : first.size(0);
  const auto options = first.options();
  Tensor out = kind == mesh_threads::kSpread
                   ? at::zeros({channels, brick.shape[0], brick.shape[1], brick.shape[2]}, options)
                   : at::zeros({atoms, kind == mesh_threads::kInterpolate ? channels : 3}, options);
  if (atoms == 0) return out;
  const Tensor u = coordinates.contiguous();
  const Tensor a = first.contiguous();
  const Tensor b = second.defined() ? second.contiguous() : Tensor();
  const Tensor h = has(directions) ? directions->contiguous() : Tensor();
  Tensor status = at::empty({atoms}, options.dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lorem mesh threads", [&] {
    mesh_threads::MeshForm<scalar_t> form;
    form.coordinates = u.data_ptr<scalar_t>();
    if (kind == mesh_threads::kSpread) {
      form.charges = a.data_ptr<scalar_t>();
    } else {
      form.brick = a.data_ptr<scalar_t>();
      if (b.defined()) form.charges = b.data_ptr<scalar_t>();
    }
    form.directions = h.defined() ? h.data_ptr<scalar_t>() : nullptr;
    form.out = out.data_ptr<scalar_t>();
    form.status = status.data_ptr<int32_t>();
    for (int axis = 0; axis < 3; ++axis) {
      form.lo[axis] = brick.lo[axis];
      form.shape[axis] = brick.shape[axis];
      form.mesh[axis] = brick.mesh[axis];
    }
    form.periodic = brick.periodic ? 1 : 0;
    form.order = static_cast<int32_t>(brick.order);
    form.kind = kind;
    form.atoms = atoms;
    form.channels = channels;
    if (out.is_cuda()) {
#ifdef LOREM_CUDA_KERNELS
      // the spread's atomic adds make its sums vary at round-off from run to run
      if (kind == mesh_threads::kSpread)
        at::globalContext().alertNotDeterministic("lorem::mesh_spread (CUDA kernel)");
      const c10::cuda::CUDAGuard guard(out.device());
      const char* error =
          mesh_threads::launch_on_cuda(form, c10::cuda::getCurrentCUDAStream().stream());
      TORCH_CHECK(error == nullptr, op, ": the CUDA kernel failed: ", error);
      return;
#else
      TORCH_CHECK(false, op, ": this library was built without its CUDA kernels (LOREM_CUDA_KERNELS)");
#endif
    }
    TORCH_CHECK(out.is_cpu(), op, ": the mesh threads run on CUDA or the CPU, not ", out.device());
    if (kind == mesh_threads::kSpread) {  // the atoms add into shared mesh points: in order
      for (int64_t i = 0; i < atoms; ++i) mesh_threads::atom_thread(form, i);
    } else {
      at::parallel_for(0, atoms, 64, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) mesh_threads::atom_thread(form, i);
      });
    }
  });
  const Tensor bad = status.ne(0);
  if (bad.any().item<bool>()) {  // the first bad atom, named as the CPU kernel names it
    const int64_t i = bad.nonzero()[0][0].item<int64_t>();
    TORCH_CHECK(status[i].item<int32_t>() != mesh_threads::kNotFinite, op,
                ": mesh coordinates of atom ", i, " are not finite (or beyond 4.5e15 mesh points)");
    TORCH_CHECK(false, "PME: atoms reach mesh points outside the brick (lo ", list_string(brick.lo),
                ", shape ", list_string(brick.shape), "); compute the brick with brick_for");
  }
  return out;
}

Tensor mesh_spread_threads(const Tensor& charges, const Tensor& coordinates,
                           const c10::optional<Tensor>& directions, at::IntArrayRef brick_lo,
                           at::IntArrayRef brick_shape, at::IntArrayRef mesh, int64_t order) {
  const char* op = "lorem::mesh_spread";
  const Brick brick =
      checked_spread(charges, coordinates, directions, brick_lo, brick_shape, mesh, order, op);
  return mesh_on_threads(mesh_threads::kSpread, charges, Tensor(), coordinates, directions, brick,
                         op);
}

Tensor mesh_interpolate_threads(const Tensor& brick_tensor, const Tensor& coordinates,
                                const c10::optional<Tensor>& directions, at::IntArrayRef brick_lo,
                                at::IntArrayRef mesh, int64_t order) {
  const char* op = "lorem::mesh_interpolate";
  const Brick brick =
      checked_interpolate(brick_tensor, coordinates, directions, brick_lo, mesh, order, op);
  return mesh_on_threads(mesh_threads::kInterpolate, brick_tensor, Tensor(), coordinates,
                         directions, brick, op);
}

Tensor mesh_gradient_threads(const Tensor& brick_tensor, const Tensor& charges,
                             const Tensor& coordinates, const c10::optional<Tensor>& directions,
                             at::IntArrayRef brick_lo, at::IntArrayRef mesh, int64_t order) {
  const char* op = "lorem::mesh_gradient";
  const Brick brick =
      checked_gradient(brick_tensor, charges, coordinates, directions, brick_lo, mesh, order, op);
  return mesh_on_threads(mesh_threads::kGradient, brick_tensor, charges, coordinates, directions,
                         brick, op);
}

// The threads under their own name, on the CPU and (in a LOREM_CUDA_KERNELS build) CUDA:
// first is the charges (spread) or the brick, second the charges of mesh_gradient.
Tensor mesh_op_device(const std::string& name, const Tensor& first,
                      const c10::optional<Tensor>& second, const Tensor& coordinates,
                      const c10::optional<Tensor>& directions, at::IntArrayRef brick_lo,
                      at::IntArrayRef brick_shape, at::IntArrayRef mesh, int64_t order) {
  TORCH_CHECK(name == "gradient" || !has(second), "lorem::_mesh_op_device: ", name,
              " takes no second operand (only gradient takes the charges)");
  if (name == "spread")
    return mesh_spread_threads(first, coordinates, directions, brick_lo, brick_shape, mesh, order);
  if (name == "interpolate")
    return mesh_interpolate_threads(first, coordinates, directions, brick_lo, mesh, order);
  if (name == "gradient") {
    TORCH_CHECK(has(second), "lorem::_mesh_op_device: gradient needs the charges");
    return mesh_gradient_threads(first, *second, coordinates, directions, brick_lo, mesh, order);
  }
  TORCH_CHECK(false, "lorem::_mesh_op_device: unknown operator '", name, "'");
}

// -- autograd: every backward calls the operators through the dispatcher --

using OptionalTensor = c10::optional<Tensor>;

Tensor call_spread(const Tensor& charges, const Tensor& coordinates,
                   const OptionalTensor& directions, at::IntArrayRef lo, at::IntArrayRef shape,
                   at::IntArrayRef mesh, int64_t order) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lorem::mesh_spread", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const OptionalTensor&,
                                     at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t)>();
  return op.call(charges, coordinates, directions, lo, shape, mesh, order);
}

Tensor call_interpolate(const Tensor& brick, const Tensor& coordinates,
                        const OptionalTensor& directions, at::IntArrayRef lo, at::IntArrayRef mesh,
                        int64_t order) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lorem::mesh_interpolate", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const OptionalTensor&,
                                     at::IntArrayRef, at::IntArrayRef, int64_t)>();
  return op.call(brick, coordinates, directions, lo, mesh, order);
}

Tensor call_gradient(const Tensor& brick, const Tensor& charges, const Tensor& coordinates,
                     const OptionalTensor& directions, at::IntArrayRef lo, at::IntArrayRef mesh,
                     int64_t order) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("lorem::mesh_gradient", "")
          .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const OptionalTensor&,
                        at::IntArrayRef, at::IntArrayRef, int64_t)>();
  return op.call(brick, charges, coordinates, directions, lo, mesh, order);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void refuse_third_derivative(const char* op) {
  TORCH_CHECK(false, op,
              ": a third derivative of the PME mesh operators is not implemented (energy, "
              "forces and their derivative for force training are); use "
              "Lorem.use_fused_operators(False) for higher derivatives");
}

// What every backward needs: the brick's geometry, and whether the forward was a
// directional (second-derivative) form, whose own backward is refused.
void save_geometry(AutogradContext* ctx, const OptionalTensor& directions, at::IntArrayRef lo,
                   at::IntArrayRef mesh, int64_t order) {
  ctx->saved_data["directional"] = has(directions);
  ctx->saved_data["lo"] = lo.vec();
  ctx->saved_data["mesh"] = mesh.vec();
  ctx->saved_data["order"] = order;
}

struct SavedGeometry {
  std::vector<int64_t> lo, mesh;
  int64_t order;
};

SavedGeometry saved_geometry(AutogradContext* ctx, const char* op) {
  if (ctx->saved_data["directional"].toBool()) refuse_third_derivative(op);
  return {ctx->saved_data["lo"].toIntVector(), ctx->saved_data["mesh"].toIntVector(),
          ctx->saved_data["order"].toInt()};
}

class MeshSpread : public torch::autograd::Function<MeshSpread> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& charges, const Tensor& coordinates,
                        const OptionalTensor& directions, at::IntArrayRef lo, at::IntArrayRef shape,
                        at::IntArrayRef mesh, int64_t order) {
    ctx->save_for_backward({charges, coordinates});
    save_geometry(ctx, directions, lo, mesh, order);
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_spread(charges, coordinates, directions, lo, shape, mesh, order);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto [lo, mesh, order] = saved_geometry(ctx, "lorem::mesh_spread");
    const auto saved = ctx->get_saved_variables();
    const Tensor& charges = saved[0];
    const Tensor& coordinates = saved[1];
    Tensor charge_grad, coordinate_grad;
    if (ctx->needs_input_grad(0))
      charge_grad = call_interpolate(grads[0], coordinates, c10::nullopt, lo, mesh, order);
    if (ctx->needs_input_grad(1))
      coordinate_grad =
          call_gradient(grads[0], charges, coordinates, c10::nullopt, lo, mesh, order);
    return {charge_grad, coordinate_grad, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

class MeshInterpolate : public torch::autograd::Function<MeshInterpolate> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& brick, const Tensor& coordinates,
                        const OptionalTensor& directions, at::IntArrayRef lo, at::IntArrayRef mesh,
                        int64_t order) {
    ctx->save_for_backward({brick, coordinates});
    save_geometry(ctx, directions, lo, mesh, order);
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_interpolate(brick, coordinates, directions, lo, mesh, order);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto [lo, mesh, order] = saved_geometry(ctx, "lorem::mesh_interpolate");
    const auto saved = ctx->get_saved_variables();
    const Tensor& brick = saved[0];
    const Tensor& coordinates = saved[1];
    Tensor brick_grad, coordinate_grad;
    if (ctx->needs_input_grad(0))
      brick_grad =
          call_spread(grads[0], coordinates, c10::nullopt, lo, brick.sizes().slice(1), mesh, order);
    if (ctx->needs_input_grad(1))
      coordinate_grad = call_gradient(brick, grads[0], coordinates, c10::nullopt, lo, mesh, order);
    return {brick_grad, coordinate_grad, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

class MeshGradient : public torch::autograd::Function<MeshGradient> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& brick, const Tensor& charges,
                        const Tensor& coordinates, const OptionalTensor& directions,
                        at::IntArrayRef lo, at::IntArrayRef mesh, int64_t order) {
    ctx->save_for_backward({brick, charges, coordinates});
    save_geometry(ctx, directions, lo, mesh, order);
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_gradient(brick, charges, coordinates, directions, lo, mesh, order);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto [lo, mesh, order] = saved_geometry(ctx, "lorem::mesh_gradient");
    const auto saved = ctx->get_saved_variables();
    const Tensor& brick = saved[0];
    const Tensor& charges = saved[1];
    const Tensor& coordinates = saved[2];
    const OptionalTensor h = grads[0];
    Tensor brick_grad, charge_grad, coordinate_grad;
    if (ctx->needs_input_grad(0))
      brick_grad = call_spread(charges, coordinates, h, lo, brick.sizes().slice(1), mesh, order);
    if (ctx->needs_input_grad(1))
      charge_grad = call_interpolate(brick, coordinates, h, lo, mesh, order);
    if (ctx->needs_input_grad(2))
      coordinate_grad = call_gradient(brick, charges, coordinates, h, lo, mesh, order);
    return {brick_grad, charge_grad, coordinate_grad, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor mesh_spread_autograd(const Tensor& charges, const Tensor& coordinates,
                            const OptionalTensor& directions, at::IntArrayRef brick_lo,
                            at::IntArrayRef brick_shape, at::IntArrayRef mesh, int64_t order) {
  return MeshSpread::apply(charges, coordinates, directions, brick_lo, brick_shape, mesh, order);
}

Tensor mesh_interpolate_autograd(const Tensor& brick, const Tensor& coordinates,
                                 const OptionalTensor& directions, at::IntArrayRef brick_lo,
                                 at::IntArrayRef mesh, int64_t order) {
  return MeshInterpolate::apply(brick, coordinates, directions, brick_lo, mesh, order);
}

Tensor mesh_gradient_autograd(const Tensor& brick, const Tensor& charges, const Tensor& coordinates,
                              const OptionalTensor& directions, at::IntArrayRef brick_lo,
                              at::IntArrayRef mesh, int64_t order) {
  return MeshGradient::apply(brick, charges, coordinates, directions, brick_lo, mesh, order);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lorem, m) {
  m.def(
      "mesh_spread(Tensor charges, Tensor coordinates, Tensor? directions, int[] brick_lo, "
      "int[] brick_shape, int[] mesh, int order) -> Tensor");
  m.def(
      "mesh_interpolate(Tensor brick, Tensor coordinates, Tensor? directions, int[] brick_lo, "
      "int[] mesh, int order) -> Tensor");
  m.def(
      "mesh_gradient(Tensor brick, Tensor charges, Tensor coordinates, Tensor? directions, "
      "int[] brick_lo, int[] mesh, int order) -> Tensor");
  m.def(
      "_mesh_op_by_chunks(str name, Tensor first, Tensor? second, Tensor coordinates, "
      "Tensor? directions, int[] brick_lo, int[] brick_shape, int[] mesh, int order, "
      "int chunk_atoms) -> Tensor");
  // the device kernel's threads (CUDA: the compiled kernel in a LOREM_CUDA_KERNELS build;
  // CPU: one atom after another, which the tests hold to the CPU kernel)
  m.def(
      "_mesh_op_device(str name, Tensor first, Tensor? second, Tensor coordinates, "
      "Tensor? directions, int[] brick_lo, int[] brick_shape, int[] mesh, int order) -> Tensor");
}

TORCH_LIBRARY_IMPL(lorem, CPU, m) {
  m.impl("mesh_spread", mesh_spread_cpu);
  m.impl("mesh_interpolate", mesh_interpolate_cpu);
  m.impl("mesh_gradient", mesh_gradient_cpu);
  m.impl("_mesh_op_device", mesh_op_device);
}

#ifdef LOREM_CUDA_KERNELS
TORCH_LIBRARY_IMPL(lorem, CUDA, m) {
  m.impl("mesh_spread", mesh_spread_threads);
  m.impl("mesh_interpolate", mesh_interpolate_threads);
  m.impl("mesh_gradient", mesh_gradient_threads);
  m.impl("_mesh_op_device", mesh_op_device);
}
#endif

TORCH_LIBRARY_IMPL(lorem, CompositeExplicitAutograd, m) {
  m.impl("mesh_spread", mesh_spread_composite);
  m.impl("mesh_interpolate", mesh_interpolate_composite);
  m.impl("mesh_gradient", mesh_gradient_composite);
  m.impl("_mesh_op_by_chunks", mesh_op_by_chunks);
}

TORCH_LIBRARY_IMPL(lorem, Autograd, m) {
  m.impl("mesh_spread", mesh_spread_autograd);
  m.impl("mesh_interpolate", mesh_interpolate_autograd);
  m.impl("mesh_gradient", mesh_gradient_autograd);
}
