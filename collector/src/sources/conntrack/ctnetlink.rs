//! A blocking ctnetlink (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_CTNETLINK`) client that
//! dumps the conntrack table and counts its entries per zone, storing none of them.

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NlasIterator};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use std::collections::HashMap;

/// `NFNL_SUBSYS_CTNETLINK`.
const SUBSYS_CTNETLINK: u16 = 1;
/// `IPCTNL_MSG_CT_NEW`: an entry (in dump replies).
const MSG_CT_NEW: u16 = 0;
/// `IPCTNL_MSG_CT_GET`.
const MSG_CT_GET: u16 = 1;
/// `IPCTNL_MSG_CT_GET_STATS`: the table's global counters, O(1).
const MSG_CT_GET_STATS: u16 = 5;
/// `CTA_ZONE` (`__be16`; absent for the default zone 0).
pub(crate) const CTA_ZONE: u16 = 18;
/// `NLMSG_ERROR`, `NLMSG_DONE`.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Size of the receive buffer (the kernel fills dump datagrams up to 32 KiB).
const RECV_BUFFER: usize = 1 << 16;

/// Errors of the ctnetlink client. None is fatal: the next poll tries again.
#[derive(Debug, thiserror::Error)]
pub enum CtError {
    /// The socket failed.
    #[error("ctnetlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// A reply could not be decoded.
    #[error("malformed ctnetlink reply: {0}")]
    Decode(String),
    /// The kernel answered with an error.
    #[error("ctnetlink: {0}")]
    Kernel(std::io::Error),
}

/// What one dump counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DumpCounts {
    /// Entries per zone (zone 0 = the default zone).
    pub zones: HashMap<u16, u64>,
    /// Entries in all (the sum of `zones`).
    pub entries: u64,
    /// Bytes the kernel sent (to judge the cost).
    pub bytes: u64,
}

/// A ctnetlink socket (one per pipeline; reused across dumps).
pub struct Ctnetlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Ctnetlink {
    /// Opens the socket.
    pub fn open() -> Result<Ctnetlink, CtError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(CtError::Socket)?;
        sock.bind_auto().map_err(CtError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(CtError::Socket)?;
        Ok(Ctnetlink {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUFFER),
        })
    }

    /// Dumps the table (IPv4 and IPv6) and counts its entries per zone; with `zone`, asks the
    /// kernel to send only that zone's entries (`CTA_ZONE` filter, kernel ≥ 6.8; older kernels
    /// send every entry, which the count then includes).
    pub fn dump(&mut self, zone: Option<u16>) -> Result<DumpCounts, CtError> {
        self.seq = self.seq.wrapping_add(1);
        let req = dump_request(self.seq, zone);
        self.exchange(&req)
    }

    /// Asks for the table's global counters (`IPCTNL_MSG_CT_GET_STATS`, constant cost) and
    /// ignores them: proves that ctnetlink answers and this process may use it
    /// (`CAP_NET_ADMIN`) without walking the table.
    pub fn check(&mut self) -> Result<(), CtError> {
        self.seq = self.seq.wrapping_add(1);
        let req = request(
            self.seq,
            MSG_CT_GET_STATS,
            NLM_F_REQUEST | netlink_packet_core::NLM_F_ACK,
            None,
        );
        self.exchange(&req).map(|_| ())
    }

    /// Sends `req` and counts the replies up to the end of the dump (or the ack).
    fn exchange(&mut self, req: &[u8]) -> Result<DumpCounts, CtError> {
        let seq = self.seq;
        self.sock.send(req, 0).map_err(CtError::Socket)?;
        let mut out = DumpCounts::default();
        loop {
            self.buf.clear();
            let n = self
                .sock
                .recv(&mut self.buf, libc::MSG_TRUNC)
                .map_err(CtError::Socket)?;
            if n > self.buf.len() {
                return Err(CtError::Decode(format!("datagram of {n} bytes truncated")));
            }
            out.bytes += n as u64;
            if count_datagram(&self.buf, seq, &mut out)? {
                return Ok(out);
            }
        }
    }
}

/// The dump request: `nlmsghdr`, `nfgenmsg` (family `AF_UNSPEC`: every family), and `CTA_ZONE`
/// when filtering.
pub(crate) fn dump_request(seq: u32, zone: Option<u16>) -> Vec<u8> {
    request(seq, MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, zone)
}

