//! Host CPU checks: Nova's dedicated and shared pCPU sets against each other, against where the
//! running instances are pinned, and against the kernel's isolation of the dedicated pCPUs.
//!
//! A problem whose inputs are unknown (no nova.conf, an unreadable command line, a policy that
//! does not ask for isolation) is left out of the report: never reported as fine.

use crate::model::cpuset::CpuSet;
use crate::model::host_cpu::{HostCpuProblem, KernelCpuIsolation, NovaCpuSets};
use crate::model::pinning::{DomainReport, PinKind, PinningReport};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Which isolation of the dedicated pCPUs the operator requires (`[host_cpu] require_isolation`).
/// By default none: the isolation is reported (`pinflow check`, `/api/v1/host_cpu`), not judged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct IsolationPolicy {
    /// Dedicated pCPUs must be in `isolcpus` (domain).
    pub(crate) scheduler: bool,
    /// No interrupt may be routed to a dedicated pCPU by default (`irqaffinity`,
    /// `/proc/irq/default_smp_affinity`).
    pub(crate) irqs: bool,
}

/// One kind of isolation, as named in `[host_cpu] require_isolation`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Isolation {
    /// From the scheduler (`isolcpus`).
    Scheduler,
    /// From interrupts.
    Irqs,
}

impl IsolationPolicy {
    /// The policy requiring each of `kinds`.
    pub(crate) fn requiring(kinds: &[Isolation]) -> Self {
        IsolationPolicy {
            scheduler: kinds.contains(&Isolation::Scheduler),
            irqs: kinds.contains(&Isolation::Irqs),
        }
    }
}

/// Runs every check whose inputs are known.
pub(crate) fn check(
    nova: Option<&NovaCpuSets>,
    kernel: Option<&KernelCpuIsolation>,
    policy: IsolationPolicy,
    pinning: &PinningReport,
) -> BTreeMap<HostCpuProblem, Vec<String>> {
    let mut out = BTreeMap::new();
    if let Some(n) = nova {
        out.insert(HostCpuProblem::DedicatedSharedOverlap, overlap(n));
        out.insert(
            HostCpuProblem::PinnedOutsideDedicatedSet,
            pinned_outside(n, pinning),
        );
        out.insert(
            HostCpuProblem::FloatingOnDedicated,
            floating_on_dedicated(n, pinning),
        );
    }
    if let Some(k) = kernel {
        let dedicated = dedicated_cpus(nova, pinning);
        if policy.scheduler {
            let exposed = minus(&dedicated, k.isolcpus.as_ref());
            out.insert(
                HostCpuProblem::DedicatedNotIsolatedFromScheduler,
                non_empty(exposed, |s| {
                    format!("dedicated pCPUs {s} are not in isolcpus (the scheduler balances load onto them)")
                }),
            );
        }
        if policy.irqs {
            // Without either setting, interrupts may go to every CPU.
            let exposed = match k.irq_default_affinity.as_ref().or(k.irqaffinity.as_ref()) {
                Some(affinity) => dedicated.intersection(affinity),
                None => dedicated.clone(),
            };
            out.insert(
                HostCpuProblem::DedicatedNotIsolatedFromIrqs,
                non_empty(exposed, |s| {
                    format!("dedicated pCPUs {s} are in the default IRQ affinity")
                }),
            );
        }
    }
    out
}

/// The dedicated pCPUs: Nova's set (or the legacy `vcpu_pin_set`) when known, else those that
/// running instances pin a vCPU to alone.
fn dedicated_cpus(nova: Option<&NovaCpuSets>, pinning: &PinningReport) -> CpuSet {
    if let Some(set) = nova.and_then(NovaCpuSets::for_dedicated) {
        return set.clone();
    }
    pinning
        .domains
        .iter()
        .flat_map(|d| &d.vcpus)
        .filter(|v| v.kind == PinKind::Dedicated)
        .filter_map(|v| v.pin.as_ref())
        .flat_map(CpuSet::iter)
        .collect()
}

/// `a` without the CPUs of `b`.
fn minus(a: &CpuSet, b: Option<&CpuSet>) -> CpuSet {
    a.iter()
        .filter(|c| !b.is_some_and(|b| b.contains(*c)))
        .collect()
}

fn non_empty(s: CpuSet, say: impl FnOnce(&CpuSet) -> String) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else {
        vec![say(&s)]
    }
}

fn overlap(n: &NovaCpuSets) -> Vec<String> {
    match (&n.dedicated, &n.shared) {
        (Some(d), Some(s)) => non_empty(d.intersection(s), |both| {
            format!("pCPUs {both} are in both cpu_dedicated_set ({d}) and cpu_shared_set ({s})")
        }),
        _ => Vec::new(),
    }
}

