// `s0 submit SPEC [--job-id ID]`: queues a job spec on the daemon (`s0d serve`). The client reads
// and checks the spec (so errors show before anything is sent) and sends its text with the
// spec's directory, against which the daemon resolves relative paths as `s0d run` does. Without
// --job-id the client chooses one (NAME-YYYYmmdd-HHMMSS-XXXX) before the first attempt, so a
// retried submit is never queued twice.
#include <ctime>
#include <filesystem>
#include <random>

#include "daemon/client.h"
#include "daemon/commands.h"
#include "daemon/job_queue.h"
#include "daemon/job_spec.h"
#include "daemon/wire.h"

namespace s0::cli {
namespace {

struct SubmitArgs {
  std::string spec;
  std::string job_id;
  ClientOptions client;
};

std::string NewJobId(const std::string& name) {
  char when[32];
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::strftime(when, sizeof when, "%Y%m%d-%H%M%S", &tm);
  char tail[8];
  std::snprintf(tail, sizeof tail, "%04x", unsigned(std::random_device{}() & 0xffff));
  // Names are at most 64 characters; ids too.
  return name.substr(0, 64 - 21) + "-" + when + "-" + tail;
}

int Submit(const SubmitArgs& a) {
  const std::string base = std::filesystem::absolute(a.spec).parent_path().string();
  Result<std::string> text = ReadSmallFile(a.spec);
  if (!text.ok()) return ReportFailure("submit", text.status().Context(a.spec));
  const bool json = a.spec.size() > 5 && a.spec.substr(a.spec.size() - 5) == ".json";
  Result<proto::JobSpec> spec = ParseJobSpec(*text, json, base, a.spec);
  if (!spec.ok()) return ReportFailure("submit", spec.status());
  const std::string job_id = a.job_id.empty() ? NewJobId(spec->name()) : a.job_id;
  if (Status s = CheckJobId(job_id); !s.ok()) return ReportFailure("submit", s);

  proto::Request r;
  proto::SubmitRequest* sub = r.mutable_submit();
  sub->set_job_id(job_id);
  sub->set_spec_text(*text);
  sub->set_json(json);
  sub->set_base_dir(base);
  Result<proto::Reply> reply = CallDaemon(a.client, r);
  if (!reply.ok()) return ReportFailure("submit", reply.status());
  const proto::JobStatus& job = reply->submit().job();
  std::printf("%s%s\n", reply->submit().already() ? "already submitted: " : "", FormatJob(job).c_str());
  return 0;
}

}  // namespace

Runner AddSubmitCommand(CLI::App& app) {
  auto a = std::make_shared<SubmitArgs>();
  CLI::App* sub = app.add_subcommand("submit", "queue a job spec on the daemon (s0d serve)");
  sub->add_option("spec", a->spec, "job spec: protobuf text format, or JSON (*.json)")->required();
  sub->add_option("--job-id", a->job_id,
                  "the job's id ([A-Za-z0-9._-], at most 64); submitting the same spec under the "
                  "same id again is harmless (default: NAME-TIME-RANDOM)");
  AddClientFlags(sub, &a->client);
  return [a] { return Submit(*a); };
}

}  // namespace s0::cli
