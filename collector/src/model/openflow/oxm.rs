//! OXM / NXM match fields: the field table, match decoding into a normalized form, and the
//! `ovs-ofctl` rendering of a match.
//!
//! OVS encodes OF1.3 matches with OXM basic-class headers (0x8000) where OpenFlow defines the field,
//! Nicira NXM_0/NXM_1 headers (0x0000/0x0001) for its own fields (registers, tunnel, conntrack,
//! `conj_id`, `pkt_mark`, …), the packet-register class 0x8001 for `xreg`, and ONF experimenter
//! headers for `tcp_flags`/`actset_output`. All of them are normalized here into [`Key`]s that
//! mirror OVS's internal flow layout (e.g. `vlan_vid`+`vlan_pcp` become one `vlan_tci`, `xreg1`
//! becomes `reg2`+`reg3`), because `ovs-ofctl` renders from that layout.

use super::bytes::{DecodeError, DecodeResult, NX_EXPERIMENTER, ONF_EXPERIMENTER, Rd, pad8};
use super::flow::{FieldMatch, Matches, intern_field, width_mask};
use std::fmt::Write as _;

/// How a field's value is printed by `ovs-ofctl` (OVS's `mf_string`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fmt {
    /// `0x…` hex (zero prints as `0`).
    Hex,
    /// Unsigned decimal.
    Dec,
    /// Ethernet address.
    Eth,
    /// IPv4 address.
    Ipv4,
    /// IPv6 address.
    Ipv6,
    /// OpenFlow port (16-bit OVS numbering or 32-bit OF1.1+ numbering, by width).
    Port,
    /// `ip_frag` keywords.
    Frag,
    /// TCP flag names.
    TcpFlags,
    /// Conntrack state flag names.
    CtState,
    /// Tunnel flag names (`+oam`).
    TnlFlags,
    /// `(ns,type)` packet type.
    PacketType,
}

/// Normalized match keys, following OVS's flow layout (what `ovs-ofctl` renders from).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Key {
    /// Ingress port, OF1.3 (32-bit) numbering.
    InPort,
    /// 802.1Q TCI (with the CFI/present bit 0x1000).
    VlanTci,
    /// Ethernet source.
    DlSrc,
    /// Ethernet destination.
    DlDst,
    /// Ethertype.
    DlType,
    /// IPv4 source or ARP SPA.
    NwSrc,
    /// IPv4 destination or ARP TPA.
    NwDst,
    /// IPv6 source.
    Ipv6Src,
    /// IPv6 destination.
    Ipv6Dst,
    /// IPv6 flow label.
    Ipv6Label,
    /// IP protocol or ARP opcode (low 8 bits).
    NwProto,
    /// IP TOS DSCP bits (value in the TOS byte position, mask 0xfc).
    NwTos,
    /// IP ECN bits.
    NwEcn,
    /// IP TTL.
    NwTtl,
    /// IP fragment bits (1 = any fragment, 2 = later fragment).
    NwFrag,
    /// ARP SHA or ND SLL.
    ArpSha,
    /// ARP THA or ND TLL.
    ArpTha,
    /// L4 source port or ICMP type.
    TpSrc,
    /// L4 destination port or ICMP code.
    TpDst,
    /// ND target.
    NdTarget,
    /// TCP flags.
    TcpFlags,
    /// MPLS label.
    MplsLabel,
    /// MPLS traffic class.
    MplsTc,
    /// MPLS bottom of stack.
    MplsBos,
    /// 32-bit register N.
    Reg(u8),
    /// Tunnel id.
    TunId,
    /// Tunnel IPv4 source.
    TunSrc,
    /// Tunnel IPv4 destination.
    TunDst,
    /// Tunnel IPv6 source.
    TunIpv6Src,
    /// Tunnel IPv6 destination.
    TunIpv6Dst,
    /// OpenFlow metadata.
    Metadata,
    /// Packet mark.
    PktMark,
    /// Conjunction id.
    ConjId,
    /// Conntrack state.
    CtState,
    /// Conntrack zone.
    CtZone,
    /// Conntrack mark.
    CtMark,
    /// Conntrack label.
    CtLabel,
    /// Conntrack original-direction IP protocol.
    CtNwProto,
    /// Conntrack original IPv4 source.
    CtNwSrc,
    /// Conntrack original IPv4 destination.
    CtNwDst,
    /// Conntrack original IPv6 source.
    CtIpv6Src,
    /// Conntrack original IPv6 destination.
    CtIpv6Dst,
    /// Conntrack original L4 source port.
    CtTpSrc,
    /// Conntrack original L4 destination port.
    CtTpDst,
    /// Action-set output port.
    ActsetOutput,
    /// Recirculation id.
    RecircId,
    /// Datapath hash.
    DpHash,
    /// Packet type (`ns << 16 | type`).
    PacketType,
    /// Tunnel flags (bit 0: OAM).
    TunFlags,
    /// VXLAN group-based policy id.
    TunGbpId,
    /// VXLAN group-based policy flags.
    TunGbpFlags,
    /// ERSPAN version.
    TunErspanVer,
    /// ERSPAN index (version 1).
    TunErspanIdx,
    /// ERSPAN direction (version 2).
    TunErspanDir,
    /// ERSPAN hardware id (version 2).
    TunErspanHwid,
    /// GTP-U flags.
    TunGtpuFlags,
    /// GTP-U message type.
    TunGtpuMsgtype,
    /// MPLS TTL.
    MplsTtl,
    /// ICMPv6 ND reserved field.
    NdReserved,
    /// ICMPv6 ND option type.
    NdOptionsType,
    /// NSH flags.
    NshFlags,
    /// NSH TTL.
    NshTtl,
    /// NSH metadata type.
    NshMdtype,
    /// NSH next protocol.
    NshNp,
    /// NSH service path id.
    NshSpi,
    /// NSH service index.
    NshSi,
    /// NSH context header N (1–4).
    NshC(u8),
}

/// How a wire field maps onto [`Key`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Norm {
    /// One key, same width.
    Simple(Key),
    /// NXM 16-bit in_port.
    InPort16,
    /// OXM 32-bit in_port.
    InPort32,
    /// OXM VLAN_VID (13 bits incl. OFPVID_PRESENT).
    VlanVid,
    /// OXM VLAN_PCP.
    VlanPcp,
    /// OXM IP_DSCP (6 bits, shifted into the TOS byte).
    Dscp,
    /// NXM IP_TOS (TOS byte, DSCP bits only).
    Tos,
    /// 8-bit ICMP type/code stored in a 16-bit transport key.
    Small(Key),
    /// 16-bit ARP opcode stored in `NwProto`.
    ArpOp,
    /// 64-bit `xregN` = `reg(2N)` ‖ `reg(2N+1)`.
    Xreg(u8),
    /// 128-bit `xxregN` = `reg(4N)` … `reg(4N+3)`.
    Xxreg(u8),
}

/// One known wire field.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FieldInfo {
    /// OXM/NXM class.
    pub(crate) class: u16,
    /// Field number within the class.
    pub(crate) field: u8,
    /// Experimenter id for class 0xffff, else 0.
    pub(crate) experimenter: u32,
    /// Value width in bytes.
    pub(crate) bytes: u8,
    /// Significant bits (what `[]` spans in a subfield).
    pub(crate) n_bits: u16,
    /// Name `ovs-ofctl` prints for subfields (`NXM_NX_REG0`, `OXM_OF_METADATA`, …).
    pub(crate) nxm_name: &'static str,
    /// OVS's field name (`reg0`, `eth_src`, `vlan_vid`, …), used by `set_field` and `learn`.
    pub(crate) name: &'static str,
    /// Value format.
    pub(crate) fmt: Fmt,
    /// Normalization into match keys.
    pub(crate) norm: Norm,
    /// The key mask of an exact (unmasked) match on a [`Norm::Simple`] field (see
    /// [`Match::add`]), worked out once here rather than for every decoded field.
    exact_mask: u128,
}

/// [`FieldInfo::exact_mask`] of a field normalized as `norm`.
const fn exact_mask(norm: Norm) -> u128 {
    match norm {
        Norm::Simple(k) => key_full_mask(k) & ones(key_bytes(k)),
        _ => 0,
    }
}

#[expect(clippy::too_many_arguments, reason = "a table row constructor")]
const fn f(
    class: u16,
    field: u8,
    bytes: u8,
    n_bits: u16,
    nxm_name: &'static str,
    name: &'static str,
    fmt: Fmt,
    norm: Norm,
) -> FieldInfo {
    FieldInfo {
        class,
        field,
        experimenter: 0,
        bytes,
        n_bits,
        nxm_name,
        name,
        fmt,
        norm,
        exact_mask: exact_mask(norm),
    }
}

/// Experimenter id of OVS's NSH OXM class (`NXOXM_NSH_*`).
const NSH_EXPERIMENTER: u32 = 0x005a_d650;

/// An experimenter OXM: ONF (`ONFOXM_ET_*`), Nicira (`NXOXM_ET_*`) or NSH (`NXOXM_NSH_*`).
#[expect(clippy::too_many_arguments, reason = "a table row constructor")]
const fn exp(
    experimenter: u32,
    field: u8,
    bytes: u8,
    n_bits: u16,
    nxm_name: &'static str,
    name: &'static str,
    fmt: Fmt,
    norm: Norm,
) -> FieldInfo {
    FieldInfo {
        class: 0xffff,
        field,
        experimenter,
        bytes,
        n_bits,
        nxm_name,
        name,
        fmt,
        norm,
        exact_mask: exact_mask(norm),
    }
}

use Fmt::{CtState as FCt, Dec, Eth, Frag, Hex, Ipv4, Ipv6, Port, TcpFlags as FTcp};
use Norm::Simple as S;

macro_rules! regs {
    ($($i:literal),*) => {
        [$(f(1, $i, 4, 32, concat!("NXM_NX_REG", $i), concat!("reg", $i), Hex, S(Key::Reg($i)))),*]
    };
}

const REGS: [FieldInfo; 16] = regs!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

#[rustfmt::skip]
const XREGS: [FieldInfo; 8] = [
    f(0x8001, 0, 8, 64, "OXM_OF_PKT_REG0", "xreg0", Hex, Norm::Xreg(0)),
    f(0x8001, 1, 8, 64, "OXM_OF_PKT_REG1", "xreg1", Hex, Norm::Xreg(1)),
    f(0x8001, 2, 8, 64, "OXM_OF_PKT_REG2", "xreg2", Hex, Norm::Xreg(2)),
    f(0x8001, 3, 8, 64, "OXM_OF_PKT_REG3", "xreg3", Hex, Norm::Xreg(3)),
    f(0x8001, 4, 8, 64, "OXM_OF_PKT_REG4", "xreg4", Hex, Norm::Xreg(4)),
    f(0x8001, 5, 8, 64, "OXM_OF_PKT_REG5", "xreg5", Hex, Norm::Xreg(5)),
    f(0x8001, 6, 8, 64, "OXM_OF_PKT_REG6", "xreg6", Hex, Norm::Xreg(6)),
    f(0x8001, 7, 8, 64, "OXM_OF_PKT_REG7", "xreg7", Hex, Norm::Xreg(7)),
];

