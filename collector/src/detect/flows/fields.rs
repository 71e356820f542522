//! Match-field names and values of user-rule conditions, as `ovs-ofctl` spells and parses them
//! (ovs-fields(7)): every accepted spelling maps to the one canonical field the flow decoder
//! produces (`dl_vlan`, `vlan_vid`, `vlan_pcp` → `vlan_tci`; `tcp_dst`/`udp_dst`/`sctp_dst` →
//! `tp_dst`; `eth_type` → `dl_type`; `icmpv6_type` → `icmp_type`; `ip_src` → `nw_src`; …), and each
//! value is parsed by the field's kind (integer with `/mask`, MAC, IPv4/IPv6 with prefix or mask,
//! `+flag-flag` for `ct_state`/`tcp_flags`, fragment keywords) into a value and mask of the
//! canonical field.

use std::net::{Ipv4Addr, Ipv6Addr};

/// How a field's values are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Decimal or `0x` hex, optionally `/mask`, of this many bits.
    Int(u32),
    /// `xx:xx:xx:xx:xx:xx`, optionally `/mask` in the same form.
    Mac,
    /// Dotted quad, optionally `/N` or `/a.b.c.d`.
    Ipv4,
    /// IPv6 address, optionally `/N` or `/address`.
    Ipv6,
    /// `+trk-est…` (names of ovs-fields(7)) or an integer with `/mask`.
    CtFlags,
    /// `+syn-ack…` or an integer with `/mask`.
    TcpFlags,
    /// `no`, `yes`, `first`, `later`, `not_later`.
    Frag,
    /// `dl_vlan`: a VLAN id 0..=4095 (a packet with that VLAN), or `0xffff` (no VLAN).
    DlVlan,
    /// `vlan_vid`: the 13-bit VID field with its "present" bit 0x1000, optionally `/mask`.
    VlanVid,
    /// `dl_vlan_pcp`/`vlan_pcp`: a priority 0..=7 (of a packet with a VLAN).
    VlanPcp,
    /// `ip_dscp`: 0..=63, the upper six bits of `nw_tos`.
    Dscp,
    /// `nw_tos`: the TOS byte's DSCP bits (the two ECN bits must be 0).
    Tos,
}

impl Kind {
    /// What a value of this kind looks like (for error messages).
    pub(crate) fn describe(self) -> String {
        match self {
            Kind::Int(bits) => {
                format!("a {bits}-bit integer, decimal or 0x hex, optionally /mask")
            }
            Kind::Mac => "a MAC address like fa:16:3e:00:00:01, optionally /mask".into(),
            Kind::Ipv4 => "an IPv4 address, optionally /prefix or /netmask".into(),
            Kind::Ipv6 => "an IPv6 address, optionally /prefix or /mask".into(),
            Kind::CtFlags => "flags like +trk-est (new, est, rel, rpl, inv, trk, snat, dnat) or an integer/mask".into(),
            Kind::TcpFlags => "flags like +syn-ack (fin, syn, rst, psh, ack, urg, ece, cwr, ns) or an integer/mask".into(),
            Kind::Frag => "no, yes, first, later or not_later".into(),
            Kind::DlVlan => "a VLAN id 0..4095, or 0xffff for no VLAN".into(),
            Kind::VlanVid => "a 13-bit VID with the present bit 0x1000 (e.g. 0x1064), optionally /mask".into(),
            Kind::VlanPcp => "a priority 0..7".into(),
            Kind::Dscp => "a DSCP value 0..63".into(),
            Kind::Tos => "a TOS byte with the low two bits 0 (DSCP << 2)".into(),
        }
    }
}

/// One field: its accepted spellings, the canonical name the flow decoder gives it, its kind.
struct Spec {
    names: &'static [&'static str],
    canon: &'static str,
    kind: Kind,
}

const fn s(names: &'static [&'static str], canon: &'static str, kind: Kind) -> Spec {
    Spec { names, canon, kind }
}

const REGS: [&str; 16] = [
    "reg0", "reg1", "reg2", "reg3", "reg4", "reg5", "reg6", "reg7", "reg8", "reg9", "reg10",
    "reg11", "reg12", "reg13", "reg14", "reg15",
];

