// Qwen3.5 text-decoder configuration, parsed from a Hugging Face config.json.
//
// Two layouts exist (see ../shared/spec/qwen3_5.md §2, §4):
//   * full `qwen3_5` (Qwen3_5ForConditionalGeneration): the decoder's fields sit in `text_config`;
//     tensors are named `model.language_model.*` (+ top-level `lm_head.weight` when untied);
//   * text-only `qwen3_5_text` (Qwen3_5ForCausalLM): the fields sit at the top level; tensors
//     are named `model.*`.
//
// Sizes are required (no silent defaults from Hugging Face's 9B-shaped class defaults). Hugging
// Face's defaults are applied for: rms_norm_eps 1e-6, hidden_act silu, partial_rotary_factor 0.25,
// full_attention_interval 4 (when layer_types is absent), tie_word_embeddings false.
// RoPE: `rope_parameters` (transformers 5) or `rope_scaling` (older) holding rope_type/type,
// rope_theta, partial_rotary_factor; rope_theta and partial_rotary_factor may also sit beside the
// other fields. Only rope type "default" is accepted (Qwen3.5's interleaved mRoPE is plain RoPE for
// text, so mrope_section is not needed).
// tie_word_embeddings in the full layout: Hugging Face ties by the top-level value (the model's own
// config); when only text_config carries it, that value is used (Hugging Face would fall back to
// false and leave lm_head uninitialised, which no real checkpoint intends).
// Errors: InvalidArgument naming the key ("config.json: text_config.head_dim: ..."); malformed
// JSON is Corruption; a missing file is NotFound.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "kernels/status.h"

namespace s0 {

enum class LayerType { kLinearAttention, kFullAttention };
const char* LayerTypeName(LayerType t);  // "linear_attention" / "full_attention"

struct Qwen35Config {
  std::string model_type;     // "qwen3_5" or "qwen3_5_text"
  std::string tensor_prefix;  // "model.language_model." or "model."

  int64_t hidden_size = 0;        // H
  int64_t num_hidden_layers = 0;  // L
  int64_t intermediate_size = 0;  // I (SwiGLU MLP)
  int64_t vocab_size = 0;
  int64_t num_attention_heads = 0;  // n_h (full attention)
  int64_t num_key_value_heads = 0;  // n_kv
  int64_t head_dim = 0;             // d_h
  double partial_rotary_factor = 0.25;
  double rope_theta = 0;
  int64_t linear_num_key_heads = 0;    // H_k (Gated DeltaNet)
  int64_t linear_num_value_heads = 0;  // H_v
  int64_t linear_key_head_dim = 0;     // d_k
  int64_t linear_value_head_dim = 0;   // d_v
  int64_t linear_conv_kernel_dim = 0;  // K_c
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  int64_t max_position_embeddings = 0;  // 0 when the config does not say
  std::vector<LayerType> layer_types;   // num_hidden_layers entries
  std::vector<int64_t> eos_token_ids;   // possibly empty
  std::string dtype;                    // "dtype" or "torch_dtype" ("bfloat16", ...); may be empty

  int64_t rotary_dim() const;        // int(head_dim * partial_rotary_factor), as Hugging Face
  int64_t linear_key_dim() const;    // H_k * d_k
  int64_t linear_value_dim() const;  // H_v * d_v
  int64_t linear_conv_dim() const;   // 2 * key_dim + value_dim (channels of the causal conv)
  int64_t num_layers_of(LayerType t) const;

  // Every parsed field as JSON with sorted keys: a canonical form for logs and fingerprints.
  nlohmann::json ToJson() const;
};

// Parses config.json text. `source` names it in error messages.
Result<Qwen35Config> ParseQwen35Config(const std::string& json_text,
                                       const std::string& source = "config.json");
// Reads `model_dir`/config.json.
Result<Qwen35Config> LoadQwen35Config(const std::string& model_dir);

}  // namespace s0
