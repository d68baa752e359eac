// The radial basis of the edges times the cutoff (nn/radial.py: e3x's Bernstein
// polynomials and the cosine cutoff) as operators that keep nothing but the distances
// (docs/design.md section 1.5).
//
// For P distances r, R = num functions, x = r / limit:
//   f_k(r) = B_k(x) c(r),  B_k(x) = binom(R - 1, k) x^k (1 - x)^(R - 1 - k),
//   c(r) = (cos(pi r / cutoff) + 1) / 2 below the cutoff, 0 beyond;
// B_k is evaluated in log space as nn/radial.py does, and outside (eps, 1 - eps) it is the
// constant there (0, or 1 for the end-point polynomial), with zero derivatives. Operators:
//   radial_basis(r)           [P, R]  f_k(r)
//   radial_basis_vjp(r, G)    [P]     sum_k G[k] f_k'(r)
//   radial_basis_jvp(r, D)    [P, R]  D f_k'(r)
//   radial_basis_hvp(r, G, D) [P]     D sum_k G[k] f_k''(r)
// each other's derivatives, as the harmonics' (harmonics_ops.cpp): the plain PyTorch basis
// keeps about ten [P, R] temporaries for its backward, these keep the [P] distances. Third
// derivatives are refused by name.
//
// Kernels: CPU (blocks of 4 edges in parallel, one per vector lane);
// CompositeExplicitAutograd (the same formulas in torch operations: CUDA, and the tests'
// reference through lorem::_radial_basis_composite).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "channel_lanes.hpp"

