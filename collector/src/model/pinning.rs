//! Model of libvirt domains (expected placement), their threads (actual placement), and the
//! pinning report the pinning pipeline publishes (its checks, drifts and per-vCPU detail).

use crate::model::cpuset::CpuSet;
use collector_common::sched::{INTRUDER_CLASSES, IntruderClass};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Nova's instance metadata (`<nova:instance>` in the domain XML, namespace 1.1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct NovaInstance {
    /// Display name (`<nova:name>`).
    pub(crate) name: String,
    /// Project (tenant) name.
    pub(crate) project: String,
    /// Project UUID.
    pub(crate) project_id: String,
    /// User name.
    pub(crate) user: String,
    /// User UUID.
    pub(crate) user_id: String,
    /// Flavor name.
    pub(crate) flavor: String,
}

/// One vCPU as libvirt placed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct VcpuSpec {
    /// vCPU index inside the guest.
    pub(crate) id: u32,
    /// Host thread id of the vCPU thread (`<vcpus><vcpu id pid>` in libvirt's live status).
    pub(crate) tid: Option<u32>,
    /// The pinned host CPUs (`<vcpupin>`, or `<vcpu cpuset>` for all vCPUs); `None` = floating.
    pub(crate) pin: Option<CpuSet>,
    /// True when `pin` comes from `<vcpu cpuset>`: a set every vCPU floats over (Nova's shared
    /// policy, `cpu_shared_set`), never a dedicated pCPU even when it holds one CPU.
    pub(crate) shared_set: bool,
    /// `<vcpusched>`: the scheduling policy libvirt set on the thread; `None` = not configured.
    pub(crate) sched: Option<SchedSpec>,
}

/// A thread's scheduling policy as `<vcpusched>`/`<iothreadsched>` set it, or as procfs shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SchedPolicy {
    /// `SCHED_OTHER` (0), libvirt's `other`.
    Other,
    /// `SCHED_FIFO` (1).
    Fifo,
    /// `SCHED_RR` (2).
    Rr,
    /// `SCHED_BATCH` (3).
    Batch,
    /// `SCHED_IDLE` (5).
    Idle,
    /// `SCHED_DEADLINE` (6, never set by libvirt) or an unknown number.
    Unknown(u32),
}

impl SchedPolicy {
    /// The libvirt `scheduler` attribute value.
    pub(crate) fn from_libvirt(s: &str) -> Option<SchedPolicy> {
        Some(match s.trim() {
            "other" => SchedPolicy::Other,
            "fifo" => SchedPolicy::Fifo,
            "rr" => SchedPolicy::Rr,
            "batch" => SchedPolicy::Batch,
            "idle" => SchedPolicy::Idle,
            _ => return None,
        })
    }

    /// The kernel's policy number (`/proc/TID/stat` field 41).
    pub(crate) fn from_kernel(n: u32) -> SchedPolicy {
        match n {
            0 => SchedPolicy::Other,
            1 => SchedPolicy::Fifo,
            2 => SchedPolicy::Rr,
            3 => SchedPolicy::Batch,
            5 => SchedPolicy::Idle,
            n => SchedPolicy::Unknown(n),
        }
    }

    /// Whether the policy is a real-time one (with a priority).
    pub(crate) fn is_realtime(self) -> bool {
        matches!(self, SchedPolicy::Fifo | SchedPolicy::Rr)
    }
}

impl fmt::Display for SchedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchedPolicy::Other => f.write_str("other"),
            SchedPolicy::Fifo => f.write_str("fifo"),
            SchedPolicy::Rr => f.write_str("rr"),
            SchedPolicy::Batch => f.write_str("batch"),
            SchedPolicy::Idle => f.write_str("idle"),
            SchedPolicy::Unknown(n) => write!(f, "policy{n}"),
        }
    }
}

/// A scheduling policy and, for `fifo`/`rr`, its priority: `<vcpusched scheduler priority>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct SchedSpec {
    /// The policy.
    pub(crate) policy: SchedPolicy,
    /// The real-time priority (1–99) for `fifo`/`rr`; `None` otherwise.
    pub(crate) priority: Option<u32>,
}

