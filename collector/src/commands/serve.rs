//! `pinflow serve`: the daemon. Starts every pipeline whose collector is on and serves
//! `/metrics`, `/healthz` and the JSON API until SIGTERM/SIGINT or until a supervised thread or
//! task stops.

use super::capabilities;
use crate::cli::{ServeArgs, SourceArgs};
use crate::config::Config;
use crate::engine::supervise::Supervisor;
use crate::engine::{self, Pipelines};
use crate::export::health::BuildInfo;
use crate::export::http::{self, RouterOptions};
use crate::export::web_config::WebConfig;
use crate::model::state::SharedState;
use anyhow::Context as _;
use std::process::ExitCode;

pub(super) fn serve(s: &SourceArgs, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(s.config.as_deref())?;
    let web = args
        .web_config
        .as_deref()
        .map(WebConfig::load)
        .transpose()?;
    let on = &s.collectors;
    tracing::info!(
        version = crate::build_info::VERSION,
        revision = crate::build_info::REVISION,
        pinning = on.pinning(),
        flows = on.flows(),
        datapath = on.datapath(),
        "starting pinflow"
    );
    let pipelines = Pipelines {
        pinning: on.pinning().then(|| config.pinning.clone()),
        flows: on.flows().then(|| config.flows.clone()),
        datapath: on.datapath().then(|| config.datapath.clone()),
        ovs_vswitchd: on.datapath().then(|| config.ovs_vswitchd.clone()),
        conntrack: on.datapath().then(|| config.conntrack.clone()),
        host_cpu: on.pinning().then(|| config.host_cpu.clone()),
    };
    let host = super::host_paths(s);
    let datapath_bpf = pipelines
        .datapath
        .as_ref()
        .is_some_and(|d| d.enabled && d.ebpf);
    // Process setup, while this is the only thread: probes that attach at start, the listening
    // sockets, then the capabilities (see commands/capabilities.rs).
    let state = SharedState::default();
    let probes = engine::load_probes(&pipelines, &state);
    let listeners = http::bind_all(&args.listen, web.as_ref())?;
    if args.drop_capabilities() {
        let conntrack = pipelines.conntrack.as_ref().is_some_and(|c| c.enabled);
        let keep = capabilities::needed_after_start(datapath_bpf, conntrack);
        let d = capabilities::drop_to(&keep)
            .context("cannot drop capabilities (--no-drop-capabilities keeps them)")?;
        tracing::info!(
            kept = d.kept,
            dropped = d.dropped,
            bounding = d.bounding,
            no_new_privs = true,
            "capabilities dropped"
        );
    } else {
        tracing::warn!("--no-drop-capabilities: keeping every capability pinflow was started with");
    }
    // One thread runs the HTTP server and the light tasks: the daemon's work is small and
    // event-driven, and a second worker only adds cross-thread wake-ups (each costs more than
    // most events' own work). The heavy pipelines run on threads of their own.
    let rt = super::current_thread_runtime()?;
    rt.block_on(async move {
        let mut supervisor = Supervisor::default();
        engine::start(pipelines, probes, &host, &state, &supervisor)
            .await
            .context("cannot start the pipelines")?;
        // The heap freed after loading the eBPF probes (the kernel's BTF, several MiB) goes
        // back to the OS, so that the long-running daemon's RSS reflects what it keeps.
        engine::release_free_heap();
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
            served = http::serve(listeners, router, web.as_ref(), shutdown_signal()) => served,
            stopped = supervisor.stopped() => Err(anyhow::anyhow!("{stopped}")),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
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
