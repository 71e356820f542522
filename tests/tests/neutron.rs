//! Precision of the dirty-flow rules on stock Neutron tables (`tests/fixtures/neutron/`): each host's
//! bridges are loaded into a real, private ovs-vswitchd with the ports their flows reference, and a
//! real `pinflow serve` must report every rule at 0 (the false-positive rate); then one anomaly per
//! rule is injected into the stock br-int and each must be caught with its exact count (the
//! detection rate). `stale_cookie` is checked across a pinflow restart: a foreign flow older than
//! the grace period is reported by the first scrape that mirrors it.

use pinflow_tests::ovs::{self, Ovs};
use pinflow_tests::pinflow::Pinflow;
use pinflow_tests::scrape::{Sample, select};
use pinflow_tests::wait_for;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const COOKIE: &str = "0x8c5e3f0b6a2d4e17";
const WAIT: Duration = Duration::from_secs(15);
const BUILTIN: [(&str, &str); 7] = [
    ("output_to_missing_port", "broken"),
    ("in_port_missing", "broken"),
    ("goto_empty_table", "broken"),
    ("stale_cookie", "suspect"),
    ("unreachable", "suspect"),
    ("ambiguous_priority", "suspect"),
    ("dead_vlan", "broken"),
];
/// A user rule written with `ovs-ofctl` aliases (`tcp_dst` is the decoder's `tp_dst`).
const USER_RULE: &str = r#"
[[flows.user_rules]]
name = "telnet_accepted"
bridges = ["br-int"]
severity = "suspect"
fields = [ { field = "tcp_dst", equals = "23" }, { field = "ct_state", equals = "+trk+new" } ]
"#;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/neutron/{name}.flows"))
}

/// One port of a fixture's `# ports:` header: `name=ofport[:tag=N][:iface=ID]`.
struct PortSpec {
    name: String,
    ofport: u32,
    tag: Option<u16>,
    iface_id: Option<String>,
}

fn ports_of(text: &str) -> Vec<PortSpec> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("# ports: "))
        .expect("fixture has a `# ports:` header");
    line.split_whitespace()
        .map(|p| {
            let mut parts = p.split(':');
            let (name, ofport) = parts
                .next()
                .and_then(|np| np.split_once('='))
                .expect("name=ofport");
            let mut spec = PortSpec {
                name: name.to_string(),
                ofport: ofport.parse().expect("ofport"),
                tag: None,
                iface_id: None,
            };
            for kv in parts {
                match kv.split_once('=') {
                    Some(("tag", t)) => spec.tag = Some(t.parse().expect("tag")),
                    Some(("iface", i)) => spec.iface_id = Some(i.to_string()),
                    other => panic!("bad port attribute {other:?} in {p}"),
                }
            }
            spec
        })
        .collect()
}

/// Number of flows in a fixture (non-comment lines).
fn flows_in(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count()
}

/// A private OVS with `bridge` → fixture, as the agent leaves them: ports (dummy netdevs with the
/// fixture's ofports, tags and iface-ids), then the flows with `ovs-ofctl add-flows`.
fn host(tables: &[(&str, &str)]) -> (Ovs, BTreeMap<String, usize>) {
    let ovs = Ovs::start();
    let mut counts = BTreeMap::new();
    for (bridge, file) in tables {
        let path = fixture(file);
        let text = std::fs::read_to_string(&path).expect("fixture");
        let ports = ports_of(&text);
        let pairs: Vec<(&str, u32)> = ports.iter().map(|p| (p.name.as_str(), p.ofport)).collect();
        ovs.add_bridge(bridge, &pairs);
        for p in &ports {
            if let Some(t) = p.tag {
                ovs.vsctl(&["set", "port", &p.name, &format!("tag={t}")]);
            }
            if let Some(i) = &p.iface_id {
                ovs.vsctl(&[
                    "set",
                    "interface",
                    &p.name,
                    &format!("external_ids:iface-id={i}"),
                ]);
            }
        }
        ovs.ofctl(&["add-flows", bridge, &path.to_string_lossy()]);
        let n = ovs
            .ofctl(&["dump-flows", bridge, "--no-stats"])
            .lines()
            .filter(|l| l.contains("actions="))
            .count();
        assert_eq!(
            n,
            flows_in(&text),
            "{file}: every fixture flow is installed"
        );
        counts.insert(bridge.to_string(), n);
    }
    (ovs, counts)
}

fn pinflow(ovs: &Ovs, grace_secs: u64) -> Pinflow {
    let run = ovs.run_dir();
    Pinflow::start(
        &format!(
            "[pinning]\nebpf = false\n[datapath]\nenabled = false\n[flows]\nstale_cookie_grace_secs = {grace_secs}\n{USER_RULE}"
        ),
        &["--ovs-run-dir", &run.to_string_lossy()],
    )
}

