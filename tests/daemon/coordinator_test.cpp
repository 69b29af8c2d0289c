// The coordinator's protocol in one process, over a fake transport and a fake clock: runs go to
// groups as they free up, each exactly once; idle groups are parked (with keepalives) until the
// last busy group finishes; a stop reaches every busy group and assigns nothing more; a cancel
// drops a waiting run or stops only the group running it, and the job goes on; busy runs report
// step, loss and ETA; a silent group and every protocol violation are errors naming the group.
#include "daemon/coordinator.h"

#include <gtest/gtest.h>

#include <deque>
#include <map>
#include <set>

#include "daemon/wire.h"

namespace s0 {
namespace {

using Clock = Coordinator::Clock;
using Msg = proto::CoordinatorMessage;

class FakeTransport : public CoordinatorTransport {
 public:
  Status Send(int group, const Msg& m) override {
    sent[group].push_back(m);
    return Status::Ok();
  }
  Result<std::optional<Incoming>> Poll() override {
    if (!poll_error.ok()) return poll_error;
    if (inbox.empty()) return std::optional<Incoming>();
    Incoming in = inbox.front();
    inbox.pop_front();
    return std::optional<Incoming>(in);
  }
  // What group g was sent since the last call.
  std::vector<Msg> Take(int g) {
    std::vector<Msg> out = std::move(sent[g]);
    sent[g].clear();
    return out;
  }
  std::deque<Incoming> inbox;
  std::map<int, std::vector<Msg>> sent;
  Status poll_error;
};

std::vector<proto::RunSpec> Runs(int n, int64_t steps = 3) {
  std::vector<proto::RunSpec> runs;
  for (int i = 0; i < n; ++i) {
    proto::RunSpec r;
    r.set_version(kProtocolVersion);
    r.set_run_id("seed-" + std::to_string(i));
    r.set_index(uint32_t(i));
    r.set_seed(uint64_t(i));
    r.mutable_method()->set_n_steps(steps);
    runs.push_back(r);
  }
  return runs;
}

proto::WorkerMessage Ready(int g) {
  proto::WorkerMessage m;
  m.set_version(kProtocolVersion);
  m.set_group(uint32_t(g));
  m.mutable_ready();
  return m;
}

proto::WorkerMessage Finished(int g, const std::string& run_id,
                              proto::RunState state = proto::RUN_DONE) {
  proto::WorkerMessage m = Ready(g);
  proto::RunResult* r = m.mutable_ready()->mutable_finished();
  r->set_version(kProtocolVersion);
  r->set_run_id(run_id);
  r->set_state(state);
  return m;
}

proto::WorkerMessage Progress(int g, const std::string& run_id, int64_t step, double loss = 0) {
  proto::WorkerMessage m;
  m.set_version(kProtocolVersion);
  m.set_group(uint32_t(g));
  m.mutable_progress()->set_run_id(run_id);
  m.mutable_progress()->set_step(step);
  m.mutable_progress()->set_loss(loss);
  return m;
}

struct Fixture {
  explicit Fixture(int runs, int groups, double stall = 10, double keepalive = 2)
      : t0(Clock::now()), now(t0) {
    CoordinatorOptions o;
    o.stall_timeout_s = stall;
    o.keepalive_s = keepalive;
    o.group_size = 2;
    c = std::make_unique<Coordinator>(Runs(runs), groups, o, &t, t0);
  }
  Status Deliver(int g, const proto::WorkerMessage& m) {
    t.inbox.push_back({g, m});
    return c->Pump(now);
  }
  void Advance(double s) { now += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s)); }
  // The single message group g was sent, of the expected kind.
  Msg One(int g, Msg::BodyCase kind) {
    std::vector<Msg> got = t.Take(g);
    EXPECT_EQ(got.size(), 1u) << "group " << g;
    if (got.empty()) return Msg();
    EXPECT_EQ(got[0].body_case(), kind) << "group " << g << ": " << got[0].ShortDebugString();
    EXPECT_EQ(got[0].version(), kProtocolVersion);
    return got[0];
  }
  FakeTransport t;
  Clock::time_point t0, now;
  std::unique_ptr<Coordinator> c;
};

