//! Pinning drift detector: compares where libvirt placed each vCPU with where it actually is.
//!
//! Pure: input is one [`DomainObservation`] per running domain (libvirt's live XML + procfs/cgroupfs +
//! eBPF placement), output a [`PinningReport`]. The checks are DESIGN.md's table, one file each
//! (`affinity`, `cpuset`, `cgroup`, `placement`, `overlap`, `sched_policy`, `numa`, `stolen`): a
//! check is a [`Check`] variant plus one function `check(domain, subject) -> Option<Finding>`
//! registered in `run`. This driver runs every check of [`Check::ALL`] on every vCPU, then on every
//! pinned I/O thread, the emulator threads and the domain's memory, in that order.

mod affinity;
mod cgroup;
mod cpuset;
mod numa;
mod overlap;
pub(crate) mod placement;
mod sched;
mod stolen;
#[cfg(test)]
mod tests;

use crate::model::cpuset::CpuSet;
use crate::model::pinning::{
    Check, DomainObservation, DomainReport, Drift, INTRUDER_LABELS, IothreadSpec, OverlapOwners,
    PcpuStolen, PinKind, PinningReport, PlacementSample, SchedSpec, VcpuReport,
};
use crate::model::{Domain, ThreadState, VcpuSpec};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What every check may read of one domain, and of the host around it.
pub(super) struct DomainView<'a> {
    /// The observation (threads, cgroups, eBPF placement).
    obs: &'a DomainObservation,
    /// libvirt's view of the domain.
    domain: &'a Domain,
    /// Owners of each dedicated pCPU of the host ([`dedicated_pcpus`]).
    owners: &'a overlap::PcpuOwners,
}

/// One vCPU as libvirt placed it and as it is.
#[derive(Clone, Copy)]
pub(super) struct VcpuView<'a> {
    /// libvirt's spec (id, tid, pin).
    spec: &'a VcpuSpec,
    /// Its thread's actual state, when read.
    state: Option<&'a ThreadState>,
    /// Its eBPF placement, when the probe watches it.
    placement: Option<&'a PlacementSample>,
}

/// One pinned I/O thread as libvirt placed it and as it is.
#[derive(Clone, Copy)]
pub(super) struct IothreadView<'a> {
    /// libvirt's spec (id, pin).
    spec: &'a IothreadSpec,
    /// Its thread's actual state (found by its name, `IO iothreadN`), when read.
    state: Option<&'a ThreadState>,
}

/// What one check looks at: one vCPU thread, one pinned I/O thread, all emulator threads of the
/// domain together, or the domain's memory.
#[derive(Clone, Copy)]
pub(super) enum Subject<'a> {
    /// One vCPU (the drift's `vcpu` is its index).
    Vcpu(VcpuView<'a>),
    /// One I/O thread with an `<iothreadpin>` (the drift's `vcpu` is `iothreadN`).
    Iothread(IothreadView<'a>),
    /// The emulator threads (the drift's `vcpu` is `emulator`).
    Emulator,
    /// The domain's memory (the drift's `vcpu` is `memory`; only the `numa` check).
    Memory,
}

impl<'a> Subject<'a> {
    /// The vCPU, for checks that only look at vCPUs (`let v = subject.vcpu()?;`).
    fn vcpu(&self) -> Option<&VcpuView<'a>> {
        match self {
            Subject::Vcpu(v) => Some(v),
            _ => None,
        }
    }

    /// A pinned thread (a vCPU or an I/O thread): its pin and its state, when both are known.
    fn pinned_thread(&self) -> Option<(&'a CpuSet, &'a ThreadState)> {
        match self {
            Subject::Vcpu(v) => Some((v.spec.pin.as_ref()?, v.state?)),
            Subject::Iothread(t) => Some((t.spec.pin.as_ref()?, t.state?)),
            _ => None,
        }
    }

    /// The thread's libvirt cgroup leaf (`vcpuN`, `iothreadN`) and its state.
    fn cgroup_leaf(&self) -> Option<(String, &'a ThreadState)> {
        match self {
            Subject::Vcpu(v) => Some((format!("vcpu{}", v.spec.id), v.state?)),
            Subject::Iothread(t) => Some((t.spec.label(), t.state?)),
            _ => None,
        }
    }

    /// The scheduling policy libvirt set on the thread, and its state.
    fn sched(&self) -> Option<(&'a SchedSpec, &'a ThreadState)> {
        match self {
            Subject::Vcpu(v) => Some((v.spec.sched.as_ref()?, v.state?)),
            Subject::Iothread(t) => Some((t.spec.sched.as_ref()?, t.state?)),
            _ => None,
        }
    }
}

