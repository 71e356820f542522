//! The codec on captured switch→client sessions: split into messages by the framing here, then
//! decoded and rendered by [`crate::model::openflow`] exactly as `ovs-ofctl` printed them.

use super::wire::{self, MultipartReply, OFPT_MULTIPART_REPLY};
use crate::model::openflow::render::{
    FlowUpdate, LineRenderer, decode_flow_stats, decode_flow_updates, stats_line,
};

fn fixture(name: &str) -> Vec<u8> {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/openflow/");
    std::fs::read(format!("{p}{name}")).unwrap()
}

/// Splits a captured switch→client byte stream into multipart reply bodies.
fn replies(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut buf = stream.to_vec();
    let mut out = Vec::new();
    while let Some(m) = wire::take_message(&mut buf, wire::MAX_MESSAGE_LEN).unwrap() {
        if m.header.msg_type == OFPT_MULTIPART_REPLY {
            out.push(m.body);
        }
    }
    assert!(buf.is_empty());
    out
}

/// Decodes the flow-stats replies of the captured session `bin` and asserts each flow's text is a
/// line of `txt` (what `ovs-ofctl dump-flows` printed for the same switch), and no line is left.
fn assert_renders_like_ovs_ofctl(bin: &str, txt: &str) -> usize {
    let mut flows = Vec::new();
    for body in replies(&fixture(bin)) {
        let mp = MultipartReply::parse(&body).unwrap();
        decode_flow_stats(mp.body, &mut flows, &mut Vec::new()).unwrap();
    }
    let mut ours: Vec<String> = flows.iter().map(|f| f.entry.text()).collect();
    // Flows without unknown fields keep no TLVs: their text above came from the normalized match.
    let without_tlvs = flows
        .iter()
        .filter(|f| {
            crate::model::openflow::render::split_wire(f.entry.wire())
                .unwrap()
                .1
                .is_none()
        })
        .count();
    assert!(
        without_tlvs * 2 > flows.len(),
        "{bin}: {without_tlvs} of {} flows without TLVs",
        flows.len()
    );
    let expected = String::from_utf8(fixture(txt)).unwrap();
    let mut theirs: Vec<String> = expected.lines().map(|l| l.trim().to_string()).collect();
    ours.sort();
    theirs.sort();
    let diff: Vec<_> = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| a != b)
        .take(20)
        .collect();
    assert!(
        diff.is_empty(),
        "{bin}: {} flows, differences: {diff:#?}",
        ours.len()
    );
    assert_eq!(ours.len(), theirs.len(), "{bin}");
    ours.len()
}

#[test]
fn captured_dump_renders_like_ovs_ofctl() {
    assert_renders_like_ovs_ofctl("neutron-dump.of13.bin", "neutron-dump.ofctl.txt");
}

/// The `ofp_flow_stats` entries of a reply body.
fn entries(body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = body;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    out
}

#[test]
fn one_undecodable_flow_is_skipped_and_carried_raw_not_the_whole_dump() {
    let bodies = replies(&fixture("neutron-dump.of13.bin"));
    let mp = MultipartReply::parse(&bodies[0]).unwrap();
    let all = entries(mp.body);
    assert!(all.len() >= 3);
    let mut body = Vec::new();
    body.extend_from_slice(all[0]);
    let mut bad = all[1].to_vec();
    bad[48..50].copy_from_slice(&0u16.to_be_bytes()); // match type 0: not OXM
    body.extend_from_slice(&bad);
    body.extend_from_slice(all[2]);
    let (mut flows, mut skipped) = (Vec::new(), Vec::new());
    decode_flow_stats(&body, &mut flows, &mut skipped).unwrap();
    let mut good = Vec::new();
    decode_flow_stats(all[0], &mut good, &mut Vec::new()).unwrap();
    decode_flow_stats(all[2], &mut good, &mut Vec::new()).unwrap();
    assert_eq!(
        flows, good,
        "the flows around the bad one decode as they do alone"
    );
    assert_eq!(skipped.len(), 1);
    let u = &skipped[0];
    assert_eq!(u.table, bad[2]);
    assert_eq!(u.priority, u16::from_be_bytes([bad[12], bad[13]]));
    assert_eq!(&*u.raw, bad.as_slice());
    assert!(u.error.contains("match type 0"), "{}", u.error);
    assert!(
        u.raw_hex()
            .starts_with(&format!("{:02x}{:02x}", bad[0], bad[1]))
    );
    // A broken framing (an entry shorter than its fixed part) still ends the reply.
    let mut broken = body.clone();
    broken[0..2].copy_from_slice(&8u16.to_be_bytes());
    assert!(decode_flow_stats(&broken, &mut Vec::new(), &mut Vec::new()).is_err());
}

