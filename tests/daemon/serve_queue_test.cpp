// The persistent queue of `s0d serve` in one process (no MPI, no socket): submit validation and
// idempotency, conflicts, cancels of queued jobs and runs, what a restarted daemon reads back
// (cancels kept, a running job first, cancelled runs never handed out), results of a job not yet
// run, an unreadable record refusing the queue, shutdown.
#include "daemon/job_queue.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <filesystem>
#include <fstream>

#include "daemon/wire.h"
#include "tests/common/test_paths.h"

namespace s0 {
namespace {

namespace fs = std::filesystem;

std::shared_ptr<spdlog::logger> Log() {
  return std::make_shared<spdlog::logger>("queue-test", std::make_shared<spdlog::sinks::stderr_sink_mt>());
}

std::unique_ptr<JobQueue> Open(const std::string& dir) {
  Result<std::unique_ptr<JobQueue>> q = JobQueue::Open(dir, Log());
  EXPECT_TRUE(q.ok()) << q.status().ToString();
  return q.ok() ? std::move(*q) : nullptr;
}

std::string Spec(const std::string& name, const std::string& seeds, const std::string& out_dir) {
  const std::string fixture = test::SourcePath("tests/fixtures/qwen35/text_f32_grouped");
  return "version: 1\nname: \"" + name + "\"\nmodel: \"" + fixture + "/model\"\ndata: \"" + fixture +
         "/data.jsonl\"\nout_dir: \"" + out_dir + "\"\nmethod { n_steps: 3 }\nseeds: " + seeds + "\n";
}

proto::Request Submit(const std::string& job_id, const std::string& spec, const std::string& base) {
  proto::Request r;
  r.mutable_submit()->set_job_id(job_id);
  r.mutable_submit()->set_spec_text(spec);
  r.mutable_submit()->set_base_dir(base);
  return r;
}

proto::Request Cancel(const std::string& job_id, const std::string& run_id = "") {
  proto::Request r;
  r.mutable_cancel()->set_job_id(job_id);
  r.mutable_cancel()->set_run_id(run_id);
  return r;
}

proto::JobStatus StatusOf(JobQueue& q, const std::string& job_id) {
  proto::Request r;
  r.mutable_status()->set_job_id(job_id);
  proto::Reply reply = q.Handle(r);
  EXPECT_FALSE(reply.has_error()) << reply.error().message();
  return reply.status();
}

// What the executor hands the queue's observer when a job starts and no run has a done marker:
// every run pending. Returns the observer's verdict (runs over, runs to execute).
struct Prepared {
  std::vector<proto::RunResult> done;
  std::vector<proto::RunSpec> pending;
};
Prepared PrepareWithoutMarkers(JobQueue& q, const JobQueue::Next& next) {
  Prepared p;
  p.pending.assign(next.job.runs().begin(), next.job.runs().end());
  q.Observe(next.job_id)->OnPrepared(&p.done, &p.pending);
  return p;
}

std::string RunStage(const proto::JobStatus& s, const std::string& run_id) {
  for (const proto::RunProgress& r : s.runs()) {
    if (r.run_id() == run_id) return r.stage();
  }
  return "(absent)";
}

TEST(ServeQueue, SubmitValidatesAndIsIdempotentByJobId) {
  const std::string dir = test::TempDir("serve_queue_submit");
  auto q = Open(dir + "/q");
  ASSERT_TRUE(q);
  const std::string spec = Spec("sweep", "[1, 2]", "out");
  struct Bad {
    proto::Request request;
    proto::Error::Code code;
    std::string message;
  };
  const std::vector<Bad> bad = {
      {Submit("a/b", spec, dir), proto::Error::BAD_REQUEST, "job id 'a/b'"},
      {Submit("..", spec, dir), proto::Error::BAD_REQUEST, "job id '..'"},
      {Submit("j", spec, "rel"), proto::Error::BAD_REQUEST, "is not an absolute path"},
      {Submit("j", "version: 2\n", dir), proto::Error::BAD_REQUEST, "version 2, but this s0d reads version 1"},
      {Submit("j", Spec("sweep", "[]", "out"), dir), proto::Error::BAD_REQUEST, "seeds"},
      // Its job.json there would be read back as a queue record at the next start.
      {Submit("j", Spec("sweep", "[1]", "q/jobs"), dir), proto::Error::BAD_REQUEST,
       "is inside the daemon's directory"},
      {Submit("j", Spec("sweep", "[1]", "q"), dir), proto::Error::BAD_REQUEST,
       "is inside the daemon's directory"},
  };
  for (const Bad& b : bad) {
    proto::Reply r = q->Handle(b.request);
    ASSERT_TRUE(r.has_error()) << b.message;
    EXPECT_EQ(r.error().code(), b.code) << r.error().message();
    EXPECT_NE(r.error().message().find(b.message), std::string::npos) << r.error().message();
  }
  EXPECT_FALSE(fs::exists(dir + "/q/jobs/j.json")) << "nothing refused is queued";

  proto::Reply first = q->Handle(Submit("j1", spec, dir));
  ASSERT_FALSE(first.has_error()) << first.error().message();
  EXPECT_FALSE(first.submit().already());
  EXPECT_EQ(first.submit().job().state(), proto::JOB_QUEUED);
  EXPECT_EQ(first.submit().job().n_runs(), 2u);
  EXPECT_EQ(first.submit().job().out_dir(), dir + "/out") << "resolved against base_dir";
  EXPECT_TRUE(fs::exists(dir + "/q/jobs/j1.json"));

  proto::Reply again = q->Handle(Submit("j1", spec, dir));
  ASSERT_FALSE(again.has_error()) << again.error().message();
  EXPECT_TRUE(again.submit().already());
  proto::Reply taken = q->Handle(Submit("j1", Spec("sweep", "[1, 2, 3]", "out"), dir));
  EXPECT_EQ(taken.error().code(), proto::Error::CONFLICT) << taken.error().message();
  proto::Reply same_out = q->Handle(Submit("j2", Spec("other", "[1]", "out"), dir));
  EXPECT_EQ(same_out.error().code(), proto::Error::CONFLICT);
  EXPECT_NE(same_out.error().message().find("belongs to job 'j1'"), std::string::npos)
      << same_out.error().message();

  proto::Request list;
  list.mutable_list();
  proto::Reply l = q->Handle(list);
  ASSERT_EQ(l.list().jobs_size(), 1);
  EXPECT_EQ(l.list().jobs(0).runs_size(), 0) << "list leaves the runs out";
}

// A failure writes no done marker; the record keeps it, and a restarted daemon does not run the
// run again (nor shows it as failed while training it).
TEST(ServeQueue, ARunThatFailedBeforeARestartIsNotRunAgain) {
  const std::string dir = test::TempDir("serve_queue_failed");
  {
    auto q = Open(dir + "/q");
    ASSERT_TRUE(q);
    ASSERT_FALSE(q->Handle(Submit("j1", Spec("one", "[1, 2]", "o1"), dir)).has_error());
    ASSERT_TRUE(q->WaitForJob(0));
  }
  // What the daemon recorded when seed-1 failed, before it was killed.
  const std::string path = dir + "/q/jobs/j1.json";
  proto::JobRecord rec;
  ASSERT_TRUE(ParseTextMessage(test::ReadFile(path), true, &rec, path).ok());
  ASSERT_EQ(rec.state(), proto::JOB_RUNNING);
  for (proto::RunProgress& r : *rec.mutable_runs()) {
    if (r.run_id() != "seed-1") continue;
    r.set_state(proto::RUN_FAILED);
    r.set_stage("failed");
    r.set_step(2);
    r.set_error("train: the data went away");
  }
  ASSERT_TRUE(WriteFileAtomic(path, ToJson(rec)).ok());

  auto q = Open(dir + "/q");
  ASSERT_TRUE(q);
  std::optional<JobQueue::Next> next = q->WaitForJob(0);
  ASSERT_TRUE(next);
  const Prepared p = PrepareWithoutMarkers(*q, *next);
  ASSERT_EQ(p.pending.size(), 1u);
  EXPECT_EQ(p.pending[0].run_id(), "seed-2");
  ASSERT_EQ(p.done.size(), 1u);
  EXPECT_EQ(p.done[0].run_id(), "seed-1");
  EXPECT_EQ(p.done[0].state(), proto::RUN_FAILED);
  EXPECT_EQ(p.done[0].steps_done(), 2);
  EXPECT_EQ(p.done[0].error(), "train: the data went away");
  EXPECT_EQ(RunStage(StatusOf(*q, "j1"), "seed-1"), "failed");
}

// A whole-job cancel that arrives as the last run finishes cancels nothing: the job is done.
TEST(ServeQueue, ACancelThatStopsNothingLeavesTheJobDone) {
  const std::string dir = test::TempDir("serve_queue_late_cancel");
  auto q = Open(dir + "/q");
  ASSERT_TRUE(q);
  ASSERT_FALSE(q->Handle(Submit("j1", Spec("one", "[1]", "o1"), dir)).has_error());
  std::optional<JobQueue::Next> next = q->WaitForJob(0);
  ASSERT_TRUE(next);
  proto::RunResult finished;
  finished.set_run_id("seed-1");
  finished.set_state(proto::RUN_DONE);
  finished.set_steps_done(3);
  std::vector<proto::RunResult> done = {finished};
  std::vector<proto::RunSpec> pending;
  q->Observe("j1")->OnPrepared(&done, &pending);  // the run is recorded done
  proto::Reply late = q->Handle(Cancel("j1"));
  ASSERT_FALSE(late.has_error()) << late.error().message();
  EXPECT_EQ(late.cancel().cancelled_size(), 0);
  JobOutcome outcome;
  outcome.summary.set_n_runs(1);
  outcome.summary.set_n_done(1);
  *outcome.summary.add_runs() = finished;
  q->Finish("j1", kExitOk, outcome);
  EXPECT_EQ(StatusOf(*q, "j1").state(), proto::JOB_DONE);
}

TEST(ServeQueue, CancelsAreRecordedAndARestartedQueueHonoursThem) {
  const std::string dir = test::TempDir("serve_queue_cancel");
  {
    auto q = Open(dir + "/q");
    ASSERT_TRUE(q);
    ASSERT_FALSE(q->Handle(Submit("j1", Spec("one", "[1, 2, 3]", "o1"), dir)).has_error());
    ASSERT_FALSE(q->Handle(Submit("j2", Spec("two", "[1]", "o2"), dir)).has_error());
    proto::Reply c = q->Handle(Cancel("j1", "seed-2"));
    ASSERT_FALSE(c.has_error()) << c.error().message();
    ASSERT_EQ(c.cancel().cancelled_size(), 1);
    EXPECT_EQ(c.cancel().job().n_cancelled(), 1u);
    EXPECT_EQ(q->Handle(Cancel("j1", "seed-2")).cancel().cancelled_size(), 0) << "idempotent";
    EXPECT_EQ(q->Handle(Cancel("j1", "seed-9")).error().code(), proto::Error::NOT_FOUND);
    EXPECT_EQ(q->Handle(Cancel("j9")).error().code(), proto::Error::NOT_FOUND);
    proto::Reply whole = q->Handle(Cancel("j2"));
    EXPECT_EQ(whole.cancel().job().state(), proto::JOB_CANCELLED) << "nothing left to run";
    proto::Reply retried = q->Handle(Cancel("j2"));  // e.g. a client's retry
    ASSERT_FALSE(retried.has_error()) << retried.error().message();
    EXPECT_EQ(retried.cancel().cancelled_size(), 0);
    EXPECT_EQ(retried.cancel().job().state(), proto::JOB_CANCELLED);

    // Results of a job not yet run: the cancelled run, the others pending.
    proto::Request res;
    res.mutable_results()->set_job_id("j1");
    proto::Reply r = q->Handle(res);
    ASSERT_FALSE(r.has_error()) << r.error().message();
    EXPECT_EQ(r.results().n_runs(), 3u);
    EXPECT_EQ(r.results().n_cancelled(), 1u);
    EXPECT_EQ(r.results().n_unfinished(), 2u);
  }
  {
    // A restart reads it all back; the first job starts and seed-2 is never handed out.
    auto q = Open(dir + "/q");
    ASSERT_TRUE(q);
    EXPECT_EQ(RunStage(StatusOf(*q, "j1"), "seed-2"), "cancelled");
    EXPECT_EQ(StatusOf(*q, "j2").state(), proto::JOB_CANCELLED);
    std::optional<JobQueue::Next> next = q->WaitForJob(0);
    ASSERT_TRUE(next);
    EXPECT_EQ(next->job_id, "j1");
    ASSERT_EQ(next->job.runs_size(), 3);
    const Prepared p = PrepareWithoutMarkers(*q, *next);
    ASSERT_EQ(p.pending.size(), 2u);
    EXPECT_EQ(p.pending[0].run_id(), "seed-1");
    EXPECT_EQ(p.pending[1].run_id(), "seed-3");
    ASSERT_EQ(p.done.size(), 1u);
    EXPECT_EQ(p.done[0].state(), proto::RUN_CANCELLED);
    EXPECT_EQ(StatusOf(*q, "j1").state(), proto::JOB_RUNNING);
  }
  {
    // Killed while running: the job is RUNNING on disk and resumes before later submissions.
    auto q = Open(dir + "/q");
    ASSERT_TRUE(q);
    ASSERT_FALSE(q->Handle(Submit("j3", Spec("three", "[1]", "o3"), dir)).has_error());
    std::optional<JobQueue::Next> next = q->WaitForJob(0);
    ASSERT_TRUE(next);
    EXPECT_EQ(next->job_id, "j1");
    JobOutcome outcome;
    outcome.summary.set_n_runs(3);
    outcome.summary.set_n_done(2);
    outcome.summary.set_n_cancelled(1);
    for (const std::string id : {"seed-1", "seed-3"}) {
      proto::RunResult* r = outcome.summary.add_runs();
      r->set_run_id(id);
      r->set_state(proto::RUN_DONE);
      r->set_steps_done(3);
    }
    q->Finish("j1", kExitOk, outcome);
    const proto::JobStatus s = StatusOf(*q, "j1");
    EXPECT_EQ(s.state(), proto::JOB_DONE);
    EXPECT_EQ(s.n_done(), 2u);
    EXPECT_EQ(s.n_cancelled(), 1u);
    next = q->WaitForJob(0);
    ASSERT_TRUE(next);
    EXPECT_EQ(next->job_id, "j3");
    q->Finish("j3", kExitStopped, JobOutcome{});
    EXPECT_EQ(StatusOf(*q, "j3").state(), proto::JOB_RUNNING) << "stopped: resumes on restart";
    // A client's shutdown: no job is handed out any more.
    proto::Request down;
    down.mutable_shutdown();
    EXPECT_TRUE(q->Handle(down).has_shutdown());
    EXPECT_TRUE(q->shutdown_requested());
    EXPECT_FALSE(q->WaitForJob(0));
  }
}

TEST(ServeQueue, AnUnreadableRecordRefusesTheQueueAndLeftoverTemporaryFilesAreIgnored) {
  const std::string dir = test::TempDir("serve_queue_corrupt");
  fs::create_directories(dir + "/q/jobs");
  std::ofstream(dir + "/q/jobs/j1.json.tmp.1234") << "half a record";
  EXPECT_TRUE(Open(dir + "/q"));
  std::ofstream(dir + "/q/jobs/j1.json") << "{\"version\": 1, \"job_id\": ";
  Result<std::unique_ptr<JobQueue>> q = JobQueue::Open(dir + "/q", Log());
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.status().message().find("j1.json"), std::string::npos) << q.status().ToString();
  std::ofstream(dir + "/q/jobs/j1.json") << "{\"version\": 1, \"job_id\": \"other\"}";
  q = JobQueue::Open(dir + "/q", Log());
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.status().message().find("holds job 'other'"), std::string::npos) << q.status().ToString();
}

}  // namespace
}  // namespace s0
