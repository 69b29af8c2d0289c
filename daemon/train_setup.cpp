#include "daemon/train_setup.h"

#ifdef S0_HAVE_CUDA
#include <cuda_runtime.h>

#include "kernels/device_buffer.h"
#include "worker/qwen35_gpu_model.h"
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <type_traits>

#include "checkpoints/state_dir.h"
#include "worker/dataset.h"
#include "worker/qwen35_weights.h"
#include "worker/tokenizer.h"

namespace s0 {

Result<Precision> ParsePrecision(const std::string& name) {
  if (name == "fp32") return Precision::kFp32;
  if (name == "fp64") return Precision::kFp64;
  return Status::InvalidArgument("precision '" + name + "': expected fp32 or fp64");
}

const char* PrecisionName(Precision p) { return p == Precision::kFp32 ? "fp32" : "fp64"; }

Result<Engine> ParseEngine(const std::string& name) {
  if (name == "cpu") return Engine::kCpu;
  if (name == "cuda") return Engine::kCuda;
  return Status::InvalidArgument("engine '" + name + "': expected cpu or cuda");
}

const char* EngineName(Engine e) { return e == Engine::kCpu ? "cpu" : "cuda"; }

struct TrainingSetup::Impl {
  Qwen35Weights weights;
  std::optional<Qwen35Model<float>> model32;
  std::optional<Qwen35Model<double>> model64;
#ifdef S0_HAVE_CUDA
  std::unique_ptr<CudaContext> ctx;
  std::unique_ptr<Qwen35GpuModel> gpu;
#endif
};

TrainingSetup::~TrainingSetup() = default;

Result<std::unique_ptr<TrainingSetup>> TrainingSetup::Load(const SetupOptions& options) {
  std::unique_ptr<TrainingSetup> t(new TrainingSetup);
  t->options_ = options;
  t->impl_ = std::make_unique<Impl>();
  S0_ASSIGN_OR_RETURN(t->config_, LoadQwen35Config(options.model_dir));
  S0_ASSIGN_OR_RETURN(TensorStore store, TensorStore::Open(options.model_dir));
  const bool cuda = options.engine == Engine::kCuda;
#ifndef S0_HAVE_CUDA
  if (cuda) return Status::InvalidArgument("engine cuda: this build has no CUDA engine");
#endif
  S0_ASSIGN_OR_RETURN(t->impl_->weights,
                      LoadQwen35Weights(store, t->config_,
                                        cuda ? WeightFormat::kAsStored : WeightFormat::kFloat32));
  if (options.fingerprint_model) {
    S0_ASSIGN_OR_RETURN(t->model_fingerprint_, Qwen35Fingerprint(store, t->config_));
  }
  std::optional<Tokenizer> tokenizer;
  if (std::filesystem::exists(options.model_dir + "/tokenizer.json")) {
    S0_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::Load(options.model_dir));
    tokenizer.emplace(std::move(tok));
  }
  DatasetOptions dopt;
  dopt.max_length = options.max_length;
  dopt.vocab_size = t->config_.vocab_size;
  S0_ASSIGN_OR_RETURN(t->examples_, LoadJsonlExamples(options.data_path,
                                                      tokenizer ? &*tokenizer : nullptr, dopt));
  if (t->examples_.empty()) return Status::InvalidArgument(options.data_path + ": no examples");
#ifdef S0_HAVE_CUDA
  if (cuda) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || options.cuda_device >= count ||
        options.cuda_device < 0) {
      return Status::Unavailable("engine cuda: no CUDA device " +
                                 std::to_string(options.cuda_device) + " (" +
                                 std::to_string(count) + " found)");
    }
    if (cudaSetDevice(options.cuda_device) != cudaSuccess) {
      return Status::Unavailable("engine cuda: cannot use device " +
                                 std::to_string(options.cuda_device));
    }
    S0_ASSIGN_OR_RETURN(Qwen35GpuOptions gopt, Qwen35GpuOptions::FromEnv());
    t->impl_->ctx = std::make_unique<CudaContext>();
    t->impl_->gpu = std::make_unique<Qwen35GpuModel>(*t->impl_->ctx, t->config_, t->impl_->weights, gopt);
    t->impl_->weights = Qwen35Weights{};  // uploaded; the host copy is no longer needed
    return t;
  }
#endif
  if (options.precision == Precision::kFp64) {
    t->impl_->model64.emplace(t->config_, t->impl_->weights);
  } else {
    t->impl_->model32.emplace(t->config_, t->impl_->weights);
  }
  return t;
}

