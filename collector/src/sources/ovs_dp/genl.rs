//! A small blocking generic netlink client: family resolution through `nlctrl` and dumps/requests
//! of the OVS families. Framing (`nlmsghdr`, `genlmsghdr`, the controller family) comes from the
//! `netlink-packet-core` / `netlink-packet-generic` crates; the OVS payload (`struct ovs_header`
//! followed by attributes) is [`OvsMessage`], written here because no crate models it.

use super::OvsDpError;
use netlink_packet_core::{
    DecodeError, Emitable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage,
    NetlinkPayload, NlasIterator, ParseableParametrized,
};
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

/// One OVS generic netlink message body: `struct ovs_header` and raw attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OvsMessage {
    /// Command (`OVS_*_CMD_*`).
    pub(crate) cmd: u8,
    /// Family version.
    pub(crate) version: u8,
    /// `ovs_header.dp_ifindex`: the datapath's ifindex (0 in requests that name no datapath).
    pub(crate) dp_ifindex: i32,
    /// The attributes, unparsed (`nlattr` stream).
    pub(crate) attrs: Vec<u8>,
}

impl GenlFamily for OvsMessage {
    fn family_name() -> &'static str {
        "ovs"
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        self.version
    }
}

impl Emitable for OvsMessage {
    fn buffer_len(&self) -> usize {
        4 + self.attrs.len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        // `buffer` is exactly `buffer_len()` long (sized by NetlinkMessage::buffer_len).
        if let Some(h) = buffer.get_mut(..4) {
            h.copy_from_slice(&self.dp_ifindex.to_ne_bytes());
        }
        if let Some(a) = buffer.get_mut(4..4 + self.attrs.len()) {
            a.copy_from_slice(&self.attrs);
        }
    }
}

impl ParseableParametrized<[u8], GenlHeader> for OvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let (h, attrs) = buf.split_at_checked(4).ok_or_else(|| {
            DecodeError::from(format!("ovs_header truncated: {} of 4 bytes", buf.len()))
        })?;
        let mut ifindex = [0u8; 4];
        ifindex.copy_from_slice(h);
        Ok(Self {
            cmd: header.cmd,
            version: header.version,
            dp_ifindex: i32::from_ne_bytes(ifindex),
            attrs: attrs.to_vec(),
        })
    }
}

/// One family of an `nlctrl` family dump: only its name and id, read with the bounds-checked
/// [`attrs`] walk. (netlink-packet-generic's `GenlCtrl` parses every attribute, op policies
/// included, and its policy parser panics on a truncated nested attribute — found by the
/// `genetlink` fuzz target.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CtrlFamily {
    /// `CTRL_ATTR_FAMILY_NAME`.
    pub(crate) name: Option<String>,
    /// `CTRL_ATTR_FAMILY_ID`.
    pub(crate) id: Option<u16>,
}

/// `CTRL_ATTR_FAMILY_ID`.
const CTRL_ATTR_FAMILY_ID: u16 = 1;
/// `CTRL_ATTR_FAMILY_NAME`.
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

impl ParseableParametrized<[u8], GenlHeader> for CtrlFamily {
    fn parse_with_param(buf: &[u8], _header: GenlHeader) -> Result<Self, DecodeError> {
        let mut f = CtrlFamily::default();
        for a in attrs(buf) {
            let a = a.map_err(|e| DecodeError::from(e.to_string()))?;
            match a.kind {
                CTRL_ATTR_FAMILY_ID => {
                    if let [x, y] = a.value {
                        f.id = Some(u16::from_ne_bytes([*x, *y]));
                    }
                }
                CTRL_ATTR_FAMILY_NAME => {
                    let name = a.value.split(|b| *b == 0).next().unwrap_or_default();
                    f.name = Some(String::from_utf8_lossy(name).into_owned());
                }
                _ => {}
            }
        }
        Ok(f)
    }
}

/// Appends one attribute (`nlattr` + value + padding) to `out`.
#[cfg(test)]
pub(crate) fn push_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

/// One decoded attribute: type (flags stripped) and value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attr<'a> {
    /// Attribute type without `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER`.
    pub(crate) kind: u16,
    /// Value bytes.
    pub(crate) value: &'a [u8],
}

