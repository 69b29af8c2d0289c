// Device memory and the per-stream execution context of the CUDA engine.
//   DeviceBuffer<T>: owns `size()` elements of device memory (cudaMalloc / cudaFree); move-only.
//   CudaContext:     one CUDA stream plus the cuBLAS handle bound to it and its workspace; every
//                    launcher takes it (or its stream) explicitly, there are no globals.
// Device errors are fatal (CUDA_CHECK, kernels/cuda_check.h). Include from .cu files or from
// .cpp files built with CUDA (S0_HAVE_CUDA); device code is C++17, so this header is too.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/cuda_check.h"

namespace s0 {

// The storage type of frozen weights and forward activations on the GPU.
using bf16 = __nv_bfloat16;

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // Uninitialised memory for `count` elements (no allocation when count is 0).
  explicit DeviceBuffer(size_t count) : size_(count) {
    if (count > 0) CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&data_), count * sizeof(T)));
  }
  ~DeviceBuffer() {
    if (data_ != nullptr) CUDA_CHECK(cudaFree(data_));
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept : data_(other.data_), size_(other.size_) {
    other.data_ = nullptr;
    other.size_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      DeviceBuffer dead(std::move(*this));
      data_ = other.data_;
      size_ = other.size_;
      other.data_ = nullptr;
      other.size_ = 0;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }

  // Enqueues host -> device of host[0, count) into elements [0, count) on `stream`. The host
  // memory must stay unchanged until the stream runs the copy; pageable memory (std::vector) is
  // staged before this returns, so a vector may be reused or freed at once.
  void Upload(const T* host, size_t count, cudaStream_t stream) {
    S0_CHECK(count <= size_);
    if (count > 0) {
      CUDA_CHECK(cudaMemcpyAsync(data_, host, count * sizeof(T), cudaMemcpyHostToDevice, stream));
    }
  }
  void Upload(const std::vector<T>& host, cudaStream_t stream) {
    Upload(host.data(), host.size(), stream);
  }
  // Device -> host of elements [0, count), after the work already enqueued on `stream`; waits
  // for the copy (synchronises the stream).
  void Download(T* host, size_t count, cudaStream_t stream) const {
    S0_CHECK(count <= size_);
    if (count > 0) {
      CUDA_CHECK(cudaMemcpyAsync(host, data_, count * sizeof(T), cudaMemcpyDeviceToHost, stream));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  std::vector<T> ToHost(cudaStream_t stream) const {
    std::vector<T> host(size_);
    Download(host.data(), size_, stream);
    return host;
  }
  // Sets every byte to `value` (0xFF: the NaN pattern of fp32 and bf16, used to poison outputs).
  void FillBytes(int value, cudaStream_t stream) {
    if (size_ > 0) CUDA_CHECK(cudaMemsetAsync(data_, value, bytes(), stream));
  }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

// cuBLAS's recommended workspace on Hopper.
inline constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;

// A non-blocking stream on the device current at construction, a cuBLAS handle bound to it with
// its own workspace (so cuBLAS never allocates during a GEMM and repeats results bit for bit),
// tensor-core math with fp32 accumulation and no reduced-precision split-K reductions. Not
// thread-safe: one host thread enqueues on a context at a time. Move-free and copy-free.
class CudaContext {
 public:
  explicit CudaContext(size_t cublas_workspace_bytes = kCublasWorkspaceBytes);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  // Waits for everything enqueued on the stream.
  void Synchronize() const;

 private:
  int device_ = -1;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  DeviceBuffer<unsigned char> cublas_workspace_;
};

}  // namespace s0
