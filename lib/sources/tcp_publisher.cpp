#include "sources/tcp_publisher.hpp"

#include "message/message.hpp"
#include "runtime/loop.hpp"

#include <deque>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mayhem {

namespace {

constexpr std::size_t batch_bytes = 256 * 1024;
constexpr std::size_t read_size = 64 * 1024;
constexpr rt::millis reconnect_delay{200};
constexpr rt::millis released_delay{500};

// The outcome word of an answer: the string value of its "outcome" key. `"outcome"` followed by
// a colon cannot occur inside an escaped string value, so a plain search finds the key; JSON
// whitespace around the colon is allowed (other servers speaking the protocol write it).
std::string_view outcome_word(std::string_view line) {
    constexpr std::string_view key = R"("outcome")";
    auto skip = [&](std::size_t i) {
        while (i < line.size() && (line[i] == ' ' || line[i] == '\t'))
            ++i;
        return i;
    };
    for (auto at = line.find(key); at != std::string_view::npos; at = line.find(key, at + 1)) {
        auto i = skip(at + key.size());
        if (i >= line.size() || line[i] != ':') continue;
        i = skip(i + 1);
        if (i >= line.size() || line[i] != '"') return {};
        auto to = line.find('"', i + 1);
        return to == std::string_view::npos ? std::string_view{} : line.substr(i + 1, to - i - 1);
    }
    return {};
}

std::optional<outcome> parse_outcome(std::string_view w) {
    for (int i = 0; i < outcome_count; ++i)
        if (to_string(static_cast<outcome>(i)) == w) return static_cast<outcome>(i);
    return std::nullopt;
}

bool final_outcome(outcome o) {
    return o == outcome::acked || o == outcome::skipped || o == outcome::dead_lettered;
}

class publisher {
public:
    publisher(const tcp_publish_options& o, const std::function<bool(std::string&)>& next)
        : opts_(o), next_(next), wake_([this] { wake(); }) {
        auto colon = o.address.rfind(':');
        std::string host = o.address.substr(0, colon);
        int port = colon == std::string::npos ? 0 : std::atoi(o.address.c_str() + colon + 1);
        if (colon == std::string::npos || uv_ip4_addr(host.c_str(), port, &addr_) != 0)
            throw std::runtime_error("--tcp: expected HOST:PORT with a numeric IPv4 host, got '" +
                                     o.address + "'");
    }

    tcp_publish_result run() {
        for (std::size_t i = 0; i < std::max<std::size_t>(1, opts_.connections); ++i)
            open();
        loop_.run();
        for (auto& c : conns_)
            if (c) c->tcp.close();
        wake_.cancel();
        return std::move(r_);
    }

private:
    struct conn {
        publisher& p;
        rt::uv_handle<uv_tcp_t> tcp;
        uv_connect_t connect{};
        bool connected = false, writing = false, closed = false;
        std::uint64_t sent = 0, answered = 0, lines = 0;
        std::string partial;
        std::string batch;
        uv_write_t write{};
        // With retry: what was sent and not answered yet, by message id ("#<line>" for a line
        // without one), so a retried or released answer can be sent again.
        std::unordered_multimap<std::string, std::string> pending;
        explicit conn(publisher& owner) : p(owner) {}
        uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(tcp.get()); }
    };

    void open() {
        auto c = std::make_unique<conn>(*this);
        c->tcp = rt::uv_handle<uv_tcp_t>([&](uv_tcp_t* t) { return uv_tcp_init(loop_.get(), t); },
                                         "uv_tcp_init");
        c->tcp->data = c.get();
        c->connect.data = c.get();
        int rc = uv_tcp_connect(&c->connect, c->tcp.get(), reinterpret_cast<sockaddr*>(&addr_),
                                &publisher::on_connect);
        if (rc < 0) {
            r_.error = std::string("cannot connect: ") + uv_strerror(rc);
            c->tcp.close();
            ++failures_;
            after_close();
            return;
        }
        conns_.push_back(std::move(c));
    }

