// Fused edge -> atom sum of the first block (docs/design.md section 1.2):
//
//   edges_to_nodes:                 out[i, m, c] = sum_{p: centers[p] = i} coef[p, l(m), c] Y[p, m]
//   edges_to_nodes_coefficient_adjoint: out[p, l, c] = sum_{m of degree l} G[centers[p], m, c] Y[p,
//   m] edges_to_nodes_harmonic_adjoint:    out[p, m] = sum_c G[centers[p], m, c] coef[p, l(m), c]
//
// coef [P, L+1, s], Y [P, (L+1)^2], centers [P] int64, G [N, (L+1)^2, s]. The three are the
// derivatives of one trilinear form T(G, coef, Y) = sum G[i_p, m, c] coef[p, l(m), c] Y[p, m],
// so each one's backward is made of the other two: the autograd kernels call the operators
// through the dispatcher, and double backward (force training) needs no further code. The
// per-edge [P, (L+1)^2, s] products are never stored, in the forward or the backward.
//
// Kernels: CPU (loops; the atom sum in parallel over atoms through a counting sort of the
// centres, the per-edge adjoints in parallel over edges); CompositeExplicitAutograd (torch
// operations over chunks of edges: bounded memory on CUDA and any other device, and the
// reference the CPU kernel is tested against through lorem::_edge_op_by_chunks); Autograd.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "sparse_form_device.hpp"

namespace {

using at::Tensor;

// edges per chunk of the composite kernel: its temporaries are [chunk, (L+1)^2, s]; on a
// GPU 65,536 (100 MB at L = 6, s = 8 in float32: fewer launches to wait on), elsewhere (the
// tests' reference) 16,384, so that their problems cross chunks
int64_t edges_per_chunk(const Tensor& like) { return like.is_cuda() ? 65536 : 16384; }

int64_t max_degree_of_components(int64_t components, const char* op) {
  int64_t degrees = 0;
  while (degrees * degrees < components) ++degrees;
  TORCH_CHECK(degrees * degrees == components, op, ": ", components,
              " spherical components is not a square (L+1)^2");
  return degrees - 1;
}

void check_centers(const Tensor& centers, int64_t num_edges, const char* op) {
  TORCH_CHECK(centers.dim() == 1 && centers.size(0) == num_edges, op,
              ": centers must be [P] with P = ", num_edges, " edges, got ", centers.sizes());
  TORCH_CHECK(centers.scalar_type() == at::kLong, op, ": centers must be int64, got ",
              centers.scalar_type());
}

void check_floating(const Tensor& a, const Tensor& b, const char* op) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": inputs of different dtypes (",
              a.scalar_type(), ", ", b.scalar_type(), ")");
  TORCH_CHECK(a.device() == b.device(), op, ": inputs on different devices (", a.device(), ", ",
              b.device(), ")");
}

// shapes of edges_to_nodes(coef [P, L+1, s], Y [P, (L+1)^2], centers [P])
void check_edge_inputs(const Tensor& coef, const Tensor& harmonics, const Tensor& centers,
                       const char* op) {
  TORCH_CHECK(coef.dim() == 3, op, ": coefficients must be [P, L+1, s], got ", coef.sizes());
  TORCH_CHECK(harmonics.dim() == 2 && harmonics.size(0) == coef.size(0), op,
              ": harmonics must be [P, (L+1)^2] with P = ", coef.size(0), ", got ",
              harmonics.sizes());
  TORCH_CHECK(max_degree_of_components(harmonics.size(1), op) + 1 == coef.size(1), op,
              ": harmonics with ", harmonics.size(1), " components need ", "coefficients for ",
              max_degree_of_components(harmonics.size(1), op) + 1, " degrees, got ", coef.size(1));
  check_floating(coef, harmonics, op);
  check_centers(centers, coef.size(0), op);
}

// G [N, (L+1)^2, s] against per-edge inputs of P edges, (L+1)^2 components and s channels
void check_node_grad(const Tensor& node_grad, const Tensor& edge_input, int64_t components,
                     int64_t channels, const char* op) {
  TORCH_CHECK(
      node_grad.dim() == 3 && node_grad.size(1) == components && node_grad.size(2) == channels, op,
      ": node gradient must be [N, ", components, ", ", channels, "], got ", node_grad.sizes());
  check_floating(node_grad, edge_input, op);
}

// One pass over the centres: the range check, and the edges of each atom in their order.
void sort_by_center(const Tensor& centers, int64_t num_nodes, std::vector<int64_t>& offsets,
                    std::vector<int64_t>& order, const char* op) {
  const int64_t num_edges = centers.size(0);
  const int64_t* center = centers.data_ptr<int64_t>();
  offsets.assign(num_nodes + 1, 0);
  for (int64_t p = 0; p < num_edges; ++p) {
    TORCH_CHECK(center[p] >= 0 && center[p] < num_nodes, op, ": edge ", p, " has centre ",
                center[p], ", outside the ", num_nodes, " atoms");
    ++offsets[center[p] + 1];
  }
  for (int64_t i = 0; i < num_nodes; ++i) offsets[i + 1] += offsets[i];
  std::vector<int64_t> next(offsets.begin(), offsets.end() - 1);
  order.resize(num_edges);
  for (int64_t p = 0; p < num_edges; ++p) order[next[center[p]]++] = p;
}

