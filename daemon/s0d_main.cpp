// `s0d`: the daemon. `s0d run SPEC` runs one job on the ranks it was started on and exits
// (daemon/run_job.h); start it with mpirun (launch/s0d-mpirun), srun, or alone.
#include <CLI/CLI.hpp>

#include "daemon/run_job.h"

int main(int argc, char** argv) {
  CLI::App app{"s0d: the S0 tuning daemon (see README.md, \"Distributed runs\")"};
  app.require_subcommand(1);
  s0::RunJobArgs args;
  CLI::App* run = app.add_subcommand("run", "run one job spec on the ranks this was started on, then exit");
  run->add_option("spec", args.spec_path, "job spec: protobuf text format, or JSON (*.json)")->required();
  run->add_option("--stop-signal", args.stop_signal,
                  "signal that, like SIGTERM and SIGINT, stops the job at a step boundary with "
                  "everything committed (mpirun forwards USR1 and USR2 to every rank)")
      ->capture_default_str()
      ->check(CLI::IsMember({"USR1", "USR2"}));
  run->add_option("--log-level", args.log_level, "trace, debug, info, warn or error")
      ->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : s0::kExitUsage;
  }
  return s0::RunJob(args);
}
