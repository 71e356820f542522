//! `cargo xtask bench --only pinning` (issue 12): what watching pinning costs, beside Debian's
//! `prometheus-libvirt-exporter` on the same host.
//!
//! Rows:
//! - `pinflow serve` (pinning collector only) with 10 and 60 real KVM domains × 4 vCPUs (half the
//!   domains pinned one vCPU per pCPU, half floating over a shared set) on the libvirt testbed;
//! - Debian's exporter on the same domains in the same window (both scraped every 15 s), with the
//!   CPU libvirtd spent meanwhile (the exporter's cost lives partly there; pinflow never calls
//!   libvirtd);
//! - `pinflow serve` on a generated fixture host of 200 domains × 8 vCPUs (libvirt status XML and
//!   procfs/cgroupfs trees under a temp root, read through `--libvirt-state-dir`, `--proc-root`,
//!   `--sys-root`: file reads only, as a container or a test reads them), laid out twice: as
//!   Nova places dedicated and shared instances on a large host (healthy: the goal's row), and
//!   with the pinned vCPUs crowded on 32 pCPUs (an overlap storm: every pinned vCPU a finding);
//! - `pinflow serve` on a synthetic host of 200 domains × 8 vCPUs made of real parked threads in
//!   real cpuset cgroups (`bench_threadhost`): the live path (syscalls, eBPF, inotify) at a scale
//!   the testbed's real VMs do not reach;
//! - after each host's event-driven row, `pinflow serve` in the fallback mode of a host where BPF
//!   is unavailable (`[pinning] ebpf = false`, `events = false`: a full procfs pass every
//!   interval), alone, for half the window (at least 5 s).
//!
//! Each row: CPU seconds per 60 s (the process CPU clock, in ns, over the idle window,
//! scrapes every 15 s included), the procfs pass duration (`pinflow_collect_duration_seconds
//! {source="procfs"}` as scraped: median and max), `/metrics` p50/p99 (the periodic scrapes plus
//! a burst of 200 after the window, so that p99 is not simply the maximum), VmHWM and VmRSS at the end, and the mode pinflow reports
//! (`pinflow_source_info`, when a build exposes it; else the sources' detail). pinflow is measured
//! as whatever `pinflow serve` does: nothing here depends on how the pass is driven. The binary
//! is the one that ships (the static build of `cargo xtask dist`; see `bench` in main.rs).
//!
//! Knobs (environment): `PINFLOW_BENCH_SECS` (idle window per row, default 60),
//! `PINFLOW_BENCH_DOMAINS` (real domain counts, default `10,60`; empty: none),
//! `PINFLOW_BENCH_FIXTURE_DOMAINS` (default 200; 0: no fixture row), `PINFLOW_BENCH_FIXTURE_DIR`
//! (generate the fixture host there and keep it), `PINFLOW_BENCH_THREAD_DOMAINS` (default 200;
//! 0: no real-thread row), `PINFLOW_BENCH_PINNING_HOLD=FILE` (once each count of real domains,
//! and the real-thread host, is up, write FILE and wait until it is removed: for profiling by
//! hand). Domains are named
//! `pinbench-N` and removed at the end. Needs root and the libvirt testbed (`cargo xtask setup`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use pinflow_tests::libvirt::{self, DomainSpec, RunningDomain};
use pinflow_tests::pinflow::free_addr;
use pinflow_tests::scrape::{self, Sample};

use crate::bench_threadhost::{self, DomainXml, ThreadHost};

/// Prefix of the domains this bench creates (never touches others).
const PREFIX: &str = "pinbench-";
/// Scrape interval of both exporters during the idle window.
const SCRAPE_EVERY: Duration = Duration::from_secs(15);
/// Scrapes in the burst after the window.
const BURST: usize = 200;
/// vCPUs per real domain.
const REAL_VCPUS: usize = 4;
/// vCPUs per fixture domain.
const FIXTURE_VCPUS: usize = 8;
/// The exporter's binary (Debian package `prometheus-libvirt-exporter`).
const EXPORTER: &str = "/usr/bin/prometheus-libvirt-exporter";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// One measured row.
#[derive(Debug, Default)]
struct Row {
    host: String,
    who: String,
    mode: String,
    cpu_per_60s: f64,
    libvirtd_per_60s: Option<f64>,
    pass_ms: Option<(f64, f64)>,
    p50_ms: f64,
    p99_ms: f64,
    hwm_kib: u64,
    rss_kib: u64,
    note: String,
}

/// A process being measured: pid and /metrics address.
struct Target {
    pid: u32,
    addr: SocketAddr,
    lat: Vec<Duration>,
    pass: Vec<f64>,
    last: Vec<Sample>,
    body_bytes: usize,
    cpu0: u64,
}

