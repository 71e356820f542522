//! The log an operator reads: a finding is logged once when it appears and once when it clears;
//! a source logs its state changes (down with the reason, back up), not every reconnect retry.
//! A private, real Open vSwitch whose ovs-vswitchd is stopped and started again.

use pinflow_tests::captured::CapturedHost;
use pinflow_tests::ovs::{self, Ovs};
use pinflow_tests::pinflow::Pinflow;
use pinflow_tests::scrape::select;
use pinflow_tests::wait_for;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// Lines of pinflow's log that contain every one of `words`.
fn lines(pf: &Pinflow, words: &[&str]) -> Vec<String> {
    pf.log()
        .lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .map(str::to_string)
        .collect()
}

fn wait_line(pf: &Pinflow, words: &[&str]) {
    let found = wait_for(WAIT, || (!lines(pf, words).is_empty()).then_some(()));
    assert!(found.is_some(), "no log line with {words:?}:\n{}", pf.log());
}

#[test]
fn findings_and_source_state_changes_are_logged_once() {
    if !ovs::available("findings_and_source_state_changes_are_logged_once") {
        return;
    }
    let ovs = Ovs::start();
    ovs.add_bridge("br-pflog", &[("pflg1", 1), ("pflg2", 2)]);
    ovs.ofctl(&["add-flow", "br-pflog", "table=0,priority=0,actions=drop"]);
    let host = CapturedHost::new();
    let mut args = vec![
        "--ovs-run-dir".to_string(),
        ovs.run_dir().to_string_lossy().into_owned(),
        "--no-collector.datapath".to_string(),
    ];
    args.extend(host.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pf = Pinflow::start("[pinning]\ninterval_seconds = 0.2\nebpf = false\n", &args);
    wait_line(&pf, &["OpenFlow session up", "br-pflog"]);
    wait_line(&pf, &["source up", "openflow"]);

    // A dirty flow: one line when it appears, one when it is gone.
    ovs.ofctl(&[
        "add-flow",
        "br-pflog",
        "table=0,priority=5,in_port=9,actions=drop",
    ]);
    wait_line(&pf, &["finding appeared", "in_port_missing", "in_port=9"]);
    ovs.ofctl(&[
        "del-flows",
        "br-pflog",
        "--strict",
        "table=0,priority=5,in_port=9",
    ]);
    wait_line(&pf, &["finding cleared", "in_port_missing", "in_port=9"]);
    assert_eq!(lines(&pf, &["finding appeared", "in_port=9"]).len(), 1);
    assert_eq!(lines(&pf, &["finding cleared", "in_port=9"]).len(), 1);

    // Pinning drift: the same.
    host.add("libvirt/run-libvirt-qemu/fx-cpuset.xml", "fx-cpuset.xml");
    wait_line(
        &pf,
        &["finding appeared", "pinning drift", "domain=fx-cpuset"],
    );
    std::fs::remove_file(host.state.path().join("fx-cpuset.xml")).expect("rm");
    wait_line(
        &pf,
        &["finding cleared", "pinning drift", "domain=fx-cpuset"],
    );
    std::thread::sleep(Duration::from_millis(600));
    // Two vCPUs drift (overlap): one line each, over several passes.
    assert_eq!(
        lines(&pf, &["finding appeared", "domain=fx-cpuset"]).len(),
        2,
        "{}",
        pf.log()
    );

    // The switch goes away: the session retries behind its backoff, logging the change once
    // (and a new reason at most once), not per retry.
    ovs.stop("ovs-vswitchd");
    let errors = || {
        select(
            &pf.scrape(),
            "pinflow_source_errors_total",
            &[("source", "openflow")],
        )
        .first()
        .map_or(0.0, |s| s.value)
    };
    let retried = wait_for(WAIT, || (errors() >= 3.0).then_some(()));
    assert!(retried.is_some(), "retries: {}\n{}", errors(), pf.log());
    let down = lines(&pf, &["OpenFlow session", "down", "br-pflog"]);
    assert!(
        !down.is_empty() && down.len() <= 2,
        "{} retries, {} log lines:\n{}",
        errors(),
        down.len(),
        down.join("\n")
    );
    assert_eq!(
        lines(&pf, &["source down", "source=openflow"]).len(),
        1,
        "{}",
        pf.log()
    );

    // Back: said once, with what it was.
    ovs.start_vswitchd();
    wait_line(&pf, &["OpenFlow session back up", "br-pflog"]);
    wait_line(&pf, &["source back up", "source=openflow"]);

    // /api/v1/sources gives durations in seconds (a number), not serde's {secs, nanos}.
    let sources: serde_json::Value =
        serde_json::from_str(&pf.get("/api/v1/sources")).expect("json");
    let took = &sources["openflow"]["last_duration_seconds"];
    assert!(
        took.as_f64().is_some_and(|s| (0.0..10.0).contains(&s)),
        "{sources:#}"
    );
    assert!(sources["openflow"].get("last_duration").is_none());
}
