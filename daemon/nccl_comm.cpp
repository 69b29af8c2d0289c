#include "daemon/nccl_comm.h"

#ifdef S0_HAVE_CUDA

#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

namespace s0 {
namespace {

using Clock = std::chrono::steady_clock;

std::string NcclText(ncclResult_t r) { return ncclGetErrorString(r); }

}  // namespace

Result<std::unique_ptr<NcclComm>> NcclComm::Create(GroupComm& bootstrap, int device,
                                                   double timeout_s, std::function<void()> idle) {
  ncclUniqueId id{};
  std::string bytes;
  if (bootstrap.rank() == 0) {
    if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) {
      return Status::Unavailable("ncclGetUniqueId: " + NcclText(r));
    }
    bytes.assign(reinterpret_cast<const char*>(&id), sizeof id);
  }
  S0_RETURN_IF_ERROR(bootstrap.Broadcast(bytes, kCommTimeout));
  if (bytes.size() != sizeof id) {
    return Status::Unavailable("the NCCL unique id broadcast has " + std::to_string(bytes.size()) +
                               " bytes, expected " + std::to_string(sizeof id));
  }
  std::memcpy(&id, bytes.data(), sizeof id);
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
    return Status::Unavailable("cudaSetDevice(" + std::to_string(device) +
                               "): " + cudaGetErrorString(e));
  }
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t r =
      ncclCommInitRankConfig(&comm, bootstrap.size(), id, bootstrap.rank(), &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    if (comm != nullptr) ncclCommAbort(comm);  // whatever part of it was made
    return Status::Unavailable("ncclCommInitRankConfig: " + NcclText(r));
  }
  std::unique_ptr<NcclComm> nc(
      new NcclComm(comm, bootstrap.rank(), bootstrap.size(), timeout_s, std::move(idle)));
  // Initialisation is over once the communicator no longer reports ncclInProgress.
  S0_RETURN_IF_ERROR(nc->Wait([] { return Result<bool>(true); }, "NCCL initialisation"));
  return nc;
}

NcclComm::~NcclComm() {
  if (comm_ == nullptr) return;  // aborted after an error
  // Finalize (completes what is in flight), bounded like every other wait, then destroy.
  const ncclResult_t r = ncclCommFinalize(comm_);
  const auto start = Clock::now();
  ncclResult_t state = r;
  while (state == ncclInProgress &&
         std::chrono::duration<double>(Clock::now() - start).count() <= timeout_s_) {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
    ncclCommGetAsyncError(comm_, &state);
  }
  if (state == ncclSuccess) {
    ncclCommDestroy(comm_);
  } else {
    ncclCommAbort(comm_);
  }
}

Status NcclComm::Abort(const std::string& why) {
  ncclCommAbort(comm_);
  comm_ = nullptr;
  return Status::Unavailable(why);
}

Status NcclComm::Wait(const std::function<Result<bool>()>& done, const char* what) {
  const auto start = Clock::now();
  for (;;) {
    ncclResult_t state = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) state = r;
    if (state != ncclSuccess && state != ncclInProgress) {
      return Abort(std::string(what) + " failed: " + NcclText(state));
    }
    if (state == ncclSuccess) {
      Result<bool> finished = done();
      // The collective may still be in flight: abort it rather than leave it to the destructor.
      if (!finished.ok()) return Abort(finished.status().message());
      if (*finished) return Status::Ok();
    }
    const double waited = std::chrono::duration<double>(Clock::now() - start).count();
    if (waited > timeout_s_) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.1f", timeout_s_);
      return Abort(std::string(what) + " did not complete within " + buf +
                   " s: a rank died or stalled (NCCL communicator aborted)");
    }
    if (idle_) idle_();
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

Status NcclComm::SumInPlace(float* device_data, size_t count, cudaStream_t stream) {
  if (comm_ == nullptr) return Status::Unavailable("the NCCL communicator is broken");
  ncclResult_t r =
      ncclAllReduce(device_data, device_data, count, ncclFloat, ncclSum, comm_, stream);
  if (r != ncclSuccess && r != ncclInProgress) {
    return Abort(std::string("ncclAllReduce: ") + NcclText(r));
  }
  // Enqueued (the non-blocking communicator reports ncclInProgress until it is); then the kernel
  // runs on `stream`: done once the stream has drained.
  return Wait(
      [stream]() -> Result<bool> {
        const cudaError_t e = cudaStreamQuery(stream);
        if (e == cudaSuccess) return true;
        if (e == cudaErrorNotReady) return false;
        return Status::Unavailable(std::string("the gradient all-reduce's stream: ") +
                                   cudaGetErrorString(e));
      },
      "the NCCL gradient all-reduce");
}

}  // namespace s0

#endif  // S0_HAVE_CUDA