impl Target {
    fn new(pid: u32, addr: SocketAddr) -> Self {
        Target {
            pid,
            addr,
            lat: Vec::new(),
            pass: Vec::new(),
            last: Vec::new(),
            body_bytes: 0,
            cpu0: 0,
        }
    }

    fn scrape(&mut self) -> Result<()> {
        let t = Instant::now();
        let (code, body) = scrape::http_get(self.addr, "/metrics", Duration::from_secs(30))
            .with_context(|| format!("scraping {}", self.addr))?;
        self.lat.push(t.elapsed());
        if code != 200 {
            bail!("{} answered {code}", self.addr);
        }
        self.last = scrape::parse(&body);
        self.body_bytes = body.len();
        if let Some(s) = scrape::select(
            &self.last,
            "pinflow_collect_duration_seconds",
            &[("source", "procfs")],
        )
        .first()
        {
            self.pass.push(s.value);
        }
        Ok(())
    }
}

/// CPU time of process `pid` (all its threads, exited ones included), in nanoseconds: the
/// kernel's process CPU clock (`clock_getcpuclockid(3)`), exact where `/proc/PID/stat`'s
/// utime + stime come in clock ticks (10 ms here, a tenth of a 0.1 s bar). Falls back to those
/// ticks when the clock cannot be read.
fn cpu_ns(pid: u32) -> u64 {
    #[allow(unsafe_code)] // clock_getcpuclockid and clock_gettime have no safe wrapper.
    // SAFETY: both write only to the locals passed by pointer.
    let exact = unsafe {
        let mut clock: libc::clockid_t = 0;
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        (libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) == 0
            && libc::clock_gettime(clock, &mut ts) == 0)
            .then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    };
    exact.unwrap_or_else(|| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ((n(11) + n(12)) as f64 * 1e9 / ticks_per_second()) as u64
    })
}

fn ticks_per_second() -> f64 {
    #[allow(unsafe_code)] // sysconf has no safe wrapper.
    // SAFETY: sysconf takes an integer name and reads no memory.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// (VmHWM, VmRSS) of `pid`, KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn percentile(v: &[Duration], p: usize) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    v.get((v.len() * p / 100).min(v.len().saturating_sub(1)))
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

fn median_max(v: &[f64]) -> Option<(f64, f64)> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    Some((*v.get(v.len() / 2)?, *v.last()?))
}

