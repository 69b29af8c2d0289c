// `s0`: the client and local tools. Commands are registered from one table.
#include <cstdio>
#include <utility>
#include <vector>

#include "daemon/commands.h"

namespace {

using Adder = s0::cli::Runner (*)(CLI::App&);
// The command table: one entry per subcommand (see daemon/commands.h).
constexpr Adder kCommands[] = {
    &s0::cli::AddVersionCommand,
    &s0::cli::AddTokenizeCommand,
    &s0::cli::AddGradCommand,
    &s0::cli::AddTrainCommand,
    &s0::cli::AddSubmitCommand,
    &s0::cli::AddStatusCommand,
    &s0::cli::AddListCommand,
    &s0::cli::AddWatchCommand,
    &s0::cli::AddCancelCommand,
    &s0::cli::AddResultsCommand,
    &s0::cli::AddShutdownCommand,
    &s0::cli::AddKeygenCommand,
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"s0: S0 tuning client and local tools (see README.md)"};
  app.require_subcommand(1);
  std::vector<std::pair<CLI::App*, s0::cli::Runner>> runners;
  for (Adder add : kCommands) {
    size_t before = app.get_subcommands({}).size();
    s0::cli::Runner run = add(app);
    runners.emplace_back(app.get_subcommands({})[before], std::move(run));
  }
  CLI11_PARSE(app, argc, argv);
  for (auto& [sub, run] : runners) {
    if (sub->parsed()) return run();
  }
  return 2;
}
