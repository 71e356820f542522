//! The kernel's connection tracking table, counted per conntrack zone, and its size against its
//! limit (`nf_conntrack_count` / `nf_conntrack_max`). Neutron's openvswitch firewall gives every
//! network on the host its own zone (`ct(zone=NXM_NX_REG6[0..15])`), so the per-zone count is the
//! conntrack pressure of the instances on that network; the engine joins zones to ports and
//! instances through the flows that load `reg6` ([`crate::model::conntrack`]).
//!
//! # Kernel interface: one ctnetlink dump of the whole table, counted in passing
//!
//! Candidates, measured on this project's testbed (kernel 6.18, 2 shared cores, debug build;
//! entries injected with `IPCTNL_MSG_CT_NEW` into a private network namespace, spread over 10
//! zones; numbers are wall time and the process's user+system CPU, which includes the kernel's
//! walk since a dump runs in `recvmsg`):
//!
//! | interface | 100 000 entries | 1 000 000 entries | correct? |
//! |---|---|---|---|
//! | ctnetlink dump, every entry, counted by `CTA_ZONE` (chosen) | MEASURE_FULL_100K | MEASURE_FULL_1M | yes: every zone in one pass |
//! | ctnetlink dump filtered by `CTA_ZONE` (kernel ≥ 6.8), one zone | MEASURE_ONE_100K | MEASURE_ONE_1M | yes, for that zone |
//! | the same, once per zone (10 zones) | MEASURE_TEN_100K | MEASURE_TEN_1M | yes |
//! | `nf_conntrack_count` (procfs) | MEASURE_PROC | MEASURE_PROC | host total only |
//!
//! Reproduce: `cargo build -p pinflow --example conntrack_cost && sudo
//! target/debug/examples/conntrack_cost 100000 1000000` (collector/examples/conntrack_cost.rs; it
//! works in a network namespace of its own and raises `nf_conntrack_max` for the run only).
//!
//! - A zone-filtered dump still walks the whole hash table in the kernel (the filter only saves
//!   copying the other entries to user space), so its cost is a large part of a full dump's, and
//!   one walk per zone multiplies it by the zones on the host (one per Neutron network): the single
//!   full dump counted by zone is cheaper as soon as there are a few zones, and needs no newer
//!   kernel (the `CTA_ZONE` filter came with 6.8; older kernels ignore it and dump everything).
//! - The OVS `ovs_ct_limit` generic netlink family (`OVS_CT_LIMIT_CMD_GET`) answers per zone in
//!   O(zones) and needs no privilege, but its counts come from `nf_conncount`, which counts only
//!   the connections OVS committed while a limit was configured for that zone (`ovs-appctl
//!   dpctl/ct-set-limits`): on a host without limits it reports nothing true, and turning limits
//!   on is a write pinflow must not do. It is the right source once operators set zone limits;
//!   until then it is not correct.
//! - eBPF on conntrack events (kprobes/fentry on insertion and destruction, a per-zone map) makes
//!   a read O(zones), but costs on every connection of the host, misses what existed before it
//!   attached (it needs this dump anyway to start), and hooks internal, often inlined kernel
//!   functions that change between versions. ctnetlink's own event groups
//!   (`NFNLGRP_CONNTRACK_NEW`/`DESTROY`) cost a message per connection and lose events on
//!   overflow (`ENOBUFS`), which again means a resync dump. Not worth it at a 30 s cadence.
//! - `IPCTNL_MSG_CT_GET_STATS` / `_STATS_CPU` and `nf_conntrack_count` are global (no zones);
//!   procfs gives the total and the limit without any privilege, so they are read there.
//! - `/proc/net/nf_conntrack` is text, needs `CONFIG_NF_CONNTRACK_PROCFS`, and is slower to parse.
//!
//! Crates: framing of the request and the replies is a few lines over `netlink-sys` (socket) and
//! `netlink-packet-core` (`NetlinkBuffer`, `NlasIterator`), as in [`crate::sources::rtnl`].
//! `netlink-packet-netfilter` 0.4 does model ctnetlink (`ConntrackMessage::{New,Get,Delete}` with
//! tuples, status, timeout, mark; the zone falls into `Other`) and was rejected: it parses every
//! entry into a `Vec` of attributes with nested `Vec`s (several allocations per entry, a million
//! per poll at 1 000 000 entries) to read one `u16`, and would add `derive_more` 0.99, `bitflags`
//! and `zerocopy` to the build. Here a dump allocates nothing per entry: one reused 64 KiB
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
