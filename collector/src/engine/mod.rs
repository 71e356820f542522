//! Pipelines: each wires its sources to its detectors and is the only writer of its report in
//! the [`SharedState`]. [`start`] runs every pipeline whose collector is on.
//!
//! - [`pinning`]: libvirt inventory + procfs/cgroupfs + eBPF placement → pinning checks; also
//!   publishes the host inventory the other pipelines join on.
//!   Intrusions on dedicated pCPUs are its part `stolen`.
//! - [`flows`]: OVSDB + OpenFlow mirrors → dirty-flow rules.
//! - [`datapath`]: the OVS kernel datapath over genetlink + its eBPF probe → datapath checks.
//! - [`ovs_vswitchd`]: ovs-vswitchd's unixctl counters and the OVS processes (runs with the
//!   datapath collector; its flow limit feeds the datapath checks).
//! - [`conntrack`]: the kernel's conntrack table per zone over ctnetlink, joined to instances
//!   through the zones the flows load (runs with the datapath collector, when `[conntrack]
//!   enabled`).
//! - [`host_cpu`]: nova.conf + the kernel's CPU isolation, against the pinning report → host CPU
//!   configuration checks (runs with the pinning collector).
//! - [`supervise`]: no thread or task of theirs stops silently.

pub(crate) mod conntrack;
mod ct_zones;
pub(crate) mod datapath;
mod findings_log;
pub(crate) mod flows;
pub(crate) mod host_cpu;
pub(crate) mod ovs_vswitchd;
pub(crate) mod pinning;
mod stolen;
pub(crate) mod supervise;

use crate::detect::flows::DirtyFlowConfig;
use crate::model::state::SharedState;
use crate::sources::HostPaths;
use crate::sources::sched_bpf::SchedProbe;
use datapath::DatapathConfig;
use pinning::{PinningConfig, PinningEngine};
use std::time::Duration;
use supervise::Supervisor;

/// What to run: each pipeline's config section, `None` when its collector is off.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pipelines {
    /// The pinning pipeline.
    pub(crate) pinning: Option<PinningConfig>,
    /// The dirty-flow pipeline.
    pub(crate) flows: Option<DirtyFlowConfig>,
    /// The datapath pipeline.
    pub(crate) datapath: Option<DatapathConfig>,
    /// The ovs-vswitchd pipeline (on with the datapath collector).
    pub(crate) ovs_vswitchd: Option<ovs_vswitchd::VswitchdConfig>,
    /// The conntrack pipeline (on with the datapath collector and `[conntrack] enabled`).
    pub(crate) conntrack: Option<conntrack::ConntrackConfig>,
    /// The host CPU pipeline (on with the pinning collector).
    pub(crate) host_cpu: Option<host_cpu::HostCpuConfig>,
}

/// How long [`start`] waits for the first pinning pass before it returns (a slow procfs must not
/// keep the endpoints, and `/healthz` saying so, down).
const FIRST_PASS_WAIT: Duration = Duration::from_secs(5);

/// Loads the eBPF probes that attach at start (the sched probe, when the pinning pipeline and its
/// `ebpf` key are on), before any thread exists: `serve` drops the capabilities it took once this
/// and its sockets are done. The datapath probe attaches later, in its poller.
pub(crate) fn load_probes(pipelines: &Pipelines, state: &SharedState) -> Probes {
    Probes {
        sched: pipelines
            .pinning
            .as_ref()
            .and_then(|cfg| pinning::load_probe(cfg, state)),
        pin_events: pipelines.pinning.as_ref().map(pinning::load_events),
    }
}

/// The probes [`load_probes`] attached, handed to [`start`].
pub(crate) struct Probes {
    sched: Option<SchedProbe>,
    /// The pinning event sources (`Err`: why the pinning pipeline polls).
    pin_events: Option<Result<pinning::EventSources, String>>,
}

/// Starts every pipeline of `pipelines` under `supervisor`, publishing into `state`. Returns
/// once the first pinning report is published, or after [`FIRST_PASS_WAIT`]. Must be called
/// from within the Tokio runtime.
pub(crate) async fn start(
    pipelines: Pipelines,
    probes: Probes,
    host: &HostPaths,
    state: &SharedState,
    supervisor: &Supervisor,
) -> std::io::Result<()> {
    let probe = probes.sched;
    if let Some(cfg) = pipelines.datapath.filter(|d| d.enabled) {
        let state = state.clone();
        supervisor.thread("ovs-datapath", move || datapath::run(state, &cfg))?;
    }
    if let Some(cfg) = pipelines.conntrack.filter(|c| c.enabled) {
        let state = state.clone();
        supervisor.thread("conntrack", move || conntrack::run(state, &cfg))?;
    }
    if let Some(cfg) = pipelines.ovs_vswitchd.filter(|c| c.enabled) {
        supervisor.task(
            "ovs_vswitchd",
            ovs_vswitchd::run(cfg, host.clone(), state.clone()),
        );
    }
    if let Some(cfg) = pipelines.pinning {
        let events = probes
            .pin_events
            .unwrap_or_else(|| Err("not loaded".to_string()));
        let first_pass =
            PinningEngine::new(cfg, host, probe, events, state.clone()).start(supervisor)?;
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
    if let Some(cfg) = pipelines.host_cpu {
        supervisor.task("host_cpu", host_cpu::run(cfg, host.clone(), state.clone()));
    }
    if let Some(cfg) = pipelines.flows {
        // On a thread of its own: mirroring and indexing a (re)synced 100 000-flow table takes
        // about half a second of CPU, which must not hold up the scrapes this runtime answers.
        supervisor.runtime_thread("flows", {
            let run = flows::run(cfg, host.ovs_run_dir.clone(), state.clone());
            async move {
                yield_to_scrapes();
                run.await
            }
        })?;
    }
    Ok(())
}

/// Nice value of the pipelines' background threads (pinning passes, the flow mirror): above
/// the HTTP thread's 0, so that where both want a CPU the scheduler runs a scrape first (a full
/// pass at 200 domains × 8 vCPUs is ~150 ms of CPU; on a busy host it must not stretch a
/// scrape). Only the weight changes: on an idle CPU the thread runs as before.
const BACKGROUND_NICE: i32 = 5;

/// Lowers the calling thread's scheduling weight to [`BACKGROUND_NICE`] (Linux nice values are
/// per thread). Raising one's own nice value needs no privilege; a failure is logged and
/// changes nothing else.
#[allow(unsafe_code)] // setpriority has no safe wrapper in the workspace's crates.
pub(crate) fn yield_to_scrapes() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority takes plain integers; `tid` is this thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a background thread's priority");
    }
}

/// Hands the heap's free memory back to the OS (glibc keeps what it freed; musl's allocator, the
/// static build's, returns it by itself), once, after the eBPF probes are loaded (the kernel's
/// BTF, several MiB). Not after every full pinning pass: `malloc_trim` holds each arena's lock
/// while it returns pages, so a scrape allocating meanwhile waits, and the next pass takes the
/// pages back anyway. The static build keeps musl's own allocator:
/// measured against mimalloc and jemalloc it alone keeps the RSS of a 100 000-flow mirror within
/// 10 % of glibc's (docs/deploy.md, "The binary and the image").
#[allow(unsafe_code)] // malloc_trim has no safe wrapper.
pub(crate) fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of glibc's heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}
