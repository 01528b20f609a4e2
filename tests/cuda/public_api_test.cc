// The public runtime API (include/tpfuse/tpfuse.h): validation before any GPU work, and the
// dispatched fused op on GPUs against the CPU oracle, including a shape over the workspace.
#include <gtest/gtest.h>

#include <memory>
#include <thread>
#include <vector>

#include "support/cuda_harness.h"
#include "support/fused_check.h"
#include "tpfuse/tpfuse.h"

#if TPFUSE_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace tpfuse::testing {
namespace {

bool Contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

// No GPU needed: these fail before touching a device.
TEST(PublicApiTest, RejectsABadUniqueIdAndBadConfigBeforeTouchingTheGpu) {
  StatusOr<std::unique_ptr<Comm>> short_id = Comm::FromUniqueId("abc", 0, 2, 0);
  ASSERT_FALSE(short_id.ok());
  EXPECT_EQ(short_id.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(short_id.status().message(), "128 bytes")) << short_id.status().ToString();

  CommConfig bad;
  bad.timeout_seconds = -1;
  StatusOr<std::unique_ptr<Comm>> negative = Comm::FromUniqueId(std::string(128, '\0'), 0, 2, 0, bad);
  ASSERT_FALSE(negative.ok());
  EXPECT_TRUE(Contains(negative.status().message(), "timeout_seconds")) << negative.status().ToString();

  CommConfig missing_table;
  missing_table.strategy_table = "/nonexistent/tpfuse-strategy.json";
  StatusOr<std::unique_ptr<Comm>> table = Comm::FromUniqueId(std::string(128, '\0'), 0, 2, 0, missing_table);
  ASSERT_FALSE(table.ok());
  EXPECT_TRUE(Contains(table.status().message(), "tpfuse-strategy.json")) << table.status().ToString();
}

TEST(PublicApiTest, StrategyNames) {
  EXPECT_EQ(StrategyRequestName(std::nullopt), "auto");
  EXPECT_EQ(StrategyName(Strategy::kOneShot), "oneshot");
  EXPECT_EQ(StrategyName(Strategy::kTwoShot), "twoshot");
  EXPECT_EQ(StrategyName(Strategy::kNccl), "nccl");
}

#if TPFUSE_HAVE_CUDA

// Device copies of one rank's inputs and outputs.
struct DeviceCall {
  std::vector<void*> allocations;
  FusedBuffers buffers;
  std::vector<HostTensor> outputs;
  std::vector<void*> output_ptrs;

