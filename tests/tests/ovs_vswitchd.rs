//! ovs-vswitchd's unixctl counters and the OVS processes, end to end on a real, private Open
//! vSwitch (userspace datapath): pinflow's `pinflow_ovs_coverage_total`, `memory/show` and
//! `upcall/show` families against what `ovs-appctl` prints (the test runs `ovs-appctl`; pinflow
//! talks JSON-RPC to the control socket itself), process health against procfs, and an
//! ovs-vswitchd restart (source down, then up again with a new pid and one restart counted).

use pinflow_tests::ovs::Ovs;
use pinflow_tests::pinflow::Pinflow;
use pinflow_tests::scrape::{Sample, select, source_up};
use pinflow_tests::{require_privileged, wait_for};
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// The events pinflow exports (docs/metrics.md, `pinflow_ovs_coverage_total`).
const EVENTS: [&str; 14] = [
    "upcall_flow_limit_hit",
    "upcall_flow_limit_kill",
    "dpif_flow_put",
    "dpif_flow_put_error",
    "dpif_execute_error",
    "netlink_overflow",
    "ofproto_recv_openflow",
    "packet_in_overflow",
    "xlate_actions_oversize",
    "xlate_actions_too_many_output",
    "rconn_overflow",
    "rconn_discarded",
    "bridge_reconfigure",
    "txn_error",
];

fn privileged(test: &str) -> bool {
    require_privileged(
        test,
        &[
            "ovsdb-server",
            "ovs-vswitchd",
            "ovs-vsctl",
            "ovs-ofctl",
            "ovs-appctl",
        ],
    )
}

/// `ovs-appctl -t ovs-vswitchd CMD` against this instance.
fn appctl(ovs: &Ovs, cmd: &str) -> String {
    ovs.run("ovs-appctl", &["-t", "ovs-vswitchd", cmd])
}

/// `total:` per event of `coverage/show` (events never hit are not listed: 0).
fn appctl_coverage(ovs: &Ovs) -> BTreeMap<String, f64> {
    let text = appctl(ovs, "coverage/show");
    let mut all = BTreeMap::new();
    for l in text.lines().skip(1) {
        let t: Vec<&str> = l.split_whitespace().collect();
        if let [name, .., "total:", n] = t.as_slice() {
            all.insert(name.to_string(), n.parse::<f64>().expect("total"));
        }
    }
    EVENTS
        .iter()
        .map(|e| (e.to_string(), all.get(*e).copied().unwrap_or(0.0)))
        .collect()
}

fn pinflow_coverage(s: &[Sample]) -> BTreeMap<String, f64> {
    select(s, "pinflow_ovs_coverage_total", &[])
        .iter()
        .map(|x| (x.labels["event"].clone(), x.value))
        .collect()
}

fn value(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    select(s, name, labels).first().map(|x| x.value)
}

/// Compares pinflow's coverage with ovs-appctl's: appctl, then (after two polls) a scrape, then
/// appctl again; every event whose total did not move over that window must be equal. Returns
/// pinflow's values and how many events were stable.
fn coverage_matches(ovs: &Ovs, pf: &Pinflow) -> (BTreeMap<String, f64>, usize) {
    values_match(
        pf,
        "coverage",
        12,
        || appctl_coverage(ovs),
        pinflow_coverage,
    )
}

/// The comparison both daemons' tests make: ovs-appctl's values (`appctl`), then (after two
/// polls) pinflow's from a scrape (`pinflow`), then ovs-appctl's again; pinflow must export
/// exactly ovs-appctl's keys, and every value that did not move over that window must be equal,
/// with at least `min_stable` of them stable. Ten tries; returns pinflow's values and how many
/// were stable.
fn values_match(
    pf: &Pinflow,
    what: &str,
    min_stable: usize,
    appctl: impl Fn() -> BTreeMap<String, f64>,
    pinflow: impl Fn(&[Sample]) -> BTreeMap<String, f64>,
) -> (BTreeMap<String, f64>, usize) {
    let mut last = String::new();
    for _ in 0..10 {
        let before = appctl();
        std::thread::sleep(Duration::from_millis(2500));
        let got = pinflow(&pf.scrape());
        let after = appctl();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>(),
            "pinflow exports exactly the documented {what} keys"
        );
        let stable: Vec<&String> = before.keys().filter(|k| before[*k] == after[*k]).collect();
        let differ: Vec<String> = stable
            .iter()
            .filter(|k| got[**k] != before[**k])
            .map(|k| format!("{k}: pinflow {} ovs-appctl {}", got[*k], before[*k]))
            .collect();
        if differ.is_empty() && stable.len() >= min_stable {
            return (got, stable.len());
        }
        last = format!(
            "stable {} of {}; differ: {differ:?}",
            stable.len(),
            before.len()
        );
    }
    panic!("{what} never matched ovs-appctl: {last}\n{}", pf.log());
}

