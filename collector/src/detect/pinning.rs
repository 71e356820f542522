//! Pinning drift detector: compares where libvirt placed each vCPU with where it actually is.
//!
//! Pure: input is one [`DomainObservation`] per running domain (libvirt's live XML + procfs/cgroupfs +
//! eBPF placement), output a [`PinningReport`]. The checks are DESIGN.md's table (`affinity`,
//! `cpuset`, `cgroup`, `placement`, `overlap`).

use crate::model::cpuset::CpuSet;
use crate::model::pinning::{
    Check, DomainObservation, DomainReport, Drift, MAX_LABELLED_OWNERS, OverlapOwner, PinKind,
    PinningReport, VcpuReport,
};
use crate::model::{Domain, ThreadState};
use std::collections::{BTreeMap, BTreeSet};

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

/// Foreign dedicated pCPUs within `cpus`, by owner (other than `me`); adds to `hits`.
fn foreign_dedicated(
    cpus: &CpuSet,
    me: &str,
    owners: &BTreeMap<u32, BTreeSet<String>>,
    hits: &mut BTreeMap<String, CpuSet>,
) {
    for cpu in cpus.iter() {
        if let Some(names) = owners.get(&cpu) {
            for n in names.iter().filter(|n| n.as_str() != me) {
                hits.entry(n.clone()).or_default().insert(cpu);
            }
        }
    }
}

/// The `actual` label of an overlap: the union of the owners' pCPUs, then at most
/// [`MAX_LABELLED_OWNERS`] owners in name order and how many more there are.
fn overlap_label(hits: &BTreeMap<String, CpuSet>) -> String {
    let cpus: CpuSet = hits.values().flat_map(CpuSet::iter).collect();
    let mut list = hits
        .keys()
        .take(MAX_LABELLED_OWNERS)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let more = hits.len().saturating_sub(MAX_LABELLED_OWNERS);
    if more > 0 {
        list.push_str(&format!(" +{more} more"));
    }
    format!("{cpus} ({list})")
}

/// The overlap drift of `vcpu` for `hits` (`None` when there are none).
fn overlap_drift(vcpu: String, expected: String, hits: BTreeMap<String, CpuSet>) -> Option<Drift> {
    if hits.is_empty() {
        return None;
    }
    Some(Drift {
        check: Check::Overlap,
        vcpu,
        expected,
        actual: overlap_label(&hits),
        owners: hits
            .into_iter()
            .map(|(domain, cpus)| OverlapOwner { domain, cpus })
            .collect(),
    })
}

