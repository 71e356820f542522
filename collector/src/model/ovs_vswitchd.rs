//! What pinflow knows of ovs-vswitchd itself (its unixctl `coverage/show`, `memory/show`,
//! `upcall/show`) and of the OVS daemons' processes: the report of the `ovs_vswitchd` pipeline.

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
