// When the cloud's next batched step starts (actors/cloud/gathering.hpp), with made-up times.
#include <boost/test/unit_test.hpp>

#include "actors/cloud/gathering.hpp"

using namespace ce;
using namespace std::chrono_literals;
using Clock = Gathering::clock_type;

BOOST_AUTO_TEST_SUITE(gathering)

// Two sessions answered together that came back 2 ms later once: the next step waits for the
// second one until its average return plus four deviations (RFC 6298's first deviation is half the
// first sample: 2 + 4 x 1 = 6 ms), here no later than the share of the last step's time (5 ms),
// and not at all once it is back.
BOOST_AUTO_TEST_CASE(a_step_waits_for_a_session_that_usually_returns_soon) {
  Gathering g(0.25);
  const auto t0 = Clock::time_point{} + 1h;
  g.step_done({1, 2}, 20.0, t0);
  BOOST_TEST(g.wait_ms(t0) == 0.0);  // return times not known yet: nobody is waited for
  g.job_arrived(1, t0 + 2ms);
  g.job_arrived(2, t0 + 2ms);
  const auto t1 = t0 + 25ms;
  g.step_done({1, 2}, 20.0, t1);
  g.job_arrived(1, t1 + 500us);
  BOOST_TEST(g.wait_ms(t1 + 500us) == 4.5, boost::test_tools::tolerance(1e-9));  // until t1 + 5 ms
  BOOST_TEST(g.wait_ms(t1 + 5ms) == 0.0);                                        // not past the share
  g.job_arrived(2, t1 + 1ms);
  BOOST_TEST(g.wait_ms(t1 + 1ms) == 0.0);  // everyone is back
}

// Steady returns shrink the deviation, so the wait tightens around the usual return; a session a
// little later than its average (as half of them are) is still waited for: waiting for the average
// alone left such sessions out of 40% of the load benchmark's steps.
BOOST_AUTO_TEST_CASE(the_wait_covers_a_return_a_little_later_than_usual) {
  Gathering g(0.25);
  const auto t0 = Clock::time_point{} + 1h;
  auto t = t0;
  g.step_done({1, 2}, 20.0, t);
  for (int i = 0; i < 3; ++i) {  // session 2 returns in 2 ms each time: deviation 1, 0.75, 0.5625
    g.job_arrived(1, t + 1ms);
    g.job_arrived(2, t + 2ms);
    t += 25ms;
    g.step_done({1, 2}, 20.0, t);
  }
  g.job_arrived(1, t + 1ms);
  BOOST_TEST(g.wait_ms(t + 1ms) == 3.25, boost::test_tools::tolerance(1e-9));  // 2 + 4 x 0.5625 = 4.25 ms
  BOOST_TEST(g.wait_ms(t + 3ms) == 1.25, boost::test_tools::tolerance(1e-9));  // late, still expected
  BOOST_TEST(g.wait_ms(t + 4250us) == 0.0, boost::test_tools::tolerance(1e-9));
}

// Two steps of 8 ms, at t0 and t0 + 10 ms, answering `sessions`; in between, sessions[i] sends its
// next job returns[i] after the first step.
Gathering after_two_steps(double share, Clock::time_point t0, const std::vector<uint64_t>& sessions,
                          const std::vector<std::chrono::microseconds>& returns) {
  Gathering g(share);
  g.step_done(sessions, 8.0, t0);
  for (size_t i = 0; i < sessions.size(); ++i) g.job_arrived(sessions[i], t0 + returns[i]);
  g.step_done(sessions, 8.0, t0 + 10ms);
  return g;
}

// A session that usually comes back later than the share of a step (an edge computing local
// tokens), a lone session, a share of 0 and sessions the last step did not answer: no wait.
BOOST_AUTO_TEST_CASE(no_wait_for_slow_absent_or_lone_sessions) {
  const auto t0 = Clock::time_point{} + 1h;
  auto slow = after_two_steps(0.25, t0, {1, 2}, {1ms, 3ms});  // 3 ms > 0.25 x 8 ms
  slow.job_arrived(1, t0 + 11ms);
  BOOST_TEST(slow.wait_ms(t0 + 11ms) == 0.0);

  auto lone = after_two_steps(0.25, t0, {7}, {1ms});
  lone.job_arrived(7, t0 + 11ms);
  BOOST_TEST(lone.wait_ms(t0 + 11ms) == 0.0);

  auto off = after_two_steps(0.0, t0, {1, 2}, {1ms, 1ms});
  off.job_arrived(1, t0 + 10ms);
  BOOST_TEST(off.wait_ms(t0 + 10ms) == 0.0);

  // Session 2 was answered two steps ago and did not come back: the step after is not held for it.
  auto gone = after_two_steps(0.25, t0, {1, 2}, {1ms, 1ms});
  gone.job_arrived(1, t0 + 10500us);
  // 1 ms + 4 x 0.5 ms, capped at 0.25 x 8 ms: waited for until t0 + 12 ms
  BOOST_TEST(gone.wait_ms(t0 + 10500us) == 1.5, boost::test_tools::tolerance(1e-9));
  gone.step_done({1}, 8.0, t0 + 20ms);
  gone.job_arrived(1, t0 + 21ms);
  BOOST_TEST(gone.wait_ms(t0 + 21ms) == 0.0);
}

// The return time is a moving average: one slow return does not stop the session being waited for
// (its average stays within the share), and the wait is never longer than the share.
BOOST_AUTO_TEST_CASE(the_wait_follows_the_average_return) {
  const auto t0 = Clock::time_point{} + 1h;
  Gathering g(0.6);
  g.step_done({1, 2}, 10.0, t0);
  g.job_arrived(1, t0);
  g.job_arrived(2, t0 + 4ms);
  g.step_done({1, 2}, 10.0, t0 + 20ms);
  g.job_arrived(2, t0 + 30ms);  // 10 ms this time: average 0.7 x 4 + 0.3 x 10 = 5.8 ms, deviation 3 ms
  g.step_done({1, 2}, 10.0, t0 + 40ms);
  g.job_arrived(1, t0 + 40ms);
  BOOST_TEST(g.wait_ms(t0 + 40ms) == 6.0, boost::test_tools::tolerance(1e-9));  // 5.8 + 12, capped at 0.6 x 10
  BOOST_TEST(g.wait_ms(t0 + 41ms) == 5.0, boost::test_tools::tolerance(1e-9));
}

BOOST_AUTO_TEST_SUITE_END()
