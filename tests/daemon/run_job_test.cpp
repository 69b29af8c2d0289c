// `s0d run` under mpirun, as a user runs it, on the tiny committed Qwen3.5 fixture:
//   - three seeds on three groups of one, and on one group of three: every run executed exactly
//     once, the final states of a seed agree across group sizes (1e-6 relative), and the
//     summary's means and standard deviations match values recomputed from the run files;
//   - SIGTERM to one rank mid-run stops the whole job (exit 75) with everything committed; a
//     rerun resumes every run and ends byte-identical to an uninterrupted job; a third run skips;
//   - kill -9 of a worker rank ends the job within a bounded time; the committed run file loads;
//     a rerun resumes;
//   - a stalled rank (SIGSTOP) ends the job with a clear error within the stall timeout;
//   - bad specs and setups give clear errors on every rank, never a hang.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "checkpoints/run_file.h"
#include "checkpoints/safetensors.h"
#include "tests/common/short_examples.h"
#include "tests/common/test_paths.h"

extern char** environ;

namespace s0 {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

const std::string kS0d = std::string(S0_BINARY_DIR) + "/daemon/s0d";
const std::string kFixture = test::kEmbeddedFixture;

// Eight short examples (tests/common/short_examples.h).
std::string MakeData(const std::string& dir) { return test::WriteShortExamples(dir, 4); }

struct SpecOptions {
  std::string seeds = "[1, 2, 3]";
  int group_size = 1;
  int n_steps = 6;
  double stall_timeout_s = 60;
  std::string method_extra;  // more fields of `method`
  std::string extra;         // more top-level text-format fields
};

// Writes DIR/NAME.txtpb (out_dir DIR/NAME) and returns its path.
std::string WriteSpec(const std::string& dir, const std::string& name, const std::string& data,
                      const SpecOptions& o) {
  const std::string path = dir + "/" + name + ".txtpb";
  std::ofstream(path) << "version: 1\nname: \"" << name << "\"\nmodel: \""
                      << test::SourcePath(kFixture + "/model") << "\"\ndata: \"" << data
                      << "\"\nout_dir: \"" << name << "\"\nmethod { n_steps: " << o.n_steps
                      << " lr: 0.01 " << o.method_extra << " }\nseeds: " << o.seeds << "\nsubsample: 3\nruntime { group_size: "
                      << o.group_size << " stall_timeout_s: " << o.stall_timeout_s
                      << " threads_per_rank: 1 }\n"
                      << o.extra << "\n";
  return path;
}

struct Outcome {
  int status = -1;  // exit status, or 128 + signal
  std::string output;
  double seconds = 0;  // from start, or from Watch::Mark() when called
};

// Lets a test act on the job's output as it arrives (signal a rank, note the time).
struct Watch {
  std::function<void(const std::string& output, Watch& w)> on_output;
  pid_t child = -1;  // the spawned process (mpirun, or the launch wrapper)
  Clock::time_point marked{};
  void Mark() { marked = Clock::now(); }
};

// The pid of world rank `rank`, from its "[rank R/N ...] host ..., pid P" line.
pid_t RankPid(const std::string& output, int rank) {
  std::smatch m;
  const std::regex re("\\[rank " + std::to_string(rank) + "/\\d+ group \\d+\\] host .*, pid (\\d+)");
  return std::regex_search(output, m, re) ? pid_t(std::stol(m[1])) : -1;
}

// Runs argv from `cwd` in its own process group (killed whole on a timeout); output (stdout and
// stderr) is collected as it arrives.
Outcome Spawn(std::vector<std::string> argv, const std::string& cwd, Watch watch, double timeout_s) {
  // AddressSanitizer builds: Open MPI's allocations that live until exit are not ours. They are
  // made in plugins Open MPI unloads before exit, so LeakSanitizer needs the full (slow) unwinder
  // to see the Open MPI library frames that the suppressions name.
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string v = *e;
    if (v.rfind("ASAN_OPTIONS=", 0) != 0 && v.rfind("LSAN_OPTIONS=", 0) != 0) env.push_back(v);
  }
  const char* asan = std::getenv("ASAN_OPTIONS");
  env.push_back("ASAN_OPTIONS=" + (asan ? std::string(asan) + ":" : "") + "fast_unwind_on_malloc=0");
  env.push_back("LSAN_OPTIONS=suppressions=" + test::SourcePath("tests/daemon/lsan_openmpi.supp") +
                ":print_suppressions=0");
  std::vector<char*> cenv;
  for (auto& v : env) cenv.push_back(v.data());
  cenv.push_back(nullptr);
  int pipe_fd[2];
  if (pipe(pipe_fd) != 0) return {};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pipe_fd[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&fa, pipe_fd[1], STDERR_FILENO);
  posix_spawn_file_actions_addclose(&fa, pipe_fd[0]);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  std::vector<char*> cargs;
  for (auto& a : argv) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  const fs::path here = fs::current_path();
  fs::current_path(cwd);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0].c_str(), &fa, &attr, cargs.data(), cenv.data());
  fs::current_path(here);
  watch.child = pid;
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  close(pipe_fd[1]);
  Outcome out;
  if (rc != 0) {
    close(pipe_fd[0]);
    out.output = "posix_spawn failed";
    return out;
  }
  const auto start = Clock::now();
  char buf[4096];
  for (;;) {
    pollfd p{pipe_fd[0], POLLIN, 0};
    const double left = timeout_s - std::chrono::duration<double>(Clock::now() - start).count();
    if (left <= 0) {
      kill(-pid, SIGKILL);
      out.output += "\n[test] mpirun did not finish within the test's timeout; killed\n";
      break;
    }
    if (poll(&p, 1, int(std::min(left, 1.0) * 1000)) <= 0) continue;
    const ssize_t n = read(pipe_fd[0], buf, sizeof buf);
    if (n <= 0) break;
    out.output.append(buf, size_t(n));
    if (watch.on_output) watch.on_output(out.output, watch);
  }
  close(pipe_fd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  const auto from = watch.marked == Clock::time_point{} ? start : watch.marked;
  out.seconds = std::chrono::duration<double>(Clock::now() - from).count();
  out.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return out;
}

