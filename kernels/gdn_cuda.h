// The chunked gated delta rule on the GPU (kernels.md §1-2), forward and input-gradient backward
// with dS0, for packed batches. The math, the conventions and the numerics are those of the CPU
// reference GatedDeltaRuleChunked* (kernels/gated_delta_rule.h), which this matches per sequence:
// C = 64 token chunks, T = (I + L)^-1 by forward substitution in fp32, W = T diag(beta e^gamma) K,
// U = T diag(beta) V, Delta = U - W S, a sequential state scan per (sequence, value head,
// block of 32 value columns), and the backward through the reverse dS scan (with its -W^T dDelta
// term), the output and the WY/UT representation. Decay factors e^(gamma_r - gamma_i) are taken of
// per-pair sums g_{i+1} + ... + g_r (never of differences of cumulative sums, never e^-gamma), and
// dg_j is summed from the gradients of the factors that contain g_j, as in the CPU reference.
//
// Packing: N sequences concatenated along the token axis; sequence s is tokens
// [cu_seqlens[s], cu_seqlens[s + 1]). Every sequence starts from the same S0 (one per layer); no
// state crosses a boundary. The backward returns dS0 = sum over sequences of each sequence's
// gradient w.r.t. its initial state (the loss does not use the final states). Empty sequences
// are allowed (they contribute nothing).
//
// Contract of both calls:
//   * Every pointer is device memory. All tensors are fp32, row-major, token-major; q and k are
//     already L2-normalised (GdnL2NormForward) and unscaled: the 1/sqrt(d_k) is applied here.
//     Value head h uses key head h / (H_v / H_k). Math is fp32 (FMA, no tensor cores); state and
//     dS are carried in fp32.
//   * cu_seqlens: int32 [N + 1] on the device with cu_seqlens[0] = 0, non-decreasing,
//     cu_seqlens[N] = T. It is not validated (that would need a copy to the host).
//   * workspace: at least Gdn*WorkspaceBytes(dims) bytes, 256-byte aligned (cudaMalloc memory),
//     owned by the caller, used only during the call's kernels (reusable once they are done).
//     It holds per-chunk W, U, Delta, A, T, the chunk-boundary states and their gradients in
//     fp32: at d_k = d_v = 128 about 2.3 KB (forward) and 5.4 KB (backward) per token and value
//     head, e.g. 0.6 and 1.4 GB for 8192 tokens of Qwen3.5-4B's 32 value heads.
//   * Everything is enqueued on `stream`; no call synchronises. Outputs are fully overwritten and
//     must not alias inputs. Results are deterministic (no atomics; fixed summation orders).
//   * d_k, d_v <= 128.
// Device code is C++17: this header must stay includable from .cu files.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace s0 {

struct GdnPackedDims {
  int64_t tokens = 0;       // T = cu_seqlens[N]
  int64_t num_seqs = 0;     // N >= 1
  int64_t num_k_heads = 0;  // H_k
  int64_t num_v_heads = 0;  // H_v, a multiple of H_k
  int64_t d_k = 0;
  int64_t d_v = 0;
};

struct GdnPackedInputs {
  const int32_t* cu_seqlens = nullptr;  // [N + 1]
  const float* q = nullptr;             // [T, H_k, d_k]
  const float* k = nullptr;             // [T, H_k, d_k]
  const float* v = nullptr;             // [T, H_v, d_v]
  const float* g = nullptr;             // [T, H_v], log decay (<= 0)
  const float* beta = nullptr;          // [T, H_v]
  const float* s0 = nullptr;            // [H_v, d_k, d_v], required
};

// Either all of dq, dk, dv, dg, dbeta are set, or none is: then only dS0 is computed, which skips
// the chunk-start states and the per-chunk gradient kernels (kernels.md §8.2: all the lowest
// tuned layer needs). dq and dk are summed over the value heads sharing a key head; dq is the
// gradient w.r.t. the unscaled q.
struct GdnPackedGrads {
  float* dq = nullptr;     // [T, H_k, d_k]
  float* dk = nullptr;     // [T, H_k, d_k]
  float* dv = nullptr;     // [T, H_v, d_v]
  float* dg = nullptr;     // [T, H_v]
  float* dbeta = nullptr;  // [T, H_v]
  float* ds0 = nullptr;    // [H_v, d_k, d_v], required
};

size_t GdnForwardWorkspaceBytes(const GdnPackedDims& dims);
size_t GdnBackwardWorkspaceBytes(const GdnPackedDims& dims);

// o: [T, H_v, d_v]. With keep_for_backward the workspace must hold
// GdnBackwardWorkspaceBytes(dims): the call leaves there the per-chunk forward quantities the
// backward needs (W, Delta, A, the decay factors, T, the chunk-start states) for a following
// GatedDeltaRuleCudaBackward with forward_kept.
void GatedDeltaRuleCudaForward(const GdnPackedDims& dims, const GdnPackedInputs& in, float* o,
                               void* workspace, cudaStream_t stream,
                               bool keep_for_backward = false);

// dout: [T, H_v, d_v]. Recomputes the forward's per-chunk quantities from `in`, or, with
// forward_kept, takes them from the workspace, where a GatedDeltaRuleCudaForward with
// keep_for_backward and the same dims and inputs left them (nothing else may have used the
// workspace in between). Both give bit-identical results.
void GatedDeltaRuleCudaBackward(const GdnPackedDims& dims, const GdnPackedInputs& in,
                                const float* dout, const GdnPackedGrads& grads, void* workspace,
                                cudaStream_t stream, bool forward_kept = false);

}  // namespace s0
