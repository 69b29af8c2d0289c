// `s0 grad`: the loss and dLoss/dS0 of a model on some examples. Used by the tests against
// Hugging Face references and by anyone debugging a model or a state. It loads and computes
// through TrainingSetup, the same path as `s0 train` and `s0d run`.
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <string>

#include "checkpoints/safetensors.h"
#include "checkpoints/state_dir.h"
#include "daemon/commands.h"
#include "daemon/train_setup.h"
#include "kernels/parallel.h"

namespace s0::cli {
namespace {

struct GradArgs {
  std::string model, data, states, out;
  int64_t max_length = 2048;
  std::string precision = "fp32";
  int threads = 0;
};

Status RunGrad(const GradArgs& args) {
  if (args.threads > 0) SetNumThreads(args.threads);
  SetupOptions so;
  so.model_dir = args.model;
  so.data_path = args.data;
  so.max_length = args.max_length;
  so.fingerprint_model = false;
  S0_ASSIGN_OR_RETURN(so.precision, ParsePrecision(args.precision));
  S0_ASSIGN_OR_RETURN(std::unique_ptr<TrainingSetup> setup, TrainingSetup::Load(so));
  const std::vector<int64_t> shape = setup->state_shape();
  StateMap<float> s0, grads;
  if (!args.states.empty()) {
    S0_ASSIGN_OR_RETURN(StateDir sd, ReadStateDir(args.states));
    S0_RETURN_IF_ERROR(
        CheckStateDirMatches(sd, kArchGatedDeltaNet, setup->delta_layers(), shape)
            .Context(args.states));
    s0 = std::move(sd.states);
  }
  const size_t numel = size_t(shape[0] * shape[1] * shape[2]);
  for (int layer : setup->delta_layers()) grads[layer].assign(numel, 0.0f);
  const size_t n = setup->examples().size();
  std::vector<size_t> all(n);
  std::iota(all.begin(), all.end(), size_t(0));
  GradientOptions gopt;
  gopt.on_example = [](size_t done, size_t total) {
    std::fprintf(stderr, "s0 grad: example %zu/%zu\n", done, total);
  };
  S0_ASSIGN_OR_RETURN(double loss, setup->Gradient(all, gopt)(s0, grads));

  const float mean_loss = float(loss);
  std::vector<std::string> names;
  for (const auto& [layer, g] : grads) names.push_back("grad." + std::to_string(layer));
  std::vector<TensorToWrite> tensors;
  tensors.push_back({"loss", DType::kF32, {1}, std::as_bytes(std::span(&mean_loss, 1))});
  size_t i = 0;
  for (const auto& [layer, g] : grads) {
    tensors.push_back({names[i++], DType::kF32, shape, std::as_bytes(std::span(g))});
  }
  const std::filesystem::path parent = std::filesystem::path(args.out).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (ec) return Status::IOError(parent.string() + ": " + ec.message());
  S0_RETURN_IF_ERROR(WriteSafetensors(args.out, tensors,
                                      {{"format", "s0-grad"}, {"precision", args.precision}}));
  std::printf("loss %.8f over %zu examples; dS0 for %zu DeltaNet layers written to %s\n",
              double(mean_loss), n, grads.size(), args.out.c_str());
  return Status::Ok();
}

}  // namespace

Runner AddGradCommand(CLI::App& app) {
  auto args = std::make_shared<GradArgs>();
  CLI::App* cmd = app.add_subcommand(
      "grad", "loss and dLoss/dS0 of every DeltaNet layer on some examples (CPU engine)");
  cmd->add_option("--model", args->model, "Hugging Face model directory")->required();
  cmd->add_option("--data", args->data, "examples, JSONL")->required();
  cmd->add_option("--states", args->states, "state directory (s0-tuning format); default: zeros");
  cmd->add_option("--out", args->out, "output .safetensors: loss [1], grad.<layer>")->required();
  cmd->add_option("--max-length", args->max_length, "truncate examples to this many tokens")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--precision", args->precision, "arithmetic of the CPU engine")
      ->check(CLI::IsMember({"fp32", "fp64"}));
  cmd->add_option("--threads", args->threads, "CPU threads (default: all cores)");
  return [args] {
    Status s = RunGrad(*args);
    if (!s.ok()) {
      std::fprintf(stderr, "s0 grad: %s\n", s.ToString().c_str());
      return 1;
    }
    return 0;
  };
}

}  // namespace s0::cli
