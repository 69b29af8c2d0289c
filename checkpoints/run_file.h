// HDF5 run files: the lab notebook of one S0-tuning run. Layout (readable with h5py) and the
// commit protocol are documented in checkpoints/README.md.
//
// A RunFile is the run's working copy, held in memory (an HDF5 file on the core driver): the
// per-layer state history, the per-step metrics, the optimizer state resume needs (S0 and the
// Adam moments, bit for bit) and eval results. Appending a snapshot compresses it once; Commit
// writes the whole file to disk atomically (raw chunk copies, nothing is recompressed):
//
//   <path>.tmp.<pid>  written by HDF5, closed, fsync'd, optionally verified by loading it back;
//   <path>      ->  <path>.prev   rename, fsync(dir)    (only when <path> exists, see below)
//   <path>.tmp  ->  <path>        rename, fsync(dir)
//
// so at every instant <path> or <path>.prev holds a complete committed file, assuming committed
// files are not modified afterwards (LoadLatestGood copes with one of them being damaged). A run
// resumed from <path>.prev (Restore(LoadedRunFile)) skips the first rotation: its <path> is the
// damaged file, and rotating it would put it in place of the only good one.
// One writer per path: Commit deletes every <path>.tmp.* it finds as the leftover of a crash.
//
// Every dataset carries a CRC-32C of its elements (attribute "crc32c"); the root carries one of
// the header attributes and the committed step. Load verifies all of them.
//
// Thread safety: none. HDF5 is one library-wide state; call all of this from one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/status.h"

namespace s0 {

inline constexpr int kRunFileFormatVersion = 1;

// What stays fixed over a run. Written at Create, verified at Load.
struct RunHeader {
  std::string created_by;         // program and version, e.g. "s0d 0.1.0"
  std::string config_json;        // the run's config: a JSON object, stored verbatim; its
                                  // top-level scalars are also copied to /hyperparameters
  std::string model_fingerprint;  // identifies the frozen model; see CheckFingerprint
  std::vector<int> state_layers;  // recurrent layer indices: distinct, >= 0; fixes layer order
  std::vector<int64_t> state_shape;  // one layer's state, e.g. {H_v, d_k, d_v}; every dim >= 1

  // Elements in one layer's state (product of state_shape).
  size_t StateNumel() const;
};

// One fp32 tensor of StateNumel() elements per layer, in header.state_layers order.
using LayerStates = std::vector<std::vector<float>>;
using LayerStatesView = std::vector<std::span<const float>>;
LayerStatesView ViewOf(const LayerStates& states);

// Exactly what resuming needs: the next Adam step continues from here bit for bit.
struct OptimizerState {
  int64_t step = 0;  // Adam steps taken; also the file's committed step
  LayerStates s0, exp_avg, exp_avg_sq;
};

// One row of /metrics.
struct StepMetrics {
  int64_t step = 0;
  double loss = 0.0;
  double grad_norm = 0.0;          // global norm, before clipping
  std::vector<double> state_norm;  // ||S0[l]||_2 per layer, header order
  double wall_time_s = 0.0;        // since the run started
};

// Everything a run file holds, as Load returns it.
struct RunFileContents {
  RunHeader header;
  std::string compression;   // how /states is stored: "shuffle+deflate(1)", or "none: <why>"
  int64_t committed_step = 0;  // == optimizer.step
  OptimizerState optimizer;
  std::vector<int64_t> history_steps;  // [n_snapshots], strictly increasing
  LayerStates history;                 // per layer: [n_snapshots * StateNumel()], snapshot-major
  std::vector<StepMetrics> metrics;    // strictly increasing steps
  std::map<std::string, std::string> eval;  // name -> JSON text
};

// The points of Commit at which CommitOptions::after_step is called, in order.
enum class CommitStep {
  kTempCreated = 1,      // HDF5 created <path>.tmp.<pid> (still open)
  kTempFilled,           // every attribute, group and dataset is in it (still open)
  kTempClosed,           // HDF5 closed it
  kTempSynced,           // fsync(temp)
  kTempVerified,         // Load(temp) passed (only with CommitOptions::verify)
  kCurrentMovedToPrev,   // rename(path, path.prev) (only when path existed and is not the
                         // damaged file a resume from path.prev passed over)
  kPrevRenameSynced,     // fsync(directory) (only after kCurrentMovedToPrev)
  kNewMovedIn,           // rename(temp, path)
  kDirSynced,            // fsync(directory): committed
};
inline constexpr int kNumCommitSteps = 9;
const char* CommitStepName(CommitStep step);

struct CommitOptions {
  // Load the temp file back and verify it before it replaces anything. Costs one full read;
  // turn off only where that matters more than catching a bad write before it is renamed in.
  bool verify = true;
  // Test hook (fault injection). Called after each step that happened; returning false stops
  // the commit right there, as a crash would: no cleanup, files stay as they are at that
  // instant (a temp file stopped before kTempClosed is closed by HDF5, content unspecified).
  // Commit then returns Internal.
  std::function<bool(CommitStep)> after_step;
};

struct LoadedRunFile;

class RunFile {
 public:
  // A new run: empty history and metrics, S0 and both moments zero at step 0.
  // InvalidArgument when the header is malformed (config_json not a JSON object, layers not
  // distinct, a dim < 1, a state too large for one HDF5 chunk).
  static Result<RunFile> Create(RunHeader header);
  // Resume: a working copy holding `contents`, to append to; Commit rotates an existing <path>
  // as usual. The history is recompressed once here.
  static Result<RunFile> Restore(const RunFileContents& contents);
  // Resume from what LoadLatestGood returned; use this one rather than Restore(contents) there.
  // When it came from <path>.prev, <path> is the damaged file LoadLatestGood passed over, and
  // the first Commit to <path> replaces it instead of rotating it over the good <path>.prev.
  static Result<RunFile> Restore(const LoadedRunFile& loaded);