TEST(Coordinator, HandsRunsToGroupsAsTheyFreeUpEachExactlyOnce) {
  Fixture f(4, 3);
  ASSERT_TRUE(f.Deliver(0, Ready(0)).ok());
  ASSERT_TRUE(f.Deliver(2, Ready(2)).ok());
  ASSERT_TRUE(f.Deliver(1, Ready(1)).ok());
  EXPECT_EQ(f.One(0, Msg::kAssign).assign().run_id(), "seed-0");
  EXPECT_EQ(f.One(2, Msg::kAssign).assign().run_id(), "seed-1");
  EXPECT_EQ(f.One(1, Msg::kAssign).assign().run_id(), "seed-2");
  ASSERT_TRUE(f.Deliver(2, Progress(2, "seed-1", 1)).ok());
  // Group 2 finishes first and takes the last run; then group 0 finishes and is parked.
  ASSERT_TRUE(f.Deliver(2, Finished(2, "seed-1")).ok());
  EXPECT_EQ(f.One(2, Msg::kAssign).assign().run_id(), "seed-3");
  ASSERT_TRUE(f.Deliver(0, Finished(0, "seed-0")).ok());
  EXPECT_TRUE(f.t.Take(0).empty()) << "parked, not released, while others are busy";
  // Parked groups hear a keepalive every keepalive_s.
  f.Advance(2.5);
  ASSERT_TRUE(f.c->Pump(f.now).ok());
  f.One(0, Msg::kKeepalive);
  ASSERT_TRUE(f.Deliver(1, Finished(1, "seed-2")).ok());
  EXPECT_TRUE(f.t.Take(1).empty());
  EXPECT_FALSE(f.c->finished());
  // The last busy group's result releases everyone.
  ASSERT_TRUE(f.Deliver(2, Finished(2, "seed-3", proto::RUN_FAILED)).ok());
  for (int g = 0; g < 3; ++g) EXPECT_FALSE(f.One(g, Msg::kRelease).release().stopped());
  EXPECT_TRUE(f.c->finished());
  std::multiset<std::string> ids;
  for (const auto& r : f.c->results()) ids.insert(r.run_id());
  EXPECT_EQ(ids, (std::multiset<std::string>{"seed-0", "seed-1", "seed-2", "seed-3"}));
}

TEST(Coordinator, NoRunsReleasesEachGroupAsItAsks) {
  Fixture f(0, 2);
  ASSERT_TRUE(f.Deliver(1, Ready(1)).ok());
  f.One(1, Msg::kRelease);
  EXPECT_FALSE(f.c->finished());
  ASSERT_TRUE(f.Deliver(0, Ready(0)).ok());
  f.One(0, Msg::kRelease);
  EXPECT_TRUE(f.c->finished());
}

TEST(Coordinator, StopReachesBusyGroupsAndAssignsNothingMore) {
  Fixture f(5, 3);
  ASSERT_TRUE(f.Deliver(0, Ready(0)).ok());
  ASSERT_TRUE(f.Deliver(1, Ready(1)).ok());
  f.One(0, Msg::kAssign);
  f.One(1, Msg::kAssign);
  ASSERT_TRUE(f.c->RequestStop().ok());
  f.One(0, Msg::kStop);
  f.One(1, Msg::kStop);
  ASSERT_TRUE(f.c->RequestStop().ok());  // idempotent: no second Stop
  EXPECT_TRUE(f.t.Take(0).empty());
  ASSERT_TRUE(f.Deliver(2, Ready(2)).ok());  // a late starter gets nothing
  EXPECT_TRUE(f.t.Take(2).empty());
  ASSERT_TRUE(f.Deliver(0, Finished(0, "seed-0", proto::RUN_INTERRUPTED)).ok());
  EXPECT_TRUE(f.t.Take(0).empty());
  ASSERT_TRUE(f.Deliver(1, Finished(1, "seed-1", proto::RUN_INTERRUPTED)).ok());
  for (int g = 0; g < 3; ++g) EXPECT_TRUE(f.One(g, Msg::kRelease).release().stopped());
  EXPECT_TRUE(f.c->finished());
  EXPECT_EQ(f.c->results().size(), 2u) << "seed-2, seed-3 and seed-4 never ran";
}

