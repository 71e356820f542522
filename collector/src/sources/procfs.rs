//! Actual thread placement, read from procfs and cgroupfs under configurable roots.
//!
//! [`HostFs`] reads, for one thread of one process: the allowed CPUs (`sched_getaffinity(2)` when the
//! procfs root is the live `/proc`, else `/proc/PID/task/TID/status`, `Cpus_allowed_list`), its name and last CPU (`stat`), its scheduler run and wait time (`schedstat`), its
//! cpuset cgroup (`cgroup`) and that cgroup's `cpuset.cpus` in cgroupfs. Roots are injectable
//! (`--proc-root`, `--sys-root`): a container reads the host's mounts, tests read fixture trees.
//!
//! cpuset resolution:
//! - cgroup v1 (and hybrid hosts, where v1 controllers are mounted next to v2 at `/sys/fs/cgroup/unified`):
//!   the `N:…cpuset…:/path` line; the file is `<sys>/fs/cgroup/cpuset/<path>/cpuset.cpus`, or, for a
//!   combined mount, `<sys>/fs/cgroup/<controllers as listed, e.g. cpuset,cpu>/<path>/cpuset.cpus`.
//! - cgroup v2 (no v1 cpuset line): the `0::/path` line; the file is `<v2 root>/<path>/cpuset.cpus`,
//!   falling back to `cpuset.cpus.effective` when it is empty or absent. The v2 root is `<sys>/fs/cgroup`,
//!   or `<sys>/fs/cgroup/unified` when only that one carries `cgroup.controllers`.
//!
//! Parsing is done by hand; the `procfs` crate (0.17.0) was measured and rejected (it stays a
//! dev-dependency of the measurement only). Reading every thread of every process on a 2-core test host
//! (586 threads) and of a synthetic 501-thread process, exactly what [`HostFs::thread`] reads, `procfs`'s
//! nearest API (`Process::new_with_root`, `tasks`, `Task::status`/`stat`/`schedstat`,
//! `Task::read::<ProcessCGroups>("cgroup")`, cgroupfs by hand as it has no API for it) took 38–40 µs and
//! ~280 allocations (36 KB) per thread against HostFs's 23–25 µs and ~55 allocations (6.4 KB): `Status`
//! parses all ~60 lines into a `HashMap` to give one field. Its behaviour does not fit either: a
//! malformed `stat` under a custom root (`--proc-root`, fixture trees) makes it panic (slice out of
//! bounds in `Stat::from_read`), a garbled `Cpus_allowed_list` silently becomes `None`, files are read
//! without a size bound, an exited thread is `NotFound`, the same error as a file the kernel lacks
//! (`schedstat`), so the task directory must still be checked, and cgroupfs/sysfs roots are not covered.
//! Reproduce: `cargo build --release -p pinflow --example crate_choice && sudo
//! target/release/examples/crate_choice procfs` (collector/examples/crate_choice.rs; it also prints the
//! behaviour checks above).

use crate::model::cpuset::CpuSet;
use crate::model::pinning::ThreadState;
use crate::sources::{CanRun, SourceDef};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

/// The procfs source: each vCPU and emulator thread's affinity, last CPU, scheduler times and
/// cgroup cpuset.
pub(crate) const SOURCE: SourceDef = SourceDef {
    name: "procfs",
    collector: "pinning",
    can_run: |host| {
        CanRun::of(
            HostFs::new(host.proc_root.clone(), host.sys_root.clone())
                .probe()
                .map(|found| format!("{found}; {}", events_mode())),
        )
    },
};

/// Which mode `serve` would run the pinning pipeline in (with `[pinning] events = true`).
fn events_mode() -> String {
    match crate::sources::sched_bpf::events::PinEvents::load(false) {
        Ok(_) => "events mode: eBPF cgroup events attach, cpuset cgroups under inotify, affinity checked every interval; procfs re-read only for the threads that change".to_string(),
        Err(e) => format!("polling mode: pinning event programs unavailable ({e})"),
    }
}

