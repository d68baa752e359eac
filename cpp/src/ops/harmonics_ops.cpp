// Spherical harmonics of edge vectors as operators that keep nothing but the vectors
// (docs/design.md section 1.5).
//
// Every real spherical harmonic of the e3x basis is a homogeneous polynomial of degree l
// in (x, y, z); the model's harmonics are these polynomials as a term list
// Y[m](u) = sum_t coefficient_t x^a_t y^b_t z^c_t over the terms t of component m
// (172 terms up to l = 6, derived in nn/spherical.py). The operators, for P vectors u:
//   harmonics(u)            [P, M]  Y[m](u)
//   harmonics_vjp(u, G)     [P, 3]  sum_m G[m] dY[m]/du_j
//   harmonics_jvp(u, D)     [P, M]  sum_i D[i] dY[m]/du_i
//   harmonics_hvp(u, G, D)  [P, 3]  sum_m G[m] sum_i D[i] d2Y[m]/du_i du_j
// are each other's derivatives: harmonics' backward is vjp; vjp's is jvp (in G) and hvp
// (in u); jvp's is vjp (in D) and hvp (in u). So forces and force training (second
// derivatives) recompute from the [P, 3] vectors instead of keeping the ~40 temporaries
// of a [P] or [P, M] tensor that the generated polynomial code of e3nn keeps. Third
// derivatives (hvp's own backward) are refused by name.
//
// Kernels: CPU (blocks of 8 edges in parallel, one edge per vector lane: the block's
// monomials, then the term lists);
// CompositeExplicitAutograd (torch operations over chunks of edges: CUDA and the tests'
// reference, lorem::harmonics_chunked and friends); on CUDA in a LOREM_CUDA_KERNELS build,
// one thread per edge (harmonics_threads.hpp; on the CPU as lorem::_harmonics_device).
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <vector>

#include "channel_lanes.hpp"
#include "harmonics_threads.hpp"

#ifdef LOREM_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace lorem {
namespace {

using torch::Tensor;

// One monomial term: out[m] += coefficient x^a y^b z^c.
struct Term {
  int32_t m, a, b, c;
  double coefficient;
};

struct Polynomials {
  int64_t num_components = 0, max_power = 0;
  std::vector<Term> values;                 // Y[m]
  std::array<std::vector<Term>, 3> first;   // dY[m]/du_j
  std::array<std::vector<Term>, 9> second;  // d2Y[m]/du_i du_j, index 3 i + j
};

// The derivative of a term list along axis `axis`.
std::vector<Term> derivative(const std::vector<Term>& terms, int axis) {
  std::vector<Term> out;
  for (const Term& t : terms) {
    const int32_t power = axis == 0 ? t.a : axis == 1 ? t.b : t.c;
    if (power == 0) continue;
    Term d = t;
    d.coefficient *= power;
    (axis == 0 ? d.a : axis == 1 ? d.b : d.c) -= 1;
    out.push_back(d);
  }
  return out;
}

Polynomials read_polynomials(const Tensor& terms, const Tensor& coefficients,
                             int64_t num_components, const char* op) {
  TORCH_CHECK(terms.dim() == 2 && terms.size(1) == 4 && terms.scalar_type() == at::kLong, op,
              ": terms must be [T, 4] int64 rows (m, a, b, c)");
  TORCH_CHECK(coefficients.dim() == 1 && coefficients.size(0) == terms.size(0), op,
              ": coefficients must be [T] for the ", terms.size(0), " terms");
  const Tensor t = terms.cpu().contiguous();
  const Tensor k = coefficients.to(at::kDouble).cpu().contiguous();
  const int64_t* row = t.data_ptr<int64_t>();
  const double* coefficient = k.data_ptr<double>();
  Polynomials p;
  p.num_components = num_components;
  for (int64_t n = 0; n < t.size(0); ++n, row += 4) {
    TORCH_CHECK(0 <= row[0] && row[0] < num_components && row[1] >= 0 && row[2] >= 0 && row[3] >= 0,
                op, ": term ", n, " is outside the ", num_components, " components");
    p.values.push_back(Term{static_cast<int32_t>(row[0]), static_cast<int32_t>(row[1]),
                            static_cast<int32_t>(row[2]), static_cast<int32_t>(row[3]),
                            coefficient[n]});
    p.max_power = std::max<int64_t>(p.max_power, std::max({row[1], row[2], row[3]}));
  }
  for (int i = 0; i < 3; ++i) {
    p.first[i] = derivative(p.values, i);
    for (int j = 0; j < 3; ++j) p.second[3 * i + j] = derivative(p.first[i], j);
  }
  return p;
}

void check_vectors(const Tensor& vectors, const char* op) {
  TORCH_CHECK(vectors.dim() == 2 && vectors.size(1) == 3 && vectors.is_floating_point(), op,
              ": vectors must be [P, 3] floating point, got ", vectors.sizes());
}

void check_companion(const Tensor& t, const Tensor& vectors, int64_t width, const char* name,
                     const char* op) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == vectors.size(0) && t.size(1) == width, op, ": ", name,
              " must be [", vectors.size(0), ", ", width, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == vectors.scalar_type() && t.device() == vectors.device(), op, ": ",
              name, " must have the vectors' dtype and device");
}

