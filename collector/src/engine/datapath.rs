//! The datapath pipeline: polls the OVS kernel datapath over generic netlink (datapaths, vports,
//! megaflows) and reads its eBPF probe, joins vports to links and instances, runs the datapath
//! checks, and publishes a [`DatapathReport`] and the probe's counts. It runs on its own thread:
//! every netlink call blocks (bounded by the socket timeout).

use crate::detect::datapath::{HealthConfig, HealthTracker, drop_flow_to_local_mac, parse_mac};
use crate::model::datapath::DatapathReport;
use crate::model::health::SourceRegistry;
use crate::model::inventory::LocalInterface;
use crate::model::state::SharedState;
use crate::sources::ovs_dp::{DatapathClient, OvsDpError, SOURCE, bpf, genl, upcalls};
use serde::Deserialize;

/// The datapath source's name.
const NAME: &str = SOURCE.name;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `[datapath]`: the OVS kernel datapath source (genetlink + eBPF) and its health checks.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct DatapathConfig {
    /// Poll the kernel datapath at all.
    pub(crate) enabled: bool,
    /// Attach the datapath eBPF programs (upcalls per port, actions, OVS drop reasons).
    pub(crate) ebpf: bool,
    /// Seconds between megaflow dumps (drop-flow checks); datapath/vport stats are polled every second.
    pub(crate) flow_dump_interval_seconds: f64,
    /// ovs-vswitchd's megaflow limit (`other_config:flow-limit`), for the `flow_limit` check
    /// while the limit in force cannot be read from ovs-vswitchd (`[ovs_vswitchd]`).
    pub(crate) flow_limit: u64,
    /// Fraction of `flow_limit` that makes the `flow_limit` check unhealthy.
    pub(crate) flow_limit_ratio: f64,
    /// Upcalls per second from one port that make an `upcall_storm`.
    pub(crate) upcall_storm_per_second: f64,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ebpf: true,
            flow_dump_interval_seconds: 5.0,
            flow_limit: 200_000,
            flow_limit_ratio: 0.9,
            upcall_storm_per_second: 1000.0,
        }
    }
}

/// How the poller runs.
#[derive(Clone, Debug)]
pub(crate) struct PollConfig {
    /// Datapath/vport poll interval.
    pub(crate) interval: Duration,
    /// Megaflow dump interval (drop-flow detection); flows are not dumped more often.
    pub(crate) flow_interval: Duration,
    /// Stop dumping a datapath's megaflows when it holds more than this many.
    pub(crate) max_flows_dumped: u64,
    /// Attach the datapath eBPF programs.
    pub(crate) ebpf: bool,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            flow_interval: Duration::from_secs(5),
            max_flows_dumped: 200_000,
            ebpf: true,
        }
    }
}

/// One poll: datapaths, vports, and (when due) megaflow drop counts into `report`.
fn poll_once(
    client: &mut DatapathClient,
    cfg: &PollConfig,
    last_flow_dump: &mut Option<Instant>,
    report: &mut DatapathReport,
    macs: &HashMap<[u8; 6], String>,
    drop_local: &mut HashMap<String, Vec<(String, String, u64)>>,
) -> Result<(), OvsDpError> {
    let dps = client.datapaths_resolving_again()?;
    let due = last_flow_dump.is_none_or(|t| t.elapsed() >= cfg.flow_interval);
    if due {
        *last_flow_dump = Some(Instant::now());
        let mut drops = Vec::new();
        drop_local.clear();
        for dp in &dps {
            if dp.flows > cfg.max_flows_dumped {
                continue;
            }
            let mut n = 0u64;
            let mut local = Vec::new();
            client.megaflows(dp.ifindex, |f| {
                if f.is_drop() && f.packets > 0 {
                    n += 1;
                    local.extend(drop_flow_to_local_mac(&f, macs));
                }
            })?;
            drops.push((dp.name.clone(), n));
            drop_local.insert(dp.name.clone(), local);
        }
        report.drop_flows = drops;
    } else {
        report
            .drop_flows
            .retain(|(n, _)| dps.iter().any(|d| &d.name == n));
        drop_local.retain(|n, _| dps.iter().any(|d| &d.name == n));
    }
    report.datapaths = dps;
    Ok(())
}

/// The openvswitch module's sysfs directory (present while the module is loaded).
const MODULE_SYSFS: &str = "/sys/module/openvswitch";

/// How often sysfs is checked for the module while it is not loaded.
const MODULE_CHECK: Duration = Duration::from_secs(2);

/// How often the OVS families are looked up while the module is not loaded.
const FAMILY_REPROBE: Duration = Duration::from_secs(10);

/// Runs the pipeline as `cfg` says, forever (blocking; run it on its own thread).
pub(crate) fn run(state: SharedState, cfg: &DatapathConfig) {
    let poll = PollConfig {
        flow_interval: Duration::from_secs_f64(cfg.flow_dump_interval_seconds),
        ebpf: cfg.ebpf,
        ..Default::default()
    };
    let health = HealthConfig {
        flow_limit: cfg.flow_limit,
        flow_limit_ratio: cfg.flow_limit_ratio,
        storm_upcalls_per_second: cfg.upcall_storm_per_second,
    };
    run_blocking(state, poll, health);
}

