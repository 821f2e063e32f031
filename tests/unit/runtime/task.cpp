#include "runtime/task.hpp"

#include <doctest/doctest.h>
#include <stdexcept>
#include <string>
#include <vector>

using namespace mayhem::rt;

namespace {

task<int> value(int v) {
    co_return v;
}
task<int> fails(const char* what) {
    throw std::runtime_error(what);
    co_return 0;
}
task<int> add(int a, int b) {
    int x = co_await value(a);
    int y = co_await value(b);
    co_return x + y;
}

// A manually resumed suspension point, so tests control when a task continues.
struct gate {
    std::coroutine_handle<> waiter;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) noexcept { waiter = h; }
    void await_resume() const noexcept {}
    void open() { std::exchange(waiter, {}).resume(); }
};

task<int> after(gate& g, int v) {
    co_await g;
    co_return v;
}

// Runs a task<T> to completion synchronously (it must not suspend) and returns its result.
template <class T>
result<T> run_sync(task<T> t) {
    result<T> out;
    task_scope scope;
    scope.spawn([](task<T> inner, result<T>& o) -> task<void> {
        try {
            o = result<T>{co_await std::move(inner)};
        } catch (...) {
            o = result<T>{std::current_exception()};
        }
    }(std::move(t), out));
    return out;
}

} // namespace

TEST_CASE("a task returns its value through co_await chains") {
    auto r = run_sync(add(2, 3));
    REQUIRE(r.ok());
    CHECK(*r == 5);
}

TEST_CASE("an exception in a task reaches its awaiter") {
    auto r = run_sync(fails("boom"));
    REQUIRE_FALSE(r.ok());
    CHECK(describe(r.error()) == "boom");
}

TEST_CASE("gather keeps every result and every error") {
    std::tuple<result<int>, result<int>, result<int>> got;
    task_scope scope;
    scope.spawn([](decltype(got)& out) -> task<void> {
        out = co_await gather(value(1), fails("second failed"), value(3));
    }(got));
    CHECK(scope.size() == 0);
    CHECK(*std::get<0>(got) == 1);
    CHECK_FALSE(std::get<1>(got).ok());
    CHECK(describe(std::get<1>(got).error()) == "second failed");
    CHECK(*std::get<2>(got) == 3);
}

TEST_CASE("gather waits for all branches, whichever finishes last") {
    gate a, b;
    bool done = false;
    int sum = 0;
    task_scope scope;
    scope.spawn([](gate& ga, gate& gb, bool& d, int& s) -> task<void> {
        auto [x, y] = co_await gather(after(ga, 10), after(gb, 20));
        s = *x + *y;
        d = true;
    }(a, b, done, sum));
    CHECK_FALSE(done);
    b.open();
    CHECK_FALSE(done);
    a.open();
    CHECK(done);
    CHECK(sum == 30);
    CHECK(scope.size() == 0);
}

TEST_CASE("a spawned task that throws is reported and the scope goes on") {
    std::vector<std::string> errors;
    task_scope scope([&](std::exception_ptr e) { errors.push_back(describe(e)); });
    int ran = 0;
    scope.spawn([]() -> task<void> {
        throw std::runtime_error("task blew up");
        co_return;
    }());
    scope.spawn([](int& r) -> task<void> {
        ++r;
        co_return;
    }(ran));
    REQUIRE(errors.size() == 1);
    CHECK(errors[0] == "task blew up");
    CHECK(ran == 1);
    CHECK(scope.size() == 0);
}

TEST_CASE("cancel_all destroys suspended tasks and runs their destructors") {
    struct probe {
        int& n;
        ~probe() { ++n; }
    };
    int destroyed = 0;
    gate g1, g2;
    task_scope scope;
    for (gate* g : {&g1, &g2}) {
        scope.spawn([](gate& gg, int& d) -> task<void> {
            probe p{d};
            co_await gg;
        }(*g, destroyed));
    }
    CHECK(scope.size() == 2);
    scope.cancel_all();
    CHECK(scope.size() == 0);
    CHECK(destroyed == 2);
}

