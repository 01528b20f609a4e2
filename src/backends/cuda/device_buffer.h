// RAII owners of CUDA resources: device memory, streams, events, and the current device.
// Creation returns a Status (errors are values); destruction never throws and ignores errors
// (it runs on error paths and at exit, when the CUDA runtime may already be shutting down).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "backends/cuda/cuda_check.h"
#include "tpfuse/status.h"

namespace tpfuse::cuda {

// Device memory from cudaMalloc on the current device. Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // `bytes` may be 0 (then get() is null).
  static StatusOr<DeviceBuffer> Allocate(size_t bytes) {
    DeviceBuffer buffer;
    if (bytes > 0) TPFUSE_CUDA_CHECK(cudaMalloc(&buffer.ptr_, bytes));
    buffer.bytes_ = bytes;
    return StatusOr<DeviceBuffer>(std::move(buffer));
  }
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      Reset();
      ptr_ = std::exchange(other.ptr_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // get() is void*; get<float>() is float*.
  template <class T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  size_t size() const { return bytes_; }
  explicit operator bool() const { return ptr_ != nullptr; }

  // Frees now (cudaFree waits for work using the memory on the device).
  void Reset() {
    if (ptr_ != nullptr) (void)cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  // Gives up ownership: the caller frees the memory, or deliberately never does.
  void* Release() {
    bytes_ = 0;
    return std::exchange(ptr_, nullptr);
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A CUDA stream on the current device. Move-only.
class Stream {
 public:
  Stream() = default;
  // Non-blocking by default: no implicit synchronization with the legacy default stream.
  static StatusOr<Stream> Create(unsigned int flags = cudaStreamNonBlocking) {
    Stream stream;
    TPFUSE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream.stream_, flags));
    return StatusOr<Stream>(std::move(stream));
  }
  ~Stream() { Reset(); }
  Stream(Stream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}
  Stream& operator=(Stream&& other) noexcept {
    if (this != &other) {
      Reset();
      stream_ = std::exchange(other.stream_, nullptr);
    }
    return *this;
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  cudaStream_t get() const { return stream_; }
  Status Synchronize() const {
    TPFUSE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return Status::Ok();
  }
  // Pending work still completes; the handle is released when it does.
  void Reset() {
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
    stream_ = nullptr;
  }

 private:
  cudaStream_t stream_ = nullptr;
};

// A CUDA event on the current device. Move-only.
class Event {
 public:
  Event() = default;
  static StatusOr<Event> Create(unsigned int flags = cudaEventDefault) {
    Event event;
    TPFUSE_CUDA_CHECK(cudaEventCreateWithFlags(&event.event_, flags));
    return StatusOr<Event>(std::move(event));
  }
  ~Event() { Reset(); }
  Event(Event&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  Event& operator=(Event&& other) noexcept {
    if (this != &other) {
      Reset();
      event_ = std::exchange(other.event_, nullptr);
    }
    return *this;
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  cudaEvent_t get() const { return event_; }
  Status Record(cudaStream_t stream) const {
    TPFUSE_CUDA_CHECK(cudaEventRecord(event_, stream));
    return Status::Ok();
  }
  Status Synchronize() const {
    TPFUSE_CUDA_CHECK(cudaEventSynchronize(event_));
    return Status::Ok();
  }
  void Reset() {
    if (event_ != nullptr) (void)cudaEventDestroy(event_);
    event_ = nullptr;
  }

 private:
  cudaEvent_t event_ = nullptr;
};

// Makes `device` current for a scope and restores the previous device when it ends:
//   ScopedDevice guard;
//   TPFUSE_RETURN_IF_ERROR(guard.Set(comm.device()));
class ScopedDevice {
 public:
  ScopedDevice() = default;
  ~ScopedDevice() {
    if (previous_ >= 0) (void)cudaSetDevice(previous_);
  }
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;

  Status Set(int device) {
    int current = 0;
    TPFUSE_CUDA_CHECK(cudaGetDevice(&current));
    if (current == device) return Status::Ok();
    TPFUSE_CUDA_CHECK(cudaSetDevice(device));
    if (previous_ < 0) previous_ = current;  // restore the device from before the first Set
    return Status::Ok();
  }

 private:
  int previous_ = -1;
};

}  // namespace tpfuse::cuda
