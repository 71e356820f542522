//! Map layout of the `sched_switch` placement probe (per-vCPU-thread time on/off its pinned CPUs).
//!
//! - [`FILTER_MAP`]: the program's global `SCHED_FILTER` ([`SwitchFilter`], the object's `.bss`
//!   map of one entry), written by userspace only (whole value), the only map every switch reads:
//!   a 64K-bit filter of thread ids indexed by `tid & 0xffff` (see [`filter_slot`]) and the set of
//!   dedicated CPUs. Clear bits for both tasks of a switch and its CPU mean "nothing to do": no
//!   lookup at all for the whole switch. A set tid bit may be a collision and is confirmed by the
//!   hash maps below.
//!
//! Two maps keyed by thread id (the kernel's `task_struct.pid`):
//! - [`WATCH_MAP`]: `HashMap<u32, PinMask>`, written by userspace only.
//! - [`STATS_MAP`]: `HashMap<u32, PlacementStats>`, created (zeroed) by userspace, updated by the
//!   kernel only: the kernel never inserts, so an unwatched thread never reappears.
//!
//! Intrusions on dedicated pCPUs (who else ran on a pCPU a vCPU is pinned to alone):
//! - [`DEDICATED_MAP`]: `Array<DedicatedCpu>` indexed by CPU, written by userspace only: the
//!   owner (domain id, vCPU tid) of each dedicated pCPU; `domain == 0` everywhere else. Read only
//!   on the CPUs [`SwitchFilter::cpus`] marks (an entry with `domain == 0` there does nothing).
//! - [`STOLEN_MAP`]: `Array<StolenCpu>` indexed by CPU, written by the kernel only (on that CPU):
//!   the last switch's time and the run time of intruders by [`IntruderClass`]. [`MMAPABLE`]:
//!   userspace reads it in place, every dedicated pCPU every tick, without a syscall.
//! - [`THREADS_MAP`]: `HashMap<u32, DomainThread>`, written by userspace: every thread of every
//!   domain's QEMU process, with its domain id and whether it is a vCPU thread.
//! - [`INTRUDERS_MAP`]: per-CPU-LRU `LruHashMap<IntruderKey, IntruderStats>`, inserted and
//!   updated by the kernel: run time per (CPU, intruding tid) with its comm and tgid.

use bytemuck::{Pod, Zeroable};

/// Highest number of CPUs a pin mask can describe (CPUs `0..MAX_CPUS`).
pub const MAX_CPUS: usize = 1024;
/// Number of `u64` words in a [`PinMask`].
pub const PIN_WORDS: usize = MAX_CPUS / 64;
/// Number of `u64` words in the watch filter (65 536 bits).
pub const FILTER_WORDS: u32 = 1024;
/// Capacity of the watch and stats maps (watched threads at once).
pub const MAX_WATCHED: u32 = 16384;
/// `PlacementStats::last_cpu` before the first switch-in.
pub const NO_CPU: u32 = u32::MAX;

/// Name of the filter's map in the object: the program's `.bss` section, which holds the
/// `SCHED_FILTER` global ([`SwitchFilter`]) and nothing else, as one entry.
pub const FILTER_MAP: &str = ".bss";
/// Name of the watch (pin mask) map in the object.
pub const WATCH_MAP: &str = "SCHED_WATCH";
/// Name of the per-thread statistics map in the object.
pub const STATS_MAP: &str = "SCHED_STATS";
/// Name of the off-pin slice counter (`PerCpuArray<u64>` of one entry): bumped each time a watched
/// thread's slice is charged as off-pin time, so userspace knows without reading every thread's
/// counters whether any placement finding can have changed.
pub const OFFPIN_MAP: &str = "SCHED_OFFPIN";

