//! OVSDB source: bridges, ports, ofports, VLAN tags and Neutron/Nova `external_ids` of Open vSwitch,
//! the interfaces' link protocol state (bonds, LACP, BFD, CFM, tunnel egress carrier), the
//! switch's offload configuration (`Open_vSwitch.other_config`: `hw-offload`, `tc-policy`) and,
//! opt-in, the interfaces' link state and counters, read from `<ovs-run-dir>/db.sock` with the JSON-RPC `monitor` method of RFC 7047.
//!
//! The source keeps a private replica of the monitored rows ([`OvsdbState`]): the monitor reply fills
//! it, `update` notifications change it incrementally, and each batch of changes publishes a fresh
//! [`OvsdbSnapshot`] through a `tokio::sync::watch` channel. The connection answers the server's
//! `echo` probes, probes an idle server itself, and on any failure (server restart, garbage or
//! oversized JSON, a malformed update) drops the connection, counts the error in the
//! [`SourceRegistry`] under [`SOURCE`], and reconnects with exponential backoff; the replica is rebuilt
//! from the next monitor reply, so no state survives from the old connection.

use crate::model::flows::{
    BfdState, Bridge, CfmState, Counters, InterfaceMap, InterfaceStats, LinkHealth, LinkMap,
    MAX_INTERFACE_ERROR_CHARS, OffloadConfig, OvsPort,
};
use crate::model::health::SourceRegistry;
use crate::sources::{CanRun, PROBE_TIMEOUT, SourceDef, block_on};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

/// Source name in `pinflow_source_*` metrics.
pub(crate) const SOURCE: SourceDef = SourceDef {
    name: "ovsdb",
    collector: "flows",
    can_run: |host| {
        let db = host.ovsdb_socket();
        CanRun::of(
            block_on(bridges_once(&host.ovs_run_dir))
                .and_then(|r| r)
                .map(|b| format!("{}, {} bridge(s)", db.display(), b.len())),
        )
    },
};

/// Bridges from OVSDB, once: waits up to [`PROBE_TIMEOUT`] for the first complete snapshot (for
/// the one-shot commands). The error says why OVSDB did not answer.
pub(crate) async fn bridges_once(run_dir: &Path) -> Result<BTreeMap<String, Bridge>, String> {
    use tracing::instrument::WithSubscriber as _;
    can_run(run_dir)?;
    let (tx, mut rx) = watch::channel(OvsdbSnapshot::default());
    let health = SourceRegistry::default();
    // The client's own state-change log lines are the daemon's; here the outcome is the answer
    // (or the error naming the reason), so they are not printed.
    let task = tokio::spawn(
        run_ovsdb(run_dir.to_path_buf(), tx, health.clone())
            .with_subscriber(tracing::subscriber::NoSubscriber::default()),
    );
    let snap = tokio::time::timeout(PROBE_TIMEOUT, rx.wait_for(|s| s.connected)).await;
    task.abort();
    let why = || {
        health
            .snapshot()
            .get(SOURCE.name)
            .map(|h| h.detail.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "no answer".into())
    };
    match snap {
        Err(_) => Err(format!(
            "OVSDB at {} did not answer within {} s: {}",
            run_dir.display(),
            PROBE_TIMEOUT.as_secs(),
            why()
        )),
        Ok(Err(_)) => Err(format!("OVSDB client stopped: {}", why())),
        Ok(Ok(s)) => Ok(s.bridges.clone()),
    }
}

/// The monitor id this client registers (echoed in every `update` notification).
const MONITOR_ID: &str = "pinflow";

/// Errors of the OVSDB source. None of them is fatal to the daemon: the source reconnects.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OvsdbError {
    /// The socket could not be connected (OVS not running or not installed here).
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection (`pending`: bytes of an unfinished message that were lost).
    #[error("ovsdb-server closed the connection ({pending} bytes of a truncated message pending)")]
    Closed {
        /// Bytes of an incomplete message buffered when the connection closed.
        pending: usize,
    },
    /// Neither data nor an echo reply arrived within the probe interval.
    #[error("ovsdb-server did not answer within {0:?}")]
    Timeout(Duration),
    /// The byte stream is not a sequence of JSON objects.
    #[error("garbage on the connection at byte {offset}: {detail}")]
    Garbage {
        /// Offset of the bad byte in the buffered data.
        offset: usize,
        /// What was wrong.
        detail: String,
    },
    /// A JSON value failed to parse.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A message exceeded the buffer bound.
    #[error("message larger than {limit} bytes")]
    MessageTooLarge {
        /// The bound.
        limit: usize,
    },
    /// The server answered the monitor request with an error.
    #[error("ovsdb-server refused the monitor request: {0}")]
    Rpc(String),
    /// A JSON-RPC message or table update does not have the shape RFC 7047 prescribes.
    #[error("malformed OVSDB message: {0}")]
    Malformed(String),
}

impl OvsdbError {
    /// Whether the error means "no server to talk to" rather than a fault of a live connection.
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(self, OvsdbError::Connect { .. })
    }
}

fn malformed(what: impl Into<String>) -> OvsdbError {
    OvsdbError::Malformed(what.into())
}

/// Splits a byte stream into top-level JSON texts (OVSDB's JSON-RPC has no other framing), without
/// re-parsing incomplete data, and with a bound on the buffered bytes.
#[derive(Debug)]
pub(crate) struct JsonFramer {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    limit: usize,
}

impl JsonFramer {
    /// A framer that refuses messages (and buffered data) larger than `limit` bytes.
    pub(crate) fn new(limit: usize) -> JsonFramer {
        JsonFramer {
            buf: Vec::new(),
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            limit,
        }
    }

    /// Appends received bytes.
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<(), OvsdbError> {
        if self.buf.len() + data.len() > self.limit {
            return Err(OvsdbError::MessageTooLarge { limit: self.limit });
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next complete message, `None` if more bytes are needed. After an error the framer must be
    /// discarded (the stream position is lost).
    pub(crate) fn next_message(&mut self) -> Result<Option<Value>, OvsdbError> {
        while let Some(&b) = self.buf.get(self.scanned) {
            let at = self.scanned;
            self.scanned += 1;
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b' ' | b'\t' | b'\r' | b'\n' if self.depth == 0 => {}
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let value =
                            serde_json::from_slice(self.buf.get(..=at).unwrap_or_default())?;
                        self.buf.drain(..=at);
                        self.scanned = 0;
                        return Ok(Some(value));
                    }
                }
                b'"' if self.depth > 0 => self.in_string = true,
                _ if self.depth > 0 => {}
                other => {
                    return Err(OvsdbError::Garbage {
                        offset: at,
                        detail: format!(
                            "unexpected byte {:?} outside a JSON object",
                            char::from(other)
                        ),
                    });
                }
            }
        }
        Ok(None)
    }

    /// Bytes currently buffered.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Decoders of RFC 7047's JSON notation for OVSDB values.
mod decode {
    use serde_json::Value;

    /// A `["uuid", "…"]` reference.
    pub(super) fn uuid(v: &Value) -> Option<&str> {
        match v.as_array()?.as_slice() {
            [tag, id] if tag == "uuid" => id.as_str(),
            _ => None,
        }
    }

    /// The atoms of a set: `["set", [a, …]]`, or a single atom standing for a one-element set.
    pub(super) fn set(v: &Value) -> Vec<&Value> {
        match v.as_array().map(Vec::as_slice) {
            Some([tag, Value::Array(items)]) if tag == "set" => items.iter().collect(),
            _ => vec![v],
        }
    }

