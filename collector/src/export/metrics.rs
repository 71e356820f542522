//! Prometheus exposition of the shared state (DESIGN.md's metrics contract).
//!
//! A custom `prometheus_client` collector encodes the latest reports at scrape time: nothing is
//! computed per scrape, and series of vanished domains or healed drifts disappear with the report.

use super::health::BuildInfo;
use crate::export::ExportConfig;
use crate::model::state::SharedState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use std::fmt::Write as _;

/// The collector registered in the registry; encodes the shared state on each scrape.
#[derive(Debug)]
pub(crate) struct PinflowCollector {
    state: SharedStateHandle,
    build: BuildInfo,
    limits: ExportConfig,
}

/// `SharedState` wrapper with a `Debug` impl (required by `Collector`).
#[derive(Clone)]
struct SharedStateHandle(SharedState);

impl std::fmt::Debug for SharedStateHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedState")
    }
}

/// A registry holding pinflow's collector.
pub(crate) fn registry(state: SharedState, build: BuildInfo, limits: ExportConfig) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(PinflowCollector {
        state: SharedStateHandle(state),
        build,
        limits,
    }));
    r
}

/// Encodes the registry in the OpenMetrics text format.
pub(crate) fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

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

impl Collector for PinflowCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.state.0;
        super::pinning::encode_pinning(&mut enc, &state.pinning.get())?;
        super::host_cpu::encode_host_cpu(&mut enc, &state.host_cpu.get())?;
        let flows = state.flows.get();
        super::flows::encode_flows(&mut enc, &flows, &self.limits)?;
        let interfaces = state.ovs_interfaces.get();
        super::interfaces::encode_interfaces(&mut enc, &interfaces, &flows)?;
        let vswitchd = state.vswitchd.get();
        super::links::encode_links(&mut enc, &interfaces, &flows, &vswitchd)?;
        super::datapath::encode_datapath(
            &mut enc,
            &state.datapath.get(),
            &state.datapath_events.get(),
        )?;
        super::ovs_vswitchd::encode_vswitchd(&mut enc, &vswitchd)?;
        super::ovs_vswitchd::encode_offload(&mut enc, &interfaces)?;
        super::conntrack::encode_conntrack(&mut enc, &state.conntrack.get())?;
        super::health::encode_health(&mut enc, state, &self.build)
    }
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
                    owners: vec![],
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
        });
        st
    }

    fn build() -> BuildInfo {
        BuildInfo::current("6.18".into())
    }

    /// The /metrics text of `st` with the default export limits (for the areas' encoder tests).
    pub(crate) fn render_state(st: SharedState) -> String {
        render(&registry(st, build(), ExportConfig::default())).expect("encodes")
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
        let text = render(&registry(st, build(), ExportConfig::default())).unwrap();
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
        let text = render(&registry(
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
        let reg = registry(
            state_with_drift("a\"b\\c\nd"),
            build(),
            ExportConfig::default(),
        );
        let text = render(&reg).unwrap();
        assert!(text.contains(r#"actual="a\"b\\c\nd""#), "{text}");
        assert!(
            text.contains("pinflow_node_hugepages_free{node=\"0\",size=\"2097152\"} 4"),
            "{text}"
        );
        assert_samples_match_the_table(&text);
    }

    #[test]
    fn every_check_is_exported_and_counters_get_total() {
        let text = render(&registry(
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
        let om = render(&registry(
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
}
