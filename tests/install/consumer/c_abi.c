/* Uses the installed C ABI (tpfuse_c.h, libtpfuse.so): the compiler as a call. Exit status 0
 * when the all_reduce chain of the module below is fused into one op. */
#include <stdio.h>
#include <string.h>

#include "tpfuse/tpfuse_c.h"

int main(void) {
  const char* module =
      "func @f(%x: bf16[T, 256], %res: bf16[T, 256], %g: bf16[256]) {\n"
      "  %ar = all_reduce(%x)\n"
      "  %y, %r = fused_add_rms_norm(%ar, %res, %g) {eps = 1e-6}\n"
      "  return %y, %r\n"
      "}\n";
  tpfuse_compile_options_t options;
  tpfuse_compile_options_init(&options);
  char* text = NULL;
  char* report = NULL;
  const tpfuse_status_t status = tpfuse_compile(module, &options, &text, &report);
  if (status != TPFUSE_OK) {
    fprintf(stderr, "tpfuse_compile: %s: %s\n", tpfuse_status_name(status), tpfuse_last_error());
    return 1;
  }
  const int fused = strstr(text, "allreduce_rmsnorm(") != NULL && strstr(text, "all_reduce(") == NULL;
  printf("tpfuse %s (C ABI %d): %s\n", tpfuse_version(), (int)tpfuse_abi_version(),
         fused ? "fused" : text);
  tpfuse_free(text);
  tpfuse_free(report);
  return fused ? 0 : 1;
}
