//! The conntrack zones the mirrored flows load per port, kept up to date by the flow pipeline
//! with every flow change and published joined to ports and instances (the conntrack pipeline
//! attributes each zone's entries with it).
//!
//! Neutron's openvswitch firewall driver puts the zone of a port's network into `reg6` (its
//! `REG_NET`) next to the port's ofport in `reg5` (`REG_PORT`), in the flows that classify
//! the port's traffic (table 60: `in_port=N actions=set_field:N->reg5,set_field:Z->reg6,…` for
//! egress, `dl_dst=MAC … actions=set_field:N->reg5,set_field:Z->reg6,…` for ingress), and its
//! conntrack actions use `ct(zone=NXM_NX_REG6[0..15])`. A flow pairs ofport N with zone Z when it
//! writes the low 16 bits of `reg6` with a constant and either matches `in_port=N` exactly or
//! writes all of `reg5` with N.
//!
//! Cost: only flows whose wire form names `reg6` get their actions decoded (164 of the 601 flows of
//! the captured Neutron br-int); all 601 take 41 µs (release build), ~70 ns per flow added,
//! modified or resynced.

use crate::engine::flows::PortJoin;
use crate::model::conntrack::{ZonePort, ZonePorts};
use crate::model::openflow::{FlowAction, FlowEntry, FlowKey};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Neutron's network register (`REG_NET = 6`): its number in [`FlowAction::Load`].
const NET_REGISTER: u8 = 6;
/// Neutron's port register (`REG_PORT = 5`).
const PORT_REGISTER: u8 = 5;

/// The NXM/OXM headers of `reg6` (`NXM_NX_REG6`, and with a mask), big-endian, as every
/// encoding of a write to it carries them (`NXAST_REG_LOAD`'s destination, the field of
/// `OFPAT_SET_FIELD` and `NXAST_REG_LOAD2`).
const REG6_HEADERS: [[u8; 4]; 2] = [[0x00, 0x01, 0x0c, 0x04], [0x00, 0x01, 0x0d, 0x08]];

/// Whether `flow` may write `reg6`: false when its instructions' wire form (a few hundred
/// bytes) do not name the register, so the flow pipeline decodes the actions of only the few
/// flows that may.
fn may_write_reg6(flow: &FlowEntry) -> bool {
    // Hand-built flows of unit tests have no wire form.
    flow.instructions().is_none_or(|i| {
        i.bytes()
            .windows(4)
            .any(|x| REG6_HEADERS.iter().any(|h| h == x))
    })
}

/// The (zone, ofport) a flow pairs, if any.
pub(crate) fn zone_port(flow: &FlowEntry) -> Option<(u16, u32)> {
    if !may_write_reg6(flow) {
        return None;
    }
    let actions = flow.actions();
    let mut zone = None;
    let mut port_reg = None;
    for a in actions.iter() {
        if let FlowAction::Load {
            reg, value, mask, ..
        } = *a
        {
            if reg == NET_REGISTER && mask & 0xffff == 0xffff {
                zone = Some((value & 0xffff) as u16);
            } else if reg == PORT_REGISTER && mask == u32::MAX {
                port_reg = Some(value);
            }
        }
    }
    let zone = zone?;
    let in_port = flow
        .matches
        .get("in_port")
        .filter(|m| m.is_exact())
        .and_then(|m| u32::try_from(m.value).ok());
    Some((zone, in_port.or(port_reg)?))
}

/// (bridge, flow) → the (zone, ofport) it pairs, for the flows that pair one.
#[derive(Default)]
pub(crate) struct ZoneIndex {
    by_flow: HashMap<(Arc<str>, FlowKey), (u16, u32)>,
    /// Bumped on every change of `by_flow`.
    generation: u64,
    /// The last joined list and what it was built from (generation, the port join's version).
    joined: Option<((u64, u64), ZonePorts)>,
}