#[rustfmt::skip]
const FIELDS: &[FieldInfo] = &[
    // NXM_OF (class 0x0000)
    f(0, 0, 2, 16, "NXM_OF_IN_PORT", "in_port", Port, Norm::InPort16),
    f(0, 1, 6, 48, "NXM_OF_ETH_DST", "eth_dst", Eth, S(Key::DlDst)),
    f(0, 2, 6, 48, "NXM_OF_ETH_SRC", "eth_src", Eth, S(Key::DlSrc)),
    f(0, 3, 2, 16, "NXM_OF_ETH_TYPE", "eth_type", Hex, S(Key::DlType)),
    f(0, 4, 2, 16, "NXM_OF_VLAN_TCI", "vlan_tci", Hex, S(Key::VlanTci)),
    f(0, 5, 1, 8, "NXM_OF_IP_TOS", "nw_tos", Dec, Norm::Tos),
    f(0, 6, 1, 8, "NXM_OF_IP_PROTO", "nw_proto", Dec, S(Key::NwProto)),
    f(0, 7, 4, 32, "NXM_OF_IP_SRC", "ip_src", Ipv4, S(Key::NwSrc)),
    f(0, 8, 4, 32, "NXM_OF_IP_DST", "ip_dst", Ipv4, S(Key::NwDst)),
    f(0, 9, 2, 16, "NXM_OF_TCP_SRC", "tcp_src", Dec, S(Key::TpSrc)),
    f(0, 10, 2, 16, "NXM_OF_TCP_DST", "tcp_dst", Dec, S(Key::TpDst)),
    f(0, 11, 2, 16, "NXM_OF_UDP_SRC", "udp_src", Dec, S(Key::TpSrc)),
    f(0, 12, 2, 16, "NXM_OF_UDP_DST", "udp_dst", Dec, S(Key::TpDst)),
    f(0, 13, 1, 8, "NXM_OF_ICMP_TYPE", "icmp_type", Dec, Norm::Small(Key::TpSrc)),
    f(0, 14, 1, 8, "NXM_OF_ICMP_CODE", "icmp_code", Dec, Norm::Small(Key::TpDst)),
    f(0, 15, 2, 16, "NXM_OF_ARP_OP", "arp_op", Dec, Norm::ArpOp),
    f(0, 16, 4, 32, "NXM_OF_ARP_SPA", "arp_spa", Ipv4, S(Key::NwSrc)),
    f(0, 17, 4, 32, "NXM_OF_ARP_TPA", "arp_tpa", Ipv4, S(Key::NwDst)),
    // NXM_NX (class 0x0001); registers are in REGS.
    f(1, 16, 8, 64, "NXM_NX_TUN_ID", "tun_id", Hex, S(Key::TunId)),
    f(1, 17, 6, 48, "NXM_NX_ARP_SHA", "arp_sha", Eth, S(Key::ArpSha)),
    f(1, 18, 6, 48, "NXM_NX_ARP_THA", "arp_tha", Eth, S(Key::ArpTha)),
    f(1, 19, 16, 128, "NXM_NX_IPV6_SRC", "ipv6_src", Ipv6, S(Key::Ipv6Src)),
    f(1, 20, 16, 128, "NXM_NX_IPV6_DST", "ipv6_dst", Ipv6, S(Key::Ipv6Dst)),
    f(1, 21, 1, 8, "NXM_NX_ICMPV6_TYPE", "icmpv6_type", Dec, Norm::Small(Key::TpSrc)),
    f(1, 22, 1, 8, "NXM_NX_ICMPV6_CODE", "icmpv6_code", Dec, Norm::Small(Key::TpDst)),
    f(1, 23, 16, 128, "NXM_NX_ND_TARGET", "nd_target", Ipv6, S(Key::NdTarget)),
    f(1, 24, 6, 48, "NXM_NX_ND_SLL", "nd_sll", Eth, S(Key::ArpSha)),
    f(1, 25, 6, 48, "NXM_NX_ND_TLL", "nd_tll", Eth, S(Key::ArpTha)),
    f(1, 26, 1, 2, "NXM_NX_IP_FRAG", "ip_frag", Frag, S(Key::NwFrag)),
    f(1, 27, 4, 20, "NXM_NX_IPV6_LABEL", "ipv6_label", Hex, S(Key::Ipv6Label)),
    f(1, 28, 1, 2, "NXM_NX_IP_ECN", "nw_ecn", Dec, S(Key::NwEcn)),
    f(1, 29, 1, 8, "NXM_NX_IP_TTL", "nw_ttl", Dec, S(Key::NwTtl)),
    f(1, 31, 4, 32, "NXM_NX_TUN_IPV4_SRC", "tun_src", Ipv4, S(Key::TunSrc)),
    f(1, 32, 4, 32, "NXM_NX_TUN_IPV4_DST", "tun_dst", Ipv4, S(Key::TunDst)),
    f(1, 33, 4, 32, "NXM_NX_PKT_MARK", "pkt_mark", Hex, S(Key::PktMark)),
    f(1, 34, 2, 12, "NXM_NX_TCP_FLAGS", "tcp_flags", FTcp, S(Key::TcpFlags)),
    f(1, 35, 4, 32, "NXM_NX_DP_HASH", "dp_hash", Hex, S(Key::DpHash)),
    f(1, 36, 4, 32, "NXM_NX_RECIRC_ID", "recirc_id", Dec, S(Key::RecircId)),
    f(1, 37, 4, 32, "NXM_NX_CONJ_ID", "conj_id", Dec, S(Key::ConjId)),
    f(1, 105, 4, 32, "NXM_NX_CT_STATE", "ct_state", FCt, S(Key::CtState)),
    f(1, 106, 2, 16, "NXM_NX_CT_ZONE", "ct_zone", Hex, S(Key::CtZone)),
    f(1, 107, 4, 32, "NXM_NX_CT_MARK", "ct_mark", Hex, S(Key::CtMark)),
    f(1, 108, 16, 128, "NXM_NX_CT_LABEL", "ct_label", Hex, S(Key::CtLabel)),
    f(1, 109, 16, 128, "NXM_NX_TUN_IPV6_SRC", "tun_ipv6_src", Ipv6, S(Key::TunIpv6Src)),
    f(1, 110, 16, 128, "NXM_NX_TUN_IPV6_DST", "tun_ipv6_dst", Ipv6, S(Key::TunIpv6Dst)),
    f(1, 111, 16, 128, "NXM_NX_XXREG0", "xxreg0", Hex, Norm::Xxreg(0)),
    f(1, 112, 16, 128, "NXM_NX_XXREG1", "xxreg1", Hex, Norm::Xxreg(1)),
    f(1, 113, 16, 128, "NXM_NX_XXREG2", "xxreg2", Hex, Norm::Xxreg(2)),
    f(1, 114, 16, 128, "NXM_NX_XXREG3", "xxreg3", Hex, Norm::Xxreg(3)),
    f(1, 119, 1, 8, "NXM_NX_CT_NW_PROTO", "ct_nw_proto", Dec, S(Key::CtNwProto)),
    f(1, 120, 4, 32, "NXM_NX_CT_NW_SRC", "ct_nw_src", Ipv4, S(Key::CtNwSrc)),
    f(1, 121, 4, 32, "NXM_NX_CT_NW_DST", "ct_nw_dst", Ipv4, S(Key::CtNwDst)),
    f(1, 122, 16, 128, "NXM_NX_CT_IPV6_SRC", "ct_ipv6_src", Ipv6, S(Key::CtIpv6Src)),
    f(1, 123, 16, 128, "NXM_NX_CT_IPV6_DST", "ct_ipv6_dst", Ipv6, S(Key::CtIpv6Dst)),
    f(1, 124, 2, 16, "NXM_NX_CT_TP_SRC", "ct_tp_src", Dec, S(Key::CtTpSrc)),
    f(1, 125, 2, 16, "NXM_NX_CT_TP_DST", "ct_tp_dst", Dec, S(Key::CtTpDst)),
    f(1, 30, 1, 8, "NXM_NX_MPLS_TTL", "mpls_ttl", Dec, S(Key::MplsTtl)),
    f(1, 38, 2, 16, "NXM_NX_TUN_GBP_ID", "tun_gbp_id", Dec, S(Key::TunGbpId)),
    f(1, 39, 1, 8, "NXM_NX_TUN_GBP_FLAGS", "tun_gbp_flags", Hex, S(Key::TunGbpFlags)),
    f(1, 104, 2, 1, "NXM_NX_TUN_FLAGS", "tun_flags", Fmt::TnlFlags, S(Key::TunFlags)),
    // OXM basic (class 0x8000)
    f(0x8000, 0, 4, 32, "OXM_OF_IN_PORT", "in_port_oxm", Port, Norm::InPort32),
    f(0x8000, 2, 8, 64, "OXM_OF_METADATA", "metadata", Hex, S(Key::Metadata)),
    f(0x8000, 3, 6, 48, "NXM_OF_ETH_DST", "eth_dst", Eth, S(Key::DlDst)),
    f(0x8000, 4, 6, 48, "NXM_OF_ETH_SRC", "eth_src", Eth, S(Key::DlSrc)),
    f(0x8000, 5, 2, 16, "NXM_OF_ETH_TYPE", "eth_type", Hex, S(Key::DlType)),
    f(0x8000, 6, 2, 12, "OXM_OF_VLAN_VID", "vlan_vid", Dec, Norm::VlanVid),
    f(0x8000, 7, 1, 3, "OXM_OF_VLAN_PCP", "vlan_pcp", Dec, Norm::VlanPcp),
    f(0x8000, 8, 1, 6, "OXM_OF_IP_DSCP", "ip_dscp", Dec, Norm::Dscp),
    f(0x8000, 9, 1, 2, "NXM_NX_IP_ECN", "nw_ecn", Dec, S(Key::NwEcn)),
    f(0x8000, 10, 1, 8, "NXM_OF_IP_PROTO", "nw_proto", Dec, S(Key::NwProto)),
    f(0x8000, 11, 4, 32, "NXM_OF_IP_SRC", "ip_src", Ipv4, S(Key::NwSrc)),
    f(0x8000, 12, 4, 32, "NXM_OF_IP_DST", "ip_dst", Ipv4, S(Key::NwDst)),
    f(0x8000, 13, 2, 16, "NXM_OF_TCP_SRC", "tcp_src", Dec, S(Key::TpSrc)),
    f(0x8000, 14, 2, 16, "NXM_OF_TCP_DST", "tcp_dst", Dec, S(Key::TpDst)),
    f(0x8000, 15, 2, 16, "NXM_OF_UDP_SRC", "udp_src", Dec, S(Key::TpSrc)),
    f(0x8000, 16, 2, 16, "NXM_OF_UDP_DST", "udp_dst", Dec, S(Key::TpDst)),
    f(0x8000, 17, 2, 16, "OXM_OF_SCTP_SRC", "sctp_src", Dec, S(Key::TpSrc)),
    f(0x8000, 18, 2, 16, "OXM_OF_SCTP_DST", "sctp_dst", Dec, S(Key::TpDst)),
    f(0x8000, 19, 1, 8, "NXM_OF_ICMP_TYPE", "icmp_type", Dec, Norm::Small(Key::TpSrc)),
    f(0x8000, 20, 1, 8, "NXM_OF_ICMP_CODE", "icmp_code", Dec, Norm::Small(Key::TpDst)),
    f(0x8000, 21, 2, 16, "NXM_OF_ARP_OP", "arp_op", Dec, Norm::ArpOp),
    f(0x8000, 22, 4, 32, "NXM_OF_ARP_SPA", "arp_spa", Ipv4, S(Key::NwSrc)),
    f(0x8000, 23, 4, 32, "NXM_OF_ARP_TPA", "arp_tpa", Ipv4, S(Key::NwDst)),
    f(0x8000, 24, 6, 48, "NXM_NX_ARP_SHA", "arp_sha", Eth, S(Key::ArpSha)),
    f(0x8000, 25, 6, 48, "NXM_NX_ARP_THA", "arp_tha", Eth, S(Key::ArpTha)),
    f(0x8000, 26, 16, 128, "NXM_NX_IPV6_SRC", "ipv6_src", Ipv6, S(Key::Ipv6Src)),
    f(0x8000, 27, 16, 128, "NXM_NX_IPV6_DST", "ipv6_dst", Ipv6, S(Key::Ipv6Dst)),
    f(0x8000, 28, 4, 20, "NXM_NX_IPV6_LABEL", "ipv6_label", Hex, S(Key::Ipv6Label)),
    f(0x8000, 29, 1, 8, "NXM_NX_ICMPV6_TYPE", "icmpv6_type", Dec, Norm::Small(Key::TpSrc)),
    f(0x8000, 30, 1, 8, "NXM_NX_ICMPV6_CODE", "icmpv6_code", Dec, Norm::Small(Key::TpDst)),
    f(0x8000, 31, 16, 128, "NXM_NX_ND_TARGET", "nd_target", Ipv6, S(Key::NdTarget)),
    f(0x8000, 32, 6, 48, "NXM_NX_ND_SLL", "nd_sll", Eth, S(Key::ArpSha)),
    f(0x8000, 33, 6, 48, "NXM_NX_ND_TLL", "nd_tll", Eth, S(Key::ArpTha)),
    f(0x8000, 34, 4, 20, "OXM_OF_MPLS_LABEL", "mpls_label", Dec, S(Key::MplsLabel)),
    f(0x8000, 35, 1, 3, "OXM_OF_MPLS_TC", "mpls_tc", Dec, S(Key::MplsTc)),
    f(0x8000, 36, 1, 1, "OXM_OF_MPLS_BOS", "mpls_bos", Dec, S(Key::MplsBos)),
    f(0x8000, 38, 8, 64, "NXM_NX_TUN_ID", "tun_id", Hex, S(Key::TunId)),
    f(0x8000, 44, 4, 32, "OXM_OF_PACKET_TYPE", "packet_type", Fmt::PacketType, S(Key::PacketType)),
    // Ericsson class 0x1000 (ND reserved/options type).
    f(0x1000, 1, 4, 32, "ERICOXM_OF_ICMPV6_ND_RESERVED", "nd_reserved", Dec, S(Key::NdReserved)),
    f(0x1000, 2, 1, 8, "ERICOXM_OF_ICMPV6_ND_OPTIONS_TYPE", "nd_options_type", Dec, S(Key::NdOptionsType)),
    // Nicira experimenter OXMs (NXOXM_ET_*).
    exp(NX_EXPERIMENTER, 0, 4, 32, "NXM_NX_DP_HASH", "dp_hash", Hex, S(Key::DpHash)),
    exp(NX_EXPERIMENTER, 11, 4, 20, "NXOXM_ET_ERSPAN_IDX", "tun_erspan_idx", Hex, S(Key::TunErspanIdx)),
    exp(NX_EXPERIMENTER, 12, 1, 4, "NXOXM_ET_ERSPAN_VER", "tun_erspan_ver", Dec, S(Key::TunErspanVer)),
    exp(NX_EXPERIMENTER, 13, 1, 1, "NXOXM_ET_ERSPAN_DIR", "tun_erspan_dir", Dec, S(Key::TunErspanDir)),
    exp(NX_EXPERIMENTER, 14, 1, 6, "NXOXM_ET_ERSPAN_HWID", "tun_erspan_hwid", Hex, S(Key::TunErspanHwid)),
    exp(NX_EXPERIMENTER, 15, 1, 8, "NXOXM_ET_GTPU_FLAGS", "tun_gtpu_flags", Hex, S(Key::TunGtpuFlags)),
    exp(NX_EXPERIMENTER, 16, 1, 8, "NXOXM_ET_GTPU_MSGTYPE", "tun_gtpu_msgtype", Dec, S(Key::TunGtpuMsgtype)),
    // NSH (NXOXM_NSH_*).
    exp(NSH_EXPERIMENTER, 1, 1, 8, "NXOXM_NSH_FLAGS", "nsh_flags", Dec, S(Key::NshFlags)),
    exp(NSH_EXPERIMENTER, 2, 1, 8, "NXOXM_NSH_MDTYPE", "nsh_mdtype", Dec, S(Key::NshMdtype)),
    exp(NSH_EXPERIMENTER, 3, 1, 8, "NXOXM_NSH_NP", "nsh_np", Dec, S(Key::NshNp)),
    exp(NSH_EXPERIMENTER, 4, 4, 24, "NXOXM_NSH_SPI", "nsh_spi", Hex, S(Key::NshSpi)),
    exp(NSH_EXPERIMENTER, 5, 1, 8, "NXOXM_NSH_SI", "nsh_si", Dec, S(Key::NshSi)),
    exp(NSH_EXPERIMENTER, 6, 4, 32, "NXOXM_NSH_C1", "nsh_c1", Hex, S(Key::NshC(1))),
    exp(NSH_EXPERIMENTER, 7, 4, 32, "NXOXM_NSH_C2", "nsh_c2", Hex, S(Key::NshC(2))),
    exp(NSH_EXPERIMENTER, 8, 4, 32, "NXOXM_NSH_C3", "nsh_c3", Hex, S(Key::NshC(3))),
    exp(NSH_EXPERIMENTER, 9, 4, 32, "NXOXM_NSH_C4", "nsh_c4", Hex, S(Key::NshC(4))),
    exp(NSH_EXPERIMENTER, 10, 1, 8, "NXOXM_NSH_TTL", "nsh_ttl", Dec, S(Key::NshTtl)),
    // ONF experimenter OXMs that OVS uses on OF1.3.
    exp(ONF_EXPERIMENTER, 42, 2, 12, "ONFOXM_ET_TCP_FLAGS", "tcp_flags", FTcp, S(Key::TcpFlags)),
    exp(ONF_EXPERIMENTER, 43, 4, 32, "ONFOXM_ET_ACTSET_OUTPUT", "actset_output", Port, S(Key::ActsetOutput)),
];

