// Run files: round trip (bit-exact), history growth, resume, damaged files (truncated, bit
// flips), a crash at every commit step (also of the first commit after a resume from <path>.prev),
// SIGKILL during commits, fingerprint refusal.
#include "checkpoints/run_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "checkpoints/crc32c.h"
#include "tests/common/compare.h"
#include "tests/common/test_paths.h"

namespace s0 {
namespace {

namespace fs = std::filesystem;

#define ASSERT_OK(expr)                                   \
  do {                                                    \
    const ::s0::Status s0_st_ = (expr);                   \
    ASSERT_TRUE(s0_st_.ok()) << s0_st_.ToString();        \
  } while (0)

RunHeader TestHeader() {
  RunHeader h;
  h.created_by = "run_file_test";
  h.config_json =
      R"({"lr": 0.001, "n_steps": 20, "normalize": false, "task": "humaneval",)"
      R"( "alpha": 0.07, "grid": {"lr": [0.001, 0.003]}})";
  h.model_fingerprint = "qwen3_5-test:sha256=abc123";
  h.state_layers = {5, 1, 9};  // deliberately not sorted: the header's order is the order
  h.state_shape = {2, 3, 5};
  return h;
}

std::string ExpectedCompression() {
  return H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0 ? "shuffle+deflate(1)"
                                                 : "none: this HDF5 build cannot encode deflate";
}

// A training stand-in: everything written at step k is a function of k, so any loaded file can
// be checked against the step it claims to hold.
LayerStates StatesAt(const RunHeader& h, int64_t step, uint64_t salt) {
  LayerStates states;
  for (size_t l = 0; l < h.state_layers.size(); ++l)
    states.push_back(test::RandomNormal(h.StateNumel(), 1000003 * salt + 101 * step + l, 0.02f));
  return states;
}

StepMetrics MetricsAt(const RunHeader& h, int64_t step) {
  StepMetrics m;
  m.step = step;
  m.loss = 2.0 / (1.0 + step) + 1e-17;  // not representable in fp32: the file must keep fp64
  m.grad_norm = 0.5 + 0.01 * step;
  for (size_t l = 0; l < h.state_layers.size(); ++l) m.state_norm.push_back(0.1 * step + l);
  m.wall_time_s = 1.25 * step;
  return m;
}

OptimizerState OptimizerAt(const RunHeader& h, int64_t step) {
  return OptimizerState{step, StatesAt(h, step, 1), StatesAt(h, step, 2), StatesAt(h, step, 3)};
}

// Step 0 writes a snapshot and the optimizer state; later steps also a metrics row.
Status Advance(RunFile& run, int64_t step) {
  const RunHeader& h = run.header();
  S0_RETURN_IF_ERROR(run.AppendSnapshot(step, ViewOf(StatesAt(h, step, 0))));
  if (step > 0) S0_RETURN_IF_ERROR(run.AppendMetrics(MetricsAt(h, step)));
  return run.SetOptimizer(OptimizerAt(h, step));
}

RunFileContents ExpectedAfter(const RunHeader& h, int64_t step) {
  RunFileContents c;
  c.header = h;
  c.compression = ExpectedCompression();
  c.committed_step = step;
  c.optimizer = OptimizerAt(h, step);
  c.history.resize(h.state_layers.size());
  for (int64_t k = 0; k <= step; ++k) {
    c.history_steps.push_back(k);
    const LayerStates s = StatesAt(h, k, 0);
    for (size_t l = 0; l < s.size(); ++l)
      c.history[l].insert(c.history[l].end(), s[l].begin(), s[l].end());
    if (k > 0) c.metrics.push_back(MetricsAt(h, k));
  }
  return c;
}

template <class T>
bool SameBits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

bool SameBits(const LayerStates& a, const LayerStates& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!SameBits(a[i], b[i])) return false;
  return true;
}

// Field by field; floating-point data compared by bits (NaN payloads, -0 included).
::testing::AssertionResult SameContents(const RunFileContents& got, const RunFileContents& want) {
  auto fail = [](const char* what) { return ::testing::AssertionFailure() << what << " differ"; };
  const RunHeader &g = got.header, &w = want.header;
  if (g.created_by != w.created_by || g.config_json != w.config_json ||
      g.model_fingerprint != w.model_fingerprint || g.state_layers != w.state_layers ||
      g.state_shape != w.state_shape)
    return fail("headers");
  if (got.compression != want.compression) return fail("compression records");
  if (got.committed_step != want.committed_step) return fail("committed steps");
  if (got.optimizer.step != want.optimizer.step) return fail("optimizer steps");
  if (!SameBits(got.optimizer.s0, want.optimizer.s0)) return fail("optimizer s0");
  if (!SameBits(got.optimizer.exp_avg, want.optimizer.exp_avg)) return fail("exp_avg");
  if (!SameBits(got.optimizer.exp_avg_sq, want.optimizer.exp_avg_sq)) return fail("exp_avg_sq");
  if (got.history_steps != want.history_steps) return fail("history steps");
  if (!SameBits(got.history, want.history)) return fail("state histories");
  if (got.metrics.size() != want.metrics.size()) return fail("metrics row counts");
  for (size_t r = 0; r < got.metrics.size(); ++r) {
    const StepMetrics &a = got.metrics[r], &b = want.metrics[r];
    if (a.step != b.step || !SameBits(std::vector<double>{a.loss, a.grad_norm, a.wall_time_s},
                                      std::vector<double>{b.loss, b.grad_norm, b.wall_time_s}) ||
        !SameBits(a.state_norm, b.state_norm))
      return ::testing::AssertionFailure() << "metrics row " << r << " differs";
  }
  if (got.eval != want.eval) return fail("eval results");
  return ::testing::AssertionSuccess();
}

std::vector<char> ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), {});
}

void WriteBytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

int CountTempFiles(const std::string& dir) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir))
    n += e.path().filename().string().find(".tmp.") != std::string::npos;
  return n;
}

// A file committed at `step` (history 0..step), with `step - 1` as its .prev when step > 0.
RunFile CommitThrough(const std::string& path, int64_t step) {
  Result<RunFile> run = RunFile::Create(TestHeader());
  EXPECT_TRUE(run.ok()) << run.status().ToString();
  for (int64_t k = 0; k <= step; ++k) {
    EXPECT_TRUE(Advance(*run, k).ok());
    EXPECT_TRUE(run->Commit(path).ok());
  }
  return std::move(run).value();
}

TEST(Crc32c, KnownVectorsAndChaining) {
  const char* digits = "123456789";
  EXPECT_EQ(Crc32c(digits, 9), 0xE3069283u);
  const std::vector<unsigned char> zeros(32, 0x00), ones(32, 0xFF);
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);  // RFC 3720 B.4
  EXPECT_EQ(Crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(Crc32c(nullptr, 0), 0u);
  EXPECT_EQ(Crc32cExtend(Crc32c(digits, 4), digits + 4, 5), 0xE3069283u);
  // The 8-byte and the byte-wise paths agree at every split point and alignment.
  std::vector<unsigned char> bytes(200);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i * 37 + 11);
  for (size_t start = 0; start < 9; ++start) {
    const uint32_t whole = Crc32c(bytes.data() + start, bytes.size() - start);
    for (size_t cut = start; cut <= bytes.size(); cut += 3)
      EXPECT_EQ(Crc32cExtend(Crc32c(bytes.data() + start, cut - start), bytes.data() + cut,
                             bytes.size() - cut),
                whole)
          << start << " " << cut;
  }
}

TEST(RunFile, RoundTripIsBitExact) {
  const std::string path = test::TempDir("run_file_round_trip") + "/run.h5";
  const RunHeader h = TestHeader();
  RunFileContents want = ExpectedAfter(h, 3);
  // Values a lossy or converting path would change.
  float special[] = {std::nanf(""), -0.0f, 1e-45f, INFINITY, -INFINITY};
  uint32_t payload_nan = 0x7FC01234u;
  std::memcpy(&special[0], &payload_nan, 4);
  for (int i = 0; i < 5; ++i) {
    want.history[1][i] = special[i];
    want.optimizer.exp_avg_sq[2][i] = special[i];
  }
  want.eval["humaneval"] = R"({"pass@1": 0.4523, "n": 84})";
  want.eval["gsm8k"] = R"({"accuracy": 0.71})";

  Result<RunFile> run = RunFile::Create(h);
  ASSERT_OK(run.status());
  const size_t numel = h.StateNumel();
  for (size_t s = 0; s < want.history_steps.size(); ++s) {
    LayerStatesView snapshot;
    for (const auto& layer : want.history)
      snapshot.push_back(std::span<const float>(layer).subspan(s * numel, numel));
    ASSERT_OK(run->AppendSnapshot(want.history_steps[s], snapshot));
  }
  for (const StepMetrics& m : want.metrics) ASSERT_OK(run->AppendMetrics(m));
  ASSERT_OK(run->SetOptimizer(want.optimizer));
  ASSERT_OK(run->WriteEval("humaneval", R"({"pass@1": 0.1})"));  // replaced below
  for (const auto& [name, json] : want.eval) ASSERT_OK(run->WriteEval(name, json));
  ASSERT_OK(run->Commit(path));

  Result<RunFileContents> got = LoadRunFile(path);
  ASSERT_OK(got.status());
  EXPECT_TRUE(SameContents(*got, want));
  EXPECT_EQ(got->compression, ExpectedCompression());

  // A resumed working copy commits the same contents again.
  Result<RunFile> resumed = RunFile::Restore(*got);
  ASSERT_OK(resumed.status());
  ASSERT_OK(resumed->Commit(path));
  Result<RunFileContents> again = LoadRunFile(path);
  ASSERT_OK(again.status());
  EXPECT_TRUE(SameContents(*again, want));
}