/// The thread of I/O thread `spec` among the QEMU process's threads (by its name).
fn iothread_state<'a>(obs: &'a DomainObservation, spec: &IothreadSpec) -> Option<&'a ThreadState> {
    let comm = spec.comm();
    obs.threads
        .values()
        .find(|t| t.comm == comm && !t.kernel_worker)
}

/// What a check found wrong with a subject (the [`Drift`] without its check and subject).
pub(super) struct Finding {
    expected: String,
    actual: String,
    owners: OverlapOwners,
    more_owners: usize,
}

impl Finding {
    /// A finding with no overlap owners.
    fn new(expected: impl ToString, actual: impl ToString) -> Finding {
        Finding {
            expected: expected.to_string(),
            actual: actual.to_string(),
            owners: OverlapOwners::default(),
            more_owners: 0,
        }
    }
}

/// Runs one check on one subject: the registry of checks (one line per [`Check`]).
fn run(check: Check, d: &DomainView<'_>, s: &Subject<'_>) -> Option<Finding> {
    match check {
        Check::Affinity => affinity::check(d, s),
        Check::Cpuset => cpuset::check(d, s),
        Check::Cgroup => cgroup::check(d, s),
        Check::Placement => placement::check(d, s),
        Check::Overlap => overlap::check(d, s),
        Check::SchedPolicy => sched::check(d, s),
        Check::Numa => numa::check(d, s),
        Check::Stolen => stolen::check(d, s),
    }
}

/// Every check's drift for `s`, in [`Check::ALL`] order; `vcpu` labels them.
fn drifts<'a>(d: &'a DomainView<'a>, s: Subject<'a>, vcpu: String) -> impl Iterator<Item = Drift> {
    Check::ALL.into_iter().filter_map(move |check| {
        run(check, d, &s).map(|f| Drift {
            check,
            vcpu: vcpu.clone(),
            expected: f.expected,
            actual: f.actual,
            owners: f.owners,
            more_owners: f.more_owners,
        })
    })
}

/// Owner of each dedicated pCPU: a pCPU some vCPU is pinned to alone (`<vcpupin cpuset='N'>`).
fn dedicated_pcpus(obs: &[DomainObservation]) -> BTreeMap<u32, BTreeSet<String>> {
    let mut owners: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for d in obs.iter().filter_map(|o| o.domain.as_ref()) {
        for v in &d.vcpus {
            if let Some(pin) = &v.pin
                && pin.len() == 1
                && !v.shared_set
            {
                for cpu in pin.iter() {
                    owners.entry(cpu).or_default().insert(d.name.clone());
                }
            }
        }
    }
    owners
}

