#include "metrics/http_server.hpp"

#include <arpa/inet.h>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <microhttpd.h>
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

http_server::http_server(std::string addr, http_handler handler)
    : addr_(std::move(addr)), handler_(std::move(handler)) {}

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
                                                std::string& error) {
    std::unique_ptr<http_server> s(new http_server(addr, std::move(handler)));
    int fd = listen_on(s->addr_, error);
    if (fd < 0) return nullptr;
    // No MHD_USE_ERROR_LOG: the library writes nothing to stderr; a client's errors are its own.
    s->daemon_ = MHD_start_daemon(
        MHD_USE_EPOLL_INTERNAL_THREAD, 0, nullptr, nullptr,
        reinterpret_cast<MHD_AccessHandlerCallback>(&http_server::on_request), s.get(),
        MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_CONNECTION_TIMEOUT, connection_timeout_s,
        MHD_OPTION_CONNECTION_LIMIT, max_connections, MHD_OPTION_END);
    if (!s->daemon_) {
        ::close(fd);
        error = "cannot listen on " + addr + ": libmicrohttpd failed to start";
        return nullptr;
    }
    return s;
}

http_server::~http_server() {
    if (daemon_) MHD_stop_daemon(daemon_); // closes the listening socket and every connection
}

int http_server::on_request(void* data, MHD_Connection* conn, const char* url, const char* method,
                            const char*, const char*, std::size_t*, void**) noexcept {
    auto* self = static_cast<http_server*>(data);
    bool head = std::strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    http_response r;
    if (!head && std::strcmp(method, MHD_HTTP_METHOD_GET) != 0) {
        r = {405, "text/plain; charset=utf-8", "method not allowed\n"};
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
