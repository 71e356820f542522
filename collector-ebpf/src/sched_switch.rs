//! `sched_switch` placement probe: per watched thread, CPU time on/off its pinned CPUs, migrations,
//! switch-ins and last CPU (layout in `collector_common::sched`).
//!
//! The same logic is attached one of three ways (userspace picks the first that works):
//! `tp_btf/sched_switch`, `raw_tp/sched_switch`, classic tracepoint `sched:sched_switch`.
//!
//! Common path (neither task watched, CPU not dedicated): three bit tests in the `SCHED_FILTER`
//! global (prev's and next's tid, the CPU; the CPU number is an inlined helper on x86-64), no
//! map lookup and no helper call with tp_btf. Each inlined array lookup costs a key round trip
//! through the stack, a bounds check and a null check: with three lookups (filter word of prev,
//! of next, the CPU's owner) the program added 10.5 and 15.8 ns per switch over the empty tp_btf
//! program in two runs of `cargo xtask bench --only sched` (kernel BPF statistics); with one (the
//! filter as an array's only entry) 6.0 and 9.9 in the same runs, and 9.2 and 8.4 in two later
//! full runs; with none (the filter a global, addressed directly: 50 instructions instead of 55)
//! 6.8 in the next full run.
//!
//! Intrusions on dedicated pCPUs: on a CPU the filter marks dedicated, the program reads its
//! owner (`SCHED_DEDICATED`) and keeps the time of the CPU's last switch
//! (`SCHED_STOLEN`, one cache line per CPU, written only on its CPU) and charges the slice just
//! ended to the task switched out, unless it is the owner's vCPU or idle: a known domain thread
//! (`SCHED_THREADS`, kept by userspace) is `other_vcpu`, `own_emulator` or `other_emulator`,
//! else `PF_KTHREAD` in `task_struct.flags` makes it `kernel`, else `host`. The task switched out
//! is `current`, so its comm and tgid come from helpers; it is also added to the per-CPU-LRU top
//! intruder table `SCHED_INTRUDERS`.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel, generated,
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use collector_common::sched::{
    DedicatedCpu, DomainThread, FILTER_WORDS, IntruderClass, IntruderKey, IntruderStats,
    LRU_PER_CPU, MAX_CPUS, MAX_DOMAIN_THREADS, MAX_INTRUDERS, MAX_WATCHED, MMAPABLE, NO_CPU,
    PF_KTHREAD, PIN_WORDS, PinMask, PlacementStats, StolenCpu, SwitchFilter, filter_slot,
};

/// `offsetof(struct task_struct, pid)`, set by userspace from kernel BTF before load.
#[unsafe(no_mangle)]
static PF_TASK_PID_OFF: u32 = 0;
/// `offsetof(struct task_struct, flags)`, set by userspace from kernel BTF (0: unknown).
#[unsafe(no_mangle)]
static PF_TASK_FLAGS_OFF: u32 = 0;
/// Offset of `next_pid` in the classic tracepoint record (from tracefs `format`).
#[unsafe(no_mangle)]
static PF_TP_NEXT_PID_OFF: u32 = 0;

/// The tids that may be watched and the dedicated CPUs; written by userspace (the object's
/// `.bss` map, [`FILTER_MAP`]). A global rather than a map entry: the program addresses it
/// directly, with no lookup (no key round trip through the stack, no bounds or null check).
/// Read with volatile loads only: nothing in the program writes it, so the compiler would
/// otherwise fold every read to the zero it starts as.
#[unsafe(no_mangle)]
static mut SCHED_FILTER: SwitchFilter = SwitchFilter::EMPTY;
/// Pin mask per watched tid; written by userspace.
#[map]
static SCHED_WATCH: HashMap<u32, PinMask> = HashMap::with_max_entries(MAX_WATCHED, 0);
/// Placement counters per watched tid; created by userspace, updated here only.
#[map]
static SCHED_STATS: HashMap<u32, PlacementStats> = HashMap::with_max_entries(MAX_WATCHED, 0);

