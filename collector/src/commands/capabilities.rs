//! Least privilege for `pinflow serve` (`--drop-capabilities`, on by default): once the sched
//! probe is attached and the listening sockets are open, the process keeps only what it still
//! uses, and can never regain the rest.
//!
//! - Kept: `CAP_BPF` + `CAP_PERFMON` while the datapath eBPF probe may still attach (the
//!   datapath collector and `[datapath] ebpf` on: the probe attaches lazily when an OVS datapath
//!   appears, and again after the module was reloaded); `CAP_SYS_ADMIN` instead on kernels that
//!   predate `CAP_BPF` (< 5.8). `CAP_NET_ADMIN` with `[conntrack] enabled` (every ctnetlink
//!   request is checked for it when sent). Nothing otherwise. Only what the process had is kept.
//! - Dropped: everything else from the permitted and effective sets; the inheritable and ambient
//!   sets are cleared; the bounding set is cut to the kept set (when `CAP_SETPCAP` allows it;
//!   otherwise what is left is logged); `no_new_privs` is set, so not even an `execve` of a
//!   setuid or file-capability binary could raise anything again.
//!
//! Capabilities belong to a thread, and new threads inherit their creator's: the drop therefore
//! runs while the process has one thread, before the async runtime exists, and every thread
//! started later (pipelines, Tokio's blocking pool) inherits the reduced sets. The threads share
//! one address space, so a per-thread split (only the datapath poller keeping `CAP_BPF`) would
//! protect nothing; the process as a whole holds the kept set.

use anyhow::{Context as _, bail};
use caps::{CapSet, Capability, CapsHashSet};

/// What the daemon still needs once it has started: see the module docs.
pub(super) fn needed_after_start(datapath_bpf: bool, conntrack: bool) -> CapsHashSet {
    let mut keep = CapsHashSet::new();
    if datapath_bpf {
        if caps::runtime::thread_all_supported().contains(&Capability::CAP_BPF) {
            keep.extend([Capability::CAP_BPF, Capability::CAP_PERFMON]);
        } else {
            keep.insert(Capability::CAP_SYS_ADMIN);
        }
    }
    if conntrack {
        keep.insert(Capability::CAP_NET_ADMIN);
    }
    keep
}

/// What [`drop_to`] did, for the log.
#[derive(Debug)]
pub(super) struct Dropped {
    /// Capabilities kept (permitted and effective).
    pub(super) kept: String,
    /// Capabilities that were permitted and are gone.
    pub(super) dropped: String,
    /// The bounding set afterwards.
    pub(super) bounding: String,
}

fn names(set: &CapsHashSet) -> String {
    let mut v: Vec<String> = set.iter().map(ToString::to_string).collect();
    v.sort();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(",")
    }
}

/// The calling process's thread count, from `/proc/self/status`.
fn threads() -> anyhow::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Threads: line in /proc/self/status")
}

/// Reduces the process to `keep` (intersected with what it has): see the module docs. Must run
/// while the process has a single thread.
pub(super) fn drop_to(keep: &CapsHashSet) -> anyhow::Result<Dropped> {
    // The eBPF loader's short-lived thread (sources/sched_bpf/loader.rs) has been joined, but
    // the kernel may count it for a moment longer: give it up to 100 ms to be reaped.
    let mut n = threads()?;
    for _ in 0..100 {
        if n == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        n = threads()?;
    }
    if n != 1 {
        bail!(
            "{n} threads running: capabilities are per thread, so they must be dropped before any other thread starts"
        );
    }
    let permitted = caps::read(None, CapSet::Permitted)?;
    let kept: CapsHashSet = keep.intersection(&permitted).copied().collect();
    // The bounding set first: cutting it needs CAP_SETPCAP in the effective set.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::read(None, CapSet::Bounding)?.difference(&kept) {
            caps::drop(None, CapSet::Bounding, *cap)
                .with_context(|| format!("dropping {cap} from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient set")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable set")?;
    caps::set(None, CapSet::Effective, &kept).context("setting the effective set")?;
    caps::set(None, CapSet::Permitted, &kept).context("setting the permitted set")?;
    set_no_new_privs().context("setting no_new_privs")?;
    let now = caps::read(None, CapSet::Permitted)?;
    if now != kept || caps::read(None, CapSet::Effective)? != kept {
        bail!("the kernel kept {} (wanted {})", names(&now), names(&kept));
    }
    Ok(Dropped {
        kept: names(&kept),
        dropped: names(&permitted.difference(&kept).copied().collect()),
        bounding: names(&caps::read(None, CapSet::Bounding)?),
    })
}

#[allow(unsafe_code)] // prctl(PR_SET_NO_NEW_PRIVS) has no safe wrapper (the caps crate covers capabilities only).
fn set_no_new_privs() -> std::io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
