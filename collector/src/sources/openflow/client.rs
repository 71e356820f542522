//! Async OpenFlow 1.3 client for ovs-vswitchd's per-bridge management socket, and the per-bridge
//! mirror loop ([`run_bridge`]) the daemon runs.
//!
//! Session order: HELLO (OF1.3 only) → FEATURES → flow monitor (add/delete/modify, with actions)
//! → PORT_DESC → full flow dump with counters. The monitor is started *before* the dump so that
//! no change is lost: updates that arrive during the dump are queued and applied after it (each
//! carries the full flow, so replaying them over the dump converges to the switch's state).
//! After that, cost is proportional to flow changes. ECHO requests are answered at any time.

use super::batch_timer::BatchTimer;
use super::wire::{
    self, Features, MAX_MESSAGE_LEN, Message, MultipartReply, NXFMF_ACTIONS, NXFMF_ADD,
    NXFMF_DELETE, NXFMF_MODIFY, OFP13_VERSION, OFPT_ECHO_REPLY, OFPT_ECHO_REQUEST, OFPT_ERROR,
    OFPT_EXPERIMENTER, OFPT_FEATURES_REPLY, OFPT_HELLO, OFPT_MULTIPART_REPLY, ONF_EXPERIMENTER,
    ONFST13_FLOW_MONITOR, ONFT13_FLOW_MONITOR_PAUSED, ONFT13_FLOW_MONITOR_RESUMED, OfError,
    OfResult, PortDesc, Rd,
};
use crate::model::openflow::render::{
    FlowStats, FlowUpdate, MAX_UNDECODABLE_KEPT, UndecodableFlow, decode_flow_stats,
    decode_flow_updates, keep_undecodable,
};
use crate::model::openflow::{FlowEntry, FlowKey};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};

const OFPT_PORT_STATUS: u8 = 12;
/// Bytes a socket read may add to the receive buffer (a 100 000-flow dump is ~15 MB).
const READ_CHUNK: usize = 256 * 1024;
/// [`READ_CHUNK`] of a one-shot dump ([`OpenFlowClient::connect_reading`]): one largest message.
pub(crate) const ONE_SHOT_READ_CHUNK: usize = 64 * 1024;

/// An asynchronous event from a monitoring connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MonitorEvent {
    /// A flow changed.
    Flow(FlowUpdate),
    /// A port was added (reason 0), deleted (1) or modified (2).
    Port {
        /// `OFPPR_*` reason.
        reason: u8,
        /// The port description.
        port: PortDesc,
    },
    /// A flow update that does not decode (skipped; see [`UndecodableFlow`]).
    Undecodable(UndecodableFlow),
    /// The switch paused updates (its send buffer filled); a resync is advisable after `Resumed`.
    Paused,
    /// The switch resumed updates.
    Resumed,
}

/// One OpenFlow 1.3 connection to `<run_dir>/<bridge>.mgmt`.
#[derive(Debug)]
pub(crate) struct OpenFlowClient {
    path: PathBuf,
    /// The socket, registered with the runtime's reactor; `None` while [`Self::park`]ed.
    stream: Option<UnixStream>,
    /// The socket out of the reactor while parked (its readiness wakes nobody).
    parked: Option<std::os::unix::net::UnixStream>,
    rbuf: Vec<u8>,
    next_xid: u32,
    max_message_len: usize,
    features: Features,
    monitoring: bool,
    pending: VecDeque<MonitorEvent>,
    max_pending: usize,
    timeout: Duration,
    last_rx: Instant,
    /// Most bytes one socket read appends to `rbuf`.
    read_chunk: usize,
    /// Flows of the last dump that did not decode (taken with [`OpenFlowClient::take_undecodable`]):
    /// the first [`MAX_UNDECODABLE_KEPT`] raw, and how many there were in all.
    undecodable: (Vec<UndecodableFlow>, usize),
}

impl OpenFlowClient {
    /// Connects, negotiates OpenFlow 1.3 and reads the switch features, within `timeout`.
    pub(crate) async fn connect(path: impl AsRef<Path>, timeout: Duration) -> OfResult<Self> {
        Self::connect_reading(path, timeout, READ_CHUNK).await
    }

    /// Like [`connect`](Self::connect), reading at most `read_chunk` bytes from the socket at a
    /// time: the receive buffer then stays at about twice that (one read and the partial message
    /// it ends with), which for a one-shot dump ([`ONE_SHOT_READ_CHUNK`]) means few fresh pages
    /// to fault in and data that is still in cache when it is decoded.
    pub(crate) async fn connect_reading(
        path: impl AsRef<Path>,
        timeout: Duration,
        read_chunk: usize,
    ) -> OfResult<Self> {
        let path = path.as_ref().to_path_buf();
        let read_chunk = read_chunk.max(wire::HEADER_LEN);
        let stream = tokio::time::timeout(timeout, UnixStream::connect(&path))
            .await
            .map_err(|_| OfError::Timeout("connect"))?
            .map_err(|source| OfError::Io {
                path: path.display().to_string(),
                source,
            })?;
        let mut c = OpenFlowClient {
            path,
            stream: Some(stream),
            parked: None,
            rbuf: Vec::with_capacity(2 * read_chunk.min(READ_CHUNK / 4)),
            next_xid: 1,
            max_message_len: MAX_MESSAGE_LEN,
            features: Features::default(),
            monitoring: false,
            pending: VecDeque::new(),
            max_pending: crate::model::limits::MAX_PENDING_MONITOR_EVENTS,
            timeout,
            last_rx: Instant::now(),
            read_chunk,
            undecodable: (Vec::new(), 0),
        };
        tokio::time::timeout(timeout, c.handshake())
            .await
            .map_err(|_| OfError::Timeout("HELLO/FEATURES"))??;
        Ok(c)
    }

