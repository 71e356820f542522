//! The runtime never stalls and health tells the truth, on the captured host (a real libvirt 9
//! status file and its procfs/cgroupfs tree, copied so that the test can change it under a running
//! pinflow):
//! - a procfs read that blocks (a FIFO in place of a thread's `status`) wedges only the pinning
//!   thread: `/metrics` keeps answering at once, the source turns stale and `/healthz` names it,
//!   and a dirty flow inserted into a real (private) OVS meanwhile is still found at once;
//! - a vCPU thread that exits does not take its share out of the domain's counters;
//! - without inotify (none left in a user namespace whose limit is 0) new domains are still found
//!   by the periodic rescan, and both `serve` and `check` say so.

use pinflow_tests::captured::{CapturedHost, fixtures};
use pinflow_tests::ovs::{self, Ovs};
use pinflow_tests::pinflow::{Pinflow, bin};
use pinflow_tests::scrape::{Sample, http_get, select, source_up};
use pinflow_tests::wait_for;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// Polling mode: the tests wedge and churn procfs on every pass (events mode would read the
/// captured tree only on ticks and every `reconcile_seconds`).
const CONFIG: &str = "[pinning]\ninterval_seconds = 0.2\nebpf = false\nevents = false\n";
/// The captured QEMU process and its vCPU threads (`CPU 0/KVM`, `CPU 1/KVM`).
const TASKS: &str = "proc/11411/task";

/// A writable copy of the captured procfs/cgroupfs tree.
fn hostfs_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = fixtures().join("hostfs/v1-libvirt");
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(dir.path())
        .status()
        .expect("cp");
    assert!(st.success(), "cp -a {}", src.display());
    dir
}

/// Source flags for the state dir of `host` and the procfs/cgroupfs tree at `hostfs`.
fn args(state: &Path, hostfs: &Path) -> Vec<String> {
    [
        ("--libvirt-state-dir", state.to_path_buf()),
        ("--proc-root", hostfs.join("proc")),
        ("--sys-root", hostfs.join("sys")),
    ]
    .into_iter()
    .flat_map(|(flag, p)| [flag.to_string(), p.to_string_lossy().into_owned()])
    .collect()
}

