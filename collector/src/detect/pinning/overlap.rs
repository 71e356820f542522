//! The `overlap` check: a thread (a vCPU, a pinned I/O thread, or the emulator threads
//! together) may run on a pCPU dedicated to another domain.

use super::{DomainView, Finding, Subject};
use crate::model::ThreadState;
use crate::model::cpuset::CpuSet;
use crate::model::pinning::{MAX_LABELLED_OWNERS, MAX_LISTED_OWNERS, OverlapOwner, OverlapOwners};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

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

/// The owners a CPU set reaches, each with its pCPUs there, in name order.
/// Shared by the findings of every subject reaching the set (see [`OverlapOwners`]).
type Reach = Arc<[OverlapOwner]>;

/// The owners of each dedicated pCPU, and, memoized per CPU set asked about, every owner that
/// set reaches with the pCPUs it owns there (in name order). Subjects of one host reach few
/// distinct CPU sets (a pCPU, a shared set, every CPU), so a set's owners are gathered once per
/// evaluation instead of once per subject: on a host where every pCPU has many owners (an
/// overlap storm) that is the difference between a few and a few hundred thousand map inserts.
pub(super) struct PcpuOwners {
    by_cpu: BTreeMap<u32, BTreeSet<String>>,
    reach: RefCell<HashMap<CpuSet, Reach>>,
}

impl PcpuOwners {
    /// Wraps the owners of each dedicated pCPU.
    pub(super) fn new(by_cpu: BTreeMap<u32, BTreeSet<String>>) -> Self {
        Self {
            by_cpu,
            reach: RefCell::default(),
        }
    }

    /// Every owner of a dedicated pCPU within `cpus`, with those pCPUs, in name order.
    fn within(&self, cpus: &CpuSet) -> Reach {
        if let Some(r) = self.reach.borrow().get(cpus) {
            return r.clone();
        }
        let mut hits: BTreeMap<&str, CpuSet> = BTreeMap::new();
        for cpu in cpus.iter() {
            for n in self.by_cpu.get(&cpu).into_iter().flatten() {
                hits.entry(n.as_str()).or_default().insert(cpu);
            }
        }
        let r: Reach = hits
            .into_iter()
            .map(|(n, c)| OverlapOwner {
                domain: n.to_string(),
                cpus: c,
            })
            .collect();
        self.reach.borrow_mut().insert(cpus.clone(), r.clone());
        r
    }

    /// Whether `cpu` has an owner other than `me`.
    pub(super) fn foreign_owned(&self, cpu: u32, me: &str) -> bool {
        self.by_cpu
            .get(&cpu)
            .is_some_and(|n| n.iter().any(|n| n != me))
    }
}

/// The finding for a subject that may run on `cpus`, when a domain other than `me` owns a
/// dedicated pCPU among them.
fn overlap(
    owners: &PcpuOwners,
    cpus: &CpuSet,
    me: &str,
    expected: Option<&CpuSet>,
) -> Option<Finding> {
    let reach = owners.within(cpus);
    let foreign = || reach.iter().filter(|o| o.domain != me);
    let count = foreign().count();
    if count == 0 {
        return None;
    }
    // The `actual` label: the owners' pCPUs, then at most MAX_LABELLED_OWNERS owners in name
    // order and how many more there are.
    let pcpus: CpuSet = cpus
        .iter()
        .filter(|c| owners.foreign_owned(*c, me))
        .collect();
    let mut list = foreign()
        .take(MAX_LABELLED_OWNERS)
        .map(|o| o.domain.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let more = count.saturating_sub(MAX_LABELLED_OWNERS);
    if more > 0 {
        list.push_str(&format!(" +{more} more"));
    }
    Some(Finding {
        expected: expected.map(ToString::to_string).unwrap_or_default(),
        actual: format!("{pcpus} ({list})"),
        more_owners: count.saturating_sub(MAX_LISTED_OWNERS),
        owners: OverlapOwners::new(reach.clone(), reach.iter().position(|o| o.domain == me)),
    })
}

/// Foreign dedicated pCPUs the subject may run on. Emulator threads are every other thread of
/// the QEMU process, except kernel workers living in it (`kvm-nx-lpage-recovery`); a domain's
/// emulator sharing its own dedicated pCPUs is fine (Nova's `share` policy): only other domains'
/// pCPUs count.
pub(super) fn check(d: &DomainView<'_>, s: &Subject<'_>) -> Option<Finding> {
    let me = d.domain.name.as_str();
    match s {
        Subject::Vcpu(v) => {
            let cpus = may_run_on(v.state, v.spec.pin.as_ref())?;
            overlap(d.owners, cpus, me, v.spec.pin.as_ref())
        }
        Subject::Iothread(t) => {
            let pin = t.spec.pin.as_ref()?;
            let cpus = may_run_on(t.state, Some(pin))?;
            overlap(d.owners, cpus, me, Some(pin))
        }
        Subject::Memory => None,
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
            // Where any emulator thread may run: an owner's pCPUs reached by the threads
            // together are its pCPUs within this union.
            let mut reach = CpuSet::new();
            for t in d.obs.threads.values() {
                if vcpu_tids.contains(&t.tid) || t.kernel_worker || pinned_io.contains(&t.comm) {
                    continue;
                }
                if let Some(cpus) = may_run_on(Some(t), pin) {
                    reach = reach.union(cpus);
                }
            }
            overlap(d.owners, &reach, me, pin)
        }
    }
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
    fn in_an_overlap_storm_each_owner_lists_the_others_but_not_itself() {
        // 20 domains dedicated to the same pCPU (a Nova bug): each overlaps with the 19 others.
        let obs: Vec<_> = (0..20u32)
            .map(|i| healthy(&format!("d{i:02}"), 1000 + 10 * i, &["0"]))
            .collect();
        let r = evaluate(&obs);
        let max = crate::model::pinning::MAX_LISTED_OWNERS;
        for d in &r.domains {
            let x = d
                .drifts
                .iter()
                .find(|x| x.check == Check::Overlap && x.vcpu == "0")
                .unwrap();
            let listed: Vec<&str> = x.owners.iter().map(|o| o.domain.as_str()).collect();
            let want: Vec<String> = (0..20)
                .map(|i| format!("d{i:02}"))
                .filter(|n| *n != d.domain)
                .take(max)
                .collect();
            assert_eq!(listed, want, "{}", d.domain);
            assert_eq!(x.owners.iter().count(), max);
            assert_eq!(x.more_owners, 19 - max);
            // The API shows the same list.
            let json = serde_json::to_value(x).unwrap();
            let names: Vec<&str> = json["owners"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["domain"].as_str().unwrap())
                .collect();
            assert_eq!(names, want);
        }
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
            d.drifts[0].owners.iter().count(),
            crate::model::pinning::MAX_LISTED_OWNERS
        );
        assert_eq!(
            d.drifts[0].owners.iter().next().map(|o| o.domain.as_str()),
            Some("instance-00000000")
        );
        assert_eq!(
            d.drifts[0].more_owners,
            60 - crate::model::pinning::MAX_LISTED_OWNERS
        );
    }
}
