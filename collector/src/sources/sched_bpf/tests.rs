//! Tests of the placement probe: the embedded object (unprivileged) and the real kernel (root).
#![allow(unsafe_code)] // Tests start threads with libc calls to pin and name them.

use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;

/// Privileged tests share CPUs 0 and 1 and tracefs; run them one at a time.
static PRIVILEGED: Mutex<()> = Mutex::new(());

#[test]
fn embedded_object_has_programs_and_maps() {
    let data = ebpf_object();
    if data.is_empty() {
        println!("SKIP: built with PINFLOW_SKIP_EBPF=1, no eBPF object embedded");
        return;
    }
    let obj = aya_obj::Object::parse(data).expect("embedded eBPF object parses");
    for mode in AttachMode::ALL {
        assert!(
            obj.programs.contains_key(mode.program_name()),
            "program {} missing",
            mode.program_name()
        );
    }
    for map in [
        FILTER_MAP,
        WATCH_MAP,
        STATS_MAP,
        DEDICATED_MAP,
        STOLEN_MAP,
        THREADS_MAP,
        INTRUDERS_MAP,
        OFFPIN_MAP,
    ] {
        assert!(
            obj.maps.contains_key(map),
            "map {map} missing; maps: {:?}",
            obj.maps.keys().collect::<Vec<_>>()
        );
    }
    assert!(
        obj.maps.keys().any(|k| k.contains("rodata")),
        "no .rodata for the offset globals"
    );
}

#[test]
fn probe_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SchedProbe>();
    send_sync::<SchedProbeError>();
}

#[test]
fn attach_mode_display() {
    let names: Vec<String> = AttachMode::ALL.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["tp_btf", "raw_tp", "tracepoint"]);
}

/// Loads in `mode`, or returns `None` after printing SKIP when the kernel denies BPF
/// (a failure instead when `PINFLOW_REQUIRE_PRIVILEGED=1`).
fn load_or_skip(mode: Option<AttachMode>) -> Option<SchedProbe> {
    let result = match mode {
        Some(m) => SchedProbe::load_with(m),
        None => SchedProbe::load(),
    };
    match result {
        Ok(p) => Some(p),
        Err(e @ (SchedProbeError::PermissionDenied(_) | SchedProbeError::NotBuilt)) => {
            if std::env::var_os("PINFLOW_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
                panic!("PINFLOW_REQUIRE_PRIVILEGED=1 but: {e}");
            }
            println!("SKIP: {e}");
            None
        }
        Err(e) => panic!("loading the probe ({mode:?}) failed: {e}"),
    }
}

/// The classic tracepoint needs tracefs; as root, mount it for the test if it is missing.
fn ensure_tracefs() {
    if tracefs::format_path("sched", "sched_switch").is_ok() {
        return;
    }
    // SAFETY: plain mount(2) with valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    println!("tracefs was not mounted; mount(/sys/kernel/tracing) returned {rc}");
}