// The layout checkpoints/README.md documents, read with the plain HDF5 C API as h5py would.
TEST(RunFile, LayoutMatchesReadme) {
  const std::string path = test::TempDir("run_file_layout") + "/run.h5";
  RunHeader h = TestHeader();
  h.config_json = R"({"lr": 0.001, "n_steps": 20, "normalize": true, "task": "humaneval", )"
                  R"("notes": ")" + std::string(100000, 'x') + R"("})";  // > 64 KiB attribute
  {
    Result<RunFile> run = RunFile::Create(h);
    ASSERT_OK(run.status());
    ASSERT_OK(Advance(*run, 0));
    ASSERT_OK(Advance(*run, 1));
    ASSERT_OK(run->Commit(path));
  }
  Result<RunFileContents> got = LoadRunFile(path);
  ASSERT_OK(got.status());
  EXPECT_EQ(got->header.config_json, h.config_json);

  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  hid_t ds = H5Dopen2(f, "/states/9", H5P_DEFAULT);
  ASSERT_GE(ds, 0);
  hid_t dcpl = H5Dget_create_plist(ds);
  hsize_t chunk[4] = {};
  EXPECT_EQ(H5Pget_chunk(dcpl, 4, chunk), 4);
  EXPECT_EQ(chunk[0], 1u);  // one snapshot per chunk
  EXPECT_EQ(chunk[3], 5u);
  const bool deflate = H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0;
  EXPECT_EQ(H5Pget_nfilters(dcpl), deflate ? 2 : 0);
  hid_t space = H5Dget_space(ds);
  hsize_t dims[4], max_dims[4];
  EXPECT_EQ(H5Sget_simple_extent_dims(space, dims, max_dims), 4);
  EXPECT_EQ(dims[0], 2u);
  EXPECT_EQ(max_dims[0], H5S_UNLIMITED);
  H5Sclose(space);
  H5Pclose(dcpl);
  H5Dclose(ds);

  hid_t hp = H5Gopen2(f, "/hyperparameters", H5P_DEFAULT);
  ASSERT_GE(hp, 0);
  double lr = 0;
  int64_t n_steps = 0;
  int8_t normalize = 0;
  hid_t a = H5Aopen(hp, "lr", H5P_DEFAULT);
  EXPECT_GE(H5Aread(a, H5T_NATIVE_DOUBLE, &lr), 0);
  H5Aclose(a);
  a = H5Aopen(hp, "n_steps", H5P_DEFAULT);
  EXPECT_GE(H5Aread(a, H5T_NATIVE_INT64, &n_steps), 0);
  H5Aclose(a);
  a = H5Aopen(hp, "normalize", H5P_DEFAULT);
  EXPECT_GE(H5Aread(a, H5T_NATIVE_INT8, &normalize), 0);
  H5Aclose(a);
  EXPECT_EQ(lr, 0.001);
  EXPECT_EQ(n_steps, 20);
  EXPECT_EQ(normalize, 1);
  EXPECT_GT(H5Aexists(hp, "task"), 0);
  H5Gclose(hp);
  for (const char* root_attr : {"format_version", "created_by", "config_json", "model_fingerprint",
                                "state_layers", "state_shape", "compression", "committed_step",
                                "header_crc32c"})
    EXPECT_GT(H5Aexists(f, root_attr), 0) << root_attr;
  H5Fclose(f);
}

TEST(RunFile, HistoryGrowsAcrossCommits) {
  const std::string path = test::TempDir("run_file_history") + "/run.h5";
  const RunHeader h = TestHeader();
  Result<RunFile> run = RunFile::Create(h);
  ASSERT_OK(run.status());
  for (int64_t step = 0; step <= 4; ++step) {
    ASSERT_OK(Advance(*run, step));
    ASSERT_OK(run->Commit(path));
    Result<RunFileContents> got = LoadRunFile(path);
    ASSERT_OK(got.status());
    EXPECT_TRUE(SameContents(*got, ExpectedAfter(h, step))) << "step " << step;
    Result<RunFileContents> prev = LoadRunFile(PrevRunFilePath(path));
    if (step == 0) {
      EXPECT_EQ(prev.status().code(), Code::kNotFound);
    } else {
      ASSERT_OK(prev.status());
      EXPECT_TRUE(SameContents(*prev, ExpectedAfter(h, step - 1))) << "step " << step;
    }
  }
}

