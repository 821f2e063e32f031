#include "sources/redis_url.hpp"

#include <doctest/doctest.h>

using mayhem::parse_redis_url;

TEST_CASE("redis url: defaults and the usual forms") {
    auto a = parse_redis_url("redis://127.0.0.1:6379/0");
    REQUIRE(a);
    CHECK(a->host == "127.0.0.1");
    CHECK(a->port == 6379);
    CHECK(a->db == 0);
    CHECK(a->password.empty());

    auto b = parse_redis_url("redis://redis.internal");
    REQUIRE(b);
    CHECK(b->host == "redis.internal");
    CHECK(b->port == 6379);

    auto c = parse_redis_url("redis://:s3cret@host:7000/3");
    REQUIRE(c);
    CHECK(c->user.empty());
    CHECK(c->password == "s3cret");
    CHECK(c->port == 7000);
    CHECK(c->db == 3);
    CHECK(c->shown() == "redis://:***@host:7000/3"); // never the password

    auto d = parse_redis_url("redis://worker:p%40ss@[::1]:6380/1");
    REQUIRE(d);
    CHECK(d->user == "worker");
    CHECK(d->password == "p@ss");
    CHECK(d->host == "::1");
    CHECK(d->port == 6380);
}

TEST_CASE("redis url: unix sockets") {
    auto u = parse_redis_url("unix:///run/redis/redis.sock?db=2");
    REQUIRE(u);
    CHECK(u->unix_path == "/run/redis/redis.sock");
    CHECK(u->db == 2);
    CHECK(u->host.empty());
}

TEST_CASE("redis url: errors say what is wrong") {
    std::string why;
    CHECK_FALSE(parse_redis_url("http://x", &why));
    CHECK(why.find("redis://") != std::string::npos);
    CHECK_FALSE(parse_redis_url("redis://host:99999", &why));
    CHECK(why.find("port") != std::string::npos);
    CHECK_FALSE(parse_redis_url("redis://host/abc", &why));
    CHECK(why.find("database") != std::string::npos);
    CHECK_FALSE(parse_redis_url("rediss://host", &why));
    CHECK(why.find("TLS") != std::string::npos);
    CHECK_FALSE(parse_redis_url("unix://relative.sock", &why));
    CHECK_FALSE(parse_redis_url("redis://:%zz@host", &why));
}