fn pin_self(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn spin(d: Duration) {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < d {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

/// Waits (up to 5 s) until thread `tid` of this process sleeps, then 10 ms more, so that it
/// has been switched out.
fn wait_asleep(tid: u32) {
    let stat = format!("/proc/self/task/{tid}/stat");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(&stat).unwrap_or_default();
        let state = text
            .rsplit_once(')')
            .and_then(|(_, r)| r.trim_start().chars().next());
        if state == Some('S') {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(10));
}

/// Watches a thread pinned to CPU 0 with pin set {0}, spins, moves it to CPU 1, spins again:
/// time on and off the pin set and at least one migration must show up; unwatch removes it.
fn placement_scenario(mut probe: SchedProbe) {
    let online = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    assert!(online >= 2, "needs two CPUs");
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        assert!(pin_self(0), "sched_setaffinity(0)");
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        tid_tx.send(tid).expect("send tid");
        go_rx.recv().expect("go");
        spin(Duration::from_millis(200));
        assert!(pin_self(1), "sched_setaffinity(1)");
        spin(Duration::from_millis(200));
        // Sleep so the last slice on CPU 1 is switched out (and accounted) while still watched.
        std::thread::sleep(Duration::from_millis(20));
        done_tx.send(()).expect("done");
        go_rx.recv().expect("finish");
    });
    let tid = tid_rx.recv().expect("worker tid");
    // Watch only once the worker blocks on `go`: a thread watched while it runs has no switch-in
    // yet, so its running slice is not charged, and with `go` already sent it would never block
    // before the CPU 0 spin (seen in CI: 2 ms on-pin of a 200 ms spin).
    wait_asleep(tid);
    probe
        .watch(tid, &"0".parse().expect("cpu list"))
        .expect("watch");
    // Re-watching keeps counters and is allowed.
    probe
        .watch(tid, &"0".parse().expect("cpu list"))
        .expect("re-watch");
    let offpin_before = probe.offpin_slices().expect("off-pin counter");
    go_tx.send(()).expect("go");
    done_rx.recv().expect("worker spun on CPU 0 and CPU 1");
    // The worker still runs between its `done` and blocking on `finish` (long on a loaded host):
    // its last slice is charged when it is switched out. Read once it sleeps.
    wait_asleep(tid);
    let offpin_after = probe.offpin_slices().expect("off-pin counter");
    let p = probe
        .placement(tid)
        .expect("read placement")
        .expect("watched thread has stats");
    // The batch read of the whole map agrees with the per-thread read, across several batches
    // (more entries than its first buffer holds).
    let others: Vec<u32> = (0..300).map(|i| 4_000_000 + i).collect();
    for t in &others {
        probe
            .watch(*t, &"1".parse().expect("cpu list"))
            .expect("watch");
    }
    let all = probe.placements().expect("batch read");
    assert_eq!(all.len(), 1 + others.len(), "every watched thread");
    let b = all[&tid];
    assert_eq!(
        (
            b.on_pin_ns,
            b.off_pin_ns,
            b.migrations,
            b.switches,
            b.last_cpu
        ),
        (
            p.on_pin_ns,
            p.off_pin_ns,
            p.migrations,
            p.switches,
            p.last_cpu
        ),
        "batch and single reads of a sleeping thread"
    );
    assert!(others.iter().all(|t| all[t].switches == 0));
    let fd = aya::maps::IterableMap::map(&probe.stats).fd().as_fd();
    let mut small: Vec<u32> = super::batch::lookup_all::<u32, PlacementStats>(fd, 1)
        .expect("batches of 65")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    small.sort_unstable();
    let mut want: Vec<u32> = all.keys().copied().collect();
    want.sort_unstable();
    assert_eq!(small, want, "small batches read every entry once");
    for t in &others {
        probe.unwatch(*t).expect("unwatch");
    }
    go_tx.send(()).expect("finish");
    worker.join().expect("worker");
    println!(
        "mode {}: {p:?}; stats {:?}",
        probe.mode(),
        probe.program_stats()
    );
    // 200 ms of wall time each; a loaded machine may give the spinner only a share of it.
    assert!(p.on_pin_ns > 10_000_000, "on-pin time on CPU 0: {p:?}");
    assert!(p.off_pin_ns > 10_000_000, "off-pin time on CPU 1: {p:?}");
    assert!(
        offpin_after > offpin_before,
        "the off-pin slice counter moved: {offpin_before} -> {offpin_after}"
    );
    assert!(p.migrations >= 1, "migration 0 -> 1: {p:?}");
    assert!(p.switches >= 2, "switch-ins: {p:?}");
    assert_eq!(p.last_cpu, 1, "{p:?}");
    probe.unwatch(tid).expect("unwatch");
    assert_eq!(probe.placement(tid).expect("read after unwatch"), None);
    assert!(
        matches!(probe.stats.get(&tid, 0), Err(MapError::KeyNotFound)),
        "stats entry removed"
    );
    probe.unwatch(tid).expect("second unwatch is a no-op");
}

#[test]
fn privileged_default_load_prefers_tp_btf() {
    let _guard = PRIVILEGED.lock().unwrap_or_else(|e| e.into_inner());
    let Some(probe) = load_or_skip(None) else {
        return;
    };
    assert_eq!(
        probe.mode(),
        AttachMode::TpBtf,
        "tp_btf works on this kernel"
    );
    assert!(probe.stats_enabled(), "BPF stats enabled");
    std::thread::sleep(Duration::from_millis(50));
    let stats = probe.program_stats();
    assert_eq!(stats.len(), 1);
    assert!(stats[0].run_count > 0, "sched_switch ran: {stats:?}");
}

#[test]
fn privileged_placement_tp_btf() {
    let _guard = PRIVILEGED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = load_or_skip(Some(AttachMode::TpBtf)) {
        placement_scenario(p);
    }
}

#[test]
fn privileged_placement_raw_tp() {
    let _guard = PRIVILEGED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = load_or_skip(Some(AttachMode::RawTp)) {
        placement_scenario(p);
    }
}

#[test]
fn privileged_placement_tracepoint() {
    let _guard = PRIVILEGED.lock().unwrap_or_else(|e| e.into_inner());
    ensure_tracefs();
    if let Some(p) = load_or_skip(Some(AttachMode::Tracepoint)) {
        placement_scenario(p);
    }
}

#[test]
fn privileged_watch_validates_input_and_filter_collisions() {
    let _guard = PRIVILEGED.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut probe) = load_or_skip(None) else {
        return;
    };
    let cpus: CpuSet = "0-1".parse().expect("cpu list");
    assert!(matches!(
        probe.watch(0, &cpus),
        Err(SchedProbeError::InvalidTid(0))
    ));
    assert!(matches!(
        probe.watch(5, &CpuSet::new()),
        Err(SchedProbeError::EmptyPinSet(5))
    ));
    assert!(matches!(
        probe.watch(5, &CpuSet::single(MAX_CPUS as u32)),
        Err(SchedProbeError::CpuOutOfRange { cpu: 1024, .. })
    ));
    // Two tids sharing a filter bit: unwatching one keeps the other's bit.
    let (a, b) = (7u32, 7 + 0x10000);
    probe.watch(a, &cpus).expect("watch a");
    probe.watch(b, &cpus).expect("watch b");
    probe.unwatch(a).expect("unwatch a");
    let in_kernel = |probe: &SchedProbe| probe.filter.get(&0, 0).expect("filter entry");
    assert!(in_kernel(&probe).may_watch(b), "b's bit still set");
    probe.unwatch(b).expect("unwatch b");
    assert!(!in_kernel(&probe).may_watch(b), "bit cleared");
    assert_eq!(*probe.filter_value, in_kernel(&probe));
    assert_eq!(probe.watched().count(), 0);
}

