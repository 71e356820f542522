//! Datapath health: pure checks over successive [`DatapathReport`]s and eBPF counts.
//!
//! | check | unhealthy when |
//! |---|---|
//! | `flow_limit` | megaflows ≥ `flow_limit_ratio` × the flow limit (ovs-vswitchd's `other_config:flow-limit`, default 200 000) |
//! | `lost_upcalls` | the datapath lost upcalls since the previous poll |
//! | `upcall_storm` | ports whose upcall rate exceeded `storm_upcalls_per_second` in a poll of the last [`STORM_HOLD`] (a storm shorter than a scrape interval still shows on a scrape) |
//! | `drop_local_mac` | megaflows that drop, carried packets, and match a local instance's MAC as Ethernet destination exactly |

use crate::model::datapath::attrs::key;
use crate::model::datapath::{Datapath, DatapathCheck, DatapathHealth, Megaflow};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a port stays in `upcall_storm` after its last poll above the threshold: two
/// scrape intervals of 15 s, so that a burst shorter than one poll is still scraped.
pub(crate) const STORM_HOLD: Duration = Duration::from_secs(30);

/// Thresholds of the datapath checks (from the `[datapath]` config; no defaults of its own, so
/// that they exist in one place).
#[derive(Clone, Debug)]
pub(crate) struct HealthConfig {
    /// The megaflow limit ovs-vswitchd enforces (`other_config:flow-limit`).
    pub(crate) flow_limit: u64,
    /// Fraction of the limit that counts as unhealthy.
    pub(crate) flow_limit_ratio: f64,
    /// Upcalls per second from one port that count as a storm.
    pub(crate) storm_upcalls_per_second: f64,
}

/// Remembers the previous sample to turn counters into rates and deltas.
#[derive(Debug, Default)]
pub(crate) struct HealthTracker {
    lost: HashMap<String, u64>,
    upcalls: HashMap<(String, String), (u64, Instant)>,
    /// Ports above the storm threshold: when they last were, and the rate then.
    storms: HashMap<(String, String), (Instant, f64)>,
    /// When each datapath was last evaluated.
    evaluated: HashMap<String, Instant>,
}

impl HealthTracker {
    /// Evaluates every check. `upcalls` are per (datapath, port) totals (kernel vport stats or
    /// eBPF); `drop_local` holds the findings of [`drop_flows_to_local_macs`] per datapath.
    pub(crate) fn evaluate(
        &mut self,
        cfg: &HealthConfig,
        dps: &[Datapath],
        upcalls: &[(String, String, u64)],
        drop_local: &HashMap<String, Vec<(String, String, u64)>>,
        now: Instant,
    ) -> Vec<DatapathHealth> {
        let mut out = Vec::new();
        for dp in dps {
            let mut h = DatapathHealth {
                datapath: dp.name.clone(),
                ..Default::default()
            };
            let prev = self.lost.insert(dp.name.clone(), dp.lost);
            let lost = prev.map_or(0, |p| dp.lost.saturating_sub(p));
            let previous_poll = self.evaluated.insert(dp.name.clone(), now);
            for (d, port, n) in upcalls.iter().filter(|(d, _, _)| d == &dp.name) {
                let k = (d.clone(), port.clone());
                // A port without upcalls has no count yet (the eBPF map has no entry): one that
                // first shows up after the datapath's previous poll had 0 then. Without this, a
                // burst shorter than a poll on a quiet port was never a storm.
                let before = self
                    .upcalls
                    .insert(k, (*n, now))
                    .or_else(|| previous_poll.map(|t| (0, t)));
                if let Some((pn, pt)) = before {
                    let secs = now.saturating_duration_since(pt).as_secs_f64();
                    if secs > 0.0 {
                        let rate = n.saturating_sub(pn) as f64 / secs;
                        if rate > cfg.storm_upcalls_per_second {
                            self.storms.insert((d.clone(), port.clone()), (now, rate));
                        }
                    }
                }
            }
            self.storms
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < STORM_HOLD);
            let mut storms: Vec<(String, f64)> = self
                .storms
                .iter()
                .filter(|((d, _), _)| d == &dp.name)
                .map(|((_, port), (_, rate))| (port.clone(), *rate))
                .collect();
            storms.sort_by(|a, b| a.0.cmp(&b.0));
            h.storm_ports = storms;
            h.drop_local_macs = drop_local.get(&dp.name).cloned().unwrap_or_default();
            h.counts = DatapathCheck::ALL
                .into_iter()
                .map(|c| (c, count(c, cfg, dp, lost, &h)))
                .collect();
            out.push(h);
        }
        self.lost.retain(|n, _| dps.iter().any(|d| &d.name == n));
        self.upcalls
            .retain(|(n, _), _| dps.iter().any(|d| &d.name == n));
        self.storms
            .retain(|(n, _), _| dps.iter().any(|d| &d.name == n));
        self.evaluated
            .retain(|n, _| dps.iter().any(|d| &d.name == n));
        out
    }
}

