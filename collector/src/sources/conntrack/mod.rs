//! The kernel's connection tracking table, counted per conntrack zone, and its size against its
//! limit (`nf_conntrack_count` / `nf_conntrack_max`). Neutron's openvswitch firewall gives every
//! network on the host its own zone (`ct(zone=NXM_NX_REG6[0..15])`), so the per-zone count is the
//! conntrack pressure of the instances on that network; the engine joins zones to ports and
//! instances through the flows that load `reg6` (`model::conntrack`).
//! This module only reads: procfs for the total and the limit, [`Ctnetlink`] for the zones.
//!
//! # Kernel interface: ctnetlink dumps, whole or filtered by zone, whichever costs less
//!
//! Measured on this project's testbed (kernel 6.18, 2 shared vCPUs, release build; the table of a
//! private network namespace filled with UDP entries spread evenly over 10 zones, created with
//! ctnetlink `IPCTNL_MSG_CT_NEW`; 262 144 hash buckets, the default here; best of 3; CPU is the
//! thread's user + system time, and a dump's kernel work runs in its `recvmsg`):
//!
//! | read | 100 000 entries | 1 000 000 entries |
//! |---|---|---|
//! | full dump, counted per zone here | 189 ms CPU, 19 MiB sent | 1 909 ms CPU (49 ms of it in user space), 191 MiB sent |
//! | dump filtered to one zone (`CTA_ZONE`), 10 % of the entries | 41 ms | 399 ms |
//! | dump filtered to a zone with no entries (the kernel's walk alone) | 24 ms | 246 ms |
//! | one filtered dump per zone, 10 zones | 415 ms | 3 989 ms |
//! | `nf_conntrack_count` + `nf_conntrack_max` (procfs) | 0.01 ms | 0.01 ms |
//!
//! Reproduce: `cargo build --release -p pinflow --example conntrack_cost && sudo
//! target/release/examples/conntrack_cost 100000 1000000` (collector/examples/conntrack_cost.rs; it
//! works in a network namespace of its own and raises the global `nf_conntrack_max` for the run
//! only). Memory does not grow with the table: `pinflow check` (one full dump; debug build) run in
//! the filled namespace (`conntrack_cost N -- /usr/bin/time -v target/debug/pinflow check …`)
//! peaks at 21.2 MiB RSS with 1 000 entries and 21.7 MiB with 1 000 000.
//!
//! So a dump costs ~0.25 µs per entry to walk and ~1.66 µs per entry sent (97 % in the kernel:
//! `ctnetlink_fill_info` and the copy; counting here is ~0.05 µs), and a filter saves the sending,
//! not the walk. The pipeline therefore picks per poll, from the last poll's numbers
//! (`engine::conntrack`): one full dump when the zones the flows load hold most entries
//! or are many (a Neutron hypervisor: every instance's traffic is in its network's zone), one
//! filtered dump per zone when the host's own connections dominate (a hypervisor that is also a
//! Kubernetes node, NAT in zone 0), and no dump at all when no flow loads a zone (procfs has the
//! total). Filtered dumps need Linux ≥ 6.8 (`CTA_ZONE` in dump requests, checked here on 6.18);
//! older kernels ignore the filter and send everything, which the pipeline notices (entries of
//! other zones in the reply) and answers with full dumps from then on. Every dump counts and
//! stores nothing per entry, and the pause after a poll is at least 100 times its duration
//! (≤ 1 % of a core: a 2 s dump at 1 000 000 entries is repeated every 200 s, not every 30 s).
//!
//! Rejected:
//! - The OVS `ovs_ct_limit` generic netlink family (`OVS_CT_LIMIT_CMD_GET`) answers per zone in
//!   O(zones) and needs no privilege, but its counts come from `nf_conncount`, which counts only
//!   the connections OVS committed while a limit was configured for that zone (`ovs-appctl
//!   dpctl/ct-set-limits`): on a host without zone limits it reports nothing true, and setting
//!   limits is a write pinflow must not do. Worth reading once operators set zone limits (it
//!   would add the limit per zone).
//! - eBPF on conntrack events (kprobes/fentry on insertion and destruction, a per-zone map) makes
//!   a read O(zones) but costs on every connection of the host, needs a dump anyway to start
//!   from what existed before it attached, and hooks internal, often inlined functions that
//!   change between kernel versions. ctnetlink's event groups (`NFNLGRP_CONNTRACK_NEW`/`DESTROY`)
//!   cost a message per connection and lose events on overflow (`ENOBUFS`), which again means a
//!   resync dump. Not worth it for a gauge read every 30 s.
//! - `IPCTNL_MSG_CT_GET_STATS` / `_STATS_CPU` and `nf_conntrack_count` are global, without zones
//!   (the total and the limit are read from procfs, which needs no privilege; `GET_STATS` only
//!   proves access when there is nothing to dump).
//! - `/proc/net/nf_conntrack`: text, only with `CONFIG_NF_CONNTRACK_PROCFS`, and slower to parse.
//!
//! Crates: framing of the request and the replies is a few lines over `netlink-sys` (socket) and
//! `netlink-packet-core` (`NetlinkBuffer`, `NlasIterator`), as in [`crate::sources::rtnl`].
//! `netlink-packet-netfilter` 0.4 does model ctnetlink (`ConntrackMessage::{New,Get,Delete}` with
//! tuples, status, timeout, mark; the zone falls into `Other`) and was rejected: it parses every
//! entry into a `Vec` of attributes with nested `Vec`s (several allocations per entry, a million
//! per poll at 1 000 000 entries) to read one `u16`, and would add `derive_more` 0.99 with `syn`
//! 1 (a second proc-macro stack beside the tree's `syn` 2) to the build. Here a dump allocates nothing per entry: one reused 64 KiB
//! receive buffer and a map of zones (at most 65 536 keys), whatever the table size.
//!
//! Privilege: every nfnetlink request needs `CAP_NET_ADMIN` in the network namespace (checked at
//! send time, so it cannot be opened before `serve` drops its capabilities); `serve` keeps it when
//! `[conntrack] enabled` (off by default for that reason). Without `nf_conntrack` loaded (no
//! `/proc/sys/net/netfilter/nf_conntrack_max`) nothing is sent, so the dump never makes the
//! kernel load `nf_conntrack_netlink` (and with it `nf_conntrack`) on a host that does not track
//! connections; the source is down with that reason.

