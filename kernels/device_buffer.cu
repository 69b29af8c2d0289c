#include "kernels/device_buffer.h"

namespace s0 {

CudaContext::CudaContext(size_t cublas_workspace_bytes)
    : cublas_workspace_(cublas_workspace_bytes) {
  CUDA_CHECK(cudaGetDevice(&device_));
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  CUBLAS_CHECK(cublasCreate(&cublas_));
  CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
  CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_.data(), cublas_workspace_.bytes()));
  CUBLAS_CHECK(cublasSetMathMode(
      cublas_,
      cublasMath_t(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
}

CudaContext::~CudaContext() {
  // The workspace is freed after the handle (members are destroyed after this body), and no
  // kernel may still use it: wait for the stream first.
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  CUBLAS_CHECK(cublasDestroy(cublas_));
  CUDA_CHECK(cudaStreamDestroy(stream_));
}

void CudaContext::Synchronize() const { CUDA_CHECK(cudaStreamSynchronize(stream_)); }

}  // namespace s0
