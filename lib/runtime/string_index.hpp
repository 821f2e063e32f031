// string_index<T, KeyOf>: which object currently holds a string key (a message id in flight, a
// host whose restart runs here). The objects own their keys; the index stores only a pointer to
// each object and the key's hash, in one open-addressed array (linear probing, deletion by
// backward shift, so no tombstones).
//
// Why not std::unordered_map: at 50,000 messages in flight every lookup walked a bucket array,
// a node and the key behind it, three cache misses, and every insert allocated a node. Here a
// lookup reads one slot, compares 64-bit hashes, and touches the key only on a hash match.
//
// Threading: loop thread only. The index never owns or frees an object.
#pragma once

#include "runtime/hash.hpp"

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace mayhem::rt {

// `HashOf`, when given, returns hash(KeyOf(x)) kept by the object, so inserting and erasing
// do not hash the key again; callers that keep it too pass it to find() and prefetch_hash().
template <class T, std::string_view (*KeyOf)(const T&), std::uint64_t (*HashOf)(const T&) = nullptr>
class string_index {
public:
    string_index() : slots_(16) {}

    static std::uint64_t hash(std::string_view key) noexcept { return hash_key(key); }

    T* find(std::string_view key) const noexcept { return find(key, hash(key)); }
    // `h` is hash(key).
    T* find(std::string_view key, std::uint64_t h) const noexcept {
        for (std::size_t i = h & mask(); slots_[i].value; i = (i + 1) & mask()) {
            if (slots_[i].hash == h && KeyOf(*slots_[i].value) == key) return slots_[i].value;
        }
        return nullptr;
    }

    // Starts loading the slot a lookup of a key with hash `h` begins at (a lookup or an erase
    // soon after hits).
    void prefetch_hash(std::uint64_t h) const noexcept { __builtin_prefetch(&slots_[h & mask()]); }

    // `value`'s key must not be in the index yet.
    void insert(T* value) {
        if ((size_ + 1) * 2 > slots_.size()) grow();
        place(slot{hash_of(*value), value});
        ++size_;
    }

    // Removes `value` if the index holds it under its key; true if it did.
    bool erase(const T* value) noexcept {
        std::uint64_t h = hash_of(*value);
        std::size_t i = h & mask();
        for (; slots_[i].value != value; i = (i + 1) & mask()) {
            if (!slots_[i].value) return false;
        }
        // Backward shift: pull later entries of the probe run into the hole, so every entry
        // stays reachable from its home slot without tombstones.
        for (std::size_t j = i;;) {
            j = (j + 1) & mask();
            if (!slots_[j].value) break;
            std::size_t home = slots_[j].hash & mask();
            // Move j into the hole at i unless its home lies cyclically in (i, j].
            bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
            if (stays) continue;
            slots_[i] = slots_[j];
            i = j;
        }
        slots_[i] = slot{};
        --size_;
        return true;
    }

    std::size_t size() const noexcept { return size_; }
    bool empty() const noexcept { return size_ == 0; }

private:
    struct slot {
        std::uint64_t hash = 0;
        T* value = nullptr; // null: empty
    };

    std::size_t mask() const noexcept { return slots_.size() - 1; }
    static std::uint64_t hash_of(const T& value) noexcept {
        if constexpr (HashOf != nullptr)
            return HashOf(value);
        else
            return hash(KeyOf(value));
    }

    void place(slot s) noexcept {
        std::size_t i = s.hash & mask();
        while (slots_[i].value)
            i = (i + 1) & mask();
        slots_[i] = s;
    }

    void grow() {
        std::vector<slot> old(slots_.size() * 2);
        old.swap(slots_);
        for (const slot& s : old)
            if (s.value) place(s);
    }

    std::vector<slot> slots_; // size is a power of two; at most half full
    std::size_t size_ = 0;
};

} // namespace mayhem::rt
