//! OpenFlow 1.3 framing and the fixed-layout messages pinflow exchanges with ovs-vswitchd.
//!
//! Everything here works on byte slices and returns [`OfError`] for truncated or malformed input;
//! nothing indexes wire data without a bounds check. Encoders build the few requests pinflow sends
//! (HELLO, ECHO reply, FEATURES, multipart PORT_DESC / FLOW, the ONF flow monitor request).

pub(crate) use crate::model::openflow::bytes::{DecodeError, ONF_EXPERIMENTER, Rd, pad8};
use std::fmt;

/// OpenFlow 1.3 wire version.
pub(crate) const OFP13_VERSION: u8 = 0x04;
/// Size of the OpenFlow header.
pub(crate) const HEADER_LEN: usize = 8;
/// Largest message the protocol can express (the header's length field is 16 bits).
pub(crate) const MAX_MESSAGE_LEN: usize = 65_535;

/// `OFPT_HELLO`.
pub(crate) const OFPT_HELLO: u8 = 0;
/// `OFPT_ERROR`.
pub(crate) const OFPT_ERROR: u8 = 1;
/// `OFPT_ECHO_REQUEST`.
pub(crate) const OFPT_ECHO_REQUEST: u8 = 2;
/// `OFPT_ECHO_REPLY`.
pub(crate) const OFPT_ECHO_REPLY: u8 = 3;
/// `OFPT_EXPERIMENTER` (carries e.g. the ONF flow-monitor paused/resumed notices).
pub(crate) const OFPT_EXPERIMENTER: u8 = 4;
/// `OFPT_FEATURES_REQUEST`.
pub(crate) const OFPT_FEATURES_REQUEST: u8 = 5;
/// `OFPT_FEATURES_REPLY`.
pub(crate) const OFPT_FEATURES_REPLY: u8 = 6;
/// `OFPT_MULTIPART_REQUEST`.
pub(crate) const OFPT_MULTIPART_REQUEST: u8 = 18;
/// `OFPT_MULTIPART_REPLY`.
pub(crate) const OFPT_MULTIPART_REPLY: u8 = 19;

/// `OFPMP_FLOW` (individual flow statistics).
pub(crate) const OFPMP_FLOW: u16 = 1;
/// `OFPMP_PORT_DESC`.
pub(crate) const OFPMP_PORT_DESC: u16 = 13;
/// `OFPMP_EXPERIMENTER`.
pub(crate) const OFPMP_EXPERIMENTER: u16 = 0xffff;
/// `OFPMPF_REPLY_MORE`: more replies to this request follow.
pub(crate) const OFPMPF_REPLY_MORE: u16 = 1;

/// ONF experimenter multipart type of the OF1.3 flow monitor (`ONFST13_FLOW_MONITOR`).
pub(crate) const ONFST13_FLOW_MONITOR: u32 = 1870;
/// ONF experimenter message: the switch paused flow-monitor updates (its buffer filled).
pub(crate) const ONFT13_FLOW_MONITOR_PAUSED: u32 = 1871;
/// ONF experimenter message: the switch resumed flow-monitor updates after sending the backlog.
pub(crate) const ONFT13_FLOW_MONITOR_RESUMED: u32 = 1872;

/// Flow monitor flag: report added flows.
pub(crate) const NXFMF_ADD: u16 = 1 << 1;
/// Flow monitor flag: report deleted flows.
pub(crate) const NXFMF_DELETE: u16 = 1 << 2;
/// Flow monitor flag: report modified flows.
pub(crate) const NXFMF_MODIFY: u16 = 1 << 3;
/// Flow monitor flag: include actions in updates.
pub(crate) const NXFMF_ACTIONS: u16 = 1 << 4;

