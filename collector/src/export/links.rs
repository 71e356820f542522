//! Prometheus series of the OVS link protocols: bond members (enabled: ovs-vswitchd `bond/show`;
//! LACP partner current: OVSDB), BFD and CFM sessions and tunnels' egress carrier (OVSDB), and the
//! interfaces' errors (OVSDB `Interface.error`). Series exist only where the feature is configured
//! (or an interface has an error), so their number is bounded by the configuration;
//! the tunnels' egress carrier is one series per egress device, since a Neutron or OVN host has a
//! tunnel port per peer host (hundreds) that all leave through the same one or two devices.

use super::encode::{Lv, Res, counter, gauge};
use super::families::{self, Family};
use crate::model::flows::{FlowsReport, InterfacesReport, LinkHealth};
use crate::model::ovs_vswitchd::VswitchdReport;
use prometheus_client::encoding::DescriptorEncoder;
use std::collections::{BTreeMap, HashMap};

/// One value of an interface's link state (`None`: no series).
type Field = fn(&LinkHealth) -> Option<f64>;

fn flag(b: bool) -> f64 {
    f64::from(u8::from(b))
}

/// Encodes `pinflow_ovs_bond_member_enabled`, `pinflow_ovs_lacp_current`,
/// `pinflow_ovs_interface_{bfd,cfm}_*`, `pinflow_ovs_tunnel_egress_carrier_up` and
/// `pinflow_ovs_interface_error_info`.
pub(crate) fn encode_links(
    enc: &mut DescriptorEncoder,
    r: &InterfacesReport,
    flows: &FlowsReport,
    vswitchd: &VswitchdReport,
) -> Res {
    let links: Vec<(&str, &str, &LinkHealth)> = if r.connected {
        r.links
            .iter()
            .map(|((b, i), l)| (b.as_str(), i.as_str(), l))
            .collect()
    } else {
        Vec::new()
    };
    // The bridge of a bond member, from OVSDB (bond/show does not name it).
    let bridge_of: HashMap<(&str, &str), &str> = links
        .iter()
        .filter_map(|(b, i, l)| Some(((l.bond.as_deref()?, *i), *b)))
        .collect();
    gauge(
        enc,
        &families::BOND_MEMBER_ENABLED,
        vswitchd.bonds.iter().flat_map(|bond| {
            let bridge_of = &bridge_of;
            bond.members.iter().map(move |(member, enabled)| {
                let bridge = bridge_of
                    .get(&(bond.bond.as_str(), member.as_str()))
                    .copied()
                    .unwrap_or("");
                (
                    [
                        ("bridge", Lv(bridge)),
                        ("bond", Lv(&bond.bond)),
                        ("member", Lv(member)),
                    ],
                    flag(*enabled),
                )
            })
        }),
    )?;
    gauge(
        enc,
        &families::LACP_CURRENT,
        links.iter().filter_map(|(b, i, l)| {
            Some((
                [
                    ("bridge", Lv(b)),
                    ("bond", Lv(l.bond.as_deref()?)),
                    ("member", Lv(i)),
                ],
                flag(l.lacp_current?),
            ))
        }),
    )?;
    let domains: HashMap<(&str, &str), &str> = flows
        .ports
        .iter()
        .map(|p| ((p.bridge.as_str(), p.port.as_str()), p.domain.as_str()))
        .collect();
    let per_port: [(&Family, Field); 6] = [
        (&families::BFD_UP, |l| Some(flag(l.bfd.as_ref()?.up))),
        (&families::BFD_FORWARDING, |l| {
            Some(flag(l.bfd.as_ref()?.forwarding))
        }),
        (&families::BFD_FLAPS, |l| {
            Some(l.bfd.as_ref()?.flaps? as f64)
        }),
        (&families::CFM_FAULT, |l| Some(flag(l.cfm.as_ref()?.fault))),
        (&families::CFM_REMOTE_UP, |l| {
            Some(flag(l.cfm.as_ref()?.remote_up?))
        }),
        (&families::CFM_FLAPS, |l| {
            Some(l.cfm.as_ref()?.flaps? as f64)
        }),
    ];
    for (family, field) in per_port {
        let rows = links.iter().filter_map(|(b, i, l)| {
            let d = domains.get(&(*b, *i)).copied().unwrap_or("");
            Some((
                [("bridge", Lv(b)), ("port", Lv(i)), ("domain", Lv(d))],
                field(l)?,
            ))
        });
        match family.kind {
            families::Kind::Counter => counter(enc, family, rows)?,
            families::Kind::Gauge => gauge(enc, family, rows)?,
        }
    }
    // Per egress device, not per tunnel port (one per peer host): down if any tunnel says so.
    let mut devices: BTreeMap<&str, bool> = BTreeMap::new();
    for (dev, up) in links.iter().filter_map(|(_, _, l)| l.egress.as_ref()) {
        *devices.entry(dev.as_str()).or_insert(true) &= *up;
    }
    gauge(
        enc,
        &families::TUNNEL_EGRESS_CARRIER,
        devices
            .iter()
            .map(|(dev, up)| ([("device", Lv(dev))], flag(*up))),
    )?;
    gauge(
        enc,
        &families::IF_ERROR_INFO,
        links.iter().filter_map(|(b, i, l)| {
            let d = domains.get(&(*b, *i)).copied().unwrap_or("");
            Some((
                [
                    ("bridge", Lv(b)),
                    ("port", Lv(i)),
                    ("domain", Lv(d)),
                    ("error", Lv(l.error.as_deref()?)),
                ],
                1.0,
            ))
        }),
    )
}

