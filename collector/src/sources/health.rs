//! Per-source health: up/down with a reason, error count and last collection time. State changes
//! are logged here, once each (down with the reason, back up), never once per retry.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Health of one source, as exported in `pinflow_source_*`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceHealth {
    /// Whether the source delivered data on its last attempt.
    pub up: bool,
    /// Why it is down (or a note on how it runs, e.g. the eBPF attach mode), for logs and `pinflow check`.
    pub detail: String,
    /// Errors since start.
    pub errors_total: u64,
    /// Duration of the last collection (in `/api/v1/sources` as `last_duration_seconds`).
    #[serde(rename = "last_duration_seconds", serialize_with = "seconds")]
    pub last_duration: Duration,
    /// Since when the source is down (for the "back up" log line).
    #[serde(skip)]
    down_since: Option<std::time::Instant>,
}

/// A duration as seconds (a JSON number), as Prometheus and operators read durations.
fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Shared table of source health, keyed by source name (`libvirt`, `procfs`, `sched_bpf`, …).
#[derive(Clone, Default)]
pub struct SourceRegistry(Arc<Mutex<BTreeMap<&'static str, SourceHealth>>>);

impl SourceRegistry {
    /// Marks `source` up with a note, recording the collection time. Logs when the source comes
    /// up (first time: info; back after being down: info with how long it was down).
    pub fn up(&self, source: &'static str, detail: impl Into<String>, took: Duration) {
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
    }

    /// Marks `source` down with a reason (does not count as an error by itself). Logs a warning
    /// when the source goes down, not on every retry while it stays down (a new reason while
    /// down is logged at debug level).
    pub fn down(&self, source: &'static str, reason: impl Into<String>) {
        let mut m = self.lock();
        let known = m.contains_key(source);
        let h = m.entry(source).or_default();
        let reason = reason.into();
        if h.up || !known {
            tracing::warn!(source, reason = %reason, "source down");
            h.down_since = Some(std::time::Instant::now());
        } else if h.detail != reason {
            tracing::debug!(source, reason = %reason, "source still down");
        }
        h.up = false;
        h.detail = reason;
    }

    /// Marks `source` down while it is still starting (e.g. connecting for the first time):
    /// like [`down`](Self::down), but not logged as a state change unless it was up.
    pub fn starting(&self, source: &'static str, note: impl Into<String>) {
        let up = self.lock().get(source).is_some_and(|h| h.up);
        if up {
            return self.down(source, note);
        }
        let mut m = self.lock();
        let h = m.entry(source).or_default();
        h.detail = note.into();
    }

    /// Counts `n` errors of `source` without changing its up state.
    pub fn errors(&self, source: &'static str, n: u64) {
        self.lock().entry(source).or_default().errors_total += n;
    }

    /// A copy of the table.
    pub fn snapshot(&self) -> BTreeMap<&'static str, SourceHealth> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, SourceHealth>> {
        // A poisoned lock only means a panic elsewhere; the table itself is always consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
