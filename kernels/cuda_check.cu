#include "kernels/cuda_check.h"

namespace s0 {

std::string CudaErrorDetail(cudaError_t e) {
  int dev = -1;
  cudaGetDevice(&dev);
  return std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ") on device " +
         std::to_string(dev);
}

std::string CublasErrorDetail(cublasStatus_t e) {
  int dev = -1;
  cudaGetDevice(&dev);
  return std::string(cublasGetStatusName(e)) + " (" + cublasGetStatusString(e) + ") on device " +
         std::to_string(dev);
}

}  // namespace s0
