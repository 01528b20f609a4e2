// The Lamport buffer rule of the peer-memory kernels (backends/cuda/comm/lamport.h), checked on a
// CPU model of the one-shot and two-shot kernels (kernels/allreduce_rmsnorm.cuh).
//
// The model replays a sequence of fused calls (strategy, T, H, quant mode) on N ranks and
// records, for every block of every call, which bytes of which rank's workspace it writes (its
// pushes) and reads (its polls, each followed by a reset to the sentinel), as the kernels do:
//   - the grid is G = min(work rows, co-resident blocks of the instantiation, kMaxFusedBlocks),
//     work rows T (one-shot) or R = ceil(T / N) (two-shot), and residency differs per
//     instantiation (kernel, vectors per thread, threads, quant mode);
//   - block b handles rows (one-shot) or row offsets (two-shot) b, b + G, ...;
//   - block b picks its buffer from the call number the rule gives it.
// It then looks for hazards between calls (defined at HazardsOf) under two rules: the rule of
// lamport.h (one call count per call), which must have none, and the per-block rule it replaced
// (block b's own call count), which must be caught.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "backends/cuda/comm/lamport.h"
#include "backends/cuda/comm/workspace.h"
#include "common/row_layout.h"
#include "tpfuse/fused_op.h"

namespace tpfuse::cuda {
namespace {

// ================================================================ the calls

enum class Path : uint8_t {
  kOneShot,
  kTwoShot,
  kNccl,   // ncclAllReduce + epilogue: every rank's result needs every rank's input
  kLocal,  // spec.local: no communication
};

const char* PathName(Path p) {
  switch (p) {
    case Path::kOneShot: return "one-shot";
    case Path::kTwoShot: return "two-shot";
    case Path::kNccl: return "nccl";
    case Path::kLocal: return "local";
  }
  return "?";
}

const char* QuantName(QuantMode q) {
  switch (q) {
    case QuantMode::kNone: return "none";
    case QuantMode::kFp8Tensor: return "fp8_tensor";
    case QuantMode::kFp8Token: return "fp8_token";
    case QuantMode::kFp8Group: return "fp8_group";
  }
  return "?";
}

struct Call {
  Path path = Path::kOneShot;
  int64_t tokens = 0;
  int64_t hidden = 4096;
  QuantMode quant = QuantMode::kNone;
};

std::string Describe(const Call& c) {
  std::ostringstream s;
  s << PathName(c.path) << " T=" << c.tokens << " H=" << c.hidden << " quant=" << QuantName(c.quant);
  return s.str();
}

// The instantiation a peer-memory call launches, as the launcher keys its residency cache:
// (kernel family, vectors per thread, quant) picks the kernel, threads the block.
struct Instantiation {
  Path path;
  int vecs_per_thread;
  int threads;
  QuantMode quant;
  auto Key() const { return std::make_tuple(path, vecs_per_thread, threads, quant); }
  bool operator<(const Instantiation& o) const { return Key() < o.Key(); }
};

Instantiation InstantiationOf(const Call& c) {
  const RowLayout l = MakeRowLayout(c.hidden);
  return {c.path, l.vecs_per_thread, l.threads, c.quant};
}

// Co-resident blocks per instantiation (what cudaOccupancyMaxActiveBlocksPerMultiprocessor times
// the SM count gives the launcher). Unlisted instantiations get `fallback`.
struct Residency {
  std::map<Instantiation, int> blocks;
  int fallback = 264;
  int Of(const Call& c) const {
    auto it = blocks.find(InstantiationOf(c));
    return it == blocks.end() ? fallback : it->second;
  }
};

// A plausible H200 table (132 SMs): fewer blocks per SM with more vectors per thread, one more
// without quantization (fewer registers), capped by 2048 threads per SM; two-shot holds more
// state than one-shot. Every instantiation of the sizes below differs from some other one.
Residency H200LikeResidency() {
  Residency r;
  for (Path path : {Path::kOneShot, Path::kTwoShot})
    for (int64_t hidden : {2880, 4096, 7168})
      for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group}) {
        const Call c{path, 1, hidden, q};
        const Instantiation inst = InstantiationOf(c);
        int per_sm = inst.vecs_per_thread == 1 ? 3 : (inst.vecs_per_thread == 2 ? 2 : 1);
        if (q == QuantMode::kNone) ++per_sm;
        if (path == Path::kTwoShot && per_sm > 1) --per_sm;
        per_sm = std::min(per_sm, 2048 / inst.threads);
        r.blocks[inst] = 132 * per_sm;
      }
  return r;
}

