//! What a match means beyond its bits, for `unreachable` and `ambiguous_priority`: which
//! `ct_state` combinations conntrack can produce, which protocol a field presupposes, and which
//! flows never meet a packet on their own (conjunctions).
//!
//! `ct_state` (ovs-fields(7), "Connection Tracking Fields"): `trk` unset means no other flag is
//! set; `inv` comes only with `trk`; `new` excludes `est` and `rpl`. Each of these is a two-literal
//! clause, so a match's `ct_state` constraint closed under them ([`close_ct_state`]) fixes every
//! flag it implies, and the shape/projection machinery of the index then compares closed values:
//! two flows can both match one packet iff their closed constraints agree on every flag both fix
//! (for two-literal clauses the closure of a union is the union of the closures), and a flow covers
//! another iff every flag it fixes is fixed the same way by the other's closure. A constraint whose
//! closure sets and clears one flag can match no packet at all.
//!
//! Prerequisites (ovs-fields(7), "Prerequisites"): `nw_src` only exists in IPv4 packets, `arp_*` in
//! ARP, `tp_dst` in TCP/UDP/SCTP… [`Prereq`] keeps, per flow, the Ethertypes and IP protocols its
//! fields admit; two flows whose sets are disjoint cannot overlap. The switch always adds the
//! prerequisites to the flows it reports, so this matters mostly for hand-written flows.

use crate::model::openflow::{FieldMatch, Matches};

/// `ct_state` flags (ovs-fields(7)).
const NEW: u128 = 0x01;
const EST: u128 = 0x02;
const REL: u128 = 0x04;
const RPL: u128 = 0x08;
const INV: u128 = 0x10;
const TRK: u128 = 0x20;
const SNAT: u128 = 0x40;
const DNAT: u128 = 0x80;
/// The flags `inv` excludes (every defined flag but `trk`).
const NOT_WITH_INV: u128 = NEW | EST | REL | RPL | SNAT | DNAT;
/// Every bit of the 32-bit field but `trk` (unset `trk` clears them all).
const ALL_BUT_TRK: u128 = 0xffff_ffff & !TRK;

/// The `ct_state` constraint `value/mask` closed under conntrack's rules, as `(value, mask)`;
/// `None` when no packet can satisfy it.
pub(crate) fn close_ct_state(value: u128, mask: u128) -> Option<(u128, u128)> {
    let (mut set, mut clear) = (value & mask, !value & mask & 0xffff_ffff);
    loop {
        let (s0, c0) = (set, clear);
        if set & ALL_BUT_TRK != 0 {
            set |= TRK;
        }
        if clear & TRK != 0 {
            clear |= ALL_BUT_TRK;
        }
        if set & INV != 0 {
            clear |= NOT_WITH_INV;
        }
        if set & NOT_WITH_INV != 0 {
            clear |= INV;
        }
        if set & NEW != 0 {
            clear |= EST | RPL;
        }
        if set & (EST | RPL) != 0 {
            clear |= NEW;
        }
        if set & clear != 0 {
            return None;
        }
        if (set, clear) == (s0, c0) {
            return Some((set, set | clear));
        }
    }
}

/// The field as the index compares it: a `ct_state` match closed under conntrack's rules (an
/// unsatisfiable one unchanged: such a flow is kept out of comparisons), any other field as is.
pub(crate) fn semantic(m: FieldMatch) -> FieldMatch {
    if m.field == "ct_state"
        && m.len == 4
        && let Some((value, mask)) = close_ct_state(m.value, m.mask)
    {
        return FieldMatch { value, mask, ..m };
    }
    m
}

/// Ethertype classes a flow admits (bit set).
const ETH_IPV4: u8 = 1;
const ETH_IPV6: u8 = 2;
const ETH_ARP: u8 = 4;
const ETH_RARP: u8 = 8;
const ETH_MPLS: u8 = 16;
const ETH_OTHER: u8 = 32;
const ETH_ANY: u8 = 63;
const ETH_IP: u8 = ETH_IPV4 | ETH_IPV6;

/// IP protocol classes a flow admits (bit set).
const P_ICMP: u8 = 1;
const P_TCP: u8 = 2;
const P_UDP: u8 = 4;
const P_SCTP: u8 = 8;
const P_ICMPV6: u8 = 16;
const P_OTHER: u8 = 32;
const P_ANY: u8 = 63;

fn eth_class(v: u128) -> u8 {
    match v {
        0x0800 => ETH_IPV4,
        0x86dd => ETH_IPV6,
        0x0806 => ETH_ARP,
        0x8035 => ETH_RARP,
        0x8847 | 0x8848 => ETH_MPLS,
        _ => ETH_OTHER,
    }
}

