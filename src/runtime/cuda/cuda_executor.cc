#include "runtime/cuda/cuda_executor.h"

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>

#include "backends/cuda/allreduce_rmsnorm.h"
#include "backends/cuda/cuda_check.h"
#include "backends/cuda/device_buffer.h"
#include "backends/cuda/unfused_ops.h"
#include "ir/ops.h"
#include "runtime/cuda/fused_dispatch.h"

namespace tpfuse::runtime {
namespace {

using Bindings = std::map<std::string, int64_t>;

// Every region of a run's arena starts on this boundary (the fused op and the vector paths of
// the unfused kernels need 16 bytes; cudaMalloc gives 256).
constexpr size_t kArenaAlign = 256;

size_t AlignArena(size_t n) { return (n + kArenaAlign - 1) / kArenaAlign * kArenaAlign; }

// "add %y (line 3)": how errors name a node (as the CPU executor does).


StatusOr<ncclDataType_t> NcclType(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return ncclBfloat16;
    case DType::kF16: return ncclFloat16;
    case DType::kF32: return ncclFloat32;
    case DType::kI32: return ncclInt32;
    case DType::kF8E4M3: return ncclFloat8e4m3;
  }
  return Internal("no NCCL type for ", DTypeName(dtype));
}

// ---------------------------------------------------------------- the plan of a run

// How one node runs (several IR ops share a launcher, one IR op may take one of two).
enum class LaunchKind : uint8_t {
  kAllReduce,
  kView,
  kFused,
  kBinary,
  kBinaryScalar,
  kPow,
  kRsqrt,
  kClamp,
  kCast,
  kMean,
  kRmsNorm,
  kFusedAddRmsNorm,
  kQuantTensor,
  kQuantDynamic,
  kMatmul,
  kScaledMatmul,
  kFull,
};

// Where one value lives in a rank's arena. A view shares its operand's bytes.
struct ValueSlot {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  size_t offset = 0;
  size_t bytes = 0;
};

// One node, with everything its launch needs decided up front.
struct NodePlan {
  const ir::Node* node = nullptr;
  std::string label;
  LaunchKind kind = LaunchKind::kView;
  std::vector<int> operands;  // value ids
  std::vector<int> results;   // value ids
  cuda::BinaryOpKind binary = cuda::BinaryOpKind::kAdd;
  float a = 0.0f;  // scalar, exponent, clamp min, eps
  float b = 0.0f;  // clamp max, weight_bias
  QuantParams quant;  // quant_fp8
  cuda::ActScaleLayout act_scale = cuda::ActScaleLayout::kPerTensor;
  AllreduceRmsnormSpec spec;
  ir::FusedOperandIndices fused_in;
  ir::FusedResultIndices fused_out;
  Strategy strategy = Strategy::kNccl;  // decided once the communicators exist
  size_t scratch_offset = 0;                        // scaled_matmul
};

struct Plan {
  Bindings bindings;
  std::vector<ValueSlot> values;
  std::unordered_map<const ir::Value*, int> ids;
  std::vector<std::pair<int, std::string>> params;  // value id, parameter name
  std::vector<NodePlan> nodes;
  std::vector<int> outputs;
  size_t arena_bytes = 0;
  bool needs_comm = false;
  int64_t max_fused_hidden = 0;
};

class PlanBuilder {
 public:
  explicit PlanBuilder(Plan& plan) : plan_(plan) {}

  // A value with its own bytes in the arena.
  StatusOr<int> AddValue(const ir::Value* v) {
    TPFUSE_ASSIGN_OR_RETURN(std::vector<int64_t> shape, v->type().Resolve(plan_.bindings));
    ValueSlot slot;
    slot.dtype = v->dtype();
    slot.shape = std::move(shape);
    int64_t n = 1;
    for (int64_t d : slot.shape) n *= d;
    slot.bytes = size_t(n) * size_t(DTypeSize(slot.dtype));
    slot.offset = Reserve(slot.bytes);
    return Register(v, std::move(slot));
  }

  // A value sharing the bytes of `root` (a view).
  StatusOr<int> AddAlias(const ir::Value* v, int root) {
    TPFUSE_ASSIGN_OR_RETURN(std::vector<int64_t> shape, v->type().Resolve(plan_.bindings));
    ValueSlot slot = plan_.values[size_t(root)];
    slot.shape = std::move(shape);
    return Register(v, std::move(slot));
  }

  size_t Reserve(size_t bytes) {
    const size_t offset = plan_.arena_bytes;
    plan_.arena_bytes += AlignArena(std::max<size_t>(bytes, 1));
    return offset;
  }

  StatusOr<int> Id(const ir::Value* v) const {
    auto it = plan_.ids.find(v);
    if (it == plan_.ids.end())
      return Internal("value %", v->name(), " is used before it is defined");
    return it->second;
  }

 private:
  int Register(const ir::Value* v, ValueSlot slot) {
    const int id = int(plan_.values.size());
    plan_.values.push_back(std::move(slot));
    plan_.ids[v] = id;
    return id;
  }

