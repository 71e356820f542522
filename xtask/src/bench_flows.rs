//! `cargo xtask bench` (flows): issue 3's numbers for reading OpenFlow tables natively versus the
//! operators' cron job (`ovs-ofctl dump-flows` plus a parse of its text).
//!
//! On a private Open vSwitch (userspace datapath, temp run dir) with one bridge of 200 dummy ports
//! and 10 000 / 100 000 generated Neutron-like flows (per-port classification, anti-spoofing,
//! conntrack and security-group rule flows, all clean):
//! - (a) CPU (user+sys) of one full dump: `ovs-ofctl dump-flows` (rusage of the child), the text
//!   parse of its output into match/action fields (thread CPU of this process's parser), ovs-vswitchd
//!   during each dump (sum of its threads' `schedstat`), and pinflow's own one-shot
//!   `pinflow flows --bridge B --no-stats` (rusage of the child: start, dump, decode, render, print)
//!   of the binary that ships, the static one of `cargo xtask dist` (see `bench` in main.rs);
//! - (b) steady state over 30 s with 10 flow changes per second (alternating add/delete over one
//!   persistent OpenFlow connection, as an agent makes them): `pinflow serve` mirroring the bridge
//!   (its own CPU, after a 10 s warm-up), ovs-vswitchd alone, with 100 bare flow monitors (its cost
//!   per monitoring client is the slope), and with dump + parse every 15 s (client CPU, plus
//!   ovs-vswitchd's CPU while each dump runs);
//! - (c) `ovs-ofctl add-flow` of a dirty flow (output to a missing port) until
//!   `pinflow_ovs_dirty_flows{rule="output_to_missing_port"}` changes on /metrics (median of 20);
//! - (d) RSS of `pinflow serve` with the 100 000 flows mirrored.
//!
//! Knobs (environment): `PINFLOW_BENCH_FLOWS_STEADY_SECS` (steady-state phase length, default 30).
//! `PINFLOW_BENCH_FLOWS_QUICK=1`: skip the one-shot dump comparison.
//! `PINFLOW_BENCH_FLOWS_HOLD=FILE`: set up the 100 000-flow bridge (`PINFLOW_BENCH_FLOWS_HOLD_N`
//! flows if set), write its run dir to FILE and keep it up until FILE is removed (for profiling by
//! hand).
//! Needs root and the OVS daemons and tools (`ovsdb-server`, `ovs-vswitchd`, `ovs-vsctl`, `ovs-ofctl`).
#![allow(unsafe_code)] // clock_gettime, wait4 and geteuid for whole-process measurements.

use anyhow::{Context as _, Result, bail, ensure};
use pinflow_tests::ovs::Ovs;
use pinflow_tests::scrape::{self, select};
use std::fmt::Write as _;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BRIDGE: &str = "br-bench";
const PORTS: u32 = 200;
const COOKIE: u64 = 0x6a1b_2c3d_4e5f_6071;
/// Dumps by each client per size (3 under `--quick`).
fn reps() -> usize {
    if crate::bench_table::quick() { 3 } else { 5 }
}
/// Churn before the steady-state measurement (see the warm-up in `run`).
const WARMUP_SECS: u64 = 10;
/// Bare flow monitors attached to measure ovs-vswitchd's cost per monitoring client.
const MONITORS: u32 = 100;

