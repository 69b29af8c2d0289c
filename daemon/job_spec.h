// Job specs (proto/job.proto): loading and validation, expansion into runs, and what a run means
// to the trainer. Everything here is deterministic: every rank that expands the same spec gets the
// same runs, ids and options.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "kernels/status.h"
#include "proto/job.pb.h"
#include "worker/trainer.h"

namespace s0 {

// Reads SPEC (at most 1 MiB): JSON when the name ends in ".json", else the protobuf text format.
// Checks the version and every field (ValidateJobSpec), fills the defaults (runtime and every
// method field but alpha) and resolves relative paths against the spec's directory.
Result<proto::JobSpec> LoadJobSpec(const std::string& path);
// The same from text; `base_dir` resolves relative paths; `what` names the source in errors.
Result<proto::JobSpec> ParseJobSpec(std::string_view text, bool json, const std::string& base_dir,
                                    const std::string& what);

// Field checks that need no model (layer lists are checked for syntax only; their indices and
// the subsample size are checked against the model and data by the caller).
Status ValidateJobSpec(const proto::JobSpec& spec);

// One run per (lr, alpha, layers, seed), seeds innermost, in that nesting order. Run ids name the
// grid axes that are present and the seed ("seed-7", "lr-0.01_layers-early_seed-7"); the config
// key is the id without the seed ("default" without grid axes).
Result<std::vector<proto::RunSpec>> ExpandJob(const proto::JobSpec& spec);

// The trainer's options for a run, its layers resolved against the model's DeltaNet layers.
Result<TrainOptions> RunTrainOptions(const proto::RunSpec& run, const std::vector<int>& delta_layers);

// Two expansions are the same job (a rerun may continue it) when the name, model, data, subsample
// and runs agree; runtime settings (group size, timeouts, threads) may differ.
Status CheckSameJob(const proto::ExpandedJob& recorded, const proto::ExpandedJob& now);

}  // namespace s0
