// lorem::coupling_form: the feature-wise tensor product of two spherical inputs of the same
// atoms, over the nonzero Clebsch-Gordan entries only (docs/design.md section 1.4).
//
// The product z[n, m3, c] = sum_e cg_e W[path_e, c] x1[n, m1_e, c] x2[n, m2_e, c] is the
// gradient with respect to G of the multilinear form
//   F(x1, x2, W, G) = sum_{n, e, c} cg_e x1[n, m1, c] x2[n, m2, c] W[path, c] G[n, m3, c],
// and the derivative of F with respect to any one factor is a contraction over the same
// sparse pattern. So one operator, `coupling_form(target, ...)`, computes dF/d(factor
// `target`) from the other three, and its backward is the same operator with the incoming
// gradient in the target's slot: closed under differentiation (force training), with no
// [N, C1 * C2, s] outer product formed or kept (the dense product forms 49 x 49 x s values
// per atom for L = 6, where 6,460 entries are nonzero).
//
// Factor slots: 0 input1 [N, C1, S], 1 input2 [N, C2, S], 2 weights [paths, S],
// 3 gradient [N, C3, S]; the target's slot is None. entries [E, 4] int64 rows
// (m1, m2, m3, path); coupling [E] the coefficients.
//
// Kernels: CPU (parallel over atoms; entries sorted by the component they write, so that a
// run of entries sums in registers and is written once); for other devices (CUDA) the same
// contraction from torch operations over chunks of atoms, in bounded memory; it is also the
// reference the tests hold the CPU kernel to (lorem::coupling_form_chunked).
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <optional>
#include <string>
#include <vector>

#include "channel_lanes.hpp"
#include "multilinear_form.hpp"
#include "sparse_form_device.hpp"