// The workspace every call of a sequence runs on (the communicator's default sizes).
WorkspaceLayout Layout(int world_size) {
  WorkspaceConfig c;
  c.world_size = world_size;
  return WorkspaceLayout::Make(c);
}

int64_t RowsThatFit(size_t bytes, int64_t hidden) { return int64_t(bytes / (size_t(hidden) * 2)); }

// Whether the launcher runs `c` as asked (CanRun): the rows fit the strategy's areas.
bool Fits(const Call& c, const WorkspaceLayout& l) {
  const int n = l.config.world_size;
  if (c.path == Path::kOneShot) return c.tokens <= RowsThatFit(l.lamport_slot_bytes, c.hidden);
  if (c.path == Path::kTwoShot) {
    const int64_t rows = (c.tokens + n - 1) / n;
    return rows <= std::min(RowsThatFit(l.rs_slot_bytes, c.hidden), RowsThatFit(l.ag_buffer_bytes, c.hidden) / n);
  }
  return true;
}

// ================================================================ buffer rules

// How a block learns its call number at the start of a call, and how the call's end moves the
// counters (one array of kMaxFusedBlocks per strategy per rank, zero at creation).
class BufferRule {
 public:
  virtual ~BufferRule() = default;
  virtual uint32_t CallOf(const std::vector<uint32_t>& counts, int block) const = 0;
  // Block `block` of a grid of `grid` blocks of `threads` threads ends call `call`.
  virtual void Advance(std::vector<uint32_t>& counts, int block, int grid, int threads, uint32_t call) const = 0;
};

// The rule of comm/lamport.h. (The kernels split a block's end-of-call stores over its threads;
// CountersAdvanceWithoutRace checks that the split stores the same.)
class CallCountRule : public BufferRule {
 public:
  uint32_t CallOf(const std::vector<uint32_t>& counts, int block) const override {
    return LamportCallOf(counts.data(), block);
  }
  void Advance(std::vector<uint32_t>& counts, int block, int grid, int, uint32_t call) const override {
    LamportAdvance(counts.data(), block, grid, call);
  }
};

// The rule lamport.h replaced: block b's own count (how many calls had a block b), advanced by
// block b alone. Kept to show the model catches it.
class PerBlockCountRule : public BufferRule {
 public:
  uint32_t CallOf(const std::vector<uint32_t>& counts, int block) const override { return counts[size_t(block)]; }
  void Advance(std::vector<uint32_t>& counts, int block, int, int, uint32_t call) const override {
    counts[size_t(block)] = call + 1;
  }
};

// A rule that never alternates: the model must catch it on any two back-to-back calls.
class SingleBufferRule : public BufferRule {
 public:
  uint32_t CallOf(const std::vector<uint32_t>&, int) const override { return 0; }
  void Advance(std::vector<uint32_t>&, int, int, int, uint32_t) const override {}
};

// ================================================================ byte ranges

struct Range {
  size_t begin, end;  // [begin, end)
  bool operator<(const Range& o) const { return std::tie(begin, end) < std::tie(o.begin, o.end); }
  bool operator==(const Range&) const = default;
};
using Ranges = std::vector<Range>;

// Sorted and merged; `disjoint` is cleared when two input ranges overlap.
Ranges Normalize(Ranges r, bool* disjoint = nullptr) {
  std::sort(r.begin(), r.end());
  Ranges out;
  for (const Range& x : r) {
    if (!out.empty() && x.begin < out.back().end && disjoint) *disjoint = false;
    if (!out.empty() && x.begin <= out.back().end) out.back().end = std::max(out.back().end, x.end);
    else out.push_back(x);
  }
  return out;
}

// Adds r, merged into the last range when it continues it.
void Append(Ranges& ranges, Range r) {
  if (!ranges.empty() && ranges.back().end == r.begin) ranges.back().end = r.end;
  else ranges.push_back(r);
}

// The first byte range inside `window` that both normalized lists hold; {0, 0} when none.
Range FirstOverlap(const Ranges& a, const Ranges& b, Range window) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const size_t lo = std::max({a[i].begin, b[j].begin, window.begin});
    const size_t hi = std::min({a[i].end, b[j].end, window.end});
    if (lo < hi) return {lo, hi};
    if (a[i].end < b[j].end) ++i;
    else ++j;
  }
  return {0, 0};
}

// ================================================================ the kernels' accesses

// What one call does to the workspaces, by rank.
struct CallAccesses {
  bool launched = false;  // T > 0 (the launcher returns before any kernel at T = 0)
  int grid = 0;
  // reads[p]: bytes of rank p's workspace that p polls and resets.
  std::vector<Ranges> reads;
  // writes[p][q]: bytes of rank p's workspace that rank q pushes.
  std::vector<std::vector<Ranges>> writes;
  // consumes[p]: bit x set when p's completion of this call waits on rank x having started it
  // (p reads data x pushed, or data reduced from x's partial).
  std::vector<uint32_t> consumes;
  std::string error;  // a broken invariant of the kernels (the model is wrong, or the layout)
};

