//! A synthetic host of real threads for `cargo xtask bench --only pinning`: many "domains"
//! without QEMU, whose threads and cgroups are the kernel's own, so that pinflow reads them the
//! way it reads a real hypervisor (the live `/proc`, `sched_getaffinity(2)`, the real cpuset
//! cgroupfs with its inotify events, the eBPF probes on real thread ids).
//!
//! Each domain is one `cargo xtask sleeper` process: a main thread, [`VCPUS`] threads named
//! `CPU N/KVM` and two helper threads, all parked. Each gets libvirt's cgroup v1 cpuset layout
//! (`machine/qemu-ID-NAME.libvirt-qemu/{emulator,vcpuN}`, the vCPU threads moved into their
//! `vcpuN`, which sets their affinity as libvirt does) and a status XML in a private libvirt state
//! directory naming its pid and vCPU thread ids. Half the domains pin each vCPU to one pCPU,
//! half float over all of them, as the real rows do. The fixture host of files
//! (`bench_pinning::FixtureHost`) measures a procfs root seen from another pid namespace; this
//! one measures the live path at a scale no testbed's real VMs reach.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// vCPU threads per domain.
pub const VCPUS: usize = 8;
/// Helper (non-vCPU) threads per domain besides the main thread.
const HELPERS: usize = 2;
/// Where libvirt's cgroup v1 cpuset hierarchy keeps domains.
const CPUSET_MACHINE: &str = "/sys/fs/cgroup/cpuset/machine";

/// The hidden `cargo xtask sleeper`: [`VCPUS`] vCPU-named threads and [`HELPERS`] helpers,
/// parked; prints `ready` once all exist, then waits to be killed.
pub fn sleeper() -> Result<()> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(VCPUS + HELPERS + 1));
    let names = (0..VCPUS)
        .map(|v| format!("CPU {v}/KVM"))
        .chain((0..HELPERS).map(|h| format!("worker{h}")));
    for name in names {
        let b = barrier.clone();
        std::thread::Builder::new().name(name).spawn(move || {
            b.wait();
            loop {
                std::thread::park();
            }
        })?;
    }
    barrier.wait();
    println!("ready");
    loop {
        std::thread::park();
    }
}

/// One domain of the host.
struct Domain {
    child: Child,
    scope: PathBuf,
}

/// The running synthetic host; dropping it kills the processes and removes the cgroups.
pub struct ThreadHost {
    state: tempfile::TempDir,
    domains: Vec<Domain>,
}

