//! Decoder and renderer tests on genetlink bytes (built like the kernel lays them out, checked
//! against lines `ovs-dpctl dump-flows` printed in the kernel-datapath guest).

use super::OvsDpError;
use super::decode;
use super::genl::{OvsMessage, push_attr, walk_datagram};
use super::render::render_megaflows;
use super::uapi::{action, dp_attr, flow_attr, key, vport_attr};
use netlink_packet_generic::GenlMessage;

fn msg(attrs: Vec<u8>) -> OvsMessage {
    OvsMessage {
        cmd: 1,
        version: 1,
        dp_ifindex: 7,
        attrs,
    }
}

fn u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

fn dp_attrs() -> Vec<u8> {
    let mut a = Vec::new();
    push_attr(&mut a, dp_attr::NAME, b"ovs-system\0");
    push_attr(&mut a, dp_attr::STATS, &u64s(&[18, 11, 0, 9]));
    let mut mf = u64s(&[68]);
    mf.extend_from_slice(&6u32.to_ne_bytes());
    mf.extend_from_slice(&0u32.to_ne_bytes());
    mf.extend_from_slice(&u64s(&[5, 0]));
    push_attr(&mut a, dp_attr::MEGAFLOW_STATS, &mf);
    push_attr(&mut a, 200, b"from a newer kernel");
    a
}

#[test]
fn datapath_stats() {
    let dp = decode::datapath(&msg(dp_attrs())).unwrap();
    assert_eq!(dp.name, "ovs-system");
    assert_eq!(dp.ifindex, 7);
    assert_eq!((dp.hit, dp.missed, dp.lost, dp.flows), (18, 11, 0, 9));
    assert_eq!((dp.masks, dp.mask_hit, dp.cache_hit), (6, 68, 5));
}

#[test]
fn truncated_attributes_are_errors() {
    let a = dp_attrs();
    for cut in [1, 5, 17, a.len() - 3] {
        let r = decode::datapath(&msg(a[..cut].to_vec()));
        assert!(r.is_err(), "cut at {cut} decoded");
    }
    // A stats struct shorter than the kernel's.
    let mut short = Vec::new();
    push_attr(&mut short, dp_attr::NAME, b"dp\0");
    push_attr(&mut short, dp_attr::STATS, &u64s(&[1, 2]));
    assert!(matches!(
        decode::datapath(&msg(short)),
        Err(OvsDpError::Decode(_))
    ));
}

#[test]
fn vport_with_stats_and_upcalls() {
    let mut a = Vec::new();
    push_attr(&mut a, vport_attr::PORT_NO, &2u32.to_ne_bytes());
    push_attr(&mut a, vport_attr::TYPE, &1u32.to_ne_bytes());
    push_attr(&mut a, vport_attr::NAME, b"v1\0");
    push_attr(
        &mut a,
        vport_attr::STATS,
        &u64s(&[10, 20, 1000, 2000, 1, 2, 3, 4]),
    );
    push_attr(&mut a, vport_attr::IFINDEX, &5u32.to_ne_bytes());
    let mut up = Vec::new();
    push_attr(&mut up, vport_attr::UPCALL_SUCCESS, &u64s(&[300]));
    push_attr(&mut up, vport_attr::UPCALL_FAIL, &u64s(&[2]));
    push_attr(&mut up, 9, &u64s(&[99]));
    push_attr(&mut a, vport_attr::UPCALL_STATS | 0x8000, &up);
    let v = decode::vport(&msg(a)).unwrap();
    assert_eq!(
        (v.port_no, v.name.as_str(), v.kind.as_str()),
        (2, "v1", "netdev")
    );
    assert_eq!(v.stats.rx_packets, 10);
    assert_eq!(v.stats.tx_dropped, 4);
    assert_eq!(v.ifindex, Some(5));
    assert_eq!(v.upcalls, Some((300, 2)));
    assert!(decode::vport(&msg(Vec::new())).is_err());
}

fn flow(
    key_attrs: &[(u16, Vec<u8>)],
    mask_attrs: &[(u16, Vec<u8>)],
    actions: &[(u16, Vec<u8>)],
) -> OvsMessage {
    let nest = |l: &[(u16, Vec<u8>)]| {
        let mut b = Vec::new();
        for (k, v) in l {
            push_attr(&mut b, *k, v);
        }
        b
    };
    let mut a = Vec::new();
    push_attr(&mut a, flow_attr::KEY | 0x8000, &nest(key_attrs));
    push_attr(&mut a, flow_attr::UFID, &[0xa4; 16]);
    push_attr(&mut a, flow_attr::MASK | 0x8000, &nest(mask_attrs));
    push_attr(&mut a, flow_attr::STATS, &u64s(&[1, 98]));
    push_attr(&mut a, flow_attr::USED, &u64s(&[10_000]));
    push_attr(&mut a, flow_attr::ACTIONS | 0x8000, &nest(actions));
    msg(a)
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, tos: u8, ttl: u8, frag: u8) -> Vec<u8> {
    let mut v = src.to_vec();
    v.extend_from_slice(&dst);
    v.extend_from_slice(&[proto, tos, ttl, frag]);
    v
}

