//! Unit tests of the dirty-flow rules on hand-built flows.

use super::rules::RuleSet;
use super::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::model::openflow::FieldMatch;
use crate::model::openflow::flow::FlowSource;

/// An exact match field of `len` bytes.
fn m(field: &'static str, value: u128, len: usize) -> FieldMatch {
    FieldMatch::exact(field, value, len as u8)
}

/// A masked match field of `len` bytes.
fn mm(field: &'static str, value: u128, mask: u128, len: usize) -> FieldMatch {
    FieldMatch {
        value,
        mask,
        ..m(field, value, len)
    }
}

fn in_port(p: u32) -> FieldMatch {
    m("in_port", u128::from(p), 4)
}

fn ip() -> FieldMatch {
    m("dl_type", 0x0800, 2)
}

fn arp() -> FieldMatch {
    m("dl_type", 0x0806, 2)
}

fn out(p: u32) -> FlowAction {
    FlowAction::Output(p)
}

/// A flow with an `ovs-ofctl`-like text (good enough for regex rules).
fn flow(
    table: u8,
    priority: u16,
    cookie: u64,
    matches: Vec<FieldMatch>,
    actions: Vec<FlowAction>,
) -> FlowEntry {
    let mtext: Vec<String> = matches
        .iter()
        .map(|f| format!("{}={}", f.field, f.value))
        .collect();
    let atext: Vec<String> = actions
        .iter()
        .map(|a| match a {
            FlowAction::Output(p) => format!("output:{p}"),
            FlowAction::GotoTable(t) => format!("goto_table:{t}"),
            other => format!("{other:?}"),
        })
        .collect();
    FlowEntry {
        table,
        priority,
        cookie,
        source: FlowSource::text(
            format!(
                "cookie={cookie:#x}, table={table}, priority={priority},{} actions={}",
                mtext.join(","),
                atext.join(",")
            ),
            actions,
        ),
        matches: matches.into(),
        idle_timeout: 0,
        hard_timeout: 0,
    }
}

fn ports(list: &[(&str, u32, Option<u16>)]) -> BTreeMap<String, OvsPort> {
    list.iter()
        .map(|(n, ofport, tag)| {
            (
                n.to_string(),
                OvsPort {
                    name: n.to_string(),
                    ofport: Some(*ofport),
                    tag: *tag,
                    ..OvsPort::default()
                },
            )
        })
        .collect()
}

fn index() -> DirtyFlowIndex {
    DirtyFlowIndex::new(&DirtyFlowConfig::default()).unwrap()
}

fn count(idx: &DirtyFlowIndex, bridge: &str, rule: &str) -> usize {
    *idx.counts()
        .get(&(bridge.to_string(), rule.to_string()))
        .unwrap_or_else(|| panic!("no count for {bridge}/{rule}: {:?}", idx.counts()))
}

fn dirty_texts(idx: &DirtyFlowIndex, rule: &str) -> Vec<String> {
    let mut v: Vec<String> = idx
        .findings()
        .filter(|f| f.rule == rule)
        .map(|f| f.flow_text().into_owned())
        .collect();
    v.sort();
    v
}

const BR: &str = "br-int";

#[test]
fn output_to_missing_port() {
    let now = Instant::now();
    let mut idx = index();
    idx.upsert_flow(BR, flow(0, 10, 0, vec![], vec![out(77)]), now);
    // Ports unknown yet: silent.
    assert_eq!(count(&idx, BR, "output_to_missing_port"), 0);
    idx.set_ports(BR, &ports(&[("a", 1, None), ("b", 2, None)]), now);
    assert_eq!(count(&idx, BR, "output_to_missing_port"), 1);
    idx.upsert_flow(
        BR,
        flow(0, 11, 0, vec![], vec![out(1), FlowAction::Enqueue(2)]),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(
            0,
            12,
            0,
            vec![],
            vec![
                FlowAction::Reserved("NORMAL"),
                out(0xffff_fffd),
                out(0xfffe),
            ],
        ),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(0, 13, 0, vec![], vec![FlowAction::Enqueue(9)]),
        now,
    );
    assert_eq!(count(&idx, BR, "output_to_missing_port"), 2);
    // The port appears: incremental clear.
    idx.set_ports(
        BR,
        &ports(&[("a", 1, None), ("b", 2, None), ("c", 77, None)]),
        now,
    );
    assert_eq!(count(&idx, BR, "output_to_missing_port"), 1);
    // A port goes away.
    idx.set_ports(
        BR,
        &ports(&[("b", 2, None), ("c", 77, None), ("d", 9, None)]),
        now,
    );
    assert_eq!(count(&idx, BR, "output_to_missing_port"), 1);
    let f: Vec<_> = idx
        .findings()
        .filter(|f| f.rule == "output_to_missing_port")
        .collect();
    assert!(f[0].flow_text().contains("priority=11"), "{f:?}");
    assert_eq!(f[0].table, Some(0));
}

#[test]
fn findings_generation_moves_with_findings_not_with_clean_flows() {
    let now = Instant::now();
    let mut idx = index();
    idx.set_ports(BR, &ports(&[("a", 1, None)]), now);
    let g0 = idx.findings_generation();
    // Clean flows come and go: the exporter may publish their counts lazily.
    idx.upsert_flow(BR, flow(0, 10, 0, vec![in_port(1)], vec![out(1)]), now);
    idx.remove_flow(BR, &flow(0, 10, 0, vec![in_port(1)], vec![]).key(), now);
    assert_eq!(idx.findings_generation(), g0);
    // A dirty flow appears, then goes away: both are news.
    idx.upsert_flow(BR, flow(0, 11, 0, vec![], vec![out(9)]), now);
    let g1 = idx.findings_generation();
    assert_ne!(g1, g0);
    idx.remove_flow(BR, &flow(0, 11, 0, vec![], vec![]).key(), now);
    assert_ne!(idx.findings_generation(), g1);
    assert_eq!(count(&idx, BR, "output_to_missing_port"), 0);
}

#[test]
fn in_port_missing() {
    let now = Instant::now();
    let mut idx = index();
    idx.set_ports(BR, &ports(&[("a", 1, None), ("b", 2, None)]), now);
    idx.upsert_flow(BR, flow(0, 10, 0, vec![in_port(1)], vec![out(2)]), now);
    idx.upsert_flow(BR, flow(0, 10, 0, vec![in_port(0xfffe)], vec![out(2)]), now);
    idx.upsert_flow(
        BR,
        flow(0, 10, 0, vec![m("in_port", 2, 2)], vec![out(1)]),
        now,
    );
    assert_eq!(count(&idx, BR, "in_port_missing"), 0);
    idx.upsert_flow(BR, flow(0, 10, 0, vec![in_port(5)], vec![out(2)]), now);
    assert_eq!(count(&idx, BR, "in_port_missing"), 1);
    // Port 1 deleted: its flow goes stale.
    idx.set_ports(BR, &ports(&[("b", 2, None)]), now);
    assert_eq!(count(&idx, BR, "in_port_missing"), 2);
    assert_eq!(count(&idx, BR, "output_to_missing_port"), 1);
    // Removing the flows clears the counts.
    assert!(idx.remove_flow(BR, &key_of(&flow(0, 10, 0, vec![in_port(5)], vec![])), now));
    assert!(!idx.remove_flow(BR, &key_of(&flow(0, 10, 0, vec![in_port(5)], vec![])), now));
    assert_eq!(count(&idx, BR, "in_port_missing"), 1);
}

