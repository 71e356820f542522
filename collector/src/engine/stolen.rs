//! Intrusions on dedicated pCPUs, from the sched probe's counters to per-domain observations and
//! the `/api/v1/intrusions` report (part of the pinning pipeline, on its thread).
//!
//! Each pass: the dedicated pCPUs (a pCPU exactly one vCPU is pinned to) and every thread of
//! every domain go to the kernel (only what changed is written); the per-CPU counters by class
//! are read, their increments since the last read added to monotonic totals per (domain, pCPU),
//! and sampled for the placement window. The top-intruder table (`/api/v1/intrusions`' names) is
//! read only in passes where some counter moved, and then at most every [`TABLE_REFRESH`] unless
//! a `stolen` verdict changed: on a host whose dedicated pCPUs are shared by mistake, counters
//! move on every pass, and reading and indexing the whole table each second was a quarter of an
//! idle pass (perf, 60 domains on 2 pCPUs). A domain or pCPU that stops being dedicated is
//! forgotten with its series.

use crate::detect::pinning::dedicated_owners;
use crate::model::pinning::{
    DomainObservation, INTRUDER_LABELS, IntruderReport, IntrusionsReport, MAX_TOP_INTRUDERS,
    PcpuIntrusions, StolenSample,
};
use crate::sources::sched_bpf::{CpuOwner, SchedProbe};
use collector_common::sched::INTRUDER_CLASSES;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Classes = [u64; INTRUDER_CLASSES];
/// Run time per (CPU, tid) in the kernel's top-intruder table at one read, ns.
type Snapshot = HashMap<(u32, u32), u64>;

/// How often the top-intruder table is read while counters keep moving and no `stolen` verdict
/// changes. The verdicts and per-class counters come from the per-CPU counters, read every pass.
const TABLE_REFRESH: Duration = Duration::from_secs(5);

/// What one intruder was as of the last read.
#[derive(Clone, Debug)]
struct IntruderInfo {
    tgid: u32,
    comm: String,
    class: &'static str,
}

/// One (domain, pCPU) dedication.
#[derive(Debug)]
struct Dedication {
    vcpu_tid: u32,
    totals: Classes,
    samples: VecDeque<(Instant, Classes)>,
}

/// The pipeline's intrusion state between passes.
#[derive(Debug, Default)]
pub(crate) struct StolenTracker {
    /// Stable domain ids for the kernel (never 0), by domain name.
    ids: HashMap<String, u32>,
    next_id: u32,
    /// Raw kernel counters as last read, per dedicated CPU.
    last: HashMap<u32, Classes>,
    /// Per (domain, CPU).
    dedications: HashMap<(String, u32), Dedication>,
    /// Snapshots of the top-intruder table: ns per (CPU, tid), oldest first; the oldest is the
    /// newest one at least a window old (the baseline the window's increments start from).
    snapshots: VecDeque<(Instant, Snapshot)>,
    /// Bumped whenever `snapshots` changes: the top lists below are for one value of it.
    snapshots_version: u64,
    /// The top intruders of each dedicated pCPU as of `snapshots_version`: on a host whose
    /// counters move every tick, the table is read every [`TABLE_REFRESH`] but the report every
    /// tick, and ranking a few hundred intruders per pCPU each time was most of the tracker's
    /// own CPU.
    tops: Option<(u64, HashMap<u32, Vec<IntruderReport>>)>,
    /// When the table was last read.
    table_read: Option<Instant>,
    /// The `stolen` verdict of each (domain, pCPU) at the last pass.
    verdicts: HashMap<(String, u32), Option<&'static str>>,
    info: HashMap<(u32, u32), IntruderInfo>,
    /// The owner vCPU thread of each dedicated pCPU, as last chosen.
    owner_tid: HashMap<u32, u32>,
    /// The observations' generation the kernel's thread and owner maps were last synced with,
    /// and the owners then chosen (CPU -> observation index, vCPU, thread id).
    synced: Option<(u64, Owners)>,
    /// The observations' generation the domain names and kernel ids below are for: the
    /// name and kernel id of each observation, by index.
    names: Option<(u64, DomainIds)>,
    /// The last pass read every counter and found no intrusion time in any window, and the
    /// top-intruder snapshots settled: until a counter moves, a tick changes nothing but the
    /// windows' clocks ([`Self::quiet_tick`]).
    idle: bool,
}

