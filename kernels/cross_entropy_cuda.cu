#include "kernels/cross_entropy_cuda.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/device_math_cuda.cuh"
#include "kernels/gemm_cuda.h"

namespace s0::gpu {
namespace {

constexpr int kRowThreads = 256;

// One block per row: dst[r, :] = src[index[r], :] (gather) or dst[index[r], :] = src[r, :].
__global__ void GatherRowsKernel(const bf16* src, const int32_t* index, bf16* dst, int64_t dim) {
  const bf16* s = src + int64_t(index[blockIdx.x]) * dim;
  bf16* d = dst + int64_t(blockIdx.x) * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) d[i] = s[i];
}

__global__ void ScatterRowsKernel(const float* src, const int32_t* index, float* dst, int64_t dim) {
  const float* s = src + int64_t(blockIdx.x) * dim;
  float* d = dst + int64_t(index[blockIdx.x]) * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) d[i] = s[i];
}

// Merges the log-sum-exp state (m2, s2) into (m, s): sum = s * e^m; m = -inf is empty.
__device__ __forceinline__ void MergeLse(float& m, float& s, float m2, float s2) {
  const float top = fmaxf(m, m2);
  if (top == -INFINITY) return;
  s = s * expf(m - top) + s2 * expf(m2 - top);
  m = top;
}

// Pass 1, one block per row over one vocabulary chunk [v0, v0 + width) of logits [rows, width].
// Merges the chunk into the row's running (max, sum); picks up the target's logit in its chunk;
// after the last chunk writes lse and loss = lse - target logit.
__global__ void LseChunkKernel(const float* logits, int64_t width, int64_t v0,
                               const int32_t* targets, float* run_max, float* run_sum,
                               float* target_logit, float* lse, float* loss, bool first,
                               bool last) {
  const int64_t r = blockIdx.x;
  const float* l = logits + r * width;
  float m = -INFINITY, s = 0.0f;
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
    const float x = l[j];
    if (x > m) {
      s = s * expf(m - x) + 1.0f;
      m = x;
    } else {
      s += expf(x - m);
    }
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    MergeLse(m, s, __shfl_xor_sync(0xffffffffu, m, offset),
             __shfl_xor_sync(0xffffffffu, s, offset));
  }
  __shared__ float warp_m[32], warp_s[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    warp_m[warp] = m;
    warp_s[warp] = s;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < int(blockDim.x >> 5); ++w) MergeLse(m, s, warp_m[w], warp_s[w]);
  if (!first) MergeLse(m, s, run_max[r], run_sum[r]);
  run_max[r] = m;
  run_sum[r] = s;
  const int64_t t = int64_t(targets[r]) - v0;
  if (t >= 0 && t < width) target_logit[r] = l[t];
  if (last) {
    const float row_lse = m + logf(s);
    lse[r] = row_lse;
    loss[r] = row_lse - target_logit[r];
  }
}

// Pass 2, one block per row: dlogits = weight * (softmax - onehot) over one chunk, in bf16.
__global__ void SoftmaxGradKernel(const float* logits, int64_t width, int64_t v0,
                                  const int32_t* targets, const float* lse, const float* weights,
                                  bf16* dlogits) {
  const int64_t r = blockIdx.x;
  const float* l = logits + r * width;
  bf16* dl = dlogits + r * width;
  const float row_lse = lse[r], w = weights[r];
  const int64_t t = int64_t(targets[r]) - v0;
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
    const float z = l[j] - row_lse;
    dl[j] = FromFloat<bf16>(w * (j == t ? expm1f(z) : expf(z)));
  }
}

}  // namespace

CompletionCrossEntropy::CompletionCrossEntropy(int64_t hidden_dim, int64_t vocab, int64_t row_block,
                                               int64_t vocab_chunk)
    : hidden_dim_(hidden_dim),
      vocab_(vocab),
      row_block_(row_block),
      vocab_chunk_(std::min(vocab_chunk, vocab)) {
  S0_CHECK(hidden_dim > 0 && vocab > 0 && row_block > 0 && vocab_chunk > 0);
  const size_t rb = size_t(row_block_);
  rows_ = DeviceBuffer<int32_t>(rb);
  targets_ = DeviceBuffer<int32_t>(rb);
  weights_ = DeviceBuffer<float>(rb);
  run_max_ = DeviceBuffer<float>(rb);
  run_sum_ = DeviceBuffer<float>(rb);
  target_logit_ = DeviceBuffer<float>(rb);
  lse_ = DeviceBuffer<float>(rb);
  loss_ = DeviceBuffer<float>(rb);
  hidden_rows_ = DeviceBuffer<bf16>(rb * size_t(hidden_dim_));
  d_rows_ = DeviceBuffer<float>(rb * size_t(hidden_dim_));
  logits_ = DeviceBuffer<float>(rb * size_t(vocab_chunk_));
  dlogits_ = DeviceBuffer<bf16>(rb * size_t(vocab_chunk_));
}

