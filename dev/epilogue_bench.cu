// The fused op's per-row epilogue on one GPU: versions side by side against the copy roofline,
// with a bitwise check of the production kernel against a CPU reference of Contract 3.
//
//   v0     the epilogue kernel before this rewrite (dev/v0/): 512-thread rows, grid
//          min(T, 4 x resident), the static scale loaded after the norm
//   grid   the production kernel (src/backends/cuda/kernels/allreduce_rmsnorm.cuh): <= 256
//          threads per row, one block per row, weights before griddepcontrol.wait, x, residual
//          and scale loaded together
//   pers   the same kernel on a persistent grid (resident blocks, rows strided)
//   nopdl  the same kernel launched without programmatic dependent launch
//   copy   cudaMemcpyAsync of (read + write bytes) / 2: the same traffic as the fused op
//
// --phases: where one row's time goes at T = 1. The production RowEpilogue with a probe that
// stamps %clock64 on row thread 0 at each RowPhase (and at entry and after the wait), each stamp
// taken once the phase's value is computed, for two row owners (one block; the cluster of the
// launcher's split at T = 1, stamped in its block 0, where H has one: "pair" where it holds a row
// thread's two vectors in two threads); single launches with a warm L2, the
// median over 50 of each phase's cycles. (The probe is a template argument; the production
// instantiations take the empty one and compile to the same SASS.) Columns "vectors": y, and
// the quantization of static modes or the group scales; "dyn q": the dynamic modes' q (for
// fp8_token after the row's max), with their scale stores.
//
// --owners [H,...] [T,...] [nores]: the launcher (with the residual, or "nores": the norm alone)
// under each row owner it can be forced to (one block, a
// cluster, packed rows, the pair cluster at each size), checked bitwise against its own pick and
// timed beside it, and how many of each run at once: the measurements behind the launcher's rule
// (RowOwnerRule).
//
// --grid [H,...] [T,...]: one block per row against fewer blocks striding over the rows (TimeGrids).
//
// --packed [H,...] [T,...]: packed rows in each group width the launcher can be forced to
// (TimePackedLanes).
//
// Timing: CUDA graph of 20 launches over rotating buffer sets (more than 2 x L2 of inputs and
// outputs together, at least 4 sets), the L2 overwritten before each replay (as `tpfuse bench`:
// no set is read from the L2), 5 warm-up replays, median of 30 replays, per op.
// Bytes (minimum): read x and residual (2 x 2 B), write residual_out (2 B), q (1 B), norm (2 B,
// fp8_group only: "+ norm"), scales (4 B per group), none: norm (2 B); "nores" (--grid's norm
// alone): no residual read or written.
//
// Build (see dev/README.md): nvcc -O3 -std=c++20 -gencode arch=compute_90a,code=sm_90a ...
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backends/cuda/allreduce_rmsnorm.h"
#include "backends/cuda/launch/allreduce_rmsnorm_kernels.h"
#include "common/numerics.h"
#include "common/quotient.h"
#include "common/row_layout.h"
#include "dev/v0/allreduce_rmsnorm_v0.cuh"

using namespace tpfuse;

#define CHECK(x)                                                                          \
  do {                                                                                    \
    const cudaError_t check_err_ = (x);                                                   \
    if (check_err_ != cudaSuccess) {                                                      \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x,                      \
                   cudaGetErrorString(check_err_));                                       \
      std::exit(1);                                                                       \
    }                                                                                     \
  } while (0)

namespace {

// The production epilogue kernels the bench times (the recipe read at run time).
using RuntimeEpilogue = cuda::EpilogueFamily<cuda::KernelRecipe::kRuntime>;

// ---------------------------------------------------------------- CPU reference (Contract 3)

float Bf(uint16_t b) { return Bf16ToFloat(b); }

struct Recipe {
  bool norm_f32 = false, after_round = false, bias_wdtype = false, swapped = false;
};

struct Case {
  int64_t H;
  QuantMode quant;
  bool norm_with_quant;  // emit norm too (fp8_group + norm)
  bool ue8m0 = false, col = false;
  float weight_bias = 0.0f;
  DType wdtype = DType::kBF16;
  Recipe recipe;
  bool residual = true;  // false: the norm alone (no residual in or out); --grid's case only (the
                         // phases, the timing modes and CheckCase read and check the residual)
};

AllreduceRmsnormSpec SpecOf(const Case& c) {
  AllreduceRmsnormSpec s;
  s.act_dtype = DType::kBF16;
  s.weight_dtype = c.wdtype;
  s.hidden = c.H;
  s.local = true;
  s.has_residual = c.residual;
  s.eps = 1e-6f;
  s.weight_bias = c.weight_bias;
  s.quant = c.quant;
  s.group_size = c.H % 128 == 0 ? 128 : 64;  // H 2880 = 45 groups of 64
  s.scale_layout = c.col ? ScaleLayout::kCol : ScaleLayout::kRow;
  s.scale_fmt = c.ue8m0 ? ScaleFormat::kUe8m0 : ScaleFormat::kF32;
  s.emit.residual = c.residual;
  s.emit.norm = c.quant == QuantMode::kNone || c.norm_with_quant;
  s.emit.quant = c.quant != QuantMode::kNone;
  s.rounding.norm_input_f32 = c.recipe.norm_f32;
  s.rounding.weight_after_round = c.recipe.after_round;
  s.rounding.weight_bias_in_weight_dtype = c.recipe.bias_wdtype;
  s.rounding.scale_op_swapped = c.recipe.swapped;
  return s;
}

struct HostOut {
  std::vector<uint16_t> res, norm;
  std::vector<uint8_t> q;
  std::vector<float> s;
};

float RoundBf(float v) { return Bf(FloatToBf16(v)); }

HostOut Reference(const AllreduceRmsnormSpec& spec, int64_t T, const std::vector<uint16_t>& x,
                  const std::vector<uint16_t>& res, const std::vector<float>& w, float scale) {
  const int64_t H = spec.hidden;
  const int64_t G = spec.ScaleGroupsPerRow();
  HostOut o;
  o.res.resize(size_t(T * H));
  o.norm.resize(size_t(T * H));
  o.q.resize(size_t(T * H));
  o.s.assign(size_t(spec.ScaleElements(T)), 0.0f);
  std::vector<float> wp(static_cast<size_t>(H));
  for (int64_t c = 0; c < H; ++c) {
    float v = w[size_t(c)];
    if (spec.weight_bias != 0.0f) {
      v = v + spec.weight_bias;
      if (spec.rounding.weight_bias_in_weight_dtype && spec.weight_dtype == DType::kBF16) v = RoundBf(v);
    }
    wp[size_t(c)] = v;
  }
  const size_t hn = static_cast<size_t>(H);
  std::vector<float> u(hn), sq(hn), y(hn);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < H; ++c) {
      const size_t i = size_t(t * H + c);
      const float hf = Bf(x[i]) + Bf(res[i]);
      o.res[i] = FloatToBf16(hf);
      u[size_t(c)] = spec.rounding.norm_input_f32 ? hf : Bf(o.res[i]);
      sq[size_t(c)] = u[size_t(c)] * u[size_t(c)];
    }
    const float total = RowSumInKernelOrder(sq.data(), H);
    const float r = 1.0f / std::sqrt(total / float(H) + spec.eps);
    for (int64_t c = 0; c < H; ++c) {
      float n = u[size_t(c)] * r;
      if (spec.rounding.weight_after_round) n = RoundBf(n);
      const uint16_t yb = FloatToBf16(n * wp[size_t(c)]);
      o.norm[size_t(t * H + c)] = yb;
      y[size_t(c)] = Bf(yb);
    }
    const bool divides = spec.QuantDivides();
    if (spec.quant == QuantMode::kFp8Tensor) {
      const float inv = 1.0f / scale;
      for (int64_t c = 0; c < H; ++c)
        o.q[size_t(t * H + c)] = FloatToFp8E4M3(divides ? y[size_t(c)] / scale : y[size_t(c)] * inv);
    } else if (IsDynamicQuant(spec.quant)) {
      const int64_t g = spec.quant == QuantMode::kFp8Token ? H : spec.group_size;
      for (int64_t grp = 0; grp < H / g; ++grp) {
        float amax = 0.0f;
        for (int64_t c = grp * g; c < (grp + 1) * g; ++c) amax = std::max(amax, std::fabs(y[size_t(c)]));
        float s = std::max(amax, 1e-10f) / 448.0f;
        if (spec.scale_fmt == ScaleFormat::kUe8m0) s = RoundUpToPowerOfTwo(s);
        const float inv = 1.0f / s;
        for (int64_t c = grp * g; c < (grp + 1) * g; ++c)
          o.q[size_t(t * H + c)] = FloatToFp8E4M3(divides ? y[size_t(c)] / s : y[size_t(c)] * inv);
        const int64_t sidx = spec.scale_layout == ScaleLayout::kCol ? grp * PaddedScaleTokens(T) + t : t * G + grp;
        o.s[size_t(sidx)] = s;
      }
    }
  }
  return o;
}

