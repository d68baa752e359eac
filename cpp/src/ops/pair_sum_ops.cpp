// lorem::pair_sum_form: a per-pair scalar times the sending atom's channels, summed onto
// the receiving atom (docs/design.md section 1.9); the Ewald and PME real-space
// potentials V[i, c] = 1/2 sum_{p: centre i} f(r_p) q[j_p, c] run through it (the 1/2
// applied by the caller).
//
// V is the gradient with respect to G of the trilinear form
//   F(f, q, G) = sum_p f[p] sum_c q[others_p, c] G[centers_p, c],
// and each derivative of F in one factor is the same sum with another factor left out:
//   dF/df[p] = q[others_p] . G[centers_p]           (target 0, pair values [P])
//   dF/dq[j] = sum_{p: others_p = j} f[p] G[centers_p]  (target 1, sources [M, C])
//   dF/dG[i] = sum_{p: centers_p = i} f[p] q[others_p]  (target 2, receivers [N, C])
// So `pair_sum_form(target, ...)` returns one of them, and its backward is itself with the
// incoming gradient in the target's slot (multilinear_form.hpp): twice differentiable, with
// no [P, C] tensor formed or kept (the torch path kept two per call: the gathered charges
// and their product with f, the index_add's source).
//
// Kernels: on CPU, pairs grouped by the atom written to (counting sort), so that threads
// never share an output row; elsewhere (CUDA) the same sums from torch operations over
// chunks of pairs (`pair_sum_form_chunked`, which the tests hold the CPU kernel to), or in
// a LOREM_CUDA_KERNELS build the device kernel of sparse_form_threads.hpp.
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "index_grouping.hpp"
#include "multilinear_form.hpp"
#include "sparse_form_device.hpp"

namespace lorem {
namespace {

using torch::Tensor;
using OptionalTensor = std::optional<Tensor>;

constexpr int64_t kPairValues = 0;
constexpr int64_t kSources = 1;
constexpr int64_t kReceivers = 2;
constexpr int64_t kNumFactors = 3;
constexpr std::array<const char*, kNumFactors> kFactorNames = {"pair_values", "sources",
                                                               "receivers"};

struct Problem {
  int64_t target = 0;
  int64_t num_pairs = 0, num_sources = 0, num_receivers = 0, channels = 0;
  std::array<Tensor, kNumFactors> factors;
  Tensor centers, others;
  std::vector<int64_t> target_shape;
};

std::string shape_string(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t d = 0; d < shape.size(); ++d) out += (d ? ", " : "") + std::to_string(shape[d]);
  return out + "]";
}

void agree(int64_t& size, int64_t value, const char* dimension, const char* factor) {
  if (size < 0) size = value;
  TORCH_CHECK(size == value, "lorem::pair_sum_form: inconsistent ", dimension, ": ", factor,
              " has ", value, " where an earlier factor has ", size);
}

Problem check_problem(int64_t target, at::IntArrayRef target_shape,
                      const std::array<OptionalTensor, kNumFactors>& factors, const Tensor& centers,
                      const Tensor& others) {
  const auto slots = multilinear::check_slots<kNumFactors>("lorem::pair_sum_form", target,
                                                           target_shape, factors, kFactorNames);
  Problem problem;
  problem.target = target;
  problem.target_shape = target_shape.vec();
  const std::array<int64_t, kNumFactors> ranks = {1, 2, 2};
  int64_t pairs = -1, sources = -1, receivers = -1, channels = -1;
  const std::array<std::vector<int64_t*>, kNumFactors> dims = {
      std::vector<int64_t*>{&pairs}, std::vector<int64_t*>{&sources, &channels},
      std::vector<int64_t*>{&receivers, &channels}};
  const std::array<std::vector<const char*>, kNumFactors> dim_names = {
      std::vector<const char*>{"pairs"}, std::vector<const char*>{"sources", "channels"},
      std::vector<const char*>{"receivers", "channels"}};
  problem.factors = slots.factors;
  for (int64_t k = 0; k < kNumFactors; ++k) {
    const std::vector<int64_t>& shape = slots.shapes[k];
    TORCH_CHECK(static_cast<int64_t>(shape.size()) == ranks[k],
                "lorem::pair_sum_form: ", kFactorNames[k], " must have ", ranks[k],
                " dimension(s), got ", shape_string(shape));
    for (int64_t d = 0; d < ranks[k]; ++d)
      agree(*dims[k][d], shape[d], dim_names[k][d], kFactorNames[k]);
  }
  TORCH_CHECK(centers.dim() == 1 && others.dim() == 1 && centers.size(0) == pairs &&
                  others.size(0) == pairs,
              "lorem::pair_sum_form: centers and others must be [", pairs, "], got ",
              shape_string(centers.sizes()), " and ", shape_string(others.sizes()));
  TORCH_CHECK(centers.scalar_type() == at::kLong && others.scalar_type() == at::kLong,
              "lorem::pair_sum_form: centers and others must be int64");
  TORCH_CHECK(
      centers.device() == slots.options.device() && others.device() == slots.options.device(),
      "lorem::pair_sum_form: centers and others must be on the factors' device");
  problem.num_pairs = pairs;
  problem.num_sources = sources;
  problem.num_receivers = receivers;
  problem.channels = channels;
  problem.centers = centers.contiguous();
  problem.others = others.contiguous();
  return problem;
}

// ---------------------------------------------------------------- CPU kernel

void check_range(const Tensor& index, int64_t num_atoms, const char* name) {
  grouping::check_range("lorem::pair_sum_form", index, num_atoms, name);
}

template <typename scalar_t>
void pair_values_cpu(const Problem& p, scalar_t* out) {
  const scalar_t* q = p.factors[kSources].data_ptr<scalar_t>();
  const scalar_t* G = p.factors[kReceivers].data_ptr<scalar_t>();
  const int64_t* centers = p.centers.data_ptr<int64_t>();
  const int64_t* others = p.others.data_ptr<int64_t>();
  const int64_t C = p.channels;
  at::parallel_for(0, p.num_pairs, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const scalar_t* a = q + others[k] * C;
      const scalar_t* b = G + centers[k] * C;
      scalar_t sum = 0;
      for (int64_t c = 0; c < C; ++c) sum += a[c] * b[c];
      out[k] = sum;
    }
  });
}

