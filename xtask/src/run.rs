//! `cargo xtask run`: the libvirt/KVM testbed plus a running pinflow, until Ctrl-C.
#![allow(unsafe_code)] // kill/prctl on the testbed processes xtask starts.

use crate::setup::setup;
use crate::util::{cargo, step, workspace_root};
use anyhow::{Context as _, bail};
use pinflow_tests::libvirt::{self, DomainSpec, RunningDomain};
use pinflow_tests::ovs::Ovs;
use pinflow_tests::scrape::http_get;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Flags of `cargo xtask run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Where pinflow serves.
    #[arg(long = "web.listen-address", default_value = "127.0.0.1:9105")]
    listen: SocketAddr,
    /// Boot the OVS kernel-datapath guest instead, with pinflow's /metrics forwarded to the address.
    #[arg(long)]
    vm: bool,
}

/// The testbed's domains: what a Nova host with `cpu_dedicated_set=0` and `cpu_shared_set=1` runs.
pub fn testbed_domains() -> Vec<DomainSpec> {
    let mut dedicated =
        DomainSpec::pinned("instance-00000001", &["0"]).with_nova("web-1", "demo", "m1.dedicated");
    dedicated.taps = vec!["tap-web1".into()];
    let mut shared =
        DomainSpec::pinned("instance-00000002", &[]).with_nova("batch-1", "demo", "m1.shared");
    shared.pins = vec![None, None];
    shared.vcpu_cpuset = Some("1".into());
    shared.emulator_pin = Some("1".into());
    shared.taps = vec!["tap-batch1".into()];
    vec![dedicated, shared]
}

fn pinflow_bin(profile: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    target.join(profile).join("pinflow")
}

/// The testbed and pinflow, torn down on drop.
struct Testbed {
    daemons: libvirt::Daemons,
    domains: Vec<RunningDomain>,
    ovs: Ovs,
    pinflow: Option<Child>,
}

impl Testbed {
    fn up(listen: SocketAddr, bin: &std::path::Path) -> anyhow::Result<Testbed> {
        step("libvirt: starting virtlogd + libvirtd (if not running)");
        let daemons = libvirt::ensure_daemons()?;
        step(
            "ovs: private ovsdb-server + ovs-vswitchd (userspace datapath) with a Neutron-like br-int",
        );
        let ovs = Ovs::start();
        ovs.add_bridge(
            "br-int",
            &[
                ("tap-web1", 1),
                ("tap-batch1", 2),
                ("patch-tun", 3),
                ("int-br-ex", 4),
            ],
        );
        // As Neutron's OVS agent tags instance ports (the domains' taps are below).
        for (tap, port_id) in [
            ("tap-web1", "6f1b0c2e-0001"),
            ("tap-batch1", "6f1b0c2e-0002"),
        ] {
            ovs.vsctl(&[
                "set",
                "interface",
                tap,
                &format!("external_ids:iface-id={port_id}"),
            ]);
        }
        let flows = workspace_root().join("tests/fixtures/br-int-clean.flows");
        ovs.ofctl(&["replace-flows", "br-int", &flows.to_string_lossy()]);
        let mut tb = Testbed {
            daemons,
            domains: Vec::new(),
            ovs,
            pinflow: None,
        };
        for spec in testbed_domains() {
            step(&format!("libvirt: starting domain {}", spec.name));
            tb.domains.push(libvirt::start(&spec)?);
        }
        step(&format!("pinflow: serving on {listen}"));
        let child = Command::new(bin)
            .args([
                "serve",
                "--web.listen-address",
                &listen.to_string(),
                "--ovs-run-dir",
            ])
            .arg(tb.ovs.run_dir())
            .spawn()
            .context("cannot start pinflow")?;
        tb.pinflow = Some(child);
        let t0 = Instant::now();
        while http_get(listen, "/healthz", Duration::from_secs(1))
            .map(|(s, _)| s)
            .ok()
            != Some(200)
        {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("pinflow did not answer on {listen}/healthz");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(tb)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(mut c) = self.pinflow.take() {
            step("pinflow: stopping");
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        for d in self.domains.drain(..) {
            step(&format!("libvirt: destroying {}", d.name));
            drop(d);
        }
        libvirt::stop_daemons(&self.daemons);
    }
}

/// Blocks SIGINT/SIGTERM in this process and waits for one.
fn wait_for_ctrl_c() {
    // SAFETY: sigset manipulation on a local set, then sigwait on it; no handlers involved.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
}

/// `cargo xtask run`.
pub fn run(a: RunArgs) -> anyhow::Result<()> {
    setup()?;
    if a.vm {
        return crate::vm::run_vm(a.listen);
    }
    step("building pinflow (release)");
    cargo(&["build", "--release", "-p", "pinflow", "--bin", "pinflow"])?;
    // Block Ctrl-C before starting anything so it reaches us (and the teardown) rather than killing us.
    let tb = Testbed::up(a.listen, &pinflow_bin("release"))?;
    std::thread::sleep(Duration::from_millis(1500));
    let table = Command::new(pinflow_bin("release"))
        .arg("pinning")
        .output()?;
    println!("\n{}", String::from_utf8_lossy(&table.stdout));
    println!("pinflow is running:");
    println!("  http://{}/metrics", a.listen);
    println!("  http://{}/api/v1/pinning", a.listen);
    println!(
        "  {} pinning        (one-shot table)",
        pinflow_bin("release").display()
    );
    println!(
        "Make drift like a real bug would, e.g. (vCPU 0 of instance-00000001 is pinned to CPU 0):"
    );
    println!(
        "  CG=$(dirname $(grep cpuset /proc/$(cat /run/libvirt/qemu/instance-00000001.pid)/cgroup | cut -d: -f3))"
    );
    println!(
        "  echo 0-1 > /sys/fs/cgroup/cpuset$CG/vcpu0/cpuset.cpus; taskset -pc 1 <TID of 'CPU 0/KVM'>"
    );
    println!("  virsh vcpupin instance-00000001 0 0 --live   # repair");
    let run_dir = tb.ovs.run_dir();
    println!("Insert a dirty flow into br-int (an output to a port that does not exist):");
    println!(
        "  OVS_RUNDIR={} ovs-ofctl -O OpenFlow13 add-flow br-int 'table=60,priority=50,dl_dst=fa:16:3e:00:00:99,actions=output:77'",
        run_dir.display()
    );
    println!(
        "  {} flows --dirty --ovs-run-dir {}",
        pinflow_bin("release").display(),
        run_dir.display()
    );
    println!(
        "Ctrl-C stops pinflow, destroys the domains and stops the daemons this command started."
    );
    wait_for_ctrl_c();
    drop(tb);
    Ok(())
}

/// `cargo xtask bench` (serve part): `bin`'s RSS and /metrics latency with the testbed running.
pub fn bench_serve(bin: &std::path::Path) -> anyhow::Result<()> {
    let listen: SocketAddr = pinflow_tests::pinflow::free_addr();
    let tb = Testbed::up(listen, bin)?;
    std::thread::sleep(Duration::from_secs(3));
    let mut lat = Vec::new();
    for _ in 0..200 {
        let t0 = Instant::now();
        let (s, body) = http_get(listen, "/metrics", Duration::from_secs(2))?;
        lat.push(t0.elapsed());
        if s != 200 || body.is_empty() {
            bail!("bad scrape: {s}");
        }
    }
    lat.sort();
    let pid = tb.pinflow.as_ref().map(|c| c.id()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap_or("VmRSS: ?")
        .to_string();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    println!(
        "pinflow serve with the testbed ({} domains):",
        testbed_domains().len()
    );
    println!("  {rss}");
    println!(
        "  /metrics latency over 200 scrapes: p50 {:?}  p99 {:?}  max {:?}",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        lat[lat.len() - 1]
    );
    println!("  CPU used so far (user+sys): {} ms", ticks * 10);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    crate::bench_table::add(
        "serve",
        "testbed domains: pinflow serve /metrics p50 / p99 (200 scrapes) and RSS",
        "",
        format!(
            "{:.2} / {:.2} ms (max {:.2}), {} with {} domains",
            ms(lat[lat.len() / 2]),
            ms(lat[lat.len() * 99 / 100]),
            ms(lat[lat.len() - 1]),
            rss.split_whitespace().skip(1).collect::<Vec<_>>().join(" "),
            testbed_domains().len()
        ),
        None,
    );
    drop(tb);
    Ok(())
}
