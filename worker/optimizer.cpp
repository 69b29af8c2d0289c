#include "worker/optimizer.h"

#include <cmath>

#include "kernels/check.h"

namespace s0 {

double ClipGradNorm(std::span<const std::span<float>> grads, double max_norm) {
  double sum_sq = 0;
  for (const auto& g : grads) {
    for (float x : g) sum_sq += double(x) * double(x);
  }
  double norm = std::sqrt(sum_sq);
  // torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to at most 1, then grad *= coef.
  double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    const float c = float(coef);
    for (const auto& g : grads) {
      for (float& x : g) x *= c;
    }
  }
  return norm;
}

void AdamStep(std::span<const std::span<float>> params, std::span<const std::span<const float>> grads,
              AdamState& state, const AdamConfig& config) {
  S0_CHECK(params.size() == grads.size());
  if (state.exp_avg.empty()) {
    for (const auto& p : params) {
      state.exp_avg.emplace_back(p.size(), 0.0f);
      state.exp_avg_sq.emplace_back(p.size(), 0.0f);
    }
  }
  S0_CHECK(state.exp_avg.size() == params.size());
  state.step += 1;
  // Scalars are computed in double as Python does, then used as float by the fp32 kernels.
  const double bias1 = 1.0 - std::pow(config.beta1, double(state.step));
  const double bias2 = 1.0 - std::pow(config.beta2, double(state.step));
  const float step_size = float(config.lr / bias1);
  const float bias2_sqrt = float(std::sqrt(bias2));
  const float w1 = float(1.0 - config.beta1);
  const float beta2 = float(config.beta2), w2 = float(1.0 - config.beta2);
  const float eps = float(config.eps);
  for (size_t t = 0; t < params.size(); ++t) {
    std::span<float> p = params[t];
    std::span<const float> g = grads[t];
    std::vector<float>& m = state.exp_avg[t];
    std::vector<float>& v = state.exp_avg_sq[t];
    S0_CHECK(g.size() == p.size() && m.size() == p.size());
    for (size_t i = 0; i < p.size(); ++i) {
      // exp_avg.lerp_(grad, 1 - beta1): torch's lerp with weight < 0.5 is start + w * (end - start).
      m[i] = m[i] + w1 * (g[i] - m[i]);
      // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
      v[i] = v[i] * beta2;
      v[i] = v[i] + w2 * g[i] * g[i];
      // denom = (exp_avg_sq.sqrt() / sqrt(bias2)).add_(eps); param.addcdiv_(exp_avg, denom, -step_size)
      float denom = std::sqrt(v[i]) / bias2_sqrt + eps;
      p[i] = p[i] + (-step_size) * m[i] / denom;
    }
  }
}

}  // namespace s0
