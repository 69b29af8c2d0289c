// Completion-only cross-entropy through the LM head (spec §1.8), CPU reference, fp32 and fp64.
// Hugging Face `labels` semantics: position t predicts token t + 1; targets that are prompt
// tokens are masked (-100), so with prompt length P the scored positions are
// t = max(P - 1, 0) .. T - 2; the loss is the mean over them.
#pragma once

#include <cstdint>

namespace s0 {

// hidden: [T, H] (final-norm output); lm_head: [V, H] (the tied embedding where tied);
// ids: [T], the example's tokens (targets must lie in [0, V)); at least one position scored.
// Returns the mean loss over scored positions. When d_hidden ([T, H]) is not null it is
// overwritten with grad_scale * d(mean loss) / d(hidden); rows of unscored positions are zero.
// grad_scale lets the caller average over examples (1 / n_examples).
// Logits are formed chunk_rows positions at a time, so at most 2 x chunk_rows x V values are
// held (the logits and their transpose); each chunk reads lm_head twice, so larger chunks cost
// memory and save bandwidth. Softmax sums and the log-sum-exp accumulate in double. The result
// does not depend on chunk_rows beyond the order of the loss sum.
template <typename T>
double CompletionCrossEntropy(const T* hidden, const T* lm_head, const int32_t* ids,
                              int64_t tokens, int64_t hidden_dim, int64_t vocab,
                              int64_t prompt_len, double grad_scale, T* d_hidden,
                              int64_t chunk_rows = 32);

}  // namespace s0
