//! The one-shot commands tell the truth: `pinflow check`, `pinflow pinning` and `pinflow flows`
//! exit with their documented status (0 clean, 1 found, 2 error), say why when they cannot read a
//! source, end quietly on a closed pipe and print JSON on `--json`. The captured host needs no
//! privileges; the OVS parts run a private, real Open vSwitch.

use pinflow_tests::captured::CapturedHost;
use pinflow_tests::ovs::{self, Ovs};
use pinflow_tests::pinflow::bin;
use std::process::{Command, Output, Stdio};

/// Runs `pinflow ARGS…` to completion.
fn pinflow(args: &[&str], extra: &[String]) -> Output {
    Command::new(bin())
        .args(args)
        .args(extra)
        .output()
        .expect("run pinflow")
}

/// Runs `pinflow ARGS…` with its stdout already closed by the reader (as `| head -1` does once
/// it has its line): the command must end quietly with its own exit status, not panic (101).
fn pinflow_closed_pipe(args: &[&str], extra: &[String]) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pinflow");
    drop(child.stdout.take());
    child.wait_with_output().expect("wait pinflow")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A config file in a temp dir (kept alive with the returned guard).
fn config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("pinflow.toml");
    std::fs::write(&p, text).expect("write config");
    (dir, p.to_string_lossy().into_owned())
}

