#include "sources/tcp_source.hpp"

#include "message/message.hpp"
#include "runtime/duration.hpp"
#include "runtime/log.hpp"

#include <charconv>
#include <netinet/in.h>
#include <optional>

namespace mayhem {

namespace {
constexpr std::size_t read_size = 64 * 1024;
constexpr int listen_backlog = 511;

bool blank(std::string_view s) {
    for (char c : s)
        if (c != ' ' && c != '\t' && c != '\r') return false;
    return true;
}

// "<connection serial>:<line>", the delivery's ref: names it in the pipeline's log lines, and
// gives settle() the line number back.
std::string make_ref(std::uint64_t serial, std::uint64_t line) {
    char buf[48];
    auto* p = std::to_chars(buf, buf + 20, serial).ptr;
    *p++ = ':';
    p = std::to_chars(p, buf + sizeof buf, line).ptr;
    return std::string(buf, p);
}

std::uint64_t line_of(std::string_view ref) {
    std::uint64_t line = 0;
    auto colon = ref.find(':');
    if (colon != std::string_view::npos)
        std::from_chars(ref.data() + colon + 1, ref.data() + ref.size(), line);
    return line;
}

void append_escaped(std::string& out, std::string_view s) {
    if (log::needs_escape(s))
        log::json_escape(out, s);
    else
        out.append(s);
}
} // namespace

std::string_view to_string(tcp_close_cause c) noexcept {
    switch (c) {
    case tcp_close_cause::peer:
        return "peer";
    case tcp_close_cause::idle:
        return "idle";
    case tcp_close_cause::answer_queue_full:
        return "answer_queue_full";
    case tcp_close_cause::error:
        return "error";
    case tcp_close_cause::stop:
        return "stop";
    }
    return "?";
}

std::string_view tcp_source::to_string(conn_state s) noexcept {
    switch (s) {
    case conn_state::reading:
        return "reading";
    case conn_state::held:
        return "held";
    case conn_state::finishing:
        return "finishing";
    case conn_state::shutting_down:
        return "shutting_down";
    case conn_state::closed:
        return "closed";
    }
    return "?";
}

// ---------------------------------------------------------------------------------------------
// One producer's connection. The object lives in conns_ until it closes; libuv's handle points
// back to it through data, which uv_handle::close() clears, so a callback that arrives after
// (a write cancelled by the close) finds nothing and only frees its request. Its timer entry is
// the idle timeout.
// ---------------------------------------------------------------------------------------------

struct tcp_source::connection final : rt::timer_entry {
    struct line {
        std::string payload;
        std::uint64_t number;
    };

    tcp_source& src;
    std::uint64_t serial;
    rt::uv_handle<uv_tcp_t> tcp;
    bool refused; // over --max-connections: one error line, then closed
    conn_state state = conn_state::finishing;
    rt::owned_node<connection> held_node{this}; // in src.held_ while `ready` waits for demand
    std::string partial;                        // the line being assembled
    bool skipping = false;                      // inside an over-long line, until its newline
    std::uint64_t lines = 0;                    // lines numbered so far (blank ones too)
    std::deque<line> ready; // read, not delivered yet (at most one read's worth)
    std::size_t owed = 0;   // delivered, not answered yet
    std::string out;        // answers not handed to libuv yet
    bool flush_queued = false;
    std::uint64_t last_active_ms = 0; // last read, or last write that completed

