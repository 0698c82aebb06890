#pragma once
// A session's rows for a run of positions, in the one form they keep from the edge's runner through
// the uploader's log and the cloud's context to the cloud's compute: split-layer states as fp16 bits,
// row-major (count, dim), or, in cloud-only mode, token ids. The wire's UploadChunk is the only other
// form (messages/ knows no model). `append` is the one place where contiguity is checked. Torch-free.
#include <cstdint>
#include <vector>

namespace ce {

enum class RowKind : uint8_t { states_f16, token_ids };

const char* to_string(RowKind kind);

class PositionRows {
 public:
  PositionRows() = default;
  // Throws ModelError unless bytes.size() == count * row_bytes (row_bytes: 2 * dim, or 4 for ids).
  PositionRows(RowKind kind, uint32_t first_position, uint32_t count, uint32_t row_bytes, std::vector<uint8_t> bytes);
  // No rows yet; the next ones must start at `first_position`.
  static PositionRows empty_at(RowKind kind, uint32_t row_bytes, uint32_t first_position);
  static PositionRows states_f16(uint32_t first_position, uint32_t count, uint32_t dim, const uint16_t* bits);
  static PositionRows token_ids(uint32_t first_position, const std::vector<int32_t>& ids);

  RowKind kind() const { return kind_; }
  uint32_t first_position() const { return first_; }
  uint32_t count() const { return count_; }
  uint32_t end() const { return first_ + count_; }  // one past the last position
  bool empty() const { return count_ == 0; }
  uint32_t row_bytes() const { return row_bytes_; }
  const std::vector<uint8_t>& bytes() const { return bytes_; }
  const uint16_t* f16() const { return reinterpret_cast<const uint16_t*>(bytes_.data()); }
  const int32_t* ids() const { return reinterpret_cast<const int32_t*>(bytes_.data()); }

  // Appends rows that start at end(), of the same kind and row size. Throws ModelError naming the
  // gap, overlap, kind or size that differs, leaving these rows unchanged.
  void append(const PositionRows& next);
  // Positions [from, from + n), which must lie inside these rows, as rows of their own.
  PositionRows slice(uint32_t from, uint32_t n) const;
  // Removes and returns the first n positions (all of them if n >= count()).
  PositionRows take_front(uint32_t n);
  // Keeps the positions before `end` (a rolled-back speculation drops the rest); when `end` lies
  // before first_position() none is kept and the next rows must start at `end`.
  void truncate(uint32_t end);

 private:
  RowKind kind_ = RowKind::states_f16;
  uint32_t first_ = 0;
  uint32_t count_ = 0;
  uint32_t row_bytes_ = 0;
  std::vector<uint8_t> bytes_;
};

}  // namespace ce