TEST_CASE("an event resumes every waiter once set, and later waiters do not wait") {
    event ev;
    int woke = 0;
    task_scope scope;
    for (int i = 0; i < 3; ++i) {
        scope.spawn([](event& e, int& w) -> task<void> {
            co_await e;
            ++w;
        }(ev, woke));
    }
    CHECK(woke == 0);
    ev.set();
    CHECK(woke == 3);
    scope.spawn([](event& e, int& w) -> task<void> {
        co_await e;
        ++w;
    }(ev, woke));
    CHECK(woke == 4);
}

TEST_CASE("a waiter cancelled before the event fires is unlinked") {
    event ev;
    int woke = 0;
    {
        task_scope scope;
        scope.spawn([](event& e, int& w) -> task<void> {
            co_await e;
            ++w;
        }(ev, woke));
    } // scope destroyed: the waiting frame is gone
    ev.set();
    CHECK(woke == 0);
}

TEST_CASE("an event resumes its waiters in the order they came; one that left is skipped") {
    event ev;
    std::vector<int> order;
    task_scope keep, leave;
    auto waiter = [](event& e, std::vector<int>& o, int id) -> task<void> {
        co_await e;
        o.push_back(id);
    };
    keep.spawn(waiter(ev, order, 1));
    leave.spawn(waiter(ev, order, 2)); // the first to leave: the list's middle
    keep.spawn(waiter(ev, order, 3));
    leave.cancel_all();
    keep.spawn(waiter(ev, order, 4));
    ev.set();
    CHECK(order == std::vector<int>{1, 3, 4});
    CHECK(keep.size() == 0);
}

namespace {
// Starts `value` as a branch, then does a step of its own before gathering the branch.
task<void> fan_out(task<int> value, gate& own, std::vector<std::string>& log, int& got) {
    branch<int> b;
    b.start(std::move(value));
    log.push_back("started");
    co_await own;
    log.push_back("own step done");
    co_await b;
    log.push_back("gathered");
    auto r = b.take();
    got = *r;
}
} // namespace

TEST_CASE("a branch runs while its starter does its own steps; the await joins both") {
    for (bool branch_first : {true, false}) {
        CAPTURE(branch_first);
        gate g_branch, g_own;
        std::vector<std::string> log;
        int got = 0;
        task_scope scope;
        scope.spawn(fan_out(after(g_branch, 7), g_own, log, got));
        CHECK(log == std::vector<std::string>{"started"});
        if (branch_first) {
            g_branch.open(); // finishes before it is awaited: the await does not suspend
            g_own.open();
        } else {
            g_own.open(); // the starter waits on the branch
            CHECK(log.back() == "own step done");
            CHECK(scope.size() == 1);
            g_branch.open();
        }
        CHECK(log.back() == "gathered");
        CHECK(got == 7);
        CHECK(scope.size() == 0);
    }
}

TEST_CASE("a branch that fails reports its error at take(); destroying its starter destroys it") {
    int got = 0;
    gate own;
    {
        task_scope scope;
        scope.spawn([](gate& g, int& out) -> task<void> {
            branch<int> b;
            b.start(fails("save failed"));
            co_await g;
            co_await b;
            out = b.take().ok() ? 1 : -1;
        }(own, got));
        own.open();
        CHECK(got == -1);
    }
    gate never;
    bool destroyed = false;
    {
        task_scope scope;
        struct flag {
            bool* d;
            ~flag() { *d = true; }
        };
        scope.spawn([](gate& g, bool& d) -> task<void> {
            branch<int> b;
            b.start([](gate& inner, bool& dd) -> task<int> {
                flag f{&dd};
                co_await inner;
                co_return 1;
            }(g, d));
            co_await b;
        }(never, destroyed));
        CHECK(scope.size() == 1);
        CHECK_FALSE(destroyed);
        scope.cancel_all(); // a forced stop: the starter's frame, and with it the branch
        CHECK(destroyed);
    }
}