std::vector<double> CompletionCrossEntropy::Run(const CudaContext& ctx, const bf16* hidden,
                                                const bf16* lm_head, const int32_t* ids,
                                                int64_t tokens, const CeSequence* seqs,
                                                size_t n_seqs, float* d_hidden) {
  // The scored rows of all sequences, in order, with their targets and gradient weights.
  std::vector<int32_t> rows, targets, seq_of_row;
  std::vector<float> weights;
  std::vector<int64_t> n_scored(n_seqs);
  int64_t prev_end = 0;
  for (size_t s = 0; s < n_seqs; ++s) {
    const CeSequence& q = seqs[s];
    S0_CHECK_MSG(q.offset >= prev_end && q.length >= 2 && q.offset + q.length <= tokens &&
                     q.prompt_len >= 0 && q.prompt_len < q.length,
                 "sequence " + std::to_string(s) + ": offset " + std::to_string(q.offset) +
                     ", length " + std::to_string(q.length) + ", prompt " +
                     std::to_string(q.prompt_len) + " in a batch of " + std::to_string(tokens) +
                     " tokens (sequences must be ascending and disjoint, with a completion)");
    prev_end = q.offset + q.length;
    const int64_t first = std::max<int64_t>(q.prompt_len - 1, 0), last = q.length - 2;
    n_scored[s] = last - first + 1;
    const float weight = float(q.grad_scale / double(n_scored[s]));
    for (int64_t t = q.offset + first; t <= q.offset + last; ++t) {
      const int32_t target = ids[t + 1];
      S0_CHECK_MSG(target >= 0 && target < vocab_, "target id " + std::to_string(target) +
                                                       " at row " + std::to_string(t + 1) +
                                                       ", vocab " + std::to_string(vocab_));
      rows.push_back(int32_t(t));
      targets.push_back(target);
      weights.push_back(weight);
      seq_of_row.push_back(int32_t(s));
    }
  }
  const cudaStream_t stream = ctx.stream();
  const int64_t H = hidden_dim_;
  if (d_hidden != nullptr) {
    CUDA_CHECK(cudaMemsetAsync(d_hidden, 0, size_t(tokens * H) * sizeof(float), stream));
  }
  std::vector<double> loss_sum(n_seqs, 0.0);
  std::vector<float> block_loss(static_cast<size_t>(row_block_));
  const int64_t n_rows = int64_t(rows.size());
  for (int64_t b0 = 0; b0 < n_rows; b0 += row_block_) {
    const int64_t nb = std::min(row_block_, n_rows - b0);
    rows_.Upload(rows.data() + b0, size_t(nb), stream);
    targets_.Upload(targets.data() + b0, size_t(nb), stream);
    weights_.Upload(weights.data() + b0, size_t(nb), stream);
    GatherRowsKernel<<<unsigned(nb), kRowThreads, 0, stream>>>(hidden, rows_.data(),
                                                               hidden_rows_.data(), H);
    CUDA_CHECK_LAUNCH();
    for (int64_t v0 = 0; v0 < vocab_; v0 += vocab_chunk_) {
      const int64_t width = std::min(vocab_chunk_, vocab_ - v0);
      LinearForward(ctx, hidden_rows_.data(), lm_head + v0 * H, logits_.data(), nb, H, width);
      LseChunkKernel<<<unsigned(nb), kRowThreads, 0, stream>>>(
          logits_.data(), width, v0, targets_.data(), run_max_.data(), run_sum_.data(),
          target_logit_.data(), lse_.data(), loss_.data(), v0 == 0, v0 + width == vocab_);
      CUDA_CHECK_LAUNCH();
    }
    if (d_hidden != nullptr) {
      for (int64_t v0 = 0; v0 < vocab_; v0 += vocab_chunk_) {
        const int64_t width = std::min(vocab_chunk_, vocab_ - v0);
        const bf16* w_chunk = lm_head + v0 * H;
        LinearForward(ctx, hidden_rows_.data(), w_chunk, logits_.data(), nb, H, width);
        SoftmaxGradKernel<<<unsigned(nb), kRowThreads, 0, stream>>>(
            logits_.data(), width, v0, targets_.data(), lse_.data(), weights_.data(),
            dlogits_.data());
        CUDA_CHECK_LAUNCH();
        LinearBackwardInput(ctx, dlogits_.data(), w_chunk, d_rows_.data(), nb, H, width,
                            v0 == 0 ? OutputMode::kOverwrite : OutputMode::kAccumulate);
      }
      ScatterRowsKernel<<<unsigned(nb), kRowThreads, 0, stream>>>(d_rows_.data(), rows_.data(),
                                                                  d_hidden, H);
      CUDA_CHECK_LAUNCH();
    }
    loss_.Download(block_loss.data(), size_t(nb), stream);
    for (int64_t r = 0; r < nb; ++r) {
      loss_sum[size_t(seq_of_row[size_t(b0 + r)])] += block_loss[size_t(r)];
    }
  }
  std::vector<double> mean(n_seqs);
  for (size_t s = 0; s < n_seqs; ++s) mean[s] = loss_sum[s] / double(n_scored[s]);
  return mean;
}

}  // namespace s0::gpu