namespace lorem {
namespace {

using torch::Tensor;
using OptionalTensor = std::optional<Tensor>;

constexpr int64_t kInput1 = 0;
constexpr int64_t kInput2 = 1;
constexpr int64_t kWeights = 2;
constexpr int64_t kGradient = 3;
constexpr int64_t kNumFactors = 4;
constexpr std::array<const char*, kNumFactors> kFactorNames = {"input1", "input2", "weights",
                                                               "gradient"};

// The checked problem: sizes and the factors (target slot undefined), all contiguous.
struct Problem {
  int64_t target = 0;
  int64_t num_atoms = 0, channels = 0, num_paths = 0, num_entries = 0;
  std::array<int64_t, kNumFactors> components = {0, 0, 0, 0};  // C1, C2, -, C3
  std::array<Tensor, kNumFactors> factors;
  Tensor entries, coupling;
  std::vector<int64_t> target_shape;
};

std::string shape_string(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t d = 0; d < shape.size(); ++d) out += (d ? ", " : "") + std::to_string(shape[d]);
  return out + "]";
}

void agree(int64_t& size, int64_t value, const char* what) {
  if (size < 0) size = value;
  TORCH_CHECK(size == value, "lorem::coupling_form: inconsistent ", what, " (", size, " and ",
              value, ")");
}

Problem check_problem(int64_t target, at::IntArrayRef target_shape,
                      const std::array<OptionalTensor, kNumFactors>& factors, const Tensor& entries,
                      const Tensor& coupling) {
  const auto slots = multilinear::check_slots<kNumFactors>("lorem::coupling_form", target,
                                                           target_shape, factors, kFactorNames);
  Problem problem;
  problem.target = target;
  problem.target_shape = target_shape.vec();
  int64_t atoms = -1, channels = -1, paths = -1;
  std::array<int64_t, kNumFactors> components = {-1, -1, -1, -1};
  const at::ScalarType dtype = slots.options.dtype().toScalarType();
  problem.factors = slots.factors;
  for (int64_t k = 0; k < kNumFactors; ++k) {
    const std::vector<int64_t>& shape = slots.shapes[k];
    if (k == kWeights) {
      TORCH_CHECK(shape.size() == 2, "lorem::coupling_form: weights must be [paths, S], got ",
                  shape_string(shape));
      agree(paths, shape[0], "path count");
      agree(channels, shape[1], "channel count");
    } else {
      TORCH_CHECK(shape.size() == 3, "lorem::coupling_form: ", kFactorNames[k],
                  " must be [N, components, S], got ", shape_string(shape));
      agree(atoms, shape[0], "atom count");
      agree(components[k], shape[1], kFactorNames[k]);
      agree(channels, shape[2], "channel count");
    }
  }
  TORCH_CHECK(entries.scalar_type() == at::kLong && entries.dim() == 2 && entries.size(1) == 4,
              "lorem::coupling_form: entries must be [E, 4] int64, got ",
              shape_string(entries.sizes()));
  TORCH_CHECK(
      coupling.dim() == 1 && coupling.size(0) == entries.size(0) && coupling.scalar_type() == dtype,
      "lorem::coupling_form: coupling must be [E] of the factors' dtype");
  problem.num_atoms = atoms;
  problem.channels = channels;
  problem.num_paths = paths;
  problem.components = components;
  problem.num_entries = entries.size(0);
  problem.entries = entries.contiguous();
  problem.coupling = coupling.contiguous();
  return problem;
}

// ---------------------------------------------------------------- CPU kernel

struct Entry {
  int32_t m1, m2, m3, path;
  double coupling;
};

std::vector<Entry> read_entries(const Problem& p) {
  const Tensor entries = p.entries.cpu();
  const Tensor coupling = p.coupling.to(at::kDouble).cpu();
  const int64_t* e = entries.data_ptr<int64_t>();
  const double* cg = coupling.data_ptr<double>();
  std::vector<Entry> out(p.num_entries);
  for (int64_t k = 0; k < p.num_entries; ++k) {
    const int64_t* row = e + 4 * k;
    TORCH_CHECK(0 <= row[0] && row[0] < p.components[kInput1] && 0 <= row[1] &&
                    row[1] < p.components[kInput2] && 0 <= row[2] &&
                    row[2] < p.components[kGradient] && 0 <= row[3] && row[3] < p.num_paths,
                "lorem::coupling_form: entry ", k, " indexes outside the factors");
    out[k] = Entry{static_cast<int32_t>(row[0]), static_cast<int32_t>(row[1]),
                   static_cast<int32_t>(row[2]), static_cast<int32_t>(row[3]), cg[k]};
  }
  return out;
}

// One target's contraction. kChannels > 0 fixes the channel count at compile time (the
// default model's 8) so that the channel loops unroll and vectorise.
template <typename scalar_t, int kChannels>
struct CpuKernel {
  // an entry as the kernel walks it: the output component (or path), the components of
  // the two per-atom factors that multiply it, and its row of cg * W (or cg alone)
  struct Step {
    int32_t out, a, b, row;
    int32_t g;  // the gradient's component (used by the weights target)
  };
  struct Run {
    int32_t key, begin, end;
  };
  const Problem& p;
  static constexpr bool kFixed = kChannels > 0;
  static constexpr int kLocal = kFixed ? kChannels : 1;
  int64_t S;
  std::vector<Step> steps;
  std::vector<Run> runs;
  std::vector<scalar_t> rows;  // [E, S]: cg W[path] per entry, or [E] cg for the weights
  const scalar_t *A = nullptr, *B = nullptr;  // the two per-atom factors that are not target
  int64_t stride_a = 0, stride_b = 0, stride_out = 0;

