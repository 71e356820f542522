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

/// The traced pinflow under `strace` (the wrapper's only child).
fn traced_pid(strace: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
        .expect("strace's children");
    let pids: Vec<u32> = children
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert_eq!(pids.len(), 1, "strace runs one child: {pids:?}");
    pids[0]
}

/// Open flags that write, create or truncate.
const WRITING: [&str; 5] = ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"];

#[test]
fn through_a_testbed_scenario_the_daemon_runs_no_program_and_opens_no_file_for_writing() {
    if !require_privileged("through_a_testbed_scenario_…", &["strace", "virsh"])
        || !ovs::available("through_a_testbed_scenario_…")
    {
        return;
    }
    libvirt::ensure_daemons().expect("libvirt testbed");
    let ovs = Ovs::start();
    ovs.add_bridge("br-int", &[("tapst1", 1)]);
    ovs.ofctl(&["add-flow", "br-int", "table=0,priority=1,actions=NORMAL"]);
    let run_dir = ovs.run_dir().to_string_lossy().into_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("strace.out");
    let trace_s = trace.to_string_lossy().into_owned();
    let pf = Pinflow::start_wrapped(
        &[
            "strace",
            "-f",
            "-q",
            "-o",
            &trace_s,
            "-e",
            "trace=execve,execveat,open,openat,openat2,creat",
            "--",
        ],
        "",
        &["--ovs-run-dir", &run_dir],
    );
    let pid = traced_pid(pf.pid());
    let wait_scrape = |what: &str, f: &dyn Fn(&[scrape::Sample]) -> bool| {
        let seen = wait_for(Duration::from_secs(20), || {
            let s = pf.scrape();
            f(&s).then_some(())
        });
        assert!(seen.is_some(), "{what}\n{}", pf.log());
    };
    // A domain appears (inotify, libvirt's state file, procfs/cgroupfs, the sched probe's map).
    let dom = libvirt::start(&DomainSpec::pinned("pf-strace", &["0"]).with_nova(
        "strace-vm",
        "qa",
        "m1.tiny",
    ))
    .expect("domain");
    wait_scrape("the new domain", &|s| {
        !select(s, "pinflow_instance_info", &[("domain", "pf-strace")]).is_empty()
    });
    // Flows and ports change (OVSDB updates, OpenFlow flow monitor), one flow dirty.
    ovs.vsctl(&[
        "add-port",
        "br-int",
        "tapst2",
        "--",
        "set",
        "Interface",
        "tapst2",
        "type=dummy",
        "ofport_request=2",
    ]);
    ovs.ofctl(&[
        "add-flow",
        "br-int",
        "table=0,priority=5,in_port=2,actions=output:77",
    ]);
    wait_scrape("the dirty flow", &|s| {
        select(s, "pinflow_ovs_dirty_flows", &[("bridge", "br-int")])
            .iter()
            .any(|x| x.value > 0.0)
    });
    for path in [
        "/healthz",
        "/api/v1/sources",
        "/api/v1/pinning",
        "/api/v1/intrusions",
        "/api/v1/flows",
    ] {
        pf.get(path);
    }
    // The domain goes.
    drop(dom);
    wait_scrape("the domain gone", &|s| {
        select(s, "pinflow_instance_info", &[("domain", "pf-strace")]).is_empty()
    });
    // SIGTERM ends pinflow cleanly; strace then writes its exit and ends.
    // SAFETY: kill sends a signal to the pid of our own child's child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    // strace pads the pid column ("9655  +++ exited with 0 +++"), so match by fields.
    let exited = |t: &str| {
        t.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(pid.to_string().as_str())
                && w.next() == Some("+++")
                && w.next() == Some("exited")
        })
    };
    let done = wait_for(Duration::from_secs(10), || {
        let t = std::fs::read_to_string(&trace).ok()?;
        exited(&t).then_some(t)
    });
    let text = done
        .unwrap_or_else(|| {
            let t = std::fs::read_to_string(&trace).unwrap_or_default();
            let tail: Vec<&str> = t.lines().rev().take(15).collect();
            panic!(
                "pinflow ({pid}) did not exit on SIGTERM; the trace ends with:\n{}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                pf.log()
            )
        })
        .0;
    let calls: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("resumed>") && !l.contains("+++") && !l.contains("---"))
        .collect();
    let execs: Vec<&&str> = calls
        .iter()
        .filter(|l| l.contains(" execve(") || l.contains(" execveat("))
        .collect();
    let bin = bin().to_string_lossy().into_owned();
    assert_eq!(
        execs.len(),
        1,
        "only strace's own execve of pinflow: {execs:#?}"
    );
    // strace pads the pid column: compare the pid and the call separately.
    let (exec_pid, exec_call) = execs[0].split_once(' ').unwrap_or_default();
    assert!(
        exec_pid == pid.to_string()
            && exec_call
                .trim_start()
                .starts_with(&format!("execve(\"{bin}\"")),
        "{}",
        execs[0]
    );
    let opens: Vec<&&str> = calls.iter().filter(|l| !execs.contains(l)).collect();
    let writing: Vec<&&&str> = opens
        .iter()
        .filter(|l| l.contains(" creat(") || WRITING.iter().any(|f| l.contains(f)))
        .collect();
    assert!(writing.is_empty(), "opened for writing: {writing:#?}");
    // The trace covers the scenario: the new domain's state file and its threads in procfs were
    // read (by the pinning thread), after the start.
    for want in [
        "\"/run/libvirt/qemu/pf-strace.xml\"",
        "/task/",
        "/sys/fs/cgroup/",
    ] {
        assert!(
            opens.iter().any(|l| l.contains(want)),
            "no open of {want} traced:\n{text}"
        );
    }
    let threads: std::collections::BTreeSet<&str> = calls
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    eprintln!(
        "strace: {} execve (pinflow itself), {} opens by {} threads, none for writing",
        execs.len(),
        opens.len(),
        threads.len()
    );
}
