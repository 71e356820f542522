//! The pinning pipeline: libvirt inventory + procfs/cgroupfs + eBPF placement → detector → shared state.
//!
//! Runs as one task. A pass happens on every libvirt state-dir change (inotify) and, while there
//! are domains, on a short tick (`pinning.interval_seconds`, default 1 s) for changes libvirt never
//! hears of (affinity, cgroups). Each pass only reads the threads of running domains; the scrape
//! just encodes the last report.

use crate::config::PinningConfig;
use crate::cpuset::CpuSet;
use crate::detect::pinning::{self, DomainObservation, PlacementSample};
use crate::engine::findings_log::FindingsLog;
use crate::model::Domain;
use crate::sources::libvirt::{self, LibvirtInventory};
use crate::sources::procfs::{HostFs, ProcError};
use crate::sources::sched_bpf::SchedProbe;
use crate::state::{BpfProgramCost, SharedState};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Source names as they appear in `pinflow_source_*{source=…}`.
pub mod source {
    /// libvirt's live state directory.
    pub const LIBVIRT: &str = "libvirt";
    /// procfs + cgroupfs thread state.
    pub const PROCFS: &str = "procfs";
    /// The eBPF sched_switch placement probe.
    pub const SCHED_BPF: &str = "sched_bpf";
    /// OVSDB (bridges, ports).
    pub const OVSDB: &str = crate::sources::ovsdb::SOURCE;
    /// OpenFlow sessions to every bridge.
    pub const OPENFLOW: &str = "openflow";
}

/// Where the pinning sources read from.
#[derive(Clone, Debug)]
pub struct PinningInputs {
    /// libvirt's live state dir (`/run/libvirt/qemu`).
    pub libvirt_state_dir: PathBuf,
    /// procfs root (`/proc`).
    pub proc_root: PathBuf,
    /// sysfs root (`/sys`).
    pub sys_root: PathBuf,
}

/// Off-pin history of one watched thread, for the placement window.
#[derive(Debug)]
struct WatchedThread {
    pin: CpuSet,
    samples: VecDeque<(Instant, u64)>,
}

/// The pinning pipeline's state between passes.
pub struct PinningEngine {
    cfg: PinningConfig,
    inventory: LibvirtInventory,
    hostfs: HostFs,
    probe: Option<SchedProbe>,
    watched: HashMap<u32, WatchedThread>,
    last_errors: BTreeMap<String, String>,
    state: SharedState,
    findings: FindingsLog,
}

impl PinningEngine {
    /// Creates the engine; `probe` is the loaded eBPF placement probe, if any.
    pub fn new(
        cfg: PinningConfig,
        inputs: &PinningInputs,
        probe: Option<SchedProbe>,
        state: SharedState,
    ) -> Self {
        Self {
            cfg,
            inventory: LibvirtInventory::new(inputs.libvirt_state_dir.clone()),
            hostfs: HostFs::new(inputs.proc_root.clone(), inputs.sys_root.clone()),
            probe,
            watched: HashMap::new(),
            last_errors: BTreeMap::new(),
            state,
            findings: FindingsLog::new("pinning drift"),
        }
    }