/// The mode pinflow reports: `pinflow_source_info` labels when exposed, else the sources' detail.
fn pinflow_mode(t: &Target) -> String {
    let info: Vec<String> = t
        .last
        .iter()
        .filter(|s| s.name == "pinflow_source_info")
        .map(|s| {
            s.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    if !info.is_empty() {
        return info.join("; ");
    }
    let Some(src) = scrape::sources(t.addr) else {
        return "?".into();
    };
    let detail = |name: &str| {
        src.get(name).map(|v| {
            let up = v.get("up").and_then(serde_json::Value::as_bool);
            let d = v.get("detail").and_then(|d| d.as_str()).unwrap_or("");
            match up {
                Some(false) => format!("{name} down"),
                _ if d.is_empty() => name.to_string(),
                _ => format!("{name}: {d}"),
            }
        })
    };
    ["sched_bpf", "procfs"]
        .iter()
        .filter_map(|n| detail(n))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Scrapes every target at once every 15 s for `secs`, then a burst of [`BURST`] each. Returns
/// the CPU seconds per 60 s of each target (window only) and of the extra pids.
fn measure(targets: &mut [&mut Target], extra: &[u32], secs: u64) -> Result<(Vec<f64>, Vec<f64>)> {
    // Let start-up settle: every target answers and pinflow has finished a pass.
    std::thread::sleep(Duration::from_secs(3));
    for t in targets.iter_mut() {
        t.scrape()?;
        t.lat.clear();
        t.pass.clear();
    }
    let extra0: Vec<u64> = extra.iter().map(|&p| cpu_ns(p)).collect();
    for t in targets.iter_mut() {
        t.cpu0 = cpu_ns(t.pid);
    }
    let start = Instant::now();
    let window = Duration::from_secs(secs);
    loop {
        for t in targets.iter_mut() {
            t.scrape()?;
        }
        let next = SCRAPE_EVERY * u32::try_from(targets[0].lat.len()).unwrap_or(u32::MAX);
        if next >= window {
            break;
        }
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    if let Some(rest) = window.checked_sub(start.elapsed()) {
        std::thread::sleep(rest);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let scale = 60.0 / elapsed / 1e9;
    let cpu: Vec<f64> = targets
        .iter()
        .map(|t| cpu_ns(t.pid).saturating_sub(t.cpu0) as f64 * scale)
        .collect();
    let extra_cpu = extra
        .iter()
        .zip(extra0)
        .map(|(&p, c0)| cpu_ns(p).saturating_sub(c0) as f64 * scale)
        .collect();
    for t in targets.iter_mut() {
        for _ in 0..BURST {
            t.scrape()?;
        }
    }
    Ok((cpu, extra_cpu))
}

/// What pinflow saw: vCPUs (`pinflow_domain_vcpus`) and how many drift
/// (`pinflow_domain_drifted_vcpus`, any check: generated pins overlap between domains).
fn seen(t: &Target) -> String {
    let sum = |name: &str| -> f64 {
        t.last
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    };
    format!(
        "{} vCPUs seen, {} drift findings, /metrics {} KiB",
        sum("pinflow_domain_vcpus"),
        sum("pinflow_domain_drifted_vcpus"),
        t.body_bytes / 1024
    )
}

fn pinflow_row(host: &str, t: &Target, cpu: f64) -> Row {
    let (hwm, rss) = memory_kib(t.pid);
    Row {
        host: host.into(),
        who: "pinflow serve".into(),
        mode: pinflow_mode(t),
        cpu_per_60s: cpu,
        libvirtd_per_60s: None,
        pass_ms: median_max(&t.pass).map(|(a, b)| (a * 1e3, b * 1e3)),
        p50_ms: percentile(&t.lat, 50),
        p99_ms: percentile(&t.lat, 99),
        hwm_kib: hwm,
        rss_kib: rss,
        note: String::new(),
    }
}

/// A `pinflow serve` child, killed on drop.
struct Serve {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start(bin: &Path, args: &[String]) -> Result<Serve> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("pinflow.log");
        let addr = free_addr();
        let child = Command::new(bin)
            .arg("serve")
            .arg("--web.listen-address")
            .arg(addr.to_string())
            .args(["--no-collector.flows", "--no-collector.datapath"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let s = Serve {
            child,
            addr,
            log,
            _dir: dir,
        };
        s.wait_up()?;
        Ok(s)
    }

    fn wait_up(&self) -> Result<()> {
        let up = pinflow_tests::wait_for(Duration::from_secs(30), || {
            scrape::http_get(self.addr, "/metrics", Duration::from_secs(2))
                .ok()
                .filter(|(c, _)| *c == 200)
        });
        if up.is_none() {
            bail!(
                "{} did not answer /metrics:\n{}",
                self.addr,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        Ok(())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's exporter on a free port, killed on drop.
struct Exporter {
    child: Child,
    addr: SocketAddr,
}

impl Exporter {
    fn start() -> Result<Exporter> {
        let addr = free_addr();
        let child = Command::new(EXPORTER)
            .arg(format!("--web.listen-address={addr}"))
            .arg("--libvirt.export-nova-metadata")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {EXPORTER} (cargo xtask setup installs it)"))?;
        let e = Exporter { child, addr };
        let up = pinflow_tests::wait_for(Duration::from_secs(15), || {
            scrape::http_get(e.addr, "/metrics", Duration::from_secs(5))
                .ok()
                .filter(|(c, _)| *c == 200)
        });
        if up.is_none() {
            bail!("{EXPORTER} did not answer on {addr}");
        }
        Ok(e)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn libvirtd_pid() -> Option<u32> {
    let out = crate::util::output("pgrep", &["-x", "libvirtd"])?;
    out.lines().next()?.trim().parse().ok()
}

/// The real domains `from..to` (pinned: even index, one pCPU per vCPU; floating: odd index, the
/// domain's vCPUs share every pCPU).
fn real_domain(i: usize, cpus: usize) -> DomainSpec {
    let name = format!("{PREFIX}{i}");
    if i.is_multiple_of(2) {
        let pins: Vec<String> = (0..REAL_VCPUS)
            .map(|v| ((i + v) % cpus).to_string())
            .collect();
        let pins: Vec<&str> = pins.iter().map(String::as_str).collect();
        DomainSpec::pinned(&name, &pins).with_nova(&name, "bench", "b1.small")
    } else {
        let mut d = DomainSpec::pinned(&name, &[]).with_nova(&name, "bench", "b1.float");
        d.pins = vec![None; REAL_VCPUS];
        d.vcpu_cpuset = Some(format!("0-{}", cpus - 1));
        d
    }
}

pub(crate) fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// With `PINFLOW_BENCH_PINNING_HOLD=FILE`, for profiling by hand: writes `what` to FILE and
/// waits until FILE is removed (the host being measured stays up meanwhile).
fn hold(what: &str) -> Result<()> {
    let Some(hold) = std::env::var_os("PINFLOW_BENCH_PINNING_HOLD") else {
        return Ok(());
    };
    std::fs::write(&hold, format!("{what}\n"))?;
    eprintln!("==> {what}; remove {} to go on", hold.to_string_lossy());
    while Path::new(&hold).exists() {
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

/// Real-domain rows: for each count in `counts` (ascending), start domains up to it, then
/// measure pinflow and the exporter side by side.
fn real_rows(bin: &Path, counts: &[usize], secs: u64, rows: &mut Vec<Row>) -> Result<()> {
    let _daemons = libvirt::ensure_daemons()?;
    let mut running: Vec<RunningDomain> = Vec::new();
    let cpus = host_cpus();
    for &n in counts {
        while running.len() < n {
            let spec = real_domain(running.len(), cpus);
            running.push(libvirt::start(&spec).with_context(|| format!("starting {}", spec.name))?);
        }
        hold(&format!("{n} real domains up"))?;
        eprintln!("==> {n} real domains × {REAL_VCPUS} vCPUs: measuring for {secs} s");
        let serve = Serve::start(bin, &[])?;
        let exporter = Exporter::start()?;
        let mut pf = Target::new(serve.child.id(), serve.addr);
        let mut ex = Target::new(exporter.child.id(), exporter.addr);
        let libvirtd: Vec<u32> = libvirtd_pid().into_iter().collect();
        let (cpu, extra) = measure(&mut [&mut pf, &mut ex], &libvirtd, secs)?;
        let host = format!("{n} KVM domains × {REAL_VCPUS} vCPUs");
        let mut row = pinflow_row(&host, &pf, cpu[0]);
        row.note = seen(&pf);
        rows.push(row);
        let (hwm, rss) = memory_kib(ex.pid);
        let pinning_series = ex
            .last
            .iter()
            .filter(|s| s.name.contains("pin") || s.name.contains("affinity"))
            .count();
        rows.push(Row {
            host: host.clone(),
            who: "prometheus-libvirt-exporter".into(),
            mode: "libvirt API per scrape".into(),
            cpu_per_60s: cpu[1],
            libvirtd_per_60s: extra.first().copied(),
            pass_ms: None,
            p50_ms: percentile(&ex.lat, 50),
            p99_ms: percentile(&ex.lat, 99),
            hwm_kib: hwm,
            rss_kib: rss,
            note: format!("no pinning reported ({pinning_series} pinning/affinity series)"),
        });
        drop((serve, exporter));
        polling_row(bin, &host, &[], secs, rows)?;
    }
    for d in &running {
        libvirt::remove(&d.name);
    }
    Ok(())
}

/// A domain's libvirt status XML (`/run/libvirt/qemu/NAME.xml`) with Nova metadata: pinned
/// (`<vcpupin>` per vCPU, `<emulatorpin>` over all of them or as given) or floating (`<vcpu cpuset>`).
pub fn status_xml(d: &DomainXml) -> String {
    let (name, id, pid, n) = (&d.name, d.id, d.pid, d.vcpus.len());
    let mut xml = String::new();
    let _ = writeln!(
        xml,
        "<domstatus state='running' reason='booted' pid='{pid}'>\n  <vcpus>"
    );
    for (v, (tid, _)) in d.vcpus.iter().enumerate() {
        let _ = writeln!(xml, "    <vcpu id='{v}' pid='{tid}'/>");
    }
    let _ = writeln!(
        xml,
        "  </vcpus>\n  <domain type='kvm' id='{id}'>\n    <name>{name}</name>\n    <uuid>{}</uuid>",
        libvirt::uuid_for(name)
    );
    let _ = writeln!(
        xml,
        "    <metadata>\n      <nova:instance xmlns:nova=\"http://openstack.org/xmlns/libvirt/nova/1.1\">\n\
         \x20       <nova:name>{name}</nova:name>\n        <nova:flavor name=\"b1.large\"><nova:vcpus>{n}</nova:vcpus></nova:flavor>\n\
         \x20       <nova:owner><nova:user uuid=\"0f6c1c8e2f3a4b5c9d8e7f6a5b4c3d2e\">u</nova:user>\
         <nova:project uuid=\"a1b2c3d4e5f60718293a4b5c6d7e8f90\">bench</nova:project></nova:owner>\n\
         \x20     </nova:instance>\n    </metadata>\n    <memory unit='KiB'>262144</memory>"
    );
    match &d.float {
        None => {
            let _ = writeln!(
                xml,
                "    <vcpu placement='static'>{n}</vcpu>\n    <cputune>"
            );
            let pins: Vec<&str> = d.vcpus.iter().filter_map(|(_, p)| p.as_deref()).collect();
            for (v, pin) in pins.iter().enumerate() {
                let _ = writeln!(xml, "      <vcpupin vcpu='{v}' cpuset='{pin}'/>");
            }
            let _ = writeln!(
                xml,
                "      <emulatorpin cpuset='{}'/>\n    </cputune>",
                d.emulator.clone().unwrap_or_else(|| pins.join(","))
            );
        }
        Some(float) => {
            let _ = writeln!(
                xml,
                "    <vcpu placement='static' cpuset='{float}'>{n}</vcpu>"
            );
        }
    }
    xml.push_str("    <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>\n  </domain>\n</domstatus>\n");
    xml
}

/// How a generated host's pinned domains (every other one) use its pCPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// As Nova places instances with dedicated CPUs (`cpu_dedicated_set`, `cpu_shared_set`),
    /// after [`HOST_PCPUS`] kept for the host: each pinned vCPU alone on its own pCPU, the
    /// pinned domains' emulator threads and the floating domains over the [`SHARED_PCPUS`]
    /// shared pCPUs after them. A healthy host: no finding. Its floating vCPUs' affinity is
    /// still checked every interval (narrowed within the shared set, it would be `affinity`
    /// drift).
    Dedicated,
    /// The pinned vCPUs spread over [`SHARED_PCPUS`] pCPUs (25 per pCPU at 200 domains), the
    /// floating domains over as many others: every pinned vCPU overlaps another instance's, a
    /// finding whose threads are re-checked every interval. The worst case (a host in an
    /// overlap storm), not an idle one.
    Storm,
}

/// pCPUs the [`Layout::Dedicated`] host keeps for itself (Nova's `cpu_dedicated_set` and
/// `cpu_shared_set` leave them out): CPUs 0 and 1, which are also this machine's real ones, so
/// that its own tasks are not intruders on a fixture domain's dedicated pCPU.
const HOST_PCPUS: usize = 2;

/// pCPUs of the shared set (the [`Layout::Dedicated`] host) or of each half of the
/// [`Layout::Storm`] host.
const SHARED_PCPUS: usize = 32;

/// A generated host: `domains` × [`FIXTURE_VCPUS`] vCPUs (half the domains pinned, as [`Layout`]
/// says), cgroup v1 libvirt layout.
pub(crate) struct FixtureHost {
    /// A temp dir, or `PINFLOW_BENCH_FIXTURE_DIR` (kept, to run pinflow on it by hand).
    root: Result<tempfile::TempDir, PathBuf>,
}

impl FixtureHost {
    pub(crate) fn generate(domains: usize, layout: Layout) -> Result<FixtureHost> {
        let root = match std::env::var_os("PINFLOW_BENCH_FIXTURE_DIR") {
            Some(d) => Err(PathBuf::from(d)),
            None => Ok(tempfile::tempdir()?),
        };
        let host = FixtureHost { root };
        let dir = host.dir().to_path_buf();
        let state = dir.join("run-libvirt-qemu");
        let proc_root = dir.join("proc");
        let cg = dir.join("sys/fs/cgroup/cpuset/machine");
        std::fs::create_dir_all(&state)?;
        std::fs::create_dir_all(dir.join("sys/devices/system/cpu"))?;
        // Dedicated: the host's own pCPUs, one pCPU per pinned vCPU, then the shared set;
        // storm: 32 + 32.
        let (first, dedicated) = match layout {
            Layout::Dedicated => (HOST_PCPUS, domains.div_ceil(2) * FIXTURE_VCPUS),
            Layout::Storm => (0, SHARED_PCPUS),
        };
        let last = first + dedicated + SHARED_PCPUS - 1;
        let float = format!("{}-{last}", first + dedicated);
        std::fs::write(
            dir.join("sys/devices/system/cpu/online"),
            format!("0-{last}\n"),
        )?;
        let write = |p: &Path, text: &str| -> Result<()> {
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(p, text).with_context(|| p.display().to_string())
        };
        for i in 0..domains {
            let name = format!("{PREFIX}fx{i}");
            let id = i + 1;
            // Pids far above any real one (pid_max is 4 194 304): one process per domain, its
            // main thread, FIXTURE_VCPUS vCPU threads and two helper threads.
            let pid = 3_000_000 + (i as u32) * 16;
            let pinned = i.is_multiple_of(2);
            let pin_of = |v: usize| match layout {
                Layout::Dedicated => (first + i / 2 * FIXTURE_VCPUS + v).to_string(),
                Layout::Storm => ((i * FIXTURE_VCPUS + v) % SHARED_PCPUS).to_string(),
            };
            let float = float.as_str();
            let scope = format!("qemu-{id}-{name}.libvirt-qemu");
            let xml = status_xml(&DomainXml {
                name: name.clone(),
                id,
                pid,
                vcpus: (0..FIXTURE_VCPUS)
                    .map(|v| (pid + 1 + v as u32, pinned.then(|| pin_of(v))))
                    .collect(),
                float: (!pinned).then(|| float.to_string()),
                emulator: (layout == Layout::Dedicated).then(|| float.to_string()),
            });
            write(&state.join(format!("{name}.xml")), &xml)?;
            write(&state.join(format!("{name}.pid")), &pid.to_string())?;

            let pins = (0..FIXTURE_VCPUS).map(pin_of).collect::<Vec<_>>().join(",");
            let emu_cpus = if pinned && layout == Layout::Storm {
                pins.clone()
            } else {
                float.to_string()
            };
            // The domain's cgroup holds its children's CPUs (cgroup v1 cpusets nest).
            let scope_cpus = if pinned && layout == Layout::Dedicated {
                format!("{pins},{float}")
            } else {
                emu_cpus.clone()
            };
            write(
                &cg.join(&scope).join("cpuset.cpus"),
                &format!("{scope_cpus}\n"),
            )?;
            write(
                &cg.join(&scope).join("emulator/cpuset.cpus"),
                &format!("{emu_cpus}\n"),
            )?;
            let threads = std::iter::once((
                pid,
                "qemu-system-x86".to_string(),
                "emulator".to_string(),
                emu_cpus.clone(),
            ))
            .chain((0..FIXTURE_VCPUS).map(|v| {
                let cpus = if pinned { pin_of(v) } else { float.to_string() };
                (
                    pid + 1 + v as u32,
                    format!("CPU {v}/KVM"),
                    format!("vcpu{v}"),
                    cpus,
                )
            }))
            .chain((0..2u32).map(|h| {
                (
                    pid + 1 + FIXTURE_VCPUS as u32 + h,
                    format!("worker{h}"),
                    "emulator".to_string(),
                    emu_cpus.clone(),
                )
            }));
            for (tid, comm, leaf, cpus) in threads {
                let task = proc_root.join(format!("{pid}/task/{tid}"));
                if leaf.starts_with("vcpu") {
                    write(
                        &cg.join(&scope).join(&leaf).join("cpuset.cpus"),
                        &format!("{cpus}\n"),
                    )?;
                }
                let last = cpus.split([',', '-']).next().unwrap_or("0").to_string();
                write(
                    &task.join("stat"),
                    &format!(
                        "{tid} ({comm}) S 1 {pid} {pid} 0 -1 138412224 516 0 0 0 0 1814 0 0 20 0 6 0 32077 \
                         642846720 10385 18446744073709551615 1 1 0 0 0 0 2147219511 4096 16963 0 0 0 -1 {last} 0 0 0 0 0\n"
                    ),
                )?;
                write(
                    &task.join("status"),
                    &format!(
                        "Name:\t{comm}\nTgid:\t{pid}\nPid:\t{tid}\nCpus_allowed_list:\t{cpus}\n"
                    ),
                )?;
                write(&task.join("schedstat"), "18148376596 23734040313 5325\n")?;
                write(
                    &task.join("cgroup"),
                    &format!(
                        "4:memory:/machine/{scope}\n3:cpuset:/machine/{scope}/{leaf}\n\
                         1:cpu:/machine/{scope}/{leaf}\n0::/machine/{scope}/{leaf}\n"
                    ),
                )?;
                write(&task.join("comm"), &format!("{comm}\n"))?;
            }
        }
        eprintln!("    fixture host at {}", dir.display());
        Ok(host)
    }

    fn dir(&self) -> &Path {
        match &self.root {
            Ok(t) => t.path(),
            Err(d) => d,
        }
    }

    pub(crate) fn args(&self) -> Vec<String> {
        let r = self.dir();
        [
            ("--libvirt-state-dir", r.join("run-libvirt-qemu")),
            ("--proc-root", r.join("proc")),
            ("--sys-root", r.join("sys")),
        ]
        .into_iter()
        .flat_map(|(f, p)| [f.to_string(), p.to_string_lossy().into_owned()])
        .collect()
    }
}

/// Who the fallback rows measure.
const POLLING: &str = "pinflow serve, fallback (no eBPF)";

/// `pinflow serve` as it runs where BPF is unavailable: no sched probe and no event programs,
/// so a full procfs pass every interval (`[pinning] ebpf = false`, `events = false`). Measured
/// alone, after the event-driven row of the same host, for half its window (at least 5 s).
fn polling_row(
    bin: &Path,
    host: &str,
    args: &[String],
    secs: u64,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("pinflow.toml");
    std::fs::write(&cfg, "[pinning]\nebpf = false\nevents = false\n")?;
    let mut args = args.to_vec();
    args.extend(["--config".to_string(), cfg.to_string_lossy().into_owned()]);
    let window = (secs / 2).max(5);
    eprintln!("==> {host}: the fallback mode for {window} s");
    let serve = Serve::start(bin, &args)?;
    let mut pf = Target::new(serve.child.id(), serve.addr);
    let (cpu, _) = measure(&mut [&mut pf], &[], window)?;
    let mut row = pinflow_row(host, &pf, cpu[0]);
    row.who = POLLING.into();
    row.note = format!("{}; window {window} s", seen(&pf));
    rows.push(row);
    Ok(())
}

fn fixture_row(
    bin: &Path,
    domains: usize,
    layout: Layout,
    secs: u64,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let host_name = match layout {
        Layout::Dedicated => format!("fixture: {domains} domains × {FIXTURE_VCPUS} vCPUs"),
        Layout::Storm => {
            format!("fixture in an overlap storm: {domains} domains × {FIXTURE_VCPUS} vCPUs")
        }
    };
    eprintln!("==> {host_name}: measuring for {secs} s");
    let host = FixtureHost::generate(domains, layout)?;
    let serve = Serve::start(bin, &host.args())?;
    let mut pf = Target::new(serve.child.id(), serve.addr);
    let (cpu, _) = measure(&mut [&mut pf], &[], secs)?;
    let mut row = pinflow_row(&host_name, &pf, cpu[0]);
    row.note = format!(
        "{}; {}; files under --proc-root, read as a procfs of another pid namespace (no syscall)",
        seen(&pf),
        match layout {
            Layout::Dedicated => format!(
                "pCPUs 0-1 kept for the host, each pinned vCPU alone on its pCPU, emulators and floating domains on {SHARED_PCPUS} shared pCPUs"
            ),
            Layout::Storm => format!(
                "the pinned vCPUs spread over {SHARED_PCPUS} pCPUs, the floating over {SHARED_PCPUS} others"
            ),
        }
    );
    rows.push(row);
    drop(serve);
    polling_row(bin, &host_name, &host.args(), secs, rows)
}

/// The synthetic host of real threads and cgroups ([`bench_threadhost`]), measured as the
/// fixture host is.
fn thread_host_row(bin: &Path, domains: usize, secs: u64, rows: &mut Vec<Row>) -> Result<()> {
    eprintln!(
        "==> real-thread host, {domains} domains × {} vCPUs: measuring for {secs} s",
        bench_threadhost::VCPUS
    );
    let host = ThreadHost::start(domains, PREFIX, status_xml)?;
    hold(&format!(
        "real-thread host up (pinflow serve {})",
        host.args().join(" ")
    ))?;
    let serve = Serve::start(bin, &host.args())?;
    let mut pf = Target::new(serve.child.id(), serve.addr);
    let (cpu, _) = measure(&mut [&mut pf], &[], secs)?;
    let mut row = pinflow_row(
        &format!(
            "threads: {domains} domains × {} vCPUs",
            bench_threadhost::VCPUS
        ),
        &pf,
        cpu[0],
    );
    row.note = format!(
        "{}; real threads and cpuset cgroups, no QEMU (live /proc)",
        seen(&pf)
    );
    let name = row.host.clone();
    rows.push(row);
    drop(serve);
    polling_row(bin, &name, &host.args(), secs, rows)
}

fn table(rows: &[Row], secs: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| host | exporter | mode | CPU s / 60 s | libvirtd CPU s / 60 s | procfs pass ms (median / max) | /metrics p50 ms | p99 ms | VmHWM MiB | VmRSS MiB | note |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.3} | {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {} |",
            r.host,
            r.who,
            r.mode,
            r.cpu_per_60s,
            r.libvirtd_per_60s.map_or("-".into(), |c| format!("{c:.3}")),
            r.pass_ms
                .map_or("-".into(), |(m, x)| format!("{m:.2} / {x:.2}")),
            r.p50_ms,
            r.p99_ms,
            r.hwm_kib as f64 / 1024.0,
            r.rss_kib as f64 / 1024.0,
            r.note
        );
    }
    let _ = writeln!(
        out,
        "\nIdle window {secs} s per row, both exporters scraped every 15 s in it (CPU includes \
         those scrapes); latencies: those scrapes plus a burst of {BURST}; memory at the end."
    );
    out
}

/// Runs the pinning bench with the pinflow binary `bin`.
pub fn run(bin: &Path) -> Result<()> {
    let secs = env_num("PINFLOW_BENCH_SECS", 60).max(1);
    let counts: Vec<usize> = std::env::var("PINFLOW_BENCH_DOMAINS")
        .unwrap_or_else(|_| "10,60".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let fixture = env_num("PINFLOW_BENCH_FIXTURE_DOMAINS", 200) as usize;
    let mut rows = Vec::new();
    let mut counts = counts;
    counts.sort_unstable();
    let real = if counts.is_empty() {
        Ok(())
    } else {
        real_rows(bin, &counts, secs, &mut rows)
    };
    // Domains this bench may have left behind after an error.
    if real.is_err() {
        for i in 0..counts.last().copied().unwrap_or(0) {
            libvirt::remove(&format!("{PREFIX}{i}"));
        }
    }
    real?;
    if fixture > 0 {
        fixture_row(bin, fixture, Layout::Dedicated, secs, &mut rows)?;
        fixture_row(bin, fixture, Layout::Storm, secs, &mut rows)?;
    }
    let threads = env_num("PINFLOW_BENCH_THREAD_DOMAINS", 200) as usize;
    if threads > 0 {
        thread_host_row(bin, threads, secs, &mut rows)?;
    }
    println!("\n{}", table(&rows, secs));
    add_to_bench_table(&rows);
    Ok(())
}

/// What an idle row's CPU goes to, by host (perf of the static build's frame-pointer twin, stop
/// 27 and 28): shown where the row misses its goal.
fn cpu_limits(host: &str) -> &'static str {
    if host.starts_with("threads") || host.contains("overlap storm") {
        "an overlap storm, not an idle host: every pinned vCPU shares its pCPU with others (the \
         real-thread host has this machine's 2 pCPUs only), so each is a finding whose affinity \
         is re-checked every interval (`sched_getaffinity(2)`, or a `status` read for files), and \
         the intrusion counters of every shared pCPU move on every tick (the per-pCPU windows, \
         verdicts and report are rebuilt then); the full pass every 60 s reads 5 files per thread"
    } else if host.starts_with("fixture") {
        "every interval: the floating vCPUs' affinity (one `pread(2)` of each kept `status` file: \
         a narrowed affinity is `affinity` drift), ~45 % of the ticks; every 60 s: the full pass, \
         5 files per thread (stat, status, cgroup, schedstat, comm) for 2 200 threads"
    } else {
        "per full pass (every 60 s): the reads per thread, `/proc/TID/cgroup` the dearest (14 % \
         of the pass: this machine mounts 10 cgroup v1 hierarchies), then the path walks and each \
         domain's `memory.numa_stat`; per tick: `sched_getaffinity(2)` of the floating vCPUs \
         (~36 % of the ticks) and the placement counters"
    }
}

/// The issue-12 claims in `cargo xtask bench`'s one table: idle CPU, /metrics p99, peak memory.
fn add_to_bench_table(rows: &[Row]) {
    for (i, r) in rows.iter().enumerate() {
        if r.who == POLLING {
            crate::bench_table::add(
                "pinning",
                &format!(
                    "{}: fallback mode (no eBPF): CPU per 60 s idle; p99; VmHWM",
                    r.host
                ),
                "",
                format!(
                    "{:.3} s; {:.2} ms; {:.1} MiB ({}; {})",
                    r.cpu_per_60s,
                    r.p99_ms,
                    r.hwm_kib as f64 / 1024.0,
                    r.mode,
                    r.note
                ),
                None,
            );
            continue;
        }
        if r.who != "pinflow serve" {
            continue;
        }
        let peer = rows
            .get(i + 1)
            .filter(|p| p.host == r.host && p.who != r.who && p.who != POLLING)
            .map_or(String::new(), |p| {
                format!(
                    "; {}: {:.3} s + libvirtd {} s, p99 {:.1} ms, no pinning",
                    p.who,
                    p.cpu_per_60s,
                    p.libvirtd_per_60s.map_or("?".into(), |c| format!("{c:.3}")),
                    p.p99_ms
                )
            });
        let fixture = r.host.starts_with("fixture") || r.host.starts_with("threads");
        let cpu_goal = if fixture {
            Some(0.3)
        } else if r.host.starts_with("60 ") {
            Some(0.1)
        } else {
            None
        };
        let pass = r.pass_ms.map_or(String::new(), |(m, x)| {
            format!(", procfs pass {m:.1} ms median, {x:.1} max")
        });
        crate::bench_table::add_limited(
            "pinning",
            &format!("{}: pinflow CPU per 60 s idle, scraped every 15 s", r.host),
            cpu_goal.map_or("", |g| {
                if g < 0.2 {
                    "≤ 0.1 s (issue 12)"
                } else {
                    "≤ 0.3 s (issue 12)"
                }
            }),
            format!("{:.3} s ({}{pass}){peer}", r.cpu_per_60s, r.mode),
            cpu_goal.map(|g| r.cpu_per_60s <= g),
            cpu_limits(&r.host),
        );
        let lat_goal = cpu_goal.is_some();
        crate::bench_table::add(
            "pinning",
            &format!("{}: /metrics p50 / p99", r.host),
            if lat_goal {
                "p99 ≤ 5 ms (issue 12)"
            } else {
                ""
            },
            format!("{:.2} / {:.2} ms", r.p50_ms, r.p99_ms),
            lat_goal.then_some(r.p99_ms <= 5.0),
        );
        // Issue 12: peak memory on the KVM testbed; issue 13 (row 5): RSS at 200 domains.
        let (hwm, rss) = (r.hwm_kib as f64 / 1024.0, r.rss_kib as f64 / 1024.0);
        let (mem_goal, mem_met) = if fixture {
            ("VmRSS ≤ 20 MiB (issue 13)", rss <= 20.0)
        } else {
            ("VmHWM ≤ 20 MiB (issue 12)", hwm <= 20.0)
        };
        crate::bench_table::add(
            "pinning",
            &format!("{}: pinflow VmHWM / VmRSS after the window", r.host),
            mem_goal,
            format!("{hwm:.1} / {rss:.1} MiB"),
            Some(mem_met),
        );
    }
}