// mpirun -np NP s0d run SPEC ARGS..., from the spec's directory as a user would start it.
Outcome MpiRun(int np, const std::string& spec, std::vector<std::string> args = {},
               Watch watch = {}, double timeout_s = 180) {
  std::vector<std::string> argv = {"/usr/bin/mpirun", "--oversubscribe", "--bind-to", "none",
                                   "-np", std::to_string(np)};
  if (geteuid() == 0) argv.insert(argv.begin() + 1, "--allow-run-as-root");
  argv.insert(argv.end(), {kS0d, "run", spec});
  argv.insert(argv.end(), args.begin(), args.end());
  return Spawn(argv, fs::path(spec).parent_path().string(), std::move(watch), timeout_s);
}

// True once `pid` no longer runs (gone, or a zombie nobody has reaped yet), within 5 s.
bool ProcessEnded(pid_t pid) {
  for (int i = 0; i < 50; ++i) {
    if (kill(pid, 0) != 0 && errno == ESRCH) return true;
    const std::string stat = test::ReadFile("/proc/" + std::to_string(pid) + "/stat");
    const size_t paren = stat.rfind(')');
    if (paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z') return true;
    usleep(100000);
  }
  return false;
}

size_t Count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

std::map<std::string, std::vector<double>> States(const std::string& run_dir) {
  auto f = SafetensorsFile::Open(run_dir + "/states.safetensors");
  EXPECT_TRUE(f.ok()) << run_dir << ": " << f.status().ToString();
  std::map<std::string, std::vector<double>> out;
  if (!f.ok()) return out;
  for (const std::string& name : f->Names()) out[name] = *ToFloat64(*f->Get(name));
  return out;
}

double RelDiff(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += a[i] * a[i];
  }
  return std::sqrt(num / den);
}

void ExpectStat(const nlohmann::json& stat, const std::vector<double>& xs, const std::string& what) {
  double mean = 0;
  for (double x : xs) mean += x;
  mean /= double(xs.size());
  double sq = 0;
  for (double x : xs) sq += (x - mean) * (x - mean);
  const double sd = std::sqrt(sq / double(xs.size() - 1));
  EXPECT_EQ(stat["n"].get<int>(), int(xs.size())) << what;
  EXPECT_NEAR(stat["mean"].get<double>(), mean, 1e-12 * std::fabs(mean) + 1e-15) << what;
  EXPECT_NEAR(stat["std"].get<double>(), sd, 1e-9 * sd + 1e-15) << what;
}