// ---------------------------------------------------------------- CPU kernel

enum class Kind { kValues, kVjp, kJvp, kHvp };

// One term of a kind's sums: output `key` += k x^a y^b z^c, times G[m] where the kind has a
// gradient and D[axis] where it has a direction.
struct KeyedTerm {
  int32_t key, m, axis;
  Term term;
};

// The kind's terms sorted by output (stable: an output's terms keep their order) and each
// output's run [begin, end) of them: what the CPU kernel and the device threads walk.
struct KindTerms {
  std::vector<KeyedTerm> terms;
  std::vector<harmonics_threads::Run> runs;
};

KindTerms kind_terms(Kind kind, const Polynomials& p) {
  KindTerms out;
  auto add = [&](const std::vector<Term>& terms, int32_t key_axis, int32_t axis) {
    for (const Term& t : terms) out.terms.push_back({key_axis < 0 ? t.m : key_axis, t.m, axis, t});
  };
  switch (kind) {
    case Kind::kValues:  // out[m] = sum_t k_t mono_t
      add(p.values, -1, 0);
      break;
    case Kind::kVjp:  // out[j] = sum_{t in dY/du_j} k_t G[m_t] mono_t
      for (int j = 0; j < 3; ++j) add(p.first[j], j, 0);
      break;
    case Kind::kJvp:  // out[m] = sum_i D[i] sum_{t in dY/du_i} k_t mono_t
      for (int i = 0; i < 3; ++i) add(p.first[i], -1, i);
      break;
    case Kind::kHvp:  // out[j] = sum_i D[i] sum_{t in d2Y/du_i du_j} k_t G[m_t] mono_t
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) add(p.second[3 * i + j], j, i);
      break;
  }
  std::stable_sort(out.terms.begin(), out.terms.end(),
                   [](const KeyedTerm& a, const KeyedTerm& b) { return a.key < b.key; });
  for (size_t k = 0; k < out.terms.size(); ++k) {
    const int32_t key = out.terms[k].key;
    if (out.runs.empty() || out.runs.back().key != key)
      out.runs.push_back({key, static_cast<int32_t>(k), 0});
    out.runs.back().end = static_cast<int32_t>(k + 1);
  }
  return out;
}

// The CPU kernel works on kLanes edges at a time, one edge per lane of a vector value
// (channel_lanes.hpp): per block, the monomials x^a y^b z^c that the term lists use are
// formed once, and every term is then one multiply-add on a whole vector of edges. The
// term lists are compiled for that: each term names its monomial, its component m, its
// axis and its output (`key`), sorted by output so that an output's terms are one run.
// (One edge at a time, a term cost three indexed loads and two multiplications of
// scalars: 2.5 ns per value on this machine's harmonics, 8 ns per edge and axis in vjp.)
template <typename scalar_t>
class HarmonicsLanes {
 public:
  static constexpr int kLanes = 32 / sizeof(scalar_t);  // one AVX2 register

  HarmonicsLanes(Kind kind, const Polynomials& p, const scalar_t* u, const scalar_t* G,
                 const scalar_t* D, scalar_t* out, int64_t P)
      : kind_(kind),
        M_(p.num_components),
        powers_(std::max<int64_t>(p.max_power + 1, 2)),  // row 1 holds the inputs
        u_(u),
        G_(G),
        D_(D),
        out_(out),
        P_(P) {
    const KindTerms sorted = kind_terms(kind, p);
    for (const KeyedTerm& t : sorted.terms) {
      steps_.push_back(Step{t.key, t.m, t.axis, monomial_index(t.term)});
      coefficients_.push_back(static_cast<scalar_t>(t.term.coefficient));
    }
    runs_ = sorted.runs;
    width_ = (kind == Kind::kValues || kind == Kind::kJvp) ? M_ : 3;
  }

