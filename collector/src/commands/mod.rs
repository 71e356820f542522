//! The subcommands: each parses nothing itself (see [`crate::cli`]), starts what it needs from
//! `engine` or `sources`, and prints through `export`. [`main`] is the whole binary.
//!
//! - [`serve`]: the daemon (every pipeline, the HTTP endpoints).
//! - [`check`]: which sources can run here and why not.
//! - [`pinning`], [`flows`]: one-shot tables for a person at a terminal.

mod capabilities;
mod check;
mod flows;
mod pinning;
mod serve;

use crate::cli::{Cli, Command, SourceArgs};
use crate::sources::HostPaths;
use std::io::Write as _;
use std::process::ExitCode;

/// Parses the command line, runs the subcommand, and turns an error into exit status 2 with the
/// reason on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse_args();
    init_logging(&cli.log);
    let result = match cli.command {
        None => serve::serve(&cli.sources, Default::default()),
        Some(Command::Serve(a)) => serve::serve(&cli.sources, a),
        Some(Command::Check { json }) => check::check(&cli.sources, json),
        Some(Command::Pinning { json }) => pinning::pinning(&cli.sources, json),
        Some(Command::Flows(a)) => flows::flows(&cli.sources, &a),
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
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Where the sources find the host, from the flags.
fn host_paths(s: &SourceArgs) -> HostPaths {
    HostPaths {
        proc_root: s.proc_root.clone(),
        sys_root: s.sys_root.clone(),
        libvirt_state_dir: s.libvirt_state_dir.clone(),
        ovs_run_dir: s.ovs_run_dir.clone(),
        nova_conf: s.nova_conf.clone(),
    }
}

/// How long an idle thread of the runtime's blocking pool waits for more work before it exits.
/// Longer than the periodic readers' intervals (ovs-vswitchd every 15 s, the host CPU
/// configuration every 60 s), so that each read reuses a thread instead of creating one (tokio's
/// 10 s default made every ovs-vswitchd read start two threads: about half of an idle daemon's
/// CPU).
const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(90);

/// A runtime on the calling thread, for the daemon and the one-shot commands.
fn current_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()
        .context("failed to start the async runtime")
}

/// Prints `value` as pretty JSON with a final newline.
fn emit_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut t = serde_json::to_string_pretty(value)?;
    t.push('\n');
    emit(t.as_bytes())
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
fn init_logging(log: &crate::cli::LogArgs) {
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
