//! Prometheus series of the OVS interfaces' link and admin state, MTU and counters (OVSDB
//! `Interface`, opt-in with `[flows] interface_metrics`), joined to the instance like
//! `pinflow_ovs_port_info`.

use super::encode::{Lv, Res, counter, gauge};
use super::families::{self, Family};
use crate::model::flows::{FlowsReport, InterfaceStats, InterfacesReport};
use prometheus_client::encoding::DescriptorEncoder;
use std::collections::HashMap;

/// One counter of an interface.
type Field = fn(&InterfaceStats) -> Option<u64>;

/// Encodes `pinflow_ovs_interface_*`; no series while OVSDB is disconnected.
pub(crate) fn encode_interfaces(
    enc: &mut DescriptorEncoder,
    r: &InterfacesReport,
    flows: &FlowsReport,
) -> Res {
    let domains: HashMap<(&str, &str), &str> = flows
        .ports
        .iter()
        .map(|p| ((p.bridge.as_str(), p.port.as_str()), p.domain.as_str()))
        .collect();
    let rows: Vec<(&str, &str, &str, &InterfaceStats)> = if r.connected {
        r.interfaces
            .iter()
            .map(|((b, p), s)| {
                let d = domains
                    .get(&(b.as_str(), p.as_str()))
                    .copied()
                    .unwrap_or("");
                (b.as_str(), p.as_str(), d, s)
            })
            .collect()
    } else {
        Vec::new()
    };
    gauge(
        enc,
        &families::LINK_UP,
        rows.iter().filter_map(|(b, p, d, s)| {
            Some((
                [("bridge", Lv(b)), ("port", Lv(p)), ("domain", Lv(d))],
                f64::from(u8::from(s.link_up?)),
            ))
        }),
    )?;
    gauge(
        enc,
        &families::IF_ADMIN_UP,
        rows.iter().filter_map(|(b, p, d, s)| {
            Some((
                [("bridge", Lv(b)), ("port", Lv(p)), ("domain", Lv(d))],
                f64::from(u8::from(s.admin_up?)),
            ))
        }),
    )?;
    gauge(
        enc,
        &families::IF_MTU,
        rows.iter().filter_map(|(b, p, d, s)| {
            Some((
                [("bridge", Lv(b)), ("port", Lv(p)), ("domain", Lv(d))],
                f64::from(s.mtu?),
            ))
        }),
    )?;
    let dir: [(&Family, Field); 8] = [
        (&families::IF_RECEIVE_BYTES, |s| s.rx.bytes),
        (&families::IF_RECEIVE_PACKETS, |s| s.rx.packets),
        (&families::IF_RECEIVE_DROPS, |s| s.rx.drops),
        (&families::IF_RECEIVE_ERRORS, |s| s.rx.errors),
        (&families::IF_TRANSMIT_BYTES, |s| s.tx.bytes),
        (&families::IF_TRANSMIT_PACKETS, |s| s.tx.packets),
        (&families::IF_TRANSMIT_DROPS, |s| s.tx.drops),
        (&families::IF_TRANSMIT_ERRORS, |s| s.tx.errors),
    ];
    for (family, field) in dir {
        counter(
            enc,
            family,
            rows.iter().filter_map(|(b, p, d, s)| {
                Some((
                    [("bridge", Lv(b)), ("port", Lv(p)), ("domain", Lv(d))],
                    field(s)? as f64,
                ))
            }),
        )?;
    }
    counter(
        enc,
        &families::IF_LINK_RESETS,
        rows.iter().filter_map(|(b, p, d, s)| {
            Some((
                [("bridge", Lv(b)), ("port", Lv(p)), ("domain", Lv(d))],
                s.link_resets? as f64,
            ))
        }),
    )
}

#[cfg(test)]
mod tests {
    use crate::export::metrics::tests::render_state;
    use crate::model::flows::{Counters, FlowsReport, InterfaceStats, InterfacesReport, PortInfo};
    use crate::model::state::SharedState;
    use std::sync::Arc;

    #[test]
    fn joined_to_the_instance_and_absent_while_disconnected() {
        let st = SharedState::default();
        st.flows.set(FlowsReport {
            ports: Arc::new(vec![PortInfo {
                bridge: "br-int".into(),
                port: "tap1".into(),
                ofport: Some(1),
                iface_id: "n1".into(),
                domain: "instance-1".into(),
                error: None,
            }]),
            ..Default::default()
        });
        let stats = InterfaceStats {
            link_up: Some(true),
            admin_up: Some(true),
            mtu: Some(1450),
            link_resets: Some(2),
            rx: Counters {
                bytes: Some(1000),
                packets: Some(10),
                drops: Some(1),
                errors: Some(0),
            },
            tx: Counters {
                bytes: Some(2000),
                ..Default::default()
            },
        };
        let mut map = crate::model::flows::InterfaceMap::new();
        map.insert(("br-int".into(), "tap1".into()), stats);
        map.insert(
            ("br-ex".into(), "eth1".into()),
            InterfaceStats {
                link_up: Some(false),
                admin_up: Some(false),
                ..Default::default()
            },
        );
        st.ovs_interfaces.set(InterfacesReport {
            connected: true,
            interfaces: Arc::new(map.clone()),
            ..Default::default()
        });
        let text = render_state(st.clone());
        for want in [
            "pinflow_ovs_interface_link_up{bridge=\"br-int\",port=\"tap1\",domain=\"instance-1\"} 1",
            "pinflow_ovs_interface_link_up{bridge=\"br-ex\",port=\"eth1\",domain=\"\"} 0",
            "pinflow_ovs_interface_admin_up{bridge=\"br-int\",port=\"tap1\",domain=\"instance-1\"} 1",
            "pinflow_ovs_interface_admin_up{bridge=\"br-ex\",port=\"eth1\",domain=\"\"} 0",
            "pinflow_ovs_interface_mtu_bytes{bridge=\"br-int\",port=\"tap1\",domain=\"instance-1\"} 1450",
            "pinflow_ovs_interface_receive_bytes_total{bridge=\"br-int\",port=\"tap1\",domain=\"instance-1\"} 1000",
            "pinflow_ovs_interface_receive_drops_total{bridge=\"br-int\",port=\"tap1\",domain=\"instance-1\"} 1",
            "pinflow_ovs_interface_transmit_bytes_total{bridge=\"br-int\",port=\"tap1\",domain=\"instance-1\"} 2000",
            "pinflow_ovs_interface_link_resets_total{bridge=\"br-int\",port=\"tap1\",domain=\"instance-1\"} 2",
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
        assert!(!text.contains("pinflow_ovs_interface_transmit_drops_total{"));
        // No MTU reported for eth1: no series.
        assert!(!text.contains("pinflow_ovs_interface_mtu_bytes{bridge=\"br-ex\""));
        assert!(!text.contains("pinflow_ovs_interface_receive_bytes_total{bridge=\"br-ex\""));
        crate::export::metrics::tests::assert_samples_match_the_table(&text);
        st.ovs_interfaces.set(InterfacesReport {
            connected: false,
            interfaces: Arc::new(map),
            ..Default::default()
        });
        let text = render_state(st);
        for family in ["link_up", "admin_up", "mtu_bytes"] {
            assert!(!text.contains(&format!("pinflow_ovs_interface_{family}{{")));
        }
    }
}
