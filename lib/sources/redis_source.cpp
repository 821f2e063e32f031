#include "sources/redis_source.hpp"

#include "runtime/duration.hpp"
#include "runtime/log.hpp"

#include <algorithm>
#include <hiredis/hiredis.h>
#include <nlohmann/json.hpp>

namespace mayhem {

using namespace std::literals;

namespace {

constexpr rt::millis cool_off{250};     // after a command error, before trying again
constexpr rt::millis force_grace{2000}; // forced stop: how long acks already sent may take

std::string_view str(const redisReply* r) {
    if (!r || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS)) return {};
    return {r->str, r->len};
}

// One stream entry of an XREADGROUP / XCLAIM / XAUTOCLAIM reply: [id, [field, value, ...]] or
// [id, nil] when the entry was deleted while pending.
bool parse_entry(const redisReply* e, std::string_view& id, std::string_view& payload,
                 bool& has_payload, bool& deleted) {
    if (!e || e->type != REDIS_REPLY_ARRAY || e->elements < 2) return false;
    id = str(e->element[0]);
    if (id.empty()) return false;
    const redisReply* fields = e->element[1];
    has_payload = false;
    deleted = !fields || fields->type == REDIS_REPLY_NIL;
    if (deleted) return true;
    if (fields->type != REDIS_REPLY_ARRAY) return false;
    for (std::size_t i = 0; i + 1 < fields->elements; i += 2) {
        if (str(fields->element[i]) == "payload") {
            payload = str(fields->element[i + 1]);
            has_payload = true;
            break;
        }
    }
    return true;
}

// XPENDING <key> <group> <start> <end> <count> <consumer> -> id -> delivery count.
std::unordered_map<std::string, std::uint32_t> parse_counts(const redisReply* r) {
    std::unordered_map<std::string, std::uint32_t> out;
    if (!r || r->type != REDIS_REPLY_ARRAY) return out;
    for (std::size_t i = 0; i < r->elements; ++i) {
        const redisReply* p = r->element[i];
        if (p->type != REDIS_REPLY_ARRAY || p->elements < 4) continue;
        if (p->element[3]->type != REDIS_REPLY_INTEGER) continue;
        out.emplace(std::string(str(p->element[0])),
                    static_cast<std::uint32_t>(std::max<long long>(1, p->element[3]->integer)));
    }
    return out;
}

std::string message_id_of(const std::string& payload) {
    auto j = nlohmann::json::parse(payload, nullptr, false);
    if (j.is_object()) {
        auto it = j.find("message_id");
        if (it != j.end() && it->is_string()) return it->get<std::string>();
    }
    return {};
}

// The argv of one command, kept alive until it is handed to hiredis (which copies it).
struct argv_builder {
    std::vector<const char*> ptrs;
    std::vector<std::size_t> lens;
    void add(std::string_view s) {
        ptrs.push_back(s.data());
        lens.push_back(s.size());
    }
    int argc() const { return static_cast<int>(ptrs.size()); }
};

} // namespace

// ---------------------------------------------------------------------------------------------
// Life cycle
// ---------------------------------------------------------------------------------------------

redis_source::redis_source(rt::loop& loop, redis_source_options opts)
    : loop_(loop), opts_(std::move(opts)),
      reader_(loop, opts_.endpoint, "reader",
              {[this] { link_up("reader"); },
               [this](const std::string& why) { link_down("reader", why); },
               [this](const std::string& why) { link_rejected("reader", why); }}),
      writer_(loop, opts_.endpoint, "writer",
              {[this] { link_up("writer"); },
               [this](const std::string& why) { link_down("writer", why); },
               [this](const std::string& why) { link_rejected("writer", why); }}),
      idle_([&loop](uv_idle_t* h) { return uv_idle_init(loop.get(), h); }, "uv_idle_init"),
      cool_timer_([this] {
          cooling_ = false;
          kick();
      }),
      force_timer_([this] { release_unconfirmed(); }) {
    idle_->data = this;
    if (opts_.dead_letter_stream.empty()) opts_.dead_letter_stream = opts_.stream + ":dead";
    if (opts_.max_read == 0) opts_.max_read = 1;
    if (opts_.max_batch == 0) opts_.max_batch = 1;
    if (opts_.lease_extend.count() <= 0) opts_.lease_extend = rt::millis{1};
}

redis_source::~redis_source() {
    close();
}

void redis_source::start(source_sink& sink) {
    sink_ = &sink;
    started_ = true;
    log::info("redis source starting", {{"url", opts_.endpoint.shown()},
                                        {"stream", opts_.stream},
                                        {"group", opts_.group},
                                        {"consumer", opts_.consumer},
                                        {"dead_letter_stream", opts_.dead_letter_stream},
                                        {"read_ahead", opts_.read_ahead}});
    reclaim_timer_ = std::make_unique<rt::periodic_timer>(loop_, opts_.reclaim_interval, [this] {
        reclaim_due_ = true;
        kick();
    });
    ahead_timer_ =
        std::make_unique<rt::periodic_timer>(loop_, opts_.lease_extend, [this] { renew_ahead(); });
    writer_.open();
    reader_.open();
}

