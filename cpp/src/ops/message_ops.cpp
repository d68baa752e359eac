// lorem::message_form: the equivariant message-passing tensor product of a layer as one
// operator from edge inputs to atom outputs (docs/design.md section 1.3).
//
// The layer's messages are m[i, m3, c] = sum over edges p with centre i of
//   sum_e cg_e Y[p, m1_e] a[p, l1_e, c] W[path_e, c] x[j_p, m2_e, c]
// with e running over the nonzero Clebsch-Gordan entries (m1, m2, m3) of the allowed
// paths (l1, l2, l3): Y the edge harmonics, a the filtered per-degree edge coefficients,
// W the tensor-product kernel, x the features of the sending atoms j_p. This is the
// gradient with respect to G of the multilinear form
//   F(Y, a, W, x, G) = sum_{p, e, c} cg_e Y[p, m1] a[p, l1, c] W[path, c] x[j_p, m2, c]
//                                     G[i_p, m3, c],
// and every derivative of F with respect to one factor is again a contraction over the
// same sparse pattern. So one operator, `message_form(target, ...)`, computes dF/d(factor
// `target`) from the other four; its backward is the same operator with the incoming
// gradient put in the target's slot, which makes the family closed under differentiation
// (double backward for force training) without storing any per-edge tensor of width
// (L+1)^2 x s: the kernels recompute the products edge by edge.
//
// Factor slots: 0 harmonics [P, M], 1 coefficients [P, L+1, S], 2 weights [paths, S],
// 3 features [sources, M, S], 4 gradient [centres, M, S]; the target's slot is None.
// entries [E, 5] int64 rows (m1, m2, m3, path, l1); coupling [E] the coefficients.
//
// Kernels: a CPU kernel (edges grouped by the atom they write to, so that threads never
// share an output row), and for other devices (CUDA) the same contraction from torch
// operations over chunks of edges, with bounded memory.
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <optional>
#include <vector>

#include "channel_lanes.hpp"
#include "index_grouping.hpp"
#include "multilinear_form.hpp"
#include "sparse_form_device.hpp"

