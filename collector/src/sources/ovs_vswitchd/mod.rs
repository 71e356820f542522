//! The OVS daemons' own state, read natively: their unixctl JSON-RPC sockets (what `ovs-appctl`
//! talks to) — ovs-vswitchd's for `coverage/show`, `memory/show`, `upcall/show` and `bond/show`,
//! ovsdb-server's for its `coverage/show` and `memory/show` ([`OVSDB_SERVER`]) — and procfs for
//! the health of their processes ([`process`]). No `ovs-appctl` process is ever run.
//!
//! The unixctl protocol is JSON-RPC 1.0 over a unix stream socket,
//! `<ovs-run-dir>/<daemon>.<pid>.ctl` with the pid from `<ovs-run-dir>/<daemon>.pid`: a
//! request `{"method": COMMAND, "params": [ARG, …], "id": N}`, a reply
//! `{"id": N, "result": TEXT, "error": null}` or `{"id": N, "result": null, "error": TEXT}`. Messages
//! are not delimited (the stream is a sequence of JSON objects), so replies are split with the
//! OVSDB source's [`JsonFramer`], which also bounds the bytes buffered. The client is
//! hand-written: no maintained Rust crate speaks OVS's unixctl (OVSDB clients speak RFC 7047 only),
//! and the protocol is a few lines on top of `serde_json` and the framer already here.
//!
//! I/O is non-blocking tokio on the async thread, as in [`crate::sources::ovsdb`] (the pid file
//! through `tokio::fs`, i.e. the blocking pool); every call is bounded by a timeout, every reply by
//! [`MAX_REPLY_BYTES`], and each poll opens a fresh connection, so a restarted ovs-vswitchd (a new
//! pid file and socket) is simply found on the next poll. The replies are human-readable text;
//! [`parse`] turns the three commands' text into numbers and is tolerant of unknown lines.

pub(crate) mod parse;
pub(crate) mod process;

use crate::sources::ovsdb::{JsonFramer, OvsdbError};
use crate::sources::{CanRun, PROBE_TIMEOUT, SourceDef, block_on};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The daemon behind [`SOURCE`].
pub(crate) const VSWITCHD: &str = "ovs-vswitchd";
/// The daemon behind [`OVSDB_SERVER`].
pub(crate) const OVSDB_SERVER_DAEMON: &str = "ovsdb-server";

/// ovs-vswitchd's control socket, as a source in `pinflow_source_*` metrics.
pub(crate) const SOURCE: SourceDef = SourceDef {
    name: "ovs_unixctl",
    collector: "datapath",
    can_run: |host| probe(host, VSWITCHD),
};

/// ovsdb-server's control socket, as a source in `pinflow_source_*` metrics (polled with
/// [`SOURCE`], but up and down on its own: one daemon's trouble does not hide the other's values).
pub(crate) const OVSDB_SERVER: SourceDef = SourceDef {
    name: "ovsdb_server_unixctl",
    collector: "datapath",
    can_run: |host| probe(host, OVSDB_SERVER_DAEMON),
};

/// `pinflow check`'s probe: `version` over the daemon's control socket.
fn probe(host: &crate::sources::HostPaths, daemon: &'static str) -> Vec<CanRun> {
    let dir = host.ovs_run_dir.clone();
    CanRun::of(
        block_on(async move {
            let mut c = Unixctl::connect_to(&dir, daemon, PROBE_TIMEOUT).await?;
            let v = c.call("version", &[]).await?;
            Ok::<_, UnixctlError>(format!(
                "{}: {}",
                c.path.display(),
                v.lines().next().unwrap_or_default().trim()
            ))
        })
        .and_then(|r| r.map_err(|e| e.to_string())),
    )
}

/// Largest reply accepted (`coverage/show` is ~20 KiB, `upcall/show` grows with revalidators).
pub(crate) const MAX_REPLY_BYTES: usize = 1 << 20;

/// Errors of the unixctl client. None is fatal: the next poll tries again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnixctlError {
    /// The pid file is missing or unreadable (the daemon is not running here).
    #[error("no pid file {path}: {source}")]
    PidFile {
        /// Pid file path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The pid file does not hold a pid.
    #[error("pid file {path} holds no pid: {content:?}")]
    BadPid {
        /// Pid file path.
        path: PathBuf,
        /// What it holds (trimmed, at most 32 bytes).
        content: String,
    },
    /// The control socket could not be connected.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon closed the connection before replying.
    #[error("the daemon closed the connection ({pending} bytes of a reply pending)")]
    Closed {
        /// Bytes of an incomplete reply buffered.
        pending: usize,
    },
    /// No reply within the timeout.
    #[error("no reply to {method} within {timeout:?}")]
    Timeout {
        /// The command.
        method: String,
        /// The bound.
        timeout: Duration,
    },
    /// The byte stream is not JSON, or a reply exceeded [`MAX_REPLY_BYTES`].
    #[error("{0}")]
    Framing(#[from] OvsdbError),
    /// The daemon answered with an error (an unknown command, bad arguments).
    #[error("{method} failed: {error}")]
    Rpc {
        /// The command.
        method: String,
        /// The daemon's error text.
        error: String,
    },
    /// The reply does not have the shape of a unixctl reply.
    #[error("malformed reply to {method}: {detail}")]
    Malformed {
        /// The command.
        method: String,
        /// What was wrong.
        detail: String,
    },
}

impl UnixctlError {
    /// Whether the error means "the daemon is not running" rather than a fault of a live daemon
    /// (not counted in `pinflow_source_errors_total`).
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(
            self,
            UnixctlError::PidFile { .. } | UnixctlError::Connect { .. }
        )
    }
}

