//! Findings in the log: each one once when it appears (warn) and once when it clears (info),
//! under a rate limit, so that an operator reading the log sees what changed and when, and a
//! storm of changes (a flow table rewritten, a host-wide pinning mistake) costs a few lines.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::time::Instant;

/// Lines that may be logged at once after a quiet spell.
const BURST: f64 = 20.0;
/// Lines per second in a sustained storm.
const RATE: f64 = 1.0;

/// Logs the changes between two published lists of findings (the previous report and the new).
pub(crate) struct FindingsLog {
    /// What the findings are (`dirty flow`, `pinning drift`), the log lines' `kind`.
    kind: &'static str,
    tokens: f64,
    refilled: Instant,
    /// Changes not logged for want of tokens, summarised at most once a second.
    suppressed: u64,
    last_summary: Option<Instant>,
}

impl FindingsLog {
    /// A log for findings of `kind`.
    pub(crate) fn new(kind: &'static str) -> Self {
        FindingsLog {
            kind,
            tokens: BURST,
            refilled: Instant::now(),
            suppressed: 0,
            last_summary: None,
        }
    }

    /// Logs every finding of `new` that `old` lacks (appeared) and of `old` that `new` lacks
    /// (cleared). `identity` says which fields make a finding the same one; `describe` is the
    /// line's text.
    pub(crate) fn changes<T, K: Hash>(
        &mut self,
        old: &[T],
        new: &[T],
        identity: impl Fn(&T) -> K,
        describe: impl Fn(&T) -> String,
    ) {
        let hash = |f: &T| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            identity(f).hash(&mut h);
            h.finish()
        };
        let before: HashSet<u64> = old.iter().map(hash).collect();
        let after: HashSet<u64> = new.iter().map(hash).collect();
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * RATE).min(BURST);
        self.refilled = now;
        for f in new.iter().filter(|f| !before.contains(&hash(f))) {
            if self.take() {
                tracing::warn!(kind = self.kind, finding = %describe(f), "finding appeared");
            } else {
                self.suppressed += 1;
            }
        }
        for f in old.iter().filter(|f| !after.contains(&hash(f))) {
            if self.take() {
                tracing::info!(kind = self.kind, finding = %describe(f), "finding cleared");
            } else {
                self.suppressed += 1;
            }
        }
        // The summary has its own pace (one a second at most), so a storm's end is summarised
        // even when the line budget is spent; what is left over goes into the next one.
        let summary_due = self
            .last_summary
            .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1));
        if self.suppressed > 0 && summary_due {
            self.last_summary = Some(now);
            tracing::warn!(
                kind = self.kind,
                not_logged = self.suppressed,
                total = new.len(),
                "more findings appeared or cleared than the log rate allows (see /api/v1)"
            );
            self.suppressed = 0;
        }
    }

    fn take(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_is_bounded_and_summarised() {
        let mut log = FindingsLog::new("test");
        let old: Vec<u32> = Vec::new();
        let new: Vec<u32> = (0..100).collect();
        log.changes(&old, &new, |x| *x, |x| x.to_string());
        // 20 lines logged, the other 80 changes in one summary line.
        assert_eq!(log.suppressed, 0);
        assert!(log.tokens < 1.0);
        // Right after: the budget is spent and the summary not due yet; the count waits.
        log.changes(&new, &old, |x| *x, |x| x.to_string());
        assert_eq!(log.suppressed, 100);
        // A second later, even without a change: summarised, and the count starts over.
        log.refilled -= std::time::Duration::from_secs(2);
        log.last_summary = log
            .last_summary
            .map(|t| t - std::time::Duration::from_secs(2));
        log.changes(&old, &old, |x| *x, |x| x.to_string());
        assert_eq!(log.suppressed, 0);
    }
}
