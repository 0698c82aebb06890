// safetensors reader/writer: round trips by dtype, metadata, and every malformed-file error names
// the file (and the tensor where one is at fault).
#include <boost/test/unit_test.hpp>

#include <ATen/ATen.h>

#include <cstring>
#include <fstream>
#include <unistd.h>

#include "model/safetensors.hpp"
#include "tests/model/tiny_model.hpp"

using namespace ce;
using namespace ce::test;

namespace {

// A well-formed pair: 'a' F32 (2, 2) at [0, 16), 'b' F16 (3) at [16, 22).
const std::string good_header =
    R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[3],"data_offsets":[16,22]}})";
const std::string good_data(22, '\0');

// Writes `bytes` to a file and returns the reader's error text.
std::string read_error(const TempDir& dir, const std::string& bytes, const std::string& name = "bad.safetensors") {
  const auto path = dir.file(name);
  write_file(path, bytes);
  return model_error_text([&] { read_safetensors(path); });
}

}  // namespace

BOOST_AUTO_TEST_SUITE(safetensors)

BOOST_AUTO_TEST_CASE(round_trip_keeps_dtype_values_and_metadata) {
  TempDir dir;
  at::manual_seed(1);
  auto base = at::randn({5, 7}) * 3;
  TensorMap t;
  t["f32"] = base;
  t["f16"] = base.to(at::kHalf);
  t["bf16"] = base.to(at::kBFloat16);
  t["vector"] = at::arange(11, at::kFloat);
  t["scalar"] = at::full({}, 2.5f);
  t["empty"] = at::zeros({0, 4});
  t["strided"] = base.t();  // non-contiguous: written as its logical values
  const std::map<std::string, std::string> meta{{"format", "pt"}, {"note", "tiny"}};
  const auto path = dir.file("x.safetensors");
  write_safetensors(path, t, meta);
  std::map<std::string, std::string> meta_back;
  auto back = read_safetensors(path, &meta_back);
  BOOST_TEST(meta_back == meta);
  BOOST_TEST(back.size() == t.size());
  for (auto& [name, tensor] : t) {
    BOOST_REQUIRE_MESSAGE(back.count(name), name);
    BOOST_TEST(back[name].scalar_type() == tensor.scalar_type(), name);
    BOOST_TEST(back[name].sizes().vec() == tensor.sizes().vec(), name);
    BOOST_TEST(at::equal(back[name], tensor.contiguous()), name);  // bit-exact in the stored dtype
  }
  // The stored fp16 / bf16 values are the fp32 values after conversion.
  BOOST_TEST(at::equal(back["f16"], base.to(at::kHalf)));
  BOOST_TEST(at::equal(back["bf16"], base.to(at::kBFloat16)));
  // Reading without asking for metadata is fine too.
  BOOST_TEST(read_safetensors(path).size() == t.size());
}

BOOST_AUTO_TEST_CASE(written_layout_is_standard) {
  // Little-endian header length, JSON header padded to 8 bytes, data sorted by name.
  TempDir dir;
  TensorMap t;
  t["b"] = at::full({2}, 1.0f);
  t["a"] = at::full({1}, 2.0f);
  const auto path = dir.file("y.safetensors");
  write_safetensors(path, t);
  const auto bytes = read_file(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  BOOST_TEST(n % 8 == 0);
  BOOST_TEST(bytes.size() == 8 + n + 12);
  const auto header = bytes.substr(8, n);
  BOOST_TEST(contains(header, R"("a":{"data_offsets":[0,4])"));
  BOOST_TEST(contains(header, R"("b":{"data_offsets":[4,12])"));
  float a;
  std::memcpy(&a, bytes.data() + 8 + n, 4);
  BOOST_TEST(a == 2.0f);
}

BOOST_AUTO_TEST_CASE(good_handmade_file_reads) {
  TempDir dir;
  write_file(dir.file("ok.safetensors"), safetensors_bytes(good_header, good_data));
  auto t = read_safetensors(dir.file("ok.safetensors"));
  BOOST_TEST(t.size() == 2u);
  BOOST_TEST(t["b"].scalar_type() == at::kHalf);
}

BOOST_AUTO_TEST_CASE(missing_or_tiny_file_names_the_file) {
  TempDir dir;
  auto e = model_error_text([&] { read_safetensors(dir.file("absent.safetensors")); });
  BOOST_TEST(contains(e, dir.file("absent.safetensors")), e);
  e = read_error(dir, "abc", "short.safetensors");
  BOOST_TEST(contains(e, dir.file("short.safetensors")), e);
  BOOST_TEST(contains(e, "truncated"), e);
  e = read_error(dir, "", "empty.safetensors");
  BOOST_TEST(contains(e, dir.file("empty.safetensors")), e);
}

BOOST_AUTO_TEST_CASE(file_cut_inside_data_names_file_and_tensor) {
  TempDir dir;
  const auto full = safetensors_bytes(good_header, good_data);
  const auto e = read_error(dir, full.substr(0, full.size() - 4));  // 'b' loses 4 of its 6 bytes
  BOOST_TEST(contains(e, dir.file("bad.safetensors")), e);
  BOOST_TEST(contains(e, "'b'"), e);
}

BOOST_AUTO_TEST_CASE(header_length_beyond_file_names_file) {
  TempDir dir;
  auto e = read_error(dir, safetensors_bytes(good_header, good_data, good_header.size() + good_data.size() + 1));
  BOOST_TEST(contains(e, dir.file("bad.safetensors")), e);
  BOOST_TEST(contains(e, "header length"), e);
  e = read_error(dir, safetensors_bytes(good_header, good_data, UINT64_MAX - 1));  // absurd length
  BOOST_TEST(contains(e, dir.file("bad.safetensors")), e);
}

BOOST_AUTO_TEST_CASE(header_not_json_or_not_object_names_file) {
  TempDir dir;
  auto e = read_error(dir, safetensors_bytes(R"({"a": {"dtype": "F32", )", good_data));
  BOOST_TEST(contains(e, dir.file("bad.safetensors")), e);
  BOOST_TEST(contains(e, "JSON"), e);
  e = read_error(dir, safetensors_bytes("[1, 2]", good_data));
  BOOST_TEST(contains(e, dir.file("bad.safetensors")), e);
}

BOOST_AUTO_TEST_CASE(offsets_out_of_range_name_file_and_tensor) {
  TempDir dir;
  auto e = read_error(
      dir, safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[16,32]}})", std::string(20, '\0')));
  BOOST_TEST(contains(e, dir.file("bad.safetensors")), e);
  BOOST_TEST(contains(e, "'a'"), e);
  e = read_error(dir, safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", good_data));
  BOOST_TEST(contains(e, "'a'"), e);  // begin after end
  e = read_error(dir, safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})", good_data));
  BOOST_TEST(contains(e, "'a'"), e);  // negative
  e = read_error(dir, safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", good_data));
  BOOST_TEST(contains(e, "'a'"), e);  // not a pair
}