/// Errors of the OpenFlow source: wire decoding, protocol and transport.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OfError {
    /// Wire data that does not decode (truncated or malformed).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A message longer than the configured limit.
    #[error("OpenFlow message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The switch does not speak OpenFlow 1.3.
    #[error(
        "switch does not offer OpenFlow 1.3 (its HELLO: version 0x{version:02x}, bitmap {bitmap:#x}); add OpenFlow13 to the bridge's protocols"
    )]
    Version {
        /// Version in the switch's HELLO header.
        version: u8,
        /// Version bitmap from the HELLO element (0 if absent).
        bitmap: u32,
    },
    /// The switch answered with an `OFPT_ERROR`.
    #[error("switch replied with an OpenFlow error: {0}")]
    Switch(ErrorMsg),
    /// A socket operation failed.
    #[error("OpenFlow socket {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The switch closed the connection (ovs-vswitchd stopped, or the bridge was deleted).
    #[error("OpenFlow connection closed by the switch")]
    Closed,
    /// No answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The switch paused the flow monitor (updates were lost); the mirror must be rebuilt.
    #[error("flow monitor was paused by the switch (updates lost); resyncing")]
    MonitorPaused,
    /// The mirror would exceed its configured size.
    #[error("bridge has more than {0} flows; raise the limit to mirror it")]
    TooManyFlows(usize),
}

impl OfError {
    /// A [`DecodeError::Malformed`] found by the framing or the session.
    pub(crate) fn malformed(what: String) -> OfError {
        OfError::Decode(DecodeError::Malformed(what))
    }
}

/// Result alias of the OpenFlow source.
pub(crate) type OfResult<T> = Result<T, OfError>;

/// The OpenFlow header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// Protocol version.
    pub(crate) version: u8,
    /// Message type (`OFPT_*`).
    pub(crate) msg_type: u8,
    /// Total length including the header.
    pub(crate) length: u16,
    /// Transaction id.
    pub(crate) xid: u32,
}

impl Header {
    /// Parses a header from the first 8 bytes of `buf`.
    pub(crate) fn parse(buf: &[u8]) -> OfResult<Header> {
        let mut r = Rd::new(buf, "OpenFlow header");
        let h = Header {
            version: r.u8()?,
            msg_type: r.u8()?,
            length: r.u16()?,
            xid: r.u32()?,
        };
        if (h.length as usize) < HEADER_LEN {
            return Err(OfError::malformed(format!(
                "message length {} is shorter than the header",
                h.length
            )));
        }
        Ok(h)
    }
}

/// One complete OpenFlow message: header and body (the bytes after the header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    /// The header.
    pub(crate) header: Header,
    /// Body bytes (length − 8).
    pub(crate) body: Vec<u8>,
}

/// The header of the complete message at the start of `buf` (its `length` bytes are all there),
/// enforcing a size limit; `Ok(None)` when `buf` does not yet hold a whole message. Nothing is
/// copied: the body is `buf[HEADER_LEN..length]`.
pub(crate) fn peek_message(buf: &[u8], max_len: usize) -> OfResult<Option<Header>> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let header = Header::parse(buf)?;
    let len = header.length as usize;
    if len > max_len {
        return Err(OfError::TooLarge { len, max: max_len });
    }
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(header))
}

/// Splits complete messages off the front of a receive buffer, enforcing a size limit.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole message; consumed bytes are drained.
pub(crate) fn take_message(buf: &mut Vec<u8>, max_len: usize) -> OfResult<Option<Message>> {
    let Some(header) = peek_message(buf, max_len)? else {
        return Ok(None);
    };
    let len = header.length as usize;
    let body = buf.get(HEADER_LEN..len).unwrap_or_default().to_vec();
    buf.drain(..len);
    Ok(Some(Message { header, body }))
}

fn put_header(out: &mut Vec<u8>, msg_type: u8, xid: u32) -> usize {
    let start = out.len();
    out.extend_from_slice(&[OFP13_VERSION, msg_type, 0, 0]);
    out.extend_from_slice(&xid.to_be_bytes());
    start
}

fn finish(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u16;
    if let Some(b) = out.get_mut(start + 2..start + 4) {
        b.copy_from_slice(&len.to_be_bytes());
    }
}

/// HELLO offering only OpenFlow 1.3 (with a version-bitmap element).
pub(crate) fn encode_hello(xid: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    let s = put_header(&mut out, OFPT_HELLO, xid);
    // OFPHET_VERSIONBITMAP (1), length 8, bitmap with bit 4 (OF1.3).
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&8u16.to_be_bytes());
    out.extend_from_slice(&(1u32 << OFP13_VERSION).to_be_bytes());
    finish(&mut out, s);
    out
}