fn proto_class(v: u128) -> u8 {
    match v {
        1 => P_ICMP,
        6 => P_TCP,
        17 => P_UDP,
        132 => P_SCTP,
        58 => P_ICMPV6,
        _ => P_OTHER,
    }
}

/// The Ethertypes and IP protocols a flow's fields admit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prereq {
    eth: u8,
    proto: u8,
}

impl Prereq {
    /// What `matches` admits: exact `dl_type`/`nw_proto` values, and the prerequisites of every
    /// other field it constrains.
    pub(crate) fn of(matches: &Matches) -> Prereq {
        let mut p = Prereq {
            eth: ETH_ANY,
            proto: P_ANY,
        };
        for m in matches.iter().filter(|m| m.mask != 0) {
            let (eth, proto) = match m.field {
                "dl_type" if m.is_exact() => (eth_class(m.value), P_ANY),
                // In ARP flows the decoder names the opcode `arp_op`; `nw_proto` is IP's.
                "nw_proto" if m.is_exact() => (ETH_IP, proto_class(m.value)),
                "nw_proto" | "nw_tos" | "nw_ecn" | "nw_ttl" | "nw_frag" => (ETH_IP, P_ANY),
                "nw_src" | "nw_dst" => (ETH_IPV4, P_ANY),
                "ipv6_src" | "ipv6_dst" | "ipv6_label" => (ETH_IPV6, P_ANY),
                "arp_op" | "arp_spa" | "arp_tpa" | "arp_sha" | "arp_tha" => {
                    (ETH_ARP | ETH_RARP, P_ANY)
                }
                "tp_src" | "tp_dst" => (ETH_IP, P_TCP | P_UDP | P_SCTP),
                "tcp_flags" => (ETH_IP, P_TCP),
                "icmp_type" | "icmp_code" => (ETH_IP, P_ICMP | P_ICMPV6),
                "nd_target" | "nd_sll" | "nd_tll" => (ETH_IPV6, P_ICMPV6),
                "mpls_label" | "mpls_tc" | "mpls_bos" => (ETH_MPLS, P_ANY),
                _ => (ETH_ANY, P_ANY),
            };
            p.eth &= eth;
            p.proto &= proto;
        }
        // ICMPv4 is only carried by IPv4, ICMPv6 only by IPv6.
        if p.proto == P_ICMP {
            p.eth &= ETH_IPV4;
        } else if p.proto == P_ICMPV6 {
            p.eth &= ETH_IPV6;
        }
        if p.eth & ETH_IP == 0 && p.proto != P_ANY {
            // An IP protocol was required of a non-IP packet.
            p.eth = 0;
        }
        p
    }

    /// Whether some packet satisfies these prerequisites.
    pub(crate) fn satisfiable(self) -> bool {
        self.eth != 0 && self.proto != 0
    }

    /// Whether one packet can meet both.
    pub(crate) fn compatible(self, other: Prereq) -> bool {
        Prereq {
            eth: self.eth & other.eth,
            proto: self.proto & other.proto,
        }
        .satisfiable()
    }
}

