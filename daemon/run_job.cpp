#include "daemon/run_job.h"

#include <mpi.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <thread>

#include "daemon/coordinator.h"
#include "daemon/group_runner.h"
#include "daemon/job_output.h"
#include "daemon/job_spec.h"
#include "daemon/mpi_comm.h"
#include "daemon/nccl_comm.h"
#include "daemon/train_setup.h"
#include "daemon/wire.h"
#include "kernels/check.h"
#include "kernels/parallel.h"
#include "proto/control.pb.h"

namespace s0 {
namespace {

// Only rank 0 reads a file (at most 1 MiB) before the spec broadcast: a rank waiting longer than
// this for it is waiting on a dead or stalled rank 0.
constexpr double kSpecTimeout = 60;

std::atomic<bool> g_stop{false};
extern "C" void OnStopSignal(int) { g_stop.store(true); }

Status InstallStopHandlers(const std::string& user_signal) {
  int user = 0;
  if (user_signal == "USR1" || user_signal == "SIGUSR1") user = SIGUSR1;
  if (user_signal == "USR2" || user_signal == "SIGUSR2") user = SIGUSR2;
  if (user == 0) return Status::InvalidArgument("--stop-signal " + user_signal + ": USR1 or USR2");
  struct sigaction sa {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : {SIGTERM, SIGINT, user}) {
    if (sigaction(sig, &sa, nullptr) != 0) return Status::Internal("sigaction failed");
  }
  return Status::Ok();
}

void SetupLogging(const RankInfo& w, int group, spdlog::level::level_enum level) {
  // Not registered by name: `s0d serve` sets up a logger per job, under the same names.
  auto logger = std::make_shared<spdlog::logger>("s0d-" + std::to_string(group),
                                                 std::make_shared<spdlog::sinks::stderr_sink_mt>());
  const std::string tag = "[rank " + std::to_string(w.rank) + "/" + std::to_string(w.size) +
                          " group " + (group < 0 ? std::string("-") : std::to_string(group)) + "]";
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %-5l " + tag + " %v");
  logger->set_level(level);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);
}

// Rank 0: the job, or why there is none.
proto::JobStart ReadJob(const std::string& spec_path) {
  proto::JobStart start;
  start.set_version(kProtocolVersion);
  Result<proto::JobSpec> spec = LoadJobSpec(spec_path);
  if (!spec.ok()) {
    start.set_error(spec.status().ToString());
    return start;
  }
  Result<std::vector<proto::RunSpec>> runs = ExpandJob(*spec);
  if (!runs.ok()) {
    start.set_error(runs.status().Context(spec_path).ToString());
    return start;
  }
  proto::ExpandedJob* job = start.mutable_job();
  job->set_version(kProtocolVersion);
  *job->mutable_spec() = std::move(*spec);
  for (proto::RunSpec& r : *runs) *job->add_runs() = std::move(r);
  return start;
}

// Rank 0, after every rank loaded the same model and data: checks the runs against them,
// prepares OUT and reads the results of runs a previous invocation finished.
Status PrepareOnRankZero(const proto::ExpandedJob& job, const TrainingSetup& setup,
                         std::vector<proto::RunResult>* previous,
                         std::vector<proto::RunSpec>* pending) {
  const size_t n = setup.examples().size();
  for (const proto::RunSpec& run : job.runs()) {
    S0_RETURN_IF_ERROR(RunTrainOptions(run, setup.delta_layers()).status().Context("run " + run.run_id()));
    if (run.has_subsample() && run.subsample() > n) {
      return Status::InvalidArgument("subsample " + std::to_string(run.subsample()) + " exceeds the " +
                                     std::to_string(n) + " examples of " + job.spec().data());
    }
  }
  S0_RETURN_IF_ERROR(PrepareJobDir(job));
  for (const proto::RunSpec& run : job.runs()) {
    Result<proto::RunResult> done = ReadDoneMarker(RunDir(job.spec().out_dir(), run.run_id()), run.run_id());
    if (done.ok()) {
      spdlog::info("run {}: already done (final loss {:.6f}); skipped", run.run_id(), done->final_loss());
      previous->push_back(std::move(*done));
      continue;
    }
    if (done.status().code() != Code::kNotFound) {
      spdlog::warn("run {}: {}; running it again", run.run_id(), done.status().ToString());
    }
    pending->push_back(run);
  }
  return Status::Ok();
}

// Unfinished runs remain only when the job was stopped.
int DecideExit(const proto::JobSummary& s) {
  if (s.n_unfinished() > 0) return kExitStopped;
  return s.n_failed() > 0 ? kExitRunsFailed : kExitOk;
}

// Between MPI_Init and MPI_Finalize of `s0d run`; the same status on every rank.
int RunInWorld(const RunJobArgs& args, const RankInfo& w, spdlog::level::level_enum level) {
  const bool root = w.rank == 0;
  // The job: rank 0 reads and expands the spec; every rank gets the same bytes.
  std::string bytes;
  if (root) bytes = EncodeMessage(ReadJob(args.spec_path));
  MpiGroupComm startup(MPI_COMM_WORLD, "the job", kSpecTimeout, nullptr);
  if (Status s = startup.Broadcast(bytes, kCommTimeout); !s.ok()) {
    AbortJob("waiting for the job spec from rank 0: " + s.ToString(), kExitAborted);
  }
  proto::JobStart start;
  if (Status s = DecodeMessage(bytes, &start, "the job from rank 0", kMaxJobMessageBytes); !s.ok()) {
    AbortJob(s.ToString(), kExitAborted);
  }
  if (start.has_error() || !start.has_job()) {
    if (root) spdlog::error("job spec: {}", start.error());
    return kExitError;
  }
  return ExecuteJob(start.job(), w, level, nullptr, nullptr);
}

}  // namespace