  void run() const {
    const int64_t blocks = (P_ + kLanes - 1) / kLanes;
    at::parallel_for(0, blocks, 32, [this](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(scratch_size());
      blocks_range(begin, end, scratch.data());
    });
  }

 private:
  using L = Lanes<scalar_t, kLanes>;
  using V = typename L::Vector;

  struct Step {
    int32_t key, m, axis, monomial;
  };
  using Run = harmonics_threads::Run;

  // every run's terms summed into its output row of lanes: k_t mono_t, times G[m_t] (with
  // a gradient) and D[axis_t] (with a direction)
  template <bool kWithGradient, bool kWithDirection>
  LOREM_LANES_INLINE void accumulate(const scalar_t* mono, const scalar_t* g, const scalar_t* d,
                                     scalar_t* o) const {
    for (const Run& run : runs_) {
      V acc0{}, acc1{};  // two chains: consecutive terms do not wait on each other
      int32_t k = run.begin;
      for (; k + 1 < run.end; k += 2) {
        acc0 += term<kWithGradient, kWithDirection>(k, mono, g, d);
        acc1 += term<kWithGradient, kWithDirection>(k + 1, mono, g, d);
      }
      if (k < run.end) acc0 += term<kWithGradient, kWithDirection>(k, mono, g, d);
      L::store(o + run.key * kLanes, acc0 + acc1);
    }
  }

  template <bool kWithGradient, bool kWithDirection>
  LOREM_LANES_INLINE V term(int32_t k, const scalar_t* mono, const scalar_t* g,
                            const scalar_t* d) const {
    const Step& s = steps_[k];
    V value = L::load(mono + s.monomial * kLanes) * coefficients_[k];
    if constexpr (kWithGradient) value *= L::load(g + s.m * kLanes);
    if constexpr (kWithDirection) value *= L::load(d + s.axis * kLanes);
    return value;
  }

  int32_t monomial_index(const Term& t) {
    const std::array<int32_t, 3> abc = {t.a, t.b, t.c};
    for (size_t k = 0; k < monomials_.size(); ++k)
      if (monomials_[k] == abc) return static_cast<int32_t>(k);
    monomials_.push_back(abc);
    return static_cast<int32_t>(monomials_.size() - 1);
  }

  // per thread: powers (3 x powers), monomials, the block's G and D by component, outputs
  int64_t scratch_size() const {
    return kLanes * (3 * powers_ + static_cast<int64_t>(monomials_.size()) + M_ + 3 + width_);
  }

