#include "sources/gcp_credentials.hpp"

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdexcept>

namespace mayhem::gcp {

namespace {

// A key file is a few KB; anything much larger is not one.
constexpr std::size_t max_key_file_bytes = 64 * 1024;
constexpr std::chrono::seconds assertion_lifetime{3600};

// No passphrase prompt: an encrypted key is refused, not asked about on the terminal.
int no_passphrase(char*, int, int, void*) {
    return 0;
}

std::string percent_encode(std::string_view s) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : s) {
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

std::string field(const nlohmann::json& doc, const char* name, bool required) {
    auto it = doc.find(name);
    if (it == doc.end() || !it->is_string() || it->get_ref<const std::string&>().empty()) {
        if (required) throw std::runtime_error(std::string("no \"") + name + "\" string in it");
        return {};
    }
    return it->get<std::string>();
}

} // namespace

std::shared_ptr<const service_account> load_service_account(const std::string& path) {
    auto failed = [&](const std::string& why) { return std::runtime_error(path + ": " + why); };
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw failed("cannot open it (GOOGLE_APPLICATION_CREDENTIALS names a missing or "
                     "unreadable file)");
    std::string text;
    text.resize(max_key_file_bytes + 1);
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    text.resize(static_cast<std::size_t>(in.gcount()));
    if (text.size() > max_key_file_bytes) throw failed("larger than 64 KiB: not a key file");
    nlohmann::json doc;
    try {
        doc = nlohmann::json::parse(text);
    } catch (const std::exception&) {
        // Not nlohmann's message: it quotes what it read, which may be the key.
        throw failed("not JSON (expected a service-account key file from the Cloud console or "
                     "gcloud iam service-accounts keys create)");
    }
    if (!doc.is_object()) throw failed("not a JSON object (expected a service-account key file)");
    auto sa = std::make_shared<service_account>();
    sa->file = path;
    try {
        auto type = field(doc, "type", true);
        if (type != "service_account")
            throw std::runtime_error("\"type\" is \"" + type +
                                     "\"; only \"service_account\" key files are supported");
        sa->client_email = field(doc, "client_email", true);
        sa->private_key_id = field(doc, "private_key_id", false);
        sa->token_uri = field(doc, "token_uri", false);
        if (sa->token_uri.empty()) sa->token_uri = "https://oauth2.googleapis.com/token";
        if (!sa->token_uri.starts_with("https://") && !sa->token_uri.starts_with("http://"))
            throw std::runtime_error("\"token_uri\" is not an http(s) URL");
        auto pem = field(doc, "private_key", true);
        std::unique_ptr<BIO, decltype(&BIO_free)> bio(
            BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
        EVP_PKEY* key =
            bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, &no_passphrase, nullptr) : nullptr;
        ERR_clear_error();
        if (!key) throw std::runtime_error("\"private_key\" is not a PEM private key");
        sa->key.reset(key, &EVP_PKEY_free);
        if (!EVP_PKEY_is_a(key, "RSA"))
            throw std::runtime_error("\"private_key\" is not an RSA key (RS256 needs one)");
    } catch (const std::runtime_error& e) {
        throw failed(e.what());
    }
    return sa;
}

std::string base64url(std::string_view data) {
    std::string out(4 * ((data.size() + 2) / 3), '\0');
    int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                            reinterpret_cast<const unsigned char*>(data.data()),
                            static_cast<int>(data.size()));
    out.resize(static_cast<std::size_t>(n));
    while (!out.empty() && out.back() == '=')
        out.pop_back();
    for (char& c : out) {
        if (c == '+') c = '-';
        if (c == '/') c = '_';
    }
    return out;
}

std::string make_assertion(const service_account& sa, std::chrono::system_clock::time_point now,
                           std::string_view scope) {
    auto iat = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
    nlohmann::json header{{"alg", "RS256"}, {"typ", "JWT"}};
    if (!sa.private_key_id.empty()) header["kid"] = sa.private_key_id;
    nlohmann::json claims{{"iss", sa.client_email},
                          {"scope", std::string(scope)},
                          {"aud", sa.token_uri},
                          {"iat", iat},
                          {"exp", iat + assertion_lifetime.count()}};
    std::string input = base64url(header.dump()) + "." + base64url(claims.dump());
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
    std::size_t len = 0;
    if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, sa.key.get()) != 1 ||
        EVP_DigestSign(ctx.get(), nullptr, &len,
                       reinterpret_cast<const unsigned char*>(input.data()), input.size()) != 1) {
        ERR_clear_error();
        throw std::runtime_error(sa.file + ": cannot sign with its private_key");
    }
    std::string sig(len, '\0');
    if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                       reinterpret_cast<const unsigned char*>(input.data()), input.size()) != 1) {
        ERR_clear_error();
        throw std::runtime_error(sa.file + ": cannot sign with its private_key");
    }
    sig.resize(len);
    return input + "." + base64url(sig);
}

std::string token_request_body(std::string_view assertion) {
    return "grant_type=" + percent_encode(jwt_bearer_grant) +
           "&assertion=" + percent_encode(assertion);
}

std::optional<access_token> parse_token_reply(std::string_view body, std::string* error) {
    auto fail = [&](const char* why) -> std::optional<access_token> {
        if (error) *error = why;
        return std::nullopt;
    };
    nlohmann::json doc;
    try {
        doc = nlohmann::json::parse(body);
    } catch (const std::exception&) {
        return fail("the token reply is not JSON");
    }
    if (!doc.is_object()) return fail("the token reply is not a JSON object");
    auto tok = doc.find("access_token");
    if (tok == doc.end() || !tok->is_string() || tok->get_ref<const std::string&>().empty())
        return fail("the token reply has no access_token");
    auto exp = doc.find("expires_in");
    if (exp == doc.end() || !exp->is_number_integer() || exp->get<long long>() <= 0)
        return fail("the token reply has no positive expires_in");
    const auto& value = tok->get_ref<const std::string&>();
    // It goes into a header line: no control characters or spaces.
    for (char c : value)
        if (static_cast<unsigned char>(c) <= ' ' || c == 127)
            return fail("the token reply's access_token holds a space or control character");
    return access_token{value, std::chrono::seconds{exp->get<long long>()}};
}

std::string token_error_text(long status, std::string_view body) {
    std::string out = "HTTP " + std::to_string(status);
    try {
        auto doc = nlohmann::json::parse(body);
        if (auto e = doc.find("error"); e != doc.end()) {
            if (e->is_string()) out += ": " + e->get<std::string>();
            if (e->is_object() && e->contains("message") && (*e)["message"].is_string())
                out += ": " + (*e)["message"].get<std::string>();
        }
        if (auto d = doc.find("error_description"); d != doc.end() && d->is_string())
            out += ": " + d->get<std::string>();
    } catch (const std::exception&) {
        // Not JSON: the status alone (the body is not echoed: it could be anything).
    }
    return out;
}

std::string metadata_token_url() {
    const char* host = std::getenv("GCE_METADATA_HOST");
    std::string h = host && *host ? host : std::string(metadata_default_host);
    return "http://" + h + std::string(metadata_token_path);
}

bool wants_credentials(std::string_view mode, std::string_view endpoint) {
    if (mode == "adc") return true;
    if (mode == "none") return false;
    return endpoint.starts_with("https://");
}

} // namespace mayhem::gcp