TEST(RunFile, RestoreContinuesTheRun) {
  const std::string path = test::TempDir("run_file_restore") + "/run.h5";
  const RunHeader h = TestHeader();
  CommitThrough(path, 2);
  Result<LoadedRunFile> loaded = LoadLatestGood(path);
  ASSERT_OK(loaded.status());
  EXPECT_FALSE(loaded->from_prev);
  ASSERT_OK(CheckFingerprint(loaded->contents, h.model_fingerprint));
  Result<RunFile> run = RunFile::Restore(loaded->contents);
  ASSERT_OK(run.status());
  EXPECT_EQ(run->AppendSnapshot(2, ViewOf(StatesAt(h, 2, 0))).code(), Code::kInvalidArgument);
  ASSERT_OK(Advance(*run, 3));
  ASSERT_OK(run->Commit(path));
  Result<RunFileContents> got = LoadRunFile(path);
  ASSERT_OK(got.status());
  EXPECT_TRUE(SameContents(*got, ExpectedAfter(h, 3)));
}

TEST(RunFile, RejectsMalformedInput) {
  auto create_code = [](auto edit) {
    RunHeader h = TestHeader();
    edit(h);
    return RunFile::Create(h).status().code();
  };
  EXPECT_EQ(create_code([](RunHeader& h) { h.config_json = "{not json"; }), Code::kInvalidArgument);
  EXPECT_EQ(create_code([](RunHeader& h) { h.config_json = "[1, 2]"; }), Code::kInvalidArgument);
  EXPECT_EQ(create_code([](RunHeader& h) { h.state_layers = {}; }), Code::kInvalidArgument);
  EXPECT_EQ(create_code([](RunHeader& h) { h.state_layers = {1, 2, 1}; }), Code::kInvalidArgument);
  EXPECT_EQ(create_code([](RunHeader& h) { h.state_layers = {-1}; }), Code::kInvalidArgument);
  EXPECT_EQ(create_code([](RunHeader& h) { h.state_shape = {2, 0}; }), Code::kInvalidArgument);
  EXPECT_EQ(create_code([](RunHeader& h) { h.state_shape = {1 << 16, 1 << 16}; }),
            Code::kInvalidArgument);
  EXPECT_EQ(create_code([](RunHeader& h) { h.model_fingerprint.clear(); }),
            Code::kInvalidArgument);

  const RunHeader h = TestHeader();
  Result<RunFile> run = RunFile::Create(h);
  ASSERT_OK(run.status());
  LayerStates states = StatesAt(h, 0, 0);
  LayerStates two_layers(states.begin(), states.begin() + 2);
  EXPECT_EQ(run->AppendSnapshot(0, ViewOf(two_layers)).code(), Code::kInvalidArgument);
  states[1].pop_back();
  EXPECT_EQ(run->AppendSnapshot(0, ViewOf(states)).code(), Code::kInvalidArgument);
  ASSERT_OK(Advance(*run, 0));
  ASSERT_OK(Advance(*run, 1));
  EXPECT_EQ(run->AppendSnapshot(1, ViewOf(StatesAt(h, 1, 0))).code(), Code::kInvalidArgument);
  EXPECT_EQ(run->AppendMetrics(MetricsAt(h, 1)).code(), Code::kInvalidArgument);
  StepMetrics short_norms = MetricsAt(h, 2);
  short_norms.state_norm.pop_back();
  EXPECT_EQ(run->AppendMetrics(short_norms).code(), Code::kInvalidArgument);
  EXPECT_EQ(run->SetOptimizer(-1, ViewOf(states), ViewOf(states), ViewOf(states)).code(),
            Code::kInvalidArgument);
  for (const char* name : {"", "a/b", ".hidden"})
    EXPECT_EQ(run->WriteEval(name, "{}").code(), Code::kInvalidArgument) << name;
  EXPECT_EQ(run->WriteEval("x", "{oops").code(), Code::kInvalidArgument);

  RunFileContents c = ExpectedAfter(h, 2);
  c.history[0].pop_back();
  EXPECT_EQ(RunFile::Restore(c).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(LoadRunFile(test::TempDir("run_file_missing") + "/none.h5").status().code(),
            Code::kNotFound);
}

TEST(RunFile, TruncatedFileFallsBackToPrev) {
  const std::string path = test::TempDir("run_file_truncated") + "/run.h5";
  const RunHeader h = TestHeader();
  CommitThrough(path, 2);
  const std::vector<char> whole = ReadBytes(path);
  ASSERT_GT(whole.size(), 4096u);
  for (size_t len : {size_t{0}, size_t{1}, size_t{8}, size_t{48}, size_t{512}, whole.size() / 4,
                     whole.size() / 2, whole.size() - 100, whole.size() - 1}) {
    WriteBytes(path, std::vector<char>(whole.begin(), whole.begin() + static_cast<long>(len)));
    Result<RunFileContents> got = LoadRunFile(path);
    EXPECT_EQ(got.status().code(), Code::kCorruption) << "length " << len;
    Result<LoadedRunFile> latest = LoadLatestGood(path);
    ASSERT_OK(latest.status());
    EXPECT_TRUE(latest->from_prev);
    EXPECT_EQ(latest->path, PrevRunFilePath(path));
    EXPECT_NE(latest->reason.find("Corruption"), std::string::npos) << latest->reason;
    EXPECT_TRUE(SameContents(latest->contents, ExpectedAfter(h, 1)));
  }
}

// Offsets of raw data the test can damage: the contiguous optimizer tensors and one compressed
// snapshot chunk.
struct DataRegion {
  std::string dataset;
  haddr_t offset;
  hsize_t size;
};

std::vector<DataRegion> DataRegions(const std::string& path) {
  std::vector<DataRegion> regions;
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  for (const char* name : {"/optimizer/s0/5", "/optimizer/exp_avg_sq/9", "/states/1"}) {
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    DataRegion r{name, H5Dget_offset(ds), H5Dget_storage_size(ds)};
    if (std::string(name) == "/states/1") {
      const hsize_t coord[4] = {1, 0, 0, 0};
      unsigned filter_mask = 0;
      EXPECT_GE(H5Dget_chunk_info_by_coord(ds, coord, &filter_mask, &r.offset, &r.size), 0);
    }
    EXPECT_NE(r.offset, HADDR_UNDEF) << name;
    regions.push_back(r);
    H5Dclose(ds);
  }
  H5Fclose(f);
  return regions;
}

// Flips one bit (which one varies with the offset) of the file in place; flipping it again
// undoes it.
bool FlipBit(const std::string& path, size_t offset) {
  const int fd = open(path.c_str(), O_RDWR);
  if (fd < 0) return false;
  char byte = 0;
  bool ok = pread(fd, &byte, 1, static_cast<off_t>(offset)) == 1;
  byte = static_cast<char>(byte ^ (1 << (offset % 8)));
  ok = ok && pwrite(fd, &byte, 1, static_cast<off_t>(offset)) == 1;
  close(fd);
  return ok;
}

TEST(RunFile, FlipInsideDatasetDataIsCorruptionNamingIt) {
  const std::string path = test::TempDir("run_file_data_flips") + "/run.h5";
  const RunHeader h = TestHeader();
  CommitThrough(path, 2);
  for (const DataRegion& r : DataRegions(path)) {
    for (hsize_t at : {hsize_t{0}, r.size / 2, r.size - 1}) {
      SCOPED_TRACE(r.dataset + " +" + std::to_string(at));
      ASSERT_TRUE(FlipBit(path, static_cast<size_t>(r.offset + at)));
      Result<RunFileContents> got = LoadRunFile(path);
      ASSERT_EQ(got.status().code(), Code::kCorruption);
      EXPECT_NE(got.status().message().find(r.dataset + ":"), std::string::npos)
          << got.status().ToString();
      Result<LoadedRunFile> latest = LoadLatestGood(path);
      ASSERT_OK(latest.status());
      EXPECT_TRUE(latest->from_prev);
      EXPECT_NE(latest->reason.find(r.dataset), std::string::npos) << latest->reason;
      EXPECT_TRUE(SameContents(latest->contents, ExpectedAfter(h, 1)));
      ASSERT_TRUE(FlipBit(path, static_cast<size_t>(r.offset + at)));
    }
  }
  Result<RunFileContents> restored = LoadRunFile(path);
  ASSERT_OK(restored.status());
  EXPECT_TRUE(SameContents(*restored, ExpectedAfter(h, 2)));
}

// A bit flipped anywhere (metadata, checksums, attributes, data, padding) is detected as
// Corruption or has no effect: never a crash, never different contents. The loads run in a
// child process, because HDF5 1.10 leaks a few hundred bytes on some of its error paths for
// damaged metadata (LeakSanitizer would report libhdf5 in this process), and because a crash
// must be reported with its offset rather than end the test binary.
TEST(RunFile, FlipAnywhereIsDetectedOrHarmless) {
  const std::string path = test::TempDir("run_file_flips") + "/run.h5";
  CommitThrough(path, 2);
  const RunFileContents want = ExpectedAfter(TestHeader(), 2);
  const size_t size = fs::file_size(path);
  constexpr size_t kStride = 17;  // ~1,900 loads: about 2 s under ASan
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(fds[0]);
    for (size_t offset = 0; offset < size; offset += kStride) {
      if (!FlipBit(path, offset)) _exit(3);
      Result<RunFileContents> got = LoadRunFile(path);
      if (!FlipBit(path, offset)) _exit(3);
      const char verdict = got.ok() ? (SameContents(*got, want) ? 'H' : 'W')
                                    : (got.status().code() == Code::kCorruption ? 'D' : 'E');
      if (write(fds[1], &verdict, 1) != 1) _exit(2);
    }
    _exit(0);
  }
  close(fds[1]);
  std::string verdicts;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;)
    verdicts.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int wstatus = 0;
  ASSERT_EQ(waitpid(child, &wstatus, 0), child);
  EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0)
      << "the loading process died at the flip at offset " << verdicts.size() * kStride
      << " (wait status " << wstatus << ")";
  ASSERT_EQ(verdicts.size(), (size + kStride - 1) / kStride);
  for (size_t i = 0; i < verdicts.size(); ++i) {
    EXPECT_NE(verdicts[i], 'W') << "flip at " << i * kStride << " loaded different contents";
    EXPECT_NE(verdicts[i], 'E') << "flip at " << i * kStride << ": an error but not Corruption";
  }
  const auto detected = std::count(verdicts.begin(), verdicts.end(), 'D');
  EXPECT_GT(detected, 0);
  std::printf("[          ] %zu-byte file, a bit flipped every %zu bytes: %td detected, %td "
              "harmless\n",
              size, kStride, detected, std::count(verdicts.begin(), verdicts.end(), 'H'));
}

