// A minimal intrusive doubly linked list: nodes live inside the objects they link, so linking
// and unlinking allocate nothing and a node unlinks itself when its owner is destroyed.
#pragma once

#include <cstddef>

namespace mayhem::rt {

struct list_node {
    list_node* prev = nullptr;
    list_node* next = nullptr;

    list_node() = default;
    list_node(const list_node&) = delete;
    list_node& operator=(const list_node&) = delete;
    ~list_node() { unlink(); }

    bool linked() const noexcept { return next != nullptr; }
    void unlink() noexcept {
        if (!next) return;
        prev->next = next;
        next->prev = prev;
        prev = next = nullptr;
    }
};

class intrusive_list {
public:
    intrusive_list() { head_.prev = head_.next = &head_; }
    intrusive_list(const intrusive_list&) = delete;
    intrusive_list& operator=(const intrusive_list&) = delete;
    ~intrusive_list() { clear(); }

    bool empty() const noexcept { return head_.next == &head_; }
    list_node* front() noexcept { return empty() ? nullptr : head_.next; }
    const list_node* front() const noexcept { return empty() ? nullptr : head_.next; }
    // Walks from front(): `for (auto* n = l.front(); n != l.end(); n = n->next)`.
    const list_node* end() const noexcept { return &head_; }
    void push_back(list_node& n) noexcept {
        n.unlink();
        n.prev = head_.prev;
        n.next = &head_;
        head_.prev->next = &n;
        head_.prev = &n;
    }
    // Unlinks every node without touching their owners.
    void clear() noexcept {
        while (!empty())
            head_.next->unlink();
    }
    // Moves every node of this list into `other` (appended), leaving this one empty.
    void splice_into(intrusive_list& other) noexcept {
        while (!empty())
            other.push_back(*head_.next);
    }

private:
    list_node head_;
};

// A node that knows the object it links, so walking a list needs no pointer arithmetic.
template <class T>
struct owned_node : list_node {
    explicit owned_node(T* o = nullptr) : owner(o) {}
    T* owner;
};

} // namespace mayhem::rt