  // Blocks [begin, end) of kLanes edges; the last block's missing lanes are zeros in and
  // are not written out. Everything inlined into this function, which is compiled per
  // instruction set (channel_lanes.hpp).
  LOREM_VECTOR_CLONES void blocks_range(int64_t begin, int64_t end, scalar_t* scratch) const {
    const int64_t num_monomials = static_cast<int64_t>(monomials_.size());
    scalar_t* power = scratch;                      // [3][powers][kLanes]
    scalar_t* mono = power + 3 * powers_ * kLanes;  // [monomials][kLanes]
    scalar_t* g = mono + num_monomials * kLanes;    // [M][kLanes]
    scalar_t* d = g + M_ * kLanes;                  // [3][kLanes]
    scalar_t* o = d + 3 * kLanes;                   // [width][kLanes]
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * kLanes;
      const int64_t lanes = std::min<int64_t>(kLanes, P_ - first);
      // the block's inputs, transposed to one row of lanes per quantity
      for (int axis = 0; axis < 3; ++axis) {
        scalar_t* row = power + (axis * powers_ + 1) * kLanes;
        for (int64_t l = 0; l < kLanes; ++l)
          row[l] = l < lanes ? u_[3 * (first + l) + axis] : scalar_t(0);
      }
      if (G_)
        for (int64_t m = 0; m < M_; ++m)
          for (int64_t l = 0; l < kLanes; ++l)
            g[m * kLanes + l] = l < lanes ? G_[(first + l) * M_ + m] : scalar_t(0);
      if (D_)
        for (int axis = 0; axis < 3; ++axis)
          for (int64_t l = 0; l < kLanes; ++l)
            d[axis * kLanes + l] = l < lanes ? D_[3 * (first + l) + axis] : scalar_t(0);
      for (int axis = 0; axis < 3; ++axis) {
        scalar_t* rows = power + axis * powers_ * kLanes;
        const V base = L::load(rows + kLanes);
        V running = V{} + scalar_t(1);
        L::store(rows, running);
        for (int64_t k = 2; k < powers_; ++k) {
          running = k == 2 ? base * base : running * base;
          L::store(rows + k * kLanes, running);
        }
      }
      for (int64_t k = 0; k < num_monomials; ++k) {
        const auto& abc = monomials_[k];
        L::store(mono + k * kLanes, L::load(power + abc[0] * kLanes) *
                                        L::load(power + (powers_ + abc[1]) * kLanes) *
                                        L::load(power + (2 * powers_ + abc[2]) * kLanes));
      }
      // outputs without terms (none for the e3x harmonics) stay zero
      for (int64_t key = 0; key < width_; ++key) L::store(o + key * kLanes, V{});
      switch (kind_) {
        case Kind::kValues:
          accumulate<false, false>(mono, g, d, o);
          break;
        case Kind::kVjp:
          accumulate<true, false>(mono, g, d, o);
          break;
        case Kind::kJvp:
          accumulate<false, true>(mono, g, d, o);
          break;
        case Kind::kHvp:
          accumulate<true, true>(mono, g, d, o);
          break;
      }
      for (int64_t l = 0; l < lanes; ++l)
        for (int64_t key = 0; key < width_; ++key)
          out_[(first + l) * width_ + key] = o[key * kLanes + l];
    }
  }

  Kind kind_;
  int64_t M_, powers_;
  const scalar_t* u_;
  const scalar_t* G_;
  const scalar_t* D_;
  scalar_t* out_;
  int64_t P_;
  int64_t width_ = 0;
  std::vector<std::array<int32_t, 3>> monomials_;
  std::vector<Step> steps_;
  std::vector<scalar_t> coefficients_;
  std::vector<Run> runs_;
};

template <typename scalar_t>
void run_cpu(Kind kind, const Polynomials& p, const Tensor& vectors, const Tensor& gradient,
             const Tensor& direction, Tensor& out) {
  HarmonicsLanes<scalar_t>(kind, p, vectors.data_ptr<scalar_t>(),
                           gradient.defined() ? gradient.data_ptr<scalar_t>() : nullptr,
                           direction.defined() ? direction.data_ptr<scalar_t>() : nullptr,
                           out.data_ptr<scalar_t>(), vectors.size(0))
      .run();
}

// ---------------------------------------------------------- torch-op kernel

// A term list as index tensors on the vectors' device, made once per call (on CUDA each
// is a copy from the host, which the chunks then share).
struct TermTensors {
  Tensor a, b, c;      // [T] powers of x, y, z
  Tensor coefficient;  // [T], the vectors' dtype
  Tensor component;    // [T] m
  bool empty = true;

  TermTensors(const std::vector<Term>& terms, const Tensor& like) {
    std::vector<int64_t> a_, b_, c_, m_;
    std::vector<double> k_;
    for (const Term& t : terms) {
      a_.push_back(t.a);
      b_.push_back(t.b);
      c_.push_back(t.c);
      m_.push_back(t.m);
      k_.push_back(t.coefficient);
    }
    auto index = [&](const std::vector<int64_t>& v) {
      return torch::tensor(v, torch::dtype(torch::kLong)).to(like.device());
    };
    a = index(a_);
    b = index(b_);
    c = index(c_);
    component = index(m_);
    coefficient = torch::tensor(k_, torch::dtype(torch::kDouble)).to(like.options());
    empty = terms.empty();
  }

  // [n, T] the terms' monomials times their coefficients for a chunk of vectors [n, 3]
  Tensor monomials(const Tensor& u, int64_t max_power) const {
    const Tensor powers = torch::stack(
        [&] {
          std::vector<Tensor> list = {torch::ones_like(u)};
          for (int64_t k = 1; k <= max_power; ++k) list.push_back(list.back() * u);
          return list;
        }(),
        1);  // [n, powers, 3]
    return powers.select(2, 0).index_select(1, a) * powers.select(2, 1).index_select(1, b) *
           powers.select(2, 2).index_select(1, c) * coefficient;
  }
};

