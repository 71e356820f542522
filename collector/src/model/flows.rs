//! Model of Open vSwitch bridges and ports (what the OVSDB source fills in), and the flows report
//! the dirty-flow pipeline publishes. Flows themselves live in [`crate::model::openflow`].

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// An OVS port as known from OVSDB and OpenFlow port descriptions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct OvsPort {
    /// Port (and interface) name.
    pub(crate) name: String,
    /// OpenFlow port number; `None` while OVS has not assigned one (or -1 = failed).
    pub(crate) ofport: Option<u32>,
    /// VLAN tag of the port (`Port.tag`).
    pub(crate) tag: Option<u16>,
    /// `Interface.external_ids:iface-id` (Neutron port UUID).
    pub(crate) iface_id: Option<String>,
    /// `Interface.external_ids:vm-uuid` (Nova instance UUID).
    pub(crate) vm_uuid: Option<String>,
    /// `Interface.external_ids:attached-mac`.
    pub(crate) attached_mac: Option<String>,
    /// Interface type (`""`, `internal`, `patch`, `vxlan`, `tap`, …).
    pub(crate) kind: String,
    /// Why ovs-vswitchd could not open or add the interface (see [`LinkHealth::error`]).
    pub(crate) error: Option<String>,
}

/// State and counters of one OVS interface (OVSDB `Interface` columns `link_state`,
/// `admin_state`, `mtu`, `link_resets`, `statistics`), read only with `[flows] interface_metrics`.
/// `None`: OVS does not report it for this interface (patch ports have no statistics).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct InterfaceStats {
    /// `link_state` is `up`.
    pub(crate) link_up: Option<bool>,
    /// `admin_state` is `up`.
    pub(crate) admin_up: Option<bool>,
    /// `mtu`: the MTU in force on the device, in bytes (not `mtu_request`).
    pub(crate) mtu: Option<u32>,
    /// `link_resets`: link state changes OVS observed.
    pub(crate) link_resets: Option<u64>,
    /// `statistics:rx_bytes`, `rx_packets`, `rx_dropped`, `rx_errors`.
    pub(crate) rx: Counters,
    /// `statistics:tx_bytes`, `tx_packets`, `tx_dropped`, `tx_errors`.
    pub(crate) tx: Counters,
}

/// One direction of an interface's `statistics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Counters {
    /// Bytes.
    pub(crate) bytes: Option<u64>,
    /// Packets.
    pub(crate) packets: Option<u64>,
    /// Packets dropped.
    pub(crate) drops: Option<u64>,
    /// Errors.
    pub(crate) errors: Option<u64>,
}

/// Interface counters keyed by (bridge, interface name), as the OVSDB source last read them.
pub(crate) type InterfaceMap = BTreeMap<(String, String), InterfaceStats>;

/// LACP, BFD, CFM and tunnel state of one OVS interface and its error (OVSDB `Interface` columns
/// `lacp_current`, `bfd_status`, `cfm_fault`, `cfm_remote_opstate`, `cfm_flap_count`,
/// `status:tunnel_egress_iface_carrier`, `error`, `ofport`). Each part is `None` where the feature
/// is not configured (or there is no error), so only configured features have series.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct LinkHealth {
    /// The bond (OVSDB `Port` name) when the interface is one of several of its port.
    pub(crate) bond: Option<String>,
    /// `lacp_current`: the LACP partner's information is current (set only on LACP ports).
    pub(crate) lacp_current: Option<bool>,
    /// `bfd_status`, while BFD is enabled.
    pub(crate) bfd: Option<BfdState>,
    /// CFM state, while CFM is configured (`cfm_mpid`).
    pub(crate) cfm: Option<CfmState>,
    /// Tunnel ports that found their egress device: `status:tunnel_egress_iface` and whether
    /// `status:tunnel_egress_iface_carrier` is `up`.
    pub(crate) egress: Option<(String, bool)>,
    /// Why ovs-vswitchd could not open or configure the interface (`Interface.error`, e.g.
    /// "could not open network device tap1 (No such device)"; `ofport -1` when OVS set
    /// `ofport` to -1 without a text), at most [`MAX_INTERFACE_ERROR_CHARS`] characters.
    pub(crate) error: Option<String>,
}

/// Longest `Interface.error` text kept (it becomes a label value): OVS's texts are under 100
/// characters, a longer one is cut with `…`.
pub(crate) const MAX_INTERFACE_ERROR_CHARS: usize = 200;

impl LinkHealth {
    /// Whether any part is known (an interface without LACP, BFD, CFM or tunnel state and
    /// without an error is not listed).
    pub(crate) fn is_empty(&self) -> bool {
        self.bond.is_none()
            && self.lacp_current.is_none()
            && self.bfd.is_none()
            && self.cfm.is_none()
            && self.egress.is_none()
            && self.error.is_none()
    }
}

