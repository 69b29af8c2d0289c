#include "daemon/job_spec.h"

#include <google/protobuf/util/message_differencer.h>

#include <cctype>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <set>

#include "daemon/wire.h"
#include "daemon/train_setup.h"

namespace s0 {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxRuns = 100000;
constexpr size_t kMaxSeeds = 10000;

std::string Num(double v) {  // shortest text that reads back as v: distinct values, distinct ids
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

bool ValidName(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
  }
  return s != "." && s != "..";
}

// "all" | "early" | "middle" | "late" | "i,j,..." with decimal indices.
Status CheckLayerSyntax(const std::string& layers, const std::string& field) {
  if (layers == "all" || layers == "early" || layers == "middle" || layers == "late") {
    return Status::Ok();
  }
  bool ok = !layers.empty() && layers.size() <= 4096;
  size_t item = 0;  // digits in the current item
  for (char c : layers) {
    if (c >= '0' && c <= '9' && item < 6) {
      ++item;
    } else if (c == ',' && item > 0) {
      item = 0;
    } else {
      ok = false;
    }
  }
  if (!ok || item == 0) {
    return Status::InvalidArgument(field + " '" + layers + "': expected all, early, middle, late "
                                   "or a comma-separated list of DeltaNet layer indices");
  }
  return Status::Ok();
}

Status CheckMethod(const proto::S0Method& m, const std::string& at) {
  auto bad = [&](const std::string& field, const std::string& why) {
    return Status::InvalidArgument(at + "." + field + ": " + why);
  };
  if (m.has_n_steps() && (m.n_steps() < 0 || m.n_steps() > 10000000)) {
    return bad("n_steps", "must be in [0, 1e7], got " + std::to_string(m.n_steps()));
  }
  if (m.has_lr() && !(std::isfinite(m.lr()) && m.lr() > 0)) return bad("lr", "must be > 0");
  if (m.has_l2_lambda() && !(std::isfinite(m.l2_lambda()) && m.l2_lambda() >= 0)) {
    return bad("l2_lambda", "must be >= 0");
  }
  if (m.has_alpha() && !(std::isfinite(m.alpha()) && m.alpha() >= 0)) {
    return bad("alpha", "must be >= 0");
  }
  if (m.has_grad_clip() && !(std::isfinite(m.grad_clip()) && m.grad_clip() > 0)) {
    return bad("grad_clip", "must be > 0");
  }
  if (m.has_max_length() && (m.max_length() < 1 || m.max_length() > (int64_t(1) << 24))) {
    return bad("max_length", "must be in [1, 2^24]");
  }
  if (m.has_history_every() && m.history_every() < 1) return bad("history_every", "must be >= 1");
  if (m.has_checkpoint_every() && m.checkpoint_every() < 1) {
    return bad("checkpoint_every", "must be >= 1");
  }
  if (m.has_precision()) {
    Result<Precision> p = ParsePrecision(m.precision());
    if (!p.ok()) return bad("precision", p.status().message());
  }
  if (m.has_engine()) {
    Result<Engine> e = ParseEngine(m.engine());
    if (!e.ok()) return bad("engine", e.status().message());
  }
  if (m.has_layers()) S0_RETURN_IF_ERROR(CheckLayerSyntax(m.layers(), at + ".layers"));
  return Status::Ok();
}

// Every method field but alpha set: the library's defaults (S0TuningConfig, TrainOptions).
void FillMethodDefaults(proto::S0Method* m) {
  const S0TuningConfig d;
  const TrainOptions t;
  if (!m->has_n_steps()) m->set_n_steps(d.n_steps);
  if (!m->has_lr()) m->set_lr(d.lr);
  if (!m->has_l2_lambda()) m->set_l2_lambda(d.l2_lambda);
  if (!m->has_normalize()) m->set_normalize(d.normalize);
  if (!m->has_grad_clip()) m->set_grad_clip(d.grad_clip);
  if (!m->has_max_length()) m->set_max_length(d.max_length);
  if (!m->has_layers()) m->set_layers("all");
  if (!m->has_alpha_in_training()) m->set_alpha_in_training(t.alpha_in_training);
  if (!m->has_history_every()) m->set_history_every(t.history_every);
  if (!m->has_checkpoint_every()) m->set_checkpoint_every(t.checkpoint_every);
  if (!m->has_precision()) m->set_precision("fp64");
  if (!m->has_engine()) m->set_engine("cpu");
}

std::string Resolve(const std::string& path, const std::string& base_dir) {
  fs::path p(path);
  if (p.is_relative() && !base_dir.empty()) p = fs::path(base_dir) / p;
  return fs::absolute(p).lexically_normal().string();
}

template <typename T>
bool HasDuplicates(const google::protobuf::RepeatedField<T>& v) {
  std::set<T> seen(v.begin(), v.end());
  return seen.size() != size_t(v.size());
}

}  // namespace