/// One ctnetlink request of type `msg` with `flags`, and `CTA_ZONE` when given.
fn request(seq: u32, msg: u16, flags: u16, zone: Option<u16>) -> Vec<u8> {
    let len: u32 = if zone.is_some() { 16 + 4 + 8 } else { 16 + 4 };
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&((SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version (NFNETLINK_V0), res_id (big-endian).
    b.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    if let Some(z) = zone {
        b.extend_from_slice(&6u16.to_ne_bytes());
        b.extend_from_slice(&CTA_ZONE.to_ne_bytes());
        b.extend_from_slice(&z.to_be_bytes());
        b.extend_from_slice(&[0, 0]);
    }
    b
}

/// Counts the entries of one datagram into `out`; true when the dump is complete.
pub(crate) fn count_datagram(buf: &[u8], seq: u32, out: &mut DumpCounts) -> Result<bool, CtError> {
    let mut off = 0;
    while off < buf.len() {
        let rest = buf.get(off..).unwrap_or(&[]);
        let nb = NetlinkBuffer::new_checked(rest).map_err(|e| CtError::Decode(e.to_string()))?;
        let len = nb.length() as usize;
        if len < 16 {
            return Err(CtError::Decode(format!("message length {len} < 16")));
        }
        off += (len + 3) & !3;
        if nb.sequence_number() != seq {
            continue;
        }
        let kind = nb.message_type();
        let payload = rest.get(16..len).unwrap_or(&[]);
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = payload
                    .get(..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(0, i32::from_ne_bytes);
                if code == 0 {
                    return Ok(true);
                }
                // The kernel sends -errno; a corrupt i32::MIN must not overflow.
                return Err(CtError::Kernel(std::io::Error::from_raw_os_error(
                    code.saturating_neg(),
                )));
            }
            k if k == (SUBSYS_CTNETLINK << 8) | MSG_CT_NEW => {
                let attrs = payload.get(4..).ok_or_else(|| {
                    CtError::Decode(format!("entry of {} bytes has no nfgenmsg", payload.len()))
                })?;
                let zone = entry_zone(attrs)?;
                *out.zones.entry(zone).or_default() += 1;
                out.entries += 1;
            }
            _ => {}
        }
    }
    Ok(false)
}

/// The zone of one entry: its `CTA_ZONE`, 0 (the default zone) when absent.
fn entry_zone(attrs: &[u8]) -> Result<u16, CtError> {
    for a in NlasIterator::new(attrs) {
        let a = a.map_err(|e| CtError::Decode(e.to_string()))?;
        if a.kind() == CTA_ZONE {
            let v = a.value();
            let b = v
                .get(..2)
                .and_then(|b| <[u8; 2]>::try_from(b).ok())
                .ok_or_else(|| CtError::Decode(format!("CTA_ZONE of {} bytes", v.len())))?;
            return Ok(u16::from_be_bytes(b));
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One dump reply entry: `nlmsghdr` + `nfgenmsg` + a status attribute and, for a zone other
    /// than 0, `CTA_ZONE` (as the kernel sends it).
    fn entry(seq: u32, zone: u16) -> Vec<u8> {
        let mut attrs = Vec::new();
        // CTA_STATUS (3), __be32.
        attrs.extend_from_slice(&8u16.to_ne_bytes());
        attrs.extend_from_slice(&3u16.to_ne_bytes());
        attrs.extend_from_slice(&8u32.to_be_bytes());
        if zone != 0 {
            attrs.extend_from_slice(&6u16.to_ne_bytes());
            attrs.extend_from_slice(&CTA_ZONE.to_ne_bytes());
            attrs.extend_from_slice(&zone.to_be_bytes());
            attrs.extend_from_slice(&[0, 0]);
        }
        message(
            seq,
            (SUBSYS_CTNETLINK << 8) | MSG_CT_NEW,
            &[&[2, 0, 0, 0], &attrs],
        )
    }

    fn message(seq: u32, kind: u16, parts: &[&[u8]]) -> Vec<u8> {
        let body: Vec<u8> = parts.concat();
        let len = 16 + body.len() as u32;
        let mut b = Vec::new();
        b.extend_from_slice(&len.to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&2u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&body);
        b
    }

    #[test]
    fn counts_entries_per_zone_until_done() {
        let mut dgram = [entry(7, 0), entry(7, 5), entry(7, 5), entry(6, 9)].concat();
        let mut out = DumpCounts::default();
        assert!(!count_datagram(&dgram, 7, &mut out).unwrap());
        assert_eq!(out.entries, 3);
        assert_eq!(out.zones.get(&5), Some(&2));
        assert_eq!(out.zones.get(&0), Some(&1));
        assert_eq!(out.zones.get(&9), None);
        dgram = message(7, NLMSG_DONE, &[&0i32.to_ne_bytes()]);
        assert!(count_datagram(&dgram, 7, &mut out).unwrap());
        let err = message(7, NLMSG_ERROR, &[&(-1i32).to_ne_bytes(), &[0; 16]]);
        assert!(matches!(
            count_datagram(&err, 7, &mut DumpCounts::default()),
            Err(CtError::Kernel(e)) if e.raw_os_error() == Some(1)
        ));
    }

    #[test]
    fn truncated_datagrams_do_not_panic() {
        let b = [entry(1, 3), entry(1, 4)].concat();
        for cut in 0..b.len() {
            let _ = count_datagram(&b[..cut], 1, &mut DumpCounts::default());
        }
        let odd = message(1, (SUBSYS_CTNETLINK << 8) | MSG_CT_NEW, &[&[2, 0]]);
        assert!(count_datagram(&odd, 1, &mut DumpCounts::default()).is_err());
    }

    #[test]
    fn request_carries_the_zone_filter() {
        let r = dump_request(3, Some(0x1234));
        assert_eq!(r.len(), 28);
        assert_eq!(&r[0..4], &28u32.to_ne_bytes());
        assert_eq!(&r[24..26], &[0x12, 0x34]);
        assert_eq!(dump_request(3, None).len(), 20);
    }
}
