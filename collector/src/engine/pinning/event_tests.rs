//! Events mode's wake-up handling on a copy of the captured `v1-libvirt` fixture tree (domain
//! `fx-nova`: QEMU 11411, `CPU 0/KVM` 11435 pinned to 0, `CPU 1/KVM` 11436 pinned to 1): a
//! thread event re-reads that thread only, a cpuset write re-reads the domain living in that
//! cgroup, an idle tick reads nothing, and the reconciliation runs when due or when events were
//! lost. Wake-ups are handed to [`PinningEngine::step`] as the event thread would.

use super::*;
use crate::model::pinning::Check;
use std::path::Path;

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

struct Fixture {
    tmp: tempfile::TempDir,
    engine: PinningEngine,
    /// The reading half of the cgroup watch (events mode).
    cgroup_reader: Option<CgroupWatch>,
}

const VCPU0: u32 = 11435;
const VCPU1: u32 = 11436;

impl Fixture {
    fn new(events: bool) -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        copy_tree(
            &fixtures.join("hostfs/v1-libvirt"),
            &tmp.path().join("host"),
        );
        let state = tmp.path().join("state");
        std::fs::create_dir(&state).expect("mkdir");
        for f in ["fx-nova.xml", "fx-nova.pid"] {
            std::fs::copy(
                fixtures.join("libvirt/run-libvirt-qemu").join(f),
                state.join(f),
            )
            .expect("copy");
        }
        let paths = HostPaths {
            proc_root: tmp.path().join("host/proc"),
            sys_root: tmp.path().join("host/sys"),
            libvirt_state_dir: state,
            ovs_run_dir: tmp.path().join("ovs"),
            nova_conf: None,
        };
        // The tests play the kernel's affinity events themselves (`threads(...)`); the default,
        // affinity checked on each tick, has a test of its own.
        let cfg = PinningConfig {
            ebpf: false,
            affinity_events: true,
            ..Default::default()
        };
        let mut engine = PinningEngine::new(
            cfg,
            &paths,
            None,
            Err("not in unit tests".into()),
            SharedState::default(),
        );
        let mut cgroup_reader = None;
        if events {
            let (reader, cgroups) = cgroup_watch::new().expect("inotify");
            engine.events = Some(EventState {
                probe: None,
                cgroups,
                lost: 0,
                dir_domains: HashMap::new(),
                dirs_of: HashMap::new(),
            });
            engine.passes.mode = PinningMode::Events;
            cgroup_reader = Some(reader);
        }
        // As when the libvirt state dir is under inotify.
        engine.watching.store(true, Ordering::Relaxed);
        engine.full_pass();
        Fixture {
            tmp,
            engine,
            cgroup_reader,
        }
    }

    fn task_file(&self, tid: u32, name: &str) -> PathBuf {
        self.tmp
            .path()
            .join(format!("host/proc/11411/task/{tid}/{name}"))
    }

    fn cpuset_file(&self, leaf: &str) -> PathBuf {
        self.tmp.path().join(format!(
            "host/sys/fs/cgroup/cpuset/machine/qemu-5-fx-nova.libvirt-qemu/{leaf}/cpuset.cpus"
        ))
    }

    /// Rewrites a thread's `Cpus_allowed_list`.
    fn set_affinity(&self, tid: u32, cpus: &str) {
        let path = self.task_file(tid, "status");
        let text = std::fs::read_to_string(&path).expect("status");
        let new: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with("Cpus_allowed_list:") {
                    format!("Cpus_allowed_list:\t{cpus}")
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(&path, new.join("\n") + "\n").expect("write status");
    }

    /// `(vcpu, check)` of every current drift.
    fn drifts(&self) -> Vec<(String, Check)> {
        let r = self.engine.state.pinning.get();
        let mut v: Vec<_> = r
            .domains
            .iter()
            .flat_map(|d| d.drifts.iter().map(|x| (x.vcpu.clone(), x.check)))
            .collect();
        v.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
        v
    }

    fn passes(&self) -> (u64, u64, u64) {
        let p = &self.engine.state.pinning.get().passes;
        (p.full, p.targeted, p.thread_reads)
    }
}

fn threads(tids: &[u32]) -> Todo {
    Todo {
        threads: tids.iter().copied().collect(),
        ..Default::default()
    }
}

fn tick() -> Todo {
    Todo {
        tick: true,
        ..Default::default()
    }
}