// ---------------------------------------------------------------- device buffers

struct Set {
  void *x, *res, *res_out, *norm, *q;
  float* s;
};

struct Buffers {
  std::vector<Set> sets;
  void* w = nullptr;
  float* scale = nullptr;
  std::vector<void*> owned;

  void* Alloc(size_t bytes) {
    void* p = nullptr;
    CHECK(cudaMalloc(&p, std::max<size_t>(bytes, 256)));
    owned.push_back(p);
    return p;
  }
  ~Buffers() {
    for (void* p : owned) cudaFree(p);
  }
};

size_t MinBytes(const AllreduceRmsnormSpec& spec, int64_t T) {
  const size_t e = size_t(T * spec.hidden);
  size_t bytes = 2 * e;                                   // x
  if (spec.has_residual) bytes += 4 * e;                  // residual in, residual_out
  if (spec.emit.norm) bytes += 2 * e;
  if (spec.emit.quant) bytes += e + 4 * size_t(spec.ScaleElements(T)) * IsDynamicQuant(spec.quant);
  return bytes;
}

float Median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// 2 x L2, overwritten before every replay: each replay reads its sets from memory, not from the
// L2 (20 sets of a small T fit in it), as `tpfuse bench` measures.
void FlushL2(cudaStream_t stream) {
  static void* flush = nullptr;
  static size_t bytes = 0;
  static unsigned count = 0;
  if (!flush) {
    int l2 = 0;
    CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
    bytes = 2 * size_t(l2);
    CHECK(cudaMalloc(&flush, bytes));
  }
  CHECK(cudaMemsetAsync(flush, int(++count & 0xff), bytes, stream));
}

// Median µs per op of `launch(i)` for i = 0..19 captured in one graph, the L2 overwritten before
// each replay.
template <class Launch>
float TimeGraph(cudaStream_t stream, Launch launch) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
  for (int i = 0; i < 20; ++i) launch(i);
  CHECK(cudaStreamEndCapture(stream, &graph));
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 5; ++i) {
    FlushL2(stream);
    CHECK(cudaGraphLaunch(exec, stream));
  }
  std::vector<float> ms;
  for (int i = 0; i < 30; ++i) {
    FlushL2(stream);
    CHECK(cudaEventRecord(a, stream));
    CHECK(cudaGraphLaunch(exec, stream));
    CHECK(cudaEventRecord(b, stream));
    CHECK(cudaEventSynchronize(b));
    float t = 0;
    CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  CHECK(cudaGetLastError());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return Median(ms) * 1000.0f / 20.0f;
}

cuda::FusedKernelParams ParamsFor(const AllreduceRmsnormSpec& spec, int64_t T, const Set& s,
                                  const Buffers& b) {
  cuda::FusedKernelParams p{};
  p.x = s.x;
  p.residual = s.res;
  p.weight = b.w;
  p.scale = b.scale;
  p.source = cuda::RowSource::kLocal;
  p.norm_out = spec.emit.norm ? s.norm : nullptr;
  p.residual_out = s.res_out;
  p.quant_out = spec.emit.quant ? static_cast<uint8_t*>(s.q) : nullptr;
  p.scale_out = spec.emit.quant && IsDynamicQuant(spec.quant) ? s.s : nullptr;
  p.tokens = T;
  p.hidden = int(spec.hidden);
  p.vecs_per_row = int(spec.hidden / 8);
  p.weight_dtype = spec.weight_dtype;
  p.eps = spec.eps;
  p.weight_bias = spec.weight_bias;
  p.group_vecs = spec.quant == QuantMode::kFp8Group ? spec.group_size / 8 : 1;
  p.groups_per_row = int(spec.ScaleGroupsPerRow());
  p.scale_col_major = spec.scale_layout == ScaleLayout::kCol;
  p.scale_ue8m0 = spec.scale_fmt == ScaleFormat::kUe8m0;
  p.scale_tokens_padded = PaddedScaleTokens(T);
  p.scale_pad_rows = p.scale_col_major ? int(p.scale_tokens_padded - T) : 0;
  p.norm_input_f32 = spec.rounding.norm_input_f32;
  p.weight_after_round = spec.rounding.weight_after_round;
  p.bias_in_weight_dtype = spec.rounding.weight_bias_in_weight_dtype;
  p.quant_divides = spec.QuantDivides();
  p.world_size = 1;
  return p;
}

cuda::v0::FusedKernelParams V0ParamsFor(const AllreduceRmsnormSpec& spec, int64_t T, const Set& s,
                                        const Buffers& b) {
  cuda::v0::FusedKernelParams p{};
  p.x = s.x;
  p.reduced = s.x;
  p.residual = s.res;
  p.weight = b.w;
  p.scale = b.scale;
  p.norm_out = spec.emit.norm ? s.norm : nullptr;
  p.residual_out = s.res_out;
  p.quant_out = spec.emit.quant ? static_cast<uint8_t*>(s.q) : nullptr;
  p.scale_out = spec.emit.quant && IsDynamicQuant(spec.quant) ? s.s : nullptr;
  p.tokens = T;
  p.hidden = int(spec.hidden);
  p.vecs_per_row = int(spec.hidden / 8);
  p.weight_dtype = spec.weight_dtype;
  p.eps = spec.eps;
  p.weight_bias = spec.weight_bias;
  p.group_vecs = spec.quant == QuantMode::kFp8Group ? spec.group_size / 8 : 1;
  p.groups_per_row = int(spec.ScaleGroupsPerRow());
  p.scale_col_major = spec.scale_layout == ScaleLayout::kCol;
  p.scale_ue8m0 = spec.scale_fmt == ScaleFormat::kUe8m0;
  p.scale_tokens_padded = PaddedScaleTokens(T);
  p.scale_pad_rows = p.scale_col_major ? int(p.scale_tokens_padded - T) : 0;
  p.world_size = 1;
  return p;
}