  CpuKernel(const Problem& problem, const std::vector<Entry>& entries)
      : p(problem), S(kFixed ? kChannels : problem.channels) {
    const int64_t target = problem.target;
    // the per-atom factors other than the target, in slot order; for the weights
    // target these are input1 and input2 and the gradient is the third (see weights())
    std::vector<int64_t> others;
    for (int64_t k : {kInput1, kInput2, kGradient})
      if (k != target) others.push_back(k);
    const int64_t first = others[0], second = others[1];
    A = problem.factors[first].data_ptr<scalar_t>();
    B = problem.factors[second].data_ptr<scalar_t>();
    stride_a = problem.components[first] * S;
    stride_b = problem.components[second] * S;
    stride_out = target == kWeights ? 0 : problem.components[target] * S;
    auto component = [](const Entry& e, int64_t slot) {
      return slot == kInput1 ? e.m1 : slot == kInput2 ? e.m2 : slot == kGradient ? e.m3 : e.path;
    };
    std::vector<int32_t> order(entries.size());
    for (size_t k = 0; k < order.size(); ++k) order[k] = static_cast<int32_t>(k);
    std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) {
      return component(entries[x], target) < component(entries[y], target);
    });
    const scalar_t* W =
        target == kWeights ? nullptr : problem.factors[kWeights].data_ptr<scalar_t>();
    const int64_t width = target == kWeights ? 1 : S;
    rows.resize(entries.size() * width);
    for (int32_t k : order) {
      const Entry& e = entries[k];
      const int32_t position = static_cast<int32_t>(steps.size());
      scalar_t* row = rows.data() + position * width;
      if (W)
        for (int64_t c = 0; c < S; ++c)
          row[c] = static_cast<scalar_t>(e.coupling) * W[e.path * S + c];
      else
        row[0] = static_cast<scalar_t>(e.coupling);
      const int32_t key = component(e, target);
      if (runs.empty() || runs.back().key != key) runs.push_back(Run{key, position, position});
      runs.back().end = position + 1;
      steps.push_back(Step{key, component(e, first), component(e, second), position, e.m3});
    }
  }

  int64_t channels() const { return kFixed ? kChannels : S; }

  // per_atom() for atoms [begin, end), the channel count fixed (kFixed)
  LOREM_VECTOR_CLONES void per_atom_fixed(int64_t begin, int64_t end, scalar_t* out) const {
    using L = Lanes<scalar_t, kLocal>;
    using V = typename L::Vector;
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* a_row = A + n * stride_a;
      const scalar_t* b_row = B + n * stride_b;
      scalar_t* o = out + n * stride_out;
      for (const Run& run : runs) {
        V acc0{}, acc1{};  // two chains: consecutive entries do not wait on each other
        int32_t k = run.begin;
        for (; k + 1 < run.end; k += 2) {
          const Step& e0 = steps[k];
          const Step& e1 = steps[k + 1];
          acc0 += L::load(rows.data() + e0.row * kLocal) * L::load(a_row + e0.a * kLocal) *
                  L::load(b_row + e0.b * kLocal);
          acc1 += L::load(rows.data() + e1.row * kLocal) * L::load(a_row + e1.a * kLocal) *
                  L::load(b_row + e1.b * kLocal);
        }
        if (k < run.end) {
          const Step& e = steps[k];
          acc0 += L::load(rows.data() + e.row * kLocal) * L::load(a_row + e.a * kLocal) *
                  L::load(b_row + e.b * kLocal);
        }
        L::store(o + run.key * kLocal, acc0 + acc1);
      }
    }
  }

  // out[n, key, c] = sum over the key's run of rows[e, c] A[n, a_e, c] B[n, b_e, c]
  void per_atom(scalar_t* out) const {
    const int64_t s = channels();
    at::parallel_for(0, p.num_atoms, 8, [&](int64_t begin, int64_t end) {
      if constexpr (kFixed) {
        per_atom_fixed(begin, end, out);
        return;
      }
      std::vector<scalar_t> scratch(2 * s);
      scalar_t* acc = scratch.data();
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* a_row = A + n * stride_a;
        const scalar_t* b_row = B + n * stride_b;
        scalar_t* o = out + n * stride_out;
        for (const Run& run : runs) {
          std::fill(acc, acc + 2 * s, scalar_t(0));
          int32_t k = run.begin;
          // two accumulators: consecutive entries do not wait on each other
          for (; k + 1 < run.end; k += 2) {
            const Step& e0 = steps[k];
            const Step& e1 = steps[k + 1];
            const scalar_t* r0 = rows.data() + e0.row * s;
            const scalar_t* r1 = rows.data() + e1.row * s;
            const scalar_t* a0 = a_row + e0.a * s;
            const scalar_t* b0 = b_row + e0.b * s;
            const scalar_t* a1 = a_row + e1.a * s;
            const scalar_t* b1 = b_row + e1.b * s;
            for (int64_t c = 0; c < s; ++c) {
              acc[c] += r0[c] * a0[c] * b0[c];
              acc[s + c] += r1[c] * a1[c] * b1[c];
            }
          }
          if (k < run.end) {
            const Step& e = steps[k];
            const scalar_t* r = rows.data() + e.row * s;
            const scalar_t* a = a_row + e.a * s;
            const scalar_t* b = b_row + e.b * s;
            for (int64_t c = 0; c < s; ++c) acc[c] += r[c] * a[c] * b[c];
          }
          scalar_t* o_key = o + run.key * s;
          for (int64_t c = 0; c < s; ++c) o_key[c] = acc[c] + acc[s + c];
        }
      }
    });
  }

  // weights() for atoms [begin, end) into this thread's partial sums, kFixed
  LOREM_VECTOR_CLONES void weights_fixed(int64_t begin, int64_t end, const scalar_t* G,
                                         int64_t stride_g, scalar_t* mine) const {
    using L = Lanes<scalar_t, kLocal>;
    using V = typename L::Vector;
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* a_row = A + n * stride_a;
      const scalar_t* b_row = B + n * stride_b;
      const scalar_t* g_row = G + n * stride_g;
      for (const Run& run : runs) {
        V acc{};
        for (int32_t k = run.begin; k < run.end; ++k) {
          const Step& e = steps[k];
          acc += rows[e.row] * L::load(a_row + e.a * kLocal) * L::load(b_row + e.b * kLocal) *
                 L::load(g_row + e.g * kLocal);
        }
        L::add_to(mine + run.key * kLocal, acc);
      }
    }
  }

  // weights: out[path, c] = sum_n sum_{e in path} cg x1[n, m1, c] x2[n, m2, c] G[n, m3, c];
  // here A = input1, B = input2, and the gradient is read at the run's m3 per step
  void weights(scalar_t* out) const {
    const int64_t s = channels();
    const scalar_t* G = p.factors[kGradient].data_ptr<scalar_t>();
    const int64_t stride_g = p.components[kGradient] * s;
    const int64_t threads = at::get_num_threads();
    const int64_t size = p.num_paths * s;
    std::vector<scalar_t> partial(threads * size, scalar_t(0));
    at::parallel_for(0, p.num_atoms, 8, [&](int64_t begin, int64_t end) {
      scalar_t* mine = partial.data() + at::get_thread_num() * size;
      if constexpr (kFixed) {
        weights_fixed(begin, end, G, stride_g, mine);
        return;
      }
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* a_row = A + n * stride_a;
        const scalar_t* b_row = B + n * stride_b;
        const scalar_t* g_row = G + n * stride_g;
        for (const Run& run : runs) {
          scalar_t* o = mine + run.key * s;
          for (int32_t k = run.begin; k < run.end; ++k) {
            const Step& e = steps[k];
            const scalar_t cg = rows[e.row];
            const scalar_t* a = a_row + e.a * s;
            const scalar_t* b = b_row + e.b * s;
            const scalar_t* g = g_row + e.g * s;
            for (int64_t c = 0; c < s; ++c) o[c] += cg * a[c] * b[c] * g[c];
          }
        }
      }
    });
    for (int64_t t = 0; t < threads; ++t)
      for (int64_t k = 0; k < size; ++k) out[k] += partial[t * size + k];
  }

  void run(scalar_t* out) const {
    if (p.target == kWeights) return weights(out);
    per_atom(out);
  }
};