impl fmt::Display for SchedSpec {
    /// `fifo:1`, or the policy alone when it has no priority (`batch`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.priority {
            Some(p) if self.policy.is_realtime() => write!(f, "{}:{p}", self.policy),
            _ => write!(f, "{}", self.policy),
        }
    }
}

/// One QEMU I/O thread (`<iothreads>`, `<iothreadids>`) and its pin (`<iothreadpin>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct IothreadSpec {
    /// The iothread id: QEMU names the thread `IO iothreadN`, libvirt its cgroup `iothreadN`.
    pub(crate) id: u32,
    /// `<iothreadpin cpuset>`; `None` = not pinned (it then runs with the emulator threads).
    pub(crate) pin: Option<CpuSet>,
    /// `<iothreadsched>`, if any.
    pub(crate) sched: Option<SchedSpec>,
}

impl IothreadSpec {
    /// The `vcpu` label of its drifts and the name of its cgroup: `iothreadN`.
    pub(crate) fn label(&self) -> String {
        format!("iothread{}", self.id)
    }

    /// The thread name QEMU gives it (`IO iothreadN`; comm is cut at 15 bytes by the kernel).
    pub(crate) fn comm(&self) -> String {
        let mut c = format!("IO iothread{}", self.id);
        c.truncate(15);
        c
    }
}

/// How `<numatune>` binds guest memory (`mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NumaMode {
    /// Only the nodeset (libvirt's default mode).
    Strict,
    /// Prefer the nodeset, spill elsewhere when it is full (not a drift).
    Preferred,
    /// Spread over the nodeset.
    Interleave,
    /// Only the nodeset, enforced by cgroup `cpuset.mems` alone.
    Restrictive,
}

impl NumaMode {
    /// The libvirt `mode` attribute value (absent = strict).
    pub(crate) fn from_libvirt(s: Option<&str>) -> Option<NumaMode> {
        Some(match s.map(str::trim) {
            None | Some("strict") => NumaMode::Strict,
            Some("preferred") => NumaMode::Preferred,
            Some("interleave") => NumaMode::Interleave,
            Some("restrictive") => NumaMode::Restrictive,
            Some(_) => return None,
        })
    }

    /// Whether memory outside the nodeset is a fault (every mode but `preferred`).
    pub(crate) fn binding(self) -> bool {
        self != NumaMode::Preferred
    }
}

/// One `<numatune>` binding: `<memory mode nodeset>` or `<memnode cellid mode nodeset>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct NumaBinding {
    /// The mode.
    pub(crate) mode: NumaMode,
    /// Host NUMA nodes (a node list, same syntax as a CPU list).
    pub(crate) nodeset: CpuSet,
}

/// One guest NUMA cell (`<cpu><numa><cell id cpus memory>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct GuestCell {
    /// Cell id (`memnode cellid` refers to it).
    pub(crate) id: u32,
    /// The vCPU ids of the cell.
    pub(crate) vcpus: CpuSet,
    /// Guest memory of the cell, bytes.
    pub(crate) memory_bytes: u64,
}

/// The domain's NUMA placement as libvirt configured it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct NumaSpec {
    /// `<numatune><memory>`: the whole domain's memory.
    pub(crate) memory: Option<NumaBinding>,
    /// `<numatune><memnode>` by guest cell id.
    pub(crate) memnodes: BTreeMap<u32, NumaBinding>,
    /// The guest's NUMA cells.
    pub(crate) cells: Vec<GuestCell>,
}

impl NumaSpec {
    /// Host nodes the domain's memory may be on, when some binding restricts it (every binding
    /// but `preferred`): the union of the bindings' nodesets.
    pub(crate) fn allowed_nodes(&self) -> Option<CpuSet> {
        let mut any = false;
        let mut nodes = CpuSet::new();
        for b in self.memory.iter().chain(self.memnodes.values()) {
            if b.mode.binding() {
                any = true;
                for n in b.nodeset.iter() {
                    nodes.insert(n);
                }
            }
        }
        any.then_some(nodes)
    }