  Plan& plan_;
};

// Reads the op and attributes of one node into `np` (results and operands already set).
Status PlanOp(const ir::Node& node, NodePlan& np) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const auto binary = [&](cuda::BinaryOpKind kind) -> Status {
    np.binary = kind;
    if (node.num_operands() == 1) {
      if (node.attr("scalar") == nullptr)
        return InvalidArgument("one operand needs a 'scalar' attribute");
      np.kind = LaunchKind::kBinaryScalar;
      TPFUSE_ASSIGN_OR_RETURN(double scalar, ir::GetNumberAttr(node, "scalar", 0.0));
      np.a = float(scalar);
    } else {
      np.kind = LaunchKind::kBinary;
    }
    return Status::Ok();
  };
  switch (node.kind()) {
    case ir::OpKind::kAllReduce: np.kind = LaunchKind::kAllReduce; return Status::Ok();
    case ir::OpKind::kView: np.kind = LaunchKind::kView; return Status::Ok();
    case ir::OpKind::kFull: {
      np.kind = LaunchKind::kFull;
      TPFUSE_ASSIGN_OR_RETURN(double value, ir::GetNumberAttr(node, "value", 0.0));
      np.a = float(value);
      return Status::Ok();
    }
    case ir::OpKind::kAllreduceRmsnorm: {
      np.kind = LaunchKind::kFused;
      TPFUSE_ASSIGN_OR_RETURN(np.spec, ir::FusedSpecFromNode(node));
      np.fused_in = ir::FusedOperandLayout(np.spec);
      np.fused_out = ir::FusedResultLayout(np.spec);
      if (np.fused_in.count != node.num_operands() || np.fused_out.count != node.num_results())
        return Internal("operands or results do not match the spec ", np.spec.ToString());
      return Status::Ok();
    }
    case ir::OpKind::kAdd: return binary(cuda::BinaryOpKind::kAdd);
    case ir::OpKind::kSub: return binary(cuda::BinaryOpKind::kSub);
    case ir::OpKind::kMul: return binary(cuda::BinaryOpKind::kMul);
    case ir::OpKind::kDiv: return binary(cuda::BinaryOpKind::kDiv);
    case ir::OpKind::kPow: {
      np.kind = LaunchKind::kPow;
      TPFUSE_ASSIGN_OR_RETURN(double exponent, ir::GetNumberAttr(node, "exponent", 1.0));
      np.a = float(exponent);
      return Status::Ok();
    }
    case ir::OpKind::kRsqrt: np.kind = LaunchKind::kRsqrt; return Status::Ok();
    case ir::OpKind::kClamp: {
      np.kind = LaunchKind::kClamp;
      TPFUSE_ASSIGN_OR_RETURN(double lo, ir::GetNumberAttr(node, "min", -kInf));
      TPFUSE_ASSIGN_OR_RETURN(double hi, ir::GetNumberAttr(node, "max", kInf));
      np.a = float(lo);
      np.b = float(hi);
      return Status::Ok();
    }
    case ir::OpKind::kCast: np.kind = LaunchKind::kCast; return Status::Ok();
    case ir::OpKind::kMean: {
      np.kind = LaunchKind::kMean;
      const ir::Attr* dim = node.attr("dim");
      const int rank = node.operand(0)->type().rank();
      if (dim != nullptr && dim->i != -1 && dim->i != rank - 1)
        return Unimplemented("mean over dim ", dim->i, " (only the last dim is supported)");
      return Status::Ok();
    }
    case ir::OpKind::kRmsNorm:
    case ir::OpKind::kFusedAddRmsNorm: {
      np.kind = node.kind() == ir::OpKind::kRmsNorm ? LaunchKind::kRmsNorm
                                                    : LaunchKind::kFusedAddRmsNorm;
      TPFUSE_ASSIGN_OR_RETURN(double eps, ir::GetNumberAttr(node, "eps", 1e-6));
      TPFUSE_ASSIGN_OR_RETURN(double weight_bias, ir::GetNumberAttr(node, "weight_bias", 0.0));
      np.a = float(eps);
      np.b = float(weight_bias);
      // The unfused norm kernels round as Contract 3's default form does and take the residual in
      // x's dtype: any other norm runs as the local fused op, which follows it (as on the CPU).
      const ir::TensorType& x = node.operand(0)->type();
      const int64_t hidden = x.rank() >= 1 && x.shape.back().is_const() ? x.shape.back().value : 0;
      TPFUSE_ASSIGN_OR_RETURN(const std::optional<AllreduceRmsnormSpec> fused,
                              ir::NormAsLocalFusedSpec(node, hidden));
      if (!fused) return Status::Ok();
      np.kind = LaunchKind::kFused;
      np.spec = *fused;
      np.fused_in = ir::FusedOperandLayout(np.spec);
      np.fused_out = ir::FusedResultLayout(np.spec);
      return Status::Ok();
    }
    case ir::OpKind::kQuantFp8: {
      TPFUSE_ASSIGN_OR_RETURN(ir::QuantParams params, ir::QuantParamsFromNode(node));
      np.kind = params.mode == QuantMode::kFp8Tensor ? LaunchKind::kQuantTensor
                                                     : LaunchKind::kQuantDynamic;
      np.quant = params;
      return Status::Ok();
    }
    case ir::OpKind::kMatmul: np.kind = LaunchKind::kMatmul; return Status::Ok();
    case ir::OpKind::kScaledMatmul: {
      np.kind = LaunchKind::kScaledMatmul;
      TPFUSE_ASSIGN_OR_RETURN(np.act_scale, ir::ScaledMatmulScaleLayout(node));
      return Status::Ok();
    }
    // Ops the CPU reference runs and the CUDA backend has no kernel for yet.
    case ir::OpKind::kSqrt:
    case ir::OpKind::kAbs:
    case ir::OpKind::kNeg:
    case ir::OpKind::kReciprocal:
    case ir::OpKind::kLog2:
    case ir::OpKind::kExp2:
    case ir::OpKind::kCeil:
    case ir::OpKind::kAmax:
      return Unimplemented("op '", node.op(),
                           "' has no CUDA kernel yet (the cpu backend runs it; on cuda, compile "
                           "the graph so that the fused op absorbs it)");
    case ir::OpKind::kOpaque:
      return Unimplemented("opaque op '", ir::OpaqueName(node), "' cannot be executed");
    case ir::OpKind::kUnknown: break;
  }
  return Unimplemented("op '", node.op(), "' has no CUDA implementation");
}

