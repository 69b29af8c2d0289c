#include "daemon/group_runner.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numeric>
#include <thread>

#include "checkpoints/state_dir.h"
#include "daemon/job_output.h"
#include "daemon/job_spec.h"
#include "daemon/wire.h"
#ifdef S0_HAVE_CUDA
#include "worker/qwen35_gpu_model.h"  // GpuGroupReducer
#endif

namespace s0 {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void Backoff(int64_t& polls) {
  if (++polls > 100) {
    // 64-bit count: a daemon may idle here for months (an int would overflow after ~25 days).
    const int shift = int(std::min<int64_t>(6, polls / 100));
    std::this_thread::sleep_for(std::chrono::microseconds(std::min(1000, 20 << shift)));
  }
}

// A failed GPU all-reduce (NCCL aborted) leaves the group as unable to go on as a broken MPI
// communicator: its run ends the job instead of failing and taking the next run.
bool GpuGroupBroken(const GroupContext& ctx) {
#ifdef S0_HAVE_CUDA
  return ctx.gpu_group != nullptr && ctx.gpu_group->broken();
#else
  (void)ctx;  // gpu_group is never set without CUDA
  return false;
#endif
}

// 63 bits of a hash of every state's bytes: equal states give equal values on every rank.
int64_t HashStates(const LayerStates& states) {
  uint64_t h = 0x243f6a8885a308d3ull;
  for (const std::vector<float>& s : states) {
    for (float x : s) {
      uint32_t bits;
      std::memcpy(&bits, &x, sizeof bits);
      h ^= bits;
      h *= 0x9e3779b97f4a7c15ull;
      h ^= h >> 29;
    }
  }
  return int64_t(h >> 1);
}

proto::WorkerMessage NewWorkerMessage(int group) {
  proto::WorkerMessage m;
  m.set_version(kProtocolVersion);
  m.set_group(uint32_t(group));
  return m;
}

// The leader: sends Ready (with the result of the run just finished) and waits for an Assign or
// a Release. Stop and KeepAlive may come first: a Stop meant for the run that just ended is
// answered by the Release the coordinator sends for the Ready.
Result<proto::CoordinatorMessage> AwaitDecision(const GroupContext& ctx, CoordinatorLink& link,
                                                std::optional<proto::RunResult> finished) {
  // An interrupted result tells the coordinator of the stop already.
  bool stop_sent = finished && finished->state() == proto::RUN_INTERRUPTED;
  proto::WorkerMessage ready = NewWorkerMessage(ctx.group);
  proto::Ready* r = ready.mutable_ready();
  if (finished) *r->mutable_finished() = std::move(*finished);
  S0_RETURN_IF_ERROR(link.Send(ready));
  Clock::time_point heard = Clock::now();
  int64_t polls = 0;
  for (;;) {
    if (ctx.idle) ctx.idle();
    S0_ASSIGN_OR_RETURN(std::optional<proto::CoordinatorMessage> m, link.Poll());
    if (m) {
      switch (m->body_case()) {
        case proto::CoordinatorMessage::kAssign:
        case proto::CoordinatorMessage::kRelease:
          return std::move(*m);
        case proto::CoordinatorMessage::kStop:
        case proto::CoordinatorMessage::kKeepalive:
          heard = Clock::now();
          continue;
        case proto::CoordinatorMessage::BODY_NOT_SET:
          break;
      }
      return Status::InvalidArgument("a message from the coordinator without a body");
    }
    if (ctx.stop_signal->load() && !stop_sent) {
      proto::WorkerMessage stop = NewWorkerMessage(ctx.group);
      stop.mutable_stop_request();
      S0_RETURN_IF_ERROR(link.Send(stop));
      stop_sent = true;
    }
    if (Since(heard) > ctx.stall_timeout_s) {
      return Status::Unavailable("no word from the coordinator (rank 0) for " +
                                 std::to_string(int(Since(heard))) + " s: it died or stalled");
    }
    Backoff(polls);
  }
}

// Every rank: the leader's decision, relayed to the group.
Result<proto::CoordinatorMessage> ShareDecision(const GroupContext& ctx, CoordinatorLink* link,
                                                std::optional<proto::RunResult> finished) {
  std::string bytes;
  if (link) {
    S0_ASSIGN_OR_RETURN(proto::CoordinatorMessage d, AwaitDecision(ctx, *link, std::move(finished)));
    bytes = EncodeMessage(d);
  }
  S0_RETURN_IF_ERROR(ctx.comm->Broadcast(bytes, kWaitForever));
  proto::CoordinatorMessage d;
  S0_RETURN_IF_ERROR(DecodeMessage(bytes, &d, "the group leader's decision"));
  return d;
}

// Gives every rank the leader's starting point (or its error): a RunStart message, then one
// fused buffer of S0 and both Adam moments.
Status SyncStart(GroupComm& comm, const Status& local, OptimizerState& st) {
  std::string bytes;
  if (comm.rank() == 0) {
    proto::RunStart start;
    start.set_version(kProtocolVersion);
    start.set_step(st.step);
    if (!local.ok()) start.set_error(local.ToString());
    bytes = EncodeMessage(start);
  }
  S0_RETURN_IF_ERROR(comm.Broadcast(bytes, kCommTimeout));
  proto::RunStart start;
  S0_RETURN_IF_ERROR(DecodeMessage(bytes, &start, "the group leader's run start"));
  if (!start.error().empty()) {
    if (comm.rank() == 0) return local;
    return Status::InvalidArgument("the group leader could not start the run: " + start.error());
  }
  if (start.step() < 0) return Status::Corruption("the group leader's run starts at a negative step");
  std::vector<float> fused;
  for (const LayerStates* t : {&st.s0, &st.exp_avg, &st.exp_avg_sq}) {
    for (const std::vector<float>& v : *t) fused.insert(fused.end(), v.begin(), v.end());
  }
  S0_RETURN_IF_ERROR(comm.Broadcast(std::span<float>(fused)));
  if (comm.rank() != 0) {
    st.step = start.step();
    size_t at = 0;
    for (LayerStates* t : {&st.s0, &st.exp_avg, &st.exp_avg_sq}) {
      for (std::vector<float>& v : *t) {
        std::copy(fused.begin() + long(at), fused.begin() + long(at + v.size()), v.begin());
        at += v.size();
      }
    }
  }
  return Status::Ok();
}

// State shared by the hooks of one run.
struct RunControl {
  bool coordinator_stop = false;
  bool cancelled = false;      // the coordinator's stop is a client's cancel of this run
  bool step_computed = false;  // since the last boundary, every rank has this step's gradient
  Status fatal;                // a coordinator-link failure: the job must end
};

std::string ConfigExtra(const TrainingSetup& setup, const proto::RunSpec& run,
                        const std::vector<size_t>& subset) {
  nlohmann::json extra = {{"data_fingerprint", Hex64(DataFingerprint(setup.examples(), subset))},
                          {"precision", PrecisionName(setup.precision())},
                          {"engine", EngineName(setup.engine())},
                          {"n_examples", subset.size()},
                          {"arch", kArchGatedDeltaNet},
                          {"run_id", run.run_id()}};
  if (run.has_subsample()) extra["subsample"] = run.subsample();
  return extra.dump();
}

}  // namespace

