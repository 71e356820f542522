//! The `placement` check: the vCPU thread ran outside its pin set during the last window (eBPF).

use super::{DomainView, Finding, Subject};
use crate::model::pinning::PlacementSample;

/// A pinned vCPU with off-pin CPU time in the window; `actual` is the CPU it last ran on, or
/// `outside` when that CPU is back within the pin.
pub(super) fn check(_: &DomainView<'_>, s: &Subject<'_>) -> Option<Finding> {
    let v = s.vcpu()?;
    let (pin, p) = (v.spec.pin.as_ref()?, v.placement?);
    if p.offpin_ns_window == 0 {
        return None;
    }
    let actual = if pin.contains(p.last_cpu) {
        "outside".to_string()
    } else {
        p.last_cpu.to_string()
    };
    Some(Finding::new(pin, actual))
}

/// What of a placement sample can change the `placement` finding: while the thread has off-pin
/// time in the window, the CPU it last ran on (the `actual` label); else nothing. Samples with
/// equal keys give equal findings, so a change of counters alone needs no new evaluation.
pub(crate) fn drift_key(p: &PlacementSample) -> Option<u32> {
    (p.offpin_ns_window > 0).then_some(p.last_cpu)
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::drift_key;
    use crate::model::pinning::PlacementSample;

    #[test]
    fn placement_drift_only_when_offpin_time_in_window() {
        let mut a = healthy("a", 101, &["0"]);
        a.placement.insert(
            101,
            PlacementSample {
                offpin_ns_total: 2_000_000_000,
                offpin_ns_window: 0,
                migrations_total: 3,
                last_cpu: 0,
            },
        );
        let r = evaluate(std::slice::from_ref(&a));
        assert!(drifts(&r, "a").is_empty());
        assert_eq!(r.domains[0].offpin_seconds_total, Some(2.0));
        assert_eq!(r.domains[0].migrations_total, Some(3));
        a.placement.get_mut(&101).unwrap().offpin_ns_window = 5;
        a.placement.get_mut(&101).unwrap().last_cpu = 1;
        let r = evaluate(&[a]);
        assert_eq!(
            drifts(&r, "a"),
            vec![(Check::Placement, "0".into(), "0".into(), "1".into())]
        );
    }

    #[test]
    fn back_on_its_pin_after_running_off_it_is_outside() {
        let mut a = healthy("a", 101, &["0"]);
        let sample = PlacementSample {
            offpin_ns_window: 5,
            last_cpu: 0,
            ..Default::default()
        };
        a.placement.insert(101, sample);
        assert_eq!(
            drifts(&evaluate(&[a]), "a"),
            vec![(Check::Placement, "0".into(), "0".into(), "outside".into())]
        );
    }

    /// Counter-only changes (equal drift keys) refreshed into an earlier report match what a new
    /// evaluation gives, without touching the findings.
    #[test]
    fn counters_refreshed_without_evaluating_match_an_evaluation() {
        let mut a = healthy("a", 101, &["0", "1"]);
        let mut b = healthy("b", 201, &["2"]);
        b.placement.insert(
            201,
            PlacementSample {
                offpin_ns_window: 7,
                last_cpu: 5,
                ..Default::default()
            },
        );
        a.placement.insert(101, PlacementSample::default());
        let mut report = evaluate(&[a.clone(), b.clone()]);
        let moved = PlacementSample {
            offpin_ns_total: 3_000_000_000,
            offpin_ns_window: 0,
            migrations_total: 9,
            last_cpu: 0,
        };
        assert_eq!(drift_key(&moved), drift_key(&a.placement[&101]));
        a.placement.insert(101, moved);
        b.placement.get_mut(&201).unwrap().migrations_total = 4;
        let fresh = evaluate(&[a.clone(), b.clone()]);
        super::super::refresh_placement(&mut report, &[b, a]);
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::to_value(&fresh).unwrap()
        );
        assert_eq!(report.domains[0].migrations_total, Some(9));
        assert_eq!(report.domains[1].drifts.len(), 1);
    }

    #[test]
    fn drift_key_names_the_cpu_only_while_off_pin_time_is_in_the_window() {
        let mut p = PlacementSample {
            last_cpu: 3,
            ..Default::default()
        };
        assert_eq!(drift_key(&p), None);
        p.offpin_ns_window = 1;
        assert_eq!(drift_key(&p), Some(3));
    }
}
