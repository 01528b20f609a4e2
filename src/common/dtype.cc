#include "tpfuse/dtype.h"

namespace tpfuse {

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return "bf16";
    case DType::kF16: return "f16";
    case DType::kF32: return "f32";
    case DType::kF8E4M3: return "f8e4m3";
    case DType::kI32: return "i32";
  }
  return "?";
}

std::optional<DType> ParseDType(std::string_view name) {
  for (DType d : {DType::kBF16, DType::kF16, DType::kF32, DType::kF8E4M3, DType::kI32}) {
    if (DTypeName(d) == name) return d;
  }
  return std::nullopt;
}

int DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
    case DType::kF16: return 2;
    case DType::kF32:
    case DType::kI32: return 4;
    case DType::kF8E4M3: return 1;
  }
  return 0;
}

}  // namespace tpfuse
