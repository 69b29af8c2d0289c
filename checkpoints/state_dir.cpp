#include "checkpoints/state_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "checkpoints/durable_file.h"
#include "checkpoints/safetensors.h"

namespace s0 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Result<json> ReadJson(const std::string& path) {
  std::ifstream f(path);
  if (!f) return Status::IOError(path + ": cannot open");
  std::stringstream ss;
  ss << f.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::Corruption(path + ": not valid JSON");
  if (!j.is_object()) return Status::Corruption(path + ": not a JSON object");
  return j;
}

Result<S0TuningConfig> ParseConfig(const json& j, const std::string& path) {
  S0TuningConfig c;
  static const char* kKeys[] = {"n_steps", "lr", "l2_lambda", "alpha", "normalize", "grad_clip",
                                "max_length"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool known = false;
    for (const char* k : kKeys) known = known || it.key() == k;
    if (!known) return Status::InvalidArgument(path + ": unknown config key '" + it.key() + "'");
  }
  auto bad = [&](const char* key, const char* want) {
    return Status::InvalidArgument(path + ": '" + key + "' must be " + want);
  };
  if (j.contains("n_steps")) {
    if (!j["n_steps"].is_number_integer()) return bad("n_steps", "an integer");
    c.n_steps = j["n_steps"].get<int64_t>();
  }
  if (j.contains("max_length")) {
    if (!j["max_length"].is_number_integer()) return bad("max_length", "an integer");
    c.max_length = j["max_length"].get<int64_t>();
  }
  for (auto [key, field] : {std::pair<const char*, double*>{"lr", &c.lr},
                            {"l2_lambda", &c.l2_lambda},
                            {"grad_clip", &c.grad_clip}}) {
    if (!j.contains(key)) continue;
    if (!j[key].is_number()) return bad(key, "a number");
    *field = j[key].get<double>();
  }
  if (j.contains("alpha") && !j["alpha"].is_null()) {
    if (!j["alpha"].is_number()) return bad("alpha", "a number or null");
    c.alpha = j["alpha"].get<double>();
  }
  if (j.contains("normalize")) {
    if (!j["normalize"].is_boolean()) return bad("normalize", "true or false");
    c.normalize = j["normalize"].get<bool>();
  }
  return c;
}

}  // namespace

