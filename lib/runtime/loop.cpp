#include "runtime/loop.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace mayhem::rt {

uv_error::uv_error(const std::string& what, int code)
    : std::runtime_error(what + ": " + uv_strerror(code)), code_(code) {}

int check_uv(int code, const char* what) {
    if (code < 0) throw uv_error(what, code);
    return code;
}

// ---------------------------------------------------------------------------------------------
// timer_queue
// ---------------------------------------------------------------------------------------------

timer_entry::~timer_entry() {
    cancel();
}

void timer_entry::cancel() noexcept {
    if (lane_) lane_->queue->disarm(*this);
}

timer_queue::timer_queue(uv_loop_t* loop)
    : loop_(loop),
      timer_([loop](uv_timer_t* t) { return uv_timer_init(loop, t); }, "uv_timer_init") {
    // The timer is active (and keeps the loop alive) exactly while some entry waits on it.
    timer_->data = this;
}

timer_queue::~timer_queue() {
    for (auto& [delay, l] : lanes_) {
        for (timer_entry* e = l->head; e;) {
            timer_entry* next = e->next_;
            e->lane_ = nullptr;
            e->prev_ = e->next_ = nullptr;
            e = next;
        }
    }
    heap_.clear();
    lanes_.clear();
}

// The heap orders lanes by their first entry; a lane in the heap is never empty. Of two entries
// due at the same time, the one with the longer delay was armed first (due = armed + delay), so
// ordering equal deadlines by delay, longest first, keeps them first in, first out.
bool timer_queue::less(std::size_t a, std::size_t b) const noexcept {
    const timer_entry* x = heap_[a]->head;
    const timer_entry* y = heap_[b]->head;
    return x->due_ != y->due_ ? x->due_ < y->due_ : heap_[a]->delay > heap_[b]->delay;
}

void timer_queue::swap_at(std::size_t a, std::size_t b) noexcept {
    std::swap(heap_[a], heap_[b]);
    heap_[a]->heap_index = a;
    heap_[b]->heap_index = b;
}

void timer_queue::sift_up(std::size_t i) noexcept {
    while (i > 0) {
        std::size_t parent = (i - 1) / 2;
        if (!less(i, parent)) break;
        swap_at(i, parent);
        i = parent;
    }
}

void timer_queue::sift_down(std::size_t i) noexcept {
    for (;;) {
        std::size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < heap_.size() && less(l, m)) m = l;
        if (r < heap_.size() && less(r, m)) m = r;
        if (m == i) break;
        swap_at(i, m);
        i = m;
    }
}

void timer_queue::heap_remove(timer_lane& l) noexcept {
    std::size_t i = l.heap_index;
    std::size_t last = heap_.size() - 1;
    if (i != last) swap_at(i, last);
    heap_.pop_back();
    l.heap_index = static_cast<std::size_t>(-1);
    if (i < heap_.size()) {
        sift_down(i);
        sift_up(i);
    }
}

timer_lane& timer_queue::lane_for(std::uint64_t delay) {
    if (last_lane_ && last_lane_->delay == delay) return *last_lane_;
    auto& slot = lanes_[delay];
    if (!slot) slot.reset(new timer_lane{this, delay});
    last_lane_ = slot.get();
    return *slot;
}

// An empty lane leaves the heap. Lanes are kept for their delay's next entry, unless there are
// many (random delays, backoffs with jitter): then an empty one is freed.
void timer_queue::drop_lane(timer_lane& l) noexcept {
    heap_remove(l);
    if (lanes_.size() <= 256) return;
    if (last_lane_ == &l) last_lane_ = nullptr;
    lanes_.erase(l.delay);
}

void timer_queue::arm(timer_entry& e, millis delay) {
    if (e.armed()) disarm(e);
    // Deadlines are 48 bits of milliseconds: a delay beyond 2^46 ms (2,230 years) is "never".
    constexpr std::int64_t longest = std::int64_t{1} << 46;
    auto d = static_cast<std::uint64_t>(std::clamp<std::int64_t>(delay.count(), 0, longest));
    timer_lane& l = lane_for(d);
    // uv_now never goes back, so an entry armed later on the same lane is never due earlier:
    // appending keeps the lane in deadline order.
    e.lane_ = &l;
    e.due_ = uv_now(loop_) + d;
    e.epoch_ = epoch_;
    e.next_ = nullptr;
    e.prev_ = l.tail;
    ++size_;
    if (l.tail) {
        l.tail->next_ = &e;
        l.tail = &e;
        return; // the lane's first entry, and so the heap, did not change
    }
    l.head = l.tail = &e;
    l.heap_index = heap_.size();
    heap_.push_back(&l);
    sift_up(l.heap_index);
    if (heap_.front() == &l) rearm();
}

void timer_queue::disarm(timer_entry& e) noexcept {
    timer_lane* l = e.lane_;
    if (!l) return;
    bool was_head = l->head == &e;
    if (e.prev_)
        e.prev_->next_ = e.next_;
    else
        l->head = e.next_;
    if (e.next_)
        e.next_->prev_ = e.prev_;
    else
        l->tail = e.prev_;
    e.lane_ = nullptr;
    e.prev_ = e.next_ = nullptr;
    --size_;
    if (was_head) {
        if (!l->head)
            drop_lane(*l);
        else
            sift_down(l->heap_index); // its first entry is now a later one
    }
    // A timer that fires early finds nothing due and rearms for the new front; but with nothing
    // left at all it is stopped, so a cancelled sleep does not keep the loop alive.
    if (heap_.empty()) rearm();
}

