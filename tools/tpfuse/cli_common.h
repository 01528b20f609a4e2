// What the compile, run and demo commands share: loading a program (.tpg or model .json),
// compiling it with the default pipeline, picking an executor, checking integer options,
// describing results.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/tensor.h"
#include "ir/graph.h"
#include "models/model.h"
#include "passes/compile.h"
#include "passes/pass.h"
#include "runtime/executor.h"
#include "tpfuse/status.h"

namespace CLI {
class Validator;
}

namespace tpfuse::cli {

// ---------------------------------------------------------------- backends

enum class Backend { kCpu, kCuda };
std::string_view BackendName(Backend backend);    // "cpu", "cuda"
Backend ParseBackendName(std::string_view name);  // "cuda" -> kCuda, anything else kCpu
// What the compiler may fuse for this backend (plain data: available in every build).
FusionCapabilities CapabilitiesFor(Backend backend);
// Whether this binary was built with the CUDA backend.
bool CudaBuilt();
// GPUs visible to this process; 0 without CUDA in the build or without a driver.
int CudaDeviceCount();
// The executor for `backend` with `world_size` ranks. kCuda without CUDA in the build, or
// with fewer GPUs than ranks, is an error that says so.
StatusOr<std::unique_ptr<runtime::Executor>> MakeExecutor(Backend backend, int world_size);

// ---------------------------------------------------------------- options

// The check of an integer option of compile, run and demo: its text an integer in min..max, in
// bench's words ("'abc' is not an integer", "-3 is outside 0..1048576"; bench::ParseInt), after
// the option's name; --help shows the range.
CLI::Validator IntegerIn(int64_t min, int64_t max);

// ---------------------------------------------------------------- errors

// Prints "tpfuse <command>: error: <message>" on stderr; returns kExitInvalidInput.
int Fail(std::string_view command, const Status& status);

// ---------------------------------------------------------------- programs

// The graphs a command works on: every func of a .tpg module, or the decode graph of a model
// description (.json).
struct Program {
  std::string path;
  std::vector<std::unique_ptr<ir::Graph>> funcs;
  std::optional<models::ModelConfig> model;  // set for .json
};

bool IsModelPath(const std::string& path);
// Parses a .tpg module or builds a model's decode graph. For a model, world_size > 0 replaces
// the description's tp_size (the GEMMs are sharded for that many ranks).
StatusOr<Program> LoadProgram(const std::string& path, int world_size);

// ---------------------------------------------------------------- compiling

struct CompileOptions {
  int world_size = 2;
  int64_t max_tokens = 0;
  Backend backend = Backend::kCpu;
  passes::FuseLocal fuse_local = passes::FuseLocal::kAuto;
  std::ostream* dump = nullptr;  // the graph after every pass (--print-after-all)

  // The library's options for this backend.
  passes::CompileOptions ForLibrary() const;
};

// One func through the default pipeline (canonicalize, fuse_allreduce_epilogue, dce).
using Compiled = passes::CompiledFunc;
// Compiles a copy of `graph`; the input is left as it is.
StatusOr<Compiled> CompileGraph(const ir::Graph& graph, const CompileOptions& options);

using passes::DescribeFusion;
// "all_reduce 4, rms_norm 1, quant_fp8 4" (ops in name order); "-" when empty.
std::string FormatOpCounts(const std::map<std::string, int>& counts);
int TotalOps(const std::map<std::string, int>& counts);

// ---------------------------------------------------------------- results

// "0.092 s", "12.4 s"
std::string FormatSeconds(double seconds);

// "bf16[8, 4096]  fnv 3f2a9c01d4e5b677  sum|x| 1.234e+05  [0.5, -1.25, 3, 0.0625, ...]"
std::string SummarizeTensor(const HostTensor& tensor, int num_values = 4);

}  // namespace tpfuse::cli
