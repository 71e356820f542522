//! The Grafana dashboard (`deploy/grafana/pinflow.json`) and the metric-family table
//! (`docs/metrics.md`) against a real Prometheus scraping a real pinflow on the testbed: a pinned
//! KVM domain with Nova metadata whose tap is a port of a private OVS br-int.
//!
//! Every query of the dashboard (template variables substituted with the testbed's zone, rack and
//! node name) runs through Prometheus's HTTP API and must return data, or be listed in
//! [`EXPECTED_EMPTY`] with the reason. Those empty only because the testbed is healthy are run again
//! after the test makes a cpuset drift, an overlap of two instances and a dirty flow (and, last, a
//! scrape failure), and must return data then. A query that names a metric outside the family
//! table fails; so does a family of a real scrape that is not in the table, a table family that
//! the testbed should have but Prometheus never stored, and a per-instance series count above
//! the budget.

use pinflow::export::families::{self, Family, Presence};
use pinflow_tests::libvirt::{self, DomainSpec};
use pinflow_tests::ovs::{self, Ovs};
use pinflow_tests::pinflow::Pinflow;
use pinflow_tests::scrape::{Sample, http_get, parse, select, source_up};
use pinflow_tests::wait_for;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The testbed's scrape-time labels (set by the Prometheus config below, as deploy/ does).
const NODE: &str = "hv-dash-1";
const RACK: &str = "r07";
const ZONE: &str = "zone-b";
const JOB: &str = "pinflow";
const DOMAIN_A: &str = "pfdash-a";
const DOMAIN_B: &str = "pfdash-b";
const TAP_A: &str = "tap-pfdash-a";
const TAP_B: &str = "tap-pfdash-b";
/// An OVS port without a device (OVS's interface error), added in the findings phase.
const BROKEN_PORT: &str = "tap-pfdash-x";
const COOKIE: &str = "0x6a1b2c3d4e5f6071";
/// What Grafana would put for `$__rate_interval` with a 1 s scrape interval (4 × scrape, rounded up).
const RATE_INTERVAL: &str = "10s";
/// Metrics Prometheus itself makes for every target.
const PROMETHEUS_METRICS: [&str; 3] = ["up", "scrape_samples_scraped", "scrape_duration_seconds"];

/// Why a dashboard query may return no data on this testbed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Empty {
    /// Empty while nothing is wrong: must return data once the test made drift, an overlap and a dirty flow.
    Finding,
    /// Empty while every target is scraped: must return data once pinflow is stopped.
    TargetDown,
    /// Empty while every source is up: must return data when pinflow reports a source down.
    AllSourcesUp,
    /// Needs the eBPF `sched_switch` probe: must return data when `sched_bpf` is up.
    NoSchedBpf,
    /// Needs the OVS kernel datapath: must return data when `ovs_datapath` is up.
    NoKernelDatapath,
    /// Needs eBPF on the `openvswitch` tracepoints: must return data when `ovs_datapath_bpf` is up.
    NoDatapathBpf,
    /// Cannot return data on this testbed at all (the reason says why).
    NotHere,
}

