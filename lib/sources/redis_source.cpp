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

// One row of XPENDING's extended form: [id, consumer, idle ms, delivery count].
struct pending_row {
    std::string id;
    std::string consumer;
    std::uint32_t count = 0;
};

std::vector<pending_row> parse_pending(const redisReply* r) {
    std::vector<pending_row> out;
    if (!r || r->type != REDIS_REPLY_ARRAY) return out;
    out.reserve(r->elements);
    for (std::size_t i = 0; i < r->elements; ++i) {
        const redisReply* p = r->element[i];
        if (p->type != REDIS_REPLY_ARRAY || p->elements < 4) continue;
        if (p->element[3]->type != REDIS_REPLY_INTEGER) continue;
        out.push_back({std::string(str(p->element[0])), std::string(str(p->element[1])),
                       static_cast<std::uint32_t>(std::max<long long>(0, p->element[3]->integer))});
    }
    return out;
}

// Renews (JUSTID: the delivery count stays) or takes back (the count grows, the entries come
// back with it) entries of this consumer, only those still pending under it: XCLAIM alone would
// take an entry back from a peer that reclaimed it after our lease lapsed. Checking and claiming
// in one script makes it atomic. KEYS[1] stream; ARGV: group, consumer, 'justid' or 'entries',
// ids. Returns {own, lost}: own = ids (justid) or {id, fields or nil, delivery count} (entries);
// lost = the ids no longer ours.
constexpr std::string_view claim_own_lua = R"lua(
local stream, group, me, justid = KEYS[1], ARGV[1], ARGV[2], ARGV[3] == 'justid'
local own, lost = {}, {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', stream, group, id, id, 1, me)
  if p[1] == nil then
    lost[#lost + 1] = id
  elseif justid then
    redis.call('XCLAIM', stream, group, me, 0, id, 'JUSTID')
    own[#own + 1] = id
  else
    local e = redis.call('XCLAIM', stream, group, me, 0, id)
    own[#own + 1] = {id, e[1] and e[1][2] or false, p[1][4] + 1}
  end
end
return {own, lost}
)lua";

// Dead letters: every XADD to the dead-letter stream, then the XACK of their entries. A failed
// XADD raises and ends the script before the XACK, so an entry is never acked without its
// dead-letter record (MULTI/EXEC would run the XACK anyway). KEYS: stream, dead-letter stream;
// ARGV: group, then per entry: id, payload, reason, message_id, attempts.
constexpr std::string_view dead_letter_lua = R"lua(
local ids = {}
for i = 2, #ARGV, 5 do
  redis.call('XADD', KEYS[2], '*', 'payload', ARGV[i + 1], 'reason', ARGV[i + 2],
             'message_id', ARGV[i + 3], 'source_id', ARGV[i], 'attempts', ARGV[i + 4])
  ids[#ids + 1] = ARGV[i]
end
local acked = 0
for i = 1, #ids, 500 do
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ids, i, math.min(i + 499, #ids)))
end
return acked
)lua";

// At a clean exit: the consumer leaves the group, unless entries are still pending under it
// (they would lose their owner and no reclaim would find them). KEYS[1] stream; ARGV: group,
// consumer. Returns the pending count the consumer had when deleted (0), or -1 when kept.
constexpr std::string_view farewell_lua = R"lua(
if redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])[1] then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
)lua";

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
        prune_waiting();
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
    if (reads_ > 0 && writer_.up() && reader_.client_id() >= 0) {
        writer_.send({"CLIENT", "UNBLOCK", std::to_string(reader_.client_id())}, {});
    }
    kick();
    if (sink_) sink_->source_changed();
}

bool redis_source::finished() const {
    return (stopped_ || idle_reached_) && unconfirmed_ == 0 &&
           (farewell_ == farewell::done || forced_);
}

bool redis_source::drained() const {
    return reads_ == 0 && !claim_busy_ && releases_ == 0 && ahead_.empty() &&
           (farewell_ == farewell::done || forced_ || !fatal_.empty());
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
    // A read (or claim) whose reply was lost with the old connection left entries pending
    // under this consumer that nobody works on: take them back now rather than after the lease.
    if (ever_up_) {
        own_due_ = true;
        own_cursor_ = "-";
        ++own_pass_;
    }
    log::info(ever_up_ ? "redis reconnected" : "redis connected",
              {{"role", role}, {"url", opts_.endpoint.shown()}});
    kick();
}