namespace lorem {
namespace {

using torch::Tensor;
using OptionalTensor = std::optional<Tensor>;

constexpr int64_t kHarmonics = 0;
constexpr int64_t kCoefficients = 1;
constexpr int64_t kWeights = 2;
constexpr int64_t kFeatures = 3;
constexpr int64_t kGradient = 4;
constexpr int64_t kNumFactors = 5;
constexpr std::array<const char*, kNumFactors> kFactorNames = {"harmonics", "coefficients",
                                                               "weights", "features", "gradient"};

// The checked problem: sizes and the factors (target slot undefined), all contiguous.
struct Problem {
  int64_t target = 0;
  int64_t num_edges = 0, num_components = 0, num_degrees = 0, channels = 0;
  int64_t num_paths = 0, num_sources = 0, num_centers = 0, num_entries = 0;
  std::array<Tensor, kNumFactors> factors;
  Tensor centers, others, entries, coupling;
  std::vector<int64_t> target_shape;
};

std::string shape_string(const Tensor& t) {
  std::string out = "[";
  for (int64_t d = 0; d < t.dim(); ++d) out += (d ? ", " : "") + std::to_string(t.size(d));
  return out + "]";
}

// Takes the one size a dimension must have from whichever factor carries it first.
void agree(int64_t& size, int64_t value, const char* what) {
  if (size < 0) size = value;
  TORCH_CHECK(size == value, "lorem::message_form: inconsistent ", what, " (", size, " and ", value,
              ")");
}

Problem check_problem(int64_t target, at::IntArrayRef target_shape,
                      const std::array<OptionalTensor, kNumFactors>& factors, const Tensor& centers,
                      const Tensor& others, const Tensor& entries, const Tensor& coupling) {
  const auto slots = multilinear::check_slots<kNumFactors>("lorem::message_form", target,
                                                           target_shape, factors, kFactorNames);
  Problem problem;
  problem.target = target;
  problem.target_shape = target_shape.vec();
  // the expected rank of each factor and the sizes its dimensions name
  const std::array<int64_t, kNumFactors> ranks = {2, 3, 2, 3, 3};
  int64_t edges = -1, components = -1, degrees = -1, channels = -1, paths = -1, sources = -1,
          centres = -1;
  std::array<std::vector<int64_t*>, kNumFactors> dims = {
      std::vector<int64_t*>{&edges, &components},
      std::vector<int64_t*>{&edges, &degrees, &channels}, std::vector<int64_t*>{&paths, &channels},
      std::vector<int64_t*>{&sources, &components, &channels},
      std::vector<int64_t*>{&centres, &components, &channels}};
  const at::ScalarType dtype = slots.options.dtype().toScalarType();
  problem.factors = slots.factors;
  for (int64_t k = 0; k < kNumFactors; ++k) {
    const std::vector<int64_t>& shape = slots.shapes[k];
    TORCH_CHECK(static_cast<int64_t>(shape.size()) == ranks[k],
                "lorem::message_form: ", kFactorNames[k], " must have ", ranks[k], " dimensions");
    for (int64_t d = 0; d < ranks[k]; ++d) agree(*dims[k][d], shape[d], kFactorNames[k]);
  }
  TORCH_CHECK(degrees * degrees == components, "lorem::message_form: harmonics have ", components,
              " components, not (L+1)^2 for the coefficients' ", degrees, " degrees");
  TORCH_CHECK(centers.dim() == 1 && others.dim() == 1 && centers.size(0) == edges &&
                  others.size(0) == edges,
              "lorem::message_form: centers and others must be [", edges, "], got ",
              shape_string(centers), " and ", shape_string(others));
  TORCH_CHECK(centers.scalar_type() == at::kLong && others.scalar_type() == at::kLong &&
                  entries.scalar_type() == at::kLong,
              "lorem::message_form: centers, others and entries must be int64");
  TORCH_CHECK(entries.dim() == 2 && entries.size(1) == 5 && coupling.dim() == 1 &&
                  coupling.size(0) == entries.size(0),
              "lorem::message_form: entries must be [E, 5] and coupling [E], got ",
              shape_string(entries), " and ", shape_string(coupling));
  TORCH_CHECK(coupling.scalar_type() == dtype,
              "lorem::message_form: coupling must have the "
              "factors' dtype");
  problem.num_edges = edges;
  problem.num_components = components;
  problem.num_degrees = degrees;
  problem.channels = channels;
  problem.num_paths = paths;
  problem.num_sources = sources;
  problem.num_centers = centres;
  problem.num_entries = entries.size(0);
  problem.centers = centers.contiguous();
  problem.others = others.contiguous();
  problem.entries = entries.contiguous();
  problem.coupling = coupling.contiguous();
  return problem;
}

// ---------------------------------------------------------------- CPU kernel

struct Entry {
  int32_t m1, m2, m3, path, l1;
};

std::vector<Entry> read_entries(const Problem& p) {
  const Tensor entries = p.entries.cpu();
  const int64_t* e = entries.data_ptr<int64_t>();
  std::vector<Entry> out(p.num_entries);
  for (int64_t k = 0; k < p.num_entries; ++k) {
    const int64_t* row = e + 5 * k;
    TORCH_CHECK(0 <= row[0] && row[0] < p.num_components && 0 <= row[1] &&
                    row[1] < p.num_components && 0 <= row[2] && row[2] < p.num_components &&
                    0 <= row[3] && row[3] < p.num_paths && 0 <= row[4] && row[4] < p.num_degrees,
                "lorem::message_form: entry ", k, " indexes outside the factors");
    out[k] = Entry{static_cast<int32_t>(row[0]), static_cast<int32_t>(row[1]),
                   static_cast<int32_t>(row[2]), static_cast<int32_t>(row[3]),
                   static_cast<int32_t>(row[4])};
  }
  return out;
}

using grouping::Grouping;

void check_range(const Tensor& index, int64_t num_atoms, const char* name) {
  grouping::check_range("lorem::message_form", index, num_atoms, name);
}

// The entries as the CPU kernel walks them, for one target: sorted by the component (or
// path) they write to, so that a run of entries sums into registers and is written once,
// and within a run by path, so that the per-edge channel factor of a path,
// aw[path, c] = a[edge, l1(path), c] W[path, c], multiplies a segment's partial sum once.
// An entry then costs one multiply-add per channel on rows that stay in the L1 cache (the
// sending atom's features x[j] or the centre's gradient G[i], 49 x s values each, and aw,
// paths x s): no per-edge table of (path, component) products, which for L = 6 outgrows it.
struct Step {
  int32_t m1, in, other, path;  // in: the component of the channel row read per entry
  double coupling;
};

struct Run {
  int32_t key, begin, end;             // steps [begin, end)
  int32_t first_segment, end_segment;  // segments [first_segment, end_segment)
};

struct Segment {
  int32_t path, begin, end;  // steps of one path within a run
};

struct Schedule {
  std::vector<Step> steps;
  std::vector<Run> runs;
  std::vector<Segment> segments;
};

Schedule schedule_for(const std::vector<Entry>& entries, const double* coupling, int64_t target) {
  // what an entry writes to, the component of the row it reads, and the other one
  auto key = [target](const Entry& e) {
    switch (target) {
      case kHarmonics:
        return e.m1;
      case kFeatures:
        return e.m2;
      case kGradient:
        return e.m3;
      default:
        return e.path;
    }
  };
  auto in_component = [target](const Entry& e) { return target == kFeatures ? e.m3 : e.m2; };
  std::vector<int32_t> order(entries.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = static_cast<int32_t>(k);
  std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) {
    const Entry &a = entries[x], &b = entries[y];
    if (key(a) != key(b)) return key(a) < key(b);
    if (a.path != b.path) return a.path < b.path;
    return in_component(a) < in_component(b);
  });
  Schedule out;
  for (int32_t k : order) {
    const Entry& e = entries[k];
    const int32_t position = static_cast<int32_t>(out.steps.size());
    const int32_t segment = static_cast<int32_t>(out.segments.size());
    const bool new_run = out.runs.empty() || out.runs.back().key != key(e);
    if (new_run) out.runs.push_back(Run{key(e), position, position, segment, segment});
    if (new_run || out.segments.back().path != e.path)
      out.segments.push_back(Segment{e.path, position, position});
    out.segments.back().end = position + 1;
    out.runs.back().end = position + 1;
    out.runs.back().end_segment = static_cast<int32_t>(out.segments.size());
    out.steps.push_back(
        Step{e.m1, in_component(e), target == kFeatures ? e.m2 : e.m3, e.path, coupling[k]});
  }
  return out;
}

// One target's contraction. kChannels > 0 fixes the channel count at compile time (the
// default model's 8) so that the channel loops unroll and vectorise into registers.
template <typename scalar_t, int kChannels>
struct CpuKernel {
  struct TypedStep {
    int32_t m1, in_row, other_row, path;  // in_row, other_row: component x channels
    scalar_t coupling;
  };
  const Problem& p;
  std::vector<TypedStep> steps;
  std::vector<Run> runs;
  std::vector<Segment> segments;
  const scalar_t *Y, *a, *W, *x, *G;
  const int64_t *centers, *others;
  int64_t M, D, num_paths;
  int64_t S;
  std::vector<int32_t> path_degree;

