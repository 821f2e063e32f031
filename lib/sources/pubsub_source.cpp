#include "sources/pubsub_source.hpp"

#include "runtime/log.hpp"
#include "sources/pubsub_rest.hpp"

#include <algorithm>
#include <iterator>
#include <span>

namespace mayhem {

namespace {

// After a pull that brought nothing, the next one waits this long (pulls return at once).
constexpr rt::millis empty_pause{100};
// Pulls under way at once at most: one is answered while the other is being delivered. Pulls,
// verdicts and renewals do not wait for one another (each takes a connection of its own when
// others are under way). One call at a time was measured on the emulator: each call answered
// about twice as fast, no more messages a second (BENCHMARKS.md, "Pub/Sub").
constexpr unsigned max_pulls = 2;
// The backoff after failed calls: 100 ms doubling per failure in a row, at most 5 s.
constexpr rt::millis cool_base{100};
constexpr rt::millis cool_cap{5000};
// After a forced stop, how long the verdicts still sent may take before they are given up.
constexpr rt::millis force_wait{1000};

enum class result : std::uint8_t { ok, transient, refused };

result classify(const http_response& r) {
    if (r.status >= 200 && r.status < 300) return result::ok;
    if (r.status == 0 || pubsub::transient_status(r.status)) return result::transient;
    return result::refused;
}

std::string describe(const http_response& r) {
    return r.status == 0 ? r.error : pubsub::error_text(r.status, r.body);
}

} // namespace

pubsub_source::pubsub_source(rt::loop& loop, pubsub_source_options opts)
    : loop_(loop), opts_(std::move(opts)), http_(loop),
      idle_([&loop](uv_idle_t* h) { return uv_idle_init(loop.get(), h); }, "uv_idle_init"),
      cool_timer_([this] {
          cooling_ = false;
          kick();
      }),
      pause_timer_([this] {
          check_idle();
          kick();
      }),
      force_timer_([this] { give_up(); }) {
    idle_->data = this;
    if (opts_.credentials)
        auth_ =
            std::make_unique<gcp::token_source>(loop_, http_, opts_.key, [this] { on_token(); });
    opts_.max_pull = std::clamp<std::size_t>(opts_.max_pull, 1, pubsub::max_pull);
}

pubsub_source::~pubsub_source() {
    close();
}

std::string_view pubsub_source::name_of(state s) noexcept {
    switch (s) {
    case state::created:
        return "created";
    case state::running:
        return "running";
    case state::draining:
        return "draining";
    case state::idle:
        return "idle";
    case state::forced:
        return "forced";
    case state::gave_up:
        return "gave_up";
    case state::closed:
        return "closed";
    }
    return "?";
}

void pubsub_source::enter(state next, std::string_view why) {
    log::info("pubsub source state",
              {{"from", name_of(state_)}, {"to", name_of(next)}, {"why", why}});
    state_ = next;
}

const std::string& pubsub_source::bearer() const noexcept {
    static const std::string none;
    return auth_ ? auth_->token() : none;
}

bool pubsub_source::unauthorized(const http_response& r, const std::string& used) {
    if (!auth_ || r.status != 401) return false;
    auth_->rejected(used);
    return true;
}

// A token came (calls may go: a turn sends what waited) or there is none (not ready).
void pubsub_source::on_token() {
    if (!sink_ || state_ == state::closed) return;
    if (can_send()) kick();
    sink_->source_changed();
}

std::string pubsub_source::url(std::string_view resource, std::string_view method) const {
    std::string u = opts_.endpoint;
    u += "/v1/";
    u += resource;
    u += ':';
    u += method;
    return u;
}

// ---------------------------------------------------------------------------------------------
// The source seam
// ---------------------------------------------------------------------------------------------

void pubsub_source::start(source_sink& sink) {
    sink_ = &sink;
    last_message_at_ = loop_.now();
    lease_timer_ =
        std::make_unique<rt::periodic_timer>(loop_, opts_.lease_extend, [this] { renew(); });
    enter(state::running, "started");
    log::info("pubsub source started", {{"endpoint", opts_.endpoint},
                                        {"subscription", opts_.subscription},
                                        {"dead_letter_topic", opts_.dead_letter_topic},
                                        {"credentials", auth_ ? auth_->where() : "none"}});
    if (auth_) auth_->start();
    kick();
}

void pubsub_source::request(std::size_t n) {
    demand_ += n;
    kick();
}

void pubsub_source::settle(delivery d, const verdict& v) {
    held_.erase(d.ref);
    ++unconfirmed_;
    item i{std::move(d.ref), v.what, true};
    if (state_ == state::gave_up || state_ == state::closed) {
        report(i, outcome::released); // not acked: the broker redelivers once its deadline lapses
        return;
    }
    switch (v.what) {
    case outcome::acked:
    case outcome::skipped:
        acks_.push_back(std::move(i));
        break;
    case outcome::dead_lettered:
        dead_.push_back({std::move(i), std::move(d.payload), v.reason, d.attempt});
        break;
    case outcome::retried: {
        // Whole seconds, rounded up: the broker redelivers no earlier than the backoff.
        auto s = (v.retry_after.count() + 999) / 1000;
        mods_[static_cast<int>(std::clamp<std::int64_t>(s, 0, pubsub::max_ack_deadline_s))]
            .push_back(std::move(i));
        break;
    }
    case outcome::released:
        mods_[0].push_back(std::move(i));
        break;
    }
    kick();
}

void pubsub_source::stop() {
    if (state_ == state::running || state_ == state::created) enter(state::draining, "stop");
    pause_timer_.cancel();
    sink_->source_changed();
}

bool pubsub_source::finished() const {
    switch (state_) {
    case state::idle:
        return true;
    case state::draining:
    case state::forced:
    case state::gave_up:
        return pulls_ == 0 && unconfirmed_ == 0 && held_.empty();
    default:
        return false;
    }
}

// A forced stop still sends what is queued, at once and once (a release becomes a nack, so
// the broker redelivers at once); what the API has not confirmed after force_wait, or refuses,
// is given up: reported released, redelivered once its deadline lapses.
void pubsub_source::force_stop() {
    if (state_ != state::running && state_ != state::draining && state_ != state::idle) return;
    enter(state::forced, "forced stop");
    pause_timer_.cancel();
    cooling_ = false;
    cool_timer_.cancel();
    loop_.timers().arm(force_timer_, force_wait);
    kick();
    sink_->source_changed();
}

void pubsub_source::give_up() {
    if (state_ != state::forced) return;
    enter(state::gave_up, "the API did not confirm every verdict in time");
    for (auto& c : calls_) {
        if (c.dropped) continue;
        c.dropped = true;
        for (const auto& i : c.items)
            report(i, outcome::released);
        for (const auto& d : c.dead)
            report(d.it, outcome::released);
    }
    for (const auto& i : acks_)
        report(i, outcome::released);
    for (const auto& [s, items] : mods_)
        for (const auto& i : items)
            report(i, outcome::released);
    for (const auto& d : dead_)
        report(d.it, outcome::released);
    acks_.clear();
    mods_.clear();
    dead_.clear();
    sink_->source_changed();
}

void pubsub_source::close() {
    if (state_ == state::closed) return;
    if (unconfirmed_ > 0)
        log::warn("pubsub source closed with verdicts the API did not confirm (the broker "
                  "redelivers those messages once their deadline lapses)",
                  {{"unconfirmed", unconfirmed_}});
    enter(state::closed, "closed");
    lease_timer_.reset();
    cool_timer_.cancel();
    pause_timer_.cancel();
    force_timer_.cancel();
    idle_.close();
    http_.close();
    auth_.reset();
}

// ---------------------------------------------------------------------------------------------
// One turn: verdicts out, then pulls for the demand
// ---------------------------------------------------------------------------------------------

void pubsub_source::kick() {
    if (state_ == state::closed || idle_on_) return;
    idle_on_ = true;
    uv_idle_start(idle_.get(), &pubsub_source::on_idle);
}

void pubsub_source::on_idle(uv_idle_t* h) noexcept {
    auto* self = static_cast<pubsub_source*>(h->data);
    if (!self) return;
    try {
        self->turn();
    } catch (const std::exception& e) {
        self->cool_down("turn", e.what());
    }
}

void pubsub_source::turn() {
    idle_on_ = false;
    uv_idle_stop(idle_.get());
    flush();
    pull();
}

void pubsub_source::pull() {
    if (state_ != state::running || cooling_ || pause_timer_.armed() || !can_send()) return;
    while (pulls_ < max_pulls && demand_ > reserved_) {
        std::size_t n = std::min(demand_ - reserved_, opts_.max_pull);
        reserved_ += n;
        ++pulls_;
        // returnImmediately: a pull that waited for messages would hold up a drain (it waits
        // for every pull under way) and could not tell an idle subscription.
        http_.post(
            url(opts_.subscription, "pull"), pubsub::pull_body(n, true), opts_.call_timeout,
            [this, n, used = bearer()](http_response r) { on_pull(std::move(r), n, used); },
            bearer());
    }
}

void pubsub_source::on_pull(http_response r, std::size_t asked, const std::string& used) {
    --pulls_;
    reserved_ -= asked;
    unauthorized(r, used);
    std::optional<std::vector<pubsub::received>> got;
    std::string why;
    if (classify(r) == result::ok) {
        got = pubsub::parse_pull(r.body, &why);
        if (!got) why = "the reply to a pull does not parse: " + why;
    } else {
        why = describe(r);
    }
    if (!got) {
        cool_down("pull", why);
        if (state_ != state::running) sink_->source_changed(); // drained() may be true now
        return;
    }
    mark_up();
    if (got->empty()) {
        if (state_ == state::running) loop_.timers().arm(pause_timer_, empty_pause);
        check_idle();
        if (state_ != state::running) sink_->source_changed();
        return;
    }
    last_message_at_ = loop_.now();
    for (auto& m : *got) {
        if (demand_ == 0) { // more than was asked for: handed back at once
            mods_[0].push_back({std::move(m.ack_id), outcome::released, false});
            continue;
        }
        if (!m.data_valid)
            log::warn("pubsub: a message's data is not base64; delivered as it came",
                      {{"message_id", m.message_id}});
        --demand_;
        held_.insert(m.ack_id);
        delivery d;
        d.payload = std::move(m.payload);
        d.ref = std::move(m.ack_id);
        d.attempt = std::max<std::uint32_t>(1, m.attempt);
        sink_->deliver(std::move(d));
        if (state_ == state::closed) return;
    }
    if (state_ != state::running) sink_->source_changed();
    kick();
}

// --exit-when-idle: pulls brought nothing for idle_after and nothing is held or unconfirmed.
void pubsub_source::check_idle() {
    if (!opts_.exit_when_idle || state_ != state::running) return;
    if (pulls_ > 0 || !held_.empty() || unconfirmed_ > 0 || !calls_.empty()) return;
    if (loop_.now() - last_message_at_ < static_cast<std::uint64_t>(opts_.idle_after.count()))
        return;
    enter(state::idle, "no message for --exit-when-idle's 1s and nothing in flight");
    pause_timer_.cancel();
    sink_->source_changed();
}

// ---------------------------------------------------------------------------------------------
// Verdicts: one call per kind (and per deadline) for everything settled in a turn
// ---------------------------------------------------------------------------------------------

void pubsub_source::flush() {
    if (state_ == state::gave_up || state_ == state::closed) return;
    if (cooling_ && state_ != state::forced) return;
    if (!can_send()) return; // the verdicts wait for a token (a forced stop gives them up)
    if (!dead_.empty()) {
        auto dead = std::move(dead_);
        dead_.clear();
        for (std::size_t at = 0; at < dead.size(); at += pubsub::max_publish) {
            call c;
            auto end = std::min(dead.size(), at + pubsub::max_publish);
            c.dead.assign(std::make_move_iterator(dead.begin() + static_cast<long>(at)),
                          std::make_move_iterator(dead.begin() + static_cast<long>(end)));
            send(std::move(c));
        }
    }
    auto ship = [&](std::vector<item>& items, int deadline_s) {
        for (std::size_t at = 0; at < items.size(); at += pubsub::max_ack_ids) {
            call c;
            c.deadline_s = deadline_s;
            auto end = std::min(items.size(), at + pubsub::max_ack_ids);
            c.items.assign(std::make_move_iterator(items.begin() + static_cast<long>(at)),
                           std::make_move_iterator(items.begin() + static_cast<long>(end)));
            send(std::move(c));
        }
        items.clear();
    };
    if (!acks_.empty()) {
        auto acks = std::move(acks_);
        acks_.clear();
        ship(acks, -1);
    }
    auto mods = std::move(mods_);
    mods_.clear();
    for (auto& [s, items] : mods)
        ship(items, s);
}

void pubsub_source::send(call c) {
    calls_.push_back(std::move(c));
    auto it = std::prev(calls_.end());
    std::string body, where;
    if (!it->dead.empty()) {
        std::vector<pubsub::outgoing> out;
        out.reserve(it->dead.size());
        for (const auto& d : it->dead)
            out.push_back({d.payload,
                           {},
                           {{"reason", d.reason},
                            {"attempts", std::to_string(d.attempt)},
                            {"subscription", opts_.subscription}}});
        body = pubsub::publish_body(out);
        where = url(opts_.dead_letter_topic, "publish");
    } else {
        std::vector<std::string> ids;
        ids.reserve(it->items.size());
        for (const auto& i : it->items)
            ids.push_back(i.ack_id);
        if (it->deadline_s < 0) {
            body = pubsub::acknowledge_body(ids);
            where = url(opts_.subscription, "acknowledge");
        } else {
            body = pubsub::modify_deadline_body(ids, it->deadline_s);
            where = url(opts_.subscription, "modifyAckDeadline");
        }
    }
    http_.post(
        where, std::move(body), opts_.call_timeout,
        [this, it, used = bearer()](http_response r) { on_sent(it, std::move(r), used); },
        bearer());
}

void pubsub_source::on_sent(std::list<call>::iterator it, http_response r,
                            const std::string& used) {
    call c = std::move(*it);
    calls_.erase(it);
    if (c.dropped) return;
    bool token_refused = unauthorized(r, used);
    const char* what = !c.dead.empty()    ? "publish to the dead-letter topic"
                       : c.deadline_s < 0 ? "acknowledge"
                                          : "modifyAckDeadline";
    switch (token_refused ? result::transient : classify(r)) {
    case result::ok:
        mark_up();
        if (!c.dead.empty()) {
            // Now in the dead-letter topic: acknowledged next, as dead_lettered.
            for (auto& d : c.dead)
                acks_.push_back(std::move(d.it));
            kick();
        } else {
            for (const auto& i : c.items)
                report(i, i.what);
        }
        break;
    case result::transient:
        if (state_ == state::forced) { // no time to wait for the endpoint
            for (const auto& i : c.items)
                report(i, outcome::released);
            for (const auto& d : c.dead)
                report(d.it, outcome::released);
            break;
        }
        // Sent again after the backoff (an acknowledge twice is harmless).
        for (auto& d : c.dead)
            dead_.push_back(std::move(d));
        for (auto& i : c.items)
            (c.deadline_s < 0 ? acks_ : mods_[c.deadline_s]).push_back(std::move(i));
        cool_down(what, describe(r));
        break;
    case result::refused:
        ++refused_;
        if (c.deadline_s < 0 && c.dead.empty()) {
            refused_ack(c, r);
            break;
        }
        // Sending it again cannot help: nothing was acked, the broker redelivers.
        log::error(
            "pubsub: the API refused a call; its messages are not acked and are "
            "redelivered once their deadline lapses",
            {{"call", what}, {"error", describe(r)}, {"messages", c.items.size() + c.dead.size()}});
        for (const auto& i : c.items)
            report(i, outcome::released);
        for (const auto& d : c.dead)
            report(d.it, outcome::released);
        break;
    }
}

// An acknowledge the API refused. On an exactly-once subscription an ack can fail (its ack id
// expired, or the message went to another worker): the reply's ErrorInfo names the ack ids that
// did not take, and the call's others did. Whatever did not take is not acked: reported
// released, counted, redelivered by the broker; the store's record absorbs the redelivery.
// Without that list, none took.
void pubsub_source::refused_ack(const call& c, const http_response& r) {
    auto failed = pubsub::ack_failures(r.body);
    std::uint64_t refused = 0;
    std::string reason;
    for (const auto& i : c.items) {
        if (failed) {
            auto f = failed->find(i.ack_id);
            if (f == failed->end()) {
                report(i, i.what);
                continue;
            }
            if (reason.empty()) reason = f->second;
        }
        ++refused;
        report(i, outcome::released);
    }
    stats_.acks_refused.inc(refused);
    if (refused > 0 && refused_log_.allow(loop_.now()))
        log::warn("pubsub: acks did not take; those messages are not acked and are redelivered",
                  {{"refused", refused},
                   {"acked", c.items.size() - refused},
                   {"reason", reason.empty() ? describe(r) : reason}});
}

void pubsub_source::report(const item& i, outcome o) {
    if (!i.report) return;
    --unconfirmed_;
    sink_->settled(o);
}

// ---------------------------------------------------------------------------------------------
// Leases: one modifyAckDeadline per tick for everything held
// ---------------------------------------------------------------------------------------------

// Sent at the tick, beside whatever calls are under way: a pull or an acknowledge that takes
// long never holds a renewal back, so no lease lapses behind one.
void pubsub_source::renew() {
    if (held_.empty() || (state_ != state::running && state_ != state::draining)) return;
    if (!can_send()) return;
    int seconds = static_cast<int>(std::clamp<std::int64_t>(opts_.ack_deadline.count() / 1000, 10,
                                                            pubsub::max_ack_deadline_s));
    std::vector<std::string> ids(held_.begin(), held_.end());
    for (std::size_t at = 0; at < ids.size(); at += pubsub::max_ack_ids) {
        auto end = std::min(ids.size(), at + pubsub::max_ack_ids);
        std::span<const std::string> chunk(ids.data() + at, end - at);
        http_.post(
            url(opts_.subscription, "modifyAckDeadline"),
            pubsub::modify_deadline_body(chunk, seconds), opts_.call_timeout,
            [this, used = bearer()](http_response r) { on_renewed(r, used); }, bearer());
    }
}

void pubsub_source::on_renewed(const http_response& r, const std::string& used) {
    switch (unauthorized(r, used) ? result::transient : classify(r)) {
    case result::ok:
        mark_up();
        break;
    case result::transient:
        cool_down("modifyAckDeadline (leases)", describe(r));
        break;
    case result::refused:
        log::warn("pubsub: a lease renewal was refused", {{"error", describe(r)}});
        break;
    }
}

// ---------------------------------------------------------------------------------------------
// The endpoint's health: up after a call succeeded, down and cooled down after one failed
// ---------------------------------------------------------------------------------------------

void pubsub_source::mark_up() {
    failures_ = 0;
    if (up_) return;
    up_ = true;
    if (ever_up_) {
        ++reconnects_;
        log::info("pubsub: the endpoint answers again", {{"endpoint", opts_.endpoint}});
    }
    ever_up_ = true;
    sink_->source_changed();
}

void pubsub_source::cool_down(const char* what, const std::string& why) {
    ++failures_;
    auto delay = std::min(cool_cap, cool_base * (1 << std::min(failures_ - 1, 6u)));
    log::warn("pubsub: a call failed; not ready, trying again after a pause",
              {{"call", what},
               {"error", why},
               {"endpoint", opts_.endpoint},
               {"retry_in_ms", static_cast<long long>(delay.count())}});
    bool was_up = up_;
    up_ = false;
    if (!cooling_ && state_ != state::closed) {
        cooling_ = true;
        loop_.timers().arm(cool_timer_, delay);
    }
    if (was_up) sink_->source_changed();
}

} // namespace mayhem
