// `s0 shutdown`: the daemon stops every run at its next step boundary (committed) and exits; a
// daemon started again on the same --dir resumes the unfinished work.
#include "daemon/client.h"
#include "daemon/commands.h"

namespace s0::cli {

Runner AddShutdownCommand(CLI::App& app) {
  auto a = std::make_shared<ClientOptions>();
  CLI::App* sub = app.add_subcommand("shutdown", "stop the daemon (work resumes when it restarts)");
  AddClientFlags(sub, a.get());
  return [a] {
    proto::Request r;
    r.mutable_shutdown();
    Result<proto::Reply> reply = CallDaemon(*a, r);
    if (!reply.ok()) return ReportFailure("shutdown", reply.status());
    std::printf("the daemon is shutting down: runs stop at their next step boundary\n");
    return 0;
  };
}

}  // namespace s0::cli
