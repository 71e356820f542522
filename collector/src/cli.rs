//! Command-line interface: `serve` (default), `check`, `pinning`, `flows`.

use crate::export::http::ListenAddress;
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

/// pinflow: dirty OVS flows and vCPU pinning drift on OpenStack/KVM hypervisors.
#[derive(Debug, Parser)]
#[command(
    name = "pinflow",
    version = crate::build_info::VERSION_LINE,
    long_version = crate::build_info::LONG_VERSION,
    about,
    after_help = "Exit status of check, pinning and flows: 0 clean, 1 found something (a source down, \
                  drift, dirty flows with --dirty), 2 error (invalid config, unreadable sources, a \
                  flow that does not decode). \
                  A closed pipe ends the output quietly."
)]
pub(crate) struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    /// Source flags (also accepted after the subcommand).
    #[command(flatten)]
    pub(crate) sources: SourceArgs,
    /// Logging flags.
    #[command(flatten)]
    pub(crate) log: LogArgs,
}

impl Cli {
    /// Parses the command line as [`Parser::parse`] does. `pinflow flows …` is first parsed by a
    /// command that has only that subcommand ([`FlowsCli`], the same flag structs): clap builds
    /// every subcommand and copies each global flag into each of them before it parses, a good
    /// part of a one-shot dump's start (`pinflow flows` on an empty bridge). Anything that parser
    /// does not accept as a `flows` command line (another subcommand, `--help`, an error) goes to
    /// the full parser, so help, versions and errors are the full command's.
    pub(crate) fn parse_args() -> Cli {
        Cli::flows_only(std::env::args_os()).unwrap_or_else(Cli::parse)
    }

    /// `args` parsed by [`FlowsCli`], or `None` when they are not a valid `flows` command line.
    fn flows_only(args: impl IntoIterator<Item = impl Into<OsString>>) -> Option<Cli> {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        if !args.iter().any(|a| a == "flows") {
            return None;
        }
        let FlowsCli {
            command: FlowsOnly::Flows(flows),
            sources,
            log,
        } = FlowsCli::try_parse_from(args).ok()?;
        Some(Cli {
            command: Some(Command::Flows(flows)),
            sources,
            log,
        })
    }
}

/// [`Cli`] with `flows` as its only subcommand (see [`Cli::parse_args`]).
#[derive(Debug, Parser)]
#[command(name = "pinflow")]
struct FlowsCli {
    #[command(subcommand)]
    command: FlowsOnly,
    #[command(flatten)]
    sources: SourceArgs,
    #[command(flatten)]
    log: LogArgs,
}

/// The one subcommand of [`FlowsCli`].
#[derive(Debug, Subcommand)]
enum FlowsOnly {
    Flows(FlowsArgs),
}

