//! The `pinflow` command: parses flags and runs a subcommand.

use anyhow::Context as _;
use clap::Parser as _;
use pinflow::cli::{Cli, Command, FlowsArgs, ServeArgs, SourceArgs};
use pinflow::config::Config;
use pinflow::engine::supervise::Supervisor;
use pinflow::engine::{self, PinningEngine, PinningInputs};
use pinflow::export::http::{self, RouterOptions};
use pinflow::export::table::CheckReport;
use pinflow::export::web_config::WebConfig;
use pinflow::export::{metrics::BuildInfo, table};
use pinflow::model::state::SharedState;
use pinflow::sources::ovs_dp;
use pinflow::sources::sched_bpf::SchedProbe;
use std::io::Write as _;
use std::process::ExitCode;
use tracing::instrument::WithSubscriber as _;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let result = match cli.command {
        None => serve(&cli.sources, ServeArgs::default()),
        Some(Command::Serve(a)) => serve(&cli.sources, a),
        Some(Command::Check { json }) => check(&cli.sources, json),
        Some(Command::Pinning { json }) => pinning(&cli.sources, json),
        Some(Command::Flows(a)) => flows(&cli.sources, &a),
        Some(Command::Completion { shell }) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "pinflow", &mut script);
            emit(&script).map(|()| ExitCode::SUCCESS)
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
    let mut roff = Vec::new();
    clap_mangen::Man::new(page).render(&mut roff)?;
    emit(&roff)?;
    Ok(ExitCode::SUCCESS)
}

/// Exit status of a one-shot command that found something (drift, dirty flows, a source down).
const EXIT_FOUND: u8 = 1;
/// Exit status of a one-shot command that could not do its job (bad config, unreadable sources).
const EXIT_ERROR: u8 = 2;