// One rank's protocol state: the counters of each strategy.
struct RankState {
  std::vector<uint32_t> oneshot = std::vector<uint32_t>(kMaxFusedBlocks, 0);
  std::vector<uint32_t> twoshot = std::vector<uint32_t>(kMaxFusedBlocks, 0);
};

class Model {
 public:
  Model(int world_size, Residency residency, const BufferRule& rule)
      : n_(world_size), layout_(Layout(world_size)), residency_(std::move(residency)), rule_(rule),
        ranks_(size_t(world_size)) {}

  int world_size() const { return n_; }
  const WorkspaceLayout& layout() const { return layout_; }
  const RankState& state(int rank) const { return ranks_[size_t(rank)]; }
  // The call numbers the blocks of the last peer-memory call saw (rank 0), by block.
  const std::vector<uint32_t>& last_calls() const { return last_calls_; }

  // Runs `c` on every rank (all ranks run the same sequence) and returns what it touched.
  CallAccesses Run(const Call& c) {
    CallAccesses a;
    a.reads.assign(size_t(n_), {});
    a.writes.assign(size_t(n_), std::vector<Ranges>(size_t(n_)));
    a.consumes.assign(size_t(n_), 0);
    if (c.tokens == 0) return a;
    a.launched = true;
    const uint32_t all = (1u << n_) - 1;
    if (c.path == Path::kNccl) {
      for (auto& m : a.consumes) m = all;
      return a;
    }
    if (c.path == Path::kLocal) return a;

    const RowLayout row_layout = MakeRowLayout(c.hidden);
    const int64_t rows_per_rank = (c.tokens + n_ - 1) / n_;
    const int64_t work_rows = c.path == Path::kOneShot ? c.tokens : rows_per_rank;
    const int grid = int(std::min<int64_t>({work_rows, int64_t(residency_.Of(c)), int64_t(kMaxFusedBlocks)}));
    a.grid = grid;
    const size_t row_bytes = size_t(c.hidden) * 2;
    last_calls_.assign(size_t(grid), 0);

    // Sources of every write into rank p's memory (for `consumes`), by writer.
    const size_t ranks = size_t(n_);
    std::vector<std::vector<uint32_t>> write_sources(ranks, std::vector<uint32_t>(ranks, 0));
    std::vector<std::vector<Ranges>> raw_writes(ranks, std::vector<Ranges>(ranks));
    std::vector<Ranges> raw_reads(ranks);
    auto in_buffer = [&](size_t offset, size_t buffer_bytes, uint32_t buffer, size_t begin, size_t bytes) {
      const size_t lo = offset + buffer * buffer_bytes;
      if (begin < lo || begin + bytes > lo + buffer_bytes) {
        std::ostringstream s;
        s << Describe(c) << ": bytes [" << begin << ", " << begin + bytes << ") outside buffer " << buffer
          << " [" << lo << ", " << lo + buffer_bytes << ")";
        if (a.error.empty()) a.error = s.str();
      }
    };

    for (int q = 0; q < n_; ++q) {
      std::vector<uint32_t>& counts = c.path == Path::kOneShot ? ranks_[size_t(q)].oneshot : ranks_[size_t(q)].twoshot;
      // Every block reads its call number before any block of this call ends (the kernels read
      // it right after griddepcontrol.wait; a block's end-of-call stores touch no index < G but
      // its own, which the model checks in CountersAdvanceWithoutRace).
      std::vector<uint32_t> calls(static_cast<size_t>(grid));
      for (int b = 0; b < grid; ++b) calls[size_t(b)] = rule_.CallOf(counts, b);
      if (q == 0) last_calls_ = calls;

      // Block b handles rows (two-shot: row offsets) b, b + G, ...: row r is block r mod G's.
      // The model visits them in row order, so that consecutive rows' ranges merge as they come.
      {
        if (c.path == Path::kOneShot) {
          for (int64_t row = 0; row < c.tokens; ++row) {
            const uint32_t buffer = LamportBufferIndex(calls[size_t(row % grid)]);
            const size_t base = layout_.lamport_offset + buffer * layout_.lamport_buffer_bytes;
            // phase 1: push the row into slot q of every peer
            for (int i = 1; i < n_; ++i) {
              const int peer = (q + i) % n_;
              const size_t at = base + size_t(q) * layout_.lamport_slot_bytes + size_t(row) * row_bytes;
              in_buffer(layout_.lamport_offset, layout_.lamport_buffer_bytes, buffer, at, row_bytes);
              Append(raw_writes[size_t(peer)][size_t(q)], {at, at + row_bytes});
              write_sources[size_t(peer)][size_t(q)] |= 1u << q;
            }
            // phase 2: poll and reset every other slot of the row here
            for (int r = 0; r < n_; ++r) {
              if (r == q) continue;
              const size_t at = base + size_t(r) * layout_.lamport_slot_bytes + size_t(row) * row_bytes;
              Append(raw_reads[size_t(q)], {at, at + row_bytes});
            }
          }
        } else {
          for (int64_t j = 0; j < rows_per_rank; ++j) {
            const uint32_t buffer = LamportBufferIndex(calls[size_t(j % grid)]);
            const size_t rs = layout_.rs_offset + buffer * layout_.rs_buffer_bytes;
            const size_t ag = layout_.ag_offset + buffer * layout_.ag_buffer_bytes;
            // phase 1: partial row j of every other owner into slot q of its reduce-scatter buffer
            for (int i = 1; i < n_; ++i) {
              const int owner = (q + i) % n_;
              if (owner * rows_per_rank + j >= c.tokens) continue;
              const size_t at = rs + size_t(q) * layout_.rs_slot_bytes + size_t(j) * row_bytes;
              in_buffer(layout_.rs_offset, layout_.rs_buffer_bytes, buffer, at, row_bytes);
              Append(raw_writes[size_t(owner)][size_t(q)], {at, at + row_bytes});
              write_sources[size_t(owner)][size_t(q)] |= 1u << q;
            }
            // phase 2: the owned row: poll every other rank's partial, push a to every peer
            const int64_t owned = q * rows_per_rank + j;
            if (owned < c.tokens) {
              for (int r = 0; r < n_; ++r) {
                if (r == q) continue;
                const size_t at = rs + size_t(r) * layout_.rs_slot_bytes + size_t(j) * row_bytes;
                Append(raw_reads[size_t(q)], {at, at + row_bytes});
              }
              for (int i = 1; i < n_; ++i) {
                const int peer = (q + i) % n_;
                const size_t at = ag + size_t(owned) * row_bytes;
                in_buffer(layout_.ag_offset, layout_.ag_buffer_bytes, buffer, at, row_bytes);
                Append(raw_writes[size_t(peer)][size_t(q)], {at, at + row_bytes});
                // a is pushed after the row's partials of every rank were polled and summed
                write_sources[size_t(peer)][size_t(q)] |= all;
              }
            }
            // phase 3: the other owners' rows, from the all-gather buffer here
            for (int i = 1; i < n_; ++i) {
              const int owner = (q + i) % n_;
              const int64_t row = owner * rows_per_rank + j;
              if (row >= c.tokens) continue;
              const size_t at = ag + size_t(row) * row_bytes;
              Append(raw_reads[size_t(q)], {at, at + row_bytes});
            }
          }
        }
      }
      for (int b = 0; b < grid; ++b) rule_.Advance(counts, b, grid, row_layout.threads, calls[size_t(b)]);
    }

    for (int p = 0; p < n_; ++p) {
      bool polled_once = true;
      a.reads[size_t(p)] = Normalize(raw_reads[size_t(p)], &polled_once);
      if (!polled_once && a.error.empty()) a.error = Describe(c) + ": rank " + std::to_string(p) + " polls a byte twice";
      Ranges all_writes;
      for (int q = 0; q < n_; ++q) {
        a.writes[size_t(p)][size_t(q)] = Normalize(raw_writes[size_t(p)][size_t(q)]);
        if (!a.writes[size_t(p)][size_t(q)].empty()) a.consumes[size_t(p)] |= write_sources[size_t(p)][size_t(q)];
        all_writes.insert(all_writes.end(), raw_writes[size_t(p)][size_t(q)].begin(),
                          raw_writes[size_t(p)][size_t(q)].end());
      }
      bool disjoint = true;
      const Ranges merged = Normalize(all_writes, &disjoint);
      if (!disjoint && a.error.empty()) a.error = Describe(c) + ": two pushes of one call overlap on rank " + std::to_string(p);
      // Every pushed byte is polled (and reset) by its owner in the same call, and every polled
      // byte was pushed: the sentinel is back everywhere when every rank has completed the call.
      if (merged != a.reads[size_t(p)] && a.error.empty())
        a.error = Describe(c) + ": rank " + std::to_string(p) + " polls bytes other than those pushed to it";
    }
    return a;
  }

