#include "worker/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <system_error>

#include "worker/optimizer.h"

namespace s0 {
namespace {

using nlohmann::json;

double Norm(std::span<const float> v) {
  double s = 0;
  for (float x : v) s += double(x) * double(x);
  return std::sqrt(s);
}

double InferenceAlphaDefault(const S0TuningConfig& hp) { return hp.alpha.value_or(0.07); }

// The throwing std::filesystem::exists would end the process on EACCES or EIO (nothing catches
// filesystem_error); here they fail the run like any other file error.
Result<bool> PathExists(const std::string& path) {
  std::error_code ec;
  const bool exists = std::filesystem::exists(path, ec);
  if (ec) return Status::IOError("cannot tell whether " + path + " exists: " + ec.message());
  return exists;
}

}  // namespace

std::string TrainConfigJson(const TrainOptions& o, const std::string& extra_json_object) {
  json j;
  j["n_steps"] = o.hp.n_steps;
  j["lr"] = o.hp.lr;
  j["l2_lambda"] = o.hp.l2_lambda;
  j["alpha"] = o.hp.alpha ? json(*o.hp.alpha) : json(nullptr);
  j["normalize"] = o.hp.normalize;
  j["grad_clip"] = o.hp.grad_clip;
  j["max_length"] = o.hp.max_length;
  j["layers"] = o.layers;
  j["alpha_in_training"] = o.alpha_in_training;
  j["history_every"] = o.history_every;
  j["seed"] = o.seed;
  json extra = json::parse(extra_json_object.empty() ? "{}" : extra_json_object);
  for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
  return j.dump();  // nlohmann objects keep keys sorted: canonical
}

Result<TrainResult> TrainS0(const TrainOptions& options, const TrainSession& session,
                            const GradientFn& gradient) {
  const RunHeader& header = session.header;
  if (header.state_layers != options.layers) {
    return Status::InvalidArgument("run header layers differ from the tuned layers");
  }
  if (options.hp.n_steps < 0 || options.history_every < 1 || options.checkpoint_every < 1) {
    return Status::InvalidArgument("n_steps must be >= 0, history/checkpoint cadence >= 1");
  }
  const size_t numel = header.StateNumel();
  const size_t n_layers = options.layers.size();
  TrainResult result;

  // Start fresh, or continue from the last good committed run file. A follower (no run path)
  // starts from zero here and takes the leader's state from sync_start.
  const bool writes = !session.run_path.empty();
  OptimizerState opt;
  opt.step = 0;
  opt.s0.assign(n_layers, std::vector<float>(numel, 0.0f));
  opt.exp_avg = opt.s0;
  opt.exp_avg_sq = opt.s0;
  std::vector<StepMetrics> past_metrics;
  std::optional<RunFile> run;
  auto establish = [&]() -> Status {
    if (!writes) return Status::Ok();
    S0_ASSIGN_OR_RETURN(const bool have_current, PathExists(session.run_path));
    S0_ASSIGN_OR_RETURN(const bool have_prev, PathExists(PrevRunFilePath(session.run_path)));
    const bool have_file = have_current || have_prev;
    if (session.resume && have_file) {
      S0_ASSIGN_OR_RETURN(LoadedRunFile loaded, LoadLatestGood(session.run_path));
      const RunFileContents& c = loaded.contents;
      S0_RETURN_IF_ERROR(CheckFingerprint(c, header.model_fingerprint));
      if (c.header.config_json != header.config_json) {
        return Status::InvalidArgument(loaded.path + ": the run file was written with another "
                                       "configuration; refusing to resume (recorded " +
                                       c.header.config_json + ", now " + header.config_json + ")");
      }
      if (c.header.state_layers != header.state_layers ||
          c.header.state_shape != header.state_shape) {
        return Status::InvalidArgument(loaded.path + ": the run file's layers or state shape differ");
      }
      // From the LoadedRunFile, not just its contents: after a fallback to run.h5.prev the first
      // commit must replace the damaged run.h5 rather than rotate it over the good .prev.
      S0_ASSIGN_OR_RETURN(RunFile restored, RunFile::Restore(loaded));
      run.emplace(std::move(restored));
      opt = c.optimizer;
      past_metrics = c.metrics;
      result.resumed = true;
      result.resumed_from = loaded.path + (loaded.from_prev ? " (" + loaded.reason + ")" : "");
      return Status::Ok();
    }
    if (!session.resume && have_file) {
      return Status::InvalidArgument(session.run_path + " exists; pass --resume to continue it "
                                     "or choose another output directory");
    }
    S0_ASSIGN_OR_RETURN(RunFile created, RunFile::Create(header));
    run.emplace(std::move(created));
    return Status::Ok();
  };
  Status started = establish();
  if (session.sync_start) started = session.sync_start(started, opt);
  S0_RETURN_IF_ERROR(started);
  for (const LayerStates* t : {&opt.s0, &opt.exp_avg, &opt.exp_avg_sq}) {
    bool fits = t->size() == n_layers;
    for (size_t l = 0; fits && l < n_layers; ++l) fits = (*t)[l].size() == numel;
    if (!fits) return Status::Internal("the starting state does not have the run's layers and shape");
  }
  AdamState adam{opt.step, opt.exp_avg, opt.exp_avg_sq};
  LayerStates& s0 = opt.s0;
  const AdamConfig adam_config{options.hp.lr, 0.9, 0.999, 1e-8};
  const double train_alpha = options.alpha_in_training ? InferenceAlphaDefault(options.hp) : 1.0;
  const double wall_base = past_metrics.empty() ? 0.0 : past_metrics.back().wall_time_s;
  if (!past_metrics.empty()) {
    result.final_loss = past_metrics.back().loss;
    result.wall_time_s = wall_base;
  }
  const auto t0 = std::chrono::steady_clock::now();
  int64_t committed = opt.step;

  auto commit = [&](int64_t step) -> Status {
    if (!writes) return Status::Ok();
    S0_RETURN_IF_ERROR(run->SetOptimizer(step, ViewOf(s0), ViewOf(adam.exp_avg), ViewOf(adam.exp_avg_sq)));
    S0_RETURN_IF_ERROR(run->Commit(session.run_path));
    committed = step;
    return Status::Ok();
  };

  int64_t done_here = 0;
  for (int64_t step = opt.step + 1;; ++step) {
    StepBoundary boundary{step, options.hp.n_steps, session.stop && session.stop->load(), &s0};
    bool stop = boundary.stop_requested;
    if (session.at_boundary) {
      S0_ASSIGN_OR_RETURN(stop, session.at_boundary(boundary));
    }
    if (step > options.hp.n_steps) break;
    if (stop) {
      result.interrupted = true;
      break;
    }
    StateMap<float> states, grads;
    for (size_t l = 0; l < n_layers; ++l) {
      std::vector<float>& eff = states[options.layers[l]];
      eff = s0[l];
      if (options.alpha_in_training) {
        for (float& x : eff) x = float(train_alpha) * x;
      }
      grads[options.layers[l]].assign(numel, 0.0f);
    }
    S0_ASSIGN_OR_RETURN(double loss, gradient(states, grads));
    if (!std::isfinite(loss)) {
      return Status::Internal("step " + std::to_string(step) + ": the loss is " +
                              std::to_string(loss) + "; stopping before the states are damaged");
    }
    std::vector<std::span<float>> g_spans;
    std::vector<std::span<const float>> g_const;
    std::vector<std::span<float>> p_spans;
    const float l2 = float(options.hp.l2_lambda);
    for (size_t l = 0; l < n_layers; ++l) {
      std::vector<float>& g = grads[options.layers[l]];
      if (options.alpha_in_training) {
        for (float& x : g) x *= float(train_alpha);
      }
      // (l2_lambda * sum(p^2)).backward() adds l2_lambda * (2 * p) to each gradient.
      for (size_t i = 0; i < numel; ++i) g[i] += l2 * (2.0f * s0[l][i]);
      g_spans.emplace_back(g);
      g_const.emplace_back(g);
      p_spans.emplace_back(s0[l]);
    }
    const double grad_norm = ClipGradNorm(g_spans, options.hp.grad_clip);
    AdamStep(p_spans, g_const, adam, adam_config);
    ++done_here;

    StepMetrics m;
    m.step = step;
    m.loss = loss;
    m.grad_norm = grad_norm;
    for (size_t l = 0; l < n_layers; ++l) m.state_norm.push_back(Norm(s0[l]));
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    m.wall_time_s = wall_base + elapsed;
    const bool last = step == options.hp.n_steps;
    if (writes) {
      S0_RETURN_IF_ERROR(run->AppendMetrics(m));
      if (step % options.history_every == 0 || last) {
        S0_RETURN_IF_ERROR(run->AppendSnapshot(step, ViewOf(s0)));
      }
    }
    if (step % options.checkpoint_every == 0 || last) S0_RETURN_IF_ERROR(commit(step));
    result.final_loss = loss;
    result.wall_time_s = m.wall_time_s;
    if (session.on_step) {
      session.on_step({step, options.hp.n_steps, loss, grad_norm, elapsed, done_here});
    }
  }
  // A stop between checkpoints still leaves every finished step committed.
  if (adam.step > committed) S0_RETURN_IF_ERROR(commit(adam.step));
  // A run created and stopped before its first step still leaves a file to resume from.
  if (writes && adam.step == 0) {
    S0_ASSIGN_OR_RETURN(const bool have_current, PathExists(session.run_path));
    if (!have_current) S0_RETURN_IF_ERROR(commit(0));
  }
  result.steps_done = adam.step;
  result.states = std::move(s0);
  return result;
}

}  // namespace s0
