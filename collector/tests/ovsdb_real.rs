//! The OVSDB source against a real, private `ovsdb-server` + `ovs-vswitchd` (dummy datapath, so no
//! kernel devices and no clash with other OVS instances on the host).
//!
//! Skipped with a printed reason when the OVS binaries are missing, unless
//! `PINFLOW_REQUIRE_PRIVILEGED=1`, which turns the skip into a failure.

use pinflow::model::flows::OvsPort;
use pinflow::sources::SourceRegistry;
use pinflow::sources::ovsdb::{OvsdbOptions, OvsdbSnapshot, SOURCE, run_ovsdb_with};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const BINARIES: [&str; 4] = ["ovsdb-tool", "ovsdb-server", "ovs-vsctl", "ovs-vswitchd"];
/// How long the state may lag behind a change.
const FOLLOW: Duration = Duration::from_secs(1);

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `Some(reason)` when the test cannot run here; panics instead under `PINFLOW_REQUIRE_PRIVILEGED=1`.
fn skip_reason() -> Option<String> {
    let mut missing: Vec<String> = BINARIES
        .iter()
        .filter(|b| find_binary(b).is_none())
        .map(|b| b.to_string())
        .collect();
    if !Path::new(SCHEMA).is_file() {
        missing.push(SCHEMA.to_string());
    }
    if missing.is_empty() {
        return None;
    }
    let reason = format!("OVS not installed (missing {})", missing.join(", "));
    if std::env::var_os("PINFLOW_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("{reason}, but PINFLOW_REQUIRE_PRIVILEGED=1");
    }
    Some(reason)
}

/// A private OVS: its files live in a temp dir; daemons are stopped on drop.
struct Ovs {
    dir: tempfile::TempDir,
}

