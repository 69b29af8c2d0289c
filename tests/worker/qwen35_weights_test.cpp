#include "worker/qwen35_weights.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "kernels/parallel.h"
#include "tests/common/compare.h"
#include "tests/common/test_paths.h"

namespace s0 {
namespace {

using nlohmann::json;
using Shape = std::vector<int64_t>;

// A small Qwen3.5 whose dimensions are all distinct, so a swapped dimension cannot pass:
// H 32, I 48, V vocab, n_h 4, n_kv 2, d_h 8, H_k 2, H_v 4, d_k 10, d_v 6, K_c 3
// (key_dim 20, value_dim 24, conv_dim 64).
json SmallText(int64_t vocab = 96) {
  return {{"hidden_size", 32},
          {"num_hidden_layers", 4},
          {"intermediate_size", 48},
          {"vocab_size", vocab},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"head_dim", 8},
          {"linear_num_key_heads", 2},
          {"linear_num_value_heads", 4},
          {"linear_key_head_dim", 10},
          {"linear_value_head_dim", 6},
          {"linear_conv_kernel_dim", 3},
          {"rms_norm_eps", 1e-6},
          {"hidden_act", "silu"},
          {"eos_token_id", 5},
          {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 1e7}}}};
}

json FullLayout(json text, bool tie) {
  text["model_type"] = "qwen3_5_text";
  text["tie_word_embeddings"] = tie;
  return {{"model_type", "qwen3_5"}, {"tie_word_embeddings", tie}, {"text_config", text}};
}

json TextLayout(json text, bool tie) {
  text["model_type"] = "qwen3_5_text";
  text["tie_word_embeddings"] = tie;
  return text;
}

Qwen35Config ParseOrDie(const json& j) {
  auto c = ParseQwen35Config(j.dump());
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? c.value() : Qwen35Config{};
}

struct Spec {
  std::string name;
  Shape shape;
  DType dtype;
};

// The checkpoint's tensor list for `c`, written out independently of the loader's table.
// A_log is F32 as in the official checkpoints; the rest use `dtype`.
std::vector<Spec> ModelSpecs(const Qwen35Config& c, DType dtype) {
  const std::string p = c.tensor_prefix;
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  std::vector<Spec> s = {{p + "embed_tokens.weight", {V, H}, dtype},
                         {p + "norm.weight", {H}, dtype}};
  if (!c.tie_word_embeddings) s.push_back({"lm_head.weight", {V, H}, dtype});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string l = p + "layers." + std::to_string(i) + ".";
    s.push_back({l + "input_layernorm.weight", {H}, dtype});
    s.push_back({l + "post_attention_layernorm.weight", {H}, dtype});
    s.push_back({l + "mlp.gate_proj.weight", {I, H}, dtype});
    s.push_back({l + "mlp.up_proj.weight", {I, H}, dtype});
    s.push_back({l + "mlp.down_proj.weight", {H, I}, dtype});
    if (c.layer_types[size_t(i)] == LayerType::kLinearAttention) {
      s.push_back({l + "linear_attn.in_proj_qkv.weight", {64, H}, dtype});
      s.push_back({l + "linear_attn.in_proj_z.weight", {24, H}, dtype});
      s.push_back({l + "linear_attn.in_proj_b.weight", {4, H}, dtype});
      s.push_back({l + "linear_attn.in_proj_a.weight", {4, H}, dtype});
      s.push_back({l + "linear_attn.conv1d.weight", {64, 1, 3}, dtype});
      s.push_back({l + "linear_attn.dt_bias", {4}, dtype});
      s.push_back({l + "linear_attn.A_log", {4}, DType::kF32});
      s.push_back({l + "linear_attn.norm.weight", {6}, dtype});
      s.push_back({l + "linear_attn.out_proj.weight", {H, 24}, dtype});
    } else {
      s.push_back({l + "self_attn.q_proj.weight", {64, H}, dtype});
      s.push_back({l + "self_attn.k_proj.weight", {16, H}, dtype});
      s.push_back({l + "self_attn.v_proj.weight", {16, H}, dtype});
      s.push_back({l + "self_attn.o_proj.weight", {H, 32}, dtype});
      s.push_back({l + "self_attn.q_norm.weight", {8}, dtype});
      s.push_back({l + "self_attn.k_norm.weight", {8}, dtype});
    }
  }
  return s;
}