#[test]
fn goto_empty_table() {
    let now = Instant::now();
    let mut idx = index();
    idx.upsert_flow(
        BR,
        flow(0, 10, 0, vec![in_port(1)], vec![FlowAction::GotoTable(5)]),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(
            0,
            10,
            0,
            vec![in_port(2)],
            vec![FlowAction::Resubmit {
                port: None,
                table: Some(7),
            }],
        ),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(
            0,
            10,
            0,
            vec![in_port(3)],
            vec![FlowAction::Resubmit {
                port: Some(1),
                table: None,
            }],
        ),
        now,
    );
    assert_eq!(count(&idx, BR, "goto_empty_table"), 2);
    let t5 = flow(5, 0, 0, vec![], vec![FlowAction::Other("drop".into())]);
    idx.upsert_flow(BR, t5.clone(), now);
    assert_eq!(count(&idx, BR, "goto_empty_table"), 1);
    idx.upsert_flow(BR, flow(7, 0, 0, vec![], vec![out(1)]), now);
    assert_eq!(count(&idx, BR, "goto_empty_table"), 0);
    idx.remove_flow(BR, &key_of(&t5), now);
    assert_eq!(count(&idx, BR, "goto_empty_table"), 1);
    assert_eq!(dirty_texts(&idx, "goto_empty_table").len(), 1);
    assert!(dirty_texts(&idx, "goto_empty_table")[0].contains("goto_table:5"));
}

#[test]
fn stale_cookie_foreign_flow_after_grace() {
    let t0 = Instant::now();
    let grace = Duration::from_secs(120);
    let mut idx = index();
    // No owner known (all cookies 0): silent.
    idx.upsert_flow(BR, flow(0, 1, 0, vec![in_port(1)], vec![out(2)]), t0);
    idx.tick(t0 + grace * 2);
    assert_eq!(count(&idx, BR, "stale_cookie"), 0);
    let agent = 0xa9e7_0000_0000_0001;
    for p in 0..10 {
        idx.upsert_flow(BR, flow(0, 10, agent, vec![in_port(p)], vec![out(1)]), t0);
    }
    assert_eq!(idx.learned_cookie(BR), Some(agent));
    // Cookie-0 flow was added at t0: older than grace at t0+2*grace.
    idx.tick(t0 + grace * 2);
    assert_eq!(count(&idx, BR, "stale_cookie"), 1);
    // A foreign flow added later is tolerated for the grace period only.
    let t1 = t0 + grace * 3;
    idx.upsert_flow(BR, flow(0, 20, 0x42, vec![in_port(1)], vec![out(3)]), t1);
    assert_eq!(count(&idx, BR, "stale_cookie"), 1);
    idx.tick(t1 + grace - Duration::from_secs(1));
    assert_eq!(count(&idx, BR, "stale_cookie"), 1);
    idx.tick(t1 + grace);
    assert_eq!(count(&idx, BR, "stale_cookie"), 2);
    let texts = dirty_texts(&idx, "stale_cookie");
    assert!(
        texts.iter().any(|t| t.starts_with("cookie=0x42")),
        "{texts:?}"
    );
}

#[test]
fn stale_cookie_unrepresentable_grace_never_fires() {
    let t0 = Instant::now();
    let cfg = DirtyFlowConfig {
        stale_cookie_grace_secs: u64::MAX,
        ..DirtyFlowConfig::default()
    };
    let mut idx = DirtyFlowIndex::new(&cfg).unwrap();
    for p in 0..3 {
        idx.upsert_flow(BR, flow(0, 10, 0xa, vec![in_port(p)], vec![out(1)]), t0);
    }
    idx.upsert_flow(BR, flow(0, 10, 0xb, vec![in_port(9)], vec![out(1)]), t0);
    for p in 0..5 {
        idx.upsert_flow(
            BR,
            flow(0, 10, 0xc, vec![in_port(p + 20)], vec![out(1)]),
            t0,
        );
    }
    idx.tick(t0 + Duration::from_secs(1_000_000));
    assert_eq!(idx.learned_cookie(BR), Some(0xc));
    assert_eq!(count(&idx, BR, "stale_cookie"), 0);
}

#[test]
fn stale_cookie_configured_owner() {
    let t0 = Instant::now();
    let cfg: DirtyFlowConfig = toml::from_str(
        "stale_cookie_grace_secs = 0\nlearn_cookies = false\n[owned_cookies]\nbr-int = [\"0x10\"]\n\"*\" = [\"17\"]",
    )
    .unwrap();
    let mut idx = DirtyFlowIndex::new(&cfg).unwrap();
    idx.upsert_flow(BR, flow(0, 1, 0x10, vec![], vec![out(1)]), t0);
    idx.upsert_flow(BR, flow(0, 2, 0x11, vec![], vec![out(1)]), t0);
    idx.upsert_flow(BR, flow(0, 3, 0x12, vec![], vec![out(1)]), t0);
    idx.upsert_flow("br-ex", flow(0, 3, 0x10, vec![], vec![out(1)]), t0);
    assert_eq!(count(&idx, BR, "stale_cookie"), 1);
    assert_eq!(count(&idx, "br-ex", "stale_cookie"), 1);
    assert_eq!(idx.learned_cookie(BR), None);
}

/// A Neutron agent restart: flows re-installed with a new cookie (replacing same-key flows and adding
/// some new ones), then the old generation deleted. Nothing may be reported at any point, and a
/// leftover of the old generation is reported once the grace period after the switch has passed.
#[test]
fn stale_cookie_agent_restart_does_not_false_alarm() {
    let t0 = Instant::now();
    let grace = Duration::from_secs(120);
    let s = Duration::from_secs(1);
    let (old, new) = (0x1111_u64, 0x2222_u64);
    let mut idx = index();
    let f = |c: u64, p: u32| flow(0, 10, c, vec![in_port(p)], vec![out(1)]);
    for p in 0..100 {
        idx.upsert_flow(BR, f(old, p), t0);
    }
    idx.upsert_flow(BR, flow(1, 10, old, vec![in_port(1000)], vec![out(1)]), t0);
    idx.upsert_flow(BR, flow(1, 10, old, vec![in_port(1001)], vec![out(1)]), t0);
    let t1 = t0 + grace * 10;
    idx.tick(t1);
    assert_eq!(count(&idx, BR, "stale_cookie"), 0);
    // Restart: replace 0..100 with the new cookie, one flow per 10 ms; plus 20 brand-new flows.
    for p in 0..120 {
        let t = t1 + Duration::from_millis(10 * u64::from(p));
        idx.upsert_flow(BR, f(new, p), t);
        assert_eq!(
            count(&idx, BR, "stale_cookie"),
            0,
            "during re-install at flow {p}"
        );
    }
    assert_eq!(idx.learned_cookie(BR), Some(new));
    let t2 = t1 + 5 * s;
    idx.tick(t2);
    assert_eq!(count(&idx, BR, "stale_cookie"), 0);
    // Clean-up of one old flow; the other is a leftover.
    idx.remove_flow(
        BR,
        &key_of(&flow(1, 10, old, vec![in_port(1000)], vec![])),
        t2,
    );
    for dt in [10, 60, 110] {
        idx.tick(t2 + dt * s);
        assert_eq!(count(&idx, BR, "stale_cookie"), 0, "at +{dt}s");
    }
    // Grace after the switch over: the leftover (and only it) is stale.
    idx.tick(t1 + 2 * grace);
    assert_eq!(count(&idx, BR, "stale_cookie"), 1);
    assert_eq!(dirty_texts(&idx, "stale_cookie").len(), 1);
    assert!(dirty_texts(&idx, "stale_cookie")[0].contains("in_port=1001"));
    // Deleting it clears the finding.
    idx.remove_flow(
        BR,
        &key_of(&flow(1, 10, old, vec![in_port(1001)], vec![])),
        t1 + 3 * grace,
    );
    assert_eq!(count(&idx, BR, "stale_cookie"), 0);
}

