// PositionRows: the one row type from the edge's runner to the cloud's compute. Each operation is
// checked against the bytes a plain copy of the positions would hold.
#include <boost/test/unit_test.hpp>

#include <numeric>

#include "model/model_config.hpp"
#include "model/position_rows.hpp"

using namespace ce;

namespace {

constexpr uint32_t dim = 3;

// Positions [first, first + count) whose fp16 bits are 100 * position + element.
PositionRows numbered(uint32_t first, uint32_t count) {
  std::vector<uint16_t> bits;
  for (uint32_t p = first; p < first + count; ++p)
    for (uint32_t e = 0; e < dim; ++e) bits.push_back(static_cast<uint16_t>(100 * p + e));
  return PositionRows::states_f16(first, count, dim, bits.data());
}

void check_numbered(const PositionRows& rows, uint32_t first, uint32_t count) {
  BOOST_TEST(rows.first_position() == first);
  BOOST_TEST(rows.count() == count);
  BOOST_TEST(rows.end() == first + count);
  BOOST_REQUIRE(rows.bytes().size() == static_cast<size_t>(count) * dim * 2);
  for (uint32_t i = 0; i < count * dim; ++i)
    BOOST_TEST(rows.f16()[i] == 100 * (first + i / dim) + i % dim, "element " << i);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(position_rows)

BOOST_AUTO_TEST_CASE(appending_keeps_the_positions_in_order) {
  auto log = PositionRows::empty_at(RowKind::states_f16, dim * 2, 0);
  BOOST_TEST(log.empty());
  log.append(numbered(0, 2));
  log.append(numbered(2, 5));
  log.append(numbered(7, 1));
  check_numbered(log, 0, 8);
  check_numbered(log.slice(3, 4), 3, 4);
  check_numbered(log.slice(0, 8), 0, 8);
  check_numbered(log, 0, 8);  // a slice copies
}

BOOST_AUTO_TEST_CASE(a_gap_an_overlap_or_another_kind_is_refused_and_changes_nothing) {
  auto log = PositionRows::empty_at(RowKind::states_f16, dim * 2, 4);
  BOOST_CHECK_THROW(log.append(numbered(0, 1)), ModelError);  // before the start
  log.append(numbered(4, 3));
  BOOST_CHECK_THROW(log.append(numbered(8, 1)), ModelError);  // gap
  BOOST_CHECK_THROW(log.append(numbered(6, 2)), ModelError);  // overlap
  BOOST_CHECK_THROW(log.append(PositionRows::token_ids(7, {1, 2})), ModelError);  // kind
  BOOST_CHECK_THROW(log.append(PositionRows::states_f16(7, 1, dim + 1, std::vector<uint16_t>(dim + 1).data())),
                    ModelError);  // row size
  try {
    log.append(numbered(9, 1));
  } catch (const ModelError& e) {
    BOOST_TEST(std::string(e.what()).find("gap") != std::string::npos, e.what());
  }
  check_numbered(log, 4, 3);
  BOOST_CHECK_THROW(log.slice(3, 1), ModelError);
  BOOST_CHECK_THROW(log.slice(5, 3), ModelError);
  BOOST_CHECK_THROW(PositionRows(RowKind::states_f16, 0, 2, dim * 2, std::vector<uint8_t>(dim * 2)), ModelError);
  BOOST_CHECK_THROW(PositionRows(RowKind::token_ids, 0, 1, 0, {}), ModelError);
}

BOOST_AUTO_TEST_CASE(taking_the_front_leaves_the_rest_appendable) {
  auto rows = numbered(0, 6);
  check_numbered(rows.take_front(2), 0, 2);
  check_numbered(rows, 2, 4);
  check_numbered(rows.take_front(10), 2, 4);  // more than held: all of it
  BOOST_TEST(rows.empty());
  BOOST_TEST(rows.first_position() == 6u);
  rows.append(numbered(6, 2));
  check_numbered(rows, 6, 2);
}

BOOST_AUTO_TEST_CASE(truncating_keeps_the_positions_before_the_end) {
  auto rows = numbered(4, 6);  // positions 4..9
  rows.truncate(12);           // past the end: unchanged
  check_numbered(rows, 4, 6);
  rows.truncate(7);
  check_numbered(rows, 4, 3);
  BOOST_CHECK_THROW(rows.append(numbered(8, 1)), ModelError);
  rows.append(numbered(7, 1));
  check_numbered(rows, 4, 4);
  rows.truncate(2);  // before the first position: nothing kept, the next rows start at 2
  BOOST_TEST(rows.empty());
  BOOST_TEST(rows.first_position() == 2u);
  rows.append(numbered(2, 3));
  check_numbered(rows, 2, 3);
}

BOOST_AUTO_TEST_CASE(token_ids_keep_their_values) {
  std::vector<int32_t> ids(9);
  std::iota(ids.begin(), ids.end(), -4);
  auto rows = PositionRows::token_ids(0, {ids.begin(), ids.begin() + 4});
  rows.append(PositionRows::token_ids(4, {ids.begin() + 4, ids.end()}));
  BOOST_TEST((rows.kind() == RowKind::token_ids));
  BOOST_TEST(rows.row_bytes() == 4u);
  BOOST_TEST(std::vector<int32_t>(rows.ids(), rows.ids() + rows.count()) == ids);
  const auto tail = rows.slice(6, 3);
  BOOST_TEST(std::vector<int32_t>(tail.ids(), tail.ids() + 3) == std::vector<int32_t>(ids.begin() + 6, ids.end()));
}

BOOST_AUTO_TEST_SUITE_END()
