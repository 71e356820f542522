//! The `pinflow` command: parses flags and runs a subcommand.

use anyhow::Context as _;
use clap::Parser as _;
use pinflow::cli::{Cli, Command, ServeArgs, SourceArgs};
use pinflow::config::Config;
use pinflow::engine::{self, PinningEngine, PinningInputs};
use pinflow::export::{http, metrics::BuildInfo, table};
use pinflow::sources::sched_bpf::SchedProbe;
use pinflow::state::SharedState;
use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(&cli.sources, ServeArgs::default()),
        Some(Command::Serve(a)) => serve(&cli.sources, a),
        Some(Command::Check) => check(&cli.sources),
        Some(Command::Pinning { json }) => pinning(&cli.sources, json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pinflow: {e:#}");
            ExitCode::from(2)
        }
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    rt.block_on(async move {
        let state = SharedState::default();
        let probe = if config.pinning.ebpf {
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
            state.sources.down(
                engine::source::SCHED_BPF,
                "disabled in config (pinning.ebpf = false)",
            );
            None
        };
        let inputs = inputs(s);
        let mut eng = PinningEngine::new(config.pinning.clone(), &inputs, probe, state.clone());
        eng.pass();
        tokio::spawn(eng.run(inputs.libvirt_state_dir.clone()));
        let build = BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            kernel: kernel_release(),
        };
        let router = http::router(state, build);
        http::serve(args.listen, router, shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
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
    let proc_ok = s.proc_root.join("self/status").exists();
    println!(
        "procfs      {}   {}",
        if proc_ok { "up  " } else { "down" },
        s.proc_root.display()
    );
    if !config.pinning.ebpf {
        println!("sched_bpf   off    disabled in config");
    } else {
        match SchedProbe::load() {
            Ok(p) => println!("sched_bpf   up     attached as {}", p.mode()),
            Err(e) => println!("sched_bpf   down   {e}"),
        }
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