/// The name and kernel id of each observation's domain, by observation index.
type DomainIds = (Arc<[Option<String>]>, Arc<[Option<u32>]>);

/// The owner of each dedicated pCPU: CPU -> (observation index, vCPU, thread id).
type Owners = BTreeMap<u32, (usize, u32, u32)>;

/// Appends a pass's totals to a dedication's samples and drops those older than the window
/// (keeping at least one: the baseline of the window's increments).
fn push_sample(
    samples: &mut VecDeque<(Instant, Classes)>,
    now: Instant,
    totals: Classes,
    window: Duration,
) {
    samples.push_back((now, totals));
    while samples.len() > 1
        && samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > window)
    {
        samples.pop_front();
    }
}

/// Increment of a kernel counter since `last` (the whole value when it went down: never negative).
fn increment(cur: u64, last: u64) -> u64 {
    if cur >= last { cur - last } else { cur }
}

impl StolenTracker {
    /// Writes the kernel's view: every thread of every domain (for the classes) and the owner of
    /// each dedicated pCPU. Returns the owners.
    fn sync_kernel(
        &mut self,
        probe: &mut SchedProbe,
        observations: &[DomainObservation],
        id_of: &dyn Fn(usize) -> Option<u32>,
        errors: &mut u64,
    ) -> Owners {
        // Every thread of every domain, for the kernel's classes.
        let mut threads: HashMap<u32, (u32, bool)> = HashMap::new();
        for (i, o) in observations.iter().enumerate() {
            let (Some(id), Some(d)) = (id_of(i), &o.domain) else {
                continue;
            };
            for &tid in o.threads.keys() {
                threads.insert(tid, (id, false));
            }
            for tid in d.vcpus.iter().filter_map(|v| v.tid) {
                threads.insert(tid, (id, true));
            }
        }
        *errors += probe.set_domain_threads(&threads);
        // One owner per pCPU: the vCPU that owns it now while it is still pinned there alone,
        // else the first candidate; other vCPUs pinned there (an overlap) are its intruders.
        let owners: BTreeMap<u32, (usize, u32, u32)> = dedicated_owners(observations)
            .into_iter()
            .filter_map(|(cpu, candidates)| {
                let incumbent = self.owner_tid.get(&cpu).copied();
                let pick = candidates
                    .iter()
                    .find(|c| Some(c.2) == incumbent)
                    .or(candidates.first())?;
                Some((cpu, *pick))
            })
            .collect();
        self.owner_tid = owners.iter().map(|(cpu, o)| (*cpu, o.2)).collect();
        let kernel_owners: HashMap<u32, CpuOwner> = owners
            .iter()
            .filter_map(|(cpu, (i, _, tid))| {
                Some((
                    *cpu,
                    CpuOwner {
                        domain: id_of(*i)?,
                        tid: *tid,
                    },
                ))
            })
            .collect();
        *errors += probe.set_dedicated(&kernel_owners);
        owners
    }

    /// A tick with nothing to report, checked without a pass: the observations' generation is
    /// the last pass's, the last pass was [`idle`](Self::idle), and no dedicated pCPU's counters
    /// moved since (one read of the mapped array each). Moves the windows' samples on as a pass
    /// does, so that the next intrusion is measured against a full window; the observations'
    /// samples, the verdicts and the report stand (their window shares are zero and stay so).
    /// On a healthy host with hundreds of dedicated pCPUs the pass built a report, two keyed
    /// maps and a summary per pCPU every tick: a quarter of an idle tick (perf, 800 dedicated
    /// pCPUs on the fixture host). `false`: run [`Self::sync`]. `counters` reads one pCPU's
    /// counters (the probe's mapped array).
    pub(crate) fn quiet_tick<E>(
        &mut self,
        counters: impl Fn(u32) -> Result<Classes, E>,
        generation: u64,
        window: Duration,
        now: Instant,
    ) -> bool {
        if !self.idle || self.synced.as_ref().is_none_or(|(g, _)| *g != generation) {
            return false;
        }
        let unmoved = self
            .last
            .iter()
            .all(|(cpu, last)| counters(*cpu).is_ok_and(|cur| cur == *last));
        if !unmoved {
            return false;
        }
        for d in self.dedications.values_mut() {
            push_sample(&mut d.samples, now, d.totals, window);
        }
        true
    }

