//! The one table of `cargo xtask bench`: every part adds its rows (what, goal, measured, whether
//! the goal is met, and for a missed goal what limits it) and the run ends with all of them
//! together; `--write FILE` also writes them as markdown (BENCHMARKS.md) with the machine, commit
//! and commands they were measured with, and the plots (SVG, next to the file).
//!
//! Rows go through a JSON-lines file in `target/`, so that parts run in a child process (the flow
//! bench re-runs itself optimised) land in the same table. A top-level `cargo xtask bench` empties
//! it first; the children it starts carry `PINFLOW_BENCH_CHILD=1` and append. Under
//! `PINFLOW_BENCH_QUICK=1` (`--quick`) every row is marked quick.
//!
//! [`EXPECTED`] lists every row a full run makes, by [`key`] (the `what` with its numbers
//! blanked, so that `--quick`'s smaller sizes keep the full run's keys): [`missing`] is what
//! `cargo xtask test` checks after a `--quick` run.

use crate::util::workspace_root;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// One measured claim.
pub struct Row {
    /// The bench part (`sched`, `flows`, `latency`, …).
    pub part: String,
    /// What is measured, against what.
    pub what: String,
    /// The goal (an issue's number), or empty.
    pub goal: String,
    /// The measured figures: pinflow's, the alternative's, their ratio.
    pub measured: String,
    /// Whether the goal is met (`None`: no goal).
    pub met: Option<bool>,
    /// What limits it, when the goal is missed (or the row is skipped).
    pub limits: String,
    /// Measured by `--quick` (reduced sizes and windows).
    pub quick: bool,
}

fn rows_file() -> PathBuf {
    workspace_root().join("target/bench-rows.jsonl")
}

fn plots_file() -> PathBuf {
    workspace_root().join("target/bench-plots.jsonl")
}

/// Whether this run is `--quick`.
pub fn quick() -> bool {
    std::env::var_os("PINFLOW_BENCH_QUICK").is_some_and(|v| v == "1")
}

/// Starts a new table, unless this process is a child of a bench run.
pub fn begin() -> Result<()> {
    if std::env::var_os("PINFLOW_BENCH_CHILD").is_none() {
        for f in [rows_file(), plots_file()] {
            if let Some(d) = f.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(&f, "").with_context(|| format!("cannot write {}", f.display()))?;
        }
    }
    Ok(())
}

fn append(file: &Path, line: &str) {
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(file)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        eprintln!("bench table: cannot record to {}: {e}", file.display());
    }
}

/// Adds a row.
pub fn add(part: &str, what: &str, goal: &str, measured: String, met: Option<bool>) {
    add_limited(part, what, goal, measured, met, "");
}

/// Adds a row with a note on what limits it (shown when the goal is missed or nothing was
/// measured).
pub fn add_limited(
    part: &str,
    what: &str,
    goal: &str,
    measured: String,
    met: Option<bool>,
    limits: &str,
) {
    let line = serde_json::json!({
        "part": part, "what": what, "goal": goal,
        "measured": measured, "met": met, "limits": limits, "quick": quick(),
    })
    .to_string();
    append(&rows_file(), &line);
}

/// Adds one point of a plot: `plot` names the SVG, `series` the line or bar, (`x`, `y`) the value
/// (`x` is ignored by bar plots, whose bars are the series in order).
pub fn point(plot: &str, series: &str, x: f64, y: f64) {
    let line = serde_json::json!({"plot": plot, "series": series, "x": x, "y": y}).to_string();
    append(&plots_file(), &line);
}

fn read() -> Vec<Row> {
    std::fs::read_to_string(rows_file())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            Row {
                part: text("part"),
                what: text("what"),
                goal: text("goal"),
                measured: text("measured"),
                met: v["met"].as_bool(),
                limits: text("limits"),
                quick: v["quick"].as_bool().unwrap_or(false),
            }
        })
        .collect()
}

/// A row's key: its part and `what` with every run of digits (and the spaces or dots inside a
/// number) replaced by `#`, so that one position of a size list keeps its key at any size.
pub fn key(part: &str, what: &str) -> String {
    let mut out = format!("{part}: ");
    let mut chars = what.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while let Some(&n) = chars.peek() {
                let joins = (n == ' ' || n == '.' || n == ',')
                    && chars.clone().nth(1).is_some_and(|d| d.is_ascii_digit());
                if n.is_ascii_digit() || joins {
                    chars.next();
                } else {
                    break;
                }
            }
            out.push('#');
        } else {
            out.push(c);
        }
    }
    out
}

