//! The pinning pipeline: libvirt inventory + procfs/cgroupfs + eBPF placement → detector → shared state.
//!
//! Runs on a thread of its own (procfs and BPF map reads block; the async thread never waits for
//! them). It runs in one of two modes ([`PinningMode`]):
//! - **events** (default, when the event probe loads): the kernel says what changed. eBPF
//!   programs on `sched_setaffinity` and `cgroup_attach_task` report watched threads
//!   (`sources::sched_bpf::events`), inotify reports writes to their cpuset cgroups
//!   (`sources::procfs::cgroup_watch`); each wakes a *targeted* pass that re-reads only the threads
//!   (or domains) involved and re-evaluates the cached observations. Every tick
//!   (`interval_seconds`) only reads the sched probe's maps (placement). A libvirt change re-reads
//!   the domains whose status changed (new, restarted, re-pinned). A *full* pass reads every
//!   thread every `reconcile_seconds` (the safety net: anything an event could miss, schedstat
//!   wait times, new threads) and when events may have been lost.
//! - **polling** (`events = false`, or the event programs cannot load): a full pass every tick,
//!   while there are domains (or no inotify watch on the libvirt state dir).
//!
//! Per-domain counters are kept monotonic across thread exits here ([`MonotonicCounters`]).

use serde::Deserialize;

use crate::detect::pinning::{self, placement};
use crate::engine::findings_log::FindingsLog;
use crate::engine::supervise::Supervisor;
use crate::model::Domain;
use crate::model::cpuset::CpuSet;
use crate::model::health::BpfProgramCost;
use crate::model::inventory::HostInventory;
use crate::model::pinning::{
    DomainObservation, HostNode, NumaObservation, PinningMode, PinningPasses, PinningReport,
    PlacementSample,
};
use crate::model::state::SharedState;
use crate::sources::libvirt::{self, LibvirtInventory};
use crate::sources::procfs::cgroup_watch::{self, CgroupWatch, CgroupWatches};
use crate::sources::procfs::kept_status::KeptStatus;
use crate::sources::procfs::{HostFs, ProcError};
use crate::sources::sched_bpf::SchedProbe;
use crate::sources::sched_bpf::events::{self, PinEventReader, PinEvents};
use crate::sources::{HostPaths, procfs, sched_bpf};
use inotify::WatchDescriptor;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `[pinning]`: how often and how strictly pinning is checked.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PinningConfig {
    /// Seconds between ticks: a full procfs/cgroupfs pass in polling mode, a read of the eBPF
    /// placement maps in events mode (libvirt changes and kernel events trigger a pass at once).
    pub(crate) interval_seconds: f64,
    /// Seconds of off-pin CPU time history that make a `placement` drift (drift while > 0 in the window).
    pub(crate) placement_window_seconds: f64,
    /// Load the eBPF `sched_switch` probe for the `placement` check and the off-pin/migration counters.
    pub(crate) ebpf: bool,
    /// Load the eBPF affinity/cgroup event programs and watch the cpuset cgroups with inotify, so
    /// that procfs is re-read only for the threads that changed (events mode). Off, or when they
    /// cannot load: a full procfs pass every `interval_seconds` (polling mode).
    pub(crate) events: bool,
    /// In events mode, also attach eBPF to the `sched_setaffinity` syscall tracepoints, so that an
    /// affinity change is seen in ~50 ms. Off by default: while any syscall tracepoint is
    /// attached, every syscall on the host takes the kernel's slow path (+25–45 ns measured,
    /// vCPU exits included). Off, each events-mode tick checks the watched threads' affinity with
    /// `sched_getaffinity(2)` (one syscall per thread per `interval_seconds`).
    pub(crate) affinity_events: bool,
    /// In events mode, seconds between full procfs passes (the safety net; also when the
    /// `pinflow_vcpu_wait_seconds_total` counters move).
    pub(crate) reconcile_seconds: f64,
    /// Share of a dedicated pCPU (0..=1) other tasks may take within the placement window
    /// before the owner vCPU drifts (`check="stolen"`, eBPF); 1 switches the check off.
    pub(crate) stolen_share: f64,
    /// Turn on the kernel's BPF run-time statistics (`pinflow_bpf_run_seconds_total`/`_runs_total`).
    /// Off by default: while on, the kernel times every BPF program on the host (~45 ns per run here).
    pub(crate) bpf_stats: bool,
    /// The `numa` check's tolerance: bytes of a domain's memory on host nodes outside its
    /// `<numatune>` nodeset before it drifts (page cache and QEMU's own allocations made before
    /// the binding land anywhere).
    pub(crate) numa_tolerance_bytes: u64,
}

/// Default `[pinning] numa_tolerance_bytes`: 64 MiB.
pub(crate) const DEFAULT_NUMA_TOLERANCE_BYTES: u64 = 64 << 20;

impl Default for PinningConfig {
    fn default() -> Self {
        Self {
            interval_seconds: 1.0,
            placement_window_seconds: 5.0,
            ebpf: true,
            events: true,
            affinity_events: false,
            reconcile_seconds: 60.0,
            stolen_share: 0.05,
            bpf_stats: false,
            numa_tolerance_bytes: DEFAULT_NUMA_TOLERANCE_BYTES,
        }
    }
}

impl PinningConfig {
    /// The pass interval as a `Duration` (validated by `Config::validate`).
    pub(crate) fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval_seconds)
    }

    /// The placement window as a `Duration`.
    pub(crate) fn placement_window(&self) -> Duration {
        Duration::from_secs_f64(self.placement_window_seconds)
    }

    /// The full-pass interval of events mode as a `Duration`.
    pub(crate) fn reconcile(&self) -> Duration {
        Duration::from_secs_f64(self.reconcile_seconds)
    }
}

/// Loads the sched probe when the config asks for it. A probe that cannot load is reported down
/// (with the reason) and the placement check stays off; switched off in the config, the source
/// reports nothing (reporting it down would raise `PinflowSourceDown` forever on purpose).
pub(crate) fn load_probe(cfg: &PinningConfig, state: &SharedState) -> Option<SchedProbe> {
    if !cfg.ebpf {
        return None;
    }
    match SchedProbe::load() {
        Ok(mut p) => {
            tracing::info!(mode = %p.mode(), "eBPF sched_switch probe attached");
            if let Err(e) = p.set_bpf_stats(cfg.bpf_stats) {
                tracing::warn!("cannot switch kernel BPF stats: {e}");
            }
            Some(p)
        }
        Err(e) => {
            tracing::warn!("eBPF placement probe unavailable, placement check off: {e}");
            state.sources.down(sched_bpf::SOURCE.name, e.to_string());
            None
        }
    }
}

/// What events mode needs: the event probe and the cgroup watch, each with its reading half.
pub(crate) struct EventSources {
    probe: PinEvents,
    reader: PinEventReader,
    cgroups: CgroupWatches,
    cgroup_reader: CgroupWatch,
}

/// Loads the event programs and starts the cgroup watch when the config asks for events mode
/// (before capabilities are dropped). `Err` says why the pipeline polls instead (logged here).
pub(crate) fn load_events(cfg: &PinningConfig) -> Result<EventSources, String> {
    if !cfg.events {
        return Err("events = false in [pinning]".to_string());
    }
    let loaded = PinEvents::load(cfg.affinity_events)
        .map_err(|e| e.to_string())
        .and_then(|(probe, reader)| {
            let (cgroup_reader, cgroups) =
                cgroup_watch::new().map_err(|e| format!("inotify for cgroups: {e}"))?;
            Ok(EventSources {
                probe,
                reader,
                cgroups,
                cgroup_reader,
            })
        });
    match &loaded {
        Ok(_) => {
            tracing::info!(
                affinity_events = cfg.affinity_events,
                "pinning in events mode (eBPF cgroup events, cgroup inotify; affinity by eBPF \
                 syscall events when affinity_events, else checked every interval)"
            )
        }
        Err(e) => tracing::warn!("pinning event programs unavailable, polling procfs instead: {e}"),
    }
    loaded
}