/// Version bitmap offered in a peer's HELLO (0 when it sent none).
pub(crate) fn hello_bitmap(body: &[u8]) -> u32 {
    let mut r = Rd::new(body, "HELLO element");
    while r.len() >= 4 {
        let (Ok(t), Ok(l)) = (r.u16(), r.u16()) else {
            return 0;
        };
        let l = l as usize;
        if l < 4 {
            return 0;
        }
        let Ok(payload) = r.take(l - 4) else {
            return 0;
        };
        if t == 1 {
            return payload
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
        }
        if r.skip(pad8(l) - l).is_err() {
            return 0;
        }
    }
    0
}

/// ECHO_REPLY mirroring a request's xid and payload.
pub(crate) fn encode_echo_reply(xid: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    let s = put_header(&mut out, OFPT_ECHO_REPLY, xid);
    out.extend_from_slice(payload);
    finish(&mut out, s);
    out
}

/// ECHO_REQUEST (keepalive probe).
pub(crate) fn encode_echo_request(xid: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    let s = put_header(&mut out, OFPT_ECHO_REQUEST, xid);
    finish(&mut out, s);
    out
}

/// FEATURES_REQUEST.
pub(crate) fn encode_features_request(xid: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    let s = put_header(&mut out, OFPT_FEATURES_REQUEST, xid);
    finish(&mut out, s);
    out
}

fn multipart_request(xid: u32, mp_type: u16) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(64);
    let s = put_header(&mut out, OFPT_MULTIPART_REQUEST, xid);
    out.extend_from_slice(&mp_type.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // flags + pad
    (out, s)
}

/// Multipart PORT_DESC request.
pub(crate) fn encode_port_desc_request(xid: u32) -> Vec<u8> {
    let (mut out, s) = multipart_request(xid, OFPMP_PORT_DESC);
    finish(&mut out, s);
    out
}

/// Multipart FLOW request for every flow of every table (empty match, any out port/group).
pub(crate) fn encode_flow_stats_request(xid: u32) -> Vec<u8> {
    let (mut out, s) = multipart_request(xid, OFPMP_FLOW);
    out.push(0xff); // OFPTT_ALL
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&0xffff_ffffu32.to_be_bytes()); // out_port ANY
    out.extend_from_slice(&0xffff_ffffu32.to_be_bytes()); // out_group ANY
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&0u64.to_be_bytes()); // cookie
    out.extend_from_slice(&0u64.to_be_bytes()); // cookie mask
    out.extend_from_slice(&[0, 1, 0, 4, 0, 0, 0, 0]); // empty OXM match, padded
    finish(&mut out, s);
    out
}

/// ONF (OF1.3) flow monitor request for all tables and flows, with the given `NXFMF_*` flags.
///
/// Body layout (ONF experimenter multipart 1870, as OVS 3.1 decodes it): monitor id (u32), flags
/// (u16), match length (u16), out_port (u32, ANY), table (u8, 0xff = all), 3 pad bytes, then an
/// OF1.3 `ofp_match` (empty here: all flows).
pub(crate) fn encode_flow_monitor_request(xid: u32, monitor_id: u32, flags: u16) -> Vec<u8> {
    let (mut out, s) = multipart_request(xid, OFPMP_EXPERIMENTER);
    out.extend_from_slice(&ONF_EXPERIMENTER.to_be_bytes());
    out.extend_from_slice(&ONFST13_FLOW_MONITOR.to_be_bytes());
    out.extend_from_slice(&monitor_id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes()); // match_len (OXM match header only)
    out.extend_from_slice(&0xffff_ffffu32.to_be_bytes()); // out_port OFPP_ANY
    out.push(0xff); // all tables
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&[0, 1, 0, 4, 0, 0, 0, 0]); // empty OXM match, padded
    finish(&mut out, s);
    out
}

