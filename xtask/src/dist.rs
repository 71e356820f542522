//! `cargo xtask dist`: the shipped artifacts in `target/pinflow-dist/`: a static x86_64 musl binary (no
//! dynamic section, no interpreter, the eBPF object embedded), its man page and shell
//! completions; with `--image`, the FROM-scratch container image built with podman.

use crate::util::{cargo, step, workspace_root};
use anyhow::{Context as _, bail, ensure};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The static target.
pub const TARGET: &str = "x86_64-unknown-linux-musl";
/// Image name `--image` builds (the DaemonSet names it; operators retag it for their registry).
pub const IMAGE: &str = concat!("localhost/pinflow:", env!("CARGO_PKG_VERSION"));

/// Flags of `cargo xtask dist`.
#[derive(clap::Args, Default)]
pub struct DistArgs {
    /// Also build the container image (deploy/container/Containerfile) with podman.
    #[arg(long)]
    pub image: bool,
}

/// Builds and checks the artifacts; returns the dist directory.
pub fn dist(a: &DistArgs) -> anyhow::Result<PathBuf> {
    step(&format!("dist: static pinflow ({TARGET}, profile dist)"));
    cargo(&[
        "build",
        "--profile",
        "dist",
        "--target",
        TARGET,
        "-p",
        "pinflow",
        "--bin",
        "pinflow",
    ])?;
    let root = workspace_root();
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let built = target_dir.join(TARGET).join("dist/pinflow");
    let bytes =
        std::fs::read(&built).with_context(|| format!("cannot read {}", built.display()))?;
    check_static(&bytes).with_context(|| format!("{} is not a static binary", built.display()))?;
    ensure!(
        embedded_bpf_objects(&bytes) >= 1,
        "{} carries no eBPF object (built with PINFLOW_SKIP_EBPF=1?)",
        built.display()
    );
    let out = target_dir.join("pinflow-dist");
    std::fs::create_dir_all(out.join("completions"))?;
    let bin = out.join("pinflow");
    // Replace, never write through: a running copy of the old binary may hold it open.
    let _ = std::fs::remove_file(&bin);
    std::fs::copy(&built, &bin)?;
    let generated = [
        (vec!["man"], "pinflow.1"),
        (vec!["man", "serve"], "pinflow-serve.1"),
        (vec!["man", "check"], "pinflow-check.1"),
        (vec!["man", "pinning"], "pinflow-pinning.1"),
        (vec!["man", "flows"], "pinflow-flows.1"),
        (vec!["completion", "bash"], "completions/pinflow.bash"),
        (vec!["completion", "zsh"], "completions/_pinflow"),
        (vec!["completion", "fish"], "completions/pinflow.fish"),
    ];
    for (args, file) in generated {
        let o = Command::new(&bin).args(&args).output()?;
        ensure!(
            o.status.success() && !o.stdout.is_empty(),
            "pinflow {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::write(out.join(file), o.stdout)?;
    }
    println!(
        "dist: {} ({:.1} MB, static, no dynamic section), pinflow*.1, completions/",
        bin.display(),
        bytes.len() as f64 / 1e6
    );
    if a.image {
        build_image(&out)?;
    }
    Ok(out)
}

/// Builds the image from `dir` (which holds the static binary) and prints its size.
pub fn build_image(dir: &Path) -> anyhow::Result<()> {
    step(&format!("dist: image {IMAGE} (podman, FROM scratch)"));
    let containerfile = workspace_root().join("deploy/container/Containerfile");
    let st = Command::new("podman")
        .args(["build", "-q", "-t", IMAGE, "-f"])
        .arg(&containerfile)
        .arg(dir)
        .status()
        .context("cannot run podman")?;
    ensure!(st.success(), "podman build failed ({st})");
    let size = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Size}}", IMAGE])
        .output()?;
    println!(
        "dist: image {IMAGE}: {} bytes",
        String::from_utf8_lossy(&size.stdout).trim()
    );
    Ok(())
}

/// An x86_64 ELF executable that needs no loader: `ET_EXEC`, no `PT_INTERP`, no `PT_DYNAMIC`.
fn check_static(elf: &[u8]) -> anyhow::Result<()> {
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    ensure!(
        elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2,
        "not a 64-bit ELF file"
    );
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([elf[o], elf[o + 1], elf[o + 2], elf[o + 3]]);
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap_or([0; 8]));
    ensure!(u16_at(16) == 2, "ELF type {} is not ET_EXEC", u16_at(16));
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54) as usize, u16_at(56));
    for i in 0..phnum as usize {
        let o = phoff + i * phentsize;
        ensure!(o + 4 <= elf.len(), "program header {i} out of bounds");
        match u32_at(o) {
            PT_DYNAMIC => bail!("it has a dynamic section (PT_DYNAMIC)"),
            PT_INTERP => bail!("it names an interpreter (PT_INTERP)"),
            _ => {}
        }
    }
    Ok(())
}

/// Number of embedded ELF objects for the BPF machine (`EM_BPF` = 247).
fn embedded_bpf_objects(bin: &[u8]) -> usize {
    bin.windows(20)
        .filter(|w| &w[..4] == b"\x7fELF" && u16::from_le_bytes([w[18], w[19]]) == 247)
        .count()
}