// out[atom] = sum over the pairs written to atom of f[p] row[read_p]
template <typename scalar_t>
void grouped_sum_cpu(const Problem& p, const Tensor& write, const Tensor& read, int64_t num_written,
                     const scalar_t* rows, scalar_t* out) {
  const scalar_t* f = p.factors[kPairValues].data_ptr<scalar_t>();
  const int64_t C = p.channels;
  const grouping::Grouping g = grouping::group_by(write, num_written);
  const int64_t* read_index = read.data_ptr<int64_t>();
  at::parallel_for(0, num_written, 64, [&](int64_t begin, int64_t end) {
    for (int64_t atom = begin; atom < end; ++atom) {
      scalar_t* o = out + atom * C;
      for (int64_t k = g.offsets[atom]; k < g.offsets[atom + 1]; ++k) {
        const int64_t pair = g.order[k];
        const scalar_t w = f[pair];
        const scalar_t* r = rows + read_index[pair] * C;
        for (int64_t c = 0; c < C; ++c) o[c] += w * r[c];
      }
    }
  });
}

Tensor pair_sum_form_cpu(int64_t target, at::IntArrayRef target_shape,
                         const OptionalTensor& pair_values, const OptionalTensor& sources,
                         const OptionalTensor& receivers, const Tensor& centers,
                         const Tensor& others) {
  const Problem p =
      check_problem(target, target_shape, {pair_values, sources, receivers}, centers, others);
  const Tensor& any_factor = p.factors[target == 0 ? 1 : 0];
  Tensor out = torch::zeros(p.target_shape, any_factor.options());
  // the indices are checked even when there is nothing to sum (no channels), as the
  // torch path and the backward would refuse them
  check_range(p.centers, p.num_receivers, "centers");
  check_range(p.others, p.num_sources, "others");
  if (p.num_pairs == 0 || out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lorem::pair_sum_form", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    if (target == kPairValues) {
      pair_values_cpu<scalar_t>(p, o);
    } else if (target == kSources) {
      grouped_sum_cpu<scalar_t>(p, p.others, p.centers, p.num_sources,
                                p.factors[kReceivers].data_ptr<scalar_t>(), o);
    } else {
      grouped_sum_cpu<scalar_t>(p, p.centers, p.others, p.num_receivers,
                                p.factors[kSources].data_ptr<scalar_t>(), o);
    }
  });
  return out;
}