TEST(RunFile, CommitStepsRunInOrder) {
  const std::string path = test::TempDir("run_file_steps") + "/run.h5";
  Result<RunFile> run = RunFile::Create(TestHeader());
  ASSERT_OK(run.status());
  std::vector<int> seen;
  CommitOptions record;
  record.after_step = [&seen](CommitStep s) {
    seen.push_back(static_cast<int>(s));
    return true;
  };
  ASSERT_OK(run->Commit(path, record));  // first commit: nothing to move to .prev
  EXPECT_EQ(seen, (std::vector<int>{1, 2, 3, 4, 5, 8, 9}));
  seen.clear();
  ASSERT_OK(run->Commit(path, record));
  EXPECT_EQ(seen, (std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8, 9}));
  seen.clear();
  record.verify = false;
  ASSERT_OK(run->Commit(path, record));
  EXPECT_EQ(seen, (std::vector<int>{1, 2, 3, 4, 6, 7, 8, 9}));
  ASSERT_EQ(kNumCommitSteps, 9);
}

CommitOptions CrashAfter(int k) {
  CommitOptions o;
  o.after_step = [k](CommitStep s) { return static_cast<int>(s) != k; };
  return o;
}

// A crash between any two steps of a commit leaves the last committed file loadable, and the
// next commit recovers (removing the dead temp file).
TEST(RunFile, CrashAtEveryCommitStepLeavesLastCommitLoadable) {
  const RunHeader h = TestHeader();
  const int new_moved_in = static_cast<int>(CommitStep::kNewMovedIn);
  for (int k = 1; k <= kNumCommitSteps; ++k) {
    SCOPED_TRACE("crash after " + std::string(CommitStepName(static_cast<CommitStep>(k))));
    const std::string dir = test::TempDir("run_file_crash_" + std::to_string(k));
    const std::string path = dir + "/run.h5";
    RunFile run = CommitThrough(path, 2);
    ASSERT_OK(Advance(run, 3));
    EXPECT_EQ(run.Commit(path, CrashAfter(k)).code(), Code::kInternal);

    const int64_t committed = k >= new_moved_in ? 3 : 2;
    Result<LoadedRunFile> latest = LoadLatestGood(path);
    ASSERT_OK(latest.status());
    EXPECT_TRUE(SameContents(latest->contents, ExpectedAfter(h, committed)));
    const bool between_renames = k == static_cast<int>(CommitStep::kCurrentMovedToPrev) ||
                                 k == static_cast<int>(CommitStep::kPrevRenameSynced);
    EXPECT_EQ(latest->from_prev, between_renames);
    if (between_renames) {
      EXPECT_NE(latest->reason.find("Not found"), std::string::npos) << latest->reason;
    }

    ASSERT_OK(run.Commit(path));
    EXPECT_EQ(CountTempFiles(dir), 0);
    Result<RunFileContents> now = LoadRunFile(path);
    ASSERT_OK(now.status());
    EXPECT_TRUE(SameContents(*now, ExpectedAfter(h, 3)));
    Result<RunFileContents> prev = LoadRunFile(PrevRunFilePath(path));
    ASSERT_OK(prev.status());
    EXPECT_EQ(prev->committed_step, committed);
  }
}