/// Writes `bytes` to stdout. A closed pipe (`pinflow check | head -1`) is not an error: the
/// reader wants no more, so the output ends quietly.
fn emit(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("cannot write to stdout: {e}"))
        }
        _ => Ok(()),
    }
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
            let poll = pinflow::engine::datapath::PollConfig {
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
                    pinflow::engine::datapath::run_blocking(dp_state, poll, health)
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
/// OS, so that the long-running daemon's RSS reflects what it keeps. The static build keeps musl's
/// own allocator: measured against mimalloc and jemalloc it alone keeps the RSS of a 100 000-flow
/// mirror within 10 % of glibc's (docs/deploy.md, "The binary and the image").
fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory at the top of glibc's heaps.
    unsafe {
        libc::malloc_trim(0);
    }
    // musl's allocator (the static build) returns freed memory to the OS by itself.
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

fn check(s: &SourceArgs, json: bool) -> anyhow::Result<ExitCode> {
    let mut report = CheckReport {
        config: s.config.as_ref().map(|p| p.display().to_string()),
        config_error: None,
        sources: Vec::new(),
        libvirt_errors: Vec::new(),
    };
    match Config::load(s.config.as_deref()) {
        Ok(config) => check_sources(s, &config, &mut report)?,
        Err(e) => report.config_error = Some(e.to_string()),
    }
    let text = if json {
        let mut t = serde_json::to_string_pretty(&report)?;
        t.push('\n');
        t
    } else {
        table::check_table(&report)
    };
    emit(text.as_bytes())?;
    Ok(ExitCode::from(report.exit_code()))
}

/// Probes every source the flags and the config switch on, as `serve` would start it; sources
/// switched off are listed as `off` with the flag or config key that did it.
fn check_sources(s: &SourceArgs, config: &Config, report: &mut CheckReport) -> anyhow::Result<()> {
    use table::{CheckState, SourceCheck};
    let mut push = |source: &'static str, bridge: Option<String>, r: Probe| {
        let (state, detail) = match r {
            Probe::Ran(Ok(d)) => (CheckState::Up, d),
            Probe::Ran(Err(e)) => (CheckState::Down, e),
            Probe::Off(why) => (CheckState::Off, why.to_string()),
        };
        report.sources.push(SourceCheck {
            source,
            bridge,
            state,
            detail,
        });
    };
    let on = &s.collectors;
    let mut libvirt_errors = Vec::new();
    if on.pinning() {
        let (domains, refresh, _) = engine::snapshot_once(&inputs(s));
        push(
            engine::source::LIBVIRT,
            None,
            Probe::Ran(match &refresh.dir_error {
                Some(e) => Err(e.clone()),
                None => Ok(format!(
                    "{} running domain(s) in {}{}{}",
                    domains.domains.len(),
                    s.libvirt_state_dir.display(),
                    if refresh.errors.is_empty() {
                        String::new()
                    } else {
                        format!(", {} unreadable file(s)", refresh.errors.len())
                    },
                    match pinflow::sources::libvirt::can_watch(&s.libvirt_state_dir) {
                        Ok(_) => String::new(),
                        Err(e) => format!(
                            "; inotify unavailable ({e}): serve falls back to a periodic rescan every {} s",
                            config.pinning.interval_seconds
                        ),
                    }
                )),
            }),
        );
        libvirt_errors = refresh
            .errors
            .iter()
            .map(|(f, e)| format!("{f}: {e}"))
            .collect();
        let hostfs = pinflow::sources::procfs::HostFs::new(s.proc_root.clone(), s.sys_root.clone());
        push(engine::source::PROCFS, None, Probe::Ran(hostfs.probe()));
        push(
            engine::source::SCHED_BPF,
            None,
            if config.pinning.ebpf {
                Probe::Ran(
                    SchedProbe::load()
                        .map(|p| format!("attached as {}", p.mode()))
                        .map_err(|e| e.to_string()),
                )
            } else {
                Probe::Off("off in the config ([pinning] ebpf = false)")
            },
        );
    } else {
        for src in [
            engine::source::LIBVIRT,
            engine::source::PROCFS,
            engine::source::SCHED_BPF,
        ] {
            push(src, None, Probe::Off("--no-collector.pinning"));
        }
    }
    if on.flows() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to start the async runtime")?;
        let (db, bridges) = rt.block_on(check_ovs(&s.ovs_run_dir));
        push(engine::source::OVSDB, None, Probe::Ran(db));
        match bridges {
            Err(e) => push(engine::source::OPENFLOW, None, Probe::Ran(Err(e))),
            Ok(b) if b.is_empty() => push(
                engine::source::OPENFLOW,
                None,
                Probe::Ran(Ok("no bridge in OVSDB".into())),
            ),
            Ok(b) => {
                for (bridge, r) in b {
                    push(engine::source::OPENFLOW, Some(bridge), Probe::Ran(r));
                }
            }
        }
    } else {
        for src in [engine::source::OVSDB, engine::source::OPENFLOW] {
            push(src, None, Probe::Off("--no-collector.flows"));
        }
    }
    use pinflow::sources::ovs_dp::bpf::SOURCE as DP_BPF;
    if !on.datapath() {
        push(ovs_dp::SOURCE, None, Probe::Off("--no-collector.datapath"));
        push(DP_BPF, None, Probe::Off("--no-collector.datapath"));
    } else if !config.datapath.enabled {
        let why = "off in the config ([datapath] enabled = false)";
        push(ovs_dp::SOURCE, None, Probe::Off(why));
        push(DP_BPF, None, Probe::Off(why));
    } else {
        let dps = ovs_dp::DatapathClient::open()
            .and_then(|mut c| {
                c.resolve()?;
                c.datapaths()
            })
            .map_err(|e| e.to_string());
        push(
            ovs_dp::SOURCE,
            None,
            Probe::Ran(dps.as_ref().map_err(Clone::clone).map(|d| {
                let names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
                format!("{} datapath(s) {}", d.len(), names.join(", "))
                    .trim_end()
                    .to_string()
            })),
        );
        let bpf = if !config.datapath.ebpf {
            Probe::Off("off in the config ([datapath] ebpf = false)")
        } else {
            // As in `serve`: the programs attach only while a datapath exists.
            Probe::Ran(match &dps {
                Ok(d) if !d.is_empty() => pinflow::sources::ovs_dp::bpf::DatapathProbe::load()
                    .map(|p| {
                        if p.drops_attached() {
                            "upcalls, actions and OVS drop reasons".to_string()
                        } else {
                            "upcalls and actions (no OVS drop reasons on this kernel)".to_string()
                        }
                    })
                    .map_err(|e| e.to_string()),
                _ => {
                    Err("no OVS kernel datapath (openvswitch module absent or no datapath)".into())
                }
            })
        };
        push(DP_BPF, None, bpf);
    }
    report.libvirt_errors = libvirt_errors;
    Ok(())
}

