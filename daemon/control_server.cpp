#include "daemon/control_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <list>
#include <set>
#include <thread>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "daemon/wire.h"

namespace s0 {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr int kTickMs = 100;         // watch events and the stop message are checked this often
constexpr double kHeartbeatS = 1.0;  // a watcher hears at least this often
constexpr size_t kMaxWatchers = 64;
constexpr int kMaxQueuedReplies = 16;                   // per client
constexpr int64_t kTransportLimit = int64_t(16) << 20;  // libzmq drops larger messages' senders
constexpr size_t kMaxIpcPath = 107;                     // sun_path

// Literal loopback addresses only: a name such as "127.example.org" may resolve anywhere, and
// libzmq's "source;destination" form ("127.0.0.1:1;0.0.0.0") binds the part after the ';'.
bool IsLoopback(const std::string& host) {
  if (host == "localhost" || host == "::1" || host == "[::1]") return true;
  in_addr a{};
  return ::inet_pton(AF_INET, host.c_str(), &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

// The ipc directory is the access control: ours, closed to everyone else. Its parents are made
// as needed; the directory itself is made 0700 from the start.
Status PrepareIpcDirectory(const std::string& path) {
  const fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) return Status::InvalidArgument("ipc://" + path + ": give an absolute path");
  std::error_code ec;
  fs::create_directories(dir.parent_path(), ec);
  if (ec) return Status::IOError(dir.parent_path().string() + ": " + ec.message());
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::IOError(dir.string() + ": mkdir: " + std::strerror(errno));
  }
  return CheckPrivateIpcDirectory(path);
}

std::string Trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t\r\n") - a + 1);
}

// Z85 (40 characters) -> 32 bytes, or empty when it is not a key.
std::string DecodeKey(const std::string& z85) {
  if (z85.size() != 40) return "";
  std::string bin(32, '\0');
  if (zmq_z85_decode(reinterpret_cast<uint8_t*>(bin.data()), z85.c_str()) == nullptr) return "";
  return bin;
}

std::string EncodeKey(const std::string& bin) {
  char z85[41];
  zmq_z85_encode(z85, reinterpret_cast<const uint8_t*>(bin.data()), bin.size());
  return z85;
}

Result<std::set<std::string>> ReadClientKeys(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::NotFound(path + ": cannot open the list of client keys");
  std::set<std::string> keys;
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    ++n;
    line = Trim(line);
    // '#' is a Z85 character: a comment is a line that starts with it and is not a key.
    const std::string bin = DecodeKey(line);
    if (bin.empty() && (line.empty() || line[0] == '#')) continue;
    if (bin.empty()) {
      return Status::InvalidArgument(path + ":" + std::to_string(n) +
                                     ": not a CURVE public key (40 Z85 characters)");
    }
    keys.insert(bin);
  }
  if (keys.empty()) return Status::InvalidArgument(path + ": lists no client key: no client could connect");
  return keys;
}

proto::Reply ErrorReply(uint64_t request_id, proto::Error::Code code, const std::string& message) {
  proto::Reply r;
  r.set_version(kProtocolVersion);
  r.set_request_id(request_id);
  r.mutable_error()->set_code(code);
  r.mutable_error()->set_message(message);
  return r;
}

}  // namespace

Status CheckPrivateIpcDirectory(const std::string& socket_path) {
  const std::string dir = fs::path(socket_path).parent_path().string();
  struct stat st {};
  // lstat: a symbolic link (say /tmp/s0d-<uid> planted by another user) is refused, whatever it
  // points to, since its owner can point it elsewhere later.
  if (::lstat(dir.c_str(), &st) != 0) return Status::IOError(dir + ": " + std::strerror(errno));
  if (S_ISLNK(st.st_mode) || !S_ISDIR(st.st_mode)) {
    return Status::InvalidArgument("the directory of the control socket, " + dir + ", is " +
                                   (S_ISLNK(st.st_mode) ? "a symbolic link" : "not a directory") +
                                   ": it must be a directory owned by this user with mode 0700");
  }
  if (st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", unsigned(st.st_mode & 07777));
    return Status::InvalidArgument(
        "the directory of the control socket, " + dir + ", must be owned by this user "
        "with mode 0700 (it is the socket's access control); it has mode " + std::string(mode) +
        (st.st_uid != ::geteuid() ? " and another owner" : ""));
  }
  return Status::Ok();
}

std::string DefaultEndpoint() {
  if (const char* e = std::getenv("S0_ENDPOINT"); e && *e) return e;
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x && *x) {
    return "ipc://" + std::string(x) + "/s0d/control.sock";
  }
  return "ipc:///tmp/s0d-" + std::to_string(::geteuid()) + "/control.sock";
}