/// What each vCPU's pin is, given how many `<vcpupin>` vCPUs each pCPU holds host-wide.
fn pin_kind(v: &crate::model::VcpuSpec, vcpupins: &BTreeMap<u32, u32>) -> PinKind {
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

/// The domain's cgroup: the parent of the QEMU main thread's `emulator` cgroup (libvirt's layout).
fn domain_cgroup(main_cgroup: Option<&str>) -> Option<&str> {
    main_cgroup?.strip_suffix("/emulator")
}

/// Runs every check on every domain.
pub fn evaluate(obs: &[DomainObservation]) -> PinningReport {
    let owners = dedicated_pcpus(obs);
    let mut report = PinningReport::default();
    for d in obs.iter().filter_map(|o| o.domain.as_ref()) {
        for v in d.vcpus.iter().filter(|v| !v.shared_set) {
            for cpu in v.pin.iter().flat_map(CpuSet::iter) {
                *report.pcpu_pinned_vcpus.entry(cpu).or_default() += 1;
            }
        }
    }
    for o in obs {
        let Some(d) = &o.domain else { continue };
        let r = evaluate_domain(o, d, &owners, &report.pcpu_pinned_vcpus);
        report.domains.push(r);
    }
    report.domains.sort_by(|a, b| a.domain.cmp(&b.domain));
    report
}

fn evaluate_domain(
    o: &DomainObservation,
    d: &Domain,
    owners: &BTreeMap<u32, BTreeSet<String>>,
    vcpupins: &BTreeMap<u32, u32>,
) -> DomainReport {
    let mut drifts = Vec::new();
    let mut vcpus = Vec::new();
    let dom_cg = domain_cgroup(o.main_cgroup.as_deref());
    let mut wait_ns: u64 = 0;
    let have_bpf = !o.placement.is_empty();
    let (mut offpin_ns, mut migrations) = (0u64, 0u64);
    let vcpu_tids: BTreeSet<u32> = d.vcpus.iter().filter_map(|v| v.tid).collect();
    let mut kinds = Vec::with_capacity(d.vcpus.len());

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
                owners: Vec::new(),
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
        if let Some(cpus) = may_run_on(state, v.pin.as_ref()) {
            let mut hits = BTreeMap::new();
            foreign_dedicated(cpus, &d.name, owners, &mut hits);
            let expected = v.pin.as_ref().map(ToString::to_string).unwrap_or_default();
            drifts.extend(overlap_drift(id.clone(), expected, hits));
        }
        let kind = pin_kind(v, vcpupins);
        kinds.push(kind);
        vcpus.push(VcpuReport {
            vcpu: v.id,
            tid: v.tid,
            kind,
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

    // Emulator threads: every other thread of the QEMU process, except kernel workers living in
    // it (`kvm-nx-lpage-recovery`). A domain's emulator sharing its own dedicated pCPUs is fine
    // (Nova's `share` policy); only other domains' pCPUs count. One drift for all of them.
    let mut emulator_hits = BTreeMap::new();
    for s in o
        .threads
        .values()
        .filter(|s| !vcpu_tids.contains(&s.tid) && !s.kernel_worker)
    {
        if let Some(cpus) = may_run_on(Some(s), d.emulator_pin.as_ref()) {
            foreign_dedicated(cpus, &d.name, owners, &mut emulator_hits);
        }
    }
    let expected = d
        .emulator_pin
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    drifts.extend(overlap_drift("emulator".into(), expected, emulator_hits));

    let mut drifted_vcpus: BTreeMap<Check, u32> = Check::ALL.iter().map(|c| (*c, 0)).collect();
    for dr in drifts.iter().filter(|d| d.vcpu != "emulator") {
        *drifted_vcpus.entry(dr.check).or_default() += 1;
    }
    DomainReport {
        domain: d.name.clone(),
        uuid: d.uuid.clone(),
        nova: d.nova.clone(),
        pinned: kinds.iter().any(|k| k.is_vcpupin()),
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
    use crate::model::pinning::PlacementSample;

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
                    kernel_worker: false,
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

    fn kinds(r: &PinningReport, dom: &str) -> Vec<PinKind> {
        let d = r.domains.iter().find(|d| d.domain == dom).unwrap();
        d.vcpus.iter().map(|v| v.kind).collect()
    }

    /// A domain whose vCPUs float over `<vcpu cpuset=set>` (Nova's shared policy).
    fn floating(name: &str, base: u32, n: usize, set: &str) -> DomainObservation {
        let mut o = healthy(name, base, &vec![set; n]);
        for v in &mut o.domain.as_mut().unwrap().vcpus {
            v.shared_set = true;
        }
        o
    }

    #[test]
    fn pin_kinds_say_what_the_pin_is() {
        let mut none = healthy("n", 501, &["0-3"]);
        none.domain.as_mut().unwrap().vcpus[0].pin = None;
        let r = evaluate(&[
            // vCPU 0 alone on pCPU 0; vCPU 1 shares pCPU 1 with s's vCPU 0.
            healthy("d", 101, &["0", "1"]),
            healthy("s", 201, &["1", "2-3"]),
            floating("f", 301, 2, "3"),
            none,
        ]);
        assert_eq!(kinds(&r, "d"), [PinKind::Dedicated, PinKind::Shared]);
        assert_eq!(kinds(&r, "s"), [PinKind::Shared, PinKind::Shared]);
        assert_eq!(kinds(&r, "f"), [PinKind::Floating, PinKind::Floating]);
        assert_eq!(kinds(&r, "n"), [PinKind::None]);
        let pinned: Vec<bool> = r.domains.iter().map(|d| d.pinned).collect();
        // d, f, n, s (sorted by name): a floating set is no pin.
        assert_eq!(pinned, [true, false, false, true]);
        // Only <vcpupin> vCPUs count: f's two floating vCPUs on pCPU 3 do not.
        assert_eq!(
            r.pcpu_pinned_vcpus,
            BTreeMap::from([(0, 1), (1, 2), (2, 1), (3, 1)])
        );
        let j = serde_json::to_value(&r.domains[1]).unwrap();
        assert_eq!(j["pinned"], false);
        assert_eq!(j["vcpus"][0]["kind"], "floating");
    }

    #[test]
    fn floating_vcpus_are_not_counted_as_pinned_at_scale() {
        // 60 domains of 3 vCPUs floating over pCPU 1: nothing is pinned there (it was 180).
        let obs: Vec<_> = (0..60)
            .map(|i| floating(&format!("f{i:02}"), 1000 + 10 * i, 3, "1"))
            .collect();
        let r = evaluate(&obs);
        assert!(r.pcpu_pinned_vcpus.is_empty(), "{:?}", r.pcpu_pinned_vcpus);
        assert!(r.domains.iter().all(|d| !d.pinned && d.drifts.is_empty()));
    }

    #[test]
    fn overlap_labels_are_bounded_sorted_and_stable() {
        // A floating domain over pCPUs 0-5, each dedicated to another domain.
        let mut obs: Vec<_> = ["o5", "o1", "o4", "o0", "o2", "o3"]
            .iter()
            .enumerate()
            .map(|(i, n)| healthy(n, 100 * (i as u32 + 1) + 1, &[&n[1..]]))
            .collect();
        let mut f = healthy("f", 901, &["0-5"]);
        f.domain.as_mut().unwrap().vcpus[0].pin = None;
        f.domain.as_mut().unwrap().emulator_pin = None;
        obs.push(f.clone());
        let r = evaluate(&obs);
        let want_label = "0-5 (o0, o1, o2 +3 more)";
        let d = r.domains.iter().find(|d| d.domain == "f").unwrap();
        let vcpu0 = d.drifts.iter().find(|x| x.vcpu == "0").unwrap();
        assert_eq!(vcpu0.actual, want_label);
        let owners: Vec<(&str, String)> = vcpu0
            .owners
            .iter()
            .map(|o| (o.domain.as_str(), o.cpus.to_string()))
            .collect();
        assert_eq!(
            owners,
            [
                ("o0", "0".into()),
                ("o1", "1".into()),
                ("o2", "2".into()),
                ("o3", "3".into()),
                ("o4", "4".into()),
                ("o5", "5".into())
            ]
        );
        // The emulator (same reach) has one drift with the same bounded label.
        let emu: Vec<_> = d.drifts.iter().filter(|x| x.vcpu == "emulator").collect();
        assert_eq!(emu.len(), 1);
        assert_eq!(emu[0].actual, want_label);
        // An unrelated domain starting elsewhere changes no label.
        obs.push(healthy("z", 9001, &["9"]));
        let r2 = evaluate(&obs);
        let d2 = r2.domains.iter().find(|d| d.domain == "f").unwrap();
        assert_eq!(d2.drifts, d.drifts);
        // Fewer owners than the cap: all named, no "+0 more".
        let r3 = evaluate(&[healthy("a", 101, &["0"]), healthy("b", 201, &["1"]), f]);
        let d3 = r3.domains.iter().find(|d| d.domain == "f").unwrap();
        assert_eq!(d3.drifts[0].actual, "0-1 (a, b)");
    }

    #[test]
    fn kernel_workers_in_the_qemu_process_are_not_emulator_threads() {
        // KVM's NX huge-page recovery worker lives in b's QEMU process (Linux ≥ 6.13) and may
        // run anywhere, a's dedicated pCPU 0 included: no overlap for b.
        let mut b = healthy("b", 201, &["1"]);
        b.threads.insert(
            250,
            ThreadState {
                tid: 250,
                comm: "kvm-nx-lpage-re".into(),
                affinity: cpus("0-1"),
                kernel_worker: true,
                ..Default::default()
            },
        );
        let r = evaluate(&[healthy("a", 101, &["0"]), b.clone()]);
        assert!(drifts(&r, "b").is_empty(), "{:?}", drifts(&r, "b"));
        // The same thread, were it QEMU's own, would overlap.
        b.threads.get_mut(&250).unwrap().kernel_worker = false;
        let r = evaluate(&[healthy("a", 101, &["0"]), b]);
        assert_eq!(
            drifts(&r, "b"),
            vec![(
                Check::Overlap,
                "emulator".into(),
                "1".into(),
                "0 (a)".into()
            )]
        );
    }

    #[test]
    fn overlap_label_stays_short_at_sixty_domains() {
        // 60 domains each dedicated to one pCPU, one domain floating over all of them.
        let mut obs: Vec<_> = (0..60u32)
            .map(|i| {
                healthy(
                    &format!("instance-{i:08x}"),
                    1000 + 10 * i,
                    &[&i.to_string()],
                )
            })
            .collect();
        let mut f = healthy("instance-000000ff", 9001, &["0-59"]);
        f.domain.as_mut().unwrap().vcpus[0].pin = None;
        f.domain.as_mut().unwrap().emulator_pin = None;
        obs.push(f);
        let r = evaluate(&obs);
        let d = r
            .domains
            .iter()
            .find(|d| d.domain == "instance-000000ff")
            .unwrap();
        let label = &d.drifts[0].actual;
        assert_eq!(
            label,
            "0-59 (instance-00000000, instance-00000001, instance-00000002 +57 more)"
        );
        assert_eq!(d.drifts[0].owners.len(), 60);
    }
}
