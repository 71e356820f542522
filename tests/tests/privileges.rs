//! Least privilege of the daemon, on the real testbed (a libvirt/KVM domain, a private OVS with
//! br-int), outside any container (`deploy.rs` runs the image under podman with the DaemonSet's
//! capabilities; this runs the binary as the systemd unit or a person would):
//! - started with exactly the documented set (`setpriv`: uid 0, CAP_BPF + CAP_PERFMON) every
//!   source that can run here is up, and every thread keeps exactly that set, with no_new_privs;
//! - started as root with every capability, `serve` drops to the same set on every thread (and
//!   to nothing with `--no-collector.datapath`, after the sched probe attached);
//! - `pinflow check` without each documented capability, or as another uid, names what is missing;
//! - under `strace -f` through a testbed scenario (a domain starting, flows and ports changing,
//!   scrapes and API requests) the daemon runs no program and opens no file for writing.

use pinflow_tests::libvirt::{self, DomainSpec};
use pinflow_tests::ovs::{self, Ovs};
use pinflow_tests::pinflow::{
    CAP_BPF, CAP_PERFMON, Pinflow, ThreadPrivileges, bin, thread_privileges,
};
use pinflow_tests::scrape::{self, select};
use pinflow_tests::{require_privileged, wait_for};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

/// The sources pinflow can run on this testbed (no OVS kernel datapath here: the private OVS
/// uses dummy netdevs, and the host has no openvswitch module).
const UP_HERE: [&str; 5] = ["libvirt", "procfs", "sched_bpf", "ovsdb", "openflow"];

/// `setpriv` arguments that run a program as uid 0 with exactly `caps` (e.g. `+bpf,+perfmon`):
/// root gains its bounding set at `execve`, so the bounding set is the capability set.
fn only(caps: &str) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all{caps}"),
        "--inh-caps=-all".into(),
        "--".into(),
    ]
}

fn all_up(pf: &Pinflow) -> BTreeMap<String, Value> {
    wait_for(Duration::from_secs(15), || {
        let s = scrape::sources(pf.addr)?;
        UP_HERE
            .iter()
            .all(|k| s.get(*k).and_then(|h| h["up"].as_bool()) == Some(true))
            .then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "sources not all up: {:?}\n{}",
            scrape::sources(pf.addr),
            pf.log()
        )
    })
    .0
}

/// Every thread of `pf` holds exactly `caps` (permitted, effective and bounding), nothing
/// inheritable or ambient, and no_new_privs.
fn assert_threads_hold(pf: &Pinflow, caps: u64) -> Vec<ThreadPrivileges> {
    let threads = thread_privileges(pf.pid());
    assert!(threads.len() >= 2, "the pipelines' threads: {threads:?}");
    for t in &threads {
        let want = ThreadPrivileges {
            inheritable: 0,
            permitted: caps,
            effective: caps,
            bounding: caps,
            ambient: 0,
            no_new_privs: true,
            ..t.clone()
        };
        assert_eq!(t, &want, "thread {} ({})\n{}", t.tid, t.name, pf.log());
    }
    threads
}

/// A domain with a Nova name and br-int with its port, for the sources to find.
fn testbed(domain: &str, tap: &str) -> (libvirt::RunningDomain, Ovs) {
    libvirt::ensure_daemons().expect("libvirt testbed");
    let dom =
        libvirt::start(&DomainSpec::pinned(domain, &["0"]).with_nova("caps-vm", "qa", "m1.tiny"))
            .expect("domain");
    let ovs = Ovs::start();
    ovs.add_bridge("br-int", &[(tap, 1)]);
    ovs.ofctl(&["add-flow", "br-int", "table=0,priority=1,actions=NORMAL"]);
    (dom, ovs)
}

/// `pinflow check --json` through `wrapper`, with the datapath collector off: (exit status, JSON).
fn check_json(wrapper: &[String], run_dir: &str) -> (Option<i32>, Value) {
    let out = Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg(bin())
        // No kernel datapath here: its sources would be down whatever the capabilities.
        .args([
            "check",
            "--json",
            "--no-collector.datapath",
            "--ovs-run-dir",
            run_dir,
        ])
        .output()
        .expect("run pinflow check");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json: {e}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), json)
}

