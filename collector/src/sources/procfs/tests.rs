//! Tests on fixture trees (`tests/fixtures/hostfs/*`): `v1-libvirt` was captured from a running libvirt 9.0
//! domain on a hybrid (v1 cpuset + v2 unified) host without systemd; `v1-systemd` and `v2-systemd` follow the
//! machined layouts. Plus the live `/proc` for a thread that really vanished.

use super::*;

fn hostfs(tree: &str) -> HostFs {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hostfs")
        .join(tree);
    HostFs::new(root.join("proc"), root.join("sys"))
}

fn cpus(s: &str) -> CpuSet {
    s.parse().expect("valid cpu list")
}

#[allow(
    clippy::too_many_arguments,
    reason = "one line per expected thread reads best in the tests"
)]
fn ts(
    tid: u32,
    comm: &str,
    affinity: &str,
    last_cpu: u32,
    cgroup: &str,
    cgroup_cpus: &str,
    run_ns: u64,
    wait_ns: u64,
) -> ThreadState {
    ThreadState {
        tid,
        comm: comm.into(),
        affinity: cpus(affinity),
        last_cpu: Some(last_cpu),
        cgroup: Some(cgroup.into()),
        cgroup_cpus: Some(cpus(cgroup_cpus)),
        run_ns,
        wait_ns,
        kernel_worker: false,
        policy: Some(0),
        rt_priority: 0,
    }
}

#[test]
fn v1_libvirt_without_systemd_captured() {
    let fs = hostfs("v1-libvirt");
    assert_eq!(fs.threads(11411).expect("threads"), [11411, 11435, 11436]);
    assert_eq!(fs.online_cpus().expect("online"), cpus("0-1"));
    let g = "/machine/qemu-5-fx-nova.libvirt-qemu";
    assert_eq!(
        fs.thread(11411, 11411).expect("emulator"),
        ts(
            11411,
            "qemu-system-x86",
            "0-1",
            0,
            &format!("{g}/emulator"),
            "0-1",
            69690332,
            29798156
        )
    );
    // The unified hierarchy (hybrid host) carries a decoy cpuset.cpus.effective of 0-1 for vcpu0: v1 wins.
    assert_eq!(
        fs.thread(11411, 11435).expect("vcpu0"),
        ts(
            11435,
            "CPU 0/KVM",
            "0",
            0,
            &format!("{g}/vcpu0"),
            "0",
            18148376596,
            23734040313
        )
    );
    assert_eq!(
        fs.thread(11411, 11436).expect("vcpu1"),
        ts(
            11436,
            "CPU 1/KVM",
            "1",
            1,
            &format!("{g}/vcpu1"),
            "1",
            2010781,
            3639985
        )
    );
}

#[test]
fn v1_systemd_layout_with_drift() {
    let fs = hostfs("v1-systemd");
    assert_eq!(fs.threads(4242).expect("threads"), [4242, 4260, 4261]);
    assert_eq!(fs.online_cpus().expect("online"), cpus("0-3"));
    let g = r"/machine.slice/machine-qemu\x2d1\x2dinstance\x2d0000002a.scope/libvirt";
    assert_eq!(
        fs.thread(4242, 4242).expect("emulator"),
        ts(
            4242,
            "qemu-system-x86",
            "0-1",
            0,
            &format!("{g}/emulator"),
            "0-1",
            52000000,
            1000000
        )
    );
    assert_eq!(
        fs.thread(4242, 4260).expect("vcpu0"),
        ts(
            4260,
            "CPU 0/KVM",
            "2",
            2,
            &format!("{g}/vcpu0"),
            "2",
            900000000,
            2000000
        )
    );
    // vcpu1's cgroup was widened to 1-3 and the thread moved to CPU 1 behind libvirt's back.
    assert_eq!(
        fs.thread(4242, 4261).expect("vcpu1"),
        ts(
            4261,
            "CPU 1/KVM",
            "1",
            1,
            &format!("{g}/vcpu1"),
            "1-3",
            800000000,
            700000000
        )
    );
}

