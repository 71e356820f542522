//! Pinning drift end to end on the real libvirt/KVM testbed: domains started with libvirt, drift made
//! the way real bugs make it (behind libvirt's back, via cgroupfs and sched_setaffinity), observed on
//! pinflow's real /metrics.

use pinflow::model::pinning::Check;
use pinflow_tests::libvirt::{self, DomainSpec, RunningDomain};
use pinflow_tests::pinflow::Pinflow;
use pinflow_tests::scrape::{Sample, select, source_up};
use pinflow_tests::{require_privileged, run, wait_for};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Short pass interval and placement window so repairs show quickly. The `stolen` check is off
/// (`stolen_share = 1`) except where a test is about it: on a two-CPU testbed shared with builds
/// and other domains, every dedicated pCPU loses more than 5 % to other tasks.
const CONFIG: &str =
    "[pinning]\ninterval_seconds = 0.5\nplacement_window_seconds = 2\nstolen_share = 1.0\n";
const WAIT: Duration = Duration::from_secs(10);

type DriftRow = (String, String, String, String);

fn drift_rows(s: &[Sample], domain: &str) -> BTreeSet<DriftRow> {
    select(s, "pinflow_vcpu_pinning_drift", &[("domain", domain)])
        .into_iter()
        .map(|x| {
            let l = |k: &str| x.labels.get(k).cloned().unwrap_or_default();
            (l("vcpu"), l("check"), l("expected"), l("actual"))
        })
        .collect()
}

fn row(vcpu: &str, check: &str, expected: &str, actual: &str) -> DriftRow {
    (vcpu.into(), check.into(), expected.into(), actual.into())
}

fn drifted(s: &[Sample], domain: &str, check: &str) -> Option<f64> {
    select(
        s,
        "pinflow_domain_drifted_vcpus",
        &[("domain", domain), ("check", check)],
    )
    .first()
    .map(|x| x.value)
}

/// Waits until the domain is reported (all five check gauges) and its drift series are exactly `want`.
fn expect_drift(pf: &Pinflow, domain: &str, want: &[DriftRow]) -> Vec<Sample> {
    expect_drift_allowing(pf, domain, want, &[])
}

/// Like [`expect_drift`], but the rows of `may_also` may be present too: moving an idle vCPU off its
/// pin is `placement` drift only if the guest happened to run within the window.
fn expect_drift_allowing(
    pf: &Pinflow,
    domain: &str,
    want: &[DriftRow],
    may_also: &[DriftRow],
) -> Vec<Sample> {
    let want: BTreeSet<DriftRow> = want.iter().cloned().collect();
    let allowed: BTreeSet<DriftRow> = want.iter().chain(may_also).cloned().collect();
    let mut last = BTreeSet::new();
    let got = wait_for(WAIT, || {
        let s = pf.scrape();
        let reported = select(&s, "pinflow_domain_drifted_vcpus", &[("domain", domain)]).len()
            == Check::ALL.len();
        last = drift_rows(&s, domain);
        (reported && last.is_superset(&want) && last.is_subset(&allowed)).then_some(s)
    });
    match got {
        Some((s, took)) => {
            eprintln!("{domain}: drift series as expected after {took:?}: {last:?}");
            s
        }
        None => panic!(
            "{domain}: drift series {last:?}, want {want:?} (+ maybe {may_also:?})\n{}",
            pf.log()
        ),
    }
}

/// Repairs vCPU 0 the way an operator does (`virsh vcpupin --live`) and expects every drift gone.
fn repair_vcpu0(pf: &Pinflow, domain: &str, cpu: &str) {
    libvirt::virsh(&["vcpupin", domain, "0", cpu, "--live"]).expect("repair");
    let s = expect_drift(pf, domain, &[]);
    assert_counts(&s, domain, &[]);
}

/// 1.0 when the domain currently has a `placement` drift row.
fn placement_seen(s: &[Sample], domain: &str) -> f64 {
    f64::from(u8::from(
        drift_rows(s, domain).iter().any(|r| r.1 == "placement"),
    ))
}

fn assert_counts(s: &[Sample], domain: &str, want: &[(&str, f64)]) {
    for check in Check::ALL.map(Check::as_str) {
        let n = want
            .iter()
            .find(|(c, _)| *c == check)
            .map_or(0.0, |(_, n)| *n);
        assert_eq!(
            drifted(s, domain, check),
            Some(n),
            "{domain} drifted_vcpus{{check={check}}}"
        );
    }
}

/// `pinflow_domain_vcpus` of `domain`: (kind, vCPUs), sorted.
fn vcpu_kinds(s: &[Sample], domain: &str) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = select(s, "pinflow_domain_vcpus", &[("domain", domain)])
        .into_iter()
        .map(|x| (x.labels["kind"].clone(), x.value))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn privileged(test: &str) -> bool {
    if !require_privileged(test, &["virsh", "taskset", "/usr/sbin/libvirtd"]) {
        return false;
    }
    libvirt::ensure_daemons().expect("libvirt testbed");
    true
}

fn write(path: &std::path::Path, v: &str) {
    std::fs::write(path, v).unwrap_or_else(|e| panic!("write {v:?} to {}: {e}", path.display()));
}

