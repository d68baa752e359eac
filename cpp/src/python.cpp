// lorem_torch._core: the C++ runtime for Python tests and tools (numpy in, numpy out).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "lorem/mesh.hpp"
#include "lorem/model.hpp"
#include "lorem/simulated_ranks.hpp"
#include "lorem/vocabulary.hpp"

namespace py = pybind11;

namespace {

template <typename T>
torch::Tensor to_tensor(const py::array_t<T, py::array::c_style | py::array::forcecast>& array,
                        torch::Dtype dtype) {
  std::vector<int64_t> shape(array.shape(), array.shape() + array.ndim());
  return torch::from_blob(const_cast<T*>(array.data()), shape, dtype).clone();
}

py::array_t<double> to_numpy(const torch::Tensor& tensor) {
  auto t = tensor.to(torch::kCPU, torch::kFloat64).contiguous();
  std::vector<py::ssize_t> shape(t.sizes().begin(), t.sizes().end());
  py::array_t<double> out(shape);
  std::memcpy(out.mutable_data(), t.data_ptr<double>(), sizeof(double) * t.numel());
  return out;
}

// What both compute bindings take alike: the cell's periodicity, the shared origin, Born
// effective charges and a uniform field.
void set_options(lorem::System& system, bool periodic, bool slab, std::array<double, 3> origin,
                 const std::optional<std::array<double, 3>>& electric_field,
                 bool born_effective_charges) {
  system.periodic = periodic || slab;
  system.slab = slab;
  system.origin = origin;
  system.want_born_effective_charges = born_effective_charges;
  if (electric_field) {
    system.apply_electric_field = true;
    system.electric_field = *electric_field;
  }
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "lorem-torch C++ runtime (libtorch): load exports, evaluate systems";
  auto lorem_error = py::register_exception<lorem::Error>(m, "LoremError", PyExc_ValueError);
  py::register_exception<lorem::AtomsTooCloseError>(m, "AtomsTooCloseError", lorem_error.ptr());

  // The C++ copy of python/lorem_torch/vocabulary.py, for tests/test_vocabulary.py.
  {
    namespace v = lorem::vocabulary;
    auto vocabulary = m.def_submodule("vocabulary", "cpp/include/lorem/vocabulary.hpp");
    py::dict dtypes;  // name -> (bytes per element, floating point)
    for (const auto& [name, type] : v::kDtypes)
      dtypes[py::str(std::string(name))] =
          py::make_tuple(c10::elementSize(type), c10::isFloatingType(type));
    vocabulary.attr("DTYPES") = dtypes;
    py::list methods;
    for (const auto name : v::kLongRangeMethods) methods.append(std::string(name));
    vocabulary.attr("LONG_RANGE_METHODS") = py::tuple(methods);
    vocabulary.attr("EWALD") = std::string(v::kEwald);
    vocabulary.attr("PME") = std::string(v::kPme);
    vocabulary.attr("AUTO") = std::string(v::kAuto);
    vocabulary.attr("NO_LONG_RANGE") = std::string(v::kNoLongRange);
    vocabulary.attr("DIRECT_SUM") = std::string(v::kDirectSum);
    vocabulary.attr("MAX_ACCURACY") = v::kMaxAccuracy;
    vocabulary.attr("EXPORT_FORMAT") = std::string(v::kExportFormat);
    vocabulary.attr("EXPORT_FORMAT_VERSION") = v::kExportFormatVersion;
    vocabulary.attr("CONTRACT_VERSION") = v::kContractVersion;
    vocabulary.attr("EXACT_SCALAR_NORMS") = std::string(v::kExactScalarNorms);
  }

  py::class_<lorem::Model>(m, "Model")
      .def(py::init<const std::string&, const std::string&>(), py::arg("path"),
           py::arg("device") = "cpu")
      .def_property_readonly("metadata_json",
                             [](const lorem::Model& model) { return model.metadata_json(); })
      .def_property_readonly("cutoff",
                             [](const lorem::Model& model) { return model.contract().cutoff; })
      .def_property_readonly(
          "species", [](const lorem::Model& model) { return model.contract().atomic_numbers; })
      .def_property_readonly(
          "advisories", [](const lorem::Model& model) { return model.contract().advisories; },
          "what this export gets wrong, one line each (written before a fix of the numbers)")
      .def_property_readonly("device",
                             [](const lorem::Model& model) { return model.device().str(); })
      .def_property(
          "long_range_method", [](const lorem::Model& model) { return model.long_range_method(); },
          [](lorem::Model& model, const std::string& method) {
            model.set_long_range_method(method);
          },
          "the k-space method for periodic cells, among the contract's methods")
      .def_property(
          "short_range_chunk", [](const lorem::Model& model) { return model.short_range_chunk(); },
          [](lorem::Model& model, int64_t atoms) { model.set_short_range_chunk(atoms); },
          "local atoms per chunk of the short range (0: one pass); chunks are computed "
          "again in the backward, so only one chunk's autograd graph is held at a time")
      .def(
          "compute",
          [](lorem::Model& model,
             py::array_t<double, py::array::c_style | py::array::forcecast> positions,
             py::array_t<int64_t, py::array::c_style | py::array::forcecast> atomic_numbers,
             int64_t n_local,
             py::array_t<int64_t, py::array::c_style | py::array::forcecast> centers,
             py::array_t<int64_t, py::array::c_style | py::array::forcecast> others,
             py::array_t<double, py::array::c_style | py::array::forcecast> cell, bool periodic,
             py::array_t<int64_t, py::array::c_style | py::array::forcecast> ghost_owner,
             std::array<double, 3> origin, std::optional<std::array<double, 3>> electric_field,
             bool born_effective_charges, bool slab) {
            lorem::System system;
            system.positions = to_tensor<double>(positions, torch::kFloat64);
            system.atomic_numbers = to_tensor<int64_t>(atomic_numbers, torch::kLong);
            system.n_local = n_local;
            system.centers = to_tensor<int64_t>(centers, torch::kLong);
            system.others = to_tensor<int64_t>(others, torch::kLong);
            system.cell = to_tensor<double>(cell, torch::kFloat64);
            set_options(system, periodic, slab, origin, electric_field, born_effective_charges);
            auto owner = to_tensor<int64_t>(ghost_owner, torch::kLong);
            lorem::SingleProcess comm(owner);
            lorem::Result result;
            {
              py::gil_scoped_release release;
              result = model.compute(system, comm, true);
            }
            py::dict out;
            out["energy"] = result.energy;
            out["energies"] = to_numpy(result.energies);
            out["forces"] = to_numpy(lorem::fold_ghost_forces(result.forces, n_local, owner));
            out["virial"] = to_numpy(result.virial);
            if (result.born_effective_charges.defined())
              out["born_effective_charges"] = to_numpy(result.born_effective_charges);
            return out;
          },
          py::arg("positions"), py::arg("atomic_numbers"), py::arg("n_local"), py::arg("centers"),
          py::arg("others"), py::arg("cell"), py::arg("periodic"), py::arg("ghost_owner"),
          py::arg("origin") = std::array<double, 3>{0.0, 0.0, 0.0},
          py::arg("electric_field") = py::none(), py::arg("born_effective_charges") = false,
          py::arg("slab") = false,
          "Evaluate local + ghost atoms in one process; forces folded onto local atoms.")
      .def(
          "compute_ranks",
          [](lorem::Model& model, const std::vector<py::dict>& ranks,
             py::array_t<double, py::array::c_style | py::array::forcecast> cell, bool periodic,
             std::array<double, 3> origin, std::optional<std::array<double, 3>> electric_field,
             bool born_effective_charges, bool slab) {
            // every rank's System and the owners of its ghosts, read while holding the GIL
            std::vector<lorem::System> systems;
            std::vector<lorem::GhostOwners> owners;
            const auto cell_tensor = to_tensor<double>(cell, torch::kFloat64);
            for (const auto& rank : ranks) {
              auto item = [&](const char* key) -> py::object {
                if (!rank.contains(key)) {
                  throw lorem::Error(std::string("compute_ranks: a rank lacks the key '") + key +
                                     "'");
                }
                return rank[key];
              };
              using F = py::array_t<double, py::array::c_style | py::array::forcecast>;
              using I = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
              lorem::System system;
              system.positions = to_tensor<double>(item("positions").cast<F>(), torch::kFloat64);
              system.atomic_numbers =
                  to_tensor<int64_t>(item("atomic_numbers").cast<I>(), torch::kLong);
              system.n_local = item("n_local").cast<int64_t>();
              system.centers = to_tensor<int64_t>(item("centers").cast<I>(), torch::kLong);
              system.others = to_tensor<int64_t>(item("others").cast<I>(), torch::kLong);
              system.cell = cell_tensor;
              set_options(system, periodic, slab, origin, electric_field, born_effective_charges);
              systems.push_back(system);
              owners.push_back({to_tensor<int64_t>(item("ghost_rank").cast<I>(), torch::kLong),
                                to_tensor<int64_t>(item("ghost_index").cast<I>(), torch::kLong)});
            }
            lorem::SimulatedRanks simulated(owners);
            std::vector<lorem::Result> results(systems.size());
            {
              py::gil_scoped_release release;
              simulated.run([&](int r, lorem::Communicator& comm) {
                auto result = model.compute(systems[r], comm, true);
                // forces on ghosts go back to their owners (LAMMPS: reverse communication)
                const auto n_local = systems[r].n_local;
                auto returned = comm.reverse_ghosts(result.forces.slice(0, n_local), n_local);
                result.forces = result.forces.slice(0, 0, n_local) + returned;
                results[r] = result;
              });
            }
            py::list out;
            for (const auto& result : results) {
              py::dict rank_out;
              rank_out["energy"] = result.energy;
              rank_out["energies"] = to_numpy(result.energies);
              rank_out["forces"] = to_numpy(result.forces);
              rank_out["virial"] = to_numpy(result.virial);
              if (result.born_effective_charges.defined())
                rank_out["born_effective_charges"] = to_numpy(result.born_effective_charges);
              // what this rank sent (counted as float64) and its seconds in the collectives
              rank_out["bytes_sent"] = result.timings.bytes;
              rank_out["communication_seconds"] = result.timings.communication;
              out.append(rank_out);
            }
            return out;
          },
          py::arg("ranks"), py::arg("cell"), py::arg("periodic"),
          py::arg("origin") = std::array<double, 3>{0.0, 0.0, 0.0},
          py::arg("electric_field") = py::none(), py::arg("born_effective_charges") = false,
          py::arg("slab") = false,
          "Evaluate a system split over ranks, simulated in one process (one thread per "
          "rank, the collectives of the MPI runtime over shared memory). ranks: one dict per "
          "rank with positions [n_all, 3] (local atoms first), atomic_numbers, n_local, "
          "centers, others, ghost_rank and ghost_index (the owner of each ghost). Returns one dict "
          "per "
          "rank: energy, energies, forces on its local atoms (ghost contributions "
          "returned), virial share, born_effective_charges when computed.");

  // The simulated ranks' own check, for the tests: each rank calls the named
  // collectives in order on small tensors; ranks that disagree fail by name.
  m.def(
      "_simulated_collectives",
      [](const std::vector<std::vector<std::string>>& calls) {
        std::vector<lorem::GhostOwners> owners(
            calls.size(), {torch::zeros({0}, torch::kLong), torch::zeros({0}, torch::kLong)});
        lorem::SimulatedRanks simulated(owners);
        py::gil_scoped_release release;
        simulated.run([&](int r, lorem::Communicator& comm) {
          const auto values = torch::full({2, 3}, double(r + 1), torch::kFloat64);
          for (const auto& name : calls[r]) {
            if (name == "all_reduce_sum") {
              comm.all_reduce_sum(values);
            } else if (name == "all_to_all") {
              comm.all_to_all(std::vector<torch::Tensor>(calls.size(), values.flatten()));
            } else if (name == "all_gather_ints") {
              comm.all_gather_ints({r});
            } else if (name == "forward_ghosts") {
              comm.forward_ghosts(values);
            } else {
              throw lorem::Error("_simulated_collectives: unknown collective " + name);
            }
          }
        });
      },
      py::arg("calls"),
      "Run the simulated ranks, rank r calling the collectives calls[r] in order "
      "(all_reduce_sum, all_to_all, all_gather_ints, forward_ghosts); raises when they "
      "disagree.");

  // The mesh traffic of one PME evaluation from its plan alone (benchmarks/
  // bench_mesh_traffic.py): boxes as ((lo0, lo1, lo2), (hi0, hi1, hi2)) per rank.
  m.def(
      "_pme_bytes_sent",
      [](std::array<int64_t, 3> mesh, int64_t ranks, int64_t order, int64_t channels,
         const std::vector<int64_t>& visits_out, const std::vector<int64_t>& visits_in,
         int64_t value_bytes, int whole_axis) {
        if (value_bytes != 4 && value_bytes != 8)
          throw lorem::Error("_pme_bytes_sent: value_bytes is 4 (float32) or 8 (float64)");
        return lorem::pme_bytes_sent(mesh, ranks, order, channels, visits_out, visits_in,
                                     value_bytes, whole_axis);
      },
      py::arg("mesh"), py::arg("ranks"), py::arg("order"), py::arg("channels"),
      py::arg("visits_out"), py::arg("visits_in"), py::arg("value_bytes") = 8,
      py::arg("whole_axis") = 0,
      "Bytes each rank sends in one PME evaluation: the FFT transposes from the plan and "
      "the atoms' visits to other ranks (value_bytes 8: a float64 model, 4: float32).");

  m.def(
      "_pme_owned_layout",
      [](std::array<int64_t, 3> mesh, int64_t ranks, int64_t order, int whole_axis) {
        const auto layout = lorem::owned_mesh_layout(mesh, ranks, order, whole_axis);
        std::vector<std::pair<std::array<int64_t, 3>, std::array<int64_t, 3>>> boxes;
        for (const auto& box : layout.owned) boxes.emplace_back(box.lo, box.hi);
        return boxes;
      },
      py::arg("mesh"), py::arg("ranks"), py::arg("order"), py::arg("whole_axis") = 0,
      "Every rank's owned part of the PME mesh as (lo, hi) index triples.");

  m.def(
      "_pme_visits",
      [](py::array_t<double, py::array::c_style | py::array::forcecast> mesh_coordinates,
         std::array<int64_t, 3> mesh, int64_t ranks, int64_t order, int whole_axis) {
        auto u = to_tensor<double>(mesh_coordinates, torch::kFloat64);
        const auto visits = lorem::mesh_visits(
            u.view({-1, 3}), mesh, lorem::owned_mesh_layout(mesh, ranks, order, whole_axis), order);
        std::vector<int64_t> counts;
        for (const auto& list : visits.atoms) counts.push_back(static_cast<int64_t>(list.size()));
        return counts;
      },
      py::arg("mesh_coordinates"), py::arg("mesh"), py::arg("ranks"), py::arg("order"),
      py::arg("whole_axis") = 0,
      "How many of these atoms (mesh coordinates [n, 3]) visit each rank's part of the mesh.");

  // For tests of the distributed-mesh machinery in one process: a brick of charges
  // (indices from brick_lo, may overhang the mesh) folded onto the periodic mesh,
  // transformed, multiplied by a real kernel [n0, n1, n2], transformed back, and
  // gathered into the same brick.
  m.def(
      "_mesh_convolve_brick",
      [](py::array_t<double, py::array::c_style | py::array::forcecast> brick,
         std::array<int64_t, 3> brick_lo, std::array<int64_t, 3> mesh,
         py::array_t<double, py::array::c_style | py::array::forcecast> kernel) {
        auto data = to_tensor<double>(brick, torch::kFloat64);
        auto g = to_tensor<double>(kernel, torch::kFloat64);
        lorem::SingleProcess comm(torch::zeros({0}, torch::kLong));
        lorem::Box brick_box{
            brick_lo,
            {brick_lo[0] + data.size(1), brick_lo[1] + data.size(2), brick_lo[2] + data.size(3)}};
        lorem::Box owned{{0, 0, 0}, mesh};
        auto charges = lorem::remap(comm, data, {brick_box}, {owned}, mesh);
        lorem::MeshFFT fft(comm, mesh, {owned});
        auto spectrum = fft.forward(charges, {owned});
        const auto& box = fft.spectrum_box();
        auto local_g = g.index({torch::indexing::Slice(box.lo[0], box.hi[0]),
                                torch::indexing::Slice(box.lo[1], box.hi[1]),
                                torch::indexing::Slice(box.lo[2], box.hi[2])});
        auto potential = fft.inverse(spectrum * local_g, {owned}, data.size(0));
        return to_numpy(lorem::remap(comm, potential, {owned}, {brick_box}, mesh));
      },
      py::arg("brick"), py::arg("brick_lo"), py::arg("mesh"), py::arg("kernel"));
}
