//! Prometheus series of the OVS kernel datapath (genetlink polls and the datapath eBPF programs).

use super::encode::{Lv, Res, counter, gauge};
use super::families;
use crate::model::datapath::{DatapathEvents, DatapathReport};
use prometheus_client::encoding::DescriptorEncoder;

/// Encodes `pinflow_ovs_datapath_*`, `pinflow_ovs_vport_*`, `pinflow_ovs_upcalls_total` and
/// `pinflow_ovs_drops_total`.
pub(crate) fn encode_datapath(
    enc: &mut DescriptorEncoder,
    r: &DatapathReport,
    ev: &DatapathEvents,
) -> Res {
    let dps = &r.datapaths;
    gauge(
        enc,
        &families::DATAPATH_FLOWS,
        dps.iter()
            .map(|d| ([("datapath", Lv(&d.name))], d.flows as f64)),
    )?;
    counter(
        enc,
        &families::DATAPATH_LOOKUPS,
        dps.iter().flat_map(|d| {
            [("hit", d.hit), ("missed", d.missed), ("lost", d.lost)]
                .map(|(r, v)| ([("datapath", Lv(&d.name)), ("result", Lv(r))], v as f64))
        }),
    )?;
    gauge(
        enc,
        &families::DATAPATH_MASKS,
        dps.iter()
            .map(|d| ([("datapath", Lv(&d.name))], f64::from(d.masks))),
    )?;
    counter(
        enc,
        &families::DATAPATH_MASK_HITS,
        dps.iter()
            .map(|d| ([("datapath", Lv(&d.name))], d.mask_hit as f64)),
    )?;
    counter(
        enc,
        &families::DATAPATH_MASK_CACHE_HITS,
        dps.iter()
            .map(|d| ([("datapath", Lv(&d.name))], d.cache_hit as f64)),
    )?;
    gauge(
        enc,
        &families::DATAPATH_DROP_FLOWS,
        r.drop_flows
            .iter()
            .map(|(d, n)| ([("datapath", Lv(d))], *n as f64)),
    )?;
    gauge(
        enc,
        &families::DATAPATH_FLOW_LIMIT,
        dps.iter()
            .map(|d| ([("datapath", Lv(&d.name))], r.flow_limit as f64)),
    )?;
    gauge(
        enc,
        &families::DATAPATH_UNHEALTHY,
        r.health.iter().flat_map(|h| {
            h.counts.iter().map(|(c, n)| {
                (
                    [("datapath", Lv(&h.datapath)), ("check", Lv(c.as_str()))],
                    *n as f64,
                )
            })
        }),
    )?;
    let vports = || {
        dps.iter()
            .flat_map(|d| d.vports.iter().map(move |v| (d, v)))
    };
    let info: Vec<_> = vports()
        .map(|(d, v)| {
            (
                d,
                v,
                v.port_no.to_string(),
                v.ifindex.map(|i| i.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    gauge(
        enc,
        &families::VPORT_INFO,
        info.iter().map(|(d, v, no, ifx)| {
            (
                [
                    ("datapath", Lv(&d.name)),
                    ("port", Lv(&v.name)),
                    ("port_no", Lv(no)),
                    ("type", Lv(&v.kind)),
                    ("ifindex", Lv(ifx)),
                    ("domain", Lv(v.domain.as_deref().unwrap_or(""))),
                ],
                1.0,
            )
        }),
    )?;
    // Per-port series are kept to what node_exporter does not already have (its per-device
    // counters cover rx/tx packets): the budget is 12 series per instance, pinning uses 9.
    counter(
        enc,
        &families::VPORT_DROPPED,
        vports().map(|(d, v)| {
            let s = &v.stats;
            (
                [("datapath", Lv(&d.name)), ("port", Lv(&v.name))],
                (s.rx_dropped + s.tx_dropped + s.rx_errors + s.tx_errors) as f64,
            )
        }),
    )?;
    // Upcalls per port, each port from one source for its life (the poller chooses).
    // (Failed upcalls also count in the datapath's `lost` lookups.)
    let upcalls: Vec<(&str, &str, u64)> = r
        .upcalls
        .iter()
        .map(|(d, p, n)| (d.as_str(), p.as_str(), *n))
        .collect();
    counter(
        enc,
        &families::UPCALLS,
        upcalls
            .iter()
            .map(|(d, p, n)| ([("datapath", Lv(d)), ("port", Lv(p))], *n as f64)),
    )?;
    counter(
        enc,
        &families::DATAPATH_ACTIONS,
        ev.actions
            .iter()
            .map(|(a, n)| ([("action", Lv(a))], *n as f64)),
    )?;
    counter(
        enc,
        &families::DROPS,
        ev.drops
            .iter()
            .map(|(p, r, n)| ([("port", Lv(p)), ("reason", Lv(r))], *n as f64)),
    )
}

#[cfg(test)]
mod tests {
    use crate::export::health::BuildInfo;
    use crate::export::metrics::Exposition;
    use crate::export::metrics::tests::text;
    use crate::model::datapath::{Datapath, DatapathCheck, DatapathEvents, DatapathReport, Vport};
    use crate::model::state::SharedState;

    #[test]
    fn datapath_series() {
        let st = SharedState::default();
        st.datapath.set(DatapathReport {
            datapaths: vec![Datapath {
                name: "ovs-system".into(),
                hit: 18,
                missed: 11,
                flows: 9,
                masks: 6,
                vports: vec![Vport {
                    port_no: 2,
                    name: "v1".into(),
                    kind: "netdev".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            drop_flows: vec![("ovs-system".into(), 2)],
            health: vec![crate::model::datapath::DatapathHealth {
                datapath: "ovs-system".into(),
                counts: DatapathCheck::ALL.into_iter().zip([0, 3, 0, 0]).collect(),
                ..Default::default()
            }],
            flow_limit: 200_000,
            // Chosen per port by the poller (sources::ovs_dp::upcalls); the exporter only encodes.
            upcalls: vec![("ovs-system".into(), "v1".into(), 300)],
        });
        st.datapath_events.set(DatapathEvents {
            upcalls: vec![("ovs-system".into(), "v1".into(), 5)],
            drops: vec![("v1".into(), "last_action".into(), 4)],
            actions: vec![("output".into(), 7)],
            programs: Vec::new(),
        });
        let text = text(&Exposition::new(
            st,
            BuildInfo::current("6.1".into()),
            crate::export::ExportConfig::default(),
        ))
        .unwrap();
        for want in [
            "pinflow_ovs_datapath_flows{datapath=\"ovs-system\"} 9",
            "pinflow_ovs_datapath_lookups_total{datapath=\"ovs-system\",result=\"missed\"} 11",
            "pinflow_ovs_datapath_lookups_total{datapath=\"ovs-system\",result=\"lost\"} 0",
            "pinflow_ovs_datapath_masks{datapath=\"ovs-system\"} 6",
            "pinflow_ovs_datapath_drop_flows{datapath=\"ovs-system\"} 2",
            "pinflow_ovs_vport_dropped_total{datapath=\"ovs-system\",port=\"v1\"} 0",
            "pinflow_ovs_upcalls_total{datapath=\"ovs-system\",port=\"v1\"} 300",
            "pinflow_ovs_drops_total{port=\"v1\",reason=\"last_action\"} 4",
            "pinflow_ovs_datapath_actions_total{action=\"output\"} 7",
            "pinflow_ovs_datapath_unhealthy{datapath=\"ovs-system\",check=\"lost_upcalls\"} 3",
            "pinflow_ovs_datapath_unhealthy{datapath=\"ovs-system\",check=\"flow_limit\"} 0",
            "pinflow_ovs_datapath_flow_limit{datapath=\"ovs-system\"} 200000",
            "pinflow_ovs_vport_info{datapath=\"ovs-system\",port=\"v1\",port_no=\"2\",type=\"netdev\",ifindex=\"\",domain=\"\"} 1",
        ] {
            assert!(text.contains(want), "missing {want}:\n{text}");
        }
        crate::export::metrics::tests::assert_samples_match_the_table(&text);
    }
}
