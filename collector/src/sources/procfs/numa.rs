//! NUMA placement from sysfs and cgroupfs: the host's nodes (their CPUs and huge-page pools,
//! `<sys>/devices/system/node/nodeN/`) and where a domain's memory is (its cgroup's
//! `cpuset.mems` and `memory.numa_stat`).
//!
//! `memory.numa_stat` differs by cgroup version: v1 lines are `total=PAGES N0=PAGES …` (pages;
//! `total` is the cgroup's LRU pages: anon, file and unevictable), v2 lines are
//! `anon N0=BYTES …` (bytes; pinflow adds `anon` and `file`). Guest memory backed by huge pages
//! shows in neither (it is in the per-node pools instead).

use super::{HostFs, ProcError, parse_err, read_bounded, relative};
use crate::model::cpuset::CpuSet;
use crate::model::pinning::{HostNode, HugepagePool};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Most NUMA nodes or huge-page sizes read (the kernel's `MAX_NUMNODES` is 1024).
const MAX_NODES: usize = 1024;

/// The memory page size in bytes (`sysconf(_SC_PAGESIZE)`), for v1's page counts.
#[allow(unsafe_code)] // sysconf has no safe wrapper in the workspace's crates.
fn page_size() -> u64 {
    // SAFETY: sysconf takes a constant and touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
}

/// `N` of a `nodeN` / `N0=` style name.
fn node_number(s: &str, prefix: &str) -> Option<u32> {
    s.strip_prefix(prefix)?.parse().ok()
}

impl HostFs {
    /// The host's NUMA nodes in node order, with their CPUs and huge-page pools. A host without
    /// `<sys>/devices/system/node` (no NUMA support) has none.
    pub(crate) fn numa_nodes(&self) -> Result<Vec<HostNode>, ProcError> {
        let dir = self.sys_root().join("devices/system/node");
        let listing = match std::fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(ProcError::Io { path: dir, source }),
        };
        let mut ids: Vec<u32> = listing
            .filter_map(|e| node_number(e.ok()?.file_name().to_str()?, "node"))
            .take(MAX_NODES)
            .collect();
        ids.sort_unstable();
        let mut nodes = Vec::with_capacity(ids.len());
        for node in ids {
            let nd = dir.join(format!("node{node}"));
            let path = nd.join("cpulist");
            let cpus = match read_bounded(&path) {
                Ok(t) => t.parse().map_err(|e: crate::model::cpuset::CpuSetError| {
                    parse_err(&path, e.to_string())
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ProcError::Io { path, source }),
            };
            nodes.push(HostNode {
                node,
                cpus,
                hugepages: hugepage_pools(&nd.join("hugepages"))?,
            });
        }
        Ok(nodes)
    }

    /// Where the memory of the domain whose QEMU process is `pid` is: its cgroup's
    /// `cpuset.mems` (`None` when unreadable) and its bytes per host node (empty when
    /// `memory.numa_stat` is absent). `cpuset_cgroup` is the QEMU main thread's cpuset cgroup
    /// (libvirt's `<domain cgroup>/emulator`).
    pub(crate) fn domain_numa(
        &self,
        pid: u32,
        cpuset_cgroup: &str,
    ) -> Result<(Option<CpuSet>, BTreeMap<u32, u64>), ProcError> {
        let domain = cpuset_cgroup
            .strip_suffix("/emulator")
            .unwrap_or(cpuset_cgroup);
        let mut mems = None;
        for dir in self.cpuset_dirs(domain) {
            mems = read_mems(&dir)?;
            if mems.is_some() {
                break;
            }
        }
        let cg_path = self.proc_root().join(format!("{pid}/task/{pid}/cgroup"));
        let cgroup_file = match read_bounded(&cg_path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((mems, BTreeMap::new())),
            Err(source) => {
                return Err(ProcError::Io {
                    path: cg_path,
                    source,
                });
            }
        };
        for (path, v1) in self.numa_stat_files(&cgroup_file, domain) {
            match read_bounded(&path) {
                Ok(text) => {
                    let bytes = parse_numa_stat(&text, v1, page_size())
                        .map_err(|reason| parse_err(&path, reason))?;
                    return Ok((mems, bytes));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(ProcError::Io { path, source }),
            }
        }
        Ok((mems, BTreeMap::new()))
    }

    /// Candidate `memory.numa_stat` files of the domain, v1's first (with `true`): the v1
    /// `memory` line of `/proc/PID/cgroup`, else the domain's cgroup in the v2 hierarchy.
    fn numa_stat_files(&self, cgroup_file: &str, domain: &str) -> Vec<(PathBuf, bool)> {
        let root = self.sys_root().join("fs/cgroup");
        let mut out = Vec::new();
        for line in cgroup_file.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if controllers.split(',').any(|c| c == "memory")
                && let Ok(rel) = relative(path)
            {
                for mount in [root.join("memory"), root.join(controllers)] {
                    out.push((mount.join(&rel).join("memory.numa_stat"), true));
                }
            }
        }
        if let Ok(rel) = relative(domain) {
            for r in [root.clone(), root.join("unified")] {
                out.push((r.join(&rel).join("memory.numa_stat"), false));
            }
        }
        out
    }
}

/// `cpuset.mems` of a cpuset cgroup directory (`cpuset.mems.effective` when empty or absent,
/// as v2 leaves it; v1 names it `cpuset.effective_mems`).
fn read_mems(dir: &Path) -> Result<Option<CpuSet>, ProcError> {
    for name in [
        "cpuset.mems",
        "cpuset.mems.effective",
        "cpuset.effective_mems",
    ] {
        let path = dir.join(name);
        match read_bounded(&path) {
            Ok(t) if t.trim().is_empty() => {}
            Ok(t) => {
                return t
                    .parse()
                    .map(Some)
                    .map_err(|e: crate::model::cpuset::CpuSetError| {
                        parse_err(&path, e.to_string())
                    });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(ProcError::Io { path, source }),
        }
    }
    Ok(None)
}

/// Bytes per node from a `memory.numa_stat` text: v1 `total=… N0=…` (pages × `page`), v2 the
/// `anon` and `file` lines (bytes).
pub(crate) fn parse_numa_stat(
    text: &str,
    v1: bool,
    page: u64,
) -> Result<BTreeMap<u32, u64>, String> {
    let mut out: BTreeMap<u32, u64> = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        let (wanted, scale, rest): (bool, u64, Vec<&str>) = match (v1, first.split_once('=')) {
            (true, Some(("total", _))) => (true, page, fields.collect()),
            (false, None) if first == "anon" || first == "file" => (true, 1, fields.collect()),
            _ => (false, 1, Vec::new()),
        };
        if !wanted {
            continue;
        }
        for f in rest {
            let Some((n, v)) = f.split_once('=') else {
                return Err(format!("field {f:?} is not NODE=VALUE"));
            };
            let node = node_number(n, "N").ok_or_else(|| format!("bad node {n:?}"))?;
            let value: u64 = v.parse().map_err(|_| format!("bad value {v:?}"))?;
            if out.len() >= MAX_NODES && !out.contains_key(&node) {
                return Err("too many nodes".into());
            }
            let slot = out.entry(node).or_default();
            *slot = slot.saturating_add(value.saturating_mul(scale));
        }
    }
    Ok(out)
}

/// The huge-page pools of one node (`hugepages/hugepages-<KiB>kB/{nr,free}_hugepages`), by size.
fn hugepage_pools(dir: &Path) -> Result<Vec<HugepagePool>, ProcError> {
    let listing = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ProcError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut pools = Vec::new();
    for e in listing.filter_map(Result::ok).take(MAX_NODES) {
        let name = e.file_name();
        let Some(kib) = name
            .to_str()
            .and_then(|n| n.strip_prefix("hugepages-")?.strip_suffix("kB"))
            .and_then(|k| k.parse::<u64>().ok())
        else {
            continue;
        };
        let count = |file: &str| -> Result<u64, ProcError> {
            let path = e.path().join(file);
            let t = read_bounded(&path).map_err(|source| ProcError::Io {
                path: path.clone(),
                source,
            })?;
            t.trim()
                .parse()
                .map_err(|_| parse_err(&path, format!("{:?} is not a count", t.trim())))
        };
        pools.push(HugepagePool {
            size_bytes: kib.saturating_mul(1024),
            total: count("nr_hugepages")?,
            free: count("free_hugepages")?,
        });
    }
    pools.sort_by_key(|p| p.size_bytes);
    Ok(pools)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_node_host() -> HostFs {
        let root =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostfs/numa-2node");
        HostFs::new(root.join("proc"), root.join("sys"))
    }

    fn cpus(s: &str) -> CpuSet {
        s.parse().expect("cpu list")
    }

    #[test]
    fn two_node_host_nodes_cpus_and_hugepage_pools() {
        let nodes = two_node_host().numa_nodes().expect("nodes");
        let got: Vec<_> = nodes
            .iter()
            .map(|n| {
                (
                    n.node,
                    n.cpus.to_string(),
                    n.hugepages
                        .iter()
                        .map(|p| (p.size_bytes, p.total, p.free))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, "0".into(), vec![(2 << 20, 512, 256), (1 << 30, 0, 0)]),
                (1, "1".into(), vec![(2 << 20, 512, 512), (1 << 30, 2, 1)]),
            ]
        );
    }

    #[test]
    fn domain_memory_per_node_v1_pages_and_v2_bytes() {
        let fs = two_node_host();
        // v1: the memory controller's line of /proc/PID/cgroup; pages × the page size.
        let (mems, bytes) = fs
            .domain_numa(100, "/machine/qemu-1-a.libvirt-qemu/emulator")
            .expect("v1 domain");
        assert_eq!(mems, Some(cpus("0")));
        let p = page_size();
        assert_eq!(bytes, BTreeMap::from([(0, 1000 * p), (1, 300 * p)]));
        // v2: anon + file lines in bytes; cpuset.mems empty → cpuset.mems.effective.
        let (mems, bytes) = fs
            .domain_numa(
                200,
                "/machine.slice/machine-qemu-2-b.scope/libvirt/emulator",
            )
            .expect("v2 domain");
        assert_eq!(mems, Some(cpus("0-1")));
        assert_eq!(bytes, BTreeMap::from([(0, 4096 + 8192), (1, 1 << 20)]));
    }

    #[test]
    fn numa_stat_garbage_is_an_error_and_a_missing_tree_is_empty() {
        assert!(parse_numa_stat("total=1 N0=x", true, 4096).is_err());
        assert!(parse_numa_stat("anon N0", false, 1).is_err());
        assert!(parse_numa_stat("anon Nx=1", false, 1).is_err());
        assert_eq!(
            parse_numa_stat("hierarchical_total=9 N0=9\nfile=1 N0=1", true, 10),
            Ok(BTreeMap::new())
        );
        let none = HostFs::new("/nonexistent/proc".into(), "/nonexistent/sys".into());
        assert!(none.numa_nodes().expect("no NUMA sysfs").is_empty());
        let (mems, bytes) = none.domain_numa(1, "/x/emulator").expect("nothing");
        assert_eq!((mems, bytes.len()), (None, 0));
    }
}
