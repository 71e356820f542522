//! inotify on the cpuset cgroups of the domains' threads: a write to `cpuset.cpus` changes what a
//! thread may run on without any syscall tracepoint firing for the thread, so the pinning
//! pipeline watches the directories of its threads' cpuset cgroups (and their parents, whose
//! cpus bound the children's effective set) and re-reads the domains that live there.
//!
//! [`new`] returns the two halves: [`CgroupWatch`] is read on the event thread (its descriptor
//! is pollable), [`CgroupWatches`] is kept by the pipeline to add and remove directories.

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;

/// The reading half.
#[derive(Debug)]
pub(crate) struct CgroupWatch {
    inotify: Inotify,
    buf: Vec<u8>,
}

/// The directories watched, by watch descriptor.
#[derive(Debug)]
pub(crate) struct CgroupWatches {
    watches: Watches,
    by_dir: HashMap<Arc<Path>, WatchDescriptor>,
    dirs: HashMap<WatchDescriptor, Arc<Path>>,
}

/// What one drain of the watch found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CgroupChanges {
    /// Directories whose cpuset files were written (or that went away).
    pub(crate) changed: Vec<WatchDescriptor>,
    /// The kernel's queue overflowed: anything may have changed.
    pub(crate) overflow: bool,
}

/// Starts an inotify instance for cgroup directories.
pub(crate) fn new() -> io::Result<(CgroupWatch, CgroupWatches)> {
    let inotify = Inotify::init()?;
    let watches = inotify.watches();
    Ok((
        CgroupWatch {
            inotify,
            buf: vec![0; 4096],
        },
        CgroupWatches {
            watches,
            by_dir: HashMap::new(),
            dirs: HashMap::new(),
        },
    ))
}

/// Whether a file name in a cgroup directory is one of the cpuset files pinflow reads.
fn is_cpuset_file(name: &str) -> bool {
    matches!(name, "cpuset.cpus" | "cpuset.cpus.effective")
}

impl CgroupWatch {
    /// The inotify descriptor (readable while events are queued).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Takes every queued event (never blocks).
    pub(crate) fn drain(&mut self) -> io::Result<CgroupChanges> {
        let mut out = CgroupChanges::default();
        loop {
            let events = match self.inotify.read_events(&mut self.buf) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) => return Err(e),
            };
            let mut any = false;
            for ev in events {
                any = true;
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    out.overflow = true;
                    continue;
                }
                let relevant = ev
                    .mask
                    .intersects(EventMask::DELETE_SELF | EventMask::IGNORED)
                    || ev.name.and_then(|n| n.to_str()).is_some_and(is_cpuset_file);
                if relevant && !out.changed.contains(&ev.wd) {
                    out.changed.push(ev.wd);
                }
            }
            if !any {
                return Ok(out);
            }
        }
    }
}

impl CgroupWatches {
    /// Makes the watched directories exactly `dirs`. Returns how many could not be watched
    /// (a directory that vanished meanwhile is not counted).
    pub(crate) fn sync(&mut self, dirs: &HashSet<Arc<Path>>) -> u64 {
        let gone: Vec<Arc<Path>> = self
            .by_dir
            .keys()
            .filter(|d| !dirs.contains(*d))
            .cloned()
            .collect();
        for d in gone {
            if let Some(wd) = self.by_dir.remove(&d) {
                self.dirs.remove(&wd);
                // EINVAL: the kernel already dropped it (directory removed).
                let _ = self.watches.remove(wd);
            }
        }
        let mut failed = 0;
        for d in dirs {
            if self.by_dir.contains_key(d) {
                continue;
            }
            match self.watches.add(
                d,
                WatchMask::MODIFY | WatchMask::DELETE_SELF | WatchMask::ONLYDIR,
            ) {
                Ok(wd) => {
                    // The same directory under another name (a bind mount) shares its descriptor.
                    self.dirs.insert(wd.clone(), d.clone());
                    self.by_dir.insert(d.clone(), wd);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    failed += 1;
                    tracing::debug!(dir = %d.display(), error = %e, "cannot watch cgroup directory");
                }
            }
        }
        failed
    }

    /// The directory of a watch descriptor.
    pub(crate) fn dir(&self, wd: &WatchDescriptor) -> Option<&Path> {
        self.dirs.get(wd).map(|d| &**d)
    }

    /// Number of directories watched.
    pub(crate) fn len(&self) -> usize {
        self.by_dir.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_to_cpuset_files_are_reported_other_files_are_not() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, b): (Arc<Path>, Arc<Path>) = (
            tmp.path().join("vcpu0").into(),
            tmp.path().join("emulator").into(),
        );
        for d in [&a, &b] {
            std::fs::create_dir(d).expect("mkdir");
            std::fs::write(d.join("cpuset.cpus"), "0").expect("write");
        }
        let (mut watch, mut watches) = new().expect("inotify");
        assert_eq!(watches.sync(&HashSet::from([a.clone(), b.clone()])), 0);
        assert_eq!(watches.len(), 2);
        assert_eq!(watch.drain().expect("drain"), CgroupChanges::default());
        std::fs::write(a.join("cgroup.procs"), "1").expect("write");
        assert_eq!(watch.drain().expect("drain"), CgroupChanges::default());
        std::fs::write(a.join("cpuset.cpus"), "1").expect("write");
        let got = watch.drain().expect("drain");
        assert_eq!(got.changed.len(), 1);
        assert_eq!(watches.dir(&got.changed[0]), Some(&*a));
        // Unwatched directories are not reported any more.
        assert_eq!(watches.sync(&HashSet::from([b.clone()])), 0);
        std::fs::write(a.join("cpuset.cpus"), "0").expect("write");
        std::fs::write(b.join("cpuset.cpus.effective"), "0").expect("write");
        let got = watch.drain().expect("drain");
        let dirs: Vec<_> = got.changed.iter().filter_map(|w| watches.dir(w)).collect();
        assert_eq!(dirs, vec![&*b]);
        // A directory that does not exist is skipped, not an error.
        assert_eq!(
            watches.sync(&HashSet::from([tmp.path().join("gone").into()])),
            0
        );
        assert_eq!(watches.len(), 0);
    }
}
