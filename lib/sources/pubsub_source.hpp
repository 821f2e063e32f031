// `--source pubsub`: a subscriber of a Google Cloud Pub/Sub subscription through the REST API
// (v1 pull, acknowledge, modifyAckDeadline, publish), every call on the worker's loop through
// http_client (libcurl multi on libuv). Any number of workers share one subscription.
//
// What a verdict means here (README, "Google Cloud Pub/Sub"):
//  - acked / skipped: acknowledge; batched, one call for everything settled in a loop turn. The
//    pipeline hears `settled` only once the API answered 200.
//  - dead_lettered: published to the dead-letter topic (data as received, attributes reason,
//    message_id, attempts, subscription), then acknowledged; never acked without its
//    dead-letter message.
//  - retried: modifyAckDeadline to the backoff delay (whole seconds, at most 600): the broker
//    redelivers it then, to any worker.
//  - released (drain, lease lost): modifyAckDeadline 0, the broker redelivers it at once.
// A call the API refused for good (4xx other than 408/429) is not sent again: its messages are
// reported `released` and the broker redelivers them once their deadline lapses. A call that
// failed for a while (unreachable, 408/429/5xx, a body that does not parse) is sent again after
// a backoff; meanwhile the source is down (readiness) and pulls nothing.
//
// Leases: the source renews every message it has delivered and holds no verdict for, queued or
// in flight, with one modifyAckDeadline per --lease-extend-interval (chunks of 2,500 ids) that
// sets the deadline to --lease-timeout. The pipeline's own extend() calls are therefore not
// needed and ignored. A message is never held unleased: it is pulled only when the pipeline has
// room for it, and the subscription's deadline covers it until the first renewal.
//
// The attempt of a delivery is the API's deliveryAttempt when the subscription has a
// dead-letter policy (so it feeds --max-attempts), else 1.
//
// Threading: loop thread only.
#pragma once

#include "runtime/counter.hpp"
#include "runtime/log_budget.hpp"
#include "runtime/loop.hpp"
#include "sources/gcp_credentials.hpp"
#include "sources/gcp_token_source.hpp"
#include "sources/http_client.hpp"
#include "sources/source.hpp"

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

namespace mayhem {

// For /metrics: written on the loop thread, read by the HTTP threads (atomic counters).
struct pubsub_source_stats {
    // Acks the API refused (exactly-once delivery: an expired or invalid ack id), each counted
    // once; those messages were reported released, not acked.
    rt::counter acks_refused;
};

struct pubsub_source_options {
    std::string endpoint;          // base URL, e.g. https://pubsub.googleapis.com
    std::string subscription;      // projects/P/subscriptions/S
    std::string dead_letter_topic; // projects/P/topics/T
    bool exit_when_idle = false;
    rt::millis lease_extend{2000};  // how often held messages' deadlines are extended
    rt::millis ack_deadline{60000}; // what each extension sets (whole seconds, 10..600)
    rt::millis idle_after{1000};    // --exit-when-idle: pulls empty this long, nothing held
    std::size_t max_pull = 1000;    // messages per pull at most
    rt::millis call_timeout{30000};
    // Application Default Credentials: off for an emulator. With them every call carries an
    // access token from `key` (a service-account key file) or, when null, the metadata server;
    // while there is none, nothing is sent and the source is not up.
    bool credentials = false;
    std::shared_ptr<const gcp::service_account> key;
};

class pubsub_source final : public source {
public:
    pubsub_source(rt::loop& loop, pubsub_source_options opts);
    ~pubsub_source() override;
    std::string_view name() const override { return "pubsub"; }

    void start(source_sink& sink) override;
    void request(std::size_t n) override;
    void settle(delivery d, const verdict& v) override;
    void stop() override;
    bool finished() const override;
    bool drained() const override { return pulls_ == 0; }
    bool up() const override { return up_ && can_send(); }
    std::uint64_t reconnects() const override { return reconnects_; }
    void force_stop() override;
    void close() override;

