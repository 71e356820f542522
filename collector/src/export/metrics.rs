//! Prometheus exposition of the shared state (DESIGN.md's metrics contract).
//!
//! The body is made of sections, one per area, each encoded from the latest reports with
//! `prometheus_client` and cached per version of the reports it reads: a scrape re-encodes only
//! the areas whose reports changed since the last one (and the small health section, which
//! changes with every pass), so nothing is computed per scrape that was computed before. Series
//! of vanished domains or healed drifts disappear with the report.

use super::health::BuildInfo;
use crate::export::ExportConfig;
use crate::model::state::SharedState;
use axum::body::Bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use std::any::Any;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, Weak};

/// The text formats `/metrics` answers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// OpenMetrics 1.0 text (what Prometheus asks for).
    OpenMetrics,
    /// Prometheus text format 0.0.4 (curl, `promtool check metrics`, older scrapers).
    Prometheus,
}

/// The areas of the exposition, in the order of the family table (pinning in two: findings and
/// counters).
const SECTIONS: usize = 10;

/// pinflow's exposition: the shared state's reports, encoded section by section and cached.
pub(crate) struct Exposition {
    state: SharedState,
    build: BuildInfo,
    limits: ExportConfig,
    cached: [Mutex<Option<Section>>; SECTIONS],
}

/// One area's text, and the versions of what it was encoded from.
struct Section {
    versions: Vec<Version>,
    openmetrics: Bytes,
    /// Made from `openmetrics` on the first scrape that asks for it.
    prometheus: Option<Bytes>,
}

/// The version of something a section reads.
enum Version {
    /// A report's `Arc` (the engine publishes a new one per change). The `Weak` keeps the
    /// allocation, not the report, alive, so the address cannot be reused by a later report
    /// while it is compared.
    Report(Weak<dyn Any + Send + Sync>),
    /// The pinning evaluation the findings come from.
    Findings(u64),
}

/// A report's version, as a section keeps it.
fn version<T: Send + Sync + 'static>(report: &Arc<T>) -> Version {
    let weak: Weak<T> = Arc::downgrade(report);
    Version::Report(weak)
}

fn same_versions(a: &[Version], b: &[Version]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Version::Report(x), Version::Report(y)) => std::ptr::addr_eq(x.as_ptr(), y.as_ptr()),
            (Version::Findings(x), Version::Findings(y)) => x == y,
            _ => false,
        })
}

/// Encodes what `encode` writes as OpenMetrics text without the `# EOF` line.
fn encode_part(
    encode: impl Fn(&mut DescriptorEncoder) -> Result<(), std::fmt::Error> + Send + Sync + 'static,
) -> Result<String, std::fmt::Error> {
    /// A collector that writes one section (`Collector` requires `Debug`).
    struct Part<F>(F);
    impl<F> std::fmt::Debug for Part<F> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Part")
        }
    }
    impl<F> Collector for Part<F>
    where
        F: Fn(&mut DescriptorEncoder) -> Result<(), std::fmt::Error> + Send + Sync + 'static,
    {
        fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            (self.0)(&mut enc)
        }
    }
    let mut r = Registry::default();
    r.register_collector(Box::new(Part(encode)));
    let mut out = String::with_capacity(4 * 1024);
    prometheus_client::encoding::text::encode_registry(&mut out, &r)?;
    Ok(out)
}

impl Exposition {
    pub(crate) fn new(state: SharedState, build: BuildInfo, limits: ExportConfig) -> Self {
        Exposition {
            state,
            build,
            limits,
            cached: Default::default(),
        }
    }

