//! Pinning event probe (layout in `collector_common::pin_events`): tells userspace which watched
//! thread's affinity or cgroup changed, so that it re-reads only that thread.
//!
//! - `syscalls:sys_enter_sched_setaffinity`: when the target (or the caller's process) is
//!   watched, remember the target under the caller's tid;
//! - `syscalls:sys_exit_sched_setaffinity`: on success, emit the remembered target;
//! - `cgroup:cgroup_attach_task`: emit the moved thread when it is watched.
//!
//! Syscall tracepoints exist per syscall number: these two programs run only for
//! `sched_setaffinity` calls (the kernel's syscall-tracepoint dispatch itself runs for every
//! syscall while any syscall tracepoint is enabled; its cost is measured in the loader's docs).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};
use collector_common::pin_events::{
    KIND_AFFINITY, KIND_CGROUP, MAX_WATCHED_IDS, PENDING_ENTRIES, PinEvent, RING_BYTES,
};

/// Offset of `pid` (8 bytes: syscall arguments are longs) in the enter record.
#[unsafe(no_mangle)]
static PF_EV_ENTER_PID_OFF: u32 = 0;
/// Offset of `ret` in the exit record.
#[unsafe(no_mangle)]
static PF_EV_EXIT_RET_OFF: u32 = 0;
/// Offset of `pid` (4 bytes) in the `cgroup_attach_task` record.
#[unsafe(no_mangle)]
static PF_EV_ATTACH_PID_OFF: u32 = 0;
/// `offsetof(struct task_struct, pid)`, from kernel BTF (the raw tracepoint program).
#[unsafe(no_mangle)]
static PF_EV_TASK_PID_OFF: u32 = 0;

/// Thread and process ids to report; written by userspace.
#[map]
static PIN_EV_WATCH: HashMap<u32, u32> = HashMap::with_max_entries(MAX_WATCHED_IDS, 0);
/// Caller tid → target tid of a `sched_setaffinity` call in flight.
#[map]
static PIN_EV_PENDING: LruHashMap<u32, u32> = LruHashMap::with_max_entries(PENDING_ENTRIES, 0);
/// Events for userspace.
#[map]
static PIN_EV_EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
/// Events the full ring buffer refused.
#[map]
static PIN_EV_LOST: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
fn global(v: &'static u32) -> u32 {
    // SAFETY: a valid reference to a static.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn watched(id: u32) -> bool {
    PIN_EV_WATCH.get_ptr(id).is_some()
}

#[inline(always)]
fn emit(tid: u32, kind: u32) {
    if PIN_EV_EVENTS.output(PinEvent { tid, kind }, 0).is_err()
        && let Some(lost) = PIN_EV_LOST.get_ptr_mut(0)
    {
        // SAFETY: a value pointer of a successful lookup; a lost racing increment only delays
        // userspace's reconciliation to the next loss or the periodic one.
        unsafe { *lost += 1 };
    }
}

/// `syscalls:sys_enter_sched_setaffinity`.
#[tracepoint(category = "syscalls", name = "sys_enter_sched_setaffinity")]
pub fn pf_ev_affinity_enter(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    // SAFETY: read_at goes through bpf_probe_read_kernel.
    let Ok(pid) = (unsafe { ctx.read_at::<u64>(global(&PF_EV_ENTER_PID_OFF) as usize) }) else {
        return 0;
    };
    // pid 0 is the caller itself.
    let target = if pid == 0 { tid } else { pid as u32 };
    if watched(target) || watched(tgid) {
        let _ = PIN_EV_PENDING.insert(tid, target, 0);
    }
    0
}

/// `syscalls:sys_exit_sched_setaffinity`.
#[tracepoint(category = "syscalls", name = "sys_exit_sched_setaffinity")]
pub fn pf_ev_affinity_exit(ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(target) = PIN_EV_PENDING.get_ptr(tid) else {
        return 0;
    };
    // SAFETY: a value pointer of a successful lookup (only this thread writes its entry).
    let target = unsafe { *target };
    let _ = PIN_EV_PENDING.remove(tid);
    // SAFETY: read_at goes through bpf_probe_read_kernel.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(global(&PF_EV_EXIT_RET_OFF) as usize) }) else {
        return 0;
    };
    if ret == 0 {
        emit(target, KIND_AFFINITY);
    }
    0
}

/// `cgroup:cgroup_attach_task` (one record per thread moved, also for a whole process).
#[tracepoint(category = "cgroup", name = "cgroup_attach_task")]
pub fn pf_ev_cgroup_attach(ctx: TracePointContext) -> u32 {
    // SAFETY: read_at goes through bpf_probe_read_kernel.
    let Ok(pid) = (unsafe { ctx.read_at::<i32>(global(&PF_EV_ATTACH_PID_OFF) as usize) }) else {
        return 0;
    };
    let pid = pid as u32;
    if watched(pid) {
        emit(pid, KIND_CGROUP);
    }
    0
}

/// Raw tracepoint `cgroup_attach_task(dst_cgrp, path, task, threadgroup)`: the same report
/// without tracefs or a perf event (what a pod with only `CAP_BPF` + `CAP_PERFMON` can attach on
/// a kernel whose `perf_event_paranoid` refuses it perf events). `task->pid` at the offset from
/// kernel BTF.
#[raw_tracepoint(tracepoint = "cgroup_attach_task")]
pub fn pf_ev_cgroup_attach_raw(ctx: RawTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(2);
    let off = global(&PF_EV_TASK_PID_OFF) as usize;
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    let Ok(pid) = (unsafe { bpf_probe_read_kernel(task.wrapping_add(off).cast::<i32>()) }) else {
        return 0;
    };
    let pid = pid as u32;
    if watched(pid) {
        emit(pid, KIND_CGROUP);
    }
    0
}
