// Throughput of the CPU Qwen3.5 engine: one example's forward + backward to dS0 for every
// DeltaNet layer (LossAndGrad), on a small random model, fp32 and fp64, in tokens/s.
// Usage: s0_engine_bench [seq_len = 384] [repeats = 3]
// The model (a 0.8B-like layout shrunk): hidden 512, 4 layers [lin, lin, lin, full], intermediate
// 1536, vocab 8192, DeltaNet H_k 4 / H_v 8 heads of 64, attention 4 query / 2 KV heads of 128.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "kernels/parallel.h"
#include "tests/common/compare.h"
#include "worker/model_config.h"
#include "worker/qwen35_model.h"
#include "worker/qwen35_weights.h"

namespace {

using s0::HostTensor;

HostTensor Random(std::vector<int64_t> shape, uint64_t seed, float stddev, float mean = 0.0f) {
  HostTensor t;
  t.shape = std::move(shape);
  t.f32 = s0::test::RandomNormal(size_t(t.numel()), seed, stddev, mean);
  return t;
}

template <typename Real>
double TokensPerSecond(const s0::Qwen35Config& c, const s0::Qwen35Weights& w,
                       const s0::TokenExample& ex, int repeats) {
  s0::Qwen35Model<Real> model(c, w);
  s0::StateMap<Real> s0_states, grads;
  for (int l : model.delta_layers()) {
    s0_states[l].assign(size_t(model.state_size()), Real(0.01));
    grads[l].assign(size_t(model.state_size()), Real(0));
  }
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    model.LossAndGrad(ex, s0_states, 1.0, grads);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return double(ex.ids.size()) / best;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t T = argc > 1 ? std::atol(argv[1]) : 384;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 3;
  nlohmann::json cfg = {
      {"model_type", "qwen3_5_text"}, {"hidden_size", 512}, {"num_hidden_layers", 4},
      {"intermediate_size", 1536}, {"vocab_size", 8192}, {"num_attention_heads", 4},
      {"num_key_value_heads", 2}, {"head_dim", 128}, {"linear_num_key_heads", 4},
      {"linear_num_value_heads", 8}, {"linear_key_head_dim", 64}, {"linear_value_head_dim", 64},
      {"linear_conv_kernel_dim", 4}, {"rope_theta", 1e7}, {"partial_rotary_factor", 0.25},
      {"tie_word_embeddings", true},
      {"layer_types", {"linear_attention", "linear_attention", "linear_attention", "full_attention"}}};
  auto parsed = s0::ParseQwen35Config(cfg.dump(), "engine_bench");
  if (!parsed.ok()) {
    std::fprintf(stderr, "%s\n", parsed.status().ToString().c_str());
    return 1;
  }
  const s0::Qwen35Config c = *parsed;
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  s0::Qwen35Weights w;
  uint64_t seed = 1;
  auto lin = [&](int64_t out, int64_t in) { return Random({out, in}, seed++, 1.0f / std::sqrt(float(in))); };
  w.embed_tokens = Random({V, H}, seed++, 0.1f);
  w.norm = Random({H}, seed++, 0.1f);
  w.tied_lm_head = true;
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    s0::Qwen35LayerWeights L;
    L.type = c.layer_types[i];
    L.input_layernorm = Random({H}, seed++, 0.1f);
    L.post_attention_layernorm = Random({H}, seed++, 0.1f);
    L.gate_proj = lin(I, H);
    L.up_proj = lin(I, H);
    L.down_proj = lin(H, I);
    if (L.type == s0::LayerType::kLinearAttention) {
      const int64_t hv = c.linear_num_value_heads, cd = c.linear_conv_dim(), vd = c.linear_value_dim();
      L.linear_attn.in_proj_qkv = lin(cd, H);
      L.linear_attn.in_proj_z = lin(vd, H);
      L.linear_attn.in_proj_b = lin(hv, H);
      L.linear_attn.in_proj_a = lin(hv, H);
      L.linear_attn.conv1d = Random({cd, 1, c.linear_conv_kernel_dim}, seed++, 0.5f);
      L.linear_attn.dt_bias = Random({hv}, seed++, 0.1f);
      L.linear_attn.A_log = Random({hv}, seed++, 0.5f, -1.5f);
      L.linear_attn.norm = Random({c.linear_value_head_dim}, seed++, 0.1f, 1.0f);
      L.linear_attn.out_proj = lin(H, vd);
    } else {
      const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, d = c.head_dim;
      L.self_attn.q_proj = lin(2 * nh * d, H);
      L.self_attn.k_proj = lin(nkv * d, H);
      L.self_attn.v_proj = lin(nkv * d, H);
      L.self_attn.o_proj = lin(H, nh * d);
      L.self_attn.q_norm = Random({d}, seed++, 0.1f);
      L.self_attn.k_norm = Random({d}, seed++, 0.1f);
    }
    w.layers.push_back(std::move(L));
  }
  s0::TokenExample ex;
  for (int64_t t = 0; t < T; ++t) ex.ids.push_back(int32_t((t * 7919) % V));
  ex.prompt_len = T / 2;
  std::printf("CPU engine, LossAndGrad (forward + backward to dS0 of 3 DeltaNet layers), T=%lld, "
              "%d threads\n", static_cast<long long>(T), s0::NumThreads());
  std::printf("  fp32: %.0f tokens/s\n", TokensPerSecond<float>(c, w, ex, repeats));
  std::printf("  fp64: %.0f tokens/s\n", TokensPerSecond<double>(c, w, ex, repeats));
  return 0;
}