    /// Runs passes forever: on libvirt changes, and on every tick while there are domains.
    pub async fn run(mut self, libvirt_state_dir: PathBuf) {
        let mut changes = libvirt::watch_state_dir(libvirt_state_dir);
        let mut tick = tokio::time::interval(self.cfg.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // Without domains there are no threads to poll: libvirt's own changes (a
                    // domain starting, the directory appearing) arrive through the watch.
                    if self.nothing_to_poll() {
                        continue;
                    }
                }
                Some(()) = changes.recv() => {
                    // Coalesce a burst of events (libvirt writes several files per start).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    while changes.try_recv().is_ok() {}
                }
            }
            self.pass();
        }
    }

    /// The `last_errors` key of the state directory's own error.
    const DIR_ERROR_KEY: &'static str = "libvirt-dir";

    /// Whether a tick would find nothing new: no domain known, and the state directory readable.
    fn nothing_to_poll(&self) -> bool {
        self.inventory.domains().next().is_none()
            && !self.last_errors.contains_key(Self::DIR_ERROR_KEY)
    }

    /// One full pass: refresh inventory, observe threads, sync the eBPF watch set, detect, publish.
    pub fn pass(&mut self) {
        let t0 = Instant::now();
        let sources = self.state.sources.clone();
        let refresh = self.inventory.refresh();
        if let Some(e) = &refresh.dir_error {
            // Logged by the health registry when the source goes down (not once more here).
            sources.down(source::LIBVIRT, e.clone());
            self.last_errors
                .insert(Self::DIR_ERROR_KEY.to_string(), e.clone());
        } else {
            self.last_errors.remove(Self::DIR_ERROR_KEY);
            sources.up(source::LIBVIRT, "", t0.elapsed());
        }
        if !refresh.errors.is_empty() {
            sources.errors(source::LIBVIRT, refresh.errors.len() as u64);
            for (file, e) in &refresh.errors {
                let msg = e.to_string();
                self.log_once(file, &msg);
            }
        }

        let t1 = Instant::now();
        let domains: Vec<Domain> = self.inventory.domains().cloned().collect();
        let mut observations = Vec::with_capacity(domains.len());
        let mut proc_errors = 0u64;
        self.state.set_local_macs(
            domains
                .iter()
                .flat_map(|d| {
                    d.interfaces.iter().map(|i| crate::state::LocalInterface {
                        mac: i.mac.clone(),
                        target_dev: i.target_dev.clone(),
                        domain: d.name.clone(),
                    })
                })
                .collect(),
        );
        for d in domains {
            let (obs, errs) = observe(&self.hostfs, d);
            proc_errors += errs;
            observations.push(obs);
        }
        if proc_errors > 0 {
            sources.errors(source::PROCFS, proc_errors);
        }
        sources.up(source::PROCFS, "", t1.elapsed());

        let t2 = Instant::now();
        self.sync_probe(&mut observations);
        if let Some(p) = &self.probe {
            sources.up(source::SCHED_BPF, p.mode().to_string(), t2.elapsed());
            self.state.set_bpf_costs(if !p.stats_enabled() {
                Vec::new()
            } else {
                p.program_stats()
                    .into_iter()
                    .map(|s| BpfProgramCost {
                        program: s.name,
                        run_time_ns: s.run_time_ns,
                        run_count: s.run_count,
                    })
                    .collect()
            });
        }
        let report = pinning::evaluate(&observations);
        let drifts = |r: &pinning::PinningReport| -> Vec<(String, pinning::Drift)> {
            r.domains
                .iter()
                .flat_map(|d| d.drifts.iter().map(|x| (d.domain.clone(), x.clone())))
                .collect()
        };
        self.findings.changes(
            &drifts(&self.state.pinning()),
            &drifts(&report),
            |(domain, x)| (domain.clone(), x.vcpu.clone(), x.check.to_string()),
            |(domain, x)| {
                format!(
                    "domain={domain} vcpu={} check={} expected={} actual=\"{}\"",
                    x.vcpu, x.check, x.expected, x.actual
                )
            },
        );
        self.state.set_pinning(report);
    }

    /// Watches exactly the pinned vCPU threads, and fills each observation's placement samples.
    fn sync_probe(&mut self, observations: &mut [DomainObservation]) {
        let Some(probe) = self.probe.as_mut() else {
            return;
        };
        let now = Instant::now();
        let window = self.cfg.placement_window();
        let mut desired: HashMap<u32, CpuSet> = HashMap::new();
        for o in observations.iter() {
            for v in o.domain.iter().flat_map(|d| &d.vcpus) {
                if let (Some(tid), Some(pin)) = (v.tid, &v.pin) {
                    desired.insert(tid, pin.clone());
                }
            }
        }
        let mut errors = 0u64;
        self.watched.retain(|tid, _| {
            if desired.contains_key(tid) {
                return true;
            }
            errors += u64::from(probe.unwatch(*tid).is_err());
            false
        });
        for (tid, pin) in &desired {
            let fresh = self.watched.get(tid).is_none_or(|w| w.pin != *pin);
            if fresh {
                match probe.watch(*tid, pin) {
                    Ok(()) => {
                        let samples = self
                            .watched
                            .remove(tid)
                            .map(|w| w.samples)
                            .unwrap_or_else(|| VecDeque::from([(now, 0)]));
                        self.watched.insert(
                            *tid,
                            WatchedThread {
                                pin: pin.clone(),
                                samples,
                            },
                        );
                    }
                    Err(e) => {
                        errors += 1;
                        tracing::warn!(tid, error = %e, "cannot watch vCPU thread");
                    }
                }
            }
        }
        for o in observations.iter_mut() {
            let tids: Vec<u32> = o
                .domain
                .iter()
                .flat_map(|d| &d.vcpus)
                .filter_map(|v| v.tid)
                .collect();
            for tid in tids {
                let Some(w) = self.watched.get_mut(&tid) else {
                    continue;
                };
                match probe.placement(tid) {
                    Ok(Some(p)) => {
                        w.samples.push_back((now, p.off_pin_ns));
                        while w.samples.len() > 1
                            && w.samples
                                .front()
                                .is_some_and(|(t, _)| now.duration_since(*t) > window)
                        {
                            w.samples.pop_front();
                        }
                        let oldest = w.samples.front().map_or(0, |(_, v)| *v);
                        o.placement.insert(
                            tid,
                            PlacementSample {
                                offpin_ns_total: p.off_pin_ns,
                                offpin_ns_window: p.off_pin_ns.saturating_sub(oldest),
                                migrations_total: p.migrations,
                                last_cpu: p.last_cpu,
                            },
                        );
                    }
                    Ok(None) => {
                        o.placement.insert(tid, PlacementSample::default());
                    }
                    Err(_) => errors += 1,
                }
            }
        }
        if errors > 0 {
            self.state.sources.errors(source::SCHED_BPF, errors);
        }
    }

    /// Logs an error for `key` only when it differs from the last one logged (no log storms per tick).
    fn log_once(&mut self, key: &str, msg: &str) {
        if self.last_errors.get(key).map(String::as_str) != Some(msg) {
            tracing::warn!(source = key, "{msg}");
            self.last_errors.insert(key.to_string(), msg.to_string());
        }
    }
}

