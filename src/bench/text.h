// Text helpers the bench's reports share (tables, CSV): one home for how numbers, emit sets and
// CSV fields are written.
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>

#include "tpfuse/fused_op.h"

namespace tpfuse::bench {

// printf of one number.
inline std::string Format(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), fmt, v);
  return buf;
}

// Microseconds for tables: two decimals below 1000.
inline std::string Us(double v) { return Format(v < 1000 ? "%.2f" : "%.1f", v); }

inline std::string Mib(size_t bytes) {
  return Format("%.0f MiB", double(bytes) / double(1 << 20));
}

// "norm,residual,quant".
inline std::string EmitText(const EmitSet& emit) {
  std::string text;
  for (const std::string& name : emit.Names()) text += (text.empty() ? "" : ",") + name;
  return text;
}

// A CSV field, quoted when it holds a comma, a quote or a newline.
inline std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace tpfuse::bench
