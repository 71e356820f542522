//! Conntrack pressure per zone, end to end against the real kernel: the test thread moves into a
//! network namespace of its own (every process it starts inherits it: nft, sysctl, conntrack, a
//! private Open vSwitch, pinflow), where an nft rule puts UDP traffic to two port ranges into
//! conntrack zones 7 and 9, as Neutron's firewall puts an instance's traffic into its network's
//! zone. Real datagrams create the entries. br-int-like flows on the private OVS load zone 7 into
//! `reg6` for `tapfx000a1` (the captured host's instance `fx-nova`) and zone 9 for two ports
//! without an instance. pinflow must count each zone exactly as `conntrack -L -w ZONE` lists it,
//! under the right instance, report the table's size and limit as procfs does, and move a zone's
//! entries to `other` once the flows that load it are deleted.

use pinflow_tests::ovs::{self, Ovs};
use pinflow_tests::pinflow::Pinflow;
use pinflow_tests::scrape::{Sample, select, source_up};
use pinflow_tests::{require_privileged, run, wait_for};
use std::net::UdpSocket;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const BRIDGE: &str = "pfct-br0";

fn value(s: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    select(s, name, want).first().map(|s| s.value)
}

/// Entries `conntrack -L` lists in `zone` (this thread's namespace).
fn conntrack_count(zone: u16) -> f64 {
    run("conntrack", &["-L", "-w", &zone.to_string()])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as f64
}

fn sysctl(name: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
        .expect(name)
        .trim()
        .parse()
        .expect(name)
}

/// One datagram from `sock` to each port of `ports` on 127.0.0.1: one conntrack entry each.
fn send(sock: &UdpSocket, ports: std::ops::Range<u16>) {
    for p in ports {
        sock.send_to(b"x", ("127.0.0.1", p)).expect("send");
    }
}