    connection(tcp_source& s, std::uint64_t n, rt::uv_handle<uv_tcp_t> h, bool over)
        : src(s), serial(n), tcp(std::move(h)), refused(over) {
        tcp->data = this;
        last_active_ms = src.loop_.now();
    }
    uv_stream_t* stream() const noexcept { return reinterpret_cast<uv_stream_t*>(tcp.get()); }
    void fire() noexcept override { src.idle_check(*this); }
};

struct tcp_source::write_req {
    uv_write_t req{};
    std::string buf;
};

class tcp_source::turn_entry final : public rt::timer_entry {
public:
    explicit turn_entry(tcp_source& s) : src_(s) {}
    void fire() noexcept override { src_.turn(); }

private:
    tcp_source& src_;
};

class tcp_source::flush_entry final : public rt::timer_entry {
public:
    explicit flush_entry(tcp_source& s) : src_(s) {}
    void fire() noexcept override { src_.flush_all(); }

private:
    tcp_source& src_;
};

// ---------------------------------------------------------------------------------------------
// Listening and accepting
// ---------------------------------------------------------------------------------------------

tcp_source::tcp_source(rt::loop& loop, tcp_source_options opts)
    : loop_(loop), opts_(std::move(opts)), turn_(std::make_unique<turn_entry>(*this)),
      flush_(std::make_unique<flush_entry>(*this)), read_buf_(read_size) {
    auto colon = opts_.listen.rfind(':');
    std::string host = opts_.listen.substr(0, colon);
    int port = colon == std::string::npos ? 0 : std::atoi(opts_.listen.c_str() + colon + 1);
    sockaddr_in addr{};
    if (colon == std::string::npos || uv_ip4_addr(host.c_str(), port, &addr) != 0)
        throw tcp_listen_error("cannot listen on " + opts_.listen +
                               ": expected HOST:PORT with a numeric IPv4 host");
    listener_ = rt::uv_handle<uv_tcp_t>([&](uv_tcp_t* t) { return uv_tcp_init(loop.get(), t); },
                                        "uv_tcp_init");
    listener_->data = this;
    int rc = uv_tcp_bind(listener_.get(), reinterpret_cast<const sockaddr*>(&addr), 0);
    if (rc == 0)
        rc = uv_listen(reinterpret_cast<uv_stream_t*>(listener_.get()), listen_backlog,
                       &tcp_source::on_connection);
    if (rc < 0) {
        listener_.close();
        throw tcp_listen_error("cannot listen on " + opts_.listen + ": " + uv_strerror(rc));
    }
    sockaddr_storage bound{};
    int len = sizeof bound;
    if (uv_tcp_getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&bound), &len) == 0)
        port_ = ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
}

tcp_source::~tcp_source() {
    close();
}

void tcp_source::start(source_sink& sink) {
    sink_ = &sink;
    log::info("tcp: listening", {{"address", opts_.listen}, {"port", port_}});
}

void tcp_source::on_connection(uv_stream_t* server, int status) noexcept {
    auto* self = static_cast<tcp_source*>(server->data);
    if (!self) return;
    if (status < 0) {
        if (self->conn_log_.allow(self->loop_.now()))
            log::warn("tcp: accepting a connection failed", {{"error", uv_strerror(status)}});
        return;
    }
    self->accept_one();
}

void tcp_source::accept_one() {
    rt::uv_handle<uv_tcp_t> tcp([&](uv_tcp_t* t) { return uv_tcp_init(loop_.get(), t); },
                                "uv_tcp_init");
    int rc = uv_accept(reinterpret_cast<uv_stream_t*>(listener_.get()),
                       reinterpret_cast<uv_stream_t*>(tcp.get()));
    if (rc < 0) return;           // tcp closes with its handle
    uv_tcp_nodelay(tcp.get(), 1); // answers are batched per loop turn already
    std::size_t open = conns_.size() - refusing_;
    if (open >= opts_.max_connections) return refuse(std::move(tcp));
    stats_.accepted.inc();
    auto serial = ++next_serial_;
    auto owned = std::make_unique<connection>(*this, serial, std::move(tcp), false);
    connection& c = *owned;
    conns_.emplace(serial, std::move(owned));
    stats_.connections.set(static_cast<std::int64_t>(open + 1));
    if (opts_.idle_timeout.count() > 0) loop_.timers().arm(c, opts_.idle_timeout);
    enter(c, conn_state::reading); // may drop c
}

