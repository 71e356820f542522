//! Numbers of the kernel's Open vSwitch generic netlink interface (`include/uapi/linux/openvswitch.h`).
//!
//! No crate models the OVS families, so the values pinflow needs are listed here by hand.
#![allow(dead_code)] // The kernel's numbers in full: not every value is read, all are listed.

/// Generic netlink family of datapaths.
pub(crate) const DATAPATH_FAMILY: &str = "ovs_datapath";
/// Generic netlink family of vports.
pub(crate) const VPORT_FAMILY: &str = "ovs_vport";
/// Generic netlink family of megaflows.
pub(crate) const FLOW_FAMILY: &str = "ovs_flow";
/// `OVS_DATAPATH_VERSION`.
pub(crate) const DATAPATH_VERSION: u8 = 2;
/// `OVS_VPORT_VERSION`.
pub(crate) const VPORT_VERSION: u8 = 1;
/// `OVS_FLOW_VERSION`.
pub(crate) const FLOW_VERSION: u8 = 1;
/// `OVS_*_CMD_GET` (the same number in the three families).
pub(crate) const CMD_GET: u8 = 3;
/// `OVS_DP_CMD_NEW` / `OVS_FLOW_CMD_NEW`.
pub(crate) const CMD_NEW: u8 = 1;
/// `OVS_*_CMD_DEL`.
pub(crate) const CMD_DEL: u8 = 2;

/// `enum ovs_datapath_attr`.
pub(crate) mod dp_attr {
    /// Datapath name (string).
    pub(crate) const NAME: u16 = 1;
    /// `struct ovs_dp_stats`.
    pub(crate) const STATS: u16 = 3;
    /// `struct ovs_dp_megaflow_stats`.
    pub(crate) const MEGAFLOW_STATS: u16 = 4;
    /// User features (u32).
    pub(crate) const USER_FEATURES: u16 = 5;
    /// Mask cache size (u32).
    pub(crate) const MASKS_CACHE_SIZE: u16 = 7;
}

/// `enum ovs_vport_attr`.
pub(crate) mod vport_attr {
    /// Port number (u32).
    pub(crate) const PORT_NO: u16 = 1;
    /// `enum ovs_vport_type` (u32).
    pub(crate) const TYPE: u16 = 2;
    /// Name (string).
    pub(crate) const NAME: u16 = 3;
    /// `struct ovs_vport_stats`.
    pub(crate) const STATS: u16 = 6;
    /// ifindex of the port's net device (u32; newer kernels).
    pub(crate) const IFINDEX: u16 = 8;
    /// Network namespace id (s32).
    pub(crate) const NETNSID: u16 = 9;
    /// Nested per-vport upcall statistics (newer kernels).
    pub(crate) const UPCALL_STATS: u16 = 10;
    /// Nested in UPCALL_STATS: upcalls sent to userspace (u64).
    pub(crate) const UPCALL_SUCCESS: u16 = 0;
    /// Nested in UPCALL_STATS: upcalls that failed (u64).
    pub(crate) const UPCALL_FAIL: u16 = 1;
}

/// `enum ovs_flow_attr`.
pub(crate) mod flow_attr {
    /// Nested `OVS_KEY_ATTR_*`.
    pub(crate) const KEY: u16 = 1;
    /// Nested `OVS_ACTION_ATTR_*`.
    pub(crate) const ACTIONS: u16 = 2;
    /// `struct ovs_flow_stats`.
    pub(crate) const STATS: u16 = 3;
    /// TCP flags seen (u8).
    pub(crate) const TCP_FLAGS: u16 = 4;
    /// Last used, ms of the kernel's monotonic clock (u64).
    pub(crate) const USED: u16 = 5;
    /// Nested `OVS_KEY_ATTR_*` mask.
    pub(crate) const MASK: u16 = 7;
    /// Unique flow id (up to 16 bytes).
    pub(crate) const UFID: u16 = 9;
    /// `OVS_UFID_F_*` (u32).
    pub(crate) const UFID_FLAGS: u16 = 10;
}

pub(crate) use crate::model::datapath::attrs::{action, key};

/// `enum ovs_vport_type` names as OVS prints them.
pub(crate) fn vport_type_name(t: u32) -> &'static str {
    match t {
        1 => "netdev",
        2 => "internal",
        3 => "gre",
        4 => "vxlan",
        5 => "geneve",
        6 => "lisp",
        7 => "stt",
        8 => "erspan",
        9 => "ip6erspan",
        10 => "ip6gre",
        11 => "gtpu",
        12 => "srv6",
        _ => "unknown",
    }
}