TEST(Coordinator, InterruptedRunOrStopRequestStopsTheJob) {
  {
    Fixture f(4, 2);
    ASSERT_TRUE(f.Deliver(0, Ready(0)).ok());
    ASSERT_TRUE(f.Deliver(1, Ready(1)).ok());
    f.t.Take(0);
    f.t.Take(1);
    ASSERT_TRUE(f.Deliver(1, Finished(1, "seed-1", proto::RUN_INTERRUPTED)).ok());
    EXPECT_TRUE(f.c->stopping());
    f.One(0, Msg::kStop);
    EXPECT_TRUE(f.t.Take(1).empty()) << "parked until group 0 is done";
  }
  {
    Fixture f(4, 2);
    ASSERT_TRUE(f.Deliver(0, Ready(0)).ok());
    f.t.Take(0);
    proto::WorkerMessage stop;
    stop.set_version(kProtocolVersion);
    stop.set_group(1);
    stop.mutable_stop_request();
    ASSERT_TRUE(f.Deliver(1, stop).ok());
    EXPECT_TRUE(f.c->stopping());
    f.One(0, Msg::kStop);
  }
}

std::map<std::string, proto::RunState> States(const Coordinator& c) {
  std::map<std::string, proto::RunState> out;
  for (const auto& r : c.results()) EXPECT_TRUE(out.emplace(r.run_id(), r.state()).second) << r.run_id();
  return out;
}

TEST(Coordinator, CancelDropsAWaitingRunOrStopsOnlyTheGroupRunningIt) {
  Fixture f(4, 2);
  ASSERT_TRUE(f.Deliver(0, Ready(0)).ok());
  ASSERT_TRUE(f.Deliver(1, Ready(1)).ok());
  EXPECT_EQ(f.One(0, Msg::kAssign).assign().run_id(), "seed-0");
  EXPECT_EQ(f.One(1, Msg::kAssign).assign().run_id(), "seed-1");
  ASSERT_TRUE(f.c->CancelRun("seed-3").ok());  // waiting: dropped, nobody told
  EXPECT_TRUE(f.t.Take(0).empty());
  EXPECT_TRUE(f.t.Take(1).empty());
  ASSERT_TRUE(f.c->CancelRun("seed-1").ok());  // busy: only its group stops
  EXPECT_TRUE(f.One(1, Msg::kStop).stop().cancel());
  EXPECT_TRUE(f.t.Take(0).empty());
  ASSERT_TRUE(f.Deliver(1, Finished(1, "seed-1", proto::RUN_INTERRUPTED)).ok());
  EXPECT_FALSE(f.c->stopping()) << "a cancelled run does not stop the job";
  EXPECT_EQ(f.One(1, Msg::kAssign).assign().run_id(), "seed-2") << "seed-3 is not assigned";
  EXPECT_EQ(f.c->CancelRun("seed-1").code(), Code::kNotFound);
  EXPECT_EQ(f.c->CancelRun("seed-9").code(), Code::kNotFound);
  ASSERT_TRUE(f.Deliver(0, Finished(0, "seed-0")).ok());
  ASSERT_TRUE(f.Deliver(1, Finished(1, "seed-2")).ok());
  for (int g = 0; g < 2; ++g) EXPECT_FALSE(f.One(g, Msg::kRelease).release().stopped());
  EXPECT_EQ(States(*f.c), (std::map<std::string, proto::RunState>{{"seed-0", proto::RUN_DONE},
                                                                 {"seed-1", proto::RUN_CANCELLED},
                                                                 {"seed-2", proto::RUN_DONE},
                                                                 {"seed-3", proto::RUN_CANCELLED}}));
}

