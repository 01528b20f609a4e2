#include "tpfuse/cli_common.h"

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "bench/plan.h"
#include "ir/parser.h"
#include "ir/verifier.h"
#include "tpfuse/commands.h"

#if TPFUSE_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "runtime/cuda/cuda_executor.h"
#endif

namespace tpfuse::cli {

// ---------------------------------------------------------------- backends

std::string_view BackendName(Backend backend) { return backend == Backend::kCuda ? "cuda" : "cpu"; }

Backend ParseBackendName(std::string_view name) {
  return name == "cuda" ? Backend::kCuda : Backend::kCpu;
}

FusionCapabilities CapabilitiesFor(Backend backend) {
  return backend == Backend::kCuda ? CudaFusionCapabilities() : CpuFusionCapabilities();
}

bool CudaBuilt() {
#if TPFUSE_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

int CudaDeviceCount() {
#if TPFUSE_HAVE_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: clear the sticky error, report none
    return 0;
  }
  return count;
#else
  return 0;
#endif
}

StatusOr<std::unique_ptr<runtime::Executor>> MakeExecutor(Backend backend, int world_size) {
  if (world_size < 1) return InvalidArgument("world size must be >= 1, got ", world_size);
  if (backend == Backend::kCpu) return runtime::MakeCpuExecutor(world_size);
#if TPFUSE_HAVE_CUDA
  const int devices = CudaDeviceCount();
  if (devices < world_size)
    return FailedPrecondition("--backend cuda at world size ", world_size, " needs ", world_size,
                              " GPUs; this machine has ", devices);
  return runtime::MakeCudaExecutor(world_size);
#else
  return Unimplemented(
      "this tpfuse was built without the CUDA backend (it needs nvcc and NCCL "
      "at configure time, and -DTPFUSE_ENABLE_CUDA=ON); use --backend cpu");
#endif
}

// ---------------------------------------------------------------- options

CLI::Validator IntegerIn(int64_t min, int64_t max) {
  return CLI::Validator(
      [min, max](const std::string& text) {
        const StatusOr<int64_t> value = bench::ParseInt(text, "", min, max);
        return value.ok() ? std::string() : std::string(value.status().message());
      },
      StrCat(min, "..", max == INT64_MAX ? std::string("2^63-1") : StrCat(max)));
}

// ---------------------------------------------------------------- errors

int Fail(std::string_view command, const Status& status) {
  std::cerr << "tpfuse " << command << ": error: " << status.message() << "\n";
  return kExitInvalidInput;
}

// ---------------------------------------------------------------- programs

bool IsModelPath(const std::string& path) {
  return std::filesystem::path(path).extension() == ".json";
}

StatusOr<Program> LoadProgram(const std::string& path, int world_size) {
  Program program;
  program.path = path;
  if (IsModelPath(path)) {
    TPFUSE_ASSIGN_OR_RETURN(models::ModelConfig config, models::LoadModelConfig(path));
    if (world_size > 0 && world_size != config.tp_size) {
      config.tp_size = world_size;
      // The description was valid for its own TP degree; say which field breaks at this one.
      TPFUSE_RETURN_IF_ERROR(config.Validate().WithContext(
          StrCat("at --world-size ", world_size, " (replacing tp_size)")));
    }
    TPFUSE_ASSIGN_OR_RETURN(std::unique_ptr<ir::Graph> graph, models::BuildDecodeGraph(config));
    TPFUSE_RETURN_IF_ERROR(ir::Verify(*graph).WithContext("model " + config.name));
    program.funcs.push_back(std::move(graph));
    program.model = std::move(config);
    return program;
  }
  TPFUSE_ASSIGN_OR_RETURN(ir::Module module, ir::ParseModuleFile(path));
  program.funcs = std::move(module.funcs);
  if (program.funcs.empty()) return InvalidArgument(path, ": no func in the file");
  return program;
}

// ---------------------------------------------------------------- compiling

passes::CompileOptions CompileOptions::ForLibrary() const {
  passes::CompileOptions options;
  options.world_size = world_size;
  options.max_tokens = max_tokens;
  options.caps = CapabilitiesFor(backend);
  options.fuse_local = fuse_local;
  options.dump = dump;
  return options;
}

StatusOr<Compiled> CompileGraph(const ir::Graph& graph, const CompileOptions& options) {
  return passes::CompileGraph(graph, options.ForLibrary());
}

std::string FormatOpCounts(const std::map<std::string, int>& counts) {
  std::string text;
  for (const auto& [op, n] : counts) text += StrCat(text.empty() ? "" : ", ", op, " ", n);
  return text.empty() ? "-" : text;
}

int TotalOps(const std::map<std::string, int>& counts) {
  int total = 0;
  for (const auto& [op, n] : counts) total += n;
  return total;
}

// ---------------------------------------------------------------- results

namespace {

std::string FormatValue(float v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.6g", double(v));
  return buf;
}

}  // namespace

std::string FormatSeconds(double seconds) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), seconds < 10.0 ? "%.3f s" : "%.1f s", seconds);
  return buf;
}

std::string SummarizeTensor(const HostTensor& tensor, int num_values) {
  // FNV-1a over the raw bytes: equal checksums on two runs mean bitwise-equal outputs.
  uint64_t hash = 0xCBF29CE484222325ull;
  const auto* bytes = static_cast<const unsigned char*>(tensor.data());
  for (size_t i = 0; i < tensor.nbytes(); ++i) hash = (hash ^ bytes[i]) * 0x100000001B3ull;
  double abs_sum = 0.0;
  int64_t non_finite = 0;
  for (int64_t i = 0; i < tensor.numel(); ++i) {
    const float v = tensor.GetF32(i);
    if (std::isfinite(v)) {
      abs_sum += std::fabs(double(v));
    } else {
      ++non_finite;
    }
  }
  char head[96];
  std::snprintf(head, sizeof(head), "fnv %016llx  sum|x| %.6g",
                static_cast<unsigned long long>(hash), abs_sum);
  std::string values;
  const int64_t shown = std::min<int64_t>(num_values, tensor.numel());
  for (int64_t i = 0; i < shown; ++i) values += (i ? ", " : "") + FormatValue(tensor.GetF32(i));
  if (tensor.numel() > shown) values += ", ...";
  std::string text = StrCat(tensor.TypeString(), "  ", head, "  [", values, "]");
  if (non_finite > 0) text += StrCat("  (", non_finite, " non-finite)");
  return text;
}

}  // namespace tpfuse::cli
