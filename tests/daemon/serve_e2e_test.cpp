// `s0d serve` end to end, as a user runs it: the daemon under mpirun, the real `s0` client over
// the real control socket, the tiny committed Qwen3.5 fixture:
//   - submit (twice: idempotent), watch (plain lines with step, loss and ETA), cancel one run
//     mid-training (it stops at a step boundary, committed, never finishes), results (per seed,
//     mean and standard deviation), shutdown (exit 0);
//   - kill -9 of the daemon mid-job, restart on the same --dir: the interrupted run resumes from
//     its checkpoint, the queued job runs, every run is trained to the end exactly once;
//   - SIGTERM to one rank: every run commits at a step boundary, exit 75; a restart resumes;
//   - garbage, truncated, oversized, wrong-version, unknown-command and multi-frame requests get
//     error replies and the daemon keeps serving;
//   - a second daemon on the same endpoint (or the same --dir) refuses to start;
//   - the client's errors when no daemon runs (no socket, a stale socket);
//   - CURVE on loopback: a listed client is served, an unlisted one gets nothing (and is told
//     access was denied), a client without CURVE gets nothing.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "checkpoints/run_file.h"
#include "daemon/client.h"
#include "proto/api.pb.h"
#include "tests/common/short_examples.h"
#include "tests/common/test_paths.h"

extern char** environ;

namespace s0 {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

const std::string kS0d = std::string(S0_BINARY_DIR) + "/daemon/s0d";
const std::string kS0 = std::string(S0_BINARY_DIR) + "/daemon/s0";
const std::string kFixture = test::kEmbeddedFixture;

size_t Count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// The environment of a spawned process (S0_ENDPOINT left out: every test names its endpoint).
// AddressSanitizer builds, for the daemon (`mpi`): Open MPI's allocations that live until exit are
// not ours (see tests/daemon/lsan_openmpi.supp and run_job_test.cpp); the full unwinder they need
// would slow the client down tenfold.
std::vector<std::string> ChildEnvironment(bool mpi) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string v = *e;
    const bool asan = v.rfind("ASAN_OPTIONS=", 0) == 0 || v.rfind("LSAN_OPTIONS=", 0) == 0;
    if (v.rfind("S0_ENDPOINT=", 0) != 0 && !(mpi && asan)) env.push_back(v);
  }
  if (!mpi) return env;
  const char* asan = std::getenv("ASAN_OPTIONS");
  env.push_back("ASAN_OPTIONS=" + (asan ? std::string(asan) + ":" : "") + "fast_unwind_on_malloc=0");
  env.push_back("LSAN_OPTIONS=suppressions=" + test::SourcePath("tests/daemon/lsan_openmpi.supp") +
                ":print_suppressions=0");
  return env;
}

