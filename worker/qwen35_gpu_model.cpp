#include "worker/qwen35_gpu_model.h"

#ifdef S0_HAVE_CUDA

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <span>
#include <string>
#include <system_error>
#include <type_traits>

#include "kernels/attention_cuda.h"
#include "kernels/check.h"
#include "kernels/gdn_cuda.h"
#include "kernels/gdn_ops_cuda.h"
#include "kernels/gemm_cuda.h"
#include "kernels/ops_cuda.h"
#include "kernels/rope.h"
#include "worker/qwen35_gpu_model.cuh"

namespace s0 {

using gpu::LinearBackwardInput;
using gpu::LinearForward;

namespace {

// The cross-entropy's blocking (kernels/cross_entropy_cuda.h's defaults, named so that its
// workspace can be counted).
constexpr int64_t kCeRowBlock = 2048;
constexpr int64_t kCeVocabChunk = 8192;

// Bytes CompletionCrossEntropy's constructor allocates: 8 fp32/int32 values per row, the gathered
// rows (bf16) and their gradient (fp32), the logits chunk (fp32) and its gradient (bf16).
size_t CeWorkspaceBytes(int64_t hidden, int64_t vocab) {
  const size_t rb = size_t(kCeRowBlock), chunk = size_t(std::min(kCeVocabChunk, vocab));
  return rb * (8 * 4 + size_t(hidden) * 6 + chunk * 6);
}

// Sub-allocates 256-byte-aligned pieces of one block. With a null base it only counts bytes.
class Carver {
 public:
  explicit Carver(unsigned char* base) : base_(base) {}
  template <typename T>
  T* Take(int64_t count) {
    T* p = base_ != nullptr ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += (size_t(count) * sizeof(T) + 255) / 256 * 256;
    return p;
  }
  size_t used() const { return used_; }
  void Rewind(size_t to) { used_ = to; }

