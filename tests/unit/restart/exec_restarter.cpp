#include "restart/exec_restarter.hpp"

#include <doctest/doctest.h>
#include <fstream>
#include <signal.h>
#include <string>
#include <unistd.h>

using namespace mayhem;
using std::chrono::milliseconds;

namespace {

rt::task<void> run_into(exec_restarter& ex, std::vector<std::string> argv, command_result& out,
                        bool& done) {
    out = co_await ex.run(std::move(argv));
    done = true;
}

command_template tmpl(const char* text) {
    return std::get<command_template>(command_template::parse(text));
}

bool running(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string all;
    if (!std::getline(stat, all)) return false;
    auto state = all.substr(all.rfind(')') + 2, 1);
    return state != "Z";
}

} // namespace

TEST_CASE("exec_restarter::run: exit code, stderr tail, timeout, missing program") {
    rt::loop loop;
    exec_restarter ex(loop, tmpl("true"), std::nullopt,
                      exec_options{milliseconds(300), milliseconds(1000)});
    rt::task_scope scope;
    auto run = [&](std::vector<std::string> argv) {
        command_result r;
        bool done = false;
        scope.spawn(run_into(ex, std::move(argv), r, done));
        loop.run_until([&] { return done; });
        REQUIRE(done);
        return r;
    };
    CHECK(run({"true"}).ok);
    auto r = run({"sh", "-c", "echo one >&2; echo two >&2; exit 4"});
    CHECK_FALSE(r.ok);
    CHECK(r.detail == "exit code 4; stderr: one | two");
    r = run({"sleep", "30"});
    CHECK(r.detail == "timed out after 300ms, ended with SIGTERM");
    r = run({"/nonexistent/program"});
    CHECK(r.detail.find("cannot run '/nonexistent/program'") == 0);
    r = run({"sh", "-c", "kill -9 $$"});
    CHECK(r.detail == "killed by SIGKILL");
}

TEST_CASE("exec_restarter: destroying the awaiting task ends the child's whole group") {
    char dir[] = "/tmp/mayhem-exec-XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string pids = std::string(dir) + "/pids";
    pid_t shell = 0, sleeper = 0;
    {
        rt::loop loop;
        exec_restarter ex(loop, tmpl("true"), std::nullopt,
                          exec_options{milliseconds(60000), milliseconds(500)});
        rt::task_scope scope;
        command_result r;
        bool done = false;
        // Writing a file wakes no loop: a timer makes the loop look at it now and then.
        rt::periodic_timer poll(loop, milliseconds(10), [] {});
        // The shell ignores SIGTERM, so only the SIGKILL after the grace ends it.
        scope.spawn(run_into(
            ex, {"sh", "-c", "trap '' TERM; sleep 30 & echo $$ $! > " + pids + "; wait; wait"}, r,
            done));
        loop.run_until([&] {
            std::ifstream in(pids);
            return static_cast<bool>(in >> shell >> sleeper);
        });
        REQUIRE(shell > 0);
        CHECK(running(shell));
        scope.cancel_all(); // a forced release: the task (and its child_ref) is destroyed
        CHECK_FALSE(done);
        // ~loop runs the loop until the abandoned child is reaped and its handles are closed.
    }
    CHECK_FALSE(running(shell));
    for (int i = 0; i < 200 && running(sleeper); ++i)
        usleep(10000); // the grandchild is reaped by init, not by us
    CHECK_FALSE(running(sleeper));
    std::remove(pids.c_str());
    rmdir(dir);
}
