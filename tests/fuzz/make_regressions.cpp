// Writes crafted malformed frames into DIR (tests/fuzz/regressions/): each one a way a frame can
// lie about itself (refuse-*), and odd frames that are valid (accept-*). The codec tests replay
// every file there and expect each refuse-* to be refused with a reason and each accept-* to be
// accepted; run-fuzz adds them to the fuzzer's corpus. Rerun after a protocol change:
//   make_regressions tests/fuzz/regressions
#include <cstring>
#include <limits>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "messages/codec.hpp"

namespace {

using namespace ce::wire;

void put_u32(std::vector<char>& bytes, size_t at, uint32_t v) { std::memcpy(bytes.data() + at, &v, 4); }

UploadChunk rows(uint32_t first, uint32_t count, size_t payload_rows, size_t dim = 256) {
  return UploadChunk{7, 1, first, count, Dtype::f16, std::vector<uint8_t>(payload_rows * dim * 2, 0x3c)};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_regressions DIR\n";
    return 2;
  }
  const std::string dir = argv[1];
  std::vector<std::pair<std::string, std::vector<char>>> cases;
  auto valid = encode(rows(0, 2, 2));

  auto many_segments = valid;  // capnp framing: segment count - 1 in the first word
  put_u32(many_segments, 0, 0xfffffff0u);
  cases.push_back({"segment-count-huge", many_segments});
  auto long_segment = valid;
  put_u32(long_segment, 4, 0x7fffffffu);
  cases.push_back({"segment-longer-than-frame", long_segment});
  cases.push_back({"truncated-upload", std::vector<char>(valid.begin(), valid.begin() + static_cast<long>(valid.size() / 2))});
  cases.push_back({"empty", {}});
  cases.push_back({"null-root", std::vector<char>(16, 0)});
  cases.push_back({"upload-count-above-payload", encode(rows(0, 1000, 2))});
  cases.push_back({"upload-past-max-positions", encode(rows(1020, 8, 8))});
  cases.push_back({"upload-row-of-wrong-width", encode(rows(0, 2, 2, 100))});
  cases.push_back({"upload-zero-count", encode(rows(0, 0, 0))});
  auto odd_dtype = rows(0, 2, 2);
  odd_dtype.dtype = static_cast<Dtype>(7);
  cases.push_back({"upload-unknown-dtype", encode(odd_dtype)});
  InferRequest naive;
  naive.session_id = 7;
  naive.request_id = 1;
  naive.position = 4999;
  naive.kind = InferKind::naive_split;
  naive.inline_count = 5000;
  naive.inline_payload.assign(16, 0);
  cases.push_back({"naive-inline-count-above-max", encode(naive)});
  InferRequest odd_kind;
  odd_kind.session_id = 7;
  odd_kind.kind = static_cast<InferKind>(9);
  cases.push_back({"infer-unknown-kind", encode(odd_kind)});
  InferRequest nan_temperature;
  nan_temperature.session_id = 7;
  nan_temperature.sampling.temperature = std::numeric_limits<float>::quiet_NaN();
  cases.push_back({"infer-nan-temperature", encode(nan_temperature)});
  Hello long_name{protocol_version, "ce-brown-8l", "54d9f2db8aebeadc", 4, 256, Dtype::f16, std::string(5000, 'x')};
  cases.push_back({"hello-text-too-long", encode(long_name)});
  std::vector<std::pair<std::string, std::vector<char>>> accepted;  // valid, however odd
  accepted.push_back({"error-code-of-a-newer-peer", encode(ErrorReply{static_cast<ce::error>(200), "x", 7, 1})});

  for (auto& [name, bytes] : cases)
    std::ofstream(dir + "/refuse-" + name, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  for (auto& [name, bytes] : accepted)
    std::ofstream(dir + "/accept-" + name, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  std::cout << "wrote " << cases.size() + accepted.size() << " crafted frames to " << dir << "\n";
  return 0;
}
