//! `cargo xtask fuzz`: builds the cargo-fuzz (libFuzzer) targets of `fuzz/` with overflow checks
//! on, writes their seed corpora from the captured fixtures, and runs each for a time budget.
//!
//! Corpora: `fuzz/seeds/<target>/` is regenerated from the fixtures on every run (read-only input);
//! `fuzz/corpus/<target>/` keeps what libFuzzer found interesting across runs (both ignored by git).
//! A crash, overflow, timeout or out-of-memory leaves its input in `fuzz/artifacts/<target>/` and
//! fails the command; libFuzzer's log of each target is in `target/fuzz-logs/<target>.log`.

use crate::util::{step, workspace_root};
use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Every fuzz target (`fuzz/fuzz_targets/<name>.rs`, each calling `pinflow::fuzzing::<name>`).
pub const TARGETS: [&str; 8] = [
    "libvirt_xml",
    "openflow_flow_stats",
    "openflow_flow_monitor",
    "oxm_actions",
    "ovsdb",
    "genetlink",
    "cpuset",
    "config",
];

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

/// Writes `fuzz/seeds/<target>/` from the fixtures.
fn write_seeds(root: &Path, seeds: &Path) -> anyhow::Result<()> {
    if seeds.exists() {
        std::fs::remove_dir_all(seeds)
            .with_context(|| format!("cannot clear {}", seeds.display()))?;
    }
    let fx = root.join("collector/tests/fixtures");
    let mut w = SeedWriter::new(seeds);

    for f in files_under(&fx.join("libvirt"), "xml")? {
        w.put("libvirt_xml", &read(&f)?)?;
    }

    // OpenFlow: every captured message; each flow of a dump also alone in a reply of its own, and
    // its match and instructions in the stored wire form.
    for f in files_under(&fx.join("openflow"), "bin")? {
        let stream = read(&f)?;
        let monitor = f.to_string_lossy().contains("monitor");
        for msg in of_messages(&stream) {
            w.put(
                if monitor {
                    "openflow_flow_monitor"
                } else {
                    "openflow_flow_stats"
                },
                msg,
            )?;
            // OFPT_MULTIPART_REPLY of OFPMP_FLOW: header (8), type, flags, pad (8), flows.
            if msg.get(1) == Some(&19) && msg.get(8..10) == Some(&[0, 1]) {
                for entry in flow_stats_entries(msg.get(16..).unwrap_or_default()) {
                    let mut one = msg.get(..16).unwrap_or_default().to_vec();
                    one.extend_from_slice(entry);
                    let len = u16::try_from(one.len()).unwrap_or(u16::MAX).to_be_bytes();
                    one[2..4].copy_from_slice(&len);
                    w.put("openflow_flow_stats", &one)?;
                    if let Some(wire) = stored_wire_form(entry) {
                        w.put("oxm_actions", &wire)?;
                    }
                }
            }
        }
    }

    // OVSDB: each captured step as one byte stream, fed in 255-byte and in 7-byte chunks.
    let capture: serde_json::Value = serde_json::from_slice(&read(&fx.join("ovsdb/capture.json"))?)
        .context("ovsdb capture.json")?;
    if let Some(steps) = capture.as_object() {
        for msgs in steps.values() {
            let mut stream = Vec::new();
            for m in msgs.as_array().into_iter().flatten() {
                stream.extend(serde_json::to_vec(m).context("ovsdb capture")?);
                stream.push(b'\n');
            }
            for chunk in [255u8, 7] {
                let mut s = vec![chunk];
                s.extend_from_slice(&stream);
                w.put("ovsdb", &s)?;
            }
        }
    }

    for f in files_under(&root.join("collector/src/sources/ovs_dp/fixtures"), "hex")? {
        let text = std::fs::read_to_string(&f).with_context(|| format!("{}", f.display()))?;
        for line in text.lines() {
            let bytes: Option<Vec<u8>> = (0..line.len() / 2)
                .map(|i| {
                    line.get(2 * i..2 * i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect();
            if let Some(b) = bytes {
                w.put("genetlink", &b)?;
            }
        }
    }

    for f in files_under(&fx.join("hostfs"), "")? {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("cpuset.") || name == "online" {
            w.put("cpuset", &read(&f)?)?;
        }
        if name == "status" {
            // Cpus_allowed (hex mask) and Cpus_allowed_list.
            for line in String::from_utf8_lossy(&read(&f)?).lines() {
                if let Some(v) = line.strip_prefix("Cpus_allowed") {
                    let v = v.trim_start_matches("_list").trim_start_matches(':').trim();
                    w.put("cpuset", v.as_bytes())?;
                }
            }
        }
    }
    for s in ["0-3,8,10-11", "0-4,^2", "ff,ffffffff", "8191", ""] {
        w.put("cpuset", s.as_bytes())?;
    }

    for f in [
        root.join("deploy/pinflow.example.toml"),
        root.join("deploy/kubernetes/base/pinflow.toml"),
    ] {
        w.put("config", &read(&f)?)?;
    }
    for (t, n) in &w.counts {
        eprintln!("seeds: {t}: {n}");
    }
    for t in TARGETS {
        if !w.counts.iter().any(|(name, _)| *name == t) {
            bail!("no seeds for fuzz target {t}: a fixture moved?");
        }
    }
    Ok(())
}

/// Writes numbered seed files per target.
struct SeedWriter {
    dir: PathBuf,
    counts: Vec<(&'static str, usize)>,
}

impl SeedWriter {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            counts: Vec::new(),
        }
    }

    fn put(&mut self, target: &'static str, data: &[u8]) -> anyhow::Result<()> {
        let n = match self.counts.iter_mut().find(|(t, _)| *t == target) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.counts.push((target, 1));
                1
            }
        };
        let dir = self.dir.join(target);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("seed-{n:05}"));
        std::fs::write(&path, data).with_context(|| format!("cannot write {}", path.display()))
    }
}