Result<std::unique_ptr<FileLock>> FileLock::Acquire(const std::string& path, const std::string& holder) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Status::IOError(path + ": " + std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) {
      return Status::Unavailable(holder + " (the lock " + path + " is held by a running s0d)");
    }
    return Status::IOError(path + ": flock: " + std::strerror(err));
  }
  return std::unique_ptr<FileLock>(new FileLock(fd));
}

FileLock::~FileLock() { ::close(fd_); }

Result<std::string> ReadCurveKey(const std::string& path) {
  S0_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, 4096));
  const std::string key = Trim(text);
  if (DecodeKey(key).empty()) return Status::InvalidArgument(path + ": not a CURVE key (40 Z85 characters)");
  return key;
}

struct ControlServer::Impl {
  ControlOptions options;
  Handler handler;
  std::unique_ptr<FileLock> lock;
  std::string secret_key;            // Z85; empty: no CURVE
  std::set<std::string> client_keys;  // binary
  zmq::context_t ctx;
  zmq::socket_t pipe;  // the owner's end
  std::string pipe_endpoint;
  std::thread thread;
  bool stopped = false;

  struct Watcher {
    zmq::message_t peer;
    proto::Request request;
    uint64_t revision = 0;
    Clock::time_point sent;
  };

  void Run();
  void HandleZap(zmq::socket_t& zap);
  void HandleRequest(zmq::socket_t& router, std::list<Watcher>& watchers);
  bool Send(zmq::socket_t& router, const zmq::message_t& peer, const proto::Reply& reply);
  void Tick(zmq::socket_t& router, std::list<Watcher>& watchers, bool force);
};