/// Agents whose extensions use cookies of their own: with a generation window the extension cookies
/// are owned with the main one, across a restart too; without it they are reported.
#[test]
fn stale_cookie_generation_window() {
    let t0 = Instant::now();
    let s = Duration::from_secs(1);
    let grace = Duration::from_secs(120);
    let (main, ext, main2, ext2, foreign) = (0xa1, 0xe1, 0xa2, 0xe2, 0xf0);
    let f = |c: u64, table: u8, p: u32| flow(table, 10, c, vec![in_port(p)], vec![out(1)]);
    let load = |idx: &mut DirtyFlowIndex| {
        for p in 0..50 {
            idx.upsert_flow(BR, f(main, 0, p), t0);
        }
        for p in [0, 1, 2, 3, 4, 99] {
            idx.upsert_flow(BR, f(ext, 1, p), t0 + 2 * s);
        }
    };
    let mut strict = index();
    load(&mut strict);
    strict.tick(t0 + 3 * grace);
    assert_eq!(
        count(&strict, BR, "stale_cookie"),
        6,
        "extension cookie is foreign without a window"
    );

    let cfg = DirtyFlowConfig {
        cookie_generation_window_secs: 60,
        ..DirtyFlowConfig::default()
    };
    let mut idx = DirtyFlowIndex::new(&cfg).unwrap();
    load(&mut idx);
    let t1 = t0 + 3 * grace;
    idx.tick(t1);
    assert_eq!(count(&idx, BR, "stale_cookie"), 0);
    // A cookie appearing long after the generation started is foreign.
    idx.upsert_flow(BR, f(foreign, 2, 1), t1);
    idx.tick(t1 + grace);
    assert_eq!(count(&idx, BR, "stale_cookie"), 1);
    idx.remove_flow(BR, &f(foreign, 2, 1).key(), t1 + grace);
    // Restart: new main and extension cookies replace the old flows, except one old extension flow.
    let t2 = t1 + 2 * grace;
    for p in 0..50 {
        idx.upsert_flow(BR, f(main2, 0, p), t2);
    }
    for p in 0..5 {
        idx.upsert_flow(BR, f(ext2, 1, p), t2 + s);
    }
    assert_eq!(idx.learned_cookie(BR), Some(main2));
    for dt in [2, 60, 119] {
        idx.tick(t2 + dt * s);
        assert_eq!(count(&idx, BR, "stale_cookie"), 0, "at +{dt}s");
    }
    idx.tick(t2 + grace + 2 * s);
    assert_eq!(dirty_texts(&idx, "stale_cookie").len(), 1);
    assert!(dirty_texts(&idx, "stale_cookie")[0].contains("in_port=99"));
}

#[test]
fn unreachable() {
    let now = Instant::now();
    let mut idx = index();
    let specific = flow(
        1,
        90,
        0,
        vec![ip(), m("nw_dst", 0x0a01_0203, 4)],
        vec![out(1)],
    );
    idx.upsert_flow(BR, specific.clone(), now);
    // Not covering: different in_port, or more specific than the lower flow.
    idx.upsert_flow(
        BR,
        flow(
            1,
            100,
            0,
            vec![ip(), m("nw_dst", 0x0a01_0203, 4), in_port(1)],
            vec![out(2)],
        ),
        now,
    );
    idx.upsert_flow(BR, flow(1, 100, 0, vec![arp()], vec![out(2)]), now);
    idx.upsert_flow(
        BR,
        flow(
            1,
            100,
            0,
            vec![ip(), mm("nw_dst", 0x0b00_0000, 0xff00_0000, 4)],
            vec![out(2)],
        ),
        now,
    );
    // A lower-priority catch-all is fine.
    idx.upsert_flow(
        BR,
        flow(1, 0, 0, vec![], vec![FlowAction::Other("drop".into())]),
        now,
    );
    // Other table: irrelevant.
    idx.upsert_flow(BR, flow(2, 200, 0, vec![], vec![out(2)]), now);
    assert_eq!(
        count(&idx, BR, "unreachable"),
        0,
        "{:?}",
        idx.findings().collect::<Vec<_>>()
    );
    // A /8 at higher priority covers 10.1.2.3 exactly.
    let wide = flow(
        1,
        95,
        0,
        vec![ip(), mm("nw_dst", 0x0a00_0000, 0xff00_0000, 4)],
        vec![out(3)],
    );
    idx.upsert_flow(BR, wide.clone(), now);
    assert_eq!(dirty_texts(&idx, "unreachable"), vec![specific.text()]);
    // Same priority does not shadow.
    idx.remove_flow(BR, &key_of(&wide), now);
    assert_eq!(count(&idx, BR, "unreachable"), 0);
    // A higher catch-all shadows every flow with a match below it; the lower catch-all default it
    // overrides is not reported (agents override defaults this way and leave them).
    let catch = flow(1, 150, 0, vec![], vec![out(3)]);
    idx.upsert_flow(BR, catch.clone(), now);
    assert_eq!(count(&idx, BR, "unreachable"), 4);
    assert!(
        dirty_texts(&idx, "unreachable")
            .iter()
            .all(|t| !t.contains("priority=0,"))
    );
    idx.remove_flow(BR, &key_of(&catch), now);
    assert_eq!(count(&idx, BR, "unreachable"), 0);
    // The lower flow arriving after the shadowing flow is caught as well.
    idx.upsert_flow(
        BR,
        flow(
            1,
            5,
            0,
            vec![ip(), m("nw_dst", 0x0a01_0203, 4), m("nw_proto", 6, 1)],
            vec![out(1)],
        ),
        now,
    );
    assert_eq!(count(&idx, BR, "unreachable"), 1);
}

#[test]
fn ambiguous_priority() {
    let now = Instant::now();
    let mut idx = index();
    let a = flow(3, 50, 0, vec![in_port(1), ip()], vec![out(2)]);
    idx.upsert_flow(BR, a.clone(), now);
    // Disjoint: other in_port; other dl_type; other priority; same actions.
    idx.upsert_flow(
        BR,
        flow(3, 50, 0, vec![in_port(2), ip()], vec![out(3)]),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(3, 50, 0, vec![in_port(1), arp()], vec![out(3)]),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(3, 51, 0, vec![in_port(1), ip()], vec![out(3)]),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(
            3,
            50,
            0,
            vec![in_port(1), ip(), m("nw_proto", 6, 1)],
            vec![out(2)],
        ),
        now,
    );
    assert_eq!(
        count(&idx, BR, "ambiguous_priority"),
        0,
        "{:?}",
        dirty_texts(&idx, "ambiguous_priority")
    );
    // Overlap through different fields: in_port=1,ip vs ip,nw_dst=… at the same priority.
    let b = flow(
        3,
        50,
        0,
        vec![ip(), m("nw_dst", 0x0a00_0001, 4)],
        vec![out(4)],
    );
    idx.upsert_flow(BR, b.clone(), now);
    let got = dirty_texts(&idx, "ambiguous_priority");
    // b overlaps a, the nw_proto flow and in_port=2,ip (all ip at prio 50, different actions).
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.contains(&a.text()) && got.contains(&b.text()));
    idx.remove_flow(BR, &key_of(&b), now);
    assert_eq!(count(&idx, BR, "ambiguous_priority"), 0);
    // Masked overlap: 10.0.0.0/8 vs 10.1.0.0/16 on otherwise equal matches.
    idx.upsert_flow(
        BR,
        flow(
            4,
            7,
            0,
            vec![ip(), mm("nw_src", 0x0a00_0000, 0xff00_0000, 4)],
            vec![out(1)],
        ),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(
            4,
            7,
            0,
            vec![ip(), mm("nw_src", 0x0b01_0000, 0xffff_0000, 4)],
            vec![out(2)],
        ),
        now,
    );
    assert_eq!(count(&idx, BR, "ambiguous_priority"), 0);
    idx.upsert_flow(
        BR,
        flow(
            4,
            7,
            0,
            vec![ip(), mm("nw_src", 0x0a01_0000, 0xffff_0000, 4)],
            vec![out(2)],
        ),
        now,
    );
    assert_eq!(count(&idx, BR, "ambiguous_priority"), 2);
    // Replacing the actions to equal ones clears it (upsert with the same key).
    idx.upsert_flow(
        BR,
        flow(
            4,
            7,
            0,
            vec![ip(), mm("nw_src", 0x0a01_0000, 0xffff_0000, 4)],
            vec![out(1)],
        ),
        now,
    );
    assert_eq!(count(&idx, BR, "ambiguous_priority"), 0);
}

