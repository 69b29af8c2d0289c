#include "worker/model_config.h"

#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "tests/common/test_paths.h"

namespace s0 {
namespace {

using nlohmann::json;
constexpr LayerType kLin = LayerType::kLinearAttention;
constexpr LayerType kFull = LayerType::kFullAttention;

// The 4B text_config values (../shared/spec/qwen3_5.md §4), in the field order real files use.
json Text4B() {
  json types = json::array();
  for (int i = 0; i < 32; ++i) types.push_back((i + 1) % 4 ? "linear_attention" : "full_attention");
  return {{"attention_bias", false},
          {"attention_dropout", 0.0},
          {"attn_output_gate", true},
          {"dtype", "bfloat16"},
          {"eos_token_id", 248044},
          {"full_attention_interval", 4},
          {"head_dim", 256},
          {"hidden_act", "silu"},
          {"hidden_size", 2560},
          {"initializer_range", 0.02},
          {"intermediate_size", 9216},
          {"layer_types", types},
          {"linear_conv_kernel_dim", 4},
          {"linear_key_head_dim", 128},
          {"linear_num_key_heads", 16},
          {"linear_num_value_heads", 32},
          {"linear_value_head_dim", 128},
          {"mamba_ssm_dtype", "float32"},
          {"max_position_embeddings", 262144},
          {"mlp_only_layers", json::array()},
          {"model_type", "qwen3_5_text"},
          {"mtp_num_hidden_layers", 1},
          {"num_attention_heads", 16},
          {"num_hidden_layers", 32},
          {"num_key_value_heads", 4},
          {"rms_norm_eps", 1e-6},
          {"rope_parameters",
           {{"mrope_interleaved", true},
            {"mrope_section", {11, 11, 10}},
            {"partial_rotary_factor", 0.25},
            {"rope_theta", 10000000},
            {"rope_type", "default"}}},
          {"tie_word_embeddings", true},
          {"use_cache", true},
          {"vocab_size", 248320}};
}

// The full (vision-language) layout around a text_config.
json Full(json text, std::function<void(json&)> edit_top = nullptr) {
  text["model_type"] = "qwen3_5_text";
  json j = {{"architectures", {"Qwen3_5ForConditionalGeneration"}},
            {"image_token_id", 248056},
            {"model_type", "qwen3_5"},
            {"text_config", text},
            {"tie_word_embeddings", text.value("tie_word_embeddings", false)},
            {"transformers_version", "4.57.0.dev0"},
            {"video_token_id", 248057},
            {"vision_config", {{"depth", 24}, {"hidden_size", 1024}, {"model_type", "qwen3_5"}}}};
  if (edit_top) edit_top(j);
  return j;
}

// The text-only layout: the same fields at the top level.
json TextOnly(json text) {
  text["model_type"] = "qwen3_5_text";
  text["architectures"] = {"Qwen3_5ForCausalLM"};
  return text;
}

Result<Qwen35Config> Parse(const json& j) { return ParseQwen35Config(j.dump(2)); }

void Expect4B(const Qwen35Config& c) {
  EXPECT_EQ(c.hidden_size, 2560);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.intermediate_size, 9216);
  EXPECT_EQ(c.vocab_size, 248320);
  EXPECT_EQ(c.num_attention_heads, 16);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_EQ(c.partial_rotary_factor, 0.25);
  EXPECT_EQ(c.rotary_dim(), 64);
  EXPECT_EQ(c.rope_theta, 1e7);
  EXPECT_EQ(c.linear_num_key_heads, 16);
  EXPECT_EQ(c.linear_num_value_heads, 32);
  EXPECT_EQ(c.linear_key_head_dim, 128);
  EXPECT_EQ(c.linear_value_head_dim, 128);
  EXPECT_EQ(c.linear_conv_kernel_dim, 4);
  EXPECT_EQ(c.linear_key_dim(), 2048);
  EXPECT_EQ(c.linear_value_dim(), 4096);
  EXPECT_EQ(c.linear_conv_dim(), 8192);
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.max_position_embeddings, 262144);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{248044});
  EXPECT_EQ(c.dtype, "bfloat16");
  ASSERT_EQ(c.layer_types.size(), 32u);
  for (size_t i = 0; i < 32; ++i) EXPECT_EQ(c.layer_types[i], (i % 4 == 3) ? kFull : kLin) << i;
  EXPECT_EQ(c.num_layers_of(kLin), 24);
  EXPECT_EQ(c.num_layers_of(kFull), 8);
}

