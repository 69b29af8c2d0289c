// `s0 train`: single-process S0 training on the CPU engine. Writes the s0-tuning state directory
// and the HDF5 run file into --out; --resume continues an interrupted run bit-identically.
// SIGINT/SIGTERM stop at the next step boundary with everything committed (exit status 75).
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "checkpoints/state_dir.h"
#include "daemon/commands.h"
#include "kernels/parallel.h"
#include "worker/dataset.h"
#include "worker/model_config.h"
#include "worker/qwen35_model.h"
#include "worker/qwen35_weights.h"
#include "worker/tokenizer.h"
#include "worker/trainer.h"

namespace s0::cli {
namespace {

// Exit status of a run stopped by a signal after committing: "try again" (EX_TEMPFAIL).
constexpr int kExitInterrupted = 75;

std::atomic<bool> g_stop{false};
extern "C" void OnStopSignal(int) { g_stop.store(true); }

struct TrainArgs {
  std::string model, data, out, layers = "all";
  S0TuningConfig hp;
  double alpha = -1;  // < 0: the architecture's default
  bool alpha_in_training = false, resume = false;
  int64_t history_every = 1, checkpoint_every = 1;
  uint64_t seed = 0;
  int threads = 0;
  std::string precision = "fp64";
};

// The full-batch gradient of the CPU engine in arithmetic Real (states and Adam stay fp32).
template <typename Real>
GradientFn CpuGradient(const Qwen35Model<Real>& model, const std::vector<TokenExample>& examples,
                       bool tty) {
  return [&model, &examples, tty](const StateMap<float>& states,
                                  StateMap<float>& grads) -> Result<double> {
    StateMap<Real> s, g;
    for (const auto& [l, v] : states) s[l].assign(v.begin(), v.end());
    for (const auto& [l, v] : grads) g[l].assign(v.size(), Real(0));
    const double inv_n = 1.0 / double(examples.size());
    double loss = 0;
    for (size_t i = 0; i < examples.size(); ++i) {
      loss += model.LossAndGrad(examples[i], s, inv_n, g);
      if (tty) std::fprintf(stderr, "\r\033[K  example %zu/%zu", i + 1, examples.size());
    }
    for (auto& [l, v] : grads) {
      for (size_t i = 0; i < v.size(); ++i) v[i] = float(g[l][i]);
    }
    return loss * inv_n;
  };
}

// "all", "early", "middle", "late" (thirds of the DeltaNet layers, as in the paper's ablation),
// or a comma-separated list of DeltaNet layer indices.
Result<std::vector<int>> ParseLayers(const std::string& spec, const std::vector<int>& delta) {
  const size_t n = delta.size();
  if (spec == "all") return delta;
  if (spec == "early" || spec == "middle" || spec == "late") {
    const size_t part = spec == "early" ? 0 : spec == "middle" ? 1 : 2;
    std::vector<int> out(delta.begin() + long(part * n / 3), delta.begin() + long((part + 1) * n / 3));
    if (out.empty()) return Status::InvalidArgument("--layers " + spec + ": no layers in that third");
    return out;
  }
  std::vector<int> out;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || std::find(delta.begin(), delta.end(), int(v)) == delta.end())
      return Status::InvalidArgument("--layers: '" + item + "' is not a DeltaNet layer index");
    out.push_back(int(v));
  }
  std::sort(out.begin(), out.end());
  if (std::adjacent_find(out.begin(), out.end()) != out.end())
    return Status::InvalidArgument("--layers: a layer is listed twice");
  return out;
}

std::string Hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

