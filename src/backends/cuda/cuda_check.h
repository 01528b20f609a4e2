// CUDA / NCCL error checks that return a Status naming the call, file and line.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include "tpfuse/status.h"

#define TPFUSE_CUDA_CHECK(expr)                                                               \
  do {                                                                                        \
    cudaError_t tpfuse_err_ = (expr);                                                         \
    if (tpfuse_err_ != cudaSuccess)                                                           \
      return ::tpfuse::Status(::tpfuse::StatusCode::kCudaError,                               \
                              ::tpfuse::StrCat(#expr, " failed: ",                            \
                                               cudaGetErrorString(tpfuse_err_), " (",         \
                                               __FILE__, ":", __LINE__, ")"));                \
  } while (0)

#define TPFUSE_NCCL_CHECK(expr)                                                               \
  do {                                                                                        \
    ncclResult_t tpfuse_res_ = (expr);                                                        \
    if (tpfuse_res_ != ncclSuccess)                                                           \
      return ::tpfuse::Status(::tpfuse::StatusCode::kNcclError,                               \
                              ::tpfuse::StrCat(#expr, " failed: ",                            \
                                               ncclGetErrorString(tpfuse_res_), " (",         \
                                               __FILE__, ":", __LINE__, ")"));                \
  } while (0)

// After a kernel launch: the launch's own error (bad configuration), not the kernel's.
#define TPFUSE_CUDA_CHECK_LAUNCH() TPFUSE_CUDA_CHECK(cudaGetLastError())