    /// The host nodes the memory of vCPU `vcpu`'s guest cell is bound to: its cell's
    /// `<memnode>`, else `<memory>`; `None` when neither binds it.
    pub(crate) fn vcpu_nodes(&self, vcpu: u32) -> Option<&CpuSet> {
        let cell = self.cells.iter().find(|c| c.vcpus.contains(vcpu));
        let binding = cell
            .and_then(|c| self.memnodes.get(&c.id))
            .or(self.memory.as_ref())?;
        binding.mode.binding().then_some(&binding.nodeset)
    }
}

/// Where the domain's emulator (non-vCPU) threads may run.
pub(crate) type EmulatorPin = Option<CpuSet>;

/// A network interface of the domain (for joining OVS ports to instances).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct InterfaceSpec {
    /// Host-side device name (`<target dev>`), e.g. `tap1234abcd-ef`.
    pub(crate) target_dev: String,
    /// Guest MAC address.
    pub(crate) mac: String,
}

/// A running libvirt domain as read from libvirt's live status XML.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Domain {
    /// libvirt domain name (e.g. `instance-0000002a`): the `domain` label.
    pub(crate) name: String,
    /// Domain UUID (Nova's instance UUID).
    pub(crate) uuid: String,
    /// libvirt's numeric domain id of this run (changes on every start).
    pub(crate) id: Option<u32>,
    /// QEMU process id.
    pub(crate) pid: Option<u32>,
    /// Nova metadata, when the domain carries it.
    pub(crate) nova: Option<NovaInstance>,
    /// vCPUs in index order.
    pub(crate) vcpus: Vec<VcpuSpec>,
    /// `<emulatorpin cpuset>`, else `<vcpu cpuset>` (where libvirt then puts the emulator threads);
    /// `None` when neither is set.
    pub(crate) emulator_pin: EmulatorPin,
    /// Network interfaces.
    pub(crate) interfaces: Vec<InterfaceSpec>,
    /// I/O threads, by id.
    pub(crate) iothreads: Vec<IothreadSpec>,
    /// `<numatune>` and the guest NUMA cells.
    pub(crate) numa: NumaSpec,
}

impl Domain {
    /// Whether any vCPU is pinned with `<vcpupin>` (a floating `<vcpu cpuset>` is no pin).
    #[cfg(test)]
    pub(crate) fn is_pinned(&self) -> bool {
        self.vcpus.iter().any(|v| v.pin.is_some() && !v.shared_set)
    }
}

/// Actual state of one host thread, from procfs and cgroupfs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ThreadState {
    /// Thread id.
    pub tid: u32,
    /// Thread name (`CPU 0/KVM`, `qemu-system-x86`, …).
    pub comm: String,
    /// CPUs the scheduler may use (`Cpus_allowed_list`).
    pub affinity: CpuSet,
    /// CPU the thread last ran on (`/proc/TID/stat` field 39).
    pub last_cpu: Option<u32>,
    /// The thread's cpuset cgroup path relative to the cpuset hierarchy root (v1) or unified root (v2).
    pub cgroup: Option<String>,
    /// The `cpuset.cpus` of that cgroup (v2: the effective set when `cpuset.cpus` is empty).
    pub cgroup_cpus: Option<CpuSet>,
    /// Time spent on a CPU, ns (`/proc/TID/schedstat` field 1).
    pub run_ns: u64,
    /// Time spent runnable but waiting for a CPU, ns (`schedstat` field 2).
    pub wait_ns: u64,
    /// Kernel code, not QEMU's (`/proc/TID/stat` flags): a kernel thread (`PF_KTHREAD`) or a
    /// kernel worker living in the QEMU process (`PF_USER_WORKER`) other than a vhost I/O worker,
    /// such as `kvm-nx-lpage-recovery` (a thread of the VM process since Linux 6.13).
    pub kernel_worker: bool,
    /// Scheduling policy number (`/proc/TID/stat` field 41); `None` when the kernel omits it.
    pub policy: Option<u32>,
    /// Real-time priority (`stat` field 40): 1–99 for `SCHED_FIFO`/`SCHED_RR`, else 0.
    pub rt_priority: u32,
}

