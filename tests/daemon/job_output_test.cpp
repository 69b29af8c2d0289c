// The job's output directory: done markers (written, read back, refused when damaged or when
// they name another run), job.json (written once; a rerun of another job is refused), and the
// summary's statistics (mean and sample standard deviation over a grid point's done runs).
#include "daemon/job_output.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "daemon/job_spec.h"
#include "daemon/wire.h"
#include "tests/common/test_paths.h"

namespace s0 {
namespace {

proto::RunResult Done(const std::string& id, uint64_t seed, double loss, std::vector<double> norms,
                      double wall) {
  proto::RunResult r;
  r.set_version(kProtocolVersion);
  r.set_run_id(id);
  r.set_state(proto::RUN_DONE);
  r.set_seed(seed);
  r.set_final_loss(loss);
  r.set_wall_time_s(wall);
  for (size_t l = 0; l < norms.size(); ++l) {
    r.add_layers(int(l) * 2);
    r.add_state_norm(norms[l]);
  }
  return r;
}

proto::ExpandedJob Job(const std::string& out, const std::string& extra = "") {
  const std::string text = "version: 1 name: \"j\" model: \"m\" data: \"d\" out_dir: \"" + out +
                           "\" seeds: [1, 2, 3] " + extra;
  auto spec = ParseJobSpec(text, false, "/", "spec");
  EXPECT_TRUE(spec.ok()) << spec.status().ToString();
  proto::ExpandedJob job;
  job.set_version(kProtocolVersion);
  *job.mutable_spec() = *spec;
  auto runs = ExpandJob(*spec);
  EXPECT_TRUE(runs.ok());
  for (const auto& r : *runs) *job.add_runs() = r;
  return job;
}

TEST(JobOutput, DoneMarkerRoundTripAndRefusals) {
  const std::string dir = test::TempDir("done_marker");
  EXPECT_EQ(ReadDoneMarker(dir, "seed-1").status().code(), Code::kNotFound);
  const proto::RunResult r = Done("seed-1", 1, 2.5, {0.1, 0.2}, 3.0);
  ASSERT_TRUE(WriteDoneMarker(dir, r).ok());
  auto back = ReadDoneMarker(dir, "seed-1");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->final_loss(), 2.5);
  EXPECT_EQ(back->state_norm_size(), 2);
  EXPECT_EQ(ReadDoneMarker(dir, "seed-2").status().code(), Code::kCorruption);
  std::filesystem::resize_file(dir + "/done", std::filesystem::file_size(dir + "/done") / 2);
  Status damaged = ReadDoneMarker(dir, "seed-1").status();
  EXPECT_FALSE(damaged.ok());
  EXPECT_NE(damaged.message().find("/done: not a valid s0.proto.RunResult"), std::string::npos)
      << damaged.ToString();
}

TEST(JobOutput, JobJsonIsWrittenOnceAndGuardsTheDirectory) {
  const std::string out = test::TempDir("job_json") + "/out";
  ASSERT_TRUE(PrepareJobDir(Job(out)).ok());
  EXPECT_TRUE(std::filesystem::exists(out + "/job.json"));
  EXPECT_TRUE(std::filesystem::is_directory(out + "/runs"));
  EXPECT_TRUE(PrepareJobDir(Job(out, "runtime { group_size: 3 }")).ok());
  Status other = PrepareJobDir(Job(out, "method { lr: 0.5 }"));
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.message().find("holds another job"), std::string::npos) << other.ToString();
  std::ofstream(out + "/job.json") << "{\"version\": 1, \"spec\": ";
  Status damaged = PrepareJobDir(Job(out));
  EXPECT_NE(damaged.message().find("job.json: not a valid"), std::string::npos) << damaged.ToString();
}

