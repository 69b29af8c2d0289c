// The collectives of one data-parallel worker group (or of all ranks), behind a small interface:
// MPI implements it on CPU builds (daemon/mpi_comm.h); NCCL will implement the float all-reduce
// of GPU builds behind the same calls. Every rank of the communicator must make the same calls in
// the same order with the same lengths.
//
// Failure: a call that cannot complete (a peer died or stalled past the deadline, the transport
// failed) returns Unavailable naming the call, and the communicator is broken from then on: the
// group cannot continue and the job must end (as with NCCL, whose communicators must be aborted
// after an error).
#pragma once

#include <cstdint>
#include <limits>
#include <span>
#include <string>

#include "kernels/status.h"

namespace s0 {

inline constexpr double kWaitForever = std::numeric_limits<double>::infinity();
inline constexpr double kCommTimeout = -1;  // the communicator's own deadline

class GroupComm {
 public:
  virtual ~GroupComm() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual bool broken() const = 0;

  // In place, element-wise over the ranks; every rank ends with the same values.
  virtual Status AllReduceSum(std::span<float> data) = 0;
  virtual Status AllReduceSum(std::span<double> data) = 0;
  virtual Status AllReduceMax(std::span<int64_t> data) = 0;
  // Rank 0's values to every rank (every rank passes the same length).
  virtual Status Broadcast(std::span<float> data) = 0;
  // Rank 0's bytes to every rank (resized on the others; at most 1 GiB). Waits at most
  // `timeout_s` for rank 0 to start sending (kCommTimeout: the communicator's deadline;
  // kWaitForever: none, for a group parked between runs, which waits on its leader for as long
  // as the job lasts).
  virtual Status Broadcast(std::string& bytes, double timeout_s) = 0;
};

}  // namespace s0