/// Every field a user rule may name.
const SPECS: &[Spec] = &[
    s(&["in_port", "in_port_oxm"], "in_port", Kind::Int(32)),
    s(&["dl_src", "eth_src"], "dl_src", Kind::Mac),
    s(&["dl_dst", "eth_dst"], "dl_dst", Kind::Mac),
    s(&["dl_type", "eth_type"], "dl_type", Kind::Int(16)),
    s(&["vlan_tci"], "vlan_tci", Kind::Int(16)),
    s(&["dl_vlan"], "vlan_tci", Kind::DlVlan),
    s(&["vlan_vid"], "vlan_tci", Kind::VlanVid),
    s(&["dl_vlan_pcp", "vlan_pcp"], "vlan_tci", Kind::VlanPcp),
    s(&["nw_src", "ip_src"], "nw_src", Kind::Ipv4),
    s(&["nw_dst", "ip_dst"], "nw_dst", Kind::Ipv4),
    s(&["arp_spa"], "arp_spa", Kind::Ipv4),
    s(&["arp_tpa"], "arp_tpa", Kind::Ipv4),
    s(&["arp_sha"], "arp_sha", Kind::Mac),
    s(&["arp_tha"], "arp_tha", Kind::Mac),
    s(&["arp_op"], "arp_op", Kind::Int(16)),
    s(&["ipv6_src"], "ipv6_src", Kind::Ipv6),
    s(&["ipv6_dst"], "ipv6_dst", Kind::Ipv6),
    s(&["ipv6_label"], "ipv6_label", Kind::Int(20)),
    s(&["nd_target"], "nd_target", Kind::Ipv6),
    s(&["nd_sll"], "nd_sll", Kind::Mac),
    s(&["nd_tll"], "nd_tll", Kind::Mac),
    s(&["nw_proto", "ip_proto"], "nw_proto", Kind::Int(8)),
    s(&["nw_tos"], "nw_tos", Kind::Tos),
    s(&["ip_dscp"], "nw_tos", Kind::Dscp),
    s(&["nw_ecn", "ip_ecn"], "nw_ecn", Kind::Int(2)),
    s(&["nw_ttl"], "nw_ttl", Kind::Int(8)),
    s(&["nw_frag", "ip_frag"], "nw_frag", Kind::Frag),
    s(
        &["tp_src", "tcp_src", "udp_src", "sctp_src"],
        "tp_src",
        Kind::Int(16),
    ),
    s(
        &["tp_dst", "tcp_dst", "udp_dst", "sctp_dst"],
        "tp_dst",
        Kind::Int(16),
    ),
    s(&["icmp_type", "icmpv6_type"], "icmp_type", Kind::Int(8)),
    s(&["icmp_code", "icmpv6_code"], "icmp_code", Kind::Int(8)),
    s(&["tcp_flags"], "tcp_flags", Kind::TcpFlags),
    s(&["mpls_label"], "mpls_label", Kind::Int(20)),
    s(&["mpls_tc"], "mpls_tc", Kind::Int(3)),
    s(&["mpls_bos"], "mpls_bos", Kind::Int(1)),
    s(&["tun_id", "tunnel_id"], "tun_id", Kind::Int(64)),
    s(&["tun_src"], "tun_src", Kind::Ipv4),
    s(&["tun_dst"], "tun_dst", Kind::Ipv4),
    s(&["tun_ipv6_src"], "tun_ipv6_src", Kind::Ipv6),
    s(&["tun_ipv6_dst"], "tun_ipv6_dst", Kind::Ipv6),
    s(&["metadata"], "metadata", Kind::Int(64)),
    s(&["pkt_mark"], "pkt_mark", Kind::Int(32)),
    s(&["conj_id"], "conj_id", Kind::Int(32)),
    s(&["ct_state"], "ct_state", Kind::CtFlags),
    s(&["ct_zone"], "ct_zone", Kind::Int(16)),
    s(&["ct_mark"], "ct_mark", Kind::Int(32)),
    s(&["ct_label"], "ct_label", Kind::Int(128)),
    s(&["ct_nw_proto"], "ct_nw_proto", Kind::Int(8)),
    s(&["ct_nw_src"], "ct_nw_src", Kind::Ipv4),
    s(&["ct_nw_dst"], "ct_nw_dst", Kind::Ipv4),
    s(&["ct_ipv6_src"], "ct_ipv6_src", Kind::Ipv6),
    s(&["ct_ipv6_dst"], "ct_ipv6_dst", Kind::Ipv6),
    s(&["ct_tp_src"], "ct_tp_src", Kind::Int(16)),
    s(&["ct_tp_dst"], "ct_tp_dst", Kind::Int(16)),
    s(&["actset_output"], "actset_output", Kind::Int(32)),
    s(&["recirc_id"], "recirc_id", Kind::Int(32)),
    s(&["dp_hash"], "dp_hash", Kind::Int(32)),
    s(&REGS, "reg", Kind::Int(32)),
];