void redis_source::request(std::size_t n) {
    demand_ += n;
    kick();
}

void redis_source::stop() {
    if (stopped_) return;
    stopped_ = true;
    // A blocking read would hold the reader (and the drain, which waits for reads under way)
    // for up to --block: end it now. What it returns is delivered within the demand left.
    if ((read_busy_ || reads_ > 0) && writer_.up() && reader_.client_id() >= 0) {
        writer_.send({"CLIENT", "UNBLOCK", std::to_string(reader_.client_id())}, {});
    }
    kick();
    if (sink_) sink_->source_changed();
}

bool redis_source::finished() const {
    return (stopped_ || idle_reached_) && unconfirmed_ == 0;
}

bool redis_source::up() const {
    return writer_.up() && reader_.up() && group_ready_;
}

void redis_source::force_stop() {
    if (forced_ || closed_) return;
    forced_ = true;
    stop();
    if (!writer_.up()) {
        release_unconfirmed();
    } else if (unconfirmed_ > 0) {
        loop_.timers().arm(force_timer_, force_grace);
    }
}

void redis_source::close() {
    if (closed_) return;
    closed_ = true;
    stopped_ = true;
    reclaim_timer_.reset();
    ahead_timer_.reset();
    cool_timer_.cancel();
    force_timer_.cancel();
    idle_.close();
    // Freeing the connections runs every pending reply callback with nullptr; they see closed_.
    reader_.close();
    writer_.close();
    if (!acks_.empty() || !dead_.empty() || unconfirmed_ > 0) {
        log::warn("redis source closed with verdicts Redis did not confirm (the entries stay "
                  "pending and are delivered again)",
                  {{"unconfirmed", unconfirmed_}});
    }
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

void redis_source::link_up(const char* role) {
    // A read (or reclaim) whose reply was lost with the old connection left entries pending
    // under this consumer that nobody works on: take them back now rather than after the lease.
    if (ever_up_) recover_due_ = true;
    log::info(ever_up_ ? "redis reconnected" : "redis connected",
              {{"role", role}, {"url", opts_.endpoint.shown()}});
    kick();
}

void redis_source::link_down(const char* role, const std::string& why) {
    log::warn("redis connection down, retrying with backoff",
              {{"role", role}, {"url", opts_.endpoint.shown()}, {"error", why}});
    if (ever_up_) lost_ = true;
    if (was_up_ && sink_) {
        was_up_ = false;
        sink_->source_changed();
    }
    if (forced_ && std::string_view(role) == "writer") release_unconfirmed();
}

void redis_source::link_rejected(const char* role, const std::string& why) {
    if (!ever_up_) {
        // Never worked: a wrong password or user does not fix itself by retrying, and a worker
        // that exits 1 at start says so louder than one that stays not-ready forever.
        fatal_ = "redis refused the credentials of " + opts_.endpoint.shown() + ": " + why;
        log::error("redis authentication failed", {{"role", role}, {"error", why}});
        if (sink_) sink_->source_changed();
        return;
    }
    // It worked before: the password may be in rotation. Keep retrying, loudly.
    log::error("redis authentication failed, retrying (it worked before)",
               {{"role", role}, {"error", why}});
}

// ---------------------------------------------------------------------------------------------
// The turn: everything the loop turn produced goes out together (one XACK, one MULTI), then
// reads for whatever demand is free.
// ---------------------------------------------------------------------------------------------

void redis_source::kick() {
    if (closed_ || turn_on_) return;
    turn_on_ = true;
    uv_idle_start(idle_.get(), &redis_source::on_idle);
}

void redis_source::on_idle(uv_idle_t* h) noexcept {
    auto* self = static_cast<redis_source*>(h->data);
    if (!self) return;
    self->turn_on_ = false;
    uv_idle_stop(h);
    try {
        self->turn();
    } catch (const std::exception& e) {
        log::error("redis source turn failed", {{"error", e.what()}});
    }
}

void redis_source::turn() {
    if (closed_ || !sink_) return;
    bool now_up = up();
    if (now_up != was_up_) {
        was_up_ = now_up;
        if (now_up) {
            // Both links back after an outage: one reconnect, however many attempts it took
            // and whichever link dropped. (A group re-created after NOGROUP is not one.)
            if (lost_) ++reconnects_;
            lost_ = false;
            ever_up_ = true;
        }
        sink_->source_changed();
    }
    if (stopped_ && fatal_.empty()) {
        // A stopping worker starts nothing new: what reads under way bring is not delivered but,
        // once no read is under way, left pending for any worker (even with Redis down).
        if (reads_ == 0) leave_ahead();
    }
    if (!fatal_.empty() || cooling_ || !writer_.up()) return;
    if (!group_ready_) {
        setup();
        return;
    }
    flush_acks();
    flush_dead();
    if (stopped_) {
        if (drained()) sink_->source_changed(); // a drain may be waiting for the last read
        return;
    }
    if (idle_reached_) return;
    if (!history_done_) {
        read_history();
        return;
    }
    // Claims go first: they take the demand before entries read ahead do, so orphans of dead
    // workers are not starved by a long backlog of new entries.
    if (recover_due_ && !reclaim_busy_ && demand_ > 0) recover();
    if (reclaim_due_ && !reclaim_busy_ && demand_ > 0) reclaim();
    deliver_ahead();
    if (!idle_check_busy_ && reader_.up()) read_new();
}

void redis_source::cool_down(const std::string& what, const std::string& error) {
    log::warn("redis command failed, trying again shortly", {{"command", what}, {"error", error}});
    if (cooling_ || closed_) return;
    cooling_ = true;
    loop_.timers().arm(cool_timer_, cool_off);
}

// The group is gone (Redis lost its data, someone ran XGROUP DESTROY): create it again.
bool redis_source::handle_nogroup(const std::string& error) {
    if (!error.starts_with("NOGROUP")) return false;
    if (group_ready_) log::warn("consumer group missing, creating it again", {{"error", error}});
    group_ready_ = false;
    kick();
    return true;
}

// Start-up (and after NOGROUP): check that the keys are streams (or absent), then create the
// group at the start of the stream, so entries published before the first worker ran are read.
void redis_source::setup() {
    if (setup_busy_) return;
    setup_busy_ = true;
    auto type_check = [this](std::string key) {
        return [this, key](redisReply* r) {
            if (closed_ || !r) return;
            auto t = str(r);
            if (!t.empty() && t != "none" && t != "stream" && fatal_.empty()) {
                fatal_ = "redis key '" + key + "' is a " + std::string(t) + ", not a stream";
                log::error("redis key has the wrong type", {{"key", key}, {"type", t}});
                sink_->source_changed();
            }
        };
    };
    writer_.send({"TYPE", opts_.stream}, type_check(opts_.stream));
    writer_.send({"TYPE", opts_.dead_letter_stream}, type_check(opts_.dead_letter_stream));
    bool sent = writer_.send(
        {"XGROUP", "CREATE", opts_.stream, opts_.group, "0", "MKSTREAM"}, [this](redisReply* r) {
            if (closed_) return;
            setup_busy_ = false;
            if (!r || !fatal_.empty()) return; // reconnect, or fatal
            std::string e = redis_link::error_of(r);
            if (!e.empty() && !e.starts_with("BUSYGROUP")) {
                if (e.starts_with("WRONGTYPE")) {
                    fatal_ = "redis key '" + opts_.stream + "' is not a stream";
                    sink_->source_changed();
                    return;
                }
                cool_down("XGROUP CREATE", e);
                return;
            }
            group_ready_ = true;
            kick();
        });
    if (!sent) setup_busy_ = false;
}

// ---------------------------------------------------------------------------------------------
// Verdicts
// ---------------------------------------------------------------------------------------------

void redis_source::settle(delivery d, const verdict& v) {
    ++unconfirmed_;
    ack_item a{std::move(d.ref), v.what, true};
    switch (v.what) {
    case outcome::acked:
    case outcome::skipped:
        if (closed_ || (forced_ && !writer_.up())) return report(a, outcome::released);
        acks_.push_back(std::move(a));
        kick();
        return;
    case outcome::dead_lettered: {
        if (closed_ || (forced_ && !writer_.up())) return report(a, outcome::released);
        dead_item di{std::move(a), std::move(d.payload), v.reason, {}, d.attempt};
        di.message_id = message_id_of(di.payload);
        dead_.push_back(std::move(di));
        kick();
        return;
    }
    case outcome::retried:
        // Left pending in the group: reclaimed once idle for --lease-timeout, by any worker.
        return report(a, v.what);
    case outcome::released:
        // Left pending too; at a drain (the restart never started) marked idle, so that a peer
        // takes it at once, like the entries read ahead.
        if (stopped_ && !forced_ && !closed_) {
            ahead_.push_back(entry{a.id, {}, false, false});
            kick();
        }
        return report(a, v.what);
    }
}

// The verdict for one item is carried out (or given up): tell the pipeline.
void redis_source::report(const ack_item& a, outcome o) {
    held_.erase(a.id);
    if (!a.report) return;
    --unconfirmed_;
    sink_->settled(o);
}

// Moves up to `max` items from the end of `from` into `to` (one round trip's worth).
template <class T>
static void take_batch(std::vector<T>& from, std::vector<T>& to, std::size_t max) {
    std::size_t n = std::min(from.size(), max);
    to.assign(std::make_move_iterator(from.end() - static_cast<std::ptrdiff_t>(n)),
              std::make_move_iterator(from.end()));
    from.resize(from.size() - n);
}

void redis_source::flush_acks() {
    while (!acks_.empty() && writer_.up()) {
        auto& b = sent_.emplace_back();
        take_batch(acks_, b.acks, opts_.max_batch);
        argv_builder av;
        av.add("XACK");
        av.add(opts_.stream);
        av.add(opts_.group);
        for (const auto& a : b.acks)
            av.add(a.id);
        auto it = std::prev(sent_.end());
        bool ok =
            writer_.send(av.argc(), av.ptrs.data(), av.lens.data(), [this, it](redisReply* r) {
                if (closed_) return;
                batch& bt = *it;
                if (bt.dropped) {
                    sent_.erase(it);
                    return;
                }
                std::string e = redis_link::error_of(r);
                if (!e.empty()) {
                    requeue(bt);
                    sent_.erase(it);
                    if (r && !handle_nogroup(e)) cool_down("XACK", e);
                    return;
                }
                confirmed(bt);
                sent_.erase(it);
            });
        if (!ok) {
            requeue(*it);
            sent_.erase(it);
            return;
        }
    }
}

// Dead letters: XADD each to the dead-letter stream and XACK them all, in one MULTI/EXEC, so an
// entry is never acked without its dead-letter record. (If the connection drops after EXEC ran
// but before its reply arrived, the batch is sent again: a dead-letter entry may then appear
// twice; it is never missing.)
void redis_source::flush_dead() {
    while (!dead_.empty() && writer_.up()) {
        auto& b = sent_.emplace_back();
        take_batch(dead_, b.dead, opts_.max_batch);
        auto it = std::prev(sent_.end());

        bool ok = writer_.send({"MULTI"}, {});
        std::vector<std::string> attempts;
        attempts.reserve(b.dead.size());
        for (const auto& d : b.dead) {
            attempts.push_back(std::to_string(d.attempts));
            argv_builder av;
            for (std::string_view s :
                 {std::string_view("XADD"), std::string_view(opts_.dead_letter_stream), "*"sv,
                  "payload"sv, std::string_view(d.payload), "reason"sv, std::string_view(d.reason),
                  "message_id"sv, std::string_view(d.message_id), "source_id"sv,
                  std::string_view(d.ack.id), "attempts"sv, std::string_view(attempts.back())})
                av.add(s);
            ok = ok && writer_.send(av.argc(), av.ptrs.data(), av.lens.data(), {});
        }
        argv_builder ack;
        ack.add("XACK");
        ack.add(opts_.stream);
        ack.add(opts_.group);
        for (const auto& d : b.dead)
            ack.add(d.ack.id);
        ok = ok && writer_.send(ack.argc(), ack.ptrs.data(), ack.lens.data(), {});
        ok = ok && writer_.send({"EXEC"}, [this, it](redisReply* r) {
            if (closed_) return;
            batch& bt = *it;
            if (bt.dropped) {
                sent_.erase(it);
                return;
            }
            std::string e = redis_link::error_of(r);
            if (e.empty() && r->type != REDIS_REPLY_ARRAY) e = "transaction aborted";
            if (!e.empty()) {
                requeue(bt);
                sent_.erase(it);
                if (r) cool_down("MULTI/XADD/XACK/EXEC", e);
                return;
            }
            for (std::size_t i = 0; i + 1 < r->elements; ++i) {
                if (r->element[i]->type == REDIS_REPLY_ERROR)
                    log::error("dead-letter XADD failed inside the transaction",
                               {{"error", redis_link::error_of(r->element[i])}});
            }
            // One line per batch: a flood of bad payloads must not flood the log (the pipeline
            // already logs why, rate-limited); each entry at debug level.
            log::info("dead letters written",
                      {{"count", bt.dead.size()}, {"stream", opts_.dead_letter_stream}});
            for (const auto& d : bt.dead) {
                log::debug("dead-lettered", {{"source_id", d.ack.id},
                                             {"message_id", d.message_id},
                                             {"reason", d.reason},
                                             {"attempts", d.attempts}});
            }
            confirmed(bt);
            sent_.erase(it);
        });
        if (!ok) {
            // The connection went away half-way: Redis discards an unfinished MULTI.
            if (!it->dropped) requeue(*it);
            sent_.erase(it);
            return;
        }
    }
}

void redis_source::confirmed(batch& b) {
    for (const auto& a : b.acks)
        report(a, a.what);
    for (const auto& d : b.dead)
        report(d.ack, d.ack.what);
}

// Not confirmed (connection lost, error): send again later, or give up if forced to stop.
void redis_source::requeue(batch& b) {
    for (auto& a : b.acks) {
        if (forced_)
            report(a, outcome::released);
        else
            acks_.push_back(std::move(a));
    }
    for (auto& d : b.dead) {
        if (forced_)
            report(d.ack, outcome::released);
        else
            dead_.push_back(std::move(d));
    }
    b.acks.clear();
    b.dead.clear();
}

// A forced stop with Redis unreachable (or too slow): every verdict not confirmed is reported
// released. The entries stay pending in the group; whoever reclaims them finds them done in
// the store and acks them without a second restart.
void redis_source::release_unconfirmed() {
    if (closed_) return;
    force_timer_.cancel();
    for (auto& b : sent_) {
        if (b.dropped) continue;
        b.dropped = true;
        for (const auto& a : b.acks)
            report(a, outcome::released);
        for (const auto& d : b.dead)
            report(d.ack, outcome::released);
    }
    auto acks = std::move(acks_);
    auto dead = std::move(dead_);
    acks_.clear();
    dead_.clear();
    for (const auto& a : acks)
        report(a, outcome::released);
    for (const auto& d : dead)
        report(d.ack, outcome::released);
}

// ---------------------------------------------------------------------------------------------
// Lease renewal: one XCLAIM ... JUSTID for every due in-flight entry, so their idle time stays
// below --lease-timeout and no other worker reclaims them while we work on them.
// ---------------------------------------------------------------------------------------------

void redis_source::extend(std::span<const delivery* const> in_flight) {
    if (closed_ || !writer_.up()) return; // entries stay pending; renewed at the next tick
    xclaim(
        in_flight.size(), [&](std::size_t i) { return std::string_view(in_flight[i]->ref); },
        {"JUSTID"},
        [this](redisReply* r) {
            if (closed_ || !r) return;
            if (auto e = redis_link::error_of(r); !e.empty() && !handle_nogroup(e))
                log::warn("lease renewal failed", {{"error", e}});
        });
}

// XCLAIM <stream> <group> <consumer> 0 <id>... <options>..., --max-batch ids a command, each
// answered to `on_reply`. Returns how many commands were sent.
template <class IdOf>
std::size_t redis_source::xclaim(std::size_t n, IdOf id_of,
                                 std::initializer_list<std::string_view> options,
                                 const redis_link::reply_fn& on_reply) {
    std::size_t sent = 0;
    for (std::size_t at = 0; at < n; at += opts_.max_batch) {
        argv_builder av;
        for (std::string_view a :
             {"XCLAIM"sv, std::string_view(opts_.stream), std::string_view(opts_.group),
              std::string_view(opts_.consumer), "0"sv})
            av.add(a);
        std::size_t end = std::min(n, at + opts_.max_batch);
        for (std::size_t i = at; i < end; ++i)
            av.add(id_of(i));
        for (std::string_view o : options)
            av.add(o);
        if (writer_.send(av.argc(), av.ptrs.data(), av.lens.data(), on_reply)) ++sent;
    }
    return sent;
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

// The attempt number of an entry is its delivery count, which XREADGROUP with an id and
// XAUTOCLAIM raise but do not return: ask XPENDING for exactly those entries.
void redis_source::fetch_counts_and_deliver(std::vector<entry> entries, std::size_t reserved,
                                            bool reclaiming) {
    auto done = [this, reserved, reclaiming](std::size_t used) {
        demand_ += reserved - std::min(reserved, used);
        if (reclaiming)
            reclaim_busy_ = false;
        else
            read_busy_ = false;
        kick();
    };
    if (entries.empty()) return done(0);
    auto [lo, hi] = std::minmax_element(entries.begin(), entries.end(), [](auto& a, auto& b) {
        // Stream ids compare as (ms, seq) numbers.
        auto key = [](const std::string& id) {
            auto dash = id.find('-');
            return std::pair{std::stoull(id.substr(0, dash)),
                             dash == std::string::npos ? 0ULL : std::stoull(id.substr(dash + 1))};
        };
        return key(a.id) < key(b.id);
    });
    std::string first = lo->id, last = hi->id;
    auto shared = std::make_shared<std::vector<entry>>(std::move(entries));
    bool ok = writer_.send({"XPENDING", opts_.stream, opts_.group, first, last,
                            std::to_string(shared->size() + held_.size() + 16), opts_.consumer},
                           [this, shared, done](redisReply* r) {
                               if (closed_) return;
                               if (!r) return done(0); // still pending; reclaimed later
                               auto counts = parse_counts(r);
                               done(deliver_entries(*shared, &counts));
                           });
    if (!ok) done(0);
}

std::size_t
redis_source::deliver_entries(std::vector<entry>& entries,
                              const std::unordered_map<std::string, std::uint32_t>* counts) {
    std::size_t used = 0;
    for (auto& e : entries) {
        std::uint32_t attempt = 1;
        if (counts) {
            auto it = counts->find(e.id);
            if (it == counts->end()) continue; // no longer ours (another worker claimed it)
            attempt = it->second;
        }
        if (e.deleted) {
            // Trimmed or deleted while pending: nothing to do but forget it.
            acks_.push_back(ack_item{e.id, outcome::acked, false});
            held_.insert(e.id);
            kick();
            continue;
        }
        if (deliver_one(e.id, e.payload, e.has_payload, attempt)) ++used;
    }
    return used;
}

// Returns true when the entry went to the pipeline (and used one unit of demand).
bool redis_source::deliver_one(std::string_view id, std::string_view payload, bool has_payload,
                               std::uint32_t attempt) {
    std::string key(id);
    if (held_.count(key)) return false; // already ours and in flight
    // After stop() a read that was already under way may still answer: its entries are within
    // the demand granted before the stop, and the drain finishes them rather than leaving them
    // pending until some worker reclaims them.
    if (closed_) return false;
    if (!has_payload) {
        dead_letter_here(std::move(key), {}, "stream entry has no 'payload' field", attempt);
        return false;
    }
    if (attempt > opts_.max_attempts) {
        dead_letter_here(
            std::move(key), std::string(payload),
            "delivered " + std::to_string(attempt) + " times without an outcome (--max-attempts " +
                std::to_string(opts_.max_attempts) + "): a poison message that may crash workers",
            attempt);
        return false;
    }
    held_.insert(key);
    delivery d;
    d.payload.assign(payload);
    d.ref = std::move(key);
    d.attempt = attempt;
    sink_->deliver(std::move(d));
    return true;
}

void redis_source::dead_letter_here(std::string id, std::string payload, std::string reason,
                                    std::uint32_t attempts) {
    ++dead_here_;
    log::warn("dead-lettering a stream entry without running it",
              {{"source_id", id}, {"reason", reason}, {"attempts", attempts}});
    held_.insert(id);
    dead_item di{ack_item{std::move(id), outcome::dead_lettered, false},
                 std::move(payload),
                 std::move(reason),
                 {},
                 attempts};
    di.message_id = message_id_of(di.payload);
    dead_.push_back(std::move(di));
    kick();
}

// This consumer's own pending entries, from an earlier run under the same --consumer name:
// XREADGROUP ... <id> pages through them (it does not block), then reads switch to `>`.
void redis_source::read_history() {
    if (read_busy_ || demand_ == 0 || !reader_.up()) return;
    std::size_t k = std::min(demand_, opts_.max_read);
    demand_ -= k;
    read_busy_ = true;
    bool ok = reader_.send(
        {"XREADGROUP", "GROUP", opts_.group, opts_.consumer, "COUNT", std::to_string(k), "STREAMS",
         opts_.stream, history_cursor_},
        [this, k](redisReply* r) {
            if (closed_) return;
            std::string e = redis_link::error_of(r);
            if (!e.empty()) {
                read_busy_ = false;
                demand_ += k;
                if (r && !handle_nogroup(e)) cool_down("XREADGROUP", e);
                kick();
                return;
            }
            std::vector<entry> entries;
            if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
                const redisReply* s = r->element[0];
                const redisReply* list =
                    s->type == REDIS_REPLY_ARRAY && s->elements == 2 ? s->element[1] : nullptr;
                for (std::size_t i = 0; list && i < list->elements; ++i) {
                    entry en;
                    std::string_view id, payload;
                    if (!parse_entry(list->element[i], id, payload, en.has_payload, en.deleted))
                        continue;
                    en.id = id;
                    en.payload = payload;
                    entries.push_back(std::move(en));
                }
            }
            if (entries.empty()) {
                history_done_ = true;
            } else {
                history_cursor_ = entries.back().id;
                log::info("re-reading this consumer's pending entries",
                          {{"count", entries.size()}});
            }
            fetch_counts_and_deliver(std::move(entries), k, false);
        });
    if (!ok) {
        read_busy_ = false;
        demand_ += k;
    }
}

// New entries. Reads are sized by the room the source has: the pipeline's free demand plus
// --read-ahead, less what is held here or asked for already; a full worker with a full
// read-ahead does not read at all, so backpressure still reaches Redis. A read is issued
// while the previous one is still under way (at most two, pipelined on the reader) when the
// last one came back full, so Redis prepares the next batch while this loop works on the
// last: only the first of two blocks (BLOCK), the second never waits behind it for long, and
// CLIENT UNBLOCK at a drain ends both at once.
void redis_source::read_new() {
    std::size_t held = ahead_.size() + reading_;
    std::size_t room = demand_ + opts_.read_ahead;
    room = room > held ? room - held : 0;
    // A read takes half the read-ahead (at most max_read), or the demand when that is more.
    std::size_t chunk = std::min(opts_.max_read, std::max<std::size_t>(1, opts_.read_ahead / 2));
    std::size_t k = std::min({room, opts_.max_read, std::max(demand_, chunk)});
    if (k == 0 || reads_ >= 2) return;
    if (reads_ == 0 ? (k < chunk && !ahead_.empty()) : (!last_full_ || k < chunk)) return;
    bool block = reads_ == 0;
    std::vector<std::string> args{"XREADGROUP",   "GROUP", opts_.group,
                                  opts_.consumer, "COUNT", std::to_string(k)};
    if (block) {
        args.emplace_back("BLOCK");
        args.push_back(std::to_string(opts_.block.count()));
    }
    args.emplace_back("STREAMS");
    args.push_back(opts_.stream);
    args.emplace_back(">");
    if (!reader_.send(args, [this, k](redisReply* r) { on_read_new(r, k); })) return;
    ++reads_;
    reading_ += k;
}

void redis_source::on_read_new(redisReply* r, std::size_t asked) {
    if (closed_) return;
    --reads_;
    reading_ -= asked;
    std::string e = redis_link::error_of(r);
    if (!e.empty()) {
        if (r && !handle_nogroup(e)) cool_down("XREADGROUP", e);
        kick();
        return;
    }
    std::size_t got = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
        const redisReply* s = r->element[0];
        const redisReply* list =
            s->type == REDIS_REPLY_ARRAY && s->elements == 2 ? s->element[1] : nullptr;
        for (std::size_t i = 0; list && i < list->elements; ++i) {
            std::string_view id, payload;
            bool has_payload = false, deleted = false;
            if (!parse_entry(list->element[i], id, payload, has_payload, deleted)) continue;
            ++got;
            if (!has_payload) {
                deliver_one(id, payload, has_payload, 1); // dead-lettered here, no demand used
                continue;
            }
            entry en;
            en.id = id;
            if (!held_.insert(en.id).second) continue; // already ours and in flight
            en.payload = payload;
            en.has_payload = true;
            ahead_.push_back(std::move(en));
        }
    }
    last_full_ = got >= asked;
    // While the idle check runs, no new read: its answer decides whether there is one.
    if (got == 0 && reads_ == 0 && ahead_.empty() && opts_.exit_when_idle && check_idle()) return;
    kick(); // the turn hands them over and reads again
}

