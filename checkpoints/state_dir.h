// State directories: the interchange format of the s0-tuning library (0.1.2), read and written so
// that files go both ways between it and s0d.
//
//   DIR/states.safetensors  one F32 tensor per tuned recurrent layer; key = the layer's index in
//                           the model as a decimal string ("0", "4", ...), shape = state_shape
//   DIR/meta.json           {"arch": "gated_delta_net" | "mamba2",
//                            "recurrent_layers": [every recurrent layer of the model],
//                            "state_shape": [H_v, d_k, d_v] (GDN) or [heads, head_dim, d_state]}
//   DIR/config.json         exactly the S0Config fields: n_steps, lr, l2_lambda, alpha (number or
//                           null = the architecture's default), normalize, grad_clip, max_length
//
// The library's load() treats meta.json and config.json as optional, refuses unknown config keys,
// and refuses a directory whose arch, state_shape or recurrent_layers differ from the model's;
// ReadStateDir and CheckStateDirMatches do the same. States are the raw, unscaled S0 (alpha is
// applied only at inference).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kernels/status.h"

namespace s0 {

inline constexpr const char* kArchGatedDeltaNet = "gated_delta_net";
inline constexpr const char* kArchMamba2 = "mamba2";

// The s0-tuning S0Config, with its defaults.
struct S0TuningConfig {
  int64_t n_steps = 20;
  double lr = 1e-3;
  double l2_lambda = 5e-4;
  std::optional<double> alpha;  // null: 0.07 for gated_delta_net, 0.65 for mamba2
  bool normalize = false;
  double grad_clip = 1.0;
  int64_t max_length = 2048;
};

struct StateDir {
  std::string arch;                    // empty when meta.json is absent
  std::vector<int> recurrent_layers;   // from meta.json; empty when absent
  std::vector<int64_t> state_shape;    // from meta.json, or the tensors' common shape
  std::map<int, std::vector<float>> states;  // layer -> values, row-major state_shape
  std::optional<S0TuningConfig> config;      // absent when config.json is absent
};

// Writes the three files (each atomically: temp file, fsync, rename, fsync of the directory),
// creating DIR if needed. InvalidArgument when a state's size does not match state_shape or a
// state's layer is not in recurrent_layers.
Status WriteStateDir(const std::string& dir, const StateDir& sd);

// Reads and validates a directory: states.safetensors must exist and hold only F32 tensors with
// decimal-integer keys and one common shape (equal to meta.json's state_shape when present).
Result<StateDir> ReadStateDir(const std::string& dir);

// The checks of S0Trainer.load: same arch, same state_shape, same recurrent_layers (when meta.json
// gave them), and every state's layer is a recurrent layer of the model.
Status CheckStateDirMatches(const StateDir& sd, const std::string& arch,
                            const std::vector<int>& recurrent_layers,
                            const std::vector<int64_t>& state_shape);

// The alpha used at inference: config's alpha, else the architecture's default.
double ResolveAlpha(const StateDir& sd);

}  // namespace s0
