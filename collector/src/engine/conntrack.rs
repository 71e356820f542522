//! The conntrack pipeline (its own thread, blocking netlink): every `[conntrack]
//! interval_seconds` (default 30 s) one ctnetlink dump of the table counted per zone, and
//! `nf_conntrack_count` / `nf_conntrack_max` from procfs; publishes a [`ConntrackReport`] with
//! each zone the flows load (the flow pipeline's [`FlowsReport::ct_zones`](crate::model::flows::FlowsReport::ct_zones))
//! joined to its ports and instances. Nothing happens per scrape.
//!
//! A dump costs about 2 µs of kernel CPU per entry (1.9 s at 1 000 000 entries, see
//! [`crate::sources::conntrack`]), so the pause after a dump is at least [`DUTY`] times the dump's
//! duration: the pipeline never takes more than ~1 % of a core, whatever the table size, and
//! polls at the configured interval while the table is small.

use crate::model::conntrack::{ConntrackReport, ZoneEntries};
use crate::model::health::SourceRegistry;
use crate::model::state::SharedState;
use crate::sources::conntrack::{Ctnetlink, DumpCounts, SOURCE, read_limits};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// `[conntrack]`: conntrack entries per zone (runs with the datapath collector).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ConntrackConfig {
    /// Dump the conntrack table at all. Off by default: it needs `CAP_NET_ADMIN` (kept by
    /// `serve` only when on) and costs CPU in proportion to the table.
    pub(crate) enabled: bool,
    /// Seconds between dumps (longer while the table is large: see [`DUTY`]).
    pub(crate) interval_seconds: f64,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            enabled: false,
            interval_seconds: 30.0,
        }
    }
}

/// Where the count and the limit are read: this process's own procfs, never `--proc-root`.
/// `/proc/sys/net` always shows the network namespace of the task that reads it, wherever procfs
/// is mounted, and the ctnetlink dump is of that same namespace (the host's, with
/// `hostNetwork`), so the two always agree.
const OWN_PROC: &str = "/proc";

/// The pause after a dump is at least this many times the dump's duration (≤ 1 % of a core).
pub(crate) const DUTY: u32 = 100;

/// Runs the pipeline forever (blocking; on its own thread).
pub(crate) fn run(state: SharedState, cfg: &ConntrackConfig) {
    let interval = Duration::from_secs_f64(cfg.interval_seconds);
    let name = SOURCE.name;
    // A dump of a very large table may legitimately take seconds, and the pause grows with it.
    state.sources.stale_after(
        name,
        SourceRegistry::bound_for(interval.max(Duration::from_secs(60))),
    );
    let mut ct: Option<Ctnetlink> = None;
    loop {
        let t0 = Instant::now();
        let collection = state.sources.collect(name);
        let polled = read_limits(Path::new(OWN_PROC)).and_then(|limits| {
            let c = match &mut ct {
                Some(c) => c,
                None => ct.insert(Ctnetlink::open().map_err(|e| e.to_string())?),
            };
            match c.dump(None) {
                Ok(d) => Ok((limits, d)),
                Err(e) => {
                    // A fresh socket next time (a dump cut short leaves replies queued).
                    ct = None;
                    Err(e.to_string())
                }
            }
        });
        let took = t0.elapsed();
        let report = match polled {
            Ok((limits, dump)) => {
                let report = build_report(&state, limits.count, limits.max, &dump);
                collection.ok(format!(
                    "{} of {} entries, {} zone(s), dumped in {} ms",
                    limits.count,
                    limits.max,
                    dump.zones.len(),
                    took.as_millis()
                ));
                report
            }
            Err(e) => {
                collection.down(e);
                ConntrackReport::default()
            }
        };
        state.conntrack.set_if_changed(report);
        std::thread::sleep(interval.max(took.saturating_mul(DUTY)));
    }
}

/// Joins one dump's counts to the zones the flows load.
fn build_report(
    state: &SharedState,
    entries: u64,
    limit: u64,
    dump: &DumpCounts,
) -> ConntrackReport {
    let flows = state.flows.get();
    let mut zones: BTreeMap<u16, ZoneEntries> = BTreeMap::new();
    for p in flows.ct_zones.iter() {
        let z = zones.entry(p.zone).or_insert_with(|| ZoneEntries {
            zone: p.zone,
            entries: dump.zones.get(&p.zone).copied().unwrap_or(0),
            ports: Vec::new(),
        });
        z.ports.push(p.clone());
    }
    let (mut other_entries, mut other_zones) = (0, 0);
    for (z, n) in &dump.zones {
        if !zones.contains_key(z) {
            other_entries += n;
            other_zones += 1;
        }
    }
    ConntrackReport {
        up: true,
        entries,
        limit,
        zones: zones.into_values().collect(),
        other_entries,
        other_zones,
        dumped_entries: dump.entries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::conntrack::ZonePort;
    use crate::model::flows::FlowsReport;
    use std::sync::Arc;

    fn port(zone: u16, ofport: u32, domain: &str) -> ZonePort {
        ZonePort {
            zone,
            bridge: "br-int".into(),
            ofport,
            port: format!("tap{ofport}"),
            domain: domain.into(),
            ..Default::default()
        }
    }

    #[test]
    fn zones_join_ports_and_the_rest_is_other() {
        let state = SharedState::default();
        state.flows.set(FlowsReport {
            ct_zones: Arc::new(vec![
                port(1, 5, "instance-a"),
                port(1, 6, "instance-a"),
                port(2, 7, "instance-b"),
                port(2, 8, "instance-c"),
                port(3, 9, ""),
            ]),
            ..Default::default()
        });
        let dump = DumpCounts {
            zones: [(1, 10), (2, 4), (0, 7), (44, 1)].into(),
            entries: 22,
            bytes: 0,
        };
        let r = build_report(&state, 23, 1000, &dump);
        let got: Vec<(u16, u64, &str, usize)> = r
            .zones
            .iter()
            .map(|z| (z.zone, z.entries, z.domain(), z.ports.len()))
            .collect();
        // Zone 2 is shared by two instances: no single domain. Zone 3 has no entries: 0.
        assert_eq!(
            got,
            vec![(1, 10, "instance-a", 2), (2, 4, "", 2), (3, 0, "", 1)]
        );
        assert_eq!((r.other_entries, r.other_zones), (8, 2));
        assert_eq!((r.entries, r.limit, r.dumped_entries), (23, 1000, 22));
    }
}
