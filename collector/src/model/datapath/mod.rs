//! The OVS kernel datapath as the kernel reports it over generic netlink: datapaths with their
//! lookup statistics, vports with their counters, megaflows, and eBPF-observed upcalls and drops.

pub mod attrs;

use crate::model::health::BpfProgramCost;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// One kernel datapath (`ovs-system` on a typical host).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Datapath {
    /// Name (`OVS_DP_ATTR_NAME`).
    pub name: String,
    /// ifindex of the datapath (`ovs_header.dp_ifindex`).
    pub ifindex: i32,
    /// Packets that matched a megaflow.
    pub hit: u64,
    /// Packets that matched no megaflow (sent to userspace as upcalls).
    pub missed: u64,
    /// Upcalls lost (userspace queue full or no handler).
    pub lost: u64,
    /// Megaflows installed.
    pub flows: u64,
    /// Masks (subtables) in the megaflow classifier; lookups cost grows with it.
    pub masks: u32,
    /// Mask lookups performed for hits (`n_mask_hit`).
    pub mask_hit: u64,
    /// Hits in the mask cache (`n_cache_hit`).
    pub cache_hit: u64,
    /// Vports of the datapath, by port number.
    pub vports: Vec<Vport>,
}

/// One vport (datapath port).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Vport {
    /// Datapath port number (`in_port(N)` of megaflows).
    pub port_no: u32,
    /// Name (`v1`, `tap1234abcd-ef`, `br0`, `ovs-system`).
    pub name: String,
    /// Type (`netdev`, `internal`, `vxlan`, …).
    pub kind: String,
    /// ifindex of the port's net device, when the kernel reports it.
    pub ifindex: Option<u32>,
    /// Counters (`struct ovs_vport_stats`).
    pub stats: VportStats,
    /// MAC of the port's net device (rtnetlink).
    pub mac: Option<String>,
    /// Local instance whose interface this port is (its tap), from libvirt.
    pub domain: Option<String>,
    /// Upcalls sent / failed from this port, when the kernel reports them (`OVS_VPORT_ATTR_UPCALL_STATS`).
    pub upcalls: Option<(u64, u64)>,
}

/// `struct ovs_vport_stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VportStats {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets transmitted.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Transmitted packets dropped.
    pub tx_dropped: u64,
}

/// One attribute of a flow key, mask or action list, kept as on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RawAttr {
    /// Attribute type (`OVS_KEY_ATTR_*` / `OVS_ACTION_ATTR_*`).
    pub kind: u16,
    /// Value bytes (nested attributes stay encoded).
    pub value: Vec<u8>,
}

/// One megaflow of the kernel datapath.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Megaflow {
    /// ifindex of the datapath it belongs to.
    pub dp_ifindex: i32,
    /// Unique flow id, when userspace set one.
    pub ufid: Option<Vec<u8>>,
    /// Flow key (`OVS_KEY_ATTR_*`).
    pub key: Vec<RawAttr>,
    /// Flow mask (`OVS_KEY_ATTR_*`), empty when the kernel sent none (exact match).
    pub mask: Vec<RawAttr>,
    /// Actions (`OVS_ACTION_ATTR_*`); empty = drop.
    pub actions: Vec<RawAttr>,
    /// Packets that hit the flow.
    pub packets: u64,
    /// Bytes that hit the flow.
    pub bytes: u64,
    /// Last use, ms of the kernel's monotonic clock (None = never).
    pub used_ms: Option<u64>,
    /// TCP flags seen.
    pub tcp_flags: u8,
}

impl Megaflow {
    /// Whether the flow drops what it matches (no actions, or only an explicit drop).
    pub fn is_drop(&self) -> bool {
        self.actions.iter().all(|a| a.kind == attrs::action::DROP)
    }
}

/// Everything the datapath source and its eBPF probe report; replaced whole on every poll.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DatapathReport {
    /// Datapaths with their vports.
    pub datapaths: Vec<Datapath>,
    /// Megaflows per datapath whose action is drop and that carried packets (from the last dump).
    pub drop_flows: Vec<(String, u64)>,
    /// Health findings per datapath.
    pub health: Vec<DatapathHealth>,
    /// The flow limit the `flow_limit` check compares against.
    pub flow_limit: u64,
    /// Upcalls per (datapath, port), each port from one source for its life (kernel vport
    /// stats, else eBPF): `pinflow_ovs_upcalls_total`.
    pub upcalls: Vec<(String, String, u64)>,
}

/// What the datapath eBPF programs counted (totals since they were attached).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DatapathEvents {
    /// Upcalls per (datapath, port name).
    pub upcalls: Vec<(String, String, u64)>,
    /// Drops per (port name, reason).
    pub drops: Vec<(String, String, u64)>,
    /// Executed actions per action name.
    pub actions: Vec<(String, u64)>,
    /// Kernel-side cost of the datapath programs.
    pub programs: Vec<BpfProgramCost>,
}

/// One datapath health check (the `check` label of `pinflow_ovs_datapath_unhealthy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DatapathCheck {
    /// Megaflows near ovs-vswitchd's flow limit.
    FlowLimit,
    /// Upcalls lost since the previous poll.
    LostUpcalls,
    /// Ports whose upcall rate is a storm.
    UpcallStorm,
    /// Drop megaflows aimed at a local instance's MAC.
    DropLocalMac,
}

impl DatapathCheck {
    /// Every check, in label order.
    pub const ALL: [DatapathCheck; 4] = [
        DatapathCheck::FlowLimit,
        DatapathCheck::LostUpcalls,
        DatapathCheck::UpcallStorm,
        DatapathCheck::DropLocalMac,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DatapathCheck::FlowLimit => "flow_limit",
            DatapathCheck::LostUpcalls => "lost_upcalls",
            DatapathCheck::UpcallStorm => "upcall_storm",
            DatapathCheck::DropLocalMac => "drop_local_mac",
        }
    }
}

impl fmt::Display for DatapathCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Health findings for one datapath.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DatapathHealth {
    /// Datapath name.
    pub datapath: String,
    /// Offending items per check, every check present (0 = healthy).
    pub counts: BTreeMap<DatapathCheck, u64>,
    /// Ports in an upcall storm, with their rate (upcalls/s).
    pub storm_ports: Vec<(String, f64)>,
    /// Drop megaflows aimed at local instances: (MAC, domain, packets).
    pub drop_local_macs: Vec<(String, String, u64)>,
}