impl ZoneIndex {
    /// A flow of `bridge` was added or modified.
    pub(crate) fn upsert(&mut self, bridge: &Arc<str>, flow: &FlowEntry) {
        match zone_port(flow) {
            Some(zp) => {
                let before = self.by_flow.insert((bridge.clone(), flow.key()), zp);
                self.generation += u64::from(before != Some(zp));
            }
            // A modification may have taken the load away.
            None => self.remove(bridge, &flow.key()),
        }
    }

    /// A flow of `bridge` was deleted.
    pub(crate) fn remove(&mut self, bridge: &Arc<str>, key: &FlowKey) {
        if !self.by_flow.is_empty()
            && self
                .by_flow
                .remove(&(bridge.clone(), key.clone()))
                .is_some()
        {
            self.generation += 1;
        }
    }

    /// `bridge`'s table was replaced by `flows` (a resync; an empty one for a deleted bridge).
    pub(crate) fn replace<'a>(
        &mut self,
        bridge: &Arc<str>,
        flows: impl IntoIterator<Item = &'a FlowEntry>,
    ) {
        let before = self.by_flow.len();
        self.by_flow.retain(|(b, _), _| b != bridge);
        let mut changed = self.by_flow.len() != before;
        for f in flows {
            if let Some(zp) = zone_port(f) {
                self.by_flow.insert((bridge.clone(), f.key()), zp);
                changed = true;
            }
        }
        if changed {
            self.generation += 1;
        }
    }

    /// Forgets the flows of bridges `keep` says are gone.
    pub(crate) fn retain_bridges(&mut self, keep: impl Fn(&str) -> bool) {
        let before = self.by_flow.len();
        self.by_flow.retain(|(b, _), _| keep(b));
        if self.by_flow.len() != before {
            self.generation += 1;
        }
    }

    /// The (zone, bridge, ofport) pairs joined to ports and instances, sorted (rebuilt only when
    /// the pairs or the join changed).
    pub(crate) fn joined(&mut self, join: &PortJoin) -> ZonePorts {
        let key = (self.generation, join.version());
        if let Some((k, v)) = &self.joined
            && *k == key
        {
            return v.clone();
        }
        let pairs: BTreeSet<(u16, &str, u32)> = self
            .by_flow
            .iter()
            .map(|((b, _), (z, of))| (*z, &**b, *of))
            .collect();
        let list: ZonePorts = Arc::new(
            pairs
                .into_iter()
                .map(|(zone, bridge, ofport)| {
                    let p = join.port(bridge, ofport, None);
                    ZonePort {
                        zone,
                        bridge: bridge.to_string(),
                        ofport,
                        port: p.port,
                        iface_id: p.iface_id,
                        domain: p.domain,
                    }
                })
                .collect(),
        );
        self.joined = Some((key, list.clone()));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::flows::{Bridge, OvsPort};
    use crate::model::inventory::LocalInterface;
    use crate::sources::openflow::wire;
    use std::collections::BTreeMap;

    /// The decoded flows of the captured Neutron br-int dump (openvswitch firewall driver).
    fn captured() -> Vec<FlowEntry> {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/openflow/neutron-dump.of13.bin"
        );
        let mut buf = std::fs::read(p).unwrap();
        let mut flows = Vec::new();
        while let Some(m) = wire::take_message(&mut buf, wire::MAX_MESSAGE_LEN).unwrap() {
            if m.header.msg_type == wire::OFPT_MULTIPART_REPLY {
                let mp = wire::MultipartReply::parse(&m.body).unwrap();
                crate::model::openflow::render::decode_flow_stats(
                    mp.body,
                    &mut flows,
                    &mut Vec::new(),
                )
                .unwrap();
            }
        }
        flows.into_iter().map(|f| f.entry).collect()
    }

    /// The (zone, ofport) pairs `ovs-ofctl`'s text of the same dump shows, read from the text
    /// with nothing of the decoder: `in_port=N` (else `load:N->NXM_NX_REG5[]`) with
    /// `load:Z->NXM_NX_REG6[]`.
    fn from_text() -> BTreeSet<(u16, u32)> {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/openflow/neutron-dump.ofctl.txt"
        );
        let hex = |s: &str| u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
        let load = |l: &str, reg: &str| {
            let end = l.find(&format!("->NXM_NX_{reg}[]"))?;
            let start = l[..end].rfind("load:")? + 5;
            Some(hex(&l[start..end]))
        };
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter_map(|l| {
                let zone = load(l, "REG6")?;
                let in_port = l
                    .split([',', ' '])
                    .find_map(|f| f.strip_prefix("in_port="))
                    .map(|n| n.parse::<u32>().unwrap());
                Some((zone as u16, in_port.or_else(|| load(l, "REG5"))?))
            })
            .collect()
    }

    #[test]
    fn captured_neutron_flows_pair_each_port_with_its_zone() {
        let flows = captured();
        let got: BTreeSet<(u16, u32)> = flows.iter().filter_map(zone_port).collect();
        // Only the flows that name reg6 get their actions decoded.
        let named = flows.iter().filter(|f| may_write_reg6(f)).count();
        assert!(named < flows.len() / 3, "{named} of {}", flows.len());
        let t = std::time::Instant::now();
        let n = flows.iter().filter_map(zone_port).count();
        let took = t.elapsed();
        let t = std::time::Instant::now();
        let all: usize = flows.iter().map(|f| f.actions().len()).sum();
        eprintln!(
            "{n} pairs from {} flows ({named} decoded) in {took:?}; decoding every flow's {all} actions: {:?}",
            flows.len(),
            t.elapsed()
        );
        let want = from_text();
        assert!(want.len() >= 20, "{want:?}");
        assert_eq!(got, want);
        // Egress and ingress flows agree: one zone per port.
        let mut zone_of: HashMap<u32, u16> = HashMap::new();
        for (z, of) in &got {
            assert_eq!(*zone_of.entry(*of).or_insert(*z), *z, "port {of}");
        }
        assert_eq!(got.iter().find(|(_, of)| *of == 10), Some(&(1, 10)));

        // The index follows adds, modifications and deletions, and joins ports to instances.
        let br: Arc<str> = Arc::from("br-int");
        let mut idx = ZoneIndex::default();
        idx.replace(&br, &flows);
        let ports: BTreeMap<String, OvsPort> = [("tap10", 10), ("tap11", 11)]
            .into_iter()
            .map(|(n, of)| {
                let p = OvsPort {
                    name: n.into(),
                    ofport: Some(of),
                    ..Default::default()
                };
                (n.to_string(), p)
            })
            .collect();
        let bridges = BTreeMap::from([(
            "br-int".to_string(),
            Bridge {
                name: "br-int".into(),
                ports,
            },
        )]);
        let mut join = PortJoin::default();
        let local = [LocalInterface {
            mac: String::new(),
            target_dev: "tap10".into(),
            domain: "instance-0000000a".into(),
        }];
        join.refresh_from(&bridges, 1, &local, &[]);
        let list = idx.joined(&join);
        assert_eq!(list.len(), want.len());
        let z1: Vec<&ZonePort> = list.iter().filter(|p| p.zone == 1).collect();
        assert_eq!(z1.len(), 1);
        assert_eq!(
            (z1[0].port.as_str(), z1[0].domain.as_str(), z1[0].ofport),
            ("tap10", "instance-0000000a", 10)
        );
        assert!(
            Arc::ptr_eq(&list, &idx.joined(&join)),
            "unchanged: not rebuilt"
        );
        // Deleting port 10's flows takes zone 1 away.
        for f in flows
            .iter()
            .filter(|f| zone_port(f).is_some_and(|(_, of)| of == 10))
        {
            idx.remove(&br, &f.key());
        }
        assert!(!idx.joined(&join).iter().any(|p| p.zone == 1));
        idx.retain_bridges(|_| false);
        assert!(idx.joined(&join).is_empty());
    }
}
