// The S0 training loop with the reference library's semantics (s0-tuning 0.1.2, S0Trainer.train):
//   states start at zero (fp32) for every tuned layer;
//   each step uses every example: g = mean_i d(CE_i)/dS0 + 2 * l2_lambda * S0;
//   global L2-norm clipping over all states together (torch clip_grad_norm_);
//   torch Adam (betas 0.9/0.999, eps 1e-8, bias correction).
// Training uses the unscaled states; alpha is applied at inference only. The paper's Algorithm 1
// (alpha inside the training forward: the model sees alpha * S0) is an explicit option.
//
// Where the gradient comes from is the caller's: a GradientFn runs the engine over the examples
// (one process, or a shard plus an all-reduce across ranks). The loop owns the optimizer, the
// metrics and the HDF5 run file; commits are atomic, and a run resumed from its run file
// finishes with states bit-identical to an uninterrupted one.
//
// Data-parallel groups run this same loop on every rank: the leader reads and writes the run
// file; followers (TrainSession::run_path empty) touch no file and take the leader's starting
// point through TrainSession::sync_start; TrainSession::at_boundary makes every rank stop at the
// same step. With identical gradients every rank then takes identical Adam steps.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "checkpoints/run_file.h"
#include "checkpoints/state_dir.h"
#include "kernels/status.h"
#include "worker/qwen35_model.h"

namespace s0 {

struct TrainOptions {
  S0TuningConfig hp;                // n_steps, lr, l2_lambda, alpha, normalize, grad_clip, max_length
  std::vector<int> layers;          // tuned DeltaNet layers, ascending
  bool alpha_in_training = false;   // the paper's Algorithm 1
  int64_t history_every = 1;        // keep a state snapshot every this many steps (and the last)
  int64_t checkpoint_every = 1;     // commit the run file every this many steps (and the last)
  uint64_t seed = 0;                // recorded; the full-batch step itself draws no randomness
};

// The run's configuration as canonical JSON (sorted keys): what the run file records and what a
// resume must match. `extra` holds caller facts to pin (model dir, data fingerprint, ...).
std::string TrainConfigJson(const TrainOptions& options, const std::string& extra_json_object);

// Mean loss over all examples at the given (effective) states, and the mean over examples of
// d(CE_i)/dS0 written into `grads` (one entry per tuned layer, pre-sized, zeroed by the caller).
using GradientFn = std::function<Result<double>(const StateMap<float>& states,
                                                StateMap<float>& grads)>;

struct StepReport {
  int64_t step = 0;  // 1-based, the step just taken
  int64_t n_steps = 0;
  double loss = 0;
  double grad_norm = 0;
  double elapsed_s = 0;  // since this process started training
  int64_t steps_this_process = 0;
};

struct TrainResult {
  LayerStates states;  // final S0 per tuned layer, options.layers order
  double final_loss = 0;  // loss of the last step (before its update), as the library reports
  double wall_time_s = 0;  // training time over every session of the run (the run file's)
  int64_t steps_done = 0;
  bool interrupted = false;  // stopped by the stop flag at a step boundary
  bool resumed = false;
  std::string resumed_from;  // the run file a resume loaded (may be <path>.prev)
};

// A step boundary: before each step, and once after the last one (next_step == n_steps + 1).
struct StepBoundary {
  int64_t next_step = 0;
  int64_t n_steps = 0;
  bool stop_requested = false;  // this process's TrainSession::stop
  const LayerStates* states = nullptr;  // S0 as it stands at the boundary
};

struct TrainSession {
  // HDF5 run file. Empty: this process neither reads nor writes one (a data-parallel follower;
  // its starting point then comes from sync_start).
  std::string run_path;
  RunHeader header;              // layers, shape, fingerprint, config_json
  bool resume = false;           // continue from run_path when it exists
  const std::atomic<bool>* stop = nullptr;  // read at every step boundary
  std::function<void(const StepReport&)> on_step;

  // Data-parallel groups; both null for one process. Every rank of a group calls TrainS0 with
  // the same options, so the calls below line up across the ranks.
  // Called once on every rank before the first boundary with the outcome of establishing the
  // starting point here (the leader: loading or creating the run; followers: always ok, zero
  // state) and that state; replaces it with the leader's on every rank, or returns the leader's
  // error on every rank.
  std::function<Status(const Status& local, OptimizerState& start)> sync_start;
  // Called at every step boundary; returns whether to stop there (the group's decision), or an
  // error that ends training. Null: stop when stop_requested. At the boundary after the last
  // step the answer only matters as an error: training is complete either way.
  std::function<Result<bool>(const StepBoundary& boundary)> at_boundary;
};

// Runs (or resumes) training to options.hp.n_steps.
Result<TrainResult> TrainS0(const TrainOptions& options, const TrainSession& session,
                            const GradientFn& gradient);

}  // namespace s0
