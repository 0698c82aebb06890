#include "model/position_rows.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "model/model_config.hpp"

namespace ce {

const char* to_string(RowKind kind) { return kind == RowKind::states_f16 ? "fp16 states" : "token ids"; }

PositionRows::PositionRows(RowKind kind, uint32_t first_position, uint32_t count, uint32_t row_bytes,
                           std::vector<uint8_t> bytes)
    : kind_(kind), first_(first_position), count_(count), row_bytes_(row_bytes), bytes_(std::move(bytes)) {
  if (row_bytes == 0) throw ModelError("rows: row size 0");
  if (bytes_.size() != static_cast<size_t>(count) * row_bytes)
    throw ModelError("rows: " + std::to_string(bytes_.size()) + " bytes for " + std::to_string(count) + " rows of " +
                     std::to_string(row_bytes) + " bytes");
}

PositionRows PositionRows::empty_at(RowKind kind, uint32_t row_bytes, uint32_t first_position) {
  return PositionRows(kind, first_position, 0, row_bytes, {});
}

PositionRows PositionRows::states_f16(uint32_t first_position, uint32_t count, uint32_t dim, const uint16_t* bits) {
  const auto* p = reinterpret_cast<const uint8_t*>(bits);
  return PositionRows(RowKind::states_f16, first_position, count, dim * 2,
                      std::vector<uint8_t>(p, p + static_cast<size_t>(count) * dim * 2));
}

PositionRows PositionRows::token_ids(uint32_t first_position, const std::vector<int32_t>& ids) {
  const auto* p = reinterpret_cast<const uint8_t*>(ids.data());
  return PositionRows(RowKind::token_ids, first_position, static_cast<uint32_t>(ids.size()), 4,
                      std::vector<uint8_t>(p, p + ids.size() * 4));
}

void PositionRows::append(const PositionRows& next) {
  if (next.kind_ != kind_)
    throw ModelError(std::string("rows: ") + to_string(next.kind_) + " appended to " + to_string(kind_));
  if (next.row_bytes_ != row_bytes_)
    throw ModelError("rows: rows of " + std::to_string(next.row_bytes_) + " bytes appended to rows of " +
                     std::to_string(row_bytes_));
  if (next.first_ != end())
    throw ModelError("rows: positions from " + std::to_string(next.first_) + " appended after position " +
                     std::to_string(end()) + (next.first_ > end() ? " leave a gap" : " overlap"));
  bytes_.insert(bytes_.end(), next.bytes_.begin(), next.bytes_.end());
  count_ += next.count_;
}

PositionRows PositionRows::slice(uint32_t from, uint32_t n) const {
  if (from < first_ || from + n > end())
    throw ModelError("rows: positions [" + std::to_string(from) + ", " + std::to_string(from + n) + ") outside [" +
                     std::to_string(first_) + ", " + std::to_string(end()) + ")");
  const auto begin = bytes_.begin() + static_cast<long>(static_cast<size_t>(from - first_) * row_bytes_);
  return PositionRows(kind_, from, n, row_bytes_, std::vector<uint8_t>(begin, begin + static_cast<long>(n) * row_bytes_));
}

PositionRows PositionRows::take_front(uint32_t n) {
  n = std::min(n, count_);
  auto front = slice(first_, n);
  bytes_.erase(bytes_.begin(), bytes_.begin() + static_cast<long>(static_cast<size_t>(n) * row_bytes_));
  first_ += n;
  count_ -= n;
  return front;
}

void PositionRows::truncate(uint32_t end) {
  if (end >= this->end()) return;
  if (end <= first_) {
    *this = empty_at(kind_, row_bytes_, end);
    return;
  }
  count_ = end - first_;
  bytes_.resize(static_cast<size_t>(count_) * row_bytes_);
}

}  // namespace ce
