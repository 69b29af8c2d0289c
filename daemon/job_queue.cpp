#include "daemon/job_queue.h"

#include <google/protobuf/util/message_differencer.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <unordered_set>

#include "daemon/job_output.h"
#include "daemon/job_spec.h"
#include "daemon/wire.h"

namespace s0 {
namespace {

namespace fs = std::filesystem;

proto::Reply Fail(proto::Error::Code code, const std::string& message) {
  proto::Reply r;
  r.mutable_error()->set_code(code);
  r.mutable_error()->set_message(message);
  return r;
}

bool Over(proto::JobState s) {
  return s == proto::JOB_DONE || s == proto::JOB_FAILED || s == proto::JOB_CANCELLED;
}

bool Finished(const proto::RunProgress& r) {
  return r.state() == proto::RUN_DONE || r.state() == proto::RUN_FAILED ||
         r.state() == proto::RUN_CANCELLED;
}

std::string Stage(proto::RunState s) {
  switch (s) {
    case proto::RUN_DONE: return "done";
    case proto::RUN_FAILED: return "failed";
    case proto::RUN_CANCELLED: return "cancelled";
    default: return "queued";
  }
}

std::string StateName(proto::JobState s) {
  std::string n = proto::JobState_Name(s).substr(4);  // "JOB_DONE" -> "DONE"
  for (char& c : n) c = char(std::tolower(static_cast<unsigned char>(c)));
  return n;
}

bool IsCancelled(const proto::JobRecord& rec, const std::string& run_id) {
  return std::find(rec.cancelled_runs().begin(), rec.cancelled_runs().end(), run_id) !=
         rec.cancelled_runs().end();
}

// A run's result into its entry `r` of `rec` (nothing for null). An interrupted run is
// unfinished (it resumes), unless a client cancelled it.
void ApplyResult(const proto::JobRecord& rec, proto::RunProgress* r,
                 const proto::RunResult& result) {
  if (r == nullptr) return;
  proto::RunState state = result.state();
  if (state == proto::RUN_INTERRUPTED) {
    state = IsCancelled(rec, result.run_id()) ? proto::RUN_CANCELLED : proto::RUN_PENDING;
  }
  r->set_state(state);
  r->set_stage(Stage(state));
  r->set_step(result.steps_done());
  if (state == proto::RUN_DONE) r->set_loss(result.final_loss());
  r->set_eta_s(-1);
  r->set_error(result.error());
}

// A run that ended without running to its end, as its result: cancelled by a client, or failed
// (with the step and error its record kept) before the daemon was restarted.
proto::RunResult EndedResult(const proto::RunSpec& run, proto::RunState state,
                             const proto::RunProgress* recorded = nullptr) {
  proto::RunResult r;
  r.set_version(kProtocolVersion);
  r.set_run_id(run.run_id());
  r.set_state(state);
  r.set_seed(run.seed());
  r.set_config_key(run.config_key());
  if (recorded != nullptr) {
    r.set_steps_done(recorded->step());
    r.set_error(recorded->error());
  }
  return r;
}
proto::RunResult CancelledResult(const proto::RunSpec& run) {
  return EndedResult(run, proto::RUN_CANCELLED);
}

}  // namespace

void JobQueue::Entry::IndexRuns() {
  run_at.clear();
  for (int i = 0; i < record.runs_size(); ++i) run_at[record.runs(i).run_id()] = i;
}

proto::RunProgress* JobQueue::Entry::FindRun(const std::string& run_id) {
  auto it = run_at.find(run_id);
  return it == run_at.end() ? nullptr : record.mutable_runs(it->second);
}

Status CheckJobId(const std::string& id) {
  bool ok = !id.empty() && id.size() <= 64 && id != "." && id != "..";
  for (char c : id) {
    ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-');
  }
  if (ok) return Status::Ok();
  return Status::InvalidArgument("job id '" + id + "': expected 1 to 64 of A-Z a-z 0-9 . _ -");
}

Result<std::unique_ptr<JobQueue>> JobQueue::Open(const std::string& dir,
                                                 std::shared_ptr<spdlog::logger> log) {
  std::unique_ptr<JobQueue> q(new JobQueue(dir, std::move(log)));
  const std::string jobs = dir + "/jobs";
  std::error_code ec;
  fs::create_directories(jobs, ec);
  if (ec) return Status::IOError(jobs + ": " + ec.message());
  for (const fs::directory_entry& f : fs::directory_iterator(jobs, ec)) {
    // WriteFileAtomic's temporary files end in ".tmp.<pid>": a crash may leave one behind.
    if (f.path().extension() != ".json") continue;
    const std::string path = f.path().string();
    S0_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, kMaxJobFileBytes));
    Entry e;
    S0_RETURN_IF_ERROR(ParseTextMessage(text, true, &e.record, path, kMaxJobFileBytes));
    if (e.record.job_id() + ".json" != f.path().filename().string()) {
      return Status::Corruption(path + ": holds job '" + e.record.job_id() + "'");
    }
    // Runs that were training when the daemon stopped resume.
    for (proto::RunProgress& r : *e.record.mutable_runs()) {
      if (!Finished(r)) r.set_stage("queued");
      r.set_eta_s(-1);
    }
    e.IndexRuns();
    q->next_seq_ = std::max(q->next_seq_, e.record.seq() + 1);
    q->jobs_[e.record.job_id()] = std::move(e);
  }
  if (ec) return Status::IOError(jobs + ": " + ec.message());
  return q;
}