 private:
  int n_;
  WorkspaceLayout layout_;
  Residency residency_;
  const BufferRule& rule_;
  std::vector<RankState> ranks_;
  std::vector<uint32_t> last_calls_;
};

// ================================================================ hazards

struct Hazard {
  size_t read_call, write_call;  // indices in the sequence
  int reader, writer;
  Range bytes;
};

std::string Describe(const Hazard& h, const std::vector<Call>& seq) {
  std::ostringstream s;
  s << "rank " << h.reader << " polls bytes [" << h.bytes.begin << ", " << h.bytes.end << ") in call "
    << h.read_call << " (" << Describe(seq[h.read_call]) << ") that rank " << h.writer
    << " may already push in call " << h.write_call << " (" << Describe(seq[h.write_call]) << ")";
  return s.str();
}

struct Replay {
  std::vector<Hazard> hazards;
  std::string model_error;  // a broken model invariant (not a hazard)
};

// The hazards of `seq` run on `model` (the ranks' state before the first call).
//
// Definition. Happens-before (->) is the transitive closure of
//   (a) stream order: End(p, i) -> Start(p, i + 1) on every rank p (every kernel touches the
//       workspace, and reads its call counters, only after griddepcontrol.wait has seen its
//       predecessor complete);
//   (b) data: Start(x, i) -> End(p, i) when p, in call i, polls a value that rank x pushed, or
//       that was reduced from x's partial (CallAccesses::consumes; an nccl call makes every rank
//       wait on every other).
// A rank may run arbitrarily far ahead of another as far as -> allows; within a call its reads
// may take place at any time before End and its pushes at any time after Start.
// A hazard is a byte of rank p's workspace that p polls (and resets) in call i and that a peer
// q pushes in a later call j although End(p, i) -/-> Start(q, j): q may then write call j's
// value while p still waits for call i's, and p sums the wrong value, or resets q's push to the
// sentinel and waits for it until the timeout.
Replay HazardsOf(Model model, const std::vector<Call>& seq, size_t max_hazards = 16) {
  const int world_size = model.world_size();
  const WorkspaceLayout& l = model.layout();
  // One hazard at most per pair of calls, pair of ranks and area.
  const Range areas[] = {{l.lamport_offset, l.rs_offset}, {l.rs_offset, l.ag_offset}, {l.ag_offset, l.total_bytes}};
  std::vector<CallAccesses> calls;
  calls.reserve(seq.size());
  Replay out;
  for (const Call& c : seq) {
    calls.push_back(model.Run(c));
    if (!calls.back().error.empty() && out.model_error.empty()) out.model_error = calls.back().error;
  }
  const uint32_t all = (1u << world_size) - 1;
  for (size_t i = 0; i < seq.size(); ++i) {
    for (int p = 0; p < world_size; ++p) {
      if (calls[i].reads[size_t(p)].empty()) continue;
      // reached: the ranks q with End(p, i) -> Start(q, j), for j = i + 1, i + 2, ...
      uint32_t reached = 1u << p;
      for (size_t j = i + 1; j < seq.size() && reached != all; ++j) {
        for (int q = 0; q < world_size; ++q) {
          if (reached & (1u << q)) continue;
          for (const Range& area : areas) {
            const Range r = FirstOverlap(calls[i].reads[size_t(p)], calls[j].writes[size_t(p)][size_t(q)], area);
            if (r.begin < r.end) {
              out.hazards.push_back({i, j, p, q, r});
              if (out.hazards.size() >= max_hazards) return out;
            }
          }
        }
        // Start(x, j) reached gives End(y, j), hence Start(y, j + 1), for every y that waits on x.
        uint32_t next = reached;
        for (int y = 0; y < world_size; ++y)
          if (calls[j].consumes[size_t(y)] & reached) next |= 1u << y;
        reached = next;
      }
    }
  }
  return out;
}

