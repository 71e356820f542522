//! Map layout of the OVS kernel-datapath probe: upcalls per (datapath, ingress device), OVS drop
//! reasons per ingress device, executed actions per action type.
//!
//! Every map is bounded ([`MAX_PORT_KEYS`] entries); the kernel programs only add to entries
//! (racy plain increments: a lost count under contention is acceptable for rates).

use bytemuck::{Pod, Zeroable};

/// Capacity of the upcall and drop maps (distinct keys; further keys are not counted).
pub const MAX_PORT_KEYS: u32 = 4096;
/// Number of action-type slots (`OVS_ACTION_ATTR_*`; higher types count in the last slot).
pub const ACTION_SLOTS: u32 = 32;
/// Length of the device/datapath name buffers (IFNAMSIZ).
pub const NAME_LEN: usize = 16;
/// Drop-reason subsystem of Open vSwitch (`SKB_DROP_REASON_SUBSYS_OPENVSWITCH`).
pub const DROP_SUBSYS_OPENVSWITCH: u32 = 3;
/// Shift of the subsystem in an `skb_drop_reason` (`SKB_DROP_REASON_SUBSYS_SHIFT`).
pub const DROP_SUBSYS_SHIFT: u32 = 16;

/// Upcall counts map name.
pub const UPCALL_MAP: &str = "OVS_UPCALLS";
/// Drop counts map name.
pub const DROP_MAP: &str = "OVS_DROPS";
/// Executed-action counts map name.
pub const ACTION_MAP: &str = "OVS_ACTIONS";

/// Program on the raw tracepoint `ovs_dp_upcall`.
pub const PROG_UPCALL: &str = "pf_ovs_upcall";
/// Program on the raw tracepoint `ovs_do_execute_action`.
pub const PROG_EXEC: &str = "pf_ovs_exec";
/// Program on the raw tracepoint `kfree_skb`.
pub const PROG_KFREE: &str = "pf_ovs_kfree";

/// Global: `offsetof(struct sk_buff, dev)` (kernel BTF).
pub const GLOBAL_SKB_DEV: &str = "PF_SKB_DEV";
/// Global: `offsetof(struct net_device, name)` (kernel BTF).
pub const GLOBAL_NETDEV_NAME: &str = "PF_NETDEV_NAME";

/// Key of the upcall map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct UpcallKey {
    /// Datapath name, NUL-padded: all zero from the kernel program (userspace maps the device
    /// to its datapath).
    pub dp: [u8; NAME_LEN],
    /// Ingress device name, NUL-padded.
    pub dev: [u8; NAME_LEN],
}

/// Key of the drop map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct DropKey {
    /// Device the packet was on when dropped (its ingress port), NUL-padded.
    pub dev: [u8; NAME_LEN],
    /// Full `skb_drop_reason` (subsystem in the high 16 bits).
    pub reason: u32,
    /// Padding, always 0.
    pub _pad: u32,
}

/// The bytes of a NUL-padded name up to the first NUL.
pub fn name_bytes(n: &[u8; NAME_LEN]) -> &[u8] {
    let end = n.iter().position(|&c| c == 0).unwrap_or(NAME_LEN);
    n.get(..end).unwrap_or(n)
}

#[cfg(feature = "user")]
#[allow(unsafe_code)] // aya::Pod is an unsafe trait.
mod user {
    // SAFETY: #[repr(C)], no padding (explicit `_pad`), bytemuck::Pod.
    unsafe impl aya::Pod for super::UpcallKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DropKey {}
}
