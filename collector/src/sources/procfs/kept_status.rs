//! `status` files of threads kept open for the per-tick affinity check where
//! `sched_getaffinity(2)` cannot reach the threads: a procfs root of another pid namespace (a pod
//! without `hostPID`) or a fixture tree. A check is one `pread(2)` from offset 0 (procfs makes the
//! text again for every read from the start) instead of a path walk, an open, reads and a close.
//!
//! An open `status` file stays bound to its thread: once the thread exits, reading it fails with
//! `ESRCH`, even when its tid is reused. (A fixture tree's file deleted with its directory reads
//! on as it was; the next full pass, which lists the threads again, drops it.) How many files stay open is bounded by half of the
//! process's open-file limit (at most [`MAX_KEPT`]); a thread beyond it is read by path.

use super::{HostFs, ProcError, read_small};
use crate::model::cpuset::CpuSet;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Most `status` files kept open, whatever the open-file limit.
pub(crate) const MAX_KEPT: usize = 16_384;

/// Open `status` files by tid, each with its pid and the round it was last read in.
#[derive(Debug, Default)]
pub(crate) struct KeptStatus {
    files: HashMap<u32, Kept>,
    limit: usize,
    round: u64,
    /// The read buffer, reused from read to read.
    buf: Vec<u8>,
    /// The set of the last thread read by path (beyond the limit).
    overflow: CpuSet,
}

#[derive(Debug)]
struct Kept {
    pid: u32,
    file: File,
    round: u64,
    /// The affinity line of the last read and its set: an unchanged line is not parsed again.
    line: Vec<u8>,
    set: Option<CpuSet>,
}

impl KeptStatus {
    /// An empty set, bounded by half the soft open-file limit minus 64 (the rest is the
    /// daemon's: sockets, cgroup watches, scrapes), at most [`MAX_KEPT`].
    pub(crate) fn new() -> KeptStatus {
        KeptStatus {
            files: HashMap::new(),
            limit: (open_file_limit() / 2).saturating_sub(64).min(MAX_KEPT),
            round: 0,
            buf: Vec::new(),
            overflow: CpuSet::default(),
        }
    }

    /// Starts a round of checks: files not read until [`Self::end_round`] are closed then.
    pub(crate) fn begin_round(&mut self) {
        self.round += 1;
    }

    /// Closes the files of threads not checked since [`Self::begin_round`] (gone, or no longer
    /// checked every tick).
    pub(crate) fn end_round(&mut self) {
        let round = self.round;
        self.files.retain(|_, k| k.round == round);
    }

    /// How many files are open.
    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether thread `tid`'s allowed CPUs, read from its kept `status` file (opened on first
    /// use), differ from `known`. A thread that cannot be read (gone, unreadable, garbled)
    /// differs: the caller re-reads it in full and finds out why.
    pub(crate) fn differs(&mut self, fs: &HostFs, pid: u32, tid: u32, known: &CpuSet) -> bool {
        match self.affinity(fs, pid, tid) {
            Ok(set) => set != known,
            Err(_) => true,
        }
    }

