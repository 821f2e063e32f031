// --restart-command / --verify-command templates. Input: the template, then optionally a NUL and
// a host name to expand it with. Properties: a parsed template expands a safe message into argv
// whose first word is the program; those words, quoted back into a template of literals, parse
// and expand to the same argv (the quoting rules read what they write); a value never adds or
// removes a word; a template that uses {hostname} refuses an unsafe host name.
#include "restart/command_template.hpp"

#include "check.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

using namespace mayhem;

namespace {

using argv_t = std::vector<std::string>;

argv_t expand_ok(const command_template& t, const message& m) {
    auto r = t.expand(m);
    FUZZ_CHECK(std::holds_alternative<argv_t>(r));
    return std::get<argv_t>(r);
}

// Each word in single quotes; a quote as '\'' and braces doubled (they are placeholders even
// inside quotes).
std::string quote_back(const argv_t& argv) {
    std::string out;
    for (const auto& w : argv) {
        if (!out.empty()) out += ' ';
        out += '\'';
        for (char c : w) {
            if (c == '\'')
                out += "'\\''";
            else if (c == '{' || c == '}')
                out += {c, c};
            else
                out += c;
        }
        out += '\'';
    }
    return out;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view input(reinterpret_cast<const char*>(data), size);
    auto nul = input.find('\0');
    std::string_view text = input.substr(0, nul);
    std::string_view host = nul == std::string_view::npos ? "" : input.substr(nul + 1);

    auto parsed = command_template::parse(text);
    if (auto* why = std::get_if<std::string>(&parsed)) {
        FUZZ_CHECK(!why->empty());
        return 0;
    }
    const auto& t = std::get<command_template>(parsed);
    FUZZ_CHECK(t.text() == text);
    FUZZ_CHECK(!t.program().empty());

    const message safe("m-1", "i-1", "h-1.example.net");
    argv_t argv = expand_ok(t, safe);
    FUZZ_CHECK(!argv.empty() && argv.front() == t.program());

    auto requoted = command_template::parse(quote_back(argv));
    FUZZ_CHECK(std::holds_alternative<command_template>(requoted));
    FUZZ_CHECK(expand_ok(std::get<command_template>(requoted), safe) == argv);

    bool uses_host = expand_ok(t, message("m-1", "i-1", "h-2.example.net")) != argv;
    const message fuzzed("m-1", "i-1", host);
    auto r = t.expand(fuzzed);
    if (auto* out = std::get_if<argv_t>(&r)) {
        FUZZ_CHECK(out->size() == argv.size());
        FUZZ_CHECK(!uses_host || !unsafe_placeholder_value("hostname", host));
    } else {
        FUZZ_CHECK(uses_host && unsafe_placeholder_value("hostname", host));
    }
    return 0;
}
