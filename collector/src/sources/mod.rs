//! Sources: everything that reads the host, and only reads and decodes it (no detection, no
//! publishing). Each source is one module (one folder when it has several files, its eBPF side
//! in `collector-ebpf/` under the same name) that declares itself with a [`SourceDef`]: its name
//! (the `source` label), the collector that switches it, and a probe that says whether it can run
//! on this host and, if not, why. [`ALL`] lists them; `pinflow check` and the docs' tests walk it,
//! and a pipeline in `engine/` runs each through [`SourceRegistry::collect`](crate::model::health::SourceRegistry::collect),
//! which records its health.

pub mod conntrack;
pub(crate) mod host_cpu;
pub(crate) mod libvirt;
pub(crate) mod openflow;
pub(crate) mod ovs_dp;
pub(crate) mod ovs_vswitchd;
pub(crate) mod ovsdb;
pub mod procfs;
pub mod rtnl;
pub mod sched_bpf;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the sources find the host: the flags every subcommand takes.
#[derive(Clone, Debug)]
pub(crate) struct HostPaths {
    /// procfs root (`/proc`).
    pub(crate) proc_root: PathBuf,
    /// sysfs root (`/sys`).
    pub(crate) sys_root: PathBuf,
    /// libvirt's live state dir (`/run/libvirt/qemu`).
    pub(crate) libvirt_state_dir: PathBuf,
    /// Open vSwitch's run dir, where `db.sock` and `<bridge>.mgmt` live.
    pub(crate) ovs_run_dir: PathBuf,
    /// Nova's config file (`--nova-conf`), when given.
    pub(crate) nova_conf: Option<PathBuf>,
}

impl HostPaths {
    /// OVSDB's socket.
    pub(crate) fn ovsdb_socket(&self) -> PathBuf {
        ovsdb_socket(&self.ovs_run_dir)
    }

    /// The OpenFlow management socket of `bridge`.
    pub(crate) fn bridge_socket(&self, bridge: &str) -> PathBuf {
        bridge_socket(&self.ovs_run_dir, bridge)
    }
}

/// OVSDB's socket in Open vSwitch's run dir (`<run dir>/db.sock`).
pub(crate) fn ovsdb_socket(ovs_run_dir: &Path) -> PathBuf {
    ovs_run_dir.join("db.sock")
}

/// The OpenFlow management socket of `bridge` in Open vSwitch's run dir (`<run dir>/<bridge>.mgmt`).
pub(crate) fn bridge_socket(ovs_run_dir: &Path, bridge: &str) -> PathBuf {
    ovs_run_dir.join(format!("{bridge}.mgmt"))
}

/// How long a probe waits for a daemon (OVSDB, a switch).
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One source, as `pinflow check`, the docs and the pipelines know it.
pub(crate) struct SourceDef {
    /// The `source` label of `pinflow_source_*`.
    pub(crate) name: &'static str,
    /// The collector (`--collector.<name>`) whose pipeline runs it.
    pub(crate) collector: &'static str,
    /// Whether it can run on this host, as the daemon would run it: what it found, or why not
    /// (one result, or one per bridge).
    pub(crate) can_run: fn(&HostPaths) -> Vec<CanRun>,
}

/// What a source's probe found.
#[derive(Clone, Debug)]
pub(crate) struct CanRun {
    /// The bridge it is about, for per-bridge sources.
    pub(crate) bridge: Option<String>,
    /// What it found, or why it cannot run.
    pub(crate) result: Result<String, String>,
    /// What it could not read although it can run (unreadable files), one line each.
    pub(crate) problems: Vec<String>,
}

impl CanRun {
    /// One result without a bridge or problems.
    pub(crate) fn of(result: Result<String, String>) -> Vec<CanRun> {
        vec![CanRun {
            bridge: None,
            result,
            problems: Vec::new(),
        }]
    }
}

/// Runs `f` to completion on a runtime of its own (for the probes of asynchronous sources, which
/// `pinflow check` calls outside any runtime).
pub(crate) fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(f))
        .map_err(|e| format!("cannot start an async runtime: {e}"))
}

/// Every source, in `pinflow check` order.
pub(crate) const ALL: &[&SourceDef] = &[
    &libvirt::SOURCE,
    &procfs::SOURCE,
    &sched_bpf::SOURCE,
    &host_cpu::SOURCE,
    &ovsdb::SOURCE,
    &openflow::SOURCE,
    &ovs_dp::SOURCE,
    &ovs_dp::bpf::SOURCE,
    &ovs_vswitchd::SOURCE,
    &ovs_vswitchd::OVSDB_SERVER,
    &conntrack::SOURCE,
];
