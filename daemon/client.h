// The client side of `s0d serve`'s control socket (proto/api.proto), used by the `s0` commands
// submit, status, list, watch, cancel, results and shutdown (daemon/cmd_*.cpp).
//
// Reliability is the Lazy Pirate pattern (zguide ch. 4): a request waits `timeout_s` for its
// reply; without one the socket is closed (linger 0), reopened and the same request (same
// request id: submit is idempotent by job id) sent again, `retries` times in all. A watch stream
// is resumed the same way when it falls silent for longer than its heartbeat allows.
//
// Clear failures: an ipc endpoint whose socket file is missing means no daemon runs there; one
// this user may not open means access is denied; a CURVE handshake the daemon refuses (its ZAP
// handler does not list our key) is reported as denied at once; anything else that stays silent
// after every retry is "no reply".
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>

#include "kernels/status.h"
#include "proto/api.pb.h"

namespace s0 {

struct ClientOptions {
  std::string endpoint;           // empty: DefaultEndpoint() (daemon/control_server.h)
  std::string curve_server_key;   // the daemon's CURVE public key: 40 Z85 characters or a file
  std::string curve_secret;       // this client's secret key file (its public key is derived)
  double timeout_s = 2.5;
  int retries = 3;
};

// Exit statuses of the client commands.
inline constexpr int kClientRefused = 1;       // the daemon answered with an error
inline constexpr int kClientUnreachable = 69;  // no daemon, no reply, or access denied

class Client {
 public:
  explicit Client(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // One request, one reply (version and request id are filled in). Unavailable: no reply after
  // every attempt, no daemon, or access denied (the message says which). A reply carrying an
  // error is returned as a reply.
  Result<proto::Reply> Call(proto::Request request);
  // Streams the job's watch events to `on_event` until the final one (returned).
  Result<proto::WatchEvent> Watch(const std::string& job_id,
                                  const std::function<void(const proto::WatchEvent&)>& on_event);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Registers --endpoint, --curve-server-key, --curve-secret, --timeout and --retries on `sub`.
void AddClientFlags(CLI::App* sub, ClientOptions* options);

// Text forms shared by status, list and watch. A job: "job ID (NAME): STATE, D/N done, ...";
// a run: its id, stage, step/n_steps, loss and ETA; with `bar_width` > 0 a progress bar too.
std::string FormatJob(const proto::JobStatus& job);
std::string FormatRun(const proto::RunProgress& run, int bar_width);

// A command's one request: Client(options).Call, with an error reply turned into a failed
// Status that carries its message (Unavailable for UNAVAILABLE, else InvalidArgument).
Result<proto::Reply> CallDaemon(const ClientOptions& options, proto::Request request);

// Prints "s0 <command>: <why>" and returns the exit status: kClientUnreachable for Unavailable
// (no reply, no daemon, or the daemon unavailable), else kClientRefused.
int ReportFailure(const std::string& command, const Status& status);

}  // namespace s0