void check_centers_in_range(const Tensor& centers, int64_t num_nodes, const char* op) {
  const int64_t* center = centers.data_ptr<int64_t>();
  for (int64_t p = 0; p < centers.size(0); ++p) {
    TORCH_CHECK(center[p] >= 0 && center[p] < num_nodes, op, ": edge ", p, " has centre ",
                center[p], ", outside the ", num_nodes, " atoms");
  }
}

// -- CPU kernels --

Tensor edges_to_nodes_cpu(const Tensor& coefficients, const Tensor& harmonics,
                          const Tensor& centers, int64_t num_nodes) {
  const char* op = "lorem::edges_to_nodes";
  check_edge_inputs(coefficients, harmonics, centers, op);
  TORCH_CHECK(num_nodes >= 0, op, ": num_nodes must be >= 0, got ", num_nodes);
  const Tensor coef = coefficients.contiguous();
  const Tensor y = harmonics.contiguous();
  const Tensor center = centers.contiguous();
  const int64_t degrees = coef.size(1), channels = coef.size(2), components = y.size(1);
  Tensor out = at::zeros({num_nodes, components, channels}, coef.options());
  std::vector<int64_t> offsets, order;
  sort_by_center(center, num_nodes, offsets, order, op);
  AT_DISPATCH_FLOATING_TYPES(coef.scalar_type(), "lorem_edges_to_nodes", [&] {
    const scalar_t* coef_data = coef.data_ptr<scalar_t>();
    const scalar_t* y_data = y.data_ptr<scalar_t>();
    scalar_t* out_data = out.data_ptr<scalar_t>();
    at::parallel_for(0, num_nodes, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        scalar_t* node = out_data + i * components * channels;
        for (int64_t k = offsets[i]; k < offsets[i + 1]; ++k) {
          const int64_t p = order[k];
          const scalar_t* edge_coef = coef_data + p * degrees * channels;
          const scalar_t* edge_y = y_data + p * components;
          for (int64_t l = 0; l < degrees; ++l) {
            const scalar_t* c_l = edge_coef + l * channels;
            for (int64_t m = l * l; m < (l + 1) * (l + 1); ++m) {
              const scalar_t y_m = edge_y[m];
              scalar_t* node_m = node + m * channels;
              for (int64_t c = 0; c < channels; ++c) node_m[c] += c_l[c] * y_m;
            }
          }
        }
      }
    });
  });
  return out;
}

Tensor coefficient_adjoint_cpu(const Tensor& node_grad, const Tensor& harmonics,
                               const Tensor& centers) {
  const char* op = "lorem::edges_to_nodes_coefficient_adjoint";
  TORCH_CHECK(harmonics.dim() == 2, op, ": harmonics must be [P, (L+1)^2], got ",
              harmonics.sizes());
  const int64_t components = harmonics.size(1);
  const int64_t degrees = max_degree_of_components(components, op) + 1;
  TORCH_CHECK(node_grad.dim() == 3, op, ": node gradient must be [N, (L+1)^2, s], got ",
              node_grad.sizes());
  check_node_grad(node_grad, harmonics, components, node_grad.size(2), op);
  check_centers(centers, harmonics.size(0), op);
  const Tensor g = node_grad.contiguous();
  const Tensor y = harmonics.contiguous();
  const Tensor center = centers.contiguous();
  check_centers_in_range(center, g.size(0), op);
  const int64_t num_edges = y.size(0), channels = g.size(2);
  Tensor out = at::zeros({num_edges, degrees, channels}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "lorem_coefficient_adjoint", [&] {
    const scalar_t* g_data = g.data_ptr<scalar_t>();
    const scalar_t* y_data = y.data_ptr<scalar_t>();
    const int64_t* center_data = center.data_ptr<int64_t>();
    scalar_t* out_data = out.data_ptr<scalar_t>();
    at::parallel_for(0, num_edges, 256, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* node = g_data + center_data[p] * components * channels;
        const scalar_t* edge_y = y_data + p * components;
        scalar_t* edge_out = out_data + p * degrees * channels;
        for (int64_t l = 0; l < degrees; ++l) {
          scalar_t* out_l = edge_out + l * channels;
          for (int64_t m = l * l; m < (l + 1) * (l + 1); ++m) {
            const scalar_t y_m = edge_y[m];
            const scalar_t* node_m = node + m * channels;
            for (int64_t c = 0; c < channels; ++c) out_l[c] += node_m[c] * y_m;
          }
        }
      }
    });
  });
  return out;
}

