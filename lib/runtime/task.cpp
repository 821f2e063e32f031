#include "runtime/task.hpp"

#include <stdexcept>
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
    p.scope_node.unlink();
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
        auto* p = static_cast<owned_node<details::promise<void>>*>(node)->owner;
        node->unlink();
        --size_;
        std::coroutine_handle<details::promise<void>>::from_promise(*p).destroy();
    }
}

event::~event() {
    // Waiters still linked (only possible while a scope is being cancelled) are detached so
    // their destructors do not touch this list.
    while (auto* n = waiters_.front()) {
        static_cast<owned_node<awaiter>*>(n)->owner->ev_ = nullptr;
        n->unlink();
    }
}

void event::set() noexcept {
    if (set_) return;
    set_ = true;
    // Resuming a waiter may destroy other waiters (and this event): take the handles first.
    std::vector<std::coroutine_handle<>> ready;
    while (auto* n = waiters_.front()) {
        auto* a = static_cast<owned_node<awaiter>*>(n)->owner;
        n->unlink();
        ready.push_back(a->h_);
    }
    for (auto h : ready)
        h.resume();
}

} // namespace mayhem::rt