Replay HazardsOf(const BufferRule& rule, const std::vector<Call>& seq, int world_size, const Residency& residency,
                 size_t max_hazards = 16) {
  return HazardsOf(Model(world_size, residency, rule), seq, max_hazards);
}

std::string Summary(const Replay& r, const std::vector<Call>& seq) {
  std::string s = r.model_error.empty() ? "" : "model: " + r.model_error + "\n";
  for (const Hazard& h : r.hazards) s += Describe(h, seq) + "\n";
  return s;
}

// ================================================================ sequences

const std::vector<int64_t> kTokens = {1, 7, 263, 264, 265, 300, 511, 1000, 2048};
const std::vector<int64_t> kHidden = {2880, 4096, 7168};
const std::vector<QuantMode> kQuants = {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token,
                                        QuantMode::kFp8Group};

// A call the launcher runs as asked: a one-shot call over the one-shot area becomes two-shot
// (what the dispatcher does with it).
Call Runnable(Call c, const WorkspaceLayout& layout) {
  if (c.path == Path::kOneShot && !Fits(c, layout)) c.path = Path::kTwoShot;
  return c;
}

std::vector<Call> RandomSequence(std::mt19937_64& rng, size_t length, const WorkspaceLayout& layout,
                                 bool peer_memory_only) {
  std::vector<Call> seq;
  auto pick = [&](size_t n) { return size_t(rng() % n); };
  for (size_t k = 0; k < length; ++k) {
    Call c;
    const size_t kind = pick(10);  // one-shot and two-shot dominate
    if (peer_memory_only) c.path = kind % 2 == 0 ? Path::kOneShot : Path::kTwoShot;
    else c.path = kind < 4 ? Path::kOneShot : kind < 8 ? Path::kTwoShot : kind == 8 ? Path::kNccl : Path::kLocal;
    c.tokens = pick(40) == 0 ? 0 : kTokens[pick(kTokens.size())];
    c.hidden = kHidden[pick(kHidden.size())];
    c.quant = kQuants[pick(kQuants.size())];
    seq.push_back(Runnable(c, layout));
  }
  return seq;
}