/// Largest procfs/cgroupfs file read (`status` is ~1.5 KiB; `cgroup` grows with the number of hierarchies).
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Why a thread's state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The thread (or its whole process) exited: normal while a domain shuts down.
    #[error("thread {tid} of process {pid} is gone")]
    Gone {
        /// Process id.
        pid: u32,
        /// Thread id.
        tid: u32,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file was read but its content is not what the kernel writes.
    #[error("unexpected content in {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The host's `/proc` and `/sys`, possibly mounted elsewhere.
#[derive(Clone, Debug)]
pub struct HostFs {
    proc_root: PathBuf,
    sys_root: PathBuf,
    /// The procfs root shows this process's own pid namespace (`/proc`, or the host's procfs
    /// mounted elsewhere in a pod with `hostPID`): thread ids are ours to ask the kernel about
    /// (affinity by syscall instead of parsing `status`). Fixture trees, and the host's procfs
    /// seen from another pid namespace, keep being read as files.
    live: bool,
}

impl Default for HostFs {
    /// `/proc` and `/sys`.
    fn default() -> Self {
        Self::new(PathBuf::from("/proc"), PathBuf::from("/sys"))
    }
}

impl HostFs {
    /// Reads procfs at `proc_root` (normally `/proc`) and sysfs/cgroupfs at `sys_root` (normally `/sys`).
    pub fn new(proc_root: PathBuf, sys_root: PathBuf) -> Self {
        let live = shows_own_pid_namespace(&proc_root);
        Self {
            proc_root,
            sys_root,
            live,
        }
    }

    /// Whether the procfs root shows this process's pid namespace (thread ids are ours to pass
    /// to syscalls).
    pub(crate) fn is_live(&self) -> bool {
        self.live
    }

    /// The procfs root.
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// The sysfs root.
    pub fn sys_root(&self) -> &Path {
        &self.sys_root
    }

    /// Whether both roots can be read (for `pinflow check` and the one-shot `pinflow pinning`):
    /// the procfs root lists at least one process and the cgroupfs root (`<sys>/fs/cgroup`) is a
    /// readable directory. `Ok` says what was found, `Err` why the roots cannot serve.
    pub fn probe(&self) -> Result<String, String> {
        let procs = std::fs::read_dir(&self.proc_root)
            .map_err(|e| format!("cannot read {}: {e}", self.proc_root.display()))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .count();
        if procs == 0 {
            return Err(format!(
                "{} lists no process (not a procfs mount? see --proc-root)",
                self.proc_root.display()
            ));
        }
        let cgroup = self.sys_root.join("fs/cgroup");
        let controllers = std::fs::read_dir(&cgroup)
            .map_err(|e| {
                format!(
                    "cannot read cgroupfs at {}: {e} (see --sys-root)",
                    cgroup.display()
                )
            })?
            .count();
        let layout = if cgroup.join("cgroup.controllers").exists() {
            "v2"
        } else if controllers == 0 {
            return Err(format!(
                "{} is empty (cgroupfs not mounted? see --sys-root)",
                cgroup.display()
            ));
        } else {
            "v1"
        };
        Ok(format!(
            "{} process(es) in {}, cgroup {layout} at {}",
            procs,
            self.proc_root.display(),
            cgroup.display()
        ))
    }

    /// Thread ids of process `pid` (`/proc/PID/task`), ascending.
    pub fn threads(&self, pid: u32) -> io::Result<Vec<u32>> {
        let mut tids: Vec<u32> =
            std::fs::read_dir(self.proc_root.join(pid.to_string()).join("task"))?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
        tids.sort_unstable();
        Ok(tids)
    }

    /// Thread `tid`'s allowed CPUs now, as cheaply as the root allows, for a caller that only
    /// compares it with the last value it read: one `sched_getaffinity(2)` on a live root, else
    /// the `status` file. The syscall does not check that `tid` is still a thread of `pid` (a
    /// reused tid reads as the new thread's): a caller that sees a difference re-reads the thread
    /// in full ([`Self::thread`]), which does.
    pub(crate) fn affinity(&self, pid: u32, tid: u32) -> Result<CpuSet, ProcError> {
        if self.live {
            return match syscall_affinity(tid) {
                Ok(set) => Ok(set),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    Err(ProcError::Gone { pid, tid })
                }
                Err(_) => self.task_affinity(&self.task_dir(pid, tid), pid, tid),
            };
        }
        self.task_affinity(&self.task_dir(pid, tid), pid, tid)
    }

    /// Whether thread `tid`'s allowed CPUs differ from `known` (a tick's check of the last pass's
    /// reading): one `sched_getaffinity(2)` compared in place on a live root (no allocation), else
    /// [`Self::affinity`]. An error (the thread is gone, say) counts as a difference: the caller
    /// re-reads the thread in full.
    pub(crate) fn affinity_differs(&self, pid: u32, tid: u32, known: &CpuSet) -> bool {
        if self.live {
            let mut words = [0u64; AFFINITY_WORDS];
            if let Ok(used) = syscall_affinity_words(tid, &mut words) {
                return !known.is_words(used);
            }
        }
        self.affinity(pid, tid).ok().as_ref() != Some(known)
    }

    /// The affinity of thread `tid` of `pid`, whose task directory is `task` and which the
    /// caller has checked is a thread of `pid` (the syscall takes any thread id): the syscall on
    /// the live `/proc`, else (or with a mask larger than its buffer) the `status` file.
    fn task_affinity(&self, task: &Path, pid: u32, tid: u32) -> Result<CpuSet, ProcError> {
        match self.live.then(|| syscall_affinity(tid)) {
            Some(Ok(set)) => Ok(set),
            Some(Err(e)) if e.raw_os_error() == Some(libc::ESRCH) => {
                Err(ProcError::Gone { pid, tid })
            }
            _ => self.status_affinity(&task.join("status"), pid, tid),
        }
    }

    /// Thread `tid`'s scheduling policy and real-time priority now (its `stat` fields 41 and 40),
    /// as [`ThreadState::policy`] and [`ThreadState::rt_priority`] hold them.
    pub(crate) fn sched(&self, pid: u32, tid: u32) -> Result<(Option<u32>, u32), ProcError> {
        let path = self.task_dir(pid, tid).join("stat");
        let stat = self.read_task_file(&path, pid, tid)?;
        let s = parse_stat(&stat).map_err(|reason| parse_err(&path, reason))?;
        Ok((s.policy, s.rt_priority))
    }

    /// Everything pinflow knows about thread `tid` of process `pid`.
    ///
    /// Returns [`ProcError::Gone`] when the thread exited before or while it was read. A missing `schedstat`
    /// (kernel without schedstats) gives zero times; a missing cgroup directory gives `cgroup_cpus: None`.
    pub fn thread(&self, pid: u32, tid: u32) -> Result<ThreadState, ProcError> {
        self.thread_cached(pid, tid, CpuTimes::Read, &mut PassCache::default())
    }

    /// [`Self::thread`] for one of many threads read together (a domain's): where the cgroup
    /// hierarchies are mounted and each cgroup's `cpuset.cpus` are read once per `cache`.
    /// With [`CpuTimes::Skip`], `schedstat` is not read and the times are 0.
    pub(crate) fn thread_cached(
        &self,
        pid: u32,
        tid: u32,
        times: CpuTimes,
        cache: &mut PassCache,
    ) -> Result<ThreadState, ProcError> {
        let task = self.task_dir(pid, tid);
        let gone = || ProcError::Gone { pid, tid };

        // `stat` first: reading it under /proc/PID/task proves TID is a thread of PID before the
        // affinity syscall, which takes any thread id.
        let stat_path = task.join("stat");
        let stat = self.read_task_file(&stat_path, pid, tid)?;
        let Stat {
            comm,
            last_cpu,
            flags,
            rt_priority,
            policy,
        } = parse_stat(&stat).map_err(|reason| parse_err(&stat_path, reason))?;
        let kernel_worker = is_kernel_worker(&comm, flags);

        let affinity = self.task_affinity(&task, pid, tid)?;

        let sched_path = task.join("schedstat");
        let (run_ns, wait_ns) = match times {
            CpuTimes::Skip => (0, 0),
            CpuTimes::Read => match self.read_task_file(&sched_path, pid, tid) {
                Ok(s) => parse_schedstat(&s).map_err(|reason| parse_err(&sched_path, reason))?,
                Err(ProcError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    (0, 0)
                }
                Err(e) => return Err(e),
            },
        };

        let cg_path = task.join("cgroup");
        let cgroup_file = self.read_task_file(&cg_path, pid, tid)?;
        let target = self
            .cpuset_target(&cgroup_file, cache)
            .map_err(|reason| parse_err(&cg_path, reason))?;
        let (cgroup, cgroup_cpus) = match target {
            None => (None, None),
            Some(t) => {
                let cpus = match cache.cpusets.get(&t.dir) {
                    Some(c) => c.clone(),
                    None => {
                        let c = read_cpuset(&t)?;
                        cache.cpusets.insert(t.dir.clone(), c.clone());
                        c
                    }
                };
                // The cgroup vanishes right after its last thread: tell "gone" apart from "no cgroup".
                if cpus.is_none() && !task.exists() {
                    return Err(gone());
                }
                (Some(t.cgroup), cpus)
            }
        };

        Ok(ThreadState {
            tid,
            comm,
            affinity,
            last_cpu,
            cgroup,
            cgroup_cpus,
            run_ns,
            wait_ns,
            kernel_worker,
            policy,
            rt_priority,
        })
    }

    /// The host's online CPUs (`<sys>/devices/system/cpu/online`).
    pub fn online_cpus(&self) -> Result<CpuSet, ProcError> {
        let path = self.sys_root.join("devices/system/cpu/online");
        let text = read_bounded(&path).map_err(|source| ProcError::Io {
            path: path.clone(),
            source,
        })?;
        text.parse()
            .map_err(|e: crate::model::cpuset::CpuSetError| parse_err(&path, e.to_string()))
    }

    /// The cgroupfs directories holding the cpuset files of cgroup `path` (as `/proc/…/cgroup`
    /// names it): in v1's cpuset hierarchy, the v2 root or `unified`, whichever exist.
    pub(crate) fn cpuset_dirs(&self, path: &str) -> Vec<PathBuf> {
        let Ok(rel) = relative(path) else {
            return Vec::new();
        };
        let root = self.sys_root.join("fs/cgroup");
        [root.join("cpuset"), root.clone(), root.join("unified")]
            .into_iter()
            .map(|r| r.join(&rel))
            .filter(|d| d.join("cpuset.cpus").exists() || d.join("cpuset.cpus.effective").exists())
            .collect()
    }

    fn task_dir(&self, pid: u32, tid: u32) -> PathBuf {
        self.proc_root
            .join(pid.to_string())
            .join("task")
            .join(tid.to_string())
    }

    /// Reads a file of a task directory, mapping "the thread exited" to [`ProcError::Gone`].
    fn read_task_file(&self, path: &Path, pid: u32, tid: u32) -> Result<String, ProcError> {
        // ESRCH: the file was opened but the task died; ENOENT: the task directory is gone.
        read_bounded(path).map_err(|source| self.task_error(path, pid, tid, source))
    }

    /// The affinity in the `status` file at `path` of thread `tid` of `pid`.
    fn status_affinity(&self, path: &Path, pid: u32, tid: u32) -> Result<CpuSet, ProcError> {
        let status = self.read_task_file(path, pid, tid)?;
        parse_affinity(&status).map_err(|reason| parse_err(path, reason))
    }

    /// Where the `cpuset.cpus` of a thread's cpuset cgroup lives, from its `/proc/…/cgroup` text.
    /// `Ok(None)` when the thread has no cpuset cgroup (neither a v1 cpuset line nor a v2 line).
    fn cpuset_target(
        &self,
        cgroup_file: &str,
        cache: &mut PassCache,
    ) -> Result<Option<CpusetTarget>, String> {
        let cgroup_root = self.sys_root.join("fs/cgroup");
        let mut v2_path = None;
        for line in cgroup_file.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(hier), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if hier == "0" && controllers.is_empty() {
                v2_path = Some(path);
                continue;
            }
            if !controllers.split(',').any(|c| c == "cpuset") {
                continue;
            }
            // cgroup v1 cpuset hierarchy: its own mount, or a combined one named after its controllers.
            let rel = relative(path)?;
            let mount = cache
                .roots
                .entry(controllers.to_string())
                .or_insert_with(|| {
                    [cgroup_root.join("cpuset"), cgroup_root.join(controllers)]
                        .into_iter()
                        .find(|m| m.is_dir())
                        .unwrap_or_else(|| cgroup_root.join("cpuset"))
                });
            return Ok(Some(CpusetTarget {
                cgroup: path.to_string(),
                dir: mount.join(rel),
                v2: false,
            }));
        }
        let Some(path) = v2_path else { return Ok(None) };
        let rel = relative(path)?;
        let root = cache.roots.entry(String::new()).or_insert_with(|| {
            let unified = cgroup_root.join("unified");
            if !cgroup_root.join("cgroup.controllers").exists()
                && unified.join("cgroup.controllers").exists()
            {
                unified
            } else {
                cgroup_root
            }
        });
        Ok(Some(CpusetTarget {
            cgroup: path.to_string(),
            dir: root.join(rel),
            v2: true,
        }))
    }
}