/// Polls the kernel datapath forever (blocking; run it on its own thread), publishing a
/// [`DatapathReport`] and the source's health into `state`.
pub(crate) fn run_blocking(state: SharedState, cfg: PollConfig, mut health_cfg: HealthConfig) {
    let configured_flow_limit = health_cfg.flow_limit;
    let mut client: Option<DatapathClient> = None;
    let mut last_flow_dump = None;
    let mut report = DatapathReport::default();
    let mut probe = ProbeSlot::default();
    let mut drop_local = HashMap::new();
    let mut tracker = HealthTracker::default();
    let mut upcall_series = upcalls::UpcallSeries::default();
    report.flow_limit = health_cfg.flow_limit;
    // When the last poll found no OVS family, the next probe (a dump of every generic netlink
    // family) waits until the module shows up in sysfs or FAMILY_REPROBE has passed (a module
    // built into the kernel has no sysfs directory).
    let mut no_family_since: Option<Instant> = None;
    // A poll blocked past this (every socket call is bounded by genl::IO_TIMEOUT, but a dump
    // makes many) reports the source down as wedged.
    state.sources.stale_after(
        NAME,
        SourceRegistry::bound_for(cfg.interval.max(cfg.flow_interval).max(genl::IO_TIMEOUT)),
    );
    loop {
        if no_family_since.is_some_and(|t| t.elapsed() < FAMILY_REPROBE)
            && !std::path::Path::new(MODULE_SYSFS).exists()
        {
            std::thread::sleep(cfg.interval.max(MODULE_CHECK));
            continue;
        }
        let t0 = Instant::now();
        let collection = state.sources.collect(NAME);
        let c = match &mut client {
            Some(c) => Ok(c),
            None => DatapathClient::open().map(|c| client.insert(c)),
        };
        let inventory = state.inventory.get();
        let local = &inventory.interfaces;
        let macs: HashMap<[u8; 6], String> = local
            .iter()
            .filter_map(|i| Some((parse_mac(&i.mac)?, i.domain.clone())))
            .collect();
        let r = c.and_then(|c| {
            poll_once(
                c,
                &cfg,
                &mut last_flow_dump,
                &mut report,
                &macs,
                &mut drop_local,
            )
        });
        let r_ok = r.is_ok();
        no_family_since = match &r {
            Err(OvsDpError::NoFamily(_)) => Some(t0),
            _ => None,
        };
        match r {
            Ok(()) => {
                collection.ok(format!("{} datapath(s)", report.datapaths.len()));
            }
            Err(e) => {
                if !matches!(e, OvsDpError::NoFamily(_)) {
                    collection.errors(1);
                }
                if matches!(e, OvsDpError::Socket(_)) {
                    client = None;
                }
                collection.down(e.to_string());
                report.datapaths.clear();
                report.drop_flows.clear();
                if let Some(c) = &mut client {
                    c.forget_families();
                }
            }
        }
        if cfg.ebpf {
            // The vport names of a successful poll: eBPF map keys of ports gone are pruned.
            let live = r_ok.then(|| {
                report
                    .datapaths
                    .iter()
                    .flat_map(|d| d.vports.iter().map(|v| (v.name.clone(), d.name.clone())))
                    .collect()
            });
            probe.tick(&state, !report.datapaths.is_empty(), live);
        }
        map_vports(&mut report, local);
        // Per-port upcall totals, each port from one source for its life: the kernel's vport
        // stats when it had them when first seen, else eBPF.
        let kernel: Vec<(String, String, u64)> = report
            .datapaths
            .iter()
            .flat_map(|d| {
                d.vports.iter().filter_map(|v| {
                    v.upcalls
                        .map(|(ok, fail)| (d.name.clone(), v.name.clone(), ok + fail))
                })
            })
            .collect();
        report.upcalls = upcall_series.merge(&kernel, &state.datapath_events.get().upcalls);
        // The flow limit ovs-vswitchd has in force (its dynamic limit, from `upcall/show`) when
        // the ovs_vswitchd pipeline reads it; the configured one otherwise.
        let flow_limit = flow_limit_in_force(&report, &state.vswitchd.get(), configured_flow_limit);
        health_cfg.flow_limit = flow_limit;
        report.flow_limit = flow_limit;
        report.health = tracker.evaluate(
            &health_cfg,
            &report.datapaths,
            &report.upcalls,
            &drop_local,
            Instant::now(),
        );
        state.datapath.set(report.clone());
        std::thread::sleep(cfg.interval.saturating_sub(t0.elapsed()));
    }
}