    // Calls the API refused for good; their messages were reported released.
    std::uint64_t refused_calls() const noexcept { return refused_; }
    // Acks the API refused (on an exactly-once subscription: expired or invalid ack ids); those
    // messages were reported released, not acked.
    std::uint64_t refused_acks() const noexcept { return stats_.acks_refused.get(); }
    const pubsub_source_stats& stats() const noexcept { return stats_; }

private:
    // The source's life. Independently of it the endpoint is up, or failing and cooled down.
    enum class state : std::uint8_t {
        created,  // start() not called yet
        running,  // pulls for the pipeline's demand, verdicts go out
        draining, // stop(): no new pull; the pulls under way and the verdicts finish
        idle,     // --exit-when-idle: nothing came for idle_after and nothing is held
        forced,   // force_stop(): what is queued goes out once; failures are given up
        gave_up,  // force_wait passed: every unconfirmed verdict was reported released
        closed,   // close(): handles freed
    };
    // One verdict waiting to go out.
    struct item {
        std::string ack_id;
        outcome what = outcome::acked;
        bool report = true; // the pipeline awaits `settled` for it
    };
    struct dead_item {
        item it;
        std::string payload, reason;
        std::uint32_t attempt = 1;
    };
    // One call carrying verdicts, until the API answered.
    struct call {
        std::vector<item> items;
        std::vector<dead_item> dead; // a publish to the dead-letter topic
        int deadline_s = -1;         // modifyAckDeadline to this; -1: acknowledge
        bool dropped = false;        // reported released by give_up(): ignore the reply
    };

    static std::string_view name_of(state s) noexcept;
    void enter(state next, std::string_view why);

    static void on_idle(uv_idle_t* h) noexcept;
    void kick();
    void turn();
    void pull();
    void on_pull(http_response r, std::size_t asked, const std::string& used);
    void flush();
    void send(call c);
    void on_sent(std::list<call>::iterator it, http_response r, const std::string& used);
    void renew();
    void on_renewed(const http_response& r, const std::string& used);
    void mark_up();
    void cool_down(const char* what, const std::string& why);
    void refused_ack(const call& c, const http_response& r);
    void report(const item& i, outcome o);
    void check_idle();
    void give_up();
    std::string url(std::string_view resource, std::string_view method) const;
    // Credentials: the token to send (empty without credentials), whether a call may go now, and
    // what a 401 to a call that carried `used` means (true: the token was refused, send again).
    const std::string& bearer() const noexcept;
    bool can_send() const noexcept { return !auth_ || !auth_->token().empty(); }
    bool unauthorized(const http_response& r, const std::string& used);
    void on_token();

    rt::loop& loop_;
    pubsub_source_options opts_;
    source_sink* sink_ = nullptr;
    http_client http_;
    std::unique_ptr<gcp::token_source> auth_; // null: no credentials (an emulator)
    rt::uv_handle<uv_idle_t> idle_;
    std::unique_ptr<rt::periodic_timer> lease_timer_;
    rt::delayed_call cool_timer_;
    rt::delayed_call pause_timer_; // after an empty pull: the next one waits
    rt::delayed_call force_timer_; // a forced stop's verdicts are given up

    state state_ = state::created;
    std::size_t demand_ = 0;   // granted, not delivered
    std::size_t reserved_ = 0; // of it, asked for by pulls under way
    unsigned pulls_ = 0;
    std::size_t unconfirmed_ = 0; // verdicts taken from the pipeline, not yet reported settled
    std::unordered_set<std::string> held_; // ack ids delivered, no verdict yet: leases renewed
    std::vector<item> acks_;
    std::map<int, std::vector<item>> mods_; // by deadline in seconds
    std::vector<dead_item> dead_;
    std::list<call> calls_; // verdict calls awaiting the API's answer

    bool up_ = false;       // the last call succeeded
    bool ever_up_ = false;  // a call succeeded once: a failure after it is an outage
    bool cooling_ = false;  // after a failed call: nothing is sent until cool_timer_
    unsigned failures_ = 0; // failed calls in a row (the backoff)
    bool idle_on_ = false;
    std::uint64_t last_message_at_ = 0; // loop time of the last non-empty pull (or the start)
    std::uint64_t reconnects_ = 0;
    std::uint64_t refused_ = 0;
    pubsub_source_stats stats_;
    // Refused acks: logged at a bounded rate, all counted.
    rt::log_budget refused_log_{10, "refused pubsub acks", "mayhem_pubsub_acks_refused_total"};
};

} // namespace mayhem
