//! The measurement behind the conntrack source's choice of kernel interface (see the module docs of
//! `sources::conntrack`): for each table size given, fills the conntrack table of a private
//! network namespace with that many UDP entries spread over 10 zones (created directly with
//! ctnetlink `IPCTNL_MSG_CT_NEW`, the fastest way), then times a full dump counted per zone, a dump
//! filtered to one zone (`CTA_ZONE`), one filtered dump per zone, and the procfs count.
//!
//! ```text
//! cargo build -p pinflow --example conntrack_cost
//! sudo target/debug/examples/conntrack_cost 100000 1000000
//! sudo target/debug/examples/conntrack_cost 1000000 -- /usr/bin/time -v target/debug/pinflow check
//! ```
//!
//! A command after `--` runs in the filled namespace at the end (e.g. pinflow itself against the
//! full table).
//!
//! `nf_conntrack_max` is global (writable only from the host's namespace): it is raised for the
//! run when too small and restored at the end. The namespace and its entries go with the process.
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)] // A measurement harness: libc calls.

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use pinflow::sources::conntrack::{Ctnetlink, read_limits};
use std::path::Path;
use std::time::{Duration, Instant};

const ZONES: u16 = 10;
const MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

fn nla(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + ((4 - len % 4) % 4), 0);
}

fn nested(out: &mut Vec<u8>, kind: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    nla(out, kind | 0x8000, &inner);
}

/// CTA_TUPLE_{ORIG,REPLY}: CTA_TUPLE_IP { V4_SRC, V4_DST }, CTA_TUPLE_PROTO { NUM, SRC, DST }.
fn tuple(out: &mut Vec<u8>, kind: u16, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) {
    nested(out, kind, |t| {
        nested(t, 1, |ip| {
            nla(ip, 1, &src);
            nla(ip, 2, &dst);
        });
        nested(t, 2, |p| {
            nla(p, 1, &[17]);
            nla(p, 2, &sport.to_be_bytes());
            nla(p, 3, &dport.to_be_bytes());
        });
    });
}

/// One IPCTNL_MSG_CT_NEW (create, no ack): UDP 10.a.b.c:sport → 192.168.0.1:53 in `zone`.
fn new_entry(seq: u32, i: u32, zone: u16) -> Vec<u8> {
    let src = [10, (i >> 24) as u8, (i >> 16) as u8, (i >> 8) as u8];
    let dst = [192, 168, 0, 1];
    let sport = 1024 + (i & 0xff) as u16;
    let mut attrs = Vec::new();
    tuple(&mut attrs, 1, src, dst, sport, 53);
    tuple(&mut attrs, 2, dst, src, 53, sport);
    nla(&mut attrs, 7, &600u32.to_be_bytes()); // CTA_TIMEOUT
    nla(&mut attrs, 18, &zone.to_be_bytes()); // CTA_ZONE
    let len = 16 + 4 + attrs.len();
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&(1u16 << 8).to_ne_bytes()); // CTNETLINK, IPCTNL_MSG_CT_NEW
    // NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
    b.extend_from_slice(&(0x1u16 | 0x400 | 0x200).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
    b.extend_from_slice(&attrs);
    b
}

/// Creates entries `from..to`; returns how many the kernel refused.
fn inject(from: u32, to: u32) -> u64 {
    let mut s = Socket::new(NETLINK_NETFILTER).unwrap();
    s.bind_auto().unwrap();
    s.connect(&SocketAddr::new(0, 0)).unwrap();
    let _ = s.set_rx_buf_sz(8 << 20);
    let mut errors = 0u64;
    let mut batch = Vec::with_capacity(64 << 10);
    let mut first = true;
    let mut drain = |s: &Socket| {
        let mut buf = Vec::with_capacity(1 << 16);
        loop {
            buf.clear();
            match s.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(n) if n > 0 => {
                    let mut off = 0;
                    while off + 20 <= n {
                        let len =
                            u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                        let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                        if code != 0 {
                            if first {
                                eprintln!(
                                    "first create error: {}",
                                    std::io::Error::from_raw_os_error(-code)
                                );
                                first = false;
                            }
                            errors += 1;
                        }
                        off += (len.max(20) + 3) & !3;
                    }
                }
                _ => return,
            }
        }
    };
    for i in from..to {
        batch.extend_from_slice(&new_entry(i, i, (i % ZONES as u32) as u16 + 1));
        if batch.len() > 60_000 {
            s.send(&batch, 0).unwrap();
            batch.clear();
            drain(&s);
        }
    }
    if !batch.is_empty() {
        s.send(&batch, 0).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    drain(&s);
    errors
}

