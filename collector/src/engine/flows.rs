//! The dirty-flow pipeline: OVSDB (bridges, ports) + one OpenFlow mirror per bridge → the
//! incremental [`DirtyFlowIndex`] → a [`FlowsReport`] in the shared state.
//!
//! Event-driven end to end: OVSDB `update` notifications and OpenFlow flow-monitor events feed the
//! index, which re-evaluates only the flows a change can affect. A report is published at most every
//! 50 ms while findings, ports or sessions change (and when a grace period of `stale_cookie` ends),
//! at most every second while only flow counts do; nothing runs while nothing changes.

use crate::detect::flows::{DirtyFlowConfig, DirtyFlowIndex, Severity};
use crate::engine::source;
use crate::model::flows::Bridge;
use crate::sources::openflow::{self, BridgeConfig, BridgeSnapshot, FlowChange, TaggedChange};
use crate::sources::ovsdb::{self, OvsdbSnapshot};
use crate::state::SharedState;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// One dirty flow (or port) as served by `/api/v1/flows/dirty` and `pinflow_ovs_dirty_flow_info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DirtyFlow {
    /// Bridge.
    pub bridge: String,
    /// Rule that flagged it.
    pub rule: String,
    /// OpenFlow table (`None` for port findings such as `dead_vlan`).
    pub table: Option<u8>,
    /// Cookie (`None` for port findings).
    pub cookie: Option<u64>,
    /// The flow as `ovs-ofctl dump-flows --no-stats` prints it (or `port NAME tag=4095`).
    pub flow: String,
    /// libvirt domain whose port the flow matches on or outputs to, if any.
    pub domain: Option<String>,
}

/// Most dirty flows a report carries (the API's list; counts are always complete). Bounds memory
/// when a whole table turns dirty, e.g. while a bridge's ports are unknown.
pub const MAX_REPORTED_DIRTY_FLOWS: usize = 10_000;

/// An OVS port joined to the instance it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortInfo {
    /// Bridge.
    pub bridge: String,
    /// Port name (for an instance: its tap device).
    pub port: String,
    /// OpenFlow port number.
    pub ofport: Option<u32>,
    /// Neutron port id (`external_ids:iface-id`).
    pub iface_id: String,
    /// libvirt domain (by the tap name in the domain XML, else `external_ids:vm-uuid`).
    pub domain: String,
}

/// State of one bridge's OpenFlow mirror.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BridgeStatus {
    /// Whether the OpenFlow session is up and in sync.
    pub connected: bool,
    /// Last error, when not connected.
    pub error: Option<String>,
    /// Flows per table.
    pub flows_per_table: BTreeMap<u8, usize>,
}

/// Everything the flow exporters serve.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FlowsReport {
    /// Bridges by name.
    pub bridges: BTreeMap<String, BridgeStatus>,
    /// Dirty count per (bridge, rule): every enabled rule for every bridge.
    pub dirty_counts: BTreeMap<String, BTreeMap<String, usize>>,
    /// Dirty flows ordered by bridge, rule, table, text; the first [`MAX_REPORTED_DIRTY_FLOWS`].
    pub dirty: Vec<DirtyFlow>,
    /// How many dirty flows there are in all (`dirty` may hold fewer).
    pub dirty_total: usize,
    /// Ports joined to instances (shared between reports until a port or an instance changes).
    pub ports: Arc<Vec<PortInfo>>,
    /// Severity of every enabled rule, built-in and user (`pinflow_ovs_dirty_flow_rule_info`).
    pub rule_severity: BTreeMap<String, Severity>,
}

/// Least time between two published reports while changes arrive. A change after a quieter
/// spell is published at once (no extra wake-up); bursts are coalesced.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(50);

/// Longest delay of a report whose only news is flow counts (`pinflow_ovs_flows`): busy tables
/// change all the time, and a count a second late misleads nobody.
const COUNTS_INTERVAL: Duration = Duration::from_secs(1);

/// Least time between two reports: short when findings, ports or sessions changed (`urgent`).
fn publish_delay(urgent: bool) -> Duration {
    if urgent {
        PUBLISH_INTERVAL
    } else {
        COUNTS_INTERVAL
    }
}

/// Longest sleep of an idle pipeline (nothing to publish, no grace period running).
const IDLE_WAKE: Duration = Duration::from_secs(3600);

