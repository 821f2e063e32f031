#include "runtime/string_index.hpp"

#include <doctest/doctest.h>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

using mayhem::rt::string_index;

namespace {
struct item {
    std::string key;
};
std::string_view key_of(const item& i) noexcept {
    return i.key;
}
using item_index = string_index<item, &key_of>;
} // namespace

TEST_CASE("string_index finds what was inserted and forgets what was erased") {
    item_index ix;
    item a{"alpha"}, b{"beta"};
    CHECK(ix.find("alpha") == nullptr);
    ix.insert(&a);
    ix.insert(&b);
    CHECK(ix.size() == 2);
    CHECK(ix.find("alpha") == &a);
    CHECK(ix.find("beta") == &b);
    CHECK(ix.find("gamma") == nullptr);
    item other_alpha{"alpha"};
    CHECK_FALSE(ix.erase(&other_alpha)); // same key, another object: not the one indexed
    CHECK(ix.erase(&a));
    CHECK_FALSE(ix.erase(&a));
    CHECK(ix.find("alpha") == nullptr);
    CHECK(ix.find("beta") == &b);
    CHECK(ix.size() == 1);
}

TEST_CASE("string_index agrees with unordered_map through random inserts and erases") {
    // Few distinct keys and many operations: long probe runs, wrap-around at the end of the
    // array, and backward shifts across them.
    std::mt19937_64 rng(42);
    std::vector<std::unique_ptr<item>> pool;
    for (int i = 0; i < 3000; ++i)
        pool.push_back(std::make_unique<item>(item{"host-" + std::to_string(i)}));
    item_index ix;
    std::unordered_map<std::string, item*> model;
    for (int step = 0; step < 200000; ++step) {
        item* it = pool[rng() % pool.size()].get();
        if (model.count(it->key)) {
            REQUIRE(ix.erase(it));
            model.erase(it->key);
        } else {
            ix.insert(it);
            model.emplace(it->key, it);
        }
        if (step % 997 == 0) {
            for (const auto& p : pool) {
                auto m = model.find(p->key);
                REQUIRE(ix.find(p->key) == (m == model.end() ? nullptr : m->second));
            }
        }
    }
    CHECK(ix.size() == model.size());
}

TEST_CASE("hash_key tells apart keys that differ in one byte, at every length and position") {
    std::unordered_map<std::uint64_t, std::string> seen;
    std::size_t keys = 0;
    for (std::size_t len = 0; len <= 40; ++len) {
        std::string base(len, 'a');
        auto add = [&](const std::string& k) {
            auto [it, fresh] = seen.emplace(mayhem::rt::hash_key(k), k);
            INFO("collision: ", k, " and ", it->second);
            CHECK((fresh || it->second == k));
            ++keys;
        };
        add(base);
        for (std::size_t i = 0; i < len; ++i) {
            std::string k = base;
            k[i] = 'b';
            add(k);
        }
    }
    CHECK(seen.size() == keys);
}