bool ControlServer::Impl::Send(zmq::socket_t& router, const zmq::message_t& peer,
                               const proto::Reply& reply) {
  const std::string bytes = EncodeMessage(reply);
  try {
    zmq::message_t to(peer.data(), peer.size());
    // router_mandatory: a peer that has gone raises EHOSTUNREACH; a peer that reads nothing (its
    // queue full) would block us, so never wait.
    if (!router.send(to, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) return false;
    return router.send(zmq::buffer(bytes), zmq::send_flags::dontwait).has_value();
  } catch (const zmq::error_t& e) {
    options.log->debug("reply not delivered: {}", e.what());
    return false;
  }
}

void ControlServer::Impl::HandleZap(zmq::socket_t& zap) {
  std::vector<zmq::message_t> f;
  if (!zmq::recv_multipart(zap, std::back_inserter(f))) return;
  // RFC 27: version, request_id, domain, address, routing_id, mechanism, credentials...
  const std::string version = f.size() > 0 ? f[0].to_string() : "";
  const std::string request_id = f.size() > 1 ? f[1].to_string() : "";
  const std::string address = f.size() > 3 ? f[3].to_string() : "?";
  const std::string mechanism = f.size() > 5 ? f[5].to_string() : "";
  const std::string key = f.size() > 6 ? f[6].to_string() : "";
  const bool allow = version == "1.0" && mechanism == "CURVE" && key.size() == 32 &&
                     client_keys.count(key) > 0;
  const std::string user = key.size() == 32 ? EncodeKey(key) : "";
  if (allow) {
    options.log->debug("CURVE client {} from {} admitted", user, address);
  } else {
    options.log->warn("client from {} refused: {} key {} is not listed", address, mechanism,
                      user.empty() ? "(none)" : user);
  }
  std::array<zmq::const_buffer, 6> reply = {
      zmq::buffer(std::string_view("1.0")), zmq::buffer(request_id),
      zmq::buffer(std::string_view(allow ? "200" : "400")),
      zmq::buffer(std::string_view(allow ? "OK" : "client key not listed")), zmq::buffer(user),
      zmq::buffer(std::string_view(""))};
  zmq::send_multipart(zap, reply);
}

void ControlServer::Impl::HandleRequest(zmq::socket_t& router, std::list<Watcher>& watchers) {
  std::vector<zmq::message_t> frames;
  if (!zmq::recv_multipart(router, std::back_inserter(frames))) return;
  const zmq::message_t& peer = frames[0];
  if (frames.size() != 2) {
    Send(router, peer, ErrorReply(0, proto::Error::BAD_REQUEST,
                                  "expected one frame (a Request), got " + std::to_string(frames.size() - 1)));
    return;
  }
  proto::Request request;
  const Status decoded =
      DecodeMessage(std::string_view(static_cast<const char*>(frames[1].data()), frames[1].size()),
                    &request, "the request");
  if (!decoded.ok()) {
    // A request of another version parsed: answer it under its own id. What did not parse may
    // hold a partial id: not one to trust.
    options.log->warn("unreadable request: {}", decoded.message());
    const uint64_t id = decoded.code() == Code::kCorruption ? 0 : request.request_id();
    Send(router, peer, ErrorReply(id, proto::Error::BAD_REQUEST, decoded.message()));
    return;
  }
  if (request.has_watch()) {
    if (watchers.size() >= kMaxWatchers) {
      Send(router, peer, ErrorReply(request.request_id(), proto::Error::UNAVAILABLE,
                                    "too many watchers (" + std::to_string(kMaxWatchers) + ")"));
      return;
    }
    watchers.push_back(Watcher{zmq::message_t(peer.data(), peer.size()), request, 0, {}});
    Tick(router, watchers, false);
    return;
  }
  proto::Reply reply = handler(request);
  reply.set_version(kProtocolVersion);
  reply.set_request_id(request.request_id());
  Send(router, peer, reply);
}

void ControlServer::Impl::Tick(zmq::socket_t& router, std::list<Watcher>& watchers, bool stopping) {
  const Clock::time_point now = Clock::now();
  for (auto it = watchers.begin(); it != watchers.end();) {
    proto::Reply reply;
    if (stopping) {
      reply = ErrorReply(0, proto::Error::UNAVAILABLE, "the daemon is shutting down");
    } else {
      reply = handler(it->request);
    }
    reply.set_version(kProtocolVersion);
    reply.set_request_id(it->request.request_id());
    const bool last = stopping || reply.has_error() || reply.watch().final();
    const uint64_t revision = reply.watch().job().revision();
    const bool due = last || revision != it->revision ||
                     std::chrono::duration<double>(now - it->sent).count() >= kHeartbeatS;
    bool delivered = true;
    if (due) {
      delivered = Send(router, it->peer, reply);
      it->revision = revision;
      it->sent = now;
    }
    if (last || !delivered) {
      it = watchers.erase(it);
    } else {
      ++it;
    }
  }
}

void ControlServer::Impl::Run() {
  zmq::socket_t pipe_end(ctx, zmq::socket_type::pair);
  pipe_end.connect(pipe_endpoint);
  std::string error;
  zmq::socket_t zap(ctx, zmq::socket_type::rep);
  zmq::socket_t router(ctx, zmq::socket_type::router);
  try {
    if (!secret_key.empty()) {
      // Before the ROUTER can accept anyone: the handler that decides who is accepted.
      zap.bind("inproc://zeromq.zap.01");
      router.set(zmq::sockopt::curve_server, 1);
      router.set(zmq::sockopt::curve_secretkey, secret_key);
      router.set(zmq::sockopt::zap_domain, "s0d");
    }
    router.set(zmq::sockopt::router_mandatory, 1);
    // Replies and watch events queued for one client that reads nothing: a few, not libzmq's
    // 1,000 (a reply can list a whole job's runs). Past it, sends fail (Send never waits) and
    // such a watcher is dropped.
    router.set(zmq::sockopt::sndhwm, kMaxQueuedReplies);
    router.set(zmq::sockopt::linger, 0);
    router.set(zmq::sockopt::handshake_ivl, 5000);
    router.set(zmq::sockopt::maxmsgsize, kTransportLimit);
    router.bind(options.endpoint);
  } catch (const zmq::error_t& e) {
    error = "cannot bind " + options.endpoint + ": " + e.what();
  }
  // "ready" (or why not) to Start, which is waiting on the pipe.
  pipe_end.send(zmq::buffer(error.empty() ? std::string("ready") : "error " + error));
  if (!error.empty()) return;

  std::list<Watcher> watchers;
  std::vector<zmq::pollitem_t> items = {{pipe_end.handle(), 0, ZMQ_POLLIN, 0},
                                        {router.handle(), 0, ZMQ_POLLIN, 0}};
  if (!secret_key.empty()) items.push_back({zap.handle(), 0, ZMQ_POLLIN, 0});
  for (;;) {
    try {
      zmq::poll(items, std::chrono::milliseconds(kTickMs));
      if (items[0].revents & ZMQ_POLLIN) {
        zmq::message_t m;
        (void)pipe_end.recv(m);
        Tick(router, watchers, true);
        break;
      }
      if (items.size() > 2 && (items[2].revents & ZMQ_POLLIN)) HandleZap(zap);
      if (items[1].revents & ZMQ_POLLIN) HandleRequest(router, watchers);
      Tick(router, watchers, false);
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      options.log->error("control socket: {}", e.what());
    }
  }
  pipe_end.send(zmq::buffer(std::string_view("stopped")));
}

ControlServer::ControlServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ControlServer::~ControlServer() { Stop(); }

const std::string& ControlServer::endpoint() const { return impl_->options.endpoint; }

void ControlServer::Stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->pipe.send(zmq::buffer(std::string_view("stop")));
  zmq::message_t m;
  (void)impl_->pipe.recv(m);
  impl_->thread.join();
  // libzmq finishes closing sockets in the background (its reaper unlinks the ipc file):
  // terminating the context waits for that, so a daemon that takes the endpoint after the lock
  // is released cannot lose its socket file to ours.
  impl_->pipe.close();
  impl_->ctx.close();
  impl_->lock.reset();  // the endpoint is free
}

