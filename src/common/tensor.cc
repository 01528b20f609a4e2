#include "common/tensor.h"

#include <cstring>
#include <stdexcept>

#include "common/numerics.h"
#include "tpfuse/status.h"

namespace tpfuse {

HostTensor::HostTensor(DType dtype, std::vector<int64_t> shape)
    : dtype_(dtype), shape_(std::move(shape)) {
  bytes_.assign(size_t(numel()) * DTypeSize(dtype_), std::byte{0});
}

int64_t HostTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

float HostTensor::GetF32(int64_t i) const {
  return DecodeElement(dtype_, bytes_.data() + size_t(i) * DTypeSize(dtype_));
}

void HostTensor::SetF32(int64_t i, float value) {
  EncodeElement(dtype_, value, bytes_.data() + size_t(i) * DTypeSize(dtype_));
}

bool HostTensor::BitwiseEquals(const HostTensor& other) const {
  return dtype_ == other.dtype_ && shape_ == other.shape_ && bytes_ == other.bytes_;
}

void HostTensor::FillBytes(uint8_t byte) {
  std::memset(bytes_.data(), byte, bytes_.size());
}

std::string HostTensor::TypeString() const {
  std::string s = std::string(DTypeName(dtype_)) + "[";
  for (size_t i = 0; i < shape_.size(); ++i) s += (i ? ", " : "") + std::to_string(shape_[i]);
  return s + "]";
}

HostTensor HostTensor::Reshaped(std::vector<int64_t> shape) const {
  HostTensor t = *this;
  t.shape_ = std::move(shape);
  if (t.numel() != numel())
    throw std::logic_error(StrCat("Reshaped: ", TypeString(), " has ", numel(), " elements"));
  return t;
}

}  // namespace tpfuse
