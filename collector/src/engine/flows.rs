//! The dirty-flow pipeline: OVSDB (bridges, ports) + one OpenFlow mirror per bridge → the
//! incremental [`DirtyFlowIndex`] → a [`FlowsReport`] in the shared state.
//!
//! Event-driven end to end: OVSDB `update` notifications and OpenFlow flow-monitor events feed the
//! index, which re-evaluates only the flows a change can affect. A report is published at most every
//! 50 ms while findings, ports or sessions change (and when a grace period of `stale_cookie` ends),
//! at most every second while only flow counts do; nothing runs while nothing changes.
//!
//! Every published finding names what it hurts: the ports its flow refers to (read from the
//! structured match and actions: `in_port`, outputs, Neutron's port register `reg5`), each joined
//! to its OVSDB port, Neutron port id and instance (`PortJoin`). Ports deleted from OVSDB are
//! remembered (bounded) so that the flows they leave behind still say whose they were.
//!
//! It also follows which conntrack zone each port's flows load into Neutron's `reg6`
//! (`ct_zones.rs`, updated with every flow change) and publishes the pairs, joined to ports and
//! instances, in [`FlowsReport::ct_zones`] for the conntrack pipeline.

use crate::detect::flows::{
    DirtyFinding, DirtyFlowConfig, DirtyFlowIndex, FindingSubject, is_reserved_port,
};
use crate::engine::ct_zones::ZoneIndex;
use crate::engine::findings_log::FindingsLog;
use crate::model::flows::{
    Bridge, DirtyFlow, FlowPort, FlowsReport, InterfacesReport, MAX_REPORTED_DIRTY_FLOWS, PortInfo,
    PortRef,
};
use crate::model::inventory::{HostInventory, InstanceRef, LocalInterface};
use crate::model::openflow::{FlowAction, FlowEntry};
use crate::model::state::SharedState;
use crate::sources::openflow::{self, BridgeConfig, BridgeSnapshot, FlowChange, TaggedChange};
use crate::sources::ovsdb::{self, OvsdbSnapshot};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

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
    /// Distinguishes this mirror from a later one of the same bridge.
    id: u64,
}

/// A bridge mirror task that ended without being stopped: (bridge, task id, how it ended).
type DeadMirror = (String, u64, String);

