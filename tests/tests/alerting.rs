//! Alerting end to end with the real programs, all on 127.0.0.1: `promtool`/`amtool` on everything
//! under deploy/, the PrometheusRule generated from the rules file, the shipped scrape configs
//! relabeling a real scrape, a rack failure against a real two-peer Alertmanager cluster running the
//! shipped routes and inhibitions, and two real Prometheus replicas evaluating the shipped rules on a
//! real pinflow that watches a private Open vSwitch. A webhook receiver in the test counts what
//! Alertmanager sends.
//!
//! Two stand-ins, named as such: the rack failure posts its 1 241 alerts to the Alertmanager API the
//! way Prometheus's notifier does (labels taken from the rules file), since 40 real hosts cannot fail
//! here; and Debian's Prometheus is built without Kubernetes service discovery, so where a test needs
//! the Kubernetes scrape config it replaces `kubernetes_sd_configs` (and nothing else) by a `file_sd`
//! file holding the `__meta_kubernetes_*` labels pod discovery would give.

use pinflow_tests::captured::CapturedHost;
use pinflow_tests::ovs::{self, Ovs};
use pinflow_tests::pinflow::{Pinflow, free_addr};
use pinflow_tests::scrape::{http_get, select};
use pinflow_tests::{require_privileged, wait_for};
use serde_json::{Value as Json, json};
use serde_yaml_ng::{Mapping, Value as Yaml};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RULES: &str = "prometheus/pinflow.rules.yml";
const PROMETHEUS_RULE: &str = "kubernetes/base/monitoring/prometheusrule.yaml";
const RUNBOOK: &str = "https://example.invalid/pinflow/blob/main/docs/alerts.md#";
/// Alertmanager timers in the tests (the shipped 30s/5m/4h would make them minutes long).
const GROUP_WAIT: &str = "1s";
const GROUP_INTERVAL: &str = "2s";
/// How long a peer waits per position before it sends (`--cluster.peer-timeout`).
const PEER_TIMEOUT: Duration = Duration::from_secs(3);
/// After the first notification: long enough for the second peer's turn and a group interval.
const SETTLE: Duration = Duration::from_secs(8);

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read_yaml(rel: &str) -> Yaml {
    let path = deploy().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn write_yaml(path: &Path, v: &Yaml) {
    std::fs::write(path, serde_yaml_ng::to_string(v).expect("yaml")).expect("write yaml");
}

/// Runs a tool; returns (success, stdout + stderr).
fn tool(cmd: &str, args: &[&str], dir: Option<&Path>) -> (bool, String) {
    let mut c = Command::new(cmd);
    c.args(args);
    if let Some(d) = dir {
        c.current_dir(d);
    }
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn must(cmd: &str, args: &[&str], dir: Option<&Path>) {
    let (ok, out) = tool(cmd, args, dir);
    assert!(ok, "{cmd} {}:\n{out}", args.join(" "));
}

/// The alerting rules of the rules file: name → rule.
fn alert_rules() -> BTreeMap<String, Yaml> {
    let rules = read_yaml(RULES);
    let mut out = BTreeMap::new();
    for g in rules["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            if let Some(name) = r["alert"].as_str() {
                out.insert(name.to_string(), r.clone());
            }
        }
    }
    out
}

/// The labels the rules file gives alert `name` (severity, scope).
fn rule_labels(name: &str) -> BTreeMap<String, String> {
    let rules = alert_rules();
    let rule = rules
        .get(name)
        .unwrap_or_else(|| panic!("no alert {name} in {RULES}"));
    rule["labels"]
        .as_mapping()
        .expect("labels")
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().expect("key").to_string(),
                v.as_str().expect("value").to_string(),
            )
        })
        .collect()
}

/// Kills the child on drop.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ------------------------------------------------------------------------------------------------
// HTTP

/// One HTTP/1.0 request with a JSON body; returns (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    pinflow_tests::scrape::http_request(addr, method, path, Some(body), Duration::from_secs(10))
}

