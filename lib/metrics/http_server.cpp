#include "metrics/http_server.hpp"

#include <arpa/inet.h>
#include <atomic>
#include <charconv>
#include <chrono>
#include <civetweb.h>
#include <cstring>
#include <netinet/in.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>

namespace mayhem::metrics {

namespace {
// civetweb reports why it could not start (e.g. "cannot bind to 127.0.0.1:9477: 98 (Address
// already in use)") through log_message, on the thread that called mg_start2; start() collects
// those lines here for its error.
thread_local std::string* startup_log = nullptr;
} // namespace

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

std::unique_ptr<http_server> http_server::start(const std::string& addr, http_handler handler,
                                                std::string& error) {
    std::unique_ptr<http_server> s(new http_server(addr, std::move(handler)));
    // Two worker threads are plenty for a scraper and two probes; keep-alive off so a probe
    // never holds a worker; a short request timeout so a stuck client cannot either.
    const char* options[] = {"listening_ports",
                             s->addr_.c_str(),
                             "num_threads",
                             "2",
                             "request_timeout_ms",
                             "5000",
                             "enable_keep_alive",
                             "no",
                             nullptr};
    mg_callbacks callbacks{};
    // civetweb's own error lines would go to its log; the caller reports start-up failures and
    // request errors are the client's business.
    callbacks.log_message = [](const mg_connection*, const char* msg) {
        if (startup_log && msg) {
            if (!startup_log->empty()) *startup_log += "; ";
            *startup_log += msg;
        }
        return 1;
    };
    mg_init_data init{};
    init.callbacks = &callbacks;
    init.user_data = s.get();
    init.configuration_options = options;
    char text[256] = {};
    unsigned code = 0;
    mg_error_data err{};
    err.code = &code;
    err.text = text;
    err.text_buffer_size = sizeof text;
    std::string log;
    startup_log = &log;
    s->ctx_ = mg_start2(&init, &err);
    startup_log = nullptr;
    if (!s->ctx_) {
        error = "cannot listen on " + addr + ": " +
                (!log.empty() ? log
                 : text[0]    ? text
                              : "civetweb failed to start");
        return nullptr;
    }
    mg_set_request_handler(s->ctx_, "/", &http_server::on_request, s.get());
    return s;
}

namespace {

// Opens and closes a TCP connection to `addr` (HOST:PORT as valid_listen_address accepts;
// the wildcard host is reached on loopback). Errors are ignored: it is only a wake-up call.
void poke(const std::string& addr) {
    auto colon = addr.rfind(':');
    std::string host = addr.substr(0, colon);
    auto port = static_cast<std::uint16_t>(std::stoi(addr.substr(colon + 1)));
    if (host == "0.0.0.0") host = "127.0.0.1";
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) return;
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    (void)::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::close(fd);
}

} // namespace

// civetweb's listener thread polls its sockets with a fixed 2 s timeout and sees the stop flag
// only after it, so a plain mg_stop() adds up to 2 s to every exit. mg_stop() runs on a helper
// thread while this one connects to the port to wake the listener; stopping then takes
// milliseconds.
http_server::~http_server() {
    if (!ctx_) return;
    std::atomic<bool> stopped{false};
    std::thread stopper([this, &stopped] {
        mg_stop(ctx_);
        stopped.store(true);
    });
    while (!stopped.load()) {
        poke(addr_);
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    stopper.join();
}

int http_server::on_request(mg_connection* conn, void* data) noexcept {
    auto* self = static_cast<http_server*>(data);
    const mg_request_info* ri = mg_get_request_info(conn);
    bool head = std::strcmp(ri->request_method, "HEAD") == 0;
    http_response r;
    if (!head && std::strcmp(ri->request_method, "GET") != 0) {
        r = {405, "text/plain; charset=utf-8", "method not allowed\n"};
    } else {
        try {
            r = self->handler_(ri->local_uri ? ri->local_uri : "/");
        } catch (const std::exception& e) {
            r = {500, "text/plain; charset=utf-8", std::string(e.what()) + "\n"};
        }
    }
    mg_printf(conn,
              "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
              "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
              r.status, mg_get_response_code_text(conn, r.status), r.content_type.c_str(),
              r.body.size(), r.status == 405 ? "Allow: GET, HEAD\r\n" : "");
    if (!head && !r.body.empty()) mg_write(conn, r.body.data(), r.body.size());
    return r.status;
}

} // namespace mayhem::metrics
