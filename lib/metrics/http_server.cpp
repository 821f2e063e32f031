#include "metrics/http_server.hpp"

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <microhttpd.h>
#include <mutex>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace mayhem::metrics {

bool valid_listen_address(std::string_view addr) {
    if (addr == "off") return true;
    auto colon = addr.rfind(':');
    if (colon == std::string_view::npos || colon == 0) return false;
    std::string_view host = addr.substr(0, colon), port = addr.substr(colon + 1);
    unsigned p = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (ec != std::errc{} || end != port.data() + port.size() || p == 0 || p > 65535) return false;
    unsigned char buf[4];
    std::string h(host);
    return ::inet_pton(AF_INET, h.c_str(), buf) == 1;
}

// A deferred request waits suspended until its answer is in. The registry's mutex orders the
// suspension before any resume, and lets the answer be given once: by the reply, or by the
// server's stop (503), whichever comes first; MHD_stop_daemon must find no connection
// suspended and unresumed.
struct http_server::deferred_request {
    MHD_Connection* conn = nullptr;
    std::optional<http_response> answer; // under the registry's mutex
};

struct http_server::deferred_registry {
    std::mutex mu;
    std::condition_variable sent;
    bool stopped = false;
    std::vector<std::shared_ptr<deferred_request>> waiting; // suspended, not answered yet
    std::size_t answered = 0; // answered and resumed, not completed yet

    void answer(const std::shared_ptr<deferred_request>& d, http_response r) {
        std::lock_guard lock(mu);
        auto it = std::find(waiting.begin(), waiting.end(), d);
        if (it == waiting.end()) return; // answered already
        waiting.erase(it);
        d->answer = std::move(r);
        ++answered;
        MHD_resume_connection(d->conn);
    }
};

http_server::http_server(std::string addr, http_handler handler, deferred_route deferred)
    : addr_(std::move(addr)), handler_(std::move(handler)), deferred_(std::move(deferred)),
      registry_(std::make_shared<deferred_registry>()) {}

namespace {

// The listening socket, bound here rather than by the library so that a failure names its cause
// (errno). -1 with `error` set on failure.
int listen_on(const std::string& addr, std::string& error) {
    auto colon = addr.rfind(':');
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(std::stoi(addr.substr(colon + 1))));
    if (::inet_pton(AF_INET, addr.substr(0, colon).c_str(), &a.sin_addr) != 1) {
        error = "cannot listen on " + addr + ": not an IPv4 address";
        return -1;
    }
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0 || ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 128) != 0) {
        int err = errno;
        if (fd >= 0) ::close(fd);
        error = "cannot listen on " + addr + ": " + std::strerror(err);
        return -1;
    }
    return fd;
}

} // namespace

std::unique_ptr<http_server> http_server::start(const std::string& addr, http_handler handler,
                                                std::string& error, deferred_route deferred) {
    std::unique_ptr<http_server> s(new http_server(addr, std::move(handler), std::move(deferred)));
    int fd = listen_on(s->addr_, error);
    if (fd < 0) return nullptr;
    // No MHD_USE_ERROR_LOG: the library writes nothing to stderr; a client's errors are its own.
    s->daemon_ = MHD_start_daemon(
        MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME, 0, nullptr, nullptr,
        reinterpret_cast<MHD_AccessHandlerCallback>(&http_server::on_request), s.get(),
        MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_CONNECTION_TIMEOUT, connection_timeout_s,
        MHD_OPTION_CONNECTION_LIMIT, max_connections, MHD_OPTION_NOTIFY_COMPLETED,
        reinterpret_cast<MHD_RequestCompletedCallback>(&http_server::on_completed), s.get(),
        MHD_OPTION_END);
    if (!s->daemon_) {
        ::close(fd);
        error = "cannot listen on " + addr + ": libmicrohttpd failed to start";
        return nullptr;
    }
    return s;
}

