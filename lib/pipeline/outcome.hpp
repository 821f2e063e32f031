// What happens to one delivery, and the plain-code policy that decides it (README, "Outcomes").
// No loop, no clock: unit-tested directly.
#pragma once

#include "runtime/text.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>

namespace mayhem {

enum class outcome : std::uint8_t { acked, retried, dead_lettered, skipped, released };
inline constexpr int outcome_count = 5;
std::string_view to_string(outcome o) noexcept;

// The outcome decided for one delivery, with what the source needs to carry it out.
struct verdict {
    outcome what = outcome::acked;
    std::string reason;                      // why (dead letter, retry), empty when acked
    std::chrono::milliseconds retry_after{}; // with `retried`: when to deliver it again
    // The request's id, set by the pipeline for a payload that decoded and valid only while
    // source::settle() runs (it points into the message); empty when it did not decode. A
    // source that answers its producer (tcp) names the request with it.
    std::string_view message_id;
};

// How a restart ended.
enum class restart_status : std::uint8_t {
    ok,
    failed,
    skipped_cooldown,
    skipped_duplicate,
    dry_run,
    coalesced,
    refused, // by policy or a bad placeholder value: dead-lettered at once, never retried
    // The worker began to stop before this restart began: it never runs here; the message is
    // released for redelivery (a peer or a later run carries it out).
    not_started,
    // The restart ran and it is not known what it did: the command exited non-zero (other than
    // exit_code_did_nothing), was killed or timed out, or it succeeded and the verify command
    // did not. Never run again for this message: dead-lettered for a person to look at, and it
    // counts against the host's cooldown like a restart that succeeded.
    unverified,
};
inline constexpr int restart_status_count = 9;
std::string_view to_string(restart_status s) noexcept;

struct restart_result {
    restart_result() = default;
    restart_result(restart_status s, rt::text d = {}, bool perm = false)
        : status(s), permanent(perm), detail(std::move(d)) {}

    restart_status status = restart_status::ok;
    // `failed` means the restart provably did nothing (the command never started, or refused
    // before acting with exit_code_did_nothing): it may be retried.
    bool permanent = false; // with `failed`: retrying cannot fix it, dead-letter at once
    // With `failed`: no restart was attempted (the store could not claim it, or a live peer
    // holds the claim). Transient: retried without using up an attempt, like a failed save.
    bool not_attempted = false;
    rt::text detail; // failure text, or why it was skipped
};

// A save either succeeded or failed with a reason (store unreachable, disk full, ...).
struct save_result {
    bool ok = true;
    rt::text error;
};

// Exponential backoff with full jitter, capped: attempt 1 waits up to `base`, attempt n up to
// base * 2^(n-1), never more than `cap`.
struct backoff_policy {
    std::chrono::milliseconds base{200};
    std::chrono::milliseconds cap{30000};

    std::chrono::milliseconds delay(std::uint32_t attempt, std::uint64_t random) const noexcept;
};

// What to do with a message whose restart was recorded as started but never finished (the
// worker died in between): restart it again, or dead-letter it for a human to look at.
enum class unfinished_policy : std::uint8_t { retry, dead_letter };

struct decide_inputs {
    // This restart's attempt number, from 1: the store's count of restarts started for the
    // message id when it keeps one, otherwise the delivery's attempt.
    std::uint32_t attempt = 1;
    std::uint32_t max_attempts = 5;   // restart failures after this many are dead-lettered
    std::optional<save_result> saved; // nullopt: the save threw
    restart_result restarted; // a restart step that threw is a `failed` result with its text
    std::string save_exception;
};

// The gather's results -> the outcome:
//  - a failed save, or a restart the store could not claim, is never acked: retried (store
//    trouble is transient; it does not use up the message's restart attempts, so an outage
//    cannot dead-letter good requests);
//  - a failed restart (it provably did nothing) is retried while attempts are left, then
//    dead-lettered;
//  - an unverified restart (it ran, with an unknown effect) is dead-lettered at once: running
//    it again could restart the host twice;
//  - a duplicate (already completed) is `skipped`; ok, dry_run, cooldown and coalesced are acked;
//  - a refused restart (host outside --allow-hosts/--deny-hosts, unsafe placeholder value) is
//    dead-lettered at once: retrying cannot change the answer.
//  - a permanent restart failure (retrying cannot fix it) is dead-lettered at once;
//  - a restart the stop kept from starting (not_started) is released, whatever the save did.
verdict decide(const decide_inputs& in, const backoff_policy& backoff, std::uint64_t random);

} // namespace mayhem