/// What `check` finds in one datapath's poll: offending items, 0 when healthy. `lost` is the
/// upcalls lost since the previous poll; `h` holds the storm ports and local-MAC drop flows.
fn count(
    check: DatapathCheck,
    cfg: &HealthConfig,
    dp: &Datapath,
    lost: u64,
    h: &DatapathHealth,
) -> u64 {
    match check {
        DatapathCheck::FlowLimit => {
            u64::from(dp.flows as f64 >= cfg.flow_limit as f64 * cfg.flow_limit_ratio)
        }
        DatapathCheck::LostUpcalls => lost,
        DatapathCheck::UpcallStorm => h.storm_ports.len() as u64,
        DatapathCheck::DropLocalMac => h.drop_local_macs.len() as u64,
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub(crate) fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut m {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

/// Drop megaflows that carried packets and match one of `macs` (MAC → domain) as their exact
/// Ethernet destination: (MAC, domain, packets).
#[cfg(test)]
fn drop_flows_to_local_macs(
    flows: &[Megaflow],
    macs: &HashMap<[u8; 6], String>,
) -> Vec<(String, String, u64)> {
    flows
        .iter()
        .filter_map(|f| drop_flow_to_local_mac(f, macs))
        .collect()
}

/// One megaflow of [`drop_flows_to_local_macs`]: Some((MAC, domain, packets)) when it is one.
pub(crate) fn drop_flow_to_local_mac(
    f: &Megaflow,
    macs: &HashMap<[u8; 6], String>,
) -> Option<(String, String, u64)> {
    if !f.is_drop() || f.packets == 0 || macs.is_empty() {
        return None;
    }
    {
        let k = f.key.iter().find(|a| a.kind == key::ETHERNET)?;
        let exact = f.mask.is_empty()
            || f.mask
                .iter()
                .find(|a| a.kind == key::ETHERNET)
                .and_then(|m| m.value.get(6..12))
                .is_some_and(|d| d.iter().all(|&b| b == 0xff));
        let dst = k.value.get(6..12)?;
        let mut mac = [0u8; 6];
        mac.copy_from_slice(dst);
        let domain = macs.get(&mac).filter(|_| exact)?;
        let text = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        Some((text, domain.clone(), f.packets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::datapath::RawAttr;
    use std::time::Duration;

    fn dp(flows: u64, lost: u64) -> Datapath {
        Datapath {
            name: "ovs-system".into(),
            flows,
            lost,
            ..Default::default()
        }
    }

    fn counts(h: &DatapathHealth) -> Vec<u64> {
        DatapathCheck::ALL.iter().map(|c| h.counts[c]).collect()
    }

    #[test]
    fn flow_limit_lost_and_storms() {
        let cfg = HealthConfig {
            flow_limit: 200_000,
            flow_limit_ratio: 0.9,
            storm_upcalls_per_second: 1_000.0,
        };
        let mut t = HealthTracker::default();
        let t0 = Instant::now();
        let up = |n| vec![("ovs-system".to_string(), "tap1".to_string(), n)];
        let none = HashMap::new();
        let h = t.evaluate(&cfg, &[dp(10, 5)], &up(0), &none, t0);
        assert_eq!(counts(&h[0]), [0, 0, 0, 0], "first sample has no deltas");
        let h = t.evaluate(
            &cfg,
            &[dp(190_000, 7)],
            &up(5_000),
            &none,
            t0 + Duration::from_secs(1),
        );
        assert_eq!(counts(&h[0]), [1, 2, 1, 0]);
        assert_eq!(h[0].storm_ports, vec![("tap1".to_string(), 5_000.0)]);
        // The burst is over, but a scrape in the next STORM_HOLD still sees it.
        let h = t.evaluate(
            &cfg,
            &[dp(10, 7)],
            &up(5_010),
            &none,
            t0 + Duration::from_secs(2),
        );
        assert_eq!(counts(&h[0]), [0, 0, 1, 0]);
        assert_eq!(h[0].storm_ports, vec![("tap1".to_string(), 5_000.0)]);
        let h = t.evaluate(
            &cfg,
            &[dp(10, 7)],
            &up(5_020),
            &none,
            t0 + Duration::from_secs(1) + STORM_HOLD,
        );
        assert_eq!(counts(&h[0]), [0, 0, 0, 0]);
        // A port with no upcalls before (no count at all) that bursts within one poll.
        let burst = vec![("ovs-system".to_string(), "tap2".to_string(), 3_000)];
        let h = t.evaluate(
            &cfg,
            &[dp(10, 7)],
            &burst,
            &none,
            t0 + Duration::from_secs(2) + STORM_HOLD,
        );
        assert_eq!(h[0].storm_ports, vec![("tap2".to_string(), 3_000.0)]);
    }

    #[test]
    fn drop_flow_for_a_local_mac() {
        let mac = parse_mac("fa:16:3e:00:00:01").unwrap();
        let mut eth = vec![0u8; 6];
        eth.extend_from_slice(&mac);
        let mut mask = vec![0u8; 6];
        mask.extend_from_slice(&[0xff; 6]);
        let flow = |actions: Vec<RawAttr>, mask_dst: Vec<u8>, packets| Megaflow {
            key: vec![RawAttr {
                kind: key::ETHERNET,
                value: eth.clone(),
            }],
            mask: vec![RawAttr {
                kind: key::ETHERNET,
                value: mask_dst,
            }],
            actions,
            packets,
            ..Default::default()
        };
        let output = vec![RawAttr {
            kind: 1,
            value: 1u32.to_ne_bytes().to_vec(),
        }];
        let flows = [
            flow(Vec::new(), mask.clone(), 3),
            flow(Vec::new(), vec![0; 12], 3),
            flow(output, mask.clone(), 3),
            flow(Vec::new(), mask, 0),
        ];
        let macs = HashMap::from([(mac, "instance-1".to_string())]);
        assert_eq!(
            drop_flows_to_local_macs(&flows, &macs),
            vec![("fa:16:3e:00:00:01".into(), "instance-1".into(), 3)]
        );
        assert_eq!(parse_mac("fa:16:3e:00:00"), None);
        assert_eq!(parse_mac("fa:16:3e:00:00:01:02"), None);
        assert_eq!(parse_mac("zz:16:3e:00:00:01"), None);
    }
}
