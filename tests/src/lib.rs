//! Helpers for pinflow's integration tests (and `cargo xtask run`): the real libvirt/KVM testbed,
//! a running `pinflow serve`, scraping and waiting.
//!
//! Tests that need root, KVM or libvirt call [`require_privileged`]: without the privileges they
//! print SKIP and return — unless `PINFLOW_REQUIRE_PRIVILEGED=1` (set by `.ci/run`), where a skip
//! is a failure.

pub mod captured;
pub mod fuzz_seeds;
pub mod libvirt;
pub mod ovs;
pub mod pinflow;
pub mod prometheus;
pub mod scrape;
pub mod veth;

use std::time::{Duration, Instant};

/// Env switch that turns privileged-test skips into failures.
pub const REQUIRE_PRIVILEGED: &str = "PINFLOW_REQUIRE_PRIVILEGED";

/// Whether privileged tests may skip (false in CI).
pub fn skips_allowed() -> bool {
    std::env::var(REQUIRE_PRIVILEGED).map_or(true, |v| v != "1")
}

/// Returns true when the test can run; otherwise prints SKIP (or panics when skips are not allowed).
pub fn require_privileged(test: &str, needs: &[&str]) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for n in needs {
        if !command_exists(n) {
            missing.push(format!("command `{n}`"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: needs {}", missing.join(", "));
    assert!(
        skips_allowed(),
        "{msg} ({REQUIRE_PRIVILEGED}=1 forbids skipping; run `cargo xtask setup` as root)"
    );
    eprintln!("SKIP {msg}");
    false
}

/// Whether `cmd` is on PATH (or an absolute path that exists).
pub fn command_exists(cmd: &str) -> bool {
    if cmd.contains('/') {
        return std::path::Path::new(cmd).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes; returns the value and the time it took.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<(T, Duration)> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some((v, t0.elapsed()));
        }
        if t0.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command, panicking with its output when it fails; returns stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
