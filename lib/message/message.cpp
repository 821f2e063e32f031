#include "message/message.hpp"

#include "runtime/duration.hpp"
#include "runtime/hash.hpp"
#include "runtime/utf8.hpp"

#include <array>
#include <cstring>
#include <nlohmann/json.hpp>

namespace mayhem {

std::string_view to_string(decode_kind k) noexcept {
    switch (k) {
    case decode_kind::too_large:
        return "too_large";
    case decode_kind::not_utf8:
        return "not_utf8";
    case decode_kind::invalid_json:
        return "invalid_json";
    case decode_kind::not_object:
        return "not_object";
    case decode_kind::missing_field:
        return "missing_field";
    case decode_kind::wrong_type:
        return "wrong_type";
    case decode_kind::empty_field:
        return "empty_field";
    case decode_kind::unsigned_request:
        return "unsigned";
    case decode_kind::bad_signature:
        return "bad_signature";
    case decode_kind::expired:
        return "expired";
    }
    return "unknown";
}

bool valid_utf8(std::string_view s) noexcept {
    for (std::size_t i = 0; i < s.size();) {
        std::uint32_t cp = 0;
        std::size_t n = rt::utf8_sequence(s.substr(i), cp);
        if (n == 0) return false;
        i += n;
    }
    return true;
}

namespace {

// ASCII only: host names are ASCII (a name with other bytes is refused by the command template).
void lower_ascii(char* first, char* last) noexcept {
    for (; first != last; ++first)
        if (*first >= 'A' && *first <= 'Z') *first = static_cast<char>(*first - 'A' + 'a');
}

// A SAX handler that fills a message straight from the parser's events: no DOM is built, and
// only the fields we keep are copied.
class message_sax {
public:
    using json = nlohmann::json;
    using number_integer_t = json::number_integer_t;
    using number_unsigned_t = json::number_unsigned_t;
    using number_float_t = json::number_float_t;
    using string_t = json::string_t;
    using binary_t = json::binary_t;

    std::string id, instance, hostname, reason, issued_at, signature;
    bool have_id = false, have_instance = false, have_hostname = false, have_issued_at = false,
         have_signature = false;
    std::string type_error; // first mistyped known field, reported after parsing
    bool top_is_object = false;
    std::string parse_error_text;

    bool null() { return scalar("null"); }
    bool boolean(bool) { return scalar("a boolean"); }
    bool number_integer(number_integer_t) { return scalar("a number"); }
    bool number_unsigned(number_unsigned_t) { return scalar("a number"); }
    bool number_float(number_float_t, const string_t&) { return scalar("a number"); }
    bool binary(binary_t&) { return scalar("binary"); }
    bool string(string_t& s) {
        if (depth_ == 0) return top_level("a string");
        if (depth_ == 1 && current_ != field::other) {
            switch (current_) {
            case field::message_id:
                id = std::move(s);
                have_id = true;
                break;
            case field::instance_name:
                instance = std::move(s);
                have_instance = true;
                break;
            case field::hostname:
                hostname = std::move(s);
                have_hostname = true;
                break;
            case field::reason:
                reason = std::move(s);
                break;
            case field::issued_at:
                issued_at = std::move(s);
                have_issued_at = true;
                break;
            case field::signature:
                signature = std::move(s);
                have_signature = true;
                break;
            case field::other:
                break;
            }
        }
        return true;
    }
    bool start_object(std::size_t) {
        if (depth_ == 0)
            top_is_object = true;
        else if (depth_ == 1)
            mistyped("an object");
        ++depth_;
        return true;
    }
    bool end_object() {
        --depth_;
        return true;
    }
    bool start_array(std::size_t) {
        if (depth_ == 0) return top_level("an array");
        if (depth_ == 1) mistyped("an array");
        ++depth_;
        return true;
    }
    bool end_array() {
        --depth_;
        return true;
    }
    bool key(string_t& k) {
        if (depth_ == 1) {
            if (k == "message_id")
                current_ = field::message_id;
            else if (k == "instance_name")
                current_ = field::instance_name;
            else if (k == "hostname")
                current_ = field::hostname;
            else if (k == "reason")
                current_ = field::reason;
            else if (k == "issued_at")
                current_ = field::issued_at;
            else if (k == "signature")
                current_ = field::signature;
            else
                current_ = field::other;
        }
        return true;
    }
    bool parse_error(std::size_t pos, const std::string&, const nlohmann::detail::exception& ex) {
        // nlohmann's text starts with "[json.exception.parse_error.101] parse error at line 1,
        // column 2: "; keep what follows, the part a person can act on.
        std::string_view what = ex.what();
        if (auto colon = what.find(": "); colon != std::string_view::npos)
            what.remove_prefix(colon + 2);
        parse_error_text = "invalid JSON at byte " + std::to_string(pos) + ": " + std::string(what);
        return false;
    }