/// A decoded `OFPT_ERROR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ErrorMsg {
    /// Error type (`OFPET_*`).
    pub(crate) err_type: u16,
    /// Error code within the type.
    pub(crate) code: u16,
    /// Experimenter id when `err_type` is `OFPET_EXPERIMENTER` (0xffff).
    pub(crate) experimenter: Option<u32>,
    /// Type of the request that failed, taken from the echoed header (if present).
    pub(crate) failed_type: Option<u8>,
    /// Xid of the failed request (if echoed).
    pub(crate) failed_xid: Option<u32>,
}

impl ErrorMsg {
    /// Decodes an `OFPT_ERROR` body.
    pub(crate) fn parse(body: &[u8]) -> OfResult<ErrorMsg> {
        let mut r = Rd::new(body, "OFPT_ERROR");
        let err_type = r.u16()?;
        let code = r.u16()?;
        let experimenter = if err_type == 0xffff {
            r.u32().ok()
        } else {
            None
        };
        let failed = Header::parse(r.rest()).ok();
        Ok(ErrorMsg {
            err_type,
            code,
            experimenter,
            failed_type: failed.map(|h| h.msg_type),
            failed_xid: failed.map(|h| h.xid),
        })
    }

    fn names(&self) -> (&'static str, Option<&'static str>) {
        let t = match self.err_type {
            0 => "OFPET_HELLO_FAILED",
            1 => "OFPET_BAD_REQUEST",
            2 => "OFPET_BAD_ACTION",
            3 => "OFPET_BAD_INSTRUCTION",
            4 => "OFPET_BAD_MATCH",
            5 => "OFPET_FLOW_MOD_FAILED",
            6 => "OFPET_GROUP_MOD_FAILED",
            7 => "OFPET_PORT_MOD_FAILED",
            8 => "OFPET_TABLE_MOD_FAILED",
            9 => "OFPET_QUEUE_OP_FAILED",
            10 => "OFPET_SWITCH_CONFIG_FAILED",
            11 => "OFPET_ROLE_REQUEST_FAILED",
            12 => "OFPET_METER_MOD_FAILED",
            13 => "OFPET_TABLE_FEATURES_FAILED",
            0xffff => "OFPET_EXPERIMENTER",
            _ => "unknown error type",
        };
        let c = match (self.err_type, self.code) {
            (0, 0) => Some("OFPHFC_INCOMPATIBLE"),
            (0, 1) => Some("OFPHFC_EPERM"),
            (1, 0) => Some("OFPBRC_BAD_VERSION"),
            (1, 1) => Some("OFPBRC_BAD_TYPE"),
            (1, 2) => Some("OFPBRC_BAD_MULTIPART"),
            (1, 3) => Some("OFPBRC_BAD_EXPERIMENTER"),
            (1, 4) => Some("OFPBRC_BAD_EXP_TYPE"),
            (1, 5) => Some("OFPBRC_EPERM"),
            (1, 6) => Some("OFPBRC_BAD_LEN"),
            (1, 7) => Some("OFPBRC_BUFFER_EMPTY"),
            (1, 8) => Some("OFPBRC_BUFFER_UNKNOWN"),
            (1, 9) => Some("OFPBRC_BAD_TABLE_ID"),
            (1, 10) => Some("OFPBRC_IS_SLAVE"),
            (1, 11) => Some("OFPBRC_BAD_PORT"),
            (1, 12) => Some("OFPBRC_BAD_PACKET"),
            (1, 13) => Some("OFPBRC_MULTIPART_BUFFER_OVERFLOW"),
            (4, 0) => Some("OFPBMC_BAD_TYPE"),
            (4, 1) => Some("OFPBMC_BAD_LEN"),
            (4, 2) => Some("OFPBMC_BAD_TAG"),
            (4, 3) => Some("OFPBMC_BAD_DL_ADDR_MASK"),
            (4, 4) => Some("OFPBMC_BAD_NW_ADDR_MASK"),
            (4, 5) => Some("OFPBMC_BAD_WILDCARDS"),
            (4, 6) => Some("OFPBMC_BAD_FIELD"),
            (4, 7) => Some("OFPBMC_BAD_VALUE"),
            (4, 8) => Some("OFPBMC_BAD_MASK"),
            (4, 9) => Some("OFPBMC_BAD_PREREQ"),
            (4, 10) => Some("OFPBMC_DUP_FIELD"),
            (4, 11) => Some("OFPBMC_EPERM"),
            _ => None,
        };
        (t, c)
    }
}