/// One pinning check (the `check` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Thread affinity differs from the pin set.
    Affinity,
    /// The thread's cgroup `cpuset.cpus` differs from the pin set.
    Cpuset,
    /// The vCPU thread is not in its domain's `vcpuN` cgroup.
    Cgroup,
    /// The thread ran on pCPUs outside its pin set during the last window (eBPF).
    Placement,
    /// The thread may run on a pCPU dedicated to another domain.
    Overlap,
    /// The thread's scheduling policy or priority differs from `<vcpusched>`/`<iothreadsched>`.
    SchedPolicy,
    /// Memory on host NUMA nodes outside `<numatune>`'s nodeset (beyond the tolerance), or a
    /// vCPU pinned to pCPUs of another host node than its guest cell's memory.
    Numa,
    /// Other tasks took more than `[pinning] stolen_share` of the vCPU's dedicated pCPU during
    /// the last window (eBPF).
    Stolen,
}

impl Check {
    /// Every check, in label order.
    pub const ALL: [Check; 8] = [
        Check::Affinity,
        Check::Cpuset,
        Check::Cgroup,
        Check::Placement,
        Check::Overlap,
        Check::SchedPolicy,
        Check::Numa,
        Check::Stolen,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Affinity => "affinity",
            Check::Cpuset => "cpuset",
            Check::Cgroup => "cgroup",
            Check::Placement => "placement",
            Check::Overlap => "overlap",
            Check::SchedPolicy => "sched_policy",
            Check::Numa => "numa",
            Check::Stolen => "stolen",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a vCPU's pin is (`pinflow pinning`'s `PIN` column, `kind` in the JSON and in
/// `pinflow_domain_vcpus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PinKind {
    /// `<vcpupin>` to one pCPU that no other vCPU is pinned to (Nova's dedicated policy).
    Dedicated,
    /// `<vcpupin>` to several pCPUs, or to a pCPU other vCPUs are pinned to as well.
    Shared,
    /// `<vcpu cpuset>`: a set the vCPU floats over with others (Nova's shared policy); never a
    /// dedicated pCPU, even a one-CPU set.
    Floating,
    /// No pin at all: the vCPU may run anywhere.
    None,
}

impl PinKind {
    /// Every kind, in label order.
    pub(crate) const ALL: [PinKind; 4] = [
        PinKind::Dedicated,
        PinKind::Shared,
        PinKind::Floating,
        PinKind::None,
    ];

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PinKind::Dedicated => "dedicated",
            PinKind::Shared => "shared",
            PinKind::Floating => "floating",
            PinKind::None => "none",
        }
    }

    /// Whether the vCPU is pinned with `<vcpupin>` (dedicated or shared).
    pub(crate) fn is_vcpupin(self) -> bool {
        matches!(self, PinKind::Dedicated | PinKind::Shared)
    }
}

impl fmt::Display for PinKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// eBPF placement of one thread, as seen by the detector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct PlacementSample {
    /// CPU time on pCPUs outside the pin set since the thread was first watched, ns.
    pub(crate) offpin_ns_total: u64,
    /// The part of `offpin_ns_total` accrued during the current detection window, ns.
    pub(crate) offpin_ns_window: u64,
    /// Migrations between pCPUs since first watched.
    pub(crate) migrations_total: u64,
    /// CPU the thread was last switched in on.
    pub(crate) last_cpu: u32,
}

