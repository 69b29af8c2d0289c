#include "daemon/client.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "daemon/control_server.h"
#include "daemon/wire.h"

namespace s0 {
namespace {

using Clock = std::chrono::steady_clock;

// The daemon sends a watch event at least every second; silence this long means it is gone.
constexpr double kWatchSilenceS = 5.0;

double Left(Clock::time_point deadline) {
  return std::chrono::duration<double>(deadline - Clock::now()).count();
}

// An ipc endpoint's socket file says whether a daemon can be there at all, before libzmq's
// silent background reconnects would turn every problem into a timeout.
Status CheckIpcEndpoint(const std::string& endpoint) {
  if (endpoint.rfind("ipc://", 0) != 0) return Status::Ok();
  const std::string path = endpoint.substr(6);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == EACCES) {
      return Status::Unavailable("access denied: this user may not open " + path + " (" + endpoint + ")");
    }
    return Status::Unavailable("no daemon at " + endpoint + ": " + path +
                               " does not exist (start one with `s0d serve --dir DIR`)");
  }
  if (::access(path.c_str(), R_OK | W_OK) != 0) {
    return Status::Unavailable("access denied: this user may not open " + path + " (" + endpoint + ")");
  }
  // Whoever controls the directory could have put someone else's socket there.
  if (Status s = CheckPrivateIpcDirectory(path); !s.ok()) {
    return Status::Unavailable("not connecting to " + endpoint + ": " + s.message());
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return Status::Ok();  // libzmq will say
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::Ok();
  const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int err = errno;
  ::close(fd);
  if (rc != 0 && err == ECONNREFUSED) {
    return Status::Unavailable("no daemon at " + endpoint + ": " + path +
                               " is left from a daemon that is gone (start one with `s0d serve`)");
  }
  if (rc != 0 && err == EACCES) {
    return Status::Unavailable("access denied: this user may not connect to " + path);
  }
  return Status::Ok();
}

// --curve-server-key: a file holding the key, or the key itself.
Result<std::string> KeyArgument(const std::string& value) {
  std::error_code ec;
  if (std::filesystem::exists(value, ec)) return ReadCurveKey(value);
  uint8_t bin[32];
  if (value.size() == 40 && zmq_z85_decode(bin, value.c_str()) != nullptr) return value;
  return Status::InvalidArgument("--curve-server-key " + value +
                                 ": neither a file nor a CURVE key (40 Z85 characters)");
}

}  // namespace

struct Client::Impl {
  ClientOptions o;
  zmq::context_t ctx;
  std::unique_ptr<zmq::socket_t> sock, monitor;
  std::string server_key, public_key, secret_key;  // Z85; empty: no CURVE
  Status setup;
  int opened = 0;
  std::mt19937_64 ids{std::random_device{}()};

  void Close() {
    monitor.reset();
    sock.reset();
  }

  void Open() {
    Close();
    sock = std::make_unique<zmq::socket_t>(ctx, zmq::socket_type::dealer);
    sock->set(zmq::sockopt::linger, 0);
    if (!server_key.empty()) {
      sock->set(zmq::sockopt::curve_serverkey, server_key);
      sock->set(zmq::sockopt::curve_publickey, public_key);
      sock->set(zmq::sockopt::curve_secretkey, secret_key);
    }
    // The handshake's failures are events, not errors: the only way to tell "denied" from "no
    // reply".
    const std::string mon = "inproc://s0-client-monitor-" + std::to_string(++opened);
    if (zmq_socket_monitor(sock->handle(), mon.c_str(),
                           ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) == 0) {
      monitor = std::make_unique<zmq::socket_t>(ctx, zmq::socket_type::pair);
      monitor->connect(mon);
    }
    sock->connect(o.endpoint);
  }

