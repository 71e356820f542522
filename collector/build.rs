//! Builds the eBPF object (collector-ebpf) with aya-build and leaves it in OUT_DIR for embedding.
//!
//! `PINFLOW_SKIP_EBPF=1` writes an empty placeholder instead, so `cargo check`/clippy work on a
//! machine without bpf-linker; the loader then refuses with "eBPF object not built".
//!
//! It also records the git revision and the rustc version for `pinflow --version` and
//! `pinflow_build_info` (`PINFLOW_REVISION` overrides the revision when building outside git),
//! and links the glibc `pinflow` binary non-PIE (see [`link_non_pie`]).
use std::path::PathBuf;
use std::process::Command;

fn main() -> anyhow::Result<()> {
    build_facts();
    link_non_pie();
    println!("cargo:rerun-if-env-changed=PINFLOW_SKIP_EBPF");
    if std::env::var_os("PINFLOW_SKIP_EBPF").is_some_and(|v| v == "1") {
        let out = PathBuf::from(std::env::var("OUT_DIR")?).join("pinflow-ebpf");
        std::fs::write(out, [])?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow::anyhow!("collector has no parent directory"))?
        .join("collector-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "collector-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// Sets `PINFLOW_GIT_REVISION` and `PINFLOW_RUSTC_VERSION` for the crate.
fn build_facts() {
    println!("cargo:rerun-if-env-changed=PINFLOW_REVISION");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let revision = std::env::var("PINFLOW_REVISION")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Re-run when HEAD moves (a commit, a checkout).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            let common = git(&["rev-parse", "--git-common-dir"]).unwrap_or(dir.clone());
            let common = if common.starts_with('/') {
                common
            } else {
                format!("{dir}/../{common}")
            };
            println!("cargo:rerun-if-changed={common}/{r}");
            println!("cargo:rerun-if-changed={common}/packed-refs");
        }
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "rustc unknown".into());
    println!("cargo:rustc-env=PINFLOW_GIT_REVISION={revision}");
    println!("cargo:rustc-env=PINFLOW_RUSTC_VERSION={rustc_version}");
}

/// Links the `pinflow` binary of a glibc build (`cargo build --release`, what the benches
/// measure) as a position-dependent executable, as `cargo xtask dist` already links the musl one
/// (.cargo/config.toml): a PIE carries ~24 000 relative relocations that the loader applies at
/// every start, copying the pages they touch on write, ~0.5 ms of a one-shot command's CPU
/// (`pinflow flows` on an empty bridge: 2.6 vs 2.3 ms, 276 vs 182 page faults). The price is the
/// same as the static build's: the binary's own text and data are not randomised (shared
/// libraries, stack, heap and mmap still are). Only the bins: build scripts, proc macros, tests
/// and examples are untouched; the objects stay position-independent code, which the linker
/// resolves to fixed addresses.
fn link_non_pie() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