TEST(RunJob, SeedsOnGroupsOfOneAndOnOneGroupOfThreeAgree) {
  const std::string dir = test::TempDir("run_job_groups");
  const std::string data = MakeData(dir);
  SpecOptions ones;
  Outcome a = MpiRun(3, WriteSpec(dir, "ones", data, ones));
  ASSERT_EQ(a.status, 0) << a.output;
  SpecOptions three = ones;
  three.group_size = 3;
  Outcome b = MpiRun(3, WriteSpec(dir, "three", data, three));
  ASSERT_EQ(b.status, 0) << b.output;

  nlohmann::json summary = nlohmann::json::parse(test::ReadFile(dir + "/ones/summary.json"));
  std::vector<double> losses, walls;
  std::map<int, std::vector<double>> norms;  // layer -> per seed
  std::set<int> groups;
  for (const std::string id : {"seed-1", "seed-2", "seed-3"}) {
    SCOPED_TRACE(id);
    for (const Outcome* o : {&a, &b}) {
      EXPECT_EQ(Count(o->output, "run " + id + ": start"), 1u) << o->output;
      EXPECT_EQ(Count(o->output, "run " + id + ": done"), 1u) << o->output;
    }
    nlohmann::json done_one = nlohmann::json::parse(test::ReadFile(dir + "/ones/runs/" + id + "/done"));
    nlohmann::json done_three = nlohmann::json::parse(test::ReadFile(dir + "/three/runs/" + id + "/done"));
    EXPECT_EQ(done_one["group_size"], 1);
    EXPECT_EQ(done_three["group_size"], 3);
    groups.insert(done_one["group"].get<int>());
    auto s1 = States(dir + "/ones/runs/" + id);
    auto s3 = States(dir + "/three/runs/" + id);
    ASSERT_EQ(s1.size(), 4u);
    for (const auto& [layer, v] : s1) {
      ASSERT_EQ(s3[layer].size(), v.size());
      EXPECT_LE(RelDiff(v, s3[layer]), 1e-6) << "layer " << layer;
    }
    // The summary against the run file and the state file.
    auto run = LoadRunFile(dir + "/ones/runs/" + id + "/run.h5");
    ASSERT_TRUE(run.ok()) << run.status().ToString();
    ASSERT_EQ(run->metrics.size(), 6u);
    losses.push_back(run->metrics.back().loss);
    walls.push_back(run->metrics.back().wall_time_s);
    for (const auto& [layer, v] : s1) {
      double q = 0;
      for (double x : v) q += x * x;
      norms[std::stoi(layer)].push_back(std::sqrt(q));
    }
  }
  EXPECT_EQ(groups, (std::set<int>{0, 1, 2})) << "three seeds on three groups of one";
  // Seeds matter: each trains on its own subsample.
  EXPECT_GT(RelDiff(States(dir + "/ones/runs/seed-1")["0"], States(dir + "/ones/runs/seed-2")["0"]),
            1e-3);
  EXPECT_EQ(summary["n_done"], 3);
  ASSERT_EQ(summary["configs"].size(), 1u);
  const nlohmann::json& c = summary["configs"][0];
  ExpectStat(c["final_loss"], losses, "final_loss");
  ExpectStat(c["wall_time_s"], walls, "wall_time_s");
  ASSERT_EQ(c["state_norm"].size(), norms.size());
  for (const auto& ls : c["state_norm"]) {
    ExpectStat(ls["state_norm"], norms[ls["layer"].get<int>()], "state_norm");
  }
  EXPECT_NE(test::ReadFile(dir + "/ones/summary.txt").find("default (3 seeds): final_loss"), std::string::npos);
}

