//! The measurement behind two dependency choices: pinflow's hand-written readers
//! (`sources::procfs::HostFs`, `sources::rtnl::dump_links`) against the `procfs` and `rtnetlink` crates
//! doing the same work. Not part of the daemon; the crates are dev-dependencies for this file only.
//!
//! ```text
//! cargo build --release -p pinflow --example crate_choice
//! sudo target/release/examples/crate_choice procfs [--threads 500] [--passes 20]
//! sudo target/release/examples/crate_choice rtnl   [--links 200]   [--passes 200]
//! ```
//!
//! `procfs`: reads, for every thread of every process on the host, for every thread of every `qemu*`
//! process, and for a child process this example starts with `--threads` parked threads, what
//! `HostFs::thread` reads (status `Cpus_allowed_list`, stat name/last CPU/flags, schedstat, the task's
//! `cgroup` file and its cpuset cgroup's `cpuset.cpus`), once with `HostFs` and once with `procfs` 0.17
//! (`Process::new_with_root`, `tasks`, `Task::status`/`stat`/`schedstat`/`read::<ProcessCGroups>`; the
//! cgroupfs read is done by hand in both, `procfs` has nothing for it). Passes alternate between the two.
//! Then it checks how each reacts to a thread that exited and to malformed files under a custom root.
//!
//! `rtnl`: unshares a fresh network namespace (gone when the process exits, with its links), creates
//! `--links` veth ends (half of them enslaved to a bridge, so the controller attribute is present) with
//! `ip -batch`, then dumps every link: as the datapath poller does today (a fresh raw socket per dump),
//! and with `rtnetlink` 0.24 driven from a blocking thread (its own current-thread runtime; or the
//! connection task on a 2-worker runtime and `Handle::block_on` from the poller thread; or a new
//! connection per dump).
//!
//! Prints the median and minimum time per pass, and heap allocations per pass (a counting allocator).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)] // A measurement harness: a counting allocator, libc calls.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pinflow::model::cpuset::CpuSet;
use pinflow::sources::procfs::{HostFs, ProcError};
use pinflow::sources::rtnl::{Link, dump_links, link_of};

/// Counts heap allocations (calls and bytes) so each variant's allocation cost can be printed.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

type Res<T> = Result<T, String>;

/// One variant's samples: wall time and allocations of each pass.
#[derive(Default)]
struct Samples {
    times: Vec<Duration>,
    allocs: Vec<u64>,
    bytes: Vec<u64>,
}

impl Samples {
    /// Runs `f` once, recording its time and allocations; returns its result.
    fn run<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let (a0, b0) = (
            ALLOCS.load(Ordering::Relaxed),
            ALLOC_BYTES.load(Ordering::Relaxed),
        );
        let t = Instant::now();
        let out = black_box(f());
        self.times.push(t.elapsed());
        self.allocs.push(ALLOCS.load(Ordering::Relaxed) - a0);
        self.bytes.push(ALLOC_BYTES.load(Ordering::Relaxed) - b0);
        out
    }

    fn median<T: Ord + Copy>(v: &[T]) -> Option<T> {
        let mut s = v.to_vec();
        s.sort_unstable();
        s.get(s.len() / 2).copied()
    }

    /// `| variant | median | min | per unit | allocs/unit | bytes/unit |` (a Markdown table row).
    fn row(&self, name: &str, units: usize) -> String {
        let med = Self::median(&self.times).unwrap_or_default();
        let min = self.times.iter().min().copied().unwrap_or_default();
        let u = units.max(1) as f64;
        let allocs = Self::median(&self.allocs).unwrap_or_default() as f64;
        let bytes = Self::median(&self.bytes).unwrap_or_default() as f64;
        format!(
            "| {name} | {:.3} ms | {:.3} ms | {:.2} µs | {:.1} | {:.0} |",
            med.as_secs_f64() * 1e3,
            min.as_secs_f64() * 1e3,
            med.as_secs_f64() * 1e6 / u,
            allocs / u,
            bytes / u,
        )
    }
}