/// Every row of a full `cargo xtask bench` (by [`key`]), in the order the parts make them.
pub const EXPECTED: &[&str] = &[
    "sched: ns added per context switch: pinflow's sched_switch probe vs the cheapest bpftrace one-liner",
    "sched: ns per switch over the empty tp_btf program (the floor of its attach type)",
    "serve: testbed domains: pinflow serve /metrics p# / p# (# scrapes) and RSS",
    "flows: # flows: ovs-ofctl dump-flows CPU",
    "flows: # flows: text parse CPU",
    "flows: # flows: ovs-vswitchd CPU during ovs-ofctl dump",
    "flows: # flows: ovs-vswitchd CPU during pinflow dump",
    "flows: # flows: --no-stats text bytes per flow",
    "flows: # flows: peak RSS, pinflow flows vs ovs-ofctl dump-flows",
    "flows: # flows: pinflow flows --no-stats CPU (whole process)",
    "flows: steady state: ovs-vswitchd applying the changes alone",
    "flows: steady state: pinflow serve CPU",
    "flows: steady state: ovs-vswitchd with pinflow (incl. changes)",
    "flows: steady state: ovs-vswitchd with # bare monitors (incl. changes)",
    "flows: steady state: cron ofctl+parse CPU / ovs-vswitchd (incl. changes)",
    "flows: steady state: total CPU pinflow+vswitchd per monitor vs cron",
    "flows: add-flow of a dirty flow → /metrics after a second without changes (median of #)",
    "flows: add-flow of a dirty flow → /metrics right after other changes (median of #)",
    "flows: pinflow serve RSS, # flows mirrored",
    "ovs: # ports, # flows: pinflow serve CPU per # s (flows + datapath collectors, interface_metrics, scraped every # s) vs the exporters' poll every # s (ovs-appctl ×# + ovs-vsctl list Interface + parse)",
    "ovs: # ports: ovs-vswitchd CPU per # s: idle / with pinflow / with the poll",
    "ovs: # ports: ovsdb-server CPU per # s: idle / with pinflow / with the poll",
    "ovs: # ports: total CPU per # s incl. ovsdb-server's extra over idle: pinflow vs the poll",
    "datapath: kernel-datapath families in the guest: series per datapath port and per host",
    "datapath: kernel datapath megaflow dump, # flows: pinflow flows --datapath vs ovs-dpctl dump-flows + parse",
    "latency: vCPU affinity changed (`taskset -p`) → /metrics",
    "latency: cgroup `cpuset.cpus` rewritten → /metrics",
    "latency: dirty flow added (`ovs-ofctl add-flow`) → /metrics",
    "pinning: # KVM domains × # vCPUs: pinflow CPU per # s idle, scraped every # s",
    "pinning: # KVM domains × # vCPUs: /metrics p# / p#",
    "pinning: # KVM domains × # vCPUs: pinflow VmHWM / VmRSS after the window",
    "pinning: fixture: # domains × # vCPUs: pinflow CPU per # s idle, scraped every # s",
    "pinning: fixture: # domains × # vCPUs: /metrics p# / p#",
    "pinning: fixture: # domains × # vCPUs: pinflow VmHWM / VmRSS after the window",
    "pinning: fixture in an overlap storm: # domains × # vCPUs: pinflow CPU per # s idle, scraped every # s",
    "pinning: fixture in an overlap storm: # domains × # vCPUs: /metrics p# / p#",
    "pinning: fixture in an overlap storm: # domains × # vCPUs: pinflow VmHWM / VmRSS after the window",
    "pinning: threads: # domains × # vCPUs: pinflow CPU per # s idle, scraped every # s",
    "pinning: threads: # domains × # vCPUs: /metrics p# / p#",
    "pinning: threads: # domains × # vCPUs: pinflow VmHWM / VmRSS after the window",
    "series: series per host, # instances × # ports, # bridges: pinflow vs the budget",
    "series: series per instance: pinflow vs prometheus-libvirt-exporter",
    "load: /metrics under HTTP abuse: p# / p# and RSS",
];

/// How many rows of each expected key a full run makes (sizes and domain counts repeat keys).
fn expected_counts() -> Vec<(&'static str, usize)> {
    EXPECTED
        .iter()
        .map(|k| {
            let n = if k.starts_with("flows: # flows:") {
                3
            } else if k.starts_with("pinning: # KVM")
                || k.starts_with("datapath: kernel datapath megaflow")
            {
                2
            } else {
                1
            };
            (*k, n)
        })
        .collect()
}