http_server::~http_server() {
    if (!daemon_) return;
    {
        std::unique_lock lock(registry_->mu);
        registry_->stopped = true;
        for (auto& d : registry_->waiting) {
            d->answer = http_response{503, "text/plain; charset=utf-8", "stopping\n"};
            ++registry_->answered;
            MHD_resume_connection(d->conn);
        }
        registry_->waiting.clear();
        // The stop closes every connection at once: give the answers a moment to go out.
        registry_->sent.wait_for(lock, std::chrono::seconds(1),
                                 [this] { return registry_->answered == 0; });
    }
    MHD_stop_daemon(daemon_); // closes the listening socket and every connection
}

namespace {

MHD_Result collect_arg(void* out, MHD_ValueKind, const char* key, const char* value) {
    static_cast<http_args*>(out)->emplace_back(key ? key : "", value ? value : "");
    return MHD_YES;
}

} // namespace

// Server thread: suspends the connection and hands the request to the deferred handler. Returns
// the answer when there is one now (the server is stopping), else nothing.
std::optional<http_response> http_server::defer(MHD_Connection* conn, void** state) {
    auto d = std::make_shared<deferred_request>();
    d->conn = conn;
    http_args args;
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, &collect_arg, &args);
    {
        std::lock_guard lock(registry_->mu);
        if (registry_->stopped)
            return http_response{503, "text/plain; charset=utf-8", "stopping\n"};
        registry_->waiting.push_back(d);
        MHD_suspend_connection(conn);
    }
    *state = new std::shared_ptr<deferred_request>(d);
    http_reply reply = [registry = registry_, d](http_response r) {
        registry->answer(d, std::move(r));
    };
    try {
        deferred_.handler(args, std::move(reply));
    } catch (const std::exception& e) {
        registry_->answer(d, {500, "text/plain; charset=utf-8", std::string(e.what()) + "\n"});
    }
    return std::nullopt;
}

void http_server::on_completed(void* data, MHD_Connection*, void** state, int) noexcept {
    if (!*state) return; // not a deferred request
    auto* d = static_cast<std::shared_ptr<deferred_request>*>(*state);
    auto& registry = *static_cast<http_server*>(data)->registry_;
    {
        std::lock_guard lock(registry.mu);
        if ((*d)->answer) --registry.answered;
    }
    registry.sent.notify_all();
    delete d;
    *state = nullptr;
}

int http_server::on_request(void* data, MHD_Connection* conn, const char* url, const char* method,
                            const char*, const char*, std::size_t*, void** state) noexcept {
    auto* self = static_cast<http_server*>(data);
    bool head = std::strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    http_response r;
    if (*state) { // a deferred request, resumed: its answer is in
        auto& d = *static_cast<std::shared_ptr<deferred_request>*>(*state);
        std::lock_guard lock(self->registry_->mu);
        r = d->answer ? std::move(*d->answer) : http_response{500, "text/plain", "no answer\n"};
    } else if (!head && std::strcmp(method, MHD_HTTP_METHOD_GET) != 0) {
        r = {405, "text/plain; charset=utf-8", "method not allowed\n"};
    } else if (!self->deferred_.path.empty() && url && self->deferred_.path == url) {
        try {
            auto now = self->defer(conn, state);
            if (!now) return MHD_YES; // answered when the reply comes
            r = std::move(*now);
        } catch (const std::exception& e) {
            r = {500, "text/plain; charset=utf-8", std::string(e.what()) + "\n"};
        }
    } else {
        try {
            r = self->handler_(url ? url : "/");
        } catch (const std::exception& e) {
            r = {500, "text/plain; charset=utf-8", std::string(e.what()) + "\n"};
        } catch (...) {
            r = {500, "text/plain; charset=utf-8", "internal error\n"};
        }
    }
    // The library sends no body for HEAD.
    MHD_Response* resp =
        MHD_create_response_from_buffer(r.body.size(), r.body.data(), MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r.content_type.c_str());
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (r.status == 405) MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    MHD_Result ok = MHD_queue_response(conn, static_cast<unsigned>(r.status), resp);
    MHD_destroy_response(resp);
    return ok;
}

} // namespace mayhem::metrics
