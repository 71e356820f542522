//! The conntrack pipeline (its own thread, blocking netlink): every `[conntrack]
//! interval_seconds` (default 30 s) `nf_conntrack_count` / `nf_conntrack_max` from procfs and the
//! entries of each zone the flows load (the flow pipeline's
//! [`FlowsReport::ct_zones`](crate::model::flows::FlowsReport::ct_zones)), read over ctnetlink
//! the cheapest way ([`choose`]: one full dump, one `CTA_ZONE`-filtered dump per zone, or none);
//! publishes a [`ConntrackReport`] with each zone joined to its ports and instances, the rest of
//! the table as `other`. Nothing happens per scrape. The zones come from
//! the flow pipeline: with the flows collector off, every entry is `other`.
//!
//! A full dump costs about 2 µs of kernel CPU per entry (1.9 s at 1 000 000 entries, see
//! [`crate::sources::conntrack`]), so the pause after a poll is at least [`DUTY`] times the poll's
//! duration: the pipeline never takes more than ~1 % of a core, whatever the table size, and
//! polls at the configured interval while the table is small.

use crate::model::conntrack::{ConntrackReport, DumpMode, ZoneEntries, ZonePort};
use crate::model::health::SourceRegistry;
use crate::model::state::SharedState;
use crate::sources::conntrack::{CtError, Ctnetlink, SOURCE, read_limits};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// Kernel CPU to walk past one entry a filtered dump does not send, relative to sending one
/// (measured: ~0.25 µs against ~1.66 µs per entry at 1 000 000 entries; see
/// [`crate::sources::conntrack`]).
const WALK_PER_SEND: f64 = 0.15;

/// The cheaper way to count `zones` zones in a table of `entries` entries of which `in_zones`
/// were in those zones at the last poll: a full dump walks and sends every entry; one filtered
/// dump per zone walks the table once per zone and sends only the zones' entries. On a Neutron
/// hypervisor the instances' zones hold most entries and there are several: a full dump. On a
/// host whose own connections (zone 0: Kubernetes services, NAT) dominate: filtered dumps.
pub(crate) fn choose(entries: u64, in_zones: u64, zones: usize, filter_works: bool) -> DumpMode {
    if zones == 0 {
        return DumpMode::CountOnly;
    }
    let n = entries as f64;
    let full = n * (1.0 + WALK_PER_SEND);
    let filtered = zones as f64 * n * WALK_PER_SEND + in_zones.min(entries) as f64;
    if filter_works && filtered < full {
        DumpMode::Zones
    } else {
        DumpMode::Full
    }
}

/// What one poll counted: entries per zone (every zone for a full dump, the flows' zones for
/// filtered dumps).
struct Counted {
    mode: DumpMode,
    zones: HashMap<u16, u64>,
}

/// The poller's state across polls.
#[derive(Default)]
struct Poller {
    ct: Option<Ctnetlink>,
    /// Entries in the flows' zones at the last poll (`None`: not known yet).
    last_in_zones: Option<u64>,
    /// Whether the kernel honours the `CTA_ZONE` dump filter (cleared when a filtered dump
    /// brought entries of other zones: a kernel older than 6.8).
    filter_broken: bool,
}

impl Poller {
    /// Counts the entries of `zones` (the table holding `entries`) the cheapest way.
    fn count(&mut self, entries: u64, zones: &[u16]) -> Result<Counted, String> {
        let mode = choose(
            entries,
            self.last_in_zones.unwrap_or(entries),
            zones.len(),
            !self.filter_broken,
        );
        let counted = self.read(mode, zones).map_err(|e| {
            // A fresh socket next time (a dump cut short leaves replies queued).
            self.ct = None;
            e.to_string()
        })?;
        self.last_in_zones = Some(zones.iter().filter_map(|z| counted.zones.get(z)).sum());
        Ok(counted)
    }

    fn read(&mut self, mode: DumpMode, zones: &[u16]) -> Result<Counted, CtError> {
        let c = match &mut self.ct {
            Some(c) => c,
            None => self.ct.insert(Ctnetlink::open()?),
        };
        match mode {
            DumpMode::CountOnly => {
                // Nothing to attribute; still prove at a constant cost that the zones could be
                // read (privilege, module), so the source is not up while a dump would fail.
                c.check()?;
                return Ok(Counted {
                    mode,
                    zones: HashMap::new(),
                });
            }
            DumpMode::Zones => {
                let mut out = HashMap::new();
                for &z in zones {
                    let d = c.dump(Some(z))?;
                    if d.zones.keys().any(|k| *k != z) {
                        // The kernel ignored the filter (< 6.8): full dumps from now on.
                        tracing::info!("the kernel does not filter conntrack dumps by zone");
                        self.filter_broken = true;
                        break;
                    }
                    out.insert(z, d.entries);
                }
                if !self.filter_broken {
                    return Ok(Counted { mode, zones: out });
                }
            }
            DumpMode::Full => {}
        }
        let d = c.dump(None)?;
        Ok(Counted {
            mode: DumpMode::Full,
            zones: d.zones,
        })
    }
}