/// Whether some packet can match `matches` at all (its `ct_state` is one conntrack can produce and
/// its fields' prerequisites agree).
pub(crate) fn satisfiable(matches: &Matches) -> bool {
    matches
        .get("ct_state")
        .is_none_or(|m| close_ct_state(m.value, m.mask).is_some())
        && Prereq::of(matches).satisfiable()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the flow matches on `conj_id`: it is reached through its conjunction only, so it never
    /// competes with flows that do not (ovs-fields(7), "Conjunctive Match Fields").
    fn matches_conj_id(matches: &Matches) -> bool {
        matches.iter().any(|m| m.field == "conj_id" && m.mask != 0)
    }

    /// Whether two flows of one table and priority can both match one packet, beyond their shared
    /// fields' values (which the index compares): prerequisites agree, and either both or neither
    /// are reached through a conjunction.
    fn may_meet(a: &Matches, b: &Matches) -> bool {
        matches_conj_id(a) == matches_conj_id(b) && Prereq::of(a).compatible(Prereq::of(b))
    }

    /// Brute force: every value of the eight defined flags that conntrack can produce.
    fn valid(s: u128) -> bool {
        let has = |f| s & f != 0;
        (has(TRK) || s == 0)
            && (!has(INV) || s & NOT_WITH_INV == 0)
            && !(has(NEW) && has(EST))
            && !(has(NEW) && has(RPL))
    }

    fn admits(v: u128, m: u128, s: u128) -> bool {
        s & m == v & m
    }

    /// The closure is exact: it admits the same valid states as the raw constraint, fixes every
    /// flag those states agree on, and is `None` exactly when none is valid.
    #[test]
    fn ct_state_closure_is_exact_against_brute_force() {
        let flags = [NEW, EST, REL, RPL, INV, TRK, SNAT, DNAT];
        // Every constraint over the defined flags: each flag set, clear or wildcarded.
        for code in 0..3u32.pow(8) {
            let (mut v, mut m, mut c) = (0u128, 0u128, code);
            for f in flags {
                match c % 3 {
                    1 => {
                        v |= f;
                        m |= f;
                    }
                    2 => m |= f,
                    _ => {}
                }
                c /= 3;
            }
            let states: Vec<u128> = (0..256).filter(|s| valid(*s) && admits(v, m, *s)).collect();
            match close_ct_state(v, m) {
                None => assert!(states.is_empty(), "{v:#x}/{m:#x}"),
                Some((cv, cm)) => {
                    assert!(!states.is_empty(), "{v:#x}/{m:#x}");
                    for s in 0..256u128 {
                        if valid(s) {
                            assert_eq!(admits(v, m, s), admits(cv, cm, s), "{v:#x}/{m:#x} {s:#x}");
                        }
                    }
                    for f in flags {
                        let all_set = states.iter().all(|s| s & f != 0);
                        let all_clear = states.iter().all(|s| s & f == 0);
                        assert_eq!(cm & f != 0, all_set || all_clear, "{v:#x}/{m:#x} {f:#x}");
                    }
                }
            }
        }
    }

    #[test]
    fn ct_state_exclusions() {
        // +inv never with +est, +new, +rel, +rpl.
        for f in [EST, NEW, REL, RPL] {
            assert_eq!(close_ct_state(INV | f, INV | f), None);
        }
        assert_eq!(close_ct_state(NEW | EST, NEW | EST), None);
        assert_eq!(close_ct_state(NEW | RPL, NEW | RPL), None);
        // -trk excludes everything else.
        assert_eq!(close_ct_state(EST, TRK | EST), None);
        // +est implies +trk, -new, -inv.
        let (v, m) = close_ct_state(EST, EST).unwrap();
        assert_eq!(v & m, EST | TRK);
        assert_eq!(m & (NEW | INV), NEW | INV);
        // Possible combinations stay possible.
        assert!(close_ct_state(NEW | REL | TRK, NEW | REL | TRK).is_some());
        assert!(close_ct_state(EST | RPL | REL, EST | RPL | REL).is_some());
        assert!(close_ct_state(0, TRK).is_some());
    }

    fn ms(fields: &[(&'static str, u128, u8)]) -> Matches {
        Matches::new(fields.iter().map(|(f, v, l)| FieldMatch::exact(f, *v, *l)))
    }

    #[test]
    fn prerequisites_separate_protocols() {
        let arp_op = ms(&[("arp_op", 1, 2)]);
        let ip = ms(&[("dl_type", 0x0800, 2)]);
        let nw_src = ms(&[("nw_src", 0x0a00_0001, 4)]);
        let ipv6 = ms(&[("dl_type", 0x86dd, 2)]);
        let tp_dst = ms(&[("tp_dst", 80, 2)]);
        let udp = ms(&[("dl_type", 0x0800, 2), ("nw_proto", 17, 1)]);
        let icmp = ms(&[("nw_proto", 1, 1)]);
        let nd = ms(&[("nd_target", 1, 16)]);
        let empty = Matches::default();
        assert!(!may_meet(&arp_op, &ip));
        assert!(!may_meet(&nw_src, &ipv6));
        assert!(!may_meet(&nw_src, &arp_op));
        assert!(!may_meet(&tp_dst, &icmp));
        assert!(!may_meet(&icmp, &ipv6));
        assert!(!may_meet(&nd, &ip));
        // Real overlaps are still found.
        assert!(may_meet(&tp_dst, &udp));
        assert!(may_meet(&nw_src, &ip));
        assert!(may_meet(&empty, &arp_op));
        assert!(may_meet(&nd, &ipv6));
        assert!(may_meet(&tp_dst, &ip));
        // A flow whose own fields contradict matches nothing.
        assert!(!satisfiable(&ms(&[
            ("dl_type", 0x0806, 2),
            ("nw_src", 1, 4)
        ])));
        assert!(!satisfiable(&ms(&[
            ("dl_type", 0x0800, 2),
            ("ct_state", INV | EST, 4)
        ])));
        assert!(satisfiable(&ms(&[
            ("dl_type", 0x0800, 2),
            ("nw_src", 1, 4)
        ])));
    }

    #[test]
    fn conj_id_flows_meet_only_conj_id_flows() {
        let c = ms(&[("conj_id", 7, 4), ("dl_type", 0x0800, 2)]);
        let d = ms(&[("conj_id", 8, 4), ("dl_type", 0x0800, 2)]);
        let plain = ms(&[("dl_type", 0x0800, 2)]);
        assert!(!may_meet(&c, &plain));
        assert!(may_meet(&c, &d));
        assert!(may_meet(&plain, &plain));
    }
}
