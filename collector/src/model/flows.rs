//! Model of Open vSwitch bridges, ports and OpenFlow flows (what the OVS sources fill in).

use serde::Serialize;
use std::collections::BTreeMap;

/// One match field of a flow, normalized: `ovs-ofctl` field name, value and optional mask (same length).
///
/// Values are big-endian bytes as on the wire, so detectors can compare any field generically
/// (`value & mask`). Prerequisite fields implied by protocol keywords (`ip` ⇒ `dl_type=0x0800`) are
/// present as their own fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FieldMatch {
    /// Field name as `ovs-ofctl` spells it (`in_port`, `dl_vlan`, `nw_dst`, `reg0`, `tun_id`, …).
    pub field: String,
    /// Value bytes, big-endian.
    pub value: Vec<u8>,
    /// Mask bytes (same length as `value`); `None` means exact match.
    pub mask: Option<Vec<u8>>,
}

/// The parts of a flow's actions that detectors reason about. Everything else is `Other`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum FlowAction {
    /// `output:N` (a physical or logical ofport number; reserved ports are `Reserved`).
    Output(u32),
    /// `enqueue:N:Q`.
    Enqueue(u32),
    /// Output to a reserved port (`NORMAL`, `LOCAL`, `IN_PORT`, `CONTROLLER`, `FLOOD`, `ALL`, …).
    Reserved(String),
    /// `goto_table:T` (OpenFlow 1.1+ instruction).
    GotoTable(u8),
    /// `resubmit(port,table)` (Nicira); either part may be absent.
    Resubmit {
        /// In-port to pretend, `None` = the current one.
        port: Option<u32>,
        /// Table to resubmit to, `None` = the current one.
        table: Option<u8>,
    },
    /// `conjunction(id,clause/n_clauses)`; `clause` is 1-based as printed.
    Conjunction {
        /// Conjunction id (matched by `conj_id=` in another flow).
        id: u32,
        /// Clause number, 1-based.
        clause: u8,
        /// Number of clauses.
        n_clauses: u8,
    },
    /// `ct(...)`: send to conntrack, optionally recirculating to `table`.
    Ct {
        /// Whether the connection is committed.
        commit: bool,
        /// `table=` to recirculate to, `None` = no recirculation.
        table: Option<u8>,
    },
    /// Any other action, carried as its rendered text.
    Other(String),
}

/// One OpenFlow flow entry as dumped or reported by a flow monitor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowEntry {
    /// OpenFlow table id.
    pub table: u8,
    /// Priority.
    pub priority: u16,
    /// Cookie.
    pub cookie: u64,
    /// Normalized match, sorted by field name.
    pub matches: Vec<FieldMatch>,
    /// Semantic actions, in order.
    pub actions: Vec<FlowAction>,
    /// The flow in `ovs-ofctl -O OpenFlow13 dump-flows --no-stats` text form (cookie, table, priority,
    /// match, `actions=`), exactly as ovs-ofctl prints it.
    pub text: String,
    /// Idle timeout, seconds (0 = none).
    pub idle_timeout: u16,
    /// Hard timeout, seconds (0 = none).
    pub hard_timeout: u16,
    /// Packets matched (from the last dump; monitors do not update it).
    pub n_packets: u64,
    /// Bytes matched (from the last dump).
    pub n_bytes: u64,
}

impl FlowEntry {
    /// The flow's identity in its bridge: table, priority and match (OpenFlow's own identity rule).
    pub fn key(&self) -> FlowKey {
        FlowKey {
            table: self.table,
            priority: self.priority,
            matches: self.matches.clone(),
        }
    }
}

/// Identity of a flow within a bridge: OpenFlow identifies a flow by table, priority and match.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FlowKey {
    /// OpenFlow table id.
    pub table: u8,
    /// Priority.
    pub priority: u16,
    /// Normalized match, sorted by field name (as in [`FlowEntry::matches`]).
    pub matches: Vec<FieldMatch>,
}

/// An OVS port as known from OVSDB and OpenFlow port descriptions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OvsPort {
    /// Port (and interface) name.
    pub name: String,
    /// OpenFlow port number; `None` while OVS has not assigned one (or -1 = failed).
    pub ofport: Option<u32>,
    /// VLAN tag of the port (`Port.tag`).
    pub tag: Option<u16>,
    /// `Interface.external_ids:iface-id` (Neutron port UUID).
    pub iface_id: Option<String>,
    /// `Interface.external_ids:vm-uuid` (Nova instance UUID).
    pub vm_uuid: Option<String>,
    /// `Interface.external_ids:attached-mac`.
    pub attached_mac: Option<String>,
    /// Interface type (`""`, `internal`, `patch`, `vxlan`, `tap`, …).
    pub kind: String,
}

/// A bridge with its ports (from OVSDB) and flows (from OpenFlow).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Bridge {
    /// Bridge name.
    pub name: String,
    /// Ports by name.
    pub ports: BTreeMap<String, OvsPort>,
}