TEST(RunJob, Fp32EngineAgreesAcrossGroupSizes) {
  const std::string dir = test::TempDir("run_job_fp32");
  const std::string data = MakeData(dir);
  SpecOptions o;
  o.seeds = "[6]";
  o.method_extra = "precision: \"fp32\"";
  Outcome a = MpiRun(1, WriteSpec(dir, "one", data, o));
  ASSERT_EQ(a.status, 0) << a.output;
  o.group_size = 3;
  Outcome b = MpiRun(3, WriteSpec(dir, "three", data, o));
  ASSERT_EQ(b.status, 0) << b.output;
  auto s1 = States(dir + "/one/runs/seed-6");
  auto s3 = States(dir + "/three/runs/seed-6");
  ASSERT_EQ(s1.size(), 4u);
  for (const auto& [layer, v] : s1) EXPECT_LE(RelDiff(v, s3[layer]), 1e-6) << "layer " << layer;
}

TEST(RunJob, SigtermStopsEveryRankThenRerunIsByteIdentical) {
  const std::string dir = test::TempDir("run_job_sigterm");
  const std::string data = MakeData(dir);
  SpecOptions o;
  o.n_steps = 10;
  Outcome ref = MpiRun(3, WriteSpec(dir, "ref", data, o));
  ASSERT_EQ(ref.status, 0) << ref.output;

  const std::string spec = WriteSpec(dir, "cut", data, o);
  Watch w;
  bool sent = false;
  w.on_output = [&](const std::string& out, Watch&) {
    if (sent || out.find("run seed-2: step 2/10") == std::string::npos) return;
    // Rank 1 only: the others learn of the stop from the coordinator.
    const pid_t pid = RankPid(out, 1);
    if (pid > 0) sent = kill(pid, SIGTERM) == 0;
  };
  Outcome cut = MpiRun(3, spec, {"--log-level", "debug"}, w);
  ASSERT_TRUE(sent) << cut.output;
  ASSERT_EQ(cut.status, 75) << cut.output;
  EXPECT_NE(cut.output.find("(stop signal)"), std::string::npos) << cut.output;
  EXPECT_NE(cut.output.find("stopped: rerun the spec to resume"), std::string::npos);
  nlohmann::json summary = nlohmann::json::parse(test::ReadFile(dir + "/cut/summary.json"));
  EXPECT_GE(summary["n_unfinished"].get<int>(), 1);
  EXPECT_FALSE(fs::exists(dir + "/cut/runs/seed-2/done"));

  Outcome rest = MpiRun(3, spec);
  ASSERT_EQ(rest.status, 0) << rest.output;
  EXPECT_NE(rest.output.find("run seed-2: resuming after step"), std::string::npos) << rest.output;
  for (const std::string id : {"seed-1", "seed-2", "seed-3"}) {
    const std::string want = test::ReadFile(dir + "/ref/runs/" + id + "/states.safetensors");
    ASSERT_FALSE(want.empty());
    EXPECT_TRUE(want == test::ReadFile(dir + "/cut/runs/" + id + "/states.safetensors")) << id;
  }
  // Everything finished: a third invocation only skips and summarizes.
  Outcome again = MpiRun(3, spec);
  ASSERT_EQ(again.status, 0) << again.output;
  EXPECT_EQ(Count(again.output, "already done"), 3u) << again.output;
  EXPECT_EQ(Count(again.output, ": start:"), 0u);
}

TEST(RunJob, KilledRankEndsTheJobPromptlyAndARerunResumes) {
  const std::string dir = test::TempDir("run_job_kill9");
  const std::string data = MakeData(dir);
  SpecOptions o;
  o.seeds = "[4]";
  o.group_size = 3;
  o.n_steps = 40;
  const std::string spec = WriteSpec(dir, "job", data, o);
  Watch w;
  bool killed = false;
  w.on_output = [&](const std::string& out, Watch& self) {
    if (killed || out.find("run seed-4: step 3/40") == std::string::npos) return;
    const pid_t pid = RankPid(out, 2);
    if (pid > 0 && kill(pid, SIGKILL) == 0) {
      killed = true;
      self.Mark();
    }
  };
  Outcome cut = MpiRun(3, spec, {"--log-level", "debug"}, w);
  ASSERT_TRUE(killed) << cut.output;
  EXPECT_NE(cut.status, 0);
  EXPECT_NE(cut.status, 75);
  EXPECT_LT(cut.seconds, 10.0) << "the bound README.md states for a dead rank";
  std::printf("[   INFO   ] killed rank: job ended %.2f s after kill -9\n", cut.seconds);
  EXPECT_NE(cut.output.find("exited on signal 9"), std::string::npos) << cut.output;
  auto committed = LoadLatestGood(dir + "/job/runs/seed-4/run.h5");
  ASSERT_TRUE(committed.ok()) << committed.status().ToString();
  EXPECT_GE(committed->contents.committed_step, 3);

  Outcome rest = MpiRun(3, spec);
  ASSERT_EQ(rest.status, 0) << rest.output;
  EXPECT_NE(rest.output.find("run seed-4: resuming after step"), std::string::npos) << rest.output;
  EXPECT_TRUE(fs::exists(dir + "/job/runs/seed-4/done"));
}