/// `<run_dir>/<daemon>.pid`.
pub(crate) fn pid_file(run_dir: &Path, daemon: &str) -> PathBuf {
    run_dir.join(format!("{daemon}.pid"))
}

/// Reads a daemon's pid file (an OVS pid file holds the pid and a newline); blocking, for the
/// procfs reads that run on the blocking pool.
pub(crate) fn read_pid(path: &Path) -> Result<u32, UnixctlError> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64).read_to_string(&mut text))
        .map_err(|source| UnixctlError::PidFile {
            path: path.to_path_buf(),
            source,
        })?;
    parse_pid(path, &text)
}

/// [`read_pid`] without blocking the async thread (tokio's file I/O).
async fn read_pid_async(path: &Path) -> Result<u32, UnixctlError> {
    let mut text = String::new();
    let read = async {
        let f = tokio::fs::File::open(path).await?;
        f.take(64).read_to_string(&mut text).await
    };
    read.await.map_err(|source| UnixctlError::PidFile {
        path: path.to_path_buf(),
        source,
    })?;
    parse_pid(path, &text)
}

fn parse_pid(path: &Path, text: &str) -> Result<u32, UnixctlError> {
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| UnixctlError::BadPid {
            path: path.to_path_buf(),
            content: text.trim().chars().take(32).collect(),
        })
}

/// `<run_dir>/<daemon>.<pid>.ctl` for the pid in `<run_dir>/<daemon>.pid`.
pub(crate) async fn control_socket(
    run_dir: &Path,
    daemon: &str,
) -> Result<(u32, PathBuf), UnixctlError> {
    let pid = read_pid_async(&pid_file(run_dir, daemon)).await?;
    Ok((pid, run_dir.join(format!("{daemon}.{pid}.ctl"))))
}

/// One connection to an OVS daemon's control socket; several calls may use it in turn.
pub(crate) struct Unixctl {
    stream: UnixStream,
    framer: JsonFramer,
    next_id: u64,
    timeout: Duration,
    /// The socket connected.
    pub(crate) path: PathBuf,
    /// The daemon's pid (from its pid file).
    pub(crate) pid: u32,
}

impl Unixctl {
    /// Connects to the ovs-vswitchd whose pid file is in `run_dir`; every later call is bounded
    /// by `timeout`.
    pub(crate) async fn connect(
        run_dir: &Path,
        timeout: Duration,
    ) -> Result<Unixctl, UnixctlError> {
        Unixctl::connect_to(run_dir, VSWITCHD, timeout).await
    }

    /// Connects to `daemon` (`ovs-vswitchd`, `ovsdb-server`) whose pid file is in `run_dir`;
    /// every later call is bounded by `timeout`.
    pub(crate) async fn connect_to(
        run_dir: &Path,
        daemon: &str,
        timeout: Duration,
    ) -> Result<Unixctl, UnixctlError> {
        let (pid, path) = control_socket(run_dir, daemon).await?;
        let stream = match tokio::time::timeout(timeout, UnixStream::connect(&path)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(UnixctlError::Connect { path, source }),
            Err(_) => {
                return Err(UnixctlError::Timeout {
                    method: "connect".into(),
                    timeout,
                });
            }
        };
        Ok(Unixctl {
            stream,
            framer: JsonFramer::new(MAX_REPLY_BYTES),
            next_id: 0,
            timeout,
            path,
            pid,
        })
    }

    /// Runs `method` with `params` and returns its text result.
    pub(crate) async fn call(
        &mut self,
        method: &str,
        params: &[&str],
    ) -> Result<String, UnixctlError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.call_unbounded(method, params)).await {
            Ok(r) => r,
            Err(_) => Err(UnixctlError::Timeout {
                method: method.to_string(),
                timeout,
            }),
        }
    }

    async fn call_unbounded(
        &mut self,
        method: &str,
        params: &[&str],
    ) -> Result<String, UnixctlError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"method": method, "params": params, "id": id});
        self.stream.write_all(req.to_string().as_bytes()).await?;
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            while let Some(msg) = self.framer.next_message()? {
                if msg.get("id") == Some(&json!(id)) {
                    return reply_text(method, &msg);
                }
                // Anything else (a reply to an abandoned call) is skipped.
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(UnixctlError::Closed {
                    pending: self.framer.buffered(),
                });
            }
            self.framer.push(chunk.get(..n).unwrap_or_default())?;
        }
    }
}