/// Off-pin slices charged so far (one counter per CPU, each written on its CPU only); userspace
/// reads the sum.
#[map]
static SCHED_OFFPIN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Owner of each dedicated pCPU, by CPU; written by userspace.
#[map]
static SCHED_DEDICATED: Array<DedicatedCpu> = Array::with_max_entries(MAX_CPUS as u32, 0);
/// Intruder run time per dedicated pCPU, by CPU; written here only, each entry on its own CPU;
/// userspace maps it and reads it in place.
#[map]
static SCHED_STOLEN: Array<StolenCpu> = Array::with_max_entries(MAX_CPUS as u32, MMAPABLE);
/// Threads of the domains' QEMU processes; written by userspace.
#[map]
static SCHED_THREADS: HashMap<u32, DomainThread> = HashMap::with_max_entries(MAX_DOMAIN_THREADS, 0);
/// Top intruders per (CPU, tid); inserted and updated here, one LRU list per CPU.
#[map]
static SCHED_INTRUDERS: LruHashMap<IntruderKey, IntruderStats> =
    LruHashMap::with_max_entries(MAX_INTRUDERS, LRU_PER_CPU);

/// `tp_btf/sched_switch` entry point (preferred: BTF-typed, no helper calls on the fast path).
#[btf_tracepoint(function = "sched_switch")]
pub fn pf_switch_btf(ctx: BtfTracePointContext) -> i32 {
    try_switch_btf(&ctx).unwrap_or(0)
}

/// `raw_tp/sched_switch` entry point (first fallback).
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn pf_switch_raw(ctx: RawTracePointContext) -> i32 {
    try_switch_raw(&ctx).unwrap_or(0)
}

/// Classic tracepoint `sched:sched_switch` entry point (last fallback; needs tracefs).
#[tracepoint(category = "sched", name = "sched_switch")]
pub fn pf_switch_tp(ctx: TracePointContext) -> u32 {
    try_switch_tp(&ctx).unwrap_or(0)
}

