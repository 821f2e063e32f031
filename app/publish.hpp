// `mayhem publish`: send restart requests to a Redis stream (or write them as NDJSON).
#pragma once

#include <string>
#include <vector>

namespace mayhem {

int run_publish(const std::vector<std::string>& args);

} // namespace mayhem