    static void on_connect(uv_connect_t* req, int status) noexcept {
        auto* c = static_cast<conn*>(req->data);
        if (!c->tcp) return;
        auto& p = c->p;
        if (status < 0) {
            p.r_.error =
                std::string("cannot connect to ") + p.opts_.address + ": " + uv_strerror(status);
            ++p.failures_;
            return p.lost(*c);
        }
        c->connected = true;
        uv_tcp_nodelay(c->tcp.get(), 1);
        uv_read_start(
            c->stream(),
            [](uv_handle_t* h, std::size_t, uv_buf_t* b) {
                auto* me = static_cast<conn*>(h->data);
                auto& buf = me->p.read_buf_;
                *b = uv_buf_init(buf.data(), static_cast<unsigned>(buf.size()));
            },
            &publisher::on_read);
        p.fill(*c);
    }

    // Sends the next batch while the connection has room in its window.
    void fill(conn& c) {
        if (c.writing || c.closed || !c.connected) return;
        c.batch.clear();
        std::string payload;
        while (c.sent - c.answered < opts_.window && c.batch.size() < batch_bytes) {
            if (!resend_.empty()) {
                payload = std::move(resend_.front());
                resend_.pop_front();
            } else if (!input_done_ && next_(payload)) {
                ++r_.requests;
            } else {
                input_done_ = true;
                break;
            }
            c.batch += payload;
            c.batch += '\n';
            ++c.lines;
            ++c.sent;
            ++r_.sent;
            if (opts_.retry) {
                auto d = decode(payload, decode_options{});
                auto* m = std::get_if<message>(&d);
                std::string key = m ? std::string(m->message_id()) : "#" + std::to_string(c.lines);
                c.pending.emplace(std::move(key), std::move(payload));
            }
        }
        if (c.batch.empty()) return check_finished();
        c.writing = true;
        c.write.data = &c;
        uv_buf_t b = uv_buf_init(c.batch.data(), static_cast<unsigned>(c.batch.size()));
        if (uv_write(&c.write, c.stream(), &b, 1, &publisher::on_written) < 0) {
            c.writing = false;
            lost(c);
        }
    }

    static void on_written(uv_write_t* req, int status) noexcept {
        auto* c = static_cast<conn*>(req->data);
        c->writing = false;
        if (!c->tcp) return;
        if (status < 0) {
            c->p.r_.error = std::string("writing failed: ") + uv_strerror(status);
            return c->p.lost(*c);
        }
        c->p.fill(*c);
    }

