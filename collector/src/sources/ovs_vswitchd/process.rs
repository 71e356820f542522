//! Health of the OVS daemons' processes from procfs: resident memory, CPU time and threads of the
//! process a pid file names, checked to be that daemon (`comm`), so that a stale pid file whose pid
//! was reused reads as "not running".

use std::io;
use std::path::Path;

/// One read of a daemon's process.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ProcessSample {
    /// Its pid.
    pub(crate) pid: u32,
    /// Start time in clock ticks after boot (with the pid, identifies this run of the daemon).
    pub(crate) start_ticks: u64,
    /// Resident memory (`VmRSS`), bytes.
    pub(crate) resident_bytes: u64,
    /// User + system CPU time of all its threads, seconds.
    pub(crate) cpu_seconds: f64,
    /// Threads.
    pub(crate) threads: u64,
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on every Linux build in use).
fn clock_ticks() -> f64 {
    #[allow(unsafe_code)] // sysconf reads a constant of the C library; no memory is passed.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Reads `<proc_root>/<pid>/{comm,stat,status}`; `Ok(None)` when the pid is not running `comm`.
pub(crate) fn sample(proc_root: &Path, pid: u32, comm: &str) -> io::Result<Option<ProcessSample>> {
    let dir = proc_root.join(pid.to_string());
    let actual = match std::fs::read_to_string(dir.join("comm")) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if actual.trim_end() != comm {
        return Ok(None);
    }
    let stat = std::fs::read_to_string(dir.join("stat"))?;
    let status = std::fs::read_to_string(dir.join("status"))?;
    parse(pid, &stat, &status, clock_ticks())
        .map(Some)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: unexpected stat/status", dir.display()),
            )
        })
}

/// The fields of `stat` (after the command name in parentheses) and `status` pinflow needs.
pub(crate) fn parse(pid: u32, stat: &str, status: &str, ticks: f64) -> Option<ProcessSample> {
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields counted from 3 (state) in proc(5): utime 14, stime 15, num_threads 20, starttime 22.
    let num = |field: usize| -> Option<u64> { f.get(field - 3)?.parse().ok() };
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Some(ProcessSample {
        pid,
        start_ticks: num(22)?,
        resident_bytes: rss_kb.saturating_mul(1024),
        cpu_seconds: num(14)?.saturating_add(num(15)?) as f64 / ticks,
        threads: num(20)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat = "5886 (ovs-vswitchd) S 1 5885 5885 0 -1 4194624 1883 0 0 0 150 52 0 0 10 -10 7 0 1234567 277209088 3210 18446744073709551615 1 1 0 0 0 0 0 4096 24578 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let status = "Name:\tovs-vswitchd\nVmRSS:\t   12840 kB\nThreads:\t7\n";
        let s = parse(5886, stat, status, 100.0).unwrap();
        assert_eq!(s.threads, 7);
        assert_eq!(s.start_ticks, 1234567);
        assert_eq!(s.resident_bytes, 12840 * 1024);
        assert!((s.cpu_seconds - 2.02).abs() < 1e-9);
        // A command name with spaces and parentheses.
        let odd = stat.replace("(ovs-vswitchd)", "(a) b (c)");
        assert_eq!(parse(1, &odd, status, 100.0).unwrap().threads, 7);
        assert!(parse(1, "1 (x) S 1", status, 100.0).is_none());
        // Found by tests/tests/fuzz_smoke.rs: huge values saturate instead of overflowing.
        let max = u64::MAX.to_string();
        let huge = format!("1 (x) S 1 1 1 0 -1 0 0 0 0 0 {max} {max} 0 0 20 0 1 0 5 0 0\n");
        let s = parse(1, &huge, &format!("VmRSS:\t{max} kB\n"), 100.0).unwrap();
        assert_eq!(s.resident_bytes, u64::MAX);
        assert!(s.cpu_seconds > 1e17);
    }

    #[test]
    fn reads_this_process_and_rejects_other_comm() {
        let me = std::process::id();
        let comm = std::fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
        let s = sample(Path::new("/proc"), me, comm.trim_end())
            .unwrap()
            .unwrap();
        assert!(s.threads >= 1 && s.resident_bytes > 0, "{s:?}");
        assert_eq!(
            sample(Path::new("/proc"), me, "ovs-vswitchd").unwrap(),
            None
        );
        assert_eq!(sample(Path::new("/nonexistent"), me, "x").unwrap(), None);
    }
}
