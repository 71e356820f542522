//! Loader of the pinning event probe (`collector-ebpf/src/pin_events.rs`, layout in
//! `collector_common::pin_events`): the kernel reports which watched thread's affinity
//! (`sched_setaffinity`) or cgroup (`cgroup_attach_task`) changed, through a ring buffer, so the
//! pinning pipeline re-reads only those threads and keeps a full procfs pass as a slow safety net.
//!
//! The cgroup program attaches to the raw tracepoint `cgroup_attach_task` (`task_struct.pid`'s
//! offset from kernel BTF): no tracefs and no perf event, so it loads in a pod that holds only
//! `CAP_BPF` + `CAP_PERFMON`, whatever `perf_event_paranoid` says. Without BTF it falls back to
//! the classic tracepoint. The opt-in `sched_setaffinity` programs are classic syscall
//! tracepoints (record offsets from their tracefs `format` files): they need tracefs. Where
//! nothing loads, the pipeline polls procfs.
//!
//! Cost: the programs run only for `sched_setaffinity` calls and cgroup moves (rare), but while
//! any syscall tracepoint is enabled the kernel sets `SYSCALL_TRACEPOINT` work on every task, so
//! every syscall on the host takes the slow entry/exit path. Measured on the testbed (6.18, 2
//! vCPUs, loaded): `getppid` 110–139 ns without, 154–175 ns with these programs attached, i.e.
//! ~+25–45 ns per syscall host-wide (`/tmp/sysbench`: 20 M `syscall(SYS_getppid)` pinned to CPU 1,
//! alternating runs). `cgroup_attach_task` alone costs nothing outside cgroup moves. Where
//! trampolines are allowed, an `fentry` on `sched_setaffinity`, or reading the watched threads'
//! `cpus_mask` in the sched_switch program, would avoid that tax. A `bpf_iter/task` program that
//! compares every watched thread's `cpus_mask` and policy with what it last saw was built and
//! measured (stop 20) as the per-tick check instead of the syscalls: one read of the iterator
//! walking 2 340 tasks, 2 200 of them watched, took 768 µs; 2 200 `sched_getaffinity(2)` calls
//! took 467 µs (release build, 100 rounds each). The walk pays a pid lookup per task on top of a
//! hash lookup and a mask read per watched thread, so it was dropped.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, RingBuf};
use aya::programs::{RawTracePoint, TracePoint};
use collector_common::pin_events::{self as layout, MAX_WATCHED_IDS, PinEvent};

use super::{chain, ebpf_object, has_eperm, missing_bpf_capabilities, tracefs};
use crate::model::health::BpfProgramCost;

/// Why the event probe could not be loaded (the pipeline then polls procfs).
#[derive(Debug, thiserror::Error)]
pub(crate) enum EventsError {
    /// The binary embeds no eBPF object.
    #[error("eBPF object not built (this binary was built with PINFLOW_SKIP_EBPF=1)")]
    NotBuilt,
    /// The kernel refused BPF.
    #[error("permission denied loading eBPF ({hint}): {0}", hint = missing_bpf_capabilities())]
    PermissionDenied(String),
    /// A tracepoint format could not be read (tracefs not mounted, or no syscall tracepoints).
    #[error("{0}")]
    Format(String),
    /// Loading or attaching failed.
    #[error("{what}: {reason}")]
    Load {
        /// The step.
        what: &'static str,
        /// The error chain.
        reason: String,
    },
}

fn failed(what: &'static str, e: &(dyn std::error::Error + 'static)) -> EventsError {
    if has_eperm(e) {
        EventsError::PermissionDenied(format!("{what}: {}", chain(e)))
    } else {
        EventsError::Load {
            what,
            reason: chain(e),
        }
    }
}