/// Flags every subcommand takes: where the sources live and the config file.
#[derive(Clone, Debug, Args)]
pub(crate) struct SourceArgs {
    /// TOML config file (every field has a default).
    #[arg(long, global = true, env = "PINFLOW_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// procfs mount to read (a container sees the host's at e.g. /host/proc).
    #[arg(long = "proc-root", global = true, default_value = "/proc")]
    pub(crate) proc_root: PathBuf,
    /// sysfs mount to read (cgroupfs is under <sys-root>/fs/cgroup).
    #[arg(long = "sys-root", global = true, default_value = "/sys")]
    pub(crate) sys_root: PathBuf,
    /// libvirt's live state directory of QEMU domains.
    #[arg(
        long = "libvirt-state-dir",
        global = true,
        default_value = "/run/libvirt/qemu"
    )]
    pub(crate) libvirt_state_dir: PathBuf,
    /// Open vSwitch run directory (db.sock, <bridge>.mgmt).
    #[arg(
        long = "ovs-run-dir",
        global = true,
        default_value = "/run/openvswitch"
    )]
    pub(crate) ovs_run_dir: PathBuf,
    /// Nova's config file, for the host CPU checks against `cpu_dedicated_set`/`cpu_shared_set`
    /// (optional: without it those checks are not made).
    #[arg(long = "nova-conf", global = true)]
    pub(crate) nova_conf: Option<PathBuf>,
    /// Which collectors run.
    #[command(flatten)]
    pub(crate) collectors: CollectorArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the collector and serve /metrics and /api/v1 (the default).
    Serve(ServeArgs),
    /// Validate the config and tell which sources can run on this host and why not.
    ///
    /// Checks every source the flags and the config switch on, with the probes `serve` uses:
    /// libvirt, procfs, sched_bpf, ovsdb, openflow (per bridge), ovs_datapath, ovs_datapath_bpf,
    /// ovs_unixctl, ovsdb_server_unixctl.
    ///
    /// Exit status: 0 every source that is on is up; 1 a source that is on is down; 2 the config
    /// is invalid (or another error).
    Check {
        /// Print JSON (config, then every source with its state and detail) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the pinning of every running domain and its drift, once.
    ///
    /// Exit status: 0 no drift; 1 drift found; 2 the sources could not be read (libvirt's state
    /// dir, a state file, procfs/cgroupfs) or another error — then the reason is on stderr.
    Pinning {
        /// Print JSON (the /api/v1/pinning document) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print flows once: the bridges' OpenFlow flows as `ovs-ofctl -O OpenFlow13 dump-flows` prints
    /// them, or with `--datapath` the kernel datapath's megaflows as `ovs-dpctl dump-flows` does.
    ///
    /// With several bridges, each bridge's flows follow a `==> BRIDGE <==` line.
    ///
    /// Exit status: 0 done (with `--dirty`: no dirty flow); 1 with `--dirty`: dirty flows found;
    /// 2 error (no such bridge, OVS unreachable, …).
    Flows(FlowsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of pinflow, or of one subcommand.
    #[command(hide = true)]
    Man {
        /// The subcommand (e.g. serve), for its page `pinflow-<subcommand>(1)`.
        subcommand: Option<String>,
    },
}

/// Flags of `flows`.
#[derive(Clone, Debug, Args)]
pub(crate) struct FlowsArgs {
    /// Only this bridge (default: every bridge in OVSDB).
    #[arg(long)]
    pub(crate) bridge: Option<String>,
    /// Only dirty flows, as a table with the rule that flags each (one-shot: `stale_cookie` needs
    /// the grace period of a running collector; see /api/v1/flows/dirty).
    #[arg(long)]
    pub(crate) dirty: bool,
    /// Leave out duration and counters (like `ovs-ofctl --no-stats`).
    #[arg(long = "no-stats")]
    pub(crate) no_stats: bool,
    /// Print JSON: with `--dirty` the /api/v1/flows/dirty document, else every bridge with its
    /// flows (table, priority, cookie, counters, the `ovs-ofctl` text).
    #[arg(long, conflicts_with = "datapath")]
    pub(crate) json: bool,
    /// Dump the OVS kernel datapath's megaflows over generic netlink (as `ovs-dpctl dump-flows` prints them).
    #[arg(long)]
    pub(crate) datapath: bool,
    /// Print only the number of megaflows and the time the dump and decode took.
    #[arg(long)]
    pub(crate) count: bool,
    /// Write every received netlink datagram, hex-encoded one per line, to this file (test fixtures).
    #[arg(long)]
    pub(crate) capture: Option<PathBuf>,
}

/// Flags of `serve` (exporter-toolkit conventions).
#[derive(Clone, Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to serve on: `:PORT` (every interface), `HOST:PORT`, `[IPv6]:PORT`. Repeat the flag
    /// to listen on several addresses.
    #[arg(
        long = "web.listen-address",
        value_name = "[HOST]:PORT",
        default_value = "127.0.0.1:9105",
        value_parser = ListenAddress::parse,
        action = clap::ArgAction::Append
    )]
    pub(crate) listen: Vec<ListenAddress>,
    /// Path under which metrics are served.
    #[arg(long = "web.telemetry-path", default_value = "/metrics", value_parser = parse_path)]
    pub(crate) telemetry_path: String,
    /// exporter-toolkit web config (YAML): TLS certificate and key, client CA, basic-auth users
    /// with bcrypt hashes.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub(crate) web_config: Option<PathBuf>,
    /// Do not serve /api/v1 (it carries Nova names, project ids and flow texts).
    #[arg(long = "web.disable-api")]
    pub(crate) disable_api: bool,
    /// Once the start-time eBPF probe is attached and the sockets are open, drop every
    /// capability but CAP_BPF and CAP_PERFMON, which are kept only while the datapath collector
    /// may still attach its eBPF probe; cut the bounding set to them and set no_new_privs
    /// (default).
    #[arg(long = "drop-capabilities", overrides_with = "no_drop_capabilities")]
    drop_capabilities: bool,
    /// Keep every capability pinflow was started with.
    #[arg(long = "no-drop-capabilities", overrides_with = "drop_capabilities")]
    no_drop_capabilities: bool,
}

impl ServeArgs {
    /// Whether `serve` drops its capabilities after the start (`--drop-capabilities`, default).
    pub(crate) fn drop_capabilities(&self) -> bool {
        !self.no_drop_capabilities
    }
}

