//! A private, real Open vSwitch for a test: `ovsdb-server` + `ovs-vswitchd` with the userspace
//! datapath (`dummy` netdevs: no kernel devices, so it never clashes with another OVS on the host;
//! a test may add kernel devices of its own, e.g. [`crate::veth::Veth`], as ports), in a temporary run directory that pinflow reads with `--ovs-run-dir`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// OVS's database schema (from Debian's openvswitch-common).
pub const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// Whether a private OVS can run here; prints SKIP (or panics under `PINFLOW_REQUIRE_PRIVILEGED=1`).
pub fn available(test: &str) -> bool {
    crate::require_privileged(
        test,
        &[
            "ovsdb-tool",
            "ovsdb-server",
            "ovs-vswitchd",
            "ovs-vsctl",
            "ovs-ofctl",
            SCHEMA,
        ],
    )
}

/// A running private OVS; both daemons are stopped on drop.
pub struct Ovs {
    dir: tempfile::TempDir,
}

impl Ovs {
    /// Creates the database and starts both daemons.
    pub fn start() -> Ovs {
        let dir = tempfile::Builder::new()
            .prefix("pfovs")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let ovs = Ovs { dir };
        for sub in ["run", "db", "log", "etc/openvswitch"] {
            std::fs::create_dir_all(ovs.dir.path().join(sub)).expect("mkdir");
        }
        let db = ovs.dir.path().join("db/conf.db");
        ovs.run(
            "ovsdb-tool",
            &[
                "create",
                &db.to_string_lossy(),
                "/usr/share/openvswitch/vswitch.ovsschema",
            ],
        );
        let run = ovs.run_dir();
        ovs.run(
            "ovsdb-server",
            &[
                &db.to_string_lossy(),
                &format!("--remote=punix:{}", run.join("db.sock").display()),
                &format!("--pidfile={}", run.join("ovsdb-server.pid").display()),
                "--detach",
                &format!(
                    "--log-file={}",
                    ovs.dir.path().join("log/ovsdb-server.log").display()
                ),
            ],
        );
        ovs.vsctl(&["--no-wait", "init"]);
        ovs.start_vswitchd();
        ovs
    }

