//! OVS kernel-datapath probe (layout in `collector_common::ovs_dp`): classic tracepoints
//! `openvswitch:ovs_dp_upcall` (upcalls per datapath and ingress device),
//! `openvswitch:ovs_do_execute_action` (executed actions per type) and `skb:kfree_skb` filtered to
//! the Open vSwitch drop-reason subsystem (drops per device and reason, kernels ≥ 6.6).
//!
//! Record offsets come from the tracefs `format` files and struct offsets from kernel BTF, both
//! set by userspace as globals before load (no CO-RE in Rust eBPF).

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::{map, tracepoint},
    maps::{Array, HashMap},
    programs::TracePointContext,
};
use collector_common::ovs_dp::{
    ACTION_SLOTS, DROP_SUBSYS_OPENVSWITCH, DROP_SUBSYS_SHIFT, DropKey, MAX_PORT_KEYS, NAME_LEN,
    UpcallKey,
};

#[unsafe(no_mangle)]
static PF_OVS_UP_DP: u32 = 0;
#[unsafe(no_mangle)]
static PF_OVS_UP_DEV: u32 = 0;
#[unsafe(no_mangle)]
static PF_OVS_EX_TYPE: u32 = 0;
#[unsafe(no_mangle)]
static PF_KF_SKB: u32 = 0;
#[unsafe(no_mangle)]
static PF_KF_REASON: u32 = 0;
#[unsafe(no_mangle)]
static PF_SKB_DEV: u32 = 0;
#[unsafe(no_mangle)]
static PF_NETDEV_NAME: u32 = 0;

/// Upcalls per (datapath, ingress device).
#[map]
static OVS_UPCALLS: HashMap<UpcallKey, u64> = HashMap::with_max_entries(MAX_PORT_KEYS, 0);
/// OVS drops per (device, reason).
#[map]
static OVS_DROPS: HashMap<DropKey, u64> = HashMap::with_max_entries(MAX_PORT_KEYS, 0);
/// Executed actions per `OVS_ACTION_ATTR_*` type.
#[map]
static OVS_ACTIONS: Array<u64> = Array::with_max_entries(ACTION_SLOTS, 0);

#[inline(always)]
fn global(v: &'static u32) -> u32 {
    // SAFETY: a valid reference to a static.
    unsafe { core::ptr::read_volatile(v) }
}

/// `openvswitch:ovs_dp_upcall`.
#[tracepoint(category = "openvswitch", name = "ovs_dp_upcall")]
pub fn pf_ovs_upcall(ctx: TracePointContext) -> u32 {
    try_upcall(&ctx).unwrap_or(0)
}

/// `openvswitch:ovs_do_execute_action`.
#[tracepoint(category = "openvswitch", name = "ovs_do_execute_action")]
pub fn pf_ovs_exec(ctx: TracePointContext) -> u32 {
    try_exec(&ctx).unwrap_or(0)
}

/// `skb:kfree_skb`, Open vSwitch drop reasons only.
#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn pf_ovs_kfree(ctx: TracePointContext) -> u32 {
    try_kfree(&ctx).unwrap_or(0)
}

/// Copies a `__data_loc char[]` string of the record into a NUL-padded buffer.
#[inline(always)]
fn data_loc_str(ctx: &TracePointContext, field: u32, out: &mut [u8; NAME_LEN]) -> Result<(), u32> {
    // SAFETY: read_at goes through bpf_probe_read_kernel.
    let loc: u32 = unsafe { ctx.read_at(field as usize) }.map_err(|_| 0u32)?;
    let off = (loc & 0xffff) as usize;
    let src = (ctx.as_ptr() as *const u8).wrapping_add(off);
    // SAFETY: the helper tolerates any address and stops at NUL or the buffer's end.
    unsafe { bpf_probe_read_kernel_str_bytes(src, out) }.map_err(|_| 0u32)?;
    Ok(())
}

#[inline(always)]
fn bump<K>(map: &HashMap<K, u64>, key: &K) {
    match map.get_ptr_mut(key) {
        // SAFETY: a map value pointer from a successful lookup.
        Some(p) => unsafe { *p += 1 },
        None => {
            let _ = map.insert(key, &1, 0);
        }
    }
}

#[inline(always)]
fn try_upcall(ctx: &TracePointContext) -> Result<u32, u32> {
    let mut k = UpcallKey {
        dp: [0; NAME_LEN],
        dev: [0; NAME_LEN],
    };
    data_loc_str(ctx, global(&PF_OVS_UP_DP), &mut k.dp)?;
    data_loc_str(ctx, global(&PF_OVS_UP_DEV), &mut k.dev)?;
    bump(&OVS_UPCALLS, &k);
    Ok(0)
}

#[inline(always)]
fn try_exec(ctx: &TracePointContext) -> Result<u32, u32> {
    // SAFETY: read_at goes through bpf_probe_read_kernel.
    let t: u32 = unsafe { ctx.read_at(global(&PF_OVS_EX_TYPE) as usize) }.map_err(|_| 0u32)?;
    let slot = if t < ACTION_SLOTS {
        t
    } else {
        ACTION_SLOTS - 1
    };
    if let Some(p) = OVS_ACTIONS.get_ptr_mut(slot) {
        // SAFETY: a map value pointer from a successful lookup.
        unsafe { *p += 1 };
    }
    Ok(0)
}

#[inline(always)]
fn try_kfree(ctx: &TracePointContext) -> Result<u32, u32> {
    // SAFETY: read_at goes through bpf_probe_read_kernel.
    let reason: u32 = unsafe { ctx.read_at(global(&PF_KF_REASON) as usize) }.map_err(|_| 0u32)?;
    if reason >> DROP_SUBSYS_SHIFT != DROP_SUBSYS_OPENVSWITCH {
        return Ok(0);
    }
    // SAFETY: as above.
    let skb: u64 = unsafe { ctx.read_at(global(&PF_KF_SKB) as usize) }.map_err(|_| 0u32)?;
    let mut k = DropKey {
        dev: [0; NAME_LEN],
        reason,
        _pad: 0,
    };
    let dev_field = (skb as usize as *const u8).wrapping_add(global(&PF_SKB_DEV) as usize);
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    let dev: u64 = unsafe { bpf_probe_read_kernel(dev_field.cast::<u64>()) }.map_err(|_| 0u32)?;
    if dev != 0 {
        let name = (dev as usize as *const u8).wrapping_add(global(&PF_NETDEV_NAME) as usize);
        // SAFETY: as above.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut k.dev) };
    }
    bump(&OVS_DROPS, &k);
    Ok(0)
}