// A residency table with every instantiation drawn at random: 78 to 144 SMs, 1 to 4 blocks each.
Residency RandomResidency(std::mt19937_64& rng) {
  Residency r;
  const int sms = std::vector<int>{78, 114, 132, 144}[rng() % 4];
  for (Path path : {Path::kOneShot, Path::kTwoShot})
    for (int64_t hidden : kHidden)
      for (QuantMode q : kQuants) r.blocks[InstantiationOf({path, 1, hidden, q})] = sms * int(1 + rng() % 4);
  r.fallback = sms;
  return r;
}

// ================================================================ tests

const CallCountRule kNewRule;
const PerBlockCountRule kOldRule;

// The hazard's case, step by step: a one-shot call whose grid is capped by its residency (T = 300,
// G = 264) and then one of an instantiation with more co-resident blocks (G = 300). Row 264 was
// block 0's in the first call (count 0: buffer 0) and is block 264's in the second (count still
// 0: buffer 0 again), while rank 0 may still be polling it for the first call.
TEST(LamportRuleTest, PerBlockRuleReusesARowAcrossTheResidencyBoundary) {
  Residency residency;
  residency.blocks[InstantiationOf({Path::kOneShot, 1, 4096, QuantMode::kFp8Group})] = 264;
  residency.blocks[InstantiationOf({Path::kOneShot, 1, 4096, QuantMode::kNone})] = 396;
  const std::vector<Call> seq = {{Path::kOneShot, 300, 4096, QuantMode::kFp8Group},
                                 {Path::kOneShot, 300, 4096, QuantMode::kNone}};
  const Replay old_rule = HazardsOf(kOldRule, seq, 2, residency);
  ASSERT_EQ(old_rule.model_error, "");
  ASSERT_FALSE(old_rule.hazards.empty()) << "the per-block rule must be caught";
  const WorkspaceLayout l = Layout(2);
  const size_t row_bytes = 4096 * 2;
  // Rank 0 polls slot 1 of buffer 0; rank 1 pushes row 264 there again.
  const size_t row_264 = l.lamport_offset + l.lamport_slot_bytes + 264 * row_bytes;
  bool found = false;
  for (const Hazard& h : old_rule.hazards) {
    found |= h.read_call == 0 && h.write_call == 1 && h.reader == 0 && h.writer == 1 && h.bytes.begin == row_264 &&
             h.bytes.end == row_264 + 36 * row_bytes;  // rows 264..299: blocks 264..299 of call 1
  }
  EXPECT_TRUE(found) << Summary(old_rule, seq);

  const Replay new_rule = HazardsOf(kNewRule, seq, 2, residency);
  EXPECT_EQ(new_rule.model_error, "");
  EXPECT_TRUE(new_rule.hazards.empty()) << Summary(new_rule, seq);
}