impl ThreadHost {
    /// Starts `domains` domains named `{prefix}th{i}` over the host's online pCPUs.
    pub fn start(domains: usize, prefix: &str, xml: impl Fn(&DomainXml) -> String) -> Result<Self> {
        if !Path::new(CPUSET_MACHINE).is_dir() {
            // libvirt makes it with its first domain; make it as libvirt does (the root's sets).
            let root = Path::new(CPUSET_MACHINE).parent().context("cpuset root")?;
            if !root.join("cpuset.cpus").is_file() {
                bail!("no cgroup v1 cpuset hierarchy at {}", root.display());
            }
            std::fs::create_dir_all(CPUSET_MACHINE)?;
            for f in ["cpuset.cpus", "cpuset.mems"] {
                std::fs::write(
                    Path::new(CPUSET_MACHINE).join(f),
                    std::fs::read_to_string(root.join(f))?.trim(),
                )?;
            }
        }
        let cpus = std::fs::read_to_string(format!("{CPUSET_MACHINE}/cpuset.cpus"))?;
        let mems = std::fs::read_to_string(format!("{CPUSET_MACHINE}/cpuset.mems"))?;
        let ncpus = crate::bench_pinning::host_cpus().max(1);
        let mut host = ThreadHost {
            state: tempfile::tempdir()?,
            domains: Vec::new(),
        };
        let exe = std::env::current_exe()?;
        for i in 0..domains {
            let name = format!("{prefix}th{i}");
            let id = 100_000 + i;
            let mut child = Command::new(&exe)
                .arg("sleeper")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("cannot start a sleeper")?;
            let mut line = String::new();
            if let Some(out) = child.stdout.take() {
                BufReader::new(out).read_line(&mut line)?;
            }
            if line.trim() != "ready" {
                let _ = child.kill();
                bail!("sleeper {i} did not start");
            }
            let pid = child.id();
            let scope =
                PathBuf::from(CPUSET_MACHINE).join(format!("qemu-{id}-{name}.libvirt-qemu"));
            host.domains.push(Domain {
                child,
                scope: scope.clone(),
            });
            let pinned = i % 2 == 0;
            let pin_of = |v: usize| {
                if pinned {
                    ((i * VCPUS + v) % ncpus).to_string()
                } else {
                    cpus.trim().to_string()
                }
            };
            let mut vcpu_tids = Vec::new();
            for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
                let tid: u32 = entry?.file_name().to_string_lossy().parse()?;
                let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                    .unwrap_or_default();
                if let Some(v) = comm
                    .trim()
                    .strip_prefix("CPU ")
                    .and_then(|r| r.strip_suffix("/KVM"))
                    .and_then(|v| v.parse::<usize>().ok())
                {
                    vcpu_tids.push((v, tid));
                }
            }
            vcpu_tids.sort_unstable();
            if vcpu_tids.len() != VCPUS {
                bail!("sleeper {pid} has {} vCPU threads", vcpu_tids.len());
            }
            let write = |dir: &Path, file: &str, text: &str| -> Result<()> {
                std::fs::write(dir.join(file), text)
                    .with_context(|| format!("{}/{file}", dir.display()))
            };
            for (leaf, set) in std::iter::once(("".to_string(), cpus.trim().to_string()))
                .chain(std::iter::once((
                    "emulator".to_string(),
                    cpus.trim().to_string(),
                )))
                .chain((0..VCPUS).map(|v| (format!("vcpu{v}"), pin_of(v))))
            {
                let dir = scope.join(&leaf);
                std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
                write(&dir, "cpuset.mems", mems.trim())?;
                write(&dir, "cpuset.cpus", &set)?;
            }
            write(&scope.join("emulator"), "cgroup.procs", &pid.to_string())?;
            for (v, tid) in &vcpu_tids {
                write(&scope.join(format!("vcpu{v}")), "tasks", &tid.to_string())?;
            }
            let spec = DomainXml {
                name: name.clone(),
                id,
                pid,
                vcpus: vcpu_tids
                    .iter()
                    .map(|(v, tid)| (*tid, pinned.then(|| pin_of(*v))))
                    .collect(),
                float: (!pinned).then(|| cpus.trim().to_string()),
                emulator: None,
            };
            std::fs::write(host.state.path().join(format!("{name}.xml")), xml(&spec))?;
            std::fs::write(
                host.state.path().join(format!("{name}.pid")),
                pid.to_string(),
            )?;
        }
        // Let the cgroup moves settle before pinflow's first pass.
        std::thread::sleep(Duration::from_millis(200));
        Ok(host)
    }

    /// pinflow's arguments for this host: the private state directory, the live roots.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--libvirt-state-dir".into(),
            self.state.path().to_string_lossy().into_owned(),
        ]
    }
}

impl Drop for ThreadHost {
    fn drop(&mut self) {
        for d in &mut self.domains {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
        for d in &self.domains {
            for v in 0..VCPUS {
                let _ = std::fs::remove_dir(d.scope.join(format!("vcpu{v}")));
            }
            let _ = std::fs::remove_dir(d.scope.join("emulator"));
            let _ = std::fs::remove_dir(&d.scope);
        }
    }
}

/// What a domain's status XML says.
pub struct DomainXml {
    /// Domain name.
    pub name: String,
    /// libvirt's domain id.
    pub id: usize,
    /// The "QEMU" process.
    pub pid: u32,
    /// Each vCPU's thread id and pin (`None`: floating).
    pub vcpus: Vec<(u32, Option<String>)>,
    /// The floating domain's `<vcpu cpuset>`.
    pub float: Option<String>,
    /// The pinned domain's `<emulatorpin>` (`None`: the pCPUs of its vCPUs).
    pub emulator: Option<String>,
}
