// `s0d`: the daemon. `s0d run SPEC` runs one job on the ranks it was started on and exits
// (daemon/run_job.h); `s0d serve --dir DIR` runs jobs from a persistent queue that `s0` clients
// fill over a control socket, until shut down (daemon/serve.h). Start either with mpirun
// (launch/s0d-mpirun), srun, or alone.
#include <CLI/CLI.hpp>

#include "daemon/run_job.h"
#include "daemon/serve.h"

namespace {

// The flags `run` and `serve` share.
void AddCommonFlags(CLI::App* sub, std::string* stop_signal, std::string* log_level) {
  sub->add_option("--stop-signal", *stop_signal,
                  "signal that, like SIGTERM and SIGINT, stops the work at a step boundary with "
                  "everything committed (mpirun forwards USR1 and USR2 to every rank)")
      ->capture_default_str()
      ->check(CLI::IsMember({"USR1", "USR2"}));
  sub->add_option("--log-level", *log_level, "trace, debug, info, warn or error")
      ->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"s0d: the S0 tuning daemon (see README.md, \"Distributed runs\" and \"Serving\")"};
  app.require_subcommand(1);
  s0::RunJobArgs run_args;
  CLI::App* run = app.add_subcommand("run", "run one job spec on the ranks this was started on, then exit");
  run->add_option("spec", run_args.spec_path, "job spec: protobuf text format, or JSON (*.json)")->required();
  AddCommonFlags(run, &run_args.stop_signal, &run_args.log_level);

  s0::ServeArgs serve_args;
  CLI::App* serve = app.add_subcommand(
      "serve", "run jobs from a persistent queue that s0 clients fill, until shut down");
  serve->add_option("--dir", serve_args.dir, "the queue's directory (DIR/jobs/, DIR/s0d.lock)")->required();
  serve->add_option("--endpoint", serve_args.endpoint,
                    "control socket: ipc://PATH (default: $S0_ENDPOINT, else "
                    "ipc://$XDG_RUNTIME_DIR/s0d/control.sock, else ipc:///tmp/s0d-UID/control.sock) "
                    "or tcp://HOST:PORT (off loopback only with CURVE)");
  serve->add_option("--curve-secret", serve_args.curve_secret,
                    "CURVE: file with the server's secret key (s0 keygen writes one)");
  serve->add_option("--curve-clients", serve_args.curve_clients,
                    "CURVE: file with the admitted clients' public keys, one a line");
  serve->add_flag("--require-curve", serve_args.require_curve, "use CURVE on loopback too");
  AddCommonFlags(serve, &serve_args.stop_signal, &serve_args.log_level);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : s0::kExitUsage;
  }
  if (serve->parsed()) return s0::Serve(serve_args);
  return s0::RunJob(run_args);
}