// Resumed from <path>.prev because <path> is damaged: the commits that follow must never put the
// damaged file in place of the good <path>.prev. The first commit replaces <path> without
// rotating it (steps 6 and 7 do not happen); at every step of it (checked from the hook, then
// stopped there as a crash would) a good commit is loadable; the next commit recovers, and then
// <path> is the new commit and <path>.prev still the good file, byte for byte (or the new commit
// again, when the crash came after it was renamed in).
TEST(RunFile, CommitAfterResumeFromPrevKeepsAGoodFileAtEveryStep) {
  const RunHeader h = TestHeader();
  const int new_moved_in = static_cast<int>(CommitStep::kNewMovedIn);
  for (int k : {1, 2, 3, 4, 5, 8, 9, 0}) {  // 0: no crash
    SCOPED_TRACE(k > 0 ? "crash after " + std::string(CommitStepName(static_cast<CommitStep>(k)))
                       : std::string("no crash"));
    const std::string dir = test::TempDir("run_file_damaged_resume_" + std::to_string(k));
    const std::string path = dir + "/run.h5";
    const std::string prev = PrevRunFilePath(path);
    CommitThrough(path, 2);
    const std::vector<char> whole = ReadBytes(path);
    WriteBytes(path, std::vector<char>(whole.begin(), whole.begin() + whole.size() / 2));
    const std::vector<char> good_prev = ReadBytes(prev);
    Result<LoadedRunFile> loaded = LoadLatestGood(path);
    ASSERT_OK(loaded.status());
    ASSERT_TRUE(loaded->from_prev);
    ASSERT_EQ(loaded->contents.committed_step, 1);
    Result<RunFile> run = RunFile::Restore(*loaded);
    ASSERT_OK(run.status());
    ASSERT_OK(Advance(*run, 2));

    CommitOptions options;
    std::vector<int> seen;
    options.after_step = [&](CommitStep step) {
      seen.push_back(static_cast<int>(step));
      Result<LoadedRunFile> latest = LoadLatestGood(path);
      EXPECT_TRUE(latest.ok()) << "after " << CommitStepName(step) << ": "
                               << latest.status().ToString();
      if (latest.ok()) {
        const int64_t at = latest->contents.committed_step;
        EXPECT_TRUE(at == 1 || at == 2) << "after " << CommitStepName(step) << ": step " << at;
        EXPECT_TRUE(SameContents(latest->contents, ExpectedAfter(h, at)))
            << "after " << CommitStepName(step);
      }
      return static_cast<int>(step) != k;
    };
    const Status first = run->Commit(path, options);
    if (k > 0) {
      EXPECT_EQ(first.code(), Code::kInternal) << first.ToString();
      EXPECT_EQ(seen.back(), k);
      ASSERT_OK(run->Commit(path));
    } else {
      ASSERT_OK(first);
      EXPECT_EQ(seen, (std::vector<int>{1, 2, 3, 4, 5, 8, 9}));
    }
    EXPECT_EQ(CountTempFiles(dir), 0);
    Result<RunFileContents> now = LoadRunFile(path);
    ASSERT_OK(now.status());
    EXPECT_TRUE(SameContents(*now, ExpectedAfter(h, 2)));
    Result<RunFileContents> older = LoadRunFile(prev);
    ASSERT_OK(older.status());
    if (k < new_moved_in) {
      EXPECT_TRUE(ReadBytes(prev) == good_prev) << "<path>.prev is no longer the good file";
    } else {
      EXPECT_TRUE(SameContents(*older, ExpectedAfter(h, 2)));
    }
  }
}

