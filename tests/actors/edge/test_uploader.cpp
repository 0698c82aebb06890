// The uploader's local failures: a node that finds no link answers with a "ce" caf::error naming
// the code, not with an ErrorReply frame the cloud never sent.
#include <boost/test/unit_test.hpp>

#include <caf/all.hpp>

#include "actors/errors.hpp"
#include "actors/node/node.hpp"
#include "messages/codec.hpp"
#include "tests/actors/fixtures.hpp"

using namespace ce;
using namespace ce::test;

BOOST_AUTO_TEST_SUITE(uploader)

BOOST_AUTO_TEST_CASE(an_infer_request_without_a_link_fails_locally_with_cloud_unreachable) {
  TempDir dir;
  auto ec = node_config(Role::edge, write_model(dir, collab_config(), 7));
  ec.cloud_port = 1;  // nothing listens there
  Node edge(ec);
  wire::InferRequest request;
  request.session_id = 5;
  request.request_id = 1;
  caf::scoped_actor self{edge.system()};
  bool failed = false;
  self->request(edge.uploader(), std::chrono::seconds(10), infer_atom::value, uint64_t{5}, uint32_t{0},
                wire::encode(request))
      .receive([](const std::vector<char>&) { BOOST_FAIL("a reply frame without a cloud"); },
               [&](caf::error& e) {
                 failed = true;
                 BOOST_TEST((ce_code(e) == error::cloud_unreachable));
                 const std::string text = edge.system().render(e);
                 BOOST_TEST(text.find("ce: cloud_unreachable (no link to any cloud)") != std::string::npos, text);
               });
  BOOST_TEST(failed);
}

BOOST_AUTO_TEST_CASE(codes_of_other_categories_are_not_ce_codes) {
  BOOST_TEST(!ce_code(caf::make_error(caf::sec::request_timeout)).has_value());
  BOOST_TEST((ce_code(make_error(error::overloaded, "full")) == error::overloaded));
}

BOOST_AUTO_TEST_SUITE_END()
