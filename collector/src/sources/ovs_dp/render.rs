//! Megaflows as text, in the form `ovs-dpctl dump-flows` prints them (non-verbose): key attributes
//! in wire order, fully wildcarded attributes left out (except `eth()` and attributes unknown to
//! pinflow, which OVS prints as `keyN(hex/hex)`), fields shown only where the mask is non-zero,
//! `field=value/mask` where the mask is partial, then stats and actions.

use super::uapi::{action, key};
use crate::model::datapath::{Megaflow, RawAttr};
use std::fmt::Write as _;

/// Renders megaflows one per line like `ovs-dpctl dump-flows`; `now_ms` is the kernel's
/// monotonic clock in ms (for `used:`).
pub(crate) fn render_megaflows(flows: &[Megaflow], now_ms: u64) -> String {
    let mut out = String::with_capacity(flows.len() * 160);
    for f in flows {
        render_megaflow(&mut out, f, now_ms);
        out.push('\n');
    }
    out
}

/// Appends one megaflow (without newline).
pub(crate) fn render_megaflow(out: &mut String, f: &Megaflow, now_ms: u64) {
    render_key(out, &f.key, &f.mask);
    let _ = write!(out, ", packets:{}, bytes:{}, used:", f.packets, f.bytes);
    match f.used_ms {
        Some(u) if u > 0 => {
            let _ = write!(out, "{:.3}s", now_ms.saturating_sub(u) as f64 / 1000.0);
        }
        _ => out.push_str("never"),
    }
    if f.tcp_flags != 0 {
        out.push_str(", flags:");
        tcp_flags(out, u16::from(f.tcp_flags));
    }
    out.push_str(", actions:");
    render_actions(out, &f.actions);
}

fn find(attrs: &[RawAttr], kind: u16) -> Option<&RawAttr> {
    attrs.iter().find(|a| a.kind == kind)
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Renders a flow key under its mask.
pub(crate) fn render_key(out: &mut String, keys: &[RawAttr], mask: &[RawAttr]) {
    let mut first = true;
    for k in keys {
        let ones = vec![0xffu8; k.value.len()];
        let m: &[u8] = if mask.is_empty() {
            &ones
        } else {
            match find(mask, k.kind) {
                Some(m) => &m.value,
                None => &[],
            }
        };
        let known = known_key(k.kind);
        let wildcard = is_zero(m);
        if wildcard && known && k.kind != key::ETHERNET {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        key_attr(out, k, m);
    }
    if find(keys, key::ETHERTYPE).is_none()
        && let Some(m) = find(mask, key::ETHERTYPE)
    {
        let _ = write!(out, ",eth_type(0/0x{:04x})", be16(&m.value, 0));
    }
}

fn known_key(k: u16) -> bool {
    matches!(
        k,
        key::PRIORITY
            | key::IN_PORT
            | key::ETHERNET
            | key::VLAN
            | key::ETHERTYPE
            | key::IPV4
            | key::IPV6
            | key::TCP
            | key::UDP
            | key::SCTP
            | key::ICMP
            | key::ICMPV6
            | key::ARP
            | key::ND
            | key::SKB_MARK
            | key::TCP_FLAGS
            | key::DP_HASH
            | key::RECIRC_ID
            | key::CT_STATE
            | key::CT_ZONE
            | key::CT_MARK
            | key::CT_LABELS
    )
}

fn get(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}
fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([get(b, o), get(b, o + 1)])
}
fn ne32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([get(b, 0), get(b, 1), get(b, 2), get(b, 3)])
}
fn ne16(b: &[u8]) -> u16 {
    u16::from_ne_bytes([get(b, 0), get(b, 1)])
}
fn slice(b: &[u8], o: usize, n: usize) -> Vec<u8> {
    (o..o + n).map(|i| get(b, i)).collect()
}

/// A field list of one attribute: `name=value[/mask]`, skipping fields whose mask is zero.
struct Fields<'a> {
    out: &'a mut String,
    first: bool,
}

