//! pinflow's own health: per-source state and the kernel-side cost of its eBPF programs.
//!
//! Per-source health: up/down with a reason, error count, last collection time, the time of the
//! last success, and staleness: a polled source whose data is older than its bound reports down
//! (naming why) even while its own thread is wedged and cannot say so itself. State changes are
//! logged here, once each (down with the reason, back up), never once per retry.

use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Kernel-side cost of one eBPF program (from the kernel's BPF stats).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct BpfProgramCost {
    /// Program name.
    pub(crate) program: String,
    /// Total run time, ns.
    pub(crate) run_time_ns: u64,
    /// Number of runs.
    pub(crate) run_count: u64,
}

/// Health of one source, as exported in `pinflow_source_*`.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct SourceHealth {
    /// Whether the source delivered data on its last attempt and that data is not stale.
    pub(crate) up: bool,
    /// Why it is down (or a note on how it runs, e.g. the eBPF attach mode), for logs and `pinflow check`.
    pub(crate) detail: String,
    /// Errors since start.
    pub(crate) errors_total: u64,
    /// Duration of the last collection, in seconds.
    #[serde(rename = "last_duration_seconds", serialize_with = "seconds")]
    pub(crate) last_duration: Duration,
    /// Wall-clock time of the last successful collection, Unix seconds (`None`: never).
    #[serde(rename = "last_success_timestamp_seconds")]
    pub(crate) last_success_unix: Option<f64>,
    /// Data older than this (or than three of its last collections, when that is longer) reports
    /// the source down (polled sources only), in seconds.
    #[serde(rename = "stale_after_seconds", serialize_with = "opt_seconds")]
    pub(crate) stale_after: Option<Duration>,
    /// Whether the source is down because its data went stale (its collector is wedged or gone).
    pub(crate) stale: bool,
    #[serde(skip)]
    last_success: Option<Instant>,
    #[serde(skip)]
    busy_since: Option<Instant>,
    /// Since when the source is down (for the "back up" log line).
    #[serde(skip)]
    down_since: Option<Instant>,
}

fn unix_now() -> Option<f64> {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64())
}

fn seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn opt_seconds<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

impl SourceHealth {
    /// This health as seen at `now`: an up source whose last success is older than its bound is
    /// reported down, with a reason naming how long its collection has been running or silent.
    fn at(&self, now: Instant) -> SourceHealth {
        let mut h = self.clone();
        let Some(bound) = h.stale_after else {
            return h;
        };
        // A source that is slow but working (a big host) is not wedged: the bound grows to three
        // of its last collections.
        let bound = bound.max(h.last_duration.saturating_mul(3));
        let since_success = h.last_success.map(|t| now.saturating_duration_since(t));
        let busy_too_long = h
            .busy_since
            .is_some_and(|b| now.saturating_duration_since(b) > bound);
        let silent_too_long = h.up && since_success.is_some_and(|d| d > bound);
        if !busy_too_long && !silent_too_long {
            return h;
        }
        h.up = false;
        h.stale = true;
        h.detail = match h.busy_since {
            Some(b) => format!(
                "wedged: collection running for {:.1} s (stale after {:.1} s)",
                now.saturating_duration_since(b).as_secs_f64(),
                bound.as_secs_f64()
            ),
            None => format!(
                "stale: last success {:.1} s ago (stale after {:.1} s)",
                since_success.unwrap_or(bound).as_secs_f64(),
                bound.as_secs_f64()
            ),
        };
        h
    }
}