// ---------------------------------------------------------- torch-op kernel

// The same sums from torch operations over chunks of pairs (bounded memory): what a
// device without a kernel runs, and the reference of the CPU kernel in the tests.
Tensor pair_sum_form_chunked(int64_t target, at::IntArrayRef target_shape,
                             const OptionalTensor& pair_values, const OptionalTensor& sources,
                             const OptionalTensor& receivers, const Tensor& centers,
                             const Tensor& others) {
  const Problem p =
      check_problem(target, target_shape, {pair_values, sources, receivers}, centers, others);
  const Tensor& any_factor = p.factors[target == 0 ? 1 : 0];
  Tensor out = torch::zeros(p.target_shape, any_factor.options());
  if (p.num_pairs == 0) return out;
  if (out.numel() == 0) {
    // nothing to sum, so no index_select to refuse a bad index: check them here (one
    // host sync, on this rare path only)
    for (const auto& [index, size, name] :
         {std::tuple<const Tensor&, int64_t, const char*>{p.centers, p.num_receivers, "centers"},
          std::tuple<const Tensor&, int64_t, const char*>{p.others, p.num_sources, "others"}}) {
      const bool inside = ((index >= 0) & (index < size)).all().item<bool>();
      TORCH_CHECK(inside, "lorem::pair_sum_form: ", name, " holds an index outside [0, ", size,
                  ")");
    }
    return out;
  }
  constexpr int64_t kBudget = int64_t(1) << 22;  // elements of one [chunk, C] tensor
  const int64_t chunk = std::max<int64_t>(1, kBudget / std::max<int64_t>(1, p.channels));
  for (int64_t begin = 0; begin < p.num_pairs; begin += chunk) {
    const int64_t end = std::min(p.num_pairs, begin + chunk);
    const Tensor centers_c = p.centers.slice(0, begin, end);
    const Tensor others_c = p.others.slice(0, begin, end);
    if (target == kPairValues) {
      out.slice(0, begin, end)
          .copy_((p.factors[kSources].index_select(0, others_c) *
                  p.factors[kReceivers].index_select(0, centers_c))
                     .sum(1));
      continue;
    }
    const Tensor f = p.factors[kPairValues].slice(0, begin, end).unsqueeze(1);
    if (target == kSources)
      out.index_add_(0, others_c, f * p.factors[kReceivers].index_select(0, centers_c));
    else
      out.index_add_(0, centers_c, f * p.factors[kSources].index_select(0, others_c));
  }
  return out;
}

// ---------------------------------------------------------- device kernel

// The sums as the threads of the device kernel (sparse_form_threads.hpp): on CUDA the
// compiled kernel, on the CPU its threads one after another (what the tests hold to the
// CPU kernel). One coupling entry (every factor has one component), members the pairs:
// the pair values one pair per thread, the sources and receivers the pairs of one atom.
Tensor pair_sum_form_device(int64_t target, at::IntArrayRef target_shape,
                            const OptionalTensor& pair_values, const OptionalTensor& sources,
                            const OptionalTensor& receivers, const Tensor& centers,
                            const Tensor& others) {
  const Problem p =
      check_problem(target, target_shape, {pair_values, sources, receivers}, centers, others);
  using namespace sparse_form;
  const Tensor& any_factor = p.factors[target == 0 ? 1 : 0];
  sparse_form::Problem form;
  form.op = "lorem::pair_sum_form";
  form.target = target;
  form.target_shape = p.target_shape;
  form.entries = torch::zeros({1, 3}, any_factor.options().dtype(torch::kLong));
  form.coupling = torch::ones({1}, any_factor.options());
  form.channels = p.channels;
  form.num_members = p.num_pairs;
  form.factors = {
      {p.factors[kPairValues], Tensor(), "", p.num_pairs, kRowIsMember, 0, 1, false},
      {p.factors[kSources], p.others, "others", p.num_sources, kRowGathered, 1, 1, true},
      {p.factors[kReceivers], p.centers, "centers", p.num_receivers, kRowGathered, 2, 1, true}};
  if (target != kPairValues) form.group_kind = kGroupListed;  // by others or centers
  return sparse_form::run(form);
}