#[test]
fn v2_systemd_layout_with_effective_fallback() {
    let fs = hostfs("v2-systemd");
    assert_eq!(fs.threads(5151).expect("threads"), [5151, 5170, 5171]);
    assert_eq!(fs.online_cpus().expect("online"), cpus("0-7"));
    let g = r"/machine.slice/machine-qemu\x2d3\x2dinstance\x2d0000002b.scope/libvirt";
    assert_eq!(
        fs.thread(5151, 5151).expect("emulator"),
        ts(
            5151,
            "qemu-system-x86",
            "0-1",
            1,
            &format!("{g}/emulator"),
            "0-1",
            61000000,
            3000000
        )
    );
    assert_eq!(
        fs.thread(5151, 5170).expect("vcpu0"),
        ts(
            5170,
            "CPU 0/KVM",
            "4",
            4,
            &format!("{g}/vcpu0"),
            "4",
            1200000000,
            4000000
        )
    );
    // Empty cpuset.cpus: the effective set applies.
    assert_eq!(
        fs.thread(5151, 5171).expect("vcpu1"),
        ts(
            5171,
            "CPU 1/KVM",
            "0-7",
            6,
            &format!("{g}/vcpu1"),
            "0-7",
            1100000000,
            90000000
        )
    );
}

#[test]
fn missing_thread_is_gone() {
    let fs = hostfs("v1-libvirt");
    assert!(matches!(
        fs.thread(11411, 99999),
        Err(ProcError::Gone {
            pid: 11411,
            tid: 99999
        })
    ));
    assert!(matches!(
        fs.thread(1, 1),
        Err(ProcError::Gone { pid: 1, tid: 1 })
    ));
    assert_eq!(
        fs.threads(1).expect_err("no such pid").kind(),
        io::ErrorKind::NotFound
    );
}

/// The calling thread's id, from the `/proc/thread-self` link (`PID/task/TID`).
fn current_tid() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").expect("thread-self");
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .expect("tid")
}

