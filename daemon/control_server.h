// The control socket of `s0d serve` on rank 0: a ZeroMQ ROUTER owned by one thread (an actor, as
// CZMQ's zactor). Start() returns once the thread has bound the socket ("ready") or failed to;
// Stop() is an explicit message to the thread over an inproc pipe, then a join. The thread never
// calls MPI: requests go to a Handler (daemon/job_queue.h, thread-safe), whose reply it sends.
//
// Wire (proto/api.proto): a client (DEALER) sends one frame, a Request; every request gets a
// reply. What cannot be read gets an error reply (request_id 0 when even that is unknown): more
// than one frame, more than 1 MiB (up to the 16 MiB transport limit, beyond which libzmq drops the
// connection), not a Request, another version, no or an unknown command. A watch request is
// answered by a stream: an event whenever the job's status revision changes, at least one a
// second (heartbeat), until the final one; on Stop every watcher gets an UNAVAILABLE error.
//
// Who may connect:
//   ipc://PATH   the default (DefaultEndpoint). Access is the directory's: PATH's directory is
//                created 0700, and an existing one must be owned by this user and closed to
//                group and others. Abstract names (ipc://@x) have no permissions and are refused.
//   tcp://H:P    H loopback (127.0.0.0/8, localhost, ::1): any local user can connect, as with
//                any local TCP service; other hosts only with CURVE.
//   CURVE        (curve_secret_file + curve_clients_file; required off loopback, or everywhere
//                with require_curve): encryption plus a ZAP handler (RFC 27) in the same thread
//                that admits only the listed client public keys. It is bound before the ROUTER
//                and lives and dies with it, so authentication fails closed: without a handler
//                libzmq would admit any client that knows the server's public key.
// A lock file (PATH.lock for ipc, flock) keeps a second daemon from binding the same endpoint:
// libzmq would otherwise silently take an ipc socket over from the first.
#pragma once

#include <spdlog/logger.h>

#include <functional>
#include <memory>
#include <string>

#include "kernels/status.h"
#include "proto/api.pb.h"

namespace s0 {

// ipc://$XDG_RUNTIME_DIR/s0d/control.sock, or ipc:///tmp/s0d-<uid>/control.sock without
// XDG_RUNTIME_DIR; the environment variable S0_ENDPOINT, when set, overrides both (s0d and s0).
std::string DefaultEndpoint();
// The socket's directory is a real directory (not a symbolic link), owned by this user, with
// mode 0700: the daemon checks it before it binds, the client before it connects.
Status CheckPrivateIpcDirectory(const std::string& socket_path);

// An exclusive flock on PATH (created 0600), held until destruction or process death.
class FileLock {
 public:
  // Unavailable when another process holds it; `holder` names that process in the error.
  static Result<std::unique_ptr<FileLock>> Acquire(const std::string& path, const std::string& holder);
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  explicit FileLock(int fd) : fd_(fd) {}
  int fd_;
};

struct ControlOptions {
  std::string endpoint;            // default: DefaultEndpoint()
  std::string curve_secret_file;   // the server's CURVE secret key, 40 Z85 characters
  std::string curve_clients_file;  // admitted client public keys, Z85, one a line; other lines
                                   // that start with '#' are comments
  bool require_curve = false;      // CURVE on loopback too
  std::shared_ptr<spdlog::logger> log;  // the thread's logger (not spdlog's default logger,
                                        // which the main thread replaces per job)
};

class ControlServer {
 public:
  // One reply per request; called on the control thread. request_id and version are set by the
  // server.
  using Handler = std::function<proto::Reply(const proto::Request&)>;

  // Checks the options (endpoint, keys), takes the endpoint's lock, starts the thread and waits
  // for it to bind. InvalidArgument for bad options, Unavailable when another daemon holds the
  // endpoint or it cannot be bound.
  static Result<std::unique_ptr<ControlServer>> Start(const ControlOptions& options, Handler handler);
  ~ControlServer();  // Stop()
  // Tells the thread to end (watchers get an error), joins it, releases the endpoint's lock;
  // idempotent.
  void Stop();
  const std::string& endpoint() const;

 private:
  struct Impl;
  explicit ControlServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Reads a CURVE key file (40 Z85 characters, surrounding whitespace ignored). InvalidArgument
// names the file when it is not a key.
Result<std::string> ReadCurveKey(const std::string& path);

}  // namespace s0