void redis_source::link_down(const char* role, const std::string& why) {
    log::warn("redis connection down, retrying with backoff",
              {{"role", role}, {"url", opts_.endpoint.shown()}, {"error", why}});
    if (ever_up_) lost_link_ = true;
    if (was_up_ && sink_) {
        was_up_ = false;
        sink_->source_changed();
    }
    if (forced_ && std::string_view(role) == "writer") release_unconfirmed();
    kick(); // a stop waiting for its farewell does not wait for a writer that is gone
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
// The turn: everything the loop turn produced goes out together (one XACK, one dead-letter
// script), then claims and reads for whatever demand is free.
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
            if (lost_link_) ++reconnects_;
            lost_link_ = false;
            ever_up_ = true;
        }
        sink_->source_changed();
    }
    if (stopped_ && fatal_.empty()) {
        // What reads under way brought is delivered within the demand granted before the stop;
        // the rest, once no read is under way, is left pending (even with Redis down).
        deliver_ahead();
        if (reads_ == 0) leave_ahead();
    }
    if (!fatal_.empty() || cooling_ || !writer_.up()) {
        say_farewell(); // with the writer gone, a stop does not wait for it
        return;
    }
    if (!group_ready_) {
        setup();
        return;
    }
    flush_acks();
    flush_dead();
    if (stopped_ || idle_reached_) {
        say_farewell();
        if (drained()) sink_->source_changed(); // a drain may be waiting for the last read
        return;
    }
    // Claims go first: they take the demand before entries read ahead do, so orphans of dead
    // workers are not starved by a long backlog of new entries.
    if (own_due_ && !claim_busy_ && demand_ > 0) take_own();
    if (!history_done_) return; // this consumer's own entries first, then new ones
    if (reclaim_due_ && !claim_busy_ && demand_ > 0) reclaim();
    deliver_ahead();
    // A read that found nothing may mean the stream is idle: no new read until that is checked.
    if (idle_check_due_) check_idle();
    if (!idle_check_busy_ && !idle_check_due_ && reader_.up()) read_new();
}

void redis_source::cool_down(const std::string& what, const std::string& error) {
    log::warn("redis command failed, trying again shortly", {{"command", what}, {"error", error}});
    if (cooling_ || closed_) return;
    cooling_ = true;
    loop_.timers().arm(cool_timer_, cool_off);
}

// The group is gone (Redis lost its data, someone ran XGROUP DESTROY): create it again.
bool redis_source::handle_nogroup(const std::string& error) {
    if (error.find("NOGROUP") == std::string::npos) return false; // also inside a script error
    if (group_ready_) log::warn("consumer group missing, creating it again", {{"error", error}});
    group_ready_ = false;
    kick();
    return true;
}

// Start-up (and after NOGROUP): check that the keys are streams (or absent), then create the
// group at the start of the stream, so entries published before the first worker ran are read,
// and this consumer in it.
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
    if (!sent) {
        setup_busy_ = false;
        return;
    }
    // The consumer is in the group from the start (XINFO CONSUMERS lists the live workers), not
    // only from its first entry: a blocking read that finds nothing does not create it (and the
    // pass over our own entries reads none with XREADGROUP).
    writer_.send({"XGROUP", "CREATECONSUMER", opts_.stream, opts_.group, opts_.consumer}, {});
}

// ---------------------------------------------------------------------------------------------
// Verdicts
// ---------------------------------------------------------------------------------------------

void redis_source::settle(delivery d, const verdict& v) {
    ++unconfirmed_;
    ack_item a{std::move(d.ref), v.what, true};
    // A peer holds it now: acking it (or dead-lettering it) here would finish the peer's work.
    if (!lost_.empty() && lost_.erase(a.id)) return report(a, outcome::released);
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
    case outcome::released:
        // Left pending in the group: reclaimed once idle for --lease-timeout, by any worker.
        waiting_[a.id] = loop_.now() + static_cast<std::uint64_t>(opts_.lease_timeout.count());
        return report(a, v.what);
    }
}