// Tensors a real full checkpoint also carries, which the decoder must skip.
void AddVisionAndMtp(std::vector<Spec>& s, DType dtype) {
  s.push_back({"model.visual.blocks.0.attn.qkv.weight", {12, 4}, dtype});
  s.push_back({"model.visual.merger.linear_fc1.weight", {4, 4}, dtype});
  s.push_back({"mtp.fc.weight", {32, 64}, dtype});
  s.push_back({"mtp.layers.0.self_attn.q_proj.weight", {64, 32}, dtype});
}

struct Written {
  std::map<std::string, std::vector<float>> values;     // exactly representable in the dtype
  std::map<std::string, std::vector<std::byte>> bytes;  // as written
};

// Writes `specs` with deterministic random values into `dir` as model.safetensors, or as
// `shards` files plus model.safetensors.index.json, and config.json.
Written WriteModel(const std::string& dir, const json& config, const std::vector<Spec>& specs,
                   int shards, uint64_t seed = 1) {
  Written w;
  std::vector<std::vector<TensorToWrite>> per_shard(static_cast<size_t>(shards));
  json weight_map = json::object();
  for (size_t i = 0; i < specs.size(); ++i) {
    const Spec& s = specs[i];
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    std::vector<float> v = test::RandomNormal(size_t(n), seed * 1000 + i, 0.5f);
    std::vector<std::byte>& b = w.bytes[s.name];
    if (s.dtype == DType::kBF16) {
      for (float& x : v) {
        uint16_t h = uint16_t(std::bit_cast<uint32_t>(x) >> 16);  // truncation: exact in bf16
        x = Bf16ToFloat(h);
        b.insert(b.end(), reinterpret_cast<std::byte*>(&h), reinterpret_cast<std::byte*>(&h) + 2);
      }
    } else if (s.dtype == DType::kF32) {
      b.resize(v.size() * 4);
      std::memcpy(b.data(), v.data(), b.size());
    } else {  // I32: not a float weight
      b.assign(v.size() * 4, std::byte{1});
    }
    w.values[s.name] = v;
    const size_t shard = i % size_t(shards);
    per_shard[shard].push_back({s.name, s.dtype, s.shape, w.bytes[s.name]});
    weight_map[s.name] = "model-0000" + std::to_string(shard + 1) + "-of-0000" +
                         std::to_string(shards) + ".safetensors";
  }
  if (shards == 1) {
    EXPECT_TRUE(WriteSafetensors(dir + "/model.safetensors", per_shard[0]).ok());
  } else {
    for (int k = 0; k < shards; ++k)
      EXPECT_TRUE(WriteSafetensors(dir + "/model-0000" + std::to_string(k + 1) + "-of-0000" +
                                       std::to_string(shards) + ".safetensors",
                                   per_shard[size_t(k)])
                      .ok());
    std::ofstream(dir + "/model.safetensors.index.json")
        << json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump(2);
  }
  std::ofstream(dir + "/config.json") << config.dump(2);
  return w;
}

struct Loaded {
  Qwen35Config config;
  Qwen35Weights weights;
};

Result<Loaded> LoadDir(const std::string& dir, WeightFormat format) {
  S0_ASSIGN_OR_RETURN(Qwen35Config config, LoadQwen35Config(dir));
  S0_ASSIGN_OR_RETURN(TensorStore store, TensorStore::Open(dir));
  S0_ASSIGN_OR_RETURN(Qwen35Weights weights, LoadQwen35Weights(store, config, format));
  return Loaded{config, std::move(weights)};
}

