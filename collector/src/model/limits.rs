//! Memory caps on what the switch and OVSDB can make pinflow hold, derived from the memory limit
//! the DaemonSet gives the container (`deploy/kubernetes`: 160 MiB). Each cap keeps the worst case
//! of its own structure well inside that limit next to the daemon's baseline (~9 MiB), so that bad
//! or hostile input is refused with an error naming the cap (the source reports it, reconnects and
//! resyncs) instead of the kernel's OOM killer ending the whole collector.
//!
//! | cap | value | worst case it bounds |
//! |---|---|---|
//! | [`MAX_FLOWS_PER_BRIDGE`] | 250 000 | ~340 B per mirrored flow (measured, README): ~85 MiB |
//! | [`MAX_PENDING_MONITOR_EVENTS`] | 50 000 | a queued flow update holds one decoded flow (~400 B): ~20 MiB |
//! | [`MAX_OVSDB_MESSAGE_BYTES`] | 4 MiB | the JSON text buffered, plus its parsed `serde_json::Value` (a few times the text) |
//!
//! The OpenFlow message size needs no cap of its own: the protocol's 16-bit length bounds it at
//! 64 KiB. Real hosts sit far below every cap: Neutron's br-int holds tens of thousands of flows,
//! the OVSDB monitor reply is ~1 KiB per interface (a host with 1 000 ports: ~1 MiB).

/// The memory limit of the shipped DaemonSet (`resources.limits.memory`), which the caps are
/// derived from.
#[cfg(test)]
pub(crate) const MEMORY_LIMIT_BYTES: usize = 160 << 20;

/// Flows mirrored per bridge (the dump fails with `TooManyFlows` above it): 250 000 × ~340 B is
/// ~85 MiB, half the memory limit, leaving the rest for the baseline, a resync's transient
/// buffers and the HTTP API.
pub(crate) const MAX_FLOWS_PER_BRIDGE: usize = 250_000;

/// Flow-monitor events queued while a request (dump, echo) is outstanding; above it the session
/// fails and resyncs with a fresh dump (which is what the queue would have converged to anyway).
/// 50 000 × ~400 B is ~20 MiB.
pub(crate) const MAX_PENDING_MONITOR_EVENTS: usize = 50_000;

/// Largest OVSDB JSON-RPC message (and buffered bytes) accepted: 4 MiB of text, ~4 000 interfaces
/// with Neutron's `external_ids`; parsed, it stays within a few tens of MiB.
pub(crate) const MAX_OVSDB_MESSAGE_BYTES: usize = 4 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes per mirrored flow, measured (README "What it costs": 41 MiB at 100 000 flows, 9 MiB
    /// of it the baseline), rounded up.
    const BYTES_PER_FLOW: usize = 340;
    /// Bytes per queued monitor event (a decoded flow and the event around it), rounded up.
    const BYTES_PER_EVENT: usize = 400;
    /// Expansion of JSON text into `serde_json::Value` (maps of short strings), generously.
    const JSON_EXPANSION: usize = 8;

    #[test]
    fn caps_fit_the_memory_limit_together() {
        let flows = MAX_FLOWS_PER_BRIDGE * BYTES_PER_FLOW;
        let events = MAX_PENDING_MONITOR_EVENTS * BYTES_PER_EVENT;
        let ovsdb = MAX_OVSDB_MESSAGE_BYTES * (1 + JSON_EXPANSION);
        let baseline = 9 << 20;
        let total = baseline + flows + events + ovsdb;
        assert!(
            total < MEMORY_LIMIT_BYTES,
            "worst cases add up to {} MiB of {} MiB",
            total >> 20,
            MEMORY_LIMIT_BYTES >> 20
        );
        assert!(flows <= MEMORY_LIMIT_BYTES * 6 / 10);
    }
}