// Entries read ahead go to the pipeline as far as it granted demand.
void redis_source::deliver_ahead() {
    while (demand_ > 0 && !ahead_.empty() && !closed_ && !forced_) {
        if (!stopped_ && (reclaim_due_ || recover_due_) && !reclaim_busy_ && history_done_) {
            kick(); // demand came back while handing over: the claim takes it first
            return;
        }
        entry en = std::move(ahead_.front());
        ahead_.pop_front();
        delivery d;
        d.payload = std::move(en.payload);
        d.ref = std::move(en.id);
        d.attempt = 1;
        --demand_;
        sink_->deliver(std::move(d));
    }
}

// One XCLAIM ... JUSTID for everything held here, like extend() does for what is in flight (JUSTID:
// the delivery count does not grow).
void redis_source::renew_ahead() {
    if (closed_ || ahead_.empty() || !writer_.up()) return;
    xclaim(
        ahead_.size(), [&](std::size_t i) { return std::string_view(ahead_[i].id); }, {"JUSTID"},
        [this](redisReply* r) {
            if (closed_ || !r) return;
            if (auto e = redis_link::error_of(r); !e.empty() && !handle_nogroup(e))
                log::warn("lease renewal of entries read ahead failed", {{"error", e}});
        });
}

// A drain or a forced stop with entries read ahead that were never delivered: they were not
// started, so they are not acked; they stay pending in the group. Their idle time is set to
// --lease-timeout (XCLAIM ... IDLE, JUSTID so their delivery count does not grow), so any
// worker's next reclaim takes them instead of waiting out the lease. With Redis down they are
// simply left: the lease runs out on its own.
void redis_source::leave_ahead() {
    if (ahead_.empty()) return;
    log::info("entries read ahead and not started are left pending for any worker",
              {{"count", ahead_.size()}});
    for (const auto& en : ahead_)
        held_.erase(en.id);
    if (!closed_ && writer_.up()) {
        std::string idle = std::to_string(opts_.lease_timeout.count());
        releases_ += xclaim(
            ahead_.size(), [&](std::size_t i) { return std::string_view(ahead_[i].id); },
            {"IDLE", idle, "JUSTID"},
            [this](redisReply* r) {
                if (closed_) return;
                --releases_;
                if (auto e = redis_link::error_of(r); r && !e.empty())
                    log::warn("could not mark entries read ahead as idle (they are reclaimed "
                              "after --lease-timeout)",
                              {{"error", e}});
                kick();
            });
    }
    ahead_.clear();
}