  ~DeviceCall() {
    for (void* p : allocations) cudaFree(p);
  }
  void* Upload(const HostTensor& t) {
    void* p = nullptr;
    if (cudaMalloc(&p, std::max<size_t>(t.nbytes(), 16)) != cudaSuccess) return nullptr;
    allocations.push_back(p);
    cudaMemcpy(p, t.data(), t.nbytes(), cudaMemcpyHostToDevice);
    return p;
  }
  void* Output(size_t bytes) {
    void* p = nullptr;
    if (cudaMalloc(&p, std::max<size_t>(bytes, 16)) != cudaSuccess) return nullptr;
    allocations.push_back(p);
    cudaMemset(p, 0xFF, std::max<size_t>(bytes, 16));  // poison: NaN in every output dtype
    return p;
  }
};

// Runs the public API's fused op on 2 GPUs (one thread each) and checks every rank's outputs
// against the oracle. `tokens` may exceed the configured workspace.
void RunAndCheck(const AllreduceRmsnormSpec& spec, int64_t tokens, const CommConfig& config,
                 Strategy expected_choice) {
  constexpr int kWorld = 2;
  StatusOr<std::string> id = Comm::MakeUniqueId();
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  const FusedInputs in = MakeFusedInputs(spec, tokens, kWorld, 2024);
  const std::vector<HostTensor> ref = OracleOutputs(spec, in);
  ASSERT_FALSE(ref.empty());
  std::vector<Status> statuses(kWorld);
  std::vector<std::vector<HostTensor>> got(kWorld);
  std::vector<StrategyRequest> chosen(kWorld);  // nullopt until the rank chose
  std::vector<std::thread> threads;
  for (int rank = 0; rank < kWorld; ++rank) {
    threads.emplace_back([&, rank] {
      cudaSetDevice(rank);
      StatusOr<std::unique_ptr<Comm>> comm = Comm::FromUniqueId(*id, rank, kWorld, rank, config);
      if (!comm.ok()) {
        statuses[size_t(rank)] = comm.status();
        return;
      }
      chosen[size_t(rank)] = (*comm)->Choose(spec, tokens);
      DeviceCall call;
      call.buffers.x = call.Upload(in.partials[size_t(rank)]);
      call.buffers.residual = call.Upload(in.residual);
      call.buffers.weight = call.Upload(in.weight);
      call.outputs = FusedOutputShapes(spec, tokens);
      size_t i = 0;
      if (spec.emit.norm) call.buffers.norm_out = call.Output(call.outputs[i++].nbytes());
      if (spec.emit.residual) call.buffers.residual_out = call.Output(call.outputs[i++].nbytes());
      if (spec.emit.quant) {
        call.buffers.quant_out = call.Output(call.outputs[i++].nbytes());
        call.buffers.scale_out = static_cast<float*>(call.Output(call.outputs[i++].nbytes()));
      }
      cudaStream_t stream;
      cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
      Status st = (*comm)->AllreduceRmsnorm(spec, tokens, call.buffers, stream);
      if (st.ok()) st = (*comm)->CheckHealth(stream);
      if (st.ok()) {
        std::vector<const void*> ptrs;
        if (spec.emit.norm) ptrs.push_back(call.buffers.norm_out);
        if (spec.emit.residual) ptrs.push_back(call.buffers.residual_out);
        if (spec.emit.quant) {
          ptrs.push_back(call.buffers.quant_out);
          ptrs.push_back(call.buffers.scale_out);
        }
        for (size_t k = 0; k < ptrs.size(); ++k)
          cudaMemcpy(call.outputs[k].data(), ptrs[k], call.outputs[k].nbytes(), cudaMemcpyDeviceToHost);
        got[size_t(rank)] = call.outputs;
      }
      cudaStreamDestroy(stream);
      statuses[size_t(rank)] = st;
      comm->reset();
    });
  }
  for (std::thread& t : threads) t.join();
  for (int rank = 0; rank < kWorld; ++rank) {
    ASSERT_TRUE(statuses[size_t(rank)].ok()) << "rank " << rank << ": " << statuses[size_t(rank)].ToString();
    EXPECT_EQ(chosen[size_t(rank)], expected_choice) << StrategyRequestName(chosen[size_t(rank)]);
    EXPECT_EQ(CompareFusedOutputs(spec, in, got[size_t(rank)], ref), "") << "rank " << rank;
  }
}

AllreduceRmsnormSpec GroupSpec(int64_t hidden) {
  AllreduceRmsnormSpec spec;
  spec.hidden = hidden;
  spec.has_residual = true;
  spec.quant = QuantMode::kFp8Group;
  spec.emit.norm = true;
  spec.emit.residual = true;
  spec.emit.quant = true;
  return spec;
}

TEST(PublicApiTest, DispatchedFusedOpMatchesTheOracle) {
  TPFUSE_REQUIRE_GPUS(2);
  CommConfig config;
  config.max_tokens = 256;
  config.max_hidden = 4096;
  config.oneshot_max_tokens = 256;
  RunAndCheck(GroupSpec(4096), 8, config, Strategy::kOneShot);
}

TEST(PublicApiTest, ShapeOverTheWorkspaceTakesTheNcclPath) {
  TPFUSE_REQUIRE_GPUS(2);
  CommConfig config;
  config.max_tokens = 64;
  config.max_hidden = 4096;
  config.oneshot_max_tokens = 64;
  RunAndCheck(GroupSpec(4096), 300, config, Strategy::kNccl);
}

#endif  // TPFUSE_HAVE_CUDA

}  // namespace
}  // namespace tpfuse::testing