void run_chunked(Kind kind, const Polynomials& p, const Tensor& vectors, const Tensor& gradient,
                 const Tensor& direction, Tensor& out) {
  // large enough that a GPU is not held up by launches (each chunk is a few dozen torch
  // operations), small enough to bound the [chunk, terms] temporaries (a few alive at
  // once, each up to 45 MB in float32 and 90 MB in float64 for the 172 terms of L = 6)
  constexpr int64_t kChunk = 65536;
  const int64_t P = vectors.size(0);
  std::vector<TermTensors> lists;
  switch (kind) {
    case Kind::kValues:
      lists.emplace_back(p.values, vectors);
      break;
    case Kind::kVjp:
    case Kind::kJvp:
      for (int j = 0; j < 3; ++j) lists.emplace_back(p.first[j], vectors);
      break;
    case Kind::kHvp:
      for (int k = 0; k < 9; ++k) lists.emplace_back(p.second[k], vectors);
      break;
  }
  for (int64_t begin = 0; begin < P; begin += kChunk) {
    const int64_t end = std::min(P, begin + kChunk);
    const Tensor u = vectors.slice(0, begin, end);
    Tensor o = out.slice(0, begin, end);
    switch (kind) {
      case Kind::kValues:
        o.index_add_(1, lists[0].component, lists[0].monomials(u, p.max_power));
        break;
      case Kind::kVjp:
        for (int j = 0; j < 3; ++j) {
          const TermTensors& terms = lists[j];
          if (terms.empty) continue;
          const Tensor g = gradient.slice(0, begin, end).index_select(1, terms.component);
          o.select(1, j).add_((terms.monomials(u, p.max_power) * g).sum(1));
        }
        break;
      case Kind::kJvp:
        for (int i = 0; i < 3; ++i) {
          const TermTensors& terms = lists[i];
          if (terms.empty) continue;
          const Tensor d = direction.slice(0, begin, end).select(1, i).unsqueeze(1);
          o.index_add_(1, terms.component, terms.monomials(u, p.max_power) * d);
        }
        break;
      case Kind::kHvp:
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) {
            const TermTensors& terms = lists[3 * i + j];
            if (terms.empty) continue;
            const Tensor g = gradient.slice(0, begin, end).index_select(1, terms.component);
            const Tensor d = direction.slice(0, begin, end).select(1, i);
            o.select(1, j).add_((terms.monomials(u, p.max_power) * g).sum(1) * d);
          }
        break;
    }
  }
}

// ---------------------------------------------------------- device kernel

// The kind's terms as the threads of harmonics_threads.hpp read them: sorted by output
// (stable, so in the CPU kernel's order), one run per output, on the vectors' device; then
// one thread per edge, on CUDA the compiled kernel, on the CPU one edge after another.
template <typename scalar_t>
void run_threads(Kind kind, const Polynomials& p, const Tensor& vectors, const Tensor& gradient,
                 const Tensor& direction, Tensor& out) {
  using harmonics_threads::Run;
  using harmonics_threads::Step;
  TORCH_CHECK(p.max_power <= harmonics_threads::kMaxPower,
              "lorem::harmonics: the device kernel holds powers up to ",
              harmonics_threads::kMaxPower, ", these terms need ", p.max_power);
  const KindTerms sorted = kind_terms(kind, p);
  std::vector<int32_t> steps;
  std::vector<double> coefficients;
  for (const KeyedTerm& t : sorted.terms) {
    steps.insert(steps.end(), {t.m, t.axis, t.term.a, t.term.b, t.term.c});
    coefficients.push_back(t.term.coefficient);
  }
  std::vector<int32_t> runs;
  for (const Run& run : sorted.runs) runs.insert(runs.end(), {run.key, run.begin, run.end});
  static_assert(sizeof(Step) == 5 * sizeof(int32_t) && sizeof(Run) == 3 * sizeof(int32_t));
  const auto device = vectors.device();
  const Tensor step_table = torch::tensor(steps, torch::kInt).to(device);
  const Tensor run_table = torch::tensor(runs, torch::kInt).to(device);
  const Tensor coefficient_table =
      torch::tensor(coefficients, torch::kDouble).to(vectors.options());
  harmonics_threads::HarmonicsForm<scalar_t> form;
  form.vectors = vectors.data_ptr<scalar_t>();
  form.gradient = gradient.defined() ? gradient.data_ptr<scalar_t>() : nullptr;
  form.direction = direction.defined() ? direction.data_ptr<scalar_t>() : nullptr;
  form.out = out.data_ptr<scalar_t>();
  form.steps = reinterpret_cast<const Step*>(step_table.data_ptr<int32_t>());
  form.coefficients = coefficient_table.data_ptr<scalar_t>();
  form.runs = reinterpret_cast<const Run*>(run_table.data_ptr<int32_t>());
  form.num_runs = static_cast<int32_t>(runs.size() / 3);
  form.width = static_cast<int32_t>(out.size(1));
  form.components = static_cast<int32_t>(p.num_components);
  form.max_power = static_cast<int32_t>(p.max_power);
  form.num_edges = vectors.size(0);
  if (vectors.is_cuda()) {
#ifdef LOREM_CUDA_KERNELS
    const c10::cuda::CUDAGuard guard(device);
    const char* error =
        harmonics_threads::launch_on_cuda(form, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(error == nullptr, "lorem::harmonics: the CUDA kernel failed: ", error);
    return;
#else
    TORCH_CHECK(false,
                "lorem::harmonics: this library was built without its CUDA kernels "
                "(LOREM_CUDA_KERNELS)");
#endif
  }
  TORCH_CHECK(vectors.is_cpu(), "lorem::harmonics: the device kernel runs on CUDA or the CPU, not ",
              device);
  at::parallel_for(0, form.num_edges, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) harmonics_threads::edge_thread(form, e);
  });
}