Tensor harmonic_adjoint_cpu(const Tensor& node_grad, const Tensor& coefficients,
                            const Tensor& centers) {
  const char* op = "lorem::edges_to_nodes_harmonic_adjoint";
  TORCH_CHECK(coefficients.dim() == 3, op, ": coefficients must be [P, L+1, s], got ",
              coefficients.sizes());
  const int64_t degrees = coefficients.size(1), channels = coefficients.size(2);
  const int64_t components = degrees * degrees;
  check_node_grad(node_grad, coefficients, components, channels, op);
  check_centers(centers, coefficients.size(0), op);
  const Tensor g = node_grad.contiguous();
  const Tensor coef = coefficients.contiguous();
  const Tensor center = centers.contiguous();
  check_centers_in_range(center, g.size(0), op);
  const int64_t num_edges = coef.size(0);
  Tensor out = at::empty({num_edges, components}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "lorem_harmonic_adjoint", [&] {
    const scalar_t* g_data = g.data_ptr<scalar_t>();
    const scalar_t* coef_data = coef.data_ptr<scalar_t>();
    const int64_t* center_data = center.data_ptr<int64_t>();
    scalar_t* out_data = out.data_ptr<scalar_t>();
    at::parallel_for(0, num_edges, 256, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* node = g_data + center_data[p] * components * channels;
        const scalar_t* edge_coef = coef_data + p * degrees * channels;
        scalar_t* edge_out = out_data + p * components;
        for (int64_t l = 0; l < degrees; ++l) {
          const scalar_t* c_l = edge_coef + l * channels;
          for (int64_t m = l * l; m < (l + 1) * (l + 1); ++m) {
            const scalar_t* node_m = node + m * channels;
            scalar_t sum = 0;
            for (int64_t c = 0; c < channels; ++c) sum += node_m[c] * c_l[c];
            edge_out[m] = sum;
          }
        }
      }
    });
  });
  return out;
}

// -- composite kernels: torch operations over chunks of edges --

Tensor component_degrees(int64_t degrees, const at::Device& device) {
  std::vector<int64_t> degree;
  for (int64_t l = 0; l < degrees; ++l)
    for (int64_t m = 0; m < 2 * l + 1; ++m) degree.push_back(l);
  return at::tensor(degree, at::TensorOptions().dtype(at::kLong)).to(device);
}

void check_centers_in_range_any_device(const Tensor& centers, int64_t num_nodes, const char* op) {
  if (centers.numel() == 0) return;
  // one host synchronisation per call: an out-of-range index would be a device assert on CUDA
  const bool outside = at::logical_or(centers < 0, centers >= num_nodes).any().item<bool>();
  TORCH_CHECK(!outside, op, ": a centre index lies outside the ", num_nodes, " atoms");
}

Tensor edges_to_nodes_chunked(const Tensor& coefficients, const Tensor& harmonics,
                              const Tensor& centers, int64_t num_nodes, int64_t chunk) {
  const char* op = "lorem::edges_to_nodes";
  check_edge_inputs(coefficients, harmonics, centers, op);
  TORCH_CHECK(num_nodes >= 0, op, ": num_nodes must be >= 0, got ", num_nodes);
  check_centers_in_range_any_device(centers, num_nodes, op);
  const Tensor degree = component_degrees(coefficients.size(1), coefficients.device());
  Tensor out =
      at::zeros({num_nodes, harmonics.size(1), coefficients.size(2)}, coefficients.options());
  for (int64_t start = 0; start < coefficients.size(0); start += chunk) {
    const int64_t length = std::min(chunk, coefficients.size(0) - start);
    const Tensor products = coefficients.narrow(0, start, length).index_select(1, degree) *
                            harmonics.narrow(0, start, length).unsqueeze(-1);
    out.index_add_(0, centers.narrow(0, start, length), products);
  }
  return out;
}

Tensor coefficient_adjoint_chunked(const Tensor& node_grad, const Tensor& harmonics,
                                   const Tensor& centers, int64_t chunk) {
  const char* op = "lorem::edges_to_nodes_coefficient_adjoint";
  TORCH_CHECK(harmonics.dim() == 2, op, ": harmonics must be [P, (L+1)^2], got ",
              harmonics.sizes());
  const int64_t components = harmonics.size(1);
  const int64_t degrees = max_degree_of_components(components, op) + 1;
  TORCH_CHECK(node_grad.dim() == 3, op, ": node gradient must be [N, (L+1)^2, s], got ",
              node_grad.sizes());
  check_node_grad(node_grad, harmonics, components, node_grad.size(2), op);
  check_centers(centers, harmonics.size(0), op);
  check_centers_in_range_any_device(centers, node_grad.size(0), op);
  const Tensor degree = component_degrees(degrees, harmonics.device());
  const int64_t num_edges = harmonics.size(0);
  Tensor out = at::zeros({num_edges, degrees, node_grad.size(2)}, node_grad.options());
  for (int64_t start = 0; start < num_edges; start += chunk) {
    const int64_t length = std::min(chunk, num_edges - start);
    const Tensor products = node_grad.index_select(0, centers.narrow(0, start, length)) *
                            harmonics.narrow(0, start, length).unsqueeze(-1);
    out.narrow(0, start, length).index_add_(1, degree, products);
  }
  return out;
}

