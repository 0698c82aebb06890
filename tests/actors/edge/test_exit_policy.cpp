// The exit rule and mode policy, without a model.
#include <boost/test/unit_test.hpp>

#include "actors/edge/exit_policy.hpp"

#include <cmath>
#include <fstream>

#include "tests/model/tiny_model.hpp"

using namespace ce;

namespace {
StepOutcome resolved_at(int32_t layer, int32_t token, float conf) {
  StepOutcome o;
  o.resolved = true;
  o.token = token;
  o.exit_layer = layer;
  o.confidence = conf;
  o.fallback_token = token;
  o.fallback_layer = layer;
  o.fallback_confidence = conf;
  return o;
}
StepOutcome unresolved(int32_t fallback_token, int32_t fallback_layer) {
  StepOutcome o;
  o.fallback_token = fallback_token;
  o.fallback_layer = fallback_layer;
  o.fallback_confidence = 0.3f;
  return o;
}
}  // namespace

BOOST_AUTO_TEST_SUITE(exit_policy)

BOOST_AUTO_TEST_CASE(collaborative_keeps_confident_tokens_and_offloads_the_rest) {
  Policy p{InferenceMode::collaborative, 0.8};
  auto local = decide(p, resolved_at(2, 17, 0.9f));
  BOOST_TEST(static_cast<int>(local.action) == static_cast<int>(Action::emit_local));
  BOOST_TEST(local.token == 17);
  BOOST_TEST(local.layer == 2);
  auto cloud = decide(p, unresolved(5, 4));
  BOOST_TEST(static_cast<int>(cloud.action) == static_cast<int>(Action::ask_cloud));
}

BOOST_AUTO_TEST_CASE(standalone_falls_back_to_the_last_edge_exit) {
  Policy p{InferenceMode::standalone, 0.8};
  auto d = decide(p, unresolved(5, 4));
  BOOST_TEST(static_cast<int>(d.action) == static_cast<int>(Action::emit_local));
  BOOST_TEST(d.token == 5);
  BOOST_TEST(d.layer == 4);
  auto confident = decide(p, resolved_at(2, 9, 0.95f));
  BOOST_TEST(confident.token == 9);
  BOOST_TEST(confident.layer == 2);
}

BOOST_AUTO_TEST_CASE(baselines_always_ask_the_cloud) {
  for (auto mode : {InferenceMode::cloud_only, InferenceMode::naive_split}) {
    auto d = decide({mode, 0.1}, resolved_at(2, 9, 0.99f));
    BOOST_TEST(static_cast<int>(d.action) == static_cast<int>(Action::ask_cloud));
  }
}

BOOST_AUTO_TEST_CASE(fallback_uses_the_deepest_evaluated_exit) {
  auto d = fallback(unresolved(42, 4));
  BOOST_TEST(d.token == 42);
  BOOST_TEST(d.layer == 4);
  BOOST_TEST(d.confidence == 0.3f);
}

BOOST_AUTO_TEST_CASE(a_down_link_degrades_new_responses_to_standalone) {
  BOOST_TEST(static_cast<int>(effective_mode(InferenceMode::collaborative, false)) ==
             static_cast<int>(InferenceMode::standalone));
  BOOST_TEST(static_cast<int>(effective_mode(InferenceMode::collaborative, true)) ==
             static_cast<int>(InferenceMode::collaborative));
  BOOST_TEST(static_cast<int>(effective_mode(InferenceMode::standalone, true)) ==
             static_cast<int>(InferenceMode::standalone));
  // Baselines are measured as what they are: never silently standalone.
  for (auto baseline : {InferenceMode::cloud_only, InferenceMode::naive_split})
    BOOST_TEST(static_cast<int>(effective_mode(baseline, false)) == static_cast<int>(baseline));
}

