// One S0 training step of the CUDA engine (worker/qwen35_gpu_model.h) on a Qwen3.5-4B-shaped model
// whose random bf16 weights are generated on the GPU (no checkpoint; nothing crosses the host):
// hidden 2560, 32 layers ([3 DeltaNet : 1 attention] x 8), attention 16 query / 4 KV heads of 256
// (partial rotary 0.25, theta 1e7), DeltaNet 16 key / 32 value heads of 128, conv 4, intermediate
// 9216, vocab 248320, tied embeddings; every DeltaNet layer tuned.
// A step is what TrainS0 does per step (s0-tuning semantics): LossAndGrad over the whole batch
// (grad_scale 1 / N; S0 up, dS0 down), + 2 * l2_lambda * S0, global-norm clip 1.0, Adam on the
// host. One warm-up step, then the mean of --steps timed steps (CUDA events on the model's
// stream, the stop event recorded after the host's optimizer step). Also timed: the loss alone
// (forward + cross-entropy, no backward).
//
// Data-parallel under mpirun (-np N, one GPU per rank by local rank): the global batch stays
// --examples; rank r computes the examples at positions p with p % N == r, and the group sums the
// fused gradient and loss with NCCL (daemon/nccl_comm.h) inside the timed step, as `s0d run`
// groups do. Rank 0 reports; the JSON's "ranks" says how many took part.
//
// Usage: s0_train_step_bench [--examples 48] [--seq-len 384] [--prompt 200] [--steps 3]
//                            [--seed 1]
// S0_GPU_TOKENS sets the micro-batch token budget (worker/qwen35_gpu_model.h). The last line of
// the output is one JSON object (launch/bench_train_step.sh reads it). Exit status 2 without
// CUDA or on bad arguments.
#include <cstdio>
#include <cstdlib>
#include <string>

#ifdef S0_HAVE_CUDA

#include <algorithm>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <vector>

#include <mpi.h>

#include "daemon/mpi_comm.h"
#include "daemon/nccl_comm.h"
#include "kernels/device_buffer.h"
#include "worker/model_config.h"
#include "worker/optimizer.h"
#include "worker/qwen35_gpu_model.h"