impl Fields<'_> {
    fn sep(&mut self, name: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push_str(name);
        self.out.push('=');
    }
    /// Decimal value, hex mask.
    fn num(&mut self, name: &str, v: u64, m: u64, full: u64) {
        if m == 0 {
            return;
        }
        self.sep(name);
        let _ = write!(self.out, "{v}");
        if m != full {
            let _ = write!(self.out, "/{m:#x}");
        }
    }
    /// Hex value, hex mask.
    fn hex(&mut self, name: &str, v: u64, m: u64, full: u64) {
        if m == 0 {
            return;
        }
        self.sep(name);
        let _ = write!(self.out, "{v:#x}");
        if m != full {
            let _ = write!(self.out, "/{m:#x}");
        }
    }
    fn ip4(&mut self, name: &str, v: &[u8], m: &[u8]) {
        if is_zero(m) {
            return;
        }
        self.sep(name);
        let f = |b: &[u8]| format!("{}.{}.{}.{}", get(b, 0), get(b, 1), get(b, 2), get(b, 3));
        self.out.push_str(&f(v));
        if m.iter().any(|&x| x != 0xff) {
            self.out.push('/');
            self.out.push_str(&f(m));
        }
    }
    fn ip6(&mut self, name: &str, v: &[u8], m: &[u8]) {
        if is_zero(m) {
            return;
        }
        self.sep(name);
        let f = |b: &[u8]| {
            let mut a = [0u8; 16];
            for (i, x) in a.iter_mut().enumerate() {
                *x = get(b, i);
            }
            std::net::Ipv6Addr::from(a).to_string()
        };
        self.out.push_str(&f(v));
        if m.iter().any(|&x| x != 0xff) {
            self.out.push('/');
            self.out.push_str(&f(m));
        }
    }
    fn mac(&mut self, name: &str, v: &[u8], m: &[u8]) {
        if is_zero(m) {
            return;
        }
        self.sep(name);
        let f = |b: &[u8]| {
            (0..6)
                .map(|i| format!("{:02x}", get(b, i)))
                .collect::<Vec<_>>()
                .join(":")
        };
        self.out.push_str(&f(v));
        if m.iter().any(|&x| x != 0xff) {
            self.out.push('/');
            self.out.push_str(&f(m));
        }
    }
    fn frag(&mut self, v: u8, m: u8) {
        if m == 0 {
            return;
        }
        self.sep("frag");
        self.out.push_str(match v {
            0 => "no",
            1 => "first",
            2 => "later",
            _ => "<error>",
        });
        if m != 0xff {
            let _ = write!(self.out, "/{m:#x}");
        }
    }
}

/// Value or value/mask for single-value attributes like `in_port(1)`.
fn single(out: &mut String, name: &str, v: String, m: u64, full: u64, mhex: bool) {
    let _ = write!(out, "{name}({v}");
    if m != full {
        if mhex {
            let _ = write!(out, "/{m:#x}");
        } else {
            let _ = write!(out, "/{m}");
        }
    }
    out.push(')');
}

