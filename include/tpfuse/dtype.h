// Element types shared by the IR, the backends and the public API.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace tpfuse {

enum class DType : uint8_t { kBF16, kF16, kF32, kF8E4M3, kI32 };

// "bf16", "f16", "f32", "f8e4m3", "i32" (the spelling of the .tpg format).
std::string_view DTypeName(DType dtype);
std::optional<DType> ParseDType(std::string_view name);
int DTypeSize(DType dtype);
// bf16 or f16: the 16-bit activation types.
inline bool IsHalfType(DType dtype) { return dtype == DType::kBF16 || dtype == DType::kF16; }
inline bool IsFloatType(DType dtype) { return dtype != DType::kI32; }

}  // namespace tpfuse
