// Application Default Credentials for Google's APIs, the parts that are plain functions: reading
// a service-account key file, the RS256-signed JWT (OpenSSL's EVP API) that is exchanged for an
// access token, the token endpoint's and the metadata server's replies, and when a Pub/Sub
// endpoint gets a token at all. The loop-driven side (fetching, refreshing) is
// gcp_token_source.hpp.
//
// Nothing here logs or returns in an error the private key or a token.
//
// Threading: plain functions, any thread.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

typedef struct evp_pkey_st EVP_PKEY;

namespace mayhem::gcp {

inline constexpr std::string_view pubsub_scope = "https://www.googleapis.com/auth/pubsub";
inline constexpr std::string_view jwt_bearer_grant = "urn:ietf:params:oauth:grant-type:jwt-bearer";
// The access token of the metadata server's default service account, path under its host.
inline constexpr std::string_view metadata_token_path =
    "/computeMetadata/v1/instance/service-accounts/default/token";
inline constexpr std::string_view metadata_default_host = "metadata.google.internal";

// A service-account key file ("type": "service_account"), read and checked once.
struct service_account {
    std::string file; // as given, for messages
    std::string client_email;
    std::string private_key_id; // the JWT's "kid"; may be empty
    std::string token_uri;
    std::shared_ptr<EVP_PKEY> key; // the RSA private key
};

// Reads `path`; throws std::runtime_error "<path>: <why>" when it is missing, not JSON, not a
// service-account key, or its private_key is not a PEM RSA key.
std::shared_ptr<const service_account> load_service_account(const std::string& path);

// Base64url without padding (RFC 7515).
std::string base64url(std::string_view data);

// The JWT assertion for the token endpoint: header {alg RS256, typ JWT, kid}, claims {iss
// client_email, scope, aud token_uri, iat now, exp now + 1 h}, signed with the key.
std::string make_assertion(const service_account& sa, std::chrono::system_clock::time_point now,
                           std::string_view scope);
// The form body of the exchange: grant_type=<jwt-bearer>&assertion=<jwt>.
std::string token_request_body(std::string_view assertion);

struct access_token {
    std::string value;
    std::chrono::seconds expires_in{0};
};
// {"access_token": "...", "expires_in": N, "token_type": "Bearer"}; nullopt with `error` set
// (never holding the body's token) otherwise.
std::optional<access_token> parse_token_reply(std::string_view body, std::string* error);
// "HTTP 400: invalid_grant: Invalid JWT Signature." from a refusal of the token endpoint.
std::string token_error_text(long status, std::string_view body);

// http://$GCE_METADATA_HOST (as Google's clients) or http://metadata.google.internal, plus the
// token path.
std::string metadata_token_url();

// --pubsub-credentials: "adc" always, "none" never, "auto" when the endpoint is https (Google's
// or a private one): an emulator speaks plain http, and a token never crosses plain http
// unless asked for.
bool wants_credentials(std::string_view mode, std::string_view endpoint);

} // namespace mayhem::gcp
