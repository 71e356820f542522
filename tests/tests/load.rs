//! `/metrics` stays fast while the HTTP server is abused: 200 idle connections, 20 slowloris
//! clients trickling their headers, and 10 clients hammering `/api/v1/flows` (a report of a
//! real switch with a thousand dirty flows). Bounded: a few seconds on 2 cores.
//!
//! `PINFLOW_LOAD_FULL=1` (what `cargo xtask bench --only load` sets) runs issue 11's full size
//! instead: 1 000 idle connections, 100 slowloris clients, 50 clients hammering `/api/v1/flows`
//! with 100 000 flows mirrored, and also checks RSS against the DaemonSet's memory limit.

use pinflow_tests::captured::CapturedHost;
use pinflow_tests::ovs::{self, Ovs};
use pinflow_tests::pinflow::Pinflow;
use pinflow_tests::scrape::http_get;
use pinflow_tests::wait_for;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SCRAPES: usize = 200;

/// How hard the load is.
struct Size {
    idle: usize,
    slowloris: usize,
    hammers: usize,
    flows: usize,
}

impl Size {
    fn from_env() -> Size {
        if std::env::var("PINFLOW_LOAD_FULL").is_ok_and(|v| v == "1") {
            Size {
                idle: 1000,
                slowloris: 100,
                hammers: 50,
                flows: 100_000,
            }
        } else {
            Size {
                idle: 200,
                slowloris: 20,
                hammers: 10,
                flows: 1000,
            }
        }
    }
}

/// The DaemonSet's memory limit (`resources.limits.memory` in
/// deploy/kubernetes/base/daemonset.yaml, in `Mi`), in KiB.
fn memory_limit_kib() -> u64 {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/base/daemonset.yaml"
    );
    let text = std::fs::read_to_string(path).expect("daemonset.yaml");
    let ds: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("DaemonSet YAML");
    let limit = ds["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
        .as_str()
        .expect("a memory limit");
    let mib: u64 = limit
        .strip_suffix("Mi")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("memory limit {limit:?} is not in Mi"));
    mib * 1024
}

