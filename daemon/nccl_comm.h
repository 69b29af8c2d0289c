// NCCL for the gradient all-reduce of a data-parallel group on GPUs: the one collective that
// carries S0 gradients (and the loss) between the group's GPUs, on the device, in one fused call
// per step (worker/qwen35_gpu_model.h's GpuGroupReducer). Everything else a group agrees on
// (control, broadcasts of states at a run's start) stays on its MPI communicator.
//
// Set-up: the group's rank 0 creates the NCCL unique id and broadcasts it over the group's
// MPI communicator; every rank then joins with ncclCommInitRankConfig on the GPU its CUDA engine
// uses. The communicator is non-blocking (config.blocking = 0) so that no NCCL call can hang the
// process: initialisation and every all-reduce are polled (ncclCommGetAsyncError, and
// cudaStreamQuery for the kernel) against a deadline; on an error or at the deadline the
// communicator is aborted (ncclCommAbort, which also unblocks the kernel on the stream) and the
// call returns Unavailable: a peer died or stalled. The group cannot continue after that (as
// with daemon/group_comm.h's broken communicators) and the job ends.
//
// Single-threaded use. Include only where S0_HAVE_CUDA is defined.
#pragma once

#ifdef S0_HAVE_CUDA

#include <nccl.h>

#include <functional>
#include <memory>
#include <string>

#include "daemon/group_comm.h"
#include "kernels/status.h"
#include "worker/qwen35_gpu_model.h"

namespace s0 {

class NcclComm final : public GpuGroupReducer {
 public:
  // Collective over `bootstrap` (every rank of the group calls it). `device`: this rank's GPU.
  // `timeout_s` bounds the set-up and every later call; `idle` runs between polls (rank 0 pumps
  // its coordinator there).
  static Result<std::unique_ptr<NcclComm>> Create(GroupComm& bootstrap, int device,
                                                  double timeout_s, std::function<void()> idle);
  ~NcclComm() override;
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  Status SumInPlace(float* device_data, size_t count, cudaStream_t stream) override;
  bool broken() const override { return comm_ == nullptr; }
  int rank() const { return rank_; }
  int size() const { return size_; }

 private:
  NcclComm(ncclComm_t comm, int rank, int size, double timeout_s, std::function<void()> idle)
      : comm_(comm), rank_(rank), size_(size), timeout_s_(timeout_s), idle_(std::move(idle)) {}
  // Polls until `done()` holds, the communicator reports an error, or the deadline passes;
  // aborts the communicator on the latter two.
  Status Wait(const std::function<Result<bool>()>& done, const char* what);
  // Aborts the communicator (it is unusable from then on) and returns Unavailable(why).
  Status Abort(const std::string& why);

  ncclComm_t comm_ = nullptr;
  int rank_ = 0, size_ = 1;
  double timeout_s_;
  std::function<void()> idle_;
};

}  // namespace s0

#endif  // S0_HAVE_CUDA
