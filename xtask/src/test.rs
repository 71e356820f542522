//! `cargo xtask test`: lint, unit tests, privileged integration tests against real daemons, `cargo
//! xtask bench --quick` (every row of the bench table made) and the kernel-datapath guest.
#![allow(unsafe_code)] // set_var before any thread is started.

use crate::setup::setup;
use crate::util::{cargo, step, workspace_root};
use pinflow_tests::REQUIRE_PRIVILEGED;
use pinflow_tests::libvirt;
use std::path::PathBuf;

/// Flags of `cargo xtask test`.
#[derive(clap::Args)]
pub struct TestArgs {
    /// Turn every privileged-test skip into a failure (CI sets this).
    #[arg(long)]
    require_privileged: bool,
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Also run every fuzz target for a few seconds (`cargo xtask fuzz --time 8`). Off by
    /// default: on a clean checkout the sanitizer build of every dependency takes ~15 min here,
    /// which CI's time budget cannot carry.
    #[arg(long)]
    fuzz: bool,
    /// Only run tests whose name contains this filter.
    filter: Option<String>,
}

/// `cargo xtask test`.
pub fn test(a: TestArgs) -> anyhow::Result<()> {
    setup()?;
    if a.require_privileged {
        // SAFETY: single-threaded at this point; the variable is read by the test processes we spawn.
        unsafe { std::env::set_var(REQUIRE_PRIVILEGED, "1") };
    }
    if !a.no_lint {
        step("lint: cargo fmt --check");
        cargo(&["fmt", "--all", "--", "--check"])?;
        step("lint: cargo clippy -D warnings");
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
    }
    if a.fuzz {
        // Every decoder under libFuzzer for a few seconds (regressions of fixed findings, and
        // panics/overflows a change introduces); `cargo xtask fuzz --time N` runs them longer.
        step("fuzz: every target, 8 s each");
        crate::fuzz::fuzz(&crate::fuzz::FuzzArgs {
            time: 8,
            targets: Vec::new(),
        })?;
    }
    step("build: pinflow (with its eBPF object)");
    cargo(&["build", "-p", "pinflow", "--bins", "--examples"])?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    // SAFETY: as above.
    unsafe { std::env::set_var("PINFLOW_BIN", target.join("debug/pinflow")) };
    // The shipped artifacts: the deploy tests run the static binary and the image exactly as
    // deploy/kubernetes describes them.
    let dist = crate::dist::dist(&crate::dist::DistArgs { image: true })?;
    // SAFETY: as above.
    unsafe { std::env::set_var("PINFLOW_DIST_DIR", &dist) };
    step("testbed: libvirt daemons");
    let daemons = libvirt::ensure_daemons();
    if let Err(e) = &daemons {
        eprintln!("libvirt testbed unavailable: {e:#} (libvirt tests will skip or fail)");
    }
    step("tests: unit + integration (one test at a time: they share the host's CPUs)");
    let mut args = vec!["test", "--workspace", "--no-fail-fast"];
    if let Some(f) = &a.filter {
        args.push(f);
    }
    args.extend(["--", "--test-threads=1"]);
    let r = cargo(&args);
    if let Ok(d) = &daemons {
        libvirt::stop_daemons(d);
    }
    // Every bench part reduced (`cargo xtask bench --quick`, ~4.5 min here): it fails on a bench error
    // or a row of the full table it did not make, never on a number.
    let r = if a.filter.as_deref().is_none_or(|f| f.contains("bench")) {
        step("bench: cargo xtask bench --quick (every row made; numbers never fail)");
        let b = crate::bench(crate::BenchArgs {
            quick: true,
            ..crate::BenchArgs::default()
        });
        match (r, b) {
            (Ok(()), b) => b,
            (Err(e), Ok(())) => Err(e),
            (Err(t), Err(b)) => Err(t.context(format!("and bench --quick failed too: {b:#}"))),
        }
    } else {
        r
    };
    if a.filter.as_deref().is_some_and(|f| !f.contains("vm")) {
        return r;
    }
    // The guest test runs even when a test above failed: one run shows every failure.
    step("tests: OVS kernel datapath in a QEMU guest (cargo xtask vm-test)");
    let vm = crate::vm::vm_test(crate::vm::VmTestArgs::default());
    match (r, vm) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(t), Err(v)) => Err(t.context(format!("and vm-test failed too: {v:#}"))),
    }
}