namespace {

using at::Tensor;

// which derivatives a kernel needs
enum Kind : int64_t { kValues = 0, kVjp = 1, kJvp = 2, kHvp = 3 };

struct Basis {
  int64_t num;
  double limit, cutoff;
};

Basis make_basis(int64_t num, double limit, double cutoff, const char* op) {
  TORCH_CHECK(num >= 2, op, ": num_radial must be at least 2, got ", num);
  TORCH_CHECK(limit > 0 && cutoff > 0, op, ": limit and cutoff must be positive, got ", limit,
              " and ", cutoff);
  return {num, limit, cutoff};
}

void check_distances(const Tensor& r, const char* op) {
  TORCH_CHECK(r.dim() == 1, op, ": distances must be [P], got ", r.sizes());
  TORCH_CHECK(r.is_floating_point(), op, ": distances must be floating point");
}

void check_like(const Tensor& t, const Tensor& r, int64_t width, const char* what, const char* op) {
  const bool shape_ok = width < 0 ? (t.dim() == 1 && t.size(0) == r.size(0))
                                  : (t.dim() == 2 && t.size(0) == r.size(0) && t.size(1) == width);
  TORCH_CHECK(shape_ok, op, ": ", what, " must be [", r.size(0),
              (width < 0 ? std::string("]") : ", " + std::to_string(width) + "]"), ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == r.scalar_type() && t.device() == r.device(), op, ": ", what,
              " and distances differ in dtype or device");
}

// e3x's margin: finfo(dtype).epsneg
template <typename scalar_t>
double margin() {
  return sizeof(scalar_t) == 8 ? 1.1102230246251565e-16 : 5.960464477539063e-08;
}

// f_k, f_k' and f_k'' of one distance (the derivatives only when asked for)
template <typename scalar_t>
void basis_of(scalar_t r, const Basis& basis, const double* binomial, int derivatives, double* f,
              double* df, double* ddf, double* x_power, double* y_power) {
  const int64_t degree = basis.num - 1;
  const double x = double(r) / basis.limit;
  const double eps = margin<scalar_t>();
  // the cosine cutoff and its derivatives in r
  const double w = M_PI / basis.cutoff;
  double c = 0, dc = 0, ddc = 0;
  if (double(r) / basis.cutoff < 1) {
    c = 0.5 * std::cos(w * double(r)) + 0.5;
    dc = -0.5 * w * std::sin(w * double(r));
    ddc = -0.5 * w * w * std::cos(w * double(r));
  }
  const bool below = x < eps, above = x > 1 - eps;
  if (below || above) {
    for (int64_t k = 0; k <= degree; ++k) {
      const double b = (below && k == 0) || (above && k == degree) ? 1.0 : 0.0;
      f[k] = b * c;
      if (derivatives >= 1) df[k] = b * dc;
      if (derivatives >= 2) ddf[k] = b * ddc;
    }
    return;
  }
  // binom(n, k) x^k (1 - x)^(n - k) from running powers (equal to the log-space form
  // of nn/radial.py to round-off, without 2 (R - 1) logarithms and R exponentials)
  x_power[0] = y_power[0] = 1.0;
  for (int64_t k = 1; k <= degree; ++k) {
    x_power[k] = x_power[k - 1] * x;
    y_power[k] = y_power[k - 1] * (1 - x);
  }
  const double inv_l = 1.0 / basis.limit;
  for (int64_t k = 0; k <= degree; ++k) {
    const double b = binomial[k] * x_power[k] * y_power[degree - k];
    f[k] = b * c;
    if (derivatives == 0) continue;
    // d/dx log B = k / x - (n - k) / (1 - x)
    const double s = double(k) / x - double(degree - k) / (1 - x);
    const double db = b * s * inv_l;
    df[k] = db * c + b * dc;
    if (derivatives >= 2) {
      const double ds = -double(k) / (x * x) - double(degree - k) / ((1 - x) * (1 - x));
      const double ddb = b * (s * s + ds) * inv_l * inv_l;
      ddf[k] = ddb * c + 2 * db * dc + b * ddc;
    }
  }
}

std::vector<double> log_binomials(int64_t num) {
  std::vector<double> out(num);
  const int64_t degree = num - 1;
  for (int64_t k = 0; k < num; ++k)
    out[k] = std::lgamma(double(degree + 1)) - std::lgamma(double(k + 1)) -
             std::lgamma(double(degree - k + 1));
  return out;
}

// The CPU kernel, kLanes distances at a time (one per lane of a vector of doubles,
// channel_lanes.hpp; the basis is evaluated in double for every dtype, as before). The
// derivatives come from the Bernstein polynomials of lower degree n - 1 and n - 2,
//   B'_k = n (B^{n-1}_{k-1} - B^{n-1}_k) / limit,
//   B''_k = n (n - 1) (B^{n-2}_{k-2} - 2 B^{n-2}_{k-1} + B^{n-2}_k) / limit^2,
// from the same powers of x and 1 - x, so no lane divides (the per-edge form of basis_of
// divided by x and 1 - x once per function). A block with a distance outside
// (eps, 1 - eps) of the basis takes basis_of edge by edge.
template <typename scalar_t>
class RadialLanes {
 public:
  static constexpr int kLanes = 4;  // doubles: one AVX2 register

  RadialLanes(int64_t kind, const Basis& basis, const scalar_t* r, const scalar_t* g,
              const scalar_t* d, scalar_t* out, int64_t edges)
      : kind_(kind),
        basis_(basis),
        n_(basis.num - 1),
        r_(r),
        g_(g),
        d_(d),
        out_(out),
        edges_(edges) {
    binomial_ = log_binomials(basis.num);
    for (double& value : binomial_) value = std::exp(value);
    // binom(n - 1, j) and binom(n - 2, j) (empty below degree 1 and 2)
    lower_[0] = n_ >= 1 ? log_binomials(n_) : std::vector<double>();
    lower_[1] = n_ >= 2 ? log_binomials(n_ - 1) : std::vector<double>();
    for (auto& list : lower_)
      for (double& value : list) value = std::exp(value);
  }

  void run() const {
    const int64_t blocks = (edges_ + kLanes - 1) / kLanes;
    at::parallel_for(0, blocks, 64, [this](int64_t begin, int64_t end) {
      std::vector<double> scratch(scratch_size());
      blocks_range(begin, end, scratch.data());
    });
  }