#[test]
fn a_thread_event_rereads_that_thread_only() {
    let mut f = Fixture::new(true);
    assert_eq!(f.passes(), (1, 0, 3), "one full pass read the 3 threads");
    assert_eq!(f.drifts(), vec![]);
    // Both vCPUs drift in procfs, the kernel reports only vCPU 0.
    f.set_affinity(VCPU0, "1");
    f.set_affinity(VCPU1, "0");
    f.engine.step(threads(&[VCPU0]));
    assert_eq!(f.passes(), (1, 1, 4));
    assert_eq!(f.drifts(), vec![("0".to_string(), Check::Affinity)]);
    // An idle tick reads nothing and publishes nothing new.
    f.engine.step(tick());
    assert_eq!(f.passes(), (1, 1, 4));
    // The reconciliation finds what no event reported, once due.
    f.engine.last_full = Instant::now() - f.engine.cfg.reconcile() - Duration::from_secs(1);
    f.engine.step(tick());
    assert_eq!(f.passes(), (2, 1, 7));
    assert_eq!(
        f.drifts(),
        vec![
            ("0".to_string(), Check::Affinity),
            ("1".to_string(), Check::Affinity)
        ]
    );
}

#[test]
fn a_cpuset_write_rereads_the_domain_living_in_that_cgroup() {
    let mut f = Fixture::new(true);
    let watched = f.engine.events.as_ref().map_or(0, |e| e.cgroups.len());
    // emulator, vcpu0, vcpu1 and their parent (plus the decoy v2 directory of vcpu0).
    assert!(watched >= 4, "{watched} cgroup directories watched");
    std::fs::write(f.cpuset_file("vcpu1"), "0-1").expect("write");
    let reader = f.cgroup_reader.as_mut().expect("events mode");
    let changes = reader.drain().expect("drain");
    assert_eq!(changes.changed.len(), 1, "{changes:?}");
    f.engine.step(Todo {
        cgroups: changes.changed,
        ..Default::default()
    });
    // One targeted pass re-read the domain's 3 threads.
    assert_eq!(f.passes(), (1, 1, 6));
    assert_eq!(f.drifts(), vec![("1".to_string(), Check::Cpuset)]);
}

#[test]
fn an_unknown_thread_of_a_domain_rereads_that_domain_and_strangers_are_ignored() {
    let mut f = Fixture::new(true);
    // A thread started after the last pass: its domain is re-read (and the thread found).
    copy_tree(
        &f.task_file(VCPU1, ""),
        &f.tmp.path().join("host/proc/11411/task/11500"),
    );
    f.engine.step(threads(&[11500]));
    assert_eq!(f.passes(), (1, 1, 7));
    assert!(f.engine.tid_domain.contains_key(&11500));
    // A thread of no domain: a targeted pass that reads nothing.
    f.engine.step(threads(&[4_000_000]));
    assert_eq!(f.passes(), (1, 2, 7));
}

#[test]
fn libvirt_changes_reread_changed_domains_lost_events_make_full_passes_and_polling_polls() {
    let mut f = Fixture::new(true);
    let libvirt = || Todo {
        libvirt: true,
        ..Default::default()
    };
    // A wake-up without a changed status file reads nothing.
    f.engine.step(libvirt());
    assert_eq!(f.passes(), (1, 0, 3));
    // A re-pinned domain (libvirt rewrote its status) is re-read, in a targeted pass.
    let xml = f.tmp.path().join("state/fx-nova.xml");
    let text = std::fs::read_to_string(&xml).expect("xml");
    let repinned = text.replace(
        "<vcpupin vcpu='1' cpuset='1'/>",
        "<vcpupin vcpu='1' cpuset='0'/>",
    );
    assert_ne!(text, repinned);
    std::fs::write(&xml, repinned).expect("write");
    f.engine.step(libvirt());
    assert_eq!(f.passes(), (1, 1, 6));
    assert_eq!(
        f.drifts(),
        vec![
            ("1".to_string(), Check::Affinity),
            ("1".to_string(), Check::Cpuset)
        ]
    );
    let mut lost = Todo::default();
    lost.add(Wake::Lost("test".into()));
    f.engine.step(lost);
    assert_eq!(f.passes(), (2, 1, 9));
    // Without an inotify watch on the libvirt state dir every tick rescans, as in polling mode.
    f.engine.watching.store(false, Ordering::Relaxed);
    f.engine.step(tick());
    assert_eq!(f.passes(), (3, 1, 12));

    let mut p = Fixture::new(false);
    assert_eq!(p.engine.passes.mode, PinningMode::Polling);
    p.set_affinity(VCPU0, "1");
    p.engine.step(tick());
    assert_eq!(p.passes(), (2, 0, 6));
    assert_eq!(p.drifts(), vec![("0".to_string(), Check::Affinity)]);
}

#[test]
fn wakes_coalesce() {
    let mut t = Todo::default();
    t.add(Wake::Threads(vec![3, 1]));
    t.add(Wake::Threads(vec![1, 2]));
    t.add(Wake::Libvirt);
    assert_eq!(t.threads, BTreeSet::from([1, 2, 3]));
    assert!(t.libvirt && !t.full && !t.tick);
}

