// redis_nowork: the limit line of scripts/bench's Redis scenario, not part of mayhem.
//
// A synchronous hiredis consumer that does no work at all: XREADGROUP COUNT <count> of new
// entries, then one XACK carrying every id of that batch, in a loop, until a read returns no
// entry (the stream, filled before it starts, is consumed). It waits for every answer before it
// sends the next command, so its rate is what one consumer moves through one connection when it
// spends nothing on the entries and two round trips per batch: a worker that keeps its reads and
// acks in flight while it works can match it, one that waits on round trips cannot.
//
// Prints one JSON line on stdout: {"entries":N,"acked":N,"batches":B,"seconds":S,
// "entries_per_s":R}, seconds from the first XREADGROUP sent to the last XACK answered.
// Exit 0 when every entry read was acked, 1 on a Redis error or a short XACK, 2 on bad flags.

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <hiredis/hiredis.h>
#include <memory>
#include <string>
#include <vector>

namespace {

struct reply_deleter {
    void operator()(redisReply* r) const { freeReplyObject(r); }
};
using reply_ptr = std::unique_ptr<redisReply, reply_deleter>;

struct context_deleter {
    void operator()(redisContext* c) const { redisFree(c); }
};
using context_ptr = std::unique_ptr<redisContext, context_deleter>;

// One command, arguments as pointers into memory the caller keeps alive until it returns.
// (hiredis 0.14 takes argv as `const char**`, hence the non-const vector.)
reply_ptr command(redisContext* c, std::vector<const char*>& argv,
                  const std::vector<size_t>& lens) {
    return reply_ptr(static_cast<redisReply*>(
        redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data())));
}

reply_ptr command(redisContext* c, const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const auto& a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    return command(c, argv, lens);
}

int fail(redisContext* c, const char* what, const redisReply* r) {
    std::fprintf(stderr, "redis_nowork: %s failed: %s\n", what,
                 r == nullptr                   ? c->errstr
                 : r->type == REDIS_REPLY_ERROR ? r->str
                                                : "unexpected reply type");
    return 1;
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"No-work Redis Streams consumer: XREADGROUP COUNT n, one XACK per batch, until "
                 "the stream is consumed (the limit line of scripts/bench)"};
    std::string host = "127.0.0.1";
    int port = 6379;
    std::string stream = "mayhem:restarts";
    std::string group = "nowork";
    std::string consumer = "nowork";
    int count = 1000;
    app.add_option("--host", host, "redis-server address")->capture_default_str();
    app.add_option("--port", port, "redis-server port")->capture_default_str();
    app.add_option("--stream", stream, "the stream to consume")->capture_default_str();
    app.add_option("--group", group, "consumer group (created at 0 if missing)")
        ->capture_default_str();
    app.add_option("--consumer", consumer, "consumer name")->capture_default_str();
    app.add_option("--count", count, "entries per XREADGROUP")
        ->capture_default_str()
        ->check(CLI::Range(1, 100000));
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int code = app.exit(e); // prints the help or the error
        return code == 0 ? 0 : 2;
    }

    // Timeouts are hang guards only: no command here blocks on the server.
    context_ptr c(redisConnectWithTimeout(host.c_str(), port, timeval{5, 0}));
    if (!c || c->err) {
        std::fprintf(stderr, "redis_nowork: connect to %s:%d failed: %s\n", host.c_str(), port,
                     c ? c->errstr : "out of memory");
        return 1;
    }
    redisSetTimeout(c.get(), timeval{30, 0});

    auto created = command(c.get(), {"XGROUP", "CREATE", stream, group, "0", "MKSTREAM"});
    if (!created || (created->type == REDIS_REPLY_ERROR &&
                     std::string(created->str).rfind("BUSYGROUP", 0) != 0)) {
        return fail(c.get(), "XGROUP CREATE", created.get());
    }

    const std::string count_text = std::to_string(count);
    const std::vector<std::string> read_args = {"XREADGROUP", "GROUP",   group,  consumer, "COUNT",
                                                count_text,   "STREAMS", stream, ">"};
    // XACK's arguments point into the read's reply, which lives until the ack is answered.
    std::vector<const char*> ack_argv;
    std::vector<size_t> ack_lens;
    long long entries = 0;
    long long acked = 0;
    long long batches = 0;
    const auto start = std::chrono::steady_clock::now();
    // Every turn either consumes at least one entry of a stream nobody adds to, or ends the loop.
    for (;;) {
        auto read = command(c.get(), read_args);
        if (!read || read->type == REDIS_REPLY_ERROR)
            return fail(c.get(), "XREADGROUP", read.get());
        // Nil (no new entry) or [[stream, [[id, [field, value, ...]], ...]]].
        if (read->type != REDIS_REPLY_ARRAY || read->elements == 0) break;
        const redisReply* batch = read->element[0]->element[1];
        if (batch->elements == 0) break;
        ack_argv.assign({"XACK", stream.c_str(), group.c_str()});
        ack_lens.assign({4, stream.size(), group.size()});
        for (size_t i = 0; i < batch->elements; ++i) {
            const redisReply* id = batch->element[i]->element[0];
            ack_argv.push_back(id->str);
            ack_lens.push_back(id->len);
        }
        auto ack = command(c.get(), ack_argv, ack_lens);
        if (!ack || ack->type != REDIS_REPLY_INTEGER) return fail(c.get(), "XACK", ack.get());
        entries += static_cast<long long>(batch->elements);
        acked += ack->integer;
        ++batches;
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("{\"entries\":%lld,\"acked\":%lld,\"batches\":%lld,\"seconds\":%.6f,"
                "\"entries_per_s\":%.1f}\n",
                entries, acked, batches, seconds, seconds > 0 ? entries / seconds : 0.0);
    if (acked != entries) {
        std::fprintf(stderr, "redis_nowork: %lld entries read, %lld acked\n", entries, acked);
        return 1;
    }
    return 0;
}