/// Label values of the intruder classes, by class index (`collector_common::sched::IntruderClass`).
pub(crate) const INTRUDER_LABELS: [&str; INTRUDER_CLASSES] = [
    IntruderClass::ALL[0].as_str(),
    IntruderClass::ALL[1].as_str(),
    IntruderClass::ALL[2].as_str(),
    IntruderClass::ALL[3].as_str(),
    IntruderClass::ALL[4].as_str(),
];

/// Intrusions on one pCPU dedicated to a vCPU of the domain (eBPF), as seen by the detector.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct StolenSample {
    /// The owner vCPU's thread id.
    pub(crate) vcpu_tid: u32,
    /// Intruders' run time on the pCPU while dedicated to this domain, by class index, ns.
    pub(crate) ns_total: [u64; INTRUDER_CLASSES],
    /// The part of `ns_total` within the window, by class index, ns.
    pub(crate) ns_window: [u64; INTRUDER_CLASSES],
    /// Length of the window those cover, ns (shorter than configured right after dedication).
    pub(crate) window_ns: u64,
    /// `[pinning] stolen_share`: the share of the window above which the vCPU drifts.
    pub(crate) limit: f64,
}

impl StolenSample {
    /// Share of the pCPU others took within the window (0 for an empty window).
    pub(crate) fn window_share(&self) -> f64 {
        if self.window_ns == 0 {
            return 0.0;
        }
        self.ns_window.iter().sum::<u64>() as f64 / self.window_ns as f64
    }

    /// The `stolen` check's verdict: the top class while the window's share is above the limit
    /// (`None`: no drift; a limit of 1, the whole pCPU, switches the check off).
    pub(crate) fn drift(&self) -> Option<&'static str> {
        if self.limit >= 1.0 || self.window_share() <= self.limit {
            return None;
        }
        self.top_class()
    }

    /// The class that took the most within the window (`None` when nothing did).
    pub(crate) fn top_class(&self) -> Option<&'static str> {
        let (i, ns) = self
            .ns_window
            .iter()
            .enumerate()
            .max_by_key(|(i, ns)| (**ns, std::cmp::Reverse(*i)))?;
        (*ns > 0).then(|| INTRUDER_LABELS.get(i).copied().unwrap_or("host"))
    }
}

/// Everything observed about one running domain.
#[derive(Clone, Debug, Default)]
pub(crate) struct DomainObservation {
    /// libvirt's view (expected placement).
    pub(crate) domain: Option<Domain>,
    /// Actual state of the QEMU process's threads (vCPU and emulator threads), by tid.
    pub(crate) threads: BTreeMap<u32, ThreadState>,
    /// cgroup path of the QEMU main thread (libvirt puts it in `<domain cgroup>/emulator`).
    pub(crate) main_cgroup: Option<String>,
    /// eBPF placement per watched vCPU tid; empty when the sched probe is not running.
    pub(crate) placement: BTreeMap<u32, PlacementSample>,
    /// Intrusions per pCPU dedicated to one of its vCPUs; empty without the sched probe.
    pub(crate) stolen: BTreeMap<u32, StolenSample>,
    /// The domain's NUMA memory placement, read at full passes no more often than
    /// `reconcile_seconds`; `None` when not (yet) read.
    pub(crate) numa: Option<NumaObservation>,
}

/// Where a domain's memory actually is, and the host's NUMA layout it is judged against.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct NumaObservation {
    /// The domain cgroup's `cpuset.mems` (v2: `cpuset.mems.effective` when empty).
    pub(crate) mems: Option<CpuSet>,
    /// The domain's memory per host node, bytes (cgroup `memory.numa_stat`).
    pub(crate) node_bytes: BTreeMap<u32, u64>,
    /// The host's CPUs per NUMA node (`/sys/devices/system/node/nodeN/cpulist`).
    pub(crate) node_cpus: BTreeMap<u32, CpuSet>,
    /// Memory on nodes outside the nodeset above which the `numa` check drifts, bytes.
    pub(crate) tolerance_bytes: u64,
}

