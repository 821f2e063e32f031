// An access token for Google's APIs by Application Default Credentials, kept fresh on the loop:
// from a service-account key file (a signed JWT exchanged at its token_uri) or, without one,
// from the GCE/GKE metadata server. Every fetch goes through the caller's http_client (libcurl
// multi on the loop): no blocking call, no thread.
//
// A token is refreshed ahead of its expiry (5 minutes before, or halfway for a token that lives
// 10 minutes or less) and at once when the API refuses it (401). A failed fetch is tried again
// after a pause (200 ms doubling to 5 s); the old token is used meanwhile while it is still
// valid, then dropped: token() is empty until a fetch succeeds, and the owner holds its calls.
//
// Never logs a token or the key.
//
// Threading: loop thread only.
#pragma once

#include "runtime/loop.hpp"
#include "sources/gcp_credentials.hpp"
#include "sources/http_client.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace mayhem::gcp {

class token_source {
public:
    // `key`: the service account to sign for; null: the metadata server. `changed` runs on the
    // loop when a token arrives, is dropped, or a fetch failed while there is none (also from
    // inside start() and rejected()).
    token_source(rt::loop& loop, http_client& http, std::shared_ptr<const service_account> key,
                 std::function<void()> changed);
    token_source(const token_source&) = delete;
    token_source& operator=(const token_source&) = delete;

    // The first fetch.
    void start();
    // The token to send now; empty while none is valid.
    const std::string& token() const noexcept { return token_; }
    // Fetches that failed in a row, and the last one's reason (no secret in it).
    unsigned failures() const noexcept { return failures_; }
    const std::string& last_error() const noexcept { return last_error_; }
    // The API answered 401 to a call that carried `used`: drop it (if still the current one)
    // and fetch another now.
    void rejected(const std::string& used);
    // "the key file F (client_email E)" or "the metadata server (URL)", for logs.
    std::string where() const;

private:
    void fetch();
    void on_reply(const http_response& r);
    void fail(const std::string& why);
    void drop(const char* why);

    rt::loop& loop_;
    http_client& http_;
    std::shared_ptr<const service_account> key_;
    std::function<void()> changed_;
    rt::delayed_call refresh_timer_; // the next fetch: ahead of expiry, or after a failure
    rt::delayed_call expiry_timer_;  // the token stops being sent
    std::string token_;
    bool fetching_ = false;
    bool ever_ = false; // a token came once
    unsigned failures_ = 0;
    std::string last_error_;
};

} // namespace mayhem::gcp