#[test]
fn conjunctive_flows_neither_conflict_nor_shadow() {
    let now = Instant::now();
    let mut idx = index();
    let conj = |id: u32, clause: u8| FlowAction::Conjunction {
        id,
        clause,
        n_clauses: 2,
    };
    // Clauses of two conjunctions overlap at one priority by design.
    idx.upsert_flow(
        BR,
        flow(
            72,
            2000,
            0,
            vec![ip(), in_port(1)],
            vec![conj(7, 1), conj(8, 1)],
        ),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(
            72,
            2000,
            0,
            vec![ip(), m("nw_proto", 6, 1)],
            vec![conj(7, 2)],
        ),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(
            72,
            2000,
            0,
            vec![ip(), in_port(1), m("nw_proto", 6, 1)],
            vec![conj(8, 2)],
        ),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(72, 2000, 0, vec![m("conj_id", 7, 4), ip()], vec![out(1)]),
        now,
    );
    // A clause at higher priority does not shadow a lower ordinary flow.
    idx.upsert_flow(
        BR,
        flow(72, 10, 0, vec![ip(), in_port(1)], vec![out(2)]),
        now,
    );
    assert_eq!(
        count(&idx, BR, "ambiguous_priority"),
        0,
        "{:?}",
        idx.findings().collect::<Vec<_>>()
    );
    assert_eq!(count(&idx, BR, "unreachable"), 0);
    // But an ordinary catch-all above the clauses makes them unreachable.
    idx.upsert_flow(BR, flow(72, 3000, 0, vec![], vec![out(3)]), now);
    assert_eq!(count(&idx, BR, "unreachable"), 5);
    // ct(table=N) into an empty table is a dangling jump too.
    idx.upsert_flow(
        BR,
        flow(
            0,
            1,
            0,
            vec![],
            vec![FlowAction::Ct {
                commit: false,
                table: Some(9),
            }],
        ),
        now,
    );
    assert_eq!(count(&idx, BR, "goto_empty_table"), 1);
}

#[test]
fn dead_vlan() {
    let now = Instant::now();
    let mut idx = index();
    idx.set_ports(
        BR,
        &ports(&[("tap1", 1, Some(4095)), ("tap2", 2, Some(3))]),
        now,
    );
    assert_eq!(count(&idx, BR, "dead_vlan"), 1);
    let f: Vec<_> = idx.findings().collect();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].flow_text(), "port tap1 tag=4095");
    assert_eq!((f[0].table, f[0].cookie), (None, None));
    idx.set_ports(BR, &ports(&[("tap1", 1, Some(7)), ("tap2", 2, None)]), now);
    assert_eq!(count(&idx, BR, "dead_vlan"), 0);
}

#[test]
fn user_rules_regex_and_fields_scoped() {
    let now = Instant::now();
    let cfg: DirtyFlowConfig = toml::from_str(
        r#"
        disabled_rules = ["ambiguous_priority"]
        [[user_rules]]
        name = "manual_drop"
        bridges = ["br-int"]
        tables = [0]
        regex = "priority=6\\d{3},"
        [[user_rules]]
        name = "vlan_leak"
        fields = [ { field = "dl_vlan", equals = "0x64" }, { field = "in_port", present = false } ]
        [[user_rules]]
        name = "net10"
        fields = [ { field = "nw_dst", equals = "10.0.0.0/8", not_equals = "10.9.0.0/16" } ]
        "#,
    )
    .unwrap();
    let mut idx = DirtyFlowIndex::new(&cfg).unwrap();
    idx.upsert_flow(BR, flow(0, 6000, 0, vec![], vec![out(1)]), now);
    idx.upsert_flow(BR, flow(1, 6000, 0, vec![], vec![out(1)]), now);
    idx.upsert_flow("br-ex", flow(0, 6000, 0, vec![], vec![out(1)]), now);
    idx.upsert_flow(
        BR,
        flow(
            0,
            10,
            0,
            vec![mm("vlan_tci", 0x1064, 0x1fff, 2)],
            vec![out(1)],
        ),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(
            0,
            11,
            0,
            vec![mm("vlan_tci", 0x1064, 0x1fff, 2), in_port(1)],
            vec![out(1)],
        ),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(
            0,
            12,
            0,
            vec![mm("vlan_tci", 0x1065, 0x1fff, 2)],
            vec![out(1)],
        ),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(
            2,
            1,
            0,
            vec![ip(), m("nw_dst", 0x0a01_0203, 4)],
            vec![out(1)],
        ),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(
            2,
            2,
            0,
            vec![ip(), m("nw_dst", 0x0a09_0203, 4)],
            vec![out(1)],
        ),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(
            2,
            3,
            0,
            vec![ip(), mm("nw_dst", 0x0a00_0000, 0xfe00_0000, 4)],
            vec![out(1)],
        ),
        now,
    );
    let c = idx.counts();
    assert_eq!(c.get(&(BR.into(), "manual_drop".into())), Some(&1));
    assert_eq!(
        c.get(&("br-ex".into(), "manual_drop".into())),
        None,
        "out of scope: no series"
    );
    assert_eq!(c.get(&("br-ex".into(), "vlan_leak".into())), Some(&0));
    assert_eq!(c.get(&(BR.into(), "vlan_leak".into())), Some(&1));
    assert_eq!(c.get(&(BR.into(), "net10".into())), Some(&1));
    assert_eq!(
        c.get(&(BR.into(), "ambiguous_priority".into())),
        None,
        "disabled"
    );
    assert!(idx.rule_names().any(|r| r == "net10"));
}

#[test]
fn counts_present_for_every_rule_and_bridge() {
    let now = Instant::now();
    let mut idx = index();
    idx.set_ports("br-ex", &ports(&[("eth0", 1, None)]), now);
    idx.upsert_flow(
        BR,
        flow(0, 0, 0, vec![], vec![FlowAction::Reserved("NORMAL")]),
        now,
    );
    let c = idx.counts();
    assert_eq!(c.len(), 2 * BuiltinRule::ALL.len());
    assert!(c.values().all(|n| *n == 0), "{c:?}");
    assert_eq!(idx.flow_counts().get(&(BR.into(), 0)), Some(&1));
    assert!(idx.remove_bridge("br-ex"));
    assert_eq!(idx.counts().len(), BuiltinRule::ALL.len());
}

#[test]
fn sync_bridges_follows_ovsdb() {
    let now = Instant::now();
    let mut idx = index();
    idx.upsert_flow("br-old", flow(0, 1, 0, vec![], vec![out(1)]), now);
    let mut bridges = BTreeMap::new();
    bridges.insert(
        BR.to_string(),
        crate::model::flows::Bridge {
            name: BR.into(),
            ports: ports(&[("tap1", 1, Some(4095))]),
        },
    );
    idx.sync_bridges(&bridges, now);
    assert_eq!(idx.len("br-old"), 0);
    assert_eq!(count(&idx, BR, "dead_vlan"), 1);
    assert_eq!(idx.counts().len(), BuiltinRule::ALL.len());
}

#[test]
fn replace_flows_resyncs_and_keeps_counts_consistent() {
    let now = Instant::now();
    let mut idx = index();
    idx.set_ports(BR, &ports(&[("a", 1, None)]), now);
    let v1 = vec![
        flow(0, 10, 0, vec![in_port(1)], vec![out(9)]),
        flow(0, 10, 0, vec![in_port(2)], vec![out(1)]),
    ];
    idx.replace_flows(BR, v1, now);
    assert_eq!(count(&idx, BR, "output_to_missing_port"), 1);
    assert_eq!(count(&idx, BR, "in_port_missing"), 1);
    // A re-dump with a new timeout changes nothing.
    let mut redump = flow(0, 10, 0, vec![in_port(1)], vec![out(9)]);
    redump.idle_timeout = 42;
    idx.upsert_flow(BR, redump, now);
    assert_eq!(idx.len(BR), 2);
    assert_eq!(count(&idx, BR, "output_to_missing_port"), 1);
    let v2 = vec![flow(0, 10, 0, vec![in_port(1)], vec![out(1)])];
    idx.replace_flows(BR, v2, now);
    assert_eq!(idx.len(BR), 1);
    assert!(idx.counts().values().all(|n| *n == 0), "{:?}", idx.counts());
    idx.replace_flows(BR, Vec::<FlowEntry>::new(), now);
    assert!(idx.is_empty());
}

