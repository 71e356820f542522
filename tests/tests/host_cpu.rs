//! Host CPU configuration checks on the real libvirt/KVM testbed: a nova.conf written by the test,
//! a real pinned domain, the kernel's real command line; the findings on pinflow's /metrics and
//! `/api/v1/host_cpu`, and `pinflow check`'s `host_cpu` line.

use pinflow_tests::libvirt::{self, DomainSpec};
use pinflow_tests::pinflow::Pinflow;
use pinflow_tests::scrape::{select, source_up};
use pinflow_tests::{require_privileged, wait_for};
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// `pinflow_host_cpu_config_problem` by problem.
fn problems(pf: &Pinflow) -> BTreeMap<String, f64> {
    select(&pf.scrape(), "pinflow_host_cpu_config_problem", &[])
        .into_iter()
        .map(|x| (x.labels["problem"].clone(), x.value))
        .collect()
}

/// The findings of `/api/v1/host_cpu` by problem, keeping only the host-wide ones and those of
/// this test's domain (the shared testbed may run other tests' domains).
fn findings(pf: &Pinflow) -> BTreeMap<String, Vec<String>> {
    let api: serde_json::Value =
        serde_json::from_str(&pf.get("/api/v1/host_cpu")).expect("API JSON");
    let mut out = BTreeMap::new();
    for (problem, lines) in api["problems"].as_object().into_iter().flatten() {
        let mine = lines
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str())
            .filter(|l| l.starts_with(DOMAIN) || l.starts_with("pCPUs"))
            .map(String::from)
            .collect();
        out.insert(problem.clone(), mine);
    }
    out
}

const DOMAIN: &str = "pf-hostcpu";

/// Waits until the checks made are `want` (problem, this test's findings), and /metrics counts
/// the same findings as the API (all domains').
fn expect(pf: &Pinflow, want: &[(&str, &[&str])]) {
    let want: BTreeMap<String, Vec<String>> = want
        .iter()
        .map(|(p, f)| (p.to_string(), f.iter().map(|l| l.to_string()).collect()))
        .collect();
    let mut last = (BTreeMap::new(), BTreeMap::new());
    let ok = wait_for(WAIT, || {
        let api: serde_json::Value = serde_json::from_str(&pf.get("/api/v1/host_cpu")).ok()?;
        let counts: BTreeMap<String, f64> = api["problems"]
            .as_object()?
            .iter()
            .map(|(p, l)| (p.clone(), l.as_array().map_or(0, Vec::len) as f64))
            .collect();
        last = (findings(pf), problems(pf));
        (last.0 == want && last.1 == counts).then_some(())
    });
    assert!(
        ok.is_some(),
        "wanted {want:?}, got {:?} (metrics {:?})\n{}",
        last.0,
        last.1,
        pf.log()
    );
}

#[test]
fn nova_cpu_sets_against_a_real_pinned_domain() {
    if !require_privileged(
        "nova_cpu_sets_against_a_real_pinned_domain",
        &["virsh", "/usr/sbin/libvirtd"],
    ) {
        return;
    }
    libvirt::ensure_daemons().expect("libvirt testbed");
    let dir = tempfile::tempdir().expect("tempdir");
    let nova = dir.path().join("nova.conf");
    // A dedicated instance pinned to pCPU 1, on a host whose dedicated set is only pCPU 0: the
    // pins a live migration copies from a source host whose dedicated set differed.
    std::fs::write(
        &nova,
        "[DEFAULT]\ndebug = False\n\n[compute]\ncpu_shared_set = 1\ncpu_dedicated_set = 0\n",
    )
    .expect("write nova.conf");
    let dom = libvirt::start(&DomainSpec::pinned("pf-hostcpu", &["1"]).with_nova(
        "hostcpu-1",
        "qa",
        "m1.pinned",
    ))
    .unwrap_or_else(|e| panic!("{e:#}"));
    let nova_arg = format!("--nova-conf={}", nova.display());
    let pf = Pinflow::start(
        "[pinning]\ninterval_seconds = 0.5\nebpf = false\n[host_cpu]\nreread_seconds = 1\n",
        &[&nova_arg, "--no-collector.flows", "--no-collector.datapath"],
    );
    expect(
        &pf,
        &[
            ("dedicated_shared_overlap", &[]),
            ("floating_on_dedicated", &[]),
            (
                "pinned_outside_dedicated_set",
                &["pf-hostcpu (hostcpu-1) vCPU 0 is pinned to 1: 1 outside cpu_dedicated_set 0"],
            ),
        ],
    );
    assert_eq!(source_up(&pf.scrape(), "host_cpu"), Some(1.0));
    let api: serde_json::Value =
        serde_json::from_str(&pf.get("/api/v1/host_cpu")).expect("API JSON");
    assert_eq!(api["nova"]["dedicated"], "0", "{api}");

    // The operator fixes nova.conf, overlapping the sets by mistake: the pin is fine now, the
    // overlap is found, without a restart.
    std::fs::write(
        &nova,
        "[compute]\ncpu_shared_set = 0-1\ncpu_dedicated_set = 1\n",
    )
    .expect("rewrite nova.conf");
    expect(
        &pf,
        &[
            (
                "dedicated_shared_overlap",
                &["pCPUs 1 are in both cpu_dedicated_set (1) and cpu_shared_set (0-1)"],
            ),
            ("floating_on_dedicated", &[]),
            ("pinned_outside_dedicated_set", &[]),
        ],
    );
    assert!(
        pf.log().contains("host CPU configuration problem"),
        "appearing problems are logged\n{}",
        pf.log()
    );

    // An unreadable nova.conf: the source says so, and the Nova checks are gone, not "fine".
    std::fs::remove_file(&nova).expect("remove nova.conf");
    let down = wait_for(WAIT, || {
        (source_up(&pf.scrape(), "host_cpu") == Some(0.0)).then_some(())
    });
    assert!(down.is_some(), "host_cpu never went down\n{}", pf.log());
    expect(&pf, &[]);
    drop(pf);
    drop(dom);
}

#[test]
fn check_reports_the_host_cpu_source() {
    if !require_privileged("check_reports_the_host_cpu_source", &[]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let nova = dir.path().join("nova.conf");
    std::fs::write(
        &nova,
        "[compute]\ncpu_dedicated_set = 0\ncpu_shared_set = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(pinflow_tests::pinflow::bin())
        .args(["check", &format!("--nova-conf={}", nova.display())])
        .output()
        .expect("run pinflow check");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("host_cpu"))
        .unwrap_or_else(|| panic!("no host_cpu line:\n{text}"));
    assert!(
        line.contains("cpu_dedicated_set 0 cpu_shared_set 1") && line.contains("isolcpus"),
        "{line}"
    );
    // A nova.conf that does not parse is a source down, and `check` fails.
    std::fs::write(&nova, "[compute]\ncpu_dedicated_set = 0-x\n").unwrap();
    let out = std::process::Command::new(pinflow_tests::pinflow::bin())
        .args(["check", &format!("--nova-conf={}", nova.display())])
        .output()
        .expect("run pinflow check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("host_cpu") && l.contains("[compute] cpu_dedicated_set")),
        "{text}"
    );
}