// Binds T from every rank's inputs and decides where every value lives and how every node runs.
StatusOr<Plan> MakePlan(const ir::Graph& graph, const std::vector<TensorMap>& inputs) {
  Plan plan;
  for (size_t r = 0; r < inputs.size(); ++r) {
    StatusOr<Bindings> bindings = BindSymbols(graph, inputs[r]);
    if (!bindings.ok()) return bindings.status().WithContext(StrCat("rank ", r));
    if (r == 0)
      plan.bindings = *bindings;
    else if (*bindings != plan.bindings)
      return InvalidArgument("rank ", r, "'s inputs bind the symbols differently from rank 0's");
  }

  PlanBuilder builder(plan);
  for (const ir::Value* p : graph.params()) {
    TPFUSE_ASSIGN_OR_RETURN(int id, builder.AddValue(p));
    plan.params.emplace_back(id, p->name());
  }
  for (const auto& owned : graph.nodes()) {
    const ir::Node& node = *owned;
    NodePlan np;
    np.node = &node;
    np.label = ir::NodeLabel(node);
    const auto node_error = [&](const Status& s) { return s.WithContext(np.label); };
    for (const ir::Value* v : node.operands()) {
      StatusOr<int> id = builder.Id(v);
      if (!id.ok()) return node_error(id.status());
      np.operands.push_back(*id);
    }
    if (Status s = PlanOp(node, np); !s.ok()) return node_error(s);
    for (const ir::Value* v : node.results()) {
      StatusOr<int> id =
          np.kind == LaunchKind::kView ? builder.AddAlias(v, np.operands.at(0)) : builder.AddValue(v);
      if (!id.ok()) return node_error(id.status());
      np.results.push_back(*id);
    }
    if (np.kind == LaunchKind::kScaledMatmul) {
      const ValueSlot& q = plan.values[size_t(np.operands[0])];
      const ValueSlot& w = plan.values[size_t(np.operands[2])];
      if (q.shape.size() != 2 || w.shape.size() != 2)
        return node_error(InvalidArgument("q and w must be matrices"));
      np.scratch_offset =
          builder.Reserve(cuda::ScaledMatmulScratchBytes(q.shape[0], q.shape[1], w.shape[1]));
    }
    // A local fused op (spec.local) needs no communicator; an all_reduce or a fused op over
    // ranks does, except at world size 1 (decided in EnsureCommunicators).
    if (np.kind == LaunchKind::kAllReduce || (np.kind == LaunchKind::kFused && !np.spec.local))
      plan.needs_comm = true;
    if (np.kind == LaunchKind::kFused)
      plan.max_fused_hidden = std::max(plan.max_fused_hidden, np.spec.hidden);
    plan.nodes.push_back(std::move(np));
  }
  for (const ir::Value* v : graph.outputs()) {
    TPFUSE_ASSIGN_OR_RETURN(int id, builder.Id(v));
    plan.outputs.push_back(id);
  }
  return plan;
}

// ---------------------------------------------------------------- per-rank resources