    /// The integer of a scalar column that may be empty (`["set", []]`).
    pub(super) fn opt_int(v: Option<&Value>) -> Option<i64> {
        let v = v?;
        v.as_i64().or_else(|| match set(v).as_slice() {
            [one] => one.as_i64(),
            _ => None,
        })
    }

    /// Look up `key` in a `["map", [[k, v], …]]` of integers (`Interface.statistics`).
    pub(super) fn map_get_int(v: Option<&Value>, key: &str) -> Option<u64> {
        match v?.as_array()?.as_slice() {
            [tag, Value::Array(pairs)] if tag == "map" => {
                pairs.iter().find_map(|p| match p.as_array()?.as_slice() {
                    [k, v] if k == key => v.as_u64(),
                    _ => None,
                })
            }
            _ => None,
        }
    }

    /// A boolean column that may be empty (`["set", []]`).
    pub(super) fn opt_bool(v: Option<&Value>) -> Option<bool> {
        let v = v?;
        v.as_bool().or_else(|| match set(v).as_slice() {
            [one] => one.as_bool(),
            _ => None,
        })
    }

    /// A string column that may be empty (`["set", []]`).
    pub(super) fn opt_str(v: Option<&Value>) -> Option<&str> {
        let v = v?;
        v.as_str().or_else(|| match set(v).as_slice() {
            [one] => one.as_str(),
            _ => None,
        })
    }

    /// Look up `key` in a `["map", [[k, v], …]]` of strings.
    pub(super) fn map_get<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a str> {
        match v?.as_array()?.as_slice() {
            [tag, Value::Array(pairs)] if tag == "map" => {
                pairs.iter().find_map(|p| match p.as_array()?.as_slice() {
                    [k, v] if k == key => v.as_str(),
                    _ => None,
                })
            }
            _ => None,
        }
    }
}

/// A replica of the monitored OVSDB rows: table → row UUID → column → value (OVSDB JSON notation).
#[derive(Clone, Debug, Default)]
pub(crate) struct OvsdbState {
    tables: BTreeMap<String, HashMap<String, Map<String, Value>>>,
}

/// What one `apply_update` changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct UpdateStats {
    /// Rows inserted.
    pub(crate) inserted: usize,
    /// Rows modified.
    pub(crate) modified: usize,
    /// Rows deleted.
    pub(crate) deleted: usize,
}

impl OvsdbState {
    /// An empty replica.
    pub(crate) fn new() -> OvsdbState {
        OvsdbState::default()
    }

    /// Applies a `<table-updates>` object (the monitor reply or the second parameter of an `update`
    /// notification). The whole object is validated first: a malformed one changes nothing.
    ///
    /// Per RFC 7047 a row update with `new` inserts or modifies the row (`new` carries every monitored
    /// column; columns are merged so a server that sends only changed columns works too) and a row update
    /// with only `old` deletes it.
    pub(crate) fn apply_update(
        &mut self,
        table_updates: &Value,
    ) -> Result<UpdateStats, OvsdbError> {
        let tables = table_updates
            .as_object()
            .ok_or_else(|| malformed("table-updates is not an object"))?;
        let mut ops = Vec::new();
        for (table, rows) in tables {
            let rows = rows
                .as_object()
                .ok_or_else(|| malformed(format!("table-update of {table} is not an object")))?;
            for (uuid, update) in rows {
                let update = update.as_object().ok_or_else(|| {
                    malformed(format!("row-update {table}/{uuid} is not an object"))
                })?;
                let new = match update.get("new") {
                    None => None,
                    Some(Value::Object(o)) => Some(o),
                    Some(_) => {
                        return Err(malformed(format!(
                            "{table}/{uuid}: \"new\" is not an object"
                        )));
                    }
                };
                if new.is_none() && !update.get("old").is_some_and(Value::is_object) {
                    return Err(malformed(format!(
                        "{table}/{uuid}: neither \"new\" nor \"old\""
                    )));
                }
                ops.push((table, uuid, new));
            }
        }
        let mut stats = UpdateStats::default();
        for (table, uuid, new) in ops {
            let rows = self.tables.entry(table.clone()).or_default();
            match new {
                Some(new) => match rows.get_mut(uuid) {
                    Some(row) => {
                        row.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
                        stats.modified += 1;
                    }
                    None => {
                        rows.insert(uuid.clone(), new.clone());
                        stats.inserted += 1;
                    }
                },
                None => {
                    if rows.remove(uuid).is_some() {
                        stats.deleted += 1;
                    }
                }
            }
        }
        Ok(stats)
    }

    /// Forgets every row (before a new monitor reply).
    pub(crate) fn clear(&mut self) {
        self.tables.clear();
    }

    /// Number of rows of `table`.
    pub(crate) fn rows(&self, table: &str) -> usize {
        self.tables.get(table).map_or(0, HashMap::len)
    }

    fn row(&self, table: &str, uuid: &str) -> Option<&Map<String, Value>> {
        self.tables.get(table)?.get(uuid)
    }

    /// Every named bridge with its ports: per port, its row, how many interfaces it lists and
    /// the named interface rows found. Rows that reference missing rows (a transient state
    /// between two updates) are skipped, not errors.
    fn bridge_ports(&self) -> Vec<(&str, Vec<PortRows<'_>>)> {
        let Some(bridges) = self.tables.get("Bridge") else {
            return Vec::new();
        };
        bridges
            .values()
            .filter_map(|row| {
                let name = row_name(row)?;
                let ports = row
                    .get("ports")
                    .map(decode::set)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(decode::uuid)
                    .filter_map(|port| self.row("Port", port))
                    .map(|prow| {
                        let ids: Vec<&str> = prow
                            .get("interfaces")
                            .map(decode::set)
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(decode::uuid)
                            .collect();
                        let listed = ids.len();
                        let ifaces = ids
                            .into_iter()
                            .filter_map(|i| self.row("Interface", i))
                            .filter_map(|irow| Some((row_name(irow)?, irow)))
                            .collect();
                        PortRows {
                            row: prow,
                            listed,
                            ifaces,
                        }
                    })
                    .collect();
                Some((name, ports))
            })
            .collect()
    }

    /// `hw-offload` and `tc-policy` of `Open_vSwitch.other_config` (defaults without the row).
    pub(crate) fn offload(&self) -> OffloadConfig {
        let other = self
            .tables
            .get("Open_vSwitch")
            .and_then(|t| t.values().next())
            .and_then(|r| r.get("other_config"));
        OffloadConfig::from_other_config(
            decode::map_get(other, "hw-offload"),
            decode::map_get(other, "tc-policy"),
        )
    }

    /// `Open_vSwitch.ovs_version`, if set.
    pub(crate) fn ovs_version(&self) -> Option<&str> {
        self.tables
            .get("Open_vSwitch")?
            .values()
            .find_map(|r| r.get("ovs_version")?.as_str())
    }

    /// The bridges with their ports, keyed by bridge name.
    ///
    /// Each *interface* becomes one [`OvsPort`] keyed by interface name (a bond port has several
    /// interfaces, each with its own ofport); the VLAN tag comes from its port. Rows that reference
    /// missing rows (a transient state between two updates) are skipped, not errors.
    pub(crate) fn bridges(&self) -> BTreeMap<String, Bridge> {
        let mut out = BTreeMap::new();
        for (name, ports) in self.bridge_ports() {
            let mut bridge = Bridge {
                name: name.to_string(),
                ports: BTreeMap::new(),
            };
            for p in ports {
                let tag = decode::opt_int(p.row.get("tag")).and_then(|t| u16::try_from(t).ok());
                for (iname, irow) in p.ifaces {
                    let ext = irow.get("external_ids");
                    let port = OvsPort {
                        name: iname.to_string(),
                        ofport: decode::opt_int(irow.get("ofport"))
                            .and_then(|p| u32::try_from(p).ok()),
                        tag,
                        iface_id: decode::map_get(ext, "iface-id").map(str::to_string),
                        vm_uuid: decode::map_get(ext, "vm-uuid").map(str::to_string),
                        attached_mac: decode::map_get(ext, "attached-mac").map(str::to_string),
                        kind: irow
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        error: interface_error(irow),
                    };
                    bridge.ports.insert(port.name.clone(), port);
                }
            }
            out.insert(name.to_string(), bridge);
        }
        out
    }
}

