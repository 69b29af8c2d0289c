// MPI plumbing of `s0d run`: GroupComm over MPI, the coordinator's transport to the group leaders
// and the leaders' links back. Every communicator has MPI_ERRORS_RETURN, so MPI failures come back
// as Status. Every wait polls (MPI_Test) against a deadline, so a dead or stalled peer is an error
// after a bounded time, never a hang; between polls it calls `idle` (rank 0 pumps the coordinator
// there) and sleeps with a short backoff (up to 1 ms), leaving the cores to ranks still computing.
// Single-threaded use only (MPI_THREAD_FUNNELED: the CPU engine's pool threads never call MPI).
#pragma once

#include <mpi.h>

#include <deque>
#include <functional>
#include <memory>
#include <string>

#include "daemon/coordinator.h"
#include "daemon/group_comm.h"

namespace s0 {

// MPI's text for an error code.
std::string MpiErrorText(int code);

// Where this process sits: world rank and size, rank and size on this host.
struct RankInfo {
  int rank = 0, size = 1;
  int local_rank = 0, local_size = 1;
  std::string host;
};
Result<RankInfo> DescribeWorld();

// Ends the whole job now: logs `why` (critical), flushes the logs, MPI_Abort(MPI_COMM_WORLD, code).
// mpirun then kills every rank and exits with `code`.
[[noreturn]] void AbortJob(const std::string& why, int code);

class MpiGroupComm final : public GroupComm {
 public:
  // `comm` is borrowed and must outlive this. `name` appears in errors ("group 1", "the job").
  MpiGroupComm(MPI_Comm comm, std::string name, double timeout_s, std::function<void()> idle);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool broken() const override { return broken_; }
  Status AllReduceSum(std::span<float> data) override;
  Status AllReduceSum(std::span<double> data) override;
  Status AllReduceMax(std::span<int64_t> data) override;
  Status Broadcast(std::span<float> data) override;
  Status Broadcast(std::string& bytes, double timeout_s) override;

 private:
  Status AllReduce(void* data, size_t n, MPI_Datatype type, size_t elem_bytes, MPI_Op op,
                   const char* what);
  Status Bcast(void* data, size_t n, MPI_Datatype type, size_t elem_bytes, double timeout_s,
               const char* what);
  Status Wait(MPI_Request* request, double timeout_s, const char* what);

  MPI_Comm comm_;
  std::string name_;
  double timeout_s_;
  std::function<void()> idle_;
  int rank_ = 0, size_ = 1;
  bool broken_ = false;
};

// Non-blocking sends of owned buffers, completed as later calls make progress. Flush before
// MPI_Finalize (a queue destroyed with sends in flight is only ever followed by MPI_Abort).
class SendQueue {
 public:
  explicit SendQueue(MPI_Comm comm) : comm_(comm) {}
  Status Send(std::string bytes, int dest, int tag);
  Status Progress();                  // completes what has finished, never blocks
  Status Flush(double timeout_s);     // waits for every send, with a deadline

 private:
  struct Pending {
    MPI_Request request;
    std::unique_ptr<std::string> bytes;
  };
  MPI_Comm comm_;
  std::deque<Pending> pending_;
};

// Rank 0's transport. `leaders` holds one rank per group (rank g = group g's leader); group 0's
// leader is this process and talks to the coordinator through local(), in memory.
class MpiCoordinatorTransport final : public CoordinatorTransport {
 public:
  MpiCoordinatorTransport(MPI_Comm leaders, int n_groups);
  ~MpiCoordinatorTransport() override;
  Status Send(int group, const proto::CoordinatorMessage& message) override;
  Result<std::optional<Incoming>> Poll() override;
  CoordinatorLink& local();
  Status Flush(double timeout_s) { return sends_.Flush(timeout_s); }

 private:
  class LocalLink;
  MPI_Comm leaders_;
  int n_groups_;
  SendQueue sends_;
  std::deque<proto::WorkerMessage> from_local_;
  std::deque<proto::CoordinatorMessage> to_local_;
  std::unique_ptr<LocalLink> local_;
};

// The leader of a group other than 0: to and from rank 0 of `leaders`.
class MpiLeaderLink final : public CoordinatorLink {
 public:
  explicit MpiLeaderLink(MPI_Comm leaders) : leaders_(leaders), sends_(leaders) {}
  Status Send(const proto::WorkerMessage& message) override;
  Result<std::optional<proto::CoordinatorMessage>> Poll() override;
  Status Flush(double timeout_s) { return sends_.Flush(timeout_s); }

 private:
  MPI_Comm leaders_;
  SendQueue sends_;
};

}  // namespace s0