/// `pinflow_ovs_dirty_flows` by (bridge, rule).
fn dirty(s: &[Sample]) -> BTreeMap<(String, String), f64> {
    select(s, "pinflow_ovs_dirty_flows", &[])
        .iter()
        .map(|x| {
            (
                (x.labels["bridge"].clone(), x.labels["rule"].clone()),
                x.value,
            )
        })
        .collect()
}

fn flows_mirrored(s: &[Sample], bridge: &str) -> f64 {
    select(s, "pinflow_ovs_flows", &[("bridge", bridge)])
        .iter()
        .map(|x| x.value)
        .sum()
}

/// Waits until every bridge is mirrored completely; returns that scrape.
fn mirrored(pf: &Pinflow, counts: &BTreeMap<String, usize>) -> Vec<Sample> {
    wait_for(WAIT, || {
        let s = pf.scrape();
        counts
            .iter()
            .all(|(b, n)| flows_mirrored(&s, b) == *n as f64 && dirty(&s).keys().any(|k| k.0 == *b))
            .then_some(s)
    })
    .map(|(s, _)| s)
    .unwrap_or_else(|| panic!("bridges {counts:?} not mirrored\n{}", pf.log()))
}

/// A real overlap a stock table has: bridge, rule, count, what each finding's flow text contains.
type Known = (&'static str, &'static str, f64, &'static str);

/// A stock host: name, (bridge, fixture) for br-int, br-tun, br-ex, its known real overlaps.
type Host<'a> = (&'a str, [(&'a str, &'a str); 3], &'a [Known]);

/// Loads a stock host and expects every rule at 0 on every bridge except the `known` real overlaps
/// (bridge, rule, count, what each such finding's flow text contains); returns (flows, findings
/// that are not known ones).
fn stock_host(name: &str, tables: &[(&str, &str)], known: &[Known]) -> (usize, f64) {
    let (ovs, counts) = host(tables);
    let pf = pinflow(&ovs, 1);
    let s = mirrored(&pf, &counts);
    // Let the 1 s stale-cookie grace pass: a stock table must stay clean after it too.
    std::thread::sleep(Duration::from_millis(1500));
    let d = dirty(&pf.scrape());
    let findings = pf.get("/api/v1/flows/dirty");
    let expected = |b: &str, r: &str| {
        known
            .iter()
            .find(|k| k.0 == b && k.1 == r)
            .map_or(0.0, |k| k.2)
    };
    let unexpected: f64 = d.iter().map(|((b, r), v)| (v - expected(b, r)).abs()).sum();
    assert_eq!(
        unexpected,
        0.0,
        "{name}: stock Neutron tables raise nothing but {known:?}: {:?}\n{findings}",
        d.iter().filter(|(_, v)| **v != 0.0).collect::<Vec<_>>()
    );
    for b in counts.keys() {
        for (rule, _) in BUILTIN {
            assert_eq!(
                d.get(&(b.clone(), rule.to_string())),
                Some(&expected(b, rule)),
                "{name} {b} {rule}"
            );
        }
    }
    let listed: serde_json::Value = serde_json::from_str(&findings).expect("dirty flows JSON");
    let listed = listed.as_array().cloned().unwrap_or_default();
    for (b, r, n, text) in known {
        let these: Vec<&serde_json::Value> = listed
            .iter()
            .filter(|f| f["bridge"] == *b && f["rule"] == *r)
            .collect();
        assert_eq!(these.len() as f64, *n, "{name}: {b} {r}: {these:?}");
        assert!(
            these
                .iter()
                .all(|f| f["flow"].as_str().is_some_and(|t| t.contains(text))),
            "{name}: {b} {r}: only the known flows ({text}): {these:?}"
        );
    }
    let flows: usize = counts.values().sum();
    eprintln!(
        "{name}: {flows} stock flows on {} bridges, {} rule series, unexpected findings 0, known {known:?} (first complete scrape: {} series)",
        counts.len(),
        d.len(),
        dirty(&s).len()
    );
    (flows, unexpected)
}

#[test]
fn stock_neutron_tables_raise_nothing() {
    if !ovs::available("stock_neutron_tables_raise_nothing") {
        return;
    }
    // explicitly_egress_direct installs, per port, `reg6=TAG,dl_dst=MAC actions=output:PORT` and
    // `dl_vlan=TAG,dl_dst=MAC actions=strip_vlan,output:PORT` at one priority of table 94: a frame
    // an instance sends tagged with its own local VLAN id matches both (OVS checks VLANs on input
    // only for NORMAL), so these are real overlaps, reported as the suspects they are.
    let egress_direct_overlap = [(
        "br-int",
        "ambiguous_priority",
        6.0,
        "table=94, priority=12,",
    )];
    let hosts: [Host; 3] = [
        (
            "ovs firewall, default",
            [
                ("br-int", "br-int-ovsfw"),
                ("br-tun", "br-tun"),
                ("br-ex", "br-ex"),
            ],
            &[],
        ),
        (
            "ovs firewall, explicitly_egress_direct",
            [
                ("br-int", "br-int-ovsfw-egress-direct"),
                ("br-tun", "br-tun"),
                ("br-ex", "br-ex"),
            ],
            &egress_direct_overlap,
        ),
        (
            "DVR, noop firewall",
            [
                ("br-int", "br-int-dvr"),
                ("br-tun", "br-tun-dvr"),
                ("br-ex", "br-ex-dvr"),
            ],
            &[],
        ),
    ];
    let mut flows = 0;
    for (name, tables, known) in hosts {
        let (n, unexpected) = stock_host(name, &tables, known);
        flows += n;
        assert_eq!(unexpected, 0.0);
    }
    eprintln!(
        "false-positive rate: 0 unexpected dirty flows of {flows} stock flows (0.0%); real overlaps reported: {egress_direct_overlap:?}"
    );
}

#[test]
fn one_anomaly_per_rule_is_caught_in_a_stock_table() {
    if !ovs::available("one_anomaly_per_rule_is_caught_in_a_stock_table") {
        return;
    }
    let (ovs, counts) = host(&[("br-int", "br-int-ovsfw"), ("br-tun", "br-tun")]);
    let pf = pinflow(&ovs, 1);
    let s = mirrored(&pf, &counts);
    // Every enabled rule is exported with its severity, the user rule with the one configured.
    let info: BTreeMap<String, String> = select(&s, "pinflow_ovs_dirty_flow_rule_info", &[])
        .iter()
        .map(|x| (x.labels["rule"].clone(), x.labels["severity"].clone()))
        .collect();
    let mut want: BTreeMap<String, String> = BUILTIN
        .iter()
        .map(|(r, s)| (r.to_string(), s.to_string()))
        .collect();
    want.insert("telnet_accepted".into(), "suspect".into());
    assert_eq!(info, want);

    let c = COOKIE;
    // (rule, expected count on br-int, how to inject, how to repair)
    enum Fix {
        Flow(String),
        Tag(&'static str),
    }
    let cases: Vec<(&str, f64, String, Fix)> = vec![
        (
            "output_to_missing_port",
            1.0,
            format!("cookie={c},table=94,priority=20,dl_dst=fa:16:3e:00:0a:09,actions=output:42"),
            Fix::Flow("table=94,priority=20,dl_dst=fa:16:3e:00:0a:09".into()),
        ),
        (
            "in_port_missing",
            1.0,
            format!("cookie={c},table=0,priority=10,in_port=99,actions=drop"),
            Fix::Flow("table=0,priority=10,in_port=99".into()),
        ),
        (
            "goto_empty_table",
            1.0,
            format!(
                "cookie={c},table=60,priority=95,dl_dst=fa:16:3e:00:0a:09,actions=resubmit(,44)"
            ),
            Fix::Flow("table=60,priority=95,dl_dst=fa:16:3e:00:0a:09".into()),
        ),
        (
            "stale_cookie",
            1.0,
            "cookie=0x1234,table=24,priority=5,arp,in_port=5,actions=drop".into(),
            Fix::Flow("table=24,priority=5,arp,in_port=5".into()),
        ),
        (
            // +inv implies +trk: the stock `ct_state=+inv+trk` drop at priority 50 covers it.
            "unreachable",
            1.0,
            format!("cookie={c},table=72,priority=30,ct_state=+inv,reg5=5,actions=drop"),
            Fix::Flow("table=72,priority=30,ct_state=+inv,reg5=5".into()),
        ),
        (
            // +trk-inv meets the two accept flows of port 5 at priority 50 (+est+rpl, +rel), not
            // the +inv drop or the ct_mark=0x1 drop.
            "ambiguous_priority",
            3.0,
            format!(
                "cookie={c},table=72,priority=50,ct_state=+trk-inv,ct_zone=1,ct_mark=0,reg5=5,actions=drop"
            ),
            Fix::Flow("table=72,priority=50,ct_state=+trk-inv,ct_zone=1,ct_mark=0,reg5=5".into()),
        ),
        ("dead_vlan", 1.0, "tap-b1".into(), Fix::Tag("tap-b1")),
        (
            "telnet_accepted",
            1.0,
            format!(
                "cookie={c},table=82,priority=77,ct_state=+new-est,tcp,reg5=6,tp_dst=23,actions=output:6"
            ),
            Fix::Flow("table=82,priority=77,ct_state=+new-est,tcp,reg5=6,tp_dst=23".into()),
        ),
    ];
    let mut caught = 0;
    for (rule, n, inject, fix) in &cases {
        let t0 = Instant::now();
        match fix {
            Fix::Tag(port) => {
                ovs.vsctl(&["set", "port", port, "tag=4095"]);
            }
            Fix::Flow(_) => {
                ovs.ofctl(&["add-flow", "br-int", inject]);
            }
        }
        let mut last = BTreeMap::new();
        let got = wait_for(WAIT, || {
            let d = dirty(&pf.scrape());
            last = d.clone();
            d.iter()
                .all(|((b, r), v)| {
                    let want = if b == "br-int" && r == rule { *n } else { 0.0 };
                    *v == want
                })
                .then_some(())
        });
        match got {
            Some((_, took)) => {
                caught += 1;
                eprintln!(
                    "{rule}: caught ({n} flagged) {took:?} after injection ({:?} incl. the command)",
                    t0.elapsed()
                );
            }
            None => eprintln!(
                "{rule}: NOT caught: {:?}\n{}",
                last.iter().filter(|(_, v)| **v != 0.0).collect::<Vec<_>>(),
                pf.get("/api/v1/flows/dirty")
            ),
        }
        match fix {
            Fix::Tag(port) => {
                ovs.vsctl(&["set", "port", port, "tag=2"]);
            }
            Fix::Flow(spec) => {
                ovs.ofctl(&["--strict", "del-flows", "br-int", spec]);
            }
        }
        wait_for(WAIT, || {
            dirty(&pf.scrape())
                .values()
                .all(|v| *v == 0.0)
                .then_some(())
        })
        .unwrap_or_else(|| panic!("{rule}: not clean again after the repair\n{}", pf.log()));
    }
    eprintln!(
        "detection rate: {caught}/{} injected anomalies caught with their exact counts",
        cases.len()
    );
    assert_eq!(caught, cases.len(), "every injected anomaly is caught");
}

#[test]
fn stale_cookie_ages_by_the_switchs_duration_across_a_restart() {
    if !ovs::available("stale_cookie_ages_by_the_switchs_duration_across_a_restart") {
        return;
    }
    let (ovs, mut counts) = host(&[("br-tun", "br-tun")]);
    let grace = 5;
    let first = pinflow(&ovs, grace);
    mirrored(&first, &counts);
    ovs.ofctl(&[
        "add-flow",
        "br-tun",
        "cookie=0xdead,table=22,priority=2,dl_vlan=7,actions=drop",
    ]);
    *counts.get_mut("br-tun").expect("br-tun") += 1;
    let added = Instant::now();
    let stale = |s: &[Sample]| {
        dirty(s)
            .get(&("br-tun".to_string(), "stale_cookie".to_string()))
            .copied()
    };
    let (_, took) = wait_for(Duration::from_secs(grace + 10), || {
        (stale(&first.scrape()) == Some(1.0)).then_some(())
    })
    .unwrap_or_else(|| panic!("foreign flow never stale\n{}", first.log()));
    assert!(
        added.elapsed() >= Duration::from_secs(grace),
        "stale before its grace period ended ({took:?})"
    );
    drop(first);
    // Restarted, pinflow ages the flow by the switch's duration: stale at the first complete scrape,
    // not a grace period after the restart.
    let second = pinflow(&ovs, grace);
    let t0 = Instant::now();
    let s = mirrored(&second, &counts);
    assert_eq!(
        stale(&s),
        Some(1.0),
        "the first scrape after the restart ({:?}) already reports the old foreign flow\n{}",
        t0.elapsed(),
        second.log()
    );
    // A young foreign flow is not stale yet after a restart either: its grace runs from its own age.
    ovs.ofctl(&[
        "add-flow",
        "br-tun",
        "cookie=0xbeef,table=22,priority=2,dl_vlan=8,actions=drop",
    ]);
    *counts.get_mut("br-tun").expect("br-tun") += 1;
    drop(second);
    let third = pinflow(&ovs, grace);
    let s = mirrored(&third, &counts);
    assert_eq!(
        stale(&s),
        Some(1.0),
        "only the old flow is stale right after the restart"
    );
    wait_for(Duration::from_secs(grace + 10), || {
        (stale(&third.scrape()) == Some(2.0)).then_some(())
    })
    .unwrap_or_else(|| panic!("young foreign flow never stale\n{}", third.log()));
}
