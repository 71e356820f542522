//! An aya `EbpfLoader` that does not parse the kernel's BTF.
//!
//! `EbpfLoader::new()` (aya 0.14) always reads and parses `/sys/kernel/btf/vmlinux` for CO-RE
//! relocations: ~5 MiB on disk, 126 000 types, ~30 MiB of heap while parsed, which was the
//! daemon's whole peak memory (VmHWM 43 MB against ~9 MB in steady state). pinflow's programs use
//! no CO-RE relocations (kernel offsets come from [`super::btf`] and tracefs as globals), so the
//! parse buys nothing, and the loader has no constructor without it.
//!
//! [`new_loader`] therefore creates the loader on a short-lived thread that first forbids itself
//! to open files: a seccomp filter on that thread alone (no `TSYNC`, after `no_new_privs`, also
//! that thread's alone) makes `open`/`openat`/`openat2` fail with `ENOENT`. aya finds no BTF, the
//! loader has none, and the thread (with its filter) ends; the loader, plain data, is handed back
//! and used as usual. No capability is needed, so this works at start-up and for a probe that
//! attaches after `pinflow serve` dropped its capabilities (the OVS datapath probe), in a
//! container as on the host. Where seccomp is unavailable the loader is created normally, aya
//! parses the BTF, and the log says so.
//!
//! The one object holds every probe's maps, and aya creates all of them whichever programs a
//! loader loads: [`new_loader`] gives the other probes' maps ([`MAPS`]) tiny sizes.

use aya::EbpfLoader;
use collector_common::{ovs_dp, pin_events, sched};

use super::btf::VMLINUX_BTF;

/// The probes that load the object, each with its own loader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// The `sched_switch` placement probe.
    Sched,
    /// The pinning event probe.
    PinEvents,
    /// The OVS kernel-datapath probe.
    Datapath,
}

impl Probe {
    fn name(self) -> &'static str {
        match self {
            Probe::Sched => "sched probe",
            Probe::PinEvents => "pinning event probe",
            Probe::Datapath => "datapath probe",
        }
    }
}

/// Every resizable map of the object: the probe that uses it, its name, and the size of the copy
/// another probe's loader creates (a ring buffer needs a page).
const MAPS: [(Probe, &str, u32); 13] = [
    (Probe::Sched, sched::WATCH_MAP, 1),
    (Probe::Sched, sched::DEDICATED_MAP, 1),
    (Probe::Sched, sched::STOLEN_MAP, 1),
    (Probe::Sched, sched::THREADS_MAP, 1),
    (Probe::Sched, sched::INTRUDERS_MAP, 2),
    (Probe::Sched, sched::STATS_MAP, 1),
    (Probe::Sched, sched::FILTER_MAP, 1),
    (Probe::PinEvents, pin_events::WATCH_MAP, 1),
    (Probe::PinEvents, pin_events::PENDING_MAP, 1),
    (Probe::PinEvents, pin_events::EVENTS_MAP, 4096),
    (Probe::Datapath, ovs_dp::UPCALL_MAP, 1),
    (Probe::Datapath, ovs_dp::DROP_MAP, 1),
    (Probe::Datapath, ovs_dp::ACTION_MAP, 1),
];

/// The loader of `probe`: without kernel BTF when aya can be kept from reading it (see the
/// module docs), else aya's default loader (which parses it; logged), and with the other probes'
/// maps tiny.
pub(crate) fn new_loader(probe: Probe) -> EbpfLoader<'static> {
    let mut loader = btf_free_loader(probe.name());
    for (owner, map, size) in MAPS {
        if owner != probe {
            loader.map_max_entries(map, size);
        }
    }
    loader
}

/// A loader without kernel BTF when aya can be kept from reading it, else aya's default one.
fn btf_free_loader(what: &str) -> EbpfLoader<'static> {
    let hidden = std::thread::Builder::new()
        .name("pinflow-bpf-load".into())
        .spawn(|| -> Result<EbpfLoader<'static>, String> {
            forbid_opening_files()?;
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
                "{what}: cannot keep the eBPF loader from reading the kernel's BTF ({reason}); it parses \
                 all of {VMLINUX_BTF} (peak memory ~30 MiB higher while it loads)"
            );
            EbpfLoader::new()
        }
    }
}

/// `AUDIT_ARCH_*` of this build's architecture (include/uapi/linux/audit.h), and the syscalls
/// that open a path on it.
#[cfg(target_arch = "x86_64")]
const ARCH: (u32, &[libc::c_long]) = (
    0xc000_003e,
    &[libc::SYS_open, libc::SYS_openat, libc::SYS_openat2],
);
#[cfg(target_arch = "aarch64")]
const ARCH: (u32, &[libc::c_long]) = (0xc000_00b7, &[libc::SYS_openat, libc::SYS_openat2]);

/// Makes every later `open`/`openat`/`openat2` of the calling thread fail with `ENOENT`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[allow(unsafe_code)] // prctl(2) with a seccomp program has no safe wrapper in the workspace's crates.
fn forbid_opening_files() -> Result<(), String> {
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    let (arch, opens) = ARCH;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let n = opens.len();
    // 0: load arch; 1: other arch -> allow; 2: load nr; 3..3+n: an open -> deny; allow; deny.
    let mut prog = vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: u8::try_from(n + 1).map_err(|_| "filter too long")?,
            k: arch,
        },
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
    ];
    for (m, nr) in opens.iter().enumerate() {
        prog.push(libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: u8::try_from(n - m).map_err(|_| "filter too long")?,
            jf: 0,
            k: u32::try_from(*nr).map_err(|_| "syscall number")?,
        });
    }
    prog.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW));
    prog.push(stmt(
        libc::BPF_RET | libc::BPF_K,
        libc::SECCOMP_RET_ERRNO | (libc::ENOENT as u32 & libc::SECCOMP_RET_DATA),
    ));
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| "filter too long")?,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only; it applies to the calling thread.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(os("no_new_privs"));
    }
    // SAFETY: `fprog` points at `prog`, alive for the call; the kernel copies the program.
    // Without SECCOMP_FILTER_FLAG_TSYNC the filter binds the calling thread only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(os("seccomp filter"));
    }
    match std::fs::File::open(VMLINUX_BTF) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("opening {VMLINUX_BTF} failed otherwise: {e}")),
        Ok(_) => Err(format!("{VMLINUX_BTF} still opens")),
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn forbid_opening_files() -> Result<(), String> {
    Err("no seccomp filter for this architecture".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The filter binds the loader thread only: the rest of the process still opens files.
    #[test]
    fn only_the_loader_thread_loses_open() {
        if !Path::new(VMLINUX_BTF).exists() {
            println!("SKIP: {VMLINUX_BTF} missing (kernel without BTF)");
            return;
        }
        let in_thread = std::thread::spawn(|| {
            forbid_opening_files()?;
            Ok::<_, String>(std::fs::File::open("/proc/self/status").map(|_| ()))
        })
        .join()
        .expect("thread");
        match in_thread {
            Ok(open) => assert_eq!(
                open.map_err(|e| e.kind()),
                Err(std::io::ErrorKind::NotFound),
                "every open fails in the filtered thread"
            ),
            Err(e) => println!("SKIP: no seccomp here ({e})"),
        }
        assert!(
            std::fs::File::open(VMLINUX_BTF).is_ok(),
            "this thread still opens files"
        );
        let _loader = new_loader(Probe::Sched);
        assert!(std::fs::File::open("/proc/self/status").is_ok());
    }
}