/// The text of a unixctl reply, or its error.
pub(crate) fn reply_text(method: &str, msg: &Value) -> Result<String, UnixctlError> {
    let malformed = |detail: &str| UnixctlError::Malformed {
        method: method.to_string(),
        detail: detail.to_string(),
    };
    let obj = msg.as_object().ok_or_else(|| malformed("not an object"))?;
    match obj.get("error") {
        Some(Value::Null) | None => {}
        Some(e) => {
            return Err(UnixctlError::Rpc {
                method: method.to_string(),
                error: e
                    .as_str()
                    .map_or_else(|| e.to_string(), |s| s.trim().to_string()),
            });
        }
    }
    match obj.get("result") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(malformed("result is not a string")),
        None => Err(malformed("neither result nor error")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_errors() {
        assert_eq!(
            reply_text("x", &json!({"id": 0, "result": "ok\n", "error": null})).unwrap(),
            "ok\n"
        );
        assert!(matches!(
            reply_text("x", &json!({"id": 0, "result": null, "error": "\"x\" is not a valid command\n"})),
            Err(UnixctlError::Rpc { error, .. }) if error == "\"x\" is not a valid command"
        ));
        for bad in [json!([1]), json!({"id": 0}), json!({"id": 0, "result": 5})] {
            assert!(
                matches!(reply_text("x", &bad), Err(UnixctlError::Malformed { .. })),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn pid_files() {
        let dir = tempfile::tempdir().unwrap();
        let e = control_socket(dir.path(), VSWITCHD).await.unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        std::fs::write(pid_file(dir.path(), "ovs-vswitchd"), "garbage\n").unwrap();
        assert!(matches!(
            control_socket(dir.path(), VSWITCHD).await,
            Err(UnixctlError::BadPid { .. })
        ));
        assert!(matches!(
            read_pid(&pid_file(dir.path(), "ovs-vswitchd")),
            Err(UnixctlError::BadPid { .. })
        ));
        std::fs::write(pid_file(dir.path(), "ovs-vswitchd"), "4242\n").unwrap();
        assert_eq!(
            read_pid(&pid_file(dir.path(), "ovs-vswitchd")).unwrap(),
            4242
        );
        let (pid, path) = control_socket(dir.path(), VSWITCHD).await.unwrap();
        assert_eq!(
            (pid, path),
            (4242, dir.path().join("ovs-vswitchd.4242.ctl"))
        );
        std::fs::write(pid_file(dir.path(), OVSDB_SERVER_DAEMON), "17\n").unwrap();
        let (pid, path) = control_socket(dir.path(), OVSDB_SERVER_DAEMON)
            .await
            .unwrap();
        assert_eq!((pid, path), (17, dir.path().join("ovsdb-server.17.ctl")));
    }

    /// A fake ovs-vswitchd: two calls on one connection, a reply split across writes, an error
    /// reply, an oversized reply and a silent server.
    #[tokio::test]
    async fn fake_server_calls_errors_bounds_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(pid_file(dir.path(), "ovs-vswitchd"), "7\n").unwrap();
        let listener =
            tokio::net::UnixListener::bind(dir.path().join("ovs-vswitchd.7.ctl")).unwrap();
        let server = tokio::spawn(async move {
            let (mut c, _) = listener.accept().await.unwrap();
            let mut f = JsonFramer::new(1 << 20);
            let mut buf = [0u8; 4096];
            let mut n_req = 0;
            loop {
                let req = loop {
                    if let Some(v) = f.next_message().unwrap() {
                        break v;
                    }
                    let n = c.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    f.push(&buf[..n]).unwrap();
                };
                n_req += 1;
                let id = req["id"].clone();
                match req["method"].as_str().unwrap() {
                    "memory/show" => {
                        let text =
                            json!({"id": id, "result": "handlers:2 rules:5\n", "error": null})
                                .to_string();
                        let (a, b) = text.split_at(7);
                        c.write_all(a.as_bytes()).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        c.write_all(b.as_bytes()).await.unwrap();
                    }
                    "big" => {
                        let big = "x".repeat(MAX_REPLY_BYTES + 10);
                        let text = json!({"id": id, "result": big, "error": null}).to_string();
                        let _ = c.write_all(text.as_bytes()).await;
                    }
                    "silent" => {}
                    other => {
                        let text = json!({"id": id, "result": null, "error": format!("\"{other}\" is not a valid command")}).to_string();
                        c.write_all(text.as_bytes()).await.unwrap();
                    }
                }
                assert!(n_req < 10);
            }
        });
        let mut c = Unixctl::connect(dir.path(), Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(c.pid, 7);
        assert_eq!(
            c.call("memory/show", &[]).await.unwrap(),
            "handlers:2 rules:5\n"
        );
        assert!(matches!(
            c.call("nope", &["a"]).await,
            Err(UnixctlError::Rpc { .. })
        ));
        assert!(matches!(
            c.call("silent", &[]).await,
            Err(UnixctlError::Timeout { .. })
        ));
        let mut c = c;
        c.timeout = Duration::from_secs(5);
        assert!(matches!(
            c.call("big", &[]).await,
            Err(UnixctlError::Framing(OvsdbError::MessageTooLarge { .. }))
        ));
        drop(c);
        server.abort();
    }
}
