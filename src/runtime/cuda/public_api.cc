// The public runtime API (include/tpfuse/tpfuse.h) over the CUDA backend and the dispatcher.
#include <cstring>

#include "backends/cuda/allreduce_rmsnorm.h"
#include "backends/cuda/cuda_check.h"
#include "runtime/cuda/fused_dispatch.h"
#include "tpfuse/tpfuse.h"

namespace tpfuse {

struct Comm::Impl {
  std::unique_ptr<cuda::Communicator> comm;
  runtime::StrategyTable table;
  cuda::LaunchOptions launch;
};

namespace {

cuda::CommOptions ToOptions(const CommConfig& c) {
  cuda::CommOptions o;
  o.max_tokens = c.max_tokens;
  o.max_hidden = c.max_hidden;
  o.oneshot_max_tokens = c.oneshot_max_tokens;
  o.timeout_seconds = c.timeout_seconds;
  o.peer_memory = c.peer_memory;
  return o;
}

StatusOr<runtime::StrategyTable> TableFor(const CommConfig& c) {
  if (!c.strategy_table.empty()) return runtime::StrategyTable::Load(c.strategy_table);
  return runtime::DefaultStrategyTable();
}

Status CheckConfig(const CommConfig& c) {
  if (c.max_tokens < 1 || c.max_hidden < 8 || c.oneshot_max_tokens < 0)
    return InvalidArgument("CommConfig: max_tokens >= 1, max_hidden >= 8 and oneshot_max_tokens >= 0 required");
  if (c.timeout_seconds < 0) return InvalidArgument("CommConfig: timeout_seconds must be >= 0");
  return Status::Ok();
}

}  // namespace

Comm::Comm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Comm::~Comm() = default;

StatusOr<std::unique_ptr<Comm>> Comm::FromNccl(ncclComm_t nccl, const CommConfig& config) {
  TPFUSE_RETURN_IF_ERROR(CheckConfig(config));
  auto impl = std::make_unique<Impl>();
  TPFUSE_ASSIGN_OR_RETURN(impl->table, TableFor(config));
  TPFUSE_ASSIGN_OR_RETURN(impl->comm, cuda::Communicator::FromNccl(nccl, ToOptions(config)));
  impl->launch.pdl = config.programmatic_dependent_launch;
  return std::unique_ptr<Comm>(new Comm(std::move(impl)));
}

StatusOr<std::unique_ptr<Comm>> Comm::FromUniqueId(const std::string& unique_id, int rank, int world_size,
                                                   int device, const CommConfig& config) {
  TPFUSE_RETURN_IF_ERROR(CheckConfig(config));
  ncclUniqueId id;
  if (unique_id.size() != sizeof(id.internal))
    return InvalidArgument("unique id must be ", sizeof(id.internal), " bytes, got ", unique_id.size());
  std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));
  auto impl = std::make_unique<Impl>();
  TPFUSE_ASSIGN_OR_RETURN(impl->table, TableFor(config));
  TPFUSE_ASSIGN_OR_RETURN(impl->comm, cuda::Communicator::FromUniqueId(id, rank, world_size, device, ToOptions(config)));
  impl->launch.pdl = config.programmatic_dependent_launch;
  return std::unique_ptr<Comm>(new Comm(std::move(impl)));
}

StatusOr<std::string> Comm::MakeUniqueId() {
  ncclUniqueId id;
  TPFUSE_NCCL_CHECK(ncclGetUniqueId(&id));
  return std::string(id.internal, sizeof(id.internal));
}

int Comm::rank() const { return impl_->comm->rank(); }
int Comm::world_size() const { return impl_->comm->world_size(); }
std::string Comm::why_no_peer_memory() const {
  return impl_->comm->has_peer_memory() ? std::string() : impl_->comm->why_no_peer_memory();
}

Status Comm::AllreduceRmsnorm(const AllreduceRmsnormSpec& spec, int64_t tokens, const FusedBuffers& buffers,
                              cudaStream_t stream, StrategyRequest strategy) {
  if (!strategy)
    return runtime::LaunchFusedAuto(impl_->table, *impl_->comm, spec, tokens, buffers, stream, impl_->launch);
  return cuda::LaunchAllreduceRmsnorm(*impl_->comm, spec, tokens, buffers, *strategy, stream, impl_->launch);
}

Strategy Comm::Choose(const AllreduceRmsnormSpec& spec, int64_t tokens) const {
  return runtime::ChooseStrategy(impl_->table, *impl_->comm, spec, tokens);
}

Status Comm::CheckHealth(cudaStream_t stream) { return impl_->comm->CheckHealth(stream); }

Status AllreduceRmsnormLocal(const AllreduceRmsnormSpec& spec, int64_t tokens,
                             const FusedBuffers& buffers, cudaStream_t stream) {
  return cuda::LaunchLocalAllreduceRmsnorm(spec, tokens, buffers, stream);
}

}  // namespace tpfuse