class CublasLtHandle {
 public:
  CublasLtHandle() = default;
  ~CublasLtHandle() { Reset(); }
  CublasLtHandle(CublasLtHandle&& other) noexcept
      : handle_(std::exchange(other.handle_, nullptr)) {}
  CublasLtHandle& operator=(CublasLtHandle&& other) noexcept {
    if (this != &other) {
      Reset();
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  CublasLtHandle(const CublasLtHandle&) = delete;
  CublasLtHandle& operator=(const CublasLtHandle&) = delete;
  Status Create() {
    const cublasStatus_t status = cublasLtCreate(&handle_);
    if (status != CUBLAS_STATUS_SUCCESS) {
      handle_ = nullptr;
      return Status(StatusCode::kCudaError,
                    StrCat("cublasLtCreate failed: ", cublasLtGetStatusString(status)));
    }
    return Status::Ok();
  }
  void Reset() {
    if (handle_ != nullptr) (void)cublasLtDestroy(handle_);
    handle_ = nullptr;
  }
  cublasLtHandle_t get() const { return handle_; }

 private:
  cublasLtHandle_t handle_ = nullptr;
};

struct RankResources {
  int device = 0;
  cuda::Stream stream;
  CublasLtHandle lt;
  cuda::DeviceBuffer gemm_workspace;
  std::unique_ptr<cuda::Communicator> comm;
};

// Runs fn(rank) on one thread per rank and returns each rank's status.
std::vector<Status> ForEachRank(int world_size, const std::function<Status(int)>& fn) {
  std::vector<Status> statuses(static_cast<size_t>(world_size));
  std::vector<std::thread> threads;
  threads.reserve(size_t(world_size));
  for (int r = 0; r < world_size; ++r) {
    threads.emplace_back([&, r] { statuses[size_t(r)] = fn(r); });
  }
  for (std::thread& t : threads) t.join();
  return statuses;
}

// The first failed rank's status, prefixed with the rank; ok when every rank succeeded.
Status FirstError(const std::vector<Status>& statuses) {
  for (size_t r = 0; r < statuses.size(); ++r) {
    if (!statuses[r].ok()) {
      return statuses.size() > 1 ? statuses[r].WithContext(StrCat("rank ", r)) : statuses[r];
    }
  }
  return Status::Ok();
}

// State the ranks of one run share.
struct RunShared {
  explicit RunShared(int world_size)
      : prepared(static_cast<size_t>(world_size)), barrier(world_size) {}
  std::vector<Status> prepared;     // each rank's allocation + upload
  std::barrier<> barrier;           // after preparation: nobody launches unless all are ready
  std::atomic<bool> failed{false};  // a rank failed while launching or running
  std::atomic<bool> stuck{false};   // a rank gave up waiting for its stream
  std::atomic<int> first_launch_failure{-1};  // the rank whose launch failed first
};

// A rank's error that is only the consequence of another rank's failure ("not run", or a
// stream that never drained): the run reports the other rank's error instead.
bool IsConsequence(const Status& s) {
  return s.message().rfind("not run:", 0) == 0 || s.message().rfind("another rank failed", 0) == 0;
}

enum class RunMode : uint8_t { kRun, kTime };

}  // namespace

// ---------------------------------------------------------------- CudaExecutor::Impl

struct CudaExecutor::Impl {
  int world_size = 0;
  CudaExecutorOptions options;
  std::vector<RankResources> ranks;
  // Set when a run gave up on a stream that never drained: buffers and communicators may be
  // in use by a kernel that never ends, so they are leaked and every later run fails.
  Status broken;

  ~Impl() { Teardown(); }

  // Every rank's resources, freed on the rank's own thread and device, communicators first
  // (their destruction may be collective).
  void Teardown() {
    if (ranks.empty()) return;
    if (!broken.ok()) {
      for (RankResources& r : ranks) {
        (void)r.comm.release();
        (void)r.gemm_workspace.Release();
      }
      return;
    }
    (void)ForEachRank(world_size, [&](int r) -> Status {
      RankResources& res = ranks[size_t(r)];
      cuda::ScopedDevice device;
      TPFUSE_RETURN_IF_ERROR(device.Set(res.device));
      if (res.stream.get() != nullptr) (void)res.stream.Synchronize();
      res.comm.reset();
      res.gemm_workspace.Reset();
      res.lt.Reset();
      res.stream.Reset();
      return Status::Ok();
    });
    ranks.clear();
  }

  // Streams, cuBLASLt handles and GEMM workspaces on every rank's device.
  Status CreateRankResources() {
    ranks.resize(size_t(world_size));
    for (int r = 0; r < world_size; ++r) {
      ranks[size_t(r)].device = options.devices.empty() ? r : options.devices[size_t(r)];
    }
    return FirstError(ForEachRank(world_size, [&](int r) -> Status {
      RankResources& res = ranks[size_t(r)];
      cuda::ScopedDevice device;
      TPFUSE_RETURN_IF_ERROR(device.Set(res.device));
      TPFUSE_ASSIGN_OR_RETURN(res.stream, cuda::Stream::Create());
      TPFUSE_RETURN_IF_ERROR(res.lt.Create());
      TPFUSE_ASSIGN_OR_RETURN(res.gemm_workspace,
                              cuda::DeviceBuffer::Allocate(options.gemm_workspace_bytes));
      return Status::Ok();
    }));
  }