Status WriteStateDir(const std::string& dir, const StateDir& sd) {
  const int64_t numel = Numel(sd.state_shape);
  for (const auto& [layer, values] : sd.states) {
    if (int64_t(values.size()) != numel) {
      return Status::InvalidArgument("state of layer " + std::to_string(layer) + " has " +
                                     std::to_string(values.size()) + " values, state_shape " +
                                     ShapeString(sd.state_shape) + " needs " +
                                     std::to_string(numel));
    }
    if (std::find(sd.recurrent_layers.begin(), sd.recurrent_layers.end(), layer) ==
        sd.recurrent_layers.end()) {
      return Status::InvalidArgument("state for layer " + std::to_string(layer) +
                                     ", which is not in recurrent_layers");
    }
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::IOError(dir + ": " + ec.message());

  std::vector<std::string> names;
  names.reserve(sd.states.size());
  for (const auto& [layer, values] : sd.states) names.push_back(std::to_string(layer));
  std::vector<TensorToWrite> tensors;
  size_t i = 0;
  for (const auto& [layer, values] : sd.states) {
    tensors.push_back({names[i++], DType::kF32, sd.state_shape, std::as_bytes(std::span(values))});
  }
  S0_RETURN_IF_ERROR(WriteSafetensors(dir + "/states.safetensors", tensors));

  json meta = {{"arch", sd.arch},
               {"recurrent_layers", sd.recurrent_layers},
               {"state_shape", sd.state_shape}};
  S0_RETURN_IF_ERROR(WriteFileAtomic(dir + "/meta.json", meta.dump(2)));
  const S0TuningConfig c = sd.config.value_or(S0TuningConfig{});
  json cfg = json::object();
  cfg["n_steps"] = c.n_steps;
  cfg["lr"] = c.lr;
  cfg["l2_lambda"] = c.l2_lambda;
  cfg["alpha"] = c.alpha ? json(*c.alpha) : json(nullptr);
  cfg["normalize"] = c.normalize;
  cfg["grad_clip"] = c.grad_clip;
  cfg["max_length"] = c.max_length;
  return WriteFileAtomic(dir + "/config.json", cfg.dump(2));
}

Result<StateDir> ReadStateDir(const std::string& dir) {
  StateDir sd;
  const std::string meta_path = dir + "/meta.json";
  if (fs::exists(meta_path)) {
    S0_ASSIGN_OR_RETURN(json meta, ReadJson(meta_path));
    if (!meta.contains("arch") || !meta["arch"].is_string())
      return Status::Corruption(meta_path + ": 'arch' must be a string");
    sd.arch = meta["arch"].get<std::string>();
    if (meta.contains("recurrent_layers")) {
      const json& rl = meta["recurrent_layers"];
      if (!rl.is_array()) return Status::Corruption(meta_path + ": 'recurrent_layers' must be a list");
      for (const json& x : rl) {
        if (!x.is_number_integer() || x.get<int64_t>() < 0)
          return Status::Corruption(meta_path + ": 'recurrent_layers' must hold layer indices");
        sd.recurrent_layers.push_back(x.get<int>());
      }
    }
    if (!meta.contains("state_shape") || !meta["state_shape"].is_array())
      return Status::Corruption(meta_path + ": 'state_shape' must be a list");
    for (const json& x : meta["state_shape"]) {
      if (!x.is_number_integer() || x.get<int64_t>() <= 0)
        return Status::Corruption(meta_path + ": 'state_shape' must hold positive integers");
      sd.state_shape.push_back(x.get<int64_t>());
    }
  }
  const std::string config_path = dir + "/config.json";
  if (fs::exists(config_path)) {
    S0_ASSIGN_OR_RETURN(json cfg, ReadJson(config_path));
    S0_ASSIGN_OR_RETURN(S0TuningConfig c, ParseConfig(cfg, config_path));
    sd.config = c;
  }
  const std::string st_path = dir + "/states.safetensors";
  if (!fs::exists(st_path)) return Status::NotFound("no states found in " + dir + " (states.safetensors)");
  S0_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(st_path));
  for (const std::string& name : file.Names()) {
    char* end = nullptr;
    errno = 0;
    long layer = std::strtol(name.c_str(), &end, 10);
    if (name.empty() || *end != '\0' || errno != 0 || layer < 0 || layer > 1'000'000 ||
        std::to_string(layer) != name) {
      return Status::Corruption(st_path + ": tensor '" + name +
                                "' is not named by a layer index");
    }
    S0_ASSIGN_OR_RETURN(TensorView t, file.Get(name));
    if (t.dtype != DType::kF32) {
      return Status::Corruption(st_path + ": tensor '" + name + "' is " + DTypeName(t.dtype) +
                                ", states are F32");
    }
    if (sd.state_shape.empty()) sd.state_shape = t.shape;
    if (t.shape != sd.state_shape) {
      return Status::Corruption(st_path + ": tensor '" + name + "' has shape " +
                                ShapeString(t.shape) + ", expected " + ShapeString(sd.state_shape));
    }
    S0_ASSIGN_OR_RETURN(std::vector<float> values, ToFloat32(t));
    sd.states[int(layer)] = std::move(values);
  }
  return sd;
}

Status CheckStateDirMatches(const StateDir& sd, const std::string& arch,
                            const std::vector<int>& recurrent_layers,
                            const std::vector<int64_t>& state_shape) {
  if (!sd.arch.empty() && sd.arch != arch) {
    return Status::InvalidArgument("architecture mismatch: the states are for '" + sd.arch +
                                   "', the model is '" + arch + "'");
  }
  if (sd.state_shape != state_shape) {
    return Status::InvalidArgument("state shape mismatch: the states have " +
                                   ShapeString(sd.state_shape) + ", the model needs " +
                                   ShapeString(state_shape));
  }
  auto sorted = [](std::vector<int> v) {
    std::sort(v.begin(), v.end());
    return v;
  };
  if (!sd.recurrent_layers.empty() && sorted(sd.recurrent_layers) != sorted(recurrent_layers)) {
    return Status::InvalidArgument("layer index mismatch: the states were saved for recurrent "
                                   "layers other than this model's");
  }
  for (const auto& [layer, values] : sd.states) {
    if (std::find(recurrent_layers.begin(), recurrent_layers.end(), layer) ==
        recurrent_layers.end()) {
      return Status::InvalidArgument("the states hold layer " + std::to_string(layer) +
                                     ", which is not a recurrent layer of the model");
    }
  }
  return Status::Ok();
}

double ResolveAlpha(const StateDir& sd) {
  if (sd.config && sd.config->alpha) return *sd.config->alpha;
  return sd.arch == kArchMamba2 ? 0.65 : 0.07;
}

}  // namespace s0
