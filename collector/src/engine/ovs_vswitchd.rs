//! The ovs-vswitchd pipeline: every `[ovs_vswitchd] interval_seconds` (default 15 s) one unixctl
//! connection to ovs-vswitchd with one `coverage/show`, `memory/show`, `upcall/show` and
//! `bond/show` round trip each, at the same time one to ovsdb-server with one `coverage/show` and
//! `memory/show` round trip each, and one procfs read of each OVS daemon's process; publishes a
//! [`VswitchdReport`]. Nothing happens per scrape: /metrics serves the last report.
//!
//! The two daemons are two sources (`ovs_unixctl`, `ovsdb_server_unixctl`), each up or down on
//! its own: a missing socket or a daemon that does not answer takes only its own values off
//! /metrics. Both connections run concurrently and the whole ovsdb-server poll is bounded by the
//! call timeout (5 s), so a hung ovsdb-server delays ovs-vswitchd's values by at most 5 s.
//!
//! The values are counters and slowly moving gauges, so a 15 s poll loses nothing a 15–60 s scrape
//! would see. The datapath pipeline takes the flow limit in force from this report (see
//! [`VswitchdReport::flow_limit`]). The source `ovs_unixctl` is down (not counted as an error)
//! while ovs-vswitchd is not running; a restarted ovs-vswitchd is found through its new pid file on
//! the next poll and counted in `pinflow_ovs_process_restarts_total`.
//!
//! Bonds: whether a member is *enabled* (may carry traffic: carrier, LACP, BFD/CFM forwarding and
//! up/down delays all agree) is known only to ovs-vswitchd — OVSDB has no column for it (its
//! `Interface.lacp_current` says only whether the LACP partner is current, and it lags: a partner
//! expires after 3 LACP intervals) — so it comes from `bond/show`, one more round trip in the same
//! poll (a few hundred bytes per bond; empty without bonds). The event-driven parts (LACP
//! partner, BFD, CFM, carriers) come from the OVSDB monitor of the flow pipeline.

