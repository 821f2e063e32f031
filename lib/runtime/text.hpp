// text: an owned string that costs one pointer, and no allocation, when it is empty. For the
// reason strings of results (a restart's detail, a save's error), which are empty on the common
// path and sit in every frame and leaf of every message in flight: 8 bytes instead of 32.
#pragma once

#include <memory>
#include <string>
#include <string_view>

namespace mayhem::rt {

class text {
public:
    text() = default;
    text(std::string s) { // NOLINT(google-explicit-constructor): a reason is written as a string
        if (!s.empty()) s_ = std::make_unique<std::string>(std::move(s));
    }
    text(const char* s) : text(std::string(s)) {} // NOLINT(google-explicit-constructor)
    text(const text& o) : text(o.str()) {}
    text(text&&) noexcept = default;
    text& operator=(const text& o) {
        if (this != &o) *this = text(o);
        return *this;
    }
    text& operator=(text&&) noexcept = default;
    ~text() = default;

    bool empty() const noexcept { return !s_; }
    const std::string& str() const noexcept { return s_ ? *s_ : none(); }
    operator std::string_view() const noexcept { return str(); } // NOLINT
    friend bool operator==(const text& a, std::string_view b) noexcept { return a.str() == b; }

private:
    static const std::string& none() noexcept {
        static const std::string empty;
        return empty;
    }
    std::unique_ptr<std::string> s_;
};

} // namespace mayhem::rt