Status JobQueue::Persist(Entry& e) {
  ++e.revision;
  changed_.notify_all();
  return WriteFileAtomic(dir_ + "/jobs/" + e.record.job_id() + ".json", ToJson(e.record));
}

proto::JobStatus JobQueue::StatusOf(const Entry& e, bool with_runs) const {
  proto::JobStatus s;
  const proto::JobRecord& rec = e.record;
  s.set_job_id(rec.job_id());
  s.set_name(rec.spec().name());
  s.set_state(rec.state());
  s.set_error(rec.error());
  s.set_out_dir(rec.spec().out_dir());
  s.set_revision(e.revision);
  s.set_n_runs(uint32_t(rec.runs_size()));
  for (const proto::RunProgress& r : rec.runs()) {
    if (r.state() == proto::RUN_DONE) s.set_n_done(s.n_done() + 1);
    if (r.state() == proto::RUN_FAILED) s.set_n_failed(s.n_failed() + 1);
    if (r.state() == proto::RUN_CANCELLED) s.set_n_cancelled(s.n_cancelled() + 1);
    if (r.stage() == "train") s.set_n_running(s.n_running() + 1);
    if (with_runs) *s.add_runs() = r;
  }
  return s;
}

proto::Reply JobQueue::Handle(const proto::Request& request) {
  switch (request.body_case()) {
    case proto::Request::kSubmit: return OnSubmit(request.submit());
    case proto::Request::kStatus: return OnStatus(request.status().job_id());
    case proto::Request::kWatch: return OnWatch(request.watch().job_id());
    case proto::Request::kCancel: return OnCancel(request.cancel());
    case proto::Request::kResults: return OnResults(request.results().job_id());
    case proto::Request::kList: return OnList();
    case proto::Request::kShutdown: return OnShutdown();
    case proto::Request::BODY_NOT_SET: break;
  }
  return Fail(proto::Error::BAD_REQUEST, "no command, or a command this daemon does not know");
}