TEST(RunJob, StalledRankEndsTheJobWithinTheStallTimeout) {
  const std::string dir = test::TempDir("run_job_stall");
  const std::string data = MakeData(dir);
  SpecOptions o;
  o.seeds = "[5]";
  o.group_size = 3;
  o.n_steps = 40;
  o.stall_timeout_s = 3;
  Watch w;
  pid_t stopped = -1;
  w.on_output = [&](const std::string& out, Watch& self) {
    if (stopped > 0 || out.find("run seed-5: step 2/40") == std::string::npos) return;
    const pid_t pid = RankPid(out, 1);
    if (pid > 0 && kill(pid, SIGSTOP) == 0) {
      stopped = pid;
      self.Mark();
    }
  };
  Outcome cut = MpiRun(3, WriteSpec(dir, "job", data, o), {"--log-level", "debug"}, w);
  ASSERT_GT(stopped, 0) << cut.output;
  EXPECT_EQ(cut.status, 70) << cut.output;
  EXPECT_LT(cut.seconds, 3.0 + 7.0) << "stall timeout + the bound README.md states";
  EXPECT_TRUE(cut.output.find("did not complete within 3.0 s: a rank died or stalled") !=
                  std::string::npos ||
              cut.output.find("over the stall timeout of 3.0 s") != std::string::npos)
      << cut.output;
  EXPECT_TRUE(ProcessEnded(stopped)) << "the stalled rank outlived the job";
  std::printf("[   INFO   ] stalled rank: job ended %.2f s after SIGSTOP (stall timeout 3 s)\n",
              cut.seconds);
  EXPECT_TRUE(LoadLatestGood(dir + "/job/runs/seed-5/run.h5").ok());
}

struct ErrorCase {
  std::string name;
  int np;
  std::string spec;
  std::vector<std::string> args;
  int status;
  std::string message;
};

void ExpectErrors(const std::vector<ErrorCase>& cases) {
  for (const ErrorCase& c : cases) {
    SCOPED_TRACE(c.name);
    Outcome out = MpiRun(c.np, c.spec, c.args, {}, 60);
    EXPECT_EQ(out.status, c.status) << out.output;
    EXPECT_NE(out.output.find(c.message), std::string::npos) << out.output;
  }
}

TEST(RunJob, BadSpecsGiveClearErrorsOnEveryRank) {
  const std::string dir = test::TempDir("run_job_bad_specs");
  const std::string wrong_version = dir + "/v2.txtpb";
  std::ofstream(wrong_version) << "version: 2\nname: \"x\"\n";
  const std::string malformed = dir + "/bad.json";
  std::ofstream(malformed) << "{\"version\": 1, \"name\": \"x\", \"seeds\": [1,";
  const std::string oversized = dir + "/big.txtpb";
  std::ofstream(oversized) << "version: 1\n# " << std::string(size_t(1) << 20, 'x') << "\n";
  ExpectErrors({
      {"missing spec", 2, dir + "/nope.txtpb", {}, 1, "nope.txtpb: no such file"},
      {"wrong version", 2, wrong_version, {}, 1, "v2.txtpb: version 2, but this s0d reads version 1"},
      {"malformed JSON", 2, malformed, {}, 1, "bad.json: not a valid s0.proto.JobSpec in JSON"},
      {"oversized", 1, oversized, {}, 1, "big.txtpb: 1048590 bytes, over the limit of 1048576"},
      {"bad flag", 1, wrong_version, {"--stop-signal", "HUP"}, 2, "--stop-signal"},
  });
}

