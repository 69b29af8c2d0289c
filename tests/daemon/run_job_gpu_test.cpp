// `s0d run` with the CUDA engine on two GPUs: a group of two ranks sums its gradients with NCCL
// (daemon/nccl_comm.h) and must end with the states of the same seed trained on one GPU, up to
// the fp32 summation order of the all-reduce (amplified a little by Adam). Runs under mpirun
// on a machine with at least two GPUs; skipped, with the reason, elsewhere.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "checkpoints/safetensors.h"
#include "tests/common/compare.h"
#include "tests/common/gpu.h"
#include "tests/common/test_paths.h"

namespace s0 {
namespace {

namespace fs = std::filesystem;

const std::string kS0d = std::string(S0_BINARY_DIR) + "/daemon/s0d";
const std::string kFixture = "tests/fixtures/qwen35/text_f32_grouped";

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Writes DIR/NAME.txtpb (output in DIR/NAME) for the fixture model on the CUDA engine.
std::string WriteSpec(const std::string& dir, const std::string& name, int group_size) {
  const std::string path = dir + "/" + name + ".txtpb";
  std::ofstream(path) << "version: 1\nname: \"" << name << "\"\nmodel: \""
                      << test::SourcePath(kFixture + "/model") << "\"\ndata: \""
                      << test::SourcePath(kFixture + "/data.jsonl") << "\"\nout_dir: \"" << dir
                      << "/" << name << "\"\nmethod { n_steps: 5 lr: 0.01 engine: \"cuda\" }\n"
                      << "seeds: [1]\nruntime { group_size: " << group_size
                      << " stall_timeout_s: 120 }\n";
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

TEST(RunJobGpuTest, NcclGroupOfTwoMatchesOneGpu) {
  if (const std::string why = test::GpuUnavailableReason(); !why.empty()) {
    GTEST_SKIP() << "needs two CUDA GPUs (none found: " << why << ")";
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 2) {
    GTEST_SKIP() << "needs two CUDA GPUs (this machine has " << devices << ")";
  }
  const std::string dir = test::TempDir("nccl");
  const std::string one = WriteSpec(dir, "one", 1);
  const std::string two = WriteSpec(dir, "two", 2);
  ASSERT_EQ(RunCommand(kS0d + " run " + one, dir + "/one.log"), 0) << Slurp(dir + "/one.log");
  ASSERT_EQ(RunCommand("NCCL_NVLS_ENABLE=0 mpirun --allow-run-as-root --oversubscribe -np 2 -x "
                "NCCL_NVLS_ENABLE " + kS0d + " run " + two,
                dir + "/two.log"),
            0)
      << Slurp(dir + "/two.log");
  const std::string log = Slurp(dir + "/two.log");
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

}  // namespace
}  // namespace s0
