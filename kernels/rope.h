// Rotary position embedding as Qwen3.5's full-attention layers use it (spec §1.5.1): NeoX
// "rotate_half" form on the first rot_dim dims of each head, the rest passing through; CPU
// reference, fp32 and fp64. For text the interleaved mRoPE reduces to this.
#pragma once

#include <cstdint>

namespace s0 {

// cos/sin tables for positions pos_offset .. pos_offset + n_pos - 1, each [n_pos, rot_dim / 2].
// Always float32, whatever the model's dtype, exactly as Hugging Face computes them:
//   inv_freq[i] = 1 / theta^(float(2i) / float(rot_dim))   (float32 pow and divisions)
//   angle       = float(pos) * inv_freq[i]                   (rounded to float32)
//   cos, sin    = cosf(angle), sinf(angle)
// An fp64 model casts these float32 values up; it never recomputes angles in double.
void RopeTables(int64_t n_pos, int64_t pos_offset, int64_t rot_dim, double theta, float* cos,
                float* sin);

// y = R(pos) x for token t at pos_offset + t (the tables' rows), per head:
//   y[i]       = x[i] * cos_i - x[i + h] * sin_i     for i < h = rot_dim / 2
//   y[i + h]   = x[i + h] * cos_i + x[i] * sin_i
//   y[j]       = x[j]                                for j >= rot_dim
// x, y: [tokens, heads, head_dim]; cos, sin: [tokens, rot_dim / 2] from RopeTables; rot_dim even
// and <= head_dim. y may equal x.
template <typename T>
void RopeForward(const T* x, T* y, int64_t tokens, int64_t heads, int64_t head_dim,
                 int64_t rot_dim, const float* cos, const float* sin);

// Input gradient: dx = R(pos)^T dy, the inverse rotation. Same shapes; dx may equal dy.
template <typename T>
void RopeBackward(const T* dy, T* dx, int64_t tokens, int64_t heads, int64_t head_dim,
                  int64_t rot_dim, const float* cos, const float* sin);

}  // namespace s0
