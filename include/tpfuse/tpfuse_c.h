/* tpfuse's C ABI (libtpfuse.so): the compiler, the runtime of the fused op `allreduce_rmsnorm`
 * (DESIGN.md Contract 3) and its CPU reference, for Python (ctypes) and other FFIs.
 *
 * Plain C: no C++ types cross this boundary. Structs hold fixed-width fields only; enums travel
 * as int32_t; opaque handles are pointers to incomplete structs.
 *
 *   tpfuse_spec_t spec;
 *   tpfuse_spec_init(&spec);                     // Contract 3's defaults
 *   spec.hidden = 4096;
 *   spec.has_residual = 1;
 *   spec.emit = TPFUSE_EMIT_NORM | TPFUSE_EMIT_RESIDUAL;
 *   if (tpfuse_allreduce_rmsnorm(comm, &spec, tokens, &buffers, stream, TPFUSE_STRATEGY_AUTO))
 *     fprintf(stderr, "%s\n", tpfuse_last_error());
 *
 * Errors. Every fallible call returns a tpfuse_status_t (TPFUSE_OK is 0). On failure the
 * calling thread's last-error message names the problem (the argument, the shape, the peer);
 * tpfuse_last_error() returns it until the next tpfuse call on the same thread, which replaces
 * it ("" after a call that succeeded).
 *
 * Threads. The compiler, the reference op, tpfuse_allreduce_rmsnorm_local and the spec helpers
 * are reentrant: any thread, concurrently. A communicator is not: calls on one communicator come
 * from one thread at a time, in the same order on every rank.
 *
 * Streams and CUDA graphs. `stream` is a cudaStream_t passed as void* (NULL: the legacy default
 * stream). The fused ops are asynchronous on that stream and may be captured in CUDA graphs
 * (capture mode relaxed or global). Creating or destroying a communicator allocates, frees and
 * synchronizes: never during graph capture. tpfuse_comm_check_health synchronizes the stream: not
 * during capture. A communicator's peer-memory workspace is sized once, at creation, by
 * tpfuse_comm_config_t; a call over it takes the NCCL path instead of failing.
 *
 * Builds without CUDA keep every symbol; the CUDA entry points return TPFUSE_ERR_UNIMPLEMENTED
 * (tpfuse_has_cuda() says which build this is).
 */
#ifndef TPFUSE_TPFUSE_C_H_
#define TPFUSE_TPFUSE_C_H_

#include <stddef.h>
#include <stdint.h>

#if defined(TPFUSE_C_BUILDING)
#define TPFUSE_C_API __attribute__((visibility("default")))
#else
#define TPFUSE_C_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when a struct layout, a signature or the codes a field takes change; bindings check it
 * at load time. 3: TPFUSE_RESIDUAL_F32 and TPFUSE_ROUNDING_RESIDUAL_OUT_F32. 4:
 * TPFUSE_ROUNDING_NORM_OUT_F32. 5: tpfuse_spec_t.second_sum, first_scale, second_scale,
 * tpfuse_buffers_t.x2. 6: tpfuse_spec_t.pre_residual_norm, pre_eps, tpfuse_buffers_t.pre_weight.
 * 7: tpfuse_spec_t.has_bias, tpfuse_buffers_t.bias. 8: has_bias takes TPFUSE_BIAS_PER_TOKEN. */
#define TPFUSE_C_ABI_VERSION 8
TPFUSE_C_API int32_t tpfuse_abi_version(void);
/* "0.1.0" */
TPFUSE_C_API const char* tpfuse_version(void);

/* ---------------------------------------------------------------- errors */

typedef int32_t tpfuse_status_t;
enum {
  TPFUSE_OK = 0,
  TPFUSE_ERR_INVALID_ARGUMENT = 1,   /* bad input: shapes, dtypes, attributes, syntax */
  TPFUSE_ERR_NOT_FOUND = 2,
  TPFUSE_ERR_UNIMPLEMENTED = 3,      /* valid, but this build or backend cannot serve it */
  TPFUSE_ERR_FAILED_PRECONDITION = 4,
  TPFUSE_ERR_OUT_OF_RANGE = 5,
  TPFUSE_ERR_TIMEOUT = 6,            /* a bounded wait on a peer expired */
  TPFUSE_ERR_CUDA = 7,
  TPFUSE_ERR_NCCL = 8,
  TPFUSE_ERR_INTERNAL = 9,
};
/* The message of the calling thread's last tpfuse call: "" if it succeeded. Valid until the
 * thread's next tpfuse call. */
