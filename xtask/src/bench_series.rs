//! `cargo xtask bench --only series` (issue 13, row 7): series per host on a realistic generated
//! hypervisor, against the budget of docs/metrics.md (≤ 13 per instance, ≤ 4 per instance port,
//! ≤ 205 per host besides them when healthy; DESIGN said 12 and 150 before issues 14 and 15), and the same count for Debian's
//! `prometheus-libvirt-exporter` on real domains.
//!
//! The hypervisor: 40 instances × 8 vCPUs from the pinning bench's fixture host (libvirt status
//! XML, procfs and cgroupfs trees read through `--libvirt-state-dir`, `--proc-root`,
//! `--sys-root`), and a private, real Open vSwitch with Neutron's three bridges: `br-int` with the
//! 80 instance ports (two per instance) and the flow bench's generated Neutron table, `br-tun`
//! and `br-ex` with their patch ports and an uplink. The host has no `openvswitch.ko`, so the OVS
//! runs the userspace datapath and pinflow's kernel-datapath families have no series here (the
//! row says so; docs/metrics.md counts them on the guest's reference host).
//!
//! The exporter runs on a few real KVM domains (`pinseries-N`, 4 vCPUs, removed at the end):
//! its series per instance are the series that name one of those domains.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use pinflow_tests::libvirt::{self, DomainSpec};
use pinflow_tests::ovs::Ovs;
use pinflow_tests::pinflow::free_addr;
use pinflow_tests::scrape::{self, Sample};

/// Instances of the generated hypervisor.
const INSTANCES: usize = 40;
/// OVS ports per instance.
const PORTS_PER_INSTANCE: usize = 2;
/// Real domains the exporter is measured on.
const REAL_DOMAINS: usize = 2;
/// Prefix of the real domains this part creates (never touches others).
const PREFIX: &str = "pinseries-";
/// The budget (docs/metrics.md "Series budget", DESIGN.md).
const PER_INSTANCE: f64 = 13.0;
const PER_PORT: f64 = 4.0;
const PER_HOST: usize = 205;
/// `pinflow_pcpu_stolen_seconds_total` series per dedicated vCPU (one pCPU each): one per
/// intruder class (docs/metrics.md).
const PER_DEDICATED_VCPU: usize = 5;

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: std::net::SocketAddr) -> Option<Vec<Sample>> {
    scrape::http_get(addr, "/metrics", Duration::from_secs(10))
        .ok()
        .filter(|(c, _)| *c == 200)
        .map(|(_, b)| scrape::parse(&b))
}

/// Series count by family (the sample name).
fn by_family<'a>(s: impl Iterator<Item = &'a Sample>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for x in s {
        *m.entry(x.name.clone()).or_insert(0) += 1;
    }
    m
}

fn families(m: &BTreeMap<String, usize>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn names_any(s: &Sample, f: impl Fn(&str) -> bool) -> bool {
    s.labels.values().any(|v| f(v))
}

/// The generated hypervisor's OVS: br-int (instance taps, Neutron flows), br-tun, br-ex.
fn neutron_ovs(flows: usize) -> Result<Ovs> {
    let ovs = Ovs::start();
    let taps: Vec<String> = (0..INSTANCES * PORTS_PER_INSTANCE)
        .map(|p| format!("tapser{p:04}-0"))
        .collect();
    let ports: Vec<(&str, u32)> = taps
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i as u32 + 1))
        .collect();
    ovs.add_bridge("br-int", &ports);
    ovs.add_bridge("br-tun", &[]);
    ovs.add_bridge("br-ex", &[("eth-uplink", 1)]);
    for (br, port, peer, ofport) in [
        ("br-int", "patch-tun", "patch-int", 900),
        ("br-tun", "patch-int", "patch-tun", 1),
        ("br-int", "int-br-ex", "phy-br-ex", 901),
        ("br-ex", "phy-br-ex", "int-br-ex", 2),
    ] {
        ovs.vsctl(&[
            "add-port",
            br,
            port,
            "--",
            "set",
            "interface",
            port,
            "type=patch",
            &format!("options:peer={peer}"),
            &format!("ofport_request={ofport}"),
        ]);
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("br-int.flows");
    std::fs::write(
        &file,
        crate::bench_flows::neutron_flows(flows, (INSTANCES * PORTS_PER_INSTANCE) as u32),
    )?;
    ovs.ofctl(&["replace-flows", "br-int", &file.to_string_lossy()]);
    let tun = dir.path().join("br-tun.flows");
    std::fs::write(
        &tun,
        "table=0,priority=1,in_port=1,actions=resubmit(,2)\n\
         table=0,priority=0,actions=drop\n\
         table=2,priority=0,actions=resubmit(,22)\n\
         table=4,priority=0,actions=drop\n\
         table=10,priority=1,actions=output:1\n\
         table=20,priority=0,actions=resubmit(,22)\n\
         table=22,priority=0,actions=drop\n",
    )?;
    ovs.ofctl(&["replace-flows", "br-tun", &tun.to_string_lossy()]);
    let ex = dir.path().join("br-ex.flows");
    std::fs::write(
        &ex,
        "table=0,priority=2,in_port=2,actions=drop\ntable=0,priority=0,actions=NORMAL\n",
    )?;
    ovs.ofctl(&["replace-flows", "br-ex", &ex.to_string_lossy()]);
    Ok(ovs)
}

