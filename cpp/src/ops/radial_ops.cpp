// lorem::radial_form: the per-edge radial contraction of a message-passing layer's scalar
// message without its [P, R * F] intermediate (docs/design.md section 1.6).
//
// The layer's edge scalars are out[p, f] = sum_r radial[p, r] (h[p] @ W[:, r, f] + b[r, f]),
// h the hidden features of the pair MLP [P, K]: with h' = [h, 1] and W' = [W; b] this is
// the G-derivative of the trilinear form
//   F(h', radial, W', G) = sum_{p, k, r, f} h'[p, k] radial[p, r] W'[k, r, f] G[p, f],
// and every derivative of F in one factor is again a contraction of the other three. So
// one operator, `radial_form(target, ...)`, computes dF/d(target), and its backward is
// itself with the incoming gradient in the target's slot (any order of derivatives).
// Each call runs over chunks of edges with matrix products, so nothing of size
// [P, K * R] or [P, R * F] (the 32 x 128 values per edge that autograd would keep) is
// stored; the cost in multiply-adds is that of the plain path.
//
// Factor slots: 0 features h' [P, K], 1 radial [P, R], 2 weights W' [K, R, F],
// 3 gradient G [P, F]; the target's slot is None. One kernel for every device (torch
// operations: BLAS on CPU, cuBLAS on CUDA).
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <optional>
#include <string>
#include <vector>

#include "multilinear_form.hpp"

