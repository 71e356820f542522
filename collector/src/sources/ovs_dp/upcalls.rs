//! Counters of the datapath poller that must never go backwards, and the pruning of the eBPF
//! maps keyed by port name.
//!
//! - [`UpcallSeries`]: `pinflow_ovs_upcalls_total{datapath,port}` comes from one source per port
//!   for as long as the port lives: the kernel's per-vport upcall stats (Linux ≥ 6.2) when the
//!   port was first seen with them, else the eBPF upcall counts. A poll that lacks the chosen
//!   source leaves the series out for that poll instead of switching it to the other source's
//!   (unrelated) total.
//! - [`StaleKeys`]: which eBPF map keys (port names) belong to ports that are gone, so that dead
//!   taps' keys are deleted (the maps hold 4 096 keys; new ports would go uncounted once full).

use std::collections::{HashMap, HashSet};

/// Where one port's upcall series comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// `OVS_VPORT_ATTR_UPCALL_STATS` (sent + failed).
    Kernel,
    /// The eBPF `ovs_dp_upcall` tracepoint counts.
    Ebpf,
}

/// `(datapath, port)`.
type Key = (String, String);

/// The upcall series per port, each from the one source chosen when the port was first seen.
#[derive(Debug, Default)]
pub(crate) struct UpcallSeries {
    chosen: HashMap<Key, Source>,
}