/// The threads of each observation (in `obs` order) whose affinity can change a check's
/// outcome: the ones an events-mode tick re-reads. A thread's affinity always lies within its
/// cpuset cgroup's CPUs (`sched_setaffinity(2)` intersects any mask with them, and only a
/// cpuset write or a cgroup move, both seen by events mode, changes that bound). So when its
/// last reading lies within its cgroup's CPUs, the affinity decides nothing for:
/// - a subject of the `affinity` check (a vCPU or an I/O thread with a pin) whose cgroup
///   holds one CPU: the affinity can only be that CPU;
/// - any other thread (an unpinned vCPU or I/O thread, an emulator thread) whose cgroup holds
///   no dedicated pCPU of another domain: `overlap`, the only other check that reads the
///   affinity, finds nothing whatever it is.
///
/// Kernel workers living in the process are read by no check.
pub(crate) fn affinity_deciders(obs: &[DomainObservation]) -> Vec<Vec<u32>> {
    let owners = overlap::PcpuOwners::new(dedicated_pcpus(obs));
    obs.iter()
        .map(|o| {
            let Some(d) = &o.domain else {
                return Vec::new();
            };
            let pinned_vcpus: BTreeSet<u32> = d
                .vcpus
                .iter()
                .filter(|v| v.pin.is_some())
                .filter_map(|v| v.tid)
                .collect();
            let pinned_io: BTreeSet<String> = d
                .iothreads
                .iter()
                .filter(|t| t.pin.is_some())
                .map(IothreadSpec::comm)
                .collect();
            // Whether a cgroup's CPUs hold another domain's dedicated pCPU, once per set.
            let mut foreign: HashMap<&CpuSet, bool> = HashMap::new();
            o.threads
                .values()
                .filter(|t| !t.kernel_worker)
                .filter(|t| {
                    let Some(bound) = t
                        .cgroup_cpus
                        .as_ref()
                        .filter(|c| !t.affinity.is_empty() && t.affinity.is_subset(c))
                    else {
                        return true;
                    };
                    if pinned_vcpus.contains(&t.tid) || pinned_io.contains(&t.comm) {
                        return !bound.is_single();
                    }
                    *foreign
                        .entry(bound)
                        .or_insert_with(|| bound.iter().any(|c| owners.foreign_owned(c, &d.name)))
                })
                .map(|t| t.tid)
                .collect()
        })
        .collect()
}

/// The vCPUs pinned alone to each dedicated pCPU, for intrusion accounting: `<vcpupin>` to that
/// one pCPU (the owners of [`dedicated_pcpus`], as the `overlap` check counts them), thread
/// known. Several owners of one pCPU are an overlap; the accounting keeps one of them (the
/// engine's choice) and counts the others as intruders. Values: (index of the observation,
/// vCPU index, vCPU thread id), in observation order.
pub(crate) fn dedicated_owners(obs: &[DomainObservation]) -> BTreeMap<u32, Vec<(usize, u32, u32)>> {
    let mut owners: BTreeMap<u32, Vec<(usize, u32, u32)>> = BTreeMap::new();
    for (i, o) in obs.iter().enumerate() {
        let Some(d) = &o.domain else { continue };
        for v in d.vcpus.iter().filter(|v| !v.shared_set) {
            let (Some(tid), Some(pin)) = (v.tid, &v.pin) else {
                continue;
            };
            if pin.len() == 1
                && let Some(cpu) = pin.iter().next()
            {
                owners.entry(cpu).or_default().push((i, v.id, tid));
            }
        }
    }
    owners
}

/// What each vCPU's pin is, given how many `<vcpupin>` vCPUs each pCPU holds host-wide.
fn pin_kind(v: &VcpuSpec, vcpupins: &BTreeMap<u32, u32>) -> PinKind {
    match &v.pin {
        None => PinKind::None,
        Some(_) if v.shared_set => PinKind::Floating,
        Some(pin) => {
            let alone = pin.len() == 1 && pin.iter().all(|c| vcpupins.get(&c) == Some(&1));
            if alone {
                PinKind::Dedicated
            } else {
                PinKind::Shared
            }
        }
    }
}

/// Runs every check on every domain.
pub(crate) fn evaluate(obs: &[DomainObservation]) -> PinningReport {
    let owners = overlap::PcpuOwners::new(dedicated_pcpus(obs));
    let mut report = PinningReport {
        findings_version: crate::model::pinning::next_findings_version(),
        ..PinningReport::default()
    };
    for d in obs.iter().filter_map(|o| o.domain.as_ref()) {
        for v in d.vcpus.iter().filter(|v| !v.shared_set) {
            for cpu in v.pin.iter().flat_map(CpuSet::iter) {
                *report.pcpu_pinned_vcpus.entry(cpu).or_default() += 1;
            }
        }
    }
    for obs in obs {
        let Some(domain) = &obs.domain else { continue };
        let d = DomainView {
            obs,
            domain,
            owners: &owners,
        };
        report
            .domains
            .push(evaluate_domain(&d, &report.pcpu_pinned_vcpus));
    }
    report.domains.sort_by(|a, b| a.domain.cmp(&b.domain));
    report
}

