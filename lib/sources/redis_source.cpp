#include "sources/redis_source.hpp"

#include "runtime/duration.hpp"
#include "runtime/log.hpp"

#include <algorithm>
#include <hiredis/hiredis.h>
#include <nlohmann/json.hpp>
#include <optional>

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
// Life cycle: one state at a time (redis_source::state), changed only by enter(), which logs
// `redis source state` with from, to and why. What each state does is in turn(); the events that
// change it are the connections (link_up/down/rejected), replies, and the calls of the worker
// (stop, force_stop, close).
//
//   created ──start──► connecting ──both links up──► setting_up ──group ready──► recovering
//                          ▲   (group known to exist: straight to recovering)        │ own pass
//                          └──── a link dropped (setting_up, recovering, reading, ◄──┘ done
//                                 checking_idle)                                 ▼
//   NOGROUP (recovering, reading, checking_idle) ──► setting_up            reading ◄──┐
//   --exit-when-idle: a read found nothing ──► checking_idle ──work or pending──────┘
//                                                   └──nothing pending──► leaving
//   stop() (any running state) ──► draining ──quiet──► leaving ──farewell answered──► stopped
//                                     └──quiet, writer down──────────────────────────► stopped
//   force_stop() (running, draining, leaving) ──► forced ──no verdict unconfirmed──► stopped
//   refused credentials before the first success, a key of the wrong type ──► failed
//   close() ──► closed
// ---------------------------------------------------------------------------------------------

std::string_view redis_source::name_of(state s) noexcept {
    switch (s) {
    case state::created:
        return "created";
    case state::connecting:
        return "connecting";
    case state::setting_up:
        return "setting_up";
    case state::recovering:
        return "recovering";
    case state::reading:
        return "reading";
    case state::checking_idle:
        return "checking_idle";
    case state::draining:
        return "draining";
    case state::leaving:
        return "leaving";
    case state::forced:
        return "forced";
    case state::stopped:
        return "stopped";
    case state::failed:
        return "failed";
    case state::closed:
        return "closed";
    }
    return "?";
}

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
      cool_timer_([this] { kick(); }), force_timer_([this] { release_unconfirmed(); }) {
    idle_->data = this;
    if (opts_.dead_letter_stream.empty()) opts_.dead_letter_stream = opts_.stream + ":dead";
    if (opts_.max_read == 0) opts_.max_read = 1;
    if (opts_.max_batch == 0) opts_.max_batch = 1;
    if (opts_.lease_extend.count() <= 0) opts_.lease_extend = rt::millis{1};
    for (rt::gauge* g : {&stats_.group_lag, &stats_.group_pending, &stats_.dead_letter_length})
        g->set(-1); // not sampled yet
}

redis_source::~redis_source() {
    close();
}

// The one place the state changes. Entering a state does what that state starts with.
void redis_source::enter(state next, std::string_view why) {
    if (state_ == next || state_ == state::closed) return;
    state from = std::exchange(state_, next);
    // A worker waiting for its peers with --exit-when-idle goes back and forth between these
    // two once per --block: not worth a line each at info.
    bool routine = (from == state::reading && next == state::checking_idle) ||
                   (from == state::checking_idle && next == state::reading);
    log::write(routine ? spdlog::level::debug : spdlog::level::info, "redis source state",
               {{"from", name_of(from)}, {"to", name_of(next)}, {"why", why}});
    switch (next) {
    case state::recovering:
        // Both links up and the group there: at start, and after every outage (a read or claim
        // whose reply was lost left entries pending under this consumer that nobody works on:
        // they are taken back now rather than after the lease).
        if (from == state::connecting && ever_up_) ++reconnects_;
        ever_up_ = true;
        own_cursor_ = "-";
        ++own_pass_;
        break;
    case state::draining:
        // A blocking read would hold the reader (and the drain, which waits for reads under way)
        // for up to --block: end it now. What it returns is delivered within the demand left.
        if (reads_ > 0 && writer_.up() && reader_.client_id() >= 0)
            writer_.send({"CLIENT", "UNBLOCK", std::to_string(reader_.client_id())}, {});
        break;
    case state::leaving:
        say_farewell();
        break;
    case state::forced:
        if (!writer_.up())
            release_unconfirmed();
        else if (unconfirmed_ > 0)
            loop_.timers().arm(force_timer_, force_grace);
        if (unconfirmed_ == 0) enter(state::stopped, "nothing left to confirm");
        break;
    default:
        break;
    }
    // Not after close(): the sink may be gone already, and a stop is over anyway.
    if (next == state::closed) return;
    kick();
    if (sink_) sink_->source_changed();
}

