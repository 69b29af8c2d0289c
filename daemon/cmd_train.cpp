// `s0 train`: single-process S0 training on the CPU engine. Writes the s0-tuning state directory
// and the HDF5 run file into --out; --resume continues an interrupted run bit-identically.
// SIGINT/SIGTERM stop at the next step boundary with everything committed (exit status 75).
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numeric>

#include "checkpoints/state_dir.h"
#include "daemon/commands.h"
#include "daemon/train_setup.h"
#include "kernels/parallel.h"
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
  std::string engine = "cpu";
  int device = 0;
};

Status RunTrain(const TrainArgs& a, int* exit_code) {
  if (a.threads > 0) SetNumThreads(a.threads);
  SetupOptions so;
  so.model_dir = a.model;
  so.data_path = a.data;
  so.max_length = a.hp.max_length;
  S0_ASSIGN_OR_RETURN(so.precision, ParsePrecision(a.precision));
  S0_ASSIGN_OR_RETURN(so.engine, ParseEngine(a.engine));
  so.cuda_device = a.device;
  S0_ASSIGN_OR_RETURN(std::unique_ptr<TrainingSetup> setup, TrainingSetup::Load(so));
  const std::vector<TokenExample>& examples = setup->examples();
  std::vector<size_t> all(examples.size());
  std::iota(all.begin(), all.end(), size_t(0));
  const std::vector<int>& delta_layers = setup->delta_layers();
  S0_ASSIGN_OR_RETURN(std::vector<int> layers, ParseLayers(a.layers, delta_layers));

  TrainOptions opt;
  opt.hp = a.hp;
  if (a.alpha >= 0) opt.hp.alpha = a.alpha;
  opt.layers = layers;
  opt.alpha_in_training = a.alpha_in_training;
  opt.history_every = a.history_every;
  opt.checkpoint_every = a.checkpoint_every;
  opt.seed = a.seed;
  const std::vector<int64_t> shape = setup->state_shape();
  nlohmann::json extra = {{"data_fingerprint", Hex64(DataFingerprint(examples, all))},
                          {"precision", a.precision},
                          {"engine", a.engine},
                          {"n_examples", examples.size()},
                          {"arch", kArchGatedDeltaNet}};
  TrainSession session;
  session.run_path = a.out + "/run.h5";
  session.header.created_by = "s0 train 0.1.0";
  session.header.config_json = TrainConfigJson(opt, extra.dump());
  session.header.model_fingerprint = Hex64(setup->model_fingerprint());
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

  GradientOptions gopt;
  if (tty) {
    gopt.on_example = [](size_t done, size_t total) {
      std::fprintf(stderr, "\r\033[K  example %zu/%zu", done, total);
    };
  }
  GradientFn gradient = setup->Gradient(all, gopt);
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
  S0_RETURN_IF_ERROR(WriteTrainedStates(a.out, *setup, opt, result.states));
  double norm_sum = 0;
  for (double n : StateNorms(result.states)) norm_sum += n;
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
  cmd->add_option("--engine", a->engine,
                  "cpu: the reference engine (--precision applies); cuda: the CUDA engine (bf16 "
                  "weights, fp32 states)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--device", a->device, "GPU index for --engine cuda")->capture_default_str();
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