mod ctnetlink;

pub use ctnetlink::{CtError, Ctnetlink, DumpCounts};

use crate::sources::{CanRun, HostPaths, SourceDef};
use std::path::{Path, PathBuf};

/// Source name in `pinflow_source_*`.
pub(crate) const SOURCE: SourceDef = SourceDef {
    name: "conntrack",
    collector: "datapath",
    can_run: |host| CanRun::of(probe(host)),
};

fn probe(_: &HostPaths) -> Result<String, String> {
    // This process's procfs, not `--proc-root`: see `engine::conntrack`'s `OWN_PROC`.
    let limits = read_limits(Path::new("/proc"))?;
    let mut ct = Ctnetlink::open().map_err(|e| e.to_string())?;
    let d = ct.dump(None).map_err(|e| e.to_string())?;
    Ok(format!(
        "{} of {} entries, {} zone(s)",
        limits.count,
        limits.max,
        d.zones.len()
    ))
}

/// The table's size and limit, from procfs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// `nf_conntrack_count`: entries in this network namespace.
    pub count: u64,
    /// `nf_conntrack_max`: the host's limit (new connections are dropped beyond it).
    pub max: u64,
}

fn sysctl_dir(proc_root: &Path) -> PathBuf {
    proc_root.join("sys/net/netfilter")
}

/// Reads `nf_conntrack_count` and `nf_conntrack_max`; `Err` says why (module not loaded…).
pub fn read_limits(proc_root: &Path) -> Result<Limits, String> {
    let dir = sysctl_dir(proc_root);
    let read = |name: &str| -> Result<u64, String> {
        let p = dir.join(name);
        match std::fs::read_to_string(&p) {
            Ok(s) => s
                .trim()
                .parse()
                .map_err(|e| format!("{}: {e}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
                "connection tracking is not loaded (no {}; module nf_conntrack)",
                p.display()
            )),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    };
    Ok(Limits {
        max: read("nf_conntrack_max")?,
        count: read("nf_conntrack_count")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_from_procfs_and_a_clear_reason_without_the_module() {
        let root = tempfile::tempdir().unwrap();
        let err = read_limits(root.path()).unwrap_err();
        assert!(err.contains("not loaded"), "{err}");
        let dir = sysctl_dir(root.path());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("nf_conntrack_max"), "262144\n").unwrap();
        std::fs::write(dir.join("nf_conntrack_count"), "17\n").unwrap();
        assert_eq!(
            read_limits(root.path()).unwrap(),
            Limits {
                count: 17,
                max: 262_144
            }
        );
        std::fs::write(dir.join("nf_conntrack_count"), "x\n").unwrap();
        assert!(read_limits(root.path()).is_err());
    }
}
