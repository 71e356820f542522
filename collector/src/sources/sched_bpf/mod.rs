//! eBPF `sched_switch` placement probe: where watched (vCPU) threads actually ran.
//!
//! For each watched thread id the kernel program counts CPU time on pCPUs inside and outside the
//! thread's pin set, migrations, switch-ins and the last CPU (see `collector_common::sched` for the
//! map layout). A switch of two unwatched threads on a CPU that is not dedicated costs three bit
//! tests in the filter ([`SwitchFilter`], a global of the program, so no map lookup at all).
//!
//! The program is attached the first way that works on this kernel: `tp_btf/sched_switch`, then
//! `raw_tracepoint/sched_switch`, then the classic tracepoint `sched:sched_switch` (needs tracefs).
//! Without CO-RE, `task_struct.pid`'s offset comes from kernel BTF ([`btf`]) and the classic
//! tracepoint's field offsets from its tracefs `format` file ([`tracefs`]). aya never parses the
//! kernel's whole BTF when it can be helped ([`loader`], and a one-type stand-in for `tp_btf`).
//!
//! The same program accounts intrusions on dedicated pCPUs (who ran on a pCPU a vCPU is pinned
//! to alone, and for how long). Design, chosen for the cost on CPUs that are not dedicated: the
//! dedicated CPUs are a bit set in the same filter, the owners an array indexed by CPU
//! ([`SchedProbe::set_dedicated`]), so a switch on any other CPU pays one bit test and nothing
//! else. On a dedicated CPU the program
//! keeps that CPU's last switch time and charges each slice to the task switched out (never the
//! owner's vCPU nor idle). The class needs no per-switch work in userspace: domain threads are a
//! map userspace already knows ([`SchedProbe::set_domain_threads`]: tid -> domain id, vCPU or
//! not), kernel threads are `PF_KTHREAD` in `task_struct.flags` (offset from BTF, as for `pid`),
//! everything else is `host`. Per-CPU counters by class, plus a per-CPU LRU of the intruding
//! tasks (comm, tgid, ns) for the API; userspace turns both into deltas per domain.

mod batch;
pub mod btf;
pub(crate) mod events;
pub(crate) mod loader;
mod mapped;
pub mod tracefs;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::Path;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray};
use aya::programs::{BtfTracePoint, RawTracePoint, TracePoint};
use aya::{Btf, Ebpf, Endianness};
use collector_common::sched::{
    self as layout, DEDICATED_MAP, DedicatedCpu, DomainThread, FILTER_MAP, INTRUDER_CLASSES,
    INTRUDERS_MAP, IntruderKey, IntruderStats, MAX_CPUS, MAX_DOMAIN_THREADS, MAX_WATCHED,
    OFFPIN_MAP, PIN_WORDS, PinMask, PlacementStats, STATS_MAP, STOLEN_MAP, StolenCpu, SwitchFilter,
    THREADS_MAP, WATCH_MAP,
};

use crate::model::clock::monotonic_ns;
use crate::model::cpuset::CpuSet;
use crate::sources::{CanRun, SourceDef};

/// The eBPF sched probe: where each pinned vCPU thread actually runs.
pub(crate) const SOURCE: SourceDef = SourceDef {
    name: "sched_bpf",
    collector: "pinning",
    can_run: |_| {
        CanRun::of(
            SchedProbe::load()
                .map(|p| format!("attached as {}", p.mode()))
                .map_err(|e| e.to_string()),
        )
    },
};

/// The eBPF object built by `build.rs` (empty when built with `PINFLOW_SKIP_EBPF=1`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pinflow-ebpf"));

/// The embedded eBPF object bytes (empty if the build skipped eBPF).
pub fn ebpf_object() -> &'static [u8] {
    EBPF_OBJECT
}

/// How the probe is attached to `sched_switch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// BTF-typed tracepoint (`tp_btf/sched_switch`): cheapest, needs kernel BTF.
    TpBtf,
    /// Raw tracepoint (`raw_tracepoint/sched_switch`).
    RawTp,
    /// Classic tracepoint `sched:sched_switch` (needs tracefs mounted).
    Tracepoint,
}

impl AttachMode {
    /// Every mode, in the order [`SchedProbe::load`] tries them.
    pub const ALL: [AttachMode; 3] = [AttachMode::TpBtf, AttachMode::RawTp, AttachMode::Tracepoint];