/// Looks up a wire field by class, field number and experimenter id.
pub(crate) fn field_info(class: u16, field: u8, experimenter: u32) -> Option<&'static FieldInfo> {
    static INDEX: std::sync::OnceLock<[Option<&'static FieldInfo>; 384]> =
        std::sync::OnceLock::new();
    let slot = |class: u16, field: u8| -> Option<usize> {
        let base = match class {
            0 => 0,
            1 => 128,
            0x8000 => 256,
            _ => return None,
        };
        Some(base + (field as usize & 0x7f))
    };
    match class {
        1 if field < 16 => REGS.get(field as usize),
        0x8001 => XREGS.get(field as usize),
        0xffff | 0x1000 => FIELDS
            .iter()
            .find(|i| i.class == class && i.field == field && i.experimenter == experimenter),
        _ => {
            let idx = INDEX.get_or_init(|| {
                let mut t = [None; 384];
                for i in FIELDS {
                    if let Some(sl) = slot(i.class, i.field)
                        && let Some(e) = t.get_mut(sl)
                    {
                        *e = Some(i);
                    }
                }
                t
            });
            slot(class, field).and_then(|sl| idx.get(sl).copied().flatten())
        }
    }
}

/// A parsed OXM/NXM header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OxmHeader {
    /// Class.
    pub(crate) class: u16,
    /// Field number.
    pub(crate) field: u8,
    /// Whether a mask follows the value.
    pub(crate) has_mask: bool,
    /// Payload length (excluding the 4-byte header, including the experimenter id).
    pub(crate) length: u8,
    /// Experimenter id for class 0xffff.
    pub(crate) experimenter: u32,
}

impl OxmHeader {
    /// Reads a header (4 bytes, or 8 for experimenter class).
    pub(crate) fn read(r: &mut Rd<'_>) -> DecodeResult<OxmHeader> {
        let h = r.u32()?;
        let class = (h >> 16) as u16;
        let experimenter = if class == 0xffff { r.u32()? } else { 0 };
        Ok(OxmHeader {
            class,
            field: ((h >> 9) & 0x7f) as u8,
            has_mask: h & 0x100 != 0,
            length: (h & 0xff) as u8,
            experimenter,
        })
    }

    /// Payload bytes after the experimenter id.
    pub(crate) fn payload_len(&self) -> usize {
        let exp = if self.class == 0xffff { 4 } else { 0 };
        (self.length as usize).saturating_sub(exp)
    }

    /// The known field, if any.
    pub(crate) fn info(&self) -> Option<&'static FieldInfo> {
        field_info(self.class, self.field, self.experimenter)
    }

    /// Name for subfield rendering: the known NXM/OXM name or a raw form.
    pub(crate) fn subfield_name(&self, out: &mut String) {
        if let Some(n) = tun_metadata_index(self.class, self.field) {
            let _ = write!(out, "NXM_NX_TUN_METADATA{n}");
            return;
        }
        match self.info() {
            Some(i) => out.push_str(i.nxm_name),
            None if self.class == 0xffff => {
                let _ = write!(out, "experimenter_{:08x}_{}", self.experimenter, self.field);
            }
            None => {
                let _ = write!(out, "oxm_{:04x}_{}", self.class, self.field);
            }
        }
    }

    /// Bits of the field (for `[]` in subfields); unknown fields use the payload width.
    pub(crate) fn n_bits(&self) -> u16 {
        if tun_metadata_index(self.class, self.field).is_some() {
            // OVS's tun_metadataN are 124 bytes wide whatever the TLV map says.
            return TUN_METADATA_BITS;
        }
        match self.info() {
            Some(i) => i.n_bits,
            None => {
                let div = if self.has_mask { 2 } else { 1 };
                (self.payload_len() / div * 8) as u16
            }
        }
    }
}

/// Width OVS gives every `tun_metadataN` field (124 bytes).
const TUN_METADATA_BITS: u16 = 992;

/// `N` of `tun_metadataN` (`NXM_NX_TUN_METADATA0`–`63`, NXM_NX fields 40–103). These fields
/// are as wide as the switch's TLV map makes them (up to 124 bytes), so a match keeps them raw
/// in [`Match::unknown`] under their name.
pub(crate) fn tun_metadata_index(class: u16, field: u8) -> Option<u8> {
    (class == 1 && (40..=103).contains(&field)).then(|| field - 40)
}

/// One normalized match entry: value and mask right-aligned in a u128.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Entry {
    /// Which field.
    pub(crate) key: Key,
    /// Value (already masked).
    pub(crate) value: u128,
    /// Mask (all ones of the key's width for an exact match).
    pub(crate) mask: u128,
}

/// A field kept raw: one this decoder does not know, or a variable-width `tun_metadataN`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct UnknownField {
    /// Class.
    pub(crate) class: u16,
    /// Field number.
    pub(crate) field: u8,
    /// Experimenter id (class 0xffff).
    pub(crate) experimenter: u32,
    /// Value bytes.
    pub(crate) value: Vec<u8>,
    /// Mask bytes when present.
    pub(crate) mask: Option<Vec<u8>>,
}

/// A decoded match, normalized to OVS's flow layout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Match {
    /// Known fields, sorted by key.
    pub(crate) entries: Vec<Entry>,
    /// Unknown fields, in wire order.
    pub(crate) unknown: Vec<UnknownField>,
}

/// Width in bytes of a key's value.
pub(crate) const fn key_bytes(key: Key) -> usize {
    use Key::*;
    match key {
        InPort | NwSrc | NwDst | Ipv6Label | Reg(_) | TunSrc | TunDst | PktMark | ConjId
        | CtState | CtMark | CtNwSrc | CtNwDst | ActsetOutput | RecircId | DpHash | MplsLabel
        | PacketType | TunErspanIdx | NdReserved | NshSpi | NshC(_) => 4,
        VlanTci | DlType | TpSrc | TpDst | TcpFlags | CtZone | CtTpSrc | CtTpDst | TunFlags
        | TunGbpId => 2,
        TunGbpFlags | TunErspanVer | TunErspanDir | TunErspanHwid | TunGtpuFlags
        | TunGtpuMsgtype | MplsTtl | NdOptionsType | NshFlags | NshTtl | NshMdtype | NshNp
        | NshSi => 1,
        DlSrc | DlDst | ArpSha | ArpTha => 6,
        Ipv6Src | Ipv6Dst | NdTarget | TunIpv6Src | TunIpv6Dst | CtLabel | CtIpv6Src
        | CtIpv6Dst => 16,
        NwProto | NwTos | NwEcn | NwTtl | NwFrag | MplsTc | MplsBos | CtNwProto => 1,
        TunId | Metadata => 8,
    }
}

/// The mask of an exact match on `key` (narrower than its byte width for some fields).
pub(crate) const fn key_full_mask(key: Key) -> u128 {
    match key {
        Key::Ipv6Label | Key::MplsLabel | Key::TunErspanIdx => 0xfffff,
        Key::NshSpi => 0xff_ffff,
        Key::TunFlags => 1,
        Key::TcpFlags => 0xfff,
        k => ones(key_bytes(k)),
    }
}

const fn ones(bytes: usize) -> u128 {
    if bytes >= 16 {
        u128::MAX
    } else {
        (1u128 << (bytes * 8)) - 1
    }
}