/// Builds a Neutron-like bridge of `n` flows: per-port classification in table 0, one large table of
/// `dl_vlan,dl_dst → output` (same shape, distinct keys), and an anti-spoofing table of three shapes.
fn synthetic(n: u32) -> Vec<FlowEntry> {
    let mut v = Vec::with_capacity(n as usize);
    let ports = 2000u32;
    for p in 1..=ports {
        v.push(flow(
            0,
            10,
            0xabc,
            vec![in_port(p)],
            vec![FlowAction::GotoTable(60)],
        ));
    }
    v.push(flow(
        0,
        0,
        0xabc,
        vec![],
        vec![FlowAction::Other("drop".into())],
    ));
    for i in 0..8000u32 {
        let p = i % ports + 1;
        let fm = match i % 3 {
            0 => vec![
                ip(),
                in_port(p),
                m("nw_src", u128::from(0x0a00_0000 + i), 4),
            ],
            1 => vec![
                arp(),
                in_port(p),
                m("arp_spa", u128::from(0x0a00_0000 + i), 4),
            ],
            _ => vec![
                in_port(p),
                m("dl_src", u128::from(0xfa16_3e00_0000 + u64::from(i)), 6),
            ],
        };
        v.push(flow(71, 95, 0xabc, fm, vec![FlowAction::GotoTable(60)]));
    }
    let rest = n.saturating_sub(10_001);
    for i in 0..rest {
        v.push(flow(
            60,
            90,
            0xabc,
            vec![
                m("dl_vlan", u128::from(i % 4000 + 1), 2),
                m("dl_dst", u128::from(0xfa16_3e00_0000 + u64::from(i)), 6),
            ],
            vec![FlowAction::Other("strip_vlan".into()), out(i % ports + 1)],
        ));
    }
    v
}

/// Resident set size of this process (0 where /proc is unavailable).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Loads 100 000 flows and applies single changes; prints the timings (the numbers to report come from
/// `cargo test --release … -- --nocapture`), and guards against quadratic behaviour with a loose bound.
#[test]
fn hundred_thousand_flows_scale() {
    let now = Instant::now();
    let flows = synthetic(100_000);
    let port_map: BTreeMap<String, OvsPort> = (1..=2000u32)
        .map(|p| {
            let name = format!("tap{p}");
            (
                name.clone(),
                OvsPort {
                    name,
                    ofport: Some(p),
                    ..OvsPort::default()
                },
            )
        })
        .collect();
    // Quarter-size load first: linear work makes the full load about 4x slower, quadratic 16x.
    let mut small = index();
    let t = Instant::now();
    small.set_ports(BR, &port_map, now);
    for f in synthetic(25_000) {
        small.upsert_flow(BR, f, now);
    }
    let load_quarter = t.elapsed();
    drop(small);
    let rss_before = rss_kib();
    let mut idx = index();
    let t = Instant::now();
    idx.set_ports(BR, &port_map, now);
    for f in flows {
        idx.upsert_flow(BR, f, now);
    }
    let load = t.elapsed();
    let rss_index = rss_kib().saturating_sub(rss_before);
    assert_eq!(idx.len(BR), 100_000);
    assert!(idx.counts().values().all(|n| *n == 0), "{:?}", idx.counts());

    // Single changes.
    let reps = 1000u32;
    let t = Instant::now();
    for i in 0..reps {
        idx.upsert_flow(
            BR,
            flow(
                60,
                90,
                0xabc,
                vec![m("dl_vlan", 4001, 2), m("dl_dst", u128::from(i), 6)],
                vec![out(5000)],
            ),
            now,
        );
    }
    let add = t.elapsed() / reps;
    assert_eq!(count(&idx, BR, "output_to_missing_port"), reps as usize);
    let t = Instant::now();
    for i in 0..reps {
        idx.remove_flow(
            BR,
            &key_of(&flow(
                60,
                90,
                0,
                vec![m("dl_vlan", 4001, 2), m("dl_dst", u128::from(i), 6)],
                vec![],
            )),
            now,
        );
    }
    let remove = t.elapsed() / reps;
    assert_eq!(count(&idx, BR, "output_to_missing_port"), 0);
    // A port deletion re-evaluates only the flows referencing it (about 50 here).
    let mut fewer = port_map.clone();
    fewer.remove("tap7");
    let t = Instant::now();
    idx.set_ports(BR, &fewer, now);
    let port_change = t.elapsed();
    assert!(count(&idx, BR, "output_to_missing_port") > 0);
    assert!(count(&idx, BR, "in_port_missing") > 0);
    // Worst case by construction: a catch-all above the 90 000-flow table shadows all of it.
    let t = Instant::now();
    idx.upsert_flow(BR, flow(60, 1000, 0xabc, vec![], vec![out(1)]), now);
    let shadow_all = t.elapsed();
    assert_eq!(count(&idx, BR, "unreachable"), 89_999);
    eprintln!(
        "25k flows: load {load_quarter:?}; 100k flows: load {load:?} ({:?}/flow), add {add:?}, remove {remove:?}, port change {port_change:?}, \
         shadowing catch-all {shadow_all:?}; RSS growth during load {rss_index} KiB",
        load / 100_000
    );
    let limit = if cfg!(debug_assertions) { 30 } else { 2 };
    assert!(load < Duration::from_secs(limit), "load took {load:?}");
    assert!(
        load < load_quarter * 10,
        "superlinear: 25k flows {load_quarter:?}, 100k flows {load:?}"
    );
}

/// Whether conntrack can give a packet the `ct_state` value `s` (ovs-fields(7): no flag without
/// `trk`; `inv` only with `trk`; `new` neither with `est` nor with `rpl`), over the eight defined flags.
fn brute_ct_valid(s: u128) -> bool {
    let has = |f: u128| s & f != 0;
    (s == 0 || has(0x20))
        && (!has(0x10) || s & !0x30 == 0)
        && !(has(0x01) && has(0x02))
        && !(has(0x01) && has(0x08))
}

/// Valid `ct_state` values a flow admits (all valid ones when it does not match on `ct_state`).
fn brute_ct_states(f: &FlowEntry) -> Vec<u128> {
    (0..256u128)
        .filter(|s| brute_ct_valid(*s))
        .filter(|s| {
            f.matches
                .get("ct_state")
                .is_none_or(|c| s & c.mask == c.value & c.mask)
        })
        .collect()
}

/// (Ethertype, IP protocol) pairs covering every value the random tables use.
fn brute_packets() -> Vec<(u128, Option<u128>)> {
    let mut v = Vec::new();
    for eth in [0x0800, 0x86dd] {
        for p in [1, 6, 17, 58, 99] {
            v.push((eth, Some(p)));
        }
    }
    v.extend([(0x0806, None), (0x1234, None)]);
    v
}

/// Whether a field of the random tables exists in (and, for `dl_type`/`nw_proto`, matches) a packet
/// of this Ethertype and protocol (ovs-fields(7) prerequisites, written out per field).
fn brute_applies(m: &FieldMatch, eth: u128, proto: Option<u128>) -> bool {
    let ip = eth == 0x0800 || eth == 0x86dd;
    match m.field {
        "dl_type" => m.value == eth & m.mask,
        "nw_proto" => proto.is_some_and(|p| m.value == p & m.mask),
        "nw_dst" => eth == 0x0800,
        "tp_dst" => ip && matches!(proto, Some(6 | 17 | 132)),
        "arp_op" => eth == 0x0806 || eth == 0x8035,
        _ => true,
    }
}

/// Packets (of [`brute_packets`]) both flows' prerequisites admit.
fn brute_common_packet(f: &FlowEntry, g: &FlowEntry) -> bool {
    brute_packets().into_iter().any(|(eth, p)| {
        f.matches
            .iter()
            .chain(g.matches.iter())
            .all(|m| brute_applies(&m, eth, p))
    })
}

