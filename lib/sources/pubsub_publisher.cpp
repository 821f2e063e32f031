#include "sources/pubsub_publisher.hpp"

#include "sources/pubsub_rest.hpp"

#include <algorithm>
#include <stdexcept>

namespace mayhem {

pubsub_publisher::pubsub_publisher(std::string endpoint, const std::string& topic,
                                   std::size_t batch, unsigned depth, bool credentials,
                                   std::shared_ptr<const gcp::service_account> key)
    : http_(loop_), url_(std::move(endpoint) + "/v1/" + topic + ":publish"),
      batch_(std::clamp<std::size_t>(batch, 1, pubsub::max_publish)), depth_(std::max(1u, depth)) {
    if (credentials) {
        auth_ = std::make_unique<gcp::token_source>(loop_, http_, std::move(key), [] {});
        auth_->start();
    }
}

// A command-line tool gives up at the first failed fetch rather than waiting for the endpoint.
std::string pubsub_publisher::bearer() {
    if (!auth_) return {};
    unsigned failed = auth_->failures();
    loop_.run_until([&] { return !auth_->token().empty() || auth_->failures() > failed; });
    if (auth_->token().empty())
        throw std::runtime_error("no access token from " + auth_->where() + ": " +
                                 auth_->last_error());
    return auth_->token();
}

void pubsub_publisher::add(std::string payload, std::string ordering_key) {
    queued_.emplace_back(std::move(payload), std::move(ordering_key));
    if (queued_.size() >= batch_) send();
}

void pubsub_publisher::flush() {
    if (!queued_.empty()) send();
    wait_until_below(1);
}

void pubsub_publisher::send() {
    wait_until_below(depth_);
    std::vector<pubsub::outgoing> out;
    out.reserve(queued_.size());
    for (const auto& [payload, key] : queued_)
        out.push_back({payload, key, {}});
    std::size_t n = queued_.size();
    auto token = bearer();
    ++calls_;
    http_.post(
        url_, pubsub::publish_body(out), std::chrono::seconds{30},
        [this, n](http_response r) {
            --calls_;
            if (r.status >= 200 && r.status < 300 && pubsub::parse_publish(r.body) == n) {
                sent_ += n;
            } else if (error_.empty()) {
                error_ = "publish to " + url_ + ": " +
                         (r.status == 0 ? r.error : pubsub::error_text(r.status, r.body));
            }
        },
        token);
    queued_.clear();
}

void pubsub_publisher::wait_until_below(unsigned calls) {
    loop_.run_until([&] { return calls_ < calls || !error_.empty(); });
    if (!error_.empty()) throw std::runtime_error(error_);
}

} // namespace mayhem