fn be(b: &[u8]) -> u128 {
    // The widths fields have, each as one load; any other byte by byte.
    if let Ok(a) = <[u8; 4]>::try_from(b) {
        return u32::from_be_bytes(a).into();
    }
    if let Ok(a) = <[u8; 2]>::try_from(b) {
        return u16::from_be_bytes(a).into();
    }
    if let Ok(a) = <[u8; 16]>::try_from(b) {
        return u128::from_be_bytes(a);
    }
    if let Ok(a) = <[u8; 8]>::try_from(b) {
        return u64::from_be_bytes(a).into();
    }
    if b.len() <= 8 {
        // Most fields: a 64-bit accumulator is cheaper than a 128-bit one.
        return u128::from(b.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)));
    }
    b.iter().fold(0u128, |a, &x| (a << 8) | x as u128)
}

impl Match {
    /// The entry for `key`, if matched.
    pub(crate) fn get(&self, key: Key) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// (value, mask) for `key`, zeros when not matched.
    pub(crate) fn vm(&self, key: Key) -> (u128, u128) {
        self.get(key).map(|e| (e.value, e.mask)).unwrap_or((0, 0))
    }

    #[inline]
    fn merge(&mut self, key: Key, value: u128, mask: u128) {
        if mask == 0 {
            return;
        }
        if let Some(e) = self.entries.iter_mut().find(|e| e.key == key) {
            e.value = (e.value & !mask) | (value & mask);
            e.mask |= mask;
        } else {
            self.entries.push(Entry {
                key,
                value: value & mask,
                mask,
            });
        }
    }

    /// Adds a decoded field. Most fields map onto one key of their own width: that case is
    /// inlined into the decoder's loop, the others go through [`add_normalized`](Self::add_normalized).
    #[inline(always)]
    fn add(&mut self, info: &FieldInfo, value: u128, mask: Option<u128>) {
        if let Norm::Simple(k) = info.norm {
            let km = match mask {
                None => info.exact_mask,
                Some(m) => m & ones(key_bytes(k)),
            };
            self.merge(k, value, km)
        } else {
            self.add_normalized(info, value, mask)
        }
    }

    /// [`add`](Self::add) for the fields that are not [`Norm::Simple`].
    fn add_normalized(&mut self, info: &FieldInfo, value: u128, mask: Option<u128>) {
        let full = ones(info.bytes as usize);
        let m = mask.unwrap_or(full);
        match info.norm {
            Norm::Simple(k) => self.merge(k, value, m & ones(key_bytes(k))),
            Norm::InPort16 => {
                let v = value as u32;
                let p = if v >= 0xff00 { v | 0xffff_0000 } else { v };
                self.merge(Key::InPort, p as u128, 0xffff_ffff);
            }
            Norm::InPort32 => self.merge(Key::InPort, value, 0xffff_ffff),
            Norm::VlanVid => self.merge(Key::VlanTci, value & 0x1fff, m & 0x1fff),
            Norm::VlanPcp => self.merge(Key::VlanTci, ((value & 7) << 13) | 0x1000, 0xf000),
            Norm::Dscp => self.merge(Key::NwTos, (value & 0x3f) << 2, 0xfc),
            Norm::Tos => self.merge(Key::NwTos, value & 0xfc, m & 0xfc),
            Norm::Small(k) => self.merge(k, value, 0xffff),
            Norm::ArpOp => self.merge(Key::NwProto, value & 0xff, 0xff),
            Norm::Xreg(n) => {
                let base = n * 2;
                self.merge(Key::Reg(base), value >> 32, (m >> 32) & 0xffff_ffff);
                self.merge(Key::Reg(base + 1), value & 0xffff_ffff, m & 0xffff_ffff);
            }
            Norm::Xxreg(n) => {
                let base = n * 4;
                for i in 0..4u8 {
                    let sh = 96 - 32 * i as u32;
                    self.merge(
                        Key::Reg(base + i),
                        (value >> sh) & 0xffff_ffff,
                        (m >> sh) & 0xffff_ffff,
                    );
                }
            }
        }
    }

    /// Decodes a sequence of OXM/NXM TLVs (no `ofp_match` header).
    pub(crate) fn decode_tlvs(buf: &[u8]) -> DecodeResult<Match> {
        let mut m = Match::default();
        m.decode_tlvs_into(buf)?;
        Ok(m)
    }

    /// Like [`decode_tlvs`](Self::decode_tlvs), reusing this match's buffers.
    pub(crate) fn decode_tlvs_into(&mut self, buf: &[u8]) -> DecodeResult<()> {
        self.entries.clear();
        self.unknown.clear();
        let m = self;
        let mut r = Rd::new(buf, "OXM field");
        while !r.is_empty() {
            let h = OxmHeader::read(&mut r)?;
            let payload = r.take(h.payload_len())?;
            let (v, mk) = if h.has_mask {
                if payload.len() % 2 != 0 {
                    return Err(DecodeError::Malformed(format!(
                        "masked OXM field {:#06x}:{} has odd length {}",
                        h.class,
                        h.field,
                        payload.len()
                    )));
                }
                let (a, b) = payload.split_at(payload.len() / 2);
                (a, Some(b))
            } else {
                (payload, None)
            };
            match h.info() {
                Some(info) if v.len() == info.bytes as usize => {
                    m.add(info, be(v), mk.map(be));
                }
                Some(info) => {
                    return Err(DecodeError::Malformed(format!(
                        "OXM field {} has {} value bytes, expected {}",
                        info.name,
                        v.len(),
                        info.bytes
                    )));
                }
                None => m.unknown.push(UnknownField {
                    class: h.class,
                    field: h.field,
                    experimenter: h.experimenter,
                    value: v.to_vec(),
                    mask: mk.map(<[u8]>::to_vec),
                }),
            }
        }
        m.entries.sort_unstable_by_key(|e| e.key);
        Ok(())
    }

    /// Decodes an `ofp_match` (type OXM) at the reader and consumes its padding.
    pub(crate) fn read_ofp_match(r: &mut Rd<'_>) -> DecodeResult<Match> {
        let mtype = r.u16()?;
        let len = r.u16()? as usize;
        if mtype != 1 {
            return Err(DecodeError::Malformed(format!(
                "match type {mtype} is not OXM (1)"
            )));
        }
        if len < 4 {
            return Err(DecodeError::Malformed(format!("match length {len} < 4")));
        }
        let tlvs = r.take(len - 4)?;
        let mut m = Match::default();
        m.decode_tlvs_into(tlvs)?;
        r.skip(pad8(len) - len)?;
        Ok(m)
    }

    /// Like [`read_ofp_match`](Self::read_ofp_match), reusing this match's buffers.
    pub(crate) fn read_ofp_match_into(&mut self, r: &mut Rd<'_>) -> DecodeResult<()> {
        let mtype = r.u16()?;
        let len = r.u16()? as usize;
        if mtype != 1 {
            return Err(DecodeError::Malformed(format!(
                "match type {mtype} is not OXM (1)"
            )));
        }
        if len < 4 {
            return Err(DecodeError::Malformed(format!("match length {len} < 4")));
        }
        let tlvs = r.take(len - 4)?;
        self.decode_tlvs_into(tlvs)?;
        r.skip(pad8(len) - len)?;
        Ok(())
    }

    /// Normalized match (fields named as `ovs-ofctl` names them, sorted by name).
    pub(crate) fn field_matches(&self) -> Matches {
        self.field_matches_with(&mut Vec::new())
    }

    /// Like [`field_matches`](Self::field_matches), reusing `scratch` (no per-field allocation).
    ///
    /// Unknown fields wider than 16 bytes (no OVS field is) are folded into a 16-byte exact value
    /// derived from their value and mask, so they still tell flows apart.
    pub(crate) fn field_matches_with(&self, scratch: &mut Vec<FieldMatch>) -> Matches {
        self.field_matches_tail(scratch, &[])
    }

    /// Like [`field_matches_with`](Self::field_matches_with), storing `tail` after the encoding
    /// (see [`Matches::tail`]).
    pub(crate) fn field_matches_tail(
        &self,
        scratch: &mut Vec<FieldMatch>,
        tail: &[&[u8]],
    ) -> Matches {
        self.normalized_fields(scratch);
        Matches::from_fields_with_tail(scratch, tail)
    }

    /// The match from its normalized fields (the inverse of [`field_matches`](Self::field_matches)
    /// where one exists): `None` for a field name this decoder does not give a key (unknown
    /// fields), a width that is not the key's, or a key named twice. Callers compare the result
    /// with the decoded match before relying on it (see [`Match::normalizes_back`]).
    pub(crate) fn from_normalized(fields: impl IntoIterator<Item = FieldMatch>) -> Option<Match> {
        let mut entries: Vec<Entry> = Vec::new();
        for f in fields {
            let key = key_of_name(f.field)?;
            let n = key_bytes(key).clamp(1, 16) as u8;
            if f.len != n {
                return None;
            }
            let mask = if f.mask == width_mask(n) {
                key_full_mask(key)
            } else {
                f.mask
            };
            entries.push(Entry {
                key,
                value: f.value,
                mask,
            });
        }
        entries.sort_unstable_by_key(|e| e.key);
        if entries.windows(2).any(|w| w[0].key == w[1].key) {
            return None;
        }
        Some(Match {
            entries,
            unknown: Vec::new(),
        })
    }

    /// Whether [`Match::from_normalized`] of `fields` (this match's normalized fields) gives this
    /// match back exactly: then the normalized form alone renders the flow, and its TLVs need not
    /// be kept.
    pub(crate) fn normalizes_back(&self, fields: &[FieldMatch]) -> bool {
        self.unknown.is_empty()
            && Match::from_normalized(fields.iter().copied()).is_some_and(|m| m == *self)
    }

    /// Fills `scratch` with the normalized fields (unsorted).
    pub(crate) fn normalized_fields(&self, scratch: &mut Vec<FieldMatch>) {
        let dl_type = self.vm(Key::DlType).0 as u16;
        let nw_proto = self.vm(Key::NwProto).0 as u8;
        scratch.clear();
        for e in &self.entries {
            let n = key_bytes(e.key).clamp(1, 16) as u8;
            let full = key_full_mask(e.key);
            let field = match key_name(e.key, dl_type, nw_proto) {
                std::borrow::Cow::Borrowed(b) => b,
                std::borrow::Cow::Owned(o) => intern_field(&o),
            };
            let mask = if e.mask == full {
                width_mask(n)
            } else {
                e.mask
            };
            scratch.push(FieldMatch::masked(field, e.value, mask, n));
        }
        for u in &self.unknown {
            let field = intern_field(&unknown_name(u));
            let fm = if u.value.len() <= 16
                && u.mask.as_ref().is_none_or(|m| m.len() == u.value.len())
            {
                let n = u.value.len().max(1) as u8;
                match &u.mask {
                    None => FieldMatch::exact(field, be(&u.value), n),
                    Some(m) => FieldMatch::masked(field, be(&u.value), be(m), n),
                }
            } else {
                let mut h: u128 = 0xcbf2_9ce4_8422_2325;
                for b in u.value.iter().chain(u.mask.iter().flatten()) {
                    h = (h ^ u128::from(*b))
                        .wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
                }
                FieldMatch::exact(field, h, 16)
            };
            scratch.push(fm);
        }
    }
}

