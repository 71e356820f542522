//! The `cpuset` check: a pinned thread's (vCPU or I/O thread) cgroup `cpuset.cpus` differs from
//! its pin set.

use super::{DomainView, Finding, Subject};

/// A pinned vCPU or I/O thread whose cgroup lets it run elsewhere than its pin.
pub(super) fn check(_: &DomainView<'_>, s: &Subject<'_>) -> Option<Finding> {
    let (pin, state) = s.pinned_thread()?;
    let cgroup_cpus = state.cgroup_cpus.as_ref()?;
    (cgroup_cpus != pin).then(|| Finding::new(pin, cgroup_cpus))
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;

    #[test]
    fn cgroup_cpus_other_than_pin_drift_unread_cgroup_cpus_do_not() {
        let mut a = healthy("a", 101, &["0", "1"]);
        a.threads.get_mut(&101).unwrap().cgroup_cpus = None;
        a.threads.get_mut(&102).unwrap().cgroup_cpus = Some(cpus("2"));
        assert_eq!(
            drifts(&evaluate(&[a]), "a"),
            vec![(Check::Cpuset, "1".into(), "1".into(), "2".into())]
        );
    }
}