fn start(spec: &DomainSpec) -> RunningDomain {
    libvirt::start(spec).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn domains_appear_with_nova_metadata_and_disappear_when_destroyed() {
    if !privileged("domains_appear_with_nova_metadata_and_disappear_when_destroyed") {
        return;
    }
    let pf = Pinflow::start(CONFIG, &[]);
    let spec = DomainSpec::pinned("pf-life", &["0"]).with_nova("life-1", "qa", "m1.tiny");
    let dom = start(&spec);
    let t0 = Instant::now();
    let (s, took) = wait_for(WAIT, || {
        let s = pf.scrape();
        (!select(&s, "pinflow_instance_info", &[("domain", "pf-life")]).is_empty()).then_some(s)
    })
    .unwrap_or_else(|| panic!("pf-life never appeared\n{}", pf.log()));
    eprintln!(
        "pf-life appeared {took:?} after `virsh start` returned ({:?} total)",
        t0.elapsed()
    );
    let info = select(&s, "pinflow_instance_info", &[("domain", "pf-life")]);
    let l = &info[0].labels;
    assert_eq!(l["uuid"], spec.uuid);
    assert_eq!(l["name"], "life-1");
    assert_eq!(l["project"], "qa");
    assert_eq!(l["project_id"], "a1b2c3d4e5f60718293a4b5c6d7e8f90");
    assert_eq!(l["user_id"], "0f6c1c8e2f3a4b5c9d8e7f6a5b4c3d2e");
    assert_eq!(l["flavor"], "m1.tiny");
    assert_eq!(info[0].value, 1.0);
    assert_counts(&s, "pf-life", &[]);
    assert!(drift_rows(&s, "pf-life").is_empty());
    assert_eq!(source_up(&s, "libvirt"), Some(1.0));
    assert!(
        !select(
            &s,
            "pinflow_vcpu_wait_seconds_total",
            &[("domain", "pf-life")]
        )
        .is_empty()
    );

    drop(dom);
    let gone = wait_for(WAIT, || {
        let s = pf.scrape();
        (select(&s, "pinflow_instance_info", &[("domain", "pf-life")]).is_empty()
            && select(&s, "pinflow_domain_drifted_vcpus", &[("domain", "pf-life")]).is_empty())
        .then_some(())
    });
    let (_, took) =
        gone.unwrap_or_else(|| panic!("pf-life series stayed after destroy\n{}", pf.log()));
    eprintln!("pf-life series gone {took:?} after `virsh destroy` returned");
}

#[test]
fn affinity_drift_behind_a_widened_cgroup_and_its_repair() {
    if !privileged("affinity_drift_behind_a_widened_cgroup_and_its_repair") {
        return;
    }
    let pf = Pinflow::start(CONFIG, &[]);
    let dom = start(&DomainSpec::pinned("pf-aff", &["0"]));
    expect_drift(&pf, "pf-aff", &[]);
    let cg = dom.cpuset_cgroup_dir();
    let tid = dom.vcpu_tid(0).to_string();
    // taskset alone fails while the vcpu0 cgroup holds cpuset 0: widen the cgroup first (the bug).
    write(&cg.join("vcpu0/cpuset.cpus"), "0-1");
    run("taskset", &["-pc", "1", &tid]);
    let s = expect_drift_allowing(
        &pf,
        "pf-aff",
        &[
            row("0", "affinity", "0", "1"),
            row("0", "cpuset", "0", "0-1"),
        ],
        &[row("0", "placement", "0", "1")],
    );
    let placed = placement_seen(&s, "pf-aff");
    assert_counts(
        &s,
        "pf-aff",
        &[("affinity", 1.0), ("cpuset", 1.0), ("placement", placed)],
    );

    repair_vcpu0(&pf, "pf-aff", "0");
}

#[test]
fn cgroup_cpuset_changed_behind_libvirts_back() {
    if !privileged("cgroup_cpuset_changed_behind_libvirts_back") {
        return;
    }
    let pf = Pinflow::start(CONFIG, &[]);
    let dom = start(&DomainSpec::pinned("pf-cpuset", &["0"]));
    expect_drift(&pf, "pf-cpuset", &[]);
    let cg = dom.cpuset_cgroup_dir();
    write(&cg.join("vcpu0/cpuset.cpus"), "1");
    // The kernel rebinds the thread's affinity to a changed cpuset (v1 and v2): read what it did,
    // independently of pinflow, to know whether the affinity check must fire too.
    let tid = dom.vcpu_tid(0);
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).expect("status");
    let affinity = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_string();
    let mut want = vec![row("0", "cpuset", "0", "1")];
    if affinity != "0" {
        want.push(row("0", "affinity", "0", &affinity));
    }
    let s = expect_drift_allowing(&pf, "pf-cpuset", &want, &[row("0", "placement", "0", "1")]);
    let placed = placement_seen(&s, "pf-cpuset");
    let affinity_drift = f64::from(u8::from(affinity != "0"));
    assert_counts(
        &s,
        "pf-cpuset",
        &[
            ("cpuset", 1.0),
            ("affinity", affinity_drift),
            ("placement", placed),
        ],
    );

    repair_vcpu0(&pf, "pf-cpuset", "0");
}

#[test]
fn vcpu_thread_moved_into_the_emulator_cgroup() {
    if !privileged("vcpu_thread_moved_into_the_emulator_cgroup") {
        return;
    }
    let pf = Pinflow::start(CONFIG, &[]);
    let dom = start(&DomainSpec::pinned("pf-cgroup", &["0"]));
    expect_drift(&pf, "pf-cgroup", &[]);
    let tid = dom.vcpu_tid(0);
    dom.move_thread_to_cgroup(tid, "emulator");
    let s = expect_drift(&pf, "pf-cgroup", &[row("0", "cgroup", "vcpu0", "emulator")]);
    assert_counts(&s, "pf-cgroup", &[("cgroup", 1.0)]);

    dom.move_thread_to_cgroup(tid, "vcpu0");
    let s = expect_drift(&pf, "pf-cgroup", &[]);
    assert_counts(&s, "pf-cgroup", &[]);
}

#[test]
fn two_domains_pinned_onto_the_same_pcpu_overlap() {
    if !privileged("two_domains_pinned_onto_the_same_pcpu_overlap") {
        return;
    }
    let pf = Pinflow::start(CONFIG, &[]);
    let a = start(&DomainSpec::pinned("pf-ov-a", &["0"]));
    expect_drift(&pf, "pf-ov-a", &[]);
    let b = start(&DomainSpec::pinned("pf-ov-b", &["0"]));
    let s = expect_drift(
        &pf,
        "pf-ov-a",
        &[
            row("0", "overlap", "0", "0 (pf-ov-b)"),
            row("emulator", "overlap", "0", "0 (pf-ov-b)"),
        ],
    );
    assert_counts(&s, "pf-ov-a", &[("overlap", 1.0)]);
    expect_drift(
        &pf,
        "pf-ov-b",
        &[
            row("0", "overlap", "0", "0 (pf-ov-a)"),
            row("emulator", "overlap", "0", "0 (pf-ov-a)"),
        ],
    );
    let s = pf.scrape();
    assert_eq!(
        select(&s, "pinflow_pcpu_pinned_vcpus", &[("cpu", "0")])[0].value,
        2.0
    );
    // Two vCPUs pinned to one pCPU: neither pin is dedicated any more.
    for d in ["pf-ov-a", "pf-ov-b"] {
        assert_eq!(vcpu_kinds(&s, d), [("shared".to_string(), 1.0)], "{d}");
    }

    drop(b);
    let s = expect_drift(&pf, "pf-ov-a", &[]);
    assert_counts(&s, "pf-ov-a", &[]);
    drop(a);
}