/// Name of the per-CPU owner map of dedicated pCPUs.
pub const DEDICATED_MAP: &str = "SCHED_DEDICATED";
/// Name of the per-CPU intrusion counter map.
pub const STOLEN_MAP: &str = "SCHED_STOLEN";
/// Name of the domain thread map (tid -> domain id, vCPU or not).
pub const THREADS_MAP: &str = "SCHED_THREADS";
/// Name of the top-intruder LRU map.
pub const INTRUDERS_MAP: &str = "SCHED_INTRUDERS";

/// Capacity of the domain thread map (threads of all domains' QEMU processes).
pub const MAX_DOMAIN_THREADS: u32 = 32768;
/// Capacity of the intruder LRU (split evenly between CPUs: `BPF_F_NO_COMMON_LRU`).
pub const MAX_INTRUDERS: u32 = 1024;
/// `BPF_F_NO_COMMON_LRU`: one LRU list per CPU (keys carry the CPU, each CPU inserts its own).
pub const LRU_PER_CPU: u32 = 1 << 1;
/// `BPF_F_MMAPABLE`: an array userspace maps into its memory and reads without a syscall.
pub const MMAPABLE: u32 = 1 << 10;
/// `PF_KTHREAD` in `task_struct.flags` (include/linux/sched.h).
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// Name of the global holding `offsetof(struct task_struct, flags)` (0: unknown, no `kernel` class).
pub const GLOBAL_TASK_FLAGS_OFFSET: &str = "PF_TASK_FLAGS_OFF";
/// Name of the global holding `offsetof(struct task_struct, pid)` (set by userspace before load).
pub const GLOBAL_TASK_PID_OFFSET: &str = "PF_TASK_PID_OFF";
/// Name of the global holding the offset of `next_pid` in the classic tracepoint record.
pub const GLOBAL_TP_NEXT_PID_OFFSET: &str = "PF_TP_NEXT_PID_OFF";

/// Program attached as `tp_btf/sched_switch`.
pub const PROG_TP_BTF: &str = "pf_switch_btf";
/// Program attached as `raw_tracepoint/sched_switch`.
pub const PROG_RAW_TP: &str = "pf_switch_raw";
/// Program attached as the classic tracepoint `sched:sched_switch`.
pub const PROG_TRACEPOINT: &str = "pf_switch_tp";

/// Empty `tp_btf/sched_switch` program, loaded only by the benchmark to measure the attach floor.
pub const PROG_NOP: &str = "pf_switch_nop";

/// Word index and bit number of `tid` in the watch filter.
#[inline(always)]
pub const fn filter_slot(tid: u32) -> (u32, u32) {
    ((tid >> 6) & (FILTER_WORDS - 1), tid & 63)
}

/// What every context switch checks (the `SCHED_FILTER` global, [`FILTER_MAP`]'s one entry):
/// whether either task may be watched, and whether the CPU is dedicated. Written by userspace
/// only, as a whole value (the kernel copies it without a lock, so a switch during a write may
/// see some words old and some new; each bit is either its old or its new value, which is all a
/// filter needs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct SwitchFilter {
    /// 64K-bit thread id filter: bit `b` of word `w` for the slot ([`filter_slot`]) of a watched tid.
    pub tids: [u64; FILTER_WORDS as usize],
    /// The dedicated CPUs (those with an owner in [`DEDICATED_MAP`]).
    pub cpus: PinMask,
}

impl SwitchFilter {
    /// No tid may be watched, no CPU is dedicated.
    pub const EMPTY: SwitchFilter = SwitchFilter {
        tids: [0; FILTER_WORDS as usize],
        cpus: PinMask {
            words: [0; PIN_WORDS],
        },
    };

    /// Whether `tid`'s bit is set (it may be watched: possibly a collision). The program reads
    /// its copy in place, word by word, with the same [`filter_slot`].
    pub fn may_watch(&self, tid: u32) -> bool {
        let (word, bit) = filter_slot(tid);
        match self.tids.get(word as usize) {
            Some(w) => (*w >> bit) & 1 != 0,
            None => false,
        }
    }