 private:
  unsigned char* base_;
  size_t used_ = 0;
};

TensorView ViewOf(const HostTensor& t) {
  TensorView v;
  v.name = "weight";
  v.dtype = t.stored_dtype;
  v.shape = t.shape;
  v.bytes = std::span<const std::byte>(t.bytes);
  return v;
}

// A kAsStored tensor's values as fp32 on the host (exact for BF16/F16/F32).
std::vector<float> HostFloats(const HostTensor& t) {
  Result<std::vector<float>> f = ToFloat32(ViewOf(t));
  S0_CHECK_MSG(f.ok(), f.status().ToString());
  return std::move(f).value();
}

void CheckStored(const HostTensor& t, size_t numel) {
  S0_CHECK_MSG(size_t(t.numel()) == numel && t.bytes.size() == numel * DTypeSize(t.stored_dtype),
               "a weight does not match the config's shape, or was not loaded as kAsStored");
}

// bf16 on the device: BF16 bytes as stored, other float dtypes rounded to nearest even.
void UploadMatrix(const HostTensor& t, DeviceBuffer<bf16>& d, cudaStream_t stream) {
  CheckStored(t, d.size());
  if (t.stored_dtype == DType::kBF16) {
    CUDA_CHECK(
        cudaMemcpyAsync(d.data(), t.bytes.data(), t.bytes.size(), cudaMemcpyHostToDevice, stream));
    return;
  }
  const std::vector<float> f = HostFloats(t);
  std::vector<bf16> b(f.size());
  for (size_t i = 0; i < f.size(); ++i) b[i] = __float2bfloat16_rn(f[i]);
  d.Upload(b, stream);
}

// fp32 on the device (exact for BF16/F16/F32 checkpoints).
void UploadVector(const HostTensor& t, DeviceBuffer<float>& d, cudaStream_t stream) {
  CheckStored(t, d.size());
  if (t.stored_dtype == DType::kF32) {
    CUDA_CHECK(
        cudaMemcpyAsync(d.data(), t.bytes.data(), t.bytes.size(), cudaMemcpyHostToDevice, stream));
    return;
  }
  d.Upload(HostFloats(t), stream);
}

void CopyDeviceToDevice(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
}

// rows x width elements of T between two row-strided matrices (leading dimensions in elements).
template <typename T>
void CopyColumns(T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t width, int64_t rows,
                 cudaStream_t stream) {
  if (rows == 0) return;
  CUDA_CHECK(cudaMemcpy2DAsync(dst, size_t(ld_dst) * sizeof(T), src, size_t(ld_src) * sizeof(T),
                               size_t(width) * sizeof(T), size_t(rows), cudaMemcpyDeviceToDevice,
                               stream));
}

// A DeltaNet layer's sizes for `tokens` packed tokens: T, H, then the heads (H_k, H_v), the head
// dims (d_k, d_v) and the projection widths (key, value, conv: H_k d_k, H_v d_v, 2 kd + vd).
struct DeltaSizes {
  int64_t T, H, hk, hv, dk, dv, kd, vd, cd;
};
DeltaSizes DeltaSizesOf(const Qwen35Config& c, int64_t tokens) {
  return {tokens,
          c.hidden_size,
          c.linear_num_key_heads,
          c.linear_num_value_heads,
          c.linear_key_head_dim,
          c.linear_value_head_dim,
          c.linear_key_dim(),
          c.linear_value_dim(),
          c.linear_conv_dim()};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Weights and scratch.

struct Qwen35GpuModel::LayerWeights {
  LayerType type = LayerType::kLinearAttention;
  DeviceBuffer<float> input_ln, post_ln;  // [H]
  DeviceBuffer<bf16> gate, up, down;      // [I, H], [I, H], [H, I]
  // Gated DeltaNet.
  DeviceBuffer<bf16> qkv, z, b, a, out;             // [cd, H], [vd, H], [H_v, H] x 2, [H, vd]
  DeviceBuffer<float> conv, dt_bias, a_log, gnorm;  // [cd, K], [H_v], [H_v], [d_v]
  // Gated attention.
  DeviceBuffer<bf16> q, k, v, o;       // [2 n_h d, H], [n_kv d, H] x 2, [H, n_h d]
  DeviceBuffer<float> q_norm, k_norm;  // [d]
};

// Everything a micro-batch of up to `tokens` tokens needs, carved from `arena`; the DeltaNet and
// attention intermediates share their bytes (a layer is one or the other).
struct Qwen35GpuModel::Scratch {
  int64_t tokens = 0;  // capacity of the arena
  DeviceBuffer<unsigned char> arena;
  DeviceBuffer<float> saved;           // [layers from the lowest tuned one, T, H]: layer inputs
  DeviceBuffer<unsigned char> kernel;  // the delta-rule and attention kernels' workspace
  int64_t rope_rows = 0;
  DeviceBuffer<float> cos, sin;  // [rope_rows, rot / 2]
  DeviceBuffer<float> ds0;       // one layer's dS0 of one micro-batch, before it is summed

  int32_t *ids = nullptr, *pos = nullptr, *cu_seqlens = nullptr;    // [T], [T], [T + 1]
  float *h = nullptr, *h1 = nullptr, *dh = nullptr, *dx = nullptr;  // [T, H]
  bf16 *xn = nullptr, *x2 = nullptr, *dh16 = nullptr;               // [T, H]
  bf16 *mlp_gate = nullptr, *mlp_up = nullptr, *dgate = nullptr, *dup = nullptr;  // [T, I]
  bf16* act = nullptr;    // [T, I]: aliases dgate (a full forward and a backward never overlap)
  float* dact = nullptr;  // [T, I]
  // Gated DeltaNet.
  bf16 *qkv = nullptr, *dqkv = nullptr;                                            // [T, cd]
  bf16 *z = nullptr, *y = nullptr, *dz = nullptr;                                  // [T, vd]
  bf16 *a = nullptr, *b = nullptr, *da = nullptr, *db = nullptr;                   // [T, H_v]
  float *u = nullptr, *du = nullptr;                                               // [T, cd]
  float *qn = nullptr, *kn = nullptr, *dqn = nullptr, *dkn = nullptr;              // [T, kd]
  float *v = nullptr, *o = nullptr, *dy = nullptr, *d_o = nullptr, *dv = nullptr;  // [T, vd]
  float *g = nullptr, *beta = nullptr, *dg = nullptr, *dbeta = nullptr;            // [T, H_v]
  // Gated attention (qd = n_h d, kvd = n_kv d).
  bf16* qg = nullptr;                                                       // [T, 2 qd]
  bf16 *q_pre = nullptr, *gate = nullptr, *gated = nullptr;                 // [T, qd]
  bf16* dqg = nullptr;                                                      // [T, 2 qd]
  bf16 *dk16 = nullptr, *dv16 = nullptr;                                    // [T, kvd]
  float *qr = nullptr, *att = nullptr, *dgated = nullptr, *datt = nullptr;  // [T, qd]
  float *dgate_att = nullptr, *dqr = nullptr;                               // [T, qd]
  float *k_pre = nullptr, *kr = nullptr, *va = nullptr;                     // [T, kvd]
  float *dkr = nullptr, *dva = nullptr;                                     // [T, kvd]
  float* lse = nullptr;                                                     // [T, n_h]

  // Assigns the pointers for `cap` tokens from `base` (or only counts with a null base).
  size_t Carve(unsigned char* base, const Qwen35Config& c, int64_t cap) {
    Carver k(base);
    const int64_t T = cap, H = c.hidden_size, I = c.intermediate_size;
    ids = k.Take<int32_t>(T);
    pos = k.Take<int32_t>(T);
    cu_seqlens = k.Take<int32_t>(T + 1);
    h = k.Take<float>(T * H);
    h1 = k.Take<float>(T * H);
    dh = k.Take<float>(T * H);
    dx = k.Take<float>(T * H);
    xn = k.Take<bf16>(T * H);
    x2 = k.Take<bf16>(T * H);
    dh16 = k.Take<bf16>(T * H);
    mlp_gate = k.Take<bf16>(T * I);
    mlp_up = k.Take<bf16>(T * I);
    dgate = k.Take<bf16>(T * I);
    act = dgate;
    dup = k.Take<bf16>(T * I);
    dact = k.Take<float>(T * I);

    const size_t mixer = k.used();
    const int64_t hv = c.linear_num_value_heads, kd = c.linear_key_dim();
    const int64_t vd = c.linear_value_dim(), cd = c.linear_conv_dim();
    qkv = k.Take<bf16>(T * cd);
    dqkv = k.Take<bf16>(T * cd);
    z = k.Take<bf16>(T * vd);
    y = k.Take<bf16>(T * vd);
    dz = k.Take<bf16>(T * vd);
    a = k.Take<bf16>(T * hv);
    b = k.Take<bf16>(T * hv);
    da = k.Take<bf16>(T * hv);
    db = k.Take<bf16>(T * hv);
    u = k.Take<float>(T * cd);
    du = k.Take<float>(T * cd);
    qn = k.Take<float>(T * kd);
    kn = k.Take<float>(T * kd);
    dqn = k.Take<float>(T * kd);
    dkn = k.Take<float>(T * kd);
    v = k.Take<float>(T * vd);
    o = k.Take<float>(T * vd);
    dy = k.Take<float>(T * vd);
    d_o = k.Take<float>(T * vd);
    dv = k.Take<float>(T * vd);
    g = k.Take<float>(T * hv);
    beta = k.Take<float>(T * hv);
    dg = k.Take<float>(T * hv);
    dbeta = k.Take<float>(T * hv);
    const size_t delta_end = k.used();

    k.Rewind(mixer);
    const int64_t qd = c.num_attention_heads * c.head_dim;
    const int64_t kvd = c.num_key_value_heads * c.head_dim;
    qg = k.Take<bf16>(T * 2 * qd);
    q_pre = k.Take<bf16>(T * qd);
    gate = k.Take<bf16>(T * qd);
    gated = k.Take<bf16>(T * qd);
    dqg = k.Take<bf16>(T * 2 * qd);
    dk16 = k.Take<bf16>(T * kvd);
    dv16 = k.Take<bf16>(T * kvd);
    qr = k.Take<float>(T * qd);
    att = k.Take<float>(T * qd);
    dgated = k.Take<float>(T * qd);
    datt = k.Take<float>(T * qd);
    dgate_att = k.Take<float>(T * qd);
    dqr = k.Take<float>(T * qd);
    k_pre = k.Take<float>(T * kvd);
    kr = k.Take<float>(T * kvd);
    va = k.Take<float>(T * kvd);
    dkr = k.Take<float>(T * kvd);
    dva = k.Take<float>(T * kvd);
    lse = k.Take<float>(T * c.num_attention_heads);
    return std::max(k.used(), delta_end);
  }
};

struct Qwen35GpuModel::MicroBatch {
  size_t first = 0, count = 0;  // examples [first, first + count)
  int64_t tokens = 0;
  int64_t max_len = 0;
};

Result<Qwen35GpuOptions> Qwen35GpuOptions::FromEnv() {
  Qwen35GpuOptions o;
  const char* env = std::getenv("S0_GPU_TOKENS");
  if (env == nullptr) return o;
  const std::string s(env);
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v <= 0) {
    return Status::InvalidArgument("S0_GPU_TOKENS: '" + s + "' is not a positive integer");
  }
  o.max_tokens = v;
  return o;
}

Qwen35GpuModel::Qwen35GpuModel(const CudaContext& ctx, const Qwen35Config& config,
                               const Qwen35GpuOptions& options)
    : ctx_(ctx),
      config_(config),
      options_(options),
      ce_(config.hidden_size, config.vocab_size, kCeRowBlock, kCeVocabChunk),
      ce_bytes_(CeWorkspaceBytes(config.hidden_size, config.vocab_size)),
      scratch_(std::make_unique<Scratch>()) {
  S0_CHECK(options.max_tokens > 0);
  S0_CHECK(int64_t(config.layer_types.size()) == config.num_hidden_layers);
  for (int i = 0; i < int(config.num_hidden_layers); ++i) {
    if (config.layer_types[i] == LayerType::kLinearAttention) delta_layers_.push_back(i);
  }
  AllocateWeights();
  for (int l : delta_layers_) s0_.emplace(l, DeviceBuffer<float>(size_t(state_size())));
  scratch_->ds0 = DeviceBuffer<float>(size_t(state_size()));
  TrackPeak();
}

Qwen35GpuModel::Qwen35GpuModel(const CudaContext& ctx, const Qwen35Config& config,
                               const Qwen35Weights& weights, const Qwen35GpuOptions& options)
    : Qwen35GpuModel(ctx, config, options) {
  S0_CHECK_MSG(weights.format == WeightFormat::kAsStored,
               "the GPU model takes weights loaded with WeightFormat::kAsStored");
  S0_CHECK(weights.layers.size() == layers_.size());
  S0_CHECK(weights.tied_lm_head == config.tie_word_embeddings);
  UploadWeights(weights);
}

std::unique_ptr<Qwen35GpuModel> Qwen35GpuModel::WithRandomWeights(const CudaContext& ctx,
                                                                  const Qwen35Config& config,
                                                                  uint64_t seed,
                                                                  const Qwen35GpuOptions& options) {
  S0_CHECK_MSG(config.tie_word_embeddings, "random benchmark models have tied embeddings");
  std::unique_ptr<Qwen35GpuModel> m(new Qwen35GpuModel(ctx, config, options));
  m->RandomizeWeights(seed);
  return m;
}

Qwen35GpuModel::~Qwen35GpuModel() = default;

int64_t Qwen35GpuModel::state_size() const {
  return config_.linear_num_value_heads * config_.linear_key_head_dim *
         config_.linear_value_head_dim;
}

void Qwen35GpuModel::AllocateWeights() {
  const Qwen35Config& c = config_;
  const size_t H = size_t(c.hidden_size), I = size_t(c.intermediate_size);
  const size_t V = size_t(c.vocab_size);
  const size_t hv = size_t(c.linear_num_value_heads), vd = size_t(c.linear_value_dim());
  const size_t cd = size_t(c.linear_conv_dim()), K = size_t(c.linear_conv_kernel_dim);
  const size_t d = size_t(c.head_dim), qd = size_t(c.num_attention_heads) * d;
  const size_t kvd = size_t(c.num_key_value_heads) * d;
  size_t bytes = 0;
  auto bf = [&bytes](size_t n) {
    bytes += n * sizeof(bf16);
    return DeviceBuffer<bf16>(n);
  };
  auto f32 = [&bytes](size_t n) {
    bytes += n * sizeof(float);
    return DeviceBuffer<float>(n);
  };
  embed_ = bf(V * H);
  if (!c.tie_word_embeddings) lm_head_ = bf(V * H);
  final_norm_ = f32(H);
  layers_.resize(size_t(c.num_hidden_layers));
  for (size_t i = 0; i < layers_.size(); ++i) {
    LayerWeights& w = layers_[i];
    w.type = c.layer_types[i];
    w.input_ln = f32(H);
    w.post_ln = f32(H);
    w.gate = bf(I * H);
    w.up = bf(I * H);
    w.down = bf(H * I);
    if (w.type == LayerType::kLinearAttention) {
      w.qkv = bf(cd * H);
      w.z = bf(vd * H);
      w.b = bf(hv * H);
      w.a = bf(hv * H);
      w.out = bf(H * vd);
      w.conv = f32(cd * K);
      w.dt_bias = f32(hv);
      w.a_log = f32(hv);
      w.gnorm = f32(size_t(c.linear_value_head_dim));
    } else {
      w.q = bf(2 * qd * H);
      w.k = bf(kvd * H);
      w.v = bf(kvd * H);
      w.o = bf(H * qd);
      w.q_norm = f32(d);
      w.k_norm = f32(d);
    }
  }
  weight_bytes_ = bytes;
}

void Qwen35GpuModel::UploadWeights(const Qwen35Weights& weights) {
  const cudaStream_t st = ctx_.stream();
  UploadMatrix(weights.embed_tokens, embed_, st);
  if (!config_.tie_word_embeddings) UploadMatrix(weights.lm_head, lm_head_, st);
  UploadVector(weights.norm, final_norm_, st);
  for (size_t i = 0; i < layers_.size(); ++i) {
    LayerWeights& w = layers_[i];
    const Qwen35LayerWeights& src = weights.layers[i];
    S0_CHECK(src.type == w.type);
    UploadVector(src.input_layernorm, w.input_ln, st);
    UploadVector(src.post_attention_layernorm, w.post_ln, st);
    UploadMatrix(src.gate_proj, w.gate, st);
    UploadMatrix(src.up_proj, w.up, st);
    UploadMatrix(src.down_proj, w.down, st);
    if (w.type == LayerType::kLinearAttention) {
      const Qwen35LinearAttnWeights& l = src.linear_attn;
      UploadMatrix(l.in_proj_qkv, w.qkv, st);
      UploadMatrix(l.in_proj_z, w.z, st);
      UploadMatrix(l.in_proj_b, w.b, st);
      UploadMatrix(l.in_proj_a, w.a, st);
      UploadMatrix(l.out_proj, w.out, st);
      UploadVector(l.conv1d, w.conv, st);  // [cd, 1, K] read as [cd, K]
      UploadVector(l.dt_bias, w.dt_bias, st);
      UploadVector(l.A_log, w.a_log, st);
      UploadVector(l.norm, w.gnorm, st);
    } else {
      const Qwen35FullAttnWeights& s = src.self_attn;
      UploadMatrix(s.q_proj, w.q, st);
      UploadMatrix(s.k_proj, w.k, st);
      UploadMatrix(s.v_proj, w.v, st);
      UploadMatrix(s.o_proj, w.o, st);
      UploadVector(s.q_norm, w.q_norm, st);
      UploadVector(s.k_norm, w.k_norm, st);
    }
  }
  ctx_.Synchronize();
}

void Qwen35GpuModel::RandomizeWeights(uint64_t seed) {
  const cudaStream_t st = ctx_.stream();
  uint64_t stream_id = 0;
  auto next = [&] { return seed * 0x100000001B3ull + ++stream_id; };
  auto matrix = [&](DeviceBuffer<bf16>& m, int64_t fan_in) {
    gpu::FillNormal(m.data(), int64_t(m.size()), 0.0f, 1.0f / std::sqrt(float(fan_in)), next(), st);
  };
  auto normal = [&](DeviceBuffer<float>& x, float mean, float stddev) {
    gpu::FillNormal(x.data(), int64_t(x.size()), mean, stddev, next(), st);
  };
  const Qwen35Config& c = config_;
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  gpu::FillNormal(embed_.data(), int64_t(embed_.size()), 0.0f, 0.02f, next(), st);
  normal(final_norm_, 0.0f, 0.02f);
  for (LayerWeights& w : layers_) {
    normal(w.input_ln, 0.0f, 0.02f);
    normal(w.post_ln, 0.0f, 0.02f);
    matrix(w.gate, H);
    matrix(w.up, H);
    matrix(w.down, I);
    if (w.type == LayerType::kLinearAttention) {
      matrix(w.qkv, H);
      matrix(w.z, H);
      matrix(w.b, H);
      matrix(w.a, H);
      matrix(w.out, c.linear_value_dim());
      normal(w.conv, 0.0f, 1.0f / std::sqrt(float(c.linear_conv_kernel_dim)));
      normal(w.dt_bias, 1.0f, 0.0f);
      gpu::FillLogUniform(w.a_log.data(), int64_t(w.a_log.size()), 0.01f, 0.5f, next(), st);
      normal(w.gnorm, 1.0f, 0.02f);
    } else {
      matrix(w.q, H);
      matrix(w.k, H);
      matrix(w.v, H);
      matrix(w.o, c.num_attention_heads * c.head_dim);
      normal(w.q_norm, 0.0f, 0.02f);
      normal(w.k_norm, 0.0f, 0.02f);
    }
  }
  ctx_.Synchronize();
}

// ---------------------------------------------------------------------------------------------
// Memory.

size_t Qwen35GpuModel::WorkspaceBytes() const {
  const Scratch& s = *scratch_;
  size_t bytes = ce_bytes_ + s.arena.bytes() + s.saved.bytes() + s.kernel.bytes() + s.cos.bytes() +
                 s.sin.bytes() + s.ds0.bytes();
  for (const auto& [layer, b] : s0_) bytes += b.bytes();
  bytes += ds0_sum_.bytes();
  return bytes;
}

void Qwen35GpuModel::TrackPeak() {
  peak_bytes_ = std::max(peak_bytes_, weight_bytes_ + WorkspaceBytes());
}

GpuMemoryReport Qwen35GpuModel::Memory() const {
  GpuMemoryReport r;
  r.weights = weight_bytes_;
  r.workspace = WorkspaceBytes();
  r.peak = peak_bytes_;
  return r;
}

// Grows (never shrinks) each buffer to what a micro-batch needs. Old buffers are released before
// new ones are allocated (so the high-water mark is the new total), after the device is done
// with them.
void Qwen35GpuModel::EnsureCapacity(int64_t tokens, int64_t max_len, int saved_layers,
                                    size_t kernel_bytes) {
  Scratch& s = *scratch_;
  bool synced = false;
  auto release = [&](auto& buffer) {
    if (!synced) ctx_.Synchronize();
    synced = true;
    buffer = std::remove_reference_t<decltype(buffer)>();
  };
  if (tokens > s.tokens) {
    release(s.arena);
    s.arena = DeviceBuffer<unsigned char>(s.Carve(nullptr, config_, tokens));
    s.Carve(s.arena.data(), config_, tokens);
    s.tokens = tokens;
  }
  const size_t saved = size_t(saved_layers) * size_t(tokens * config_.hidden_size);
  if (saved > s.saved.size()) {
    release(s.saved);
    s.saved = DeviceBuffer<float>(saved);
  }
  if (kernel_bytes > s.kernel.size()) {
    release(s.kernel);
    s.kernel = DeviceBuffer<unsigned char>(kernel_bytes);
  }
  const bool has_attention = delta_layers_.size() < layers_.size();
  if (has_attention && max_len > s.rope_rows) {
    const int64_t half = config_.rotary_dim() / 2;
    std::vector<float> cos(size_t(max_len * half)), sin(cos.size());
    RopeTables(max_len, 0, config_.rotary_dim(), config_.rope_theta, cos.data(), sin.data());
    release(s.cos);
    release(s.sin);
    s.cos = DeviceBuffer<float>(cos.size());
    s.sin = DeviceBuffer<float>(sin.size());
    s.cos.Upload(cos, ctx_.stream());
    s.sin.Upload(sin, ctx_.stream());
    s.rope_rows = max_len;
  }
  TrackPeak();
}

// ---------------------------------------------------------------------------------------------
// Layers.

void Qwen35GpuModel::LayerForward(int layer, const MicroBatch& mb, const float* h0, float* h1,
                                  bool full) {
  const LayerWeights& w = layers_[size_t(layer)];
  Scratch& s = *scratch_;
  const int64_t T = mb.tokens, H = config_.hidden_size, I = config_.intermediate_size;
  const float eps = float(config_.rms_norm_eps);
  const cudaStream_t st = ctx_.stream();

  gpu::RmsNormForward(h0, w.input_ln.data(), s.xn, T, H, eps, st);
  if (h1 != h0) CopyDeviceToDevice(h1, h0, size_t(T * H) * sizeof(float), st);
  if (w.type == LayerType::kLinearAttention) {
    DeltaForward(w, layer, mb, h1, /*keep_for_backward=*/!full);
  } else {
    AttentionForward(w, mb, h1);
  }
  gpu::RmsNormForward(h1, w.post_ln.data(), s.x2, T, H, eps, st);
  LinearForward(ctx_, s.x2, w.gate.data(), s.mlp_gate, T, H, I);
  LinearForward(ctx_, s.x2, w.up.data(), s.mlp_up, T, H, I);
  if (!full) return;
  gpu::SwiGluForward(s.mlp_gate, s.mlp_up, s.act, T * I, st);
  LinearForward(ctx_, s.act, w.down.data(), h1, T, I, H, OutputMode::kAccumulate);
}

void Qwen35GpuModel::DeltaForward(const LayerWeights& w, int layer, const MicroBatch& mb,
                                  float* h1, bool keep_for_backward) {
  const Qwen35Config& c = config_;
  Scratch& s = *scratch_;
  const auto [T, H, hk, hv, dk, dv, kd, vd, cd] = DeltaSizesOf(c, mb.tokens);
  const cudaStream_t st = ctx_.stream();

  LinearForward(ctx_, s.xn, w.qkv.data(), s.qkv, T, H, cd);
  LinearForward(ctx_, s.xn, w.z.data(), s.z, T, H, vd);
  LinearForward(ctx_, s.xn, w.b.data(), s.b, T, H, hv);
  LinearForward(ctx_, s.xn, w.a.data(), s.a, T, H, hv);
  gpu::GdnConvSiluForward(s.qkv, w.conv.data(), s.u, T, cd, c.linear_conv_kernel_dim, s.pos, st);
  gpu::GdnL2NormForward(s.u, cd, s.qn, kd, T, hk, dk, st);
  gpu::GdnL2NormForward(s.u + kd, cd, s.kn, kd, T, hk, dk, st);
  CopyColumns(s.v, vd, s.u + 2 * kd, cd, vd, T, st);
  gpu::GdnGatesForward(s.a, s.b, w.a_log.data(), w.dt_bias.data(), s.g, s.beta, T, hv, st);
  const GdnPackedDims dims{T, int64_t(mb.count), hk, hv, dk, dv};
  const GdnPackedInputs in{s.cu_seqlens, s.qn, s.kn, s.v, s.g, s.beta, s0_.at(layer).data()};
  GatedDeltaRuleCudaForward(dims, in, s.o, s.kernel.data(), st, keep_for_backward);
  gpu::GdnGatedRmsNormForward(s.o, s.z, w.gnorm.data(), s.y, T * hv, dv, float(c.rms_norm_eps), st);
  LinearForward(ctx_, s.y, w.out.data(), h1, T, vd, H, OutputMode::kAccumulate);
}

void Qwen35GpuModel::AttentionForward(const LayerWeights& w, const MicroBatch& mb, float* h1) {
  const Qwen35Config& c = config_;
  Scratch& s = *scratch_;
  const int64_t T = mb.tokens, H = c.hidden_size;
  const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, d = c.head_dim;
  const int64_t rot = c.rotary_dim();
  const float eps = float(c.rms_norm_eps);
  const cudaStream_t st = ctx_.stream();

  LinearForward(ctx_, s.xn, w.q.data(), s.qg, T, H, nh * 2 * d);
  gpu::SplitQueryGate(s.qg, s.q_pre, s.gate, T, nh, d, st);
  LinearForward(ctx_, s.xn, w.k.data(), s.k_pre, T, H, nkv * d);
  LinearForward(ctx_, s.xn, w.v.data(), s.va, T, H, nkv * d);
  gpu::RmsNormForward(s.q_pre, w.q_norm.data(), s.qr, T * nh, d, eps, st);
  gpu::RmsNormForward(s.k_pre, w.k_norm.data(), s.kr, T * nkv, d, eps, st);
  gpu::RopeForward(s.qr, s.qr, T, nh, d, rot, s.cos.data(), s.sin.data(), s.pos, st);
  gpu::RopeForward(s.kr, s.kr, T, nkv, d, rot, s.cos.data(), s.sin.data(), s.pos, st);
  const AttentionPackedDims dims{T, int64_t(mb.count), nh, nkv, d};
  const AttentionPackedInputs in{s.cu_seqlens, s.qr, s.kr, s.va};
  AttentionCudaForward(dims, in, s.att, s.lse, st);
  gpu::SigmoidGateForward(s.att, s.gate, s.gated, T * nh * d, st);
  LinearForward(ctx_, s.gated, w.o.data(), h1, T, nh * d, H, OutputMode::kAccumulate);
}

void Qwen35GpuModel::LayerBackward(int layer, const MicroBatch& mb, const float* h0, float* ds0,
                                   bool stop) {
  const LayerWeights& w = layers_[size_t(layer)];
  Scratch& s = *scratch_;
  const int64_t T = mb.tokens, H = config_.hidden_size, I = config_.intermediate_size;
  const float eps = float(config_.rms_norm_eps);
  const cudaStream_t st = ctx_.stream();

  // MLP: h2 = h1 + down(swiglu(gate(x2), up(x2))), x2 = norm(h1). dh becomes dL/dh1.
  gpu::CastToBf16(s.dh, s.dh16, T * H, st);
  LinearBackwardInput(ctx_, s.dh16, w.down.data(), s.dact, T, I, H);
  gpu::SwiGluBackward(s.mlp_gate, s.mlp_up, s.dact, s.dgate, s.dup, T * I, st);
  LinearBackwardInput(ctx_, s.dgate, w.gate.data(), s.dx, T, H, I);
  LinearBackwardInput(ctx_, s.dup, w.up.data(), s.dx, T, H, I, OutputMode::kAccumulate);
  gpu::RmsNormBackward(s.h1, w.post_ln.data(), s.dx, s.dh, T, H, eps, OutputMode::kAccumulate, st);

  // Mixer: h1 = h0 + mixer(xn), xn = norm(h0); the mixer's backward leaves dL/dxn in dx.
  if (w.type == LayerType::kLinearAttention) {
    DeltaBackward(w, layer, mb, ds0, stop);
    if (stop) return;
  } else {
    S0_CHECK_MSG(!stop, "the backward can only stop at a DeltaNet layer");
    AttentionBackward(w, mb);
  }
  gpu::RmsNormBackward(h0, w.input_ln.data(), s.dx, s.dh, T, H, eps, OutputMode::kAccumulate, st);
}

void Qwen35GpuModel::DeltaBackward(const LayerWeights& w, int layer, const MicroBatch& mb,
                                   float* ds0, bool stop) {
  const Qwen35Config& c = config_;
  Scratch& s = *scratch_;
  const auto [T, H, hk, hv, dk, dv, kd, vd, cd] = DeltaSizesOf(c, mb.tokens);
  const cudaStream_t st = ctx_.stream();

  gpu::CastToBf16(s.dh, s.dh16, T * H, st);
  LinearBackwardInput(ctx_, s.dh16, w.out.data(), s.dy, T, vd, H);
  gpu::GdnGatedRmsNormBackward(s.o, s.z, w.gnorm.data(), s.dy, s.d_o, s.dz, T * hv, dv,
                               float(c.rms_norm_eps), st);
  const GdnPackedDims dims{T, int64_t(mb.count), hk, hv, dk, dv};
  const GdnPackedInputs in{s.cu_seqlens, s.qn, s.kn, s.v, s.g, s.beta, s0_.at(layer).data()};
  GdnPackedGrads grads;
  grads.ds0 = s.ds0.data();
  if (!stop) grads = {s.dqn, s.dkn, s.dv, s.dg, s.dbeta, s.ds0.data()};
  // The recompute (LayerForward with full = false) kept the delta rule's chunk quantities in
  // s.kernel; nothing used it since.
  GatedDeltaRuleCudaBackward(dims, in, s.d_o, grads, s.kernel.data(), st, /*forward_kept=*/true);
  if (ds0 != nullptr) gpu::AccumulateInto(ds0, s.ds0.data(), state_size(), st);
  if (stop) return;

  gpu::GdnL2NormBackward(s.u, cd, s.dqn, kd, s.du, cd, T, hk, dk, st);
  gpu::GdnL2NormBackward(s.u + kd, cd, s.dkn, kd, s.du + kd, cd, T, hk, dk, st);
  CopyColumns(s.du + 2 * kd, cd, s.dv, vd, vd, T, st);
  gpu::GdnConvSiluBackward(s.qkv, w.conv.data(), s.du, s.dqkv, T, cd, c.linear_conv_kernel_dim,
                           s.pos, st);
  gpu::GdnGatesBackward(s.a, s.b, w.a_log.data(), w.dt_bias.data(), s.dg, s.dbeta, s.da, s.db, T,
                        hv, st);
  LinearBackwardInput(ctx_, s.dqkv, w.qkv.data(), s.dx, T, H, cd);
  LinearBackwardInput(ctx_, s.dz, w.z.data(), s.dx, T, H, vd, OutputMode::kAccumulate);
  LinearBackwardInput(ctx_, s.db, w.b.data(), s.dx, T, H, hv, OutputMode::kAccumulate);
  LinearBackwardInput(ctx_, s.da, w.a.data(), s.dx, T, H, hv, OutputMode::kAccumulate);
}

void Qwen35GpuModel::AttentionBackward(const LayerWeights& w, const MicroBatch& mb) {
  const Qwen35Config& c = config_;
  Scratch& s = *scratch_;
  const int64_t T = mb.tokens, H = c.hidden_size;
  const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, d = c.head_dim;
  const int64_t rot = c.rotary_dim();
  const float eps = float(c.rms_norm_eps);
  const cudaStream_t st = ctx_.stream();

  gpu::CastToBf16(s.dh, s.dh16, T * H, st);
  LinearBackwardInput(ctx_, s.dh16, w.o.data(), s.dgated, T, nh * d, H);
  gpu::SigmoidGateBackward(s.att, s.gate, s.dgated, s.datt, s.dgate_att, T * nh * d, st);
  const AttentionPackedDims dims{T, int64_t(mb.count), nh, nkv, d};
  const AttentionPackedInputs in{s.cu_seqlens, s.qr, s.kr, s.va};
  AttentionCudaBackward(dims, in, s.att, s.lse, s.datt, {s.dqr, s.dkr, s.dva}, s.kernel.data(), st);
  gpu::RopeBackward(s.dqr, s.dqr, T, nh, d, rot, s.cos.data(), s.sin.data(), s.pos, st);
  gpu::RopeBackward(s.dkr, s.dkr, T, nkv, d, rot, s.cos.data(), s.sin.data(), s.pos, st);
  gpu::RmsNormBackward(s.q_pre, w.q_norm.data(), s.dqr, s.dqr, T * nh, d, eps,
                       OutputMode::kOverwrite, st);
  gpu::RmsNormBackward(s.k_pre, w.k_norm.data(), s.dkr, s.dk16, T * nkv, d, eps,
                       OutputMode::kOverwrite, st);
  gpu::MergeQueryGateGrad(s.dqr, s.dgate_att, s.dqg, T, nh, d, st);
  gpu::CastToBf16(s.dva, s.dv16, T * nkv * d, st);
  LinearBackwardInput(ctx_, s.dqg, w.q.data(), s.dx, T, H, nh * 2 * d);
  LinearBackwardInput(ctx_, s.dk16, w.k.data(), s.dx, T, H, nkv * d, OutputMode::kAccumulate);
  LinearBackwardInput(ctx_, s.dv16, w.v.data(), s.dx, T, H, nkv * d, OutputMode::kAccumulate);
}

// ---------------------------------------------------------------------------------------------
// The batch.

Status Qwen35GpuModel::Validate(const std::vector<TokenExample>& batch, const StateMap<float>& s0,
                                const StateMap<float>& grads) const {
  for (size_t i = 0; i < batch.size(); ++i) {
    const TokenExample& ex = batch[i];
    const int64_t n = int64_t(ex.ids.size());
    if (n < 2 || ex.prompt_len < 0 || ex.prompt_len >= n ||
        n > std::numeric_limits<int32_t>::max()) {
      return Status::InvalidArgument("example " + std::to_string(i) + ": " + std::to_string(n) +
                                     " tokens with prompt_len " + std::to_string(ex.prompt_len) +
                                     " leaves no completion token to score");
    }
    for (int32_t id : ex.ids) {
      if (id < 0 || id >= config_.vocab_size) {
        return Status::InvalidArgument("example " + std::to_string(i) + ": token id " +
                                       std::to_string(id) + " is outside the vocabulary of " +
                                       std::to_string(config_.vocab_size));
      }
    }
  }
  auto check = [&](const StateMap<float>& states, const std::string& what) -> Status {
    for (const auto& [layer, v] : states) {
      if (layer < 0 || layer >= int(layers_.size()) ||
          layers_[size_t(layer)].type != LayerType::kLinearAttention) {
        return Status::InvalidArgument(what + " for layer " + std::to_string(layer) +
                                       ", which is not a DeltaNet layer");
      }
      if (int64_t(v.size()) != state_size()) {
        return Status::InvalidArgument(what + " for layer " + std::to_string(layer) + " has " +
                                       std::to_string(v.size()) + " values, expected " +
                                       std::to_string(state_size()));
      }
    }
    return Status::Ok();
  };
  S0_RETURN_IF_ERROR(check(s0, "state"));
  return check(grads, "gradient");
}

Result<double> Qwen35GpuModel::LossAndGrad(const std::vector<TokenExample>& batch,
                                           const StateMap<float>& s0, double grad_scale,
                                           StateMap<float>& grads, GpuGroupReducer* group) {
  S0_RETURN_IF_ERROR(Validate(batch, s0, grads));
  if (grads.empty()) group = nullptr;  // a loss alone is this rank's own
  if (batch.empty() && group == nullptr) return 0.0;
  const cudaStream_t st = ctx_.stream();
  for (auto& [layer, buffer] : s0_) {
    auto it = s0.find(layer);
    if (it != s0.end()) {
      buffer.Upload(it->second, st);
    } else {
      buffer.FillBytes(0, st);
    }
  }
  // Where each layer's dS0 goes: its slice of the fused sums, zeroed; null elsewhere.
  const size_t n_state = size_t(state_size());
  const size_t fused = grads.size() * n_state + 1;
  if (ds0_sum_.size() < fused) ds0_sum_ = DeviceBuffer<float>(fused);
  ds0_sum_.FillBytes(0, st);
  std::vector<float*> ds0_into(grads.empty() ? 0 : layers_.size(), nullptr);
  size_t slot = 0;
  for (const auto& [layer, g] : grads) ds0_into[size_t(layer)] = ds0_sum_.data() + n_state * slot++;
  TrackPeak();
  const int lowest = grads.empty() ? int(layers_.size()) : grads.begin()->first;

  std::vector<MicroBatch> mbs;
  MicroBatch cur;
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t len = int64_t(batch[i].ids.size());
    if (cur.count > 0 && cur.tokens + len > options_.max_tokens) {
      mbs.push_back(cur);
      cur = MicroBatch{i, 0, 0, 0};
    }
    ++cur.count;
    cur.tokens += len;
    cur.max_len = std::max(cur.max_len, len);
  }
  if (cur.count > 0) mbs.push_back(cur);