impl OvsdbState {
    /// State and counters of every interface of every bridge, keyed by (bridge, interface);
    /// empty unless the monitor asked for the columns ([`OvsdbOptions::interface_stats`]).
    pub(crate) fn interfaces(&self) -> InterfaceMap {
        let mut out = InterfaceMap::new();
        for (bname, ports) in self.bridge_ports() {
            for p in ports {
                for (iname, irow) in p.ifaces {
                    if !irow.contains_key("statistics") {
                        continue;
                    }
                    let st = irow.get("statistics");
                    let counters = |dir: &str| Counters {
                        bytes: decode::map_get_int(st, &format!("{dir}_bytes")),
                        packets: decode::map_get_int(st, &format!("{dir}_packets")),
                        drops: decode::map_get_int(st, &format!("{dir}_dropped")),
                        errors: decode::map_get_int(st, &format!("{dir}_errors")),
                    };
                    let state = |col: &str| decode::opt_str(irow.get(col)).map(|s| s == "up");
                    out.insert(
                        (bname.to_string(), iname.to_string()),
                        InterfaceStats {
                            link_up: state("link_state"),
                            admin_up: state("admin_state"),
                            mtu: decode::opt_int(irow.get("mtu"))
                                .and_then(|n| u32::try_from(n).ok()),
                            link_resets: decode::opt_int(irow.get("link_resets"))
                                .and_then(|n| u64::try_from(n).ok()),
                            rx: counters("rx"),
                            tx: counters("tx"),
                        },
                    );
                }
            }
        }
        out
    }
}

impl OvsdbState {
    /// LACP, BFD, CFM and tunnel state and the error of every interface that has any, keyed by (bridge,
    /// interface). An interface is a bond member when its port has several interfaces or runs LACP.
    pub(crate) fn links(&self) -> LinkMap {
        let mut out = LinkMap::new();
        for (bname, ports) in self.bridge_ports() {
            for p in ports {
                let several = p.listed > 1;
                let pname = row_name(p.row);
                for (iname, irow) in p.ifaces {
                    // A port with one interface running LACP is a bond of one.
                    let lacp = decode::opt_bool(irow.get("lacp_current")).is_some();
                    let link = link_health(irow, pname.filter(|_| several || lacp));
                    if !link.is_empty() {
                        out.insert((bname.to_string(), iname.to_string()), link);
                    }
                }
            }
        }
        out
    }
}

/// The `name` column of a row.
fn row_name(row: &Map<String, Value>) -> Option<&str> {
    row.get("name").and_then(Value::as_str)
}

/// One port of a bridge as [`OvsdbState::bridge_ports`] finds it.
struct PortRows<'a> {
    row: &'a Map<String, Value>,
    /// How many interfaces the port row lists.
    listed: usize,
    /// Its named interface rows that exist.
    ifaces: Vec<(&'a str, &'a Map<String, Value>)>,
}

/// The link protocol columns of one `Interface` row (see [`LinkHealth`]).
fn link_health(irow: &Map<String, Value>, bond: Option<&str>) -> LinkHealth {
    let bfd_status = irow.get("bfd_status");
    let status = irow.get("status");
    let bfd = decode::map_get(bfd_status, "state").map(|state| BfdState {
        up: state == "up",
        forwarding: decode::map_get(bfd_status, "forwarding") == Some("true"),
        remote_up: decode::map_get(bfd_status, "remote_state") == Some("up"),
        flaps: decode::map_get(bfd_status, "flap_count").and_then(|n| n.parse().ok()),
    });
    let cfm = decode::opt_bool(irow.get("cfm_fault")).map(|fault| CfmState {
        fault,
        remote_up: decode::opt_str(irow.get("cfm_remote_opstate")).map(|s| s == "up"),
        flaps: decode::opt_int(irow.get("cfm_flap_count")).and_then(|n| u64::try_from(n).ok()),
    });
    LinkHealth {
        bond: bond.map(str::to_string),
        lacp_current: decode::opt_bool(irow.get("lacp_current")),
        bfd,
        cfm,
        egress: decode::map_get(status, "tunnel_egress_iface").and_then(|dev| {
            let carrier = decode::map_get(status, "tunnel_egress_iface_carrier")?;
            Some((dev.to_string(), carrier == "up"))
        }),
        error: interface_error(irow),
    }
}

/// `Interface.error` (cut to [`MAX_INTERFACE_ERROR_CHARS`]), or `ofport -1` when ovs-vswitchd
/// set `ofport` to -1 (it could not add the interface) without a text; `None` when neither.
fn interface_error(irow: &Map<String, Value>) -> Option<String> {
    match decode::opt_str(irow.get("error")).filter(|e| !e.is_empty()) {
        Some(e) if e.chars().count() > MAX_INTERFACE_ERROR_CHARS => Some(
            e.chars()
                .take(MAX_INTERFACE_ERROR_CHARS - 1)
                .chain(['…'])
                .collect(),
        ),
        Some(e) => Some(e.to_string()),
        None => (decode::opt_int(irow.get("ofport")) == Some(-1)).then(|| "ofport -1".to_string()),
    }
}

/// What the source publishes: the bridges as of the last update.
#[derive(Clone, Debug, Default)]
pub(crate) struct OvsdbSnapshot {
    /// Bridges with their ports, keyed by bridge name.
    pub(crate) bridges: BTreeMap<String, Bridge>,
    /// Whether the connection is up and synchronized. While `false`, `bridges` is the last known state
    /// (kept so that detectors do not see every port vanish during an ovsdb-server restart).
    pub(crate) connected: bool,
    /// Incremented with every published change (0 = never synchronized).
    pub(crate) generation: u64,
    /// Interface state and counters (only with [`OvsdbOptions::interface_stats`]).
    pub(crate) interfaces: std::sync::Arc<InterfaceMap>,
    /// LACP, BFD, CFM and tunnel state (always monitored, see [`monitor_request`]).
    pub(crate) links: std::sync::Arc<LinkMap>,
    /// `Open_vSwitch.other_config` `hw-offload` and `tc-policy`.
    pub(crate) offload: OffloadConfig,
}

/// Tunables of [`run_ovsdb_with`]; [`OvsdbOptions::new`] gives the defaults.
#[derive(Clone, Debug)]
pub(crate) struct OvsdbOptions {
    /// Directory holding `db.sock` (`--ovs-run-dir`, default `/run/openvswitch`).
    pub(crate) run_dir: PathBuf,
    /// First reconnect delay; doubled per failed attempt up to `max_backoff`.
    pub(crate) min_backoff: Duration,
    /// Longest reconnect delay.
    pub(crate) max_backoff: Duration,
    /// After this long without data an `echo` probe is sent; without an answer for as long again,
    /// the connection is reset.
    pub(crate) probe_interval: Duration,
    /// Bound of one message (and of the receive buffer).
    pub(crate) max_message_bytes: usize,
    /// Also monitor the `Interface` columns `statistics`, `link_state`, `admin_state`, `mtu` and
    /// `link_resets` (`[flows] interface_metrics`): ovs-vswitchd rewrites `statistics` every 5 s,
    /// so this costs one update per 5 s per busy interface (the others change only with the
    /// device's state).
    pub(crate) interface_stats: bool,
}

