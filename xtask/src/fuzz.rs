//! `cargo xtask fuzz`: builds the cargo-fuzz (libFuzzer) targets of `fuzz/` with overflow checks
//! on, writes their seed corpora from the captured fixtures, and runs each for a time budget.
//!
//! Corpora: `fuzz/seeds/<target>/` is regenerated from the fixtures on every run (read-only input);
//! `fuzz/corpus/<target>/` keeps what libFuzzer found interesting across runs (both ignored by git).
//! A crash, overflow, timeout or out-of-memory leaves its input in `fuzz/artifacts/<target>/` and
//! fails the command; libFuzzer's log of each target is in `target/fuzz-logs/<target>.log`.

use crate::util::{step, workspace_root};
use anyhow::{Context as _, bail};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use pinflow_tests::fuzz_seeds::TARGETS;

/// Flags of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds to run each target.
    #[arg(long, default_value_t = 60)]
    pub time: u64,
    /// Run only this target (repeatable); all by default.
    #[arg(long = "target")]
    pub targets: Vec<String>,
}

/// What one target's run reported (libFuzzer's last status line and final stats).
#[derive(Debug, Default)]
struct Outcome {
    execs: u64,
    cov: u64,
    ft: u64,
    corpus: u64,
    seconds: f64,
}

/// `cargo xtask fuzz`.
pub fn fuzz(a: &FuzzArgs) -> anyhow::Result<()> {
    let targets: Vec<&str> = if a.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &a.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "unknown fuzz target {t:?} (targets: {})",
                    TARGETS.join(", ")
                );
            }
        }
        a.targets.iter().map(String::as_str).collect()
    };
    crate::setup::cargo_fuzz()?;
    let root = workspace_root();
    let fuzz_dir = root.join("fuzz");
    step("fuzz: seed corpora from the captured fixtures");
    write_seeds(&root, &fuzz_dir.join("seeds"))?;
    step("fuzz: build (nightly, libFuzzer, ASan, debug assertions + overflow checks)");
    // `--debug-assertions` adds `-Cdebug-assertions`; fuzz/Cargo.toml turns overflow checks on in
    // the release profile the targets build with.
    let t0 = Instant::now();
    cargo_fuzz(&fuzz_dir, &["build", "--debug-assertions"])?;
    eprintln!("fuzz build: {:.1} s", t0.elapsed().as_secs_f64());
    let logs = root.join("target/fuzz-logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let mut failed = Vec::new();
    let mut table = Vec::new();
    for t in targets {
        step(&format!("fuzz: {t} for {} s", a.time));
        let corpus = fuzz_dir.join("corpus").join(t);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        let log = logs.join(format!("{t}.log"));
        let started = Instant::now();
        let ok = run_target(&fuzz_dir, t, &corpus, a.time, &log)?;
        let mut o = parse_log(&std::fs::read_to_string(&log).unwrap_or_default());
        o.seconds = started.elapsed().as_secs_f64();
        if !ok {
            failed.push(t);
        }
        table.push((t, ok, o));
    }
    eprintln!(
        "{:<22} {:>6} {:>12} {:>7} {:>7} {:>7} {:>7}",
        "target", "result", "execs", "cov", "ft", "corpus", "secs"
    );
    for (t, ok, o) in &table {
        eprintln!(
            "{:<22} {:>6} {:>12} {:>7} {:>7} {:>7} {:>7.1}",
            t,
            if *ok { "ok" } else { "FAIL" },
            o.execs,
            o.cov,
            o.ft,
            o.corpus,
            o.seconds
        );
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in fuzz/artifacts/, logs in target/fuzz-logs/)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Runs `cargo +nightly fuzz ARGS` in `fuzz/` (without the eBPF object: no target needs it).
fn cargo_fuzz(fuzz_dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("cargo")
        .arg("+nightly")
        .arg("fuzz")
        .args(args)
        .current_dir(fuzz_dir)
        .env("PINFLOW_SKIP_EBPF", "1")
        .status()
        .context("cannot run cargo fuzz (cargo xtask setup installs it)")?;
    if !st.success() {
        bail!("`cargo fuzz {}` failed ({st})", args.join(" "));
    }
    Ok(())
}

/// Runs one target for `secs` seconds over its corpus and seeds, libFuzzer's output to `log`.
/// False when libFuzzer found a crash, leak, timeout or out-of-memory input.
fn run_target(
    fuzz_dir: &Path,
    target: &str,
    corpus: &Path,
    secs: u64,
    log: &Path,
) -> anyhow::Result<bool> {
    let out =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let seeds = fuzz_dir.join("seeds").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("cannot create {}", artifacts.display()))?;
    // The binary `cargo fuzz build` made (running it directly: no rebuild per target).
    let bin = fuzz_dir
        .join("target/x86_64-unknown-linux-gnu/release")
        .join(target);
    let st = Command::new(&bin)
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-max_total_time={secs}"))
        // An input that takes 10 s is a finding (a hang; every seed takes well under 50 ms, but
        // the shared 2-core machines stall a process for a second now and then: a 1 s limit
        // reported one such stall as a hang), and so is one that needs 1 GiB.
        .args(["-timeout=10", "-rss_limit_mb=1024", "-print_final_stats=1"])
        .arg(corpus)
        .arg(&seeds)
        .current_dir(fuzz_dir)
        .stderr(out)
        .status()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !st.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for l in tail.into_iter().rev() {
            eprintln!("  {l}");
        }
    }
    Ok(st.success())
}

/// The numbers of libFuzzer's last status line (`#N ... cov: C ft: F corp: K/...`).
fn parse_log(log: &str) -> Outcome {
    let mut o = Outcome::default();
    for line in log.lines() {
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            o.execs = n.trim().parse().unwrap_or(o.execs);
        }
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(n) = words.next().and_then(|w| w.parse::<u64>().ok()) else {
            continue;
        };
        o.execs = o.execs.max(n);
        let words: Vec<&str> = words.collect();
        for pair in words.windows(2) {
            let v = pair[1].split('/').next().unwrap_or("").parse().ok();
            match (pair[0], v) {
                ("cov:", Some(v)) => o.cov = v,
                ("ft:", Some(v)) => o.ft = v,
                ("corp:", Some(v)) => o.corpus = v,
                _ => {}
            }
        }
    }
    o
}

/// Writes `fuzz/seeds/<target>/seed-NNNNN` from the fixtures.
fn write_seeds(root: &Path, dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for (target, data) in pinflow_tests::fuzz_seeds::seeds(root)? {
        let n = match counts.iter_mut().find(|(t, _)| *t == target) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                counts.push((target, 1));
                1
            }
        };
        let d = dir.join(target);
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        let path = d.join(format!("seed-{n:05}"));
        std::fs::write(&path, data).with_context(|| format!("cannot write {}", path.display()))?;
    }
    for (t, n) in &counts {
        eprintln!("seeds: {t}: {n}");
    }
    Ok(())
}