// The same for two-shot: the reduce-scatter and all-gather areas, the grid capped by R = T / 2.
TEST(LamportRuleTest, PerBlockRuleReusesTwoShotAreasAcrossTheResidencyBoundary) {
  Residency residency;
  residency.blocks[InstantiationOf({Path::kTwoShot, 1, 7168, QuantMode::kFp8Token})] = 132;
  residency.blocks[InstantiationOf({Path::kTwoShot, 1, 2880, QuantMode::kNone})] = 528;
  const std::vector<Call> seq = {{Path::kTwoShot, 1000, 7168, QuantMode::kFp8Token},
                                 {Path::kTwoShot, 1000, 2880, QuantMode::kNone}};
  const Replay old_rule = HazardsOf(kOldRule, seq, 2, residency);
  ASSERT_EQ(old_rule.model_error, "");
  ASSERT_FALSE(old_rule.hazards.empty()) << "the per-block rule must be caught";
  const WorkspaceLayout l = Layout(2);
  bool rs = false, ag = false;
  for (const Hazard& h : old_rule.hazards) {
    rs |= h.bytes.begin >= l.rs_offset && h.bytes.begin < l.ag_offset;
    ag |= h.bytes.begin >= l.ag_offset;
  }
  EXPECT_TRUE(rs) << "a reduce-scatter hazard:\n" << Summary(old_rule, seq);
  EXPECT_TRUE(ag) << "an all-gather hazard:\n" << Summary(old_rule, seq);

  const Replay new_rule = HazardsOf(kNewRule, seq, 2, residency);
  EXPECT_EQ(new_rule.model_error, "");
  EXPECT_TRUE(new_rule.hazards.empty()) << Summary(new_rule, seq);
}

// The model finds a rule that never alternates on any two back-to-back calls that share bytes:
// the hazard check is not vacuous.
TEST(LamportRuleTest, SingleBufferIsCaughtOnBackToBackCalls) {
  const SingleBufferRule single;
  for (Path path : {Path::kOneShot, Path::kTwoShot}) {
    const std::vector<Call> seq = {{path, 7, 4096, QuantMode::kNone}, {path, 7, 4096, QuantMode::kNone}};
    const Replay r = HazardsOf(single, seq, 2, H200LikeResidency());
    EXPECT_EQ(r.model_error, "");
    EXPECT_FALSE(r.hazards.empty()) << PathName(path);
    EXPECT_TRUE(HazardsOf(kNewRule, seq, 2, H200LikeResidency()).hazards.empty()) << PathName(path);
  }
  // One communicating call in between orders everything: no hazard even for a single buffer.
  const std::vector<Call> seq = {{Path::kOneShot, 7, 4096, QuantMode::kNone},
                                 {Path::kNccl, 7, 4096, QuantMode::kNone},
                                 {Path::kOneShot, 7, 4096, QuantMode::kNone}};
  EXPECT_TRUE(HazardsOf(single, seq, 2, H200LikeResidency()).hazards.empty());
  // A local call orders nothing across ranks.
  const std::vector<Call> local = {{Path::kOneShot, 7, 4096, QuantMode::kNone},
                                   {Path::kLocal, 7, 4096, QuantMode::kNone},
                                   {Path::kOneShot, 7, 4096, QuantMode::kNone}};
  EXPECT_FALSE(HazardsOf(single, local, 2, H200LikeResidency()).hazards.empty());
}

// Every ordered pair of (strategy, H, quant) instantiations at T on both sides of the residency
// boundaries, after a prefix that leaves the per-block counters at mixed parities: the new rule
// has no hazard on any, the per-block rule has some.
TEST(LamportRuleTest, NewRuleHasNoHazardOnAdversarialPairs) {
  const Residency residency = H200LikeResidency();
  const WorkspaceLayout layout = Layout(2);
  // Grids of 7, the residency, and R: counters 0..6 ahead of the rest, by one or two.
  const std::vector<Call> prefix = {{Path::kOneShot, 7, 4096, QuantMode::kNone},
                                    {Path::kOneShot, 1000, 4096, QuantMode::kFp8Group},
                                    {Path::kOneShot, 7, 2880, QuantMode::kNone},
                                    {Path::kTwoShot, 7, 4096, QuantMode::kNone},
                                    {Path::kTwoShot, 2048, 7168, QuantMode::kFp8Token},
                                    {Path::kTwoShot, 1, 2880, QuantMode::kNone}};
  Model new_start(2, residency, kNewRule), old_start(2, residency, kOldRule);
  for (const Call& c : prefix) {
    ASSERT_EQ(new_start.Run(c).error, "");
    ASSERT_EQ(old_start.Run(c).error, "");
  }
  std::vector<Call> calls;
  for (Path path : {Path::kOneShot, Path::kTwoShot})
    for (int64_t hidden : kHidden)
      for (QuantMode q : kQuants)
        for (int64_t t : {int64_t{263}, int64_t{265}, int64_t{1000}})
          calls.push_back(Runnable({path, t, hidden, q}, layout));
  int old_caught = 0, pairs = 0;
  for (const Call& a : calls) {
    for (const Call& b : calls) {
      if (a.path != b.path) continue;  // different areas: nothing shared
      const std::vector<Call> seq = {a, b};
      ++pairs;
      const Replay n = HazardsOf(new_start, seq, 1);
      ASSERT_EQ(n.model_error, "");
      ASSERT_TRUE(n.hazards.empty()) << Summary(n, seq);
      const Replay o = HazardsOf(old_start, seq, 1);
      ASSERT_EQ(o.model_error, "");
      if (!o.hazards.empty()) ++old_caught;
    }
  }
  EXPECT_EQ(pairs, 2 * 36 * 36);
  EXPECT_GT(old_caught, 0) << "the per-block rule must be caught on some pair";
}

