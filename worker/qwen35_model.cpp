#include "worker/qwen35_model.h"

#include <algorithm>
#include <string>

#include "kernels/activations.h"
#include "kernels/attention.h"
#include "kernels/check.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/gated_delta_rule.h"
#include "kernels/gdn.h"
#include "kernels/matmul.h"
#include "kernels/norm.h"
#include "kernels/rope.h"

namespace s0 {

// What one layer's backward needs, recomputed from the layer's input.
template <typename Real>
struct Qwen35Model<Real>::LayerCache {
  std::vector<Real> h0, xn;  // layer input and its input_layernorm output
  std::vector<Real> h1, x2;  // after the mixer's residual, and its post_attention_layernorm
  std::vector<Real> mlp_gate, mlp_up;
  // Gated DeltaNet: pre-conv projections, conv outputs split, gates, delta-rule output.
  std::vector<Real> qkv, z, a, b, q_raw, k_raw, qn, kn, v, g, beta, o;
  // Attention: q/k before their norms, gate, v, q/k after norm + RoPE, attention output.
  std::vector<Real> q_pre, k_pre, gate, qr, kr, att;
  std::vector<float> cos, sin;
};

template <typename Real>
const Real* Qwen35Model<Real>::Bind(const HostTensor& t) {
  S0_CHECK_MSG(int64_t(t.f32.size()) == t.numel(), "weights must be loaded as WeightFormat::kFloat32");
  if constexpr (std::is_same_v<Real, float>) {
    return t.f32.data();
  } else {
    converted_.emplace_back(t.f32.begin(), t.f32.end());
    return converted_.back().data();
  }
}

template <typename Real>
Qwen35Model<Real>::Qwen35Model(const Qwen35Config& config, const Qwen35Weights& weights)
    : config_(config) {
  S0_CHECK(weights.format == WeightFormat::kFloat32);
  S0_CHECK(int64_t(weights.layers.size()) == config.num_hidden_layers);
  embed_ = Bind(weights.embed_tokens);
  final_norm_ = Bind(weights.norm);
  lm_head_ = weights.tied_lm_head ? embed_ : Bind(weights.lm_head);
  for (int i = 0; i < int(weights.layers.size()); ++i) {
    const Qwen35LayerWeights& w = weights.layers[i];
    LayerParams p;
    p.type = w.type;
    p.input_ln = Bind(w.input_layernorm);
    p.post_ln = Bind(w.post_attention_layernorm);
    p.gate = Bind(w.gate_proj);
    p.up = Bind(w.up_proj);
    p.down = Bind(w.down_proj);
    if (w.type == LayerType::kLinearAttention) {
      const Qwen35LinearAttnWeights& l = w.linear_attn;
      p.qkv = Bind(l.in_proj_qkv);
      p.z = Bind(l.in_proj_z);
      p.b = Bind(l.in_proj_b);
      p.a = Bind(l.in_proj_a);
      p.conv = Bind(l.conv1d);  // [conv_dim, 1, K] read as [conv_dim, K]
      p.dt_bias = Bind(l.dt_bias);
      p.a_log = Bind(l.A_log);
      p.gnorm = Bind(l.norm);
      p.out = Bind(l.out_proj);
      delta_layers_.push_back(i);
    } else {
      const Qwen35FullAttnWeights& s = w.self_attn;
      p.q = Bind(s.q_proj);
      p.k = Bind(s.k_proj);
      p.v = Bind(s.v_proj);
      p.o = Bind(s.o_proj);
      p.q_norm = Bind(s.q_norm);
      p.k_norm = Bind(s.k_norm);
    }
    layers_.push_back(p);
  }
}

template <typename Real>
int64_t Qwen35Model<Real>::state_size() const {
  return config_.linear_num_value_heads * config_.linear_key_head_dim *
         config_.linear_value_head_dim;
}

template <typename Real>
void Qwen35Model<Real>::CheckExample(const TokenExample& ex) const {
  const int64_t n = int64_t(ex.ids.size());
  S0_CHECK_MSG(n >= 2 && ex.prompt_len >= 0 && ex.prompt_len < n,
               "an example needs a completion token to score (tokens " + std::to_string(n) +
                   ", prompt " + std::to_string(ex.prompt_len) + ")");
}

template <typename Real>
void Qwen35Model<Real>::LayerForward(int layer, const Real* s0, std::vector<Real>& h,
                                     int64_t tokens, LayerCache* cache) const {
  const LayerParams& p = layers_[layer];
  const Qwen35Config& c = config_;
  const int64_t T = tokens, H = c.hidden_size, I = c.intermediate_size;
  const double eps = c.rms_norm_eps;
  LayerCache local;
  LayerCache& k = cache ? *cache : local;

  k.h0 = h;
  k.xn.resize(T * H);
  RmsNormForward(h.data(), p.input_ln, k.xn.data(), T, H, eps);
  std::vector<Real> mix(T * H);

  if (p.type == LayerType::kLinearAttention) {
    const int64_t hk = c.linear_num_key_heads, hv = c.linear_num_value_heads;
    const int64_t dk = c.linear_key_head_dim, dv = c.linear_value_head_dim;
    const int64_t kd = hk * dk, vd = hv * dv, cd = c.linear_conv_dim();
    k.qkv.resize(T * cd);
    k.z.resize(T * vd);
    k.a.resize(T * hv);
    k.b.resize(T * hv);
    MatmulForward(k.xn.data(), p.qkv, k.qkv.data(), T, H, cd);
    MatmulForward(k.xn.data(), p.z, k.z.data(), T, H, vd);
    MatmulForward(k.xn.data(), p.b, k.b.data(), T, H, hv);
    MatmulForward(k.xn.data(), p.a, k.a.data(), T, H, hv);
    std::vector<Real> u(T * cd);
    GdnConvSiluForward(k.qkv.data(), p.conv, T, cd, c.linear_conv_kernel_dim, u.data());
    k.q_raw.resize(T * kd);
    k.k_raw.resize(T * kd);
    k.v.resize(T * vd);
    for (int64_t t = 0; t < T; ++t) {
      const Real* row = u.data() + t * cd;
      std::copy(row, row + kd, k.q_raw.data() + t * kd);
      std::copy(row + kd, row + 2 * kd, k.k_raw.data() + t * kd);
      std::copy(row + 2 * kd, row + cd, k.v.data() + t * vd);
    }
    k.qn.resize(T * kd);
    k.kn.resize(T * kd);
    GdnL2NormForward(k.q_raw.data(), T * hk, dk, k.qn.data());
    GdnL2NormForward(k.k_raw.data(), T * hk, dk, k.kn.data());
    k.g.resize(T * hv);
    k.beta.resize(T * hv);
    GdnGatesForward(k.a.data(), k.b.data(), p.a_log, p.dt_bias, T, hv, k.g.data(), k.beta.data());
    k.o.resize(T * vd);
    const GdnDims dims{T, hk, hv, dk, dv};
    const GdnInputs<Real> in{k.qn.data(), k.kn.data(), k.v.data(), k.g.data(), k.beta.data(), s0};
    GatedDeltaRuleChunkedForward(dims, in, k.o.data(), nullptr);
    std::vector<Real> y(T * vd);
    GdnGatedRmsNormForward(k.o.data(), k.z.data(), p.gnorm, T * hv, dv, eps, y.data());
    MatmulForward(y.data(), p.out, mix.data(), T, vd, H);
  } else {
    const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, d = c.head_dim;
    const int64_t rot = c.rotary_dim();
    std::vector<Real> qg(T * nh * 2 * d);
    MatmulForward(k.xn.data(), p.q, qg.data(), T, H, nh * 2 * d);
    k.q_pre.resize(T * nh * d);
    k.gate.resize(T * nh * d);
    SplitQueryGate(qg.data(), k.q_pre.data(), k.gate.data(), T, nh, d);
    k.k_pre.resize(T * nkv * d);
    k.v.resize(T * nkv * d);
    MatmulForward(k.xn.data(), p.k, k.k_pre.data(), T, H, nkv * d);
    MatmulForward(k.xn.data(), p.v, k.v.data(), T, H, nkv * d);
    k.qr.resize(T * nh * d);
    k.kr.resize(T * nkv * d);
    RmsNormForward(k.q_pre.data(), p.q_norm, k.qr.data(), T * nh, d, eps);
    RmsNormForward(k.k_pre.data(), p.k_norm, k.kr.data(), T * nkv, d, eps);
    k.cos.resize(T * (rot / 2));
    k.sin.resize(T * (rot / 2));
    RopeTables(T, 0, rot, c.rope_theta, k.cos.data(), k.sin.data());
    RopeForward(k.qr.data(), k.qr.data(), T, nh, d, rot, k.cos.data(), k.sin.data());
    RopeForward(k.kr.data(), k.kr.data(), T, nkv, d, rot, k.cos.data(), k.sin.data());
    k.att.resize(T * nh * d);
    AttentionForward(k.qr.data(), k.kr.data(), k.v.data(), k.att.data(), T, nh, nkv, d);
    std::vector<Real> gated(T * nh * d);
    SigmoidGateForward(k.att.data(), k.gate.data(), gated.data(), T * nh * d);
    MatmulForward(gated.data(), p.o, mix.data(), T, nh * d, H);
  }
  for (int64_t i = 0; i < T * H; ++i) h[i] += mix[i];

  k.h1 = h;
  k.x2.resize(T * H);
  RmsNormForward(h.data(), p.post_ln, k.x2.data(), T, H, eps);
  k.mlp_gate.resize(T * I);
  k.mlp_up.resize(T * I);
  MatmulForward(k.x2.data(), p.gate, k.mlp_gate.data(), T, H, I);
  MatmulForward(k.x2.data(), p.up, k.mlp_up.data(), T, H, I);
  std::vector<Real> act(T * I);
  SwiGluForward(k.mlp_gate.data(), k.mlp_up.data(), act.data(), T * I);
  MatmulForward(act.data(), p.down, h.data(), T, I, H, OutputMode::kAccumulate);
}

template <typename Real>
void Qwen35Model<Real>::LayerBackward(int layer, const Real* s0, const LayerCache& k,
                                      std::vector<Real>& dh, int64_t tokens, Real* ds0,
                                      bool stop_after_state) const {
  const LayerParams& p = layers_[layer];
  const Qwen35Config& c = config_;
  const int64_t T = tokens, H = c.hidden_size, I = c.intermediate_size;
  const double eps = c.rms_norm_eps;

  // MLP: h2 = h1 + down(swiglu(gate(x2), up(x2))), x2 = norm(h1). dh becomes dL/dh1.
  {
    std::vector<Real> dact(T * I), dgate(T * I), dup(T * I), dx2(T * H);
    MatmulBackwardInput(dh.data(), p.down, dact.data(), T, I, H);
    SwiGluBackward(k.mlp_gate.data(), k.mlp_up.data(), dact.data(), dgate.data(), dup.data(), T * I);
    MatmulBackwardInput(dgate.data(), p.gate, dx2.data(), T, H, I);
    MatmulBackwardInput(dup.data(), p.up, dx2.data(), T, H, I, OutputMode::kAccumulate);
    RmsNormBackward(k.h1.data(), p.post_ln, dx2.data(), dh.data(), T, H, eps,
                    OutputMode::kAccumulate);
  }

  // Mixer: h1 = h0 + mixer(xn), xn = norm(h0). dxn is the mixer's input gradient.
  std::vector<Real> dxn(T * H);
  if (p.type == LayerType::kLinearAttention) {
    const int64_t hk = c.linear_num_key_heads, hv = c.linear_num_value_heads;
    const int64_t dk = c.linear_key_head_dim, dv = c.linear_value_head_dim;
    const int64_t kd = hk * dk, vd = hv * dv, cd = c.linear_conv_dim();
    std::vector<Real> dy(T * vd), d_o(T * vd), dz(T * vd);
    MatmulBackwardInput(dh.data(), p.out, dy.data(), T, vd, H);
    GdnGatedRmsNormBackward(k.o.data(), k.z.data(), p.gnorm, dy.data(), T * hv, dv, eps,
                            d_o.data(), dz.data());
    std::vector<Real> dqn(T * kd), dkn(T * kd), dvv(T * vd), dg(T * hv), dbeta(T * hv);
    std::vector<Real> ds0_layer(hv * dk * dv);
    const GdnDims dims{T, hk, hv, dk, dv};
    const GdnInputs<Real> in{k.qn.data(), k.kn.data(), k.v.data(), k.g.data(), k.beta.data(), s0};
    const GdnGrads<Real> grads{dqn.data(), dkn.data(), dvv.data(), dg.data(), dbeta.data(),
                               ds0_layer.data()};
    GatedDeltaRuleChunkedBackward(dims, in, d_o.data(), nullptr, grads);
    if (ds0) {
      for (size_t i = 0; i < ds0_layer.size(); ++i) ds0[i] += ds0_layer[i];
    }
    if (stop_after_state) return;
    std::vector<Real> du(T * cd), dq_raw(T * kd), dk_raw(T * kd);
    GdnL2NormBackward(k.q_raw.data(), dqn.data(), T * hk, dk, dq_raw.data());
    GdnL2NormBackward(k.k_raw.data(), dkn.data(), T * hk, dk, dk_raw.data());
    for (int64_t t = 0; t < T; ++t) {
      Real* row = du.data() + t * cd;
      std::copy_n(dq_raw.data() + t * kd, kd, row);
      std::copy_n(dk_raw.data() + t * kd, kd, row + kd);
      std::copy_n(dvv.data() + t * vd, vd, row + 2 * kd);
    }
    std::vector<Real> dqkv(T * cd), da(T * hv), db(T * hv);
    GdnConvSiluBackward(k.qkv.data(), p.conv, du.data(), T, cd, c.linear_conv_kernel_dim,
                        dqkv.data());
    GdnGatesBackward(k.a.data(), k.b.data(), p.a_log, p.dt_bias, dg.data(), dbeta.data(), T, hv,
                     da.data(), db.data());
    MatmulBackwardInput(dqkv.data(), p.qkv, dxn.data(), T, H, cd);
    MatmulBackwardInput(dz.data(), p.z, dxn.data(), T, H, vd, OutputMode::kAccumulate);
    MatmulBackwardInput(db.data(), p.b, dxn.data(), T, H, hv, OutputMode::kAccumulate);
    MatmulBackwardInput(da.data(), p.a, dxn.data(), T, H, hv, OutputMode::kAccumulate);
  } else {
    S0_CHECK_MSG(!stop_after_state, "the backward can only stop at a DeltaNet layer");
    const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, d = c.head_dim;
    const int64_t rot = c.rotary_dim();
    std::vector<Real> dgated(T * nh * d), datt(T * nh * d), dgate(T * nh * d);
    MatmulBackwardInput(dh.data(), p.o, dgated.data(), T, nh * d, H);
    SigmoidGateBackward(k.att.data(), k.gate.data(), dgated.data(), datt.data(), dgate.data(),
                        T * nh * d);
    std::vector<Real> dqr(T * nh * d), dkr(T * nkv * d), dv(T * nkv * d);
    AttentionBackward(k.qr.data(), k.kr.data(), k.v.data(), datt.data(), dqr.data(), dkr.data(),
                      dv.data(), T, nh, nkv, d);
    RopeBackward(dqr.data(), dqr.data(), T, nh, d, rot, k.cos.data(), k.sin.data());
    RopeBackward(dkr.data(), dkr.data(), T, nkv, d, rot, k.cos.data(), k.sin.data());
    std::vector<Real> dq(T * nh * d), dkk(T * nkv * d), dqg(T * nh * 2 * d);
    RmsNormBackward(k.q_pre.data(), p.q_norm, dqr.data(), dq.data(), T * nh, d, eps);
    RmsNormBackward(k.k_pre.data(), p.k_norm, dkr.data(), dkk.data(), T * nkv, d, eps);
    MergeQueryGateGrad(dq.data(), dgate.data(), dqg.data(), T, nh, d);
    MatmulBackwardInput(dqg.data(), p.q, dxn.data(), T, H, nh * 2 * d);
    MatmulBackwardInput(dkk.data(), p.k, dxn.data(), T, H, nkv * d, OutputMode::kAccumulate);
    MatmulBackwardInput(dv.data(), p.v, dxn.data(), T, H, nkv * d, OutputMode::kAccumulate);
  }
  RmsNormBackward(k.h0.data(), p.input_ln, dxn.data(), dh.data(), T, H, eps,
                  OutputMode::kAccumulate);
}

namespace {

template <typename Real>
const Real* StateOf(const StateMap<Real>& states, int layer, int64_t size) {
  auto it = states.find(layer);
  if (it == states.end()) return nullptr;
  S0_CHECK_MSG(int64_t(it->second.size()) == size,
               "state of layer " + std::to_string(layer) + " has the wrong size");
  return it->second.data();
}

}  // namespace

template <typename Real>
double Qwen35Model<Real>::Loss(const TokenExample& ex, const StateMap<Real>& s0) const {
  StateMap<Real> none;
  return LossAndGrad(ex, s0, 1.0, none);
}

template <typename Real>
double Qwen35Model<Real>::LossAndGrad(const TokenExample& ex, const StateMap<Real>& s0,
                                      double grad_scale, StateMap<Real>& grads) const {
  CheckExample(ex);
  const Qwen35Config& c = config_;
  const int64_t T = int64_t(ex.ids.size()), H = c.hidden_size, V = c.vocab_size;
  const int n_layers = int(layers_.size());
  for (const auto& [layer, g] : grads) {
    S0_CHECK_MSG(layer >= 0 && layer < n_layers &&
                     layers_[layer].type == LayerType::kLinearAttention,
                 "layer " + std::to_string(layer) + " is not a DeltaNet layer");
    S0_CHECK(int64_t(g.size()) == state_size());
  }
  for (const auto& [layer, s] : s0) {
    S0_CHECK_MSG(layer >= 0 && layer < n_layers &&
                     layers_[layer].type == LayerType::kLinearAttention,
                 "state for layer " + std::to_string(layer) + ", which is not a DeltaNet layer");
  }
  const int lowest = grads.empty() ? n_layers : grads.begin()->first;

  std::vector<Real> h(T * H);
  EmbeddingForward(ex.ids.data(), embed_, h.data(), T, V, H);
  // Inputs of the layers the backward will revisit.
  std::vector<std::vector<Real>> inputs(n_layers);
  for (int l = 0; l < n_layers; ++l) {
    if (l >= lowest) inputs[l] = h;
    LayerForward(l, StateOf(s0, l, state_size()), h, T, nullptr);
  }
  std::vector<Real> hn(T * H);
  RmsNormForward(h.data(), final_norm_, hn.data(), T, H, c.rms_norm_eps);
  if (grads.empty()) {
    return CompletionCrossEntropy<Real>(hn.data(), lm_head_, ex.ids.data(), T, H, V,
                                        ex.prompt_len, 0.0, nullptr);
  }
  std::vector<Real> dhn(T * H), dh(T * H);
  const double loss = CompletionCrossEntropy<Real>(hn.data(), lm_head_, ex.ids.data(), T, H, V,
                                                   ex.prompt_len, grad_scale, dhn.data());
  RmsNormBackward(h.data(), final_norm_, dhn.data(), dh.data(), T, H, c.rms_norm_eps);
  for (int l = n_layers - 1; l >= lowest; --l) {
    LayerCache cache;
    std::vector<Real> hl = inputs[l];
    const Real* s = StateOf(s0, l, state_size());
    LayerForward(l, s, hl, T, &cache);
    auto it = grads.find(l);
    LayerBackward(l, s, cache, dh, T, it == grads.end() ? nullptr : it->second.data(),
                  l == lowest);
    inputs[l].clear();
  }
  return loss;
}

template class Qwen35Model<float>;
template class Qwen35Model<double>;

}  // namespace s0
