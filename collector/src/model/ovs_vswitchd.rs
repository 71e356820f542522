//! What pinflow knows of ovs-vswitchd itself (its unixctl `coverage/show`, `memory/show`,
//! `upcall/show`), of ovsdb-server itself (its unixctl `coverage/show`, `memory/show`) and of the
//! OVS daemons' processes: the report of the `ovs_vswitchd` pipeline.

use std::time::Duration;

/// The coverage events exported as `pinflow_ovs_coverage_total{event}`: a fixed subset of
/// ovs-vswitchd's several hundred, chosen for what an operator alerts on (flow-limit pressure,
/// failed datapath operations, netlink and OpenFlow queue overflows, oversized translations) and
/// the few rates that explain them (flow setups, OpenFlow messages, reconfigurations).
pub(crate) const COVERAGE_EVENTS: [&str; 14] = [
    "upcall_flow_limit_hit",
    "upcall_flow_limit_kill",
    "dpif_flow_put",
    "dpif_flow_put_error",
    "dpif_execute_error",
    "netlink_overflow",
    "ofproto_recv_openflow",
    "packet_in_overflow",
    "xlate_actions_oversize",
    "xlate_actions_too_many_output",
    "rconn_overflow",
    "rconn_discarded",
    "bridge_reconfigure",
    "txn_error",
];

/// The `memory/show` object counts exported as `pinflow_ovs_vswitchd_objects{kind}`.
pub(crate) const OBJECT_KINDS: [&str; 5] = ["rules", "ports", "udpif_keys", "ofconns", "idl_cells"];

/// The ovsdb-server coverage events exported as `pinflow_ovs_ovsdb_server_coverage_total{event}`.
///
/// Of the 112 events ovsdb-server 3.1 registers (checked one by one with `coverage/read-counter`
/// on the real daemon) most belong to library code it links but does not run (datapath, netdev,
/// conntrack, `dpif_*`), and the `txn_*` ones are the IDL client's: they stay 0 while
/// ovsdb-server commits transactions. ovsdb-server has no event for the transactions it commits
/// or the JSON-RPC messages it handles; what it has for an operator: transactions a relay
/// forwards to its source (`txn_forward_create`) and those cancelled (`txn_forward_cancel`, e.g.
/// the source disconnected), raft log entries written (`raft_entry_serialize`, clustered
/// databases), connections it opens itself (`stream_open`: relay/replication/active remotes;
/// a reconnect storm shows here) and main-loop wake-ups with nothing to wait for
/// (`poll_zero_timeout`: a busy or spinning server; every `memory/show` adds one, as ovsdb-server
/// answers it from its next main-loop iteration, so pinflow's own poll adds 1 per poll). Sessions, monitors and the output backlog
/// come from `memory/show` instead.
pub(crate) const OVSDB_SERVER_COVERAGE_EVENTS: [&str; 5] = [
    "txn_forward_create",
    "txn_forward_cancel",
    "raft_entry_serialize",
    "stream_open",
    "poll_zero_timeout",
];

/// The ovsdb-server `memory/show` counts exported as `pinflow_ovs_ovsdb_server_objects{kind}`:
/// database `cells` and `atoms` (the databases' size), `monitors` (clients' monitor requests),
/// `sessions` (JSON-RPC sessions: ovs-vswitchd, agents, pinflow) and `triggers` (transactions
/// waiting to complete).
pub(crate) const OVSDB_SERVER_OBJECT_KINDS: [&str; 5] =
    ["cells", "atoms", "monitors", "sessions", "triggers"];

/// What the `ovs_vswitchd` pipeline read of ovsdb-server over its control socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OvsdbServerReport {
    /// Whether the values below are current (the last poll answered).
    pub(crate) connected: bool,
    /// [`OVSDB_SERVER_COVERAGE_EVENTS`] totals, in that order.
    pub(crate) coverage: Vec<(&'static str, u64)>,
    /// [`OVSDB_SERVER_OBJECT_KINDS`] counts, in that order (0 when not listed).
    pub(crate) objects: Vec<(&'static str, u64)>,
    /// Bytes queued to be sent to clients, all sessions together (`backlog`; 0 when not listed).
    pub(crate) backlog_bytes: u64,
}

/// The OVS daemons whose processes are watched (`process` label).
pub(crate) const PROCESSES: [&str; 2] = ["ovs-vswitchd", "ovsdb-server"];

/// One datapath of `upcall/show`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UpcallDatapath {
    /// Datapath name as the kernel names it (`ovs-system`; `ovs-netdev` for the userspace one).
    pub(crate) name: String,
    /// Datapath flows as the revalidators last counted them.
    pub(crate) flows: u64,
    /// The flow limit in force (ovs-vswitchd's dynamic limit, at most `other_config:flow-limit`).
    pub(crate) flow_limit: u64,
    /// Duration of the last revalidator dump.
    pub(crate) dump_duration: Option<Duration>,
    /// Revalidator threads listed for it.
    pub(crate) revalidators: u64,
    /// Flow keys (ukeys) the revalidators hold.
    pub(crate) ukeys: u64,
}

/// One OVS daemon's process.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ProcessHealth {
    /// `ovs-vswitchd` or `ovsdb-server`.
    pub(crate) process: &'static str,
    /// Whether its pid file names a running process of that name.
    pub(crate) up: bool,
    /// Resident memory, bytes (last seen while up).
    pub(crate) resident_bytes: u64,
    /// CPU seconds of the current run (0 until first seen).
    pub(crate) cpu_seconds: f64,
    /// Threads.
    pub(crate) threads: u64,
    /// New runs seen since pinflow started (pid or start time changed).
    pub(crate) restarts: u64,
}

/// The `ovs_vswitchd` pipeline's report.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct VswitchdReport {
    /// Whether the unixctl values below are current (the last poll answered).
    pub(crate) connected: bool,
    /// [`COVERAGE_EVENTS`] totals, in that order (empty until the first answer).
    pub(crate) coverage: Vec<(&'static str, u64)>,
    /// [`OBJECT_KINDS`] counts, in that order.
    pub(crate) objects: Vec<(&'static str, u64)>,
    /// Upcall handler threads.
    pub(crate) handlers: Option<u64>,
    /// Revalidator threads.
    pub(crate) revalidators: Option<u64>,
    /// Per datapath upcall state.
    pub(crate) upcall: Vec<UpcallDatapath>,
    /// Both daemons' processes, in [`PROCESSES`] order (each once it was first looked at).
    pub(crate) processes: Vec<ProcessHealth>,
    /// Bonds with their members' state (`bond/show`).
    pub(crate) bonds: Vec<BondState>,
    /// ovsdb-server's own counters (its control socket, polled alongside).
    pub(crate) ovsdb_server: OvsdbServerReport,
}

/// One bond of `bond/show`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BondState {
    /// Bond (OVSDB `Port`) name.
    pub(crate) bond: String,
    /// Members (interface names) and whether each is enabled (may carry traffic).
    pub(crate) members: Vec<(String, bool)>,
}

impl VswitchdReport {
    /// The flow limit ovs-vswitchd has in force for `datapath`, while connected.
    pub(crate) fn flow_limit(&self, datapath: &str) -> Option<u64> {
        self.connected
            .then(|| self.upcall.iter().find(|d| d.name == datapath))
            .flatten()
            .map(|d| d.flow_limit)
    }
}
