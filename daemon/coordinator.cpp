#include "daemon/coordinator.h"

#include <algorithm>
#include <cstdio>

#include "daemon/wire.h"

namespace s0 {
namespace {

double Seconds(Coordinator::Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string Fmt(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", s);
  return buf;
}

}  // namespace

Coordinator::Coordinator(std::vector<proto::RunSpec> runs, int n_groups,
                         CoordinatorOptions options, CoordinatorTransport* transport,
                         Clock::time_point now)
    : runs_(std::move(runs)), groups_(size_t(n_groups)), options_(options), transport_(transport) {
  for (Group& g : groups_) g.heard = now;
}

std::string Coordinator::Who(int g) const {
  return "group " + std::to_string(g) + " (leader rank " +
         std::to_string(g * options_.group_size) + ")";
}

Status Coordinator::ProtocolError(int g, const std::string& what) const {
  return Status::InvalidArgument("protocol error from " + Who(g) + ": " + what);
}

bool Coordinator::finished() const {
  for (const Group& g : groups_) {
    if (g.state != GroupState::kReleased) return false;
  }
  return true;
}

Status Coordinator::Pump(Clock::time_point now) {
  for (;;) {
    S0_ASSIGN_OR_RETURN(std::optional<CoordinatorTransport::Incoming> in, transport_->Poll());
    if (!in) break;
    if (in->group < 0 || size_t(in->group) >= groups_.size()) {
      return Status::InvalidArgument("protocol error: a message from group " +
                                     std::to_string(in->group) + ", but the job has " +
                                     std::to_string(groups_.size()) + " groups");
    }
    S0_RETURN_IF_ERROR(Handle(in->group, in->message, now));
  }
  for (size_t i = 0; i < groups_.size(); ++i) {
    Group& g = groups_[i];
    const int gi = int(i);
    if (g.state == GroupState::kStarting || g.state == GroupState::kBusy) {
      const double silent = Seconds(now - g.heard);
      if (silent > options_.stall_timeout_s) {
        const std::string doing =
            g.state == GroupState::kStarting
                ? "since the job started"
                : "while running " + g.run_id + " (last reported step " + std::to_string(g.step) +
                      "/" + std::to_string(g.n_steps) + ")";
        return Status::Unavailable(Who(gi) + " sent nothing for " + Fmt(silent) + " s " + doing +
                                   ", over the stall timeout of " + Fmt(options_.stall_timeout_s) +
                                   " s: a rank of it died or stalled");
      }
    } else if (g.state == GroupState::kParked && Seconds(now - g.kept) >= options_.keepalive_s) {
      proto::CoordinatorMessage m;
      m.set_version(kProtocolVersion);
      m.mutable_keepalive();
      S0_RETURN_IF_ERROR(transport_->Send(gi, m));
      g.kept = now;
    }
  }
  return Status::Ok();
}

Status Coordinator::Handle(int g, const proto::WorkerMessage& m, Clock::time_point now) {
  if (m.group() != uint32_t(g)) {
    return ProtocolError(g, "the message says it is from group " + std::to_string(m.group()));
  }
  Group& gr = groups_[size_t(g)];
  if (gr.state == GroupState::kReleased) {
    // An idle leader's stop request can cross its release in flight; nothing else can.
    if (m.body_case() == proto::WorkerMessage::kStopRequest) return Status::Ok();
    return ProtocolError(g, "a message after its release");
  }
  switch (m.body_case()) {
    case proto::WorkerMessage::kReady:
      return OnReady(g, m.ready(), now);
    case proto::WorkerMessage::kProgress: {
      const proto::Progress& p = m.progress();
      if (gr.state != GroupState::kBusy || p.run_id() != gr.run_id) {
        return ProtocolError(g, "progress of run '" + p.run_id() + "', which it is not running");
      }
      if (p.step() <= gr.step || p.step() > gr.n_steps) {
        return ProtocolError(g, "progress to step " + std::to_string(p.step()) + " after step " +
                                    std::to_string(gr.step) + " of " + std::to_string(gr.n_steps));
      }
      gr.step = p.step();
      gr.loss = p.loss();
      if (gr.first_step < 0) {
        gr.first_step = p.step();
        gr.first = now;
      }
      gr.heard = now;
      return Status::Ok();
    }
    case proto::WorkerMessage::kStopRequest:
      gr.heard = now;
      return RequestStop();
    case proto::WorkerMessage::BODY_NOT_SET:
      break;
  }
  return ProtocolError(g, "a message without a body");
}

Status Coordinator::OnReady(int g, const proto::Ready& ready, Clock::time_point now) {
  Group& gr = groups_[size_t(g)];
  if (gr.state == GroupState::kParked) return ProtocolError(g, "Ready while parked");
  if (gr.state == GroupState::kStarting) {
    if (ready.has_finished()) {
      return ProtocolError(g, "a result for run '" + ready.finished().run_id() +
                                  "' before it was given a run");
    }
  } else {
    if (!ready.has_finished()) return ProtocolError(g, "Ready without the result of " + gr.run_id);
    const proto::RunResult& r = ready.finished();
    if (r.run_id() != gr.run_id) {
      return ProtocolError(g, "a result for run '" + r.run_id() + "' while running " + gr.run_id);
    }
    if (r.state() != proto::RUN_DONE && r.state() != proto::RUN_FAILED &&
        r.state() != proto::RUN_INTERRUPTED) {
      return ProtocolError(g, "the result of " + r.run_id() + " has state " +
                                  proto::RunState_Name(r.state()));
    }
    results_.push_back(r);
    gr.state = GroupState::kStarting;  // idle: decided below
    if (r.state() == proto::RUN_INTERRUPTED && gr.cancel) {
      results_.back().set_state(proto::RUN_CANCELLED);
    } else if (r.state() == proto::RUN_INTERRUPTED && !stopping_) {
      stopping_ = true;
      S0_RETURN_IF_ERROR(StopBusyGroups());
    }
  }
  gr.heard = now;
  return Decide(g, now);
}

Status Coordinator::Decide(int g, Clock::time_point now) {
  Group& gr = groups_[size_t(g)];
  if (!stopping_ && next_ < runs_.size()) {
    proto::CoordinatorMessage m;
    m.set_version(kProtocolVersion);
    *m.mutable_assign() = runs_[next_++];
    gr.state = GroupState::kBusy;
    gr.run_id = m.assign().run_id();
    gr.step = 0;
    gr.n_steps = m.assign().method().n_steps();
    gr.loss = 0;
    gr.first_step = -1;
    gr.stop_sent = false;
    gr.cancel = false;
    gr.heard = now;
    return transport_->Send(g, m);
  }
  gr.state = GroupState::kParked;
  gr.kept = now;
  return ReleaseParkedIfOver();
}

Status Coordinator::ReleaseParkedIfOver() {
  for (const Group& g : groups_) {
    if (g.state == GroupState::kBusy) return Status::Ok();
  }
  if (!stopping_ && next_ < runs_.size()) return Status::Ok();
  for (size_t i = 0; i < groups_.size(); ++i) {
    if (groups_[i].state == GroupState::kParked) S0_RETURN_IF_ERROR(Release(int(i)));
  }
  return Status::Ok();
}

Status Coordinator::Release(int g) {
  proto::CoordinatorMessage m;
  m.set_version(kProtocolVersion);
  m.mutable_release()->set_stopped(stopping_);
  groups_[size_t(g)].state = GroupState::kReleased;
  return transport_->Send(g, m);
}

Status Coordinator::RequestStop() {
  if (stopping_) return Status::Ok();
  stopping_ = true;
  S0_RETURN_IF_ERROR(StopBusyGroups());
  return ReleaseParkedIfOver();
}

Status Coordinator::CancelRun(const std::string& run_id) {
  for (size_t i = next_; i < runs_.size(); ++i) {
    if (runs_[i].run_id() != run_id) continue;
    proto::RunResult r;
    r.set_version(kProtocolVersion);
    r.set_run_id(run_id);
    r.set_state(proto::RUN_CANCELLED);
    r.set_seed(runs_[i].seed());
    r.set_config_key(runs_[i].config_key());
    results_.push_back(std::move(r));
    runs_.erase(runs_.begin() + long(i));
    return ReleaseParkedIfOver();  // it may have been the last run
  }
  for (size_t i = 0; i < groups_.size(); ++i) {
    Group& g = groups_[i];
    if (g.state != GroupState::kBusy || g.run_id != run_id) continue;
    g.cancel = true;
    if (g.stop_sent) return Status::Ok();  // the job is stopping: the stop is on its way
    proto::CoordinatorMessage m;
    m.set_version(kProtocolVersion);
    m.mutable_stop()->set_cancel(true);
    g.stop_sent = true;
    return transport_->Send(int(i), m);
  }
  return Status::NotFound("run '" + run_id + "' is neither waiting nor running");
}

std::vector<Coordinator::RunProgress> Coordinator::Busy(Clock::time_point now) const {
  std::vector<RunProgress> out;
  for (const Group& g : groups_) {
    if (g.state != GroupState::kBusy) continue;
    RunProgress p;
    p.run_id = g.run_id;
    p.step = g.step;
    p.n_steps = g.n_steps;
    p.loss = g.loss;
    if (g.first_step >= 0 && g.step > g.first_step) {
      const double per_step = Seconds(g.heard - g.first) / double(g.step - g.first_step);
      p.eta_s = std::max(0.0, per_step * double(g.n_steps - g.step) - Seconds(now - g.heard));
    }
    out.push_back(std::move(p));
  }
  return out;
}

Status Coordinator::StopBusyGroups() {
  for (size_t i = 0; i < groups_.size(); ++i) {
    Group& g = groups_[i];
    if (g.state != GroupState::kBusy || g.stop_sent) continue;
    proto::CoordinatorMessage m;
    m.set_version(kProtocolVersion);
    m.mutable_stop();
    S0_RETURN_IF_ERROR(transport_->Send(int(i), m));
    g.stop_sent = true;
  }
  return Status::Ok();
}

}  // namespace s0
