#include "kernels/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/check.h"
#include "kernels/matmul.h"
#include "kernels/parallel.h"

namespace s0 {

template <typename T>
double CompletionCrossEntropy(const T* hidden, const T* lm_head, const int32_t* ids,
                              int64_t tokens, int64_t hidden_dim, int64_t vocab,
                              int64_t prompt_len, double grad_scale, T* d_hidden,
                              int64_t chunk_rows) {
  S0_CHECK(hidden_dim > 0 && vocab > 0 && chunk_rows > 0 && prompt_len >= 0);
  const int64_t first = std::max<int64_t>(prompt_len - 1, 0), last = tokens - 2;
  const int64_t n_scored = last - first + 1;
  S0_CHECK_MSG(n_scored > 0, "no completion token to score: " + std::to_string(tokens) +
                                 " tokens, prompt length " + std::to_string(prompt_len));
  for (int64_t t = first; t <= last; ++t) {
    S0_CHECK_MSG(ids[t + 1] >= 0 && ids[t + 1] < vocab,
                 "target id " + std::to_string(ids[t + 1]) + " at position " +
                     std::to_string(t + 1) + ", vocab " + std::to_string(vocab));
  }
  if (d_hidden != nullptr) {
    std::fill(d_hidden, d_hidden + first * hidden_dim, T(0));
    std::fill(d_hidden + (last + 1) * hidden_dim, d_hidden + tokens * hidden_dim, T(0));
  }
  const double g = grad_scale / double(n_scored);
  const int64_t chunk = std::min(chunk_rows, n_scored);
  // Logits are formed transposed, [V, rows] = lm_head · hidden^T: then the large lm_head is the
  // GEMM's streamed operand and only the small chunk of hidden rows is packed. The arithmetic per
  // logit is the same as hidden · lm_head^T. They are transposed back to [rows, V] for the
  // softmax and the backward product.
  std::vector<T> logits_t(size_t(chunk * vocab)), logits(size_t(chunk * vocab));
  std::vector<double> row_loss(static_cast<size_t>(chunk));
  double loss_sum = 0;
  for (int64_t c0 = first; c0 <= last; c0 += chunk) {
    const int64_t rows = std::min(chunk, last + 1 - c0);
    Gemm(vocab, rows, hidden_dim, lm_head, hidden_dim, hidden + c0 * hidden_dim, hidden_dim,
         BLayout::kNK, logits_t.data(), rows, OutputMode::kOverwrite);
    ParallelFor(size_t(vocab), [&](size_t begin, size_t end) {
      for (int64_t r = 0; r < rows; ++r) {
        for (size_t j = begin; j < end; ++j) {
          logits[size_t(r * vocab) + j] = logits_t[j * size_t(rows) + size_t(r)];
        }
      }
    }, 4096);
    ParallelFor(size_t(rows), [&](size_t begin, size_t end) {
      for (size_t r = begin; r < end; ++r) {
        T* l = logits.data() + int64_t(r) * vocab;
        const int32_t target = ids[c0 + int64_t(r) + 1];
        const T mx = *std::max_element(l, l + vocab);
        const double target_logit = double(l[target]);
        // l becomes exp(l - max); the sum and the log-sum-exp are kept in double.
        double sum = 0;
        for (int64_t j = 0; j < vocab; ++j) {
          l[j] = std::exp(l[j] - mx);
          sum += double(l[j]);
        }
        row_loss[r] = double(mx) + std::log(sum) - target_logit;
        if (d_hidden == nullptr) continue;
        // d loss / d logit_j = softmax_j - [j == target], times the caller's scale.
        const T to_grad = T(g / sum);
        for (int64_t j = 0; j < vocab; ++j) l[j] *= to_grad;
        const double p_target = std::exp(-row_loss[r]);
        l[target] = T((p_target - 1.0) * g);
      }
    });
    for (int64_t r = 0; r < rows; ++r) loss_sum += row_loss[size_t(r)];
    if (d_hidden != nullptr) {
      MatmulBackwardInput(logits.data(), lm_head, d_hidden + c0 * hidden_dim, rows, hidden_dim,
                          vocab);
    }
  }
  return loss_sum / double(n_scored);
}

template double CompletionCrossEntropy<float>(const float*, const float*, const int32_t*, int64_t,
                                              int64_t, int64_t, int64_t, double, float*, int64_t);
template double CompletionCrossEntropy<double>(const double*, const double*, const int32_t*,
                                               int64_t, int64_t, int64_t, int64_t, double, double*,
                                               int64_t);

}  // namespace s0