// Each loaded tensor, by its checkpoint name, for comparison with what was written.
std::map<std::string, const HostTensor*> ByName(const Qwen35Config& c, const Qwen35Weights& w) {
  const std::string p = c.tensor_prefix;
  std::map<std::string, const HostTensor*> m = {{p + "embed_tokens.weight", &w.embed_tokens},
                                                {p + "norm.weight", &w.norm}};
  if (!c.tie_word_embeddings) m["lm_head.weight"] = &w.lm_head;
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const Qwen35LayerWeights& l = w.layers[i];
    const std::string n = p + "layers." + std::to_string(i) + ".";
    m[n + "input_layernorm.weight"] = &l.input_layernorm;
    m[n + "post_attention_layernorm.weight"] = &l.post_attention_layernorm;
    m[n + "mlp.gate_proj.weight"] = &l.gate_proj;
    m[n + "mlp.up_proj.weight"] = &l.up_proj;
    m[n + "mlp.down_proj.weight"] = &l.down_proj;
    if (l.type == LayerType::kLinearAttention) {
      const Qwen35LinearAttnWeights& a = l.linear_attn;
      m[n + "linear_attn.in_proj_qkv.weight"] = &a.in_proj_qkv;
      m[n + "linear_attn.in_proj_z.weight"] = &a.in_proj_z;
      m[n + "linear_attn.in_proj_b.weight"] = &a.in_proj_b;
      m[n + "linear_attn.in_proj_a.weight"] = &a.in_proj_a;
      m[n + "linear_attn.conv1d.weight"] = &a.conv1d;
      m[n + "linear_attn.dt_bias"] = &a.dt_bias;
      m[n + "linear_attn.A_log"] = &a.A_log;
      m[n + "linear_attn.norm.weight"] = &a.norm;
      m[n + "linear_attn.out_proj.weight"] = &a.out_proj;
    } else {
      const Qwen35FullAttnWeights& a = l.self_attn;
      m[n + "self_attn.q_proj.weight"] = &a.q_proj;
      m[n + "self_attn.k_proj.weight"] = &a.k_proj;
      m[n + "self_attn.v_proj.weight"] = &a.v_proj;
      m[n + "self_attn.o_proj.weight"] = &a.o_proj;
      m[n + "self_attn.q_norm.weight"] = &a.q_norm;
      m[n + "self_attn.k_norm.weight"] = &a.k_norm;
    }
  }
  return m;
}

// Every expected tensor was loaded with its written values (exactly), dtype and shape, and the
// tensors of the other attention kind are empty.
void ExpectLoaded(const Loaded& l, const std::vector<Spec>& specs, const Written& w) {
  const auto loaded = ByName(l.config, l.weights);
  size_t matched = 0;
  for (const Spec& s : specs) {
    auto it = loaded.find(s.name);
    if (it == loaded.end()) continue;  // vision, mtp, extras
    ++matched;
    const HostTensor& t = *it->second;
    EXPECT_EQ(t.shape, s.shape) << s.name;
    EXPECT_EQ(t.stored_dtype, s.dtype) << s.name;
    if (l.weights.format == WeightFormat::kFloat32) {
      EXPECT_TRUE(t.bytes.empty()) << s.name;
      EXPECT_EQ(t.f32, w.values.at(s.name)) << s.name;
    } else {
      EXPECT_TRUE(t.f32.empty()) << s.name;
      EXPECT_EQ(t.bytes, w.bytes.at(s.name)) << s.name;
    }
  }
  EXPECT_EQ(matched, loaded.size());
  for (const Qwen35LayerWeights& layer : l.weights.layers) {
    if (layer.type == LayerType::kLinearAttention)
      EXPECT_TRUE(layer.self_attn.q_proj.shape.empty() && layer.self_attn.q_proj.f32.empty());
    else
      EXPECT_TRUE(layer.linear_attn.in_proj_qkv.shape.empty() &&
                  layer.linear_attn.in_proj_qkv.f32.empty());
  }
}

class Qwen35WeightsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::TempDir(std::string("qwen35_weights_") +
                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  std::string dir_;
};

TEST_F(Qwen35WeightsTest, FullLayoutBf16SingleFileTied) {
  const json config = FullLayout(SmallText(), /*tie=*/true);  // layer types derived: l l l f
  const Qwen35Config c = ParseOrDie(config);
  std::vector<Spec> specs = ModelSpecs(c, DType::kBF16);
  AddVisionAndMtp(specs, DType::kBF16);
  specs.push_back({"model.language_model.rotary_emb.inv_freq", {4}, DType::kF32});  // unknown
  const Written w = WriteModel(dir_, config, specs, 1);

  auto l = LoadDir(dir_, WeightFormat::kFloat32);
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  const Qwen35Weights& weights = l->weights;
  ASSERT_EQ(weights.layers.size(), 4u);
  EXPECT_EQ(weights.layers[2].type, LayerType::kLinearAttention);
  EXPECT_EQ(weights.layers[3].type, LayerType::kFullAttention);
  ExpectLoaded(*l, specs, w);
  EXPECT_TRUE(weights.tied_lm_head);
  EXPECT_TRUE(weights.lm_head.f32.empty());
  EXPECT_EQ(&weights.LmHead(), &weights.embed_tokens);
  EXPECT_EQ(weights.unused_tensors, 1u);  // inv_freq; vision and mtp are skipped silently
}