/// Whether [`HostFs::thread_cached`] reads a thread's CPU times (`schedstat`): only vCPU
/// threads' are used (`pinflow_vcpu_wait_seconds_total`), a third of a QEMU process's threads
/// and more are not vCPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CpuTimes {
    /// Read them.
    Read,
    /// Leave them 0.
    Skip,
}

/// What a pass over many threads reads once: the mount root of each cgroup hierarchy (by its
/// controllers; the unified one under ""), and each cpuset directory's CPUs.
#[derive(Debug, Default)]
pub(crate) struct PassCache {
    roots: HashMap<String, PathBuf>,
    cpusets: HashMap<PathBuf, Option<CpuSet>>,
}

/// A thread's cpuset cgroup: its path as the kernel names it and its directory under the sysfs root.
#[derive(Debug)]
struct CpusetTarget {
    cgroup: String,
    dir: PathBuf,
    v2: bool,
}

/// Reads `cpuset.cpus` (v2: `cpuset.cpus.effective` when empty). `Ok(None)` when the cgroup directory or
/// its cpuset files do not exist (cgroup removed, or the cpuset controller not enabled there).
fn read_cpuset(t: &CpusetTarget) -> Result<Option<CpuSet>, ProcError> {
    let read = |name: &str| -> Result<Option<CpuSet>, ProcError> {
        let path = t.dir.join(name);
        match read_bounded(&path) {
            Ok(s) if s.trim().is_empty() => Ok(None),
            Ok(s) => s
                .parse()
                .map(Some)
                .map_err(|e: crate::model::cpuset::CpuSetError| parse_err(&path, e.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ProcError::Io { path, source }),
        }
    };
    match read("cpuset.cpus")? {
        Some(c) => Ok(Some(c)),
        None if t.v2 => read("cpuset.cpus.effective"),
        None => Ok(None),
    }
}

/// A cgroup path from `/proc/…/cgroup` as a relative path that cannot leave its hierarchy's root.
fn relative(path: &str) -> Result<PathBuf, String> {
    let mut rel = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => rel.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("cgroup path {path:?} escapes its root"));
            }
        }
    }
    Ok(rel)
}