/// Runs the pipeline forever (blocking; on its own thread).
pub(crate) fn run(state: SharedState, cfg: &ConntrackConfig) {
    let interval = Duration::from_secs_f64(cfg.interval_seconds);
    let name = SOURCE.name;
    // A dump of a very large table may legitimately take seconds, and the pause grows with it.
    state.sources.stale_after(
        name,
        SourceRegistry::bound_for(interval.max(Duration::from_secs(60))),
    );
    let mut poller = Poller::default();
    loop {
        let t0 = Instant::now();
        let collection = state.sources.collect(name);
        let flows = state.flows.get();
        let zones: Vec<u16> = flows
            .ct_zones
            .iter()
            .map(|p| p.zone)
            .collect::<BTreeSet<u16>>()
            .into_iter()
            .collect();
        let polled = read_limits(Path::new(OWN_PROC))
            .and_then(|limits| Ok((limits, poller.count(limits.count, &zones)?)));
        let took = t0.elapsed();
        let report = match polled {
            Ok((limits, counted)) => {
                let report = build_report(&flows.ct_zones, limits.count, limits.max, &counted);
                collection.ok(format!(
                    "{} of {} entries, {} zone(s) from flows, {:?} in {} ms",
                    limits.count,
                    limits.max,
                    zones.len(),
                    counted.mode,
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
        let pause = interval.max(took.saturating_mul(DUTY));
        // Not stale while it waits out a long pause after a long dump.
        state.sources.stale_after(
            name,
            SourceRegistry::bound_for(pause.max(Duration::from_secs(60))),
        );
        std::thread::sleep(pause);
    }
}

/// Joins one poll's counts to the zones the flows load.
fn build_report(
    ports: &[ZonePort],
    entries: u64,
    limit: u64,
    counted: &Counted,
) -> ConntrackReport {
    let mut zones: BTreeMap<u16, ZoneEntries> = BTreeMap::new();
    for p in ports {
        let z = zones.entry(p.zone).or_insert_with(|| ZoneEntries {
            zone: p.zone,
            entries: counted.zones.get(&p.zone).copied().unwrap_or(0),
            ports: Vec::new(),
        });
        z.ports.push(p.clone());
    }
    let in_zones: u64 = zones.values().map(|z| z.entries).sum();
    ConntrackReport {
        up: true,
        entries,
        limit,
        zones: zones.into_values().collect(),
        // From the count, whichever way the zones were read (a full dump's own sum differs
        // from it only by what changed while it ran).
        other_entries: entries.saturating_sub(in_zones),
        mode: counted.mode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let ports = [
            port(1, 5, "instance-a"),
            port(1, 6, "instance-a"),
            port(2, 7, "instance-b"),
            port(2, 8, "instance-c"),
            port(3, 9, ""),
        ];
        let counted = Counted {
            mode: DumpMode::Full,
            zones: [(1, 10), (2, 4), (0, 7), (44, 1)].into(),
        };
        let r = build_report(&ports, 23, 1000, &counted);
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
        assert_eq!(r.other_entries, 9);
        assert_eq!((r.entries, r.limit, r.mode), (23, 1000, DumpMode::Full));
    }

    /// The cost model picks what the measurement says is cheaper.
    #[test]
    fn dump_mode_follows_the_cost_model() {
        use DumpMode::*;
        // No zone from the flows: nothing to dump.
        assert_eq!(choose(1_000_000, 0, 0, true), CountOnly);
        // A hypervisor: 10 networks holding 95 % of the entries. One full dump.
        assert_eq!(choose(1_000_000, 950_000, 10, true), Full);
        // A node whose own connections dominate: 2 zones with 5 %. Filtered dumps.
        assert_eq!(choose(1_000_000, 50_000, 2, true), Zones);
        // ... unless the kernel ignores the filter.
        assert_eq!(choose(1_000_000, 50_000, 2, false), Full);
        // One zone holding everything: the same work, a full dump.
        assert_eq!(choose(1_000, 1_000, 1, true), Full);
        // Many zones: the walks add up even when they hold little.
        assert_eq!(choose(1_000_000, 50_000, 8, true), Full);
    }
}