const std::vector<int>& TrainingSetup::delta_layers() const {
#ifdef S0_HAVE_CUDA
  if (impl_->gpu) return impl_->gpu->delta_layers();
#endif
  return impl_->model64 ? impl_->model64->delta_layers() : impl_->model32->delta_layers();
}

std::vector<int64_t> TrainingSetup::state_shape() const {
  return {config_.linear_num_value_heads, config_.linear_key_head_dim,
          config_.linear_value_head_dim};
}

namespace {

template <typename Real>
Result<double> ShardGradient(const Qwen35Model<Real>& model, const std::vector<TokenExample>& examples,
                             const std::vector<size_t>& subset, const GradientOptions& options,
                             const StateMap<float>& states, StateMap<float>& grads) {
  StateMap<Real> s, g;
  for (const auto& [l, v] : states) s[l].assign(v.begin(), v.end());
  size_t total = 0;
  for (const auto& [l, v] : grads) {
    g[l].assign(v.size(), Real(0));
    total += v.size();
  }
  const size_t n = subset.size();
  const double inv_n = 1.0 / double(n);
  const size_t rank = options.group ? size_t(options.group->rank()) : 0;
  const size_t size = options.group ? size_t(options.group->size()) : 1;
  // One fused buffer: every layer's gradient (layer order), then the loss sum; in double, so that
  // the sum does not depend on how the examples are split. (fp32 partial sums would, and Adam
  // turns such rounding differences into full-size steps where a gradient is near zero.)
  std::vector<double> fused(total + 1, 0.0);
  double loss = 0;
  size_t done = 0;
  for (size_t p = rank; p < n; p += size) {
    if constexpr (std::is_same_v<Real, double>) {
      loss += model.LossAndGrad(examples[subset[p]], s, inv_n, g);
    } else {  // each example's gradient alone in fp32, then added in double
      for (auto& [l, v] : g) std::fill(v.begin(), v.end(), Real(0));
      loss += model.LossAndGrad(examples[subset[p]], s, inv_n, g);
      size_t at = 0;
      for (const auto& [l, v] : g) {
        for (Real x : v) fused[at++] += double(x);
      }
    }
    if (options.on_example) options.on_example(++done, (n - rank + size - 1) / size);
  }
  if constexpr (std::is_same_v<Real, double>) {
    size_t at = 0;
    for (const auto& [l, v] : g) {
      std::copy(v.begin(), v.end(), fused.begin() + long(at));
      at += v.size();
    }
  }
  fused.back() = loss;
  if (size > 1) S0_RETURN_IF_ERROR(options.group->AllReduceSum(std::span<double>(fused)));
  size_t at = 0;
  for (auto& [l, v] : grads) {
    for (float& x : v) x = float(fused[at++]);
  }
  return fused.back() * inv_n;
}

#ifdef S0_HAVE_CUDA
// The CUDA engine over this rank's share of the examples (one packed batch, micro-batched by the
// model), then the same fused all-reduce in double as the CPU path.
Result<double> GpuShardGradient(Qwen35GpuModel& model, const std::vector<TokenExample>& examples,
                                const std::vector<size_t>& subset, const GradientOptions& options,
                                const StateMap<float>& states, StateMap<float>& grads) {
  const size_t n = subset.size();
  const size_t rank = options.group ? size_t(options.group->rank()) : 0;
  const size_t size = options.group ? size_t(options.group->size()) : 1;
  std::vector<TokenExample> batch;
  for (size_t p = rank; p < n; p += size) batch.push_back(examples[subset[p]]);
  StateMap<float> g;
  size_t total = 0;
  for (const auto& [l, v] : grads) {
    g[l].assign(v.size(), 0.0f);
    total += v.size();
  }
  const double inv_n = 1.0 / double(n);
  double loss = 0;
  if (size > 1 && options.gpu_group != nullptr) {
    // Every rank joins the device all-reduce, also one with no example this step; it returns
    // the group's sums (the gradient in fp32), added into zeroed gradients.
    for (auto& [l, v] : grads) std::fill(v.begin(), v.end(), 0.0f);
    S0_ASSIGN_OR_RETURN(loss, model.LossAndGrad(batch, states, inv_n, grads, options.gpu_group));
    if (options.on_example) options.on_example(batch.size(), batch.size());
    return loss * inv_n;
  }
  if (!batch.empty()) {
    S0_ASSIGN_OR_RETURN(loss, model.LossAndGrad(batch, states, inv_n, g));
  }
  if (options.on_example) options.on_example(batch.size(), batch.size());
  std::vector<double> fused(total + 1, 0.0);
  size_t at = 0;
  for (const auto& [l, v] : g) {
    for (float x : v) fused[at++] = double(x);
  }
  fused.back() = loss;
  if (size > 1) S0_RETURN_IF_ERROR(options.group->AllReduceSum(std::span<double>(fused)));
  at = 0;
  for (auto& [l, v] : grads) {
    for (float& x : v) x = float(fused[at++]);
  }
  return fused.back() * inv_n;
}
#endif

}  // namespace