    /// Thread `tid`'s allowed CPUs from its kept `status` file (opened on first use).
    pub(crate) fn affinity(
        &mut self,
        fs: &HostFs,
        pid: u32,
        tid: u32,
    ) -> Result<&CpuSet, ProcError> {
        let round = self.round;
        let path = || fs.task_dir(pid, tid).join("status");
        if self.files.get(&tid).is_some_and(|k| k.pid != pid) {
            self.files.remove(&tid);
        }
        if !self.files.contains_key(&tid) {
            if self.files.len() >= self.limit {
                // Beyond the limit: by path, as without kept files.
                let set = fs.status_affinity(&path(), pid, tid)?;
                self.overflow = set;
                return Ok(&self.overflow);
            }
            let file = File::open(path()).map_err(|e| fs.task_error(&path(), pid, tid, e))?;
            self.files.insert(
                tid,
                Kept {
                    pid,
                    file,
                    round,
                    line: Vec::new(),
                    set: None,
                },
            );
        }
        let read = match self.files.get_mut(&tid) {
            Some(kept) => {
                kept.round = round;
                let file = &kept.file;
                let mut offset = 0u64;
                read_small(&mut self.buf, |b| {
                    let n = file.read_at(b, offset)?;
                    offset += n as u64;
                    Ok(n)
                })
            }
            None => return Err(ProcError::Gone { pid, tid }),
        };
        if let Err(source) = read {
            self.files.remove(&tid);
            return Err(fs.task_error(&path(), pid, tid, source));
        }
        let Some(kept) = self.files.get_mut(&tid) else {
            return Err(ProcError::Gone { pid, tid });
        };
        let Some(line) = affinity_line(&self.buf) else {
            return Err(super::parse_err(&path(), "no Cpus_allowed_list"));
        };
        if kept.set.is_none() || kept.line != line {
            let parsed = std::str::from_utf8(line)
                .map_err(|e| e.to_string())
                .and_then(super::parse_affinity);
            match parsed {
                Ok(set) => {
                    kept.line.clear();
                    kept.line.extend_from_slice(line);
                    kept.set = Some(set);
                }
                Err(reason) => return Err(super::parse_err(&path(), reason)),
            }
        }
        kept.set.as_ref().ok_or(ProcError::Gone { pid, tid })
    }
}

/// The `Cpus_allowed_list:` line of a `status` text (or `Cpus_allowed:` when the kernel has
/// no list form), found without checking the whole text for UTF-8.
fn affinity_line(status: &[u8]) -> Option<&[u8]> {
    let line_of = |key: &[u8]| {
        // The line starts after the newline the key begins with.
        let line = status.get(memchr::memmem::find(status, key)? + 1..)?;
        let end = memchr::memchr(b'\n', line).unwrap_or(line.len());
        line.get(..end)
    };
    line_of(b"\nCpus_allowed_list:").or_else(|| line_of(b"\nCpus_allowed:"))
}

/// The soft `RLIMIT_NOFILE` (1024 when it cannot be read).
#[allow(unsafe_code)] // getrlimit has no safe wrapper in the workspace's crates.
fn open_file_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the call to fill.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if r != 0 {
        return 1024;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

impl HostFs {
    /// The error of a task file that could not be opened or read: [`ProcError::Gone`] when the
    /// thread exited (`ESRCH` from procfs, or its task directory is gone).
    pub(crate) fn task_error(
        &self,
        path: &std::path::Path,
        pid: u32,
        tid: u32,
        source: io::Error,
    ) -> ProcError {
        if source.raw_os_error() == Some(libc::ESRCH)
            || (source.kind() == io::ErrorKind::NotFound && !self.task_dir(pid, tid).exists())
        {
            return ProcError::Gone { pid, tid };
        }
        ProcError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::affinity_line;

    #[test]
    fn finds_the_affinity_line_of_a_status_text() {
        let status =
            b"Name:\tCPU 0/KVM\nCpus_allowed:\tf\nCpus_allowed_list:\t0-3\nMems_allowed:\t1\n";
        assert_eq!(affinity_line(status), Some(&b"Cpus_allowed_list:\t0-3"[..]));
        let last = b"Name:\tx\nCpus_allowed_list:\t5";
        assert_eq!(affinity_line(last), Some(&b"Cpus_allowed_list:\t5"[..]));
        let mask_only = b"Name:\tx\nCpus_allowed:\t3\n";
        assert_eq!(affinity_line(mask_only), Some(&b"Cpus_allowed:\t3"[..]));
        assert_eq!(
            affinity_line(b"Cpus_allowed_list:\t1\n"),
            None,
            "not a status text"
        );
        assert_eq!(affinity_line(b""), None);
    }
}
