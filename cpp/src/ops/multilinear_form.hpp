// Autograd of the operators that return one derivative of a form linear in each of its
// factors (message_form, coupling_form, radial_form; docs/design.md sections 1.3 to 1.6).
//
// Such an operator op(target, target_shape, factor slots..., fixed tensors...) returns
// dF/d(factor `target`) from the other factors, the target's slot being None. Since F is
// linear in each factor, <incoming, dF/dT> = F(T := incoming), so the gradient of any
// other factor k is op(k, ...) with the incoming gradient put in the target's slot: the
// backward is the same operator, and the family is closed under differentiation.
#pragma once

#include <torch/autograd.h>
#include <torch/torch.h>

#include <array>
#include <optional>
#include <vector>

namespace lorem::multilinear {

using OptionalTensor = std::optional<torch::Tensor>;

inline OptionalTensor slot(const torch::Tensor& t) {
  return t.defined() ? OptionalTensor(t) : std::nullopt;
}

// The factor slots as an operator received them, checked.
template <size_t N>
struct Slots {
  std::array<std::vector<int64_t>, N> shapes;  // every slot's shape, the target's as asked
  std::array<torch::Tensor, N> factors;        // contiguous; the target's undefined
  torch::TensorOptions options;                // the factors' one dtype and device
};

// The checks every form operator makes of its slots, with messages that name the operator
// and the slot: the target is a slot and its shape has no negative size, its slot is None,
// every other slot holds a floating-point tensor, all of one dtype and device.
template <size_t N>
Slots<N> check_slots(const char* op, int64_t target, at::IntArrayRef target_shape,
                     const std::array<OptionalTensor, N>& given,
                     const std::array<const char*, N>& names) {
  TORCH_CHECK(0 <= target && target < static_cast<int64_t>(N), op, ": target ", target,
              " is not a factor slot (0..", N - 1, ")");
  for (int64_t size : target_shape)
    TORCH_CHECK(size >= 0, op, ": the target's shape ", target_shape, " has a negative size");
  Slots<N> slots;
  std::optional<torch::TensorOptions> options;
  for (int64_t k = 0; k < static_cast<int64_t>(N); ++k) {
    if (k == target) {
      TORCH_CHECK(!given[k].has_value() || !given[k]->defined(), op, ": the target's slot (",
                  names[k], ") must be None");
      slots.shapes[k] = target_shape.vec();
      continue;
    }
    TORCH_CHECK(given[k].has_value() && given[k]->defined(), op, ": ", names[k], " is missing");
    const torch::Tensor& t = *given[k];
    TORCH_CHECK(t.is_floating_point(), op, ": ", names[k], " must be floating point");
    if (!options) options = t.options();
    TORCH_CHECK(t.scalar_type() == options->dtype() && t.device() == options->device(), op,
                ": every factor must have one dtype and device (", names[k], " differs)");
    slots.factors[k] = t.contiguous();
    slots.shapes[k] = t.sizes().vec();
  }
  slots.options = *options;  // N >= 2: some slot other than the target holds a factor
  return slots;
}

// Keeps the factors (the target's slot empty), every factor's shape (the target's as
// asked) and the fixed tensors (index and pattern tensors after the factors).
template <size_t N>
void save(torch::autograd::AutogradContext* ctx, int64_t target, at::IntArrayRef target_shape,
          const std::array<OptionalTensor, N>& factors, const std::vector<torch::Tensor>& fixed) {
  std::vector<torch::Tensor> saved;
  c10::List<int64_t> shapes;  // every factor's shape, flattened with its rank first
  for (int64_t k = 0; k < static_cast<int64_t>(N); ++k) {
    const bool present = factors[k].has_value() && factors[k]->defined();
    saved.push_back(present ? *factors[k] : torch::Tensor());
    const std::vector<int64_t> shape =
        k == target ? target_shape.vec()
                    : (present ? factors[k]->sizes().vec() : std::vector<int64_t>{});
    shapes.push_back(static_cast<int64_t>(shape.size()));
    for (int64_t size : shape) shapes.push_back(size);
  }
  saved.insert(saved.end(), fixed.begin(), fixed.end());
  ctx->save_for_backward(saved);
  ctx->saved_data["target"] = target;
  ctx->saved_data["shapes"] = shapes;
}

// The gradients of every factor that needs one, as call(k, shape of k, slots with the
// incoming gradient in the target's and None in k's, fixed tensors). `grads` holds one
// entry per argument of the operator (`leading` non-tensor arguments first); entries
// already defined (computed another way by the caller) are kept.
template <size_t N, typename Call>
torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                        const torch::Tensor& incoming, int64_t leading,
                                        torch::autograd::variable_list grads, Call call) {
  if (!incoming.defined()) return grads;
  const auto saved = ctx->get_saved_variables();
  const int64_t target = ctx->saved_data["target"].toInt();
  const auto shapes = ctx->saved_data["shapes"].toIntList();
  std::array<std::vector<int64_t>, N> shape_of;
  for (int64_t k = 0, at = 0; k < static_cast<int64_t>(N); ++k) {
    const int64_t rank = shapes[at++];
    for (int64_t d = 0; d < rank; ++d) shape_of[k].push_back(shapes[at++]);
  }
  const std::vector<torch::Tensor> fixed(saved.begin() + N, saved.end());
  std::array<torch::Tensor, N> factors;
  for (size_t k = 0; k < N; ++k) factors[k] = saved[k];
  factors[target] = incoming;
  for (int64_t k = 0; k < static_cast<int64_t>(N); ++k) {
    if (grads[leading + k].defined()) continue;
    // needs_input_grad counts the tensors given, and the target's slot held none
    if (k == target || !ctx->needs_input_grad(k > target ? k - 1 : k)) continue;
    std::array<OptionalTensor, N> args;
    for (int64_t q = 0; q < static_cast<int64_t>(N); ++q)
      args[q] = q == k ? std::nullopt : slot(factors[q]);
    grads[leading + k] = call(k, shape_of[k], args, fixed);
  }
  return grads;
}

}  // namespace lorem::multilinear