// ---------------------------------------------------------------- operators

enum class Path { kDefault, kChunked, kThreads };

// The CPU kernel for CPU tensors; on CUDA the threads in a LOREM_CUDA_KERNELS build (while
// the terms' powers fit them), the torch-op kernel over chunks otherwise. `path` forces the
// chunked kernel (the reference operators) or the threads (their tests).
Tensor evaluate(Kind kind, Path path, const Tensor& vectors_in, const Tensor& gradient_in,
                const Tensor& direction_in, const Tensor& terms, const Tensor& coefficients,
                int64_t num_components, const char* op) {
  check_vectors(vectors_in, op);
  const Tensor vectors = vectors_in.contiguous();
  const Tensor gradient = gradient_in.defined() ? gradient_in.contiguous() : Tensor();
  const Tensor direction = direction_in.defined() ? direction_in.contiguous() : Tensor();
  // the kinds' operands: a gradient for vjp and hvp, a direction for jvp and hvp, no other
  const bool takes_gradient = kind == Kind::kVjp || kind == Kind::kHvp;
  const bool takes_direction = kind == Kind::kJvp || kind == Kind::kHvp;
  TORCH_CHECK(gradient.defined() == takes_gradient, op, ": this kind ",
              takes_gradient ? "needs a gradient" : "takes no gradient");
  TORCH_CHECK(direction.defined() == takes_direction, op, ": this kind ",
              takes_direction ? "needs a direction" : "takes no direction");
  if (gradient.defined()) check_companion(gradient, vectors, num_components, "gradient", op);
  if (direction.defined()) check_companion(direction, vectors, 3, "direction", op);
  const Polynomials p = read_polynomials(terms, coefficients, num_components, op);
  const bool per_component = kind == Kind::kValues || kind == Kind::kJvp;
  const std::vector<int64_t> shape = {vectors.size(0), per_component ? num_components : 3};
#ifdef LOREM_CUDA_KERNELS
  const bool threads_on_cuda = vectors.is_cuda() && p.max_power <= harmonics_threads::kMaxPower;
#else
  const bool threads_on_cuda = false;
#endif
  const bool threads = path == Path::kThreads || (path == Path::kDefault && threads_on_cuda);
  const bool on_cpu = path == Path::kDefault && vectors.is_cpu();
  // the CPU kernel and the threads write every value; the torch-op kernel adds into zeros
  Tensor out = on_cpu || threads ? torch::empty(shape, vectors.options())
                                 : torch::zeros(shape, vectors.options());
  if (vectors.size(0) == 0) return out;
  if (threads) {
    AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "lorem::harmonics", [&] {
      run_threads<scalar_t>(kind, p, vectors, gradient, direction, out);
    });
  } else if (!on_cpu) {
    run_chunked(kind, p, vectors, gradient, direction, out);
  } else {
    AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "lorem::harmonics", [&] {
      run_cpu<scalar_t>(kind, p, vectors, gradient, direction, out);
    });
  }
  return out;
}

