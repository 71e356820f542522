//! Supervision of the daemon's long-running threads and tasks: none of them may end or panic
//! silently. Each is started through a [`Supervisor`]; when one stops (returns or panics) the
//! stop is logged at error level and reported on the supervisor's channel, and `serve` ends the
//! process with a non-zero exit, so that a service manager restarts it and `up` alerts fire,
//! instead of one source freezing while `/metrics` keeps serving its last values.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use tokio::sync::mpsc;

/// Why a supervised thread or task stopped.
#[derive(Debug)]
pub(crate) struct Stopped {
    /// Name of the thread or task.
    pub(crate) name: String,
    /// What happened (`panicked: …` or `returned`).
    pub(crate) reason: String,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} stopped: {}", self.name, self.reason)
    }
}

/// Starts supervised threads and tasks; [`Supervisor::stopped`] yields the first one to stop.
pub(crate) struct Supervisor {
    tx: mpsc::UnboundedSender<Stopped>,
    rx: mpsc::UnboundedReceiver<Stopped>,
}

impl Default for Supervisor {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Supervisor { tx, rx }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-text panic payload)".into())
}

fn report(tx: &mpsc::UnboundedSender<Stopped>, name: String, reason: String) {
    tracing::error!(
        name,
        reason,
        "supervised {name} stopped; pinflow exits so that it is restarted"
    );
    // The receiver is gone only while the process is already shutting down.
    let _ = tx.send(Stopped { name, reason });
}

impl Supervisor {
    /// Runs `f` on a new OS thread named `name`; its return or panic is reported.
    pub(crate) fn thread<F>(&self, name: &str, f: F) -> std::io::Result<()>
    where
        F: FnOnce() + Send + 'static,
    {
        let tx = self.tx.clone();
        let n = name.to_string();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let reason = match std::panic::catch_unwind(AssertUnwindSafe(f)) {
                    Ok(()) => "returned".to_string(),
                    Err(p) => format!("panicked: {}", panic_message(p.as_ref())),
                };
                report(&tx, n, reason);
            })?;
        Ok(())
    }

    /// Runs `fut` on a new OS thread named `name`, on an async runtime of its own (for a
    /// pipeline whose work per event is CPU-bound, e.g. indexing a 100 000-flow table: it must
    /// not hold up the runtime that answers scrapes); its end, panic or a runtime that cannot be
    /// built is reported.
    pub(crate) fn runtime_thread<F>(&self, name: &str, fut: F) -> std::io::Result<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.thread(name, move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(fut),
                // Reported as this thread's end, with the reason in the log.
                Err(e) => tracing::error!("cannot start an async runtime: {e}"),
            }
        })
    }

    /// Spawns `fut` on the runtime as task `name`; its end or panic is reported.
    pub(crate) fn task<F>(&self, name: &str, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let tx = self.tx.clone();
        let n = name.to_string();
        let handle = tokio::spawn(fut);
        tokio::spawn(async move {
            let reason = match handle.await {
                Ok(()) => "returned".to_string(),
                Err(e) if e.is_panic() => {
                    format!("panicked: {}", panic_message(e.into_panic().as_ref()))
                }
                Err(e) => format!("cancelled: {e}"),
            };
            report(&tx, n, reason);
        });
    }

    /// Waits until a supervised thread or task stops.
    pub(crate) async fn stopped(&mut self) -> Stopped {
        match self.rx.recv().await {
            Some(s) => s,
            // Unreachable while `self` holds a sender; never panic.
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_thread_is_reported_with_its_message() {
        let mut s = Supervisor::default();
        s.thread("t1", || panic!("boom")).unwrap_or_default();
        let stop = s.stopped().await;
        assert_eq!(stop.name, "t1");
        assert_eq!(stop.reason, "panicked: boom");
    }

    #[tokio::test]
    async fn a_runtime_thread_runs_async_work_off_the_caller_and_its_panic_is_reported() {
        let mut s = Supervisor::default();
        let caller = std::thread::current().id();
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.runtime_thread("rt", async move {
            // Timers and spawned tasks work on the thread's own runtime.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            let inner = tokio::spawn(async { std::thread::current().id() });
            let _ = tx.send(inner.await.ok());
            panic!("late");
        })
        .unwrap_or_default();
        let ran_on = rx.await.ok().flatten();
        assert!(ran_on.is_some_and(|id| id != caller), "{ran_on:?}");
        let stop = s.stopped().await;
        assert_eq!(
            (stop.name.as_str(), stop.reason.as_str()),
            ("rt", "panicked: late")
        );
    }

    #[tokio::test]
    async fn a_task_that_returns_or_panics_is_reported() {
        let mut s = Supervisor::default();
        s.task("quits", async {});
        let stop = s.stopped().await;
        assert_eq!(
            (stop.name.as_str(), stop.reason.as_str()),
            ("quits", "returned")
        );
        s.task("bad", async {
            let v: Vec<u8> = Vec::new();
            let _ = v[usize::from(v.is_empty())];
        });
        let stop = s.stopped().await;
        assert_eq!(stop.name, "bad");
        assert!(
            stop.reason.starts_with("panicked: index out of bounds"),
            "{stop}"
        );
    }
}
