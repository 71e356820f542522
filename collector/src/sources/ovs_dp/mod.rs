//! The OVS kernel datapath over generic netlink (`ovs_datapath`, `ovs_vport`, `ovs_flow`).
//!
//! Family ids are resolved through `nlctrl` on every poll, so a module reload (new ids) or a
//! datapath deleted and re-created is picked up on the next tick; a missing family means the
//! `openvswitch` module is not loaded, and the source reports itself down with that reason.
//!
//! Framing comes from `netlink-packet-core`/`netlink-packet-generic`; the OVS payloads
//! (`struct ovs_header`, `OVS_DP_ATTR_*`, `OVS_VPORT_ATTR_*`, `OVS_FLOW_ATTR_*`, `OVS_KEY_ATTR_*`,
//! `OVS_ACTION_ATTR_*`) are decoded here ([`uapi`], [`decode`], [`render`]): no crate covers them.

pub mod decode;
pub mod genl;
pub mod render;
pub mod uapi;
pub(crate) mod upcalls;

#[cfg(test)]
mod tests;

use crate::detect::datapath::{HealthConfig, HealthTracker, drop_flow_to_local_mac, parse_mac};
use crate::model::datapath::{Datapath, DatapathReport, Megaflow};
use crate::state::SharedState;
use genl::{GenlSocket, OvsMessage};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Source name in `pinflow_source_*`.
pub const SOURCE: &str = "ovs_datapath";

/// Errors of the datapath source.
#[derive(Debug, thiserror::Error)]
pub enum OvsDpError {
    /// The netlink socket failed.
    #[error("generic netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel answered with an error.
    #[error("kernel error {errno}: {message}")]
    Kernel {
        /// errno (positive).
        errno: i32,
        /// strerror text.
        message: String,
    },
    /// A reply could not be decoded (truncated or malformed).
    #[error("malformed reply: {0}")]
    Decode(String),
    /// The openvswitch module is not loaded (a generic netlink family is missing).
    #[error("generic netlink family {0} not found (openvswitch kernel module not loaded)")]
    NoFamily(&'static str),
}

/// Resolved family ids of the three OVS families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Families {
    /// `ovs_datapath`.
    pub datapath: u16,
    /// `ovs_vport`.
    pub vport: u16,
    /// `ovs_flow`.
    pub flow: u16,
}

/// A client of the kernel datapath.
#[derive(Debug)]
pub struct DatapathClient {
    sock: GenlSocket,
    families: Option<Families>,
}

impl DatapathClient {
    /// Opens the generic netlink socket (does not need the module yet).
    pub fn open() -> Result<Self, OvsDpError> {
        Ok(Self {
            sock: GenlSocket::open()?,
            families: None,
        })
    }

    /// Records every received datagram (for fixtures); see [`DatapathClient::captured`].
    pub fn capture(&mut self) {
        self.sock.capture = Some(Vec::new());
    }

    /// The datagrams recorded since [`DatapathClient::capture`].
    pub fn captured(&mut self) -> Vec<Vec<u8>> {
        self.sock.capture.take().unwrap_or_default()
    }

