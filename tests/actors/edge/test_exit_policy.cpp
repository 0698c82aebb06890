// The exit rule and mode policy, without a model.
#include <boost/test/unit_test.hpp>

#include "actors/edge/exit_policy.hpp"

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

BOOST_AUTO_TEST_SUITE_END()
