// Coroutines on one libuv loop: a lazy task<T>, a join of several tasks that keeps every
// result or error (gather), and a scope that owns detached tasks (spawn).
//
// Threading: everything here is used from the loop thread only.
//
// Ownership rules (lib/runtime/README.md, "Who owns a frame"):
//  - every frame has exactly one owner: the task object that awaits it, or the task_scope
//    that spawned it. Destroying the owner destroys the frame, and with it the awaiters it
//    is suspended on (their destructors unlink timers and orphan thread-pool requests);
//  - continuations are resumed by symmetric transfer, so long chains do not grow the stack;
//  - exceptions are stored in the promise and rethrown to the awaiter; a spawned task's
//    exception is reported to its scope's error handler and never reaches libuv.
#pragma once

#include "runtime/frame_pool.hpp"
#include "runtime/list.hpp"
#include "runtime/timer_entry.hpp"

#include <array>
#include <atomic>
#include <cassert>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

namespace mayhem::rt {

// ---------------------------------------------------------------------------------------------
// result<T>: a value or the exception that was thrown instead of producing it.
// ---------------------------------------------------------------------------------------------
template <class T>
class result {
public:
    result() = default;
    explicit result(T v) : v_(std::in_place_index<1>, std::move(v)) {}
    explicit result(std::exception_ptr e) : v_(std::in_place_index<2>, std::move(e)) {}

    bool ok() const noexcept { return v_.index() == 1; }
    explicit operator bool() const noexcept { return ok(); }
    T& value() & {
        if (v_.index() == 2) std::rethrow_exception(std::get<2>(v_));
        return std::get<1>(v_);
    }
    T& operator*() & { return value(); }
    T* operator->() { return &value(); }
    std::exception_ptr error() const noexcept {
        return v_.index() == 2 ? std::get<2>(v_) : std::exception_ptr{};
    }

private:
    std::variant<std::monostate, T, std::exception_ptr> v_;
};

template <>
class result<void> {
public:
    result() = default;
    explicit result(std::exception_ptr e) : e_(std::move(e)) {}
    bool ok() const noexcept { return !e_; }
    explicit operator bool() const noexcept { return ok(); }
    void value() const {
        if (e_) std::rethrow_exception(e_);
    }
    std::exception_ptr error() const noexcept { return e_; }

private:
    std::exception_ptr e_;
};

// The message of an exception_ptr, for logs.
std::string describe(const std::exception_ptr& e);

template <class T>
class task;
class task_scope;

namespace details {

// When a task is one branch of a join (a gather, or a branch awaited later), it resumes the
// join's parent only when it is the last to finish, and stamps when it finished if the join
// keeps stamps (stage timings come from these).
inline constexpr std::size_t max_gather = 4;
struct join_state {
    std::size_t remaining = 0;
    std::coroutine_handle<> parent;
    std::uint64_t* finished_ns = nullptr; // one stamp per branch, or none
};

inline std::uint64_t steady_ns() noexcept {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::steady_clock::now().time_since_epoch())
                                          .count());
}

// Who runs when a task (a coroutine or a leaf) completes: the awaiting coroutine, or, for a
// branch of a gather, the gather's parent once the last branch is done.
struct completion {
    std::coroutine_handle<> continuation;
    join_state* join = nullptr;
    std::uint8_t branch = 0; // index within the gather, with `join`

    // Records the completion; returns what to run next (never null).
    std::coroutine_handle<> next() noexcept {
        if (join) {
            if (join->finished_ns) join->finished_ns[branch] = steady_ns();
            if (--join->remaining == 0) return join->parent;
            return std::noop_coroutine();
        }
        return continuation ? continuation : std::noop_coroutine();
    }
};

// Kept small: one of these is in every frame of every message in flight.
struct promise_base : pooled_frame, completion {
    std::exception_ptr error;

    std::suspend_always initial_suspend() noexcept { return {}; }
    void unhandled_exception() noexcept { error = std::current_exception(); }
};

// A leaf: a task's work that needs no coroutine frame of its own: a value after a delay (the
// leaf is the delay's timer entry; rt::after() in runtime/loop.hpp makes one). The step that
// waits is then one small pooled object instead of a frame, which matters because every message
// in flight keeps its waiting steps alive. The work may finish before the task is started (it
// runs from the leaf's creation); complete() then only marks it done and start() answers "done
// already". Destroying the leaf cancels its timer.
template <class T>
class leaf : public timer_entry, public completion, public pooled_frame {
public:
    leaf(const leaf&) = delete;
    leaf& operator=(const leaf&) = delete;