// One connection too many is not left hanging in the backlog: it hears why, then is closed.
void tcp_source::refuse(rt::uv_handle<uv_tcp_t> tcp) {
    stats_.refused.inc();
    if (conn_log_.allow(loop_.now()))
        log::warn("tcp: connection refused: --max-connections reached",
                  {{"max_connections", opts_.max_connections}});
    auto serial = ++next_serial_;
    auto owned = std::make_unique<connection>(*this, serial, std::move(tcp), true);
    connection& c = *owned;
    conns_.emplace(serial, std::move(owned));
    ++refusing_;
    c.out = R"({"message_id":null,"outcome":"refused","error":"too many connections: )"
            R"(--max-connections )" +
            std::to_string(opts_.max_connections) + "\"}\n";
    queue_flush(c); // state finishing: the flush shuts it down once written
}

// ---------------------------------------------------------------------------------------------
// Reading: lines, demand and backpressure
// ---------------------------------------------------------------------------------------------

void tcp_source::on_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf) noexcept {
    auto* c = static_cast<connection*>(h->data);
    if (!c) {
        *buf = uv_buf_init(nullptr, 0);
        return;
    }
    auto& b = c->src.read_buf_;
    *buf = uv_buf_init(b.data(), static_cast<unsigned>(b.size()));
}

void tcp_source::on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) noexcept {
    auto* c = static_cast<connection*>(s->data);
    if (!c || n == 0) return;
    tcp_source& self = c->src;
    c->last_active_ms = self.loop_.now();
    if (n > 0) {
        self.take(*c, std::string_view(buf->base, static_cast<std::size_t>(n)));
        if (!c->ready.empty() && c->state == conn_state::reading) {
            self.held_.push_back(c->held_node);
            self.enter(*c, conn_state::held);
        }
        return;
    }
    if (n != UV_EOF) {
        // A reset or read error: nobody is left to answer; work already taken goes on.
        if (self.conn_log_.allow(self.loop_.now()))
            log::info("tcp: connection lost",
                      {{"connection", c->serial}, {"error", uv_strerror(static_cast<int>(n))}});
        return self.drop(*c, n == UV_ECONNRESET ? tcp_close_cause::peer : tcp_close_cause::error);
    }
    // The producer is done writing (it may still read): its last line need not end in a
    // newline. It is answered, then the connection is shut down.
    if (!c->partial.empty() && !c->skipping) {
        std::string last = std::move(c->partial);
        self.push_line(*c, last);
    }
    c->partial.clear();
    if (!c->ready.empty()) self.held_.push_back(c->held_node);
    self.enter(*c, conn_state::finishing);
    self.queue_flush(*c);
}

void tcp_source::take(connection& c, std::string_view chunk) {
    const std::size_t max = opts_.max_line_bytes;
    while (!chunk.empty()) {
        auto nl = chunk.find('\n');
        std::string_view piece = chunk.substr(0, nl);
        if (nl != std::string_view::npos && !c.skipping && c.partial.empty() &&
            piece.size() <= max) {
            push_line(c, piece); // the common case: a whole line inside this read
        } else if (!c.skipping) {
            c.partial.append(piece);
            if (c.partial.size() > max) {
                // One byte more than allowed: enough for the decoder to call it too large. The
                // answer comes from the pipeline like any decode error; the rest of the line,
                // up to its newline, is skipped.
                c.partial.resize(max + 1);
                push_line(c, c.partial);
                c.partial.clear();
                c.skipping = true;
            } else if (nl != std::string_view::npos) {
                push_line(c, c.partial);
                c.partial.clear();
            }
        }
        if (nl == std::string_view::npos) break;
        c.skipping = false;
        chunk.remove_prefix(nl + 1);
    }
}

// Numbers the line and delivers it if there is demand and nobody waits before it; otherwise it
// waits in `ready`.
void tcp_source::push_line(connection& c, std::string_view line) {
    std::uint64_t number = ++c.lines;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (blank(line)) return;
    if (demand_ == 0 || !c.ready.empty() || !held_.empty() || stopped_) {
        c.ready.push_back(connection::line{std::string(line), number});
        return;
    }
    delivery d;
    d.payload.assign(line);
    d.ref = make_ref(c.serial, number);
    d.tag = c.serial;
    --demand_;
    ++outstanding_;
    ++c.owed;
    sink_->deliver(std::move(d)); // may settle at once: settle() only queues the answer
}