#[test]
fn really_vanished_thread_is_gone() {
    let pid = std::process::id();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let tid = current_tid();
        tx.send(tid).ok();
    });
    let tid = rx.recv().expect("tid");
    handle.join().expect("join");
    let fs = HostFs::default();
    // The kernel reaps the task right after the join; allow it a moment.
    let mut last = None;
    for _ in 0..50 {
        match fs.thread(pid, tid) {
            Err(ProcError::Gone { .. }) => return,
            other => last = Some(other),
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("thread {tid} still readable: {last:?}");
}

#[test]
fn live_thread_of_this_process() {
    let pid = std::process::id();
    let fs = HostFs::default();
    let tid = current_tid();
    // Run time is accounted when the thread is descheduled: make sure that happened once.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let t = fs.thread(pid, tid).expect("own thread");
    assert_eq!(t.tid, tid);
    assert!(!t.affinity.is_empty());
    assert!(t.last_cpu.is_some());
    assert!(t.run_ns > 0);
    assert!(fs.threads(pid).expect("threads").contains(&tid));
    assert!(!fs.online_cpus().expect("online").is_empty());
}

/// On a live procfs (ours, under any path) the affinity comes from `sched_getaffinity(2)`: it
/// agrees with `status`, and follows a change made with `sched_setaffinity(2)`; a tree that only
/// links to our process (no `self` naming us, as the host's procfs seen from another pid
/// namespace) is read from the file.
#[test]
fn live_affinity_by_syscall_matches_status() {
    let pid = std::process::id();
    let live = HostFs::default();
    let elsewhere = HostFs::new(PathBuf::from("/proc/self/.."), PathBuf::from("/sys"));
    let tmp = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(format!("/proc/{pid}"), tmp.path().join(pid.to_string()))
        .expect("symlink");
    let files = HostFs::new(tmp.path().to_path_buf(), PathBuf::from("/sys"));
    assert!(live.live && elsewhere.live && !files.live);
    let tid = current_tid();
    let from_status = |fs: &HostFs| {
        let text = std::fs::read_to_string(fs.task_dir(pid, tid).join("status")).expect("status");
        parse_affinity(&text).expect("affinity")
    };
    let before = live.thread(pid, tid).expect("own thread").affinity;
    assert_eq!(before, from_status(&live));
    assert_eq!(files.thread(pid, tid).expect("own thread").affinity, before);
    let Some(first) = before.iter().next() else {
        panic!("empty affinity");
    };
    // A tick's in-place check, on the syscall (live) and on the status file.
    for fs in [&live, &files] {
        assert!(!fs.affinity_differs(pid, tid, &before));
    }
    set_affinity(&CpuSet::single(first));
    let narrowed = live.thread(pid, tid).expect("own thread").affinity;
    let differs = [&live, &files].map(|fs| fs.affinity_differs(pid, tid, &before));
    let same = [&live, &files].map(|fs| fs.affinity_differs(pid, tid, &narrowed));
    set_affinity(&before);
    assert_eq!(narrowed, CpuSet::single(first));
    if before != narrowed {
        assert_eq!(differs, [true, true]);
    }
    assert_eq!(same, [false, false]);
    assert!(
        live.affinity_differs(pid, u32::MAX, &before),
        "a gone thread differs"
    );
    assert_eq!(
        syscall_affinity(u32::MAX).map_err(|e| e.raw_os_error()),
        Err(Some(libc::ESRCH))
    );
}

/// The kernel fact events mode relies on to skip the per-tick affinity read of a thread whose
/// cpuset cgroup holds one CPU (`detect::pinning::affinity_deciders`): in a one-CPU cpuset,
/// `sched_setaffinity(2)` to every CPU leaves the affinity at that CPU, and to another CPU fails
/// with `EINVAL`. Runs on the host's cgroup v1 cpuset hierarchy (root; the testbed's layout).
#[test]
fn a_one_cpu_cpuset_holds_the_affinity_whatever_sched_setaffinity_asks() {
    let root = Path::new("/sys/fs/cgroup/cpuset");
    assert!(
        root.join("cpuset.cpus").exists(),
        "needs the cgroup v1 cpuset hierarchy at {} (as root)",
        root.display()
    );
    let online = HostFs::default().online_cpus().expect("online");
    let cpus: Vec<u32> = online.iter().collect();
    assert!(cpus.len() >= 2, "needs two online CPUs, has {online}");
    let dir = root.join(format!("pinflow-test-held-{}", std::process::id()));
    std::fs::create_dir(&dir).expect("mkdir cpuset cgroup");
    let held = cpus[cpus.len() - 1];
    let mems = std::fs::read_to_string(root.join("cpuset.mems")).expect("mems");
    std::fs::write(dir.join("cpuset.mems"), mems.trim()).expect("cpuset.mems");
    std::fs::write(dir.join("cpuset.cpus"), held.to_string()).expect("cpuset.cpus");
    let tid = current_tid();
    let pid = std::process::id();
    let before = HostFs::default().affinity(pid, tid).expect("affinity");
    std::fs::write(dir.join("tasks"), tid.to_string()).expect("move into the cgroup");
    let fs = HostFs::default();
    let moved = fs.affinity(pid, tid).expect("affinity");
    let widened = try_set_affinity(&online);
    let after_widen = fs.affinity(pid, tid).expect("affinity");
    let elsewhere = try_set_affinity(&CpuSet::single(cpus[0]));
    let after_elsewhere = fs.affinity(pid, tid).expect("affinity");
    // Back to the root cpuset (every CPU), then the thread's own affinity as it was.
    std::fs::write(root.join("tasks"), tid.to_string()).expect("move back");
    set_affinity(&before);
    std::fs::remove_dir(&dir).expect("rmdir");
    assert_eq!(moved, CpuSet::single(held), "the cpuset sets the affinity");
    assert!(
        widened.is_ok(),
        "asking for every CPU succeeds: {widened:?}"
    );
    assert_eq!(after_widen, CpuSet::single(held), "but stays in the cpuset");
    assert_eq!(
        elsewhere.map_err(|e| e.raw_os_error()),
        Err(Some(libc::EINVAL)),
        "a CPU outside the cpuset is refused"
    );
    assert_eq!(after_elsewhere, CpuSet::single(held));
}

/// Sets this thread's affinity (test helper).
fn set_affinity(set: &CpuSet) {
    let rc = try_set_affinity(set);
    assert!(rc.is_ok(), "sched_setaffinity: {rc:?}");
}

/// `sched_setaffinity(2)` of this thread to `set` (test helper).
#[allow(unsafe_code)] // sched_setaffinity has no safe wrapper in the workspace's crates.
fn try_set_affinity(set: &CpuSet) -> io::Result<()> {
    let mut words = [0u64; AFFINITY_WORDS];
    for cpu in set.iter() {
        words[(cpu / 64) as usize] |= 1 << (cpu % 64);
    }
    // SAFETY: the buffer is valid for reads of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setaffinity,
            0,
            std::mem::size_of_val(&words),
            words.as_ptr(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Builds a tree in a tempdir: one thread with the given `cgroup` file and cgroupfs files.
fn tree(cgroup: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, HostFs) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let task = tmp.path().join("proc/7/task/8");
    std::fs::create_dir_all(&task).expect("mkdir");
    let write = |p: &Path, c: &str| {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(p, c).expect("write");
    };
    write(
        &task.join("status"),
        "Name:\tx\nCpus_allowed:\tf\nCpus_allowed_list:\t0-3\n",
    );
    write(
        &task.join("stat"),
        "8 (a) b) (c) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 -1 3\n",
    );
    write(&task.join("schedstat"), "10 20 3\n");
    write(&task.join("cgroup"), cgroup);
    for (p, c) in files {
        write(&tmp.path().join("sys").join(p), c);
    }
    let fs = HostFs::new(tmp.path().join("proc"), tmp.path().join("sys"));
    (tmp, fs)
}

#[test]
fn comm_with_parens_and_spaces() {
    let (_t, fs) = tree("0::/\n", &[]);
    let t = fs.thread(7, 8).expect("thread");
    assert_eq!(t.comm, "a) b) (c");
    assert_eq!(t.last_cpu, Some(3));
    assert_eq!((t.run_ns, t.wait_ns), (10, 20));
    // v2 root without a cpuset controller: cgroup known, no cpuset.
    assert_eq!(t.cgroup.as_deref(), Some("/"));
    assert_eq!(t.cgroup_cpus, None);
}

#[test]
fn combined_v1_mount() {
    let (_t, fs) = tree(
        "4:cpuset,cpu:/machine/d.libvirt-qemu/vcpu0\n0::/\n",
        &[(
            "fs/cgroup/cpuset,cpu/machine/d.libvirt-qemu/vcpu0/cpuset.cpus",
            "2\n",
        )],
    );
    let t = fs.thread(7, 8).expect("thread");
    assert_eq!(t.cgroup.as_deref(), Some("/machine/d.libvirt-qemu/vcpu0"));
    assert_eq!(t.cgroup_cpus, Some(cpus("2")));
}

#[test]
fn v2_only_at_unified_mount() {
    let (_t, fs) = tree(
        "0::/machine/d/vcpu0\n",
        &[
            ("fs/cgroup/unified/cgroup.controllers", "cpuset cpu\n"),
            ("fs/cgroup/unified/machine/d/vcpu0/cpuset.cpus", "1\n"),
        ],
    );
    assert_eq!(
        fs.thread(7, 8).expect("thread").cgroup_cpus,
        Some(cpus("1"))
    );
}

#[test]
fn hostile_cgroup_path_is_refused() {
    let (_t, fs) = tree("3:cpuset:/../../etc\n", &[]);
    assert!(matches!(fs.thread(7, 8), Err(ProcError::Parse { .. })));
}

#[test]
fn garbage_is_a_parse_error_not_a_panic() {
    let (tmp, fs) = tree("0::/\n", &[]);
    let task = tmp.path().join("proc/7/task/8");
    std::fs::write(task.join("stat"), "8 no parens").expect("write");
    assert!(matches!(fs.thread(7, 8), Err(ProcError::Parse { .. })));
    std::fs::write(task.join("stat"), "8 (x) S 1").expect("write");
    assert_eq!(fs.thread(7, 8).expect("short stat").last_cpu, None);
    std::fs::write(task.join("schedstat"), "x y").expect("write");
    assert!(matches!(fs.thread(7, 8), Err(ProcError::Parse { .. })));
    std::fs::remove_file(task.join("schedstat")).expect("rm");
    assert_eq!(fs.thread(7, 8).expect("no schedstat").run_ns, 0);
    std::fs::write(task.join("status"), "Name:\tx\n").expect("write");
    assert!(matches!(fs.thread(7, 8), Err(ProcError::Parse { .. })));
    std::fs::write(task.join("status"), "x".repeat(MAX_FILE_BYTES as usize + 1)).expect("write");
    assert!(matches!(fs.thread(7, 8), Err(ProcError::Io { .. })));
}

#[test]
fn kernel_workers_are_told_apart_by_their_stat_flags() {
    // /proc/TID/stat lines (field 9 is `flags`) with the flags Linux 6.18 showed for the threads
    // of a QEMU/KVM process on the testbed: its main thread, a vCPU thread, KVM's NX huge-page
    // recovery worker (comm truncated to 15 bytes; PF_USER_WORKER set), plus a vhost worker and
    // a kernel thread proper (PF_KTHREAD).
    let line = |comm: &str, flags: u32| {
        let mut f = format!("4242 ({comm}) S 1 4242 4242 0 -1 {flags} 0 0 0");
        for _ in 13..=52 {
            f.push_str(" 0");
        }
        f
    };
    for (comm, flags, kernel) in [
        ("qemu-system-x86", 0x0040_0140, false),
        ("CPU 0/KVM", 0x0040_0040, false),
        (
            "kvm-nx-lpage-recovery",
            0x0020_8040 & !0x0020_0000 | 0x4000,
            true,
        ),
        ("vhost-4242", 0x0000_4040, false),
        ("kworker/0:1", 0x0420_8060, true),
    ] {
        let s = parse_stat(&line(comm, flags)).expect("parses");
        assert_eq!((s.comm.as_str(), s.flags), (comm, flags));
        assert_eq!(is_kernel_worker(&s.comm, s.flags), kernel, "{comm}");
    }
    assert!(parse_stat("1 (x) S 1 1 1 0 -1 notanumber").is_err());
}

#[test]
fn scheduling_policy_and_priority_come_from_stat_fields_40_and_41() {
    // The stat line of a vCPU thread under <vcpusched scheduler='fifo' priority='3'>: fields
    // 39 (processor) 1, 40 (rt_priority) 3, 41 (policy) 1 = SCHED_FIFO.
    let mut line = "4243 (CPU 0/KVM) R 1 4242 4242 0 -1 4194368".to_string();
    for _ in 10..=38 {
        line.push_str(" 0");
    }
    line.push_str(" 1 3 1");
    for _ in 42..=52 {
        line.push_str(" 0");
    }
    let s = parse_stat(&line).expect("parses");
    assert_eq!((s.last_cpu, s.rt_priority, s.policy), (Some(1), 3, Some(1)));
    // An old kernel's shorter line: no policy, no priority.
    let short = parse_stat("1 (x) S 1 1 1 0 -1 0 0").expect("parses");
    assert_eq!((short.rt_priority, short.policy), (0, None));
    assert!(parse_stat(&line.replace(" 1 3 1 ", " 1 3 x ")).is_err());
}

/// A kept `status` file ([`kept_status::KeptStatus`]) of a real thread, read through a procfs
/// root that only links to our process (as the host's procfs seen from another pid namespace):
/// each read is the thread's affinity now (procfs makes the text again for a read from offset
/// 0), one file stays open per thread, and once the thread exits its file reads as gone.
#[test]
fn kept_status_files_follow_a_real_thread_until_it_exits() {
    let pid = std::process::id();
    let tmp = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(format!("/proc/{pid}"), tmp.path().join(pid.to_string()))
        .expect("symlink");
    let files = HostFs::new(tmp.path().to_path_buf(), PathBuf::from("/sys"));
    assert!(!files.live);
    let (to_thread, orders) = std::sync::mpsc::channel::<Option<CpuSet>>();
    let (to_test, replies) = std::sync::mpsc::channel::<u32>();
    let handle = std::thread::spawn(move || {
        to_test.send(current_tid()).ok();
        while let Ok(Some(set)) = orders.recv() {
            set_affinity(&set);
            to_test.send(0).ok();
        }
    });
    let tid = replies.recv().expect("tid");
    let mut kept = kept_status::KeptStatus::new();
    kept.begin_round();
    let all = kept.affinity(&files, pid, tid).expect("affinity").clone();
    assert_eq!(
        all,
        HostFs::default().thread(pid, tid).expect("thread").affinity
    );
    assert_eq!(kept.len(), 1);
    let Some(first) = all.iter().next() else {
        panic!("empty affinity");
    };
    to_thread.send(Some(CpuSet::single(first))).expect("order");
    replies.recv().expect("narrowed");
    assert_eq!(
        *kept.affinity(&files, pid, tid).expect("affinity"),
        CpuSet::single(first),
        "the kept file still shows the old affinity"
    );
    assert_eq!(kept.len(), 1, "a second read opened another file");
    kept.end_round();
    assert_eq!(kept.len(), 1, "a file read in the round was closed");
    to_thread.send(None).expect("order");
    handle.join().expect("join");
    let mut last = None;
    for _ in 0..50 {
        kept.begin_round();
        match kept.affinity(&files, pid, tid) {
            Err(ProcError::Gone { .. }) => {
                assert_eq!(kept.len(), 0, "the file of a gone thread stays open");
                return;
            }
            other => last = Some(other),
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("thread {tid} still readable through its kept file: {last:?}");
}

/// Files of threads no longer checked are closed at the end of a round.
#[test]
fn kept_status_files_of_unchecked_threads_are_closed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (tid, list) in [(8, "1-2"), (9, "3")] {
        let task = tmp.path().join(format!("proc/7/task/{tid}"));
        std::fs::create_dir_all(&task).expect("mkdir");
        std::fs::write(
            task.join("status"),
            format!("Name:\tCPU/KVM\nCpus_allowed_list:\t{list}\n"),
        )
        .expect("write");
    }
    let fs = HostFs::new(tmp.path().join("proc"), tmp.path().join("sys"));
    let mut kept = kept_status::KeptStatus::new();
    kept.begin_round();
    assert_eq!(*kept.affinity(&fs, 7, 8).expect("8"), cpus("1-2"));
    assert_eq!(*kept.affinity(&fs, 7, 9).expect("9"), cpus("3"));
    kept.end_round();
    assert_eq!(kept.len(), 2);
    kept.begin_round();
    assert_eq!(*kept.affinity(&fs, 7, 9).expect("9"), cpus("3"));
    kept.end_round();
    assert_eq!(kept.len(), 1);
    kept.begin_round();
    assert!(matches!(
        kept.affinity(&fs, 7, 10),
        Err(ProcError::Gone { pid: 7, tid: 10 })
    ));
}
