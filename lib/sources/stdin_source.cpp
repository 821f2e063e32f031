#include "sources/stdin_source.hpp"

#include "runtime/log.hpp"

#include <memory>

namespace mayhem {

namespace {
constexpr std::size_t read_size = 64 * 1024;
constexpr std::size_t read_ahead_lines = 4096; // stop reading once this many lines wait

struct read_req {
    uv_fs_t fs{};
    stdin_source* owner; // null once the source is gone: the callback only frees
    std::string buf;
};

bool blank(std::string_view s) {
    for (char c : s)
        if (c != ' ' && c != '\t' && c != '\r') return false;
    return true;
}
} // namespace

stdin_source::stdin_source(rt::loop& loop, int fd, std::size_t max_line_bytes)
    : local_source(loop), fd_(fd), max_line_(max_line_bytes) {
    switch (uv_guess_handle(fd)) {
    case UV_TTY:
        tty_ = rt::uv_handle<uv_tty_t>(
            [&](uv_tty_t* t) { return uv_tty_init(loop.get(), t, fd, 0); }, "uv_tty_init");
        stream_ = reinterpret_cast<uv_stream_t*>(tty_.get());
        break;
    case UV_NAMED_PIPE:
    case UV_TCP:
        pipe_ = rt::uv_handle<uv_pipe_t>(
            [&](uv_pipe_t* p) {
                int rc = uv_pipe_init(loop.get(), p, 0);
                return rc < 0 ? rc : uv_pipe_open(p, fd);
            },
            "uv_pipe_open");
        stream_ = reinterpret_cast<uv_stream_t*>(pipe_.get());
        break;
    default:
        break; // a regular file (or /dev/null): file system reads
    }
    if (stream_) stream_->data = this;
}

stdin_source::~stdin_source() {
    on_close();
}

void stdin_source::on_close() {
    stream_ = nullptr;
    pipe_.close();
    tty_.close();
    if (req_) {
        // A read is still in progress on the thread pool: let its callback free it.
        reinterpret_cast<read_req*>(req_)->owner = nullptr;
        req_ = nullptr;
    }
}

std::size_t stdin_source::produce(std::size_t n) {
    std::size_t produced = 0;
    while (produced < n && !lines_ready_.empty()) {
        delivery d;
        d.payload = std::move(lines_ready_.front());
        lines_ready_.pop_front();
        d.tag = ++lines_;
        emit(std::move(d));
        ++produced;
    }
    if (lines_ready_.size() < read_ahead_lines) {
        read_more();
    } else if (reading_) {
        reading_ = false;
        uv_read_stop(stream_);
    }
    return produced;
}

void stdin_source::end_of_input() {
    eof_ = true;
    if (!partial_.empty() && !skipping_) push_line(partial_);
    partial_.clear();
}

void stdin_source::on_stream_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) noexcept {
    auto* self = static_cast<stdin_source*>(s->data);
    if (!self) return;
    if (n > 0) {
        self->take(std::string_view(buf->base, static_cast<std::size_t>(n)));
        if (self->lines_ready_.size() >= read_ahead_lines) {
            self->reading_ = false;
            uv_read_stop(s);
        }
    } else if (n < 0) {
        if (n != UV_EOF)
            log::error("error reading standard input; treating it as end of input",
                       {{"error", uv_strerror(static_cast<int>(n))}});
        self->reading_ = false;
        uv_read_stop(s);
        self->end_of_input();
    }
    self->resume();
    if (self->eof_ && self->sink()) self->sink()->source_changed();
}

void stdin_source::read_more() {
    if (req_ || eof_ || stopped()) return;
    if (stream_) {
        if (reading_) return;
        reading_ = true;
        int rc = uv_read_start(
            stream_,
            [](uv_handle_t* h, std::size_t, uv_buf_t* b) {
                auto* me = static_cast<stdin_source*>(h->data);
                me->buf_.resize(read_size);
                *b = uv_buf_init(me->buf_.data(), static_cast<unsigned>(me->buf_.size()));
            },
            &stdin_source::on_stream_read);
        if (rc < 0) {
            reading_ = false;
            log::error("cannot read standard input", {{"error", uv_strerror(rc)}});
            end_of_input();
            if (sink()) sink()->source_changed();
        }
        return;
    }
    auto* r = new read_req{};
    r->owner = this;
    r->buf.resize(read_size);
    r->fs.data = r;
    uv_buf_t b = uv_buf_init(r->buf.data(), static_cast<unsigned>(r->buf.size()));
    int rc = uv_fs_read(loop().get(), &r->fs, fd_, &b, 1, -1, &stdin_source::on_read);
    if (rc < 0) {
        delete r;
        log::error("cannot read standard input", {{"error", uv_strerror(rc)}});
        end_of_input();
        if (sink()) sink()->source_changed();
        return;
    }
    req_ = &r->fs;
}

void stdin_source::on_read(uv_fs_t* req) noexcept {
    std::unique_ptr<read_req> r(static_cast<read_req*>(req->data));
    auto n = req->result;
    uv_fs_req_cleanup(req);
    stdin_source* self = r->owner;
    if (!self) return;
    self->req_ = nullptr;
    if (n < 0) {
        log::error("error reading standard input; treating it as end of input",
                   {{"error", uv_strerror(static_cast<int>(n))}});
        n = 0;
    }
    if (n == 0) {
        self->end_of_input();
    } else {
        self->take(std::string_view(r->buf.data(), static_cast<std::size_t>(n)));
    }
    self->resume();
    if (self->eof_ && self->sink()) self->sink()->source_changed();
}

void stdin_source::take(std::string_view chunk) {
    while (!chunk.empty()) {
        auto nl = chunk.find('\n');
        std::string_view piece = chunk.substr(0, nl);
        if (!skipping_) {
            partial_.append(piece);
            if (partial_.size() > max_line_) {
                // Keep one byte more than allowed: enough for the decoder to call it too large.
                partial_.resize(max_line_ + 1);
                push_line(partial_);
                partial_.clear();
                skipping_ = true;
            }
        }
        if (nl == std::string_view::npos) break;
        if (!skipping_) push_line(partial_);
        partial_.clear();
        skipping_ = false;
        chunk.remove_prefix(nl + 1);
    }
}

void stdin_source::push_line(std::string_view line) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (blank(line)) return;
    lines_ready_.emplace_back(line);
}

} // namespace mayhem