    /// Name of this mode's program in the eBPF object (and in the kernel).
    pub fn program_name(self) -> &'static str {
        match self {
            AttachMode::TpBtf => layout::PROG_TP_BTF,
            AttachMode::RawTp => layout::PROG_RAW_TP,
            AttachMode::Tracepoint => layout::PROG_TRACEPOINT,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::TpBtf => "tp_btf",
            AttachMode::RawTp => "raw_tp",
            AttachMode::Tracepoint => "tracepoint",
        })
    }
}

/// Where one watched thread ran since it was first watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VcpuPlacement {
    /// CPU time on pCPUs in its pin set (pin set as of each slice's end), ns.
    pub on_pin_ns: u64,
    /// CPU time on pCPUs outside its pin set, ns.
    pub off_pin_ns: u64,
    /// Switch-ins on a different CPU than the previous switch-in.
    pub migrations: u64,
    /// Switch-ins seen.
    pub switches: u64,
    /// CPU of the last switch-in ([`u32::MAX`] if it has not run since being watched).
    pub last_cpu: u32,
    /// Length so far of the slice running now (on `last_cpu`), ns; 0 when not running. Not yet in
    /// `on_pin_ns`/`off_pin_ns` (it is added at switch-out), so those stay monotonic.
    pub running_ns: u64,
}

/// One task's run time on a dedicated pCPU (an entry of the kernel's top-intruder table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intruder {
    /// The dedicated pCPU.
    pub cpu: u32,
    /// Thread id.
    pub tid: u32,
    /// Process id.
    pub tgid: u32,
    /// Thread name as of its last slice on the pCPU.
    pub comm: String,
    /// Its class as of its last slice.
    pub class: layout::IntruderClass,
    /// Run time on the pCPU while dedicated, ns (monotonic while the entry lives).
    pub ns: u64,
}

/// The owner of one dedicated pCPU, as userspace tells the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuOwner {
    /// Domain id (stable while the domain runs; never 0).
    pub domain: u32,
    /// The owner vCPU's thread id.
    pub tid: u32,
}

/// Kernel-measured cost of one loaded program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    /// Program name.
    pub name: String,
    /// Total run time since load while BPF stats were enabled, ns.
    pub run_time_ns: u64,
    /// Runs since load while BPF stats were enabled.
    pub run_count: u64,
}

/// Which of the capabilities eBPF tracing needs this process lacks, read from its own
/// `CapEff` (so the error names what to grant, e.g. in a container's capability list).
pub fn missing_bpf_capabilities() -> String {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        });
    let Some(eff) = eff else {
        return "needs CAP_BPF and CAP_PERFMON".into();
    };
    let has = |c: u32| eff & (1u64 << c) != 0;
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(c, _)| !has(*c) && !has(CAP_SYS_ADMIN))
        .map(|(_, n)| n)
        .collect();
    if missing.is_empty() {
        "has CAP_BPF and CAP_PERFMON; a seccomp profile or LSM may block bpf()".into()
    } else {
        format!(
            "missing {}: needs CAP_BPF and CAP_PERFMON",
            missing.join(" and ")
        )
    }
}

/// Why the probe could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum SchedProbeError {
    /// The binary embeds an empty placeholder instead of the eBPF object.
    #[error("eBPF object not built (this binary was built with PINFLOW_SKIP_EBPF=1)")]
    NotBuilt,
    /// The kernel refused BPF (needs CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN).
    #[error("permission denied loading eBPF ({hint}): {0}", hint = missing_bpf_capabilities())]
    PermissionDenied(String),
    /// Kernel BTF is missing or unusable (needed by tp_btf and raw_tp to read `task_struct.pid`).
    #[error("kernel BTF unavailable: {0}")]
    NoBtf(String),
    /// One forced attach mode failed.
    #[error("attaching sched_switch as {mode} failed: {reason}")]
    Attach {
        /// The mode tried.
        mode: AttachMode,
        /// Why it failed (error chain, verifier log included).
        reason: String,
    },
    /// Every attach mode failed.
    #[error("every sched_switch attach mode failed: {}", fmt_failures(.0))]
    AllModesFailed(Vec<(AttachMode, String)>),
    /// A map operation failed.
    #[error("BPF map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// The aya error.
        #[source]
        source: MapError,
    },
    /// A thread id the kernel never uses.
    #[error("invalid thread id {0}")]
    InvalidTid(u32),
    /// The pin set is empty.
    #[error("empty pin set for thread {0}")]
    EmptyPinSet(u32),
    /// The pin set holds a CPU the fixed-size mask cannot describe.
    #[error("pin set of thread {tid} holds CPU {cpu}; the probe supports CPUs below {MAX_CPUS}")]
    CpuOutOfRange {
        /// Thread id.
        tid: u32,
        /// Offending CPU.
        cpu: u32,
    },
    /// Kernel BPF statistics could not be enabled.
    #[error("cannot enable kernel BPF statistics: {0}")]
    Stats(String),
    /// The watch maps are full.
    #[error("cannot watch more than {MAX_WATCHED} threads")]
    TooManyWatched,
}