// After a reconnect: this consumer's pending entries that are not in flight here (their read
// reply was lost). XPENDING lists them with their delivery counts; XCLAIM (not JUSTID) takes
// them back and counts the new delivery. Entries in flight are not touched, so their counts do
// not grow. More than one page of them is left to the periodic reclaim.
void redis_source::recover() {
    recover_due_ = false;
    reclaim_busy_ = true; // one claiming request at a time
    bool ok = writer_.send(
        {"XPENDING", opts_.stream, opts_.group, "-", "+",
         std::to_string(held_.size() + opts_.max_read), opts_.consumer},
        [this](redisReply* r) {
            if (closed_) return;
            auto counts = parse_counts(r);
            std::vector<std::string> ids;
            for (auto& [id, n] : counts) {
                (void)n;
                if (!held_.count(id) && ids.size() < std::min(demand_, opts_.max_read))
                    ids.push_back(id);
            }
            if (ids.empty() || !writer_.up()) {
                reclaim_busy_ = false;
                kick();
                return;
            }
            std::size_t k = ids.size();
            demand_ -= k;
            argv_builder av;
            for (std::string_view a :
                 {std::string_view("XCLAIM"), std::string_view(opts_.stream),
                  std::string_view(opts_.group), std::string_view(opts_.consumer), "0"sv})
                av.add(a);
            for (const auto& id : ids)
                av.add(id);
            bool sent = writer_.send(
                av.argc(), av.ptrs.data(), av.lens.data(), [this, k, counts](redisReply* c) {
                    if (closed_) return;
                    std::size_t used = 0;
                    if (c && c->type == REDIS_REPLY_ARRAY) {
                        log::info("took back entries whose read reply was lost",
                                  {{"count", c->elements}});
                        for (std::size_t i = 0; i < c->elements; ++i) {
                            std::string_view id, payload;
                            bool has_payload = false, deleted = false;
                            if (!parse_entry(c->element[i], id, payload, has_payload, deleted) ||
                                deleted)
                                continue;
                            auto it = counts.find(std::string(id));
                            std::uint32_t attempt = it == counts.end() ? 1 : it->second + 1;
                            if (deliver_one(id, payload, has_payload, attempt)) ++used;
                        }
                    }
                    demand_ += k - std::min(k, used);
                    reclaim_busy_ = false;
                    kick();
                });
            if (!sent) {
                demand_ += k;
                reclaim_busy_ = false;
            }
        });
    if (!ok) reclaim_busy_ = false;
}