proto::Reply JobQueue::OnSubmit(const proto::SubmitRequest& r) {
  if (Status s = CheckJobId(r.job_id()); !s.ok()) return Fail(proto::Error::BAD_REQUEST, s.message());
  if (!fs::path(r.base_dir()).is_absolute()) {
    return Fail(proto::Error::BAD_REQUEST, "base_dir '" + r.base_dir() + "' is not an absolute path");
  }
  Result<proto::JobSpec> spec = ParseJobSpec(r.spec_text(), r.json(), r.base_dir(), "job " + r.job_id());
  if (!spec.ok()) return Fail(proto::Error::BAD_REQUEST, spec.status().message());
  Result<std::vector<proto::RunSpec>> runs = ExpandJob(*spec);
  if (!runs.ok()) return Fail(proto::Error::BAD_REQUEST, runs.status().Context("job " + r.job_id()).message());
  // The daemon's directory holds its records (every *.json under jobs/ is read as one at start).
  auto resolved = [](const fs::path& p) {  // symbolic links of the existing part resolved
    std::error_code ec;
    fs::path full = fs::weakly_canonical(fs::absolute(p), ec);
    if (ec) full = fs::absolute(p).lexically_normal();
    return full.filename().empty() ? full.parent_path() : full;  // no trailing separator
  };
  const fs::path out = resolved(spec->out_dir()), own = resolved(dir_);
  if (auto [a, b] = std::mismatch(own.begin(), own.end(), out.begin(), out.end()); a == own.end()) {
    return Fail(proto::Error::BAD_REQUEST, "out_dir " + spec->out_dir() + " is inside the daemon's "
                                           "directory " + own.string() + ": choose another");
  }

  std::lock_guard<std::mutex> lock(mu_);
  proto::Reply reply;
  if (auto it = jobs_.find(r.job_id()); it != jobs_.end()) {
    if (!google::protobuf::util::MessageDifferencer::Equals(it->second.record.spec(), *spec)) {
      return Fail(proto::Error::CONFLICT, "job id '" + r.job_id() + "' is taken by another job "
                                          "(its spec differs); choose another --job-id");
    }
    *reply.mutable_submit()->mutable_job() = StatusOf(it->second, true);
    reply.mutable_submit()->set_already(true);
    return reply;
  }
  for (const auto& [id, e] : jobs_) {
    if (e.record.spec().out_dir() == spec->out_dir()) {
      return Fail(proto::Error::CONFLICT, "out_dir " + spec->out_dir() + " belongs to job '" + id + "'");
    }
  }
  Entry e;
  proto::JobRecord& rec = e.record;
  rec.set_version(kProtocolVersion);
  rec.set_job_id(r.job_id());
  rec.set_seq(next_seq_++);
  rec.set_state(proto::JOB_QUEUED);
  *rec.mutable_spec() = std::move(*spec);
  for (const proto::RunSpec& run : *runs) {
    proto::RunProgress* p = rec.add_runs();
    p->set_run_id(run.run_id());
    p->set_seed(run.seed());
    p->set_state(proto::RUN_PENDING);
    p->set_stage("queued");
    p->set_n_steps(run.method().n_steps());
    p->set_eta_s(-1);
  }
  e.IndexRuns();
  if (Status s = Persist(e); !s.ok()) return Fail(proto::Error::INTERNAL, s.ToString());
  log_->info("job {} ({}): queued, {} runs, output {}", r.job_id(), rec.spec().name(),
               rec.runs_size(), rec.spec().out_dir());
  *reply.mutable_submit()->mutable_job() = StatusOf(e, true);
  jobs_[r.job_id()] = std::move(e);
  return reply;
}

const JobQueue::Entry* JobQueue::Find(const std::string& job_id) const {
  auto it = jobs_.find(job_id);
  return it == jobs_.end() ? nullptr : &it->second;
}

proto::Reply JobQueue::OnStatus(const std::string& job_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Entry* e = Find(job_id);
  if (!e) return Fail(proto::Error::NOT_FOUND, "no job '" + job_id + "'");
  proto::Reply reply;
  *reply.mutable_status() = StatusOf(*e, true);
  return reply;
}

proto::Reply JobQueue::OnWatch(const std::string& job_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Entry* e = Find(job_id);
  if (!e) return Fail(proto::Error::NOT_FOUND, "no job '" + job_id + "'");
  proto::Reply reply;
  *reply.mutable_watch()->mutable_job() = StatusOf(*e, true);
  reply.mutable_watch()->set_final(Over(e->record.state()));
  return reply;
}