/// A drift of one vCPU (or the emulator threads) for one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Drift {
    /// Which check.
    pub(crate) check: Check,
    /// vCPU index, `emulator`, `iothreadN`, or `memory` (the `numa` check of the domain's memory).
    pub(crate) vcpu: String,
    /// What libvirt/Nova expect (CPU list, cgroup name…).
    pub(crate) expected: String,
    /// What pinflow found. For `overlap`: the foreign dedicated pCPUs the thread(s) may run on
    /// and at most three of their owners, sorted (`"0-1 (a, b, c +2 more)"`),
    /// so the label stays short and does not change when unrelated domains come and go.
    pub(crate) actual: String,
    /// For `overlap`: the owners with their pCPUs the thread(s) may run on, in name order, at
    /// most [`MAX_LISTED_OWNERS`] of them.
    #[serde(skip_serializing_if = "OverlapOwners::is_empty")]
    pub(crate) owners: OverlapOwners,
    /// For `overlap`: how many more owners there are than `owners` lists.
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) more_owners: usize,
}

/// Whether a count is zero (serde's `skip_serializing_if`).
fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A domain owning dedicated pCPUs another domain's thread may run on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct OverlapOwner {
    /// The owner's libvirt domain name.
    pub(crate) domain: String,
    /// Its dedicated pCPUs within the overlapping thread's reach.
    pub(crate) cpus: CpuSet,
}

/// The owners an `overlap` drift lists: the first owners of what the thread may reach, less
/// the drift's own domain. In an overlap storm (every dedicated pCPU claimed by many domains)
/// hundreds of drifts list nearly the same owners, so the list is shared and each drift only
/// says which entry is its own domain.
#[derive(Clone, Debug, Default)]
pub(crate) struct OverlapOwners {
    /// Every owner reached, in name order.
    reach: Arc<[OverlapOwner]>,
    /// The drift's own domain among them.
    skip: Option<usize>,
}

impl OverlapOwners {
    /// The owners of `reach` except the one at `skip`, at most [`MAX_LISTED_OWNERS`] of them.
    pub(crate) fn new(reach: Arc<[OverlapOwner]>, skip: Option<usize>) -> Self {
        Self { reach, skip }
    }

    /// The owners listed, in name order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &OverlapOwner> {
        self.reach
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != self.skip)
            .map(|(_, o)| o)
            .take(MAX_LISTED_OWNERS)
    }

    /// Whether none is.
    pub(crate) fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl PartialEq for OverlapOwners {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for OverlapOwners {}

impl Serialize for OverlapOwners {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// Most owners an `overlap` drift's `actual` label names (the rest are counted as `+N more`).
pub(crate) const MAX_LABELLED_OWNERS: usize = 3;
/// Most owners an `overlap` drift lists with their pCPUs (`/api/v1/pinning`, `pinflow pinning`);
/// the rest are counted. A pCPU that many domains claim must not cost memory per pair.
pub(crate) const MAX_LISTED_OWNERS: usize = 16;

/// One vCPU's expected and actual placement.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct VcpuReport {
    /// vCPU index.
    pub(crate) vcpu: u32,
    /// Host thread id.
    pub(crate) tid: Option<u32>,
    /// What the pin is.
    pub(crate) kind: PinKind,
    /// Pin set from libvirt (`<vcpupin>`, or `<vcpu cpuset>` when floating; `None` = no pin).
    pub(crate) pin: Option<CpuSet>,
    /// Thread affinity.
    pub(crate) affinity: Option<CpuSet>,
    /// cgroup `cpuset.cpus`.
    pub(crate) cgroup_cpus: Option<CpuSet>,
    /// cgroup path.
    pub(crate) cgroup: Option<String>,
    /// Last CPU the thread ran on.
    pub(crate) last_cpu: Option<u32>,
    /// Off-pin CPU time since watched (eBPF), seconds.
    pub(crate) offpin_seconds: Option<f64>,
}

/// Findings for one domain.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct DomainReport {
    /// libvirt domain name.
    pub(crate) domain: String,
    /// Domain UUID.
    pub(crate) uuid: String,
    /// Nova metadata, if any.
    pub(crate) nova: Option<NovaInstance>,
    /// Whether any vCPU is pinned with `<vcpupin>` (dedicated or shared; never for a floating
    /// `<vcpu cpuset>`).
    pub(crate) pinned: bool,
    /// Drifted vCPU count per check (every check present).
    pub(crate) drifted_vcpus: BTreeMap<Check, u32>,
    /// Every current drift (shared: a report republished with fresh counters does not copy
    /// them).
    pub(crate) drifts: std::sync::Arc<[Drift]>,
    /// Per-vCPU detail.
    pub(crate) vcpus: Vec<VcpuReport>,
    /// Sum over vCPU threads of off-pin CPU time (eBPF), seconds; `None` without the probe.
    pub(crate) offpin_seconds_total: Option<f64>,
    /// Sum over vCPU threads of migrations (eBPF); `None` without the probe.
    pub(crate) migrations_total: Option<u64>,
    /// Sum over vCPU threads of run-queue wait time (schedstat), seconds.
    pub(crate) wait_seconds_total: f64,
    /// The domain's memory per host NUMA node, bytes (cgroup `memory.numa_stat`); `None`
    /// before it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) numa_memory_bytes: Option<BTreeMap<u32, u64>>,
    /// The domain cgroup's `cpuset.mems`, when read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) numa_mems: Option<CpuSet>,
    /// Intrusions on each pCPU dedicated to one of its vCPUs (eBPF), by CPU.
    pub(crate) stolen: Vec<PcpuStolen>,
}

