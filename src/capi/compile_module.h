// Module text in -> compiled module text and the JSON report out: what the C ABI's
// tpfuse_compile serves. The library function the compiler offers for this replaces this file.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "tpfuse/status.h"

namespace tpfuse::capi {

struct CompileModuleOptions {
  int world_size = 2;
  int64_t max_tokens = 0;  // 0: unknown
  bool cuda_backend = false;  // the CUDA backend's fused-op capabilities (else the CPU's)
  int fuse_local = 0;         // TPFUSE_FUSE_LOCAL_*: only AUTO until the compiler offers local fusion
  std::string source_name = "<input>";
};

struct CompiledModule {
  std::string text;         // the fused module, .tpg
  std::string report_json;  // ops_before, ops_after, fusions, rejections, counters, funcs
};

StatusOr<CompiledModule> CompileModuleText(std::string_view text,
                                           const CompileModuleOptions& options);

}  // namespace tpfuse::capi