// The kernels, by device: CPU loops, or torch operations (other devices, and the
// *_chunked reference operators on any device).
Tensor harmonics_kernel(const Tensor& u, const Tensor& terms, const Tensor& k, int64_t M) {
  return evaluate(Kind::kValues, Path::kDefault, u, {}, {}, terms, k, M, "lorem::harmonics");
}
Tensor vjp_kernel(const Tensor& u, const Tensor& G, const Tensor& terms, const Tensor& k,
                  int64_t M) {
  return evaluate(Kind::kVjp, Path::kDefault, u, G, {}, terms, k, M, "lorem::harmonics_vjp");
}
Tensor jvp_kernel(const Tensor& u, const Tensor& D, const Tensor& terms, const Tensor& k,
                  int64_t M) {
  return evaluate(Kind::kJvp, Path::kDefault, u, {}, D, terms, k, M, "lorem::harmonics_jvp");
}
Tensor hvp_kernel(const Tensor& u, const Tensor& G, const Tensor& D, const Tensor& terms,
                  const Tensor& k, int64_t M) {
  return evaluate(Kind::kHvp, Path::kDefault, u, G, D, terms, k, M, "lorem::harmonics_hvp");
}
Tensor chunked_kernel(int64_t kind, const Tensor& u, const std::optional<Tensor>& G,
                      const std::optional<Tensor>& D, const Tensor& terms, const Tensor& k,
                      int64_t M) {
  TORCH_CHECK(0 <= kind && kind <= 3, "lorem::harmonics_chunked: kind must be 0..3");
  return evaluate(static_cast<Kind>(kind), Path::kChunked, u, G.value_or(Tensor()),
                  D.value_or(Tensor()), terms, k, M, "lorem::harmonics_chunked");
}
Tensor threads_kernel(int64_t kind, const Tensor& u, const std::optional<Tensor>& G,
                      const std::optional<Tensor>& D, const Tensor& terms, const Tensor& k,
                      int64_t M) {
  TORCH_CHECK(0 <= kind && kind <= 3, "lorem::_harmonics_device: kind must be 0..3");
  return evaluate(static_cast<Kind>(kind), Path::kThreads, u, G.value_or(Tensor()),
                  D.value_or(Tensor()), terms, k, M, "lorem::_harmonics_device");
}

template <typename Signature>
auto find(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

Tensor call_harmonics(const Tensor& u, const Tensor& terms, const Tensor& k, int64_t M) {
  static auto op = find<decltype(harmonics_kernel)>("lorem::harmonics");
  return op.call(u, terms, k, M);
}
Tensor call_vjp(const Tensor& u, const Tensor& G, const Tensor& terms, const Tensor& k, int64_t M) {
  static auto op = find<decltype(vjp_kernel)>("lorem::harmonics_vjp");
  return op.call(u, G, terms, k, M);
}
Tensor call_jvp(const Tensor& u, const Tensor& D, const Tensor& terms, const Tensor& k, int64_t M) {
  static auto op = find<decltype(jvp_kernel)>("lorem::harmonics_jvp");
  return op.call(u, D, terms, k, M);
}
Tensor call_hvp(const Tensor& u, const Tensor& G, const Tensor& D, const Tensor& terms,
                const Tensor& k, int64_t M) {
  static auto op = find<decltype(hvp_kernel)>("lorem::harmonics_hvp");
  return op.call(u, G, D, terms, k, M);
}

// ---------------------------------------------------------------- autograd

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void save(AutogradContext* ctx, std::vector<Tensor> tensors, int64_t M) {
  ctx->save_for_backward(tensors);
  ctx->saved_data["components"] = M;
}

class Harmonics : public torch::autograd::Function<Harmonics> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& u, const Tensor& terms, const Tensor& k,
                        int64_t M) {
    save(ctx, {u, terms, k}, M);
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_harmonics(u, terms, k, M);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto s = ctx->get_saved_variables();
    const int64_t M = ctx->saved_data["components"].toInt();
    return {grad[0].defined() ? call_vjp(s[0], grad[0], s[1], s[2], M) : Tensor(), Tensor(),
            Tensor(), Tensor()};
  }
};

class Vjp : public torch::autograd::Function<Vjp> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& u, const Tensor& G, const Tensor& terms,
                        const Tensor& k, int64_t M) {
    save(ctx, {u, G, terms, k}, M);
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_vjp(u, G, terms, k, M);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto s = ctx->get_saved_variables();
    const int64_t M = ctx->saved_data["components"].toInt();
    variable_list out(5);
    if (!grad[0].defined()) return out;
    if (ctx->needs_input_grad(0)) out[0] = call_hvp(s[0], s[1], grad[0], s[2], s[3], M);
    if (ctx->needs_input_grad(1)) out[1] = call_jvp(s[0], grad[0], s[2], s[3], M);
    return out;
  }
};