namespace lorem {
namespace {

using torch::Tensor;
using OptionalTensor = std::optional<Tensor>;

constexpr int64_t kFeatures = 0;
constexpr int64_t kRadial = 1;
constexpr int64_t kWeights = 2;
constexpr int64_t kGradient = 3;
constexpr int64_t kNumFactors = 4;
constexpr std::array<const char*, kNumFactors> kNames = {"features", "radial", "weights",
                                                         "gradient"};

// elements of one [chunk, K * R] or [chunk, R * F] temporary
constexpr int64_t kChunkElements = int64_t(1) << 23;

std::string shape_string(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t d = 0; d < shape.size(); ++d) out += (d ? ", " : "") + std::to_string(shape[d]);
  return out + "]";
}

Tensor radial_form_kernel(int64_t target, at::IntArrayRef target_shape,
                          const OptionalTensor& features, const OptionalTensor& radial,
                          const OptionalTensor& weights, const OptionalTensor& gradient) {
  const auto slots = multilinear::check_slots<kNumFactors>(
      "lorem::radial_form", target, target_shape, {features, radial, weights, gradient}, kNames);
  const std::array<std::vector<int64_t>, kNumFactors>& shapes = slots.shapes;
  const std::array<Tensor, kNumFactors>& factor = slots.factors;
  const std::array<size_t, kNumFactors> ranks = {2, 2, 3, 2};
  for (int64_t k = 0; k < kNumFactors; ++k)
    TORCH_CHECK(shapes[k].size() == ranks[k], "lorem::radial_form: ", kNames[k], " must have ",
                ranks[k], " dimensions, got ", shape_string(shapes[k]));
  const int64_t P = shapes[kFeatures][0], K = shapes[kFeatures][1], R = shapes[kRadial][1],
                F = shapes[kGradient][1];
  TORCH_CHECK(shapes[kRadial][0] == P && shapes[kGradient][0] == P &&
                  shapes[kWeights] == std::vector<int64_t>({K, R, F}),
              "lorem::radial_form: inconsistent shapes: features ", shape_string(shapes[kFeatures]),
              ", radial ", shape_string(shapes[kRadial]), ", weights ",
              shape_string(shapes[kWeights]), ", gradient ", shape_string(shapes[kGradient]));
  Tensor out = torch::zeros(shapes[target], slots.options);
  if (P == 0 || out.numel() == 0) return out;
  const int64_t chunk = std::max<int64_t>(1, kChunkElements / std::max(K * R, R * F));
  for (int64_t begin = 0; begin < P; begin += chunk) {
    const int64_t end = std::min(P, begin + chunk), n = end - begin;
    auto part = [&](int64_t k) { return factor[k].slice(0, begin, end); };
    switch (target) {
      case kGradient: {  // out[p, f] = sum_r radial[p, r] (h'[p] @ W'[:, r, f])
        const Tensor hw = part(kFeatures).mm(factor[kWeights].view({K, R * F})).view({n, R, F});
        out.slice(0, begin, end).copy_(torch::bmm(part(kRadial).unsqueeze(1), hw).squeeze(1));
        break;
      }
      case kRadial: {  // out[p, r] = sum_f G[p, f] (h'[p] @ W'[:, r, f])
        const Tensor hw = part(kFeatures).mm(factor[kWeights].view({K, R * F})).view({n, R, F});
        out.slice(0, begin, end).copy_(torch::bmm(hw, part(kGradient).unsqueeze(2)).squeeze(2));
        break;
      }
      case kFeatures: {  // out[p, k] = sum_r radial[p, r] sum_f W'[k, r, f] G[p, f]
        const Tensor wg =
            part(kGradient).mm(factor[kWeights].view({K * R, F}).t()).view({n, K, R});  // [n, K, R]
        out.slice(0, begin, end).copy_(torch::bmm(wg, part(kRadial).unsqueeze(2)).squeeze(2));
        break;
      }
      default: {  // weights: out[k, r, f] += sum_p h'[p, k] radial[p, r] G[p, f]
        const Tensor outer =
            (part(kFeatures).unsqueeze(2) * part(kRadial).unsqueeze(1)).view({n, K * R});
        out.view({K * R, F}).add_(outer.t().mm(part(kGradient)));
      }
    }
  }
  return out;
}

// Both adjoints of the edge scalars at once: with A[p, k, r] = sum_f W'[k, r, f] G[p, f],
// d/dh'[p, k] = sum_r A radial[p, r] and d/dradial[p, r] = sum_k h'[p, k] A; the
// backward of a forward pass needs both, and A is formed once per chunk (two calls of
// radial_form would form the [chunk, K * R] product twice).
std::vector<Tensor> radial_form_adjoints_kernel(const Tensor& features_in, const Tensor& radial_in,
                                                const Tensor& weights_in,
                                                const Tensor& gradient_in) {
  const Tensor features = features_in.contiguous(), radial = radial_in.contiguous(),
               weights = weights_in.contiguous(), gradient = gradient_in.contiguous();
  TORCH_CHECK(
      features.dim() == 2 && radial.dim() == 2 && weights.dim() == 3 && gradient.dim() == 2 &&
          radial.size(0) == features.size(0) && gradient.size(0) == features.size(0) &&
          weights.sizes() == at::IntArrayRef({features.size(1), radial.size(1), gradient.size(1)}),
      "lorem::radial_form_adjoints: inconsistent shapes");
  const int64_t P = features.size(0), K = features.size(1), R = radial.size(1),
                F = gradient.size(1);
  Tensor d_features = torch::zeros({P, K}, features.options());
  Tensor d_radial = torch::zeros({P, R}, features.options());
  const int64_t chunk = std::max<int64_t>(1, kChunkElements / std::max(K * R, R * F));
  for (int64_t begin = 0; begin < P; begin += chunk) {
    const int64_t end = std::min(P, begin + chunk), n = end - begin;
    const Tensor A = gradient.slice(0, begin, end).mm(weights.view({K * R, F}).t()).view({n, K, R});
    d_features.slice(0, begin, end)
        .copy_(torch::bmm(A, radial.slice(0, begin, end).unsqueeze(2)).squeeze(2));
    d_radial.slice(0, begin, end)
        .copy_(torch::bmm(features.slice(0, begin, end).unsqueeze(1), A).squeeze(1));
  }
  return {d_features, d_radial};
}

Tensor radial_form_call(int64_t target, at::IntArrayRef target_shape,
                        const OptionalTensor& features, const OptionalTensor& radial,
                        const OptionalTensor& weights, const OptionalTensor& gradient) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lorem::radial_form", "")
                       .typed<decltype(radial_form_call)>();
  return op.call(target, target_shape, features, radial, weights, gradient);
}

using multilinear::slot;

std::vector<Tensor> radial_form_adjoints_call(const Tensor& features, const Tensor& radial,
                                              const Tensor& weights, const Tensor& gradient) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lorem::radial_form_adjoints", "")
                       .typed<decltype(radial_form_adjoints_kernel)>();
  return op.call(features, radial, weights, gradient);
}

