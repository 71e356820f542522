//! The `stolen` check: other tasks took more than `[pinning] stolen_share` of a vCPU's dedicated
//! pCPU within the last window (eBPF `sched_switch`, see `sources::sched_bpf`).

use super::{DomainView, Finding, Subject};

/// A vCPU owning a dedicated pCPU whose intruders' share of the window is above the limit;
/// `expected` is the pCPU, `actual` the intruder class that took the most (bounded: five values;
/// who exactly is in `/api/v1/intrusions`).
pub(super) fn check(d: &DomainView<'_>, s: &Subject<'_>) -> Option<Finding> {
    let v = s.vcpu()?;
    let tid = v.spec.tid?;
    let (cpu, sample) = d.obs.stolen.iter().find(|(_, x)| x.vcpu_tid == tid)?;
    Some(Finding::new(cpu, sample.drift()?))
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use crate::model::pinning::StolenSample;

    fn sample(ns_window: [u64; 5]) -> StolenSample {
        StolenSample {
            vcpu_tid: 101,
            ns_total: ns_window,
            ns_window,
            window_ns: 1_000_000_000,
            limit: 0.05,
        }
    }

    #[test]
    fn stolen_drift_above_the_share_names_the_top_class() {
        let mut a = healthy("a", 101, &["0"]);
        a.stolen.insert(0, sample([0, 0, 0, 40_000_000, 0]));
        let r = evaluate(std::slice::from_ref(&a));
        assert!(drifts(&r, "a").is_empty(), "4 % is within 5 %");
        assert_eq!(r.domains[0].stolen.len(), 1);
        assert_eq!(r.domains[0].stolen[0].seconds_total["kernel"], 0.04);
        assert!(!r.domains[0].stolen[0].seconds_total.contains_key("host"));
        a.stolen
            .insert(0, sample([0, 0, 0, 40_000_000, 70_000_000]));
        let r = evaluate(&[a]);
        assert_eq!(
            drifts(&r, "a"),
            vec![(Check::Stolen, "0".into(), "0".into(), "host".into())]
        );
        assert_eq!(r.domains[0].drifted_vcpus[&Check::Stolen], 1);
    }

    #[test]
    fn a_limit_of_one_is_off() {
        let mut a = healthy("a", 101, &["0"]);
        let mut s = sample([0, 0, 0, 0, 1_100_000_000]);
        s.limit = 1.0;
        a.stolen.insert(0, s);
        assert!(drifts(&evaluate(&[a]), "a").is_empty());
    }

    #[test]
    fn an_empty_window_is_no_drift() {
        let mut a = healthy("a", 101, &["0"]);
        let mut s = sample([0; 5]);
        s.window_ns = 0;
        a.stolen.insert(0, s);
        assert!(drifts(&evaluate(&[a]), "a").is_empty());
    }
}