/// Ids of bridge mirror tasks.
static MIRROR_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How long a mirror task that ended unasked waits before it is restarted (no hot loop when it
/// fails at once every time).
const MIRROR_RESTART_DELAY: Duration = Duration::from_secs(1);

/// Runs the flow pipeline forever.
pub(crate) async fn run(cfg: DirtyFlowConfig, run_dir: PathBuf, state: SharedState) {
    let mut index = match DirtyFlowIndex::new(&cfg) {
        Ok(i) => i,
        Err(e) => {
            // Config was validated at start-up; this is unreachable in practice, but never panic.
            tracing::error!("dirty-flow rules: {e}");
            state.sources.down(openflow::SOURCE.name, e.to_string());
            return;
        }
    };
    let (db_tx, mut db_rx) = watch::channel(OvsdbSnapshot::default());
    let mut db_connected = false;
    let db_opts = ovsdb::OvsdbOptions {
        interface_stats: cfg.interface_metrics,
        ..ovsdb::OvsdbOptions::new(run_dir.clone())
    };
    tokio::spawn(ovsdb::run_ovsdb_with(db_opts, db_tx, state.sources.clone()));
    // One channel for the mirrors of all bridges: each change carries its bridge's name, so no
    // per-bridge forwarding task (and no extra wake-up per change) sits in between.
    let (change_tx, mut change_rx) = mpsc::channel::<TaggedChange>(4096);
    let mut tasks: HashMap<String, BridgeTask> = HashMap::new();
    // Mirror tasks are supervised: one that panics or ends unasked is logged and restarted.
    let (dead_tx, mut dead_rx) = mpsc::unbounded_channel::<DeadMirror>();
    let mut bridges: BTreeMap<String, Bridge> = BTreeMap::new();
    let mut db_generation = 0u64;
    let mut join = PortJoin::default();
    let mut zones = ZoneIndex::default();
    // `dirty`: the report is out of date; `urgent`: by more than flow counts (findings, ports,
    // sessions), so it goes out within PUBLISH_INTERVAL rather than COUNTS_INTERVAL.
    let (mut dirty, mut urgent) = (true, true);
    let mut published_findings = index.findings_generation();
    let mut findings = FindingsLog::new("dirty flow");
    let mut last_publish = Instant::now() - PUBLISH_INTERVAL;
    // Instances that come or go rename the ports of findings: republish when they change.
    let mut inventory = state.inventory.subscribe();
    loop {
        // No periodic tick: sleep until the next publish is due (after a change) or the index's
        // next grace-period deadline, whichever comes first; an idle host costs no wake-ups.
        // Counts alone wait for a timer only when no more changes come: while a stream of
        // batches flows (one per `BATCH_WINDOW`), the batch that finds them due publishes them.
        let publish_due = dirty.then(|| {
            last_publish
                + publish_delay(urgent)
                + if urgent {
                    Duration::ZERO
                } else {
                    openflow::BATCH_WINDOW
                }
        });
        let wake = publish_due
            .into_iter()
            .chain(index.next_deadline())
            .min()
            .unwrap_or_else(|| Instant::now() + IDLE_WAKE);
        tokio::select! {
            changed = db_rx.changed() => {
                if changed.is_err() {
                    // The OVSDB client task is gone (it never returns on its own): end the
                    // pipeline, whose supervisor takes the process down loudly.
                    tracing::error!("the OVSDB client task ended");
                    return;
                }
                let snap = db_rx.borrow_and_update().clone();
                let (interfaces, links) = if snap.connected {
                    (snap.interfaces.clone(), snap.links.clone())
                } else {
                    Default::default()
                };
                state.ovs_interfaces.set_if_changed(InterfacesReport {
                    connected: snap.connected,
                    interfaces,
                    links,
                    offload: snap.offload.clone(),
                });
                // Interface counters alone (every 5 s with `interface_metrics`) change nothing
                // the rules or the port join read.
                if snap.connected && db_connected && snap.bridges == bridges {
                    continue;
                }
                db_connected = snap.connected;
                if snap.connected {
                    bridges = snap.bridges;
                    db_generation += 1;
                    index.sync_bridges(&bridges, Instant::now());
                    sync_tasks(&mut tasks, &bridges, &run_dir, &change_tx, &dead_tx, &mut index);
                    zones.retain_bridges(|b| tasks.contains_key(b));
                }
                (dirty, urgent) = (true, true);
            }
            Some((bridge, id, how)) = dead_rx.recv() => {
                tracing::error!(bridge, "OpenFlow mirror task {how}; restarting it");
                state.sources.errors(openflow::SOURCE.name, 1);
                // Its findings stay (marked stale) until the new mirror's dump replaces them.
                if tasks.get(&bridge).is_some_and(|t| t.id == id) {
                    tasks.remove(&bridge);
                }
                sync_tasks(&mut tasks, &bridges, &run_dir, &change_tx, &dead_tx, &mut index);
                (dirty, urgent) = (true, true);
            }
            Some((bridge, change)) = change_rx.recv() => {
                urgent |= apply_change(&mut index, &mut zones, &tasks, &bridge, change, &state);
                // Drain what is queued before publishing once.
                while let Ok((b, c)) = change_rx.try_recv() {
                    urgent |= apply_change(&mut index, &mut zones, &tasks, &b, c, &state);
                }
                dirty = true;
            }
            Ok(()) = inventory.changed() => {
                (dirty, urgent) = (true, true);
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
            let ct_zones = zones.joined(&join);
            publish(
                &index,
                &tasks,
                &join,
                ct_zones,
                db_connected,
                &state,
                &mut findings,
            );
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
    dead_tx: &mpsc::UnboundedSender<DeadMirror>,
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
        let cfg = BridgeConfig::new(run_dir, name.clone());
        let stopped = stop_rx.clone();
        let mirror = tokio::spawn(openflow::run_bridge(
            cfg,
            snap_tx,
            Some(change_tx.clone()),
            stop_rx,
        ));
        let id = MIRROR_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (bridge, dead_tx) = (name.clone(), dead_tx.clone());
        tokio::spawn(async move {
            let how = match mirror.await {
                Ok(()) => "ended".to_string(),
                Err(e) if e.is_panic() => format!(
                    "panicked: {}",
                    crate::engine::supervise::panic_message(e.into_panic().as_ref())
                ),
                Err(e) => format!("failed: {e}"),
            };
            if *stopped.borrow() {
                return;
            }
            tokio::time::sleep(MIRROR_RESTART_DELAY).await;
            // The pipeline is gone only while shutting down.
            let _ = dead_tx.send((bridge, id, how));
        });
        tasks.insert(
            name.clone(),
            BridgeTask {
                snapshots: snap_rx,
                stop: stop_tx,
                id,
            },
        );
    }
}

/// Applies one mirror change to the index (which keeps the entries: the mirror holds no table);
/// returns whether it changed more than flow counts (a session or port change).
fn apply_change(
    index: &mut DirtyFlowIndex,
    zones: &mut ZoneIndex,
    tasks: &HashMap<String, BridgeTask>,
    bridge_tag: &Arc<str>,
    change: FlowChange,
    state: &SharedState,
) -> bool {
    let now = Instant::now();
    let bridge: &str = bridge_tag;
    match change {
        FlowChange::Resynced { table, ages, .. } => {
            if tasks.contains_key(bridge) {
                zones.replace(bridge_tag, &table);
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
            zones.upsert(bridge_tag, &f);
            index.upsert_flow(bridge, f, now);
            false
        }
        FlowChange::Deleted(f) => {
            let key = f.key();
            zones.remove(bridge_tag, &key);
            index.remove_flow(bridge, &key, now);
            false
        }
        FlowChange::PortsChanged => true,
        FlowChange::Undecodable(u) => {
            // Skipped, never indexed: one bad flow costs neither the dump nor the session.
            state.sources.errors(openflow::SOURCE.name, 1);
            tracing::warn!(
                bridge,
                table = u.table,
                priority = u.priority,
                cookie = format_args!("{:#x}", u.cookie),
                raw = u.raw_hex(),
                "skipped a flow that does not decode: {}",
                u.error
            );
            false
        }
        FlowChange::UndecodableDropped(n) => {
            state.sources.errors(openflow::SOURCE.name, n as u64);
            tracing::warn!(bridge, "skipped {n} more flows that do not decode");
            false
        }
        FlowChange::Disconnected { error } => {
            state.sources.errors(openflow::SOURCE.name, 1);
            // The mirror itself logs the state change (once, not per retry).
            tracing::debug!(bridge, "OpenFlow session ended: {error}");
            true
        }
    }
}

/// The ofports `flow` refers to, in label order: `in_port`, outputs and enqueues, then Neutron's
/// port register (`reg5`) matched or loaded — read from the structured match and actions, never
/// from the rendered text. Reserved ports (`LOCAL`, `NORMAL`, …) and repeats are left out.
pub(crate) fn referenced_ports(flow: &FlowEntry) -> Vec<(u32, PortRef)> {
    let mut out: Vec<(u32, PortRef)> = Vec::new();
    let mut push = |p: u32, via| {
        if !is_reserved_port(p) && !out.iter().any(|(q, _)| *q == p) {
            out.push((p, via));
        }
    };
    let exact = |field: &str| {
        flow.matches
            .get(field)
            .filter(|m| m.is_exact())
            .and_then(|m| u32::try_from(m.value).ok())
    };
    if let Some(p) = exact("in_port") {
        push(p, PortRef::InPort);
    }
    let actions = flow.actions();
    for a in actions.iter() {
        if let FlowAction::Output(p) | FlowAction::Enqueue(p) = a {
            push(*p, PortRef::Output);
        }
    }
    let (reg_name, reg) = PORT_REGISTER;
    if let Some(p) = exact(reg_name) {
        push(p, PortRef::PortRegister);
    }
    for a in actions.iter() {
        if let FlowAction::Load {
            reg: r,
            value,
            mask: u32::MAX,
            ..
        } = *a
            && r == reg
        {
            push(value, PortRef::PortRegister);
        }
    }
    out
}

/// Neutron's port register (`REG_PORT = 5` of its OVS firewall driver): its match field name
/// and its number in [`FlowAction::Load`].
const PORT_REGISTER: (&str, u8) = ("reg5", 5);

/// A port as the join last knew it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PortRecord {
    port: String,
    iface_id: String,
    domain: String,
    name: String,
}

/// Most deleted ports remembered per host (oldest forgotten first): enough for the flows an agent
/// leaks while instances come and go, bounded whatever the churn.
pub(crate) const MAX_REMEMBERED_PORTS: usize = 4096;

/// The port → instance join, rebuilt only when its inputs change (not on every flow change), with
/// a bounded memory of recently deleted ports so that a flow leaked by a deleted port still names
/// the instance it belonged to.
#[derive(Default)]
pub(crate) struct PortJoin {
    /// What it was built from: OVSDB generation and a hash of the (tap, domain) and (uuid,
    /// domain, name) triples it joined on (the pinning engine republishes those every pass,
    /// mostly unchanged).
    built_from: Option<(u64, u64)>,
    ports: Arc<Vec<PortInfo>>,
    /// (bridge, ofport) → the port now in OVSDB.
    current: HashMap<(String, u32), PortRecord>,
    /// (bridge, port name) → ofport, for port findings.
    by_name: HashMap<(String, String), Option<u32>>,
    /// (bridge, ofport) → last known state of ports gone from OVSDB, at most
    /// [`MAX_REMEMBERED_PORTS`]; `deleted_order` holds their keys oldest first.
    deleted: HashMap<(String, u32), PortRecord>,
    deleted_order: std::collections::VecDeque<(String, u32)>,
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
        let inv = state.inventory.get();
        self.refresh_from(bridges, db_generation, &inv.interfaces, &inv.instances);
    }

    /// Brings the join up to date with `bridges` (OVSDB generation `db_generation`), the local
    /// instances' interfaces (tap → domain) and the instances (uuid → domain, Nova name). Ports
    /// that were joined before and are gone now are remembered as deleted.
    pub(crate) fn refresh_from(
        &mut self,
        bridges: &BTreeMap<String, Bridge>,
        db_generation: u64,
        local: &[LocalInterface],
        instances: &[InstanceRef],
    ) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for i in local {
            (&i.target_dev, &i.domain).hash(&mut h);
        }
        for d in instances {
            (&d.uuid, &d.domain, &d.name).hash(&mut h);
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
        let by_uuid: HashMap<&str, &str> = instances
            .iter()
            .map(|d| (d.uuid.as_str(), d.domain.as_str()))
            .collect();
        let names: HashMap<&str, &str> = instances
            .iter()
            .map(|d| (d.domain.as_str(), d.name.as_str()))
            .collect();
        let mut ports = Vec::new();
        let mut current = HashMap::new();
        self.by_name.clear();
        for (bname, b) in bridges {
            for p in b.ports.values() {
                let domain = by_dev
                    .get(p.name.as_str())
                    .or_else(|| p.vm_uuid.as_deref().and_then(|u| by_uuid.get(u)))
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                let iface_id = p.iface_id.clone().unwrap_or_default();
                self.by_name
                    .insert((bname.clone(), p.name.clone()), p.ofport);
                if let Some(of) = p.ofport {
                    current.insert(
                        (bname.clone(), of),
                        PortRecord {
                            port: p.name.clone(),
                            iface_id: iface_id.clone(),
                            name: names
                                .get(domain.as_str())
                                .map(|n| n.to_string())
                                .unwrap_or_default(),
                            domain: domain.clone(),
                        },
                    );
                }
                ports.push(PortInfo {
                    bridge: bname.clone(),
                    port: p.name.clone(),
                    ofport: p.ofport,
                    iface_id,
                    domain,
                    error: p.error.clone(),
                });
            }
        }
        // Ports that went away keep their last known state; a port that (re)appears with an
        // ofport is current again.
        let old = std::mem::replace(&mut self.current, current);
        for (k, rec) in old {
            if !self.current.contains_key(&k) {
                self.remember_deleted(k, rec);
            }
        }
        let back: Vec<(String, u32)> = self
            .current
            .keys()
            .filter(|k| self.deleted.contains_key(*k))
            .cloned()
            .collect();
        for k in back {
            self.deleted.remove(&k);
            self.deleted_order.retain(|x| *x != k);
        }
        self.ports = Arc::new(ports);
        self.built_from = Some(key);
    }

    fn remember_deleted(&mut self, k: (String, u32), rec: PortRecord) {
        if self.deleted.insert(k.clone(), rec).is_none() {
            self.deleted_order.push_back(k);
        }
        while self.deleted.len() > MAX_REMEMBERED_PORTS {
            let Some(oldest) = self.deleted_order.pop_front() else {
                break;
            };
            self.deleted.remove(&oldest);
        }
    }

    /// What the join was last built from (changes whenever a joined port may have).
    pub(crate) fn version(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.built_from.hash(&mut h);
        h.finish()
    }

    /// Ports joined (for `pinflow_ovs_port_info`).
    pub(crate) fn ports(&self) -> Arc<Vec<PortInfo>> {
        self.ports.clone()
    }

    /// `ofport` on `bridge`, referred to `via`, joined: the current port, else the last known
    /// state of a deleted one, else only the number.
    pub(crate) fn port(&self, bridge: &str, ofport: u32, via: Option<PortRef>) -> FlowPort {
        let k = (bridge.to_string(), ofport);
        let (rec, deleted) = match self.current.get(&k) {
            Some(r) => (Some(r), false),
            None => (self.deleted.get(&k), true),
        };
        let rec = rec.cloned().unwrap_or_default();
        FlowPort {
            ofport: Some(ofport),
            via,
            deleted: deleted && !rec.port.is_empty(),
            port: rec.port,
            iface_id: rec.iface_id,
            domain: rec.domain,
            name: rec.name,
        }
    }

    /// The port named `name` on `bridge` (for port findings such as `dead_vlan`).
    fn port_by_name(&self, bridge: &str, name: &str) -> Option<FlowPort> {
        let of = *self.by_name.get(&(bridge.to_string(), name.to_string()))?;
        Some(match of {
            Some(of) => FlowPort {
                via: None,
                ..self.port(bridge, of, None)
            },
            None => FlowPort {
                port: name.to_string(),
                ..Default::default()
            },
        })
    }

    /// The ports `finding` refers to, joined.
    fn finding_ports(&self, finding: &DirtyFinding<'_>) -> Vec<FlowPort> {
        match finding.subject {
            FindingSubject::Flow(f) => referenced_ports(f)
                .into_iter()
                .map(|(of, via)| self.port(finding.bridge, of, Some(via)))
                .collect(),
            FindingSubject::Port(text) => dead_vlan_port_name(text)
                .and_then(|n| self.port_by_name(finding.bridge, n))
                .into_iter()
                .collect(),
        }
    }
}

/// The port name of a port finding's text (`port NAME tag=4095`).
fn dead_vlan_port_name(text: &str) -> Option<&str> {
    text.strip_prefix("port ")?.split(' ').next()
}

/// The first `limit` current findings of `index` (ordered by bridge, rule, table, flow text),
/// each joined to its ports and instance, and the number of findings in all. Only the findings
/// kept are rendered: a bridge where every flow is dirty (no ports known yet) must not render
/// 100 000 flows on every publish.
pub(crate) fn dirty_flows(
    index: &DirtyFlowIndex,
    join: &PortJoin,
    limit: usize,
) -> (Vec<DirtyFlow>, usize) {
    let mut out = Vec::new();
    // Findings are ordered by (bridge, rule, table) without their text; only the groups that
    // reach into the first `limit` are rendered and sorted by text.
    let mut findings: Vec<_> = index.findings().collect();
    let total = findings.len();
    findings.sort_unstable_by(|a, b| (a.bridge, a.rule, a.table).cmp(&(b.bridge, b.rule, b.table)));
    let mut rest = findings.as_slice();
    while !rest.is_empty() && out.len() < limit {
        let Some(first) = rest.first() else { break };
        let group_len = rest
            .iter()
            .position(|f| (f.bridge, f.rule, f.table) != (first.bridge, first.rule, first.table))
            .unwrap_or(rest.len());
        let (group, tail) = rest.split_at(group_len);
        rest = tail;
        let mut group: Vec<_> = group.iter().map(|f| (f, f.flow_text())).collect();
        group.sort_unstable_by(|a, b| a.1.cmp(&b.1));
        let room = limit - out.len();
        for (f, text) in group.into_iter().take(room) {
            let ports = join.finding_ports(f);
            let mut d = DirtyFlow {
                bridge: f.bridge.to_string(),
                rule: f.rule.to_string(),
                severity: f.severity.name(),
                table: f.table,
                cookie: f.cookie,
                flow: text.into_owned(),
                ports,
                domain: None,
                stale: false,
            };
            d.domain = d.port().map(|p| p.domain.clone()).filter(|d| !d.is_empty());
            out.push(d);
        }
    }
    (out, total)
}

fn publish(
    index: &DirtyFlowIndex,
    tasks: &HashMap<String, BridgeTask>,
    join: &PortJoin,
    ct_zones: crate::model::conntrack::ZonePorts,
    db_connected: bool,
    state: &SharedState,
    findings: &mut FindingsLog,
) {
    let t0 = Instant::now();
    let mut report = FlowsReport {
        ports: join.ports(),
        ct_zones,
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
    (report.dirty, report.dirty_total) = dirty_flows(index, join, MAX_REPORTED_DIRTY_FLOWS);
    for ((bridge, table), n) in index.flow_counts() {
        report
            .bridges
            .entry(bridge)
            .or_default()
            .flows_per_table
            .insert(table, n);
    }
    let mut down = Vec::new();
    // Whether every session that is not up is only connecting for the first time (no error).
    let mut only_starting = true;
    for (name, t) in tasks {
        let snap = t.snapshots.borrow();
        let st = report.bridges.entry(name.clone()).or_default();
        st.connected = snap.connected;
        st.error = snap.error.clone();
        st.undecodable_total = snap.undecodable_total;
        st.undecodable = snap.undecodable.clone();
        if !snap.connected {
            only_starting &= snap.error.is_none();
            down.push(format!(
                "{name}: {}",
                snap.error.as_deref().unwrap_or("connecting")
            ));
        }
    }
    // Flow findings of a bridge whose session is down come from its last known table: say so.
    // (Port findings, `dead_vlan`, come from OVSDB and stay current.)
    for d in &mut report.dirty {
        d.stale = d.table.is_some() && report.bridges.get(&d.bridge).is_some_and(|b| !b.connected);
    }
    if tasks.is_empty() && !db_connected {
        // No bridge list yet: nothing was read, so the source is not up (OVSDB's own state
        // says why, and is logged).
        state.sources.starting(
            openflow::SOURCE.name,
            "waiting for OVSDB to list the bridges",
        );
    } else if !down.is_empty() && only_starting {
        down.sort();
        state
            .sources
            .starting(openflow::SOURCE.name, down.join("; "));
    } else if down.is_empty() {
        state.sources.up(
            openflow::SOURCE.name,
            format!("{} bridge(s)", tasks.len()),
            t0.elapsed(),
        );
    } else {
        down.sort();
        state.sources.down(openflow::SOURCE.name, down.join("; "));
    }
    findings.changes(
        &state.flows.get().dirty,
        &report.dirty,
        |f| {
            (
                f.bridge.clone(),
                f.rule.clone(),
                f.table,
                f.cookie,
                f.flow.clone(),
            )
        },
        |f| {
            format!(
                "bridge={} rule={} severity={} table={} cookie={} flow=\"{}\"",
                f.bridge,
                f.rule,
                f.severity,
                f.table.map_or_else(|| "-".into(), |t| t.to_string()),
                f.cookie.map_or_else(|| "-".into(), |c| format!("{c:#x}")),
                f.flow
            )
        },
    );
    state.flows.set(report);
}

/// Loads a one-shot dump of `bridge` into `index`, each flow aged by the switch's `duration`
/// (installed that long before `now`), oldest first, then advances the index to `now`: a
/// one-shot command sees what a long-running daemon would, `stale_cookie` included.
pub(crate) fn load_dump_aged(
    index: &mut DirtyFlowIndex,
    bridge: &str,
    mut flows: Vec<crate::model::openflow::FlowStats>,
    now: Instant,
) {
    let age = |f: &crate::model::openflow::FlowStats| {
        Duration::new(u64::from(f.duration_sec), f.duration_nsec)
    };
    flows.sort_by_key(|f| std::cmp::Reverse(age(f)));
    index.replace_flows(bridge, std::iter::empty::<FlowEntry>(), now);
    for f in flows {
        let installed = now.checked_sub(age(&f)).unwrap_or(now);
        index.upsert_flow(bridge, f.entry, installed);
    }
    index.tick(now);
}

/// The libvirt domains of this host for a one-shot command: their interfaces (tap → domain) and
/// Nova names, read once from libvirt's live state files. Unreadable files are logged.
pub(crate) fn instances_once(
    libvirt_state_dir: &std::path::Path,
) -> (Vec<LocalInterface>, Vec<InstanceRef>) {
    let mut inv = crate::sources::libvirt::LibvirtInventory::new(libvirt_state_dir.to_path_buf());
    let refresh = inv.refresh();
    if let Some(e) = &refresh.dir_error {
        tracing::warn!("libvirt state: {e} (ports are not joined to instances)");
    }
    for (f, e) in &refresh.errors {
        tracing::warn!("libvirt state {f}: {e}");
    }
    let HostInventory {
        interfaces,
        instances,
    } = HostInventory::from_domains(inv.domains());
    (interfaces, instances)
}

/// Every current finding of `index` joined to the ports of `bridges` and the host's instances
/// (for `pinflow flows --dirty`).
pub(crate) fn dirty_flows_once(
    index: &DirtyFlowIndex,
    bridges: &BTreeMap<String, Bridge>,
    libvirt_state_dir: &std::path::Path,
) -> Vec<DirtyFlow> {
    let (local, instances) = instances_once(libvirt_state_dir);
    let mut join = PortJoin::default();
    join.refresh_from(bridges, 0, &local, &instances);
    dirty_flows(index, &join, usize::MAX).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::flows::OvsPort;
    use crate::model::openflow::FieldMatch;
    use crate::model::openflow::flow::FlowSource;

    fn flow(
        table: u8,
        priority: u16,
        cookie: u64,
        m: Vec<FieldMatch>,
        a: Vec<FlowAction>,
    ) -> FlowEntry {
        FlowEntry {
            table,
            priority,
            cookie,
            source: FlowSource::text(format!("table={table}, priority={priority} {m:?} {a:?}"), a),
            matches: m.into(),
            idle_timeout: 0,
            hard_timeout: 0,
        }
    }

    fn in_port(p: u32) -> FieldMatch {
        FieldMatch::exact("in_port", u128::from(p), 4)
    }

    fn bridge(ports: &[(&str, u32, &str)]) -> BTreeMap<String, Bridge> {
        let ports = ports
            .iter()
            .map(|(name, of, iface)| {
                (
                    name.to_string(),
                    OvsPort {
                        name: name.to_string(),
                        ofport: Some(*of),
                        iface_id: (!iface.is_empty()).then(|| iface.to_string()),
                        ..Default::default()
                    },
                )
            })
            .collect();
        BTreeMap::from([(
            "br-int".to_string(),
            Bridge {
                name: "br-int".into(),
                ports,
            },
        )])
    }

    fn vm(tap: &str, domain: &str) -> (LocalInterface, InstanceRef) {
        (
            LocalInterface {
                mac: String::new(),
                target_dev: tap.into(),
                domain: domain.into(),
            },
            InstanceRef {
                domain: domain.into(),
                uuid: format!("uuid-{domain}"),
                name: format!("nova-{domain}"),
            },
        )
    }

    #[test]
    fn ports_come_from_match_and_actions_in_label_order() {
        let f = flow(
            0,
            10,
            1,
            vec![
                in_port(5),
                FieldMatch::exact("reg5", 9, 4),
                FieldMatch::exact("dl_vlan", 3, 2),
            ],
            vec![
                FlowAction::Output(7),
                FlowAction::Reserved("LOCAL"),
                FlowAction::Output(0xffff_fffe),
                FlowAction::Enqueue(8),
                FlowAction::Output(5),
                // load:0x11->NXM_NX_REG5[]
                FlowAction::load(5, 0x11, u32::MAX, false).unwrap(),
                // load:0x12->NXM_NX_REG5[0..15]: part of the register names no port
                FlowAction::load(5, 0x12, 0xffff, false).unwrap(),
                // set_field:18->reg5
                FlowAction::load(5, 18, u32::MAX, true).unwrap(),
                // load:0x13->NXM_NX_REG6[]: another register
                FlowAction::load(6, 0x13, u32::MAX, false).unwrap(),
            ],
        );
        assert_eq!(
            referenced_ports(&f),
            vec![
                (5, PortRef::InPort),
                (7, PortRef::Output),
                (8, PortRef::Output),
                (9, PortRef::PortRegister),
                (0x11, PortRef::PortRegister),
                (18, PortRef::PortRegister),
            ]
        );
        // A masked reg5 match names no single port; no ports at all is an empty list.
        let f = flow(
            0,
            1,
            0,
            vec![FieldMatch::masked("reg5", 0x10, 0xf0, 4)],
            vec![FlowAction::Reserved("NORMAL")],
        );
        assert!(referenced_ports(&f).is_empty());
    }

    #[test]
    fn cookies_above_2_pow_53_survive_json() {
        let c = 0x6a1b_2c3d_4e5f_6071u64;
        let f = flow(0, 1, c, vec![], vec![FlowAction::Reserved("NORMAL")]);
        assert_eq!(
            serde_json::to_value(&f).unwrap()["cookie"],
            "0x6a1b2c3d4e5f6071"
        );
        let d = DirtyFlow {
            bridge: "br-int".into(),
            rule: "stale_cookie".into(),
            severity: "suspect",
            table: Some(0),
            cookie: Some(c),
            flow: String::new(),
            ports: vec![],
            domain: None,
            stale: false,
        };
        let text = serde_json::to_string(&d).unwrap();
        assert!(text.contains(r#""cookie":"0x6a1b2c3d4e5f6071""#), "{text}");
    }

    /// The multipart reply bodies of a captured switch→client byte stream.
    fn replies(name: &str) -> Vec<Vec<u8>> {
        use crate::sources::openflow::wire;
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/openflow/");
        let mut buf = std::fs::read(format!("{p}{name}")).unwrap();
        let mut out = Vec::new();
        while let Some(m) = wire::take_message(&mut buf, wire::MAX_MESSAGE_LEN).unwrap() {
            if m.header.msg_type == wire::OFPT_MULTIPART_REPLY {
                out.push(m.body);
            }
        }
        out
    }

    /// The ports a dirty flow names come from the decoded match and actions of real flows: a
    /// Neutron ingress flow that carries the port only in `load:…->NXM_NX_REG5[]`, an egress flow
    /// with `in_port` and the same port in reg5, and a flow matching `reg5`. Also times the join
    /// input against rendering the text, which a published finding needs anyway.
    #[test]
    fn captured_flows_name_their_ports_from_match_and_actions() {
        let mut flows = Vec::new();
        for body in replies("neutron-dump.of13.bin") {
            let mp = openflow::wire::MultipartReply::parse(&body).unwrap();
            crate::model::openflow::render::decode_flow_stats(mp.body, &mut flows, &mut Vec::new())
                .unwrap();
        }
        let by_text = |want: &str| {
            flows
                .iter()
                .map(|f| &f.entry)
                .find(|e| e.text() == want)
                .unwrap_or_else(|| panic!("no flow {want}"))
        };
        let ingress = by_text(
            "cookie=0x9e2c5b1a0d3f4e71, table=60, priority=90,dl_vlan=1,dl_dst=fa:16:3e:00:00:00 actions=load:0xa->NXM_NX_REG5[],load:0x1->NXM_NX_REG6[],pop_vlan,resubmit(,81)",
        );
        assert_eq!(referenced_ports(ingress), [(10, PortRef::PortRegister)]);
        let egress = by_text(
            "cookie=0x9e2c5b1a0d3f4e71, table=60, priority=100,in_port=11 actions=load:0xb->NXM_NX_REG5[],load:0x2->NXM_NX_REG6[],resubmit(,71)",
        );
        assert_eq!(referenced_ports(egress), [(11, PortRef::InPort)]);
        let reg_match = flows
            .iter()
            .map(|f| &f.entry)
            .find(|e| e.matches.get("reg5").is_some() && e.matches.get("in_port").is_none())
            .expect("a flow matching reg5 only");
        let want = u32::try_from(reg_match.matches.get("reg5").unwrap().value).unwrap();
        assert!(
            referenced_ports(reg_match).contains(&(want, PortRef::PortRegister)),
            "{}",
            reg_match.text()
        );
        let t = std::time::Instant::now();
        let n: usize = flows.iter().map(|f| referenced_ports(&f.entry).len()).sum();
        let ports = t.elapsed();
        let t = std::time::Instant::now();
        let bytes: usize = flows.iter().map(|f| f.entry.text().len()).sum();
        let texts = t.elapsed();
        eprintln!(
            "{} flows: ports ({n}) in {ports:?}, texts ({bytes} B) in {texts:?}",
            flows.len()
        );
    }

    /// The leaked-flow case: a port is deleted under its flows; the findings still name the
    /// port, its Neutron port and its instance from OVSDB's last known state.
    #[test]
    fn findings_name_ports_and_instances_even_after_the_port_is_deleted() {
        let cfg = DirtyFlowConfig::default();
        let mut index = DirtyFlowIndex::new(&cfg).unwrap();
        let now = Instant::now();
        let (l1, i1) = vm("tapa", "instance-a");
        let (local, instances) = (vec![l1], vec![i1]);
        let mut b = bridge(&[("tapa", 5, "port-a"), ("tapb", 6, "")]);
        index.sync_bridges(&b, now);
        index.upsert_flow(
            "br-int",
            flow(0, 10, 0, vec![in_port(5)], vec![FlowAction::Output(6)]),
            now,
        );
        index.upsert_flow(
            "br-int",
            flow(0, 9, 0, vec![in_port(6)], vec![FlowAction::Output(77)]),
            now,
        );
        let mut join = PortJoin::default();
        join.refresh_from(&b, 1, &local, &instances);
        let (d, total) = dirty_flows(&index, &join, 100);
        assert_eq!(total, 1);
        assert_eq!(d[0].rule, "output_to_missing_port");
        assert_eq!(d[0].severity, "broken");
        assert_eq!(d[0].port().map(|p| p.port.as_str()), Some("tapb"));
        assert_eq!(d[0].domain, None);
        assert_eq!(
            d[0].ports[1],
            FlowPort {
                ofport: Some(77),
                via: Some(PortRef::Output),
                ..Default::default()
            }
        );

        // tapa deleted (the instance's libvirt domain is gone too).
        b.get_mut("br-int").unwrap().ports.remove("tapa");
        index.sync_bridges(&b, now);
        join.refresh_from(&b, 2, &[], &[]);
        let (d, total) = dirty_flows(&index, &join, 100);
        assert_eq!(total, 2);
        let leaked = d.iter().find(|f| f.rule == "in_port_missing").unwrap();
        assert_eq!(
            leaked.ports[0],
            FlowPort {
                ofport: Some(5),
                via: Some(PortRef::InPort),
                port: "tapa".into(),
                iface_id: "port-a".into(),
                domain: "instance-a".into(),
                name: "nova-instance-a".into(),
                deleted: true,
            }
        );
        assert_eq!(leaked.domain.as_deref(), Some("instance-a"));
        assert_eq!(leaked.ports[1].port, "tapb");
        assert!(!leaked.ports[1].deleted);
        // Served as JSON: the cookie as a hex string, the ports as objects.
        let j = serde_json::to_value(leaked).unwrap();
        assert_eq!(j["cookie"], "0x0");
        assert_eq!(j["severity"], "broken");
        assert_eq!(j["ports"][0]["via"], "in_port");
        assert_eq!(j["ports"][0]["name"], "nova-instance-a");

        // A new port taking ofport 5 is current again: the memory no longer speaks for it.
        b.get_mut("br-int").unwrap().ports.insert(
            "tapc".into(),
            OvsPort {
                name: "tapc".into(),
                ofport: Some(5),
                ..Default::default()
            },
        );
        join.refresh_from(&b, 3, &[], &[]);
        assert_eq!(join.port("br-int", 5, None).port, "tapc");
        assert!(!join.port("br-int", 5, None).deleted);
        assert!(join.deleted.is_empty() && join.deleted_order.is_empty());
    }

    #[test]
    fn deleted_port_memory_is_bounded_oldest_first() {
        let mut join = PortJoin::default();
        let n = MAX_REMEMBERED_PORTS as u32 + 10;
        let names: Vec<String> = (1..=n).map(|i| format!("tap{i}")).collect();
        let all: Vec<(&str, u32, &str)> = names
            .iter()
            .zip(1..)
            .map(|(s, i)| (s.as_str(), i, ""))
            .collect();
        join.refresh_from(&bridge(&all), 1, &[], &[]);
        join.refresh_from(&bridge(&[]), 2, &[], &[]);
        assert_eq!(join.deleted.len(), MAX_REMEMBERED_PORTS);
        assert_eq!(join.deleted_order.len(), MAX_REMEMBERED_PORTS);
        // Which ones were forgotten depends on map order within one refresh; every remembered
        // one is still named.
        let named = (1..=n)
            .filter(|of| join.port("br-int", *of, None).deleted)
            .count();
        assert_eq!(named, MAX_REMEMBERED_PORTS);
        // Later deletions push out earlier ones.
        join.refresh_from(&bridge(&[("late", n + 1, "")]), 3, &[], &[]);
        join.refresh_from(&bridge(&[]), 4, &[], &[]);
        assert!(join.port("br-int", n + 1, None).deleted);
        assert_eq!(join.deleted.len(), MAX_REMEMBERED_PORTS);
    }

    #[test]
    fn dead_vlan_findings_name_their_port() {
        let cfg = DirtyFlowConfig::default();
        let mut index = DirtyFlowIndex::new(&cfg).unwrap();
        let mut b = bridge(&[("tapa", 5, "port-a")]);
        b.get_mut("br-int")
            .unwrap()
            .ports
            .get_mut("tapa")
            .unwrap()
            .tag = Some(4095);
        index.sync_bridges(&b, Instant::now());
        let (l, i) = vm("tapa", "instance-a");
        let mut join = PortJoin::default();
        join.refresh_from(&b, 1, &[l], &[i]);
        let (d, _) = dirty_flows(&index, &join, 100);
        assert_eq!(d[0].rule, "dead_vlan");
        assert_eq!(d[0].ports[0].port, "tapa");
        assert_eq!(d[0].ports[0].ofport, Some(5));
        assert_eq!(d[0].domain.as_deref(), Some("instance-a"));
        assert_eq!(
            serde_json::to_value(&d[0]).unwrap()["cookie"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn one_shot_dump_ages_flows_by_their_duration() {
        let cfg = DirtyFlowConfig::default();
        let mut index = DirtyFlowIndex::new(&cfg).unwrap();
        let now = Instant::now();
        index.sync_bridges(&bridge(&[("tapa", 5, "")]), now);
        let stats = |prio: u16, cookie: u64, secs: u32| crate::model::openflow::FlowStats {
            entry: flow(
                0,
                prio,
                cookie,
                vec![in_port(5)],
                vec![FlowAction::Reserved("NORMAL")],
            ),
            duration_sec: secs,
            duration_nsec: 490_000_000,
            n_packets: 0,
            n_bytes: 0,
            flags: 0,
        };
        // The agent's generation (0x1, most flows), a dead one older than the grace period
        // (120 s by default) and a young foreign cookie still within it.
        let dump = vec![
            stats(1, 0x1, 4000),
            stats(2, 0x1, 4000),
            stats(3, 0x1, 4000),
            stats(4, 0xdead, 3000),
            stats(5, 0xbeef, 30),
        ];
        load_dump_aged(&mut index, "br-int", dump, now);
        let stale: Vec<u64> = index
            .findings()
            .filter(|f| f.rule == "stale_cookie")
            .filter_map(|f| f.cookie)
            .collect();
        assert_eq!(stale, vec![0xdead]);
        assert_eq!(index.len("br-int"), 5);
    }
}