Status ValidateJobSpec(const proto::JobSpec& spec) {
  if (!ValidName(spec.name())) {
    return Status::InvalidArgument("name '" + spec.name() + "': expected 1 to 64 characters of "
                                   "[A-Za-z0-9._-]");
  }
  if (spec.model().empty()) return Status::InvalidArgument("model: required (a model directory)");
  if (spec.data().empty()) return Status::InvalidArgument("data: required (a JSONL file)");
  if (spec.out_dir().empty()) return Status::InvalidArgument("out_dir: required");
  if (spec.seeds().empty()) return Status::InvalidArgument("seeds: at least one seed is required");
  if (size_t(spec.seeds_size()) > kMaxSeeds) {
    return Status::InvalidArgument("seeds: at most " + std::to_string(kMaxSeeds));
  }
  if (HasDuplicates(spec.seeds())) return Status::InvalidArgument("seeds: a seed is listed twice");
  if (spec.has_subsample() && spec.subsample() < 1) {
    return Status::InvalidArgument("subsample: must be >= 1");
  }
  S0_RETURN_IF_ERROR(CheckMethod(spec.method(), "method"));
  const proto::Grid& g = spec.grid();
  for (double lr : g.lr()) {
    if (!(std::isfinite(lr) && lr > 0)) return Status::InvalidArgument("grid.lr: values must be > 0");
  }
  for (double a : g.alpha()) {
    if (!(std::isfinite(a) && a >= 0)) return Status::InvalidArgument("grid.alpha: values must be >= 0");
  }
  for (const std::string& l : g.layers()) S0_RETURN_IF_ERROR(CheckLayerSyntax(l, "grid.layers"));
  if (HasDuplicates(g.lr()) || HasDuplicates(g.alpha()) ||
      std::set<std::string>(g.layers().begin(), g.layers().end()).size() != size_t(g.layers_size())) {
    return Status::InvalidArgument("grid: a value is listed twice on one axis");
  }
  const proto::Runtime& rt = spec.runtime();
  if (rt.has_group_size() && (rt.group_size() < 1 || rt.group_size() > 65536)) {
    return Status::InvalidArgument("runtime.group_size: must be in [1, 65536]");
  }
  if (rt.has_stall_timeout_s() && !(std::isfinite(rt.stall_timeout_s()) && rt.stall_timeout_s() > 0)) {
    return Status::InvalidArgument("runtime.stall_timeout_s: must be > 0");
  }
  if (rt.has_threads_per_rank() && (rt.threads_per_rank() < 1 || rt.threads_per_rank() > 4096)) {
    return Status::InvalidArgument("runtime.threads_per_rank: must be in [1, 4096]");
  }
  const size_t runs = size_t(std::max(1, g.lr_size())) * size_t(std::max(1, g.alpha_size())) *
                      size_t(std::max(1, g.layers_size())) * size_t(spec.seeds_size());
  if (runs > kMaxRuns) {
    return Status::InvalidArgument("the job expands into " + std::to_string(runs) +
                                   " runs; at most " + std::to_string(kMaxRuns));
  }
  return Status::Ok();
}

Result<proto::JobSpec> ParseJobSpec(std::string_view text, bool json, const std::string& base_dir,
                                    const std::string& what) {
  proto::JobSpec spec;
  S0_RETURN_IF_ERROR(ParseTextMessage(text, json, &spec, what));
  S0_RETURN_IF_ERROR(ValidateJobSpec(spec).Context(what));
  spec.set_model(Resolve(spec.model(), base_dir));
  spec.set_data(Resolve(spec.data(), base_dir));
  spec.set_out_dir(Resolve(spec.out_dir(), base_dir));
  FillMethodDefaults(spec.mutable_method());
  proto::Runtime* rt = spec.mutable_runtime();
  if (!rt->has_group_size()) rt->set_group_size(1);
  if (!rt->has_stall_timeout_s()) rt->set_stall_timeout_s(600);
  return spec;
}

Result<proto::JobSpec> LoadJobSpec(const std::string& path) {
  S0_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path));
  const bool json = fs::path(path).extension() == ".json";
  return ParseJobSpec(text, json, fs::absolute(path).parent_path().string(), path);
}

