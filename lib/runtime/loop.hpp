// The libuv side of the runtime: the loop, RAII ownership of libuv handles, one shared timer
// that serves every sleep and deadline, periodic timers, signals, and the offload of blocking
// work to libuv's thread pool.
//
// The rule for handles: a handle is freed only in its close callback, and only
// uv_handle<T> calls uv_close. Threading: every object here belongs to the loop thread, except
// the work function given to offload(), which runs on a pool thread.
#pragma once

#include "runtime/task.hpp"
#include "runtime/timer_entry.hpp"

#include <chrono>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <uv.h>
#include <vector>

namespace mayhem::rt {

using millis = std::chrono::milliseconds;

// A libuv error as an exception, for the boundaries where one is thrown (start-up).
class uv_error : public std::runtime_error {
public:
    uv_error(const std::string& what, int code);
    int code() const noexcept { return code_; }

private:
    int code_;
};

// Throws uv_error when `code` is a libuv error.
int check_uv(int code, const char* what);

// ---------------------------------------------------------------------------------------------
// uv_handle<H>: owns one initialised libuv handle. Not copyable, movable; the handle memory is
// freed in the close callback, never before.
// ---------------------------------------------------------------------------------------------
template <class H>
class uv_handle {
public:
    uv_handle() = default;
    // `init` is called with the fresh handle (e.g. uv_timer_init); if it fails nothing was
    // registered with the loop and the memory is freed at once.
    template <class Init>
    explicit uv_handle(Init&& init, const char* what) : h_(new H{}) {
        int rc = init(h_);
        if (rc < 0) {
            delete h_;
            h_ = nullptr;
            check_uv(rc, what);
        }
    }
    uv_handle(uv_handle&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
    uv_handle& operator=(uv_handle&& o) noexcept {
        if (this != &o) {
            close();
            h_ = std::exchange(o.h_, nullptr);
        }
        return *this;
    }
    uv_handle(const uv_handle&) = delete;
    uv_handle& operator=(const uv_handle&) = delete;
    ~uv_handle() { close(); }

    H* get() const noexcept { return h_; }
    H* operator->() const noexcept { return h_; }
    explicit operator bool() const noexcept { return h_ != nullptr; }
    uv_handle_t* base() const noexcept { return reinterpret_cast<uv_handle_t*>(h_); }

    // Stops callbacks at once (libuv calls none after uv_close) and frees in the close callback.
    void close() noexcept {
        if (!h_) return;
        H* h = std::exchange(h_, nullptr);
        h->data = nullptr;
        uv_close(reinterpret_cast<uv_handle_t*>(h),
                 [](uv_handle_t* p) { delete reinterpret_cast<H*>(p); });
    }

private:
    H* h_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// timer_queue: every sleep, deadline and delayed callback of the process shares one uv_timer.
// Entries are kept in lanes, one lane per distinct delay (as Node.js does): entries armed with
// the same delay fall due in the order they were armed, so a lane is a FIFO list and arming,
// firing and cancelling an entry are O(1) pointer updates. Only the lanes sit in a min-heap,
// keyed by their first entry. A worker arms thousands of entries with a handful of delays
// (simulated latencies, timeouts, backoffs), so the heap stays tiny and no per-entry heap walk
// chases pointers through memory that no cache holds.
// ---------------------------------------------------------------------------------------------
class timer_queue;

struct timer_lane {
    timer_queue* queue;
    std::uint64_t delay;
    timer_entry* head = nullptr;
    timer_entry* tail = nullptr;
    std::size_t heap_index = static_cast<std::size_t>(-1); // in the heap while not empty
};

class timer_queue {
public:
    explicit timer_queue(uv_loop_t* loop);
    timer_queue(const timer_queue&) = delete;
    timer_queue& operator=(const timer_queue&) = delete;
    ~timer_queue();

    void arm(timer_entry& e, millis delay);
    void disarm(timer_entry& e) noexcept;
    std::size_t size() const noexcept { return size_; }
    std::uint64_t now() const noexcept { return uv_now(loop_); }

private:
    static void on_timer(uv_timer_t* t) noexcept;
    timer_lane& lane_for(std::uint64_t delay);
    void drop_lane(timer_lane& l) noexcept;
    bool less(std::size_t a, std::size_t b) const noexcept;
    void swap_at(std::size_t a, std::size_t b) noexcept;
    void sift_up(std::size_t i) noexcept;
    void sift_down(std::size_t i) noexcept;
    void heap_remove(timer_lane& l) noexcept;
    void rearm() noexcept;

    uv_loop_t* loop_;
    uv_handle<uv_timer_t> timer_;
    std::unordered_map<std::uint64_t, std::unique_ptr<timer_lane>> lanes_;
    timer_lane* last_lane_ = nullptr; // the lane armed last: the next arm is often the same
    std::vector<timer_lane*> heap_;   // non-empty lanes, by the due time of their first entry
    std::size_t size_ = 0;
    std::uint16_t epoch_ = 0; // what entries armed now are marked with; a firing pass moves it on
    std::uint64_t armed_for_ = UINT64_MAX;
};

// A callback after a delay, owned by whoever holds it (cancelled when destroyed).
class delayed_call : public timer_entry {
public:
    explicit delayed_call(std::function<void()> fn) : fn_(std::move(fn)) {}

private:
    void fire() noexcept override;
    std::function<void()> fn_;
};

// ---------------------------------------------------------------------------------------------
// loop: the one uv_loop_t of the process and the services every component shares.
// ---------------------------------------------------------------------------------------------
class loop {
public:
    loop();
    loop(const loop&) = delete;
    loop& operator=(const loop&) = delete;
    // Closes the timer queue, runs the loop until every handle's close callback has run, and
    // closes the loop; aborts in debug builds if a handle is still open (a leak).
    ~loop();

    uv_loop_t* get() noexcept { return &loop_; }
    timer_queue& timers() noexcept { return *timers_; }
    std::uint64_t now() const noexcept { return uv_now(&loop_); }

    void run() { uv_run(&loop_, UV_RUN_DEFAULT); }
    void stop() noexcept { uv_stop(&loop_); }

    // Runs the loop until `done()` is true or nothing is left to run. `done()` is also checked
    // right before the loop would block for I/O: what a turn's timer callbacks make true (the
    // last task resumed, a batch committed) ends the run then, not at the next event.
    template <class Pred>
    void run_until(Pred done) {
        auto outer =
            std::exchange(until_, {[](void* p) { return (*static_cast<Pred*>(p))(); }, &done});
        while (!done() && uv_run(&loop_, UV_RUN_ONCE) != 0) {}
        until_ = outer;
    }

private:
    struct until {
        bool (*done)(void*) = nullptr;
        void* pred = nullptr;
    };
    static void on_prepare(uv_prepare_t* h) noexcept;

    uv_loop_t loop_{};
    std::optional<timer_queue> timers_;
    until until_;                         // run_until's predicate while it runs
    uv_handle<uv_prepare_t> before_poll_; // checks it before each poll; keeps no loop alive
};

// ---------------------------------------------------------------------------------------------
// sleep: suspends the calling task on the shared timer queue. Destroying the suspended task
// cancels the sleep.
// ---------------------------------------------------------------------------------------------
class sleep_awaiter : public timer_entry {
public:
    sleep_awaiter(timer_queue& q, millis d) : q_(q), d_(d) {}
    bool await_ready() const noexcept { return d_.count() <= 0; }
    void await_suspend(std::coroutine_handle<> h) {
        h_ = h;
        q_.arm(*this, d_);
    }
    void await_resume() const noexcept {}

private:
    void fire() noexcept override { h_.resume(); }
    timer_queue& q_;
    millis d_;
    std::coroutine_handle<> h_;
};

inline sleep_awaiter sleep_for(loop& l, millis d) {
    return sleep_awaiter{l.timers(), d};
}

// after(loop, delay, value): a task that completes with `value` once `delay` has passed since
// it was made, with no coroutine frame (task.hpp, leaf): one pooled object holding the value and
// its timer entry. For simulated steps, which are awaited as soon as they are made. Destroying
// the task cancels the timer.
template <class T>
class timed_leaf final : public details::leaf<T> {
public:
    timed_leaf(timer_queue& q, millis d, T v) : details::leaf<T>(std::move(v)) {
        if (d.count() > 0)
            q.arm(*this, d);
        else
            this->complete();
    }

private:
    void fire() noexcept override { this->complete(); }
};

template <class T>
task<T> after(loop& l, millis d, T value) {
    return task<T>{new timed_leaf<T>(l.timers(), d, std::move(value))};
}

// ---------------------------------------------------------------------------------------------
// periodic_timer: its own uv_timer, for housekeeping at a fixed period (status line, lease
// renewal, loop-lag probe). The callback runs on the loop thread; exceptions are reported.
// ---------------------------------------------------------------------------------------------
class periodic_timer {
public:
    periodic_timer(loop& l, millis period, std::function<void()> fn);
    void stop() noexcept { timer_.close(); }
    void set_period(millis period);

private:
    static void on_tick(uv_timer_t* t) noexcept;
    uv_handle<uv_timer_t> timer_;
    std::function<void()> fn_;
};

// ---------------------------------------------------------------------------------------------
// signal_watch: runs `fn(signum)` on the loop thread when a signal arrives. A handler only
// records what happened and lets the owner act (Redis's rule).
// ---------------------------------------------------------------------------------------------
class signal_watch {
public:
    signal_watch(loop& l, int signum, std::function<void(int)> fn);
    void stop() noexcept { sig_.close(); }

private:
    static void on_signal(uv_signal_t* s, int signum) noexcept;
    uv_handle<uv_signal_t> sig_;
    std::function<void(int)> fn_;
};

// ---------------------------------------------------------------------------------------------
// offload: run a blocking function on libuv's thread pool (the talk's run_in_executor) and
// resume the awaiting task on the loop with its result or exception. If the awaiting task is
// destroyed first, the request is orphaned: the work still finishes on its thread and its
// result is dropped in the after-work callback on the loop.
// ---------------------------------------------------------------------------------------------
namespace details {
template <class R>
struct work_state {
    uv_work_t req{};
    std::function<R()> fn;
    std::optional<std::conditional_t<std::is_void_v<R>, bool, R>> value;
    std::exception_ptr error;
    std::coroutine_handle<> waiter; // null once orphaned
    int status = 0;

    static void run(uv_work_t* r) noexcept {
        auto* s = static_cast<work_state*>(r->data);
        try {
            if constexpr (std::is_void_v<R>) {
                s->fn();
                s->value.emplace(true);
            } else {
                s->value.emplace(s->fn());
            }
        } catch (...) {
            s->error = std::current_exception();
        }
    }
    static void after(uv_work_t* r, int status) noexcept {
        auto* s = static_cast<work_state*>(r->data);
        s->status = status;
        if (!s->waiter) {
            delete s; // orphaned: nobody waits any more
            return;
        }
        auto h = std::exchange(s->waiter, {});
        h.resume(); // the awaiter (in that frame) owns `s` from here
    }
};
} // namespace details

template <class R>
class offload_awaiter {
public:
    offload_awaiter(loop& l, std::function<R()> fn)
        : loop_(l), state_(new details::work_state<R>{}) {
        state_->fn = std::move(fn);
        state_->req.data = state_;
    }
    offload_awaiter(const offload_awaiter&) = delete;
    offload_awaiter& operator=(const offload_awaiter&) = delete;
    ~offload_awaiter() {
        if (!state_) return;
        if (state_->waiter) {
            state_->waiter = {}; // still running: orphan it, after() frees it
        } else {
            delete state_;
        }
    }

    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) {
        state_->waiter = h;
        int rc = uv_queue_work(loop_.get(), &state_->req, &details::work_state<R>::run,
                               &details::work_state<R>::after);
        if (rc < 0) {
            state_->waiter = {};
            state_->error = std::make_exception_ptr(uv_error("uv_queue_work", rc));
            return false;
        }
        return true;
    }
    R await_resume() {
        if (state_->error) std::rethrow_exception(state_->error);
        if (state_->status == UV_ECANCELED) throw uv_error("offloaded work", UV_ECANCELED);
        if constexpr (!std::is_void_v<R>) return std::move(*state_->value);
    }

private:
    loop& loop_;
    details::work_state<R>* state_;
};

template <class F>
auto offload(loop& l, F fn) {
    using R = std::invoke_result_t<F>;
    return offload_awaiter<R>(l, std::function<R()>(std::move(fn)));
}

} // namespace mayhem::rt
