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

/// Issue 14 on a 2-node host (hand-made sysfs: CPU 0 on node 0, CPU 1 on node 1, huge-page
/// pools on both) around a domain captured from libvirt 9.0 / QEMU 7.2 (`fx-tuned`: vCPUs pinned
/// to 0 and 1, `IO iothread1` on 1 and `IO iothread2` on 0, `<vcpusched vcpus='0'
/// scheduler='batch'>`, guest cell 0 with vCPUs 0-1 bound `strict` to host node 0), its threads
/// as procfs showed them, its `memory.numa_stat` edited to put 156 MiB on node 1: `numa` drifts
/// for the memory and for vCPU 1 (its pCPU is on node 1), nothing else; the pools are exported.
#[test]
fn numa_drift_and_hugepage_pools_on_a_two_node_host() {
    let state = tempfile::tempdir().expect("tempdir");
    let fx = pinflow_tests::captured::fixtures();
    std::fs::copy(
        fx.join("libvirt/tuned/fx-tuned.xml"),
        state.path().join("fx-tuned.xml"),
    )
    .expect("copy fx-tuned.xml");
    let tree = fx.join("hostfs/numa-2node");
    let args: Vec<String> = [
        ("--libvirt-state-dir", state.path().to_path_buf()),
        ("--proc-root", tree.join("proc")),
        ("--sys-root", tree.join("sys")),
    ]
    .into_iter()
    .flat_map(|(f, p)| [f.to_string(), p.to_string_lossy().into_owned()])
    .collect();
    let out = Command::new(bin())
        .args(["pinning", "--json"])
        .args(&args)
        .output()
        .expect("run pinflow pinning");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let d = &v["domains"][0];
    assert_eq!(d["domain"], "fx-tuned");
    let rows: Vec<(String, String, String, String)> = d["drifts"]
        .as_array()
        .expect("drifts")
        .iter()
        .map(|x| {
            let s = |k: &str| x[k].as_str().unwrap_or_default().to_string();
            (s("vcpu"), s("check"), s("expected"), s("actual"))
        })
        .collect();
    let row = |a: &str, b: &str, c: &str, e: &str| (a.into(), b.into(), c.into(), e.into());
    assert_eq!(
        rows,
        vec![row("1", "numa", "0", "1"), row("memory", "numa", "0", "1")],
        "{d}"
    );
    assert_eq!(d["drifted_vcpus"]["numa"], 1);
    assert_eq!(d["numa_mems"], "0");
    assert_eq!(d["numa_memory_bytes"]["1"], 40000u64 * 4096);

    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pf = Pinflow::start(NO_EBPF, &args);
    let seen = wait_for(Duration::from_secs(5), || {
        let s = pf.scrape();
        let pools = select(&s, "pinflow_node_hugepages", &[]).len();
        (pools == 4).then_some(s)
    });
    let (s, _) = seen.unwrap_or_else(|| panic!("no hugepage pools\n{}", pf.log()));
    let v = |name: &str, node: &str, size: &str| {
        select(&s, name, &[("node", node), ("size", size)])
            .first()
            .map(|x| x.value)
    };
    assert_eq!(v("pinflow_node_hugepages", "1", "1073741824"), Some(2.0));
    assert_eq!(
        v("pinflow_node_hugepages_free", "1", "1073741824"),
        Some(1.0)
    );
    assert_eq!(
        v("pinflow_node_hugepages_free", "0", "2097152"),
        Some(256.0)
    );
    let drift = select(
        &s,
        "pinflow_vcpu_pinning_drift",
        &[("domain", "fx-tuned"), ("check", "numa")],
    );
    let mut vcpus: Vec<&str> = drift.iter().map(|x| x.labels["vcpu"].as_str()).collect();
    vcpus.sort_unstable();
    assert_eq!(vcpus, ["1", "memory"], "{}", pf.log());
}