TEST(RunFile, CrashDuringFirstCommitLeavesNothingOrTheFile) {
  const RunHeader h = TestHeader();
  for (int k : {1, 2, 3, 4, 5, 8, 9}) {  // 6 and 7 do not happen without an existing file
    SCOPED_TRACE("crash after " + std::string(CommitStepName(static_cast<CommitStep>(k))));
    const std::string path = test::TempDir("run_file_first_crash_" + std::to_string(k)) + "/r.h5";
    Result<RunFile> run = RunFile::Create(h);
    ASSERT_OK(run.status());
    ASSERT_OK(Advance(*run, 0));
    EXPECT_EQ(run->Commit(path, CrashAfter(k)).code(), Code::kInternal);
    Result<LoadedRunFile> latest = LoadLatestGood(path);
    if (k < static_cast<int>(CommitStep::kNewMovedIn)) {
      EXPECT_EQ(latest.status().code(), Code::kNotFound) << latest.status().ToString();
    } else {
      ASSERT_OK(latest.status());
      EXPECT_TRUE(SameContents(latest->contents, ExpectedAfter(h, 0)));
    }
  }
}

// The child resumes from the latest good file and commits step after step until killed,
// writing one byte to `progress` after each commit that returned OK.
[[noreturn]] void CommitForever(const std::string& path, int progress) {
  Result<LoadedRunFile> loaded = LoadLatestGood(path);
  if (!loaded.ok()) _exit(2);
  Result<RunFile> run = RunFile::Restore(*loaded);
  if (!run.ok()) _exit(3);
  for (int64_t step = loaded->contents.committed_step + 1; step < 100000; ++step) {
    if (!Advance(*run, step).ok() || !run->Commit(path).ok()) _exit(4);
    if (write(progress, "c", 1) != 1) _exit(5);
  }
  _exit(0);
}

