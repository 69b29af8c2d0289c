// The CPU engine against the Hugging Face float64 references in tests/fixtures/qwen35/ (made by
// tests/fixtures/gen_qwen35_fixtures.py): loss to 1e-5 relative and each layer's dS0 to 1e-4
// relative L2 error, in fp32 and fp64; plus a finite-difference check of dS0 in fp64.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "checkpoints/safetensors.h"
#include "checkpoints/state_dir.h"
#include "tests/common/compare.h"
#include "tests/common/test_paths.h"
#include "worker/dataset.h"
#include "worker/qwen35_model.h"

namespace s0 {
namespace {

struct Fixture {
  std::string dir;
  Qwen35Config config;
  Qwen35Weights weights;
  std::vector<TokenExample> examples;
  StateDir states;
  std::unique_ptr<SafetensorsFile> ref;
};

Fixture LoadFixture(const std::string& name) {
  Fixture f;
  f.dir = test::SourcePath("tests/fixtures/qwen35/" + name);
  auto config = LoadQwen35Config(f.dir + "/model");
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  f.config = *config;
  auto store = TensorStore::Open(f.dir + "/model");
  EXPECT_TRUE(store.ok()) << store.status().ToString();
  auto weights = LoadQwen35Weights(*store, f.config, WeightFormat::kFloat32);
  EXPECT_TRUE(weights.ok()) << weights.status().ToString();
  f.weights = std::move(weights).value();
  DatasetOptions opt;
  opt.vocab_size = f.config.vocab_size;
  auto ex = LoadJsonlExamples(f.dir + "/data.jsonl", nullptr, opt);
  EXPECT_TRUE(ex.ok()) << ex.status().ToString();
  f.examples = std::move(ex).value();
  auto sd = ReadStateDir(f.dir + "/states");
  EXPECT_TRUE(sd.ok()) << sd.status().ToString();
  f.states = std::move(sd).value();
  auto ref = SafetensorsFile::Open(f.dir + "/ref.safetensors");
  EXPECT_TRUE(ref.ok()) << ref.status().ToString();
  f.ref = std::make_unique<SafetensorsFile>(std::move(ref).value());
  return f;
}

std::vector<double> RefTensor(const Fixture& f, const std::string& name) {
  auto t = f.ref->Get(name);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  auto v = ToFloat64(*t);
  EXPECT_TRUE(v.ok());
  return *v;
}

template <typename Real>
StateMap<Real> StatesAs(const StateDir& sd) {
  StateMap<Real> m;
  for (const auto& [layer, v] : sd.states) m[layer] = std::vector<Real>(v.begin(), v.end());
  return m;
}

template <typename Real>
void CheckAgainstReference(const std::string& name) {
  SCOPED_TRACE(name);
  Fixture f = LoadFixture(name);
  ASSERT_FALSE(::testing::Test::HasFailure());
  Qwen35Model<Real> model(f.config, f.weights);
  StateMap<Real> s0 = StatesAs<Real>(f.states), grads;
  for (int l : model.delta_layers()) grads[l].assign(size_t(model.state_size()), Real(0));
  double loss = 0;
  for (const TokenExample& ex : f.examples) {
    loss += model.LossAndGrad(ex, s0, 1.0 / double(f.examples.size()), grads);
  }
  loss /= double(f.examples.size());
  const double ref_loss = RefTensor(f, "loss")[0];
  EXPECT_LE(std::fabs(loss - ref_loss), 1e-5 * std::fabs(ref_loss))
      << "loss " << loss << " reference " << ref_loss;
  for (const auto& [layer, g] : grads) {
    std::vector<double> got(g.begin(), g.end());
    std::vector<double> ref = RefTensor(f, "grad." + std::to_string(layer));
    EXPECT_TRUE(test::RelNormClose("dS0 layer " + std::to_string(layer), std::span(got),
                                   std::span<const double>(ref), 1e-4));
  }
}

TEST(Qwen35Fixture, AllFixturesPresent) {
  // The fixtures are committed: an empty list would make every test below vacuous.
  EXPECT_GE(test::Qwen35FixtureNames().size(), 4u);
}

TEST(Qwen35Fixture, Fp32MatchesHuggingFace) {
  for (const std::string& name : test::Qwen35FixtureNames()) CheckAgainstReference<float>(name);
}

TEST(Qwen35Fixture, Fp64MatchesHuggingFace) {
  for (const std::string& name : test::Qwen35FixtureNames()) CheckAgainstReference<double>(name);
}

// dS0 against central differences of the fp64 loss along random directions, per layer.
TEST(Qwen35Fixture, FiniteDifferenceFp64) {
  const std::string name = "text_f32_grouped";
  Fixture f = LoadFixture(name);
  ASSERT_FALSE(::testing::Test::HasFailure());
  Qwen35Model<double> model(f.config, f.weights);
  StateMap<double> s0 = StatesAs<double>(f.states);
  // Two short examples keep this fast.
  std::vector<TokenExample> exs(f.examples.begin(), f.examples.begin() + 1);
  exs.push_back(f.examples.back());
  auto loss_of = [&](const StateMap<double>& s) {
    double l = 0;
    for (const auto& ex : exs) l += model.Loss(ex, s);
    return l / double(exs.size());
  };
  StateMap<double> grads;
  for (int l : model.delta_layers()) grads[l].assign(size_t(model.state_size()), 0.0);
  for (const auto& ex : exs) model.LossAndGrad(ex, s0, 1.0 / double(exs.size()), grads);
  std::mt19937_64 rng(7);
  std::normal_distribution<double> nd;
  for (int layer : model.delta_layers()) {
    std::vector<double> dir(size_t(model.state_size()));
    double norm = 0;
    for (double& x : dir) {
      x = nd(rng);
      norm += x * x;
    }
    for (double& x : dir) x /= std::sqrt(norm);
    const double h = 1e-4;
    StateMap<double> plus = s0, minus = s0;
    plus[layer].resize(dir.size(), 0.0);
    minus[layer].resize(dir.size(), 0.0);
    for (size_t i = 0; i < dir.size(); ++i) {
      plus[layer][i] += h * dir[i];
      minus[layer][i] -= h * dir[i];
    }
    const double fd = (loss_of(plus) - loss_of(minus)) / (2 * h);
    double analytic = 0;
    for (size_t i = 0; i < dir.size(); ++i) analytic += grads[layer][i] * dir[i];
    EXPECT_NEAR(analytic, fd, 1e-3 * std::fabs(fd) + 1e-9) << "layer " << layer;
    EXPECT_GT(std::fabs(fd), 1e-6) << "S0 must measurably move the loss (layer " << layer << ")";
  }
}

}  // namespace
}  // namespace s0