TPFUSE_C_API const char* tpfuse_last_error(void);
/* "ok", "invalid argument", ... */
TPFUSE_C_API const char* tpfuse_status_name(tpfuse_status_t status);
/* Frees a buffer this library allocated (compiled text, reports). NULL is allowed. */
TPFUSE_C_API void tpfuse_free(void* ptr);

/* ---------------------------------------------------------------- the fused op's spec */

enum { TPFUSE_DTYPE_BF16 = 0, TPFUSE_DTYPE_F16 = 1, TPFUSE_DTYPE_F32 = 2, TPFUSE_DTYPE_F8E4M3 = 3 };
enum {
  TPFUSE_QUANT_NONE = 0,
  TPFUSE_QUANT_FP8_TENSOR = 1, /* static: q = fp8(y * (1/scale)), scale an f32 operand */
  TPFUSE_QUANT_FP8_TOKEN = 2,  /* dynamic, one scale per row */
  TPFUSE_QUANT_FP8_GROUP = 3,  /* dynamic, one scale per group_size columns of a row */
};
enum { TPFUSE_SCALE_LAYOUT_ROW = 0, TPFUSE_SCALE_LAYOUT_COL = 1 };
enum { TPFUSE_SCALE_FMT_F32 = 0, TPFUSE_SCALE_FMT_UE8M0 = 1 };
/* The results the graph uses (bits of tpfuse_spec_t.emit). Results come in this order. */
enum {
  TPFUSE_EMIT_ALLREDUCE = 1, /* a = round(sum of partials) */
  TPFUSE_EMIT_NORM = 2,      /* y */
  TPFUSE_EMIT_RESIDUAL = 4,  /* residual_out = round(a + residual) (or unrounded f32: ROUNDING_RESIDUAL_OUT_F32) */
  TPFUSE_EMIT_QUANT = 8,     /* q and, for dynamic quant, s */
};
/* The rounding recipe (bits of tpfuse_spec_t.rounding; 0 is Contract 3's original form). */
enum {
  TPFUSE_ROUNDING_NORM_INPUT_F32 = 1,              /* the norm reads the unrounded f32 h */
  TPFUSE_ROUNDING_WEIGHT_AFTER_ROUND = 2,          /* y = round(round(n) * w') */
  TPFUSE_ROUNDING_WEIGHT_BIAS_IN_WEIGHT_DTYPE = 4, /* w' = round_w(w + weight_bias) */
  TPFUSE_ROUNDING_SCALE_OP_SWAPPED = 8,            /* y / scale (tensor), y * (1/s) (dynamic) */
  TPFUSE_ROUNDING_SCALE_FLOOR_AFTER_DIV = 16,      /* s = max(amax / 448, 1 / (448 * 512)); ue8m0: floored after the rounding */
  TPFUSE_ROUNDING_UE8M0_FLOOR = 32,                /* ue8m0 of max(s, 1e-10) */
  TPFUSE_ROUNDING_RESIDUAL_OUT_F32 = 64,           /* residual_out is the unrounded f32 h */
  TPFUSE_ROUNDING_NORM_OUT_F32 = 128,              /* the norm output is the unrounded f32 y (quant none) */
};
/* Two all_reduces summed (tpfuse_spec_t.second_sum). */
enum {
  TPFUSE_SECOND_SUM_NONE = 0,
  TPFUSE_SECOND_SUM_ADDED = 1,         /* round(round(a * first_scale) + round(a2 * second_scale)) */
  TPFUSE_SECOND_SUM_INTO_RESIDUAL = 2, /* the residual is round(residual + round(a2 * second_scale)) */
};
/* The residual operand (tpfuse_spec_t.has_residual). */
enum {
  TPFUSE_RESIDUAL_NONE = 0,
  TPFUSE_RESIDUAL_ACT = 1, /* a residual of act_dtype */
  TPFUSE_RESIDUAL_F32 = 2, /* an f32 residual (a residual stream kept in f32; CUDA: nccl or local) */
};

