//! The captured host of the fixtures: libvirt 9's live status of `fx-nova` (Nova metadata, one tap
//! `tapfx000a1`) in a temporary state dir, and the matching procfs/cgroupfs tree (cgroup v1, libvirt
//! layout). pinflow reads it with the source flags of [`CapturedHost::args`], no privileges needed.

use std::path::PathBuf;

/// `collector/tests/fixtures` of this workspace.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../collector/tests/fixtures")
}

/// A state dir holding `fx-nova.xml`; files may be added or removed while pinflow runs.
pub struct CapturedHost {
    /// libvirt's state dir stand-in.
    pub state: tempfile::TempDir,
}

impl CapturedHost {
    /// Copies `fx-nova.xml` into a fresh state dir.
    pub fn new() -> CapturedHost {
        let state = tempfile::tempdir().expect("tempdir");
        let h = CapturedHost { state };
        h.add("libvirt/run-libvirt-qemu/fx-nova.xml", "fx-nova.xml");
        h
    }

    /// Copies fixture `src` (relative to [`fixtures`]) into the state dir as `name`.
    pub fn add(&self, src: &str, name: &str) {
        std::fs::copy(fixtures().join(src), self.state.path().join(name))
            .unwrap_or_else(|e| panic!("copy {src}: {e}"));
    }

    /// `--libvirt-state-dir`, `--proc-root`, `--sys-root` pointing at the captured host.
    pub fn args(&self) -> Vec<String> {
        let hostfs = fixtures().join("hostfs/v1-libvirt");
        [
            ("--libvirt-state-dir", self.state.path().to_path_buf()),
            ("--proc-root", hostfs.join("proc")),
            ("--sys-root", hostfs.join("sys")),
        ]
        .into_iter()
        .flat_map(|(flag, p)| [flag.to_string(), p.to_string_lossy().into_owned()])
        .collect()
    }
}

impl Default for CapturedHost {
    fn default() -> Self {
        Self::new()
    }
}