/// Lets this process hold the idle connections (the soft limit is often 1 024 files).
fn raise_open_files(n: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < n {
            r.rlim_cur = n.min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Latencies of `n` sequential /metrics scrapes, 10 ms apart; panics when one fails.
fn scrape_latencies(addr: SocketAddr, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            let (status, body) = http_get(addr, "/metrics", Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("scrape {i}: {e}"));
            let took = t.elapsed();
            assert_eq!(status, 200, "scrape {i}");
            assert!(body.contains("pinflow_source_up"), "scrape {i}: {body}");
            std::thread::sleep(Duration::from_millis(10));
            took
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A slowloris client: sends a request line, then one header line every 500 ms, forever;
/// reconnects when the server closes it. Returns how many times it was closed.
fn slowloris(addr: SocketAddr, stop: Arc<AtomicBool>, closed: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .is_err()
        {
            continue;
        }
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(500));
            n += 1;
            if write!(s, "X-Slow-{n}: x\r\n").is_err() {
                closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
}

#[test]
fn metrics_stay_fast_under_idle_slowloris_and_api_hammering() {
    if !ovs::available("metrics_stay_fast_under_idle_slowloris_and_api_hammering") {
        return;
    }
    // A switch whose flows are all dirty (outputs to a missing port), so that /api/v1/flows is a
    // real body (a few hundred KiB; capped at 10 000 findings in full size), not an empty report.
    let size = Size::from_env();
    let Size {
        idle: n_idle,
        slowloris: n_slowloris,
        hammers: n_hammers,
        flows: n_flows,
    } = size;
    raise_open_files(n_idle as u64 + 512);
    let ovs = Ovs::start();
    ovs.add_bridge("br-pfload", &[("pfld1", 1), ("pfld2", 2)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let flows = dir.path().join("flows.txt");
    let text: String = (0..n_flows)
        .map(|i| {
            format!(
                "table=0,priority=10,ip,nw_dst=10.{}.{}.{},actions=output:9\n",
                1 + i / 62_500,
                (i / 250) % 250,
                i % 250
            )
        })
        .collect();
    std::fs::write(&flows, text).expect("write flows");
    ovs.ofctl(&["add-flows", "br-pfload", &flows.to_string_lossy()]);
    let host = CapturedHost::new();
    let mut args = vec![
        "--ovs-run-dir".to_string(),
        ovs.run_dir().to_string_lossy().into_owned(),
        "--no-collector.datapath".to_string(),
    ];
    args.extend(host.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pf = Pinflow::start("[pinning]\nebpf = false\n", &args);
    let addr = pf.addr;
    let body_len = wait_for(Duration::from_secs(60), || {
        let body = pf.get("/api/v1/flows");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["dirty_total"] == n_flows).then_some(body.len())
    })
    .unwrap_or_else(|| panic!("the dirty flows never showed up\n{}", pf.log()))
    .0;

    let mut quiet = scrape_latencies(addr, SCRAPES / 2);
    quiet.sort();
    let (rss_before, _) = rss_kib(pf.pid());

    let stop = Arc::new(AtomicBool::new(false));
    let idle: Vec<TcpStream> = (0..n_idle)
        .map(|i| TcpStream::connect(addr).unwrap_or_else(|e| panic!("idle {i}: {e}")))
        .collect();
    let closed = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..n_slowloris {
        let (stop, closed) = (stop.clone(), closed.clone());
        threads.push(std::thread::spawn(move || slowloris(addr, stop, closed)));
    }
    let api_ok = Arc::new(AtomicU64::new(0));
    let api_failed = Arc::new(AtomicU64::new(0));
    for _ in 0..n_hammers {
        let (stop, ok, failed) = (stop.clone(), api_ok.clone(), api_failed.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match http_get(addr, "/api/v1/flows", Duration::from_secs(5)) {
                    Ok((200, b)) if b.len() == body_len => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let mut loaded = scrape_latencies(addr, SCRAPES);
    let load_time = t0.elapsed();
    loaded.sort();
    let (rss_loaded, hwm) = rss_kib(pf.pid());
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("load thread");
    }
    drop(idle);

    let api = api_ok.load(Ordering::Relaxed);
    eprintln!(
        "{n_flows} flows; quiet /metrics p50 {:.2} ms p99 {:.2} ms; under load ({n_idle} idle, \
         {n_slowloris} slowloris, {n_hammers} clients on /api/v1/flows of {} KiB): p50 {:.2} ms \
         p99 {:.2} ms max {:.2} ms; \
         /api/v1/flows {} ok ({:.0}/s), {} failed; slowloris reconnects after a failed write: {}; \
         RSS {} KiB before, {} KiB under load (peak {} KiB)",
        ms(percentile(&quiet, 0.5)),
        ms(percentile(&quiet, 0.99)),
        body_len / 1024,
        ms(percentile(&loaded, 0.5)),
        ms(percentile(&loaded, 0.99)),
        ms(*loaded.last().expect("scrapes")),
        api,
        api as f64 / load_time.as_secs_f64(),
        api_failed.load(Ordering::Relaxed),
        closed.load(Ordering::Relaxed),
        rss_before,
        rss_loaded,
        hwm,
    );
    assert!(
        percentile(&loaded, 0.99) <= Duration::from_millis(50),
        "/metrics p99 {:.1} ms under load\n{}",
        ms(percentile(&loaded, 0.99)),
        pf.log()
    );
    assert!(api > 0, "the API answered nothing under load");
    let limit = memory_limit_kib();
    assert!(
        hwm < limit,
        "peak RSS {hwm} KiB is above the DaemonSet's limit ({limit} KiB)"
    );
    // Still serving once the load is gone.
    assert_eq!(pf.get("/healthz").trim(), "ok");
}
