//! `cargo xtask vm-test` and `cargo xtask run --vm`: the OVS *kernel* datapath guest.
//!
//! The host has no `openvswitch.ko`, so the kernel datapath is tested in a VM: Debian's stock
//! kernel (`linux-image-amd64`, fetched with `apt-get download`) with `openvswitch.ko` and its
//! dependencies, booted under QEMU with TCG (KVM cannot boot Linux on these machines) from a
//! self-contained initramfs that carries busybox, dash, bash, the host's OVS binaries and their
//! shared libraries, and the freshly built release `pinflow` with its libraries (the guest's
//! userspace *is* the host's Debian 12 userspace, so the host's libraries fit).
//!
//! The guest runs `xtask/guest/scenario.sh` (kernel-datapath OVS with netns ports, traffic, a drop
//! flow, an output to a missing port, an upcall storm, faults, conntrack zones committed by OVS's
//! `ct` action and counted by a conntrack-enabled pinflow) and reports through a 9p share
//! (`out.log`, `rc`, captured files) and the serial console (`console.log`), all under
//! `<target>/vm/`.

use crate::util::{cargo, output, sh, step, workspace_root};
use anyhow::{Context as _, bail};
use pinflow_tests::REQUIRE_PRIVILEGED;
use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Flags of `cargo xtask vm-test`.
#[derive(clap::Args)]
pub struct VmTestArgs {
    /// Give up on the guest after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Also run the megaflow dump benchmark (10 000 / 100 000 flows) in the guest.
    #[arg(long)]
    bench: bool,
    /// Debian kernel package to boot (default: what `linux-image-amd64` depends on, Debian 12's
    /// 6.1). E.g. `linux-image-6.12.100+deb12-amd64` for OVS drop reasons (Linux ≥ 6.6).
    #[arg(long, env = "PINFLOW_VM_KERNEL")]
    kernel: Option<String>,
}

impl Default for VmTestArgs {
    fn default() -> Self {
        Self {
            timeout: 600,
            bench: false,
            kernel: std::env::var("PINFLOW_VM_KERNEL").ok(),
        }
    }
}

/// Host commands the guest build and boot need.
const HOST_COMMANDS: &[&str] = &[
    "qemu-system-x86_64",
    "busybox",
    "cpio",
    "zstd",
    "depmod",
    "modinfo",
    "dpkg-deb",
    "apt-get",
    "ovs-vswitchd",
    "ovs-dpctl",
    "ldd",
    "bash",
    "dash",
];

/// Userspace binaries copied into the guest (with their shared libraries).
const GUEST_BINS: &[&str] = &[
    "/usr/sbin/ovsdb-server",
    "/usr/sbin/ovs-vswitchd",
    "/usr/bin/ovs-vsctl",
    "/usr/bin/ovs-ofctl",
    "/usr/bin/ovs-appctl",
    "/usr/bin/ovs-dpctl",
    "/usr/bin/ovsdb-tool",
    "/usr/sbin/ip",
    "/usr/bin/kmod",
    "/usr/bin/ping",
    "/usr/bin/dash",
    "/usr/bin/bash",
];

/// Optional binaries (copied when the host has them).
/// `conntrack` (conntrack-tools) gives the guest's conntrack check a second reading of the kernel's
/// zones besides `/proc/net/nf_conntrack`.
const GUEST_OPTIONAL_BINS: &[&str] = &[
    "/usr/sbin/bpftool",
    "/usr/sbin/ethtool",
    "/usr/sbin/conntrack",
];

/// Kernel modules the guest loads (their dependencies are added).
const GUEST_MODULES: &[&str] = &[
    "openvswitch",
    // ctnetlink, which pinflow's conntrack source dumps (openvswitch.ko needs only nf_conntrack).
    "nf_conntrack_netlink",
    "veth",
    "crc32c_generic",
    "9p",
    "9pnet_virtio",
    "virtio_pci",
    "virtio_net",
    "tun",
];

fn require_privileged() -> bool {
    std::env::var(REQUIRE_PRIVILEGED).is_ok_and(|v| v == "1")
}