/// Dashboard panels whose queries may return no data here, and why.
const EXPECTED_EMPTY: &[(&str, Empty, &str)] = &[
    ("Hosts not scraped", Empty::TargetDown, "every target is up"),
    (
        "Drifting hosts",
        Empty::Finding,
        "no drift on a healthy testbed",
    ),
    (
        "Drifting instances",
        Empty::Finding,
        "no drift on a healthy testbed",
    ),
    (
        "Instances on foreign dedicated pCPUs",
        Empty::Finding,
        "no overlap on a healthy testbed",
    ),
    (
        "Broken dirty flows",
        Empty::Finding,
        "no broken dirty flow on a healthy testbed",
    ),
    (
        "Sources down",
        Empty::AllSourcesUp,
        "a healthy host has every source up (this testbed has no openvswitch.ko, so the kernel-datapath sources are down)",
    ),
    (
        "Drifting hosts by check",
        Empty::Finding,
        "no drift on a healthy testbed",
    ),
    (
        "Drifting instances by check",
        Empty::Finding,
        "no drift on a healthy testbed",
    ),
    (
        "Instances with drift",
        Empty::Finding,
        "no drift on a healthy testbed",
    ),
    (
        "Bridges with dirty flows",
        Empty::Finding,
        "no dirty flow on a healthy testbed",
    ),
    (
        "Datapath health checks failing",
        Empty::NoKernelDatapath,
        "OVS kernel datapath",
    ),
    (
        "Upcalls and lost upcalls /s",
        Empty::NoKernelDatapath,
        "OVS kernel datapath",
    ),
    (
        "Megaflows / flow limit",
        Empty::NoKernelDatapath,
        "OVS kernel datapath",
    ),
    (
        "Masks probed per packet",
        Empty::NoKernelDatapath,
        "OVS kernel datapath",
    ),
    (
        "Drop megaflows that carried packets",
        Empty::NoKernelDatapath,
        "OVS kernel datapath",
    ),
    (
        "Datapath drops by reason /s",
        Empty::NotHere,
        "needs the kernel datapath with eBPF on Linux ≥ 6.6 (OVS drop reasons) and dropped packets",
    ),
    (
        "Datapath actions /s",
        Empty::NoDatapathBpf,
        "eBPF on the openvswitch tracepoints",
    ),
    (
        "Port drops and errors /s",
        Empty::NotHere,
        "only datapath ports with drops or errors: needs the kernel datapath and a faulty port",
    ),
    (
        "Down sources",
        Empty::AllSourcesUp,
        "a healthy host has every source up (this testbed: the kernel-datapath sources are down)",
    ),
    (
        "eBPF CPU per host",
        Empty::NoSchedBpf,
        "kernel BPF stats of the sched_switch probe",
    ),
    (
        "eBPF time per run",
        Empty::NoSchedBpf,
        "kernel BPF stats of the sched_switch probe",
    ),
    (
        "vCPU → pCPU: expected vs actual (drifting vCPUs)",
        Empty::Finding,
        "no drift on a healthy testbed",
    ),
    (
        "Off-pin CPU time per instance",
        Empty::NoSchedBpf,
        "eBPF sched_switch counters",
    ),
    (
        "vCPU migrations /s per instance",
        Empty::NoSchedBpf,
        "eBPF sched_switch counters",
    ),
    (
        "Dirty flows (flow text)",
        Empty::Finding,
        "no dirty flow on a healthy testbed",
    ),
    (
        "Instance ports on the kernel datapath",
        Empty::NoKernelDatapath,
        "OVS kernel datapath",
    ),
    (
        "Upcalls per port /s (top 10)",
        Empty::NoKernelDatapath,
        "OVS kernel datapath",
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Kills the child on drop.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Percent-encodes a query parameter.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// A real Prometheus (Debian's 2.42) on a free port with a temp TSDB, scraping pinflow every
/// second and labelling it like deploy/ does: `instance` = the node name, plus `rack` and `zone`.
struct Prometheus {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    _child: Kill,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n\
                 \x20 - job_name: {JOB}\n\
                 \x20   static_configs:\n\
                 \x20     - targets: ['{target}']\n\
                 \x20       labels: {{__node: {NODE}, rack: {RACK}, zone: {ZONE}}}\n\
                 \x20   relabel_configs:\n\
                 \x20     - source_labels: [__node]\n\
                 \x20       target_label: instance\n"
            ),
        )
        .expect("prometheus.yml");
        let (child, addr) = pinflow_tests::prometheus::spawn(&cfg, dir.path());
        Prometheus {
            addr,
            dir,
            _child: Kill(child),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path; the JSON's `data`, or Prometheus's error text.
    fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = http_get(self.addr, path, Duration::from_secs(10))
            .map_err(|e| format!("GET {path}: {e}"))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("GET {path}: HTTP {status}, not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            return Err(format!(
                "{}: {}",
                v["errorType"].as_str().unwrap_or("error"),
                v["error"].as_str().unwrap_or(&body)
            ));
        }
        Ok(v["data"].clone())
    }

    /// Series an instant query (or a range query over the last 3 minutes) returns.
    fn query(&self, expr: &str, instant: bool) -> Result<usize, String> {
        let t = now();
        let path = if instant {
            format!("/api/v1/query?query={}&time={t:.3}", enc(expr))
        } else {
            format!(
                "/api/v1/query_range?query={}&start={:.3}&end={t:.3}&step=1",
                enc(expr),
                t - 180.0
            )
        };
        let data = self.api(&path)?;
        Ok(data["result"].as_array().map_or(0, Vec::len))
    }

    /// Metric names Prometheus has stored.
    fn names(&self) -> BTreeSet<String> {
        self.api("/api/v1/label/__name__/values")
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    }

    /// Values of `label` over the series matching `selector` in the last 3 minutes (what
    /// Grafana's `label_values(selector, label)` asks).
    fn label_values(&self, selector: &str, label: &str) -> Result<BTreeSet<String>, String> {
        let t = now();
        let data = self.api(&format!(
            "/api/v1/series?match[]={}&start={:.3}&end={t:.3}",
            enc(selector),
            t - 180.0
        ))?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s[label].as_str().map(String::from))
            .collect())
    }

    /// Waits until an instant query returns at least one series.
    fn wait_for_data(&self, expr: &str, what: &str) {
        let ok = wait_for(Duration::from_secs(30), || {
            (self.query(expr, true).ok()? > 0).then_some(())
        });
        assert!(ok.is_some(), "{what}: `{expr}` has no data\n{}", self.log());
    }
}