fn flag(args: &[String], name: &str, default: usize) -> Res<usize> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .ok_or(format!("{name} needs a value"))?
            .parse()
            .map_err(|e| format!("{name}: {e}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("procfs") => bench_procfs(&args),
        Some("rtnl") => bench_rtnl(&args),
        Some("park") => park(&args),
        _ => Err(
            "usage: crate_choice procfs [--threads N] [--passes N] | rtnl [--links N] [--passes N]"
                .into(),
        ),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crate_choice: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Child mode: starts `--threads` threads that sleep, prints `ready`, exits when stdin closes.
fn park(args: &[String]) -> Res<()> {
    let n = flag(args, "--threads", 500)?;
    for i in 0..n {
        std::thread::Builder::new()
            .name(format!("parked-{i}"))
            .stack_size(64 * 1024)
            .spawn(|| {
                loop {
                    std::thread::park();
                }
            })
            .map_err(|e| format!("spawn thread {i}: {e}"))?;
    }
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// procfs

/// What both readers produce for one thread; compared to check they read the same thing.
#[derive(Debug, PartialEq, Eq)]
struct Row {
    comm: String,
    affinity: CpuSet,
    cgroup: Option<String>,
    cgroup_cpus: Option<CpuSet>,
}

/// Process ids under `/proc`, with their `comm`.
fn processes() -> Res<Vec<(u32, String)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))? {
        let Ok(e) = e else { continue };
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        out.push((pid, comm.trim().to_string()));
    }
    Ok(out)
}

/// One pass with `HostFs`: list each process's threads, read each thread. Returns rows and errors.
fn pass_hostfs(fs: &HostFs, pids: &[u32]) -> (Vec<(u32, Row)>, usize) {
    let mut rows = Vec::new();
    let mut errors = 0;
    for &pid in pids {
        let Ok(tids) = fs.threads(pid) else {
            errors += 1;
            continue;
        };
        for tid in tids {
            match fs.thread(pid, tid) {
                Ok(t) => rows.push((
                    tid,
                    Row {
                        comm: t.comm,
                        affinity: t.affinity,
                        cgroup: t.cgroup,
                        cgroup_cpus: t.cgroup_cpus,
                    },
                )),
                Err(_) => errors += 1,
            }
        }
    }
    (rows, errors)
}

/// One pass with the `procfs` crate, plus the cgroupfs read it has no API for.
fn pass_procfs(proc_root: &Path, sys_root: &Path, pids: &[u32]) -> (Vec<(u32, Row)>, usize) {
    let mut rows = Vec::new();
    let mut errors = 0;
    for &pid in pids {
        let Ok(p) = procfs::process::Process::new_with_root(proc_root.join(pid.to_string())) else {
            errors += 1;
            continue;
        };
        let Ok(tasks) = p.tasks() else {
            errors += 1;
            continue;
        };
        for task in tasks {
            match procfs_thread(sys_root, task) {
                Ok(r) => rows.push(r),
                Err(_) => errors += 1,
            }
        }
    }
    (rows, errors)
}

fn procfs_thread(
    sys_root: &Path,
    task: procfs::ProcResult<procfs::process::Task>,
) -> procfs::ProcResult<(u32, Row)> {
    let task = task?;
    let status = task.status()?;
    let affinity: CpuSet = status
        .cpus_allowed_list
        .unwrap_or_default()
        .into_iter()
        .flat_map(|(a, b)| a..=b)
        .collect();
    let stat = task.stat()?;
    black_box((stat.processor, stat.flags));
    let sched = task.schedstat()?;
    black_box((sched.sum_exec_runtime, sched.run_delay));
    let cgroups: procfs::ProcessCGroups = task.read("cgroup")?;
    let (cgroup, cgroup_cpus) = match cpuset_dir(sys_root, &cgroups) {
        None => (None, None),
        Some((path, dir, v2)) => {
            let read = |name: &str| {
                std::fs::read_to_string(dir.join(name))
                    .ok()
                    .and_then(|s| s.trim().parse::<CpuSet>().ok())
            };
            let cpus = read("cpuset.cpus").or_else(|| {
                if v2 {
                    read("cpuset.cpus.effective")
                } else {
                    None
                }
            });
            (Some(path), cpus)
        }
    };
    Ok((
        task.tid as u32,
        Row {
            comm: stat.comm,
            affinity,
            cgroup,
            cgroup_cpus,
        },
    ))
}