fn command_exists(c: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {c} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Skips (Ok) with a printed reason, or fails when skips are forbidden.
fn skip(reason: &str) -> anyhow::Result<()> {
    if require_privileged() {
        bail!("vm-test cannot run: {reason} ({REQUIRE_PRIVILEGED}=1 forbids skipping)");
    }
    eprintln!("SKIP vm-test: {reason}");
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// A built guest: kernel image and initramfs.
struct Guest {
    vmlinuz: PathBuf,
    initramfs: PathBuf,
}

/// `cargo xtask vm-test`.
pub fn vm_test(a: VmTestArgs) -> anyhow::Result<()> {
    let missing: Vec<&str> = HOST_COMMANDS
        .iter()
        .copied()
        .filter(|c| !command_exists(c))
        .collect();
    if !missing.is_empty() {
        return skip(&format!(
            "missing host commands: {} (run `cargo xtask setup`)",
            missing.join(", ")
        ));
    }
    let work = target_dir().join("vm");
    fs::create_dir_all(&work)?;
    let kernel = match kernel_package(&work, a.kernel.as_deref()) {
        Ok(k) => k,
        Err(e) => return skip(&format!("kernel package unavailable: {e:#}")),
    };
    step("vm-test: building pinflow (release)");
    cargo(&["build", "--release", "-p", "pinflow", "--bin", "pinflow"])?;
    let t_build = Instant::now();
    let guest = build_guest(&work, &kernel, &target_dir().join("release/pinflow"))?;
    step(&format!(
        "vm-test: guest built in {:.1?}",
        t_build.elapsed()
    ));
    let share = work.join("share");
    let _ = fs::remove_dir_all(&share);
    fs::create_dir_all(&share)?;
    step("vm-test: booting the guest under QEMU (TCG); this takes ~1 min");
    let t0 = Instant::now();
    let mut extra = String::new();
    if a.bench {
        extra.push_str(" pinflow.bench=1");
    }
    let finished = boot_batch(&guest, &share, &extra, Duration::from_secs(a.timeout))?;
    let took = t0.elapsed();
    let log = fs::read_to_string(share.join("out.log")).unwrap_or_default();
    let console = share.join("console.log");
    println!("{log}");
    let rc = fs::read_to_string(share.join("rc"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    match (finished, rc) {
        (_, Some(0)) => {
            let ct = check_conntrack(&share).context("vm-test: FAIL, conntrack per zone")?;
            println!("vm-test: conntrack: {ct}");
            println!(
                "vm-test: PASS (boot to pass {:.1} s; logs in {})",
                took.as_secs_f64(),
                share.display()
            );
            Ok(())
        }
        (_, Some(n)) => bail!(
            "vm-test: FAIL, {n} failed check(s) (guest log above; console {})",
            console.display()
        ),
        (fin, None) => {
            let c = fs::read_to_string(&console).unwrap_or_default();
            let tail: Vec<&str> = c.lines().rev().take(40).collect();
            for l in tail.iter().rev() {
                eprintln!("console| {l}");
            }
            bail!(
                "vm-test: FAIL, the guest {} without a result (console {})",
                if fin { "stopped" } else { "timed out" },
                console.display()
            )
        }
    }
}

/// The conntrack zones the guest scenario's flows load, as `xtask/guest/scenario.sh` sets them up:
/// (zone, the port whose flows load it into `reg6`, that port's instance, the entries the
/// scenario's traffic commits into it through OVS's `ct(commit,zone=NXM_NX_REG6[0..15])`).
const CT_ZONES: [(u16, &str, &str, u64); 2] = [(5, "v1", "vmct-a", 13), (6, "v2", "", 7)];

/// Entries the scenario commits in zone 0, which no flow loads into `reg6` (pinflow's `other`).
const CT_OTHER_COMMITTED: u64 = 60;

/// Checks what the guest's conntrack section left in the share (the kernel's count per zone from
/// `/proc/net/nf_conntrack`, the conntrack-enabled pinflow's `/metrics` and `/api/v1/conntrack`
/// read right after): a one-line summary, or what is wrong.
fn check_conntrack(share: &Path) -> anyhow::Result<String> {
    let read = |f: &str| {
        fs::read_to_string(share.join(f))
            .with_context(|| format!("the guest left no {f} (its conntrack section did not run)"))
    };
    conntrack_verdict(
        &read("conntrack-kernel.txt")?,
        &read("conntrack-metrics.txt")?,
        &read("conntrack-api.json")?,
    )
}

/// [`check_conntrack`] on the files' text: every zone of [`CT_ZONES`] holds what the traffic made
/// in the kernel, pinflow counts exactly that under the zone's instance (`domain` label) and lists
/// the zone's port and instance in the API, and `other` is the table's total minus the zones.
fn conntrack_verdict(kernel: &str, metrics: &str, api: &str) -> anyhow::Result<String> {
    let kernel_zone: BTreeMap<u16, u64> = kernel
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("zone")).then_some(())?;
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect();
    let samples = pinflow_tests::scrape::parse(metrics);
    let api: serde_json::Value =
        serde_json::from_str(api).context("/api/v1/conntrack is not JSON")?;
    let api_zones = api["zones"].as_array().cloned().unwrap_or_default();
    let mut wrong = Vec::new();
    let mut seen = Vec::new();
    let mut zones_sum = 0.0;
    for (zone, port, domain, made) in CT_ZONES {
        let kernel_has = kernel_zone.get(&zone).copied();
        if kernel_has != Some(made) {
            wrong.push(format!(
                "the kernel holds {kernel_has:?} entries in zone {zone}, the traffic made {made}"
            ));
        }
        let z = zone.to_string();
        let series: Vec<(String, f64)> = samples
            .iter()
            .filter(|s| s.name == "pinflow_conntrack_zone_entries")
            .filter(|s| s.labels.get("ct_zone") == Some(&z))
            .map(|s| (s.labels.get("domain").cloned().unwrap_or_default(), s.value))
            .collect();
        if series != [(domain.to_string(), made as f64)] {
            wrong.push(format!(
                "pinflow_conntrack_zone_entries of zone {zone}: {series:?}, want [(\"{domain}\", {made})]"
            ));
        }
        zones_sum += series.iter().map(|(_, v)| v).sum::<f64>();
        let listed = api_zones.iter().find(|x| x["zone"] == zone);
        let entries = listed.and_then(|x| x["entries"].as_u64());
        let ports: Vec<(String, String)> = listed
            .and_then(|x| x["ports"].as_array())
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                        (s("port"), s("domain"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if entries != Some(made) || ports != [(port.to_string(), domain.to_string())] {
            wrong.push(format!(
                "/api/v1/conntrack zone {zone}: {entries:?} entries, ports {ports:?}; want {made} \
                 and [(\"{port}\", \"{domain}\")]"
            ));
        }
        seen.push(format!(
            "zone {zone} {made} entries on {port} ({})",
            if domain.is_empty() {
                "no instance"
            } else {
                domain
            }
        ));
    }
    let one = |name: &str, want: &[(&str, &str)]| {
        pinflow_tests::scrape::select(&samples, name, want)
            .first()
            .map(|s| s.value)
    };
    let total = one("pinflow_conntrack_entries", &[]);
    let other = one("pinflow_conntrack_zone_entries", &[("ct_zone", "other")]);
    match (total, other) {
        (Some(t), Some(o)) if (t - zones_sum - o).abs() < 0.5 && o >= CT_OTHER_COMMITTED as f64 => {
        }
        _ => wrong.push(format!(
            "other ({other:?}) is not the total ({total:?}) minus the zones ({zones_sum}), or \
             below the {CT_OTHER_COMMITTED} entries committed in zone 0"
        )),
    }
    if !wrong.is_empty() {
        bail!("{}", wrong.join("; "));
    }
    Ok(format!(
        "kernel, /metrics and /api/v1/conntrack agree: {} (dump mode {})",
        seen.join(", "),
        api["mode"]
    ))
}

/// `cargo xtask run --vm`: the guest interactively, pinflow's /metrics forwarded to `listen`.
pub fn run_vm(listen: SocketAddr) -> anyhow::Result<()> {
    let work = target_dir().join("vm");
    fs::create_dir_all(&work)?;
    let kernel = kernel_package(&work, std::env::var("PINFLOW_VM_KERNEL").ok().as_deref())?;
    step("building pinflow (release)");
    cargo(&["build", "--release", "-p", "pinflow", "--bin", "pinflow"])?;
    let guest = build_guest(&work, &kernel, &target_dir().join("release/pinflow"))?;
    step(&format!(
        "booting the guest; pinflow's /metrics will be at http://{listen}/metrics; `poweroff -f` ends"
    ));
    let fwd = format!(
        "user,id=n0,hostfwd=tcp:{}:{}-10.0.2.15:9105",
        listen.ip(),
        listen.port()
    );
    let st = qemu(&guest, None, "pinflow.mode=interactive")
        .args(["-netdev", &fwd, "-device", "virtio-net-pci,netdev=n0"])
        .status()
        .context("cannot run qemu-system-x86_64")?;
    if !st.success() {
        bail!("qemu exited with {st}");
    }
    Ok(())
}

/// The stock kernel package (`linux-image-<version>-amd64`), downloaded and unpacked once.
struct KernelPackage {
    version: String,
    root: PathBuf,
}

fn kernel_package(work: &Path, wanted: Option<&str>) -> anyhow::Result<KernelPackage> {
    let pkg = match wanted {
        Some(p) => p.to_string(),
        None => {
            let deps = output("apt-cache", &["depends", "linux-image-amd64"]).unwrap_or_default();
            deps.lines()
                .filter_map(|l| l.trim().strip_prefix("Depends: "))
                .find(|p| {
                    p.starts_with("linux-image-")
                        && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
                })
                .map(str::to_string)
                .context("apt-cache knows no linux-image-amd64 (run `apt-get update`)")?
        }
    };
    let version = pkg.trim_start_matches("linux-image-").to_string();
    let debs = work.join("debs");
    fs::create_dir_all(&debs)?;
    let have_deb = |d: &Path| -> Option<PathBuf> {
        fs::read_dir(d).ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
        })
    };
    let deb = match have_deb(&debs) {
        Some(d) => d,
        None => {
            step(&format!("vm: apt-get download {pkg}"));
            let st = Command::new("apt-get")
                .args(["download", &pkg])
                .current_dir(&debs)
                .status()
                .context("cannot run apt-get download")?;
            if !st.success() {
                bail!("apt-get download {pkg} failed ({st})");
            }
            have_deb(&debs).context("apt-get download left no .deb")?
        }
    };
    let root = work.join("kernel");
    if !root.join("lib/modules").join(&version).is_dir() {
        let _ = fs::remove_dir_all(&root);
        sh(
            "dpkg-deb",
            &["-x", &deb.to_string_lossy(), &root.to_string_lossy()],
        )?;
    }
    Ok(KernelPackage { version, root })
}

/// Copies `src` (following symlinks) to `root/<dst>` and makes the parent directories.
fn put(root: &Path, src: &Path, dst: &str) -> anyhow::Result<()> {
    let to = root.join(dst.trim_start_matches('/'));
    if let Some(p) = to.parent() {
        fs::create_dir_all(p)?;
    }
    fs::copy(src, &to).with_context(|| format!("cannot copy {} into the guest", src.display()))?;
    Ok(())
}

/// Copies a binary and every shared library `ldd` resolves for it.
fn put_with_libs(root: &Path, bin: &Path, dst: &str) -> anyhow::Result<()> {
    put(root, bin, dst)?;
    let real = fs::canonicalize(bin)?;
    let Some(ldd) = output("ldd", &[&real.to_string_lossy()]) else {
        return Ok(()); // static
    };
    for l in ldd.lines() {
        let lib = match l.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next(),
            None => l.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        if let Some(lib) = lib.filter(|p| p.starts_with('/')) {
            let dst = root.join(lib.trim_start_matches('/'));
            if !dst.exists() {
                put(root, Path::new(lib), lib)?;
            }
        }
    }
    Ok(())
}

/// Adds module `name` and its dependencies (from `modinfo -F depends`).
fn add_module(
    root: &Path,
    kernel: &KernelPackage,
    index: &BTreeMap<String, PathBuf>,
    name: &str,
    seen: &mut Vec<String>,
) -> anyhow::Result<()> {
    let key = name.replace('-', "_");
    if seen.contains(&key) {
        return Ok(());
    }
    seen.push(key.clone());
    let Some(path) = index.get(&key) else {
        eprintln!("vm: module {name} not found (built in?)");
        return Ok(());
    };
    let base = kernel.root.join("lib/modules").join(&kernel.version);
    let rel = path.strip_prefix(&base).unwrap_or(path);
    put(
        root,
        path,
        &format!("lib/modules/{}/{}", kernel.version, rel.display()),
    )?;
    let deps = output("modinfo", &["-F", "depends", &path.to_string_lossy()]).unwrap_or_default();
    for d in deps.trim().split(',').filter(|d| !d.is_empty()) {
        add_module(root, kernel, index, d, seen)?;
    }
    Ok(())
}

fn module_index(dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            module_index(&p, out);
        } else if let Some(n) = p.file_name().and_then(|n| n.to_str())
            && let Some(stem) = [".ko", ".ko.xz", ".ko.zst"]
                .iter()
                .find_map(|suffix| n.strip_suffix(suffix))
        {
            out.insert(stem.replace('-', "_"), p.clone());
        }
    }
}

fn build_guest(work: &Path, kernel: &KernelPackage, pinflow: &Path) -> anyhow::Result<Guest> {
    step("vm: building the initramfs");
    let root = work.join("initroot");
    let _ = fs::remove_dir_all(&root);
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "lib64", "proc", "sys", "dev", "tmp", "run", "etc",
        "mnt/host", "root", "var/log",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    std::os::unix::fs::symlink("../run", root.join("var/run"))?;
    let busybox = output("sh", &["-c", "command -v busybox"]).unwrap_or_default();
    put(&root, Path::new(busybox.trim()), "/bin/busybox")?;
    let applets = output(busybox.trim(), &["--list"]).unwrap_or_default();
    for a in applets
        .lines()
        .filter(|a| !a.is_empty() && !a.contains('/'))
    {
        let l = root.join("bin").join(a);
        if !l.exists() {
            std::os::unix::fs::symlink("busybox", &l)?;
        }
    }
    for b in GUEST_BINS {
        put_with_libs(&root, Path::new(b), b)?;
    }
    for b in GUEST_OPTIONAL_BINS {
        if Path::new(b).exists() {
            put_with_libs(&root, Path::new(b), b)?;
        }
    }
    // dash as /bin/sh (busybox sh prefers its own applets over PATH), bash for /dev/udp traffic.
    let _ = fs::remove_file(root.join("bin/sh"));
    std::os::unix::fs::symlink("../usr/bin/dash", root.join("bin/sh"))?;
    let _ = fs::remove_file(root.join("bin/bash"));
    std::os::unix::fs::symlink("../usr/bin/bash", root.join("bin/bash"))?;
    for t in ["modprobe", "insmod", "lsmod", "rmmod", "modinfo", "depmod"] {
        let l = root.join("sbin").join(t);
        let _ = fs::remove_file(&l);
        std::os::unix::fs::symlink("../usr/bin/kmod", &l)?;
    }
    put_with_libs(&root, pinflow, "/usr/bin/pinflow")?;
    put(
        &root,
        Path::new("/usr/share/openvswitch/vswitch.ovsschema"),
        "/usr/share/openvswitch/vswitch.ovsschema",
    )?;
    let guest_dir = workspace_root().join("xtask/guest");
    for (src, dst) in [
        ("init", "/init"),
        ("scenario.sh", "/scenario.sh"),
        ("bench.sh", "/usr/bin/pinflow-bench.sh"),
    ] {
        let s = guest_dir.join(src);
        if s.exists() {
            put(&root, &s, dst)?;
            fs::set_permissions(
                root.join(dst.trim_start_matches('/')),
                fs::Permissions::from_mode(0o755),
            )?;
        }
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    // Kernel modules + dependencies.
    let mods = kernel.root.join("lib/modules").join(&kernel.version);
    let mut index = BTreeMap::new();
    module_index(&mods.join("kernel"), &mut index);
    let mut seen = Vec::new();
    for m in GUEST_MODULES {
        add_module(&root, kernel, &index, m, &mut seen)?;
    }
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let s = mods.join(f);
        if s.exists() {
            put(&root, &s, &format!("lib/modules/{}/{f}", kernel.version))?;
        }
    }
    sh("depmod", &["-b", &root.to_string_lossy(), &kernel.version])?;
    let initramfs = work.join("initramfs.img");
    sh(
        "sh",
        &[
            "-c",
            &format!(
                "cd '{}' && find . | cpio -o -H newc --quiet | zstd -q -3 -T0 -f -o '{}'",
                root.display(),
                initramfs.display()
            ),
        ],
    )?;
    let vmlinuz = work.join("vmlinuz");
    fs::copy(
        kernel
            .root
            .join("boot")
            .join(format!("vmlinuz-{}", kernel.version)),
        &vmlinuz,
    )
    .context("the kernel package has no /boot/vmlinuz")?;
    Ok(Guest { vmlinuz, initramfs })
}

/// The QEMU command line for the guest (TCG; optional 9p share; extra kernel arguments).
fn qemu(g: &Guest, share: Option<&Path>, append: &str) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    let mut cmdline = format!("console=ttyS0 panic=-1 quiet loglevel=3 {append}");
    c.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "1536",
    ]);
    if let Some(s) = share {
        c.arg("-virtfs").arg(format!(
            "local,path={},mount_tag=host,security_model=none,id=host",
            s.display()
        ));
        cmdline.push_str(" pinflow.9p=1");
    }
    c.arg("-kernel")
        .arg(&g.vmlinuz)
        .arg("-initrd")
        .arg(&g.initramfs)
        .args(["-append", &cmdline])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ]);
    c
}