/// [`evaluate`] after a sched-probe tick, which changes only placement samples and stolen time:
/// the domains at `changed` (indices into `obs`) are evaluated again, every other domain's report
/// is `previous`'s. `previous` must come from the same pins and threads (no pass in between),
/// so the pCPU counts and the overlap owners are the same. A domain `previous` lacks is
/// evaluated.
pub(crate) fn reevaluate(
    obs: &[DomainObservation],
    previous: &PinningReport,
    changed: &BTreeSet<usize>,
) -> PinningReport {
    let owners = overlap::PcpuOwners::new(dedicated_pcpus(obs));
    let mut report = PinningReport {
        findings_version: crate::model::pinning::next_findings_version(),
        pcpu_pinned_vcpus: previous.pcpu_pinned_vcpus.clone(),
        ..PinningReport::default()
    };
    for (i, obs) in obs.iter().enumerate() {
        let Some(domain) = &obs.domain else { continue };
        let kept = (!changed.contains(&i))
            .then(|| {
                previous
                    .domains
                    .binary_search_by(|r| r.domain.as_str().cmp(&domain.name))
                    .ok()
            })
            .flatten()
            .and_then(|at| previous.domains.get(at));
        report.domains.push(match kept {
            Some(r) => r.clone(),
            None => {
                let d = DomainView {
                    obs,
                    domain,
                    owners: &owners,
                };
                evaluate_domain(&d, &report.pcpu_pinned_vcpus)
            }
        });
    }
    report.domains.sort_by(|a, b| a.domain.cmp(&b.domain));
    report
}

/// Every check on every vCPU then on the emulator threads, with the domain's per-vCPU detail.
fn evaluate_domain(d: &DomainView<'_>, vcpupins: &BTreeMap<u32, u32>) -> DomainReport {
    let (o, dom) = (d.obs, d.domain);
    let views: Vec<VcpuView> = dom
        .vcpus
        .iter()
        .map(|spec| VcpuView {
            spec,
            state: spec.tid.and_then(|t| o.threads.get(&t)),
            placement: spec.tid.and_then(|t| o.placement.get(&t)),
        })
        .collect();
    let mut found: Vec<Drift> = Vec::new();
    let mut drifted_vcpus: BTreeMap<Check, u32> = Check::ALL.iter().map(|c| (*c, 0)).collect();
    for v in &views {
        for drift in drifts(d, Subject::Vcpu(*v), v.spec.id.to_string()) {
            *drifted_vcpus.entry(drift.check).or_default() += 1;
            found.push(drift);
        }
    }
    // I/O threads with a pin or a scheduler of their own, then one drift per check for all
    // emulator threads together, then the memory: none counted as a drifted vCPU.
    for t in dom
        .iothreads
        .iter()
        .filter(|t| t.pin.is_some() || t.sched.is_some())
    {
        let view = IothreadView {
            spec: t,
            state: iothread_state(o, t),
        };
        found.extend(drifts(d, Subject::Iothread(view), t.label()));
    }
    found.extend(drifts(d, Subject::Emulator, "emulator".into()));
    found.extend(drifts(d, Subject::Memory, "memory".into()));

    let vcpus: Vec<VcpuReport> = views.iter().map(|v| vcpu_report(v, vcpupins)).collect();
    let placements = || views.iter().filter_map(|v| v.placement);
    let offpin_ns = saturating_sum(placements().map(|p| p.offpin_ns_total));
    let migrations = saturating_sum(placements().map(|p| p.migrations_total));
    let wait_ns = saturating_sum(views.iter().filter_map(|v| v.state).map(|s| s.wait_ns));
    let have_bpf = !o.placement.is_empty();
    let stolen = stolen_report(dom, o);
    DomainReport {
        domain: dom.name.clone(),
        uuid: dom.uuid.clone(),
        nova: dom.nova.clone(),
        pinned: vcpus.iter().any(|v| v.kind.is_vcpupin()),
        drifted_vcpus,
        drifts: found.into(),
        vcpus,
        offpin_seconds_total: have_bpf.then(|| offpin_ns as f64 / 1e9),
        migrations_total: have_bpf.then_some(migrations),
        wait_seconds_total: wait_ns as f64 / 1e9,
        numa_memory_bytes: o.numa.as_ref().map(|n| n.node_bytes.clone()),
        numa_mems: o.numa.as_ref().and_then(|n| n.mems.clone()),
        stolen,
    }
}