TEST(Coordinator, CancellingTheLastRunReleasesTheParkedGroupsAndADoneResultStands) {
  {
    Fixture f(1, 2);
    ASSERT_TRUE(f.Deliver(0, Ready(0)).ok());
    ASSERT_TRUE(f.Deliver(1, Ready(1)).ok());  // nothing left: parked
    f.t.Take(0);
    EXPECT_TRUE(f.t.Take(1).empty());
    ASSERT_TRUE(f.c->CancelRun("seed-0").ok());
    f.One(0, Msg::kStop);
    ASSERT_TRUE(f.Deliver(0, Finished(0, "seed-0", proto::RUN_INTERRUPTED)).ok());
    for (int g = 0; g < 2; ++g) EXPECT_FALSE(f.One(g, Msg::kRelease).release().stopped());
    EXPECT_EQ(States(*f.c)["seed-0"], proto::RUN_CANCELLED);
  }
  {
    // The run finished before its group read the cancel: done is done.
    Fixture f(2, 1);
    ASSERT_TRUE(f.Deliver(0, Ready(0)).ok());
    f.t.Take(0);
    ASSERT_TRUE(f.c->CancelRun("seed-1").ok());  // waiting, and the last one
    EXPECT_TRUE(f.t.Take(0).empty()) << "group 0 is busy: nothing to release yet";
    ASSERT_TRUE(f.c->CancelRun("seed-0").ok());
    f.One(0, Msg::kStop);
    ASSERT_TRUE(f.Deliver(0, Finished(0, "seed-0")).ok());
    EXPECT_FALSE(f.One(0, Msg::kRelease).release().stopped());
    EXPECT_EQ(States(*f.c), (std::map<std::string, proto::RunState>{{"seed-0", proto::RUN_DONE},
                                                                   {"seed-1", proto::RUN_CANCELLED}}));
  }
}

TEST(Coordinator, BusyRunsReportStepLossAndEta) {
  Fixture f(1, 1, /*stall=*/100);
  ASSERT_TRUE(f.Deliver(0, Ready(0)).ok());
  f.Advance(5);  // loading the model is not a step
  ASSERT_TRUE(f.Deliver(0, Progress(0, "seed-0", 1, 2.5)).ok());
  std::vector<Coordinator::RunProgress> b = f.c->Busy(f.now);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].run_id, "seed-0");
  EXPECT_EQ(b[0].step, 1);
  EXPECT_EQ(b[0].n_steps, 3);
  EXPECT_EQ(b[0].loss, 2.5);
  EXPECT_EQ(b[0].eta_s, -1) << "one report gives no pace";
  f.Advance(2);
  ASSERT_TRUE(f.Deliver(0, Progress(0, "seed-0", 2, 2.0)).ok());
  f.Advance(0.5);
  b = f.c->Busy(f.now);
  EXPECT_EQ(b[0].loss, 2.0);
  EXPECT_NEAR(b[0].eta_s, 2.0 * 1 - 0.5, 1e-9) << "2 s a step, one step left, 0.5 s into it";
  ASSERT_TRUE(f.Deliver(0, Finished(0, "seed-0")).ok());
  EXPECT_TRUE(f.c->Busy(f.now).empty());
}

TEST(Coordinator, StopRequestCrossingTheReleaseIsHarmless) {
  Fixture f(0, 2);
  ASSERT_TRUE(f.Deliver(1, Ready(1)).ok());
  f.One(1, Msg::kRelease);
  proto::WorkerMessage stop;
  stop.set_version(kProtocolVersion);
  stop.set_group(1);
  stop.mutable_stop_request();
  EXPECT_TRUE(f.Deliver(1, stop).ok());
  EXPECT_FALSE(f.Deliver(1, Ready(1)).ok()) << "anything else after the release is an error";
}