use crate::model::health::SourceRegistry;
use crate::model::ovs_vswitchd::{
    OVSDB_SERVER_COVERAGE_EVENTS, OvsdbServerReport, PROCESSES, ProcessHealth, VswitchdReport,
};
use crate::model::state::SharedState;
use crate::sources::HostPaths;
use crate::sources::ovs_vswitchd::{
    self as source, OVSDB_SERVER, OVSDB_SERVER_DAEMON, SOURCE, Unixctl, UnixctlError, parse,
    process,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[ovs_vswitchd]`: ovs-vswitchd's unixctl counters and the OVS daemons' process health.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct VswitchdConfig {
    /// Poll ovs-vswitchd and the OVS processes at all.
    pub(crate) enabled: bool,
    /// Seconds between polls.
    pub(crate) interval_seconds: f64,
}

impl Default for VswitchdConfig {
    fn default() -> Self {
        VswitchdConfig {
            enabled: true,
            interval_seconds: 15.0,
        }
    }
}

/// Bound of one unixctl call (and of the connect).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What one unixctl poll read.
struct Polled {
    pid: u32,
    coverage: Vec<(&'static str, u64)>,
    memory: parse::Memory,
    upcall: Vec<crate::model::ovs_vswitchd::UpcallDatapath>,
    bonds: Vec<crate::model::ovs_vswitchd::BondState>,
}

async fn poll_unixctl(run_dir: &Path, timeout: Duration) -> Result<Polled, UnixctlError> {
    let mut c = Unixctl::connect(run_dir, timeout).await?;
    let bad = |method: &str, detail: String| UnixctlError::Malformed {
        method: method.to_string(),
        detail,
    };
    let coverage = parse::coverage_subset(&c.call("coverage/show", &[]).await?)
        .map_err(|e| bad("coverage/show", e))?;
    let memory = parse::memory(&c.call("memory/show", &[]).await?);
    let upcall =
        parse::upcall(&c.call("upcall/show", &[]).await?).map_err(|e| bad("upcall/show", e))?;
    let bonds = parse::bonds(&c.call("bond/show", &[]).await?).map_err(|e| bad("bond/show", e))?;
    Ok(Polled {
        pid: c.pid,
        coverage,
        memory,
        upcall,
        bonds,
    })
}

/// One poll of ovsdb-server: its pid and what it answered.
async fn poll_ovsdb_server(
    run_dir: &Path,
    timeout: Duration,
) -> Result<(u32, OvsdbServerReport), UnixctlError> {
    let mut c = Unixctl::connect_to(run_dir, OVSDB_SERVER_DAEMON, timeout).await?;
    let bad = |method: &str, detail: String| UnixctlError::Malformed {
        method: method.to_string(),
        detail,
    };
    let coverage = parse::coverage_of(
        &c.call("coverage/show", &[]).await?,
        &OVSDB_SERVER_COVERAGE_EVENTS,
    )
    .map_err(|e| bad("coverage/show", e))?;
    let memory = parse::ovsdb_server_memory(&c.call("memory/show", &[]).await?)
        .map_err(|e| bad("memory/show", e))?;
    Ok((
        c.pid,
        OvsdbServerReport {
            connected: true,
            coverage,
            objects: memory.objects,
            backlog_bytes: memory.backlog_bytes,
        },
    ))
}

/// One collection of the `ovsdb_server_unixctl` source: its health recorded as soon as
/// ovsdb-server answered (or did not), its values (default: not connected) returned.
async fn ovsdb_server_collection(state: &SharedState, run_dir: &Path) -> OvsdbServerReport {
    let collection = state.sources.collect(OVSDB_SERVER.name);
    let polled = tokio::time::timeout(CALL_TIMEOUT, poll_ovsdb_server(run_dir, CALL_TIMEOUT))
        .await
        .unwrap_or_else(|_| {
            Err(UnixctlError::Timeout {
                method: "coverage/show and memory/show".into(),
                timeout: CALL_TIMEOUT,
            })
        });
    match polled {
        Ok((pid, r)) => {
            let n = |k: &str| r.objects.iter().find(|(o, _)| *o == k).map_or(0, |x| x.1);
            collection.ok(format!(
                "ovsdb-server pid {pid}: {} sessions, {} monitors, {} cells",
                n("sessions"),
                n("monitors"),
                n("cells")
            ));
            r
        }
        Err(e) => {
            if !e.is_unavailable() {
                collection.errors(1);
            }
            collection.down(e.to_string());
            OvsdbServerReport::default()
        }
    }
}

/// One OVS daemon as the tracker last saw it.
struct Tracked {
    /// Pid and start time of the run last seen.
    run: Option<(u32, u64)>,
    health: ProcessHealth,
}

/// Follows each OVS daemon's runs (pid and start time) across polls.
#[derive(Default)]
pub(crate) struct ProcessTracker {
    last: Vec<Tracked>,
}

impl ProcessTracker {
    /// Reads both daemons' processes (blocking procfs reads; run off the async thread).
    pub(crate) fn tick(&mut self, proc_root: &Path, run_dir: &Path) -> Vec<ProcessHealth> {
        for name in PROCESSES {
            let sample = source::read_pid(&source::pid_file(run_dir, name))
                .ok()
                .and_then(|pid| process::sample(proc_root, pid, name).ok().flatten());
            let idx = match self.last.iter().position(|t| t.health.process == name) {
                Some(i) => i,
                None => {
                    self.last.push(Tracked {
                        run: None,
                        health: ProcessHealth {
                            process: name,
                            ..Default::default()
                        },
                    });
                    self.last.len() - 1
                }
            };
            let Some(Tracked { run, health: h }) = self.last.get_mut(idx) else {
                continue;
            };
            match sample {
                Some(s) => {
                    let id = (s.pid, s.start_ticks);
                    // A new run after one seen before is a restart (the first run seen is not).
                    if run.is_some_and(|r| r != id) {
                        h.restarts += 1;
                        tracing::info!(process = name, pid = s.pid, "OVS daemon restarted");
                    }
                    *run = Some(id);
                    h.up = true;
                    h.resident_bytes = s.resident_bytes;
                    h.cpu_seconds = s.cpu_seconds;
                    h.threads = s.threads;
                }
                None => {
                    if h.up {
                        tracing::warn!(process = name, "OVS daemon not running");
                    }
                    h.up = false;
                }
            }
        }
        self.last.iter().map(|t| t.health.clone()).collect()
    }
}

/// Runs the pipeline forever (an async task; procfs reads go to the blocking pool).
pub(crate) async fn run(cfg: VswitchdConfig, host: HostPaths, state: SharedState) {
    let interval = Duration::from_secs_f64(cfg.interval_seconds);
    let name = SOURCE.name;
    for src in [name, OVSDB_SERVER.name] {
        state.sources.stale_after(
            src,
            SourceRegistry::bound_for(interval.max(CALL_TIMEOUT * 3)),
        );
    }
    let run_dir: PathBuf = host.ovs_run_dir.clone();
    let proc_root: PathBuf = host.proc_root.clone();
    let mut tracker = Some(ProcessTracker::default());
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let collection = state.sources.collect(name);
        let (polled, ovsdb_server) = tokio::join!(
            poll_unixctl(&run_dir, CALL_TIMEOUT),
            ovsdb_server_collection(&state, &run_dir)
        );
        let processes = match tracker.take() {
            Some(mut t) => {
                let (pr, rd) = (proc_root.clone(), run_dir.clone());
                match tokio::task::spawn_blocking(move || {
                    let p = t.tick(&pr, &rd);
                    (t, p)
                })
                .await
                {
                    Ok((t, p)) => {
                        tracker = Some(t);
                        p
                    }
                    Err(e) => {
                        tracing::warn!("OVS process read failed: {e}");
                        tracker = Some(ProcessTracker::default());
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        };
        let mut report = VswitchdReport {
            processes,
            ..Default::default()
        };
        match polled {
            Ok(p) => {
                collection.ok(format!(
                    "ovs-vswitchd pid {}: {} datapath(s), flow limit {}",
                    p.pid,
                    p.upcall.len(),
                    p.upcall
                        .iter()
                        .map(|d| format!("{} {}", d.name, d.flow_limit))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                report.connected = true;
                report.coverage = p.coverage;
                report.objects = p.memory.objects;
                report.handlers = p.memory.handlers;
                report.revalidators = p.memory.revalidators;
                report.upcall = p.upcall;
                report.bonds = p.bonds;
            }
            Err(e) => {
                if !e.is_unavailable() {
                    collection.errors(1);
                }
                collection.down(e.to_string());
            }
        }
        report.ovsdb_server = ovsdb_server;
        state.vswitchd.set_if_changed(report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Restarts are counted from pid/start-time changes of a real process tree: this test
    /// process stands in for a daemon by its own `comm`, through a pid file it rewrites.
    #[test]
    fn tracker_counts_new_runs_not_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = tempfile::tempdir().unwrap();
        let write = |pid: u32, start: u64| {
            let d = proc_root.path().join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("comm"), "ovs-vswitchd\n").unwrap();
            std::fs::write(
                d.join("stat"),
                format!(
                    "{pid} (ovs-vswitchd) S 1 1 1 0 -1 0 0 0 0 0 100 50 0 0 20 0 3 0 {start} 0 0\n"
                ),
            )
            .unwrap();
            std::fs::write(d.join("status"), "VmRSS:\t 2048 kB\n").unwrap();
            std::fs::write(
                source::pid_file(dir.path(), "ovs-vswitchd"),
                format!("{pid}\n"),
            )
            .unwrap();
        };
        let mut t = ProcessTracker::default();
        let p = t.tick(proc_root.path(), dir.path());
        assert_eq!(p.len(), 2);
        assert!(!p[0].up && !p[1].up);
        write(10, 500);
        let p = t.tick(proc_root.path(), dir.path());
        assert_eq!(
            (p[0].process, p[0].up, p[0].restarts, p[0].threads),
            ("ovs-vswitchd", true, 0, 3)
        );
        assert_eq!(p[0].resident_bytes, 2 << 20);
        let _ = t.tick(proc_root.path(), dir.path());
        assert_eq!(t.tick(proc_root.path(), dir.path())[0].restarts, 0);
        // Down, then a new pid: one restart.
        std::fs::remove_file(source::pid_file(dir.path(), "ovs-vswitchd")).unwrap();
        assert!(!t.tick(proc_root.path(), dir.path())[0].up);
        write(11, 900);
        let p = t.tick(proc_root.path(), dir.path());
        assert_eq!((p[0].up, p[0].restarts), (true, 1));
        // Same pid reused by a new run (start time differs): another.
        write(11, 950);
        assert_eq!(t.tick(proc_root.path(), dir.path())[0].restarts, 2);
        // ovsdb-server never seen.
        assert!(!p[1].up);
    }
}
