//! Dirty-flow detection end to end on a real, private Open vSwitch (ovsdb-server + ovs-vswitchd,
//! userspace datapath): a clean Neutron-like br-int, each anomaly injected with ovs-ofctl/ovs-vsctl as
//! an agent bug would, observed on pinflow's /metrics and /api/v1/flows/dirty, then repaired; an
//! ovs-vswitchd restart; and `pinflow flows` against `ovs-ofctl dump-flows` on several hundred flows.

use pinflow_tests::captured::CapturedHost;
use pinflow_tests::ovs::{Ovs, mask_durations};
use pinflow_tests::pinflow::{Pinflow, bin};
use pinflow_tests::scrape::{Sample, select, source_up};
use pinflow_tests::{require_privileged, wait_for};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const COOKIE: &str = "0x6a1b2c3d4e5f6071";
const RULES: [&str; 7] = [
    "output_to_missing_port",
    "in_port_missing",
    "goto_empty_table",
    "stale_cookie",
    "unreachable",
    "ambiguous_priority",
    "dead_vlan",
];
const WAIT: Duration = Duration::from_secs(10);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn privileged(test: &str) -> bool {
    require_privileged(
        test,
        &["ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl"],
    )
}

/// br-int as the Neutron OVS agent builds it: two instance taps (the first is fx-nova's tap in the
/// libvirt fixture), a patch port to br-tun and the br-ex veth; the clean flow table.
fn br_int() -> Ovs {
    let ovs = Ovs::start();
    ovs.add_bridge(
        "br-int",
        &[
            ("tapfx000a1", 1),
            ("tapb", 2),
            ("patch-tun", 3),
            ("int-br-ex", 4),
        ],
    );
    ovs.vsctl(&[
        "set",
        "interface",
        "tapfx000a1",
        "external_ids:iface-id=7d0b1c2e-port-a",
    ]);
    load_clean(&ovs);
    ovs
}

fn load_clean(ovs: &Ovs) {
    let flows = root().join("tests/fixtures/br-int-clean.flows");
    ovs.ofctl(&["replace-flows", "br-int", &flows.to_string_lossy()]);
}

/// pinflow on the captured host (so fx-nova owns tapfx000a1) and a short stale-cookie grace.
fn pinflow_on(ovs: &Ovs, host: &CapturedHost) -> Pinflow {
    let mut args = vec![
        "--ovs-run-dir".to_string(),
        ovs.run_dir().to_string_lossy().into_owned(),
    ];
    args.extend(host.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Pinflow::start(
        "[pinning]\nebpf = false\n[flows]\nstale_cookie_grace_secs = 1\n",
        &args,
    )
}

fn dirty(s: &[Sample], rule: &str) -> Option<f64> {
    select(
        s,
        "pinflow_ovs_dirty_flows",
        &[("bridge", "br-int"), ("rule", rule)],
    )
    .first()
    .map(|x| x.value)
}

fn flow_count(s: &[Sample]) -> f64 {
    select(s, "pinflow_ovs_flows", &[("bridge", "br-int")])
        .iter()
        .map(|x| x.value)
        .sum()
}

/// Waits until every rule has its expected count (others 0); returns the scrape and the time taken.
fn expect_dirty(pf: &Pinflow, want: &[(&str, f64)]) -> (Vec<Sample>, Duration) {
    let mut last = Vec::new();
    let r = wait_for(WAIT, || {
        let s = pf.scrape();
        last = RULES.iter().map(|r| (*r, dirty(&s, r))).collect::<Vec<_>>();
        let ok = RULES.iter().all(|r| {
            let n = want.iter().find(|(w, _)| w == r).map_or(0.0, |(_, n)| *n);
            dirty(&s, r) == Some(n)
        });
        ok.then_some(s)
    });
    r.unwrap_or_else(|| panic!("dirty counts {last:?}, want {want:?}\n{}", pf.log()))
}

/// Waits until the clean table (34 flows) is mirrored with every rule at 0.
fn expect_clean(pf: &Pinflow) -> (Vec<Sample>, Duration) {
    wait_for(WAIT, || {
        let s = pf.scrape();
        (flow_count(&s) == 34.0 && RULES.iter().all(|r| dirty(&s, r) == Some(0.0))).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "clean br-int not mirrored with zero dirty flows\n{}",
            pf.log()
        )
    })
}

