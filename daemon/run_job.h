// `s0d run SPEC`: one job on the ranks it was started on (mpirun -np N, srun, or alone), then
// exit. Rank 0 reads and expands the spec and broadcasts it; the ranks split into worker groups
// of runtime.group_size (MPI_Comm_split); every rank loads the model and data once, and the ranks
// check that they all loaded the same; rank 0 prepares the output directory (daemon/job_output.h)
// and runs the coordinator (daemon/coordinator.h) between its own work as group 0's leader; every
// group executes runs until released (daemon/group_runner.h); rank 0 writes the summary and every
// rank exits with the status rank 0 decided.
//
// A stop signal (SIGTERM, SIGINT, or the --stop-signal, SIGUSR1 by default; mpirun forwards
// SIGUSR1/2 to every rank) on any rank stops the job at a step boundary with every run committed:
// exit status 75; rerunning the same spec resumes every unfinished run and skips finished ones.
//
// `s0d serve` (daemon/serve.h) runs many jobs in one MPI lifetime through the same ExecuteJob.
#pragma once

#include <spdlog/spdlog.h>

#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "daemon/coordinator.h"
#include "daemon/mpi_comm.h"
#include "proto/job.pb.h"

namespace s0 {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;        // bad spec, setup failure, ranks disagree
inline constexpr int kExitUsage = 2;        // bad command line
inline constexpr int kExitRunsFailed = 3;   // the job ran, some runs failed (summary says why)
inline constexpr int kExitAborted = 70;     // a rank died or stalled, or a protocol error
inline constexpr int kExitStopped = 75;     // stopped by a signal; rerun the spec to resume

struct RunJobArgs {
  std::string spec_path;
  std::string stop_signal = "USR1";  // USR1 | USR2
  std::string log_level = "info";    // spdlog level names
};

// MPI_Init .. MPI_Finalize; returns the process exit status (the same on every rank).
int RunJob(const RunJobArgs& args);

// What `s0d run` and `s0d serve` share around their work: the log level, the stop-signal
// handlers (SIGTERM, SIGINT, and `stop_signal`: USR1 or USR2), MPI_Init_thread (FUNNELED: only
// the main thread calls MPI), logging tagged with the rank, `body`, MPI_Finalize. Returns the
// process exit status: `body`'s, or kExitUsage for a bad level or signal name.
int WithMpi(const std::string& what, const std::string& stop_signal, const std::string& log_level,
            const std::function<int(const RankInfo&, spdlog::level::level_enum)>& body);

// This process's stop-signal flag (set by the handlers WithMpi installs).
const std::atomic<bool>& StopFlag();

// Rank 0's hooks into a job run by `s0d serve`; `s0d run` has none. Called on rank 0's main
// thread only, never concurrently with each other.
class JobObserver {
 public:
  virtual ~JobObserver() = default;
  // Once the output directory is ready: `done` holds the runs a previous invocation finished,
  // `pending` those to execute. The observer may move runs out of `pending` into `done` (with a
  // result of its own: a cancelled run).
  virtual void OnPrepared(std::vector<proto::RunResult>* done, std::vector<proto::RunSpec>* pending) = 0;
  // After every pump of the coordinator (between examples, at step boundaries, while waiting):
  // apply cancels, read progress and results. An error ends the job as a protocol error does.
  virtual Status OnPump(Coordinator& coordinator, Coordinator::Clock::time_point now) = 0;
};

// Rank 0's account of a job ExecuteJob ran.
struct JobOutcome {
  std::string error;          // why the job could not run (the exit status is kExitError)
  proto::JobSummary summary;  // when it ran (also written to OUT/summary.{json,txt})
};

// Every rank, with the same `job` (expanded by rank 0 and broadcast): splits the ranks into
// groups, loads the model and data, prepares OUT, runs the coordinator and the groups until
// every run is finished or the job stops, writes the summary. Returns the status of `s0d run`
// (kExitOk, kExitError, kExitRunsFailed, kExitStopped), the same on every rank; failures that
// leave the ranks out of step end the process (MPI_Abort, kExitAborted). `observer` and
// `outcome`: rank 0 only, may be null.
int ExecuteJob(const proto::ExpandedJob& job, const RankInfo& w, spdlog::level::level_enum level,
               JobObserver* observer, JobOutcome* outcome);

}  // namespace s0
