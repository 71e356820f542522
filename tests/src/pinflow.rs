//! A `pinflow serve` process for a test: started on a free port, scraped, killed on drop.

use crate::scrape::{self, Sample};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Path of the pinflow binary under test: `$PINFLOW_BIN`, else the newer of the workspace's
/// `target/{release,debug}/pinflow`.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PINFLOW_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    ["release", "debug"]
        .into_iter()
        .map(|profile| target.join(profile).join("pinflow"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            panic!(
                "pinflow binary not found: build it (`cargo build -p pinflow`) or set PINFLOW_BIN"
            )
        })
}

/// A running `pinflow serve`.
pub struct Pinflow {
    child: Child,
    /// Address it serves on.
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// A free TCP port on 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

impl Pinflow {
    /// Starts `pinflow serve` with `config` (TOML text) and extra source flags; waits until /healthz answers.
    pub fn start(config: &str, args: &[&str]) -> Pinflow {
        Self::start_wrapped(&[], config, args)
    }

    /// [`Pinflow::start`] run through `wrapper` (a command line that ends by executing the
    /// program and arguments it is given, e.g. `unshare … sh -c '…; exec "$0" "$@"'`).
    pub fn start_wrapped(wrapper: &[&str], config: &str, args: &[&str]) -> Pinflow {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("pinflow.toml");
        std::fs::write(&cfg, config).expect("write config");
        let log = dir.path().join("pinflow.log");
        let addr = free_addr();
        let mut cmd = match wrapper.split_first() {
            None => Command::new(bin()),
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin());
                c
            }
        };
        let child = cmd
            .arg("serve")
            .arg("--web.listen-address")
            .arg(addr.to_string())
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn pinflow");
        let p = Pinflow {
            child,
            addr,
            log,
            _dir: dir,
        };
        let up = crate::wait_for(Duration::from_secs(15), || {
            scrape::http_get(p.addr, "/healthz", Duration::from_secs(1))
                .ok()
                .filter(|(s, _)| *s == 200)
        });
        assert!(
            up.is_some(),
            "pinflow did not come up on {}:\n{}",
            p.addr,
            p.log()
        );
        p
    }

    /// The process id (for its RSS in `/proc/PID/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// pinflow's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path`; panics on transport errors or non-200.
    pub fn get(&self, path: &str) -> String {
        let (status, body) = scrape::http_get(self.addr, path, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()));
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Scrapes /metrics.
    pub fn scrape(&self) -> Vec<Sample> {
        scrape::parse(&self.get("/metrics"))
    }
}

/// `CAP_PERFMON`'s bit in the `Cap*` masks of `/proc/PID/status`.
pub const CAP_PERFMON: u64 = 1 << 38;
/// `CAP_BPF`'s bit.
pub const CAP_BPF: u64 = 1 << 39;

/// One thread's capability sets and `no_new_privs`, from `/proc/PID/task/TID/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadPrivileges {
    /// Thread id.
    pub tid: u32,
    /// Thread name.
    pub name: String,
    /// `CapInh`.
    pub inheritable: u64,
    /// `CapPrm`.
    pub permitted: u64,
    /// `CapEff`.
    pub effective: u64,
    /// `CapBnd`.
    pub bounding: u64,
    /// `CapAmb`.
    pub ambient: u64,
    /// `NoNewPrivs: 1`.
    pub no_new_privs: bool,
}

/// The privileges of every thread of process `pid` (capabilities are per thread).
pub fn thread_privileges(pid: u32) -> Vec<ThreadPrivileges> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let e = e.expect("task entry");
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {k} in {}", e.path().display()))
        };
        let mask = |k: &str| u64::from_str_radix(&field(k), 16).expect("hex mask");
        out.push(ThreadPrivileges {
            tid: e.file_name().to_string_lossy().parse().expect("tid"),
            name: field("Name:"),
            inheritable: mask("CapInh:"),
            permitted: mask("CapPrm:"),
            effective: mask("CapEff:"),
            bounding: mask("CapBnd:"),
            ambient: mask("CapAmb:"),
            no_new_privs: field("NoNewPrivs:") == "1",
        });
    }
    out
}

impl Drop for Pinflow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