#[test]
fn busy_vcpu_running_off_its_pin_is_placement_drift() {
    if !privileged("busy_vcpu_running_off_its_pin_is_placement_drift") {
        return;
    }
    let pf = Pinflow::start(CONFIG, &[]);
    let mut spec = DomainSpec::pinned("pf-spin", &["0"]);
    spec.spin = true;
    let dom = start(&spec);
    let s = expect_drift(&pf, "pf-spin", &[]);
    assert_eq!(
        source_up(&s, "sched_bpf"),
        Some(1.0),
        "eBPF probe not up:\n{}",
        pf.log()
    );

    let cg = dom.cpuset_cgroup_dir();
    let tid = dom.vcpu_tid(0).to_string();
    // The guest's `jmp $` keeps vCPU 0 busy on its pinned pCPU: wait until it really burns CPU there.
    let run_ns = || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{tid}/schedstat")).unwrap_or_default();
        s.split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let busy = wait_for(WAIT, || {
        let before = run_ns();
        std::thread::sleep(Duration::from_millis(300));
        (run_ns() - before > 200_000_000).then_some(())
    });
    assert!(busy.is_some(), "vCPU 0 of pf-spin never got busy");
    write(&cg.join("vcpu0/cpuset.cpus"), "0-1");
    run("taskset", &["-pc", "1", &tid]);
    let s = expect_drift(
        &pf,
        "pf-spin",
        &[
            row("0", "affinity", "0", "1"),
            row("0", "cpuset", "0", "0-1"),
            row("0", "placement", "0", "1"),
        ],
    );
    assert_counts(
        &s,
        "pf-spin",
        &[("affinity", 1.0), ("cpuset", 1.0), ("placement", 1.0)],
    );
    let offpin = |s: &[Sample]| {
        select(
            s,
            "pinflow_vcpu_offpin_seconds_total",
            &[("domain", "pf-spin")],
        )
        .first()
        .map_or(0.0, |x| x.value)
    };
    let first = offpin(&s);
    assert!(first > 0.0, "off-pin seconds {first}");
    // Counters that move without changing a finding are published every 5 s at most.
    let mut later = first;
    let accrued = wait_for(WAIT, || {
        later = offpin(&pf.scrape());
        (later > first).then_some(())
    });
    assert!(
        accrued.is_some(),
        "a spinning off-pin vCPU must accrue off-pin time: {first} -> {later}"
    );
    let migrations = select(
        &pf.scrape(),
        "pinflow_vcpu_migrations_total",
        &[("domain", "pf-spin")],
    )[0]
    .value;
    assert!(migrations >= 1.0, "migrations {migrations}");

    libvirt::virsh(&["vcpupin", "pf-spin", "0", "0", "--live"]).expect("repair");
    // affinity/cpuset heal at once; placement once the window (2 s) holds no off-pin time.
    let s = expect_drift(&pf, "pf-spin", &[]);
    assert_counts(&s, "pf-spin", &[]);
    assert!(offpin(&s) >= later, "counters never go down");
}

/// Finds libvirtd's pid by its comm.
/// The nice value of each thread of `pid`, by thread name (`/proc/PID/task/*/stat` field 19).
fn thread_nice(pid: u32) -> std::collections::BTreeMap<String, i64> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let Ok(stat) = std::fs::read_to_string(e.expect("entry").path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        // After the name: state is field 3, so nice (19) is the 17th.
        let nice = stat[close + 1..].split_whitespace().nth(16);
        if let Some(n) = nice.and_then(|n| n.parse().ok()) {
            out.insert(stat[open + 1..close].to_string(), n);
        }
    }
    out
}

fn libvirtd_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            (std::fs::read_to_string(e.path().join("comm")).ok()?.trim() == "libvirtd")
                .then_some(pid)
        })
}

