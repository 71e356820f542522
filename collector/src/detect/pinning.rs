//! Pinning drift detector: compares where libvirt placed each vCPU with where it actually is.
//!
//! Pure: input is one [`DomainObservation`] per running domain (libvirt's live XML + procfs/cgroupfs +
//! eBPF placement), output a [`PinningReport`]. The checks are DESIGN.md's table (`affinity`,
//! `cpuset`, `cgroup`, `placement`, `overlap`).

use crate::cpuset::CpuSet;
use crate::model::{Domain, NovaInstance, ThreadState};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

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
}

impl Check {
    /// Every check, in label order.
    pub const ALL: [Check; 5] = [
        Check::Affinity,
        Check::Cpuset,
        Check::Cgroup,
        Check::Placement,
        Check::Overlap,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Affinity => "affinity",
            Check::Cpuset => "cpuset",
            Check::Cgroup => "cgroup",
            Check::Placement => "placement",
            Check::Overlap => "overlap",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// eBPF placement of one thread, as seen by the detector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PlacementSample {
    /// CPU time on pCPUs outside the pin set since the thread was first watched, ns.
    pub offpin_ns_total: u64,
    /// The part of `offpin_ns_total` accrued during the current detection window, ns.
    pub offpin_ns_window: u64,
    /// Migrations between pCPUs since first watched.
    pub migrations_total: u64,
    /// CPU the thread was last switched in on.
    pub last_cpu: u32,
}

/// Everything observed about one running domain.
#[derive(Clone, Debug, Default)]
pub struct DomainObservation {
    /// libvirt's view (expected placement).
    pub domain: Option<Domain>,
    /// Actual state of the QEMU process's threads (vCPU and emulator threads), by tid.
    pub threads: BTreeMap<u32, ThreadState>,
    /// cgroup path of the QEMU main thread (libvirt puts it in `<domain cgroup>/emulator`).
    pub main_cgroup: Option<String>,
    /// eBPF placement per watched vCPU tid; empty when the sched probe is not running.
    pub placement: BTreeMap<u32, PlacementSample>,
}

/// A drift of one vCPU (or the emulator threads) for one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// Which check.
    pub check: Check,
    /// vCPU index, or `emulator`.
    pub vcpu: String,
    /// What libvirt/Nova expect (CPU list, cgroup name…).
    pub expected: String,
    /// What pinflow found.
    pub actual: String,
}

/// One vCPU's expected and actual placement.
#[derive(Clone, Debug, Serialize)]
pub struct VcpuReport {
    /// vCPU index.
    pub vcpu: u32,
    /// Host thread id.
    pub tid: Option<u32>,
    /// Pin set from libvirt (`None` = floating).
    pub pin: Option<CpuSet>,
    /// Thread affinity.
    pub affinity: Option<CpuSet>,
    /// cgroup `cpuset.cpus`.
    pub cgroup_cpus: Option<CpuSet>,
    /// cgroup path.
    pub cgroup: Option<String>,
    /// Last CPU the thread ran on.
    pub last_cpu: Option<u32>,
    /// Off-pin CPU time since watched (eBPF), seconds.
    pub offpin_seconds: Option<f64>,
}

/// Findings for one domain.
#[derive(Clone, Debug, Serialize)]
pub struct DomainReport {
    /// libvirt domain name.
    pub domain: String,
    /// Domain UUID.
    pub uuid: String,
    /// Nova metadata, if any.
    pub nova: Option<NovaInstance>,
    /// Whether any vCPU is pinned.
    pub pinned: bool,
    /// Drifted vCPU count per check (every check present).
    pub drifted_vcpus: BTreeMap<Check, u32>,
    /// Every current drift.
    pub drifts: Vec<Drift>,
    /// Per-vCPU detail.
    pub vcpus: Vec<VcpuReport>,
    /// Sum over vCPU threads of off-pin CPU time (eBPF), seconds; `None` without the probe.
    pub offpin_seconds_total: Option<f64>,
    /// Sum over vCPU threads of migrations (eBPF); `None` without the probe.
    pub migrations_total: Option<u64>,
    /// Sum over vCPU threads of run-queue wait time (schedstat), seconds.
    pub wait_seconds_total: f64,
}

/// The detector's output for the whole host.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PinningReport {
    /// One report per running domain, sorted by domain name.
    pub domains: Vec<DomainReport>,
    /// Pinned vCPUs (of all domains) per host CPU; only CPUs with at least one.
    pub pcpu_pinned_vcpus: BTreeMap<u32, u32>,
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