 private:
  using L = lorem::Lanes<double, kLanes>;
  using V = typename L::Vector;

  // row k of a power table (always inlined: no vector crosses a call, channel_lanes.hpp)
  static LOREM_LANES_INLINE V power(const double* table, int64_t k) {
    return L::load(table + k * kLanes);
  }

  bool per_function() const { return kind_ == kValues || kind_ == kJvp; }

  // per thread: x^k and (1 - x)^k [n + 1][kLanes], the block's gradient [num][kLanes],
  // its outputs [num][kLanes], and basis_of's work space (5 x num)
  int64_t scratch_size() const { return kLanes * (2 * (n_ + 1) + 2 * basis_.num) + 5 * basis_.num; }

  // one edge by basis_of (the blocks with a distance at the basis' ends)
  void edge(int64_t p, double* work) const {
    const int64_t num = basis_.num;
    double *f = work, *df = f + num, *ddf = df + num, *xp = ddf + num, *yp = xp + num;
    const int derivatives = kind_ == kValues ? 0 : (kind_ == kHvp ? 2 : 1);
    basis_of<scalar_t>(r_[p], basis_, binomial_.data(), derivatives, f, df, ddf, xp, yp);
    if (kind_ == kValues) {
      for (int64_t k = 0; k < num; ++k) out_[p * num + k] = scalar_t(f[k]);
    } else if (kind_ == kJvp) {
      for (int64_t k = 0; k < num; ++k) out_[p * num + k] = scalar_t(double(d_[p]) * df[k]);
    } else {
      const double* derivative = kind_ == kVjp ? df : ddf;
      double total = 0;
      for (int64_t k = 0; k < num; ++k) total += double(g_[p * num + k]) * derivative[k];
      out_[p] = scalar_t(kind_ == kHvp ? total * double(d_[p]) : total);
    }
  }

