//! A real Prometheus scraping a real pinflow and `promtool` on the exposition (the deploy/ rules,
//! scrape configs and Alertmanager config are checked in alerting.rs).

use pinflow_tests::libvirt::{self, DomainSpec};
use pinflow_tests::pinflow::Pinflow;
use pinflow_tests::scrape::{http_get, select};
use pinflow_tests::{require_privileged, wait_for};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut c = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    if let Some(input) = stdin {
        c.stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
    }
    drop(c.stdin.take());
    let out = c.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Kills the child on drop.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn promtool_accepts_a_real_scrape_with_a_nova_domain() {
    if !require_privileged(
        "promtool_accepts_a_real_scrape_with_a_nova_domain",
        &["promtool", "virsh"],
    ) {
        return;
    }
    libvirt::ensure_daemons().expect("libvirt testbed");
    let pf = Pinflow::start("", &[]);
    let _dom = libvirt::start(&DomainSpec::pinned("pf-prom", &["1"]).with_nova(
        "prom \"quoted\" 1",
        "qa",
        "m1.tiny",
    ))
    .expect("domain");
    let text = wait_for(Duration::from_secs(10), || {
        let t = pf.get("/metrics");
        t.contains("domain=\"pf-prom\"").then_some(t)
    })
    .expect("pf-prom in /metrics")
    .0;
    // The display name's quotes are escaped in the exposition and round-trip through the parser.
    let s = pinflow_tests::scrape::parse(&text);
    assert_eq!(
        select(&s, "pinflow_instance_info", &[("domain", "pf-prom")])[0].labels["name"],
        "prom \"quoted\" 1"
    );
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics:\n{out}\n---\n{text}");
    // Self metrics of every pinning source are present.
    for src in ["libvirt", "procfs", "sched_bpf"] {
        assert_eq!(
            select(&s, "pinflow_source_up", &[("source", src)]).len(),
            1,
            "{src}"
        );
        assert_eq!(
            select(&s, "pinflow_source_errors_total", &[("source", src)]).len(),
            1,
            "{src}"
        );
    }
    assert_eq!(select(&s, "pinflow_build_info", &[]).len(), 1);
}

#[test]
fn prometheus_scrapes_pinflow_openmetrics() {
    if !require_privileged("prometheus_scrapes_pinflow_openmetrics", &["prometheus"]) {
        return;
    }
    let pf = Pinflow::start("", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: ['{}']\n\
             scrape_configs:\n  - job_name: pinflow\n    static_configs: [{{targets: ['{}']}}]\n",
            deploy().join("prometheus/pinflow.rules.yml").display(),
            pf.addr
        ),
    )
    .expect("config");
    let (child, web) = pinflow_tests::prometheus::spawn(&cfg, dir.path());
    let prom = Kill(child);
    let query = |q: &str| -> Option<serde_json::Value> {
        let path = format!(
            "/api/v1/query?query={}",
            q.replace(' ', "%20")
                .replace('"', "%22")
                .replace('{', "%7B")
                .replace('}', "%7D")
        );
        let (status, body) = http_get(web, &path, Duration::from_secs(2)).ok()?;
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    };
    let up = wait_for(Duration::from_secs(30), || {
        let v = query("up{job=\"pinflow\"}")?;
        (v["data"]["result"][0]["value"][1] == "1").then_some(())
    });
    let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    assert!(
        up.is_some(),
        "Prometheus never scraped pinflow successfully:\n{log}"
    );
    let src = wait_for(Duration::from_secs(10), || {
        let v = query("pinflow_source_up{source=\"libvirt\"}")?;
        (v["data"]["result"].as_array()?.len() == 1).then_some(())
    });
    assert!(src.is_some(), "pinflow_source_up not in Prometheus");
    // Prometheus stored what it scraped.
    let rec = wait_for(Duration::from_secs(10), || {
        let v = query("scrape_samples_scraped{job=\"pinflow\"}")?;
        let n: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
        (n > 0.0).then_some(n)
    });
    assert!(rec.is_some(), "no samples scraped");
    drop(prom);
}
