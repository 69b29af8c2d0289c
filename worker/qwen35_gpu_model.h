// The Qwen3.5 text decoder on one GPU: the CUDA twin of worker/qwen35_model.h's Qwen35Model,
// structured op for op like it (forward from S0, completion-only cross-entropy, backward to dS0
// that stops at the lowest tuned layer, one layer recomputed at a time), but for a whole batch of
// examples packed into one token axis.
//
// Packing: the examples of a micro-batch are concatenated along T (cu_seqlens, and each token's
// position in its own example for RoPE and the causal conv); every example starts from the same
// S0; no attention, conv tap or recurrent state crosses an example boundary. Micro-batches: the
// examples, in order, are grouped greedily into micro-batches of at most `max_tokens` tokens (an
// example longer than that runs alone); each runs forward, loss and backward on its own and dS0
// is summed over them on the device.
//
// Dtypes on the device (kernels/ops_cuda.h's rules): every matrix (embed_tokens, lm_head, the q/k/
// v/o, in_proj_*, out_proj and gate/up/down projections) is bf16 (a BF16 checkpoint's bytes as
// stored; F32/F16/F64 ones rounded to nearest even); norm weights, conv taps, A_log and dt_bias
// are fp32. The residual stream, the delta-rule and attention inputs/outputs, S0, dS0 and every
// activation gradient are fp32; GEMM operands are bf16 with fp32 accumulation.
//
// Memory: the forward keeps only each layer's input hidden state, in fp32 [T, H], for the layers
// from the lowest tuned one up (fp32 so that the backward's recompute reproduces the forward
// exactly). The recompute of a layer stops once its MLP's gate/up projections are formed: the
// layer's output (the down projection) is not needed by its backward. Scratch buffers are
// allocated on first use, kept, and grown (never shrunk) when a larger micro-batch comes.
//
// Not thread-safe: one host thread uses a model (and its CudaContext) at a time. Device errors
// are fatal (CUDA_CHECK).
// Include only where S0_HAVE_CUDA is defined.
#pragma once

#ifdef S0_HAVE_CUDA

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "kernels/cross_entropy_cuda.h"
#include "kernels/device_buffer.h"
#include "kernels/status.h"
#include "worker/model_config.h"
#include "worker/qwen35_model.h"
#include "worker/qwen35_weights.h"

namespace s0 {

struct Qwen35GpuOptions {
  static constexpr int64_t kDefaultMaxTokens = 32768;
  // Token budget of one micro-batch (> 0).
  int64_t max_tokens = kDefaultMaxTokens;

  // max_tokens from the environment variable S0_GPU_TOKENS (a positive decimal integer) when it
  // is set, else the default; InvalidArgument when it is set to anything else.
  static Result<Qwen35GpuOptions> FromEnv();
};

// Device memory the model holds, in bytes.
// Sums a device buffer element-wise over the ranks of a data-parallel group, in place, on the
// caller's stream (daemon/nccl_comm.h implements it with NCCL). Every rank of the group makes the
// same calls with the same lengths. An error (a peer died or stalled, the transport failed) leaves
// the group unusable.
class GpuGroupReducer {
 public:
  virtual ~GpuGroupReducer() = default;
  virtual Status SumInPlace(float* device_data, size_t count, cudaStream_t stream) = 0;
  // True once a call has failed: the group cannot go on (its runs end the job, as a broken
  // daemon/group_comm.h communicator does).
  virtual bool broken() const = 0;
};

struct GpuMemoryReport {
  size_t weights = 0;    // frozen weights
  size_t workspace = 0;  // activations, saved layer inputs, gradients, S0/dS0, kernel and
                         // cross-entropy workspaces, as allocated now
  size_t peak = 0;       // high-water mark of weights + workspace since construction
};

class Qwen35GpuModel {
 public:
  // Uploads `weights` (loaded with WeightFormat::kAsStored; not needed afterwards) to the device
  // of `ctx`; `ctx` must outlive the model, and the model's work is enqueued on its stream.
  Qwen35GpuModel(const CudaContext& ctx, const Qwen35Config& config, const Qwen35Weights& weights,
                 const Qwen35GpuOptions& options = {});

  // A model with random weights generated on the device (benchmarks: nothing crosses the host),
  // tied embeddings: matrices N(0, 1/fan_in), embeddings N(0, 0.02^2), the 1 + w norms' w
  // N(0, 0.02^2), the gated norm's w N(1, 0.02^2), conv taps N(0, 1/K), dt_bias 1, A_log
  // log U(0.01, 0.5). Deterministic in `seed`.
  static std::unique_ptr<Qwen35GpuModel> WithRandomWeights(const CudaContext& ctx,
                                                           const Qwen35Config& config,
                                                           uint64_t seed,
                                                           const Qwen35GpuOptions& options = {});

  ~Qwen35GpuModel();
  Qwen35GpuModel(const Qwen35GpuModel&) = delete;
  Qwen35GpuModel& operator=(const Qwen35GpuModel&) = delete;