/// `check --json`'s source → (state, detail), for the sources without a bridge and br-int's.
fn check_states(json: &Value) -> BTreeMap<String, (String, String)> {
    json["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|s| {
            (
                s["source"].as_str().unwrap_or_default().to_string(),
                (
                    s["state"].as_str().unwrap_or_default().to_string(),
                    s["detail"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect()
}

#[test]
fn the_documented_capabilities_are_enough_and_each_is_needed_and_serve_keeps_no_more() {
    if !require_privileged(
        "the_documented_capabilities_are_enough_…",
        &["setpriv", "virsh"],
    ) || !ovs::available("the_documented_capabilities_are_enough_…")
    {
        return;
    }
    let (_dom, ovs) = testbed("pf-caps", "tapcaps");
    let run_dir = ovs.run_dir().to_string_lossy().into_owned();
    let documented = CAP_BPF | CAP_PERFMON;

    // Exactly the documented set: every source that can run here is up, the domain and br-int
    // are seen, and no thread holds more (the daemon keeps BPF and PERFMON for the datapath
    // probe, which attaches when a kernel datapath appears).
    let wrapper = only(",+bpf,+perfmon");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let pf = Pinflow::start_wrapped(&wrapper, "", &["--ovs-run-dir", &run_dir]);
    let sources = all_up(&pf);
    eprintln!(
        "with CAP_BPF+CAP_PERFMON: {}",
        sources
            .iter()
            .map(|(k, v)| format!("{k}={} ({})", v["up"], v["detail"]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let metrics = pf.scrape();
    let info = select(&metrics, "pinflow_instance_info", &[("domain", "pf-caps")]);
    assert_eq!(info.len(), 1, "the domain is seen");
    assert_eq!(info[0].labels["name"], "caps-vm");
    assert_eq!(
        select(&metrics, "pinflow_ovs_flows", &[("bridge", "br-int")]).len(),
        1,
        "br-int is mirrored"
    );
    let threads = assert_threads_hold(&pf, documented);
    assert!(
        pf.log().contains("capabilities dropped") && pf.log().contains("kept=CAP_BPF,CAP_PERFMON"),
        "{}",
        pf.log()
    );
    eprintln!(
        "{} threads, each CapEff=CapPrm=CapBnd={documented:#x}",
        threads.len()
    );
    drop(pf);

    // Started as root with every capability: the daemon drops to the same set by itself.
    let pf = Pinflow::start("", &["--ovs-run-dir", &run_dir]);
    all_up(&pf);
    assert_threads_hold(&pf, documented);
    let log = pf.log();
    let dropped = log
        .lines()
        .find(|l| l.contains("capabilities dropped"))
        .unwrap_or_else(|| panic!("the drop is logged:\n{log}"));
    for cap in [
        "CAP_SYS_ADMIN",
        "CAP_NET_ADMIN",
        "CAP_DAC_OVERRIDE",
        "CAP_SYS_PTRACE",
    ] {
        assert!(dropped.contains(cap), "{cap} dropped: {dropped}");
    }
    drop(pf);

    // Without the datapath collector nothing is needed after the start: the sched probe
    // attached before the drop and keeps working with no capability at all.
    let pf = Pinflow::start("", &["--ovs-run-dir", &run_dir, "--no-collector.datapath"]);
    all_up(&pf);
    assert_threads_hold(&pf, 0);
    let watched = wait_for(Duration::from_secs(10), || {
        let s = pf.scrape();
        (!select(
            &s,
            "pinflow_vcpu_migrations_total",
            &[("domain", "pf-caps")],
        )
        .is_empty())
        .then_some(())
    });
    assert!(
        watched.is_some(),
        "the sched probe counts the domain's vCPUs with no capability left\n{}",
        pf.log()
    );
    drop(pf);

    // Each documented capability is needed, and `check` names the one that is missing (the
    // rest still runs: exit status 1, a source down).
    for (missing, keep) in [("CAP_BPF", ",+perfmon"), ("CAP_PERFMON", ",+bpf")] {
        let (code, json) = check_json(&only(keep), &run_dir);
        let states = check_states(&json);
        assert_eq!(code, Some(1), "without {missing}: {json:#}");
        let (state, detail) = &states["sched_bpf"];
        assert_eq!(state, "down", "sched_bpf without {missing}");
        assert!(
            detail.contains(&format!("missing {missing}:")),
            "without {missing}, sched_bpf says {detail:?}"
        );
        for s in ["libvirt", "procfs", "ovsdb", "openflow"] {
            assert_eq!(states[s].0, "up", "{s} without {missing}: {json:#}");
        }
        eprintln!("without {missing}: sched_bpf down: {detail}");
    }
    // The documented set itself passes `check` for every source that can run here.
    let (code, json) = check_json(&only(",+bpf,+perfmon"), &run_dir);
    assert_eq!(code, Some(0), "with the documented set: {json:#}");
    let states = check_states(&json);
    for s in UP_HERE {
        assert_eq!(states[s].0, "up", "{s} with the documented set: {json:#}");
    }
    // uid 0 is part of the set: libvirt's live state files are root's, mode 0600.
    let other_uid = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all,+bpf,+perfmon",
        "--ambient-caps=-all,+bpf,+perfmon",
        "--bounding-set=-all,+bpf,+perfmon",
        "--",
    ]
    .map(String::from);
    let (code, json) = check_json(&other_uid, &run_dir);
    let libvirt = json["sources"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["source"] == "libvirt"))
        .unwrap_or_else(|| panic!("libvirt in {json:#}"));
    let problems = libvirt["problems"].to_string();
    eprintln!("as uid 65534: check exits {code:?}");
    assert!(
        problems.contains("pf-caps.xml: cannot read file: Permission denied"),
        "as uid 65534, libvirt says {libvirt}"
    );
    eprintln!("as uid 65534: libvirt problems: {problems}");
}
