//! Builds the eBPF object (collector-ebpf) with aya-build and leaves it in OUT_DIR for embedding.
//!
//! `PINFLOW_SKIP_EBPF=1` writes an empty placeholder instead, so `cargo check`/clippy work on a
//! machine without bpf-linker; the loader then refuses with "eBPF object not built".
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
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