    std::string top_level_type; // set when the payload is valid JSON but not an object

private:
    enum class field { message_id, instance_name, hostname, reason, issued_at, signature, other };

    bool scalar(const char* what) {
        if (depth_ == 0) return top_level(what);
        if (depth_ == 1) mistyped(what);
        return true;
    }
    bool top_level(const char* what) {
        top_level_type = what;
        return false; // stop: nothing more to learn
    }
    void mistyped(const char* what) {
        if (current_ == field::other || !type_error.empty()) return;
        type_error = std::string(name(current_)) + " must be a string, got " + what;
    }
    static std::string_view name(field f) {
        switch (f) {
        case field::message_id:
            return "message_id";
        case field::instance_name:
            return "instance_name";
        case field::hostname:
            return "hostname";
        case field::reason:
            return "reason";
        case field::issued_at:
            return "issued_at";
        case field::signature:
            return "signature";
        case field::other:
            break;
        }
        return "";
    }

    int depth_ = 0;
    field current_ = field::other;
};

decode_error fail(decode_kind k, std::string reason) {
    return decode_error{k, std::move(reason)};
}

// ---------------------------------------------------------------------------------------------
// The plain fast path. Nearly every payload is a flat object of plain strings, the shape
// publishers write: {"message_id":"...","instance_name":"...", ...}. For that shape the SAX
// parse above costs most of a message's time on the loop (the lexer copies every byte into two
// token buffers), so it is scanned directly here. The scanner only says "yes, and these are the
// fields" or "not sure": anything outside the plain shape (an escape, a control byte, a number,
// a nested value, bad syntax, bad UTF-8) goes to nlohmann's parser, which stays the decoder of
// record and the author of every error message. A unit test checks that both paths agree on
// every payload of a large generated corpus.
// ---------------------------------------------------------------------------------------------

struct plain_fields {
    std::string_view id, instance, hostname, reason, issued_at, signature;
    bool have_id = false, have_instance = false, have_hostname = false, have_reason = false,
         have_issued_at = false, have_signature = false;

    void set(std::string_view key, std::string_view value) noexcept {
        // Later duplicates win, as they do in the SAX handler.
        if (key == "message_id") {
            id = value;
            have_id = true;
        } else if (key == "instance_name") {
            instance = value;
            have_instance = true;
        } else if (key == "hostname") {
            hostname = value;
            have_hostname = true;
        } else if (key == "reason") {
            reason = value;
            have_reason = true;
        } else if (key == "issued_at") {
            issued_at = value;
            have_issued_at = true;
        } else if (key == "signature") {
            signature = value;
            have_signature = true;
        }
    }
};

class plain_scanner {
public:
    explicit plain_scanner(std::string_view s) : p_(s.data()), end_(s.data() + s.size()) {}