impl UpcallSeries {
    /// This poll's series from the kernel's per-vport totals (`kernel`, ports that report them)
    /// and the eBPF totals (`ebpf`). Ports in neither are forgotten.
    pub(crate) fn merge(
        &mut self,
        kernel: &[(String, String, u64)],
        ebpf: &[(String, String, u64)],
    ) -> Vec<(String, String, u64)> {
        let k: HashMap<(&str, &str), u64> = kernel
            .iter()
            .map(|(d, p, n)| ((d.as_str(), p.as_str()), *n))
            .collect();
        let e: HashMap<(&str, &str), u64> = ebpf
            .iter()
            .map(|(d, p, n)| ((d.as_str(), p.as_str()), *n))
            .collect();
        self.chosen
            .retain(|(d, p), _| k.contains_key(&(d, p)) || e.contains_key(&(d, p)));
        let mut out = Vec::new();
        for (d, p, _) in kernel.iter().chain(ebpf) {
            let key = (d.as_str(), p.as_str());
            let source =
                *self
                    .chosen
                    .entry((d.clone(), p.clone()))
                    .or_insert(if k.contains_key(&key) {
                        Source::Kernel
                    } else {
                        Source::Ebpf
                    });
            let value = match source {
                Source::Kernel => k.get(&key),
                Source::Ebpf => e.get(&key),
            };
            if let Some(v) = value {
                out.push((d.clone(), p.clone(), *v));
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Decides which eBPF map keys (port names) to delete: those of ports that were datapath vports
/// and are absent from the vport lists in two consecutive polls. One poll is not enough: a port
/// created between the vport dump and the map read would lose its first counts. Names never seen
/// as a vport (a drop on a device outside the datapath, or no device) are never deleted: they
/// would only be counted again from zero.
#[derive(Debug, Default)]
pub(crate) struct StaleKeys {
    known: HashSet<String>,
    absent_last_poll: HashSet<String>,
}

impl StaleKeys {
    /// Ports to delete from the maps, given the names in the maps and the vports of every
    /// datapath (`live`) of a successful poll.
    pub(crate) fn gone_ports(
        &mut self,
        in_map: &HashSet<String>,
        live: &HashSet<String>,
    ) -> Vec<String> {
        self.known.extend(live.iter().cloned());
        let absent: HashSet<String> = in_map
            .iter()
            .filter(|n| self.known.contains(*n) && !live.contains(*n))
            .cloned()
            .collect();
        let mut delete: Vec<String> = absent
            .intersection(&self.absent_last_poll)
            .cloned()
            .collect();
        delete.sort();
        for d in &delete {
            self.known.remove(d);
        }
        self.absent_last_poll = absent
            .into_iter()
            .filter(|n| delete.binary_search(n).is_err())
            .collect();
        // Names neither live nor in the maps need not be remembered.
        self.known
            .retain(|n| live.contains(n) || in_map.contains(n));
        delete
    }

    /// Forgets what was seen (the probe was detached: its maps are gone).
    pub(crate) fn reset(&mut self) {
        self.known.clear();
        self.absent_last_poll.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(r: &[(&str, u64)]) -> Vec<(String, String, u64)> {
        r.iter()
            .map(|(p, n)| ("ovs-system".to_string(), (*p).to_string(), *n))
            .collect()
    }

    fn value(out: &[(String, String, u64)], port: &str) -> Option<u64> {
        out.iter().find(|r| r.1 == port).map(|r| r.2)
    }

    #[test]
    fn a_port_keeps_its_source_and_its_series_never_decreases() {
        let mut s = UpcallSeries::default();
        // Kernel stats for tapA; eBPF counts (different totals: attached later) for both.
        let out = s.merge(&rows(&[("tapA", 100)]), &rows(&[("tapA", 7), ("tapB", 5)]));
        assert_eq!(value(&out, "tapA"), Some(100));
        assert_eq!(value(&out, "tapB"), Some(5));
        // A failed datapath poll: no kernel stats this time. tapA is left out, not switched to
        // eBPF's 8 (which would make the counter drop from 100 to 8).
        let out = s.merge(&[], &rows(&[("tapA", 8), ("tapB", 6)]));
        assert_eq!(value(&out, "tapA"), None);
        assert_eq!(value(&out, "tapB"), Some(6));
        // Kernel stats now reported for tapB too: it stays on eBPF.
        let out = s.merge(
            &rows(&[("tapA", 120), ("tapB", 900)]),
            &rows(&[("tapA", 9), ("tapB", 7)]),
        );
        assert_eq!(value(&out, "tapA"), Some(120));
        assert_eq!(value(&out, "tapB"), Some(7));
        // A series per port, no duplicates.
        assert_eq!(out.len(), 2);
        // A port gone from both sources is forgotten; coming back it chooses afresh.
        let _ = s.merge(&rows(&[("tapA", 130)]), &[]);
        let out = s.merge(&rows(&[("tapA", 131), ("tapB", 3)]), &rows(&[("tapB", 1)]));
        assert_eq!(value(&out, "tapB"), Some(3));
    }

    #[test]
    fn keys_of_ports_gone_for_two_polls_are_deleted_and_new_ports_never() {
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect::<HashSet<_>>();
        let mut k = StaleKeys::default();
        // tapNew is in the map before the vport dump lists it: kept.
        assert!(
            k.gone_ports(&set(&["tapA", "tapNew"]), &set(&["tapA"]))
                .is_empty()
        );
        assert!(
            k.gone_ports(&set(&["tapA", "tapNew"]), &set(&["tapA", "tapNew"]))
                .is_empty()
        );
        // tapA goes: absent once (kept), twice (deleted).
        assert!(
            k.gone_ports(&set(&["tapA", "tapNew"]), &set(&["tapNew"]))
                .is_empty()
        );
        assert_eq!(
            k.gone_ports(&set(&["tapA", "tapNew"]), &set(&["tapNew"])),
            vec!["tapA".to_string()]
        );
        // Deleted: not asked again.
        assert!(
            k.gone_ports(&set(&["tapNew"]), &set(&["tapNew"]))
                .is_empty()
        );
        // A drop counted on a device that never was a vport (or on none: "") stays.
        for _ in 0..3 {
            assert!(
                k.gone_ports(&set(&["", "eth0", "tapNew"]), &set(&["tapNew"]))
                    .is_empty()
            );
        }
    }

    /// Fixture-level churn of 500 taps (the real one needs the kernel-datapath guest and is too
    /// slow for CI): taps come and go, the kernel stats of a poll are sometimes missing, the eBPF
    /// map is only pruned as decided here; no series decreases while its port lives, no series or
    /// map key of a gone tap survives two polls, and the state stays bounded by the live taps.
    #[test]
    fn five_hundred_taps_churning() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut series = UpcallSeries::default();
        let mut stale = StaleKeys::default();
        // Live taps: name -> (kernel total, whether this kernel reports per-vport stats).
        let mut taps: HashMap<String, u64> = HashMap::new();
        // The eBPF map: name -> count (kept until pruned).
        let mut map: HashMap<String, u64> = HashMap::new();
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut gone_since: HashMap<String, u32> = HashMap::new();
        let mut next = 0u32;
        for poll in 0..400u32 {
            while taps.len() < 500 {
                taps.insert(format!("tap{next:08x}"), 0);
                next += 1;
            }
            for _ in 0..rnd(20) {
                let k = rnd(taps.len() as u64) as usize;
                if let Some(name) = taps.keys().nth(k).cloned() {
                    taps.remove(&name);
                    gone_since.insert(name, poll);
                }
            }
            for (name, n) in taps.iter_mut() {
                let up = rnd(5);
                *n += up;
                *map.entry(name.clone()).or_default() += up;
            }
            // Half the taps are on a kernel-stats datapath, the rest counted by eBPF only; one
            // poll in ten loses the kernel stats (a failed dump).
            let kernel: Vec<(String, String, u64)> = if rnd(10) == 0 {
                Vec::new()
            } else {
                taps.iter()
                    .filter(|(name, _)| name.ends_with(['0', '2', '4', '6', '8', 'a', 'c', 'e']))
                    .map(|(name, n)| ("ovs-system".to_string(), name.clone(), *n))
                    .collect()
            };
            let ebpf: Vec<(String, String, u64)> = map
                .iter()
                .map(|(name, n)| ("ovs-system".to_string(), name.clone(), *n))
                .collect();
            let out = series.merge(&kernel, &ebpf);
            for (_, port, n) in &out {
                if taps.contains_key(port) {
                    if let Some(prev) = last.get(port) {
                        assert!(n >= prev, "{port}: {prev} -> {n}");
                    }
                    last.insert(port.clone(), *n);
                } else {
                    // A gone tap's series lasts only until its key is pruned (two polls).
                    assert!(poll - gone_since[port] < 2, "{port} served after it went");
                }
            }
            // Every tap live now is in the map (counted above): what is kept is bounded by it.
            assert!(series.chosen.len() <= map.len());
            let in_map: HashSet<String> = map.keys().cloned().collect();
            let live: HashSet<String> = taps.keys().cloned().collect();
            for name in stale.gone_ports(&in_map, &live) {
                assert!(!taps.contains_key(&name), "live tap {name} pruned");
                map.remove(&name);
                last.remove(&name);
            }
            // Gone taps stay in the map for two polls at most (at most 19 go per poll).
            assert!(
                map.len() <= taps.len() + 40,
                "map {} for {} taps",
                map.len(),
                taps.len()
            );
            assert!(stale.known.len() <= map.len());
        }
        assert!(next > 3000, "churned {next} taps");
    }
}
