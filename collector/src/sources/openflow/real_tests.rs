//! The OpenFlow source against a real, private `ovsdb-server` + `ovs-vswitchd` (dummy datapath:
//! no kernel devices, no clash with other OVS instances on the host).
//!
//! 1. A Neutron-like table (`tests/fixtures/openflow/neutron-flows.txt`: VLAN tagging per port,
//!    cookies, ARP/ND spoofing tables, conntrack firewall with `ct`/`conjunction`, `learn`,
//!    resubmit chains, br-tun/br-ex style flows) is dumped by pinflow and diffed line by line
//!    against `ovs-ofctl -O OpenFlow13 --no-stats --no-names dump-flows`, then with statistics
//!    against `ovs-ofctl -O OpenFlow13 --no-names dump-flows` (ages masked after checking their
//!    shape), and the same reply bytes with chosen ages against `ovs-ofctl ofp-print` (exact).
//! 2. The flow monitor: add/modify/delete flows with `ovs-ofctl` and expect each event within 1 s.
//! 3. ovs-vswitchd restarting and the bridge being deleted and re-created: the mirror reconnects
//!    and is rebuilt.
//!
//! Skipped with a printed reason when the OVS binaries are missing or not root, unless
//! `PINFLOW_REQUIRE_PRIVILEGED=1`, which turns the skip into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, unsafe_code)] // Test code.

use crate::sources::openflow::{
    BATCH_WINDOW, BridgeConfig, BridgeSnapshot, FlowChange, OpenFlowClient, TaggedChange,
    run_bridge,
};
use pinflow_tests::ovs::{Ovs, mask_durations};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

const BRIDGE: &str = "pfofbr0";

fn should_skip() -> bool {
    !pinflow_tests::ovs::available("openflow_real")
}

/// A private OVS with the test bridge and three dummy ports (ofports 1–3).
fn start_ovs() -> Ovs {
    let ovs = Ovs::start();
    add_bridge(&ovs);
    ovs
}

fn add_bridge(ovs: &Ovs) {
    ovs.add_bridge(BRIDGE, &[("pfofp1", 1), ("pfofp2", 2), ("pfofp3", 3)]);
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

/// The `ofp_flow_stats` records of flow-dump reply bodies, one byte vector each.
fn split_flow_stats(bodies: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for b in bodies {
        let mut rest = b.as_slice();
        while rest.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            assert!(
                len >= 56 && len <= rest.len(),
                "bad ofp_flow_stats length {len}"
            );
            out.push(rest[..len].to_vec());
            rest = &rest[len..];
        }
    }
    out
}

/// What `ovs-ofctl ofp-print` prints for an OpenFlow 1.3 `OFPMP_FLOW` reply with this body: its
/// flow lines, trimmed.
pub(super) fn ofp_print_flow_reply(ovs: &Ovs, body: &[u8]) -> Vec<String> {
    let len = u16::try_from(16 + body.len()).expect("reply fits one message");
    let mut msg = vec![4u8, 19];
    msg.extend_from_slice(&len.to_be_bytes());
    msg.extend_from_slice(&7u32.to_be_bytes());
    msg.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    msg.extend_from_slice(body);
    let hex: String = msg.iter().map(|b| format!("{b:02x}")).collect();
    let out = ovs.run("ovs-ofctl", &["ofp-print", &hex]);
    let mut lines = out.lines();
    let head = lines.next().unwrap_or_default();
    assert!(head.starts_with("OFPST_FLOW reply (OF1.3)"), "{out}");
    lines
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

async fn expect_change(
    rx: &mut mpsc::Receiver<TaggedChange>,
    what: &str,
    pred: impl Fn(&FlowChange) -> bool,
    within: Duration,
) -> Duration {
    let t = Instant::now();
    loop {
        let left = within.saturating_sub(t.elapsed());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((bridge, c))) if pred(&c) => {
                assert_eq!(&*bridge, BRIDGE, "change tagged with the wrong bridge");
                return t.elapsed();
            }
            Ok(Some(_)) => continue,
            Ok(None) => panic!("change channel closed while waiting for {what}"),
            Err(_) => panic!("no {what} within {within:?}"),
        }
    }
}