fn start(config: &str, wrapper: &[&str], state: &Path, hostfs: &Path) -> Pinflow {
    let a = args(state, hostfs);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    Pinflow::start_wrapped(wrapper, config, &a)
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo reads the NUL-terminated path we own.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

fn wait_seconds(pf: &Pinflow) -> f64 {
    select(
        &pf.scrape(),
        "pinflow_vcpu_wait_seconds_total",
        &[("domain", "fx-nova")],
    )
    .first()
    .map_or(f64::NAN, |s| s.value)
}

#[test]
fn a_wedged_procfs_read_fails_health_but_never_stalls_scrapes() {
    let host = CapturedHost::new();
    let fs = hostfs_copy();
    let pf = start(CONFIG, &[], host.state.path(), fs.path());
    let s = pf.scrape();
    assert_eq!(source_up(&s, "procfs"), Some(1.0), "{}", pf.log());
    let last = |s: &[Sample]| {
        select(
            s,
            "pinflow_source_last_success_timestamp_seconds",
            &[("source", "procfs")],
        )
        .first()
        .map(|x| x.value)
    };
    let now = || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let fresh = last(&s).expect("procfs has a last-success timestamp");
    assert!((now() - fresh).abs() < 2.0, "{fresh} vs {}", now());

    // Every later read of CPU 1's status blocks (a FIFO without writer blocks in open()).
    let unwedge = wedge_status(fs.path());
    let wedged_at = Instant::now();

    // Scrapes keep answering promptly while the pass hangs; health fails once the data is
    // older than 3 intervals + 1 s, naming the source.
    let mut worst = Duration::ZERO;
    let mut scrapes = 0;
    let mut unhealthy = None;
    while wedged_at.elapsed() < Duration::from_secs(6) {
        let t = Instant::now();
        let (code, _) = http_get(pf.addr, "/metrics", Duration::from_secs(5)).expect("scrape");
        worst = worst.max(t.elapsed());
        scrapes += 1;
        assert_eq!(code, 200);
        let (code, body) = http_get(pf.addr, "/healthz", Duration::from_secs(5)).expect("healthz");
        if code == 503 {
            unhealthy = Some((wedged_at.elapsed(), body));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (after, body) = unhealthy.unwrap_or_else(|| panic!("/healthz never failed\n{}", pf.log()));
    assert!(
        body.contains("source procfs is down: wedged: collection running for"),
        "{body}"
    );
    // Not before the bound (1.6 s after the last success, itself at most an interval earlier).
    assert!(
        after >= Duration::from_millis(1300),
        "failed too early: {after:?}"
    );
    // Many scrapes while wedged, each a few ms (a debug build; bounded loosely for a busy CI box).
    for _ in 0..20 {
        let t = Instant::now();
        let (code, _) = http_get(pf.addr, "/metrics", Duration::from_secs(5)).expect("scrape");
        assert_eq!(code, 200);
        worst = worst.max(t.elapsed());
        scrapes += 1;
    }
    assert!(
        worst < Duration::from_millis(500),
        "slowest scrape {worst:?}"
    );
    let s = pf.scrape();
    assert_eq!(source_up(&s, "procfs"), Some(0.0));
    assert!(
        now() - last(&s).unwrap_or(0.0) > 1.5,
        "timestamp not refreshed while wedged"
    );
    let sources: serde_json::Value =
        serde_json::from_str(&pf.get("/api/v1/sources")).expect("json");
    assert_eq!(sources["procfs"]["up"], false);
    assert_eq!(sources["procfs"]["stale"], true);
    assert!(
        sources["procfs"]["last_duration_seconds"].is_f64(),
        "{sources}"
    );
    assert_eq!(sources["procfs"]["stale_after_seconds"], 1.6);
    // Event-driven sources are not judged by age.
    assert_eq!(sources["ovsdb"]["stale"], false);
    eprintln!("unhealthy after {after:?}; slowest of {scrapes} scrapes while wedged: {worst:?}");

    // Unblock: the reader gets the original content, and the file is regular again.
    unwedge();
    let healthy = wait_for(Duration::from_secs(5), || {
        let (code, _) = http_get(pf.addr, "/healthz", Duration::from_secs(5)).ok()?;
        (code == 200 && source_up(&pf.scrape(), "procfs") == Some(1.0)).then_some(())
    });
    assert!(healthy.is_some(), "procfs did not recover\n{}", pf.log());
}

/// Replaces CPU 1's `status` in `fs` by a FIFO (every read of it blocks in open()); returns
/// what unblocks it: the reader gets the original content and the file is regular again.
fn wedge_status(fs: &Path) -> impl FnOnce() {
    let status = fs.join(TASKS).join("11436/status");
    let original = std::fs::read(&status).expect("status");
    let fifo = fs.join("fifo");
    mkfifo(&fifo);
    std::fs::rename(&fifo, &status).expect("rename fifo over status");
    let tmp = fs.join("status.tmp");
    move || {
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(&status)
            .expect("open fifo for writing");
        std::fs::write(&tmp, &original).expect("write");
        std::fs::rename(&tmp, &status).expect("restore status");
        std::io::Write::write_all(&mut w, &original).expect("write fifo");
    }
}

#[test]
fn openflow_handling_never_waits_for_a_wedged_pinning_pass() {
    if !ovs::available("openflow_handling_never_waits_for_a_wedged_pinning_pass") {
        return;
    }
    let sw = Ovs::start();
    sw.add_bridge("br-int", &[("tapfx000a1", 1)]);
    let host = CapturedHost::new();
    let fs = hostfs_copy();
    let mut a = args(host.state.path(), fs.path());
    a.extend([
        "--ovs-run-dir".to_string(),
        sw.run_dir().to_string_lossy().into_owned(),
    ]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let pf = Pinflow::start(CONFIG, &a);
    let connected = wait_for(Duration::from_secs(10), || {
        (source_up(&pf.scrape(), "openflow") == Some(1.0)).then_some(())
    });
    assert!(connected.is_some(), "openflow not up\n{}", pf.log());
    let unwedge = wedge_status(fs.path());
    let stuck = wait_for(Duration::from_secs(5), || {
        let (code, _) = http_get(pf.addr, "/healthz", Duration::from_secs(5)).ok()?;
        (code == 503).then_some(())
    });
    assert!(stuck.is_some(), "pinning pass not wedged\n{}", pf.log());
    // The pinning thread is stuck; the OpenFlow session and the flow pipeline are not.
    sw.ofctl(&[
        "add-flow",
        "br-int",
        "table=0,priority=5,in_port=99,actions=drop",
    ]);
    let found = wait_for(Duration::from_secs(5), || {
        let s = pf.scrape();
        let n = select(
            &s,
            "pinflow_ovs_dirty_flows",
            &[("bridge", "br-int"), ("rule", "in_port_missing")],
        );
        (n.first()?.value == 1.0).then_some(())
    });
    let (_, took) = found.unwrap_or_else(|| panic!("dirty flow not found\n{}", pf.log()));
    eprintln!("dirty flow found {took:?} after insertion, pinning pass wedged");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(source_up(&pf.scrape(), "procfs"), Some(0.0));
    unwedge();
}

#[test]
fn domain_counters_survive_a_vcpu_thread_exit() {
    let host = CapturedHost::new();
    let fs = hostfs_copy();
    let pf = start(CONFIG, &[], host.state.path(), fs.path());
    let tasks = fs.path().join(TASKS);
    // schedstat's second field is the wait time: CPU 0 waited 23.734040313 s, CPU 1 0.003639985 s.
    let w1 = wait_seconds(&pf);
    assert!((w1 - 23.737680298).abs() < 1e-6, "{w1}");

    // CPU 0's thread exits (libvirt still lists it): its 23.7 s stay in the sum.
    std::fs::remove_dir_all(tasks.join("11435")).expect("rm thread");
    let gone = wait_for(Duration::from_secs(5), || {
        let p: serde_json::Value = serde_json::from_str(&pf.get("/api/v1/pinning")).ok()?;
        p["domains"][0]["vcpus"][0]["affinity"]
            .is_null()
            .then_some(())
    });
    assert!(gone.is_some(), "thread exit not seen\n{}", pf.log());
    let w2 = wait_seconds(&pf);
    assert!(w2 >= w1, "wait went backwards: {w1} -> {w2}");

    // CPU 1 waits one more second: the sum grows by exactly that.
    std::fs::write(tasks.join("11436/schedstat"), "2010781 1003639985 32\n").expect("write");
    let grew = wait_for(Duration::from_secs(5), || {
        let w = wait_seconds(&pf);
        (w > w2).then_some(w)
    });
    let (w3, _) = grew.unwrap_or_else(|| panic!("wait did not grow\n{}", pf.log()));
    assert!((w3 - (w1 + 1.0)).abs() < 1e-6, "{w1} + 1 s -> {w3}");
}

/// `unshare` that runs the rest of the command line in a new user namespace (root mapped to
/// root) whose inotify instance limit is 0: `inotify_init` fails with EMFILE there, as on a host
/// whose `fs.inotify.max_user_instances` is exhausted.
const NO_INOTIFY: [&str; 6] = [
    "unshare",
    "--user",
    "--map-root-user",
    "sh",
    "-c",
    "echo 0 > /proc/sys/user/max_inotify_instances && exec \"$0\" \"$@\"",
];

fn user_namespaces_work() -> bool {
    let mut c = Command::new(NO_INOTIFY[0]);
    c.args(&NO_INOTIFY[1..]).arg("true");
    c.status().is_ok_and(|s| s.success())
}

#[test]
fn without_inotify_a_periodic_rescan_finds_new_domains_and_says_so() {
    if !pinflow_tests::require_privileged(
        "without_inotify_a_periodic_rescan_finds_new_domains_and_says_so",
        &["unshare"],
    ) {
        return;
    }
    assert!(
        user_namespaces_work(),
        "`unshare --user --map-root-user` fails on this host"
    );
    let state = tempfile::tempdir().expect("tempdir");
    let fs = hostfs_copy();
    let pf = start(CONFIG, &NO_INOTIFY, state.path(), fs.path());
    let warned = wait_for(Duration::from_secs(5), || {
        pf.log()
            .contains("falling back to a periodic rescan")
            .then_some(())
    });
    assert!(warned.is_some(), "no warning:\n{}", pf.log());
    assert!(pf.log().contains("level=warn"), "{}", pf.log());
    assert!(
        select(&pf.scrape(), "pinflow_instance_info", &[]).is_empty(),
        "no domain yet"
    );
    // No inotify event will come: only the rescan can find it.
    std::fs::copy(
        fixtures().join("libvirt/run-libvirt-qemu/fx-nova.xml"),
        state.path().join("fx-nova.xml"),
    )
    .expect("copy");
    let seen = wait_for(Duration::from_secs(5), || {
        (!select(
            &pf.scrape(),
            "pinflow_instance_info",
            &[("domain", "fx-nova")],
        )
        .is_empty())
        .then_some(())
    });
    let (_, took) = seen.unwrap_or_else(|| panic!("new domain never seen\n{}", pf.log()));
    assert!(took < Duration::from_secs(2), "rescan took {took:?}");
    let sources: serde_json::Value =
        serde_json::from_str(&pf.get("/api/v1/sources")).expect("json");
    assert_eq!(
        sources["libvirt"]["detail"], "periodic rescan (no inotify watch)",
        "{sources}"
    );

    // `pinflow check` in the same situation says what `serve` will do.
    let out = Command::new(NO_INOTIFY[0])
        .args(&NO_INOTIFY[1..])
        .arg(bin())
        .arg("check")
        .args(args(state.path(), fs.path()))
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("inotify unavailable") && text.contains("periodic rescan"),
        "{text}"
    );
}