impl Default for ServeArgs {
    fn default() -> Self {
        Self {
            listen: vec![ListenAddress::Addr(SocketAddr::from((
                [127, 0, 0, 1],
                9105,
            )))],
            telemetry_path: "/metrics".into(),
            web_config: None,
            disable_api: false,
            drop_capabilities: false,
            no_drop_capabilities: false,
        }
    }
}

fn parse_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && s.len() > 1 && !s.contains(['?', '#', ' ']) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not an absolute URL path such as /metrics"
        ))
    }
}

/// `--collector.<area>` / `--no-collector.<area>`: which pipelines run (all by default). A host
/// without OVS runs with `--no-collector.flows --no-collector.datapath`, and reports nothing about
/// those sources instead of reporting them down forever.
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct CollectorArgs {
    /// Turn the pinning collector on (default): libvirt, procfs/cgroupfs, the sched_switch probe.
    #[arg(
        long = "collector.pinning",
        global = true,
        overrides_with = "no_pinning"
    )]
    pinning: bool,
    /// Turn the pinning collector off.
    #[arg(
        long = "no-collector.pinning",
        global = true,
        overrides_with = "pinning"
    )]
    no_pinning: bool,
    /// Turn the flows collector on (default): OVSDB and OpenFlow, dirty-flow rules.
    #[arg(long = "collector.flows", global = true, overrides_with = "no_flows")]
    flows: bool,
    /// Turn the flows collector off.
    #[arg(long = "no-collector.flows", global = true, overrides_with = "flows")]
    no_flows: bool,
    /// Turn the datapath collector on (default): the OVS kernel datapath over genetlink and eBPF.
    #[arg(
        long = "collector.datapath",
        global = true,
        overrides_with = "no_datapath"
    )]
    datapath: bool,
    /// Turn the datapath collector off.
    #[arg(
        long = "no-collector.datapath",
        global = true,
        overrides_with = "datapath"
    )]
    no_datapath: bool,
}

impl CollectorArgs {
    /// Whether the pinning pipeline runs.
    pub(crate) fn pinning(&self) -> bool {
        !self.no_pinning
    }
    /// Whether the flows pipeline runs.
    pub(crate) fn flows(&self) -> bool {
        !self.no_flows
    }
    /// Whether the datapath pipeline runs.
    pub(crate) fn datapath(&self) -> bool {
        !self.no_datapath
    }
    /// Whether the collector named `name` (`pinning`, `flows`, `datapath`) runs.
    pub(crate) fn enabled(&self, name: &str) -> bool {
        match name {
            "pinning" => self.pinning(),
            "flows" => self.flows(),
            "datapath" => self.datapath(),
            _ => false,
        }
    }
}

/// `--log.level`, `--log.format`.
#[derive(Clone, Debug, Args)]
pub(crate) struct LogArgs {
    /// Least severe level logged: debug, info, warn, error (`RUST_LOG` overrides it with a full
    /// tracing filter).
    #[arg(long = "log.level", global = true, default_value = "info", value_parser = ["debug", "info", "warn", "error"])]
    pub(crate) level: String,
    /// Log line format on stderr.
    #[arg(long = "log.format", global = true, default_value = "logfmt", value_parser = ["logfmt", "json"])]
    pub(crate) format: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_command_lines_parse_as_the_full_cli_does() {
        for line in [
            "pinflow flows",
            "pinflow flows --bridge br-int --no-stats",
            "pinflow --ovs-run-dir /x flows --json --log.level warn",
            "pinflow flows --ovs-run-dir /x --dirty --no-collector.flows --log.format json",
            "pinflow --config c.toml flows --datapath --count --capture f",
        ] {
            let args = line.split(' ');
            let fast = Cli::flows_only(args.clone()).unwrap();
            let full = Cli::try_parse_from(args).unwrap();
            assert!(matches!(fast.command, Some(Command::Flows(_))), "{line}");
            assert_eq!(format!("{fast:?}"), format!("{full:?}"), "{line}");
        }
        // Anything else is left to the full parser (its help, version and errors).
        for line in [
            "pinflow",
            "pinflow serve",
            "pinflow check --json",
            "pinflow --version",
            "pinflow flows --help",
            "pinflow flows --bogus",
            "pinflow flows --json --datapath",
            "pinflow --config flows",
            "pinflow --config flows serve",
        ] {
            assert!(Cli::flows_only(line.split(' ')).is_none(), "{line}");
        }
    }
}