    async fn handshake(&mut self) -> OfResult<()> {
        let xid = self.xid();
        self.send(&wire::encode_hello(xid)).await?;
        let hello = self.recv_raw().await?;
        if hello.header.msg_type == OFPT_ERROR {
            return Err(OfError::Switch(wire::ErrorMsg::parse(&hello.body)?));
        }
        if hello.header.msg_type != OFPT_HELLO {
            return Err(OfError::malformed(format!(
                "expected HELLO, got message type {}",
                hello.header.msg_type
            )));
        }
        let bitmap = wire::hello_bitmap(&hello.body);
        let ok = if bitmap != 0 {
            bitmap & (1 << OFP13_VERSION) != 0
        } else {
            hello.header.version >= OFP13_VERSION
        };
        if !ok {
            return Err(OfError::Version {
                version: hello.header.version,
                bitmap,
            });
        }
        let xid = self.xid();
        self.send(&wire::encode_features_request(xid)).await?;
        loop {
            let m = self.recv().await?;
            if m.header.msg_type == OFPT_FEATURES_REPLY {
                self.features = Features::parse(&m.body)?;
                return Ok(());
            }
        }
    }

    /// Limits the size of a single message (default and maximum 65 535 bytes).
    #[cfg(test)]
    pub(crate) fn set_max_message_len(&mut self, n: usize) {
        self.max_message_len = n.clamp(wire::HEADER_LEN, MAX_MESSAGE_LEN);
    }

    /// Switch features from the handshake.
    pub(crate) fn features(&self) -> Features {
        self.features
    }

    fn xid(&mut self) -> u32 {
        let x = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(1).max(1);
        x
    }

