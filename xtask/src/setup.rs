//! `cargo xtask setup`: make a fresh Debian 12 machine of this kind ready, skipping what is present.

use crate::util::{output, sh, step};
use anyhow::{Context as _, bail};
use std::path::Path;

/// Debian packages pinflow's build, testbeds and tests need.
const PACKAGES: &[&str] = &[
    // eBPF build: bpf-linker is built against LLVM 22.
    "llvm-22-dev",
    "clang-22",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // libvirt/KVM testbed.
    "qemu-system-x86",
    "libvirt-daemon-system",
    "libvirt-clients",
    // OVS testbed.
    "openvswitch-switch",
    "iproute2",
    "ethtool",
    // OVS kernel-datapath guest (cargo xtask vm-test): initramfs tools and the guest's userspace.
    "busybox-static",
    "cpio",
    "zstd",
    "kmod",
    "dash",
    "iputils-ping",
    // Prometheus + promtool for scrape checks.
    "prometheus",
    "prometheus-alertmanager",
    // The peer exporter the pinning bench compares against (`cargo xtask bench --only pinning`).
    "prometheus-libvirt-exporter",
    // Shipping: the static musl build (C parts of ring and mimalloc), the image, its runtime
    // (Debian's crun refuses this host's hybrid cgroups), bcrypt hashes for the web-config test.
    "musl-tools",
    "podman",
    "runc",
    "apache2-utils",
    // Benchmarks and eBPF inspection.
    "linux-perf",
    "bpftool",
    "bpftrace",
    // Peak RSS of one-shot commands in the flow bench (GNU time's %M).
    "time",
    // Least-privilege tests: the daemon traced through a testbed scenario (setpriv is util-linux).
    "strace",
    // Conntrack tests: entries listed by zone and traffic steered into zones in a netns.
    "conntrack",
    "nftables",
];

fn installed(pkg: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${db:Status-Abbrev}", pkg])
        .is_some_and(|s| s.starts_with("ii"))
}

/// Runs every setup step.
pub fn setup() -> anyhow::Result<()> {
    apt()?;
    rust_src()?;
    musl_target()?;
    bpf_linker()?;
    python_tools()?;
    tracefs()?;
    Ok(())
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        step("apt packages: all present");
        return Ok(());
    }
    step(&format!("apt packages: installing {}", missing.join(" ")));
    sh("apt-get", &["update", "-qq"])?;
    let mut args: Vec<String> = [
        "install",
        "-y",
        "-qq",
        "--allow-downgrades",
        "-o",
        "DPkg::Lock::Timeout=600",
    ]
    .map(String::from)
    .to_vec();
    args.extend(missing.iter().map(|s| s.to_string()));
    if missing.contains(&"qemu-system-x86") {
        // The image's qemu-utils 10.x (backports) breaks bookworm's qemu-system 7.2: install the
        // matching qemu-utils next to it.
        let madison = output("apt-cache", &["madison", "qemu-system-x86"]).unwrap_or_default();
        if let Some(v) = madison.lines().next().and_then(|l| l.split('|').nth(1)) {
            args.push(format!("qemu-utils={}", v.trim()));
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let st = std::process::Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !st.success() {
        bail!("apt-get install failed ({st})");
    }
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let have = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if have {
        step("nightly rust-src: present");
        return Ok(());
    }
    step("nightly rust-src: installing");
    sh(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
    )
}

fn musl_target() -> anyhow::Result<()> {
    let have = output("rustup", &["target", "list", "--installed"])
        .is_some_and(|s| s.lines().any(|l| l.trim() == crate::dist::TARGET));
    if have {
        step("rust target x86_64-unknown-linux-musl: present");
        return Ok(());
    }
    step("rust target x86_64-unknown-linux-musl: installing (static build)");
    sh("rustup", &["target", "add", crate::dist::TARGET])
}

/// Offline schema validation of deploy/kubernetes: PyPI `kubernetes-validate` (the Kubernetes API
/// schemas) and npm `@kubernetes-models/prometheus-operator` (the operator's CRD schemas, pinned
/// by tests/crd-schema/package-lock.json).
fn python_tools() -> anyhow::Result<()> {
    if output("kubernetes-validate", &["--version"]).is_some() {
        step("kubernetes-validate: present");
    } else {
        step("kubernetes-validate (PyPI): installing");
        sh(
            "python3",
            &["-m", "pip", "install", "-q", "kubernetes-validate==1.37.0"],
        )?;
    }
    let dir = crate::util::workspace_root().join("tests/crd-schema");
    if dir
        .join("node_modules/@kubernetes-models/prometheus-operator")
        .exists()
    {
        step("prometheus-operator CRD schemas (npm): present");
        return Ok(());
    }
    step("prometheus-operator CRD schemas (npm): installing");
    let st = std::process::Command::new("npm")
        .args(["ci", "--silent", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .context("cannot run npm")?;
    if !st.success() {
        bail!("npm ci in {} failed ({st})", dir.display());
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    if output("bpf-linker", &["--version"]).is_some_and(|v| v.contains("0.13.")) {
        step("bpf-linker 0.13: present");
        return Ok(());
    }
    step("bpf-linker 0.13 (LLVM 22): building (~1 min)");
    // Without LLVM_PREFIX its build script finds LLVM 14's llvm-config and fails to link.
    let st = std::process::Command::new("cargo")
        .args([
            "+stable",
            "install",
            "bpf-linker",
            "--version",
            "0.13.0",
            "--locked",
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .status()
        .context("cannot run cargo install")?;
    if !st.success() {
        bail!("installing bpf-linker failed ({st})");
    }
    Ok(())
}

/// cargo-fuzz (libFuzzer driver) for `cargo xtask fuzz`; the targets build with nightly.
pub fn cargo_fuzz() -> anyhow::Result<()> {
    if output("cargo", &["+nightly", "fuzz", "--version"]).is_some() {
        step("cargo-fuzz: present");
        return Ok(());
    }
    step("cargo-fuzz: installing (~2 min)");
    let st = std::process::Command::new("cargo")
        .args([
            "+stable",
            "install",
            "cargo-fuzz",
            "--version",
            "0.13.2",
            "--locked",
        ])
        .status()
        .context("cannot run cargo install")?;
    if !st.success() {
        bail!("installing cargo-fuzz failed ({st})");
    }
    Ok(())
}

fn tracefs() -> anyhow::Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        step("tracefs: mounted");
        return Ok(());
    }
    step("tracefs: mounting at /sys/kernel/tracing (for the classic-tracepoint fallback)");
    sh(
        "mount",
        &["-t", "tracefs", "tracefs", "/sys/kernel/tracing"],
    )
}