/// Iterates over an attribute stream; a truncated attribute ends the walk with an error.
pub(crate) fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<Attr<'_>, OvsDpError>> {
    NlasIterator::new(buf).map(|r| {
        r.map(|nla| {
            let kind = nla.kind() & netlink_packet_core::NLA_TYPE_MASK;
            let value = nla.into_inner();
            // NlaBuffer::new_checked has verified the length against the buffer.
            let len = usize::from(u16::from_ne_bytes([
                value.first().copied().unwrap_or(0),
                value.get(1).copied().unwrap_or(0),
            ]));
            Attr {
                kind,
                value: value.get(4..len).unwrap_or(&[]),
            }
        })
        .map_err(|e| OvsDpError::Decode(format!("attribute: {e}")))
    })
}

/// Collects an attribute stream, failing on the first truncated attribute.
pub(crate) fn attr_list(buf: &[u8]) -> Result<Vec<Attr<'_>>, OvsDpError> {
    attrs(buf).collect()
}

/// A generic netlink socket.
pub(crate) struct GenlSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
    /// When set, every received datagram is appended here (for fixtures: `pinflow flows --datapath --capture`).
    pub(crate) capture: Option<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for GenlSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GenlSocket")
    }
}

const RECV_BUF: usize = 1 << 20;

/// Longest wait for one reply datagram (or to send a request): a kernel that never answers
/// fails the poll, which then reopens the socket, instead of hanging the datapath thread.
pub(crate) const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sets `SO_RCVTIMEO` and `SO_SNDTIMEO` of `sock` to `t`.
#[allow(unsafe_code)] // setsockopt has no safe wrapper in netlink-sys.
fn set_timeouts(sock: &Socket, t: std::time::Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(t.subsec_micros()),
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: setsockopt reads a timeval we own, of the size we pass, on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// An I/O error of the socket, with a timeout said as such.
fn socket_error(e: std::io::Error) -> OvsDpError {
    if matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ) {
        return OvsDpError::Socket(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "generic netlink: no reply within {} s",
                IO_TIMEOUT.as_secs()
            ),
        ));
    }
    OvsDpError::Socket(e)
}

impl GenlSocket {
    /// Opens and binds a `NETLINK_GENERIC` socket.
    pub(crate) fn open() -> Result<Self, OvsDpError> {
        let mut sock = Socket::new(NETLINK_GENERIC).map_err(OvsDpError::Socket)?;
        sock.bind_auto().map_err(OvsDpError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(OvsDpError::Socket)?;
        set_timeouts(&sock, IO_TIMEOUT).map_err(OvsDpError::Socket)?;
        let _ = sock.set_ext_ack(true);
        Ok(Self {
            sock,
            seq: 1,
            buf: Vec::with_capacity(RECV_BUF),
            capture: None,
        })
    }

    /// Every registered generic netlink family as (name, id).
    ///
    /// A dump, not a `CTRL_CMD_GETFAMILY` by name: asking for a missing family by name makes the
    /// kernel try to load its module, and a monitor must not load `openvswitch.ko` by looking.
    pub(crate) fn families(&mut self) -> Result<Vec<(String, u16)>, OvsDpError> {
        let mut msg = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: Vec::new(),
        });
        msg.finalize();
        let seq = self.next_seq();
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP;
        nl.header.sequence_number = seq;
        nl.finalize();
        let mut out = vec![0; nl.buffer_len()];
        nl.serialize(&mut out);
        self.send(&out)?;
        let mut all = Vec::new();
        self.receive::<CtrlFamily>(seq, |m| {
            if let CtrlFamily {
                name: Some(n),
                id: Some(i),
            } = m.payload
            {
                all.push((n, i));
            }
            Ok(())
        })?;
        Ok(all)
    }

    /// Sends a request to an OVS family and calls `each` for every reply message (a dump when
    /// `dump`); returns when the kernel signals the end.
    pub(crate) fn request(
        &mut self,
        family: u16,
        req: OvsMessage,
        dump: bool,
        mut each: impl FnMut(OvsMessage) -> Result<(), OvsDpError>,
    ) -> Result<(), OvsDpError> {
        let mut msg = GenlMessage::from_payload(req);
        msg.finalize();
        msg.set_resolved_family_id(family);
        let seq = self.next_seq();
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = NLM_F_REQUEST | NLM_F_ACK | if dump { NLM_F_DUMP } else { 0 };
        nl.header.sequence_number = seq;
        nl.finalize();
        let mut out = vec![0; nl.buffer_len()];
        nl.serialize(&mut out);
        self.send(&out)?;
        self.receive::<OvsMessage>(seq, |m| each(m.payload))
    }

    /// Replaces the socket's receive and send timeouts ([`IO_TIMEOUT`] by default).
    #[cfg(test)]
    fn set_io_timeout(&self, t: std::time::Duration) -> Result<(), OvsDpError> {
        set_timeouts(&self.sock, t).map_err(OvsDpError::Socket)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, b: &[u8]) -> Result<(), OvsDpError> {
        self.sock.send(b, 0).map_err(socket_error)?;
        Ok(())
    }

    /// Receives until DONE / ACK / error for `seq`, decoding each message as `GenlMessage<F>`.
    fn receive<F>(
        &mut self,
        seq: u32,
        mut each: impl FnMut(GenlMessage<F>) -> Result<(), OvsDpError>,
    ) -> Result<(), OvsDpError>
    where
        F: ParseableParametrized<[u8], GenlHeader> + std::fmt::Debug,
    {
        loop {
            self.buf.clear();
            let n = self
                .sock
                .recv(&mut self.buf, libc::MSG_TRUNC)
                .map_err(socket_error)?;
            if n > self.buf.len() {
                return Err(OvsDpError::Decode(format!(
                    "netlink datagram of {n} bytes truncated to {}",
                    self.buf.len()
                )));
            }
            let buf = std::mem::take(&mut self.buf);
            if let Some(c) = &mut self.capture {
                c.push(buf.clone());
            }
            let r = walk_datagram::<F>(&buf, seq, &mut each);
            self.buf = buf;
            if r? {
                return Ok(());
            }
        }
    }
}