#[cfg(test)]
mod tests {
    use crate::export::metrics::tests::render_state;
    use crate::model::flows::{
        BfdState, CfmState, FlowsReport, InterfacesReport, LinkHealth, LinkMap, PortInfo,
    };
    use crate::model::ovs_vswitchd::{BondState, VswitchdReport};
    use crate::model::state::SharedState;
    use std::sync::Arc;

    #[test]
    fn configured_features_only_and_bond_bridges_from_ovsdb() {
        let st = SharedState::default();
        st.flows.set(FlowsReport {
            ports: Arc::new(vec![
                PortInfo {
                    bridge: "br-tun".into(),
                    port: "vxlan-1".into(),
                    ofport: Some(3),
                    iface_id: String::new(),
                    domain: String::new(),
                    error: None,
                },
                PortInfo {
                    bridge: "br-int".into(),
                    port: "tap1".into(),
                    ofport: None,
                    iface_id: "p-1".into(),
                    domain: "instance-1".into(),
                    error: None,
                },
            ]),
            ..Default::default()
        });
        let mut links = LinkMap::new();
        for (m, current) in [("eth0", true), ("eth1", false)] {
            links.insert(
                ("br-ex".into(), m.into()),
                LinkHealth {
                    bond: Some("bond0".into()),
                    lacp_current: Some(current),
                    ..Default::default()
                },
            );
        }
        links.insert(
            ("br-tun".into(), "vxlan-1".into()),
            LinkHealth {
                bfd: Some(BfdState {
                    up: false,
                    forwarding: false,
                    remote_up: true,
                    flaps: Some(3),
                }),
                egress: Some(("eth2".into(), true)),
                ..Default::default()
            },
        );
        for (port, up) in [("vxlan-2", false), ("vxlan-3", true)] {
            links.insert(
                ("br-tun".into(), port.into()),
                LinkHealth {
                    egress: Some(("eth3".into(), up)),
                    ..Default::default()
                },
            );
        }
        links.insert(
            ("br-tun".into(), "gre-2".into()),
            LinkHealth {
                cfm: Some(CfmState {
                    fault: true,
                    remote_up: None,
                    flaps: Some(1),
                }),
                ..Default::default()
            },
        );
        links.insert(
            ("br-int".into(), "tap1".into()),
            LinkHealth {
                error: Some("could not open network device tap1 (No such device)".into()),
                ..Default::default()
            },
        );
        links.insert(
            ("br-int".into(), "tap2".into()),
            LinkHealth {
                error: Some("a \"quoted\"\nline".into()),
                ..Default::default()
            },
        );
        st.ovs_interfaces.set(InterfacesReport {
            connected: true,
            links: Arc::new(links.clone()),
            ..Default::default()
        });
        st.vswitchd.set(VswitchdReport {
            connected: true,
            bonds: vec![
                BondState {
                    bond: "bond0".into(),
                    members: vec![("eth0".into(), true), ("eth1".into(), false)],
                },
                BondState {
                    bond: "bond9".into(),
                    members: vec![("x".into(), true)],
                },
            ],
            ..Default::default()
        });
        let text = render_state(st.clone());
        for want in [
            "pinflow_ovs_bond_member_enabled{bridge=\"br-ex\",bond=\"bond0\",member=\"eth0\"} 1",
            "pinflow_ovs_bond_member_enabled{bridge=\"br-ex\",bond=\"bond0\",member=\"eth1\"} 0",
            "pinflow_ovs_bond_member_enabled{bridge=\"\",bond=\"bond9\",member=\"x\"} 1",
            "pinflow_ovs_lacp_current{bridge=\"br-ex\",bond=\"bond0\",member=\"eth1\"} 0",
            "pinflow_ovs_interface_bfd_up{bridge=\"br-tun\",port=\"vxlan-1\",domain=\"\"} 0",
            "pinflow_ovs_interface_bfd_forwarding{bridge=\"br-tun\",port=\"vxlan-1\",domain=\"\"} 0",
            "pinflow_ovs_interface_bfd_flaps_total{bridge=\"br-tun\",port=\"vxlan-1\",domain=\"\"} 3",
            "pinflow_ovs_tunnel_egress_carrier_up{device=\"eth2\"} 1",
            "pinflow_ovs_tunnel_egress_carrier_up{device=\"eth3\"} 0",
            "pinflow_ovs_interface_cfm_fault{bridge=\"br-tun\",port=\"gre-2\",domain=\"\"} 1",
            "pinflow_ovs_interface_cfm_flaps_total{bridge=\"br-tun\",port=\"gre-2\",domain=\"\"} 1",
            "pinflow_ovs_interface_error_info{bridge=\"br-int\",port=\"tap1\",domain=\"instance-1\",error=\"could not open network device tap1 (No such device)\"} 1",
            "pinflow_ovs_interface_error_info{bridge=\"br-int\",port=\"tap2\",domain=\"\",error=\"a \\\"quoted\\\"\\nline\"} 1",
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
        assert_eq!(
            text.matches("pinflow_ovs_tunnel_egress_carrier_up{")
                .count(),
            2
        );
        // Only the interfaces with an error.
        assert_eq!(text.matches("pinflow_ovs_interface_error_info{").count(), 2);
        // Not configured: no series.
        assert!(!text.contains("pinflow_ovs_interface_bfd_up{bridge=\"br-ex\""));
        assert!(!text.contains("pinflow_ovs_interface_cfm_remote_up{"));
        assert!(
            !text.contains("pinflow_ovs_interface_cfm_fault{bridge=\"br-tun\",port=\"vxlan-1\"")
        );
        crate::export::metrics::tests::assert_samples_match_the_table(&text);
        // OVSDB down: no OVSDB series; bond/show's stay (ovs-vswitchd still answers).
        st.ovs_interfaces.set(InterfacesReport {
            connected: false,
            links: Arc::new(links),
            ..Default::default()
        });
        let text = render_state(st);
        assert!(!text.contains("pinflow_ovs_lacp_current{"));
        assert!(!text.contains("pinflow_ovs_interface_bfd_up{"));
        assert!(!text.contains("pinflow_ovs_interface_error_info{"));
        assert!(text.contains(
            "pinflow_ovs_bond_member_enabled{bridge=\"\",bond=\"bond0\",member=\"eth0\"} 1"
        ));
    }
}