proto::Reply JobQueue::OnList() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<const Entry*> order;
  for (const auto& [id, e] : jobs_) order.push_back(&e);
  std::sort(order.begin(), order.end(),
            [](const Entry* a, const Entry* b) { return a->record.seq() < b->record.seq(); });
  proto::Reply reply;
  proto::ListReply* list = reply.mutable_list();
  for (const Entry* e : order) *list->add_jobs() = StatusOf(*e, false);
  return reply;
}

proto::Reply JobQueue::OnCancel(const proto::CancelRequest& r) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(r.job_id());
  if (it == jobs_.end()) return Fail(proto::Error::NOT_FOUND, "no job '" + r.job_id() + "'");
  Entry& e = it->second;
  proto::JobRecord& rec = e.record;
  if (rec.state() == proto::JOB_CANCELLED && r.run_id().empty()) {
    // Already so (a client's retry of a cancel that was answered late, say): nothing to do.
    proto::Reply reply;
    *reply.mutable_cancel()->mutable_job() = StatusOf(e, true);
    return reply;
  }
  if (Over(rec.state())) {
    return Fail(proto::Error::CONFLICT, "job '" + r.job_id() + "' is over (" + StateName(rec.state()) + ")");
  }
  std::vector<proto::RunProgress*> targets;
  if (r.run_id().empty()) {
    for (proto::RunProgress& p : *rec.mutable_runs()) {
      if (!Finished(p)) targets.push_back(&p);
    }
    // Only a cancel that stops something makes the job cancelled: one that arrives as the last
    // run finishes leaves a job whose runs are all done.
    if (!targets.empty()) rec.set_cancel_job(true);
  } else {
    proto::RunProgress* p = e.FindRun(r.run_id());
    if (!p) return Fail(proto::Error::NOT_FOUND, "job '" + r.job_id() + "' has no run '" + r.run_id() + "'");
    if (p->state() == proto::RUN_DONE || p->state() == proto::RUN_FAILED) {
      return Fail(proto::Error::CONFLICT, "run '" + r.run_id() + "' is already " + p->stage());
    }
    if (p->state() != proto::RUN_CANCELLED) targets.push_back(p);
  }
  proto::Reply reply;
  for (proto::RunProgress* p : targets) {
    rec.add_cancelled_runs(p->run_id());
    p->set_state(proto::RUN_CANCELLED);
    p->set_stage("cancelled");
    p->set_eta_s(-1);
    if (rec.state() == proto::JOB_RUNNING) e.cancels.push_back(p->run_id());
    reply.mutable_cancel()->add_cancelled(p->run_id());
  }
  // A queued job with nothing left to run is over now.
  if (rec.state() == proto::JOB_QUEUED &&
      std::all_of(rec.runs().begin(), rec.runs().end(), Finished)) {
    rec.set_state(proto::JOB_CANCELLED);
  }
  if (Status s = Persist(e); !s.ok()) return Fail(proto::Error::INTERNAL, s.ToString());
  log_->info("job {}: cancelled {} run{}", r.job_id(), targets.size(), targets.size() == 1 ? "" : "s");
  *reply.mutable_cancel()->mutable_job() = StatusOf(e, true);
  return reply;
}