/// A field a condition names: the canonical field of the flow decoder and how values are parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Field {
    /// The name flows carry (`vlan_tci` for `dl_vlan`, …).
    pub(crate) canon: &'static str,
    /// How the condition's values are written.
    pub(crate) kind: Kind,
}

/// The field `name` stands for (case-sensitive, as `ovs-ofctl` takes it); `None` when unknown.
pub(crate) fn lookup(name: &str) -> Option<Field> {
    SPECS.iter().find_map(|sp| {
        let n = sp.names.iter().find(|n| **n == name)?;
        Some(Field {
            // Registers are one spec; each is its own field.
            canon: if sp.canon == "reg" { n } else { sp.canon },
            kind: sp.kind,
        })
    })
}

/// Every accepted spelling, grouped by canonical field (`dl_vlan/vlan_vid/dl_vlan_pcp/vlan_pcp/vlan_tci`).
pub(crate) fn accepted() -> String {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for sp in SPECS {
        let canon = if sp.canon == "reg" {
            "reg0..reg15"
        } else {
            sp.canon
        };
        let names: Vec<&str> = if sp.canon == "reg" {
            vec!["reg0..reg15"]
        } else {
            sp.names.to_vec()
        };
        match groups.iter_mut().find(|g| g.0 == canon) {
            Some(g) => g.1.extend(names),
            None => groups.push((canon, names)),
        }
    }
    groups
        .iter()
        .map(|(_, n)| n.join("/"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Spellings of the canonical field `canon` (for error messages).
pub(crate) fn spellings(canon: &str) -> String {
    let names: Vec<&str> = SPECS
        .iter()
        .filter(|sp| sp.canon == canon)
        .flat_map(|sp| sp.names.iter().copied())
        .collect();
    if names.is_empty() {
        canon.to_string()
    } else {
        names.join("/")
    }
}

fn all_ones(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// An integer as `ovs-ofctl` takes it: decimal or `0x` hex.
fn int(s: &str) -> Option<u128> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) if !h.is_empty() => u128::from_str_radix(h, 16).ok(),
        Some(_) => None,
        None => s.parse().ok(),
    }
}

/// `value[/mask]` integers of `bits` bits.
fn int_masked(s: &str, bits: u32) -> Option<(u128, u128)> {
    let full = all_ones(bits);
    let (v, m) = match s.split_once('/') {
        Some((v, m)) => (int(v)?, int(m)?),
        None => (int(s)?, full),
    };
    (v & !full == 0 && m & !full == 0).then_some((v & m, m))
}

fn mac(s: &str) -> Option<u128> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    parts.iter().try_fold(0u128, |acc, p| {
        (p.len() <= 2)
            .then(|| u8::from_str_radix(p, 16).ok())
            .flatten()
            .map(|b| acc << 8 | u128::from(b))
    })
}

/// A prefix length of `bits`-bit addresses as a mask.
fn prefix(n: &str, bits: u32) -> Option<u128> {
    let n: u32 = n.trim().parse().ok()?;
    (n <= bits).then(|| all_ones(bits) & !all_ones(bits - n))
}