Result<std::vector<proto::RunSpec>> ExpandJob(const proto::JobSpec& spec) {
  S0_RETURN_IF_ERROR(ValidateJobSpec(spec));
  const proto::Grid& g = spec.grid();
  std::vector<std::pair<bool, double>> lrs, alphas;  // (from the grid, value)
  for (double v : g.lr()) lrs.push_back({true, v});
  if (lrs.empty()) lrs.push_back({false, spec.method().lr()});
  for (double v : g.alpha()) alphas.push_back({true, v});
  if (alphas.empty()) alphas.push_back({false, spec.method().alpha()});
  std::vector<std::pair<bool, std::string>> layer_sets;
  for (const std::string& v : g.layers()) layer_sets.push_back({true, v});
  if (layer_sets.empty()) layer_sets.push_back({false, spec.method().layers()});

  std::vector<proto::RunSpec> runs;
  std::set<std::string> ids;
  size_t bytes = spec.ByteSizeLong();  // of the expanded job, encoded (an upper bound: see below)
  for (const auto& [lr_grid, lr] : lrs) {
    for (const auto& [alpha_grid, alpha] : alphas) {
      for (const auto& [layers_grid, layers] : layer_sets) {
        std::string key;
        auto add = [&key](const std::string& part) { key += (key.empty() ? "" : "_") + part; };
        proto::S0Method m = spec.method();
        FillMethodDefaults(&m);
        if (lr_grid) {
          m.set_lr(lr);
          add("lr-" + Num(lr));
        }
        if (alpha_grid) {
          m.set_alpha(alpha);
          add("alpha-" + Num(alpha));
        }
        if (layers_grid) {
          m.set_layers(layers);
          std::string name = layers;
          for (char& c : name) c = c == ',' ? '+' : c;
          add("layers-" + name);
        }
        for (uint64_t seed : spec.seeds()) {
          proto::RunSpec r;
          r.set_version(kProtocolVersion);
          r.set_run_id((key.empty() ? "" : key + "_") + "seed-" + std::to_string(seed));
          r.set_index(uint32_t(runs.size()));
          r.set_seed(seed);
          *r.mutable_method() = m;
          if (spec.has_subsample()) r.set_subsample(spec.subsample());
          r.set_config_key(key.empty() ? "default" : key);
          if (!ids.insert(r.run_id()).second) {
            return Status::InvalidArgument("two runs would share the id " + r.run_id());
          }
          // A repeated field's element costs its size plus a tag and a length of at most 6 bytes.
          bytes += r.ByteSizeLong() + 6;
          if (bytes > kMaxJobBytes) {
            return Status::InvalidArgument(
                "the job's " + std::to_string(runs.size() + 1) + " runs so far take over " +
                std::to_string(kMaxJobBytes >> 20) +
                " MiB encoded (long run ids or layer lists, times many seeds): split the sweep "
                "into several jobs");
          }
          runs.push_back(std::move(r));
        }
      }
    }
  }
  return runs;
}

Result<TrainOptions> RunTrainOptions(const proto::RunSpec& run, const std::vector<int>& delta_layers) {
  const proto::S0Method& m = run.method();
  TrainOptions o;
  o.hp.n_steps = m.n_steps();
  o.hp.lr = m.lr();
  o.hp.l2_lambda = m.l2_lambda();
  if (m.has_alpha()) o.hp.alpha = m.alpha();
  o.hp.normalize = m.normalize();
  o.hp.grad_clip = m.grad_clip();
  o.hp.max_length = m.max_length();
  S0_ASSIGN_OR_RETURN(o.layers, ParseLayers(m.layers(), delta_layers));
  o.alpha_in_training = m.alpha_in_training();
  o.history_every = m.history_every();
  o.checkpoint_every = m.checkpoint_every();
  o.seed = run.seed();
  return o;
}

Status CheckSameJob(const proto::ExpandedJob& recorded, const proto::ExpandedJob& now) {
  const proto::JobSpec& a = recorded.spec();
  const proto::JobSpec& b = now.spec();
  std::string what;
  if (a.name() != b.name()) what = "name";
  else if (a.model() != b.model()) what = "model";
  else if (a.data() != b.data()) what = "data";
  else if (recorded.runs_size() != now.runs_size()) what = "number of runs";
  else {
    for (int i = 0; i < now.runs_size() && what.empty(); ++i) {
      if (!google::protobuf::util::MessageDifferencer::Equals(recorded.runs(i), now.runs(i))) {
        what = "run " + now.runs(i).run_id() + " (method, seed or subsample)";
      }
    }
  }
  if (what.empty()) return Status::Ok();
  return Status::InvalidArgument("the output directory holds another job (its " + what +
                                 " differs); choose another out_dir, or remove the old one");
}

}  // namespace s0
