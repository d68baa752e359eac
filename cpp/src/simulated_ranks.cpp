// Ranks as threads of one process, meeting at a barrier for every collective: each rank
// puts its contribution in its slot, waits until all have, reads what it needs, and waits
// again before the slots are reused. Sums run in rank order, so every rank gets the
// same bits, as MPI's reductions give.
#include "lorem/simulated_ranks.hpp"

#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

namespace lorem {

namespace {

// Thrown in the ranks that are released because another one failed.
class Released : public Error {
 public:
  Released() : Error("another simulated rank failed") {}
};

struct Shared {
  explicit Shared(int ranks)
      : ranks(ranks), tensors(ranks), lists(ranks), ints(ranks), kinds(ranks, "") {}
  // Every rank arrives at the same kind of collective (`kind`, the Communicator method),
  // as MPI requires: ranks at different kinds would read each other's stale slots here
  // and go on with wrong numbers, where MPI would hang, so they fail, named.
  void barrier(int rank, const char* kind) {
    std::unique_lock<std::mutex> lock(mutex);
    if (failed) throw Released();
    if (finished > 0) throw mismatch();
    kinds[rank] = kind;
    const auto generation = this->generation;
    if (++arrived == ranks) {
      for (int r = 1; r < ranks; ++r)
        if (std::strcmp(kinds[r], kinds[0]) != 0 && kind_error.empty()) {
          kind_error = std::string("simulated ranks: rank 0 called ") + kinds[0] + " while rank " +
                       std::to_string(r) + " called " + kinds[r] +
                       " (the ranks disagree on the sequence of collectives)";
          failed = true;
        }
      arrived = 0;
      ++this->generation;
      condition.notify_all();
    } else {
      condition.wait(lock, [&] { return this->generation != generation || failed; });
    }
    if (!kind_error.empty()) throw Error(kind_error);
    if (mismatched) throw mismatch();
    if (failed) throw Released();
  }
  // A rank ended while others wait at a collective it will never call: they fail (the
  // ranks disagree on the sequence of collectives, which MPI would leave hanging).
  void finish() {
    std::lock_guard<std::mutex> lock(mutex);
    ++finished;
    if (arrived > 0) {
      failed = true;
      mismatched = true;
      condition.notify_all();
    }
  }
  static Error mismatch() {
    return Error(
        "simulated ranks: a rank waits at a collective that another rank, which has ended, "
        "never called (the ranks disagree on the sequence of collectives)");
  }
  void fail() {
    std::lock_guard<std::mutex> lock(mutex);
    failed = true;
    condition.notify_all();
  }
  const int ranks;
  std::mutex mutex;
  std::condition_variable condition;
  int arrived = 0;
  int finished = 0;
  int64_t generation = 0;
  bool failed = false;
  bool mismatched = false;
  std::vector<torch::Tensor> tensors;
  std::vector<std::vector<torch::Tensor>> lists;
  std::vector<std::vector<int64_t>> ints;
  std::vector<const char*> kinds;  // the collective each rank waits at (string literals)
  std::string kind_error;          // set once, when the ranks' kinds differ
};

// Which rows of another rank's values a rank needs, and where they go: for every pair
// (owner o, ghost holder h), positions among h's ghosts and indices among o's atoms.
struct Route {
  torch::Tensor ghost_rows;  // into the holder's ghosts
  torch::Tensor owner_rows;  // into the owner's local atoms
};

class RankCommunicator : public Communicator {
 public:
  RankCommunicator(Shared& shared, int rank, const std::vector<std::vector<Route>>& routes,
                   int64_t n_ghost)
      : shared_(shared), rank_(rank), routes_(routes), n_ghost_(n_ghost) {}

  torch::Tensor forward_ghosts(const torch::Tensor& local_values) override {
    auto out = exchange("forward_ghosts", local_values, [&] {
      auto shape = local_values.sizes().vec();
      shape[0] = n_ghost_;
      auto ghosts = torch::zeros(shape, local_values.options());
      for (int owner = 0; owner < shared_.ranks; ++owner) {
        const auto& route = routes_[owner][rank_];
        if (route.ghost_rows.numel() == 0) continue;
        const auto& values = shared_.tensors[owner];
        ghosts.index_copy_(0, route.ghost_rows.to(values.device()),
                           values.index_select(0, route.owner_rows.to(values.device())));
      }
      return ghosts;
    });
    return out;
  }

  torch::Tensor reverse_ghosts(const torch::Tensor& ghost_values, int64_t n_local) override {
    return exchange("reverse_ghosts", ghost_values, [&] {
      auto shape = ghost_values.sizes().vec();
      shape[0] = n_local;
      auto local = torch::zeros(shape, ghost_values.options());
      for (int holder = 0; holder < shared_.ranks; ++holder) {
        const auto& route = routes_[rank_][holder];
        if (route.ghost_rows.numel() == 0) continue;
        const auto& values = shared_.tensors[holder];
        local.index_add_(0, route.owner_rows.to(values.device()),
                         values.index_select(0, route.ghost_rows.to(values.device())));
      }
      return local;
    });
  }