/// Reads every thread of the domain's QEMU process. Returns the observation and the number of
/// unexpected read errors (threads that vanished mid-read are normal and not counted).
pub fn observe(hostfs: &HostFs, domain: Domain) -> (DomainObservation, u64) {
    let mut obs = DomainObservation::default();
    let mut errors = 0;
    if let Some(pid) = domain.pid {
        match hostfs.threads(pid) {
            Ok(tids) => {
                for tid in tids {
                    match hostfs.thread(pid, tid) {
                        Ok(t) => {
                            if tid == pid {
                                obs.main_cgroup = t.cgroup.clone();
                            }
                            obs.threads.insert(tid, t);
                        }
                        Err(ProcError::Gone { .. }) => {}
                        Err(e) => {
                            errors += 1;
                            tracing::debug!(domain = %domain.name, tid, error = %e, "thread read failed");
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                errors += 1;
                tracing::debug!(domain = %domain.name, pid, error = %e, "cannot list threads");
            }
        }
    }
    obs.domain = Some(domain);
    (obs, errors)
}

/// One pass without eBPF, for one-shot commands (`pinflow pinning`): the report, the libvirt
/// refresh (with its errors) and the number of unexpected procfs/cgroupfs read errors.
pub fn snapshot_once(inputs: &PinningInputs) -> (pinning::PinningReport, libvirt::Refresh, u64) {
    let mut inv = LibvirtInventory::new(inputs.libvirt_state_dir.clone());
    let refresh = inv.refresh();
    let hostfs = HostFs::new(inputs.proc_root.clone(), inputs.sys_root.clone());
    let mut proc_errors = 0;
    let obs: Vec<_> = inv
        .domains()
        .cloned()
        .map(|d| {
            let (o, errors) = observe(&hostfs, d);
            proc_errors += errors;
            o
        })
        .collect();
    (pinning::evaluate(&obs), refresh, proc_errors)
}