bool redis_source::running() const noexcept {
    switch (state_) {
    case state::connecting:
    case state::setting_up:
    case state::recovering:
    case state::reading:
    case state::checking_idle:
        return true;
    default:
        return false;
    }
}

// Entries still go to the pipeline: only while running. A stopping worker starts nothing new:
// what reads and claims under way bring after the stop is left pending for any worker.
bool redis_source::delivering() const noexcept {
    return running();
}

void redis_source::start(source_sink& sink) {
    sink_ = &sink;
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
    if (opts_.sample_interval.count() > 0)
        sample_timer_ = std::make_unique<rt::periodic_timer>(loop_, opts_.sample_interval,
                                                             [this] { sample(); });
    enter(state::connecting, "started");
    writer_.open();
    reader_.open();
}

void redis_source::request(std::size_t n) {
    demand_ += n;
    kick();
}

void redis_source::stop() {
    if (running()) enter(state::draining, "stop");
}

void redis_source::force_stop() {
    if (running() || state_ == state::draining || state_ == state::leaving)
        enter(state::forced, "forced stop");
}

bool redis_source::finished() const {
    return state_ == state::stopped || state_ == state::failed;
}

bool redis_source::drained() const {
    return finished();
}

bool redis_source::up() const {
    return writer_.up() && reader_.up() && group_ready_;
}

void redis_source::close() {
    if (state_ == state::closed) return;
    enter(state::closed, "closed");
    reclaim_timer_.reset();
    ahead_timer_.reset();
    sample_timer_.reset();
    cool_timer_.cancel();
    force_timer_.cancel();
    idle_.close();
    // Freeing the connections runs every pending reply callback with nullptr; they see closed.
    reader_.close();
    writer_.close();
    if (!acks_.empty() || !dead_.empty() || unconfirmed_ > 0) {
        log::warn("redis source closed with verdicts Redis did not confirm (the entries stay "
                  "pending and are delivered again)",
                  {{"unconfirmed", unconfirmed_}});
    }
}

