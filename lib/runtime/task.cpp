#include "runtime/task.hpp"

#include <stdexcept>
#include <utility>
#include <vector>

namespace mayhem::rt {

std::string describe(const std::exception_ptr& e) {
    if (!e) return "no error";
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        return ex.what();
    } catch (...) {
        return "unknown exception";
    }
}

namespace details {
std::coroutine_handle<> finish_detached(promise<void>& p) noexcept {
    auto h = std::coroutine_handle<promise<void>>::from_promise(p);
    task_scope* scope = p.scope;
    std::exception_ptr error = std::move(p.error);
    p.unlink();
    --scope->size_;
    h.destroy();
    // The exception is reported at the scope's boundary; the handler must not throw, and if it
    // does the error is dropped rather than escaping into a libuv callback.
    if (error && scope->on_error_) {
        try {
            scope->on_error_(error);
        } catch (...) {}
    }
    return std::noop_coroutine();
}
} // namespace details

void task_scope::cancel_all() noexcept {
    // Destroying a frame runs its locals' destructors, which may settle messages and thereby
    // spawn or finish other tasks: take one frame at a time from the front.
    while (auto* node = tasks_.front()) {
        auto* p = static_cast<details::promise<void>*>(node);
        node->unlink();
        --size_;
        std::coroutine_handle<details::promise<void>>::from_promise(*p).destroy();
    }
}

event::~event() {
    // Waiters still linked (only possible while a scope is being cancelled) are detached so
    // their destructors do not touch this event.
    for (awaiter* a = first_; a; a = a->next_)
        a->ev_ = nullptr;
}

void event::add(awaiter* a) noexcept {
    a->next_ = nullptr;
    awaiter* last = first_;
    if (!last) {
        first_ = a;
        return;
    }
    while (last->next_)
        last = last->next_;
    last->next_ = a;
}

void event::remove(awaiter* a) noexcept {
    awaiter* cur = first_;
    if (cur == a) {
        first_ = a->next_;
    } else {
        while (cur && cur->next_ != a)
            cur = cur->next_;
        if (cur) cur->next_ = a->next_;
    }
    a->ev_ = nullptr;
}

void event::set() noexcept {
    if (is_set()) return;
    awaiter* a = std::exchange(first_, nullptr);
    set_ = true;
    if (!a) return;
    // Resuming a waiter may destroy other waiters (and this event): detach them all and take
    // their handles first.
    std::vector<std::coroutine_handle<>> ready;
    for (; a; a = a->next_) {
        a->ev_ = nullptr;
        ready.push_back(a->h_);
    }
    for (auto h : ready)
        h.resume();
}

} // namespace mayhem::rt
