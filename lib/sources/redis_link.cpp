#include "sources/redis_link.hpp"

#include "runtime/duration.hpp"
#include "runtime/log.hpp"
#include "sources/redis_reply.hpp"

#include <arpa/inet.h>
#include <cstring>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <random>

namespace mayhem {

namespace {
constexpr rt::millis backoff_base{100};
constexpr rt::millis backoff_cap{5000};
constexpr rt::millis connect_timeout{5000};

bool is_numeric_address(const std::string& host) {
    unsigned char buf[sizeof(in6_addr)];
    return inet_pton(AF_INET, host.c_str(), buf) == 1 ||
           inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

bool is_auth_error(std::string_view e) {
    return e.starts_with("WRONGPASS") || e.starts_with("NOAUTH") || e.starts_with("NOPERM") ||
           e.find("invalid password") != std::string_view::npos ||
           e.find("without any password configured") != std::string_view::npos ||
           e.find("invalid username-password") != std::string_view::npos;
}
} // namespace

// ---------------------------------------------------------------------------------------------
// The event-library glue between hiredis and the loop. hiredis ships a libuv adapter, but it
// drops every poll callback whose status is an error, and libuv reports a refused or reset
// connection exactly that way (POLLERR -> UV_EBADF, poll stopped): the connect callback never
// runs and the link would hang until its timeout. This one hands errors to hiredis (which then
// finds the socket error itself) and owns its uv_poll_t through rt::uv_handle.
// ---------------------------------------------------------------------------------------------
namespace {

struct uv_events {
    redisAsyncContext* ctx;
    rt::uv_handle<uv_poll_t> poll;
    int events = 0;

