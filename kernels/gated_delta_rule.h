// CPU reference of the gated delta rule (the recurrent core of a Gated DeltaNet layer, Qwen3.5
// `Qwen3_5GatedDeltaNet`; spec qwen3_5.md §1.6.7, kernels.md §1-2), forward and input-gradient
// backward, from a given initial state S0 and with dS0.
//
// Per value head h (key head kh = h / (H_v / H_k), grouped as repeat_interleave), per token t:
//   S   <- exp(g_t) S                     S: [d_k, d_v], S[k][v] (HF `initial_state` layout)
//   m    = S^T k_t
//   d_t  = beta_t (v_t - m)
//   S   <- S + k_t d_t^T
//   o_t  = S^T (scale q_t),               scale = 1 / sqrt(d_k), applied here
// q and k are passed already L2-normalised (GdnL2NormForward in kernels/gdn.h); g <= 0 is the log
// decay, beta in (0, 1).
//
// Two forms of the same math:
//   * Recurrent: token by token, the ground truth. Its backward keeps one state per 64 tokens and
//     recomputes the states in between, so memory is O(T/64 * d_k * d_v) per head.
//   * Chunked (C = kGdnChunk = 64, the WY/UT form the CUDA engine mirrors): per chunk the
//     chunk-local cumulative log decay gamma, the unit-lower-triangular system T = (I + L)^-1,
//     W = T diag(beta e^gamma) K, U = T diag(beta) V, Delta = U - W S, output from the chunk-start
//     state plus the causal intra-chunk part, S <- e^Gamma S + K^T diag(e^(Gamma-gamma)) Delta.
//     The backward stores the chunk-start states, then runs the chunks in reverse with the
//     dS recurrence (including the -W^T dDelta term) and the backward through W, U and T.
//     Numerics worth mirroring (both matter only under strong decay, e.g. g = -20 per step):
//     e^(gamma_r - gamma_i) is taken of the exponent g_{i+1} + ... + g_r summed per pair, not of a
//     difference of cumulative sums; and dg_j is summed from the gradients of the decay factors
//     that contain g_j (pairs i < j <= r), never as a reverse cumsum of row-minus-column sums,
//     which cancels O(1) terms. With both, float chunked matches recurrent to ~1e-6 of max|dg|.
//
// Conventions: one sequence per call, row-major, plain pointers; T below = dims.seq_len. Real is
// float or double (explicit instantiations); all arithmetic is in Real. Outputs must not alias
// inputs and are fully overwritten. Work is split over heads with ParallelFor (kernels/parallel.h);
// results do not depend on the thread count.
#pragma once

#include <cstdint>
#include <type_traits>

namespace s0 {

inline constexpr int64_t kGdnChunk = 64;

struct GdnDims {
  int64_t seq_len = 0;      // T (0 is allowed: the final state is S0, dS0 is dS_final)
  int64_t num_k_heads = 0;  // H_k
  int64_t num_v_heads = 0;  // H_v, a multiple of H_k
  int64_t d_k = 0;
  int64_t d_v = 0;
};

// Inputs of one sequence.
template <typename Real>
struct GdnInputs {
  const Real* q = nullptr;     // [T, H_k, d_k], L2-normalised, unscaled
  const Real* k = nullptr;     // [T, H_k, d_k], L2-normalised
  const Real* v = nullptr;     // [T, H_v, d_v]
  const Real* g = nullptr;     // [T, H_v], log decay (<= 0)
  const Real* beta = nullptr;  // [T, H_v]
  const Real* s0 = nullptr;    // [H_v, d_k, d_v], or nullptr for a zero initial state
};

// Input gradients of one sequence (all required). dq and dk are summed over the value heads that
// share a key head; dq is the gradient w.r.t. the unscaled q.
template <typename Real>
struct GdnGrads {
  Real* dq = nullptr;     // [T, H_k, d_k]
  Real* dk = nullptr;     // [T, H_k, d_k]
  Real* dv = nullptr;     // [T, H_v, d_v]
  Real* dg = nullptr;     // [T, H_v]
  Real* dbeta = nullptr;  // [T, H_v]
  Real* ds0 = nullptr;    // [H_v, d_k, d_v] (also when in.s0 is nullptr)
};

// o: [T, H_v, d_v]; s_final: [H_v, d_k, d_v] or nullptr when not wanted. (The optional pointers
// are std::type_identity_t so that a literal nullptr does not stop Real from being deduced.)
template <typename Real>
void GatedDeltaRuleRecurrentForward(const GdnDims& dims, const GdnInputs<Real>& in, Real* o,
                                    std::type_identity_t<Real>* s_final);

// dout: [T, H_v, d_v]; ds_final: [H_v, d_k, d_v] or nullptr (= zero: the loss does not use the
// final state). Recomputes the forward from `in`.
template <typename Real>
void GatedDeltaRuleRecurrentBackward(const GdnDims& dims, const GdnInputs<Real>& in,
                                     const Real* dout,
                                     const std::type_identity_t<Real>* ds_final,
                                     const GdnGrads<Real>& grads);

// Same contracts as the recurrent pair; chunked WY/UT algorithm with C = kGdnChunk.
template <typename Real>
void GatedDeltaRuleChunkedForward(const GdnDims& dims, const GdnInputs<Real>& in, Real* o,
                                  std::type_identity_t<Real>* s_final);

template <typename Real>
void GatedDeltaRuleChunkedBackward(const GdnDims& dims, const GdnInputs<Real>& in,
                                   const Real* dout,
                                   const std::type_identity_t<Real>* ds_final,
                                   const GdnGrads<Real>& grads);

}  // namespace s0
