// Lets another thread (the HTTP server's) ask the loop thread for an answer that only the loop
// may compute, such as what is in flight: the asker never reads a loop-owned structure itself.
// The question crosses by uv_async; the loop answers on its next turn. A loop that does not
// answer within the timeout (stuck, or not running: the worker is starting or stopping) gets
// its question answered with nothing, by a small thread of this class that only keeps time.
//
// Threading: constructed and destroyed on the loop thread; ask() from any other thread; the
// answer function runs on the loop thread; a reply runs on the loop thread (answered) or on the
// timekeeping thread (timed out, closed), exactly once, and must not block.
#pragma once

#include "runtime/loop.hpp"

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace mayhem::metrics {

class loop_query {
public:
    using answer_fn = std::function<std::string(const std::string& question)>;
    using reply_fn = std::function<void(std::optional<std::string> answer)>;

    // Questions waiting at once beyond this are answered with nothing at once.
    static constexpr std::size_t max_waiting = 16;

    loop_query(rt::loop& l, answer_fn answer, std::chrono::milliseconds timeout);
    loop_query(const loop_query&) = delete;
    loop_query& operator=(const loop_query&) = delete;
    // Answers every waiting question with nothing, then stops.
    ~loop_query();

    // Any thread but the loop's. `reply` is called exactly once.
    void ask(std::string question, reply_fn reply);

private:
    struct waiting {
        std::string question;
        reply_fn reply;
        std::chrono::steady_clock::time_point deadline;
    };
    static void on_async(uv_async_t* a) noexcept;
    void answer_all() noexcept; // loop thread
    void keep_time();           // the timekeeping thread

    answer_fn answer_;
    std::chrono::milliseconds timeout_;
    std::mutex mu_;
    std::condition_variable changed_;
    std::deque<waiting> waiting_; // in deadline order: every question has the same timeout
    bool closing_ = false;
    rt::uv_handle<uv_async_t> async_;
    std::thread timekeeper_;
};

} // namespace mayhem::metrics