    /// The whole body in `format`.
    pub(crate) fn render(&self, format: Format) -> Result<Bytes, std::fmt::Error> {
        let st = &self.state;
        let pinning = st.pinning.get();
        let host_cpu = st.host_cpu.get();
        let flows = st.flows.get();
        let interfaces = st.ovs_interfaces.get();
        let vswitchd = st.vswitchd.get();
        let datapath = st.datapath.get();
        let datapath_events = st.datapath_events.get();
        let conntrack = st.conntrack.get();
        let limits = self.limits.clone();
        let mut parts: Vec<Bytes> = Vec::with_capacity(SECTIONS + 2);
        let mut section = |i: usize, versions: Vec<Version>, encode| {
            parts.push(self.section(i, versions, encode, format)?);
            Ok::<(), std::fmt::Error>(())
        };
        // A report not made by an evaluation (version 0) is its own version.
        let findings = match pinning.findings_version {
            0 => version(&pinning),
            v => Version::Findings(v),
        };
        section(0, vec![findings], {
            let r = pinning.clone();
            Box::new(move |e: &mut DescriptorEncoder| {
                super::pinning::encode_pinning_findings(e, &r)
            }) as Enc
        })?;
        section(1, vec![version(&pinning)], {
            let r = pinning.clone();
            Box::new(move |e: &mut DescriptorEncoder| {
                super::pinning::encode_pinning_counters(e, &r)
            })
        })?;
        section(2, vec![version(&host_cpu)], {
            let r = host_cpu.clone();
            Box::new(move |e: &mut DescriptorEncoder| super::host_cpu::encode_host_cpu(e, &r))
        })?;
        section(3, vec![version(&flows)], {
            let r = flows.clone();
            Box::new(move |e: &mut DescriptorEncoder| super::flows::encode_flows(e, &r, &limits))
        })?;
        section(4, vec![version(&interfaces), version(&flows)], {
            let (r, f) = (interfaces.clone(), flows.clone());
            Box::new(move |e: &mut DescriptorEncoder| {
                super::interfaces::encode_interfaces(e, &r, &f)
            })
        })?;
        section(
            5,
            vec![version(&interfaces), version(&flows), version(&vswitchd)],
            {
                let (r, f, v) = (interfaces.clone(), flows.clone(), vswitchd.clone());
                Box::new(move |e: &mut DescriptorEncoder| super::links::encode_links(e, &r, &f, &v))
            },
        )?;
        section(6, vec![version(&datapath), version(&datapath_events)], {
            let (r, ev) = (datapath.clone(), datapath_events.clone());
            Box::new(move |e: &mut DescriptorEncoder| super::datapath::encode_datapath(e, &r, &ev))
        })?;
        section(7, vec![version(&vswitchd)], {
            let r = vswitchd.clone();
            Box::new(move |e: &mut DescriptorEncoder| super::ovs_vswitchd::encode_vswitchd(e, &r))
        })?;
        section(8, vec![version(&interfaces)], {
            let r = interfaces.clone();
            Box::new(move |e: &mut DescriptorEncoder| super::ovs_vswitchd::encode_offload(e, &r))
        })?;
        section(9, vec![version(&conntrack)], {
            let r = conntrack.clone();
            Box::new(move |e: &mut DescriptorEncoder| super::conntrack::encode_conntrack(e, &r))
        })?;
        // Health changes with every pass of every source: encoded on each scrape (a few dozen
        // lines).
        let (state, build) = (st.clone(), self.build.clone());
        let health = encode_part(move |e| super::health::encode_health(e, &state, &build))?;
        parts.push(Bytes::from(match format {
            Format::OpenMetrics => health + "# EOF\n",
            Format::Prometheus => openmetrics_to_prometheus(&health),
        }));
        let mut body = Vec::with_capacity(parts.iter().map(Bytes::len).sum());
        for p in &parts {
            body.extend_from_slice(p);
        }
        Ok(Bytes::from(body))
    }

    /// Section `i` in `format`: the cached text when it was encoded from `versions`, else
    /// `encode`'s, which replaces it.
    fn section(
        &self,
        i: usize,
        versions: Vec<Version>,
        encode: Enc,
        format: Format,
    ) -> Result<Bytes, std::fmt::Error> {
        // A poisoned lock only means a panic elsewhere; the slot is replaced whole.
        let mut slot = self.cached[i].lock().unwrap_or_else(|e| e.into_inner());
        let fresh = slot
            .as_ref()
            .is_some_and(|s| same_versions(&s.versions, &versions));
        if !fresh {
            *slot = Some(Section {
                versions,
                openmetrics: Bytes::from(encode_part(encode)?),
                prometheus: None,
            });
        }
        let Some(s) = slot.as_mut() else {
            return Err(std::fmt::Error);
        };
        Ok(match format {
            Format::OpenMetrics => s.openmetrics.clone(),
            Format::Prometheus => s
                .prometheus
                .get_or_insert_with(|| {
                    Bytes::from(openmetrics_to_prometheus(&String::from_utf8_lossy(
                        &s.openmetrics,
                    )))
                })
                .clone(),
        })
    }
}

