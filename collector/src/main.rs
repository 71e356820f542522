//! The `pinflow` command: parses flags and runs a subcommand.

use anyhow::Context as _;
use clap::Parser as _;
use pinflow::cli::{Cli, Command, FlowsArgs, ServeArgs, SourceArgs};
use pinflow::config::Config;
use pinflow::engine::supervise::Supervisor;
use pinflow::engine::{self, PinningEngine, PinningInputs};
use pinflow::export::http::{self, RouterOptions};
use pinflow::export::web_config::WebConfig;
use pinflow::export::{metrics::BuildInfo, table};
use pinflow::sources::ovs_dp;
use pinflow::sources::sched_bpf::SchedProbe;
use pinflow::state::SharedState;
use std::io::Write as _;
use std::process::ExitCode;

/// The static (musl) build uses mimalloc: musl's own allocator is several times slower for the
/// flow mirror's many small allocations.
#[cfg(target_env = "musl")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let result = match cli.command {
        None => serve(&cli.sources, ServeArgs::default()),
        Some(Command::Serve(a)) => serve(&cli.sources, a),
        Some(Command::Check) => check(&cli.sources),
        Some(Command::Pinning { json }) => pinning(&cli.sources, json),
        Some(Command::Flows(a)) => flows(&cli.sources, &a),
        Some(Command::Completion { shell }) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "pinflow", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Man { subcommand }) => man_page(subcommand.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pinflow: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `pinflow man [SUBCOMMAND]`: the roff page of pinflow or of `pinflow-<subcommand>`.
fn man_page(subcommand: Option<&str>) -> anyhow::Result<ExitCode> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let page = match subcommand {
        None => cmd,
        Some(name) => {
            let sub = cmd
                .find_subcommand(name)
                .ok_or_else(|| anyhow::anyhow!("no subcommand {name:?}"))?
                .clone();
            sub.name(format!("pinflow-{name}").leak() as &str)
        }
    };
    clap_mangen::Man::new(page).render(&mut std::io::stdout())?;
    Ok(ExitCode::SUCCESS)
}

/// Logs to stderr at `--log.level` (`RUST_LOG` overrides it) as logfmt or JSON lines.
fn init_logging(log: &pinflow::cli::LogArgs) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let registry = tracing_subscriber::registry().with(filter);
    if log.format == "json" {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .init();
    } else {
        registry
            .with(
                tracing_logfmt::builder()
                    .with_span_name(false)
                    .with_span_path(false)
                    .layer()
                    .with_writer(std::io::stderr),
            )
            .init();
    }
}

