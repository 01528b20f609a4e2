// A host tensor: dtype, concrete shape, raw bytes (row-major). The currency of the CPU backend,
// the executors' inputs and outputs, and the tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tpfuse/dtype.h"

namespace tpfuse {

class HostTensor {
 public:
  HostTensor() = default;
  // Zero-filled.
  HostTensor(DType dtype, std::vector<int64_t> shape);

  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(i); }
  int rank() const { return int(shape_.size()); }
  int64_t numel() const;
  size_t nbytes() const { return bytes_.size(); }

  void* data() { return bytes_.data(); }
  const void* data() const { return bytes_.data(); }
  template <class T>
  T* data_as() { return reinterpret_cast<T*>(bytes_.data()); }
  template <class T>
  const T* data_as() const { return reinterpret_cast<const T*>(bytes_.data()); }

  // Element i (flat, row-major) decoded to / encoded from float with round to nearest even.
  float GetF32(int64_t i) const;
  void SetF32(int64_t i, float value);

  // Same dtype, shape and bytes.
  bool BitwiseEquals(const HostTensor& other) const;
  // Fills every byte with `byte` (poisoning before a kernel writes it).
  void FillBytes(uint8_t byte);
  // "bf16[3, 4096]"
  std::string TypeString() const;
  // A view of the same bytes with another shape of the same element count.
  HostTensor Reshaped(std::vector<int64_t> shape) const;

 private:
  DType dtype_ = DType::kF32;
  std::vector<int64_t> shape_;
  std::vector<std::byte> bytes_;
};

}  // namespace tpfuse