    // The task starts: true when the value is there already (nothing to wait for).
    bool start() noexcept {
        started_ = true;
        return done_;
    }
    T take() { return std::move(value_); }

protected:
    explicit leaf(T v) : value_(std::move(v)) {}
    // For a leaf that finishes its value when its work is done (simulate_restarter's result).
    T& value() noexcept { return value_; }
    // The work is done; from a loop callback this runs whoever waits (it may destroy the leaf).
    void complete() noexcept {
        done_ = true;
        if (started_) next().resume();
    }

private:
    bool started_ = false, done_ = false; // in the completion's tail padding
    T value_;
};

template <class T>
struct promise;

// Defined after task_scope: a detached frame reports to and unlinks from its scope.
std::coroutine_handle<> finish_detached(promise<void>& p) noexcept;

struct final_awaiter {
    bool await_ready() const noexcept { return false; }
    template <class P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
        P& p = h.promise();
        if constexpr (std::is_same_v<P, promise<void>>) {
            if (p.scope) return finish_detached(p);
        }
        return static_cast<completion&>(p).next(); // not list_node::next
    }
    void await_resume() const noexcept {}
};

template <class T>
struct promise : promise_base {
    std::optional<T> value;
    task<T> get_return_object() noexcept;
    final_awaiter final_suspend() noexcept { return {}; }
    template <class U>
    void return_value(U&& v) {
        value.emplace(std::forward<U>(v));
    }
    T take() {
        if (error) std::rethrow_exception(error);
        return std::move(*value);
    }
};

// Only a task<void> can be spawned: the scope bookkeeping lives here, not in every frame. The
// list node (a base, so the scope gets from its node back to the promise with a static_cast and
// no owner pointer) links the frame into its scope's registry.
template <>
struct promise<void> : promise_base, list_node {
    task_scope* scope = nullptr; // set when spawned: the scope owns and frees the frame

    task<void> get_return_object() noexcept;
    final_awaiter final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void take() {
        if (error) std::rethrow_exception(error);
    }
};

} // namespace details

// ---------------------------------------------------------------------------------------------
// task<T>: lazy; starts when awaited (or spawned, or gathered) and owns its frame.
// ---------------------------------------------------------------------------------------------
template <class T = void>
class [[nodiscard]] task {
public:
    using promise_type = details::promise<T>;
    using handle_type = std::coroutine_handle<promise_type>;

