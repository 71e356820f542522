//! The `placement` check: the vCPU thread ran outside its pin set during the last window (eBPF).

use super::{DomainView, Finding, Subject};

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

#[cfg(test)]
mod tests {
    use super::super::tests::*;
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
}
