//! Entry points for the cargo-fuzz targets in `fuzz/` (hidden from the docs; not an API).
//!
//! Each function feeds arbitrary bytes to one decoder the way the daemon feeds it what it reads
//! (a socket, a netlink datagram, a file), then renders or queries what came out, so that every
//! decoding and rendering path sees the fuzzer's bytes. None of them may panic, overflow (the
//! targets are built with overflow checks) or run away in time or memory, whatever the input.

use crate::model::openflow::render::{self, LineRenderer};
use crate::model::openflow::{actions, oxm};
use crate::sources::openflow::wire::{self, MultipartReply};
use crate::sources::ovs_dp::genl::OvsMessage;
use crate::sources::ovs_dp::{decode, genl};

/// The OVSDB message limit the daemon uses (`OvsdbOptions::max_message_bytes`).
fn ovsdb_limit() -> usize {
    crate::sources::ovsdb::OvsdbOptions::new("/").max_message_bytes
}

/// A libvirt live status file (`/run/libvirt/qemu/NAME.xml`), as `read_domstatus` passes it on.
pub fn libvirt_xml(data: &[u8]) {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = crate::sources::libvirt::parse_domstatus(xml) {
        let _ = format!("{d:?}");
    }
}

/// Splits `data` the way the OpenFlow client splits its socket stream, calling `each` on every
/// multipart reply.
fn multipart_replies(data: &[u8], mut each: impl FnMut(&MultipartReply<'_>)) {
    let mut buf = data.to_vec();
    while let Ok(Some(m)) = wire::take_message(&mut buf, wire::MAX_MESSAGE_LEN) {
        match m.header.msg_type {
            wire::OFPT_MULTIPART_REPLY => {
                if let Ok(mp) = MultipartReply::parse(&m.body) {
                    each(&mp);
                }
            }
            wire::OFPT_ERROR => {
                let _ = wire::ErrorMsg::parse(&m.body).map(|e| e.to_string());
            }
            wire::OFPT_FEATURES_REPLY => {
                let _ = wire::Features::parse(&m.body);
            }
            wire::OFPT_HELLO => {
                let _ = wire::hello_bitmap(&m.body);
            }
            _ => {}
        }
    }
}

/// An OpenFlow 1.3 byte stream from a switch holding flow-stats (and port-desc) replies: decoded
/// into flows as the mirror does (each flow's text rendered from its stored wire form) and
/// rendered straight to lines as `pinflow flows` does.
pub fn openflow_flow_stats(data: &[u8]) {
    let mut lines = LineRenderer::default();
    multipart_replies(data, |mp| match mp.mp_type {
        wire::OFPMP_FLOW => {
            let mut flows = Vec::new();
            let mut bad = Vec::new();
            let _ = render::decode_flow_stats(mp.body, &mut flows, &mut bad);
            for b in &bad {
                let _ = b.raw_hex();
            }
            for f in &flows {
                let _ = render::stats_line(f);
                let _ = f.entry.actions();
            }
            let mut out = String::new();
            let _ = lines.push_flow_stats(mp.body, true, &mut out);
            let _ = lines.push_flow_stats(mp.body, false, &mut out);
        }
        wire::OFPMP_PORT_DESC => {
            let _ = wire::parse_port_descs(mp.body);
        }
        _ => {}
    });
}

/// An OpenFlow 1.3 byte stream holding ONF flow-monitor replies (`nx_flow_update_*` records).
pub fn openflow_flow_monitor(data: &[u8]) {
    multipart_replies(data, |mp| {
        let mut ups = Vec::new();
        let _ = render::decode_flow_updates(mp.body, &mut ups, &mut Vec::new());
        for u in &ups {
            match u {
                render::FlowUpdate::Added(e)
                | render::FlowUpdate::Deleted(e)
                | render::FlowUpdate::Modified(e) => {
                    let _ = e.text();
                    let _ = e.actions();
                }
                render::FlowUpdate::Abbreviated { .. } => {}
            }
        }
    });
}

/// A flow's match and instructions in the stored wire form (`flags`, match TLV length, OXM/NXM
/// TLVs, OF1.3 instructions): the match decoded, rendered and turned into field matches; the
/// instructions and a bare action list decoded and rendered.
pub fn oxm_actions(data: &[u8]) {
    let mut r = crate::model::openflow::bytes::Rd::new(data, "fuzz input");
    let (Ok(priority), Ok(tlv_len)) = (r.u16(), r.u16()) else {
        return;
    };
    let Ok(tlvs) = r.take(usize::from(tlv_len)) else {
        return;
    };
    if let Ok(m) = oxm::Match::decode_tlvs(tlvs) {
        let mut text = String::new();
        oxm::render_match(&mut text, &m, priority);
        let _ = m.field_matches();
    }
    let mut text = String::new();
    let mut acts = Vec::new();
    let _ = actions::decode_instructions(r.rest(), &mut text, &mut acts);
    text.clear();
    acts.clear();
    let _ = actions::decode_actions(r.rest(), &mut text, &mut acts);
}

/// Feeds `data` to an OVSDB JSON-RPC framer in chunks whose sizes come from the first byte, and
/// applies every framed message that looks like a monitor reply or `update` notification to a
/// replica, then derives the bridges from it (as the OVSDB source does).
pub fn ovsdb(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut framer = crate::sources::ovsdb::JsonFramer::new(ovsdb_limit());
    let mut state = crate::sources::ovsdb::OvsdbState::new();
    for part in stream.chunks(chunk) {
        if framer.push(part).is_err() {
            return;
        }
        loop {
            match framer.next_message() {
                Ok(Some(v)) => {
                    let updates = v
                        .get("result")
                        .or_else(|| v.get("params").and_then(|p| p.get(1)));
                    if let Some(u) = updates {
                        let _ = state.apply_update(u);
                    } else {
                        let _ = state.apply_update(&v);
                    }
                    let _ = state.bridges();
                    let _ = state.interfaces();
                    let _ = state.links();
                    let _ = state.ovs_version();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// A generic netlink datagram from the kernel (the sequence number of its first message is the one
/// awaited): every OVS message decoded as a datapath, a vport and a megaflow, megaflows rendered
/// like `ovs-dpctl`; the same datagram walked as an `nlctrl` family dump.
pub fn genetlink(data: &[u8]) {
    let seq = data
        .get(8..12)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let _ = genl::walk_datagram::<OvsMessage>(data, seq, &mut |m| {
        let p = &m.payload;
        let _ = decode::datapath(p);
        let _ = decode::vport(p);
        if let Ok(f) = decode::megaflow(p) {
            let mut out = String::new();
            crate::sources::ovs_dp::render::render_megaflow(&mut out, &f, 1_000_000);
        }
        let _ = genl::attr_list(&p.attrs);
        Ok(())
    });
    let _ = genl::walk_datagram::<genl::CtrlFamily>(data, seq, &mut |m| {
        let _ = format!("{:?}", m.payload);
        Ok(())
    });
}

/// A CPU list (`cpuset.cpus`, `Cpus_allowed_list`, libvirt `cpuset=`) or hex mask
/// (`Cpus_allowed`): parsed, rendered, re-parsed (the rendering must parse back to the same set).
pub fn cpuset(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for set in [
        s.parse::<crate::model::cpuset::CpuSet>(),
        crate::model::cpuset::CpuSet::from_hex_mask(s),
    ]
    .into_iter()
    .flatten()
    {
        let text = set.to_string();
        let back: Result<crate::model::cpuset::CpuSet, _> = text.parse();
        assert_eq!(back.as_ref(), Ok(&set), "{text:?} does not parse back");
        let other = crate::model::cpuset::CpuSet::single(set.len() as u32 % 64);
        let _ = set.intersects(&other);
        let _ = set.intersection(&other);
    }
}

/// A configuration file's text (`--config`), parsed and validated as `Config::load` does.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::config::Config::parse(text);
}

/// ovs-vswitchd's and ovsdb-server's unixctl sockets: the byte stream split into replies as the
/// client does (its bound), each reply's text, and the whole input as text, through the
/// `coverage/show`, `memory/show` (both daemons'), `upcall/show` and `bond/show` parsers; and the
/// input split at its first NUL as a
/// `/proc/PID/stat` and `status` pair.
pub fn ovs_unixctl(data: &[u8]) {
    use crate::sources::ovs_vswitchd::{MAX_REPLY_BYTES, parse, process, reply_text};
    let text = String::from_utf8_lossy(data);
    let parse_all = |t: &str| {
        let _ = parse::coverage_subset(t);
        let _ = parse::memory(t);
        let _ = parse::upcall(t);
        let _ = parse::bonds(t);
        let _ = parse::ovsdb_server_memory(t);
        let _ = parse::coverage_of(t, &crate::model::ovs_vswitchd::OVSDB_SERVER_COVERAGE_EVENTS);
    };
    parse_all(&text);
    let mut framer = crate::sources::ovsdb::JsonFramer::new(MAX_REPLY_BYTES);
    if framer.push(data).is_ok() {
        while let Ok(Some(v)) = framer.next_message() {
            if let Ok(t) = reply_text("x", &v) {
                parse_all(&t);
            }
        }
    }
    let (stat, status) = text.split_once('\0').unwrap_or((&text, ""));
    let _ = process::parse(1, stat, status, 100.0);
}

#[cfg(test)]
mod tests {
    /// Inputs that once panicked (found by tests/tests/fuzz_smoke.rs), as hex.
    #[test]
    fn past_findings_stay_fixed() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len() / 2)
                .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
                .collect()
        };
        // A netlink error whose code is i32::MIN: negating it overflowed.
        super::genetlink(&hex(
            "240000000200000104000100eb0000000000008024000000100005000400000000000000",
        ));
    }
}