  // The next reply, or none by the deadline; an error when the handshake failed.
  Result<std::optional<proto::Reply>> Receive(Clock::time_point deadline) {
    for (;;) {
      const double left = Left(deadline);
      if (left <= 0) return std::optional<proto::Reply>();
      std::vector<zmq::pollitem_t> items = {{sock->handle(), 0, ZMQ_POLLIN, 0}};
      if (monitor) items.push_back({monitor->handle(), 0, ZMQ_POLLIN, 0});
      zmq::poll(items, std::chrono::milliseconds(std::max(1, int(left * 1000))));
      if (items.size() > 1 && (items[1].revents & ZMQ_POLLIN)) {
        std::vector<zmq::message_t> ev;
        (void)zmq::recv_multipart(*monitor, std::back_inserter(ev));
        uint16_t id = 0;
        if (!ev.empty() && ev[0].size() >= 2) std::memcpy(&id, ev[0].data(), 2);
        if (id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
          return Status::Unavailable("access denied: the daemon at " + o.endpoint +
                                     " does not admit this client's CURVE key (its operator must "
                                     "list the public key in the daemon's --curve-clients)");
        }
        return Status::Unavailable("the daemon at " + o.endpoint + " refused the handshake: " +
                                   (server_key.empty() ? "it requires CURVE (give --curve-server-key "
                                                         "and --curve-secret)"
                                                       : "it does not speak CURVE, or the keys are wrong"));
      }
      if (items[0].revents & ZMQ_POLLIN) {
        zmq::message_t m;
        (void)sock->recv(m);
        proto::Reply reply;
        S0_RETURN_IF_ERROR(DecodeMessage(std::string_view(static_cast<const char*>(m.data()), m.size()),
                                         &reply, "the daemon's reply", kMaxReplyBytes));
        return std::optional<proto::Reply>(std::move(reply));
      }
    }
  }

  Status Send(const std::string& bytes) {
    if (!sock) Open();
    if (!sock->send(zmq::buffer(bytes), zmq::send_flags::dontwait)) {
      return Status::Unavailable("cannot send to " + o.endpoint);
    }
    return Status::Ok();
  }

  Status NoReply(const std::string& what) const {
    char t[32];
    std::snprintf(t, sizeof t, "%.1f", o.timeout_s);
    return Status::Unavailable("no " + what + " from " + o.endpoint + " after " + std::to_string(o.retries) +
                               " attempt" + (o.retries == 1 ? "" : "s") + " of " + t +
                               " s: the daemon is not running there, is stuck, or does not admit "
                               "this client");
  }
};

Client::Client(ClientOptions options) : impl_(std::make_unique<Impl>()) {
  Impl& c = *impl_;
  c.o = std::move(options);
  if (c.o.endpoint.empty()) c.o.endpoint = DefaultEndpoint();
  if (c.o.retries < 1) c.setup = Status::InvalidArgument("--retries must be at least 1");
  if (c.o.curve_server_key.empty() != c.o.curve_secret.empty()) {
    c.setup = Status::InvalidArgument("CURVE needs both --curve-server-key and --curve-secret");
  } else if (!c.o.curve_server_key.empty()) {
    Result<std::string> server = KeyArgument(c.o.curve_server_key);
    Result<std::string> secret = ReadCurveKey(c.o.curve_secret);
    char pub[41];
    if (!server.ok()) {
      c.setup = server.status();
    } else if (!secret.ok()) {
      c.setup = secret.status();
    } else if (zmq_curve_public(pub, secret->c_str()) != 0) {
      c.setup = Status::InvalidArgument(c.o.curve_secret + ": not a CURVE secret key");
    } else {
      c.server_key = *server;
      c.secret_key = *secret;
      c.public_key = pub;
    }
  }
}

Client::~Client() = default;

Result<proto::Reply> Client::Call(proto::Request request) {
  Impl& c = *impl_;
  S0_RETURN_IF_ERROR(c.setup);
  S0_RETURN_IF_ERROR(CheckIpcEndpoint(c.o.endpoint));
  request.set_version(kProtocolVersion);
  if (request.request_id() == 0) request.set_request_id(c.ids() | 1);
  const std::string bytes = EncodeMessage(request);
  for (int attempt = 0; attempt < c.o.retries; ++attempt) {
    S0_RETURN_IF_ERROR(c.Send(bytes));
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(c.o.timeout_s));
    for (;;) {
      S0_ASSIGN_OR_RETURN(std::optional<proto::Reply> reply, c.Receive(deadline));
      if (!reply) break;
      if (reply->request_id() == request.request_id() || reply->request_id() == 0) return std::move(*reply);
    }
    c.Close();  // Lazy Pirate: a fresh socket for the next attempt
  }
  return c.NoReply("reply");
}