  LOREM_VECTOR_CLONES void blocks_range(int64_t begin, int64_t end, double* scratch) const {
    const int64_t num = basis_.num;
    double* xp = scratch;                 // [n + 1][kLanes]
    double* yp = xp + (n_ + 1) * kLanes;  // [n + 1][kLanes]
    double* g = yp + (n_ + 1) * kLanes;   // [num][kLanes]
    double* o = g + num * kLanes;         // [num][kLanes]
    double* work = o + num * kLanes;      // basis_of's
    const double eps = margin<scalar_t>(), w = M_PI / basis_.cutoff;
    const double inv_l = 1.0 / basis_.limit;
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * kLanes;
      const int64_t lanes = std::min<int64_t>(kLanes, edges_ - first);
      alignas(32) double x[kLanes], c[kLanes], dc[kLanes], ddc[kLanes], dd[kLanes];
      bool inside = true;
      for (int64_t l = 0; l < kLanes; ++l) {
        const double r = l < lanes ? double(r_[first + l]) : 0.5 * basis_.limit;
        x[l] = r * inv_l;
        inside = inside && x[l] >= eps && x[l] <= 1 - eps;
        c[l] = dc[l] = ddc[l] = 0;
        if (r / basis_.cutoff < 1) {
          const double cosine = std::cos(w * r), sine = std::sin(w * r);
          c[l] = 0.5 * cosine + 0.5;
          dc[l] = -0.5 * w * sine;
          ddc[l] = -0.5 * w * w * cosine;
        }
        dd[l] = (d_ && l < lanes) ? double(d_[first + l]) : 0.0;
      }
      if (!inside) {
        for (int64_t p = first; p < first + lanes; ++p) edge(p, work);
        continue;
      }
      if (g_)
        for (int64_t k = 0; k < num; ++k)
          for (int64_t l = 0; l < kLanes; ++l)
            g[k * kLanes + l] = l < lanes ? double(g_[(first + l) * num + k]) : 0.0;
      const V vx = L::load(x);
      V xk = V{} + 1.0, yk = V{} + 1.0;
      for (int64_t k = 0; k <= n_; ++k) {
        L::store(xp + k * kLanes, xk);
        L::store(yp + k * kLanes, yk);
        xk *= vx;
        yk *= 1.0 - vx;
      }
      const V vc = L::load(c), vdc = L::load(dc), vddc = L::load(ddc), vd = L::load(dd);
      V total{};
      for (int64_t k = 0; k <= n_; ++k) {
        const V b = binomial_[k] * power(xp, k) * power(yp, n_ - k);
        if (kind_ == kValues) {
          L::store(o + k * kLanes, b * vc);
          continue;
        }
        // B^{n-1}_{k-1} - B^{n-1}_k, zero outside 0..n-1
        V first_difference{};
        if (k >= 1) first_difference += lower_[0][k - 1] * power(xp, k - 1) * power(yp, n_ - k);
        if (k <= n_ - 1) first_difference -= lower_[0][k] * power(xp, k) * power(yp, n_ - 1 - k);
        const V db = (double(n_) * inv_l) * first_difference;
        const V df = db * vc + b * vdc;
        if (kind_ == kJvp) {
          L::store(o + k * kLanes, vd * df);
        } else if (kind_ == kVjp) {
          total += L::load(g + k * kLanes) * df;
        } else {  // kHvp
          V second_difference{};
          if (k >= 2) second_difference += lower_[1][k - 2] * power(xp, k - 2) * power(yp, n_ - k);
          if (k >= 1 && k <= n_ - 1)
            second_difference -= 2.0 * lower_[1][k - 1] * power(xp, k - 1) * power(yp, n_ - 1 - k);
          if (k <= n_ - 2) second_difference += lower_[1][k] * power(xp, k) * power(yp, n_ - 2 - k);
          const V ddb = (double(n_) * double(n_ - 1) * inv_l * inv_l) * second_difference;
          total += L::load(g + k * kLanes) * (ddb * vc + 2.0 * db * vdc + b * vddc);
        }
      }
      if (per_function()) {
        for (int64_t l = 0; l < lanes; ++l)
          for (int64_t k = 0; k < num; ++k)
            out_[(first + l) * num + k] = scalar_t(o[k * kLanes + l]);
      } else {
        if (kind_ == kHvp) total *= vd;
        alignas(32) double sums[kLanes];
        L::store(sums, total);
        for (int64_t l = 0; l < lanes; ++l) out_[first + l] = scalar_t(sums[l]);
      }
    }
  }

  int64_t kind_;
  Basis basis_;
  int64_t n_;  // the degree, num - 1
  const scalar_t* r_;
  const scalar_t* g_;
  const scalar_t* d_;
  scalar_t* out_;
  int64_t edges_;
  std::vector<double> binomial_;
  std::array<std::vector<double>, 2> lower_;
};

// One kernel for the four operators: out [P, R] (values, jvp) or [P] (vjp, hvp)
Tensor radial_cpu(int64_t kind, const Tensor& distances, const Tensor& gradient,
                  const Tensor& direction, const Basis& basis) {
  const Tensor r = distances.contiguous();
  const Tensor g = gradient.defined() ? gradient.contiguous() : Tensor();
  const Tensor d = direction.defined() ? direction.contiguous() : Tensor();
  const int64_t edges = r.size(0), num = basis.num;
  const bool per_function = kind == kValues || kind == kJvp;
  Tensor out =
      per_function ? at::empty({edges, num}, r.options()) : at::empty({edges}, r.options());
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "lorem_radial_basis", [&] {
    RadialLanes<scalar_t>(
        kind, basis, r.data_ptr<scalar_t>(), g.defined() ? g.data_ptr<scalar_t>() : nullptr,
        d.defined() ? d.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), edges)
        .run();
  });
  return out;
}