#[test]
fn one_undecodable_flow_update_is_skipped() {
    let bodies = replies(&fixture("monitor-updates.of13.bin"));
    let mut body = Vec::new();
    for b in &bodies {
        body.extend_from_slice(MultipartReply::parse(b).unwrap().body);
    }
    let mut ups = Vec::new();
    decode_flow_updates(&body, &mut ups, &mut Vec::new()).unwrap();
    assert_eq!(ups.len(), 3);
    // Break the first record's match type: it alone is skipped.
    let mut broken = body.clone();
    broken[24..26].copy_from_slice(&0u16.to_be_bytes());
    let (mut ups2, mut skipped) = (Vec::new(), Vec::new());
    decode_flow_updates(&broken, &mut ups2, &mut skipped).unwrap();
    assert_eq!(ups2, ups[1..]);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].priority, 7);
    assert_eq!(skipped[0].table, 30);
}

#[test]
fn captured_monitor_updates_decode() {
    let mut ups = Vec::new();
    for body in replies(&fixture("monitor-updates.of13.bin")) {
        let mp = MultipartReply::parse(&body).unwrap();
        assert_eq!(
            mp.experimenter,
            Some((wire::ONF_EXPERIMENTER, wire::ONFST13_FLOW_MONITOR))
        );
        decode_flow_updates(mp.body, &mut ups, &mut Vec::new()).unwrap();
    }
    let m = "cookie=0x5, table=30, priority=7,ct_state=+est-rel,tcp,reg5=0x5,tp_dst=22 actions=";
    match ups.as_slice() {
        [
            FlowUpdate::Added(a),
            FlowUpdate::Modified(b),
            FlowUpdate::Deleted(c),
        ] => {
            assert_eq!(
                a.text(),
                format!("{m}ct(commit,zone=NXM_NX_REG6[0..15]),resubmit(,31)")
            );
            assert_eq!(b.text(), format!("{m}output:3"));
            assert_eq!(c.text(), b.text());
            assert_eq!(a.key(), c.key());
        }
        other => panic!("unexpected updates {other:#?}"),
    }
    let mut v = Vec::new();
    assert!(decode_flow_updates(&[0, 8, 0, 9, 0, 0, 0, 0], &mut v, &mut Vec::new()).is_err());
    assert!(decode_flow_updates(&[0, 7, 0, 0], &mut v, &mut Vec::new()).is_err());
}

#[test]
fn captured_edge_cases_render_like_ovs_ofctl() {
    let mut flows = Vec::new();
    for body in replies(&fixture("edge-dump.of13.bin")) {
        let mp = MultipartReply::parse(&body).unwrap();
        decode_flow_stats(mp.body, &mut flows, &mut Vec::new()).unwrap();
    }
    let ours: Vec<String> = flows.iter().map(|f| f.entry.text()).collect();
    let expected = String::from_utf8(fixture("edge-dump.ofctl.txt")).unwrap();
    let theirs: Vec<String> = expected.lines().map(|l| l.trim().to_string()).collect();
    assert_eq!(ours, theirs);
}