// Orphans: entries another consumer (or an earlier us) left pending for longer than the lease
// timeout. XAUTOCLAIM moves them to this consumer and raises their delivery count.
void redis_source::reclaim() {
    std::size_t k = std::min(demand_, opts_.max_read);
    demand_ -= k;
    reclaim_busy_ = true;
    bool ok = writer_.send(
        {"XAUTOCLAIM", opts_.stream, opts_.group, opts_.consumer,
         std::to_string(opts_.lease_timeout.count()), reclaim_cursor_, "COUNT", std::to_string(k)},
        [this, k](redisReply* r) {
            if (closed_) return;
            std::string e = redis_link::error_of(r);
            if (e.empty() && (r->type != REDIS_REPLY_ARRAY || r->elements < 2))
                e = "unexpected XAUTOCLAIM reply";
            if (!e.empty()) {
                reclaim_busy_ = false;
                demand_ += k;
                if (r && !handle_nogroup(e)) cool_down("XAUTOCLAIM", e);
                kick();
                return;
            }
            std::string next(str(r->element[0]));
            reclaim_cursor_ = next.empty() ? "0-0" : next;
            if (reclaim_cursor_ == "0-0") reclaim_due_ = false; // a full pass is done
            std::vector<entry> entries;
            const redisReply* list = r->element[1];
            for (std::size_t i = 0; list->type == REDIS_REPLY_ARRAY && i < list->elements; ++i) {
                entry en;
                std::string_view id, payload;
                if (!parse_entry(list->element[i], id, payload, en.has_payload, en.deleted))
                    continue;
                en.id = id;
                en.payload = payload;
                entries.push_back(std::move(en));
            }
            if (!entries.empty()) {
                reclaimed_ += entries.size();
                log::info("reclaimed entries idle longer than the lease timeout",
                          {{"count", entries.size()},
                           {"lease_timeout", format_duration(opts_.lease_timeout)}});
            }
            fetch_counts_and_deliver(std::move(entries), k, true);
        });
    if (!ok) {
        reclaim_busy_ = false;
        demand_ += k;
    }
}

// --exit-when-idle: a read found nothing new; if nothing of ours is outstanding and the group
// has no pending entry at all (no other worker is busy, nothing left to reclaim), we are done.
bool redis_source::check_idle() {
    if (idle_check_busy_ || idle_reached_ || !history_done_ || reclaim_busy_ || !held_.empty() ||
        unconfirmed_ > 0 || !acks_.empty() || !dead_.empty() || !writer_.up())
        return false;
    idle_check_busy_ = true;
    bool sent = writer_.send({"XPENDING", opts_.stream, opts_.group}, [this](redisReply* r) {
        if (closed_) return;
        idle_check_busy_ = false;
        kick();
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
            r->element[0]->type != REDIS_REPLY_INTEGER)
            return;
        if (r->element[0]->integer == 0 && held_.empty() && unconfirmed_ == 0 && !reclaim_busy_ &&
            acks_.empty() && dead_.empty()) {
            idle_reached_ = true;
            log::info("stream idle: nothing new or pending for the group",
                      {{"stream", opts_.stream}, {"group", opts_.group}});
            sink_->source_changed();
        }
    });
    if (!sent) idle_check_busy_ = false;
    return sent;
}

} // namespace mayhem