async fn wait_snapshot(
    rx: &mut watch::Receiver<Arc<BridgeSnapshot>>,
    what: &str,
    pred: impl Fn(&BridgeSnapshot) -> bool,
) {
    let t = Instant::now();
    while !pred(&rx.borrow_and_update()) {
        if t.elapsed() > Duration::from_secs(20) {
            panic!(
                "snapshot never satisfied: {what}; last: {:?}",
                rx.borrow().error
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openflow_against_real_ovs() {
    if should_skip() {
        return;
    }
    let ovs = start_ovs();
    let flows = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/openflow/neutron-flows.txt"
    );
    ovs.ofctl(&["add-flows", BRIDGE, flows]);
    let sock = ovs.run_dir().join(format!("{BRIDGE}.mgmt"));

    // 1. Dump diff against ovs-ofctl.
    let mut c = OpenFlowClient::connect(&sock, Duration::from_secs(10))
        .await
        .unwrap();
    let ports = c.port_descs().await.unwrap();
    let mut names: Vec<_> = ports.iter().map(|p| (p.port_no, p.name.clone())).collect();
    names.sort();
    assert_eq!(
        names,
        [
            (1, "pfofp1".to_string()),
            (2, "pfofp2".to_string()),
            (3, "pfofp3".to_string()),
            (0xffff_fffe, BRIDGE.to_string())
        ]
    );
    let dump = c.dump_flows(1_000_000).await.unwrap();
    let ours = sorted_lines(
        &dump
            .iter()
            .map(|f| f.entry.text())
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let theirs = sorted_lines(&ovs.ofctl(&["--no-stats", "--no-names", "dump-flows", BRIDGE]));
    let equal = ours.iter().zip(&theirs).filter(|(a, b)| a == b).count();
    eprintln!(
        "dump diff: pinflow {} flows, ovs-ofctl {} lines, {equal} lines equal",
        ours.len(),
        theirs.len()
    );
    let diffs: Vec<_> = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| a != b)
        .take(10)
        .collect();
    assert!(
        diffs.is_empty(),
        "differences (pinflow, ovs-ofctl): {diffs:#?}"
    );
    assert_eq!(ours.len(), theirs.len());
    assert!(
        ours.len() >= 500,
        "expected several hundred flows, got {}",
        ours.len()
    );
    // 1b. With statistics, as `ovs-ofctl dump-flows` prints them by default: the one-shot line
    // renderer and `stats_line` against ovs-ofctl on the same switch. Only the flows' ages move
    // between the two dumps (no traffic crosses the dummy bridge: counters stay 0 and are
    // compared); each age is masked after checking it has ovs-ofctl's shape.
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let mut rendered = String::new();
    let mut lines = crate::model::openflow::render::LineRenderer::default();
    c.dump_flows_raw(|body| {
        bodies.push(body.to_vec());
        lines
            .push_flow_stats(body, true, &mut rendered)
            .map(|_| ())
            .map_err(Into::into)
    })
    .await
    .unwrap();
    let theirs_stats = ovs.ofctl(&["--no-names", "dump-flows", BRIDGE]);
    let decoded: Vec<String> = dump
        .iter()
        .map(crate::model::openflow::render::stats_line)
        .collect();
    let theirs_masked = sorted_lines(&mask_durations(&theirs_stats));
    for (who, text) in [
        ("line renderer", rendered.clone()),
        ("stats_line", decoded.join("\n")),
    ] {
        let ours_masked = sorted_lines(&mask_durations(&text));
        let diffs: Vec<_> = ours_masked
            .iter()
            .zip(&theirs_masked)
            .filter(|(a, b)| a != b)
            .take(5)
            .collect();
        assert!(
            diffs.is_empty() && ours_masked.len() == theirs_masked.len(),
            "{who}: {} vs {} lines; differences (pinflow, ovs-ofctl): {diffs:#?}",
            ours_masked.len(),
            theirs_masked.len()
        );
    }
    eprintln!(
        "stats dump diff: {} lines equal with only durations masked",
        theirs_masked.len()
    );

    // 1c. Durations exactly: the very bytes pinflow received, with chosen ages, printed by
    // `ovs-ofctl ofp-print` (OVS's own decoder and printer) and by pinflow.
    let mut flow_stats = split_flow_stats(&bodies);
    assert_eq!(flow_stats.len(), ours.len());
    flow_stats.truncate(40);
    for (sec, nsec) in [
        (401, 490_000_000),
        (0, 0),
        (12, 1_000_000),
        (12, 120_000_000),
        (3, 5),
        (3, 123_456_789),
        (3, 120_000_001),
        (86_400, 999_999_999),
    ] {
        let mut body = Vec::new();
        for f in &flow_stats {
            let mut f = f.clone();
            // ofp_flow_stats: length, table_id, pad, duration_sec, duration_nsec, ...
            f[4..8].copy_from_slice(&u32::to_be_bytes(sec));
            f[8..12].copy_from_slice(&u32::to_be_bytes(nsec));
            body.extend_from_slice(&f);
        }
        let mut ours = String::new();
        crate::model::openflow::render::LineRenderer::default()
            .push_flow_stats(&body, true, &mut ours)
            .unwrap();
        let theirs = ofp_print_flow_reply(&ovs, &body);
        let ours: Vec<&str> = ours.lines().map(str::trim).collect();
        assert_eq!(ours, theirs, "duration {sec} s {nsec} ns");
        let want = format!(
            "duration={}",
            match (sec, nsec) {
                (401, 490_000_000) => "401.490s",
                (0, 0) => "0s",
                (12, 1_000_000) => "12.001s",
                (12, 120_000_000) => "12.120s",
                (3, 5) => "3.000000005s",
                (3, 123_456_789) => "3.123456789s",
                (3, 120_000_001) => "3.120000001s",
                _ => "86400.999999999s",
            }
        );
        assert!(ours.iter().all(|l| l.contains(&want)), "{want}: {ours:#?}");
    }
    drop(c);

    // 2. The mirror loop and the flow monitor.
    let mut cfg = BridgeConfig::new(ovs.run_dir(), BRIDGE);
    // This test reads the mirrored table from the snapshots (the daemon follows changes instead).
    cfg.snapshot_flows = true;
    cfg.backoff_min = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_millis(500);
    let (snap_tx, mut snap_rx) = watch::channel(Arc::new(BridgeSnapshot::default()));
    let (ch_tx, mut ch_rx) = mpsc::channel(100_000);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_bridge(cfg, snap_tx, Some(ch_tx), stop_rx));
    expect_change(
        &mut ch_rx,
        "initial resync",
        |c| matches!(c, FlowChange::Resynced { .. }),
        Duration::from_secs(20),
    )
    .await;
    let n0 = ours.len();
    wait_snapshot(&mut snap_rx, "initial table", |s| {
        s.connected && s.flows.len() == n0
    })
    .await;

    ovs.ofctl(&[
        "add-flow",
        BRIDGE,
        "cookie=0x77,table=30,priority=7,ip,nw_dst=10.1.2.3,actions=output:2",
    ]);
    let t = expect_change(
        &mut ch_rx,
        "ADDED event",
        |c| matches!(c, FlowChange::Added(e) if e.text() == "cookie=0x77, table=30, priority=7,ip,nw_dst=10.1.2.3 actions=output:2"),
        Duration::from_secs(1),
    )
    .await;
    eprintln!("monitor: add-flow seen after {t:?}");
    ovs.ofctl(&[
        "mod-flows",
        BRIDGE,
        "table=30,ip,nw_dst=10.1.2.3,actions=output:3",
    ]);
    let t = expect_change(
        &mut ch_rx,
        "MODIFIED event",
        |c| matches!(c, FlowChange::Modified(e) if e.text().ends_with("actions=output:3")),
        Duration::from_secs(1),
    )
    .await;
    eprintln!("monitor: mod-flows seen after {t:?}");
    ovs.ofctl(&["del-flows", BRIDGE, "table=30"]);
    let t = expect_change(
        &mut ch_rx,
        "DELETED event",
        |c| matches!(c, FlowChange::Deleted(e) if e.table == 30),
        Duration::from_secs(1),
    )
    .await;
    eprintln!("monitor: del-flows seen after {t:?}");

    // Batches: once updates come one after another, the next one waits in the socket until
    // the window of the one before ends (one wake-up for all it finds there); after a quiet
    // spell, an update is read at once.
    tokio::time::sleep(BATCH_WINDOW * 3).await;
    let mut seen = Vec::new();
    for (i, change) in ["add-flow", "del-flows", "add-flow"]
        .into_iter()
        .enumerate()
    {
        let flow = if change == "add-flow" {
            "table=31,priority=1,actions=drop"
        } else {
            "table=31"
        };
        ovs.ofctl(&[change, BRIDGE, flow]);
        expect_change(
            &mut ch_rx,
            &format!("update {i} of a stream"),
            |c| match c {
                FlowChange::Added(e) | FlowChange::Deleted(e) => e.table == 31,
                _ => false,
            },
            Duration::from_secs(1),
        )
        .await;
        seen.push(Instant::now());
    }
    let held = seen[2] - seen[1];
    eprintln!(
        "monitor: a stream's updates seen {:?} and {held:?} after the one before",
        seen[1] - seen[0]
    );
    assert!(
        held >= BATCH_WINDOW - Duration::from_millis(50),
        "the third update of a stream came {held:?} after the second: not held to the window"
    );
    ovs.ofctl(&["del-flows", BRIDGE, "table=31"]);
    expect_change(
        &mut ch_rx,
        "the stream's last update",
        |c| matches!(c, FlowChange::Deleted(e) if e.table == 31),
        Duration::from_secs(1),
    )
    .await;
    wait_snapshot(&mut snap_rx, "table back to the initial size", |s| {
        s.flows.len() == n0
    })
    .await;

    // 3a. ovs-vswitchd restarts: flows are gone from the new instance (not persistent), the
    // mirror reconnects and holds exactly what the new instance has.
    ovs.stop("ovs-vswitchd");
    expect_change(
        &mut ch_rx,
        "disconnect",
        |c| matches!(c, FlowChange::Disconnected { .. }),
        Duration::from_secs(5),
    )
    .await;
    ovs.start_vswitchd();
    expect_change(
        &mut ch_rx,
        "resync after restart",
        |c| matches!(c, FlowChange::Resynced { .. }),
        Duration::from_secs(20),
    )
    .await;
    ovs.ofctl(&["add-flows", BRIDGE, flows]);
    wait_snapshot(&mut snap_rx, "table rebuilt after restart", |s| {
        s.connected && s.flows.len() == n0
    })
    .await;

    // 3b. Bridge deleted and re-created.
    ovs.vsctl(&["del-br", BRIDGE]);
    expect_change(
        &mut ch_rx,
        "disconnect on del-br",
        |c| matches!(c, FlowChange::Disconnected { .. }),
        Duration::from_secs(5),
    )
    .await;
    add_bridge(&ovs);
    ovs.ofctl(&["add-flow", BRIDGE, "table=0,priority=1,actions=NORMAL"]);
    wait_snapshot(&mut snap_rx, "re-created bridge mirrored", |s| {
        s.connected
            && s.flows
                .values()
                .any(|f| f.text() == "priority=1 actions=NORMAL")
    })
    .await;

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

fn cpu_self() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn cpu_children() -> Duration {
    // SAFETY: getrusage writes into the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Neutron-shaped flows, all distinct: port/MAC/IP/VLAN/conjunction rows per index.
fn synthetic_flows(n: usize) -> String {
    let mut s = String::with_capacity(n * 120);
    for i in 0..n {
        let mac = format!(
            "fa:16:3e:{:02x}:{:02x}:{:02x}",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        );
        let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        let line = match i % 5 {
            0 => format!(
                "cookie=0x9e2c5b1a0d3f4e71,table=0,priority=10,in_port={},dl_src={mac},actions=resubmit(,25)",
                i % 60000 + 1
            ),
            1 => format!(
                "cookie=0x9e2c5b1a0d3f4e71,table=71,priority=65,ip,reg5={i:#x},dl_src={mac},nw_src={ip},actions=ct(table=72,zone=NXM_NX_REG6[0..15])"
            ),
            2 => format!(
                "cookie=0x9e2c5b1a0d3f4e71,table=72,priority=74,ct_state=+new-est,tcp,reg5={i:#x},tp_dst={},actions=conjunction({i},2/2)",
                i % 65535 + 1
            ),
            3 => format!(
                "cookie=0x9e2c5b1a0d3f4e71,table=60,priority=100,reg6={i:#x},actions=load:{i:#x}->NXM_NX_REG5[],load:0x1->NXM_NX_REG6[],resubmit(,71)"
            ),
            _ => format!(
                "cookie=0x9e2c5b1a0d3f4e71,table=20,priority=2,dl_vlan={},dl_dst={mac},actions=strip_vlan,load:{i:#x}->NXM_NX_TUN_ID[],output:3",
                i % 4094 + 1
            ),
        };
        s.push_str(&line);
        s.push('\n');
    }
    s
}

/// Cost of a full dump at scale: pinflow (connect + dump + decode + render, in-process CPU) vs
/// `ovs-ofctl dump-flows` (child CPU) plus a minimal parse of its text. Run in release:
/// `PINFLOW_SKIP_EBPF=1 cargo test --release -p pinflow --test openflow_real bench -- --ignored --nocapture`
/// (`PINFLOW_OF_BENCH_FLOWS`, default 100000).
#[test]
#[ignore = "benchmark; run explicitly in release mode"]
fn bench_dump_vs_ovs_ofctl() {
    if should_skip() {
        return;
    }
    let n: usize = std::env::var("PINFLOW_OF_BENCH_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let ovs = start_ovs();
    let file = ovs.dir().join("bench-flows.txt");
    std::fs::write(&file, synthetic_flows(n)).unwrap();
    let t = Instant::now();
    ovs.ofctl(&["add-flows", BRIDGE, file.to_str().unwrap()]);
    eprintln!("loaded {n} flows in {:?}", t.elapsed());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sock = ovs.run_dir().join(format!("{BRIDGE}.mgmt"));
    let rss_kb = || -> i64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    };
    let mut best = Duration::MAX;
    let mut wall = Duration::ZERO;
    let mut rss_delta = 0;
    for _ in 0..3 {
        let r0 = rss_kb();
        let (c0, w0) = (cpu_self(), Instant::now());
        let flows = rt.block_on(async {
            let mut c = OpenFlowClient::connect(&sock, Duration::from_secs(60))
                .await
                .unwrap();
            c.dump_flows(10_000_000).await.unwrap()
        });
        let cpu = cpu_self() - c0;
        assert_eq!(flows.len(), n);
        rss_delta = rss_delta.max(rss_kb() - r0);
        if cpu < best {
            best = cpu;
            wall = w0.elapsed();
        }
        drop(flows);
    }
    eprintln!(
        "pinflow: dump+decode+render {n} flows: {:.1} ms CPU, {:.1} ms wall; RSS grew by {} KiB ({} B/flow) holding the result",
        best.as_secs_f64() * 1e3,
        wall.as_secs_f64() * 1e3,
        rss_delta,
        rss_delta * 1024 / n as i64
    );

    let mut best_ofctl = Duration::MAX;
    let mut best_parse = Duration::MAX;
    for _ in 0..3 {
        let c0 = cpu_children();
        let text = ovs.ofctl(&["--no-names", "dump-flows", BRIDGE]);
        let ofctl = cpu_children() - c0;
        let p0 = cpu_self();
        let mut fields = 0usize;
        for line in text.lines().skip(1) {
            let Some((head, actions)) = line.trim().split_once(" actions=") else {
                continue;
            };
            let kv: Vec<(&str, &str)> = head
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(|s| s.split_once('=').unwrap_or((s, "")))
                .collect();
            fields += kv.len() + actions.split(',').count();
        }
        let parse = cpu_self() - p0;
        assert!(fields > n);
        best_ofctl = best_ofctl.min(ofctl);
        best_parse = best_parse.min(parse);
    }
    // The same measured by /usr/bin/time, as operators would.
    if Path::new("/usr/bin/time").is_file() {
        let out = ovs
            .cmd("/usr/bin/time")
            .args([
                "-f",
                "%U user %S sys %M maxrss_kb",
                "ovs-ofctl",
                "-O",
                "OpenFlow13",
            ])
            .args(["--no-names", "dump-flows", BRIDGE])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "/usr/bin/time ovs-ofctl -O OpenFlow13 dump-flows: {}",
            err.trim()
        );
    }
    eprintln!(
        "ovs-ofctl: dump-flows {n} flows: {:.1} ms CPU (child user+sys) + text parse {:.1} ms CPU = {:.1} ms; ratio {:.1}x",
        best_ofctl.as_secs_f64() * 1e3,
        best_parse.as_secs_f64() * 1e3,
        (best_ofctl + best_parse).as_secs_f64() * 1e3,
        (best_ofctl + best_parse).as_secs_f64() / best.as_secs_f64()
    );
}