impl OvsdbOptions {
    /// Defaults: backoff 50 ms … 5 s, probe after 30 s idle, 64 MiB message bound.
    pub(crate) fn new(run_dir: impl Into<PathBuf>) -> OvsdbOptions {
        OvsdbOptions {
            run_dir: run_dir.into(),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            probe_interval: Duration::from_secs(30),
            max_message_bytes: crate::model::limits::MAX_OVSDB_MESSAGE_BYTES,
            interface_stats: false,
        }
    }

    /// `<run_dir>/db.sock`.
    pub(crate) fn socket_path(&self) -> PathBuf {
        super::ovsdb_socket(&self.run_dir)
    }
}

/// Whether the source can run on this host (for `pinflow check`): `<run_dir>/db.sock` exists and is a
/// socket. `Err` carries the reason.
pub(crate) fn can_run(run_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let path = super::ovsdb_socket(run_dir);
    match std::fs::metadata(&path) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(_) => Err(format!("{} is not a socket", path.display())),
        Err(e) => Err(format!(
            "no OVSDB socket at {} ({e}); is ovsdb-server running?",
            path.display()
        )),
    }
}

/// The `monitor` request for the tables and columns pinflow reads (with `interface_stats`, the
/// interfaces' state and counters too).
///
/// The link protocol columns (LACP, BFD, CFM, `status` with the tunnels' egress carrier) and
/// `error` are always monitored, with no option: ovs-vswitchd writes them only when a state
/// changes (a partner expires, a BFD session flaps, a carrier drops, a device cannot be opened),
/// so they cost no steady-state updates, and they have series only where the feature is
/// configured or an interface has an error (bounded by the configuration).
pub(crate) fn monitor_request(id: u64, interface_stats: bool) -> Value {
    let mut iface = vec![
        "name",
        "ofport",
        "type",
        "external_ids",
        "lacp_current",
        "bfd_status",
        "cfm_fault",
        "cfm_remote_opstate",
        "cfm_flap_count",
        "status",
        "error",
    ];
    if interface_stats {
        iface.extend([
            "statistics",
            "link_state",
            "admin_state",
            "mtu",
            "link_resets",
        ]);
    }
    json!({
        "id": id,
        "method": "monitor",
        "params": ["Open_vSwitch", MONITOR_ID, {
            "Open_vSwitch": {"columns": ["bridges", "ovs_version", "other_config"]},
            "Bridge": {"columns": ["name", "ports"]},
            "Port": {"columns": ["name", "interfaces", "tag"]},
            "Interface": {"columns": iface},
        }],
    })
}

/// Runs the OVSDB source until every receiver of `tx` is dropped (or the task is aborted), with
/// default options for `run_dir`. Never returns an error: failures are reported through `health`
/// (`pinflow_source_up{source="ovsdb"}`, `pinflow_source_errors_total`) and retried.
pub(crate) async fn run_ovsdb(
    run_dir: PathBuf,
    tx: watch::Sender<OvsdbSnapshot>,
    health: SourceRegistry,
) {
    run_ovsdb_with(OvsdbOptions::new(run_dir), tx, health).await;
}

/// Runs the OVSDB source with explicit options; see the module documentation.
pub(crate) async fn run_ovsdb_with(
    opts: OvsdbOptions,
    tx: watch::Sender<OvsdbSnapshot>,
    health: SourceRegistry,
) {
    let mut backoff = opts.min_backoff;
    loop {
        let mut synced = false;
        let end = session(&opts, &tx, &health, &mut synced).await;
        let err = match end {
            Ok(()) => return,
            Err(e) => e,
        };
        if tx.is_closed() {
            return;
        }
        if synced {
            backoff = opts.min_backoff;
        }
        let reason = err.to_string();
        if !err.is_unavailable() {
            health.errors(SOURCE.name, 1);
        }
        // The health registry logs the state change (down with this reason, back up) once.
        health.down(SOURCE.name, reason);
        tx.send_if_modified(|s| std::mem::replace(&mut s.connected, false));
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = tx.closed() => return,
        }
        backoff = (backoff * 2).min(opts.max_backoff);
    }
}

async fn send(stream: &mut UnixStream, msg: &Value) -> Result<(), OvsdbError> {
    stream.write_all(msg.to_string().as_bytes()).await?;
    Ok(())
}

async fn connect(path: &Path) -> Result<UnixStream, OvsdbError> {
    UnixStream::connect(path)
        .await
        .map_err(|source| OvsdbError::Connect {
            path: path.to_path_buf(),
            source,
        })
}

/// One connection: monitor, then follow updates. `Ok(())` only when nobody listens any more.
async fn session(
    opts: &OvsdbOptions,
    tx: &watch::Sender<OvsdbSnapshot>,
    health: &SourceRegistry,
    synced: &mut bool,
) -> Result<(), OvsdbError> {
    let started = Instant::now();
    let mut stream = connect(&opts.socket_path()).await?;
    const MONITOR_REQ: u64 = 0;
    send(
        &mut stream,
        &monitor_request(MONITOR_REQ, opts.interface_stats),
    )
    .await?;
    let mut framer = JsonFramer::new(opts.max_message_bytes);
    let mut state = OvsdbState::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut probe_sent = false;
    let mut echo_seq = 0u64;
    loop {
        let read = tokio::select! {
            r = tokio::time::timeout(opts.probe_interval, stream.read(&mut chunk)) => r,
            () = tx.closed() => return Ok(()),
        };
        let n = match read {
            Err(_) if probe_sent => return Err(OvsdbError::Timeout(opts.probe_interval * 2)),
            Err(_) => {
                echo_seq += 1;
                send(
                    &mut stream,
                    &json!({"id": format!("echo-{echo_seq}"), "method": "echo", "params": []}),
                )
                .await?;
                probe_sent = true;
                continue;
            }
            Ok(Ok(0)) => {
                return Err(OvsdbError::Closed {
                    pending: framer.buffered(),
                });
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.into()),
        };
        probe_sent = false;
        framer.push(chunk.get(..n).unwrap_or_default())?;
        let mut changed = false;
        while let Some(msg) = framer.next_message()? {
            let took = started.elapsed();
            match classify(&msg)? {
                Message::Reply { id, result } if id == &json!(MONITOR_REQ) => {
                    state.clear();
                    state.apply_update(result)?;
                    *synced = true;
                    changed = true;
                    health.up(
                        SOURCE.name,
                        format!("monitoring {}", opts.socket_path().display()),
                        took,
                    );
                }
                Message::Reply { .. } => {}
                Message::Error { id, error } if id == &json!(MONITOR_REQ) => {
                    return Err(OvsdbError::Rpc(error.to_string()));
                }
                Message::Error { error, .. } => {
                    tracing::debug!(source = SOURCE.name, "error reply: {error}");
                }
                Message::Update { table_updates } => {
                    if !*synced {
                        return Err(malformed("update before the monitor reply"));
                    }
                    state.apply_update(table_updates)?;
                    changed = true;
                }
                Message::Echo { id, params } => {
                    // The server's inactivity probe: the session, and so the replica, is current.
                    health.alive(SOURCE.name);
                    send(
                        &mut stream,
                        &json!({"id": id, "result": params, "error": null}),
                    )
                    .await?;
                }
                Message::OtherRequest { id, method } => {
                    let error = format!("pinflow does not implement {method:?}");
                    send(
                        &mut stream,
                        &json!({"id": id, "result": null, "error": error}),
                    )
                    .await?;
                }
                Message::OtherNotification => {}
            }
        }
        if changed {
            let bridges = state.bridges();
            let interfaces = std::sync::Arc::new(state.interfaces());
            let links = std::sync::Arc::new(state.links());
            let offload = state.offload();
            tx.send_modify(|s| {
                s.bridges = bridges;
                s.interfaces = interfaces;
                s.links = links;
                s.offload = offload;
                s.connected = true;
                s.generation += 1;
            });
            health.up(
                SOURCE.name,
                format!(
                    "{} bridges, {} interfaces{}",
                    state.rows("Bridge"),
                    state.rows("Interface"),
                    state
                        .ovs_version()
                        .map(|v| format!(", OVS {v}"))
                        .unwrap_or_default()
                ),
                started.elapsed(),
            );
        }
        if tx.is_closed() {
            return Ok(());
        }
    }
}