/// Empty `tp_btf/sched_switch` program: the benchmark's floor (the cost of being attached at all).
/// pinflow itself never loads it.
#[btf_tracepoint(function = "sched_switch")]
pub fn pf_switch_nop(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// Reads a `u32` global without letting the compiler fold its initial value.
#[inline(always)]
fn global(v: &'static u32) -> u32 {
    // SAFETY: a valid reference to a static.
    unsafe { core::ptr::read_volatile(v) }
}

/// `task->pid` through `bpf_probe_read_kernel` (no CO-RE: the offset comes from userspace).
#[inline(always)]
fn task_pid(task: *const u8) -> Result<u32, i32> {
    let off = global(&PF_TASK_PID_OFF) as usize;
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    let pid: i32 = unsafe { bpf_probe_read_kernel(task.wrapping_add(off).cast::<i32>())? };
    Ok(pid as u32)
}

/// tp_btf: args are (bool preempt, task_struct *prev, task_struct *next, unsigned prev_state),
/// typed by BTF, so `pid` is read with plain loads: the verifier knows the offset (a frozen
/// read-only global) and checks it against `task_struct`'s BTF. No helper call on the fast path.
#[inline(always)]
fn try_switch_btf(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    // The two calls first (the CPU number and the lookup are inlined by the verifier, but the
    // compiler sees calls): fewer values live across them, fewer callee-saved registers to save.
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let off = global(&PF_TASK_PID_OFF) as usize;
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    // SAFETY: BTF-typed task pointers; the verifier turns these into fault-safe kernel loads.
    let (prev, next) = unsafe {
        (
            core::ptr::read_volatile(prev.wrapping_add(off).cast::<u32>()),
            core::ptr::read_volatile(next.wrapping_add(off).cast::<u32>()),
        )
    };
    switched(cpu, prev, next);
    Ok(0)
}

/// raw_tp: same arguments as tp_btf, as untyped u64s. `prev` is `current` at this tracepoint,
/// so its tid comes from a cheap helper; `next`'s needs `bpf_probe_read_kernel`.
#[inline(always)]
fn try_switch_raw(ctx: &RawTracePointContext) -> Result<i32, i32> {
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let next: *const u8 = ctx.arg(2);
    // A failed read (never seen) still lets the intrusion path see `prev`; tid 0 is never watched.
    let next = task_pid(next).unwrap_or(0);
    switched(cpu, bpf_get_current_pid_tgid() as u32, next);
    Ok(0)
}

/// Classic tracepoint: `next_pid` sits in the record at the offset from the format file; `prev`
/// is `current`, as in raw_tp (one `bpf_probe_read_kernel` instead of two).
#[inline(always)]
fn try_switch_tp(ctx: &TracePointContext) -> Result<u32, u32> {
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // SAFETY: read_at goes through bpf_probe_read_kernel.
    let next: i32 =
        unsafe { ctx.read_at(global(&PF_TP_NEXT_PID_OFF) as usize) }.map_err(|_| 0u32)?;
    switched(cpu, bpf_get_current_pid_tgid() as u32, next as u32);
    Ok(0)
}

/// Every switch, once the tids are known: three bit tests in the filter (no lookup and no helper
/// call unless one is set). A set tid bit may be a collision: the hash maps decide.
#[inline(always)]
fn switched(cpu: u32, prev: u32, next: u32) {
    let what = u32::from(cpu_dedicated(cpu))
        | u32::from(may_watch(prev)) << 1
        | u32::from(may_watch(next)) << 2;
    if what != 0 {
        slow_path(prev, next, cpu, what);
    }
}

/// Whether `tid`'s filter bit is set ([`SwitchFilter::may_watch`], read in place).
#[inline(always)]
fn may_watch(tid: u32) -> bool {
    let (word, bit) = filter_slot(tid);
    // SAFETY: `word` is below FILTER_WORDS (filter_slot masks it), so the read stays inside the
    // global; a volatile read of plain data that only userspace writes.
    let w = unsafe {
        let words = core::ptr::addr_of!(SCHED_FILTER.tids).cast::<u64>();
        core::ptr::read_volatile(words.add((word & (FILTER_WORDS - 1)) as usize))
    };
    (w >> bit) & 1 != 0
}

/// Whether `cpu` is marked dedicated in the filter: one bit test. No range check (that one costs
/// a stack round trip, see [`PinMask::contains`]): a CPU at or above [`MAX_CPUS`] aliases a lower
/// one's bit, and the owner lookup that follows finds no owner for it.
#[inline(always)]
fn cpu_dedicated(cpu: u32) -> bool {
    // SAFETY: the index is masked below PIN_WORDS; as in may_watch.
    let w = unsafe {
        let words = core::ptr::addr_of!(SCHED_FILTER.cpus.words).cast::<u64>();
        core::ptr::read_volatile(words.add(((cpu >> 6) as usize) & (PIN_WORDS - 1)))
    };
    (w >> (cpu & 63)) & 1 != 0
}

/// `what` of [`slow_path`]: the CPU is marked dedicated.
const ON_DEDICATED: u32 = 1;
/// `what` of [`slow_path`]: `prev`'s filter bit is set.
const PREV_BIT: u32 = 2;
/// `what` of [`slow_path`]: `next`'s filter bit is set.
const NEXT_BIT: u32 = 4;

/// Everything but the common path, as a BPF subprogram of its own: the JIT saves the callee-saved
/// registers a function uses in its prologue, so the common path (in the main program) uses and
/// saves none of the ones this path needs, and keeps its values in registers instead of spilling
/// them for this path. Returns 0 (a subprogram must set R0).
#[inline(never)]
fn slow_path(prev: u32, next: u32, cpu: u32, what: u32) -> i32 {
    if what & ON_DEDICATED != 0 {
        dedicated(cpu, prev);
    }
    let (p, n) = (what & PREV_BIT != 0, what & NEXT_BIT != 0);
    if p || n {
        account(prev, p, next, n, cpu);
    }
    0
}

/// A switch on a CPU the filter marks dedicated: its owner, the intrusion path if it has one.
#[inline(always)]
fn dedicated(cpu: u32, prev: u32) {
    if let Some(d) = SCHED_DEDICATED.get(cpu)
        && d.domain != 0
    {
        on_dedicated(cpu, d, prev);
    }
}

/// A switch on a dedicated pCPU: charges the slice that just ended to `prev` unless it is the
/// owner's vCPU or idle, and restarts the CPU's slice clock.
#[inline(always)]
fn on_dedicated(cpu: u32, d: &DedicatedCpu, prev: u32) {
    let Some(st) = SCHED_STOLEN.get_ptr_mut(cpu) else {
        return;
    };
    let (owner, domain, generation) = (d.owner_tid, d.domain, d.generation);
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a map value pointer from a successful lookup; only this CPU's switches write entry
    // `cpu`, and they never run concurrently with each other.
    let st = unsafe { &mut *st };
    let (start, same) = (st.last_switch_ns, st.generation == generation);
    st.last_switch_ns = now;
    st.generation = generation;
    if !same || start == 0 || now <= start || prev == 0 || prev == owner {
        return;
    }
    let slice = now - start;
    let class = classify(prev, domain) as u32;
    if let Some(c) = st.ns.get_mut(class as usize) {
        *c += slice;
    }
    let key = IntruderKey { cpu, tid: prev };
    match SCHED_INTRUDERS.get_ptr_mut(&key) {
        // SAFETY: as above (the key holds this CPU, so only this CPU writes the entry). The comm
        // is refreshed in place: a task seen first between fork and exec has its parent's.
        Some(e) => unsafe {
            (*e).ns += slice;
            (*e).class = class;
            let comm = core::ptr::addr_of_mut!((*e).comm);
            generated::bpf_get_current_comm(comm.cast(), 16);
        },
        None => {
            let stats = IntruderStats {
                ns: slice,
                tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
                class,
                comm: bpf_get_current_comm().unwrap_or([0; 16]),
            };
            // A full LRU evicts its least recent entry; a failure only loses this entry.
            let _ = SCHED_INTRUDERS.insert(&key, &stats, 0);
        }
    }
}

/// The class of `tid` (the task switched out, `current`) on a pCPU dedicated to `domain`.
#[inline(always)]
fn classify(tid: u32, domain: u32) -> IntruderClass {
    if let Some(t) = SCHED_THREADS.get_ptr(tid) {
        // SAFETY: a map value pointer from a successful lookup (read-only here).
        let t = unsafe { *t };
        return if t.vcpu != 0 {
            IntruderClass::OtherVcpu
        } else if t.domain == domain {
            IntruderClass::OwnEmulator
        } else {
            IntruderClass::OtherEmulator
        };
    }
    let off = global(&PF_TASK_FLAGS_OFF) as usize;
    if off != 0 {
        // SAFETY: helper without preconditions; bpf_probe_read_kernel tolerates any address.
        let flags: u32 = unsafe {
            let task = bpf_get_current_task() as *const u8;
            bpf_probe_read_kernel(task.wrapping_add(off).cast::<u32>()).unwrap_or(0)
        };
        if flags & PF_KTHREAD != 0 {
            return IntruderClass::Kernel;
        }
    }
    IntruderClass::Host
}

/// Slow path, only on a filter hit.
#[inline(always)]
fn account(prev: u32, p: bool, next: u32, n: bool, cpu: u32) {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if p {
        switch_out(prev, now, cpu);
    }
    if n {
        switch_in(next, now, cpu);
    }
}

/// `tid` leaves `cpu`: charge the slice to on-pin or off-pin time by the current pin mask.
#[inline(always)]
fn switch_out(tid: u32, now: u64, cpu: u32) {
    let Some(stats) = SCHED_STATS.get_ptr_mut(tid) else {
        return;
    };
    let Some(pin) = SCHED_WATCH.get_ptr(tid) else {
        return;
    };
    // SAFETY: map value pointers from successful lookups. A thread runs on one CPU at a time, so
    // its switch-out and switch-in never race; userspace only reads (or deletes) the entry.
    let (stats, pin) = unsafe { (&mut *stats, &*pin) };
    let start = stats.last_in_ns;
    if start != 0 && now > start {
        let slice = now - start;
        if pin.contains(cpu) {
            stats.on_pin_ns += slice;
        } else {
            stats.off_pin_ns += slice;
            if let Some(n) = SCHED_OFFPIN.get_ptr_mut(0) {
                // SAFETY: this CPU's value pointer of a successful lookup; switches on one CPU
                // never run concurrently.
                unsafe { *n += 1 };
            }
        }
    }
    stats.last_in_ns = 0;
    // Also remember the CPU here: a thread watched while it was already running has no switch-in
    // yet, and its first move to another CPU must still count as a migration.
    stats.last_cpu = cpu;
}

/// `tid` starts running on `cpu`.
#[inline(always)]
fn switch_in(tid: u32, now: u64, cpu: u32) {
    let Some(stats) = SCHED_STATS.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: as in switch_out.
    let stats = unsafe { &mut *stats };
    stats.switches += 1;
    if stats.last_cpu != NO_CPU && stats.last_cpu != cpu {
        stats.migrations += 1;
    }
    stats.last_cpu = cpu;
    stats.last_in_ns = now;
}