  // Communicators whose workspace fits the plan's fused ops, created (again) when missing,
  // too small or poisoned by an earlier failure.
  Status EnsureCommunicators(const Plan& plan) {
    // World size 1: an all_reduce is the identity and the fused op runs locally (no NCCL).
    if (!plan.needs_comm || world_size == 1) return Status::Ok();
    cuda::CommOptions want = options.comm;
    want.max_hidden = std::max(want.max_hidden, plan.max_fused_hidden);
    bool usable = true;
    for (const RankResources& r : ranks) {
      usable = usable && r.comm && !r.comm->poisoned() &&
               r.comm->options().max_hidden >= want.max_hidden;
    }
    if (usable) return Status::Ok();

    (void)ForEachRank(world_size, [&](int r) -> Status {
      cuda::ScopedDevice device;
      TPFUSE_RETURN_IF_ERROR(device.Set(ranks[size_t(r)].device));
      ranks[size_t(r)].comm.reset();
      return Status::Ok();
    });
    ncclUniqueId id;
    TPFUSE_NCCL_CHECK(ncclGetUniqueId(&id));
    const Status created = FirstError(ForEachRank(world_size, [&](int r) -> Status {
      RankResources& res = ranks[size_t(r)];
      TPFUSE_ASSIGN_OR_RETURN(
          res.comm, cuda::Communicator::FromUniqueId(id, r, world_size, res.device, want));
      return Status::Ok();
    }));
    if (!created.ok()) {
      for (RankResources& r : ranks) r.comm.reset();
      return created.WithContext("creating the communicators");
    }
    return Status::Ok();
  }

  // The strategy of every fused node: the override, or the dispatcher's choice with a fall
  // back to nccl when that strategy cannot run the shape on these communicators.
  Status ChooseStrategies(Plan& plan, std::vector<std::string>* report) {
    report->clear();
    for (NodePlan& np : plan.nodes) {
      if (np.kind != LaunchKind::kFused) continue;
      // No communication (a local op, or world size 1): one kernel on each GPU, whatever
      // strategy the override names for the others.
      if (np.spec.local || !ranks[0].comm) {
        report->push_back(StrCat(np.label, ": local"));
        continue;
      }
      const cuda::Communicator& comm = *ranks[0].comm;
      const std::vector<int64_t>& x_shape = plan.values[size_t(np.operands[size_t(np.fused_in.x)])].shape;
      int64_t tokens = 1;  // rows of x viewed as [T, H]
      for (size_t d = 0; d + 1 < x_shape.size(); ++d) tokens *= x_shape[d];
      if (options.strategy_override) {
        np.strategy = *options.strategy_override;
        if (Status can = cuda::CanRun(comm, np.spec, tokens, np.strategy); !can.ok())
          return can.WithContext(StrCat(np.label, ": the requested strategy ",
                                        StrategyName(np.strategy), " cannot run"));
      } else {
        // The dispatcher's choice, demoted when the communicators cannot run it.
        np.strategy = ChooseStrategy(options.strategies, comm, np.spec, tokens);
        if (Status can = cuda::CanRun(comm, np.spec, tokens, np.strategy); !can.ok())
          return can.WithContext(np.label);
      }
      report->push_back(StrCat(np.label, ": ", StrategyName(np.strategy)));
    }
    return Status::Ok();
  }