/// The `{source, state, detail}` entries of `pinflow check --json`.
fn check_states(o: &Output) -> Vec<(String, String, String)> {
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)));
    v["sources"]
        .as_array()
        .unwrap_or_else(|| panic!("no sources in {v:#}"))
        .iter()
        .map(|s| {
            let name = match s["bridge"].as_str() {
                Some(b) => format!("{}/{b}", s["source"].as_str().unwrap_or_default()),
                None => s["source"].as_str().unwrap_or_default().to_string(),
            };
            (
                name,
                s["state"].as_str().unwrap_or_default().to_string(),
                s["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn state_of<'a>(states: &'a [(String, String, String)], source: &str) -> (&'a str, &'a str) {
    states
        .iter()
        .find(|(s, _, _)| s == source)
        .map(|(_, st, d)| (st.as_str(), d.as_str()))
        .unwrap_or_else(|| panic!("{source} not checked: {states:?}"))
}

#[test]
fn check_exits_by_the_sources_it_enables_and_reads_a_captured_proc_root() {
    let host = CapturedHost::new();
    let (_d, cfg) = config("[pinning]\nebpf = false\n");
    let pinning_only = [
        "check",
        "--json",
        "--config",
        &cfg,
        "--no-collector.flows",
        "--no-collector.datapath",
    ];
    let out = pinflow(&pinning_only, &host.args());
    let states = check_states(&out);
    // The captured procfs/cgroupfs tree is what `serve` reads fine: up, with what was found.
    let (state, detail) = state_of(&states, "procfs");
    assert_eq!(state, "up", "{states:?}");
    assert!(
        detail.contains("1 process(es)") && detail.contains("cgroup v1"),
        "{detail}"
    );
    assert_eq!(state_of(&states, "libvirt").0, "up", "{states:?}");
    assert_eq!(state_of(&states, "sched_bpf").0, "off", "{states:?}");
    for src in [
        "ovsdb",
        "openflow",
        "ovs_datapath",
        "ovs_datapath_bpf",
        "ovs_unixctl",
        "ovsdb_server_unixctl",
    ] {
        assert_eq!(state_of(&states, src).0, "off", "{src}: {states:?}");
    }
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // A proc root that is no procfs: down with the reason, exit status 1.
    let mut args = host.args();
    let i = args.iter().position(|a| a == "--proc-root").expect("flag") + 1;
    args[i] = "/nonexistent-pinflow-proc".into();
    let out = pinflow(&pinning_only, &args);
    let states = check_states(&out);
    let (state, detail) = state_of(&states, "procfs");
    assert_eq!(state, "down");
    assert!(
        detail.contains("/nonexistent-pinflow-proc") && detail.contains("No such file"),
        "{detail}"
    );
    assert_eq!(out.status.code(), Some(1));

    // The flows collector on (the default) without OVS: ovsdb and openflow are down, and say why.
    let out = pinflow(
        &[
            "check",
            "--json",
            "--config",
            &cfg,
            "--no-collector.datapath",
            "--ovs-run-dir",
            "/nonexistent-pinflow-ovs",
        ],
        &host.args(),
    );
    let states = check_states(&out);
    let (state, detail) = state_of(&states, "ovsdb");
    assert_eq!(state, "down");
    assert!(
        detail.contains("/nonexistent-pinflow-ovs/db.sock"),
        "{detail}"
    );
    assert_eq!(state_of(&states, "openflow").0, "down", "{states:?}");
    assert_eq!(out.status.code(), Some(1));

    // The table form says the same, one source per line.
    let out = pinflow(
        &[
            "check",
            "--config",
            &cfg,
            "--no-collector.pinning",
            "--no-collector.datapath",
            "--ovs-run-dir",
            "/nonexistent-pinflow-ovs",
        ],
        &[],
    );
    let text = stdout(&out);
    let row = |src: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(src))
            .unwrap_or_else(|| panic!("no {src} row in\n{text}"))
            .split_whitespace()
            .nth(1)
            .map(str::to_string)
    };
    assert_eq!(row("config").as_deref(), Some("ok"), "{text}");
    assert_eq!(row("ovsdb").as_deref(), Some("down"), "{text}");
    assert_eq!(row("libvirt").as_deref(), Some("off"), "{text}");
    assert_eq!(out.status.code(), Some(1));

    // A closed pipe ends the output quietly, with the command's own exit status.
    let out = pinflow_closed_pipe(&pinning_only, &host.args());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn pinning_exits_2_when_blind_1_on_drift_and_0_when_clean() {
    let host = CapturedHost::new();
    let out = pinflow(&["pinning"], &host.args());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("no pinning drift"));

    // libvirt's state dir unreadable: no table that could read as "no drift", the reason on stderr.
    let mut args = host.args();
    let i = args
        .iter()
        .position(|a| a == "--libvirt-state-dir")
        .expect("flag")
        + 1;
    args[i] = "/nonexistent-pinflow-libvirt".into();
    let out = pinflow(&["pinning"], &args);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("/nonexistent-pinflow-libvirt"),
        "{}",
        stderr(&out)
    );

    // procfs unreadable: the same.
    let mut args = host.args();
    let i = args.iter().position(|a| a == "--proc-root").expect("flag") + 1;
    args[i] = "/nonexistent-pinflow-proc".into();
    let out = pinflow(&["pinning", "--json"], &args);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(stderr(&out).contains("procfs"), "{}", stderr(&out));

    // One state file unreadable: the rest is printed, the file is named, exit status 2.
    host.add("libvirt/bad/truncated.xml", "broken.xml");
    let out = pinflow(&["pinning"], &host.args());
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("fx-nova"), "{}", stdout(&out));
    assert!(stderr(&out).contains("broken.xml"), "{}", stderr(&out));
    std::fs::remove_file(host.state.path().join("broken.xml")).expect("rm");

    // Drift: exit status 1, in both forms; a closed pipe changes nothing but the output.
    host.add("libvirt/run-libvirt-qemu/fx-cpuset.xml", "fx-cpuset.xml");
    for form in [&["pinning"][..], &["pinning", "--json"]] {
        let out = pinflow(form, &host.args());
        assert_eq!(out.status.code(), Some(1), "{form:?}: {}", stderr(&out));
        let out = pinflow_closed_pipe(form, &host.args());
        assert_eq!(out.status.code(), Some(1), "{form:?}: {}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    }
}

/// Two bridges with a few clean flows on a private OVS.
fn two_bridges() -> Ovs {
    let ovs = Ovs::start();
    for (br, base) in [("br-pfa", 1), ("br-pfb", 11)] {
        let p1 = format!("pfos{base}");
        let p2 = format!("pfos{}", base + 1);
        ovs.add_bridge(br, &[(&p1, 1), (&p2, 2)]);
        ovs.ofctl(&["add-flow", br, "table=0,priority=0,actions=drop"]);
        ovs.ofctl(&[
            "add-flow",
            br,
            "table=0,priority=10,in_port=1,actions=output:2",
        ]);
    }
    ovs
}

#[test]
fn flows_names_each_bridge_refuses_unknown_ones_and_exits_by_what_it_found() {
    if !ovs::available("flows_names_each_bridge_refuses_unknown_ones_and_exits_by_what_it_found") {
        return;
    }
    let ovs = two_bridges();
    let run = vec![
        "--ovs-run-dir".to_string(),
        ovs.run_dir().to_string_lossy().into_owned(),
    ];

    // Several bridges: a header before each, each bridge's flows under its own header.
    let out = pinflow(&["flows", "--no-stats"], &run);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let sections: Vec<(&str, Vec<&str>)> = text
        .split("==> ")
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (head, body) = s.split_once(" <==\n").unwrap_or_else(|| panic!("{text}"));
            (head, body.lines().filter(|l| !l.is_empty()).collect())
        })
        .collect();
    assert_eq!(
        sections.iter().map(|(b, _)| *b).collect::<Vec<_>>(),
        ["br-pfa", "br-pfb"],
        "{text}"
    );
    for (br, lines) in &sections {
        let want = ovs.ofctl(&["--no-stats", "--no-names", "dump-flows", br]);
        let mut want: Vec<&str> = want.lines().collect();
        let mut got = lines.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{br}");
    }
    // One bridge: no header (the output stays exactly ovs-ofctl's).
    let out = pinflow(&["flows", "--no-stats", "--bridge", "br-pfb"], &run);
    assert!(!stdout(&out).contains("==>"), "{}", stdout(&out));

    // --json: every bridge and flow.
    let out = pinflow(&["flows", "--json"], &run);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let bridges = v["bridges"].as_array().expect("bridges");
    assert_eq!(bridges.len(), 2, "{v:#}");
    assert_eq!(bridges[0]["bridge"], "br-pfa");
    let flows = bridges[0]["flows"].as_array().expect("flows");
    assert_eq!(flows.len(), 2, "{v:#}");
    let f = flows
        .iter()
        .find(|f| f["priority"] == 10)
        .unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(f["table"], 0);
    assert_eq!(f["cookie"], "0x0");
    assert_eq!(f["flow"], "priority=10,in_port=1 actions=output:2");
    assert!(f["n_packets"].is_u64(), "{f}");

    // An unknown bridge: said so, with the bridges there are; exit status 2.
    for extra in [&[][..], &["--dirty"]] {
        let args = [&["flows", "--bridge", "br-nope"][..], extra].concat();
        let out = pinflow(&args, &run);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("no such bridge: br-nope (bridges: br-pfa, br-pfb)"),
            "{err}"
        );
        assert!(!err.contains("No such file"), "{err}");
    }

    // --dirty: 0 on clean bridges, 1 once a flow is dirty (table and JSON alike).
    let out = pinflow(&["flows", "--dirty"], &run);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("no dirty flows"));
    ovs.ofctl(&[
        "add-flow",
        "br-pfb",
        "table=0,priority=5,in_port=9,actions=drop",
    ]);
    let out = pinflow(&["flows", "--dirty"], &run);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = pinflow(&["flows", "--dirty", "--json"], &run);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let dirty = v.as_array().expect("array of dirty flows");
    assert_eq!(dirty.len(), 1, "{v:#}");
    assert_eq!(dirty[0]["bridge"], "br-pfb");
    assert_eq!(dirty[0]["rule"], "in_port_missing");
    assert_eq!(dirty[0]["flow"], "priority=5,in_port=9 actions=drop");

    // A closed pipe: quiet, no bridge blamed for it.
    for args in [&["flows"][..], &["flows", "--dirty"]] {
        let out = pinflow_closed_pipe(args, &run);
        let want = if args.contains(&"--dirty") { 1 } else { 0 };
        assert_eq!(out.status.code(), Some(want), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{args:?}: {}", stderr(&out));
    }

    // check: ovsdb and every bridge's OpenFlow session up (exit 0); the switch gone: each
    // bridge down with its reason (exit 1).
    let check = [
        "check",
        "--json",
        "--no-collector.pinning",
        "--no-collector.datapath",
    ];
    let out = pinflow(&check, &run);
    let states = check_states(&out);
    assert_eq!(state_of(&states, "ovsdb").0, "up", "{states:?}");
    for br in ["openflow/br-pfa", "openflow/br-pfb"] {
        let (state, detail) = state_of(&states, br);
        assert_eq!(state, "up", "{states:?}");
        // Two ports and the bridge's LOCAL port.
        assert!(detail.contains("3 port(s)"), "{detail}");
    }
    assert_eq!(out.status.code(), Some(0), "{states:?}");
    ovs.stop("ovs-vswitchd");
    let out = pinflow(&check, &run);
    let states = check_states(&out);
    assert_eq!(state_of(&states, "ovsdb").0, "up", "{states:?}");
    for br in ["openflow/br-pfa", "openflow/br-pfb"] {
        let (state, detail) = state_of(&states, br);
        assert_eq!(state, "down", "{states:?}");
        assert!(detail.contains(".mgmt"), "{detail}");
    }
    assert_eq!(out.status.code(), Some(1));
}
