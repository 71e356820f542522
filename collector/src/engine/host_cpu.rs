//! Host CPU pipeline: reads nova.conf and the kernel's CPU isolation (source `host_cpu`) every
//! `[host_cpu] reread_seconds`, and checks them against the pinning report each time it changes;
//! publishes the [`HostCpuReport`] and logs each problem once when it appears and when it clears.

use crate::detect::host_cpu::{self, Isolation, IsolationPolicy};
use crate::engine::findings_log::FindingsLog;
use crate::model::health::SourceRegistry;
use crate::model::host_cpu::{HostCpuProblem, HostCpuReport, KernelCpuIsolation, NovaCpuSets};
use crate::model::state::SharedState;
use crate::sources::HostPaths;
use crate::sources::host_cpu::{self as source, SOURCE};
use serde::Deserialize;
use std::time::Duration;

/// `[host_cpu]`: the host CPU configuration checks.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct HostCpuConfig {
    /// Isolation of the dedicated pCPUs the kernel must provide (`["scheduler", "irqs"]`);
    /// by default none is required: the isolation is reported, not judged.
    pub(crate) require_isolation: Vec<Isolation>,
    /// Seconds between reads of nova.conf and the kernel's settings.
    pub(crate) reread_seconds: f64,
}

impl Default for HostCpuConfig {
    fn default() -> Self {
        HostCpuConfig {
            require_isolation: Vec::new(),
            reread_seconds: 60.0,
        }
    }
}

/// What the last read found.
type Inputs = (Option<NovaCpuSets>, Option<KernelCpuIsolation>);

/// Reads nova.conf (when given) and the kernel's isolation, recording the source's health: up
/// when everything configured was read, down with the reason otherwise (what could be read is
/// still used).
fn read(host: &HostPaths, sources: &SourceRegistry) -> Inputs {
    let collection = sources.collect(SOURCE.name);
    let kernel = source::read_kernel(&host.proc_root);
    let nova = host.nova_conf.as_deref().map(source::read_nova_conf);
    let mut errors = Vec::new();
    let kernel = kernel.map_err(|e| errors.push(e)).ok();
    let nova = match nova {
        None => None,
        Some(r) => r.map_err(|e| errors.push(e)).ok(),
    };
    if errors.is_empty() {
        let mut detail = kernel
            .as_ref()
            .map(source::describe_kernel)
            .unwrap_or_default();
        match &nova {
            Some(n) => detail.push_str(&format!("; nova: {}", source::describe_nova(n))),
            None => detail.push_str("; no --nova-conf: Nova's CPU sets are not checked"),
        }
        collection.ok(detail);
    } else {
        collection.errors(errors.len() as u64);
        collection.down(errors.join("; "));
    }
    (nova, kernel)
}

/// Runs the pipeline until the pinning report's channel closes.
pub(crate) async fn run(cfg: HostCpuConfig, host: HostPaths, state: SharedState) {
    let every = Duration::from_secs_f64(cfg.reread_seconds);
    state
        .sources
        .stale_after(SOURCE.name, SourceRegistry::bound_for(every));
    let policy = IsolationPolicy::requiring(&cfg.require_isolation);
    let mut pinning = state.pinning.subscribe();
    let mut reread = tokio::time::interval(every);
    reread.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inputs: Inputs = (None, None);
    let mut log = FindingsLog::new("host CPU configuration problem");
    loop {
        tokio::select! {
            _ = reread.tick() => {
                let (h, s) = (host.clone(), state.sources.clone());
                match tokio::task::spawn_blocking(move || read(&h, &s)).await {
                    Ok(read) => inputs = read,
                    Err(e) => {
                        state.sources.down(SOURCE.name, format!("reading failed: {e}"));
                        continue;
                    }
                }
            }
            changed = pinning.changed() => if changed.is_err() { return },
        }
        let report = HostCpuReport {
            problems: host_cpu::check(
                inputs.0.as_ref(),
                inputs.1.as_ref(),
                policy,
                &state.pinning.get(),
            ),
            nova: inputs.0.clone(),
            kernel: inputs.1.clone(),
        };
        let old = state.host_cpu.get();
        log.changes(
            &findings(&old),
            &findings(&report),
            |f| f.clone(),
            |(p, line)| format!("{}: {line}", p.as_str()),
        );
        state.host_cpu.set_if_changed(report);
    }
}

/// Every finding of `r`, with its problem.
fn findings(r: &HostCpuReport) -> Vec<(HostCpuProblem, String)> {
    r.problems
        .iter()
        .flat_map(|(p, lines)| lines.iter().map(|l| (*p, l.clone())))
        .collect()
}