/* tpfuse_spec_t.has_bias. */
typedef enum tpfuse_bias {
  TPFUSE_BIAS_NONE = 0,
  TPFUSE_BIAS_ROW = 1,       /* bias [H], added to every row */
  TPFUSE_BIAS_PER_TOKEN = 2, /* bias [T, H], x's shape: each row its own (a tensor computed beside
                              * the all_reduce, as transformers' MoE plans add one) */
} tpfuse_bias_t;

/* Everything that fixes the fused op's behaviour except the token count T. */
typedef struct tpfuse_spec {
  int32_t act_dtype;    /* x, residual and the bf16/f16 results: BF16 or F16 */
  int32_t weight_dtype; /* w: BF16, F16 or F32 */
  int64_t hidden;       /* H */
  int32_t local;        /* 1: no all_reduce feeds the chain (a = x, no communication) */
  int32_t has_residual; /* TPFUSE_RESIDUAL_* */
  float eps;
  float weight_bias;    /* 1 for Gemma's x * (1 + w) */
  int32_t quant;        /* TPFUSE_QUANT_* */
  int32_t group_size;   /* FP8_GROUP only */
  int32_t scale_layout; /* dynamic quant: TPFUSE_SCALE_LAYOUT_* */
  int32_t scale_fmt;    /* dynamic quant: TPFUSE_SCALE_FMT_* */
  uint32_t emit;        /* TPFUSE_EMIT_* bits, not 0 */
  uint32_t rounding;    /* TPFUSE_ROUNDING_* bits */
  float sum_scale;      /* a' = round(a * sum_scale) before the residual add; 1: none (ABI 2) */
  /* TPFUSE_SECOND_SUM_*: two all_reduces summed (ABI 5). x2 is this rank's partial of the
   * second, a2 = round(sum of x2). ADDED: the residual add reads
   * round(round(a * first_scale) + round(a2 * second_scale)) (a scale of 1 is no step), then
   * scaled by sum_scale. INTO_RESIDUAL: a2 goes into the residual first,
   * round(residual + round(a2 * second_scale)), and a * sum_scale is added to that (an
   * activation-dtype residual, first_scale 1). No EMIT_ALLREDUCE. A local op (and world size
   * 1) reads x2 as a2. CUDA: the nccl strategy above world size 1. */
  int32_t second_sum;
  float first_scale;
  float second_scale;
  /* 1: the sum is normed before the residual add (sandwich norms: `residual + norm(a)`, then the
   * norm the op ends in), with the weight buffers.pre_weight (weight_dtype) and pre_eps, in the
   * weight's form (weight_bias, the rounding bits). Needs a residual; no second_sum, sum_scale 1.
   * CUDA: world size 1 and local ops (ABI 6). */
  int32_t pre_residual_norm;
  float pre_eps;
  /* A tpfuse_bias_t: a bias buffers.bias (act_dtype) is added to the sum first, round(a + bias)
   * (a row-parallel layer's bias added after its all_reduce), which sum_scale and the residual
   * add read in a's place; EMIT_ALLREDUCE gives a without it. No second_sum, no
   * pre_residual_norm. CUDA: the nccl strategy above world size 1 (ABI 7; PER_TOKEN ABI 8). */
  int32_t has_bias;
} tpfuse_spec_t;

/* Contract 3's defaults: bf16 activations and weight, eps 1e-6, no residual, no quant, group
 * 128, row f32 scales, emit norm, default rounding. hidden is 0: the caller sets it. */
TPFUSE_C_API void tpfuse_spec_init(tpfuse_spec_t* spec);
/* Checks the spec's consistency (dtypes, hidden, group, emit); the message names the problem. */
TPFUSE_C_API tpfuse_status_t tpfuse_spec_validate(const tpfuse_spec_t* spec);
/* Number of f32 elements of the scale output s for T tokens: [T, H/g] (row) or [H/g, pad4(T)]
 * (col) for dynamic quant, 0 otherwise. */
TPFUSE_C_API tpfuse_status_t tpfuse_spec_scale_elements(const tpfuse_spec_t* spec, int64_t tokens,
                                                        int64_t* elements);

