// `--source stdin`: one JSON message per line from standard input (a file, a pipe or a
// terminal). A regular file is read with libuv's file system requests; a pipe or terminal is a
// libuv stream, so a drain never waits on a blocked read. Reading happens only while the
// pipeline has room, so a large input is never read far ahead of demand. A line longer
// than --max-message-bytes is delivered truncated (and so dead-lettered as too large); reading
// resumes at the next newline. Blank lines are skipped. At end of input, finished() turns true
// once every line has an outcome.
#pragma once

#include "sources/local_source.hpp"

#include <deque>
#include <string>

namespace mayhem {

class stdin_source final : public local_source {
public:
    stdin_source(rt::loop& loop, int fd, std::size_t max_line_bytes);
    ~stdin_source() override;
    std::string_view name() const override { return "stdin"; }

    std::uint64_t lines() const noexcept { return lines_; }

protected:
    std::size_t produce(std::size_t n) override;
    bool exhausted() const override { return eof_ && lines_ready_.empty(); }
    void on_close() override;

private:
    static void on_read(uv_fs_t* req) noexcept;
    static void on_stream_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) noexcept;
    void read_more();
    void end_of_input();
    void take(std::string_view chunk);
    void push_line(std::string_view line);

    int fd_;
    std::size_t max_line_;
    uv_fs_t* req_ = nullptr;        // in progress; freed in its callback
    rt::uv_handle<uv_pipe_t> pipe_; // when standard input is a pipe or terminal
    rt::uv_handle<uv_tty_t> tty_;
    uv_stream_t* stream_ = nullptr;
    bool reading_ = false;
    std::string buf_;       // read buffer of the request in progress
    std::string partial_;   // the line being assembled
    bool skipping_ = false; // inside an over-long line, until its newline
    bool eof_ = false;
    std::deque<std::string> lines_ready_;
    std::uint64_t lines_ = 0;
};

} // namespace mayhem
