// main() of the GPU suite. Runs a child entry point when started as one (one-process-per-GPU
// tests re-execute this binary with --tpfuse-child=...), otherwise the gtest suite.
#include <gtest/gtest.h>

#include <stdlib.h>

#include <cstdio>

#include "support/cuda_harness.h"

int main(int argc, char** argv) {
  // NVLink multicast stays off unless the user set it: tpfuse never uses multimem, and NCCL's
  // NVLS setup is not needed for symmetric windows. The library leaves the environment alone;
  // the process sets it before any NCCL call (children inherit it).
  ::setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
  const int child_exit = tpfuse::testing::RunChildIfRequested(argc, argv);
  if (child_exit >= 0) return child_exit;

  ::testing::InitGoogleTest(&argc, argv);
  // Test discovery (gtest_discover_tests) parses --gtest_list_tests: print nothing else then.
  if (!GTEST_FLAG_GET(list_tests)) {
    const int gpus = tpfuse::testing::CudaDeviceCount();
    if (gpus == 0) {
      std::printf("tpfuse_cuda_tests: 0 GPUs visible; every GPU test skips with its reason (\"%s\")\n",
                  tpfuse::testing::WhyFewerGpusThan(1).c_str());
    } else {
      std::printf("tpfuse_cuda_tests: %d GPU(s) visible; tests needing more skip with a reason\n",
                  gpus);
    }
  }
  std::fflush(stdout);
  const int result = RUN_ALL_TESTS();
  // Communicators cached across tests go before the CUDA runtime shuts down.
  tpfuse::testing::MultiGpu::ReleaseCached();
  return result;
}
