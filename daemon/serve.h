// `s0d serve --dir DIR`: the daemon as a service. One MPI lifetime (mpirun -np N, srun, or alone)
// runs job after job from a persistent queue (daemon/job_queue.h) that clients fill over the
// control socket (daemon/control_server.h, proto/api.proto; the client is `s0`).
//
// Rank 0 takes DIR's lock (DIR/s0d.lock: one daemon per queue), reads the queue, and starts the
// control thread; every rank learns whether that worked. Then, until the daemon stops, rank 0
// takes the next job from the queue and broadcasts it (proto ServeStep), and every rank runs it
// exactly as `s0d run` does (ExecuteJob in daemon/run_job.h): the same groups, coordinator, run
// files, done markers and summary. Client requests reach the job through the queue, which rank 0's
// main thread consults each time it pumps the coordinator: cancels (the coordinator stops that run
// at a step boundary), progress (step, loss, ETA) and results. The control thread never calls MPI.
//
// Stop: a stop signal (SIGTERM, SIGINT, the --stop-signal) stops the current job at a step
// boundary with everything committed and the daemon exits 75; `s0 shutdown` does the same and
// exits 0. Either way the stopped job stays RUNNING in the queue and resumes, with the queued
// jobs after it, when a daemon starts again on the same DIR; so does the work of a daemon that
// was killed (kill -9): runs resume from their last committed step, finished runs never run again.
#pragma once

#include <string>

namespace s0 {

struct ServeArgs {
  std::string dir;                 // the queue: DIR/jobs/, DIR/s0d.lock
  std::string endpoint;            // empty: DefaultEndpoint() (daemon/control_server.h)
  std::string stop_signal = "USR1";
  std::string log_level = "info";
  std::string curve_secret;        // CURVE: the server's secret key file
  std::string curve_clients;       // CURVE: the admitted clients' public keys
  bool require_curve = false;      // CURVE on loopback too
};

// MPI_Init .. MPI_Finalize. Exit status: 0 after a client's shutdown, 75 after a stop signal,
// 1 when the daemon could not start (the message says why: DIR or the endpoint is taken, a bad
// key file ...), 2 for a bad command line, 70 when the ranks fell out of step (MPI_Abort).
int Serve(const ServeArgs& args);

}  // namespace s0