#[test]
fn each_anomaly_rises_to_its_exact_count_and_falls_when_fixed() {
    if !privileged("each_anomaly_rises_to_its_exact_count_and_falls_when_fixed") {
        return;
    }
    let ovs = br_int();
    let host = CapturedHost::new();
    let pf = pinflow_on(&ovs, &host);
    let (s, took) = expect_clean(&pf);
    eprintln!("clean table mirrored {took:?} after start");
    assert_eq!(source_up(&s, "ovsdb"), Some(1.0));
    assert_eq!(source_up(&s, "openflow"), Some(1.0));
    let port = select(
        &s,
        "pinflow_ovs_port_info",
        &[("bridge", "br-int"), ("port", "tapfx000a1")],
    );
    assert_eq!(port.len(), 1);
    assert_eq!(port[0].labels["ofport"], "1");
    assert_eq!(port[0].labels["iface_id"], "7d0b1c2e-port-a");
    assert_eq!(port[0].labels["domain"], "fx-nova");

    let c = COOKIE;
    // (rule, expected count, flow to add, del-flows --strict spec that repairs it)
    let cases: Vec<(&str, f64, String, String)> = vec![
        (
            "output_to_missing_port",
            1.0,
            format!("cookie={c},table=60,priority=50,dl_dst=fa:16:3e:00:00:99,actions=output:77"),
            "table=60,priority=50,dl_dst=fa:16:3e:00:00:99".into(),
        ),
        (
            "in_port_missing",
            1.0,
            format!("cookie={c},table=0,priority=9,in_port=55,actions=drop"),
            "table=0,priority=9,in_port=55".into(),
        ),
        (
            "goto_empty_table",
            1.0,
            format!(
                "cookie={c},table=60,priority=40,dl_dst=fa:16:3e:00:00:98,actions=resubmit(,42)"
            ),
            "table=60,priority=40,dl_dst=fa:16:3e:00:00:98".into(),
        ),
        (
            "unreachable",
            1.0,
            format!(
                "cookie={c},table=94,priority=5,reg6=0x1,dl_dst=fa:16:3e:00:00:01,actions=drop"
            ),
            "table=94,priority=5,reg6=0x1,dl_dst=fa:16:3e:00:00:01".into(),
        ),
        (
            // Both flows of the same priority are ambiguous: the new one and the one it overlaps.
            "ambiguous_priority",
            2.0,
            format!("cookie={c},table=94,priority=12,reg6=0x1,actions=drop"),
            "table=94,priority=12,reg6=0x1".into(),
        ),
        (
            // A foreign cookie (a dead agent generation), older than the 1 s grace period.
            "stale_cookie",
            1.0,
            "cookie=0xdead,table=60,priority=30,dl_dst=fa:16:3e:00:00:97,actions=NORMAL".into(),
            "table=60,priority=30,dl_dst=fa:16:3e:00:00:97".into(),
        ),
    ];
    for (rule, n, flow, del) in &cases {
        let t0 = Instant::now();
        ovs.ofctl(&["add-flow", "br-int", flow]);
        let (s, took) = expect_dirty(&pf, &[(rule, *n)]);
        eprintln!(
            "{rule}: metric at {n} {took:?} after add-flow returned ({:?} incl. the command)",
            t0.elapsed()
        );
        let info = select(
            &s,
            "pinflow_ovs_dirty_flow_info",
            &[("bridge", "br-int"), ("rule", rule)],
        );
        assert_eq!(info.len() as f64, *n, "{rule}: dirty_flow_info series");
        ovs.ofctl(&["--strict", "del-flows", "br-int", del]);
        expect_dirty(&pf, &[]);
    }

    // A dirty flow on fx-nova's port names the instance in the API.
    ovs.ofctl(&[
        "add-flow",
        "br-int",
        &format!("cookie={c},table=0,priority=11,in_port=1,dl_vlan=7,actions=output:66"),
    ]);
    let (s, _) = expect_dirty(&pf, &[("output_to_missing_port", 1.0)]);
    let info = select(
        &s,
        "pinflow_ovs_dirty_flow_info",
        &[("rule", "output_to_missing_port")],
    );
    assert_eq!(
        info[0].labels["flow"],
        format!("cookie={c}, priority=11,in_port=1,dl_vlan=7 actions=output:66")
    );
    assert_eq!(info[0].labels["table"], "0");
    assert_eq!(info[0].labels["cookie"], c);
    assert_eq!(info[0].labels["severity"], "broken");
    assert_eq!(info[0].labels["port"], "tapfx000a1");
    assert_eq!(info[0].labels["domain"], "fx-nova");
    let api: serde_json::Value =
        serde_json::from_str(&pf.get("/api/v1/flows/dirty")).expect("json");
    let f = &api[0];
    assert_eq!(f["bridge"], "br-int");
    assert_eq!(f["rule"], "output_to_missing_port");
    assert_eq!(f["severity"], "broken");
    assert_eq!(f["table"], 0);
    // Cookies are hex strings: 0x6a1b2c3d4e5f6071 > 2^53 would not survive as a JSON number.
    assert_eq!(f["cookie"], c);
    assert_eq!(f["domain"], "fx-nova");
    assert_eq!(
        f["flow"],
        format!("cookie={c}, priority=11,in_port=1,dl_vlan=7 actions=output:66")
    );
    assert_eq!(
        f["ports"],
        serde_json::json!([
            {"ofport": 1, "via": "in_port", "port": "tapfx000a1", "iface_id": "7d0b1c2e-port-a",
             "domain": "fx-nova", "name": "fx display & name", "deleted": false},
            {"ofport": 66, "via": "output", "port": "", "iface_id": "", "domain": "", "name": "",
             "deleted": false},
        ])
    );

    // `pinflow flows --dirty` on the same switch and host: every rule's findings with the port
    // and instance, `stale_cookie` included (a one-shot run ages flows by their duration).
    ovs.ofctl(&[
        "add-flow",
        "br-int",
        "cookie=0xdead,table=60,priority=30,dl_dst=fa:16:3e:00:00:97,actions=NORMAL",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    let cfg = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(cfg.path(), "[flows]\nstale_cookie_grace_secs = 1\n").expect("config");
    let out = Command::new(bin())
        .args(["flows", "--dirty", "--bridge", "br-int", "--config"])
        .arg(cfg.path())
        .arg("--ovs-run-dir")
        .arg(ovs.run_dir())
        .args(host.args())
        .output()
        .expect("pinflow flows --dirty");
    let text = String::from_utf8_lossy(&out.stdout);
    // Exit status 1: dirty flows found (0 would be a clean switch, 2 an error).
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("pinflow flows --dirty:\n{text}");
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "BRIDGE", "RULE", "SEVERITY", "TABLE", "COOKIE", "PORT", "INSTANCE", "FLOW"
        ],
        "{text}"
    );
    let row = |rule: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(rule))
            .unwrap_or_else(|| panic!("no {rule} row in\n{text}"))
            .to_string()
    };
    let missing = row("output_to_missing_port");
    assert!(
        missing.contains("broken")
            && missing.contains(" tapfx000a1 ")
            && missing.contains(" fx-nova (fx display & name) ")
            && missing.ends_with("priority=11,in_port=1,dl_vlan=7 actions=output:66"),
        "{missing}"
    );
    let stale = row("stale_cookie");
    assert!(
        stale.contains("suspect")
            && stale.contains(" 0xdead ")
            && stale.ends_with("priority=30,dl_dst=fa:16:3e:00:00:97 actions=NORMAL"),
        "{stale}"
    );
    assert_eq!(text.lines().count(), 3, "{text}");
    ovs.ofctl(&[
        "--strict",
        "del-flows",
        "br-int",
        "table=60,priority=30,dl_dst=fa:16:3e:00:00:97",
    ]);
    ovs.ofctl(&[
        "--strict",
        "del-flows",
        "br-int",
        "table=0,priority=11,in_port=1,dl_vlan=7",
    ]);
    expect_dirty(&pf, &[]);

    // Neutron's quarantine VLAN on a port.
    ovs.vsctl(&["set", "port", "tapb", "tag=4095"]);
    let (s, _) = expect_dirty(&pf, &[("dead_vlan", 1.0)]);
    let info = select(&s, "pinflow_ovs_dirty_flow_info", &[("rule", "dead_vlan")]);
    assert_eq!(info[0].labels["port"], "tapb");
    assert_eq!(info[0].labels["severity"], "broken");
    let api: serde_json::Value =
        serde_json::from_str(&pf.get("/api/v1/flows/dirty")).expect("json");
    assert_eq!(api[0]["rule"], "dead_vlan");
    assert_eq!(api[0]["cookie"], serde_json::Value::Null);
    assert_eq!(api[0]["ports"][0]["port"], "tapb");
    assert_eq!(api[0]["ports"][0]["ofport"], 2);
    ovs.vsctl(&["remove", "port", "tapb", "tag", "4095"]);
    expect_dirty(&pf, &[]);

    // A port deleted under its flows: the flows that match on it and output to it become dirty.
    ovs.vsctl(&["del-port", "br-int", "tapb"]);
    let (s, _) = expect_dirty(
        &pf,
        &[("in_port_missing", 7.0), ("output_to_missing_port", 1.0)],
    );
    assert!(select(&s, "pinflow_ovs_port_info", &[("port", "tapb")]).is_empty());

    // The leaked-flow case: the instance's port is deleted under its flows. They still say whose
    // they were, from OVSDB's last known state.
    ovs.vsctl(&["del-port", "br-int", "tapfx000a1"]);
    let (s, _) = expect_dirty(
        &pf,
        &[("in_port_missing", 14.0), ("output_to_missing_port", 2.0)],
    );
    let info = select(&s, "pinflow_ovs_dirty_flow_info", &[("domain", "fx-nova")]);
    assert_eq!(info.len(), 8, "7 flows from and 1 to fx-nova's port");
    assert!(
        info.iter()
            .all(|x| x.labels["port"] == "tapfx000a1" && x.labels["severity"] == "broken")
    );
    assert_eq!(
        select(&s, "pinflow_ovs_dirty_flow_info", &[("port", "tapb")]).len(),
        8
    );
    let api: serde_json::Value =
        serde_json::from_str(&pf.get("/api/v1/flows/dirty")).expect("json");
    let leaked: Vec<&serde_json::Value> = api
        .as_array()
        .expect("array")
        .iter()
        .filter(|f| f["ports"][0]["ofport"] == 1)
        .collect();
    assert_eq!(leaked.len(), 8, "{api:#}");
    for f in leaked {
        assert_eq!(
            f["ports"][0],
            serde_json::json!({"ofport": 1, "via": f["ports"][0]["via"], "port": "tapfx000a1",
                "iface_id": "7d0b1c2e-port-a", "domain": "fx-nova", "name": "fx display & name",
                "deleted": true}),
            "{f:#}"
        );
        assert_eq!(f["domain"], "fx-nova");
    }
}

