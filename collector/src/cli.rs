//! Command-line interface: `serve` (default), `check`, `pinning`, `flows`.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// pinflow: dirty OVS flows and vCPU pinning drift on OpenStack/KVM hypervisors.
#[derive(Debug, Parser)]
#[command(name = "pinflow", version, about)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Source flags (also accepted after the subcommand).
    #[command(flatten)]
    pub sources: SourceArgs,
}

/// Flags every subcommand takes: where the sources live and the config file.
#[derive(Clone, Debug, Args)]
pub struct SourceArgs {
    /// TOML config file (every field has a default).
    #[arg(long, global = true, env = "PINFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    /// procfs mount to read (a container sees the host's at e.g. /host/proc).
    #[arg(long = "proc-root", global = true, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// sysfs mount to read (cgroupfs is under <sys-root>/fs/cgroup).
    #[arg(long = "sys-root", global = true, default_value = "/sys")]
    pub sys_root: PathBuf,
    /// libvirt's live state directory of QEMU domains.
    #[arg(
        long = "libvirt-state-dir",
        global = true,
        default_value = "/run/libvirt/qemu"
    )]
    pub libvirt_state_dir: PathBuf,
    /// Open vSwitch run directory (db.sock, <bridge>.mgmt).
    #[arg(
        long = "ovs-run-dir",
        global = true,
        default_value = "/run/openvswitch"
    )]
    pub ovs_run_dir: PathBuf,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the collector and serve /metrics and /api/v1 (the default).
    Serve(ServeArgs),
    /// Validate the config and tell which sources can run on this host and why not.
    Check,
    /// Print the pinning of every running domain and its drift, once.
    Pinning {
        /// Print JSON (the /api/v1/pinning document) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print flows once: the bridges' OpenFlow flows as `ovs-ofctl -O OpenFlow13 dump-flows` prints
    /// them, or with `--datapath` the kernel datapath's megaflows as `ovs-dpctl dump-flows` does.
    Flows(FlowsArgs),
}

/// Flags of `flows`.
#[derive(Clone, Debug, Args)]
pub struct FlowsArgs {
    /// Only this bridge (default: every bridge in OVSDB).
    #[arg(long)]
    pub bridge: Option<String>,
    /// Only dirty flows, as a table with the rule that flags each (one-shot: `stale_cookie` needs
    /// the grace period of a running collector; see /api/v1/flows/dirty).
    #[arg(long)]
    pub dirty: bool,
    /// Leave out duration and counters (like `ovs-ofctl --no-stats`).
    #[arg(long = "no-stats")]
    pub no_stats: bool,
    /// Dump the OVS kernel datapath's megaflows over generic netlink (as `ovs-dpctl dump-flows` prints them).
    #[arg(long)]
    pub datapath: bool,
    /// Print only the number of megaflows and the time the dump and decode took.
    #[arg(long)]
    pub count: bool,
    /// Write every received netlink datagram, hex-encoded one per line, to this file (test fixtures).
    #[arg(long)]
    pub capture: Option<PathBuf>,
}

/// Flags of `serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address to serve on.
    #[arg(long = "web.listen-address", default_value = "127.0.0.1:9105")]
    pub listen: SocketAddr,
}

impl Default for ServeArgs {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9105)),
        }
    }
}
