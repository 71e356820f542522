//! OVS kernel-datapath probe (layout in `collector_common::ovs_dp`): raw tracepoints
//! `ovs_dp_upcall` (upcalls per ingress device), `ovs_do_execute_action` (executed actions per
//! type) and `kfree_skb` filtered to the Open vSwitch drop-reason subsystem (drops per device and
//! reason, kernels ≥ 6.6).
//!
//! Raw tracepoints, not classic ones: attaching a classic tracepoint goes through
//! `perf_event_open`, which Debian's and Ubuntu's kernels (`perf_event_paranoid` 3, their
//! default) refuse without `CAP_SYS_ADMIN`, and which needs tracefs; a raw tracepoint needs only
//! `CAP_BPF` + `CAP_PERFMON`. The programs get the tracepoints' `TP_PROTO` arguments: the
//! upcall's and the drop's `struct sk_buff *`, whose `dev->name` is read at the struct offsets
//! userspace sets from kernel BTF (no CO-RE in Rust eBPF), and the executed action's
//! `struct nlattr *`. The upcall key carries the device only: userspace knows each vport's
//! datapath and fills the datapath name in.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap},
    programs::RawTracePointContext,
};
use collector_common::ovs_dp::{
    ACTION_SLOTS, DROP_SUBSYS_OPENVSWITCH, DROP_SUBSYS_SHIFT, DropKey, MAX_PORT_KEYS, NAME_LEN,
    UpcallKey,
};

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

/// `ovs_dp_upcall(struct datapath *dp, struct sk_buff *skb, const struct sw_flow_key *key,
/// const struct dp_upcall_info *upcall_info)`.
#[raw_tracepoint(tracepoint = "ovs_dp_upcall")]
pub fn pf_ovs_upcall(ctx: RawTracePointContext) -> i32 {
    try_upcall(&ctx).unwrap_or(0)
}

/// `ovs_do_execute_action(struct datapath *dp, struct sk_buff *skb, struct sw_flow_key *key,
/// const struct nlattr *attr, int rem)`.
#[raw_tracepoint(tracepoint = "ovs_do_execute_action")]
pub fn pf_ovs_exec(ctx: RawTracePointContext) -> i32 {
    try_exec(&ctx).unwrap_or(0)
}

/// `kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason reason)`, Open vSwitch
/// drop reasons only.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn pf_ovs_kfree(ctx: RawTracePointContext) -> i32 {
    try_kfree(&ctx).unwrap_or(0)
}

/// Copies `skb->dev->name` into a NUL-padded buffer (left empty without a device).
#[inline(always)]
fn skb_dev_name(skb: u64, out: &mut [u8; NAME_LEN]) -> Result<(), i32> {
    let dev_field = (skb as usize as *const u8).wrapping_add(global(&PF_SKB_DEV) as usize);
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    let dev: u64 = unsafe { bpf_probe_read_kernel(dev_field.cast::<u64>()) }.map_err(|_| 0i32)?;
    if dev != 0 {
        let name = (dev as usize as *const u8).wrapping_add(global(&PF_NETDEV_NAME) as usize);
        // SAFETY: the helper tolerates any address and stops at NUL or the buffer's end.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name, out) };
    }
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
fn try_upcall(ctx: &RawTracePointContext) -> Result<i32, i32> {
    let mut k = UpcallKey {
        dp: [0; NAME_LEN],
        dev: [0; NAME_LEN],
    };
    let skb: u64 = ctx.arg(1);
    skb_dev_name(skb, &mut k.dev)?;
    bump(&OVS_UPCALLS, &k);
    Ok(0)
}

#[inline(always)]
fn try_exec(ctx: &RawTracePointContext) -> Result<i32, i32> {
    let attr: u64 = ctx.arg(3);
    // `nla_type` follows the u16 `nla_len`; the top two bits are flags (`NLA_TYPE_MASK`).
    let ty = (attr as usize as *const u8).wrapping_add(2);
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    let t =
        u32::from(unsafe { bpf_probe_read_kernel(ty.cast::<u16>()) }.map_err(|_| 0i32)? & 0x3fff);
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
fn try_kfree(ctx: &RawTracePointContext) -> Result<i32, i32> {
    let reason = ctx.arg::<u64>(2) as u32;
    if reason >> DROP_SUBSYS_SHIFT != DROP_SUBSYS_OPENVSWITCH {
        return Ok(0);
    }
    let mut k = DropKey {
        dev: [0; NAME_LEN],
        reason,
        _pad: 0,
    };
    skb_dev_name(ctx.arg(0), &mut k.dev)?;
    bump(&OVS_DROPS, &k);
    Ok(0)
}