/// Every key (for the name → key table).
fn all_keys() -> impl Iterator<Item = Key> {
    use Key::*;
    [
        InPort,
        VlanTci,
        DlSrc,
        DlDst,
        DlType,
        NwSrc,
        NwDst,
        Ipv6Src,
        Ipv6Dst,
        Ipv6Label,
        NwProto,
        NwTos,
        NwEcn,
        NwTtl,
        NwFrag,
        ArpSha,
        ArpTha,
        TpSrc,
        TpDst,
        NdTarget,
        TcpFlags,
        MplsLabel,
        MplsTc,
        MplsBos,
        TunId,
        TunSrc,
        TunDst,
        TunIpv6Src,
        TunIpv6Dst,
        Metadata,
        PktMark,
        ConjId,
        CtState,
        CtZone,
        CtMark,
        CtLabel,
        CtNwProto,
        CtNwSrc,
        CtNwDst,
        CtIpv6Src,
        CtIpv6Dst,
        CtTpSrc,
        CtTpDst,
        ActsetOutput,
        RecircId,
        DpHash,
        PacketType,
        TunFlags,
        TunGbpId,
        TunGbpFlags,
        TunErspanVer,
        TunErspanIdx,
        TunErspanDir,
        TunErspanHwid,
        TunGtpuFlags,
        TunGtpuMsgtype,
        MplsTtl,
        NdReserved,
        NdOptionsType,
        NshFlags,
        NshTtl,
        NshMdtype,
        NshNp,
        NshSpi,
        NshSi,
    ]
    .into_iter()
    .chain((0..16).map(Reg))
    .chain((1..=4).map(NshC))
}

/// The key a normalized field name stands for (`arp_spa` and `nw_src` both name
/// [`Key::NwSrc`]: the name depends on the flow's `dl_type`/`nw_proto`, the key does not).
fn key_of_name(name: &str) -> Option<Key> {
    static TABLE: std::sync::OnceLock<std::collections::HashMap<&'static str, Key>> =
        std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| {
            let mut t = std::collections::HashMap::new();
            for k in all_keys() {
                for (dl_type, nw_proto) in [(0, 0), (0x0806, 0), (0x0800, 1), (0x86dd, 58)] {
                    if let std::borrow::Cow::Borrowed(n) = key_name(k, dl_type, nw_proto) {
                        t.insert(n, k);
                    }
                }
            }
            t
        })
        .get(name)
        .copied()
}

/// Dense slot of a key (for per-flow lookup tables); `None` for unknown fields.
const fn slot(k: Key) -> Option<usize> {
    Some(match k {
        Key::InPort => 0,
        Key::VlanTci => 1,
        Key::DlSrc => 2,
        Key::DlDst => 3,
        Key::DlType => 4,
        Key::NwSrc => 5,
        Key::NwDst => 6,
        Key::Ipv6Src => 7,
        Key::Ipv6Dst => 8,
        Key::Ipv6Label => 9,
        Key::NwProto => 10,
        Key::NwTos => 11,
        Key::NwEcn => 12,
        Key::NwTtl => 13,
        Key::NwFrag => 14,
        Key::ArpSha => 15,
        Key::ArpTha => 16,
        Key::TpSrc => 17,
        Key::TpDst => 18,
        Key::NdTarget => 19,
        Key::TcpFlags => 20,
        Key::MplsLabel => 21,
        Key::MplsTc => 22,
        Key::MplsBos => 23,
        Key::TunId => 24,
        Key::TunSrc => 25,
        Key::TunDst => 26,
        Key::TunIpv6Src => 27,
        Key::TunIpv6Dst => 28,
        Key::Metadata => 29,
        Key::PktMark => 30,
        Key::ConjId => 31,
        Key::CtState => 32,
        Key::CtZone => 33,
        Key::CtMark => 34,
        Key::CtLabel => 35,
        Key::CtNwProto => 36,
        Key::CtNwSrc => 37,
        Key::CtNwDst => 38,
        Key::CtIpv6Src => 39,
        Key::CtIpv6Dst => 40,
        Key::CtTpSrc => 41,
        Key::CtTpDst => 42,
        Key::ActsetOutput => 43,
        Key::RecircId => 44,
        Key::DpHash => 45,
        Key::Reg(i) => 46 + (i as usize & 15),
        Key::PacketType => 62,
        Key::TunFlags => 63,
        Key::TunGbpId => 64,
        Key::TunGbpFlags => 65,
        Key::TunErspanVer => 66,
        Key::TunErspanIdx => 67,
        Key::TunErspanDir => 68,
        Key::TunErspanHwid => 69,
        Key::TunGtpuFlags => 70,
        Key::TunGtpuMsgtype => 71,
        Key::MplsTtl => 72,
        Key::NdReserved => 73,
        Key::NdOptionsType => 74,
        Key::NshFlags => 75,
        Key::NshTtl => 76,
        Key::NshMdtype => 77,
        Key::NshNp => 78,
        Key::NshSpi => 79,
        Key::NshSi => 80,
        Key::NshC(i) => 81 + (i.wrapping_sub(1) as usize & 3),
    })
}

const N_SLOTS: usize = 85;

/// The [`slot`]s of `keys` as a bit set (for skipping groups of fields a match lacks).
const fn slot_mask(keys: &[Key]) -> u128 {
    let mut mask = 0u128;
    let mut i = 0;
    while i < keys.len() {
        if let Some(s) = slot(keys[i]) {
            mask |= 1 << s;
        }
        i += 1;
    }
    mask
}

/// Fields [`render_match`] prints before the Ethertype keyword (metadata, conntrack).
const GROUP_META_CT: u128 = slot_mask(&[
    Key::PktMark,
    Key::RecircId,
    Key::DpHash,
    Key::ConjId,
    Key::ActsetOutput,
    Key::CtState,
    Key::CtZone,
    Key::CtMark,
    Key::CtLabel,
    Key::CtNwSrc,
    Key::CtIpv6Src,
    Key::CtNwDst,
    Key::CtIpv6Dst,
    Key::CtNwProto,
    Key::CtTpSrc,
    Key::CtTpDst,
]);

/// Tunnel fields (`tun_metadataN` are kept in [`Match::unknown`] and checked apart).
const GROUP_TUNNEL: u128 = slot_mask(&[
    Key::TunId,
    Key::TunSrc,
    Key::TunDst,
    Key::TunIpv6Src,
    Key::TunIpv6Dst,
    Key::TunGbpId,
    Key::TunGbpFlags,
    Key::TunErspanVer,
    Key::TunErspanIdx,
    Key::TunErspanDir,
    Key::TunErspanHwid,
    Key::TunGtpuFlags,
    Key::TunGtpuMsgtype,
    Key::TunFlags,
]);

/// The IP and MPLS header fields printed after the protocol.
const GROUP_NW_MPLS: u128 = slot_mask(&[
    Key::NwTos,
    Key::NwEcn,
    Key::NwTtl,
    Key::MplsLabel,
    Key::MplsTc,
    Key::MplsTtl,
    Key::MplsBos,
    Key::NwFrag,
]);

fn unknown_name(u: &UnknownField) -> String {
    if let Some(n) = tun_metadata_index(u.class, u.field) {
        format!("tun_metadata{n}")
    } else if u.class == 0xffff {
        format!("experimenter_{:08x}_{}", u.experimenter, u.field)
    } else {
        format!("oxm_{:04x}_{}", u.class, u.field)
    }
}

const REG_NAMES: [&str; 16] = [
    "reg0", "reg1", "reg2", "reg3", "reg4", "reg5", "reg6", "reg7", "reg8", "reg9", "reg10",
    "reg11", "reg12", "reg13", "reg14", "reg15",
];