    /// Resolves the three families (again: ids change when the module is reloaded).
    pub fn resolve(&mut self) -> Result<Families, OvsDpError> {
        let all = self.sock.families()?;
        let id = |name: &'static str| -> Result<u16, OvsDpError> {
            all.iter()
                .find(|(n, _)| n == name)
                .map(|(_, i)| *i)
                .ok_or(OvsDpError::NoFamily(name))
        };
        let f = Families {
            datapath: id(uapi::DATAPATH_FAMILY)?,
            vport: id(uapi::VPORT_FAMILY)?,
            flow: id(uapi::FLOW_FAMILY)?,
        };
        self.families = Some(f);
        Ok(f)
    }

    fn families(&mut self) -> Result<Families, OvsDpError> {
        match self.families {
            Some(f) => Ok(f),
            None => self.resolve(),
        }
    }

    /// Dumps every datapath with its vports.
    pub fn datapaths(&mut self) -> Result<Vec<Datapath>, OvsDpError> {
        let f = self.families()?;
        let mut dps = Vec::new();
        let req = OvsMessage {
            cmd: uapi::CMD_GET,
            version: uapi::DATAPATH_VERSION,
            dp_ifindex: 0,
            attrs: Vec::new(),
        };
        self.sock.request(f.datapath, req, true, |m| {
            dps.push(decode::datapath(&m)?);
            Ok(())
        })?;
        for dp in &mut dps {
            let req = OvsMessage {
                cmd: uapi::CMD_GET,
                version: uapi::VPORT_VERSION,
                dp_ifindex: dp.ifindex,
                attrs: Vec::new(),
            };
            let mut vports = Vec::new();
            match self.sock.request(f.vport, req, true, |m| {
                vports.push(decode::vport(&m)?);
                Ok(())
            }) {
                Ok(()) => {}
                // The datapath went away between the two dumps.
                Err(OvsDpError::Kernel { errno, .. }) if errno == libc::ENODEV => {}
                Err(e) => return Err(e),
            }
            vports.sort_by_key(|v| v.port_no);
            dp.vports = vports;
        }
        Ok(dps)
    }

    /// Dumps the megaflows of the datapath with ifindex `dp_ifindex`, calling `each` per flow.
    pub fn megaflows(
        &mut self,
        dp_ifindex: i32,
        mut each: impl FnMut(Megaflow),
    ) -> Result<(), OvsDpError> {
        let f = self.families()?;
        let req = OvsMessage {
            cmd: uapi::CMD_GET,
            version: uapi::FLOW_VERSION,
            dp_ifindex,
            attrs: Vec::new(),
        };
        self.sock.request(f.flow, req, true, |m| {
            each(decode::megaflow(&m)?);
            Ok(())
        })
    }
}

/// How the poller runs.
#[derive(Clone, Debug)]
pub struct PollConfig {
    /// Datapath/vport poll interval.
    pub interval: Duration,
    /// Megaflow dump interval (drop-flow detection); flows are not dumped more often.
    pub flow_interval: Duration,
    /// Stop dumping a datapath's megaflows when it holds more than this many.
    pub max_flows_dumped: u64,
    /// Attach the datapath eBPF programs.
    pub ebpf: bool,
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
    let dps = match client.datapaths() {
        Ok(d) => d,
        Err(e) => {
            // Stale family ids (module reloaded): resolve again once.
            client.families = None;
            match e {
                OvsDpError::Kernel { .. } | OvsDpError::NoFamily(_) => client.datapaths()?,
                e => return Err(e),
            }
        }
    };
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

/// Polls the kernel datapath forever (blocking; run it on its own thread), publishing a
/// [`DatapathReport`] and the source's health into `state`.
pub fn run_blocking(state: SharedState, cfg: PollConfig, health_cfg: HealthConfig) {
    let mut client: Option<DatapathClient> = None;
    let mut last_flow_dump = None;
    let mut report = DatapathReport::default();
    let mut last_error = String::new();
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
        SOURCE,
        crate::sources::SourceRegistry::bound_for(
            cfg.interval.max(cfg.flow_interval).max(genl::IO_TIMEOUT),
        ),
    );
    loop {
        if no_family_since.is_some_and(|t| t.elapsed() < FAMILY_REPROBE)
            && !std::path::Path::new(MODULE_SYSFS).exists()
        {
            std::thread::sleep(cfg.interval.max(MODULE_CHECK));
            continue;
        }
        let t0 = Instant::now();
        state.sources.begin(SOURCE);
        let c = match &mut client {
            Some(c) => Ok(c),
            None => DatapathClient::open().map(|c| client.insert(c)),
        };
        let local = state.local_macs();
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
                let detail = format!("{} datapath(s)", report.datapaths.len());
                state.sources.up(SOURCE, detail, t0.elapsed());
                last_error.clear();
            }
            Err(e) => {
                let msg = e.to_string();
                if !matches!(e, OvsDpError::NoFamily(_)) {
                    state.sources.errors(SOURCE, 1);
                }
                if matches!(e, OvsDpError::Socket(_)) {
                    client = None;
                }
                if msg != last_error {
                    // The health registry logs the state change at warn level (once).
                    tracing::debug!("ovs datapath: {msg}");
                    last_error = msg.clone();
                }
                state.sources.down(SOURCE, msg);
                report.datapaths.clear();
                report.drop_flows.clear();
                if let Some(c) = &mut client {
                    c.families = None;
                }
            }
        }
        if cfg.ebpf {
            // The vport names of a successful poll: eBPF map keys of ports gone are pruned.
            let live = r_ok.then(|| {
                report
                    .datapaths
                    .iter()
                    .flat_map(|d| d.vports.iter().map(|v| v.name.clone()))
                    .collect()
            });
            probe.tick(&state, !report.datapaths.is_empty(), live.as_ref());
        }
        map_vports(&mut report, &local);
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
        report.upcalls = upcall_series.merge(&kernel, &state.datapath_events().upcalls);
        report.health = tracker.evaluate(
            &health_cfg,
            &report.datapaths,
            &report.upcalls,
            &drop_local,
            Instant::now(),
        );
        state.set_datapath(report.clone());
        std::thread::sleep(cfg.interval.saturating_sub(t0.elapsed()));
    }
}

