// `s0 grad`: the loss and dLoss/dS0 of a model on some examples, computed by the CPU engine.
// Used by the tests against Hugging Face references and by anyone debugging a model or a state.
#include <cstdio>
#include <filesystem>
#include <string>

#include "checkpoints/safetensors.h"
#include "checkpoints/state_dir.h"
#include "daemon/commands.h"
#include "kernels/parallel.h"
#include "worker/dataset.h"
#include "worker/model_config.h"
#include "worker/qwen35_model.h"
#include "worker/qwen35_weights.h"
#include "worker/tokenizer.h"

namespace s0::cli {
namespace {

struct GradArgs {
  std::string model, data, states, out;
  int64_t max_length = 2048;
  std::string precision = "fp32";
  int threads = 0;
};

template <typename Real>
Status ComputeAndWrite(const GradArgs& args, const Qwen35Config& config,
                       const Qwen35Weights& weights, const std::vector<TokenExample>& examples,
                       const StateDir* states) {
  Qwen35Model<Real> model(config, weights);
  StateMap<Real> s0, grads;
  if (states) {
    for (const auto& [layer, values] : states->states) {
      s0[layer] = std::vector<Real>(values.begin(), values.end());
    }
  }
  for (int layer : model.delta_layers()) grads[layer].assign(size_t(model.state_size()), Real(0));
  double loss_sum = 0;
  const double scale = 1.0 / double(examples.size());
  for (size_t i = 0; i < examples.size(); ++i) {
    double loss = model.LossAndGrad(examples[i], s0, scale, grads);
    loss_sum += loss;
    std::fprintf(stderr, "s0 grad: example %zu/%zu: %zu tokens, loss %.6f\n", i + 1,
                 examples.size(), examples[i].ids.size(), loss);
  }
  const float mean_loss = float(loss_sum / double(examples.size()));
  const std::vector<int64_t> shape = {config.linear_num_value_heads, config.linear_key_head_dim,
                                      config.linear_value_head_dim};
  std::vector<std::vector<float>> grad_f32;
  std::vector<std::string> names;
  for (const auto& [layer, g] : grads) {
    grad_f32.emplace_back(g.begin(), g.end());
    names.push_back("grad." + std::to_string(layer));
  }
  std::vector<TensorToWrite> tensors;
  tensors.push_back({"loss", DType::kF32, {1}, std::as_bytes(std::span(&mean_loss, 1))});
  for (size_t i = 0; i < grad_f32.size(); ++i) {
    tensors.push_back({names[i], DType::kF32, shape, std::as_bytes(std::span(grad_f32[i]))});
  }
  const std::filesystem::path parent = std::filesystem::path(args.out).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (ec) return Status::IOError(parent.string() + ": " + ec.message());
  S0_RETURN_IF_ERROR(WriteSafetensors(args.out, tensors,
                                      {{"format", "s0-grad"}, {"precision", args.precision}}));
  std::printf("loss %.8f over %zu examples; dS0 for %zu DeltaNet layers written to %s\n",
              double(mean_loss), examples.size(), grads.size(), args.out.c_str());
  return Status::Ok();
}

Status RunGrad(const GradArgs& args) {
  if (args.threads > 0) SetNumThreads(args.threads);
  S0_ASSIGN_OR_RETURN(Qwen35Config config, LoadQwen35Config(args.model));
  S0_ASSIGN_OR_RETURN(TensorStore store, TensorStore::Open(args.model));
  S0_ASSIGN_OR_RETURN(Qwen35Weights weights,
                      LoadQwen35Weights(store, config, WeightFormat::kFloat32));
  std::optional<Tokenizer> tokenizer;
  if (std::filesystem::exists(args.model + "/tokenizer.json")) {
    S0_ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::Load(args.model));
    tokenizer.emplace(std::move(t));
  }
  DatasetOptions dopt;
  dopt.max_length = args.max_length;
  dopt.vocab_size = config.vocab_size;
  S0_ASSIGN_OR_RETURN(std::vector<TokenExample> examples,
                      LoadJsonlExamples(args.data, tokenizer ? &*tokenizer : nullptr, dopt));
  std::optional<StateDir> states;
  if (!args.states.empty()) {
    S0_ASSIGN_OR_RETURN(StateDir sd, ReadStateDir(args.states));
    std::vector<int> delta_layers;
    for (int i = 0; i < int(config.layer_types.size()); ++i) {
      if (config.layer_types[i] == LayerType::kLinearAttention) delta_layers.push_back(i);
    }
    S0_RETURN_IF_ERROR(CheckStateDirMatches(sd, kArchGatedDeltaNet, delta_layers,
                                            {config.linear_num_value_heads,
                                             config.linear_key_head_dim,
                                             config.linear_value_head_dim})
                           .Context(args.states));
    states.emplace(std::move(sd));
  }
  const StateDir* sp = states ? &*states : nullptr;
  if (args.precision == "fp64") return ComputeAndWrite<double>(args, config, weights, examples, sp);
  return ComputeAndWrite<float>(args, config, weights, examples, sp);
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