void timer_queue::rearm() noexcept {
    if (!timer_) return;
    if (heap_.empty()) {
        uv_timer_stop(timer_.get());
        armed_for_ = UINT64_MAX;
        return;
    }
    std::uint64_t due = heap_.front()->head->due_;
    if (due == armed_for_ && uv_is_active(timer_.base())) return;
    std::uint64_t now = uv_now(loop_);
    armed_for_ = due;
    uv_timer_start(timer_.get(), &timer_queue::on_timer, due > now ? due - now : 0, 0);
}

void timer_queue::on_timer(uv_timer_t* t) noexcept {
    auto* q = static_cast<timer_queue*>(t->data);
    if (!q) return;
    q->armed_for_ = UINT64_MAX;
    std::uint64_t now = uv_now(q->loop_);
    // Fire only what was due when we started: an entry re-armed with zero delay by a callback
    // runs on the next turn, so one turn cannot starve the rest of the loop. Entries armed from
    // here on carry this pass's epoch. (An entry armed now is due no earlier than `now`, and an
    // older one due at `now` has the longer delay, so every older due entry sorts before it.)
    std::uint16_t during = ++q->epoch_;
    while (!q->heap_.empty()) {
        timer_entry* e = q->heap_.front()->head;
        if (e->due_ > now || e->epoch_ == during) break;
        q->disarm(*e);
        e->fire(); // may arm or cancel other entries, or destroy `e`'s owner
    }
    q->rearm();
}

void delayed_call::fire() noexcept {
    try {
        if (fn_) fn_();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "mayhem: delayed call failed: %s\n", e.what());
    }
}

// ---------------------------------------------------------------------------------------------
// loop
// ---------------------------------------------------------------------------------------------

loop::loop() {
    check_uv(uv_loop_init(&loop_), "uv_loop_init");
    timers_.emplace(&loop_);
    before_poll_ = uv_handle<uv_prepare_t>(
        [this](uv_prepare_t* h) { return uv_prepare_init(&loop_, h); }, "uv_prepare_init");
    before_poll_->data = this;
    uv_prepare_start(before_poll_.get(), &loop::on_prepare);
    uv_unref(before_poll_.base());
}

// A uv_stop() here makes this turn's poll not block; run_until() then sees done(). A predicate
// that throws (a test's failed check) stops the turn too, and throws again in run_until().
void loop::on_prepare(uv_prepare_t* h) noexcept {
    auto* l = static_cast<loop*>(h->data);
    if (!l || !l->until_.done) return;
    bool stop = true;
    try {
        stop = l->until_.done(l->until_.pred);
    } catch (...) {}
    if (stop) uv_stop(&l->loop_);
}

loop::~loop() {
    timers_.reset();
    before_poll_.close();
    // Let every close callback run (and any orphaned thread-pool work finish).
    uv_run(&loop_, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&loop_);
    if (rc != 0) {
        std::fprintf(stderr, "mayhem: event loop closed with live handles (%s)\n", uv_strerror(rc));
        uv_walk(
            &loop_,
            [](uv_handle_t* h, void*) {
                std::fprintf(stderr, "  open handle: %s\n", uv_handle_type_name(h->type));
            },
            nullptr);
#ifndef NDEBUG
        std::abort();
#endif
    }
}

// ---------------------------------------------------------------------------------------------
// periodic_timer, signal_watch
// ---------------------------------------------------------------------------------------------

periodic_timer::periodic_timer(loop& l, millis period, std::function<void()> fn)
    : timer_([&l](uv_timer_t* t) { return uv_timer_init(l.get(), t); }, "uv_timer_init"),
      fn_(std::move(fn)) {
    timer_->data = this;
    set_period(period);
}

void periodic_timer::set_period(millis period) {
    if (!timer_) return;
    auto ms = static_cast<std::uint64_t>(std::max<std::int64_t>(1, period.count()));
    check_uv(uv_timer_start(timer_.get(), &periodic_timer::on_tick, ms, ms), "uv_timer_start");
    // Housekeeping never keeps the process alive by itself.
    uv_unref(timer_.base());
}

void periodic_timer::on_tick(uv_timer_t* t) noexcept {
    auto* self = static_cast<periodic_timer*>(t->data);
    if (!self) return;
    try {
        self->fn_();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "mayhem: periodic task failed: %s\n", e.what());
    }
}

signal_watch::signal_watch(loop& l, int signum, std::function<void(int)> fn)
    : sig_([&l](uv_signal_t* s) { return uv_signal_init(l.get(), s); }, "uv_signal_init"),
      fn_(std::move(fn)) {
    sig_->data = this;
    check_uv(uv_signal_start(sig_.get(), &signal_watch::on_signal, signum), "uv_signal_start");
}

void signal_watch::on_signal(uv_signal_t* s, int signum) noexcept {
    auto* self = static_cast<signal_watch*>(s->data);
    if (!self) return;
    try {
        self->fn_(signum);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "mayhem: signal handler failed: %s\n", e.what());
    }
}

} // namespace mayhem::rt