Tensor coupling_form_cpu(int64_t target, at::IntArrayRef target_shape, const OptionalTensor& input1,
                         const OptionalTensor& input2, const OptionalTensor& weights,
                         const OptionalTensor& gradient, const Tensor& entries,
                         const Tensor& coupling) {
  const Problem p =
      check_problem(target, target_shape, {input1, input2, weights, gradient}, entries, coupling);
  const Tensor& any_factor = p.factors[target == 0 ? 1 : 0];
  Tensor out = torch::zeros(p.target_shape, any_factor.options());
  if (p.num_atoms == 0 || p.num_entries == 0 || out.numel() == 0) return out;
  const std::vector<Entry> list = read_entries(p);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lorem::coupling_form", [&] {
    if (p.channels == 8)
      CpuKernel<scalar_t, 8>(p, list).run(out.data_ptr<scalar_t>());
    else
      CpuKernel<scalar_t, 0>(p, list).run(out.data_ptr<scalar_t>());
  });
  return out;
}

// ---------------------------------------------------------- torch-op kernel

// The same contraction from torch operations, chunk by chunk of atoms, so that every
// device runs it in bounded memory: per chunk the factors are expanded onto the entries,
// [chunk, E, S] a few at a time.
Tensor coupling_form_chunked(int64_t target, at::IntArrayRef target_shape,
                             const OptionalTensor& input1, const OptionalTensor& input2,
                             const OptionalTensor& weights, const OptionalTensor& gradient,
                             const Tensor& entries, const Tensor& coupling) {
  const Problem p =
      check_problem(target, target_shape, {input1, input2, weights, gradient}, entries, coupling);
  const Tensor& any_factor = p.factors[target == 0 ? 1 : 0];
  Tensor out = torch::zeros(p.target_shape, any_factor.options());
  if (p.num_atoms == 0 || p.num_entries == 0 || out.numel() == 0) return out;
  const Tensor entries_here = p.entries.to(any_factor.device());
  const std::array<Tensor, kNumFactors> index = {
      entries_here.select(1, 0), entries_here.select(1, 1), entries_here.select(1, 3),
      entries_here.select(1, 2)};
  const int64_t E = p.num_entries, S = p.channels;
  // elements of one [chunk, E, S] tensor: on a GPU 1 << 25 (128 MB in float32; at
  // L = 6, s = 8 a few hundred atoms per chunk, where some 80 made it wait on launches),
  // elsewhere (the tests' reference) 1 << 22, so that their problems cross chunks
  const int64_t kBudget = int64_t(1) << (any_factor.is_cuda() ? 25 : 22);
  const int64_t chunk = std::max<int64_t>(1, kBudget / std::max<int64_t>(1, E * S));
  Tensor entry_weights =
      target == kWeights
          ? p.coupling.view({E, 1})
          : p.coupling.view({E, 1}) * p.factors[kWeights].index_select(0, index[kWeights]);
  for (int64_t begin = 0; begin < p.num_atoms; begin += chunk) {
    const int64_t end = std::min(p.num_atoms, begin + chunk);
    Tensor product = entry_weights.unsqueeze(0);  // [1, E, S or 1]
    for (int64_t k : {kInput1, kInput2, kGradient})
      if (k != target)
        product = product * p.factors[k].slice(0, begin, end).index_select(1, index[k]);
    product = product.expand({end - begin, E, S});
    if (target == kWeights)
      out.index_add_(0, index[kWeights], product.sum(0));
    else
      out.slice(0, begin, end).index_add_(1, index[target], product);
  }
  return out;
}