Tensor harmonic_adjoint_chunked(const Tensor& node_grad, const Tensor& coefficients,
                                const Tensor& centers, int64_t chunk) {
  const char* op = "lorem::edges_to_nodes_harmonic_adjoint";
  TORCH_CHECK(coefficients.dim() == 3, op, ": coefficients must be [P, L+1, s], got ",
              coefficients.sizes());
  const int64_t degrees = coefficients.size(1), channels = coefficients.size(2);
  check_node_grad(node_grad, coefficients, degrees * degrees, channels, op);
  check_centers(centers, coefficients.size(0), op);
  check_centers_in_range_any_device(centers, node_grad.size(0), op);
  const Tensor degree = component_degrees(degrees, coefficients.device());
  const int64_t num_edges = coefficients.size(0);
  Tensor out = at::empty({num_edges, degrees * degrees}, node_grad.options());
  for (int64_t start = 0; start < num_edges; start += chunk) {
    const int64_t length = std::min(chunk, num_edges - start);
    const Tensor products = node_grad.index_select(0, centers.narrow(0, start, length)) *
                            coefficients.narrow(0, start, length).index_select(1, degree);
    out.narrow(0, start, length).copy_(products.sum(-1));
  }
  return out;
}

Tensor edges_to_nodes_composite(const Tensor& coefficients, const Tensor& harmonics,
                                const Tensor& centers, int64_t num_nodes) {
  return edges_to_nodes_chunked(coefficients, harmonics, centers, num_nodes,
                                edges_per_chunk(coefficients));
}

Tensor coefficient_adjoint_composite(const Tensor& node_grad, const Tensor& harmonics,
                                     const Tensor& centers) {
  return coefficient_adjoint_chunked(node_grad, harmonics, centers, edges_per_chunk(harmonics));
}

Tensor harmonic_adjoint_composite(const Tensor& node_grad, const Tensor& coefficients,
                                  const Tensor& centers) {
  return harmonic_adjoint_chunked(node_grad, coefficients, centers, edges_per_chunk(coefficients));
}

// The composite kernels on any device with a chosen chunk length: what tests compare the
// CPU kernels against (forward values only; no autograd).
Tensor edge_op_by_chunks(const std::string& name, const Tensor& first, const Tensor& second,
                         const Tensor& centers, int64_t num_nodes, int64_t chunk_edges) {
  TORCH_CHECK(chunk_edges > 0, "lorem::_edge_op_by_chunks: chunk_edges must be positive");
  if (name == "edges_to_nodes")
    return edges_to_nodes_chunked(first, second, centers, num_nodes, chunk_edges);
  if (name == "coefficient_adjoint")
    return coefficient_adjoint_chunked(first, second, centers, chunk_edges);
  if (name == "harmonic_adjoint")
    return harmonic_adjoint_chunked(first, second, centers, chunk_edges);
  TORCH_CHECK(false, "lorem::_edge_op_by_chunks: unknown operator '", name, "'");
}

// -- autograd: every backward calls the operators through the dispatcher --

Tensor call_edges_to_nodes(const Tensor& coefficients, const Tensor& harmonics,
                           const Tensor& centers, int64_t num_nodes) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lorem::edges_to_nodes", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t)>();
  return op.call(coefficients, harmonics, centers, num_nodes);
}

Tensor call_coefficient_adjoint(const Tensor& node_grad, const Tensor& harmonics,
                                const Tensor& centers) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lorem::edges_to_nodes_coefficient_adjoint", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const Tensor&)>();
  return op.call(node_grad, harmonics, centers);
}

Tensor call_harmonic_adjoint(const Tensor& node_grad, const Tensor& coefficients,
                             const Tensor& centers) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lorem::edges_to_nodes_harmonic_adjoint", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const Tensor&)>();
  return op.call(node_grad, coefficients, centers);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class EdgesToNodes : public torch::autograd::Function<EdgesToNodes> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& coefficients, const Tensor& harmonics,
                        const Tensor& centers, int64_t num_nodes) {
    ctx->save_for_backward({coefficients, harmonics, centers});
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_edges_to_nodes(coefficients, harmonics, centers, num_nodes);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& coefficients = saved[0];
    const Tensor& harmonics = saved[1];
    const Tensor& centers = saved[2];
    Tensor coefficient_grad, harmonic_grad;
    if (ctx->needs_input_grad(0))
      coefficient_grad = call_coefficient_adjoint(grads[0], harmonics, centers);
    if (ctx->needs_input_grad(1))
      harmonic_grad = call_harmonic_adjoint(grads[0], coefficients, centers);
    return {coefficient_grad, harmonic_grad, Tensor(), Tensor()};
  }
};