  CpuKernel(const Problem& problem, const std::vector<Entry>& entries)
      : p(problem), S(kChannels > 0 ? kChannels : problem.channels) {
    const Tensor coupling = problem.coupling.to(at::kDouble).cpu();
    Schedule schedule = schedule_for(entries, coupling.data_ptr<double>(), problem.target);
    for (const Step& step : schedule.steps)
      steps.push_back(TypedStep{step.m1, static_cast<int32_t>(step.in * S),
                                static_cast<int32_t>(step.other * S), step.path,
                                static_cast<scalar_t>(step.coupling)});
    runs = std::move(schedule.runs);
    segments = std::move(schedule.segments);
    auto data = [&](int64_t k) -> const scalar_t* {
      return problem.factors[k].defined() ? problem.factors[k].data_ptr<scalar_t>() : nullptr;
    };
    Y = data(kHarmonics);
    a = data(kCoefficients);
    W = data(kWeights);
    x = data(kFeatures);
    G = data(kGradient);
    centers = problem.centers.data_ptr<int64_t>();
    others = problem.others.data_ptr<int64_t>();
    M = problem.num_components;
    D = problem.num_degrees;
    num_paths = problem.num_paths;
    path_degree.assign(num_paths, 0);
    for (const Entry& entry : entries) path_degree[entry.path] = entry.l1;
  }

  static constexpr bool kFixed = kChannels > 0;
  static constexpr int kLocal = kFixed ? kChannels : 1;
  int64_t channels() const { return kFixed ? kChannels : S; }

  // aw[path, c] = a[edge, l1(path), c] W[path, c]
  void path_factors(int64_t edge, scalar_t* aw) const {
    const int64_t s = channels();
    const scalar_t* a_edge = a + edge * D * s;
    for (int64_t path = 0; path < num_paths; ++path) {
      const scalar_t* a_row = a_edge + path_degree[path] * s;
      const scalar_t* w_row = W + path * s;
      for (int64_t c = 0; c < s; ++c) aw[path * s + c] = a_row[c] * w_row[c];
    }
  }