proto::Reply JobQueue::OnResults(const std::string& job_id) const {
  // A copy, so that the files below are read without the lock (rank 0's main thread needs it at
  // every pump; a slow file system must not stall the job).
  proto::JobRecord rec;
  std::vector<proto::RunResult> results;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const Entry* e = Find(job_id);
    if (!e) return Fail(proto::Error::NOT_FOUND, "no job '" + job_id + "'");
    rec = e->record;
    results = e->results;
  }
  proto::Reply reply;
  const std::string summary_path = rec.spec().out_dir() + "/summary.json";
  if (Over(rec.state()) && rec.error().empty()) {
    Result<std::string> text = ReadSmallFile(summary_path, kMaxJobFileBytes);
    Status s = text.status();
    if (s.ok()) s = ParseTextMessage(*text, true, reply.mutable_results(), summary_path, kMaxJobFileBytes);
    if (s.ok()) return reply;
    log_->warn("job {}: {}; summarizing from the run directories", job_id, s.ToString());
  }
  // Not over (or its summary is unreadable): what is known so far.
  Result<std::vector<proto::RunSpec>> runs = ExpandJob(rec.spec());
  if (!runs.ok()) return Fail(proto::Error::INTERNAL, runs.status().ToString());
  proto::ExpandedJob job;
  job.set_version(kProtocolVersion);
  *job.mutable_spec() = rec.spec();
  std::vector<proto::RunResult> known = results;
  // Sets, not scans: a job may have 100,000 runs.
  std::unordered_set<std::string> have;
  const std::unordered_set<std::string> cancelled(rec.cancelled_runs().begin(),
                                                  rec.cancelled_runs().end());
  for (const proto::RunResult& r : results) have.insert(r.run_id());
  for (const proto::RunSpec& run : *runs) {
    *job.add_runs() = run;
    if (have.count(run.run_id()) > 0) continue;
    if (cancelled.count(run.run_id()) > 0) {
      known.push_back(CancelledResult(run));
      continue;
    }
    Result<proto::RunResult> done = ReadDoneMarker(RunDir(rec.spec().out_dir(), run.run_id()), run.run_id());
    if (done.ok()) known.push_back(std::move(*done));
  }
  *reply.mutable_results() = BuildSummary(job, known);
  return reply;
}

proto::Reply JobQueue::OnShutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!shutdown_) log_->info("shutdown requested by a client");
  shutdown_ = true;
  changed_.notify_all();
  proto::Reply reply;
  reply.mutable_shutdown();
  return reply;
}

bool JobQueue::shutdown_requested() const {
  std::lock_guard<std::mutex> lock(mu_);
  return shutdown_;
}

std::optional<JobQueue::Next> JobQueue::WaitForJob(double timeout_s) {
  std::unique_lock<std::mutex> lock(mu_);
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(timeout_s));
  for (;;) {
    if (shutdown_) return std::nullopt;
    Entry* next = nullptr;
    for (auto& [id, e] : jobs_) {
      if (Over(e.record.state())) continue;
      if (!next || e.record.seq() < next->record.seq()) next = &e;
    }
    if (next) {
      proto::JobRecord& rec = next->record;
      Result<std::vector<proto::RunSpec>> runs = ExpandJob(rec.spec());
      if (!runs.ok()) {  // validated at submit: only an edited record gets here
        rec.set_state(proto::JOB_FAILED);
        rec.set_error(runs.status().ToString());
      } else {
        rec.set_state(proto::JOB_RUNNING);
        next->results.clear();
        next->cancels.clear();
      }
      if (Status s = Persist(*next); !s.ok()) log_->error("job {}: {}", rec.job_id(), s.ToString());
      if (!runs.ok()) continue;
      Next out;
      out.job_id = rec.job_id();
      out.job.set_version(kProtocolVersion);
      *out.job.mutable_spec() = rec.spec();
      for (proto::RunSpec& r : *runs) *out.job.add_runs() = std::move(r);
      return out;
    }
    if (changed_.wait_until(lock, deadline) == std::cv_status::timeout) return std::nullopt;
  }
}

class JobQueue::Observer final : public JobObserver {
 public:
  Observer(JobQueue& q, std::string job_id) : q_(q), id_(std::move(job_id)) {}