// ---------------------------------------------------------------- autograd

Tensor pair_sum_form_call(int64_t target, at::IntArrayRef target_shape,
                          const OptionalTensor& pair_values, const OptionalTensor& sources,
                          const OptionalTensor& receivers, const Tensor& centers,
                          const Tensor& others) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lorem::pair_sum_form", "")
                       .typed<decltype(pair_sum_form_call)>();
  return op.call(target, target_shape, pair_values, sources, receivers, centers, others);
}

class PairSumForm : public torch::autograd::Function<PairSumForm> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, int64_t target,
                        at::IntArrayRef target_shape, const OptionalTensor& pair_values,
                        const OptionalTensor& sources, const OptionalTensor& receivers,
                        const Tensor& centers, const Tensor& others) {
    multilinear::save<kNumFactors>(ctx, target, target_shape, {pair_values, sources, receivers},
                                   {centers, others});
    at::AutoDispatchBelowADInplaceOrView guard;
    return pair_sum_form_call(target, target_shape, pair_values, sources, receivers, centers,
                              others);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    // 2 leading non-tensor arguments, the 3 factor slots, 2 index tensors
    return multilinear::backward<kNumFactors>(
        ctx, grad_outputs[0], 2, torch::autograd::variable_list(2 + kNumFactors + 2),
        [](int64_t k, const std::vector<int64_t>& shape, const auto& args, const auto& fixed) {
          return pair_sum_form_call(k, shape, args[0], args[1], args[2], fixed[0], fixed[1]);
        });
  }
};

Tensor pair_sum_form_autograd(int64_t target, at::IntArrayRef target_shape,
                              const OptionalTensor& pair_values, const OptionalTensor& sources,
                              const OptionalTensor& receivers, const Tensor& centers,
                              const Tensor& others) {
  return PairSumForm::apply(target, target_shape, pair_values, sources, receivers, centers, others);
}

}  // namespace
}  // namespace lorem

TORCH_LIBRARY_FRAGMENT(lorem, m) {
  m.def(
      "pair_sum_form(int target, int[] target_shape, Tensor? pair_values, Tensor? sources, "
      "Tensor? receivers, Tensor centers, Tensor others) -> Tensor");
  m.def(
      "pair_sum_form_chunked(int target, int[] target_shape, Tensor? pair_values, "
      "Tensor? sources, Tensor? receivers, Tensor centers, Tensor others) -> Tensor");
  // the device kernel under its own name (CUDA: the compiled kernel; CPU: its threads
  // one after another, which the tests hold to the CPU kernel)
  m.def(
      "_pair_sum_form_device(int target, int[] target_shape, Tensor? pair_values, "
      "Tensor? sources, Tensor? receivers, Tensor centers, Tensor others) -> Tensor");
}

TORCH_LIBRARY_IMPL(lorem, CPU, m) {
  m.impl("pair_sum_form", &lorem::pair_sum_form_cpu);
  m.impl("_pair_sum_form_device", &lorem::pair_sum_form_device);
}

#ifdef LOREM_CUDA_KERNELS
TORCH_LIBRARY_IMPL(lorem, CUDA, m) {
  m.impl("pair_sum_form", &lorem::pair_sum_form_device);
  m.impl("_pair_sum_form_device", &lorem::pair_sum_form_device);
}
#endif

TORCH_LIBRARY_IMPL(lorem, CompositeExplicitAutograd, m) {
  m.impl("pair_sum_form", &lorem::pair_sum_form_chunked);
  m.impl("pair_sum_form_chunked", &lorem::pair_sum_form_chunked);
}

TORCH_LIBRARY_IMPL(lorem, Autograd, m) { m.impl("pair_sum_form", &lorem::pair_sum_form_autograd); }
