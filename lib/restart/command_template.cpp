#include "restart/command_template.hpp"

#include "restart/exec_wrapper.hpp"

#include <algorithm>
#include <cstdlib>
#include <unistd.h>

namespace mayhem {

namespace {

bool safe_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '-';
}

} // namespace

std::optional<std::string> unsafe_placeholder_value(std::string_view name, std::string_view value) {
    std::string v(value);
    if (value.empty()) return std::string(name) + " is empty";
    if (value.front() == '-')
        return std::string(name) + " \"" + v + "\" starts with '-' (it could pass as an option)";
    for (char c : value)
        if (!safe_char(c))
            return std::string(name) + " \"" + v +
                   "\" has characters outside [A-Za-z0-9._:-] (refused on a command line)";
    // As a path part ("/srv/{hostname}/") these would name the directory itself or its parent.
    if (value == "." || value == "..")
        return std::string(name) + " \"" + v + "\" names a directory, not a host";
    if (name == "hostname") {
        // RFC 1035 limits (RFC 1123 for the labels' characters): 253 characters, labels of 63.
        if (value.size() > 253)
            return "hostname is " + std::to_string(value.size()) +
                   " characters long, more than the 253 a hostname may have";
        for (std::size_t start = 0; start <= value.size();) {
            auto dot = std::min(value.find('.', start), value.size());
            if (dot - start > 63)
                return "hostname \"" + v + "\" has a label of " + std::to_string(dot - start) +
                       " characters, more than the 63 a label may have";
            start = dot + 1;
        }
    }
    return std::nullopt;
}

std::variant<command_template, std::string> command_template::parse(std::string_view text) {
    command_template t;
    t.text_ = std::string(text);
    std::vector<piece> word;
    bool in_word = false; // an empty quoted word ('') still counts as a word
    auto literal = [&](char c) {
        if (word.empty() || word.back().value != slot::none) word.push_back(piece{});
        word.back().literal += c;
        in_word = true;
    };
    auto end_word = [&] {
        if (in_word) {
            if (word.empty()) word.push_back(piece{}); // '' -> one empty argument
            t.words_.push_back(std::move(word));
        }
        word.clear();
        in_word = false;
    };
    // A brace at `i`: a placeholder, an escaped brace, or an error. Returns the index of the
    // last character consumed.
    std::string error;
    auto brace = [&](std::size_t i) -> std::size_t {
        char c = text[i];
        if (i + 1 < text.size() && text[i + 1] == c) {
            literal(c);
            return i + 1;
        }
        if (c == '}') {
            error =
                "unmatched '}' at byte " + std::to_string(i) + " (write }} for a literal brace)";
            return i;
        }
        auto close = text.find('}', i);
        std::string_view name =
            close == std::string_view::npos ? text.substr(i) : text.substr(i + 1, close - i - 1);
        slot s = name == "hostname"        ? slot::hostname
                 : name == "instance_name" ? slot::instance_name
                 : name == "message_id"    ? slot::message_id
                                           : slot::none;
        if (close == std::string_view::npos || s == slot::none) {
            error = "unknown placeholder at byte " + std::to_string(i) +
                    " (allowed: {hostname}, {instance_name}, {message_id}; write {{ for a "
                    "literal brace)";
            return i;
        }
        word.push_back(piece{{}, s});
        in_word = true;
        return close;
    };

    enum class quote { none, single, dbl } q = quote::none;
    for (std::size_t i = 0; i < text.size() && error.empty(); ++i) {
        char c = text[i];
        switch (q) {
        case quote::none:
            if (c == ' ' || c == '\t') {
                end_word();
            } else if (c == '\'') {
                q = quote::single;
                in_word = true;
            } else if (c == '"') {
                q = quote::dbl;
                in_word = true;
            } else if (c == '\\') {
                if (i + 1 == text.size())
                    error = "trailing backslash";
                else
                    literal(text[++i]);
            } else if (c == '{' || c == '}') {
                i = brace(i);
            } else {
                literal(c);
            }
            break;
        case quote::single:
            if (c == '\'')
                q = quote::none;
            else if (c == '{' || c == '}')
                i = brace(i);
            else
                literal(c);
            break;
        case quote::dbl:
            if (c == '"') {
                q = quote::none;
            } else if (c == '\\' && i + 1 < text.size() &&
                       (text[i + 1] == '"' || text[i + 1] == '\\')) {
                literal(text[++i]);
            } else if (c == '{' || c == '}') {
                i = brace(i);
            } else {
                literal(c);
            }
            break;
        }
    }
    if (!error.empty()) return error;
    if (q != quote::none) return std::string("unterminated quote");
    end_word();
    if (t.words_.empty()) return std::string("the command is empty");
    const auto& prog = t.words_.front();
    if (prog.size() != 1 || prog.front().value != slot::none || prog.front().literal.empty())
        return std::string("the program (first word) must be a fixed name, without placeholders");
    return t;
}

std::optional<std::string> command_template::refuse(const message& m) const {
    for (const auto& w : words_)
        for (const auto& p : w) {
            std::optional<std::string> bad;
            switch (p.value) {
            case slot::none:
                break;
            case slot::hostname:
                bad = unsafe_placeholder_value("hostname", m.hostname());
                break;
            case slot::instance_name:
                bad = unsafe_placeholder_value("instance_name", m.instance_name());
                break;
            case slot::message_id:
                bad = unsafe_placeholder_value("message_id", m.message_id());
                break;
            }
            if (bad) return bad;
        }
    return std::nullopt;
}

std::variant<std::vector<std::string>, std::string>
command_template::expand(const message& m) const {
    if (auto bad = refuse(m)) return std::move(*bad);
    std::vector<std::string> argv;
    argv.reserve(words_.size());
    for (const auto& w : words_) {
        std::string arg;
        for (const auto& p : w) {
            switch (p.value) {
            case slot::none:
                arg += p.literal;
                break;
            case slot::hostname:
                arg += m.hostname();
                break;
            case slot::instance_name:
                arg += m.instance_name();
                break;
            case slot::message_id:
                arg += m.message_id();
                break;
            }
        }
        argv.push_back(std::move(arg));
    }
    return argv;
}

std::optional<std::string> find_program(const std::string& program) {
    if (program.find('/') != std::string::npos) {
        if (::access(program.c_str(), X_OK) == 0) return program;
        return std::nullopt;
    }
    const char* path = std::getenv("PATH");
    std::string_view dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
    while (true) {
        auto colon = dirs.find(':');
        std::string dir(dirs.substr(0, colon));
        if (dir.empty()) dir = ".";
        std::string candidate = dir + "/" + program;
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
        if (colon == std::string_view::npos) break;
        dirs.remove_prefix(colon + 1);
    }
    return std::nullopt;
}

bool command_template::uses_instance_name() const noexcept {
    for (const auto& word : words_)
        for (const auto& p : word)
            if (p.value == slot::instance_name) return true;
    return false;
}

std::string installed_exec_wrapper() {
    char self[4096];
    ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return {};
    std::string path(self, static_cast<std::size_t>(n));
    path.erase(path.find_last_of('/') + 1);
    path += exec_wrapper_program;
    return ::access(path.c_str(), X_OK) == 0 ? path : std::string();
}

} // namespace mayhem