/// One query of the dashboard.
#[derive(Clone, Debug)]
struct Query {
    panel: String,
    expr: String,
    instant: bool,
}

/// Every panel query, rows' nested panels included.
fn panel_queries(panels: &[Value], out: &mut Vec<Query>) {
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default().to_string();
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.is_empty(), "panel {title:?}: a target without expr");
            out.push(Query {
                panel: title.clone(),
                expr: expr.to_string(),
                instant: t["instant"].as_bool().unwrap_or(false),
            });
        }
        if let Some(nested) = p["panels"].as_array() {
            panel_queries(nested, out);
        }
    }
}

/// The dashboard's template variables substituted with the testbed's values.
fn substitute(expr: &str) -> String {
    let mut s = expr.to_string();
    for (var, value) in [
        ("__rate_interval", RATE_INTERVAL),
        ("instance", NODE),
        ("rack", RACK),
        ("zone", ZONE),
        ("job", JOB),
    ] {
        s = s
            .replace(&format!("${{{var}}}"), value)
            .replace(&format!("${var}"), value);
    }
    assert!(!s.contains('$'), "unknown template variable in {expr}");
    s
}

/// The metric names a PromQL expression selects (not functions, aggregations, keywords, labels).
fn metric_names(expr: &str) -> Vec<String> {
    const KEYWORDS: [&str; 11] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
    ];
    const AGGREGATIONS: [&str; 12] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    // Skips a bracketed block (label matchers, label lists, ranges), strings inside included.
    let skip_block = |i: &mut usize, open: char, close: char| {
        let mut depth = 0;
        while *i < chars.len() {
            match chars[*i] {
                '"' => {
                    *i += 1;
                    while *i < chars.len() && chars[*i] != '"' {
                        if chars[*i] == '\\' {
                            *i += 1;
                        }
                        *i += 1;
                    }
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        *i += 1;
                        return;
                    }
                }
                _ => {}
            }
            *i += 1;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            skip_block(&mut i, '{', '}');
        } else if c == '[' {
            skip_block(&mut i, '[', ']');
        } else if c == '"' {
            skip_block(&mut i, '"', '"');
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            let next = chars.get(j).copied();
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&word.as_str())
            {
                if next == Some('(') {
                    i = j;
                    skip_block(&mut i, '(', ')');
                }
            } else if KEYWORDS.contains(&word.as_str())
                || AGGREGATIONS.contains(&word.as_str())
                || next == Some('(')
            {
                // A keyword, an aggregation or a function call.
            } else {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// A problem with a query's metric names, if any.
fn unknown_metrics(expr: &str) -> Option<String> {
    let bad: Vec<String> = metric_names(expr)
        .into_iter()
        .filter(|n| families::by_name(n).is_none() && !PROMETHEUS_METRICS.contains(&n.as_str()))
        .collect();
    (!bad.is_empty()).then(|| format!("names metrics that do not exist: {bad:?}"))
}

/// What the testbed offers, from pinflow's own scrape.
struct Testbed {
    sched_bpf: bool,
    kernel_datapath: bool,
    datapath_bpf: bool,
    ovs_unixctl: bool,
    ovsdb_server_unixctl: bool,
    ovsdb: bool,
    source_down: bool,
}

impl Testbed {
    fn from_scrape(s: &[Sample]) -> Testbed {
        Testbed {
            sched_bpf: source_up(s, "sched_bpf") == Some(1.0),
            kernel_datapath: source_up(s, "ovs_datapath") == Some(1.0),
            datapath_bpf: source_up(s, "ovs_datapath_bpf") == Some(1.0),
            ovs_unixctl: source_up(s, "ovs_unixctl") == Some(1.0),
            ovsdb_server_unixctl: source_up(s, "ovsdb_server_unixctl") == Some(1.0),
            ovsdb: source_up(s, "ovsdb") == Some(1.0),
            source_down: select(s, "pinflow_source_up", &[])
                .iter()
                .any(|x| x.value == 0.0),
        }
    }

    /// Whether a query marked `why` must return data now (findings made: `findings`).
    fn must_have_data(&self, why: Empty, findings: bool, target_down: bool) -> bool {
        match why {
            Empty::Finding => findings,
            Empty::TargetDown => target_down,
            Empty::AllSourcesUp => self.source_down,
            Empty::NoSchedBpf => self.sched_bpf,
            Empty::NoKernelDatapath => self.kernel_datapath,
            Empty::NoDatapathBpf => self.datapath_bpf,
            Empty::NotHere => false,
        }
    }

    /// Whether the family must have series on this testbed (with findings made).
    fn has_family(&self, f: &Family) -> bool {
        match f.presence {
            Presence::Always
            | Presence::Domain
            | Presence::PinnedCpu
            | Presence::OvsBridge
            | Presence::NumaNode
            | Presence::Finding => true,
            Presence::SchedBpf | Presence::BpfStats => self.sched_bpf,
            Presence::DedicatedCpu => false,
            Presence::KernelDatapath => self.kernel_datapath,
            Presence::DatapathBpf => self.datapath_bpf,
            Presence::OvsVswitchd => self.ovs_unixctl,
            Presence::OvsdbServer => self.ovsdb_server_unixctl,
            Presence::Ovsdb => self.ovsdb,
            // Opt-in or not made here (conntrack: tests/tests/conntrack.rs).
            Presence::DropReasons
            | Presence::HostCpuChecks
            | Presence::InterfaceMetrics
            | Presence::OvsLinkFeature
            | Presence::Conntrack => false,
        }
    }
}

fn expected_empty(panel: &str) -> Option<(Empty, &'static str)> {
    EXPECTED_EMPTY
        .iter()
        .find(|(p, _, _)| *p == panel)
        .map(|(_, w, r)| (*w, *r))
}

/// Runs every query; returns the failures. `findings`: the test has made drift, overlap and a
/// dirty flow; `target_down`: pinflow is stopped.
fn run_queries(
    prom: &Prometheus,
    queries: &[Query],
    tb: &Testbed,
    findings: bool,
    target_down: bool,
) -> Vec<String> {
    let mut failures = Vec::new();
    for q in queries {
        let expr = substitute(&q.expr);
        if let Some(e) = unknown_metrics(&expr) {
            failures.push(format!("{:?}: {e}\n    {expr}", q.panel));
            continue;
        }
        let n = match prom.query(&expr, q.instant) {
            Ok(n) => n,
            Err(e) => {
                failures.push(format!(
                    "{:?}: Prometheus refuses it: {e}\n    {expr}",
                    q.panel
                ));
                continue;
            }
        };
        match expected_empty(&q.panel) {
            None if n == 0 && !target_down => {
                failures.push(format!("{:?}: no data\n    {expr}", q.panel));
            }
            Some((why, reason)) if n == 0 && tb.must_have_data(why, findings, target_down) => {
                failures.push(format!(
                    "{:?}: expected empty only while {reason} ({why:?}), but has no data now\n    {expr}",
                    q.panel
                ));
            }
            _ => {}
        }
        eprintln!(
            "{:>4} series  {}{}",
            n,
            q.panel,
            expected_empty(&q.panel).map_or(String::new(), |(w, _)| format!("  [{w:?}]"))
        );
    }
    failures
}

fn assert_no_failures(phase: &str, failures: &[String], prom: &Prometheus) {
    assert!(
        failures.is_empty(),
        "{phase}: {} dashboard queries failed:\n{}\n--- prometheus log (tail):\n{}",
        failures.len(),
        failures.join("\n"),
        prom.log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The families of pinflow's own scrape (Prometheus text) against the table: every described family
/// is an exported table family and vice versa, every sample has exactly the table's label names.
fn check_scrape_against_table(text: &str) {
    let described: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let table: BTreeSet<&str> = families::ALL
        .iter()
        .filter(|f| families::exported(f))
        .map(|f| f.name)
        .collect();
    assert_eq!(
        described, table,
        "families on /metrics differ from the family table"
    );
    for s in parse(text) {
        let f = families::by_name(&s.name)
            .unwrap_or_else(|| panic!("{} is not in the family table", s.name));
        let mut want = families::exported_labels(f);
        want.sort_unstable();
        let have: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        assert_eq!(have, want, "{}: label names differ from the table", s.name);
    }
}

/// Series of `domain` in the per-instance families (and per-instance-port families), against the
/// table's budget; returns (per instance, per instance port).
fn instance_series(s: &[Sample], domain: &str, tb: &Testbed) -> (u32, u32) {
    let count = |per: fn(&Family) -> u32| -> (u32, u32) {
        let fams: Vec<&Family> = families::ALL
            .iter()
            .copied()
            .filter(|f| per(f) > 0)
            .collect();
        let have = s
            .iter()
            .filter(|x| x.labels.get("domain").map(String::as_str) == Some(domain))
            .filter(|x| fams.iter().any(|f| f.name == x.name))
            .count();
        let want = fams
            .iter()
            .filter(|f| tb.has_family(f))
            .map(|f| per(f))
            .sum();
        (u32::try_from(have).expect("small"), want)
    };
    let (inst, inst_want) = count(|f| f.series.per_instance);
    let (port, port_want) = count(|f| f.series.per_instance_port);
    assert_eq!(
        inst, inst_want,
        "{domain}: series per instance vs the family table"
    );
    assert_eq!(
        port, port_want,
        "{domain}: series per instance port vs the family table"
    );
    assert!(inst <= families::BUDGET_PER_INSTANCE);
    assert!(port <= families::BUDGET_PER_INSTANCE_PORT);
    (inst, port)
}

/// br-int as Neutron's OVS agent builds it, the two test domains' taps on ofports 1 and 2.
fn br_int() -> Ovs {
    let ovs = Ovs::start();
    ovs.add_bridge(
        "br-int",
        &[(TAP_A, 1), (TAP_B, 2), ("patch-tun", 3), ("int-br-ex", 4)],
    );
    for (tap, id) in [(TAP_A, "5d1a0c2e-dash-a"), (TAP_B, "5d1a0c2e-dash-b")] {
        ovs.vsctl(&[
            "set",
            "interface",
            tap,
            &format!("external_ids:iface-id={id}"),
        ]);
    }
    let flows = root().join("tests/fixtures/br-int-clean.flows");
    ovs.ofctl(&["replace-flows", "br-int", &flows.to_string_lossy()]);
    ovs
}

fn domain(name: &str, display: &str, tap: &str) -> DomainSpec {
    let mut d = DomainSpec::pinned(name, &["1"]).with_nova(display, "dash", "m1.dedicated");
    d.taps = vec![tap.to_string()];
    d
}

fn load_dashboard() -> Value {
    let path = root().join("deploy/grafana/pinflow.json");
    let text = std::fs::read_to_string(&path).expect("deploy/grafana/pinflow.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// The dashboard's static shape: Grafana 10/11 schema, the variables, unique panel titles, an
/// EXPECTED_EMPTY that names only existing panels.
fn check_dashboard_shape(d: &Value, queries: &[Query]) {
    let schema = d["schemaVersion"].as_u64().unwrap_or(0);
    assert!(
        (36..=41).contains(&schema),
        "schemaVersion {schema} is not Grafana 10/11's"
    );
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in ["datasource", "job", "zone", "rack", "instance"] {
        assert!(vars.contains(&v), "variable {v} missing: {vars:?}");
    }
    let ds = &d["templating"]["list"][0];
    assert_eq!(
        (ds["type"].as_str(), ds["query"].as_str()),
        (Some("datasource"), Some("prometheus"))
    );
    let mut titles = BTreeSet::new();
    // Panels must not overlap on Grafana's 24-column grid.
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for p in d["panels"].as_array().expect("panels") {
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap_or(0),
            g["y"].as_u64().unwrap_or(0),
            g["w"].as_u64().unwrap_or(0),
            g["h"].as_u64().unwrap_or(0),
        );
        let t = p["title"].as_str().unwrap_or_default();
        assert!(w > 0 && h > 0 && x + w <= 24, "{t:?}: gridPos {g}");
        for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
            if let Some(other) = cells.insert(cell, t.to_string()) {
                panic!("panels {t:?} and {other:?} overlap");
            }
        }
    }
    fn walk<'a>(panels: &'a [Value], titles: &mut BTreeSet<&'a str>) {
        for p in panels {
            let t = p["title"].as_str().unwrap_or_default();
            if p["type"] != "row" {
                assert!(titles.insert(t), "two panels titled {t:?}");
                assert_eq!(
                    p["datasource"]["uid"], "${datasource}",
                    "{t:?}: use the datasource variable"
                );
            }
            if let Some(n) = p["panels"].as_array() {
                walk(n, titles);
            }
        }
    }
    walk(d["panels"].as_array().expect("panels"), &mut titles);
    for (p, _, _) in EXPECTED_EMPTY {
        assert!(
            queries.iter().any(|q| q.panel == *p),
            "EXPECTED_EMPTY names {p:?}, which is no panel"
        );
    }
}

/// The template variables' `label_values(selector, label)` queries, run as Grafana runs them;
/// each must list exactly the testbed's value.
fn check_variables(prom: &Prometheus, d: &Value) -> Vec<String> {
    let mut failures = Vec::new();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap_or_default();
        let q = v["definition"].as_str().unwrap_or_default();
        assert_eq!(
            v["query"]["query"].as_str(),
            Some(q),
            "{name}: query and definition differ"
        );
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{name}: not a label_values() query: {q}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let selector = substitute(selector.trim());
        if let Some(e) = unknown_metrics(&selector) {
            failures.push(format!("variable {name}: {e}"));
            continue;
        }
        let want = match name {
            "job" => JOB,
            "zone" => ZONE,
            "rack" => RACK,
            "instance" => NODE,
            other => panic!("unexpected variable {other}"),
        };
        match prom.label_values(&selector, label.trim()) {
            Ok(values) if values == BTreeSet::from([want.to_string()]) => {}
            Ok(values) => failures.push(format!(
                "variable {name}: {q} lists {values:?}, want [{want}]"
            )),
            Err(e) => failures.push(format!("variable {name}: {q}: {e}")),
        }
    }
    failures
}

/// Every family's example PromQL from docs/metrics.md is accepted by Prometheus.
fn check_examples(prom: &Prometheus) -> Vec<String> {
    families::ALL
        .iter()
        .filter_map(|f| match prom.query(f.example, true) {
            Ok(_) => None,
            Err(e) => Some(format!("example of {}: {e}\n    {}", f.name, f.example)),
        })
        .collect()
}

fn wait_scrape(pf: &Pinflow, what: &str, ok: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    wait_for(Duration::from_secs(20), || {
        let s = pf.scrape();
        ok(&s).then_some(s)
    })
    .unwrap_or_else(|| panic!("pinflow never showed {what}\n{}", pf.log()))
    .0
}

fn write(path: &Path, v: &str) {
    std::fs::write(path, v).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    if !pinflow_tests::require_privileged(
        "every_dashboard_query_returns_data_from_a_real_prometheus",
        &["prometheus", "virsh"],
    ) || !ovs::available("every_dashboard_query_returns_data_from_a_real_prometheus")
    {
        return;
    }
    let dash = load_dashboard();
    let mut queries = Vec::new();
    panel_queries(dash["panels"].as_array().expect("panels"), &mut queries);

    libvirt::ensure_daemons().expect("libvirt testbed");
    let ovs = br_int();
    let dom_a = libvirt::start(&domain(DOMAIN_A, "dash web 1", TAP_A)).expect("domain a");
    let run_dir = ovs.run_dir().to_string_lossy().into_owned();
    let pf = Pinflow::start(
        "[pinning]\nbpf_stats = true\n",
        &["--ovs-run-dir", &run_dir],
    );
    // pinflow sees the domain, its OVS port and the clean br-int before Prometheus starts.
    let scrape = wait_scrape(&pf, "the domain, its port and a clean br-int", |s| {
        !select(s, "pinflow_ovs_port_info", &[("domain", DOMAIN_A)]).is_empty()
            && !select(s, "pinflow_instance_info", &[("domain", DOMAIN_A)]).is_empty()
            && select(s, "pinflow_ovs_dirty_flows", &[("bridge", "br-int")])
                .iter()
                .all(|x| x.value == 0.0)
            && !select(s, "pinflow_ovs_dirty_flows", &[("bridge", "br-int")]).is_empty()
            && (source_up(s, "sched_bpf") != Some(1.0)
                || !select(s, "pinflow_bpf_runs_total", &[]).is_empty())
    });
    let tb = Testbed::from_scrape(&scrape);
    eprintln!(
        "testbed: sched_bpf {}, kernel datapath {}, datapath eBPF {}, a source down {}",
        tb.sched_bpf, tb.kernel_datapath, tb.datapath_bpf, tb.source_down
    );
    check_scrape_against_table(&pf.get("/metrics"));
    let (per_instance, per_port) = instance_series(&scrape, DOMAIN_A, &tb);
    eprintln!("series of {DOMAIN_A}: {per_instance} per instance, {per_port} per instance port");

    let prom = Prometheus::start(pf.addr);
    prom.wait_for_data(
        &format!("up{{job=\"{JOB}\", instance=\"{NODE}\", rack=\"{RACK}\", zone=\"{ZONE}\"}} == 1"),
        "pinflow scraped with the testbed's labels",
    );
    prom.wait_for_data(
        &format!("pinflow_ovs_port_info{{domain=\"{DOMAIN_A}\"}}"),
        "the domain's OVS port in Prometheus",
    );
    // Enough samples for rate() over $__rate_interval.
    std::thread::sleep(Duration::from_secs(4));
    let total = prom
        .api(&format!(
            "/api/v1/query?query={}",
            enc(&format!("scrape_samples_scraped{{instance=\"{NODE}\"}}"))
        ))
        .ok()
        .and_then(|d| d["result"][0]["value"][1].as_str().map(String::from))
        .unwrap_or_default();
    eprintln!("series of the testbed host (scrape_samples_scraped): {total}");

    // Phase 1: the healthy testbed.
    let mut failures = check_variables(&prom, &dash);
    failures.extend(check_examples(&prom));
    failures.extend(run_queries(&prom, &queries, &tb, false, false));
    assert_no_failures("healthy testbed", &failures, &prom);

    // Phase 2: drift as a bug behind libvirt's back makes it (vCPU 0's cgroup cpuset moved off
    // its pin), a second instance pinned onto the same dedicated pCPU (overlap), a flow that
    // outputs to an ofport br-int does not have, and a port whose device does not exist (OVS's
    // interface error).
    let dom_b = libvirt::start(&domain(DOMAIN_B, "dash web 2", TAP_B)).expect("domain b");
    write(&dom_a.cpuset_cgroup_dir().join("vcpu0/cpuset.cpus"), "0");
    ovs.ofctl(&[
        "add-flow",
        "br-int",
        &format!("cookie={COOKIE},table=60,priority=50,dl_dst=fa:16:3e:00:00:99,actions=output:77"),
    ]);
    ovs.vsctl(&["add-port", "br-int", BROKEN_PORT]);
    wait_scrape(
        &pf,
        "cpuset drift, overlap, the dirty flow and the port error",
        |s| {
            !select(
                s,
                "pinflow_ovs_interface_error_info",
                &[("port", BROKEN_PORT)],
            )
            .is_empty()
                && !select(
                    s,
                    "pinflow_vcpu_pinning_drift",
                    &[("domain", DOMAIN_A), ("check", "cpuset")],
                )
                .is_empty()
                && select(
                    s,
                    "pinflow_domain_drifted_vcpus",
                    &[("domain", DOMAIN_B), ("check", "overlap")],
                )
                .first()
                .is_some_and(|x| x.value > 0.0)
                && select(
                    s,
                    "pinflow_ovs_dirty_flows",
                    &[("bridge", "br-int"), ("rule", "output_to_missing_port")],
                )
                .first()
                .is_some_and(|x| x.value == 1.0)
        },
    );
    for (expr, what) in [
        (
            format!("pinflow_vcpu_pinning_drift{{domain=\"{DOMAIN_A}\", check=\"cpuset\"}}"),
            "the cpuset drift",
        ),
        (
            format!("pinflow_domain_drifted_vcpus{{domain=\"{DOMAIN_B}\", check=\"overlap\"}} > 0"),
            "the overlap",
        ),
        (
            "pinflow_ovs_dirty_flow_info{rule=\"output_to_missing_port\"}".to_string(),
            "the dirty flow",
        ),
        (
            format!("pinflow_ovs_interface_error_info{{port=\"{BROKEN_PORT}\"}}"),
            "the port error",
        ),
    ] {
        prom.wait_for_data(&expr, what);
    }
    std::thread::sleep(Duration::from_secs(2));
    let s = pf.scrape();
    check_scrape_against_table(&pf.get("/metrics"));
    let tb = Testbed::from_scrape(&s);
    let mut failures = run_queries(&prom, &queries, &tb, true, false);
    // Every table family the testbed has is stored by Prometheus.
    let stored = prom.names();
    for f in families::ALL.iter().filter(|f| families::exported(f)) {
        if tb.has_family(f) && !stored.contains(f.name) {
            failures.push(format!(
                "{} ({}) never reached Prometheus",
                f.name,
                f.presence.describe()
            ));
        }
    }
    let stored_pinflow: Vec<&String> = stored
        .iter()
        .filter(|n| n.starts_with("pinflow_"))
        .collect();
    for n in &stored_pinflow {
        if families::by_name(n).is_none() {
            failures.push(format!(
                "{n} is stored by Prometheus but not in the family table"
            ));
        }
    }
    assert_no_failures("with drift, overlap and a dirty flow", &failures, &prom);

    // Phase 3: pinflow stops; the target is down.
    drop(pf);
    prom.wait_for_data(
        &format!("up{{job=\"{JOB}\", instance=\"{NODE}\"}} == 0"),
        "the stopped target",
    );
    let down: Vec<Query> = queries
        .iter()
        .filter(|q| expected_empty(&q.panel).is_some_and(|(w, _)| w == Empty::TargetDown))
        .cloned()
        .collect();
    let failures = run_queries(&prom, &down, &tb, true, true);
    assert_no_failures("with pinflow stopped", &failures, &prom);
    let by_phase: BTreeMap<String, usize> =
        EXPECTED_EMPTY
            .iter()
            .fold(BTreeMap::new(), |mut m, (_, w, _)| {
                *m.entry(format!("{w:?}")).or_default() += 1;
                m
            });
    eprintln!(
        "{} queries in {} panels; expected-empty by reason: {by_phase:?}",
        queries.len(),
        queries
            .iter()
            .map(|q| q.panel.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    );
    drop(dom_b);
    drop(dom_a);
    drop(ovs);
}

#[test]
fn dashboard_is_grafana_json_that_names_only_known_metrics() {
    let dash = load_dashboard();
    let mut queries = Vec::new();
    panel_queries(dash["panels"].as_array().expect("panels"), &mut queries);
    check_dashboard_shape(&dash, &queries);
    let bad: Vec<String> = queries
        .iter()
        .filter_map(|q| {
            unknown_metrics(&substitute(&q.expr)).map(|e| format!("{:?}: {e}", q.panel))
        })
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            "sum by (instance, rule) (rate(pinflow_a_total{x=\"y{\", z=~\"a|b\"}[10s])) \
             * on (instance, domain) group_left (name) pinflow_b{q=\"1\"} > 0.8 or vector(1)"
        ),
        ["pinflow_a_total", "pinflow_b"]
    );
    assert_eq!(
        metric_names("topk(10, up == 0) / scrape_duration_seconds * 1000"),
        ["up", "scrape_duration_seconds"]
    );
    assert!(unknown_metrics("count(pinflow_no_such_family) or up").is_some());
    assert!(unknown_metrics("count(pinflow_source_up == 0)").is_none());
}
