//! `cargo xtask`: pinflow's developer tasks.
//!
//! - `setup`: install what a fresh Debian 12 machine lacks (idempotent, prints each step).
//! - `run`: a real libvirt/KVM testbed with pinflow serving on 127.0.0.1:9105 until Ctrl-C.
//! - `test`: lint + unit tests + privileged integration tests against the real testbeds.
//! - `vm-test`: the OVS kernel-datapath guest (QEMU/TCG) with pinflow inside; pass/fail.
//! - `dist`: the static musl binary, man page and completions in target/pinflow-dist (and the image).
//! - `bench`: measured costs (eBPF per context switch, RSS, /metrics latency, OpenFlow dumps and
//!   mirrors against `ovs-ofctl` + parse, steady-state OVS reading at 200 ports against the
//!   exporters' `ovs-appctl`/`ovs-vsctl` poll, kernel-datapath megaflow dumps against `ovs-dpctl`, the
//!   pinning pass at 10/60 real and 200 fixture domains beside Debian's libvirt exporter, series
//!   per host); `--quick` runs every part reduced, `--write FILE` writes BENCHMARKS.md and plots.

mod bench_flows;
mod bench_latency;
mod bench_ovs;
mod bench_pinning;
mod bench_plot;
mod bench_sched;
mod bench_series;
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
#[derive(clap::Args, Default)]
pub(crate) struct BenchArgs {
    /// Run only one part: `sched` (eBPF probe), `serve` (testbed RSS and /metrics), `flows`
    /// (OpenFlow dumps and mirrors, issue 3), `ovs` (steady state at 200 ports beside the
    /// exporters' `ovs-appctl`/`ovs-vsctl` poll, issue 15), `datapath` (kernel-datapath megaflow dumps in the
    /// QEMU guest), `latency` (fault → /metrics, issue 13), `pinning` (idle cost at 10/60 real
    /// and 200 fixture domains beside Debian's libvirt exporter, issue 12; `PINFLOW_BENCH_SECS`
    /// shortens it), `series` (series per host on a generated hypervisor) or `load` (/metrics
    /// under HTTP abuse, issue 11).
    #[arg(long)]
    pub(crate) only: Option<String>,
    /// Every part reduced (fewer runs, smaller sizes, shorter windows; < 5 min): the same rows,
    /// marked quick. The kernel-datapath guest is skipped (its row says so).
    #[arg(long)]
    pub(crate) quick: bool,
    /// Also write every row of the run as markdown to this file (BENCHMARKS.md), and the plots
    /// as SVG under `docs/bench/` next to it.
    #[arg(long)]
    pub(crate) write: Option<std::path::PathBuf>,
}

/// The parts of `cargo xtask bench`, in the order they run.
pub(crate) const BENCH_PARTS: [&str; 9] = [
    "sched", "serve", "flows", "ovs", "datapath", "latency", "pinning", "series", "load",
];

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