#[test]
fn ovs_vswitchd_restart_and_agent_resync_are_followed() {
    if !privileged("ovs_vswitchd_restart_and_agent_resync_are_followed") {
        return;
    }
    let ovs = br_int();
    let host = CapturedHost::new();
    let pf = pinflow_on(&ovs, &host);
    let (s, _) = expect_clean(&pf);
    let errors_before =
        select(&s, "pinflow_source_errors_total", &[("source", "openflow")])[0].value;
    // A dirty flow before the switch goes away.
    ovs.ofctl(&[
        "add-flow",
        "br-int",
        "table=0,priority=5,in_port=99,actions=drop",
    ]);
    expect_dirty(&pf, &[("in_port_missing", 1.0)]);

    ovs.stop("ovs-vswitchd");
    let down = wait_for(WAIT, || {
        let s = pf.scrape();
        (source_up(&s, "openflow") == Some(0.0)).then_some(s)
    });
    let (s, _) = down.unwrap_or_else(|| {
        panic!(
            "openflow source still up with ovs-vswitchd stopped\n{}",
            pf.log()
        )
    });
    // The last table seen is not served as current: no counts or findings of br-int in
    // /metrics, the API keeps the finding marked stale.
    for family in [
        "pinflow_ovs_flows",
        "pinflow_ovs_dirty_flows",
        "pinflow_ovs_dirty_flow_info",
    ] {
        assert!(
            select(&s, family, &[("bridge", "br-int")]).is_empty(),
            "{family} of a disconnected bridge served"
        );
    }
    let api: serde_json::Value =
        serde_json::from_str(&pf.get("/api/v1/flows/dirty")).expect("json");
    let stale: Vec<bool> = api
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["rule"] == "in_port_missing")
        .map(|d| d["stale"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(stale, vec![true], "{api}");
    // pinflow keeps serving everything else meanwhile.
    assert_eq!(
        select(
            &pf.scrape(),
            "pinflow_instance_info",
            &[("domain", "fx-nova")]
        )
        .len(),
        1
    );

    ovs.start_vswitchd();
    // A restarted ovs-vswitchd has empty tables until the agent re-installs them.
    let empty = wait_for(WAIT, || {
        let s = pf.scrape();
        (source_up(&s, "openflow") == Some(1.0) && flow_count(&s) == 0.0).then_some(())
    });
    assert!(
        empty.is_some(),
        "mirror not rebuilt after restart\n{}",
        pf.log()
    );
    load_clean(&ovs);
    let (s, took) = expect_clean(&pf);
    eprintln!("resynced {took:?} after replace-flows");
    assert!(
        select(&s, "pinflow_source_errors_total", &[("source", "openflow")])[0].value
            > errors_before
    );
}

#[test]
fn flows_command_prints_what_ovs_ofctl_prints() {
    if !privileged("flows_command_prints_what_ovs_ofctl_prints") {
        return;
    }
    let ovs = Ovs::start();
    ovs.add_bridge("br-nt", &[("pfofp1", 1), ("pfofp2", 2), ("pfofp3", 3)]);
    let flows = root().join("collector/tests/fixtures/openflow/neutron-flows.txt");
    ovs.ofctl(&["add-flows", "br-nt", &flows.to_string_lossy()]);
    let want = ovs.ofctl(&["--no-stats", "--no-names", "dump-flows", "br-nt"]);
    let out = Command::new(bin())
        .args(["flows", "--bridge", "br-nt", "--no-stats", "--ovs-run-dir"])
        .arg(ovs.run_dir())
        .output()
        .expect("pinflow flows");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8_lossy(&out.stdout);
    let sorted = |t: &str| {
        let mut v: Vec<String> = t
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect();
        v.sort();
        v
    };
    let (got, want) = (sorted(&got), sorted(&want));
    assert!(
        want.len() >= 500,
        "a table of several hundred flows: {}",
        want.len()
    );
    assert_same_lines("without statistics", &got, &want);
    eprintln!(
        "pinflow flows = ovs-ofctl dump-flows on {} lines",
        want.len()
    );

    // With statistics (the default of both): equal once the flows' ages, which move between the
    // two dumps, are masked; each age must have ovs-ofctl's shape (`401.490s`, never `401.49s`).
    let want = sorted(&mask_durations(&ovs.ofctl(&[
        "--no-names",
        "dump-flows",
        "br-nt",
    ])));
    let out = Command::new(bin())
        .args(["flows", "--bridge", "br-nt", "--ovs-run-dir"])
        .arg(ovs.run_dir())
        .output()
        .expect("pinflow flows");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = sorted(&mask_durations(&String::from_utf8_lossy(&out.stdout)));
    assert_same_lines("with statistics", &got, &want);

    // --dirty on the same switch: a table with one real anomaly added.
    ovs.ofctl(&[
        "add-flow",
        "br-nt",
        "table=0,priority=1,in_port=9,actions=drop",
    ]);
    let out = Command::new(bin())
        .args(["flows", "--dirty", "--bridge", "br-nt", "--ovs-run-dir"])
        .arg(ovs.run_dir())
        .output()
        .expect("pinflow flows --dirty");
    let text = String::from_utf8_lossy(&out.stdout);
    // Exit status 1: dirty flows found (0 would be a clean switch, 2 an error).
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines()
            .any(|l| l.contains("in_port_missing")
                && l.contains("priority=1,in_port=9 actions=drop")),
        "{text}"
    );
}

/// Asserts that two sorted dumps have the same lines, showing the first differences.
fn assert_same_lines(what: &str, got: &[String], want: &[String]) {
    let diff: Vec<_> = got
        .iter()
        .zip(want)
        .filter(|(a, b)| a != b)
        .take(5)
        .collect();
    assert!(
        diff.is_empty() && got.len() == want.len(),
        "{what}: {} vs {} lines; first differences: {diff:#?}",
        got.len(),
        want.len()
    );
}
