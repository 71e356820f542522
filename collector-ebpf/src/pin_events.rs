//! Pinning event probe (layout in `collector_common::pin_events`): tells userspace which watched
//! thread's affinity or cgroup changed, so that it re-reads only that thread.
//!
//! - `syscalls:sys_enter_sched_setaffinity`: when the target (or the caller's process) is
//!   watched, remember the target under the caller's tid;
//! - `syscalls:sys_exit_sched_setaffinity`: on success, emit the remembered target;
//! - `cgroup:cgroup_attach_task`: emit the moved thread when it is watched;
//! - `iter/task` (the sweep): on each read of the iterator, every task is visited; a watched
//!   thread whose `cpus_mask`, `policy` or `rt_priority` differs from what `PIN_EV_SEEN` holds
//!   has its tid written to the iterator's output and its entry updated. A change that no
//!   syscall tracepoint saw (a cpuset write, `sched_setaffinity` without `affinity_events`,
//!   `sched_setscheduler`) is found by one read per tick, not one syscall per thread.
//!
//! Syscall tracepoints exist per syscall number: these two programs run only for
//! `sched_setaffinity` calls (the kernel's syscall-tracepoint dispatch itself runs for every
//! syscall while any syscall tracepoint is enabled; its cost is measured in the loader's docs).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, generated},
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};
use collector_common::pin_events::{
    KIND_AFFINITY, KIND_CGROUP, MAX_WATCHED_IDS, PENDING_ENTRIES, PinEvent, RING_BYTES,
    SEEN_MASK_WORDS, TaskSeen,
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

/// `offsetof(struct task_struct, cpus_mask)`, from kernel BTF (the sweep).
#[unsafe(no_mangle)]
static PF_EV_TASK_CPUS_MASK_OFF: u32 = 0;
/// Bytes of `cpus_mask` compared: `min(sizeof(cpumask_t), SEEN_MASK_WORDS * 8)`.
#[unsafe(no_mangle)]
static PF_EV_TASK_CPUS_MASK_BYTES: u32 = 0;
/// `offsetof(struct task_struct, policy)`, from kernel BTF.
#[unsafe(no_mangle)]
static PF_EV_TASK_POLICY_OFF: u32 = 0;
/// `offsetof(struct task_struct, rt_priority)`, from kernel BTF.
#[unsafe(no_mangle)]
static PF_EV_TASK_RT_PRIORITY_OFF: u32 = 0;

/// What the sweep last saw of each watched thread; created by userspace, updated by the sweep.
#[map]
static PIN_EV_SEEN: HashMap<u32, TaskSeen> = HashMap::with_max_entries(MAX_WATCHED_IDS, 0);

/// Watched threads the sweep in progress has visited (one counter).
#[map]
static PIN_EV_SWEEP_VISITS: Array<u32> = Array::with_max_entries(1, 0);

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

/// The sweep: `bpf_iter/task`, called once per task (and once more with a null task at the
/// end) while userspace reads the iterator. The context is `struct bpf_iter__task { struct
/// bpf_iter_meta *meta; struct task_struct *task; }`; both pointers are BTF-typed, so the task's
/// fields are read with plain loads at the offsets from BTF (frozen globals the verifier checks).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub extern "C" fn pf_ev_sweep(ctx: *const u64) -> i32 {
    // SAFETY: the iterator context (two BTF-typed pointers); the verifier checks each load.
    let (meta, task) = unsafe {
        (
            core::ptr::read_volatile(ctx) as *const u64,
            core::ptr::read_volatile(ctx.wrapping_add(1)) as *const u8,
        )
    };
    let Some(visits) = PIN_EV_SWEEP_VISITS.get_ptr_mut(0) else {
        return 0;
    };
    if task.is_null() {
        // The end of the walk: a trailer (tid 0, then the number of watched threads visited),
        // so userspace knows whether a watched thread is gone.
        // SAFETY: a value pointer of a successful lookup; one iterator read runs at a time.
        let trailer = [0u32, unsafe { *visits }];
        // SAFETY: as above; `meta`'s first member is the output `seq_file`; `trailer` lives
        // on this stack for the call.
        unsafe {
            *visits = 0;
            let seq = core::ptr::read_volatile(meta) as *mut _;
            let _ = generated::bpf_seq_write(seq, trailer.as_ptr().cast(), 8);
        }
        return 0;
    }
    // SAFETY: a non-null BTF-typed task pointer; the offset is a frozen global.
    let tid = unsafe {
        core::ptr::read_volatile(
            task.wrapping_add(global(&PF_EV_TASK_PID_OFF) as usize)
                .cast::<u32>(),
        )
    };
    let Some(seen) = PIN_EV_SEEN.get_ptr_mut(tid) else {
        return 0;
    };
    // SAFETY: as for the trailer.
    unsafe { *visits += 1 };
    let mut now = TaskSeen {
        mask: [0; SEEN_MASK_WORDS],
        policy: 0,
        rt_priority: 0,
    };
    let bytes = global(&PF_EV_TASK_CPUS_MASK_BYTES).min((SEEN_MASK_WORDS * 8) as u32);
    // SAFETY: bpf_probe_read_kernel tolerates any address; `bytes` fits `now.mask`. The scalar
    // fields are plain BTF-checked loads.
    unsafe {
        let _ = generated::bpf_probe_read_kernel(
            now.mask.as_mut_ptr().cast(),
            bytes,
            task.wrapping_add(global(&PF_EV_TASK_CPUS_MASK_OFF) as usize)
                .cast(),
        );
        now.policy = core::ptr::read_volatile(
            task.wrapping_add(global(&PF_EV_TASK_POLICY_OFF) as usize)
                .cast::<u32>(),
        );
        now.rt_priority = core::ptr::read_volatile(
            task.wrapping_add(global(&PF_EV_TASK_RT_PRIORITY_OFF) as usize)
                .cast::<u32>(),
        );
    }
    // SAFETY: a value pointer of a successful lookup; only the sweep writes it, and one
    // iterator read runs at a time (userspace reads from one thread).
    let seen = unsafe { &mut *seen };
    // Field by field: a derived comparison would call `bcmp`, which BPF has not.
    let same = seen.policy == now.policy
        && seen.rt_priority == now.rt_priority
        && seen.mask.iter().zip(now.mask.iter()).all(|(a, b)| a == b);
    if same {
        return 0;
    }
    seen.mask = now.mask;
    seen.policy = now.policy;
    seen.rt_priority = now.rt_priority;
    // SAFETY: `meta` is the iterator's BTF-typed meta pointer; its first member is the
    // `seq_file` the output goes to; `tid` lives on this stack for the call.
    unsafe {
        let seq = core::ptr::read_volatile(meta) as *mut _;
        let _ = generated::bpf_seq_write(seq, core::ptr::addr_of!(tid).cast(), 4);
    }
    0
}