  torch::Tensor all_reduce_sum(const torch::Tensor& values) override {
    return exchange("all_reduce_sum", values, [&] {
      auto total = shared_.tensors[0].clone();
      for (int r = 1; r < shared_.ranks; ++r) total += shared_.tensors[r];
      return total;
    });
  }

  torch::Tensor all_gather_rows(const torch::Tensor& rows, int64_t& offset) override {
    return exchange("all_gather_rows", rows, [&] {
      offset = 0;
      for (int r = 0; r < rank_; ++r) offset += shared_.tensors[r].size(0);
      return torch::cat(shared_.tensors);
    });
  }

  std::vector<torch::Tensor> all_to_all(const std::vector<torch::Tensor>& sends) override {
    if (static_cast<int>(sends.size()) != shared_.ranks)
      throw Error("all_to_all needs one message per rank");
    shared_.lists[rank_] = sends;
    shared_.barrier(rank_, "all_to_all");
    std::vector<torch::Tensor> received;
    for (int r = 0; r < shared_.ranks; ++r) received.push_back(shared_.lists[r][rank_].clone());
    shared_.barrier(rank_, "all_to_all");
    return received;
  }

  std::vector<int64_t> all_gather_ints(const std::vector<int64_t>& values) override {
    shared_.ints[rank_] = values;
    shared_.barrier(rank_, "all_gather_ints");
    std::vector<int64_t> out;
    for (const auto& theirs : shared_.ints) out.insert(out.end(), theirs.begin(), theirs.end());
    shared_.barrier(rank_, "all_gather_ints");
    return out;
  }

  int rank() const override { return rank_; }
  int size() const override { return shared_.ranks; }
  int64_t ghosts_from_other_ranks() const override {
    int64_t remote = 0;
    for (int owner = 0; owner < shared_.ranks; ++owner)
      if (owner != rank_) remote += routes_[owner][rank_].ghost_rows.numel();
    return remote;
  }

 private:
  // put ours in the slot, compute from all slots once every rank has, leave them intact
  // until every rank is done reading
  template <typename F>
  torch::Tensor exchange(const char* kind, const torch::Tensor& mine, F&& combine) {
    shared_.tensors[rank_] = mine;
    shared_.barrier(rank_, kind);
    auto out = combine();
    shared_.barrier(rank_, kind);
    return out;
  }

  Shared& shared_;
  const int rank_;
  const std::vector<std::vector<Route>>& routes_;
  const int64_t n_ghost_;
};

}  // namespace

SimulatedRanks::SimulatedRanks(std::vector<GhostOwners> ghosts) : ghosts_(std::move(ghosts)) {
  if (ghosts_.empty()) throw Error("simulated ranks: at least one rank is needed");
  const int ranks = size();
  for (int h = 0; h < ranks; ++h) {
    const auto& g = ghosts_[h];
    if (g.rank.numel() != g.index.numel())
      throw Error("simulated ranks: one owner rank and one owner index per ghost");
    if (g.rank.numel() > 0 &&
        (g.rank.min().item<int64_t>() < 0 || g.rank.max().item<int64_t>() >= ranks))
      throw Error("simulated ranks: a ghost's owner rank lies outside [0, " +
                  std::to_string(ranks) + ")");
  }
}

void SimulatedRanks::run(const std::function<void(int, Communicator&)>& body) {
  const int ranks = size();
  // routes[o][h]: ghosts of rank h owned by rank o
  std::vector<std::vector<Route>> routes(ranks, std::vector<Route>(ranks));
  for (int h = 0; h < ranks; ++h) {
    auto owner = ghosts_[h].rank.to(torch::kCPU, torch::kLong);
    auto index = ghosts_[h].index.to(torch::kCPU, torch::kLong);
    for (int o = 0; o < ranks; ++o) {
      auto rows = torch::nonzero(owner == o).flatten();
      routes[o][h] = {rows, index.index_select(0, rows)};
    }
  }
  Shared shared(ranks);
  std::vector<std::exception_ptr> errors(ranks);
  std::vector<char> released(ranks, 0);  // not vector<bool>: written by the threads
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      RankCommunicator comm(shared, r, routes, ghosts_[r].rank.numel());
      try {
        body(r, comm);
        shared.finish();
      } catch (const Released&) {
        released[r] = 1;
        errors[r] = std::current_exception();
      } catch (...) {
        errors[r] = std::current_exception();
        shared.fail();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int r = 0; r < ranks; ++r)
    if (errors[r] && !released[r]) std::rethrow_exception(errors[r]);
  for (int r = 0; r < ranks; ++r)
    if (errors[r]) std::rethrow_exception(errors[r]);
}

}  // namespace lorem
