//! The encoders every area's exposition uses: one gauge or counter family from rows of labels and
//! values, with label values escaped.

use super::families::Family;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::fmt::Write as _;

/// A label value escaped for the text exposition (prometheus-client 0.24 writes values verbatim).
#[derive(Debug)]
pub(crate) struct Lv<'a>(pub(crate) &'a str);

impl EncodeLabelValue for Lv<'_> {
    fn encode(&self, enc: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        // Runs of plain text are written whole, not a char at a time through the encoder's
        // `dyn Write`.
        let mut rest = self.0;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            enc.write_str(&rest[..i])?;
            enc.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        enc.write_str(rest)
    }
}

/// Result of an encoding step.
pub(crate) type Res = Result<(), std::fmt::Error>;

/// Encodes one gauge family (name and help from the family table) from `(labels, value)` rows.
pub(crate) fn gauge<'a, const N: usize>(
    enc: &mut DescriptorEncoder,
    family: &Family,
    rows: impl IntoIterator<Item = ([(&'static str, Lv<'a>); N], f64)>,
) -> Res {
    encode(enc, family, MetricType::Gauge, rows, ConstGauge::new)
}

/// Encodes one counter family (the table's name without `_total`, which OpenMetrics appends)
/// from `(labels, value)` rows.
pub(crate) fn counter<'a, const N: usize>(
    enc: &mut DescriptorEncoder,
    family: &Family,
    rows: impl IntoIterator<Item = ([(&'static str, Lv<'a>); N], f64)>,
) -> Res {
    encode(enc, family, MetricType::Counter, rows, ConstCounter::new)
}

fn encode<'a, const N: usize, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    family: &Family,
    kind: MetricType,
    rows: impl IntoIterator<Item = ([(&'static str, Lv<'a>); N], f64)>,
    metric: fn(f64) -> M,
) -> Res {
    let mut m = enc.encode_descriptor(family.descriptor_name(), family.help, None, kind)?;
    for (labels, v) in rows {
        metric(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}