/// The cpuset cgroup of a `ProcessCGroups`: path, directory, whether v2 (same rules as `HostFs`).
fn cpuset_dir(
    sys_root: &Path,
    cgroups: &procfs::ProcessCGroups,
) -> Option<(String, PathBuf, bool)> {
    let root = sys_root.join("fs/cgroup");
    let rel = |p: &str| PathBuf::from(p.trim_start_matches('/'));
    if let Some(c) = cgroups
        .0
        .iter()
        .find(|c| c.controllers.iter().any(|k| k == "cpuset"))
    {
        let mount = [root.join("cpuset"), root.join(c.controllers.join(","))]
            .into_iter()
            .find(|m| m.is_dir())
            .unwrap_or_else(|| root.join("cpuset"));
        return Some((c.pathname.clone(), mount.join(rel(&c.pathname)), false));
    }
    let c = cgroups
        .0
        .iter()
        .find(|c| c.hierarchy == 0 && c.controllers.is_empty())?;
    let v2root = if !root.join("cgroup.controllers").exists()
        && root.join("unified/cgroup.controllers").exists()
    {
        root.join("unified")
    } else {
        root
    };
    Some((c.pathname.clone(), v2root.join(rel(&c.pathname)), true))
}

fn bench_procfs(args: &[String]) -> Res<()> {
    let threads = flag(args, "--threads", 500)?;
    let passes = flag(args, "--passes", 20)?.max(1);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["park", "--threads", &threads.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start the parked child: {e}"))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
    }
    if line.trim() != "ready" {
        return Err(format!("parked child said {line:?}"));
    }
    let res = measure_procfs(child.id(), passes);
    drop(child.stdin.take());
    let _ = child.wait();
    res?;
    gaps_procfs()
}

fn measure_procfs(child: u32, passes: usize) -> Res<()> {
    let fs = HostFs::default();
    let (proc_root, sys_root) = (PathBuf::from("/proc"), PathBuf::from("/sys"));
    let procs = processes()?;
    let me = std::process::id();
    let all: Vec<u32> = procs.iter().map(|p| p.0).filter(|&p| p != me).collect();
    let qemu: Vec<u32> = procs
        .iter()
        .filter(|p| p.1.starts_with("qemu"))
        .map(|p| p.0)
        .collect();
    println!(
        "procfs 0.17.0 (default-features = false) vs pinflow HostFs; {passes} passes each, alternating\n"
    );
    println!(
        "| case | reader | median/pass | min/pass | per thread | allocs/thread | bytes allocated/thread |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (case, pids) in [
        ("every process on the host", all),
        ("qemu processes", qemu),
        ("synthetic process", vec![child]),
    ] {
        if pids.is_empty() {
            println!("| {case} | (none running) | | | | | |");
            continue;
        }
        let (mut h, mut p) = (Samples::default(), Samples::default());
        // Warm-up and equality check on the same threads.
        let (hr, he) = pass_hostfs(&fs, &pids);
        let (pr, pe) = pass_procfs(&proc_root, &sys_root, &pids);
        let mut pr_sorted = pr;
        pr_sorted.sort_by_key(|r| r.0);
        let mut hr_sorted = hr;
        hr_sorted.sort_by_key(|r| r.0);
        let mut differ = 0;
        for (tid, row) in &hr_sorted {
            let other = pr_sorted.iter().find(|r| r.0 == *tid).map(|r| &r.1);
            if other != Some(row) {
                differ += 1;
                eprintln!("thread {tid}: HostFs {row:?}, procfs {other:?}");
            }
        }
        let n = hr_sorted.len();
        for _ in 0..passes {
            h.run(|| pass_hostfs(&fs, &pids));
            p.run(|| pass_procfs(&proc_root, &sys_root, &pids));
        }
        let case = format!("{case} ({} pids, {n} threads)", pids.len());
        println!("{}", h.row(&format!("{case} | HostFs"), n));
        println!("{}", p.row(&format!("{case} | procfs"), n));
        if differ > 0 || he > 0 || pe > 0 {
            println!(
                "|  | note: {differ} thread(s) read differently, errors HostFs {he} / procfs {pe} (threads that came and went?) | | | | | |"
            );
        }
    }
    Ok(())
}