/// Intrusions on one pCPU dedicated to a vCPU (`pinflow_pcpu_stolen_seconds_total`).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PcpuStolen {
    /// The dedicated pCPU.
    pub(crate) cpu: u32,
    /// The owner vCPU's index.
    pub(crate) vcpu: Option<u32>,
    /// Intruders' run time since dedicated, seconds, per class seen (non-zero) only.
    pub(crate) seconds_total: BTreeMap<&'static str, f64>,
    /// Share of the pCPU others took within the placement window.
    pub(crate) window_share: f64,
}

/// `/api/v1/intrusions`: who ran on each dedicated pCPU besides its owner, over the last window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct IntrusionsReport {
    /// The window, seconds (`[pinning] placement_window_seconds`).
    pub(crate) window_seconds: f64,
    /// `[pinning] stolen_share`.
    pub(crate) stolen_share_limit: f64,
    /// One entry per dedicated pCPU, by CPU.
    pub(crate) pcpus: Vec<PcpuIntrusions>,
}

/// Intrusions on one dedicated pCPU over the window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct PcpuIntrusions {
    /// The pCPU.
    pub(crate) cpu: u32,
    /// The owner's libvirt domain name.
    pub(crate) domain: String,
    /// The owner vCPU's index.
    pub(crate) vcpu: Option<u32>,
    /// The owner vCPU's thread id.
    pub(crate) vcpu_tid: u32,
    /// Share of the pCPU intruders took within the window.
    pub(crate) stolen_share: f64,
    /// Intruders' run time within the window per class, seconds (classes seen only).
    pub(crate) stolen_seconds: BTreeMap<&'static str, f64>,
    /// The top intruders within the window, most first (at most [`MAX_TOP_INTRUDERS`]).
    pub(crate) top: Vec<IntruderReport>,
}

/// Most intruders listed per pCPU in `/api/v1/intrusions`.
pub(crate) const MAX_TOP_INTRUDERS: usize = 5;

/// One task that ran on a dedicated pCPU within the window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct IntruderReport {
    /// Process id.
    pub(crate) pid: u32,
    /// Thread id.
    pub(crate) tid: u32,
    /// Thread name.
    pub(crate) comm: String,
    /// Its class (the `intruder` label value).
    pub(crate) class: &'static str,
    /// Run time on the pCPU within the window, seconds.
    pub(crate) seconds: f64,
}

