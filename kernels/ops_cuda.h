// CUDA twins of the dense-layer ops (kernels/embedding.h, norm.h, rope.h, activations.h and the
// element-wise parts of attention.h), forward and input-gradient backward. Each is tested against
// its CPU reference (tests/kernels/ops_gpu_test.cpp).
//
// Conventions, for this header and kernels/gdn_ops_cuda.h:
//   * Row-major, token-major ([T, ...]) plain device pointers, sizes in elements; each launcher
//     enqueues on `stream` and returns at once. Shapes and dtypes are written per argument.
//   * Dtypes: frozen matrices are bf16; small per-channel parameters (norm weights, conv taps,
//     A_log, dt_bias) are fp32 on the GPU (the loader upcasts bf16 ones, which is exact). All
//     arithmetic is fp32; reductions accumulate in fp32. Forward activations that feed a GEMM
//     are bf16; those that feed or leave the fp32 attention and delta-rule kernels
//     (kernels/attention_cuda.h, gdn_cuda.h) or the residual stream may be fp32: such an
//     argument's type is a template parameter (float or bf16), named in its comment.
//   * Activation gradients are fp32 (the residual-stream gradient dh among them). A backward
//     whose output usually feeds a GEMM's input gradient takes G = float or bf16 for it, so it
//     can write the GEMM's bf16 operand directly; otherwise its outputs are fp32.
//   * Outputs are fully overwritten unless an OutputMode says kAccumulate; outputs alias inputs
//     only where a comment allows it.
//   * Packed batches: several sequences concatenated along T (the packing the attention and
//     delta-rule kernels describe by cu_seqlens). Ops that look along T take `pos`: [T] int32,
//     each token's position in its own sequence (0 at a sequence start), built on the host with
//     cu_seqlens; null means one sequence, pos[t] = t.
#pragma once

#include <cstdint>

#include "kernels/device_buffer.h"
#include "kernels/output_mode.h"

namespace s0::gpu {

// y = bf16(x): the fp32 gradient as a GEMM's bf16 operand. x: [n] fp32; y: [n] bf16.
void CastToBf16(const float* x, bf16* y, int64_t n, cudaStream_t stream);

// out[t, :] = table[ids[t], :] (spec §1.2). No backward: the table is frozen and nothing below
// the embedding needs a gradient.
//   ids: [T] int32, each in [0, vocab) (validated by the host; an id outside traps the kernel)
//   table: [vocab, hidden] bf16   out: [T, hidden] Out (float or bf16)
template <typename Out>
void EmbeddingForward(const int32_t* ids, const bf16* table, Out* out, int64_t tokens,
                      int64_t vocab, int64_t hidden, cudaStream_t stream);

// Zero-centred RMSNorm, y = x / sqrt(mean(x^2) + eps) * (1 + w), over the last dim; one block
// per row. X: the residual stream (or q_proj / k_proj's output); Y: bf16 for a GEMM, fp32 for
// attention (q_norm, k_norm).
//   x: [rows, dim] X   w: [dim] fp32 (checkpoint value; the op adds the 1)   y: [rows, dim] Y
// y may equal x when X = Y.
template <typename X, typename Y>
void RmsNormForward(const X* x, const float* w, Y* y, int64_t rows, int64_t dim, float eps,
                    cudaStream_t stream);

// dx (+)= r (1 + w) dy - x r^3 / dim * sum_j(dy_j (1 + w_j) x_j),  r = 1 / sqrt(mean(x^2) + eps).
//   x: [rows, dim] X   w: [dim] fp32   dy: [rows, dim] fp32   dx: [rows, dim] G
// dx may equal dy when G = float.
template <typename X, typename G>
void RmsNormBackward(const X* x, const float* w, const float* dy, G* dx, int64_t rows, int64_t dim,
                     float eps, OutputMode mode, cudaStream_t stream);

// Partial NeoX RoPE (spec §1.5.1): on the first rot_dim dims of each head, for h = rot_dim / 2
// and i < h,  y[i] = x[i] cos_i - x[i + h] sin_i,  y[i + h] = x[i + h] cos_i + x[i] sin_i;
// dims >= rot_dim pass through. Backward applies the inverse rotation (sin -> -sin).
//   x, y: [T, heads, head_dim] Elem (float or bf16; y may equal x)
//   cos, sin: [table_rows, rot_dim / 2] fp32, built on the host by
//             RopeTables(table_rows, 0, rot_dim, theta, ...) and uploaded (kernels/rope.h)
//   pos: [T] int32 table row of each token (< table_rows), or null: row t
template <typename Elem>
void RopeForward(const Elem* x, Elem* y, int64_t tokens, int64_t heads, int64_t head_dim,
                 int64_t rot_dim, const float* cos, const float* sin, const int32_t* pos,
                 cudaStream_t stream);
template <typename Elem>
void RopeBackward(const Elem* dy, Elem* dx, int64_t tokens, int64_t heads, int64_t head_dim,
                  int64_t rot_dim, const float* cos, const float* sin, const int32_t* pos,
                  cudaStream_t stream);

// act = silu(gate) * up (spec §1.7).   gate, up, act: [n] bf16
void SwiGluForward(const bf16* gate, const bf16* up, bf16* act, int64_t n, cudaStream_t stream);
// dgate = dact * up * silu'(gate); dup = dact * silu(gate).
//   gate, up: [n] bf16   dact: [n] fp32   dgate, dup: [n] G
template <typename G>
void SwiGluBackward(const bf16* gate, const bf16* up, const float* dact, G* dgate, G* dup,
                    int64_t n, cudaStream_t stream);

// The attention output gate: out = attn * sigmoid(gate).
//   attn: [n] A (fp32 from kernels/attention_cuda.h)   gate: [n] bf16   out: [n] bf16 (o_proj)
template <typename A>
void SigmoidGateForward(const A* attn, const bf16* gate, bf16* out, int64_t n, cudaStream_t stream);
// dattn = dout * sigmoid(gate); dgate = dout * attn * sigmoid(gate) * (1 - sigmoid(gate)).
//   attn: [n] A   gate: [n] bf16   dout, dattn, dgate: [n] fp32
template <typename A>
void SigmoidGateBackward(const A* attn, const bf16* gate, const float* dout, float* dattn,
                         float* dgate, int64_t n, cudaStream_t stream);

// q_proj's output per head is [query | gate] (spec §1.5 step 1, not two contiguous halves).
//   qg: [T, n_h, 2d] bf16 -> q: [T, n_h, d] bf16, gate: [T, n_h, d] bf16
void SplitQueryGate(const bf16* qg, bf16* q, bf16* gate, int64_t tokens, int64_t n_h, int64_t d,
                    cudaStream_t stream);
// Its gradient: dq, dgate: [T, n_h, d] fp32 -> dqg: [T, n_h, 2d] G.
template <typename G>
void MergeQueryGateGrad(const float* dq, const float* dgate, G* dqg, int64_t tokens, int64_t n_h,
                        int64_t d, cudaStream_t stream);

}  // namespace s0::gpu
