//! The driver's tests (every check together), and the fixtures the per-check tests import with
//! `use super::super::tests::*`.

pub(super) use super::evaluate;
use super::*;
use crate::model::VcpuSpec;
pub(super) use crate::model::pinning::Check;

pub(super) fn cpus(s: &str) -> CpuSet {
    s.parse().unwrap()
}

/// A domain `name` whose vCPU i has tid `base+i` and pin `pins[i]`, with healthy threads.
pub(super) fn healthy(name: &str, base: u32, pins: &[&str]) -> DomainObservation {
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
            sched: None,
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
                policy: Some(0),
                rt_priority: 0,
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
            iothreads: Vec::new(),
            numa: Default::default(),
        }),
        threads,
        main_cgroup: Some(format!("{root}/emulator")),
        placement: BTreeMap::new(),
        stolen: BTreeMap::new(),
        numa: None,
    }
}

pub(super) fn drifts(r: &PinningReport, dom: &str) -> Vec<(Check, String, String, String)> {
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
        assert!(d.drifted_vcpus.keys().copied().eq(Check::ALL));
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

/// `o` with I/O thread `id` pinned to `pin`, its thread (tid `tid`, named as QEMU names it)
/// healthy in the domain's `iothreadN` cgroup.
pub(super) fn with_iothread(
    mut o: DomainObservation,
    id: u32,
    tid: u32,
    pin: &str,
) -> DomainObservation {
    let spec = crate::model::pinning::IothreadSpec {
        id,
        pin: Some(cpus(pin)),
        sched: None,
    };
    let root = o.main_cgroup.clone().unwrap();
    let root = root.strip_suffix("/emulator").unwrap();
    o.threads.insert(
        tid,
        ThreadState {
            tid,
            comm: spec.comm(),
            affinity: cpus(pin),
            cgroup: Some(format!("{root}/iothread{id}")),
            cgroup_cpus: Some(cpus(pin)),
            policy: Some(0),
            ..Default::default()
        },
    );
    o.domain.as_mut().unwrap().iothreads.push(spec);
    o
}

#[test]
fn pinned_iothreads_are_checked_like_vcpus_and_named_iothread_n() {
    let a = with_iothread(healthy("a", 101, &["0", "1"]), 1, 150, "2");
    assert!(drifts(&evaluate(std::slice::from_ref(&a)), "a").is_empty());

    // `taskset -p` of the I/O thread elsewhere, and a cgroup move behind libvirt's back.
    let mut moved = a.clone();
    let t = moved.threads.get_mut(&150).unwrap();
    t.affinity = cpus("0-3");
    t.cgroup = Some("/machine/qemu-1-a.libvirt-qemu/emulator".into());
    t.cgroup_cpus = Some(cpus("0-1"));
    let r = evaluate(&[moved]);
    assert_eq!(
        drifts(&r, "a"),
        vec![
            (
                Check::Affinity,
                "iothread1".into(),
                "2".into(),
                "0-3".into()
            ),
            (Check::Cpuset, "iothread1".into(), "2".into(), "0-1".into()),
            (
                Check::Cgroup,
                "iothread1".into(),
                "iothread1".into(),
                "emulator".into()
            ),
        ]
    );
    // Not a drifted vCPU.
    assert!(r.domains[0].drifted_vcpus.values().all(|n| *n == 0));

    // An I/O thread on b's dedicated pCPU overlaps as itself, not as an emulator thread.
    let r = evaluate(&[
        with_iothread(healthy("a", 101, &["0", "1"]), 1, 150, "2"),
        healthy("b", 201, &["2"]),
    ]);
    assert_eq!(
        drifts(&r, "a"),
        vec![(
            Check::Overlap,
            "iothread1".into(),
            "2".into(),
            "2 (b)".into()
        )]
    );
}

#[test]
fn an_unpinned_iothread_stays_an_emulator_thread_and_a_missing_one_is_unknown() {
    // Pinned nowhere of its own: its reach of b's pCPU 2 is the emulator threads' overlap.
    let mut a = with_iothread(healthy("a", 101, &["0", "1"]), 1, 150, "2");
    a.domain.as_mut().unwrap().iothreads[0].pin = None;
    let r = evaluate(&[a, healthy("b", 201, &["2"])]);
    assert_eq!(
        drifts(&r, "a"),
        vec![(
            Check::Overlap,
            "emulator".into(),
            "0-1".into(),
            "2 (b)".into()
        )]
    );
    // Declared and pinned, but no thread of that name (not started yet): nothing to compare.
    let mut a = with_iothread(healthy("a", 101, &["0"]), 1, 150, "0");
    a.threads.remove(&150);
    assert!(drifts(&evaluate(&[a]), "a").is_empty());
}

/// A tick's re-evaluation of the domains it changed gives the report a full evaluation would,
/// and keeps the other domains' reports as they were.
#[test]
fn reevaluating_the_changed_domains_equals_a_full_evaluation() {
    use crate::model::pinning::PlacementSample;
    let sample = |offpin_window: u64, cpu: u32| PlacementSample {
        offpin_ns_total: 7_000_000,
        offpin_ns_window: offpin_window,
        migrations_total: 3,
        last_cpu: cpu,
    };
    let mut obs = vec![
        healthy("a", 101, &["0", "1"]),
        healthy("b", 201, &["2", "3"]),
        healthy("c", 301, &["1", "5"]),
    ];
    for o in &mut obs {
        for v in o.domain.as_ref().unwrap().vcpus.clone() {
            let cpu = v.pin.unwrap().iter().next().unwrap();
            o.placement.insert(v.tid.unwrap(), sample(0, cpu));
        }
    }
    let before = evaluate(&obs);
    // b's vCPU 1 ran off its pin within the window; a's vCPU 0 migrated within its pin only.
    obs[1].placement.insert(202, sample(2_000_000, 0));
    obs[0].placement.insert(101, sample(0, 0));
    let again = reevaluate(&obs, &before, &BTreeSet::from([1]));
    let full = evaluate(&obs);
    let json = |r: &PinningReport| serde_json::to_value(r).unwrap();
    assert_eq!(json(&again), json(&full));
    assert!(
        drifts(&again, "b")
            .iter()
            .any(|(c, v, ..)| *c == Check::Placement && v == "1"),
        "{:?}",
        drifts(&again, "b")
    );
    assert_eq!(
        drifts(&again, "c"),
        drifts(&before, "c"),
        "c's overlap kept"
    );
    assert!(!drifts(&again, "c").is_empty());
    assert_ne!(again.findings_version, before.findings_version);
    // The same findings again (an engine keeps their version then); b's placement drift differs.
    assert!(again.same_findings(&full) && full.same_findings(&evaluate(&obs)));
    assert!(!again.same_findings(&before));
    // Kept means not evaluated again: a mark on c's previous report survives, b's does not.
    let mut marked = before.clone();
    for d in &mut marked.domains {
        d.uuid = "marked".into();
    }
    let kept = reevaluate(&obs, &marked, &BTreeSet::from([1]));
    let uuids: Vec<&str> = kept.domains.iter().map(|d| d.uuid.as_str()).collect();
    assert_eq!(uuids, ["marked", "uuid-b", "marked"]);
}

/// The threads a tick need not re-read: whatever their affinity within their cpuset cgroup,
/// every check finds the same; the others are listed.
#[test]
fn affinity_deciders_are_the_threads_whose_affinity_can_change_a_finding() {
    // a: two dedicated vCPUs (one-CPU cgroups), emulator on its own pCPUs.
    let mut a = healthy("a", 101, &["0", "1"]);
    // A helper thread and a kernel worker in a's emulator cgroup.
    let helper = ThreadState {
        tid: 103,
        comm: "worker".into(),
        ..a.threads[&100].clone()
    };
    a.threads.insert(103, helper);
    a.threads.insert(
        104,
        ThreadState {
            tid: 104,
            comm: "kvm-nx-lpage-re".into(),
            kernel_worker: true,
            ..a.threads[&100].clone()
        },
    );
    // b: vCPUs pinned to two pCPUs each (the affinity may narrow within them).
    let b = healthy("b", 201, &["2-3", "2-3"]);
    // f: floating over 4-7, its emulator cgroup reaching a's dedicated pCPU 1.
    let mut f = floating("f", 301, 2, "4-7");
    f.threads.get_mut(&300).unwrap().cgroup_cpus = Some(cpus("1,4-7"));
    f.threads.get_mut(&300).unwrap().affinity = cpus("4-7");
    // n: an unpinned vCPU in a cgroup of shared pCPUs, one in a cgroup reaching a's pCPU 0 (as
    // its emulator's does), one whose last reading lies outside its cgroup (no kernel shows
    // that: read it again).
    let mut n = healthy("n", 401, &["4-7", "0-7", "4-7"]);
    for v in &mut n.domain.as_mut().unwrap().vcpus {
        v.pin = None;
    }
    n.threads.get_mut(&403).unwrap().affinity = cpus("0");
    let obs = [a, b, f, n];
    let deciders = affinity_deciders(&obs);
    assert_eq!(
        deciders,
        vec![
            vec![],
            vec![201, 202],
            vec![300, 301, 302],
            vec![400, 402, 403]
        ]
    );

    // Every other thread: any affinity within its cgroup leaves every finding as it was.
    let before = evaluate(&obs);
    for (i, o) in obs.iter().enumerate() {
        for (tid, t) in &o.threads {
            if deciders[i].contains(tid) {
                continue;
            }
            let bound = t.cgroup_cpus.clone().unwrap();
            let mut subsets: Vec<CpuSet> = bound.iter().map(CpuSet::single).collect();
            subsets.push(bound);
            for s in subsets {
                let mut changed = obs.clone();
                changed[i].threads.get_mut(tid).unwrap().affinity = s.clone();
                let after = evaluate(&changed);
                for d in ["a", "b", "f", "n"] {
                    assert_eq!(drifts(&after, d), drifts(&before, d), "{tid} on {s}");
                }
            }
        }
    }
    // A decider's affinity does change one: b's vCPU 0 narrowed to pCPU 2.
    let mut changed = obs.clone();
    changed[1].threads.get_mut(&201).unwrap().affinity = cpus("2");
    assert_ne!(drifts(&evaluate(&changed), "b"), drifts(&before, "b"));
}