/// The key/mask layout vswitchd installs for "icmp to 10.0.0.99 from port 2".
fn icmp_drop_flow(actions: &[(u16, Vec<u8>)]) -> OvsMessage {
    let k = [
        (key::RECIRC_ID, 0u32.to_ne_bytes().to_vec()),
        (key::DP_HASH, 0u32.to_ne_bytes().to_vec()),
        (key::PRIORITY, 0u32.to_ne_bytes().to_vec()),
        (key::IN_PORT, 2u32.to_ne_bytes().to_vec()),
        (key::SKB_MARK, 0u32.to_ne_bytes().to_vec()),
        (
            key::ETHERNET,
            vec![
                6, 0xff, 1, 0x72, 0x6e, 0xe9, 0xa6, 0x74, 4, 0x86, 0xcc, 0x87,
            ],
        ),
        (key::ETHERTYPE, vec![0x08, 0x00]),
        (key::IPV4, ipv4([10, 0, 0, 1], [10, 0, 0, 99], 1, 0, 64, 0)),
        (key::ICMP, vec![8, 0]),
    ];
    let m = [
        (key::RECIRC_ID, u32::MAX.to_ne_bytes().to_vec()),
        (key::DP_HASH, 0u32.to_ne_bytes().to_vec()),
        (key::PRIORITY, 0u32.to_ne_bytes().to_vec()),
        (key::IN_PORT, u32::MAX.to_ne_bytes().to_vec()),
        (key::SKB_MARK, 0u32.to_ne_bytes().to_vec()),
        (key::ETHERNET, vec![0; 12]),
        (key::ETHERTYPE, vec![0xff, 0xff]),
        (key::IPV4, ipv4([0; 4], [255; 4], 0xff, 0, 0, 0xff)),
        (key::ICMP, vec![0, 0]),
    ];
    flow(&k, &m, actions)
}

#[test]
fn megaflow_renders_like_ovs_dpctl() {
    let f = decode::megaflow(&icmp_drop_flow(&[])).unwrap();
    assert!(f.is_drop());
    assert_eq!(f.ufid.as_deref(), Some(&[0xa4; 16][..]));
    assert_eq!(
        render_megaflows(&[f], 12_453),
        "recirc_id(0),in_port(2),eth(),eth_type(0x0800),ipv4(dst=10.0.0.99,proto=1,frag=no), \
         packets:1, bytes:98, used:2.453s, actions:drop\n"
    );
}

#[test]
fn partial_masks_and_outputs() {
    let k = [
        (key::RECIRC_ID, 0u32.to_ne_bytes().to_vec()),
        (key::IN_PORT, 3u32.to_ne_bytes().to_vec()),
        (
            key::ETHERNET,
            vec![
                0xa6, 0x74, 4, 0x86, 0xcc, 0x87, 6, 0xff, 1, 0x72, 0x6e, 0xe9,
            ],
        ),
        (key::ETHERTYPE, vec![0x08, 0x00]),
        // The kernel reports keys already masked.
        (key::IPV4, ipv4([0; 4], [10, 0, 0, 0], 17, 0, 0, 0)),
        (key::UDP, vec![0, 0, 0x40, 0x00]),
        (32, vec![0, 0]),
    ];
    let m = [
        (key::RECIRC_ID, u32::MAX.to_ne_bytes().to_vec()),
        (key::IN_PORT, u32::MAX.to_ne_bytes().to_vec()),
        (key::ETHERNET, vec![0xff; 12]),
        (key::ETHERTYPE, vec![0xff, 0xff]),
        (
            key::IPV4,
            ipv4([0; 4], [255, 255, 255, 192], 0xff, 0, 0, 0xff),
        ),
        (key::UDP, vec![0, 0, 0xe0, 0]),
        (32, vec![0, 0]),
    ];
    let a = [
        (action::OUTPUT, 1u32.to_ne_bytes().to_vec()),
        (action::OUTPUT, 3u32.to_ne_bytes().to_vec()),
    ];
    let mut f = decode::megaflow(&flow(&k, &m, &a)).unwrap();
    f.used_ms = None;
    f.packets = 0;
    f.bytes = 0;
    assert!(!f.is_drop());
    assert_eq!(
        render_megaflows(&[f], 0),
        "recirc_id(0),in_port(3),eth(src=a6:74:04:86:cc:87,dst=06:ff:01:72:6e:e9),eth_type(0x0800),\
         ipv4(dst=10.0.0.0/255.255.255.192,proto=17,frag=no),udp(dst=16384/0xe000),key32(00 00/00 00), \
         packets:0, bytes:0, used:never, actions:1,3\n"
    );
}

