//! Prometheus exposition of the shared state (DESIGN.md's metrics contract).
//!
//! A custom `prometheus_client` collector encodes the latest reports at scrape time: nothing is
//! computed per scrape, and series of vanished domains or healed drifts disappear with the report.

use crate::detect::pinning::PinningReport;
use crate::state::SharedState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelValue, LabelValueEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::fmt::Write as _;

/// A label value escaped for the text exposition (prometheus-client 0.24 writes values verbatim).
#[derive(Debug)]
struct Lv<'a>(&'a str);

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
pub fn registry(state: SharedState, build: BuildInfo) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(PinflowCollector { state: SharedStateHandle(state), build }));
    r
}

/// Encodes the registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

type Res = Result<(), std::fmt::Error>;

fn gauge<'a, const N: usize>(
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

fn counter<'a, const N: usize>(
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
            d.drifted_vcpus
                .iter()
                .map(|(c, n)| ([("domain", Lv(&d.domain)), ("check", Lv(c.as_str()))], f64::from(*n)))
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
        r.domains
            .iter()
            .filter_map(|d| d.offpin_seconds_total.map(|v| ([("domain", Lv(&d.domain))], v))),
    )?;
    counter(
        enc,
        "pinflow_vcpu_migrations",
        "Migrations of the domain's vCPU threads between pCPUs (eBPF sched_switch)",
        r.domains
            .iter()
            .filter_map(|d| d.migrations_total.map(|v| ([("domain", Lv(&d.domain))], v as f64))),
    )?;
    counter(
        enc,
        "pinflow_vcpu_wait_seconds",
        "Time the domain's vCPU threads waited runnable for a pCPU (schedstat)",
        r.domains
            .iter()
            .map(|d| ([("domain", Lv(&d.domain))], d.wait_seconds_total)),
    )?;
    let cpus: Vec<(String, u32)> = r.pcpu_pinned_vcpus.iter().map(|(c, n)| (c.to_string(), *n)).collect();
    gauge(
        enc,
        "pinflow_pcpu_pinned_vcpus",
        "Pinned vCPUs of all domains on this host CPU (CPUs without any are omitted)",
        cpus.iter().map(|(c, n)| ([("cpu", Lv(c))], f64::from(*n))),
    )
}

fn encode_self(enc: &mut DescriptorEncoder, state: &SharedState, build: &BuildInfo) -> Res {
    let sources = state.sources.snapshot();
    gauge(
        enc,
        "pinflow_source_up",
        "Whether the source delivered data on its last attempt",
        sources.iter().map(|(s, h)| ([("source", Lv(s))], if h.up { 1.0 } else { 0.0 })),
    )?;
    counter(
        enc,
        "pinflow_source_errors",
        "Errors of the source (bad input, I/O, protocol) since start",
        sources.iter().map(|(s, h)| ([("source", Lv(s))], h.errors_total as f64)),
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
        [([("version", Lv(&build.version)), ("kernel", Lv(&build.kernel))], 1.0)],
    )?;
    let bpf = state.bpf_costs();
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
        bpf.iter().map(|p| ([("program", Lv(&p.program))], p.run_count as f64)),
    )
}