TEST_F(Qwen35WeightsTest, TextLayoutF32ShardedUntied) {
  json text = SmallText();
  text["layer_types"] = {"full_attention", "linear_attention", "linear_attention",
                         "full_attention"};
  text.erase("rope_parameters");
  text["rope_theta"] = 1e6;  // older configs keep RoPE fields at the top level
  const json config = TextLayout(text, /*tie=*/false);
  const Qwen35Config c = ParseOrDie(config);
  const std::vector<Spec> specs = ModelSpecs(c, DType::kF32);
  const Written w = WriteModel(dir_, config, specs, 3);

  auto l = LoadDir(dir_, WeightFormat::kFloat32);
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  EXPECT_EQ(l->config.tensor_prefix, "model.");
  EXPECT_EQ(l->weights.layers[0].type, LayerType::kFullAttention);
  EXPECT_EQ(l->weights.layers[1].type, LayerType::kLinearAttention);
  ExpectLoaded(*l, specs, w);
  EXPECT_FALSE(l->weights.tied_lm_head);
  EXPECT_EQ(&l->weights.LmHead(), &l->weights.lm_head);
  EXPECT_EQ(l->weights.LmHead().f32, w.values.at("lm_head.weight"));
  EXPECT_EQ(l->weights.unused_tensors, 0u);
}

TEST_F(Qwen35WeightsTest, AsStoredKeepsCheckpointBytes) {
  const json config = FullLayout(SmallText(), /*tie=*/false);
  const Qwen35Config c = ParseOrDie(config);
  const std::vector<Spec> specs = ModelSpecs(c, DType::kBF16);
  const Written w = WriteModel(dir_, config, specs, 2);
  auto l = LoadDir(dir_, WeightFormat::kAsStored);
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  EXPECT_EQ(l->weights.format, WeightFormat::kAsStored);
  ExpectLoaded(*l, specs, w);
  EXPECT_EQ(l->weights.layers[0].linear_attn.A_log.stored_dtype, DType::kF32);
  EXPECT_EQ(l->weights.layers[0].gate_proj.bytes.size(), size_t(48 * 32 * 2));
}

TEST_F(Qwen35WeightsTest, MissingAndMisshapedTensorsAreListedTogether) {
  const json config = FullLayout(SmallText(), /*tie=*/false);
  const Qwen35Config c = ParseOrDie(config);
  std::vector<Spec> specs;
  for (Spec s : ModelSpecs(c, DType::kBF16)) {
    const std::string& n = s.name;
    if (n == "lm_head.weight" || n == "model.language_model.layers.1.mlp.up_proj.weight" ||
        n == "model.language_model.layers.3.self_attn.q_norm.weight")
      continue;
    if (n == "model.language_model.layers.0.linear_attn.conv1d.weight") s.shape = {64, 3};
    if (n == "model.language_model.layers.3.self_attn.k_proj.weight") s.shape = {32, 16};
    if (n == "model.language_model.layers.2.linear_attn.dt_bias") s.dtype = DType::kI32;
    specs.push_back(s);
  }
  WriteModel(dir_, config, specs, 1);
  auto l = LoadDir(dir_, WeightFormat::kFloat32);
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.status().code(), Code::kInvalidArgument);
  const std::string& m = l.status().message();
  for (const char* expected :
       {"model.safetensors: checkpoint does not match config.json (6 of 56 tensors):",
        "missing lm_head.weight (expected shape [96, 32])",
        "missing model.language_model.layers.1.mlp.up_proj.weight (expected shape [48, 32])",
        "missing model.language_model.layers.3.self_attn.q_norm.weight (expected shape [8])",
        "wrong shape model.language_model.layers.0.linear_attn.conv1d.weight: [64, 3], "
        "expected [64, 1, 3]",
        "wrong shape model.language_model.layers.3.self_attn.k_proj.weight: [32, 16], "
        "expected [16, 32]",
        "wrong dtype model.language_model.layers.2.linear_attn.dt_bias: I32, expected a float "
        "dtype"})
    EXPECT_NE(m.find(expected), std::string::npos) << expected << "\nin:\n" << m;

  auto store = TensorStore::Open(dir_);
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(Qwen35Fingerprint(*store, c).status().code(), Code::kInvalidArgument);

  // A config of the other layout (and 8 layers) finds nothing; the list stops at 100 lines.
  json text = SmallText();
  text["num_hidden_layers"] = 8;
  auto wrong_layout =
      LoadQwen35Weights(*store, ParseOrDie(TextLayout(text, false)), WeightFormat::kFloat32);
  ASSERT_FALSE(wrong_layout.ok());
  const std::string& wm = wrong_layout.status().message();
  EXPECT_NE(wm.find("(109 of 109 tensors)"), std::string::npos) << wm;
  EXPECT_NE(wm.find("\n  ... and 9 more"), std::string::npos) << wm;
  EXPECT_NE(wm.find("missing model.layers.7.input_layernorm.weight"), std::string::npos) << wm;
}