/// This thread's CPU time: (user, user + system).
fn cpu() -> (Duration, Duration) {
    // SAFETY: an all-zero rusage is valid; getrusage writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid rusage to write into.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_utime) + tv(ru.ru_stime))
}

static USER: std::sync::Mutex<Duration> = std::sync::Mutex::new(Duration::ZERO);

/// Runs `f` 3 times; returns the best (wall, cpu) and f's last result.
fn time<T>(mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut best = (Duration::MAX, Duration::MAX, Duration::MAX);
    let mut last = None;
    for _ in 0..3 {
        let (w, c) = (Instant::now(), cpu());
        last = Some(f());
        let c2 = cpu();
        if c2.1 - c.1 < best.1 {
            best = (best.0.min(w.elapsed()), c2.1 - c.1, c2.0 - c.0);
        }
        best.0 = best.0.min(w.elapsed());
    }
    *USER.lock().unwrap() = best.2;
    (best.0, best.1, last.unwrap())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (sizes, command) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (&args[..], &[][..]),
    };
    let sizes: Vec<u32> = sizes
        .iter()
        .map(|a| a.parse().expect("table sizes"))
        .collect();
    let biggest = sizes.iter().copied().max().unwrap_or(0) as u64;
    let old_max: u64 = std::fs::read_to_string(MAX)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if old_max < biggest + 10_000 {
        std::fs::write(MAX, (biggest + 10_000).to_string()).unwrap();
    }
    // Opened in the host's namespace, so that it restores the host's value after the unshare.
    let mut restore = std::fs::OpenOptions::new().write(true).open(MAX).unwrap();
    // SAFETY: no other thread exists yet; unshare only changes this thread's namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        panic!("unshare: {}", std::io::Error::last_os_error());
    }
    let mut ct = Ctnetlink::open().unwrap();
    let mut have = 0u32;
    for n in sizes {
        let t = Instant::now();
        let refused = inject(have, n);
        have = n;
        let limits = read_limits(Path::new("/proc")).unwrap();
        println!(
            "== {n} entries requested: nf_conntrack_count {} ({refused} refused), injected in {:.1} s",
            limits.count,
            t.elapsed().as_secs_f64()
        );
        let (w, c, d) = time(|| ct.dump(None).unwrap());
        println!(
            "full dump, counted per zone: {:>8.1} ms wall {:>8.1} ms cpu ({:.1} ms user)  {} entries in {} zones, {:.1} MiB",
            w.as_secs_f64() * 1e3,
            c.as_secs_f64() * 1e3,
            USER.lock().unwrap().as_secs_f64() * 1e3,
            d.entries,
            d.zones.len(),
            d.bytes as f64 / (1 << 20) as f64
        );
        let (w, c, d) = time(|| ct.dump(Some(3)).unwrap());
        println!(
            "dump filtered to zone 3:     {:>8.1} ms wall {:>8.1} ms cpu  {} entries (zones {:?})",
            w.as_secs_f64() * 1e3,
            c.as_secs_f64() * 1e3,
            d.entries,
            d.zones.keys().collect::<Vec<_>>()
        );
        let (w, c, d) = time(|| ct.dump(Some(999)).unwrap());
        println!(
            "dump filtered to empty zone: {:>8.1} ms wall {:>8.1} ms cpu  {} entries (the walk alone)",
            w.as_secs_f64() * 1e3,
            c.as_secs_f64() * 1e3,
            d.entries
        );
        let (w, c, total) = time(|| {
            (1..=ZONES)
                .map(|z| ct.dump(Some(z)).unwrap().entries)
                .sum::<u64>()
        });
        println!(
            "one filtered dump per zone:  {:>8.1} ms wall {:>8.1} ms cpu  {total} entries",
            w.as_secs_f64() * 1e3,
            c.as_secs_f64() * 1e3
        );
        let (w, c, l) = time(|| read_limits(Path::new("/proc")).unwrap());
        println!(
            "procfs count + max:          {:>8.3} ms wall {:>8.3} ms cpu  {} of {}",
            w.as_secs_f64() * 1e3,
            c.as_secs_f64() * 1e3,
            l.count,
            l.max
        );
    }
    if let Some((program, rest)) = command.split_first() {
        let status = std::process::Command::new(program).args(rest).status();
        println!("== {command:?}: {status:?}");
    }
    if old_max < biggest + 10_000 {
        use std::io::Write as _;
        if let Err(e) = restore.write_all(old_max.to_string().as_bytes()) {
            eprintln!("restore nf_conntrack_max {old_max}: {e}");
        }
    }
}