    /// The run directory (`db.sock`, `<bridge>.mgmt`).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The instance's directory (database, logs, run dir).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `Command` for an OVS tool, with this instance's `OVS_*DIR` environment.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let d = self.dir.path();
        c.env("OVS_RUNDIR", d.join("run"))
            .env("OVS_DBDIR", d.join("db"))
            .env("OVS_LOGDIR", d.join("log"))
            .env("OVS_SYSCONFDIR", d.join("etc"));
        c
    }

    /// Runs an OVS tool against this instance; panics with its stderr on failure.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .cmd(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ovs-vsctl ARGS`.
    pub fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.run_dir().join("db.sock").display());
        let mut all = vec![db.as_str(), "--timeout=20"];
        all.extend_from_slice(args);
        self.run("ovs-vsctl", &all)
    }

    /// `ovs-ofctl -O OpenFlow13 ARGS`.
    pub fn ofctl(&self, args: &[&str]) -> String {
        let mut all = vec!["-O", "OpenFlow13"];
        all.extend_from_slice(args);
        self.run("ovs-ofctl", &all)
    }

    /// Starts ovsdb-server on the existing database (also after [`Ovs::stop`]).
    pub fn start_ovsdb_server(&self) {
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

    /// Starts ovs-vswitchd (userspace datapath only).
    pub fn start_vswitchd(&self) {
        let run = self.run_dir();
        self.run(
            "ovs-vswitchd",
            &[
                &format!("unix:{}", run.join("db.sock").display()),
                "--enable-dummy",
                "--disable-system",
                &format!("--pidfile={}", run.join("ovs-vswitchd.pid").display()),
                "--detach",
                &format!(
                    "--log-file={}",
                    self.dir.path().join("log/ovs-vswitchd.log").display()
                ),
            ],
        );
    }

    /// Adds a bridge with ports `name` → ofport (dummy netdevs), OpenFlow 1.0 and 1.3 enabled.
    pub fn add_bridge(&self, bridge: &str, ports: &[(&str, u32)]) {
        self.add_empty_bridge(bridge, "secure");
        self.add_ports(bridge, ports, Some("dummy"));
    }

    /// Adds `ports` to `bridge` in one `ovs-vsctl` call, each with `ofport_request` and, when
    /// given, an interface type (none: a kernel network device, which the userspace datapath
    /// reads with `AF_PACKET`).
    pub fn add_ports(&self, bridge: &str, ports: &[(&str, u32)], kind: Option<&str>) {
        if ports.is_empty() {
            return;
        }
        let mut args: Vec<String> = Vec::new();
        for (name, ofport) in ports {
            args.extend(
                [
                    "--",
                    "add-port",
                    bridge,
                    name,
                    "--",
                    "set",
                    "interface",
                    name,
                ]
                .map(String::from),
            );
            args.extend(kind.map(|k| format!("type={k}")));
            args.push(format!("ofport_request={ofport}"));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.vsctl(&refs);
    }

    /// Adds the kernel device `dev` as a port of `bridge` with BFD (100 ms intervals) and CFM
    /// (maintenance point `mpid`) on: the peer end of a veth pair on another bridge is the session's
    /// other side.
    pub fn add_bfd_cfm_port(&self, bridge: &str, dev: &str, mpid: u32) {
        self.vsctl(&[
            "add-port",
            bridge,
            dev,
            "--",
            "set",
            "interface",
            dev,
            "bfd:enable=true",
            "bfd:min_tx=100",
            "bfd:min_rx=100",
            &format!("cfm_mpid={mpid}"),
        ]);
    }

    /// Adds VXLAN ports `(name, VNI)` to `bridge` whose egress device is the kernel device
    /// `egress`: it gets a /30 of TEST-NET-2 (removed with the device), and the tunnels' remote
    /// is the other address of that /30 (ovs-vswitchd mirrors the kernel's routes).
    pub fn add_vxlan_ports(&self, bridge: &str, egress: &str, ports: &[(&str, u32)]) {
        let net = 4 * (std::process::id() % 60 + 1);
        crate::run(
            "ip",
            &[
                "addr",
                "add",
                &format!("198.51.100.{}/30", net + 1),
                "dev",
                egress,
            ],
        );
        for (port, key) in ports {
            self.vsctl(&[
                "add-port",
                bridge,
                port,
                "--",
                "set",
                "interface",
                port,
                "type=vxlan",
                &format!("options:remote_ip=198.51.100.{}", net + 2),
                &format!("options:key={key}"),
            ]);
        }
    }

    /// Adds a port backed by a kernel network device (the userspace datapath reads it with
    /// `AF_PACKET`), with `ofport_request`.
    pub fn add_system_port(&self, bridge: &str, name: &str, ofport: u32) {
        self.add_ports(bridge, &[(name, ofport)], None);
    }

    /// Adds a bridge without ports (userspace datapath, OpenFlow 1.0 and 1.3, `fail-mode`
    /// `secure` or `standalone`).
    pub fn add_empty_bridge(&self, bridge: &str, fail_mode: &str) {
        self.vsctl(&[
            "add-br",
            bridge,
            "--",
            "set",
            "bridge",
            bridge,
            "datapath_type=dummy",
            &format!("fail-mode={fail_mode}"),
            "protocols=OpenFlow10,OpenFlow13",
        ]);
    }

    /// Stops a daemon (`ovs-vswitchd`, `ovsdb-server`) by its pid file and waits for it to exit.
    pub fn stop(&self, daemon: &str) {
        let pidfile = self.run_dir().join(format!("{daemon}.pid"));
        let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            return;
        };
        // SAFETY: plain kill(2) of a daemon this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let t = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        self.stop("ovs-vswitchd");
        self.stop("ovsdb-server");
    }
}

/// `duration=…s` replaced by `duration=*` in every line, after checking that each age has the
/// shape ovs-ofctl gives ages OVS measured in milliseconds: no decimals or exactly three. The
/// `OFPST_FLOW reply …` header lines `ovs-ofctl dump-flows` prints with statistics are dropped.
pub fn mask_durations(text: &str) -> String {
    let mut out = String::new();
    let flow_lines = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("OFPST_FLOW reply"));
    for line in flow_lines {
        let (head, rest) = line
            .split_once("duration=")
            .unwrap_or_else(|| panic!("no duration in {line:?}"));
        let (age, tail) = rest
            .split_once("s, ")
            .unwrap_or_else(|| panic!("no age in {line:?}"));
        let ok = match age.split_once('.') {
            None => age.bytes().all(|b| b.is_ascii_digit()),
            Some((s, f)) => {
                s.bytes().all(|b| b.is_ascii_digit())
                    && f.len() == 3
                    && f.bytes().all(|b| b.is_ascii_digit())
            }
        };
        assert!(ok, "age {age:?} not as ovs-ofctl prints it in {line:?}");
        out.push_str(&format!("{head}duration=*, {tail}\n"));
    }
    out
}