void tcp_source::request(std::size_t n) {
    demand_ += n;
    // Never from inside the pipeline's call: the held lines go out on the next loop turn.
    if (!held_.empty() && !turn_->armed() && !closed_) loop_.timers().arm(*turn_, rt::millis{0});
}

// Delivers the lines held back, connection by connection in the order they were held, and lets
// each connection whose lines are all out read again.
void tcp_source::turn() {
    while (demand_ > 0 && !held_.empty()) {
        auto* c = static_cast<rt::owned_node<connection>*>(held_.front())->owner;
        while (demand_ > 0 && !c->ready.empty()) {
            connection::line l = std::move(c->ready.front());
            c->ready.pop_front();
            delivery d;
            d.payload = std::move(l.payload);
            d.ref = make_ref(c->serial, l.number);
            d.tag = c->serial;
            --demand_;
            ++outstanding_;
            ++c->owed;
            sink_->deliver(std::move(d));
        }
        if (!c->ready.empty()) break;
        c->held_node.unlink();
        if (c->state == conn_state::held && !stopped_)
            enter(*c, conn_state::reading);
        else if (c->state == conn_state::finishing)
            queue_flush(*c);
    }
}

// ---------------------------------------------------------------------------------------------
// Answering
// ---------------------------------------------------------------------------------------------

void tcp_source::settle(delivery d, const verdict& v) {
    --outstanding_;
    auto it = conns_.find(d.tag);
    if (it == conns_.end()) {
        stats_.answers_lost.inc(); // its producer left; the work itself was done
    } else {
        connection& c = *it->second;
        --c.owed;
        std::string_view id = v.message_id;
        std::optional<decoded> fallback;
        if (id.empty() && v.what == outcome::released) {
            // Released before it was decoded (queued at a stop): name it if it has an id.
            fallback.emplace(decode(d.payload, decode_options{}));
            if (auto* m = std::get_if<message>(&*fallback)) id = m->message_id();
        }
        answer(c, id, line_of(d.ref), v);
    }
    sink_->settled(v.what);
}

// {"message_id":"m1","outcome":"acked"}, or for a line that did not decode
// {"message_id":null,"line":7,"outcome":"dead_lettered","error":"..."}.
void tcp_source::answer(connection& c, std::string_view message_id, std::uint64_t line,
                        const verdict& v) {
    std::string& out = c.out;
    out += R"({"message_id":)";
    if (message_id.empty()) {
        char buf[24];
        auto* end = std::to_chars(buf, buf + sizeof buf, line).ptr;
        out += R"(null,"line":)";
        out.append(buf, end);
    } else {
        out += '"';
        append_escaped(out, message_id);
        out += '"';
    }
    out += R"(,"outcome":")";
    out += mayhem::to_string(v.what);
    out += '"';
    if (v.what == outcome::retried || v.what == outcome::dead_lettered ||
        v.what == outcome::released) {
        out += R"(,"error":")";
        append_escaped(out, v.reason);
        out += '"';
    }
    if (v.what == outcome::retried) {
        char buf[24];
        auto* end = std::to_chars(buf, buf + sizeof buf, v.retry_after.count()).ptr;
        out += R"(,"retry_after_ms":)";
        out.append(buf, end);
    }
    out += "}\n";
    queue_flush(c);
}

// Answers go out once per loop turn, all of a connection's in one write.
void tcp_source::queue_flush(connection& c) {
    if (c.flush_queued || closed_) return;
    c.flush_queued = true;
    to_flush_.push_back(c.serial);
    if (!flush_->armed()) loop_.timers().arm(*flush_, rt::millis{0});
}

