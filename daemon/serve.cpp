#include "daemon/serve.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <memory>

#include "daemon/control_server.h"
#include "daemon/job_queue.h"
#include "daemon/mpi_comm.h"
#include "daemon/run_job.h"
#include "daemon/wire.h"
#include "proto/control.pb.h"

namespace s0 {
namespace {

namespace fs = std::filesystem;

// How often rank 0, with nothing to run, looks at the stop flag and the shutdown request.
constexpr double kIdlePollS = 0.2;

// Rank 0's part of the daemon: the queue and the control thread.
struct Root {
  std::unique_ptr<FileLock> dir_lock;
  std::unique_ptr<JobQueue> queue;
  std::unique_ptr<ControlServer> server;
};

Result<Root> StartRoot(const ServeArgs& args, const RankInfo& w, spdlog::level::level_enum level) {
  Root root;
  std::error_code ec;
  const fs::path dir = fs::absolute(args.dir, ec);
  if (ec || args.dir.empty()) return Status::InvalidArgument("--dir '" + args.dir + "': not a usable path");
  fs::create_directories(dir, ec);
  if (ec) return Status::IOError(dir.string() + ": " + ec.message());
  S0_ASSIGN_OR_RETURN(root.dir_lock, FileLock::Acquire((dir / "s0d.lock").string(),
                                                       "another daemon serves " + dir.string()));
  auto logger = [&](const std::string& name) {
    auto log = std::make_shared<spdlog::logger>(name, std::make_shared<spdlog::sinks::stderr_sink_mt>());
    log->set_pattern("%Y-%m-%d %H:%M:%S.%e %-5l [rank 0/" + std::to_string(w.size) + " " + name + "] %v");
    log->set_level(level);
    log->flush_on(spdlog::level::trace);
    return log;
  };
  S0_ASSIGN_OR_RETURN(root.queue, JobQueue::Open(dir.string(), logger("queue")));
  ControlOptions co;
  co.endpoint = args.endpoint;
  co.curve_secret_file = args.curve_secret;
  co.curve_clients_file = args.curve_clients;
  co.require_curve = args.require_curve;
  co.log = logger("control");
  JobQueue* queue = root.queue.get();
  S0_ASSIGN_OR_RETURN(root.server, ControlServer::Start(co, [queue](const proto::Request& r) {
                        return queue->Handle(r);
                      }));
  return root;
}

// Rank 0: the next step for every rank. After a stopped job the daemon ends: a stop signal may
// have reached another rank only, and rank 0 must not start the next job into it.
proto::ServeStep NextStep(JobQueue& queue, bool stopped, std::string* job_id) {
  proto::ServeStep step;
  step.set_version(kProtocolVersion);
  for (;;) {
    if (queue.shutdown_requested()) {
      step.set_exit_status(kExitOk);
      return step;
    }
    if (stopped || StopFlag().load()) {
      step.set_exit_status(kExitStopped);
      return step;
    }
    if (std::optional<JobQueue::Next> next = queue.WaitForJob(kIdlePollS)) {
      *job_id = next->job_id;
      *step.mutable_job() = std::move(next->job);
      return step;
    }
  }
}

int ServeInWorld(const ServeArgs& args, const RankInfo& w, spdlog::level::level_enum level) {
  const bool is_root = w.rank == 0;
  Root root;
  std::string failed;  // rank 0: why the daemon cannot start
  if (is_root) {
    Result<Root> started = StartRoot(args, w, level);
    if (started.ok()) {
      root = std::move(*started);
    } else {
      failed = started.status().ToString();
      spdlog::error("s0d serve: {}", failed);
    }
  }
  MpiGroupComm world(MPI_COMM_WORLD, "the daemon", kWaitForever, nullptr);
  if (Status s = world.Broadcast(failed, kWaitForever); !s.ok()) AbortJob(s.ToString(), kExitAborted);
  if (!failed.empty()) return kExitError;
  if (is_root) spdlog::info("serving the queue in {}", fs::absolute(args.dir).string());

  bool stopped = false;
  for (;;) {
    std::string bytes, job_id;
    if (is_root) bytes = EncodeMessage(NextStep(*root.queue, stopped, &job_id));
    // Between jobs the other ranks wait on rank 0 for as long as the queue stays empty.
    if (Status s = world.Broadcast(bytes, kWaitForever); !s.ok()) AbortJob(s.ToString(), kExitAborted);
    proto::ServeStep step;
    if (Status s = DecodeMessage(bytes, &step, "the next step from rank 0", kMaxJobMessageBytes); !s.ok()) {
      AbortJob(s.ToString(), kExitAborted);
    }
    if (!step.has_job()) {
      if (is_root) {
        spdlog::info("s0d serve: {}", step.exit_status() == kExitOk
                                          ? "shut down by a client"
                                          : "stopped by a signal; a restart resumes the queue");
        root.server->Stop();
      }
      return step.exit_status();
    }
    std::unique_ptr<JobObserver> observer;
    JobOutcome outcome;
    if (is_root) {
      observer = root.queue->Observe(job_id);
      spdlog::info("job {}: starting", job_id);
    }
    const int code = ExecuteJob(step.job(), w, level, observer.get(), is_root ? &outcome : nullptr);
    if (is_root) root.queue->Finish(job_id, code, outcome);
    stopped = code == kExitStopped;
  }
}

}  // namespace

int Serve(const ServeArgs& args) {
  return WithMpi("s0d serve --dir " + args.dir, args.stop_signal, args.log_level,
                 [&args](const RankInfo& w, spdlog::level::level_enum level) {
                   return ServeInWorld(args, w, level);
                 });
}

}  // namespace s0