// Starts argv in its own process group with stdout and stderr to `out_fd`.
pid_t SpawnTo(std::vector<std::string> argv, int out_fd, bool mpi) {
  std::vector<std::string> env = ChildEnvironment(mpi);
  std::vector<char*> cenv, cargs;
  for (auto& v : env) cenv.push_back(v.data());
  cenv.push_back(nullptr);
  for (auto& a : argv) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out_fd, STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&fa, out_fd, STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  pid_t pid = -1;
  if (posix_spawn(&pid, argv[0].c_str(), &fa, &attr, cargs.data(), cenv.data()) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  return pid;
}

struct Outcome {
  int status = -1;  // exit status, or 128 + signal
  std::string output;
};

int WaitStatus(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Runs `s0 args...` to the end (killed after `timeout_s`), collecting its output.
Outcome S0(std::vector<std::string> args, double timeout_s = 60) {
  args.insert(args.begin(), kS0);
  int p[2];
  if (pipe(p) != 0) return {};
  const pid_t pid = SpawnTo(args, p[1], false);
  close(p[1]);
  Outcome out;
  const auto start = Clock::now();
  char buf[4096];
  for (;;) {
    const double left = timeout_s - std::chrono::duration<double>(Clock::now() - start).count();
    if (left <= 0) {
      kill(-pid, SIGKILL);
      out.output += "\n[test] s0 did not finish in time; killed\n";
      break;
    }
    pollfd pfd{p[0], POLLIN, 0};
    if (poll(&pfd, 1, int(std::min(left, 1.0) * 1000)) <= 0) continue;
    const ssize_t n = read(p[0], buf, sizeof buf);
    if (n <= 0) break;
    out.output.append(buf, size_t(n));
  }
  close(p[0]);
  out.status = WaitStatus(pid);
  return out;
}

// A daemon under mpirun -np `np` (np 0: alone, an MPI singleton), its output in a log file.
class Daemon {
 public:
  Daemon(const std::string& log, int np, std::vector<std::string> args) : log_(log) {
    std::vector<std::string> argv;
    if (np > 0) {
      argv = {"/usr/bin/mpirun", "--oversubscribe", "--bind-to", "none", "-np", std::to_string(np)};
      if (geteuid() == 0) argv.insert(argv.begin() + 1, "--allow-run-as-root");
    }
    argv.push_back(kS0d);
    argv.push_back("serve");
    argv.insert(argv.end(), args.begin(), args.end());
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    pid_ = SpawnTo(argv, fd, true);
    close(fd);
  }
  ~Daemon() {
    if (pid_ > 0) {
      kill(-pid_, SIGKILL);
      WaitStatus(pid_);
    }
  }
  std::string log() const { return test::ReadFile(log_); }
  // Waits for `text` in the log (or the daemon's end); true when it appeared.
  bool WaitFor(const std::string& text, double timeout_s = 60) {
    const auto start = Clock::now();
    while (std::chrono::duration<double>(Clock::now() - start).count() < timeout_s) {
      if (log().find(text) != std::string::npos) return true;
      if (pid_ <= 0 || waitpid(pid_, nullptr, WNOHANG) != 0) return log().find(text) != std::string::npos;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  // Waits for the exit (killing it after `timeout_s`); its status.
  int Wait(double timeout_s = 60) {
    const auto start = Clock::now();
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::duration<double>(Clock::now() - start).count() > timeout_s) {
        kill(-pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        pid_ = -1;
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  // Sends `sig` to world rank `rank` (found by its "pid P" log line of the current job).
  bool Signal(int rank, int sig) {
    std::smatch m;
    const std::string text = log();
    const std::regex re("\\[rank " + std::to_string(rank) + "/\\d+ group \\d+\\] host .*, pid (\\d+)");
    return std::regex_search(text, m, re) && kill(pid_t(std::stol(m[1])), sig) == 0;
  }

 private:
  std::string log_;
  pid_t pid_ = -1;
};

// Four short examples keep a step short (tests/common/short_examples.h).
std::string MakeData(const std::string& dir) { return test::WriteShortExamples(dir, 2); }

// DIR/NAME.txtpb with out_dir NAME (relative: resolved against the spec's directory).
std::string WriteSpec(const std::string& dir, const std::string& name, const std::string& seeds,
                      int n_steps) {
  const std::string path = dir + "/" + name + ".txtpb";
  std::ofstream(path) << "version: 1\nname: \"" << name << "\"\nmodel: \""
                      << test::SourcePath(kFixture + "/model") << "\"\ndata: \"data.jsonl\"\n"
                      << "out_dir: \"" << name << "\"\nmethod { n_steps: " << n_steps
                      << " lr: 0.01 }\nseeds: " << seeds << "\nsubsample: 3\n"
                      << "runtime { threads_per_rank: 1 stall_timeout_s: 60 }\n";
  return path;
}

// The step of `run` in `s0 status` output, -1 when not training.
int64_t TrainingStep(const std::string& status, const std::string& run) {
  std::smatch m;
  const std::regex re("  " + run + " +train +step (\\d+)/");
  return std::regex_search(status, m, re) ? std::stoll(m[1]) : -1;
}

// Polls the daemon's status of `job` until `run` is training at `step` or later (90 s at most).
bool WaitForStep(const std::string& endpoint, const std::string& job, const std::string& run,
                 int64_t step) {
  ClientOptions o;
  o.endpoint = endpoint;
  Client client(o);
  const auto start = Clock::now();
  while (std::chrono::duration<double>(Clock::now() - start).count() < 90) {
    proto::Request r;
    r.mutable_status()->set_job_id(job);
    Result<proto::Reply> reply = client.Call(r);
    if (reply.ok()) {
      for (const proto::RunProgress& p : reply->status().runs()) {
        if (p.run_id() == run && p.stage() == "train" && p.step() >= step) return true;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

struct Place {
  std::string dir, data, endpoint;
  std::string runtime;  // short directory under /tmp that holds the socket
  std::vector<std::string> client;  // --endpoint E
};

Place MakeSetup(const std::string& name) {
  Place s;
  s.dir = test::TempDir(name);
  s.data = MakeData(s.dir);
  // Socket paths are limited to 107 characters: the build tree's may be longer.
  s.runtime = "/tmp/s0d-test-" + std::to_string(getpid()) + "-" + name;
  fs::remove_all(s.runtime);
  s.endpoint = "ipc://" + s.runtime + "/control.sock";
  s.client = {"--endpoint", s.endpoint};
  return s;
}

std::vector<std::string> With(std::vector<std::string> args, const std::vector<std::string>& more) {
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

TEST(ServeEndToEnd, SubmitWatchCancelResultsShutdown) {
  const Place s = MakeSetup("serve_e2e_main");
  Daemon d(s.dir + "/daemon.log", 2,
           {"--dir", s.dir + "/queue", "--endpoint", s.endpoint, "--log-level", "debug"});
  ASSERT_TRUE(d.WaitFor("control socket " + s.endpoint + " ready")) << d.log();
  // Enough steps that the cancel below (two client processes after seed-2 reaches step 2) lands
  // mid-run also on a loaded machine: 20 steps took under a second and were once too few.
  const int kSteps = 100;
  const std::string steps = std::to_string(kSteps);
  const std::string spec = WriteSpec(s.dir, "sweep", "[1, 2, 3]", kSteps);

  Outcome sub = S0(With({"submit", spec, "--job-id", "sweep-1"}, s.client));
  ASSERT_EQ(sub.status, 0) << sub.output;
  EXPECT_NE(sub.output.find("job sweep-1 (sweep): "), std::string::npos) << sub.output;
  // A retried submit is harmless; another spec under the same id is refused.
  Outcome again = S0(With({"submit", spec, "--job-id", "sweep-1"}, s.client));
  EXPECT_EQ(again.status, 0) << again.output;
  EXPECT_NE(again.output.find("already submitted"), std::string::npos) << again.output;
  const std::string other = WriteSpec(s.dir, "other", "[1]", 2);
  Outcome clash = S0(With({"submit", other, "--job-id", "sweep-1"}, s.client));
  EXPECT_EQ(clash.status, 1) << clash.output;
  EXPECT_NE(clash.output.find("is taken by another job"), std::string::npos) << clash.output;

  // Watch from the start, in the background, as a pipe sees it (plain lines).
  Outcome watched;
  std::thread watcher([&] { watched = S0(With({"watch", "sweep-1"}, s.client), 120); });
  // Progress reaches rank 0 between its own examples: poll (in process, cheaply) until the
  // daemon reports seed-2 at step 2, then look and cancel with the real client.
  const bool training = WaitForStep(s.endpoint, "sweep-1", "seed-2", 2);
  Outcome status = S0(With({"status", "sweep-1"}, s.client));
  Outcome cancel = S0(With({"cancel", "sweep-1", "--run", "seed-2"}, s.client));
  watcher.join();
  ASSERT_TRUE(training) << d.log();
  EXPECT_EQ(status.status, 0) << status.output;
  EXPECT_GE(TrainingStep(status.output, "seed-2"), 2) << status.output;
  EXPECT_EQ(cancel.status, 0) << cancel.output;
  EXPECT_NE(cancel.output.find("cancelled seed-2"), std::string::npos) << cancel.output;

  EXPECT_EQ(watched.status, 0) << watched.output;
  EXPECT_NE(watched.output.find("job sweep-1 (sweep): done, 2/3 done, 1 cancelled"), std::string::npos)
      << watched.output;
  const std::regex progress("  seed-1 +train +step \\d+/" + steps +
                            "  loss \\d+\\.\\d{6}  ETA (\\d+s|-)");
  EXPECT_TRUE(std::regex_search(watched.output, progress)) << watched.output;
  const std::regex seed3_done("  seed-3 +done +step " + steps + "/" + steps);
  EXPECT_TRUE(std::regex_search(watched.output, seed3_done)) << watched.output;
  EXPECT_NE(d.log().find("run seed-2: stopping before step"), std::string::npos) << d.log();
  EXPECT_NE(d.log().find("(cancelled)"), std::string::npos) << d.log();

  // The cancelled run stopped at a committed step boundary and never finished.
  EXPECT_FALSE(fs::exists(s.dir + "/sweep/runs/seed-2/done"));
  auto committed = LoadLatestGood(s.dir + "/sweep/runs/seed-2/run.h5");
  ASSERT_TRUE(committed.ok()) << committed.status().ToString();
  EXPECT_GE(committed->contents.committed_step, 2);
  EXPECT_LT(committed->contents.committed_step, kSteps);

  Outcome results = S0(With({"results", "sweep-1"}, s.client));
  ASSERT_EQ(results.status, 0) << results.output;
  EXPECT_NE(results.output.find("2 done, 0 failed, 0 unfinished, 1 cancelled"), std::string::npos)
      << results.output;
  EXPECT_TRUE(std::regex_search(results.output, std::regex("seed-2 +2  cancelled"))) << results.output;
  EXPECT_NE(results.output.find("default (2 seeds): final_loss "), std::string::npos) << results.output;
  // The table's statistics are the summary's, over seeds 1 and 3.
  nlohmann::json summary = nlohmann::json::parse(test::ReadFile(s.dir + "/sweep/summary.json"));
  const double l1 = summary["runs"][0]["final_loss"], l3 = summary["runs"][2]["final_loss"];
  EXPECT_NEAR(summary["configs"][0]["final_loss"]["mean"].get<double>(), (l1 + l3) / 2, 1e-12);
  EXPECT_NEAR(summary["configs"][0]["final_loss"]["std"].get<double>(), std::fabs(l1 - l3) / std::sqrt(2.0), 1e-12);

  Outcome list = S0(With({"list"}, s.client));
  EXPECT_EQ(list.status, 0);
  EXPECT_NE(list.output.find("job sweep-1 (sweep): done"), std::string::npos) << list.output;
  Outcome down = S0(With({"shutdown"}, s.client));
  EXPECT_EQ(down.status, 0) << down.output;
  EXPECT_EQ(d.Wait(), 0) << d.log();
  // Gone: the client says so.
  Outcome none = S0(With({"list", "--timeout", "0.5"}, s.client));
  EXPECT_EQ(none.status, 69) << none.output;
  EXPECT_NE(none.output.find("no daemon at " + s.endpoint), std::string::npos) << none.output;
}

TEST(ServeEndToEnd, KilledDaemonRestartsAndFinishesEverythingOnce) {
  const Place s = MakeSetup("serve_e2e_kill9");
  const std::vector<std::string> args = {"--dir", s.dir + "/queue", "--endpoint", s.endpoint,
                                         "--log-level", "debug"};
  const std::string first = WriteSpec(s.dir, "first", "[1, 2, 3]", 8);
  const std::string second = WriteSpec(s.dir, "second", "[4]", 3);
  {
    Daemon d(s.dir + "/daemon1.log", 1, args);
    ASSERT_TRUE(d.WaitFor("ready")) << d.log();
    ASSERT_EQ(S0(With({"submit", first, "--job-id", "first"}, s.client)).status, 0);
    ASSERT_EQ(S0(With({"submit", second, "--job-id", "second"}, s.client)).status, 0);
    ASSERT_TRUE(d.WaitFor("run seed-2: step 3/8")) << d.log();
    ASSERT_TRUE(d.Signal(0, SIGKILL)) << d.log();  // the daemon process; mpirun then ends
    d.Wait();
  }
  const std::string before = test::ReadFile(s.dir + "/daemon1.log");
  EXPECT_NE(before.find("run seed-1: done"), std::string::npos) << before;
  EXPECT_EQ(before.find("run seed-2: done"), std::string::npos) << before;
  // The killed daemon's socket file is left behind.
  Outcome stale = S0(With({"list", "--timeout", "0.5"}, s.client));
  EXPECT_EQ(stale.status, 69) << stale.output;
  EXPECT_NE(stale.output.find("left from a daemon that is gone"), std::string::npos) << stale.output;

  Daemon d(s.dir + "/daemon2.log", 1, args);
  ASSERT_TRUE(d.WaitFor("ready")) << d.log();
  Outcome w1 = S0(With({"watch", "first"}, s.client), 120);
  EXPECT_EQ(w1.status, 0) << w1.output;
  Outcome w2 = S0(With({"watch", "second"}, s.client), 120);
  EXPECT_EQ(w2.status, 0) << w2.output;
  EXPECT_NE(w2.output.find("job second (second): done, 1/1 done"), std::string::npos) << w2.output;
  ASSERT_EQ(S0(With({"shutdown"}, s.client)).status, 0);
  EXPECT_EQ(d.Wait(), 0) << d.log();

  const std::string after = test::ReadFile(s.dir + "/daemon2.log");
  EXPECT_NE(after.find("run seed-1: already done"), std::string::npos) << after;
  EXPECT_EQ(after.find("run seed-1: start"), std::string::npos) << after;
  EXPECT_NE(after.find("run seed-2: resuming after step"), std::string::npos) << after;
  // Every step of every run was taken once: before the kill or after, never both (the step the
  // kill interrupted may be taken again: it was not committed).
  for (const std::string id : {"seed-1", "seed-2", "seed-3", "seed-4"}) {
    SCOPED_TRACE(id);
    EXPECT_EQ(Count(before + after, "run " + id + ": done"), 1u);
  }
  for (const std::string job : {"first", "second"}) {
    nlohmann::json summary = nlohmann::json::parse(test::ReadFile(s.dir + "/" + job + "/summary.json"));
    EXPECT_EQ(summary["n_done"], summary["n_runs"]) << job;
  }
  auto run2 = LoadRunFile(s.dir + "/first/runs/seed-2/run.h5");
  ASSERT_TRUE(run2.ok()) << run2.status().ToString();
  EXPECT_EQ(run2->metrics.size(), 8u) << "one metrics row per step: no step recorded twice";
}

TEST(ServeEndToEnd, StopSignalOnAnyRankCommitsExits75AndARestartResumes) {
  const Place s = MakeSetup("serve_e2e_sigterm");
  const std::vector<std::string> args = {"--dir", s.dir + "/queue", "--endpoint", s.endpoint,
                                         "--log-level", "debug"};
  const std::string spec = WriteSpec(s.dir, "job", "[1, 2]", 20);
  {
    Daemon d(s.dir + "/daemon1.log", 2, args);
    ASSERT_TRUE(d.WaitFor("ready")) << d.log();
    ASSERT_EQ(S0(With({"submit", spec, "--job-id", "job"}, s.client)).status, 0);
    ASSERT_TRUE(d.WaitFor("run seed-2: step 2/20")) << d.log();
    // Rank 1 only: rank 0 learns of the stop from the interrupted run.
    ASSERT_TRUE(d.Signal(1, SIGTERM)) << d.log();
    EXPECT_EQ(d.Wait(), 75) << d.log();
    EXPECT_NE(d.log().find("stopped by a signal; a restart resumes the queue"), std::string::npos) << d.log();
  }
  EXPECT_FALSE(fs::exists(s.dir + "/job/runs/seed-2/done"));
  Daemon d(s.dir + "/daemon2.log", 2, args);
  ASSERT_TRUE(d.WaitFor("ready")) << d.log();
  Outcome w = S0(With({"watch", "job"}, s.client), 120);
  EXPECT_EQ(w.status, 0) << w.output;
  EXPECT_NE(w.output.find("job job (job): done, 2/2 done"), std::string::npos) << w.output;
  ASSERT_EQ(S0(With({"shutdown"}, s.client)).status, 0);
  EXPECT_EQ(d.Wait(), 0) << d.log();
  EXPECT_NE(d.log().find("run seed-2: resuming after step"), std::string::npos) << d.log();
  for (const std::string id : {"seed-1", "seed-2"}) {
    auto run = LoadRunFile(s.dir + "/job/runs/" + id + "/run.h5");
    ASSERT_TRUE(run.ok()) << run.status().ToString();
    EXPECT_EQ(run->metrics.size(), 20u) << id;
  }
}

// Sends raw frames from a DEALER and returns the reply (or an error naming the missing reply).
proto::Reply RawRequest(zmq::context_t& ctx, const std::string& endpoint,
                        const std::vector<std::string>& frames) {
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  s.connect(endpoint);
  for (size_t i = 0; i < frames.size(); ++i) {
    s.send(zmq::buffer(frames[i]), i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  }
  std::vector<zmq::pollitem_t> items = {{s.handle(), 0, ZMQ_POLLIN, 0}};
  zmq::poll(items, std::chrono::milliseconds(5000));
  proto::Reply reply;
  if (!(items[0].revents & ZMQ_POLLIN)) {
    reply.mutable_error()->set_message("[test] no reply");
    return reply;
  }
  zmq::message_t m;
  (void)s.recv(m);
  EXPECT_FALSE(m.more()) << "a reply is one frame";
  EXPECT_TRUE(reply.ParseFromArray(m.data(), int(m.size())));
  return reply;
}

TEST(ServeEndToEnd, BadRequestsGetErrorRepliesAndTheDaemonKeepsServing) {
  const Place s = MakeSetup("serve_e2e_bad");
  Daemon d(s.dir + "/daemon.log", 1, {"--dir", s.dir + "/queue", "--endpoint", s.endpoint});
  ASSERT_TRUE(d.WaitFor("ready")) << d.log();
  proto::Request ok;
  ok.set_version(1);
  ok.set_request_id(41);
  ok.mutable_list();
  const std::string good = ok.SerializeAsString();
  proto::Request v2 = ok;
  v2.set_version(2);
  // An unknown command: field 99 of Request (a newer client's), as bytes.
  const std::string unknown = std::string("\x08\x01\x10\x2a\x9a\x06\x00", 7);
  proto::Request no_command;
  no_command.set_version(1);
  no_command.set_request_id(43);
  proto::Request bad_job = ok;
  bad_job.mutable_status()->set_job_id("../etc");
  struct Case {
    std::string name;
    std::vector<std::string> frames;
    uint64_t request_id;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"garbage", {"\xff\xfe garbage \x01\x02"}, 0, "not a valid s0.proto.Request"},
      {"truncated", {good.substr(0, good.size() - 1)}, 0, "truncated or garbled"},
      {"oversized", {std::string((size_t(1) << 20) + 1, '\0')}, 0, "over the limit of 1048576"},
      {"wrong version", {v2.SerializeAsString()}, 41, "version 2, but this s0d reads version 1"},
      {"unknown command", {unknown}, 42, "a command this daemon does not know"},
      {"no command", {no_command.SerializeAsString()}, 43, "a command this daemon does not know"},
      {"two frames", {good, good}, 0, "expected one frame"},
      {"empty", {""}, 0, "no version"},
      {"unknown job", {bad_job.SerializeAsString()}, 41, "no job '../etc'"},
  };
  zmq::context_t ctx;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    proto::Reply r = RawRequest(ctx, s.endpoint, c.frames);
    ASSERT_TRUE(r.has_error());
    EXPECT_EQ(r.version(), 1u);
    EXPECT_EQ(r.request_id(), c.request_id);
    EXPECT_NE(r.error().message().find(c.message), std::string::npos) << r.error().message();
    // Still serving, the same socket address.
    proto::Reply fine = RawRequest(ctx, s.endpoint, {good});
    EXPECT_FALSE(fine.has_error()) << fine.error().message();
    EXPECT_EQ(fine.request_id(), 41u);
    EXPECT_TRUE(fine.has_list());
  }
  ASSERT_EQ(S0(With({"shutdown"}, s.client)).status, 0);
  EXPECT_EQ(d.Wait(), 0) << d.log();
}

TEST(ServeEndToEnd, ASecondDaemonOnTheSameEndpointOrDirectoryRefusesToStart) {
  const Place s = MakeSetup("serve_e2e_second");
  Daemon d(s.dir + "/daemon.log", 1, {"--dir", s.dir + "/queue", "--endpoint", s.endpoint});
  ASSERT_TRUE(d.WaitFor("ready")) << d.log();
  {
    Daemon other(s.dir + "/other.log", 0, {"--dir", s.dir + "/queue2", "--endpoint", s.endpoint});
    EXPECT_EQ(other.Wait(), 1) << other.log();
    EXPECT_NE(other.log().find("another daemon serves " + s.endpoint), std::string::npos) << other.log();
  }
  {
    const std::string elsewhere = s.endpoint + "2";
    Daemon other(s.dir + "/other2.log", 0, {"--dir", s.dir + "/queue", "--endpoint", elsewhere});
    EXPECT_EQ(other.Wait(), 1) << other.log();
    EXPECT_NE(other.log().find("another daemon serves " + s.dir + "/queue"), std::string::npos)
        << other.log();
  }
  // The first one still owns its socket.
  Outcome list = S0(With({"list"}, s.client));
  EXPECT_EQ(list.status, 0) << list.output;
  EXPECT_NE(list.output.find("no jobs"), std::string::npos) << list.output;
  ASSERT_EQ(S0(With({"shutdown"}, s.client)).status, 0);
  EXPECT_EQ(d.Wait(), 0) << d.log();
}

int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    close(fd);
    return -1;
  }
  close(fd);
  return ntohs(a.sin_port);
}

TEST(ServeEndToEnd, CurveAdmitsOnlyListedClientKeys) {
  const Place s = MakeSetup("serve_e2e_curve");
  for (const std::string who : {"server", "listed", "unlisted"}) {
    ASSERT_EQ(S0({"keygen", s.dir + "/" + who}).status, 0) << who;
  }
  std::ofstream(s.dir + "/clients") << "# admitted clients\n" << test::ReadFile(s.dir + "/listed.public");
  const int port = FreeLoopbackPort();
  ASSERT_GT(port, 0);
  const std::string endpoint = "tcp://127.0.0.1:" + std::to_string(port);
  Daemon d(s.dir + "/daemon.log", 1,
           {"--dir", s.dir + "/queue", "--endpoint", endpoint, "--require-curve", "--curve-secret",
            s.dir + "/server.secret", "--curve-clients", s.dir + "/clients"});
  ASSERT_TRUE(d.WaitFor("control socket " + endpoint + " ready (CURVE)")) << d.log();
  const std::vector<std::string> base = {"--endpoint", endpoint, "--timeout", "1", "--retries", "2",
                                         "--curve-server-key", s.dir + "/server.public"};

  Outcome listed = S0(With(With({"list"}, base), {"--curve-secret", s.dir + "/listed.secret"}));
  EXPECT_EQ(listed.status, 0) << listed.output;
  EXPECT_NE(listed.output.find("no jobs"), std::string::npos) << listed.output;

  Outcome unlisted = S0(With(With({"list"}, base), {"--curve-secret", s.dir + "/unlisted.secret"}));
  EXPECT_EQ(unlisted.status, 69) << unlisted.output;
  EXPECT_NE(unlisted.output.find("access denied"), std::string::npos) << unlisted.output;
  EXPECT_EQ(unlisted.output.find("no jobs"), std::string::npos) << unlisted.output;
  EXPECT_NE(d.log().find("is not listed"), std::string::npos) << d.log();

  Outcome plain = S0({"list", "--endpoint", endpoint, "--timeout", "1", "--retries", "1"});
  EXPECT_EQ(plain.status, 69) << plain.output;
  EXPECT_EQ(plain.output.find("no jobs"), std::string::npos) << plain.output;

  // Not a single reply frame reaches an unlisted client, whatever it sends.
  zmq::context_t ctx;
  zmq::socket_t raw(ctx, zmq::socket_type::dealer);
  char pub[41], sec[41];
  ASSERT_EQ(zmq_curve_keypair(pub, sec), 0);
  raw.set(zmq::sockopt::linger, 0);
  raw.set(zmq::sockopt::curve_serverkey, test::ReadFile(s.dir + "/server.public").substr(0, 40));
  raw.set(zmq::sockopt::curve_publickey, std::string(pub));
  raw.set(zmq::sockopt::curve_secretkey, std::string(sec));
  raw.connect(endpoint);
  proto::Request ok;
  ok.set_version(1);
  ok.set_request_id(7);
  ok.mutable_shutdown();
  raw.send(zmq::buffer(ok.SerializeAsString()), zmq::send_flags::dontwait);
  std::vector<zmq::pollitem_t> items = {{raw.handle(), 0, ZMQ_POLLIN, 0}};
  zmq::poll(items, std::chrono::milliseconds(1500));
  EXPECT_FALSE(items[0].revents & ZMQ_POLLIN);

  Outcome down = S0(With(With({"shutdown"}, base), {"--curve-secret", s.dir + "/listed.secret"}));
  EXPECT_EQ(down.status, 0) << down.output;
  EXPECT_EQ(d.Wait(), 0) << "the unlisted client's shutdown must not have reached it: " << d.log();
}

TEST(ServeEndToEnd, RefusesUnsafeEndpoints) {
  const Place s = MakeSetup("serve_e2e_unsafe");
  // Under the short runtime path: the build tree's path may pass the 107-character socket limit,
  // which would be refused for that reason instead.
  const std::string open_dir = s.runtime + "/open";
  fs::create_directories(open_dir);
  fs::permissions(open_dir, fs::perms(0755));
  struct Case {
    std::string endpoint, message;
  };
  // None of these binds anything: they are refused before.
  // A symbolic link in place of the socket's directory (as another user could plant one).
  const std::string real_dir = s.runtime + "/real", link_dir = s.runtime + "/link";
  fs::create_directories(real_dir);
  fs::permissions(real_dir, fs::perms(0700));
  fs::create_directory_symlink(real_dir, link_dir);
  const std::vector<Case> cases = {
      {"tcp://192.0.2.1:5555", "can be reached from other machines: serve it only with CURVE"},
      // Not a literal loopback address: a name, or libzmq's source;destination form.
      {"tcp://127.example.org:5555", "can be reached from other machines"},
      {"tcp://127.0.0.1:1;0.0.0.0:5555", "can be reached from other machines"},
      {"ipc://" + link_dir + "/control.sock", "is a symbolic link"},
      {"ipc://@s0d-test", "abstract ipc names have no permissions"},
      {"ipc://" + open_dir + "/control.sock", "must be owned by this user with mode 0700"},
      {"inproc://x", "must be ipc://PATH or tcp://HOST:PORT"},
  };
  int n = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.endpoint);
    Daemon d(s.dir + "/daemon" + std::to_string(++n) + ".log", 0,
             {"--dir", s.dir + "/queue", "--endpoint", c.endpoint});
    EXPECT_EQ(d.Wait(), 1) << d.log();
    EXPECT_NE(d.log().find(c.message), std::string::npos) << d.log();
  }

  // The client checks the directory too: a daemon's socket reached through the link is refused.
  const std::string real = "ipc://" + real_dir + "/control.sock";
  Daemon d(s.dir + "/daemon-real.log", 0, {"--dir", s.dir + "/queue", "--endpoint", real});
  ASSERT_TRUE(d.WaitFor("control socket " + real + " ready")) << d.log();
  Outcome via_link = S0({"list", "--endpoint", "ipc://" + link_dir + "/control.sock"});
  EXPECT_EQ(via_link.status, 69) << via_link.output;
  EXPECT_NE(via_link.output.find("not connecting to"), std::string::npos) << via_link.output;
  EXPECT_NE(via_link.output.find("is a symbolic link"), std::string::npos) << via_link.output;
  EXPECT_EQ(S0({"shutdown", "--endpoint", real}).status, 0);
  EXPECT_EQ(d.Wait(), 0) << d.log();
}

}  // namespace
}  // namespace s0