/// A running bridge mirror: its snapshot receiver and the switch that stops it.
struct BridgeTask {
    snapshots: watch::Receiver<Arc<BridgeSnapshot>>,
    stop: watch::Sender<bool>,
}

/// Runs the flow pipeline forever.
pub async fn run(cfg: DirtyFlowConfig, run_dir: PathBuf, state: SharedState) {
    let mut index = match DirtyFlowIndex::new(&cfg) {
        Ok(i) => i,
        Err(e) => {
            // Config was validated at start-up; this is unreachable in practice, but never panic.
            tracing::error!("dirty-flow rules: {e}");
            state.sources.down(source::OPENFLOW, e.to_string());
            return;
        }
    };
    let (db_tx, mut db_rx) = watch::channel(OvsdbSnapshot::default());
    let mut db_connected = false;
    tokio::spawn(ovsdb::run_ovsdb(
        run_dir.clone(),
        db_tx,
        state.sources.clone(),
    ));
    // One channel for the mirrors of all bridges: each change carries its bridge's name, so no
    // per-bridge forwarding task (and no extra wake-up per change) sits in between.
    let (change_tx, mut change_rx) = mpsc::channel::<TaggedChange>(4096);
    let mut tasks: HashMap<String, BridgeTask> = HashMap::new();
    let mut bridges: BTreeMap<String, Bridge> = BTreeMap::new();
    let mut db_generation = 0u64;
    let mut join = PortJoin::default();
    // `dirty`: the report is out of date; `urgent`: by more than flow counts (findings, ports,
    // sessions), so it goes out within PUBLISH_INTERVAL rather than COUNTS_INTERVAL.
    let (mut dirty, mut urgent) = (true, true);
    let mut published_findings = index.findings_generation();
    let mut last_publish = Instant::now() - PUBLISH_INTERVAL;
    loop {
        // No periodic tick: sleep until the next publish is due (after a change) or the index's
        // next grace-period deadline, whichever comes first; an idle host costs no wake-ups.
        let publish_due = dirty.then(|| last_publish + publish_delay(urgent));
        let wake = publish_due
            .into_iter()
            .chain(index.next_deadline())
            .min()
            .unwrap_or_else(|| Instant::now() + IDLE_WAKE);
        tokio::select! {
            changed = db_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let snap = db_rx.borrow_and_update().clone();
                db_connected = snap.connected;
                if snap.connected {
                    bridges = snap.bridges;
                    db_generation += 1;
                    index.sync_bridges(&bridges, Instant::now());
                    sync_tasks(&mut tasks, &bridges, &run_dir, &change_tx, &mut index);
                }
                (dirty, urgent) = (true, true);
            }
            Some((bridge, change)) = change_rx.recv() => {
                urgent |= apply_change(&mut index, &tasks, &bridge, change, &state);
                // Drain what is queued before publishing once.
                while let Ok((b, c)) = change_rx.try_recv() {
                    urgent |= apply_change(&mut index, &tasks, &b, c, &state);
                }
                dirty = true;
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        let now = Instant::now();
        if index.next_deadline().is_some_and(|d| d <= now) {
            index.tick(now);
            dirty = true;
        }
        // A finding that appeared or went away is what operators wait for: publish it promptly.
        urgent |= index.findings_generation() != published_findings;
        if dirty && last_publish.elapsed() >= publish_delay(urgent) {
            join.refresh(&bridges, db_generation, &state);
            publish(&index, &tasks, &join, db_connected, &state);
            published_findings = index.findings_generation();
            last_publish = Instant::now();
            (dirty, urgent) = (false, false);
        }
    }
}

/// Starts a mirror for every new bridge and stops those of deleted bridges.
fn sync_tasks(
    tasks: &mut HashMap<String, BridgeTask>,
    bridges: &BTreeMap<String, Bridge>,
    run_dir: &std::path::Path,
    change_tx: &mpsc::Sender<TaggedChange>,
    index: &mut DirtyFlowIndex,
) {
    tasks.retain(|name, t| {
        if bridges.contains_key(name) {
            return true;
        }
        let _ = t.stop.send(true);
        index.remove_bridge(name);
        false
    });
    for name in bridges.keys() {
        if tasks.contains_key(name) {
            continue;
        }
        let (snap_tx, snap_rx) = watch::channel(Arc::new(BridgeSnapshot::default()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut cfg = BridgeConfig::new(run_dir, name.clone());
        // The index follows the change stream and gets the dump with each resync: the mirror
        // keeps no table (the index is the only copy of the flows).
        cfg.snapshot_flows = false;
        tokio::spawn(openflow::run_bridge(
            cfg,
            snap_tx,
            Some(change_tx.clone()),
            stop_rx,
        ));
        tasks.insert(
            name.clone(),
            BridgeTask {
                snapshots: snap_rx,
                stop: stop_tx,
            },
        );
    }
}

/// Applies one mirror change to the index (which keeps the entries: the mirror holds no table);
/// returns whether it changed more than flow counts (a session or port change).
fn apply_change(
    index: &mut DirtyFlowIndex,
    tasks: &HashMap<String, BridgeTask>,
    bridge: &str,
    change: FlowChange,
    state: &SharedState,
) -> bool {
    let now = Instant::now();
    match change {
        FlowChange::Resynced { table, ages, .. } => {
            if tasks.contains_key(bridge) {
                // Aged by the switch's `duration`, so a restart of pinflow changes no verdict.
                let aged = table
                    .into_iter()
                    .enumerate()
                    .map(|(i, f)| (f, ages.get(i).copied().unwrap_or_default()));
                index.replace_flows_aged(bridge, aged, now);
            }
            true
        }
        FlowChange::Added(f) | FlowChange::Modified(f) => {
            index.upsert_flow(bridge, f, now);
            false
        }
        FlowChange::Deleted(f) => {
            index.remove_flow(bridge, &f.key(), now);
            false
        }
        FlowChange::PortsChanged => true,
        FlowChange::Disconnected { error } => {
            state.sources.errors(source::OPENFLOW, 1);
            tracing::warn!(bridge, "OpenFlow session ended: {error}");
            true
        }
    }
}

/// Ofport numbers a flow's text mentions as `in_port=N` or `output:N` (for naming the instance).
fn flow_ports(text: &str) -> impl Iterator<Item = u32> + '_ {
    text.split([',', ' '])
        .filter_map(|tok| {
            tok.strip_prefix("in_port=")
                .or_else(|| tok.strip_prefix("actions=output:"))
                .or_else(|| tok.strip_prefix("output:"))
        })
        .filter_map(|n| n.parse().ok())
}

/// The port → instance join, rebuilt only when its inputs change (not on every flow change).
#[derive(Default)]
struct PortJoin {
    /// What it was built from: OVSDB generation and a hash of the (tap, domain) and (uuid,
    /// domain) pairs it joined on (the pinning engine republishes those every pass, mostly
    /// unchanged).
    built_from: Option<(u64, u64)>,
    ports: Arc<Vec<PortInfo>>,
    /// bridge → ofport → domain.
    domains: HashMap<String, HashMap<u32, String>>,
}

impl PortJoin {
    /// Brings the join up to date with `bridges` (OVSDB generation `db_generation`) and the
    /// instances the pinning engine last published.
    fn refresh(
        &mut self,
        bridges: &BTreeMap<String, Bridge>,
        db_generation: u64,
        state: &SharedState,
    ) {
        let pinning = state.pinning();
        // tap name → domain (the same interface list the datapath source joins on), vm uuid → domain
        let local = state.local_macs();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for i in local.iter() {
            (&i.target_dev, &i.domain).hash(&mut h);
        }
        for d in &pinning.domains {
            (&d.uuid, &d.domain).hash(&mut h);
        }
        let key = (db_generation, h.finish());
        if self.built_from == Some(key) {
            return;
        }
        let by_dev: HashMap<&str, &str> = local
            .iter()
            .filter(|i| !i.target_dev.is_empty())
            .map(|i| (i.target_dev.as_str(), i.domain.as_str()))
            .collect();
        let by_uuid: HashMap<&str, &str> = pinning
            .domains
            .iter()
            .map(|d| (d.uuid.as_str(), d.domain.as_str()))
            .collect();
        let mut ports = Vec::new();
        self.domains.clear();
        for (bname, b) in bridges {
            for p in b.ports.values() {
                let domain = by_dev
                    .get(p.name.as_str())
                    .or_else(|| p.vm_uuid.as_deref().and_then(|u| by_uuid.get(u)))
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                if let Some(of) = p.ofport
                    && !domain.is_empty()
                {
                    self.domains
                        .entry(bname.clone())
                        .or_default()
                        .insert(of, domain.clone());
                }
                ports.push(PortInfo {
                    bridge: bname.clone(),
                    port: p.name.clone(),
                    ofport: p.ofport,
                    iface_id: p.iface_id.clone().unwrap_or_default(),
                    domain,
                });
            }
        }
        self.ports = Arc::new(ports);
        self.built_from = Some(key);
    }

    /// The domain owning `ofport` on `bridge`, if any.
    fn domain(&self, bridge: &str, ofport: u32) -> Option<&String> {
        self.domains.get(bridge)?.get(&ofport)
    }
}

fn publish(
    index: &DirtyFlowIndex,
    tasks: &HashMap<String, BridgeTask>,
    join: &PortJoin,
    db_connected: bool,
    state: &SharedState,
) {
    let t0 = Instant::now();
    let mut report = FlowsReport {
        ports: join.ports.clone(),
        rule_severity: index
            .rule_severities()
            .map(|(r, s)| (r.to_string(), s))
            .collect(),
        ..Default::default()
    };
    for ((bridge, rule), n) in index.counts() {
        report
            .dirty_counts
            .entry(bridge)
            .or_default()
            .insert(rule, n);
    }
    // Sort references first and render only what the report keeps: flow texts are not stored, and
    // a bridge where every flow is dirty (no ports known yet) must not render 100 000 flows on
    // every publish. Findings are ordered by (bridge, rule, table) without their text; only the
    // groups that reach into the first MAX_REPORTED_DIRTY_FLOWS are rendered and sorted by text.
    let mut findings: Vec<_> = index.findings().collect();
    report.dirty_total = findings.len();
    findings.sort_unstable_by(|a, b| (a.bridge, a.rule, a.table).cmp(&(b.bridge, b.rule, b.table)));
    let mut rest = findings.as_slice();
    while !rest.is_empty() && report.dirty.len() < MAX_REPORTED_DIRTY_FLOWS {
        let Some(first) = rest.first() else { break };
        let group_len = rest
            .iter()
            .position(|f| (f.bridge, f.rule, f.table) != (first.bridge, first.rule, first.table))
            .unwrap_or(rest.len());
        let (group, tail) = rest.split_at(group_len);
        rest = tail;
        let mut group: Vec<_> = group.iter().map(|f| (f, f.flow_text())).collect();
        group.sort_unstable_by(|a, b| a.1.cmp(&b.1));
        let room = MAX_REPORTED_DIRTY_FLOWS - report.dirty.len();
        for (f, text) in group.into_iter().take(room) {
            let domain = flow_ports(&text).find_map(|p| join.domain(f.bridge, p).cloned());
            report.dirty.push(DirtyFlow {
                bridge: f.bridge.to_string(),
                rule: f.rule.to_string(),
                table: f.table,
                cookie: f.cookie,
                flow: text.into_owned(),
                domain,
            });
        }
    }
    for ((bridge, table), n) in index.flow_counts() {
        report
            .bridges
            .entry(bridge)
            .or_default()
            .flows_per_table
            .insert(table, n);
    }
    let mut down = Vec::new();
    for (name, t) in tasks {
        let snap = t.snapshots.borrow();
        let st = report.bridges.entry(name.clone()).or_default();
        st.connected = snap.connected;
        st.error = snap.error.clone();
        if !snap.connected {
            down.push(format!(
                "{name}: {}",
                snap.error.as_deref().unwrap_or("connecting")
            ));
        }
    }
    if tasks.is_empty() && !db_connected {
        // No bridge list yet: nothing was read, so the source is not up.
        state
            .sources
            .down(source::OPENFLOW, "waiting for OVSDB to list the bridges");
    } else if down.is_empty() {
        state.sources.up(
            source::OPENFLOW,
            format!("{} bridge(s)", tasks.len()),
            t0.elapsed(),
        );
    } else {
        down.sort();
        state.sources.down(source::OPENFLOW, down.join("; "));
    }
    state.set_flows(report);
}

#[cfg(test)]
mod tests {
    use super::flow_ports;

    #[test]
    fn ports_named_by_a_flow() {
        let p: Vec<u32> =
            flow_ports("cookie=0x1, table=0, priority=10,in_port=5,dl_vlan=3 actions=output:7")
                .collect();
        assert_eq!(p, vec![5, 7]);
        let p: Vec<u32> = flow_ports("priority=1,in_port=LOCAL actions=NORMAL").collect();
        assert!(p.is_empty());
    }
}
