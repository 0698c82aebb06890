// SplitPlan: computed from the config, exits partitioned, bad splits refused.
#include <boost/test/unit_test.hpp>

#include "model/split_plan.hpp"
#include "tests/model/tiny_model.hpp"

using namespace ce;
using namespace ce::test;

BOOST_AUTO_TEST_SUITE(split_plan)

BOOST_AUTO_TEST_CASE(default_split_comes_from_config) {
  auto c = tiny_config(2);  // 4 layers, exits {1, 2, 3}
  c.default_split = 3;
  const auto p = SplitPlan::from_config(c);
  BOOST_TEST(p.split == 3);
  BOOST_TEST(p.n_layers == 4);
  BOOST_TEST(p.edge().begin == 0);
  BOOST_TEST(p.edge().end == 3);
  BOOST_TEST(p.cloud().begin == 3);
  BOOST_TEST(p.cloud().end == 4);
  BOOST_TEST(p.edge().size() + p.cloud().size() == 4);
  BOOST_TEST(p.edge_exits == (std::vector<int64_t>{1, 2, 3}));
  const auto text = p.describe();
  BOOST_TEST(contains(text, "[0,3)"), text);
  BOOST_TEST(contains(text, "[3,4)"), text);
  BOOST_TEST(contains(text, "{1,2,3}"), text);
}

BOOST_AUTO_TEST_CASE(exits_are_partitioned_at_the_split) {
  auto c = tiny_config(2);
  c.n_layers = 8;
  c.exit_layers = {2, 4, 6};
  c.default_split = 4;
  // An exit at the split reads the edge's last state, so the edge holds it.
  BOOST_TEST(SplitPlan::from_config(c, 2).edge_exits == (std::vector<int64_t>{2}));
  BOOST_TEST(SplitPlan::from_config(c, 3).edge_exits == (std::vector<int64_t>{2}));
  BOOST_TEST(SplitPlan::from_config(c, 4).edge_exits == (std::vector<int64_t>{2, 4}));
  BOOST_TEST(SplitPlan::from_config(c, 7).edge_exits == (std::vector<int64_t>{2, 4, 6}));
  BOOST_TEST(SplitPlan::from_config(c).split == 4);
  BOOST_TEST(SplitPlan::from_config(c, 5).cloud().begin == 5);
}

BOOST_AUTO_TEST_CASE(split_without_an_edge_exit_throws) {
  auto c = tiny_config(2);
  c.n_layers = 8;
  c.exit_layers = {3, 5};
  c.default_split = 4;
  BOOST_CHECK_THROW(SplitPlan::from_config(c, 1), ModelError);
  BOOST_CHECK_THROW(SplitPlan::from_config(c, 2), ModelError);
  BOOST_CHECK_NO_THROW(SplitPlan::from_config(c, 3));
  c.exit_layers.clear();
  BOOST_CHECK_THROW(SplitPlan::from_config(c), ModelError);
}

BOOST_AUTO_TEST_CASE(split_outside_layer_range_throws) {
  const auto c = tiny_config(2);  // 4 layers: valid splits 1..3
  BOOST_CHECK_THROW(SplitPlan::from_config(c, 4), ModelError);
  BOOST_CHECK_THROW(SplitPlan::from_config(c, 5), ModelError);
  BOOST_CHECK_THROW(SplitPlan::from_config(c, -1), ModelError);
  for (int64_t s = 1; s <= 3; ++s) BOOST_TEST(SplitPlan::from_config(c, s).split == s);
  const auto e = model_error_text([&] { SplitPlan::from_config(c, 4); });
  BOOST_TEST(contains(e, "4"), e);
}

BOOST_AUTO_TEST_SUITE_END()
