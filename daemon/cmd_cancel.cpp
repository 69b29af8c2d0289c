// `s0 cancel JOB [--run RUN]`: cancels one run, or every unfinished run of the job. A run being
// trained stops at its next step boundary (committed); a cancelled run never runs again.
#include "daemon/client.h"
#include "daemon/commands.h"

namespace s0::cli {
namespace {

struct CancelArgs {
  std::string job_id;
  std::string run_id;
  ClientOptions client;
};

int Cancel(const CancelArgs& a) {
  proto::Request r;
  r.mutable_cancel()->set_job_id(a.job_id);
  r.mutable_cancel()->set_run_id(a.run_id);
  Result<proto::Reply> reply = CallDaemon(a.client, r);
  if (!reply.ok()) return ReportFailure("cancel", reply.status());
  const proto::CancelReply& c = reply->cancel();
  if (c.cancelled_size() == 0) std::printf("nothing left to cancel\n");
  for (const std::string& id : c.cancelled()) std::printf("cancelled %s\n", id.c_str());
  std::printf("%s\n", FormatJob(c.job()).c_str());
  return 0;
}

}  // namespace

Runner AddCancelCommand(CLI::App& app) {
  auto a = std::make_shared<CancelArgs>();
  CLI::App* sub = app.add_subcommand("cancel", "cancel a job, or one of its runs");
  sub->add_option("job", a->job_id, "job id")->required();
  sub->add_option("--run", a->run_id, "only this run (default: every unfinished run)");
  AddClientFlags(sub, &a->client);
  return [a] { return Cancel(*a); };
}

}  // namespace s0::cli