namespace s0 {
namespace {

constexpr double kPeakFlops = 790e12;  // measured bf16 matrix rate of one H200 (DESIGN.md)
constexpr double kL2Lambda = 5e-4;     // s0-tuning's defaults
constexpr double kGradClip = 1.0;
constexpr int64_t kGdnChunk = 64;  // the delta rule's chunk size (kernels/gdn_cuda.h)

struct Args {
  int64_t examples = 48;
  int64_t seq_len = 384;
  int64_t prompt = 200;
  int64_t steps = 3;
  uint64_t seed = 1;
};

bool ParseArgs(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    const std::string key = argv[i];
    if (i + 1 >= argc) return false;
    char* end = nullptr;
    const long long v = std::strtoll(argv[++i], &end, 10);
    if (*end != '\0' || v < 0) return false;
    if (key == "--examples") {
      a.examples = v;
    } else if (key == "--seq-len") {
      a.seq_len = v;
    } else if (key == "--prompt") {
      a.prompt = v;
    } else if (key == "--steps") {
      a.steps = v;
    } else if (key == "--seed") {
      a.seed = uint64_t(v);
    } else {
      return false;
    }
  }
  return a.examples > 0 && a.seq_len >= 2 && a.prompt < a.seq_len && a.steps > 0;
}

Qwen35Config FourBConfig() {
  nlohmann::json layer_types = nlohmann::json::array();
  for (int i = 0; i < 32; ++i)
    layer_types.push_back(i % 4 == 3 ? "full_attention" : "linear_attention");
  const nlohmann::json cfg = {{"model_type", "qwen3_5_text"},  {"hidden_size", 2560},
                              {"num_hidden_layers", 32},       {"intermediate_size", 9216},
                              {"vocab_size", 248320},          {"num_attention_heads", 16},
                              {"num_key_value_heads", 4},      {"head_dim", 256},
                              {"linear_num_key_heads", 16},    {"linear_num_value_heads", 32},
                              {"linear_key_head_dim", 128},    {"linear_value_head_dim", 128},
                              {"linear_conv_kernel_dim", 4},   {"rope_theta", 1e7},
                              {"partial_rotary_factor", 0.25}, {"rms_norm_eps", 1e-6},
                              {"tie_word_embeddings", true},   {"layer_types", layer_types}};
  Result<Qwen35Config> c = ParseQwen35Config(cfg.dump(), "train_step_bench");
  S0_CHECK_MSG(c.ok(), c.status().ToString());
  return *c;
}

// Model FLOPs of one step (what the math needs; the backward's recompute of each layer's forward
// is work the engine does but is not counted, as in MFU's usual definition). T = all tokens,
// S = scored tokens (positions max(P - 1, 0) .. L - 2 of each example), l0 = the lowest tuned
// layer, P_l = matrix parameters of layer l's projections:
//   matmul_fwd  = 2 T sum_l P_l                             (every projection, every token)
//   matmul_bwd  = 2 T (sum_{l >= l0} P_l - P_in(l0))        (input gradients only, no weight
//                 gradients; P_in(l0) = l0's in_proj_{qkv,z,a,b}: the backward stops at its S0)
//   lm_head     = 2 S V H forward + 2 S V H backward        (only scored positions reach it)
//   attention   = per attention layer and example of length L: 4 n_h d L(L+1)/2 forward (QK^T and
//                 PV over the causal pairs); backward 2.5 x forward (FlashAttention's count)
//   delta rule  = per DeltaNet layer, token and value head, with chunk C = 64 (kernels.md §1):
//                 (6 C d_k + 4 C d_v + 6 d_k d_v + 2/3 C^2) forward (the K K^T, W, U, Q K^T,
//                 intra-chunk output products, the state read, write and output, and the
//                 forward substitution); backward 2 x forward.
struct StepFlops {
  double matmul_fwd = 0, matmul_bwd = 0, lm_head = 0, attention = 0, delta_rule = 0;
  double total() const { return matmul_fwd + matmul_bwd + lm_head + attention + delta_rule; }
};

StepFlops CountFlops(const Qwen35Config& c, const Args& a, int lowest) {
  const double H = double(c.hidden_size), I = double(c.intermediate_size);
  const double hv = double(c.linear_num_value_heads);
  const double vd = double(c.linear_value_dim()), cd = double(c.linear_conv_dim());
  const double qd = double(c.num_attention_heads * c.head_dim);
  const double kvd = double(c.num_key_value_heads * c.head_dim);
  const double dk = double(c.linear_key_head_dim), dv = double(c.linear_value_head_dim);
  const double C = double(kGdnChunk), L = double(a.seq_len), N = double(a.examples);
  const double T = N * L;
  const double scored = N * double(a.seq_len - 1 - std::max<int64_t>(a.prompt - 1, 0));
  const double delta_in = H * (cd + vd + 2 * hv);
  const double attention_fwd = 4.0 * qd * L * (L + 1) / 2 * N;
  const double delta_fwd = (6 * C * dk + 4 * C * dv + 6 * dk * dv + 2.0 / 3.0 * C * C) * hv * T;
  StepFlops f;
  for (int l = 0; l < int(c.num_hidden_layers); ++l) {
    const bool delta = c.layer_types[size_t(l)] == LayerType::kLinearAttention;
    const double params = 3 * H * I + (delta ? delta_in + vd * H : H * (2 * qd + 2 * kvd) + qd * H);
    const bool backward = l >= lowest;
    f.matmul_fwd += 2 * T * params;
    if (backward) f.matmul_bwd += 2 * T * (params - (l == lowest ? delta_in : 0.0));
    if (delta) {
      f.delta_rule += delta_fwd * (backward ? 3.0 : 1.0);
    } else {
      f.attention += attention_fwd * (backward ? 3.5 : 1.0);
    }
  }
  f.lm_head = 4 * scored * double(c.vocab_size) * H;
  return f;
}

// The host half of a training step, as TrainS0 does it.
void OptimizerStep(StateMap<float>& states, StateMap<float>& grads, AdamState& adam,
                   double& grad_norm) {
  std::vector<std::span<float>> params, grad_spans;
  std::vector<std::span<const float>> grad_views;
  for (auto& [layer, s] : states) {
    std::vector<float>& g = grads.at(layer);
    for (size_t i = 0; i < g.size(); ++i) g[i] += float(2 * kL2Lambda) * s[i];
    params.emplace_back(s);
    grad_spans.emplace_back(g);
    grad_views.emplace_back(g);
  }
  grad_norm = ClipGradNorm(grad_spans, kGradClip);
  AdamStep(params, grad_views, adam, AdamConfig{});
}

double Seconds(cudaEvent_t start, cudaEvent_t stop) {
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  return double(ms) / 1e3;
}

int Run(const Args& a) {
  const Qwen35Config config = FourBConfig();
  Result<Qwen35GpuOptions> options = Qwen35GpuOptions::FromEnv();
  if (!options.ok()) {
    std::fprintf(stderr, "%s\n", options.status().ToString().c_str());
    return 2;
  }
  Result<RankInfo> world = DescribeWorld();
  S0_CHECK_MSG(world.ok(), world.status().ToString());
  const int rank = world->rank, ranks = world->size;
  CUDA_CHECK(cudaSetDevice(world->local_rank));
  cudaDeviceProp prop{};
  CudaContext ctx;
  MpiGroupComm world_comm(MPI_COMM_WORLD, "the benchmark", 600, nullptr);
  std::unique_ptr<NcclComm> nccl;
  if (ranks > 1) {
    Result<std::unique_ptr<NcclComm>> made =
        NcclComm::Create(world_comm, world->local_rank, 600, nullptr);
    S0_CHECK_MSG(made.ok(), made.status().ToString());
    nccl = std::move(*made);
  }
  CUDA_CHECK(cudaGetDeviceProperties(&prop, ctx.device()));
  const auto t_build = std::chrono::steady_clock::now();
  std::unique_ptr<Qwen35GpuModel> model =
      Qwen35GpuModel::WithRandomWeights(ctx, config, a.seed, *options);
  const double build_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_build).count();

