//! Exporters: Prometheus /metrics, the JSON API and CLI tables. They only read [`crate::state`].

pub mod datapath;
pub mod families;
pub mod http;
pub mod metrics;
pub mod table;
pub mod web_config;