/// The expected rows this run lacks (as `key (have n of m)`), for the parts that ran.
pub fn missing(parts: &[&str]) -> Vec<String> {
    missing_in(&read(), parts)
}

fn missing_in(rows: &[Row], parts: &[&str]) -> Vec<String> {
    expected_counts()
        .into_iter()
        .filter(|(k, _)| parts.iter().any(|p| k.starts_with(&format!("{p}: "))))
        .filter_map(|(k, n)| {
            let have = rows.iter().filter(|r| key(&r.part, &r.what) == k).count();
            (have < n).then(|| format!("{k} (have {have} of {n})"))
        })
        .collect()
}

fn verdict(r: &Row) -> &'static str {
    match r.met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "",
    }
}

/// The rows as a markdown table.
fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| part | what | goal | measured (median, spread) | | what limits it |\n|---|---|---|---|---|---|\n",
    );
    let cell = |s: &str| s.replace('|', "\\|");
    for r in rows {
        let quick = if r.quick { " *(quick)*" } else { "" };
        let limits = if r.met == Some(false) && r.limits.is_empty() {
            "not analysed in this run"
        } else if r.met == Some(false) || r.measured.starts_with("skipped") {
            r.limits.as_str()
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "| {} | {}{quick} | {} | {} | {} | {} |",
            r.part,
            cell(&r.what),
            cell(&r.goal),
            cell(&r.measured),
            verdict(r),
            cell(limits)
        );
    }
    out
}

/// The machine: CPU model and count (`lscpu`), kernel, the CPU vulnerability mitigations.
fn machine() -> String {
    let lscpu = crate::util::output("lscpu", &[]).unwrap_or_default();
    let field = |k: &str| {
        lscpu
            .lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| "?".into())
    };
    let kernel = crate::util::output("uname", &["-r"]).unwrap_or_default();
    let mut mitigations = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/devices/system/cpu/vulnerabilities") {
        let mut v: Vec<(String, String)> = rd
            .flatten()
            .map(|e| {
                let status = std::fs::read_to_string(e.path()).unwrap_or_default();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    status.trim().to_string(),
                )
            })
            .collect();
        v.sort();
        let unaffected: Vec<String> = v
            .iter()
            .filter(|(_, s)| s == "Not affected")
            .map(|(n, _)| n.clone())
            .collect();
        mitigations = v
            .into_iter()
            .filter(|(_, s)| s != "Not affected")
            .map(|(n, s)| format!("{n}: {s}"))
            .collect();
        if !unaffected.is_empty() {
            mitigations.push(format!("not affected: {}", unaffected.join(", ")));
        }
    }
    format!(
        "- CPU: {} ({} CPUs, {} thread(s) per core, hypervisor {})\n- kernel: Linux {}\n- mitigations (/sys/devices/system/cpu/vulnerabilities): {}\n",
        field("Model name:"),
        field("CPU(s):"),
        field("Thread(s) per core:"),
        field("Hypervisor vendor:"),
        kernel.trim(),
        if mitigations.is_empty() {
            "?".into()
        } else {
            mitigations.join("; ")
        }
    )
}

/// The environment knobs of the parts (printed in the header when set).
const KNOBS: [&str; 10] = [
    "PINFLOW_BIN",
    "PINFLOW_BENCH_LOOPS",
    "PINFLOW_BENCH_REPS",
    "PINFLOW_BENCH_RUNS",
    "PINFLOW_BENCH_FLOWS_STEADY_SECS",
    "PINFLOW_BENCH_LATENCY_REPS",
    "PINFLOW_BENCH_SECS",
    "PINFLOW_BENCH_DOMAINS",
    "PINFLOW_BENCH_FIXTURE_DOMAINS",
    "PINFLOW_VM_KERNEL",
];

