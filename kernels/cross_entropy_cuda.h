// Completion-only cross-entropy through the LM head on the GPU, the twin of
// kernels/cross_entropy.h, for a packed batch (several sequences concatenated along T).
// Hugging Face `labels` semantics per sequence: position t predicts token t + 1, and with prompt
// length P the scored positions are t = max(P - 1, 0) .. length - 2; a sequence's loss is the
// mean over its scored positions.
//
// The full fp32 logits are never held: the scored rows are gathered into blocks of at most
// row_block rows, and for each block the vocabulary is walked in chunks of vocab_chunk columns,
// twice:
//   pass 1: logits[rows, chunk] = hidden_rows · lm_head[chunk]^T (cuBLAS, bf16 in, fp32 out),
//           merged into a per-row online log-sum-exp (running max and sum, fp32); the target's
//           logit is picked up in its chunk. Loss = lse - target logit.
//   pass 2: the same logits again; dlogits = scale * (softmax - onehot), rounded to bf16 (the
//           GEMM operand; the target's entry uses expm1 so that p - 1 keeps its digits), and
//           d_rows (+)= dlogits · lm_head[chunk] accumulated in fp32 by cuBLAS chunk by chunk,
//           then scattered into d_hidden.
// The GEMMs read lm_head 3 times per row block; larger blocks read it less often and need
// row_block * (6 * vocab_chunk + 6 * hidden) bytes of workspace.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/device_buffer.h"

namespace s0::gpu {

// One sequence of a packed batch: rows [offset, offset + length) of hidden and ids.
struct CeSequence {
  int64_t offset = 0;
  int64_t length = 0;       // >= 2
  int64_t prompt_len = 0;   // in [0, length)
  double grad_scale = 1.0;  // its d_hidden rows are grad_scale * d(its mean loss) / d(hidden)
};

// Owns the workspace for one (hidden, vocab) shape; reuse it across steps. Not thread-safe.
class CompletionCrossEntropy {
 public:
  CompletionCrossEntropy(int64_t hidden_dim, int64_t vocab, int64_t row_block = 2048,
                         int64_t vocab_chunk = 8192);

  // hidden: [tokens, H] bf16 device (the final norm's output); lm_head: [V, H] bf16 device (the
  // tied embedding where tied); ids: [tokens] int32 on the HOST (the batch's tokens; targets must
  // lie in [0, V)); seqs: n_seqs sequences in ascending, non-overlapping order.
  // d_hidden: [tokens, H] fp32 device, overwritten (rows not scored are zero), or null for the
  // loss alone. Returns each sequence's mean loss; waits for ctx's stream.
  std::vector<double> Run(const CudaContext& ctx, const bf16* hidden, const bf16* lm_head,
                          const int32_t* ids, int64_t tokens, const CeSequence* seqs, size_t n_seqs,
                          float* d_hidden);

 private:
  int64_t hidden_dim_, vocab_, row_block_, vocab_chunk_;
  DeviceBuffer<int32_t> rows_, targets_;  // [row_block]: global row and target id of each row
  DeviceBuffer<float> weights_;           // [row_block]: grad_scale / scored rows of its sequence
  DeviceBuffer<float> run_max_, run_sum_, target_logit_, lse_, loss_;  // [row_block]
  DeviceBuffer<bf16> hidden_rows_;                                     // [row_block, H]
  DeviceBuffer<float> d_rows_;                                         // [row_block, H]
  DeviceBuffer<float> logits_;                                         // [row_block, vocab_chunk]
  DeviceBuffer<bf16> dlogits_;                                         // [row_block, vocab_chunk]
};

}  // namespace s0::gpu