    /// Sets or clears `tid`'s bit.
    pub fn set_tid(&mut self, tid: u32, on: bool) {
        let (word, bit) = filter_slot(tid);
        if let Some(w) = self.tids.get_mut(word as usize) {
            if on {
                *w |= 1u64 << bit;
            } else {
                *w &= !(1u64 << bit);
            }
        }
    }

    /// Sets or clears `cpu`'s bit in [`SwitchFilter::cpus`] (CPUs at or above [`MAX_CPUS`]: no-op).
    pub fn set_cpu(&mut self, cpu: u32, on: bool) {
        if let Some(w) = self.cpus.words.get_mut((cpu / 64) as usize) {
            if on {
                *w |= 1u64 << (cpu % 64);
            } else {
                *w &= !(1u64 << (cpu % 64));
            }
        }
    }
}

/// The CPUs a watched thread is pinned to, as a bitmap (bit `c % 64` of word `c / 64` is CPU `c`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct PinMask {
    /// Bitmap words, CPU 0 in bit 0 of word 0.
    pub words: [u64; PIN_WORDS],
}

impl PinMask {
    /// Whether `cpu` is in the mask (CPUs at or above [`MAX_CPUS`] never are).
    #[inline(always)]
    pub fn contains(&self, cpu: u32) -> bool {
        if cpu as usize >= MAX_CPUS {
            return false;
        }
        // The index is masked, from a copy LLVM knows nothing about: given the comparison above,
        // LLVM drops the mask and indexes with the helper's raw 64-bit register, whose upper half
        // Linux 6.1's verifier cannot bound ("invalid access to map value, value_size=128
        // off=536870904"). The volatile read keeps the mask, which bounds the index where the
        // verifier sees it.
        #[allow(unsafe_code)] // A volatile read of a local: an optimisation barrier, nothing more.
        // SAFETY: `cpu` is a live local of this function.
        let index_from = unsafe { core::ptr::read_volatile(&cpu) };
        match self.words.get((index_from >> 6) as usize & (PIN_WORDS - 1)) {
            Some(w) => (*w >> (cpu & 63)) & 1 != 0,
            None => false,
        }
    }
}

/// What the kernel measured for one watched thread since it was first watched.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct PlacementStats {
    /// CPU time on CPUs in the pin mask (mask as of each slice's switch-out), ns.
    pub on_pin_ns: u64,
    /// CPU time on CPUs outside the pin mask, ns.
    pub off_pin_ns: u64,
    /// Switch-ins on a CPU other than the previous switch-in's.
    pub migrations: u64,
    /// Switch-ins seen.
    pub switches: u64,
    /// `bpf_ktime_get_ns` of the running slice's switch-in; 0 while not running (or unknown).
    pub last_in_ns: u64,
    /// CPU of the last switch-in, [`NO_CPU`] before the first.
    pub last_cpu: u32,
    /// Padding, always 0.
    pub _pad: u32,
}

impl PlacementStats {
    /// Fresh statistics for a newly watched thread.
    pub const fn new() -> Self {
        Self {
            on_pin_ns: 0,
            off_pin_ns: 0,
            migrations: 0,
            switches: 0,
            last_in_ns: 0,
            last_cpu: NO_CPU,
            _pad: 0,
        }
    }
}

impl Default for PlacementStats {
    fn default() -> Self {
        Self::new()
    }
}

/// Number of intruder classes.
pub const INTRUDER_CLASSES: usize = 5;

/// Who ran on a dedicated pCPU instead of its owner (the `intruder` label); index into
/// [`StolenCpu::ns`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IntruderClass {
    /// A vCPU thread other than the owner (another instance's, or the owner's other vCPU).
    OtherVcpu = 0,
    /// A non-vCPU thread of another instance's QEMU process (emulator, I/O, vhost worker).
    OtherEmulator = 1,
    /// A non-vCPU thread of the owner's own QEMU process.
    OwnEmulator = 2,
    /// A host kernel thread (`PF_KTHREAD`).
    Kernel = 3,
    /// Any other host task.
    Host = 4,
}