// The same in torch operations (any device): B, B', B'' as [P, R] tensors
Tensor radial_composite(int64_t kind, const Tensor& r, const Tensor& gradient,
                        const Tensor& direction, const Basis& basis) {
  const int64_t degree = basis.num - 1;
  const double eps = r.scalar_type() == at::kDouble ? margin<double>() : margin<float>();
  const auto options = r.options();
  const Tensor k = at::arange(basis.num, options);
  const std::vector<double> lb = log_binomials(basis.num);
  const Tensor log_binomial = at::tensor(lb, options.dtype(at::kDouble)).to(options);
  const Tensor x = (r / basis.limit).unsqueeze(1);
  const Tensor below = x < eps, above = x > 1 - eps, outside = below | above;
  const Tensor safe_x = at::where(outside, at::full_like(x, 0.5), x);
  Tensor b =
      at::exp(log_binomial + k * at::log(safe_x) + (double(degree) - k) * at::log1p(-safe_x));
  const Tensor ends = (below & (k == 0)) | (above & (k == degree));
  b = at::where(outside, ends.to(b.scalar_type()), b);
  const double w = M_PI / basis.cutoff;
  const Tensor inside_cutoff = (r / basis.cutoff < 1).unsqueeze(1);
  const Tensor angle = (w * r).unsqueeze(1);
  const Tensor zero = at::zeros_like(angle);
  const Tensor c = at::where(inside_cutoff, 0.5 * at::cos(angle) + 0.5, zero);
  if (kind == kValues) return b * c;
  const Tensor dc = at::where(inside_cutoff, -0.5 * w * at::sin(angle), zero);
  const Tensor s = k / safe_x - (double(degree) - k) / (1 - safe_x);
  const Tensor db = at::where(outside, at::zeros_like(b), b * s / basis.limit);
  const Tensor df = db * c + b * dc;
  if (kind == kJvp) return direction.unsqueeze(1) * df;
  if (kind == kVjp) return (gradient * df).sum(1);
  const Tensor ddc = at::where(inside_cutoff, -0.5 * w * w * at::cos(angle), zero);
  const Tensor ds = -k / (safe_x * safe_x) - (double(degree) - k) / ((1 - safe_x) * (1 - safe_x));
  const Tensor ddb =
      at::where(outside, at::zeros_like(b), b * (s * s + ds) / (basis.limit * basis.limit));
  const Tensor ddf = ddb * c + 2 * db * dc + b * ddc;
  return (gradient * ddf).sum(1) * direction;
}

// -- operator kernels: the checks, then the CPU loops or the torch operations --

using RadialKernel = Tensor (*)(int64_t, const Tensor&, const Tensor&, const Tensor&, const Basis&);

constexpr const char* kOpNames[4] = {"lorem::radial_basis", "lorem::radial_basis_vjp",
                                     "lorem::radial_basis_jvp", "lorem::radial_basis_hvp"};

template <RadialKernel kernel>
Tensor checked(int64_t kind, const Tensor& r, const Tensor& g, const Tensor& d, int64_t num,
               double limit, double cutoff) {
  const char* op = kOpNames[kind];
  check_distances(r, op);
  if (kind == kVjp || kind == kHvp) check_like(g, r, num, "gradient", op);
  if (kind == kJvp || kind == kHvp) check_like(d, r, -1, "direction", op);
  return kernel(kind, r, g, d, make_basis(num, limit, cutoff, op));
}

template <RadialKernel kernel>
Tensor basis_op(const Tensor& r, int64_t num, double limit, double cutoff) {
  return checked<kernel>(kValues, r, Tensor(), Tensor(), num, limit, cutoff);
}
template <RadialKernel kernel>
Tensor vjp_op(const Tensor& r, const Tensor& g, int64_t num, double limit, double cutoff) {
  return checked<kernel>(kVjp, r, g, Tensor(), num, limit, cutoff);
}
template <RadialKernel kernel>
Tensor jvp_op(const Tensor& r, const Tensor& d, int64_t num, double limit, double cutoff) {
  return checked<kernel>(kJvp, r, Tensor(), d, num, limit, cutoff);
}
template <RadialKernel kernel>
Tensor hvp_op(const Tensor& r, const Tensor& g, const Tensor& d, int64_t num, double limit,
              double cutoff) {
  return checked<kernel>(kHvp, r, g, d, num, limit, cutoff);
}