    uv_events(redisAsyncContext* c, uv_loop_t* loop, int fd)
        : ctx(c),
          poll([loop, fd](uv_poll_t* h) { return uv_poll_init(loop, h, fd); }, "uv_poll_init") {
        poll->data = this;
    }
    void update() {
        if (events)
            uv_poll_start(poll.get(), events, &uv_events::on_poll);
        else
            uv_poll_stop(poll.get());
    }
    static void on_poll(uv_poll_t* h, int status, int ready) noexcept {
        auto* ev = static_cast<uv_events*>(h->data);
        if (!ev) return;
        if (status < 0) ready = ev->events; // let hiredis read the socket error
        if (ready & UV_READABLE) redisAsyncHandleRead(ev->ctx);
        ev = static_cast<uv_events*>(h->data); // null if hiredis freed the context meanwhile
        if (ev && (ready & UV_WRITABLE)) redisAsyncHandleWrite(ev->ctx);
    }
    static void add_read(void* p) {
        with(p, [](uv_events& e) { e.events |= UV_READABLE; });
    }
    static void del_read(void* p) {
        with(p, [](uv_events& e) { e.events &= ~UV_READABLE; });
    }
    static void add_write(void* p) {
        with(p, [](uv_events& e) { e.events |= UV_WRITABLE; });
    }
    static void del_write(void* p) {
        with(p, [](uv_events& e) { e.events &= ~UV_WRITABLE; });
    }
    // hiredis is done with the context: the handle closes (freed in its close callback, so the
    // uv_poll_t an on_poll above is still using stays valid) and data turns null.
    static void cleanup(void* p) { delete static_cast<uv_events*>(p); }
    template <class F>
    static void with(void* p, F f) {
        auto& e = *static_cast<uv_events*>(p);
        f(e);
        e.update();
    }
};

bool attach(redisAsyncContext* c, uv_loop_t* loop) {
    if (c->ev.data) return false;
    try {
        auto* ev = new uv_events(c, loop, c->c.fd);
        c->ev.data = ev;
        c->ev.addRead = &uv_events::add_read;
        c->ev.delRead = &uv_events::del_read;
        c->ev.addWrite = &uv_events::add_write;
        c->ev.delWrite = &uv_events::del_write;
        c->ev.cleanup = &uv_events::cleanup;
        return true;
    } catch (const std::exception&) {
        return false;
    }
}

} // namespace

// A command awaiting its reply; freed in on_reply, which hiredis calls exactly once.
struct redis_link::pending {
    redis_link* link;
    std::uint64_t gen;
    reply_fn fn;
};

// A host name being resolved on libuv's thread pool (hiredis would resolve it with a blocking
// getaddrinfo on the loop). Orphaned (link = nullptr) when the link closes first.
struct redis_link::resolve {
    uv_getaddrinfo_t req{};
    redis_link* link;
};

redis_link::redis_link(rt::loop& loop, redis_endpoint ep, std::string role, hooks h)
    : loop_(loop), ep_(std::move(ep)), role_(std::move(role)), hooks_(std::move(h)),
      retry_timer_([this] { open(); }), connect_timeout_([this] {
          if (ctx_ && !up_) drop("no answer within " + format_duration(connect_timeout), true);
      }) {}

redis_link::~redis_link() {
    close();
}

void redis_link::open() {
    if (closed_ || ctx_ || resolving_) return;
    opened_ = true;
    if (!ep_.unix_path.empty() || is_numeric_address(ep_.host)) {
        connect_to(ep_.host);
        return;
    }
    auto* r = new resolve{{}, this};
    r->req.data = r;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = uv_getaddrinfo(
        loop_.get(), &r->req,
        [](uv_getaddrinfo_t* req, int status, addrinfo* res) {
            auto* rs = static_cast<resolve*>(req->data);
            redis_link* self = rs->link;
            std::string addr;
            if (status == 0 && res) {
                char buf[INET6_ADDRSTRLEN] = {};
                const void* a = res->ai_family == AF_INET6
                                    ? static_cast<const void*>(
                                          &reinterpret_cast<sockaddr_in6*>(res->ai_addr)->sin6_addr)
                                    : static_cast<const void*>(
                                          &reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr);
                if (inet_ntop(res->ai_family, a, buf, sizeof buf)) addr = buf;
            }
            uv_freeaddrinfo(res);
            delete rs;
            if (!self) return; // the link closed meanwhile
            self->resolving_ = nullptr;
            if (addr.empty()) {
                self->drop(std::string("cannot resolve host '") + self->ep_.host +
                               "': " + (status ? uv_strerror(status) : "no address"),
                           false);
                return;
            }
            self->connect_to(addr);
        },
        ep_.host.c_str(), nullptr, &hints);
    if (rc != 0) {
        delete r;
        drop(std::string("cannot resolve host: ") + uv_strerror(rc), false);
        return;
    }
    resolving_ = r;
}

void redis_link::connect_to(const std::string& address) {
    ++gen_;
    redisAsyncContext* c = ep_.unix_path.empty() ? redisAsyncConnect(address.c_str(), ep_.port)
                                                 : redisAsyncConnectUnix(ep_.unix_path.c_str());
    if (!c) {
        drop("out of memory", false);
        return;
    }
    if (c->err) {
        std::string why = c->errstr;
        redisAsyncFree(c);
        drop(why, false);
        return;
    }
    c->data = this;
    c->c.reader->fn = pooled_replies(); // before any reply: no malloc per reply object
    if (!attach(c, loop_.get())) {
        redisAsyncFree(c);
        drop("cannot attach to the event loop", false);
        return;
    }
    redisAsyncSetConnectCallback(c, &redis_link::on_connect);
    redisAsyncSetDisconnectCallback(c, &redis_link::on_disconnect);
    ctx_ = c;
    loop_.timers().arm(connect_timeout_, connect_timeout);
    handshake();
}

// Queued at once: hiredis sends them as soon as the socket connects, in order, and the replies
// come back in the same order. The link is up after the PING answers.
void redis_link::handshake() {
    auto check = [this](const char* what) {
        return [this, what](redisReply* r) {
            if (!r) return; // the connection went away; drop() already ran or will
            std::string e = error_of(r);
            if (e.empty() || !ctx_) return;
            if (is_auth_error(e)) {
                std::string why = std::string(what) + " refused: " + e;
                if (hooks_.rejected) hooks_.rejected(why);
                drop(why, true);
            } else {
                drop(std::string(what) + " failed: " + e, true);
            }
        };
    };
    if (!ep_.password.empty()) {
        if (ep_.user.empty())
            raw_send_list({"AUTH", ep_.password}, check("AUTH"));
        else
            raw_send_list({"AUTH", ep_.user, ep_.password}, check("AUTH"));
    }
    if (ep_.db != 0) raw_send_list({"SELECT", std::to_string(ep_.db)}, check("SELECT"));
    raw_send_list({"CLIENT", "SETNAME", "mayhem-" + role_}, check("CLIENT SETNAME"));
    raw_send_list({"CLIENT", "ID"}, [this, c = check("CLIENT ID")](redisReply* r) {
        if (r && r->type == REDIS_REPLY_INTEGER) client_id_ = r->integer;
        c(r);
    });
    raw_send_list({"PING"}, [this, c = check("PING")](redisReply* r) {
        c(r);
        if (!r || !ctx_ || !error_of(r).empty()) return;
        connect_timeout_.cancel();
        up_ = true;
        failures_ = 0;
        ++connects_;
        if (hooks_.up) hooks_.up();
    });
}

bool redis_link::raw_send_list(std::initializer_list<std::string> args, reply_fn fn) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (const auto& a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    return raw_send(static_cast<int>(argv.size()), argv.data(), lens.data(), std::move(fn));
}

void redis_link::on_connect(const redisAsyncContext* c, int status) {
    auto* self = static_cast<redis_link*>(c->data);
    if (!self || status == REDIS_OK) return;
    // hiredis frees the context after this callback: forget it first.
    if (self->ctx_ == c) {
        self->ctx_ = nullptr;
        self->drop(c->errstr[0] ? c->errstr : "connect failed", false);
    }
}

void redis_link::on_disconnect(const redisAsyncContext* c, int status) {
    auto* self = static_cast<redis_link*>(c->data);
    if (!self || self->ctx_ != c) return;
    self->ctx_ = nullptr;
    self->drop(status == REDIS_OK ? "connection closed" : c->errstr, false);
}

void redis_link::on_reply(redisAsyncContext* c, void* reply, void* privdata) {
    std::unique_ptr<pending> p(static_cast<pending*>(privdata));
    auto* r = static_cast<redisReply*>(reply);
    redis_link* self = p->link;
    // A null reply: the connection is being torn down. Mark it down before the caller sees it,
    // so nothing is sent on a dying context.
    if (!r && self->gen_ == p->gen && self->ctx_ == c) self->up_ = false;
    if (p->fn) p->fn(r);
}

bool redis_link::raw_send(int argc, const char** argv, const std::size_t* lens, reply_fn fn) {
    if (!ctx_) return false;
    auto* p = new pending{this, gen_, std::move(fn)};
    if (redisAsyncCommandArgv(ctx_, &redis_link::on_reply, p, argc, argv, lens) != REDIS_OK) {
        delete p;
        return false;
    }
    return true;
}

bool redis_link::send(int argc, const char** argv, const std::size_t* lens, reply_fn fn) {
    if (!up_) return false;
    return raw_send(argc, argv, lens, std::move(fn));
}

bool redis_link::send(const std::vector<std::string>& args, reply_fn fn) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    argv.reserve(args.size());
    lens.reserve(args.size());
    for (const auto& a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    return send(static_cast<int>(argv.size()), argv.data(), lens.data(), std::move(fn));
}

bool redis_link::send(std::initializer_list<std::string_view> args, reply_fn fn) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (auto a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    return send(static_cast<int>(argv.size()), argv.data(), lens.data(), std::move(fn));
}

void redis_link::drop(const std::string& why, bool free_it) {
    connect_timeout_.cancel();
    bool was_up = up_;
    up_ = false;
    client_id_ = -1;
    if (redisAsyncContext* c = std::exchange(ctx_, nullptr); c && free_it) {
        c->data = nullptr; // on_disconnect ignores it; pending callbacks get nullptr
        redisAsyncFree(c); // deferred by hiredis when we are inside one of its callbacks
    }
    if (closed_) return;
    ++failures_;
    if (hooks_.down) hooks_.down(why);
    (void)was_up;
    retry_later();
}

void redis_link::retry_later() {
    if (closed_ || retry_timer_.armed()) return;
    // Full jitter over a capped exponential: many workers do not reconnect in lock-step.
    auto shift = std::min<std::uint32_t>(failures_ > 0 ? failures_ - 1 : 0, 16);
    auto ceiling = std::min<std::int64_t>(backoff_cap.count(), backoff_base.count() << shift);
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    auto delay = std::uniform_int_distribution<std::int64_t>(ceiling / 2, ceiling)(rng);
    loop_.timers().arm(retry_timer_, rt::millis{delay});
}

void redis_link::close() {
    if (closed_) return;
    closed_ = true;
    retry_timer_.cancel();
    connect_timeout_.cancel();
    if (resolving_) {
        resolving_->link = nullptr; // its callback frees it
        uv_cancel(reinterpret_cast<uv_req_t*>(&resolving_->req));
        resolving_ = nullptr;
    }
    up_ = false;
    if (redisAsyncContext* c = std::exchange(ctx_, nullptr)) {
        c->data = nullptr;
        redisAsyncFree(c);
    }
}

std::string redis_link::error_of(const redisReply* r) {
    if (!r) return "connection lost";
    if (r->type == REDIS_REPLY_ERROR) return std::string(r->str, r->len);
    return {};
}

} // namespace mayhem