  // couple() with the channel count fixed (kFixed)
  LOREM_VECTOR_CLONES void couple_fixed(const scalar_t* y, const scalar_t* aw, const scalar_t* in,
                                        scalar_t* out) const {
    using L = Lanes<scalar_t, kLocal>;
    using V = typename L::Vector;
    for (const Run& run : runs) {
      V acc{};
      for (int32_t q = run.first_segment; q < run.end_segment; ++q) {
        const Segment& segment = segments[q];
        V part0{}, part1{};  // two chains: consecutive steps do not wait on each other
        int32_t n = segment.begin;
        for (; n + 1 < segment.end; n += 2) {
          const TypedStep& e0 = steps[n];
          const TypedStep& e1 = steps[n + 1];
          part0 += (e0.coupling * y[e0.m1]) * L::load(in + e0.in_row);
          part1 += (e1.coupling * y[e1.m1]) * L::load(in + e1.in_row);
        }
        if (n < segment.end) {
          const TypedStep& e = steps[n];
          part0 += (e.coupling * y[e.m1]) * L::load(in + e.in_row);
        }
        acc += L::load(aw + segment.path * kLocal) * (part0 + part1);
      }
      L::add_to(out + run.key * kLocal, acc);
    }
  }

  // out[key, c] += sum_{segments of the key's run} aw[path, c] sum_{steps} cg Y[m1] in[in, c],
  // for one edge (in: x[j] for messages, G[i] for features)
  void couple(const scalar_t* y, const scalar_t* aw, const scalar_t* in, scalar_t* out,
              scalar_t* scratch) const {
    if constexpr (kFixed) {
      couple_fixed(y, aw, in, out);
      return;
    }
    const int64_t s = channels();
    scalar_t* acc = scratch;  // [3 s]: the run's sum; a segment's two partial sums
    scalar_t* part = acc + s;
    for (const Run& run : runs) {
      std::fill(acc, acc + s, scalar_t(0));
      for (int32_t q = run.first_segment; q < run.end_segment; ++q) {
        const Segment& segment = segments[q];
        std::fill(part, part + 2 * s, scalar_t(0));
        int32_t n = segment.begin;
        for (; n + 1 < segment.end; n += 2) {  // two chains: steps do not wait on each other
          const TypedStep& e0 = steps[n];
          const TypedStep& e1 = steps[n + 1];
          const scalar_t f0 = e0.coupling * y[e0.m1], f1 = e1.coupling * y[e1.m1];
          const scalar_t* v0 = in + e0.in_row;
          const scalar_t* v1 = in + e1.in_row;
          for (int64_t c = 0; c < s; ++c) {
            part[c] += f0 * v0[c];
            part[s + c] += f1 * v1[c];
          }
        }
        if (n < segment.end) {
          const TypedStep& e = steps[n];
          const scalar_t f = e.coupling * y[e.m1];
          const scalar_t* v = in + e.in_row;
          for (int64_t c = 0; c < s; ++c) part[c] += f * v[c];
        }
        const scalar_t* w = aw + segment.path * s;
        for (int64_t c = 0; c < s; ++c) acc[c] += w[c] * (part[c] + part[s + c]);
      }
      scalar_t* o = out + run.key * s;
      for (int64_t c = 0; c < s; ++c) o[c] += acc[c];
    }
  }

  // path_sums() with the channel count fixed (kFixed)
  LOREM_VECTOR_CLONES void path_sums_fixed(int64_t edge, scalar_t* out) const {
    using L = Lanes<scalar_t, kLocal>;
    using V = typename L::Vector;
    const scalar_t* y = Y + edge * M;
    const scalar_t* x_row = x + others[edge] * M * kLocal;
    const scalar_t* g_row = G + centers[edge] * M * kLocal;
    for (const Run& run : runs) {
      V part0{}, part1{};
      int32_t n = run.begin;
      for (; n + 1 < run.end; n += 2) {
        const TypedStep& e0 = steps[n];
        const TypedStep& e1 = steps[n + 1];
        part0 +=
            (e0.coupling * y[e0.m1]) * L::load(x_row + e0.in_row) * L::load(g_row + e0.other_row);
        part1 +=
            (e1.coupling * y[e1.m1]) * L::load(x_row + e1.in_row) * L::load(g_row + e1.other_row);
      }
      if (n < run.end) {
        const TypedStep& e = steps[n];
        part0 += (e.coupling * y[e.m1]) * L::load(x_row + e.in_row) * L::load(g_row + e.other_row);
      }
      L::store(out + run.key * kLocal, part0 + part1);
    }
  }

  // acc[path, c] = sum_{e in path} cg Y[m1] x[m2, c] G[m3, c] for one edge (runs by path)
  void path_sums(int64_t edge, scalar_t* out, scalar_t* scratch) const {
    if constexpr (kFixed) {
      path_sums_fixed(edge, out);
      return;
    }
    const int64_t s = channels();
    scalar_t* acc = scratch;  // [s]
    const scalar_t* y = Y + edge * M;
    const scalar_t* x_row = x + others[edge] * M * s;
    const scalar_t* g_row = G + centers[edge] * M * s;
    for (const Run& run : runs) {
      std::fill(acc, acc + s, scalar_t(0));
      for (int32_t n = run.begin; n < run.end; ++n) {
        const TypedStep& e = steps[n];
        const scalar_t f = e.coupling * y[e.m1];
        const scalar_t* xv = x_row + e.in_row;
        const scalar_t* gv = g_row + e.other_row;
        for (int64_t c = 0; c < s; ++c) acc[c] += f * xv[c] * gv[c];
      }
      std::copy(acc, acc + s, out + run.key * s);
    }
  }

