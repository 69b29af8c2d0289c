// The output directory of a job (`out_dir` of the spec):
//   OUT/job.json                 the spec as run and its expansion (ExpandedJob, JSON)
//   OUT/runs/<run-id>/run.h5     the HDF5 run file, committed by the group leader
//   OUT/runs/<run-id>/states.safetensors, meta.json, config.json   the trained states
//   OUT/runs/<run-id>/done       the run's RunResult (JSON), written atomically after the states:
//                                a run with a readable marker is finished and a rerun skips it
//   OUT/summary.json, summary.txt  results per run and statistics per grid point across seeds
#pragma once

#include <string>
#include <vector>

#include "kernels/status.h"
#include "proto/job.pb.h"

namespace s0 {

std::string RunDir(const std::string& out_dir, const std::string& run_id);

Status WriteDoneMarker(const std::string& run_dir, const proto::RunResult& result);
// The result of a finished run: NotFound when the run has no marker; another error when the
// marker is damaged or names another run or a state other than done.
Result<proto::RunResult> ReadDoneMarker(const std::string& run_dir, const std::string& run_id);

// Creates OUT and OUT/runs and writes OUT/job.json, or checks that the job.json already there
// describes the same job (CheckSameJob in daemon/job_spec.h).
Status PrepareJobDir(const proto::ExpandedJob& job);

// Mean and sample standard deviation (n - 1; 0 when n == 1) by two passes.
proto::Stat Summarize(const std::vector<double>& xs);

// Per-run results in expansion order (a run without a result is listed as pending) and, per grid
// point, statistics over its done runs.
proto::JobSummary BuildSummary(const proto::ExpandedJob& job,
                               const std::vector<proto::RunResult>& results);
std::string SummaryText(const proto::JobSummary& summary);
// OUT/summary.json and OUT/summary.txt, each atomically.
Status WriteSummary(const std::string& out_dir, const proto::JobSummary& summary);

}  // namespace s0