/// Where a thread may run: its actual affinity when known, else what libvirt configured.
fn may_run_on<'a>(
    state: Option<&'a ThreadState>,
    configured: Option<&'a CpuSet>,
) -> Option<&'a CpuSet> {
    state
        .map(|s| &s.affinity)
        .filter(|a| !a.is_empty())
        .or(configured)
}

/// Foreign dedicated pCPUs within `cpus`, rendered `"1 (instance-b)"`, or `None` when there are none.
fn foreign_dedicated(
    cpus: &CpuSet,
    me: &str,
    owners: &BTreeMap<u32, BTreeSet<String>>,
) -> Option<String> {
    let mut hits: BTreeMap<&str, CpuSet> = BTreeMap::new();
    for cpu in cpus.iter() {
        if let Some(names) = owners.get(&cpu) {
            for n in names.iter().filter(|n| n.as_str() != me) {
                hits.entry(n.as_str()).or_default().insert(cpu);
            }
        }
    }
    if hits.is_empty() {
        return None;
    }
    Some(
        hits.iter()
            .map(|(n, c)| format!("{c} ({n})"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// The domain's cgroup: the parent of the QEMU main thread's `emulator` cgroup (libvirt's layout).
fn domain_cgroup(main_cgroup: Option<&str>) -> Option<&str> {
    main_cgroup?.strip_suffix("/emulator")
}

/// Runs every check on every domain.
pub fn evaluate(obs: &[DomainObservation]) -> PinningReport {
    let owners = dedicated_pcpus(obs);
    let mut report = PinningReport::default();
    for o in obs {
        let Some(d) = &o.domain else { continue };
        for v in &d.vcpus {
            if let Some(pin) = &v.pin {
                for cpu in pin.iter() {
                    *report.pcpu_pinned_vcpus.entry(cpu).or_default() += 1;
                }
            }
        }
        report.domains.push(evaluate_domain(o, d, &owners));
    }
    report.domains.sort_by(|a, b| a.domain.cmp(&b.domain));
    report
}

fn evaluate_domain(
    o: &DomainObservation,
    d: &Domain,
    owners: &BTreeMap<u32, BTreeSet<String>>,
) -> DomainReport {
    let mut drifts = Vec::new();
    let mut vcpus = Vec::new();
    let dom_cg = domain_cgroup(o.main_cgroup.as_deref());
    let mut wait_ns: u64 = 0;
    let have_bpf = !o.placement.is_empty();
    let (mut offpin_ns, mut migrations) = (0u64, 0u64);
    let vcpu_tids: BTreeSet<u32> = d.vcpus.iter().filter_map(|v| v.tid).collect();

    for v in &d.vcpus {
        let state = v.tid.and_then(|t| o.threads.get(&t));
        let placement = v.tid.and_then(|t| o.placement.get(&t));
        let id = v.id.to_string();
        let mut drift = |check, expected: String, actual: String| {
            drifts.push(Drift {
                check,
                vcpu: id.clone(),
                expected,
                actual,
            });
        };
        if let Some(s) = state {
            wait_ns = wait_ns.saturating_add(s.wait_ns);
        }
        if let (Some(pin), Some(s)) = (&v.pin, state) {
            if !s.affinity.is_empty() && s.affinity != *pin {
                drift(Check::Affinity, pin.to_string(), s.affinity.to_string());
            }
            if let Some(cg) = &s.cgroup_cpus
                && cg != pin
            {
                drift(Check::Cpuset, pin.to_string(), cg.to_string());
            }
        }
        if let (Some(root), Some(path)) = (dom_cg, state.and_then(|s| s.cgroup.as_deref())) {
            let want = format!("vcpu{}", v.id);
            let ok =
                path.strip_prefix(root).and_then(|r| r.strip_prefix('/')) == Some(want.as_str());
            if !ok {
                let actual = path
                    .strip_prefix(root)
                    .and_then(|r| r.strip_prefix('/'))
                    .unwrap_or(path)
                    .to_string();
                drift(Check::Cgroup, want, actual);
            }
        }
        if let Some(p) = placement {
            offpin_ns = offpin_ns.saturating_add(p.offpin_ns_total);
            migrations = migrations.saturating_add(p.migrations_total);
            if let Some(pin) = &v.pin
                && p.offpin_ns_window > 0
            {
                let actual = if pin.contains(p.last_cpu) {
                    "outside".to_string()
                } else {
                    p.last_cpu.to_string()
                };
                drift(Check::Placement, pin.to_string(), actual);
            }
        }
        if let Some(cpus) = may_run_on(state, v.pin.as_ref())
            && let Some(foreign) = foreign_dedicated(cpus, &d.name, owners)
        {
            let expected = v.pin.as_ref().map(ToString::to_string).unwrap_or_default();
            drift(Check::Overlap, expected, foreign);
        }
        vcpus.push(VcpuReport {
            vcpu: v.id,
            tid: v.tid,
            pin: v.pin.clone(),
            affinity: state.map(|s| s.affinity.clone()),
            cgroup_cpus: state.and_then(|s| s.cgroup_cpus.clone()),
            cgroup: state.and_then(|s| s.cgroup.clone()),
            last_cpu: placement
                .map(|p| p.last_cpu)
                .or(state.and_then(|s| s.last_cpu)),
            offpin_seconds: placement.map(|p| p.offpin_ns_total as f64 / 1e9),
        });
    }

    // Emulator threads: every other thread of the QEMU process. A domain's emulator sharing its own
    // dedicated pCPUs is fine (Nova's `share` policy); only other domains' pCPUs count.
    let mut emulator_foreign: BTreeSet<String> = BTreeSet::new();
    for s in o.threads.values().filter(|s| !vcpu_tids.contains(&s.tid)) {
        if let Some(cpus) = may_run_on(Some(s), d.emulator_pin.as_ref())
            && let Some(f) = foreign_dedicated(cpus, &d.name, owners)
        {
            emulator_foreign.insert(f);
        }
    }
    if !emulator_foreign.is_empty() {
        drifts.push(Drift {
            check: Check::Overlap,
            vcpu: "emulator".into(),
            expected: d
                .emulator_pin
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            actual: emulator_foreign.into_iter().collect::<Vec<_>>().join("; "),
        });
    }

    let mut drifted_vcpus: BTreeMap<Check, u32> = Check::ALL.iter().map(|c| (*c, 0)).collect();
    for dr in drifts.iter().filter(|d| d.vcpu != "emulator") {
        *drifted_vcpus.entry(dr.check).or_default() += 1;
    }
    DomainReport {
        domain: d.name.clone(),
        uuid: d.uuid.clone(),
        nova: d.nova.clone(),
        pinned: d.is_pinned(),
        drifted_vcpus,
        drifts,
        vcpus,
        offpin_seconds_total: have_bpf.then(|| offpin_ns as f64 / 1e9),
        migrations_total: have_bpf.then_some(migrations),
        wait_seconds_total: wait_ns as f64 / 1e9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VcpuSpec;

    fn cpus(s: &str) -> CpuSet {
        s.parse().unwrap()
    }

    /// A domain `name` whose vCPU i has tid `base+i` and pin `pins[i]`, with healthy threads.
    fn healthy(name: &str, base: u32, pins: &[&str]) -> DomainObservation {
        let id = 1;
        let root = format!("/machine/qemu-{id}-{name}.libvirt-qemu");
        let vcpus: Vec<VcpuSpec> = pins
            .iter()
            .enumerate()
            .map(|(i, p)| VcpuSpec {
                id: i as u32,
                tid: Some(base + i as u32),
                pin: Some(cpus(p)),
                shared_set: false,
            })
            .collect();
        let mut threads = BTreeMap::new();
        for v in &vcpus {
            let tid = v.tid.unwrap();
            threads.insert(
                tid,
                ThreadState {
                    tid,
                    comm: format!("CPU {}/KVM", v.id),
                    affinity: v.pin.clone().unwrap(),
                    last_cpu: v.pin.as_ref().unwrap().iter().next(),
                    cgroup: Some(format!("{root}/vcpu{}", v.id)),
                    cgroup_cpus: v.pin.clone(),
                    run_ns: 10,
                    wait_ns: 500_000_000,
                },
            );
        }
        let emu_pin: CpuSet = pins
            .iter()
            .flat_map(|p| cpus(p).iter().collect::<Vec<_>>())
            .collect();
        threads.insert(
            base - 1,
            ThreadState {
                tid: base - 1,
                comm: "qemu-system-x86".into(),
                affinity: emu_pin.clone(),
                cgroup: Some(format!("{root}/emulator")),
                cgroup_cpus: Some(emu_pin.clone()),
                ..Default::default()
            },
        );
        DomainObservation {
            domain: Some(Domain {
                name: name.into(),
                uuid: format!("uuid-{name}"),
                id: Some(id),
                pid: Some(base - 1),
                nova: None,
                vcpus,
                emulator_pin: Some(emu_pin),
                interfaces: vec![],
            }),
            threads,
            main_cgroup: Some(format!("{root}/emulator")),
            placement: BTreeMap::new(),
        }
    }

    fn drifts(r: &PinningReport, dom: &str) -> Vec<(Check, String, String, String)> {
        r.domains
            .iter()
            .find(|d| d.domain == dom)
            .unwrap()
            .drifts
            .iter()
            .map(|d| {
                (
                    d.check,
                    d.vcpu.clone(),
                    d.expected.clone(),
                    d.actual.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn healthy_host_has_no_drift_and_every_check_is_zero() {
        let r = evaluate(&[
            healthy("a", 101, &["0", "1"]),
            healthy("b", 201, &["2", "3"]),
        ]);
        for d in &r.domains {
            assert!(d.drifts.is_empty(), "{d:?}");
            assert_eq!(d.drifted_vcpus.len(), 5);
            assert!(d.drifted_vcpus.values().all(|n| *n == 0));
            assert_eq!(d.wait_seconds_total, 1.0);
            assert_eq!(d.offpin_seconds_total, None);
        }
        assert_eq!(
            r.pcpu_pinned_vcpus,
            BTreeMap::from([(0, 1), (1, 1), (2, 1), (3, 1)])
        );
    }

    #[test]
    fn affinity_and_cpuset_drift() {
        let mut a = healthy("a", 101, &["0", "1"]);
        a.threads.get_mut(&101).unwrap().affinity = cpus("1");
        a.threads.get_mut(&102).unwrap().cgroup_cpus = Some(cpus("0-1"));
        let r = evaluate(&[a]);
        assert_eq!(
            drifts(&r, "a"),
            vec![
                (Check::Affinity, "0".into(), "0".into(), "1".into()),
                (Check::Cpuset, "1".into(), "1".into(), "0-1".into()),
            ]
        );
        let d = &r.domains[0];
        assert_eq!(d.drifted_vcpus[&Check::Affinity], 1);
        assert_eq!(d.drifted_vcpus[&Check::Cpuset], 1);
    }

    #[test]
    fn vcpu_thread_in_emulator_cgroup_is_cgroup_drift() {
        let mut a = healthy("a", 101, &["0"]);
        a.threads.get_mut(&101).unwrap().cgroup =
            Some("/machine/qemu-1-a.libvirt-qemu/emulator".into());
        let r = evaluate(&[a]);
        assert_eq!(
            drifts(&r, "a"),
            vec![(Check::Cgroup, "0".into(), "vcpu0".into(), "emulator".into())]
        );
    }

    #[test]
    fn placement_drift_only_when_offpin_time_in_window() {
        let mut a = healthy("a", 101, &["0"]);
        a.placement.insert(
            101,
            PlacementSample {
                offpin_ns_total: 2_000_000_000,
                offpin_ns_window: 0,
                migrations_total: 3,
                last_cpu: 0,
            },
        );
        let r = evaluate(std::slice::from_ref(&a));
        assert!(drifts(&r, "a").is_empty());
        assert_eq!(r.domains[0].offpin_seconds_total, Some(2.0));
        assert_eq!(r.domains[0].migrations_total, Some(3));
        a.placement.get_mut(&101).unwrap().offpin_ns_window = 5;
        a.placement.get_mut(&101).unwrap().last_cpu = 1;
        let r = evaluate(&[a]);
        assert_eq!(
            drifts(&r, "a"),
            vec![(Check::Placement, "0".into(), "0".into(), "1".into())]
        );
    }

    #[test]
    fn two_domains_on_one_dedicated_pcpu_overlap_both_ways() {
        let r = evaluate(&[healthy("a", 101, &["0"]), healthy("b", 201, &["0"])]);
        assert!(drifts(&r, "a").contains(&(
            Check::Overlap,
            "0".into(),
            "0".into(),
            "0 (b)".into()
        )));
        assert!(drifts(&r, "b").contains(&(
            Check::Overlap,
            "0".into(),
            "0".into(),
            "0 (a)".into()
        )));
        assert_eq!(r.domains[0].drifted_vcpus[&Check::Overlap], 1);
        assert_eq!(r.pcpu_pinned_vcpus[&0], 2);
    }

    #[test]
    fn floating_domain_on_dedicated_pcpus_overlaps_but_own_emulator_does_not() {
        let mut f = healthy("f", 301, &["0-3"]);
        let dom = f.domain.as_mut().unwrap();
        dom.vcpus[0].pin = None;
        dom.emulator_pin = None;
        let r = evaluate(&[healthy("a", 101, &["0", "1"]), f]);
        // `a`'s emulator threads share a's own pCPUs: fine.
        assert!(drifts(&r, "a").is_empty());
        let f = drifts(&r, "f");
        assert!(
            f.contains(&(Check::Overlap, "0".into(), String::new(), "0-1 (a)".into())),
            "{f:?}"
        );
        assert!(f.iter().any(|d| d.1 == "emulator"));
        // the emulator entry does not count as a drifted vCPU
        assert_eq!(r.domains[1].drifted_vcpus[&Check::Overlap], 1);
    }
}
