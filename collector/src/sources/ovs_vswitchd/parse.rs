//! Parsers of the text ovs-vswitchd's and ovsdb-server's unixctl commands reply with (both
//! daemons share `coverage/show` and the `memory/show` format). They take what they know and
//! skip what they do not (other OVS versions add lines and fields); a reply without the parts a
//! command always prints is an error naming what is missing.

use crate::model::ovs_vswitchd::{
    BondState, COVERAGE_EVENTS, OBJECT_KINDS, OVSDB_SERVER_OBJECT_KINDS, UpcallDatapath,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// `coverage/show`: the `total:` of every listed event (events never hit are not listed: 0).
///
/// ```text
/// Event coverage, avg rate over last: 5 seconds, last minute, last hour,  hash=…:
/// bridge_reconfigure         0.0/sec     0.000/sec        0.0000/sec   total: 3
/// 114 events never hit
/// ```
pub(crate) fn coverage_totals(text: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut lines = text.lines();
    if !lines
        .next()
        .is_some_and(|l| l.starts_with("Event coverage"))
    {
        return Err("coverage/show reply does not start with \"Event coverage\"".into());
    }
    let mut out = BTreeMap::new();
    for line in lines {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        if let [name, .., "total:", n] = tokens.as_slice()
            && let Ok(n) = n.parse::<u64>()
        {
            out.insert((*name).to_string(), n);
        }
    }
    Ok(out)
}

/// The fixed subset of [`COVERAGE_EVENTS`] from ovs-vswitchd's `coverage/show` reply, in that
/// order.
pub(crate) fn coverage_subset(text: &str) -> Result<Vec<(&'static str, u64)>, String> {
    coverage_of(text, &COVERAGE_EVENTS)
}

/// `events` from a `coverage/show` reply, in that order (0 for events not listed).
pub(crate) fn coverage_of(
    text: &str,
    events: &[&'static str],
) -> Result<Vec<(&'static str, u64)>, String> {
    let all = coverage_totals(text)?;
    Ok(events
        .iter()
        .map(|e| (*e, all.get(*e).copied().unwrap_or(0)))
        .collect())
}

/// `memory/show`: `key:value` pairs separated by spaces, where a key may itself hold spaces
/// (`udpif keys:12`).
pub(crate) fn memory_fields(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut key = String::new();
    for tok in text.split_whitespace() {
        match tok.rsplit_once(':') {
            Some((k, v)) => {
                if !key.is_empty() {
                    key.push(' ');
                }
                key.push_str(k);
                if let Ok(v) = v.parse::<u64>() {
                    *out.entry(std::mem::take(&mut key)).or_insert(0) += v;
                }
                key.clear();
            }
            None => {
                if !key.is_empty() {
                    key.push(' ');
                }
                key.push_str(tok);
            }
        }
    }
    out
}

/// What pinflow exports of `memory/show`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Memory {
    /// [`OBJECT_KINDS`] in order, 0 when not listed.
    pub(crate) objects: Vec<(&'static str, u64)>,
    /// Upcall handler threads (`handlers`).
    pub(crate) handlers: Option<u64>,
    /// Revalidator threads (`revalidators`).
    pub(crate) revalidators: Option<u64>,
}

/// `memory/show` into [`Memory`]: `idl-cells*` (one per database in OVS ≥ 3.0) are summed into
/// `idl_cells`, `udpif keys` becomes `udpif_keys`.
pub(crate) fn memory(text: &str) -> Memory {
    let fields = memory_fields(text);
    let get = |kind: &str| -> u64 {
        match kind {
            "idl_cells" => fields
                .iter()
                .filter(|(k, _)| k.starts_with("idl-cells"))
                .map(|(_, v)| *v)
                .sum(),
            "udpif_keys" => fields.get("udpif keys").copied().unwrap_or(0),
            k => fields.get(k).copied().unwrap_or(0),
        }
    };
    Memory {
        objects: OBJECT_KINDS.iter().map(|k| (*k, get(k))).collect(),
        handlers: fields.get("handlers").copied(),
        revalidators: fields.get("revalidators").copied(),
    }
}

/// ovsdb-server's `memory/show` (`atoms:231 cells:307 monitors:2 n-weak-refs:0 sessions:1`; it
/// lists `triggers` and `backlog` only while nonzero, and raft fields for clustered databases):
/// [`OVSDB_SERVER_OBJECT_KINDS`] in order (0 when not listed) and the `backlog` bytes. A reply
/// without `cells` or `sessions` (which ovsdb-server always lists) is not ovsdb-server's.
pub(crate) fn ovsdb_server_memory(text: &str) -> Result<OvsdbServerMemory, String> {
    let fields = memory_fields(text);
    if !fields.contains_key("cells") || !fields.contains_key("sessions") {
        return Err(format!(
            "memory/show reply lists no cells or sessions: {:?}",
            text.chars().take(120).collect::<String>()
        ));
    }
    let objects = OVSDB_SERVER_OBJECT_KINDS
        .iter()
        .map(|k| (*k, fields.get(*k).copied().unwrap_or(0)))
        .collect();
    Ok(OvsdbServerMemory {
        objects,
        backlog_bytes: fields.get("backlog").copied().unwrap_or(0),
    })
}

/// What pinflow exports of ovsdb-server's `memory/show`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OvsdbServerMemory {
    /// [`OVSDB_SERVER_OBJECT_KINDS`] in order, 0 when not listed.
    pub(crate) objects: Vec<(&'static str, u64)>,
    /// `backlog` (bytes queued to clients), 0 when not listed.
    pub(crate) backlog_bytes: u64,
}

/// `upcall/show`: one block per datapath.
///
/// ```text
/// system@ovs-system:
///   flows         : (current 12) (avg 11) (max 150) (limit 200000)
///   dump duration : 2ms
///   ufid enabled : true
///
///   4: (keys 3)
/// ```
/// The datapath is named as the kernel names it (the part after `@`).
pub(crate) fn upcall(text: &str) -> Result<Vec<UpcallDatapath>, String> {
    let mut out: Vec<UpcallDatapath> = Vec::new();
    for line in text.lines() {
        if !line.starts_with([' ', '\t']) && line.trim_end().ends_with(':') {
            let head = line.trim_end().trim_end_matches(':');
            let name = head.rsplit_once('@').map_or(head, |(_, n)| n);
            out.push(UpcallDatapath {
                name: name.to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(dp) = out.last_mut() else {
            continue;
        };
        let l = line.trim();
        if let Some(rest) = field(l, "flows") {
            dp.flows = paren_value(rest, "current")
                .ok_or_else(|| format!("{}: no current flows in {l:?}", dp.name))?;
            dp.flow_limit = paren_value(rest, "limit")
                .ok_or_else(|| format!("{}: no flow limit in {l:?}", dp.name))?;
        } else if let Some(rest) = field(l, "dump duration") {
            dp.dump_duration = rest
                .strip_suffix("ms")
                .and_then(|ms| ms.trim().parse::<u64>().ok())
                .map(Duration::from_millis);
        } else if let Some((id, rest)) = l.split_once(": (keys ")
            && id.chars().all(|c| c.is_ascii_digit())
            && let Some(keys) = rest.strip_suffix(')').and_then(|k| k.parse::<u64>().ok())
        {
            dp.revalidators += 1;
            dp.ukeys += keys;
        }
    }
    if let Some(dp) = out.iter().find(|d| d.flow_limit == 0) {
        return Err(format!(
            "upcall/show: datapath {} has no flow limit",
            dp.name
        ));
    }
    Ok(out)
}

/// The value of `name : value` (any spacing around the colon).
/// `bond/show`: each bond's members and whether each is enabled (empty text: no bonds).
///
/// ```text
/// ---- bond0 ----
/// bond_mode: balance-tcp
/// …
/// member eth0: enabled
///   active member
///   may_enable: true
///
/// member eth1: disabled
/// ```
///
/// OVS before 2.16 says `slave` for `member`. Member lines outside a bond block are an error.
pub(crate) fn bonds(text: &str) -> Result<Vec<BondState>, String> {
    let mut out: Vec<BondState> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" ----"))
        {
            out.push(BondState {
                bond: name.to_string(),
                members: Vec::new(),
            });
            continue;
        }
        let Some(rest) = line
            .strip_prefix("member ")
            .or_else(|| line.strip_prefix("slave "))
        else {
            continue;
        };
        let Some((member, state)) = rest.rsplit_once(": ") else {
            continue;
        };
        let enabled = match state.trim() {
            "enabled" => true,
            "disabled" => false,
            _ => continue,
        };
        let bond = out
            .last_mut()
            .ok_or_else(|| format!("bond/show: member {member:?} before any bond"))?;
        bond.members.push((member.to_string(), enabled));
    }
    Ok(out)
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?.trim_start().strip_prefix(':')?;
    Some(rest.trim())
}

/// `N` of `(key N)` in `text`.
fn paren_value(text: &str, key: &str) -> Option<u64> {
    let start = text.find(&format!("({key} "))? + key.len() + 2;
    let rest = text.get(start..)?;
    rest.get(..rest.find(')')?)?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const COVERAGE: &str =
        "Event coverage, avg rate over last: 5 seconds, last minute, last hour,  hash=ca899df6:
bridge_reconfigure         0.0/sec     0.000/sec        0.0000/sec   total: 3
upcall_flow_limit_hit      1.2/sec     0.100/sec        0.0017/sec   total: 18446744073709551615
dpif_flow_put              0.0/sec     0.000/sec        0.0000/sec   total: 25
114 events never hit
";

    #[test]
    fn coverage() {
        let all = coverage_totals(COVERAGE).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all["upcall_flow_limit_hit"], u64::MAX);
        let sub = coverage_subset(COVERAGE).unwrap();
        assert_eq!(sub.len(), COVERAGE_EVENTS.len());
        let get = |e: &str| sub.iter().find(|(n, _)| *n == e).unwrap().1;
        assert_eq!(get("bridge_reconfigure"), 3);
        assert_eq!(get("dpif_flow_put"), 25);
        assert_eq!(get("upcall_flow_limit_kill"), 0);
        assert!(coverage_totals("garbage\nx total: 3").is_err());
        assert!(coverage_totals("").is_err());
        // Truncated or odd lines are skipped, not errors.
        let odd = "Event coverage, …:\nfoo total:\nbar 1 total: x\n total: 5\n";
        assert!(coverage_totals(odd).unwrap().is_empty());
    }

    #[test]
    fn memory_show() {
        let m = memory(
            "handlers:4 idl-cells-Open_vSwitch:96 idl-cells-other:4 ofconns:2 ports:3 revalidators:2 rules:5 udpif keys:12\n",
        );
        assert_eq!(
            m.objects,
            vec![
                ("rules", 5),
                ("ports", 3),
                ("udpif_keys", 12),
                ("ofconns", 2),
                ("idl_cells", 100)
            ]
        );
        assert_eq!((m.handlers, m.revalidators), (Some(4), Some(2)));
        let old = memory("handlers:1 idl-cells:96 ports:1 revalidators:1 rules:5");
        assert_eq!(old.objects[4], ("idl_cells", 96));
        let none = memory("");
        assert_eq!(none.handlers, None);
        assert!(none.objects.iter().all(|(_, n)| *n == 0));
        assert!(memory_fields("a:b c d:1").get("c d") == Some(&1));
    }

    /// Replies captured from ovs-vswitchd 3.1 (userspace and dummy datapaths, one flow).
    #[test]
    fn captured_replies() {
        let fx = |n: &str| {
            std::fs::read_to_string(format!(
                "{}/tests/fixtures/ovs_unixctl/{n}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let all = coverage_totals(&fx("coverage-show.txt")).unwrap();
        assert!(all.len() > 30, "{all:?}");
        assert!(all["bridge_reconfigure"] > 0 && all["dpif_flow_put"] > 0);
        let m = memory(&fx("memory-show.txt"));
        assert_eq!(m.objects[2], ("udpif_keys", 1));
        assert_eq!((m.handlers, m.revalidators), (Some(2), Some(2)));
        let dps = upcall(&fx("upcall-show.txt")).unwrap();
        let names: Vec<&str> = dps.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["ovs-netdev", "ovs-dummy"]);
        assert_eq!(
            (dps[1].flows, dps[1].flow_limit, dps[1].ukeys),
            (1, 10000, 1)
        );
        let b = bonds(&fx("bond-show.txt")).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].bond, "pflx-bond0");
        assert_eq!(
            b[0].members,
            [
                ("pflx-a1".to_string(), true),
                ("pflx-a2".to_string(), false)
            ]
        );
        assert_eq!(b[1].members.len(), 2);
        let stat = fx("proc-stat.txt");
        let s = super::super::process::parse(1, &stat, &fx("proc-status.txt"), 100.0).unwrap();
        assert!(s.threads >= 2 && s.resident_bytes > 0, "{s:?}");
    }

    /// ovsdb-server 3.1's replies, captured with a private ovs-vswitchd connected to it (one
    /// bridge of three dummy ports).
    #[test]
    fn captured_ovsdb_server_replies() {
        use crate::model::ovs_vswitchd::OVSDB_SERVER_COVERAGE_EVENTS;
        let fx = |n: &str| {
            std::fs::read_to_string(format!(
                "{}/tests/fixtures/ovs_unixctl/{n}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let cov = coverage_of(
            &fx("ovsdb-server-coverage-show.txt"),
            &OVSDB_SERVER_COVERAGE_EVENTS,
        )
        .unwrap();
        assert_eq!(
            cov,
            [
                ("txn_forward_create", 0),
                ("txn_forward_cancel", 0),
                ("raft_entry_serialize", 0),
                ("stream_open", 0),
                ("poll_zero_timeout", 14)
            ]
        );
        let m = ovsdb_server_memory(&fx("ovsdb-server-memory-show.txt")).unwrap();
        let (objects, backlog) = (m.objects, m.backlog_bytes);
        assert_eq!(
            objects,
            [
                ("cells", 307),
                ("atoms", 231),
                ("monitors", 2),
                ("sessions", 1),
                ("triggers", 0)
            ]
        );
        assert_eq!(backlog, 0);
        // ovs-vswitchd's memory/show is not ovsdb-server's.
        assert!(ovsdb_server_memory(&fx("memory-show.txt")).is_err());
    }

    /// The fields ovsdb-server lists only while nonzero, and a clustered database's raft fields.
    #[test]
    fn ovsdb_server_memory_variants() {
        let busy = "atoms:5 backlog:65536 cells:9 monitors:3 n-weak-refs:0 raft-backlog-kB:0 \
                    raft-connections:4 raft-log:123 sessions:2 triggers:1 txn-history:10 \
                    txn-history-atoms:40\n";
        let m = ovsdb_server_memory(busy).unwrap();
        let (objects, backlog) = (m.objects, m.backlog_bytes);
        assert_eq!(
            objects,
            [
                ("cells", 9),
                ("atoms", 5),
                ("monitors", 3),
                ("sessions", 2),
                ("triggers", 1)
            ]
        );
        assert_eq!(backlog, 65536);
        assert!(ovsdb_server_memory("").is_err());
        assert!(ovsdb_server_memory("cells:x sessions:1").is_err());
        assert!(coverage_of("garbage", &["x"]).is_err());
    }

    #[test]
    fn bond_show_variants() {
        assert!(bonds("").unwrap().is_empty());
        let old = "---- b ----\nbond_mode: active-backup\n\nslave e0: enabled\n  active slave\n\
                   slave e:1: disabled\nmember e2: unknown\nmember junk\n";
        let b = bonds(old).unwrap();
        assert_eq!(
            b[0].members,
            [("e0".to_string(), true), ("e:1".to_string(), false)]
        );
        assert!(bonds("member e0: enabled\n").is_err());
    }

    #[test]
    fn upcall_show() {
        let text = "netdev@ovs-netdev:
  flows         : (current 0) (avg 0) (max 0) (limit 10000)
  dump duration : 1ms
  ufid enabled : true

  5: (keys 0)
system@ovs-system:
  flows         : (current 12) (avg 11) (max 150) (limit 200000)
  offloaded flows : 0
  dump duration : 23ms
  ufid enabled : true

  4: (keys 3)
  5: (keys 4)
";
        let dps = upcall(text).unwrap();
        assert_eq!(dps.len(), 2);
        assert_eq!(dps[0].name, "ovs-netdev");
        assert_eq!(
            (dps[0].flows, dps[0].flow_limit, dps[0].revalidators),
            (0, 10000, 1)
        );
        assert_eq!(dps[0].dump_duration, Some(Duration::from_millis(1)));
        assert_eq!(dps[1].name, "ovs-system");
        assert_eq!(
            (
                dps[1].flows,
                dps[1].flow_limit,
                dps[1].revalidators,
                dps[1].ukeys
            ),
            (12, 200000, 2, 7)
        );
        assert_eq!(dps[1].dump_duration, Some(Duration::from_millis(23)));
        assert!(upcall("").unwrap().is_empty());
        assert!(upcall("system@x:\n  flows : (current 1)\n").is_err());
        assert!(upcall("system@x:\n  dump duration : 1ms\n").is_err());
    }
}