/// The `ovs-ofctl` match name of a key in the context of the flow's `dl_type`/`nw_proto`.
pub(crate) fn key_name(k: Key, dl_type: u16, nw_proto: u8) -> std::borrow::Cow<'static, str> {
    use std::borrow::Cow::Borrowed as B;
    let arp = dl_type == 0x0806 || dl_type == 0x8035;
    let icmp = (dl_type == 0x0800 && nw_proto == 1) || (dl_type == 0x86dd && nw_proto == 58);
    let nd = dl_type == 0x86dd && nw_proto == 58;
    match k {
        Key::InPort => B("in_port"),
        Key::VlanTci => B("vlan_tci"),
        Key::DlSrc => B("dl_src"),
        Key::DlDst => B("dl_dst"),
        Key::DlType => B("dl_type"),
        Key::NwSrc if arp => B("arp_spa"),
        Key::NwDst if arp => B("arp_tpa"),
        Key::NwSrc => B("nw_src"),
        Key::NwDst => B("nw_dst"),
        Key::Ipv6Src => B("ipv6_src"),
        Key::Ipv6Dst => B("ipv6_dst"),
        Key::Ipv6Label => B("ipv6_label"),
        Key::NwProto if arp => B("arp_op"),
        Key::NwProto => B("nw_proto"),
        Key::NwTos => B("nw_tos"),
        Key::NwEcn => B("nw_ecn"),
        Key::NwTtl => B("nw_ttl"),
        Key::NwFrag => B("nw_frag"),
        Key::ArpSha if nd => B("nd_sll"),
        Key::ArpTha if nd => B("nd_tll"),
        Key::ArpSha => B("arp_sha"),
        Key::ArpTha => B("arp_tha"),
        Key::TpSrc if icmp => B("icmp_type"),
        Key::TpDst if icmp => B("icmp_code"),
        Key::TpSrc => B("tp_src"),
        Key::TpDst => B("tp_dst"),
        Key::NdTarget => B("nd_target"),
        Key::TcpFlags => B("tcp_flags"),
        Key::MplsLabel => B("mpls_label"),
        Key::MplsTc => B("mpls_tc"),
        Key::MplsBos => B("mpls_bos"),
        Key::Reg(i) => REG_NAMES
            .get(i as usize)
            .map(|s| B(*s))
            .unwrap_or_else(|| std::borrow::Cow::Owned(format!("reg{i}"))),
        Key::TunId => B("tun_id"),
        Key::TunSrc => B("tun_src"),
        Key::TunDst => B("tun_dst"),
        Key::TunIpv6Src => B("tun_ipv6_src"),
        Key::TunIpv6Dst => B("tun_ipv6_dst"),
        Key::Metadata => B("metadata"),
        Key::PktMark => B("pkt_mark"),
        Key::ConjId => B("conj_id"),
        Key::CtState => B("ct_state"),
        Key::CtZone => B("ct_zone"),
        Key::CtMark => B("ct_mark"),
        Key::CtLabel => B("ct_label"),
        Key::CtNwProto => B("ct_nw_proto"),
        Key::CtNwSrc => B("ct_nw_src"),
        Key::CtNwDst => B("ct_nw_dst"),
        Key::CtIpv6Src => B("ct_ipv6_src"),
        Key::CtIpv6Dst => B("ct_ipv6_dst"),
        Key::CtTpSrc => B("ct_tp_src"),
        Key::CtTpDst => B("ct_tp_dst"),
        Key::ActsetOutput => B("actset_output"),
        Key::RecircId => B("recirc_id"),
        Key::DpHash => B("dp_hash"),
        Key::PacketType => B("packet_type"),
        Key::TunFlags => B("tun_flags"),
        Key::TunGbpId => B("tun_gbp_id"),
        Key::TunGbpFlags => B("tun_gbp_flags"),
        Key::TunErspanVer => B("tun_erspan_ver"),
        Key::TunErspanIdx => B("tun_erspan_idx"),
        Key::TunErspanDir => B("tun_erspan_dir"),
        Key::TunErspanHwid => B("tun_erspan_hwid"),
        Key::TunGtpuFlags => B("tun_gtpu_flags"),
        Key::TunGtpuMsgtype => B("tun_gtpu_msgtype"),
        Key::MplsTtl => B("mpls_ttl"),
        Key::NdReserved => B("nd_reserved"),
        Key::NdOptionsType => B("nd_options_type"),
        Key::NshFlags => B("nsh_flags"),
        Key::NshTtl => B("nsh_ttl"),
        Key::NshMdtype => B("nsh_mdtype"),
        Key::NshNp => B("nsh_np"),
        Key::NshSpi => B("nsh_spi"),
        Key::NshSi => B("nsh_si"),
        Key::NshC(1) => B("nsh_c1"),
        Key::NshC(2) => B("nsh_c2"),
        Key::NshC(3) => B("nsh_c3"),
        Key::NshC(i) => std::borrow::Cow::Owned(format!("nsh_c{i}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Value formatting helpers shared with the action renderer.

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `v` in decimal (allocation-free fast path for the renderer).
pub(crate) fn push_dec(out: &mut String, v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        if let Some(b) = buf.get_mut(i) {
            *b = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    for &b in buf.get(i..).unwrap_or_default() {
        out.push(b as char);
    }
}

/// Appends `0x` and `v` in lowercase hex without leading zeros (`0x0` for zero).
pub(crate) fn push_hex(out: &mut String, v: u128) {
    if let Ok(v) = u64::try_from(v) {
        // Most values: 64-bit shifts are cheaper than 128-bit ones.
        out.push_str("0x");
        let digits = if v == 0 {
            1
        } else {
            (64 - v.leading_zeros()).div_ceil(4)
        };
        for d in (0..digits).rev() {
            out.push(HEX[((v >> (d * 4)) & 0xf) as usize] as char);
        }
        return;
    }
    out.push_str("0x");
    let digits = if v == 0 {
        1
    } else {
        (128 - v.leading_zeros()).div_ceil(4)
    };
    for d in (0..digits).rev() {
        out.push(HEX[((v >> (d * 4)) & 0xf) as usize] as char);
    }
}

/// C `%#x`: `0` for zero, else `0x…`.
pub(crate) fn c_hex(out: &mut String, v: u128) {
    if v == 0 {
        out.push('0');
    } else {
        push_hex(out, v);
    }
}

/// Ethernet address `xx:xx:xx:xx:xx:xx` from the low 48 bits.
pub(crate) fn fmt_eth(out: &mut String, v: u128) {
    let b = (v as u64).to_be_bytes();
    for (i, x) in b.iter().skip(2).enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push(HEX[(x >> 4) as usize] as char);
        out.push(HEX[(x & 0xf) as usize] as char);
    }
}

/// Dotted-quad IPv4 from the low 32 bits.
pub(crate) fn fmt_ipv4(out: &mut String, v: u128) {
    out.reserve(15);
    for (i, x) in (v as u32).to_be_bytes().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if x >= 100 {
            out.push(char::from(b'0' + x / 100));
        }
        if x >= 10 {
            out.push(char::from(b'0' + x / 10 % 10));
        }
        out.push(char::from(b'0' + x % 10));
    }
}

/// IPv6 text form exactly as glibc's `inet_ntop` prints it, which is what `ovs-ofctl` shows: the
/// first longest run of two or more zero groups as `::`, lower-case hex, and the last 32 bits as a
/// dotted quad after 96 zero bits (`::1.2.3.4`, where `std`'s `Display` prints `::102:304`) or
/// after `::ffff:`. Written here rather than through `Display` (~700 instructions an address
/// through `core::fmt`; a Neutron table holds thousands of IPv6 rules).
pub(crate) fn fmt_ipv6(out: &mut String, v: u128) {
    let words: [u16; 8] = std::array::from_fn(|i| (v >> (112 - 16 * i)) as u16);
    // The first longest run of zero words (glibc keeps the first on a tie).
    let (mut best, mut best_len, mut cur, mut cur_len) = (0usize, 0usize, 0usize, 0usize);
    for (i, w) in words.iter().enumerate() {
        if *w == 0 {
            if cur_len == 0 {
                cur = i;
            }
            cur_len += 1;
            if cur_len > best_len {
                (best, best_len) = (cur, cur_len);
            }
        } else {
            cur_len = 0;
        }
    }
    if best_len < 2 {
        best_len = 0;
    }
    out.reserve(45);
    let mut i = 0;
    while i < 8 {
        if best_len > 0 && i == best {
            out.push(':');
            i += best_len;
            if i == 8 {
                out.push(':');
            }
            continue;
        }
        if i != 0 {
            out.push(':');
        }
        if i == 6 && best == 0 && (best_len == 6 || (best_len == 5 && words[5] == 0xffff)) {
            fmt_ipv4(out, v);
            break;
        }
        let w = words[i];
        let digits = (16 - w.leading_zeros()).div_ceil(4).max(1);
        for d in (0..digits).rev() {
            out.push(char::from(HEX[usize::from((w >> (4 * d)) & 0xf)]));
        }
        i += 1;
    }
}

fn cidr_len(mask: u128, bits: u32) -> Option<u32> {
    let m = mask << (128 - bits);
    let n = m.leading_ones();
    (m.count_ones() == n).then_some(n)
}

/// Port in OF1.3 32-bit numbering as `ovs-ofctl` prints it (reserved ports by name).
pub(crate) fn fmt_port(out: &mut String, port: u32) {
    let p16 = if port >= 0xffff_ff00 {
        port & 0xffff
    } else {
        port
    };
    let name = match p16 {
        0xfff7 => Some("UNSET"),
        0xfff8 => Some("IN_PORT"),
        0xfff9 => Some("TABLE"),
        0xfffa => Some("NORMAL"),
        0xfffb => Some("FLOOD"),
        0xfffc => Some("ALL"),
        0xfffd => Some("CONTROLLER"),
        0xfffe => Some("LOCAL"),
        0xffff => Some("ANY"),
        _ => None,
    };
    match name {
        Some(n) => out.push_str(n),
        None => {
            push_dec(out, p16 as u64);
        }
    }
}

/// The name of a reserved port (NORMAL, LOCAL, …) in OF1.3 numbering, if reserved.
pub(crate) fn reserved_port_name(port: u32) -> Option<&'static str> {
    if port < 0xffff_fff7 {
        return None;
    }
    Some(match port & 0xffff {
        0xfff7 => "UNSET",
        0xfff8 => "IN_PORT",
        0xfff9 => "TABLE",
        0xfffa => "NORMAL",
        0xfffb => "FLOOD",
        0xfffc => "ALL",
        0xfffd => "CONTROLLER",
        0xfffe => "LOCAL",
        _ => "ANY",
    })
}

fn ct_state_bit(bit: u32) -> Option<&'static str> {
    Some(match bit {
        0x01 => "new",
        0x02 => "est",
        0x04 => "rel",
        0x08 => "rpl",
        0x10 => "inv",
        0x20 => "trk",
        0x40 => "snat",
        0x80 => "dnat",
        _ => return None,
    })
}

fn tcp_flag_bit(bit: u32) -> Option<&'static str> {
    Some(match bit {
        0x001 => "fin",
        0x002 => "syn",
        0x004 => "rst",
        0x008 => "psh",
        0x010 => "ack",
        0x020 => "urg",
        0x040 => "ece",
        0x080 => "cwr",
        0x100 => "ns",
        0x200 => "[200]",
        0x400 => "[400]",
        0x800 => "[800]",
        _ => return None,
    })
}

fn fmt_flags(out: &mut String, names: fn(u32) -> Option<&'static str>, flags: u32, del: char) {
    if flags == 0 {
        out.push('0');
        return;
    }
    let mut bad = 0u32;
    let mut f = flags;
    let start = out.len();
    while f != 0 {
        let bit = f & f.wrapping_neg();
        match names(bit) {
            Some(s) => {
                out.push_str(s);
                out.push(del);
            }
            None => bad |= bit,
        }
        f &= !bit;
    }
    if bad != 0 {
        let _ = write!(out, "{bad:#x}{del}");
    }
    if out.len() > start && out.ends_with(del) {
        out.pop();
    }
}

fn fmt_flags_masked(
    out: &mut String,
    names: fn(u32) -> Option<&'static str>,
    flags: u32,
    mask: u32,
    max: u32,
) {
    if mask == max {
        fmt_flags(out, names, flags, '|');
        return;
    }
    if mask == 0 {
        out.push_str("0/0");
        return;
    }
    let mut m = mask;
    while m != 0 {
        let bit = m & m.wrapping_neg();
        out.push(if flags & bit != 0 { '+' } else { '-' });
        out.push_str(names(bit).unwrap_or("[Unknown]"));
        m &= !bit;
    }
}

/// Formats a field value (and optional mask) the way OVS's `mf_format` does.
pub(crate) fn mf_format(out: &mut String, info: &FieldInfo, value: u128, mask: Option<u128>) {
    let full = ones(info.bytes as usize);
    let mask = mask.filter(|m| *m != full);
    match info.fmt {
        Fmt::Hex => {
            c_hex(out, value);
            if let Some(m) = mask {
                out.push('/');
                c_hex(out, m);
            }
        }
        Fmt::Dec => {
            let _ = write!(out, "{value}");
            if let Some(m) = mask {
                let _ = write!(out, "/{m:#x}");
            }
        }
        Fmt::Eth => {
            fmt_eth(out, value);
            if let Some(m) = mask {
                out.push('/');
                fmt_eth(out, m);
            }
        }
        Fmt::Ipv4 => {
            fmt_ipv4(out, value);
            if let Some(m) = mask {
                match cidr_len(m, 32) {
                    Some(n) => {
                        let _ = write!(out, "/{n}");
                    }
                    None => {
                        out.push('/');
                        fmt_ipv4(out, m);
                    }
                }
            }
        }
        Fmt::Ipv6 => {
            fmt_ipv6(out, value);
            if let Some(m) = mask {
                match cidr_len(m, 128) {
                    Some(n) => {
                        let _ = write!(out, "/{n}");
                    }
                    None => {
                        out.push('/');
                        fmt_ipv6(out, m);
                    }
                }
            }
        }
        Fmt::Port => {
            let p = value as u32;
            let p = if info.bytes == 2 && p >= 0xff00 {
                p | 0xffff_0000
            } else {
                p
            };
            fmt_port(out, p);
        }
        Fmt::Frag => fmt_frag(out, value as u8, mask.map(|m| m as u8).unwrap_or(3)),
        Fmt::TcpFlags => fmt_flags_masked(
            out,
            tcp_flag_bit,
            value as u32,
            mask.map(|m| m as u32).unwrap_or(0xfff),
            0xfff,
        ),
        Fmt::CtState => fmt_flags_masked(
            out,
            ct_state_bit,
            value as u32,
            mask.map(|m| m as u32).unwrap_or(u32::MAX),
            u32::MAX,
        ),
        Fmt::TnlFlags => fmt_flags_masked(
            out,
            tnl_flag_bit,
            value as u32,
            mask.map(|m| m as u32).unwrap_or(0xffff),
            0xffff,
        ),
        Fmt::PacketType => fmt_packet_type(out, value as u32, mask.map_or(u32::MAX, |m| m as u32)),
    }
}

fn tnl_flag_bit(bit: u32) -> Option<&'static str> {
    (bit == 1).then_some("oam")
}

/// OVS's `format_packet_type_masked` without the `packet_type=` prefix: `(ns,type)`.
fn fmt_packet_type(out: &mut String, value: u32, mask: u32) {
    let part = |out: &mut String, v: u32, m: u32| {
        if m == 0 {
            out.push('*');
            return;
        }
        if v > 9 {
            let _ = write!(out, "{v:#x}");
        } else {
            push_dec(out, u64::from(v));
        }
        if m != 0xffff {
            let _ = write!(out, "/{m:#x}");
        }
    };
    out.push('(');
    part(out, value >> 16, mask >> 16);
    out.push(',');
    part(out, value & 0xffff, mask & 0xffff);
    out.push(')');
}

fn fmt_frag(out: &mut String, v: u8, m: u8) {
    out.push_str(match m & 3 {
        3 => {
            if v & 2 != 0 {
                "later"
            } else if v & 1 != 0 {
                "first"
            } else {
                "no"
            }
        }
        1 => {
            if v & 1 != 0 {
                "yes"
            } else {
                "no"
            }
        }
        2 => {
            if v & 2 != 0 {
                "later"
            } else {
                "not_later"
            }
        }
        _ => "0/0",
    });
}

// ---------------------------------------------------------------------------------------------
// Match rendering (`match_format` order). The `put_*` helpers are `#[inline(always)]`:
// `render_match` calls them for every field OVS may print and most calls find the field absent,
// which inlined is a test (out of line, a call each: -6 % of the instructions of a one-shot dump).

#[inline(always)]
fn put_u32_masked(out: &mut String, name: &str, e: Option<&Entry>) {
    if let Some(e) = e {
        out.push_str(name);
        out.push('=');
        c_hex(out, e.value);
        if e.mask != 0xffff_ffff {
            out.push('/');
            c_hex(out, e.mask);
        }
        out.push(',');
    }
}

