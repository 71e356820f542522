//! The `numa` check: the domain's memory sits on host NUMA nodes outside `<numatune>`'s nodeset
//! (beyond a tolerance), its cgroup's `cpuset.mems` allows such nodes, or a vCPU is pinned to
//! pCPUs of another host node than the one its guest cell's memory is bound to.
//!
//! `preferred` bindings are no restriction (the kernel spills by design). `expected` and
//! `actual` are host node lists here, not CPU lists.

use super::{DomainView, Finding, Subject};
use crate::model::cpuset::CpuSet;
use crate::model::pinning::NumaMode;

/// The `memory` subject: memory or `cpuset.mems` outside the allowed nodes; a vCPU: its pin's
/// host nodes outside its cell's nodeset. Nothing before the domain's NUMA placement was read.
pub(super) fn check(d: &DomainView<'_>, s: &Subject<'_>) -> Option<Finding> {
    let numa = d.obs.numa.as_ref()?;
    let spec = &d.domain.numa;
    match s {
        Subject::Memory => {
            let allowed = spec.allowed_nodes()?;
            let outside: Vec<(u32, u64)> = numa
                .node_bytes
                .iter()
                .filter(|(n, b)| !allowed.contains(**n) && **b > 0)
                .map(|(n, b)| (*n, *b))
                .collect();
            let bytes = outside.iter().fold(0u64, |a, (_, b)| a.saturating_add(*b));
            if bytes > numa.tolerance_bytes {
                let nodes: CpuSet = outside.iter().map(|(n, _)| *n).collect();
                return Some(Finding::new(&allowed, nodes));
            }
            // cgroup v1/v2 enforce `strict` and `restrictive` through cpuset.mems: a wider set
            // lets new allocations land elsewhere before any page shows in numa_stat.
            let enforced = spec
                .memory
                .as_ref()
                .is_some_and(|m| matches!(m.mode, NumaMode::Strict | NumaMode::Restrictive));
            let mems = numa.mems.as_ref()?;
            let wider = mems.iter().any(|n| !allowed.contains(n));
            (enforced && wider).then(|| Finding::new(&allowed, format!("mems {mems}")))
        }
        Subject::Vcpu(v) => {
            let want = spec.vcpu_nodes(v.spec.id)?;
            let pin = v.spec.pin.as_ref()?;
            let nodes: CpuSet = numa
                .node_cpus
                .iter()
                .filter(|(_, cpus)| cpus.intersects(pin))
                .map(|(n, _)| *n)
                .collect();
            let foreign = nodes.iter().any(|n| !want.contains(n));
            (foreign && !nodes.is_empty()).then(|| Finding::new(want, nodes))
        }
        Subject::Iothread(_) | Subject::Emulator => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use crate::model::pinning::{
        DomainObservation, GuestCell, NumaBinding, NumaMode, NumaObservation, NumaSpec,
    };
    use std::collections::BTreeMap;

    const MIB: u64 = 1 << 20;

    /// A domain with vCPUs pinned to `pins` on a 2-node host (node 0: CPUs 0-3, node 1: 4-7),
    /// one guest cell bound to host node 0 (`strict`), its memory per node as given.
    fn two_node(pins: &[&str], node_bytes: &[(u32, u64)], mems: &str) -> DomainObservation {
        let mut a = healthy("a", 101, pins);
        let dom = a.domain.as_mut().unwrap();
        let strict0 = NumaBinding {
            mode: NumaMode::Strict,
            nodeset: cpus("0"),
        };
        dom.numa = NumaSpec {
            memory: Some(strict0.clone()),
            memnodes: BTreeMap::from([(0, strict0)]),
            cells: vec![GuestCell {
                id: 0,
                vcpus: (0..pins.len() as u32).collect(),
                memory_bytes: 1 << 30,
            }],
        };
        a.numa = Some(NumaObservation {
            mems: Some(cpus(mems)),
            node_bytes: node_bytes.iter().copied().collect(),
            node_cpus: BTreeMap::from([(0, cpus("0-3")), (1, cpus("4-7"))]),
            tolerance_bytes: 64 * MIB,
        });
        a
    }

    #[test]
    fn memory_on_the_bound_node_is_fine_and_a_little_elsewhere_is_tolerated() {
        let a = two_node(&["0", "1"], &[(0, 1 << 30), (1, 10 * MIB)], "0");
        assert!(drifts(&evaluate(&[a]), "a").is_empty());
    }

    #[test]
    fn memory_beyond_the_tolerance_on_another_node_drifts() {
        let a = two_node(&["0", "1"], &[(0, 512 * MIB), (1, 512 * MIB)], "0");
        assert_eq!(
            drifts(&evaluate(&[a]), "a"),
            vec![(Check::Numa, "memory".into(), "0".into(), "1".into())]
        );
    }

    #[test]
    fn cpuset_mems_wider_than_a_strict_nodeset_drifts() {
        let a = two_node(&["0"], &[(0, 1 << 30)], "0-1");
        assert_eq!(
            drifts(&evaluate(&[a]), "a"),
            vec![(Check::Numa, "memory".into(), "0".into(), "mems 0-1".into())]
        );
    }

    #[test]
    fn vcpu_on_another_node_than_its_cell_memory_drifts() {
        // vCPU 1 pinned to CPU 5 (node 1) while cell 0's memory is bound to node 0.
        let a = two_node(&["0", "5"], &[(0, 1 << 30)], "0");
        let r = evaluate(&[a]);
        assert_eq!(
            drifts(&r, "a"),
            vec![(Check::Numa, "1".into(), "0".into(), "1".into())]
        );
        assert_eq!(r.domains[0].drifted_vcpus[&Check::Numa], 1);
    }

    #[test]
    fn preferred_binds_nothing_and_unread_numa_checks_nothing() {
        let mut a = two_node(&["0", "5"], &[(0, 1), (1, 1 << 30)], "0-1");
        let dom = a.domain.as_mut().unwrap();
        dom.numa.memory.as_mut().unwrap().mode = NumaMode::Preferred;
        dom.numa.memnodes.get_mut(&0).unwrap().mode = NumaMode::Preferred;
        assert!(drifts(&evaluate(std::slice::from_ref(&a)), "a").is_empty());
        let mut b = two_node(&["0", "5"], &[(1, 1 << 30)], "0-1");
        b.numa = None;
        assert!(drifts(&evaluate(&[b]), "a").is_empty());
    }
}