  // messages: out[i] += couple(x[j]) over the edges of centre i; or features:
  // out[j] += couple(G[i]) over the edges sent by j. Edges are grouped by the atom they
  // write to, so that no two threads write one row.
  void scatter(scalar_t* out, bool to_centers) const {
    const int64_t s = channels();
    const Tensor& key = to_centers ? p.centers : p.others;
    const int64_t num_atoms = to_centers ? p.num_centers : p.num_sources;
    check_range(p.centers, p.num_centers, "centers");
    check_range(p.others, p.num_sources, "others");
    const Grouping g = grouping::group_by(key, num_atoms);
    at::parallel_for(0, num_atoms, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> aw(num_paths * s), scratch(3 * s);
      for (int64_t atom = begin; atom < end; ++atom) {
        scalar_t* out_row = out + atom * M * s;
        for (int64_t k = g.offsets[atom]; k < g.offsets[atom + 1]; ++k) {
          const int64_t edge = g.order[k];
          const scalar_t* in = to_centers ? x + others[edge] * M * s : G + centers[edge] * M * s;
          path_factors(edge, aw.data());
          couple(Y + edge * M, aw.data(), in, out_row, scratch.data());
        }
      }
    });
  }

  // harmonics of one edge, the channel count fixed (kFixed)
  LOREM_VECTOR_CLONES void harmonics_edge_fixed(const scalar_t* x_row, const scalar_t* g_row,
                                                const scalar_t* aw, scalar_t* o) const {
    using L = Lanes<scalar_t, kLocal>;
    using V = typename L::Vector;
    for (const Run& run : runs) {
      V total{};
      for (int32_t q = run.first_segment; q < run.end_segment; ++q) {
        const Segment& segment = segments[q];
        V part0{}, part1{};
        int32_t n = segment.begin;
        for (; n + 1 < segment.end; n += 2) {
          const TypedStep& e0 = steps[n];
          const TypedStep& e1 = steps[n + 1];
          part0 += e0.coupling * L::load(x_row + e0.in_row) * L::load(g_row + e0.other_row);
          part1 += e1.coupling * L::load(x_row + e1.in_row) * L::load(g_row + e1.other_row);
        }
        if (n < segment.end) {
          const TypedStep& e = steps[n];
          part0 += e.coupling * L::load(x_row + e.in_row) * L::load(g_row + e.other_row);
        }
        total += L::load(aw + segment.path * kLocal) * (part0 + part1);
      }
      o[run.key] += L::sum(total);
    }
  }