void redis_source::fail(std::string why) {
    if (fatal_.empty()) fatal_ = std::move(why);
    enter(state::failed, fatal_);
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

void redis_source::link_up(const char* role) {
    log::info(ever_up_ ? "redis reconnected" : "redis connected",
              {{"role", role}, {"url", opts_.endpoint.shown()}});
    kick();
}

void redis_source::link_down(const char* role, const std::string& why) {
    log::warn("redis connection down, retrying with backoff",
              {{"role", role}, {"url", opts_.endpoint.shown()}, {"error", why}});
    bool writer = std::string_view(role) == "writer";
    if (running() && state_ != state::connecting) enter(state::connecting, "connection lost");
    if (state_ == state::forced && writer) release_unconfirmed();
    kick(); // a drain waiting to be quiet does not wait for a farewell to a writer that is gone
    if (sink_) sink_->source_changed();
}

void redis_source::link_rejected(const char* role, const std::string& why) {
    if (!ever_up_) {
        // Never worked: a wrong password or user does not fix itself by retrying, and a worker
        // that exits 1 at start says so louder than one that stays not-ready forever.
        log::error("redis authentication failed", {{"role", role}, {"error", why}});
        fail("redis refused the credentials of " + opts_.endpoint.shown() + ": " + why);
        return;
    }
    // It worked before: the password may be in rotation. Keep retrying, loudly.
    log::error("redis authentication failed, retrying (it worked before)",
               {{"role", role}, {"error", why}});
}

// ---------------------------------------------------------------------------------------------
// The turn: everything the loop turn produced goes out together (one XACK, one dead-letter
// script), then the state does its part: claims and reads for whatever demand is free, or the
// steps of a stop.
// ---------------------------------------------------------------------------------------------

void redis_source::kick() {
    if (state_ == state::closed || uv_is_active(reinterpret_cast<uv_handle_t*>(idle_.get())))
        return;
    uv_idle_start(idle_.get(), &redis_source::on_idle);
}

void redis_source::on_idle(uv_idle_t* h) noexcept {
    auto* self = static_cast<redis_source*>(h->data);
    if (!self) return;
    uv_idle_stop(h);
    try {
        self->turn();
    } catch (const std::exception& e) {
        log::error("redis source turn failed", {{"error", e.what()}});
    }
}

void redis_source::turn() {
    if (!sink_ || state_ == state::created || state_ == state::closed || state_ == state::failed)
        return;
    // A stopping worker starts nothing new: entries read ahead (and what reads under way bring)
    // are not delivered but, once no read is under way, left pending for any worker (even with
    // Redis down).
    if (!running()) {
        if (reads_ == 0) leave_ahead();
    }
    bool writing = writer_.up() && !cool_timer_.armed();
    // The group is set up in its own state, or again during a drain (NOGROUP) so that the
    // acks left can go out.
    if (writing && !group_ready_ && control_ == control::none &&
        (state_ == state::setting_up || state_ == state::draining))
        setup();
    if (writing && group_ready_) {
        flush_acks();
        flush_dead();
    }
    switch (state_) {
    case state::connecting:
        deliver_ahead();
        if (writer_.up() && reader_.up())
            enter(group_ready_ ? state::recovering : state::setting_up, "connected");
        return;
    case state::setting_up:
        if (group_ready_) enter(state::recovering, "group ready");
        return;
    case state::recovering:
        // This consumer's own pending entries first, then new ones.
        deliver_ahead();
        if (writing && group_ready_ && control_ == control::none && demand_ > 0) take_own();
        return;
    case state::reading:
        // Claims go first: they take the demand before entries read ahead do, so orphans of
        // dead workers are not starved by a long backlog of new entries.
        if (writing && reclaim_due_ && control_ == control::none && demand_ > 0) reclaim();
        deliver_ahead();
        if (reader_.up()) read_new();
        return;
    case state::checking_idle:
        // No read until the check answers; it waits for a claim under way.
        if (writing && control_ == control::none) check_idle();
        return;
    case state::draining:
        if (quiet()) enter(writer_.up() ? state::leaving : state::stopped, "drained");
        return;
    case state::leaving:
        return; // the farewell's reply moves on
    case state::forced:
        if (unconfirmed_ == 0) enter(state::stopped, "nothing left to confirm");
        return;
    case state::created:
    case state::stopped:
    case state::failed:
    case state::closed:
        return;
    }
}

void redis_source::cool_down(const std::string& what, const std::string& error) {
    log::warn("redis command failed, trying again shortly", {{"command", what}, {"error", error}});
    if (cool_timer_.armed() || state_ == state::closed) return;
    loop_.timers().arm(cool_timer_, cool_off);
}

// The group is gone (Redis lost its data, someone ran XGROUP DESTROY): create it again.
bool redis_source::handle_nogroup(const std::string& error) {
    if (error.find("NOGROUP") == std::string::npos) return false; // also inside a script error
    if (group_ready_) log::warn("consumer group missing, creating it again", {{"error", error}});
    group_ready_ = false;
    if (state_ == state::recovering || state_ == state::reading || state_ == state::checking_idle)
        enter(state::setting_up, "consumer group missing");
    kick();
    return true;
}

// Start-up (and after NOGROUP): check that the keys are streams (or absent), then create the
// group at the start of the stream, so entries published before the first worker ran are read,
// and this consumer in it.
void redis_source::setup() {
    control_ = control::setup;
    auto type_check = [this](std::string key) {
        return [this, key](redisReply* r) {
            if (closed() || !r) return;
            auto t = str(r);
            if (!t.empty() && t != "none" && t != "stream") {
                log::error("redis key has the wrong type", {{"key", key}, {"type", t}});
                fail("redis key '" + key + "' is a " + std::string(t) + ", not a stream");
            }
        };
    };
    writer_.send({"TYPE", opts_.stream}, type_check(opts_.stream));
    writer_.send({"TYPE", opts_.dead_letter_stream}, type_check(opts_.dead_letter_stream));
    bool sent = writer_.send(
        {"XGROUP", "CREATE", opts_.stream, opts_.group, "0", "MKSTREAM"}, [this](redisReply* r) {
            if (closed()) return;
            control_ = control::none;
            kick();
            if (!r || state_ == state::failed) return; // reconnect, or fatal
            std::string e = redis_link::error_of(r);
            if (!e.empty() && !e.starts_with("BUSYGROUP")) {
                if (e.starts_with("WRONGTYPE"))
                    return fail("redis key '" + opts_.stream + "' is not a stream");
                return cool_down("XGROUP CREATE", e);
            }
            group_ready_ = true;
        });
    if (!sent) {
        control_ = control::none;
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
        if (closed() || (giving_up() && !writer_.up())) return report(a, outcome::released);
        acks_.push_back(std::move(a));
        kick();
        return;
    case outcome::dead_lettered: {
        if (closed() || (giving_up() && !writer_.up())) return report(a, outcome::released);
        dead_item di{std::move(a), std::move(d.payload), v.reason, {}, d.attempt};
        di.message_id = message_id_of(di.payload);
        dead_.push_back(std::move(di));
        kick();
        return;
    }
    case outcome::retried:
    case outcome::released:
        if (v.what == outcome::released && state_ == state::draining) {
            // Released at a drain, its restart never started: handed back with the entries read
            // ahead (idle, its count as before), so that a peer takes it at once.
            entry e;
            e.id = a.id;
            e.attempt = d.attempt;
            ahead_.push_back(std::move(e));
            kick();
        } else {
            // Left pending in the group: reclaimed once idle for --lease-timeout, by any worker.
            waiting_[a.id] = loop_.now() + static_cast<std::uint64_t>(opts_.lease_timeout.count());
        }
        return report(a, v.what);
    }
}

// The verdict for one item is carried out (or given up): tell the pipeline.
void redis_source::report(const ack_item& a, outcome o) {
    held_.erase(a.id);
    if (!running()) kick(); // the last one may end a stop
    if (!a.report) return;
    --unconfirmed_;
    if (state_ == state::forced && unconfirmed_ == 0) enter(state::stopped, "all confirmed");
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
        if (!send_batch(std::prev(sent_.end()), av.argc(), av.ptrs.data(), av.lens.data(), "XACK"))
            return;
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
        if (!send_batch(it, av.argc(), av.ptrs.data(), av.lens.data(), "dead letter (XADD + XACK)"))
            return;
    }
}

