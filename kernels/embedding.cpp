#include "kernels/embedding.h"

#include <algorithm>
#include <string>

#include "kernels/check.h"
#include "kernels/parallel.h"

namespace s0 {

template <typename T>
void EmbeddingForward(const int32_t* ids, const T* table, T* out, int64_t tokens, int64_t vocab,
                      int64_t hidden) {
  S0_CHECK(tokens >= 0 && vocab > 0 && hidden > 0);
  for (int64_t t = 0; t < tokens; ++t) {
    S0_CHECK_MSG(ids[t] >= 0 && ids[t] < vocab,
                 "token " + std::to_string(t) + " has id " + std::to_string(ids[t]) +
                     ", vocab " + std::to_string(vocab));
  }
  ParallelFor(size_t(tokens), [&](size_t begin, size_t end) {
    for (size_t t = begin; t < end; ++t) {
      const T* row = table + int64_t(ids[t]) * hidden;
      std::copy(row, row + hidden, out + int64_t(t) * hidden);
    }
  }, size_t(std::max<int64_t>(1, 16384 / hidden)));
}

template void EmbeddingForward<float>(const int32_t*, const float*, float*, int64_t, int64_t,
                                      int64_t);
template void EmbeddingForward<double>(const int32_t*, const double*, double*, int64_t, int64_t,
                                       int64_t);

}  // namespace s0