    fn io_err(&self, source: std::io::Error) -> OfError {
        OfError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> OfResult<()> {
        self.unpark()?;
        let r = match self.stream.as_mut() {
            Some(stream) => stream.write_all(bytes).await,
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        r.map_err(|e| self.io_err(e))
    }

    /// Takes the socket out of the runtime's reactor until the next read or write: what arrives
    /// meanwhile waits in the socket buffer and wakes nobody (an edge-triggered registration
    /// wakes the thread for every message, whether a task waits for it or not). The mirror
    /// parks between batches of updates ([`BATCH_WINDOW`]).
    fn park(&mut self) -> OfResult<()> {
        if let Some(stream) = self.stream.take() {
            match stream.into_std() {
                Ok(s) => self.parked = Some(s),
                Err(e) => return Err(self.io_err(e)),
            }
        }
        Ok(())
    }

    /// Registers a parked socket again (a registration reports data that is already waiting
    /// at once). After a failed `into_std`/`from_std` there is no socket: reads and writes fail
    /// with `NotConnected` and the session ends.
    fn unpark(&mut self) -> OfResult<()> {
        if let Some(s) = self.parked.take() {
            match UnixStream::from_std(s) {
                Ok(s) => self.stream = Some(s),
                Err(e) => return Err(self.io_err(e)),
            }
        }
        Ok(())
    }

    /// Whether a monitor event or a whole message is already here (no read needed).
    fn has_queued(&self) -> bool {
        !self.pending.is_empty()
            || wire::peek_message(&self.rbuf, self.max_message_len).is_ok_and(|m| m.is_some())
    }

    /// Next complete message, no handling.
    async fn recv_raw(&mut self) -> OfResult<Message> {
        loop {
            if let Some(m) = wire::take_message(&mut self.rbuf, self.max_message_len)? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// Reads what the socket has onto the end of the receive buffer, into its spare capacity
    /// (made at least `read_chunk` bytes first).
    async fn fill(&mut self) -> OfResult<()> {
        self.rbuf.reserve(self.read_chunk);
        self.unpark()?;
        let n = match self.stream.as_mut() {
            Some(stream) => stream.read_buf(&mut self.rbuf).await,
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        match n {
            Ok(0) => Err(OfError::Closed),
            Ok(_) => {
                self.last_rx = Instant::now();
                Ok(())
            }
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// Next message that is not an echo request or a monitor event (those are handled/queued).
    async fn recv(&mut self) -> OfResult<Message> {
        loop {
            let m = self.recv_raw().await?;
            if let Some(m) = self.absorb(m).await? {
                return Ok(m);
            }
        }
    }

    /// Handles `m` if it needs no caller: answers an echo request, drops an echo reply, queues
    /// monitor events (`Ok(None)`), fails on a switch error; hands anything else back.
    async fn absorb(&mut self, m: Message) -> OfResult<Option<Message>> {
        match m.header.msg_type {
            OFPT_ECHO_REQUEST => {
                let reply = wire::encode_echo_reply(m.header.xid, &m.body);
                self.send(&reply).await?;
                Ok(None)
            }
            OFPT_ECHO_REPLY => Ok(None),
            OFPT_ERROR => Err(OfError::Switch(wire::ErrorMsg::parse(&m.body)?)),
            _ => {
                if let Some(events) = self.as_event(&m)? {
                    if self.pending.len() + events.len() > self.max_pending {
                        return Err(OfError::malformed(format!(
                            "more than {} monitor events queued during a request",
                            self.max_pending
                        )));
                    }
                    self.pending.extend(events);
                    return Ok(None);
                }
                Ok(Some(m))
            }
        }
    }

    /// Decodes an asynchronous monitor/port message, or `None` if `m` is something else.
    fn as_event(&self, m: &Message) -> OfResult<Option<Vec<MonitorEvent>>> {
        match m.header.msg_type {
            OFPT_MULTIPART_REPLY if self.monitoring => {
                let mp = MultipartReply::parse(&m.body)?;
                if mp.experimenter != Some((ONF_EXPERIMENTER, ONFST13_FLOW_MONITOR)) {
                    return Ok(None);
                }
                let (mut ups, mut bad) = (Vec::new(), Vec::new());
                decode_flow_updates(mp.body, &mut ups, &mut bad)?;
                let mut events: Vec<MonitorEvent> =
                    ups.into_iter().map(MonitorEvent::Flow).collect();
                events.extend(bad.into_iter().map(MonitorEvent::Undecodable));
                Ok(Some(events))
            }
            OFPT_EXPERIMENTER => {
                let mut r = Rd::new(&m.body, "experimenter message");
                let exp = r.u32()?;
                let ty = r.u32()?;
                Ok(match (exp, ty) {
                    (ONF_EXPERIMENTER, ONFT13_FLOW_MONITOR_PAUSED) => {
                        Some(vec![MonitorEvent::Paused])
                    }
                    (ONF_EXPERIMENTER, ONFT13_FLOW_MONITOR_RESUMED) => {
                        Some(vec![MonitorEvent::Resumed])
                    }
                    _ => Some(Vec::new()),
                })
            }
            OFPT_PORT_STATUS => {
                let mut r = Rd::new(&m.body, "port status");
                let reason = r.u8()?;
                r.skip(7)?;
                let mut ports = wire::parse_port_descs(r.rest())?;
                Ok(Some(match ports.pop() {
                    Some(port) => vec![MonitorEvent::Port { reason, port }],
                    None => Vec::new(),
                }))
            }
            _ => Ok(None),
        }
    }

    /// Sends a multipart request and feeds each reply body (for `xid`) to `f` until the last one.
    /// Replies are decoded in place in the receive buffer (no copy per message).
    async fn multipart(
        &mut self,
        xid: u32,
        req: Vec<u8>,
        mut f: impl FnMut(&MultipartReply<'_>) -> OfResult<()>,
    ) -> OfResult<()> {
        self.send(&req).await?;
        loop {
            let (done, others) = self.scan_replies(xid, &mut f)?;
            for m in others {
                // Echoes, errors and monitor events are handled; anything else is not awaited.
                let _ignored = self.absorb(m).await?;
            }
            if done {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// Feeds the complete replies for `xid` in the receive buffer to `f` in place, up to the last
    /// one (then returns `true`), and drops the consumed bytes from the buffer (one move per
    /// call, not per message). Other messages are returned, in order, for [`absorb`](Self::absorb).
    fn scan_replies(
        &mut self,
        xid: u32,
        f: &mut impl FnMut(&MultipartReply<'_>) -> OfResult<()>,
    ) -> OfResult<(bool, Vec<Message>)> {
        let mut off = 0;
        let mut done = false;
        let mut others = Vec::new();
        let monitor = self
            .monitoring
            .then_some((ONF_EXPERIMENTER, ONFST13_FLOW_MONITOR));
        let mut scan = || -> OfResult<()> {
            while !done {
                let buf = self.rbuf.get(off..).unwrap_or_default();
                let Some(h) = wire::peek_message(buf, self.max_message_len)? else {
                    return Ok(());
                };
                let len = usize::from(h.length);
                let body = buf.get(wire::HEADER_LEN..len).unwrap_or_default();
                off += len;
                if h.msg_type == OFPT_MULTIPART_REPLY && h.xid == xid {
                    let mp = MultipartReply::parse(body)?;
                    if monitor.is_none() || mp.experimenter != monitor {
                        f(&mp)?;
                        done = !mp.more();
                        continue;
                    }
                }
                others.push(Message {
                    header: h,
                    body: body.to_vec(),
                });
            }
            Ok(())
        };
        let r = scan();
        self.rbuf.drain(..off);
        r.map(|()| (done, others))
    }

    /// Port descriptions (the bridge's ofport set, including LOCAL).
    pub(crate) async fn port_descs(&mut self) -> OfResult<Vec<PortDesc>> {
        let xid = self.xid();
        let req = wire::encode_port_desc_request(xid);
        let mut out = Vec::new();
        let t = self.timeout;
        tokio::time::timeout(
            t,
            self.multipart(xid, req, |mp| {
                out.extend(wire::parse_port_descs(mp.body)?);
                Ok(())
            }),
        )
        .await
        .map_err(|_| OfError::Timeout("PORT_DESC reply"))??;
        Ok(out)
    }

    /// Full dump of every table with counters. Fails with [`OfError::TooManyFlows`] past `max_flows`.
    pub(crate) async fn dump_flows(&mut self, max_flows: usize) -> OfResult<Vec<FlowStats>> {
        let xid = self.xid();
        let req = wire::encode_flow_stats_request(xid);
        let mut out = Vec::new();
        let (mut bad, mut kept, mut total) = (Vec::new(), Vec::new(), 0);
        let t = self.timeout;
        tokio::time::timeout(
            t,
            self.multipart(xid, req, |mp| {
                decode_flow_stats(mp.body, &mut out, &mut bad)?;
                keep_undecodable(&mut kept, &mut total, bad.drain(..));
                if out.len() > max_flows {
                    return Err(OfError::TooManyFlows(max_flows));
                }
                Ok(())
            }),
        )
        .await
        .map_err(|_| OfError::Timeout("flow dump"))??;
        self.undecodable = (kept, total);
        Ok(out)
    }

    /// The flows of the last dump that did not decode (skipped by the dump, see
    /// [`UndecodableFlow`]): the first [`MAX_UNDECODABLE_KEPT`] of them, and how many in all.
    pub(crate) fn take_undecodable(&mut self) -> (Vec<UndecodableFlow>, usize) {
        std::mem::take(&mut self.undecodable)
    }

    /// Full dump like [`dump_flows`](Self::dump_flows), handing each flow to `f` as it is decoded
    /// (one reply's worth of flows is buffered at a time, so a large table is never held twice).
    pub(crate) async fn dump_flows_each(
        &mut self,
        max_flows: usize,
        mut f: impl FnMut(FlowStats),
    ) -> OfResult<usize> {
        let xid = self.xid();
        let req = wire::encode_flow_stats_request(xid);
        let mut buf = Vec::new();
        let (mut bad, mut kept, mut total) = (Vec::new(), Vec::new(), 0);
        let mut n = 0usize;
        let t = self.timeout;
        tokio::time::timeout(
            t,
            self.multipart(xid, req, |mp| {
                decode_flow_stats(mp.body, &mut buf, &mut bad)?;
                keep_undecodable(&mut kept, &mut total, bad.drain(..));
                n += buf.len();
                if n > max_flows {
                    return Err(OfError::TooManyFlows(max_flows));
                }
                buf.drain(..).for_each(&mut f);
                Ok(())
            }),
        )
        .await
        .map_err(|_| OfError::Timeout("flow dump"))??;
        self.undecodable = (kept, total);
        Ok(n)
    }

    /// Full dump with counters for one-shot use, feeding the body of each `OFPMP_FLOW` reply (a run
    /// of `ofp_flow_stats`) to `f` straight from the receive buffer: nothing is decoded or kept
    /// here ([`LineRenderer`](crate::model::openflow::render::LineRenderer) prints such bodies as `ovs-ofctl` does).
    /// An error from `f` ends the dump.
    pub(crate) async fn dump_flows_raw(
        &mut self,
        mut f: impl FnMut(&[u8]) -> OfResult<()>,
    ) -> OfResult<()> {
        let xid = self.xid();
        let req = wire::encode_flow_stats_request(xid);
        let t = self.timeout;
        tokio::time::timeout(t, self.multipart(xid, req, |mp| f(mp.body)))
            .await
            .map_err(|_| OfError::Timeout("flow dump"))?
    }

    /// Starts the ONF (OF1.3) flow monitor for all tables: added, deleted and modified flows, with
    /// actions. Later changes arrive through [`next_event`](Self::next_event).
    pub(crate) async fn start_monitor(&mut self) -> OfResult<()> {
        let xid = self.xid();
        let flags = NXFMF_ADD | NXFMF_DELETE | NXFMF_MODIFY | NXFMF_ACTIONS;
        let req = wire::encode_flow_monitor_request(xid, 1, flags);
        self.send(&req).await?;
        self.monitoring = true;
        // The switch answers the request itself with an (empty, as no INITIAL was asked)
        // monitor reply; `recv` queues it as events, so wait until something was queued or a
        // reply for another purpose arrives. Checking for errors needs one round trip: an echo.
        let echo_xid = self.xid();
        self.send(&wire::encode_echo_request(echo_xid)).await?;
        let t = self.timeout;
        tokio::time::timeout(t, async {
            loop {
                let m = self.recv_raw().await?;
                match m.header.msg_type {
                    OFPT_ECHO_REPLY if m.header.xid == echo_xid => return Ok(()),
                    OFPT_ECHO_REQUEST => {
                        let reply = wire::encode_echo_reply(m.header.xid, &m.body);
                        self.send(&reply).await?;
                    }
                    OFPT_ERROR => return Err(OfError::Switch(wire::ErrorMsg::parse(&m.body)?)),
                    _ => {
                        if let Some(ev) = self.as_event(&m)? {
                            self.pending.extend(ev);
                        }
                    }
                }
            }
        })
        .await
        .map_err(|_| OfError::Timeout("flow monitor start"))?
    }

    /// Next asynchronous event (queued ones first). Returns [`OfError::Closed`] when the switch
    /// goes away.
    pub(crate) async fn next_event(&mut self) -> OfResult<MonitorEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            // Not `recv`: that one keeps reading past events (it waits for a reply), which
            // would hold each event back until the next message or a cancellation. Replies
            // nobody waits for are dropped.
            let m = self.recv_raw().await?;
            self.absorb(m).await?;
        }
    }

    /// Liveness probe for idle connections: sends an ECHO_REQUEST when nothing was received for
    /// `interval`, and fails with [`OfError::Timeout`] when nothing (not even the echo reply)
    /// arrived for twice that.
    pub(crate) async fn keepalive(&mut self, interval: Duration) -> OfResult<()> {
        let idle = self.last_rx.elapsed();
        if idle > interval * 2 {
            return Err(OfError::Timeout("echo reply (switch unresponsive)"));
        }
        if idle > interval {
            let xid = self.xid();
            self.send(&wire::encode_echo_request(xid)).await?;
        }
        Ok(())
    }

    /// Drains events that are already queued (no I/O).
    pub(crate) fn take_queued(&mut self) -> Vec<MonitorEvent> {
        self.pending.drain(..).collect()
    }
}

/// One-shot dump for `pinflow flows --bridge B`: switch features, port descriptions and every
/// flow with counters. Printing `" {}"` with each [`FlowEntry::text`] gives exactly the lines of
/// `ovs-ofctl -O OpenFlow13 --no-stats --no-names dump-flows B`; [`super::stats_line`] gives the
/// form with statistics.
pub(crate) async fn dump_bridge(
    run_dir: &Path,
    bridge: &str,
    timeout: Duration,
    max_flows: usize,
) -> OfResult<(Features, Vec<PortDesc>, Vec<FlowStats>)> {
    let path = crate::sources::bridge_socket(run_dir, bridge);
    let mut c = OpenFlowClient::connect(&path, timeout).await?;
    let ports = c.port_descs().await?;
    let flows = c.dump_flows(max_flows).await?;
    Ok((c.features(), ports, flows))
}

// ---------------------------------------------------------------------------------------------
// Per-bridge mirror.

/// Settings of one bridge's mirror loop.
#[derive(Clone, Debug)]
pub(crate) struct BridgeConfig {
    /// OVS run directory (where `<bridge>.mgmt` lives), e.g. `/run/openvswitch`.
    pub(crate) run_dir: PathBuf,
    /// Bridge name.
    pub(crate) bridge: String,
    /// Refuse to mirror more flows than this (memory bound); the session fails with a clear error.
    pub(crate) max_flows: usize,
    /// Timeout of each request (connect, handshake, dump).
    pub(crate) request_timeout: Duration,
    /// First reconnect delay; doubles up to `backoff_max`.
    pub(crate) backoff_min: Duration,
    /// Longest reconnect delay.
    pub(crate) backoff_max: Duration,
    /// Minimum interval between two published snapshots (changes are still sent at once).
    /// Publishing copies the table's index (pointers only, O(flows)); consumers that need cost
    /// proportional to changes use the [`FlowChange`] stream instead.
    pub(crate) publish_interval: Duration,
    /// Idle time after which the switch is probed with an ECHO_REQUEST (dead after twice that).
    pub(crate) probe_interval: Duration,
    /// Whether the mirror keeps a flow table and publishes it in its snapshots (off by default).
    /// Off, as the daemon runs it: the consumer follows the [`FlowChange`] stream — the dump once
    /// per resync in [`FlowChange::Resynced`] and every change after it — and the mirror holds no
    /// flow at all (it tells additions from modifications by the switch's own verdict), so the
    /// dirty-flow index is the only copy of the flows. On, snapshots carry the whole table.
    pub(crate) snapshot_flows: bool,
}

impl BridgeConfig {
    /// Defaults for `bridge` under `run_dir`: [`crate::model::limits::MAX_FLOWS_PER_BRIDGE`] flows, 30 s timeout, 0.5–30 s backoff,
    /// snapshots at most every 200 ms without the flow table, echo probe after 30 s idle.
    pub(crate) fn new(run_dir: impl Into<PathBuf>, bridge: impl Into<String>) -> Self {
        Self {
            run_dir: run_dir.into(),
            bridge: bridge.into(),
            max_flows: crate::model::limits::MAX_FLOWS_PER_BRIDGE,
            request_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            publish_interval: Duration::from_millis(200),
            probe_interval: Duration::from_secs(30),
            snapshot_flows: false,
        }
    }

    /// `<run_dir>/<bridge>.mgmt`.
    pub(crate) fn socket_path(&self) -> PathBuf {
        crate::sources::bridge_socket(&self.run_dir, &self.bridge)
    }
}

/// The mirrored flow table of a bridge.
/// Entries are shared (`Arc`) and each key shares its entry's match bytes, so a flow is stored once
/// and publishing a snapshot copies pointers only.
pub(crate) type FlowTable = BTreeMap<FlowKey, Arc<FlowEntry>>;

/// A published state of one bridge.
#[derive(Clone, Debug, Default)]
pub(crate) struct BridgeSnapshot {
    /// Bridge name.
    pub(crate) bridge: String,
    /// Whether the OpenFlow session is up and the table is in sync.
    pub(crate) connected: bool,
    /// Why the session is down (last error), if it is.
    pub(crate) error: Option<String>,
    /// Datapath id from FEATURES.
    pub(crate) datapath_id: u64,
    /// Increases on every full resync (initial dump, reconnect).
    pub(crate) generation: u64,
    /// Ports by OpenFlow port number (OF1.3 numbering, LOCAL = 0xfffffffe); shared by snapshots
    /// until a port changes.
    pub(crate) ports: Arc<BTreeMap<u32, PortDesc>>,
    /// Flows (without counters). Empty when the mirror keeps no table
    /// ([`BridgeConfig::snapshot_flows`] off).
    pub(crate) flows: Arc<FlowTable>,
    /// Number of flows mirrored (also without a table: then counted from the dump and the
    /// monitor's add/delete events, which may over-count a flow added while the dump ran).
    pub(crate) n_flows: usize,
    /// When this snapshot was taken.
    pub(crate) taken: Option<Instant>,
    /// The last [`MAX_UNDECODABLE_KEPT`] flows the switch sent that did not decode (skipped,
    /// carried raw).
    pub(crate) undecodable: Arc<Vec<UndecodableFlow>>,
    /// Flows that did not decode since the mirror started (dumps and updates).
    pub(crate) undecodable_total: u64,
    /// Whether the mirror keeps its table ([`BridgeConfig::snapshot_flows`]).
    keep_table: bool,
}

/// A change of one bridge's mirror, sent as it happens.
#[derive(Clone, Debug)]
pub(crate) enum FlowChange {
    /// A full dump replaced the table. Updates that raced with the dump follow as their own
    /// changes.
    Resynced {
        /// The flows as dumped (entries are cheap to clone: they share their storage).
        table: Vec<FlowEntry>,
        /// Each flow's age as the switch reported it (`duration`), index for index with `table`.
        ages: Vec<Duration>,
    },
    /// A flow appeared. Without a mirrored table ([`BridgeConfig::snapshot_flows`] off), this is
    /// the switch's own add/modify verdict, so a flow added while the dump ran may come as `Added`
    /// although the dump had it.
    Added(FlowEntry),
    /// A flow's actions/cookie/timeouts changed.
    Modified(FlowEntry),
    /// A flow was removed.
    Deleted(FlowEntry),
    /// The port set changed.
    PortsChanged,
    /// A flow the switch sent did not decode: skipped, carried raw (see [`UndecodableFlow`]).
    Undecodable(UndecodableFlow),
    /// More flows of a dump did not decode than are carried raw: this many more.
    UndecodableDropped(usize),
    /// The session ended; the mirror is stale until the next `Resynced`.
    Disconnected {
        /// Why.
        error: String,
    },
}

/// A [`FlowChange`] tagged with the name of the bridge it happened on (what [`run_bridge`] sends).
pub(crate) type TaggedChange = (Arc<str>, FlowChange);

/// The sending half of a change channel with the bridge's tag.
struct ChangeTx {
    tag: Arc<str>,
    tx: mpsc::Sender<TaggedChange>,
}

impl ChangeTx {
    /// Sends one change (a closed channel is ignored: the mirror keeps the snapshots going).
    async fn send(&self, change: FlowChange) {
        let _ = self.tx.send((self.tag.clone(), change)).await;
    }
}

/// Mirrors one bridge until `shutdown` becomes true: connects, dumps, follows the flow monitor,
/// reconnects with exponential backoff after any error (ovs-vswitchd restart, bridge deleted and
/// re-created, protocol error), rebuilding the state from a fresh dump each time.
///
/// Snapshots go to `snapshots` (rate-limited by `publish_interval`); every individual change goes
/// to `changes` when given, tagged with the bridge name ([`BridgeConfig::bridge`]), so that the
/// mirrors of all bridges can share one channel (a full channel drops nothing: the loop waits, so
/// size it generously).
pub(crate) async fn run_bridge(
    cfg: BridgeConfig,
    snapshots: watch::Sender<Arc<BridgeSnapshot>>,
    changes: Option<mpsc::Sender<TaggedChange>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let tag: Arc<str> = Arc::from(cfg.bridge.as_str());
    let changes = changes.map(|tx| ChangeTx { tag, tx });
    let mut state = BridgeSnapshot {
        bridge: cfg.bridge.clone(),
        keep_table: cfg.snapshot_flows,
        ..Default::default()
    };
    let mut backoff = cfg.backoff_min;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        let res = tokio::select! {
            r = session(&cfg, &mut state, &snapshots, changes.as_ref()) => r,
            _ = shutdown.changed() => return,
        };
        let err = match res {
            Ok(()) => "session ended".to_string(),
            Err(e) => e.to_string(),
        };
        // Once per state change: when the session goes down (or the first attempt fails), and
        // again only for a new reason; the retries behind the backoff stay quiet.
        if state.connected || state.error.is_none() {
            tracing::warn!(bridge = %cfg.bridge, error = %err, "OpenFlow session down");
        } else if state.error.as_deref() != Some(err.as_str()) {
            tracing::warn!(bridge = %cfg.bridge, error = %err, "OpenFlow session still down");
        }
        state.connected = false;
        state.error = Some(err.clone());
        state.taken = Some(Instant::now());
        publish(&cfg, &state, &snapshots);
        if let Some(tx) = &changes {
            tx.send(FlowChange::Disconnected { error: err }).await;
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = cfg.backoff_min;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

async fn session(
    cfg: &BridgeConfig,
    state: &mut BridgeSnapshot,
    snapshots: &watch::Sender<Arc<BridgeSnapshot>>,
    changes: Option<&ChangeTx>,
) -> OfResult<()> {
    let mut c = OpenFlowClient::connect(cfg.socket_path(), cfg.request_timeout).await?;
    c.start_monitor().await?;
    let ports = c.port_descs().await?;
    // The dump goes to the table (when kept) and to the change stream (when followed); a mirror
    // without a table holds no flow at all, its consumer (the dirty-flow index) keeps them.
    let mut table = FlowTable::new();
    let mut dumped = Vec::new();
    let mut ages = Vec::new();
    let n = c
        .dump_flows_each(cfg.max_flows, |f| {
            if cfg.snapshot_flows {
                table.insert(f.entry.key(), Arc::new(f.entry.clone()));
            }
            if changes.is_some() {
                ages.push(Duration::new(
                    u64::from(f.duration_sec),
                    f.duration_nsec.min(999_999_999),
                ));
                dumped.push(f.entry);
            }
        })
        .await?;
    let (undecodable, n_undecodable) = c.take_undecodable();
    state.datapath_id = c.features().datapath_id;
    state.ports = Arc::new(ports.into_iter().map(|p| (p.port_no, p)).collect());
    state.flows = Arc::new(table);
    state.n_flows = n;
    state.generation += 1;
    match &state.error {
        Some(was) => {
            tracing::info!(bridge = %cfg.bridge, flows = n, down_because = %was, "OpenFlow session back up")
        }
        None if state.generation == 1 => {
            tracing::info!(bridge = %cfg.bridge, flows = n, "OpenFlow session up")
        }
        None => {}
    }
    state.connected = true;
    state.error = None;
    if let Some(tx) = changes {
        tx.send(FlowChange::Resynced {
            table: dumped,
            ages,
        })
        .await;
    }
    if n_undecodable > 0 {
        state.undecodable_total += n_undecodable as u64;
        let kept = undecodable.len();
        for u in undecodable {
            remember_undecodable(state, u.clone());
            if let Some(tx) = changes {
                tx.send(FlowChange::Undecodable(u)).await;
            }
        }
        if let Some(tx) = changes
            && n_undecodable > kept
        {
            tx.send(FlowChange::UndecodableDropped(n_undecodable - kept))
                .await;
        }
    }
    // Replay updates that raced with the dump.
    for ev in c.take_queued() {
        apply(state, ev, changes, cfg.max_flows).await?;
    }
    state.taken = Some(Instant::now());
    publish(cfg, state, snapshots);
    // No periodic tick: an idle mirror sleeps until its liveness probe is due; after a change it
    // wakes once more, when the next snapshot may be published.
    let mut dirty = false;
    let mut last_publish = Instant::now();
    // Updates come in batches: all that one wake-up finds. While they keep coming (a batch
    // within two windows of the previous one), the socket is parked for `BATCH_WINDOW` after
    // each small batch, so a steady trickle of changes costs a wake-up per window, not one per
    // change. An update after a quiet spell is read at once and parks nothing.
    // Without a timer (no timerfd) there are no windows: every change is read at once.
    let window = match BatchTimer::new() {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(bridge = %cfg.bridge, error = %e, "no timerfd: flow updates are read one wake-up each");
            None
        }
    };
    let mut batch = 0usize;
    let mut parked = false;
    let mut last_batch: Option<Instant> = None;
    loop {
        let wake = if dirty {
            last_publish + cfg.publish_interval
        } else {
            Instant::now() + cfg.probe_interval / 2
        };
        tokio::select! {
            ev = c.next_event(), if !parked => {
                let ev = ev?;
                if matches!(ev, MonitorEvent::Resumed) {
                    // Updates were dropped while paused; rebuild from a fresh session.
                    return Err(OfError::MonitorPaused);
                }
                // Without the table in its snapshots, only a port change alters what they show.
                let shown = cfg.snapshot_flows || matches!(ev, MonitorEvent::Port { .. });
                apply(state, ev, changes, cfg.max_flows).await?;
                dirty |= shown;
                batch += 1;
                if !c.has_queued() {
                    // The batch is over. A large one means a storm: keep reading at once, so
                    // that the switch never pauses the monitor for a full send buffer.
                    let streaming =
                        last_batch.is_some_and(|t| t.elapsed() < BATCH_WINDOW * 2);
                    last_batch = Some(Instant::now());
                    if let Some(w) = &window
                        && streaming
                        && batch < BATCH_MAX
                    {
                        w.arm(BATCH_WINDOW).map_err(|e| c.io_err(e))?;
                        c.park()?;
                        parked = true;
                    }
                    batch = 0;
                }
            }
            expired = async {
                match &window {
                    Some(w) => w.expired().await,
                    None => std::future::pending().await,
                }
            }, if parked => {
                expired.map_err(|e| c.io_err(e))?;
                // The window is over: the next read registers the socket again.
                parked = false;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                c.keepalive(cfg.probe_interval).await?;
                if dirty {
                    last_publish = Instant::now();
                    state.taken = Some(last_publish);
                    publish(cfg, state, snapshots);
                    dirty = false;
                }
            }
        }
    }
}

/// Least time between two reads of a mirror's monitor updates while they keep coming (see the
/// loop in [`session`]). A dirty flow added during a stream of changes is seen at most this
/// much later; one added after a quiet spell at once. Measured under 10 changes/s at 100 000
/// flows (`cargo xtask bench --only flows`, interleaved `perf stat`): 500 ms halves the
/// mirror's CPU; 250 ms saved only a quarter.
pub(crate) const BATCH_WINDOW: Duration = Duration::from_millis(500);

/// A batch of this many updates or more is a storm: the mirror reads on without a pause.
const BATCH_MAX: usize = 64;

/// Keeps `u` among the bridge's last [`MAX_UNDECODABLE_KEPT`] undecodable flows.
fn remember_undecodable(state: &mut BridgeSnapshot, u: UndecodableFlow) {
    let list = Arc::make_mut(&mut state.undecodable);
    if list.len() >= MAX_UNDECODABLE_KEPT {
        list.remove(0);
    }
    list.push(u);
}

/// Publishes the mirror's state (with or without its table, per [`BridgeConfig::snapshot_flows`]).
fn publish(
    cfg: &BridgeConfig,
    state: &BridgeSnapshot,
    snapshots: &watch::Sender<Arc<BridgeSnapshot>>,
) {
    let snap = if cfg.snapshot_flows {
        state.clone()
    } else {
        BridgeSnapshot {
            bridge: state.bridge.clone(),
            connected: state.connected,
            error: state.error.clone(),
            datapath_id: state.datapath_id,
            generation: state.generation,
            ports: state.ports.clone(),
            flows: Arc::default(),
            n_flows: state.n_flows,
            taken: state.taken,
            undecodable: state.undecodable.clone(),
            undecodable_total: state.undecodable_total,
            keep_table: false,
        }
    };
    snapshots.send_replace(Arc::new(snap));
}

async fn apply(
    state: &mut BridgeSnapshot,
    ev: MonitorEvent,
    changes: Option<&ChangeTx>,
    max_flows: usize,
) -> OfResult<()> {
    let change = match ev {
        // No table: the switch's verdict says whether the flow is new.
        MonitorEvent::Flow(FlowUpdate::Added(e)) if !state.keep_table => {
            state.n_flows += 1;
            if state.n_flows > max_flows {
                return Err(OfError::TooManyFlows(max_flows));
            }
            FlowChange::Added(e)
        }
        MonitorEvent::Flow(FlowUpdate::Modified(e)) if !state.keep_table => FlowChange::Modified(e),
        MonitorEvent::Flow(FlowUpdate::Added(e)) | MonitorEvent::Flow(FlowUpdate::Modified(e)) => {
            let key = e.key();
            let flows = Arc::make_mut(&mut state.flows);
            let old = flows.get(&key).cloned();
            // Re-key too, so that the key shares the new entry's match bytes.
            flows.remove(&key);
            flows.insert(key, Arc::new(e.clone()));
            state.n_flows = flows.len();
            if flows.len() > max_flows {
                return Err(OfError::TooManyFlows(max_flows));
            }
            if old.is_some() {
                FlowChange::Modified(e)
            } else {
                FlowChange::Added(e)
            }
        }
        MonitorEvent::Flow(FlowUpdate::Deleted(e)) if !state.keep_table => {
            state.n_flows = state.n_flows.saturating_sub(1);
            FlowChange::Deleted(e)
        }
        MonitorEvent::Flow(FlowUpdate::Deleted(e)) => {
            let key = e.key();
            let flows = Arc::make_mut(&mut state.flows);
            let old = flows.remove(&key);
            state.n_flows = flows.len();
            FlowChange::Deleted(old.map_or(e, FlowEntry::from))
        }
        MonitorEvent::Flow(FlowUpdate::Abbreviated { .. }) => return Ok(()),
        MonitorEvent::Port { reason, port } => {
            let ports = Arc::make_mut(&mut state.ports);
            if reason == 1 {
                ports.remove(&port.port_no);
            } else {
                ports.insert(port.port_no, port);
            }
            FlowChange::PortsChanged
        }
        MonitorEvent::Undecodable(u) => {
            state.undecodable_total += 1;
            remember_undecodable(state, u.clone());
            FlowChange::Undecodable(u)
        }
        MonitorEvent::Paused | MonitorEvent::Resumed => return Ok(()),
    };
    if let Some(tx) = changes {
        tx.send(change).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    fn fixture(name: &str) -> Vec<u8> {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/openflow/");
        std::fs::read(format!("{p}{name}")).unwrap()
    }

    async fn read_msg(s: &mut UnixStream) -> Message {
        let mut buf = Vec::new();
        loop {
            if let Some(m) = wire::take_message(&mut buf, MAX_MESSAGE_LEN).unwrap() {
                return m;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client hung up");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn with_xid(mut msg: Vec<u8>, xid: u32) -> Vec<u8> {
        msg[4..8].copy_from_slice(&xid.to_be_bytes());
        msg
    }

    /// Messages of a captured switch→client stream (header+body bytes), HELLO excluded.
    fn captured(name: &str) -> Vec<Vec<u8>> {
        let mut buf = fixture(name);
        let mut out = Vec::new();
        while let Some(m) = wire::take_message(&mut buf, MAX_MESSAGE_LEN).unwrap() {
            if m.header.msg_type == OFPT_MULTIPART_REPLY {
                let mut v = buf_header(&m);
                v.extend_from_slice(&m.body);
                out.push(v);
            }
        }
        out
    }

    fn buf_header(m: &Message) -> Vec<u8> {
        let mut v = vec![m.header.version, m.header.msg_type];
        v.extend_from_slice(&m.header.length.to_be_bytes());
        v.extend_from_slice(&m.header.xid.to_be_bytes());
        v
    }

    /// A fake switch that answers the first request with the captured Neutron dump.
    async fn dump_replaying_switch() -> (tempfile::TempDir, PathBuf) {
        fake_switch(hello13(), |mut s, xid| {
            Box::pin(async move {
                for m in captured("neutron-dump.of13.bin") {
                    if s.write_all(&with_xid(m, xid)).await.is_err() {
                        return;
                    }
                }
            })
        })
        .await
    }

    /// A fake switch: handshake, then `script` decides what to send for the first request.
    async fn fake_switch(
        hello: Vec<u8>,
        script: impl FnOnce(UnixStream, u32) -> futures_util::future::BoxFuture<'static, ()>
        + Send
        + 'static,
    ) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("br-test.mgmt");
        let l = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let _ = read_msg(&mut s).await; // HELLO
            s.write_all(&hello).await.unwrap();
            if hello[0] != OFP13_VERSION {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return;
            }
            let f = read_msg(&mut s).await; // FEATURES_REQUEST
            let mut feat = vec![4, OFPT_FEATURES_REPLY, 0, 32];
            feat.extend_from_slice(&f.header.xid.to_be_bytes());
            feat.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 42, 0, 0, 1, 0, 254, 0, 0, 0]);
            feat.extend_from_slice(&[0, 0, 0, 0x4f, 0, 0, 0, 0]);
            s.write_all(&feat).await.unwrap();
            let req = read_msg(&mut s).await;
            script(s, req.header.xid).await;
        });
        (dir, path)
    }

    fn hello13() -> Vec<u8> {
        wire::encode_hello(1)
    }

    #[tokio::test]
    async fn dump_with_echo_in_the_middle() {
        let (_d, path) = fake_switch(hello13(), |mut s, xid| {
            Box::pin(async move {
                s.write_all(&wire::encode_echo_request(77)).await.unwrap();
                let echo = read_msg(&mut s).await;
                assert_eq!(
                    (echo.header.msg_type, echo.header.xid),
                    (OFPT_ECHO_REPLY, 77)
                );
                for m in captured("neutron-dump.of13.bin") {
                    s.write_all(&with_xid(m, xid)).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            })
        })
        .await;
        let mut c = OpenFlowClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(c.features().datapath_id, 42);
        let flows = c.dump_flows(1000).await.unwrap();
        assert_eq!(flows.len(), 601);
    }

    #[tokio::test]
    async fn raw_dump_streams_every_reply_in_place() {
        // All replies in one write (several messages per socket read), an echo request and an
        // unrelated reply between them.
        let (_d, path) = fake_switch(hello13(), |mut s, xid| {
            Box::pin(async move {
                let mut all = Vec::new();
                for (i, m) in captured("neutron-dump.of13.bin").into_iter().enumerate() {
                    if i == 1 {
                        all.extend_from_slice(&wire::encode_echo_request(77));
                        all.extend_from_slice(&with_xid(m.clone(), xid.wrapping_add(9)));
                    }
                    all.extend_from_slice(&with_xid(m, xid));
                }
                s.write_all(&all).await.unwrap();
                let echo = read_msg(&mut s).await;
                assert_eq!(
                    (echo.header.msg_type, echo.header.xid),
                    (OFPT_ECHO_REPLY, 77)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            })
        })
        .await;
        let mut c = OpenFlowClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let mut lines = crate::model::openflow::render::LineRenderer::default();
        let mut text = String::new();
        let mut n = 0;
        c.dump_flows_raw(|body| {
            n += lines.push_flow_stats(body, false, &mut text)?;
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(n, 601);
        let want = String::from_utf8(
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/openflow/neutron-dump.ofctl.txt"
            ))
            .unwrap(),
        )
        .unwrap();
        let mut ours: Vec<&str> = text.lines().map(str::trim).collect();
        let mut theirs: Vec<&str> = want.lines().map(str::trim).collect();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(ours, theirs);

        // A reply over the size limit is refused, not buffered.
        let (_d, path) = dump_replaying_switch().await;
        let mut c = OpenFlowClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        c.set_max_message_len(1024);
        let err = c.dump_flows_raw(|_| Ok(())).await.unwrap_err();
        assert!(matches!(err, OfError::TooLarge { max: 1024, .. }), "{err}");
    }

    #[tokio::test]
    async fn error_reply_is_a_clear_error() {
        let (_d, path) = fake_switch(hello13(), |mut s, xid| {
            Box::pin(async move {
                let mut e = vec![4, OFPT_ERROR, 0, 20];
                e.extend_from_slice(&xid.to_be_bytes());
                e.extend_from_slice(&[0, 1, 0, 2, 4, 18, 0, 64]);
                e.extend_from_slice(&xid.to_be_bytes());
                s.write_all(&e).await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            })
        })
        .await;
        let mut c = OpenFlowClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let err = c.dump_flows(1000).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("OFPET_BAD_REQUEST/OFPBRC_BAD_MULTIPART"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn garbage_truncation_limits_and_versions_fail_cleanly() {
        // A header announcing a length shorter than itself.
        let (_d, path) = fake_switch(hello13(), |mut s, _| {
            Box::pin(async move {
                s.write_all(&[4, 19, 0, 3, 0, 0, 0, 1]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            })
        })
        .await;
        let mut c = OpenFlowClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(
            c.dump_flows(10).await,
            Err(OfError::Decode(wire::DecodeError::Malformed(_)))
        ));

        // The switch dies in the middle of a reply.
        let (_d, path) = fake_switch(hello13(), |mut s, xid| {
            Box::pin(async move {
                let m = with_xid(captured("neutron-dump.of13.bin").remove(0), xid);
                s.write_all(&m[..m.len() / 2]).await.unwrap();
            })
        })
        .await;
        let mut c = OpenFlowClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(c.dump_flows(10).await, Err(OfError::Closed)));

        // More flows than allowed.
        let (_d, path) = dump_replaying_switch().await;
        let mut c = OpenFlowClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(
            c.dump_flows(10).await,
            Err(OfError::TooManyFlows(10))
        ));

        // A switch that only speaks OpenFlow 1.0.
        let hello10 = vec![1, 0, 0, 16, 0, 0, 0, 1, 0, 1, 0, 8, 0, 0, 0, 2];
        let (_d, path) = fake_switch(hello10, |_, _| Box::pin(async {})).await;
        let err = OpenFlowClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                OfError::Version {
                    version: 1,
                    bitmap: 2
                }
            ),
            "{err}"
        );

        // Nobody listening.
        let err = OpenFlowClient::connect("/nonexistent/br.mgmt", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/br.mgmt"), "{err}");
    }
}
