// `s0 results JOB`: the job's table: per run (seed, state, final loss, wall time, mean |S0|) and
// per grid point the mean and sample standard deviation over its seeds (daemon/job_output.h's
// summary; for a job not yet over, of the runs finished so far).
#include "daemon/client.h"
#include "daemon/commands.h"
#include "daemon/job_output.h"

namespace s0::cli {
namespace {

struct ResultsArgs {
  std::string job_id;
  ClientOptions client;
};

int Results(const ResultsArgs& a) {
  proto::Request r;
  r.mutable_results()->set_job_id(a.job_id);
  Result<proto::Reply> reply = CallDaemon(a.client, r);
  if (!reply.ok()) return ReportFailure("results", reply.status());
  std::fputs(SummaryText(reply->results()).c_str(), stdout);
  return 0;
}

}  // namespace

Runner AddResultsCommand(CLI::App& app) {
  auto a = std::make_shared<ResultsArgs>();
  CLI::App* sub = app.add_subcommand("results", "a job's results: per seed, mean and standard deviation");
  sub->add_option("job", a->job_id, "job id")->required();
  AddClientFlags(sub, &a->client);
  return [a] { return Results(*a); };
}

}  // namespace s0::cli
