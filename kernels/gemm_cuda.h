// bf16 GEMMs of nn.Linear layers on the GPU through cuBLAS (cublasGemmEx), tensor cores with
// fp32 accumulation; the twin of kernels/matmul.h's MatmulForward / MatmulBackwardInput.
// Row-major, token-major, plain device pointers, sizes in elements; weights are bf16 row-major
// [out, in] as nn.Linear stores them. Outputs are fp32 or bf16 (Out = float or bf16): with
// OutputMode::kAccumulate the product is added to what the output holds (beta = 1), in fp32,
// then rounded once to Out. Outputs must not alias inputs. Enqueued on ctx's stream; results are
// deterministic for a given shape (cuBLAS has its own workspace, no atomics).
#pragma once

#include <cstdint>

#include "kernels/device_buffer.h"
#include "kernels/output_mode.h"

namespace s0::gpu {

// y (+)= x · w^T.
//   x: [rows, in] bf16   w: [out, in] bf16   y: [rows, out] Out
template <typename Out>
void LinearForward(const CudaContext& ctx, const bf16* x, const bf16* w, Out* y, int64_t rows,
                   int64_t in, int64_t out, OutputMode mode = OutputMode::kOverwrite);

// Input gradient of LinearForward: dx (+)= dy · w.
//   dy: [rows, out] bf16   w: [out, in] bf16   dx: [rows, in] Out
template <typename Out>
void LinearBackwardInput(const CudaContext& ctx, const bf16* dy, const bf16* w, Out* dx,
                         int64_t rows, int64_t in, int64_t out,
                         OutputMode mode = OutputMode::kOverwrite);

}  // namespace s0::gpu
