//! Prometheus exposition of the shared state (DESIGN.md's metrics contract).
//!
//! A custom `prometheus_client` collector encodes the latest reports at scrape time: nothing is
//! computed per scrape, and series of vanished domains or healed drifts disappear with the report.

use crate::config::ExportConfig;
use crate::detect::pinning::PinningReport;
use crate::engine::flows::FlowsReport;
use crate::state::SharedState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::fmt::Write as _;

/// A label value escaped for the text exposition (prometheus-client 0.24 writes values verbatim).
#[derive(Debug)]
pub(crate) struct Lv<'a>(pub(crate) &'a str);

impl EncodeLabelValue for Lv<'_> {
    fn encode(&self, enc: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => enc.write_str("\\\\")?,
                '"' => enc.write_str("\\\"")?,
                '\n' => enc.write_str("\\n")?,
                c => enc.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Build facts for `pinflow_build_info`.
#[derive(Clone, Debug)]
pub struct BuildInfo {
    /// pinflow version.
    pub version: String,
    /// Running kernel release.
    pub kernel: String,
}

/// The collector registered in the registry; encodes the shared state on each scrape.
#[derive(Debug)]
pub struct PinflowCollector {
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
pub fn registry(state: SharedState, build: BuildInfo, limits: ExportConfig) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(PinflowCollector {
        state: SharedStateHandle(state),
        build,
        limits,
    }));
    r
}

/// Encodes the registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites OpenMetrics text into the Prometheus text format 0.0.4, for clients that did not ask for
/// OpenMetrics (curl, `promtool check metrics`, older scrapers): counter families are named with
/// their `_total` suffix in `# HELP`/`# TYPE`, and `# UNIT`/`# EOF` lines are dropped. Samples are
/// identical in both formats.
pub fn openmetrics_to_prometheus(om: &str) -> String {
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

/// Result of an encoding step.
pub(crate) type Res = Result<(), std::fmt::Error>;

/// Encodes one gauge family from `(labels, value)` rows.
pub(crate) fn gauge<'a, const N: usize>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = ([(&'static str, Lv<'a>); N], f64)>,
) -> Res {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Encodes one counter family (OpenMetrics appends `_total`) from `(labels, value)` rows.
pub(crate) fn counter<'a, const N: usize>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = ([(&'static str, Lv<'a>); N], f64)>,
) -> Res {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for PinflowCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.state.0;
        encode_pinning(&mut enc, &state.pinning())?;
        encode_flows(&mut enc, &state.flows(), &self.limits)?;
        super::datapath::encode_datapath(&mut enc, &state.datapath(), &state.datapath_events())?;
        encode_self(&mut enc, state, &self.build)
    }
}

