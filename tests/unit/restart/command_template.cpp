#include "restart/command_template.hpp"

#include <doctest/doctest.h>

using namespace mayhem;

namespace {
message msg(std::string host) {
    return message{std::string("id-1"), std::string("i-1"), std::move(host), {}};
}
std::vector<std::string> argv(const std::string& text, const message& m) {
    auto t = command_template::parse(text);
    REQUIRE(std::holds_alternative<command_template>(t));
    auto a = std::get<command_template>(t).expand(m);
    REQUIRE(std::holds_alternative<std::vector<std::string>>(a));
    return std::get<std::vector<std::string>>(a);
}
std::string parse_error(const std::string& text) {
    auto t = command_template::parse(text);
    REQUIRE(std::holds_alternative<std::string>(t));
    return std::get<std::string>(t);
}
} // namespace

TEST_CASE("command_template: splits into argv without a shell") {
    auto m = msg("web-1.example.net");
    using v = std::vector<std::string>;
    CHECK(argv("ssh -o BatchMode=yes -o ConnectTimeout=10 {hostname} sudo systemctl reboot", m) ==
          v{"ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "web-1.example.net", "sudo",
            "systemctl", "reboot"});
    CHECK(argv("  ssh   root@{hostname}\t", m) == v{"ssh", "root@web-1.example.net"});
    CHECK(argv("sh -c 'echo $HOME; x={hostname}' ''", m) ==
          v{"sh", "-c", "echo $HOME; x=web-1.example.net", ""});
    CHECK(argv(R"(echo "a \"b\" \\ c" a\ b)", m) == v{"echo", R"(a "b" \ c)", "a b"});
    CHECK(argv("echo {{x}} {message_id}/{instance_name}", m) == v{"echo", "{x}", "id-1/i-1"});
}

TEST_CASE("command_template: bad templates are refused at start-up") {
    CHECK(parse_error("").find("empty") != std::string::npos);
    CHECK(parse_error("echo 'open").find("unterminated") != std::string::npos);
    CHECK(parse_error("echo {host}").find("unknown placeholder") != std::string::npos);
    CHECK(parse_error("echo }").find("unmatched") != std::string::npos);
    CHECK(parse_error("{hostname} reboot").find("program") != std::string::npos);
    CHECK(parse_error("echo x\\").find("backslash") != std::string::npos);
}

TEST_CASE("command_template: unsafe placeholder values are refused") {
    auto t = std::get<command_template>(command_template::parse("ssh {hostname} reboot"));
    for (const char* bad : {"h;rm -rf /", "$(id)", "-oProxyCommand=x", "a b", "`id`", "h\nx", "h'x",
                            "h\"x", "h/x", "h*"}) {
        CAPTURE(bad);
        auto r = t.expand(msg(bad));
        CHECK(std::holds_alternative<std::string>(r));
        CHECK(t.refuse(msg(bad)));
    }
    CHECK_FALSE(t.refuse(msg("web-1.example.net")));
    CHECK_FALSE(t.refuse(msg("10.0.0.1")));
    CHECK_FALSE(t.refuse(msg("fe80::1")));
    // Only the placeholders the template uses are checked.
    message m{"not safe; at all", "i-1", "ok"};
    CHECK_FALSE(t.refuse(m));
    auto with_id = std::get<command_template>(command_template::parse("echo {message_id}"));
    CHECK(with_id.refuse(m));
}

TEST_CASE("command_template: . and .., and hostnames longer than DNS allows, are refused") {
    // issue 13 case 1: a placeholder used as a path part must not name the directory or its
    // parent; a hostname is at most 253 characters and each label at most 63.
    auto t = std::get<command_template>(
        command_template::parse("cp /srv/{hostname}/x /srv/{instance_name}/{message_id}"));
    for (const char* bad : {".", ".."}) {
        CAPTURE(bad);
        CHECK(t.refuse(msg(bad)));
        CHECK(t.refuse(message{"id-1", bad, "h"}));
        CHECK(t.refuse(message{bad, "i-1", "h"}));
    }
    std::string label63(63, 'a'), label64(64, 'a');
    CHECK_FALSE(t.refuse(msg(label63 + ".example.net")));
    CHECK(t.refuse(msg(label64 + ".example.net")));
    std::string host253, host254;
    while (host253.size() < 253)
        host253 += host253.empty() ? "a" : ".a";
    host254 = host253 + "a";
    REQUIRE(host253.size() == 253);
    CHECK_FALSE(t.refuse(msg(host253)));
    CHECK(t.refuse(msg(host254)));
    CHECK(t.refuse(msg(std::string(300, 'a'))));
}

TEST_CASE("find_program: absolute paths and $PATH") {
    CHECK(find_program("sh"));
    CHECK(find_program("/bin/sh"));
    CHECK_FALSE(find_program("/nonexistent/program"));
    CHECK_FALSE(find_program("no-such-program-anywhere-xyz"));
}