/// Offset of `field` in the record of `category:name`, checking its size.
fn field(category: &str, name: &str, f: &str, size: u32) -> Result<u32, EventsError> {
    let err = |e: String| EventsError::Format(format!("{category}:{name}: {e}"));
    let path = tracefs::format_path(category, name).map_err(|e| err(e.to_string()))?;
    let text =
        std::fs::read_to_string(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let loc = tracefs::parse_field(&text, f).map_err(|e| err(e.to_string()))?;
    if loc.size != size {
        return Err(err(format!("{f} is {} bytes, expected {size}", loc.size)));
    }
    Ok(loc.offset)
}

/// The attached event programs and the map of ids they report. Dropping it detaches them.
pub(crate) struct PinEvents {
    watch: BpfHashMap<MapData, u32, u32>,
    lost: Array<MapData, u64>,
    watched: HashSet<u32>,
    /// Owns the programs and their links.
    ebpf: Ebpf,
}

impl std::fmt::Debug for PinEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinEvents")
            .field("watched", &self.watched.len())
            .finish_non_exhaustive()
    }
}

/// The ring buffer the programs write to; read on a thread of its own ([`wait_readable`]).
pub(crate) struct PinEventReader {
    ring: RingBuf<MapData>,
}

impl std::fmt::Debug for PinEventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinEventReader").finish_non_exhaustive()
    }
}

/// The programs, with their tracepoints.
const PROGRAMS: [(&str, &str, &str); 3] = [
    (
        layout::PROG_AFFINITY_ENTER,
        "syscalls",
        "sys_enter_sched_setaffinity",
    ),
    (
        layout::PROG_AFFINITY_EXIT,
        "syscalls",
        "sys_exit_sched_setaffinity",
    ),
    (layout::PROG_CGROUP_ATTACH, "cgroup", "cgroup_attach_task"),
];

