//! The `sched_policy` check: a thread's scheduling policy or real-time priority differs from
//! what `<vcpusched>` (vCPUs) or `<iothreadsched>` (I/O threads) set.

use super::{DomainView, Finding, Subject};
use crate::model::pinning::{SchedPolicy, SchedSpec};

/// A thread with a configured scheduler whose policy (or, for `fifo`/`rr`, priority) is another;
/// `expected`/`actual` read `fifo:1`, `other`, `batch`. Unknown when the kernel's `stat` line
/// has no policy field.
pub(super) fn check(_: &DomainView<'_>, s: &Subject<'_>) -> Option<Finding> {
    let (want, state) = s.sched()?;
    let policy = SchedPolicy::from_kernel(state.policy?);
    let actual = SchedSpec {
        policy,
        priority: policy.is_realtime().then_some(state.rt_priority),
    };
    let priority_differs =
        want.policy.is_realtime() && want.priority.is_some() && want.priority != actual.priority;
    (want.policy != actual.policy || priority_differs).then(|| Finding::new(want, actual))
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use crate::model::pinning::{SchedPolicy, SchedSpec};

    #[test]
    fn policy_and_priority_other_than_vcpusched_drift() {
        let mut a = healthy("a", 101, &["0", "1"]);
        let dom = a.domain.as_mut().unwrap();
        let fifo1 = SchedSpec {
            policy: SchedPolicy::Fifo,
            priority: Some(1),
        };
        dom.vcpus[0].sched = Some(fifo1);
        dom.vcpus[1].sched = Some(fifo1);
        // vCPU 0 as set; vCPU 1 back to SCHED_OTHER (e.g. a restart of the guest's tuning).
        let t0 = a.threads.get_mut(&101).unwrap();
        (t0.policy, t0.rt_priority) = (Some(1), 1);
        a.threads.get_mut(&102).unwrap().policy = Some(0);
        assert_eq!(
            drifts(&evaluate(std::slice::from_ref(&a)), "a"),
            vec![(
                Check::SchedPolicy,
                "1".into(),
                "fifo:1".into(),
                "other".into()
            )]
        );
        // Right policy, wrong priority.
        let t1 = a.threads.get_mut(&102).unwrap();
        (t1.policy, t1.rt_priority) = (Some(1), 50);
        assert_eq!(
            drifts(&evaluate(std::slice::from_ref(&a)), "a"),
            vec![(
                Check::SchedPolicy,
                "1".into(),
                "fifo:1".into(),
                "fifo:50".into()
            )]
        );
        // A kernel without the policy field: unknown, no drift.
        a.threads.get_mut(&102).unwrap().policy = None;
        assert!(drifts(&evaluate(&[a]), "a").is_empty());
    }

    #[test]
    fn no_vcpusched_no_check() {
        let mut a = healthy("a", 101, &["0"]);
        a.threads.get_mut(&101).unwrap().policy = Some(1);
        assert!(drifts(&evaluate(&[a]), "a").is_empty());
    }
}