Result<proto::RunResult> ExecuteRun(const GroupContext& ctx, const proto::RunSpec& run,
                                    CoordinatorLink* link) {
  GroupComm& comm = *ctx.comm;
  const TrainingSetup& setup = *ctx.setup;
  const bool leader = comm.rank() == 0;
  const int size = comm.size();
  const std::string& id = run.run_id();
  proto::RunResult result;
  result.set_version(kProtocolVersion);
  result.set_run_id(id);
  result.set_seed(run.seed());
  result.set_config_key(run.config_key());
  result.set_group(uint32_t(ctx.group));
  result.set_group_size(uint32_t(size));
  auto failed = [&](const Status& why) {
    result.set_state(proto::RUN_FAILED);
    result.set_error(why.ToString());
    if (leader) spdlog::error("run {}: failed: {}", id, why.ToString());
    return result;
  };

  // Deterministic on every rank (same spec, same model and data): an error fails the run on all.
  Result<TrainOptions> options = RunTrainOptions(run, setup.delta_layers());
  if (!options.ok()) return failed(options.status().Context("run " + id));
  const size_t n_all = setup.examples().size();
  std::vector<size_t> subset(n_all);
  std::iota(subset.begin(), subset.end(), size_t(0));
  if (run.has_subsample()) {
    if (run.subsample() > n_all) {
      return failed(Status::InvalidArgument("subsample " + std::to_string(run.subsample()) +
                                            " exceeds the " + std::to_string(n_all) + " examples"));
    }
    subset = SubsampleIndices(n_all, run.subsample(), run.seed());
  }
  result.set_n_examples(uint32_t(subset.size()));
  for (int l : options->layers) result.add_layers(l);

  const std::string dir = RunDir(ctx.spec->out_dir(), id);
  Status prepared;
  if (leader) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) prepared = Status::IOError(dir + ": " + ec.message());
  }
  TrainSession session;
  session.run_path = leader ? dir + "/run.h5" : "";
  session.header.created_by = "s0d 0.1.0";
  session.header.config_json = TrainConfigJson(*options, ConfigExtra(setup, run, subset));
  session.header.model_fingerprint = Hex64(setup.model_fingerprint());
  session.header.state_layers = options->layers;
  session.header.state_shape = setup.state_shape();
  session.resume = true;
  session.stop = ctx.stop_signal;

  RunControl control;
  session.sync_start = [&](const Status& local, OptimizerState& start) -> Status {
    const Status mine = prepared.ok() ? local : prepared;
    if (leader && mine.ok() && start.step > 0) {
      spdlog::info("run {}: resuming after step {}/{} (committed in {})", id, start.step,
                   options->hp.n_steps, session.run_path);
    }
    if (size == 1) return mine;
    return SyncStart(comm, mine, start);
  };
  session.at_boundary = [&](const StepBoundary& b) -> Result<bool> {
    control.step_computed = false;
    bool stop = b.stop_requested;
    if (leader) {
      if (ctx.idle) ctx.idle();
      for (;;) {
        Result<std::optional<proto::CoordinatorMessage>> m = link->Poll();
        if (!m.ok()) control.fatal = m.status();
        if (!m.ok() || !*m) break;
        if (!(*m)->has_stop()) {
          control.fatal = Status::InvalidArgument("the coordinator sent a message other than Stop "
                                                  "during run " + id);
          break;
        }
        control.coordinator_stop = true;
        control.cancelled = control.cancelled || (*m)->stop().cancel();
      }
      if (!control.fatal.ok()) return control.fatal;
      stop = stop || control.coordinator_stop;
    }
    if (size > 1) {
      const int64_t h = HashStates(*b.states);
      std::array<int64_t, 6> v = {stop ? 1 : 0, 0, b.next_step, -b.next_step, h, -h};
      S0_RETURN_IF_ERROR(comm.AllReduceMax(v));
      if (v[1] > 0) {
        return Status::Internal("group rank " + std::to_string(v[1] - 1) +
                                " failed (its log says why)");
      }
      if (v[2] != -v[3]) {
        return Status::Internal("the ranks of group " + std::to_string(ctx.group) +
                                " reached different steps (" + std::to_string(-v[3]) + " to " +
                                std::to_string(v[2]) + ")");
      }
      if (v[4] != -v[5]) {
        return Status::Internal("the ranks of group " + std::to_string(ctx.group) +
                                " hold different states before step " + std::to_string(b.next_step));
      }
      stop = v[0] != 0;
    }
    if (stop && b.next_step <= b.n_steps && leader) {
      spdlog::info("run {}: stopping before step {}/{} ({})", id, b.next_step, b.n_steps,
                   control.cancelled          ? "cancelled"
                   : control.coordinator_stop ? "the job is stopping"
                                              : "stop signal");
    }
    return stop;
  };
  session.on_step = [&](const StepReport& r) {
    if (!leader) return;
    spdlog::debug("run {}: step {}/{} loss {:.6f} grad_norm {:.4e}", id, r.step, r.n_steps, r.loss,
                  r.grad_norm);
    proto::WorkerMessage m = NewWorkerMessage(ctx.group);
    proto::Progress* p = m.mutable_progress();
    p->set_run_id(id);
    p->set_step(r.step);
    p->set_loss(r.loss);
    Status sent = link->Send(m);
    if (!sent.ok() && control.fatal.ok()) control.fatal = sent;
  };
  GradientOptions gopt;
  gopt.group = size > 1 ? &comm : nullptr;
  gopt.gpu_group = ctx.gpu_group;
  if (ctx.idle) gopt.on_example = [&ctx](size_t, size_t) { ctx.idle(); };
  GradientFn inner = setup.Gradient(subset, gopt);
  GradientFn gradient = [&](const StateMap<float>& states, StateMap<float>& grads) -> Result<double> {
    Result<double> loss = inner(states, grads);
    control.step_computed = loss.ok() && std::isfinite(*loss);
    return loss;
  };

  if (leader) {
    spdlog::info("run {}: start: seed {}, {} examples{}, layers {}, {} steps, group {} ({} rank{})",
                 id, run.seed(), subset.size(),
                 run.has_subsample() ? " (subsample of " + std::to_string(n_all) + ")" : "",
                 run.method().layers(), run.method().n_steps(), ctx.group, size, size > 1 ? "s" : "");
  }
  Result<TrainResult> trained = TrainS0(*options, session, gradient);
  if (!control.fatal.ok()) return control.fatal;
  if (comm.broken() || GpuGroupBroken(ctx)) {
    return trained.ok() ? Status::Unavailable("the group's communicator failed") : trained.status();
  }
  if (!trained.ok()) {
    if (leader && size > 1 && control.step_computed) {
      // The followers have finished this step and wait at the next boundary: fail it for them.
      std::array<int64_t, 6> v = {0, 1, 0, 0, 0, 0};
      S0_RETURN_IF_ERROR(comm.AllReduceMax(v));
    }
    return failed(trained.status());
  }
  const TrainResult& t = *trained;
  result.set_final_loss(t.final_loss);
  for (double n : StateNorms(t.states)) result.add_state_norm(n);
  result.set_wall_time_s(t.wall_time_s);
  result.set_steps_done(t.steps_done);
  result.set_resumed(t.resumed);
  if (leader && t.resumed) spdlog::debug("run {}: resumed from {}", id, t.resumed_from);
  if (t.interrupted) {
    result.set_state(proto::RUN_INTERRUPTED);
    if (leader) {
      spdlog::info("run {}: {} after step {}/{}; committed to {}{}", id,
                   control.cancelled ? "cancelled" : "stopped", t.steps_done, options->hp.n_steps,
                   session.run_path, control.cancelled ? "" : "; a rerun resumes it");
    }
    return result;
  }
  result.set_state(proto::RUN_DONE);
  if (!leader) return result;
  Status written = WriteTrainedStates(dir, setup, *options, t.states);
  if (written.ok()) written = WriteDoneMarker(dir, result);
  if (!written.ok()) return failed(written);
  double mean_norm = 0;
  for (double n : result.state_norm()) mean_norm += n;
  if (result.state_norm_size() > 0) mean_norm /= result.state_norm_size();
  spdlog::info("run {}: done: {} steps, final loss {:.6f}, mean |S0| {:.6f}, {:.2f} s", id,
               t.steps_done, t.final_loss, mean_norm, t.wall_time_s);
  return result;
}

Status RunWorkerLoop(const GroupContext& ctx, CoordinatorLink* link) {
  std::optional<proto::RunResult> last;
  for (;;) {
    S0_ASSIGN_OR_RETURN(proto::CoordinatorMessage d, ShareDecision(ctx, link, std::move(last)));
    last.reset();
    if (d.has_release()) {
      spdlog::debug("group {} released ({})", ctx.group,
                    d.release().stopped() ? "the job is stopping" : "every run is finished");
      return Status::Ok();
    }
    if (!d.has_assign()) {
      return Status::InvalidArgument("the coordinator's decision is neither a run nor a release");
    }
    S0_ASSIGN_OR_RETURN(proto::RunResult r, ExecuteRun(ctx, d.assign(), link));
    last = std::move(r);
  }
}

}  // namespace s0