/// The outcome of one source's probe in `pinflow check`.
enum Probe {
    /// It was probed: what it found, or why it cannot run.
    Ran(Result<String, String>),
    /// It is switched off, by this flag or config key.
    Off(&'static str),
}

/// One check result per bridge (`openflow`), or why there is no bridge list.
type BridgeChecks = Result<Vec<(String, Result<String, String>)>, String>;

/// OVSDB and every bridge's OpenFlow session, as `serve` opens them (connect, OpenFlow 1.3
/// handshake, flow monitor, port descriptions), each within [`ONE_SHOT_TIMEOUT`].
async fn check_ovs(run_dir: &std::path::Path) -> (Result<String, String>, BridgeChecks) {
    use pinflow::sources::openflow::OpenFlowClient;
    let bridges = match ovsdb_bridges(run_dir).await {
        Ok(b) => b,
        Err(e) => {
            let e = e.to_string();
            return (Err(e), Err("no bridge list (OVSDB is down)".to_string()));
        }
    };
    let db = Ok(format!(
        "{}, {} bridge(s)",
        run_dir.join("db.sock").display(),
        bridges.len()
    ));
    let mut checks = Vec::new();
    for name in bridges.keys() {
        let path = run_dir.join(format!("{name}.mgmt"));
        let r = async {
            let mut c = OpenFlowClient::connect(&path, ONE_SHOT_TIMEOUT).await?;
            c.start_monitor().await?;
            let ports = c.port_descs().await?;
            Ok::<_, pinflow::sources::openflow::OfError>(format!(
                "{} port(s), flow monitor ok",
                ports.len()
            ))
        }
        .await
        .map_err(|e| format!("{}: {e}", path.display()));
        checks.push((name.clone(), r));
    }
    (db, Ok(checks))
}

/// How long a one-shot command waits for OVSDB or a switch.
const ONE_SHOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn pinning(s: &SourceArgs, json: bool) -> anyhow::Result<ExitCode> {
    Config::load(s.config.as_deref())?;
    let hostfs = pinflow::sources::procfs::HostFs::new(s.proc_root.clone(), s.sys_root.clone());
    if let Err(e) = hostfs.probe() {
        anyhow::bail!("procfs: {e}");
    }
    let (report, refresh, proc_errors) = engine::snapshot_once(&inputs(s));
    if let Some(e) = &refresh.dir_error {
        // Without the state dir nothing is known: no table that could read as "no drift".
        anyhow::bail!("libvirt state: {e}");
    }
    let mut unread = Vec::new();
    for (f, e) in &refresh.errors {
        unread.push(format!("{f}: {e}"));
    }
    if proc_errors > 0 {
        unread.push(format!(
            "{proc_errors} procfs/cgroupfs read error(s) (--log.level debug names them)"
        ));
    }
    let text = if json {
        let mut t = serde_json::to_string_pretty(&report)?;
        t.push('\n');
        t
    } else {
        let mut t = table::pinning_table(&report);
        t.push_str("(placement needs the eBPF probe of `pinflow serve`; see /api/v1/pinning)\n");
        t
    };
    emit(text.as_bytes())?;
    for u in &unread {
        eprintln!("pinflow: cannot read {u}");
    }
    Ok(ExitCode::from(if !unread.is_empty() {
        EXIT_ERROR
    } else if report.domains.iter().any(|d| !d.drifts.is_empty()) {
        EXIT_FOUND
    } else {
        0
    }))
}

/// Bridges from OVSDB (one-shot: waits up to [`ONE_SHOT_TIMEOUT`] for the first complete
/// snapshot). The error says why OVSDB did not answer.
async fn ovsdb_bridges(
    run_dir: &std::path::Path,
) -> anyhow::Result<std::collections::BTreeMap<String, pinflow::model::flows::Bridge>> {
    use pinflow::sources::ovsdb;
    ovsdb::can_run(run_dir).map_err(|e| anyhow::anyhow!(e))?;
    let (tx, mut rx) = tokio::sync::watch::channel(ovsdb::OvsdbSnapshot::default());
    let health = pinflow::model::health::SourceRegistry::default();
    // The client's own state-change log lines are the daemon's; here the outcome is the answer
    // (or the error naming the reason), so they are not printed.
    let task = tokio::spawn(
        ovsdb::run_ovsdb(run_dir.to_path_buf(), tx, health.clone())
            .with_subscriber(tracing::subscriber::NoSubscriber::default()),
    );
    let snap = tokio::time::timeout(ONE_SHOT_TIMEOUT, rx.wait_for(|s| s.connected)).await;
    task.abort();
    let why = || {
        health
            .snapshot()
            .get(ovsdb::SOURCE)
            .map(|h| h.detail.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "no answer".into())
    };
    let snap = snap
        .map_err(|_| {
            anyhow::anyhow!(
                "OVSDB at {} did not answer within {} s: {}",
                run_dir.display(),
                ONE_SHOT_TIMEOUT.as_secs(),
                why()
            )
        })?
        .map_err(|_| anyhow::anyhow!("OVSDB client stopped: {}", why()))?
        .clone();
    Ok(snap.bridges)
}

/// The error for `--bridge B` when B has no OpenFlow socket: the bridges OVSDB knows, or why
/// OVS could not be asked.
async fn no_such_bridge(run_dir: &std::path::Path, bridge: &str) -> anyhow::Error {
    match ovsdb_bridges(run_dir).await {
        Ok(all) if all.is_empty() => anyhow::anyhow!("no such bridge: {bridge} (OVSDB has none)"),
        Ok(all) => anyhow::anyhow!(
            "no such bridge: {bridge} (bridges: {})",
            all.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
        Err(e) => anyhow::anyhow!(
            "no such bridge: {bridge} (no {}; is ovs-vswitchd running? {e})",
            run_dir.join(format!("{bridge}.mgmt")).display()
        ),
    }
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
            (Some(b), false) => {
                if !s.ovs_run_dir.join(format!("{b}.mgmt")).exists() {
                    return Err(no_such_bridge(&s.ovs_run_dir, b).await);
                }
                std::iter::once((b.clone(), Default::default())).collect()
            }
            _ => {
                let mut all = ovsdb_bridges(&s.ovs_run_dir).await?;
                if let Some(b) = &a.bridge {
                    if !all.contains_key(b) {
                        return Err(no_such_bridge(&s.ovs_run_dir, b).await);
                    }
                    all.retain(|name, _| name == b);
                }
                all
            }
        };
        let timeout = std::time::Duration::from_secs(10);
        if a.dirty {
            let mut index = DirtyFlowIndex::new(&config.flows)?;
            let now = std::time::Instant::now();
            index.sync_bridges(&bridges, now);
            for name in bridges.keys() {
                let (_, _, flows) = openflow::dump_bridge(
                    &s.ovs_run_dir,
                    name,
                    timeout,
                    pinflow::model::limits::MAX_FLOWS_PER_BRIDGE,
                )
                .await
                .with_context(|| format!("cannot dump flows of {name}"))?;
                engine::flows::load_dump_aged(&mut index, name, flows, now);
            }
            let dirty = engine::flows::dirty_flows_once(&index, &bridges, &s.libvirt_state_dir);
            let text = if a.json {
                let mut t = serde_json::to_string_pretty(&dirty)?;
                t.push('\n');
                t
            } else {
                table::dirty_flows_table(&dirty)
            };
            emit(text.as_bytes())?;
            return Ok(ExitCode::from(if dirty.is_empty() {
                0
            } else {
                EXIT_FOUND
            }));
        }
        if a.json {
            let mut out = Vec::new();
            for name in bridges.keys() {
                let path = s.ovs_run_dir.join(format!("{name}.mgmt"));
                let mut client = openflow::OpenFlowClient::connect(&path, timeout)
                    .await
                    .with_context(|| format!("cannot connect to {}", path.display()))?;
                let flows = client
                    .dump_flows(pinflow::model::limits::MAX_FLOWS_PER_BRIDGE)
                    .await
                    .with_context(|| format!("cannot dump flows of {name}"))?;
                // Flows that do not decode are skipped by the dump and shown raw here.
                let (bad, n_bad) = client.take_undecodable();
                let undecodable: Vec<_> = bad
                    .iter()
                    .map(|u| {
                        serde_json::json!({
                            "table": u.table,
                            "priority": u.priority,
                            "cookie": format!("{:#x}", u.cookie),
                            "error": u.error,
                            "raw": u.raw_hex(),
                        })
                    })
                    .collect();
                let mut bridge = serde_json::json!({
                    "bridge": name,
                    "flows": flows.iter().map(|f| flow_json(f, !a.no_stats)).collect::<Vec<_>>(),
                });
                if n_bad > 0 {
                    bridge["undecodable"] = serde_json::json!(undecodable);
                    bridge["undecodable_total"] = serde_json::json!(n_bad);
                }
                out.push(bridge);
            }
            let mut t = serde_json::to_string_pretty(&serde_json::json!({ "bridges": out }))?;
            t.push('\n');
            emit(t.as_bytes())?;
            return Ok(ExitCode::SUCCESS);
        }
        let several = bridges.len() > 1;
        for (i, name) in bridges.keys().enumerate() {
            if several {
                let sep = if i == 0 { "" } else { "\n" };
                emit(format!("{sep}==> {name} <==\n").as_bytes())?;
            }
            let path = s.ovs_run_dir.join(format!("{name}.mgmt"));
            let mut client = openflow::OpenFlowClient::connect(&path, timeout)
                .await
                .with_context(|| format!("cannot connect to {}", path.display()))?;
            let reader_gone = print_dump(&mut client, !a.no_stats)
                .await
                .with_context(|| format!("cannot dump flows of {name}"))?;
            if reader_gone {
                break;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// One flow of `pinflow flows --json`.
fn flow_json(f: &pinflow::model::openflow::FlowStats, stats: bool) -> serde_json::Value {
    let e = &f.entry;
    let mut v = serde_json::json!({
        "table": e.table,
        "priority": e.priority,
        "cookie": format!("{:#x}", e.cookie),
        "flow": e.text(),
    });
    if stats {
        v["duration_seconds"] =
            serde_json::json!(f64::from(f.duration_sec) + f64::from(f.duration_nsec) / 1e9);
        v["n_packets"] = f.n_packets.into();
        v["n_bytes"] = f.n_bytes.into();
    }
    v
}

/// Prints every flow of the bridge behind `client` as `ovs-ofctl -O OpenFlow13 dump-flows` does
/// (with statistics when `stats`). Each reply is rendered straight from the socket buffer into
/// one text buffer, written out in large chunks: no flow is kept and nothing is allocated per
/// flow, so a 100 000-flow table costs a few tens of ms.
/// Returns true when stdout was closed (`| head`): the output ended quietly.
async fn print_dump(
    client: &mut pinflow::sources::openflow::OpenFlowClient,
    stats: bool,
) -> anyhow::Result<bool> {
    use pinflow::model::openflow::render::LineRenderer;
    use pinflow::sources::openflow::OfError;
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
    let closed = |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe;
    match write_error {
        Some(e) if closed(&e) => return Ok(true),
        Some(e) => return Err(anyhow::anyhow!("cannot write to stdout: {e}")),
        None => {}
    }
    dumped?;
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(false),
        Err(e) if closed(&e) => Ok(true),
        Err(e) => Err(anyhow::anyhow!("cannot write to stdout: {e}")),
    }
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
    let text = if a.count {
        format!(
            "{} megaflows in {} datapath(s), dumped and decoded in {:.3} s\n",
            all.len(),
            dps.len(),
            took.as_secs_f64()
        )
    } else {
        ovs_dp::render::render_megaflows(&all, monotonic_ms())
    };
    emit(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