  const Qwen35Config& config() const { return config_; }
  const std::vector<int>& delta_layers() const { return delta_layers_; }  // ascending
  int64_t state_size() const;                                             // H_v * d_k * d_v

  // The batch's loss and, for every layer in `grads`, dS0.
  //   Returns SUM over the examples of each example's mean completion cross-entropy (the CPU
  //   engine's Loss of that example); divide by the example count for the batch's mean.
  //   Adds into grads[layer] (each pre-sized to state_size(); layers must be DeltaNet layers)
  //   grad_scale * SUM over the examples of d(example's mean CE)/dS0[layer]; with
  //   grad_scale = 1 / n this is the gradient of the mean loss. Entries are not zeroed first.
  //   Layers in `s0` (DeltaNet layers, state_size() values each) start from their state, other
  //   DeltaNet layers from zero. With `grads` empty only the loss is computed (nothing is kept
  //   for a backward). The backward stops at the lowest layer in `grads`.
  // An empty batch returns 0 and changes nothing. InvalidArgument (and no change to `grads`) for
  // an example with fewer than 2 tokens, prompt_len outside [0, length), or an id outside the
  // vocabulary; for a state or gradient of a layer that is not a DeltaNet layer or of the wrong
  // size. Waits for the device before returning.
  //
  // With `group` (not null, and `grads` not empty), every rank of the group passes its own share
  // of the examples (possibly none) and the same layers: the loss sum and the dS0 sums are summed
  // over the group on the device, in one fused call, before they reach the host, so every rank
  // returns the group's loss sum and adds the group's gradient. The group's error is returned
  // as is (nothing is added to `grads` then).
  Result<double> LossAndGrad(const std::vector<TokenExample>& batch, const StateMap<float>& s0,
                             double grad_scale, StateMap<float>& grads,
                             GpuGroupReducer* group = nullptr);

  GpuMemoryReport Memory() const;

 private:
  struct LayerWeights;
  struct Scratch;
  struct MicroBatch;

  Qwen35GpuModel(const CudaContext& ctx, const Qwen35Config& config,
                 const Qwen35GpuOptions& options);
  void AllocateWeights();
  void UploadWeights(const Qwen35Weights& weights);
  void RandomizeWeights(uint64_t seed);

  Status Validate(const std::vector<TokenExample>& batch, const StateMap<float>& s0,
                  const StateMap<float>& grads) const;
  // Forward, loss and (when ds0_into is not empty) backward of one micro-batch; returns its sum
  // of per-example losses. ds0_into: per layer, where to add its dS0 (null: nowhere), or empty.
  double RunMicroBatch(const std::vector<TokenExample>& batch, const MicroBatch& mb, int lowest,
                       double grad_scale, const std::vector<float*>& ds0_into);
  void EnsureCapacity(int64_t tokens, int64_t max_len, int saved_layers, size_t kernel_bytes);

  // One decoder layer on h1, whose input is h0 (h1 may equal h0: in place). With `full` false
  // it stops after the MLP's gate/up projections (the backward's recompute).
  void LayerForward(int layer, const MicroBatch& mb, const float* h0, float* h1, bool full);
  // keep_for_backward (the backward's recompute): the delta rule leaves its per-chunk forward
  // quantities in the kernel workspace for DeltaBackward, which then skips recomputing them.
  void DeltaForward(const LayerWeights& w, int layer, const MicroBatch& mb, float* h1,
                    bool keep_for_backward);
  void AttentionForward(const LayerWeights& w, const MicroBatch& mb, float* h1);
  // dh (in place): gradient w.r.t. the layer's output -> its input, after LayerForward(full =
  // false) from h0 into scratch h1. Adds dS0 into ds0 when it is not null; with `stop` it
  // returns as soon as dS0 is known (dh is then not updated).
  void LayerBackward(int layer, const MicroBatch& mb, const float* h0, float* ds0, bool stop);
  // The mixers' backward: writes dL/dxn into the scratch dx (unless stopping).
  void DeltaBackward(const LayerWeights& w, int layer, const MicroBatch& mb, float* ds0, bool stop);
  void AttentionBackward(const LayerWeights& w, const MicroBatch& mb);

  void TrackPeak();
  size_t WorkspaceBytes() const;

  const CudaContext& ctx_;
  Qwen35Config config_;
  Qwen35GpuOptions options_;
  std::vector<int> delta_layers_;
  std::vector<LayerWeights> layers_;
  DeviceBuffer<bf16> embed_, lm_head_;  // lm_head_ stays empty when tied
  DeviceBuffer<float> final_norm_;
  size_t weight_bytes_ = 0;
  size_t peak_bytes_ = 0;

  gpu::CompletionCrossEntropy ce_;
  size_t ce_bytes_ = 0;
  std::unique_ptr<Scratch> scratch_;
  std::map<int, DeviceBuffer<float>> s0_;       // every DeltaNet layer: its S0 for this call
  // The tuned layers' dS0 summed over micro-batches, one layer after another in `grads` order,
  // then one float for the loss sum: one buffer, so a group reduces it in one call.
  DeviceBuffer<float> ds0_sum_;
};

}  // namespace s0

#endif  // S0_HAVE_CUDA
