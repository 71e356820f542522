//! The one table of `cargo xtask bench`: every part adds its rows (what, goal, measured, whether
//! the goal is met) and the run ends with all of them together; `--write FILE` also writes them as
//! markdown (BENCHMARKS.md) with the machine and commit they were measured on.
//!
//! Rows go through a JSON-lines file in `target/`, so that parts run in a child process (the flow
//! bench re-runs itself optimised) land in the same table. A top-level `cargo xtask bench` empties
//! it first; the children it starts carry `PINFLOW_BENCH_CHILD=1` and append.

use crate::util::workspace_root;
use anyhow::{Context, Result};
use std::io::Write as _;
use std::path::PathBuf;

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
}

fn rows_file() -> PathBuf {
    workspace_root().join("target/bench-rows.jsonl")
}

/// Starts a new table, unless this process is a child of a bench run.
pub fn begin() -> Result<()> {
    if std::env::var_os("PINFLOW_BENCH_CHILD").is_none() {
        let f = rows_file();
        if let Some(d) = f.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&f, "").with_context(|| format!("cannot write {}", f.display()))?;
    }
    Ok(())
}

/// Adds a row.
pub fn add(part: &str, what: &str, goal: &str, measured: String, met: Option<bool>) {
    let row = Row {
        part: part.into(),
        what: what.into(),
        goal: goal.into(),
        measured,
        met,
    };
    let line = serde_json::json!({
        "part": row.part, "what": row.what, "goal": row.goal,
        "measured": row.measured, "met": row.met,
    })
    .to_string();
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(rows_file())
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        eprintln!("bench table: cannot record a row: {e}");
    }
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
            }
        })
        .collect()
}

/// The rows as a markdown table.
fn table(rows: &[Row]) -> String {
    let mut out = String::from("| part | what | goal | measured | |\n|---|---|---|---|---|\n");
    for r in rows {
        let met = match r.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {met} |\n",
            r.part,
            r.what.replace('|', "\\|"),
            r.goal,
            r.measured.replace('|', "\\|")
        ));
    }
    out
}

/// Prints the run's rows together and, with `write`, writes them to that file.
pub fn finish(command: &str, write: Option<&PathBuf>) -> Result<()> {
    if std::env::var_os("PINFLOW_BENCH_CHILD").is_some() {
        return Ok(());
    }
    let rows = read();
    let t = table(&rows);
    println!("\nAll rows of this run:\n{t}");
    if let Some(path) = write {
        let uname = |flag: &str| crate::util::output("uname", &[flag]).unwrap_or_default();
        let commit =
            crate::util::output("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_default();
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let date = crate::util::output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
        let text = format!(
            "# pinflow benchmarks\n\n\
             Measured by `{command}` at commit {} on {} ({} CPUs, Linux {}), {}. Every row of one \
             run, pinflow beside the alternative an operator runs today, on the same machine in the \
             same run: absolute times drift on shared machines, ratios measured together hold.\n\n{t}",
            commit.trim(),
            uname("-m").trim(),
            cpus,
            uname("-r").trim(),
            date.trim(),
        );
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("written to {}", path.display());
    }
    Ok(())
}