// Long random sequences (every strategy, nccl and local calls, T = 0) on 2, 4 and 8 ranks with
// random residency tables: the new rule never has a hazard; the per-block rule is caught.
TEST(LamportRuleTest, NewRuleHasNoHazardOnRandomSequences) {
  std::mt19937_64 rng(20261203);
  for (int world_size : {2, 4, 8}) {
    const WorkspaceLayout layout = Layout(world_size);
    const int sequences = world_size == 2 ? 16 : 4;
    const size_t length = world_size == 2 ? 150 : 40;
    int old_caught = 0;
    for (int s = 0; s < sequences; ++s) {
      const Residency residency = s % 3 == 0 ? H200LikeResidency() : RandomResidency(rng);
      const std::vector<Call> seq = RandomSequence(rng, length, layout, s % 2 == 0);
      const Replay n = HazardsOf(kNewRule, seq, world_size, residency, 1);
      ASSERT_EQ(n.model_error, "") << "N=" << world_size;
      ASSERT_TRUE(n.hazards.empty()) << "N=" << world_size << "\n" << Summary(n, seq);
      const Replay o = HazardsOf(kOldRule, seq, world_size, residency, 1);
      ASSERT_EQ(o.model_error, "");
      if (!o.hazards.empty()) ++old_caught;
    }
    EXPECT_GT(old_caught, 0) << "N=" << world_size << ": the per-block rule must be caught on random sequences";
  }
}

// The new rule's state: every block of a call sees the same number, the number of earlier calls
// of that strategy, whatever the grids before; every counter holds it between calls; a block's
// end-of-call stores touch no counter another block of its grid still has to read.
TEST(LamportRuleTest, CountersAdvanceWithoutRace) {
  std::mt19937_64 rng(7);
  const Residency residency = RandomResidency(rng);
  Model model(2, residency, kNewRule);
  const std::vector<Call> seq = RandomSequence(rng, 300, model.layout(), false);
  uint32_t oneshot = 0, twoshot = 0;
  for (const Call& c : seq) {
    const CallAccesses a = model.Run(c);
    ASSERT_EQ(a.error, "");
    if (!a.launched || (c.path != Path::kOneShot && c.path != Path::kTwoShot)) continue;
    uint32_t& expect = c.path == Path::kOneShot ? oneshot : twoshot;
    for (uint32_t k : model.last_calls()) ASSERT_EQ(k, expect) << Describe(c);
    ++expect;
    for (int rank = 0; rank < 2; ++rank) {
      for (uint32_t v : model.state(rank).oneshot) ASSERT_EQ(v, oneshot);
      for (uint32_t v : model.state(rank).twoshot) ASSERT_EQ(v, twoshot);
    }
  }
  EXPECT_GT(oneshot, 50u);
  EXPECT_GT(twoshot, 50u);

  // LamportAdvance of block b in a grid of G writes exactly the indices congruent to b mod G,
  // whatever the split over threads.
  for (int grid : {1, 7, 263, 264, 1000, kMaxFusedBlocks}) {
    for (int block : {0, 1, grid / 2, grid - 1}) {
      if (block >= grid) continue;
      for (int threads : {1, 32, 192, 256}) {
        std::vector<uint32_t> counts(kMaxFusedBlocks, 5);
        for (int t = 0; t < threads; ++t) LamportAdvance(counts.data(), block, grid, 5, t, threads);
        for (int i = 0; i < kMaxFusedBlocks; ++i) {
          ASSERT_EQ(counts[size_t(i)], i % grid == block ? 6u : 5u)
              << "grid " << grid << " block " << block << " threads " << threads << " index " << i;
        }
      }
    }
  }
  EXPECT_NE(LamportBufferIndex(0), LamportBufferIndex(1));
  EXPECT_EQ(LamportBufferIndex(0), LamportBufferIndex(kLamportBuffers));
  // The count wraps at 2^32, an even number: buffers still alternate across the wrap.
  EXPECT_NE(LamportBufferIndex(0xFFFFFFFFu), LamportBufferIndex(0xFFFFFFFFu + 1u));
}

}  // namespace
}  // namespace tpfuse::cuda
