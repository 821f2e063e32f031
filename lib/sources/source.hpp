// The seam between a transport and the pipeline. A source delivers raw payloads, only as many
// as the pipeline asked for (backpressure), and takes back exactly one verdict per delivery,
// which it carries out in its own terms (ack, redeliver, dead-letter, leave pending).
//
// Threading: loop thread only.
#pragma once

#include "message/delivery.hpp"
#include "pipeline/outcome.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace mayhem {

class source_sink {
public:
    virtual ~source_sink() = default;
    // A new delivery, within the demand granted by request().
    virtual void deliver(delivery d) = 0;
    // The source has carried out a verdict (for a broker: the server confirmed it).
    virtual void settled(outcome o) = 0;
    // Connection state or `finished()` may have changed.
    virtual void source_changed() = 0;
    // A delivery not yet settled is no longer this worker's: the transport gave it to a peer
    // (its lease lapsed, a peer reclaimed it). The source will not ack it: its settle() is
    // reported `released` whatever the verdict. A restart not started for it should not be;
    // one that already ran overlaps with the peer's and is worth reporting.
    virtual void lease_lost(std::string_view ref) { (void)ref; }
};

class source {
public:
    virtual ~source() = default;
    virtual std::string_view name() const = 0;

    virtual void start(source_sink& sink) = 0;
    // Grants `n` more deliveries. A source never delivers more than it was granted.
    virtual void request(std::size_t n) = 0;
    // Lease renewal for deliveries still in flight (one call for all that are due).
    virtual void extend(std::span<const delivery* const> in_flight) { (void)in_flight; }
    // Carries out the verdict for a delivery; calls sink.settled() once it is done.
    virtual void settle(delivery d, const verdict& v) = 0;
    // Drain: take nothing new from the transport. Retries the source holds itself are still
    // redelivered until close().
    virtual void stop() = 0;
    // Nothing more will be delivered and nothing awaits confirmation.
    virtual bool finished() const = 0;
    // After stop(): no request to the transport is still under way that could deliver (a read
    // sent before the stop). The drain waits for it, so what it brings is finished, not left
    // behind.
    virtual bool drained() const { return true; }
    // Connected and able to deliver (readiness).
    virtual bool up() const { return true; }
    // Times the connection was lost and made again (mayhem_source_reconnects_total).
    virtual std::uint64_t reconnects() const { return 0; }
    // Forced stop (second signal, drain deadline): stop waiting for the transport to confirm
    // verdicts it could not carry out yet (a broker that is down); report them settled as
    // `released` (a broker keeps them and delivers them again).
    virtual void force_stop() {}
    // Set when the source cannot work and retrying will not help (refused credentials, a key
    // of the wrong type): the worker stops and exits 1.
    virtual std::string fatal_error() const { return {}; }
    // Retried deliveries the source held for redelivery and dropped at close (a local source
    // cannot redeliver after the process exits). Counted into the exit code.
    virtual std::size_t abandoned() const { return 0; }
    // Releases the source's handles; after it no call but abandoned() is made.
    virtual void close() = 0;
};

} // namespace mayhem