/// Marks CPU 1 dedicated to a thread that only sleeps; a thread registered as another domain's
/// vCPU and a plain (host) thread, named `pf-intruder`, then spin on CPU 1: their run time shows
/// up under `other_vcpu` and `host`, and the intruder table names the host thread with its comm.
fn intrusion_scenario(mut probe: SchedProbe) {
    let spin_on_1 = |name: &'static std::ffi::CStr, ms: u64| {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // SAFETY: PR_SET_NAME with a NUL-terminated string of at most 16 bytes.
            unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() } as u32).expect("tid");
            go_rx.recv().expect("go");
            assert!(pin_self(1), "sched_setaffinity(1)");
            spin(Duration::from_millis(ms));
            // Switched out (and charged) before the test reads the counters.
            std::thread::sleep(Duration::from_millis(20));
        });
        (tid_rx.recv().expect("tid"), go_tx, t)
    };
    // SAFETY: gettid has no preconditions.
    let owner = unsafe { libc::gettid() } as u32;
    probe.set_dedicated(&HashMap::from([(
        1,
        CpuOwner {
            domain: 1,
            tid: owner,
        },
    )]));
    let before = probe.stolen(1).expect("stolen");
    let (vcpu, go_vcpu, t_vcpu) = spin_on_1(c"pf-other-vcpu", 150);
    assert_eq!(
        probe.set_domain_threads(&HashMap::from([(vcpu, (2, true))])),
        0
    );
    go_vcpu.send(()).expect("go");
    t_vcpu.join().expect("vcpu thread");
    let (host, go_host, t_host) = spin_on_1(c"pf-intruder", 150);
    go_host.send(()).expect("go");
    t_host.join().expect("host thread");
    let after = probe.stolen(1).expect("stolen");
    // Read in place (the mapped array), and the same counters as a bpf(2) lookup sees them.
    assert!(probe.stolen_view.is_some(), "{STOLEN_MAP} is mapped");
    let looked_up = probe.stolen.get(&1, 0).expect("lookup").ns;
    let later = probe.stolen(1).expect("stolen");
    for c in 0..after.len() {
        assert!(
            after[c] <= looked_up[c] && looked_up[c] <= later[c],
            "class {c}: mapped {after:?}, lookup {looked_up:?}, mapped {later:?}"
        );
    }
    let t = Instant::now();
    for cpu in 0..MAX_CPUS as u32 {
        let _ = probe.stolen(cpu);
    }
    let mapped_ns = t.elapsed().as_nanos() / MAX_CPUS as u128;
    let t = Instant::now();
    for cpu in 0..MAX_CPUS as u32 {
        let _ = probe.stolen.get(&cpu, 0);
    }
    let lookup_ns = t.elapsed().as_nanos() / MAX_CPUS as u128;
    println!("per-CPU read: mapped {mapped_ns} ns, bpf(2) lookup {lookup_ns} ns");
    let intruders = probe.intruders().expect("intruders");
    println!("mode {}: {before:?} -> {after:?}", probe.mode());
    let grew = |c: layout::IntruderClass| after[c as usize] - before[c as usize];
    assert!(
        grew(layout::IntruderClass::OtherVcpu) > 10_000_000,
        "other_vcpu: {after:?}"
    );
    assert!(
        grew(layout::IntruderClass::Host) > 10_000_000,
        "host: {after:?}"
    );
    let mine = intruders
        .iter()
        .find(|i| i.tid == host)
        .unwrap_or_else(|| panic!("pf-intruder {host} in {intruders:?}"));
    assert_eq!(mine.comm, "pf-intruder");
    assert_eq!(mine.class, layout::IntruderClass::Host);
    assert_eq!(mine.cpu, 1);
    assert!(mine.ns > 10_000_000, "{mine:?}");
    assert!(
        mine.ns <= grew(layout::IntruderClass::Host),
        "{mine:?} within the host class"
    );
    assert!(
        intruders.iter().all(|i| i.tid != owner),
        "the owner is never an intruder"
    );
    // Not dedicated any more: nothing is charged.
    assert_eq!(probe.set_dedicated(&HashMap::new()), 0);
    let frozen = probe.stolen(1).expect("stolen");
    let (_, go, t) = spin_on_1(c"pf-late", 50);
    go.send(()).expect("go");
    t.join().expect("late thread");
    assert_eq!(probe.stolen(1).expect("stolen"), frozen);
    assert!(probe.intruders().expect("intruders").is_empty());
}

#[test]
fn privileged_intrusions_tp_btf() {
    let _guard = PRIVILEGED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = load_or_skip(Some(AttachMode::TpBtf)) {
        intrusion_scenario(p);
    }
}

#[test]
fn privileged_intrusions_raw_tp() {
    let _guard = PRIVILEGED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = load_or_skip(Some(AttachMode::RawTp)) {
        intrusion_scenario(p);
    }
}

#[test]
fn privileged_intrusions_tracepoint() {
    let _guard = PRIVILEGED.lock().unwrap_or_else(|e| e.into_inner());
    ensure_tracefs();
    if let Some(p) = load_or_skip(Some(AttachMode::Tracepoint)) {
        intrusion_scenario(p);
    }
}