  // harmonics: out[p, m1] += sum_c sum_{segments} aw[path, c] sum_{steps} cg x[j, m2, c]
  // G[i, m3, c] (runs by m1)
  void harmonics(scalar_t* out) const {
    const int64_t s = channels();
    check_range(p.centers, p.num_centers, "centers");
    check_range(p.others, p.num_sources, "others");
    at::parallel_for(0, p.num_edges, 16, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> aw(num_paths * s), scratch(2 * s);
      scalar_t* acc = scratch.data();
      scalar_t* part = acc + s;
      for (int64_t edge = begin; edge < end; ++edge) {
        path_factors(edge, aw.data());
        const scalar_t* x_row = x + others[edge] * M * s;
        const scalar_t* g_row = G + centers[edge] * M * s;
        scalar_t* o = out + edge * M;
        if constexpr (kFixed) {
          harmonics_edge_fixed(x_row, g_row, aw.data(), o);
          continue;
        }
        for (const Run& run : runs) {
          std::fill(acc, acc + s, scalar_t(0));
          for (int32_t q = run.first_segment; q < run.end_segment; ++q) {
            const Segment& segment = segments[q];
            std::fill(part, part + s, scalar_t(0));
            for (int32_t n = segment.begin; n < segment.end; ++n) {
              const TypedStep& e = steps[n];
              const scalar_t* xv = x_row + e.in_row;
              const scalar_t* gv = g_row + e.other_row;
              for (int64_t c = 0; c < s; ++c) part[c] += e.coupling * xv[c] * gv[c];
            }
            const scalar_t* w = aw.data() + segment.path * s;
            for (int64_t c = 0; c < s; ++c) acc[c] += w[c] * part[c];
          }
          scalar_t sum = 0;
          for (int64_t c = 0; c < s; ++c) sum += acc[c];
          o[run.key] += sum;
        }
      }
    });
  }

  // coefficients: out[p, l1, c] += W[path, c] acc[path, c]
  void coefficients(scalar_t* out) const {
    const int64_t s = channels();
    check_range(p.centers, p.num_centers, "centers");
    check_range(p.others, p.num_sources, "others");
    at::parallel_for(0, p.num_edges, 16, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> acc(num_paths * s, scalar_t(0)), scratch(s);
      for (int64_t edge = begin; edge < end; ++edge) {
        path_sums(edge, acc.data(), scratch.data());
        scalar_t* o = out + edge * D * s;
        for (const Run& run : runs)
          for (int64_t c = 0; c < s; ++c)
            o[path_degree[run.key] * s + c] += W[run.key * s + c] * acc[run.key * s + c];
      }
    });
  }

  // weights: out[path, c] += sum_p a[p, l1, c] acc[path, c]; one partial sum per thread
  void weights(scalar_t* out) const {
    const int64_t s = channels();
    check_range(p.centers, p.num_centers, "centers");
    check_range(p.others, p.num_sources, "others");
    const int64_t threads = at::get_num_threads();
    std::vector<scalar_t> partial(threads * num_paths * s, scalar_t(0));
    at::parallel_for(0, p.num_edges, 16, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> acc(num_paths * s, scalar_t(0)), scratch(s);
      scalar_t* mine = partial.data() + at::get_thread_num() * num_paths * s;
      for (int64_t edge = begin; edge < end; ++edge) {
        path_sums(edge, acc.data(), scratch.data());
        const scalar_t* a_edge = a + edge * D * s;
        for (const Run& run : runs)
          for (int64_t c = 0; c < s; ++c)
            mine[run.key * s + c] += a_edge[path_degree[run.key] * s + c] * acc[run.key * s + c];
      }
    });
    for (int64_t t = 0; t < threads; ++t)
      for (int64_t k = 0; k < num_paths * s; ++k) out[k] += partial[t * num_paths * s + k];
  }

  void run(scalar_t* out) const {
    switch (p.target) {
      case kHarmonics:
        return harmonics(out);
      case kCoefficients:
        return coefficients(out);
      case kWeights:
        return weights(out);
      case kFeatures:
        return scatter(out, false);
      default:
        return scatter(out, true);
    }
  }
};

Tensor message_form_cpu(int64_t target, at::IntArrayRef target_shape,
                        const OptionalTensor& harmonics, const OptionalTensor& coefficients,
                        const OptionalTensor& weights, const OptionalTensor& features,
                        const OptionalTensor& gradient, const Tensor& centers, const Tensor& others,
                        const Tensor& entries, const Tensor& coupling) {
  const Problem p =
      check_problem(target, target_shape, {harmonics, coefficients, weights, features, gradient},
                    centers, others, entries, coupling);
  const Tensor& any_factor = p.factors[target == 0 ? 1 : 0];
  Tensor out = torch::zeros(p.target_shape, any_factor.options());
  if (p.num_edges == 0 || p.num_entries == 0 || out.numel() == 0) return out;
  const std::vector<Entry> list = read_entries(p);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lorem::message_form", [&] {
    if (p.channels == 8)
      CpuKernel<scalar_t, 8>(p, list).run(out.data_ptr<scalar_t>());
    else
      CpuKernel<scalar_t, 0>(p, list).run(out.data_ptr<scalar_t>());
  });
  return out;
}

// ---------------------------------------------------------- torch-op kernel

