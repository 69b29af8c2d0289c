#include "daemon/mpi_comm.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "daemon/wire.h"

namespace s0 {
namespace {

constexpr int kTagToCoordinator = 101;
constexpr int kTagToLeader = 102;
// Collectives move at most this many elements per MPI call (MPI counts are int).
constexpr size_t kChunk = size_t(1) << 28;
constexpr uint64_t kMaxBroadcastBytes = uint64_t(1) << 30;

using Clock = std::chrono::steady_clock;

Status MpiStatus(int rc, const std::string& what) {
  if (rc == MPI_SUCCESS) return Status::Ok();
  return Status::Unavailable(what + ": " + MpiErrorText(rc));
}

// Polls `request` until it completes or `timeout_s` passes (then Unavailable; the request is
// left pending: the communicator is unusable and the job ends).
Status WaitRequest(MPI_Request* request, double timeout_s, const std::function<void()>& idle,
                   const std::string& what) {
  const auto start = Clock::now();
  int64_t polls = 0;  // 64-bit: serve ranks may wait here for months
  for (;;) {
    int done = 0;
    S0_RETURN_IF_ERROR(MpiStatus(MPI_Test(request, &done, MPI_STATUS_IGNORE), what));
    if (done) return Status::Ok();
    const double waited = std::chrono::duration<double>(Clock::now() - start).count();
    if (waited > timeout_s) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.1f", timeout_s);
      return Status::Unavailable(what + " did not complete within " + buf +
                                 " s: a rank died or stalled");
    }
    if (idle) idle();
    ++polls;
    if (polls > 100) {
      const int us = std::min(1000, 20 << int(std::min<int64_t>(6, (polls - 100) / 50)));
      std::this_thread::sleep_for(std::chrono::microseconds(us));
    }
  }
}

// The next message of `tag` from `source` (MPI_ANY_SOURCE allowed), if one has arrived; the
// sender's rank in *from. Oversized messages are refused unread.
Result<std::optional<std::string>> TryReceive(MPI_Comm comm, int source, int tag, int* from) {
  int flag = 0;
  MPI_Status st;
  S0_RETURN_IF_ERROR(MpiStatus(MPI_Iprobe(source, tag, comm, &flag, &st), "MPI_Iprobe"));
  if (!flag) return std::optional<std::string>();
  int count = 0;
  S0_RETURN_IF_ERROR(MpiStatus(MPI_Get_count(&st, MPI_BYTE, &count), "MPI_Get_count"));
  *from = st.MPI_SOURCE;
  if (count < 0 || size_t(count) > kMaxMessageBytes) {
    return Status::InvalidArgument("a control message of " + std::to_string(count) +
                                   " bytes from rank " + std::to_string(st.MPI_SOURCE) +
                                   " of the leaders exceeds the limit of " +
                                   std::to_string(kMaxMessageBytes));
  }
  std::string bytes(size_t(count), '\0');
  S0_RETURN_IF_ERROR(MpiStatus(MPI_Recv(bytes.data(), count, MPI_BYTE, st.MPI_SOURCE, tag, comm,
                                        MPI_STATUS_IGNORE),
                               "MPI_Recv"));
  return std::optional<std::string>(std::move(bytes));
}

}  // namespace

std::string MpiErrorText(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(buf, size_t(len));
}

Result<RankInfo> DescribeWorld() {
  RankInfo info;
  S0_RETURN_IF_ERROR(MpiStatus(MPI_Comm_rank(MPI_COMM_WORLD, &info.rank), "MPI_Comm_rank"));
  S0_RETURN_IF_ERROR(MpiStatus(MPI_Comm_size(MPI_COMM_WORLD, &info.size), "MPI_Comm_size"));
  MPI_Comm node;
  S0_RETURN_IF_ERROR(MpiStatus(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED,
                                                   info.rank, MPI_INFO_NULL, &node),
                               "MPI_Comm_split_type"));
  S0_RETURN_IF_ERROR(MpiStatus(MPI_Comm_rank(node, &info.local_rank), "MPI_Comm_rank"));
  S0_RETURN_IF_ERROR(MpiStatus(MPI_Comm_size(node, &info.local_size), "MPI_Comm_size"));
  S0_RETURN_IF_ERROR(MpiStatus(MPI_Comm_free(&node), "MPI_Comm_free"));
  char host[256] = "?";
  gethostname(host, sizeof host - 1);
  info.host = host;
  return info;
}

