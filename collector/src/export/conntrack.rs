//! Prometheus series of the conntrack table: its size and limit, and its entries per zone.

use super::encode::{Lv, Res, gauge};
use super::families;
use crate::model::conntrack::ConntrackReport;
use prometheus_client::encoding::DescriptorEncoder;

/// Encodes `pinflow_conntrack_*`: no series while the table could not be read (the last values
/// are not served as current).
pub(crate) fn encode_conntrack(enc: &mut DescriptorEncoder, r: &ConntrackReport) -> Res {
    let up = r.up.then_some(r);
    gauge(
        enc,
        &families::CONNTRACK_ENTRIES,
        up.map(|r| ([], r.entries as f64)),
    )?;
    gauge(
        enc,
        &families::CONNTRACK_LIMIT,
        up.map(|r| ([], r.limit as f64)),
    )?;
    let zones: Vec<(String, &str, u64)> = up
        .into_iter()
        .flat_map(|r| r.zones.iter())
        .map(|z| (z.zone.to_string(), z.domain(), z.entries))
        .collect();
    gauge(
        enc,
        &families::CONNTRACK_ZONE_ENTRIES,
        zones
            .iter()
            .map(|(z, d, n)| ([("ct_zone", Lv(z)), ("domain", Lv(d))], *n as f64))
            .chain(up.map(|r| {
                (
                    [("ct_zone", Lv("other")), ("domain", Lv(""))],
                    r.other_entries as f64,
                )
            })),
    )
}