/// The detector's output for the whole host.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct PinningReport {
    /// One report per running domain, sorted by domain name.
    pub(crate) domains: Vec<DomainReport>,
    /// vCPUs pinned with `<vcpupin>` (of all domains) per host CPU; only CPUs with at least one.
    /// Floating vCPUs (`<vcpu cpuset>`) are not pinned and not counted.
    pub(crate) pcpu_pinned_vcpus: BTreeMap<u32, u32>,
    /// The host's NUMA nodes with their huge-page pools (read with the domains' NUMA
    /// placement, at most every `reconcile_seconds`); empty before the first read.
    pub(crate) numa_nodes: Vec<HostNode>,
    /// How the pipeline read procfs, and how much, since start (`pinflow_pinning_*`).
    pub(crate) passes: PinningPasses,
    /// The evaluation the findings (domains, their vCPU kinds and drifts) come from: each
    /// evaluation takes a new one ([`next_findings_version`]), a refresh of the counters keeps
    /// it, so the exposition re-encodes the findings only when they may have changed.
    #[serde(skip)]
    pub(crate) findings_version: u64,
}

impl PinningReport {
    /// Whether `self` shows the findings `other` shows: the same domains with their identity and
    /// Nova metadata, their vCPUs' kinds, the drifted-vCPU counts, and every drift with its check,
    /// vCPU, expectation, finding and overlap owners (what the exposition's findings section is
    /// made of). A new evaluation that finds what the last one found keeps its
    /// `findings_version`, so a scrape does not encode the same findings again.
    pub(crate) fn same_findings(&self, other: &PinningReport) -> bool {
        let same_domain = |a: &DomainReport, b: &DomainReport| {
            a.domain == b.domain
                && a.uuid == b.uuid
                && a.nova == b.nova
                && a.pinned == b.pinned
                && a.drifted_vcpus == b.drifted_vcpus
                && a.vcpus.len() == b.vcpus.len()
                && a.vcpus.iter().zip(&b.vcpus).all(|(x, y)| x.kind == y.kind)
                && a.drifts == b.drifts
        };
        self.domains.len() == other.domains.len()
            && self
                .domains
                .iter()
                .zip(&other.domains)
                .all(|(a, b)| same_domain(a, b))
    }
}

/// A findings version no report of this process had before.
pub(crate) fn next_findings_version() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// One host NUMA node (`/sys/devices/system/node/nodeN`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct HostNode {
    /// Node number.
    pub(crate) node: u32,
    /// Its CPUs (`cpulist`).
    pub(crate) cpus: CpuSet,
    /// Its huge-page pools, by page size.
    pub(crate) hugepages: Vec<HugepagePool>,
}

/// One huge-page pool of a node (`hugepages/hugepages-<KiB>kB`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct HugepagePool {
    /// Page size, bytes.
    pub(crate) size_bytes: u64,
    /// Pages in the pool (`nr_hugepages`).
    pub(crate) total: u64,
    /// Pages not in use (`free_hugepages`).
    pub(crate) free: u64,
}

/// How the pinning pipeline reads procfs/cgroupfs: on kernel events or by polling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PinningMode {
    /// eBPF affinity/cgroup events and cgroup inotify wake re-reads of just the threads
    /// involved; a full pass only every `reconcile_seconds` (and on libvirt changes).
    Events,
    /// A full pass every `interval_seconds` (event programs off or unavailable).
    #[default]
    Polling,
}

/// The pinning pipeline's passes since start (monotonic counters).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct PinningPasses {
    /// The mode running.
    pub(crate) mode: PinningMode,
    /// Why the pipeline polls although events were asked for (`None` otherwise).
    pub(crate) fallback_reason: Option<String>,
    /// Passes that read every thread of every domain.
    pub(crate) full: u64,
    /// Passes that re-read only the threads or domains an event named.
    pub(crate) targeted: u64,
    /// Thread state reads (each: stat, the affinity, cgroup, a vCPU thread's schedstat; a cgroup's cpuset file once per pass).
    pub(crate) thread_reads: u64,
}