uint64_t DataFingerprint(const std::vector<TokenExample>& examples) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint64_t x) {
    for (int i = 0; i < 8; ++i) {
      h ^= (x >> (8 * i)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  for (const TokenExample& e : examples) {
    mix(uint64_t(e.prompt_len));
    mix(e.ids.size());
    for (int32_t id : e.ids) mix(uint32_t(id));
  }
  return h;
}

Status RunTrain(const TrainArgs& a, int* exit_code) {
  if (a.threads > 0) SetNumThreads(a.threads);
  S0_ASSIGN_OR_RETURN(Qwen35Config config, LoadQwen35Config(a.model));
  S0_ASSIGN_OR_RETURN(TensorStore store, TensorStore::Open(a.model));
  S0_ASSIGN_OR_RETURN(Qwen35Weights weights, LoadQwen35Weights(store, config, WeightFormat::kFloat32));
  S0_ASSIGN_OR_RETURN(uint64_t fingerprint, Qwen35Fingerprint(store, config));
  std::optional<Tokenizer> tokenizer;
  if (std::filesystem::exists(a.model + "/tokenizer.json")) {
    S0_ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::Load(a.model));
    tokenizer.emplace(std::move(t));
  }
  DatasetOptions dopt;
  dopt.max_length = a.hp.max_length;
  dopt.vocab_size = config.vocab_size;
  S0_ASSIGN_OR_RETURN(std::vector<TokenExample> examples,
                      LoadJsonlExamples(a.data, tokenizer ? &*tokenizer : nullptr, dopt));
  std::optional<Qwen35Model<float>> model32;
  std::optional<Qwen35Model<double>> model64;
  if (a.precision == "fp64") {
    model64.emplace(config, weights);
  } else {
    model32.emplace(config, weights);
  }
  const std::vector<int>& delta_layers = model64 ? model64->delta_layers() : model32->delta_layers();
  S0_ASSIGN_OR_RETURN(std::vector<int> layers, ParseLayers(a.layers, delta_layers));

  TrainOptions opt;
  opt.hp = a.hp;
  if (a.alpha >= 0) opt.hp.alpha = a.alpha;
  opt.layers = layers;
  opt.alpha_in_training = a.alpha_in_training;
  opt.history_every = a.history_every;
  opt.checkpoint_every = a.checkpoint_every;
  opt.seed = a.seed;
  const std::vector<int64_t> shape = {config.linear_num_value_heads, config.linear_key_head_dim,
                                      config.linear_value_head_dim};
  nlohmann::json extra = {{"data_fingerprint", Hex64(DataFingerprint(examples))},
                          {"precision", a.precision},
                          {"n_examples", examples.size()},
                          {"arch", kArchGatedDeltaNet}};
  TrainSession session;
  session.run_path = a.out + "/run.h5";
  session.header.created_by = "s0 train 0.1.0";
  session.header.config_json = TrainConfigJson(opt, extra.dump());
  session.header.model_fingerprint = Hex64(fingerprint);
  session.header.state_layers = layers;
  session.header.state_shape = shape;
  session.resume = a.resume;
  session.stop = &g_stop;
  const bool tty = isatty(STDERR_FILENO);
  session.on_step = [&](const StepReport& r) {
    const double per_step = r.elapsed_s / double(r.steps_this_process);
    const double eta = per_step * double(r.n_steps - r.step);
    std::fprintf(stderr, "%sstep %lld/%lld  loss %.6f  grad_norm %.4e  %.2f s/step  ETA %.0f s\n",
                 tty ? "\r\033[K" : "", static_cast<long long>(r.step),
                 static_cast<long long>(r.n_steps), r.loss, r.grad_norm, per_step, eta);
  };
  std::error_code ec;
  std::filesystem::create_directories(a.out, ec);
  if (ec) return Status::IOError(a.out + ": " + ec.message());

  GradientFn gradient =
      model64 ? CpuGradient(*model64, examples, tty) : CpuGradient(*model32, examples, tty);
  std::signal(SIGINT, OnStopSignal);
  std::signal(SIGTERM, OnStopSignal);
  std::fprintf(stderr, "s0 train: %zu examples, %zu of %zu DeltaNet layers, state %lldx%lldx%lld, %lld steps%s\n",
               examples.size(), layers.size(), delta_layers.size(),
               static_cast<long long>(shape[0]), static_cast<long long>(shape[1]),
               static_cast<long long>(shape[2]), static_cast<long long>(opt.hp.n_steps),
               a.resume ? " (resume)" : "");
  S0_ASSIGN_OR_RETURN(TrainResult result, TrainS0(opt, session, gradient));
  if (result.resumed) std::fprintf(stderr, "s0 train: resumed from %s\n", result.resumed_from.c_str());
  if (result.interrupted) {
    std::fprintf(stderr, "s0 train: stopped by a signal after step %lld; committed to %s; rerun "
                         "with --resume to finish\n",
                 static_cast<long long>(result.steps_done), session.run_path.c_str());
    *exit_code = kExitInterrupted;
    return Status::Ok();
  }
  StateDir sd;
  sd.arch = kArchGatedDeltaNet;
  sd.recurrent_layers = delta_layers;
  sd.state_shape = shape;
  for (size_t l = 0; l < layers.size(); ++l) sd.states[layers[l]] = result.states[l];
  sd.config = opt.hp;
  S0_RETURN_IF_ERROR(WriteStateDir(a.out, sd));
  double norm_sum = 0;
  for (const auto& s : result.states) {
    double q = 0;
    for (float x : s) q += double(x) * x;
    norm_sum += std::sqrt(q);
  }
  std::printf("trained %lld steps: final loss %.6f, mean state norm %.6f\n"
              "  states:   %s/states.safetensors (+ meta.json, config.json)\n"
              "  run file: %s\n",
              static_cast<long long>(result.steps_done), result.final_loss,
              result.states.empty() ? 0.0 : norm_sum / double(result.states.size()),
              a.out.c_str(), session.run_path.c_str());
  return Status::Ok();
}

}  // namespace

Runner AddTrainCommand(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand("train", "train S0 on one process (CPU engine)");
  cmd->add_option("--model", a->model, "Hugging Face model directory")->required();
  cmd->add_option("--data", a->data, "training examples, JSONL")->required();
  cmd->add_option("--out", a->out, "output directory: state files + run.h5")->required();
  cmd->add_option("--n-steps", a->hp.n_steps, "optimizer steps")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--lr", a->hp.lr, "Adam learning rate")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--l2-lambda", a->hp.l2_lambda, "L2 penalty on the states")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--alpha", a->alpha, "inference scale of S0 (default: 0.07 for Gated DeltaNet)")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--normalize", a->hp.normalize, "at inference, scale each state to norm alpha");
  cmd->add_option("--grad-clip", a->hp.grad_clip, "global gradient-norm clip")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--max-length", a->hp.max_length, "truncate examples to this many tokens")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--seed", a->seed, "recorded with the run")->capture_default_str();
  cmd->add_option("--layers", a->layers, "all | early | middle | late | comma-separated DeltaNet layer indices")->capture_default_str();
  cmd->add_flag("--alpha-in-training", a->alpha_in_training, "the paper's Algorithm 1: train through alpha * S0");
  cmd->add_option("--history-every", a->history_every, "keep a state snapshot every N steps")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--checkpoint-every", a->checkpoint_every, "commit the run file every N steps")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_flag("--resume", a->resume, "continue the run in --out from its run file");
  cmd->add_option("--threads", a->threads, "CPU threads (default: all cores)");
  cmd->add_option("--precision", a->precision,
                  "arithmetic of the CPU engine's forward/backward (states and Adam are fp32)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "fp64"}));
  return [a] {
    int code = 0;
    Status s = RunTrain(*a, &code);
    if (!s.ok()) {
      std::fprintf(stderr, "s0 train: %s\n", s.ToString().c_str());
      return 1;
    }
    return code;
  };
}

}  // namespace s0::cli