/// Shared table of source health, keyed by source name (`libvirt`, `procfs`, `sched_bpf`, …).
#[derive(Clone, Default)]
pub(crate) struct SourceRegistry(Arc<Mutex<BTreeMap<&'static str, SourceHealth>>>);

impl SourceRegistry {
    /// The staleness bound of a source polled every `interval`: three intervals plus a second.
    pub(crate) fn bound_for(interval: Duration) -> Duration {
        interval
            .saturating_mul(3)
            .saturating_add(Duration::from_secs(1))
    }

    /// Refreshes the time of success of an up source whose data is still current without a new
    /// read (an idle poller with nothing to read); a down source stays down.
    pub(crate) fn alive(&self, source: &'static str) {
        let mut m = self.lock();
        if let Some(h) = m.get_mut(source).filter(|h| h.up) {
            h.last_success = Some(Instant::now());
            h.last_success_unix = unix_now();
        }
    }

    /// Marks `source` up with a note, recording the collection time and the time of success. Logs
    /// when the source comes up (first time: info; back after being down: info with how long it
    /// was down).
    pub(crate) fn up(&self, source: &'static str, detail: impl Into<String>, took: Duration) {
        let mut m = self.lock();
        let known = m.contains_key(source);
        let h = m.entry(source).or_default();
        let detail = detail.into();
        if !h.up {
            match h.down_since.take() {
                Some(t) if known => tracing::info!(
                    source,
                    detail = %detail,
                    down_seconds = t.elapsed().as_secs(),
                    "source back up"
                ),
                _ => tracing::info!(source, detail = %detail, "source up"),
            }
        }
        h.up = true;
        h.detail = detail;
        h.last_duration = took;
        h.last_success = Some(Instant::now());
        h.busy_since = None;
        h.last_success_unix = unix_now();
    }

    /// Marks `source` down with a reason (does not count as an error by itself). Logs a warning
    /// when the source goes down, not on every retry while it stays down (a new reason while
    /// down is logged at debug level).
    pub(crate) fn down(&self, source: &'static str, reason: impl Into<String>) {
        let mut m = self.lock();
        let known = m.contains_key(source);
        let h = m.entry(source).or_default();
        let reason = reason.into();
        if h.up || !known {
            tracing::warn!(source, reason = %reason, "source down");
            h.down_since = Some(Instant::now());
        } else if h.detail != reason {
            tracing::debug!(source, reason = %reason, "source still down");
        }
        h.up = false;
        h.detail = reason;
        h.busy_since = None;
    }

    /// Marks `source` down while it is still starting (e.g. connecting for the first time):
    /// like [`down`](Self::down), but not logged as a state change unless it was up.
    pub(crate) fn starting(&self, source: &'static str, note: impl Into<String>) {
        let up = self.lock().get(source).is_some_and(|h| h.up);
        if up {
            return self.down(source, note);
        }
        let mut m = self.lock();
        let h = m.entry(source).or_default();
        h.detail = note.into();
    }

    /// Records that a collection of `source` started (a wedged one is then named as such).
    pub(crate) fn begin(&self, source: &'static str) {
        self.lock().entry(source).or_default().busy_since = Some(Instant::now());
    }

    /// Declares that `source` is polled: data older than `bound` reports it down.
    pub(crate) fn stale_after(&self, source: &'static str, bound: Duration) {
        self.lock().entry(source).or_default().stale_after = Some(bound);
    }

    /// Counts `n` errors of `source` without changing its up state.
    pub(crate) fn errors(&self, source: &'static str, n: u64) {
        self.lock().entry(source).or_default().errors_total += n;
    }

    /// A copy of the table as it stands now (stale sources reported down).
    pub(crate) fn snapshot(&self) -> BTreeMap<&'static str, SourceHealth> {
        let now = Instant::now();
        self.lock().iter().map(|(k, h)| (*k, h.at(now))).collect()
    }

    /// Sources whose data went stale or whose collection hangs, with the reason (for `/healthz`).
    pub(crate) fn stale(&self) -> Vec<(&'static str, String)> {
        self.snapshot()
            .into_iter()
            .filter(|(_, h)| h.stale)
            .map(|(k, h)| (k, h.detail))
            .collect()
    }

    /// Starts one collection of `source`: while it runs past the source's staleness bound the
    /// source reads as wedged, and the returned guard records how it ended (time taken, up or
    /// down, errors). A guard dropped without an outcome leaves the state as it was.
    pub(crate) fn collect(&self, source: &'static str) -> Collection<'_> {
        self.begin(source);
        Collection {
            registry: self,
            source,
            started: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, SourceHealth>> {
        // A poisoned lock only means a panic elsewhere; the table itself is always consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One collection of a source in progress (see [`SourceRegistry::collect`]).
#[must_use = "a collection records its outcome with ok() or down()"]
pub(crate) struct Collection<'a> {
    registry: &'a SourceRegistry,
    source: &'static str,
    started: Instant,
}

impl Collection<'_> {
    /// Counts `n` errors of this collection (the source may still be up: a file that could not
    /// be read among many that could).
    pub(crate) fn errors(&self, n: u64) {
        if n > 0 {
            self.registry.errors(self.source, n);
        }
    }

    /// The collection delivered data: the source is up, with `detail` (logged if it was down).
    pub(crate) fn ok(self, detail: impl Into<String>) {
        self.registry
            .up(self.source, detail, self.started.elapsed());
    }

    /// The collection delivered nothing: the source is down for `reason` (logged once when it
    /// goes down, not on every retry).
    pub(crate) fn down(self, reason: impl Into<String>) {
        self.registry.down(self.source, reason);
    }
}

impl Drop for Collection<'_> {
    fn drop(&mut self) {
        // No outcome recorded (ok/down consume the guard after clearing it): not wedged any more.
        if let Some(h) = self.registry.lock().get_mut(self.source) {
            h.busy_since = None;
        }
    }
}

/// What `pinflow check` found for one source (or one bridge of `openflow`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct SourceCheck {
    /// Source name as in `pinflow_source_up{source}`.
    pub(crate) source: &'static str,
    /// The bridge, for `openflow` (one check per bridge).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bridge: Option<String>,
    /// `up`, `down` (enabled but cannot run: `pinflow check` exits 1) or `off` (switched off by
    /// a flag or the config).
    pub(crate) state: CheckState,
    /// What was found, or why it is down or off.
    pub(crate) detail: String,
    /// What it could not read although it runs (unreadable files), one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) problems: Vec<String>,
}

/// The state of one checked source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CheckState {
    /// It runs.
    Up,
    /// It is enabled but cannot run.
    Down,
    /// Switched off (`--no-collector.*`, or the config).
    Off,
}