// The latency-budget policy against a plain reading of its rule: expected ms per token =
// edge + share(θ) x round trip; the highest θ in [floor, ceiling] that fits, else the floor.
BOOST_AUTO_TEST_CASE(the_latency_budget_picks_the_highest_threshold_that_fits) {
  const OffloadCurve curve({{0.9, 0.65}, {0.5, 0.19}, {0.7, 0.42}, {0.3, 0.03}, {0.83, 0.58}});
  BOOST_TEST(curve.points().front().first == 0.3);  // sorted by θ
  const double floor = 0.3, ceiling = 0.83, budget = 10;
  // A near link: every θ fits, the ceiling wins (0.9 lies above it).
  BOOST_TEST(budget_threshold(curve, {1.0, 1.5}, budget, floor, ceiling) == 0.83);
  // 20 ms: 1.5 + share x 20 <= 10 -> share <= 0.425 -> 0.7.
  BOOST_TEST(budget_threshold(curve, {20.0, 1.5}, budget, floor, ceiling) == 0.7);
  // 40 ms: share <= 0.2125 -> 0.5.
  BOOST_TEST(budget_threshold(curve, {40.0, 1.5}, budget, floor, ceiling) == 0.5);
  // 1 s: nothing fits, the floor stands.
  BOOST_TEST(budget_threshold(curve, {1000.0, 1.5}, budget, 0.45, ceiling) == 0.45);
}

