// The frozen weights of a Qwen3.5 text decoder, loaded from a TensorStore and checked against a
// Qwen35Config (tensor names and shapes: ../shared/spec/qwen3_5.md §2).
//
// Names, with P = config.tensor_prefix ("model.language_model." or "model."):
//   P embed_tokens.weight [V, H], P norm.weight [H], lm_head.weight [V, H] (untied only),
//   per layer i, P layers.i.:
//     input_layernorm.weight [H], post_attention_layernorm.weight [H],
//     mlp.gate_proj.weight [I, H], mlp.up_proj.weight [I, H], mlp.down_proj.weight [H, I];
//   linear_attention layers:
//     linear_attn.in_proj_qkv.weight [2 H_k d_k + H_v d_v, H], linear_attn.in_proj_z.weight
//     [H_v d_v, H], linear_attn.in_proj_b.weight [H_v, H], linear_attn.in_proj_a.weight [H_v, H],
//     linear_attn.conv1d.weight [conv_dim, 1, K_c], linear_attn.dt_bias [H_v],
//     linear_attn.A_log [H_v], linear_attn.norm.weight [d_v], linear_attn.out_proj.weight
//     [H, H_v d_v];
//   full_attention layers:
//     self_attn.q_proj.weight [2 n_h d_h, H] (query and output gate, per head),
//     self_attn.k_proj.weight [n_kv d_h, H], self_attn.v_proj.weight [n_kv d_h, H],
//     self_attn.o_proj.weight [H, n_h d_h], self_attn.q_norm.weight [d_h],
//     self_attn.k_norm.weight [d_h].
// Every expected tensor must exist with a float dtype and its exact shape; otherwise loading fails
// with ONE InvalidArgument that lists every missing or mismatched tensor. `model.visual.*` and
// `mtp.*` are skipped silently; any other unused tensor is counted (and logged at debug level).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "checkpoints/safetensors.h"
#include "kernels/status.h"
#include "worker/model_config.h"

namespace s0 {

// How weights are kept on the host.
enum class WeightFormat {
  kFloat32,   // converted to float32 (exact for BF16/F16/F32) for the CPU engine: `f32` is filled
  kAsStored,  // the checkpoint's bytes and dtype, e.g. BF16 for a GPU upload: `bytes` is filled
};

// One host tensor. `stored_dtype` is the checkpoint's dtype in both formats; exactly one of `f32`
// and `bytes` holds the data, per the WeightFormat it was loaded with.
struct HostTensor {
  DType stored_dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<float> f32;  // kFloat32: numel() values, row-major
  std::vector<std::byte>
      bytes;  // kAsStored: numel() * DTypeSize(stored_dtype) bytes, little-endian

  int64_t numel() const;
};

struct Qwen35LinearAttnWeights {  // Gated DeltaNet (linear_attn.*)
  HostTensor in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, conv1d, dt_bias, A_log, norm, out_proj;
};

struct Qwen35FullAttnWeights {  // gated softmax attention (self_attn.*)
  HostTensor q_proj, k_proj, v_proj, o_proj, q_norm, k_norm;
};

struct Qwen35LayerWeights {
  LayerType type = LayerType::kLinearAttention;
  HostTensor input_layernorm, post_attention_layernorm;
  HostTensor gate_proj, up_proj, down_proj;
  Qwen35LinearAttnWeights linear_attn;  // filled iff type == kLinearAttention
  Qwen35FullAttnWeights self_attn;      // filled iff type == kFullAttention
};

struct Qwen35Weights {
  WeightFormat format = WeightFormat::kFloat32;
  HostTensor embed_tokens;  // [V, H]
  HostTensor norm;          // [H]
  HostTensor lm_head;       // [V, H]; empty when tied: use LmHead()
  bool tied_lm_head = false;
  std::vector<Qwen35LayerWeights> layers;
  size_t unused_tensors = 0;  // tensors outside model.visual.* / mtp.* that the decoder ignores

  const HostTensor& LmHead() const { return tied_lm_head ? embed_tokens : lm_head; }
};

Result<Qwen35Weights> LoadQwen35Weights(const TensorStore& store, const Qwen35Config& config,
                                        WeightFormat format);

// A 64-bit fingerprint of the model: the architecture (Qwen35Config::ToJson without model_type,
// tensor_prefix and the declared dtype) and, for every tensor the decoder uses, its prefix-free
// name ("layers.3.mlp.up_proj.weight"), dtype, shape and bytes as stored. Independent of the
// checkpoint layout (full or text-only, sharded or not, vision/mtp present or not) and of the
// thread count. FNV-1a 64 over 1 MiB chunks hashed in parallel (about 0.45 GB/s per core), chunk
// hashes combined in order. Fails like LoadQwen35Weights when tensors are missing or misshaped.
Result<uint64_t> Qwen35Fingerprint(const TensorStore& store, const Qwen35Config& config);

}  // namespace s0