class CoefficientAdjoint : public torch::autograd::Function<CoefficientAdjoint> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& node_grad, const Tensor& harmonics,
                        const Tensor& centers) {
    ctx->save_for_backward({node_grad, harmonics, centers});
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_coefficient_adjoint(node_grad, harmonics, centers);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& node_grad = saved[0];
    const Tensor& harmonics = saved[1];
    const Tensor& centers = saved[2];
    Tensor node_grad_grad, harmonic_grad;
    if (ctx->needs_input_grad(0))
      node_grad_grad = call_edges_to_nodes(grads[0], harmonics, centers, node_grad.size(0));
    if (ctx->needs_input_grad(1))
      harmonic_grad = call_harmonic_adjoint(node_grad, grads[0], centers);
    return {node_grad_grad, harmonic_grad, Tensor()};
  }
};

class HarmonicAdjoint : public torch::autograd::Function<HarmonicAdjoint> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& node_grad, const Tensor& coefficients,
                        const Tensor& centers) {
    ctx->save_for_backward({node_grad, coefficients, centers});
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_harmonic_adjoint(node_grad, coefficients, centers);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& node_grad = saved[0];
    const Tensor& coefficients = saved[1];
    const Tensor& centers = saved[2];
    Tensor node_grad_grad, coefficient_grad;
    if (ctx->needs_input_grad(0))
      node_grad_grad = call_edges_to_nodes(coefficients, grads[0], centers, node_grad.size(0));
    if (ctx->needs_input_grad(1))
      coefficient_grad = call_coefficient_adjoint(node_grad, grads[0], centers);
    return {node_grad_grad, coefficient_grad, Tensor()};
  }
};

Tensor edges_to_nodes_autograd(const Tensor& coefficients, const Tensor& harmonics,
                               const Tensor& centers, int64_t num_nodes) {
  return EdgesToNodes::apply(coefficients, harmonics, centers, num_nodes);
}

Tensor coefficient_adjoint_autograd(const Tensor& node_grad, const Tensor& harmonics,
                                    const Tensor& centers) {
  return CoefficientAdjoint::apply(node_grad, harmonics, centers);
}

Tensor harmonic_adjoint_autograd(const Tensor& node_grad, const Tensor& coefficients,
                                 const Tensor& centers) {
  return HarmonicAdjoint::apply(node_grad, coefficients, centers);
}

// -- edges_to_nodes_by_pair_type: the coefficients from a species-pair table --
//
// The first block's coefficients are coef[p] = radial[p] @ table[pair_type[p]] (radial
// [P, R], table [T, R, L+1, s]). This operator is edges_to_nodes of those coefficients,
// but keeps radial, table and harmonics for its backward (which the model holds anyway)
// instead of the [P, (L+1) s] coefficients. The backward recomputes them block by block
// over the edges of each pair type, with differentiable operations, so that double
// backward (force training) works.

// the edges grouped by pair type
struct PairTypeOrder {
  Tensor order;  // edges sorted by type
  std::vector<int64_t> counts;
};

void check_pair_type_range(const Tensor& pair_type, int64_t num_types) {
  TORCH_CHECK(pair_type.dim() == 1 && pair_type.scalar_type() == at::kLong,
              "lorem::edges_to_nodes_by_pair_type: pair_type must be [P] int64, got ",
              pair_type.sizes(), " ", pair_type.scalar_type());
  if (pair_type.size(0) == 0) return;
  const int64_t low = pair_type.min().item<int64_t>(), high = pair_type.max().item<int64_t>();
  TORCH_CHECK(low >= 0 && high < num_types, "lorem::edges_to_nodes_by_pair_type: pair types ",
              "must lie in [0, ", num_types, "), got [", low, ", ", high, "]");
}

PairTypeOrder pair_type_order(const Tensor& pair_type, int64_t num_types) {
  PairTypeOrder out;
  check_pair_type_range(pair_type, num_types);
  out.order = at::argsort(pair_type);
  const Tensor counts = at::bincount(pair_type, {}, num_types).to(at::kCPU);
  out.counts.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + num_types);
  return out;
}

// [P, K] = rows[p] @ matrices[pair_type[p]] for rows [P, R], matrices [T, R, K]: one
// product per pair type over the edges of that type, gathered and written back type by
// type, so that no sorted copy of all rows is made
Tensor rows_by_type(const Tensor& rows, const Tensor& matrices, const PairTypeOrder& types) {
  Tensor out = at::empty({rows.size(0), matrices.size(2)}, rows.options());
  int64_t start = 0;
  for (size_t t = 0; t < types.counts.size(); ++t) {
    const int64_t n = types.counts[t];
    if (n > 0) {
      const Tensor edges = types.order.narrow(0, start, n);
      out.index_copy_(0, edges, at::mm(rows.index_select(0, edges), matrices[t]));
    }
    start += n;
  }
  return out;
}