  Status LaunchNode(RankResources& res, const Plan& plan, const NodePlan& np, char* arena,
                    cudaStream_t stream) const;
  Status WaitForStream(RankResources& res, RunShared& shared) const;
  Status RunRank(int rank, const Plan& plan, const TensorMap& inputs, RunShared& shared,
                 RunMode mode, int warmup, int iterations, std::vector<HostTensor>* outputs,
                 double* mean_us);
  // Plans, prepares the communicators and runs every rank.
  Status Execute(const ir::Graph& graph, const std::vector<TensorMap>& inputs, RunMode mode,
                 int warmup, int iterations, RankOutputs* outputs, std::vector<double>* times,
                 std::vector<std::string>* strategies);
};

Status CudaExecutor::Impl::LaunchNode(RankResources& res, const Plan& plan, const NodePlan& np,
                                      char* arena, cudaStream_t stream) const {
  const auto tensor = [&](int id) {
    const ValueSlot& slot = plan.values[size_t(id)];
    return cuda::DeviceTensor{arena + slot.offset, slot.dtype, slot.shape};
  };
  const auto in = [&](int i) { return tensor(np.operands.at(size_t(i))); };
  const auto out = [&](int i) { return tensor(np.results.at(size_t(i))); };
  const cuda::GemmContext gemm{res.lt.get(), res.gemm_workspace.get(), res.gemm_workspace.size()};

  switch (np.kind) {
    case LaunchKind::kView: return Status::Ok();
    case LaunchKind::kAllReduce: {
      const cuda::DeviceTensor x = in(0), y = out(0);
      if (x.numel() == 0) return Status::Ok();
      if (!res.comm) {  // world size 1: the sum over one rank is x, bit for bit
        if (x.data != y.data)
          TPFUSE_CUDA_CHECK(cudaMemcpyAsync(y.data, x.data, x.nbytes(), cudaMemcpyDeviceToDevice, stream));
        return Status::Ok();
      }
      TPFUSE_ASSIGN_OR_RETURN(ncclDataType_t type, NcclType(x.dtype));
      TPFUSE_NCCL_CHECK(ncclAllReduce(x.data, y.data, size_t(x.numel()), type, ncclSum,
                                      res.comm->nccl(), stream));
      return Status::Ok();
    }
    case LaunchKind::kFused: {
      cuda::FusedBuffers b;
      const auto ptr = [&](int index, bool is_result) -> void* {
        if (index < 0) return nullptr;
        return is_result ? out(index).data : in(index).data;
      };
      b.x = ptr(np.fused_in.x, false);
      b.x2 = ptr(np.fused_in.x2, false);
      b.residual = ptr(np.fused_in.residual, false);
      b.weight = ptr(np.fused_in.w, false);
      b.pre_weight = ptr(np.fused_in.pre_weight, false);
      b.bias = ptr(np.fused_in.bias, false);
      b.scale = static_cast<const float*>(ptr(np.fused_in.scale, false));
      b.allreduce_out = ptr(np.fused_out.allreduce, true);
      b.norm_out = ptr(np.fused_out.norm, true);
      b.residual_out = ptr(np.fused_out.residual, true);
      b.quant_out = ptr(np.fused_out.q, true);
      b.scale_out = static_cast<float*>(ptr(np.fused_out.s, true));
      // Rows of x viewed as [T, H] (a rank-3 [B, S, H] activation has B * S rows).
      const int64_t tokens = in(np.fused_in.x).rows();
      cuda::LaunchOptions launch;
      launch.pdl = options.pdl;
      // A local op, or world size 1 (no communicator): a = x, one kernel on this GPU.
      if (np.spec.local || !res.comm)
        return cuda::LaunchLocalAllreduceRmsnorm(np.spec, tokens, b, stream, launch);
      return cuda::LaunchAllreduceRmsnorm(*res.comm, np.spec, tokens, b, np.strategy, stream,
                                          launch);
    }
    case LaunchKind::kBinary: return cuda::LaunchBinary(np.binary, in(0), in(1), out(0), stream);
    case LaunchKind::kBinaryScalar:
      return cuda::LaunchBinaryScalar(np.binary, in(0), np.a, out(0), stream);
    case LaunchKind::kPow: return cuda::LaunchPow(in(0), np.a, out(0), stream);
    case LaunchKind::kRsqrt: return cuda::LaunchRsqrt(in(0), out(0), stream);
    case LaunchKind::kClamp: return cuda::LaunchClamp(in(0), np.a, np.b, out(0), stream);
    case LaunchKind::kCast: return cuda::LaunchCast(in(0), out(0), stream);
    case LaunchKind::kMean: return cuda::LaunchMean(in(0), out(0), stream);
    case LaunchKind::kRmsNorm: return cuda::LaunchRmsNorm(in(0), in(1), np.a, np.b, out(0), stream);
    case LaunchKind::kFusedAddRmsNorm:
      return cuda::LaunchFusedAddRmsNorm(in(0), in(1), in(2), np.a, np.b, out(0), out(1), stream);
    case LaunchKind::kQuantTensor:
      return cuda::LaunchQuantFp8Tensor(in(0), in(1), np.quant.Divides(), out(0), stream);
    case LaunchKind::kQuantDynamic: {
      // The IR shapes a column-major scale [G, pad4(T)]; the launcher checks the same shape.
      return cuda::LaunchQuantFp8Dynamic(in(0), np.quant, out(0), out(1), stream);
    }
    case LaunchKind::kFull:
      // Zeros, then clamp(0, v, v) = v in the result's dtype (rounded as the CPU's SetF32 does):
      // two launches a CUDA graph captures, no fill kernel of its own.
      TPFUSE_CUDA_CHECK(cudaMemsetAsync(out(0).data, 0, out(0).nbytes(), stream));
      return cuda::LaunchClamp(out(0), np.a, np.a, out(0), stream);
    case LaunchKind::kMatmul: return cuda::LaunchMatmul(gemm, in(0), in(1), out(0), stream);
    case LaunchKind::kScaledMatmul:
      return cuda::LaunchScaledMatmul(gemm, in(0), in(1), np.act_scale, in(2), in(3), out(0),
                                      arena + np.scratch_offset, stream);
  }
  return Internal("unhandled op kind");
}

// Waits for the rank's stream. Unbounded while every rank is healthy (the fused kernels bound
// their own waits); once a rank has failed, bounded by abort_grace_seconds, since a collective
// here may wait for the failed rank forever.
Status CudaExecutor::Impl::WaitForStream(RankResources& res, RunShared& shared) const {
  using Clock = std::chrono::steady_clock;
  std::optional<Clock::time_point> abort_seen;
  while (true) {
    const cudaError_t e = cudaStreamQuery(res.stream.get());
    if (e == cudaSuccess) return Status::Ok();
    if (e != cudaErrorNotReady) TPFUSE_CUDA_CHECK(e);
    if (shared.failed.load()) {
      if (!abort_seen) abort_seen = Clock::now();
      const double waited = std::chrono::duration<double>(Clock::now() - *abort_seen).count();
      if (waited > options.abort_grace_seconds) {
        shared.stuck = true;
        return Status(StatusCode::kTimeout,
                      StrCat("another rank failed and this rank's stream did not finish within ",
                             options.abort_grace_seconds,
                             " s (a collective is waiting for the failed rank)"));
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

Status CudaExecutor::Impl::RunRank(int rank, const Plan& plan, const TensorMap& inputs,
                                   RunShared& shared, RunMode mode, int warmup, int iterations,
                                   std::vector<HostTensor>* outputs, double* mean_us) {
  RankResources& res = ranks[size_t(rank)];
  const cudaStream_t stream = res.stream.get();
  cuda::ScopedDevice device;
  cuda::DeviceBuffer arena;

  // ---- 1. allocate and upload; then every rank learns whether every rank is ready
  Status prepared = [&]() -> Status {
    TPFUSE_RETURN_IF_ERROR(device.Set(res.device));
    TPFUSE_ASSIGN_OR_RETURN(
        arena, cuda::DeviceBuffer::Allocate(std::max<size_t>(plan.arena_bytes, kArenaAlign)));
    for (const auto& [id, name] : plan.params) {
      const ValueSlot& slot = plan.values[size_t(id)];
      const HostTensor& host = inputs.at(name);
      if (host.nbytes() != slot.bytes)
        return Internal("input %", name, " has ", host.nbytes(), " bytes, the plan ", slot.bytes);
      if (slot.bytes > 0)
        TPFUSE_CUDA_CHECK(cudaMemcpyAsync(arena.get<char>() + slot.offset, host.data(), slot.bytes,
                                          cudaMemcpyHostToDevice, stream));
    }
    return Status::Ok();
  }();
  shared.prepared[size_t(rank)] = prepared;
  shared.barrier.arrive_and_wait();
  if (!prepared.ok()) return prepared;
  for (size_t r = 0; r < shared.prepared.size(); ++r) {
    if (!shared.prepared[r].ok())
      return FailedPrecondition("not run: rank ", r, " failed to prepare");
  }

  // ---- 2. launch the graph (warm-up and timed runs in kTime mode)
  char* base = arena.get<char>();
  cuda::Event start, stop;
  Status launched = [&]() -> Status {
    const auto launch_all = [&]() -> Status {
      for (const NodePlan& np : plan.nodes) {
        if (Status s = LaunchNode(res, plan, np, base, stream); !s.ok())
          return s.WithContext(np.label);
      }
      return Status::Ok();
    };
    if (mode == RunMode::kRun) return launch_all();
    TPFUSE_ASSIGN_OR_RETURN(start, cuda::Event::Create());
    TPFUSE_ASSIGN_OR_RETURN(stop, cuda::Event::Create());
    for (int i = 0; i < warmup; ++i) TPFUSE_RETURN_IF_ERROR(launch_all());
    TPFUSE_RETURN_IF_ERROR(start.Record(stream));
    for (int i = 0; i < iterations; ++i) TPFUSE_RETURN_IF_ERROR(launch_all());
    return stop.Record(stream);
  }();
  if (!launched.ok()) {
    int none = -1;
    shared.first_launch_failure.compare_exchange_strong(none, rank);
    shared.failed = true;
  }

  // ---- 3. wait (bounded once a rank failed), then the communicator's verdict
  if (Status waited = WaitForStream(res, shared); !waited.ok()) {
    // Something on the stream may never end: leave its memory alone.
    (void)arena.Release();
    return launched.ok() ? waited : launched;
  }
  if (!launched.ok()) return launched;
  if (res.comm) {
    if (Status health = res.comm->CheckHealth(stream); !health.ok()) {
      shared.failed = true;
      return health;
    }
  }
  TPFUSE_CUDA_CHECK(cudaGetLastError());

  // ---- 4. results
  if (mode == RunMode::kTime) {
    float ms = 0.0f;
    TPFUSE_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
    *mean_us = iterations > 0 ? double(ms) * 1000.0 / iterations : 0.0;
    return Status::Ok();
  }
  outputs->clear();
  for (int id : plan.outputs) {
    const ValueSlot& slot = plan.values[size_t(id)];
    HostTensor host(slot.dtype, slot.shape);
    if (slot.bytes > 0)
      TPFUSE_CUDA_CHECK(
          cudaMemcpy(host.data(), base + slot.offset, slot.bytes, cudaMemcpyDeviceToHost));
    outputs->push_back(std::move(host));
  }
  return Status::Ok();
}

Status CudaExecutor::Impl::Execute(const ir::Graph& graph, const std::vector<TensorMap>& inputs,
                                   RunMode mode, int warmup, int iterations, RankOutputs* outputs,
                                   std::vector<double>* times,
                                   std::vector<std::string>* strategies) {
  if (!broken.ok())
    return FailedPrecondition("cuda executor is unusable after an earlier failure: ",
                              broken.message());
  if (int(inputs.size()) != world_size)
    return InvalidArgument("cuda executor: got inputs for ", inputs.size(),
                           " ranks, world size is ", world_size);
  TPFUSE_RETURN_IF_ERROR(ir::RefuseOpaque(graph, "cuda"));
  TPFUSE_ASSIGN_OR_RETURN(Plan plan, MakePlan(graph, inputs));
  TPFUSE_RETURN_IF_ERROR(EnsureCommunicators(plan));
  TPFUSE_RETURN_IF_ERROR(ChooseStrategies(plan, strategies));

  RunShared shared(world_size);
  if (outputs) outputs->assign(size_t(world_size), {});
  if (times) times->assign(size_t(world_size), 0.0);
  const std::vector<Status> statuses = ForEachRank(world_size, [&](int r) {
    return RunRank(r, plan, inputs[size_t(r)], shared, mode, warmup, iterations,
                   outputs ? &(*outputs)[size_t(r)] : nullptr,
                   times ? &(*times)[size_t(r)] : nullptr);
  });
  if (shared.stuck) {
    broken = Status(StatusCode::kTimeout, "a rank's stream never drained after a failure");
  }
  // The root cause first: the rank whose launch failed first, then any rank's own failure over
  // the others' consequences of it.
  if (const int r = shared.first_launch_failure.load(); r >= 0) {
    const Status& s = statuses[size_t(r)];
    return world_size > 1 ? s.WithContext(StrCat("rank ", r)) : s;
  }
  for (size_t r = 0; r < statuses.size(); ++r) {
    const Status& s = statuses[r];
    if (!s.ok() && !IsConsequence(s)) return world_size > 1 ? s.WithContext(StrCat("rank ", r)) : s;
  }
  return FirstError(statuses);
}

// ---------------------------------------------------------------- CudaExecutor

CudaExecutor::CudaExecutor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaExecutor::~CudaExecutor() = default;

int CudaExecutor::world_size() const { return impl_->world_size; }

StatusOr<RankOutputs> CudaExecutor::Run(const ir::Graph& graph,
                                        const std::vector<TensorMap>& inputs) {
  RankOutputs outputs;
  TPFUSE_RETURN_IF_ERROR(impl_->Execute(graph, inputs, RunMode::kRun, 0, 0, &outputs, nullptr,
                                        &last_fused_strategies_));
  return outputs;
}

StatusOr<std::vector<double>> CudaExecutor::TimeRuns(const ir::Graph& graph,
                                                     const std::vector<TensorMap>& inputs,
                                                     int warmup, int iterations) {
  if (warmup < 0 || iterations < 1)
    return InvalidArgument("TimeRuns: warmup must be >= 0 and iterations >= 1, got ", warmup,
                           " and ", iterations);
  std::vector<double> times;
  TPFUSE_RETURN_IF_ERROR(impl_->Execute(graph, inputs, RunMode::kTime, warmup, iterations, nullptr,
                                        &times, &last_fused_strategies_));
  return times;
}

StatusOr<std::unique_ptr<Executor>> MakeCudaExecutor(int world_size,
                                                     const CudaExecutorOptions& options) {
  if (world_size < 1)
    return InvalidArgument("cuda executor: world size must be >= 1, got ", world_size);
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return Unimplemented(
        "cuda executor: no usable GPU (cudaGetDeviceCount: ", cudaGetErrorString(e),
        "); world size ", world_size, " needs ", world_size, " GPUs");
  }
  if (!options.devices.empty() && int(options.devices.size()) != world_size)
    return InvalidArgument("cuda executor: ", options.devices.size(),
                           " devices given for world size ", world_size);
  if (options.devices.empty() && count < world_size)
    return Unimplemented("cuda executor: world size ", world_size, " needs ", world_size,
                         " GPUs, this machine has ", count);
  for (size_t i = 0; i < options.devices.size(); ++i) {
    const int d = options.devices[i];
    if (d < 0 || d >= count)
      return Unimplemented("cuda executor: device ", d, " (rank ", i,
                           ") does not exist; this machine has ", count, " GPUs");
    for (size_t j = 0; j < i; ++j) {
      if (options.devices[j] == d)
        return InvalidArgument("cuda executor: device ", d, " is given to ranks ", j, " and ", i);
    }
  }
  auto impl = std::make_unique<CudaExecutor::Impl>();
  impl->world_size = world_size;
  impl->options = options;
  TPFUSE_RETURN_IF_ERROR(impl->CreateRankResources().WithContext("cuda executor"));
  return std::unique_ptr<Executor>(new CudaExecutor(std::move(impl)));
}

}  // namespace tpfuse::runtime