// ---------------------------------------------------------- device kernel

// The contraction as the threads of the device kernel (sparse_form_threads.hpp): on CUDA
// the compiled kernel, on the CPU its threads one after another (what the tests hold to
// the CPU kernel). Members are the atoms, one per thread; the weights sum blocks of atoms
// atomically.
Tensor coupling_form_device(int64_t target, at::IntArrayRef target_shape,
                            const OptionalTensor& input1, const OptionalTensor& input2,
                            const OptionalTensor& weights, const OptionalTensor& gradient,
                            const Tensor& entries, const Tensor& coupling) {
  const Problem p =
      check_problem(target, target_shape, {input1, input2, weights, gradient}, entries, coupling);
  using namespace sparse_form;
  sparse_form::Problem form;
  form.op = "lorem::coupling_form";
  form.target = target;
  form.target_shape = p.target_shape;
  form.entries = p.entries;
  form.coupling = p.coupling;
  form.channels = p.channels;
  form.num_members = p.num_atoms;
  // slot order; the entries' columns are (m1, m2, m3, path)
  const int64_t n = p.num_atoms;
  form.factors = {
      {p.factors[kInput1], Tensor(), "", n, kRowIsMember, 0, p.components[kInput1], true},
      {p.factors[kInput2], Tensor(), "", n, kRowIsMember, 1, p.components[kInput2], true},
      {p.factors[kWeights], Tensor(), "", 1, kRowFixed, 3, p.num_paths, true},
      {p.factors[kGradient], Tensor(), "", n, kRowIsMember, 2, p.components[kGradient], true}};
  if (target == kWeights) form.group_kind = kGroupBlock;
  return sparse_form::run(form);
}