// One batch's command; its reply confirms the batch, or puts it back to be sent again (after a
// pause) when Redis refused it. False when it could not be sent (the batch is back already).
bool redis_source::send_batch(std::list<batch>::iterator it, int argc, const char** argv,
                              const std::size_t* lens, const char* what) {
    bool ok = writer_.send(argc, argv, lens, [this, it, what](redisReply* r) {
        if (closed()) return;
        batch& bt = *it;
        if (!bt.dropped) { // else reported released by a forced stop already
            if (std::string e = redis_link::error_of(r); !e.empty()) {
                stats_.ack_failures.inc(bt.acks.size() + bt.dead.size());
                requeue(bt);
                if (r && !handle_nogroup(e)) cool_down(what, e);
            } else {
                confirmed(bt);
            }
        }
        sent_.erase(it);
    });
    if (!ok) {
        requeue(*it);
        sent_.erase(it);
    }
    return ok;
}

void redis_source::confirmed(batch& b) {
    if (!b.dead.empty()) {
        // One line per batch: a flood of bad payloads must not flood the log (the pipeline
        // already logs why, rate-limited); each entry at debug level.
        log::info("dead letters written",
                  {{"count", b.dead.size()}, {"stream", opts_.dead_letter_stream}});
        for (const auto& d : b.dead) {
            log::debug("dead-lettered", {{"source_id", d.ack.id},
                                         {"message_id", d.message_id},
                                         {"reason", d.reason},
                                         {"attempts", d.attempts}});
        }
    }
    for (const auto& a : b.acks)
        report(a, a.what);
    for (const auto& d : b.dead)
        report(d.ack, d.ack.what);
}

