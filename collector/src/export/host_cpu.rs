//! Prometheus exposition of the host CPU report (`pinflow_host_cpu_config_problem`).

use super::encode::{Lv, Res, gauge};
use super::families;
use crate::model::host_cpu::HostCpuReport;
use prometheus_client::encoding::DescriptorEncoder;

/// Encodes one series per check made: its number of findings.
pub(crate) fn encode_host_cpu(enc: &mut DescriptorEncoder, r: &HostCpuReport) -> Res {
    gauge(
        enc,
        &families::HOST_CPU_CONFIG_PROBLEM,
        r.problems
            .iter()
            .map(|(p, found)| ([("problem", Lv(p.as_str()))], found.len() as f64)),
    )
}
