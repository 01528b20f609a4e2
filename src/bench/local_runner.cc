// `tpfuse bench --world-size 1`: the fused op on one GPU against the unfused kernels and the
// copy roofline, in this process. What is measured and reported: bench/local.h; the method:
// docs/benchmarking.md ("World size 1").
#include <cstdio>

#include "bench/local.h"
#include "bench/runner.h"

#if TPFUSE_HAVE_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "backends/cpu/reference_ops.h"
#include "backends/cuda/allreduce_rmsnorm.h"
#include "backends/cuda/cuda_check.h"
#include "backends/cuda/device_buffer.h"
#include "bench/gpu_support.h"
#include "common/tensor.h"
#endif

namespace tpfuse::bench {

#if !TPFUSE_HAVE_CUDA

int RunLocalBench(const Plan&) {
  std::fprintf(stderr, "tpfuse bench: error: this tpfuse was built without the CUDA backend\n");
  return 1;
}

#else  // TPFUSE_HAVE_CUDA

namespace {

using Clock = std::chrono::steady_clock;
using cuda::DeviceBuffer;

// Memory left free besides the sweep's buffers.
constexpr size_t kHeadroomBytes = size_t(512) << 20;

// One (H, quant, T) of the sweep.
struct Cell {
  AllreduceRmsnormSpec spec;
  int64_t tokens = 0;
  LocalSetLayout layout;
  Rotation rotation;

  std::string Name() const { return LocalCellName(spec.hidden, spec.quant, spec.emit, tokens); }
};

// An emitted output of the fused op: its name, where it lies in a set, and the oracle's tensor.
struct OutputRegion {
  const char* name;
  size_t offset;
};

// The regions of the emitted outputs in Contract 3's order (norm, residual, q, s): the order of
// the oracle's results.
std::vector<OutputRegion> EmittedRegions(const AllreduceRmsnormSpec& spec, const SetLayout& l) {
  std::vector<OutputRegion> regions;
  if (spec.emit.norm) regions.push_back({"norm", l.norm_out});
  if (spec.emit.residual) regions.push_back({"residual_out", l.residual_out});
  if (spec.emit.quant) {
    regions.push_back({"q", l.quant});
    if (IsDynamicQuant(spec.quant)) regions.push_back({"s", l.scale});
  }
  return regions;
}

class LocalRunner {
 public:
  explicit LocalRunner(const Plan& plan) : plan_(plan) {}
  Status Run();

 private:
  Status SetUp();
  Cell MakeCell(int64_t hidden, QuantMode quant, int64_t tokens) const;
  Status CheckAgainstOracle();
  Status CheckCell(const Cell& cell);
  Status CompareOutputs(const Cell& cell, const std::vector<HostTensor>& want,
                        const char* path);
  Status FillInputs(const Cell& cell, int sets);
  Status PoisonOutputs(const Cell& cell);
  Status EnqueueFused(const Cell& cell, char* set);
  Status EnqueueUnfused(const Cell& cell, char* set);
  Status EnqueueCopy(const Cell& cell, char* set);
  StatusOr<ReplayStats> Measure(const Cell& cell, const std::function<Status(char*)>& enqueue);
  StatusOr<LocalCell> MeasureCell(const Cell& cell);
  Status FlushL2();
  Status CheckTime() const;

  char* SetBase(const Cell& cell, int set) const {
    return arena_.get<char>() + size_t(set) * cell.layout.bytes;
  }