const std::atomic<bool>& StopFlag() { return g_stop; }

int ExecuteJob(const proto::ExpandedJob& job, const RankInfo& w, spdlog::level::level_enum level,
               JobObserver* observer, JobOutcome* outcome) {
  const bool root = w.rank == 0;
  // Rank 0 logs each reason the job cannot run and keeps the first for the outcome.
  auto refuse = [&](const std::string& why) {
    if (!root) return kExitError;
    spdlog::error("{}", why);
    if (outcome) outcome->error = why;
    return kExitError;
  };
  const proto::JobSpec& spec = job.spec();
  const int group_size = int(spec.runtime().group_size());
  const double stall = spec.runtime().stall_timeout_s();
  if (group_size < 1 || w.size % group_size != 0) {
    return refuse("runtime.group_size " + std::to_string(group_size) + " does not divide the " +
                  std::to_string(w.size) + " ranks of this job");
  }
  const int n_groups = w.size / group_size;
  const int group = w.rank / group_size;
  const bool leader = w.rank % group_size == 0;
  SetupLogging(w, group, level);
  MPI_Comm group_mpi = MPI_COMM_NULL, leaders_mpi = MPI_COMM_NULL;
  // Freed on every way out: `s0d serve` runs the next job in the same MPI lifetime.
  struct FreeComms {
    MPI_Comm* comms[2];
    ~FreeComms() {
      for (MPI_Comm* c : comms) {
        if (*c != MPI_COMM_NULL) MPI_Comm_free(c);
      }
    }
  } free_comms{{&group_mpi, &leaders_mpi}};
  // MPI_Comm_split blocks without a deadline: first make sure, within the stall timeout, that
  // every rank got here (between serve's jobs a rank may have stalled unnoticed).
  MpiGroupComm world(MPI_COMM_WORLD, "the job", stall, nullptr);
  std::array<int64_t, 1> here = {0};
  if (Status s = world.AllReduceMax(here); !s.ok()) AbortJob(s.ToString(), kExitAborted);
  if (int rc = MPI_Comm_split(MPI_COMM_WORLD, group, w.rank, &group_mpi); rc != MPI_SUCCESS) {
    AbortJob("MPI_Comm_split (groups): " + MpiErrorText(rc), kExitAborted);
  }
  if (int rc = MPI_Comm_split(MPI_COMM_WORLD, leader ? 0 : MPI_UNDEFINED, w.rank, &leaders_mpi);
      rc != MPI_SUCCESS) {
    AbortJob("MPI_Comm_split (leaders): " + MpiErrorText(rc), kExitAborted);
  }
  if (spec.runtime().has_threads_per_rank()) {
    SetNumThreads(int(spec.runtime().threads_per_rank()));
  } else if (std::getenv("S0_NUM_THREADS") == nullptr) {
    SetNumThreads(std::max(1, int(std::thread::hardware_concurrency()) / w.local_size));
  }
  if (root) {
    spdlog::info("job {}: {} runs on {} ranks: {} group{} of {}; output {}", spec.name(),
                 job.runs_size(), w.size, n_groups, n_groups > 1 ? "s" : "", group_size,
                 spec.out_dir());
    if (!spec.has_subsample() && spec.seeds_size() > 1) {
      spdlog::info("no subsample: every run trains on all examples from zero states, so runs that "
                   "differ only by seed give identical states");
    }
  }
  if (spec.method().engine() == "cuda") {
    spdlog::info("host {} (local rank {} of {}), pid {}, CUDA engine on GPU {}", w.host,
                 w.local_rank, w.local_size, getpid(), w.local_rank);
  } else {
    spdlog::info("host {} (local rank {} of {}), pid {}, CPU engine with {} threads", w.host,
                 w.local_rank, w.local_size, getpid(), NumThreads());
  }

  // 2. Every rank loads the model and data; all must succeed and agree.
  SetupOptions so;
  so.model_dir = spec.model();
  so.data_path = spec.data();
  so.max_length = spec.method().max_length();
  Result<std::unique_ptr<TrainingSetup>> setup = [&]() -> Result<std::unique_ptr<TrainingSetup>> {
    S0_ASSIGN_OR_RETURN(so.precision, ParsePrecision(spec.method().precision()));
    S0_ASSIGN_OR_RETURN(so.engine, ParseEngine(spec.method().engine()));
    so.cuda_device = w.local_rank;  // one GPU per rank on its node
    return TrainingSetup::Load(so);
  }();
  if (!setup.ok()) spdlog::error("cannot load the model or data: {}", setup.status().ToString());
  auto fp63 = [](uint64_t v) { return int64_t(v >> 1); };
  const int64_t model_fp = setup.ok() ? fp63((*setup)->model_fingerprint()) : 0;
  std::vector<size_t> all;
  if (setup.ok()) {
    all.resize((*setup)->examples().size());
    std::iota(all.begin(), all.end(), size_t(0));
  }
  const int64_t data_fp = setup.ok() ? fp63(DataFingerprint((*setup)->examples(), all)) : 0;
  std::array<int64_t, 5> agree = {setup.ok() ? 0 : w.rank + 1, model_fp, -model_fp, data_fp,
                                  -data_fp};
  if (Status s = world.AllReduceMax(agree); !s.ok()) AbortJob(s.ToString(), kExitAborted);
  if (agree[0] > 0) {
    return refuse(root && !setup.ok() ? "cannot load the model or data: " + setup.status().ToString()
                                      : "rank " + std::to_string(agree[0] - 1) +
                                            " could not load the model or data (its log says why)");
  }
  if (agree[1] != -agree[2] || agree[3] != -agree[4]) {
    return refuse(std::string("the ranks loaded different ") +
                  (agree[1] != -agree[2] ? "models" : "data") + " (the files differ between hosts?)");
  }
  const TrainingSetup& ts = **setup;
  if (root) {
    spdlog::info("model {}: {} DeltaNet layers, state {}x{}x{}, fingerprint {}; data {}: {} "
                 "examples", spec.model(), ts.delta_layers().size(), ts.state_shape()[0],
                 ts.state_shape()[1], ts.state_shape()[2], Hex64(ts.model_fingerprint()),
                 spec.data(), ts.examples().size());
  }

  // 3. Rank 0 prepares the output directory; every rank learns whether it could.
  std::vector<proto::RunResult> previous;
  std::vector<proto::RunSpec> pending;
  std::array<int64_t, 1> prepared = {0};
  std::string unprepared;
  if (root) {
    Status s = PrepareOnRankZero(job, ts, &previous, &pending);
    if (s.ok() && observer) observer->OnPrepared(&previous, &pending);
    if (!s.ok()) {
      unprepared = s.ToString();
      prepared[0] = 1;
    }
  }
  if (Status s = world.AllReduceMax(prepared); !s.ok()) AbortJob(s.ToString(), kExitAborted);
  if (prepared[0] != 0) return refuse(unprepared);

  // 4. Work: rank 0 coordinates between its own steps; every group runs until released.
  std::unique_ptr<MpiCoordinatorTransport> transport;
  std::unique_ptr<Coordinator> coordinator;
  std::function<void()> idle;
  if (root) {
    transport = std::make_unique<MpiCoordinatorTransport>(leaders_mpi, n_groups);
    CoordinatorOptions co;
    co.stall_timeout_s = stall;
    co.keepalive_s = stall / 4;
    co.group_size = group_size;
    coordinator = std::make_unique<Coordinator>(pending, n_groups, co, transport.get(),
                                                Coordinator::Clock::now());
    idle = [&coordinator, observer] {
      Status s;
      if (g_stop.load() && !coordinator->stopping()) {
        spdlog::info("stop signal: no further run is assigned; busy groups stop at their next "
                     "step boundary");
        s = coordinator->RequestStop();
      }
      if (s.ok()) s = coordinator->Pump(Coordinator::Clock::now());
      if (s.ok() && observer) s = observer->OnPump(*coordinator, Coordinator::Clock::now());
      if (!s.ok()) AbortJob("coordinator: " + s.ToString(), kExitAborted);
    };
  }
  std::unique_ptr<MpiLeaderLink> remote_link;
  CoordinatorLink* link = nullptr;
  if (root) {
    link = &transport->local();
  } else if (leader) {
    remote_link = std::make_unique<MpiLeaderLink>(leaders_mpi);
    link = remote_link.get();
  }
  MpiGroupComm group_comm(group_mpi, "group " + std::to_string(group), stall, idle);
#ifdef S0_HAVE_CUDA
  // GPU groups sum their gradients with NCCL; its unique id travels over the group's MPI comm.
  std::unique_ptr<NcclComm> nccl;
  if (so.engine == Engine::kCuda && group_size > 1) {
    Result<std::unique_ptr<NcclComm>> made =
        NcclComm::Create(group_comm, so.cuda_device, stall, idle);
    if (!made.ok()) AbortJob("group " + std::to_string(group) + ": " + made.status().ToString(), kExitAborted);
    nccl = std::move(*made);
    if (group_comm.rank() == 0) {
      spdlog::info("group {}: NCCL {} ranks ready for the gradient all-reduce", group, group_size);
    }
  }
#endif
  GroupContext ctx;
  ctx.spec = &spec;
  ctx.setup = &ts;
  ctx.comm = &group_comm;
#ifdef S0_HAVE_CUDA
  ctx.gpu_group = nccl.get();
#endif
  ctx.group = group;
  ctx.stall_timeout_s = stall;
  ctx.stop_signal = &g_stop;
  ctx.idle = idle;
  if (Status s = RunWorkerLoop(ctx, link); !s.ok()) AbortJob(s.ToString(), kExitAborted);

  // 5. Rank 0: every group released; the summary; the exit status.
  int64_t code = 0;
  if (root) {
    int polls = 0;
    while (!coordinator->finished()) {
      idle();
      if (++polls > 100) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (Status s = transport->Flush(stall); !s.ok()) AbortJob(s.ToString(), kExitAborted);
    std::vector<proto::RunResult> results = previous;
    results.insert(results.end(), coordinator->results().begin(), coordinator->results().end());
    const proto::JobSummary summary = BuildSummary(job, results);
    code = DecideExit(summary);
    if (Status s = WriteSummary(spec.out_dir(), summary); !s.ok()) {
      code = refuse("summary: " + s.ToString());
    }
    if (outcome) outcome->summary = summary;
    spdlog::info("job {}: {} done, {} failed, {} unfinished of {} runs; summary in {}/summary.txt{}",
                 spec.name(), summary.n_done(), summary.n_failed(), summary.n_unfinished(),
                 summary.n_runs(), spec.out_dir(),
                 code == kExitStopped ? "; stopped: rerun the spec to resume" : "");
  } else if (remote_link) {
    if (Status s = remote_link->Flush(stall); !s.ok()) AbortJob(s.ToString(), kExitAborted);
  }
  std::array<int64_t, 1> exit_code = {code};
  if (Status s = world.AllReduceMax(exit_code); !s.ok()) AbortJob(s.ToString(), kExitAborted);
  return int(exit_code[0]);
}

int RunJob(const RunJobArgs& args) {
  return WithMpi("s0d run " + args.spec_path, args.stop_signal, args.log_level,
                 [&args](const RankInfo& w, spdlog::level::level_enum level) {
                   return RunInWorld(args, w, level);
                 });
}

int WithMpi(const std::string& what, const std::string& stop_signal, const std::string& log_level,
            const std::function<int(const RankInfo&, spdlog::level::level_enum)>& body) {
  static const std::pair<const char*, spdlog::level::level_enum> kLevels[] = {
      {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug},
      {"info", spdlog::level::info},   {"warn", spdlog::level::warn},
      {"error", spdlog::level::err}};
  auto level = spdlog::level::off;
  for (const auto& [name, l] : kLevels) {
    if (log_level == name) level = l;
  }
  if (level == spdlog::level::off) {
    std::fprintf(stderr, "s0d: --log-level %s: expected trace, debug, info, warn or error\n",
                 log_level.c_str());
    return kExitUsage;
  }
  if (Status s = InstallStopHandlers(stop_signal); !s.ok()) {
    std::fprintf(stderr, "s0d: %s\n", s.ToString().c_str());
    return kExitUsage;
  }
  int provided = 0;
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
    std::fprintf(stderr, "s0d: MPI_Init_thread failed\n");
    return kExitError;
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  Result<RankInfo> w = DescribeWorld();
  if (!w.ok()) AbortJob(w.status().ToString(), kExitAborted);
  SetCheckRank(w->rank);
  SetupLogging(*w, -1, level);
  if (w->rank == 0) spdlog::info("{}: {} rank{}", what, w->size, w->size > 1 ? "s" : "");
  const int code = body(*w, level);
  spdlog::default_logger()->flush();
  MPI_Finalize();
  return code;
}

}  // namespace s0