/// pinflow's series on the generated hypervisor: (rows' text, per-instance, per-port, host).
/// pinflow's healthy series, by where docs/metrics.md budgets them.
struct Counts {
    per_instance: f64,
    per_port: f64,
    /// Per host, besides instances, their ports and the stolen time.
    host: usize,
    /// `pinflow_pcpu_stolen_seconds_total` series (≤ 5 per dedicated vCPU).
    stolen: usize,
    /// Dedicated pCPUs those series are about.
    dedicated: usize,
    /// The families and sources, for the row.
    text: String,
}

fn pinflow_series(bin: &Path, flows: usize) -> Result<Counts> {
    let host = crate::bench_pinning::FixtureHost::generate(
        INSTANCES,
        crate::bench_pinning::Layout::Storm,
    )?;
    let ovs = neutron_ovs(flows)?;
    let addr = free_addr();
    let log = tempfile::NamedTempFile::new()?;
    let _serve = Killed(
        Command::new(bin)
            .arg("serve")
            .arg("--web.listen-address")
            .arg(addr.to_string())
            .arg("--ovs-run-dir")
            .arg(ovs.run_dir())
            .args(host.args())
            .stdout(Stdio::null())
            .stderr(log.reopen()?)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?,
    );
    // Healthy and complete: the OpenFlow source up with br-int's table mirrored, every
    // instance seen.
    let ready = pinflow_tests::wait_for(Duration::from_secs(60), || {
        let s = get(addr)?;
        let mirrored: f64 = scrape::select(&s, "pinflow_ovs_flows", &[("bridge", "br-int")])
            .iter()
            .map(|x| x.value)
            .sum();
        let domains = scrape::select(&s, "pinflow_instance_info", &[]).len();
        (scrape::source_up(&s, "openflow") == Some(1.0)
            && mirrored >= flows as f64
            && domains >= INSTANCES)
            .then_some(s)
    });
    let Some(_) = ready else {
        bail!(
            "pinflow did not show {INSTANCES} instances and {flows} br-int flows in 60 s:\n{}",
            std::fs::read_to_string(log.path()).unwrap_or_default()
        );
    };
    // One more pass so that every source has run at least twice.
    std::thread::sleep(Duration::from_secs(3));
    let s = get(addr).context("scraping pinflow")?;
    let instance = |x: &Sample| names_any(x, |v| v.starts_with("pinbench-fx"));
    let port = |x: &Sample| names_any(x, |v| v.starts_with("tapser"));
    // Healthy: the budget leaves out findings (the fixture's pinned domains share pCPUs, so
    // pinflow reports drifting vCPUs; they are counted apart).
    let finding = |x: &Sample| x.name == "pinflow_vcpu_pinning_drift";
    let findings = s.iter().filter(|x| finding(x)).count();
    // Stolen time names the owner domain but grows with its dedicated vCPUs (one pCPU each),
    // not with instances: docs/metrics.md keeps it outside the per-instance line.
    let stolen = |x: &Sample| x.name == "pinflow_pcpu_stolen_seconds_total";
    let stolen_series = s.iter().filter(|x| stolen(x)).count();
    let dedicated: std::collections::BTreeSet<&String> = s
        .iter()
        .filter(|x| stolen(x))
        .filter_map(|x| x.labels.get("cpu"))
        .collect();
    let inst = s
        .iter()
        .filter(|x| instance(x) && !finding(x) && !stolen(x))
        .count();
    let ports = s.iter().filter(|x| !instance(x) && port(x)).count();
    let rest: Vec<&Sample> = s
        .iter()
        .filter(|x| !instance(x) && !port(x) && !finding(x) && !stolen(x))
        .collect();
    let down: Vec<String> = scrape::select(&s, "pinflow_source_up", &[])
        .iter()
        .filter(|x| x.value == 0.0)
        .filter_map(|x| x.labels.get("source").cloned())
        .collect();
    let text = format!(
        "{} series in all, {findings} of them drift findings (pinflow_vcpu_pinning_drift: the \
         fixture's pinned domains share pCPUs) left out of the healthy figures; by family: {}; \
         sources down: {}",
        s.len(),
        families(&by_family(s.iter())),
        if down.is_empty() {
            "none".into()
        } else {
            down.join(", ")
        }
    );
    Ok(Counts {
        per_instance: inst as f64 / INSTANCES as f64,
        per_port: ports as f64 / (INSTANCES * PORTS_PER_INSTANCE) as f64,
        host: rest.len(),
        stolen: stolen_series,
        dedicated: dedicated.len(),
        text,
    })
}