/// Boots the guest non-interactively; true when it powered off before the timeout.
fn boot_batch(g: &Guest, share: &Path, append: &str, timeout: Duration) -> anyhow::Result<bool> {
    let console = fs::File::create(share.join("console.log"))?;
    let mut child = qemu(g, Some(share), append)
        .arg("-net")
        .arg("none")
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .spawn()
        .context("cannot run qemu-system-x86_64")?;
    let t0 = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What the guest with `pinflow.bench=1` costs, as measured on the project's 2-core machine
/// (2026-12-01, two runs: boot to pass 124 and 153 s, 79 and 96 s of it the megaflow bench);
/// `--quick`, whose other parts take ~4.5 min there, names it when it skips the guest.
const GUEST_BENCH_COST: &str = "~2–2.5 min here: boot to pass 124–153 s, 79–96 s of it the \
     bench; the other parts of --quick already take ~4.5 min of its 5";

/// Flow counts of the guest's megaflow bench (`xtask/guest/bench.sh`).
const GUEST_BENCH_FLOWS: [u32; 2] = [10_000, 100_000];

/// `cargo xtask bench` part `datapath`: `vm-test --bench` (the kernel datapath's megaflows in
/// the QEMU guest, `pinflow flows --datapath` against `ovs-dpctl dump-flows` + an awk parse),
/// folded into the bench table. `--quick` skips the guest and says so in the rows.
pub fn bench_rows(quick: bool) -> anyhow::Result<()> {
    let what = |n: u32| {
        format!(
            "kernel datapath megaflow dump, {n} flows: pinflow flows --datapath vs ovs-dpctl dump-flows + parse"
        )
    };
    let series_what =
        "kernel-datapath families in the guest: series per datapath port and per host";
    let skipped = |why: &str| {
        crate::bench_table::add_limited(
            "datapath",
            series_what,
            "≤ 4 per instance port (docs/metrics.md)",
            format!("skipped{why}"),
            None,
            "the host has no openvswitch.ko: the kernel datapath runs in the QEMU/TCG guest only",
        );
        for n in GUEST_BENCH_FLOWS {
            crate::bench_table::add_limited(
                "datapath",
                &what(n),
                "",
                format!("skipped{why}"),
                None,
                "the host has no openvswitch.ko: the kernel datapath runs in the QEMU/TCG guest only",
            );
        }
    };
    if quick {
        skipped(&format!(
            " in --quick: needs the TCG guest ({GUEST_BENCH_COST}); `cargo xtask bench --only datapath` runs it"
        ));
        return Ok(());
    }
    let run = vm_test(VmTestArgs {
        timeout: 3600,
        bench: true,
        ..VmTestArgs::default()
    });
    let log = fs::read_to_string(target_dir().join("vm/share/out.log")).unwrap_or_default();
    let found = parse_guest_bench(&log);
    if found.is_empty() {
        let why = match &run {
            Err(e) => format!(": the guest failed: {e:#}"),
            Ok(()) => ": the guest printed no bench figures (vm-test skipped?)".to_string(),
        };
        skipped(&why);
        return Ok(());
    }
    if let Err(e) = &run {
        eprintln!("note: vm-test reported failures besides the bench: {e:#}");
    }
    match datapath_series(&log) {
        Some((per_port, ports, host, text)) => crate::bench_table::add(
            "datapath",
            series_what,
            "≤ 4 per instance port (docs/metrics.md)",
            format!(
                "{per_port:.1} per netdev port ({ports} ports, v1 and v2 in netns), {host} per host \
                 (datapath, internal ports, action kinds) after the scenario's traffic; {text}"
            ),
            Some(per_port <= 4.0),
        ),
        None => crate::bench_table::add_limited(
            "datapath",
            series_what,
            "≤ 4 per instance port (docs/metrics.md)",
            "skipped: the guest printed no kernel-datapath series".into(),
            None,
            "",
        ),
    }
    for g in found {
        let cpu = |t: &GuestTime| t.user + t.sys;
        let (Some(pf), Some(dp)) = (g.times.get("render"), g.times.get("parse")) else {
            continue;
        };
        let count = g.times.get("count");
        let dump = g.times.get("dump");
        crate::bench_table::add(
            "datapath",
            &what(g.target),
            "",
            format!(
                "{} flows in the datapath; CPU (user+sys) pinflow {:.0} ms (dump+decode {}) vs \
                 ovs-dpctl + awk {:.0} ms (dump alone {}): {:.1}× below; wall {:.0} vs {:.0} ms; \
                 one run each in the TCG guest (no spread: emulated CPU)",
                g.held,
                cpu(pf),
                count.map_or("?".into(), |c| format!("{:.0} ms", cpu(c))),
                cpu(dp),
                dump.map_or("?".into(), |c| format!("{:.0} ms", cpu(c))),
                cpu(dp) / cpu(pf).max(1e-3),
                pf.real,
                dp.real
            ),
            None,
        );
    }
    Ok(())
}

/// The kernel-datapath families in the guest's `--- /metrics` section of `out.log` (the
/// scenario prints every `pinflow_ovs_*` line there): (series per netdev port, netdev ports,
/// series per host, count by family).
fn datapath_series(log: &str) -> Option<(f64, usize, usize, String)> {
    let section: String = log
        .lines()
        .skip_while(|l| l.trim() != "--- /metrics")
        .skip(1)
        .take_while(|l| !l.starts_with("---"))
        .filter(|l| l.starts_with("pinflow_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let dp_family = |n: &str| {
        [
            "pinflow_ovs_datapath_",
            "pinflow_ovs_vport_",
            "pinflow_ovs_upcalls_total",
            "pinflow_ovs_drops_total",
        ]
        .iter()
        .any(|p| n.starts_with(p))
    };
    let samples: Vec<pinflow_tests::scrape::Sample> = pinflow_tests::scrape::parse(&section)
        .into_iter()
        .filter(|s| dp_family(&s.name))
        .collect();
    let netdev: Vec<&str> = samples
        .iter()
        .filter(|s| s.name == "pinflow_ovs_vport_info")
        .filter(|s| s.labels.get("type").is_some_and(|t| t == "netdev"))
        .filter_map(|s| s.labels.get("port").map(String::as_str))
        .collect();
    if samples.is_empty() || netdev.is_empty() {
        return None;
    }
    let on_port = |s: &pinflow_tests::scrape::Sample| {
        s.labels
            .get("port")
            .is_some_and(|p| netdev.contains(&p.as_str()))
    };
    let per_port = samples.iter().filter(|s| on_port(s)).count();
    let host = samples.len() - per_port;
    let mut fam: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &samples {
        *fam.entry(s.name.as_str()).or_insert(0) += 1;
    }
    let text = fam
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    Some((
        per_port as f64 / netdev.len() as f64,
        netdev.len(),
        host,
        text,
    ))
}

/// One `time` report of the guest (ms).
#[derive(Debug, Default, Clone, Copy)]
struct GuestTime {
    real: f64,
    user: f64,
    sys: f64,
}

/// The figures of one flow count in the guest's bench output.
#[derive(Debug, Default)]
struct GuestBench {
    target: u32,
    held: String,
    /// `dump` (ovs-dpctl alone), `parse` (ovs-dpctl | awk), `count` (pinflow --count), `render`.
    times: BTreeMap<&'static str, GuestTime>,
}

/// `0m 1.23s`, `1.23`, `0m1.230s` → ms.
fn parse_time(v: &str) -> Option<f64> {
    let v = v.trim();
    let (min, rest) = match v.split_once('m') {
        Some((m, r)) => (m.trim().parse::<f64>().ok()?, r),
        None => (0.0, v),
    };
    let s = rest
        .trim()
        .trim_end_matches('s')
        .trim()
        .parse::<f64>()
        .ok()?;
    Some((min * 60.0 + s) * 1e3)
}

/// Parses the `bench:` lines of `xtask/guest/bench.sh` and the `time` reports that follow them.
fn parse_guest_bench(log: &str) -> Vec<GuestBench> {
    let mut out: Vec<GuestBench> = Vec::new();
    let mut current: Option<&'static str> = None;
    for line in log.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("bench: target ") {
            let target = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let held = rest
                .rsplit_once("holds ")
                .map_or("?", |(_, h)| h.trim())
                .to_string();
            out.push(GuestBench {
                target,
                held,
                ..GuestBench::default()
            });
            current = None;
        } else if let Some(rest) = l.strip_prefix("bench: ") {
            current = if rest.starts_with("ovs-dpctl dump-flows > ") {
                Some("dump")
            } else if rest.starts_with("ovs-dpctl dump-flows | parse") {
                Some("parse")
            } else if rest.starts_with("pinflow flows --datapath --count") {
                Some("count")
            } else if rest.starts_with("pinflow flows --datapath > ") {
                Some("render")
            } else {
                None
            };
        } else if let (Some(k), Some(b)) = (current, out.last_mut()) {
            let mut words = l.splitn(2, char::is_whitespace);
            let (Some(name), Some(v)) = (words.next(), words.next()) else {
                continue;
            };
            let Some(ms) = parse_time(v) else { continue };
            let t = b.times.entry(k).or_default();
            match name {
                "real" => t.real = ms,
                "user" => t.user = ms,
                "sys" => t.sys = ms,
                _ => {}
            }
        }
    }
    out.retain(|b| b.target > 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_bench_output_is_parsed() {
        let log = "bench: target 10000 flows, datapath holds 9998\n\
                   bench: ovs-dpctl dump-flows > /dev/null\nreal\t0m 1.50s\nuser\t0m 1.00s\nsys\t0m 0.20s\n\
                   bench: ovs-dpctl dump-flows | parse (awk: split key fields and stats)\n10000 3 4\n\
                   real\t0m 2.00s\nuser\t0m 1.50s\nsys\t0m 0.30s\n\
                   bench: pinflow flows --datapath > /dev/null (dump + decode + render)\n\
                   real 0.40\nuser 0.20\nsys 0.10\n";
        let b = parse_guest_bench(log);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].target, 10_000);
        assert_eq!(b[0].held, "9998");
        let parse = b[0].times["parse"];
        assert!((parse.user + parse.sys - 1800.0).abs() < 1e-6);
        let render = b[0].times["render"];
        assert!((render.real - 400.0).abs() < 1e-6);
        assert!(!b[0].times.contains_key("count"));
    }

    #[test]
    fn conntrack_verdict_wants_the_kernel_count_under_the_right_instance() {
        let kernel = "zone 5 13\nzone 6 7\nzone0-committed 60\ncount 82\n";
        let metrics = "pinflow_conntrack_entries{} 82.0\n\
             pinflow_conntrack_zone_entries{ct_zone=\"5\",domain=\"vmct-a\"} 13.0\n\
             pinflow_conntrack_zone_entries{ct_zone=\"6\",domain=\"\"} 7.0\n\
             pinflow_conntrack_zone_entries{ct_zone=\"other\",domain=\"\"} 62.0\n";
        let api = r#"{"up":true,"mode":"full","zones":[
            {"zone":5,"entries":13,"ports":[{"port":"v1","domain":"vmct-a"}]},
            {"zone":6,"entries":7,"ports":[{"port":"v2","domain":""}]}]}"#;
        let ok = conntrack_verdict(kernel, metrics, api);
        assert!(ok.is_ok(), "{ok:?}");
        // Under no instance, a count off by one, a port missing from the API, the kernel short.
        for (k, m, a, why) in [
            (
                kernel,
                metrics.replace("vmct-a", ""),
                api.to_string(),
                "zone 5",
            ),
            (
                kernel,
                metrics.replace("} 7.0", "} 6.0"),
                api.to_string(),
                "zone 6",
            ),
            (
                kernel,
                metrics.to_string(),
                api.replace(r#"{"port":"v2","domain":""}"#, ""),
                "zone 6",
            ),
            (
                "zone 5 12\nzone 6 7\n",
                metrics.to_string(),
                api.to_string(),
                "kernel",
            ),
            (
                kernel,
                metrics.replace("} 62.0", "} 63.0"),
                api.to_string(),
                "other",
            ),
            (
                kernel,
                metrics
                    .replace("} 62.0", "} 2.0")
                    .replace("} 82.0", "} 22.0"),
                api.to_string(),
                "other",
            ),
        ] {
            let e = conntrack_verdict(k, &m, &a).map_err(|e| e.to_string());
            assert!(e.as_ref().is_err_and(|e| e.contains(why)), "{why}: {e:?}");
        }
    }

    #[test]
    fn datapath_series_are_counted_per_port() {
        let log = "--- /metrics\n\
                   pinflow_ovs_datapath_flows{datapath=\"ovs-system\"} 10.0\n\
                   pinflow_ovs_vport_info{datapath=\"ovs-system\",port=\"br0\",type=\"internal\"} 1.0\n\
                   pinflow_ovs_vport_info{datapath=\"ovs-system\",port=\"v1\",type=\"netdev\"} 1.0\n\
                   pinflow_ovs_upcalls_total{datapath=\"ovs-system\",port=\"v1\"} 15.0\n\
                   pinflow_ovs_flows{bridge=\"br0\",table=\"0\"} 3\n\
                   pinflow_source_up{source=\"ovs_datapath\"} 1\n\
                   --- next\npinflow_ovs_vport_info{port=\"v9\",type=\"netdev\"} 1\n";
        let (per_port, ports, host, _) = datapath_series(log).unwrap_or_default();
        assert_eq!((per_port, ports, host), (2.0, 1, 2));
    }
}
