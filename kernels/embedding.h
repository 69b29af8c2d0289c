// Token embedding gather (spec §1.2), CPU reference, fp32 and fp64. No scaling, no positions.
// Forward only: the embedding table is frozen and nothing below it needs a gradient.
#pragma once

#include <cstdint>

namespace s0 {

// out[t, :] = table[ids[t], :]. ids: [tokens]; table: [vocab, hidden]; out: [tokens, hidden].
// An id outside [0, vocab) is a programmer error (ids come from validated data): S0_CHECK.
template <typename T>
void EmbeddingForward(const int32_t* ids, const T* table, T* out, int64_t tokens, int64_t vocab,
                      int64_t hidden);

}  // namespace s0
