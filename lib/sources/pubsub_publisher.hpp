// The producer side of the pubsub source, for `mayhem publish --pubsub-topic`: the API's publish
// call, up to 1,000 messages a call and several calls under way, through http_client on a loop
// of its own. A command-line tool, not the worker: it waits for the answers.
#pragma once

#include "runtime/loop.hpp"
#include "sources/gcp_token_source.hpp"
#include "sources/http_client.hpp"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace mayhem {

class pubsub_publisher {
public:
    // `endpoint`: the API's base URL (pubsub::resolve_endpoint); `topic`: projects/P/topics/T.
    // `credentials`: every call carries an access token (Application Default Credentials: `key`,
    // or the metadata server when null); without one the publish fails.
    pubsub_publisher(std::string endpoint, const std::string& topic, std::size_t batch = 1000,
                     unsigned depth = 8, bool credentials = false,
                     std::shared_ptr<const gcp::service_account> key = {});

    // Queues one message (ordering_key empty: none); sends a call once `batch` are queued.
    void add(std::string payload, std::string ordering_key = {});
    // Sends what is queued and waits for every answer. Throws std::runtime_error naming the
    // first call that failed.
    void flush();
    std::uint64_t sent() const noexcept { return sent_; }

private:
    void send();
    void wait_until_below(unsigned calls);
    // The token for the next call: waits for one on the loop; throws when none can be had.
    std::string bearer();

    rt::loop loop_; // before http_: the client's handles are closed before the loop
    http_client http_;
    std::unique_ptr<gcp::token_source> auth_; // null: no credentials
    std::string url_;
    std::size_t batch_;
    unsigned depth_;
    std::vector<std::pair<std::string, std::string>> queued_; // payload, ordering key
    unsigned calls_ = 0;
    std::uint64_t sent_ = 0;
    std::string error_;
};

} // namespace mayhem
