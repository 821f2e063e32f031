#include "sources/local_source.hpp"

#include <algorithm>

namespace mayhem {

// One delivery per loop turn at most this many, so a source that can produce without end
// (the simulator at full speed) still lets signals, timers and I/O run between batches.
static constexpr std::size_t max_batch = 1024;

struct local_source::redelivery final : rt::timer_entry {
    local_source& src;
    delivery d;
    rt::owned_node<redelivery> node{this};
    redelivery(local_source& s, delivery dv) : src(s), d(std::move(dv)) {}
    void fire() noexcept override { src.redeliver(this); }
};

local_source::local_source(rt::loop& loop)
    : loop_(loop),
      idle_([&loop](uv_idle_t* h) { return uv_idle_init(loop.get(), h); }, "uv_idle_init") {
    idle_->data = this;
}

local_source::~local_source() {
    close();
}

void local_source::start(source_sink& sink) {
    sink_ = &sink;
    on_start();
}

void local_source::request(std::size_t n) {
    demand_ += n;
    resume();
}

void local_source::resume() {
    if (closed_ || idle_on_ || demand_ == 0) return;
    idle_on_ = true;
    uv_idle_start(idle_.get(), &local_source::on_idle);
}

void local_source::on_idle(uv_idle_t* h) noexcept {
    auto* self = static_cast<local_source*>(h->data);
    if (self) self->turn();
}

void local_source::turn() {
    std::size_t budget = std::min(demand_, max_batch);
    while (budget > 0 && !ready_.empty()) {
        delivery d = std::move(ready_.front());
        ready_.pop_front();
        emit(std::move(d));
        --budget;
    }
    bool asked = budget > 0 && !stopped_ && !exhausted();
    std::size_t produced = asked ? produce(budget) : 0;
    // Keep turning only while there is demand and something to deliver right now. produce()
    // returning 0 means "nothing now, I will resume()"; but when redeliveries used up the whole
    // budget it was not asked at all, and the demand the sink granted back meanwhile (its
    // request() is a no-op while we are turning) must still be served on the next turn.
    bool can_produce = !stopped_ && !exhausted() && (!asked || produced > 0);
    bool more = demand_ > 0 && (!ready_.empty() || can_produce);
    if (!more && idle_on_) {
        idle_on_ = false;
        uv_idle_stop(idle_.get());
    }
    if (exhausted() || stopped_) sink_->source_changed();
}

void local_source::emit(delivery d) {
    if (demand_ > 0) --demand_;
    ++outstanding_;
    sink_->deliver(std::move(d));
}

void local_source::settle(delivery d, const verdict& v) {
    --outstanding_;
    if (v.what == outcome::retried) {
        d.attempt += 1;
        if (closed_) {
            ++abandoned_;
        } else {
            auto* r = new redelivery(*this, std::move(d));
            waiting_.push_back(r->node);
            loop_.timers().arm(*r, v.retry_after);
        }
    }
    sink_->settled(v.what);
}

void local_source::redeliver(redelivery* r) {
    std::unique_ptr<redelivery> owned(r);
    r->node.unlink();
    ready_.push_back(std::move(r->d));
    resume();
}

void local_source::stop() {
    if (stopped_) return;
    stopped_ = true;
    on_stop();
}

bool local_source::finished() const {
    return (stopped_ || exhausted()) && outstanding_ == 0 && ready_.empty() && waiting_.empty();
}

void local_source::close() {
    if (closed_) return;
    closed_ = true;
    stopped_ = true;
    abandoned_ += ready_.size();
    ready_.clear();
    while (auto* n = waiting_.front()) {
        ++abandoned_;
        delete static_cast<rt::owned_node<redelivery>*>(n)->owner; // unlinks and disarms
    }
    idle_.close();
    on_close();
}

} // namespace mayhem