/// Neutron-like flows of one br-int: global pipeline flows, 12 flows per instance port (ofports
/// `1..=ports`) and security-group rule flows spread over the ports, `n` distinct flows in all, in
/// `ovs-ofctl add-flows` syntax. Every referenced port and table exists, so the table is clean.
pub fn neutron_flows(n: usize, ports: u32) -> String {
    let mut out = String::with_capacity(n * 160);
    let mut count = 0usize;
    let push = |out: &mut String, count: &mut usize, line: &str| {
        if *count < n {
            let _ = writeln!(out, "cookie={COOKIE:#x},{line}");
            *count += 1;
        }
    };
    for g in [
        "table=0,priority=65535,dl_vlan=4095,actions=drop",
        "table=0,priority=0,actions=resubmit(,60)",
        "table=23,priority=0,actions=drop",
        "table=24,priority=0,actions=drop",
        "table=60,priority=3,actions=NORMAL",
        "table=71,priority=0,actions=drop",
        "table=72,priority=50,ct_state=+inv+trk,actions=drop",
        "table=72,priority=40,ct_state=-est-rel+trk,ip,actions=ct(commit,zone=NXM_NX_REG6[0..15]),resubmit(,73)",
        "table=72,priority=40,ct_state=+est-rel-rpl+trk,ip,actions=resubmit(,73)",
        "table=72,priority=0,actions=drop",
        "table=73,priority=0,actions=drop",
        "table=81,priority=0,actions=drop",
        "table=82,priority=50,ct_state=+inv+trk,actions=drop",
        "table=82,priority=0,actions=drop",
        "table=91,priority=1,actions=resubmit(,94)",
        "table=94,priority=1,actions=NORMAL",
    ] {
        push(&mut out, &mut count, g);
    }
    let mac = |p: u32| {
        format!(
            "fa:16:3e:{:02x}:{:02x}:{:02x}",
            p >> 16 & 0xff,
            p >> 8 & 0xff,
            p & 0xff
        )
    };
    let ip = |p: u32| format!("10.0.{}.{}", p >> 8 & 0xff, p & 0xff);
    for p in 1..=ports {
        let (m, a, v) = (mac(p), ip(p), p % 4000 + 1);
        let z = "zone=NXM_NX_REG6[0..15]";
        for l in [
            format!("table=0,priority=10,in_port={p},actions=resubmit(,24)"),
            format!("table=24,priority=2,arp,in_port={p},arp_spa={a},actions=resubmit(,60)"),
            format!("table=24,priority=1,ip,in_port={p},actions=resubmit(,60)"),
            format!(
                "table=60,priority=100,in_port={p},actions=load:{p:#x}->NXM_NX_REG5[],load:{v:#x}->NXM_NX_REG6[],resubmit(,71)"
            ),
            format!(
                "table=60,priority=90,dl_vlan={v},dl_dst={m},actions=load:{p:#x}->NXM_NX_REG5[],load:{v:#x}->NXM_NX_REG6[],strip_vlan,resubmit(,81)"
            ),
            format!(
                "table=71,priority=95,arp,reg5={p:#x},in_port={p},dl_src={m},arp_spa={a},actions=resubmit(,94)"
            ),
            format!(
                "table=71,priority=65,ip,reg5={p:#x},in_port={p},dl_src={m},nw_src={a},actions=ct(table=72,{z})"
            ),
            format!(
                "table=71,priority=65,ipv6,reg5={p:#x},in_port={p},dl_src={m},ipv6_src=fe80::f816:3eff:fe00:{p:x},actions=ct(table=72,{z})"
            ),
            format!("table=71,priority=10,reg5={p:#x},in_port={p},actions=drop"),
            format!("table=81,priority=90,ip,reg5={p:#x},actions=ct(table=82,{z})"),
            format!("table=81,priority=90,ipv6,reg5={p:#x},actions=ct(table=82,{z})"),
            format!("table=94,priority=12,reg6={v:#x},dl_dst={m},actions=output:{p}"),
        ] {
            push(&mut out, &mut count, &l);
        }
    }
    // Security-group rules: remote IPs × ports, four kinds, round robin over the instance ports.
    let mut k: u32 = 0;
    while count < n {
        let p = k % ports + 1;
        let j = k / ports;
        let kind = j % 4;
        let r = j / 4;
        let remote = format!(
            "172.{}.{}.{}",
            16 + (r >> 16 & 0xf),
            r >> 8 & 0xff,
            r & 0xff
        );
        let dport = 1024 + r % 50_000;
        let z = "zone=NXM_NX_REG6[0..15]";
        let l = match kind {
            0 => format!(
                "table=82,priority=77,ct_state=+new-est,tcp,reg5={p:#x},nw_src={remote},tp_dst={dport},actions=ct(commit,{z}),output:{p}"
            ),
            1 => format!(
                "table=82,priority=77,ct_state=+new-est,udp,reg5={p:#x},nw_src={remote},tp_dst={dport},actions=ct(commit,{z}),output:{p}"
            ),
            2 => format!(
                "table=73,priority=77,ct_state=+new-est,tcp,reg5={p:#x},nw_dst={remote},tp_dst={dport},actions=ct(commit,{z}),resubmit(,91)"
            ),
            _ => format!(
                "table=82,priority=74,ct_state=+new-est,tcp6,reg5={p:#x},ipv6_src=fd00::{:x}:{:x},tp_dst={dport},actions=ct(commit,{z}),output:{p}",
                r >> 16,
                r & 0xffff
            ),
        };
        push(&mut out, &mut count, &l);
        k += 1;
    }
    out
}

/// One flow as a cron job's script would hold it after parsing `ovs-ofctl dump-flows` text.
#[derive(Debug, Default)]
pub struct ParsedFlow {
    /// Cookie.
    pub cookie: u64,
    /// Table.
    pub table: u8,
    /// Priority.
    pub priority: u16,
    /// Packets.
    pub n_packets: u64,
    /// Bytes.
    pub n_bytes: u64,
    /// Match fields as (name, value) text pairs (protocol keywords such as `ip` have no value).
    pub matches: Vec<(String, String)>,
    /// Actions, split at top-level commas.
    pub actions: Vec<String>,
}

/// Parses `ovs-ofctl dump-flows` output (with statistics) into [`ParsedFlow`]s.
pub fn parse_ofctl(text: &str) -> Vec<ParsedFlow> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some((head, actions)) = line.split_once(" actions=") else {
            continue; // the reply header line
        };
        let mut f = ParsedFlow::default();
        for part in head.split([',', ' ']).filter(|s| !s.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            match k {
                "cookie" => {
                    f.cookie = u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap_or(0)
                }
                "table" => f.table = v.parse().unwrap_or(0),
                "priority" => f.priority = v.parse().unwrap_or(0),
                "n_packets" => f.n_packets = v.parse().unwrap_or(0),
                "n_bytes" => f.n_bytes = v.parse().unwrap_or(0),
                "duration" | "idle_age" | "hard_age" | "idle_timeout" | "hard_timeout" => {}
                _ => f.matches.push((k.to_string(), v.to_string())),
            }
        }
        let mut depth = 0i32;
        let mut start = 0;
        for (i, c) in actions.char_indices() {
            match c {
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                ',' if depth == 0 => {
                    f.actions.push(actions[start..i].to_string());
                    start = i + 1;
                }
                _ => {}
            }
        }
        f.actions.push(actions[start..].to_string());
        out.push(f);
    }
    out
}

/// CPU time (user+sys) of every thread of `pid` so far, from `/proc/PID/task/*/schedstat`.
pub(crate) fn proc_cpu(pid: u32) -> Duration {
    let mut ns = 0u64;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            ns += s
                .split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// CPU time of the calling thread.
pub(crate) fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs a command to completion, returning its stdout and its CPU time (user+sys, from `wait4`).
pub(crate) fn run_measured(cmd: &mut Command) -> Result<(String, Duration)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out)?;
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err)?;
    }
    let (ok, cpu) = wait_rusage(&child)?;
    if !ok {
        bail!("{cmd:?} failed: {err}");
    }
    Ok((out, cpu))
}

/// Waits for a child with `wait4` and returns (exited successfully, its user+sys CPU). Not its
/// `ru_maxrss`: for a child forked from this process Linux carries this process's peak over the
/// exec ([`peak_rss_kib`] measures that).
fn wait_rusage(child: &Child) -> Result<(bool, Duration)> {
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid with valid out-pointers.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    ensure!(r > 0, "wait4: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok((
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        tv(ru.ru_utime) + tv(ru.ru_stime),
    ))
}

