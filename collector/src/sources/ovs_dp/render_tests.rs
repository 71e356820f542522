//! Renderer tests: the hand-made megaflows of the kernel-datapath guest's `dp1` (every key and
//! action kind `ovs-dpctl` 3.1 can install, dumped by the guest's kernel) against the text
//! `ovs-dpctl dump-flows` printed for them, and the kinds no guest flow carries against the text
//! OVS's `format_odp_action`/`format_odp_key_attr` produce for them.

use super::decode;
use super::genl::{CtrlFamily, OvsMessage, push_attr, walk_datagram};
use super::render::{render_actions, render_key, render_megaflows};
use super::uapi::{action, key};
use crate::model::datapath::{Megaflow, RawAttr};
use netlink_packet_generic::GenlMessage;

/// The megaflows of a `pinflow flows --datapath --capture` file, decoded by family.
fn captured_flows(hex: &str) -> Vec<Megaflow> {
    let mut families = std::collections::HashMap::new();
    let mut flows = Vec::new();
    for l in hex.lines() {
        let d: Vec<u8> = (0..l.len() / 2)
            .map(|i| u8::from_str_radix(&l[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let ty = u16::from_ne_bytes([d[4], d[5]]);
        let seq = u32::from_ne_bytes([d[8], d[9], d[10], d[11]]);
        if ty == 16 {
            walk_datagram::<CtrlFamily>(&d, seq, &mut |m: GenlMessage<CtrlFamily>| {
                if let CtrlFamily {
                    name: Some(n),
                    id: Some(i),
                } = m.payload
                {
                    families.insert(i, n);
                }
                Ok(())
            })
            .unwrap();
            continue;
        }
        walk_datagram::<OvsMessage>(&d, seq, &mut |m: GenlMessage<OvsMessage>| {
            if families.get(&m.resolved_family_id()).map(String::as_str) == Some("ovs_flow") {
                flows.push(decode::megaflow(&m.payload)?);
            }
            Ok(())
        })
        .unwrap();
    }
    flows
}

/// Lines without what legitimately differs between two dumps: the time since last use (and the
/// counters, for the same reason), sorted (the kernel's dump order is a hash-table walk).
fn norm(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(", packets:").unwrap();
            let rest = b.split_once(", used:").unwrap().1;
            format!("{a},{}", rest.split_once(',').map_or("", |x| x.1))
        })
        .collect();
    v.sort();
    v
}

/// Debian's 6.1 kernel, OVS 3.1: the `dp1` flows of `xtask/guest/scenario.sh` (tunnel keys with
/// Geneve/VXLAN-GBP/ERSPAN options and IPv6 endpoints, MPLS, NSH, every conntrack key including
/// both original tuples, VLAN encapsulation, ARP/ND, partial masks; set/set_masked of each
/// settable key, set(tunnel), set(nsh), ct with nat/mark/label/zone, clone, sample,
/// check_pkt_len nested twice, userspace with each OVS cookie, push/pop vlan, add_mpls,
/// push/pop nsh, trunc, meter, recirc, ct_clear, drop) render exactly as `ovs-dpctl dump-flows`.
#[test]
fn guest_dp1_megaflows_render_like_ovs_dpctl() {
    let flows = captured_flows(include_str!("fixtures/guest-6.1-dp1-dump.hex"));
    let want = include_str!("fixtures/guest-6.1-dp1-ovs-dpctl.txt");
    assert!(flows.len() >= 40, "{} flows", flows.len());
    assert_eq!(flows.len(), want.lines().count());
    let ours = render_megaflows(&flows, 0);
    for kind in [
        "tunnel(tun_id=",
        "geneve({",
        "vxlan(gbp(",
        "erspan(ver=2",
        "ipv6_dst=",
        "mpls(label=",
        "nsh(",
        "ct_state(",
        "ct_tuple4(",
        "ct_tuple6(",
        "ct_label(",
        "encap(",
        "arp(",
        "nd(",
        "set(tunnel(",
        "ct(commit,zone=5,mark=",
        "nat(src=",
        "clone(",
        "sample(sample=",
        "check_pkt_len(size=1500",
        "controller(",
        "flow_sample(",
        "push_nsh(",
        "add_mpls(",
        "push_vlan(tpid=0x88a8",
        "actions:drop",
    ] {
        assert!(ours.contains(kind), "no {kind} in\n{ours}");
    }
    assert_eq!(norm(&ours), norm(want));
}

/// Every truncation of every key, mask and action attribute of the guest's flows renders
/// without a panic.
#[test]
fn truncated_guest_attributes_never_panic() {
    let flows = captured_flows(include_str!("fixtures/guest-6.1-dp1-dump.hex"));
    let mut out = String::new();
    for f in &flows {
        for list in [&f.key, &f.mask, &f.actions] {
            for (i, a) in list.iter().enumerate() {
                for cut in 0..a.value.len() {
                    let mut l = list.clone();
                    l[i].value.truncate(cut);
                    out.clear();
                    render_key(&mut out, &l, &f.mask);
                    render_key(&mut out, &f.key, &l);
                    render_actions(&mut out, &l);
                }
            }
        }
    }
}

fn attr(kind: u16, value: Vec<u8>) -> RawAttr {
    RawAttr { kind, value }
}

fn nested(list: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in list {
        push_attr(&mut b, *k, v);
    }
    b
}

fn actions(list: Vec<RawAttr>) -> String {
    let mut s = String::new();
    render_actions(&mut s, &list);
    s
}

fn keys(list: Vec<RawAttr>) -> String {
    let mut s = String::new();
    render_key(&mut s, &list, &[]);
    s
}

/// Actions ovs-dpctl 3.1 cannot install (no parser: push/pop_mpls, push/pop_eth, hash) or that
/// the kernel numbers past OVS 3.1's enum (dec_ttl, drop, psample), as OVS formats them.
#[test]
fn actions_no_guest_flow_carries() {
    let lse = (10u32 << 12) | (1 << 9) | (1 << 8) | 64;
    let mut push_mpls = lse.to_be_bytes().to_vec();
    push_mpls.extend_from_slice(&[0x88, 0x47, 0, 0]);
    let mac = |last: u8| [2, 0, 0, 0, 0, last];
    let mut eth = mac(1).to_vec();
    eth.extend_from_slice(&mac(2));
    let hash = |alg: u32, basis: u32| {
        let mut v = alg.to_ne_bytes().to_vec();
        v.extend_from_slice(&basis.to_ne_bytes());
        v
    };
    assert_eq!(
        actions(vec![
            attr(action::PUSH_MPLS, push_mpls),
            attr(action::POP_MPLS, vec![0x08, 0x00]),
            attr(action::PUSH_ETH, eth),
            attr(action::POP_ETH, vec![]),
            attr(action::HASH, hash(0, 0)),
            attr(action::HASH, hash(1, 5)),
            attr(action::HASH, hash(7, 5)),
            attr(action::METER, 3u32.to_ne_bytes().to_vec()),
            attr(action::RECIRC, 0u32.to_ne_bytes().to_vec()),
        ]),
        "push_mpls(label=10,tc=1,ttl=64,bos=1,eth_type=0x8847),pop_mpls(eth_type=0x800),\
         push_eth(src=02:00:00:00:00:01,dst=02:00:00:00:00:02),pop_eth,hash(l4(0)),\
         hash(sym_l4(5)),hash(Unknown hash algorithm(7)),meter(3),recirc(0)"
    );
    let out2 = nested(&[(action::OUTPUT, 2u32.to_ne_bytes().to_vec())]);
    assert_eq!(
        actions(vec![
            attr(action::DEC_TTL, nested(&[(1, out2)])),
            attr(action::DROP, 0u32.to_ne_bytes().to_vec()),
            attr(
                25,
                nested(&[(1, 7u32.to_ne_bytes().to_vec()), (2, vec![0, 1, 2])])
            ),
        ]),
        "dec_ttl(le_1(2)),drop,psample(group=7,cookie=0x102)"
    );
    // Lengths OVS checks, and kinds it does not know.
    assert_eq!(
        actions(vec![
            attr(action::OUTPUT, vec![1, 0]),
            attr(30, vec![1, 2, 3, 4]),
            attr(0, vec![]),
        ]),
        "bad length 2, expected 4 for: action1(01 00),\
         bad length 4, expected -1 for: action30(01 02 03 04),\
         bad length 0, expected -1 for: action0"
    );
    // Nested lists that do not parse: what was whole, then the leftover bytes.
    assert_eq!(
        actions(vec![attr(
            action::CLONE,
            vec![8, 0, 1, 0, 2, 0, 0, 0, 9, 9]
        )]),
        "clone(2,***2 leftover bytes*** (0909))"
    );
    assert_eq!(
        actions(vec![
            attr(action::SAMPLE, vec![]),
            attr(action::CT, vec![7, 0, 2, 0, 1, 0, 0, 0])
        ]),
        "sample(error),ct(error)"
    );
}

/// Keys no guest flow carries: packet_type (userspace datapath), nd_ext (the kernel has none),
/// GTP-U options, NSH (ovs-dpctl 3.1 cannot parse an `nsh()` key), IPv6 addresses in glibc's
/// forms, a key of the wrong length.
#[test]
fn keys_no_guest_flow_carries() {
    let pt = ((1u32 << 16) | 0x0800).to_be_bytes().to_vec();
    assert_eq!(
        keys(vec![attr(key::PACKET_TYPE, pt)]),
        "packet_type(ns=1,id=0x800)"
    );
    assert_eq!(
        keys(vec![attr(30, vec![0, 0, 0, 5, 3, 0, 0, 0])]),
        "nd_ext(nd_reserved=0x5,nd_options_type=3)"
    );
    let mut v6: Vec<u8> = [0u8; 10].to_vec();
    v6.extend_from_slice(&[0xff, 0xff, 1, 2, 3, 4]);
    v6.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]);
    v6.extend_from_slice(&[0, 0, 0, 0, 6, 0, 64, 0]);
    assert_eq!(
        keys(vec![attr(key::IPV6, v6)]),
        "ipv6(src=::ffff:1.2.3.4,dst=2001:db8::1:0:0:1,label=0,proto=6,tclass=0,hlimit=64,frag=no)"
    );
    let mut erspan = 2u32.to_ne_bytes().to_vec();
    erspan.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x58]);
    let tun = nested(&[
        (2, vec![10, 0, 0, 1]),
        (4, vec![64]),
        (15, erspan),
        (16, vec![0x30, 255]),
    ]);
    assert_eq!(
        keys(vec![attr(key::TUNNEL, tun)]),
        "tunnel(dst=10.0.0.1,ttl=64,erspan(ver=2,dir=1,hwid=0x5),gtpu(flags=0x30,msgtype=255),flags(0))"
    );
    assert_eq!(
        keys(vec![
            attr(key::ETHERTYPE, vec![8, 0, 0]),
            attr(key::IN_PORT, 1u32.to_ne_bytes().to_vec())
        ]),
        "(bad key length 3, expected 2)(08 00 00)in_port(1)"
    );
    assert_eq!(keys(vec![]), "<empty>");
    let path = |spi: u32, si: u32| ((spi << 8) | si).to_be_bytes();
    let mut base = vec![0, 63, 1, 3];
    base.extend_from_slice(&path(0x10, 3));
    let md1: Vec<u8> = [1u32, 2, 3, 4]
        .iter()
        .flat_map(|c| c.to_be_bytes())
        .collect();
    assert_eq!(
        keys(vec![attr(key::NSH, nested(&[(1, base), (2, md1)]))]),
        "nsh(flags=0,ttl=63,mdtype=1,np=3,spi=0x10,si=3,c1=0x1,c2=0x2,c3=0x3,c4=0x4)"
    );
    let mut set_base = vec![0, 0, 0, 0];
    set_base.extend_from_slice(&path(0x30, 5));
    set_base.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        actions(vec![
            attr(
                action::SET_MASKED,
                nested(&[(key::NSH, nested(&[(1, set_base)]))])
            ),
            attr(18, vec![]),
        ]),
        "set(nsh(spi=0x30,si=5,c1=0x0,c2=0x0,c3=0x0,c4=0x0)),pop_nsh()"
    );
}