#[test]
fn without_affinity_events_a_tick_finds_the_moved_thread_and_rereads_it_only() {
    let mut f = Fixture::new(true);
    f.engine.cfg.affinity_events = false;
    // vCPU 1's cpuset widened to 0-1 (the pin stays 1), so its affinity can move within it.
    std::fs::write(f.cpuset_file("vcpu1"), "0-1\n").expect("write");
    f.set_affinity(VCPU1, "0-1");
    f.engine.step(Todo {
        full: true,
        ..Default::default()
    });
    assert_eq!(f.passes(), (2, 0, 6));
    let cpuset_drift = ("1".to_string(), Check::Cpuset);
    let affinity_drift = ("1".to_string(), Check::Affinity);
    assert_eq!(
        f.drifts(),
        vec![affinity_drift.clone(), cpuset_drift.clone()]
    );
    // A full pass that finds the same keeps the findings' version (no new encoding for scrapes).
    let version = |f: &Fixture| f.engine.state.pinning.get().findings_version;
    let found = version(&f);
    f.engine.step(Todo {
        full: true,
        ..Default::default()
    });
    assert_eq!((f.passes(), version(&f)), ((3, 0, 9), found));
    // An idle tick: the affinities are checked (no thread re-read), nothing is published.
    f.engine.step(tick());
    assert_eq!(f.passes(), (3, 0, 9));
    // vCPU 1 put back on its pCPU by hand: the next tick re-reads that thread alone.
    f.set_affinity(VCPU1, "1");
    f.engine.step(tick());
    assert_eq!(f.passes(), (3, 1, 10));
    assert_eq!(f.drifts(), vec![cpuset_drift]);
    assert_ne!(version(&f), found, "other findings, another version");
    f.engine.step(tick());
    assert_eq!(f.passes(), (3, 1, 10), "seen once, not on every tick");
    // vCPU 0's cpuset holds its one pCPU: the kernel keeps its affinity there, so a tick does
    // not read it (this tree shows what no kernel would, an affinity outside the cpuset; the
    // kernel side is `a_one_cpu_cpuset_holds_the_affinity_whatever_sched_setaffinity_asks`).
    f.set_affinity(VCPU0, "1");
    f.engine.step(tick());
    assert_eq!(
        f.passes(),
        (3, 1, 10),
        "a thread held by its cpuset is not polled"
    );
}

#[test]
fn numa_placement_is_read_at_most_every_reconcile_interval_even_when_polling() {
    let mut f = Fixture::new(false);
    assert_eq!(f.engine.passes.mode, PinningMode::Polling);
    // fx-nova gets a strict binding to host node 0; the host turns out to have two nodes (CPU 1
    // on node 1) and the domain 400 MiB on node 1 — written after the first full pass.
    let xml = f.tmp.path().join("state/fx-nova.xml");
    let text = std::fs::read_to_string(&xml).expect("xml");
    let bound = text.replacen(
        "<cputune>",
        "<numatune><memory mode='strict' nodeset='0'/></numatune><cputune>",
        1,
    );
    assert_ne!(text, bound);
    std::fs::write(&xml, bound).expect("write");
    let sys = f.tmp.path().join("host/sys");
    for (node, cpus) in [(0, "0"), (1, "1")] {
        let dir = sys.join(format!("devices/system/node/node{node}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("cpulist"), cpus).expect("cpulist");
    }
    let mem = sys.join("fs/cgroup/memory/machine/qemu-5-fx-nova.libvirt-qemu");
    std::fs::create_dir_all(&mem).expect("mkdir");
    std::fs::write(
        mem.join("memory.numa_stat"),
        "total=102500 N0=100 N1=102400\n",
    )
    .expect("numa_stat");
    // Polling: every tick is a full pass, but the NUMA placement of a known domain is kept
    // until reconcile_seconds (60) have passed since it was read.
    f.engine.step(tick());
    f.engine.step(tick());
    assert_eq!(f.drifts(), vec![]);
    assert!(f.engine.state.pinning.get().numa_nodes.is_empty());
    f.engine.last_numa = Instant::now().checked_sub(Duration::from_secs(61));
    f.engine.step(tick());
    assert_eq!(
        f.drifts(),
        vec![
            ("1".to_string(), Check::Numa),
            ("memory".to_string(), Check::Numa)
        ]
    );
    let r = f.engine.state.pinning.get();
    assert_eq!(r.numa_nodes.len(), 2);
    // A targeted pass (a thread event) keeps the reading.
    drop(r);
    f.engine.step(threads(&[VCPU0]));
    assert_eq!(f.drifts().len(), 2);
}