/// How a finding names its instance: the domain, and Nova's name when known.
fn instance(d: &DomainReport) -> String {
    match &d.nova {
        Some(n) if !n.name.is_empty() => format!("{} ({})", d.domain, n.name),
        _ => d.domain.clone(),
    }
}

fn pinned_outside(n: &NovaCpuSets, pinning: &PinningReport) -> Vec<String> {
    // With neither option set, pinned instances may use any host CPU: nothing to check against.
    let Some(allowed) = n.for_dedicated() else {
        return Vec::new();
    };
    let option = if n.dedicated.is_some() {
        "cpu_dedicated_set"
    } else {
        "vcpu_pin_set"
    };
    let mut out = Vec::new();
    for d in &pinning.domains {
        for v in &d.vcpus {
            if !matches!(v.kind, PinKind::Dedicated | PinKind::Shared) {
                continue;
            }
            let Some(pin) = &v.pin else { continue };
            let outside = minus(pin, Some(allowed));
            if !outside.is_empty() {
                out.push(format!(
                    "{} vCPU {} is pinned to {pin}: {outside} outside {option} {allowed}",
                    instance(d),
                    v.vcpu
                ));
            }
        }
    }
    out
}

fn floating_on_dedicated(n: &NovaCpuSets, pinning: &PinningReport) -> Vec<String> {
    let Some(dedicated) = n.dedicated.as_ref().filter(|d| !d.is_empty()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for d in &pinning.domains {
        for v in &d.vcpus {
            // A floating vCPU may run on its `<vcpu cpuset>`; one without any pin where its
            // thread is allowed (anywhere, unless something else restricted it).
            let allowed = match v.kind {
                PinKind::Floating => v.pin.as_ref(),
                PinKind::None => v.affinity.as_ref(),
                PinKind::Dedicated | PinKind::Shared => continue,
            };
            let Some(allowed) = allowed else { continue };
            let on = allowed.intersection(dedicated);
            if !on.is_empty() {
                out.push(format!(
                    "{} vCPU {} floats over {allowed}, which includes dedicated pCPUs {on}",
                    instance(d),
                    v.vcpu
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pinning::VcpuReport;

    fn set(s: &str) -> CpuSet {
        s.parse().unwrap()
    }

    fn vcpu(vcpu: u32, kind: PinKind, pin: Option<&str>, affinity: &str) -> VcpuReport {
        VcpuReport {
            vcpu,
            tid: Some(100 + vcpu),
            kind,
            pin: pin.map(set),
            affinity: Some(set(affinity)),
            cgroup_cpus: None,
            cgroup: None,
            last_cpu: None,
            offpin_seconds: None,
        }
    }

    fn domain(name: &str, vcpus: Vec<VcpuReport>) -> DomainReport {
        DomainReport {
            domain: name.into(),
            uuid: String::new(),
            nova: None,
            pinned: vcpus
                .iter()
                .any(|v| matches!(v.kind, PinKind::Dedicated | PinKind::Shared)),
            drifted_vcpus: BTreeMap::new(),
            drifts: Vec::new().into(),
            vcpus,
            offpin_seconds_total: None,
            migrations_total: None,
            wait_seconds_total: 0.0,
            stolen: Vec::new(),
            numa_memory_bytes: None,
            numa_mems: None,
        }
    }

    /// A host with a dedicated instance on 4-5 and a floating one on 0-3.
    fn host() -> PinningReport {
        PinningReport {
            domains: vec![
                domain(
                    "instance-dedicated",
                    vec![
                        vcpu(0, PinKind::Dedicated, Some("4"), "4"),
                        vcpu(1, PinKind::Dedicated, Some("5"), "5"),
                    ],
                ),
                domain(
                    "instance-floating",
                    vec![vcpu(0, PinKind::Floating, Some("0-3"), "0-3")],
                ),
            ],
            pcpu_pinned_vcpus: BTreeMap::new(),
            numa_nodes: Vec::new(),
            passes: Default::default(),
            findings_version: 0,
        }
    }

    fn nova(dedicated: Option<&str>, shared: Option<&str>) -> NovaCpuSets {
        NovaCpuSets {
            dedicated: dedicated.map(set),
            shared: shared.map(set),
            vcpu_pin_set: None,
        }
    }

    #[test]
    fn a_consistent_host_has_every_checked_problem_present_and_empty() {
        let n = nova(Some("4-7"), Some("0-3"));
        let k = KernelCpuIsolation {
            isolcpus: Some(set("4-7")),
            irqaffinity: Some(set("0-3")),
            ..Default::default()
        };
        let all = IsolationPolicy::requiring(&[Isolation::Scheduler, Isolation::Irqs]);
        let p = check(Some(&n), Some(&k), all, &host());
        assert_eq!(p.len(), HostCpuProblem::ALL.len(), "{p:?}");
        assert!(p.values().all(Vec::is_empty), "{p:?}");
    }

    #[test]
    fn each_problem_names_what_is_wrong() {
        // Overlapping sets.
        let n = nova(Some("3-7"), Some("0-3"));
        let p = check(Some(&n), None, IsolationPolicy::default(), &host());
        assert_eq!(
            p[&HostCpuProblem::DedicatedSharedOverlap],
            ["pCPUs 3 are in both cpu_dedicated_set (3-7) and cpu_shared_set (0-3)"]
        );
        // The floating instance may run on 3, which is dedicated.
        assert_eq!(
            p[&HostCpuProblem::FloatingOnDedicated],
            ["instance-floating vCPU 0 floats over 0-3, which includes dedicated pCPUs 3"]
        );
        // Pins copied from another host: 5 is outside this host's dedicated set.
        let n = nova(Some("4,6-7"), Some("0-3"));
        let p = check(Some(&n), None, IsolationPolicy::default(), &host());
        assert_eq!(
            p[&HostCpuProblem::PinnedOutsideDedicatedSet],
            ["instance-dedicated vCPU 1 is pinned to 5: 5 outside cpu_dedicated_set 4,6-7"]
        );
        // The legacy option is the bound when the new one is unset.
        let legacy = NovaCpuSets {
            vcpu_pin_set: Some(set("4")),
            ..Default::default()
        };
        let p = check(Some(&legacy), None, IsolationPolicy::default(), &host());
        assert_eq!(
            p[&HostCpuProblem::PinnedOutsideDedicatedSet],
            ["instance-dedicated vCPU 1 is pinned to 5: 5 outside vcpu_pin_set 4"]
        );
        // A vCPU with no pin at all floats wherever its thread may run.
        let mut h = host();
        h.domains[1].vcpus = vec![vcpu(0, PinKind::None, None, "0-7")];
        let p = check(
            Some(&nova(Some("4-7"), None)),
            None,
            IsolationPolicy::default(),
            &h,
        );
        assert_eq!(
            p[&HostCpuProblem::FloatingOnDedicated],
            ["instance-floating vCPU 0 floats over 0-7, which includes dedicated pCPUs 4-7"]
        );
    }

    #[test]
    fn isolation_is_judged_only_when_the_policy_asks() {
        let n = nova(Some("4-7"), Some("0-3"));
        let k = KernelCpuIsolation {
            isolcpus: Some(set("4-5")),
            ..Default::default()
        };
        let none = check(Some(&n), Some(&k), IsolationPolicy::default(), &host());
        assert!(!none.contains_key(&HostCpuProblem::DedicatedNotIsolatedFromScheduler));
        assert!(!none.contains_key(&HostCpuProblem::DedicatedNotIsolatedFromIrqs));
        let all = IsolationPolicy::requiring(&[Isolation::Scheduler, Isolation::Irqs]);
        let p = check(Some(&n), Some(&k), all, &host());
        assert_eq!(
            p[&HostCpuProblem::DedicatedNotIsolatedFromScheduler],
            ["dedicated pCPUs 6-7 are not in isolcpus (the scheduler balances load onto them)"]
        );
        // No irqaffinity and no default_smp_affinity known: interrupts may go anywhere.
        assert_eq!(
            p[&HostCpuProblem::DedicatedNotIsolatedFromIrqs],
            ["dedicated pCPUs 4-7 are in the default IRQ affinity"]
        );
        // The live default affinity wins over the boot parameter.
        let k = KernelCpuIsolation {
            irqaffinity: Some(set("0-3")),
            irq_default_affinity: Some(set("0-4")),
            ..k
        };
        let p = check(Some(&n), Some(&k), all, &host());
        assert_eq!(
            p[&HostCpuProblem::DedicatedNotIsolatedFromIrqs],
            ["dedicated pCPUs 4 are in the default IRQ affinity"]
        );
        // Without nova.conf, the dedicated pCPUs are those instances pin alone (4-5), and the
        // Nova checks are absent, not fine.
        let p = check(None, Some(&k), all, &host());
        assert_eq!(
            p.keys().copied().collect::<Vec<_>>(),
            [
                HostCpuProblem::DedicatedNotIsolatedFromScheduler,
                HostCpuProblem::DedicatedNotIsolatedFromIrqs
            ]
        );
        assert!(p[&HostCpuProblem::DedicatedNotIsolatedFromScheduler].is_empty());
    }
}
