// The request queue of a group-committing store (sqlite_store, postgres_store): requests are
// queued on the loop thread into a batch, and the whole batch is written as one transaction.
// A batch owns copies of every string its requests refer to, so a transaction never reads a
// message that a cancelled task has already freed.
#pragma once

#include "store/store.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mayhem {

// unclaim: removes a restart start that will never run (release_claim; or withdrawn by the
// store: committed while its task was destroyed).
enum class store_op : std::uint8_t {
    save,
    claim,
    claim_host,
    finish,
    unclaim,
    renew,
    complete,
    slot,       // claim_slot
    unslot,     // release_slot
    read_pause, // watch_pause's poll (and the breaker's)
    note,       // note_breaker
    trial,      // claim_trial
    prune,      // prune: its bounds are the store's (one pass at a time); out: n messages rows
                // deleted, attempt restarts rows deleted
    skip
};

// A string copied into a batch's text (offset, length).
struct store_text_ref {
    std::uint32_t off = 0, len = 0;
};

// Where a request's answer goes, for the task waiting on it (store/store_reply.hpp).
struct store_reply_slot;

// One queued request.
struct store_request {
    store_op kind = store_op::save;
    store_text_ref id, a, b, c; // save: instance, hostname, reason; claim: hostname;
                                // finish: result, detail; complete: outcome, reason
    // out: claim; claim_host: done = blocked; finish: held = the claim is a peer's now; slot:
    // held = every slot is taken
    // note: a = hostname, n = the breaker_outcome, attempt = 1 for a trial. trial: n = the
    // cooldown in, the trial_answer out.
    restart_claim claim = restart_claim::proceed;
    std::uint32_t attempt = 0; // claim: out, the restart start recorded (proceed, unfinished)
    // claim_host: in, the cutoff (ms); out, the blocking start (ms) when blocked. claim and
    // claim_host: out, the `started` stamp written (proceed). unclaim: in, that stamp (0:
    // whatever unfinished start the id has). slot: in, the cap.
    std::int64_t n = 0;
    store_reply_slot* reply = nullptr; // where its answer goes (null: nobody waits)
};

// Requests and the strings they refer to, all in one buffer: queueing a request allocates
// nothing once the buffers have grown to a batch's size (they are reused, batch after batch).
struct store_batch {
    std::vector<store_request> reqs;
    std::string text;

    store_text_ref put(std::string_view v) {
        store_text_ref r{static_cast<std::uint32_t>(text.size()),
                         static_cast<std::uint32_t>(v.size())};
        text.append(v);
        return r;
    }
    std::string_view view(store_text_ref r) const { return {text.data() + r.off, r.len}; }
    std::size_t size() const noexcept { return reqs.size(); }
    bool empty() const noexcept { return reqs.empty(); }
    store_request& operator[](std::size_t i) { return reqs[i]; }
    auto begin() { return reqs.begin(); }
    auto end() { return reqs.end(); }
    auto begin() const { return reqs.begin(); }
    auto end() const { return reqs.end(); }
    void clear() noexcept {
        reqs.clear();
        text.clear();
    }
    friend void swap(store_batch& x, store_batch& y) noexcept {
        x.reqs.swap(y.reqs);
        x.text.swap(y.text);
    }
};

// Sets a flag for as long as it lives: a store's one retention pass at a time (store.hpp,
// prune), marked queued until the task that queued it ends or is destroyed; the sqlite store's
// short lock waits while a pass is written.
struct flag_while_alive {
    bool& on;
    explicit flag_while_alive(bool& f) noexcept : on(f) { on = true; }
    ~flag_while_alive() { on = false; }
    flag_while_alive(const flag_while_alive&) = delete;
    flag_while_alive& operator=(const flag_while_alive&) = delete;
};

// Appends `r` with its strings, copied from `from`'s text into `to`'s; nobody waits on the copy.
inline void copy_request(store_batch& to, const store_batch& from, store_request r) {
    for (auto* t : {&r.id, &r.a, &r.b, &r.c})
        *t = to.put(from.view(*t));
    r.reply = nullptr;
    to.reqs.push_back(r);
}

} // namespace mayhem