impl PinEvents {
    /// Loads the object's event programs and attaches them (the `sched_setaffinity` syscall
    /// programs only with `affinity`); the reader drains their events.
    pub(crate) fn load(affinity: bool) -> Result<(PinEvents, PinEventReader), EventsError> {
        if ebpf_object().is_empty() {
            return Err(EventsError::NotBuilt);
        }
        // The cgroup program attaches to the raw tracepoint where kernel BTF gives
        // `task_struct.pid` (no tracefs, no perf event), else to the classic one.
        let task_pid =
            super::btf::sched_facts_in_file(std::path::Path::new(super::btf::VMLINUX_BTF))
                .ok()
                .map(|f| f.task_pid)
                .filter(|loc| loc.size == 4)
                .map(|loc| loc.offset);
        let (enter_pid, exit_ret) = if affinity {
            (
                field("syscalls", "sys_enter_sched_setaffinity", "pid", 8)?,
                field("syscalls", "sys_exit_sched_setaffinity", "ret", 8)?,
            )
        } else {
            (0, 0)
        };
        let attach_pid = match task_pid {
            Some(_) => 0,
            None => field("cgroup", "cgroup_attach_task", "pid", 4)?,
        };
        let task_pid_off = task_pid.unwrap_or(0);
        let mut loader = super::loader::new_loader(super::loader::Probe::PinEvents);
        loader
            .override_global(layout::GLOBAL_ENTER_PID_OFFSET, &enter_pid, true)
            .override_global(layout::GLOBAL_EXIT_RET_OFFSET, &exit_ret, true)
            .override_global(layout::GLOBAL_ATTACH_PID_OFFSET, &attach_pid, true)
            .override_global(layout::GLOBAL_TASK_PID_OFFSET, &task_pid_off, true);
        let mut ebpf = loader
            .load(ebpf_object())
            .map_err(|e| failed("loading the eBPF object", &e))?;
        if task_pid.is_some() {
            let err = |what: &'static str| move |e: aya::programs::ProgramError| failed(what, &e);
            let p: &mut RawTracePoint = ebpf
                .program_mut(layout::PROG_CGROUP_ATTACH_RAW)
                .ok_or_else(|| EventsError::Load {
                    what: "eBPF object",
                    reason: format!("program {} missing", layout::PROG_CGROUP_ATTACH_RAW),
                })?
                .try_into()
                .map_err(err("program type"))?;
            p.load().map_err(err("loading an event program"))?;
            p.attach("cgroup_attach_task")
                .map_err(err("attaching an event program"))?;
        }
        for (prog, category, name) in PROGRAMS.into_iter().filter(|(_, category, _)| {
            if *category == "syscalls" {
                affinity
            } else {
                task_pid.is_none()
            }
        }) {
            let err = |what: &'static str| move |e: aya::programs::ProgramError| failed(what, &e);
            let p: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| EventsError::Load {
                    what: "eBPF object",
                    reason: format!("program {prog} missing"),
                })?
                .try_into()
                .map_err(err("program type"))?;
            p.load().map_err(err("loading an event program"))?;
            p.attach(category, name)
                .map_err(err("attaching an event program"))?;
        }
        let mut take = |m: &'static str| {
            ebpf.take_map(m).ok_or_else(|| EventsError::Load {
                what: "eBPF object",
                reason: format!("map {m} missing"),
            })
        };
        let (watch, lost, ring) = (
            take(layout::WATCH_MAP)?,
            take(layout::LOST_MAP)?,
            take(layout::EVENTS_MAP)?,
        );
        let map_err = |m: &'static str| move |e: MapError| failed(m, &e);
        let watch = BpfHashMap::try_from(watch).map_err(map_err(layout::WATCH_MAP))?;
        let lost = Array::try_from(lost).map_err(map_err(layout::LOST_MAP))?;
        let ring = RingBuf::try_from(ring).map_err(map_err(layout::EVENTS_MAP))?;
        Ok((
            PinEvents {
                watch,
                lost,
                watched: HashSet::new(),
                ebpf,
            },
            PinEventReader { ring },
        ))
    }

    /// Makes the reported ids exactly `ids` (thread ids and process ids), changing only the
    /// difference. Returns how many map updates failed (ids beyond the map's capacity included).
    pub(crate) fn sync(&mut self, ids: &HashSet<u32>) -> u64 {
        let mut failed = 0u64;
        let gone: Vec<u32> = self.watched.difference(ids).copied().collect();
        for id in gone {
            match self.watch.remove(&id) {
                Ok(()) | Err(MapError::KeyNotFound) => {
                    self.watched.remove(&id);
                }
                Err(_) => failed += 1,
            }
        }
        for &id in ids {
            if self.watched.contains(&id) {
                continue;
            }
            if self.watched.len() >= MAX_WATCHED_IDS as usize {
                failed += 1;
                continue;
            }
            match self.watch.insert(id, 1, 0) {
                Ok(()) => {
                    self.watched.insert(id);
                }
                Err(_) => failed += 1,
            }
        }
        failed
    }

    /// Number of ids reported.
    pub(crate) fn watched(&self) -> usize {
        self.watched.len()
    }

    /// Events the full ring buffer refused since load (any increase means: reconcile).
    pub(crate) fn lost(&self) -> Result<u64, String> {
        self.lost.get(&0, 0).map_err(|e| chain(&e))
    }

    /// Per program: run time and count from the kernel's BPF statistics (when enabled).
    pub(crate) fn program_stats(&self) -> Vec<BpfProgramCost> {
        PROGRAMS
            .iter()
            .map(|(name, ..)| *name)
            .chain([layout::PROG_CGROUP_ATTACH_RAW])
            .filter_map(|name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some(BpfProgramCost {
                    program: name.to_string(),
                    run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                    run_count: info.run_count(),
                })
            })
            .collect()
    }
}

impl PinEventReader {
    /// The ring buffer's descriptor (readable while events are queued).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }

    /// Takes every queued event (never blocks).
    pub(crate) fn drain(&mut self) -> Vec<PinEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some(ev) = PinEvent::from_bytes(&item) {
                out.push(ev);
            }
        }
        out
    }
}

/// Waits until one of `fds` is readable or `timeout` passes (`None`: forever). Returns, per fd,
/// whether it is readable (all false on timeout; an interrupted wait is a timeout too).
pub(crate) fn wait_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    let n = poll(&mut polls, ms);
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(polls
        .iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0)
        .collect())
}

/// poll(2) on `polls` for up to `ms` milliseconds (-1: forever).
#[allow(unsafe_code)] // poll(2) has no safe wrapper in std or libc.
fn poll(polls: &mut [libc::pollfd], ms: i32) -> i32 {
    // SAFETY: `polls` is a valid, exclusively borrowed array of `polls.len()` pollfd structs; the
    // caller keeps their descriptors open (borrowed fds) for the duration of the call.
    unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) }
}