/* The buffers of one call: x (and x2), residual and the bf16/f16 outputs [T, H] row-major (the residual
 * f32 under TPFUSE_RESIDUAL_F32, residual_out under TPFUSE_ROUNDING_RESIDUAL_OUT_F32 and norm_out
 * under TPFUSE_ROUNDING_NORM_OUT_F32); weight [H]; scale one f32 (FP8_TENSOR only); quant_out
 * f8e4m3 [T, H]; scale_out tpfuse_spec_scale_elements
 * floats. Outputs not emitted and operands not used are NULL. Device buffers are 16-byte
 * aligned (scale pointers 4-byte). */
typedef struct tpfuse_buffers {
  const void* x;
  const void* residual;
  const void* weight;
  const float* scale;
  void* allreduce_out;
  void* norm_out;
  void* residual_out;
  void* quant_out;
  float* scale_out;
  const void* x2; /* the second all_reduce's partial [T, H] (spec.second_sum), else NULL (ABI 5) */
  const void* pre_weight; /* the norm's weight before the residual add [H] (spec.pre_residual_norm), else NULL (ABI 6) */
  const void* bias; /* the bias added to the sum [H], or [T, H] (spec.has_bias), else NULL (ABI 7) */
} tpfuse_buffers_t;

/* ---------------------------------------------------------------- the CPU reference */

/* The fused op of Contract 3 on host buffers, as rank `rank` of `world_size` would compute it
 * (every rank's results are identical): partials[r] is rank r's x [T, H] for r < world_size
 * (world_size 1 and spec->local: partials[0] alone), and under spec->second_sum
 * partials[ranks + r] is rank r's x2 (ranks: world_size, or 1 for a local op); buffers->x and
 * buffers->x2 are ignored. The other operands and the outputs are host pointers in `buffers`.
 * The oracle every backend is checked against. */
TPFUSE_C_API tpfuse_status_t tpfuse_reference_allreduce_rmsnorm(const tpfuse_spec_t* spec,
                                                                int64_t tokens, int32_t world_size,
                                                                const void* const* partials,
                                                                const tpfuse_buffers_t* buffers);

/* ---------------------------------------------------------------- the compiler */

enum { TPFUSE_BACKEND_CPU = 0, TPFUSE_BACKEND_CUDA = 1 };

/* Whether `[add ->] rms_norm [-> quant]` chains that no all_reduce feeds become the fused op
 * with local = 1 (DESIGN.md "World size 1"). AUTO follows the measurement of docs/pytorch.md
 * ("Local chains"): backend CUDA at every world size, backend CPU at world size 1 only.
 * INDUCTOR is AUTO less the local chains Inductor's own kernel was measured faster on (backend
 * CUDA; docs/perf/h200x1/inductor_epilogue.md), for a caller whose unfused chains Inductor
 * compiles: the PyTorch pass. */
enum {
  TPFUSE_FUSE_LOCAL_AUTO = 0,     /* CUDA: always; CPU: at world size 1 only */
  TPFUSE_FUSE_LOCAL_ON = 1,       /* at every world size */
  TPFUSE_FUSE_LOCAL_OFF = 2,
  TPFUSE_FUSE_LOCAL_INDUCTOR = 3, /* AUTO, less the chains Inductor's kernel runs faster */
};

typedef struct tpfuse_compile_options {
  int32_t world_size;      /* TP degree the module runs at (default 2) */
  int32_t backend;         /* whose fused-op capabilities apply: TPFUSE_BACKEND_* (default CPU) */
  int64_t max_tokens;      /* largest T, 0: unknown */
  int32_t fuse_local;      /* TPFUSE_FUSE_LOCAL_* (default AUTO) */
  const char* source_name; /* names the module in error messages; NULL: "<input>" */
} tpfuse_compile_options_t;
TPFUSE_C_API void tpfuse_compile_options_init(tpfuse_compile_options_t* options);

/* Parses a module in the .tpg format (Contract 1), runs the default pipeline on every func and
 * returns the fused module's text and a JSON report (Contract 4's `compile --json` object:
 * ops_before, ops_after, fusions, rejections, counters, funcs). Both are NUL-terminated,
 * allocated here and freed with tpfuse_free; either pointer may be NULL if not wanted. On
 * failure nothing is allocated and the message names the line and column. */
