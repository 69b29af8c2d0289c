// The persistent job queue of `s0d serve`, shared by rank 0's two threads: the control thread
// answers clients from it (daemon/control_server.h), the main thread takes jobs from it and
// reports their progress into it (through the JobObserver it hands out). Every method takes the
// queue's lock; nothing here calls MPI or blocks on the network.
//
// On disk, under the daemon's --dir:
//   DIR/jobs/<job-id>.json   one JobRecord (proto/api.proto, JSON) per submitted job, rewritten
//                            atomically (checkpoints/durable_file.h) at every change of state:
//                            submit, start, each run's result, each cancel, the end. Progress
//                            within a run (steps) is kept in memory only.
// The jobs' outputs are where their specs say (OUT/job.json, OUT/runs/<run-id>/, OUT/summary.*),
// exactly as `s0d run` writes them. A daemon that restarts (after a stop, a shutdown or kill -9)
// reads every record back: jobs RUNNING on disk resume first, then the QUEUED ones, in submission
// order; finished runs are skipped through their done markers, interrupted runs resume from their
// run files, cancelled runs (recorded when the cancel arrived) and failed runs (recorded when
// they failed) never run again.
#pragma once

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <spdlog/logger.h>

#include "daemon/run_job.h"
#include "kernels/status.h"
#include "proto/api.pb.h"

namespace s0 {

class JobQueue {
 public:
  // Reads DIR/jobs/*.json (creating DIR/jobs). A record that cannot be read is an error: the
  // daemon must not forget a job silently. `log` serves both threads (never spdlog's default
  // logger, which the main thread replaces per job).
  static Result<std::unique_ptr<JobQueue>> Open(const std::string& dir,
                                                std::shared_ptr<spdlog::logger> log);

  // ---- Client requests (the control thread). Answers one request (proto/api.proto): the
  // reply's body, or its `error` (BAD_REQUEST, NOT_FOUND, CONFLICT). A watch request is answered
  // with one event, the job's status now; the control server repeats it to stream.
  //   submit    validates the spec (daemon/job_spec.h) and queues it; the same job id with the
  //             same resolved spec answers with the job as it is (`already`); another spec under
  //             a used id, or an out_dir another job writes, is a CONFLICT
  //   cancel    one run, or every unfinished run of the job; a finished run is a CONFLICT
  //   results   OUT/summary.json once the job is over, else the results known so far
  //   shutdown  sets shutdown_requested(); the main thread stops at step boundaries
  // request_id and version are the control server's business.
  proto::Reply Handle(const proto::Request& request);
  bool shutdown_requested() const;

  // ---- The main thread of rank 0.
  struct Next {
    std::string job_id;
    proto::ExpandedJob job;
  };
  // The next job to run, marked RUNNING; waits up to `timeout_s` for one. None when the wait
  // ends without a job, or a shutdown was requested.
  std::optional<Next> WaitForJob(double timeout_s);
  // The observer to pass to ExecuteJob for the job WaitForJob returned.
  std::unique_ptr<JobObserver> Observe(const std::string& job_id);
  // The job is over (status from ExecuteJob): records its state. A job stopped by a signal or a
  // shutdown (kExitStopped) stays RUNNING on disk and resumes when the daemon restarts.
  void Finish(const std::string& job_id, int status, const JobOutcome& outcome);

 private:
  class Observer;
  struct Entry {
    proto::JobRecord record;
    uint64_t revision = 1;
    std::vector<proto::RunResult> results;  // runs finished while this daemon ran the job
    std::vector<std::string> cancels;       // to apply to the running job's coordinator
    // Run id -> index in record.runs() (fixed once submitted): a job may have 100,000 runs.
    std::unordered_map<std::string, int> run_at;
    void IndexRuns();
    proto::RunProgress* FindRun(const std::string& run_id);  // null: no such run
  };
  JobQueue(std::string dir, std::shared_ptr<spdlog::logger> log)
      : dir_(std::move(dir)), log_(std::move(log)) {}
  Status Persist(Entry& e);  // writes the record; bumps the revision
  proto::JobStatus StatusOf(const Entry& e, bool with_runs) const;
  const Entry* Find(const std::string& job_id) const;
  proto::Reply OnSubmit(const proto::SubmitRequest& r);
  proto::Reply OnStatus(const std::string& job_id) const;
  proto::Reply OnWatch(const std::string& job_id) const;
  proto::Reply OnCancel(const proto::CancelRequest& r);
  proto::Reply OnResults(const std::string& job_id) const;
  proto::Reply OnList() const;
  proto::Reply OnShutdown();

  const std::string dir_;
  const std::shared_ptr<spdlog::logger> log_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::map<std::string, Entry> jobs_;
  uint64_t next_seq_ = 1;
  bool shutdown_ = false;
};

// Job ids: [A-Za-z0-9._-]{1,64}, not "." or "..": they name files under DIR/jobs/.
Status CheckJobId(const std::string& job_id);

}  // namespace s0