impl fmt::Display for ErrorMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (t, c) = self.names();
        match c {
            Some(c) => write!(f, "{t}/{c}")?,
            None => write!(f, "{t} code {}", self.code)?,
        }
        write!(f, " (type {}, code {}", self.err_type, self.code)?;
        if let Some(e) = self.experimenter {
            write!(f, ", experimenter {e:#010x}")?;
        }
        if let Some(t) = self.failed_type {
            write!(f, ", failed request type {t}")?;
        }
        if let Some(x) = self.failed_xid {
            write!(f, ", xid {x}")?;
        }
        write!(f, ")")
    }
}

/// The FEATURES_REPLY fields pinflow keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Features {
    /// Datapath id.
    pub(crate) datapath_id: u64,
    /// Number of tables.
    pub(crate) n_tables: u8,
    /// Capability bits.
    pub(crate) capabilities: u32,
}

impl Features {
    /// Decodes a FEATURES_REPLY body.
    pub(crate) fn parse(body: &[u8]) -> OfResult<Features> {
        let mut r = Rd::new(body, "FEATURES_REPLY");
        let datapath_id = r.u64()?;
        let _n_buffers = r.u32()?;
        let n_tables = r.u8()?;
        r.skip(3)?;
        let capabilities = r.u32()?;
        Ok(Features {
            datapath_id,
            n_tables,
            capabilities,
        })
    }
}

/// A multipart reply's fixed part.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MultipartReply<'a> {
    /// `OFPMP_*` type.
    pub(crate) mp_type: u16,
    /// Flags (`OFPMPF_REPLY_MORE`).
    pub(crate) flags: u16,
    /// For experimenter multiparts: (experimenter id, experimenter type).
    pub(crate) experimenter: Option<(u32, u32)>,
    /// The body after the fixed parts.
    pub(crate) body: &'a [u8],
}

impl<'a> MultipartReply<'a> {
    /// Decodes a MULTIPART_REPLY message body.
    pub(crate) fn parse(body: &'a [u8]) -> OfResult<MultipartReply<'a>> {
        let mut r = Rd::new(body, "MULTIPART_REPLY");
        let mp_type = r.u16()?;
        let flags = r.u16()?;
        r.skip(4)?;
        let experimenter = if mp_type == OFPMP_EXPERIMENTER {
            Some((r.u32()?, r.u32()?))
        } else {
            None
        };
        Ok(MultipartReply {
            mp_type,
            flags,
            experimenter,
            body: r.rest(),
        })
    }

    /// Whether more replies to the same request follow.
    pub(crate) fn more(&self) -> bool {
        self.flags & OFPMPF_REPLY_MORE != 0
    }
}

/// An OpenFlow 1.3 port description (`ofp_port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PortDesc {
    /// OpenFlow port number (OF1.3 numbering: LOCAL is 0xfffffffe).
    pub(crate) port_no: u32,
    /// Hardware address.
    pub(crate) hw_addr: [u8; 6],
    /// Interface name.
    pub(crate) name: String,
    /// `OFPPC_*` config bits (1 = PORT_DOWN).
    pub(crate) config: u32,
    /// `OFPPS_*` state bits (1 = LINK_DOWN).
    pub(crate) state: u32,
    /// Current speed, kbps.
    pub(crate) curr_speed: u32,
}

