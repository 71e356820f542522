//! Every fuzz target's entry point (`pinflow::fuzzing::*`, the functions `fuzz/fuzz_targets/` call)
//! over its seeds and over mutations of them, in the test profile (debug assertions and overflow
//! checks on), for a short budget per target.
//!
//! This is CI's fuzzing: coverage-blind (a seeded PRNG flips, overwrites, truncates, duplicates
//! and splices bytes of the captured fixtures), but it runs on every change without the nightly
//! libFuzzer build, which takes ~15 min on a fresh machine. `cargo xtask fuzz --time N` runs the
//! coverage-guided targets; docs/fuzzing.md has their numbers. A panicking input is written to
//! `target/fuzz-smoke/<target>-<n>` and fails the test with its hex.

use pinflow_tests::fuzz_seeds::{TARGETS, seeds};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Time each target gets (`PINFLOW_FUZZ_SMOKE_SECS` overrides it).
fn budget() -> Duration {
    let secs = std::env::var("PINFLOW_FUZZ_SMOKE_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(1.5);
    Duration::from_secs_f64(secs)
}

fn entry(target: &str) -> fn(&[u8]) {
    match target {
        "libvirt_xml" => pinflow::fuzzing::libvirt_xml,
        "openflow_flow_stats" => pinflow::fuzzing::openflow_flow_stats,
        "openflow_flow_monitor" => pinflow::fuzzing::openflow_flow_monitor,
        "oxm_actions" => pinflow::fuzzing::oxm_actions,
        "ovsdb" => pinflow::fuzzing::ovsdb,
        "genetlink" => pinflow::fuzzing::genetlink,
        "cpuset" => pinflow::fuzzing::cpuset,
        "config" => pinflow::fuzzing::config,
        "ovs_unixctl" => pinflow::fuzzing::ovs_unixctl,
        other => panic!("fuzz target {other} has no entry point here"),
    }
}

/// xorshift64*: deterministic, so a failure reproduces with the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four mutations of `input`; `other` is a second seed to splice from.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xfe, 0xff, b'<', b'"'];
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = v.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            // A 16-bit big-endian length-like field set to an edge value.
            2 if len > 1 => {
                let i = rng.below(len - 1);
                let x: u16 = [0, 1, 4, 8, 0x7fff, 0xffff][rng.below(6)];
                v[i..i + 2].copy_from_slice(&x.to_be_bytes());
            }
            3 if len > 0 => v.truncate(rng.below(len)),
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, chunk);
            }
            5 if !other.is_empty() => {
                let a = rng.below(other.len());
                let b = (a + 1 + rng.below(256)).min(other.len());
                let at = rng.below(len + 1);
                v.splice(at..at, other[a..b].iter().copied());
            }
            _ => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
        }
    }
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().take(512).map(|x| format!("{x:02x}")).collect()
}

#[test]
fn every_fuzz_target_survives_its_seeds_and_their_mutations() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let all = seeds(&root).expect("seeds from the fixtures");
    let budget = budget();
    // Panics are caught per input; the hook keeps the last message for the report.
    static LAST_PANIC: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut m) = LAST_PANIC.lock() {
            *m = info.to_string();
        }
    }));
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for (t, target) in TARGETS.iter().enumerate() {
        let run = entry(target);
        let inputs: Vec<&[u8]> = all
            .iter()
            .filter(|(name, _)| name == target)
            .map(|(_, d)| d.as_slice())
            .collect();
        assert!(!inputs.is_empty(), "{target}: no seeds");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
        let started = Instant::now();
        let mut execs = 0u64;
        let mut failed = None;
        // Every seed as it is, then mutations until the budget is spent.
        for input in inputs
            .iter()
            .map(|i| i.to_vec())
            .chain(std::iter::from_fn(|| {
                (started.elapsed() < budget).then(|| {
                    let a = inputs[rng.below(inputs.len())];
                    let b = inputs[rng.below(inputs.len())];
                    mutate(&mut rng, a, b)
                })
            }))
        {
            execs += 1;
            if catch_unwind(AssertUnwindSafe(|| run(&input))).is_err() {
                failed = Some(input);
                break;
            }
        }
        report.push(format!(
            "{target}: {execs} inputs in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        if let Some(input) = failed {
            let dir = root.join("target/fuzz-smoke");
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("{target}-{execs}"));
            let _ = std::fs::write(&path, &input);
            let why = LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default();
            failures.push(format!(
                "{target} panicked on input {} ({} bytes, saved to {}): {why}\n  input: {}",
                execs,
                input.len(),
                path.display(),
                hex(&input)
            ));
        }
    }
    let _ = std::panic::take_hook();
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