/// A JSON-RPC 1.0 message as OVSDB uses it.
#[derive(Debug)]
enum Message<'a> {
    Reply { id: &'a Value, result: &'a Value },
    Error { id: &'a Value, error: &'a Value },
    Update { table_updates: &'a Value },
    Echo { id: &'a Value, params: &'a Value },
    OtherRequest { id: &'a Value, method: &'a str },
    OtherNotification,
}

fn classify(msg: &Value) -> Result<Message<'_>, OvsdbError> {
    let obj = msg
        .as_object()
        .ok_or_else(|| malformed("JSON-RPC message is not an object"))?;
    let id = obj.get("id").unwrap_or(&Value::Null);
    match obj.get("method") {
        Some(method) => {
            let method = method
                .as_str()
                .ok_or_else(|| malformed("method is not a string"))?;
            let params = obj.get("params").unwrap_or(&Value::Null);
            match (method, id.is_null()) {
                ("echo", false) => Ok(Message::Echo { id, params }),
                ("update", true) => {
                    let table_updates = match params.as_array().map(Vec::as_slice) {
                        Some([mid, tu]) if mid == MONITOR_ID => tu,
                        Some([_, _]) => return Ok(Message::OtherNotification),
                        _ => {
                            return Err(malformed(
                                "update params are not [monitor-id, table-updates]",
                            ));
                        }
                    };
                    Ok(Message::Update { table_updates })
                }
                (_, false) => Ok(Message::OtherRequest { id, method }),
                (_, true) => Ok(Message::OtherNotification),
            }
        }
        None => match obj.get("error") {
            Some(error) if !error.is_null() => Ok(Message::Error { id, error }),
            _ => Ok(Message::Reply {
                id,
                result: obj
                    .get("result")
                    .ok_or_else(|| malformed("reply without result or error"))?,
            }),
        },
    }
}

