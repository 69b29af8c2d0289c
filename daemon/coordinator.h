// The job's scheduler, on rank 0: hands runs to worker groups as they free up, collects their
// results, and stops or releases the groups. Pure logic over a CoordinatorTransport: `s0d run`
// drives it over MPI (daemon/mpi_comm.h), the tests over a fake. It never blocks: rank 0 is also a
// worker, and calls Pump() between examples, at step boundaries and while it waits.
//
// Protocol (proto/control.proto), group leader <-> coordinator:
//   Ready{}                 the group is idle -> Assign{run}, or Release (job over), or it is
//                           parked: KeepAlive every keepalive_s until an Assign or a Release
//   Progress{run, step, loss}  after every step of a run: the busy group's heartbeat
//   Ready{finished: result} the run is over -> the next decision, as above
//   StopRequest{}           a stop signal reached an idle leader
//   Stop{}                  to every busy group once the job is stopping (a signal on any
//                           rank, or a run came back interrupted); no further run is assigned
//   Stop{cancel}            to the one group whose run a client of `s0d serve` cancelled: its
//                           interrupted result is recorded as cancelled and the job goes on
// Idle groups are parked, not released, while any group is still busy, so a Release always
// means the job is over for every group; the final collective of `s0d run` then waits only for
// rank 0, and a deadline on it is sound.
//
// Every run is assigned at most once and every result is accepted exactly once. Anything else
// is a protocol error, fatal to the job (Pump returns it; s0d aborts): a message a group may not
// send in its state (a result for another run, a second result, Ready while busy, Progress while
// idle, anything but a StopRequest after its release, which may cross the release in flight), a
// message the transport could not decode, or a busy or starting group silent for longer than
// stall_timeout_s.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "kernels/status.h"
#include "proto/control.pb.h"

namespace s0 {

struct CoordinatorOptions {
  double stall_timeout_s = 600;
  double keepalive_s = 150;
  int group_size = 1;  // only to name leader ranks (group g's leader is rank g * group_size)
};

class CoordinatorTransport {
 public:
  struct Incoming {
    int group = 0;
    proto::WorkerMessage message;
  };
  virtual ~CoordinatorTransport() = default;
  virtual Status Send(int group, const proto::CoordinatorMessage& message) = 0;
  // The next message that has arrived, if any; never blocks. An error: a message that failed the
  // checks of daemon/wire.h (naming its sender), or a transport failure.
  virtual Result<std::optional<Incoming>> Poll() = 0;
};

// A group leader's line to the coordinator (the other end of a CoordinatorTransport).
class CoordinatorLink {
 public:
  virtual ~CoordinatorLink() = default;
  virtual Status Send(const proto::WorkerMessage& message) = 0;
  // The next message from the coordinator, if any; never blocks.
  virtual Result<std::optional<proto::CoordinatorMessage>> Poll() = 0;
};

class Coordinator {
 public:
  using Clock = std::chrono::steady_clock;

  // `runs`: the runs to execute (a rerun leaves out those already done), in order.
  Coordinator(std::vector<proto::RunSpec> runs, int n_groups, CoordinatorOptions options,
              CoordinatorTransport* transport, Clock::time_point now);

  // Handles every message that has arrived, then the timers (stalls, keepalives).
  Status Pump(Clock::time_point now);
  // A stop signal on this process: no further run is assigned; busy groups are told to stop.
  Status RequestStop();
  // A client cancelled `run_id`. A run not yet assigned is dropped (its result: RUN_CANCELLED);
  // a busy run's group is told to stop it at its next step boundary and the interrupted result
  // it returns is recorded as RUN_CANCELLED (a result of done or failed, which may cross the
  // cancel, stands). The rest of the job goes on. NotFound: the run is not one this coordinator
  // still has to finish.
  Status CancelRun(const std::string& run_id);

  // A busy group's run as last reported. eta_s: the time left at the pace of the steps reported
  // since the run was assigned (-1 before two reports).
  struct RunProgress {
    std::string run_id;
    int64_t step = 0, n_steps = 0;
    double loss = 0;
    double eta_s = -1;
  };
  std::vector<RunProgress> Busy(Clock::time_point now) const;

  bool stopping() const { return stopping_; }
  bool finished() const;  // every group released
  // One result per run that came back, in arrival order.
  const std::vector<proto::RunResult>& results() const { return results_; }

 private:
  enum class GroupState { kStarting, kBusy, kParked, kReleased };
  struct Group {
    GroupState state = GroupState::kStarting;
    std::string run_id;          // kBusy
    int64_t step = 0;            // kBusy: last reported
    int64_t n_steps = 0;
    double loss = 0;             // kBusy: of the last reported step
    int64_t first_step = -1;     // kBusy: the first step reported (a resumed run starts late)
    Clock::time_point first;     // kBusy: when it was reported
    bool stop_sent = false;      // kBusy
    bool cancel = false;         // kBusy: its run was cancelled
    Clock::time_point heard;     // kStarting, kBusy: last message
    Clock::time_point kept;      // kParked: last keepalive sent
  };

  Status Handle(int g, const proto::WorkerMessage& m, Clock::time_point now);
  Status OnReady(int g, const proto::Ready& ready, Clock::time_point now);
  Status Decide(int g, Clock::time_point now);
  Status StopBusyGroups();
  Status ReleaseParkedIfOver();
  Status Release(int g);
  Status ProtocolError(int g, const std::string& what) const;
  std::string Who(int g) const;

  std::vector<proto::RunSpec> runs_;
  size_t next_ = 0;
  std::vector<Group> groups_;
  CoordinatorOptions options_;
  CoordinatorTransport* transport_;
  bool stopping_ = false;
  std::vector<proto::RunResult> results_;
};

}  // namespace s0