fn hexbytes(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn key_attr(out: &mut String, k: &RawAttr, m: &[u8]) {
    let v = &k.value[..];
    match k.kind {
        key::RECIRC_ID => single(
            out,
            "recirc_id",
            fmt_hex0(ne32(v)),
            u64::from(ne32(m)),
            0xffff_ffff,
            true,
        ),
        key::DP_HASH => single(
            out,
            "dp_hash",
            fmt_hex0(ne32(v)),
            u64::from(ne32(m)),
            0xffff_ffff,
            true,
        ),
        key::PRIORITY => single(
            out,
            "skb_priority",
            fmt_hex0(ne32(v)),
            u64::from(ne32(m)),
            0xffff_ffff,
            true,
        ),
        key::SKB_MARK => single(
            out,
            "skb_mark",
            fmt_hex0(ne32(v)),
            u64::from(ne32(m)),
            0xffff_ffff,
            true,
        ),
        key::IN_PORT => single(
            out,
            "in_port",
            ne32(v).to_string(),
            u64::from(ne32(m)),
            0xffff_ffff,
            true,
        ),
        key::CT_STATE => single(
            out,
            "ct_state",
            fmt_hex0(ne32(v)),
            u64::from(ne32(m)),
            0xffff_ffff,
            true,
        ),
        key::CT_ZONE => single(
            out,
            "ct_zone",
            fmt_hex0(u32::from(ne16(v))),
            u64::from(ne16(m)),
            0xffff,
            true,
        ),
        key::CT_MARK => single(
            out,
            "ct_mark",
            fmt_hex0(ne32(v)),
            u64::from(ne32(m)),
            0xffff_ffff,
            true,
        ),
        key::ETHERTYPE => {
            let _ = write!(out, "eth_type(0x{:04x}", be16(v, 0));
            let mm = be16(m, 0);
            if mm != 0xffff {
                let _ = write!(out, "/0x{mm:04x}");
            }
            out.push(')');
        }
        key::VLAN => {
            let (tv, tm) = (be16(v, 0), be16(m, 0));
            out.push_str("vlan(");
            let mut f = Fields { out, first: true };
            f.num("vid", u64::from(tv & 0xfff), u64::from(tm & 0xfff), 0xfff);
            f.num("pcp", u64::from(tv >> 13), u64::from(tm >> 13), 7);
            if tm & 0x1000 != 0 && tv & 0x1000 == 0 {
                f.num("cfi", 0, 1, 1);
            }
            out.push(')');
        }
        key::ETHERNET => {
            out.push_str("eth(");
            let mut f = Fields { out, first: true };
            f.mac("src", &slice(v, 0, 6), &slice(m, 0, 6));
            f.mac("dst", &slice(v, 6, 6), &slice(m, 6, 6));
            out.push(')');
        }
        key::IPV4 => {
            out.push_str("ipv4(");
            let mut f = Fields { out, first: true };
            f.ip4("src", &slice(v, 0, 4), &slice(m, 0, 4));
            f.ip4("dst", &slice(v, 4, 4), &slice(m, 4, 4));
            f.num("proto", u64::from(get(v, 8)), u64::from(get(m, 8)), 0xff);
            f.num("tos", u64::from(get(v, 9)), u64::from(get(m, 9)), 0xff);
            f.num("ttl", u64::from(get(v, 10)), u64::from(get(m, 10)), 0xff);
            f.frag(get(v, 11), get(m, 11));
            out.push(')');
        }
        key::IPV6 => {
            out.push_str("ipv6(");
            let mut f = Fields { out, first: true };
            f.ip6("src", &slice(v, 0, 16), &slice(m, 0, 16));
            f.ip6("dst", &slice(v, 16, 16), &slice(m, 16, 16));
            let lab = |b: &[u8]| {
                u64::from(u32::from_be_bytes([
                    get(b, 32),
                    get(b, 33),
                    get(b, 34),
                    get(b, 35),
                ]))
            };
            f.hex("label", lab(v), lab(m), 0xfffff);
            f.num("proto", u64::from(get(v, 36)), u64::from(get(m, 36)), 0xff);
            f.num("tclass", u64::from(get(v, 37)), u64::from(get(m, 37)), 0xff);
            f.num("hlimit", u64::from(get(v, 38)), u64::from(get(m, 38)), 0xff);
            f.frag(get(v, 39), get(m, 39));
            out.push(')');
        }
        key::TCP | key::UDP | key::SCTP => {
            let name = match k.kind {
                key::TCP => "tcp",
                key::UDP => "udp",
                _ => "sctp",
            };
            let _ = write!(out, "{name}(");
            let mut f = Fields { out, first: true };
            f.num("src", u64::from(be16(v, 0)), u64::from(be16(m, 0)), 0xffff);
            f.num("dst", u64::from(be16(v, 2)), u64::from(be16(m, 2)), 0xffff);
            out.push(')');
        }
        key::ICMP | key::ICMPV6 => {
            out.push_str(if k.kind == key::ICMP {
                "icmp("
            } else {
                "icmpv6("
            });
            let mut f = Fields { out, first: true };
            f.num("type", u64::from(get(v, 0)), u64::from(get(m, 0)), 0xff);
            f.num("code", u64::from(get(v, 1)), u64::from(get(m, 1)), 0xff);
            out.push(')');
        }
        key::ARP => {
            out.push_str("arp(");
            let mut f = Fields { out, first: true };
            f.ip4("sip", &slice(v, 0, 4), &slice(m, 0, 4));
            f.ip4("tip", &slice(v, 4, 4), &slice(m, 4, 4));
            f.num("op", u64::from(be16(v, 8)), u64::from(be16(m, 8)), 0xffff);
            f.mac("sha", &slice(v, 10, 6), &slice(m, 10, 6));
            f.mac("tha", &slice(v, 16, 6), &slice(m, 16, 6));
            out.push(')');
        }
        key::ND => {
            out.push_str("nd(");
            let mut f = Fields { out, first: true };
            f.ip6("target", &slice(v, 0, 16), &slice(m, 0, 16));
            f.mac("sll", &slice(v, 16, 6), &slice(m, 16, 6));
            f.mac("tll", &slice(v, 22, 6), &slice(m, 22, 6));
            out.push(')');
        }
        key::TCP_FLAGS => {
            out.push_str("tcp_flags(");
            tcp_flags(out, be16(v, 0) & 0x0fff);
            let mm = be16(m, 0) & 0x0fff;
            if mm != 0x0fff {
                let _ = write!(out, "/{mm:#05x}");
            }
            out.push(')');
        }
        key::CT_LABELS => {
            let _ = write!(
                out,
                "ct_label(0x{})",
                v.iter()
                    .rev()
                    .map(|x| format!("{x:02x}"))
                    .collect::<String>()
            );
        }
        other => {
            let _ = write!(out, "key{other}({}", hexbytes(v));
            if !m.is_empty() {
                let _ = write!(out, "/{}", hexbytes(m));
            }
            out.push(')');
        }
    }
}

fn fmt_hex0(v: u32) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

fn tcp_flags(out: &mut String, f: u16) {
    const NAMES: [&str; 12] = [
        "fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr", "ns", "[200]", "[400]", "[800]",
    ];
    let mut first = true;
    for (i, n) in NAMES.iter().enumerate() {
        if f & (1 << i) != 0 {
            if !first {
                out.push('|');
            }
            first = false;
            out.push_str(n);
        }
    }
    if first {
        out.push('0');
    }
}

/// Renders an action list (`drop` when empty).
pub(crate) fn render_actions(out: &mut String, actions: &[RawAttr]) {
    if actions.is_empty() {
        out.push_str("drop");
        return;
    }
    for (i, a) in actions.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let v = &a.value[..];
        match a.kind {
            action::OUTPUT => {
                let _ = write!(out, "{}", ne32(v));
            }
            action::RECIRC => {
                let _ = write!(out, "recirc({:#x})", ne32(v));
            }
            action::POP_VLAN => out.push_str("pop_vlan"),
            action::PUSH_VLAN => {
                let tci = be16(v, 2);
                let _ = write!(out, "push_vlan(vid={},pcp={})", tci & 0xfff, tci >> 13);
            }
            action::CT_CLEAR => out.push_str("ct_clear"),
            action::POP_ETH => out.push_str("pop_eth"),
            action::TRUNC => {
                let _ = write!(out, "trunc({})", ne32(v));
            }
            action::METER => {
                let _ = write!(out, "meter({})", ne32(v));
            }
            action::DROP => {
                let r = ne32(v);
                if r == 0 {
                    out.push_str("drop");
                } else {
                    let _ = write!(out, "drop({r})");
                }
            }
            other => {
                let _ = write!(out, "action{other}({})", hexbytes(v));
            }
        }
    }
}
