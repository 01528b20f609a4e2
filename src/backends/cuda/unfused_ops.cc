#include "backends/cuda/unfused_ops.h"

namespace tpfuse::cuda {

int64_t DeviceTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

size_t DeviceTensor::nbytes() const { return size_t(numel()) * size_t(DTypeSize(dtype)); }

int64_t DeviceTensor::cols() const { return shape.empty() ? 1 : shape.back(); }

int64_t DeviceTensor::rows() const {
  int64_t n = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) n *= shape[i];
  return n;
}

std::string DeviceTensor::ToString() const {
  std::string s = std::string(DTypeName(dtype)) + "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace tpfuse::cuda
