// What passes between a source, the pipeline and a store: one delivery of a raw payload, with
// the source's reference to it and its attempt number. The source fills it, the pipeline
// carries it, the store records its attempt; none of them needs the others' headers for it.
#pragma once

#include <cstdint>
#include <string>

namespace mayhem {

struct delivery {
    std::string payload;
    std::string ref;               // the source's id for it (a stream entry id); may be empty
    std::uint32_t attempt = 1;     // 1 for the first delivery, counting redeliveries
    std::uint64_t tag = 0;         // source-private
    std::uint64_t received_ns = 0; // steady clock when the pipeline took it
};

} // namespace mayhem