/// Whether `proc_root` is a procfs that shows this process's pid namespace: its `self` link
/// names our own pid (the host's procfs seen from a container without `hostPID` names the
/// host's pid for us; a fixture tree has no `self`).
fn shows_own_pid_namespace(proc_root: &Path) -> bool {
    std::fs::read_link(proc_root.join("self"))
        .ok()
        .and_then(|target| target.to_str()?.parse::<u32>().ok())
        == Some(std::process::id())
}

/// CPUs the kernel's affinity masks can name in [`syscall_affinity`]'s buffer.
const AFFINITY_WORDS: usize = 128;

/// Thread `tid`'s allowed CPUs from `sched_getaffinity(2)`: one syscall instead of opening,
/// reading and parsing `status` (~1.5 KiB). The kernel reports the mask restricted to active
/// CPUs, as the scheduler applies it (`status` also lists offline CPUs that stay in the mask).
fn syscall_affinity(tid: u32) -> io::Result<CpuSet> {
    let mut words = [0u64; AFFINITY_WORDS];
    let used = syscall_affinity_words(tid, &mut words)?;
    Ok(CpuSet::from_words(used.to_vec()))
}

/// [`syscall_affinity`] into `words`, without allocating: the words the kernel wrote.
#[allow(unsafe_code)] // sched_getaffinity has no safe wrapper in the workspace's crates.
fn syscall_affinity_words(tid: u32, words: &mut [u64; AFFINITY_WORDS]) -> io::Result<&[u64]> {
    let pid = libc::pid_t::try_from(tid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: the buffer is valid for writes of its whole size, which is what the kernel is told.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            pid,
            std::mem::size_of_val(words),
            words.as_mut_ptr(),
        )
    };
    // The raw syscall returns the number of bytes it wrote (the kernel's mask size).
    let written = usize::try_from(rc).map_err(|_| io::Error::last_os_error())?;
    Ok(words.get(..written.div_ceil(8)).unwrap_or(words))
}

