// The Qwen3.5 text decoder on the CPU (fp32, and fp64 for checks), built from the reference ops
// of kernels/: forward from a set of initial DeltaNet states S0, the completion-only loss, and a
// backward that yields dL/dS0 for every tuned layer. No weight gradient is ever formed; the
// backward stops at the lowest tuned layer, below which nothing depends on any S0.
//
// Memory: the forward keeps only each layer's input hidden state [T, H]; the backward recomputes
// one layer's intermediates at a time (one extra forward per layer, bounded memory).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <vector>

#include "worker/model_config.h"
#include "worker/qwen35_weights.h"

namespace s0 {

// One training example: token ids and the number of leading prompt tokens (their targets are
// masked; the loss is the mean cross-entropy over the completion's targets).
struct TokenExample {
  std::vector<int32_t> ids;
  int64_t prompt_len = 0;
};

// States of DeltaNet layers, keyed by layer index (0-based over all layers); each holds
// H_v * d_k * d_v values in the layout [H_v, d_k, d_v]. Layers absent from the map start at zero.
template <typename Real>
using StateMap = std::map<int, std::vector<Real>>;

template <typename Real>
class Qwen35Model {
 public:
  // `weights` must be loaded with WeightFormat::kFloat32 and outlive the model. The float model
  // reads them in place; the double model keeps a converted copy.
  Qwen35Model(const Qwen35Config& config, const Qwen35Weights& weights);

  const Qwen35Config& config() const { return config_; }
  // Indices of the linear-attention (DeltaNet) layers, ascending.
  const std::vector<int>& delta_layers() const { return delta_layers_; }
  int64_t state_size() const;  // H_v * d_k * d_v

  // Mean completion cross-entropy of one example, with the given initial states.
  double Loss(const TokenExample& ex, const StateMap<Real>& s0) const;

  // Loss of one example and, for every layer in `grads` (each entry sized state_size(), layers
  // must be DeltaNet layers), adds grad_scale * dLoss/dS0[layer] into it. Layers in `s0` but not
  // in `grads` still shape the forward; the backward stops at the lowest layer in `grads`.
  double LossAndGrad(const TokenExample& ex, const StateMap<Real>& s0, double grad_scale,
                     StateMap<Real>& grads) const;

 private:
  struct LayerParams {  // pointers into the weights (or converted_)
    LayerType type = LayerType::kLinearAttention;
    const Real *input_ln = nullptr, *post_ln = nullptr;
    const Real *gate = nullptr, *up = nullptr, *down = nullptr;
    // Gated DeltaNet.
    const Real *qkv = nullptr, *z = nullptr, *b = nullptr, *a = nullptr, *conv = nullptr;
    const Real *dt_bias = nullptr, *a_log = nullptr, *gnorm = nullptr, *out = nullptr;
    // Gated attention.
    const Real *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;
    const Real *q_norm = nullptr, *k_norm = nullptr;
  };
  struct LayerCache;

  void CheckExample(const TokenExample& ex) const;
  // h (in place): one decoder layer. With a cache, keeps what its backward needs.
  void LayerForward(int layer, const Real* s0, std::vector<Real>& h, int64_t tokens,
                    LayerCache* cache) const;
  // dh (in place): gradient w.r.t. the layer's output -> w.r.t. its input. When ds0 is not null,
  // adds dLoss/dS0 of this layer into it. With `stop_after_state` it returns as soon as dS0 is
  // known (dh is then not updated).
  void LayerBackward(int layer, const Real* s0, const LayerCache& cache, std::vector<Real>& dh,
                     int64_t tokens, Real* ds0, bool stop_after_state) const;
  const Real* Bind(const HostTensor& t);

  Qwen35Config config_;
  std::vector<int> delta_layers_;
  std::vector<LayerParams> layers_;
  const Real* embed_ = nullptr;
  const Real* final_norm_ = nullptr;
  const Real* lm_head_ = nullptr;
  std::deque<std::vector<Real>> converted_;  // owns converted weights (double model only)
};

extern template class Qwen35Model<float>;
extern template class Qwen35Model<double>;

}  // namespace s0
