/* The C ABI header compiles as C (not only as C++) and its structs have the layout the
 * bindings mirror. */
#include "tpfuse/tpfuse_c.h"

#include <stddef.h>

_Static_assert(sizeof(tpfuse_spec_t) == 88, "tpfuse_spec_t layout");
_Static_assert(offsetof(tpfuse_spec_t, hidden) == 8, "tpfuse_spec_t.hidden offset");
_Static_assert(offsetof(tpfuse_spec_t, rounding) == 52, "tpfuse_spec_t.rounding offset");
_Static_assert(offsetof(tpfuse_spec_t, sum_scale) == 56, "tpfuse_spec_t.sum_scale offset");
_Static_assert(offsetof(tpfuse_spec_t, second_sum) == 60, "tpfuse_spec_t.second_sum offset");
_Static_assert(offsetof(tpfuse_spec_t, second_scale) == 68, "tpfuse_spec_t.second_scale offset");
_Static_assert(offsetof(tpfuse_spec_t, pre_residual_norm) == 72, "tpfuse_spec_t.pre_residual_norm offset");
_Static_assert(offsetof(tpfuse_spec_t, pre_eps) == 76, "tpfuse_spec_t.pre_eps offset");
_Static_assert(offsetof(tpfuse_spec_t, has_bias) == 80, "tpfuse_spec_t.has_bias offset");
_Static_assert(sizeof(tpfuse_buffers_t) == 12 * sizeof(void*), "tpfuse_buffers_t layout");
_Static_assert(offsetof(tpfuse_buffers_t, x2) == 9 * sizeof(void*), "tpfuse_buffers_t.x2 offset");
_Static_assert(offsetof(tpfuse_buffers_t, pre_weight) == 10 * sizeof(void*), "tpfuse_buffers_t.pre_weight offset");
_Static_assert(offsetof(tpfuse_buffers_t, bias) == 11 * sizeof(void*), "tpfuse_buffers_t.bias offset");
_Static_assert(sizeof(tpfuse_compile_options_t) == 32, "tpfuse_compile_options_t layout");
_Static_assert(offsetof(tpfuse_compile_options_t, source_name) == 24, "source_name offset");

int tpfuse_header_is_c_abi_version(void) {
  tpfuse_spec_t spec;
  tpfuse_spec_init(&spec);
  return spec.emit == TPFUSE_EMIT_NORM ? tpfuse_abi_version() : -1;
}
