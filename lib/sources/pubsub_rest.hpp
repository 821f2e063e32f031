// Google Cloud Pub/Sub's REST API (v1), the parts mayhem uses: the bodies of pull, acknowledge,
// modifyAckDeadline and publish (JSON through nlohmann_json, message data in base64 through
// OpenSSL), resource names, and where the API is.
//
// Threading: plain functions, any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mayhem::pubsub {

// The API's limits per call (with room under its 512 KB request limit for long ack ids).
inline constexpr std::size_t max_ack_ids = 2500;
inline constexpr std::size_t max_publish = 1000;
inline constexpr std::size_t max_pull = 1000;
inline constexpr int max_ack_deadline_s = 600;

inline constexpr std::string_view google_endpoint = "https://pubsub.googleapis.com";

// projects/P/subscriptions/S and projects/P/topics/T, each part non-empty and without '/'.
bool valid_subscription(std::string_view name);
bool valid_topic(std::string_view name);
// An http:// or https:// URL with a host, no trailing path beyond '/'.
bool valid_endpoint(std::string_view url);

// The API's base URL: `flag` (--pubsub-endpoint) when given, else http://$PUBSUB_EMULATOR_HOST
// (the variable every Google client honours) when set, else Google's endpoint.
std::string resolve_endpoint(const std::string& flag);

std::string base64_encode(std::string_view data);
std::optional<std::string> base64_decode(std::string_view text);

struct received {
    std::string ack_id;
    std::string message_id;
    std::string payload;       // the message's data, decoded
    std::uint32_t attempt = 0; // deliveryAttempt; 0 when the subscription has no dead-letter
                               // policy (the API then does not count)
    bool data_valid = true;    // false: `data` was not base64 (payload holds it as given)
};

// The reply to a pull; nullopt with `error` set when it is not what the API sends.
std::optional<std::vector<received>> parse_pull(std::string_view body, std::string* error);

std::string pull_body(std::size_t max_messages, bool return_immediately);
std::string acknowledge_body(std::span<const std::string> ack_ids);
std::string modify_deadline_body(std::span<const std::string> ack_ids, int seconds);

struct outgoing {
    std::string_view data;
    std::string_view ordering_key; // empty: none
    std::vector<std::pair<std::string, std::string>> attributes;
};
std::string publish_body(std::span<const outgoing> messages);
// How many message ids a publish reply holds; nullopt when it does not parse.
std::optional<std::size_t> parse_publish(std::string_view body);

// The ack ids an acknowledge or modifyAckDeadline refusal names as failed, with their reason
// ("PERMANENT_FAILURE_INVALID_ACK_ID", ...): on an exactly-once subscription the error's
// google.rpc.ErrorInfo lists them, and the call's other ack ids took. nullopt when the reply
// carries no such list (then none of them took).
std::optional<std::unordered_map<std::string, std::string>> ack_failures(std::string_view body);

// "HTTP 404: Resource not found (resource=...)": the status with the API's own error message
// when the body carries one.
std::string error_text(long status, std::string_view body);
// A status worth retrying after a pause (throttled, unavailable, timed out, server error); any
// other non-2xx will not change by sending the same call again.
bool transient_status(long status) noexcept;

} // namespace mayhem::pubsub
