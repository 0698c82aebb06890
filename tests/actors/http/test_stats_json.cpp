#include <boost/test/unit_test.hpp>

#include "actors/http/stats_json.hpp"

BOOST_AUTO_TEST_SUITE(stats_json)

BOOST_AUTO_TEST_CASE(percentile_is_the_nearest_rank_of_the_sorted_values) {
  BOOST_TEST(ce::percentile({}, 0.5) == 0.0);
  BOOST_TEST(ce::percentile({7.0}, 0.99) == 7.0);
  // sorted: 1 2 3 4 10; p50 -> index round(0.5*4) = 2, p99 -> round(3.96) = 4, p0 -> 0
  const std::vector<double> v = {10, 3, 1, 4, 2};
  BOOST_TEST(ce::percentile(v, 0.5) == 3.0);
  BOOST_TEST(ce::percentile(v, 0.99) == 10.0);
  BOOST_TEST(ce::percentile(v, 0.0) == 1.0);
}

BOOST_AUTO_TEST_CASE(every_stat_appears_under_its_name) {
  ce::GenerationStats s;
  s.mode = ce::InferenceMode::standalone;
  s.threshold = 0.8;
  s.prompt_tokens = 5;
  s.generated = 4;
  s.cloud_tokens = 1;
  s.degraded_tokens = 2;
  s.resyncs = 3;
  s.backpressure_pauses = 6;
  s.bytes_uploaded = 1024;
  s.bytes_inline = 64;
  s.edge_ms = 1.5;
  s.cloud_ms = 2.5;
  s.wait_ms = 3.5;
  s.total_ms = 9.0;
  s.token_ms = {4, 1, 2, 3};
  const auto j = ce::stats_json(s);
  BOOST_TEST(j.at("mode").get<std::string>() == "standalone");
  BOOST_TEST(j.at("threshold").get<double>() == 0.8);
  BOOST_TEST(j.at("prompt_tokens").get<int>() == 5);
  BOOST_TEST(j.at("generated").get<int>() == 4);
  BOOST_TEST(j.at("cloud_tokens").get<int>() == 1);
  BOOST_TEST(j.at("degraded_tokens").get<int>() == 2);
  BOOST_TEST(j.at("resyncs").get<int>() == 3);
  BOOST_TEST(j.at("backpressure_pauses").get<int>() == 6);
  BOOST_TEST(j.at("bytes_uploaded").get<uint64_t>() == 1024u);
  BOOST_TEST(j.at("bytes_inline").get<uint64_t>() == 64u);
  BOOST_TEST(j.at("edge_ms").get<double>() == 1.5);
  BOOST_TEST(j.at("cloud_ms").get<double>() == 2.5);
  BOOST_TEST(j.at("wait_ms").get<double>() == 3.5);
  BOOST_TEST(j.at("total_ms").get<double>() == 9.0);
  BOOST_TEST(j.at("token_ms_p50").get<double>() == 3.0);  // sorted 1 2 3 4, index round(1.5) = 2
  BOOST_TEST(j.at("token_ms_p99").get<double>() == 4.0);
}

BOOST_AUTO_TEST_SUITE_END()