// SIGKILL lands at a random moment after the child's first commit: whatever it was doing, the
// latest good file holds every commit that returned OK (and at most the one in flight), and its
// contents are exactly those of its step.
TEST(RunFile, SigkillDuringCommitsNeverLosesACommit) {
  const std::string dir = test::TempDir("run_file_sigkill");
  const std::string path = dir + "/run.h5";
  const RunHeader h = TestHeader();
  CommitThrough(path, 0);
  std::mt19937 rng(20240607);
  std::uniform_int_distribution<int> delay_us(0, 40000);
  int64_t step = 0;
  for (int iteration = 0; iteration < 12; ++iteration) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      close(fds[0]);
      CommitForever(path, fds[1]);
    }
    close(fds[1]);
    char byte = 0;
    const bool first_commit = read(fds[0], &byte, 1) == 1;  // EOF: the child failed
    if (first_commit) std::this_thread::sleep_for(std::chrono::microseconds(delay_us(rng)));
    ASSERT_EQ(kill(child, SIGKILL), 0);
    int wstatus = 0;
    ASSERT_EQ(waitpid(child, &wstatus, 0), child);
    int64_t reported = first_commit ? 1 : 0;
    for (ssize_t n; (n = read(fds[0], &byte, 1)) > 0;) reported += n;
    close(fds[0]);
    ASSERT_TRUE(first_commit) << "the child exited before its first commit, status " << wstatus;

    Result<LoadedRunFile> latest = LoadLatestGood(path);
    ASSERT_OK(latest.status());
    const int64_t loaded = latest->contents.committed_step;
    EXPECT_GE(loaded, step + reported) << "a commit that returned OK was lost";
    EXPECT_LE(loaded, step + reported + 1);
    EXPECT_TRUE(SameContents(latest->contents, ExpectedAfter(h, loaded))) << "step " << loaded;
    step = loaded;
  }
  std::printf("[          ] 12 kills; the run reached step %lld\n", static_cast<long long>(step));
  Result<LoadedRunFile> latest = LoadLatestGood(path);
  ASSERT_OK(latest.status());
  Result<RunFile> run = RunFile::Restore(latest->contents);
  ASSERT_OK(run.status());
  ASSERT_OK(run->Commit(path));
  EXPECT_EQ(CountTempFiles(dir), 0);
}

TEST(RunFile, FingerprintMismatchRefusesToResume) {
  const RunFileContents c = ExpectedAfter(TestHeader(), 0);
  ASSERT_OK(CheckFingerprint(c, "qwen3_5-test:sha256=abc123"));
  const Status s = CheckFingerprint(c, "falcon_h1-test:sha256=def456");
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "run file was written for model qwen3_5-test:sha256=abc123, this model is "
            "falcon_h1-test:sha256=def456; refusing to resume");
}

TEST(RunFile, LoadLatestGoodWhenNeitherFileIsGood) {
  const std::string path = test::TempDir("run_file_neither") + "/run.h5";
  EXPECT_EQ(LoadLatestGood(path).status().code(), Code::kNotFound);
  WriteBytes(path, std::vector<char>(100, 'x'));
  WriteBytes(PrevRunFilePath(path), std::vector<char>(10, 'y'));
  const Status s = LoadLatestGood(path).status();
  EXPECT_EQ(s.code(), Code::kCorruption);
  EXPECT_NE(s.message().find(path + ":"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find(PrevRunFilePath(path) + ":"), std::string::npos) << s.ToString();
}

// A newer format is not "damage": LoadLatestGood must not quietly resume from an older file.
TEST(RunFile, UnsupportedVersionIsReportedNotFallenBackFrom) {
  const std::string path = test::TempDir("run_file_version") + "/run.h5";
  CommitThrough(path, 1);
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
  const int32_t future = kRunFileFormatVersion + 1;
  ASSERT_GE(H5Awrite(a, H5T_NATIVE_INT32, &future), 0);
  H5Aclose(a);
  H5Fclose(f);
  EXPECT_EQ(LoadRunFile(path).status().code(), Code::kInvalidArgument);
  const Status s = LoadLatestGood(path).status();
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("format_version 2"), std::string::npos) << s.ToString();
}

}  // namespace
}  // namespace s0
