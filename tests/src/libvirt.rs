//! The real libvirt + QEMU/KVM testbed: daemons started by hand (no systemd), domains with Nova
//! metadata and `<cputune>` pinning, and the handles a test needs to make drift like a real bug would.

use anyhow::{Context as _, bail};
use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// libvirt's live state dir.
pub const STATE_DIR: &str = "/run/libvirt/qemu";
const LIBVIRT_SOCK: &str = "/run/libvirt/libvirt-sock";
const VIRTLOGD_SOCK: &str = "/run/libvirt/virtlogd-sock";

/// Where testbed logs and generated files go.
pub fn work_dir() -> PathBuf {
    std::env::temp_dir().join("pinflow-testbed")
}

/// Daemons this process started (so only those get stopped).
#[derive(Debug, Default)]
pub struct Daemons {
    /// PIDs of daemons started here.
    pub started: Vec<(String, u32)>,
}

/// Starts virtlogd and libvirtd unless their sockets exist; makes /dev/kvm usable by QEMU.
pub fn ensure_daemons() -> anyhow::Result<Daemons> {
    let dir = work_dir();
    std::fs::create_dir_all(&dir)?;
    let mut d = Daemons::default();
    // No udev: /dev/kvm is root-only; QEMU runs as libvirt-qemu (group kvm).
    let _ = Command::new("chgrp").args(["kvm", "/dev/kvm"]).status();
    let _ = Command::new("chmod").args(["0660", "/dev/kvm"]).status();
    for (name, bin, sock) in [
        ("virtlogd", "/usr/sbin/virtlogd", VIRTLOGD_SOCK),
        ("libvirtd", "/usr/sbin/libvirtd", LIBVIRT_SOCK),
    ] {
        if Path::new(sock).exists() && socket_alive(sock) {
            continue;
        }
        let log = std::fs::File::create(dir.join(format!("{name}.out")))?;
        // Own process group: a Ctrl-C meant for `cargo xtask run` must not kill the daemons first.
        let child = Command::new(bin)
            .process_group(0)
            .env("LIBVIRT_LOG_OUTPUTS", format!("3:file:{}", dir.join(format!("{name}.log")).display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("failed to start {bin} (is libvirt-daemon-system installed? `cargo xtask setup`)"))?;
        d.started.push((name.to_string(), child.id()));
        let ok = crate::wait_for(Duration::from_secs(30), || {
            Path::new(sock).exists().then_some(())
        });
        if ok.is_none() {
            bail!(
                "{name} did not create {sock}; see {}",
                dir.join(format!("{name}.out")).display()
            );
        }
    }
    let ok = crate::wait_for(Duration::from_secs(30), || {
        virsh_ok(&["version"]).then_some(())
    });
    if ok.is_none() {
        bail!("libvirtd does not answer `virsh version`");
    }
    Ok(d)
}

fn socket_alive(path: &str) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Stops the daemons `d` started (SIGTERM, then waits up to 5 s).
pub fn stop_daemons(d: &Daemons) {
    for (_, pid) in d.started.iter().rev() {
        let _ = Command::new("kill").arg(pid.to_string()).status();
        let _ = crate::wait_for(Duration::from_secs(5), || {
            (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        });
    }
}

fn virsh_ok(args: &[&str]) -> bool {
    Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `virsh -c qemu:///system ARGS`; error with virsh's message on failure.
pub fn virsh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .context("cannot run virsh")?;
    if !out.status.success() {
        bail!(
            "virsh {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Nova metadata to put in a domain.
#[derive(Clone, Debug)]
pub struct NovaSpec {
    /// Display name.
    pub display_name: String,
    /// Project name.
    pub project: String,
    /// Project UUID.
    pub project_id: String,
    /// User name.
    pub user: String,
    /// User UUID.
    pub user_id: String,
    /// Flavor name.
    pub flavor: String,
}

/// A test domain: vCPUs with optional pins, Nova metadata, optionally a guest that spins.
#[derive(Clone, Debug)]
pub struct DomainSpec {
    /// libvirt name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Per vCPU: its `<vcpupin cpuset>`, or `None`.
    pub pins: Vec<Option<String>>,
    /// `<vcpu cpuset=…>` (a floating set for all vCPUs, Nova's shared policy).
    pub vcpu_cpuset: Option<String>,
    /// `<emulatorpin cpuset>`.
    pub emulator_pin: Option<String>,
    /// Nova metadata.
    pub nova: Option<NovaSpec>,
    /// Boot a one-instruction guest (`jmp $`) so vCPU 0 burns its CPU; otherwise it idles in firmware.
    pub spin: bool,
    /// Host tap devices of the domain's NICs (`<interface type='ethernet'><target dev>`), as Nova
    /// names them for OVS ports (`tapXXXXXXXX-XX`).
    pub taps: Vec<String>,
    /// I/O threads (`<iothreads>`), each with its `<iothreadpin cpuset>` or `None`; QEMU names
    /// thread i+1 `IO iothread{i+1}`.
    pub iothread_pins: Vec<Option<String>>,
    /// Extra `<cputune>` elements, verbatim (`<vcpusched …/>`).
    pub cputune_extra: String,
    /// `<numatune>` content, verbatim (`<memory mode='strict' nodeset='0'/>`).
    pub numatune: Option<String>,
}

impl DomainSpec {
    /// A domain with `pins.len()` vCPUs pinned as given, emulator on the union of the pins.
    pub fn pinned(name: &str, pins: &[&str]) -> Self {
        DomainSpec {
            name: name.into(),
            uuid: uuid_for(name),
            pins: pins.iter().map(|p| Some(p.to_string())).collect(),
            vcpu_cpuset: None,
            emulator_pin: (!pins.is_empty()).then(|| pins.join(",")),
            nova: None,
            spin: false,
            taps: Vec::new(),
            iothread_pins: Vec::new(),
            cputune_extra: String::new(),
            numatune: None,
        }
    }

    /// Adds Nova metadata derived from the name.
    pub fn with_nova(mut self, display_name: &str, project: &str, flavor: &str) -> Self {
        self.nova = Some(NovaSpec {
            display_name: display_name.into(),
            project: project.into(),
            project_id: "a1b2c3d4e5f60718293a4b5c6d7e8f90".into(),
            user: "operator".into(),
            user_id: "0f6c1c8e2f3a4b5c9d8e7f6a5b4c3d2e".into(),
            flavor: flavor.into(),
        });
        self
    }

    /// The domain XML.
    pub fn to_xml(&self) -> String {
        let mut x = String::new();
        let _ = writeln!(
            x,
            "<domain type='kvm'>\n  <name>{}</name>\n  <uuid>{}</uuid>",
            self.name, self.uuid
        );
        if let Some(n) = &self.nova {
            let _ = write!(
                x,
                "  <metadata>\n    <nova:instance xmlns:nova=\"http://openstack.org/xmlns/libvirt/nova/1.1\">\n\
                 \x20     <nova:package version=\"31.0.0\"/>\n      <nova:name>{}</nova:name>\n\
                 \x20     <nova:creationTime>2026-11-27 03:50:00</nova:creationTime>\n\
                 \x20     <nova:flavor name=\"{}\"><nova:memory>64</nova:memory><nova:disk>0</nova:disk>\
                 <nova:swap>0</nova:swap><nova:ephemeral>0</nova:ephemeral><nova:vcpus>{}</nova:vcpus></nova:flavor>\n\
                 \x20     <nova:owner><nova:user uuid=\"{}\">{}</nova:user><nova:project uuid=\"{}\">{}</nova:project></nova:owner>\n\
                 \x20     <nova:ports/>\n    </nova:instance>\n  </metadata>\n",
                n.display_name,
                n.flavor,
                self.pins.len(),
                n.user_id,
                n.user,
                n.project_id,
                n.project
            );
        }
        let _ = writeln!(x, "  <memory unit='MiB'>64</memory>");
        match &self.vcpu_cpuset {
            Some(c) => {
                let _ = writeln!(
                    x,
                    "  <vcpu placement='static' cpuset='{c}'>{}</vcpu>",
                    self.pins.len()
                );
            }
            None => {
                let _ = writeln!(x, "  <vcpu placement='static'>{}</vcpu>", self.pins.len());
            }
        }
        let pins: Vec<_> = self
            .pins
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
            .collect();
        if !self.iothread_pins.is_empty() {
            let _ = writeln!(x, "  <iothreads>{}</iothreads>", self.iothread_pins.len());
        }
        let iopins: Vec<_> = self
            .iothread_pins
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i + 1, p)))
            .collect();
        if !pins.is_empty()
            || self.emulator_pin.is_some()
            || !iopins.is_empty()
            || !self.cputune_extra.is_empty()
        {
            x.push_str("  <cputune>\n");
            for (i, p) in pins {
                let _ = writeln!(x, "    <vcpupin vcpu='{i}' cpuset='{p}'/>");
            }
            if let Some(e) = &self.emulator_pin {
                let _ = writeln!(x, "    <emulatorpin cpuset='{e}'/>");
            }
            for (i, p) in iopins {
                let _ = writeln!(x, "    <iothreadpin iothread='{i}' cpuset='{p}'/>");
            }
            x.push_str(&self.cputune_extra);
            x.push_str("  </cputune>\n");
        }
        if let Some(n) = &self.numatune {
            let _ = writeln!(x, "  <numatune>{n}</numatune>");
        }
        let _ = write!(
            x,
            "  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\n\
             \x20 <features><acpi/><apic/></features>\n\
             \x20 <cpu mode='host-passthrough'><feature policy='disable' name='arch-capabilities'/></cpu>\n  <clock offset='utc'/>\n\
             \x20 <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>\n\
             \x20 <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n"
        );
        // (`<cpu>` above: QEMU 7.2 on this virtualised KVM aborts setting MSR 0x10a with plain
        // host-passthrough, hence arch-capabilities off.)
        for (i, tap) in self.taps.iter().enumerate() {
            let _ = writeln!(
                x,
                "    <interface type='ethernet'><mac address='fa:16:3e:00:{:02x}:{:02x}'/>\
                 <target dev='{tap}'/><model type='virtio'/><rom enabled='no'/></interface>",
                self.uuid.len() % 256,
                i
            );
        }
        if self.spin {
            let _ = writeln!(
                x,
                "    <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
                 <source file='{}'/><target dev='hda' bus='ide'/></disk>",
                spin_image(&self.name).display()
            );
        }
        x.push_str("    <memballoon model='none'/>\n  </devices>\n</domain>\n");
        x
    }
}

/// A stable UUID derived from the name (so a re-created test domain keeps its UUID).
pub fn uuid_for(name: &str) -> String {
    let mut h: u128 = 0x6a09e667f3bcc908b2fb1366ea957d3e;
    for b in name.bytes() {
        h = h.wrapping_mul(0x100000001b3).wrapping_add(u128::from(b)) ^ (h >> 61);
    }
    let s = format!("{h:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &s[0..8],
        &s[8..12],
        &s[13..16],
        &s[17..20],
        &s[20..32]
    )
}

/// A 1 MiB raw disk whose boot sector is `jmp $` (EB FE … 55 AA): the vCPU spins forever. One
/// per domain: QEMU write-locks its disk, so two spinning domains cannot share one.
pub fn spin_image(domain: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/libvirt/images/pinflow-spin-{domain}.img"))
}

fn write_spin_image(domain: &str) -> anyhow::Result<()> {
    let p = spin_image(domain);
    if p.exists() {
        return Ok(());
    }
    let mut img = vec![0u8; 1 << 20];
    img[0] = 0xEB;
    img[1] = 0xFE;
    img[510] = 0x55;
    img[511] = 0xAA;
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&p, img).with_context(|| format!("cannot write {}", p.display()))
}

/// A running domain; destroyed and undefined on drop.
#[derive(Debug)]
pub struct RunningDomain {
    /// libvirt name.
    pub name: String,
}

/// Defines and starts `spec` (destroying a leftover domain of the same name first).
pub fn start(spec: &DomainSpec) -> anyhow::Result<RunningDomain> {
    remove(&spec.name);
    if spec.spin {
        write_spin_image(&spec.name)?;
    }
    let dir = work_dir();
    std::fs::create_dir_all(&dir)?;
    let xml = dir.join(format!("{}.xml", spec.name));
    std::fs::write(&xml, spec.to_xml())?;
    virsh(&["define", &xml.to_string_lossy()])?;
    virsh(&["start", &spec.name])?;
    Ok(RunningDomain {
        name: spec.name.clone(),
    })
}

/// Destroys and undefines a domain, ignoring errors (it may not exist).
pub fn remove(name: &str) {
    let _ = virsh(&["destroy", name]);
    let _ = virsh(&["undefine", name]);
}

impl RunningDomain {
    /// QEMU's pid (libvirt's `NAME.pid`).
    pub fn pid(&self) -> u32 {
        let p = format!("{STATE_DIR}/{}.pid", self.name);
        std::fs::read_to_string(&p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {p}"))
    }

    /// Thread id of vCPU `n` (the thread named `CPU n/KVM`).
    pub fn vcpu_tid(&self, n: u32) -> u32 {
        let pid = self.pid();
        let want = format!("CPU {n}/KVM");
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("task dir")
            .filter_map(|e| e.ok())
            .find(|e| {
                std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == want)
            })
            .and_then(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .unwrap_or_else(|| panic!("{}: no thread {want}", self.name))
    }

    /// The domain's cpuset cgroup directory (parent of its `emulator` cgroup), v1 or v2.
    pub fn cpuset_cgroup_dir(&self) -> PathBuf {
        let cg =
            std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid())).expect("cgroup file");
        let v1 = cg.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
            ctrl.split(',')
                .any(|c| c == "cpuset")
                .then(|| format!("/sys/fs/cgroup/cpuset{path}"))
        });
        let full = v1.unwrap_or_else(|| {
            let p = cg
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .expect("cgroup v2 line");
            format!("/sys/fs/cgroup{p}")
        });
        PathBuf::from(full.strip_suffix("/emulator").unwrap_or(&full))
    }
}

impl RunningDomain {
    /// Moves thread `tid` into the domain's `leaf` cpuset cgroup (`emulator`, `vcpu0`, …) behind
    /// libvirt's back (v1 `tasks`, v2 `cgroup.threads`).
    pub fn move_thread_to_cgroup(&self, tid: u32, leaf: &str) {
        let dir = self.cpuset_cgroup_dir().join(leaf);
        let v1 = dir.join("tasks");
        let file = if v1.exists() {
            v1
        } else {
            dir.join("cgroup.threads")
        };
        std::fs::write(&file, tid.to_string())
            .unwrap_or_else(|e| panic!("move {tid} to {}: {e}", file.display()));
    }
}

impl Drop for RunningDomain {
    fn drop(&mut self) {
        remove(&self.name);
        let _ = std::fs::remove_file(spin_image(&self.name));
    }
}
