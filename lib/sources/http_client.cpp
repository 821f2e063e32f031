#include "sources/http_client.hpp"

#include "runtime/log.hpp"

#include <mutex>
#include <stdexcept>
#include <vector>

namespace mayhem {

// One request: its easy handle, what it sends and what came back. The easy handle points into
// this object (body, headers, error buffer), so it lives until the handle is cleaned up.
struct http_client::request {
    CURL* easy = nullptr;
    curl_slist* headers = nullptr;
    std::string sent;
    std::string received;
    char error[CURL_ERROR_SIZE] = {};
    callback done;

    ~request() {
        if (easy) curl_easy_cleanup(easy);
        curl_slist_free_all(headers);
    }
};

namespace {

std::size_t on_data(char* data, std::size_t size, std::size_t n, void* to) {
    static_cast<std::string*>(to)->append(data, size * n);
    return size * n;
}

void global_init() {
    // Once per process, before any handle: curl_global_init is not thread-safe.
    static std::once_flag once;
    std::call_once(once, [] {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
            throw std::runtime_error("curl_global_init failed");
    });
}

} // namespace

http_client::http_client(rt::loop& loop)
    : loop_(loop),
      timer_([&loop](uv_timer_t* t) { return uv_timer_init(loop.get(), t); }, "uv_timer_init") {
    global_init();
    timer_->data = this;
    multi_ = curl_multi_init();
    if (!multi_) throw std::runtime_error("curl_multi_init failed");
    curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &http_client::on_socket);
    curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
    curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &http_client::on_timer_set);
    curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
}

http_client::~http_client() {
    close();
}

void http_client::post(const std::string& url, std::string body, std::chrono::milliseconds timeout,
                       callback done, const std::string& bearer) {
    http_request req;
    req.url = url;
    req.body = std::move(body);
    req.timeout = timeout;
    if (!bearer.empty()) req.headers.push_back("Authorization: Bearer " + bearer);
    send(std::move(req), std::move(done));
}

void http_client::send(http_request req, callback done) {
    if (!multi_) throw std::logic_error("http_client: send after close");
    auto r = std::make_unique<request>();
    r->easy = curl_easy_init();
    if (!r->easy) throw std::runtime_error("curl_easy_init failed");
    r->sent = std::move(req.body);
    r->done = std::move(done);
    bool get = req.method == "GET";
    if (!get) {
        r->headers = curl_slist_append(r->headers, ("Content-Type: " + req.content_type).c_str());
        // No "Expect: 100-continue" round trip before a large body.
        r->headers = curl_slist_append(r->headers, "Expect:");
    }
    for (const auto& h : req.headers)
        r->headers = curl_slist_append(r->headers, h.c_str());
    CURL* e = r->easy;
    curl_easy_setopt(e, CURLOPT_URL, req.url.c_str());
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    if (get) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->sent.data());
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r->sent.size()));
    }
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &on_data);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &r->received);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->error);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(req.timeout.count()));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (auto rc = curl_multi_add_handle(multi_, e); rc != CURLM_OK)
        throw std::runtime_error(std::string("curl_multi_add_handle: ") + curl_multi_strerror(rc));
    requests_.emplace(e, std::move(r));
}

// libcurl says which socket to watch for what (or to stop watching it).
int http_client::on_socket(CURL*, curl_socket_t s, int what, void* self_p, void*) {
    auto* self = static_cast<http_client*>(self_p);
    if (what == CURL_POLL_REMOVE) {
        self->polls_.erase(s); // closes the poll handle: no callback after this
        return 0;
    }
    auto it = self->polls_.find(s);
    if (it == self->polls_.end()) {
        uv_loop_t* l = self->loop_.get();
        rt::uv_handle<uv_poll_t> p([l, s](uv_poll_t* h) { return uv_poll_init_socket(l, h, s); },
                                   "uv_poll_init_socket");
        p->data = self;
        it = self->polls_.emplace(s, std::move(p)).first;
    }
    int events = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) events |= UV_WRITABLE;
    uv_poll_start(it->second.get(), events, &http_client::on_poll);
    return 0;
}

// libcurl asks to be called back after `timeout_ms` (-1: never). Never from inside this call.
int http_client::on_timer_set(CURLM*, long timeout_ms, void* self_p) {
    auto* self = static_cast<http_client*>(self_p);
    if (!self->timer_) return 0;
    if (timeout_ms < 0)
        uv_timer_stop(self->timer_.get());
    else
        uv_timer_start(self->timer_.get(), &http_client::on_timeout,
                       static_cast<std::uint64_t>(timeout_ms), 0);
    return 0;
}

void http_client::on_poll(uv_poll_t* p, int status, int events) noexcept {
    auto* self = static_cast<http_client*>(p->data);
    if (!self) return;
    uv_os_fd_t fd = -1;
    uv_fileno(reinterpret_cast<uv_handle_t*>(p), &fd);
    int flags = 0;
    if (status < 0) flags |= CURL_CSELECT_ERR;
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    self->drive(static_cast<curl_socket_t>(fd), flags);
}

void http_client::on_timeout(uv_timer_t* t) noexcept {
    auto* self = static_cast<http_client*>(t->data);
    if (self) self->drive(CURL_SOCKET_TIMEOUT, 0);
}

void http_client::drive(curl_socket_t s, int flags) {
    if (!multi_) return;
    int running = 0;
    curl_multi_socket_action(multi_, s, flags, &running);
    try {
        collect();
    } catch (const std::exception& e) {
        log::error("http: a response handler threw", {{"error", e.what()}});
    }
}

// Hands each finished request to its callback. They are all taken off the multi handle first:
// a callback may post() again, or close() this client.
void http_client::collect() {
    std::vector<std::unique_ptr<request>> finished;
    std::vector<CURLcode> results;
    int left = 0;
    while (CURLMsg* m = curl_multi_info_read(multi_, &left)) {
        if (m->msg != CURLMSG_DONE) continue;
        CURL* e = m->easy_handle;
        CURLcode rc = m->data.result;
        curl_multi_remove_handle(multi_, e);
        auto it = requests_.find(e);
        if (it == requests_.end()) continue;
        finished.push_back(std::move(it->second));
        results.push_back(rc);
        requests_.erase(it);
    }
    for (std::size_t i = 0; i < finished.size(); ++i) {
        auto& r = *finished[i];
        http_response resp;
        if (results[i] == CURLE_OK) {
            curl_easy_getinfo(r.easy, CURLINFO_RESPONSE_CODE, &resp.status);
            resp.body = std::move(r.received);
        } else {
            resp.error = r.error[0] ? r.error : curl_easy_strerror(results[i]);
        }
        auto done = std::move(r.done);
        done(std::move(resp));
        if (!multi_) return; // closed by that callback
    }
}

void http_client::close() {
    if (!multi_) return;
    for (auto& [easy, r] : requests_)
        curl_multi_remove_handle(multi_, easy);
    requests_.clear();
    curl_multi_cleanup(multi_); // may still tell on_socket to forget sockets
    multi_ = nullptr;
    polls_.clear();
    timer_.close();
}

} // namespace mayhem