TEST(Qwen35Config, Real4BBothLayouts) {
  auto full = Parse(Full(Text4B()));
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  Expect4B(*full);
  EXPECT_EQ(full->model_type, "qwen3_5");
  EXPECT_EQ(full->tensor_prefix, "model.language_model.");

  auto text = Parse(TextOnly(Text4B()));
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  Expect4B(*text);
  EXPECT_EQ(text->model_type, "qwen3_5_text");
  EXPECT_EQ(text->tensor_prefix, "model.");

  // Same architecture: the canonical forms differ only in layout fields.
  json a = full->ToJson(), b = text->ToJson();
  EXPECT_NE(a, b);
  for (json* j : {&a, &b}) {
    j->erase("model_type");
    j->erase("tensor_prefix");
  }
  EXPECT_EQ(a, b);
}

TEST(Qwen35Config, LoadFromDirectory) {
  const std::string dir = test::TempDir("model_config_load");
  auto missing = LoadQwen35Config(dir);
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_NE(missing.status().message().find("config.json"), std::string::npos);
  std::ofstream(dir + "/config.json") << Full(Text4B()).dump(2);
  auto c = LoadQwen35Config(dir);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  Expect4B(*c);
  std::ofstream(dir + "/config.json") << "{\"model_type\": ";
  auto bad = LoadQwen35Config(dir);
  EXPECT_EQ(bad.status().code(), Code::kCorruption);
  EXPECT_NE(bad.status().message().find(dir + "/config.json: invalid JSON"), std::string::npos);
}

TEST(Qwen35Config, RopeParametersNestedTopLevelOrLegacy) {
  // transformers 5: rope_parameters.
  json text = Text4B();
  text["rope_parameters"] = {
      {"rope_type", "default"}, {"rope_theta", 5e5}, {"partial_rotary_factor", 0.5}};
  auto nested = Parse(TextOnly(text));
  ASSERT_TRUE(nested.ok()) << nested.status().ToString();
  EXPECT_EQ(nested->rope_theta, 5e5);
  EXPECT_EQ(nested->rotary_dim(), 128);

  // Older configs: rope_theta and partial_rotary_factor beside the other fields, no rope dict.
  text.erase("rope_parameters");
  text["rope_theta"] = 1e6;
  text["partial_rotary_factor"] = 0.125;
  auto top = Parse(Full(text));
  ASSERT_TRUE(top.ok()) << top.status().ToString();
  EXPECT_EQ(top->rope_theta, 1e6);
  EXPECT_EQ(top->rotary_dim(), 32);

  // rope_scaling with "type", theta beside it; partial_rotary_factor defaults to 0.25.
  text.erase("partial_rotary_factor");
  text["rope_scaling"] = {{"type", "default"}, {"mrope_section", {11, 11, 10}}};
  auto legacy = Parse(TextOnly(text));
  ASSERT_TRUE(legacy.ok()) << legacy.status().ToString();
  EXPECT_EQ(legacy->rope_theta, 1e6);
  EXPECT_EQ(legacy->partial_rotary_factor, 0.25);

  // rope_parameters wins over a top-level theta.
  text.erase("rope_scaling");
  text["rope_parameters"] = {{"rope_theta", 2e6}};
  auto both = Parse(TextOnly(text));
  ASSERT_TRUE(both.ok()) << both.status().ToString();
  EXPECT_EQ(both->rope_theta, 2e6);
}

TEST(Qwen35Config, LayerTypesGivenOrDerived) {
  json text = Text4B();
  text["num_hidden_layers"] = 6;
  text["layer_types"] = {"full_attention", "linear_attention", "linear_attention",
                         "full_attention", "linear_attention", "full_attention"};
  auto given = Parse(TextOnly(text));
  ASSERT_TRUE(given.ok()) << given.status().ToString();
  EXPECT_EQ(given->layer_types, (std::vector<LayerType>{kFull, kLin, kLin, kFull, kLin, kFull}));

  text.erase("layer_types");
  text["full_attention_interval"] = 3;
  auto derived = Parse(Full(text));
  ASSERT_TRUE(derived.ok()) << derived.status().ToString();
  EXPECT_EQ(derived->layer_types, (std::vector<LayerType>{kLin, kLin, kFull, kLin, kLin, kFull}));

  text.erase("full_attention_interval");  // Hugging Face's default interval is 4
  auto by_default = Parse(TextOnly(text));
  ASSERT_TRUE(by_default.ok()) << by_default.status().ToString();
  EXPECT_EQ(by_default->layer_types, (std::vector<LayerType>{kLin, kLin, kLin, kFull, kLin, kLin}));
}

