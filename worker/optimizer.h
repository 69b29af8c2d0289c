// The S0 optimizer, with PyTorch's exact semantics (s0-tuning 0.1.2 uses torch.optim.Adam and
// torch.nn.utils.clip_grad_norm_ over all states together). All math in fp32 on fp32 tensors,
// operation by operation as torch's single-tensor Adam does it, so trajectories match torch's to
// rounding.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace s0 {

struct AdamConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

// Moments per tensor (same shapes as the parameters) and the step count.
struct AdamState {
  int64_t step = 0;
  std::vector<std::vector<float>> exp_avg;
  std::vector<std::vector<float>> exp_avg_sq;
};

// Global L2 norm over all tensors (accumulated in double). Then, as clip_grad_norm_: the
// coefficient max_norm / (norm + 1e-6) scales every gradient when it is below 1.
// Returns the norm before clipping.
double ClipGradNorm(std::span<const std::span<float>> grads, double max_norm);

// One Adam step on every parameter; initialises the moments on the first call.
void AdamStep(std::span<const std::span<float>> params, std::span<const std::span<const float>> grads,
              AdamState& state, const AdamConfig& config);

}  // namespace s0