// the composite kernel on any device, for the tests (kind 0..3: values, vjp, jvp, hvp)
Tensor composite_by_kind(int64_t kind, const Tensor& r, const c10::optional<Tensor>& g,
                         const c10::optional<Tensor>& d, int64_t num, double limit, double cutoff) {
  TORCH_CHECK(kind >= 0 && kind <= 3, "lorem::_radial_basis_composite: kind must be 0..3");
  return radial_composite(kind, r, g.has_value() ? *g : Tensor(), d.has_value() ? *d : Tensor(),
                          make_basis(num, limit, cutoff, "lorem::_radial_basis_composite"));
}

// -- autograd --

template <typename Signature>
c10::TypedOperatorHandle<Signature> find(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

Tensor call_basis(const Tensor& r, int64_t num, double limit, double cutoff) {
  static auto op = find<decltype(basis_op<radial_cpu>)>("lorem::radial_basis");
  return op.call(r, num, limit, cutoff);
}
Tensor call_vjp(const Tensor& r, const Tensor& g, int64_t num, double limit, double cutoff) {
  static auto op = find<decltype(vjp_op<radial_cpu>)>("lorem::radial_basis_vjp");
  return op.call(r, g, num, limit, cutoff);
}
Tensor call_jvp(const Tensor& r, const Tensor& d, int64_t num, double limit, double cutoff) {
  static auto op = find<decltype(jvp_op<radial_cpu>)>("lorem::radial_basis_jvp");
  return op.call(r, d, num, limit, cutoff);
}
Tensor call_hvp(const Tensor& r, const Tensor& g, const Tensor& d, int64_t num, double limit,
                double cutoff) {
  static auto op = find<decltype(hvp_op<radial_cpu>)>("lorem::radial_basis_hvp");
  return op.call(r, g, d, num, limit, cutoff);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void save_basis(AutogradContext* ctx, int64_t num, double limit, double cutoff) {
  ctx->saved_data["num"] = num;
  ctx->saved_data["limit"] = limit;
  ctx->saved_data["cutoff"] = cutoff;
}

struct Saved {
  int64_t num;
  double limit, cutoff;
};

Saved saved_basis(AutogradContext* ctx) {
  return {ctx->saved_data["num"].toInt(), ctx->saved_data["limit"].toDouble(),
          ctx->saved_data["cutoff"].toDouble()};
}

class RadialBasis : public torch::autograd::Function<RadialBasis> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& r, int64_t num, double limit,
                        double cutoff) {
    ctx->save_for_backward({r});
    save_basis(ctx, num, limit, cutoff);
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_basis(r, num, limit, cutoff);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto s = ctx->get_saved_variables();
    const Saved b = saved_basis(ctx);
    return {grad[0].defined() ? call_vjp(s[0], grad[0], b.num, b.limit, b.cutoff) : Tensor(),
            Tensor(), Tensor(), Tensor()};
  }
};

class RadialVjp : public torch::autograd::Function<RadialVjp> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& r, const Tensor& g, int64_t num,
                        double limit, double cutoff) {
    ctx->save_for_backward({r, g});
    save_basis(ctx, num, limit, cutoff);
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_vjp(r, g, num, limit, cutoff);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto s = ctx->get_saved_variables();
    const Saved b = saved_basis(ctx);
    variable_list out(5);
    if (!grad[0].defined()) return out;
    if (ctx->needs_input_grad(0)) out[0] = call_hvp(s[0], s[1], grad[0], b.num, b.limit, b.cutoff);
    if (ctx->needs_input_grad(1)) out[1] = call_jvp(s[0], grad[0], b.num, b.limit, b.cutoff);
    return out;
  }
};

