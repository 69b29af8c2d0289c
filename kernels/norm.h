// Qwen3.5's zero-centred RMSNorm (Qwen3_5RMSNorm), CPU reference, fp32 and fp64:
//   y = x / sqrt(mean(x^2) + eps) * (1 + w)
// over the last dim of x: [rows, dim] (hidden states [T, H], or per-head q/k [T * heads, d_h]).
// w: [dim] is the checkpoint value (initialised to zeros); the op adds the 1. The GDN output
// norm (Qwen3_5RMSNormGated, weight used as-is) is a different op and lives with the GDN kernels.
// Sums of squares and the backward's dot product accumulate in double.
#pragma once

#include <cstdint>

#include "kernels/output_mode.h"

namespace s0 {

// x, y: [rows, dim]; w: [dim]. y may equal x (in place).
template <typename T>
void RmsNormForward(const T* x, const T* w, T* y, int64_t rows, int64_t dim, double eps);

// Input gradient, recomputing the statistics from x:
//   dx (+)= r * (1 + w) * dy - x * r^3 / dim * sum_j(dy_j * (1 + w_j) * x_j),
//   r = 1 / sqrt(mean(x^2) + eps).
// x, dy, dx: [rows, dim]; w: [dim]. dx may equal dy.
template <typename T>
void RmsNormBackward(const T* x, const T* w, const T* dy, T* dx, int64_t rows, int64_t dim,
                     double eps, OutputMode mode = OutputMode::kOverwrite);

}  // namespace s0