#[test]
fn truncated_flow_key_is_an_error() {
    let m = icmp_drop_flow(&[]);
    for cut in [3, 9, m.attrs.len() / 2, m.attrs.len() - 1] {
        let r = decode::megaflow(&msg(m.attrs[..cut].to_vec()));
        assert!(r.is_err(), "cut at {cut} decoded");
    }
}

/// A whole datagram: two flow messages and NLMSG_DONE, then truncated variants.
#[test]
fn datagram_walk() {
    fn nl(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(payload);
        b.resize(b.len().div_ceil(4) * 4, 0);
        b
    }
    let f = icmp_drop_flow(&[]);
    let mut genl = vec![1u8, 1, 0, 0];
    genl.extend_from_slice(&7i32.to_ne_bytes());
    genl.extend_from_slice(&f.attrs);
    let mut d = nl(30, 2, 9, &genl);
    d.extend(nl(30, 2, 9, &genl));
    d.extend(nl(3, 2, 9, &0i32.to_ne_bytes()));
    let mut n = 0;
    let done = walk_datagram::<OvsMessage>(&d, 9, &mut |m: GenlMessage<OvsMessage>| {
        decode::megaflow(&m.payload)?;
        n += 1;
        Ok(())
    })
    .unwrap();
    assert!(done);
    assert_eq!(n, 2);
    // Every truncation is an error or an incomplete walk, never a panic.
    for cut in 0..d.len() {
        let _ = walk_datagram::<OvsMessage>(&d[..cut], 9, &mut |m: GenlMessage<OvsMessage>| {
            decode::megaflow(&m.payload).map(|_| ())
        });
    }
    // Kernel error reply.
    let mut e = (-19i32).to_ne_bytes().to_vec();
    e.extend_from_slice(&[0; 16]);
    let err = walk_datagram::<OvsMessage>(&nl(2, 0, 9, &e), 9, &mut |_| Ok(())).unwrap_err();
    assert!(matches!(err, OvsDpError::Kernel { errno: 19, .. }), "{err}");
}

