//! The `overlap` check: a thread (a vCPU, a pinned I/O thread, or the emulator threads
//! together) may run on a pCPU dedicated to another domain.

use super::{DomainView, Finding, Subject};
use crate::model::ThreadState;
use crate::model::cpuset::CpuSet;
use crate::model::pinning::{MAX_LABELLED_OWNERS, MAX_LISTED_OWNERS, OverlapOwner};
use std::collections::{BTreeMap, BTreeSet};

/// Where a thread may run: its actual affinity when known, else what libvirt configured.
fn may_run_on<'a>(
    state: Option<&'a ThreadState>,
    configured: Option<&'a CpuSet>,
) -> Option<&'a CpuSet> {
    state
        .map(|s| &s.affinity)
        .filter(|a| !a.is_empty())
        .or(configured)
}

/// Foreign dedicated pCPUs within `cpus`, by owner (other than `me`); adds to `hits`.
fn foreign_dedicated<'o>(
    cpus: &CpuSet,
    me: &str,
    owners: &'o BTreeMap<u32, BTreeSet<String>>,
    hits: &mut BTreeMap<&'o str, CpuSet>,
) {
    for cpu in cpus.iter() {
        if let Some(names) = owners.get(&cpu) {
            for n in names.iter().filter(|n| n.as_str() != me) {
                hits.entry(n.as_str()).or_default().insert(cpu);
            }
        }
    }
}

/// The `actual` label of an overlap: the union of the owners' pCPUs, then at most
/// [`MAX_LABELLED_OWNERS`] owners in name order and how many more there are.
fn overlap_label(hits: &BTreeMap<&str, CpuSet>) -> String {
    let cpus: CpuSet = hits.values().flat_map(CpuSet::iter).collect();
    let mut list = hits
        .keys()
        .take(MAX_LABELLED_OWNERS)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let more = hits.len().saturating_sub(MAX_LABELLED_OWNERS);
    if more > 0 {
        list.push_str(&format!(" +{more} more"));
    }
    format!("{cpus} ({list})")
}