/// The exporter's series on `REAL_DOMAINS` real domains: (per instance, host, families text).
fn exporter_series() -> Result<(f64, usize, String)> {
    let _daemons = libvirt::ensure_daemons()?;
    let mut running = Vec::new();
    for i in 0..REAL_DOMAINS {
        let name = format!("{PREFIX}{i}");
        let spec =
            DomainSpec::pinned(&name, &["0", "1", "0", "1"]).with_nova(&name, "bench", "b1.small");
        running.push(libvirt::start(&spec).with_context(|| format!("starting {name}"))?);
    }
    let addr = free_addr();
    let _exporter = Killed(
        Command::new("/usr/bin/prometheus-libvirt-exporter")
            .arg(format!("--web.listen-address={addr}"))
            .arg("--libvirt.export-nova-metadata")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start prometheus-libvirt-exporter (cargo xtask setup installs it)")?,
    );
    let (s, _) = pinflow_tests::wait_for(Duration::from_secs(20), || get(addr))
        .context("prometheus-libvirt-exporter did not answer /metrics")?;
    let ours = |x: &Sample| names_any(x, |v| v.starts_with(PREFIX));
    let per = s.iter().filter(|x| ours(x)).count();
    // Host series: not about any domain (the exporter's own and Go runtime series included).
    let other_domains =
        |x: &Sample| x.labels.contains_key("domain") || x.labels.contains_key("name");
    let host = s.iter().filter(|x| !ours(x) && !other_domains(x)).count();
    let text = families(&by_family(s.iter().filter(|x| ours(x))));
    drop(running);
    Ok((per as f64 / REAL_DOMAINS as f64, host, text))
}

/// Runs the part with the pinflow binary `bin`.
pub fn run(bin: &Path) -> Result<()> {
    let flows = if crate::bench_table::quick() {
        3_000
    } else {
        10_000
    };
    crate::util::step(&format!(
        "series: {INSTANCES} fixture instances × {PORTS_PER_INSTANCE} ports, br-int with {flows} Neutron flows, br-tun, br-ex"
    ));
    let Counts {
        per_instance: per_inst,
        per_port,
        host,
        stolen,
        dedicated,
        text,
    } = pinflow_series(bin, flows)?;
    let ports = INSTANCES * PORTS_PER_INSTANCE;
    let total = per_inst * INSTANCES as f64 + per_port * ports as f64 + host as f64 + stolen as f64;
    let budget = PER_INSTANCE * INSTANCES as f64
        + PER_PORT * ports as f64
        + PER_HOST as f64
        + (PER_DEDICATED_VCPU * dedicated) as f64;
    let met = per_inst <= PER_INSTANCE
        && per_port <= PER_PORT
        && host <= PER_HOST
        && stolen <= PER_DEDICATED_VCPU * dedicated;
    crate::bench_table::add_limited(
        "series",
        &format!(
            "series per host, {INSTANCES} instances × {PORTS_PER_INSTANCE} ports, 3 bridges: pinflow vs the budget"
        ),
        "≤ 13 per instance, ≤ 4 per instance port, ≤ 205 per host besides them, ≤ 5 stolen-time \
         series per dedicated vCPU (docs/metrics.md)",
        format!(
            "{total:.0} series when healthy (budget {budget:.0}): {per_inst:.1} per instance, {per_port:.1} per \
             instance port, {host} per host besides them, {stolen} stolen-time series on \
             {dedicated} dedicated pCPUs; userspace datapath (the host has no \
             openvswitch.ko: no kernel-datapath families here; the datapath part counts them in the guest). {text}"
        ),
        Some(met),
        "see the families in the measured column: the per-host rest grows with bridges × tables and \
         sources",
    );
    crate::util::step(&format!(
        "series: prometheus-libvirt-exporter on {REAL_DOMAINS} real domains × 4 vCPUs"
    ));
    let (ex_per, ex_host, ex_text) = exporter_series()?;
    crate::bench_table::add(
        "series",
        "series per instance: pinflow vs prometheus-libvirt-exporter",
        "",
        format!(
            "pinflow {per_inst:.1} per instance when healthy (+ {per_port:.1} per instance port; \
             findings add series per drifting vCPU); prometheus-libvirt-exporter {ex_per:.1} per instance on {REAL_DOMAINS} real \
             domains × 4 vCPUs (+ {ex_host} series about no domain); these domains have no NICs or \
             disks, whose families come on top; no pinning at all; its series of the \
             {REAL_DOMAINS} domains by family: {ex_text}"
        ),
        None,
    );
    Ok(())
}