/// `Cpus_allowed_list` from a `status` file (falling back to the `Cpus_allowed` hex mask).
fn parse_affinity(status: &str) -> Result<CpuSet, String> {
    let field = |key: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix(':'))
                .map(str::trim)
        })
    };
    if let Some(list) = field("Cpus_allowed_list") {
        return list
            .parse()
            .map_err(|e: crate::model::cpuset::CpuSetError| e.to_string());
    }
    if let Some(mask) = field("Cpus_allowed") {
        return CpuSet::from_hex_mask(mask).map_err(|e| e.to_string());
    }
    Err("no Cpus_allowed_list".into())
}

/// What pinflow takes from `/proc/PID/task/TID/stat`.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    comm: String,
    last_cpu: Option<u32>,
    flags: u32,
    rt_priority: u32,
    policy: Option<u32>,
}

/// Thread name, last CPU, flags and scheduling policy from a `stat` line. The name sits in
/// parentheses and may itself contain spaces and `)`, so fields are counted after the *last*
/// `)`. The last CPU is field 39 (`processor`), then `rt_priority` (40) and `policy` (41).
fn parse_stat(stat: &str) -> Result<Stat, String> {
    let open = stat.find('(').ok_or("no '(' before the thread name")?;
    let close = stat.rfind(')').ok_or("no ')' after the thread name")?;
    let comm = stat
        .get(open + 1..close)
        .ok_or("')' before '('")?
        .to_string();
    let rest = stat.get(close + 1..).unwrap_or("");
    // `rest` starts at field 3 (state), so field N is the (N-3)th.
    let last_cpu = match rest.split_whitespace().nth(39 - 3) {
        Some(v) => Some(
            v.parse::<u32>()
                .map_err(|_| format!("processor field {v:?} is not a CPU number"))?,
        ),
        None => None,
    };
    if rest.split_whitespace().next().is_none() {
        return Err("no fields after the thread name".into());
    }
    let flags = match rest.split_whitespace().nth(9 - 3) {
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| format!("flags field {v:?} is not a number"))?,
        None => 0,
    };
    let field = |n: usize, what: &str| -> Result<Option<u32>, String> {
        rest.split_whitespace()
            .nth(n - 3)
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| format!("{what} field {v:?} is not a number"))
            })
            .transpose()
    };
    Ok(Stat {
        comm,
        last_cpu,
        flags,
        rt_priority: field(40, "rt_priority")?.unwrap_or(0),
        policy: field(41, "policy")?,
    })
}

