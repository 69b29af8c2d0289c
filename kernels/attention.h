// Qwen3.5's gated softmax attention (spec §1.5), CPU reference, fp32 and fp64: the per-head
// split of q_proj's output into query and gate, causal GQA softmax attention, and the sigmoid
// output gate. Shapes are row-major, token-major: [T, heads, head_dim].
#pragma once

#include <cstdint>

namespace s0 {

// q_proj's output viewed per head as [T, n_h, 2 * d]: the first d of each head's 2d values are
// the query, the next d the gate (spec §1.5 step 1; not two contiguous halves).
//   qg: [T, n_h, 2d] -> q: [T, n_h, d], gate: [T, n_h, d] (= [T, n_h * d], head-major).
template <typename T>
void SplitQueryGate(const T* qg, T* q, T* gate, int64_t tokens, int64_t n_h, int64_t d);

// Gradient of SplitQueryGate: interleaves dq and dgate back into dqg: [T, n_h, 2d].
template <typename T>
void MergeQueryGateGrad(const T* dq, const T* dgate, T* dqg, int64_t tokens, int64_t n_h,
                        int64_t d);

// Causal softmax attention with grouped KV heads:
//   out[t, h] = sum_{s <= t} softmax_s(q[t, h] . k[s, g] * d^-0.5) v[s, g],  g = h / (n_h / n_kv)
// q, out: [T, n_h, d]; k, v: [T, n_kv, d]; n_kv divides n_h. Parallel over query heads; holds
// one block of query rows x T scores per head, never T x T for all heads.
template <typename T>
void AttentionForward(const T* q, const T* k, const T* v, T* out, int64_t tokens, int64_t n_h,
                      int64_t n_kv, int64_t d);

// Input gradients of AttentionForward, recomputing the probabilities: dq: [T, n_h, d];
// dk, dv: [T, n_kv, d], each kv head's gradient summed over the query heads that share it
// (in ascending head order). Overwrites dq, dk, dv.
template <typename T>
void AttentionBackward(const T* q, const T* k, const T* v, const T* dout, T* dq, T* dk, T* dv,
                       int64_t tokens, int64_t n_h, int64_t n_kv, int64_t d);

// The output gate, elementwise over n values: out = attn * sigmoid(gate).
template <typename T>
void SigmoidGateForward(const T* attn, const T* gate, T* out, int64_t n);

// dattn = dout * sigmoid(gate); dgate = dout * attn * sigmoid(gate) * (1 - sigmoid(gate)).
template <typename T>
void SigmoidGateBackward(const T* attn, const T* gate, const T* dout, T* dattn, T* dgate,
                         int64_t n);

}  // namespace s0
