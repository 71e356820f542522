//! `cargo xtask`: pinflow's developer tasks.
//!
//! - `setup`: install what a fresh Debian 12 machine lacks (idempotent, prints each step).
//! - `run`: a real libvirt/KVM testbed with pinflow serving on 127.0.0.1:9105 until Ctrl-C.
//! - `test`: lint + unit tests + privileged integration tests against the real testbeds.
//! - `vm-test`: the OVS kernel-datapath guest (QEMU/TCG) with pinflow inside; pass/fail.
//! - `dist`: the static musl binary, man page and completions in target/pinflow-dist (and the image).
//! - `bench`: measured costs (eBPF per context switch, RSS, /metrics latency, OpenFlow dumps and
//!   mirrors against `ovs-ofctl` + parse, the pinning pass at 10/60 real and 200 fixture domains
//!   beside Debian's libvirt exporter).

mod bench_flows;
mod bench_latency;
mod bench_pinning;
mod bench_sched;
mod bench_table;
mod bench_threadhost;
mod dist;
mod fuzz;
mod run;
mod setup;
mod test;
mod util;
mod vm;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// pinflow developer tasks.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install apt packages, bpf-linker 0.13 (LLVM 22), nightly rust-src; mount tracefs. Idempotent.
    Setup,
    /// Start the libvirt/KVM testbed and pinflow on 127.0.0.1:9105; Ctrl-C tears everything down.
    Run(run::RunArgs),
    /// Run every test (lint, unit, privileged integration against real daemons, promtool).
    Test(test::TestArgs),
    /// Boot the OVS kernel-datapath guest (QEMU, TCG), run the scenarios inside, check pinflow.
    VmTest(vm::VmTestArgs),
    /// Build the shipped artifacts into target/pinflow-dist: static musl binary, man page, completions
    /// (and with --image the container image).
    Dist(dist::DistArgs),
    /// Build the cargo-fuzz targets (nightly, overflow checks on) and run each for `--time N` s.
    Fuzz(fuzz::FuzzArgs),
    /// Measure pinflow's costs (sched_switch overhead, RSS, /metrics latency, OpenFlow tables).
    Bench(BenchArgs),
    /// (internal) One "domain" of the bench's real-thread host: vCPU-named threads, parked.
    #[command(hide = true)]
    Sleeper,
}

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
struct BenchArgs {
    /// Run only one part: `sched` (eBPF probe), `serve` (testbed RSS and /metrics), `flows`
    /// (OpenFlow dumps and mirrors, issue 3), `latency` (fault → /metrics, issue 13), `load`
    /// (/metrics under HTTP abuse, issue 11) or `pinning` (idle cost at 10/60 real and 200
    /// fixture domains beside Debian's libvirt exporter, issue 12; `PINFLOW_BENCH_SECS` shortens
    /// it).
    #[arg(long)]
    only: Option<String>,
    /// Also write every row of the run as markdown to this file (BENCHMARKS.md).
    #[arg(long)]
    write: Option<std::path::PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Run(a) => run::run(a),
        Cmd::Test(a) => test::test(a),
        Cmd::VmTest(a) => vm::vm_test(a),
        Cmd::Bench(a) => bench(a),
        Cmd::Dist(a) => dist::dist(&a).map(|_| ()),
        Cmd::Fuzz(a) => fuzz::fuzz(&a),
        Cmd::Sleeper => bench_threadhost::sleeper(),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let part = |p: &str| a.only.as_deref().is_none_or(|o| o == p);
    if let Some(o) = &a.only {
        anyhow::ensure!(
            ["sched", "serve", "flows", "load", "latency", "pinning"].contains(&o.as_str()),
            "unknown bench part {o:?} (sched, serve, flows, load, latency, pinning)"
        );
    }
    setup::setup()?;
    bench_table::begin()?;
    // `PINFLOW_BIN` measures another, already built binary (e.g. a baseline) with the same harness.
    let bin = match std::env::var_os("PINFLOW_BIN") {
        Some(b) => std::path::PathBuf::from(b),
        None => {
            util::cargo(&[
                "build",
                "--release",
                "-p",
                "pinflow",
                "--bins",
                "--examples",
            ])?;
            util::workspace_root().join("target/release/pinflow")
        }
    };
    if part("sched") {
        bench_sched::run(&bin)?;
    }
    if part("serve") {
        run::bench_serve()?;
    }
    if part("flows") {
        if cfg!(debug_assertions) {
            // The cron job's text parse is measured in this process: run the flow bench from an
            // optimized xtask so that the baseline is not slowed down by a debug build.
            util::cargo(&["build", "--release", "-p", "xtask"])?;
            let xtask = util::workspace_root().join("target/release/xtask");
            let st = std::process::Command::new(&xtask)
                .args(["bench", "--only", "flows"])
                .env("PINFLOW_BIN", &bin)
                .env("PINFLOW_BENCH_CHILD", "1")
                .status()
                .with_context(|| format!("cannot run {}", xtask.display()))?;
            anyhow::ensure!(st.success(), "the flow bench failed ({st})");
        } else {
            bench_flows::run(&bin)?;
        }
    }
    if part("latency") {
        bench_latency::run_bench(&bin)?;
    }
    if part("pinning") {
        bench_pinning::run(&bin)?;
    }
    if part("load") {
        // tests/tests/load.rs at full size: 1 000 idle connections, 100 slowloris clients, 50
        // clients on /api/v1/flows with 100 000 flows mirrored; it prints p50/p99 and RSS.
        let st = std::process::Command::new("cargo")
            .args([
                "test",
                "-p",
                "pinflow-tests",
                "--test",
                "load",
                "--",
                "--nocapture",
            ])
            .env("PINFLOW_LOAD_FULL", "1")
            .env("PINFLOW_BIN", &bin)
            .current_dir(util::workspace_root())
            .status()
            .context("cannot run the load test")?;
        anyhow::ensure!(st.success(), "the load bench failed ({st})");
    }
    let command = match &a.only {
        Some(o) => format!("cargo xtask bench --only {o}"),
        None => "cargo xtask bench".to_string(),
    };
    bench_table::finish(&command, a.write.as_ref())?;
    Ok(())
}
