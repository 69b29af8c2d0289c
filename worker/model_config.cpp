#include "worker/model_config.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

namespace s0 {
namespace {

using nlohmann::json;

constexpr uintmax_t kMaxConfigBytes = 16u << 20;

// A JSON object and where it sits, for error messages: "config.json: text_config.head_dim: ...".
struct Section {
  const json* obj;
  std::string source;  // file name
  std::string path;    // "" or "text_config." or "text_config.rope_parameters."

  // The value of `key`, or nullptr when absent or null (Hugging Face treats both as unset).
  const json* Find(const std::string& key) const {
    auto it = obj->find(key);
    return it == obj->end() || it->is_null() ? nullptr : &*it;
  }
  Status Bad(const std::string& key, const std::string& what) const {
    return Status::InvalidArgument(source + ": " + path + key + ": " + what);
  }
};

std::string Brief(const json& v) {
  std::string s = v.dump();
  return s.size() <= 64 ? s : s.substr(0, 61) + "...";
}

Result<int64_t> IntValue(const Section& s, const std::string& key, const json& v) {
  if (!v.is_number_integer()) return s.Bad(key, "must be an integer, got " + Brief(v));
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
    return s.Bad(key, "is too large: " + Brief(v));
  return v.get<int64_t>();
}

Result<int64_t> RequiredPositiveInt(const Section& s, const std::string& key) {
  const json* v = s.Find(key);
  if (v == nullptr) return s.Bad(key, "missing");
  S0_ASSIGN_OR_RETURN(int64_t x, IntValue(s, key, *v));
  if (x <= 0) return s.Bad(key, "must be positive, got " + std::to_string(x));
  return x;
}

Result<double> PositiveNumber(const Section& s, const std::string& key, const json& v) {
  if (!v.is_number()) return s.Bad(key, "must be a number, got " + Brief(v));
  double x = v.get<double>();
  if (!(x > 0)) return s.Bad(key, "must be positive, got " + Brief(v));
  return x;
}

Result<bool> OptionalBool(const Section& s, const std::string& key, bool fallback) {
  const json* v = s.Find(key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) return s.Bad(key, "must be true or false, got " + Brief(*v));
  return v->get<bool>();
}

Result<std::string> OptionalString(const Section& s, const std::string& key,
                                   const std::string& fallback) {
  const json* v = s.Find(key);
  if (v == nullptr) return fallback;
  if (!v->is_string()) return s.Bad(key, "must be a string, got " + Brief(*v));
  return v->get<std::string>();
}

// RoPE: rope_parameters (transformers 5) or rope_scaling (older configs), with rope_theta and
// partial_rotary_factor possibly beside the other fields instead.
Status ParseRope(const Section& text, Qwen35Config& c) {
  Section rope{nullptr, text.source, ""};
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    const json* v = text.Find(key);
    if (v == nullptr) continue;
    if (!v->is_object()) return text.Bad(key, "must be an object, got " + Brief(*v));
    rope = Section{v, text.source, text.path + key + "."};
    break;
  }
  if (rope.obj != nullptr) {
    const json* type = rope.Find("rope_type");
    std::string type_key = "rope_type";
    if (type == nullptr) {
      type = rope.Find("type");
      type_key = "type";
    }
    if (type != nullptr && *type != "default")
      return rope.Bad(type_key,
                      "rope type " + Brief(*type) + " is not supported (only \"default\")");
  }
  auto find = [&](const std::string& key) -> std::pair<const Section*, const json*> {
    if (rope.obj != nullptr)
      if (const json* v = rope.Find(key)) return {&rope, v};
    return {&text, text.Find(key)};
  };
  auto [theta_section, theta] = find("rope_theta");
  if (theta == nullptr) return text.Bad("rope_theta", "missing (looked in rope_parameters too)");
  S0_ASSIGN_OR_RETURN(c.rope_theta, PositiveNumber(*theta_section, "rope_theta", *theta));
  auto [factor_section, factor] = find("partial_rotary_factor");
  if (factor != nullptr) {
    S0_ASSIGN_OR_RETURN(c.partial_rotary_factor,
                        PositiveNumber(*factor_section, "partial_rotary_factor", *factor));
    if (c.partial_rotary_factor > 1)
      return factor_section->Bad("partial_rotary_factor",
                                 "must be at most 1, got " + Brief(*factor));
  }
  return Status::Ok();
}

Status ParseLayerTypes(const Section& text, Qwen35Config& c) {
  if (const json* types = text.Find("layer_types")) {
    if (!types->is_array()) return text.Bad("layer_types", "must be a list, got " + Brief(*types));
    if (int64_t(types->size()) != c.num_hidden_layers)
      return text.Bad("layer_types", "has " + std::to_string(types->size()) +
                                         " entries, num_hidden_layers is " +
                                         std::to_string(c.num_hidden_layers));
    for (size_t i = 0; i < types->size(); ++i) {
      const json& t = (*types)[i];
      if (t == "linear_attention") {
        c.layer_types.push_back(LayerType::kLinearAttention);
      } else if (t == "full_attention") {
        c.layer_types.push_back(LayerType::kFullAttention);
      } else {
        return text.Bad("layer_types", "entry " + std::to_string(i) + " is " + Brief(t) +
                                           ", expected \"linear_attention\" or \"full_attention\"");
      }
    }
    return Status::Ok();
  }
  // Hugging Face's derivation: layer i is full attention iff (i + 1) % interval == 0.
  int64_t interval = 4;
  if (text.Find("full_attention_interval") != nullptr) {
    S0_ASSIGN_OR_RETURN(interval, RequiredPositiveInt(text, "full_attention_interval"));
  }
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    c.layer_types.push_back((i + 1) % interval == 0 ? LayerType::kFullAttention
                                                    : LayerType::kLinearAttention);
  return Status::Ok();
}

Status ParseEosIds(const Section& s, Qwen35Config& c) {
  const json* v = s.Find("eos_token_id");
  if (v == nullptr) return Status::Ok();
  std::vector<json> ids = v->is_array() ? v->get<std::vector<json>>() : std::vector<json>{*v};
  for (const json& id : ids) {
    S0_ASSIGN_OR_RETURN(int64_t x, IntValue(s, "eos_token_id", id));
    if (x < 0 || x >= c.vocab_size)
      return s.Bad("eos_token_id", "id " + std::to_string(x) + " is outside the vocabulary [0, " +
                                       std::to_string(c.vocab_size) + ")");
    c.eos_token_ids.push_back(x);
  }
  return Status::Ok();
}

Status CheckConsistency(const Section& text, const Qwen35Config& c) {
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    return text.Bad("num_attention_heads", std::to_string(c.num_attention_heads) +
                                               " is not a multiple of " + "num_key_value_heads " +
                                               std::to_string(c.num_key_value_heads));
  if (c.linear_num_value_heads % c.linear_num_key_heads != 0)
    return text.Bad("linear_num_value_heads",
                    std::to_string(c.linear_num_value_heads) + " is not a multiple of " +
                        "linear_num_key_heads " + std::to_string(c.linear_num_key_heads));
  const int64_t rot = c.rotary_dim();
  if (rot < 2 || rot % 2 != 0)
    return text.Bad("partial_rotary_factor", "head_dim " + std::to_string(c.head_dim) + " x " +
                                                 std::to_string(c.partial_rotary_factor) +
                                                 " gives rotary dim " + std::to_string(rot) +
                                                 "; it must be even and at least 2");
  return Status::Ok();
}

}  // namespace

