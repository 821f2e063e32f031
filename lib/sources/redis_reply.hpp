// hiredis reply objects without a malloc/free per object. A read of hundreds of stream entries
// is a tree of thousands of small replies (per entry: the entry, its id, its field list, the
// field name and the payload), and hiredis's own functions malloc each one and free it after
// the callback: that, not the parsing, was most of hiredis's cost per message. These functions
// build the same `redisReply` tree (callbacks read it exactly as before) from blocks of a few
// fixed sizes kept on per-thread free lists, each block a malloc of its own, so that anything
// freeing such a reply with hiredis's freeReplyObject would still be correct.
//
// Threading: a reply is made and freed on the thread whose loop owns the connection (the free
// lists are per thread).
#pragma once

#include <cstddef>

struct redisReplyObjectFunctions;

namespace mayhem {

// The most elements an array reply may announce. The element array is allocated when the header
// arrives, before any element does, so without a bound 11 bytes ("*2147483647\r\n") would ask
// for 17 GB. Larger headers fail the reader (hiredis reports "Out of memory" and the connection
// is made again). Our largest replies hold a read's entries (at most 1000) or a field list.
inline constexpr std::size_t max_reply_elements = std::size_t{1} << 20;

// Install on a context's reader before its first reply: `c->c.reader->fn = pooled_replies();`.
redisReplyObjectFunctions* pooled_replies() noexcept;

} // namespace mayhem