/// Every match field and action OVS 3.1 prints (captured by `codec_real_tests.rs`), rendered
/// exactly as `ovs-ofctl dump-flows` printed it.
#[test]
fn captured_codec_flows_render_like_ovs_ofctl() {
    let n = assert_renders_like_ovs_ofctl("codec-dump.of13.bin", "codec-dump.ofctl.txt");
    assert!(n > 150, "{n} flows");
}

#[test]
fn line_renderer_prints_what_the_decoder_prints() {
    for name in [
        "neutron-dump.of13.bin",
        "edge-dump.of13.bin",
        "codec-dump.of13.bin",
    ] {
        let mut lines = LineRenderer::default();
        let (mut plain, mut stats) = (String::new(), String::new());
        let (mut want_plain, mut want_stats) = (String::new(), String::new());
        for body in replies(&fixture(name)) {
            let mp = MultipartReply::parse(&body).unwrap();
            let mut flows = Vec::new();
            decode_flow_stats(mp.body, &mut flows, &mut Vec::new()).unwrap();
            for f in &flows {
                want_plain.push_str(&format!(" {}\n", f.entry.text()));
                want_stats.push_str(&format!(" {}\n", stats_line(f)));
            }
            let n = lines.push_flow_stats(mp.body, false, &mut plain).unwrap();
            assert_eq!(n, flows.len());
            lines.push_flow_stats(mp.body, true, &mut stats).unwrap();
        }
        assert!(plain.lines().count() > 10, "{name}");
        assert_eq!(plain, want_plain, "{name}");
        assert_eq!(stats, want_stats, "{name}");
        // Again with every actions text cached, and with a fresh renderer per reply.
        let (mut again, mut fresh) = (String::new(), String::new());
        for body in replies(&fixture(name)) {
            let mp = MultipartReply::parse(&body).unwrap();
            lines.push_flow_stats(mp.body, false, &mut again).unwrap();
            LineRenderer::default()
                .push_flow_stats(mp.body, false, &mut fresh)
                .unwrap();
        }
        assert_eq!(again, want_plain, "{name}");
        assert_eq!(fresh, want_plain, "{name}");
    }
}

#[test]
fn stats_lines_format_durations_like_stats_line() {
    let bodies = replies(&fixture("neutron-dump.of13.bin"));
    let mp = MultipartReply::parse(&bodies[0]).unwrap();
    let len = usize::from(u16::from_be_bytes([mp.body[0], mp.body[1]]));
    let mut one = mp.body[..len].to_vec();
    let mut lines = LineRenderer::default();
    for nsec in [
        0,
        1,
        5,
        500_000_000,
        123_456_789,
        999_999_999,
        1_000_000_000,
        u32::MAX,
    ] {
        // ofp_flow_stats: length, table, pad, duration_sec, duration_nsec, ...
        one[8..12].copy_from_slice(&nsec.to_be_bytes());
        let mut flows = Vec::new();
        decode_flow_stats(&one, &mut flows, &mut Vec::new()).unwrap();
        let mut out = String::new();
        lines.push_flow_stats(&one, true, &mut out).unwrap();
        assert_eq!(out, format!(" {}\n", stats_line(&flows[0])), "nsec {nsec}");
    }
}

#[test]
fn line_renderer_fails_cleanly_on_truncated_and_garbage_input() {
    let bodies = replies(&fixture("neutron-dump.of13.bin"));
    let mp = MultipartReply::parse(&bodies[0]).unwrap();
    let mut lines = LineRenderer::default();
    for stats in [false, true] {
        for cut in (0..mp.body.len().min(4096)).step_by(7) {
            let mut out = String::from("kept\n");
            match lines.push_flow_stats(&mp.body[..cut], stats, &mut out) {
                // Whole lines only: the failing flow's partial line is removed.
                Ok(n) => assert_eq!(out.lines().count(), n + 1),
                Err(_) => assert!(out.starts_with("kept\n") && out.ends_with('\n')),
            }
        }
        let mut garbage = mp.body[..2048].to_vec();
        for i in (0..garbage.len()).step_by(13) {
            garbage[i] ^= 0xa5;
            let mut out = String::new();
            let _ = lines.push_flow_stats(&garbage, stats, &mut out);
        }
        let mut out = String::new();
        assert!(
            lines
                .push_flow_stats(&mp.body[..100], stats, &mut out)
                .is_err()
        );
    }
}