TEST(Qwen35Config, TieWordEmbeddingsTopLevelWinsInFullLayout) {
  json text = Text4B();
  text["tie_word_embeddings"] = true;
  auto top_false = Parse(Full(text, [](json& j) { j["tie_word_embeddings"] = false; }));
  ASSERT_TRUE(top_false.ok());
  EXPECT_FALSE(top_false->tie_word_embeddings);
  auto only_text = Parse(Full(text, [](json& j) { j.erase("tie_word_embeddings"); }));
  ASSERT_TRUE(only_text.ok());
  EXPECT_TRUE(only_text->tie_word_embeddings);
  text.erase("tie_word_embeddings");
  auto top_true = Parse(Full(text, [](json& j) { j["tie_word_embeddings"] = true; }));
  ASSERT_TRUE(top_true.ok());
  EXPECT_TRUE(top_true->tie_word_embeddings);
  auto neither = Parse(Full(text, [](json& j) { j.erase("tie_word_embeddings"); }));
  ASSERT_TRUE(neither.ok());
  EXPECT_FALSE(neither->tie_word_embeddings);
  auto text_only = Parse(TextOnly(text));
  ASSERT_TRUE(text_only.ok());
  EXPECT_FALSE(text_only->tie_word_embeddings);
}

TEST(Qwen35Config, EosIdsAndDtype) {
  json text = Text4B();
  text["eos_token_id"] = {248046, 248044};
  text.erase("dtype");
  text["torch_dtype"] = "float32";
  auto list = Parse(TextOnly(text));
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_EQ(list->eos_token_ids, (std::vector<int64_t>{248046, 248044}));
  EXPECT_EQ(list->dtype, "float32");

  // Full layout: text_config lacks them, the top level has them.
  text.erase("eos_token_id");
  text.erase("torch_dtype");
  auto from_top = Parse(Full(text, [](json& j) {
    j["eos_token_id"] = 248044;
    j["dtype"] = "bfloat16";
  }));
  ASSERT_TRUE(from_top.ok()) << from_top.status().ToString();
  EXPECT_EQ(from_top->eos_token_ids, std::vector<int64_t>{248044});
  EXPECT_EQ(from_top->dtype, "bfloat16");

  auto none = Parse(Full(text));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->eos_token_ids.empty());
  EXPECT_EQ(none->dtype, "");
}