class RadialJvp : public torch::autograd::Function<RadialJvp> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& r, const Tensor& d, int64_t num,
                        double limit, double cutoff) {
    ctx->save_for_backward({r, d});
    save_basis(ctx, num, limit, cutoff);
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_jvp(r, d, num, limit, cutoff);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto s = ctx->get_saved_variables();
    const Saved b = saved_basis(ctx);
    variable_list out(5);
    if (!grad[0].defined()) return out;
    if (ctx->needs_input_grad(0)) out[0] = call_hvp(s[0], grad[0], s[1], b.num, b.limit, b.cutoff);
    if (ctx->needs_input_grad(1)) out[1] = call_vjp(s[0], grad[0], b.num, b.limit, b.cutoff);
    return out;
  }
};

class RadialHvp : public torch::autograd::Function<RadialHvp> {
 public:
  static Tensor forward(AutogradContext*, const Tensor& r, const Tensor& g, const Tensor& d,
                        int64_t num, double limit, double cutoff) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_hvp(r, g, d, num, limit, cutoff);
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "lorem::radial_basis_hvp: third derivatives of the radial basis are not "
                "implemented (forces and force training need two)");
    return {};
  }
};

Tensor basis_autograd(const Tensor& r, int64_t num, double limit, double cutoff) {
  return RadialBasis::apply(r, num, limit, cutoff);
}
Tensor vjp_autograd(const Tensor& r, const Tensor& g, int64_t num, double limit, double cutoff) {
  return RadialVjp::apply(r, g, num, limit, cutoff);
}
Tensor jvp_autograd(const Tensor& r, const Tensor& d, int64_t num, double limit, double cutoff) {
  return RadialJvp::apply(r, d, num, limit, cutoff);
}
Tensor hvp_autograd(const Tensor& r, const Tensor& g, const Tensor& d, int64_t num, double limit,
                    double cutoff) {
  return RadialHvp::apply(r, g, d, num, limit, cutoff);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lorem, m) {
  m.def("radial_basis(Tensor distances, int num, float limit, float cutoff) -> Tensor");
  m.def(
      "radial_basis_vjp(Tensor distances, Tensor gradient, int num, float limit, float cutoff) "
      "-> Tensor");
  m.def(
      "radial_basis_jvp(Tensor distances, Tensor direction, int num, float limit, float cutoff) "
      "-> Tensor");
  m.def(
      "radial_basis_hvp(Tensor distances, Tensor gradient, Tensor direction, int num, "
      "float limit, float cutoff) -> Tensor");
  m.def(
      "_radial_basis_composite(int kind, Tensor distances, Tensor? gradient, Tensor? direction, "
      "int num, float limit, float cutoff) -> Tensor");
}

TORCH_LIBRARY_IMPL(lorem, CPU, m) {
  m.impl("radial_basis", basis_op<radial_cpu>);
  m.impl("radial_basis_vjp", vjp_op<radial_cpu>);
  m.impl("radial_basis_jvp", jvp_op<radial_cpu>);
  m.impl("radial_basis_hvp", hvp_op<radial_cpu>);
}

TORCH_LIBRARY_IMPL(lorem, CompositeExplicitAutograd, m) {
  m.impl("radial_basis", basis_op<radial_composite>);
  m.impl("radial_basis_vjp", vjp_op<radial_composite>);
  m.impl("radial_basis_jvp", jvp_op<radial_composite>);
  m.impl("radial_basis_hvp", hvp_op<radial_composite>);
  m.impl("_radial_basis_composite", composite_by_kind);
}

TORCH_LIBRARY_IMPL(lorem, Autograd, m) {
  m.impl("radial_basis", basis_autograd);
  m.impl("radial_basis_vjp", vjp_autograd);
  m.impl("radial_basis_jvp", jvp_autograd);
  m.impl("radial_basis_hvp", hvp_autograd);
}