  const Plan plan_;
  cuda::Stream stream_;
  DeviceBuffer arena_;   // the input/output sets of the current cell
  DeviceBuffer flush_;   // 2x L2, overwritten between replays of small cells
  DeviceBuffer random_;  // kRandomSourceBytes of random bf16
  DeviceBuffer weight_;  // [H_max] bf16
  DeviceBuffer scale_;   // f32 static scale
  std::vector<uint16_t> weight_host_;
  std::vector<cuda::Event> starts_, stops_;
  LocalReport report_;
  int64_t l2_bytes_ = 0;
  unsigned flush_count_ = 0;
  Clock::time_point start_ = Clock::now();
};

Status LocalRunner::Run() {
  TPFUSE_RETURN_IF_ERROR(SetUp());
  std::fputs(FormatLocalHeader(report_).c_str(), stdout);
  std::fflush(stdout);
  TPFUSE_RETURN_IF_ERROR(CheckAgainstOracle());

  const int total = plan_.num_shapes();
  int index = 0;
  for (int64_t hidden : plan_.hidden) {
    for (QuantMode quant : plan_.quants) {
      for (int64_t tokens : plan_.tokens) {
        ++index;
        TPFUSE_RETURN_IF_ERROR(CheckTime());
        const Clock::time_point start = Clock::now();
        const Cell cell = MakeCell(hidden, quant, tokens);
        StatusOr<LocalCell> measured = MeasureCell(cell);
        if (!measured.ok()) return measured.status().WithContext(cell.Name());
        const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
        std::fprintf(stderr, "[%d/%d] %s (%.1f s)\n", index, total,
                     FormatLocalProgress(*measured).c_str(), seconds);
        report_.cells.push_back(std::move(measured).value());
      }
      std::fputs(FormatLocalTable(report_, hidden, quant).c_str(), stdout);
      std::fflush(stdout);
      // Written after every table, so an interrupted sweep keeps what it measured.
      TPFUSE_RETURN_IF_ERROR(WriteLocalOutputs(report_, plan_.out));
    }
  }
  std::fprintf(stdout, "\n%swrote bench.txt, bench.csv and bench_roofline.svg to %s\n",
               FormatLocalSummary(report_).c_str(), plan_.out.c_str());
  std::fflush(stdout);
  return Status::Ok();
}

Status LocalRunner::CheckTime() const {
  const double seconds = std::chrono::duration<double>(Clock::now() - start_).count();
  if (seconds > plan_.timeout_seconds)
    return OutOfRange("the run passed --timeout (", plan_.timeout_seconds, " s)");
  return Status::Ok();
}

// ---------------------------------------------------------------- setup

Cell LocalRunner::MakeCell(int64_t hidden, QuantMode quant, int64_t tokens) const {
  Cell cell;
  cell.spec = MakeLocalSpec(hidden, quant, plan_.emit_norm);
  cell.tokens = tokens;
  cell.layout = LocalSetLayout::Make(cell.spec, tokens);
  cell.rotation = ChooseLocalRotation(cell.spec, tokens, size_t(l2_bytes_), plan_.ops_per_graph);
  return cell;
}

Status LocalRunner::SetUp() {
  int device = 0;
  TPFUSE_CUDA_CHECK(cudaGetDevice(&device));
  TPFUSE_CUDA_CHECK(cudaFree(nullptr));  // create the context
  int l2 = 0;
  TPFUSE_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
  l2_bytes_ = l2;
  TPFUSE_ASSIGN_OR_RETURN(stream_, cuda::Stream::Create());

  size_t arena_bytes = 0;
  for (int64_t h : plan_.hidden) {
    for (QuantMode q : plan_.quants) {
      for (int64_t t : plan_.tokens) {
        const Cell cell = MakeCell(h, q, t);
        arena_bytes = std::max(arena_bytes, size_t(cell.rotation.sets) * cell.layout.bytes);
      }
    }
  }
  const size_t flush_bytes = std::max<size_t>(2 * size_t(l2_bytes_), 4096);
  const size_t needed = arena_bytes + flush_bytes + kRandomSourceBytes;
  size_t free_bytes = 0, total_bytes = 0;
  TPFUSE_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (needed + kHeadroomBytes > free_bytes) {
    return OutOfRange("the sweep's buffers need ", needed >> 20, " MiB (input sets ",
                      arena_bytes >> 20, " MiB) but only ", free_bytes >> 20,
                      " MiB are free; use fewer or smaller --tokens/--hidden");
  }
  TPFUSE_ASSIGN_OR_RETURN(arena_, DeviceBuffer::Allocate(arena_bytes));
  TPFUSE_ASSIGN_OR_RETURN(flush_, DeviceBuffer::Allocate(flush_bytes));
  TPFUSE_ASSIGN_OR_RETURN(random_, DeviceBuffer::Allocate(kRandomSourceBytes));
  TPFUSE_ASSIGN_OR_RETURN(weight_, DeviceBuffer::Allocate(size_t(plan_.max_hidden()) * 2));
  TPFUSE_ASSIGN_OR_RETURN(scale_, DeviceBuffer::Allocate(sizeof(float)));

  // Random activations, a weight near 1, the static scale.
  const std::vector<uint16_t> random =
      RandomBf16(kRandomSourceBytes / 2, plan_.seed * 1000003ull, -1.0f, 1.0f);
  weight_host_ = RandomBf16(size_t(plan_.max_hidden()), plan_.seed, 0.5f, 1.5f);
  TPFUSE_CUDA_CHECK(
      cudaMemcpy(random_.get(), random.data(), kRandomSourceBytes, cudaMemcpyHostToDevice));
  TPFUSE_CUDA_CHECK(cudaMemcpy(weight_.get(), weight_host_.data(), weight_host_.size() * 2,
                               cudaMemcpyHostToDevice));
  TPFUSE_CUDA_CHECK(cudaMemcpy(scale_.get(), &kStaticScale, sizeof(float), cudaMemcpyHostToDevice));
  TPFUSE_CUDA_CHECK(cudaDeviceSynchronize());

  for (int i = 0; i < std::max(plan_.replays, 1); ++i) {
    TPFUSE_ASSIGN_OR_RETURN(cuda::Event start, cuda::Event::Create());
    TPFUSE_ASSIGN_OR_RETURN(cuda::Event stop, cuda::Event::Create());
    starts_.push_back(std::move(start));
    stops_.push_back(std::move(stop));
  }
  report_.plan = plan_;
  TPFUSE_ASSIGN_OR_RETURN(report_.machine, QueryMachine(device));
  return Status::Ok();
}

Status LocalRunner::FillInputs(const Cell& cell, int sets) {
  // x and residual of every set: random bf16 copied out of the source at offsets that differ
  // per set and field.
  const size_t act = size_t(cell.tokens) * size_t(cell.spec.hidden) * 2;
  const size_t chunk_max = kRandomSourceBytes / 2;
  uint64_t state = plan_.seed ^ (uint64_t(cell.tokens) << 32) ^ uint64_t(cell.spec.hidden) ^
                   (uint64_t(cell.spec.quant) << 24);
  for (int set = 0; set < sets; ++set) {
    char* base = SetBase(cell, set);
    for (size_t field : {cell.layout.op.x, cell.layout.op.residual}) {
      for (size_t done = 0; done < act;) {
        const size_t n = std::min(chunk_max, act - done);
        const size_t offset = (SplitMix64(state) % (kRandomSourceBytes - n + 1)) / 256 * 256;
        TPFUSE_CUDA_CHECK(cudaMemcpyAsync(base + field + done, random_.get<char>() + offset, n,
                                          cudaMemcpyDeviceToDevice, stream_.get()));
        done += n;
      }
    }
  }
  return stream_.Synchronize();
}

// ---------------------------------------------------------------- the paths

Status LocalRunner::EnqueueFused(const Cell& cell, char* set) {
  const cuda::FusedBuffers b =
      FusedBuffersOfSet(cell.spec, set, cell.layout.op, weight_.get(), scale_.get<float>());
  cuda::LaunchOptions options;
  options.pdl = plan_.pdl;
  return cuda::LaunchLocalAllreduceRmsnorm(cell.spec, cell.tokens, b, stream_.get(), options);
}

Status LocalRunner::EnqueueUnfused(const Cell& cell, char* set) {
  return EnqueueUnfusedEpilogue(cell.spec, cell.tokens, set + cell.layout.op.x, set,
                                cell.layout.op, weight_.get(), scale_.get<float>(),
                                stream_.get());
}

Status LocalRunner::EnqueueCopy(const Cell& cell, char* set) {
  // NOTE: the source is the start of the set (x, residual, ...), the destination past the op's
  // regions: the copy reads and writes memory of the same rotation as the op.
  TPFUSE_CUDA_CHECK(cudaMemcpyAsync(set + cell.layout.copy_dst, set, cell.layout.copy_bytes,
                                    cudaMemcpyDeviceToDevice, stream_.get()));
  return Status::Ok();
}

// ---------------------------------------------------------------- correctness

Status LocalRunner::PoisonOutputs(const Cell& cell) {
  // 0xFF is a NaN in bf16, f32 and e4m3: an output the kernel does not write cannot match.
  const SetLayout& l = cell.layout.op;
  char* set = SetBase(cell, 0);
  TPFUSE_CUDA_CHECK(cudaMemsetAsync(set + l.residual_out, 0xFF, l.bytes - l.residual_out,
                                    stream_.get()));
  return Status::Ok();
}

Status LocalRunner::CompareOutputs(const Cell& cell, const std::vector<HostTensor>& want,
                                   const char* path) {
  TPFUSE_RETURN_IF_ERROR(stream_.Synchronize());
  const std::vector<OutputRegion> regions = EmittedRegions(cell.spec, cell.layout.op);
  if (regions.size() != want.size())
    return Internal("the oracle returned ", want.size(), " outputs, expected ", regions.size());
  const char* set = SetBase(cell, 0);
  for (size_t i = 0; i < regions.size(); ++i) {
    HostTensor got(want[i].dtype(), want[i].shape());
    if (got.nbytes() > 0)
      TPFUSE_CUDA_CHECK(cudaMemcpy(got.data(), set + regions[i].offset, got.nbytes(),
                                   cudaMemcpyDeviceToHost));
    if (got.BitwiseEquals(want[i])) continue;
    const size_t elem = size_t(DTypeSize(want[i].dtype()));
    const auto* g = static_cast<const unsigned char*>(got.data());
    const auto* w = static_cast<const unsigned char*>(want[i].data());
    size_t first = 0, count = 0;
    for (size_t e = 0; e * elem < got.nbytes(); ++e) {
      if (std::memcmp(g + e * elem, w + e * elem, elem) == 0) continue;
      if (count++ == 0) first = e;
    }
    return Internal(path, "'s ", regions[i].name, " differs from the CPU oracle in ", count,
                    " of ", got.numel(), " elements; the first is element ", first, " (",
                    got.GetF32(int64_t(first)), ", want ", want[i].GetF32(int64_t(first)),
                    "); nothing is timed for a kernel that computes wrong results");
  }
  return Status::Ok();
}

Status LocalRunner::CheckCell(const Cell& cell) {
  const AllreduceRmsnormSpec& spec = cell.spec;
  const int64_t t = cell.tokens, h = spec.hidden;
  TPFUSE_RETURN_IF_ERROR(FillInputs(cell, 1));
  const char* set = SetBase(cell, 0);
  HostTensor x(DType::kBF16, {t, h}), residual(DType::kBF16, {t, h});
  TPFUSE_CUDA_CHECK(cudaMemcpy(x.data(), set + cell.layout.op.x, x.nbytes(), cudaMemcpyDeviceToHost));
  TPFUSE_CUDA_CHECK(cudaMemcpy(residual.data(), set + cell.layout.op.residual, residual.nbytes(),
                               cudaMemcpyDeviceToHost));
  HostTensor weight(DType::kBF16, {h});
  std::memcpy(weight.data(), weight_host_.data(), weight.nbytes());
  HostTensor scale(DType::kF32, {});
  scale.SetF32(0, kStaticScale);
  const std::vector<const HostTensor*> partials = {&x};
  TPFUSE_ASSIGN_OR_RETURN(
      const std::vector<HostTensor> want,
      cpu::AllreduceRmsnorm(spec, partials, &residual, weight,
                            spec.quant == QuantMode::kFp8Tensor ? &scale : nullptr));

  TPFUSE_RETURN_IF_ERROR(PoisonOutputs(cell));
  TPFUSE_RETURN_IF_ERROR(EnqueueFused(cell, SetBase(cell, 0)));
  TPFUSE_RETURN_IF_ERROR(CompareOutputs(cell, want, "the fused op"));
  TPFUSE_RETURN_IF_ERROR(PoisonOutputs(cell));
  TPFUSE_RETURN_IF_ERROR(EnqueueUnfused(cell, SetBase(cell, 0)));
  return CompareOutputs(cell, want, "the unfused kernels");
}

Status LocalRunner::CheckAgainstOracle() {
  const Clock::time_point start = Clock::now();
  int checked = 0;
  for (int64_t hidden : plan_.hidden) {
    for (QuantMode quant : plan_.quants) {
      for (int64_t tokens : plan_.tokens) {
        if (tokens > kLocalCheckMaxTokens) continue;
        const Cell cell = MakeCell(hidden, quant, tokens);
        TPFUSE_RETURN_IF_ERROR(CheckCell(cell).WithContext(cell.Name()));
        ++checked;
      }
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::fprintf(stderr,
               "checked %d cell%s with T <= %lld: the fused op and the unfused kernels are bit "
               "for bit the CPU oracle's (%.1f s)\n",
               checked, checked == 1 ? "" : "s", static_cast<long long>(kLocalCheckMaxTokens),
               seconds);
  return Status::Ok();
}

// ---------------------------------------------------------------- timing

Status LocalRunner::FlushL2() {
  TPFUSE_CUDA_CHECK(
      cudaMemsetAsync(flush_.get(), int(++flush_count_ & 0xff), flush_.size(), stream_.get()));
  return Status::Ok();
}

StatusOr<ReplayStats> LocalRunner::Measure(const Cell& cell,
                                           const std::function<Status(char*)>& enqueue) {
  auto op = [&](int j) { return enqueue(SetBase(cell, j % cell.rotation.sets)); };
  // One op outside the graph first: it validates the launch.
  TPFUSE_RETURN_IF_ERROR(op(0));
  TPFUSE_RETURN_IF_ERROR(stream_.Synchronize());
  TPFUSE_ASSIGN_OR_RETURN(GraphExec graph, CaptureGraph(stream_.get(), plan_.ops_per_graph, op));
  for (int i = 0; i < plan_.warmup; ++i) {
    if (cell.rotation.flush_l2) TPFUSE_RETURN_IF_ERROR(FlushL2());
    TPFUSE_CUDA_CHECK(cudaGraphLaunch(graph.get(), stream_.get()));
  }
  for (int i = 0; i < plan_.replays; ++i) {
    if (cell.rotation.flush_l2) TPFUSE_RETURN_IF_ERROR(FlushL2());
    TPFUSE_RETURN_IF_ERROR(starts_[size_t(i)].Record(stream_.get()));
    TPFUSE_CUDA_CHECK(cudaGraphLaunch(graph.get(), stream_.get()));
    TPFUSE_RETURN_IF_ERROR(stops_[size_t(i)].Record(stream_.get()));
  }
  TPFUSE_RETURN_IF_ERROR(stream_.Synchronize());
  TPFUSE_CUDA_CHECK(cudaGetLastError());
  std::vector<double> per_op_us;
  per_op_us.reserve(size_t(plan_.replays));
  for (int i = 0; i < plan_.replays; ++i) {
    float ms = 0;
    TPFUSE_CUDA_CHECK(cudaEventElapsedTime(&ms, starts_[size_t(i)].get(), stops_[size_t(i)].get()));
    per_op_us.push_back(double(ms) * 1000.0 / plan_.ops_per_graph);
  }
  return Summarize(std::move(per_op_us));
}

StatusOr<LocalCell> LocalRunner::MeasureCell(const Cell& cell) {
  TPFUSE_RETURN_IF_ERROR(FillInputs(cell, cell.rotation.sets));
  LocalCell c;
  c.hidden = cell.spec.hidden;
  c.quant = cell.spec.quant;
  c.emit = cell.spec.emit;
  c.group_size = cell.spec.group_size;
  c.tokens = cell.tokens;
  c.fused_bytes = FusedTraffic(cell.spec, cell.tokens);
  c.unfused_bytes = UnfusedTraffic(cell.spec, cell.tokens);
  c.copy_bytes = cell.layout.copy_bytes;
  c.rotation = cell.rotation;
  c.checked = cell.tokens <= kLocalCheckMaxTokens;
  TPFUSE_ASSIGN_OR_RETURN(c.fused, Measure(cell, [&](char* set) { return EnqueueFused(cell, set); }));
  TPFUSE_ASSIGN_OR_RETURN(c.unfused,
                          Measure(cell, [&](char* set) { return EnqueueUnfused(cell, set); }));
  TPFUSE_ASSIGN_OR_RETURN(c.copy, Measure(cell, [&](char* set) { return EnqueueCopy(cell, set); }));
  return c;
}

}  // namespace

int RunLocalBench(const Plan& plan) {
  LocalRunner runner(plan);
  const Status status = runner.Run();
  if (status.ok()) return 0;
  std::fflush(stdout);
  std::fprintf(stderr, "tpfuse bench: error: %s\n", status.ToString().c_str());
  return 1;
}

#endif  // TPFUSE_HAVE_CUDA

}  // namespace tpfuse::bench
