//! Per-source health: up/down with a reason, error count and last collection time.

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
    /// Duration of the last collection.
    pub last_duration: Duration,
}

/// Shared table of source health, keyed by source name (`libvirt`, `procfs`, `sched_bpf`, …).
#[derive(Clone, Default)]
pub struct SourceRegistry(Arc<Mutex<BTreeMap<&'static str, SourceHealth>>>);

impl SourceRegistry {
    /// Marks `source` up with a note, recording the collection time.
    pub fn up(&self, source: &'static str, detail: impl Into<String>, took: Duration) {
        let mut m = self.lock();
        let h = m.entry(source).or_default();
        h.up = true;
        h.detail = detail.into();
        h.last_duration = took;
    }

    /// Marks `source` down with a reason (does not count as an error by itself).
    pub fn down(&self, source: &'static str, reason: impl Into<String>) {
        let mut m = self.lock();
        let h = m.entry(source).or_default();
        h.up = false;
        h.detail = reason.into();
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