TEST(Qwen35Config, InvalidConfigsNameTheKey) {
  struct Case {
    std::string name;
    std::function<void(json&)> edit;  // applied to the text fields
    bool full;                        // wrap in the full layout
    Code code;
    std::string substring;
  };
  const std::vector<Case> cases = {
      {"missing size", [](json& t) { t.erase("hidden_size"); }, true, Code::kInvalidArgument,
       "config.json: text_config.hidden_size: missing"},
      {"missing size text-only", [](json& t) { t.erase("head_dim"); }, false,
       Code::kInvalidArgument, "config.json: head_dim: missing"},
      {"negative size", [](json& t) { t["intermediate_size"] = -5; }, true, Code::kInvalidArgument,
       "text_config.intermediate_size: must be positive, got -5"},
      {"zero size", [](json& t) { t["linear_conv_kernel_dim"] = 0; }, true, Code::kInvalidArgument,
       "linear_conv_kernel_dim: must be positive, got 0"},
      {"float size", [](json& t) { t["vocab_size"] = 128.0; }, true, Code::kInvalidArgument,
       "vocab_size: must be an integer, got 128.0"},
      {"string size", [](json& t) { t["num_hidden_layers"] = "32"; }, true, Code::kInvalidArgument,
       "num_hidden_layers: must be an integer, got \"32\""},
      {"huge size", [](json& t) { t["hidden_size"] = 18446744073709551615ull; }, true,
       Code::kInvalidArgument, "hidden_size: is too large"},
      {"q heads not multiple of kv heads", [](json& t) { t["num_key_value_heads"] = 3; }, true,
       Code::kInvalidArgument,
       "num_attention_heads: 16 is not a multiple of num_key_value_heads 3"},
      {"value heads not multiple of key heads", [](json& t) { t["linear_num_key_heads"] = 12; },
       true, Code::kInvalidArgument,
       "linear_num_value_heads: 32 is not a multiple of linear_num_key_heads 12"},
      {"layer_types too short", [](json& t) { t["layer_types"].erase(0); }, true,
       Code::kInvalidArgument, "layer_types: has 31 entries, num_hidden_layers is 32"},
      {"layer_types unknown", [](json& t) { t["layer_types"][5] = "sliding_attention"; }, true,
       Code::kInvalidArgument, "layer_types: entry 5 is \"sliding_attention\""},
      {"layer_types not a list", [](json& t) { t["layer_types"] = "full"; }, true,
       Code::kInvalidArgument, "layer_types: must be a list"},
      {"bad interval",
       [](json& t) {
         t.erase("layer_types");
         t["full_attention_interval"] = 0;
       },
       true, Code::kInvalidArgument, "full_attention_interval: must be positive, got 0"},
      {"rope type", [](json& t) { t["rope_parameters"]["rope_type"] = "yarn"; }, true,
       Code::kInvalidArgument,
       "text_config.rope_parameters.rope_type: rope type \"yarn\" is not supported"},
      {"legacy rope type",
       [](json& t) {
         t.erase("rope_parameters");
         t["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
       },
       false, Code::kInvalidArgument, "rope_scaling.type: rope type \"linear\" is not supported"},
      {"no rope theta", [](json& t) { t["rope_parameters"].erase("rope_theta"); }, true,
       Code::kInvalidArgument, "text_config.rope_theta: missing"},
      {"negative rope theta", [](json& t) { t["rope_parameters"]["rope_theta"] = -1; }, true,
       Code::kInvalidArgument, "rope_parameters.rope_theta: must be positive"},
      {"rope not a dict", [](json& t) { t["rope_parameters"] = 5; }, true, Code::kInvalidArgument,
       "text_config.rope_parameters: must be an object"},
      {"rotary factor above 1",
       [](json& t) { t["rope_parameters"]["partial_rotary_factor"] = 1.5; }, true,
       Code::kInvalidArgument, "partial_rotary_factor: must be at most 1"},
      {"odd rotary dim",
       [](json& t) { t["rope_parameters"]["partial_rotary_factor"] = 0.01171875; }, true,
       Code::kInvalidArgument, "gives rotary dim 3; it must be even"},
      {"activation", [](json& t) { t["hidden_act"] = "gelu"; }, true, Code::kInvalidArgument,
       "text_config.hidden_act: \"gelu\" is not supported"},
      {"ungated attention", [](json& t) { t["attn_output_gate"] = false; }, true,
       Code::kInvalidArgument, "attn_output_gate: must be true"},
      {"attention bias", [](json& t) { t["attention_bias"] = true; }, true, Code::kInvalidArgument,
       "attention_bias: must be false"},
      {"eps", [](json& t) { t["rms_norm_eps"] = 0; }, true, Code::kInvalidArgument,
       "rms_norm_eps: must be positive"},
      {"tie not bool", [](json& t) { t["tie_word_embeddings"] = "yes"; }, false,
       Code::kInvalidArgument, "tie_word_embeddings: must be true or false"},
      {"eos out of vocab", [](json& t) { t["eos_token_id"] = 248320; }, true,
       Code::kInvalidArgument, "eos_token_id: id 248320 is outside the vocabulary [0, 248320)"},
      {"eos not int", [](json& t) { t["eos_token_id"] = {"</s>"}; }, true, Code::kInvalidArgument,
       "eos_token_id: must be an integer"},
      {"dtype not string", [](json& t) { t["dtype"] = 16; }, true, Code::kInvalidArgument,
       "text_config.dtype: must be a string"},
      {"wrong sub model_type", [](json& t) { t["model_type"] = "qwen3_next"; }, false,
       Code::kInvalidArgument, "config.json: model_type: \"qwen3_next\" is not supported"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    json text = Text4B();
    json j;
    if (c.full) {
      j = Full(text);
      c.edit(j["text_config"]);
    } else {
      c.edit(text);
      j = text;  // text-only layout, edit applied after any defaults
    }
    auto r = Parse(j);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), c.code) << r.status().ToString();
    EXPECT_NE(r.status().message().find(c.substring), std::string::npos) << r.status().ToString();
  }

  // Whole-file problems.
  EXPECT_EQ(ParseQwen35Config("{").status().code(), Code::kCorruption);
  EXPECT_EQ(ParseQwen35Config("[]").status().code(), Code::kInvalidArgument);
  auto moe = Parse(Full(Text4B(), [](json& j) { j["model_type"] = "qwen3_5_moe"; }));
  EXPECT_NE(moe.status().message().find("model_type: \"qwen3_5_moe\" is not supported"),
            std::string::npos);
  auto no_text = Parse(Full(Text4B(), [](json& j) { j.erase("text_config"); }));
  EXPECT_NE(no_text.status().message().find("needs a text_config object"), std::string::npos);
  auto sub = Parse(Full(Text4B(), [](json& j) { j["text_config"]["model_type"] = "llama"; }));
  EXPECT_NE(sub.status().message().find("text_config.model_type: \"llama\""), std::string::npos);
}

}  // namespace
}  // namespace s0
