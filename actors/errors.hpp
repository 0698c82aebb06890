#pragma once
// Local failures inside a node travel as caf::errors of category "ce", with the codes of
// messages/error.hpp (the same enum the wire's ErrorReply carries), so that a failure the node
// found itself (no link, a timed-out forward) is never disguised as a frame from the cloud.
// Rendered by the actor system as "ce: cloud_unreachable (no link to the cloud)".
#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/fwd.hpp>

#include <optional>
#include <string>

#include "messages/error.hpp"

namespace ce {

inline constexpr caf::atom_value error_category = caf::atom("ce");

// ADL-visible, so a ce::error converts to caf::error wherever CAF expects one.
caf::error make_error(error code, std::string text = {});

// The node's code as a ce::error, or nullopt for an error of another category.
std::optional<error> ce_code(const caf::error& e);

// Lets the actor system render "ce" errors by name.
void register_errors(caf::actor_system_config& config);

}  // namespace ce