// The same contraction from torch operations, chunk by chunk of edges, so that every
// device runs it (CUDA without a kernel of its own) in bounded memory: per chunk the
// factors are expanded onto the entries, [chunk, E, S] at most a few at a time.
Tensor message_form_chunked(int64_t target, at::IntArrayRef target_shape,
                            const OptionalTensor& harmonics, const OptionalTensor& coefficients,
                            const OptionalTensor& weights, const OptionalTensor& features,
                            const OptionalTensor& gradient, const Tensor& centers,
                            const Tensor& others, const Tensor& entries, const Tensor& coupling) {
  const Problem p =
      check_problem(target, target_shape, {harmonics, coefficients, weights, features, gradient},
                    centers, others, entries, coupling);
  const Tensor& any_factor = p.factors[target == 0 ? 1 : 0];
  Tensor out = torch::zeros(p.target_shape, any_factor.options());
  if (p.num_edges == 0 || p.num_entries == 0 || out.numel() == 0) return out;
  const Tensor m1 = p.entries.select(1, 0), m2 = p.entries.select(1, 1),
               m3 = p.entries.select(1, 2), path = p.entries.select(1, 3),
               l1 = p.entries.select(1, 4);
  const int64_t E = p.num_entries, S = p.channels;
  // elements of one [chunk, E, S] tensor, a few alive at once: on a GPU 1 << 25 (128 MB in
  // float32; 649 edges per chunk with the 6,460 entries of L = 6 and s = 8, where 81 made
  // it wait on launches), elsewhere (the tests' reference) 1 << 22, so that their problems
  // cross chunks
  const int64_t kBudget = int64_t(1) << (any_factor.is_cuda() ? 25 : 22);
  const int64_t chunk = std::max<int64_t>(1, kBudget / std::max<int64_t>(1, E * S));
  const Tensor w_entries =
      target == kWeights ? Tensor() : p.factors[kWeights].index_select(0, path);  // [E, S]
  for (int64_t begin = 0; begin < p.num_edges; begin += chunk) {
    const int64_t end = std::min(p.num_edges, begin + chunk);
    const Tensor centers_c = p.centers.slice(0, begin, end);
    const Tensor others_c = p.others.slice(0, begin, end);
    // the product of every factor but the target, on the entries: [b, E, S]
    Tensor product = p.coupling.view({1, E, 1});
    if (target != kHarmonics)
      product =
          product * p.factors[kHarmonics].slice(0, begin, end).index_select(1, m1).unsqueeze(-1);
    if (target != kCoefficients)
      product = product * p.factors[kCoefficients].slice(0, begin, end).index_select(1, l1);
    if (target != kWeights) product = product * w_entries.unsqueeze(0);
    if (target != kFeatures)
      product = product * p.factors[kFeatures].index_select(0, others_c).index_select(1, m2);
    if (target != kGradient)
      product = product * p.factors[kGradient].index_select(0, centers_c).index_select(1, m3);
    const int64_t b = end - begin;
    product = product.expand({b, E, S});
    switch (target) {
      case kHarmonics:
        out.slice(0, begin, end).index_add_(1, m1, product.sum(-1));
        break;
      case kCoefficients:
        out.slice(0, begin, end).index_add_(1, l1, product);
        break;
      case kWeights:
        out.index_add_(0, path, product.sum(0));
        break;
      case kFeatures:
        out.index_add_(
            0, others_c,
            torch::zeros({b, p.num_components, S}, out.options()).index_add_(1, m2, product));
        break;
      default:
        out.index_add_(
            0, centers_c,
            torch::zeros({b, p.num_components, S}, out.options()).index_add_(1, m3, product));
    }
  }
  return out;
}

// ---------------------------------------------------------- device kernel

// The contraction as the threads of the device kernel (sparse_form_threads.hpp): on CUDA
// the compiled kernel, on the CPU its threads one after another (what the tests hold to
// the CPU kernel). Members are the edges; the per-edge targets take one edge per thread,
// the features and the gradient the edges of one sending atom or centre, the weights
// blocks of edges added atomically.
Tensor message_form_device(int64_t target, at::IntArrayRef target_shape,
                           const OptionalTensor& harmonics, const OptionalTensor& coefficients,
                           const OptionalTensor& weights, const OptionalTensor& features,
                           const OptionalTensor& gradient, const Tensor& centers,
                           const Tensor& others, const Tensor& entries, const Tensor& coupling) {
  const Problem p =
      check_problem(target, target_shape, {harmonics, coefficients, weights, features, gradient},
                    centers, others, entries, coupling);
  using namespace sparse_form;
  sparse_form::Problem form;
  form.op = "lorem::message_form";
  form.target = target;
  form.target_shape = p.target_shape;
  form.entries = p.entries;
  form.coupling = p.coupling;
  form.channels = p.channels;
  form.num_members = p.num_edges;
  // slot order; the entries' columns are (m1, m2, m3, path, l1)
  form.factors = {
      {p.factors[kHarmonics], Tensor(), "", p.num_edges, kRowIsMember, 0, p.num_components, false},
      {p.factors[kCoefficients], Tensor(), "", p.num_edges, kRowIsMember, 4, p.num_degrees, true},
      {p.factors[kWeights], Tensor(), "", 1, kRowFixed, 3, p.num_paths, true},
      {p.factors[kFeatures], p.others, "others", p.num_sources, kRowGathered, 1, p.num_components,
       true},
      {p.factors[kGradient], p.centers, "centers", p.num_centers, kRowGathered, 2, p.num_components,
       true}};
  if (target == kWeights) {
    form.group_kind = kGroupBlock;
  } else if (target == kFeatures || target == kGradient) {
    form.group_kind = kGroupListed;  // by the target's rows: others or centers
  }
  return sparse_form::run(form);
}

