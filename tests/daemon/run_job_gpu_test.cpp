// `s0d run` with the CUDA engine on two GPUs: a group of two ranks sums its gradients with NCCL
// (daemon/nccl_comm.h) and must end with the states of the same seed trained on one GPU, up to
// the fp32 summation order of the all-reduce (amplified a little by Adam); a rank of such a group
// that stalls ends the job within the stall timeout. Runs under mpirun on a machine with at least
// two GPUs; skipped, with the reason, elsewhere.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "checkpoints/safetensors.h"
#include "tests/common/compare.h"
#include "tests/common/gpu.h"
#include "tests/common/short_examples.h"
#include "tests/common/test_paths.h"

namespace s0 {
namespace {

namespace fs = std::filesystem;

const std::string kS0d = std::string(S0_BINARY_DIR) + "/daemon/s0d";
const std::string kFixture = test::kEmbeddedFixture;

// Writes DIR/NAME.txtpb (output in DIR/NAME) for the fixture model on the CUDA engine.
std::string WriteSpec(const std::string& dir, const std::string& name, int group_size,
                      int n_steps = 5, int stall_timeout_s = 120) {
  const std::string path = dir + "/" + name + ".txtpb";
  std::ofstream(path) << "version: 1\nname: \"" << name << "\"\nmodel: \""
                      << test::SourcePath(kFixture + "/model") << "\"\ndata: \""
                      << test::SourcePath(kFixture + "/data.jsonl") << "\"\nout_dir: \"" << dir
                      << "/" << name << "\"\nmethod { n_steps: " << n_steps
                      << " lr: 0.01 engine: \"cuda\" }\nseeds: [1]\nruntime { group_size: "
                      << group_size << " stall_timeout_s: " << stall_timeout_s << " }\n";
  return path;
}

// Runs `command` with its output in `log`; returns the exit status.
int RunCommand(const std::string& command, const std::string& log) {
  const int rc = std::system((command + " > " + log + " 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
}

// The one run's final states of a job's output directory, per tensor name.
std::map<std::string, std::vector<float>> FinalStates(const std::string& out_dir) {
  std::map<std::string, std::vector<float>> states;
  for (const auto& run : fs::directory_iterator(out_dir + "/runs")) {
    auto f = SafetensorsFile::Open(run.path().string() + "/states.safetensors");
    EXPECT_TRUE(f.ok()) << f.status().ToString();
    if (!f.ok()) continue;
    for (const std::string& name : f->Names()) states[name] = *ToFloat32(*f->Get(name));
  }
  return states;
}

// Empty when two CUDA GPUs can be used; otherwise why not.
std::string TwoGpusUnavailableReason() {
  if (const std::string why = test::GpuUnavailableReason(); !why.empty()) {
    return "needs two CUDA GPUs (none found: " + why + ")";
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 2) {
    return "needs two CUDA GPUs (this machine has " + std::to_string(devices) + ")";
  }
  return "";
}

const std::string kMpirun =
    "NCCL_NVLS_ENABLE=0 mpirun --allow-run-as-root --oversubscribe -np 2 -x NCCL_NVLS_ENABLE ";

TEST(RunJobGpuTest, NcclGroupOfTwoMatchesOneGpu) {
  if (const std::string why = TwoGpusUnavailableReason(); !why.empty()) GTEST_SKIP() << why;
  const std::string dir = test::TempDir("nccl");
  const std::string one = WriteSpec(dir, "one", 1);
  const std::string two = WriteSpec(dir, "two", 2);
  ASSERT_EQ(RunCommand(kS0d + " run " + one, dir + "/one.log"), 0) << test::ReadFile(dir + "/one.log");
  ASSERT_EQ(RunCommand(kMpirun + kS0d + " run " + two, dir + "/two.log"), 0)
      << test::ReadFile(dir + "/two.log");
  const std::string log = test::ReadFile(dir + "/two.log");
  EXPECT_NE(log.find("NCCL 2 ranks ready"), std::string::npos) << log;

  const auto a = FinalStates(dir + "/one"), b = FinalStates(dir + "/two");
  ASSERT_FALSE(a.empty());
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, ref] : a) {
    const std::vector<float>& got = b.at(name);
    const double rel = test::RelNormError(got, ref), cos = test::CosineSimilarity(got, ref);
    std::cout << "[nccl group of 2 vs 1 GPU] layer " << name << ": rel_l2 " << rel << " cos "
              << cos << "\n";
    // One GPU sums the examples' gradients in one fp32 buffer; two GPUs sum two halves, then
    // NCCL adds them: the same terms in another order. 5 Adam steps at lr 1e-2 carry that
    // rounding into the states far below bf16's resolution (2^-8).
    EXPECT_LE(rel, 1e-3) << name;
    EXPECT_GE(cos, 0.99999) << name;
  }
}

// SIGSTOP of rank 1 in a GPU group of two mid-run: rank 0 waits in the NCCL all-reduce (or the
// step-boundary MPI collective) until the stall timeout, aborts, and the job ends with status 70
// within the bound README.md states (stall_timeout_s + 7 s).
TEST(RunJobGpuTest, StalledRankOfAnNcclGroupEndsTheJob) {
  if (const std::string why = TwoGpusUnavailableReason(); !why.empty()) GTEST_SKIP() << why;
  const std::string dir = test::TempDir("nccl_stall");
  const std::string spec = WriteSpec(dir, "job", 2, /*n_steps=*/100000, /*stall_timeout_s=*/5);
  const std::string log = dir + "/job.log", result = dir + "/result";
  // The job in the background; at its third step, rank 1 (its pid from its start-up line) is
  // stopped; the time from then to the job's end is measured. The stopped rank is killed at
  // the end in case it outlived the job.
  std::ofstream(dir + "/stall.sh")
      << "set -u\n" << kMpirun << kS0d << " run " << spec << " --log-level debug > " << log
      << " 2>&1 &\nM=$!\nfor i in $(seq 1200); do grep -q 'step 3/' " << log
      << " && break; sleep 0.05; done\n"
      << "P=$(grep -o 'rank 1/2 group 0] host .*, pid [0-9]*' " << log
      << " | grep -o '[0-9]*$' | head -1)\n"
      << "kill -STOP \"$P\"; T0=$(date +%s%N)\nwait $M; RC=$?\nT1=$(date +%s%N)\n"
      << "kill -9 \"$P\" 2>/dev/null\necho \"$RC $(( (T1 - T0) / 1000000 )) $P\" > " << result
      << "\n";
  ASSERT_EQ(RunCommand("bash " + dir + "/stall.sh", dir + "/stall.log"), 0) << test::ReadFile(dir + "/stall.log");
  int rc = -1, ms = -1, pid = -1;
  std::istringstream(test::ReadFile(result)) >> rc >> ms >> pid;
  const std::string out = test::ReadFile(log);
  ASSERT_GT(pid, 0) << out;
  EXPECT_EQ(rc, 70) << out;
  EXPECT_LT(ms, (5 + 7) * 1000) << "stall timeout + the bound README.md states";
  EXPECT_NE(out.find("did not complete within 5.0 s"), std::string::npos) << out;
  std::cout << "[nccl stall] job ended " << ms << " ms after SIGSTOP of rank 1 (stall timeout 5 s): "
            << (out.find("NCCL") != std::string::npos ? "NCCL wait" : "MPI wait") << "\n";
}

}  // namespace
}  // namespace s0