/// `addr[/mask]` with `parse` for both parts (or a prefix length for the mask).
fn addr_masked(s: &str, bits: u32, parse: impl Fn(&str) -> Option<u128>) -> Option<(u128, u128)> {
    let (v, m) = match s.split_once('/') {
        Some((v, m)) => (
            parse(v)?,
            if m.trim().chars().all(|c| c.is_ascii_digit()) {
                prefix(m, bits)?
            } else {
                parse(m)?
            },
        ),
        None => (parse(s)?, all_ones(bits)),
    };
    Some((v & m, m))
}

const CT_FLAGS: &[(&str, u128)] = &[
    ("new", 0x01),
    ("est", 0x02),
    ("rel", 0x04),
    ("rpl", 0x08),
    ("inv", 0x10),
    ("trk", 0x20),
    ("snat", 0x40),
    ("dnat", 0x80),
];

const TCP_FLAGS: &[(&str, u128)] = &[
    ("fin", 0x001),
    ("syn", 0x002),
    ("rst", 0x004),
    ("psh", 0x008),
    ("ack", 0x010),
    ("urg", 0x020),
    ("ece", 0x040),
    ("cwr", 0x080),
    ("ns", 0x100),
];

/// `+name-name…` over `names`, or an integer with `/mask`.
fn flags(s: &str, names: &[(&str, u128)], bits: u32) -> Option<(u128, u128)> {
    let s = s.trim();
    if !s.starts_with(['+', '-']) {
        return int_masked(s, bits);
    }
    let (mut v, mut m) = (0u128, 0u128);
    let mut rest = s;
    while let Some(sign) = rest.chars().next() {
        let body = rest.get(1..)?;
        let end = body.find(['+', '-']).unwrap_or(body.len());
        let name = body.get(..end)?;
        let bit = names.iter().find(|(n, _)| *n == name)?.1;
        if sign == '+' {
            v |= bit;
        } else if sign != '-' {
            return None;
        }
        m |= bit;
        rest = body.get(end..)?;
    }
    Some((v, m))
}

