// The control thread and the client in one process, with a scripted handler in place of the
// queue: Lazy Pirate retries reach the handler under one request id and the client gets its
// reply; a watch streams an event per revision and a heartbeat a second, ends with the final
// event, and ends with an error for every watcher when the server stops; start-up fails cleanly
// (with the reason) for a taken endpoint and bad key files.
#include "daemon/control_server.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <unistd.h>
#include <zmq.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "daemon/client.h"
#include "tests/common/test_paths.h"

namespace s0 {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

ControlOptions Options(const std::string& name) {
  ControlOptions o;
  const std::string rt = "/tmp/s0d-test-" + std::to_string(getpid()) + "-" + name;
  fs::remove_all(rt);
  o.endpoint = "ipc://" + rt + "/control.sock";
  o.log = std::make_shared<spdlog::logger>("control-test", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  return o;
}

TEST(ServeControl, LazyPirateRetriesReachTheHandlerUnderOneRequestId) {
  std::mutex mu;
  std::vector<uint64_t> seen;
  ControlOptions o = Options("pirate");
  auto server = ControlServer::Start(o, [&](const proto::Request& r) {
    size_t n;
    {
      std::lock_guard<std::mutex> lock(mu);
      seen.push_back(r.request_id());
      n = seen.size();
    }
    // The first attempt is answered too late: the client has given up on that socket.
    if (n == 1) std::this_thread::sleep_for(std::chrono::milliseconds(700));
    proto::Reply reply;
    reply.mutable_list();
    return reply;
  });
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ClientOptions co;
  co.endpoint = o.endpoint;
  co.timeout_s = 0.3;
  co.retries = 4;
  Client client(co);
  proto::Request r;
  r.mutable_list();
  Result<proto::Reply> reply = client.Call(r);
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_TRUE(reply->has_list());
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_GE(seen.size(), 2u);
  for (uint64_t id : seen) EXPECT_EQ(id, seen[0]) << "a retry is the same request";
  EXPECT_EQ(reply->request_id(), seen[0]);

  // Without any reply the client gives up after its retries, and says so.
  ClientOptions silent = co;
  silent.retries = 2;
  (*server)->Stop();
  auto mute = ControlServer::Start(o, [](const proto::Request&) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    return proto::Reply();
  });
  ASSERT_TRUE(mute.ok()) << mute.status().ToString();
  Client gives_up(silent);
  Result<proto::Reply> none = gives_up.Call(r);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), Code::kUnavailable);
  EXPECT_NE(none.status().message().find("no reply from " + o.endpoint + " after 2 attempts of 0.3 s"),
            std::string::npos)
      << none.status().ToString();
}

TEST(ServeControl, WatchStreamsRevisionsAndHeartbeatsUntilTheFinalEvent) {
  std::atomic<uint64_t> revision{1};
  std::atomic<bool> final{false};
  ControlOptions o = Options("watch");
  auto server = ControlServer::Start(o, [&](const proto::Request& r) {
    proto::Reply reply;
    EXPECT_TRUE(r.has_watch());
    reply.mutable_watch()->mutable_job()->set_job_id(r.watch().job_id());
    reply.mutable_watch()->mutable_job()->set_revision(revision.load());
    reply.mutable_watch()->set_final(final.load());
    return reply;
  });
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ClientOptions co;
  co.endpoint = o.endpoint;
  std::mutex mu;
  std::vector<std::pair<double, uint64_t>> events;  // (seconds since start, revision)
  const auto start = Clock::now();
  Result<proto::WatchEvent> last = Status::Internal("not run");
  std::thread watcher([&] {
    Client client(co);
    last = client.Watch("j", [&](const proto::WatchEvent& ev) {
      std::lock_guard<std::mutex> lock(mu);
      events.push_back({std::chrono::duration<double>(Clock::now() - start).count(), ev.job().revision()});
    });
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(2300));  // heartbeats only
  revision = 2;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  revision = 3;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  final = true;
  watcher.join();
  ASSERT_TRUE(last.ok()) << last.status().ToString();
  EXPECT_TRUE(last->final());
  std::lock_guard<std::mutex> lock(mu);
  size_t first_revision = 0;
  for (const auto& [t, rev] : events) first_revision += rev == 1 ? 1 : 0;
  EXPECT_GE(first_revision, 3u) << "the first event and a heartbeat a second";
  bool saw2 = false, saw3 = false;
  for (const auto& [t, rev] : events) {
    saw2 = saw2 || rev == 2;
    saw3 = saw3 || rev == 3;
    if (rev == 2) {
      EXPECT_LT(t, 2.3 + 0.5) << "a change is sent within a tick, not at the heartbeat";
    }
  }
  EXPECT_TRUE(saw2 && saw3);

  // Stopping the server ends every stream with an error.
  final = false;
  Result<proto::WatchEvent> cut = Status::Internal("not run");
  std::thread second([&] {
    Client client(co);
    cut = client.Watch("j", [](const proto::WatchEvent&) {});
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  (*server)->Stop();
  second.join();
  ASSERT_FALSE(cut.ok());
  EXPECT_NE(cut.status().message().find("the daemon is shutting down"), std::string::npos)
      << cut.status().ToString();
}

TEST(ServeControl, StartFailsWithTheReason) {
  ControlOptions o = Options("start");
  auto handler = [](const proto::Request&) { return proto::Reply(); };
  auto first = ControlServer::Start(o, handler);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  auto second = ControlServer::Start(o, handler);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kUnavailable);
  EXPECT_NE(second.status().message().find("another daemon serves " + o.endpoint), std::string::npos);

  const std::string dir = test::TempDir("serve_control_keys");
  std::ofstream(dir + "/bad.secret") << "not a key\n";
  std::ofstream(dir + "/none") << "# nobody\n";
  char pub[41], sec[41];
  ASSERT_EQ(zmq_curve_keypair(pub, sec), 0);
  std::ofstream(dir + "/server.secret") << sec << "\n";
  std::ofstream(dir + "/clients") << pub << "\nshort\n";
  struct Case {
    std::string secret, clients, message;
  };
  const std::vector<Case> cases = {
      {dir + "/bad.secret", dir + "/none", "bad.secret: not a CURVE key"},
      {dir + "/server.secret", dir + "/none", "lists no client key: no client could connect"},
      {dir + "/server.secret", dir + "/clients", "clients:2: not a CURVE public key"},
      {dir + "/server.secret", "", "CURVE needs both"},
  };
  for (const Case& c : cases) {
    ControlOptions k = Options("keys");
    k.curve_secret_file = c.secret;
    k.curve_clients_file = c.clients;
    auto s = ControlServer::Start(k, handler);
    ASSERT_FALSE(s.ok()) << c.message;
    EXPECT_NE(s.status().message().find(c.message), std::string::npos) << s.status().ToString();
  }
  ControlOptions plain = Options("plain");
  plain.require_curve = true;
  auto s = ControlServer::Start(plain, handler);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("--require-curve needs"), std::string::npos);
}

}  // namespace
}  // namespace s0
