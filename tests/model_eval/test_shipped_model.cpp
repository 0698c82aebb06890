// The shipped model: it loads, its exits are wired, and evaluating a fixed slice of the held-out
// test text reproduces the figures recorded in its model card's eval/test-slice.json (within 1%).
#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/evaluation.hpp"
#include "model/runtime.hpp"
#include "model/split_plan.hpp"
#include "model/text/sentencepiece_tokenizer.hpp"

namespace {
const std::string model_dir = std::string(CE_SOURCE_DIR) + "/models/ce-brown-8l";
}

BOOST_AUTO_TEST_SUITE(shipped_model)

BOOST_AUTO_TEST_CASE(loads_and_reproduces_its_card_on_a_test_slice) {
  const std::string slice_file = model_dir + "/eval/test-slice.json";
  if (!std::filesystem::exists(slice_file)) {
    BOOST_TEST_MESSAGE("no shipped model figures at " << slice_file << "; nothing to check");
    return;
  }
  auto model = ce::Model::load(model_dir);
  const auto& c = model->config();
  auto plan = ce::SplitPlan::from_config(c);
  BOOST_TEST(plan.edge_exits.size() >= 1u);
  nlohmann::json card;
  std::ifstream(slice_file) >> card;
  BOOST_TEST(card["weights_hash"].get<std::string>() == model->weights_hash());

  ce::SentencePieceTokenizer tok(model->tokenizer_path());
  std::ifstream in(std::string(CE_SOURCE_DIR) + "/data/brown/test.txt");
  std::stringstream text;
  text << in.rdbuf();
  std::vector<int32_t> tokens{static_cast<int32_t>(c.bos_id)};
  for (auto id : tok.encode(text.str())) tokens.push_back(id);
  tokens.resize(card["tokens"].get<size_t>());
  ce::EvalOptions options;
  options.thresholds = {card["threshold"].get<double>()};
  auto report = ce::evaluate(*model, tokens, options);
  const auto& heads = card["nats_per_token"];
  BOOST_REQUIRE(heads.size() == report.heads.size());
  for (size_t i = 0; i < report.heads.size(); ++i)
    BOOST_TEST(report.heads[i].nats_per_token == heads[i].get<double>(), boost::test_tools::tolerance(0.01));
  BOOST_TEST(report.sweep[0].edge_share == card["edge_share"].get<double>(), boost::test_tools::tolerance(0.01));
}

BOOST_AUTO_TEST_SUITE_END()