TPFUSE_C_API tpfuse_status_t tpfuse_compile(const char* module_text,
                                            const tpfuse_compile_options_t* options,
                                            char** compiled_text, char** report_json);

/* ---------------------------------------------------------------- the CUDA runtime */

/* 1 if this library was built with the CUDA backend, 0 otherwise. */
TPFUSE_C_API int32_t tpfuse_has_cuda(void);

#define TPFUSE_UNIQUE_ID_BYTES 128
typedef struct tpfuse_comm tpfuse_comm_t;

typedef struct tpfuse_comm_config {
  int64_t max_tokens;         /* largest T served by the peer-memory strategies (8192) */
  int64_t max_hidden;         /* 8192 */
  int64_t oneshot_max_tokens; /* 1024 */
  double timeout_seconds;     /* bound of every wait on a peer, 0: unbounded (5) */
  int32_t peer_memory;        /* 0: the NCCL strategy only (1) */
  int32_t programmatic_dependent_launch; /* (1) */
  const char* strategy_table; /* a `tpfuse tune` JSON file; NULL: built-in defaults */
} tpfuse_comm_config_t;
TPFUSE_C_API void tpfuse_comm_config_init(tpfuse_comm_config_t* config);

enum {
  TPFUSE_STRATEGY_AUTO = 0, /* the dispatcher's choice per shape */
  TPFUSE_STRATEGY_ONESHOT = 1,
  TPFUSE_STRATEGY_TWOSHOT = 2,
  TPFUSE_STRATEGY_NCCL = 3,
};

/* A fresh NCCL unique id (TPFUSE_UNIQUE_ID_BYTES bytes). Rank 0 makes it and shares it. */
TPFUSE_C_API tpfuse_status_t tpfuse_get_unique_id(uint8_t* unique_id);
/* Creates a communicator (and the NCCL communicator it owns) on CUDA device `device`. Every rank
 * calls it with the same id and world size. Collective and blocking; not during capture. */
TPFUSE_C_API tpfuse_status_t tpfuse_comm_create(const uint8_t* unique_id, int32_t rank,
                                                int32_t world_size, int32_t device,
                                                const tpfuse_comm_config_t* config,
                                                tpfuse_comm_t** comm);
/* Borrows an existing ncclComm_t (destroy it after the tpfuse communicator); the current CUDA
 * device must be the NCCL communicator's. Collective; not during capture. */
TPFUSE_C_API tpfuse_status_t tpfuse_comm_from_nccl(void* nccl_comm,
                                                   const tpfuse_comm_config_t* config,
                                                   tpfuse_comm_t** comm);
/* Frees the communicator and its workspace. NULL is allowed. Not during capture. */
TPFUSE_C_API void tpfuse_comm_destroy(tpfuse_comm_t* comm);
TPFUSE_C_API tpfuse_status_t tpfuse_comm_rank(const tpfuse_comm_t* comm, int32_t* rank);
TPFUSE_C_API tpfuse_status_t tpfuse_comm_world_size(const tpfuse_comm_t* comm,
                                                    int32_t* world_size);

/* The fused op across the communicator's ranks on device buffers, asynchronous on `stream`.
 * Every rank calls it with the same spec and T. Capturable. */
TPFUSE_C_API tpfuse_status_t tpfuse_allreduce_rmsnorm(tpfuse_comm_t* comm, const tpfuse_spec_t* spec,
                                                      int64_t tokens, const tpfuse_buffers_t* buffers,
                                                      void* stream, int32_t strategy);
/* The fused op without communication on the current device: world size 1, or spec->local
 * (a = x). Needs no communicator and no NCCL. Asynchronous on `stream`; capturable. */
TPFUSE_C_API tpfuse_status_t tpfuse_allreduce_rmsnorm_local(const tpfuse_spec_t* spec,
                                                            int64_t tokens,
                                                            const tpfuse_buffers_t* buffers,
                                                            void* stream);
/* Synchronizes `stream`; a peer timeout in an earlier call becomes an error naming the peer.
 * Not during capture. */
TPFUSE_C_API tpfuse_status_t tpfuse_comm_check_health(tpfuse_comm_t* comm, void* stream);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif  /* TPFUSE_TPFUSE_C_H_ */