void AbortJob(const std::string& why, int code) {
  spdlog::critical("{}; ending the job (MPI_Abort, exit status {})", why, code);
  spdlog::default_logger()->flush();
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; this only keeps [[noreturn]] true
}

// ---- MpiGroupComm

MpiGroupComm::MpiGroupComm(MPI_Comm comm, std::string name, double timeout_s,
                           std::function<void()> idle)
    : comm_(comm), name_(std::move(name)), timeout_s_(timeout_s), idle_(std::move(idle)) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

Status MpiGroupComm::Wait(MPI_Request* request, double timeout_s, const char* what) {
  if (broken_) return Status::Unavailable(name_ + ": the communicator failed earlier");
  Status s = WaitRequest(request, timeout_s, idle_, name_ + ": " + what);
  if (!s.ok()) broken_ = true;
  return s;
}

Status MpiGroupComm::AllReduce(void* data, size_t n, MPI_Datatype type, size_t elem_bytes,
                               MPI_Op op, const char* what) {
  if (size_ == 1) return Status::Ok();
  char* p = static_cast<char*>(data);
  for (size_t at = 0; at < n; at += kChunk) {
    const int count = int(std::min(kChunk, n - at));
    MPI_Request req;
    const int rc = MPI_Iallreduce(MPI_IN_PLACE, p + at * elem_bytes, count, type, op, comm_, &req);
    if (rc != MPI_SUCCESS) {
      broken_ = true;
      return MpiStatus(rc, name_ + ": " + what);
    }
    S0_RETURN_IF_ERROR(Wait(&req, timeout_s_, what));
  }
  return Status::Ok();
}

Status MpiGroupComm::Bcast(void* data, size_t n, MPI_Datatype type, size_t elem_bytes,
                           double timeout_s, const char* what) {
  if (size_ == 1) return Status::Ok();
  char* p = static_cast<char*>(data);
  for (size_t at = 0; at < n; at += kChunk) {
    const int count = int(std::min(kChunk, n - at));
    MPI_Request req;
    const int rc = MPI_Ibcast(p + at * elem_bytes, count, type, 0, comm_, &req);
    if (rc != MPI_SUCCESS) {
      broken_ = true;
      return MpiStatus(rc, name_ + ": " + what);
    }
    S0_RETURN_IF_ERROR(Wait(&req, timeout_s, what));
  }
  return Status::Ok();
}

Status MpiGroupComm::AllReduceSum(std::span<float> data) {
  return AllReduce(data.data(), data.size(), MPI_FLOAT, sizeof(float), MPI_SUM, "all-reduce (sum)");
}

Status MpiGroupComm::AllReduceSum(std::span<double> data) {
  return AllReduce(data.data(), data.size(), MPI_DOUBLE, sizeof(double), MPI_SUM,
                   "all-reduce (sum)");
}

Status MpiGroupComm::AllReduceMax(std::span<int64_t> data) {
  return AllReduce(data.data(), data.size(), MPI_INT64_T, sizeof(int64_t), MPI_MAX,
                   "all-reduce (max)");
}

Status MpiGroupComm::Broadcast(std::span<float> data) {
  return Bcast(data.data(), data.size(), MPI_FLOAT, sizeof(float), timeout_s_, "broadcast");
}

Status MpiGroupComm::Broadcast(std::string& bytes, double timeout_s) {
  if (size_ == 1) return Status::Ok();
  if (timeout_s == kCommTimeout) timeout_s = timeout_s_;
  uint64_t n = bytes.size();
  S0_RETURN_IF_ERROR(Bcast(&n, 1, MPI_UINT64_T, sizeof n, timeout_s, "broadcast"));
  if (n > kMaxBroadcastBytes) {
    broken_ = true;
    return Status::InvalidArgument(name_ + ": a broadcast of " + std::to_string(n) +
                                   " bytes exceeds the limit of 1 GiB");
  }
  bytes.resize(size_t(n));
  return Bcast(bytes.data(), bytes.size(), MPI_BYTE, 1, timeout_s_, "broadcast");
}

// ---- SendQueue

