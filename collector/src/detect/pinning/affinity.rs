//! The `affinity` check: a pinned thread's (vCPU or I/O thread) scheduler affinity differs
//! from its pin set.

use super::{DomainView, Finding, Subject};

/// A pinned vCPU or I/O thread whose thread may run elsewhere than its pin (an empty affinity
/// is unknown).
pub(super) fn check(_: &DomainView<'_>, s: &Subject<'_>) -> Option<Finding> {
    let (pin, state) = s.pinned_thread()?;
    let affinity = &state.affinity;
    (!affinity.is_empty() && affinity != pin).then(|| Finding::new(pin, affinity))
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;

    #[test]
    fn affinity_wider_than_pin_drifts_unknown_affinity_does_not() {
        let mut a = healthy("a", 101, &["0", "1"]);
        a.threads.get_mut(&101).unwrap().affinity = cpus("0-3");
        a.threads.get_mut(&102).unwrap().affinity = cpus("");
        assert_eq!(
            drifts(&evaluate(&[a]), "a"),
            vec![(Check::Affinity, "0".into(), "0".into(), "0-3".into())]
        );
    }
}