    // True when the whole payload is one flat object whose values are all plain strings.
    bool scan(plain_fields& f) noexcept {
        if (!expect('{')) return false;
        skip_ws();
        if (p_ != end_ && *p_ == '}') {
            ++p_;
        } else {
            for (;;) {
                std::string_view key, value;
                if (!expect('"') || !string(key) || !expect(':') || !expect('"') || !string(value))
                    return false;
                f.set(key, value);
                skip_ws();
                if (p_ == end_) return false;
                char c = *p_++;
                if (c == '}') break;
                if (c != ',') return false;
            }
        }
        skip_ws();
        return p_ == end_;
    }

private:
    void skip_ws() noexcept {
        while (p_ != end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t'))
            ++p_;
    }
    bool expect(char c) noexcept {
        skip_ws();
        if (p_ == end_ || *p_ != c) return false;
        ++p_;
        return true;
    }
    // After the opening quote: the string up to the closing one, if it holds no escape and no
    // control byte (those need the real parser) and is valid UTF-8.
    bool string(std::string_view& out) noexcept {
        const char* start = p_;
        skip_plain_words();
        bool ascii = true;
        for (; p_ != end_; ++p_) {
            switch (byte_class[static_cast<unsigned char>(*p_)]) {
            case plain:
                continue;
            case quote:
                out = std::string_view(start, static_cast<std::size_t>(p_ - start));
                ++p_;
                return ascii || valid_utf8(out);
            case high:
                ascii = false;
                continue;
            default:
                return false; // a backslash or a control byte
            }
        }
        return false;
    }

    // Eight bytes a step while none of them is a quote, a backslash, a control byte or
    // non-ASCII; the byte loop above takes over at the first word that holds one.
    void skip_plain_words() noexcept {
        constexpr std::uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        while (end_ - p_ >= 8) {
            std::uint64_t w;
            std::memcpy(&w, p_, 8);
            auto has_zero = [&](std::uint64_t v) { return (v - ones) & ~v & highs; };
            std::uint64_t special = ((w - ones * 0x20) & ~w & highs) // a byte below 0x20
                                    | has_zero(w ^ (ones * '"')) | has_zero(w ^ (ones * '\\')) |
                                    (w & highs); // non-ASCII
            if (special) return;
            p_ += 8;
        }
    }

    enum : std::uint8_t { plain, quote, high, other };
    static constexpr auto byte_class = [] {
        std::array<std::uint8_t, 256> t{};
        for (int c = 0; c < 256; ++c)
            t[c] = c < 0x20 ? other : c >= 0x80 ? high : plain;
        t['"'] = quote;
        t['\\'] = other;
        return t;
    }();

    const char* p_;
    const char* end_;
};

// A signed request's check (auth.hpp), the first one a parsed payload meets when keys are
// configured: nothing in an unsigned or forged request is used, not even to report it.
std::optional<decode_error> check_signature(const plain_fields& f, const decode_options& opts) {
    if (!f.have_signature)
        return fail(decode_kind::unsigned_request,
                    "not signed: a \"signature\" is required (--auth-key-file)");
    if (!f.have_issued_at)
        return fail(decode_kind::bad_signature, "signed without an \"issued_at\"");
    auto given = auth::parse_mac(f.signature);
    if (!given)
        return fail(decode_kind::bad_signature, "signature is not 64 hex digits (HMAC-SHA256)");
    if (!opts.auth_keys->verify({f.id, f.instance, f.hostname, f.reason, f.issued_at}, *given))
        return fail(decode_kind::bad_signature,
                    "signature does not match: signed with another key, or a signed field was "
                    "changed");
    // Signed by a key holder from here on, so quoting its issued_at is safe.
    auto issued = auth::parse_time(f.issued_at);
    if (!issued)
        return fail(decode_kind::bad_signature, "issued_at \"" + std::string(f.issued_at) +
                                                    "\" is not a UTC time like "
                                                    "2026-12-02T14:20:42Z");
    // In whole seconds: a time years away overflows a difference in the clock's nanoseconds.
    using namespace std::chrono;
    seconds age = floor<seconds>(system_clock::now()) - *issued;
    if (age > opts.auth_max_age)
        return fail(decode_kind::expired,
                    "issued_at " + std::string(f.issued_at) + " is " + format_duration(age) +
                        " ago, more than --auth-max-age " + format_duration(opts.auth_max_age));
    if (-age > auth::max_clock_skew)
        return fail(decode_kind::expired,
                    "issued_at " + std::string(f.issued_at) + " is " + format_duration(-age) +
                        " ahead of this worker's clock, more than the " +
                        format_duration(auth::max_clock_skew) + " allowed for clock skew");
    return std::nullopt;
}

// The checks both paths share, in the order the reasons are reported; then `out` is written.
std::optional<decode_error> check_fields(message& out, const plain_fields& f,
                                         const decode_options& opts) {
    if (opts.auth_keys)
        if (auto bad = check_signature(f, opts)) return bad;
    if (!f.have_id) return fail(decode_kind::missing_field, "missing field \"message_id\"");
    if (!f.have_instance)
        return fail(decode_kind::missing_field, "missing field \"instance_name\"");
    if (f.id.empty()) return fail(decode_kind::empty_field, "message_id must not be empty");
    if (f.instance.empty())
        return fail(decode_kind::empty_field, "instance_name must not be empty");
    if (f.have_hostname && f.hostname.empty())
        return fail(decode_kind::empty_field, "hostname must not be empty");
    if (f.have_hostname) {
        std::string_view host = without_trailing_dot(f.hostname);
        if (host.empty()) return fail(decode_kind::empty_field, "hostname must not be empty");
        out.assign(f.id, f.instance, {host}, f.reason);
    } else {
        auto d = derive_host(f.instance, opts.host_domain);
        if (d.instance.empty())
            return fail(decode_kind::empty_field, "instance_name must not be empty");
        out.assign(f.id, f.instance, {d.instance, d.dot, d.domain}, f.reason);
    }
    return std::nullopt;
}

std::optional<decode_error> too_large(std::string_view payload, const decode_options& opts) {
    if (payload.size() <= opts.max_bytes) return std::nullopt;
    return fail(decode_kind::too_large, "payload is " + std::to_string(payload.size()) +
                                            " bytes, more than max-message-bytes " +
                                            std::to_string(opts.max_bytes));
}

} // namespace

message::message(std::string_view message_id, std::string_view instance_name,
                 std::string_view hostname, std::string_view reason) {
    assign(message_id, instance_name, {hostname}, reason);
}

char* message::storage(std::size_t bytes) {
    if (bytes <= inline_bytes) {
        heap_.reset();
        return inline_;
    }
    heap_ = std::make_unique_for_overwrite<char[]>(bytes);
    return heap_.get();
}

message& message::operator=(const message& o) {
    if (this == &o) return *this;
    std::size_t n = o.end_[3];
    char* out = storage(n);
    if (n > 0) std::memcpy(out, o.data(), n);
    std::copy(std::begin(o.end_), std::end(o.end_), end_);
    id_hash_ = o.id_hash_;
    host_hash_ = o.host_hash_;
    return *this;
}

message& message::operator=(message&& o) noexcept {
    if (this == &o) return *this;
    if (o.heap_) {
        heap_ = std::move(o.heap_);
    } else {
        heap_.reset();
        if (o.end_[3] > 0) std::memcpy(inline_, o.inline_, o.end_[3]);
    }
    std::copy(std::begin(o.end_), std::end(o.end_), end_);
    id_hash_ = o.id_hash_;
    host_hash_ = o.host_hash_;
    o.clear();
    return *this;
}

void message::rehash() noexcept {
    id_hash_ = rt::hash_key(message_id());
    host_hash_ = rt::hash_key(hostname());
}

void message::assign(std::string_view message_id, std::string_view instance_name,
                     std::initializer_list<std::string_view> host_parts, std::string_view reason) {
    std::size_t host = 0;
    for (auto part : host_parts)
        host += part.size();
    std::size_t total = message_id.size() + instance_name.size() + host + reason.size();
    char* out = storage(total);
    auto put = [&out](std::string_view piece) {
        if (!piece.empty()) std::memcpy(out, piece.data(), piece.size());
        out += piece.size();
    };
    const char* start = out;
    auto at = [&] { return static_cast<std::uint32_t>(out - start); };
    put(message_id);
    end_[0] = at();
    put(instance_name);
    end_[1] = at();
    for (auto part : host_parts)
        put(part);
    end_[2] = at();
    lower_ascii(out - (end_[2] - end_[1]), out); // the machine identity is lower case
    put(reason);
    end_[3] = at();
    rehash();
}

std::string_view without_trailing_dot(std::string_view name) noexcept {
    while (!name.empty() && name.back() == '.')
        name.remove_suffix(1);
    return name;
}

derived_host derive_host(std::string_view instance_name, std::string_view domain) noexcept {
    while (!domain.empty() && domain.front() == '.')
        domain.remove_prefix(1);
    domain = without_trailing_dot(domain);
    instance_name = without_trailing_dot(instance_name);
    if (domain.empty() || instance_name.empty()) return {instance_name, {}, {}};
    return {instance_name, ".", domain};
}

std::string derived_host_name(std::string_view instance_name, std::string_view domain) {
    auto d = derive_host(instance_name, domain);
    std::string out;
    out.reserve(d.instance.size() + d.dot.size() + d.domain.size());
    out.append(d.instance).append(d.dot).append(d.domain);
    lower_ascii(out.data(), out.data() + out.size());
    return out;
}

decoded decode(std::string_view payload, const decode_options& opts) {
    message m;
    if (auto err = decode_into(m, payload, opts)) return std::move(*err);
    return m;
}

std::optional<decode_error> decode_into(message& out, std::string_view payload,
                                        const decode_options& opts) {
    if (auto err = too_large(payload, opts)) return err;
    plain_fields f;
    if (!plain_scanner(payload).scan(f)) return details::decode_with_parser(out, payload, opts);
    return check_fields(out, f, opts);
}

namespace details {

std::optional<decode_error> decode_with_parser(message& out, std::string_view payload,
                                               const decode_options& opts) {
    if (auto err = too_large(payload, opts)) return err;
    // UTF-8 is validated by the parser itself (inside strings; outside them any non-ASCII byte is
    // a syntax error), so the separate check runs only to name the failure precisely.
    message_sax sax;
    bool ok = nlohmann::json::sax_parse(payload.begin(), payload.end(), &sax,
                                        nlohmann::json::input_format_t::json, true, false);
    if (!sax.top_level_type.empty())
        return fail(decode_kind::not_object,
                    "payload must be a JSON object, got " + sax.top_level_type);
    if (!ok) {
        if (!valid_utf8(payload)) return fail(decode_kind::not_utf8, "payload is not valid UTF-8");
        return fail(decode_kind::invalid_json,
                    sax.parse_error_text.empty() ? "invalid JSON" : sax.parse_error_text);
    }
    // nlohmann's lexer takes a NUL byte for the end of the input, so a value followed by a NUL
    // and anything else parses. A NUL inside a string is an error of its own (a control
    // character), so one found here stands after the value: text after it is invalid.
    if (auto nul = payload.find('\0'); nul != std::string_view::npos)
        return fail(decode_kind::invalid_json,
                    "invalid JSON at byte " + std::to_string(nul + 1) +
                        ": a NUL byte after the JSON value (only whitespace may follow it)");
    if (!sax.top_is_object) return fail(decode_kind::not_object, "payload must be a JSON object");
    if (!sax.type_error.empty()) return fail(decode_kind::wrong_type, sax.type_error);
    return check_fields(out,
                        plain_fields{sax.id, sax.instance, sax.hostname, sax.reason, sax.issued_at,
                                     sax.signature, sax.have_id, sax.have_instance,
                                     sax.have_hostname, true, sax.have_issued_at,
                                     sax.have_signature},
                        opts);
}

} // namespace details

} // namespace mayhem