class Jvp : public torch::autograd::Function<Jvp> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& u, const Tensor& D, const Tensor& terms,
                        const Tensor& k, int64_t M) {
    save(ctx, {u, D, terms, k}, M);
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_jvp(u, D, terms, k, M);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto s = ctx->get_saved_variables();
    const int64_t M = ctx->saved_data["components"].toInt();
    variable_list out(5);
    if (!grad[0].defined()) return out;
    if (ctx->needs_input_grad(0)) out[0] = call_hvp(s[0], grad[0], s[1], s[2], s[3], M);
    if (ctx->needs_input_grad(1)) out[1] = call_vjp(s[0], grad[0], s[2], s[3], M);
    return out;
  }
};

class Hvp : public torch::autograd::Function<Hvp> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& u, const Tensor& G, const Tensor& D,
                        const Tensor& terms, const Tensor& k, int64_t M) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_hvp(u, G, D, terms, k, M);
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "lorem::harmonics_hvp: third derivatives of the spherical harmonics are not "
                "implemented (forces and force training need two)");
    return {};
  }
};

Tensor harmonics_autograd(const Tensor& u, const Tensor& terms, const Tensor& k, int64_t M) {
  return Harmonics::apply(u, terms, k, M);
}
Tensor vjp_autograd(const Tensor& u, const Tensor& G, const Tensor& terms, const Tensor& k,
                    int64_t M) {
  return Vjp::apply(u, G, terms, k, M);
}
Tensor jvp_autograd(const Tensor& u, const Tensor& D, const Tensor& terms, const Tensor& k,
                    int64_t M) {
  return Jvp::apply(u, D, terms, k, M);
}
Tensor hvp_autograd(const Tensor& u, const Tensor& G, const Tensor& D, const Tensor& terms,
                    const Tensor& k, int64_t M) {
  return Hvp::apply(u, G, D, terms, k, M);
}

}  // namespace
}  // namespace lorem

TORCH_LIBRARY_FRAGMENT(lorem, m) {
  m.def("harmonics(Tensor vectors, Tensor terms, Tensor coefficients, int components) -> Tensor");
  m.def(
      "harmonics_vjp(Tensor vectors, Tensor gradient, Tensor terms, Tensor coefficients, "
      "int components) -> Tensor");
  m.def(
      "harmonics_jvp(Tensor vectors, Tensor direction, Tensor terms, Tensor coefficients, "
      "int components) -> Tensor");
  m.def(
      "harmonics_hvp(Tensor vectors, Tensor gradient, Tensor direction, Tensor terms, "
      "Tensor coefficients, int components) -> Tensor");
  // kind 0..3: values, vjp, jvp, hvp from torch operations (the tests' reference)
  m.def(
      "harmonics_chunked(int kind, Tensor vectors, Tensor? gradient, Tensor? direction, "
      "Tensor terms, Tensor coefficients, int components) -> Tensor");
  // the same by the device kernel's threads (CUDA: the compiled kernel in a
  // LOREM_CUDA_KERNELS build; CPU: one edge after another, which the tests hold to the CPU
  // kernel)
  m.def(
      "_harmonics_device(int kind, Tensor vectors, Tensor? gradient, Tensor? direction, "
      "Tensor terms, Tensor coefficients, int components) -> Tensor");
}

// one kernel for every device: it takes the loops on CPU, the threads on CUDA in a
// LOREM_CUDA_KERNELS build and torch operations elsewhere
TORCH_LIBRARY_IMPL(lorem, CompositeExplicitAutograd, m) {
  m.impl("harmonics", &lorem::harmonics_kernel);
  m.impl("harmonics_vjp", &lorem::vjp_kernel);
  m.impl("harmonics_jvp", &lorem::jvp_kernel);
  m.impl("harmonics_hvp", &lorem::hvp_kernel);
  m.impl("harmonics_chunked", &lorem::chunked_kernel);
  m.impl("_harmonics_device", &lorem::threads_kernel);
}

TORCH_LIBRARY_IMPL(lorem, Autograd, m) {
  m.impl("harmonics", &lorem::harmonics_autograd);
  m.impl("harmonics_vjp", &lorem::vjp_autograd);
  m.impl("harmonics_jvp", &lorem::jvp_autograd);
  m.impl("harmonics_hvp", &lorem::hvp_autograd);
}
