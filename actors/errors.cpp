#include "actors/errors.hpp"

#include <caf/actor_system_config.hpp>
#include <caf/make_message.hpp>
#include <caf/message.hpp>

namespace ce {

caf::error make_error(error code, std::string text) {
  return {static_cast<uint8_t>(code), error_category, caf::make_message(std::move(text))};
}

std::optional<error> ce_code(const caf::error& e) {
  if (e.category() != error_category || e.code() > static_cast<uint8_t>(last_error)) return std::nullopt;
  return static_cast<error>(e.code());
}

void register_errors(caf::actor_system_config& config) {
  config.add_error_category(error_category, [](uint8_t code, caf::atom_value, const caf::message& context) {
    std::string out = std::string("ce: ") + to_string(static_cast<error>(code));
    if (context.match_elements<std::string>() && !context.get_as<std::string>(0).empty())
      out += " (" + context.get_as<std::string>(0) + ")";
    return out;
  });
}

}  // namespace ce