BOOST_AUTO_TEST_CASE(offsets_not_matching_shape_name_file_and_tensor) {
  TempDir dir;
  // (2, 2) F32 needs 16 bytes; the offsets give 12.
  auto e = read_error(
      dir, safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", std::string(16, '\0')));
  BOOST_TEST(contains(e, dir.file("bad.safetensors")), e);
  BOOST_TEST(contains(e, "'w'"), e);
  e = read_error(dir, safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2,-2],"data_offsets":[0,16]}})",
                                        std::string(16, '\0')));
  BOOST_TEST(contains(e, "'w'"), e);  // negative dimension
}

BOOST_AUTO_TEST_CASE(overlapping_ranges_name_file_and_tensors) {
  TempDir dir;
  const auto e = read_error(
      dir, safetensors_bytes(R"({"first":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                             R"("second":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                             std::string(24, '\0')));
  BOOST_TEST(contains(e, dir.file("bad.safetensors")), e);
  BOOST_TEST(contains(e, "overlapping"), e);
  // The header promises to name the tensor at fault; an overlap involves two.
  BOOST_TEST((contains(e, "'first'") && contains(e, "'second'")), e);
}

BOOST_AUTO_TEST_CASE(unsupported_dtype_names_file_tensor_and_dtype) {
  TempDir dir;
  const auto e = read_error(
      dir, safetensors_bytes(R"({"ids":{"dtype":"I64","shape":[4],"data_offsets":[0,32]}})", std::string(32, '\0')));
  BOOST_TEST(contains(e, dir.file("bad.safetensors")), e);
  BOOST_TEST(contains(e, "'ids'"), e);
  BOOST_TEST(contains(e, "I64"), e);
}

BOOST_AUTO_TEST_CASE(incomplete_entry_names_file_and_tensor) {
  TempDir dir;
  const auto e = read_error(dir, safetensors_bytes(R"({"q":{"dtype":"F32","shape":[2]}})", good_data));
  BOOST_TEST(contains(e, dir.file("bad.safetensors")), e);
  BOOST_TEST(contains(e, "'q'"), e);
}

BOOST_AUTO_TEST_CASE(writer_refuses_unsupported_dtype) {
  TempDir dir;
  TensorMap t;
  t["ints"] = at::zeros({3}, at::kLong);
  const auto e = model_error_text([&] { write_safetensors(dir.file("w.safetensors"), t); });
  BOOST_TEST(contains(e, "'ints'"), e);
}

// Resident bytes of this process, from /proc/self/statm (pages).
static size_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  size_t total = 0, resident = 0;
  statm >> total >> resident;
  return resident * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
}

BOOST_AUTO_TEST_CASE(released_pages_leave_memory_and_read_back_from_the_file) {
  TempDir dir;
  at::manual_seed(3);
  TensorMap t;
  t["big"] = at::randn({2048, 2048});  // 16 MiB
  const auto path = dir.file("big.safetensors");
  write_safetensors(path, t);
  auto back = read_safetensors(path);
  BOOST_REQUIRE(at::equal(back["big"], t["big"]));  // every page of it read
  const auto before = resident_bytes();
  release_pages(back["big"]);
  const auto after = resident_bytes();
  BOOST_TEST(before - std::min(before, after) >= size_t{12} << 20, "released " << (before - std::min(before, after)));
  BOOST_TEST(at::equal(back["big"], t["big"]));  // read again from the file, unchanged
}

BOOST_AUTO_TEST_SUITE_END()
