#include "restart/exec_restarter.hpp"

#include <doctest/doctest.h>
#include <fstream>
#include <signal.h>
#include <string>
#include <unistd.h>
#include <vector>

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

namespace {

// A scratch directory with a file the command writes its pids into.
struct pid_file {
    pid_file() {
        char tmpl[] = "/tmp/mayhem-exec-XXXXXX";
        REQUIRE(mkdtemp(tmpl));
        dir = tmpl;
        path = dir + "/pids";
    }
    ~pid_file() {
        for (pid_t p : pids)
            if (p > 0 && running(p)) kill(p, SIGKILL); // never leave a process behind
        std::remove(path.c_str());
        rmdir(dir.c_str());
    }
    pid_file(const pid_file&) = delete;
    pid_file& operator=(const pid_file&) = delete;
    // True once the command wrote `n` pids.
    bool read(std::size_t n) {
        std::ifstream in(path);
        std::vector<pid_t> got;
        for (pid_t p; in >> p;)
            got.push_back(p);
        if (got.size() < n) return false;
        pids = got;
        return true;
    }
    std::string dir, path;
    std::vector<pid_t> pids;
};

// Runs the loop until `done()` or, as a hang guard only, until `limit` has passed. A periodic
// timer makes the loop look at `done()` now and then (a file written wakes no loop).
template <class Pred>
bool run_until(rt::loop& loop, Pred done, milliseconds limit = milliseconds(20000)) {
    auto until = std::chrono::steady_clock::now() + limit;
    rt::periodic_timer poll(loop, milliseconds(10), [] {});
    loop.run_until([&] { return done() || std::chrono::steady_clock::now() > until; });
    return done();
}

// One restarter on its own loop, running commands as detached tasks. Destroyed in reverse
// order: the scope abandons what still runs, ~loop runs until every command is finished.
struct runner {
    runner(milliseconds timeout, milliseconds grace)
        : ex(loop, tmpl("true"), std::nullopt, exec_options{timeout, grace}) {}
    void start(std::vector<std::string> argv) {
        done = false;
        scope.spawn(run_into(ex, std::move(argv), r, done));
    }
    bool finish() {
        return run_until(loop, [&] { return done; });
    }
    bool all_gone() {
        return run_until(loop, [&] { return ex.live_processes() == 0; });
    }
    const exec_restarter_stats& stats() const { return ex.stats(); }

    rt::loop loop;
    exec_restarter ex;
    rt::task_scope scope;
    command_result r;
    bool done = false;
};

} // namespace

TEST_CASE("exec_restarter: processes left in the group after exit 0 end before the restart") {
    pid_file f;
    SUBCASE("a grandchild that ignores SIGTERM is killed after the grace") {
        runner run(milliseconds(60000), milliseconds(300));
        run.start({"sh", "-c", "trap '' TERM; sleep 30 & echo $$ $! > " + f.path + "; exit 0"});
        REQUIRE(run.finish());
        REQUIRE(f.read(2));
        CHECK(run.r.ok); // the leader's exit is the result
        CHECK(run.r.left_behind == 1);
        CHECK_FALSE(running(f.pids[1]));
        CHECK(run.stats().processes_terminated.get() == 1);
        CHECK(run.stats().processes_killed.get() == 1);
        CHECK(run.ex.live_processes() == 0);
    }
    SUBCASE("a grandchild that closed stderr ends on SIGTERM") {
        // A grace far beyond the hang guard: SIGTERM alone ends it.
        runner run(milliseconds(60000), milliseconds(120000));
        run.start({"sh", "-c", "sleep 30 2>&- & echo $$ $! > " + f.path + "; exit 0"});
        REQUIRE(run.finish());
        REQUIRE(f.read(2));
        CHECK(run.r.ok);
        CHECK_FALSE(running(f.pids[1]));
        CHECK(run.stats().processes_terminated.get() == 1);
        CHECK(run.stats().processes_killed.get() == 0);
        CHECK(run.ex.live_processes() == 0);
    }
}

TEST_CASE("exec_restarter: an abandoned command's members are killed also after its leader died") {
    pid_file f;
    // The grace leaves the leader ample time to die of SIGTERM before the SIGKILL is counted.
    runner run(milliseconds(60000), milliseconds(1000));
    // The leader dies of SIGTERM at once; the member it started ignores SIGTERM (set before the
    // fork, so it is in place when the pids are written).
    run.start(
        {"sh", "-c", "trap '' TERM; sleep 30 & trap - TERM; echo $$ $! > " + f.path + "; wait"});
    REQUIRE(run_until(run.loop, [&] { return f.read(2); }));
    CHECK(run.ex.live_processes() == 1);
    run.scope.cancel_all(); // a forced release: the task (and its child_ref) is destroyed
    CHECK(run.ex.live_processes() == 1);
    REQUIRE(run.all_gone());
    CHECK_FALSE(running(f.pids[0]));
    CHECK_FALSE(running(f.pids[1]));
    CHECK(run.stats().processes_terminated.get() == 2);
    CHECK(run.stats().processes_killed.get() == 1);
    CHECK_FALSE(run.done);
}

TEST_CASE("exec_restarter::hurry: SIGKILL within the shorter grace, also for later abandons") {
    pid_file f;
    // Grace and timeout far beyond the hang guard: only hurry() can end these commands in time.
    runner run(milliseconds(120000), milliseconds(120000));
    auto start = [&] {
        run.start({"sh", "-c", "trap '' TERM; echo $$ > " + f.path + "; sleep 60; sleep 60"});
        REQUIRE(run_until(run.loop, [&] { return f.read(1); }));
        CHECK(run.ex.live_processes() == 1);
    };
    CHECK(run.ex.live_processes() == 0);
    SUBCASE("a terminating child") {
        start();
        run.scope.cancel_all();
        run.ex.hurry(milliseconds(100));
        REQUIRE(run.all_gone());
        CHECK(run.stats().processes_killed.get() == 2); // the shell and its sleep
    }
    SUBCASE("a running child is killed, its awaiter sees it") {
        start();
        run.ex.hurry(milliseconds(100));
        REQUIRE(run.finish());
        CHECK(run.r.detail == "killed by SIGKILL");
        CHECK(run.ex.live_processes() == 0);
    }
    SUBCASE("a child abandoned after the call") {
        run.ex.hurry(milliseconds(100));
        start();
        run.scope.cancel_all();
        REQUIRE(run.all_gone());
        CHECK(run.stats().processes_killed.get() == 2);
    }
    CHECK_FALSE(running(f.pids.at(0)));
}
