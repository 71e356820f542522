//! An aya `EbpfLoader` that does not parse the kernel's BTF.
//!
//! `EbpfLoader::new()` (aya 0.14) always reads and parses `/sys/kernel/btf/vmlinux` for CO-RE
//! relocations: ~5 MiB on disk, 126 000 types, ~30 MiB of heap while parsed, which was the
//! daemon's whole peak memory (VmHWM 43 MB against ~9 MB in steady state). pinflow's programs use
//! no CO-RE relocations (kernel offsets come from [`super::btf`] and tracefs as globals), so the
//! parse buys nothing, and the loader has no constructor without it.
//!
//! [`new_loader`] therefore creates the loader on a short-lived thread that first moves into a
//! private mount namespace (a slave of the host's: nothing it mounts propagates back) and covers
//! `/sys/kernel/btf` with an empty read-only tmpfs; aya finds no BTF and the loader has none.
//! The namespace dies with the thread; the loader (plain data) is handed back and used as usual.
//! This needs `CAP_SYS_ADMIN`, which `pinflow serve` holds at start-up, where the probes load,
//! before it drops capabilities (commands/capabilities.rs). Without it (a container granted only
//! `CAP_BPF` + `CAP_PERFMON`, or a probe that attaches after the drop) the loader is created
//! normally, aya parses the BTF, and the log says so.

use std::ffi::CStr;
use std::path::Path;

use aya::EbpfLoader;

use super::btf::VMLINUX_BTF;

/// Directory covered in the loader thread's mount namespace.
const BTF_DIR: &CStr = c"/sys/kernel/btf";

/// A loader without kernel BTF when the kernel's BTF can be hidden from aya (see the module
/// docs), else aya's default loader (which parses it). Logs which one it is.
pub(crate) fn new_loader(what: &str) -> EbpfLoader<'static> {
    let hidden = std::thread::Builder::new()
        .name("pinflow-bpf-load".into())
        .spawn(|| -> Result<EbpfLoader<'static>, String> {
            hide_kernel_btf()?;
            Ok(EbpfLoader::new())
        })
        .map_err(|e| format!("cannot start the loader thread: {e}"))
        .and_then(|t| {
            t.join()
                .map_err(|_| "the loader thread panicked".to_string())?
        });
    match hidden {
        Ok(loader) => {
            tracing::debug!("{what}: eBPF loader created without parsing the kernel's BTF");
            loader
        }
        Err(reason) => {
            tracing::info!(
                "{what}: cannot hide the kernel's BTF from the eBPF loader ({reason}); it parses \
                 all of {VMLINUX_BTF} (peak memory ~30 MiB higher while it loads)"
            );
            EbpfLoader::new()
        }
    }
}

/// Moves the calling thread into a private mount namespace where `/sys/kernel/btf` is empty.
#[allow(unsafe_code)] // unshare(2) and mount(2) have no safe wrapper in the workspace's crates.
fn hide_kernel_btf() -> Result<(), String> {
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: unshare takes flags only; CLONE_NEWNS also unshares this thread's fs struct, so the
    // rest of the process keeps the host's namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(os("unshare(CLONE_NEWNS), needs CAP_SYS_ADMIN"));
    }
    // SAFETY: valid NUL-terminated strings or null where mount(2) allows null.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(os("making the mounts slaves"));
    }
    // SAFETY: as above; the data argument is a NUL-terminated option string.
    let rc = unsafe {
        libc::mount(
            c"pinflow-no-btf".as_ptr(),
            BTF_DIR.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"size=4k,mode=0555".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(os("covering /sys/kernel/btf"));
    }
    if Path::new(VMLINUX_BTF).exists() {
        return Err(format!("{VMLINUX_BTF} still visible"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host namespace still sees the BTF after a loader was made (the mount stayed private).
    #[test]
    fn hiding_stays_in_the_loader_thread() {
        if !Path::new(VMLINUX_BTF).exists() {
            println!("SKIP: {VMLINUX_BTF} missing (kernel without BTF)");
            return;
        }
        let hidden = std::thread::spawn(hide_kernel_btf).join().expect("thread");
        if let Err(e) = &hidden {
            println!("SKIP: cannot hide the BTF here ({e})");
        }
        assert!(Path::new(VMLINUX_BTF).exists(), "host namespace unchanged");
        let _loader = new_loader("test");
        assert!(Path::new(VMLINUX_BTF).exists(), "host namespace unchanged");
    }
}