Result<std::unique_ptr<ControlServer>> ControlServer::Start(const ControlOptions& options, Handler handler) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->handler = std::move(handler);
  ControlOptions& o = impl->options;
  if (o.endpoint.empty()) o.endpoint = DefaultEndpoint();
  if (!o.log) return Status::InvalidArgument("the control server needs a logger");
  const bool curve = !o.curve_secret_file.empty() || !o.curve_clients_file.empty();
  if (curve && (o.curve_secret_file.empty() || o.curve_clients_file.empty())) {
    return Status::InvalidArgument("CURVE needs both --curve-secret and --curve-clients");
  }
  if (o.require_curve && !curve) {
    return Status::InvalidArgument("--require-curve needs --curve-secret and --curve-clients");
  }
  std::string lock_path;
  if (o.endpoint.rfind("ipc://", 0) == 0) {
    const std::string path = o.endpoint.substr(6);
    if (path.empty() || path[0] == '@') {
      return Status::InvalidArgument(o.endpoint + ": abstract ipc names have no permissions; give a "
                                     "path (ipc:///dir/name)");
    }
    if (path[0] != '/') return Status::InvalidArgument(o.endpoint + ": give an absolute path");
    if (path.size() > kMaxIpcPath) {
      return Status::InvalidArgument(o.endpoint + ": the path is longer than " +
                                     std::to_string(kMaxIpcPath) + " characters");
    }
    S0_RETURN_IF_ERROR(PrepareIpcDirectory(path));
    lock_path = path + ".lock";
  } else if (o.endpoint.rfind("tcp://", 0) == 0) {
    const std::string hostport = o.endpoint.substr(6);
    const size_t colon = hostport.rfind(':');
    if (colon == std::string::npos || colon == 0) {
      return Status::InvalidArgument(o.endpoint + ": expected tcp://HOST:PORT");
    }
    const std::string host = hostport.substr(0, colon);
    if (!IsLoopback(host) && !curve) {
      return Status::InvalidArgument(
          o.endpoint + " can be reached from other machines: serve it only with CURVE "
          "(--curve-secret and --curve-clients), or use ipc:// or tcp://127.0.0.1");
    }
  } else {
    return Status::InvalidArgument(o.endpoint + ": the control endpoint must be ipc://PATH or tcp://HOST:PORT");
  }
  if (curve) {
    S0_ASSIGN_OR_RETURN(impl->secret_key, ReadCurveKey(o.curve_secret_file));
    S0_ASSIGN_OR_RETURN(impl->client_keys, ReadClientKeys(o.curve_clients_file));
    char pub[41];
    if (zmq_curve_public(pub, impl->secret_key.c_str()) != 0) {
      return Status::InvalidArgument(o.curve_secret_file + ": not a CURVE secret key");
    }
    o.log->info("CURVE: server public key {} (clients pass it as --curve-server-key); {} client "
                "key{} admitted", pub, impl->client_keys.size(), impl->client_keys.size() == 1 ? "" : "s");
  }
  if (!lock_path.empty()) {
    S0_ASSIGN_OR_RETURN(impl->lock,
                        FileLock::Acquire(lock_path, "another daemon serves " + o.endpoint));
  }

  // libzmq's I/O threads and the control thread start with the stop signals blocked: only the
  // main thread takes them (its handler sets the flag it polls), and zmq_poll sees no EINTR.
  sigset_t block, old;
  sigemptyset(&block);
  for (int sig : {SIGTERM, SIGINT, SIGUSR1, SIGUSR2}) sigaddset(&block, sig);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  impl->pipe = zmq::socket_t(impl->ctx, zmq::socket_type::pair);
  impl->pipe_endpoint = "inproc://s0d-control-pipe";
  impl->pipe.bind(impl->pipe_endpoint);
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->Run(); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  zmq::message_t ready;
  (void)impl->pipe.recv(ready);
  if (ready.to_string() != "ready") {
    impl->thread.join();
    impl->stopped = true;
    return Status::Unavailable(ready.to_string().substr(6));
  }
  o.log->info("control socket {} ready{}", o.endpoint, curve ? " (CURVE)" : "");
  return std::unique_ptr<ControlServer>(new ControlServer(std::move(impl)));
}

}  // namespace s0
