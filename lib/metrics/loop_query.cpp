#include "metrics/loop_query.hpp"

#include <csignal>
#include <pthread.h>
#include <utility>
#include <vector>

namespace mayhem::metrics {

loop_query::loop_query(rt::loop& l, answer_fn answer, std::chrono::milliseconds timeout)
    : answer_(std::move(answer)), timeout_(timeout),
      async_([&l](uv_async_t* a) { return uv_async_init(l.get(), a, &loop_query::on_async); },
             "uv_async_init") {
    async_->data = this;
    uv_unref(async_.base()); // a question never keeps the loop alive
    // The timekeeper takes no signal: they are the loop's to handle.
    sigset_t all, before;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &before);
    timekeeper_ = std::thread([this] { keep_time(); });
    pthread_sigmask(SIG_SETMASK, &before, nullptr);
}

loop_query::~loop_query() {
    std::deque<waiting> left;
    {
        std::lock_guard lock(mu_);
        closing_ = true;
        left.swap(waiting_);
    }
    changed_.notify_all();
    timekeeper_.join();
    async_.close(); // after closing_: no ask() sends on it any more
    for (auto& w : left)
        w.reply(std::nullopt);
}

void loop_query::ask(std::string question, reply_fn reply) {
    {
        std::lock_guard lock(mu_);
        if (!closing_ && waiting_.size() < max_waiting) {
            waiting_.push_back({std::move(question), std::move(reply),
                                std::chrono::steady_clock::now() + timeout_});
            // Under the lock: the destructor closes the handle only after it set closing_.
            uv_async_send(async_.get());
            changed_.notify_all();
            return;
        }
    }
    reply(std::nullopt);
}

void loop_query::on_async(uv_async_t* a) noexcept {
    if (auto* self = static_cast<loop_query*>(a->data)) self->answer_all();
}

// Sends coalesce: one wake-up answers every question waiting. Whoever takes a question off the
// list (here, or the timekeeper) is the one that replies to it.
void loop_query::answer_all() noexcept {
    std::deque<waiting> now;
    {
        std::lock_guard lock(mu_);
        now.swap(waiting_);
    }
    for (auto& w : now) {
        std::optional<std::string> a;
        try {
            a = answer_(w.question);
        } catch (...) {
            a = std::nullopt;
        }
        w.reply(std::move(a));
    }
}

void loop_query::keep_time() {
    std::unique_lock lock(mu_);
    while (!closing_) {
        if (waiting_.empty()) {
            changed_.wait(lock);
            continue;
        }
        auto due = waiting_.front().deadline;
        if (std::chrono::steady_clock::now() < due) {
            changed_.wait_until(lock, due);
            continue;
        }
        waiting late = std::move(waiting_.front());
        waiting_.pop_front();
        lock.unlock();
        late.reply(std::nullopt);
        lock.lock();
    }
}

} // namespace mayhem::metrics
