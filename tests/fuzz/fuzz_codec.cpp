// libFuzzer target for the wire codec: whatever the bytes, decode() must not crash, hang or
// trip a sanitizer, and what it accepts must survive encode() -> decode() with every field equal.
// Built with clang (-fsanitize=fuzzer,address,undefined) by tests/fuzz/run-fuzz; also compiled
// as a plain function by the codec tests, which replay tests/fuzz/regressions/* with it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "messages/codec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The cloud's limits for the shipped model (dim 256, 1024 positions).
  const ce::wire::Limits limits{256, 1024, 4u << 20};
  auto decoded = ce::wire::decode(reinterpret_cast<const char*>(data), size, limits);
  if (!decoded.ok) {
    if (decoded.error_text.empty()) std::abort();  // a refusal must say why
    return 0;
  }
  auto again = ce::wire::decode(ce::wire::encode(decoded.message), limits);
  if (!again.ok || !ce::wire::same_fields(again.message, decoded.message)) std::abort();
  return 0;
}
