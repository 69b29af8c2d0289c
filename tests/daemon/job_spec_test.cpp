// Job specs and the checked wire: text and JSON specs parse to the same job; malformed, truncated,
// oversized, unknown-field and wrong-version specs and messages give errors that say what and
// where; expansion order, run ids and config keys; the seeded subsample against an independent
// implementation of std::mt19937_64 (tests/daemon/job_spec_test.cpp's golden values come from a
// from-scratch Python MT19937-64 with the standard's parameters).
#include "daemon/job_spec.h"

#include <sys/stat.h>

#include <gtest/gtest.h>
#include <google/protobuf/util/message_differencer.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "daemon/train_setup.h"
#include "daemon/wire.h"
#include "proto/control.pb.h"
#include "tests/common/test_paths.h"

namespace s0 {
namespace {

const char* kTextSpec = R"(
version: 1
name: "sweep-a"
model: "models/tiny"
data: "/abs/data.jsonl"
out_dir: "out"
method { n_steps: 4 lr: 0.01 layers: "0,1" }
seeds: [3, 1]
subsample: 2
runtime { group_size: 2 stall_timeout_s: 30 }
)";

const char* kJsonSpec = R"({
  "version": 1, "name": "sweep-a", "model": "models/tiny", "data": "/abs/data.jsonl",
  "out_dir": "out", "method": {"n_steps": 4, "lr": 0.01, "layers": "0,1"},
  "seeds": [3, 1], "subsample": 2, "runtime": {"group_size": 2, "stall_timeout_s": 30}
})";

std::string WriteFile(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

Status ParseError(const std::string& text, bool json = false) {
  Result<proto::JobSpec> r = ParseJobSpec(text, json, "/base", "spec");
  return r.ok() ? Status::Ok() : r.status();
}

void ExpectError(const std::string& text, const std::string& needle, bool json = false) {
  Status s = ParseError(text, json);
  ASSERT_FALSE(s.ok()) << "accepted: " << text;
  EXPECT_NE(s.message().find(needle), std::string::npos) << s.ToString();
}

TEST(JobSpec, TextAndJsonGiveTheSameResolvedSpec) {
  auto text = ParseJobSpec(kTextSpec, false, "/base/dir", "spec.txtpb");
  auto json = ParseJobSpec(kJsonSpec, true, "/base/dir", "spec.json");
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  ASSERT_TRUE(json.ok()) << json.status().ToString();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*text, *json));
  EXPECT_EQ(text->model(), "/base/dir/models/tiny");
  EXPECT_EQ(text->data(), "/abs/data.jsonl");
  EXPECT_EQ(text->out_dir(), "/base/dir/out");
  // Defaults filled (the library's), alpha left to the architecture.
  EXPECT_EQ(text->method().l2_lambda(), 5e-4);
  EXPECT_EQ(text->method().grad_clip(), 1.0);
  EXPECT_EQ(text->method().max_length(), 2048);
  EXPECT_EQ(text->method().precision(), "fp64");
  EXPECT_FALSE(text->method().has_alpha());
  EXPECT_EQ(text->runtime().group_size(), 2u);
}

TEST(JobSpec, LoadsFilesByExtensionAndRefusesBadOnes) {
  const std::string dir = test::TempDir("job_spec_files");
  auto a = LoadJobSpec(WriteFile(dir, "a.txtpb", kTextSpec));
  auto b = LoadJobSpec(WriteFile(dir, "b.json", kJsonSpec));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(a->out_dir(), dir + "/out");

  auto missing = LoadJobSpec(dir + "/nope.txtpb");
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  // Truncated in the middle of a message.
  const std::string text(kTextSpec);
  auto truncated = LoadJobSpec(WriteFile(dir, "t.txtpb", text.substr(0, text.find("lr:"))));
  ASSERT_FALSE(truncated.ok());
  EXPECT_NE(truncated.status().message().find("t.txtpb: not a valid s0.proto.JobSpec in protobuf "
                                              "text format: line"),
            std::string::npos)
      << truncated.status().ToString();
  const std::string json(kJsonSpec);
  auto truncated_json = LoadJobSpec(WriteFile(dir, "t.json", json.substr(0, json.size() / 2)));
  ASSERT_FALSE(truncated_json.ok());
  EXPECT_NE(truncated_json.status().message().find("in JSON"), std::string::npos);
  // Over 1 MiB: refused before parsing.
  std::string big(kTextSpec);
  big += "# " + std::string(kMaxMessageBytes, 'x') + "\n";
  auto oversized = LoadJobSpec(WriteFile(dir, "big.txtpb", big));
  ASSERT_FALSE(oversized.ok());
  EXPECT_NE(oversized.status().message().find("over the limit of 1048576"), std::string::npos)
      << oversized.status().ToString();
}