/// What wakes the pinning thread.
#[derive(Debug)]
enum Wake {
    /// The libvirt state directory changed.
    Libvirt,
    /// The kernel reported these threads' affinity or cgroup changed.
    Threads(Vec<u32>),
    /// cpuset files were written in these watched cgroup directories.
    Cgroups(Vec<WatchDescriptor>),
    /// Events may have been lost (queue overflow, a read error): reconcile everything.
    Lost(String),
}

/// Off-pin history of one watched thread, for the placement window.
#[derive(Debug)]
struct WatchedThread {
    pin: CpuSet,
    samples: VecDeque<(Instant, u64)>,
}

/// Events mode's state in the engine: the watch sets it keeps in sync with the domains.
struct EventState {
    /// The eBPF event programs (`None` only in unit tests, which drive wake-ups by hand).
    probe: Option<PinEvents>,
    cgroups: CgroupWatches,
    /// Events the kernel could not queue, as last read.
    lost: u64,
    /// The domains living in each cgroup directory watched (usually one), by name. Paths and
    /// names are shared with `dirs_of` and the watches: one copy each however many threads
    /// and maps refer to them (2 000 cgroups at 200 domains × 8 vCPUs).
    dir_domains: HashMap<Arc<Path>, Vec<Arc<str>>>,
    /// cpuset directories of a cgroup path (as `/proc/…/cgroup` names it), resolved once.
    dirs_of: HashMap<String, Vec<Arc<Path>>>,
}

/// Records that domain `name` lives in cgroup directory `dir` (once per directory and domain).
fn add_dir_domain(
    dir_domains: &mut HashMap<Arc<Path>, Vec<Arc<str>>>,
    dir: impl AsRef<Path> + Into<Arc<Path>>,
    name: &Arc<str>,
) {
    if let Some(names) = dir_domains.get_mut(dir.as_ref()) {
        if !names.contains(name) {
            names.push(name.clone());
        }
    } else {
        dir_domains.insert(dir.into(), vec![name.clone()]);
    }
}

/// The pinning pipeline's state between passes.
pub(crate) struct PinningEngine {
    cfg: PinningConfig,
    inventory: LibvirtInventory,
    hostfs: HostFs,
    /// `status` files of the threads checked every tick, kept open where the affinity is read
    /// from them (no `sched_getaffinity(2)`: a procfs root of another pid namespace).
    kept_status: KeptStatus,
    probe: Option<SchedProbe>,
    events: Option<EventState>,
    /// The event sources' reading halves, until [`Self::start`] hands them to their thread.
    readers: Option<(PinEventReader, CgroupWatch)>,
    watched: HashMap<u32, WatchedThread>,
    last_errors: BTreeMap<String, String>,
    state: SharedState,
    findings: FindingsLog,
    libvirt_state_dir: PathBuf,
    watching: Arc<AtomicBool>,
    counters: MonotonicCounters,
    /// The last observation of every domain (events mode re-reads parts of it).
    cache: Vec<DomainObservation>,
    /// Index in `cache` of the domain owning each thread read.
    tid_domain: HashMap<u32, usize>,
    /// Per cached observation, the threads whose affinity can change a check's outcome
    /// ([`pinning::affinity_deciders`]): the only ones a tick re-reads the affinity of.
    affinity_deciders: Vec<Vec<u32>>,
    /// Per cached observation, its threads with a configured scheduler ([`sched_tids`]): a tick
    /// re-reads their policy and priority.
    sched_tids: Vec<BTreeSet<u32>>,
    passes: PinningPasses,
    last_full: Instant,
    stolen: super::stolen::StolenTracker,
    /// When the report was last published (a detection, or a counter refresh).
    last_publish: Instant,
    /// Bumped whenever the cached observations' domains or threads change ([`Self::reindex`]).
    generation: u64,
    /// The host's NUMA nodes, and when they and the domains' NUMA placement were last read
    /// (at full passes, at most every `reconcile_seconds`).
    numa_nodes: Vec<HostNode>,
    last_numa: Option<Instant>,
    /// The generation the sched probe's watched set was last synced with.
    watch_generation: Option<u64>,
    /// The generation the published findings were last evaluated in full from (a tick then
    /// re-evaluates only the domains it changed).
    evaluated: Option<u64>,
    /// When every watched thread's placement counters were last read, and what was seen.
    placement_reads: PlacementReads,
}

/// The last read of every watched thread's placement counters.
#[derive(Debug, Default)]
struct PlacementReads {
    at: Option<Instant>,
    /// The kernel's off-pin slice counter then.
    offpin_slices: Option<u64>,
    /// Whether any thread had off-pin time in its window then.
    drifting: bool,
}

impl PinningEngine {
    /// Creates the engine; `probe` is the loaded eBPF placement probe, if any, and `events` the
    /// event sources (or why there are none: the pipeline then polls).
    pub(crate) fn new(
        cfg: PinningConfig,
        inputs: &HostPaths,
        probe: Option<SchedProbe>,
        events: Result<EventSources, String>,
        state: SharedState,
    ) -> Self {
        let (events, readers, passes) = match events {
            Ok(e) => (
                Some(EventState {
                    probe: Some(e.probe),
                    cgroups: e.cgroups,
                    lost: 0,
                    dir_domains: HashMap::new(),
                    dirs_of: HashMap::new(),
                }),
                Some((e.reader, e.cgroup_reader)),
                PinningPasses {
                    mode: PinningMode::Events,
                    ..Default::default()
                },
            ),
            Err(reason) => (
                None,
                None,
                PinningPasses {
                    mode: PinningMode::Polling,
                    fallback_reason: cfg.events.then_some(reason),
                    ..Default::default()
                },
            ),
        };
        Self {
            cfg,
            inventory: LibvirtInventory::new(inputs.libvirt_state_dir.clone()),
            hostfs: HostFs::new(inputs.proc_root.clone(), inputs.sys_root.clone()),
            kept_status: KeptStatus::new(),
            probe,
            events,
            readers,
            watched: HashMap::new(),
            last_errors: BTreeMap::new(),
            state,
            findings: FindingsLog::new("pinning drift"),
            libvirt_state_dir: inputs.libvirt_state_dir.clone(),
            watching: Arc::new(AtomicBool::new(false)),
            counters: MonotonicCounters::default(),
            cache: Vec::new(),
            tid_domain: HashMap::new(),
            affinity_deciders: Vec::new(),
            sched_tids: Vec::new(),
            passes,
            last_full: Instant::now(),
            stolen: Default::default(),
            last_publish: Instant::now(),
            generation: 0,
            numa_nodes: Vec::new(),
            last_numa: None,
            watch_generation: None,
            evaluated: None,
            placement_reads: PlacementReads::default(),
        }
    }

