#include "bench/gpu_support.h"

#if TPFUSE_HAVE_CUDA
#include <nccl.h>
#include <unistd.h>

#include <cctype>
#include <fstream>
#include <sstream>
#include <string>

#include "backends/cuda/cuda_check.h"
#include "backends/cuda/unfused_ops.h"
#include "common/numerics.h"

namespace tpfuse::bench {
namespace {

Status CudaFailure(const char* call, cudaError_t e) {
  return Status(StatusCode::kCudaError, StrCat(call, " failed: ", cudaGetErrorString(e)));
}

// "570.124.06" from /proc/driver/nvidia/version: the first token shaped like a version.
std::string NvidiaDriverVersion() {
  std::ifstream in("/proc/driver/nvidia/version");
  std::string line;
  if (!std::getline(in, line)) return "";
  std::istringstream tokens(line);
  std::string token;
  while (tokens >> token) {
    const bool shaped = !token.empty() && std::isdigit(static_cast<unsigned char>(token[0])) &&
                        token.find('.') != std::string::npos &&
                        token.find_first_not_of("0123456789.") == std::string::npos;
    if (shaped) return token;
  }
  return "";
}

std::string CudaVersionText(int v) { return StrCat(v / 1000, ".", (v % 1000) / 10); }

std::string NcclVersionText(int v) {
  // NCCL_VERSION_CODE: X*1000+Y*100+Z up to 2.8, X*10000+Y*100+Z from 2.9.
  if (v >= 10000) return StrCat(v / 10000, ".", (v % 10000) / 100, ".", v % 100);
  return StrCat(v / 1000, ".", (v % 1000) / 100, ".", v % 100);
}

}  // namespace

// ---------------------------------------------------------------- CUDA graphs

StatusOr<GraphExec> CaptureGraph(cudaStream_t stream, int ops,
                                 const std::function<Status(int)>& enqueue) {
  TPFUSE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
  Status status = Status::Ok();
  for (int j = 0; j < ops && status.ok(); ++j) status = enqueue(j);
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  if (!status.ok()) {
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    return status.WithContext("while capturing a CUDA graph");
  }
  if (ended != cudaSuccess) {
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
    return CudaFailure("cudaStreamEndCapture", ended);
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  if (instantiated != cudaSuccess) return CudaFailure("cudaGraphInstantiate", instantiated);
  return GraphExec(exec);
}

// ---------------------------------------------------------------- the unfused epilogue

FusedBuffers FusedBuffersOfSet(const AllreduceRmsnormSpec& spec, char* set, const SetLayout& l,
                               const void* weight, const float* scale) {
  FusedBuffers b;
  b.x = set + l.x;
  b.residual = set + l.residual;
  b.weight = weight;
  b.scale = spec.quant == QuantMode::kFp8Tensor ? scale : nullptr;
  b.norm_out = spec.emit.norm ? set + l.norm_out : nullptr;
  b.residual_out = spec.emit.residual ? set + l.residual_out : nullptr;
  b.quant_out = spec.emit.quant ? set + l.quant : nullptr;
  b.scale_out = spec.emit.quant && IsDynamicQuant(spec.quant)
                    ? reinterpret_cast<float*>(set + l.scale)
                    : nullptr;
  return b;
}

Status EnqueueUnfusedEpilogue(const AllreduceRmsnormSpec& spec, int64_t tokens, const void* a,
                              char* set, const SetLayout& l, const void* weight,
                              const float* scale, cudaStream_t stream) {
  if (spec.act_dtype != DType::kBF16 || spec.weight_dtype != DType::kBF16)
    return InvalidArgument("the bench's unfused path runs bf16 activations and weight only");
  auto tensor = [](const void* data, DType dtype, std::vector<int64_t> shape) {
    return cuda::DeviceTensor{const_cast<void*>(data), dtype, std::move(shape)};
  };
  const int64_t t = tokens, h = spec.hidden;
  const std::vector<int64_t> th = {t, h};
  const cuda::DeviceTensor norm = tensor(set + l.norm_out, DType::kBF16, th);
  TPFUSE_RETURN_IF_ERROR(cuda::LaunchFusedAddRmsNorm(
      tensor(a, DType::kBF16, th), tensor(set + l.residual, DType::kBF16, th),
      tensor(weight, DType::kBF16, {h}), spec.eps, spec.weight_bias, norm,
      tensor(set + l.residual_out, DType::kBF16, th), stream));
  const cuda::DeviceTensor q = tensor(set + l.quant, DType::kF8E4M3, th);
  switch (spec.quant) {
    case QuantMode::kNone: return Status::Ok();
    case QuantMode::kFp8Tensor:
      return cuda::LaunchQuantFp8Tensor(norm, tensor(scale, DType::kF32, {1}), spec.QuantDivides(),
                                        q, stream);
    case QuantMode::kFp8Token:
    case QuantMode::kFp8Group: {
      const cuda::DeviceTensor s =
          tensor(set + l.scale, DType::kF32, {t, spec.ScaleGroupsPerRow()});
      return cuda::LaunchQuantFp8Dynamic(norm, spec.quant_params(), q, s, stream);
    }
  }
  return Internal("unhandled quant mode");
}

// ---------------------------------------------------------------- inputs

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::vector<uint16_t> RandomBf16(size_t n, uint64_t seed, float lo, float hi) {
  std::vector<uint16_t> out(n);
  uint64_t state = seed;
  for (size_t i = 0; i < n; ++i) {
    const float u = float(SplitMix64(state) >> 40) * 0x1p-24f;
    uint16_t bits = FloatToBf16(lo + (hi - lo) * u);
    if ((bits & 0x7fffu) == 0) bits = FloatToBf16(0.0625f);
    out[i] = bits;
  }
  return out;
}

// ---------------------------------------------------------------- the machine

StatusOr<MachineInfo> QueryMachine(int device) {
  MachineInfo m;
  cudaDeviceProp prop;
  TPFUSE_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  m.gpu_name = prop.name;
  TPFUSE_CUDA_CHECK(cudaGetDeviceCount(&m.gpu_count));
  int driver = 0, runtime_version = 0, nccl = 0, l2 = 0;
  TPFUSE_CUDA_CHECK(cudaDriverGetVersion(&driver));
  TPFUSE_CUDA_CHECK(cudaRuntimeGetVersion(&runtime_version));
  TPFUSE_NCCL_CHECK(ncclGetVersion(&nccl));
  m.cuda_driver = CudaVersionText(driver);
  m.cuda_runtime = CudaVersionText(runtime_version);
  m.nccl = NcclVersionText(nccl);
  m.driver = NvidiaDriverVersion();
  if (m.driver.empty()) m.driver = StrCat("unknown (CUDA ", m.cuda_driver, ")");
  TPFUSE_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
  TPFUSE_CUDA_CHECK(cudaDeviceGetAttribute(&m.sm_count, cudaDevAttrMultiProcessorCount, device));
  m.l2_bytes = l2;
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) == 0) m.host = host;
  return m;
}

}  // namespace tpfuse::bench

#endif  // TPFUSE_HAVE_CUDA