// Not confirmed (connection lost, error): send again later, or give up if forced to stop.
void redis_source::requeue(batch& b) {
    for (auto& a : b.acks) {
        if (giving_up())
            report(a, outcome::released);
        else
            acks_.push_back(std::move(a));
    }
    for (auto& d : b.dead) {
        if (giving_up())
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
    if (closed()) return;
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
    if (closed() || !writer_.up()) return; // entries stay pending; renewed at the next tick
    renew(
        in_flight.size(), [&](std::size_t i) { return std::string_view(in_flight[i]->ref); },
        "lease renewal failed");
}

void redis_source::renew_ahead() {
    if (closed() || ahead_.empty() || !writer_.up()) return;
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
            if (closed() || !r) return;
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
    stats_.leases_lost.inc();
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
    if (closed()) return;
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
    // Nothing new: the stream may be idle (checked before any further read).
    if (got == 0 && reads_ == 0 && ahead_.empty() && held_.empty() && unconfirmed_ == 0 &&
        opts_.exit_when_idle && state_ == state::reading)
        enter(state::checking_idle, "a read found nothing new");
    kick(); // the turn hands them over and reads again
}

// Entries read ahead go to the pipeline as far as it granted demand.
void redis_source::deliver_ahead() {
    while (demand_ > 0 && !ahead_.empty() && delivering()) {
        if (state_ == state::reading && reclaim_due_ && control_ == control::none) {
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
    if (closed() || entries.empty() || !writer_.up()) return;
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
                if (closed()) return;
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
    control_ = control::own;
    std::uint64_t pass = own_pass_;
    bool ok = writer_.send(
        {"XPENDING", opts_.stream, opts_.group, own_cursor_, "+", std::to_string(opts_.max_read),
         opts_.consumer},
        [this, k, pass](redisReply* r) {
            if (closed() || claim_failed(r, k, "XPENDING")) return;
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
            if (pass == own_pass_ && state_ == state::recovering) { // not started over meanwhile
                if (more && !last.empty())
                    own_cursor_ = "(" + last;
                else
                    enter(state::reading, "own pending entries taken back");
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
                    if (closed() || claim_failed(c, k, "claim of own entries")) return;
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
    control_ = control::reclaim;
    std::string lease = std::to_string(opts_.lease_timeout.count());
    bool ok = writer_.send(
        {"XPENDING", opts_.stream, opts_.group, "IDLE", lease, reclaim_cursor_, "+",
         std::to_string(k)},
        [this, k, lease](redisReply* r) {
            if (closed() || claim_failed(r, k, "XPENDING")) return;
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
                    if (closed() || claim_failed(c, k, "XCLAIM")) return;
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
                    stats_.reclaimed_orphans.inc(orphans);
                    stats_.reclaimed_retries.inc(retries);
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

// A claim's step failed (an error, or the connection went away): its demand goes back.
bool redis_source::claim_failed(const redisReply* r, std::size_t reserved, const char* what) {
    std::string e = redis_link::error_of(r);
    if (e.empty()) return false;
    if (r && !handle_nogroup(e)) cool_down(what, e);
    claim_done(reserved, 0);
    return true;
}

// A claim is over: what it reserved and did not deliver goes back to the demand.
void redis_source::claim_done(std::size_t reserved, std::size_t used) {
    demand_ += reserved - std::min(reserved, used);
    control_ = control::none;
    kick();
}

// Entries a claim took, now ours. After a stop none is delivered (the pipeline starts nothing
// more): they are left pending for any worker instead.
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
        if (!delivering() && !held_.count(e.id)) {
            left.push_back(std::move(e));
            continue;
        }
        if (deliver_one(e.id, e.payload, e.has_payload, e.attempt)) ++used;
    }
    if (!left.empty()) {
        log::info("entries claimed after the stop are left pending for any worker",
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
    if (!delivering()) return false;    // stopping: left pending by the caller
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
// Sampling for /metrics: one timer, three commands pipelined on the writer (the reader's reads
// never wait behind them), at most one sample under way. A failed command leaves its figure as
// it was; the next sample tries again.
// ---------------------------------------------------------------------------------------------

void redis_source::sample() {
    if (!running() || samples_ > 0 || !writer_.up() || !group_ready_) return;
    auto integer = [](const redisReply* r) -> std::optional<std::int64_t> {
        if (r && r->type == REDIS_REPLY_INTEGER) return r->integer;
        return std::nullopt;
    };
    auto answered = [this] { --samples_; };
    // XINFO GROUPS: a list of groups, each a flat list of fields. `lag` is there since Redis 7.0
    // and nil when Redis cannot tell (entries deleted from the stream): -1 then.
    if (writer_.send({"XINFO", "GROUPS", opts_.stream}, [this, integer, answered](redisReply* r) {
            if (closed()) return;
            answered();
            for (std::size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; ++i) {
                const redisReply* g = r->element[i];
                if (g->type != REDIS_REPLY_ARRAY) continue;
                std::optional<std::int64_t> lag;
                bool ours = false;
                for (std::size_t f = 0; f + 1 < g->elements; f += 2) {
                    auto key = str(g->element[f]);
                    if (key == "name") ours = str(g->element[f + 1]) == opts_.group;
                    if (key == "lag") lag = integer(g->element[f + 1]);
                }
                if (ours) stats_.group_lag.set(lag.value_or(-1));
            }
        }))
        ++samples_;
    // XPENDING summary: [count, smallest id, greatest id, [[consumer, count], ...]].
    if (writer_.send({"XPENDING", opts_.stream, opts_.group},
                     [this, integer, answered](redisReply* r) {
                         if (closed()) return;
                         answered();
                         if (r && r->type == REDIS_REPLY_ARRAY && r->elements > 0)
                             if (auto n = integer(r->element[0])) stats_.group_pending.set(*n);
                     }))
        ++samples_;
    if (writer_.send({"XLEN", opts_.dead_letter_stream}, [this, integer, answered](redisReply* r) {
            if (closed()) return;
            answered();
            if (auto n = integer(r)) stats_.dead_letter_length.set(*n);
        }))
        ++samples_;
}

// ---------------------------------------------------------------------------------------------
// The end
// ---------------------------------------------------------------------------------------------

// --exit-when-idle: a read found nothing new; if nothing of ours is outstanding and the group
// has no pending entry at all (no other worker is busy, nothing left to reclaim), we are done;
// otherwise reading resumes. (While checking no read is sent: a claim and a blocking read that
// end together must not keep postponing the check.)
void redis_source::check_idle() {
    if (!held_.empty() || unconfirmed_ > 0 || !acks_.empty() || !dead_.empty())
        return enter(state::reading, "work in hand");
    control_ = control::idle_check;
    bool sent = writer_.send({"XPENDING", opts_.stream, opts_.group}, [this](redisReply* r) {
        if (closed()) return;
        control_ = control::none;
        kick();
        if (state_ != state::checking_idle) return;
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
            r->element[0]->type != REDIS_REPLY_INTEGER)
            return; // asked again at the next turn
        if (r->element[0]->integer == 0 && held_.empty() && unconfirmed_ == 0 && acks_.empty() &&
            dead_.empty()) {
            log::info("stream idle: nothing new or pending for the group",
                      {{"stream", opts_.stream}, {"group", opts_.group}});
            enter(writer_.up() ? state::leaving : state::stopped, "stream idle");
        } else {
            enter(state::reading, "entries pending in the group");
        }
    });
    if (!sent) control_ = control::none;
}

// Nothing of ours in hand or under way: no delivery unconfirmed, no verdict unsent, no read or
// request that could still bring an entry.
bool redis_source::quiet() const {
    return held_.empty() && ahead_.empty() && unconfirmed_ == 0 && acks_.empty() && dead_.empty() &&
           sent_.empty() && reads_ == 0 && control_ == control::none && releases_ == 0;
}

// Leaving after a clean stop (a drain or --exit-when-idle): the consumer leaves the group if
// nothing is pending under it, so workers named <host>-<pid> do not pile up in XINFO
// CONSUMERS. With the writer gone the step is skipped: a stop never waits for Redis here.
void redis_source::say_farewell() {
    control_ = control::farewell;
    bool sent = writer_.send(
        {"EVAL", farewell_lua, "1", opts_.stream, opts_.group, opts_.consumer},
        [this](redisReply* r) {
            if (closed()) return;
            control_ = control::none;
            if (r && r->type == REDIS_REPLY_INTEGER) {
                if (r->integer >= 0)
                    log::info("consumer left the group", {{"consumer", opts_.consumer}});
                else
                    log::info("consumer stays in the group: entries are pending under it",
                              {{"consumer", opts_.consumer}});
            } else if (auto e = redis_link::error_of(r); r && !e.empty()) {
                log::warn("could not delete the consumer from the group", {{"error", e}});
            }
            if (state_ == state::leaving) enter(state::stopped, "left");
        });
    if (!sent) {
        control_ = control::none;
        enter(state::stopped, "connection lost");
    }
}

} // namespace mayhem
