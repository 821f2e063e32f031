// --restart-command / --verify-command: a command line with placeholders, split into argv
// without a shell, so no value from a message is ever interpreted by one.
//
// Rules (the README's "Safety rails" repeats them):
//  - words are separated by unquoted spaces or tabs;
//  - '...' keeps everything inside literally; "..." too, except that \" and \\ stand for " and \;
//    outside quotes a backslash keeps the next character literally; '' or "" is an empty word;
//  - {hostname}, {instance_name}, {message_id} are replaced by the message's values, also
//    inside quotes and inside a word (user@{hostname}); {{ and }} are literal braces; any other
//    brace is an error;
//  - the program (first word) may not contain a placeholder;
//  - a value containing a character outside [A-Za-z0-9._:-], or starting with '-', is refused
//    (the message is dead-lettered): no host name can smuggle an option or a second argument.
//
// Plain code, no loop: unit-tested in tests/unit/restart/command_template.cpp.
#pragma once

#include "message/message.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace mayhem {

class command_template {
public:
    // The template, or what is wrong with it.
    static std::variant<command_template, std::string> parse(std::string_view text);

    // argv for `m`, or why a value is refused.
    std::variant<std::vector<std::string>, std::string> expand(const message& m) const;
    // Only the refusal check of expand().
    std::optional<std::string> refuse(const message& m) const;

    // Whether a placeholder {instance_name} appears anywhere in the template.
    bool uses_instance_name() const noexcept;

    const std::string& program() const noexcept { return words_.front().front().literal; }
    const std::string& text() const noexcept { return text_; }

private:
    enum class slot : std::uint8_t { none, hostname, instance_name, message_id };
    struct piece {
        std::string literal;
        slot value = slot::none; // when set, `literal` is unused
    };
    command_template() = default;

    std::string text_;
    std::vector<std::vector<piece>> words_; // never empty; words_[0] is one literal piece
};

// Why `value` may not be put on a command line as `name`, or nullopt when it may.
std::optional<std::string> unsafe_placeholder_value(std::string_view name, std::string_view value);

// Where `program` would be executed from: itself if it contains a '/', else the first
// executable match in $PATH. nullopt when there is none (checked once at start-up).
std::optional<std::string> find_program(const std::string& program);

// The exec wrapper (restart/exec_wrapper.hpp) next to the running binary, in /proc/self/exe's
// directory; "" when it is not there or not executable (checked once at start-up).
std::string installed_exec_wrapper();

} // namespace mayhem