#[test]
fn unixctl_values_match_ovs_appctl_and_a_restart_is_followed() {
    if !privileged("unixctl_values_match_ovs_appctl_and_a_restart_is_followed") {
        return;
    }
    let ovs = Ovs::start();
    ovs.add_bridge("pfu-br0", &[("pfu-p1", 1), ("pfu-p2", 2)]);
    ovs.ofctl(&[
        "add-flow",
        "pfu-br0",
        "priority=10,in_port=1,actions=output:2",
    ]);
    let run_dir = ovs.run_dir().to_string_lossy().into_owned();
    let pf = Pinflow::start(
        "[ovs_vswitchd]\ninterval_seconds = 1.0\n",
        &[
            "--ovs-run-dir",
            &run_dir,
            "--no-collector.pinning",
            "--no-collector.flows",
        ],
    );
    let up = wait_for(WAIT, || {
        let s = pf.scrape();
        (source_up(&s, "ovs_unixctl") == Some(1.0)).then_some(s)
    });
    let (_, took) = up.unwrap_or_else(|| panic!("ovs_unixctl never up\n{}", pf.log()));
    eprintln!("ovs_unixctl up after {took:?}");

    // Coverage: equal to ovs-appctl's, and following a change (a reconfiguration, OpenFlow messages).
    let (cov1, stable) = coverage_matches(&ovs, &pf);
    eprintln!("coverage matched ({stable}/14 stable): {cov1:?}");
    assert!(cov1["bridge_reconfigure"] > 0.0, "{cov1:?}");
    assert!(cov1["ofproto_recv_openflow"] > 0.0, "{cov1:?}");
    ovs.vsctl(&[
        "add-port",
        "pfu-br0",
        "pfu-p3",
        "--",
        "set",
        "interface",
        "pfu-p3",
        "type=dummy",
    ]);
    for i in 0..5 {
        ovs.ofctl(&[
            "add-flow",
            "pfu-br0",
            &format!("priority=20,tcp,tp_dst={},actions=drop", 1000 + i),
        ]);
    }
    let (cov2, _) = coverage_matches(&ovs, &pf);
    assert!(
        cov2["bridge_reconfigure"] > cov1["bridge_reconfigure"],
        "{cov1:?} {cov2:?}"
    );
    assert!(
        cov2["ofproto_recv_openflow"] >= cov1["ofproto_recv_openflow"] + 5.0,
        "{cov1:?} {cov2:?}"
    );

    // memory/show and upcall/show: present, sane, equal to ovs-appctl's where they are stable.
    let s = pf.scrape();
    let mem = appctl(&ovs, "memory/show");
    let field = |k: &str| -> Option<f64> {
        mem.split_whitespace()
            .find_map(|t| t.strip_prefix(&format!("{k}:")))
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(
        value(&s, "pinflow_ovs_vswitchd_objects", &[("kind", "rules")]),
        field("rules"),
        "{mem}"
    );
    assert_eq!(
        value(&s, "pinflow_ovs_vswitchd_objects", &[("kind", "ports")]),
        field("ports"),
        "{mem}"
    );
    // 6 OpenFlow flows added plus the bridge's hidden ones.
    assert!(field("rules").is_some_and(|r| r >= 6.0), "{mem}");
    assert_eq!(select(&s, "pinflow_ovs_vswitchd_objects", &[]).len(), 5);
    for kind in ["handler", "revalidator"] {
        let v = value(&s, "pinflow_ovs_vswitchd_threads", &[("kind", kind)]);
        assert_eq!(v, field(&format!("{kind}s")), "{kind}: {mem}");
        assert!(v.is_some_and(|n| n >= 1.0), "{kind}");
    }
    let up = appctl(&ovs, "upcall/show");
    let limit = value(
        &s,
        "pinflow_ovs_upcall_flow_limit",
        &[("datapath", "ovs-dummy")],
    )
    .unwrap_or_else(|| panic!("no flow limit for ovs-dummy\n{up}"));
    assert!((1000.0..=200_000.0).contains(&limit), "{limit}\n{up}");
    assert!(up.contains(&format!("(limit {limit})")), "{limit}\n{up}");
    let dump = value(
        &s,
        "pinflow_ovs_upcall_dump_duration_seconds",
        &[("datapath", "ovs-dummy")],
    );
    assert!(
        dump.is_some_and(|d| (0.0..5.0).contains(&d)),
        "{dump:?}\n{up}"
    );
    assert!(value(&s, "pinflow_ovs_upcall_flows", &[("datapath", "ovs-dummy")]).is_some());

    // Process health against procfs.
    let pid = |d: &str| -> u32 {
        std::fs::read_to_string(ovs.run_dir().join(format!("{d}.pid")))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    };
    let vm_rss = |pid: u32| -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("VmRSS")
            * 1024.0
    };
    for d in ["ovs-vswitchd", "ovsdb-server"] {
        let p = [("process", d)];
        assert_eq!(value(&s, "pinflow_ovs_process_up", &p), Some(1.0), "{d}");
        assert_eq!(
            value(&s, "pinflow_ovs_process_restarts_total", &p),
            Some(0.0),
            "{d}"
        );
        let rss = value(&s, "pinflow_ovs_process_resident_memory_bytes", &p).expect("rss");
        let want = vm_rss(pid(d));
        assert!(
            (rss - want).abs() <= want * 0.5,
            "{d}: pinflow {rss} procfs {want}"
        );
        let threads = value(&s, "pinflow_ovs_process_threads", &p).expect("threads");
        assert!(threads >= 1.0, "{d}");
        assert!(value(&s, "pinflow_ovs_process_cpu_seconds_total", &p).is_some_and(|c| c >= 0.0));
    }
    assert!(
        value(
            &s,
            "pinflow_ovs_process_threads",
            &[("process", "ovs-vswitchd")]
        ) >= Some(2.0),
        "ovs-vswitchd has handler and revalidator threads"
    );

    // Restart: down (no unixctl series served), then up with the new pid, one restart counted.
    let old_pid = pid("ovs-vswitchd");
    ovs.stop("ovs-vswitchd");
    let down = wait_for(WAIT, || {
        let s = pf.scrape();
        (source_up(&s, "ovs_unixctl") == Some(0.0)
            && value(&s, "pinflow_ovs_process_up", &[("process", "ovs-vswitchd")]) == Some(0.0))
        .then_some(s)
    });
    let (s, took) = down.unwrap_or_else(|| panic!("ovs_unixctl still up\n{}", pf.log()));
    eprintln!("down {took:?} after ovs-vswitchd stopped");
    assert!(select(&s, "pinflow_ovs_coverage_total", &[]).is_empty());
    assert!(select(&s, "pinflow_ovs_upcall_flow_limit", &[]).is_empty());
    assert_eq!(
        value(&s, "pinflow_ovs_process_up", &[("process", "ovsdb-server")]),
        Some(1.0)
    );
    ovs.start_vswitchd();
    let back = wait_for(WAIT, || {
        let s = pf.scrape();
        (source_up(&s, "ovs_unixctl") == Some(1.0)
            && value(
                &s,
                "pinflow_ovs_process_restarts_total",
                &[("process", "ovs-vswitchd")],
            ) == Some(1.0))
        .then_some(s)
    });
    let (s, took) = back.unwrap_or_else(|| panic!("not back up with a restart\n{}", pf.log()));
    eprintln!("back up {took:?} after ovs-vswitchd started");
    assert_ne!(pid("ovs-vswitchd"), old_pid);
    assert_eq!(
        value(&s, "pinflow_ovs_process_up", &[("process", "ovs-vswitchd")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "pinflow_ovs_process_restarts_total",
            &[("process", "ovsdb-server")]
        ),
        Some(0.0)
    );
    let detail = pinflow_tests::scrape::sources(pf.addr)
        .and_then(|m| m.get("ovs_unixctl").cloned())
        .map(|v| v.to_string())
        .unwrap_or_default();
    assert!(
        detail.contains(&format!("pid {}", pid("ovs-vswitchd"))),
        "{detail}"
    );
    // A fresh run's counters start over and match again.
    let (cov3, _) = coverage_matches(&ovs, &pf);
    assert!(
        cov3["ofproto_recv_openflow"] < cov2["ofproto_recv_openflow"],
        "{cov2:?} {cov3:?}"
    );
}

/// `[flows] interface_metrics`: link state and counters of real OVS interfaces against
/// `ovs-vsctl get interface … statistics`, joined to the instance whose tap it is.
#[test]
fn interface_counters_match_ovsdb_and_join_the_instance() {
    if !privileged("interface_counters_match_ovsdb_and_join_the_instance") {
        return;
    }
    let ovs = Ovs::start();
    // tapfx000a1 is fx-nova's tap in the captured libvirt host.
    ovs.add_bridge("pfi-br0", &[("tapfx000a1", 1), ("pfi-p2", 2)]);
    ovs.ofctl(&[
        "add-flow",
        "pfi-br0",
        "priority=10,in_port=1,actions=output:2",
    ]);
    // Asks for statistics every second (ovs-vswitchd writes them every 5 s at the fastest: the
    // veth test below measures 4.6–4.7 s).
    ovs.vsctl(&[
        "set",
        "Open_vSwitch",
        ".",
        "other_config:stats-update-interval=1000",
    ]);
    let host = pinflow_tests::captured::CapturedHost::new();
    let run_dir = ovs.run_dir().to_string_lossy().into_owned();
    let mut args = vec!["--ovs-run-dir".to_string(), run_dir];
    args.extend(host.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pf = Pinflow::start(
        "[pinning]\nebpf = false\n[flows]\ninterface_metrics = true\n",
        &args,
    );
    // Traffic into tapfx000a1 (dummy netdevs take packets from ovs-appctl).
    let pkt = "in_port(1),eth(src=50:54:00:00:00:01,dst=50:54:00:00:00:02),eth_type(0x0800),\
               ipv4(src=10.0.0.1,dst=10.0.0.2,proto=17,tos=0,ttl=64,frag=no),udp(src=1,dst=2)";
    for _ in 0..7 {
        ovs.run("ovs-appctl", &["netdev-dummy/receive", "tapfx000a1", pkt]);
    }
    let ovsdb_stat = |iface: &str, key: &str| -> Option<f64> {
        let out = ovs.vsctl(&["get", "interface", iface, "statistics"]);
        out.trim()
            .trim_matches(['{', '}'])
            .split(", ")
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
    };
    let labels = [
        ("bridge", "pfi-br0"),
        ("port", "tapfx000a1"),
        ("domain", "fx-nova"),
    ];
    let got = wait_for(WAIT, || {
        let s = pf.scrape();
        let rx = value(&s, "pinflow_ovs_interface_receive_packets_total", &labels)?;
        let want = ovsdb_stat("tapfx000a1", "rx_packets")?;
        (want >= 7.0 && rx == want).then_some(s)
    });
    let (s, took) = got.unwrap_or_else(|| {
        panic!(
            "rx_packets never matched OVSDB ({:?})\n{}",
            ovsdb_stat("tapfx000a1", "rx_packets"),
            pf.log()
        )
    });
    eprintln!("rx_packets matched OVSDB after {took:?}");
    for (family, key) in [
        ("pinflow_ovs_interface_receive_bytes_total", "rx_bytes"),
        ("pinflow_ovs_interface_transmit_packets_total", "tx_packets"),
        ("pinflow_ovs_interface_transmit_bytes_total", "tx_bytes"),
    ] {
        assert_eq!(
            value(&s, family, &labels),
            ovsdb_stat("tapfx000a1", key),
            "{family}"
        );
    }
    // Forwarded to pfi-p2 by the flow: its transmit side counts them.
    let p2 = [("bridge", "pfi-br0"), ("port", "pfi-p2"), ("domain", "")];
    assert!(value(&s, "pinflow_ovs_interface_transmit_packets_total", &p2) >= Some(7.0));
    assert_eq!(
        value(&s, "pinflow_ovs_interface_link_up", &labels),
        Some(1.0)
    );
    let resets = value(&s, "pinflow_ovs_interface_link_resets_total", &labels).expect("resets");
    let ovsdb_resets: f64 = ovs
        .vsctl(&["get", "interface", "tapfx000a1", "link_resets"])
        .trim()
        .parse()
        .expect("link_resets");
    assert_eq!(resets, ovsdb_resets);

    // The link goes down: link_up 0. (Dummy netdevs keep no carrier-reset count: OVSDB's
    // link_resets stays as it was, and so does pinflow's.)
    ovs.run(
        "ovs-appctl",
        &["netdev-dummy/set-admin-state", "tapfx000a1", "down"],
    );
    let down = wait_for(WAIT, || {
        let s = pf.scrape();
        (value(&s, "pinflow_ovs_interface_link_up", &labels) == Some(0.0)
            && value(&s, "pinflow_ovs_interface_link_resets_total", &labels) == Some(resets))
        .then_some(())
    });
    assert!(down.is_some(), "link down not seen\n{}", pf.log());
}

/// A name prefix unique to this test process (veth names are global to the host).
fn unique(tag: &str) -> String {
    format!("pfl{}{:x}", tag, std::process::id() & 0xffff)
}

/// `ovs-vsctl get interface IFACE COLUMN`, as a number.
fn ovsdb_num(ovs: &Ovs, iface: &str, column: &str) -> f64 {
    ovs.vsctl(&["get", "interface", iface, column])
        .trim()
        .trim_matches('"')
        .parse()
        .unwrap_or_else(|e| panic!("{iface} {column}: {e}"))
}

/// `statistics:KEY` of an interface in OVSDB.
fn ovsdb_stat(ovs: &Ovs, iface: &str, key: &str) -> Option<f64> {
    let out = ovs.vsctl(&["get", "interface", iface, "statistics"]);
    out.trim()
        .trim_matches(['{', '}'])
        .split(", ")
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

/// Kernel veth devices as ports of the userspace datapath (AF_PACKET): link state and link resets
/// follow `ip link set … down/up` of the peer (OVSDB monitor updates, no polling), and frames sent
/// into one port and forwarded out of the other move pinflow's counters by what was sent.
#[test]
fn veth_link_state_resets_and_counters() {
    if !privileged("veth_link_state_resets_and_counters")
        || !pinflow_tests::require_privileged("veth_link_state_resets_and_counters", &["ip"])
    {
        return;
    }
    let ovs = Ovs::start();
    let (v1, v2) = (
        pinflow_tests::veth::Veth::new(&unique("l1")),
        pinflow_tests::veth::Veth::new(&unique("l2")),
    );
    let br = "pfl-br0";
    ovs.add_empty_bridge(br, "secure");
    ovs.add_system_port(br, &v1.a, 1);
    ovs.add_system_port(br, &v2.a, 2);
    // No stats-update-interval: ovs-vswitchd writes `statistics` every 5 s at the fastest.
    ovs.ofctl(&["add-flow", br, "priority=10,in_port=1,actions=output:2"]);
    let run_dir = ovs.run_dir().to_string_lossy().into_owned();
    let pf = Pinflow::start(
        "[flows]\ninterface_metrics = true\n",
        &[
            "--ovs-run-dir",
            &run_dir,
            "--no-collector.pinning",
            "--no-collector.datapath",
        ],
    );
    let l1 = [("bridge", br), ("port", v1.a.as_str()), ("domain", "")];
    let l2 = [("bridge", br), ("port", v2.a.as_str()), ("domain", "")];
    let up = wait_for(WAIT, || {
        let s = pf.scrape();
        (value(&s, "pinflow_ovs_interface_link_up", &l1) == Some(1.0)
            && value(&s, "pinflow_ovs_interface_link_up", &l2) == Some(1.0))
        .then_some(s)
    });
    let (s, _) = up.unwrap_or_else(|| panic!("veth ports never up\n{}", pf.log()));
    let resets0 = value(&s, "pinflow_ovs_interface_link_resets_total", &l1).expect("resets");
    assert_eq!(resets0, ovsdb_num(&ovs, &v1.a, "link_resets"));

    // Peer down, then up (twice): link_up follows within OVSDB's update latency, resets grow by 4.
    let fast = Duration::from_millis(5);
    let watch_link = |want: f64| -> Duration {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < WAIT {
            let s = pf.scrape();
            if value(&s, "pinflow_ovs_interface_link_up", &l1) == Some(want) {
                return t0.elapsed();
            }
            std::thread::sleep(fast);
        }
        panic!("link_up never {want}\n{}", pf.log());
    };
    let ovsdb_link = |want: &str| -> Duration {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < WAIT {
            if ovs.vsctl(&["get", "interface", &v1.a, "link_state"]).trim() == want {
                return t0.elapsed();
            }
        }
        panic!("OVSDB link_state never {want}");
    };
    // Two cycles: one timed from `ip link` to pinflow's scrape, one to OVSDB's column.
    v1.set(&v1.b, false);
    let pf_down = watch_link(0.0);
    v1.set(&v1.b, true);
    let pf_up = watch_link(1.0);
    v1.set(&v1.b, false);
    let db_down = ovsdb_link("down");
    v1.set(&v1.b, true);
    let db_up = ovsdb_link("up");
    eprintln!(
        "link down seen by pinflow after {pf_down:?} (OVSDB: {db_down:?}); \
         up: pinflow {pf_up:?} (OVSDB {db_up:?})"
    );
    let resets = wait_for(WAIT, || {
        let s = pf.scrape();
        let r = value(&s, "pinflow_ovs_interface_link_resets_total", &l1)?;
        (r >= resets0 + 4.0 && value(&s, "pinflow_ovs_interface_link_up", &l1) == Some(1.0))
            .then_some(r)
    });
    let (resets, _) = resets.unwrap_or_else(|| panic!("resets did not grow\n{}", pf.log()));
    assert_eq!(resets, resets0 + 4.0);
    assert_eq!(resets, ovsdb_num(&ovs, &v1.a, "link_resets"));
    // The other port saw nothing.
    assert_eq!(
        value(&pf.scrape(), "pinflow_ovs_interface_link_resets_total", &l2),
        Some(ovsdb_num(&ovs, &v2.a, "link_resets"))
    );

    // Traffic: N frames into port 1 (sent from its peer), forwarded out of port 2.
    let counters = |s: &[Sample]| -> [f64; 4] {
        [
            value(s, "pinflow_ovs_interface_receive_packets_total", &l1).unwrap_or(-1.0),
            value(s, "pinflow_ovs_interface_receive_bytes_total", &l1).unwrap_or(-1.0),
            value(s, "pinflow_ovs_interface_transmit_packets_total", &l2).unwrap_or(-1.0),
            value(s, "pinflow_ovs_interface_transmit_bytes_total", &l2).unwrap_or(-1.0),
        ]
    };
    let ovsdb_counters = || -> [f64; 4] {
        [
            ovsdb_stat(&ovs, &v1.a, "rx_packets").unwrap_or(-2.0),
            ovsdb_stat(&ovs, &v1.a, "rx_bytes").unwrap_or(-2.0),
            ovsdb_stat(&ovs, &v2.a, "tx_packets").unwrap_or(-2.0),
            ovsdb_stat(&ovs, &v2.a, "tx_bytes").unwrap_or(-2.0),
        ]
    };
    // A settled start: pinflow equal to OVSDB.
    let settled = wait_for(WAIT, || {
        let c = counters(&pf.scrape());
        (c == ovsdb_counters()).then_some(c)
    });
    let (before, _) = settled.unwrap_or_else(|| panic!("counters never matched OVSDB"));
    const N: usize = 2000;
    const LEN: usize = 200;
    let peer_rx0 = pinflow_tests::veth::sys_stat(&v2.b, "rx_packets");
    let sent = pinflow_tests::veth::send_frames(&v1.b, N, LEN);
    assert_eq!(sent, N);
    let done = wait_for(WAIT, || {
        let s = pf.scrape();
        let c = counters(&s);
        (c[2] >= before[2] + N as f64 * 0.99 && c == ovsdb_counters()).then_some(c)
    });
    let (after, took) = done.unwrap_or_else(|| {
        panic!(
            "counters did not move by {N} or never matched OVSDB: pinflow {:?} OVSDB {:?} before {before:?}\n{}",
            counters(&pf.scrape()),
            ovsdb_counters(),
            pf.log()
        )
    });
    let moved: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let want = [N as f64, (N * LEN) as f64, N as f64, (N * LEN) as f64];
    eprintln!("after {took:?}: moved {moved:?}, sent {want:?}");
    for (i, (m, w)) in moved.iter().zip(want).enumerate() {
        assert!(
            (m - w).abs() <= w * 0.01,
            "counter {i}: moved {m}, sent {w} ({moved:?})"
        );
    }
    let peer_rx = pinflow_tests::veth::sys_stat(&v2.b, "rx_packets") - peer_rx0;
    assert!(
        (peer_rx as f64 - N as f64).abs() <= N as f64 * 0.01,
        "{peer_rx} arrived at the far peer"
    );
}

/// `admin_up`, `link_up` and `mtu_bytes` of one interface in a scrape.
fn admin_link_mtu(s: &[Sample], l: &[(&str, &str)]) -> [Option<f64>; 3] {
    [
        value(s, "pinflow_ovs_interface_admin_up", l),
        value(s, "pinflow_ovs_interface_link_up", l),
        value(s, "pinflow_ovs_interface_mtu_bytes", l),
    ]
}

/// Admin state and MTU of a kernel veth device as a port of the userspace datapath, both read as
/// OVSDB monitor updates (no polling): `ip link set <port> down` shows as `admin_up` 0 and
/// `link_up` 0, up again as 1 and 1, while a lost carrier (the peer down) is `link_up` 0 with
/// `admin_up` 1; `mtu_request` shows as `mtu_bytes`, equal to OVSDB's `mtu` and the kernel's, and
/// so does an MTU set outside OVS (the MTU in force, not the requested one).
#[test]
fn veth_admin_state_and_mtu() {
    let name = "veth_admin_state_and_mtu";
    if !privileged(name) || !pinflow_tests::require_privileged(name, &["ip"]) {
        return;
    }
    use std::time::Instant;
    let ovs = Ovs::start();
    let v = pinflow_tests::veth::Veth::new(&unique("m1"));
    let br = "pfm-br0";
    ovs.add_empty_bridge(br, "secure");
    ovs.add_system_port(br, &v.a, 1);
    let run_dir = ovs.run_dir().to_string_lossy().into_owned();
    let pf = Pinflow::start(
        "[flows]\ninterface_metrics = true\n",
        &[
            "--ovs-run-dir",
            &run_dir,
            "--no-collector.pinning",
            "--no-collector.datapath",
        ],
    );
    let l = [("bridge", br), ("port", v.a.as_str()), ("domain", "")];
    let ovsdb_str = |column: &str| -> String {
        ovs.vsctl(&["get", "interface", &v.a, column])
            .trim()
            .trim_matches('"')
            .to_string()
    };
    let sys_mtu = || -> f64 {
        std::fs::read_to_string(format!("/sys/class/net/{}/mtu", v.a))
            .expect("sysfs mtu")
            .trim()
            .parse()
            .expect("mtu")
    };
    let settled = wait_for(WAIT, || {
        let st = admin_link_mtu(&pf.scrape(), &l);
        (st == [Some(1.0), Some(1.0), Some(ovsdb_num(&ovs, &v.a, "mtu"))]).then_some(st)
    });
    let (st, _) = settled.unwrap_or_else(|| {
        panic!(
            "veth port never up with OVSDB's MTU: {:?}\n{}",
            admin_link_mtu(&pf.scrape(), &l),
            pf.log()
        )
    });
    assert_eq!(st[2], Some(sys_mtu()), "the kernel's MTU");

    // Scrapes every 5 ms until `want` holds; the time since `t0`.
    let watch = |t0: Instant, what: &str, want: [Option<f64>; 3]| -> Duration {
        loop {
            if admin_link_mtu(&pf.scrape(), &l) == want {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < WAIT,
                "{what}: never {want:?}, last {:?}\n{}",
                admin_link_mtu(&pf.scrape(), &l),
                pf.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // Polls OVSDB's column until it reads `want`; the time since `t0`.
    let ovsdb_watch = |t0: Instant, column: &str, want: &str| -> Duration {
        while t0.elapsed() < WAIT {
            if ovsdb_str(column) == want {
                return t0.elapsed();
            }
        }
        panic!("OVSDB {column} never {want}");
    };
    let mtu0 = st[2];
    let (down, up) = ([Some(0.0), Some(0.0), mtu0], [Some(1.0), Some(1.0), mtu0]);
    // The port's own device down, then up (twice): one cycle timed from `ip link` to pinflow's
    // scrape, one to OVSDB's column.
    v.set(&v.a, false);
    let pf_down = watch(Instant::now(), "admin down", down);
    assert_eq!(
        (ovsdb_str("admin_state"), ovsdb_str("link_state")),
        ("down".into(), "down".into())
    );
    v.set(&v.a, true);
    let pf_up = watch(Instant::now(), "admin up", up);
    v.set(&v.a, false);
    let db_down = ovsdb_watch(Instant::now(), "admin_state", "down");
    v.set(&v.a, true);
    let db_up = ovsdb_watch(Instant::now(), "admin_state", "up");
    watch(Instant::now(), "admin up again", up);
    eprintln!(
        "admin down seen by pinflow after {pf_down:?} (OVSDB: {db_down:?}); \
         up: pinflow {pf_up:?} (OVSDB {db_up:?})"
    );
    // A lost carrier is not an admin down: the peer down leaves the port administratively up.
    v.set(&v.b, false);
    let carrier = watch(Instant::now(), "carrier lost", [Some(1.0), Some(0.0), mtu0]);
    assert_eq!(
        (ovsdb_str("admin_state"), ovsdb_str("link_state")),
        ("up".into(), "down".into())
    );
    v.set(&v.b, true);
    watch(Instant::now(), "carrier back", up);
    eprintln!("carrier loss (admin still up) seen by pinflow after {carrier:?}");

    // mtu_request: ovs-vsctl returns once ovs-vswitchd applied it; one change timed to pinflow's
    // scrape, one to OVSDB's `mtu`, both from before ovs-vsctl.
    let t0 = Instant::now();
    ovs.vsctl(&["set", "Interface", &v.a, "mtu_request=1400"]);
    let vsctl_1400 = t0.elapsed();
    let pf_mtu = watch(t0, "mtu_request=1400", [Some(1.0), Some(1.0), Some(1400.0)]);
    assert_eq!(ovsdb_num(&ovs, &v.a, "mtu"), 1400.0, "OVSDB's mtu");
    assert_eq!(sys_mtu(), 1400.0, "the kernel's MTU");
    let t0 = Instant::now();
    ovs.vsctl(&["set", "Interface", &v.a, "mtu_request=1300"]);
    let vsctl_1300 = t0.elapsed();
    let db_mtu = ovsdb_watch(t0, "mtu", "1300");
    watch(
        Instant::now(),
        "mtu_request=1300",
        [Some(1.0), Some(1.0), Some(1300.0)],
    );
    eprintln!(
        "mtu_request=1400 seen by pinflow {pf_mtu:?} after ovs-vsctl started ({vsctl_1400:?} in \
         ovs-vsctl); OVSDB's mtu 1300 after {db_mtu:?} ({vsctl_1300:?} in ovs-vsctl)"
    );
    // Set outside OVS while `mtu_request` is set: ovs-vswitchd hears the change (rtnetlink),
    // reconfigures and puts its 1300 back; pinflow ends where OVSDB and the kernel end.
    pinflow_tests::run("ip", &["link", "set", &v.a, "mtu", "1280"]);
    let t0 = Instant::now();
    let back = wait_for(WAIT, || (sys_mtu() == 1300.0).then_some(()));
    assert!(back.is_some(), "ovs-vswitchd did not restore mtu_request");
    watch(
        t0,
        "mtu_request restored",
        [Some(1.0), Some(1.0), Some(1300.0)],
    );
    assert_eq!(ovsdb_num(&ovs, &v.a, "mtu"), 1300.0, "OVSDB's mtu");
    // Without `mtu_request` OVS leaves the device's MTU alone: one set outside OVS is the MTU in
    // force, in OVSDB's `mtu` and in pinflow's series.
    ovs.vsctl(&["clear", "Interface", &v.a, "mtu_request"]);
    pinflow_tests::run("ip", &["link", "set", &v.a, "mtu", "1280"]);
    let outside = watch(
        Instant::now(),
        "ip link set mtu 1280",
        [Some(1.0), Some(1.0), Some(1280.0)],
    );
    assert_eq!(ovsdb_num(&ovs, &v.a, "mtu"), 1280.0, "OVSDB's mtu");
    assert_eq!(ovsdb_str("mtu_request"), "[]");
    assert_eq!(sys_mtu(), 1280.0, "the kernel's MTU");
    eprintln!("ip link set mtu 1280 (no mtu_request) seen by pinflow after {outside:?}");
}

/// Polls pinflow until `pred` holds for a scrape; panics with `what` and pinflow's log otherwise.
fn scrape_until(
    pf: &Pinflow,
    what: &str,
    pred: impl Fn(&[Sample]) -> bool,
) -> (Vec<Sample>, Duration) {
    let t0 = std::time::Instant::now();
    loop {
        let s = pf.scrape();
        if pred(&s) {
            return (s, t0.elapsed());
        }
        assert!(
            t0.elapsed() < WAIT * 2,
            "{what} not seen within {:?}\n{}",
            WAIT * 2,
            pf.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bonds with LACP, BFD, CFM and a tunnel's egress carrier between two bridges of a real OVS
/// (userspace datapath) linked by veth pairs: members enabled and LACP partners current, BFD up
/// and CFM without fault, the tunnel's egress device with carrier; a veth taken down shows as a
/// disabled member with an expired partner, BFD down with one more flap, a CFM fault, no carrier,
/// and all of it comes back. Only configured interfaces have series.
#[test]
fn bonds_lacp_bfd_cfm_and_tunnel_carrier() {
    let name = "bonds_lacp_bfd_cfm_and_tunnel_carrier";
    if !privileged(name) || !pinflow_tests::require_privileged(name, &["ip"]) {
        return;
    }
    use pinflow_tests::veth::Veth;
    let ovs = Ovs::start();
    let (v1, v2, v3, v4) = (
        Veth::new(&unique("b1")),
        Veth::new(&unique("b2")),
        Veth::new(&unique("d3")),
        Veth::new(&unique("t4")),
    );
    let (br0, br1) = ("pfl-br0", "pfl-br1");
    ovs.add_empty_bridge(br0, "secure");
    ovs.add_empty_bridge(br1, "secure");
    for (br, bond, m1, m2) in [
        (br0, "pfl-bond0", &v1.a, &v2.a),
        (br1, "pfl-bond1", &v1.b, &v2.b),
    ] {
        ovs.vsctl(&[
            "add-bond",
            br,
            bond,
            m1,
            m2,
            "lacp=active",
            "bond_mode=balance-tcp",
            "--",
            "set",
            "port",
            bond,
            "other_config:lacp-time=fast",
        ]);
    }
    for (br, dev, mpid) in [(br0, &v3.a, 1), (br1, &v3.b, 2)] {
        ovs.add_bfd_cfm_port(br, dev, mpid);
    }
    // The tunnel's egress device is v4.a. Two tunnel ports (VNI 0 and 5) through the same
    // device: one series, for the device.
    ovs.add_vxlan_ports(br0, &v4.a, &[("pfl-vx", 0), ("pfl-vx5", 5)]);
    let run_dir = ovs.run_dir().to_string_lossy().into_owned();
    let pf = Pinflow::start(
        "[ovs_vswitchd]\ninterval_seconds = 1.0\n",
        &["--ovs-run-dir", &run_dir, "--no-collector.pinning"],
    );
    let members = [
        (br0, "pfl-bond0", v1.a.as_str()),
        (br0, "pfl-bond0", v2.a.as_str()),
        (br1, "pfl-bond1", v1.b.as_str()),
        (br1, "pfl-bond1", v2.b.as_str()),
    ];
    let member = |s: &[Sample], family: &str, m: &(&str, &str, &str)| {
        value(
            s,
            family,
            &[("bridge", m.0), ("bond", m.1), ("member", m.2)],
        )
    };
    let d3 = [("bridge", br0), ("port", v3.a.as_str()), ("domain", "")];
    let vx = [("device", v4.a.as_str())];
    let all_good = |s: &[Sample]| {
        members.iter().all(|m| {
            member(s, "pinflow_ovs_bond_member_enabled", m) == Some(1.0)
                && member(s, "pinflow_ovs_lacp_current", m) == Some(1.0)
        }) && value(s, "pinflow_ovs_interface_bfd_up", &d3) == Some(1.0)
            && value(s, "pinflow_ovs_interface_bfd_forwarding", &d3) == Some(1.0)
            && value(s, "pinflow_ovs_interface_cfm_fault", &d3) == Some(0.0)
            && value(s, "pinflow_ovs_tunnel_egress_carrier_up", &vx) == Some(1.0)
    };
    let (s, took) = scrape_until(&pf, "bonds, BFD, CFM and tunnel all up", all_good);
    eprintln!(
        "all up after {took:?}; unixctl poll with bond/show took {:?} s",
        value(
            &s,
            "pinflow_collect_duration_seconds",
            &[("source", "ovs_unixctl")]
        )
    );
    // Only configured interfaces have series: 4 members, 2 BFD/CFM ends, 1 tunnel egress device.
    assert_eq!(select(&s, "pinflow_ovs_bond_member_enabled", &[]).len(), 4);
    assert_eq!(select(&s, "pinflow_ovs_lacp_current", &[]).len(), 4);
    assert_eq!(select(&s, "pinflow_ovs_interface_bfd_up", &[]).len(), 2);
    assert_eq!(select(&s, "pinflow_ovs_interface_cfm_fault", &[]).len(), 2);
    assert_eq!(
        select(&s, "pinflow_ovs_tunnel_egress_carrier_up", &[]).len(),
        1
    );
    for port in ["pfl-vx", "pfl-vx5"] {
        let dev = ovs.vsctl(&["get", "interface", port, "status:tunnel_egress_iface"]);
        assert_eq!(dev.trim().trim_matches('"'), v4.a, "{port}");
    }
    let flaps0 = value(&s, "pinflow_ovs_interface_bfd_flaps_total", &d3).expect("bfd flaps");
    let bfd_status = |key: &str| -> String {
        ovs.vsctl(&["get", "interface", &v3.a, &format!("bfd_status:{key}")])
            .trim()
            .trim_matches('"')
            .to_string()
    };
    assert_eq!(flaps0.to_string(), bfd_status("flap_count"));
    let cfm_flaps0 = value(&s, "pinflow_ovs_interface_cfm_flaps_total", &d3).expect("cfm flaps");
    assert_eq!(cfm_flaps0, ovsdb_num(&ovs, &v3.a, "cfm_flap_count"));
    for m in &members {
        assert_eq!(
            ovs.vsctl(&["get", "interface", m.2, "lacp_current"]).trim(),
            "true"
        );
    }

    // One bond link down (v2): both of its ends disabled; their partners expire (LACP fast: 3 s).
    v2.set(&v2.b, false);
    let (_, took) = scrape_until(&pf, "v2 members disabled", |s| {
        member(s, "pinflow_ovs_bond_member_enabled", &members[1]) == Some(0.0)
            && member(s, "pinflow_ovs_bond_member_enabled", &members[3]) == Some(0.0)
    });
    eprintln!("bond member disabled after {took:?}");
    let (s, took) = scrape_until(&pf, "v2 LACP partner expired", |s| {
        member(s, "pinflow_ovs_lacp_current", &members[1]) == Some(0.0)
    });
    eprintln!("LACP partner not current after {took:?} more");
    assert_eq!(
        ovs.vsctl(&["get", "interface", &v2.a, "lacp_current"])
            .trim(),
        "false"
    );
    for m in [&members[0], &members[2]] {
        assert_eq!(
            member(&s, "pinflow_ovs_bond_member_enabled", m),
            Some(1.0),
            "{m:?}"
        );
        assert_eq!(
            member(&s, "pinflow_ovs_lacp_current", m),
            Some(1.0),
            "{m:?}"
        );
    }
    v2.set(&v2.b, true);
    let (_, took) = scrape_until(&pf, "bond members back", |s| {
        members.iter().all(|m| {
            member(s, "pinflow_ovs_bond_member_enabled", m) == Some(1.0)
                && member(s, "pinflow_ovs_lacp_current", m) == Some(1.0)
        })
    });
    eprintln!("bond members enabled and current again after {took:?}");

    // BFD/CFM link down: BFD down, not forwarding, one more flap; CFM fault.
    v3.set(&v3.b, false);
    let (_, took) = scrape_until(&pf, "BFD down", |s| {
        value(s, "pinflow_ovs_interface_bfd_up", &d3) == Some(0.0)
    });
    eprintln!("BFD down after {took:?}");
    let (s, took) = scrape_until(&pf, "CFM fault", |s| {
        value(s, "pinflow_ovs_interface_cfm_fault", &d3) == Some(1.0)
    });
    eprintln!("CFM fault {took:?} later");
    assert_eq!(
        value(&s, "pinflow_ovs_interface_bfd_forwarding", &d3),
        Some(0.0)
    );
    let flaps1 = value(&s, "pinflow_ovs_interface_bfd_flaps_total", &d3).expect("flaps");
    assert_eq!(flaps1, flaps0 + 1.0);
    assert_eq!(bfd_status("state"), "down");
    assert_eq!(flaps1.to_string(), bfd_status("flap_count"));
    assert_eq!(
        value(&s, "pinflow_ovs_interface_cfm_flaps_total", &d3),
        Some(cfm_flaps0 + 1.0)
    );
    v3.set(&v3.b, true);
    let (s, took) = scrape_until(&pf, "BFD up again", |s| {
        value(s, "pinflow_ovs_interface_bfd_up", &d3) == Some(1.0)
            && value(s, "pinflow_ovs_interface_cfm_fault", &d3) == Some(0.0)
    });
    eprintln!("BFD up and CFM clear again after {took:?}");
    assert_eq!(
        value(&s, "pinflow_ovs_interface_bfd_flaps_total", &d3),
        Some(flaps0 + 2.0)
    );

    // The tunnel's egress device loses carrier, then gets it back.
    v4.set(&v4.b, false);
    let (_, took) = scrape_until(&pf, "tunnel egress carrier down", |s| {
        value(s, "pinflow_ovs_tunnel_egress_carrier_up", &vx) == Some(0.0)
    });
    eprintln!("tunnel egress carrier down after {took:?}");
    v4.set(&v4.b, true);
    scrape_until(&pf, "tunnel egress carrier up", |s| {
        value(s, "pinflow_ovs_tunnel_egress_carrier_up", &vx) == Some(1.0)
    });
    // What the unixctl poll (now with bond/show, two bonds) costs: six polls' durations.
    let mut polls: Vec<f64> = (0..6)
        .filter_map(|_| {
            std::thread::sleep(Duration::from_millis(1100));
            value(
                &pf.scrape(),
                "pinflow_collect_duration_seconds",
                &[("source", "ovs_unixctl")],
            )
        })
        .collect();
    polls.sort_by(f64::total_cmp);
    eprintln!("unixctl poll durations (s): {polls:?}");
}

/// The ovsdb-server events pinflow exports (docs/metrics.md,
/// `pinflow_ovs_ovsdb_server_coverage_total`).
const DB_EVENTS: [&str; 5] = [
    "txn_forward_create",
    "txn_forward_cancel",
    "raft_entry_serialize",
    "stream_open",
    "poll_zero_timeout",
];

/// The ovsdb-server `memory/show` kinds pinflow exports.
const DB_KINDS: [&str; 5] = ["cells", "atoms", "monitors", "sessions", "triggers"];

/// `ovs-appctl -t <run>/ovsdb-server.<pid>.ctl CMD ARGS` (ovs-appctl's `-t ovsdb-server` would look
/// in the default run dir's pid file).
fn db_appctl(ovs: &Ovs, args: &[&str]) -> String {
    let pid = std::fs::read_to_string(ovs.run_dir().join("ovsdb-server.pid")).expect("pid file");
    let ctl = ovs
        .run_dir()
        .join(format!("ovsdb-server.{}.ctl", pid.trim()));
    let mut all = vec!["-t", ctl.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    ovs.run("ovs-appctl", &all)
}

/// ovsdb-server's values as ovs-appctl prints them: the exported events' totals (0 when not
/// listed) and `memory/show`'s kinds (0 when not listed) and `backlog`.
fn db_appctl_values(ovs: &Ovs) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let cov = db_appctl(ovs, &["coverage/show"]);
    for e in DB_EVENTS {
        let total = cov
            .lines()
            .skip(1)
            .find_map(|l| {
                let t: Vec<&str> = l.split_whitespace().collect();
                match t.as_slice() {
                    [name, .., "total:", n] if *name == e => n.parse::<f64>().ok(),
                    _ => None,
                }
            })
            .unwrap_or(0.0);
        out.insert(format!("event:{e}"), total);
    }
    let mem = db_appctl(ovs, &["memory/show"]);
    let field = |k: &str| -> f64 {
        mem.split_whitespace()
            .find_map(|t| t.strip_prefix(&format!("{k}:")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    for k in DB_KINDS {
        out.insert(format!("kind:{k}"), field(k));
    }
    out.insert("backlog".into(), field("backlog"));
    out
}

/// pinflow's ovsdb-server values, keyed like [`db_appctl_values`].
fn db_pinflow_values(s: &[Sample]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for x in select(s, "pinflow_ovs_ovsdb_server_coverage_total", &[]) {
        out.insert(format!("event:{}", x.labels["event"]), x.value);
    }
    for x in select(s, "pinflow_ovs_ovsdb_server_objects", &[]) {
        out.insert(format!("kind:{}", x.labels["kind"]), x.value);
    }
    if let Some(b) = value(s, "pinflow_ovs_ovsdb_server_backlog_bytes", &[]) {
        out.insert("backlog".into(), b);
    }
    out
}

/// Compares pinflow's ovsdb-server values with ovs-appctl's: appctl, then (after two polls) a
/// scrape, then appctl again; every value that did not move over that window must be equal, and
/// at least `min_stable` of the 11 must not have moved. Returns pinflow's values.
fn db_values_match(ovs: &Ovs, pf: &Pinflow, min_stable: usize) -> BTreeMap<String, f64> {
    let (got, stable) = values_match(
        pf,
        "ovsdb-server",
        min_stable,
        || db_appctl_values(ovs),
        db_pinflow_values,
    );
    eprintln!("ovsdb-server values matched ({stable}/11 stable): {got:?}");
    got
}

/// Sends `signal` (`STOP`, `CONT`) to a daemon of the test's OVS.
fn signal(ovs: &Ovs, daemon: &str, signal: &str) {
    let pid = std::fs::read_to_string(ovs.run_dir().join(format!("{daemon}.pid"))).expect("pid");
    pinflow_tests::run("kill", &[&format!("-{signal}"), pid.trim()]);
}

/// Continues a stopped daemon even when the test fails while it is stopped.
struct ContinueOnDrop<'a>(&'a Ovs, &'static str);

impl Drop for ContinueOnDrop<'_> {
    fn drop(&mut self) {
        signal(self.0, self.1, "CONT");
    }
}

/// ovsdb-server's own counters over its control socket against what `ovs-appctl` prints at the
/// same moment (the test runs ovs-appctl; pinflow speaks JSON-RPC itself), following a change
/// (database cells, a reconnecting active remote's `stream_open`); the offload configuration
/// (`hw-offload`, `tc-policy`) from the OVSDB monitor, set and removed; and ovsdb-server hung
/// (SIGSTOP) and gone: its source down and its series gone while ovs-vswitchd's stay.
#[test]
fn ovsdb_server_counters_offload_config_and_a_hung_server() {
    if !privileged("ovsdb_server_counters_offload_config_and_a_hung_server") {
        return;
    }
    let ovs = Ovs::start();
    ovs.add_bridge("pfd-br0", &[("pfd-p1", 1), ("pfd-p2", 2)]);
    let run_dir = ovs.run_dir().to_string_lossy().into_owned();
    let pf = Pinflow::start(
        "[ovs_vswitchd]\ninterval_seconds = 1.0\n",
        &["--ovs-run-dir", &run_dir, "--no-collector.pinning"],
    );
    let (_, took) = scrape_until(&pf, "ovsdb_server_unixctl and ovsdb up", |s| {
        source_up(s, "ovsdb_server_unixctl") == Some(1.0) && source_up(s, "ovsdb") == Some(1.0)
    });
    eprintln!("ovsdb_server_unixctl up after {took:?}");

    // memory/show and coverage/show equal ovs-appctl's; sessions: ovs-vswitchd's and pinflow's.
    let v1 = db_values_match(&ovs, &pf, 10);
    assert!(v1["kind:cells"] > 0.0 && v1["kind:atoms"] > 0.0, "{v1:?}");
    assert!(v1["kind:sessions"] >= 2.0, "{v1:?}");
    assert!(v1["kind:monitors"] >= 2.0, "{v1:?}");
    // More rows: more cells, followed.
    ovs.add_ports(
        "pfd-br0",
        &[("pfd-p3", 3), ("pfd-p4", 4), ("pfd-p5", 5)],
        Some("dummy"),
    );
    // An active remote nobody listens on: ovsdb-server opens a connection, fails and retries
    // (`stream_open` moves).
    let remote = format!("tcp:{}", pinflow_tests::pinflow::free_addr());
    db_appctl(&ovs, &["ovsdb-server/add-remote", &remote]);
    let v2 = db_values_match(&ovs, &pf, 9);
    assert!(v2["kind:cells"] > v1["kind:cells"], "{v1:?} {v2:?}");
    assert!(
        v2["event:stream_open"] > v1["event:stream_open"],
        "{v1:?} {v2:?}"
    );
    db_appctl(&ovs, &["ovsdb-server/remove-remote", &remote]);

    // Offload configuration: off and `none` by default; set, then removed, as OVSDB events.
    let offload = |s: &[Sample]| -> (Option<f64>, Vec<String>) {
        (
            value(s, "pinflow_ovs_hw_offload_enabled", &[]),
            select(s, "pinflow_ovs_tc_policy_info", &[])
                .iter()
                .map(|x| format!("{}={}", x.labels["policy"], x.value))
                .collect(),
        )
    };
    assert_eq!(
        offload(&pf.scrape()),
        (Some(0.0), vec!["none=1".to_string()])
    );
    let t0 = std::time::Instant::now();
    ovs.vsctl(&[
        "set",
        "Open_vSwitch",
        ".",
        "other_config:hw-offload=true",
        "other_config:tc-policy=skip_sw",
    ]);
    let vsctl_took = t0.elapsed();
    let (_, took) = scrape_until(&pf, "hw-offload=true, tc-policy=skip_sw", |s| {
        offload(s) == (Some(1.0), vec!["skip_sw=1".to_string()])
    });
    eprintln!("offload set: on /metrics {took:?} after ovs-vsctl returned ({vsctl_took:?})");
    ovs.vsctl(&[
        "remove",
        "Open_vSwitch",
        ".",
        "other_config",
        "hw-offload",
        "tc-policy",
    ]);
    let (_, took) = scrape_until(&pf, "offload configuration removed", |s| {
        offload(s) == (Some(0.0), vec!["none=1".to_string()])
    });
    eprintln!("offload removed: on /metrics {took:?} after ovs-vsctl returned");

    // Hung ovsdb-server: its source down (the calls time out), its series gone; ovs-vswitchd's
    // unixctl values keep being served.
    let vswitchd_up = |s: &[Sample]| {
        source_up(s, "ovs_unixctl") == Some(1.0)
            && !select(s, "pinflow_ovs_coverage_total", &[]).is_empty()
    };
    let no_db_series = |s: &[Sample]| {
        select(s, "pinflow_ovs_ovsdb_server_objects", &[]).is_empty()
            && select(s, "pinflow_ovs_ovsdb_server_coverage_total", &[]).is_empty()
            && value(s, "pinflow_ovs_ovsdb_server_backlog_bytes", &[]).is_none()
    };
    signal(&ovs, "ovsdb-server", "STOP");
    let cont = ContinueOnDrop(&ovs, "ovsdb-server");
    let t0 = std::time::Instant::now();
    // (The source goes down as the poll fails, its series go with the report published right
    // after: wait for both.)
    let (s, took) = scrape_until(&pf, "ovsdb_server_unixctl down while hung", |s| {
        source_up(s, "ovsdb_server_unixctl") == Some(0.0) && no_db_series(s)
    });
    eprintln!("hung ovsdb-server: source down after {took:?}");
    assert!(vswitchd_up(&s), "ovs-vswitchd's values must stay");
    // ovs-vswitchd's values stay current through further polls.
    std::thread::sleep(Duration::from_secs(3));
    let s = pf.scrape();
    assert!(vswitchd_up(&s) && no_db_series(&s));
    let detail = pinflow_tests::scrape::sources(pf.addr)
        .and_then(|m| m.get("ovsdb_server_unixctl").cloned())
        .map(|v| v.to_string())
        .unwrap_or_default();
    assert!(detail.contains("no reply"), "{detail}");
    eprintln!("hung for {:?}: {detail}", t0.elapsed());
    drop(cont);
    let (_, took) = scrape_until(&pf, "ovsdb_server_unixctl back up", |s| {
        source_up(s, "ovsdb_server_unixctl") == Some(1.0)
            && !select(s, "pinflow_ovs_ovsdb_server_objects", &[]).is_empty()
    });
    eprintln!("continued ovsdb-server: source up after {took:?}");

    // Gone (no pid file, no socket): down, ovs-vswitchd's values stay; back after a start.
    ovs.stop("ovsdb-server");
    let (s, took) = scrape_until(&pf, "ovsdb_server_unixctl down when stopped", |s| {
        source_up(s, "ovsdb_server_unixctl") == Some(0.0) && no_db_series(s)
    });
    eprintln!("stopped ovsdb-server: source down after {took:?}");
    assert!(vswitchd_up(&s));
    ovs.start_ovsdb_server();
    let (s, took) = scrape_until(&pf, "ovsdb_server_unixctl up after a start", |s| {
        source_up(s, "ovsdb_server_unixctl") == Some(1.0)
            && source_up(s, "ovsdb") == Some(1.0)
            && value(
                s,
                "pinflow_ovs_process_restarts_total",
                &[("process", "ovsdb-server")],
            ) == Some(1.0)
    });
    eprintln!("restarted ovsdb-server: source up after {took:?}");
    assert!(vswitchd_up(&s));
    // A fresh run's counters match again.
    db_values_match(&ovs, &pf, 10);
}

/// A kernel tap device (as libvirt makes for an instance, without a QEMU holding it), deleted on
/// drop (also when the test fails).
struct TapDev(String);

impl TapDev {
    fn new(name: &str) -> TapDev {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", name])
            .output();
        pinflow_tests::run("ip", &["tuntap", "add", "dev", name, "mode", "tap"]);
        pinflow_tests::run("ip", &["link", "set", name, "up"]);
        TapDev(name.to_string())
    }
}

impl Drop for TapDev {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .output();
    }
}

/// `Interface.error` of a real ovs-vswitchd, default-on (no `interface_metrics`): an instance
/// port whose tap does not exist has `pinflow_ovs_interface_error_info` with OVS's text, joined
/// to the instance through `external_ids:vm-uuid`; the device appearing clears it; the device
/// deleted under the running port sets it again once ovs-vswitchd restarts, and deleting the
/// port clears it. Healthy ports never have the series.
#[test]
fn interface_error_follows_the_device_and_joins_the_instance() {
    let name = "interface_error_follows_the_device_and_joins_the_instance";
    if !privileged(name) || !pinflow_tests::require_privileged(name, &["ip"]) {
        return;
    }
    let ovs = Ovs::start();
    let br = "pfe-br0";
    ovs.add_bridge(br, &[("pfe-ok", 1)]);
    let host = pinflow_tests::captured::CapturedHost::new();
    let run_dir = ovs.run_dir().to_string_lossy().into_owned();
    let mut args = vec![
        "--ovs-run-dir".to_string(),
        run_dir,
        "--no-collector.datapath".to_string(),
    ];
    args.extend(host.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pf = Pinflow::start("[pinning]\nebpf = false\n", &args);
    const FAMILY: &str = "pinflow_ovs_interface_error_info";
    let (s, _) = scrape_until(&pf, "the healthy port", |s| {
        source_up(s, "ovsdb") == Some(1.0)
            && !select(s, "pinflow_ovs_port_info", &[("port", "pfe-ok")]).is_empty()
    });
    assert!(
        select(&s, FAMILY, &[]).is_empty(),
        "error series on a healthy host"
    );
    // What one scrape takes, to read the latencies below (polled every 20 ms between scrapes).
    let t = std::time::Instant::now();
    let _ = pf.scrape();
    eprintln!("one scrape takes {:?}", t.elapsed());

    // An instance port (fx-nova's vm-uuid) whose tap does not exist.
    let tap = format!("tap{}", unique("e"));
    let t0 = std::time::Instant::now();
    ovs.vsctl(&[
        "add-port",
        br,
        &tap,
        "--",
        "set",
        "interface",
        &tap,
        "external_ids:vm-uuid=5b1a7a5e-1f1c-4e51-9a47-3c1f0b2f6aa1",
        "external_ids:iface-id=pfe-port-1",
    ]);
    let vsctl_took = t0.elapsed();
    let ovsdb_error = || -> String {
        let e = ovs.vsctl(&["get", "interface", &tap, "error"]);
        let e = e.trim();
        // A set string is printed quoted; an empty column as `[]`.
        if e == "[]" {
            String::new()
        } else {
            e.trim_matches('"').to_string()
        }
    };
    let (db_error, db_took) = wait_for(WAIT, || Some(ovsdb_error()).filter(|e| !e.is_empty()))
        .unwrap_or_else(|| panic!("OVSDB never set the error of {tap}"));
    assert!(db_error.contains("No such device"), "{db_error}");
    assert_eq!(ovsdb_num(&ovs, &tap, "ofport"), -1.0);
    let labels = [
        ("bridge", br),
        ("port", tap.as_str()),
        ("domain", "fx-nova"),
    ];
    let (s, _) = scrape_until(&pf, "the error series", |s| {
        !select(s, FAMILY, &labels).is_empty()
    });
    let pf_took = t0.elapsed();
    let series = select(&s, FAMILY, &labels);
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].value, 1.0);
    assert_eq!(series[0].labels.get("error"), Some(&db_error));
    // Only the broken port has one; it is still listed (no ofport) and joined.
    assert_eq!(select(&s, FAMILY, &[]).len(), 1);
    let info = select(
        &s,
        "pinflow_ovs_port_info",
        &[
            ("port", tap.as_str()),
            ("domain", "fx-nova"),
            ("ofport", ""),
        ],
    );
    assert_eq!(info.len(), 1, "{info:?}");
    // /api/v1/flows lists the error with the port (and no `error` key for a healthy one).
    let api: serde_json::Value =
        serde_json::from_str(&pf.get("/api/v1/flows")).expect("/api/v1/flows is JSON");
    let port = |name: &str| {
        api["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["port"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in /api/v1/flows ports: {api}"))
    };
    let broken = port(&tap);
    assert_eq!(broken["error"], db_error.as_str(), "{broken}");
    assert_eq!(
        (broken["domain"].as_str(), broken["ofport"].is_null()),
        (Some("fx-nova"), true)
    );
    assert!(port("pfe-ok").get("error").is_none());
    eprintln!(
        "missing device: ovs-vsctl returned after {vsctl_took:?}, OVSDB's error read \
         {db_took:?} later, pinflow's series within {pf_took:?} of the add-port: {db_error:?}"
    );

    // The device appears: ovs-vswitchd (its rtnetlink notifier) reopens it and clears the error.
    let t1 = std::time::Instant::now();
    let dev = TapDev::new(&tap);
    let (_, cleared) = scrape_until(&pf, "the error cleared", |s| {
        select(s, FAMILY, &[]).is_empty()
            && select(s, "pinflow_ovs_port_info", &[("port", tap.as_str())])
                .first()
                .is_some_and(|p| p.labels.get("ofport").is_some_and(|o| !o.is_empty()))
    });
    assert_eq!(ovsdb_error(), "");
    assert!(ovsdb_num(&ovs, &tap, "ofport") > 0.0);
    eprintln!(
        "device created: series gone after {cleared:?} ({:?})",
        t1.elapsed()
    );

    // The tap is deleted under the running port (a VM torn down without unplugging it):
    // ovs-vswitchd keeps the port (its link goes down) and sets no error until it opens the
    // device again, e.g. when it restarts (an upgrade, a host reboot with stale ports).
    drop(dev);
    let (_, _) = wait_for(WAIT, || {
        (ovs.vsctl(&["get", "interface", &tap, "link_state"]).trim() == "down").then_some(())
    })
    .unwrap_or_else(|| panic!("{tap} never went down in OVSDB"));
    assert_eq!(ovsdb_error(), "", "OVS set an error at once");
    assert!(select(&pf.scrape(), FAMILY, &[]).is_empty());
    let t2 = std::time::Instant::now();
    ovs.stop("ovs-vswitchd");
    ovs.start_vswitchd();
    let (s, again) = scrape_until(&pf, "the error after ovs-vswitchd restarted", |s| {
        !select(s, FAMILY, &labels).is_empty()
    });
    let text = select(&s, FAMILY, &labels)[0].labels["error"].clone();
    assert_eq!(text, ovsdb_error());
    assert!(
        text.contains(&tap) && text.contains("No such device"),
        "{text}"
    );
    assert_eq!(select(&s, FAMILY, &[]).len(), 1, "only the broken port");
    eprintln!(
        "device deleted, ovs-vswitchd restarted: series {again:?} after the new ovs-vswitchd \
         detached ({:?} after the stop began): {text:?}",
        t2.elapsed()
    );

    // The port is deleted: no series left.
    let t3 = std::time::Instant::now();
    ovs.vsctl(&["del-port", br, &tap]);
    let (_, gone) = scrape_until(&pf, "the series gone with the port", |s| {
        select(s, FAMILY, &[]).is_empty()
            && select(s, "pinflow_ovs_port_info", &[("port", tap.as_str())]).is_empty()
    });
    eprintln!(
        "port deleted: series gone after {gone:?} ({:?})",
        t3.elapsed()
    );
}