impl SchedProbeError {
    /// Whether this is a lack of privileges (callers skip the source, tests print SKIP).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, SchedProbeError::PermissionDenied(_))
    }
}

fn fmt_failures(failures: &[(AttachMode, String)]) -> String {
    failures
        .iter()
        .map(|(m, r)| format!("{m}: {r}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// An error with its whole `source()` chain, on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Whether `EPERM` appears anywhere in the error chain.
pub(crate) fn has_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Why one attach attempt failed.
struct Failure {
    kind: FailureKind,
    reason: String,
}

#[derive(PartialEq, Eq)]
enum FailureKind {
    /// EPERM creating the maps: no other mode can work either.
    MapsDenied,
    /// EPERM loading or attaching this mode's program.
    ProgramDenied,
    NoBtf,
    Other,
}

impl Failure {
    fn from_err(e: &(dyn std::error::Error + 'static), what: &str) -> Self {
        let kind = if has_eperm(e) {
            FailureKind::ProgramDenied
        } else {
            FailureKind::Other
        };
        Failure {
            kind,
            reason: format!("{what}: {}", chain(e)),
        }
    }

    fn into_error(self, mode: AttachMode) -> SchedProbeError {
        match self.kind {
            FailureKind::MapsDenied | FailureKind::ProgramDenied => {
                SchedProbeError::PermissionDenied(self.reason)
            }
            FailureKind::NoBtf => SchedProbeError::NoBtf(self.reason),
            FailureKind::Other => SchedProbeError::Attach {
                mode,
                reason: self.reason,
            },
        }
    }
}

/// The loaded and attached placement probe. Dropping it detaches the program and frees its maps.
pub struct SchedProbe {
    mode: AttachMode,
    filter: Array<MapData, SwitchFilter>,
    /// The filter entry as last written (userspace is its only writer; 8 KiB, boxed).
    filter_value: Box<SwitchFilter>,
    pins: BpfHashMap<MapData, u32, PinMask>,
    stats: BpfHashMap<MapData, u32, PlacementStats>,
    offpin: PerCpuArray<MapData, u64>,
    dedicated: Array<MapData, DedicatedCpu>,
    stolen: Array<MapData, StolenCpu>,
    /// `stolen` mapped into memory (read without a syscall); `None` where the kernel refused.
    stolen_view: Option<mapped::MappedArray<StolenCpu>>,
    threads: BpfHashMap<MapData, u32, DomainThread>,
    intruders: BpfHashMap<MapData, IntruderKey, IntruderStats>,
    /// Dedicated pCPUs as last written, with their generation.
    owners: HashMap<u32, (CpuOwner, u32)>,
    /// Last generation written per CPU (kept after a CPU stops being dedicated).
    generations: HashMap<u32, u32>,
    /// Domain threads as last written.
    domain_threads: HashMap<u32, DomainThread>,
    /// Watched thread ids.
    watched: HashSet<u32>,
    /// Watched threads per filter bit (word, bit): a bit is cleared when its count drops to 0.
    filter_refs: HashMap<(u32, u32), u32>,
    /// Keeps kernel BPF run-time statistics enabled while loaded (`None` if the kernel refused).
    stats_fd: Option<OwnedFd>,
    /// Owns the loaded program and its link: dropping it detaches the program.
    ebpf: Ebpf,
}

impl fmt::Debug for SchedProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchedProbe")
            .field("mode", &self.mode)
            .field("watched", &self.watched.len())
            .finish_non_exhaustive()
    }
}

impl SchedProbe {
    /// Loads the embedded object and attaches, trying tp_btf, raw_tp, tracepoint in order.
    ///
    /// Errors say why: object not built, permission denied, or every mode's own reason.
    pub fn load() -> Result<SchedProbe, SchedProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(SchedProbeError::NotBuilt);
        }
        let mut failures = Vec::new();
        let mut any_denied = false;
        for mode in AttachMode::ALL {
            match Self::attach(mode) {
                Ok(probe) => return Ok(probe),
                Err(f) if f.kind == FailureKind::MapsDenied => {
                    return Err(SchedProbeError::PermissionDenied(f.reason));
                }
                Err(f) => {
                    any_denied |= f.kind == FailureKind::ProgramDenied;
                    failures.push((mode, f.reason));
                }
            }
        }
        // A mode the kernel refused for lack of privilege is the one to fix (the others may fail
        // for their own reasons, e.g. no tracefs for the classic tracepoint).
        if any_denied {
            return Err(SchedProbeError::PermissionDenied(fmt_failures(&failures)));
        }
        Err(SchedProbeError::AllModesFailed(failures))
    }

    /// Loads the embedded object and attaches in exactly `mode` (tests, benchmarks, `--bpf-mode`).
    pub fn load_with(mode: AttachMode) -> Result<SchedProbe, SchedProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(SchedProbeError::NotBuilt);
        }
        Self::attach(mode).map_err(|f| f.into_error(mode))
    }

    fn attach(mode: AttachMode) -> Result<SchedProbe, Failure> {
        // Everything the program needs from this kernel, before touching BPF.
        let mut task_pid_off = 0u32;
        let task_flags_off: u32;
        let mut tp_next = 0u32;
        let mut kernel_btf = None;
        match mode {
            AttachMode::TpBtf | AttachMode::RawTp => {
                let no_btf = |reason: String| Failure {
                    kind: FailureKind::NoBtf,
                    reason,
                };
                let facts = btf::sched_facts_in_file(Path::new(btf::VMLINUX_BTF))
                    .map_err(|e| no_btf(format!("task_struct.pid: {}", chain(&e))))?;
                let loc = facts.task_pid;
                if loc.size != 4 {
                    return Err(no_btf(format!(
                        "task_struct.pid is {} bytes, expected 4",
                        loc.size
                    )));
                }
                task_pid_off = loc.offset;
                task_flags_off = facts.task_flags.map_or(0, |f| f.offset);
                if mode == AttachMode::TpBtf {
                    // aya only looks the attach target's type id up by name: a stand-in BTF
                    // holding that one name at its kernel id spares parsing all of vmlinux.
                    let id = facts.sched_switch_typedef.ok_or_else(|| {
                        no_btf(format!(
                            "no typedef {} in kernel BTF",
                            btf::SCHED_SWITCH_TYPEDEF
                        ))
                    })?;
                    let stub = btf::typedef_stub(btf::SCHED_SWITCH_TYPEDEF, id);
                    kernel_btf = Some(
                        Btf::parse(&stub, Endianness::default()).map_err(|e| no_btf(chain(&e)))?,
                    );
                }
            }
            AttachMode::Tracepoint => {
                let f = tracefs::read_sched_switch().map_err(|e| Failure {
                    kind: FailureKind::Other,
                    reason: chain(&e),
                })?;
                tp_next = f.next_pid.offset;
                // Best effort: without BTF kernel threads count as `host` intruders.
                task_flags_off = btf::sched_facts_in_file(Path::new(btf::VMLINUX_BTF))
                    .ok()
                    .and_then(|f| f.task_flags)
                    .map_or(0, |f| f.offset);
            }
        }
        // About 16 intruders per CPU (the LRU is split between CPUs).
        let intruders = aya::util::nr_cpus()
            .map_or(layout::MAX_INTRUDERS, |n| {
                u32::try_from(n.saturating_mul(16)).unwrap_or(u32::MAX)
            })
            .clamp(layout::MAX_INTRUDERS, 65536);

        let mut ebpf = loader::new_loader(loader::Probe::Sched)
            .map_max_entries(INTRUDERS_MAP, intruders)
            .override_global(layout::GLOBAL_TASK_PID_OFFSET, &task_pid_off, true)
            .override_global(layout::GLOBAL_TASK_FLAGS_OFFSET, &task_flags_off, true)
            .override_global(layout::GLOBAL_TP_NEXT_PID_OFFSET, &tp_next, true)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                let mut f = Failure::from_err(&e, "loading eBPF object");
                if f.kind == FailureKind::ProgramDenied {
                    f.kind = FailureKind::MapsDenied;
                }
                f
            })?;

        let name = mode.program_name();
        let prog = ebpf.program_mut(name).ok_or_else(|| Failure {
            kind: FailureKind::Other,
            reason: format!("program {name} missing from the eBPF object"),
        })?;
        let step =
            |what: &'static str| move |e: aya::programs::ProgramError| Failure::from_err(&e, what);
        match mode {
            AttachMode::TpBtf => {
                let p: &mut BtfTracePoint = prog.try_into().map_err(step("program type"))?;
                let btf = kernel_btf.as_ref().ok_or_else(|| Failure {
                    kind: FailureKind::NoBtf,
                    reason: "kernel BTF not loaded".to_string(),
                })?;
                p.load("sched_switch", btf)
                    .map_err(step("loading tp_btf program"))?;
                p.attach().map_err(step("attaching tp_btf/sched_switch"))?;
            }
            AttachMode::RawTp => {
                let p: &mut RawTracePoint = prog.try_into().map_err(step("program type"))?;
                p.load().map_err(step("loading raw_tp program"))?;
                p.attach("sched_switch")
                    .map_err(step("attaching raw_tp/sched_switch"))?;
            }
            AttachMode::Tracepoint => {
                let p: &mut TracePoint = prog.try_into().map_err(step("program type"))?;
                p.load().map_err(step("loading tracepoint program"))?;
                p.attach("sched", "sched_switch")
                    .map_err(step("attaching tracepoint sched:sched_switch"))?;
            }
        }

        let take = |ebpf: &mut Ebpf, map: &'static str| {
            ebpf.take_map(map).ok_or_else(|| Failure {
                kind: FailureKind::Other,
                reason: format!("map {map} missing from the eBPF object"),
            })
        };
        let map_err = |map: &'static str| move |e: MapError| Failure::from_err(&e, map);
        let filter = Array::try_from(take(&mut ebpf, FILTER_MAP)?).map_err(map_err(FILTER_MAP))?;
        let pins = BpfHashMap::try_from(take(&mut ebpf, WATCH_MAP)?).map_err(map_err(WATCH_MAP))?;
        let stats =
            BpfHashMap::try_from(take(&mut ebpf, STATS_MAP)?).map_err(map_err(STATS_MAP))?;
        let offpin =
            PerCpuArray::try_from(take(&mut ebpf, OFFPIN_MAP)?).map_err(map_err(OFFPIN_MAP))?;
        let dedicated =
            Array::try_from(take(&mut ebpf, DEDICATED_MAP)?).map_err(map_err(DEDICATED_MAP))?;
        let stolen: Array<MapData, StolenCpu> =
            Array::try_from(take(&mut ebpf, STOLEN_MAP)?).map_err(map_err(STOLEN_MAP))?;
        let stolen_view = mapped::MappedArray::map(
            aya::maps::IterableMap::map(&stolen).fd().as_fd(),
            MAX_CPUS as u32,
        )
        .inspect_err(
            |e| tracing::debug!(error = %e, "cannot map {STOLEN_MAP}; reading it by lookups"),
        )
        .ok();
        let threads =
            BpfHashMap::try_from(take(&mut ebpf, THREADS_MAP)?).map_err(map_err(THREADS_MAP))?;
        let intruders = BpfHashMap::try_from(take(&mut ebpf, INTRUDERS_MAP)?)
            .map_err(map_err(INTRUDERS_MAP))?;
        // Best effort: without it program_stats() reports zeros.
        let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
        Ok(SchedProbe {
            mode,
            filter,
            filter_value: Box::new(bytemuck::Zeroable::zeroed()),
            pins,
            stats,
            offpin,
            dedicated,
            stolen,
            stolen_view,
            threads,
            intruders,
            owners: HashMap::new(),
            generations: HashMap::new(),
            domain_threads: HashMap::new(),
            watched: HashSet::new(),
            filter_refs: HashMap::new(),
            stats_fd,
            ebpf,
        })
    }

    /// The attach mode in use.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Whether this probe holds kernel BPF run-time statistics enabled (else [`Self::program_stats`]
    /// only moves if something else enables them, e.g. `sysctl kernel.bpf_stats_enabled=1`).
    pub fn stats_enabled(&self) -> bool {
        self.stats_fd.is_some()
    }

    /// Turns kernel BPF run-time statistics on or off ([`Self::load`] turns them on). They cost
    /// two clock reads per program run, for every BPF program on the host.
    pub fn set_bpf_stats(&mut self, on: bool) -> Result<(), SchedProbeError> {
        if !on {
            self.stats_fd = None;
        } else if self.stats_fd.is_none() {
            let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .map_err(|e| SchedProbeError::Stats(chain(&e)))?;
            self.stats_fd = Some(fd);
        }
        Ok(())
    }

    /// Thread ids being watched.
    pub fn watched(&self) -> impl Iterator<Item = u32> + '_ {
        self.watched.iter().copied()
    }

    /// Starts watching `tid` with pin set `pin`, or replaces its pin set (counters are kept).
    pub fn watch(&mut self, tid: u32, pin: &CpuSet) -> Result<(), SchedProbeError> {
        if tid == 0 || tid > i32::MAX as u32 {
            return Err(SchedProbeError::InvalidTid(tid));
        }
        if pin.is_empty() {
            return Err(SchedProbeError::EmptyPinSet(tid));
        }
        let mut mask = PinMask {
            words: [0; PIN_WORDS],
        };
        for cpu in pin.iter() {
            let word = mask
                .words
                .get_mut((cpu / 64) as usize)
                .ok_or(SchedProbeError::CpuOutOfRange { tid, cpu })?;
            *word |= 1u64 << (cpu % 64);
        }
        let map_err = |map| move |source| SchedProbeError::Map { map, source };
        if self.watched.contains(&tid) {
            return self.pins.insert(tid, mask, 0).map_err(map_err(WATCH_MAP));
        }
        if self.watched.len() >= MAX_WATCHED as usize {
            return Err(SchedProbeError::TooManyWatched);
        }
        // Stats first (the kernel only updates existing entries), then the pin mask, then the filter.
        self.stats
            .insert(tid, PlacementStats::new(), 0)
            .map_err(map_err(STATS_MAP))?;
        if let Err(e) = self.pins.insert(tid, mask, 0) {
            let _ = self.stats.remove(&tid);
            return Err(map_err(WATCH_MAP)(e));
        }
        let slot = layout::filter_slot(tid);
        let refs = self.filter_refs.get(&slot).copied().unwrap_or(0);
        if refs == 0
            && let Err(e) = self.write_filter_word(tid, true)
        {
            let _ = self.pins.remove(&tid);
            let _ = self.stats.remove(&tid);
            return Err(e);
        }
        self.filter_refs.insert(slot, refs + 1);
        self.watched.insert(tid);
        Ok(())
    }

    /// Stops watching `tid` and drops its counters. Unwatching an unwatched thread is a no-op.
    pub fn unwatch(&mut self, tid: u32) -> Result<(), SchedProbeError> {
        if !self.watched.remove(&tid) {
            return Ok(());
        }
        let slot = layout::filter_slot(tid);
        let refs = self
            .filter_refs
            .get(&slot)
            .copied()
            .unwrap_or(1)
            .saturating_sub(1);
        if refs == 0 {
            self.filter_refs.remove(&slot);
            self.write_filter_word(tid, false)?;
        } else {
            self.filter_refs.insert(slot, refs);
        }
        let ignore_missing = |map| {
            move |r: Result<(), MapError>| match r {
                Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                Err(source) => Err(SchedProbeError::Map { map, source }),
            }
        };
        ignore_missing(WATCH_MAP)(self.pins.remove(&tid))?;
        ignore_missing(STATS_MAP)(self.stats.remove(&tid))
    }

    /// Sets or clears `tid`'s filter bit (the whole entry is written; only userspace writes it).
    fn write_filter_word(&mut self, tid: u32, set: bool) -> Result<(), SchedProbeError> {
        let mut new = *self.filter_value;
        new.set_tid(tid, set);
        self.write_filter(new)
    }

    /// Writes the filter entry (and remembers it once written).
    fn write_filter(&mut self, new: SwitchFilter) -> Result<(), SchedProbeError> {
        self.filter
            .set(0, new, 0)
            .map_err(|source| SchedProbeError::Map {
                map: FILTER_MAP,
                source,
            })?;
        *self.filter_value = new;
        Ok(())
    }

    /// What the kernel measured for `tid`, or `None` if it is not watched.
    pub fn placement(&self, tid: u32) -> Result<Option<VcpuPlacement>, SchedProbeError> {
        if !self.watched.contains(&tid) {
            return Ok(None);
        }
        let s = match self.stats.get(&tid, 0) {
            Ok(s) => s,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(source) => {
                return Err(SchedProbeError::Map {
                    map: STATS_MAP,
                    source,
                });
            }
        };
        let running_ns = if s.last_in_ns == 0 {
            0
        } else {
            monotonic_ns().saturating_sub(s.last_in_ns)
        };
        Ok(Some(VcpuPlacement {
            on_pin_ns: s.on_pin_ns,
            off_pin_ns: s.off_pin_ns,
            migrations: s.migrations,
            switches: s.switches,
            last_cpu: s.last_cpu,
            running_ns,
        }))
    }

    /// How many slices of watched threads the kernel has charged as off-pin time since load
    /// (any change: some thread ran off its pin since the last read).
    pub fn offpin_slices(&self) -> Result<u64, SchedProbeError> {
        let per_cpu = self
            .offpin
            .get(&0, 0)
            .map_err(|source| SchedProbeError::Map {
                map: OFFPIN_MAP,
                source,
            })?;
        Ok(per_cpu.iter().fold(0u64, |a, n| a.wrapping_add(*n)))
    }

    /// What the kernel measured for every watched thread, read in batches of the whole map
    /// (`BPF_MAP_LOOKUP_BATCH`: a few syscalls per tick instead of one per thread). `Err` when
    /// the kernel cannot batch-read the map: the caller falls back to [`Self::placement`].
    pub fn placements(&self) -> std::io::Result<HashMap<u32, VcpuPlacement>> {
        let fd = aya::maps::IterableMap::map(&self.stats).fd().as_fd();
        let entries = batch::lookup_all::<u32, PlacementStats>(fd, self.watched.len())?;
        let now = monotonic_ns();
        Ok(entries
            .into_iter()
            .filter(|(tid, _)| self.watched.contains(tid))
            .map(|(tid, s)| {
                let running_ns = if s.last_in_ns == 0 {
                    0
                } else {
                    now.saturating_sub(s.last_in_ns)
                };
                (
                    tid,
                    VcpuPlacement {
                        on_pin_ns: s.on_pin_ns,
                        off_pin_ns: s.off_pin_ns,
                        migrations: s.migrations,
                        switches: s.switches,
                        last_cpu: s.last_cpu,
                        running_ns,
                    },
                )
            })
            .collect())
    }

    /// Makes exactly `owners` the dedicated pCPUs (CPU -> owner); entries that did not change
    /// are not rewritten (each write restarts that CPU's slice clock). Returns how many CPU
    /// entries could not be written (CPUs at or above [`MAX_CPUS`] are skipped and counted).
    pub fn set_dedicated(&mut self, owners: &HashMap<u32, CpuOwner>) -> u64 {
        let mut errors = 0u64;
        let gone: Vec<u32> = self
            .owners
            .keys()
            .filter(|c| !owners.contains_key(c))
            .copied()
            .collect();
        for cpu in gone {
            self.owners.remove(&cpu);
            errors += u64::from(self.write_owner(cpu, None).is_err());
        }
        for (&cpu, &owner) in owners {
            if self.owners.get(&cpu).map(|(o, _)| *o) == Some(owner) {
                continue;
            }
            match self.write_owner(cpu, Some(owner)) {
                Ok(generation) => {
                    self.owners.insert(cpu, (owner, generation));
                }
                Err(_) => errors += 1,
            }
        }
        // The filter's CPU bits last: a CPU is marked once its owner is written, and unmarked
        // after its entry was cleared (a marked CPU without an owner does nothing).
        let mut new = *self.filter_value;
        new.cpus = PinMask {
            words: [0; PIN_WORDS],
        };
        for &cpu in self.owners.keys() {
            new.set_cpu(cpu, true);
        }
        if new != *self.filter_value && self.write_filter(new).is_err() {
            errors += 1;
        }
        errors
    }

    /// Writes one CPU's owner (or clears it) with a new generation; returns the generation.
    fn write_owner(&mut self, cpu: u32, owner: Option<CpuOwner>) -> Result<u32, SchedProbeError> {
        if cpu as usize >= MAX_CPUS {
            return Err(SchedProbeError::CpuOutOfRange { tid: 0, cpu });
        }
        let generation = self
            .generations
            .get(&cpu)
            .copied()
            .unwrap_or(0)
            .wrapping_add(1);
        self.generations.insert(cpu, generation);
        let value = owner.map_or(DedicatedCpu::default(), |o| DedicatedCpu {
            domain: o.domain,
            owner_tid: o.tid,
            generation,
            _pad: 0,
        });
        self.dedicated
            .set(cpu, value, 0)
            .map_err(|source| SchedProbeError::Map {
                map: DEDICATED_MAP,
                source,
            })?;
        Ok(generation)
    }

    /// Makes exactly `threads` (tid -> domain id, vCPU or not) the known domain threads the
    /// kernel classifies intruders by. Returns how many map writes failed (at most
    /// [`MAX_DOMAIN_THREADS`] threads are kept; the rest count as failed).
    pub fn set_domain_threads(&mut self, threads: &HashMap<u32, (u32, bool)>) -> u64 {
        let mut errors = 0u64;
        let gone: Vec<u32> = self
            .domain_threads
            .keys()
            .filter(|t| !threads.contains_key(t))
            .copied()
            .collect();
        for tid in gone {
            self.domain_threads.remove(&tid);
            errors += u64::from(!matches!(
                self.threads.remove(&tid),
                Ok(()) | Err(MapError::KeyNotFound)
            ));
        }
        for (&tid, &(domain, vcpu)) in threads {
            let value = DomainThread {
                domain,
                vcpu: u32::from(vcpu),
            };
            if self.domain_threads.get(&tid) == Some(&value) {
                continue;
            }
            if self.domain_threads.len() >= MAX_DOMAIN_THREADS as usize
                && !self.domain_threads.contains_key(&tid)
            {
                errors += 1;
                continue;
            }
            match self.threads.insert(tid, value, 0) {
                Ok(()) => {
                    self.domain_threads.insert(tid, value);
                }
                Err(_) => errors += 1,
            }
        }
        errors
    }

    /// Intruder run time on `cpu` by class index, ns, since load (zeros for a CPU never
    /// dedicated).
    pub fn stolen(&self, cpu: u32) -> Result<[u64; INTRUDER_CLASSES], SchedProbeError> {
        if let Some(s) = self.stolen_view.as_ref().and_then(|v| v.get(cpu)) {
            return Ok(s.ns);
        }
        self.stolen
            .get(&cpu, 0)
            .map(|s| s.ns)
            .map_err(|source| SchedProbeError::Map {
                map: STOLEN_MAP,
                source,
            })
    }

    /// Every entry of the kernel's top-intruder table on the CPUs dedicated now.
    /// Read in batches of the whole table where the kernel can (one or two syscalls), else one
    /// key at a time.
    pub fn intruders(&self) -> Result<Vec<Intruder>, SchedProbeError> {
        let fd = aya::maps::IterableMap::map(&self.intruders).fd().as_fd();
        let entries = match batch::lookup_all::<IntruderKey, IntruderStats>(fd, 64) {
            Ok(all) => all,
            Err(_) => {
                let mut all = Vec::new();
                for entry in self.intruders.iter() {
                    match entry {
                        Ok(kv) => all.push(kv),
                        // Evicted between listing and reading: skip it.
                        Err(MapError::KeyNotFound) => continue,
                        Err(source) => {
                            return Err(SchedProbeError::Map {
                                map: INTRUDERS_MAP,
                                source,
                            });
                        }
                    }
                }
                all
            }
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            if !self.owners.contains_key(&k.cpu) {
                continue;
            }
            let end = v.comm.iter().position(|&b| b == 0).unwrap_or(v.comm.len());
            out.push(Intruder {
                cpu: k.cpu,
                tid: k.tid,
                tgid: v.tgid,
                comm: String::from_utf8_lossy(&v.comm[..end]).into_owned(),
                class: layout::IntruderClass::from_index(v.class),
                ns: v.ns,
            });
        }
        Ok(out)
    }

    /// Per program: (name, run_time_ns, run_count) from the kernel's BPF statistics.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let name = self.mode.program_name();
        self.ebpf
            .program(name)
            .and_then(|p| p.info().ok())
            .map(|info| ProgramStats {
                name: name.to_string(),
                run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                run_count: info.run_count(),
            })
            .into_iter()
            .collect()
    }
}