fn read(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

/// Files under `dir` (recursively) whose name ends with `.ext` (any file when `ext` is empty).
fn files_under(dir: &Path, ext: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else if ext.is_empty() || p.extension().is_some_and(|x| x == ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The OpenFlow messages of a byte stream (length at bytes 2..4 of each header).
fn of_messages(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    while let Some(len) = rest
        .get(2..4)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    {
        let Some(msg) = rest.get(..len).filter(|_| len >= 8) else {
            break;
        };
        out.push(msg);
        rest = rest.get(len..).unwrap_or_default();
    }
    out
}

/// The `ofp_flow_stats` entries of an `OFPMP_FLOW` reply body (length at bytes 0..2 of each).
fn flow_stats_entries(body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(len) = rest
        .get(..2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    {
        let Some(e) = rest.get(..len).filter(|_| len >= 56) else {
            break;
        };
        out.push(e);
        rest = rest.get(len..).unwrap_or_default();
    }
    out
}

/// `priority, match TLV length, TLVs, instructions` of one `ofp_flow_stats` (the input of the
/// `oxm_actions` target): the `ofp_match` starts at byte 48, padded to 8 bytes.
fn stored_wire_form(entry: &[u8]) -> Option<Vec<u8>> {
    let priority = entry.get(12..14)?;
    let m = entry.get(48..)?;
    let mlen = usize::from(u16::from_be_bytes([*m.get(2)?, *m.get(3)?]));
    let tlvs = m.get(4..mlen)?;
    let instructions = m.get(mlen.div_ceil(8) * 8..)?;
    let mut out = priority.to_vec();
    out.extend(u16::try_from(tlvs.len()).ok()?.to_be_bytes());
    out.extend_from_slice(tlvs);
    out.extend_from_slice(instructions);
    Some(out)
}