#[test]
fn line_renderer_skips_a_flow_that_does_not_decode_and_keeps_it() {
    let bodies = replies(&fixture("neutron-dump.of13.bin"));
    let mp = MultipartReply::parse(&bodies[0]).unwrap();
    let len = |b: &[u8]| usize::from(u16::from_be_bytes([b[0], b[1]]));
    let first = &mp.body[..len(mp.body)];
    let second = &mp.body[first.len()..first.len() + len(&mp.body[first.len()..])];
    // The first flow's ofp_match claims a length shorter than its own header.
    let mut broken = first.to_vec();
    broken[50..52].copy_from_slice(&3u16.to_be_bytes());
    let body = [broken.as_slice(), second, first].concat();
    let mut lines = LineRenderer::default();
    let mut out = String::new();
    assert_eq!(lines.push_flow_stats(&body, false, &mut out).unwrap(), 2);
    let mut want = String::new();
    lines.push_flow_stats(second, false, &mut want).unwrap();
    lines.push_flow_stats(first, false, &mut want).unwrap();
    assert_eq!(out, want, "the flows around the broken one are printed");
    let (kept, total) = lines.take_undecodable();
    assert_eq!(total, 1);
    assert_eq!(kept[0].priority, u16::from_be_bytes([first[12], first[13]]));
    assert_eq!(&kept[0].raw[..], &broken[..]);
    assert_eq!(lines.take_undecodable().1, 0, "taken");
}

#[test]
fn captured_port_desc_decodes() {
    let bodies = replies(&fixture("port-desc.of13.bin"));
    let mp = MultipartReply::parse(&bodies[0]).unwrap();
    let ports = wire::parse_port_descs(mp.body).unwrap();
    let names: Vec<_> = ports.iter().map(|p| (p.port_no, p.name.as_str())).collect();
    assert_eq!(
        names,
        [(0xffff_fffe, "br-int"), (1, "p1"), (2, "p2"), (3, "p3")]
    );
}

#[test]
fn truncated_and_garbage_dumps_fail_cleanly() {
    let bodies = replies(&fixture("neutron-dump.of13.bin"));
    let mp = MultipartReply::parse(&bodies[0]).unwrap();
    // Every truncation point and a few byte flips must give an error or a result, never panic.
    for cut in (0..mp.body.len().min(4096)).step_by(7) {
        let mut v = Vec::new();
        let _ = decode_flow_stats(&mp.body[..cut], &mut v, &mut Vec::new());
    }
    let mut garbage = mp.body[..2048].to_vec();
    for i in (0..garbage.len()).step_by(13) {
        garbage[i] ^= 0xa5;
        let mut v = Vec::new();
        let _ = decode_flow_stats(&garbage, &mut v, &mut Vec::new());
    }
    let mut v = Vec::new();
    assert!(decode_flow_stats(&mp.body[..100], &mut v, &mut Vec::new()).is_err());
}

