//! `cargo xtask bench --only latency`: how long a fault takes to show on pinflow's `/metrics`
//! (issue 13, row 6), on the real testbed: a vCPU's affinity changed with `taskset`, its cgroup's
//! `cpuset.cpus` rewritten, a dirty flow added with `ovs-ofctl add-flow`. Each is made
//! `PINFLOW_BENCH_LATENCY_REPS` times (default 10) and repaired in between; `/metrics` is scraped
//! every 5 ms from the moment the fault is made until its series shows. The alternative an operator
//! runs today is a cron job (`ovs-ofctl dump-flows | grep`, a `virsh vcpupin` comparison) every
//! minute: 30 s on average, 60 s at worst; Debian's prometheus-libvirt-exporter has no pinning at
//! all. The OVS kernel-datapath row (flow-limit crossing) needs the guest: `cargo xtask vm-test`.

use anyhow::{Context, Result, bail};
use pinflow_tests::libvirt::{self, DomainSpec};
use pinflow_tests::ovs::Ovs;
use pinflow_tests::scrape::{self, Sample};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fault may take to show before the bench gives up on it.
const GIVE_UP: Duration = Duration::from_secs(20);

/// A `pinflow serve` on a free port, killed on drop.
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn samples(&self) -> Vec<Sample> {
        scrape::http_get(self.addr, "/metrics", Duration::from_secs(5))
            .map(|(_, body)| scrape::parse(&body))
            .unwrap_or_default()
    }

    /// Time from `since` until `shown` holds on a scrape (scraped every 5 ms).
    fn until(&self, since: Instant, shown: impl Fn(&[Sample]) -> bool) -> Result<Duration> {
        loop {
            if shown(&self.samples()) {
                return Ok(since.elapsed());
            }
            if since.elapsed() > GIVE_UP {
                bail!("not shown within {GIVE_UP:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn drift(s: &[Sample], domain: &str, check: &str) -> bool {
    !scrape::select(
        s,
        "pinflow_vcpu_pinning_drift",
        &[("domain", domain), ("check", check)],
    )
    .is_empty()
}

fn dirty(s: &[Sample], bridge: &str) -> f64 {
    scrape::select(
        s,
        "pinflow_ovs_dirty_flows",
        &[("bridge", bridge), ("rule", "output_to_missing_port")],
    )
    .first()
    .map_or(0.0, |x| x.value)
}

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let st = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {cmd}"))?;
    anyhow::ensure!(st.success(), "{cmd} {args:?}: {st}");
    Ok(())
}

/// Median, 90th percentile and maximum of `v`, in ms.
fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    format!("{:.0} ms | {:.0} ms | {:.0} ms", at(0.5), at(0.9), at(1.0))
}

/// Runs the bench with the `pinflow` binary at `bin`.
pub fn run_bench(bin: &Path) -> Result<()> {
    let reps: usize = std::env::var("PINFLOW_BENCH_LATENCY_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .max(1);
    libvirt::ensure_daemons().context("libvirt testbed")?;
    let ovs = Ovs::start();
    ovs.add_bridge("br-lat", &[("lat-a", 1)]);
    // Pinned to both CPUs, so that `taskset` may move the vCPU within its cgroup.
    let dom = libvirt::start(&DomainSpec::pinned("pf-latency", &["0-1"]))?;
    let tid = dom.vcpu_tid(0).to_string();
    let cpus = dom.cpuset_cgroup_dir().join("vcpu0/cpuset.cpus");
    let addr = pinflow_tests::pinflow::free_addr();
    let serve = Serve {
        child: Command::new(bin)
            .args(["serve", "--no-collector.datapath", "--web.listen-address"])
            .arg(addr.to_string())
            .arg("--ovs-run-dir")
            .arg(ovs.run_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn pinflow serve")?,
        addr,
    };
    serve
        .until(Instant::now(), |s| {
            scrape::source_up(s, "openflow") == Some(1.0)
                && !scrape::select(
                    s,
                    "pinflow_domain_drifted_vcpus",
                    &[("domain", "pf-latency")],
                )
                .is_empty()
        })
        .context("pinflow did not come up with the domain and the bridge")?;
    let (mut affinity, mut cpuset, mut flows) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        run("taskset", &["-p", "-c", "1", &tid])?;
        affinity.push(serve.until(t, |s| drift(s, "pf-latency", "affinity"))?);
        run("taskset", &["-p", "-c", "0-1", &tid])?;
        serve.until(Instant::now(), |s| !drift(s, "pf-latency", "affinity"))?;

        let t = Instant::now();
        std::fs::write(&cpus, "1").context("write cpuset.cpus")?;
        cpuset.push(serve.until(t, |s| drift(s, "pf-latency", "cpuset"))?);
        std::fs::write(&cpus, "0-1").context("write cpuset.cpus")?;
        run("taskset", &["-p", "-c", "0-1", &tid])?;
        serve.until(Instant::now(), |s| {
            !drift(s, "pf-latency", "cpuset") && !drift(s, "pf-latency", "affinity")
        })?;

        let t = Instant::now();
        ovs.ofctl(&[
            "add-flow",
            "br-lat",
            "table=0,priority=5,ip,actions=output:77",
        ]);
        flows.push(serve.until(t, |s| dirty(s, "br-lat") > 0.0)?);
        ovs.ofctl(&["del-flows", "br-lat", "table=0,ip"]);
        serve.until(Instant::now(), |s| dirty(s, "br-lat") == 0.0)?;
    }
    drop(serve);
    drop(dom);
    println!(
        "\nDetection latency: fault made → its series on pinflow's /metrics ({reps} times each)"
    );
    println!(
        "| fault | pinflow median | p90 | max | cron job every 60 s | Debian libvirt exporter |"
    );
    println!("|---|---|---|---|---|---|");
    for (what, v) in [
        ("vCPU affinity changed (`taskset -p`) → /metrics", &affinity),
        ("cgroup `cpuset.cpus` rewritten → /metrics", &cpuset),
        ("dirty flow added (`ovs-ofctl add-flow`) → /metrics", &flows),
    ] {
        let mut sorted = v.clone();
        sorted.sort();
        let worst = sorted.last().copied().unwrap_or_default();
        crate::bench_table::add(
            "latency",
            what,
            "≤ 1 s",
            format!(
                "median, p90, max: {} (cron every 60 s: 30 s mean, 60 s worst; Debian libvirt exporter: never)",
                summary(v.clone()).replace(" |", ",")
            ),
            Some(worst <= Duration::from_secs(1)),
        );
    }
    println!(
        "| vCPU affinity (`taskset -p`) | {} | 30 s mean, 60 s worst | never (no pinning) |",
        summary(affinity)
    );
    println!(
        "| cgroup `cpuset.cpus` write | {} | 30 s mean, 60 s worst | never |",
        summary(cpuset)
    );
    println!(
        "| dirty flow (`ovs-ofctl add-flow`) | {} | 30 s mean, 60 s worst | never |",
        summary(flows)
    );
    Ok(())
}