    /// Gives every observed domain a stable kernel id (new names a new one, gone names lose
    /// theirs) and records the names and ids by observation index for `generation`.
    fn reindex(&mut self, observations: &[DomainObservation], generation: u64) {
        let names: Arc<[Option<String>]> = observations
            .iter()
            .map(|o| o.domain.as_ref().map(|d| d.name.clone()))
            .collect();
        let present: HashSet<&str> = names.iter().flatten().map(String::as_str).collect();
        self.ids.retain(|n, _| present.contains(n.as_str()));
        for n in names.iter().flatten() {
            if !self.ids.contains_key(n) {
                self.next_id = self.next_id.checked_add(1).unwrap_or(1);
                self.ids.insert(n.clone(), self.next_id);
            }
        }
        let ids: Arc<[Option<u32>]> = names
            .iter()
            .map(|n| n.as_ref().and_then(|n| self.ids.get(n).copied()))
            .collect();
        self.names = Some((generation, (names, ids)));
    }

    /// One pass: syncs the kernel's view, fills `observations[..].stolen`, and returns the
    /// intrusions report and the number of failed map operations.
    /// `generation` changes whenever the observations' domains or threads do: the kernel's
    /// thread and owner maps are only rewritten then, not on every tick.
    pub(crate) fn sync(
        &mut self,
        probe: &mut SchedProbe,
        observations: &mut [DomainObservation],
        generation: u64,
        window: Duration,
        limit: f64,
        now: Instant,
    ) -> (IntrusionsReport, u64) {
        let mut errors = 0u64;
        if self.names.as_ref().is_none_or(|(g, ..)| *g != generation) {
            self.reindex(observations, generation);
        }
        let (names, ids) = match &self.names {
            Some((_, (names, ids))) => (names.clone(), ids.clone()),
            None => (Arc::from([]), Arc::from([])),
        };
        let id_of = |i: usize| ids.get(i).copied().flatten();
        let owners = match self.synced.take() {
            Some((g, owners)) if g == generation => owners,
            _ => self.sync_kernel(probe, observations, &id_of, &mut errors),
        };
        self.synced = Some((generation, owners.clone()));

        // Counters: increments since the last read, per (domain, CPU).
        let mut moved = false;
        let mut live: HashMap<(String, u32), usize> = HashMap::new();
        for (cpu, (i, _, tid)) in &owners {
            let Some(name) = names.get(*i).and_then(|n| n.clone()) else {
                continue;
            };
            let key = (name, *cpu);
            let cur = match probe.stolen(*cpu) {
                Ok(c) => c,
                Err(_) => {
                    // Keep what was counted (the series stay monotonic); read again next pass.
                    errors += 1;
                    if self.dedications.contains_key(&key) {
                        live.insert(key, *i);
                    }
                    continue;
                }
            };
            let last = self.last.insert(*cpu, cur);
            let fresh = self
                .dedications
                .get(&key)
                .is_none_or(|d| d.vcpu_tid != *tid);
            if fresh {
                // A new owner vCPU of the domain keeps the series' totals; its window starts now.
                let totals = self
                    .dedications
                    .remove(&key)
                    .map_or([0; INTRUDER_CLASSES], |d| d.totals);
                let samples = VecDeque::from([(now, totals)]);
                self.dedications.insert(
                    key.clone(),
                    Dedication {
                        vcpu_tid: *tid,
                        totals,
                        samples,
                    },
                );
            }
            if let (Some(last), Some(d)) = (last, self.dedications.get_mut(&key))
                && !fresh
            {
                for (total, (now_v, last_v)) in d.totals.iter_mut().zip(cur.iter().zip(last)) {
                    let inc = increment(*now_v, last_v);
                    moved |= inc > 0;
                    *total = total.saturating_add(inc);
                }
            }
            if let Some(d) = self.dedications.get_mut(&key) {
                push_sample(&mut d.samples, now, d.totals, window);
            }
            live.insert(key, *i);
        }
        self.last.retain(|cpu, _| owners.contains_key(cpu));
        self.dedications.retain(|k, _| live.contains_key(k));

        // Samples and verdicts of the live dedications, in CPU order.
        let mut keys: Vec<(&(String, u32), &usize)> = live.iter().collect();
        keys.sort_by_key(|((_, cpu), _)| *cpu);
        let samples: Vec<(&(String, u32), usize, StolenSample)> = keys
            .into_iter()
            .filter_map(|(key, i)| {
                let d = self.dedications.get(key)?;
                let (start, oldest) = d.samples.front().copied().unwrap_or((now, d.totals));
                let mut ns_window = [0u64; INTRUDER_CLASSES];
                for (w, (t, o)) in ns_window.iter_mut().zip(d.totals.iter().zip(oldest)) {
                    *w = t.saturating_sub(o);
                }
                let sample = StolenSample {
                    vcpu_tid: d.vcpu_tid,
                    ns_total: d.totals,
                    ns_window,
                    window_ns: u64::try_from(now.duration_since(start).as_nanos())
                        .unwrap_or(u64::MAX),
                    limit,
                };
                Some((key, *i, sample))
            })
            .collect();
        let windows_empty = samples
            .iter()
            .all(|(_, _, s)| s.ns_window.iter().all(|ns| *ns == 0));
        let verdicts: HashMap<(String, u32), Option<&'static str>> = samples
            .iter()
            .map(|(key, _, sample)| ((*key).clone(), sample.drift()))
            .collect();
        let verdict_changed = verdicts != self.verdicts;
        self.verdicts = verdicts;

        // The top-intruder table: when something intruded, at most every TABLE_REFRESH unless a
        // verdict changed (a new finding names its intruders at once).
        let table_due = verdict_changed
            || self
                .table_read
                .is_none_or(|t| now.duration_since(t) >= TABLE_REFRESH);
        if self.snapshots.is_empty() || (moved && table_due) {
            self.table_read = Some(now);
            match probe.intruders() {
                Ok(list) => {
                    let mut snap = HashMap::with_capacity(list.len());
                    for x in list {
                        let class = x.class.as_str();
                        self.info.insert(
                            (x.cpu, x.tid),
                            IntruderInfo {
                                tgid: x.tgid,
                                comm: x.comm,
                                class,
                            },
                        );
                        snap.insert((x.cpu, x.tid), x.ns);
                    }
                    self.info.retain(|k, _| snap.contains_key(k));
                    self.snapshots.push_back((now, snap));
                    self.snapshots_version += 1;
                }
                Err(_) => errors += 1,
            }
        }
        // No snapshot when nothing moved: the table's run times move only with the counters.
        while self.snapshots.len() > 1
            && self
                .snapshots
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= window)
        {
            self.snapshots.pop_front();
            self.snapshots_version += 1;
        }
        if self
            .tops
            .as_ref()
            .is_none_or(|(v, _)| *v != self.snapshots_version)
        {
            self.tops = Some((self.snapshots_version, HashMap::new()));
        }