impl Ovs {
    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let d = self.dir.path();
        c.env("OVS_RUNDIR", d.join("run"))
            .env("OVS_DBDIR", d.join("db"))
            .env("OVS_LOGDIR", d.join("log"))
            .env("OVS_SYSCONFDIR", d.join("etc"));
        c
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .cmd(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn vsctl(&self, args: &[&str]) {
        let db = format!("--db=unix:{}", self.run_dir().join("db.sock").display());
        let mut all = vec![db.as_str(), "--timeout=10"];
        all.extend_from_slice(args);
        self.run("ovs-vsctl", &all);
    }

    fn start() -> Ovs {
        let dir = tempfile::Builder::new()
            .prefix("pf-ovsdb-test")
            .tempdir_in("/tmp")
            .expect("temp dir");
        for sub in ["run", "db", "log", "etc/openvswitch"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        let ovs = Ovs { dir };
        let db = ovs.dir.path().join("db/conf.db");
        ovs.run("ovsdb-tool", &["create", &db.to_string_lossy(), SCHEMA]);
        ovs.start_ovsdb_server();
        ovs.vsctl(&["--no-wait", "init"]);
        let run = ovs.run_dir();
        ovs.run(
            "ovs-vswitchd",
            &[
                "--enable-dummy",
                "--disable-system",
                &format!("unix:{}", run.join("db.sock").display()),
                &format!("--pidfile={}", run.join("ovs-vswitchd.pid").display()),
                "--detach",
                &format!(
                    "--log-file={}",
                    ovs.dir.path().join("log/ovs-vswitchd.log").display()
                ),
            ],
        );
        ovs
    }

    fn start_ovsdb_server(&self) {
        let run = self.run_dir();
        self.run(
            "ovsdb-server",
            &[
                &self.dir.path().join("db/conf.db").to_string_lossy(),
                &format!("--remote=punix:{}", run.join("db.sock").display()),
                &format!("--pidfile={}", run.join("ovsdb-server.pid").display()),
                "--detach",
                &format!(
                    "--log-file={}",
                    self.dir.path().join("log/ovsdb-server.log").display()
                ),
            ],
        );
    }

    /// Stops one daemon by the pid in its pidfile and waits until it is gone.
    fn stop(&self, daemon: &str) {
        let pidfile = self.run_dir().join(format!("{daemon}.pid"));
        let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            return;
        };
        // SAFETY: plain kill(2) on a pid this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        self.stop("ovs-vswitchd");
        self.stop("ovsdb-server");
    }
}

/// Waits up to [`FOLLOW`] for `pred`; panics with `what` and the last state otherwise.
async fn follows(
    rx: &mut watch::Receiver<OvsdbSnapshot>,
    what: &str,
    pred: impl Fn(&OvsdbSnapshot) -> bool,
) {
    let t = Instant::now();
    let ok = matches!(
        tokio::time::timeout(FOLLOW, rx.wait_for(|s| pred(s))).await,
        Ok(Ok(_))
    );
    if !ok {
        panic!(
            "{what}: state did not follow within {FOLLOW:?}: {:#?}",
            *rx.borrow()
        );
    }
    eprintln!("{what}: followed in {:?}", t.elapsed());
}

fn port<'a>(s: &'a OvsdbSnapshot, bridge: &str, name: &str) -> Option<&'a OvsPort> {
    s.bridges.get(bridge)?.ports.get(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ovsdb_state_follows_real_server() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIP ovsdb_state_follows_real_server: {reason}");
        return;
    }
    let ovs = Ovs::start();
    let (tx, mut rx) = watch::channel(OvsdbSnapshot::default());
    let health = SourceRegistry::default();
    let mut opts = OvsdbOptions::new(ovs.run_dir());
    opts.min_backoff = Duration::from_millis(20);
    opts.max_backoff = Duration::from_millis(200);
    let client = tokio::spawn(run_ovsdb_with(opts, tx, health.clone()));
    follows(&mut rx, "initial monitor reply", |s| s.connected).await;
    assert!(s_empty(&rx), "fresh database has no bridges");

    ovs.vsctl(&[
        "add-br",
        "pft-br0",
        "--",
        "set",
        "bridge",
        "pft-br0",
        "datapath_type=dummy",
    ]);
    follows(&mut rx, "add-br", |s| {
        port(s, "pft-br0", "pft-br0")
            .is_some_and(|p| p.ofport == Some(65534) && p.kind == "internal")
    })
    .await;

    ovs.vsctl(&[
        "add-port",
        "pft-br0",
        "pft-p1",
        "--",
        "set",
        "interface",
        "pft-p1",
        "type=dummy",
        "ofport_request=7",
    ]);
    follows(&mut rx, "add-port (ofport assigned)", |s| {
        port(s, "pft-br0", "pft-p1")
            .is_some_and(|p| p.ofport == Some(7) && p.kind == "dummy" && p.tag.is_none())
    })
    .await;

    ovs.vsctl(&["set", "port", "pft-p1", "tag=4095"]);
    follows(&mut rx, "set port tag=4095", |s| {
        port(s, "pft-br0", "pft-p1").is_some_and(|p| p.tag == Some(4095))
    })
    .await;

    ovs.vsctl(&[
        "set",
        "interface",
        "pft-p1",
        "external_ids:iface-id=6f1c2d3e-port",
        "external_ids:vm-uuid=0b7e-vm",
        "external_ids:attached-mac=fa:16:3e:12:34:56",
    ]);
    follows(&mut rx, "set interface external_ids", |s| {
        port(s, "pft-br0", "pft-p1").is_some_and(|p| {
            p.iface_id.as_deref() == Some("6f1c2d3e-port")
                && p.vm_uuid.as_deref() == Some("0b7e-vm")
                && p.attached_mac.as_deref() == Some("fa:16:3e:12:34:56")
        })
    })
    .await;

    ovs.vsctl(&[
        "add-port",
        "pft-br0",
        "pft-p2",
        "--",
        "set",
        "interface",
        "pft-p2",
        "type=dummy",
    ]);
    follows(&mut rx, "second port", |s| {
        port(s, "pft-br0", "pft-p2").is_some_and(|p| p.ofport.is_some())
    })
    .await;
    ovs.vsctl(&["del-port", "pft-br0", "pft-p1"]);
    follows(&mut rx, "del-port", |s| {
        port(s, "pft-br0", "pft-p1").is_none() && port(s, "pft-br0", "pft-p2").is_some()
    })
    .await;
    assert!(health.snapshot()[SOURCE].up);
    assert_eq!(health.snapshot()[SOURCE].errors_total, 0);

    // ovsdb-server restart: the loss is noticed, the last state is kept, and the state is rebuilt.
    ovs.stop("ovsdb-server");
    follows(&mut rx, "ovsdb-server stopped", |s| !s.connected).await;
    assert!(
        port(&rx.borrow(), "pft-br0", "pft-p2").is_some(),
        "last state kept"
    );
    assert!(!health.snapshot()[SOURCE].up);
    let generation = rx.borrow().generation;
    ovs.start_ovsdb_server();
    follows(&mut rx, "ovsdb-server restarted", |s| {
        s.connected && s.generation > generation
    })
    .await;
    assert!(port(&rx.borrow(), "pft-br0", "pft-p2").is_some());
    ovs.vsctl(&["set", "port", "pft-p2", "tag=12"]);
    follows(&mut rx, "change after restart", |s| {
        port(s, "pft-br0", "pft-p2").is_some_and(|p| p.tag == Some(12))
    })
    .await;
    let h = &health.snapshot()[SOURCE];
    assert!(h.up, "{h:?}");
    assert_eq!(h.errors_total, 1, "one lost connection");

    client.abort();
}

fn s_empty(rx: &watch::Receiver<OvsdbSnapshot>) -> bool {
    rx.borrow().bridges.is_empty()
}
