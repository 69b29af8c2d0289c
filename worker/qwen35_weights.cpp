#include "worker/qwen35_weights.h"

#include <spdlog/spdlog.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

#include "kernels/check.h"
#include "kernels/parallel.h"

namespace s0 {
namespace {

using Shape = std::vector<int64_t>;
using Layer = Qwen35LayerWeights;
using Config = Qwen35Config;

// Per-layer tensors: name suffix (after "layers.<i>."), expected shape, destination.
struct LayerTensor {
  const char* suffix;
  Shape (*shape)(const Config&);
  HostTensor& (*member)(Layer&);
};

const LayerTensor kEveryLayer[] = {
    {"input_layernorm.weight", [](const Config& c) { return Shape{c.hidden_size}; },
     [](Layer& l) -> HostTensor& { return l.input_layernorm; }},
    {"post_attention_layernorm.weight", [](const Config& c) { return Shape{c.hidden_size}; },
     [](Layer& l) -> HostTensor& { return l.post_attention_layernorm; }},
    {"mlp.gate_proj.weight",
     [](const Config& c) {
       return Shape{c.intermediate_size, c.hidden_size};
     },
     [](Layer& l) -> HostTensor& { return l.gate_proj; }},
    {"mlp.up_proj.weight",
     [](const Config& c) {
       return Shape{c.intermediate_size, c.hidden_size};
     },
     [](Layer& l) -> HostTensor& { return l.up_proj; }},
    {"mlp.down_proj.weight",
     [](const Config& c) {
       return Shape{c.hidden_size, c.intermediate_size};
     },
     [](Layer& l) -> HostTensor& { return l.down_proj; }},
};

const LayerTensor kLinearAttnLayer[] = {
    {"linear_attn.in_proj_qkv.weight",
     [](const Config& c) {
       return Shape{c.linear_conv_dim(), c.hidden_size};
     },
     [](Layer& l) -> HostTensor& { return l.linear_attn.in_proj_qkv; }},
    {"linear_attn.in_proj_z.weight",
     [](const Config& c) {
       return Shape{c.linear_value_dim(), c.hidden_size};
     },
     [](Layer& l) -> HostTensor& { return l.linear_attn.in_proj_z; }},
    {"linear_attn.in_proj_b.weight",
     [](const Config& c) {
       return Shape{c.linear_num_value_heads, c.hidden_size};
     },
     [](Layer& l) -> HostTensor& { return l.linear_attn.in_proj_b; }},
    {"linear_attn.in_proj_a.weight",
     [](const Config& c) {
       return Shape{c.linear_num_value_heads, c.hidden_size};
     },
     [](Layer& l) -> HostTensor& { return l.linear_attn.in_proj_a; }},
    {"linear_attn.conv1d.weight",
     [](const Config& c) {
       return Shape{c.linear_conv_dim(), 1, c.linear_conv_kernel_dim};
     },
     [](Layer& l) -> HostTensor& { return l.linear_attn.conv1d; }},
    {"linear_attn.dt_bias", [](const Config& c) { return Shape{c.linear_num_value_heads}; },
     [](Layer& l) -> HostTensor& { return l.linear_attn.dt_bias; }},
    {"linear_attn.A_log", [](const Config& c) { return Shape{c.linear_num_value_heads}; },
     [](Layer& l) -> HostTensor& { return l.linear_attn.A_log; }},
    {"linear_attn.norm.weight", [](const Config& c) { return Shape{c.linear_value_head_dim}; },
     [](Layer& l) -> HostTensor& { return l.linear_attn.norm; }},
    {"linear_attn.out_proj.weight",
     [](const Config& c) {
       return Shape{c.hidden_size, c.linear_value_dim()};
     },
     [](Layer& l) -> HostTensor& { return l.linear_attn.out_proj; }},
};

const LayerTensor kFullAttnLayer[] = {
    {"self_attn.q_proj.weight",  // query and output gate, interleaved per head
     [](const Config& c) {
       return Shape{2 * c.num_attention_heads * c.head_dim, c.hidden_size};
     },
     [](Layer& l) -> HostTensor& { return l.self_attn.q_proj; }},
    {"self_attn.k_proj.weight",
     [](const Config& c) {
       return Shape{c.num_key_value_heads * c.head_dim, c.hidden_size};
     },
     [](Layer& l) -> HostTensor& { return l.self_attn.k_proj; }},
    {"self_attn.v_proj.weight",
     [](const Config& c) {
       return Shape{c.num_key_value_heads * c.head_dim, c.hidden_size};
     },
     [](Layer& l) -> HostTensor& { return l.self_attn.v_proj; }},
    {"self_attn.o_proj.weight",
     [](const Config& c) {
       return Shape{c.hidden_size, c.num_attention_heads * c.head_dim};
     },
     [](Layer& l) -> HostTensor& { return l.self_attn.o_proj; }},
    {"self_attn.q_norm.weight", [](const Config& c) { return Shape{c.head_dim}; },
     [](Layer& l) -> HostTensor& { return l.self_attn.q_norm; }},
    {"self_attn.k_norm.weight", [](const Config& c) { return Shape{c.head_dim}; },
     [](Layer& l) -> HostTensor& { return l.self_attn.k_norm; }},
};

// Tensor-name prefixes the text decoder skips without counting them as unused.
constexpr std::string_view kSkippedPrefixes[] = {"model.visual.", "mtp."};

struct Expected {
  std::string canonical;  // without the layout prefix: "layers.3.mlp.up_proj.weight"
  std::string name;       // in the store
  Shape shape;
  HostTensor* dest;
};

// Every tensor the decoder needs, in a fixed order (globals, then layer by layer). Sizes
// w.layers and sets their types; `dest` points into w.
std::vector<Expected> ExpectedTensors(const Config& c, Qwen35Weights& w) {
  S0_CHECK_MSG(c.layer_types.size() == size_t(c.num_hidden_layers),
               "Qwen35Config.layer_types must have num_hidden_layers entries");
  std::vector<Expected> out;
  const std::string& p = c.tensor_prefix;
  out.push_back({"embed_tokens.weight",
                 p + "embed_tokens.weight",
                 {c.vocab_size, c.hidden_size},
                 &w.embed_tokens});
  out.push_back({"norm.weight", p + "norm.weight", {c.hidden_size}, &w.norm});
  if (!c.tie_word_embeddings)
    out.push_back({"lm_head.weight", "lm_head.weight", {c.vocab_size, c.hidden_size}, &w.lm_head});
  w.tied_lm_head = c.tie_word_embeddings;
  w.layers.assign(size_t(c.num_hidden_layers), Layer{});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    Layer& layer = w.layers[size_t(i)];
    layer.type = c.layer_types[size_t(i)];
    const std::string local = "layers." + std::to_string(i) + ".";
    auto add = [&](std::span<const LayerTensor> table) {
      for (const LayerTensor& t : table)
        out.push_back({local + t.suffix, p + local + t.suffix, t.shape(c), &t.member(layer)});
    };
    add(kEveryLayer);
    add(layer.type == LayerType::kLinearAttention ? std::span<const LayerTensor>(kLinearAttnLayer)
                                                  : std::span<const LayerTensor>(kFullAttnLayer));
  }
  return out;
}

std::string ShapeString(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Looks up every expected tensor; one error lists all that are missing or do not match.
Result<std::vector<TensorView>> Resolve(const TensorStore& store,
                                        const std::vector<Expected>& expected) {
  constexpr size_t kMaxListed = 100;
  std::vector<TensorView> views;
  std::vector<std::string> problems;
  for (const Expected& e : expected) {
    if (!store.Contains(e.name)) {
      problems.push_back("missing " + e.name + " (expected shape " + ShapeString(e.shape) + ")");
      continue;
    }
    S0_ASSIGN_OR_RETURN(TensorView v, store.Get(e.name));
    if (!IsFloatDType(v.dtype))
      problems.push_back("wrong dtype " + e.name + ": " + DTypeName(v.dtype) +
                         ", expected a float dtype");
    else if (v.shape != e.shape)
      problems.push_back("wrong shape " + e.name + ": " + ShapeString(v.shape) + ", expected " +
                         ShapeString(e.shape));
    views.push_back(std::move(v));
  }
  if (problems.empty()) return views;
  std::string m = store.path() + ": checkpoint does not match config.json (" +
                  std::to_string(problems.size()) + " of " + std::to_string(expected.size()) +
                  " tensors):";
  for (size_t i = 0; i < problems.size() && i < kMaxListed; ++i) m += "\n  " + problems[i];
  if (problems.size() > kMaxListed)
    m += "\n  ... and " + std::to_string(problems.size() - kMaxListed) + " more";
  return Status::InvalidArgument(m);
}

size_t CountUnused(const TensorStore& store, const std::vector<Expected>& expected) {
  std::set<std::string_view> used;
  for (const Expected& e : expected) used.insert(e.name);
  size_t unused = 0;
  std::string examples;
  for (const std::string& name : store.Names()) {
    bool skipped = false;
    for (std::string_view prefix : kSkippedPrefixes) skipped |= name.starts_with(prefix);
    if (skipped || used.count(name)) continue;
    if (++unused <= 5) examples += (examples.empty() ? "" : ", ") + name;
  }
  if (unused > 0)
    spdlog::debug("{}: {} tensors not used by the Qwen3.5 text decoder, e.g. {}", store.path(),
                  unused, examples);
  return unused;
}

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
constexpr uint64_t kFnvPrime = 0x100000001b3ull;
constexpr size_t kHashChunk = size_t(1) << 20;

uint64_t Fnv1a(std::span<const std::byte> data, uint64_t h) {
  for (std::byte b : data) {
    h ^= uint64_t(b);
    h *= kFnvPrime;
  }
  return h;
}
uint64_t Fnv1a(std::string_view s, uint64_t h) { return Fnv1a(std::as_bytes(std::span(s)), h); }
uint64_t Fnv1a(uint64_t x, uint64_t h) {
  return Fnv1a(std::as_bytes(std::span<const uint64_t, 1>(&x, 1)), h);
}

}  // namespace

int64_t HostTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Result<Qwen35Weights> LoadQwen35Weights(const TensorStore& store, const Qwen35Config& config,
                                        WeightFormat format) {
  Qwen35Weights w;
  w.format = format;
  const std::vector<Expected> expected = ExpectedTensors(config, w);
  S0_ASSIGN_OR_RETURN(std::vector<TensorView> views, Resolve(store, expected));
  for (size_t i = 0; i < expected.size(); ++i) {
    const TensorView& v = views[i];
    HostTensor& t = *expected[i].dest;
    t.stored_dtype = v.dtype;
    t.shape = v.shape;
    if (format == WeightFormat::kFloat32) {
      t.f32.resize(size_t(v.numel()));
      S0_RETURN_IF_ERROR(ToFloat32Into(v, t.f32));
    } else {
      t.bytes.assign(v.bytes.begin(), v.bytes.end());
    }
  }
  w.unused_tensors = CountUnused(store, expected);
  return w;
}

Result<uint64_t> Qwen35Fingerprint(const TensorStore& store, const Qwen35Config& config) {
  Qwen35Weights scratch;  // only gives ExpectedTensors somewhere to point; never filled
  const std::vector<Expected> expected = ExpectedTensors(config, scratch);
  S0_ASSIGN_OR_RETURN(std::vector<TensorView> views, Resolve(store, expected));

  // Chunks of every tensor, hashed in parallel; the split depends only on the sizes.
  struct Chunk {
    std::span<const std::byte> bytes;
    uint64_t hash;
  };
  std::vector<Chunk> chunks;
  std::vector<size_t> first_chunk(views.size() + 1);
  for (size_t i = 0; i < views.size(); ++i) {
    first_chunk[i] = chunks.size();
    for (size_t off = 0; off < views[i].bytes.size(); off += kHashChunk)
      chunks.push_back(
          {views[i].bytes.subspan(off, std::min(kHashChunk, views[i].bytes.size() - off)), 0});
  }
  first_chunk[views.size()] = chunks.size();
  ParallelFor(chunks.size(), [&](size_t begin, size_t end) {
    for (size_t c = begin; c < end; ++c) chunks[c].hash = Fnv1a(chunks[c].bytes, kFnvOffset);
  });

  // Architecture only: the layout (model_type, prefix) and the declared dtype do not change the
  // numbers; the tensors' own dtypes are hashed below.
  nlohmann::json arch = config.ToJson();
  for (const char* key : {"model_type", "tensor_prefix", "dtype"}) arch.erase(key);
  uint64_t h = Fnv1a(arch.dump(), kFnvOffset);
  for (size_t i = 0; i < views.size(); ++i) {
    std::string meta = expected[i].canonical + '\0' + DTypeName(views[i].dtype) + '\0' +
                       ShapeString(views[i].shape) + '\0';
    h = Fnv1a(meta, h);
    for (size_t c = first_chunk[i]; c < first_chunk[i + 1]; ++c) h = Fnv1a(chunks[c].hash, h);
  }
  return h;
}

}  // namespace s0