/// Decodes the body of a PORT_DESC multipart reply (a sequence of 64-byte `ofp_port`).
pub(crate) fn parse_port_descs(body: &[u8]) -> OfResult<Vec<PortDesc>> {
    let mut r = Rd::new(body, "ofp_port");
    let mut out = Vec::with_capacity(body.len() / 64);
    while !r.is_empty() {
        let mut p = Rd::new(r.take(64)?, "ofp_port");
        let port_no = p.u32()?;
        p.skip(4)?;
        let mut hw_addr = [0u8; 6];
        hw_addr.copy_from_slice(p.take(6)?);
        p.skip(2)?;
        let raw_name = p.take(16)?;
        let end = raw_name.iter().position(|&c| c == 0).unwrap_or(16);
        let name = String::from_utf8_lossy(raw_name.get(..end).unwrap_or_default()).into_owned();
        let config = p.u32()?;
        let state = p.u32()?;
        p.skip(16)?; // curr, advertised, supported, peer
        let curr_speed = p.u32()?;
        out.push(PortDesc {
            port_no,
            hw_addr,
            name,
            config,
            state,
            curr_speed,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_handles_partial_and_oversized() {
        let hello = encode_hello(7);
        let mut buf = hello[..5].to_vec();
        assert!(take_message(&mut buf, MAX_MESSAGE_LEN).unwrap().is_none());
        buf.extend_from_slice(&hello[5..]);
        let m = take_message(&mut buf, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(m.header.xid, 7);
        assert_eq!(hello_bitmap(&m.body), 1 << 4);
        assert!(buf.is_empty());
        let mut big = vec![4, 19, 0xff, 0xff, 0, 0, 0, 1];
        assert!(matches!(
            take_message(&mut big, 1000),
            Err(OfError::TooLarge { len: 65535, .. })
        ));
        let mut short = vec![4, 19, 0, 4, 0, 0, 0, 1];
        assert!(matches!(
            take_message(&mut short, 1000),
            Err(OfError::Decode(DecodeError::Malformed(_)))
        ));
    }

    #[test]
    fn flow_monitor_request_bytes() {
        // Verified with `ovs-ofctl ofp-print`: "ONFST_FLOW_MONITOR request (OF1.3) (xid=0x5):
        // id=1 flags=add,delete,modify,actions".
        let b = encode_flow_monitor_request(
            5,
            1,
            NXFMF_ADD | NXFMF_DELETE | NXFMF_MODIFY | NXFMF_ACTIONS,
        );
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(
            hex,
            concat!(
                "0412003000000005",
                "ffff000000000000",
                "4f4e46000000074e",
                "00000001001e0004",
                "ffffffffff000000",
                "0001000400000000"
            )
        );
    }

    /// Real ovs-vswitchd 3.1 replies to HELLO, FEATURES_REQUEST, a multipart request of unknown
    /// type 0x7777 and an ECHO_REQUEST("abcd").
    #[test]
    fn captured_handshake_error_and_echo() {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/openflow/handshake-error-echo.of13.bin"
        );
        let mut buf = std::fs::read(p).unwrap();
        let hello = take_message(&mut buf, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(
            (hello.header.msg_type, hello.header.version),
            (OFPT_HELLO, 6)
        );
        let feat = take_message(&mut buf, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(feat.header.msg_type, OFPT_FEATURES_REPLY);
        let f = Features::parse(&feat.body).unwrap();
        assert_eq!((f.datapath_id, f.n_tables), (0xb60f_56fc_f345, 254));
        let err = take_message(&mut buf, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(err.header.msg_type, OFPT_ERROR);
        assert_eq!(
            ErrorMsg::parse(&err.body).unwrap().to_string(),
            "OFPET_BAD_REQUEST/OFPBRC_BAD_MULTIPART (type 1, code 2, failed request type 18, xid 3)"
        );
        let echo = take_message(&mut buf, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(
            (echo.header.msg_type, echo.body.as_slice()),
            (OFPT_ECHO_REPLY, &b"abcd"[..])
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn error_message_is_readable() {
        let body = [0, 1, 0, 1, 4, 18, 0, 16, 0, 0, 0, 9];
        let e = ErrorMsg::parse(&body).unwrap();
        assert_eq!(
            e.to_string(),
            "OFPET_BAD_REQUEST/OFPBRC_BAD_TYPE (type 1, code 1, failed request type 18, xid 9)"
        );
        assert!(ErrorMsg::parse(&[0, 1]).is_err());
    }

    #[test]
    fn reader_never_panics_on_short_input() {
        let mut r = Rd::new(&[1, 2, 3], "x");
        assert!(r.u32().is_err());
        assert_eq!(r.u16().unwrap(), 0x0102);
        assert!(r.u16().is_err());
        assert!(parse_port_descs(&[0; 63]).is_err());
        assert!(Features::parse(&[0; 10]).is_err());
        assert!(MultipartReply::parse(&[0, 1]).is_err());
    }
}
