// `s0 keygen PREFIX`: a CURVE key pair for `s0d serve --curve-*` and the client's --curve-*
// flags: PREFIX.secret (mode 0600) and PREFIX.public, 40 Z85 characters each.
#include <fcntl.h>
#include <unistd.h>
#include <zmq.h>

#include <cstdio>

#include "daemon/client.h"
#include "daemon/commands.h"
#include "daemon/wire.h"

namespace s0::cli {

Runner AddKeygenCommand(CLI::App& app) {
  auto prefix = std::make_shared<std::string>();
  CLI::App* sub = app.add_subcommand("keygen", "write a CURVE key pair: PREFIX.secret, PREFIX.public");
  sub->add_option("prefix", *prefix, "path prefix of the two files")->required();
  return [prefix] {
    char pub[41], sec[41];
    if (zmq_curve_keypair(pub, sec) != 0) {
      std::fprintf(stderr, "s0 keygen: this libzmq has no CURVE\n");
      return 1;
    }
    // The secret file is created 0600 before anything is written to it.
    const std::string secret = *prefix + ".secret";
    const int fd = ::open(secret.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || ::write(fd, sec, 40) != 40 || ::write(fd, "\n", 1) != 1 || ::close(fd) != 0) {
      std::fprintf(stderr, "s0 keygen: %s: cannot create (it must not exist yet)\n", secret.c_str());
      return 1;
    }
    if (Status s = WriteFileAtomic(*prefix + ".public", std::string(pub) + "\n"); !s.ok()) {
      std::fprintf(stderr, "s0 keygen: %s\n", s.ToString().c_str());
      return 1;
    }
    std::printf("%s\n", pub);
    return 0;
  };
}

}  // namespace s0::cli