  void OnPrepared(std::vector<proto::RunResult>* done, std::vector<proto::RunSpec>* pending) override {
    std::lock_guard<std::mutex> lock(q_.mu_);
    Entry& e = q_.jobs_.at(id_);
    for (const proto::RunResult& r : *done) {
      ApplyResult(e.record, e.FindRun(r.run_id()), r);
      e.results.push_back(r);
    }
    // Runs without a done marker: cancelled ones, and ones that failed before the daemon was
    // stopped (a failure writes no marker, the record keeps it), are over; the others run.
    std::vector<proto::RunSpec> keep;
    const std::unordered_set<std::string> cancelled(e.record.cancelled_runs().begin(),
                                                    e.record.cancelled_runs().end());
    for (proto::RunSpec& run : *pending) {
      const proto::RunProgress* recorded = e.FindRun(run.run_id());
      if (cancelled.count(run.run_id()) > 0) {
        done->push_back(CancelledResult(run));
        e.results.push_back(done->back());
      } else if (recorded != nullptr && recorded->state() == proto::RUN_FAILED) {
        done->push_back(EndedResult(run, proto::RUN_FAILED, recorded));
        e.results.push_back(done->back());
      } else {
        keep.push_back(std::move(run));
      }
    }
    *pending = std::move(keep);
    e.cancels.clear();  // applied: cancelled runs are not handed to the coordinator
    if (Status s = q_.Persist(e); !s.ok()) q_.log_->error("job {}: {}", id_, s.ToString());
  }

  Status OnPump(Coordinator& c, Coordinator::Clock::time_point now) override {
    std::lock_guard<std::mutex> lock(q_.mu_);
    Entry& e = q_.jobs_.at(id_);
    for (const std::string& run_id : e.cancels) {
      Status s = c.CancelRun(run_id);
      // NotFound: the run finished (or was cancelled) before the cancel reached the coordinator.
      if (!s.ok() && s.code() != Code::kNotFound) return s;
    }
    e.cancels.clear();
    if (q_.shutdown_ && !c.stopping()) {
      q_.log_->info("shutdown: no further run is assigned; busy groups stop at their next step "
                   "boundary");
      S0_RETURN_IF_ERROR(c.RequestStop());
    }
    bool changed = false;
    for (; seen_ < c.results().size(); ++seen_) {
      ApplyResult(e.record, e.FindRun(c.results()[seen_].run_id()), c.results()[seen_]);
      e.results.push_back(c.results()[seen_]);
      changed = true;
    }
    if (changed) {
      if (Status s = q_.Persist(e); !s.ok()) q_.log_->error("job {}: {}", id_, s.ToString());
    }
    for (const Coordinator::RunProgress& p : c.Busy(now)) {
      proto::RunProgress* r = e.FindRun(p.run_id);
      if (!r || r->state() == proto::RUN_CANCELLED) continue;
      if (r->stage() != "train" || r->step() != p.step) {
        r->set_stage("train");
        r->set_step(p.step);
        r->set_loss(p.loss);
        ++e.revision;
      }
      r->set_eta_s(p.eta_s);  // changes continuously: not a revision
    }
    return Status::Ok();
  }

 private:
  JobQueue& q_;
  std::string id_;
  size_t seen_ = 0;  // coordinator results applied
};

std::unique_ptr<JobObserver> JobQueue::Observe(const std::string& job_id) {
  return std::make_unique<Observer>(*this, job_id);
}

void JobQueue::Finish(const std::string& job_id, int status, const JobOutcome& outcome) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry& e = jobs_.at(job_id);
  proto::JobRecord& rec = e.record;
  for (proto::RunProgress& r : *rec.mutable_runs()) {
    if (r.stage() == "train") r.set_stage("queued");
    r.set_eta_s(-1);
  }
  if (status == kExitError) {
    rec.set_state(proto::JOB_FAILED);
    rec.set_error(outcome.error);
  } else if (status != kExitStopped) {
    for (const proto::RunResult& r : outcome.summary.runs()) {
      ApplyResult(rec, e.FindRun(r.run_id()), r);
    }
    const proto::JobSummary& s = outcome.summary;
    const bool cancelled = s.n_cancelled() > 0 && (rec.cancel_job() || s.n_cancelled() == s.n_runs());
    rec.set_state(s.n_failed() > 0 ? proto::JOB_FAILED
                  : cancelled      ? proto::JOB_CANCELLED
                                   : proto::JOB_DONE);
  }
  if (Status s = Persist(e); !s.ok()) log_->error("job {}: {}", job_id, s.ToString());
  log_->info("job {}: {}", job_id,
               status == kExitStopped ? "stopped; it resumes when the daemon restarts"
                                      : StateName(rec.state()));
}

}  // namespace s0