TEST(JobSpec, ClearErrors) {
  const std::string ok(kTextSpec);
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = ok;
    const size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return s.replace(at, from.size(), to);
  };
  ExpectError(with("version: 1", "version: 2"), "spec: version 2, but this s0d reads version 1");
  ExpectError(with("version: 1", ""), "spec: no version");
  ExpectError(with("version: 1", "version: 1 colour: 3"), "line 2:18: Message type \"s0.proto.JobSpec\" has no field named \"colour\"");
  ExpectError(with("n_steps: 4", "n_steps: four"), "line 7");
  ExpectError(with("name: \"sweep-a\"", "name: \"a b\""), "name 'a b'");
  ExpectError(with("model: \"models/tiny\"", ""), "model: required");
  ExpectError(with("seeds: [3, 1]", ""), "seeds: at least one");
  ExpectError(with("seeds: [3, 1]", "seeds: [3, 3]"), "seeds: a seed is listed twice");
  ExpectError(with("lr: 0.01", "lr: -1"), "method.lr: must be > 0");
  ExpectError(with("layers: \"0,1\"", "layers: \"0,,1\""), "method.layers '0,,1'");
  ExpectError(with("layers: \"0,1\"", "precision: \"bf16\""), "method.precision: precision 'bf16'");
  ExpectError(with("group_size: 2", "group_size: 0"), "runtime.group_size");
  ExpectError(with("stall_timeout_s: 30", "stall_timeout_s: -1"), "runtime.stall_timeout_s");
  ExpectError(with("subsample: 2", "subsample: 0"), "subsample: must be >= 1");
  ExpectError(ok + "grid { lr: [0.1, 0.1] }", "grid: a value is listed twice");
  ExpectError(ok + "grid { layers: [\"late\", \"1;2\"] }", "grid.layers '1;2'");
  ExpectError(R"({"version": 1, "name": "x", "colour": 1})", "colour", true);
  ExpectError(R"({"version": 1, "name": )", "in JSON", true);
  ExpectError(R"({"version": 7})", "version 7", true);
}

TEST(JobSpec, ExpandsGridsSeedsInnermostWithStableIds) {
  auto spec = ParseJobSpec(std::string(kTextSpec) + "grid { lr: [0.1, 0.001] layers: [\"early\", \"0,4\"] }",
                           false, "/b", "spec");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  auto runs = ExpandJob(*spec);
  ASSERT_TRUE(runs.ok()) << runs.status().ToString();
  std::vector<std::string> ids, keys;
  for (const auto& r : *runs) {
    ids.push_back(r.run_id());
    keys.push_back(r.config_key());
    EXPECT_EQ(r.version(), kProtocolVersion);
    EXPECT_EQ(r.subsample(), 2u);
    EXPECT_EQ(r.index(), uint32_t(ids.size() - 1));
  }
  EXPECT_EQ(ids, (std::vector<std::string>{
                     "lr-0.1_layers-early_seed-3", "lr-0.1_layers-early_seed-1",
                     "lr-0.1_layers-0+4_seed-3", "lr-0.1_layers-0+4_seed-1",
                     "lr-0.001_layers-early_seed-3", "lr-0.001_layers-early_seed-1",
                     "lr-0.001_layers-0+4_seed-3", "lr-0.001_layers-0+4_seed-1"}));
  EXPECT_EQ(keys[2], "lr-0.1_layers-0+4");
  EXPECT_EQ((*runs)[2].method().lr(), 0.1);
  EXPECT_EQ((*runs)[2].method().layers(), "0,4");
  EXPECT_EQ((*runs)[2].method().n_steps(), 4);

  auto plain = ExpandJob(*ParseJobSpec(kTextSpec, false, "/b", "spec"));
  ASSERT_TRUE(plain.ok());
  ASSERT_EQ(plain->size(), 2u);
  EXPECT_EQ((*plain)[0].run_id(), "seed-3");
  EXPECT_EQ((*plain)[0].config_key(), "default");

  auto options = RunTrainOptions((*runs)[2], {0, 1, 2, 4});
  ASSERT_TRUE(options.ok()) << options.status().ToString();
  EXPECT_EQ(options->layers, (std::vector<int>{0, 4}));
  EXPECT_EQ(options->seed, 3u);
  EXPECT_EQ(options->hp.lr, 0.1);
  auto bad = RunTrainOptions((*runs)[2], {0, 1, 2});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'4' is not a DeltaNet layer index"), std::string::npos);
}

