//! Exporters: Prometheus /metrics, the JSON API and CLI tables. They only read the reports in
//! [`crate::model`] (through [`crate::model::state::SharedState`]) and encode them.

mod conntrack;
pub(crate) mod datapath;
mod encode;
pub mod families;
mod flows;
pub(crate) mod health;
mod host_cpu;
pub(crate) mod http;
mod interfaces;
mod links;
pub(crate) mod metrics;
mod ovs_vswitchd;
mod pinning;
pub(crate) mod table;
pub(crate) mod web_config;

use serde::Deserialize;

/// `[export]`: bounds on what /metrics carries.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ExportConfig {
    /// Most `pinflow_ovs_dirty_flow_info` series per host; the rest are counted in
    /// `pinflow_ovs_dirty_flow_info_dropped` (all of them are in `/api/v1/flows/dirty`).
    pub(crate) dirty_flow_info_limit: usize,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            dirty_flow_info_limit: 20,
        }
    }
}
