#include "actors/cloud/gathering.hpp"

#include <algorithm>
#include <cmath>

namespace ce {

namespace {
double ms_between(Gathering::clock_type::time_point from, Gathering::clock_type::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}
}  // namespace

void Gathering::job_arrived(uint64_t session, clock_type::time_point now) {
  auto it = sessions_.find(session);
  if (it == sessions_.end() || !it->second.awaited) return;
  auto& r = it->second;
  const double ms = ms_between(r.answered, now);
  if (r.return_ms < 0) {
    r.return_ms = ms;
    r.deviation_ms = ms / 2;  // RFC 6298's first deviation
  } else {
    r.deviation_ms = (1 - kDeviationWeight) * r.deviation_ms + kDeviationWeight * std::abs(ms - r.return_ms);
    r.return_ms = (1 - kReturnWeight) * r.return_ms + kReturnWeight * ms;
  }
  r.awaited = false;
}

void Gathering::step_done(const std::vector<uint64_t>& answered, double step_ms, clock_type::time_point now) {
  last_step_ms_ = step_ms;
  // Who did not come back since the step before is not awaited any longer (ended, or busy), and
  // sessions silent for a minute are forgotten: the table holds the sessions in use.
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    it->second.awaited = false;
    if (now - it->second.answered > std::chrono::minutes(1))
      it = sessions_.erase(it);
    else
      ++it;
  }
  for (const auto session : answered) {
    auto& r = sessions_[session];
    r.answered = now;
    r.awaited = true;
  }
}

double Gathering::wait_ms(clock_type::time_point now) const {
  if (share_ <= 0 || last_step_ms_ <= 0) return 0;
  const double budget = share_ * last_step_ms_;
  double wait = 0;
  for (const auto& [session, r] : sessions_)
    if (r.awaited && r.return_ms >= 0 && r.return_ms <= budget)
      wait = std::max(wait, std::min(budget, r.return_ms + kDeviations * r.deviation_ms) - ms_between(r.answered, now));
  return wait;
}

}  // namespace ce