// ---------------------------------------------------------------- autograd

Tensor coupling_form_call(int64_t target, at::IntArrayRef target_shape,
                          const OptionalTensor& input1, const OptionalTensor& input2,
                          const OptionalTensor& weights, const OptionalTensor& gradient,
                          const Tensor& entries, const Tensor& coupling) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lorem::coupling_form", "")
                       .typed<decltype(coupling_form_call)>();
  return op.call(target, target_shape, input1, input2, weights, gradient, entries, coupling);
}

class CouplingForm : public torch::autograd::Function<CouplingForm> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, int64_t target,
                        at::IntArrayRef target_shape, const OptionalTensor& input1,
                        const OptionalTensor& input2, const OptionalTensor& weights,
                        const OptionalTensor& gradient, const Tensor& entries,
                        const Tensor& coupling) {
    multilinear::save<kNumFactors>(ctx, target, target_shape, {input1, input2, weights, gradient},
                                   {entries, coupling});
    at::AutoDispatchBelowADInplaceOrView guard;
    return coupling_form_call(target, target_shape, input1, input2, weights, gradient, entries,
                              coupling);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    // 2 leading non-tensor arguments, the 4 factor slots, entries and coupling
    return multilinear::backward<kNumFactors>(
        ctx, grad_outputs[0], 2, torch::autograd::variable_list(2 + kNumFactors + 2),
        [](int64_t k, const std::vector<int64_t>& shape, const auto& args, const auto& fixed) {
          return coupling_form_call(k, shape, args[0], args[1], args[2], args[3], fixed[0],
                                    fixed[1]);
        });
  }
};

Tensor coupling_form_autograd(int64_t target, at::IntArrayRef target_shape,
                              const OptionalTensor& input1, const OptionalTensor& input2,
                              const OptionalTensor& weights, const OptionalTensor& gradient,
                              const Tensor& entries, const Tensor& coupling) {
  return CouplingForm::apply(target, target_shape, input1, input2, weights, gradient, entries,
                             coupling);
}

}  // namespace
}  // namespace lorem

TORCH_LIBRARY_FRAGMENT(lorem, m) {
  m.def(
      "coupling_form(int target, int[] target_shape, Tensor? input1, Tensor? input2, "
      "Tensor? weights, Tensor? gradient, Tensor entries, Tensor coupling) -> Tensor");
  // the torch-op contraction under its own name too: the reference the tests hold the
  // CPU kernel to, and what a device without a kernel runs
  m.def(
      "coupling_form_chunked(int target, int[] target_shape, Tensor? input1, Tensor? input2, "
      "Tensor? weights, Tensor? gradient, Tensor entries, Tensor coupling) -> Tensor");
  // the device kernel under its own name: on CUDA the compiled kernel (LOREM_CUDA_KERNELS),
  // on the CPU its threads one after another, which the tests hold to the CPU kernel
  m.def(
      "_coupling_form_device(int target, int[] target_shape, Tensor? input1, Tensor? input2, "
      "Tensor? weights, Tensor? gradient, Tensor entries, Tensor coupling) -> Tensor");
  // whether the CUDA kernels of the operators were compiled into this library
  m.def("cuda_kernels_compiled() -> bool", &lorem::sparse_form::cuda_kernels_compiled);
}

TORCH_LIBRARY_IMPL(lorem, CPU, m) {
  m.impl("coupling_form", &lorem::coupling_form_cpu);
  m.impl("_coupling_form_device", &lorem::coupling_form_device);
}

#ifdef LOREM_CUDA_KERNELS
TORCH_LIBRARY_IMPL(lorem, CUDA, m) {
  m.impl("coupling_form", &lorem::coupling_form_device);
  m.impl("_coupling_form_device", &lorem::coupling_form_device);
}
#endif

TORCH_LIBRARY_IMPL(lorem, CompositeExplicitAutograd, m) {
  m.impl("coupling_form", &lorem::coupling_form_chunked);
  m.impl("coupling_form_chunked", &lorem::coupling_form_chunked);
}

TORCH_LIBRARY_IMPL(lorem, Autograd, m) { m.impl("coupling_form", &lorem::coupling_form_autograd); }
