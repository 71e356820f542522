//! `cargo xtask`: pinflow's developer tasks.
//!
//! - `setup`: install what a fresh Debian 12 machine lacks (idempotent, prints each step).
//! - `run`: a real libvirt/KVM testbed with pinflow serving on 127.0.0.1:9105 until Ctrl-C.
//! - `test`: lint + unit tests + privileged integration tests against the real testbeds.
//! - `vm-test`: the OVS kernel-datapath guest (QEMU/TCG) with pinflow inside; pass/fail.
//! - `bench`: measured costs (eBPF per context switch, RSS, /metrics latency).

mod bench_sched;
mod run;
mod setup;
mod test;
mod util;
mod vm;

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
    /// Measure pinflow's costs (sched_switch overhead, RSS, /metrics latency).
    Bench,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Run(a) => run::run(a),
        Cmd::Test(a) => test::test(a),
        Cmd::VmTest(a) => vm::vm_test(a),
        Cmd::Bench => bench(),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench() -> anyhow::Result<()> {
    setup::setup()?;
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "pinflow",
        "--bins",
        "--examples",
    ])?;
    bench_sched::run(&util::workspace_root().join("target/release/pinflow"))?;
    run::bench_serve()
}
