// pair_style lorem: LOREM machine-learning potentials (lorem-torch exports) with
// their learned long range exact across MPI ranks.
//
// One header for both builds: the plugin (lorem_plugin.cpp registers the style) and
// LAMMPS with lorem-torch built in (in_tree.cmake), whose style_pair.h includes this
// file twice, once with PAIR_CLASS for the style table, so no #pragma once. It names no
// torch or lorem type beyond declarations: LAMMPS' own force.cpp and lammps.cpp include
// it, compiled with LAMMPS' C++ standard and without torch's headers.

#ifdef PAIR_CLASS
// clang-format off
PairStyle(lorem,PairLorem);
// clang-format on
#else

#ifndef LMP_PAIR_LOREM_H
#define LMP_PAIR_LOREM_H

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pair.h"

namespace lorem {
class Model;
struct Timings;
}  // namespace lorem

namespace LAMMPS_NS {

class PairLorem : public Pair {
 public:
  explicit PairLorem(class LAMMPS*);
  ~PairLorem() override;

  void compute(int eflag, int vflag) override;
  void settings(int narg, char** arg) override;
  void coeff(int narg, char** arg) override;
  void init_style() override;
  double init_one(int i, int j) override;
  void finish() override;

  int pack_forward_comm(int n, int* list, double* buf, int pbc_flag, int* pbc) override;
  void unpack_forward_comm(int n, int first, double* buf) override;
  int pack_reverse_comm(int n, int first, double* buf) override;
  void unpack_reverse_comm(int n, int* list, double* buf) override;

  // per-atom exchange buffer [nmax, width] used by the long-range communicator
  std::vector<double> exchange;
  int exchange_width = 0;

 private:
  void allocate();
  void check_geometry(double closest_squared, int i, int j);
  void check_masses();
  void refuse_per_atom_virial();
  std::string choose_device() const;  // "cpu", "cuda:N"
  void load_model();                  // model_ from model_path_ on choose_device()
  void apply_settings();              // pair_style's options on the loaded model
  void check_pairs_kept();            // no pair of the model's atoms left out of the list
  void choose_mpi_buffers();          // device_buffers_, from gpu_aware_ and the MPI
  void log_cuda_kernels() const;      // a GPU model without the CUDA kernels says so

  std::unique_ptr<lorem::Model> model_;
  std::string model_path_;  // pair_coeff's file
  std::string device_request_ = "auto";
  std::string gpu_aware_request_ = "auto";  // pair_style ... gpu_aware auto|on|off
  bool device_buffers_ = false;             // MPI takes the GPU's buffers (CUDA-aware)
  std::string long_range_request_;          // empty: the model's own method
  double accuracy_request_ = 0.0;           // 0: the model's own
  int64_t chunk_atoms_ = 0;                 // pair_style ... chunk N (0: one pass)
  bool apply_electric_field_ = false;
  std::array<double, 3> electric_field_{0.0, 0.0, 0.0};  // V/Angstrom
  std::vector<int64_t> type_to_z_;                       // per LAMMPS type (1-based); 0 for NULL
  std::vector<std::string> type_symbol_;                 // per type: pair_coeff's element
  std::vector<char> mass_checked_;                       // per type: its mass was looked at
  bool per_atom_virial_warned_ = false;
  // the per-stage timing table at the end of each run (pair_style lorem ... timers off)
  bool timers_ = true;
  std::unique_ptr<lorem::Timings> reported_;  // the model's totals at the last table
  double host_seconds_ = 0.0;   // the plugin's own work in compute(): lists, packing, forces
  double reported_host_ = 0.0;  // host_seconds_ then
  double cutoff_ = 0.0;
  double energy_unit_ = 1.0;  // model eV -> LAMMPS energy unit
};

}  // namespace LAMMPS_NS

#endif  // LMP_PAIR_LOREM_H
#endif  // PAIR_CLASS