void tcp_source::flush_all() {
    std::vector<std::uint64_t> serials;
    serials.swap(to_flush_);
    for (auto serial : serials) {
        auto it = conns_.find(serial);
        if (it == conns_.end()) continue;
        connection& c = *it->second;
        c.flush_queued = false;
        flush(c); // may drop c
        it = conns_.find(serial);
        if (it != conns_.end()) maybe_finish(*it->second);
    }
    to_flush_.reserve(serials.capacity());
}

void tcp_source::flush(connection& c) {
    if (c.out.empty() || c.state == conn_state::closed) return;
    auto* w = new write_req;
    w->buf.swap(c.out);
    w->req.data = w;
    uv_buf_t b = uv_buf_init(w->buf.data(), static_cast<unsigned>(w->buf.size()));
    int rc = uv_write(&w->req, c.stream(), &b, 1, &tcp_source::on_written);
    if (rc < 0) {
        delete w;
        return drop(c, tcp_close_cause::error);
    }
    // What the kernel would not take waits in libuv's queue; a producer that does not read its
    // answers makes it grow, and is cut off at the cap rather than hold memory without bound.
    if (uv_stream_get_write_queue_size(c.stream()) > opts_.max_answer_bytes) {
        if (conn_log_.allow(loop_.now()))
            log::warn("tcp: producer does not read its answers: connection closed",
                      {{"connection", c.serial},
                       {"queued_bytes", uv_stream_get_write_queue_size(c.stream())},
                       {"max_answer_bytes", opts_.max_answer_bytes}});
        drop(c, tcp_close_cause::answer_queue_full);
    }
}

void tcp_source::on_written(uv_write_t* req, int status) noexcept {
    std::unique_ptr<write_req> w(static_cast<write_req*>(req->data));
    auto* c = static_cast<connection*>(req->handle->data);
    if (!c) return; // closed meanwhile
    if (status < 0) {
        if (c->src.conn_log_.allow(c->src.loop_.now()))
            log::info("tcp: writing answers failed",
                      {{"connection", c->serial}, {"error", uv_strerror(status)}});
        return c->src.drop(*c, tcp_close_cause::error);
    }
    c->last_active_ms = c->src.loop_.now();
}

// A connection whose input ended (or the source stopped) closes once every line it sent is
// answered: the answers are written, then FIN, then the handle is closed.
void tcp_source::maybe_finish(connection& c) {
    if (c.state != conn_state::finishing || c.owed > 0 || !c.ready.empty() || !c.out.empty())
        return;
    auto* req = new uv_shutdown_t{};
    int rc = uv_shutdown(req, c.stream(), &tcp_source::on_shutdown);
    if (rc < 0) {
        delete req;
        return drop(c, tcp_close_cause::peer);
    }
    enter(c, conn_state::shutting_down);
}

void tcp_source::on_shutdown(uv_shutdown_t* req, int) noexcept {
    auto* c = static_cast<connection*>(req->handle->data);
    delete req;
    if (!c) return;
    c->src.drop(*c, c->src.stopped_ && !c->refused ? tcp_close_cause::stop : tcp_close_cause::peer);
}

// ---------------------------------------------------------------------------------------------
// Connection states
// ---------------------------------------------------------------------------------------------

void tcp_source::enter(connection& c, conn_state next) {
    conn_state was = c.state;
    c.state = next;
    switch (next) {
    case conn_state::reading:
        if (int rc = uv_read_start(c.stream(), &tcp_source::on_alloc, &tcp_source::on_read); rc < 0)
            return drop(c, tcp_close_cause::error);
        break;
    case conn_state::held:
    case conn_state::finishing:
        if (was == conn_state::reading || was == conn_state::held) uv_read_stop(c.stream());
        break;
    case conn_state::shutting_down:
    case conn_state::closed:
        break;
    }
    if (log::enabled(spdlog::level::debug))
        log::debug("tcp: connection state",
                   {{"connection", c.serial}, {"from", to_string(was)}, {"to", to_string(next)}});
}