    task() = default;
    explicit task(handle_type h) noexcept : p_(h.address()) {}
    // A task whose work is a leaf (not a coroutine); the task owns it.
    explicit task(details::leaf<T>* l) noexcept requires(!std::is_void_v<T>)
        : p_(reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(l) | leaf_tag)) {}
    task(task&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
    task& operator=(task&& o) noexcept {
        if (this != &o) {
            reset();
            p_ = std::exchange(o.p_, nullptr);
        }
        return *this;
    }
    task(const task&) = delete;
    task& operator=(const task&) = delete;
    ~task() { reset(); }

    bool valid() const noexcept { return p_ != nullptr; }

    // `co_await t` starts the task and resumes the caller when it ends, with its value (or its
    // exception, rethrown). The task is its own awaiter, so awaiting a call's result keeps one
    // pointer in the awaiting frame (which lives as long as the message is in flight), not a
    // task and an awaiter.
    bool await_ready() const noexcept { return false; }
    // Starts the task by symmetric transfer; it resumes the caller when it ends.
    std::coroutine_handle<> await_suspend(std::coroutine_handle<> caller) noexcept {
        if constexpr (!std::is_void_v<T>) {
            if (is_leaf()) {
                as_leaf()->continuation = caller;
                return as_leaf()->start() ? caller : std::noop_coroutine();
            }
        }
        handle().promise().continuation = caller;
        return handle();
    }
    T await_resume() { return take(); }
    // Awaits the task without throwing: its value or its exception as a result<T>.
    auto settled() && noexcept { return settled_awaiter{this}; }

    // Internal: used by gather, branch and task_scope.
    // Starts the task as branch `index` of a gather.
    void start_branch(details::join_state& join, std::uint8_t index) noexcept {
        if constexpr (!std::is_void_v<T>) {
            if (is_leaf()) {
                details::leaf<T>& l = *as_leaf();
                l.join = &join;
                l.branch = index;
                // Done at once: counted here (the gather holds a count while it starts its
                // branches, so this never resumes the parent).
                if (l.start()) (void)l.next();
                return;
            }
        }
        auto& p = handle().promise();
        p.join = &join;
        p.branch = index;
        handle().resume();
    }
    // A coroutine task only (spawn): gives up ownership of the frame.
    handle_type release() noexcept {
        assert(!is_leaf());
        return handle_type::from_address(std::exchange(p_, nullptr));
    }
    result<T> take_result() { return take_result_of(*this); }

private:
    static constexpr std::uintptr_t leaf_tag = 1; // frames and leaves are 16-byte aligned

    bool is_leaf() const noexcept { return reinterpret_cast<std::uintptr_t>(p_) & leaf_tag; }
    details::leaf<T>* as_leaf() const noexcept {
        return reinterpret_cast<details::leaf<T>*>(reinterpret_cast<std::uintptr_t>(p_) &
                                                   ~leaf_tag);
    }
    handle_type handle() const noexcept { return handle_type::from_address(p_); }

    struct settled_awaiter {
        task* t;
        bool await_ready() const noexcept { return false; }
        std::coroutine_handle<> await_suspend(std::coroutine_handle<> caller) noexcept {
            return t->await_suspend(caller);
        }
        result<T> await_resume() { return take_result_of(*t); }
    };

    T take() {
        if constexpr (std::is_void_v<T>) {
            handle().promise().take();
        } else {
            if (is_leaf()) return as_leaf()->take();
            return handle().promise().take();
        }
    }

    static result<T> take_result_of(task& t) {
        try {
            if constexpr (std::is_void_v<T>) {
                t.take();
                return result<void>{};
            } else {
                return result<T>{t.take()};
            }
        } catch (...) {
            return result<T>{std::current_exception()};
        }
    }

    void reset() noexcept {
        if (!p_) return;
        if constexpr (!std::is_void_v<T>) {
            if (is_leaf()) {
                delete as_leaf();
                p_ = nullptr;
                return;
            }
        }
        handle().destroy();
        p_ = nullptr;
    }
    void* p_ = nullptr;
};

namespace details {
template <class T>
task<T> promise<T>::get_return_object() noexcept {
    return task<T>{std::coroutine_handle<promise<T>>::from_promise(*this)};
}
inline task<void> promise<void>::get_return_object() noexcept {
    return task<void>{std::coroutine_handle<promise<void>>::from_promise(*this)};
}
} // namespace details

// ---------------------------------------------------------------------------------------------
// gather: run several tasks concurrently, wait for all of them (all settled), and return each
// one's result or error. The asyncio.gather(..., return_exceptions=True) of the talk.
// No allocation beyond the tasks' own frames: the join counter lives in the awaiter, which
// lives in the awaiting frame.
// ---------------------------------------------------------------------------------------------
template <class... T>
class [[nodiscard]] gather_awaiter {
    static_assert(sizeof...(T) <= details::max_gather, "gather takes at most max_gather tasks");

public:
    explicit gather_awaiter(task<T>&&... ts) : tasks_(std::move(ts)...) {}

    bool await_ready() const noexcept { return false; }
    std::coroutine_handle<> await_suspend(std::coroutine_handle<> parent) noexcept {
        // One extra count held while starting the branches, so a branch that completes
        // synchronously cannot resume the parent before every branch has started.
        join_.remaining = sizeof...(T) + 1;
        join_.parent = parent;
        std::uint8_t index = 0;
        std::apply([&](auto&... t) { (t.start_branch(join_, index++), ...); }, tasks_);
        if (--join_.remaining == 0) return parent;
        return std::noop_coroutine();
    }
    std::tuple<result<T>...> await_resume() {
        return std::apply([](auto&... t) { return std::tuple<result<T>...>{t.take_result()...}; },
                          tasks_);
    }

private:
    std::tuple<task<T>...> tasks_;
    details::join_state join_;
};

template <class... T>
gather_awaiter<T...> gather(task<T>... ts) {
    return gather_awaiter<T...>(std::move(ts)...);
}