  std::mt19937_64 rng(a.seed);
  std::uniform_int_distribution<int32_t> token(0, int32_t(config.vocab_size - 1));
  std::vector<TokenExample> batch;  // this rank's share of the global batch
  for (int64_t p = 0; p < a.examples; ++p) {
    TokenExample ex;
    ex.ids.resize(size_t(a.seq_len));
    for (int32_t& id : ex.ids) id = token(rng);
    ex.prompt_len = a.prompt;
    if (p % ranks == rank) batch.push_back(std::move(ex));
  }
  StateMap<float> states, grads;
  for (int l : model->delta_layers()) states[l].assign(size_t(model->state_size()), 0.0f);
  const int lowest = model->delta_layers().front();
  AdamState adam;
  double loss = 0, grad_norm = 0;

  auto step = [&] {
    for (int l : model->delta_layers()) grads[l].assign(size_t(model->state_size()), 0.0f);
    Result<double> r =
        model->LossAndGrad(batch, states, 1.0 / double(a.examples), grads, nccl.get());
    S0_CHECK_MSG(r.ok(), r.status().ToString());
    loss = *r / double(a.examples);
    OptimizerStep(states, grads, adam, grad_norm);
  };
  auto loss_only = [&] {
    StateMap<float> none;
    Result<double> r = model->LossAndGrad(batch, states, 1.0, none);
    S0_CHECK_MSG(r.ok(), r.status().ToString());
  };
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  auto timed = [&](auto&& fn) {
    double total = 0;
    for (int64_t i = 0; i < a.steps; ++i) {
      CUDA_CHECK(cudaEventRecord(start, ctx.stream()));
      fn();
      CUDA_CHECK(cudaEventRecord(stop, ctx.stream()));
      CUDA_CHECK(cudaEventSynchronize(stop));
      total += Seconds(start, stop);
    }
    return total / double(a.steps);
  };