#[cfg(test)]
#[allow(unsafe_code)] // The test sets its own affinity with libc calls.
mod tests {
    use super::*;

    #[test]
    fn embedded_object_has_the_event_programs_and_maps() {
        let data = ebpf_object();
        if data.is_empty() {
            eprintln!("SKIP: eBPF object not built");
            return;
        }
        let obj = aya_obj::Object::parse(data).expect("object parses");
        for prog in PROGRAMS
            .iter()
            .map(|(p, ..)| *p)
            .chain([layout::PROG_CGROUP_ATTACH_RAW])
        {
            assert!(obj.programs.contains_key(prog), "program {prog}");
        }
        for m in [
            layout::WATCH_MAP,
            layout::PENDING_MAP,
            layout::EVENTS_MAP,
            layout::LOST_MAP,
        ] {
            assert!(obj.maps.contains_key(m), "map {m}");
        }
    }

    #[test]
    fn waiting_on_a_pipe_sees_it_readable_only_once_written() {
        let (r, w) = std::io::pipe().expect("pipe");
        let t0 = std::time::Instant::now();
        let got = wait_readable(&[r.as_fd()], Some(Duration::from_millis(30))).expect("poll");
        assert_eq!(got, vec![false]);
        assert!(t0.elapsed() >= Duration::from_millis(25));
        std::io::Write::write_all(&mut &w, b"x").expect("write");
        let got = wait_readable(&[r.as_fd()], Some(Duration::from_secs(5))).expect("poll");
        assert_eq!(got, vec![true]);
    }

    /// Loads the programs for real, watches this test's own thread, sets its affinity and moves
    /// it into the cgroup it is already in: both are reported, an unwatched thread is not.
    #[test]
    fn affinity_and_cgroup_changes_of_watched_threads_are_reported() {
        let (mut ev, mut reader) = match PinEvents::load(true) {
            Ok(x) => x,
            Err(e @ (EventsError::PermissionDenied(_) | EventsError::NotBuilt)) => {
                assert!(
                    pinflow_tests::skips_allowed(),
                    "PINFLOW_REQUIRE_PRIVILEGED=1 but: {e}"
                );
                println!("SKIP: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        // SAFETY: gettid(2) has no preconditions.
        let me = unsafe { libc::gettid() } as u32;
        let set_affinity = |tid: u32| {
            // SAFETY: `set` is a valid cpu_set_t of the size passed.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                let size = std::mem::size_of::<libc::cpu_set_t>();
                assert_eq!(libc::sched_getaffinity(tid as i32, size, &mut set), 0);
                assert_eq!(libc::sched_setaffinity(tid as i32, size, &set), 0);
            }
        };
        // Not watched: nothing.
        set_affinity(me);
        assert!(reader.drain().is_empty());
        assert_eq!(ev.sync(&HashSet::from([me])), 0);
        assert_eq!(ev.watched(), 1);
        set_affinity(0);
        let got = wait_readable(&[reader.fd()], Some(Duration::from_secs(2))).expect("poll");
        assert_eq!(got, vec![true]);
        assert_eq!(
            reader.drain(),
            vec![PinEvent {
                tid: me,
                kind: layout::KIND_AFFINITY
            }]
        );
        // A cgroup move (v2: into the cgroup it is in; the kernel still attaches).
        let cg = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
        if let Some(path) = cg.lines().find_map(|l| l.strip_prefix("0::")) {
            let threads = format!("/sys/fs/cgroup{path}/cgroup.threads");
            if std::fs::write(&threads, me.to_string()).is_ok() {
                let _ = wait_readable(&[reader.fd()], Some(Duration::from_secs(2)));
                let evs = reader.drain();
                assert!(
                    evs.iter()
                        .all(|e| e.tid == me && e.kind == layout::KIND_CGROUP),
                    "{evs:?}"
                );
            }
        }
        assert_eq!(ev.sync(&HashSet::new()), 0);
        set_affinity(me);
        assert!(reader.drain().is_empty());
        assert_eq!(ev.lost(), Ok(0));
    }
}
