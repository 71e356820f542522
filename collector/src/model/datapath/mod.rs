//! The OVS kernel datapath as the kernel reports it over generic netlink: datapaths with their
//! lookup statistics, vports with their counters, megaflows, and eBPF-observed upcalls and drops.

pub(crate) mod attrs;

use crate::model::health::BpfProgramCost;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// One kernel datapath (`ovs-system` on a typical host).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Datapath {
    /// Name (`OVS_DP_ATTR_NAME`).
    pub(crate) name: String,
    /// ifindex of the datapath (`ovs_header.dp_ifindex`).
    pub(crate) ifindex: i32,
    /// Packets that matched a megaflow.
    pub(crate) hit: u64,
    /// Packets that matched no megaflow (sent to userspace as upcalls).
    pub(crate) missed: u64,
    /// Upcalls lost (userspace queue full or no handler).
    pub(crate) lost: u64,
    /// Megaflows installed.
    pub(crate) flows: u64,
    /// Masks (subtables) in the megaflow classifier; lookups cost grows with it.
    pub(crate) masks: u32,
    /// Mask lookups performed for hits (`n_mask_hit`).
    pub(crate) mask_hit: u64,
    /// Hits in the mask cache (`n_cache_hit`).
    pub(crate) cache_hit: u64,
    /// Vports of the datapath, by port number.
    pub(crate) vports: Vec<Vport>,
}

/// One vport (datapath port).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Vport {
    /// Datapath port number (`in_port(N)` of megaflows).
    pub(crate) port_no: u32,
    /// Name (`v1`, `tap1234abcd-ef`, `br0`, `ovs-system`).
    pub(crate) name: String,
    /// Type (`netdev`, `internal`, `vxlan`, …).
    pub(crate) kind: String,
    /// ifindex of the port's net device, when the kernel reports it.
    pub(crate) ifindex: Option<u32>,
    /// Counters (`struct ovs_vport_stats`).
    pub(crate) stats: VportStats,
    /// MAC of the port's net device (rtnetlink).
    pub(crate) mac: Option<String>,
    /// Local instance whose interface this port is (its tap), from libvirt.
    pub(crate) domain: Option<String>,
    /// Upcalls sent / failed from this port, when the kernel reports them (`OVS_VPORT_ATTR_UPCALL_STATS`).
    pub(crate) upcalls: Option<(u64, u64)>,
}

/// `struct ovs_vport_stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct VportStats {
    /// Packets received.
    pub(crate) rx_packets: u64,
    /// Packets transmitted.
    pub(crate) tx_packets: u64,
    /// Bytes received.
    pub(crate) rx_bytes: u64,
    /// Bytes transmitted.
    pub(crate) tx_bytes: u64,
    /// Receive errors.
    pub(crate) rx_errors: u64,
    /// Transmit errors.
    pub(crate) tx_errors: u64,
    /// Received packets dropped.
    pub(crate) rx_dropped: u64,
    /// Transmitted packets dropped.
    pub(crate) tx_dropped: u64,
}

/// One attribute of a flow key, mask or action list, kept as on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct RawAttr {
    /// Attribute type (`OVS_KEY_ATTR_*` / `OVS_ACTION_ATTR_*`).
    pub(crate) kind: u16,
    /// Value bytes (nested attributes stay encoded).
    pub(crate) value: Vec<u8>,
}

/// One megaflow of the kernel datapath.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Megaflow {
    /// ifindex of the datapath it belongs to.
    pub(crate) dp_ifindex: i32,
    /// Unique flow id, when userspace set one.
    pub(crate) ufid: Option<Vec<u8>>,
    /// Flow key (`OVS_KEY_ATTR_*`).
    pub(crate) key: Vec<RawAttr>,
    /// Flow mask (`OVS_KEY_ATTR_*`), empty when the kernel sent none (exact match).
    pub(crate) mask: Vec<RawAttr>,
    /// Actions (`OVS_ACTION_ATTR_*`); empty = drop.
    pub(crate) actions: Vec<RawAttr>,
    /// Packets that hit the flow.
    pub(crate) packets: u64,
    /// Bytes that hit the flow.
    pub(crate) bytes: u64,
    /// Last use, ms of the kernel's monotonic clock (None = never).
    pub(crate) used_ms: Option<u64>,
    /// TCP flags seen.
    pub(crate) tcp_flags: u8,
}

impl Megaflow {
    /// Whether the flow drops what it matches (no actions, or only an explicit drop).
    pub(crate) fn is_drop(&self) -> bool {
        self.actions.iter().all(|a| a.kind == attrs::action::DROP)
    }
}

/// Everything the datapath source and its eBPF probe report; replaced whole on every poll.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct DatapathReport {
    /// Datapaths with their vports.
    pub(crate) datapaths: Vec<Datapath>,
    /// Megaflows per datapath whose action is drop and that carried packets (from the last dump).
    pub(crate) drop_flows: Vec<(String, u64)>,
    /// Health findings per datapath.
    pub(crate) health: Vec<DatapathHealth>,
    /// The flow limit the `flow_limit` check compares against.
    pub(crate) flow_limit: u64,
    /// Upcalls per (datapath, port), each port from one source for its life (kernel vport
    /// stats, else eBPF): `pinflow_ovs_upcalls_total`.
    pub(crate) upcalls: Vec<(String, String, u64)>,
}

/// What the datapath eBPF programs counted (totals since they were attached).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct DatapathEvents {
    /// Upcalls per (datapath, port name).
    pub(crate) upcalls: Vec<(String, String, u64)>,
    /// Drops per (port name, reason).
    pub(crate) drops: Vec<(String, String, u64)>,
    /// Executed actions per action name.
    pub(crate) actions: Vec<(String, u64)>,
    /// Kernel-side cost of the datapath programs.
    pub(crate) programs: Vec<BpfProgramCost>,
}

/// One datapath health check (the `check` label of `pinflow_ovs_datapath_unhealthy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DatapathCheck {
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
    pub(crate) const ALL: [DatapathCheck; 4] = [
        DatapathCheck::FlowLimit,
        DatapathCheck::LostUpcalls,
        DatapathCheck::UpcallStorm,
        DatapathCheck::DropLocalMac,
    ];

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
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
pub(crate) struct DatapathHealth {
    /// Datapath name.
    pub(crate) datapath: String,
    /// Offending items per check, every check present (0 = healthy).
    pub(crate) counts: BTreeMap<DatapathCheck, u64>,
    /// Ports in an upcall storm, with their rate (upcalls/s).
    pub(crate) storm_ports: Vec<(String, f64)>,
    /// Drop megaflows aimed at local instances: (MAC, domain, packets).
    pub(crate) drop_local_macs: Vec<(String, String, u64)>,
}
