// `--source tcp`: producers connect to --listen and write one JSON request per line; the worker
// answers each line on the same connection, in any order, with one JSON line once its outcome is
// known (README, "TCP"). There is no broker: the answer is the whole of "carrying out" a verdict,
// so a retried or released request is the producer's to send again, and an undecodable one is
// dead-lettered by its answer (the pipeline counts and logs it like any other).
//
// Backpressure: a line is delivered only within the demand the pipeline granted. A connection
// whose lines cannot all be delivered keeps them (at most one read, 64 KiB) and stops reading
// (uv_read_stop) until demand comes back, so TCP flow control holds its producer.
//
// Each connection is one small state machine (conn_state), each change made in enter():
//   reading --(lines wait for demand)--> held --(demand)--> reading
//   reading|held --(end of its input, or the source stops)--> finishing
//   finishing --(every line it sent answered and the answers handed to the kernel)-->
//       shutting_down (FIN sent) --> closed
//   any --(peer reset, read error, idle timeout, answer queue over its cap)--> closed
// A connection that closes early loses only its answers: work the pipeline took goes on.
//
// The stop (drain): the listener closes first (new connections are refused by the kernel);
// every connection stops reading; lines read but not yet delivered are answered `released`;
// deliveries in flight finish and are answered; then each connection is shut down and closed.
// drained() is true once every connection is closed.
//
// Threading: loop thread only.
#pragma once

#include "runtime/counter.hpp"
#include "runtime/list.hpp"
#include "runtime/log_budget.hpp"
#include "runtime/loop.hpp"
#include "sources/source.hpp"

#include <cstdint>
#include <deque>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace mayhem {

struct tcp_source_options {
    std::string listen = "127.0.0.1:7478";  // numeric IPv4 HOST:PORT
    std::size_t max_connections = 1024;     // open at once; the next is answered and closed
    std::size_t max_line_bytes = 65536;     // a longer line is answered with a decode error
    rt::millis idle_timeout{300000};        // nothing received and nothing owed (0 = never)
    std::size_t max_answer_bytes = 1 << 20; // answers waiting to be written, per connection
};

// Why a connection ended (mayhem_tcp_disconnects_total{cause}).
enum class tcp_close_cause : std::uint8_t { peer, idle, answer_queue_full, error, stop };
inline constexpr int tcp_close_cause_count = 5;
std::string_view to_string(tcp_close_cause c) noexcept;

// Written on the loop thread, read by the metrics thread.
struct tcp_source_stats {
    rt::gauge connections; // open now
    rt::counter accepted;  // connections taken
    rt::counter refused;   // over --max-connections: answered with an error line and closed
    rt::counter disconnects[tcp_close_cause_count];
    rt::counter answers_lost; // answers whose connection had closed (the work was still done)
};

// Cannot bind or listen on --listen (in use, not a local address): the worker exits 2.
struct tcp_listen_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class tcp_source final : public source {
public:
    // Binds and listens at once, so a bad address fails before anything starts.
    tcp_source(rt::loop& loop, tcp_source_options opts);
    ~tcp_source() override;
    tcp_source(const tcp_source&) = delete;
    tcp_source& operator=(const tcp_source&) = delete;

    std::string_view name() const override { return "tcp"; }
    void start(source_sink& sink) override;
    void request(std::size_t n) override;
    void settle(delivery d, const verdict& v) override;
    void stop() override;
    bool finished() const override;
    bool drained() const override;
    void force_stop() override;
    void close() override;

    const tcp_source_stats& stats() const noexcept { return stats_; }
    // The port actually bound (--listen with port 0 picks a free one).
    int port() const noexcept { return port_; }

private:
    struct connection;
    struct write_req;
    class turn_entry;
    class flush_entry;
    enum class conn_state : std::uint8_t { reading, held, finishing, shutting_down, closed };
    static std::string_view to_string(conn_state s) noexcept;

    static void on_connection(uv_stream_t* server, int status) noexcept;
    static void on_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf) noexcept;
    static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) noexcept;
    static void on_written(uv_write_t* req, int status) noexcept;
    static void on_shutdown(uv_shutdown_t* req, int status) noexcept;

    void accept_one();
    void refuse(rt::uv_handle<uv_tcp_t> tcp);
    void take(connection& c, std::string_view chunk);
    void push_line(connection& c, std::string_view line);
    void offer(connection& c);
    void turn();
    void enter(connection& c, conn_state next);
    void maybe_finish(connection& c);
    void answer(connection& c, std::string_view message_id, std::uint64_t line, const verdict& v);
    void queue_flush(connection& c);
    void flush_all();
    void flush(connection& c);
    void idle_check(connection& c);
    void drop(connection& c, tcp_close_cause why);
    void forget(connection& c);

    rt::loop& loop_;
    tcp_source_options opts_;
    source_sink* sink_ = nullptr;
    rt::uv_handle<uv_tcp_t> listener_;
    int port_ = 0;
    std::unordered_map<std::uint64_t, std::unique_ptr<connection>> conns_; // by serial
    std::uint64_t next_serial_ = 0;
    std::size_t refusing_ = 0;    // over-limit connections being answered and closed
    std::size_t demand_ = 0;      // deliveries granted and not made
    std::size_t outstanding_ = 0; // delivered, no verdict yet
    rt::intrusive_list held_;     // connections with lines waiting for demand, in arrival order
    std::vector<std::uint64_t> to_flush_; // serials of connections with answers to write
    std::unique_ptr<turn_entry> turn_;
    std::unique_ptr<flush_entry> flush_;
    std::vector<char> read_buf_; // shared: a read is handled before the next is allocated
    bool stopped_ = false;
    bool closed_ = false;
    // Connection events a flood could repeat (every producer dropping at once).
    rt::log_budget conn_log_{20, "tcp connection lines", "mayhem_tcp_disconnects_total"};
    tcp_source_stats stats_;
};

} // namespace mayhem