/// Prints the run's rows together and, with `write`, writes them (and the plots) to that file.
pub fn finish(command: &str, write: Option<&PathBuf>) -> Result<()> {
    if std::env::var_os("PINFLOW_BENCH_CHILD").is_some() {
        return Ok(());
    }
    let rows = read();
    let t = table(&rows);
    println!("\nAll rows of this run:\n{t}");
    if let Some(path) = write {
        let commit = crate::util::output("git", &["rev-parse", "--short", "HEAD"])
            .unwrap_or_default()
            .trim()
            .to_string();
        let dirty = crate::util::output("git", &["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|s| !s.trim().is_empty());
        let date = crate::util::output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
        let plots = crate::bench_plot::write_all(&plots_file(), path)?;
        let mut text = format!(
            "# pinflow benchmarks\n\n\
             Every row of one run, pinflow beside the alternative an operator runs today, on the same \
             machine in the same run: absolute times drift on shared machines, ratios measured together \
             hold.\n\n\
             ## Machine and commands\n\n{}- commit: {commit}{}\n- date: {}\n- command: `{command}`{}\n",
            machine(),
            if dirty {
                " (with uncommitted changes)"
            } else {
                ""
            },
            date.trim(),
            if rows.iter().any(|r| r.quick) {
                " (quick: reduced sizes and windows; the ratios are indicative, not the published figures)"
            } else {
                ""
            },
        );
        let set: Vec<String> = KNOBS
            .iter()
            .filter_map(|k| Some(format!("`{k}={}`", std::env::var(k).ok()?)))
            .collect();
        if !set.is_empty() {
            let _ = writeln!(text, "- environment: {}", set.join(" "));
        }
        text.push('\n');
        text.push_str(
            "Knobs the parts read (environment): `PINFLOW_BENCH_LOOPS`, `PINFLOW_BENCH_REPS`, \
             `PINFLOW_BENCH_RUNS` (sched), `PINFLOW_BENCH_FLOWS_STEADY_SECS` (flows), \
             `PINFLOW_BENCH_LATENCY_REPS` (latency), `PINFLOW_BENCH_SECS`, `PINFLOW_BENCH_DOMAINS`, \
             `PINFLOW_BENCH_FIXTURE_DOMAINS` (pinning; `PINFLOW_BENCH_SECS` also ovs); `PINFLOW_BIN` measures another build.\n\n",
        );
        if !plots.is_empty() {
            text.push_str("## Plots\n\n");
            for (title, file) in &plots {
                let _ = writeln!(text, "- [{title}]({file})\n\n  ![{title}]({file})\n");
            }
        }
        text.push_str("## Rows\n\n");
        text.push_str(&t);
        let missed: Vec<&Row> = rows.iter().filter(|r| r.met == Some(false)).collect();
        if !missed.is_empty() {
            text.push_str("\n## Missed goals: what limits them\n\n");
            for r in missed {
                let _ = writeln!(
                    text,
                    "- **{}** ({}; goal {}): {}",
                    r.what,
                    r.measured,
                    r.goal,
                    if r.limits.is_empty() {
                        "not analysed in this run"
                    } else {
                        &r.limits
                    }
                );
            }
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("written to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_blank_numbers_and_keep_words() {
        assert_eq!(
            key("flows", "100 000 flows: text parse CPU"),
            "flows: # flows: text parse CPU"
        );
        assert_eq!(
            key("pinning", "10 KVM domains × 4 vCPUs: /metrics p50 / p99"),
            "pinning: # KVM domains × # vCPUs: /metrics p# / p#"
        );
        assert_eq!(
            key(
                "flows",
                "add-flow of a dirty flow → /metrics right after other changes (median of 20)"
            ),
            "flows: add-flow of a dirty flow → /metrics right after other changes (median of #)"
        );
    }

    fn row(part: &str, what: &str) -> Row {
        Row {
            part: part.into(),
            what: what.into(),
            goal: String::new(),
            measured: String::new(),
            met: None,
            limits: String::new(),
            quick: true,
        }
    }

    #[test]
    fn a_missing_size_or_row_is_named() {
        let mut rows: Vec<Row> = [
            "ns added per context switch: pinflow's sched_switch probe vs the cheapest bpftrace one-liner",
            "ns per switch over the empty tp_btf program (the floor of its attach type)",
        ]
        .iter()
        .map(|w| row("sched", w))
        .collect();
        assert!(missing_in(&rows, &["sched"]).is_empty());
        rows.pop();
        assert_eq!(missing_in(&rows, &["sched"]).len(), 1);
        // Two of the three flow sizes: the third is missing.
        let sizes: Vec<Row> = [100, 1000]
            .iter()
            .map(|n| row("flows", &format!("{n} flows: text parse CPU")))
            .collect();
        let m = missing_in(&sizes, &["flows"]);
        assert!(
            m.iter()
                .any(|k| k == "flows: # flows: text parse CPU (have 2 of 3)"),
            "{m:?}"
        );
        // Parts that did not run are not asked for.
        assert!(missing_in(&[], &[]).is_empty());
    }

    #[test]
    fn expected_keys_are_already_blank() {
        for k in EXPECTED {
            let (part, what) = k.split_once(": ").unwrap_or_default();
            assert_eq!(key(part, what), *k);
        }
    }
}