/// Peak RSS of `program args` in KiB, measured by GNU time (`%M`): its child is forked from
/// `time`'s small image, so the figure is the program's own, not this process's carried over.
fn peak_rss_kib(program: &Path, args: &[&str]) -> Result<u64> {
    let dir = Scratch::new("rss")?;
    let out = dir.path().join("maxrss");
    let st = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&out)
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env("RUST_LOG", "warn")
        .status()
        .context("cannot run /usr/bin/time (apt install time)")?;
    ensure!(
        st.success(),
        "{} {args:?} under time: {st}",
        program.display()
    );
    let text = std::fs::read_to_string(&out)?;
    text.trim()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("no %M in {text:?}"))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn vswitchd_pid(ovs: &Ovs) -> Result<u32> {
    let p = ovs.run_dir().join("ovs-vswitchd.pid");
    std::fs::read_to_string(&p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| format!("no pid in {}", p.display()))
}

fn ofctl_cmd(ovs: &Ovs, args: &[&str]) -> Command {
    let mut c = Command::new("ovs-ofctl");
    c.args(["-O", "OpenFlow13"])
        .args(args)
        .env("OVS_RUNDIR", ovs.run_dir());
    c
}

/// A scratch directory under the system temp dir, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(what: &str) -> Result<Scratch> {
        let p = std::env::temp_dir().join(format!("pinflow-bench-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("mkdir {}", p.display()))?;
        Ok(Scratch(p))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_flows(ovs: &Ovs, n: usize) -> Result<()> {
    let dir = Scratch::new("flows")?;
    let file = dir.path().join("flows.txt");
    std::fs::write(&file, neutron_flows(n, PORTS))?;
    ovs.ofctl(&["replace-flows", BRIDGE, &file.to_string_lossy()]);
    Ok(())
}

/// One full dump by each client: CPU of the client, of the parse, and of ovs-vswitchd meanwhile.
struct DumpCost {
    ofctl: Duration,
    parse: Duration,
    vswitchd_ofctl: Duration,
    pinflow: Duration,
    vswitchd_pinflow: Duration,
    wire_bytes_per_flow: f64,
    /// Peak RSS of `ovs-ofctl dump-flows` and of `pinflow flows`, KiB (largest of the runs).
    rss_ofctl_kib: u64,
    rss_pinflow_kib: u64,
    /// (min, max) of pinflow's one-shot CPU and of the cron job's (ofctl + parse) over the dumps.
    spread: [(Duration, Duration); 2],
}

fn min_max(v: &[Duration]) -> (Duration, Duration) {
    (
        v.iter().min().copied().unwrap_or_default(),
        v.iter().max().copied().unwrap_or_default(),
    )
}

fn dump_costs(ovs: &Ovs, pinflow_bin: &Path, n: usize) -> Result<DumpCost> {
    let vs = vswitchd_pid(ovs)?;
    let mgmt = BRIDGE;
    let run_dir = ovs.run_dir().to_string_lossy().into_owned();
    let (mut ofctl, mut parse, mut vs_of, mut pf, mut vs_pf) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut wire = 0.0;
    // The one-shot command measured, for its CPU and for its peak RSS.
    let pf_args = [
        "flows",
        "--ovs-run-dir",
        &run_dir,
        "--bridge",
        BRIDGE,
        "--no-stats",
    ];
    for _ in 0..reps() {
        let v0 = proc_cpu(vs);
        let (text, cpu) = run_measured(&mut ofctl_cmd(ovs, &["dump-flows", mgmt]))?;
        vs_of.push(proc_cpu(vs).saturating_sub(v0));
        ofctl.push(cpu);
        let t0 = thread_cpu();
        let parsed = parse_ofctl(&text);
        parse.push(thread_cpu().saturating_sub(t0));
        ensure!(
            parsed.len() == n,
            "ovs-ofctl printed {} flows, expected {n}",
            parsed.len()
        );
        let acts: usize = parsed
            .iter()
            .map(|f| f.actions.len() + f.matches.len())
            .sum();
        ensure!(acts > n, "parse found nothing");
        drop(parsed);

        let v0 = proc_cpu(vs);
        let (text, cpu) = run_measured(
            Command::new(pinflow_bin)
                .args(pf_args)
                .env("RUST_LOG", "warn"),
        )?;
        vs_pf.push(proc_cpu(vs).saturating_sub(v0));
        pf.push(cpu);
        let lines = text.lines().count();
        ensure!(lines == n, "pinflow printed {lines} flows, expected {n}");
    }
    let target = format!(
        "unix:{}",
        ovs.run_dir().join(format!("{mgmt}.mgmt")).display()
    );
    let rss_ofctl = peak_rss_kib(
        Path::new("ovs-ofctl"),
        &["-O", "OpenFlow13", "dump-flows", &target],
    )?;
    let rss_pf = peak_rss_kib(pinflow_bin, &pf_args)?;
    // Size of the `--no-stats` text (what the cron job's parser reads, without counters).
    if let Ok((text, _)) = run_measured(&mut ofctl_cmd(ovs, &["--no-stats", "dump-flows", mgmt])) {
        wire = text.len() as f64 / n as f64;
    }
    let cron: Vec<Duration> = ofctl.iter().zip(&parse).map(|(a, b)| *a + *b).collect();
    let spread = [min_max(&pf), min_max(&cron)];
    Ok(DumpCost {
        spread,
        ofctl: median(ofctl),
        parse: median(parse),
        vswitchd_ofctl: median(vs_of),
        pinflow: median(pf),
        vswitchd_pinflow: median(vs_pf),
        wire_bytes_per_flow: wire,
        rss_ofctl_kib: rss_ofctl,
        rss_pinflow_kib: rss_pf,
    })
}

/// A `pinflow serve` on a free port, killed on drop.
struct Serve {
    child: Child,
    addr: SocketAddr,
    _dir: Scratch,
}

impl Serve {
    fn start(bin: &Path, ovs: &Ovs) -> Result<Serve> {
        let dir = Scratch::new("serve")?;
        let cfg = dir.path().join("pinflow.toml");
        std::fs::write(&cfg, "[pinning]\nebpf = false\n")?;
        let state = dir.path().join("libvirt");
        std::fs::create_dir_all(&state)?;
        let addr = pinflow_tests::pinflow::free_addr();
        let child = Command::new(bin)
            .arg("serve")
            .arg("--web.listen-address")
            .arg(addr.to_string())
            .arg("--config")
            .arg(&cfg)
            .arg("--ovs-run-dir")
            .arg(ovs.run_dir())
            .arg("--libvirt-state-dir")
            .arg(&state)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("pinflow.log"))?)
            .spawn()
            .context("spawn pinflow serve")?;
        Ok(Serve {
            child,
            addr,
            _dir: dir,
        })
    }

    fn samples(&self) -> Vec<scrape::Sample> {
        scrape::http_get(self.addr, "/metrics", Duration::from_secs(5))
            .map(|(_, b)| scrape::parse(&b))
            .unwrap_or_default()
    }

    fn flows(&self) -> f64 {
        select(&self.samples(), "pinflow_ovs_flows", &[("bridge", BRIDGE)])
            .iter()
            .map(|s| s.value)
            .sum()
    }

    fn dirty(&self, rule: &str) -> Option<f64> {
        select(
            &self.samples(),
            "pinflow_ovs_dirty_flows",
            &[("bridge", BRIDGE), ("rule", rule)],
        )
        .first()
        .map(|s| s.value)
    }

    fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// Peak RSS so far (`VmHWM`).
    fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A persistent OpenFlow 1.3 connection that applies flow changes, as a Neutron agent does (one
/// long-lived controller connection): a `FLOW_MOD` plus a barrier per change. Driving the churn
/// through `ovs-ofctl` instead would cost ovs-vswitchd a connection set-up per change, several times
/// the change itself, and bury the collectors' share in that noise.
struct FlowMods {
    sock: std::os::unix::net::UnixStream,
    xid: u32,
}

const OFP13: u8 = 4;

impl FlowMods {
    fn connect(ovs: &Ovs) -> Result<FlowMods> {
        let path = ovs.run_dir().join(format!("{BRIDGE}.mgmt"));
        let sock = std::os::unix::net::UnixStream::connect(&path)
            .with_context(|| format!("connect {}", path.display()))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut c = FlowMods { sock, xid: 0 };
        c.send(0, &[])?; // HELLO
        let (t, _) = c.recv()?;
        ensure!(t == 0, "expected HELLO from the switch, got type {t}");
        Ok(c)
    }

    /// Sends a request with a new xid.
    fn send(&mut self, msg_type: u8, body: &[u8]) -> Result<u32> {
        self.xid += 1;
        self.send_xid(msg_type, self.xid, body)?;
        Ok(self.xid)
    }

    fn send_xid(&mut self, msg_type: u8, xid: u32, body: &[u8]) -> Result<()> {
        use std::io::Write as _;
        let len = u16::try_from(8 + body.len())?;
        let mut m = vec![OFP13, msg_type];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(&xid.to_be_bytes());
        m.extend_from_slice(body);
        self.sock.write_all(&m)?;
        Ok(())
    }

    /// Reads one message: (type, xid).
    fn recv(&mut self) -> Result<(u8, u32)> {
        let mut h = [0u8; 8];
        self.sock.read_exact(&mut h)?;
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let mut body = vec![0u8; len.saturating_sub(8)];
        self.sock.read_exact(&mut body)?;
        if h[1] == 1 {
            bail!(
                "switch sent OpenFlow error {:02x?}",
                &body[..body.len().min(4)]
            );
        }
        Ok((h[1], u32::from_be_bytes([h[4], h[5], h[6], h[7]])))
    }

    /// Reads one message, answering an echo request: (type, xid).
    fn recv_or_echo(&mut self) -> Result<(u8, u32)> {
        let (t, x) = self.recv()?;
        if t == 2 {
            self.send_xid(3, x, &[])?; // echo reply
        }
        Ok((t, x))
    }

    /// Sends a barrier and waits for its reply (so the change is applied, and errors surface).
    fn barrier(&mut self) -> Result<()> {
        let xid = self.send(20, &[])?;
        while self.recv_or_echo()? != (21, xid) {}
        Ok(())
    }

    /// Adds (`add`) or strictly deletes churn flow `slot`:
    /// `table=82,priority=76,ct_state=+new-est,tcp,reg5=P,nw_src=192.168.S.S,tp_dst=443,actions=output:P`.
    fn churn_flow(&mut self, slot: u32, add: bool) -> Result<()> {
        let port = slot % PORTS + 1;
        let oxm = |out: &mut Vec<u8>, class: u16, field: u8, value: &[u8], mask: Option<&[u8]>| {
            out.extend_from_slice(&class.to_be_bytes());
            out.push(field << 1 | u8::from(mask.is_some()));
            out.push((value.len() * if mask.is_some() { 2 } else { 1 }) as u8);
            out.extend_from_slice(value);
            if let Some(m) = mask {
                out.extend_from_slice(m);
            }
        };
        let mut fields = Vec::new();
        oxm(&mut fields, 0x8000, 5, &0x0800u16.to_be_bytes(), None); // eth_type
        oxm(&mut fields, 0x8000, 10, &[6], None); // ip_proto
        oxm(
            &mut fields,
            0x8000,
            11,
            &[192, 168, (slot >> 8) as u8, slot as u8],
            None,
        ); // ipv4_src
        oxm(&mut fields, 0x8000, 14, &443u16.to_be_bytes(), None); // tcp_dst
        oxm(&mut fields, 0x0001, 5, &port.to_be_bytes(), None); // NXM_NX_REG5
        oxm(
            &mut fields,
            0x0001,
            105,
            &1u32.to_be_bytes(),
            Some(&3u32.to_be_bytes()),
        ); // ct_state=+new-est
        let mut b = Vec::new();
        b.extend_from_slice(&COOKIE.to_be_bytes());
        b.extend_from_slice(&0u64.to_be_bytes()); // cookie mask
        b.push(82); // table
        b.push(if add { 0 } else { 4 }); // OFPFC_ADD / OFPFC_DELETE_STRICT
        b.extend_from_slice(&[0, 0, 0, 0]); // idle, hard timeout
        b.extend_from_slice(&76u16.to_be_bytes()); // priority
        b.extend_from_slice(&u32::MAX.to_be_bytes()); // buffer id: none
        b.extend_from_slice(&u32::MAX.to_be_bytes()); // out_port: any
        b.extend_from_slice(&u32::MAX.to_be_bytes()); // out_group: any
        b.extend_from_slice(&[0, 0, 0, 0]); // flags, pad
        b.extend_from_slice(&1u16.to_be_bytes()); // OFPMT_OXM
        b.extend_from_slice(&u16::try_from(4 + fields.len())?.to_be_bytes());
        b.extend_from_slice(&fields);
        b.resize(b.len() + (8 - (4 + fields.len()) % 8) % 8, 0);
        if add {
            b.extend_from_slice(&4u16.to_be_bytes()); // OFPIT_APPLY_ACTIONS
            b.extend_from_slice(&24u16.to_be_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&0u16.to_be_bytes()); // OFPAT_OUTPUT
            b.extend_from_slice(&16u16.to_be_bytes());
            b.extend_from_slice(&port.to_be_bytes());
            b.extend_from_slice(&[0; 8]); // max_len, pad
        }
        self.send(14, &b)?; // OFPT_FLOW_MOD
        self.barrier()
    }
}

/// A bare ONF flow monitor (the request pinflow sends: all tables, adds, deletes, modifications,
/// with actions) whose updates a thread reads and discards. Several of them make ovs-vswitchd's
/// cost per monitoring client measurable: the slope over N clients stands out of the noise of its
/// ~0.5 s per 30 s of applying the changes, where one client's share does not.
struct BareMonitor {
    sock: std::os::unix::net::UnixStream,
    reader: std::thread::JoinHandle<()>,
}

impl BareMonitor {
    fn attach(ovs: &Ovs) -> Result<BareMonitor> {
        let mut c = FlowMods::connect(ovs)?;
        let mut b = Vec::new();
        b.extend_from_slice(&0xffffu16.to_be_bytes()); // OFPMP_EXPERIMENTER
        b.extend_from_slice(&[0; 6]); // flags, pad
        b.extend_from_slice(&0x4f4e_4600u32.to_be_bytes()); // ONF
        b.extend_from_slice(&1870u32.to_be_bytes()); // ONFST13_FLOW_MONITOR
        b.extend_from_slice(&1u32.to_be_bytes()); // monitor id
        b.extend_from_slice(&0x1eu16.to_be_bytes()); // add | delete | modify | actions
        b.extend_from_slice(&4u16.to_be_bytes()); // match length
        b.extend_from_slice(&u32::MAX.to_be_bytes()); // out_port: any
        b.extend_from_slice(&[0xff, 0, 0, 0]); // all tables, pad
        b.extend_from_slice(&[0, 1, 0, 4, 0, 0, 0, 0]); // empty OXM match
        c.send(18, &b)?; // OFPT_MULTIPART_REQUEST
        c.barrier()?;
        let sock = c.sock.try_clone()?;
        sock.set_read_timeout(None)?;
        let reader = std::thread::spawn(move || while c.recv_or_echo().is_ok() {});
        Ok(BareMonitor { sock, reader })
    }

    fn detach(self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let _ = self.reader.join();
    }
}

/// Applies 10 changes per second for `secs` (add, then strict delete, of churn flows) over one
/// persistent OpenFlow connection, calling `during` once per change slot with the elapsed time.
fn churn(ovs: &Ovs, secs: u64, mut during: impl FnMut(Duration)) -> Result<()> {
    let mut conn = FlowMods::connect(ovs)?;
    let t0 = Instant::now();
    let total = secs * 10;
    for i in 0..total {
        let due = Duration::from_millis(i * 100);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        conn.churn_flow((i / 2 % 250) as u32, i % 2 == 0)?;
        during(t0.elapsed());
    }
    Ok(())
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Runs the flow benchmarks against `pinflow_bin` (the one-shot dumps against `oneshot_bin`, the
/// shipped static binary unless told otherwise) and prints the report.
pub fn run(pinflow_bin: &Path, oneshot_bin: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the flow bench needs root (private OVS)"
    );
    let steady_secs: u64 = std::env::var("PINFLOW_BENCH_FLOWS_STEADY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if crate::bench_table::quick() { 5 } else { 30 });
    let warmup_secs = if crate::bench_table::quick() {
        2
    } else {
        WARMUP_SECS
    };
    let dirty_reps: u32 = if crate::bench_table::quick() { 5 } else { 20 };
    crate::util::step("flow bench: private OVS with a 200-port bridge");
    let ovs = Ovs::start();
    let names: Vec<String> = (1..=PORTS).map(|p| format!("tapb{p}")).collect();
    let ports: Vec<(&str, u32)> = names
        .iter()
        .zip(1..)
        .map(|(n, p)| (n.as_str(), p))
        .collect();
    ovs.add_bridge(BRIDGE, &ports);
    let vs = vswitchd_pid(&ovs)?;

    if let Some(hold) = std::env::var_os("PINFLOW_BENCH_FLOWS_HOLD") {
        // Profiling aid: leave the 100 000-flow bridge up until the named file is removed.
        let n: usize = std::env::var("PINFLOW_BENCH_FLOWS_HOLD_N")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(100_000);
        load_flows(&ovs, n)?;
        std::fs::write(&hold, ovs.run_dir().to_string_lossy().as_bytes())?;
        println!(
            "OVS run dir {} ({BRIDGE}, {n} flows); remove {} to stop",
            ovs.run_dir().display(),
            Path::new(&hold).display()
        );
        while Path::new(&hold).exists() {
            std::thread::sleep(Duration::from_millis(500));
        }
        return Ok(());
    }
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut costs = Vec::new();
    // `PINFLOW_BENCH_FLOWS_QUICK=1`: only the serve parts (RSS, latency, steady state).
    let quick = std::env::var_os("PINFLOW_BENCH_FLOWS_QUICK").is_some();
    // `--quick` (the bench's, not this part's own serve-only mode): a tenth of each size, so
    // that each row keeps its place.
    let sizes: [usize; 3] = if crate::bench_table::quick() {
        [100, 1_000, 10_000]
    } else {
        [1_000, 10_000, 100_000]
    };
    // `PINFLOW_BENCH_FLOWS_SERVE_N` (quick mode only): mirror this many flows instead of 100 000
    // (sizing the memory limit, e.g. 200 000).
    let serve_n: usize = std::env::var("PINFLOW_BENCH_FLOWS_SERVE_N")
        .ok()
        .filter(|_| quick)
        .and_then(|s| s.parse().ok())
        .unwrap_or(sizes[2]);
    if quick {
        load_flows(&ovs, serve_n)?;
    }
    for n in sizes.into_iter().filter(|_| !quick) {
        crate::util::step(&format!(
            "flow bench: {n} flows, {} dumps by each client",
            reps()
        ));
        load_flows(&ovs, n)?;
        let c = dump_costs(&ovs, oneshot_bin, n)?;
        costs.push((n, c));
    }

    crate::util::step(&format!(
        "flow bench: pinflow serve mirroring {serve_n} flows"
    ));
    let serve = Serve::start(pinflow_bin, &ovs)?;
    let t0 = Instant::now();
    // Each poll is a scrape: its latency while the table is mirrored and indexed.
    let mut mirror_scrapes = Vec::new();
    ensure!(
        wait_until(Duration::from_secs(120), || {
            let t = Instant::now();
            let n = serve.flows();
            mirror_scrapes.push(t.elapsed());
            n >= serve_n as f64
        }),
        "pinflow did not mirror {serve_n} flows in 120 s"
    );
    let mirror_time = t0.elapsed();
    // CPU rather than wall time: the machine is shared, the process's own CPU is not.
    let mirror_cpu = proc_cpu(serve.child.id());
    std::thread::sleep(Duration::from_secs(3));
    let rss_mib = serve.rss_kib() as f64 / 1024.0;
    println!(
        "mirrored {serve_n} flows in {:.2} s ({:.0} ms CPU since start): RSS {rss_mib:.1} MiB, peak (VmHWM) {:.1} MiB",
        mirror_time.as_secs_f64(),
        mirror_cpu.as_secs_f64() * 1e3,
        serve.peak_rss_kib() as f64 / 1024.0
    );
    let dirty_rules: Vec<(String, f64)> = select(
        &serve.samples(),
        "pinflow_ovs_dirty_flows",
        &[("bridge", BRIDGE)],
    )
    .iter()
    .filter(|s| s.value > 0.0)
    .map(|s| (s.labels.get("rule").cloned().unwrap_or_default(), s.value))
    .collect();
    if !dirty_rules.is_empty() {
        eprintln!("note: the generated table has dirty flows: {dirty_rules:?}");
    }

    // (c) latency of a dirty flow to /metrics: after a quiet second (read at once), and right
    // after the previous repetition's changes (a stream: read at the end of the mirror's batch
    // window, 500 ms).
    crate::util::step(&format!(
        "flow bench: add-flow of a dirty flow → /metrics, {dirty_reps} times after a quiet second, {dirty_reps} times in a stream"
    ));
    let mgmt = BRIDGE;
    let rule = "output_to_missing_port";
    let (mut lat_quiet, mut lat) = (Vec::new(), Vec::new());
    for i in 0..dirty_reps * 2 {
        let quiet = i < dirty_reps;
        if quiet {
            std::thread::sleep(Duration::from_millis(1100));
        }
        let before = serve.dirty(rule).unwrap_or(0.0);
        let flow = format!("table=94,priority=30,reg6=0xfff,dl_dst=fa:16:3e:ff:ff:{i:02x}");
        let t = Instant::now();
        let st = ofctl_cmd(
            &ovs,
            &[
                "add-flow",
                mgmt,
                &format!("cookie={COOKIE:#x},{flow},actions=output:{}", 4000 + i),
            ],
        )
        .status()?;
        ensure!(st.success(), "add-flow failed");
        ensure!(
            wait_until(Duration::from_secs(10), || serve.dirty(rule).unwrap_or(0.0)
                > before),
            "dirty flow {i} not reported within 10 s"
        );
        if quiet { &mut lat_quiet } else { &mut lat }.push(t.elapsed());
        let st = ofctl_cmd(&ovs, &["--strict", "del-flows", mgmt, &flow]).status()?;
        ensure!(st.success(), "del-flows failed");
        ensure!(
            wait_until(Duration::from_secs(10), || serve.dirty(rule).unwrap_or(0.0)
                <= before),
            "dirty flow {i} not cleared within 10 s"
        );
    }
    let lat_p50 = median(lat.clone());
    let lat_max = lat.iter().max().copied().unwrap_or_default();
    let quiet_p50 = median(lat_quiet.clone());
    let quiet_max = lat_quiet.iter().max().copied().unwrap_or_default();

    // (b) steady state: pinflow + ovs-vswitchd with changes.
    crate::util::step(&format!(
        "flow bench: steady state, 10 changes/s for {steady_secs} s"
    ));
    let pid = serve.child.id();
    // Warm-up: the index builds a shape group's projection onto another shape on first use, so
    // the first changes into a big table cost more; steady state is what follows.
    let w0 = proc_cpu(pid);
    churn(&ovs, warmup_secs, |_| {})?;
    let warmup = proc_cpu(pid).saturating_sub(w0);
    let (p0, v0) = (proc_cpu(pid), proc_cpu(vs));
    churn(&ovs, steady_secs, |_| {})?;
    let (pin_steady, vs_with) = (
        proc_cpu(pid).saturating_sub(p0),
        proc_cpu(vs).saturating_sub(v0),
    );
    let rss_after_mib = serve.rss_kib() as f64 / 1024.0;
    drop(serve);
    std::thread::sleep(Duration::from_secs(1));
    // The same changes without pinflow: ovs-vswitchd's own cost of applying them.
    let v0 = proc_cpu(vs);
    churn(&ovs, steady_secs, |_| {})?;
    let vs_alone = proc_cpu(vs).saturating_sub(v0);
    // ... and with MONITORS bare flow monitors: its cost per monitoring client is the slope.
    crate::util::step(&format!(
        "flow bench: steady state with {MONITORS} bare flow monitors attached"
    ));
    let monitors = (0..MONITORS)
        .map(|_| BareMonitor::attach(&ovs))
        .collect::<Result<Vec<_>>>()?;
    let v0 = proc_cpu(vs);
    churn(&ovs, steady_secs, |_| {})?;
    let vs_monitors = proc_cpu(vs).saturating_sub(v0);
    monitors.into_iter().for_each(BareMonitor::detach);
    let vs_per_monitor = vs_monitors.saturating_sub(vs_alone) / MONITORS;
    // The same changes with the cron job: dump + parse every 15 s.
    let (v0, mut cron_client, mut cron_dumps_vs) = (proc_cpu(vs), Duration::ZERO, Duration::ZERO);
    let mut next = Duration::ZERO;
    let mut cron_err = None;
    churn(&ovs, steady_secs, |el| {
        if el >= next && cron_err.is_none() {
            next += Duration::from_secs(15);
            let d0 = proc_cpu(vs);
            let dump = run_measured(&mut ofctl_cmd(&ovs, &["dump-flows", mgmt]));
            cron_dumps_vs += proc_cpu(vs).saturating_sub(d0);
            match dump {
                Ok((text, cpu)) => {
                    let t = thread_cpu();
                    let parsed = parse_ofctl(&text);
                    cron_client += cpu + thread_cpu().saturating_sub(t);
                    drop(parsed);
                }
                Err(e) => cron_err = Some(e),
            }
        }
    })?;
    if let Some(e) = cron_err {
        return Err(e);
    }
    let vs_cron = proc_cpu(vs).saturating_sub(v0);
    drop(ovs);

    // Report.
    let head = [
        "measure".to_string(),
        "goal".into(),
        "measured".into(),
        "verdict".into(),
    ];
    rows.push(head);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" }.to_string();
    for (i, (n, c)) in costs.iter().enumerate() {
        let cron = c.ofctl + c.parse;
        // Plot: CPU per 30 s (a dump every 15 s: two) of the cron job and of `pinflow flows`
        // run the same way, each with ovs-vswitchd's share.
        let per30 = |d: Duration| 2.0 * d.as_secs_f64() * 1e3;
        crate::bench_table::point(
            "flows-cpu-per-30s",
            "cron: ovs-ofctl dump-flows + parse every 15 s (+ ovs-vswitchd)",
            *n as f64,
            per30(cron + c.vswitchd_ofctl),
        );
        crate::bench_table::point(
            "flows-cpu-per-30s",
            "pinflow flows every 15 s (+ ovs-vswitchd)",
            *n as f64,
            per30(c.pinflow + c.vswitchd_pinflow),
        );
        rows.push([
            format!("{n} flows: ovs-ofctl dump-flows CPU"),
            "-".into(),
            ms(c.ofctl),
            String::new(),
        ]);
        rows.push([
            format!("{n} flows: text parse CPU"),
            "-".into(),
            ms(c.parse),
            String::new(),
        ]);
        rows.push([
            format!("{n} flows: ovs-vswitchd CPU during ovs-ofctl dump"),
            "-".into(),
            ms(c.vswitchd_ofctl),
            String::new(),
        ]);
        rows.push([
            format!("{n} flows: ovs-vswitchd CPU during pinflow dump"),
            "-".into(),
            ms(c.vswitchd_pinflow),
            String::new(),
        ]);
        rows.push([
            format!("{n} flows: --no-stats text bytes per flow"),
            "-".into(),
            format!("{:.0} B", c.wire_bytes_per_flow),
            String::new(),
        ]);
        rows.push([
            format!("{n} flows: peak RSS, pinflow flows vs ovs-ofctl dump-flows"),
            "-".into(),
            format!(
                "{:.1} vs {:.1} MiB",
                c.rss_pinflow_kib as f64 / 1024.0,
                c.rss_ofctl_kib as f64 / 1024.0
            ),
            String::new(),
        ]);
        let ratio = cron.as_secs_f64() / c.pinflow.as_secs_f64().max(1e-9);
        // Goals of issues 3 and 13: 10 000 and 100 000 flows (at 1 000, process start-up dominates).
        let goal_ms = match i {
            2 => "≤ 50 ms, ≥ 10× below",
            0 => "-",
            _ => "≥ 10× below",
        };
        rows.push([
            format!("{n} flows: pinflow flows --no-stats CPU (whole process)"),
            goal_ms.into(),
            format!(
                "{} ({ratio:.1}× below ofctl+parse {}; min–max {}–{} vs {}–{})",
                ms(c.pinflow),
                ms(cron),
                ms(c.spread[0].0),
                ms(c.spread[0].1),
                ms(c.spread[1].0),
                ms(c.spread[1].1)
            ),
            if i == 0 {
                String::new()
            } else {
                verdict(ratio >= 10.0 && (i != 2 || c.pinflow <= Duration::from_millis(50)))
            },
        ]);
    }
    // pinflow's own CPU (measured on its process alone) plus what its monitor costs ovs-vswitchd
    // (the per-client slope above; the direct difference `vs_with - vs_alone` is shown too, but it
    // is a difference of two noisy ~0.5 s numbers).
    let pin_total = pin_steady + vs_per_monitor;
    // ovs-vswitchd's share of the cron job: its CPU while each dump ran (measured around the dump,
    // so the changes' own cost during those ~0.3 s is noise of a few ms, not a difference of two
    // 30 s totals).
    let cron_total = cron_client + cron_dumps_vs;
    let ratio = cron_total.as_secs_f64() / pin_total.as_secs_f64().max(1e-9);
    let per30 = |d: Duration| d.as_secs_f64() * 1e3 * 30.0 / steady_secs.max(1) as f64;
    crate::bench_table::point(
        "flows-cpu-per-30s",
        "pinflow serve mirroring, 10 changes/s (+ ovs-vswitchd per monitor)",
        serve_n as f64,
        per30(pin_total),
    );
    crate::bench_table::point(
        "flows-cpu-per-30s",
        "cron measured under 10 changes/s (+ ovs-vswitchd during the dumps)",
        serve_n as f64,
        per30(cron_total),
    );
    rows.push([
        "steady state: ovs-vswitchd applying the changes alone".to_string(),
        "-".into(),
        ms(vs_alone),
        String::new(),
    ]);
    rows.push([
        "steady state: pinflow serve CPU".to_string(),
        "-".into(),
        format!(
            "{} (after a {warmup_secs} s warm-up at the same rate: {})",
            ms(pin_steady),
            ms(warmup)
        ),
        String::new(),
    ]);
    rows.push([
        "steady state: ovs-vswitchd with pinflow (incl. changes)".to_string(),
        "-".into(),
        ms(vs_with),
        String::new(),
    ]);
    rows.push([
        format!("steady state: ovs-vswitchd with {MONITORS} bare monitors (incl. changes)"),
        "-".into(),
        format!("{} ({} per monitor)", ms(vs_monitors), ms(vs_per_monitor)),
        String::new(),
    ]);
    rows.push([
        "steady state: cron ofctl+parse CPU / ovs-vswitchd (incl. changes)".to_string(),
        "-".into(),
        format!(
            "{} / {} ({} of it during the dumps)",
            ms(cron_client),
            ms(vs_cron),
            ms(cron_dumps_vs)
        ),
        String::new(),
    ]);
    rows.push([
        "steady state: total CPU pinflow+vswitchd per monitor vs cron".to_string(),
        "≥ 40× less (issue 13)".into(),
        format!(
            "{} vs {} ({ratio:.1}×) over {steady_secs} s at {serve_n} flows",
            ms(pin_total),
            ms(cron_total)
        ),
        verdict(ratio >= 40.0),
    ]);
    mirror_scrapes.sort();
    rows.push([
        format!("/metrics while pinflow mirrors {serve_n} flows (each poll of the mirror wait)"),
        "-".into(),
        format!(
            "median {} / max {} over {} scrapes in {}",
            ms(mirror_scrapes
                .get(mirror_scrapes.len() / 2)
                .copied()
                .unwrap_or_default()),
            ms(mirror_scrapes.last().copied().unwrap_or_default()),
            mirror_scrapes.len(),
            ms(mirror_time)
        ),
        String::new(),
    ]);
    rows.push([
        format!("add-flow of a dirty flow → /metrics after a second without changes (median of {dirty_reps})"),
        "≤ 1 s".into(),
        format!("{} (max {})", ms(quiet_p50), ms(quiet_max)),
        verdict(quiet_max <= Duration::from_secs(1)),
    ]);
    rows.push([
        format!(
            "add-flow of a dirty flow → /metrics right after other changes (median of {dirty_reps})"
        ),
        "≤ 1 s".into(),
        format!(
            "{} (max {}; updates of a stream are read every 500 ms)",
            ms(lat_p50),
            ms(lat_max)
        ),
        verdict(lat_max <= Duration::from_secs(1)),
    ]);
    rows.push([
        format!("pinflow serve RSS, {serve_n} flows mirrored"),
        "≤ 32 MiB (issue 13)".into(),
        format!(
            "{rss_mib:.1} MiB (after churn {rss_after_mib:.1} MiB; mirrored in {})",
            ms(mirror_time)
        ),
        verdict(rss_mib <= 32.0),
    ]);
    let w: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    println!("\nOpenFlow tables: pinflow vs ovs-ofctl dump-flows + parse (issue 3)");
    for [what, goal, measured, verdict] in rows.iter().skip(1) {
        // What limits the rows whose goals are missed: the known costs of issue 13 (a profile
        // is not taken by this run).
        let limits = if what.contains("total CPU pinflow") {
            "~190 µs of pinflow CPU per change (perf stat and perf record of `pinflow serve` \
             under 10 changes/s, stop 21): ~26 % the epoll wake-up (a context switch costs tens \
             of µs on this VM), ~23 % reading and decoding the monitor update, ~19 % the index \
             (upsert/remove, re-evaluating related flows); 40× needs ~65 µs per change"
        } else if what.contains("serve RSS") {
            "~190 B of heap per mirrored flow plus ~10 MB of mapped code (issue 13)"
        } else if what.contains("pinflow flows --no-stats") {
            "measured on the shipped static binary (`cargo xtask dist`; `PINFLOW_BIN` or \
             `PINFLOW_ONESHOT_BIN` name another). ~0.8 ms of task-clock is spent on an empty \
             table too (perf stat; the glibc build: ~1.4 ms, its loader, libraries and cpuid \
             traps), mostly in the kernel (exec, ~150 page faults, exit, the socket and runtime \
             set-up); per flow ~3 100 user instructions (cachegrind of the glibc build, 31.2M for \
             10 000 flows: match decode ~1 100, match text ~1 400, line assembly and actions \
             cache ~250) and about as much CPU again in the kernel (socket and pipe copies, \
             freeing the switch's socket buffers, waking the reader)"
        } else {
            ""
        };
        // `--quick` runs this part in the debug xtask (no optimised rebuild): the cron job's
        // parse is then slower than a real one, which flatters pinflow; the row says so.
        let debug_parse = cfg!(debug_assertions)
            && ["parse", "pinflow flows --no-stats", "total CPU"]
                .iter()
                .any(|k| what.contains(k));
        let measured = if debug_parse {
            format!("{measured} [parse timed in a debug build: the cron side is inflated]")
        } else {
            measured.clone()
        };
        crate::bench_table::add_limited(
            "flows",
            what,
            goal,
            measured,
            (!verdict.is_empty()).then(|| verdict == "met"),
            limits,
        );
    }
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            let _ = write!(line, "{c:<width$}  ", width = w[i]);
        }
        println!("{}", line.trim_end());
    }
    Ok(())
}
