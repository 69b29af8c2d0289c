// `s0 status [JOB]` and `s0 list`: the daemon's jobs. With a job: its state and every run's stage,
// step, loss and ETA; without: one line per job, as `s0 list`.
#include "daemon/client.h"
#include "daemon/commands.h"

namespace s0::cli {
namespace {

struct StatusArgs {
  std::string job_id;
  ClientOptions client;
};

int List(const std::string& command, const ClientOptions& options) {
  proto::Request r;
  r.mutable_list();
  Result<proto::Reply> reply = CallDaemon(options, r);
  if (!reply.ok()) return ReportFailure(command, reply.status());
  if (reply->list().jobs_size() == 0) std::printf("no jobs\n");
  for (const proto::JobStatus& j : reply->list().jobs()) std::printf("%s\n", FormatJob(j).c_str());
  return 0;
}

int Status(const StatusArgs& a) {
  if (a.job_id.empty()) return List("status", a.client);
  proto::Request r;
  r.mutable_status()->set_job_id(a.job_id);
  Result<proto::Reply> reply = CallDaemon(a.client, r);
  if (!reply.ok()) return ReportFailure("status", reply.status());
  std::printf("%s\n", FormatJob(reply->status()).c_str());
  for (const proto::RunProgress& run : reply->status().runs()) {
    std::printf("%s\n", FormatRun(run, 0).c_str());
  }
  return 0;
}

}  // namespace

Runner AddStatusCommand(CLI::App& app) {
  auto a = std::make_shared<StatusArgs>();
  CLI::App* sub = app.add_subcommand("status", "a job's runs (stage, step, loss, ETA), or every job");
  sub->add_option("job", a->job_id, "job id (default: list every job)");
  AddClientFlags(sub, &a->client);
  return [a] { return Status(*a); };
}

Runner AddListCommand(CLI::App& app) {
  auto a = std::make_shared<ClientOptions>();
  CLI::App* sub = app.add_subcommand("list", "every job the daemon knows, in submission order");
  AddClientFlags(sub, a.get());
  return [a] { return List("list", *a); };
}

}  // namespace s0::cli
