//! Prometheus exposition of pinflow's own health: per-source state, build info and the cost of
//! its eBPF programs.

use super::encode::{Lv, Res, counter, gauge};
use super::families;
use crate::model::state::SharedState;

/// Build facts for `pinflow_build_info`.
#[derive(Clone, Debug)]
pub(crate) struct BuildInfo {
    /// pinflow version.
    pub(crate) version: String,
    /// Git revision it was built from.
    pub(crate) revision: String,
    /// rustc that built it.
    pub(crate) rustc: String,
    /// Running kernel release.
    pub(crate) kernel: String,
}

impl BuildInfo {
    /// This binary's build facts on a kernel of release `kernel`.
    pub(crate) fn current(kernel: String) -> BuildInfo {
        use crate::build_info;
        BuildInfo {
            version: build_info::VERSION.into(),
            revision: build_info::REVISION.into(),
            rustc: build_info::RUSTC.into(),
            kernel,
        }
    }
}
use prometheus_client::encoding::DescriptorEncoder;

/// Encodes every self-monitoring family.
pub(crate) fn encode_health(
    enc: &mut DescriptorEncoder,
    state: &SharedState,
    build: &BuildInfo,
) -> Res {
    let sources = state.sources.snapshot();
    gauge(
        enc,
        &families::SOURCE_UP,
        sources
            .iter()
            .map(|(s, h)| ([("source", Lv(s))], if h.up { 1.0 } else { 0.0 })),
    )?;
    counter(
        enc,
        &families::SOURCE_ERRORS,
        sources
            .iter()
            .map(|(s, h)| ([("source", Lv(s))], h.errors_total as f64)),
    )?;
    gauge(
        enc,
        &families::COLLECT_DURATION,
        sources
            .iter()
            .map(|(s, h)| ([("source", Lv(s))], h.last_duration.as_secs_f64())),
    )?;
    gauge(
        enc,
        &families::SOURCE_LAST_SUCCESS,
        sources
            .iter()
            .filter_map(|(s, h)| Some(([("source", Lv(s))], h.last_success_unix?))),
    )?;
    gauge(
        enc,
        &families::BUILD_INFO,
        [(
            [
                ("version", Lv(&build.version)),
                ("revision", Lv(&build.revision)),
                ("rustc", Lv(&build.rustc)),
                ("kernel", Lv(&build.kernel)),
            ],
            1.0,
        )],
    )?;
    let ev = state.datapath_events.get();
    let sched = state.bpf_costs.get();
    let bpf: Vec<&crate::model::health::BpfProgramCost> =
        sched.iter().chain(ev.programs.iter()).collect();
    counter(
        enc,
        &families::BPF_RUN_SECONDS,
        bpf.iter()
            .map(|p| ([("program", Lv(&p.program))], p.run_time_ns as f64 / 1e9)),
    )?;
    counter(
        enc,
        &families::BPF_RUNS,
        bpf.iter()
            .map(|p| ([("program", Lv(&p.program))], p.run_count as f64)),
    )
}