  double loss = 0;
  for (const MicroBatch& mb : mbs) loss += RunMicroBatch(batch, mb, lowest, grad_scale, ds0_into);
  if (grads.empty()) {
    ctx_.Synchronize();
    return loss;
  }
  const size_t n_grads = grads.size() * n_state;
  if (group != nullptr) {
    // The loss sum rides in the last slot (fp32 is ample for a sum of per-example losses): one
    // fused reduction for everything the step needs.
    const float loss32 = float(loss);
    CUDA_CHECK(cudaMemcpyAsync(ds0_sum_.data() + n_grads, &loss32, sizeof(float),
                               cudaMemcpyHostToDevice, st));
    const Status reduced = group->SumInPlace(ds0_sum_.data(), n_grads + 1, st);
    if (!reduced.ok()) return reduced;
  }
  std::vector<float> sums(n_grads + 1);
  ds0_sum_.Download(sums.data(), n_grads + 1, st);
  size_t at = 0;
  for (auto& [layer, g] : grads) {
    for (size_t i = 0; i < g.size(); ++i) g[i] += sums[at++];
  }
  return group != nullptr ? double(sums[n_grads]) : loss;
}

double Qwen35GpuModel::RunMicroBatch(const std::vector<TokenExample>& batch, const MicroBatch& mb,
                                     int lowest, double grad_scale,
                                     const std::vector<float*>& ds0_into) {
  const Qwen35Config& c = config_;
  const bool with_grads = !ds0_into.empty();
  const int64_t T = mb.tokens, H = c.hidden_size;
  const int n_layers = int(layers_.size());
  const float eps = float(c.rms_norm_eps);
  const cudaStream_t st = ctx_.stream();

  // Pack on the host: ids, positions, cu_seqlens and the loss's sequences.
  std::vector<int32_t> ids, pos, cu{0};
  std::vector<gpu::CeSequence> seqs;
  ids.reserve(size_t(T));
  pos.reserve(size_t(T));
  for (size_t i = mb.first; i < mb.first + mb.count; ++i) {
    const TokenExample& ex = batch[i];
    const int64_t len = int64_t(ex.ids.size());
    seqs.push_back({int64_t(ids.size()), len, ex.prompt_len, grad_scale});
    ids.insert(ids.end(), ex.ids.begin(), ex.ids.end());
    for (int64_t t = 0; t < len; ++t) pos.push_back(int32_t(t));
    cu.push_back(int32_t(ids.size()));
  }

  const bool has_attention = delta_layers_.size() < layers_.size();
  const GdnPackedDims gdn{T,
                          int64_t(mb.count),
                          c.linear_num_key_heads,
                          c.linear_num_value_heads,
                          c.linear_key_head_dim,
                          c.linear_value_head_dim};
  const AttentionPackedDims attn{T, int64_t(mb.count), c.num_attention_heads, c.num_key_value_heads,
                                 c.head_dim};
  size_t kernel_bytes = 0;
  if (!delta_layers_.empty()) {
    kernel_bytes = GdnForwardWorkspaceBytes(gdn);
    if (with_grads) kernel_bytes = std::max(kernel_bytes, GdnBackwardWorkspaceBytes(gdn));
  }
  if (has_attention && with_grads) {
    kernel_bytes = std::max(kernel_bytes, AttentionBackwardWorkspaceBytes(attn));
  }
  const int saved_layers = with_grads ? n_layers - lowest : 0;
  EnsureCapacity(T, mb.max_len, saved_layers, kernel_bytes);
  Scratch& s = *scratch_;
  CUDA_CHECK(
      cudaMemcpyAsync(s.ids, ids.data(), ids.size() * sizeof(int32_t), cudaMemcpyHostToDevice, st));
  CUDA_CHECK(
      cudaMemcpyAsync(s.pos, pos.data(), pos.size() * sizeof(int32_t), cudaMemcpyHostToDevice, st));
  CUDA_CHECK(cudaMemcpyAsync(s.cu_seqlens, cu.data(), cu.size() * sizeof(int32_t),
                             cudaMemcpyHostToDevice, st));

  // Forward, keeping the inputs of the layers the backward revisits.
  gpu::EmbeddingForward(s.ids, embed_.data(), s.h, T, c.vocab_size, H, st);
  const size_t layer_floats = size_t(T * H);
  for (int l = 0; l < n_layers; ++l) {
    if (with_grads && l >= lowest) {
      CopyDeviceToDevice(s.saved.data() + size_t(l - lowest) * layer_floats, s.h,
                         layer_floats * sizeof(float), st);
    }
    LayerForward(l, mb, s.h, s.h, true);
  }
  bf16* hn = s.xn;  // the final norm's output
  gpu::RmsNormForward(s.h, final_norm_.data(), hn, T, H, eps, st);
  const bf16* lm_head = c.tie_word_embeddings ? embed_.data() : lm_head_.data();
  const std::vector<double> losses = ce_.Run(ctx_, hn, lm_head, ids.data(), T, seqs.data(),
                                             seqs.size(), with_grads ? s.dx : nullptr);
  double loss = 0;
  for (double l : losses) loss += l;
  if (!with_grads) return loss;

  // Backward, one layer at a time from its saved input.
  gpu::RmsNormBackward(s.h, final_norm_.data(), s.dx, s.dh, T, H, eps, OutputMode::kOverwrite, st);
  for (int l = n_layers - 1; l >= lowest; --l) {
    const float* h0 = s.saved.data() + size_t(l - lowest) * layer_floats;
    LayerForward(l, mb, h0, s.h1, false);
    LayerBackward(l, mb, h0, ds0_into[size_t(l)], l == lowest);
  }
  return loss;
}

}  // namespace s0

#endif  // S0_HAVE_CUDA
