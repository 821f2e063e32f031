// `mayhem publish`: restart requests onto the stream the redis source consumes. Generated ones
// (--count, the simulator's payloads, --bad-ratio of them undecodable) or NDJSON lines from
// standard input (--stdin, each validated like the worker decodes it unless --raw). With
// --output FILE|- they are written as NDJSON instead (for `mayhem worker --source stdin`).
// With --auth-key-file each request is signed (lib/message/auth.hpp) as it is sent. With --tcp
// they go to a worker's tcp source, which answers each one (lib/sources/tcp_publisher.hpp).
#include "publish.hpp"

#include "config/config.hpp"
#include "message/message.hpp"
#include "metrics/http_server.hpp"
#include "runtime/loop.hpp"
#include "sources/pubsub_publisher.hpp"
#include "sources/pubsub_rest.hpp"
#include "sources/redis_publisher.hpp"
#include "sources/redis_url.hpp"
#include "sources/simulate_source.hpp"
#include "sources/tcp_publisher.hpp"
#include "worker/worker.hpp"

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <random>

namespace mayhem {

namespace {

// Where the payloads go: Redis, or NDJSON on a stream.
class sink {
public:
    virtual ~sink() = default;
    virtual void add(std::string_view payload) = 0;
    virtual void flush() = 0;
};

class redis_sink final : public sink {
public:
    redis_sink(const redis_endpoint& ep, const std::string& stream) : pub_(ep, stream) {}
    void add(std::string_view p) override { pub_.add(p); }
    void flush() override { pub_.flush(); }

private:
    redis_publisher pub_;
};

// Pub/Sub: the ordering key, when asked for, is the message's host (a line that does not decode
// gets none).
class pubsub_sink final : public sink {
public:
    pubsub_sink(const std::string& endpoint, const std::string& topic, bool by_host,
                bool credentials, std::shared_ptr<const gcp::service_account> key)
        : pub_(endpoint, topic, pubsub::max_publish, 8, credentials, std::move(key)),
          by_host_(by_host) {}
    void add(std::string_view p) override {
        std::string key;
        if (by_host_) {
            auto d = decode(p, decode_options{});
            if (auto* m = std::get_if<message>(&d)) key = std::string(m->hostname());
        }
        pub_.add(std::string(p), std::move(key));
    }
    void flush() override { pub_.flush(); }

private:
    pubsub_publisher pub_;
    bool by_host_;
};

class ndjson_sink final : public sink {
public:
    explicit ndjson_sink(std::FILE* f) : f_(f) {}
    void add(std::string_view p) override {
        std::fwrite(p.data(), 1, p.size(), f_);
        std::fputc('\n', f_);
    }
    void flush() override {
        if (std::fflush(f_) != 0) throw std::runtime_error("cannot write the output");
    }

private:
    std::FILE* f_;
};

// --tcp: the requests are pulled one at a time as the connections have room, so a large --count
// or input is never held in memory.
int publish_over_tcp(const std::string& address, std::uint64_t connections, bool retry,
                     bool from_stdin, bool raw, std::uint64_t count, double bad_ratio,
                     std::uint64_t seed, const std::shared_ptr<auth::key_ring>& keys) {
    rt::loop gen_loop;
    simulate_options so;
    so.seed = seed;
    simulate_source gen(gen_loop, so);
    std::mt19937_64 rng(seed ? seed : std::random_device{}());
    std::uniform_real_distribution<double> coin(0, 1);
    decode_options dopts;
    std::uint64_t made = 0, lineno = 0, rejected = 0;
    std::string line;
    auto sign = [&](std::string& payload) {
        if (keys)
            if (auto s = auth::sign_request(payload, *keys, std::chrono::system_clock::now()))
                payload = std::move(*s);
    };
    std::function<bool(std::string&)> next = [&](std::string& payload) {
        if (!from_stdin) {
            if (made >= count) return false;
            if (bad_ratio > 0 && coin(rng) < bad_ratio) {
                gen.format_bad(payload, made++);
                return true;
            }
            gen.format_message(payload, made++);
            sign(payload);
            return true;
        }
        while (std::getline(std::cin, line)) {
            ++lineno;
            if (!line.empty() && line.back() == '\r') line.pop_back();
            if (line.find_first_not_of(" \t") == std::string::npos) continue;
            payload = line;
            if (raw) return true;
            auto d = decode(line, dopts);
            if (auto* bad = std::get_if<decode_error>(&d)) {
                std::cerr << "mayhem publish: line " << lineno << " not sent: " << bad->reason
                          << "\n";
                ++rejected;
                continue;
            }
            sign(payload);
            return true;
        }
        return false;
    };
    tcp_publish_options o;
    o.address = address;
    o.connections = connections;
    o.retry = retry;
    tcp_publish_result r;
    try {
        r = publish_tcp(o, next);
    } catch (const std::exception& e) {
        std::cerr << "mayhem publish: " << e.what() << "\n";
        gen.close();
        return exit_fatal;
    }
    gen.close();
    auto n = [&](outcome x) {
        return static_cast<unsigned long long>(r.answers[static_cast<std::size_t>(x)]);
    };
    // Generated requests never taken (no connection could carry them) are not done either.
    std::uint64_t requests = from_stdin ? r.requests : count;
    std::uint64_t not_done = requests - std::min(requests, r.done);
    std::printf(
        "{\"sent\":%llu,\"requests\":%llu,\"acked\":%llu,\"retried\":%llu,"
        "\"dead_lettered\":%llu,\"skipped\":%llu,\"released\":%llu,"
        "\"unanswered\":%llu,\"not_done\":%llu,\"refused\":%llu,\"rejected\":%llu,"
        "\"target\":\"tcp://%s\"}\n",
        static_cast<unsigned long long>(r.sent), static_cast<unsigned long long>(requests),
        n(outcome::acked), n(outcome::retried), n(outcome::dead_lettered), n(outcome::skipped),
        n(outcome::released), static_cast<unsigned long long>(r.unanswered),
        static_cast<unsigned long long>(not_done), static_cast<unsigned long long>(r.refused),
        static_cast<unsigned long long>(rejected), address.c_str());
    std::fflush(stdout);
    if ((not_done > 0 || r.gave_up) && !r.error.empty())
        std::cerr << "mayhem publish: " << r.error << "\n";
    // A refused connection leaves its requests not done, unless --retry carried them later.
    return not_done > 0 || r.gave_up || rejected > 0 ? exit_fatal : 0;
}

} // namespace

int run_publish(const std::vector<std::string>& args) {
    CLI::App cmd{"Send restart requests to a Redis stream (XADD <stream> * payload <json>), "
                 "pipelined, or to a Pub/Sub topic (--pubsub-topic). Generated ones (--count) or "
                 "NDJSON lines from standard input "
                 "(--stdin). Prints {\"sent\":N,...} when done.",
                 "mayhem publish"};
    std::uint64_t count = 10;
    double bad_ratio = 0;
    std::uint64_t seed = 0;
    bool from_stdin = false, raw = false;
    std::string url = "redis://127.0.0.1:6379/0";
    std::string stream = "mayhem:restarts";
    std::string output;
    std::string topic, pubsub_endpoint, ordering_key = "none";
    std::vector<std::string> key_files;
    std::string tcp;
    std::uint64_t connections = 1;
    bool retry = false;
    add_whole_number(cmd, "--count", count, 0, messages_max,
                     "How many generated requests (ignored with --stdin)");
    cmd.add_option("--bad-ratio", bad_ratio, "Share of undecodable generated payloads (0..1)")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str();
    add_whole_number(cmd, "--seed", seed, 0, std::numeric_limits<std::uint64_t>::max(),
                     "Random seed (0 = random)");
    cmd.add_flag("--stdin", from_stdin, "Send the NDJSON lines of standard input instead");
    cmd.add_flag("--raw", raw, "With --stdin: send every non-blank line as is, unvalidated");
    cmd.add_option("--redis-url", url, "redis://[[user]:password@]host[:port][/db] or unix:///path")
        ->capture_default_str();
    cmd.add_option("--stream", stream, "The stream to add to")->capture_default_str();
    cmd.add_option("--output", output,
                   "Write NDJSON to this file ('-' = standard output) instead of Redis");
    cmd.add_option("--pubsub-topic", topic,
                   "Publish to this Pub/Sub topic (projects/P/topics/T) instead of Redis, 1,000 "
                   "messages a call")
        ->check(shaped(pubsub::valid_topic, "projects/PROJECT/topics/NAME"));
    cmd.add_option("--pubsub-endpoint", pubsub_endpoint,
                   "The Pub/Sub API's base URL (default http://$PUBSUB_EMULATOR_HOST when that is "
                   "set, else https://pubsub.googleapis.com)")
        ->check(shaped(pubsub::valid_endpoint, "http://HOST[:PORT] or https://HOST[:PORT]"));
    cmd.add_option("--pubsub-ordering-key", ordering_key,
                   "host: each message's ordering key is its host (the subscription delivers one "
                   "host's requests in order); none: no ordering key")
        ->check(CLI::IsMember({"none", "host"}))
        ->capture_default_str();
    cmd.add_option("--tcp", tcp,
                   "Send to a worker's --source tcp at HOST:PORT instead of Redis, read every "
                   "answer and print the counts by outcome (exit 1 unless every request was "
                   "acked, skipped or dead-lettered)")
        ->check(CLI::Validator(
            [](std::string& v) {
                return v != "off" && metrics::valid_listen_address(v)
                           ? std::string{}
                           : "'" + v +
                                 "' is not valid: expected HOST:PORT with a numeric IPv4 "
                                 "host (127.0.0.1:7478)";
            },
            "HOST:PORT"));
    add_whole_number(cmd, "--connections", connections, 1, 1024,
                     "With --tcp: connections to spread the requests over");
    cmd.add_flag("--retry", retry,
                 "With --tcp: send again what is answered retried (after its retry_after_ms) or "
                 "released, or left unanswered by a connection that closed (connecting again)");
    std::string credentials = "auto";
    add_pubsub_credentials(cmd, credentials);
    add_auth_key_files(cmd, key_files);
    if (auto code = mayhem::parse_command(cmd, args, "mayhem publish", std::cout, std::cerr))
        return *code;
    auto loaded = load_auth_keys(key_files);
    if (auto* bad = std::get_if<std::string>(&loaded)) {
        std::cerr << "mayhem publish: --auth-key-file " << *bad << "\n";
        return exit_usage;
    }
    auto keys = std::get<std::shared_ptr<auth::key_ring>>(std::move(loaded));
    std::shared_ptr<const gcp::service_account> gcp_key;
    if (!topic.empty()) {
        auto key = load_pubsub_key(credentials, pubsub_endpoint);
        if (auto* bad = std::get_if<std::string>(&key)) {
            std::cerr << "mayhem publish: " << *bad << "\n";
            return exit_usage;
        }
        gcp_key = std::get<std::shared_ptr<const gcp::service_account>>(std::move(key));
    }
    std::string why;
    auto ep = parse_redis_url(url, &why);
    if (!ep) {
        // Never the URL itself: it may hold a password.
        std::cerr << "mayhem publish: --redis-url: not a valid URL: " << why << "\n";
        return exit_usage;
    }

    if (!tcp.empty() && (!output.empty() || !topic.empty())) {
        std::cerr << "mayhem publish: --tcp sends to a worker; it cannot be combined with "
                  << (output.empty() ? "--pubsub-topic" : "--output") << "\n";
        return exit_usage;
    }
    if (tcp.empty() && (connections != 1 || retry)) {
        std::cerr << "mayhem publish: " << (retry ? "--retry" : "--connections")
                  << " applies only with --tcp\n";
        return exit_usage;
    }
    if (!tcp.empty())
        return publish_over_tcp(tcp, connections, retry, from_stdin, raw, count, bad_ratio, seed,
                                keys);

    std::unique_ptr<sink> out;
    std::FILE* file = nullptr;
    try {
        if (output == "-") {
            out = std::make_unique<ndjson_sink>(stdout);
        } else if (!output.empty()) {
            file = std::fopen(output.c_str(), "w");
            if (!file) throw std::runtime_error("cannot open '" + output + "' for writing");
            out = std::make_unique<ndjson_sink>(file);
        } else if (!topic.empty()) {
            auto endpoint = pubsub::resolve_endpoint(pubsub_endpoint);
            out = std::make_unique<pubsub_sink>(endpoint, topic, ordering_key == "host",
                                                gcp::wants_credentials(credentials, endpoint),
                                                std::move(gcp_key));
        } else {
            out = std::make_unique<redis_sink>(*ep, stream);
        }
    } catch (const std::exception& e) {
        std::cerr << "mayhem publish: " << e.what() << "\n";
        return exit_fatal;
    }

    // Each request that is a JSON object is signed as it is sent (issued now); the rest (--raw
    // lines, --bad-ratio payloads) go as they are.
    auto add = [&](std::string_view payload) {
        if (keys)
            if (auto signed_payload =
                    auth::sign_request(payload, *keys, std::chrono::system_clock::now()))
                return out->add(*signed_payload);
        out->add(payload);
    };
    std::uint64_t added = 0, rejected = 0;
    try {
        if (from_stdin) {
            decode_options dopts;
            std::string line;
            std::uint64_t lineno = 0;
            while (std::getline(std::cin, line)) {
                ++lineno;
                if (!line.empty() && line.back() == '\r') line.pop_back();
                if (line.find_first_not_of(" \t") == std::string::npos) continue;
                if (!raw) {
                    auto d = decode(line, dopts);
                    if (auto* bad = std::get_if<decode_error>(&d)) {
                        std::cerr << "mayhem publish: line " << lineno
                                  << " not sent: " << bad->reason << "\n";
                        ++rejected;
                        continue;
                    }
                }
                if (raw)
                    out->add(line);
                else
                    add(line);
                ++added;
            }
        } else {
            rt::loop loop;
            simulate_options o;
            o.seed = seed;
            simulate_source gen(loop, o);
            std::mt19937_64 rng(seed ? seed : std::random_device{}());
            std::uniform_real_distribution<double> coin(0, 1);
            std::string payload;
            for (std::uint64_t i = 0; i < count; ++i) {
                if (bad_ratio > 0 && coin(rng) < bad_ratio)
                    gen.format_bad(payload, i);
                else
                    gen.format_message(payload, i);
                add(payload);
                ++added;
            }
            gen.close();
        }
        out->flush();
    } catch (const std::exception& e) {
        std::cerr << "mayhem publish: " << e.what() << "\n";
        if (file) std::fclose(file);
        return exit_fatal;
    }
    if (file && std::fclose(file) != 0) {
        std::cerr << "mayhem publish: cannot write '" << output << "'\n";
        return exit_fatal;
    }
    // The summary goes to stderr when stdout carries the NDJSON itself.
    std::FILE* report = output == "-" ? stderr : stdout;
    std::string target = output == "-"     ? std::string("stdout")
                         : !output.empty() ? output
                         : !topic.empty()  ? topic
                                           : ep->shown() + " " + stream;
    std::fprintf(report, "{\"sent\":%llu,\"rejected\":%llu,\"target\":\"%s\"}\n",
                 static_cast<unsigned long long>(added), static_cast<unsigned long long>(rejected),
                 target.c_str());
    std::fflush(report);
    return rejected > 0 ? exit_fatal : 0;
}

} // namespace mayhem