fn get_json(addr: SocketAddr, path: &str) -> Option<Json> {
    let (status, body) = http_get(addr, path, Duration::from_secs(5)).ok()?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Webhook receiver

/// One notification as Alertmanager's webhook integration posted it.
#[derive(Clone, Debug)]
struct Notification {
    /// URL path: the receiver's name (the test points each receiver at `/<name>`).
    path: String,
    body: Json,
    /// When it arrived.
    at: Instant,
}

impl Notification {
    fn group_labels(&self) -> BTreeMap<String, String> {
        serde_json::from_value(self.body["groupLabels"].clone()).expect("groupLabels")
    }
    fn alerts(&self) -> &Vec<Json> {
        self.body["alerts"].as_array().expect("alerts")
    }
    /// Which peer sent it (each peer has its own `--web.external-url`).
    fn peer(&self) -> &str {
        self.body["externalURL"]
            .as_str()
            .unwrap_or("")
            .trim_end_matches('/')
    }
}

/// An HTTP server that records every POST; stops on drop.
struct Webhook {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Notification>>>,
    stop: Arc<AtomicBool>,
}

impl Webhook {
    fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let g = g.clone();
                        std::thread::spawn(move || serve_webhook(s, &g));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Webhook { addr, got, stop }
    }

    fn notifications(&self) -> Vec<Notification> {
        self.got.lock().expect("lock").clone()
    }

    /// Waits until at least `n` notifications arrived; returns the time it took.
    fn wait_for(&self, n: usize, timeout: Duration) -> Option<Duration> {
        wait_for(timeout, || (self.notifications().len() >= n).then_some(())).map(|(_, t)| t)
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves one keep-alive connection: each request's JSON body is recorded, answered 200.
fn serve_webhook(stream: TcpStream, got: &Mutex<Vec<Notification>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(stream);
    loop {
        let mut request = String::new();
        if r.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().expect("content-length");
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).expect("webhook body");
        let body: Json = serde_json::from_slice(&body).expect("webhook JSON");
        let path = request
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .trim_start_matches('/')
            .to_string();
        got.lock().expect("lock").push(Notification {
            path,
            body,
            at: Instant::now(),
        });
        if out
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Alertmanager cluster

/// deploy/alertmanager/alertmanager.yml with only the receivers' URLs (→ the webhook, path = the
/// receiver's name) and the routes' timers changed.
fn test_alertmanager_config(hook: SocketAddr) -> Yaml {
    fn timers(route: &mut Yaml) {
        for (k, v) in [
            ("group_wait", GROUP_WAIT),
            ("group_interval", GROUP_INTERVAL),
            ("repeat_interval", "1h"),
        ] {
            if route.get(k).is_some() {
                route[k] = v.into();
            }
        }
        if let Some(routes) = route.get_mut("routes").and_then(Yaml::as_sequence_mut) {
            routes.iter_mut().for_each(timers);
        }
    }
    let mut c = read_yaml("alertmanager/alertmanager.yml");
    timers(&mut c["route"]);
    for r in c["receivers"].as_sequence_mut().expect("receivers") {
        let name = r["name"].as_str().expect("receiver name").to_string();
        for (k, v) in r.as_mapping_mut().expect("receiver").iter_mut() {
            match k.as_str() {
                Some("name") => {}
                Some("webhook_configs") => {
                    for w in v.as_sequence_mut().expect("webhook_configs") {
                        w["url"] = format!("http://{hook}/{name}").into();
                    }
                }
                other => {
                    panic!("receiver {name}: the test can only redirect webhooks, not {other:?}")
                }
            }
        }
    }
    c
}

struct Peer {
    web: SocketAddr,
    _proc: Kill,
    log: PathBuf,
}

/// Two `prometheus-alertmanager` peers clustered over loopback, each with its own storage.
struct AlertmanagerCluster {
    peers: Vec<Peer>,
    _dir: tempfile::TempDir,
}

impl AlertmanagerCluster {
    fn start(config: &Yaml) -> AlertmanagerCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("alertmanager.yml");
        write_yaml(&cfg, config);
        must("amtool", &["check-config", &cfg.to_string_lossy()], None);
        let webs = [free_addr(), free_addr()];
        let gossip = [free_addr(), free_addr()];
        let peers = (0..2)
            .map(|i| {
                let data = dir.path().join(format!("peer{i}"));
                std::fs::create_dir_all(&data).expect("mkdir");
                let log = dir.path().join(format!("peer{i}.log"));
                let child = Command::new("prometheus-alertmanager")
                    .arg(format!("--config.file={}", cfg.display()))
                    .arg(format!("--storage.path={}", data.display()))
                    .arg(format!("--web.listen-address={}", webs[i]))
                    .arg(format!("--web.external-url=http://{}/", webs[i]))
                    .arg(format!("--cluster.listen-address={}", gossip[i]))
                    .arg(format!("--cluster.advertise-address={}", gossip[i]))
                    .arg(format!("--cluster.peer={}", gossip[1 - i]))
                    .arg(format!(
                        "--cluster.peer-timeout={}s",
                        PEER_TIMEOUT.as_secs()
                    ))
                    .arg("--cluster.gossip-interval=50ms")
                    .arg("--cluster.pushpull-interval=2s")
                    .arg("--log.level=debug")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).expect("log"))
                    .spawn()
                    .expect("start prometheus-alertmanager");
                Peer {
                    web: webs[i],
                    _proc: Kill(child),
                    log,
                }
            })
            .collect();
        let c = AlertmanagerCluster { peers, _dir: dir };
        for p in &c.peers {
            let ready = wait_for(Duration::from_secs(30), || {
                let s = get_json(p.web, "/api/v2/status")?;
                (s["cluster"]["status"] == "ready" && s["cluster"]["peers"].as_array()?.len() == 2)
                    .then_some(())
            });
            assert!(
                ready.is_some(),
                "Alertmanager cluster not ready on {}:\n{}",
                p.web,
                c.logs()
            );
        }
        c
    }

    fn logs(&self) -> String {
        self.peers
            .iter()
            .map(|p| {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                format!(
                    "--- peer {} (last lines)\n{}",
                    p.web,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// POSTs alerts to one peer (API v2) in batches of 64, as Prometheus's notifier does.
    fn post(&self, peer: usize, alerts: &[Json]) {
        for batch in alerts.chunks(64) {
            let body = Json::Array(batch.to_vec()).to_string();
            let (status, resp) = http(self.peers[peer].web, "POST", "/api/v2/alerts", &body)
                .unwrap_or_else(|e| panic!("POST alerts: {e}"));
            assert_eq!(status, 200, "POST /api/v2/alerts: {resp}");
        }
    }

    /// Every alert a peer holds, with its state (`active`, `suppressed`).
    fn alerts(&self, peer: usize) -> Vec<Json> {
        get_json(self.peers[peer].web, "/api/v2/alerts")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_else(|| panic!("GET /api/v2/alerts on peer {peer}"))
    }

    fn external_url(&self, peer: usize) -> String {
        format!("http://{}", self.peers[peer].web)
    }
}

/// Posts `batch` to both peers as each of the two Prometheus replicas does, waits until the
/// webhook holds `total` notifications in all (failing with `what`, the notifications received
/// and the peers' logs), lets the cluster settle and returns every notification so far.
fn deliver(
    am: &AlertmanagerCluster,
    hook: &Webhook,
    batch: &[Json],
    total: usize,
    what: &str,
) -> Vec<Notification> {
    for _replica in ["a", "b"] {
        am.post(0, batch);
        am.post(1, batch);
    }
    assert!(
        hook.wait_for(total, Duration::from_secs(30)).is_some(),
        "{what}: {:#?}\n{}",
        hook.notifications(),
        am.logs()
    );
    std::thread::sleep(SETTLE);
    hook.notifications()
}

/// An alert as Prometheus posts it: the rule's labels plus `extra`, firing now.
fn alert(name: &str, extra: &[(&str, &str)]) -> Json {
    let mut labels = rule_labels(name);
    labels.insert("alertname".into(), name.into());
    for (k, v) in extra {
        labels.insert((*k).into(), (*v).into());
    }
    json!({
        "labels": labels,
        "annotations": {"summary": format!("{name} (simulated)")},
        "generatorURL": "http://prometheus.example.invalid/graph",
    })
}

/// Notifications per peer (every one of them comes from one of the two).
fn per_peer(c: &AlertmanagerCluster, got: &[Notification]) -> Vec<usize> {
    let counts: Vec<usize> = (0..2)
        .map(|i| {
            let url = c.external_url(i);
            got.iter().filter(|n| n.peer() == url).count()
        })
        .collect();
    assert_eq!(
        counts.iter().sum::<usize>(),
        got.len(),
        "notifications from an unknown sender: {:?}",
        got.iter().map(Notification::peer).collect::<Vec<_>>()
    );
    counts
}

// ------------------------------------------------------------------------------------------------
// Prometheus

struct Prometheus {
    web: SocketAddr,
    _proc: Kill,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Writes `config`, checks it with promtool and starts Prometheus on it.
    fn start(config: &Yaml) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("prometheus.yml");
        write_yaml(&cfg, config);
        must(
            "promtool",
            &["check", "config", &cfg.to_string_lossy()],
            None,
        );
        let (child, web) = pinflow_tests::prometheus::spawn(&cfg, dir.path());
        Prometheus {
            web,
            _proc: Kill(child),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Instant query; the result vector.
    fn query(&self, q: &str) -> Option<Vec<Json>> {
        let v = get_json(self.web, &format!("/api/v1/query?query={}", urlencode(q)))?;
        v["data"]["result"].as_array().cloned()
    }

    /// Waits until `q` returns exactly one series and returns its labels.
    fn one_series(&self, q: &str, timeout: Duration) -> BTreeMap<String, String> {
        let r = wait_for(timeout, || {
            let r = self.query(q)?;
            (r.len() == 1).then(|| serde_json::from_value(r[0]["metric"].clone()).ok())?
        });
        r.map(|(m, _)| m).unwrap_or_else(|| {
            panic!(
                "`{q}` never returned exactly one series: {:?}\n{}",
                self.query(q),
                self.log()
            )
        })
    }
}

/// A file_sd target group standing in for one pod that Kubernetes pod discovery would find.
fn pod_target(addr: SocketAddr, app: &str, port_name: &str, phase: &str, node: &str) -> Json {
    json!({
        "targets": [addr.to_string()],
        "labels": {
            "__meta_kubernetes_namespace": "pinflow",
            "__meta_kubernetes_pod_name": format!("{app}-x7k2p"),
            "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
            "__meta_kubernetes_pod_container_port_name": port_name,
            "__meta_kubernetes_pod_phase": phase,
            "__meta_kubernetes_pod_node_name": node,
            "__meta_kubernetes_node_label_topology_kubernetes_io_zone": "z1",
            "__meta_kubernetes_node_label_topology_kubernetes_io_rack": "r01",
        }
    })
}

/// A shipped Prometheus config made runnable here: 1 s scrape/evaluation, absolute rule path,
/// `replica` as given, the Alertmanagers given, and the pinflow job's service discovery replaced by
/// the file_sd `targets` (for the Kubernetes config: pods as pod discovery would describe them).
fn runnable_prometheus_config(
    shipped: &str,
    dir: &Path,
    targets: &Json,
    replica: &str,
    alertmanagers: &[SocketAddr],
) -> Yaml {
    let mut c = read_yaml(shipped);
    let g = &mut c["global"];
    g["scrape_interval"] = "1s".into();
    g["scrape_timeout"] = "1s".into();
    g["evaluation_interval"] = "1s".into();
    g["external_labels"]["replica"] = replica.into();
    c["rule_files"] = vec![Yaml::from(
        deploy().join(RULES).to_string_lossy().into_owned(),
    )]
    .into();
    let ams: Vec<Yaml> = alertmanagers.iter().map(|a| a.to_string().into()).collect();
    c["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = ams.into();
    let file = dir.join(format!("targets-{replica}.json"));
    std::fs::write(&file, targets.to_string()).expect("targets file");
    let job = c["scrape_configs"]
        .as_sequence_mut()
        .expect("scrape_configs")
        .iter_mut()
        .find(|j| j["job_name"] == "pinflow")
        .expect("job pinflow");
    let m = job.as_mapping_mut().expect("job");
    let sd: Vec<Yaml> = m
        .keys()
        .filter(|k| k.as_str().is_some_and(|k| k.ends_with("_sd_configs")))
        .cloned()
        .collect();
    assert_eq!(
        sd.len(),
        1,
        "{shipped}: one service discovery in job pinflow"
    );
    m.remove(&sd[0]);
    let mut fsd = Mapping::new();
    fsd.insert(
        "files".into(),
        vec![Yaml::from(file.to_string_lossy().into_owned())].into(),
    );
    m.insert("file_sd_configs".into(), vec![Yaml::Mapping(fsd)].into());
    c
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Tests

#[test]
fn deploy_rules_and_configs_pass_their_checkers() {
    if !require_privileged(
        "deploy_rules_and_configs_pass_their_checkers",
        &["promtool", "amtool"],
    ) {
        return;
    }
    let d = deploy();
    must(
        "promtool",
        &["check", "rules", &d.join(RULES).to_string_lossy()],
        None,
    );
    // Every alert fires, stays silent, renders its labels and annotation text (and the rack of 40).
    must(
        "promtool",
        &["test", "rules", "pinflow.rules.test.yml"],
        Some(&d.join("prometheus")),
    );
    for cfg in [
        "scrape-config-file-sd.yml",
        "scrape-config-openstack-sd.yml",
    ] {
        must(
            "promtool",
            &[
                "check",
                "config",
                &d.join("prometheus").join(cfg).to_string_lossy(),
            ],
            None,
        );
    }
    // Debian's promtool has no Kubernetes SD: check the rest of that config with it stood in.
    let (ok, out) = tool(
        "promtool",
        &[
            "check",
            "config",
            &d.join("prometheus/scrape-config.yml").to_string_lossy(),
        ],
        None,
    );
    if !ok {
        assert!(
            out.contains("kubernetes_sd_configs not found"),
            "scrape-config.yml fails for another reason than Debian's missing Kubernetes SD:\n{out}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let c = runnable_prometheus_config(
            "prometheus/scrape-config.yml",
            dir.path(),
            &json!([]),
            "a",
            &[free_addr()],
        );
        let f = dir.path().join("k8s.yml");
        write_yaml(&f, &c);
        must("promtool", &["check", "config", &f.to_string_lossy()], None);
    }
    let am = d.join("alertmanager/alertmanager.yml");
    must("amtool", &["check-config", &am.to_string_lossy()], None);
    // Every alert of the rules file reaches the receiver its severity asks for.
    for (name, rule) in alert_rules() {
        let sev = rule["labels"]["severity"].as_str().expect("severity");
        let want = match sev {
            "critical" => "oncall",
            "warning" => "chat",
            other => panic!("{name}: unknown severity {other}"),
        };
        let mut args = vec![
            "config".to_string(),
            "routes".into(),
            "test".into(),
            format!("--config.file={}", am.display()),
            format!("--verify.receivers={want}"),
            format!("alertname={name}"),
        ];
        args.extend(rule_labels(&name).iter().map(|(k, v)| format!("{k}={v}")));
        args.extend(["instance=hv1".into(), "rack=r01".into(), "zone=z1".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        must("amtool", &args, None);
    }
}

#[test]
fn every_alert_has_scope_severity_runbook_and_promtool_cases() {
    let docs = std::fs::read_to_string(deploy().join("../docs/alerts.md")).expect("docs/alerts.md");
    let tests = read_yaml("prometheus/pinflow.rules.test.yml");
    let cases: Vec<&Yaml> = tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().into_iter().flatten())
        .collect();
    let rules = alert_rules();
    assert!(rules.len() >= 11, "{:?}", rules.keys());
    for (name, rule) in &rules {
        let l = rule_labels(name);
        assert!(
            matches!(
                l.get("scope").map(String::as_str),
                Some("rack" | "host" | "instance" | "fleet")
            ),
            "{name}: scope {l:?}"
        );
        assert!(
            matches!(
                l.get("severity").map(String::as_str),
                Some("critical" | "warning")
            ),
            "{name}: severity {l:?}"
        );
        let anchor = name.to_lowercase();
        assert_eq!(
            rule["annotations"]["runbook_url"].as_str(),
            Some(format!("{RUNBOOK}{anchor}").as_str()),
            "{name}: runbook_url"
        );
        assert!(
            docs.lines().any(|l| l.trim() == format!("### {name}")),
            "docs/alerts.md has no `### {name}` section (anchor #{anchor})"
        );
        let mine: Vec<&&Yaml> = cases
            .iter()
            .filter(|c| c["alertname"] == name.as_str())
            .collect();
        assert!(
            mine.iter()
                .any(|c| c["exp_alerts"].as_sequence().is_some_and(|a| a
                    .iter()
                    .all(|a| a["exp_annotations"]["summary"].is_string()
                        && a["exp_annotations"]["description"].is_string())
                    && !a.is_empty())),
            "{name}: no promtool case where it fires with its annotation text"
        );
        assert!(
            mine.iter()
                .any(|c| c["exp_alerts"].as_sequence().is_some_and(Vec::is_empty)),
            "{name}: no promtool case where it stays silent"
        );
    }
}

/// The PrometheusRule as generated from the rules file.
fn generated_prometheus_rule() -> String {
    let rules = read_yaml(RULES);
    let doc = json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "pinflow",
            "namespace": "pinflow",
            "labels": {"app.kubernetes.io/name": "pinflow"},
        },
    });
    let mut doc: Yaml = serde_yaml_ng::to_value(doc).expect("yaml");
    let mut spec = Mapping::new();
    spec.insert("groups".into(), rules["groups"].clone());
    doc["spec"] = Yaml::Mapping(spec);
    format!(
        "# GENERATED from deploy/prometheus/pinflow.rules.yml by tests/tests/alerting.rs: do not edit.\n\
         # Regenerate: PINFLOW_BLESS=1 cargo test -p pinflow-tests --test alerting prometheusrule\n{}",
        serde_yaml_ng::to_string(&doc).expect("yaml")
    )
}

#[test]
fn prometheusrule_is_generated_from_the_rules_file() {
    let want = generated_prometheus_rule();
    let path = deploy().join(PROMETHEUS_RULE);
    if std::env::var("PINFLOW_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &want).expect("write PrometheusRule");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} differs from deploy/{RULES}: regenerate with PINFLOW_BLESS=1 cargo test -p pinflow-tests --test alerting prometheusrule",
        path.display()
    );
    // The committed resource carries exactly the rules file's groups.
    let committed: Yaml = serde_yaml_ng::from_str(&have).expect("PrometheusRule YAML");
    assert_eq!(committed["spec"]["groups"], read_yaml(RULES)["groups"]);
    if pinflow_tests::command_exists("promtool") {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("spec.yml");
        let mut m = Mapping::new();
        m.insert("groups".into(), committed["spec"]["groups"].clone());
        write_yaml(&f, &Yaml::Mapping(m));
        must("promtool", &["check", "rules", &f.to_string_lossy()], None);
    }
}

#[test]
fn shipped_scrape_configs_label_series_with_node_rack_and_zone() {
    if !require_privileged(
        "shipped_scrape_configs_label_series_with_node_rack_and_zone",
        &["prometheus", "promtool"],
    ) {
        return;
    }
    let host = CapturedHost::new();
    let args = host.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pf = Pinflow::start("[pinning]\nebpf = false\n", &args);
    let dir = tempfile::tempdir().expect("tempdir");
    let nowhere = free_addr();
    // Kubernetes: pinflow's pod, plus what must not become a target: another port of the pod,
    // another app's pod, a pod not running yet.
    let pods = json!([
        pod_target(pf.addr, "pinflow", "metrics", "Running", "hv-r01-01"),
        pod_target(nowhere, "pinflow", "healthz", "Running", "hv-r01-01"),
        pod_target(nowhere, "node-exporter", "metrics", "Running", "hv-r01-01"),
        pod_target(nowhere, "pinflow", "metrics", "Pending", "hv-r01-02"),
    ]);
    let k8s = Prometheus::start(&runnable_prometheus_config(
        "prometheus/scrape-config.yml",
        dir.path(),
        &pods,
        "a",
        &[nowhere],
    ));
    // systemd hosts: the file_sd targets file format of deploy/prometheus/targets/.
    let example: Yaml = read_yaml("prometheus/targets/pinflow.example.yml");
    assert_eq!(example[0]["labels"]["rack"], "r07", "example targets file");
    let files = json!([{"targets": [format!("localhost:{}", pf.addr.port())], "labels": {"zone": "z1", "rack": "r01"}}]);
    let file_sd = Prometheus::start(&runnable_prometheus_config(
        "prometheus/scrape-config-file-sd.yml",
        dir.path(),
        &files,
        "b",
        &[nowhere],
    ));
    for (p, node) in [(&k8s, "hv-r01-01"), (&file_sd, "localhost")] {
        let want = labels(&[
            ("__name__", "up"),
            ("job", "pinflow"),
            ("instance", node),
            ("zone", "z1"),
            ("rack", "r01"),
        ]);
        // Exactly one target, scraped successfully, named after the node.
        let up = p.one_series("up", Duration::from_secs(30));
        assert_eq!(up, want, "{}", p.log());
        let ok = wait_for(Duration::from_secs(10), || {
            (p.query("up == 1")?.len() == 1).then_some(())
        });
        assert!(ok.is_some(), "pinflow not scraped: {}", p.log());
        // pinflow's own series carry the same target labels.
        let info = p.one_series(
            "pinflow_instance_info{domain=\"fx-nova\"}",
            Duration::from_secs(10),
        );
        for k in ["job", "instance", "zone", "rack"] {
            assert_eq!(info.get(k), want.get(k), "{k} on pinflow_instance_info");
        }
        assert_eq!(info["name"], "fx display & name");
    }
    // The example targets file as shipped: every host a target named after it, with its group's
    // rack and zone (the names do not resolve here; the target labels are what is checked).
    let example = serde_json::to_value(&example).expect("example as JSON");
    let want: BTreeSet<(String, String, String)> = example
        .as_array()
        .expect("target groups")
        .iter()
        .flat_map(|g| {
            g["targets"].as_array().expect("targets").iter().map(|t| {
                let t = t.as_str().expect("target");
                let host = t.rsplit_once(':').map_or(t, |(h, _)| h);
                let l = |k: &str| g["labels"][k].as_str().expect("label").to_string();
                (host.to_string(), l("rack"), l("zone"))
            })
        })
        .collect();
    assert_eq!(want.len(), 5, "example targets: {want:?}");
    let ex = Prometheus::start(&runnable_prometheus_config(
        "prometheus/scrape-config-file-sd.yml",
        dir.path(),
        &example,
        "c",
        &[nowhere],
    ));
    let mut last = BTreeSet::new();
    let same = wait_for(Duration::from_secs(30), || {
        let v = get_json(ex.web, "/api/v1/targets")?;
        last = v["data"]["activeTargets"]
            .as_array()?
            .iter()
            .map(|t| {
                let l = |k: &str| t["labels"][k].as_str().unwrap_or("").to_string();
                (l("instance"), l("rack"), l("zone"))
            })
            .collect();
        (last == want).then_some(())
    });
    assert!(
        same.is_some(),
        "targets {last:?}, want {want:?}\n{}",
        ex.log()
    );
}

#[test]
fn rack_failure_pages_once_on_a_two_peer_alertmanager_cluster() {
    if !require_privileged(
        "rack_failure_pages_once_on_a_two_peer_alertmanager_cluster",
        &["prometheus-alertmanager", "amtool"],
    ) {
        return;
    }
    let hook = Webhook::start();
    let am = AlertmanagerCluster::start(&test_alertmanager_config(hook.addr));
    // Rack r07 fails: pinflow's rack alert first (it fires after 2m), then what the 40 hosts and
    // their 30 instances each raise (host alerts after 5m; instance alerts as other exporters or a
    // last scrape would raise them).
    let rack = [("zone", "z1"), ("rack", "r07")];
    let mut alerts = vec![alert("PinflowRackDown", &rack)];
    let hosts: Vec<String> = (1..=40).map(|h| format!("hv-r07-{h:02}")).collect();
    for h in &hosts {
        alerts.push(alert(
            "PinflowDown",
            &[("job", "pinflow"), ("instance", h), rack[0], rack[1]],
        ));
    }
    for (i, h) in hosts.iter().enumerate() {
        for d in 0..30 {
            let domain = format!("instance-{:08x}", i * 30 + d);
            let base = [
                ("job", "pinflow"),
                ("instance", h.as_str()),
                rack[0],
                rack[1],
                ("domain", domain.as_str()),
            ];
            alerts.push(if d % 3 == 0 {
                alert(
                    "PcpuSharedBetweenInstances",
                    &[&base[..], &[("check", "overlap")]].concat(),
                )
            } else {
                alert(
                    "VcpuPinningDrift",
                    &[&base[..], &[("check", "affinity")]].concat(),
                )
            });
        }
    }
    assert_eq!(alerts.len(), 1 + 40 + 40 * 30);
    // Two Prometheus replicas, each sending every alert to both peers.
    let t0 = Instant::now();
    for _replica in ["a", "b"] {
        am.post(0, &alerts);
        am.post(1, &alerts);
    }
    eprintln!(
        "posted {} alerts × 2 replicas × 2 peers in {:?}",
        alerts.len(),
        t0.elapsed()
    );
    let took = hook.wait_for(1, Duration::from_secs(30));
    assert!(took.is_some(), "no notification at all\n{}", am.logs());
    std::thread::sleep(SETTLE);
    let got = hook.notifications();
    let peers = per_peer(&am, &got);
    eprintln!(
        "rack failure: {} notification(s) in total, per peer {peers:?}, the first {:?} after the first post",
        got.len(),
        got.first().map(|n| n.at.duration_since(t0))
    );
    assert_eq!(
        got.len(),
        1,
        "one notification for the rack, got {}: {:#?}\n{}",
        got.len(),
        got.iter()
            .map(|n| (n.path.clone(), n.group_labels(), n.alerts().len()))
            .collect::<Vec<_>>(),
        am.logs()
    );
    let n = &got[0];
    assert_eq!(n.path, "oncall");
    assert_eq!(
        n.group_labels(),
        labels(&[
            ("alertname", "PinflowRackDown"),
            ("zone", "z1"),
            ("rack", "r07")
        ])
    );
    assert_eq!(n.alerts().len(), 1);
    assert_eq!(n.body["status"], "firing");
    // Both peers hold every alert and hold back all but the rack's: inhibition, not luck.
    for p in 0..2 {
        let held = am.alerts(p);
        let state = |s: &str| held.iter().filter(|a| a["status"]["state"] == s).count();
        assert_eq!(held.len(), alerts.len(), "peer {p}");
        assert_eq!(state("suppressed"), alerts.len() - 1, "peer {p} suppressed");
        assert_eq!(state("active"), 1, "peer {p} active");
    }

    // A host of a healthy rack fails (with what its instances raise): its host alert still pages,
    // once; its instance alerts are held back by it.
    let host = |h: &'static str| {
        [
            ("job", "pinflow"),
            ("instance", h),
            ("zone", "z1"),
            ("rack", "r03"),
        ]
    };
    let mut batch = vec![alert("PinflowDown", &host("hv-r03-05"))];
    for d in 0..30 {
        let domain = format!("instance-r03-05-{d:02}");
        batch.push(alert(
            "VcpuPinningDrift",
            &[
                &host("hv-r03-05")[..],
                &[("domain", domain.as_str()), ("check", "cpuset")],
            ]
            .concat(),
        ));
    }
    let got = deliver(
        &am,
        &hook,
        &batch,
        2,
        "the healthy rack's host alert never arrived",
    );
    eprintln!(
        "after the healthy rack's host alert: {} notification(s) in total, per peer {:?}",
        got.len(),
        per_peer(&am, &got)
    );
    let summary = |got: &[Notification]| -> Vec<(String, BTreeMap<String, String>, usize)> {
        got.iter()
            .map(|n| (n.path.clone(), n.group_labels(), n.alerts().len()))
            .collect()
    };
    assert_eq!(got.len(), 2, "{:#?}", summary(&got));
    assert_eq!(got[1].path, "oncall");
    assert_eq!(
        got[1].group_labels(),
        labels(&[
            ("alertname", "PinflowDown"),
            ("zone", "z1"),
            ("rack", "r03")
        ])
    );
    assert_eq!(got[1].alerts().len(), 1);
    assert_eq!(got[1].alerts()[0]["labels"]["instance"], "hv-r03-05");

    // The other two inhibitions: a lost kernel datapath holds back the host's flow alerts, an
    // overlap the plain drift of the same instance. Each source pages once; no target does.
    let overlap = [&host("hv-r03-07")[..], &[("domain", "instance-r03-07-00")]].concat();
    let batch = vec![
        alert(
            "OvsDatapathLost",
            &[&host("hv-r03-06")[..], &[("source", "ovs_datapath")]].concat(),
        ),
        alert(
            "OvsDirtyFlows",
            &[
                &host("hv-r03-06")[..],
                &[("bridge", "br-int"), ("rule", "output_to_missing_port")],
            ]
            .concat(),
        ),
        alert(
            "OvsDirtyFlowsSuspect",
            &[
                &host("hv-r03-06")[..],
                &[("bridge", "br-int"), ("rule", "stale_cookie")],
            ]
            .concat(),
        ),
        alert(
            "OvsDatapathUnhealthy",
            &[
                &host("hv-r03-06")[..],
                &[("datapath", "ovs-system"), ("check", "lost_upcalls")],
            ]
            .concat(),
        ),
        alert(
            "PcpuSharedBetweenInstances",
            &[&overlap[..], &[("check", "overlap")]].concat(),
        ),
        alert(
            "VcpuPinningDrift",
            &[&overlap[..], &[("check", "affinity")]].concat(),
        ),
    ];
    let got = deliver(&am, &hook, &batch, 4, "the lost datapath and the overlap");
    eprintln!(
        "after a lost datapath and an overlap: {} notification(s) in total, per peer {:?}",
        got.len(),
        per_peer(&am, &got)
    );
    assert_eq!(got.len(), 4, "{:#?}", summary(&got));
    let mut last: Vec<_> = summary(&got[2..]);
    last.sort();
    assert_eq!(
        last,
        [
            (
                "oncall".to_string(),
                labels(&[
                    ("alertname", "OvsDatapathLost"),
                    ("zone", "z1"),
                    ("rack", "r03")
                ]),
                1
            ),
            (
                "oncall".to_string(),
                labels(&[("instance", "hv-r03-07")]),
                1
            ),
        ]
    );
    let inst = got[2..]
        .iter()
        .find(|n| n.group_labels().contains_key("instance"))
        .expect("the overlap's notification");
    assert_eq!(
        inst.alerts()[0]["labels"]["alertname"],
        "PcpuSharedBetweenInstances"
    );

    // A gateway chassis dies: 30 hosts in three racks lose their BFD session to it (and some
    // flap), each raising its own alerts, beside the fleet's one OvsBfdPeerDown for the port. And
    // a host's tunnel egress device loses carrier, with the BFD and CFM alerts that follow. One
    // notification each: the peer's and the carrier's.
    let mut batch = vec![alert(
        "OvsBfdPeerDown",
        &[("bridge", "br-int"), ("port", "ovn-gw0001-0")],
    )];
    for r in ["r04", "r05", "r06"] {
        for h in 1..=10 {
            let inst = format!("hv-{r}-{h:02}");
            let l = [
                ("job", "pinflow"),
                ("instance", inst.as_str()),
                ("zone", "z1"),
                ("rack", r),
                ("bridge", "br-int"),
                ("port", "ovn-gw0001-0"),
            ];
            batch.push(alert("OvsBfdSessionDown", &l));
            if h % 2 == 0 {
                batch.push(alert("OvsBfdFlapping", &l));
            }
        }
    }
    let carrier = host("hv-r03-08");
    batch.push(alert(
        "OvsTunnelEgressCarrierDown",
        &[&carrier[..], &[("device", "eth1")]].concat(),
    ));
    for (name, port) in [
        ("OvsBfdSessionDown", "ovn-gw0002-0"),
        ("OvsBfdFlapping", "ovn-gw0002-0"),
        ("OvsCfmFault", "eth1"),
        ("OvsCfmFlapping", "eth1"),
    ] {
        batch.push(alert(
            name,
            &[&carrier[..], &[("bridge", "br-int"), ("port", port)]].concat(),
        ));
    }
    let got = deliver(&am, &hook, &batch, 6, "the BFD peer and the carrier loss");
    eprintln!(
        "after a BFD peer down from 30 hosts and a host's tunnel carrier loss ({} alerts): {} notification(s) in total, per peer {:?}",
        batch.len(),
        got.len(),
        per_peer(&am, &got)
    );
    assert_eq!(got.len(), 6, "{:#?}", summary(&got));
    let mut last: Vec<_> = summary(&got[4..]);
    last.sort();
    assert_eq!(
        last,
        [
            (
                "chat".to_string(),
                labels(&[("alertname", "OvsBfdPeerDown")]),
                1
            ),
            (
                "oncall".to_string(),
                labels(&[
                    ("alertname", "OvsTunnelEgressCarrierDown"),
                    ("zone", "z1"),
                    ("rack", "r03")
                ]),
                1
            ),
        ]
    );
    for p in 0..2 {
        let held = am.alerts(p);
        let suppressed = |name: &str| {
            held.iter()
                .filter(|a| {
                    a["labels"]["alertname"] == name && a["status"]["state"] == "suppressed"
                })
                .count()
        };
        assert_eq!(suppressed("OvsBfdSessionDown"), 31, "peer {p}");
        assert_eq!(suppressed("OvsBfdFlapping"), 16, "peer {p}");
        assert_eq!(
            suppressed("OvsCfmFault") + suppressed("OvsCfmFlapping"),
            2,
            "peer {p}"
        );
    }
}

#[test]
fn two_prometheus_replicas_page_once_for_a_dirty_flow() {
    if !ovs::available("two_prometheus_replicas_page_once_for_a_dirty_flow")
        || !require_privileged(
            "two_prometheus_replicas_page_once_for_a_dirty_flow",
            &[
                "prometheus",
                "promtool",
                "prometheus-alertmanager",
                "amtool",
            ],
        )
    {
        return;
    }
    let hook = Webhook::start();
    let am = AlertmanagerCluster::start(&test_alertmanager_config(hook.addr));
    let ovs = Ovs::start();
    ovs.add_bridge("br-int", &[("tapa", 1), ("tapb", 2)]);
    ovs.ofctl(&[
        "add-flow",
        "br-int",
        "table=0,priority=10,in_port=1,actions=output:2",
    ]);
    let host = CapturedHost::new();
    let mut args = vec![
        "--ovs-run-dir".to_string(),
        ovs.run_dir().to_string_lossy().into_owned(),
    ];
    args.extend(host.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pf = Pinflow::start("[pinning]\nebpf = false\n", &args);
    let dirty = |rule: &str| -> Option<f64> {
        let s = pf.scrape();
        select(
            &s,
            "pinflow_ovs_dirty_flows",
            &[("bridge", "br-int"), ("rule", rule)],
        )
        .first()
        .map(|x| x.value)
    };
    assert!(
        wait_for(Duration::from_secs(15), || (dirty(
            "output_to_missing_port"
        ) == Some(0.0))
        .then_some(()))
        .is_some(),
        "br-int not mirrored clean:\n{}",
        pf.log()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let pods = json!([pod_target(
        pf.addr,
        "pinflow",
        "metrics",
        "Running",
        "hv-r01-01"
    )]);
    let peers = [am.peers[0].web, am.peers[1].web];
    let replicas: Vec<Prometheus> = ["a", "b"]
        .iter()
        .map(|r| {
            Prometheus::start(&runnable_prometheus_config(
                "prometheus/scrape-config.yml",
                dir.path(),
                &pods,
                r,
                &peers,
            ))
        })
        .collect();
    for p in &replicas {
        p.one_series("up{instance=\"hv-r01-01\"} == 1", Duration::from_secs(30));
        let ams = wait_for(Duration::from_secs(15), || {
            let v = get_json(p.web, "/api/v1/alertmanagers")?;
            (v["data"]["activeAlertmanagers"].as_array()?.len() == 2).then_some(())
        });
        assert!(
            ams.is_some(),
            "Prometheus does not see both Alertmanagers:\n{}",
            p.log()
        );
    }
    // Nothing fires on the clean testbed.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(hook.notifications().len(), 0, "{:#?}", hook.notifications());

    // An agent bug: a flow to a port the bridge does not have.
    let t0 = Instant::now();
    ovs.ofctl(&[
        "add-flow",
        "br-int",
        "table=0,priority=20,in_port=2,dl_dst=fa:16:3e:00:00:99,actions=output:77",
    ]);
    let seen = wait_for(Duration::from_secs(10), || {
        (dirty("output_to_missing_port") == Some(1.0)).then_some(())
    });
    assert!(
        seen.is_some(),
        "pinflow did not flag the flow:\n{}",
        pf.log()
    );
    let others: Vec<(String, f64)> = select(&pf.scrape(), "pinflow_ovs_dirty_flows", &[])
        .into_iter()
        .filter(|s| s.labels["rule"] != "output_to_missing_port" && s.value != 0.0)
        .map(|s| (s.labels["rule"].clone(), s.value))
        .collect();
    assert!(
        others.is_empty(),
        "other rules flag the testbed: {others:?}"
    );
    let took = hook.wait_for(1, Duration::from_secs(30));
    assert!(
        took.is_some(),
        "no notification\nreplica a alerts: {:?}\n{}",
        get_json(replicas[0].web, "/api/v1/alerts"),
        am.logs()
    );
    std::thread::sleep(SETTLE);
    let got = hook.notifications();
    eprintln!(
        "two replicas: {} notification(s) in total, per peer {:?}; the first {:?} after ovs-ofctl add-flow",
        got.len(),
        per_peer(&am, &got),
        got.first().map(|n| n.at.duration_since(t0))
    );
    // Both replicas really evaluated the rule and fired.
    for (p, r) in replicas.iter().zip(["a", "b"]) {
        let firing = get_json(p.web, "/api/v1/alerts").expect("alerts");
        let n = firing["data"]["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .filter(|a| a["labels"]["alertname"] == "OvsDirtyFlows" && a["state"] == "firing")
            .count();
        assert_eq!(n, 1, "replica {r}: {firing}");
    }
    assert_eq!(
        got.len(),
        1,
        "{:#?}",
        got.iter().map(|n| &n.body).collect::<Vec<_>>()
    );
    let n = &got[0];
    assert_eq!(n.path, "oncall");
    assert_eq!(n.group_labels(), labels(&[("instance", "hv-r01-01")]));
    // One alert, not one per replica: `replica` was dropped before it reached Alertmanager.
    assert_eq!(n.alerts().len(), 1, "{}", n.body);
    let a = &n.alerts()[0];
    let got_labels: BTreeMap<String, String> =
        serde_json::from_value(a["labels"].clone()).expect("labels");
    assert_eq!(
        got_labels,
        labels(&[
            ("alertname", "OvsDirtyFlows"),
            ("severity", "critical"),
            ("scope", "instance"),
            ("job", "pinflow"),
            ("instance", "hv-r01-01"),
            ("zone", "z1"),
            ("rack", "r01"),
            ("bridge", "br-int"),
            ("rule", "output_to_missing_port"),
        ])
    );
    assert_eq!(
        a["annotations"]["summary"],
        "1 broken flow(s) on br-int of hv-r01-01: output_to_missing_port"
    );
    let desc = a["annotations"]["description"].as_str().unwrap_or("");
    assert!(
        desc.contains("priority=20,in_port=2,dl_dst=fa:16:3e:00:00:99 actions=output:77"),
        "the example flow, as ovs-ofctl prints it: {desc}"
    );
    for p in 0..2 {
        let held: Vec<Json> = am
            .alerts(p)
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == "OvsDirtyFlows")
            .collect();
        assert_eq!(held.len(), 1, "peer {p}: {held:?}");
    }
}

/// targetLabel → sourceLabels of the relabelings that set `labels`, from a Prometheus
/// `relabel_configs` list (snake_case) or a prometheus-operator `relabelings` list (camelCase).
fn relabel_sources(list: &Yaml, snake: bool) -> BTreeMap<String, Yaml> {
    let (source, target) = if snake {
        ("source_labels", "target_label")
    } else {
        ("sourceLabels", "targetLabel")
    };
    list.as_sequence()
        .expect("relabelings")
        .iter()
        .filter_map(|r| {
            let t = r[target].as_str()?;
            ["instance", "zone", "rack"]
                .contains(&t)
                .then(|| (t.to_string(), r[source].clone()))
        })
        .collect()
}

#[test]
fn pod_and_service_monitors_relabel_like_the_scrape_config() {
    let plain = read_yaml("prometheus/scrape-config.yml");
    let job = &plain["scrape_configs"][0];
    assert_eq!(job["job_name"], "pinflow");
    let want = relabel_sources(&job["relabel_configs"], true);
    assert_eq!(
        want.len(),
        3,
        "instance, zone and rack set in scrape-config.yml: {want:?}"
    );
    for (file, endpoints) in [
        (
            "kubernetes/base/monitoring/podmonitor.yaml",
            "podMetricsEndpoints",
        ),
        (
            "kubernetes/base/monitoring/servicemonitor.yaml",
            "endpoints",
        ),
    ] {
        let m = read_yaml(file);
        assert_eq!(m["metadata"]["namespace"], "pinflow", "{file}");
        assert_eq!(
            m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"], "pinflow",
            "{file}"
        );
        assert_eq!(m["spec"]["attachMetadata"]["node"], true, "{file}");
        let ep = &m["spec"][endpoints];
        assert_eq!(ep.as_sequence().map(Vec::len), Some(1), "{file}");
        assert_eq!(ep[0]["port"], "metrics", "{file}");
        let r = &ep[0]["relabelings"];
        assert_eq!(
            relabel_sources(r, false),
            want,
            "{file}: same labels as scrape-config.yml"
        );
        assert!(
            r.as_sequence()
                .expect("relabelings")
                .iter()
                .any(|x| x["targetLabel"] == "job" && x["replacement"] == "pinflow"),
            "{file}: job=\"pinflow\", which the rules select on"
        );
    }
}

/// The link alerts (`pinflow.links`) evaluated by a real Prometheus on what a real pinflow exports
/// from a real OVS: a BFD+CFM session over a veth pair between two bridges and a VXLAN tunnel whose
/// egress device is the end of another veth pair, and a port whose device does not exist
/// (`OvsInterfaceError`). The rules are the shipped ones with each `for` of the group shortened
/// to 1 s; what must match is the metric names, labels and templates.
#[test]
fn link_alerts_fire_on_a_real_bfd_session_and_tunnel_carrier() {
    let name = "link_alerts_fire_on_a_real_bfd_session_and_tunnel_carrier";
    if !ovs::available(name) || !require_privileged(name, &["prometheus", "promtool", "ip"]) {
        return;
    }
    use pinflow_tests::veth::Veth;
    let tag = std::process::id() & 0xffff;
    let ovs = Ovs::start();
    let (bfd, tun) = (
        Veth::new(&format!("pfa{tag:x}d")),
        Veth::new(&format!("pfa{tag:x}t")),
    );
    let (br0, br1) = ("pfa-br0", "pfa-br1");
    for (br, dev, mpid) in [(br0, &bfd.a, 1), (br1, &bfd.b, 2)] {
        ovs.add_empty_bridge(br, "secure");
        ovs.add_bfd_cfm_port(br, dev, mpid);
    }
    // The tunnel leaves through tun.a.
    ovs.add_vxlan_ports(br0, &tun.a, &[("pfa-vx", 0)]);
    let run_dir = ovs.run_dir().to_string_lossy().into_owned();
    let pf = Pinflow::start(
        "[pinning]\nebpf = false\n",
        &["--ovs-run-dir", &run_dir, "--no-collector.pinning"],
    );
    let value = |family: &str, want: &[(&str, &str)]| -> Option<f64> {
        select(&pf.scrape(), family, want).first().map(|s| s.value)
    };
    let ends = [(br0, bfd.a.as_str()), (br1, bfd.b.as_str())];
    let forwarding = |want: f64| {
        ends.iter().all(|(br, port)| {
            value(
                "pinflow_ovs_interface_bfd_forwarding",
                &[("bridge", br), ("port", port)],
            ) == Some(want)
        })
    };
    let cfm_fault = |want: f64| {
        ends.iter().all(|(br, port)| {
            value(
                "pinflow_ovs_interface_cfm_fault",
                &[("bridge", br), ("port", port)],
            ) == Some(want)
        })
    };
    let healthy = || {
        forwarding(1.0)
            && cfm_fault(0.0)
            && value(
                "pinflow_ovs_tunnel_egress_carrier_up",
                &[("device", tun.a.as_str())],
            ) == Some(1.0)
    };
    assert!(
        wait_for(Duration::from_secs(30), || healthy().then_some(())).is_some(),
        "BFD, CFM and the tunnel never all up:\n{}",
        pf.log()
    );

    // Prometheus starts on the healthy testbed (no history of the start-up), with the rules.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rules = read_yaml(RULES);
    for g in rules["groups"].as_sequence_mut().expect("groups") {
        if g["name"] != "pinflow.links" {
            continue;
        }
        for r in g["rules"].as_sequence_mut().expect("rules") {
            if r.get("for").is_some() {
                r["for"] = "1s".into();
            }
        }
    }
    let rules_file = dir.path().join("rules.yml");
    write_yaml(&rules_file, &rules);
    let pods = json!([pod_target(
        pf.addr,
        "pinflow",
        "metrics",
        "Running",
        "hv-r01-01"
    )]);
    let mut cfg = runnable_prometheus_config(
        "prometheus/scrape-config.yml",
        dir.path(),
        &pods,
        "a",
        &[free_addr()],
    );
    cfg["rule_files"] = vec![Yaml::from(rules_file.to_string_lossy().into_owned())].into();
    let prom = Prometheus::start(&cfg);
    prom.one_series(
        "pinflow_ovs_tunnel_egress_carrier_up{instance=\"hv-r01-01\"} == 1",
        Duration::from_secs(30),
    );
    let link_alerts = |state: &str| -> Vec<BTreeMap<String, String>> {
        let v = get_json(prom.web, "/api/v1/alerts").unwrap_or_default();
        let mut got: Vec<BTreeMap<String, String>> = v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| {
                a["state"] == state
                    && a["labels"]["alertname"].as_str().is_some_and(|n| {
                        n.starts_with("OvsBfd")
                            || n.starts_with("OvsCfm")
                            || n.starts_with("OvsTunnel")
                            || n == "OvsInterfaceError"
                    })
            })
            .filter_map(|a| {
                let mut l: BTreeMap<String, String> =
                    serde_json::from_value(a["labels"].clone()).ok()?;
                for k in ["job", "zone", "rack", "instance", "severity", "scope"] {
                    l.remove(k);
                }
                l.insert(
                    "summary".into(),
                    a["annotations"]["summary"].as_str()?.to_string(),
                );
                Some(l)
            })
            .collect();
        got.sort();
        got
    };
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(link_alerts("firing"), [], "healthy: nothing fires");
    assert_eq!(link_alerts("pending"), [], "healthy: nothing pending");

    // The BFD/CFM link and the tunnel's egress device lose carrier.
    let t0 = Instant::now();
    bfd.set(&bfd.b, false);
    tun.set(&tun.b, false);
    let session = |br: &str, port: &str, what: &str| {
        let mut l = labels(&[("alertname", what), ("bridge", br), ("port", port)]);
        let summary = match what {
            "OvsBfdSessionDown" => format!("BFD on {port} of hv-r01-01 does not forward"),
            "OvsCfmFault" => format!("CFM fault on {port} of hv-r01-01"),
            "OvsCfmFlapping" => format!("CFM on {port} of hv-r01-01 is flapping"),
            _ => format!("BFD on {port} of hv-r01-01 is flapping"),
        };
        l.insert("summary".into(), summary);
        l
    };
    let mut want = vec![
        labels(&[
            ("alertname", "OvsTunnelEgressCarrierDown"),
            ("device", &tun.a),
            (
                "summary",
                &format!("Tunnel egress device {} of hv-r01-01 has no carrier", tun.a),
            ),
        ]),
        session(br0, &bfd.a, "OvsBfdSessionDown"),
        session(br1, &bfd.b, "OvsBfdSessionDown"),
        session(br0, &bfd.a, "OvsCfmFault"),
        session(br1, &bfd.b, "OvsCfmFault"),
    ];
    want.sort();
    let fired = wait_for(Duration::from_secs(40), || {
        (link_alerts("firing") == want).then_some(())
    });
    assert!(
        fired.is_some(),
        "firing {:#?}\nwanted {want:#?}\n{}",
        link_alerts("firing"),
        prom.log()
    );
    eprintln!(
        "link alerts firing {:?} after the links went down (CFM needs ~5 s, `for` shortened to 1 s)",
        t0.elapsed()
    );
    let v = get_json(prom.web, "/api/v1/alerts").expect("alerts");
    let desc = v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["labels"]["alertname"] == "OvsBfdSessionDown")
        .and_then(|a| a["annotations"]["description"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        desc.contains("the session is down"),
        "the description reads the live state: {desc}"
    );

    // Back up, then two more down/up cycles: more than 4 forwarding changes and more than 4
    // CFM fault changes in the hour flap. Each phase waits until both protocols saw it, so the
    // number of changes (6 each) does not depend on how long a phase happened to last.
    tun.set(&tun.b, true);
    for cycle in 0..3 {
        if cycle > 0 {
            bfd.set(&bfd.b, false);
            assert!(
                wait_for(Duration::from_secs(20), || (forwarding(0.0)
                    && cfm_fault(1.0))
                .then_some(()))
                .is_some(),
                "BFD or CFM not down in cycle {cycle}"
            );
        }
        bfd.set(&bfd.b, true);
        assert!(
            wait_for(Duration::from_secs(20), || (forwarding(1.0)
                && cfm_fault(0.0))
            .then_some(()))
            .is_some(),
            "BFD or CFM not back in cycle {cycle}:\n{}",
            pf.log()
        );
    }
    let mut want = vec![
        session(br0, &bfd.a, "OvsBfdFlapping"),
        session(br1, &bfd.b, "OvsBfdFlapping"),
        session(br0, &bfd.a, "OvsCfmFlapping"),
        session(br1, &bfd.b, "OvsCfmFlapping"),
    ];
    want.sort();
    let settled = wait_for(Duration::from_secs(30), || {
        (healthy() && link_alerts("firing") == want && link_alerts("pending").is_empty())
            .then_some(())
    });
    assert!(
        settled.is_some(),
        "after the links came back: firing {:#?}, pending {:#?}\nwanted {want:#?}",
        link_alerts("firing"),
        link_alerts("pending")
    );

    // A port whose device does not exist: OvsInterfaceError quoting OVS's text, gone with the port.
    let bad = format!("pfa{tag:x}x");
    let t1 = Instant::now();
    ovs.vsctl(&["add-port", br0, &bad]);
    let flapping = want.clone();
    want.push(labels(&[
        ("alertname", "OvsInterfaceError"),
        ("bridge", br0),
        ("port", &bad),
        (
            "summary",
            &format!("OVS port {bad} on hv-r01-01 is in error"),
        ),
    ]));
    want.sort();
    let fired = wait_for(Duration::from_secs(30), || {
        (link_alerts("firing") == want).then_some(())
    });
    assert!(
        fired.is_some(),
        "firing {:#?}\nwanted {want:#?}\n{}",
        link_alerts("firing"),
        prom.log()
    );
    eprintln!("OvsInterfaceError firing {:?} after add-port", t1.elapsed());
    let v = get_json(prom.web, "/api/v1/alerts").expect("alerts");
    let desc = v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["labels"]["alertname"] == "OvsInterfaceError")
        .and_then(|a| a["annotations"]["description"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        desc.contains(&format!(
            "\"could not open network device {bad} (No such device)\""
        )) && desc.contains("no running instance owns it"),
        "the description quotes OVS's error: {desc}"
    );
    ovs.vsctl(&["del-port", br0, &bad]);
    let resolved = wait_for(Duration::from_secs(30), || {
        (link_alerts("firing") == flapping && link_alerts("pending").is_empty()).then_some(())
    });
    assert!(
        resolved.is_some(),
        "after the port went: firing {:#?}",
        link_alerts("firing")
    );
}
