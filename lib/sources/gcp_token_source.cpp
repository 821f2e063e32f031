#include "sources/gcp_token_source.hpp"

#include "runtime/log.hpp"

#include <algorithm>

namespace mayhem::gcp {

namespace {

// A token is refreshed this long before it expires (Google's clients use a few minutes)...
constexpr std::chrono::seconds refresh_lead{300};
// ...and is no longer sent this long before (a call under way must not arrive with it stale),
// or a quarter of its life for short-lived tokens.
constexpr std::chrono::seconds expiry_margin{10};
constexpr rt::millis retry_base{200};
constexpr rt::millis retry_cap{5000};
constexpr std::chrono::milliseconds fetch_timeout{10000};

} // namespace

token_source::token_source(rt::loop& loop, http_client& http,
                           std::shared_ptr<const service_account> key,
                           std::function<void()> changed)
    : loop_(loop), http_(http), key_(std::move(key)), changed_(std::move(changed)),
      refresh_timer_([this] { fetch(); }), expiry_timer_([this] { drop("it expired"); }) {}

std::string token_source::where() const {
    if (key_) return "the key file " + key_->file + " (" + key_->client_email + ")";
    return "the metadata server (" + metadata_token_url() + ")";
}

void token_source::start() {
    fetch();
}

void token_source::rejected(const std::string& used) {
    if (used.empty() || used != token_) return; // an older token: a new one is here already
    drop("the API refused it (401)");
    refresh_timer_.cancel();
    fetch();
}

void token_source::drop(const char* why) {
    if (token_.empty()) return;
    token_.clear();
    expiry_timer_.cancel();
    log::warn("pubsub: the access token is no longer used; calls wait for a new one",
              {{"why", why}, {"from", where()}});
    changed_();
}

void token_source::fetch() {
    if (fetching_) return;
    http_request req;
    req.timeout = fetch_timeout;
    if (key_) {
        std::string assertion;
        try {
            assertion = make_assertion(*key_, std::chrono::system_clock::now(), pubsub_scope);
        } catch (const std::exception& e) {
            fail(e.what());
            return;
        }
        req.url = key_->token_uri;
        req.content_type = "application/x-www-form-urlencoded";
        req.body = token_request_body(assertion);
    } else {
        req.method = "GET";
        req.url = metadata_token_url();
        req.headers.emplace_back("Metadata-Flavor: Google");
    }
    fetching_ = true;
    http_.send(std::move(req), [this](http_response r) {
        fetching_ = false;
        on_reply(r);
    });
}

void token_source::on_reply(const http_response& r) {
    if (r.status == 0) return fail(r.error);
    if (r.status != 200) return fail(token_error_text(r.status, r.body));
    std::string why;
    auto t = parse_token_reply(r.body, &why);
    if (!t) return fail(why);
    bool recovered = failures_ > 0 || !ever_;
    failures_ = 0;
    last_error_.clear();
    bool had = !token_.empty();
    token_ = std::move(t->value);
    auto life = std::chrono::duration_cast<rt::millis>(t->expires_in);
    auto usable = life - std::min<rt::millis>(expiry_margin, life / 4);
    auto refresh_at = life > 2 * refresh_lead ? life - refresh_lead : life / 2;
    loop_.timers().arm(expiry_timer_, usable);
    loop_.timers().arm(refresh_timer_, std::max<rt::millis>(refresh_at, rt::millis{100}));
    if (recovered)
        log::info(
            "pubsub: access token obtained",
            {{"from", where()}, {"expires_in_s", static_cast<long long>(t->expires_in.count())}});
    else
        log::debug("pubsub: access token refreshed",
                   {{"expires_in_s", static_cast<long long>(t->expires_in.count())}});
    ever_ = true;
    if (!had) changed_();
}

void token_source::fail(const std::string& why) {
    ++failures_;
    last_error_ = why;
    auto delay = std::min(retry_cap, retry_base * (1 << std::min(failures_ - 1, 6u)));
    log::warn("pubsub: no access token; trying again after a pause",
              {{"from", where()},
               {"error", why},
               {"retry_in_ms", static_cast<long long>(delay.count())},
               {"token_still_valid", !token_.empty()}});
    loop_.timers().arm(refresh_timer_, delay);
    if (token_.empty()) changed_(); // the owner learns that none is coming yet
}

} // namespace mayhem::gcp