/// Whether some packet can match the flow.
fn brute_satisfiable(f: &FlowEntry) -> bool {
    !brute_ct_states(f).is_empty() && brute_common_packet(f, f)
}

/// Brute-force reference for `unreachable`: `f` has a match, and no packet can match it, or some satisfiable ordinary
/// flow of higher priority in the same table covers it: every other field bit it matches on `f`
/// matches alike, and every `ct_state` conntrack can give a packet of `f` satisfies it.
fn brute_unreachable(f: &FlowEntry, all: &[FlowEntry]) -> bool {
    if f.matches.is_empty() {
        // A catch-all default is never reported.
        return false;
    }
    if !brute_satisfiable(f) {
        return true;
    }
    let f_states = brute_ct_states(f);
    all.iter().any(|g| {
        g.table == f.table
            && g.priority > f.priority
            && !conjunctive(&g.actions())
            && brute_satisfiable(g)
            && g.matches.iter().all(|gm| {
                if gm.field == "ct_state" {
                    return f_states.iter().all(|s| s & gm.mask == gm.value & gm.mask);
                }
                f.matches.iter().any(|fm| {
                    let (gmask, fmask) = (gm.mask, fm.mask);
                    fm.field == gm.field
                        && fm.len == gm.len
                        && gmask & !fmask == 0
                        && fm.value & gmask == gm.value & gmask
                })
            })
    })
}

/// Brute-force reference for `ambiguous_priority`: another ordinary flow of the same table and
/// priority with other actions, and a packet both match (shared field bits agree, a valid
/// `ct_state` and a protocol both admit, both or neither reached through a conjunction).
fn brute_ambiguous(f: &FlowEntry, all: &[FlowEntry]) -> bool {
    let conj_id = |x: &FlowEntry| x.matches.get("conj_id").is_some();
    !conjunctive(&f.actions())
        && all.iter().any(|g| {
            g.table == f.table
                && g.priority == f.priority
                && g.actions() != f.actions()
                && !conjunctive(&g.actions())
                && conj_id(f) == conj_id(g)
                && brute_ct_states(f)
                    .iter()
                    .any(|s| brute_ct_states(g).contains(s))
                && brute_common_packet(f, g)
                && f.matches.iter().all(|fm| {
                    g.matches
                        .iter()
                        .filter(|gm| gm.field == fm.field && fm.field != "ct_state")
                        .all(|gm| {
                            let (gmask, fmask) = (gm.mask, fm.mask);
                            fm.value & fmask & gmask == gm.value & fmask & gmask
                        })
                })
        })
}

/// Random add/replace/remove sequences: the incremental index agrees with brute force after every
/// change.
#[test]
fn incremental_index_matches_brute_force() {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let now = Instant::now();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for round in 0..20 {
        let mut idx = index();
        idx.set_ports(BR, &ports(&[("a", 1, None), ("b", 2, None)]), now);
        let mut live: HashMap<FlowKey, FlowEntry> = HashMap::new();
        for step in 0..150 {
            let mut matches = Vec::new();
            if rnd(2) == 0 {
                matches.push(in_port(1 + rnd(3) as u32));
            }
            if rnd(3) == 0 {
                matches.push(m("dl_vlan", 1 + u128::from(rnd(2)), 2));
            }
            match rnd(3) {
                0 => matches.push(ip()),
                1 => matches.push(arp()),
                _ => {}
            }
            if rnd(2) == 0 {
                let mask = [0xff00_0000u128, 0xffff_0000, 0xffff_ffff][rnd(3) as usize];
                let v = [0x0a00_0000u128, 0x0a01_0000, 0x0a01_0001, 0x0b00_0000][rnd(4) as usize];
                matches.push(mm("nw_dst", v & mask, mask, 4));
            }
            if rnd(2) == 0 {
                // (value, mask): +trk, -trk, +est, +new-est, +inv+trk, +est-rel-rpl, +trk-inv,
                // +rpl, +new+rpl (impossible), +inv+est (impossible), +trk-new-est.
                let (v, mask) = [
                    (0x20, 0x20),
                    (0x00, 0x20),
                    (0x02, 0x02),
                    (0x01, 0x03),
                    (0x30, 0x30),
                    (0x02, 0x0e),
                    (0x20, 0x30),
                    (0x08, 0x08),
                    (0x09, 0x09),
                    (0x12, 0x12),
                    (0x20, 0x23),
                ][rnd(11) as usize];
                matches.push(mm("ct_state", v, mask, 4));
            }
            if rnd(5) == 0 {
                matches.push(m("tp_dst", [80, 53][rnd(2) as usize], 2));
            }
            if rnd(5) == 0 {
                matches.push(m("nw_proto", [6, 17][rnd(2) as usize], 1));
            }
            if rnd(8) == 0 {
                matches.push(m("arp_op", 1, 2));
            }
            if rnd(8) == 0 {
                matches.push(m("conj_id", 1 + u128::from(rnd(2)), 4));
            }
            let actions = match rnd(4) {
                0 => vec![out(1)],
                1 => vec![out(2)],
                2 => vec![FlowAction::GotoTable(1)],
                _ => vec![FlowAction::Conjunction {
                    id: 1,
                    clause: 1,
                    n_clauses: 2,
                }],
            };
            let f = flow(rnd(2) as u8, 1 + rnd(3) as u16, 0, matches, actions);
            let key = key_of(&f);
            if rnd(4) == 0 {
                idx.remove_flow(BR, &key, now);
                live.remove(&key);
            } else {
                idx.upsert_flow(BR, f.clone(), now);
                live.insert(key, f);
            }
            let all: Vec<FlowEntry> = live.values().cloned().collect();
            for (rule, brute) in [
                (
                    "unreachable",
                    brute_unreachable as fn(&FlowEntry, &[FlowEntry]) -> bool,
                ),
                ("ambiguous_priority", brute_ambiguous),
            ] {
                let mut want: Vec<String> = all
                    .iter()
                    .filter(|f| brute(f, &all))
                    .map(|f| f.text())
                    .collect();
                want.sort_unstable();
                let mut got: Vec<String> = idx
                    .findings()
                    .filter(|x| x.rule == rule)
                    .map(|x| x.flow_text().into_owned())
                    .collect();
                got.sort_unstable();
                assert_eq!(got, want, "{rule}, round {round} step {step}");
                assert_eq!(count(&idx, BR, rule), want.len());
                *seen.entry(rule).or_default() += want.len();
            }
            let tables: HashSet<u8> = all.iter().map(|f| f.table).collect();
            let goto = all
                .iter()
                .filter(|f| f.actions().contains(&FlowAction::GotoTable(1)) && !tables.contains(&1))
                .count();
            assert_eq!(
                count(&idx, BR, "goto_empty_table"),
                goto,
                "round {round} step {step}"
            );
            assert_eq!(idx.len(BR), all.len());
        }
    }
    // The random tables must actually exercise both rules.
    assert!(
        seen["unreachable"] > 1000 && seen["ambiguous_priority"] > 1000,
        "{seen:?}"
    );
}

#[test]
fn key_hash_collisions_are_resolved() {
    let now = Instant::now();
    let rules = RuleSet::compile(&DirtyFlowConfig::default()).unwrap();
    let mut b = BridgeIndex::new(&rules, BR);
    b.upsert(
        &rules,
        flow(0, 1, 0, vec![in_port(1)], vec![out(1)]),
        now,
        None,
    );
    b.upsert(
        &rules,
        flow(0, 2, 0, vec![in_port(1)], vec![out(1)]),
        now,
        None,
    );
    let key = Matches::new([in_port(1)]);
    let (h1, h2) = (key_hash(0, 1, &key), key_hash(0, 2, &key));
    let id1 = b.find(0, 1, &key).unwrap();
    let id2 = b.find(0, 2, &key).unwrap();
    // Put the second flow under the first one's hash as if both keys collided.
    b.key_unlink(h2, id2);
    b.key_link(h1, id2);
    assert_eq!(b.by_key.iter_hash(h1).count(), 2);
    assert_eq!(b.find(0, 1, &key), Some(id1));
    b.key_unlink(h1, id1);
    assert_eq!(b.find(0, 1, &key), None);
    b.key_unlink(h1, id2);
    assert!(b.by_key.is_empty());
}

