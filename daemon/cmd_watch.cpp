// `s0 watch JOB`: follows a job until it is over. On a terminal, a live view redrawn in place: the
// job's line and a progress bar per run (stage, step, loss, ETA); otherwise (a pipe, a log file)
// plain lines, one each time a run's stage or step changes. Exit status: 0 when the job is done
// or cancelled, 3 when it failed (as `s0d run`), 69 when the daemon went away.
#include <unistd.h>

#include <map>

#include "daemon/client.h"
#include "daemon/commands.h"

namespace s0::cli {
namespace {

constexpr int kBarWidth = 24;
constexpr int kMaxRunLines = 30;  // a large sweep's live view shows its running runs only

struct WatchArgs {
  std::string job_id;
  ClientOptions client;
};

class LiveView {
 public:
  void Draw(const proto::JobStatus& job) {
    std::vector<std::string> lines = {FormatJob(job)};
    const bool all = job.runs_size() <= kMaxRunLines;
    for (const proto::RunProgress& r : job.runs()) {
      if (all || r.stage() == "train") lines.push_back(FormatRun(r, kBarWidth));
    }
    if (!all) lines.push_back("  (" + std::to_string(job.runs_size()) + " runs; running ones shown)");
    if (drawn_ > 0) std::printf("\x1b[%dA", drawn_);  // back to the first line of the last view
    for (const std::string& l : lines) std::printf("\x1b[2K%s\n", l.c_str());
    for (int extra = int(lines.size()); extra < drawn_; ++extra) std::printf("\x1b[2K\n");
    drawn_ = std::max(drawn_, int(lines.size()));
    std::fflush(stdout);
  }

 private:
  int drawn_ = 0;
};

class PlainLines {
 public:
  void Draw(const proto::JobStatus& job) {
    const std::string head = FormatJob(job);
    if (head != head_) std::printf("%s\n", head.c_str());
    head_ = head;
    for (const proto::RunProgress& r : job.runs()) {
      auto& [stage, step] = seen_[r.run_id()];
      if (r.stage() == stage && r.step() == step) continue;
      stage = r.stage();
      step = r.step();
      std::printf("%s\n", FormatRun(r, 0).c_str());
    }
    std::fflush(stdout);
  }

 private:
  std::string head_;
  std::map<std::string, std::pair<std::string, int64_t>> seen_;
};

int Watch(const WatchArgs& a) {
  const bool tty = isatty(STDOUT_FILENO) == 1;
  LiveView live;
  PlainLines plain;
  Client client(a.client);
  Result<proto::WatchEvent> last = client.Watch(a.job_id, [&](const proto::WatchEvent& ev) {
    if (tty) {
      live.Draw(ev.job());
    } else {
      plain.Draw(ev.job());
    }
  });
  if (!last.ok()) return ReportFailure("watch", last.status());
  return last->job().state() == proto::JOB_FAILED ? 3 : 0;
}

}  // namespace

Runner AddWatchCommand(CLI::App& app) {
  auto a = std::make_shared<WatchArgs>();
  CLI::App* sub = app.add_subcommand("watch", "follow a job's progress until it is over");
  sub->add_option("job", a->job_id, "job id")->required();
  AddClientFlags(sub, &a->client);
  return [a] { return Watch(*a); };
}

}  // namespace s0::cli