/// The sum of `values`, saturating at `u64::MAX`.
fn saturating_sum(values: impl Iterator<Item = u64>) -> u64 {
    values.fold(0, u64::saturating_add)
}

/// One vCPU's expected and actual placement.
fn vcpu_report(v: &VcpuView<'_>, vcpupins: &BTreeMap<u32, u32>) -> VcpuReport {
    let (spec, state) = (v.spec, v.state);
    let mut report = VcpuReport {
        vcpu: spec.id,
        tid: spec.tid,
        kind: pin_kind(spec, vcpupins),
        pin: spec.pin.clone(),
        affinity: state.map(|s| s.affinity.clone()),
        cgroup_cpus: state.and_then(|s| s.cgroup_cpus.clone()),
        cgroup: state.and_then(|s| s.cgroup.clone()),
        last_cpu: None,
        offpin_seconds: None,
    };
    set_placement_detail(&mut report, v.placement, state);
    report
}

/// The fields of a vCPU's report that come from its eBPF placement (else from procfs).
fn set_placement_detail(
    report: &mut VcpuReport,
    placement: Option<&PlacementSample>,
    state: Option<&ThreadState>,
) {
    report.last_cpu = placement
        .map(|p| p.last_cpu)
        .or(state.and_then(|s| s.last_cpu));
    report.offpin_seconds = placement.map(|p| p.offpin_ns_total as f64 / 1e9);
}

/// Brings `report` (made by [`evaluate`] from earlier observations) up to date with the
/// placement counters of `obs` without running any check: for placement changes that cannot
/// change a finding (see [`placement::drift_key`]), such as a floating vCPU's migrations. The
/// domains' totals are the raw sums, as [`evaluate`] writes them.
/// The domain's intrusions per dedicated pCPU, from its stolen samples.
fn stolen_report(dom: &Domain, o: &DomainObservation) -> Vec<PcpuStolen> {
    o.stolen
        .iter()
        .map(|(cpu, x)| PcpuStolen {
            cpu: *cpu,
            vcpu: dom
                .vcpus
                .iter()
                .find(|v| v.tid == Some(x.vcpu_tid))
                .map(|v| v.id),
            seconds_total: INTRUDER_LABELS
                .iter()
                .zip(x.ns_total)
                .filter(|(_, ns)| *ns > 0)
                .map(|(l, ns)| (*l, ns as f64 / 1e9))
                .collect(),
            window_share: x.window_share(),
        })
        .collect()
}

pub(crate) fn refresh_placement(report: &mut PinningReport, obs: &[DomainObservation]) {
    let by_name: BTreeMap<&str, &DomainObservation> = obs
        .iter()
        .filter_map(|o| Some((o.domain.as_ref()?.name.as_str(), o)))
        .collect();
    for r in &mut report.domains {
        let Some(o) = by_name.get(r.domain.as_str()) else {
            continue;
        };
        let mut offpin_ns = 0u64;
        let mut migrations = 0u64;
        for v in &mut r.vcpus {
            let placement = v.tid.and_then(|t| o.placement.get(&t));
            let state = v.tid.and_then(|t| o.threads.get(&t));
            set_placement_detail(v, placement, state);
            if let Some(p) = placement {
                offpin_ns = offpin_ns.saturating_add(p.offpin_ns_total);
                migrations = migrations.saturating_add(p.migrations_total);
            }
        }
        let have_bpf = !o.placement.is_empty();
        r.offpin_seconds_total = have_bpf.then(|| offpin_ns as f64 / 1e9);
        r.migrations_total = have_bpf.then_some(migrations);
        if let Some(d) = &o.domain {
            r.stolen = stolen_report(d, o);
        }
    }
}