/// Datagrams captured in the kernel-datapath guest (Debian kernel 6.1, OVS 3.1) with
/// `pinflow flows --datapath --capture`: three `nlctrl` replies (each + ACK), then the datapath,
/// vport and flow dumps (each + DONE), one datagram per line.
fn captured() -> Vec<Vec<u8>> {
    include_str!("fixtures/guest-6.1-dump.hex")
        .lines()
        .map(|l| {
            (0..l.len() / 2)
                .map(|i| u8::from_str_radix(&l[2 * i..2 * i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

fn decode_captured(d: &[u8]) -> Vec<OvsMessage> {
    let seq = u32::from_ne_bytes([d[8], d[9], d[10], d[11]]);
    let mut out = Vec::new();
    walk_datagram::<OvsMessage>(d, seq, &mut |m: GenlMessage<OvsMessage>| {
        out.push(m.payload);
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn captured_guest_dumps_decode_and_render_like_ovs_dpctl() {
    let c = captured();
    assert_eq!(c.len(), 12);
    let dps: Vec<_> = decode_captured(&c[6])
        .iter()
        .map(|m| decode::datapath(m).unwrap())
        .collect();
    assert_eq!(dps.len(), 1);
    assert_eq!(dps[0].name, "ovs-system");
    assert!(dps[0].hit > 0 && dps[0].flows == 8, "{:?}", dps[0]);
    let vports: Vec<_> = decode_captured(&c[8])
        .iter()
        .map(|m| decode::vport(m).unwrap())
        .collect();
    let names: Vec<&str> = vports.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["ovs-system", "br0", "v1", "v2"]);
    assert_eq!(vports[2].port_no, 2);
    let flows: Vec<_> = decode_captured(&c[10])
        .iter()
        .map(|m| decode::megaflow(m).unwrap())
        .collect();
    assert_eq!(flows.len(), 8);
    let norm = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| {
                let (a, b) = l.split_once(", used:").unwrap();
                let rest = b.split_once(',').map_or("", |x| x.1);
                format!("{a},{rest}")
            })
            .collect()
    };
    let ours = render_megaflows(&flows, 0);
    assert_eq!(
        norm(&ours),
        norm(include_str!("fixtures/guest-6.1-ovs-dpctl.txt"))
    );
    // Every truncation of every captured datagram: an error or a short walk, never a panic.
    for d in &c {
        for cut in 0..d.len() {
            let _ = walk_datagram::<OvsMessage>(&d[..cut], 0, &mut |m: GenlMessage<OvsMessage>| {
                let _ = decode::megaflow(&m.payload);
                let _ = decode::vport(&m.payload);
                let _ = decode::datapath(&m.payload);
                Ok(())
            });
        }
    }
}

/// On a host without the openvswitch module the family lookup says so (and loads nothing).
#[test]
fn missing_module_is_reported_not_loaded() {
    let Ok(mut c) = super::DatapathClient::open() else {
        println!("SKIP: no generic netlink socket here");
        return;
    };
    let had_module = std::path::Path::new("/sys/module/openvswitch").exists();
    match c.resolve() {
        Ok(f) => assert!(f.datapath != 0 && f.vport != 0 && f.flow != 0),
        Err(OvsDpError::NoFamily(name)) => {
            assert_eq!(name, "ovs_datapath");
            assert!(!had_module);
            assert!(
                !std::path::Path::new("/sys/module/openvswitch").exists(),
                "resolving must not load the module"
            );
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// Datagrams captured on Debian's 6.12 kernel: `nlctrl` family dump, then the datapath, vport and
/// flow dumps. This kernel also sends per-vport upcall statistics and the vport ifindex.
#[test]
fn captured_guest_6_12_dumps_decode_by_family() {
    use super::genl::CtrlFamily;
    let datagrams: Vec<Vec<u8>> = include_str!("fixtures/guest-6.12-dump.hex")
        .lines()
        .map(|l| {
            (0..l.len() / 2)
                .map(|i| u8::from_str_radix(&l[2 * i..2 * i + 2], 16).unwrap())
                .collect()
        })
        .collect();
    let mut families = std::collections::HashMap::new();
    let (mut dps, mut vports, mut flows) = (Vec::new(), Vec::new(), Vec::new());
    for d in &datagrams {
        let ty = u16::from_ne_bytes([d[4], d[5]]);
        let seq = u32::from_ne_bytes([d[8], d[9], d[10], d[11]]);
        if ty == 16 {
            walk_datagram::<CtrlFamily>(d, seq, &mut |m: GenlMessage<CtrlFamily>| {
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
        walk_datagram::<OvsMessage>(d, seq, &mut |m: GenlMessage<OvsMessage>| {
            match families.get(&m.resolved_family_id()).map(String::as_str) {
                Some("ovs_datapath") => dps.push(decode::datapath(&m.payload)?),
                Some("ovs_vport") => vports.push(decode::vport(&m.payload)?),
                Some("ovs_flow") => flows.push(decode::megaflow(&m.payload)?),
                other => panic!("message of family {other:?}"),
            }
            Ok(())
        })
        .unwrap();
    }
    assert!(families.values().any(|n| n == "ovs_flow"));
    assert_eq!(dps.len(), 1);
    assert_eq!(dps[0].flows as usize, flows.len());
    let v2 = vports.iter().find(|v| v.name == "v2").expect("vport v2");
    assert_eq!(v2.port_no, 3);
    assert!(v2.ifindex.is_some(), "6.12 reports the vport ifindex");
    let (ok, fail) = v2.upcalls.expect("6.12 reports per-vport upcall stats");
    assert!(ok >= 3000 && fail == 0, "upcall storm from v2: {ok}/{fail}");
    let norm = |s: &str| -> Vec<String> {
        let mut v: Vec<String> = s
            .lines()
            .map(|l| {
                let (a, b) = l.split_once(", used:").unwrap();
                format!("{a},{}", b.split_once(',').map_or("", |x| x.1))
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        norm(&render_megaflows(&flows, 0)),
        norm(include_str!("fixtures/guest-6.12-ovs-dpctl.txt"))
    );
}

/// Found by the `genetlink` fuzz target: an `nlctrl` family dump whose op-policy attribute is
/// truncated made netlink-packet-generic's `GenlCtrl` parser panic (slice index out of range). The
/// family dump is now read with pinflow's own bounds-checked walk: an error or the families that
/// are whole, never a panic.
#[test]
fn truncated_nlctrl_policy_is_not_a_panic() {
    use super::genl::CtrlFamily;
    let d: &[u8] = include_bytes!("fixtures/fuzz-nlctrl-truncated-policy.bin");
    let seq = u32::from_ne_bytes([d[8], d[9], d[10], d[11]]);
    let mut names = Vec::new();
    let r = walk_datagram::<CtrlFamily>(d, seq, &mut |m: GenlMessage<CtrlFamily>| {
        names.push(m.payload.name);
        Ok(())
    });
    // Its first message is a whole `nlctrl` family entry.
    assert!(
        r.is_err() || names.first() == Some(&Some("nlctrl".to_string())),
        "{r:?} {names:?}"
    );
    for cut in 0..d.len() {
        let _ = walk_datagram::<CtrlFamily>(&d[..cut], seq, &mut |_| Ok(()));
    }
}