#[inline(always)]
fn put_be64_masked(out: &mut String, name: &str, e: Option<&Entry>) {
    if let Some(e) = e {
        out.push_str(name);
        out.push('=');
        c_hex(out, e.value);
        if e.mask != u64::MAX as u128 {
            out.push('/');
            c_hex(out, e.mask);
        }
        out.push(',');
    }
}

#[inline(always)]
fn put_be16_masked(out: &mut String, name: &str, e: Option<&Entry>) {
    if let Some(e) = e {
        out.push_str(name);
        out.push('=');
        if e.mask == 0xffff {
            push_dec(out, e.value as u64);
        } else {
            push_hex(out, e.value);
            out.push('/');
            push_hex(out, e.mask);
        }
        out.push(',');
    }
}

#[inline(always)]
fn put_eth_masked(out: &mut String, name: &str, e: Option<&Entry>) {
    if let Some(e) = e {
        out.push_str(name);
        out.push('=');
        fmt_eth(out, e.value);
        if e.mask != ones(6) {
            out.push('/');
            fmt_eth(out, e.mask);
        }
        out.push(',');
    }
}

#[inline(always)]
fn put_ip_masked(out: &mut String, name: &str, e: Option<&Entry>) {
    if let Some(e) = e {
        out.push_str(name);
        out.push('=');
        fmt_ipv4(out, e.value);
        if e.mask != 0xffff_ffff {
            match cidr_len(e.mask, 32) {
                Some(n) => {
                    let _ = write!(out, "/{n}");
                }
                None => {
                    out.push('/');
                    fmt_ipv4(out, e.mask);
                }
            }
        }
        out.push(',');
    }
}

#[inline(always)]
fn put_ipv6_masked(out: &mut String, name: &str, e: Option<&Entry>) {
    if let Some(e) = e {
        out.push_str(name);
        out.push('=');
        fmt_ipv6(out, e.value);
        if e.mask != u128::MAX {
            match cidr_len(e.mask, 128) {
                Some(n) => {
                    let _ = write!(out, "/{n}");
                }
                None => {
                    out.push('/');
                    fmt_ipv6(out, e.mask);
                }
            }
        }
        out.push(',');
    }
}

/// `name=V,` in decimal.
#[inline(always)]
fn put_dec(out: &mut String, name: &str, e: Option<&Entry>) {
    if let Some(e) = e {
        let _ = write!(out, "{name}={},", e.value);
    }
}

/// `name=V,` as C's `%#x` (`0` for zero).
#[inline(always)]
fn put_c_hex(out: &mut String, name: &str, e: Option<&Entry>) {
    if let Some(e) = e {
        out.push_str(name);
        out.push('=');
        c_hex(out, e.value);
        out.push(',');
    }
}

/// OVS's `format_uint8_masked`: decimal when exact, else `0xVV/0xMM`.
#[inline(always)]
fn put_u8_masked(out: &mut String, name: &str, e: Option<&Entry>) {
    if let Some(e) = e {
        if e.mask == 0xff {
            let _ = write!(out, "{name}={},", e.value);
        } else {
            let _ = write!(out, "{name}={:#04x}/{:#04x},", e.value, e.mask);
        }
    }
}

/// OVS's `ds_put_hex`: big-endian bytes as `0x…` without leading zeros, `0` when all zero.
pub(crate) fn put_hex_bytes(out: &mut String, b: &[u8]) {
    let mut printed = false;
    for &x in b {
        if printed {
            let _ = write!(out, "{x:02x}");
        } else if x != 0 {
            let _ = write!(out, "0x{x:x}");
            printed = true;
        }
    }
    if !printed {
        out.push('0');
    }
}