using V0Fn = void (*)(cuda::v0::FusedKernelParams);

template <int kVec>
V0Fn V0KernelFor(QuantMode q) {
  using B = __nv_bfloat16;
  switch (q) {
    case QuantMode::kNone: return cuda::v0::AllreduceEpilogueKernel<B, kVec, QuantMode::kNone>;
    case QuantMode::kFp8Tensor: return cuda::v0::AllreduceEpilogueKernel<B, kVec, QuantMode::kFp8Tensor>;
    case QuantMode::kFp8Token: return cuda::v0::AllreduceEpilogueKernel<B, kVec, QuantMode::kFp8Token>;
    case QuantMode::kFp8Group: return cuda::v0::AllreduceEpilogueKernel<B, kVec, QuantMode::kFp8Group>;
  }
  return nullptr;
}

struct V0Layout {
  int threads, vecs;
};
V0Layout V0LayoutOf(int64_t H) {
  const int vecs = int(H / 8);
  int per = 1;
  while (per * 512 < vecs) per *= 2;
  return {((vecs + per - 1) / per + 31) / 32 * 32, per};
}

V0Fn V0Kernel(int vecs, QuantMode q) {
  return vecs == 1 ? V0KernelFor<1>(q) : vecs == 2 ? V0KernelFor<2>(q) : V0KernelFor<4>(q);
}

int Resident(const void* fn, int threads) {
  int per_sm = 0, sms = 0;
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, threads, 0));
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  return per_sm * sms;
}

void Launch(cuda::FusedKernelFn fn, const cuda::FusedKernelParams& p, int64_t grid, int threads,
            bool pdl, cudaStream_t stream) {
  cudaLaunchConfig_t config{};
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.gridDim = dim3(unsigned(grid));
  config.blockDim = dim3(threads);
  config.stream = stream;
  config.attrs = pdl ? &attribute : nullptr;
  config.numAttrs = pdl ? 1 : 0;
  CHECK(cudaLaunchKernelEx(&config, fn, p));
}

std::string CaseName(const Case& c) {
  std::string n = std::string(QuantModeName(c.quant));
  if (c.norm_with_quant) n += "+norm";
  if (!c.residual) n += " nores";
  return n;
}

// ---------------------------------------------------------------- phases of one row

constexpr int kStamps = 8;  // 0 entry, 1 after the wait, 2..6 RowPhase, 7 exit

// Stamps are taken by row thread 0 (thread 0 of the block, or of the cluster's block 0; with
// ClusterPairRow its part 1, whose chain is the longer).
template <typename Span>
__device__ __forceinline__ bool StampThread() {
  if constexpr (cuda::kPairSpan<Span>) return Span::Thread() == Span::RowThreads();
  else return Span::Thread() == 0;
}

template <typename Span>
struct ClockProbe {
  long long* stamps;
  __device__ __forceinline__ void operator()(cuda::RowPhase phase, float value) const {
    asm volatile("" ::"f"(value) : "memory");  // the value exists, earlier stores are issued
    if (StampThread<Span>()) stamps[2 + int(phase)] = clock64();
  }
};

template <typename Span>
__device__ __forceinline__ void Stamp(long long* stamps, int i) {
  asm volatile("" ::: "memory");
  if (StampThread<Span>()) stamps[i] = clock64();
}

// AllreduceEpilogueKernel for one row (T = 1, kLocal, the run-time recipe), with the probe,
// under each row owner (a cluster: launched with the cluster dimension, weights held); the row
// is run twice, the second time into stamps + kStamps (the same code again: instruction caches
// warm).
template <int kVec, QuantMode kQuant, typename Span>
__global__ void __launch_bounds__(cuda::kSpanMaxThreads<Span>, cuda::kSpanMinBlocks<Span, kVec, cuda::RuntimeRecipe>)
    PhaseKernel(const cuda::FusedKernelParams p, long long* all_stamps) {
  using T = __nv_bfloat16;
  long long* stamps = all_stamps;
  Stamp<Span>(stamps, 0);
  __shared__ __align__(8) float smem[4][32];
  constexpr bool kHeld = kVec == 1 || cuda::kClusterSpan<Span>;
  __shared__ uint4 weight_vectors[kHeld ? 1 : kVec * kMaxRowThreads];
  Span::Arrive();
  cuda::RowWeights<kVec, kHeld, Span> weights;
  weights.Preload(p, weight_vectors);
  cuda::WaitForPreviousKernel();
  cuda::AllowNextKernel();
  weights.Ready();
  Span::Wait();
  Stamp<Span>(stamps, 1);
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1) {
      stamps = all_stamps + kStamps;
      Stamp<Span>(stamps, 1);
    }
    uint4 res[kVec], a[kVec];
    const float static_scale = cuda::LoadStaticScale<kQuant>(p);
    cuda::LoadResidual<kVec, Span>(p, 0, res);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int v = cuda::RowVectors<kVec, Span>::Index(k);
      a[k] = v < p.vecs_per_row ? cuda::LoadGlobal(static_cast<const uint4*>(p.x) + v) : make_uint4(0, 0, 0, 0);
    }
    cuda::RowEpilogue<T, kVec, kQuant>(p, 0, a, res, weights, static_scale, smem, pass, ClockProbe<Span>{stamps});
    Stamp<Span>(stamps, 7);
  }
}

using PhaseFn = void (*)(cuda::FusedKernelParams, long long*);

template <int kVec, typename Span>
PhaseFn PhaseKernelFor(QuantMode q) {
  switch (q) {
    case QuantMode::kNone: return PhaseKernel<kVec, QuantMode::kNone, Span>;
    case QuantMode::kFp8Tensor: return PhaseKernel<kVec, QuantMode::kFp8Tensor, Span>;
    case QuantMode::kFp8Token: return PhaseKernel<kVec, QuantMode::kFp8Token, Span>;
    case QuantMode::kFp8Group: return PhaseKernel<kVec, QuantMode::kFp8Group, Span>;
  }
  return nullptr;
}
template <typename Span>
PhaseFn PhaseKernelFor(int vecs_per_thread, QuantMode q) {
  return vecs_per_thread == 1 ? PhaseKernelFor<1, Span>(q)
         : vecs_per_thread == 2 ? PhaseKernelFor<2, Span>(q) : PhaseKernelFor<4, Span>(q);
}

