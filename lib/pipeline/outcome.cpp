#include "pipeline/outcome.hpp"

#include <algorithm>

namespace mayhem {

std::string_view to_string(outcome o) noexcept {
    switch (o) {
    case outcome::acked:
        return "acked";
    case outcome::retried:
        return "retried";
    case outcome::dead_lettered:
        return "dead_lettered";
    case outcome::skipped:
        return "skipped";
    case outcome::released:
        return "released";
    }
    return "unknown";
}

std::string_view to_string(restart_status s) noexcept {
    switch (s) {
    case restart_status::ok:
        return "ok";
    case restart_status::failed:
        return "failed";
    case restart_status::skipped_cooldown:
        return "skipped_cooldown";
    case restart_status::skipped_duplicate:
        return "skipped_duplicate";
    case restart_status::dry_run:
        return "dry_run";
    case restart_status::coalesced:
        return "coalesced";
    case restart_status::refused:
        return "refused";
    case restart_status::not_started:
        return "not_started";
    case restart_status::unverified:
        return "unverified";
    }
    return "unknown";
}

std::chrono::milliseconds backoff_policy::delay(std::uint32_t attempt,
                                                std::uint64_t random) const noexcept {
    using std::chrono::milliseconds;
    std::uint32_t shift = std::min<std::uint32_t>(attempt > 0 ? attempt - 1 : 0, 30);
    auto ceiling = std::min<std::int64_t>(cap.count(), base.count() << shift);
    if (ceiling <= 0) return milliseconds{0};
    // Full jitter: uniform in [ceiling/2, ceiling], so retries spread out but never collapse to 0.
    auto half = ceiling / 2;
    return milliseconds{
        half + static_cast<std::int64_t>(random % static_cast<std::uint64_t>(ceiling - half + 1))};
}

verdict decide(const decide_inputs& in, const backoff_policy& backoff, std::uint64_t random) {
    auto retry = [&](std::string reason) {
        return verdict{outcome::retried, std::move(reason), backoff.delay(in.attempt, random)};
    };
    if (in.restarted.status == restart_status::not_started)
        return verdict{outcome::released, "stopping: " + in.restarted.detail.str(), {}};
    if (!in.saved) return retry("save failed: " + in.save_exception);
    if (!in.saved->ok) return retry("save failed: " + in.saved->error.str());
    if (in.restarted.not_attempted)
        return retry("restart not claimed: " + in.restarted.detail.str());

    std::string failure;
    switch (in.restarted.status) {
    case restart_status::ok:
    case restart_status::dry_run:
    case restart_status::skipped_cooldown:
    case restart_status::coalesced:
        return verdict{outcome::acked, {}, {}};
    case restart_status::skipped_duplicate:
        return verdict{outcome::skipped, "already completed", {}};
    case restart_status::refused:
        return verdict{outcome::dead_lettered, "restart refused: " + in.restarted.detail.str(), {}};
    case restart_status::unverified:
        return verdict{
            outcome::dead_lettered, "restart uncertain: " + in.restarted.detail.str(), {}};
    case restart_status::failed:
        failure = "restart failed: " + in.restarted.detail.str();
        break;
    case restart_status::not_started:
        break; // released above
    }
    if (in.restarted.permanent) return verdict{outcome::dead_lettered, failure, {}};
    if (in.attempt < in.max_attempts) return retry(std::move(failure));
    return verdict{outcome::dead_lettered,
                   failure + " (attempt " + std::to_string(in.attempt) + " of " +
                       std::to_string(in.max_attempts) + ")",
                   {}};
}

} // namespace mayhem
