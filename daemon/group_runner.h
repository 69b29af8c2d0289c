// What every rank of a worker group does in `s0d run`: the leader asks the coordinator for work
// and relays each decision to its group; every rank executes the assigned run, data-parallel;
// the leader reports the result with its next request. Until the coordinator releases the group.
//
// One run on a group of G ranks, every rank in the same TrainS0 loop (worker/trainer.h):
//   start     the leader resumes OUT/runs/<id>/run.h5 (or starts fresh) and broadcasts the
//             starting step, S0 and Adam moments, or its error; followers never touch files
//   step      every rank computes its shard of the examples (GradientOptions in
//             daemon/train_setup.h); one fused all-reduce; identical Adam steps everywhere
//   boundary  before each step and after the last, one all-reduce (max) of
//             [stop, failed rank + 1, step, -step, state hash, -state hash]: every rank stops at
//             the same step (a signal on any rank of the group, or a Stop from the coordinator,
//             read by the leader); a failure on one rank fails the run on all; ranks at
//             different steps or with different states are an error, never a silent divergence
//   finish    the leader writes the state directory, then the done marker
// A failure of the leader's own (a run-file commit) after a step's gradient is announced at the
// next boundary, where the followers wait, so the group stays in step and moves on to its next
// run. A communicator or coordinator failure (a rank died or stalled) is fatal instead:
// RunWorkerLoop returns it and the job must end.
//
// Logs: one info line per run per stage from the leader (start, then done/stopped/failed); steps
// at debug level.
#pragma once

#include <atomic>
#include <functional>

#include "daemon/coordinator.h"
#include "daemon/group_comm.h"
#include "daemon/train_setup.h"
#include "proto/job.pb.h"

namespace s0 {

struct GroupContext {
  const proto::JobSpec* spec = nullptr;  // resolved (daemon/job_spec.h)
  const TrainingSetup* setup = nullptr;
  GroupComm* comm = nullptr;  // this group; rank 0 is the leader
  // The CUDA engine's gradient all-reduce (NCCL) of a group of more than one rank; null: the
  // gradient goes through `comm` (daemon/train_setup.h's GradientOptions).
  GpuGroupReducer* gpu_group = nullptr;
  int group = 0;
  double stall_timeout_s = 600;            // the leader's wait for the coordinator
  const std::atomic<bool>* stop_signal = nullptr;  // this process's stop-signal flag
  std::function<void()> idle;  // while waiting and between examples (rank 0: the coordinator)
};

// Runs until the coordinator releases the group. `link` is the leader's line to the
// coordinator, null on followers. An error means the group cannot go on (the job must end).
Status RunWorkerLoop(const GroupContext& ctx, CoordinatorLink* link);

// Executes one run on every rank of the group (the leader's `link` reads Stop at boundaries and
// carries progress). Run-level failures come back as a RUN_FAILED result; an error is fatal.
Result<proto::RunResult> ExecuteRun(const GroupContext& ctx, const proto::RunSpec& run,
                                    CoordinatorLink* link);

}  // namespace s0