/// `PF_KTHREAD` (include/linux/sched.h): a kernel thread (child of kthreadd, no mm of its own).
const PF_KTHREAD: u32 = 0x0020_0000;
/// `PF_USER_WORKER`: a kernel worker cloned into a user process (vhost workers, and since Linux
/// 6.13 KVM's `kvm-nx-lpage-recovery`).
const PF_USER_WORKER: u32 = 0x0000_4000;

/// Whether a thread runs kernel code rather than the process's own: `PF_KTHREAD`, or a
/// `PF_USER_WORKER` that is not a vhost worker (`vhost-PID`: it moves the guest's packets, as
/// the emulator's I/O threads do, so it stays counted with them).
fn is_kernel_worker(comm: &str, flags: u32) -> bool {
    flags & PF_KTHREAD != 0 || (flags & PF_USER_WORKER != 0 && !comm.starts_with("vhost-"))
}

/// Run and wait nanoseconds from `schedstat` (`run_ns wait_ns timeslices`).
fn parse_schedstat(s: &str) -> Result<(u64, u64), String> {
    let mut f = s.split_whitespace().map(str::parse::<u64>);
    match (f.next(), f.next()) {
        (Some(Ok(run)), Some(Ok(wait))) => Ok((run, wait)),
        _ => Err(format!("expected two numbers, found {:?}", s.trim())),
    }
}