impl IntruderClass {
    /// Every class, in index order.
    pub const ALL: [IntruderClass; INTRUDER_CLASSES] = [
        IntruderClass::OtherVcpu,
        IntruderClass::OtherEmulator,
        IntruderClass::OwnEmulator,
        IntruderClass::Kernel,
        IntruderClass::Host,
    ];

    /// The class of index `i` ([`IntruderClass::Host`] when out of range).
    pub const fn from_index(i: u32) -> IntruderClass {
        match i {
            0 => IntruderClass::OtherVcpu,
            1 => IntruderClass::OtherEmulator,
            2 => IntruderClass::OwnEmulator,
            3 => IntruderClass::Kernel,
            _ => IntruderClass::Host,
        }
    }

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            IntruderClass::OtherVcpu => "other_vcpu",
            IntruderClass::OtherEmulator => "other_emulator",
            IntruderClass::OwnEmulator => "own_emulator",
            IntruderClass::Kernel => "kernel",
            IntruderClass::Host => "host",
        }
    }
}

/// The owner of one pCPU (`DEDICATED_MAP[cpu]`); written by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DedicatedCpu {
    /// Domain id (userspace's, never 0) of the owner; 0: the pCPU is not dedicated.
    pub domain: u32,
    /// Thread id of the owner's vCPU.
    pub owner_tid: u32,
    /// Bumped by userspace on every change of this entry: the kernel restarts its slice clock
    /// instead of charging the time since an older dedication.
    pub generation: u32,
    /// Padding, always 0.
    pub _pad: u32,
}

/// Intrusions on one pCPU (`STOLEN_MAP[cpu]`); written by the kernel on that CPU only.
/// 64 bytes: one cache line per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct StolenCpu {
    /// `bpf_ktime_get_ns` of the last switch on this CPU while dedicated (0: none yet).
    pub last_switch_ns: u64,
    /// Run time of intruders by [`IntruderClass`] index, ns, since load.
    pub ns: [u64; INTRUDER_CLASSES],
    /// [`DedicatedCpu::generation`] `last_switch_ns` belongs to.
    pub generation: u32,
    /// Padding, always 0.
    pub _pad: u32,
    /// Padding to 64 bytes, always 0.
    pub _pad2: u64,
}

/// A thread of a domain's QEMU process (`THREADS_MAP[tid]`); written by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DomainThread {
    /// Domain id (as in [`DedicatedCpu::domain`]).
    pub domain: u32,
    /// 1 for a vCPU thread, 0 for any other thread of the process.
    pub vcpu: u32,
}

/// Key of the intruder LRU: a task on a CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct IntruderKey {
    /// The dedicated pCPU.
    pub cpu: u32,
    /// The intruding thread id.
    pub tid: u32,
}

/// One intruder's run time on one dedicated pCPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct IntruderStats {
    /// Run time on the pCPU while it was dedicated, ns, since first seen (or evicted).
    pub ns: u64,
    /// Process id (tgid) of the thread.
    pub tgid: u32,
    /// [`IntruderClass`] index as of its last slice.
    pub class: u32,
    /// `comm` as of its last slice (a task first seen between fork and exec gets its own name
    /// at its next slice), NUL-padded.
    pub comm: [u8; 16],
}

#[cfg(feature = "user")]
#[allow(unsafe_code)] // aya::Pod is an unsafe trait.
mod user {
    // SAFETY: both types are #[repr(C)], have no padding and are bytemuck::Pod.
    unsafe impl aya::Pod for super::PinMask {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SwitchFilter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PlacementStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DedicatedCpu {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StolenCpu {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DomainThread {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IntruderKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IntruderStats {}
}