/// Foreign dedicated pCPUs the subject may run on. Emulator threads are every other thread of
/// the QEMU process, except kernel workers living in it (`kvm-nx-lpage-recovery`); a domain's
/// emulator sharing its own dedicated pCPUs is fine (Nova's `share` policy): only other domains'
/// pCPUs count.
pub(super) fn check(d: &DomainView<'_>, s: &Subject<'_>) -> Option<Finding> {
    let (me, mut hits) = (d.domain.name.as_str(), BTreeMap::new());
    let expected = match s {
        Subject::Vcpu(v) => {
            let cpus = may_run_on(v.state, v.spec.pin.as_ref())?;
            foreign_dedicated(cpus, me, d.owners, &mut hits);
            v.spec.pin.as_ref()
        }
        Subject::Iothread(t) => {
            let pin = t.spec.pin.as_ref()?;
            let cpus = may_run_on(t.state, Some(pin))?;
            foreign_dedicated(cpus, me, d.owners, &mut hits);
            Some(pin)
        }
        Subject::Memory => return None,
        Subject::Emulator => {
            let vcpu_tids: BTreeSet<u32> = d.domain.vcpus.iter().filter_map(|v| v.tid).collect();
            // I/O threads with a pin of their own are checked on their own.
            let pinned_io: BTreeSet<String> = d
                .domain
                .iothreads
                .iter()
                .filter(|t| t.pin.is_some())
                .map(|t| t.comm())
                .collect();
            let pin = d.domain.emulator_pin.as_ref();
            for t in d.obs.threads.values() {
                if vcpu_tids.contains(&t.tid) || t.kernel_worker || pinned_io.contains(&t.comm) {
                    continue;
                }
                if let Some(cpus) = may_run_on(Some(t), pin) {
                    foreign_dedicated(cpus, me, d.owners, &mut hits);
                }
            }
            pin
        }
    };
    if hits.is_empty() {
        return None;
    }
    Some(Finding {
        expected: expected.map(ToString::to_string).unwrap_or_default(),
        actual: overlap_label(&hits),
        more_owners: hits.len().saturating_sub(MAX_LISTED_OWNERS),
        owners: hits
            .into_iter()
            .take(MAX_LISTED_OWNERS)
            .map(|(domain, cpus)| OverlapOwner {
                domain: domain.to_string(),
                cpus,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::evaluate;
    use super::super::tests::{cpus, drifts, healthy};
    use crate::model::ThreadState;
    use crate::model::pinning::Check;

    #[test]
    fn two_domains_on_one_dedicated_pcpu_overlap_both_ways() {
        let r = evaluate(&[healthy("a", 101, &["0"]), healthy("b", 201, &["0"])]);
        assert!(drifts(&r, "a").contains(&(
            Check::Overlap,
            "0".into(),
            "0".into(),
            "0 (b)".into()
        )));
        assert!(drifts(&r, "b").contains(&(
            Check::Overlap,
            "0".into(),
            "0".into(),
            "0 (a)".into()
        )));
        assert_eq!(r.domains[0].drifted_vcpus[&Check::Overlap], 1);
        assert_eq!(r.pcpu_pinned_vcpus[&0], 2);
    }

    #[test]
    fn floating_domain_on_dedicated_pcpus_overlaps_but_own_emulator_does_not() {
        let mut f = healthy("f", 301, &["0-3"]);
        let dom = f.domain.as_mut().unwrap();
        dom.vcpus[0].pin = None;
        dom.emulator_pin = None;
        let r = evaluate(&[healthy("a", 101, &["0", "1"]), f]);
        // `a`'s emulator threads share a's own pCPUs: fine.
        assert!(drifts(&r, "a").is_empty());
        let f = drifts(&r, "f");
        assert!(
            f.contains(&(Check::Overlap, "0".into(), String::new(), "0-1 (a)".into())),
            "{f:?}"
        );
        assert!(f.iter().any(|d| d.1 == "emulator"));
        // the emulator entry does not count as a drifted vCPU
        assert_eq!(r.domains[1].drifted_vcpus[&Check::Overlap], 1);
    }

    #[test]
    fn overlap_labels_are_bounded_sorted_and_stable() {
        // A floating domain over pCPUs 0-5, each dedicated to another domain.
        let mut obs: Vec<_> = ["o5", "o1", "o4", "o0", "o2", "o3"]
            .iter()
            .enumerate()
            .map(|(i, n)| healthy(n, 100 * (i as u32 + 1) + 1, &[&n[1..]]))
            .collect();
        let mut f = healthy("f", 901, &["0-5"]);
        f.domain.as_mut().unwrap().vcpus[0].pin = None;
        f.domain.as_mut().unwrap().emulator_pin = None;
        obs.push(f.clone());
        let r = evaluate(&obs);
        let want_label = "0-5 (o0, o1, o2 +3 more)";
        let d = r.domains.iter().find(|d| d.domain == "f").unwrap();
        let vcpu0 = d.drifts.iter().find(|x| x.vcpu == "0").unwrap();
        assert_eq!(vcpu0.actual, want_label);
        let owners: Vec<(&str, String)> = vcpu0
            .owners
            .iter()
            .map(|o| (o.domain.as_str(), o.cpus.to_string()))
            .collect();
        assert_eq!(
            owners,
            [
                ("o0", "0".into()),
                ("o1", "1".into()),
                ("o2", "2".into()),
                ("o3", "3".into()),
                ("o4", "4".into()),
                ("o5", "5".into())
            ]
        );
        // The emulator (same reach) has one drift with the same bounded label.
        let emu: Vec<_> = d.drifts.iter().filter(|x| x.vcpu == "emulator").collect();
        assert_eq!(emu.len(), 1);
        assert_eq!(emu[0].actual, want_label);
        // An unrelated domain starting elsewhere changes no label.
        obs.push(healthy("z", 9001, &["9"]));
        let r2 = evaluate(&obs);
        let d2 = r2.domains.iter().find(|d| d.domain == "f").unwrap();
        assert_eq!(d2.drifts, d.drifts);
        // Fewer owners than the cap: all named, no "+0 more".
        let r3 = evaluate(&[healthy("a", 101, &["0"]), healthy("b", 201, &["1"]), f]);
        let d3 = r3.domains.iter().find(|d| d.domain == "f").unwrap();
        assert_eq!(d3.drifts[0].actual, "0-1 (a, b)");
    }

    #[test]
    fn kernel_workers_in_the_qemu_process_are_not_emulator_threads() {
        // KVM's NX huge-page recovery worker lives in b's QEMU process (Linux ≥ 6.13) and may
        // run anywhere, a's dedicated pCPU 0 included: no overlap for b.
        let mut b = healthy("b", 201, &["1"]);
        b.threads.insert(
            250,
            ThreadState {
                tid: 250,
                comm: "kvm-nx-lpage-re".into(),
                affinity: cpus("0-1"),
                kernel_worker: true,
                ..Default::default()
            },
        );
        let r = evaluate(&[healthy("a", 101, &["0"]), b.clone()]);
        assert!(drifts(&r, "b").is_empty(), "{:?}", drifts(&r, "b"));
        // The same thread, were it QEMU's own, would overlap.
        b.threads.get_mut(&250).unwrap().kernel_worker = false;
        let r = evaluate(&[healthy("a", 101, &["0"]), b]);
        assert_eq!(
            drifts(&r, "b"),
            vec![(
                Check::Overlap,
                "emulator".into(),
                "1".into(),
                "0 (a)".into()
            )]
        );
    }

    #[test]
    fn overlap_label_stays_short_at_sixty_domains() {
        // 60 domains each dedicated to one pCPU, one domain floating over all of them.
        let mut obs: Vec<_> = (0..60u32)
            .map(|i| {
                healthy(
                    &format!("instance-{i:08x}"),
                    1000 + 10 * i,
                    &[&i.to_string()],
                )
            })
            .collect();
        let mut f = healthy("instance-000000ff", 9001, &["0-59"]);
        f.domain.as_mut().unwrap().vcpus[0].pin = None;
        f.domain.as_mut().unwrap().emulator_pin = None;
        obs.push(f);
        let r = evaluate(&obs);
        let d = r
            .domains
            .iter()
            .find(|d| d.domain == "instance-000000ff")
            .unwrap();
        let label = &d.drifts[0].actual;
        assert_eq!(
            label,
            "0-59 (instance-00000000, instance-00000001, instance-00000002 +57 more)"
        );
        // The API lists the first owners and counts the rest: memory stays bounded when a
        // pCPU has many owners.
        assert_eq!(
            d.drifts[0].owners.len(),
            crate::model::pinning::MAX_LISTED_OWNERS
        );
        assert_eq!(d.drifts[0].owners[0].domain, "instance-00000000");
        assert_eq!(
            d.drifts[0].more_owners,
            60 - crate::model::pinning::MAX_LISTED_OWNERS
        );
    }
}