TEST_F(Qwen35WeightsTest, FingerprintFollowsContentNotLayout) {
  // A vocabulary large enough for the embedding to span several hash chunks (1 MiB each).
  const int64_t vocab = 9000;
  const json full_config = FullLayout(SmallText(vocab), /*tie=*/false);
  const json text_config = TextLayout(SmallText(vocab), /*tie=*/false);
  const Qwen35Config full = ParseOrDie(full_config);
  const Qwen35Config text = ParseOrDie(text_config);

  auto fingerprint = [&](const std::string& sub, const json& config, const Qwen35Config& c,
                         int shards, uint64_t seed) {
    const std::string dir = dir_ + "/" + sub;
    std::filesystem::create_directories(dir);
    std::vector<Spec> specs = ModelSpecs(c, DType::kF32);
    if (c.model_type == "qwen3_5") AddVisionAndMtp(specs, DType::kF32);
    WriteModel(dir, config, specs, shards, seed);
    auto store = TensorStore::Open(dir);
    EXPECT_TRUE(store.ok()) << store.status().ToString();
    auto h = Qwen35Fingerprint(*store, c);
    EXPECT_TRUE(h.ok()) << h.status().ToString();
    return h.ok() ? *h : 0;
  };
  const uint64_t base = fingerprint("full", full_config, full, 1, 7);
  EXPECT_EQ(fingerprint("text", text_config, text, 1, 7), base);
  EXPECT_EQ(fingerprint("sharded", text_config, text, 3, 7), base);
  EXPECT_NE(fingerprint("other_values", full_config, full, 1, 8), base);
  Qwen35Config eps = full;
  eps.rms_norm_eps = 1e-5;
  auto store = TensorStore::Open(dir_ + "/full");
  ASSERT_TRUE(store.ok());
  EXPECT_NE(*Qwen35Fingerprint(*store, eps), base);

  const int threads = NumThreads();
  SetNumThreads(1);
  EXPECT_EQ(*Qwen35Fingerprint(*store, full), base);
  SetNumThreads(3);
  EXPECT_EQ(*Qwen35Fingerprint(*store, full), base);
  SetNumThreads(threads);

  // One flipped bit in the last hash chunk of the embedding changes it.
  std::vector<Spec> specs = ModelSpecs(full, DType::kF32);
  Written w = WriteModel(dir_ + "/full", full_config, specs, 1, 7);
  std::vector<float> embed = w.values.at("model.language_model.embed_tokens.weight");
  embed.back() = std::nextafter(embed.back(), 10.0f);
  std::vector<TensorToWrite> tensors;
  for (const Spec& s : specs)
    tensors.push_back({s.name, s.dtype, s.shape,
                       s.name == "model.language_model.embed_tokens.weight"
                           ? std::as_bytes(std::span<const float>(embed))
                           : std::span<const std::byte>(w.bytes.at(s.name))});
  ASSERT_TRUE(WriteSafetensors(dir_ + "/full/model.safetensors", tensors).ok());
  auto changed = TensorStore::Open(dir_ + "/full");
  ASSERT_TRUE(changed.ok());
  EXPECT_NE(*Qwen35Fingerprint(*changed, full), base);
}

}  // namespace
}  // namespace s0
