// Subcommands of the `s0` client. Each command lives in daemon/cmd_<name>.cpp and registers its
// flags on a CLI11 subcommand; the callback returns the process exit status.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace s0::cli {

using Runner = std::function<int()>;

// Each Add*Command adds its subcommand to `app` and returns the runner to call when it is chosen.
Runner AddVersionCommand(CLI::App& app);
Runner AddTokenizeCommand(CLI::App& app);
Runner AddGradCommand(CLI::App& app);
Runner AddTrainCommand(CLI::App& app);
// Clients of `s0d serve` (daemon/client.h).
Runner AddSubmitCommand(CLI::App& app);
Runner AddStatusCommand(CLI::App& app);
Runner AddListCommand(CLI::App& app);
Runner AddWatchCommand(CLI::App& app);
Runner AddCancelCommand(CLI::App& app);
Runner AddResultsCommand(CLI::App& app);
Runner AddShutdownCommand(CLI::App& app);
Runner AddKeygenCommand(CLI::App& app);

}  // namespace s0::cli