/// The flow limit the `flow_limit` check compares against: the one ovs-vswitchd has in force for
/// a datapath of `report` (its dynamic limit, from `upcall/show`) while ovs-vswitchd answers,
/// else `configured` (`[datapath] flow_limit`).
fn flow_limit_in_force(
    report: &DatapathReport,
    vswitchd: &crate::model::ovs_vswitchd::VswitchdReport,
    configured: u64,
) -> u64 {
    report
        .datapaths
        .iter()
        .find_map(|d| vswitchd.flow_limit(&d.name))
        .unwrap_or(configured)
}

/// The datapath eBPF probe's lifecycle inside the poller: attached while a datapath exists
/// (retried every few seconds), dropped when none is left so the module can be unloaded.
#[derive(Default)]
struct ProbeSlot {
    probe: Option<bpf::DatapathProbe>,
    last_try: Option<Instant>,
    /// The last load error logged (each distinct one is logged once).
    last_error: Option<String>,
    /// Vport name → datapath name, from the last successful poll (the kernel program keys
    /// upcalls by device only).
    dp_of: HashMap<String, String>,
    stale_keys: upcalls::StaleKeys,
}

impl ProbeSlot {
    /// Attaches, reads or detaches the probe; `live`: the vports (name → datapath) of a
    /// successful poll.
    fn tick(
        &mut self,
        state: &SharedState,
        have_datapath: bool,
        live: Option<HashMap<String, String>>,
    ) {
        use bpf::{DatapathProbe, NO_DATAPATH, SOURCE};
        const BPF: &str = SOURCE.name;
        if !have_datapath {
            if self.probe.take().is_some() {
                tracing::info!("no OVS datapath left: datapath eBPF probe detached");
                self.stale_keys.reset();
            }
            // The detached probe's counts are not served as current.
            state.datapath_events.set(Default::default());
            state.sources.down(BPF, NO_DATAPATH);
            self.last_try = None;
            return;
        }
        if self.probe.is_none()
            && self
                .last_try
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            self.last_try = Some(Instant::now());
            match DatapathProbe::load() {
                Ok(p) => {
                    tracing::info!(drops = p.drops_attached(), "datapath eBPF probe attached");
                    self.last_error = None;
                    self.probe = Some(p);
                }
                Err(e) => {
                    let reason = e.to_string();
                    // Logged once per distinct reason (it is retried every 5 s).
                    if self.last_error.as_deref() != Some(reason.as_str()) {
                        tracing::warn!("datapath eBPF probe not attached: {reason}");
                        self.last_error = Some(reason.clone());
                    }
                    let collection = state.sources.collect(BPF);
                    collection.errors(1);
                    collection.down(reason);
                }
            }
        }
        let fresh = live.is_some();
        if let Some(live) = live {
            self.dp_of = live;
        }
        if let Some(p) = &mut self.probe {
            let collection = state.sources.collect(BPF);
            let ev = p.read(&self.dp_of);
            if fresh {
                let live: std::collections::HashSet<String> = self.dp_of.keys().cloned().collect();
                let gone = self.stale_keys.gone_ports(&p.devices(), &live);
                if !gone.is_empty() {
                    let failed = p.forget_ports(&gone);
                    tracing::debug!(ports = ?gone, failed, "pruned eBPF counts of deleted ports");
                    collection.errors(failed);
                }
            }
            state.datapath_events.set(ev);
            collection.ok(p.describe());
        }
    }
}

/// Fills each vport's ifindex and MAC from rtnetlink and its instance from libvirt's taps.
fn map_vports(report: &mut DatapathReport, local: &[LocalInterface]) {
    if report.datapaths.is_empty() {
        return;
    }
    let links = match crate::sources::rtnl::dump_links() {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!("rtnetlink link dump: {e}");
            Vec::new()
        }
    };
    for v in report
        .datapaths
        .iter_mut()
        .flat_map(|d| d.vports.iter_mut())
    {
        if let Some(l) = links.iter().find(|l| l.name == v.name) {
            v.ifindex = v.ifindex.or(Some(l.ifindex));
            v.mac = l.mac.clone();
        }
        v.domain = local
            .iter()
            .find(|i| i.target_dev == v.name)
            .map(|i| i.domain.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::datapath::Datapath;
    use crate::model::ovs_vswitchd::{UpcallDatapath, VswitchdReport};

    #[test]
    fn flow_limit_from_ovs_vswitchd_while_it_answers() {
        let report = DatapathReport {
            datapaths: vec![Datapath {
                name: "ovs-system".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut v = VswitchdReport {
            connected: true,
            upcall: vec![
                UpcallDatapath {
                    name: "ovs-netdev".into(),
                    flow_limit: 10_000,
                    ..Default::default()
                },
                UpcallDatapath {
                    name: "ovs-system".into(),
                    flow_limit: 46_000,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(flow_limit_in_force(&report, &v, 200_000), 46_000);
        v.connected = false;
        assert_eq!(flow_limit_in_force(&report, &v, 200_000), 200_000);
        v.connected = true;
        v.upcall.remove(1);
        assert_eq!(flow_limit_in_force(&report, &v, 200_000), 200_000);
    }
}