BOOST_AUTO_TEST_CASE(a_broken_calibration_file_is_refused_naming_the_file_and_line) {
  ce::test::TempDir dir;
  const auto write = [&](const std::string& text) {
    const std::string path = dir.path() + "/cal.csv";
    std::ofstream(path) << text;
    return path;
  };
  const auto error_of = [](const std::string& path) {
    try {
      OffloadCurve::load(path);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const auto good = OffloadCurve::load(write("threshold,edge_share,cloud_share\n0.5,0.8,0.2\n0.8,0.46,0.54\n"));
  BOOST_TEST(good.points().size() == 2u);
  BOOST_TEST(good.points()[1].second == 0.54);
  BOOST_TEST(error_of(dir.path() + "/none.csv").find("none.csv: cannot read") != std::string::npos);
  BOOST_TEST(error_of(write("threshold,edge_share\n0.5,0.8\n")).find("no column 'cloud_share'") != std::string::npos);
  BOOST_TEST(error_of(write("threshold,cloud_share\n0.5,0.2\n0.6,x\n")).find("cal.csv:3: threshold and cloud_share must be numbers") !=
             std::string::npos);
  BOOST_TEST(error_of(write("threshold,cloud_share\n0.5,1.2\n")).find("cal.csv:2: cloud_share must be in [0, 1]") !=
             std::string::npos);
  BOOST_TEST(error_of(write("threshold,cloud_share\n")).find("no rows") != std::string::npos);
  BOOST_TEST(error_of(write("threshold,cloud_share\n0.5\n")).find("too few columns") != std::string::npos);
}

// Guess odds: the confidence itself before anything is seen; then the hit rate of its tenth of
// confidence, pulled toward the prior by kPriorWeight pseudo-answers; other tenths unmoved; NaN
// and the ends of [0, 1] land in the end buckets; old answers fade past kMemory.
BOOST_AUTO_TEST_CASE(guess_odds_follow_the_measured_hit_rate_per_tenth_of_confidence) {
  GuessOdds odds;
  BOOST_TEST(odds.chance(0.42f) == 0.45, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(odds.chance(0.0f) == 0.05, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(odds.chance(1.0f) == 0.95, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(odds.chance(std::nanf("")) == 0.05, boost::test_tools::tolerance(1e-12));
  for (int i = 0; i < 16; ++i) odds.record(0.41f + 0.005f * static_cast<float>(i % 3), i % 4 != 0);  // 12 of 16 hit
  const double prior = GuessOdds::kPriorWeight;
  BOOST_TEST(odds.chance(0.45f) == (12 + prior * 0.45) / (16 + prior), boost::test_tools::tolerance(1e-12));
  BOOST_TEST(odds.chance(0.35f) == 0.35, boost::test_tools::tolerance(1e-12));  // another tenth
  BOOST_TEST(odds.chance(0.55f) == 0.55, boost::test_tools::tolerance(1e-12));
  // After many misses the estimate falls toward 0 whatever came before: the memory is bounded.
  for (int i = 0; i < 10 * static_cast<int>(GuessOdds::kMemory); ++i) odds.record(0.45f, false);
  BOOST_TEST(odds.chance(0.45f) < 0.01);
  BOOST_TEST(odds.chance(0.45f) >= 0.0);
}

// Wire delay: unmeasured at first; the least round trip less compute of the window, so that
// answers held up by queues do not raise it; a lower delay is taken at once, and a higher one only
// once kWindow newer answers all show it (the route changed); compute beyond the round trip is 0.
BOOST_AUTO_TEST_CASE(wire_delay_is_the_windowed_least_round_trip_less_compute) {
  WireDelay wire;
  BOOST_TEST(!wire.measured());
  BOOST_TEST(wire.ms() == 0.0);
  wire.record(45.0, 3.0);
  BOOST_TEST(wire.measured());
  BOOST_TEST(wire.ms() == 42.0, boost::test_tools::tolerance(1e-12));
  for (int i = 0; i < 10; ++i) wire.record(60.0 + i, 2.0);  // queued behind other requests
  BOOST_TEST(wire.ms() == 42.0, boost::test_tools::tolerance(1e-12));
  wire.record(41.0, 1.0);
  BOOST_TEST(wire.ms() == 40.0, boost::test_tools::tolerance(1e-12));
  for (int i = 0; i < WireDelay::kWindow - 1; ++i) wire.record(90.0, 5.0);
  BOOST_TEST(wire.ms() == 40.0, boost::test_tools::tolerance(1e-12));  // still in the window
  wire.record(90.0, 5.0);
  BOOST_TEST(wire.ms() == 85.0, boost::test_tools::tolerance(1e-12));  // now out of it
  wire.record(1.0, 2.0);  // compute reported longer than the whole round trip (clocks): no wire
  BOOST_TEST(wire.ms() == 0.0);
}

// Run-ahead depth: the edge steps that fit the time a request is out, at least 1 and at most
// max-ahead: its round trip (not less than wire + compute), or the wire alone and none when the
// cloud's compute outlasts the wire (shared cores).
BOOST_AUTO_TEST_CASE(speculation_depth_covers_the_round_trip_or_the_wire) {
  WireDelay wire;
  // Nothing measured yet, or not speculating: max-ahead as it stands.
  BOOST_TEST(speculation_depth(RunAhead::round_trip, 256, wire, 5.0, {14.0, 0.5}) == 256);
  wire.record(12.0, 2.0);  // wire 10 ms
  BOOST_TEST(speculation_depth(RunAhead::round_trip, 0, wire, 2.0, {14.0, 0.5}) == 0);
  BOOST_TEST(speculation_depth(RunAhead::wire, 256, wire, 2.0, {14.0, 0.0}) == 256);  // no step timed yet
  // Round trip: 14 / 0.5 = 28 steps; 14 / 0.6 = 23.3 -> 24; capped by max-ahead; never less than
  // wire + compute (12 / 0.5 = 24) when the average lags.
  BOOST_TEST(speculation_depth(RunAhead::round_trip, 256, wire, 2.0, {14.0, 0.5}) == 28);
  BOOST_TEST(speculation_depth(RunAhead::round_trip, 256, wire, 2.0, {14.0, 0.6}) == 24);
  BOOST_TEST(speculation_depth(RunAhead::round_trip, 16, wire, 2.0, {14.0, 0.5}) == 16);
  BOOST_TEST(speculation_depth(RunAhead::round_trip, 256, wire, 2.0, {3.0, 0.5}) == 24);
  // Wire: 10 / 0.5 = 20, the cloud's compute and the rest of the round trip left out; none once
  // the compute outlasts the wire.
  BOOST_TEST(speculation_depth(RunAhead::wire, 256, wire, 2.0, {14.0, 0.5}) == 20);
  BOOST_TEST(speculation_depth(RunAhead::wire, 256, wire, 10.5, {24.0, 0.5}) == 0);
  BOOST_TEST(speculation_depth(RunAhead::round_trip, 256, wire, 10.5, {24.0, 0.5}) == 48);
  // Loopback: no wire at all. The round trip still covers the compute and the waits beside it; a
  // step longer than the round trip still runs one ahead.
  WireDelay loopback;
  loopback.record(1.0, 1.0);
  BOOST_TEST(speculation_depth(RunAhead::wire, 256, loopback, 1.0, {1.8, 0.4}) == 0);
  BOOST_TEST(speculation_depth(RunAhead::round_trip, 256, loopback, 1.0, {1.8, 0.4}) == 5);
  BOOST_TEST(speculation_depth(RunAhead::round_trip, 256, loopback, 1.0, {1.8, 5.0}) == 1);
}

BOOST_AUTO_TEST_SUITE_END()
