// `s0 train` as a user runs it: SIGTERM mid-run commits and exits 75; --resume finishes with
// states byte-identical to an uninterrupted run; bad flags and data give clear errors.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/common/test_paths.h"

extern char** environ;

namespace s0 {
namespace {

const std::string kS0 = std::string(S0_BINARY_DIR) + "/daemon/s0";
const std::string kFixture = "tests/fixtures/qwen35/text_bf16_tied";

std::vector<std::string> TrainArgs(const std::string& out, int steps) {
  const std::string f = test::SourcePath(kFixture);
  return {kS0, "train", "--model", f + "/model", "--data", f + "/data.jsonl", "--out", out,
          "--n-steps", std::to_string(steps), "--lr", "1e-2"};
}

// Runs argv; returns (exit status or 128+signal, combined stderr).
std::pair<int, std::string> RunCommand(const std::vector<std::string>& argv,
                                const std::string& stop_after_line = "") {
  int pipe_fd[2];
  if (pipe(pipe_fd) != 0) return {-1, "pipe failed"};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pipe_fd[1], STDERR_FILENO);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addclose(&fa, pipe_fd[0]);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid;
  int rc = posix_spawn(&pid, argv[0].c_str(), &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(pipe_fd[1]);
  if (rc != 0) return {-1, "spawn failed"};
  std::string err;
  bool signalled = false;
  FILE* in = fdopen(pipe_fd[0], "r");
  char buf[4096];
  while (fgets(buf, sizeof buf, in)) {
    err += buf;
    if (!signalled && !stop_after_line.empty() && err.find(stop_after_line) != std::string::npos) {
      kill(pid, SIGTERM);
      signalled = true;
    }
  }
  fclose(in);
  int status = 0;
  waitpid(pid, &status, 0);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), err};
}

TEST(TrainCommand, SigtermThenResumeIsByteIdentical) {
  const int steps = 12;
  const std::string ref = test::TempDir("train_cli_ref");
  auto [rc_ref, err_ref] = RunCommand(TrainArgs(ref, steps));
  ASSERT_EQ(rc_ref, 0) << err_ref;

  const std::string out = test::TempDir("train_cli_sigterm");
  auto [rc1, err1] = RunCommand(TrainArgs(out, steps), "step 3/12");
  ASSERT_EQ(rc1, 75) << err1;
  EXPECT_NE(err1.find("rerun with --resume"), std::string::npos) << err1;
  EXPECT_FALSE(std::filesystem::exists(out + "/states.safetensors"));

  std::vector<std::string> again = TrainArgs(out, steps);
  again.push_back("--resume");
  auto [rc2, err2] = RunCommand(again);
  ASSERT_EQ(rc2, 0) << err2;
  EXPECT_NE(err2.find("resumed from"), std::string::npos) << err2;
  const std::string a = test::ReadFile(ref + "/states.safetensors"), b = test::ReadFile(out + "/states.safetensors");
  ASSERT_FALSE(a.empty());
  EXPECT_TRUE(a == b) << "final states differ after SIGTERM + resume";
}

TEST(TrainCommand, ClearErrors) {
  const std::string out = test::TempDir("train_cli_errors");
  std::vector<std::string> bad_layers = TrainArgs(out + "/a", 1);
  bad_layers.insert(bad_layers.end(), {"--layers", "0,99"});
  auto [rc1, err1] = RunCommand(bad_layers);
  EXPECT_EQ(rc1, 1);
  EXPECT_NE(err1.find("'99' is not a DeltaNet layer index"), std::string::npos) << err1;

  const std::string data = out + "/bad.jsonl";
  std::ofstream(data) << "{\"input_ids\": [1, 2, 3], \"prompt_len\": 1}\n{\"input_ids\": [1, \n";
  std::vector<std::string> bad_data = TrainArgs(out + "/b", 1);
  bad_data[5] = data;
  auto [rc2, err2] = RunCommand(bad_data);
  EXPECT_EQ(rc2, 1);
  EXPECT_NE(err2.find("bad.jsonl:2: not valid JSON"), std::string::npos) << err2;

  auto [rc3, err3] = RunCommand(TrainArgs(out + "/c", 1));
  ASSERT_EQ(rc3, 0) << err3;
  auto [rc4, err4] = RunCommand(TrainArgs(out + "/c", 1));  // existing run without --resume
  EXPECT_EQ(rc4, 1);
  EXPECT_NE(err4.find("pass --resume"), std::string::npos) << err4;
}

}  // namespace
}  // namespace s0