/// `Interface.bfd_status` of an interface with BFD enabled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct BfdState {
    /// `state` is `up`.
    pub(crate) up: bool,
    /// `forwarding` is `true` (BFD says the link may forward).
    pub(crate) forwarding: bool,
    /// `remote_state` is `up`.
    pub(crate) remote_up: bool,
    /// `flap_count`: state changes since BFD was enabled.
    pub(crate) flaps: Option<u64>,
}

/// CFM columns of an interface with CFM configured.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct CfmState {
    /// `cfm_fault`.
    pub(crate) fault: bool,
    /// `cfm_remote_opstate` is `up` (`None`: the remote did not say).
    pub(crate) remote_up: Option<bool>,
    /// `cfm_flap_count`.
    pub(crate) flaps: Option<u64>,
}

/// Link protocol state keyed by (bridge, interface name); only interfaces with something to say.
pub(crate) type LinkMap = BTreeMap<(String, String), LinkHealth>;

/// The `tc-policy` values exported (`policy` label of `pinflow_ovs_tc_policy_info`): OVS's three
/// and `invalid` for any other value (ovs-vswitchd logs a warning and keeps `none`).
pub(crate) const TC_POLICIES: [&str; 4] = ["none", "skip_sw", "skip_hw", "invalid"];

/// The switch-wide flow offload configuration (OVSDB `Open_vSwitch.other_config`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct OffloadConfig {
    /// `hw-offload` is `true`.
    pub(crate) hw_offload: bool,
    /// `tc-policy`, one of [`TC_POLICIES`] (`none` when unset).
    pub(crate) tc_policy: &'static str,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        OffloadConfig {
            hw_offload: false,
            tc_policy: "none",
        }
    }
}

impl OffloadConfig {
    /// From the `hw-offload` and `tc-policy` values of `other_config` (`None`: unset). Like
    /// ovs-vswitchd (`smap_get_bool`), `hw-offload` is on only for `true` in any case.
    pub(crate) fn from_other_config(hw_offload: Option<&str>, tc_policy: Option<&str>) -> Self {
        OffloadConfig {
            hw_offload: hw_offload.is_some_and(|v| v.eq_ignore_ascii_case("true")),
            tc_policy: match tc_policy {
                None => "none",
                Some(p) => TC_POLICIES
                    .iter()
                    .take(3)
                    .find(|k| **k == p)
                    .copied()
                    .unwrap_or("invalid"),
            },
        }
    }
}

/// What the flow pipeline publishes of the interfaces: counters only with
/// `[flows] interface_metrics`, link protocol state always; and the switch's offload configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct InterfacesReport {
    /// Whether OVSDB is connected (the counters are current).
    pub(crate) connected: bool,
    /// Counters per (bridge, interface).
    pub(crate) interfaces: std::sync::Arc<InterfaceMap>,
    /// LACP, BFD, CFM and tunnel state per (bridge, interface).
    pub(crate) links: std::sync::Arc<LinkMap>,
    /// `hw-offload` and `tc-policy` (only meaningful while `connected`).
    pub(crate) offload: OffloadConfig,
}

/// A bridge with its ports (from OVSDB) and flows (from OpenFlow).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct Bridge {
    /// Bridge name.
    pub(crate) name: String,
    /// Ports by name.
    pub(crate) ports: BTreeMap<String, OvsPort>,
}

/// How sure the findings of a rule are (`severity` label of `pinflow_ovs_dirty_flow_rule_info`):
/// page on `broken` at once, review `suspect` in working hours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Severity {
    /// The flow cannot do what it says (it outputs to a missing port, jumps into an empty table…).
    #[default]
    Broken,
    /// A heuristic: probably a mistake or a leftover, worth a look.
    Suspect,
}

impl Severity {
    /// The `severity` label value.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Severity::Broken => "broken",
            Severity::Suspect => "suspect",
        }
    }
}

