//! pinflow end to end on captured host state (no privileges needed): a real libvirt 9 status file
//! and the matching procfs/cgroupfs tree, plus malformed files dropped into the state dir while it runs.

use pinflow_tests::captured::CapturedHost;
use pinflow_tests::pinflow::{Pinflow, bin};
use pinflow_tests::scrape::{select, source_up};
use pinflow_tests::wait_for;
use std::process::Command;
use std::time::Duration;

const NO_EBPF: &str = "[pinning]\ninterval_seconds = 0.2\nebpf = false\n";

fn errors(pf: &Pinflow) -> f64 {
    select(
        &pf.scrape(),
        "pinflow_source_errors_total",
        &[("source", "libvirt")],
    )[0]
    .value
}

#[test]
fn malformed_state_files_are_counted_and_the_good_domain_keeps_being_served() {
    let host = CapturedHost::new();
    host.add("libvirt/bad/truncated.xml", "broken.xml");
    let args = host.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pf = Pinflow::start(NO_EBPF, &args);
    let s = pf.scrape();
    let info = select(&s, "pinflow_instance_info", &[("domain", "fx-nova")]);
    assert_eq!(
        info.len(),
        1,
        "fx-nova served despite the broken file:\n{}",
        pf.log()
    );
    assert_eq!(info[0].labels["name"], "fx display & name");
    assert_eq!(info[0].labels["flavor"], "m1.small");
    assert_eq!(select(&s, "pinflow_instance_info", &[]).len(), 1);
    for check in ["affinity", "cpuset", "cgroup", "overlap"] {
        let v = select(
            &s,
            "pinflow_domain_drifted_vcpus",
            &[("domain", "fx-nova"), ("check", check)],
        );
        assert_eq!(v[0].value, 0.0, "{check}");
    }
    assert_eq!(source_up(&s, "libvirt"), Some(1.0));
    // Switched off in the config: no series at all (not "down"), so no PinflowSourceDown.
    assert_eq!(source_up(&s, "sched_bpf"), None);
    // No OVS on this path: the OVS sources say so instead of claiming to be up.
    for src in ["ovsdb", "openflow"] {
        let down = wait_for(Duration::from_secs(5), || {
            let s = pf.scrape();
            (source_up(&s, src)? == 0.0).then_some(())
        });
        assert!(
            down.is_some(),
            "{src} must be down without OVS\n{}",
            pf.log()
        );
    }
    let before = errors(&pf);
    assert!(before >= 1.0, "the truncated file is counted: {before}");
    assert!(
        pf.log().contains("broken.xml"),
        "the log names the file:\n{}",
        pf.log()
    );

    // Another garbage file arrives: counted once, the good domain stays.
    std::fs::write(
        host.state.path().join("garbage.xml"),
        "<domstatus><vcpus><vcpu id='x'",
    )
    .expect("write");
    let grew = wait_for(Duration::from_secs(5), || {
        (errors(&pf) > before).then_some(())
    });
    assert!(grew.is_some(), "new bad file not counted");
    std::thread::sleep(Duration::from_millis(600));
    let settled = errors(&pf);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        errors(&pf),
        settled,
        "a bad file is not re-counted on every pass"
    );
    assert_eq!(
        select(
            &pf.scrape(),
            "pinflow_instance_info",
            &[("domain", "fx-nova")]
        )
        .len(),
        1
    );

    // The domain's file disappears (domain destroyed): its series go.
    std::fs::remove_file(host.state.path().join("fx-nova.xml")).expect("rm");
    let gone = wait_for(Duration::from_secs(5), || {
        select(
            &pf.scrape(),
            "pinflow_instance_info",
            &[("domain", "fx-nova")],
        )
        .is_empty()
        .then_some(())
    });
    assert!(
        gone.is_some(),
        "fx-nova series stayed after its state file was removed"
    );
}

#[test]
fn pinning_table_and_json_from_captured_state() {
    let host = CapturedHost::new();
    let args = |extra: &[&str]| {
        Command::new(bin())
            .arg("pinning")
            .args(extra)
            .args(host.args())
            .output()
            .expect("run pinflow pinning")
    };
    let out = args(&[]);
    // Exit status 0: sources read, no drift.
    assert_eq!(out.status.code(), Some(0));
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("fx-nova") && l.contains("11435"))
        .unwrap_or_else(|| panic!("{table}"));
    // DOMAIN NAME PROJECT VCPU TID PIN PIN-CPUS AFFINITY CGROUP-CPUS LAST-CPU (the display name
    // has spaces)
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols[..5],
        ["fx-nova", "fx", "display", "&", "name"],
        "{table}"
    );
    assert_eq!(
        cols[5..],
        ["p", "0", "11435", "dedicated", "0", "0", "0", "0"],
        "{table}"
    );
    assert!(table.contains("no pinning drift"), "{table}");

    let out = args(&["--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let d = &v["domains"][0];
    assert_eq!(d["domain"], "fx-nova");
    assert_eq!(d["nova"]["project_id"], "a1b2c3d4e5f60718293a4b5c6d7e8f90");
    assert_eq!(d["vcpus"].as_array().map(Vec::len), Some(2));
    assert_eq!(d["drifted_vcpus"]["affinity"], 0);
    assert_eq!(d["pinned"], true);
    assert_eq!(d["vcpus"][0]["kind"], "dedicated");

    // A domain floating over <vcpu cpuset='1'> (Nova's shared policy) joins: its vCPUs are
    // `floating`, not pinned, and may run on fx-nova's dedicated pCPU 1 (overlap).
    host.add("libvirt/run-libvirt-qemu/fx-cpuset.xml", "fx-cpuset.xml");
    let out = args(&[]);
    // Exit status 1: drift found.
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| l.starts_with("fx-cpuset "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    // DOMAIN NAME PROJECT VCPU TID PIN PIN-CPUS …, then the drift rows.
    assert_eq!(
        rows[0][..7],
        ["fx-cpuset", "-", "-", "0", "11558", "floating", "1"],
        "{table}"
    );
    assert_eq!(
        rows[1][..7],
        ["fx-cpuset", "-", "-", "1", "11559", "floating", "1"],
        "{table}"
    );
    assert!(
        rows.iter()
            .any(|r| r[..] == ["fx-cpuset", "0", "overlap", "1", "1", "(fx-nova)"]),
        "{table}"
    );
    let out = args(&["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let d = &v["domains"][0];
    assert_eq!(d["domain"], "fx-cpuset");
    assert_eq!(d["pinned"], false);
    assert_eq!(d["vcpus"][1]["kind"], "floating");
    assert_eq!(
        d["drifts"][0]["owners"],
        serde_json::json!([{"domain": "fx-nova", "cpus": "1"}])
    );
}

#[test]
fn check_rejects_unknown_config_keys_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[pinning]\ninterval_secs = 1\n").expect("write");
    let out = Command::new(bin())
        .arg("check")
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("interval_secs"), "{text}");

    std::fs::write(&cfg, "[pinning]\ninterval_seconds = 1\n").expect("write");
    let out = Command::new(bin())
        .args(["check", "--libvirt-state-dir", "/nonexistent-pinflow"])
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run");
    // Exit status 1: the config is valid, but a source it enables is down.
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let starts = |l: &str, words: [&str; 2]| l.split_whitespace().take(2).eq(words);
    assert!(text.lines().any(|l| starts(l, ["config", "ok"])), "{text}");
    assert!(
        text.lines()
            .any(|l| starts(l, ["libvirt", "down"]) && l.contains("/nonexistent-pinflow")),
        "{text}"
    );
}
