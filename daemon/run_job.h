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
#pragma once

#include <string>

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

}  // namespace s0
