//! Conntrack pressure: the kernel's connection tracking table per zone, joined to the OVS ports
//! (and through them the instances) whose flows load that zone, against the table's limit. The
//! conntrack pipeline publishes a [`ConntrackReport`]; the flow pipeline publishes the zones the
//! flows load ([`ZonePort`], in [`crate::model::flows::FlowsReport::ct_zones`]).

use serde::Serialize;
use std::sync::Arc;

/// An OVS port whose flows load a conntrack zone into Neutron's network register (`reg6`, the
/// zone of `ct(zone=NXM_NX_REG6[0..15])` in the openvswitch firewall driver), joined to its
/// instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub(crate) struct ZonePort {
    /// Conntrack zone.
    pub(crate) zone: u16,
    /// Bridge.
    pub(crate) bridge: String,
    /// OpenFlow port number (`in_port` of the flow, else the port register `reg5` it loads).
    pub(crate) ofport: u32,
    /// OVSDB port name; empty when no port has this ofport.
    pub(crate) port: String,
    /// Neutron port id, empty when unknown.
    pub(crate) iface_id: String,
    /// libvirt domain of the port, empty when none.
    pub(crate) domain: String,
}

/// One zone's entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ZoneEntries {
    /// Conntrack zone.
    pub(crate) zone: u16,
    /// Entries in the zone at the last dump.
    pub(crate) entries: u64,
    /// The ports whose flows load the zone (one Neutron network: often several instances).
    pub(crate) ports: Vec<ZonePort>,
}

impl ZoneEntries {
    /// The instance the zone belongs to when every port of it that has an instance has the
    /// same one (`domain` label of `pinflow_conntrack_zone_entries`); empty when the zone is
    /// shared by several instances or has none.
    pub(crate) fn domain(&self) -> &str {
        let mut it = self
            .ports
            .iter()
            .map(|p| p.domain.as_str())
            .filter(|d| !d.is_empty());
        match it.next() {
            Some(d) if it.all(|o| o == d) => d,
            _ => "",
        }
    }
}

/// How one poll reads the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DumpMode {
    /// No zone is loaded by any flow: procfs's count says everything (no dump).
    #[default]
    CountOnly,
    /// One dump of the whole table, counted per zone.
    Full,
    /// One dump per zone the flows load, filtered by the kernel (`CTA_ZONE`, Linux ≥ 6.8).
    Zones,
}

/// What the conntrack pipeline publishes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ConntrackReport {
    /// Whether the last poll read the table.
    pub(crate) up: bool,
    /// `nf_conntrack_count`: entries in pinflow's network namespace.
    pub(crate) entries: u64,
    /// `nf_conntrack_max`: the limit.
    pub(crate) limit: u64,
    /// The zones the flows load, each with its entries (0 when none), by zone.
    pub(crate) zones: Vec<ZoneEntries>,
    /// Entries of every other zone (the host's own default zone 0, zones no flow loads):
    /// `entries` minus the zones' entries.
    pub(crate) other_entries: u64,
    /// How the poll read the table (`count_only`, `full`, `zones`).
    pub(crate) mode: DumpMode,
}

/// The zones the flows load, shared between reports.
pub(crate) type ZonePorts = Arc<Vec<ZonePort>>;