const char* LayerTypeName(LayerType t) {
  return t == LayerType::kFullAttention ? "full_attention" : "linear_attention";
}

int64_t Qwen35Config::rotary_dim() const {
  return int64_t(double(head_dim) * partial_rotary_factor);
}
int64_t Qwen35Config::linear_key_dim() const { return linear_num_key_heads * linear_key_head_dim; }
int64_t Qwen35Config::linear_value_dim() const {
  return linear_num_value_heads * linear_value_head_dim;
}
int64_t Qwen35Config::linear_conv_dim() const { return 2 * linear_key_dim() + linear_value_dim(); }
int64_t Qwen35Config::num_layers_of(LayerType t) const {
  int64_t n = 0;
  for (LayerType x : layer_types) n += x == t;
  return n;
}

json Qwen35Config::ToJson() const {
  json types = json::array();
  for (LayerType t : layer_types) types.push_back(LayerTypeName(t));
  return json{{"model_type", model_type},
              {"tensor_prefix", tensor_prefix},
              {"hidden_size", hidden_size},
              {"num_hidden_layers", num_hidden_layers},
              {"intermediate_size", intermediate_size},
              {"vocab_size", vocab_size},
              {"num_attention_heads", num_attention_heads},
              {"num_key_value_heads", num_key_value_heads},
              {"head_dim", head_dim},
              {"partial_rotary_factor", partial_rotary_factor},
              {"rope_theta", rope_theta},
              {"linear_num_key_heads", linear_num_key_heads},
              {"linear_num_value_heads", linear_num_value_heads},
              {"linear_key_head_dim", linear_key_head_dim},
              {"linear_value_head_dim", linear_value_head_dim},
              {"linear_conv_kernel_dim", linear_conv_kernel_dim},
              {"rms_norm_eps", rms_norm_eps},
              {"tie_word_embeddings", tie_word_embeddings},
              {"max_position_embeddings", max_position_embeddings},
              {"layer_types", types},
              {"eos_token_ids", eos_token_ids},
              {"dtype", dtype}};
}