impl serde::Serialize for Severity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One dirty flow (or port) as served by `/api/v1/flows/dirty` and `pinflow_ovs_dirty_flow_info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct DirtyFlow {
    /// Bridge.
    pub(crate) bridge: String,
    /// Rule that flagged it.
    pub(crate) rule: String,
    /// `broken` (the flow cannot do what it says) or `suspect` (a heuristic): its rule's severity.
    pub(crate) severity: &'static str,
    /// OpenFlow table (`None` for port findings such as `dead_vlan`).
    pub(crate) table: Option<u8>,
    /// Cookie (`None` for port findings), served as a hex string (`"0x6a1b2c3d4e5f6071"`, as
    /// ovs-ofctl prints it): a JSON number loses precision above 2^53.
    #[serde(serialize_with = "serialize_cookie")]
    pub(crate) cookie: Option<u64>,
    /// The flow as `ovs-ofctl dump-flows --no-stats` prints it (or `port NAME tag=4095`).
    pub(crate) flow: String,
    /// The ports the flow refers to, in order: `in_port`, then outputs, then Neutron's port
    /// register; each joined to its OVSDB port and instance (from OVSDB's last known state when
    /// the port is already gone). For `dead_vlan`, the quarantined port.
    pub(crate) ports: Vec<FlowPort>,
    /// The instance the finding hurts: the libvirt domain of [`DirtyFlow::port`], if any.
    pub(crate) domain: Option<String>,
    /// Whether the finding comes from the last table seen before the bridge's OpenFlow session
    /// went down (not current; left out of `/metrics` until the session is back and resynced).
    pub(crate) stale: bool,
}

impl DirtyFlow {
    /// The port a finding is labelled with: the first referenced port whose name is known
    /// (`pinflow_ovs_dirty_flow_info`'s `port` label; its `domain` label is that port's domain).
    pub(crate) fn port(&self) -> Option<&FlowPort> {
        self.ports.iter().find(|p| !p.port.is_empty())
    }
}

fn serialize_cookie<S: serde::Serializer>(c: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match c {
        Some(c) => s.serialize_str(&format!("{c:#x}")),
        None => s.serialize_none(),
    }
}

/// How a flow refers to a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PortRef {
    /// It matches `in_port=N`.
    InPort,
    /// It outputs (`output:N`, `enqueue:N:Q`) to the port.
    Output,
    /// It matches or loads Neutron's port register: in the OVS firewall driver `reg5` holds the
    /// ofport of the instance port a packet comes from or goes to.
    PortRegister,
}

/// A port a dirty flow refers to, joined to OVSDB and the instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct FlowPort {
    /// OpenFlow port number the flow names (`None` for a `dead_vlan` port without one).
    pub(crate) ofport: Option<u32>,
    /// How the flow refers to it (`None` for a `dead_vlan` port).
    pub(crate) via: Option<PortRef>,
    /// OVSDB port name; empty when no port with this ofport is known, now or recently.
    pub(crate) port: String,
    /// Neutron port id (`external_ids:iface-id`), empty when unknown.
    pub(crate) iface_id: String,
    /// libvirt domain of the port, empty when none.
    pub(crate) domain: String,
    /// Nova's display name of that instance, empty when unknown.
    pub(crate) name: String,
    /// Whether the port is gone from OVSDB: the other fields are its last known state.
    pub(crate) deleted: bool,
}

/// Most dirty flows a report carries (the API's list; counts are always complete). Bounds memory
/// when a whole table turns dirty, e.g. while a bridge's ports are unknown.
pub(crate) const MAX_REPORTED_DIRTY_FLOWS: usize = 10_000;

/// An OVS port joined to the instance it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct PortInfo {
    /// Bridge.
    pub(crate) bridge: String,
    /// Port name (for an instance: its tap device).
    pub(crate) port: String,
    /// OpenFlow port number.
    pub(crate) ofport: Option<u32>,
    /// Neutron port id (`external_ids:iface-id`).
    pub(crate) iface_id: String,
    /// libvirt domain (by the tap name in the domain XML, else `external_ids:vm-uuid`).
    pub(crate) domain: String,
    /// OVS's error for the interface (`Interface.error`; its ofport is then unknown), served in
    /// `/api/v1/flows` only when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// State of one bridge's OpenFlow mirror.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct BridgeStatus {
    /// Whether the OpenFlow session is up and in sync.
    pub(crate) connected: bool,
    /// Last error, when not connected.
    pub(crate) error: Option<String>,
    /// Flows per table.
    pub(crate) flows_per_table: BTreeMap<u8, usize>,
    /// Flows the switch sent that do not decode (skipped, never indexed) since the mirror
    /// started.
    pub(crate) undecodable_total: u64,
    /// The last of them, raw (shared with the mirror's snapshot).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub(crate) undecodable: std::sync::Arc<Vec<crate::model::openflow::render::UndecodableFlow>>,
}

/// Everything the flow exporters serve.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct FlowsReport {
    /// Bridges by name.
    pub(crate) bridges: BTreeMap<String, BridgeStatus>,
    /// Dirty count per (bridge, rule): every enabled rule for every bridge.
    pub(crate) dirty_counts: BTreeMap<String, BTreeMap<String, usize>>,
    /// Dirty flows ordered by bridge, rule, table, text; the first [`MAX_REPORTED_DIRTY_FLOWS`].
    pub(crate) dirty: Vec<DirtyFlow>,
    /// How many dirty flows there are in all (`dirty` may hold fewer).
    pub(crate) dirty_total: usize,
    /// Ports joined to instances (shared between reports until a port or an instance changes).
    pub(crate) ports: Arc<Vec<PortInfo>>,
    /// Severity of every enabled rule, built-in and user (`pinflow_ovs_dirty_flow_rule_info`).
    pub(crate) rule_severity: BTreeMap<String, Severity>,
    /// The conntrack zones the flows load per port (for the conntrack pipeline; not served here).
    #[serde(skip)]
    pub(crate) ct_zones: crate::model::conntrack::ZonePorts,
}