TEST(RunJob, BadSetupsGiveClearErrorsOnEveryRank) {
  const std::string dir = test::TempDir("run_job_bad_setups");
  const std::string data = MakeData(dir);
  SpecOptions two;
  two.group_size = 2;
  SpecOptions bad_layers;
  bad_layers.extra = "grid { layers: [\"0,3\"] }";  // layer 3 is full attention
  const std::string subsample = WriteSpec(dir, "sub", data, SpecOptions{});
  {
    std::string t = test::ReadFile(subsample);
    t.replace(t.find("subsample: 3"), 12, "subsample: 99");
    std::ofstream(subsample) << t;
  }
  // A finished job in "reuse", then another job pointed at the same directory.
  SpecOptions quick;
  quick.seeds = "[1]";
  quick.n_steps = 1;
  ASSERT_EQ(MpiRun(1, WriteSpec(dir, "reuse", data, quick)).status, 0);
  SpecOptions other = quick;
  other.n_steps = 2;
  const std::string reuse_other = WriteSpec(dir, "reuse2", data, other);
  {
    std::string t = test::ReadFile(reuse_other);
    t.replace(t.find("out_dir: \"reuse2\""), 17, "out_dir: \"reuse\"");
    std::ofstream(reuse_other) << t;
  }
  ExpectErrors({
      {"group size does not divide", 3, WriteSpec(dir, "two", data, two), {}, 1,
       "runtime.group_size 2 does not divide the 3 ranks"},
      {"layer not a DeltaNet layer", 2, WriteSpec(dir, "layers", data, bad_layers), {}, 1,
       "'3' is not a DeltaNet layer index"},
      {"subsample larger than the data", 2, subsample, {}, 1, "subsample 99 exceeds the 8 examples"},
      {"another job in the directory", 2, reuse_other, {}, 1, "holds another job (its name differs)"},
  });
}

TEST(Launch, WrapperLogsPerRankAndTurnsSigtermIntoAGracefulStop) {
  const std::string dir = test::TempDir("run_job_launch");
  const std::string data = MakeData(dir);
  SpecOptions o;
  o.seeds = "[1, 2]";
  o.n_steps = 40;
  const std::string spec = WriteSpec(dir, "job", data, o);
  Watch w;
  bool sent = false;
  w.on_output = [&](const std::string& out, Watch& self) {
    if (sent || out.find("step 2/40") == std::string::npos) return;
    sent = kill(self.child, SIGTERM) == 0;  // the wrapper, as a batch system would
  };
  Outcome out = Spawn({test::SourcePath("launch/s0d-mpirun"), "-n", "2", "--logs", dir + "/logs",
                       "--s0d", kS0d, "--", "run", spec, "--log-level", "debug"},
                      dir, w, 180);
  ASSERT_TRUE(sent) << out.output;
  EXPECT_EQ(out.status, 75) << out.output;
  EXPECT_NE(out.output.find("stopping: SIGUSR1 to every rank"), std::string::npos) << out.output;
  for (int r = 0; r < 2; ++r) {
    const std::string log = test::ReadFile(dir + "/logs/1/rank." + std::to_string(r) + "/stderr");
    const std::string tag = "[rank " + std::to_string(r) + "/2 group " + std::to_string(r) + "]";
    EXPECT_NE(log.find(tag + " run seed-" + std::to_string(r + 1) + ": start"), std::string::npos)
        << log;
    EXPECT_NE(log.find(tag + " run seed-" + std::to_string(r + 1) + ": stopped after step"),
              std::string::npos)
        << log;
    EXPECT_EQ(log.find("[rank " + std::to_string(1 - r) + "/2"), std::string::npos);
  }
  const std::string command = test::ReadFile(dir + "/logs/command.txt");
  EXPECT_NE(command.find("-x NCCL_NVLS_ENABLE"), std::string::npos) << command;
  EXPECT_NE(command.find("--stop-signal USR1"), std::string::npos) << command;
}

}  // namespace
}  // namespace s0