  RunFile(RunFile&&) noexcept;
  RunFile& operator=(RunFile&&) noexcept;
  ~RunFile();

  const RunHeader& header() const;

  // Adds one snapshot of every layer's state. `step` must exceed the last snapshot's.
  Status AppendSnapshot(int64_t step, const LayerStatesView& states);
  // Adds one metrics row. `step` must exceed the last row's.
  Status AppendMetrics(const StepMetrics& metrics);
  // Replaces the optimizer state (all three tensors of every layer and the step).
  Status SetOptimizer(int64_t step, const LayerStatesView& s0, const LayerStatesView& exp_avg,
                      const LayerStatesView& exp_avg_sq);
  Status SetOptimizer(const OptimizerState& optimizer);
  // Stores eval results under /eval/<name>, replacing an earlier one of that name. `name`: no
  // '/', not empty, not starting with '.'; `json` must parse.
  Status WriteEval(const std::string& name, const std::string& json);

  // Writes the working copy to `path` atomically (see the top of this file) with the
  // committed marker set to the optimizer step; the working copy stays usable. The directory
  // must exist. IOError on a failed write, fsync or rename; Corruption when the written file
  // fails verification. On failure the temp file is removed, and <path> and <path>.prev are
  // as they were unless the failure came after <path> was renamed to <path>.prev.
  Status Commit(const std::string& path, const CommitOptions& options = {});

 private:
  struct Impl;
  explicit RunFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// <path>.prev: the previous committed file.
std::string PrevRunFilePath(const std::string& path);

// Reads and verifies one run file. NotFound when it does not exist; Corruption (naming the
// dataset or attribute) when it is truncated, unreadable, inconsistent or fails a checksum;
// InvalidArgument for an unsupported format_version; Unavailable when this HDF5 build lacks
// a filter the file needs; IOError when it cannot be opened for another reason.
Result<RunFileContents> LoadRunFile(const std::string& path);

struct LoadedRunFile {
  RunFileContents contents;
  std::string path;      // the file the contents came from: <path> or <path>.prev
  bool from_prev = false;
  std::string reason;    // when from_prev: why <path> was not used (its Status)
};
// Loads <path>; falls back to <path>.prev when <path> is NotFound or Corrupt (missing,
// truncated, fails verification). Other errors are returned as they are (an unsupported
// version is no reason to silently resume from an older file). When both fail: NotFound if
// neither exists, else Corruption naming both reasons.
Result<LoadedRunFile> LoadLatestGood(const std::string& path);

// InvalidArgument "run file was written for model X, this model is Y; refusing to resume"
// unless contents.header.model_fingerprint == expected.
Status CheckFingerprint(const RunFileContents& contents, const std::string& expected);

}  // namespace s0