// The largest job the spec allows (10 learning rates x 10,000 random 64-bit seeds = 100,000
// runs) crosses MPI in one message: the step that carries it must decode on every rank. A job
// whose runs take more than kMaxJobBytes is refused when it is expanded, not when a rank
// decodes it (which would end the job, and on a restart of the daemon, end it again).
TEST(JobSpec, TheLargestJobFitsItsMessageAndLargerOnesAreRefusedAtExpansion) {
  auto spec = ParseJobSpec(kTextSpec, false, "/b", "spec");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  spec->clear_seeds();
  std::mt19937_64 gen(7);
  std::set<uint64_t> seeds;
  while (seeds.size() < 10000) seeds.insert(gen());
  for (uint64_t seed : seeds) spec->add_seeds(seed);
  for (int i = 1; i <= 10; ++i) spec->mutable_grid()->add_lr(1e-3 * i + 1e-7 * i * i);
  auto runs = ExpandJob(*spec);
  ASSERT_TRUE(runs.ok()) << runs.status().ToString();
  ASSERT_EQ(runs->size(), 100000u);
  proto::ServeStep step;
  step.set_version(kProtocolVersion);
  proto::ExpandedJob* job = step.mutable_job();
  job->set_version(kProtocolVersion);
  *job->mutable_spec() = *spec;
  for (const proto::RunSpec& r : *runs) *job->add_runs() = r;
  const std::string bytes = EncodeMessage(step);
  EXPECT_GT(bytes.size(), kMaxMessageBytes);  // what the old, single limit refused
  proto::ServeStep back;
  Status decoded = DecodeMessage(bytes, &back, "the next step", kMaxJobMessageBytes);
  ASSERT_TRUE(decoded.ok()) << decoded.ToString();
  EXPECT_EQ(back.job().runs_size(), 100000);

  // Five long layer lists (about 3.4 kB each, near the 4096-character limit; each run carries
  // its list three times: method, id, config key) times 1,000 seeds: about 50 MB of runs.
  std::string layers = "0";
  for (int i = 1; i < 900; ++i) layers += "," + std::to_string(i);
  spec = ParseJobSpec(kTextSpec, false, "/b", "spec");
  spec->clear_seeds();
  for (uint64_t seed = 1; seed <= 1000; ++seed) spec->add_seeds(seed);
  for (int v = 0; v < 5; ++v) spec->mutable_grid()->add_layers(layers + "," + std::to_string(900 + v));
  auto refused = ExpandJob(*spec);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("MiB encoded"), std::string::npos)
      << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("split the sweep"), std::string::npos);
}

TEST(JobSpec, SameJobCheckIgnoresRuntimeOnly) {
  auto spec = ParseJobSpec(kTextSpec, false, "/b", "spec");
  ASSERT_TRUE(spec.ok());
  proto::ExpandedJob a;
  *a.mutable_spec() = *spec;
  auto runs = ExpandJob(*spec);
  ASSERT_TRUE(runs.ok());
  for (const auto& r : *runs) *a.add_runs() = r;
  proto::ExpandedJob b = a;
  b.mutable_spec()->mutable_runtime()->set_group_size(1);
  EXPECT_TRUE(CheckSameJob(a, b).ok());
  b.mutable_runs(1)->mutable_method()->set_lr(0.5);
  Status s = CheckSameJob(a, b);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("holds another job (its run seed-1"), std::string::npos) << s.ToString();
}