    /// Starts the pipeline: the libvirt state-dir watch as a task on the (async) runtime, the
    /// event reader (events mode) on a thread of its own, and every pass — libvirt files,
    /// procfs, BPF map syscalls, all of which can block — on a supervised thread of its own, so
    /// that a slow procfs never stalls scrapes or the OpenFlow and OVSDB sessions. Must be
    /// called from within the Tokio runtime. The receiver resolves when the first pass is
    /// published.
    pub(crate) fn start(
        mut self,
        supervisor: &Supervisor,
    ) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
        let dir = self.libvirt_state_dir.clone();
        let mut changes =
            libvirt::watch_state_dir_reporting(dir, libvirt::WATCH_RETRY, self.watching.clone());
        let (tx, rx) = mpsc::channel::<Wake>();
        let libvirt_tx = tx.clone();
        supervisor.task("libvirt-watch", async move {
            while changes.recv().await.is_some() {
                // Err: the pinning thread is gone and the supervisor says so.
                if libvirt_tx.send(Wake::Libvirt).is_err() {
                    return;
                }
            }
        });
        if let Some((reader, cgroups)) = self.readers.take() {
            supervisor.thread("pinning-events", move || read_events(reader, cgroups, &tx))?;
        }
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        supervisor.thread("pinning", move || {
            super::yield_to_scrapes();
            self.run_blocking(&rx, first_tx)
        })?;
        Ok(first_rx)
    }

    /// Runs passes forever (blocking), as the mode says (see the module docs).
    fn run_blocking(
        mut self,
        wakes: &mpsc::Receiver<Wake>,
        first_pass: tokio::sync::oneshot::Sender<()>,
    ) {
        let bound = crate::model::health::SourceRegistry::bound_for(self.cfg.interval());
        for s in [libvirt::SOURCE.name, procfs::SOURCE.name] {
            self.state.sources.stale_after(s, bound);
        }
        if self.probe.is_some() {
            self.state
                .sources
                .stale_after(sched_bpf::SOURCE.name, bound);
        }
        self.full_pass();
        // Nobody waiting any more is fine: `serve` stops waiting after a while.
        let _ = first_pass.send(());
        loop {
            let mut todo = Todo::default();
            match wakes.recv_timeout(self.cfg.interval()) {
                Ok(w) => {
                    todo.add(w);
                    // Coalesce a burst (libvirt writes several files per start; a process
                    // move reports every thread).
                    std::thread::sleep(Duration::from_millis(20));
                    while let Ok(w) = wakes.try_recv() {
                        todo.add(w);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => todo.tick = true,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Every waker ended (the supervisor reports it): rescan periodically.
                    std::thread::sleep(self.cfg.interval());
                    todo.full = true;
                }
            }
            self.step(todo);
        }
    }

    /// Runs what one wake-up asks for.
    fn step(&mut self, mut todo: Todo) {
        if let Some(ev) = &mut self.events
            && let Some(probe) = &ev.probe
        {
            match probe.lost() {
                Ok(n) if n != ev.lost => {
                    ev.lost = n;
                    tracing::debug!(lost = n, "pinning events lost; reconciling");
                    todo.full = true;
                }
                Ok(_) => {}
                Err(e) => {
                    self.state.sources.errors(procfs::SOURCE.name, 1);
                    tracing::debug!(error = %e, "cannot read the lost-event counter");
                }
            }
        }
        let events_mode = self.events.is_some()
            && self.watching.load(Ordering::Relaxed)
            && !self.last_errors.contains_key(Self::DIR_ERROR_KEY);
        if todo.tick {
            if !events_mode {
                // Polling: without domains there are no threads to poll; libvirt's own changes
                // (a domain starting, the directory appearing) arrive through the watch.
                if self.nothing_to_poll() {
                    self.all_alive();
                    return;
                }
                todo.full = true;
            } else if self.last_full.elapsed() >= self.cfg.reconcile() {
                todo.full = true;
            }
        }
        if todo.full || (todo.libvirt && !events_mode) {
            self.full_pass();
        } else if todo.libvirt || !todo.threads.is_empty() || !todo.cgroups.is_empty() {
            if todo.libvirt {
                self.libvirt_pass(false);
            }
            if !todo.threads.is_empty() || !todo.cgroups.is_empty() {
                self.targeted_pass(&todo.threads, &todo.cgroups);
            }
        } else if let Some(moved) = self.affinity_moved().filter(|m| !m.is_empty()) {
            self.targeted_pass(&moved, &[]);
        } else {
            // An events-mode tick: the data of libvirt and procfs is current (events say when
            // it is not); only the placement maps are read.
            self.all_alive();
            if self.probe.is_some() && !self.watched.is_empty() {
                let sources = self.state.sources.clone();
                let collection = sources.collect(sched_bpf::SOURCE.name);
                self.publish(true);
                if let Some(p) = &self.probe {
                    collection.ok(p.mode().to_string());
                }
            }
        }
    }

    /// The threads a tick finds changed, each re-read by a targeted pass: without the syscall
    /// affinity events (`affinity_events = false`), those whose affinity can change a check
    /// ([`pinning::affinity_deciders`]) and differs from the last pass's, by one
    /// `sched_getaffinity(2)` each (a kept `status` file without it); and, always, those with
    /// a `<vcpusched>` or `<iothreadsched>` whose policy or priority differs (one `stat` read
    /// each: no kernel event tells of `sched_setscheduler`). A thread that is gone counts as
    /// moved: the targeted pass finds out. `None` when there is nothing to check.
    fn affinity_moved(&mut self) -> Option<BTreeSet<u32>> {
        let affinity = !self.cfg.affinity_events;
        if !affinity && self.sched_tids.iter().all(BTreeSet::is_empty) {
            return None;
        }
        // A read that hangs shows the source as wedged, as a pass's would.
        let _reading = self.state.sources.collect(procfs::SOURCE.name);
        let mut moved = BTreeSet::new();
        let live = self.hostfs.is_live();
        self.kept_status.begin_round();
        for ((obs, sched), deciders) in self
            .cache
            .iter()
            .zip(&self.sched_tids)
            .zip(&self.affinity_deciders)
        {
            let Some(pid) = obs.domain.as_ref().and_then(|d| d.pid) else {
                continue;
            };
            if affinity {
                for t in deciders.iter().filter_map(|tid| obs.threads.get(tid)) {
                    let differs = if live {
                        self.hostfs.affinity_differs(pid, t.tid, &t.affinity)
                    } else {
                        self.kept_status
                            .differs(&self.hostfs, pid, t.tid, &t.affinity)
                    };
                    if differs {
                        moved.insert(t.tid);
                    }
                }
            }
            for t in sched.iter().filter_map(|tid| obs.threads.get(tid)) {
                if !moved.contains(&t.tid)
                    && self.hostfs.sched(pid, t.tid).ok() != Some((t.policy, t.rt_priority))
                {
                    moved.insert(t.tid);
                }
            }
        }
        self.kept_status.end_round();
        Some(moved)
    }

    /// Says that the sources' data is still current (an idle tick), so that only a wedged
    /// thread goes stale.
    fn all_alive(&self) {
        for s in [
            libvirt::SOURCE.name,
            procfs::SOURCE.name,
            sched_bpf::SOURCE.name,
        ] {
            self.state.sources.alive(s);
        }
    }

    /// The `last_errors` key of the state directory's own error.
    const DIR_ERROR_KEY: &'static str = "libvirt-dir";

    /// Whether a tick would find nothing new: no domain known, the state directory readable and
    /// under an inotify watch (without one, every tick rescans the directory).
    fn nothing_to_poll(&self) -> bool {
        self.inventory.domains().next().is_none()
            && !self.last_errors.contains_key(Self::DIR_ERROR_KEY)
            && self.watching.load(Ordering::Relaxed)
    }

    /// The procfs source's detail: the mode, and why it polls.
    fn procfs_detail(&self) -> String {
        match (&self.events, &self.passes.fallback_reason) {
            (Some(ev), _) => format!(
                "events mode: {} threads and processes watched by eBPF, {} cpuset cgroups by inotify; full pass every {} s; {}",
                ev.probe.as_ref().map_or(0, PinEvents::watched),
                ev.cgroups.len(),
                self.cfg.reconcile_seconds,
                match (self.cfg.affinity_events, self.hostfs.is_live()) {
                    (true, _) => "affinity by eBPF syscall events".to_string(),
                    (false, true) => format!(
                        "affinity checked every interval by sched_getaffinity(2){}",
                        self.deciders_detail()
                    ),
                    (false, false) => format!(
                        "affinity checked every interval from status files, {} kept open \
                         (the procfs root shows another pid namespace: hostPID makes this one \
                         sched_getaffinity(2) per thread){}",
                        self.kept_status.len(),
                        self.deciders_detail()
                    ),
                }
            ),
            (None, Some(reason)) => format!("polling mode (event programs unavailable: {reason})"),
            (None, None) => "polling mode (events = false)".to_string(),
        }
    }

    /// `" (N of M threads; the rest bounded by their cpuset cgroup)"`, or nothing when every
    /// thread is checked.
    fn deciders_detail(&self) -> String {
        let all: usize = self.cache.iter().map(|o| o.threads.len()).sum();
        let checked: usize = self.affinity_deciders.iter().map(Vec::len).sum();
        if checked >= all {
            return String::new();
        }
        format!(" ({checked} of {all} threads; the rest bounded by their cpuset cgroup)")
    }

    /// One full pass: refresh the inventory, read every thread of every domain, sync the watch
    /// sets, detect, publish.
    pub(crate) fn full_pass(&mut self) {
        self.libvirt_pass(true);
    }

    /// Refreshes the libvirt inventory and reads the domains' threads: every domain's when
    /// `all` (a full pass), else only those of domains that are new or whose libvirt status
    /// changed (a targeted pass: a libvirt change in events mode; nothing is read when no
    /// status file changed).
    fn libvirt_pass(&mut self, all: bool) {
        if all {
            self.last_full = Instant::now();
        }
        let sources = self.state.sources.clone();
        let collection = sources.collect(libvirt::SOURCE.name);
        let refresh = self.inventory.refresh();
        collection.errors(refresh.errors.len() as u64);
        for (file, e) in &refresh.errors {
            let msg = e.to_string();
            self.log_once(file, &msg);
        }
        if let Some(e) = &refresh.dir_error {
            // Logged by the health registry when the source goes down (not once more here).
            collection.down(e.clone());
            self.last_errors
                .insert(Self::DIR_ERROR_KEY.to_string(), e.clone());
        } else {
            self.last_errors.remove(Self::DIR_ERROR_KEY);
            collection.ok(if self.watching.load(Ordering::Relaxed) {
                ""
            } else {
                "periodic rescan (no inotify watch)"
            });
        }

        if !all && !refresh.changed {
            self.all_alive();
            return;
        }
        let collection = sources.collect(procfs::SOURCE.name);
        let domains: Vec<Domain> = self.inventory.domains().cloned().collect();
        // Subscribers (the flow pipeline) wake only when an instance or interface changed.
        self.state
            .inventory
            .set_if_changed(HostInventory::from_domains(&domains));
        let mut previous: HashMap<String, DomainObservation> = std::mem::take(&mut self.cache)
            .into_iter()
            .filter_map(|o| Some((o.domain.as_ref()?.name.clone(), o)))
            .collect();
        // NUMA placement of the same QEMU process, kept between its reads.
        let mut numa_before: HashMap<(String, Option<u32>), NumaObservation> = previous
            .values_mut()
            .filter_map(|o| {
                let d = o.domain.as_ref()?;
                Some(((d.name.clone(), d.pid), o.numa.take()?))
            })
            .collect();
        let mut observations = Vec::with_capacity(domains.len());
        for d in domains {
            if !all
                && let Some(o) = previous.remove(&d.name)
                && o.domain.as_ref() == Some(&d)
            {
                observations.push(o);
                continue;
            }
            let (obs, errs) = observe(&self.hostfs, d);
            self.passes.thread_reads += obs.threads.len() as u64 + errs;
            collection.errors(errs);
            observations.push(obs);
        }
        let numa_due = all
            && self
                .last_numa
                .is_none_or(|t| t.elapsed() >= self.cfg.reconcile());
        if numa_due {
            self.last_numa = Some(Instant::now());
            match self.hostfs.numa_nodes() {
                Ok(nodes) => self.numa_nodes = nodes,
                Err(e) => {
                    collection.errors(1);
                    tracing::debug!(error = %e, "cannot read the host's NUMA nodes");
                }
            }
        }
        for o in &mut observations {
            let Some(d) = &o.domain else { continue };
            let key = (d.name.clone(), d.pid);
            o.numa = match numa_before.remove(&key) {
                Some(n) if !numa_due => Some(n),
                _ => {
                    let (n, errs) = observe_numa(&self.hostfs, o, &self.numa_nodes, &self.cfg);
                    collection.errors(errs);
                    n
                }
            };
        }
        self.cache = observations;
        if all {
            self.passes.full += 1;
        } else {
            self.passes.targeted += 1;
        }
        let errs = self.reindex();
        collection.errors(errs);
        collection.ok(self.procfs_detail());
        self.publish_with_probe_source();
    }

    /// Re-reads only the threads the kernel named and the domains living in the cgroup
    /// directories inotify named, then re-evaluates every cached observation and publishes.
    fn targeted_pass(&mut self, tids: &BTreeSet<u32>, dirs: &[WatchDescriptor]) {
        let sources = self.state.sources.clone();
        let collection = sources.collect(procfs::SOURCE.name);
        let mut whole: BTreeSet<usize> = BTreeSet::new();
        if let Some(ev) = &self.events {
            for wd in dirs {
                let names = ev
                    .cgroups
                    .dir(wd)
                    .and_then(|d| ev.dir_domains.get(d))
                    .into_iter()
                    .flatten();
                for name in names {
                    if let Some(i) = self.domain_index(name) {
                        whole.insert(i);
                    }
                }
            }
        }
        let mut errors = 0;
        let mut cache = procfs::PassCache::default();
        for &tid in tids {
            match self.tid_domain.get(&tid) {
                Some(i) if whole.contains(i) => {}
                Some(&i) => {
                    let Some(o) = self.cache.get_mut(i) else {
                        continue;
                    };
                    let Some(pid) = o.domain.as_ref().and_then(|d| d.pid) else {
                        continue;
                    };
                    self.passes.thread_reads += 1;
                    let times = o
                        .domain
                        .as_ref()
                        .map_or(procfs::CpuTimes::Read, |d| cpu_times(d, tid));
                    match self.hostfs.thread_cached(pid, tid, times, &mut cache) {
                        Ok(t) => {
                            if tid == pid {
                                o.main_cgroup = t.cgroup.clone();
                            }
                            o.threads.insert(tid, t);
                        }
                        Err(ProcError::Gone { .. }) => {
                            o.threads.remove(&tid);
                        }
                        Err(e) => {
                            errors += 1;
                            tracing::debug!(tid, error = %e, "thread read failed");
                        }
                    }
                }
                // A thread started after the last pass (or a process id): its domain is the one
                // whose process lists it.
                None => {
                    let owner = self.cache.iter().position(|o| {
                        o.domain.as_ref().and_then(|d| d.pid).is_some_and(|pid| {
                            self.hostfs
                                .proc_root()
                                .join(format!("{pid}/task/{tid}"))
                                .exists()
                        })
                    });
                    if let Some(i) = owner {
                        whole.insert(i);
                    }
                }
            }
        }
        for i in whole {
            let Some(d) = self.cache.get(i).and_then(|o| o.domain.clone()) else {
                continue;
            };
            let (mut obs, errs) = observe(&self.hostfs, d);
            self.passes.thread_reads += obs.threads.len() as u64 + errs;
            errors += errs;
            if let Some(slot) = self.cache.get_mut(i) {
                // NUMA placement is read at full passes only: keep the last reading.
                obs.numa = slot.numa.take();
                *slot = obs;
            }
        }
        self.passes.targeted += 1;
        errors += self.reindex();
        collection.errors(errors);
        collection.ok(self.procfs_detail());
        self.all_alive();
        self.publish_with_probe_source();
    }

    fn domain_index(&self, name: &str) -> Option<usize> {
        self.cache
            .iter()
            .position(|o| o.domain.as_ref().is_some_and(|d| d.name == name))
    }

    /// Rebuilds the thread → domain index from the cache and, in events mode, makes the event
    /// probe watch every domain process and thread and inotify every cpuset cgroup they live in
    /// (and its parent). Returns how many watches failed.
    fn reindex(&mut self) -> u64 {
        self.generation = self.generation.wrapping_add(1);
        self.affinity_deciders = pinning::affinity_deciders(&self.cache);
        self.sched_tids = self.cache.iter().map(sched_tids).collect();
        self.tid_domain.clear();
        for (i, o) in self.cache.iter().enumerate() {
            for &tid in o.threads.keys() {
                self.tid_domain.insert(tid, i);
            }
        }
        let Some(ev) = &mut self.events else {
            return 0;
        };
        let mut ids: HashSet<u32> = self.tid_domain.keys().copied().collect();
        ev.dir_domains.clear();
        let mut paths: HashSet<&str> = HashSet::new();
        for o in &self.cache {
            let Some(d) = &o.domain else { continue };
            if let Some(pid) = d.pid {
                ids.insert(pid);
            }
            let name: Arc<str> = Arc::from(d.name.as_str());
            for t in o.threads.values() {
                let Some(cg) = t.cgroup.as_deref() else {
                    continue;
                };
                if paths.insert(cg) && !ev.dirs_of.contains_key(cg) {
                    let dirs = self.hostfs.cpuset_dirs(cg).into_iter().map(Arc::from);
                    ev.dirs_of.insert(cg.to_string(), dirs.collect());
                }
                for dir in ev.dirs_of.get(cg).into_iter().flatten() {
                    add_dir_domain(&mut ev.dir_domains, dir.clone(), &name);
                    if let Some(parent) = dir.parent() {
                        add_dir_domain(&mut ev.dir_domains, parent, &name);
                    }
                }
            }
        }
        ev.dirs_of.retain(|k, _| paths.contains(k.as_str()));
        let dirs: HashSet<Arc<Path>> = ev.dir_domains.keys().cloned().collect();
        ev.probe.as_mut().map_or(0, |p| p.sync(&ids)) + ev.cgroups.sync(&dirs)
    }

    /// [`Self::publish`] under the sched probe's collection (its health and BPF costs).
    fn publish_with_probe_source(&mut self) {
        let sources = self.state.sources.clone();
        let collection = self
            .probe
            .is_some()
            .then(|| sources.collect(sched_bpf::SOURCE.name));
        self.publish(false);
        if let (Some(p), Some(collection)) = (&self.probe, collection) {
            collection.ok(p.mode().to_string());
            self.state.bpf_costs.set(if !p.stats_enabled() {
                Vec::new()
            } else {
                let mut costs: Vec<BpfProgramCost> = p
                    .program_stats()
                    .into_iter()
                    .map(|s| BpfProgramCost {
                        program: s.name,
                        run_time_ns: s.run_time_ns,
                        run_count: s.run_count,
                    })
                    .collect();
                if let Some(p) = self.events.as_ref().and_then(|e| e.probe.as_ref()) {
                    costs.extend(p.program_stats());
                }
                costs
            });
        }
    }

    /// Reads the placement maps into the cached observations, detects and publishes. With
    /// `only_if_changed` (an idle tick): nothing when no placement changed; only the counters of
    /// the published report when no change can alter a finding (a floating vCPU migrating every
    /// tick must not cost a detection per tick).
    fn publish(&mut self, only_if_changed: bool) {
        let mut observations = std::mem::take(&mut self.cache);
        let (change, changed) = self.sync_probe(&mut observations);
        if only_if_changed && change != PlacementChange::Findings {
            if change == PlacementChange::Counters && self.last_publish.elapsed() >= COUNTER_REFRESH
            {
                self.last_publish = Instant::now();
                let mut report = PinningReport::clone(&self.state.pinning.get());
                pinning::refresh_placement(&mut report, &observations);
                self.counters.apply(&observations, &mut report);
                report.passes = self.passes.clone();
                self.state.pinning.set(report);
            }
            self.cache = observations;
            return;
        }
        self.last_publish = Instant::now();
        let old = self.state.pinning.get();
        // A tick changes placement and stolen time only: the domains it changed are evaluated
        // again when the published findings come from this generation's pins and threads.
        let mut report = if only_if_changed && self.evaluated == Some(self.generation) {
            let mut report = pinning::reevaluate(&observations, &old, &changed);
            // The kept domains' counters and stolen time as of this tick.
            pinning::refresh_placement(&mut report, &observations);
            report
        } else {
            pinning::evaluate(&observations)
        };
        self.evaluated = Some(self.generation);
        if old.findings_version != 0 && report.same_findings(&old) {
            report.findings_version = old.findings_version;
        }
        self.counters.apply(&observations, &mut report);
        self.cache = observations;
        report.passes = self.passes.clone();
        report.numa_nodes = self.numa_nodes.clone();
        fn drifts(r: &PinningReport) -> Vec<(&str, &crate::model::pinning::Drift)> {
            r.domains
                .iter()
                .flat_map(|d| d.drifts.iter().map(|x| (d.domain.as_str(), x)))
                .collect()
        }
        self.findings.changes(
            &drifts(&old),
            &drifts(&report),
            |(domain, x)| (*domain, x.vcpu.as_str(), x.check.to_string()),
            |(domain, x)| {
                format!(
                    "domain={domain} vcpu={} check={} expected={} actual=\"{}\"",
                    x.vcpu, x.check, x.expected, x.actual
                )
            },
        );
        drop(old);
        self.state.pinning.set(report);
    }

    /// Watches exactly the pinned vCPU threads, and fills each observation's placement samples.
    /// Returns how much any thread's placement differs from what the observations held, and
    /// the observations (indices) with a change that can alter a finding.
    fn sync_probe(
        &mut self,
        observations: &mut [DomainObservation],
    ) -> (PlacementChange, BTreeSet<usize>) {
        let mut changed = PlacementChange::None;
        let mut changed_at = BTreeSet::new();
        if self.probe.is_none() {
            return (changed, changed_at);
        }
        let now = Instant::now();
        let window = self.cfg.placement_window();
        let mut errors = 0u64;
        // The watched set follows the observations' vCPUs and pins, which change only with a
        // pass (and then the generation): an idle tick skips this.
        let resynced = self.watch_generation != Some(self.generation);
        if resynced {
            self.watch_generation = Some(self.generation);
            errors += self.sync_watched(observations, now);
        }
        let Some(probe) = self.probe.as_mut() else {
            return (changed, changed_at);
        };
        // Every thread's counters are read when a placement finding can have changed: a thread
        // was charged off-pin time (the kernel's one counter moved), a thread has off-pin time in
        // its window (it drifts: its CPU and window move), or the watched set changed; else only
        // every COUNTER_REFRESH, for the published counters.
        let offpin = probe.offpin_slices().ok();
        let due = resynced
            || offpin.is_none()
            || offpin != self.placement_reads.offpin_slices
            || self.placement_reads.drifting
            || self
                .placement_reads
                .at
                .is_none_or(|t| now.duration_since(t) >= COUNTER_REFRESH);
        if due {
            self.placement_reads = PlacementReads {
                at: Some(now),
                offpin_slices: offpin,
                drifting: false,
            };
        }
        // One batch read of the whole map for many threads; per-thread lookups for few, or
        // where the kernel cannot batch.
        let batch = if due && self.watched.len() >= BATCH_READ_FROM {
            probe.placements().ok()
        } else {
            None
        };
        for (i, o) in observations.iter_mut().enumerate().filter(|_| due) {
            let DomainObservation {
                domain,
                placement: placed,
                ..
            } = o;
            for tid in domain.iter().flat_map(|d| &d.vcpus).filter_map(|v| v.tid) {
                let Some(w) = self.watched.get_mut(&tid) else {
                    continue;
                };
                let placement = match &batch {
                    Some(all) => Ok(all.get(&tid).cloned()),
                    None => probe.placement(tid),
                };
                let sample = match placement {
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
                        let sample = PlacementSample {
                            offpin_ns_total: p.off_pin_ns,
                            offpin_ns_window: p.off_pin_ns.saturating_sub(oldest),
                            migrations_total: p.migrations,
                            last_cpu: p.last_cpu,
                        };
                        self.placement_reads.drifting |= sample.offpin_ns_window > 0;
                        sample
                    }
                    Ok(None) => PlacementSample::default(),
                    Err(_) => {
                        errors += 1;
                        continue;
                    }
                };
                let old = placed.insert(tid, sample.clone());
                let change = PlacementChange::between(old.as_ref(), &sample);
                if change == PlacementChange::Findings {
                    changed_at.insert(i);
                }
                changed = changed.max(change);
            }
        }
        // Intrusions: a changed verdict of the `stolen` check is a finding, moved totals counters.
        type StolenKey = (u32, u64, Option<&'static str>);
        let summary = |obs: &[DomainObservation]| -> Vec<Vec<StolenKey>> {
            obs.iter()
                .map(|o| {
                    o.stolen
                        .iter()
                        .map(|(c, x)| (*c, x.ns_total.iter().sum(), x.drift()))
                        .collect()
                })
                .collect()
        };
        // A quiet tick (nothing moved on any dedicated pCPU) changes no intrusion.
        if !self
            .stolen
            .quiet_tick(|cpu| probe.stolen(cpu), self.generation, window, now)
        {
            let before = summary(observations);
            let (intrusions, stolen_errors) = self.stolen.sync(
                probe,
                observations,
                self.generation,
                window,
                self.cfg.stolen_share,
                now,
            );
            errors += stolen_errors;
            let after = summary(observations);
            if before != after {
                let verdicts = |v: &[Vec<StolenKey>]| -> Vec<Vec<(u32, Option<&'static str>)>> {
                    v.iter()
                        .map(|d| d.iter().map(|(c, _, x)| (*c, *x)).collect())
                        .collect()
                };
                let (was, now) = (verdicts(&before), verdicts(&after));
                for (i, (a, b)) in was.iter().zip(&now).enumerate() {
                    if a != b {
                        changed_at.insert(i);
                    }
                }
                changed = changed.max(if was != now {
                    PlacementChange::Findings
                } else {
                    PlacementChange::Counters
                });
            }
            self.state.intrusions.set_if_changed(intrusions);
        }
        if errors > 0 {
            self.state.sources.errors(sched_bpf::SOURCE.name, errors);
        }
        (changed, changed_at)
    }

    /// Makes the sched probe watch exactly the observations' pinned vCPU threads, each with its
    /// pin set (a thread whose pin set changed is re-watched, keeping its history). Returns how
    /// many watch changes failed.
    fn sync_watched(&mut self, observations: &[DomainObservation], now: Instant) -> u64 {
        let mut desired: HashMap<u32, CpuSet> = HashMap::new();
        for o in observations.iter() {
            for v in o.domain.iter().flat_map(|d| &d.vcpus) {
                if let (Some(tid), Some(pin)) = (v.tid, &v.pin) {
                    desired.insert(tid, pin.clone());
                }
            }
        }
        let mut errors = 0u64;
        let Some(probe) = self.probe.as_mut() else {
            return 0;
        };
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
        errors
    }

    /// Logs an error for `key` only when it differs from the last one logged (no log storms per tick).
    fn log_once(&mut self, key: &str, msg: &str) {
        if self.last_errors.get(key).map(String::as_str) != Some(msg) {
            tracing::warn!(source = key, "{msg}");
            self.last_errors.insert(key.to_string(), msg.to_string());
        }
    }
}