// The pair's outputs are radial_form(0, ...) and radial_form(1, ...) of the same factors,
// so its derivatives are theirs: for each factor, the form with the incoming gradient of
// each output in that output's slot.
class RadialFormAdjoints : public torch::autograd::Function<RadialFormAdjoints> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const Tensor& features, const Tensor& radial,
                                                const Tensor& weights, const Tensor& gradient) {
    ctx->save_for_backward({features, radial, weights, gradient});
    at::AutoDispatchBelowADInplaceOrView guard;
    return radial_form_adjoints_call(features, radial, weights, gradient);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    torch::autograd::variable_list grads(kNumFactors);
    for (int64_t output = 0; output < 2; ++output) {  // 0: d_features, 1: d_radial
      const Tensor& incoming = grad_outputs[output];
      if (!incoming.defined()) continue;
      std::array<Tensor, kNumFactors> factors = {saved[0], saved[1], saved[2], saved[3]};
      factors[output] = incoming;
      for (int64_t k = 0; k < kNumFactors; ++k) {
        if (k == output || !ctx->needs_input_grad(k)) continue;
        std::array<OptionalTensor, kNumFactors> args;
        for (int64_t q = 0; q < kNumFactors; ++q)
          args[q] = q == k ? std::nullopt : slot(factors[q]);
        const Tensor term =
            radial_form_call(k, saved[k].sizes(), args[0], args[1], args[2], args[3]);
        grads[k] = grads[k].defined() ? grads[k] + term : term;
      }
    }
    return grads;
  }
};

std::vector<Tensor> radial_form_adjoints_autograd(const Tensor& features, const Tensor& radial,
                                                  const Tensor& weights, const Tensor& gradient) {
  return RadialFormAdjoints::apply(features, radial, weights, gradient);
}

class RadialForm : public torch::autograd::Function<RadialForm> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, int64_t target,
                        at::IntArrayRef target_shape, const OptionalTensor& features,
                        const OptionalTensor& radial, const OptionalTensor& weights,
                        const OptionalTensor& gradient) {
    multilinear::save<kNumFactors>(ctx, target, target_shape, {features, radial, weights, gradient},
                                   {});
    at::AutoDispatchBelowADInplaceOrView guard;
    return radial_form_call(target, target_shape, features, radial, weights, gradient);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const Tensor& incoming = grad_outputs[0];
    torch::autograd::variable_list grads(2 + kNumFactors);
    // the common case, the backward of the edge scalars into both edge inputs: one pass
    const int64_t target = ctx->saved_data["target"].toInt();
    if (incoming.defined() && target == kGradient && ctx->needs_input_grad(kFeatures) &&
        ctx->needs_input_grad(kRadial)) {
      const auto saved = ctx->get_saved_variables();
      const auto both =
          radial_form_adjoints_call(saved[kFeatures], saved[kRadial], saved[kWeights], incoming);
      grads[2 + kFeatures] = both[0];
      grads[2 + kRadial] = both[1];
    }
    return multilinear::backward<kNumFactors>(
        ctx, incoming, 2, grads,
        [](int64_t k, const std::vector<int64_t>& shape, const auto& args, const auto&) {
          return radial_form_call(k, shape, args[0], args[1], args[2], args[3]);
        });
  }
};

Tensor radial_form_autograd(int64_t target, at::IntArrayRef target_shape,
                            const OptionalTensor& features, const OptionalTensor& radial,
                            const OptionalTensor& weights, const OptionalTensor& gradient) {
  return RadialForm::apply(target, target_shape, features, radial, weights, gradient);
}

}  // namespace
}  // namespace lorem

TORCH_LIBRARY_FRAGMENT(lorem, m) {
  m.def(
      "radial_form(int target, int[] target_shape, Tensor? features, Tensor? radial, "
      "Tensor? weights, Tensor? gradient) -> Tensor");
  m.def(
      "radial_form_adjoints(Tensor features, Tensor radial, Tensor weights, Tensor gradient) "
      "-> Tensor[]");
}

TORCH_LIBRARY_IMPL(lorem, CompositeExplicitAutograd, m) {
  m.impl("radial_form", &lorem::radial_form_kernel);
  m.impl("radial_form_adjoints", &lorem::radial_form_adjoints_kernel);
}

TORCH_LIBRARY_IMPL(lorem, Autograd, m) {
  m.impl("radial_form", &lorem::radial_form_autograd);
  m.impl("radial_form_adjoints", &lorem::radial_form_adjoints_autograd);
}
