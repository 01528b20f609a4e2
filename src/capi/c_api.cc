// The C ABI (include/tpfuse/tpfuse_c.h) over the C++ API: plain structs in, Status turned into
// a code and the calling thread's last-error message.
#include "tpfuse/tpfuse_c.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "backends/cpu/reference_ops.h"
#include "common/tensor.h"
#include "passes/compile.h"
#include "tpfuse/fused_op.h"
#include "tpfuse/status.h"
#if TPFUSE_HAVE_CUDA
#include "tpfuse/tpfuse.h"
#endif

#ifndef TPFUSE_VERSION
#define TPFUSE_VERSION "0"
#endif

struct tpfuse_comm {
#if TPFUSE_HAVE_CUDA
  std::unique_ptr<tpfuse::Comm> comm;
#endif
};

namespace tpfuse::capi {
namespace {

thread_local std::string last_error;

tpfuse_status_t CodeOf(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return TPFUSE_OK;
    case StatusCode::kInvalidArgument: return TPFUSE_ERR_INVALID_ARGUMENT;
    case StatusCode::kNotFound: return TPFUSE_ERR_NOT_FOUND;
    case StatusCode::kUnimplemented: return TPFUSE_ERR_UNIMPLEMENTED;
    case StatusCode::kFailedPrecondition: return TPFUSE_ERR_FAILED_PRECONDITION;
    case StatusCode::kOutOfRange: return TPFUSE_ERR_OUT_OF_RANGE;
    case StatusCode::kTimeout: return TPFUSE_ERR_TIMEOUT;
    case StatusCode::kCudaError: return TPFUSE_ERR_CUDA;
    case StatusCode::kNcclError: return TPFUSE_ERR_NCCL;
    case StatusCode::kInternal: return TPFUSE_ERR_INTERNAL;
  }
  return TPFUSE_ERR_INTERNAL;
}

// Records the outcome of one entry point for tpfuse_last_error and returns its code.
tpfuse_status_t Report(const Status& status) {
  last_error = status.message();
  return CodeOf(status.code());
}

// Runs an entry point's body; no C++ exception crosses the boundary.
template <class Fn>
tpfuse_status_t Guarded(Fn&& fn) {
  try {
    return Report(fn());
  } catch (const std::bad_alloc&) {
    return Report(Internal("out of host memory"));
  } catch (const std::exception& e) {
    return Report(Internal("unexpected exception: ", e.what()));
  } catch (...) {
    return Report(Internal("unexpected exception"));
  }
}

Status Require(const void* ptr, const char* name) {
  if (ptr == nullptr) return InvalidArgument(name, " is null");
  return Status::Ok();
}

StatusOr<DType> ToDType(int32_t value, const char* field) {
  switch (value) {
    case TPFUSE_DTYPE_BF16: return DType::kBF16;
    case TPFUSE_DTYPE_F16: return DType::kF16;
    case TPFUSE_DTYPE_F32: return DType::kF32;
    case TPFUSE_DTYPE_F8E4M3: return DType::kF8E4M3;
  }
  return InvalidArgument("spec.", field, ": unknown dtype code ", value);
}

// tpfuse_spec_t -> AllreduceRmsnormSpec, validated.
StatusOr<AllreduceRmsnormSpec> ToSpec(const tpfuse_spec_t* c) {
  TPFUSE_RETURN_IF_ERROR(Require(c, "spec"));
  AllreduceRmsnormSpec s;
  TPFUSE_ASSIGN_OR_RETURN(s.act_dtype, ToDType(c->act_dtype, "act_dtype"));
  TPFUSE_ASSIGN_OR_RETURN(s.weight_dtype, ToDType(c->weight_dtype, "weight_dtype"));
  s.hidden = c->hidden;
  s.local = c->local != 0;
  switch (c->has_residual) {
    case TPFUSE_RESIDUAL_NONE: break;
    case TPFUSE_RESIDUAL_ACT: s.has_residual = true; break;
    case TPFUSE_RESIDUAL_F32: s.has_residual = s.residual_f32_in = true; break;
    default: return InvalidArgument("spec.has_residual: unknown residual code ", c->has_residual);
  }
  s.eps = c->eps;
  s.weight_bias = c->weight_bias;
  s.sum_scale = c->sum_scale;
  switch (c->second_sum) {
    case TPFUSE_SECOND_SUM_NONE: break;
    case TPFUSE_SECOND_SUM_ADDED: s.second_sum = true; break;
    case TPFUSE_SECOND_SUM_INTO_RESIDUAL: s.second_sum = s.second_sum_into_residual = true; break;
    default: return InvalidArgument("spec.second_sum: unknown code ", c->second_sum);
  }
  s.first_scale = c->first_scale;
  s.second_scale = c->second_scale;
  if (c->pre_residual_norm != 0 && c->pre_residual_norm != 1)
    return InvalidArgument("spec.pre_residual_norm must be 0 or 1, got ", c->pre_residual_norm);
  s.pre_residual_norm = c->pre_residual_norm == 1;
  // Read only with the norm it belongs to (Validate refuses a pre_eps without it).
  if (s.pre_residual_norm) s.pre_eps = c->pre_eps;
  if (c->has_bias < TPFUSE_BIAS_NONE || c->has_bias > TPFUSE_BIAS_PER_TOKEN)
    return InvalidArgument("spec.has_bias must be TPFUSE_BIAS_NONE (0), TPFUSE_BIAS_ROW (1) or "
                           "TPFUSE_BIAS_PER_TOKEN (2), got ", c->has_bias);
  s.has_bias = c->has_bias != TPFUSE_BIAS_NONE;
  s.bias_per_token = c->has_bias == TPFUSE_BIAS_PER_TOKEN;
  switch (c->quant) {
    case TPFUSE_QUANT_NONE: s.quant = QuantMode::kNone; break;
    case TPFUSE_QUANT_FP8_TENSOR: s.quant = QuantMode::kFp8Tensor; break;
    case TPFUSE_QUANT_FP8_TOKEN: s.quant = QuantMode::kFp8Token; break;
    case TPFUSE_QUANT_FP8_GROUP: s.quant = QuantMode::kFp8Group; break;
    default: return InvalidArgument("spec.quant: unknown quant mode code ", c->quant);
  }
  s.group_size = c->group_size;
  switch (c->scale_layout) {
    case TPFUSE_SCALE_LAYOUT_ROW: s.scale_layout = ScaleLayout::kRow; break;
    case TPFUSE_SCALE_LAYOUT_COL: s.scale_layout = ScaleLayout::kCol; break;
    default: return InvalidArgument("spec.scale_layout: unknown code ", c->scale_layout);
  }
  switch (c->scale_fmt) {
    case TPFUSE_SCALE_FMT_F32: s.scale_fmt = ScaleFormat::kF32; break;
    case TPFUSE_SCALE_FMT_UE8M0: s.scale_fmt = ScaleFormat::kUe8m0; break;
    default: return InvalidArgument("spec.scale_fmt: unknown code ", c->scale_fmt);
  }
  constexpr uint32_t kEmitBits =
      TPFUSE_EMIT_ALLREDUCE | TPFUSE_EMIT_NORM | TPFUSE_EMIT_RESIDUAL | TPFUSE_EMIT_QUANT;
  if (c->emit & ~kEmitBits) return InvalidArgument("spec.emit: unknown bits 0x", std::hex, c->emit & ~kEmitBits);
  s.emit.allreduce = c->emit & TPFUSE_EMIT_ALLREDUCE;
  s.emit.norm = c->emit & TPFUSE_EMIT_NORM;
  s.emit.residual = c->emit & TPFUSE_EMIT_RESIDUAL;
  s.emit.quant = c->emit & TPFUSE_EMIT_QUANT;
  constexpr uint32_t kRoundingBits =
      TPFUSE_ROUNDING_NORM_INPUT_F32 | TPFUSE_ROUNDING_WEIGHT_AFTER_ROUND |
      TPFUSE_ROUNDING_WEIGHT_BIAS_IN_WEIGHT_DTYPE | TPFUSE_ROUNDING_SCALE_OP_SWAPPED |
      TPFUSE_ROUNDING_SCALE_FLOOR_AFTER_DIV | TPFUSE_ROUNDING_UE8M0_FLOOR |
      TPFUSE_ROUNDING_RESIDUAL_OUT_F32 | TPFUSE_ROUNDING_NORM_OUT_F32;
  if (c->rounding & ~kRoundingBits)
    return InvalidArgument("spec.rounding: unknown bits 0x", std::hex, c->rounding & ~kRoundingBits);
  s.rounding.norm_input_f32 = c->rounding & TPFUSE_ROUNDING_NORM_INPUT_F32;
  s.rounding.weight_after_round = c->rounding & TPFUSE_ROUNDING_WEIGHT_AFTER_ROUND;
  s.rounding.weight_bias_in_weight_dtype = c->rounding & TPFUSE_ROUNDING_WEIGHT_BIAS_IN_WEIGHT_DTYPE;
  s.rounding.scale_op_swapped = c->rounding & TPFUSE_ROUNDING_SCALE_OP_SWAPPED;
  s.rounding.scale_floor_after_div = c->rounding & TPFUSE_ROUNDING_SCALE_FLOOR_AFTER_DIV;
  s.rounding.ue8m0_floor = c->rounding & TPFUSE_ROUNDING_UE8M0_FLOOR;
  s.rounding.residual_out_f32 = c->rounding & TPFUSE_ROUNDING_RESIDUAL_OUT_F32;
  s.rounding.norm_out_f32 = c->rounding & TPFUSE_ROUNDING_NORM_OUT_F32;
  TPFUSE_RETURN_IF_ERROR(s.Validate().WithContext("spec"));
  return s;
}

// tokens >= 1 (>= 0 where `min` says so), and tokens x hidden elements of 8 bytes countable:
// a larger count is no buffer anyone holds, and would overflow the sizes computed from it.
Status CheckTokens(int64_t tokens, int64_t hidden, int64_t min = 1) {
  if (tokens < min) return InvalidArgument("tokens must be >= ", min, ", got ", tokens);
  if (hidden > 0 && tokens > std::numeric_limits<int64_t>::max() / 8 / hidden)
    return OutOfRange("tokens ", tokens, " x hidden ", hidden,
                      " overflows the sizes of its buffers");
  return Status::Ok();
}

// A host tensor holding a copy of `bytes`.
HostTensor CopyIn(const void* bytes, DType dtype, std::vector<int64_t> shape) {
  HostTensor t(dtype, std::move(shape));
  std::memcpy(t.data(), bytes, t.nbytes());
  return t;
}

Status ReferenceFused(const tpfuse_spec_t* c_spec, int64_t tokens, int32_t world_size,
                      const void* const* partials, const tpfuse_buffers_t* b) {
  TPFUSE_ASSIGN_OR_RETURN(const AllreduceRmsnormSpec spec, ToSpec(c_spec));
  TPFUSE_RETURN_IF_ERROR(CheckTokens(tokens, spec.hidden));
  if (world_size < 1) return InvalidArgument("world_size must be >= 1, got ", world_size);
  TPFUSE_RETURN_IF_ERROR(Require(partials, "partials"));
  TPFUSE_RETURN_IF_ERROR(Require(b, "buffers"));
  const int ranks = spec.local ? 1 : world_size;
  const std::vector<int64_t> shape = {tokens, spec.hidden};
  std::vector<HostTensor> xs, x2s;
  for (int r = 0; r < ranks; ++r) {
    if (partials[r] == nullptr) return InvalidArgument("partials[", r, "] is null");
    xs.push_back(CopyIn(partials[r], spec.act_dtype, shape));
  }
  for (int r = 0; spec.second_sum && r < ranks; ++r) {
    if (partials[ranks + r] == nullptr)
      return InvalidArgument("partials[", ranks + r, "] (rank ", r, "'s x2 under second_sum) is null");
    x2s.push_back(CopyIn(partials[ranks + r], spec.act_dtype, shape));
  }
  if (spec.has_residual) TPFUSE_RETURN_IF_ERROR(Require(b->residual, "buffers.residual"));
  TPFUSE_RETURN_IF_ERROR(Require(b->weight, "buffers.weight"));
  std::optional<HostTensor> residual, scale;
  if (spec.has_residual) residual = CopyIn(b->residual, spec.residual_in_dtype(), shape);
  const HostTensor w = CopyIn(b->weight, spec.weight_dtype, {spec.hidden});
  std::optional<HostTensor> pre_weight;
  if (spec.pre_residual_norm) {
    TPFUSE_RETURN_IF_ERROR(Require(b->pre_weight, "buffers.pre_weight"));
    pre_weight = CopyIn(b->pre_weight, spec.weight_dtype, {spec.hidden});
  }
  std::optional<HostTensor> bias;
  if (spec.has_bias) {
    TPFUSE_RETURN_IF_ERROR(Require(b->bias, "buffers.bias"));
    bias = spec.bias_per_token ? CopyIn(b->bias, spec.act_dtype, shape)
                               : CopyIn(b->bias, spec.act_dtype, {spec.hidden});
  }
  if (spec.quant == QuantMode::kFp8Tensor) {
    TPFUSE_RETURN_IF_ERROR(Require(b->scale, "buffers.scale"));
    scale = CopyIn(b->scale, DType::kF32, {});
  }

  // Outputs in Contract 3's order, each checked before anything is written.
  std::vector<std::pair<const char*, void*>> outs;
  if (spec.emit.allreduce) outs.emplace_back("allreduce_out", b->allreduce_out);
  if (spec.emit.norm) outs.emplace_back("norm_out", b->norm_out);
  if (spec.emit.residual) outs.emplace_back("residual_out", b->residual_out);
  if (spec.emit.quant) outs.emplace_back("quant_out", b->quant_out);
  if (spec.emit.quant && IsDynamicQuant(spec.quant)) outs.emplace_back("scale_out", b->scale_out);
  for (const auto& [name, ptr] : outs)
    if (ptr == nullptr) return InvalidArgument("buffers.", name, " is null but the spec emits it");

  TPFUSE_ASSIGN_OR_RETURN(std::vector<HostTensor> results,
                          cpu::AllreduceRmsnorm(spec, xs, residual ? &*residual : nullptr, w,
                                                scale ? &*scale : nullptr, x2s,
                                                pre_weight ? &*pre_weight : nullptr, bias ? &*bias : nullptr));
  if (results.size() != outs.size())
    return Internal("reference op returned ", results.size(), " results, expected ", outs.size());
  for (size_t i = 0; i < outs.size(); ++i)
    std::memcpy(outs[i].second, results[i].data(), results[i].nbytes());
  return Status::Ok();
}

char* CopyString(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out == nullptr) throw std::bad_alloc();
  std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

#if TPFUSE_HAVE_CUDA
CommConfig ToConfig(const tpfuse_comm_config_t* c) {
  CommConfig config;
  if (c == nullptr) return config;
  config.max_tokens = c->max_tokens;
  config.max_hidden = c->max_hidden;
  config.oneshot_max_tokens = c->oneshot_max_tokens;
  config.timeout_seconds = c->timeout_seconds;
  config.peer_memory = c->peer_memory != 0;
  config.programmatic_dependent_launch = c->programmatic_dependent_launch != 0;
  if (c->strategy_table != nullptr) config.strategy_table = c->strategy_table;
  return config;
}

FusedBuffers ToBuffers(const tpfuse_buffers_t& b) {
  return FusedBuffers{b.x,        b.residual,     b.weight,    b.scale,     b.allreduce_out,
                      b.norm_out, b.residual_out, b.quant_out, b.scale_out, b.x2, b.pre_weight, b.bias};
}

StatusOr<StrategyRequest> ToStrategy(int32_t s) {
  switch (s) {
    case TPFUSE_STRATEGY_AUTO: return StrategyRequest(std::nullopt);
    case TPFUSE_STRATEGY_ONESHOT: return StrategyRequest(Strategy::kOneShot);
    case TPFUSE_STRATEGY_TWOSHOT: return StrategyRequest(Strategy::kTwoShot);
    case TPFUSE_STRATEGY_NCCL: return StrategyRequest(Strategy::kNccl);
  }
  return InvalidArgument("unknown strategy code ", s);
}
#else
Status NoCuda(const char* what) {
  return Unimplemented(what, ": this libtpfuse was built without CUDA");
}
#endif

Status RequireComm(const tpfuse_comm_t* comm) {
  TPFUSE_RETURN_IF_ERROR(Require(comm, "comm"));
#if TPFUSE_HAVE_CUDA
  if (!comm->comm) return FailedPrecondition("comm has no communicator");
#endif
  return Status::Ok();
}

}  // namespace
}  // namespace tpfuse::capi