fn inputs(s: &SourceArgs) -> PinningInputs {
    PinningInputs {
        libvirt_state_dir: s.libvirt_state_dir.clone(),
        proc_root: s.proc_root.clone(),
        sys_root: s.sys_root.clone(),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn serve(s: &SourceArgs, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(s.config.as_deref())?;
    let web = args
        .web_config
        .as_deref()
        .map(WebConfig::load)
        .transpose()?;
    let on = &s.collectors;
    tracing::info!(
        version = pinflow::build_info::VERSION,
        revision = pinflow::build_info::REVISION,
        pinning = on.pinning(),
        flows = on.flows(),
        datapath = on.datapath(),
        "starting pinflow"
    );
    // One thread runs every task: the daemon's work is small and event-driven, and a second
    // worker only adds cross-thread wake-ups (each costs more than most events' own work).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    rt.block_on(async move {
        let state = SharedState::default();
        let mut supervisor = Supervisor::default();
        let probe = if !on.pinning() {
            None
        } else if config.pinning.ebpf {
            match SchedProbe::load() {
                Ok(mut p) => {
                    tracing::info!(mode = %p.mode(), "eBPF sched_switch probe attached");
                    if let Err(e) = p.set_bpf_stats(config.pinning.bpf_stats) {
                        tracing::warn!("cannot switch kernel BPF stats: {e}");
                    }
                    Some(p)
                }
                Err(e) => {
                    tracing::warn!("eBPF placement probe unavailable, placement check off: {e}");
                    state.sources.down(engine::source::SCHED_BPF, e.to_string());
                    None
                }
            }
        } else {
            // Switched off in the config: like a switched-off collector, it reports nothing
            // (reporting it down would raise PinflowSourceDown forever on purpose-built hosts).
            None
        };
        release_free_heap();
        if on.datapath() && config.datapath.enabled {
            let dp_state = state.clone();
            let d = &config.datapath;
            let poll = ovs_dp::PollConfig {
                flow_interval: std::time::Duration::from_secs_f64(d.flow_dump_interval_seconds),
                ebpf: d.ebpf,
                ..Default::default()
            };
            let health = pinflow::detect::datapath::HealthConfig {
                flow_limit: d.flow_limit,
                flow_limit_ratio: d.flow_limit_ratio,
                storm_upcalls_per_second: d.upcall_storm_per_second,
            };
            supervisor
                .thread("ovs-datapath", move || {
                    ovs_dp::run_blocking(dp_state, poll, health)
                })
                .context("cannot start the OVS datapath poller")?;
        }
        if on.pinning() {
            let inputs = inputs(s);
            let eng = PinningEngine::new(config.pinning.clone(), &inputs, probe, state.clone());
            let first_pass = eng
                .start(&supervisor)
                .context("cannot start the pinning thread")?;
            // Serve the first report when it is quick; a slow procfs must not keep the
            // endpoints (and /healthz saying so) down.
            if tokio::time::timeout(FIRST_PASS_WAIT, first_pass)
                .await
                .is_err()
            {
                tracing::warn!(
                    "the first pinning pass is taking longer than {} s; serving without it",
                    FIRST_PASS_WAIT.as_secs()
                );
            }
        }
        if on.flows() {
            supervisor.task(
                "flows",
                engine::flows::run(config.flows.clone(), s.ovs_run_dir.clone(), state.clone()),
            );
        }
        let options = RouterOptions {
            telemetry_path: args.telemetry_path.clone(),
            disable_api: args.disable_api,
        };
        let router = http::router(
            state,
            BuildInfo::current(kernel_release()),
            config.export.clone(),
            &options,
            web.as_ref(),
        );
        tokio::select! {
            served = http::serve(&args.listen, router, web.as_ref(), shutdown_signal()) => served,
            stopped = supervisor.stopped() => Err(anyhow::anyhow!("{stopped}")),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// How long `serve` waits for the first pinning pass before it starts serving.
const FIRST_PASS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Hands the heap freed after loading the eBPF probes (the kernel's BTF, several MiB) back to the
/// OS, so that the long-running daemon's RSS reflects what it keeps.
fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory at the top of glibc's heaps.
    unsafe {
        libc::malloc_trim(0);
    }
    #[cfg(target_env = "musl")]
    // SAFETY: mi_collect only returns mimalloc's free pages to the OS.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

fn check(s: &SourceArgs) -> anyhow::Result<ExitCode> {
    let config = match Config::load(s.config.as_deref()) {
        Ok(c) => {
            println!(
                "config      ok     {}",
                s.config
                    .as_ref()
                    .map_or("(defaults)".into(), |p| p.display().to_string())
            );
            c
        }
        Err(e) => {
            println!("config      ERROR  {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let (report, refresh) = engine::snapshot_once(&inputs(s));
    match &refresh.dir_error {
        Some(e) => println!("libvirt     down   {e}"),
        None => println!(
            "libvirt     up     {} running domain(s) in {}{}",
            report.domains.len(),
            s.libvirt_state_dir.display(),
            if refresh.errors.is_empty() {
                String::new()
            } else {
                format!(", {} unreadable file(s)", refresh.errors.len())
            }
        ),
    }
    for (f, e) in &refresh.errors {
        println!("            error  {f}: {e}");
    }
    if let Err(e) = pinflow::sources::libvirt::can_watch(&s.libvirt_state_dir) {
        println!(
            "            warn   inotify unavailable ({e}): serve falls back to a periodic rescan every {} s",
            config.pinning.interval_seconds
        );
    }
    let proc_ok = s.proc_root.join("self/status").exists();
    println!(
        "procfs      {}   {}",
        if proc_ok { "up  " } else { "down" },
        s.proc_root.display()
    );
    match ovs_dp::DatapathClient::open().and_then(|mut c| {
        c.resolve()?;
        c.datapaths()
    }) {
        Ok(d) => println!(
            "ovs_datapath up     {} datapath(s): {}",
            d.len(),
            d.iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => println!("ovs_datapath down   {e}"),
    }
    if !config.pinning.ebpf {
        println!("sched_bpf   off    disabled in config");
    } else {
        match SchedProbe::load() {
            Ok(p) => println!("sched_bpf   up     attached as {}", p.mode()),
            Err(e) => println!("sched_bpf   down   {e}"),
        }
    }
    match pinflow::sources::ovsdb::can_run(&s.ovs_run_dir) {
        Ok(()) => println!(
            "ovsdb       up     {}",
            s.ovs_run_dir.join("db.sock").display()
        ),
        Err(e) => println!("ovsdb       down   {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn pinning(s: &SourceArgs, json: bool) -> anyhow::Result<ExitCode> {
    Config::load(s.config.as_deref())?;
    let (report, refresh) = engine::snapshot_once(&inputs(s));
    if let Some(e) = &refresh.dir_error {
        eprintln!("pinflow: libvirt state: {e}");
    }
    for (f, e) in &refresh.errors {
        eprintln!("pinflow: {f}: {e}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table::pinning_table(&report));
        println!("(placement needs the eBPF probe of `pinflow serve`; see /api/v1/pinning)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Bridges from OVSDB (one-shot: waits up to 5 s for the first complete snapshot).
async fn ovsdb_bridges(
    run_dir: &std::path::Path,
) -> anyhow::Result<std::collections::BTreeMap<String, pinflow::model::flows::Bridge>> {
    use pinflow::sources::ovsdb;
    ovsdb::can_run(run_dir).map_err(|e| anyhow::anyhow!(e))?;
    let (tx, mut rx) = tokio::sync::watch::channel(ovsdb::OvsdbSnapshot::default());
    let task = tokio::spawn(ovsdb::run_ovsdb(
        run_dir.to_path_buf(),
        tx,
        Default::default(),
    ));
    let snap = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        rx.wait_for(|s| s.connected),
    )
    .await
    .map_err(|_| anyhow::anyhow!("OVSDB at {} did not answer within 5 s", run_dir.display()))?
    .map_err(|_| anyhow::anyhow!("OVSDB client stopped"))?
    .clone();
    task.abort();
    Ok(snap.bridges)
}

fn flows(s: &SourceArgs, a: &FlowsArgs) -> anyhow::Result<ExitCode> {
    use pinflow::detect::flows::DirtyFlowIndex;
    if a.datapath {
        return datapath_flows(a);
    }
    use pinflow::sources::openflow;
    let config = Config::load(s.config.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    rt.block_on(async {
        let bridges = match (&a.bridge, a.dirty) {
            (Some(b), false) => std::iter::once((b.clone(), Default::default())).collect(),
            _ => {
                let mut all = ovsdb_bridges(&s.ovs_run_dir).await?;
                if let Some(b) = &a.bridge {
                    all.retain(|name, _| name == b);
                    anyhow::ensure!(!all.is_empty(), "bridge {b} is not in OVSDB");
                }
                all
            }
        };
        let mut index = DirtyFlowIndex::new(&config.flows)?;
        let now = std::time::Instant::now();
        index.sync_bridges(&bridges, now);
        let mut out = String::new();
        for name in bridges.keys() {
            let timeout = std::time::Duration::from_secs(10);
            if a.dirty {
                let (_, _, flows) = openflow::dump_bridge(&s.ovs_run_dir, name, timeout, 1_000_000)
                    .await
                    .with_context(|| format!("cannot dump flows of {name}"))?;
                engine::flows::load_dump_aged(&mut index, name, flows, now);
            } else {
                let path = s.ovs_run_dir.join(format!("{name}.mgmt"));
                let mut client = openflow::OpenFlowClient::connect(&path, timeout)
                    .await
                    .with_context(|| format!("cannot connect to {}", path.display()))?;
                print_dump(&mut client, !a.no_stats)
                    .await
                    .with_context(|| format!("cannot dump flows of {name}"))?;
            }
        }
        if a.dirty {
            let dirty = engine::flows::dirty_flows_once(&index, &bridges, &s.libvirt_state_dir);
            out = table::dirty_flows_table(&dirty);
        }
        print!("{out}");
        Ok(ExitCode::SUCCESS)
    })
}

/// Prints every flow of the bridge behind `client` as `ovs-ofctl -O OpenFlow13 dump-flows` does
/// (with statistics when `stats`). Each reply is rendered straight from the socket buffer into
/// one text buffer, written out in large chunks: no flow is kept and nothing is allocated per
/// flow, so a 100 000-flow table costs a few tens of ms.
async fn print_dump(
    client: &mut pinflow::sources::openflow::OpenFlowClient,
    stats: bool,
) -> anyhow::Result<()> {
    use pinflow::sources::openflow::{OfError, render::LineRenderer};
    const MAX_FLOWS: usize = 1_000_000;
    const CHUNK: usize = 1 << 18;
    let mut lines = LineRenderer::default();
    let mut text = String::with_capacity(2 * CHUNK);
    let mut stdout = std::io::stdout().lock();
    let mut n = 0usize;
    let mut write_error = None;
    let dumped = client
        .dump_flows_raw(|body| {
            n += lines.push_flow_stats(body, stats, &mut text)?;
            if n > MAX_FLOWS {
                return Err(OfError::TooManyFlows(MAX_FLOWS));
            }
            if text.len() >= CHUNK {
                if let Err(e) = stdout.write_all(text.as_bytes()) {
                    write_error = Some(e);
                    // Not shown: the write error is reported instead.
                    return Err(OfError::Closed);
                }
                text.clear();
            }
            Ok(())
        })
        .await;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    dumped?;
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// The kernel's monotonic clock in ms (the clock of `OVS_FLOW_ATTR_USED`).
fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// `pinflow flows --datapath`: the kernel datapath's megaflows over generic netlink.
fn datapath_flows(a: &FlowsArgs) -> anyhow::Result<ExitCode> {
    let t0 = std::time::Instant::now();
    let mut client = ovs_dp::DatapathClient::open()?;
    if a.capture.is_some() {
        client.capture();
    }
    let dps = client.datapaths()?;
    let mut all = Vec::new();
    for dp in &dps {
        client.megaflows(dp.ifindex, |f| all.push(f))?;
    }
    let took = t0.elapsed();
    if let Some(p) = &a.capture {
        let mut text = String::new();
        for d in client.captured() {
            for b in d {
                text.push_str(&format!("{b:02x}"));
            }
            text.push('\n');
        }
        std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if a.count {
        println!(
            "{} megaflows in {} datapath(s), dumped and decoded in {:.3} s",
            all.len(),
            dps.len(),
            took.as_secs_f64()
        );
    } else {
        print!("{}", ovs_dp::render::render_megaflows(&all, monotonic_ms()));
    }
    Ok(ExitCode::SUCCESS)
}