// ---------------------------------------------------------------- autograd

Tensor message_form_call(int64_t target, at::IntArrayRef target_shape,
                         const OptionalTensor& harmonics, const OptionalTensor& coefficients,
                         const OptionalTensor& weights, const OptionalTensor& features,
                         const OptionalTensor& gradient, const Tensor& centers,
                         const Tensor& others, const Tensor& entries, const Tensor& coupling) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lorem::message_form", "")
                       .typed<decltype(message_form_call)>();
  return op.call(target, target_shape, harmonics, coefficients, weights, features, gradient,
                 centers, others, entries, coupling);
}

class MessageForm : public torch::autograd::Function<MessageForm> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, int64_t target,
                        at::IntArrayRef target_shape, const OptionalTensor& harmonics,
                        const OptionalTensor& coefficients, const OptionalTensor& weights,
                        const OptionalTensor& features, const OptionalTensor& gradient,
                        const Tensor& centers, const Tensor& others, const Tensor& entries,
                        const Tensor& coupling) {
    multilinear::save<kNumFactors>(ctx, target, target_shape,
                                   {harmonics, coefficients, weights, features, gradient},
                                   {centers, others, entries, coupling});
    at::AutoDispatchBelowADInplaceOrView guard;
    return message_form_call(target, target_shape, harmonics, coefficients, weights, features,
                             gradient, centers, others, entries, coupling);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    // 2 leading non-tensor arguments, the 5 factor slots, 4 index/pattern tensors
    return multilinear::backward<kNumFactors>(
        ctx, grad_outputs[0], 2, torch::autograd::variable_list(2 + kNumFactors + 4),
        [](int64_t k, const std::vector<int64_t>& shape, const auto& args, const auto& fixed) {
          return message_form_call(k, shape, args[0], args[1], args[2], args[3], args[4], fixed[0],
                                   fixed[1], fixed[2], fixed[3]);
        });
  }
};

Tensor message_form_autograd(int64_t target, at::IntArrayRef target_shape,
                             const OptionalTensor& harmonics, const OptionalTensor& coefficients,
                             const OptionalTensor& weights, const OptionalTensor& features,
                             const OptionalTensor& gradient, const Tensor& centers,
                             const Tensor& others, const Tensor& entries, const Tensor& coupling) {
  return MessageForm::apply(target, target_shape, harmonics, coefficients, weights, features,
                            gradient, centers, others, entries, coupling);
}

}  // namespace
}  // namespace lorem

TORCH_LIBRARY_FRAGMENT(lorem, m) {
  m.def(
      "message_form(int target, int[] target_shape, Tensor? harmonics, Tensor? coefficients, "
      "Tensor? weights, Tensor? features, Tensor? gradient, Tensor centers, Tensor others, "
      "Tensor entries, Tensor coupling) -> Tensor");
  // the torch-op contraction under its own name too: the reference the tests hold the
  // CPU kernel to, and what a device without a kernel runs
  m.def(
      "message_form_chunked(int target, int[] target_shape, Tensor? harmonics, "
      "Tensor? coefficients, Tensor? weights, Tensor? features, Tensor? gradient, "
      "Tensor centers, Tensor others, Tensor entries, Tensor coupling) -> Tensor");
  // the device kernel under its own name: on CUDA the compiled kernel (LOREM_CUDA_KERNELS),
  // on the CPU its threads one after another, which the tests hold to the CPU kernel
  m.def(
      "_message_form_device(int target, int[] target_shape, Tensor? harmonics, "
      "Tensor? coefficients, Tensor? weights, Tensor? features, Tensor? gradient, "
      "Tensor centers, Tensor others, Tensor entries, Tensor coupling) -> Tensor");
}

TORCH_LIBRARY_IMPL(lorem, CPU, m) {
  m.impl("message_form", &lorem::message_form_cpu);
  m.impl("_message_form_device", &lorem::message_form_device);
}

#ifdef LOREM_CUDA_KERNELS
TORCH_LIBRARY_IMPL(lorem, CUDA, m) {
  m.impl("message_form", &lorem::message_form_device);
  m.impl("_message_form_device", &lorem::message_form_device);
}
#endif

TORCH_LIBRARY_IMPL(lorem, CompositeExplicitAutograd, m) {
  m.impl("message_form", &lorem::message_form_chunked);
  m.impl("message_form_chunked", &lorem::message_form_chunked);
}

TORCH_LIBRARY_IMPL(lorem, Autograd, m) { m.impl("message_form", &lorem::message_form_autograd); }