fn parse_err(path: &Path, reason: impl Into<String>) -> ProcError {
    ProcError::Parse {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads at most [`MAX_FILE_BYTES`] of a small text file; longer files are an error.
fn read_bounded(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut buf = Vec::new();
    // read(2), not pread(2): a FIFO or another unseekable file reads too.
    read_small(&mut buf, |b| file.read(b))?;
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads a small text file whole through `read(buf)` (each call continues where the last one
/// ended), in as few calls as its size
/// allows: one for a file of less than [`FIRST_READ`] bytes. A read that returns less than it was
/// asked for is the end of the file: true of regular files and of every procfs and cgroupfs file
/// pinflow reads (the kernel makes their text whole for a read from offset 0, `single_open`), so
/// no read is spent on finding the end (`read_to_string` spends two: a probe and the end).
/// The text replaces what `buf` held (its allocation is reused).
pub(crate) fn read_small(
    buf: &mut Vec<u8>,
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
) -> io::Result<()> {
    buf.resize(buf.len().max(FIRST_READ), 0);
    let mut len = 0usize;
    loop {
        let n = match read(&mut buf[len..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        len += n;
        if len as u64 > MAX_FILE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {MAX_FILE_BYTES} bytes"),
            ));
        }
        if n == 0 || len < buf.len() {
            break;
        }
        buf.resize((buf.len() * 2).min(MAX_FILE_BYTES as usize + 1), 0);
    }
    buf.truncate(len);
    Ok(())
}

/// The first read of [`read_small`]: larger than any `status`, `stat`, `schedstat`, `cgroup` or
/// `cpuset.cpus` file.
const FIRST_READ: usize = 4096;

pub(crate) mod cgroup_watch;
pub(crate) mod kept_status;
mod numa;

#[cfg(test)]
mod tests;