/// Parses a condition value of `kind` into the canonical field's value and mask.
pub(crate) fn parse_value(kind: Kind, s: &str) -> Option<(u128, u128)> {
    let s = s.trim();
    match kind {
        Kind::Int(bits) => int_masked(s, bits),
        Kind::Mac => addr_masked(s, 48, mac),
        Kind::Ipv4 => addr_masked(s, 32, |a| {
            a.trim()
                .parse::<Ipv4Addr>()
                .ok()
                .map(|ip| u128::from(ip.to_bits()))
        }),
        Kind::Ipv6 => addr_masked(s, 128, |a| {
            a.trim().parse::<Ipv6Addr>().ok().map(Ipv6Addr::to_bits)
        }),
        Kind::CtFlags => flags(s, CT_FLAGS, 32),
        Kind::TcpFlags => flags(s, TCP_FLAGS, 12),
        Kind::Frag => match s {
            "no" => Some((0, 3)),
            "yes" => Some((1, 1)),
            "first" => Some((1, 3)),
            "later" => Some((3, 3)),
            "not_later" => Some((0, 2)),
            _ => None,
        },
        Kind::DlVlan => match int(s)? {
            0xffff => Some((0, 0xffff)),
            v @ 0..=0xfff => Some((0x1000 | v, 0x1fff)),
            _ => None,
        },
        Kind::VlanVid => int_masked(s, 13),
        Kind::VlanPcp => match int(s)? {
            p @ 0..=7 => Some((0x1000 | p << 13, 0xf000)),
            _ => None,
        },
        Kind::Dscp => match int(s)? {
            d @ 0..=63 => Some((d << 2, 0xfc)),
            _ => None,
        },
        Kind::Tos => match int(s)? {
            t @ 0..=0xff if t & 3 == 0 => Some((t, 0xfc)),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_normalise_to_the_decoders_fields() {
        for (alias, canon) in [
            ("dl_vlan", "vlan_tci"),
            ("vlan_vid", "vlan_tci"),
            ("vlan_pcp", "vlan_tci"),
            ("tcp_dst", "tp_dst"),
            ("udp_dst", "tp_dst"),
            ("sctp_dst", "tp_dst"),
            ("eth_type", "dl_type"),
            ("icmpv6_type", "icmp_type"),
            ("ip_src", "nw_src"),
            ("eth_src", "dl_src"),
            ("ip_dscp", "nw_tos"),
            ("tunnel_id", "tun_id"),
            ("reg13", "reg13"),
        ] {
            assert_eq!(lookup(alias).map(|f| f.canon), Some(canon), "{alias}");
        }
        assert_eq!(lookup("nw_dstt"), None);
        assert_eq!(lookup("reg16"), None);
        assert!(
            accepted().contains("vlan_tci/dl_vlan/vlan_vid/dl_vlan_pcp/vlan_pcp"),
            "{}",
            accepted()
        );
        assert_eq!(spellings("tp_dst"), "tp_dst/tcp_dst/udp_dst/sctp_dst");
    }

    #[test]
    fn values_parse_as_ovs_ofctl_parses_them() {
        let p = parse_value;
        assert_eq!(p(Kind::Int(16), "0x800"), Some((0x800, 0xffff)));
        assert_eq!(p(Kind::Int(32), "0x1/0xff"), Some((1, 0xff)));
        assert_eq!(p(Kind::Int(32), "12"), Some((12, 0xffff_ffff)));
        assert_eq!(p(Kind::Int(8), "256"), None);
        assert_eq!(p(Kind::Int(8), "0x"), None);
        assert_eq!(
            p(Kind::Ipv4, "10.0.0.0/8"),
            Some((0x0a00_0000, 0xff00_0000))
        );
        assert_eq!(
            p(Kind::Ipv4, "10.1.2.3/255.255.0.0"),
            Some((0x0a01_0000, 0xffff_0000))
        );
        assert_eq!(p(Kind::Ipv4, "10.0.0.1/33"), None);
        assert_eq!(p(Kind::Ipv4, "fa:16:3e:00:00:01"), None);
        assert_eq!(
            p(Kind::Mac, "fa:16:3e:00:00:01"),
            Some((0xfa16_3e00_0001, 0xffff_ffff_ffff))
        );
        assert_eq!(
            p(Kind::Mac, "01:00:00:00:00:00/01:00:00:00:00:00"),
            Some((0x0100_0000_0000, 0x0100_0000_0000))
        );
        assert_eq!(p(Kind::Mac, "10.0.0.1"), None);
        let (v, m) = p(Kind::Ipv6, "fe80::/64").unwrap();
        assert_eq!(v >> 112, 0xfe80);
        assert_eq!(m, u128::MAX << 64);
        assert_eq!(p(Kind::Ipv6, "10.0.0.1"), None);
        assert_eq!(p(Kind::CtFlags, "+trk-est"), Some((0x20, 0x22)));
        assert_eq!(p(Kind::CtFlags, "-new+inv"), Some((0x10, 0x11)));
        assert_eq!(p(Kind::CtFlags, "0x21/0x21"), Some((0x21, 0x21)));
        assert_eq!(p(Kind::CtFlags, "+bogus"), None);
        assert_eq!(p(Kind::TcpFlags, "+syn-ack"), Some((0x2, 0x12)));
        assert_eq!(p(Kind::Frag, "later"), Some((3, 3)));
        assert_eq!(p(Kind::Frag, "maybe"), None);
        assert_eq!(p(Kind::DlVlan, "100"), Some((0x1064, 0x1fff)));
        assert_eq!(p(Kind::DlVlan, "0xffff"), Some((0, 0xffff)));
        assert_eq!(p(Kind::DlVlan, "4096"), None);
        assert_eq!(p(Kind::VlanVid, "0x1064"), Some((0x1064, 0x1fff)));
        assert_eq!(p(Kind::VlanPcp, "5"), Some((0xb000, 0xf000)));
        assert_eq!(p(Kind::Dscp, "46"), Some((184, 0xfc)));
        assert_eq!(p(Kind::Tos, "3"), None);
    }
}