/// How often at most an idle tick publishes placement counters that changed without changing a
/// finding (floating vCPUs migrate all the time): they are a few seconds old at worst, for
/// scrapes every 15 s or more; a finding's change is published at once.
const COUNTER_REFRESH: Duration = Duration::from_secs(5);

/// From how many watched threads one batch read of the placement map costs less than a lookup
/// per thread: the batch walks every bucket of the map (16 384 for `MAX_WATCHED`: ~0.3 ms on
/// the testbed), a lookup is one `bpf(2)` (~1.1 µs there).
const BATCH_READ_FROM: usize = 256;

/// How the placement samples of a tick differ from the previous ones (ordered: the largest wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PlacementChange {
    /// Nothing changed.
    None,
    /// Counters only (migrations, off-pin totals, the last CPU of a thread within its pin).
    Counters,
    /// A change that can alter a finding ([`placement::drift_key`]), or a new sample.
    Findings,
}

impl PlacementChange {
    /// The change from `old` (none: a thread seen for the first time) to `new`.
    fn between(old: Option<&PlacementSample>, new: &PlacementSample) -> Self {
        match old {
            None => Self::Findings,
            Some(old) if old == new => Self::None,
            Some(old) if placement::drift_key(old) == placement::drift_key(new) => Self::Counters,
            Some(_) => Self::Findings,
        }
    }
}