fn encode_pinning(enc: &mut DescriptorEncoder, r: &PinningReport) -> Res {
    gauge(
        enc,
        "pinflow_instance_info",
        "Running libvirt domain with its Nova metadata (empty when absent); join on domain",
        r.domains.iter().map(|d| {
            let n = d.nova.as_ref();
            let f = |g: fn(&crate::model::NovaInstance) -> &str| Lv(n.map(g).unwrap_or(""));
            (
                [
                    ("domain", Lv(&d.domain)),
                    ("uuid", Lv(&d.uuid)),
                    ("name", f(|n| &n.name)),
                    ("project", f(|n| &n.project)),
                    ("project_id", f(|n| &n.project_id)),
                    ("user_id", f(|n| &n.user_id)),
                    ("flavor", f(|n| &n.flavor)),
                ],
                1.0,
            )
        }),
    )?;
    gauge(
        enc,
        "pinflow_domain_drifted_vcpus",
        "vCPUs of the domain currently drifting, per pinning check",
        r.domains.iter().flat_map(|d| {
            d.drifted_vcpus.iter().map(|(c, n)| {
                (
                    [("domain", Lv(&d.domain)), ("check", Lv(c.as_str()))],
                    f64::from(*n),
                )
            })
        }),
    )?;
    gauge(
        enc,
        "pinflow_vcpu_pinning_drift",
        "Present (1) only while this vCPU (or the emulator threads) drifts for this check",
        r.domains.iter().flat_map(|d| {
            d.drifts.iter().map(|x| {
                (
                    [
                        ("domain", Lv(&d.domain)),
                        ("vcpu", Lv(&x.vcpu)),
                        ("check", Lv(x.check.as_str())),
                        ("expected", Lv(&x.expected)),
                        ("actual", Lv(&x.actual)),
                    ],
                    1.0,
                )
            })
        }),
    )?;
    counter(
        enc,
        "pinflow_vcpu_offpin_seconds",
        "CPU time the domain's vCPU threads ran on pCPUs outside their pin sets (eBPF sched_switch)",
        r.domains.iter().filter_map(|d| {
            d.offpin_seconds_total
                .map(|v| ([("domain", Lv(&d.domain))], v))
        }),
    )?;
    counter(
        enc,
        "pinflow_vcpu_migrations",
        "Migrations of the domain's vCPU threads between pCPUs (eBPF sched_switch)",
        r.domains.iter().filter_map(|d| {
            d.migrations_total
                .map(|v| ([("domain", Lv(&d.domain))], v as f64))
        }),
    )?;
    counter(
        enc,
        "pinflow_vcpu_wait_seconds",
        "Time the domain's vCPU threads waited runnable for a pCPU (schedstat)",
        r.domains
            .iter()
            .map(|d| ([("domain", Lv(&d.domain))], d.wait_seconds_total)),
    )?;
    let cpus: Vec<(String, u32)> = r
        .pcpu_pinned_vcpus
        .iter()
        .map(|(c, n)| (c.to_string(), *n))
        .collect();
    gauge(
        enc,
        "pinflow_pcpu_pinned_vcpus",
        "Pinned vCPUs of all domains on this host CPU (CPUs without any are omitted)",
        cpus.iter().map(|(c, n)| ([("cpu", Lv(c))], f64::from(*n))),
    )
}