// The verdict for one item is carried out (or given up): tell the pipeline.
void redis_source::report(const ack_item& a, outcome o) {
    held_.erase(a.id);
    if (stopped_ || idle_reached_) kick(); // the last one lets the farewell go out
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

// Dead letters: one script per batch XADDs each to the dead-letter stream and then XACKs them
// all; a failed XADD ends it before the XACK, so an entry is never acked without its dead-letter
// record, and the batch is sent again after a pause. (A record may then appear twice, and so it
// may if the connection drops after the script ran but before its reply arrived; it is never
// missing.)
void redis_source::flush_dead() {
    while (!dead_.empty() && writer_.up()) {
        auto& b = sent_.emplace_back();
        take_batch(dead_, b.dead, opts_.max_batch);
        auto it = std::prev(sent_.end());
        std::vector<std::string> attempts;
        attempts.reserve(b.dead.size()); // stable: the argv points into it
        argv_builder av;
        for (std::string_view a :
             {"EVAL"sv, dead_letter_lua, "2"sv, std::string_view(opts_.stream),
              std::string_view(opts_.dead_letter_stream), std::string_view(opts_.group)})
            av.add(a);
        for (const auto& d : b.dead) {
            attempts.push_back(std::to_string(d.attempts));
            for (std::string_view a : {std::string_view(d.ack.id), std::string_view(d.payload),
                                       std::string_view(d.reason), std::string_view(d.message_id),
                                       std::string_view(attempts.back())})
                av.add(a);
        }
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
                    if (r && !handle_nogroup(e)) cool_down("dead letter (XADD + XACK)", e);
                    return;
                }
                // One line per batch: a flood of bad payloads must not flood the log (the
                // pipeline already logs why, rate-limited); each entry at debug level.
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
            requeue(*it);
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
// Lease renewal: every due in-flight entry (extend) and every entry read ahead (renew_ahead)
// has its idle time reset, so it stays below --lease-timeout and no other worker reclaims it
// while we hold it; only entries still pending under this consumer are renewed (claim_own_lua),
// and one found in a peer's hands is dropped from our books.
// ---------------------------------------------------------------------------------------------

void redis_source::extend(std::span<const delivery* const> in_flight) {
    if (closed_ || !writer_.up()) return; // entries stay pending; renewed at the next tick
    renew(
        in_flight.size(), [&](std::size_t i) { return std::string_view(in_flight[i]->ref); },
        "lease renewal failed");
}

void redis_source::renew_ahead() {
    if (closed_ || ahead_.empty() || !writer_.up()) return;
    renew(
        ahead_.size(), [&](std::size_t i) { return std::string_view(ahead_[i].id); },
        "lease renewal of entries read ahead failed");
}

// One script per --max-batch ids.
template <class IdOf>
void redis_source::renew(std::size_t n, IdOf id_of, const char* what) {
    for (std::size_t at = 0; at < n; at += opts_.max_batch) {
        argv_builder av;
        for (std::string_view a :
             {"EVAL"sv, claim_own_lua, "1"sv, std::string_view(opts_.stream),
              std::string_view(opts_.group), std::string_view(opts_.consumer), "justid"sv})
            av.add(a);
        std::size_t end = std::min(n, at + opts_.max_batch);
        for (std::size_t i = at; i < end; ++i)
            av.add(id_of(i));
        writer_.send(av.argc(), av.ptrs.data(), av.lens.data(), [this, what](redisReply* r) {
            if (closed_ || !r) return;
            if (auto e = redis_link::error_of(r); !e.empty()) {
                if (!handle_nogroup(e)) log::warn(what, {{"error", e}});
                return;
            }
            if (r->type != REDIS_REPLY_ARRAY || r->elements < 2) return;
            const redisReply* lost = r->element[1];
            for (std::size_t i = 0; lost->type == REDIS_REPLY_ARRAY && i < lost->elements; ++i)
                on_lease_lost(std::string(str(lost->element[i])));
        });
    }
}

// Renewal found the entry pending under another consumer (our lease had lapsed and a peer
// reclaimed it) or not pending at all: it is no longer ours. Read ahead, it is simply dropped;
// delivered, the pipeline hears of it and its verdict is not carried out here.
void redis_source::on_lease_lost(const std::string& id) {
    if (!held_.count(id) || lost_.count(id)) return; // confirmed meanwhile, or known
    ++lost_leases_;
    log::warn("lease lost: a peer reclaimed the entry while this worker held it; it is not "
              "acked here",
              {{"source_id", id}});
    auto ahead = std::find_if(ahead_.begin(), ahead_.end(), [&](auto& e) { return e.id == id; });
    if (ahead != ahead_.end()) {
        ahead_.erase(ahead);
        held_.erase(id);
        return;
    }
    // A verdict not sent yet is given up; one already sent went out after this renewal and
    // Redis carries it out (the entry was finished here; the peer finds it done).
    auto queued = std::find_if(acks_.begin(), acks_.end(), [&](auto& a) { return a.id == id; });
    if (queued != acks_.end()) {
        ack_item a = std::move(*queued);
        acks_.erase(queued);
        return report(a, outcome::released);
    }
    auto dead = std::find_if(dead_.begin(), dead_.end(), [&](auto& d) { return d.ack.id == id; });
    if (dead != dead_.end()) {
        ack_item a = std::move(dead->ack);
        dead_.erase(dead);
        return report(a, outcome::released);
    }
    bool in_batch = std::any_of(sent_.begin(), sent_.end(), [&](const batch& b) {
        return std::any_of(b.acks.begin(), b.acks.end(), [&](auto& a) { return a.id == id; }) ||
               std::any_of(b.dead.begin(), b.dead.end(), [&](auto& d) { return d.ack.id == id; });
    });
    if (in_batch) return;
    lost_.insert(id);
    sink_->lease_lost(id);
}

// XCLAIM <stream> <group> <consumer> <min idle> <id>... <options>..., --max-batch ids a
// command, each answered to `on_reply`. Returns how many commands were sent.
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
// Reading new entries
// ---------------------------------------------------------------------------------------------

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
    if (got == 0 && reads_ == 0 && ahead_.empty() && opts_.exit_when_idle) idle_check_due_ = true;
    kick(); // the turn hands them over and reads again (or checks for idleness first)
}

// Entries read ahead go to the pipeline as far as it granted demand.
void redis_source::deliver_ahead() {
    while (demand_ > 0 && !ahead_.empty() && !closed_ && !forced_) {
        if (!stopped_ && (reclaim_due_ || own_due_) && !claim_busy_ && history_done_) {
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

// A drain or a forced stop with entries read ahead that were never delivered: they were not
// started, so they are not acked; they stay pending in the group, left for any worker.
void redis_source::leave_ahead() {
    if (ahead_.empty()) return;
    log::info("entries read ahead and not started are left pending for any worker",
              {{"count", ahead_.size()}});
    std::vector<entry> left(std::make_move_iterator(ahead_.begin()),
                            std::make_move_iterator(ahead_.end()));
    ahead_.clear();
    leave(std::move(left));
}

// Entries of ours that will not be started here: their idle time is set to --lease-timeout
// (XCLAIM ... IDLE), so any worker's next reclaim takes them instead of waiting out the lease,
// and their delivery count is set back to what it was before they came to us (RETRYCOUNT,
// JUSTID): never started here, they were not delivered. With Redis down they are simply left:
// the lease runs out on its own.
void redis_source::leave(std::vector<entry> entries) {
    for (const auto& en : entries)
        held_.erase(en.id);
    if (closed_ || entries.empty() || !writer_.up()) return;
    // One command per count (entries read ahead all have 1).
    std::sort(entries.begin(), entries.end(),
              [](const entry& a, const entry& b) { return a.attempt < b.attempt; });
    std::string idle = std::to_string(opts_.lease_timeout.count());
    for (std::size_t at = 0; at < entries.size();) {
        std::size_t end = at;
        while (end < entries.size() && entries[end].attempt == entries[at].attempt)
            ++end;
        std::string before = std::to_string(entries[at].attempt - 1);
        releases_ += xclaim(
            end - at, [&](std::size_t i) { return std::string_view(entries[at + i].id); },
            {"IDLE", idle, "RETRYCOUNT", before, "JUSTID"},
            [this](redisReply* r) {
                if (closed_) return;
                --releases_;
                if (auto e = redis_link::error_of(r); r && !e.empty())
                    log::warn("could not mark entries left pending as idle (they are reclaimed "
                              "after --lease-timeout)",
                              {{"error", e}});
                kick();
            });
        at = end;
    }
}

// ---------------------------------------------------------------------------------------------
// Claims: entries already pending in the group. Both kinds list what to take with XPENDING
// (which gives each entry's delivery count), then claim exactly those, so every entry claimed
// is delivered with its count and none is left claimed but undelivered.
// ---------------------------------------------------------------------------------------------

// This consumer's own pending entries that it does not hold: at start, those an earlier run
// under the same --consumer name left; after a reconnect, those whose read or claim reply was
// lost. Paged through in id order. Entries waiting out a retry's lease are not taken early.
void redis_source::take_own() {
    std::size_t k = std::min(demand_, opts_.max_read);
    demand_ -= k;
    claim_busy_ = true;
    std::uint64_t pass = own_pass_;
    bool ok = writer_.send(
        {"XPENDING", opts_.stream, opts_.group, own_cursor_, "+", std::to_string(opts_.max_read),
         opts_.consumer},
        [this, k, pass](redisReply* r) {
            if (closed_) return;
            std::string e = redis_link::error_of(r);
            if (!e.empty()) {
                if (r && !handle_nogroup(e)) cool_down("XPENDING", e);
                return claim_done(k, 0);
            }
            auto rows = parse_pending(r);
            bool more = rows.size() >= opts_.max_read;
            std::vector<std::string> ids;
            std::string last;
            std::uint64_t now = loop_.now();
            for (const auto& row : rows) {
                auto w = waiting_.find(row.id);
                bool takeable = !held_.count(row.id) && (w == waiting_.end() || w->second <= now);
                if (takeable && ids.size() == k) {
                    more = true;
                    break;
                }
                if (takeable) ids.push_back(row.id);
                last = row.id;
            }
            if (pass == own_pass_) { // not started over meanwhile
                if (more && !last.empty()) {
                    own_cursor_ = "(" + last;
                } else {
                    own_cursor_ = "-";
                    own_due_ = false;
                    history_done_ = true;
                }
            }
            if (ids.empty() || !writer_.up()) return claim_done(k, 0);
            argv_builder av;
            for (std::string_view a :
                 {"EVAL"sv, claim_own_lua, "1"sv, std::string_view(opts_.stream),
                  std::string_view(opts_.group), std::string_view(opts_.consumer), "entries"sv})
                av.add(a);
            for (const auto& id : ids)
                av.add(id);
            bool sent =
                writer_.send(av.argc(), av.ptrs.data(), av.lens.data(), [this, k](redisReply* c) {
                    if (closed_) return;
                    std::string ce = redis_link::error_of(c);
                    if (!ce.empty()) {
                        if (c && !handle_nogroup(ce)) cool_down("claim of own entries", ce);
                        return claim_done(k, 0);
                    }
                    std::vector<entry> entries;
                    const redisReply* own =
                        c->type == REDIS_REPLY_ARRAY && c->elements == 2 ? c->element[0] : nullptr;
                    for (std::size_t i = 0; own && i < own->elements; ++i) {
                        const redisReply* o = own->element[i];
                        if (o->type != REDIS_REPLY_ARRAY || o->elements < 3) continue;
                        // [id, fields or nil, count] is parsed as the entry [id, fields].
                        entry en;
                        std::string_view id, payload;
                        if (!parse_entry(o, id, payload, en.has_payload, en.deleted)) continue;
                        en.id = id;
                        en.payload = payload;
                        if (o->element[2]->type == REDIS_REPLY_INTEGER)
                            en.attempt = static_cast<std::uint32_t>(
                                std::max<long long>(1, o->element[2]->integer));
                        entries.push_back(std::move(en));
                    }
                    if (!entries.empty())
                        log::info("took back this consumer's pending entries",
                                  {{"count", entries.size()}});
                    claim_done(k, deliver_claimed(entries));
                });
            if (!sent) claim_done(k, 0);
        });
    if (!ok) claim_done(k, 0);
}

// Orphans: entries left pending for longer than the lease timeout, by another consumer (its
// worker died or stalled) or by this one (a retry whose delay, the lease, is over). XPENDING
// IDLE lists them with their delivery counts; XCLAIM with the same minimum idle time takes
// those still idle (not renewed or taken by a peer in between) and raises their counts.
void redis_source::reclaim() {
    std::size_t k = std::min(demand_, opts_.max_read);
    demand_ -= k;
    claim_busy_ = true;
    std::string lease = std::to_string(opts_.lease_timeout.count());
    bool ok = writer_.send(
        {"XPENDING", opts_.stream, opts_.group, "IDLE", lease, reclaim_cursor_, "+",
         std::to_string(k)},
        [this, k, lease](redisReply* r) {
            if (closed_) return;
            std::string e = redis_link::error_of(r);
            if (!e.empty()) {
                if (r && !handle_nogroup(e)) cool_down("XPENDING", e);
                return claim_done(k, 0);
            }
            auto rows = parse_pending(r);
            if (rows.size() >= k) {
                reclaim_cursor_ = "(" + rows.back().id;
            } else {
                reclaim_cursor_ = "-"; // a full pass is done
                reclaim_due_ = false;
            }
            // id -> (delivery count, was it ours)
            auto known = std::make_shared<std::unordered_map<std::string, pending_row>>();
            argv_builder av;
            for (std::string_view a :
                 {"XCLAIM"sv, std::string_view(opts_.stream), std::string_view(opts_.group),
                  std::string_view(opts_.consumer), std::string_view(lease)})
                av.add(a);
            for (auto& row : rows) {
                if (held_.count(row.id)) continue; // in our hands (queued in the pipeline)
                auto [it, fresh] = known->emplace(row.id, std::move(row));
                if (fresh) av.add(it->first);
            }
            if (known->empty() || !writer_.up()) return claim_done(k, 0);
            bool sent = writer_.send(
                av.argc(), av.ptrs.data(), av.lens.data(), [this, k, known](redisReply* c) {
                    if (closed_) return;
                    std::string ce = redis_link::error_of(c);
                    if (!ce.empty()) {
                        if (c && !handle_nogroup(ce)) cool_down("XCLAIM", ce);
                        return claim_done(k, 0);
                    }
                    std::vector<entry> entries;
                    std::size_t orphans = 0, retries = 0;
                    for (std::size_t i = 0; c->type == REDIS_REPLY_ARRAY && i < c->elements; ++i) {
                        entry en;
                        std::string_view id, payload;
                        if (!parse_entry(c->element[i], id, payload, en.has_payload, en.deleted))
                            continue;
                        auto it = known->find(std::string(id));
                        if (it == known->end()) continue;
                        en.id = id;
                        en.payload = payload;
                        en.attempt = it->second.count + 1;
                        ++(it->second.consumer == opts_.consumer ? retries : orphans);
                        entries.push_back(std::move(en));
                    }
                    reclaimed_orphans_ += orphans;
                    reclaimed_retries_ += retries;
                    if (!entries.empty()) {
                        log::info("reclaimed entries idle longer than the lease timeout",
                                  {{"count", entries.size()},
                                   {"orphans", orphans},
                                   {"retries", retries},
                                   {"lease_timeout", format_duration(opts_.lease_timeout)}});
                    }
                    claim_done(k, deliver_claimed(entries));
                });
            if (!sent) claim_done(k, 0);
        });
    if (!ok) claim_done(k, 0);
}

// A claim is over: what it reserved and did not deliver goes back to the demand.
void redis_source::claim_done(std::size_t reserved, std::size_t used) {
    demand_ += reserved - std::min(reserved, used);
    claim_busy_ = false;
    kick();
}

// Entries a claim took, now ours. After a forced stop none is delivered (the pipeline starts
// nothing more): they are left pending for any worker instead.
std::size_t redis_source::deliver_claimed(std::vector<entry>& entries) {
    std::size_t used = 0;
    std::vector<entry> left;
    for (auto& e : entries) {
        waiting_.erase(e.id);
        if (e.deleted) {
            // Trimmed or deleted while pending: nothing to do but forget it.
            if (held_.insert(e.id).second) acks_.push_back(ack_item{e.id, outcome::acked, false});
            kick();
            continue;
        }
        if (forced_ && !held_.count(e.id)) {
            left.push_back(std::move(e));
            continue;
        }
        if (deliver_one(e.id, e.payload, e.has_payload, e.attempt)) ++used;
    }
    if (!left.empty()) {
        log::info("entries claimed after a forced stop are left pending for any worker",
                  {{"count", left.size()}});
        leave(std::move(left));
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
    // pending until some worker reclaims them. After a forced stop nothing is delivered.
    if (closed_ || forced_) return false;
    if (!has_payload) {
        dead_letter_here(std::move(key), {}, "stream entry has no 'payload' field", attempt);
        return false;
    }
    // However high its delivery count, the entry goes to the pipeline: a count also grows for
    // entries only read or queued by workers that died, so it does not tell that a restart
    // ever started (the store does).
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

// Entries left waiting whose lease ran out are reclaimed like any orphan (by us or a peer):
// nothing to remember about them any more.
void redis_source::prune_waiting() {
    std::uint64_t now = loop_.now();
    std::erase_if(waiting_, [now](const auto& w) { return w.second <= now; });
}

// ---------------------------------------------------------------------------------------------
// The end
// ---------------------------------------------------------------------------------------------

// --exit-when-idle: a read found nothing new; if nothing of ours is outstanding and the group
// has no pending entry at all (no other worker is busy, nothing left to reclaim), we are done.
// While a claim is under way the check waits for it (reads wait too: a claim and a blocking
// read that end together must not keep postponing the check); with work in hand, reading
// resumes.
void redis_source::check_idle() {
    if (idle_check_busy_ || idle_reached_ || claim_busy_ || !writer_.up()) return;
    if (!history_done_ || !held_.empty() || unconfirmed_ > 0 || !acks_.empty() || !dead_.empty()) {
        idle_check_due_ = false;
        return;
    }
    idle_check_due_ = false;
    idle_check_busy_ = true;
    bool sent = writer_.send({"XPENDING", opts_.stream, opts_.group}, [this](redisReply* r) {
        if (closed_) return;
        idle_check_busy_ = false;
        kick();
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
            r->element[0]->type != REDIS_REPLY_INTEGER)
            return;
        if (r->element[0]->integer == 0 && held_.empty() && unconfirmed_ == 0 && acks_.empty() &&
            dead_.empty()) {
            idle_reached_ = true;
            log::info("stream idle: nothing new or pending for the group",
                      {{"stream", opts_.stream}, {"group", opts_.group}});
            sink_->source_changed();
        }
    });
    if (!sent) idle_check_busy_ = false;
}

// Nothing of ours in hand or under way: no delivery unconfirmed, no verdict unsent, no read or
// claim that could still bring an entry.
bool redis_source::quiet() const {
    return held_.empty() && ahead_.empty() && unconfirmed_ == 0 && acks_.empty() && dead_.empty() &&
           sent_.empty() && reads_ == 0 && !claim_busy_ && releases_ == 0 && !idle_check_busy_;
}

// A clean exit (a drain or --exit-when-idle, not a forced stop): once quiet, the consumer
// leaves the group if nothing is pending under it, so workers named <host>-<pid> do not pile
// up in XINFO CONSUMERS. With the writer down it is skipped: a stop never waits for Redis here.
void redis_source::say_farewell() {
    if (farewell_ != farewell::not_yet || !(stopped_ || idle_reached_) || forced_ || closed_)
        return;
    if (!fatal_.empty() || !writer_.up()) {
        if (!quiet() && fatal_.empty()) return;
        farewell_ = farewell::done;
        sink_->source_changed();
        return;
    }
    if (!quiet()) return;
    farewell_ = farewell::sent;
    bool sent = writer_.send(
        {"EVAL", farewell_lua, "1", opts_.stream, opts_.group, opts_.consumer},
        [this](redisReply* r) {
            if (closed_) return;
            farewell_ = farewell::done;
            if (r && r->type == REDIS_REPLY_INTEGER) {
                if (r->integer >= 0)
                    log::info("consumer left the group", {{"consumer", opts_.consumer}});
                else
                    log::info("consumer stays in the group: entries are pending under it",
                              {{"consumer", opts_.consumer}});
            } else if (auto e = redis_link::error_of(r); r && !e.empty()) {
                log::warn("could not delete the consumer from the group", {{"error", e}});
            }
            sink_->source_changed();
        });
    if (!sent) {
        farewell_ = farewell::done;
        sink_->source_changed();
    }
}

} // namespace mayhem