void check_pair_inputs(const Tensor& radial, const Tensor& table, const Tensor& harmonics,
                       const Tensor& centers) {
  const char* op = "lorem::edges_to_nodes_by_pair_type";
  TORCH_CHECK(radial.dim() == 2, op, ": radial must be [P, R], got ", radial.sizes());
  TORCH_CHECK(table.dim() == 4 && table.size(1) == radial.size(1), op,
              ": table must be [T, R, L+1, s] with R = ", radial.size(1), ", got ", table.sizes());
  check_floating(radial, table, op);
  check_floating(radial, harmonics, op);
  TORCH_CHECK(harmonics.dim() == 2 && harmonics.size(0) == radial.size(0), op,
              ": harmonics must be [P, (L+1)^2] with P = ", radial.size(0), ", got ",
              harmonics.sizes());
  TORCH_CHECK(max_degree_of_components(harmonics.size(1), op) + 1 == table.size(2), op,
              ": harmonics with ", harmonics.size(1), " components need a table of ",
              max_degree_of_components(harmonics.size(1), op) + 1, " degrees, got ", table.size(2));
  check_centers(centers, radial.size(0), op);
}

void check_pair_type(const Tensor& pair_type, const Tensor& radial) {
  const char* op = "lorem::edges_to_nodes_by_pair_type";
  TORCH_CHECK(pair_type.dim() == 1 && pair_type.size(0) == radial.size(0), op,
              ": pair_type must be [P] with P = ", radial.size(0), " edges, got ",
              pair_type.sizes());
  TORCH_CHECK(pair_type.device() == radial.device(), op, ": pair_type on ", pair_type.device(),
              ", radial on ", radial.device());
}

Tensor by_pair_type_sum(const Tensor& radial, const Tensor& table, const PairTypeOrder& types,
                        const Tensor& harmonics, const Tensor& centers, int64_t num_nodes) {
  const int64_t degrees = table.size(2), channels = table.size(3);
  const Tensor coefficients =
      rows_by_type(radial, table.reshape({table.size(0), table.size(1), degrees * channels}), types)
          .view({radial.size(0), degrees, channels});
  return call_edges_to_nodes(coefficients, harmonics, centers, num_nodes);
}

// the checked inputs grouped by pair type
PairTypeOrder checked_pair_types(const Tensor& radial, const Tensor& table, const Tensor& pair_type,
                                 const Tensor& harmonics, const Tensor& centers) {
  check_pair_inputs(radial, table, harmonics, centers);
  check_pair_type(pair_type, radial);
  return pair_type_order(pair_type, table.size(0));
}

// On CPU the operator is lorem::pair_form (pair_form_ops.cpp), which groups the edges by
// centre and pair type itself; the blocked path below serves other devices (and the tests,
// through lorem::_edges_to_nodes_by_pair_type_blocks).
// Whether lorem::pair_form has a kernel for these tensors: the CPU's, or CUDA's in a
// LOREM_CUDA_KERNELS build; elsewhere the blocked path of torch operations runs.
bool pair_form_serves(const Tensor& radial, const Tensor& table, const Tensor& harmonics,
                      bool blocks) {
  if (blocks || table.device() != radial.device() || harmonics.device() != radial.device())
    return false;
  return radial.is_cpu() || (radial.is_cuda() && lorem::sparse_form::cuda_kernels_compiled());
}

// the blocked path's refusals, with its messages, before pair_form is called
void check_for_pair_form(const Tensor& radial, const Tensor& table, const Tensor& pair_type,
                         const Tensor& harmonics, const Tensor& centers) {
  check_pair_inputs(radial, table, harmonics, centers);
  check_pair_type(pair_type, radial);
  check_pair_type_range(pair_type, table.size(0));
}

Tensor call_pair_form_nodes(const Tensor& radial, const Tensor& table, const Tensor& harmonics,
                            const Tensor& pair_type, const Tensor& centers, int64_t num_nodes) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lorem::pair_form", "")
                       .typed<Tensor(int64_t, at::IntArrayRef, const std::optional<Tensor>&,
                                     const std::optional<Tensor>&, const std::optional<Tensor>&,
                                     const std::optional<Tensor>&, const Tensor&, const Tensor&)>();
  const std::vector<int64_t> shape = {num_nodes, harmonics.size(1), table.size(3)};
  return op.call(3, shape, radial, table, harmonics, std::nullopt, pair_type, centers);
}

std::vector<Tensor> call_pair_form_adjoints(const Tensor& radial, const Tensor& table,
                                            const Tensor& harmonics, const Tensor& node_grad,
                                            const Tensor& pair_type, const Tensor& centers,
                                            std::array<bool, 3> needed) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("lorem::pair_form_adjoints", "")
          .typed<std::vector<Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                     const Tensor&, const Tensor&, std::array<bool, 3>)>();
  return op.call(radial, table, harmonics, node_grad, pair_type, centers, needed);
}

