#include "daemon/job_output.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>

#include "daemon/job_spec.h"
#include "daemon/wire.h"

namespace s0 {
namespace {

namespace fs = std::filesystem;

std::string Printf(const char* fmt, double a, double b) {
  char buf[96];
  std::snprintf(buf, sizeof buf, fmt, a, b);
  return buf;
}

}  // namespace

std::string RunDir(const std::string& out_dir, const std::string& run_id) {
  return out_dir + "/runs/" + run_id;
}

Status WriteDoneMarker(const std::string& run_dir, const proto::RunResult& result) {
  return WriteFileAtomic(run_dir + "/done", ToJson(result));
}

Result<proto::RunResult> ReadDoneMarker(const std::string& run_dir, const std::string& run_id) {
  const std::string path = run_dir + "/done";
  S0_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path));
  proto::RunResult r;
  S0_RETURN_IF_ERROR(ParseTextMessage(text, true, &r, path));
  if (r.run_id() != run_id) {
    return Status::Corruption(path + ": names run '" + r.run_id() + "', not " + run_id);
  }
  if (r.state() != proto::RUN_DONE) {
    return Status::Corruption(path + ": state " + proto::RunState_Name(r.state()) + ", not done");
  }
  return r;
}

Status PrepareJobDir(const proto::ExpandedJob& job) {
  const std::string out = job.spec().out_dir();
  std::error_code ec;
  fs::create_directories(out + "/runs", ec);
  if (ec) return Status::IOError(out + "/runs: " + ec.message());
  const std::string path = out + "/job.json";
  Result<std::string> text = ReadSmallFile(path, kMaxJobFileBytes);
  if (text.ok()) {
    proto::ExpandedJob recorded;
    S0_RETURN_IF_ERROR(ParseTextMessage(*text, true, &recorded, path, kMaxJobFileBytes));
    return CheckSameJob(recorded, job).Context(out);
  }
  if (text.status().code() != Code::kNotFound) return text.status();
  return WriteFileAtomic(path, ToJson(job));
}

proto::Stat Summarize(const std::vector<double>& xs) {
  proto::Stat s;
  s.set_n(uint32_t(xs.size()));
  if (xs.empty()) return s;
  double sum = 0;
  for (double x : xs) sum += x;
  const double mean = sum / double(xs.size());
  double sq = 0;
  for (double x : xs) sq += (x - mean) * (x - mean);
  s.set_mean(mean);
  s.set_std(xs.size() > 1 ? std::sqrt(sq / double(xs.size() - 1)) : 0.0);
  return s;
}

proto::JobSummary BuildSummary(const proto::ExpandedJob& job,
                               const std::vector<proto::RunResult>& results) {
  std::map<std::string, const proto::RunResult*> by_id;
  for (const proto::RunResult& r : results) by_id[r.run_id()] = &r;
  proto::JobSummary sum;
  sum.set_version(kProtocolVersion);
  sum.set_job(job.spec().name());
  sum.set_n_runs(uint32_t(job.runs_size()));
  struct Acc {
    const proto::RunSpec* first = nullptr;
    std::vector<const proto::RunResult*> done;
  };
  std::vector<std::string> keys;  // first-appearance order
  std::map<std::string, Acc> acc;
  for (const proto::RunSpec& run : job.runs()) {
    if (acc.find(run.config_key()) == acc.end()) {
      keys.push_back(run.config_key());
      acc[run.config_key()].first = &run;
    }
    proto::RunResult* r = sum.add_runs();
    auto it = by_id.find(run.run_id());
    if (it != by_id.end()) {
      *r = *it->second;
    } else {
      r->set_version(kProtocolVersion);
      r->set_run_id(run.run_id());
      r->set_state(proto::RUN_PENDING);
      r->set_seed(run.seed());
      r->set_config_key(run.config_key());
    }
    switch (r->state()) {
      case proto::RUN_DONE:
        sum.set_n_done(sum.n_done() + 1);
        acc[run.config_key()].done.push_back(r);
        break;
      case proto::RUN_FAILED:
        sum.set_n_failed(sum.n_failed() + 1);
        break;
      case proto::RUN_CANCELLED:
        sum.set_n_cancelled(sum.n_cancelled() + 1);
        break;
      default:
        sum.set_n_unfinished(sum.n_unfinished() + 1);
        break;
    }
  }
  for (const std::string& key : keys) {
    const Acc& a = acc[key];
    proto::ConfigSummary* c = sum.add_configs();
    c->set_config_key(key);
    *c->mutable_method() = a.first->method();
    std::vector<double> loss, wall;
    for (const proto::RunResult* r : a.done) {
      c->add_seeds(r->seed());
      loss.push_back(r->final_loss());
      wall.push_back(r->wall_time_s());
    }
    *c->mutable_final_loss() = Summarize(loss);
    *c->mutable_wall_time_s() = Summarize(wall);
    if (a.done.empty()) continue;
    const proto::RunResult& first = *a.done.front();
    for (int l = 0; l < first.layers_size(); ++l) {
      std::vector<double> norms;
      for (const proto::RunResult* r : a.done) {
        if (l < r->state_norm_size()) norms.push_back(r->state_norm(l));
      }
      proto::LayerStat* ls = c->add_state_norm();
      ls->set_layer(first.layers(l));
      *ls->mutable_state_norm() = Summarize(norms);
    }
  }
  return sum;
}

