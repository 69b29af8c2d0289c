// The device-error tier for CUDA code (CUDA runtime and cuBLAS): one macro family generated from
// one template, printing the statement, file:line, device, host and rank, then aborting (see
// kernels/check.h). Include only from .cu files or from .cpp files built with CUDA.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "kernels/check.h"

namespace s0 {

std::string CudaErrorDetail(cudaError_t e);
std::string CublasErrorDetail(cublasStatus_t e);

}  // namespace s0

#define S0_DEVICE_CHECK_GEN(kind, ok_value, detail_fn, expr)                    \
  do {                                                                          \
    auto s0_err_ = (expr);                                                      \
    if (s0_err_ != (ok_value))                                                  \
      ::s0::CheckFailed(kind, #expr, detail_fn(s0_err_), __FILE__, __LINE__);   \
  } while (0)

#define CUDA_CHECK(expr) S0_DEVICE_CHECK_GEN("CUDA_CHECK", cudaSuccess, ::s0::CudaErrorDetail, expr)
#define CUBLAS_CHECK(expr) \
  S0_DEVICE_CHECK_GEN("CUBLAS_CHECK", CUBLAS_STATUS_SUCCESS, ::s0::CublasErrorDetail, expr)
// After a kernel launch: catches launch-configuration errors at once.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
