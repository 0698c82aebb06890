// Writes one valid frame of every message kind into DIR, the fuzzer's starting corpus.
#include <fstream>
#include <iostream>
#include <string>

#include "messages/codec.hpp"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_seeds DIR\n";
    return 2;
  }
  using namespace ce::wire;
  const std::string dir = argv[1];
  Hello hello{protocol_version, "ce-brown-8l", "54d9f2db8aebeadc", 4, 256, Dtype::f16, "edge"};
  UploadChunk chunk{7, 1, 0, 2, Dtype::f16, std::vector<uint8_t>(2 * 256 * 2, 0x3c)};
  InferRequest infer;
  infer.session_id = 7;
  infer.request_id = 1;
  infer.position = 1;
  InferRequest naive = infer;
  naive.kind = InferKind::naive_split;
  naive.inline_count = 2;
  naive.inline_payload.assign(2 * 256 * 4, 0);
  const Message messages[] = {hello, Welcome{protocol_version, "m", "h", 4, 256, 60000, 1024}, chunk,
                              UploadAck{7, 1, 2}, infer, naive, InferReply{7, 1, 1, 42, 0.5f, 1000}, Bye{7},
                              ErrorReply{ce::error::unknown_session, "gone", 7, 1}};
  int n = 0;
  for (const auto& m : messages) {
    auto bytes = encode(m);
    std::ofstream(dir + "/seed-" + std::to_string(n++), std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  std::cout << "wrote " << n << " seeds to " << dir << "\n";
  return 0;
}
