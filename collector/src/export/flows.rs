//! Prometheus exposition of the dirty-flow report (`pinflow_ovs_flows`, `pinflow_ovs_dirty_*`,
//! `pinflow_ovs_port_info`).

use super::encode::{Lv, Res, gauge};
use super::families;
use crate::export::ExportConfig;
use crate::model::flows::FlowsReport;
use prometheus_client::encoding::DescriptorEncoder;

/// Encodes every flow family; `limits` caps the per-flow series.
pub(crate) fn encode_flows(
    enc: &mut DescriptorEncoder,
    r: &FlowsReport,
    limits: &ExportConfig,
) -> Res {
    // A bridge whose OpenFlow session is down has no current table: its flow counts and dirty
    // counts are left out (not served as fresh) until the session is back and resynced;
    // `pinflow_source_up{source="openflow"}` is 0 meanwhile and `/api/v1/flows` marks them stale.
    let current = |b: &str| r.bridges.get(b).is_none_or(|s| s.connected);
    let tables: Vec<(&str, String, usize)> = r
        .bridges
        .iter()
        .filter(|(b, _)| current(b))
        .flat_map(|(b, s)| {
            s.flows_per_table
                .iter()
                .map(move |(t, n)| (b.as_str(), t.to_string(), *n))
        })
        .collect();
    gauge(
        enc,
        &families::OVS_FLOWS,
        tables
            .iter()
            .map(|(b, t, n)| ([("bridge", Lv(b)), ("table", Lv(t))], *n as f64)),
    )?;
    gauge(
        enc,
        &families::OVS_DIRTY_FLOWS,
        r.dirty_counts
            .iter()
            .filter(|(b, _)| current(b))
            .flat_map(|(b, rules)| {
                rules
                    .iter()
                    .map(move |(rule, n)| ([("bridge", Lv(b)), ("rule", Lv(rule))], *n as f64))
            }),
    )?;
    gauge(
        enc,
        &families::OVS_DIRTY_FLOW_RULE_INFO,
        r.rule_severity
            .iter()
            .map(|(rule, s)| ([("rule", Lv(rule)), ("severity", Lv(s.name()))], 1.0)),
    )?;
    let shown: Vec<(String, String, &crate::model::flows::DirtyFlow)> = r
        .dirty
        .iter()
        .filter(|d| !d.stale)
        .take(limits.dirty_flow_info_limit)
        .map(|d| {
            (
                d.table.map(|t| t.to_string()).unwrap_or_default(),
                d.cookie.map(|c| format!("{c:#x}")).unwrap_or_default(),
                d,
            )
        })
        .collect();
    gauge(
        enc,
        &families::OVS_DIRTY_FLOW_INFO,
        shown.iter().map(|(table, cookie, d)| {
            (
                [
                    ("bridge", Lv(&d.bridge)),
                    ("rule", Lv(&d.rule)),
                    ("severity", Lv(d.severity)),
                    ("table", Lv(table)),
                    ("cookie", Lv(cookie)),
                    ("port", Lv(d.port().map_or("", |p| p.port.as_str()))),
                    ("domain", Lv(d.port().map_or("", |p| p.domain.as_str()))),
                    ("flow", Lv(&d.flow)),
                ],
                1.0,
            )
        }),
    )?;
    gauge(
        enc,
        &families::OVS_DIRTY_FLOW_INFO_DROPPED,
        [(
            [] as [(&str, Lv<'_>); 0],
            r.dirty_total.saturating_sub(limits.dirty_flow_info_limit) as f64,
        )],
    )?;
    let ports: Vec<(String, &crate::model::flows::PortInfo)> = r
        .ports
        .iter()
        .map(|p| (p.ofport.map(|o| o.to_string()).unwrap_or_default(), p))
        .collect();
    gauge(
        enc,
        &families::OVS_PORT_INFO,
        ports.iter().map(|(of, p)| {
            (
                [
                    ("bridge", Lv(&p.bridge)),
                    ("port", Lv(&p.port)),
                    ("ofport", Lv(of)),
                    ("iface_id", Lv(&p.iface_id)),
                    ("domain", Lv(&p.domain)),
                ],
                1.0,
            )
        }),
    )
}