#[test]
fn projection_hash_collisions_never_relate_flows() {
    let now = Instant::now();
    let rules = RuleSet::compile(&DirtyFlowConfig::default()).unwrap();
    let mut b = BridgeIndex::new(&rules, BR);
    let (ma, mb, mc) = (
        vec![m("reg0", 1, 4)],
        vec![m("reg0", 2, 4)],
        vec![m("reg0", 3, 4)],
    );
    b.upsert(&rules, flow(0, 10, 0, ma.clone(), vec![out(1)]), now, None);
    b.upsert(&rules, flow(0, 5, 0, mb.clone(), vec![out(2)]), now, None);
    b.upsert(&rules, flow(0, 5, 0, mc.clone(), vec![out(3)]), now, None);
    let id = |b: &BridgeIndex, prio, ms: &[FieldMatch]| {
        b.find(0, prio, &Matches::new(ms.iter().copied())).unwrap()
    };
    let (ia, ib, ic) = (id(&b, 10, &ma), id(&b, 5, &mb), id(&b, 5, &mc));
    let entry = |b: &BridgeIndex, i: FlowId| {
        let r = b.rec(i).unwrap();
        (r.entry.priority, r.actions_id, i)
    };
    // A bucket's hash is that of its first (lowest) entry: file the others under the hash of the
    // lower of B and C, as if all three projections hashed alike.
    let (lo, hi) = {
        let (eb, ec) = (entry(&b, ib), entry(&b, ic));
        (eb.min(ec), eb.max(ec))
    };
    let ea = entry(&b, ia);
    let (lo_id, sid) = (lo.2, b.rec(lo.2).unwrap().shape);
    let lo_matches = b.rec(lo_id).unwrap().entry.matches.clone();
    let shape = Shape::of(&lo_matches);
    let h = project_hash(&lo_matches, &shape).unwrap();
    let BridgeIndex { tables, flows, .. } = &mut b;
    let g = tables.get_mut(&0).unwrap().groups.get_mut(&sid).unwrap();
    let map = g.proj.get_mut(&shape).unwrap();
    map.insert(flows, &shape, h, ea);
    map.insert(flows, &shape, h, hi);
    assert_eq!(map.get(flows, &shape, h).unwrap().iter().count(), 3);
    // A (higher priority) does not cover it, the other (same priority, other actions) does not
    // overlap it: their real projections differ.
    b.evaluate(&rules, lo_id, now);
    let dirty = b.rec(lo_id).unwrap().dirty;
    assert_eq!(dirty & BuiltinRule::Unreachable.bit(), 0);
    assert_eq!(dirty & BuiltinRule::AmbiguousPriority.bit(), 0);
}

/// `ct_state` exclusions keep Neutron's equal-priority firewall flows apart; a real overlap is still
/// found, and coverage understands what a flag implies.
#[test]
fn ct_state_semantics_in_overlap_and_coverage() {
    let now = Instant::now();
    let ct = |v: u128, mask: u128| mm("ct_state", v, mask, 4);
    let mut idx = index();
    // +inv+trk → drop and +est-rel-rpl+trk → accept, same priority: never one packet.
    idx.upsert_flow(BR, flow(72, 50, 0, vec![ip(), ct(0x30, 0x30)], vec![]), now);
    idx.upsert_flow(
        BR,
        flow(72, 50, 0, vec![ip(), ct(0x22, 0x2e)], vec![out(1)]),
        now,
    );
    // +new-est (implies -rpl) vs +rpl, same priority: exclusive too.
    idx.upsert_flow(
        BR,
        flow(73, 50, 0, vec![ip(), ct(0x01, 0x03)], vec![out(1)]),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(73, 50, 0, vec![ip(), ct(0x08, 0x08)], vec![out(2)]),
        now,
    );
    assert_eq!(count(&idx, BR, "ambiguous_priority"), 0);
    // But +trk-inv overlaps +est: both flagged.
    idx.upsert_flow(
        BR,
        flow(72, 50, 0, vec![ip(), ct(0x20, 0x30)], vec![out(2)]),
        now,
    );
    assert_eq!(count(&idx, BR, "ambiguous_priority"), 2);
    // A higher +trk flow covers a lower +est one (+est implies +trk), not a lower -trk one.
    let mut idx = index();
    idx.upsert_flow(BR, flow(5, 90, 0, vec![ct(0x20, 0x20)], vec![out(1)]), now);
    idx.upsert_flow(
        BR,
        flow(5, 10, 0, vec![ip(), ct(0x02, 0x02)], vec![out(2)]),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(5, 10, 0, vec![ip(), ct(0x00, 0x20)], vec![out(3)]),
        now,
    );
    assert_eq!(
        dirty_texts(&idx, "unreachable"),
        ["cookie=0x0, table=5, priority=10,dl_type=2048,ct_state=2 actions=output:2"]
    );
    // A flow no packet can match (+inv+est) is unreachable on its own and meets nothing.
    idx.upsert_flow(BR, flow(6, 10, 0, vec![ct(0x12, 0x12)], vec![out(1)]), now);
    idx.upsert_flow(BR, flow(6, 10, 0, vec![], vec![out(2)]), now);
    assert_eq!(count(&idx, BR, "unreachable"), 2);
    assert_eq!(count(&idx, BR, "ambiguous_priority"), 0);
}

/// Prerequisites: flows whose fields need different protocols never overlap; same protocol does.
#[test]
fn prerequisites_in_overlap() {
    let now = Instant::now();
    let mut idx = index();
    idx.upsert_flow(
        BR,
        flow(0, 10, 0, vec![m("arp_op", 1, 2)], vec![out(1)]),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(0, 10, 0, vec![m("nw_proto", 6, 1)], vec![out(2)]),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(0, 10, 0, vec![m("ipv6_src", 1, 16)], vec![out(3)]),
        now,
    );
    assert_eq!(
        count(&idx, BR, "ambiguous_priority"),
        2,
        "{:?}",
        dirty_texts(&idx, "ambiguous_priority")
    );
    // nw_proto=6 (IPv4 or IPv6) and ipv6_src overlap; arp_op meets neither.
    assert!(
        dirty_texts(&idx, "ambiguous_priority")
            .iter()
            .all(|t| !t.contains("arp_op"))
    );
}

/// `conj_id` flows compete only with other `conj_id` flows; a real `conj_id` clash is still found.
#[test]
fn conj_id_flows_are_not_conflicts() {
    let now = Instant::now();
    let mut idx = index();
    idx.upsert_flow(
        BR,
        flow(82, 70, 0, vec![ip(), m("conj_id", 7, 4)], vec![out(1)]),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(82, 70, 0, vec![ip(), m("reg5", 2, 4)], vec![out(2)]),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(82, 70, 0, vec![ip(), m("conj_id", 8, 4)], vec![out(3)]),
        now,
    );
    assert_eq!(count(&idx, BR, "ambiguous_priority"), 0);
    idx.upsert_flow(
        BR,
        flow(82, 70, 0, vec![m("conj_id", 7, 4)], vec![out(4)]),
        now,
    );
    assert_eq!(count(&idx, BR, "ambiguous_priority"), 2);
}