// Median cycles of each phase of one row at T = 1, printed as two table rows: the first run of
// the row in the launch and the second. cluster: the row over a thread block cluster of the
// launcher's split (RowClusterBlocks; ClusterPairRow for rows of two vectors per row thread, as
// the launcher's rule takes at T = 1 for the dynamic modes), stamped on the cluster's block 0.
void PrintPhases(const Case& c, bool cluster, cudaStream_t stream, float cycles_per_us) {
  const AllreduceRmsnormSpec spec = SpecOf(c);
  const RowLayout l = MakeRowLayout(c.H);
  const int blocks = cluster ? RowClusterBlocks(l, 8, cuda::kMaxClusterBlockThreads) : 1;
  if (blocks <= 1 && cluster) return;  // no split of this row
  const int per_row_thread = cluster && l.vecs_per_thread == 2 ? 2 : 1;
  PhaseFn fn = !cluster              ? PhaseKernelFor<cuda::BlockRow>(l.vecs_per_thread, c.quant)
               : per_row_thread == 2 ? PhaseKernelFor<1, cuda::ClusterPairRow>(c.quant)
                                     : PhaseKernelFor<cuda::ClusterRow>(l.vecs_per_thread, c.quant);
  Buffers b;
  Set s{};
  const size_t e = size_t(c.H);
  s.x = b.Alloc(e * 2);
  s.res = b.Alloc(e * 2);
  s.res_out = b.Alloc(e * 2);
  s.norm = b.Alloc(e * 2);
  s.q = b.Alloc(e);
  s.s = static_cast<float*>(b.Alloc(size_t(spec.ScaleElements(1)) * 4 + 16));
  std::vector<uint16_t> host(e);
  std::mt19937 rng(uint32_t(c.H));
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (auto& v : host) v = FloatToBf16(d(rng));
  CHECK(cudaMemcpy(s.x, host.data(), e * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(s.res, host.data(), e * 2, cudaMemcpyHostToDevice));
  b.w = b.Alloc(e * 2);
  for (auto& v : host) v = FloatToBf16(1.0f + 0.1f * d(rng));
  CHECK(cudaMemcpy(b.w, host.data(), e * 2, cudaMemcpyHostToDevice));
  const float scale = 0.02f;
  b.scale = static_cast<float*>(b.Alloc(4));
  CHECK(cudaMemcpy(b.scale, &scale, 4, cudaMemcpyHostToDevice));
  b.sets.push_back(s);
  long long* stamps = static_cast<long long*>(b.Alloc(2 * kStamps * sizeof(long long)));
  std::vector<std::vector<float>> cycles(2 * kStamps);
  for (int rep = 0; rep < 60; ++rep) {
    CHECK(cudaMemsetAsync(stamps, 0, 2 * kStamps * sizeof(long long), stream));  // ordered with the launch
    cudaLaunchConfig_t config{};
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = unsigned(blocks);
    attr.val.clusterDim.y = attr.val.clusterDim.z = 1;
    config.gridDim = dim3(blocks);
    config.blockDim = dim3(l.threads / blocks * per_row_thread);
    config.stream = stream;
    config.attrs = &attr;
    config.numAttrs = cluster ? 1 : 0;
    CHECK(cudaLaunchKernelEx(&config, fn, ParamsFor(spec, 1, s, b), stamps));
    long long h[2 * kStamps];
    CHECK(cudaMemcpyAsync(h, stamps, sizeof(h), cudaMemcpyDeviceToHost, stream));
    CHECK(cudaStreamSynchronize(stream));
    if (rep < 10) continue;  // warm-up: code, L2, clocks
    for (int pass = 0; pass < 2; ++pass) {
      const long long* t = h + pass * kStamps;
      int prev = pass == 0 ? 0 : 1;
      for (int i = pass == 0 ? 1 : 2; i < kStamps; ++i) {
        cycles[pass * kStamps + i].push_back(float(t[i] - t[prev]));
        prev = i;
      }
    }
  }
  const char* owner = !cluster ? "block" : per_row_thread == 2 ? "pair" : "cluster";
  for (int pass = 0; pass < 2; ++pass) {
    std::printf("%6lld %-16s %-7s %-6s", (long long)c.H, CaseName(c).c_str(), owner, pass == 0 ? "first" : "again");
    float total = 0;
    for (int i = 1; i < kStamps; ++i) {
      const std::vector<float>& v = cycles[pass * kStamps + i];
      const float m = v.empty() ? 0.0f : Median(v);
      total += m;
      std::printf(" %8.0f", m);
    }
    std::printf(" %8.0f %8.2f\n", total, total / cycles_per_us);
  }
  std::fflush(stdout);
}

// The launcher's buffers for set `s`: the outputs `spec` emits, the static scale for fp8_tensor.
FusedBuffers FusedBuffersOf(const AllreduceRmsnormSpec& spec, const Set& s, const Buffers& b) {
  FusedBuffers fb;
  fb.x = s.x;
  fb.residual = spec.has_residual ? s.res : nullptr;
  fb.weight = b.w;
  fb.scale = spec.quant == QuantMode::kFp8Tensor ? b.scale : nullptr;
  fb.residual_out = spec.emit.residual ? s.res_out : nullptr;
  fb.norm_out = spec.emit.norm ? s.norm : nullptr;
  fb.quant_out = spec.emit.quant ? s.q : nullptr;
  fb.scale_out = spec.emit.quant && IsDynamicQuant(spec.quant) ? s.s : nullptr;
  return fb;
}

// The copy roofline of `copy_bytes` per op: cudaMemcpyAsync over `sets` source/destination pairs
// allocated in b (as the fused op's inputs rotate), timed as the fused op is.
float TimeCopy(Buffers& b, int sets, size_t copy_bytes, cudaStream_t stream) {
  std::vector<void*> src, dst;
  for (int i = 0; i < sets; ++i) {
    src.push_back(b.Alloc(copy_bytes));
    dst.push_back(b.Alloc(copy_bytes));
    CHECK(cudaMemsetAsync(src.back(), 0x3C, copy_bytes, stream));
  }
  return TimeGraph(stream, [&](int i) {
    CHECK(cudaMemcpyAsync(dst[size_t(i % sets)], src[size_t(i % sets)], copy_bytes, cudaMemcpyDeviceToDevice, stream));
  });
}

// Every output of set s (residual, norm, q, and `scale_bytes` of scales) set to 0xFF on
// `stream`, ahead of the kernel that writes them. (cudaMemset would run on the legacy default
// stream, which the bench's non-blocking stream does not wait for: a large poison could land
// after the kernel's results.)
void PoisonOutputs(const Set& s, size_t elements, size_t scale_bytes, cudaStream_t stream) {
  CHECK(cudaMemsetAsync(s.res_out, 0xFF, elements * 2, stream));
  CHECK(cudaMemsetAsync(s.norm, 0xFF, elements * 2, stream));
  CHECK(cudaMemsetAsync(s.q, 0xFF, elements, stream));
  CHECK(cudaMemsetAsync(s.s, 0xFF, scale_bytes, stream));
}

// Set s's outputs, in that order, once `stream` has finished.
std::vector<uint8_t> ReadOutputs(const Set& s, size_t elements, size_t scale_bytes, cudaStream_t stream) {
  std::vector<uint8_t> o(elements * 5 + scale_bytes);
  CHECK(cudaStreamSynchronize(stream));
  CHECK(cudaMemcpy(o.data(), s.res_out, elements * 2, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(o.data() + elements * 2, s.norm, elements * 2, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(o.data() + elements * 4, s.q, elements, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(o.data() + elements * 5, s.s, scale_bytes, cudaMemcpyDeviceToHost));
  return o;
}

// ---------------------------------------------------------------- correctness

int CheckCase(const Case& c, int64_t T, uint32_t seed, cudaStream_t stream) {
  const AllreduceRmsnormSpec spec = SpecOf(c);
  const int64_t H = c.H, n = T * H;
  std::mt19937 rng(seed);
  std::normal_distribution<float> act(0.0f, 1.0f), wd(1.0f, 0.2f);
  std::vector<uint16_t> x(static_cast<size_t>(n)), res(static_cast<size_t>(n));
  for (auto& v : x) v = FloatToBf16(act(rng) * 3.0f);
  for (auto& v : res) v = FloatToBf16(act(rng));
  std::vector<float> w(static_cast<size_t>(H));
  std::vector<uint16_t> wb(static_cast<size_t>(H));
  for (int64_t i = 0; i < H; ++i) {
    wb[size_t(i)] = FloatToBf16(wd(rng));
    w[size_t(i)] = c.wdtype == DType::kF32 ? wd(rng) : Bf(wb[size_t(i)]);
  }
  const float scale = 0.0173f;
  const HostOut ref = Reference(spec, T, x, res, w, scale);

  Buffers b;
  Set s{};
  s.x = b.Alloc(size_t(n) * 2);
  s.res = b.Alloc(size_t(n) * 2);
  s.res_out = b.Alloc(size_t(n) * 2);
  s.norm = b.Alloc(size_t(n) * 2);
  s.q = b.Alloc(size_t(n));
  s.s = static_cast<float*>(b.Alloc(size_t(spec.ScaleElements(T)) * 4 + 4));
  b.w = b.Alloc(size_t(H) * 4);
  b.scale = static_cast<float*>(b.Alloc(4));
  CHECK(cudaMemcpy(s.x, x.data(), size_t(n) * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(s.res, res.data(), size_t(n) * 2, cudaMemcpyHostToDevice));
  if (c.wdtype == DType::kF32) CHECK(cudaMemcpy(b.w, w.data(), size_t(H) * 4, cudaMemcpyHostToDevice));
  else CHECK(cudaMemcpy(b.w, wb.data(), size_t(H) * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(b.scale, &scale, 4, cudaMemcpyHostToDevice));
  PoisonOutputs(s, size_t(n), size_t(spec.ScaleElements(T)) * 4 + 4, stream);
  Status st = cuda::LaunchLocalAllreduceRmsnorm(spec, T, FusedBuffersOf(spec, s, b), stream);
  if (!st.ok()) {
    std::printf("  launch failed: %s\n", st.ToString().c_str());
    return 1;
  }
  CHECK(cudaStreamSynchronize(stream));
  HostOut got;
  got.res.resize(size_t(n));
  got.norm.resize(size_t(n));
  got.q.resize(size_t(n));
  got.s.resize(size_t(spec.ScaleElements(T)));
  CHECK(cudaMemcpy(got.res.data(), s.res_out, size_t(n) * 2, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(got.norm.data(), s.norm, size_t(n) * 2, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(got.q.data(), s.q, size_t(n), cudaMemcpyDeviceToHost));
  if (!got.s.empty()) CHECK(cudaMemcpy(got.s.data(), s.s, got.s.size() * 4, cudaMemcpyDeviceToHost));
  int bad = 0;
  auto report = [&](const char* what, int64_t i, double a, double e) {
    if (bad++ < 3) std::printf("  MISMATCH %s[%lld]: got %g want %g\n", what, (long long)i, a, e);
  };
  for (int64_t i = 0; i < n; ++i) {
    if (got.res[size_t(i)] != ref.res[size_t(i)]) report("residual_out", i, Bf(got.res[size_t(i)]), Bf(ref.res[size_t(i)]));
    if (spec.emit.norm && got.norm[size_t(i)] != ref.norm[size_t(i)]) report("norm", i, Bf(got.norm[size_t(i)]), Bf(ref.norm[size_t(i)]));
    if (spec.emit.quant && got.q[size_t(i)] != ref.q[size_t(i)]) report("q", i, Fp8E4M3ToFloat(got.q[size_t(i)]), Fp8E4M3ToFloat(ref.q[size_t(i)]));
  }
  for (size_t i = 0; i < got.s.size(); ++i)
    if (std::memcmp(&got.s[i], &ref.s[i], 4) != 0) report("s", int64_t(i), got.s[i], ref.s[i]);
  return bad;
}

// ---------------------------------------------------------------- timing sets

// Fills `b` for timing T rows of `spec`: enough rotating sets of x, residual and every output
// (more than 2 x L2 together, at least 4), random bf16 inputs, weights about 1 and a static scale.
// Returns the number of sets.
int AllocateTimingSets(const AllreduceRmsnormSpec& spec, int64_t T, const cudaDeviceProp& prop, Buffers& b) {
  const int64_t H = spec.hidden;
  const size_t e = size_t(T * H);
  const int sets = int(std::max<size_t>(4, (2 * size_t(prop.l2CacheSize)) / MinBytes(spec, T) + 1));
  std::vector<uint16_t> host(e);
  std::mt19937 rng(uint32_t(T * 7 + H));
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (auto& v : host) v = FloatToBf16(d(rng));
  for (int i = 0; i < sets; ++i) {
    Set s{};
    s.x = b.Alloc(e * 2);
    s.res = b.Alloc(e * 2);
    s.res_out = b.Alloc(e * 2);
    s.norm = b.Alloc(e * 2);
    s.q = b.Alloc(e);
    s.s = static_cast<float*>(b.Alloc(size_t(spec.ScaleElements(T)) * 4 + 16));
    CHECK(cudaMemcpy(s.x, host.data(), e * 2, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(s.res, host.data(), e * 2, cudaMemcpyHostToDevice));
    b.sets.push_back(s);
  }
  std::vector<uint16_t> wh(static_cast<size_t>(H));
  for (auto& v : wh) v = FloatToBf16(1.0f + 0.1f * d(rng));
  b.w = b.Alloc(size_t(H) * 2);
  CHECK(cudaMemcpy(b.w, wh.data(), size_t(H) * 2, cudaMemcpyHostToDevice));
  const float scale = 0.02f;
  b.scale = static_cast<float*>(b.Alloc(4));
  CHECK(cudaMemcpy(b.scale, &scale, 4, cudaMemcpyHostToDevice));
  return sets;
}

// One shape's timing sets and the launcher on them (--owners, --grid, --packed): a launch into
// set 0 with its outputs poisoned first, the outputs read back, and the launcher timed over
// every set.
struct LauncherShape {
  const AllreduceRmsnormSpec spec;
  const int64_t T;
  const cudaStream_t stream;
  Buffers b;
  const int sets;
  const size_t elements, scale_bytes;
  LauncherShape(const AllreduceRmsnormSpec& s, int64_t t, cudaStream_t st, const cudaDeviceProp& prop)
      : spec(s), T(t), stream(st), sets(AllocateTimingSets(s, t, prop, b)), elements(size_t(t * s.hidden)),
        scale_bytes(size_t(s.ScaleElements(t)) * 4 + 16) {}
  bool Run(const cuda::LaunchOptions& options) {
    PoisonOutputs(b.sets[0], elements, scale_bytes, stream);
    return cuda::LaunchLocalAllreduceRmsnorm(spec, T, FusedBuffersOf(spec, b.sets[0], b), stream, options).ok();
  }
  std::vector<uint8_t> Outputs() { return ReadOutputs(b.sets[0], elements, scale_bytes, stream); }
  float Time(const cuda::LaunchOptions& options) {
    return TimeGraph(stream, [&](int i) {
      const Status st =
          cuda::LaunchLocalAllreduceRmsnorm(spec, T, FusedBuffersOf(spec, b.sets[size_t(i % sets)], b), stream, options);
      if (!st.ok()) std::exit(1);
    });
  }
  // The copy of the same bytes over the same sets.
  float TimeCopyOfBytes() { return TimeCopy(b, sets, MinBytes(spec, T) / 2, stream); }
};

// ---------------------------------------------------------------- row owners

// --owners: the launcher (LaunchLocalAllreduceRmsnorm) under each row owner it can be forced to,
// against its own rule ("auto"), on the sets and graphs of the timing below: one block per row,
// the cluster of ClusterBlocks blocks a thread per row thread (ClusterRow), rows of one or two
// warps packed into blocks (PackedRows; "at once" counts its blocks of 8 warps), and, for rows
// of two vectors per row thread, the pair cluster at each size c = 2..8 dividing the row's warps. Each
// forced launch is checked first against the rule's output (bitwise), so a figure is never of a
// wrong kernel. Prints µs per op and the ratio to auto; "-" where the owner does not apply.
void TimeOwners(const std::vector<int64_t>& hs, const std::vector<int64_t>& ts, bool residual,
                cudaStream_t stream, const cudaDeviceProp& prop) {
  struct Owner {
    std::string name;
    cuda::RowOwner owner;
    int c;
  };
  std::vector<Owner> owners = {{"auto", cuda::RowOwner::kAuto, 0},
                               {"block", cuda::RowOwner::kBlock, 0},
                               {"cluster", cuda::RowOwner::kCluster, 0},
                               {"packed", cuda::RowOwner::kPacked, 0}};
  for (int c = 2; c <= 8; ++c) owners.push_back({"pair" + std::to_string(c), cuda::RowOwner::kClusterPair, c});
  std::printf("\nrow owners: us per op (launcher, CUDA graph of 20 over rotating sets), x auto; rule = auto's pick\n");
  std::printf("%6s %5s %-16s %-8s", "H", "T", "quant", "rule");
  for (const Owner& o : owners) std::printf(" %13s", o.name.c_str());
  std::printf("\n");
  for (int64_t H : hs) {
    for (Case c : {Case{H, QuantMode::kNone, false}, Case{H, QuantMode::kFp8Tensor, false},
                   Case{H, QuantMode::kFp8Token, false}, Case{H, QuantMode::kFp8Group, true}}) {
      c.residual = residual;
      const AllreduceRmsnormSpec spec = SpecOf(c);
      // The owners of each kind that run at once (cuda::LocalRowOwnerCapacity): past them, waves.
      std::printf("%6lld %5s %-16s %-8s", (long long)H, "", CaseName(c).c_str(), "at once");
      for (const Owner& o : owners) {
        const int blocks = o.owner == cuda::RowOwner::kBlock || o.owner == cuda::RowOwner::kPacked ? 1
                           : o.owner == cuda::RowOwner::kCluster ? RowClusterBlocks(MakeRowLayout(H), 8, cuda::kMaxClusterBlockThreads)
                                                                 : o.c;
        const StatusOr<int64_t> n = o.owner == cuda::RowOwner::kAuto ? StatusOr<int64_t>(InvalidArgument("auto"))
                                                                     : cuda::LocalRowOwnerCapacity(spec, {o.owner, blocks});
        if (n.ok()) std::printf(" %13lld", (long long)*n);
        else std::printf(" %13s", "-");
      }
      std::printf("\n");
      for (int64_t T : ts) {
        LauncherShape shape(spec, T, stream, prop);
        // The rule's outputs in set 0, copied to the host: the reference of every forced owner.
        if (!shape.Run({})) continue;
        const std::vector<uint8_t> want = shape.Outputs();
        const StatusOr<cuda::LocalRowOwner> on_device = cuda::LocalRowOwnerOnDevice(spec, T);
        if (!on_device.ok()) continue;
        const cuda::LocalRowOwner rule = *on_device;
        const char* rule_name = rule.owner == cuda::RowOwner::kClusterPair ? "pair"
                                : rule.owner == cuda::RowOwner::kCluster   ? "cluster"
                                : rule.owner == cuda::RowOwner::kPacked    ? "packed"
                                                                           : "block";
        std::printf("%6lld %5lld %-16s %s%-*d", (long long)H, (long long)T, CaseName(c).c_str(), rule_name,
                    int(8 - std::strlen(rule_name)), rule.cluster_blocks);
        float t_auto = 0.0f;
        for (const Owner& o : owners) {
          cuda::LaunchOptions options;
          options.row_owner = o.owner;
          options.cluster_blocks = o.c;
          if (!shape.Run(options)) {
            (void)cudaGetLastError();  // a cluster this device cannot place: not this owner
            std::printf(" %13s", "-");
            continue;
          }
          if (shape.Outputs() != want) {
            std::printf(" %13s", "MISMATCH");
            continue;
          }
          const float t = shape.Time(options);
          if (o.owner == cuda::RowOwner::kAuto) t_auto = t;
          std::printf(" %6.2f %5.3fx", t, t / t_auto);
        }
        std::printf("\n");
        std::fflush(stdout);
      }
    }
  }
}

// --grid [H,...] [T,...]: one block per row (the launcher's grid of T blocks) against the same
// kernel on fewer blocks striding over the rows (LaunchOptions::max_row_owners = k x the blocks
// that run at once), quant none without the residual (the norm alone) and with it, and
// fp8_group + norm with it: where a row is one or two warps, whether the cost of starting T
// blocks, not the bytes, sets the time; where a row is long, what striding blocks cost or gain
// against a block per row (NOTES.md, runs 54 and 56). Each grid is
// checked bitwise against one block per row; the copy of the same bytes beside them.
void TimeGrids(const std::vector<int64_t>& hs, const std::vector<int64_t>& ts, cudaStream_t stream,
               const cudaDeviceProp& prop) {
  const int ks[] = {1, 2, 4, 8};
  std::printf("\nblocks: us per op (launcher, one block per row, CUDA graph of 20 over rotating sets); "
              "k x at once: the same kernel on k x the blocks that run at once, x per row\n");
  std::printf("%6s %7s %-16s %9s %9s", "H", "T", "quant", "at once", "per row");
  for (int k : ks) std::printf(" %8dx %6s", k, "");
  std::printf(" %9s %7s\n", "copy", "best/cp");
  for (int64_t H : hs) {
    Case alone{H, QuantMode::kNone, false};
    alone.residual = false;
    for (Case c : {alone, Case{H, QuantMode::kNone, false}, Case{H, QuantMode::kFp8Group, true}}) {
      const AllreduceRmsnormSpec spec = SpecOf(c);
      const StatusOr<int64_t> at_once = cuda::LocalRowOwnerCapacity(spec, {cuda::RowOwner::kBlock, 1});
      if (!at_once.ok()) continue;
      for (int64_t T : ts) {
        LauncherShape shape(spec, T, stream, prop);
        cuda::LaunchOptions per_row;
        per_row.row_owner = cuda::RowOwner::kBlock;
        if (!shape.Run(per_row)) continue;
        const std::vector<uint8_t> want = shape.Outputs();
        const float t_row = shape.Time(per_row);
        std::printf("%6lld %7lld %-16s %9lld %9.2f", (long long)H, (long long)T, CaseName(c).c_str(),
                    (long long)*at_once, t_row);
        float best = t_row;
        for (int k : ks) {
          cuda::LaunchOptions options = per_row;
          options.max_row_owners = k * *at_once;
          if (!shape.Run(options) || shape.Outputs() != want) {
            std::printf(" %15s", "MISMATCH");
            continue;
          }
          const float t = shape.Time(options);
          best = std::min(best, t);
          std::printf(" %8.2f %5.3fx", t, t / t_row);
        }
        const float t_copy = shape.TimeCopyOfBytes();
        std::printf(" %9.2f %7.2f\n", t_copy, best / t_copy);
        std::fflush(stdout);
      }
    }
  }
}

// --packed [H,...] [T,...]: packed rows (H <= 512) in each group width the launcher can be
// forced to (LaunchOptions::packed_row_lanes: 4-64 lanes, one or two vectors per lane) against
// its own pick, with the residual and the norm alone, every quant mode; each forced launch checked
// bitwise against the pick first. Prints µs per op and the ratio to the pick ("-": the width does
// not apply), and the copy of the same bytes.
void TimePackedLanes(const std::vector<int64_t>& hs, const std::vector<int64_t>& ts, cudaStream_t stream,
                     const cudaDeviceProp& prop) {
  const int widths[] = {4, 8, 16, 32, 64};
  std::printf("\npacked rows: us per op (launcher, CUDA graph of 20 over rotating sets), x the launcher's pick\n");
  std::printf("%6s %7s %-16s %4s %9s", "H", "T", "quant", "res", "pick");
  for (int w : widths) std::printf(" %12d", w);
  std::printf(" %9s %7s\n", "copy", "pick/cp");
  for (int64_t H : hs) {
    for (bool residual : {true, false}) {
      for (Case c : {Case{H, QuantMode::kNone, false}, Case{H, QuantMode::kFp8Tensor, false},
                     Case{H, QuantMode::kFp8Token, false}, Case{H, QuantMode::kFp8Group, true}}) {
        c.residual = residual;
        const AllreduceRmsnormSpec spec = SpecOf(c);
        for (int64_t T : ts) {
          LauncherShape shape(spec, T, stream, prop);
          cuda::LaunchOptions pick;
          pick.row_owner = cuda::RowOwner::kPacked;
          if (!shape.Run(pick)) {
            (void)cudaGetLastError();
            continue;
          }
          const std::vector<uint8_t> want = shape.Outputs();
          const float t_pick = shape.Time(pick);
          std::printf("%6lld %7lld %-16s %4d %9.2f", (long long)H, (long long)T, CaseName(c).c_str(), int(residual),
                      t_pick);
          for (int w : widths) {
            cuda::LaunchOptions options = pick;
            options.packed_row_lanes = w;
            if (!shape.Run(options)) {
              std::printf(" %12s", "-");
              continue;
            }
            if (shape.Outputs() != want) {
              std::printf(" %12s", "MISMATCH");
              continue;
            }
            const float t = shape.Time(options);
            std::printf(" %6.2f %5.3f", t, t / t_pick);
          }
          const float t_copy = shape.TimeCopyOfBytes();
          std::printf(" %9.2f %7.2f\n", t_copy, t_pick / t_copy);
          std::fflush(stdout);
        }
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  const bool phases = argc > 1 && std::string(argv[1]) == "--phases";
  const bool owners = argc > 1 && std::string(argv[1]) == "--owners";
  const bool grids = argc > 1 && std::string(argv[1]) == "--grid";
  const bool packed = argc > 1 && std::string(argv[1]) == "--packed";
  const bool nores = owners && argc > 4 && std::string(argv[4]) == "nores";
  if (owners && (argc > 5 || (argc > 4 && !nores))) {
    std::fprintf(stderr, "--owners [H,...] [T,...] [nores]: unexpected argument '%s'\n", argv[nores ? 5 : 4]);
    return 2;
  }
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  if (owners || grids || packed) {
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    // --owners [H,H,...] [T,T,...]
    auto list = [](const char* text) {
      std::vector<int64_t> v;
      for (const char* p = text; *p;) {
        char* end = nullptr;
        const long long n = std::strtoll(p, &end, 10);
        if (end == p || n <= 0) break;
        v.push_back(n);
        p = *end == ',' ? end + 1 : end;
      }
      return v;
    };
    if (packed) {
      TimePackedLanes(argc > 2 ? list(argv[2]) : std::vector<int64_t>{64, 128, 256, 512},
                      argc > 3 ? list(argv[3]) : std::vector<int64_t>{4096, 16384, 65536, 262144}, stream, prop);
      return 0;
    }
    if (grids) {
      TimeGrids(argc > 2 ? list(argv[2]) : std::vector<int64_t>{64, 128, 256, 512, 1024, 2048, 4096, 7168},
                argc > 3 ? list(argv[3]) : std::vector<int64_t>{1024, 4096, 16384, 65536}, stream, prop);
      return 0;
    }
    TimeOwners(argc > 2 ? list(argv[2]) : std::vector<int64_t>{2880, 4096, 5120, 7168, 8192},
               argc > 3 ? list(argv[3]) : std::vector<int64_t>{16, 32, 48, 64, 96, 128, 192, 256},
               /*residual=*/!nores, stream, prop);
    return 0;
  }
  if (phases) {
    int clock_khz = 0;
    CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0));
    std::printf("one row at T = 1, thread 0's %%clock64 cycles from the previous stamp (median of 50 launches, "
                "warm L2); us at the peak clock, %d MHz\n", clock_khz / 1000);
    std::printf("(first: the row's first run in the launch; again: the same row run a second time right after)\n");
    std::printf("%6s %-16s %-7s %-6s %8s %8s %8s %8s %8s %8s %8s %8s %8s\n", "H", "quant", "owner", "run", "wait",
                "own sum", "rowsum", "rstd", "vectors", "dyn q", "exit", "total", "us");
    for (bool cluster : {false, true})
      for (int64_t H : {2880, 4096, 7168, 8192})
        for (Case c : {Case{H, QuantMode::kNone, false}, Case{H, QuantMode::kFp8Tensor, false},
                       Case{H, QuantMode::kFp8Token, false}, Case{H, QuantMode::kFp8Group, true}})
          PrintPhases(c, cluster, stream, float(clock_khz) / 1000.0f);
    return 0;
  }
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);

  // ---- registers, spills and residency of the production kernels
  for (int64_t H : {2880, 4096, 5120, 7168, 8192, 16384}) {
    const RowLayout l = MakeRowLayout(H);
    for (QuantMode q : {QuantMode::kNone, QuantMode::kFp8Tensor, QuantMode::kFp8Token, QuantMode::kFp8Group}) {
      const struct { const char* name; cuda::FusedKernelFn fn; } kernels[] = {
          {"epilogue", cuda::SelectKernel<RuntimeEpilogue>(DType::kBF16, l.vecs_per_thread, q)},
          {"oneshot", cuda::SelectKernel<cuda::OneShotFamily>(DType::kBF16, l.vecs_per_thread, q)},
          {"twoshot", cuda::SelectKernel<cuda::TwoShotFamily>(DType::kBF16, l.vecs_per_thread, q)}};
      for (const auto& k : kernels) {
        cudaFuncAttributes attr;
        CHECK(cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(k.fn)));
        int per_sm = 0;
        CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, reinterpret_cast<const void*>(k.fn), l.threads, 0));
        std::printf("kernel %-8s H %5lld %-10s threads %3d vec %d regs %3d local %4zu B blocks/SM %d\n", k.name,
                    (long long)H, std::string(QuantModeName(q)).c_str(), l.threads, l.vecs_per_thread,
                    attr.numRegs, attr.localSizeBytes, per_sm);
      }
    }
  }

  // ---- correctness: production kernel vs the CPU reference, bitwise
  int failures = 0, checked = 0;
  std::vector<Case> checks;
  for (int64_t H : {128, 2880, 4096, 7168, 8192, 16384}) {
    checks.push_back({H, QuantMode::kNone, false});
    checks.push_back({H, QuantMode::kFp8Tensor, false});
    checks.push_back({H, QuantMode::kFp8Token, false});
    checks.push_back({H, QuantMode::kFp8Group, true});
  }
  checks.push_back({7168, QuantMode::kFp8Group, true, true, true});        // ue8m0, col-major
  checks.push_back({4096, QuantMode::kFp8Token, false, true, true});
  checks.push_back({4096, QuantMode::kFp8Group, false, false, false, 1.0f});  // weight_bias 1
  checks.push_back({4096, QuantMode::kNone, false, false, false, 1.0f, DType::kBF16, {false, false, true, false}});
  checks.push_back({4096, QuantMode::kFp8Tensor, false, false, false, 0.0f, DType::kF32});
  checks.push_back({5120, QuantMode::kFp8Tensor, false, false, false, 0.0f, DType::kBF16, {true, true, false, true}});
  checks.push_back({5120, QuantMode::kFp8Group, true, false, false, 0.0f, DType::kBF16, {true, true, false, true}});
  checks.push_back({2880, QuantMode::kFp8Token, false, false, false, 0.0f, DType::kF32, {false, true, false, true}});
  for (const Case& c : checks) {
    for (int64_t T : {int64_t(1), int64_t(3), int64_t(19), int64_t(130)}) {
      const int bad = CheckCase(c, T, uint32_t(1000 + T + c.H), stream);
      ++checked;
      if (bad) {
        ++failures;
        std::printf("check FAILED: H %lld %s T %lld: %d mismatches\n", (long long)c.H, CaseName(c).c_str(),
                    (long long)T, bad);
      }
    }
  }
  std::printf("correctness: %d of %d cases bitwise equal to the CPU reference\n", checked - failures, checked);

  // ---- timing
  const std::vector<int64_t> hs = quick ? std::vector<int64_t>{4096, 7168} : std::vector<int64_t>{2880, 4096, 5120, 7168, 8192};
  const std::vector<int64_t> ts = quick ? std::vector<int64_t>{1, 1024} : std::vector<int64_t>{1, 16, 128, 1024, 8192};
  std::printf("\n%6s %5s %-16s %8s %8s %8s %8s %8s %8s %8s %8s\n", "H", "T", "quant", "v0", "grid", "pers",
              "nopdl", "copy", "grid/cp", "grid/v0", "GB/s");
  for (int64_t H : hs) {
    for (Case c : {Case{H, QuantMode::kNone, false}, Case{H, QuantMode::kFp8Tensor, false},
                   Case{H, QuantMode::kFp8Token, false}, Case{H, QuantMode::kFp8Group, true}}) {
      const AllreduceRmsnormSpec spec = SpecOf(c);
      const RowLayout l = MakeRowLayout(H);
      cuda::FusedKernelFn fn = cuda::SelectKernel<RuntimeEpilogue>(DType::kBF16, l.vecs_per_thread, c.quant);
      const V0Layout l0 = V0LayoutOf(H);
      V0Fn fn0 = V0Kernel(l0.vecs, c.quant);
      for (int64_t T : ts) {
        const size_t bytes = MinBytes(spec, T);
        Buffers b;
        const int sets = AllocateTimingSets(spec, T, prop, b);
        const int resident = Resident(reinterpret_cast<const void*>(fn), l.threads);
        const int resident0 = Resident(reinterpret_cast<const void*>(fn0), l0.threads);
        const float t_v0 = TimeGraph(stream, [&](int i) {
          const auto p = V0ParamsFor(spec, T, b.sets[size_t(i % sets)], b);
          cudaLaunchConfig_t config{};
          cudaLaunchAttribute attribute{};
          attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
          attribute.val.programmaticStreamSerializationAllowed = 1;
          config.gridDim = dim3(unsigned(std::min<int64_t>(T, 4 * int64_t(resident0))));
          config.blockDim = dim3(l0.threads);
          config.stream = stream;
          config.attrs = &attribute;
          config.numAttrs = 1;
          CHECK(cudaLaunchKernelEx(&config, fn0, p));
        });
        const float t_grid = TimeGraph(stream, [&](int i) {
          Launch(fn, ParamsFor(spec, T, b.sets[size_t(i % sets)], b), T, l.threads, true, stream);
        });
        const float t_pers = TimeGraph(stream, [&](int i) {
          Launch(fn, ParamsFor(spec, T, b.sets[size_t(i % sets)], b), std::min<int64_t>(T, resident), l.threads, true, stream);
        });
        const float t_nopdl = TimeGraph(stream, [&](int i) {
          Launch(fn, ParamsFor(spec, T, b.sets[size_t(i % sets)], b), T, l.threads, false, stream);
        });
        const float t_copy = TimeCopy(b, sets, bytes / 2, stream);
        std::printf("%6lld %5lld %-16s %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.0f\n", (long long)H, (long long)T,
                    CaseName(c).c_str(), t_v0, t_grid, t_pers, t_nopdl, t_copy, t_grid / t_copy, t_grid / t_v0,
                    double(bytes) / (t_grid * 1e3));
        std::fflush(stdout);
      }
    }
  }
  return failures == 0 ? 0 : 1;
}