/// `cargo xtask bench`.
pub(crate) fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let part = |p: &str| a.only.as_deref().is_none_or(|o| o == p);
    if let Some(o) = &a.only {
        anyhow::ensure!(
            BENCH_PARTS.contains(&o.as_str()),
            "unknown bench part {o:?} ({})",
            BENCH_PARTS.join(", ")
        );
    }
    if a.quick {
        #[allow(unsafe_code)] // set_var before any thread is started.
        // SAFETY: single-threaded here; the parts and the processes they start read it.
        unsafe {
            std::env::set_var("PINFLOW_BENCH_QUICK", "1");
            // The knobs of the parts that read them (unless set): shorter windows, fewer
            // domains and repetitions, each row still made.
            for (k, v) in [
                ("PINFLOW_BENCH_SECS", "10"),
                ("PINFLOW_BENCH_DOMAINS", "1,2"),
                ("PINFLOW_BENCH_FIXTURE_DOMAINS", "50"),
                ("PINFLOW_BENCH_THREAD_DOMAINS", "20"),
                ("PINFLOW_BENCH_LATENCY_REPS", "3"),
            ] {
                if std::env::var_os(k).is_none() {
                    std::env::set_var(k, v);
                }
            }
        }
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
    // The one-shot rows (`pinflow flows` once, issue 13) and the pinning rows (what a DaemonSet's
    // limits must cover, issues 12 and 13) measure what ships: the static binary of `cargo xtask
    // dist`, built here too unless `PINFLOW_BIN` names the binary to measure everywhere (as
    // `cargo xtask test` does) or `PINFLOW_ONESHOT_BIN` names this one. (On the 200-domain
    // fixture both builds spent the same CPU; the static one's RSS is ~5 MiB lower: no shared
    // libc mapped, and musl's allocator returns freed pages.)
    let shipped = match (
        std::env::var_os("PINFLOW_ONESHOT_BIN"),
        std::env::var_os("PINFLOW_BIN"),
    ) {
        (Some(b), _) => std::path::PathBuf::from(b),
        (None, Some(_)) => bin.clone(),
        (None, None) if part("flows") || part("pinning") => {
            dist::dist(&dist::DistArgs { image: false })?.join("pinflow")
        }
        (None, None) => bin.clone(),
    };
    let t_start = std::time::Instant::now();
    if part("sched") {
        bench_sched::run(&bin)?;
    }
    if part("serve") {
        run::bench_serve(&bin)?;
    }
    for p in ["flows", "ovs"].into_iter().filter(|p| part(p)) {
        if cfg!(debug_assertions) && !a.quick {
            // The cron job's and the poll's parses are measured in this process: run these
            // benches from an optimized xtask so that the baselines are not slowed down by a
            // debug build.
            util::cargo(&["build", "--release", "-p", "xtask"])?;
            let xtask = util::workspace_root().join("target/release/xtask");
            let st = std::process::Command::new(&xtask)
                .args(["bench", "--only", p])
                .env("PINFLOW_BIN", &bin)
                .env("PINFLOW_ONESHOT_BIN", &shipped)
                .env("PINFLOW_BENCH_CHILD", "1")
                .status()
                .with_context(|| format!("cannot run {}", xtask.display()))?;
            anyhow::ensure!(st.success(), "the {p} bench failed ({st})");
        } else if p == "flows" {
            bench_flows::run(&bin, &shipped)?;
        } else {
            bench_ovs::run(&bin)?;
        }
    }
    if part("datapath") {
        vm::bench_rows(a.quick)?;
    }
    if part("latency") {
        bench_latency::run_bench(&bin)?;
    }
    if part("pinning") {
        bench_pinning::run(&shipped)?;
    }
    if part("series") {
        bench_series::run(&bin)?;
    }
    if part("load") {
        bench_load(&bin, a.quick)?;
    }
    let mut command = String::from("cargo xtask bench");
    if a.quick {
        command.push_str(" --quick");
    }
    if let Some(o) = &a.only {
        command.push_str(&format!(" --only {o}"));
    }
    if let Some(w) = &a.write {
        command.push_str(&format!(" --write {}", w.display()));
    }
    println!(
        "bench: the parts took {:.0} s (after the build)",
        t_start.elapsed().as_secs_f64()
    );
    bench_table::finish(&command, a.write.as_ref())?;
    let parts: Vec<&str> = BENCH_PARTS.iter().copied().filter(|p| part(p)).collect();
    let missing = bench_table::missing(&parts);
    anyhow::ensure!(
        missing.is_empty(),
        "the run lacks rows of the full table:\n  {}",
        missing.join("\n  ")
    );
    Ok(())
}

/// tests/tests/load.rs: at full size 1 000 idle connections, 100 slowloris clients, 50 clients
/// on /api/v1/flows with 100 000 flows mirrored (`--quick`: the test's own small size); the line
/// it prints (p50/p99 and RSS) becomes the row. The test's own assertions (p99 ≤ 50 ms under
/// load, RSS under the DaemonSet's limit) make the row missed, not the bench fail.
fn bench_load(bin: &std::path::Path, quick: bool) -> anyhow::Result<()> {
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "test",
        "-p",
        "pinflow-tests",
        "--test",
        "load",
        "--",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("PINFLOW_BIN", bin)
    .current_dir(util::workspace_root())
    .stderr(std::process::Stdio::piped());
    if !quick {
        cmd.env("PINFLOW_LOAD_FULL", "1");
    }
    let mut child = cmd.spawn().context("cannot run the load test")?;
    let mut stats = None;
    if let Some(err) = child.stderr.take() {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if line.contains("quiet /metrics p50") && line.contains("under load") {
                stats = Some(line);
            }
        }
    }
    let st = child.wait().context("waiting for the load test")?;
    let Some(stats) = stats else {
        anyhow::bail!("the load bench printed no figures ({st})");
    };
    bench_table::add_limited(
        "load",
        "/metrics under HTTP abuse: p50 / p99 and RSS",
        "p99 ≤ 50 ms under load, peak RSS below the DaemonSet limit (issue 11)",
        stats.trim().to_string(),
        Some(st.success()),
        if st.success() {
            ""
        } else {
            "the load test's assertion failed (its output above the table)"
        },
    );
    Ok(())
}
