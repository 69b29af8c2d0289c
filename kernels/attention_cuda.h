// Causal softmax attention with grouped KV heads on the GPU, forward and input-gradient backward,
// flash-style (kernels.md §5), for packed sequences. The CPU reference is AttentionForward /
// AttentionBackward (kernels/attention.h), which this matches per sequence:
//   out[t, h] = sum_{s <= t} softmax_s(q[t, h] . k[s, g] d^-0.5) v[s, g],  g = h / (n_h / n_kv),
// with t and s in the same sequence: sequence i is tokens [cu_seqlens[i], cu_seqlens[i + 1]), and
// attention never crosses a boundary. Inputs are taken after RoPE, the output before the gate.
//
// No T x T matrix touches global memory: query and key tiles of 64 rows (32 when d > 128) sit in
// shared memory; the forward keeps a running max and sum per query row (online softmax) and
// saves lse = max + log(sum) per (token, query head); the backward recomputes the probabilities
// tile by tile from lse, with D = rowsum(dO ⊙ O): dV = P^T dO, dS = P ⊙ (dO V^T - D),
// dK = dS^T Q d^-0.5, dQ = dS K d^-0.5. dK and dV come from one kernel per (key tile, kv head)
// that loops over the group's query heads, dQ from one per (query tile, query head), so every sum
// has a fixed order: no atomics, results are deterministic.
//
// Contract: every pointer is device memory; all tensors fp32, row-major, token-major; math in
// fp32 (FMA, no tensor cores). cu_seqlens: int32 [N + 1] with cu_seqlens[0] = 0, non-decreasing,
// cu_seqlens[N] = T (not validated: it stays on the device). d <= 256. Everything is enqueued on
// `stream`; outputs are fully overwritten and must not alias inputs.
// Device code is C++17: this header must stay includable from .cu files.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace s0 {

struct AttentionPackedDims {
  int64_t tokens = 0;    // T = cu_seqlens[N]
  int64_t num_seqs = 0;  // N >= 1
  int64_t n_h = 0;       // query heads
  int64_t n_kv = 0;      // kv heads, dividing n_h
  int64_t d = 0;         // head dim
};

struct AttentionPackedInputs {
  const int32_t* cu_seqlens = nullptr;  // [N + 1]
  const float* q = nullptr;             // [T, n_h, d]
  const float* k = nullptr;             // [T, n_kv, d]
  const float* v = nullptr;             // [T, n_kv, d]
};

struct AttentionPackedGrads {
  float* dq = nullptr;  // [T, n_h, d]
  float* dk = nullptr;  // [T, n_kv, d], summed over the query heads of each kv head
  float* dv = nullptr;  // [T, n_kv, d], the same
};

// out: [T, n_h, d]; lse: [T, n_h], the natural-log logsumexp of each row's scaled scores (what
// the backward needs besides out).
void AttentionCudaForward(const AttentionPackedDims& dims, const AttentionPackedInputs& in,
                          float* out, float* lse, cudaStream_t stream);

// Bytes of the backward's workspace (D, [T, n_h] fp32); 256-byte aligned memory, owned by the
// caller, used only by the call's kernels.
size_t AttentionBackwardWorkspaceBytes(const AttentionPackedDims& dims);

// out and lse: the forward's outputs for `in`; dout: [T, n_h, d].
void AttentionCudaBackward(const AttentionPackedDims& dims, const AttentionPackedInputs& in,
                           const float* out, const float* lse, const float* dout,
                           const AttentionPackedGrads& grads, void* workspace,
                           cudaStream_t stream);

}  // namespace s0