using namespace tpfuse;        // NOLINT
using namespace tpfuse::capi;  // NOLINT

extern "C" {

int32_t tpfuse_abi_version(void) { return TPFUSE_C_ABI_VERSION; }
const char* tpfuse_version(void) { return TPFUSE_VERSION; }
const char* tpfuse_last_error(void) { return last_error.c_str(); }

const char* tpfuse_status_name(tpfuse_status_t status) {
  switch (status) {
    case TPFUSE_OK: return "ok";
    case TPFUSE_ERR_INVALID_ARGUMENT: return "invalid argument";
    case TPFUSE_ERR_NOT_FOUND: return "not found";
    case TPFUSE_ERR_UNIMPLEMENTED: return "unimplemented";
    case TPFUSE_ERR_FAILED_PRECONDITION: return "failed precondition";
    case TPFUSE_ERR_OUT_OF_RANGE: return "out of range";
    case TPFUSE_ERR_TIMEOUT: return "timeout";
    case TPFUSE_ERR_CUDA: return "CUDA error";
    case TPFUSE_ERR_NCCL: return "NCCL error";
    case TPFUSE_ERR_INTERNAL: return "internal error";
  }
  return "unknown status";
}

void tpfuse_free(void* ptr) { std::free(ptr); }

void tpfuse_spec_init(tpfuse_spec_t* spec) {
  if (spec == nullptr) return;
  const AllreduceRmsnormSpec d;
  *spec = tpfuse_spec_t{};
  spec->act_dtype = TPFUSE_DTYPE_BF16;
  spec->weight_dtype = TPFUSE_DTYPE_BF16;
  spec->hidden = 0;
  spec->eps = d.eps;
  spec->weight_bias = d.weight_bias;
  spec->sum_scale = d.sum_scale;
  spec->second_sum = TPFUSE_SECOND_SUM_NONE;
  spec->first_scale = d.first_scale;
  spec->second_scale = d.second_scale;
  spec->pre_residual_norm = 0;
  spec->pre_eps = d.pre_eps;
  spec->has_bias = 0;
  spec->quant = TPFUSE_QUANT_NONE;
  spec->group_size = d.group_size;
  spec->scale_layout = TPFUSE_SCALE_LAYOUT_ROW;
  spec->scale_fmt = TPFUSE_SCALE_FMT_F32;
  spec->emit = TPFUSE_EMIT_NORM;
  spec->rounding = 0;
}

tpfuse_status_t tpfuse_spec_validate(const tpfuse_spec_t* spec) {
  return Guarded([&] { return ToSpec(spec).status(); });
}

tpfuse_status_t tpfuse_spec_scale_elements(const tpfuse_spec_t* spec, int64_t tokens,
                                           int64_t* elements) {
  return Guarded([&]() -> Status {
    TPFUSE_RETURN_IF_ERROR(Require(elements, "elements"));
    TPFUSE_ASSIGN_OR_RETURN([[maybe_unused]] const AllreduceRmsnormSpec s, ToSpec(spec));
    TPFUSE_RETURN_IF_ERROR(CheckTokens(tokens, s.hidden, /*min=*/0));
    *elements = s.ScaleElements(tokens);
    return Status::Ok();
  });
}

tpfuse_status_t tpfuse_reference_allreduce_rmsnorm(const tpfuse_spec_t* spec, int64_t tokens,
                                                   int32_t world_size, const void* const* partials,
                                                   const tpfuse_buffers_t* buffers) {
  return Guarded([&] { return ReferenceFused(spec, tokens, world_size, partials, buffers); });
}

void tpfuse_compile_options_init(tpfuse_compile_options_t* options) {
  if (options == nullptr) return;
  *options = tpfuse_compile_options_t{};
  options->world_size = 2;
  options->backend = TPFUSE_BACKEND_CPU;
  options->max_tokens = 0;
  options->fuse_local = TPFUSE_FUSE_LOCAL_AUTO;
  options->source_name = nullptr;
}

tpfuse_status_t tpfuse_compile(const char* module_text, const tpfuse_compile_options_t* options,
                               char** compiled_text, char** report_json) {
  return Guarded([&]() -> Status {
    TPFUSE_RETURN_IF_ERROR(Require(module_text, "module_text"));
    passes::CompileOptions o;
    std::string source = "<input>";
    if (options != nullptr) {
      if (options->backend != TPFUSE_BACKEND_CPU && options->backend != TPFUSE_BACKEND_CUDA)
        return InvalidArgument("options.backend: unknown backend code ", options->backend);
      o.world_size = options->world_size;
      o.max_tokens = options->max_tokens;
      o.caps = options->backend == TPFUSE_BACKEND_CUDA ? CudaFusionCapabilities()
                                                        : CpuFusionCapabilities();
      switch (options->fuse_local) {
        case TPFUSE_FUSE_LOCAL_AUTO: o.fuse_local = passes::FuseLocal::kAuto; break;
        case TPFUSE_FUSE_LOCAL_ON: o.fuse_local = passes::FuseLocal::kOn; break;
        case TPFUSE_FUSE_LOCAL_OFF: o.fuse_local = passes::FuseLocal::kOff; break;
        case TPFUSE_FUSE_LOCAL_INDUCTOR: o.fuse_local = passes::FuseLocal::kInductor; break;
        default: return InvalidArgument("options.fuse_local: unknown code ", options->fuse_local);
      }
      if (options->source_name != nullptr) source = options->source_name;
    }
    TPFUSE_ASSIGN_OR_RETURN(passes::CompileResult compiled,
                            passes::CompileModuleText(module_text, o, source));
    char* text = compiled_text ? CopyString(compiled.text) : nullptr;
    char* report = nullptr;
    try {
      report = report_json ? CopyString(compiled.json) : nullptr;
    } catch (...) {
      std::free(text);
      throw;
    }
    if (compiled_text) *compiled_text = text;
    if (report_json) *report_json = report;
    return Status::Ok();
  });
}

int32_t tpfuse_has_cuda(void) {
#if TPFUSE_HAVE_CUDA
  return 1;
#else
  return 0;
#endif
}

void tpfuse_comm_config_init(tpfuse_comm_config_t* config) {
  if (config == nullptr) return;
  *config = tpfuse_comm_config_t{};
  config->max_tokens = 8192;
  config->max_hidden = 8192;
  config->oneshot_max_tokens = 1024;
  config->timeout_seconds = 5.0;
  config->peer_memory = 1;
  config->programmatic_dependent_launch = 1;
  config->strategy_table = nullptr;
}

tpfuse_status_t tpfuse_get_unique_id(uint8_t* unique_id) {
  return Guarded([&]() -> Status {
    TPFUSE_RETURN_IF_ERROR(Require(unique_id, "unique_id"));
#if TPFUSE_HAVE_CUDA
    TPFUSE_ASSIGN_OR_RETURN(const std::string id, Comm::MakeUniqueId());
    if (id.size() != TPFUSE_UNIQUE_ID_BYTES)
      return Internal("NCCL unique id has ", id.size(), " bytes, expected ", TPFUSE_UNIQUE_ID_BYTES);
    std::memcpy(unique_id, id.data(), id.size());
    return Status::Ok();
#else
    return NoCuda("tpfuse_get_unique_id");
#endif
  });
}

tpfuse_status_t tpfuse_comm_create(const uint8_t* unique_id, int32_t rank, int32_t world_size,
                                   int32_t device, const tpfuse_comm_config_t* config,
                                   tpfuse_comm_t** comm) {
  return Guarded([&]() -> Status {
    TPFUSE_RETURN_IF_ERROR(Require(comm, "comm"));
    *comm = nullptr;
    TPFUSE_RETURN_IF_ERROR(Require(unique_id, "unique_id"));
    if (world_size < 1 || rank < 0 || rank >= world_size)
      return InvalidArgument("rank ", rank, " is not in [0, world_size ", world_size, ")");
#if TPFUSE_HAVE_CUDA
    const std::string id(reinterpret_cast<const char*>(unique_id), TPFUSE_UNIQUE_ID_BYTES);
    TPFUSE_ASSIGN_OR_RETURN(std::unique_ptr<Comm> c,
                            Comm::FromUniqueId(id, rank, world_size, device, ToConfig(config)));
    *comm = new tpfuse_comm{std::move(c)};
    return Status::Ok();
#else
    return NoCuda("tpfuse_comm_create");
#endif
  });
}

tpfuse_status_t tpfuse_comm_from_nccl(void* nccl_comm, const tpfuse_comm_config_t* config,
                                      tpfuse_comm_t** comm) {
  return Guarded([&]() -> Status {
    TPFUSE_RETURN_IF_ERROR(Require(comm, "comm"));
    *comm = nullptr;
    TPFUSE_RETURN_IF_ERROR(Require(nccl_comm, "nccl_comm"));
#if TPFUSE_HAVE_CUDA
    TPFUSE_ASSIGN_OR_RETURN(std::unique_ptr<Comm> c,
                            Comm::FromNccl(static_cast<ncclComm_t>(nccl_comm), ToConfig(config)));
    *comm = new tpfuse_comm{std::move(c)};
    return Status::Ok();
#else
    return NoCuda("tpfuse_comm_from_nccl");
#endif
  });
}

void tpfuse_comm_destroy(tpfuse_comm_t* comm) {
  Guarded([&] {
    delete comm;
    return Status::Ok();
  });
}

tpfuse_status_t tpfuse_comm_rank(const tpfuse_comm_t* comm, int32_t* rank) {
  return Guarded([&]() -> Status {
    TPFUSE_RETURN_IF_ERROR(RequireComm(comm));
    TPFUSE_RETURN_IF_ERROR(Require(rank, "rank"));
#if TPFUSE_HAVE_CUDA
    *rank = comm->comm->rank();
    return Status::Ok();
#else
    return NoCuda("tpfuse_comm_rank");
#endif
  });
}

tpfuse_status_t tpfuse_comm_world_size(const tpfuse_comm_t* comm, int32_t* world_size) {
  return Guarded([&]() -> Status {
    TPFUSE_RETURN_IF_ERROR(RequireComm(comm));
    TPFUSE_RETURN_IF_ERROR(Require(world_size, "world_size"));
#if TPFUSE_HAVE_CUDA
    *world_size = comm->comm->world_size();
    return Status::Ok();
#else
    return NoCuda("tpfuse_comm_world_size");
#endif
  });
}

tpfuse_status_t tpfuse_allreduce_rmsnorm(tpfuse_comm_t* comm, const tpfuse_spec_t* spec,
                                         int64_t tokens, const tpfuse_buffers_t* buffers,
                                         void* stream, int32_t strategy) {
  return Guarded([&]() -> Status {
    TPFUSE_RETURN_IF_ERROR(RequireComm(comm));
    TPFUSE_ASSIGN_OR_RETURN([[maybe_unused]] const AllreduceRmsnormSpec s, ToSpec(spec));
    TPFUSE_RETURN_IF_ERROR(CheckTokens(tokens, s.hidden, /*min=*/0));
    TPFUSE_RETURN_IF_ERROR(Require(buffers, "buffers"));
#if TPFUSE_HAVE_CUDA
    TPFUSE_ASSIGN_OR_RETURN(const StrategyRequest st, ToStrategy(strategy));
    return comm->comm->AllreduceRmsnorm(s, tokens, ToBuffers(*buffers),
                                        static_cast<cudaStream_t>(stream), st);
#else
    return NoCuda("tpfuse_allreduce_rmsnorm");
#endif
  });
}

tpfuse_status_t tpfuse_allreduce_rmsnorm_local(const tpfuse_spec_t* spec, int64_t tokens,
                                               const tpfuse_buffers_t* buffers, void* stream) {
  return Guarded([&]() -> Status {
    TPFUSE_ASSIGN_OR_RETURN([[maybe_unused]] const AllreduceRmsnormSpec s, ToSpec(spec));
    TPFUSE_RETURN_IF_ERROR(CheckTokens(tokens, s.hidden, /*min=*/0));
    TPFUSE_RETURN_IF_ERROR(Require(buffers, "buffers"));
#if TPFUSE_HAVE_CUDA
    return AllreduceRmsnormLocal(s, tokens, ToBuffers(*buffers), static_cast<cudaStream_t>(stream));
#else
    return NoCuda("tpfuse_allreduce_rmsnorm_local");
#endif
  });
}

tpfuse_status_t tpfuse_comm_check_health(tpfuse_comm_t* comm, void* stream) {
  return Guarded([&]() -> Status {
    TPFUSE_RETURN_IF_ERROR(RequireComm(comm));
#if TPFUSE_HAVE_CUDA
    return comm->comm->CheckHealth(static_cast<cudaStream_t>(stream));
#else
    return NoCuda("tpfuse_comm_check_health");
#endif
  });
}

}  // extern "C"