// ---------------------------------------------------------------------------------------------
// branch<T>: a task started now and awaited later, while the coroutine that started it carries
// out steps of its own: the other half of a gather whose first half is that coroutine itself.
// A message fans out its save as a branch and runs the restart's serial steps in its own frame,
// so one frame (not three) stays alive while both wait. It stamps when the task finished.
// Destroying the branch destroys the task (its timers and requests are cancelled).
// ---------------------------------------------------------------------------------------------
template <class T>
class [[nodiscard]] branch {
public:
    branch() = default;
    branch(const branch&) = delete;
    branch& operator=(const branch&) = delete;

    // Starts `t`; it runs until its first suspension (or to its end) before this returns.
    void start(task<T> t) noexcept {
        assert(!task_.valid());
        task_ = std::move(t);
        join_.remaining = 2; // the task, and the await below
        join_.finished_ns = &finished_ns_;
        task_.start_branch(join_, 0);
    }
    // `co_await b` waits until the task has finished (at once if it has). Awaited once.
    bool await_ready() noexcept { return --join_.remaining == 0; }
    void await_suspend(std::coroutine_handle<> parent) noexcept { join_.parent = parent; }
    void await_resume() const noexcept {}

    // After the await: its value or error, and when it finished (steady clock, ns).
    result<T> take() { return task_.take_result(); }
    std::uint64_t finished_ns() const noexcept { return finished_ns_; }

private:
    task<T> task_;
    details::join_state join_;
    std::uint64_t finished_ns_ = 0;
};

// ---------------------------------------------------------------------------------------------
// task_scope: the registry that owns detached tasks. spawn() starts a task and forgets it;
// the scope frees its frame when it finishes, reports its exception if it threw, and can
// destroy every task still suspended (a forced stop). Nothing is awaited on a scope: the drain
// watches size().
// ---------------------------------------------------------------------------------------------
class task_scope {
public:
    using error_handler = std::function<void(std::exception_ptr)>;

    explicit task_scope(error_handler on_error = {}) : on_error_(std::move(on_error)) {}
    task_scope(const task_scope&) = delete;
    task_scope& operator=(const task_scope&) = delete;
    ~task_scope() { cancel_all(); }

    void spawn(task<void> t) {
        auto h = t.release();
        details::promise<void>& p = h.promise();
        p.scope = this;
        tasks_.push_back(p);
        ++size_;
        h.resume(); // may run to completion (and free itself) right here
    }

    std::size_t size() const noexcept { return size_; }

    // Destroys every task still suspended; their locals' destructors run (releasing what they
    // hold). Safe if a destructor spawns or finishes other tasks.
    void cancel_all() noexcept;

private:
    friend std::coroutine_handle<> details::finish_detached(details::promise<void>&) noexcept;
    error_handler on_error_;
    intrusive_list tasks_;
    std::size_t size_ = 0;
};

// ---------------------------------------------------------------------------------------------
// event: a one-shot signal several tasks can wait on. Waiters are resumed in set(), in the order
// they came. Every message in flight has one (its duplicates wait on it) and waiting is rare, so
// the waiters are a singly linked list walked only by the rare paths.
// ---------------------------------------------------------------------------------------------
class event {
public:
    event() = default;
    event(const event&) = delete;
    event& operator=(const event&) = delete;
    ~event();

    bool is_set() const noexcept { return set_; }
    void set() noexcept;

    class awaiter {
    public:
        explicit awaiter(event& e) : ev_(&e) {}
        awaiter(const awaiter&) = delete;
        awaiter& operator=(const awaiter&) = delete;
        ~awaiter() {
            if (ev_) ev_->remove(this);
        }
        bool await_ready() const noexcept { return ev_ == nullptr || ev_->is_set(); }
        void await_suspend(std::coroutine_handle<> h) noexcept {
            h_ = h;
            ev_->add(this);
        }
        void await_resume() const noexcept {}

    private:
        friend class event;
        event* ev_; // while linked (or before it waits); null once detached
        awaiter* next_ = nullptr;
        std::coroutine_handle<> h_;
    };
    awaiter operator co_await() noexcept { return awaiter{*this}; }

private:
    void add(awaiter* a) noexcept;
    void remove(awaiter* a) noexcept;

    awaiter* first_ = nullptr; // the waiters, in the order they came (none once set)
    bool set_ = false;
};

} // namespace mayhem::rt