/// A section's encoder, holding the reports it reads.
type Enc = Box<dyn Fn(&mut DescriptorEncoder) -> Result<(), std::fmt::Error> + Send + Sync>;

/// Content type of the OpenMetrics text format.
pub(crate) const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format 0.0.4.
pub(crate) const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites OpenMetrics text into the Prometheus text format 0.0.4, for clients that did not ask for
/// OpenMetrics (curl, `promtool check metrics`, older scrapers): counter families are named with
/// their `_total` suffix in `# HELP`/`# TYPE`, and `# UNIT`/`# EOF` lines are dropped. Samples are
/// identical in both formats.
pub(crate) fn openmetrics_to_prometheus(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<&str> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                let _ = writeln!(out, "# HELP {name} {text}");
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::export::families;
    use crate::model::pinning::{
        Check, DomainReport, Drift, HostNode, HugepagePool, PinKind, PinningReport, VcpuReport,
    };
    use std::collections::BTreeMap;

    fn state_with_drift(actual: &str) -> SharedState {
        let st = SharedState::default();
        st.pinning.set(PinningReport {
            domains: vec![DomainReport {
                domain: "instance-1".into(),
                uuid: "u".into(),
                nova: None,
                pinned: true,
                drifted_vcpus: Check::ALL
                    .iter()
                    .map(|c| (*c, u32::from(*c == Check::Affinity)))
                    .collect(),
                drifts: vec![Drift {
                    check: Check::Affinity,
                    vcpu: "0".into(),
                    expected: "0".into(),
                    actual: actual.into(),
                    owners: Default::default(),
                    more_owners: 0,
                }]
                .into(),
                vcpus: [PinKind::Dedicated, PinKind::Floating, PinKind::Floating]
                    .into_iter()
                    .enumerate()
                    .map(|(i, kind)| VcpuReport {
                        vcpu: i as u32,
                        tid: None,
                        kind,
                        pin: None,
                        affinity: None,
                        cgroup_cpus: None,
                        cgroup: None,
                        last_cpu: None,
                        offpin_seconds: None,
                    })
                    .collect(),
                offpin_seconds_total: Some(1.5),
                migrations_total: Some(3),
                wait_seconds_total: 0.25,
                stolen: vec![crate::model::pinning::PcpuStolen {
                    cpu: 0,
                    vcpu: Some(0),
                    seconds_total: BTreeMap::from([("host", 0.5), ("kernel", 0.25)]),
                    window_share: 0.1,
                }],
                numa_memory_bytes: None,
                numa_mems: None,
            }],
            pcpu_pinned_vcpus: BTreeMap::from([(0, 1)]),
            numa_nodes: vec![HostNode {
                node: 0,
                cpus: "0-1".parse().unwrap(),
                hugepages: vec![HugepagePool {
                    size_bytes: 2 << 20,
                    total: 16,
                    free: 4,
                }],
            }],
            passes: Default::default(),
            findings_version: crate::model::pinning::next_findings_version(),
        });
        st
    }

    /// The OpenMetrics body of `e`.
    pub(crate) fn text(e: &Exposition) -> Result<String, std::fmt::Error> {
        let body = e.render(Format::OpenMetrics)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    fn build() -> BuildInfo {
        BuildInfo::current("6.18".into())
    }

    /// The /metrics text of `st` with the default export limits (for the areas' encoder tests).
    pub(crate) fn render_state(st: SharedState) -> String {
        text(&Exposition::new(st, build(), ExportConfig::default())).expect("encodes")
    }

    /// Asserts that every sample of `text` belongs to a family of the table and carries exactly
    /// the label names the table gives it; returns the sample names seen.
    pub(crate) fn assert_samples_match_the_table(text: &str) -> Vec<String> {
        let mut seen = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, labels) = sample_label_names(line);
            let f = families::by_name(&name)
                .unwrap_or_else(|| panic!("{name} is not in the family table: {line}"));
            assert!(
                families::exported(f),
                "{name} is exported now: delete it from families::NOT_YET_EXPORTED"
            );
            let mut want = families::exported_labels(f);
            want.sort_unstable();
            let mut have: Vec<&str> = labels.iter().map(String::as_str).collect();
            have.sort_unstable();
            assert_eq!(
                have, want,
                "{name}: labels differ from the family table (a label listed in \
                 families::NOT_YET_EXPORTED that is exported now must be deleted there): {line}"
            );
            seen.push(name);
        }
        seen
    }

    /// Name and label names of one exposition sample line.
    fn sample_label_names(line: &str) -> (String, Vec<String>) {
        let Some(open) = line.find('{') else {
            return (line.split(' ').next().unwrap_or("").to_string(), vec![]);
        };
        let mut labels = Vec::new();
        let mut rest = &line[open + 1..];
        while let Some((key, after)) = rest.split_once("=\"") {
            labels.push(key.trim_start_matches(',').to_string());
            let mut escaped = false;
            let end = after
                .char_indices()
                .find(|(_, c)| {
                    let close = *c == '"' && !escaped;
                    escaped = *c == '\\' && !escaped;
                    close
                })
                .map_or(after.len(), |(i, _)| i);
            rest = &after[(end + 1).min(after.len())..];
        }
        (line[..open].to_string(), labels)
    }

    #[test]
    fn a_disconnected_bridge_serves_no_flow_counts_or_findings_as_fresh() {
        use crate::model::flows::{BridgeStatus, DirtyFlow, FlowsReport};
        let finding = |bridge: &str, stale: bool| DirtyFlow {
            bridge: bridge.into(),
            rule: "in_port_missing".into(),
            severity: "broken",
            table: Some(0),
            cookie: Some(0),
            flow: format!("priority=5,in_port=99 on {bridge}"),
            ports: vec![],
            domain: None,
            stale,
        };
        let bridge = |connected: bool| BridgeStatus {
            connected,
            error: None,
            flows_per_table: [(0u8, 3usize)].into(),
            ..Default::default()
        };
        let st = SharedState::default();
        st.flows.set(FlowsReport {
            bridges: [
                ("br-up".into(), bridge(true)),
                ("br-down".into(), bridge(false)),
            ]
            .into(),
            dirty_counts: ["br-up", "br-down"]
                .map(|b| (b.to_string(), [("in_port_missing".to_string(), 1)].into()))
                .into(),
            dirty: vec![finding("br-down", true), finding("br-up", false)],
            dirty_total: 2,
            ..Default::default()
        });
        let text = text(&Exposition::new(st, build(), ExportConfig::default())).unwrap();
        for want in [
            "pinflow_ovs_flows{bridge=\"br-up\",table=\"0\"} 3",
            "pinflow_ovs_dirty_flows{bridge=\"br-up\",rule=\"in_port_missing\"} 1",
            "on br-up\"} 1",
        ] {
            assert!(text.contains(want), "missing {want}:\n{text}");
        }
        assert!(!text.contains("br-down"), "{text}");
    }

    #[test]
    fn every_family_is_described_from_the_table_with_its_type() {
        let text = text(&Exposition::new(
            state_with_drift("1"),
            build(),
            ExportConfig::default(),
        ))
        .unwrap();
        let types: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(n, k)| (n.to_string(), k.to_string()))
            .collect();
        let want: Vec<(String, String)> = families::ALL
            .iter()
            .filter(|f| families::exported(f))
            .map(|f| (f.descriptor_name().to_string(), f.kind.as_str().to_string()))
            .collect();
        assert_eq!(types, want);
        for f in families::ALL.iter().filter(|f| families::exported(f)) {
            let help = format!("# HELP {} {}\n", f.descriptor_name(), f.help);
            assert!(text.contains(&help), "{help}");
        }
        let seen = assert_samples_match_the_table(&text);
        for name in [
            "pinflow_vcpu_pinning_drift",
            "pinflow_vcpu_offpin_seconds_total",
            "pinflow_node_hugepages",
            "pinflow_node_hugepages_free",
        ] {
            assert!(seen.iter().any(|s| s == name), "{name}: {text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let reg = Exposition::new(
            state_with_drift("a\"b\\c\nd"),
            build(),
            ExportConfig::default(),
        );
        let text = text(&reg).unwrap();
        assert!(text.contains(r#"actual="a\"b\\c\nd""#), "{text}");
        assert!(
            text.contains("pinflow_node_hugepages_free{node=\"0\",size=\"2097152\"} 4"),
            "{text}"
        );
        assert_samples_match_the_table(&text);
    }

    #[test]
    fn every_check_is_exported_and_counters_get_total() {
        let text = text(&Exposition::new(
            state_with_drift("1"),
            build(),
            ExportConfig::default(),
        ))
        .unwrap();
        for c in Check::ALL {
            assert!(
                text.contains(&format!(
                    "pinflow_domain_drifted_vcpus{{domain=\"instance-1\",check=\"{c}\"}}"
                )),
                "{c}: {text}"
            );
        }
        assert!(
            text.contains("pinflow_vcpu_offpin_seconds_total{domain=\"instance-1\"} 1.5"),
            "{text}"
        );
        assert!(
            text.contains(
                "pinflow_pcpu_stolen_seconds_total{domain=\"instance-1\",cpu=\"0\",intruder=\"host\"} 0.5"
            ),
            "{text}"
        );
        assert!(
            text.contains("pinflow_vcpu_migrations_total{domain=\"instance-1\"} 3"),
            "{text}"
        );
        // vCPUs per pin kind: only the kinds the domain has.
        assert!(
            text.contains("pinflow_domain_vcpus{domain=\"instance-1\",kind=\"dedicated\"} 1.0\n"),
            "{text}"
        );
        assert!(
            text.contains("pinflow_domain_vcpus{domain=\"instance-1\",kind=\"floating\"} 2.0\n"),
            "{text}"
        );
        assert!(!text.contains("kind=\"shared\""), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn prometheus_text_names_counter_families_with_total() {
        let om = text(&Exposition::new(
            state_with_drift("1"),
            build(),
            ExportConfig::default(),
        ))
        .unwrap();
        let text = openmetrics_to_prometheus(&om);
        assert!(
            text.contains("# TYPE pinflow_vcpu_offpin_seconds_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP pinflow_vcpu_offpin_seconds_total CPU time"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        let samples = |t: &str| {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(samples(&om), samples(&text));
    }

    #[test]
    fn a_section_is_encoded_once_per_version_of_the_reports_it_reads() {
        let st = state_with_drift("1");
        let e = Exposition::new(st.clone(), build(), ExportConfig::default());
        let encoded = |e: &Exposition, i: usize| {
            let slot = e.cached[i].lock().unwrap();
            slot.as_ref().map(|s| s.openmetrics.as_ptr())
        };
        let first = text(&e).unwrap();
        let (findings, counters) = (encoded(&e, 0), encoded(&e, 1));
        assert!(findings.is_some() && counters.is_some());
        // Another area's report changes: its series change, the pinning text is reused.
        st.flows.set(crate::model::flows::FlowsReport {
            bridges: [(
                "br-x".into(),
                crate::model::flows::BridgeStatus {
                    connected: true,
                    flows_per_table: [(0u8, 7usize)].into(),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        });
        let second = text(&e).unwrap();
        assert_eq!((encoded(&e, 0), encoded(&e, 1)), (findings, counters));
        let flows = r#"pinflow_ovs_flows{bridge="br-x",table="0"} 7"#;
        assert!(!first.contains(flows), "{first}");
        assert!(second.contains(flows), "{second}");
        // A refresh of the counters (same evaluation): only the counters are re-encoded.
        let mut refreshed = PinningReport::clone(&st.pinning.get());
        refreshed.domains[0].offpin_seconds_total = Some(2.5);
        st.pinning.set(refreshed);
        let third = text(&e).unwrap();
        assert_eq!(encoded(&e, 0), findings);
        assert_ne!(encoded(&e, 1), counters);
        assert!(
            third.contains(r#"pinflow_vcpu_offpin_seconds_total{domain="instance-1"} 2.5"#),
            "{third}"
        );
        assert!(third.contains(r#"actual="1""#), "{third}");
        // A new evaluation: the next scrape shows its findings, never the old text.
        st.pinning
            .set((*state_with_drift("2").pinning.get()).clone());
        let fourth = text(&e).unwrap();
        assert_ne!(encoded(&e, 0), findings);
        assert!(fourth.contains(r#"actual="2""#) && !fourth.contains(r#"actual="1""#));
        // Both formats carry the same samples; only OpenMetrics ends with `# EOF`.
        let prom = e.render(Format::Prometheus).unwrap();
        let prom = String::from_utf8_lossy(&prom);
        assert_eq!(prom, openmetrics_to_prometheus(&fourth));
        assert!(fourth.ends_with("# EOF\n"));
    }
}