TEST(Coordinator, SilentGroupIsAnErrorAfterTheStallTimeout) {
  Fixture f(2, 2, /*stall=*/5);
  ASSERT_TRUE(f.Deliver(0, Ready(0)).ok());
  ASSERT_TRUE(f.Deliver(1, Ready(1)).ok());
  f.Advance(4);
  ASSERT_TRUE(f.Deliver(0, Progress(0, "seed-0", 1)).ok());
  ASSERT_TRUE(f.c->Pump(f.now).ok());
  f.Advance(1.5);  // group 1: 5.5 s silent; group 0: 1.5 s
  Status s = f.c->Pump(f.now);
  ASSERT_EQ(s.code(), Code::kUnavailable) << s.ToString();
  EXPECT_NE(s.message().find("group 1 (leader rank 2) sent nothing for 5.5 s while running seed-1"),
            std::string::npos)
      << s.message();
}

TEST(Coordinator, GroupThatNeverStartsIsAnError) {
  Fixture f(2, 2, /*stall=*/5);
  f.Advance(4);
  ASSERT_TRUE(f.Deliver(0, Ready(0)).ok());
  f.Advance(2);
  Status s = f.c->Pump(f.now);
  ASSERT_EQ(s.code(), Code::kUnavailable) << s.ToString();
  EXPECT_NE(s.message().find("group 1 (leader rank 2) sent nothing for 6.0 s since the job started"),
            std::string::npos)
      << s.message();
}

TEST(Coordinator, ProtocolViolationsAreErrorsNamingTheGroup) {
  struct Case {
    const char* name;
    std::function<Status(Fixture&)> act;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"result for another run",
       [](Fixture& f) { return f.Deliver(0, Finished(0, "seed-1")); }, "while running seed-0"},
      {"Ready without a result while busy", [](Fixture& f) { return f.Deliver(0, Ready(0)); },
       "without the result of seed-0"},
      {"progress of a run it is not running",
       [](Fixture& f) { return f.Deliver(1, Progress(1, "seed-0", 1)); }, "which it is not running"},
      {"progress backwards",
       [](Fixture& f) {
         Status s = f.Deliver(0, Progress(0, "seed-0", 2));
         return s.ok() ? f.Deliver(0, Progress(0, "seed-0", 2)) : s;
       },
       "progress to step 2 after step 2"},
      {"progress past the last step",
       [](Fixture& f) { return f.Deliver(0, Progress(0, "seed-0", 4)); }, "of 3"},
      {"a result before any run", [](Fixture& f) { return f.Deliver(1, Finished(1, "seed-0")); },
       "before it was given a run"},
      {"claims another group", [](Fixture& f) { return f.Deliver(1, Ready(0)); },
       "says it is from group 0"},
      {"unknown group", [](Fixture& f) { return f.Deliver(7, Ready(7)); }, "from group 7"},
      {"no body",
       [](Fixture& f) {
         proto::WorkerMessage m;
         m.set_version(kProtocolVersion);
         m.set_group(1);
         return f.Deliver(1, m);
       },
       "without a body"},
      {"result with a pending state",
       [](Fixture& f) { return f.Deliver(0, Finished(0, "seed-0", proto::RUN_PENDING)); },
       "has state RUN_PENDING"},
      {"result cancelled by the group itself",
       [](Fixture& f) { return f.Deliver(0, Finished(0, "seed-0", proto::RUN_CANCELLED)); },
       "has state RUN_CANCELLED"},
      {"message after release",
       [](Fixture& f) {
         Fixture g(0, 2);
         Status s = g.Deliver(1, Ready(1));
         return s.ok() ? g.Deliver(1, Ready(1)) : s;
       },
       "after its release"},
      {"transport error",
       [](Fixture& f) {
         f.t.poll_error = Status::InvalidArgument("a message from group 1's leader: version 9");
         return f.c->Pump(f.now);
       },
       "version 9"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    Fixture f(3, 2);
    ASSERT_TRUE(f.Deliver(0, Ready(0)).ok());  // group 0 runs seed-0; group 1 is starting
    Status s = c.act(f);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.message().find(c.expect), std::string::npos) << s.ToString();
  }
}

}  // namespace
}  // namespace s0