class EdgesToNodesByPairType : public torch::autograd::Function<EdgesToNodesByPairType> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& radial, const Tensor& table,
                        const Tensor& pair_type, const Tensor& harmonics, const Tensor& centers,
                        int64_t num_nodes, bool blocks) {
    if (pair_form_serves(radial, table, harmonics, blocks)) {
      check_for_pair_form(radial, table, pair_type, harmonics, centers);
      ctx->save_for_backward({radial, table, pair_type, harmonics, centers});
      ctx->saved_data["pair_form"] = true;
      at::AutoDispatchBelowADInplaceOrView guard;
      return call_pair_form_nodes(radial, table, harmonics, pair_type, centers, num_nodes);
    }
    ctx->saved_data["pair_form"] = false;
    const PairTypeOrder types = checked_pair_types(radial, table, pair_type, harmonics, centers);
    // the grouping is kept for the backward rather than sorted again
    ctx->save_for_backward({radial, table, types.order, harmonics, centers});
    ctx->saved_data["counts"] = types.counts;
    at::AutoDispatchBelowADInplaceOrView guard;
    return by_pair_type_sum(radial, table, types, harmonics, centers, num_nodes);
  }

  // Block by block over the edges of each pair type: the coefficient adjoint and the
  // recomputed coefficients of at most edges_per_chunk edges at a time, their products with
  // the type's table as matrix products, written back into the edge-ordered gradients. All
  // of it is differentiable (force training differentiates this backward).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& radial = saved[0];
    const Tensor& table = saved[1];
    const Tensor& harmonics = saved[3];
    const Tensor& centers = saved[4];
    if (ctx->saved_data["pair_form"].toBool()) {
      // one pass over the edges, differentiable again (pair_form's autograd)
      const std::array<bool, 3> needed = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                          ctx->needs_input_grad(3)};
      if (!grads[0].defined() || !(needed[0] || needed[1] || needed[2])) return variable_list(7);
      auto d =
          call_pair_form_adjoints(radial, table, harmonics, grads[0], saved[2], centers, needed);
      return {needed[0] ? d[0] : Tensor(),
              needed[1] ? d[1] : Tensor(),
              Tensor(),
              needed[2] ? d[2] : Tensor(),
              Tensor(),
              Tensor(),
              Tensor()};
    }
    // contiguous once here, not once per block inside the adjoint kernels
    const Tensor node_grad = grads[0].contiguous();
    const PairTypeOrder types{saved[2], ctx->saved_data["counts"].toIntVector()};
    const int64_t num_types = table.size(0), num_radial = table.size(1);
    const int64_t degrees = table.size(2), channels = table.size(3), width = degrees * channels;
    const Tensor flat_table = table.reshape({num_types, num_radial, width});
    const bool need_radial = ctx->needs_input_grad(0), need_table = ctx->needs_input_grad(1);
    const bool need_harmonics = ctx->needs_input_grad(3);
    // the blocks below write every edge's row once when the types' counts cover all
    // edges (they are the bincount of pair_type), so no zeros need writing first
    int64_t covered = 0;
    for (int64_t count : types.counts) covered += count;
    const bool every_edge = covered == radial.size(0);
    auto gradient_like = [every_edge](const Tensor& t) {
      return every_edge ? at::empty_like(t) : at::zeros_like(t);
    };
    Tensor radial_grad = need_radial ? gradient_like(radial) : Tensor();
    Tensor harmonic_grad = need_harmonics ? gradient_like(harmonics) : Tensor();
    std::vector<Tensor> table_grads;
    // edges per block: its temporaries are [block, R + 2 (L+1) s + (L+1)^2] besides the
    // adjoints' chunks, which hold as many edges
    const int64_t block = edges_per_chunk(radial);
    int64_t start = 0;
    for (int64_t t = 0; t < num_types; ++t) {
      Tensor table_grad_t = at::zeros({num_radial, width}, table.options());
      for (int64_t offset = 0; offset < types.counts[t]; offset += block) {
        const int64_t n = std::min(block, types.counts[t] - offset);
        const Tensor edges = types.order.narrow(0, start + offset, n);
        const Tensor block_harmonics = harmonics.index_select(0, edges);
        const Tensor block_centers = centers.index_select(0, edges);
        const Tensor block_radial = radial.index_select(0, edges);
        if (need_radial || need_table) {
          const Tensor adjoint = call_coefficient_adjoint(node_grad, block_harmonics, block_centers)
                                     .reshape({n, width});
          if (need_radial) radial_grad.index_copy_(0, edges, at::mm(adjoint, flat_table[t].t()));
          if (need_table) table_grad_t = table_grad_t + at::mm(block_radial.t(), adjoint);
        }
        if (need_harmonics) {
          const Tensor coefficients =
              at::mm(block_radial, flat_table[t]).view({n, degrees, channels});
          harmonic_grad.index_copy_(0, edges,
                                    call_harmonic_adjoint(node_grad, coefficients, block_centers));
        }
      }
      table_grads.push_back(table_grad_t);
      start += types.counts[t];
    }
    Tensor table_grad;
    if (need_table)
      table_grad =
          num_types > 0 ? at::stack(table_grads, 0).view(table.sizes()) : at::zeros_like(table);
    return {radial_grad, table_grad, Tensor(), harmonic_grad, Tensor(), Tensor(), Tensor()};
  }
};

