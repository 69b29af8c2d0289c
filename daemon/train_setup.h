// What a training process loads once and reuses for every run: the frozen model on the CPU engine
// (fp32 or fp64 arithmetic) and the tokenized examples, plus the full-batch gradient over a set of
// them, optionally split over a data-parallel group. Shared by `s0 train` (one process, every
// example) and `s0d run` (worker groups, optionally a seeded subsample per run).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "daemon/group_comm.h"
#include "kernels/status.h"
#include "worker/model_config.h"
#include "worker/qwen35_model.h"
#include "worker/trainer.h"

namespace s0 {

class GpuGroupReducer;  // worker/qwen35_gpu_model.h (CUDA builds)

enum class Precision { kFp32, kFp64 };
Result<Precision> ParsePrecision(const std::string& name);  // "fp32" | "fp64"
const char* PrecisionName(Precision p);

// Which engine computes the gradient: the CPU reference (Precision applies) or the CUDA engine
// (bf16 weights, fp32 accumulation and states; worker/qwen35_gpu_model.h).
enum class Engine { kCpu, kCuda };
Result<Engine> ParseEngine(const std::string& name);  // "cpu" | "cuda"
const char* EngineName(Engine e);

struct SetupOptions {
  std::string model_dir;   // Hugging Face directory (tokenizer.json optional: pre-tokenized data)
  std::string data_path;   // JSONL (worker/dataset.h)
  int64_t max_length = 2048;
  Precision precision = Precision::kFp64;
  Engine engine = Engine::kCpu;
  int cuda_device = 0;  // the GPU the CUDA engine runs on
  // Hash every weight byte for model_fingerprint() (what run files record); seconds on a 4B
  // model, so `s0 grad`, which records none, turns it off.
  bool fingerprint_model = true;
};

struct GradientOptions {
  // A data-parallel group: rank r of G computes the examples at positions p of the run's list
  // with p % G == r, each weighted 1/N (N = the list's length), then one fused all-reduce (sum,
  // double) of every layer's gradient and the loss. Null: this process computes every example.
  GroupComm* group = nullptr;
  // With the CUDA engine and a group: the device all-reduce (NCCL) that sums the fused gradient
  // and loss instead (in fp32, on the GPUs); `group` must be set too. Null: through `group`.
  GpuGroupReducer* gpu_group = nullptr;
  // Called after each example this process computes (progress display; on rank 0, the
  // coordinator's pump). `done` counts this process's examples of the step.
  std::function<void(size_t done, size_t total)> on_example;
};

class TrainingSetup {
 public:
  static Result<std::unique_ptr<TrainingSetup>> Load(const SetupOptions& options);
  ~TrainingSetup();
  TrainingSetup(const TrainingSetup&) = delete;
  TrainingSetup& operator=(const TrainingSetup&) = delete;

  const std::vector<int>& delta_layers() const;
  std::vector<int64_t> state_shape() const;  // {H_v, d_k, d_v}
  const std::vector<TokenExample>& examples() const { return examples_; }
  uint64_t model_fingerprint() const { return model_fingerprint_; }  // 0 without fingerprint_model
  Precision precision() const { return options_.precision; }
  Engine engine() const { return options_.engine; }

  // The mean loss and mean gradient over examples()[i] for i in `subset` (positions in `subset`
  // order; see GradientOptions for the split). Gradients are summed over examples in double (the
  // fp32 engine's per example) and rounded to fp32 once, after the all-reduce, so one process and
  // a group of any size agree up to double summation order. `subset` must be non-empty.
  GradientFn Gradient(std::vector<size_t> subset, GradientOptions options) const;

 private:
  struct Impl;
  TrainingSetup() = default;
  SetupOptions options_;
  Qwen35Config config_;
  std::vector<TokenExample> examples_;
  uint64_t model_fingerprint_ = 0;
  std::unique_ptr<Impl> impl_;
};

// Writes the s0-tuning state directory of a trained run (states in options.layers order) into
// `dir`: states.safetensors, meta.json, config.json (checkpoints/state_dir.h).
Status WriteTrainedStates(const std::string& dir, const TrainingSetup& setup,
                          const TrainOptions& options, const LayerStates& states);
// ||S0[l]||_2 per layer, accumulated in double.
std::vector<double> StateNorms(const LayerStates& states);

// "all", "early", "middle", "late" (thirds of the DeltaNet layers, as in the paper's ablation),
// or a comma-separated list of DeltaNet layer indices; returned ascending.
Result<std::vector<int>> ParseLayers(const std::string& spec, const std::vector<int>& delta);

// k of n indices drawn without replacement by `seed`, ascending. The generator is spelled out so
// that a seed selects the same examples on every platform and compiler: std::mt19937_64 (its
// output sequence is fixed by the C++ standard) feeding a partial Fisher-Yates shuffle, with
// bounded integers by rejection (x uniform in [0, 2^64): reject x < 2^64 mod m, return x mod m).
// Requires k <= n.
std::vector<size_t> SubsampleIndices(size_t n, size_t k, uint64_t seed);

// FNV-1a over (prompt_len, length, ids) of the examples at `subset`, in order.
uint64_t DataFingerprint(const std::vector<TokenExample>& examples, const std::vector<size_t>& subset);
std::string Hex64(uint64_t v);

}  // namespace s0
