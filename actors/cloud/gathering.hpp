#pragma once
// When the cloud's next batched step should start, as pure logic (cloud_inference holds one;
// unit-tested with made-up times). A weight-bound step costs about the same for 16 sessions as for
// 32, yet under load, stepping as soon as anything is queued splits the sessions into two halves
// that alternate, each paying a whole step (load benchmark, 179 M shape fp32, 32 sessions: 16
// sessions a step). So a step may wait, at most `share` x the last step's time, for the sessions
// the last step answered whose next job usually comes that soon: until its moving average return
// time plus four of its mean deviations (TCP's retransmission timer, RFC 6298). Waiting for the
// average alone left out a session that came back a little late, as half of them do: 19 of 32
// sessions a step on average, ~13% fewer tokens/s and a 20% higher p50 than with the deviations. A
// lone session is never waited for (it is the one queued), nor one that usually takes longer (an
// edge computing local tokens between its requests).
#include <chrono>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace ce {

class Gathering {
 public:
  using clock_type = std::chrono::steady_clock;

  explicit Gathering(double share) : share_(share) {}

  // A session's next job came in.
  void job_arrived(uint64_t session, clock_type::time_point now);
  // A step of `step_ms` answered these sessions.
  void step_done(const std::vector<uint64_t>& answered, double step_ms, clock_type::time_point now);
  // How long the next step should wait for returning sessions from `now`: 0 for none.
  double wait_ms(clock_type::time_point now) const;

  static constexpr double kReturnWeight = 0.3;     // of the newest return time in the moving average
  static constexpr double kDeviationWeight = 0.25;  // of the newest deviation from it (TCP's)
  static constexpr double kDeviations = 4;          // waited for beyond the average (TCP's)

 private:
  struct Returning {
    clock_type::time_point answered;
    double return_ms = -1;  // answer to its next job, moving average; < 0 until seen once
    double deviation_ms = 0;  // moving average of |return - return_ms|
    bool awaited = false;   // answered by the last step, no next job yet
  };
  double share_;
  double last_step_ms_ = 0;
  std::unordered_map<uint64_t, Returning> sessions_;  // answered within the last minute
};

}  // namespace ce