/// What each reader does with a thread that exited and with malformed files under a custom root.
fn gaps_procfs() -> Res<()> {
    println!("\nBehaviour checks (HostFs vs procfs 0.17):");
    // 1. A thread that exited.
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let _ = tx.send(unsafe { libc::gettid() } as u32);
        let _ = go_rx.recv();
    });
    let tid = rx.recv().map_err(|e| e.to_string())?;
    let me = std::process::id();
    let task = procfs::process::Process::new_with_root(PathBuf::from(format!("/proc/{me}")))
        .and_then(|p| p.task_from_tid(tid as i32))
        .map_err(|e| e.to_string())?;
    let _ = go_tx.send(());
    let _ = t.join();
    let fs = HostFs::default();
    let hostfs_gone = match fs.thread(me, tid) {
        Err(ProcError::Gone { .. }) => "ProcError::Gone".to_string(),
        other => format!("{other:?}"),
    };
    let procfs_gone = match task.status() {
        Ok(_) => "Ok (read a dead thread?)".to_string(),
        Err(e) => format!("{e:?}"),
    };
    println!("- exited thread: HostFs -> {hostfs_gone}; procfs Task::status -> {procfs_gone}");

    // 2. Malformed files under a fixture root (what --proc-root points at in a container or a test).
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    for (what, file, content) in [
        ("stat with nothing after the name", "stat", "4242 (x)"),
        ("stat with no pid before the name", "stat", "(x) S 1 1 1"),
        (
            "status with a garbled Cpus_allowed_list",
            "status",
            "Name:\tx\nState:\tS\nTgid:\t4242\nPid:\t4242\nPPid:\t1\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t64\nGroups:\t\nVmPeak:\t1 kB\nThreads:\t1\nSigQ:\t0/1\nSigPnd:\t0\nShdPnd:\t0\nSigBlk:\t0\nSigIgn:\t0\nSigCgt:\t0\nCapInh:\t0\nCapPrm:\t0\nCapEff:\t0\nCapBnd:\t0\nCpus_allowed:\t3\nCpus_allowed_list:\tnot-a-list\nvoluntary_ctxt_switches:\t1\nnonvoluntary_ctxt_switches:\t1\n",
        ),
    ] {
        let task_dir = dir.path().join("proc/4242/task/4242");
        std::fs::create_dir_all(&task_dir).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir.path().join("sys/fs/cgroup")).map_err(|e| e.to_string())?;
        let good_stat = "4242 (x) S 1 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let good_status = "Name:\tx\nCpus_allowed_list:\t0-1\n";
        for (name, body) in [
            ("stat", good_stat),
            ("status", good_status),
            ("schedstat", "1 2 3\n"),
            ("cgroup", "0::/\n"),
        ] {
            let body = if name == file { content } else { body };
            std::fs::write(task_dir.join(name), body).map_err(|e| e.to_string())?;
        }
        let fs = HostFs::new(dir.path().join("proc"), dir.path().join("sys"));
        let h = match fs.thread(4242, 4242) {
            Ok(t) => format!("Ok(affinity {})", t.affinity),
            Err(e) => format!("Err({e})"),
        };
        let root = dir.path().join("proc/4242");
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let p = catch_unwind(AssertUnwindSafe(|| {
            let task =
                procfs::process::Process::new_with_root(root.clone())?.task_from_tid(4242)?;
            if file == "stat" {
                task.stat().map(|s| format!("Ok(comm {})", s.comm))
            } else {
                task.status()
                    .map(|s| format!("Ok(cpus_allowed_list {:?})", s.cpus_allowed_list))
            }
        }));
        std::panic::set_hook(hook);
        let p = match p {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => format!("Err({e})"),
            Err(_) => "panic (caught)".into(),
        };
        println!("- {what}: HostFs -> {h}; procfs -> {p}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// rtnetlink

fn sorted(mut v: Vec<Link>) -> Vec<Link> {
    v.sort_by_key(|l| l.ifindex);
    v
}

async fn rtnetlink_dump(handle: &rtnetlink::Handle) -> Result<Vec<Link>, rtnetlink::Error> {
    use futures_util::TryStreamExt;
    let mut links = Vec::new();
    let mut s = std::pin::pin!(handle.link().get().execute());
    while let Some(m) = s.try_next().await? {
        links.push(link_of(&m));
    }
    Ok(links)
}

fn bench_rtnl(args: &[String]) -> Res<()> {
    let links = flag(args, "--links", 200)?;
    let passes = flag(args, "--passes", 200)?.max(1);
    // A private network namespace: its links go away with this process.
    // SAFETY: no other thread exists yet; unshare only changes this thread's namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNET): {} (run as root)",
            std::io::Error::last_os_error()
        ));
    }
    let mut batch = String::from("link add pfbr0 type bridge\n");
    for i in 0..links / 2 {
        batch.push_str(&format!("link add pfv{i} type veth peer name pfv{i}p\n"));
        batch.push_str(&format!("link set pfv{i} master pfbr0\n"));
    }
    let mut ip = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ip: {e}"))?;
    if let Some(mut i) = ip.stdin.take() {
        i.write_all(batch.as_bytes()).map_err(|e| e.to_string())?;
    }
    let st = ip.wait().map_err(|e| e.to_string())?;
    if !st.success() {
        return Err(format!("ip -batch failed: {st}"));
    }

    let today = sorted(dump_links().map_err(|e| e.to_string())?);
    let n = today.len();

    // rtnetlink, set-up cost: a current-thread runtime and a connection, as the poller would hold them.
    let mut setup = Samples::default();
    let mut held = None;
    for _ in 0..20 {
        held = Some(setup.run(|| -> Res<_> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| e.to_string())?;
            let (conn, handle) = rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
                Ok::<_, String>((tokio::spawn(conn), handle))
            })?;
            Ok((rt, conn, handle))
        })?);
    }
    let (rt, _conn, handle) = held.ok_or("no runtime")?;
    let via_crate = sorted(
        rt.block_on(rtnetlink_dump(&handle))
            .map_err(|e| e.to_string())?,
    );
    if via_crate != today {
        return Err(format!(
            "rtnetlink and dump_links disagree: {} vs {} links",
            via_crate.len(),
            today.len()
        ));
    }

    // A multi-thread runtime (the daemon's shape: 2 workers) owning the connection task; the poller
    // (this plain thread) calls Handle::block_on.
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()
        .map_err(|e| e.to_string())?;
    let mt_handle = mt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok::<_, String>(handle)
    })?;

    let (mut a, mut b, mut c, mut d) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    let mut errors = 0usize;
    for _ in 0..passes {
        errors += a.run(|| dump_links().map(|v| v.len()).is_err()) as usize;
        errors += b.run(|| {
            rt.block_on(rtnetlink_dump(&handle))
                .map(|v| v.len())
                .is_err()
        }) as usize;
        errors += c.run(|| {
            mt.handle()
                .block_on(rtnetlink_dump(&mt_handle))
                .map(|v| v.len())
                .is_err()
        }) as usize;
        errors += d.run(|| {
            rt.block_on(async {
                let (conn, h, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
                let task = tokio::spawn(conn);
                let r = rtnetlink_dump(&h).await.map_err(|e| e.to_string());
                drop(h);
                task.abort();
                r.map(|v| v.len())
            })
            .is_err()
        }) as usize;
    }
    println!(
        "link dump of {n} links (rtnetlink 0.24.0 on netlink-packet-route 0.34); {passes} passes each, alternating\n"
    );
    println!("| reader | median/dump | min/dump | per link | allocs/link | bytes allocated/link |");
    println!("|---|---|---|---|---|---|");
    println!(
        "{}",
        a.row("today: sources::rtnl::dump_links (raw socket per dump)", n)
    );
    println!(
        "{}",
        b.row(
            "rtnetlink, connection held, current-thread runtime in the poller thread",
            n
        )
    );
    println!(
        "{}",
        c.row(
            "rtnetlink, connection on a 2-worker runtime, Handle::block_on from the poller",
            n
        )
    );
    println!(
        "{}",
        d.row(
            "rtnetlink, new connection per dump (current-thread runtime)",
            n
        )
    );
    println!(
        "\nrtnetlink one-time set-up (current-thread runtime + connection): {}",
        setup.row("set-up", 1)
    );
    if errors > 0 {
        return Err(format!("{errors} dump(s) failed"));
    }
    Ok(())
}