TEST(Subsample, MatchesAnIndependentMt19937_64) {
  std::mt19937_64 engine(5489);
  engine.discard(9999);
  ASSERT_EQ(engine(), 9981545732273789042ull);  // the value the C++ standard fixes
  EXPECT_EQ(SubsampleIndices(12, 5, 0), (std::vector<size_t>{0, 5, 6, 8, 9}));
  EXPECT_EQ(SubsampleIndices(12, 5, 1), (std::vector<size_t>{1, 2, 3, 4, 8}));
  EXPECT_EQ(SubsampleIndices(12, 5, 7), (std::vector<size_t>{3, 6, 8, 9, 10}));
  EXPECT_EQ(SubsampleIndices(12, 5, 123456789), (std::vector<size_t>{1, 3, 6, 9, 11}));
  EXPECT_EQ(SubsampleIndices(12, 5, ~uint64_t(0)), (std::vector<size_t>{0, 3, 8, 9, 10}));
  EXPECT_EQ(SubsampleIndices(1000, 10, 42),
            (std::vector<size_t>{58, 249, 369, 406, 414, 478, 505, 780, 897, 958}));
  EXPECT_EQ(SubsampleIndices(4, 4, 9), (std::vector<size_t>{0, 1, 2, 3}));
}

TEST(Wire, RoundTripsAndRefusesDamage) {
  proto::WorkerMessage m;
  m.set_version(kProtocolVersion);
  m.set_group(3);
  m.mutable_progress()->set_run_id("seed-1");
  m.mutable_progress()->set_step(7);
  const std::string bytes = EncodeMessage(m);
  proto::WorkerMessage back;
  ASSERT_TRUE(DecodeMessage(bytes, &back, "msg").ok());
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(m, back));

  Status truncated = DecodeMessage(std::string_view(bytes).substr(0, bytes.size() - 3), &back, "msg");
  EXPECT_EQ(truncated.code(), Code::kCorruption) << truncated.ToString();
  EXPECT_NE(truncated.message().find("msg: not a valid s0.proto.WorkerMessage"), std::string::npos);
  Status garbage = DecodeMessage("\xff\xff\xff\xff", &back, "msg");
  EXPECT_EQ(garbage.code(), Code::kCorruption);
  Status oversized = DecodeMessage(std::string(kMaxMessageBytes + 1, '\0'), &back, "msg");
  EXPECT_NE(oversized.message().find("over the limit"), std::string::npos) << oversized.ToString();
  proto::WorkerMessage v2 = m;
  v2.set_version(2);
  Status wrong = DecodeMessage(EncodeMessage(v2), &back, "a message from group 3's leader");
  EXPECT_NE(wrong.message().find("a message from group 3's leader: version 2, but this s0d reads "
                                 "version 1"),
            std::string::npos)
      << wrong.ToString();
  proto::CoordinatorMessage none;
  Status unversioned = DecodeMessage(EncodeMessage(none), &none, "reply");
  EXPECT_NE(unversioned.message().find("no version"), std::string::npos);
}

TEST(Wire, ReadSmallFileAndAtomicWrite) {
  const std::string dir = test::TempDir("wire_files");
  ASSERT_TRUE(WriteFileAtomic(dir + "/f", "hello").ok());
  auto r = ReadSmallFile(dir + "/f");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "hello");
  EXPECT_EQ(ReadSmallFile(dir + "/f", 4).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ReadSmallFile(dir).status().code(), Code::kInvalidArgument);  // a directory
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    EXPECT_EQ(e.path().filename(), "f") << "temp file left behind";
  }
  // A named pipe with no writer (say a run's done marker replaced by one) is refused at once
  // instead of blocking the reader, which may hold the daemon's queue lock.
  ASSERT_EQ(::mkfifo((dir + "/pipe").c_str(), 0600), 0);
  Result<std::string> pipe = ReadSmallFile(dir + "/pipe");
  EXPECT_EQ(pipe.status().code(), Code::kInvalidArgument);
  EXPECT_NE(pipe.status().message().find("not a regular file"), std::string::npos);
}

}  // namespace
}  // namespace s0