/// What the wake-ups since the last pass ask for.
#[derive(Debug, Default)]
struct Todo {
    /// The interval passed without a wake-up.
    tick: bool,
    /// Read everything.
    full: bool,
    /// The libvirt state directory changed.
    libvirt: bool,
    /// Threads the kernel named.
    threads: BTreeSet<u32>,
    /// Watched cgroup directories written.
    cgroups: Vec<WatchDescriptor>,
}

impl Todo {
    fn add(&mut self, w: Wake) {
        match w {
            Wake::Libvirt => self.libvirt = true,
            Wake::Threads(t) => self.threads.extend(t),
            Wake::Cgroups(c) => {
                for wd in c {
                    if !self.cgroups.contains(&wd) {
                        self.cgroups.push(wd);
                    }
                }
            }
            Wake::Lost(why) => {
                tracing::debug!(reason = %why, "pinning events may be lost; reconciling");
                self.full = true;
            }
        }
    }
}

/// The event thread: waits on the ring buffer and the cgroup inotify descriptor, and forwards
/// what they report to the pinning thread. Returns when the pinning thread is gone.
fn read_events(mut reader: PinEventReader, mut cgroups: CgroupWatch, tx: &mpsc::Sender<Wake>) {
    loop {
        let ready = match events::wait_readable(&[reader.fd(), cgroups.fd()], None) {
            Ok(r) => r,
            Err(e) => {
                if tx.send(Wake::Lost(format!("poll: {e}"))).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let mut wakes = Vec::new();
        if ready.first().copied().unwrap_or(false) {
            let tids: Vec<u32> = reader.drain().into_iter().map(|e| e.tid).collect();
            if !tids.is_empty() {
                wakes.push(Wake::Threads(tids));
            }
        }
        if ready.get(1).copied().unwrap_or(false) {
            match cgroups.drain() {
                Ok(c) => {
                    if c.overflow {
                        wakes.push(Wake::Lost("cgroup inotify queue overflow".into()));
                    }
                    if !c.changed.is_empty() {
                        wakes.push(Wake::Cgroups(c.changed));
                    }
                }
                Err(e) => wakes.push(Wake::Lost(format!("cgroup inotify: {e}"))),
            }
        }
        for w in wakes {
            if tx.send(w).is_err() {
                return;
            }
        }
    }
}

/// Last raw values of one vCPU thread, as read by the previous pass.
#[derive(Clone, Copy, Debug, Default)]
struct ThreadLast {
    wait_ns: u64,
    offpin_ns: u64,
    migrations: u64,
}

/// A domain's counters, accumulated from per-thread increments.
#[derive(Debug, Default)]
struct DomainCounters {
    threads: HashMap<u32, ThreadLast>,
    wait_ns: u64,
    offpin_ns: u64,
    migrations: u64,
}

/// What a raw per-thread value added since `last`: the difference, or the whole value when it
/// went down (a thread id reused, a probe entry re-created): never negative.
fn increment(cur: u64, last: u64) -> u64 {
    if cur >= last { cur - last } else { cur }
}

/// Per-domain counters (`pinflow_vcpu_{wait,offpin}_seconds_total`,
/// `pinflow_vcpu_migrations_total`) monotonic by construction: each pass adds every vCPU
/// thread's increment since its last value, so a thread that exits (or a domain whose vCPU
/// threads are replaced) keeps what it contributed instead of taking it out of the sum.
/// A domain that is gone is forgotten with its series.
#[derive(Debug, Default)]
pub(crate) struct MonotonicCounters {
    domains: HashMap<String, DomainCounters>,
}

impl MonotonicCounters {
    /// Accumulates the pass's raw values and writes the monotonic totals into `report`.
    pub(crate) fn apply(&mut self, obs: &[DomainObservation], report: &mut PinningReport) {
        let mut seen = std::collections::HashSet::new();
        for o in obs {
            let Some(d) = &o.domain else { continue };
            seen.insert(d.name.as_str());
            let c = self.domains.entry(d.name.clone()).or_default();
            let tids: Vec<u32> = d.vcpus.iter().filter_map(|v| v.tid).collect();
            // Only libvirt's current vCPU threads are remembered; one missing from this pass
            // (a read error) keeps its last value for the next.
            c.threads.retain(|t, _| tids.contains(t));
            for tid in tids {
                let last = c.threads.entry(tid).or_default();
                if let Some(t) = o.threads.get(&tid) {
                    c.wait_ns = c.wait_ns.saturating_add(increment(t.wait_ns, last.wait_ns));
                    last.wait_ns = t.wait_ns;
                }
                if let Some(p) = o.placement.get(&tid) {
                    c.offpin_ns = c
                        .offpin_ns
                        .saturating_add(increment(p.offpin_ns_total, last.offpin_ns));
                    c.migrations = c
                        .migrations
                        .saturating_add(increment(p.migrations_total, last.migrations));
                    last.offpin_ns = p.offpin_ns_total;
                    last.migrations = p.migrations_total;
                }
            }
        }
        self.domains.retain(|name, _| seen.contains(name.as_str()));
        for r in &mut report.domains {
            let Some(c) = self.domains.get(&r.domain) else {
                continue;
            };
            r.wait_seconds_total = c.wait_ns as f64 / 1e9;
            if r.offpin_seconds_total.is_some() {
                r.offpin_seconds_total = Some(c.offpin_ns as f64 / 1e9);
                r.migrations_total = Some(c.migrations);
            }
        }
    }
}

/// Whether a pass reads thread `tid`'s CPU times: a vCPU thread's only (see [`procfs::CpuTimes`]).
fn cpu_times(domain: &Domain, tid: u32) -> procfs::CpuTimes {
    if domain.vcpus.iter().any(|v| v.tid == Some(tid)) {
        procfs::CpuTimes::Read
    } else {
        procfs::CpuTimes::Skip
    }
}

/// Reads every thread of the domain's QEMU process. Returns the observation and the number of
/// unexpected read errors (threads that vanished mid-read are normal and not counted).
pub(crate) fn observe(hostfs: &HostFs, domain: Domain) -> (DomainObservation, u64) {
    let mut obs = DomainObservation::default();
    let mut errors = 0;
    if let Some(pid) = domain.pid {
        match hostfs.threads(pid) {
            Ok(tids) => {
                let mut cache = procfs::PassCache::default();
                for tid in tids {
                    let times = cpu_times(&domain, tid);
                    match hostfs.thread_cached(pid, tid, times, &mut cache) {
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

/// Thread ids of the observed domain with a configured scheduler (`<vcpusched>`,
/// `<iothreadsched>`, found by name).
fn sched_tids(obs: &DomainObservation) -> BTreeSet<u32> {
    let Some(d) = &obs.domain else {
        return BTreeSet::new();
    };
    let mut tids: BTreeSet<u32> = d
        .vcpus
        .iter()
        .filter(|v| v.sched.is_some())
        .filter_map(|v| v.tid)
        .collect();
    for io in d.iothreads.iter().filter(|t| t.sched.is_some()) {
        let comm = io.comm();
        tids.extend(
            obs.threads
                .values()
                .filter(|t| t.comm == comm)
                .map(|t| t.tid),
        );
    }
    tids
}

/// The NUMA placement of one observed domain (its cgroup's `cpuset.mems` and memory per node),
/// judged against `nodes`; `None` without a QEMU process or main-thread cgroup. Returns the
/// number of unexpected read errors.
pub(crate) fn observe_numa(
    hostfs: &HostFs,
    obs: &DomainObservation,
    nodes: &[HostNode],
    cfg: &PinningConfig,
) -> (Option<NumaObservation>, u64) {
    let (Some(pid), Some(cgroup)) = (
        obs.domain.as_ref().and_then(|d| d.pid),
        obs.main_cgroup.as_deref(),
    ) else {
        return (None, 0);
    };
    match hostfs.domain_numa(pid, cgroup) {
        Ok((mems, node_bytes)) => (
            Some(NumaObservation {
                mems,
                node_bytes,
                node_cpus: nodes.iter().map(|n| (n.node, n.cpus.clone())).collect(),
                tolerance_bytes: cfg.numa_tolerance_bytes,
            }),
            0,
        ),
        Err(ProcError::Gone { .. }) => (None, 0),
        Err(e) => {
            tracing::debug!(pid, error = %e, "cannot read the domain's NUMA placement");
            (None, 1)
        }
    }
}

/// One pass without eBPF, for one-shot commands (`pinflow pinning`): the report, the libvirt
/// refresh (with its errors) and the number of unexpected procfs/cgroupfs read errors.
pub(crate) fn snapshot_once(inputs: &HostPaths) -> (PinningReport, libvirt::Refresh, u64) {
    let mut inv = LibvirtInventory::new(inputs.libvirt_state_dir.clone());
    let refresh = inv.refresh();
    let hostfs = HostFs::new(inputs.proc_root.clone(), inputs.sys_root.clone());
    let mut proc_errors = 0;
    let nodes = hostfs.numa_nodes().unwrap_or_else(|_| {
        proc_errors += 1;
        Vec::new()
    });
    let cfg = PinningConfig::default();
    let obs: Vec<_> = inv
        .domains()
        .cloned()
        .map(|d| {
            let (mut o, errors) = observe(&hostfs, d);
            let (numa, numa_errors) = observe_numa(&hostfs, &o, &nodes, &cfg);
            o.numa = numa;
            proc_errors += errors + numa_errors;
            o
        })
        .collect();
    let mut report = pinning::evaluate(&obs);
    report.numa_nodes = nodes;
    (report, refresh, proc_errors)
}

#[cfg(test)]
mod event_tests;

/// Observations built by hand, for the counter tests.
#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::model::{ThreadState, VcpuSpec};

    /// One pass's observation of domain `name`: `(tid, wait_ns, offpin_ns, migrations)` per
    /// vCPU thread (placement only when `bpf`).
    pub(super) fn obs(
        name: &str,
        threads: &[(u32, u64, u64, u64)],
        bpf: bool,
    ) -> DomainObservation {
        let domain = Domain {
            name: name.into(),
            uuid: format!("uuid-{name}"),
            id: Some(1),
            pid: Some(100),
            nova: None,
            vcpus: threads
                .iter()
                .enumerate()
                .map(|(i, t)| VcpuSpec {
                    id: i as u32,
                    tid: Some(t.0),
                    pin: None,
                    shared_set: false,
                    sched: None,
                })
                .collect(),
            emulator_pin: None,
            interfaces: Vec::new(),
            iothreads: Vec::new(),
            numa: Default::default(),
        };
        let mut o = DomainObservation {
            domain: Some(domain),
            ..Default::default()
        };
        for &(tid, wait_ns, offpin_ns, migrations) in threads {
            o.threads.insert(
                tid,
                ThreadState {
                    tid,
                    wait_ns,
                    ..Default::default()
                },
            );
            if bpf {
                o.placement.insert(
                    tid,
                    PlacementSample {
                        offpin_ns_total: offpin_ns,
                        migrations_total: migrations,
                        ..Default::default()
                    },
                );
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::obs;
    use super::*;

    /// Runs the passes through evaluate + MonotonicCounters, returning each pass's
    /// `(wait, offpin, migrations)` of domain `d`.
    fn totals(passes: &[Vec<DomainObservation>], d: &str) -> Vec<Option<(f64, f64, u64)>> {
        let mut c = MonotonicCounters::default();
        passes
            .iter()
            .map(|p| {
                let mut r = pinning::evaluate(p);
                c.apply(p, &mut r);
                r.domains.iter().find(|x| x.domain == d).map(|x| {
                    (
                        x.wait_seconds_total,
                        x.offpin_seconds_total.unwrap_or(-1.0),
                        x.migrations_total.unwrap_or(0),
                    )
                })
            })
            .collect()
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_pass_reads_the_cpu_times_of_vcpu_threads_only() {
        // The libvirt domain captured in the procfs fixture: QEMU 11411, vCPUs 11435 and 11436.
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hostfs/v1-libvirt");
        let hostfs = HostFs::new(root.join("proc"), root.join("sys"));
        let mut domain = obs("fx", &[(11435, 0, 0, 0), (11436, 0, 0, 0)], false)
            .domain
            .expect("domain");
        domain.pid = Some(11411);
        let (o, errors) = observe(&hostfs, domain);
        assert_eq!(errors, 0);
        let times = |tid: u32| o.threads.get(&tid).map(|t| (t.run_ns, t.wait_ns));
        assert_eq!(times(11435), Some((18148376596, 23734040313)));
        assert_eq!(times(11436), Some((2010781, 3639985)));
        // The emulator thread is read (its cgroup and affinity decide checks), its times are not.
        assert_eq!(times(11411), Some((0, 0)));
        assert_eq!(
            o.threads.get(&11411).map(|t| t.comm.as_str()),
            Some("qemu-system-x86")
        );
        assert_eq!(
            o.main_cgroup.as_deref(),
            Some("/machine/qemu-5-fx-nova.libvirt-qemu/emulator")
        );
    }

    #[test]
    fn counters_never_decrease_across_thread_exits_and_resets() {
        let passes = vec![
            vec![obs("a", &[(10, 2 * S, S, 5), (11, 3 * S, 2 * S, 7)], true)],
            // Thread 11 exits (vCPU unplugged: libvirt lists one vCPU left): its 3 s of wait,
            // 2 s off-pin and 7 migrations stay in the sums.
            vec![obs("a", &[(10, 4 * S, S, 6)], true)],
            // The probe entry of thread 10 is re-created (new pin): raw values restart at 0.
            vec![obs("a", &[(10, 5 * S, 0, 0)], true)],
            vec![obs("a", &[(10, 5 * S, S, 2)], true)],
            // The domain restarts with new vCPU threads whose raw values are small.
            vec![obs("a", &[(20, S, 0, 1)], true)],
        ];
        let t = totals(&passes, "a");
        let want = [
            (5.0, 3.0, 12),
            (7.0, 3.0, 13),
            (8.0, 3.0, 13),
            (8.0, 4.0, 15),
            (9.0, 4.0, 16),
        ];
        assert_eq!(t, want.map(Some).to_vec());
        // What evaluate alone reports (the sums over the threads read this pass) goes backwards.
        let raw: Vec<f64> = passes
            .iter()
            .map(|p| pinning::evaluate(p).domains[0].wait_seconds_total)
            .collect();
        assert!(raw.windows(2).any(|w| w[1] < w[0]), "{raw:?}");
    }

    #[test]
    fn a_thread_missing_from_one_pass_is_not_counted_twice_and_gone_domains_are_forgotten() {
        let mut a_missing = obs("a", &[(10, 2 * S, 0, 0), (11, 2 * S, 0, 0)], false);
        // A read error for thread 11: libvirt still lists it, procfs gave nothing this pass.
        a_missing.threads.remove(&11);
        let passes = vec![
            vec![
                obs("a", &[(10, S, 0, 0), (11, S, 0, 0)], false),
                obs("b", &[(30, 7 * S, 0, 0)], false),
            ],
            vec![a_missing],
            vec![obs("a", &[(10, 3 * S, 0, 0), (11, 3 * S, 0, 0)], false)],
            vec![obs("b", &[(31, S, 0, 0)], false)],
        ];
        let t = totals(&passes, "a");
        assert_eq!(
            t.iter().map(|x| x.map(|v| v.0)).collect::<Vec<_>>(),
            vec![Some(2.0), Some(3.0), Some(6.0), None]
        );
        // Without the eBPF probe there is no off-pin series.
        assert_eq!(t[0].map(|v| v.1), Some(-1.0));
        // `b` went away after the first pass: it starts over, not from its old 7 s.
        assert_eq!(totals(&passes, "b")[3].map(|v| v.0), Some(1.0));
    }
}

/// Fixture-level churn (the real 200-domain/500-tap churn is too slow for CI on these machines):
/// domains start and stop, vCPU threads exit and are replaced, and no counter ever decreases
/// while its domain lives, and nothing of a gone domain is kept.
#[cfg(test)]
mod churn {
    use super::tests_support::obs;
    use super::*;

    /// A small deterministic generator (xorshift), so that failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn two_hundred_domains_churning_never_make_a_counter_decrease() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut counters = MonotonicCounters::default();
        // Per live domain: its vCPU threads (tid, wait, offpin, migrations).
        let mut live: BTreeMap<String, Vec<(u32, u64, u64, u64)>> = BTreeMap::new();
        let mut last: HashMap<String, (f64, f64, u64)> = HashMap::new();
        let mut next_tid = 1000u32;
        let mut next_dom = 0u32;
        for _pass in 0..300 {
            // Start domains up to ~200, stop some.
            while live.len() < 200 || rng.below(10) == 0 {
                let vcpus = 1 + rng.below(4) as usize;
                let threads = (0..vcpus)
                    .map(|_| {
                        next_tid += 1;
                        (next_tid, 0, 0, 0)
                    })
                    .collect();
                live.insert(format!("instance-{next_dom:05}"), threads);
                next_dom += 1;
                if live.len() > 210 {
                    break;
                }
            }
            for _ in 0..rng.below(6) {
                let k = rng.below(live.len() as u64) as usize;
                if let Some(name) = live.keys().nth(k).cloned() {
                    live.remove(&name);
                    last.remove(&name);
                }
            }
            // Threads advance; some exit and are replaced (new tid, raw values from 0), some
            // have their probe entry re-created (raw values restart).
            for threads in live.values_mut() {
                for t in threads.iter_mut() {
                    match rng.below(50) {
                        0 => {
                            next_tid += 1;
                            *t = (next_tid, 0, 0, 0);
                        }
                        1 => {
                            t.2 = 0;
                            t.3 = 0;
                        }
                        _ => {
                            t.1 += rng.below(1_000_000);
                            t.2 += rng.below(1_000);
                            t.3 += rng.below(3);
                        }
                    }
                }
            }
            let observations: Vec<DomainObservation> =
                live.iter().map(|(n, t)| obs(n, t, true)).collect();
            let mut report = pinning::evaluate(&observations);
            counters.apply(&observations, &mut report);
            assert_eq!(report.domains.len(), live.len());
            for d in &report.domains {
                let now = (
                    d.wait_seconds_total,
                    d.offpin_seconds_total.unwrap_or(0.0),
                    d.migrations_total.unwrap_or(0),
                );
                if let Some(prev) = last.get(&d.domain) {
                    assert!(
                        now.0 >= prev.0 && now.1 >= prev.1 && now.2 >= prev.2,
                        "{}: {prev:?} -> {now:?}",
                        d.domain
                    );
                }
                last.insert(d.domain.clone(), now);
            }
            // Nothing of a stopped domain or an exited thread is kept.
            assert_eq!(counters.domains.len(), live.len());
            let tids: usize = live.values().map(Vec::len).sum();
            let kept: usize = counters.domains.values().map(|c| c.threads.len()).sum();
            assert_eq!(kept, tids);
        }
        assert!(next_dom > 400, "churned {next_dom} domains");
    }
}