/// Appends the match in `ovs-ofctl` form, preceded by `priority=N,` unless it is 32768.
/// Nothing is appended for a catch-all match at the default priority.
pub(crate) fn render_match(out: &mut String, m: &Match, priority: u16) {
    let start = out.len();
    if priority != 32768 {
        out.push_str("priority=");
        push_dec(out, priority as u64);
        out.push(',');
    }
    let mut index = [u8::MAX; N_SLOTS];
    // Which slots are set: a typical flow matches a handful of fields, so whole groups of the
    // ~70 that OVS prints are skipped at once.
    let mut present = 0u128;
    for (i, e) in m.entries.iter().enumerate() {
        if let Some(sl) = slot(e.key)
            && let Some(x) = index.get_mut(sl)
        {
            *x = i.min(254) as u8;
            present |= 1 << sl;
        }
    }
    let g = |k: Key| -> Option<&Entry> {
        let i = *index.get(slot(k)?)?;
        m.entries.get(i as usize)
    };
    if present & GROUP_META_CT != 0 {
        put_u32_masked(out, "pkt_mark", g(Key::PktMark));
        put_u32_masked(out, "recirc_id", g(Key::RecircId));
        put_u32_masked(out, "dp_hash", g(Key::DpHash));
        if let Some(e) = g(Key::ConjId) {
            let _ = write!(out, "conj_id={},", e.value);
        }
        if let Some(e) = g(Key::ActsetOutput) {
            out.push_str("actset_output=");
            fmt_port(out, e.value as u32);
            out.push(',');
        }
        if let Some(e) = g(Key::CtState) {
            out.push_str("ct_state=");
            // OVS keeps ct_state in 8 bits; a full mask prints as `a|b|…` (or `0`).
            fmt_flags_masked(
                out,
                ct_state_bit,
                e.value as u32,
                e.mask as u32 & 0xff,
                0xff,
            );
            out.push(',');
        }
        put_be16_masked(out, "ct_zone", g(Key::CtZone));
        put_u32_masked(out, "ct_mark", g(Key::CtMark));
        if let Some(e) = g(Key::CtLabel) {
            out.push_str("ct_label=");
            let _ = write!(out, "{:#x}", e.value);
            if e.mask != u128::MAX {
                let _ = write!(out, "/{:#x}", e.mask);
            }
            out.push(',');
        }
        put_ip_masked(out, "ct_nw_src", g(Key::CtNwSrc));
        put_ipv6_masked(out, "ct_ipv6_src", g(Key::CtIpv6Src));
        put_ip_masked(out, "ct_nw_dst", g(Key::CtNwDst));
        put_ipv6_masked(out, "ct_ipv6_dst", g(Key::CtIpv6Dst));
        if let Some(e) = g(Key::CtNwProto) {
            let _ = write!(out, "ct_nw_proto={},", e.value);
            put_be16_masked(out, "ct_tp_src", g(Key::CtTpSrc));
            put_be16_masked(out, "ct_tp_dst", g(Key::CtTpDst));
        }
    }

    let dl_type_e = g(Key::DlType);
    let mut dl_type = dl_type_e.map(|e| e.value as u16).unwrap_or(0);
    if let Some(e) = g(Key::PacketType)
        && !(e.value == 0 && e.mask as u32 == u32::MAX)
    {
        out.push_str("packet_type=");
        fmt_packet_type(out, e.value as u32, e.mask as u32);
        out.push(',');
        // A packet type in the Ethertype namespace stands for the flow's dl_type.
        if e.value >> 16 == 1 {
            dl_type = e.value as u16;
        }
    }
    let proto_e = g(Key::NwProto);
    let nw_proto = proto_e.map(|e| e.value as u8).unwrap_or(0);
    let mut skip_type = false;
    let mut skip_proto = false;
    if dl_type_e.is_some() {
        skip_type = true;
        let kw = match dl_type {
            0x0800 => {
                if proto_e.is_some() {
                    skip_proto = true;
                    match nw_proto {
                        1 => "icmp",
                        6 => "tcp",
                        17 => "udp",
                        132 => "sctp",
                        _ => {
                            skip_proto = false;
                            "ip"
                        }
                    }
                } else {
                    "ip"
                }
            }
            0x86dd => {
                if proto_e.is_some() {
                    skip_proto = true;
                    match nw_proto {
                        58 => "icmp6",
                        6 => "tcp6",
                        17 => "udp6",
                        132 => "sctp6",
                        _ => {
                            skip_proto = false;
                            "ipv6"
                        }
                    }
                } else {
                    "ipv6"
                }
            }
            0x0806 => "arp",
            0x8035 => "rarp",
            0x8847 => "mpls",
            0x8848 => "mplsm",
            _ => {
                skip_type = false;
                ""
            }
        };
        if !kw.is_empty() {
            out.push_str(kw);
            out.push(',');
        }
    }
    for e in m.entries.iter().filter(|e| matches!(e.key, Key::Reg(_))) {
        if let Key::Reg(i) = e.key {
            let name = REG_NAMES.get(i as usize).copied().unwrap_or("reg?");
            put_u32_masked(out, name, Some(e));
        }
    }
    if present & GROUP_TUNNEL != 0 || !m.unknown.is_empty() {
        put_be64_masked(out, "tun_id", g(Key::TunId));
        put_ip_masked(out, "tun_src", g(Key::TunSrc));
        put_ip_masked(out, "tun_dst", g(Key::TunDst));
        put_ipv6_masked(out, "tun_ipv6_src", g(Key::TunIpv6Src));
        put_ipv6_masked(out, "tun_ipv6_dst", g(Key::TunIpv6Dst));
        put_be16_masked(out, "tun_gbp_id", g(Key::TunGbpId));
        put_c_hex(out, "tun_gbp_flags", g(Key::TunGbpFlags));
        let erspan_ver = g(Key::TunErspanVer).map_or(0, |e| e.value);
        put_dec(out, "tun_erspan_ver", g(Key::TunErspanVer));
        if erspan_ver == 1 {
            put_c_hex(out, "tun_erspan_idx", g(Key::TunErspanIdx));
        }
        if erspan_ver == 2 {
            put_dec(out, "tun_erspan_dir", g(Key::TunErspanDir));
            put_c_hex(out, "tun_erspan_hwid", g(Key::TunErspanHwid));
        }
        put_c_hex(out, "gtpu_flags", g(Key::TunGtpuFlags));
        put_dec(out, "gtpu_msgtype", g(Key::TunGtpuMsgtype));
        if let Some(e) = g(Key::TunFlags).filter(|e| e.mask & 1 != 0) {
            out.push_str("tun_flags=");
            fmt_flags_masked(out, tnl_flag_bit, e.value as u32 & 1, 1, 0xf);
            out.push(',');
        }
        let mut tun_md: Vec<(u8, &UnknownField)> = m
            .unknown
            .iter()
            .filter_map(|u| Some((tun_metadata_index(u.class, u.field)?, u)))
            .collect();
        tun_md.sort_by_key(|(n, _)| *n);
        for (n, u) in tun_md {
            let _ = write!(out, "tun_metadata{n}");
            // ovs-ofctl sizes the field to the significant bytes of value and mask (OVS's
            // `mf_field_len`), so a mask all ones over that width is not printed.
            let sig = |b: &[u8]| b.len() - b.iter().take_while(|x| **x == 0).count();
            let width = sig(&u.value).max(u.mask.as_deref().map_or(0, sig));
            let mask = u
                .mask
                .as_deref()
                .map(|mk| mk.get(mk.len().saturating_sub(width)..).unwrap_or(mk));
            if !mask.is_some_and(|mk| mk.iter().all(|b| *b == 0)) {
                out.push('=');
                put_hex_bytes(out, &u.value);
                if let Some(mk) = mask.filter(|mk| !mk.iter().all(|b| *b == 0xff)) {
                    out.push('/');
                    put_hex_bytes(out, mk);
                }
            }
            out.push(',');
        }
    }
    put_be64_masked(out, "metadata", g(Key::Metadata));
    if let Some(e) = g(Key::InPort) {
        out.push_str("in_port=");
        fmt_port(out, e.value as u32);
        out.push(',');
    }
    if let Some(e) = g(Key::VlanTci) {
        let (tci, mask) = (e.value as u16, e.mask as u16);
        let vid_mask = mask & 0x0fff;
        let pcp_mask = mask & 0xe000;
        let cfi = mask & 0x1000;
        if cfi != 0
            && tci & 0x1000 != 0
            && (vid_mask == 0 || vid_mask == 0x0fff)
            && (pcp_mask == 0 || pcp_mask == 0xe000)
            && (vid_mask != 0 || pcp_mask != 0)
        {
            if vid_mask != 0 {
                out.push_str("dl_vlan=");
                push_dec(out, (tci & 0x0fff) as u64);
                out.push(',');
            }
            if pcp_mask != 0 {
                let _ = write!(out, "dl_vlan_pcp={},", tci >> 13);
            }
        } else if mask == 0xffff {
            let _ = write!(out, "vlan_tci={tci:#06x},");
        } else {
            let _ = write!(out, "vlan_tci={tci:#06x}/{mask:#06x},");
        }
    }
    put_eth_masked(out, "dl_src", g(Key::DlSrc));
    put_eth_masked(out, "dl_dst", g(Key::DlDst));
    if !skip_type && let Some(e) = dl_type_e {
        let _ = write!(out, "dl_type={:#06x},", e.value);
    }
    let arp = dl_type == 0x0806 || dl_type == 0x8035;
    if dl_type == 0x86dd {
        put_ipv6_masked(out, "ipv6_src", g(Key::Ipv6Src));
        put_ipv6_masked(out, "ipv6_dst", g(Key::Ipv6Dst));
        if let Some(e) = g(Key::Ipv6Label) {
            if e.mask == 0xfffff {
                let _ = write!(out, "ipv6_label={:#07x},", e.value);
            } else {
                let _ = write!(out, "ipv6_label={:#07x}/{:#07x},", e.value, e.mask);
            }
        }
    } else if arp {
        put_ip_masked(out, "arp_spa", g(Key::NwSrc));
        put_ip_masked(out, "arp_tpa", g(Key::NwDst));
    } else if dl_type == 0x894f {
        put_u8_masked(out, "nsh_flags", g(Key::NshFlags));
        put_u8_masked(out, "nsh_ttl", g(Key::NshTtl));
        put_u8_masked(out, "nsh_mdtype", g(Key::NshMdtype));
        put_u8_masked(out, "nsh_np", g(Key::NshNp));
        if let Some(e) = g(Key::NshSpi) {
            let _ = write!(out, "nsh_spi={:#x}", e.value);
            if e.mask != 0xff_ffff {
                let _ = write!(out, "/{:#x}", e.mask);
            }
            out.push(',');
        }
        put_u8_masked(out, "nsh_si", g(Key::NshSi));
        if g(Key::NshMdtype).is_some_and(|e| e.mask == 0xff && e.value == 1) {
            for i in 1..=4 {
                if let Some(e) = g(Key::NshC(i)) {
                    let _ = write!(out, "nsh_c{i}={:#x}", e.value);
                    if e.mask != 0xffff_ffff {
                        let _ = write!(out, "/{:#x}", e.mask);
                    }
                    out.push(',');
                }
            }
        }
    } else {
        put_ip_masked(out, "nw_src", g(Key::NwSrc));
        put_ip_masked(out, "nw_dst", g(Key::NwDst));
    }
    if !skip_proto && let Some(e) = proto_e {
        let name = if arp { "arp_op" } else { "nw_proto" };
        let _ = write!(out, "{name}={},", e.value);
    }
    if arp {
        put_eth_masked(out, "arp_sha", g(Key::ArpSha));
        put_eth_masked(out, "arp_tha", g(Key::ArpTha));
    }
    if present & GROUP_NW_MPLS != 0 {
        if let Some(e) = g(Key::NwTos) {
            let _ = write!(out, "nw_tos={},", e.value & 0xfc);
        }
        if let Some(e) = g(Key::NwEcn) {
            let _ = write!(out, "nw_ecn={},", e.value & 3);
        }
        if let Some(e) = g(Key::NwTtl) {
            let _ = write!(out, "nw_ttl={},", e.value);
        }
        if let Some(e) = g(Key::MplsLabel) {
            let _ = write!(out, "mpls_label={},", e.value);
        }
        if let Some(e) = g(Key::MplsTc) {
            let _ = write!(out, "mpls_tc={},", e.value);
        }
        if let Some(e) = g(Key::MplsTtl) {
            let _ = write!(out, "mpls_ttl={},", e.value);
        }
        if let Some(e) = g(Key::MplsBos) {
            let _ = write!(out, "mpls_bos={},", e.value);
        }
        if let Some(e) = g(Key::NwFrag) {
            out.push_str("nw_frag=");
            fmt_frag(out, e.value as u8, e.mask as u8);
            out.push(',');
        }
    }
    if dl_type == 0x0800 && nw_proto == 1 {
        put_be16_masked(out, "icmp_type", g(Key::TpSrc));
        put_be16_masked(out, "icmp_code", g(Key::TpDst));
    } else if dl_type == 0x86dd && nw_proto == 58 {
        put_be16_masked(out, "icmp_type", g(Key::TpSrc));
        put_be16_masked(out, "icmp_code", g(Key::TpDst));
        put_ipv6_masked(out, "nd_target", g(Key::NdTarget));
        put_eth_masked(out, "nd_sll", g(Key::ArpSha));
        put_eth_masked(out, "nd_tll", g(Key::ArpTha));
        if let Some(e) = g(Key::NdReserved) {
            if e.mask == 0xffff_ffff {
                let _ = write!(out, "nd_reserved={},", e.value);
            } else {
                let _ = write!(out, "nd_reserved={:#x}/{:#x},", e.value, e.mask);
            }
        }
        put_dec(out, "nd_options_type", g(Key::NdOptionsType));
    } else {
        put_be16_masked(out, "tp_src", g(Key::TpSrc));
        put_be16_masked(out, "tp_dst", g(Key::TpDst));
    }
    if (dl_type == 0x0800 || dl_type == 0x86dd)
        && nw_proto == 6
        && let Some(e) = g(Key::TcpFlags)
    {
        out.push_str("tcp_flags=");
        fmt_flags_masked(out, tcp_flag_bit, e.value as u32, e.mask as u32, 0xfff);
        out.push(',');
    }
    for u in m
        .unknown
        .iter()
        .filter(|u| tun_metadata_index(u.class, u.field).is_none())
    {
        out.push_str(&unknown_name(u));
        out.push_str("=0x");
        for b in &u.value {
            let _ = write!(out, "{b:02x}");
        }
        if let Some(mk) = &u.mask {
            out.push_str("/0x");
            for b in mk {
                let _ = write!(out, "{b:02x}");
            }
        }
        out.push(',');
    }
    if out.len() > start && out.ends_with(',') {
        out.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code)] // The C library's function (the libc crate does not bind it).
    unsafe extern "C" {
        fn inet_ntop(
            af: libc::c_int,
            src: *const libc::c_void,
            dst: *mut libc::c_char,
            size: libc::socklen_t,
        ) -> *const libc::c_char;
    }

    /// The C library's `inet_ntop(AF_INET6)`, which `ovs-ofctl` prints IPv6 fields with.
    #[allow(unsafe_code)] // The C function, as the oracle of the text form.
    fn inet_ntop6(v: u128) -> String {
        let src = v.to_be_bytes();
        let mut dst = [0 as libc::c_char; 64];
        // SAFETY: `src` is 16 bytes (an in6_addr), `dst` 64 writable bytes, as the size says.
        let p = unsafe {
            inet_ntop(
                libc::AF_INET6,
                src.as_ptr().cast(),
                dst.as_mut_ptr(),
                dst.len() as libc::socklen_t,
            )
        };
        assert!(!p.is_null());
        // SAFETY: inet_ntop wrote a NUL-terminated string into `dst`.
        unsafe { std::ffi::CStr::from_ptr(dst.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn ipv6_text_is_inet_ntops_for_every_shape_of_zero_runs() {
        let mut cases: Vec<u128> = vec![
            0,
            1,
            u128::MAX,
            0x0102_0304,                       // ::1.2.3.4 (IPv4-compatible)
            0xffff_0102_0304,                  // ::ffff:1.2.3.4 (IPv4-mapped)
            0xffff_0000_0000,                  // ::ffff:0.0.0.0
            0x0001_0000_0102_0304,             // ::1:0:102:304
            0xfe80 << 112 | 1,                 // fe80::1
            0x2001_0db8 << 96 | 0x1 << 64 | 1, // 2001:db8:0:1::1 (first longest run)
        ];
        // Every pattern of zero and non-zero words, with words of 1 to 4 hex digits.
        let digits = [0x1u16, 0xab, 0xf00, 0xffff, 0x10, 0x0fff, 0x7, 0x8000];
        for pattern in 0u32..256 {
            let mut v = 0u128;
            for w in 0..8 {
                let word = if pattern & (1 << w) != 0 {
                    digits[(w + pattern as usize) % digits.len()]
                } else {
                    0
                };
                v |= u128::from(word) << (112 - 16 * w);
            }
            cases.push(v);
            cases.push(v | 0xffff_0000_0000);
        }
        for v in cases {
            let mut got = String::from("x=");
            fmt_ipv6(&mut got, v);
            assert_eq!(got, format!("x={}", inet_ntop6(v)), "{v:#034x}");
        }
        let mut got = String::new();
        fmt_ipv4(&mut got, 0xc0a8_0001);
        fmt_ipv4(&mut got, 0x0a64_ff00);
        assert_eq!(got, "192.168.0.110.100.255.0");
    }

    fn tlv(class: u16, field: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let h = ((class as u32) << 16)
            | ((field as u32) << 9)
            | if masked { 0x100 } else { 0 }
            | payload.len() as u32;
        let mut v = h.to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn render(m: &Match, prio: u16) -> String {
        let mut s = String::new();
        render_match(&mut s, m, prio);
        s
    }

    #[test]
    fn vlan_forms() {
        let m = Match::decode_tlvs(&tlv(0x8000, 6, &[0x10, 0x64], false)).unwrap();
        assert_eq!(render(&m, 4), "priority=4,dl_vlan=100");
        let m = Match::decode_tlvs(&tlv(0x8000, 6, &[0, 0], false)).unwrap();
        assert_eq!(render(&m, 3), "priority=3,vlan_tci=0x0000/0x1fff");
        let mut b = tlv(0x8000, 6, &[0x10, 0, 0x10, 0], true);
        b.extend(tlv(0x8000, 7, &[5], false));
        let m = Match::decode_tlvs(&b).unwrap();
        assert_eq!(render(&m, 21), "priority=21,dl_vlan_pcp=5");
    }

    #[test]
    fn protocol_keywords_and_order() {
        let mut b = tlv(0x8000, 5, &[0x08, 0x00], false);
        b.extend(tlv(0x8000, 10, &[6], false));
        b.extend(tlv(0x8000, 14, &[0, 22], false));
        b.extend(tlv(1, 105, &[0, 0, 0, 1, 0, 0, 0, 3], true));
        b.extend(tlv(1, 5, &[0, 0, 0, 0xa], false));
        let m = Match::decode_tlvs(&b).unwrap();
        assert_eq!(
            render(&m, 74),
            "priority=74,ct_state=+new-est,tcp,reg5=0xa,tp_dst=22"
        );
        let fm = m.field_matches();
        assert!(
            fm.iter()
                .any(|f| f.field == "dl_type" && f.value == 0x0800 && f.len == 2)
        );
        assert!(
            fm.iter()
                .any(|f| f.field == "tp_dst" && f.value == 22 && f.len == 2)
        );
    }

    #[test]
    fn xreg_splits_and_unknown_is_kept() {
        let mut b = tlv(0x8001, 1, &[0, 0, 0, 1, 0, 0, 0, 2], false);
        b.extend(tlv(0x7777, 3, &[1, 2], false));
        let m = Match::decode_tlvs(&b).unwrap();
        assert_eq!(
            render(&m, 8),
            "priority=8,reg2=0x1,reg3=0x2,oxm_7777_3=0x0102"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Match::decode_tlvs(&[0x80, 0x00, 0x0c, 0x02, 0x1f]).is_err());
        assert!(Match::decode_tlvs(&tlv(0x8000, 6, &[1, 2, 3], true)).is_err());
        assert!(Match::decode_tlvs(&tlv(0x8000, 6, &[1, 2, 3], false)).is_err());
        assert!(Match::decode_tlvs(&[0xff, 0xff, 0x00, 0x08, 0, 0]).is_err());
    }
}