// Idle: nothing received, no write completed and nothing owed for --tcp-idle-timeout.
void tcp_source::idle_check(connection& c) {
    auto now = loop_.now();
    auto quiet = static_cast<std::int64_t>(now - c.last_active_ms);
    auto limit = opts_.idle_timeout.count();
    if (c.owed > 0 || quiet < limit) {
        loop_.timers().arm(c, rt::millis{c.owed > 0 ? limit : limit - quiet});
        return;
    }
    if (conn_log_.allow(now))
        log::info(
            "tcp: idle connection closed",
            {{"connection", c.serial}, {"idle_timeout", format_duration(opts_.idle_timeout)}});
    drop(c, tcp_close_cause::idle);
}

// Closes the connection now. What it owes is still carried out; the answers are lost.
void tcp_source::drop(connection& c, tcp_close_cause why) {
    if (!c.refused) stats_.disconnects[static_cast<std::size_t>(why)].inc();
    enter(c, conn_state::closed);
    forget(c);
}

void tcp_source::forget(connection& c) {
    bool refused = c.refused;
    c.held_node.unlink();
    c.tcp.close();
    conns_.erase(c.serial); // destroys c, disarming its idle timer
    if (refused) --refusing_;
    stats_.connections.set(static_cast<std::int64_t>(conns_.size() - refusing_));
    if (stopped_ && sink_) sink_->source_changed();
}

// ---------------------------------------------------------------------------------------------
// The stop
// ---------------------------------------------------------------------------------------------

void tcp_source::stop() {
    if (stopped_) return;
    stopped_ = true;
    listener_.close(); // new connections are refused from now on
    log::info("tcp: listener closed; answering what was read",
              {{"connections", conns_.size() - refusing_}, {"in_flight", outstanding_}});
    // Lines read and not yet delivered go to the pipeline now, which releases them at once
    // (its intake has stopped): they are counted, and answered `released`.
    std::vector<std::uint64_t> serials;
    serials.reserve(conns_.size());
    for (auto& [serial, c] : conns_)
        serials.push_back(serial);
    for (auto serial : serials) {
        auto it = conns_.find(serial);
        if (it == conns_.end()) continue;
        connection& c = *it->second;
        if (c.state == conn_state::reading || c.state == conn_state::held)
            enter(c, conn_state::finishing);
        c.partial.clear();
        c.held_node.unlink();
        while (!c.ready.empty()) {
            connection::line l = std::move(c.ready.front());
            c.ready.pop_front();
            delivery d;
            d.payload = std::move(l.payload);
            d.ref = make_ref(c.serial, l.number);
            d.tag = c.serial;
            ++outstanding_;
            ++c.owed;
            sink_->deliver(std::move(d));
        }
        queue_flush(c);
    }
    turn_->cancel();
}

bool tcp_source::drained() const {
    return stopped_ && conns_.empty();
}

bool tcp_source::finished() const {
    return drained() && outstanding_ == 0;
}

void tcp_source::force_stop() {
    // Nothing to confirm with a transport: what is owed is answered as it settles, and close()
    // closes what is still open.
}

void tcp_source::close() {
    if (closed_) return;
    closed_ = stopped_ = true;
    turn_->cancel();
    flush_->cancel();
    listener_.close();
    for (auto& [serial, c] : conns_) {
        // A last try at answers still queued (a forced stop): what the socket takes now.
        if (!c->out.empty() && c->state != conn_state::closed) {
            uv_buf_t b = uv_buf_init(c->out.data(), static_cast<unsigned>(c->out.size()));
            uv_try_write(c->stream(), &b, 1);
        }
        if (!c->refused && c->state != conn_state::closed)
            stats_.disconnects[static_cast<std::size_t>(tcp_close_cause::stop)].inc();
        c->held_node.unlink();
        c->tcp.close();
    }
    conns_.clear();
    refusing_ = 0;
    stats_.connections.set(0);
}

} // namespace mayhem
