// The CUDA executor: runs a graph on `world_size` GPUs of this node, one host thread per GPU.
//
// Each rank owns a stream, a cuBLASLt handle with its workspace and, once a graph needs one, a
// cuda::Communicator (NCCL, created from a unique id shared in this process). A run binds the
// token count, allocates one device arena per rank holding every value, uploads each rank's
// inputs, launches the graph node by node on the rank's stream:
//   all_reduce         ncclAllReduce (sum, in the value's dtype)
//   view               an alias of its operand (no launch)
//   allreduce_rmsnorm  cuda::LaunchAllreduceRmsnorm with the dispatcher's strategy (or the
//                      override); a strategy that cannot run the shape falls back to nccl
//   everything else    the unfused kernels of backends/cuda/unfused_ops.h
// then checks the communicator's health and downloads the returned values. Device memory of a
// run is freed when the run ends.
//
// Errors name the node ("rms_norm %y (line 4) on rank 1: ..."). A graph is checked completely
// (ops, attributes, shapes) before any rank launches anything, so a bad graph never leaves a
// peer waiting in a collective.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backends/cuda/comm/communicator.h"
#include "runtime/dispatcher.h"
#include "runtime/executor.h"

namespace tpfuse::runtime {

struct CudaExecutorOptions {
  // Rank r runs on devices[r]; empty: devices 0 .. world_size - 1.
  std::vector<int> devices;
  // Workspace sizing and timeouts of the communicators. max_hidden grows to the largest hidden
  // size of a graph's fused ops (the communicators are created again when a graph needs more).
  cuda::CommOptions comm;
  // Strategy per (world size, hidden, quant, tokens) for allreduce_rmsnorm.
  StrategyTable strategies = StrategyTable::Defaults();
  // Every allreduce_rmsnorm uses this strategy; a shape it cannot run is an error (no fallback).
  StrategyRequest strategy_override;  // nullopt: the table decides
  // Programmatic dependent launch for the fused op.
  bool pdl = true;
  // cuBLASLt workspace per rank.
  size_t gemm_workspace_bytes = size_t(32) << 20;
  // After one rank fails, how long the others wait for their streams to drain before the run
  // gives up (a collective may wait for the failed rank forever). The executor is unusable
  // after such a give-up.
  double abort_grace_seconds = 10.0;
};

class CudaExecutor : public Executor {
 public:
  ~CudaExecutor() override;
  std::string name() const override { return "cuda"; }
  int world_size() const override;
  StatusOr<RankOutputs> Run(const ir::Graph& graph, const std::vector<TensorMap>& inputs) override;

  // Uploads the inputs once, runs the graph `warmup` times, then `iterations` times between
  // CUDA events on every rank, and returns each rank's mean time per run in microseconds.
  // Outputs are not downloaded. For benchmarks of whole graphs; the fused op's own benchmark
  // uses CUDA graphs instead.
  StatusOr<std::vector<double>> TimeRuns(const ir::Graph& graph,
                                         const std::vector<TensorMap>& inputs, int warmup,
                                         int iterations);

  // The strategy each allreduce_rmsnorm of the last run used, in program order:
  // "<node label>: <strategy>".
  const std::vector<std::string>& last_fused_strategies() const { return last_fused_strategies_; }

  // Per-rank devices, streams, handles and communicators (cuda_executor.cc); made by
  // MakeCudaExecutor.
  struct Impl;
  explicit CudaExecutor(std::unique_ptr<Impl> impl);

 private:
  std::unique_ptr<Impl> impl_;
  std::vector<std::string> last_fused_strategies_;
};

// Fails with kUnimplemented (naming what is missing) when the machine has fewer usable GPUs
// than `world_size`, or no CUDA driver at all.
StatusOr<std::unique_ptr<Executor>> MakeCudaExecutor(int world_size,
                                                     const CudaExecutorOptions& options = {});

}  // namespace tpfuse::runtime