/// Action lists are told apart exactly: flows differing only in an `Other` action's text conflict,
/// identical ones do not, whatever their hashes.
#[test]
fn ambiguous_priority_compares_actions_exactly() {
    let now = Instant::now();
    let other = |t: &str| FlowAction::Other(t.into());
    let mut idx = index();
    idx.upsert_flow(
        BR,
        flow(0, 5, 0, vec![in_port(1)], vec![other("set_field:1->reg5")]),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(0, 5, 0, vec![ip()], vec![other("set_field:1->reg5")]),
        now,
    );
    assert_eq!(count(&idx, BR, "ambiguous_priority"), 0);
    idx.upsert_flow(
        BR,
        flow(0, 5, 0, vec![arp()], vec![other("set_field:2->reg5")]),
        now,
    );
    assert_eq!(count(&idx, BR, "ambiguous_priority"), 2);
    let rules = RuleSet::compile(&DirtyFlowConfig::default()).unwrap();
    let mut b = BridgeIndex::new(&rules, BR);
    let (x, y) = (
        b.intern_actions(&[other("a")]),
        b.intern_actions(&[other("b")]),
    );
    assert_ne!(x, y);
    assert_eq!(b.intern_actions(&[other("a")]), x);
    b.release_actions(&[other("a")]);
    b.release_actions(&[other("a")]);
    assert!(!b.actions.contains_key(&[other("a")][..]));
}

/// `stale_cookie` ages flows by the switch's `duration`: a fresh index (pinflow restarted) sees a
/// foreign flow older than the grace period as stale at once, and one younger when its grace ends.
#[test]
fn stale_cookie_ages_by_reported_duration() {
    let now = Instant::now();
    let dump = || {
        let mut v: Vec<(FlowEntry, Duration)> = (1..=3)
            .map(|i| {
                let f = flow(0, 10, 0xa, vec![in_port(i)], vec![out(1)]);
                (f, Duration::from_secs(3600))
            })
            .collect();
        v.push((
            flow(0, 10, 0xb, vec![in_port(7)], vec![out(1)]),
            Duration::from_secs(121),
        ));
        v.push((
            flow(0, 10, 0xc, vec![in_port(8)], vec![out(1)]),
            Duration::from_secs(60),
        ));
        v
    };
    for restart in 0..2 {
        let t0 = now + Duration::from_secs(restart * 1000);
        let mut idx = index();
        idx.replace_flows_aged(BR, dump(), t0);
        let stale = dirty_texts(&idx, "stale_cookie");
        assert_eq!(stale.len(), 1, "restart {restart}: {stale:?}");
        assert!(stale[0].contains("cookie=0xb"), "{stale:?}");
        let due = idx.next_deadline().expect("0xc's grace is running");
        assert_eq!(due, t0 + Duration::from_secs(60));
        idx.tick(due);
        assert_eq!(count(&idx, BR, "stale_cookie"), 2);
        assert_eq!(
            idx.findings().next().map(|f| f.severity),
            Some(Severity::Suspect)
        );
    }
    // A re-dump that reports a younger age (the flow was re-installed) re-times it.
    let mut idx = index();
    idx.replace_flows_aged(BR, dump(), now);
    let young: Vec<(FlowEntry, Duration)> = dump()
        .into_iter()
        .map(|(f, age)| {
            let age = if f.cookie == 0xb { Duration::ZERO } else { age };
            (f, age)
        })
        .collect();
    idx.replace_flows_aged(BR, young, now);
    assert_eq!(count(&idx, BR, "stale_cookie"), 0);
    // Flows from the monitor are new: they start their grace period when they arrive.
    idx.upsert_flow(BR, flow(0, 10, 0xd, vec![in_port(9)], vec![out(1)]), now);
    assert_eq!(count(&idx, BR, "stale_cookie"), 0);
}

/// Every finding carries its rule's severity; user rules default to `broken`.
#[test]
fn findings_carry_severity() {
    let now = Instant::now();
    let cfg: DirtyFlowConfig = toml::from_str(
        "[[user_rules]]\nname = \"flood\"\nregex = \"FLOOD\"\n\
         [[user_rules]]\nname = \"odd\"\nregex = \"FLOOD\"\nseverity = \"suspect\"\n",
    )
    .unwrap();
    let mut idx = DirtyFlowIndex::new(&cfg).unwrap();
    let mut f = flow(0, 1, 0, vec![], vec![out(9)]);
    f.source = FlowSource::text("priority=1 actions=FLOOD,output:9", vec![out(9)]);
    idx.set_ports(BR, &ports(&[("a", 1, Some(DEAD_VLAN))]), now);
    idx.upsert_flow(BR, f, now);
    let got: BTreeSet<(&str, Severity)> = idx.findings().map(|f| (f.rule, f.severity)).collect();
    let want: BTreeSet<(&str, Severity)> = [
        ("dead_vlan", Severity::Broken),
        ("output_to_missing_port", Severity::Broken),
        ("flood", Severity::Broken),
        ("odd", Severity::Suspect),
    ]
    .into();
    assert_eq!(got, want);
    let sev: BTreeMap<&str, Severity> = idx.rule_severities().collect();
    assert_eq!(sev.len(), 9);
    assert_eq!(sev["unreachable"], Severity::Suspect);
    assert_eq!(sev["goto_empty_table"], Severity::Broken);
    let bad: Result<DirtyFlowConfig, _> =
        toml::from_str("[[user_rules]]\nname = \"x\"\nregex = \"a\"\nseverity = \"page\"\n");
    let e = bad.unwrap_err().to_string();
    assert!(e.contains("broken") && e.contains("suspect"), "{e}");
}

/// User-rule conditions written with any `ovs-ofctl` spelling match the decoder's canonical field.
#[test]
fn user_rule_field_aliases_match_decoded_flows() {
    let now = Instant::now();
    let cfg: DirtyFlowConfig = toml::from_str(
        r#"
        [[user_rules]]
        name = "vlan_vid"
        fields = [ { field = "vlan_vid", equals = "0x1064" } ]
        [[user_rules]]
        name = "dl_vlan"
        fields = [ { field = "dl_vlan", equals = "100" } ]
        [[user_rules]]
        name = "ssh"
        fields = [ { field = "tcp_dst", equals = "22" }, { field = "eth_type", equals = "0x0800" } ]
        [[user_rules]]
        name = "dns"
        fields = [ { field = "udp_dst", equals = "53" } ]
        [[user_rules]]
        name = "nd"
        fields = [ { field = "icmpv6_type", equals = "135" } ]
        [[user_rules]]
        name = "est"
        fields = [ { field = "ct_state", equals = "+trk+est" } ]
        [[user_rules]]
        name = "fa16"
        fields = [ { field = "eth_src", equals = "fa:16:3e:00:00:00/ff:ff:ff:00:00:00" } ]
        "#,
    )
    .unwrap();
    let mut idx = DirtyFlowIndex::new(&cfg).unwrap();
    let tcp = |port| vec![ip(), m("nw_proto", 6, 1), m("tp_dst", port, 2)];
    idx.upsert_flow(
        BR,
        flow(0, 1, 0, vec![mm("vlan_tci", 0x1064, 0x1fff, 2)], vec![]),
        now,
    );
    idx.upsert_flow(BR, flow(0, 2, 0, tcp(22), vec![]), now);
    idx.upsert_flow(BR, flow(0, 3, 0, tcp(53), vec![]), now);
    idx.upsert_flow(
        BR,
        flow(
            0,
            4,
            0,
            vec![
                m("dl_type", 0x86dd, 2),
                m("nw_proto", 58, 1),
                m("icmp_type", 135, 2),
            ],
            vec![],
        ),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(0, 5, 0, vec![mm("ct_state", 0x22, 0x22, 4)], vec![]),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(0, 6, 0, vec![mm("ct_state", 0x20, 0x20, 4)], vec![]),
        now,
    );
    idx.upsert_flow(
        BR,
        flow(0, 7, 0, vec![m("dl_src", 0xfa16_3e12_3456, 6)], vec![]),
        now,
    );
    let c = idx.counts();
    for (rule, n) in [
        ("vlan_vid", 1),
        ("dl_vlan", 1),
        ("ssh", 1),
        // tp_dst=53 is both TCP and UDP to the decoder's field: udp_dst names the same field.
        ("dns", 1),
        ("nd", 1),
        ("est", 1),
        ("fa16", 1),
    ] {
        assert_eq!(c.get(&(BR.into(), rule.into())), Some(&n), "{rule}");
    }
}
