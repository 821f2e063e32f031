// The shared machinery of sources that live in this process (simulate, stdin): demand
// accounting, delivery in batches on an idle turn of the loop (never from inside a pipeline
// call), and redelivery of retried messages after their backoff. Such a source cannot redeliver
// after the process exits: a retry still waiting at close is counted as abandoned.
#pragma once

#include "runtime/list.hpp"
#include "runtime/loop.hpp"
#include "sources/source.hpp"

#include <deque>
#include <memory>

namespace mayhem {

class local_source : public source {
public:
    explicit local_source(rt::loop& loop);
    ~local_source() override;

    void start(source_sink& sink) override;
    void request(std::size_t n) override;
    void settle(delivery d, const verdict& v) override;
    void stop() override;
    bool finished() const override;
    std::size_t abandoned() const override { return abandoned_; }
    void close() override;

protected:
    // Produce up to `n` new deliveries by calling emit(); return how many were produced. Return
    // 0 to say nothing is available right now (call resume() when there is).
    virtual std::size_t produce(std::size_t n) = 0;
    // No new delivery will ever be produced.
    virtual bool exhausted() const = 0;
    virtual void on_start() {}
    virtual void on_stop() {}
    virtual void on_close() {}

    void emit(delivery d);
    // Something became available (data read, rate token): schedule a delivery turn.
    void resume();
    bool stopped() const noexcept { return stopped_; }
    source_sink* sink() noexcept { return sink_; }
    rt::loop& loop() noexcept { return loop_; }

private:
    struct redelivery;
    static void on_idle(uv_idle_t* h) noexcept;
    void turn();
    void redeliver(redelivery* r);

    rt::loop& loop_;
    source_sink* sink_ = nullptr;
    rt::uv_handle<uv_idle_t> idle_;
    std::size_t demand_ = 0;
    std::size_t outstanding_ = 0; // delivered, no verdict yet
    std::deque<delivery> ready_;  // retries whose backoff has passed
    rt::intrusive_list waiting_;  // retries in backoff
    std::size_t abandoned_ = 0;
    bool stopped_ = false;
    bool closed_ = false;
    bool idle_on_ = false;
};

} // namespace mayhem