/// One-shot line rendering of a captured switch→client dump stream (multipart FLOW replies),
/// e.g. of the 100 000-flow bench bridge. Run in release with `PINFLOW_BENCH_DUMP=<file>`:
/// `cargo test --release -p pinflow --lib bench_line_renderer -- --ignored --nocapture`
#[test]
#[ignore = "benchmark; needs PINFLOW_BENCH_DUMP"]
fn bench_line_renderer() {
    let Ok(path) = std::env::var("PINFLOW_BENCH_DUMP") else {
        return;
    };
    let bodies: Vec<Vec<u8>> = replies(&std::fs::read(path).unwrap())
        .into_iter()
        .map(|b| MultipartReply::parse(&b).unwrap().body.to_vec())
        .collect();
    for stats in [false, true] {
        let mut best = std::time::Duration::MAX;
        let mut lines = LineRenderer::default();
        let mut text = String::new();
        let mut n = 0;
        for _ in 0..7 {
            let t = cpu_now();
            n = 0;
            for b in &bodies {
                n += lines.push_flow_stats(b, stats, &mut text).unwrap();
                if text.len() > 1 << 20 {
                    text.clear();
                }
            }
            best = best.min(cpu_now() - t);
        }
        eprintln!(
            "LineRenderer (stats: {stats}) {n} flows: best of 7 {:.1} ms CPU ({:.0} ns/flow)",
            best.as_secs_f64() * 1e3,
            best.as_nanos() as f64 / n as f64
        );
    }
}

#[allow(unsafe_code)] // clock_gettime: process CPU time for the measurement.
fn cpu_now() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Decode + render CPU cost on a synthetic dump made of the captured Neutron-like replies
/// repeated to 10 000 and 100 000 flows. Run in release:
/// `PINFLOW_SKIP_EBPF=1 cargo test --release -p pinflow --lib bench_decode_render -- --ignored --nocapture`
#[test]
#[ignore = "benchmark; run explicitly in release mode"]
fn bench_decode_render() {
    let bodies: Vec<Vec<u8>> = replies(&fixture("neutron-dump.of13.bin"))
        .into_iter()
        .map(|b| MultipartReply::parse(&b).unwrap().body.to_vec())
        .collect();
    let per_round: usize = 601;
    for target in [10_000usize, 100_000] {
        let rounds = target.div_ceil(per_round);
        let mut best = std::time::Duration::MAX;
        let mut n = 0;
        let mut cold = None;
        for _ in 0..5 {
            let t = cpu_now();
            let mut out = Vec::with_capacity(rounds * per_round);
            for _ in 0..rounds {
                for b in &bodies {
                    decode_flow_stats(b, &mut out, &mut Vec::new()).unwrap();
                }
            }
            let keys: usize = out.iter().map(|f| f.entry.text().len()).sum();
            assert!(keys > 0);
            let took = cpu_now() - t;
            cold.get_or_insert(took);
            best = best.min(took);
            n = out.len();
            drop(out);
        }
        let cold = cold.unwrap_or_default();
        eprintln!(
            "decode+render {n} flows: first round {:.1} ms CPU (fresh memory), best of 5 {:.1} ms CPU ({:.0} ns/flow)",
            cold.as_secs_f64() * 1e3,
            best.as_secs_f64() * 1e3,
            best.as_nanos() as f64 / n as f64
        );
        // The one-shot path of `pinflow flows`: lines straight into a reused buffer.
        for stats in [false, true] {
            let mut best = std::time::Duration::MAX;
            let mut lines = LineRenderer::default();
            let mut text = String::new();
            for _ in 0..5 {
                let t = cpu_now();
                let mut n = 0;
                for _ in 0..rounds {
                    for b in &bodies {
                        n += lines.push_flow_stats(b, stats, &mut text).unwrap();
                        if text.len() > 1 << 20 {
                            text.clear();
                        }
                    }
                }
                best = best.min(cpu_now() - t);
                assert_eq!(n, rounds * per_round);
            }
            eprintln!(
                "LineRenderer (stats: {stats}) {} flows: best of 5 {:.1} ms CPU ({:.0} ns/flow)",
                rounds * per_round,
                best.as_secs_f64() * 1e3,
                best.as_nanos() as f64 / (rounds * per_round) as f64
            );
        }
    }
}