        self.idle = errors == 0 && windows_empty && self.snapshots.len() <= 1;

        // Observations and the report.
        for o in observations.iter_mut() {
            o.stolen.clear();
        }
        let mut report = IntrusionsReport {
            window_seconds: window.as_secs_f64(),
            stolen_share_limit: limit,
            pcpus: Vec::new(),
        };
        for (key, i, sample) in samples {
            let vcpu = owners.get(&key.1).map(|(_, v, _)| *v);
            report.pcpus.push(PcpuIntrusions {
                cpu: key.1,
                domain: key.0.clone(),
                vcpu,
                vcpu_tid: sample.vcpu_tid,
                stolen_share: sample.window_share(),
                stolen_seconds: INTRUDER_LABELS
                    .iter()
                    .zip(sample.ns_window)
                    .filter(|(_, ns)| *ns > 0)
                    .map(|(l, ns)| (*l, ns as f64 / 1e9))
                    .collect(),
                top: self.top_cached(key.1),
            });
            if let Some(o) = observations.get_mut(i) {
                o.stolen.insert(key.1, sample);
            }
        }
        (report, errors)
    }

    /// [`Self::top`], computed once per change of the snapshots.
    fn top_cached(&mut self, cpu: u32) -> Vec<IntruderReport> {
        if let Some((_, tops)) = &self.tops
            && let Some(top) = tops.get(&cpu)
        {
            return top.clone();
        }
        let top = self.top(cpu);
        if let Some((_, tops)) = &mut self.tops {
            tops.insert(cpu, top.clone());
        }
        top
    }

    /// The top intruders of `cpu` within the window: the newest snapshot against the oldest.
    fn top(&self, cpu: u32) -> Vec<IntruderReport> {
        let (Some((_, newest)), Some((_, oldest))) =
            (self.snapshots.back(), self.snapshots.front())
        else {
            return Vec::new();
        };
        // Ranked on (run time, tid) first; only the few kept are turned into reports.
        let mut ranked: Vec<(std::cmp::Reverse<u64>, u32)> = newest
            .iter()
            .filter(|((c, _), _)| *c == cpu)
            .filter_map(|(&(c, tid), &ns)| {
                let before = oldest.get(&(c, tid)).copied().unwrap_or(0);
                let inc = increment(ns, before);
                (inc > 0 && self.info.contains_key(&(c, tid)))
                    .then_some((std::cmp::Reverse(inc), tid))
            })
            .collect();
        ranked.sort_unstable();
        ranked
            .into_iter()
            .take(MAX_TOP_INTRUDERS)
            .filter_map(|(std::cmp::Reverse(inc), tid)| {
                let info = self.info.get(&(cpu, tid))?;
                Some(IntruderReport {
                    pid: info.tgid,
                    tid,
                    comm: info.comm.clone(),
                    class: info.class,
                    seconds: inc as f64 / 1e9,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracker as a pass on an idle host leaves it: one dedication of CPU 3, its counters
    /// read, nothing in its window.
    fn idle_tracker(now: Instant) -> StolenTracker {
        let totals = [5, 0, 0, 7, 0];
        let mut t = StolenTracker {
            idle: true,
            synced: Some((4, BTreeMap::from([(3, (0, 0, 1003))]))),
            ..StolenTracker::default()
        };
        t.last.insert(3, totals);
        t.dedications.insert(
            ("a".into(), 3),
            Dedication {
                vcpu_tid: 1003,
                totals,
                samples: VecDeque::from([(now, totals)]),
            },
        );
        t
    }

    #[test]
    fn a_tick_is_quiet_only_while_nothing_moved_on_the_same_observations() {
        let (t0, window) = (Instant::now(), Duration::from_secs(10));
        let same = |_: u32| Ok::<Classes, ()>([5, 0, 0, 7, 0]);
        let moved = |_: u32| Ok::<Classes, ()>([5, 0, 0, 8, 0]);
        let failed = |_: u32| Err::<Classes, ()>(());

        let mut t = idle_tracker(t0);
        assert!(t.quiet_tick(same, 4, window, t0 + Duration::from_secs(1)));
        assert!(!t.quiet_tick(moved, 4, window, t0 + Duration::from_secs(2)));
        assert!(!t.quiet_tick(failed, 4, window, t0 + Duration::from_secs(2)));
        // New observations (a pass) or a pass that left time in a window: the pass runs.
        assert!(!t.quiet_tick(same, 5, window, t0 + Duration::from_secs(2)));
        t.idle = false;
        assert!(!t.quiet_tick(same, 4, window, t0 + Duration::from_secs(2)));
    }

    #[test]
    fn quiet_ticks_keep_a_full_window_behind_the_next_intrusion() {
        // 30 quiet ticks, one a second, with a 10 s window: the oldest sample kept is a window
        // old, so an intrusion after them is shared over the window, not over the last second.
        let (t0, window) = (Instant::now(), Duration::from_secs(10));
        let mut t = idle_tracker(t0);
        let same = |_: u32| Ok::<Classes, ()>([5, 0, 0, 7, 0]);
        let now = t0 + Duration::from_secs(30);
        for s in 1..=30 {
            assert!(t.quiet_tick(same, 4, window, t0 + Duration::from_secs(s)));
        }
        let d = &t.dedications[&("a".to_string(), 3)];
        let (oldest, _) = d.samples.front().copied().expect("a sample");
        assert_eq!(now.duration_since(oldest), window);
        assert_eq!(d.samples.back().map(|(t, _)| *t), Some(now));
        assert!(d.samples.len() <= 11, "{} samples kept", d.samples.len());
    }
}