Status SendQueue::Send(std::string bytes, int dest, int tag) {
  S0_RETURN_IF_ERROR(Progress());
  Pending p{MPI_REQUEST_NULL, std::make_unique<std::string>(std::move(bytes))};
  S0_RETURN_IF_ERROR(MpiStatus(MPI_Isend(p.bytes->data(), int(p.bytes->size()), MPI_BYTE, dest, tag,
                                         comm_, &p.request),
                               "MPI_Isend to rank " + std::to_string(dest)));
  pending_.push_back(std::move(p));
  return Status::Ok();
}

Status SendQueue::Progress() {
  while (!pending_.empty()) {
    int done = 0;
    S0_RETURN_IF_ERROR(MpiStatus(MPI_Test(&pending_.front().request, &done, MPI_STATUS_IGNORE),
                                 "MPI_Test (send)"));
    if (!done) break;
    pending_.pop_front();
  }
  return Status::Ok();
}

Status SendQueue::Flush(double timeout_s) {
  while (!pending_.empty()) {
    S0_RETURN_IF_ERROR(WaitRequest(&pending_.front().request, timeout_s, nullptr,
                                   "sending a control message"));
    pending_.pop_front();
  }
  return Status::Ok();
}

// ---- MpiCoordinatorTransport

class MpiCoordinatorTransport::LocalLink final : public CoordinatorLink {
 public:
  explicit LocalLink(MpiCoordinatorTransport* t) : t_(t) {}
  Status Send(const proto::WorkerMessage& message) override {
    t_->from_local_.push_back(message);
    return Status::Ok();
  }
  Result<std::optional<proto::CoordinatorMessage>> Poll() override {
    if (t_->to_local_.empty()) return std::optional<proto::CoordinatorMessage>();
    proto::CoordinatorMessage m = std::move(t_->to_local_.front());
    t_->to_local_.pop_front();
    return std::optional<proto::CoordinatorMessage>(std::move(m));
  }

 private:
  MpiCoordinatorTransport* t_;
};

MpiCoordinatorTransport::MpiCoordinatorTransport(MPI_Comm leaders, int n_groups)
    : leaders_(leaders), n_groups_(n_groups), sends_(leaders),
      local_(std::make_unique<LocalLink>(this)) {}

MpiCoordinatorTransport::~MpiCoordinatorTransport() = default;

CoordinatorLink& MpiCoordinatorTransport::local() { return *local_; }

Status MpiCoordinatorTransport::Send(int group, const proto::CoordinatorMessage& message) {
  if (group == 0) {
    to_local_.push_back(message);
    return Status::Ok();
  }
  if (group < 0 || group >= n_groups_) {
    return Status::Internal("no group " + std::to_string(group));
  }
  return sends_.Send(EncodeMessage(message), group, kTagToLeader);
}

Result<std::optional<CoordinatorTransport::Incoming>> MpiCoordinatorTransport::Poll() {
  S0_RETURN_IF_ERROR(sends_.Progress());
  if (!from_local_.empty()) {
    Incoming in{0, std::move(from_local_.front())};
    from_local_.pop_front();
    return std::optional<Incoming>(std::move(in));
  }
  int from = -1;
  S0_ASSIGN_OR_RETURN(std::optional<std::string> bytes,
                      TryReceive(leaders_, MPI_ANY_SOURCE, kTagToCoordinator, &from));
  if (!bytes) return std::optional<Incoming>();
  Incoming in;
  in.group = from;
  S0_RETURN_IF_ERROR(DecodeMessage(*bytes, &in.message,
                                   "a message from group " + std::to_string(from) + "'s leader"));
  return std::optional<Incoming>(std::move(in));
}

// ---- MpiLeaderLink

Status MpiLeaderLink::Send(const proto::WorkerMessage& message) {
  return sends_.Send(EncodeMessage(message), 0, kTagToCoordinator);
}

Result<std::optional<proto::CoordinatorMessage>> MpiLeaderLink::Poll() {
  S0_RETURN_IF_ERROR(sends_.Progress());
  int from = -1;
  S0_ASSIGN_OR_RETURN(std::optional<std::string> bytes,
                      TryReceive(leaders_, 0, kTagToLeader, &from));
  if (!bytes) return std::optional<proto::CoordinatorMessage>();
  proto::CoordinatorMessage m;
  S0_RETURN_IF_ERROR(DecodeMessage(*bytes, &m, "a message from the coordinator (rank 0)"));
  return std::optional<proto::CoordinatorMessage>(std::move(m));
}

}  // namespace s0
