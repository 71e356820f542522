//! Map layout of the pinning event probe: the kernel says which watched thread's affinity or
//! cgroup changed, so userspace re-reads just that thread instead of sweeping procfs.
//!
//! Programs (classic tracepoints; record offsets come from tracefs `format` files):
//! - `syscalls:sys_enter_sched_setaffinity` remembers the target thread of a call that concerns a
//!   watched thread (or comes from a watched process) in [`PENDING_MAP`], keyed by the caller;
//! - `syscalls:sys_exit_sched_setaffinity` emits a [`PinEvent`] of kind [`KIND_AFFINITY`] when
//!   that call succeeded;
//! - `cgroup:cgroup_attach_task` emits [`KIND_CGROUP`] when a watched thread changes cgroup.
//!
//! Maps:
//! - [`WATCH_MAP`]: `HashMap<u32, u32>`, thread ids and process ids (tgids) to report, written by
//!   userspace only (value unused, 1).
//! - [`PENDING_MAP`]: `LruHashMap<u32, u32>`, caller tid → target tid between enter and exit.
//! - [`EVENTS_MAP`]: ring buffer of [`PinEvent`]s, [`RING_BYTES`] bytes.
//! - [`LOST_MAP`]: `Array<u64>` of one counter: events the full ring buffer refused (userspace
//!   then reconciles everything).

use bytemuck::{Pod, Zeroable};

/// Capacity of the watch map (vCPU, emulator and I/O thread ids plus process ids).
pub const MAX_WATCHED_IDS: u32 = 16384;
/// Capacity of the pending (enter → exit) map.
pub const PENDING_ENTRIES: u32 = 1024;
/// Size of the event ring buffer in bytes (a power of two, a multiple of the page size).
pub const RING_BYTES: u32 = 16 * 4096;

/// Name of the watch map in the object.
pub const WATCH_MAP: &str = "PIN_EV_WATCH";
/// Name of the pending map in the object.
pub const PENDING_MAP: &str = "PIN_EV_PENDING";
/// Name of the ring buffer in the object.
pub const EVENTS_MAP: &str = "PIN_EV_EVENTS";
/// Name of the lost-event counter in the object.
pub const LOST_MAP: &str = "PIN_EV_LOST";

/// Global: offset of `pid` in the `sys_enter_sched_setaffinity` record.
pub const GLOBAL_ENTER_PID_OFFSET: &str = "PF_EV_ENTER_PID_OFF";
/// Global: offset of `ret` in the `sys_exit_sched_setaffinity` record.
pub const GLOBAL_EXIT_RET_OFFSET: &str = "PF_EV_EXIT_RET_OFF";
/// Global: offset of `pid` in the `cgroup_attach_task` record.
pub const GLOBAL_ATTACH_PID_OFFSET: &str = "PF_EV_ATTACH_PID_OFF";

/// Program on `syscalls:sys_enter_sched_setaffinity`.
pub const PROG_AFFINITY_ENTER: &str = "pf_ev_affinity_enter";
/// Program on `syscalls:sys_exit_sched_setaffinity`.
pub const PROG_AFFINITY_EXIT: &str = "pf_ev_affinity_exit";
/// Program on `cgroup:cgroup_attach_task`.
pub const PROG_CGROUP_ATTACH: &str = "pf_ev_cgroup_attach";
/// The same on the raw tracepoint `cgroup_attach_task` (no tracefs, no perf event).
pub const PROG_CGROUP_ATTACH_RAW: &str = "pf_ev_cgroup_attach_raw";
/// Global: `offsetof(struct task_struct, pid)` for the raw tracepoint program (kernel BTF).
pub const GLOBAL_TASK_PID_OFFSET: &str = "PF_EV_TASK_PID_OFF";

/// A thread's affinity was set (`sched_setaffinity` returned 0).
pub const KIND_AFFINITY: u32 = 1;
/// A thread was attached to another cgroup.
pub const KIND_CGROUP: u32 = 2;

/// One event: which thread, and what happened to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct PinEvent {
    /// The thread whose affinity or cgroup changed.
    pub tid: u32,
    /// [`KIND_AFFINITY`] or [`KIND_CGROUP`].
    pub kind: u32,
}

impl PinEvent {
    /// Decodes an event from a ring buffer record (`None` if it is too short).
    pub fn from_bytes(b: &[u8]) -> Option<PinEvent> {
        let b = b.get(..core::mem::size_of::<PinEvent>())?;
        Some(bytemuck::pod_read_unaligned(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_decode_from_records_and_short_ones_are_refused() {
        let e = PinEvent {
            tid: 4242,
            kind: KIND_CGROUP,
        };
        // Ring buffer records may be longer than the event (padding).
        let mut rec = [0u8; 12];
        rec[..8].copy_from_slice(bytemuck::bytes_of(&e));
        assert_eq!(PinEvent::from_bytes(&rec[..8]), Some(e));
        assert_eq!(PinEvent::from_bytes(&rec), Some(e));
        assert_eq!(PinEvent::from_bytes(&rec[..7]), None);
        assert!(RING_BYTES.is_power_of_two() && RING_BYTES.is_multiple_of(4096));
    }
}