Result<Qwen35Config> ParseQwen35Config(const std::string& json_text, const std::string& source) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {
    return Status::Corruption(source + ": invalid JSON: " + e.what());
  }
  if (!root.is_object()) return Status::InvalidArgument(source + ": not a JSON object");
  const Section top{&root, source, ""};

  Qwen35Config c;
  const json* model_type = top.Find("model_type");
  if (model_type == nullptr) return top.Bad("model_type", "missing");
  if (*model_type != "qwen3_5" && *model_type != "qwen3_5_text")
    return top.Bad(
        "model_type",
        Brief(*model_type) + " is not supported (expected \"qwen3_5\" or \"qwen3_5_text\")");
  c.model_type = model_type->get<std::string>();
  const bool full = c.model_type == "qwen3_5";
  Section text = top;
  if (full) {
    const json* tc = top.Find("text_config");
    if (tc == nullptr || !tc->is_object())
      return top.Bad("text_config", "a qwen3_5 config needs a text_config object");
    text = Section{tc, source, "text_config."};
    if (const json* sub = text.Find("model_type"); sub != nullptr && *sub != "qwen3_5_text")
      return text.Bad("model_type", Brief(*sub) + " is not supported (expected \"qwen3_5_text\")");
  }
  c.tensor_prefix = full ? "model.language_model." : "model.";

  struct SizeField {
    const char* key;
    int64_t Qwen35Config::*field;
  };
  static constexpr SizeField kSizes[] = {
      {"hidden_size", &Qwen35Config::hidden_size},
      {"num_hidden_layers", &Qwen35Config::num_hidden_layers},
      {"intermediate_size", &Qwen35Config::intermediate_size},
      {"vocab_size", &Qwen35Config::vocab_size},
      {"num_attention_heads", &Qwen35Config::num_attention_heads},
      {"num_key_value_heads", &Qwen35Config::num_key_value_heads},
      {"head_dim", &Qwen35Config::head_dim},
      {"linear_num_key_heads", &Qwen35Config::linear_num_key_heads},
      {"linear_num_value_heads", &Qwen35Config::linear_num_value_heads},
      {"linear_key_head_dim", &Qwen35Config::linear_key_head_dim},
      {"linear_value_head_dim", &Qwen35Config::linear_value_head_dim},
      {"linear_conv_kernel_dim", &Qwen35Config::linear_conv_kernel_dim},
  };
  for (const SizeField& f : kSizes) {
    S0_ASSIGN_OR_RETURN(c.*f.field, RequiredPositiveInt(text, f.key));
  }
  if (text.Find("max_position_embeddings") != nullptr) {
    S0_ASSIGN_OR_RETURN(c.max_position_embeddings,
                        RequiredPositiveInt(text, "max_position_embeddings"));
  }

  S0_RETURN_IF_ERROR(ParseRope(text, c));
  if (const json* eps = text.Find("rms_norm_eps")) {
    S0_ASSIGN_OR_RETURN(c.rms_norm_eps, PositiveNumber(text, "rms_norm_eps", *eps));
  }
  S0_ASSIGN_OR_RETURN(std::string act, OptionalString(text, "hidden_act", "silu"));
  if (act != "silu") return text.Bad("hidden_act", "\"" + act + "\" is not supported (only silu)");
  S0_ASSIGN_OR_RETURN(bool gate, OptionalBool(text, "attn_output_gate", true));
  if (!gate) return text.Bad("attn_output_gate", "must be true (Qwen3.5 attention is gated)");
  S0_ASSIGN_OR_RETURN(bool bias, OptionalBool(text, "attention_bias", false));
  if (bias) return text.Bad("attention_bias", "must be false (Qwen3.5 projections have no bias)");

  // The model's own config decides tying (top level in the full layout); text_config otherwise.
  const Section& tie_section = full && top.Find("tie_word_embeddings") == nullptr ? text : top;
  S0_ASSIGN_OR_RETURN(c.tie_word_embeddings,
                      OptionalBool(tie_section, "tie_word_embeddings", false));

  S0_RETURN_IF_ERROR(ParseLayerTypes(text, c));
  const Section& eos_section = text.Find("eos_token_id") != nullptr ? text : top;
  S0_RETURN_IF_ERROR(ParseEosIds(eos_section, c));
  for (const Section* s : std::initializer_list<const Section*>{&text, &top}) {
    S0_ASSIGN_OR_RETURN(c.dtype, OptionalString(*s, "dtype", ""));
    if (c.dtype.empty()) {
      S0_ASSIGN_OR_RETURN(c.dtype, OptionalString(*s, "torch_dtype", ""));
    }
    if (!c.dtype.empty()) break;
  }
  S0_RETURN_IF_ERROR(CheckConsistency(text, c));
  return c;
}

Result<Qwen35Config> LoadQwen35Config(const std::string& model_dir) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  std::error_code ec;
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) return Status::NotFound(path + ": " + ec.message());
  if (size > kMaxConfigBytes)
    return Status::InvalidArgument(path + ": " + std::to_string(size) + " bytes, more than " +
                                   std::to_string(kMaxConfigBytes));
  std::ifstream in(path, std::ios::binary);
  std::string text(size_t(size), '\0');
  if (!in.read(text.data(), std::streamsize(size))) return Status::IOError(path + ": read failed");
  return ParseQwen35Config(text, path);
}

}  // namespace s0