    static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) noexcept {
        auto* c = static_cast<conn*>(s->data);
        if (!c || n == 0) return;
        auto& p = c->p;
        if (n < 0) {
            if (n != UV_EOF)
                p.r_.error = std::string("reading failed: ") + uv_strerror(static_cast<int>(n));
            return p.lost(*c);
        }
        std::string_view chunk(buf->base, static_cast<std::size_t>(n));
        while (!chunk.empty()) {
            auto nl = chunk.find('\n');
            if (nl == std::string_view::npos) {
                c->partial.append(chunk);
                break;
            }
            if (c->partial.empty()) {
                p.answer(*c, chunk.substr(0, nl));
            } else {
                c->partial.append(chunk.substr(0, nl));
                std::string line = std::move(c->partial);
                c->partial.clear();
                p.answer(*c, line);
            }
            chunk.remove_prefix(nl + 1);
        }
        p.fill(*c);
    }

    void answer(conn& c, std::string_view line) {
        auto word = outcome_word(line);
        auto o = parse_outcome(word);
        if (!o) {
            if (word == "refused") {
                ++r_.refused;
                ++failures_; // counts like a failed connect: --retry does not loop on it
                r_.error = "the worker refused the connection (--max-connections)";
            }
            return;
        }
        failures_ = 0; // a worker that answers: connecting again is worth it
        ++c.answered;
        ++r_.answers[static_cast<std::size_t>(*o)];
        if (final_outcome(*o)) ++r_.done;
        if (!opts_.retry) return;
        auto j = nlohmann::json::parse(line, nullptr, false);
        std::string key;
        if (j.is_object() && j.contains("message_id") && j["message_id"].is_string())
            key = j["message_id"].get<std::string>();
        else if (j.is_object() && j.contains("line") && j["line"].is_number_unsigned())
            key = "#" + std::to_string(j["line"].get<std::uint64_t>());
        auto it = c.pending.find(key);
        if (it == c.pending.end()) return;
        std::string payload = std::move(it->second);
        c.pending.erase(it);
        if (final_outcome(*o)) return;
        rt::millis delay = released_delay;
        if (*o == outcome::retried && j.contains("retry_after_ms") &&
            j["retry_after_ms"].is_number_unsigned())
            delay = rt::millis{j["retry_after_ms"].get<std::int64_t>()};
        later_.emplace(loop_.now() + static_cast<std::uint64_t>(delay.count()), std::move(payload));
        arm_wake();
    }

    // The connection ended: what it did not get answered is lost, or sent again with retry.
    void lost(conn& c) {
        if (c.closed) return;
        c.closed = true;
        r_.unanswered += c.sent - c.answered;
        c.sent = c.answered;
        for (auto& [key, payload] : c.pending)
            resend_.push_back(std::move(payload));
        c.pending.clear();
        c.tcp.close();
        after_close();
    }

    void after_close() {
        bool work_left = !input_done_ || !resend_.empty() || !later_.empty();
        if (opts_.retry && work_left && failures_ < opts_.max_connect_failures) {
            ++reopen_;
            arm_wake(reconnect_delay);
            return;
        }
        check_finished();
    }

    void arm_wake(rt::millis at_most = rt::millis{60'000}) {
        rt::millis delay = at_most;
        if (!later_.empty()) {
            auto due = later_.begin()->first;
            auto now = loop_.now();
            delay =
                std::min(delay, rt::millis{due > now ? static_cast<std::int64_t>(due - now) : 0});
        }
        loop_.timers().arm(wake_, delay);
    }

    void wake() {
        auto now = loop_.now();
        while (!later_.empty() && later_.begin()->first <= now) {
            resend_.push_back(std::move(later_.begin()->second));
            later_.erase(later_.begin());
        }
        // open() may ask for another reopen (a connect that fails at once): that one waits.
        for (auto n = std::exchange(reopen_, 0); n > 0; --n)
            open();
        for (auto& c : conns_)
            if (c && !c->closed) fill(*c);
        if (!later_.empty()) arm_wake();
        check_finished();
    }

    // Done when nothing is left to send and every open connection has all its answers; given
    // up when something is left and no connection is open or can be opened again.
    void check_finished() {
        bool any_open = false, owed = false;
        for (auto& c : conns_)
            if (c && !c->closed) {
                any_open = true;
                owed = owed || c->sent > c->answered;
            }
        bool to_send = !input_done_ || !resend_.empty() || !later_.empty() || reopen_ > 0;
        bool can_reopen = opts_.retry && failures_ < opts_.max_connect_failures;
        if (to_send && (any_open || can_reopen)) return;
        if (!to_send && owed) return;
        r_.gave_up = to_send;
        for (auto& c : conns_)
            if (c && !c->closed) {
                c->closed = true;
                c->tcp.close();
            }
        wake_.cancel();
    }

    const tcp_publish_options& opts_;
    const std::function<bool(std::string&)>& next_;
    rt::loop loop_;
    sockaddr_in addr_{};
    std::vector<std::unique_ptr<conn>> conns_;
    std::deque<std::string> resend_;
    std::multimap<std::uint64_t, std::string> later_; // loop time (ms) -> payload
    rt::delayed_call wake_;
    std::vector<char> read_buf_ = std::vector<char>(read_size);
    std::size_t reopen_ = 0;
    int failures_ = 0;
    bool input_done_ = false;
    tcp_publish_result r_;
};

} // namespace

tcp_publish_result publish_tcp(const tcp_publish_options& opts,
                               const std::function<bool(std::string&)>& next) {
    publisher p(opts, next);
    return p.run();
}

} // namespace mayhem