fn encode_flows(enc: &mut DescriptorEncoder, r: &FlowsReport, limits: &ExportConfig) -> Res {
    let tables: Vec<(&str, String, usize)> = r
        .bridges
        .iter()
        .flat_map(|(b, s)| {
            s.flows_per_table
                .iter()
                .map(move |(t, n)| (b.as_str(), t.to_string(), *n))
        })
        .collect();
    gauge(
        enc,
        "pinflow_ovs_flows",
        "OpenFlow flows per bridge and table (mirrored with the OVS flow monitor)",
        tables
            .iter()
            .map(|(b, t, n)| ([("bridge", Lv(b)), ("table", Lv(t))], *n as f64)),
    )?;
    gauge(
        enc,
        "pinflow_ovs_dirty_flows",
        "Dirty flows per bridge and rule (every enabled rule, 0 when clean)",
        r.dirty_counts.iter().flat_map(|(b, rules)| {
            rules
                .iter()
                .map(move |(rule, n)| ([("bridge", Lv(b)), ("rule", Lv(rule))], *n as f64))
        }),
    )?;
    gauge(
        enc,
        "pinflow_ovs_dirty_flow_rule_info",
        "Every enabled dirty-flow rule with its severity (broken: the flow cannot work; suspect: a heuristic)",
        r.rule_severity
            .iter()
            .map(|(rule, s)| ([("rule", Lv(rule)), ("severity", Lv(s.name()))], 1.0)),
    )?;
    let shown: Vec<(String, String, &crate::engine::flows::DirtyFlow)> = r
        .dirty
        .iter()
        .take(limits.dirty_flow_info_limit)
        .map(|d| {
            (
                d.table.map(|t| t.to_string()).unwrap_or_default(),
                d.cookie.map(|c| format!("{c:#x}")).unwrap_or_default(),
                d,
            )
        })
        .collect();
    gauge(
        enc,
        "pinflow_ovs_dirty_flow_info",
        "A dirty flow in ovs-ofctl form (capped; see pinflow_ovs_dirty_flow_info_dropped)",
        shown.iter().map(|(table, cookie, d)| {
            (
                [
                    ("bridge", Lv(&d.bridge)),
                    ("rule", Lv(&d.rule)),
                    ("table", Lv(table)),
                    ("cookie", Lv(cookie)),
                    ("flow", Lv(&d.flow)),
                ],
                1.0,
            )
        }),
    )?;
    gauge(
        enc,
        "pinflow_ovs_dirty_flow_info_dropped",
        "Dirty flows not listed in pinflow_ovs_dirty_flow_info because of the per-host cap",
        [(
            [] as [(&str, Lv<'_>); 0],
            r.dirty_total.saturating_sub(limits.dirty_flow_info_limit) as f64,
        )],
    )?;
    let ports: Vec<(String, &crate::engine::flows::PortInfo)> = r
        .ports
        .iter()
        .map(|p| (p.ofport.map(|o| o.to_string()).unwrap_or_default(), p))
        .collect();
    gauge(
        enc,
        "pinflow_ovs_port_info",
        "OVS port with its ofport, Neutron port id and libvirt domain (empty when not an instance's)",
        ports.iter().map(|(of, p)| {
            (
                [
                    ("bridge", Lv(&p.bridge)),
                    ("port", Lv(&p.port)),
                    ("ofport", Lv(of)),
                    ("iface_id", Lv(&p.iface_id)),
                    ("domain", Lv(&p.domain)),
                ],
                1.0,
            )
        }),
    )
}

fn encode_self(enc: &mut DescriptorEncoder, state: &SharedState, build: &BuildInfo) -> Res {
    let sources = state.sources.snapshot();
    gauge(
        enc,
        "pinflow_source_up",
        "Whether the source delivered data on its last attempt",
        sources
            .iter()
            .map(|(s, h)| ([("source", Lv(s))], if h.up { 1.0 } else { 0.0 })),
    )?;
    counter(
        enc,
        "pinflow_source_errors",
        "Errors of the source (bad input, I/O, protocol) since start",
        sources
            .iter()
            .map(|(s, h)| ([("source", Lv(s))], h.errors_total as f64)),
    )?;
    gauge(
        enc,
        "pinflow_collect_duration_seconds",
        "Duration of the source's last collection",
        sources
            .iter()
            .map(|(s, h)| ([("source", Lv(s))], h.last_duration.as_secs_f64())),
    )?;
    gauge(
        enc,
        "pinflow_build_info",
        "pinflow version and the running kernel",
        [(
            [
                ("version", Lv(&build.version)),
                ("kernel", Lv(&build.kernel)),
            ],
            1.0,
        )],
    )?;
    let ev = state.datapath_events();
    let sched = state.bpf_costs();
    let bpf: Vec<&crate::state::BpfProgramCost> = sched.iter().chain(ev.programs.iter()).collect();
    counter(
        enc,
        "pinflow_bpf_run_seconds",
        "CPU time spent in the eBPF program (kernel BPF stats)",
        bpf.iter()
            .map(|p| ([("program", Lv(&p.program))], p.run_time_ns as f64 / 1e9)),
    )?;
    counter(
        enc,
        "pinflow_bpf_runs",
        "Runs of the eBPF program (kernel BPF stats)",
        bpf.iter()
            .map(|p| ([("program", Lv(&p.program))], p.run_count as f64)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::pinning::{Check, DomainReport, Drift, PinningReport};
    use std::collections::BTreeMap;

    fn state_with_drift(actual: &str) -> SharedState {
        let st = SharedState::default();
        st.set_pinning(PinningReport {
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
                }],
                vcpus: vec![],
                offpin_seconds_total: Some(1.5),
                migrations_total: Some(3),
                wait_seconds_total: 0.25,
            }],
            pcpu_pinned_vcpus: BTreeMap::from([(0, 1)]),
        });
        st
    }

    fn build() -> BuildInfo {
        BuildInfo {
            version: "0.1.0".into(),
            kernel: "6.18".into(),
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
            text.contains("pinflow_vcpu_migrations_total{domain=\"instance-1\"} 3"),
            "{text}"
        );
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
