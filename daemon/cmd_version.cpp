// `s0 version`: the build's version and what it was built with.
#include <cstdio>

#include "daemon/commands.h"

namespace s0::cli {

Runner AddVersionCommand(CLI::App& app) {
  app.add_subcommand("version", "print the version and build options");
  return [] {
#ifdef S0_HAVE_CUDA
    const char* cuda = "yes";
#else
    const char* cuda = "no";
#endif
    std::printf("s0 0.1.0 (CUDA engine: %s)\n", cuda);
    return 0;
  };
}

}  // namespace s0::cli
