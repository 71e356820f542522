//! Plain-text tables for a person at a terminal (`pinflow check`, `pinflow pinning`,
//! `pinflow flows --dirty`).

use crate::model::flows::DirtyFlow;
use crate::model::health::CheckReport;
use crate::model::pinning::PinningReport;
use std::fmt::Write as _;

/// Renders the pinning report: one row per vCPU (`PIN` says what the pin is: `dedicated`,
/// `shared`, `floating` or `none`; `PIN-CPUS` its pCPUs), then every drift (an overlap's
/// `ACTUAL` lists every owner with its pCPUs, not the bounded label of the metric).
pub(crate) fn pinning_table(r: &PinningReport) -> String {
    let mut rows: Vec<[String; 10]> = vec![
        [
            "DOMAIN",
            "NAME",
            "PROJECT",
            "VCPU",
            "TID",
            "PIN",
            "PIN-CPUS",
            "AFFINITY",
            "CGROUP-CPUS",
            "LAST-CPU",
        ]
        .map(String::from),
    ];
    let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    for d in &r.domains {
        let nova = d.nova.as_ref();
        for v in &d.vcpus {
            rows.push([
                d.domain.clone(),
                nova.map(|n| n.name.clone()).unwrap_or_else(|| "-".into()),
                nova.map(|n| n.project.clone())
                    .unwrap_or_else(|| "-".into()),
                v.vcpu.to_string(),
                opt(v.tid.map(|t| t.to_string())),
                v.kind.to_string(),
                opt(v.pin.as_ref().map(|p| p.to_string())),
                opt(v.affinity.as_ref().map(|p| p.to_string())),
                opt(v.cgroup_cpus.as_ref().map(|p| p.to_string())),
                opt(v.last_cpu.map(|c| c.to_string())),
            ]);
        }
    }
    let mut out = align(&rows);
    let drifts: Vec<_> = r
        .domains
        .iter()
        .flat_map(|d| d.drifts.iter().map(move |x| (d, x)))
        .collect();
    if drifts.is_empty() {
        out.push_str("\nno pinning drift\n");
    } else {
        let mut rows: Vec<[String; 5]> =
            vec![["DOMAIN", "VCPU", "CHECK", "EXPECTED", "ACTUAL"].map(String::from)];
        for (d, x) in drifts {
            rows.push([
                d.domain.clone(),
                x.vcpu.clone(),
                x.check.to_string(),
                x.expected.clone(),
                if x.owners.is_empty() {
                    x.actual.clone()
                } else {
                    let mut listed = x
                        .owners
                        .iter()
                        .map(|o| format!("{} ({})", o.cpus, o.domain))
                        .collect::<Vec<_>>()
                        .join(", ");
                    if x.more_owners > 0 {
                        listed.push_str(&format!(" +{} more", x.more_owners));
                    }
                    listed
                },
            ]);
        }
        out.push_str("\nDRIFT\n");
        out.push_str(&align(&rows));
    }
    out
}

/// Renders dirty flows (as ordered): bridge, rule, severity, table, cookie, the port the finding
/// is labelled with (`(deleted)` when it is gone from OVSDB, its ofport when no name is known)
/// and that port's instance (libvirt domain and Nova name), then the flow text.
pub(crate) fn dirty_flows_table(flows: &[DirtyFlow]) -> String {
    let mut rows = vec![
        [
            "BRIDGE", "RULE", "SEVERITY", "TABLE", "COOKIE", "PORT", "INSTANCE", "FLOW",
        ]
        .map(String::from),
    ];
    for f in flows {
        let port = f.port().or_else(|| f.ports.first());
        rows.push([
            f.bridge.clone(),
            f.rule.clone(),
            f.severity.to_string(),
            f.table.map_or_else(|| "-".into(), |t| t.to_string()),
            f.cookie.map_or_else(|| "-".into(), |c| format!("{c:#x}")),
            port.map_or_else(
                || "-".into(),
                |p| match (p.port.as_str(), p.ofport) {
                    ("", Some(of)) => format!("ofport {of} (unknown)"),
                    ("", None) => "-".into(),
                    (name, _) if p.deleted => format!("{name} (deleted)"),
                    (name, _) => name.to_string(),
                },
            ),
            port.filter(|p| !p.domain.is_empty()).map_or_else(
                || "-".into(),
                |p| {
                    if p.name.is_empty() {
                        p.domain.clone()
                    } else {
                        format!("{} ({})", p.domain, p.name)
                    }
                },
            ),
            f.flow.clone(),
        ]);
    }
    let mut out = align(&rows);
    if flows.is_empty() {
        out.push_str("no dirty flows\n");
    }
    out
}

/// Renders `pinflow check`: the config, then one `SOURCE STATE DETAIL` row per source (an
/// `openflow` row per bridge, its detail starting with the bridge's name).
pub(crate) fn check_table(r: &CheckReport) -> String {
    let config = r.config.as_deref().unwrap_or("(defaults)");
    let mut rows = vec![match &r.config_error {
        None => ["config".into(), "ok".into(), config.to_string()],
        Some(e) => ["config".into(), "ERROR".into(), e.clone()],
    }];
    for c in &r.sources {
        let detail = match &c.bridge {
            Some(b) => format!("{b}: {}", c.detail),
            None => c.detail.clone(),
        };
        rows.push([c.source.to_string(), c.state.as_str().to_string(), detail]);
    }
    let mut out = align(&rows);
    for c in &r.sources {
        for p in &c.problems {
            let _ = writeln!(out, "  {} error: {p}", c.source);
        }
    }
    out
}

/// Left-aligns columns with two spaces between them.
pub(crate) fn align<const N: usize>(rows: &[[String; N]]) -> String {
    let mut width = [0usize; N];
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            let _ = write!(line, "{c:<w$}  ", w = width[i]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