#[cfg(test)]
mod real_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn capture() -> Value {
        serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/ovsdb/capture.json"
        )))
        .expect("fixture parses")
    }

    /// The table-updates of the first message of capture step `step`.
    fn updates(cap: &Value, step: &str) -> Value {
        let msg = &cap[step][0];
        match classify(msg).expect("classify") {
            Message::Reply { result, .. } => result.clone(),
            Message::Update { table_updates } => table_updates.clone(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn replays_captured_monitor_session() {
        let cap = capture();
        let mut st = OvsdbState::new();
        let s = st.apply_update(&updates(&cap, "initial")).unwrap();
        assert_eq!(s.inserted, 6);
        let b = st.bridges();
        let p1 = &b["pfo-br0"].ports["pfo-p1"];
        assert_eq!(p1.ofport, Some(1));
        assert_eq!(p1.tag, Some(5));
        assert_eq!(p1.iface_id.as_deref(), Some("abc"));
        assert_eq!(p1.vm_uuid.as_deref(), Some("vm1"));
        assert_eq!(p1.attached_mac.as_deref(), Some("fa:16:3e:00:00:01"));
        assert_eq!(p1.kind, "dummy");
        let local = &b["pfo-br0"].ports["pfo-br0"];
        assert_eq!(
            (local.ofport, local.tag, local.kind.as_str()),
            (Some(65534), None, "internal")
        );

        st.apply_update(&updates(&cap, "add_port")).unwrap();
        let p2 = st.bridges()["pfo-br0"].ports["pfo-p2"].clone();
        assert_eq!((p2.ofport, p2.tag, p2.iface_id), (Some(2), None, None));

        st.apply_update(&updates(&cap, "dead_vlan")).unwrap();
        assert_eq!(st.bridges()["pfo-br0"].ports["pfo-p2"].tag, Some(4095));

        st.apply_update(&updates(&cap, "iface_id")).unwrap();
        let p2 = st.bridges()["pfo-br0"].ports["pfo-p2"].clone();
        assert_eq!(p2.iface_id.as_deref(), Some("port-2"));
        assert_eq!(p2.vm_uuid.as_deref(), Some("vm-2"));

        let s = st.apply_update(&updates(&cap, "del_port")).unwrap();
        assert_eq!((s.deleted, s.modified), (2, 1));
        let b = st.bridges();
        assert!(!b["pfo-br0"].ports.contains_key("pfo-p1"));
        assert_eq!(b["pfo-br0"].ports.len(), 2);

        st.apply_update(&updates(&cap, "add_br")).unwrap();
        let b = st.bridges();
        assert_eq!(b.keys().collect::<Vec<_>>(), ["pfo-br0", "pfo-br1"]);
        assert_eq!(b["pfo-br1"].ports["pfo-br1"].ofport, Some(65534));
    }

    /// `hw-offload`/`tc-policy` from the `Open_vSwitch` row, following its updates.
    #[test]
    fn offload_configuration() {
        let mut st = OvsdbState::new();
        assert_eq!(st.offload(), OffloadConfig::default());
        st.apply_update(&json!({"Open_vSwitch": {"o": {"new": {
            "bridges": ["set", []], "ovs_version": "3.1.0", "other_config": ["map", []]}}}}))
            .unwrap();
        assert_eq!(
            (st.offload().hw_offload, st.offload().tc_policy),
            (false, "none")
        );
        st.apply_update(
            &json!({"Open_vSwitch": {"o": {"new": {"other_config": ["map", [
            ["hw-offload", "true"], ["tc-policy", "skip_sw"], ["flow-limit", "1000"]]]}}}}),
        )
        .unwrap();
        assert_eq!(
            (st.offload().hw_offload, st.offload().tc_policy),
            (true, "skip_sw")
        );
        st.apply_update(
            &json!({"Open_vSwitch": {"o": {"new": {"other_config": ["map", [
            ["hw-offload", "TRUE"], ["tc-policy", "bogus"]]]}}}}),
        )
        .unwrap();
        assert_eq!(
            (st.offload().hw_offload, st.offload().tc_policy),
            (true, "invalid")
        );
        st.apply_update(
            &json!({"Open_vSwitch": {"o": {"new": {"other_config": ["map", [
            ["hw-offload", "false"], ["tc-policy", "skip_hw"]]]}}}}),
        )
        .unwrap();
        assert_eq!(
            (st.offload().hw_offload, st.offload().tc_policy),
            (false, "skip_hw")
        );
        assert!(
            monitor_request(0, false)
                .to_string()
                .contains("other_config")
        );
    }

    #[test]
    fn bonds_failed_ofports_and_dangling_refs() {
        let mut st = OvsdbState::new();
        st.apply_update(&json!({
            "Bridge": {"b1": {"new": {"name": "br-ex", "ports": ["set", [["uuid", "p1"], ["uuid", "p-missing"]]]}}},
            "Port": {"p1": {"new": {"name": "bond0", "tag": ["set", [7]],
                "interfaces": ["set", [["uuid", "i1"], ["uuid", "i2"], ["uuid", "i3"]]]}}},
            "Interface": {
                "i1": {"new": {"name": "eth0", "ofport": 3, "type": "", "external_ids": ["map", []]}},
                "i2": {"new": {"name": "eth1", "ofport": -1, "type": "", "external_ids": ["map", []]}},
                "i3": {"new": {"name": "eth2", "ofport": ["set", []], "type": ""}}
            }
        }))
        .unwrap();
        let b = st.bridges();
        let ports = &b["br-ex"].ports;
        assert_eq!(ports.len(), 3);
        assert_eq!(
            (ports["eth0"].ofport, ports["eth0"].tag),
            (Some(3), Some(7))
        );
        assert_eq!(ports["eth1"].ofport, None);
        assert_eq!(ports["eth2"].ofport, None);
    }

    #[test]
    fn interface_state_and_counters() {
        let mut st = OvsdbState::new();
        st.apply_update(&json!({
            "Bridge": {"b1": {"new": {"name": "br-int", "ports": ["set", [["uuid", "p1"], ["uuid", "p2"]]]}}},
            "Port": {
                "p1": {"new": {"name": "tap1", "interfaces": ["uuid", "i1"]}},
                "p2": {"new": {"name": "patch-tun", "interfaces": ["uuid", "i2"]}}
            },
            "Interface": {
                "i1": {"new": {"name": "tap1", "ofport": 1, "type": "", "external_ids": ["map", []],
                    "link_state": "up", "admin_state": "up", "mtu": 1450, "mtu_request": 9000,
                    "link_resets": 2,
                    "statistics": ["map", [["rx_bytes", 1000], ["rx_packets", 10], ["rx_dropped", 1],
                        ["rx_errors", 0], ["tx_bytes", 2000], ["tx_packets", 20], ["collisions", 0]]]}},
                "i2": {"new": {"name": "patch-tun", "ofport": 2, "type": "patch", "external_ids": ["map", []],
                    "link_state": ["set", []], "admin_state": ["set", []], "mtu": ["set", []],
                    "link_resets": ["set", []],
                    "statistics": ["map", []]}}
            }
        }))
        .unwrap();
        let ifs = st.interfaces();
        let tap = &ifs[&("br-int".to_string(), "tap1".to_string())];
        assert_eq!(
            (tap.link_up, tap.admin_up, tap.mtu, tap.link_resets),
            (Some(true), Some(true), Some(1450), Some(2)),
            "the MTU in force (`mtu`), not the requested one"
        );
        assert_eq!(
            (tap.rx.bytes, tap.rx.packets, tap.rx.drops, tap.rx.errors),
            (Some(1000), Some(10), Some(1), Some(0))
        );
        assert_eq!((tap.tx.bytes, tap.tx.drops), (Some(2000), None));
        let patch = &ifs[&("br-int".to_string(), "patch-tun".to_string())];
        assert_eq!(patch, &InterfaceStats::default());
        // Link down, counters move: a modification of the same row.
        st.apply_update(
            &json!({"Interface": {"i1": {"new": {"link_state": "down", "link_resets": 3,
            "statistics": ["map", [["rx_bytes", 1500]]]}}}}),
        )
        .unwrap();
        let tap = &st.interfaces()[&("br-int".to_string(), "tap1".to_string())];
        assert_eq!(
            (
                tap.link_up,
                tap.admin_up,
                tap.mtu,
                tap.link_resets,
                tap.rx.bytes
            ),
            (Some(false), Some(true), Some(1450), Some(3), Some(1500))
        );
        // Admin down (`ip link set … down`) and a new MTU arrive as their own updates; an MTU
        // that does not fit a 32-bit unsigned number (OVS never writes one) is no MTU.
        st.apply_update(
            &json!({"Interface": {"i1": {"new": {"admin_state": "down", "mtu": 1400}}}}),
        )
        .unwrap();
        let tap = &st.interfaces()[&("br-int".to_string(), "tap1".to_string())];
        assert_eq!(
            (tap.link_up, tap.admin_up, tap.mtu),
            (Some(false), Some(false), Some(1400))
        );
        for bad in [
            json!(-1),
            json!("1500"),
            json!(["set", [1400, 1500]]),
            json!(1u64 << 40),
        ] {
            st.apply_update(&json!({"Interface": {"i1": {"new": {"mtu": bad, "admin_state": 7}}}}))
                .unwrap();
            let tap = &st.interfaces()[&("br-int".to_string(), "tap1".to_string())];
            assert_eq!((tap.admin_up, tap.mtu), (None, None), "{bad}");
        }
        // Without the columns monitored, no interface is listed.
        let mut plain = OvsdbState::new();
        plain
            .apply_update(&json!({
                "Bridge": {"b1": {"new": {"name": "br0", "ports": ["uuid", "p1"]}}},
                "Port": {"p1": {"new": {"name": "x", "interfaces": ["uuid", "i1"]}}},
                "Interface": {"i1": {"new": {"name": "x", "ofport": 1, "type": ""}}}
            }))
            .unwrap();
        assert!(plain.interfaces().is_empty());
        let req = monitor_request(0, true).to_string();
        assert!(req.contains("statistics") && req.contains("link_resets"));
        assert!(req.contains("\"admin_state\"") && req.contains("\"mtu\""));
        assert!(!req.contains("mtu_request"));
        assert!(!monitor_request(0, false).to_string().contains("\"mtu\""));
        assert!(!monitor_request(0, false).to_string().contains("statistics"));
    }

    #[test]
    fn link_protocol_state() {
        let mut st = OvsdbState::new();
        st.apply_update(&json!({
            "Bridge": {"b1": {"new": {"name": "br-ex", "ports": ["set", [["uuid", "p1"], ["uuid", "p2"], ["uuid", "p3"], ["uuid", "p4"]]]}}},
            "Port": {
                "p1": {"new": {"name": "bond0", "interfaces": ["set", [["uuid", "i1"], ["uuid", "i2"]]]}},
                "p2": {"new": {"name": "vx1", "interfaces": ["uuid", "i3"]}},
                "p3": {"new": {"name": "plain", "interfaces": ["uuid", "i4"]}},
                "p4": {"new": {"name": "lag1", "interfaces": ["uuid", "i5"]}}
            },
            "Interface": {
                "i1": {"new": {"name": "eth0", "lacp_current": true, "bfd_status": ["map", []],
                    "cfm_fault": ["set", []], "status": ["map", [["driver_name", "veth"]]]}},
                "i2": {"new": {"name": "eth1", "lacp_current": ["set", [false]]}},
                "i3": {"new": {"name": "vx1", "lacp_current": ["set", []],
                    "bfd_status": ["map", [["state", "up"], ["forwarding", "true"],
                        ["remote_state", "up"], ["flap_count", "2"], ["diagnostic", "No Diagnostic"]]],
                    "cfm_fault": false, "cfm_remote_opstate": "down", "cfm_flap_count": 4,
                    "status": ["map", [["tunnel_egress_iface", "eth9"], ["tunnel_egress_iface_carrier", "down"]]]}},
                "i4": {"new": {"name": "plain", "lacp_current": ["set", []], "bfd_status": ["map", []],
                    "cfm_fault": ["set", []], "cfm_flap_count": ["set", []], "status": ["map", []]}},
                "i5": {"new": {"name": "eth5", "lacp_current": false}}
            }
        }))
        .unwrap();
        let l = st.links();
        let key = |i: &str| ("br-ex".to_string(), i.to_string());
        assert_eq!(l.len(), 4, "{l:?}");
        assert!(!l.contains_key(&key("plain")));
        assert_eq!(
            (
                l[&key("eth0")].bond.as_deref(),
                l[&key("eth0")].lacp_current
            ),
            (Some("bond0"), Some(true))
        );
        assert_eq!(l[&key("eth1")].lacp_current, Some(false));
        assert_eq!(l[&key("eth5")].bond.as_deref(), Some("lag1"));
        let vx = &l[&key("vx1")];
        assert_eq!(vx.bond, None);
        assert_eq!(
            vx.bfd,
            Some(BfdState {
                up: true,
                forwarding: true,
                remote_up: true,
                flaps: Some(2)
            })
        );
        assert_eq!(
            vx.cfm,
            Some(CfmState {
                fault: false,
                remote_up: Some(false),
                flaps: Some(4)
            })
        );
        assert_eq!(vx.egress, Some(("eth9".to_string(), false)));
        // BFD goes down: a modification of the row.
        st.apply_update(&json!({"Interface": {"i3": {"new": {"bfd_status": ["map", [
            ["state", "down"], ["forwarding", "false"], ["remote_state", "down"], ["flap_count", "3"]]]}}}}))
            .unwrap();
        let vx = &st.links()[&key("vx1")];
        assert_eq!(
            vx.bfd.as_ref().map(|b| (b.up, b.forwarding, b.flaps)),
            Some((false, false, Some(3)))
        );
        let req = monitor_request(0, false).to_string();
        assert!(req.contains("bfd_status") && req.contains("lacp_current"));
    }

    #[test]
    fn interface_error_column() {
        let mut st = OvsdbState::new();
        let long = "x".repeat(MAX_INTERFACE_ERROR_CHARS + 50);
        st.apply_update(&json!({
            "Bridge": {"b1": {"new": {"name": "br-int", "ports": ["set", [["uuid", "p1"], ["uuid", "p2"], ["uuid", "p3"], ["uuid", "p4"], ["uuid", "p5"]]]}}},
            "Port": {
                "p1": {"new": {"name": "tap1", "interfaces": ["uuid", "i1"]}},
                "p2": {"new": {"name": "tap2", "interfaces": ["uuid", "i2"]}},
                "p3": {"new": {"name": "tap3", "interfaces": ["uuid", "i3"]}},
                "p4": {"new": {"name": "tap4", "interfaces": ["uuid", "i4"]}},
                "p5": {"new": {"name": "tap5", "interfaces": ["uuid", "i5"]}}
            },
            "Interface": {
                "i1": {"new": {"name": "tap1", "ofport": -1,
                    "error": "could not open network device tap1 (No such device)"}},
                "i2": {"new": {"name": "tap2", "ofport": 7, "error": ["set", []]}},
                "i3": {"new": {"name": "tap3", "ofport": -1, "error": ["set", []]}},
                "i4": {"new": {"name": "tap4", "ofport": ["set", []], "error": ["set", [long]]}},
                "i5": {"new": {"name": "tap5", "ofport": ["set", []], "error": ""}}
            }
        }))
        .unwrap();
        let key = |i: &str| ("br-int".to_string(), i.to_string());
        let l = st.links();
        assert_eq!(l.len(), 3, "{l:?}");
        assert_eq!(
            l[&key("tap1")].error.as_deref(),
            Some("could not open network device tap1 (No such device)")
        );
        assert_eq!(l[&key("tap1")].bond, None);
        assert!(!l.contains_key(&key("tap2")) && !l.contains_key(&key("tap5")));
        assert_eq!(l[&key("tap3")].error.as_deref(), Some("ofport -1"));
        let cut = l[&key("tap4")].error.clone().unwrap();
        assert_eq!(cut.chars().count(), MAX_INTERFACE_ERROR_CHARS);
        assert!(cut.ends_with('…') && cut.starts_with("xxx"));
        // The port's ofport from OVSDB is unknown, not -1 as u32; the port carries the error.
        let tap1 = &st.bridges()["br-int"].ports["tap1"];
        assert_eq!(tap1.ofport, None);
        assert_eq!(tap1.error, l[&key("tap1")].error);
        assert_eq!(st.bridges()["br-int"].ports["tap2"].error, None);
        // The device appears: ovs-vswitchd clears the error and assigns an ofport.
        st.apply_update(
            &json!({"Interface": {"i1": {"new": {"ofport": 9, "error": ["set", []]}}}}),
        )
        .unwrap();
        assert!(!st.links().contains_key(&key("tap1")));
        // The port goes: so does its error.
        st.apply_update(&json!({
            "Bridge": {"b1": {"new": {"ports": ["set", [["uuid", "p1"], ["uuid", "p2"], ["uuid", "p4"], ["uuid", "p5"]]]}}},
            "Port": {"p3": {"old": {}}},
            "Interface": {"i3": {"old": {}}}
        }))
        .unwrap();
        assert_eq!(st.links().keys().collect::<Vec<_>>(), [&key("tap4")]);
        let req = monitor_request(0, false).to_string();
        assert!(req.contains("\"error\""), "{req}");
    }

    /// A real capture (bonds with LACP, BFD and CFM, a tunnel) replayed: what each step changes.
    #[test]
    fn replays_captured_link_protocol_session() {
        let cap: Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/ovsdb/links.json"
        )))
        .expect("fixture parses");
        let mut st = OvsdbState::new();
        let apply = |st: &mut OvsdbState, step: &str| {
            for msg in cap[step].as_array().expect("step") {
                match classify(msg).expect("classify") {
                    Message::Reply { result, .. } => st.apply_update(result),
                    Message::Update { table_updates } => st.apply_update(table_updates),
                    other => panic!("unexpected {other:?}"),
                }
                .expect("applies");
            }
        };
        let key = |b: &str, i: &str| (b.to_string(), i.to_string());
        apply(&mut st, "initial");
        let l = st.links();
        // 4 bond members, 2 BFD/CFM ends, 1 tunnel; bridges' internal ports have nothing.
        assert_eq!(l.len(), 7, "{l:?}");
        for (b, bond, m) in [
            ("pflc-br0", "pflc-bond0", "pflc-a1"),
            ("pflc-br0", "pflc-bond0", "pflc-a2"),
            ("pflc-br1", "pflc-bond1", "pflc-b1"),
            ("pflc-br1", "pflc-bond1", "pflc-b2"),
        ] {
            let h = &l[&key(b, m)];
            assert_eq!(
                (h.bond.as_deref(), h.lacp_current),
                (Some(bond), Some(true))
            );
            assert_eq!((&h.bfd, &h.cfm, &h.egress), (&None, &None, &None));
        }
        let a3 = &l[&key("pflc-br0", "pflc-a3")];
        assert_eq!(
            a3.bfd,
            Some(BfdState {
                up: true,
                forwarding: true,
                remote_up: true,
                flaps: Some(1)
            })
        );
        assert_eq!(
            a3.cfm,
            Some(CfmState {
                fault: false,
                remote_up: None,
                flaps: Some(0)
            })
        );
        assert_eq!((a3.bond.as_deref(), a3.lacp_current), (None, None));
        assert_eq!(
            l[&key("pflc-br0", "pflc-vx")].egress,
            Some(("pflc-a4".to_string(), true))
        );

        apply(&mut st, "bond_link_down");
        let l = st.links();
        assert_eq!(l[&key("pflc-br0", "pflc-a2")].lacp_current, Some(false));
        assert_eq!(l[&key("pflc-br1", "pflc-b2")].lacp_current, Some(false));
        assert_eq!(l[&key("pflc-br0", "pflc-a1")].lacp_current, Some(true));

        apply(&mut st, "bfd_link_down");
        let a3 = &st.links()[&key("pflc-br0", "pflc-a3")];
        assert_eq!(
            a3.bfd
                .as_ref()
                .map(|b| (b.up, b.forwarding, b.remote_up, b.flaps)),
            Some((false, false, false, Some(2)))
        );
        assert_eq!(
            a3.cfm.as_ref().map(|c| (c.fault, c.flaps)),
            Some((true, Some(1)))
        );

        apply(&mut st, "tunnel_carrier_down");
        assert_eq!(
            st.links()[&key("pflc-br0", "pflc-vx")].egress,
            Some(("pflc-a4".to_string(), false))
        );
    }

    #[test]
    fn malformed_updates_change_nothing() {
        let mut st = OvsdbState::new();
        st.apply_update(&json!({"Bridge": {"b1": {"new": {"name": "br0", "ports": ["set", []]}}}}))
            .unwrap();
        for bad in [
            json!([]),
            json!({"Bridge": []}),
            json!({"Bridge": {"b1": 5}}),
            json!({"Bridge": {"b1": {}}}),
            json!({"Bridge": {"b2": {"new": {"name": "x"}}, "b1": {"new": 1}}}),
        ] {
            assert!(
                matches!(st.apply_update(&bad), Err(OvsdbError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(st.bridges().len(), 1);
        assert_eq!(st.rows("Bridge"), 1);
    }

    #[test]
    fn framer_splits_reassembles_and_rejects() {
        let mut f = JsonFramer::new(1 << 10);
        let stream =
            br#"{"id":1,"result":{"s":"a}\"{["}}  [1,[2]]{"method":"echo","params":[],"id":"x"}"#;
        // Feed byte by byte: messages come out exactly when complete.
        let mut got = Vec::new();
        for b in stream.iter() {
            f.push(&[*b]).unwrap();
            while let Some(v) = f.next_message().unwrap() {
                got.push(v);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0]["result"]["s"], "a}\"{[");
        assert_eq!(f.buffered(), 0);

        let mut f = JsonFramer::new(1 << 10);
        f.push(b"  hello").unwrap();
        assert!(matches!(
            f.next_message(),
            Err(OvsdbError::Garbage { offset: 2, .. })
        ));

        let mut f = JsonFramer::new(1 << 10);
        f.push(b"{\"a\": tru}").unwrap();
        assert!(matches!(f.next_message(), Err(OvsdbError::Json(_))));

        let mut f = JsonFramer::new(16);
        f.push(b"{\"a\": \"0123").unwrap();
        assert!(f.next_message().unwrap().is_none());
        assert!(matches!(
            f.push(b"456789"),
            Err(OvsdbError::MessageTooLarge { limit: 16 })
        ));
    }

    #[test]
    fn classifies_json_rpc() {
        let echo = json!({"id": "e1", "method": "echo", "params": [1]});
        assert!(matches!(classify(&echo), Ok(Message::Echo { .. })));
        let upd = json!({"id": null, "method": "update", "params": ["pinflow", {}]});
        assert!(matches!(classify(&upd), Ok(Message::Update { .. })));
        let other = json!({"id": null, "method": "update", "params": ["someone", {}]});
        assert!(matches!(classify(&other), Ok(Message::OtherNotification)));
        let bad = json!({"id": null, "method": "update", "params": 3});
        assert!(classify(&bad).is_err());
        let err = json!({"id": 0, "result": null, "error": "unknown database"});
        assert!(matches!(classify(&err), Ok(Message::Error { .. })));
        let req = json!({"id": 9, "method": "lock", "params": ["x"]});
        assert!(matches!(
            classify(&req),
            Ok(Message::OtherRequest { method: "lock", .. })
        ));
        assert!(classify(&json!([1])).is_err());
        assert!(classify(&json!({"id": 1})).is_err());
    }

    /// A fake ovsdb-server on a socketpair-backed listener: checks echo replies, garbage handling and
    /// reconnection without OVS installed.
    #[tokio::test]
    async fn fake_server_echo_garbage_and_reconnect() {
        let dir = tempfile::tempdir().unwrap();
        assert!(can_run(dir.path()).unwrap_err().contains("no OVSDB socket"));
        let listener = tokio::net::UnixListener::bind(dir.path().join("db.sock")).unwrap();
        assert_eq!(can_run(dir.path()), Ok(()));
        let (tx, mut rx) = watch::channel(OvsdbSnapshot::default());
        let health = SourceRegistry::default();
        let mut opts = OvsdbOptions::new(dir.path());
        opts.min_backoff = Duration::from_millis(10);
        let task = tokio::spawn(run_ovsdb_with(opts, tx, health.clone()));
        let initial = json!({"id": 0, "error": null, "result": {
            "Bridge": {"b1": {"new": {"name": "br0", "ports": ["uuid", "p1"]}}},
            "Port": {"p1": {"new": {"name": "p1", "interfaces": ["uuid", "i1"], "tag": 4095}}},
            "Interface": {"i1": {"new": {"name": "p1", "ofport": 1, "type": "", "external_ids": ["map", []]}}}
        }});

        // Connection 1: monitor request, initial reply split in two writes, echo, then garbage.
        let (mut c, _) = listener.accept().await.unwrap();
        let mut framer = JsonFramer::new(1 << 20);
        let req = read_msg(&mut c, &mut framer).await;
        assert_eq!(req["method"], "monitor");
        let text = initial.to_string();
        let (a, b) = text.split_at(text.len() / 2);
        c.write_all(a.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.write_all(b.as_bytes()).await.unwrap();
        rx.wait_for(|s| s.connected).await.unwrap();
        assert_eq!(rx.borrow().bridges["br0"].ports["p1"].tag, Some(4095));
        c.write_all(br#"{"id":"e","method":"echo","params":["hi"]}"#)
            .await
            .unwrap();
        let reply = read_msg(&mut c, &mut framer).await;
        assert_eq!(reply, json!({"id": "e", "result": ["hi"], "error": null}));
        c.write_all(b"\x00garbage").await.unwrap();
        rx.wait_for(|s| !s.connected).await.unwrap();
        assert!(
            rx.borrow().bridges.contains_key("br0"),
            "last state kept while down"
        );
        assert_eq!(health.snapshot()[SOURCE.name].errors_total, 1);
        assert!(!health.snapshot()[SOURCE.name].up);

        // Connection 2: state rebuilt from the new reply (the port is gone).
        let (mut c, _) = listener.accept().await.unwrap();
        let mut framer = JsonFramer::new(1 << 20);
        let _ = read_msg(&mut c, &mut framer).await;
        let initial2 = json!({"id": 0, "error": null, "result": {
            "Bridge": {"b1": {"new": {"name": "br0", "ports": ["set", []]}}}
        }});
        c.write_all(initial2.to_string().as_bytes()).await.unwrap();
        rx.wait_for(|s| s.connected).await.unwrap();
        assert!(rx.borrow().bridges["br0"].ports.is_empty());
        let upd = json!({"id": null, "method": "update", "params": ["pinflow",
            {"Bridge": {"b2": {"new": {"name": "br1", "ports": ["set", []]}}}}]});
        c.write_all(upd.to_string().as_bytes()).await.unwrap();
        rx.wait_for(|s| s.bridges.contains_key("br1"))
            .await
            .unwrap();
        assert!(health.snapshot()[SOURCE.name].up);
        // Nobody listens any more: the source stops by itself.
        drop(rx);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("source stops when its receivers are gone")
            .expect("source task does not panic");
    }

    async fn read_msg(c: &mut UnixStream, framer: &mut JsonFramer) -> Value {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(v) = framer.next_message().unwrap() {
                return v;
            }
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "client closed");
            framer.push(&buf[..n]).unwrap();
        }
    }
}