Tensor by_pair_type_autograd(const Tensor& radial, const Tensor& table, const Tensor& pair_type,
                             const Tensor& harmonics, const Tensor& centers, int64_t num_nodes) {
  return EdgesToNodesByPairType::apply(radial, table, pair_type, harmonics, centers, num_nodes,
                                       false);
}

// the blocked path on any device: the reference of pair_form, for the tests
Tensor by_pair_type_blocks_autograd(const Tensor& radial, const Tensor& table,
                                    const Tensor& pair_type, const Tensor& harmonics,
                                    const Tensor& centers, int64_t num_nodes) {
  return EdgesToNodesByPairType::apply(radial, table, pair_type, harmonics, centers, num_nodes,
                                       true);
}

Tensor by_pair_type_blocks_forward(const Tensor& radial, const Tensor& table,
                                   const Tensor& pair_type, const Tensor& harmonics,
                                   const Tensor& centers, int64_t num_nodes) {
  return by_pair_type_sum(radial, table,
                          checked_pair_types(radial, table, pair_type, harmonics, centers),
                          harmonics, centers, num_nodes);
}

Tensor by_pair_type_dispatch(const Tensor& radial, const Tensor& table, const Tensor& pair_type,
                             const Tensor& harmonics, const Tensor& centers, int64_t num_nodes) {
  if (pair_form_serves(radial, table, harmonics, false)) {
    check_for_pair_form(radial, table, pair_type, harmonics, centers);
    return call_pair_form_nodes(radial, table, harmonics, pair_type, centers, num_nodes);
  }
  return by_pair_type_blocks_forward(radial, table, pair_type, harmonics, centers, num_nodes);
}

}  // namespace

// A fragment: other files may add operators to the lorem namespace.
TORCH_LIBRARY_FRAGMENT(lorem, m) {
  m.def(
      "edges_to_nodes(Tensor coefficients, Tensor harmonics, Tensor centers, int num_nodes) "
      "-> Tensor");
  m.def(
      "edges_to_nodes_coefficient_adjoint(Tensor node_grad, Tensor harmonics, Tensor centers) "
      "-> Tensor");
  m.def(
      "edges_to_nodes_harmonic_adjoint(Tensor node_grad, Tensor coefficients, Tensor centers) "
      "-> Tensor");
  m.def(
      "edges_to_nodes_by_pair_type(Tensor radial, Tensor table, Tensor pair_type, "
      "Tensor harmonics, Tensor centers, int num_nodes) -> Tensor");
  m.def(
      "_edges_to_nodes_by_pair_type_blocks(Tensor radial, Tensor table, Tensor pair_type, "
      "Tensor harmonics, Tensor centers, int num_nodes) -> Tensor");
  m.def(
      "_edge_op_by_chunks(str name, Tensor first, Tensor second, Tensor centers, "
      "int num_nodes, int chunk_edges) -> Tensor");
}

TORCH_LIBRARY_IMPL(lorem, CPU, m) {
  m.impl("edges_to_nodes", edges_to_nodes_cpu);
  m.impl("edges_to_nodes_coefficient_adjoint", coefficient_adjoint_cpu);
  m.impl("edges_to_nodes_harmonic_adjoint", harmonic_adjoint_cpu);
}

TORCH_LIBRARY_IMPL(lorem, CompositeExplicitAutograd, m) {
  m.impl("edges_to_nodes", edges_to_nodes_composite);
  m.impl("edges_to_nodes_coefficient_adjoint", coefficient_adjoint_composite);
  m.impl("edges_to_nodes_harmonic_adjoint", harmonic_adjoint_composite);
  m.impl("_edge_op_by_chunks", edge_op_by_chunks);
  m.impl("edges_to_nodes_by_pair_type", by_pair_type_dispatch);
  m.impl("_edges_to_nodes_by_pair_type_blocks", by_pair_type_blocks_forward);
}

TORCH_LIBRARY_IMPL(lorem, Autograd, m) {
  m.impl("edges_to_nodes", edges_to_nodes_autograd);
  m.impl("edges_to_nodes_coefficient_adjoint", coefficient_adjoint_autograd);
  m.impl("edges_to_nodes_harmonic_adjoint", harmonic_adjoint_autograd);
  m.impl("edges_to_nodes_by_pair_type", by_pair_type_autograd);
  m.impl("_edges_to_nodes_by_pair_type_blocks", by_pair_type_blocks_autograd);
}