  step();  // warm-up: allocates the scratch, cuBLAS picks its kernels
  const double step_s = timed(step);
  const double forward_s = timed(loss_only);  // this rank's share alone: no collective
  if (rank != 0) return 0;
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));

  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const GpuMemoryReport mem = model->Memory();
  const StepFlops f = CountFlops(config, a, lowest);
  const double tokens = double(a.examples * a.seq_len);
  const double tokens_per_s = tokens / step_s;
  const double mfu = f.total() / step_s / kPeakFlops / double(ranks);  // per GPU
  const double gib = double(1ull << 30);

  std::printf("s0_train_step_bench on %s (%d SMs)\n", prop.name, prop.multiProcessorCount);
  std::printf(
      "model: Qwen3.5-4B shape, random bf16 weights built on the device in %.2f s; %zu "
      "DeltaNet layers tuned (lowest %d)\n",
      build_s, model->delta_layers().size(), lowest);
  std::printf(
      "batch: %lld examples x %lld tokens (prompt %lld) on %d GPU%s, micro-batch budget %lld "
      "tokens\n",
      (long long)a.examples, (long long)a.seq_len, (long long)a.prompt, ranks,
      ranks > 1 ? "s (data-parallel, NCCL all-reduce of the gradients)" : "",
      (long long)options->max_tokens);
  std::printf(
      "step: %.4f s (mean of %lld after 1 warm-up) = %.0f tokens/s; loss %.6f, grad "
      "norm %.4g\n",
      step_s, (long long)a.steps, tokens_per_s, loss, grad_norm);
  std::printf("loss alone (forward + cross-entropy, rank 0's share): %.4f s\n", forward_s);
  std::printf("model FLOPs per step %.4g (per token %.4g GFLOP):\n", f.total(),
              f.total() / tokens / 1e9);
  std::printf("  matmul forward  2 T sum_l P_l                      %.4g GFLOP/token\n",
              f.matmul_fwd / tokens / 1e9);
  std::printf("  matmul backward 2 T (sum_{l>=l0} P_l - P_in(l0))   %.4g GFLOP/token\n",
              f.matmul_bwd / tokens / 1e9);
  std::printf("  lm_head         4 S V H (scored positions only)    %.4g GFLOP/token\n",
              f.lm_head / tokens / 1e9);
  std::printf("  attention       4 n_h d L(L+1)/2 x (1 fwd + 2.5 bwd) %.4g GFLOP/token\n",
              f.attention / tokens / 1e9);
  std::printf(
      "  delta rule      (6Cd_k + 4Cd_v + 6d_kd_v + 2C^2/3) H_v x (1 fwd + 2 bwd) "
      "%.4g GFLOP/token\n",
      f.delta_rule / tokens / 1e9);
  std::printf("MFU %.1f%% of %.0f TFLOP/s per GPU\n", 100 * mfu, kPeakFlops / 1e12);
  std::printf(
      "memory: model weights %.2f GiB, workspace %.2f GiB, model peak %.2f GiB; device "
      "in use %.2f of %.2f GiB (cudaMemGetInfo)\n",
      double(mem.weights) / gib, double(mem.workspace) / gib, double(mem.peak) / gib,
      double(total_bytes - free_bytes) / gib, double(total_bytes) / gib);
  const nlohmann::json out = {{"impl", "s0d"},
                              {"device", prop.name},
                              {"ranks", ranks},
                              {"examples", a.examples},
                              {"seq_len", a.seq_len},
                              {"prompt_len", a.prompt},
                              {"tokens_per_step", int64_t(tokens)},
                              {"step_s", step_s},
                              {"tokens_per_s", tokens_per_s},
                              {"forward_s", forward_s},
                              {"flops_per_step", f.total()},
                              {"flops_per_token", f.total() / tokens},
                              {"mfu", mfu},
                              {"loss", loss},
                              {"model_peak_bytes", mem.peak},
                              {"device_used_bytes", total_bytes - free_bytes},
                              {"max_tokens", options->max_tokens}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace
}  // namespace s0

#endif  // S0_HAVE_CUDA

int main(int argc, char** argv) {
#ifdef S0_HAVE_CUDA
  s0::Args args;
  if (!s0::ParseArgs(argc, argv, args)) {
    std::fprintf(stderr,
                 "usage: %s [--examples N] [--seq-len L] [--prompt P] [--steps S] [--seed X]\n",
                 argv[0]);
    return 2;
  }
  MPI_Init(&argc, &argv);
  const int rc = s0::Run(args);
  MPI_Finalize();
  return rc;
#else
  std::fprintf(stderr, "%s needs CUDA: this build has none\n", argc > 0 ? argv[0] : "bench");
  return 2;
#endif
}