#[test]
fn zone_entries_made_by_traffic_show_under_the_right_instance() {
    if !ovs::available("zone_entries_made_by_traffic_show_under_the_right_instance")
        || !require_privileged(
            "zone_entries_made_by_traffic_show_under_the_right_instance",
            &["nft", "conntrack", "ip"],
        )
    {
        return;
    }
    // This thread only (and what it starts): the host's conntrack table is left alone.
    // SAFETY: unshare(2) with CLONE_NEWNET changes only the calling thread's namespace.
    #[allow(unsafe_code)] // No safe wrapper for unshare(2) in the test crate's dependencies.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
    run("ip", &["link", "set", "lo", "up"]);
    let rules = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(
        rules.path(),
        "table inet pfct {\n  chain out {\n    type filter hook output priority raw; policy accept;\n    \
         udp dport 40000-40999 ct zone set 7\n    udp dport 41000-41999 ct zone set 9\n  }\n}\n",
    )
    .expect("nft rules");
    run("nft", &["-f", &rules.path().to_string_lossy()]);
    // Unreplied UDP entries live 30 s by default: longer than the test may take.
    std::fs::write("/proc/sys/net/netfilter/nf_conntrack_udp_timeout", "600").expect("udp timeout");

    let ovs = Ovs::start();
    ovs.add_bridge(BRIDGE, &[("tapfx000a1", 1), ("pfct-p2", 2), ("pfct-p3", 3)]);
    // As Neutron's openvswitch firewall writes them (both spellings of the register loads).
    for f in [
        "table=60,priority=100,in_port=1,actions=load:0x1->NXM_NX_REG5[],load:0x7->NXM_NX_REG6[],resubmit(,71)",
        "table=60,priority=90,dl_vlan=1,dl_dst=fa:16:3e:00:00:01,actions=load:0x1->NXM_NX_REG5[],load:0x7->NXM_NX_REG6[],strip_vlan,resubmit(,81)",
        "table=60,priority=100,in_port=2,actions=set_field:0x2->reg5,set_field:0x9->reg6,resubmit(,71)",
        "table=60,priority=100,in_port=3,actions=set_field:0x3->reg5,set_field:0x9->reg6,resubmit(,71)",
        "table=71,priority=10,ip,actions=ct(table=72,zone=NXM_NX_REG6[0..15])",
        "table=72,priority=10,actions=drop",
        "table=81,priority=10,ip,actions=ct(table=82,zone=NXM_NX_REG6[0..15])",
        "table=82,priority=10,actions=drop",
    ] {
        ovs.ofctl(&["add-flow", BRIDGE, f]);
    }
    let host = pinflow_tests::captured::CapturedHost::new();
    let run_dir = ovs.run_dir().to_string_lossy().into_owned();
    let mut args = vec!["--ovs-run-dir".to_string(), run_dir];
    args.extend(host.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Capabilities are dropped as in production: CAP_NET_ADMIN is what the dump needs.
    let pf = Pinflow::start(
        "[pinning]\nebpf = false\n[datapath]\nebpf = false\n[conntrack]\nenabled = true\ninterval_seconds = 5\n",
        &args,
    );

    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    send(&sock, 40000..40037);
    send(&sock, 41000..41011);
    send(&sock, 45000..45005);
    let (z7, z9) = (conntrack_count(7), conntrack_count(9));
    assert_eq!((z7, z9), (37.0, 11.0), "the kernel's view");
    let limit = sysctl("nf_conntrack_max");

    let got = wait_for(WAIT, || {
        let s = pf.scrape();
        let seven = value(
            &s,
            "pinflow_conntrack_zone_entries",
            &[("ct_zone", "7"), ("domain", "fx-nova")],
        )?;
        let nine = value(
            &s,
            "pinflow_conntrack_zone_entries",
            &[("ct_zone", "9"), ("domain", "")],
        )?;
        ((seven, nine) == (z7, z9)).then_some(s)
    });
    let Some((s, _)) = got else {
        panic!(
            "zones 7 and 9 never counted {z7} and {z9} under fx-nova and no instance:\n{}\n{}",
            select(&pf.scrape(), "pinflow_conntrack_zone_entries", &[])
                .iter()
                .map(|s| format!("{:?} {}", s.labels, s.value))
                .collect::<Vec<_>>()
                .join("\n"),
            pf.log()
        );
    };
    assert_eq!(source_up(&s, "conntrack"), Some(1.0));
    assert_eq!(
        value(&s, "pinflow_conntrack_entries_limit", &[]),
        Some(limit)
    );
    // The rest (zone 0: 5 datagrams and the scrapes' own TCP connections) is `other`; the host
    // total is what procfs said at the poll, at least every entry the test made.
    let other = value(
        &s,
        "pinflow_conntrack_zone_entries",
        &[("ct_zone", "other")],
    )
    .expect("other");
    assert!(other >= 5.0, "other {other}");
    let total = value(&s, "pinflow_conntrack_entries", &[]).expect("entries");
    assert!(
        total >= z7 + z9 + 5.0 && total <= sysctl("nf_conntrack_count"),
        "{total}"
    );
    assert_eq!(
        select(&s, "pinflow_conntrack_zone_entries", &[]).len(),
        3,
        "zones 7, 9 and other only"
    );

    // The API lists every port and instance of a zone.
    let api: serde_json::Value = serde_json::from_str(&pf.get("/api/v1/conntrack")).expect("JSON");
    let zones = api["zones"].as_array().expect("zones");
    let ports = |z: u64| -> Vec<(String, String)> {
        zones
            .iter()
            .find(|x| x["zone"] == z)
            .and_then(|x| x["ports"].as_array())
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        (
                            p["port"].as_str().unwrap_or_default().to_string(),
                            p["domain"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        ports(7),
        [("tapfx000a1".to_string(), "fx-nova".to_string())]
    );
    assert_eq!(
        ports(9),
        [
            ("pfct-p2".to_string(), String::new()),
            ("pfct-p3".to_string(), String::new())
        ]
    );

    // `pinflow check` probes with one full dump of the same table: zones 0, 7 and 9 hold entries.
    let cfg = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(cfg.path(), "[conntrack]\nenabled = true\n").expect("config");
    let out = std::process::Command::new(pinflow_tests::pinflow::bin())
        .arg("check")
        .arg("--config")
        .arg(cfg.path())
        .args(&args)
        .output()
        .expect("pinflow check");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("conntrack "))
        .unwrap_or_else(|| panic!("no conntrack line:\n{text}"));
    assert!(
        line.contains(" up ") && line.ends_with(", 3 zone(s)"),
        "{line}"
    );

    // New traffic in zone 7 is counted at the next poll.
    send(&sock, 40037..40050);
    let z7 = conntrack_count(7);
    assert_eq!(z7, 50.0);
    let counted = wait_for(WAIT, || {
        let s = pf.scrape();
        (value(
            &s,
            "pinflow_conntrack_zone_entries",
            &[("ct_zone", "7"), ("domain", "fx-nova")],
        ) == Some(z7))
        .then_some(())
    });
    assert!(
        counted.is_some(),
        "zone 7 never reached {z7}:\n{}",
        pf.log()
    );

    // The agent deletes fx-nova's flows: zone 7 is no longer attributed, its entries are `other`.
    ovs.ofctl(&["del-flows", BRIDGE, "table=60,in_port=1"]);
    ovs.ofctl(&[
        "del-flows",
        BRIDGE,
        "table=60,dl_vlan=1,dl_dst=fa:16:3e:00:00:01",
    ]);
    let moved = wait_for(WAIT, || {
        let s = pf.scrape();
        let gone = select(&s, "pinflow_conntrack_zone_entries", &[("ct_zone", "7")]).is_empty();
        let other = value(
            &s,
            "pinflow_conntrack_zone_entries",
            &[("ct_zone", "other")],
        )?;
        (gone && other >= z7 + 5.0).then_some(())
    });
    assert!(
        moved.is_some(),
        "zone 7 still attributed after its flows went:\n{}",
        pf.log()
    );
    // With one zone holding a few of the entries, pinflow asks the kernel for that zone only
    // (`CTA_ZONE` filter), and still counts what `conntrack` lists.
    let filtered = wait_for(WAIT, || {
        let api: serde_json::Value = serde_json::from_str(&pf.get("/api/v1/conntrack")).ok()?;
        let nine = api["zones"].as_array()?.iter().find(|z| z["zone"] == 9)?["entries"].as_f64();
        (api["mode"] == "zones" && nine == Some(conntrack_count(9))).then_some(())
    });
    assert!(
        filtered.is_some(),
        "never counted zone 9 by a filtered dump: {}\n{}",
        pf.get("/api/v1/conntrack"),
        pf.log()
    );
}

/// Without `CAP_NET_ADMIN` (a unit or pod that was not given it) the `conntrack` source is down
/// with the kernel's reason, exports nothing, and the other sources keep working.
#[test]
fn without_net_admin_the_source_is_down_and_the_rest_works() {
    if !require_privileged(
        "without_net_admin_the_source_is_down_and_the_rest_works",
        &["setpriv"],
    ) {
        return;
    }
    let host = pinflow_tests::captured::CapturedHost::new();
    let args = host.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pf = Pinflow::start_wrapped(
        &[
            "setpriv",
            "--inh-caps=-net_admin",
            "--bounding-set=-net_admin",
        ],
        "[pinning]\nebpf = false\n[conntrack]\nenabled = true\ninterval_seconds = 5\n",
        &args,
    );
    let down = wait_for(WAIT, || {
        let s = pf.scrape();
        (source_up(&s, "conntrack") == Some(0.0) && source_up(&s, "libvirt") == Some(1.0))
            .then_some(s)
    });
    let Some((s, _)) = down else {
        panic!("conntrack never reported down:\n{}", pf.log());
    };
    assert!(select(&s, "pinflow_conntrack_entries", &[]).is_empty());
    assert_eq!(
        value(&s, "pinflow_instance_info", &[("domain", "fx-nova")]),
        Some(1.0)
    );
    let detail = pinflow_tests::scrape::sources(pf.addr)
        .and_then(|m| m.get("conntrack").cloned())
        .map(|v| v.to_string())
        .unwrap_or_default();
    assert!(detail.contains("Operation not permitted"), "{detail}");
}
