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

struct redisReplyObjectFunctions;

namespace mayhem {

// Install on a context's reader before its first reply: `c->c.reader->fn = pooled_replies();`.
redisReplyObjectFunctions* pooled_replies() noexcept;

} // namespace mayhem