/// SIGCONTs libvirtd even when the test panics.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[test]
fn scrape_answers_while_libvirtd_is_stopped() {
    if !privileged("scrape_answers_while_libvirtd_is_stopped") {
        return;
    }
    let pf = Pinflow::start(CONFIG, &[]);
    let dom = start(&DomainSpec::pinned("pf-hung", &["1"]).with_nova("hung-1", "qa", "m1.tiny"));
    expect_drift(&pf, "pf-hung", &[]);
    // The passes yield to scrapes: the pinning thread runs niced, the thread answering HTTP not.
    let nice = thread_nice(pf.pid());
    assert_eq!(
        (nice.get("pinflow"), nice.get("pinning")),
        (Some(&0), Some(&5)),
        "{nice:?}"
    );
    let pid = libvirtd_pid().expect("libvirtd running");
    run("kill", &["-STOP", &pid.to_string()]);
    let resume = Resume(pid);
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..5 {
        let t0 = Instant::now();
        let s = pf.scrape();
        let took = t0.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "scrape took {took:?} with libvirtd stopped"
        );
        assert_eq!(
            select(&s, "pinflow_instance_info", &[("domain", "pf-hung")]).len(),
            1
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // pinflow still follows drift made while libvirtd is stopped (a move that keeps the thread on
    // its pCPU, so only the cgroup check fires).
    let tid = dom.vcpu_tid(0);
    dom.move_thread_to_cgroup(tid, "emulator");
    expect_drift(&pf, "pf-hung", &[row("0", "cgroup", "vcpu0", "emulator")]);
    drop(resume);
    dom.move_thread_to_cgroup(tid, "vcpu0");
    expect_drift(&pf, "pf-hung", &[]);
}

/// Pin kinds on real domains: one vCPU pinned alone (dedicated), a domain floating over
/// `<vcpu cpuset>` (Nova's shared policy: floating, not pinned, not counted per pCPU), then four
/// more domains pinned onto the same pCPU: the floating domain's overlap label names the pCPU
/// and three owners `+1 more`, the API and `pinflow pinning` all four.
#[test]
fn pin_kinds_and_bounded_overlap_labels_on_real_domains() {
    if !privileged("pin_kinds_and_bounded_overlap_labels_on_real_domains") {
        return;
    }
    let pf = Pinflow::start(CONFIG, &[]);
    let a = start(&DomainSpec::pinned("pfo-kind-a", &["0"]));
    let mut spec = DomainSpec::pinned("pfo-kind-f", &[]);
    spec.pins = vec![None, None, None];
    spec.vcpu_cpuset = Some("1".into());
    let f = start(&spec);
    let s = expect_drift(&pf, "pfo-kind-f", &[]);
    expect_drift(&pf, "pfo-kind-a", &[]);
    assert_eq!(
        vcpu_kinds(&s, "pfo-kind-a"),
        [("dedicated".to_string(), 1.0)]
    );
    assert_eq!(
        vcpu_kinds(&s, "pfo-kind-f"),
        [("floating".to_string(), 3.0)]
    );
    // The three floating vCPUs on pCPU 1 are not pinned there.
    assert!(
        select(&s, "pinflow_pcpu_pinned_vcpus", &[("cpu", "1")]).is_empty(),
        "{:?}",
        select(&s, "pinflow_pcpu_pinned_vcpus", &[])
    );
    let api: serde_json::Value = serde_json::from_str(&pf.get("/api/v1/pinning")).expect("json");
    let dom = |name: &str| {
        api["domains"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["domain"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in {api:#}"))
    };
    assert_eq!(dom("pfo-kind-f")["pinned"], false);
    assert_eq!(dom("pfo-kind-f")["vcpus"][2]["kind"], "floating");
    assert_eq!(dom("pfo-kind-a")["pinned"], true);
    assert_eq!(dom("pfo-kind-a")["vcpus"][0]["kind"], "dedicated");
    let out = pinning_table();
    let kinds: Vec<(String, String)> = out
        .lines()
        .filter(|l| l.starts_with("pfo-kind-"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|c| c.len() >= 7 && c[3].parse::<u32>().is_ok())
        .map(|c| (c[0].to_string(), format!("{} {}", c[5], c[6])))
        .collect();
    assert_eq!(
        kinds,
        [
            ("pfo-kind-a".to_string(), "dedicated 0".to_string()),
            ("pfo-kind-f".to_string(), "floating 1".to_string()),
            ("pfo-kind-f".to_string(), "floating 1".to_string()),
            ("pfo-kind-f".to_string(), "floating 1".to_string()),
        ],
        "{out}"
    );

    // Widen the floating domain's reach to pCPU 0, where four domains are now pinned.
    let others: Vec<RunningDomain> = ["b", "c", "d"]
        .iter()
        .map(|n| start(&DomainSpec::pinned(&format!("pfo-kind-{n}"), &["0"])))
        .collect();
    for v in 0..3 {
        libvirt::virsh(&["vcpupin", "pfo-kind-f", &v.to_string(), "0-1", "--live"])
            .expect("vcpupin");
    }
    libvirt::virsh(&["emulatorpin", "pfo-kind-f", "0-1", "--live"]).expect("emulatorpin");
    let label = "0 (pfo-kind-a, pfo-kind-b, pfo-kind-c +1 more)";
    let s = expect_drift(
        &pf,
        "pfo-kind-f",
        &[
            row("0", "overlap", "0-1", label),
            row("1", "overlap", "0-1", label),
            row("2", "overlap", "0-1", label),
            row("emulator", "overlap", "0-1", label),
        ],
    );
    // `virsh vcpupin` turned the floating set into real pins over two pCPUs: shared.
    assert_eq!(vcpu_kinds(&s, "pfo-kind-f"), [("shared".to_string(), 3.0)]);
    assert_eq!(vcpu_kinds(&s, "pfo-kind-a"), [("shared".to_string(), 1.0)]);
    let api: serde_json::Value = serde_json::from_str(&pf.get("/api/v1/pinning")).expect("json");
    let f_api = api["domains"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["domain"] == "pfo-kind-f"))
        .cloned()
        .expect("pfo-kind-f");
    let owners: Vec<String> = f_api["drifts"][0]["owners"]
        .as_array()
        .expect("owners")
        .iter()
        .map(|o| {
            format!(
                "{} {}",
                o["domain"].as_str().unwrap_or(""),
                o["cpus"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        owners,
        [
            "pfo-kind-a 0",
            "pfo-kind-b 0",
            "pfo-kind-c 0",
            "pfo-kind-d 0"
        ],
        "{f_api:#}"
    );
    let out = pinning_table();
    assert!(
        out.lines().any(|l| l.starts_with("pfo-kind-f")
            && l.contains("overlap")
            && l.ends_with("0 (pfo-kind-a), 0 (pfo-kind-b), 0 (pfo-kind-c), 0 (pfo-kind-d)")),
        "{out}"
    );
    drop(others);
    drop(f);
    drop(a);
}

/// `pinflow pinning` on this host: the table, after checking the exit status says it read its
/// sources (0: no drift, 1: drift — other tests' domains may drift at any time).
fn pinning_table() -> String {
    let out = std::process::Command::new(pinflow_tests::pinflow::bin())
        .arg("pinning")
        .output()
        .expect("run pinflow pinning");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "pinflow pinning: {:?}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The thread of `dom`'s QEMU process named `comm`, if any.
fn thread_named(dom: &RunningDomain, comm: &str) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{}/task", dom.pid()))
        .ok()?
        .filter_map(Result::ok)
        .find(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == comm))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
}

/// Moves `tid` into the domain's own cgroup (which allows every CPU) and lets it run on pCPUs
/// 0-1, as a thread outside libvirt's emulator placement would; returns its affinity as the
/// kernel reports it.
fn unconfine(dom: &RunningDomain, tid: u32) -> String {
    dom.move_thread_to_cgroup(tid, "");
    run("taskset", &["-p", "-c", "0-1", &tid.to_string()]);
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_string()
}

/// KVM's NX huge-page recovery worker is a thread of the QEMU process on Linux ≥ 6.13 (a
/// `PF_USER_WORKER`), but kernel code, not an emulator thread: reaching another domain's
/// dedicated pCPU, it raises no overlap. A real emulator thread (QEMU's monitor I/O thread) moved
/// the same way does.
#[test]
fn kvm_kernel_worker_is_not_an_emulator_thread() {
    if !privileged("kvm_kernel_worker_is_not_an_emulator_thread") {
        return;
    }
    let pf = Pinflow::start(CONFIG, &[]);
    let a = start(&DomainSpec::pinned("pfo-kw-a", &["0"]));
    let b = start(&DomainSpec::pinned("pfo-kw-b", &["1"]));
    expect_drift(&pf, "pfo-kw-b", &[]);
    // (comm is cut to 15 bytes: `kvm-nx-lpage-recovery`)
    let worker = thread_named(&b, "kvm-nx-lpage-re").unwrap_or_else(|| {
        panic!("no kvm-nx-lpage-recovery thread in pfo-kw-b's QEMU process (Linux ≥ 6.13 with NX huge pages)")
    });
    assert_eq!(unconfine(&b, worker), "0-1");
    // Two pinning passes (0.5 s each) later, still no drift.
    std::thread::sleep(Duration::from_millis(1500));
    let s = expect_drift(&pf, "pfo-kw-b", &[]);
    assert_counts(&s, "pfo-kw-b", &[]);

    let io = thread_named(&b, "IO mon_iothread").expect("QEMU's monitor I/O thread");
    assert_eq!(unconfine(&b, io), "0-1");
    expect_drift(
        &pf,
        "pfo-kw-b",
        &[row("emulator", "overlap", "1", "0 (pfo-kw-a)")],
    );
    drop(b);
    drop(a);
}

/// A libvirt state directory holding copies of the status files of `names` only, and its path
/// for `--libvirt-state-dir`: the shared libvirtd's other domains (other tests, benchmarks)
/// starting, stopping or overlapping must not change what these tests see. Changes made through
/// libvirt after the copy are not seen there.
fn private_state_dir(names: &[&str]) -> (tempfile::TempDir, String) {
    let state = tempfile::tempdir().expect("tempdir");
    for n in names {
        std::fs::copy(
            format!("{}/{n}.xml", libvirt::STATE_DIR),
            state.path().join(format!("{n}.xml")),
        )
        .expect("copy the status file");
    }
    let dir = state.path().to_string_lossy().to_string();
    (state, dir)
}

/// `pinflow_pinning_passes_total{kind}` and `pinflow_pinning_thread_reads_total` of a scrape.
fn passes(s: &[Sample]) -> (f64, f64, f64) {
    let v = |name: &str, labels: &[(&str, &str)]| {
        select(s, name, labels)
            .first()
            .map_or(f64::NAN, |x| x.value)
    };
    (
        v("pinflow_pinning_passes_total", &[("kind", "full")]),
        v("pinflow_pinning_passes_total", &[("kind", "targeted")]),
        v("pinflow_pinning_thread_reads_total", &[]),
    )
}

/// The pipeline's mode and fallback reason from `/api/v1/pinning`.
fn mode(pf: &Pinflow) -> (String, String) {
    let body = pf.get("/api/v1/pinning");
    let v: serde_json::Value = serde_json::from_str(&body).expect("pinning JSON");
    let p = &v["passes"];
    (
        p["mode"].as_str().unwrap_or_default().to_string(),
        p["fallback_reason"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Makes a change and returns how long until `/metrics` shows `check` drifting on `domain`.
fn seen_after(pf: &Pinflow, domain: &str, check: &str, change: impl FnOnce()) -> Duration {
    let t0 = Instant::now();
    change();
    let seen = wait_for(WAIT, || {
        (drifted(&pf.scrape(), domain, check) == Some(1.0)).then_some(())
    });
    match seen {
        Some(_) => t0.elapsed(),
        None => panic!("{domain}: {check} drift never seen\n{}", pf.log()),
    }
}

/// Events mode: an affinity change (`taskset -p`), a cpuset write and a cgroup move behind
/// libvirt's back are each seen on /metrics within 1 s, by targeted passes; no full pass runs
/// meanwhile (reconcile far away, libvirt hears of nothing) and an idle host reads no thread.
/// (The libvirt-driven passes are covered by the other tests, which run in events mode too.)
#[test]
fn events_mode_sees_affinity_cpuset_and_cgroup_changes_within_a_second() {
    if !privileged("events_mode_sees_affinity_cpuset_and_cgroup_changes_within_a_second") {
        return;
    }
    let dom = start(&DomainSpec::pinned("pf-ev", &["0", "0"]));
    // Nothing below goes through libvirt.
    let (_state, state_dir) = private_state_dir(&["pf-ev"]);
    let pf = Pinflow::start(
        // Affinity changes are seen at the next tick (no syscall tracepoints by default).
        "[pinning]\ninterval_seconds = 0.5\nreconcile_seconds = 600\nplacement_window_seconds = 2\nstolen_share = 1.0\n",
        &["--libvirt-state-dir", &state_dir],
    );
    expect_drift(&pf, "pf-ev", &[]);
    assert_eq!(
        mode(&pf),
        ("events".to_string(), String::new()),
        "{}",
        pf.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    let (full0, targeted0, reads0) = passes(&pf.scrape());
    // Idle: nothing is read.
    std::thread::sleep(Duration::from_secs(3));
    let (full1, targeted1, reads1) = passes(&pf.scrape());
    assert_eq!(
        (full1, targeted1, reads1),
        (full0, targeted0, reads0),
        "idle passes (full, targeted, thread reads)"
    );

    let cg = dom.cpuset_cgroup_dir();
    let tid = dom.vcpu_tid(0);
    let cpuset = seen_after(&pf, "pf-ev", "cpuset", || {
        write(&cg.join("vcpu0/cpuset.cpus"), "0-1");
    });
    let affinity = seen_after(&pf, "pf-ev", "affinity", || {
        run("taskset", &["-pc", "1", &tid.to_string()]);
    });
    let cgroup = seen_after(&pf, "pf-ev", "cgroup", || {
        dom.move_thread_to_cgroup(dom.vcpu_tid(1), "emulator");
    });
    eprintln!("seen after: cpuset {cpuset:?}, affinity {affinity:?}, cgroup {cgroup:?}");
    for (what, took) in [
        ("cpuset", cpuset),
        ("affinity", affinity),
        ("cgroup", cgroup),
    ] {
        assert!(
            took < Duration::from_secs(1),
            "{what} drift seen after {took:?}"
        );
    }
    let (full2, targeted2, reads2) = passes(&pf.scrape());
    assert_eq!(
        full2, full0,
        "no full pass for changes libvirt never hears of"
    );
    assert!(
        targeted2 >= targeted0 + 3.0,
        "targeted passes {targeted0} -> {targeted2}"
    );
    // Each targeted pass read a thread or one domain's threads, not the host's.
    assert!(reads2 > reads0, "thread reads {reads0} -> {reads2}");
    let s = expect_drift_allowing(
        &pf,
        "pf-ev",
        &[
            row("0", "affinity", "0", "1"),
            row("0", "cpuset", "0", "0-1"),
            row("1", "cgroup", "vcpu1", "emulator"),
        ],
        &[row("0", "placement", "0", "1")],
    );
    let placed = placement_seen(&s, "pf-ev");
    assert_counts(
        &s,
        "pf-ev",
        &[
            ("affinity", 1.0),
            ("cpuset", 1.0),
            ("cgroup", 1.0),
            ("placement", placed),
        ],
    );
}

/// `events = false` forces polling mode: full passes every interval still see a cpuset write
/// and an affinity change, and the API says why it polls.
#[test]
fn polling_mode_when_events_are_off_still_detects() {
    if !privileged("polling_mode_when_events_are_off_still_detects") {
        return;
    }
    let dom = start(&DomainSpec::pinned("pf-poll", &["0"]));
    let (_state, state_dir) = private_state_dir(&["pf-poll"]);
    let pf = Pinflow::start(
        "[pinning]\ninterval_seconds = 0.5\nevents = false\nstolen_share = 1.0\n",
        &["--libvirt-state-dir", &state_dir],
    );
    expect_drift(&pf, "pf-poll", &[]);
    assert_eq!(
        mode(&pf),
        ("polling".to_string(), String::new()),
        "{}",
        pf.log()
    );
    let (full0, targeted0, reads0) = passes(&pf.scrape());
    let cg = dom.cpuset_cgroup_dir();
    write(&cg.join("vcpu0/cpuset.cpus"), "0-1");
    run("taskset", &["-pc", "1", &dom.vcpu_tid(0).to_string()]);
    expect_drift_allowing(
        &pf,
        "pf-poll",
        &[
            row("0", "affinity", "0", "1"),
            row("0", "cpuset", "0", "0-1"),
        ],
        &[row("0", "placement", "0", "1")],
    );
    std::thread::sleep(Duration::from_secs(1));
    let (full1, targeted1, reads1) = passes(&pf.scrape());
    assert!(full1 >= full0 + 2.0, "full passes {full0} -> {full1}");
    assert_eq!(targeted1, targeted0, "polling runs no targeted pass");
    assert!(reads1 > reads0, "thread reads {reads0} -> {reads1}");
    repair_vcpu0(&pf, "pf-poll", "0");
}

/// utime + stime of process `pid`, in seconds (`/proc/PID/stat` fields 14 and 15).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let ticks: f64 =
        f[14 - 3].parse::<f64>().expect("utime") + f[15 - 3].parse::<f64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Measurement, not a check: idle CPU of `pinflow serve` (no scrapes) over
/// `PINFLOW_IDLE_SECONDS` (default 60) with `PINFLOW_IDLE_DOMAINS` (default 10) real domains of
/// 4 vCPUs (half pinned, half floating), in events mode and in polling mode. Run a release build:
/// `cargo build --release -p pinflow && PINFLOW_BIN=target/release/pinflow PINFLOW_IDLE_DOMAINS=30
/// cargo test -p pinflow-tests --test pinning idle_cpu -- --ignored --nocapture`.
#[test]
#[ignore = "measurement (minutes); see the doc comment"]
fn idle_cpu_events_vs_polling() {
    if !privileged("idle_cpu_events_vs_polling") {
        return;
    }
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (n, secs) = (
        env("PINFLOW_IDLE_DOMAINS", 10),
        env("PINFLOW_IDLE_SECONDS", 60),
    );
    let doms: Vec<RunningDomain> = (0..n)
        .map(|i| {
            let name = format!("pf-idle-{i:03}");
            let spec = if i % 2 == 0 {
                DomainSpec::pinned(&name, &["0", "1", "0", "1"])
            } else {
                let mut s = DomainSpec::pinned(&name, &[]);
                s.pins = vec![None; 4];
                s.vcpu_cpuset = Some("0-1".into());
                s
            };
            start(&spec)
        })
        .collect();
    let names: Vec<&str> = doms.iter().map(|d| d.name.as_str()).collect();
    let (_state, state_dir) = private_state_dir(&names);
    for (mode_name, cfg) in [
        ("events", "[pinning]\nstolen_share = 1.0\n"),
        ("polling", "[pinning]\nevents = false\nstolen_share = 1.0\n"),
    ] {
        let pf = Pinflow::start(cfg, &["--libvirt-state-dir", &state_dir]);
        let all = wait_for(Duration::from_secs(60), || {
            let s = pf.scrape();
            let seen = doms
                .iter()
                .filter(|d| drifted(&s, &d.name, "affinity").is_some())
                .count();
            (seen == doms.len()).then_some(())
        });
        assert!(all.is_some(), "not every domain reported\n{}", pf.log());
        assert_eq!(mode(&pf).0, mode_name);
        std::thread::sleep(Duration::from_secs(5));
        let (f0, t0, r0) = passes(&pf.scrape());
        let c0 = cpu_seconds(pf.pid());
        std::thread::sleep(Duration::from_secs(secs));
        let c1 = cpu_seconds(pf.pid());
        let (f1, t1, r1) = passes(&pf.scrape());
        println!(
            "IDLE {mode_name}: {n} domains x 4 vCPUs, {secs} s: {:.2} s CPU ({:.3} s per 60 s); \
             full passes {}, targeted {}, thread reads {}",
            c1 - c0,
            (c1 - c0) * 60.0 / secs as f64,
            f1 - f0,
            t1 - t0,
            r1 - r0
        );
    }
}

/// `pinflow_pcpu_stolen_seconds_total` of (domain, cpu, intruder); 0 while absent.
fn stolen(s: &[Sample], domain: &str, cpu: &str, intruder: &str) -> f64 {
    select(
        s,
        "pinflow_pcpu_stolen_seconds_total",
        &[("domain", domain), ("cpu", cpu), ("intruder", intruder)],
    )
    .first()
    .map_or(0.0, |x| x.value)
}

/// CPU time of a task so far (`/proc/PID/schedstat` field 1), seconds.
fn ran_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// A busy loop pinned to one CPU, killed on drop.
struct BusyLoop(std::process::Child);

impl BusyLoop {
    /// Niced to -10, so that it gets most of a CPU the shared testbed's other domains crowd.
    fn start(cpu: &str) -> BusyLoop {
        let child = std::process::Command::new("nice")
            .args([
                "-n",
                "-10",
                "taskset",
                "-c",
                cpu,
                "sh",
                "-c",
                "while :; do :; done",
            ])
            .spawn()
            .expect("spawn the busy loop");
        BusyLoop(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Stops it running (SIGSTOP): its run time is final from here on.
    fn pause(&self) {
        run("kill", &["-STOP", &self.pid().to_string()]);
    }
}

impl Drop for BusyLoop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `/api/v1/intrusions` entry of `cpu`.
fn intrusions_of(pf: &Pinflow, cpu: u64) -> serde_json::Value {
    let body = pf.get("/api/v1/intrusions");
    let v: serde_json::Value = serde_json::from_str(&body).expect("intrusions JSON");
    v["pcpus"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["cpu"].as_u64() == Some(cpu)).cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// Intrusions on a dedicated pCPU: a spinning guest's vCPU pinned alone to CPU 1, then a host
/// busy loop pinned onto CPU 1 (`host` grows by what schedstat says it ran, ±20 %; the API
/// names its pid and comm; `stolen` drift names the class), then another domain's spinning vCPU
/// re-pinned there with `virsh vcpupin` (`other_vcpu` grows; the first owner keeps the pCPU).
#[test]
fn stolen_time_on_a_dedicated_pcpu_is_charged_to_the_intruder() {
    if !privileged("stolen_time_on_a_dedicated_pcpu_is_charged_to_the_intruder") {
        return;
    }
    let mut own = DomainSpec::pinned("stl-own", &["1"]);
    own.spin = true;
    own.emulator_pin = Some("0".into());
    // Floating on CPU 0 (`<vcpu cpuset>`: not a dedicated pCPU, no overlap with stl-own's
    // emulator there).
    let mut other = DomainSpec::pinned("stl-other", &["0"]);
    other.pins = vec![None];
    other.vcpu_cpuset = Some("0".into());
    other.spin = true;
    other.emulator_pin = Some("0".into());
    let own_dom = start(&own);
    let other_dom = start(&other);
    // Only these two domains: the shared libvirtd's others must not share CPU 1's ownership.
    let (state, state_dir) = private_state_dir(&["stl-own", "stl-other"]);
    let pf = Pinflow::start(
        "[pinning]\ninterval_seconds = 0.5\nplacement_window_seconds = 10\nstolen_share = 0.05\n",
        &["--libvirt-state-dir", &state_dir],
    );
    // The shared testbed's other domains run on CPU 1 too (as `host` here): `stolen` may drift.
    let noise: Vec<DriftRow> = [
        "other_vcpu",
        "other_emulator",
        "own_emulator",
        "kernel",
        "host",
    ]
    .iter()
    .map(|c| row("0", "stolen", "1", c))
    .collect();
    expect_drift_allowing(&pf, "stl-own", &[], &noise);
    let vcpu = own_dom.vcpu_tid(0);
    let busy = wait_for(WAIT, || {
        let before = ran_seconds(vcpu);
        std::thread::sleep(Duration::from_millis(300));
        (ran_seconds(vcpu) - before > 0.02).then_some(())
    });
    assert!(busy.is_some(), "vCPU 0 of stl-own never got busy");

    let span = Duration::from_secs(3);
    let host0 = stolen(&pf.scrape(), "stl-own", "1", "host");
    let busy = BusyLoop::start("1");
    std::thread::sleep(span);
    busy.pause();
    let ran = ran_seconds(busy.pid());
    assert!(ran > 0.2, "the busy loop ran only {ran} s on CPU 1");
    // Its last slice is charged within a pass; the API's top list follows the kernel's table
    // within 5 s while counters keep moving (at once when a verdict changes).
    let (pid, mut entry) = (u64::from(busy.pid()), serde_json::Value::Null);
    let found = wait_for(Duration::from_secs(8), || {
        entry = intrusions_of(&pf, 1);
        let top = entry["top"].as_array().cloned().unwrap_or_default();
        let mine = top.into_iter().find(|t| t["pid"].as_u64() == Some(pid))?;
        let seconds = mine["seconds"].as_f64().unwrap_or(0.0);
        ((seconds - ran).abs() <= 0.2 * ran).then_some(mine)
    });
    let Some((mine, _)) = found else {
        panic!("busy loop {pid} ({ran} s on CPU 1) not in the API within ±20 %: {entry}");
    };
    assert_eq!(entry["domain"], "stl-own", "{entry}");
    assert_eq!(entry["vcpu"], 0, "{entry}");
    assert_eq!(mine["comm"], "sh", "{mine}");
    assert_eq!(mine["class"], "host", "{mine}");
    eprintln!(
        "API: pid {pid} comm sh ran {:.3} s on CPU 1",
        mine["seconds"].as_f64().unwrap_or(0.0)
    );
    // The shared testbed's other domains run on CPU 1 too and are `host` here: the class grows
    // by the busy loop's run time and theirs; the loop's own share was checked exactly above.
    // Counters that move without changing a finding reach /metrics within COUNTER_REFRESH (5 s).
    let mut host = 0.0;
    let grew = wait_for(WAIT, || {
        let s = pf.scrape();
        host = stolen(&s, "stl-own", "1", "host") - host0;
        (host >= 0.8 * ran).then_some(s)
    });
    eprintln!("busy loop ran {ran:.3} s; host grew {host:.3} s");
    let Some((s, _)) = grew else {
        panic!("host grew {host} s, the busy loop ran {ran} s");
    };
    assert!(
        drift_rows(&s, "stl-own").contains(&row("0", "stolen", "1", "host")),
        "stolen drift: {:?}\n{}",
        drift_rows(&s, "stl-own"),
        pf.log()
    );
    drop(busy);

    // Another domain's spinning vCPU re-pinned onto CPU 1: an overlap, and `other_vcpu` time
    // on stl-own's pCPU (stl-own, the owner so far, keeps it).
    let other_vcpu = other_dom.vcpu_tid(0);
    libvirt::virsh(&["vcpupin", "stl-other", "0", "1", "--live"]).expect("vcpupin");
    std::fs::copy(
        format!("{}/stl-other.xml", libvirt::STATE_DIR),
        state.path().join("stl-other.xml"),
    )
    .expect("copy the status file");
    let grown = wait_for(WAIT, || {
        let s = pf.scrape();
        (stolen(&s, "stl-own", "1", "other_vcpu") > 0.1).then_some(s)
    });
    let Some((s, took)) = grown else {
        panic!(
            "other_vcpu never grew past 0.1 s: {:?}\n{}",
            select(
                &pf.scrape(),
                "pinflow_pcpu_stolen_seconds_total",
                &[("domain", "stl-own")]
            ),
            pf.log()
        );
    };
    eprintln!("other_vcpu past 0.1 s after {took:?}");
    assert!(
        select(
            &s,
            "pinflow_pcpu_stolen_seconds_total",
            &[("domain", "stl-other")]
        )
        .is_empty(),
        "stl-own keeps CPU 1"
    );
    // Named among the top 5 of the 10 s window once the busy loop's seconds have left it.
    let mut entry = serde_json::Value::Null;
    let named = wait_for(Duration::from_secs(25), || {
        entry = intrusions_of(&pf, 1);
        let top = entry["top"].as_array().cloned().unwrap_or_default();
        top.iter()
            .any(|t| {
                t["tid"].as_u64() == Some(u64::from(other_vcpu))
                    && t["class"] == "other_vcpu"
                    && t["comm"] == "CPU 0/KVM"
            })
            .then_some(())
    });
    assert!(named.is_some(), "stl-other's vCPU {other_vcpu} in {entry}");
    drop(pf);
    drop(other_dom);
    drop(own_dom);
}

/// Waits until `domain` shows the drift row `want` on /metrics; returns how long after `t0`.
fn row_seen(pf: &Pinflow, domain: &str, want: &DriftRow, t0: Instant) -> Duration {
    let seen = wait_for(WAIT, || {
        drift_rows(&pf.scrape(), domain)
            .contains(want)
            .then_some(())
    });
    match seen {
        Some(_) => t0.elapsed(),
        None => panic!(
            "{domain}: {want:?} never seen; rows {:?}\n{}",
            drift_rows(&pf.scrape(), domain),
            pf.log()
        ),
    }
}

/// Issue 14: every pinned thread. A domain with two pinned I/O threads, a `<vcpusched>` and a
/// strict `<numatune>` on node 0 (this host's only node) is silent; an I/O thread moved with
/// `taskset -p` (its cgroup widened first, as for vCPUs) drifts as `iothreadN` within a second
/// on /metrics and in /api/v1/pinning, without counting as a drifted vCPU; a vCPU thread's
/// policy changed with `chrt` is `sched_policy` drift. (A real `numa` drift needs a second host
/// node: the fixtures carry those cases.)
#[test]
fn iothreads_vcpusched_and_numatune_on_a_real_domain() {
    if !privileged("iothreads_vcpusched_and_numatune_on_a_real_domain") {
        return;
    }
    let mut spec = DomainSpec::pinned("pfn-io", &["0", "1"]);
    spec.iothread_pins = vec![Some("1".into()), Some("0".into())];
    // fifo/rr need a real-time budget this container does not grant QEMU: batch is checked alike.
    spec.cputune_extra = "    <vcpusched vcpus='0' scheduler='batch'/>\n".into();
    spec.numatune = Some("<memory mode='strict' nodeset='0'/>".into());
    let dom = start(&spec);
    let (_state, state_dir) = private_state_dir(&["pfn-io"]);
    let pf = Pinflow::start(
        "[pinning]\ninterval_seconds = 0.5\nreconcile_seconds = 600\nplacement_window_seconds = 2\nstolen_share = 1.0\n",
        &["--libvirt-state-dir", &state_dir],
    );
    let s = expect_drift(&pf, "pfn-io", &[]);
    assert_counts(&s, "pfn-io", &[]);
    // The host's huge-page pools, per node and size in bytes.
    let pools = select(
        &s,
        "pinflow_node_hugepages",
        &[("node", "0"), ("size", "2097152")],
    );
    assert_eq!(pools.len(), 1, "{:?}", pools);
    let free = select(&s, "pinflow_node_hugepages_free", &[("node", "0")]);
    assert!(!free.is_empty());
    let api: serde_json::Value =
        serde_json::from_str(&pf.get("/api/v1/pinning")).expect("pinning JSON");
    assert!(
        api["numa_nodes"][0]["cpus"].is_string(),
        "{}",
        api["numa_nodes"]
    );
    // The numa check had its inputs: the domain's memory is all on node 0, cpuset.mems is 0.
    let d = api["domains"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["domain"] == "pfn-io"))
        .expect("pfn-io in /api/v1/pinning");
    let on0 = d["numa_memory_bytes"]["0"].as_u64().unwrap_or(0);
    eprintln!(
        "pfn-io memory per node: {}, mems {}",
        d["numa_memory_bytes"], d["numa_mems"]
    );
    assert!(on0 > 0, "{d}");
    assert_eq!(d["numa_mems"], "0", "{d}");

    let io1 = thread_named(&dom, "IO iothread1").expect("QEMU names the I/O thread IO iothread1");
    let cg = dom.cpuset_cgroup_dir();
    let t0 = Instant::now();
    write(&cg.join("iothread1/cpuset.cpus"), "0-1");
    run("taskset", &["-pc", "0", &io1.to_string()]);
    let took = row_seen(&pf, "pfn-io", &row("iothread1", "affinity", "1", "0"), t0);
    eprintln!("iothread1 affinity drift seen {took:?} after the cgroup write + taskset");
    assert!(took < Duration::from_secs(2), "seen after {took:?}");
    let s = expect_drift(
        &pf,
        "pfn-io",
        &[
            row("iothread1", "affinity", "1", "0"),
            row("iothread1", "cpuset", "1", "0-1"),
        ],
    );
    // Not a vCPU: no drifted vCPU counted.
    assert_counts(&s, "pfn-io", &[]);
    let api: serde_json::Value =
        serde_json::from_str(&pf.get("/api/v1/pinning")).expect("pinning JSON");
    let d = api["domains"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["domain"] == "pfn-io"))
        .expect("pfn-io in /api/v1/pinning");
    assert!(
        d["drifts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["vcpu"] == "iothread1")),
        "{d}"
    );

    // No kernel event tells of sched_setscheduler: the threads with a <vcpusched> have their
    // policy re-read every tick (0.5 s here), no full pass needed (reconcile is 600 s away).
    let vcpu0 = dom.vcpu_tid(0).to_string();
    let t0 = Instant::now();
    run("chrt", &["-o", "-p", "0", &vcpu0]);
    let took = row_seen(
        &pf,
        "pfn-io",
        &row("0", "sched_policy", "batch", "other"),
        t0,
    );
    eprintln!("vCPU 0 sched_policy drift seen {took:?} after chrt");
    assert!(took < Duration::from_secs(2), "seen after {took:?}");
    let s = expect_drift(
        &pf,
        "pfn-io",
        &[
            row("iothread1", "affinity", "1", "0"),
            row("iothread1", "cpuset", "1", "0-1"),
            row("0", "sched_policy", "batch", "other"),
        ],
    );
    assert_counts(&s, "pfn-io", &[("sched_policy", 1.0)]);
    drop(dom);
}