impl CheckState {
    /// The `STATE` column.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CheckState::Up => "up",
            CheckState::Down => "down",
            CheckState::Off => "off",
        }
    }
}

/// The whole `pinflow check` report (`--json` prints it as is).
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct CheckReport {
    /// The config file (`None`: the defaults).
    pub(crate) config: Option<String>,
    /// Why the config is invalid (file, line and key), if it is; sources are not checked then.
    pub(crate) config_error: Option<String>,
    /// One entry per source, in `pinflow check` order.
    pub(crate) sources: Vec<SourceCheck>,
}

impl CheckReport {
    /// The exit status: 2 for an invalid config, 1 when a source that is on is down, else 0.
    pub(crate) fn exit_code(&self) -> u8 {
        if self.config_error.is_some() {
            2
        } else if self.sources.iter().any(|c| c.state == CheckState::Down) {
            1
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_silent_past_its_bound_reports_down_and_why() {
        let r = SourceRegistry::default();
        r.stale_after("procfs", Duration::from_millis(50));
        r.up("procfs", "", Duration::from_millis(3));
        r.up("ovsdb", "", Duration::ZERO);
        assert!(r.snapshot()["procfs"].up);
        assert!(r.stale().is_empty());
        r.begin("procfs");
        std::thread::sleep(Duration::from_millis(80));
        let s = r.snapshot();
        assert!(!s["procfs"].up);
        assert!(
            s["procfs"]
                .detail
                .starts_with("wedged: collection running for")
        );
        // A slow collection raises the bound to three of it.
        r.up("procfs", "", Duration::from_millis(40));
        r.begin("procfs");
        let began = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(80));
        let up = r.snapshot()["procfs"].up;
        // On a loaded machine the sleep may overrun the raised bound (120 ms): only a snapshot
        // taken within it must say up.
        if began.elapsed() < Duration::from_millis(115) {
            assert!(up, "within three times the slow collection's duration");
        }
        std::thread::sleep(Duration::from_millis(60));
        assert!(!r.snapshot()["procfs"].up);
        // A source without a bound (event-driven) never goes stale by age.
        assert!(s["ovsdb"].up);
        assert_eq!(r.stale().len(), 1);
        // The next success makes it fresh again.
        r.up("procfs", "", Duration::ZERO);
        assert!(r.snapshot()["procfs"].up);
        assert!(r.stale().is_empty());
    }

    #[test]
    fn api_durations_are_seconds() {
        let r = SourceRegistry::default();
        r.up("procfs", "", Duration::from_micros(85_470));
        let v = serde_json::to_value(r.snapshot()).unwrap_or_default();
        assert_eq!(v["procfs"]["last_duration_seconds"], 0.08547);
        assert!(v["procfs"]["last_success_timestamp_seconds"].as_f64() > Some(1.7e9));
        assert!(v["procfs"].get("last_duration").is_none());
    }
}