GradientFn TrainingSetup::Gradient(std::vector<size_t> subset, GradientOptions options) const {
  return [this, subset = std::move(subset), options = std::move(options)](
             const StateMap<float>& states, StateMap<float>& grads) -> Result<double> {
    if (subset.empty()) return Status::InvalidArgument("a run needs at least one example");
    for (size_t i : subset) {
      if (i >= examples_.size()) return Status::InvalidArgument("example index out of range");
    }
#ifdef S0_HAVE_CUDA
    if (impl_->gpu) return GpuShardGradient(*impl_->gpu, examples_, subset, options, states, grads);
#endif
    if (impl_->model64) {
      return ShardGradient(*impl_->model64, examples_, subset, options, states, grads);
    }
    return ShardGradient(*impl_->model32, examples_, subset, options, states, grads);
  };
}

Status WriteTrainedStates(const std::string& dir, const TrainingSetup& setup,
                          const TrainOptions& options, const LayerStates& states) {
  StateDir sd;
  sd.arch = kArchGatedDeltaNet;
  sd.recurrent_layers = setup.delta_layers();
  sd.state_shape = setup.state_shape();
  for (size_t l = 0; l < options.layers.size() && l < states.size(); ++l) {
    sd.states[options.layers[l]] = states[l];
  }
  sd.config = options.hp;
  return WriteStateDir(dir, sd);
}

std::vector<double> StateNorms(const LayerStates& states) {
  std::vector<double> norms;
  for (const auto& s : states) {
    double q = 0;
    for (float x : s) q += double(x) * x;
    norms.push_back(std::sqrt(q));
  }
  return norms;
}

Result<std::vector<int>> ParseLayers(const std::string& spec, const std::vector<int>& delta) {
  const size_t n = delta.size();
  if (spec == "all") return delta;
  if (spec == "early" || spec == "middle" || spec == "late") {
    const size_t part = spec == "early" ? 0 : spec == "middle" ? 1 : 2;
    std::vector<int> out(delta.begin() + long(part * n / 3), delta.begin() + long((part + 1) * n / 3));
    if (out.empty()) return Status::InvalidArgument("layers " + spec + ": no layers in that third");
    return out;
  }
  std::vector<int> out;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || std::find(delta.begin(), delta.end(), int(v)) == delta.end())
      return Status::InvalidArgument("layers: '" + item + "' is not a DeltaNet layer index");
    out.push_back(int(v));
  }
  if (out.empty()) return Status::InvalidArgument("layers: empty list");
  std::sort(out.begin(), out.end());
  if (std::adjacent_find(out.begin(), out.end()) != out.end())
    return Status::InvalidArgument("layers: a layer is listed twice");
  return out;
}

std::vector<size_t> SubsampleIndices(size_t n, size_t k, uint64_t seed) {
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), size_t(0));
  std::mt19937_64 engine(seed);
  auto below = [&engine](uint64_t m) {  // uniform in [0, m), m >= 1
    const uint64_t reject_under = (0 - m) % m;  // 2^64 mod m
    for (;;) {
      const uint64_t x = engine();
      if (x >= reject_under) return x % m;
    }
  };
  for (size_t i = 0; i < k && i < n; ++i) std::swap(idx[i], idx[i + size_t(below(n - i))]);
  idx.resize(std::min(k, n));
  std::sort(idx.begin(), idx.end());
  return idx;
}

uint64_t DataFingerprint(const std::vector<TokenExample>& examples, const std::vector<size_t>& subset) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint64_t x) {
    for (int i = 0; i < 8; ++i) {
      h ^= (x >> (8 * i)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  for (size_t i : subset) {
    const TokenExample& e = examples[i];
    mix(uint64_t(e.prompt_len));
    mix(e.ids.size());
    for (int32_t id : e.ids) mix(uint32_t(id));
  }
  return h;
}

std::string Hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace s0