std::string SummaryText(const proto::JobSummary& s) {
  std::string t = "job " + s.job() + ": " + std::to_string(s.n_runs()) + " runs: " +
                  std::to_string(s.n_done()) + " done, " + std::to_string(s.n_failed()) +
                  " failed, " + std::to_string(s.n_unfinished()) + " unfinished" +
                  (s.n_cancelled() > 0 ? ", " + std::to_string(s.n_cancelled()) + " cancelled" : "") +
                  "\n\n";
  char line[512];
  std::snprintf(line, sizeof line, "%-40s %20s  %-11s %12s %10s %12s\n", "run", "seed", "state",
                "final_loss", "wall_s", "mean |S0|");
  t += line;
  for (const proto::RunResult& r : s.runs()) {
    std::string state = proto::RunState_Name(r.state()).substr(4);  // "RUN_DONE" -> "DONE"
    for (char& ch : state) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    double mean_norm = 0;
    for (double n : r.state_norm()) mean_norm += n;
    if (r.state_norm_size() > 0) mean_norm /= r.state_norm_size();
    if (r.state() == proto::RUN_PENDING || r.state() == proto::RUN_CANCELLED) {
      std::snprintf(line, sizeof line, "%-40s %20llu  %-11s\n", r.run_id().c_str(),
                    static_cast<unsigned long long>(r.seed()), state.c_str());
    } else {
      std::snprintf(line, sizeof line, "%-40s %20llu  %-11s %12.6f %10.2f %12.6f\n",
                    r.run_id().c_str(), static_cast<unsigned long long>(r.seed()), state.c_str(),
                    r.final_loss(), r.wall_time_s(), mean_norm);
    }
    t += line;
    if (!r.error().empty()) t += "    error: " + r.error() + "\n";
  }
  t += "\nper grid point, over its done runs (mean +- sample standard deviation):\n";
  // A grid point with no done run has no statistics: "-", not a mean of 0.
  auto stat = [](const proto::Stat& x, const char* format) {
    return x.n() == 0 ? std::string("-") : Printf(format, x.mean(), x.std());
  };
  for (const proto::ConfigSummary& c : s.configs()) {
    t += "  " + c.config_key() + " (" + std::to_string(c.final_loss().n()) + " seeds): final_loss " +
         stat(c.final_loss(), "%.6f +- %.6f") + ", wall_s " + stat(c.wall_time_s(), "%.2f +- %.2f") +
         "\n";
    for (const proto::LayerStat& l : c.state_norm()) {
      t += "    |S0[" + std::to_string(l.layer()) + "]| " + stat(l.state_norm(), "%.6f +- %.6f") +
           "\n";
    }
  }
  return t;
}

Status WriteSummary(const std::string& out_dir, const proto::JobSummary& summary) {
  S0_RETURN_IF_ERROR(WriteFileAtomic(out_dir + "/summary.json", ToJson(summary)));
  return WriteFileAtomic(out_dir + "/summary.txt", SummaryText(summary));
}

}  // namespace s0
