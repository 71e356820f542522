//! Prometheus exposition of the pinning report (`pinflow_instance_info`, `pinflow_domain_*`,
//! `pinflow_vcpu_*`, `pinflow_pcpu_*`, `pinflow_node_hugepages*`, `pinflow_pinning_*`).

use super::encode::{Lv, Res, counter, gauge};
use super::families;
use crate::model::pinning::{PinKind, PinningReport};
use prometheus_client::encoding::DescriptorEncoder;

/// Encodes the families of the findings: instances, their vCPUs and drifts (they change only
/// with an evaluation: [`PinningReport::findings_version`]).
pub(crate) fn encode_pinning_findings(enc: &mut DescriptorEncoder, r: &PinningReport) -> Res {
    gauge(
        enc,
        &families::INSTANCE_INFO,
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
        &families::DOMAIN_DRIFTED_VCPUS,
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
        &families::DOMAIN_VCPUS,
        r.domains.iter().flat_map(|d| {
            PinKind::ALL.into_iter().filter_map(move |k| {
                let n = d.vcpus.iter().filter(|v| v.kind == k).count();
                (n > 0).then(|| {
                    (
                        [("domain", Lv(&d.domain)), ("kind", Lv(k.as_str()))],
                        n as f64,
                    )
                })
            })
        }),
    )?;
    gauge(
        enc,
        &families::VCPU_PINNING_DRIFT,
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
    )
}

/// Encodes the pinning families that change between evaluations: counters, pCPU and huge-page
/// gauges, the pipeline's own counters.
pub(crate) fn encode_pinning_counters(enc: &mut DescriptorEncoder, r: &PinningReport) -> Res {
    counter(
        enc,
        &families::VCPU_OFFPIN_SECONDS,
        r.domains.iter().filter_map(|d| {
            d.offpin_seconds_total
                .map(|v| ([("domain", Lv(&d.domain))], v))
        }),
    )?;
    let stolen: Vec<(&str, String, &str, f64)> = r
        .domains
        .iter()
        .flat_map(|d| {
            d.stolen.iter().flat_map(move |p| {
                p.seconds_total
                    .iter()
                    .map(move |(class, v)| (d.domain.as_str(), p.cpu.to_string(), *class, *v))
            })
        })
        .collect();
    counter(
        enc,
        &families::PCPU_STOLEN_SECONDS,
        stolen
            .iter()
            .map(|(d, c, i, v)| ([("domain", Lv(d)), ("cpu", Lv(c)), ("intruder", Lv(i))], *v)),
    )?;
    counter(
        enc,
        &families::VCPU_MIGRATIONS,
        r.domains.iter().filter_map(|d| {
            d.migrations_total
                .map(|v| ([("domain", Lv(&d.domain))], v as f64))
        }),
    )?;
    counter(
        enc,
        &families::VCPU_WAIT_SECONDS,
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
        &families::PCPU_PINNED_VCPUS,
        cpus.iter().map(|(c, n)| ([("cpu", Lv(c))], f64::from(*n))),
    )?;
    let pools: Vec<(String, String, u64, u64)> = r
        .numa_nodes
        .iter()
        .flat_map(|n| {
            n.hugepages.iter().map(move |h| {
                (
                    n.node.to_string(),
                    h.size_bytes.to_string(),
                    h.total,
                    h.free,
                )
            })
        })
        .collect();
    gauge(
        enc,
        &families::NODE_HUGEPAGES,
        pools
            .iter()
            .map(|(n, s, t, _)| ([("node", Lv(n)), ("size", Lv(s))], *t as f64)),
    )?;
    gauge(
        enc,
        &families::NODE_HUGEPAGES_FREE,
        pools
            .iter()
            .map(|(n, s, _, f)| ([("node", Lv(n)), ("size", Lv(s))], *f as f64)),
    )?;
    let p = &r.passes;
    counter(
        enc,
        &families::PINNING_PASSES,
        [
            ([("kind", Lv("full"))], p.full as f64),
            ([("kind", Lv("targeted"))], p.targeted as f64),
        ],
    )?;
    counter(
        enc,
        &families::PINNING_THREAD_READS,
        [([] as [(&str, Lv<'_>); 0], p.thread_reads as f64)],
    )
}