/// Decodes every netlink message in one datagram; true when the reply for `seq` is complete.
pub(crate) fn walk_datagram<F>(
    buf: &[u8],
    seq: u32,
    each: &mut impl FnMut(GenlMessage<F>) -> Result<(), OvsDpError>,
) -> Result<bool, OvsDpError>
where
    F: ParseableParametrized<[u8], GenlHeader> + std::fmt::Debug,
{
    let mut off = 0;
    while off < buf.len() {
        let rest = buf.get(off..).unwrap_or(&[]);
        let nb = NetlinkBuffer::new_checked(rest)
            .map_err(|e| OvsDpError::Decode(format!("netlink header: {e}")))?;
        let len = nb.length() as usize;
        if len < 16 {
            return Err(OvsDpError::Decode(format!(
                "netlink message length {len} < 16"
            )));
        }
        let one = rest.get(..len).unwrap_or(rest);
        off += (len + 3) & !3;
        let m = NetlinkMessage::<GenlMessage<F>>::deserialize(one)
            .map_err(|e| OvsDpError::Decode(e.to_string()))?;
        if m.header.sequence_number != seq {
            continue; // a stale reply of an earlier, abandoned request
        }
        match m.payload {
            NetlinkPayload::InnerMessage(g) => each(g)?,
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => {
                return match e.code {
                    None => Ok(true), // ACK
                    // The kernel sends -errno; a corrupt i32::MIN must not overflow.
                    Some(c) => Err(OvsDpError::Kernel {
                        errno: c.get().saturating_neg(),
                        message: std::io::Error::from_raw_os_error(c.get().saturating_neg())
                            .to_string(),
                    }),
                };
            }
            NetlinkPayload::Overrun(_) => {
                return Err(OvsDpError::Decode("netlink overrun".into()));
            }
            _ => {}
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_that_never_comes_times_out_instead_of_hanging() {
        // A NETLINK_GENERIC socket needs no privileges; nothing was requested, so nothing comes.
        let mut s = GenlSocket::open().expect("a NETLINK_GENERIC socket needs no privileges");
        s.set_io_timeout(std::time::Duration::from_millis(100))
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let t0 = std::time::Instant::now();
        let r = s.receive::<GenlCtrl>(12345, |_| Ok(()));
        let took = t0.elapsed();
        let Err(OvsDpError::Socket(e)) = r else {
            panic!("expected a socket timeout, got {r:?}");
        };
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("no reply within"), "{e}");
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    }
}
