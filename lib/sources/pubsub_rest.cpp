#include "sources/pubsub_rest.hpp"

#include <cstdlib>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

namespace mayhem::pubsub {

namespace {

// "projects/<p>/<kind>/<n>" with non-empty parts free of '/'.
bool valid_name(std::string_view name, std::string_view kind) {
    constexpr std::string_view projects = "projects/";
    if (!name.starts_with(projects)) return false;
    name.remove_prefix(projects.size());
    auto slash = name.find('/');
    if (slash == 0 || slash == std::string_view::npos) return false;
    name.remove_prefix(slash + 1);
    if (!name.starts_with(kind) || name.size() <= kind.size() || name[kind.size()] != '/')
        return false;
    name.remove_prefix(kind.size() + 1);
    return !name.empty() && name.find('/') == std::string_view::npos;
}

nlohmann::json id_list(std::span<const std::string> ids) {
    auto a = nlohmann::json::array();
    for (const auto& id : ids)
        a.push_back(id);
    return a;
}

} // namespace

bool valid_subscription(std::string_view name) {
    return valid_name(name, "subscriptions");
}

bool valid_topic(std::string_view name) {
    return valid_name(name, "topics");
}

bool valid_endpoint(std::string_view url) {
    std::string_view rest;
    if (url.starts_with("http://"))
        rest = url.substr(7);
    else if (url.starts_with("https://"))
        rest = url.substr(8);
    else
        return false;
    if (rest.ends_with('/')) rest.remove_suffix(1);
    return !rest.empty() && rest.find_first_of("/?# ") == std::string_view::npos;
}

std::string resolve_endpoint(const std::string& flag) {
    std::string url = flag;
    if (url.empty()) {
        const char* emu = std::getenv("PUBSUB_EMULATOR_HOST");
        url = emu && *emu ? "http://" + std::string(emu) : std::string(google_endpoint);
    }
    while (url.ends_with('/'))
        url.pop_back();
    return url;
}

std::string base64_encode(std::string_view data) {
    std::string out(4 * ((data.size() + 2) / 3), '\0');
    int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                            reinterpret_cast<const unsigned char*>(data.data()),
                            static_cast<int>(data.size()));
    out.resize(static_cast<std::size_t>(n));
    return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
    if (text.size() % 4 != 0) return std::nullopt;
    std::string out(text.size() / 4 * 3, '\0');
    int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                            reinterpret_cast<const unsigned char*>(text.data()),
                            static_cast<int>(text.size()));
    if (n < 0) return std::nullopt;
    // EVP_DecodeBlock counts the padding as zero bytes.
    std::size_t pad = text.ends_with("==") ? 2 : text.ends_with('=') ? 1 : 0;
    out.resize(static_cast<std::size_t>(n) - pad);
    return out;
}

std::optional<std::vector<received>> parse_pull(std::string_view body, std::string* error) {
    std::vector<received> out;
    try {
        auto doc = nlohmann::json::parse(body);
        if (!doc.is_object()) throw std::runtime_error("not a JSON object");
        auto it = doc.find("receivedMessages");
        if (it == doc.end()) return out; // nothing to deliver: the API sends {}
        if (!it->is_array()) throw std::runtime_error("receivedMessages is not an array");
        out.reserve(it->size());
        for (const auto& rm : *it) {
            received r;
            r.ack_id = rm.at("ackId").get<std::string>();
            const auto& m = rm.at("message");
            if (auto id = m.find("messageId"); id != m.end()) r.message_id = id->get<std::string>();
            std::string data;
            if (auto d = m.find("data"); d != m.end()) data = d->get<std::string>();
            if (auto raw = base64_decode(data)) {
                r.payload = std::move(*raw);
            } else {
                r.payload = std::move(data);
                r.data_valid = false;
            }
            if (auto a = rm.find("deliveryAttempt"); a != rm.end() && a->is_number_unsigned())
                r.attempt = a->get<std::uint32_t>();
            out.push_back(std::move(r));
        }
    } catch (const std::exception& e) {
        if (error) {
            // Only the position: nlohmann quotes the text it last read.
            std::string why = e.what();
            *error = why.substr(0, why.find("; last read:"));
        }
        return std::nullopt;
    }
    return out;
}

std::string pull_body(std::size_t max_messages, bool return_immediately) {
    nlohmann::json j{{"maxMessages", max_messages}};
    if (return_immediately) j["returnImmediately"] = true;
    return j.dump();
}

std::string acknowledge_body(std::span<const std::string> ack_ids) {
    return nlohmann::json{{"ackIds", id_list(ack_ids)}}.dump();
}

std::string modify_deadline_body(std::span<const std::string> ack_ids, int seconds) {
    return nlohmann::json{{"ackIds", id_list(ack_ids)}, {"ackDeadlineSeconds", seconds}}.dump();
}

std::string publish_body(std::span<const outgoing> messages) {
    auto list = nlohmann::json::array();
    for (const auto& m : messages) {
        nlohmann::json j{{"data", base64_encode(m.data)}};
        if (!m.ordering_key.empty()) j["orderingKey"] = std::string(m.ordering_key);
        if (!m.attributes.empty()) {
            auto attrs = nlohmann::json::object();
            for (const auto& [k, v] : m.attributes)
                attrs[k] = v;
            j["attributes"] = std::move(attrs);
        }
        list.push_back(std::move(j));
    }
    // A payload or reason that is not UTF-8 is replaced, not refused: the data itself travels
    // in base64, only attributes are text.
    return nlohmann::json{{"messages", std::move(list)}}.dump(
        -1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::optional<std::size_t> parse_publish(std::string_view body) {
    try {
        auto doc = nlohmann::json::parse(body);
        const auto& ids = doc.at("messageIds");
        if (!ids.is_array()) return std::nullopt;
        return ids.size();
    } catch (const std::exception&) {
        return std::nullopt;
    }
}

std::optional<std::unordered_map<std::string, std::string>> ack_failures(std::string_view body) {
    try {
        auto doc = nlohmann::json::parse(body);
        for (const auto& d : doc.at("error").at("details")) {
            auto type = d.value("@type", std::string());
            if (!type.ends_with("google.rpc.ErrorInfo")) continue;
            auto meta = d.find("metadata");
            if (meta == d.end() || !meta->is_object()) continue;
            std::unordered_map<std::string, std::string> out;
            for (const auto& [id, why] : meta->items())
                if (why.is_string()) out.emplace(id, why.get<std::string>());
            return out;
        }
    } catch (const std::exception&) {}
    return std::nullopt;
}

std::string error_text(long status, std::string_view body) {
    std::string out = "HTTP " + std::to_string(status);
    try {
        auto doc = nlohmann::json::parse(body);
        out += ": " + doc.at("error").at("message").get<std::string>();
    } catch (const std::exception&) {
        if (!body.empty() && body.size() < 200 && body.find('\n') == std::string_view::npos)
            out += ": " + std::string(body);
    }
    return out;
}

bool transient_status(long status) noexcept {
    return status == 408 || status == 429 || status >= 500;
}

} // namespace mayhem::pubsub