/// The datapath eBPF probe's lifecycle inside the poller: attached while a datapath exists
/// (retried every few seconds), dropped when none is left so the module can be unloaded.
#[derive(Default)]
struct ProbeSlot {
    probe: Option<crate::sources::ovs_dp_bpf::DatapathProbe>,
    last_try: Option<Instant>,
    last_error: String,
    stale_keys: upcalls::StaleKeys,
}

impl ProbeSlot {
    /// Attaches, reads or detaches the probe; `live`: the vport names of a successful poll.
    fn tick(
        &mut self,
        state: &SharedState,
        have_datapath: bool,
        live: Option<&std::collections::HashSet<String>>,
    ) {
        use crate::sources::ovs_dp_bpf::{DatapathProbe, SOURCE as BPF};
        if !have_datapath {
            if self.probe.take().is_some() {
                tracing::info!("no OVS datapath left: datapath eBPF probe detached");
                self.stale_keys.reset();
            }
            // The detached probe's counts are not served as current.
            state.set_datapath_events(Default::default());
            state.sources.down(
                BPF,
                "no OVS kernel datapath (openvswitch module absent or no datapath)",
            );
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
                    self.probe = Some(p);
                    self.last_error.clear();
                }
                Err(e) => {
                    let msg = e.to_string();
                    if msg != self.last_error {
                        // The health registry logs the state change at warn level (once).
                        tracing::debug!("datapath eBPF probe: {msg}");
                        self.last_error = msg.clone();
                    }
                    state.sources.errors(BPF, 1);
                    state.sources.down(BPF, msg);
                }
            }
        }
        if let Some(p) = &mut self.probe {
            let t0 = Instant::now();
            let ev = p.read();
            if let Some(live) = live {
                let in_map: std::collections::HashSet<String> = ev
                    .upcalls
                    .iter()
                    .map(|(_, dev, _)| dev.clone())
                    .chain(ev.drops.iter().map(|(dev, _, _)| dev.clone()))
                    .collect();
                let gone = self.stale_keys.gone_ports(&in_map, live);
                if !gone.is_empty() {
                    let failed = p.forget_ports(&gone);
                    tracing::debug!(ports = ?gone, failed, "pruned eBPF counts of deleted ports");
                    if failed > 0 {
                        state.sources.errors(BPF, failed);
                    }
                }
            }
            let detail = if p.drops_attached() {
                "upcalls, actions and OVS drop reasons"
            } else {
                "upcalls and actions (no OVS drop reasons on this kernel)"
            };
            state.set_datapath_events(ev);
            state.sources.up(BPF, detail, t0.elapsed());
        }
    }
}

/// Fills each vport's ifindex and MAC from rtnetlink and its instance from libvirt's taps.
fn map_vports(report: &mut DatapathReport, local: &[crate::state::LocalInterface]) {
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