Result<proto::WatchEvent> Client::Watch(const std::string& job_id,
                                        const std::function<void(const proto::WatchEvent&)>& on_event) {
  Impl& c = *impl_;
  S0_RETURN_IF_ERROR(c.setup);
  S0_RETURN_IF_ERROR(CheckIpcEndpoint(c.o.endpoint));
  proto::Request request;
  request.set_version(kProtocolVersion);
  request.set_request_id(c.ids() | 1);
  request.mutable_watch()->set_job_id(job_id);
  const std::string bytes = EncodeMessage(request);
  const double silence = std::max(c.o.timeout_s, kWatchSilenceS);
  for (int attempt = 0; attempt < c.o.retries;) {
    S0_RETURN_IF_ERROR(c.Send(bytes));
    for (;;) {
      const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                               std::chrono::duration<double>(silence));
      S0_ASSIGN_OR_RETURN(std::optional<proto::Reply> reply, c.Receive(deadline));
      if (!reply) break;
      if (reply->request_id() != request.request_id() && reply->request_id() != 0) continue;
      if (reply->has_error()) {
        const proto::Error& e = reply->error();
        const std::string why = e.message();
        if (e.code() == proto::Error::NOT_FOUND) return Status::NotFound(why);
        if (e.code() == proto::Error::UNAVAILABLE) return Status::Unavailable(why);
        return Status::InvalidArgument(why);
      }
      attempt = 0;  // the daemon is alive: a later silence gets every retry again
      on_event(reply->watch());
      if (reply->watch().final()) return reply->watch();
    }
    c.Close();
    ++attempt;
  }
  return c.NoReply("watch event");
}

namespace {

std::string Eta(double s) {
  if (s < 0) return "-";
  char buf[32];
  const long t = long(s + 0.5);
  if (t < 60) {
    std::snprintf(buf, sizeof buf, "%lds", t);
  } else if (t < 3600) {
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  }
  return buf;
}

std::string Lower(std::string s, size_t prefix) {
  s = s.substr(prefix);
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

std::string FormatJob(const proto::JobStatus& j) {
  std::string t = "job " + j.job_id() + " (" + j.name() + "): " + Lower(proto::JobState_Name(j.state()), 4) +
                  ", " + std::to_string(j.n_done()) + "/" + std::to_string(j.n_runs()) + " done";
  if (j.n_running() > 0) t += ", " + std::to_string(j.n_running()) + " running";
  if (j.n_failed() > 0) t += ", " + std::to_string(j.n_failed()) + " failed";
  if (j.n_cancelled() > 0) t += ", " + std::to_string(j.n_cancelled()) + " cancelled";
  t += "; output " + j.out_dir();
  if (!j.error().empty()) t += "\n  error: " + j.error();
  return t;
}

std::string FormatRun(const proto::RunProgress& r, int bar_width) {
  char line[512];
  std::string bar;
  if (bar_width > 0) {
    const int filled = r.n_steps() > 0 ? int(double(bar_width) * double(r.step()) / double(r.n_steps())) : 0;
    bar = "[" + std::string(size_t(std::clamp(filled, 0, bar_width)), '#') +
          std::string(size_t(bar_width - std::clamp(filled, 0, bar_width)), '.') + "] ";
  }
  std::snprintf(line, sizeof line, "  %-32s %s%-9s step %lld/%lld", r.run_id().c_str(), bar.c_str(),
                r.stage().c_str(), static_cast<long long>(r.step()), static_cast<long long>(r.n_steps()));
  std::string t = line;
  if (r.step() > 0) {
    std::snprintf(line, sizeof line, "  loss %.6f", r.loss());
    t += line;
  }
  if (r.stage() == "train") t += "  ETA " + Eta(r.eta_s());
  if (!r.error().empty()) t += "  error: " + r.error();
  return t;
}

void AddClientFlags(CLI::App* sub, ClientOptions* o) {
  sub->add_option("--endpoint", o->endpoint,
                  "the daemon's control socket (default: $S0_ENDPOINT, else "
                  "ipc://$XDG_RUNTIME_DIR/s0d/control.sock, else ipc:///tmp/s0d-UID/control.sock)");
  sub->add_option("--curve-server-key", o->curve_server_key,
                  "CURVE: the daemon's public key (40 Z85 characters, or a file holding it)");
  sub->add_option("--curve-secret", o->curve_secret, "CURVE: this client's secret key file");
  sub->add_option("--timeout", o->timeout_s, "seconds to wait for each reply")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 3600.0));
  sub->add_option("--retries", o->retries, "attempts before giving up")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
}

int ReportFailure(const std::string& command, const Status& status) {
  std::fprintf(stderr, "s0 %s: %s\n", command.c_str(), status.message().c_str());
  return status.code() == Code::kUnavailable ? kClientUnreachable : kClientRefused;
}

Result<proto::Reply> CallDaemon(const ClientOptions& options, proto::Request request) {
  Client client(options);
  S0_ASSIGN_OR_RETURN(proto::Reply reply, client.Call(std::move(request)));
  if (!reply.has_error()) return reply;
  const proto::Error& e = reply.error();
  return e.code() == proto::Error::UNAVAILABLE ? Status::Unavailable(e.message())
                                               : Status::InvalidArgument(e.message());
}

}  // namespace s0
