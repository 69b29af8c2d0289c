// State directories in the s0-tuning format: a directory written by the library (the fixtures'
// states/, made by the Python generator with safetensors.torch.save_file and json.dumps) imports;
// our export round-trips with the library's key names, dtype, shapes and JSON fields; and the
// load checks of S0Trainer.load refuse mismatches.
#include "checkpoints/state_dir.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "checkpoints/safetensors.h"
#include "tests/common/test_paths.h"

namespace s0 {
namespace {

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

TEST(StateDir, ImportsADirectoryInTheLibraryFormat) {
  auto sd = ReadStateDir(test::SourcePath("tests/fixtures/qwen35/text_f32_grouped/states"));
  ASSERT_TRUE(sd.ok()) << sd.status().ToString();
  EXPECT_EQ(sd->arch, "gated_delta_net");
  EXPECT_EQ(sd->state_shape, (std::vector<int64_t>{4, 16, 24}));
  EXPECT_EQ(sd->recurrent_layers, (std::vector<int>{0, 1, 2, 4}));
  ASSERT_EQ(sd->states.size(), 4u);
  for (const auto& [layer, v] : sd->states) EXPECT_EQ(v.size(), 4u * 16 * 24) << layer;
  ASSERT_TRUE(sd->config.has_value());
  EXPECT_EQ(sd->config->n_steps, 20);
  EXPECT_DOUBLE_EQ(sd->config->l2_lambda, 5e-4);
  EXPECT_EQ(ResolveAlpha(*sd), sd->config->alpha.value_or(0.07));
  EXPECT_TRUE(CheckStateDirMatches(*sd, kArchGatedDeltaNet, {0, 1, 2, 4}, {4, 16, 24}).ok());
}

TEST(StateDir, ExportHasTheLibraryLayoutAndRoundTrips) {
  StateDir sd;
  sd.arch = kArchGatedDeltaNet;
  sd.recurrent_layers = {0, 1, 2, 4, 5, 6};
  sd.state_shape = {2, 3, 4};
  for (int l : {1, 5}) {
    sd.states[l].resize(24);
    for (int i = 0; i < 24; ++i) sd.states[l][i] = float(l) + 0.25f * float(i);
  }
  S0TuningConfig c;
  c.alpha = 0.05;
  c.n_steps = 7;
  sd.config = c;
  const std::string dir = test::TempDir("state_dir_export") + "/out";
  ASSERT_TRUE(WriteStateDir(dir, sd).ok());
  // The library's keys and dtype: decimal layer indices, F32, state shape.
  auto file = SafetensorsFile::Open(dir + "/states.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(file->Names(), (std::vector<std::string>{"1", "5"}));
  EXPECT_EQ(file->Get("5")->dtype, DType::kF32);
  EXPECT_EQ(file->Get("5")->shape, (std::vector<int64_t>{2, 3, 4}));
  // meta.json and config.json: exactly the fields S0Trainer.save writes (S0Config.from_dict
  // refuses unknown keys).
  auto meta = nlohmann::json::parse(test::ReadFile(dir + "/meta.json"));
  EXPECT_EQ(meta.size(), 3u);
  EXPECT_EQ(meta["arch"], "gated_delta_net");
  EXPECT_EQ(meta["recurrent_layers"], nlohmann::json({0, 1, 2, 4, 5, 6}));
  EXPECT_EQ(meta["state_shape"], nlohmann::json({2, 3, 4}));
  auto cfg = nlohmann::json::parse(test::ReadFile(dir + "/config.json"));
  std::vector<std::string> keys;
  for (auto it = cfg.begin(); it != cfg.end(); ++it) keys.push_back(it.key());
  EXPECT_EQ(keys, (std::vector<std::string>{"alpha", "grad_clip", "l2_lambda", "lr", "max_length",
                                            "n_steps", "normalize"}));
  EXPECT_EQ(cfg["alpha"], 0.05);
  auto back = ReadStateDir(dir);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->states, sd.states);
  EXPECT_EQ(back->recurrent_layers, sd.recurrent_layers);
  EXPECT_EQ(back->config->alpha, 0.05);
  EXPECT_EQ(back->config->n_steps, 7);
}

TEST(StateDir, NullAlphaMeansTheArchitectureDefault) {
  StateDir sd;
  sd.arch = kArchMamba2;
  sd.recurrent_layers = {0};
  sd.state_shape = {1, 1, 2};
  sd.states[0] = {1, 2};
  sd.config = S0TuningConfig{};
  const std::string dir = test::TempDir("state_dir_null_alpha");
  ASSERT_TRUE(WriteStateDir(dir, sd).ok());
  EXPECT_TRUE(nlohmann::json::parse(test::ReadFile(dir + "/config.json"))["alpha"].is_null());
  auto back = ReadStateDir(dir);
  ASSERT_TRUE(back.ok());
  EXPECT_DOUBLE_EQ(ResolveAlpha(*back), 0.65);
}

TEST(StateDir, LoadChecksRefuseMismatches) {
  auto sd = ReadStateDir(test::SourcePath("tests/fixtures/qwen35/text_f32_grouped/states"));
  ASSERT_TRUE(sd.ok());
  auto arch = CheckStateDirMatches(*sd, kArchMamba2, {0, 1, 2, 4}, {4, 16, 24});
  EXPECT_NE(arch.message().find("architecture mismatch"), std::string::npos);
  auto shape = CheckStateDirMatches(*sd, kArchGatedDeltaNet, {0, 1, 2, 4}, {4, 16, 16});
  EXPECT_NE(shape.message().find("state shape mismatch"), std::string::npos);
  auto layers = CheckStateDirMatches(*sd, kArchGatedDeltaNet, {0, 1, 2, 3}, {4, 16, 24});
  EXPECT_NE(layers.message().find("layer index mismatch"), std::string::npos);
}

TEST(StateDir, MalformedDirectoriesGiveClearErrors) {
  const std::string src = test::SourcePath("tests/fixtures/qwen35/text_f32_grouped/states");
  struct Case {
    const char* name;
    std::function<void(const std::string&)> damage;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"no_states", [](const std::string& d) { std::filesystem::remove(d + "/states.safetensors"); },
       "no states found"},
      {"bad_meta_json", [](const std::string& d) { WriteText(d + "/meta.json", "{not json"); },
       "meta.json: not valid JSON"},
      {"meta_without_shape",
       [](const std::string& d) { WriteText(d + "/meta.json", R"({"arch": "gated_delta_net"})"); },
       "'state_shape' must be a list"},
      {"unknown_config_key",
       [](const std::string& d) { WriteText(d + "/config.json", R"({"lr": 0.001, "epochs": 3})"); },
       "unknown config key 'epochs'"},
      {"config_wrong_type",
       [](const std::string& d) { WriteText(d + "/config.json", R"({"lr": "fast"})"); },
       "'lr' must be a number"},
      {"shape_disagrees_with_meta",
       [](const std::string& d) {
         WriteText(d + "/meta.json",
                   R"({"arch": "gated_delta_net", "recurrent_layers": [0], "state_shape": [4, 16, 16]})");
       },
       "expected [4, 16, 16]"},
      {"non_numeric_key",
       [](const std::string& d) {
         std::vector<float> v(4 * 16 * 24, 0.0f);
         TensorToWrite t{"layer0", DType::kF32, {4, 16, 24}, std::as_bytes(std::span(v))};
         ASSERT_TRUE(WriteSafetensors(d + "/states.safetensors", std::span(&t, 1)).ok());
       },
       "not named by a layer index"},
      {"f16_state",
       [](const std::string& d) {
         std::vector<uint16_t> v(4 * 16 * 24, 0);
         TensorToWrite t{"0", DType::kF16, {4, 16, 24}, std::as_bytes(std::span(v))};
         ASSERT_TRUE(WriteSafetensors(d + "/states.safetensors", std::span(&t, 1)).ok());
       },
       "states are F32"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string dir = test::TempDir(std::string("state_dir_bad_") + c.name);
    std::filesystem::copy(src, dir, std::filesystem::copy_options::recursive |
                                        std::filesystem::copy_options::overwrite_existing);
    c.damage(dir);
    auto r = ReadStateDir(dir);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find(c.expect), std::string::npos) << r.status().ToString();
  }
}

}  // namespace
}  // namespace s0