TEST(JobOutput, SummaryStatisticsAreMeanAndSampleStd) {
  proto::Stat s = Summarize({1.0, 2.0, 4.0});
  EXPECT_EQ(s.n(), 3u);
  EXPECT_DOUBLE_EQ(s.mean(), 7.0 / 3.0);
  EXPECT_DOUBLE_EQ(s.std(), std::sqrt(((1 - 7.0 / 3) * (1 - 7.0 / 3) + (2 - 7.0 / 3) * (2 - 7.0 / 3) +
                                       (4 - 7.0 / 3) * (4 - 7.0 / 3)) / 2.0));
  EXPECT_EQ(Summarize({5.0}).std(), 0.0);
  EXPECT_EQ(Summarize({}).n(), 0u);

  const proto::ExpandedJob job = Job("/out", "grid { lr: [0.1, 0.2] }");
  ASSERT_EQ(job.runs_size(), 6);
  std::vector<proto::RunResult> results = {
      Done("lr-0.1_seed-1", 1, 1.0, {1.0, 10.0}, 5),
      Done("lr-0.1_seed-3", 3, 4.0, {3.0, 30.0}, 7),
      Done("lr-0.1_seed-2", 2, 2.0, {2.0, 20.0}, 6),
      Done("lr-0.2_seed-1", 1, 9.0, {1.0, 1.0}, 1),
  };
  proto::RunResult failed = Done("lr-0.2_seed-2", 2, 0, {}, 0);
  failed.set_state(proto::RUN_FAILED);
  failed.set_error("Internal: the loss is nan");
  results.push_back(failed);
  proto::JobSummary sum = BuildSummary(job, results);
  EXPECT_EQ(sum.n_runs(), 6u);
  EXPECT_EQ(sum.n_done(), 4u);
  EXPECT_EQ(sum.n_failed(), 1u);
  EXPECT_EQ(sum.n_unfinished(), 1u);
  EXPECT_EQ(sum.runs(5).run_id(), "lr-0.2_seed-3");
  EXPECT_EQ(sum.runs(5).state(), proto::RUN_PENDING);
  ASSERT_EQ(sum.configs_size(), 2);
  const proto::ConfigSummary& c = sum.configs(0);
  EXPECT_EQ(c.config_key(), "lr-0.1");
  EXPECT_EQ(c.method().lr(), 0.1);
  EXPECT_EQ(c.final_loss().n(), 3u);
  EXPECT_DOUBLE_EQ(c.final_loss().mean(), 7.0 / 3.0);
  EXPECT_DOUBLE_EQ(c.final_loss().std(), Summarize({1.0, 2.0, 4.0}).std());
  EXPECT_DOUBLE_EQ(c.wall_time_s().mean(), 6.0);
  EXPECT_DOUBLE_EQ(c.wall_time_s().std(), 1.0);
  ASSERT_EQ(c.state_norm_size(), 2);
  EXPECT_EQ(c.state_norm(1).layer(), 2);
  EXPECT_DOUBLE_EQ(c.state_norm(1).state_norm().mean(), 20.0);
  EXPECT_DOUBLE_EQ(c.state_norm(1).state_norm().std(), 10.0);
  EXPECT_EQ(sum.configs(1).final_loss().n(), 1u);
  EXPECT_EQ(sum.configs(1).final_loss().std(), 0.0);

  const std::string text = SummaryText(sum);
  EXPECT_NE(text.find("6 runs: 4 done, 1 failed, 1 unfinished"), std::string::npos) << text;
  EXPECT_NE(text.find("error: Internal: the loss is nan"), std::string::npos) << text;
  EXPECT_NE(text.find("lr-0.1 (3 seeds): final_loss 2.333333 +- 1.527525"), std::string::npos) << text;

  // A grid point none of whose runs is done shows no statistics rather than zeros.
  proto::JobSummary none = BuildSummary(job, {failed});
  const std::string empty = SummaryText(none);
  EXPECT_NE(empty.find("lr-0.1 (0 seeds): final_loss -, wall_s -"), std::string::npos) << empty;
  EXPECT_EQ(empty.find("0.000000 +- 0.000000"), std::string::npos) << empty;
}

}  // namespace
}  // namespace s0
