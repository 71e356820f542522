//! libvirt inventory: running domains read from libvirt's live state directory (`/run/libvirt/qemu`).
//!
//! For every running domain libvirtd keeps `NAME.xml`, a `<domstatus state pid>` document that wraps the
//! live `<domain id>` definition and lists the vCPU threads (`<vcpus><vcpu id pid/></vcpus>`). Reading these
//! files needs no libvirt RPC, no `virsh`, and works from a container that mounts the host's `/run`.
//! libvirtd rewrites the files atomically (a temporary file renamed over `NAME.xml`), so a reader never sees
//! half a file from libvirt itself; broken files still get a clear [`DomainXmlError`].
//!
//! This module owns three things: the pure parser [`parse_domstatus`], the change-tracking
//! [`LibvirtInventory`] (re-reads only files whose stamp changed), and [`watch_state_dir`] (inotify wake-ups).

use crate::model::cpuset::{CpuSet, CpuSetError};
use crate::model::pinning::{
    Domain, GuestCell, InterfaceSpec, IothreadSpec, NovaInstance, NumaBinding, NumaMode, NumaSpec,
    SchedPolicy, SchedSpec, VcpuSpec,
};
use crate::sources::{CanRun, HostPaths, SourceDef};
use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
use roxmltree::Node;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// The libvirt source: running domains, their Nova metadata, vCPU threads and pins, read from
/// libvirt's live state files.
pub(crate) const SOURCE: SourceDef = SourceDef {
    name: "libvirt",
    collector: "pinning",
    can_run,
};

/// Reads the state directory once and says whether inotify can watch it.
fn can_run(host: &HostPaths) -> Vec<CanRun> {
    let dir = &host.libvirt_state_dir;
    let mut inventory = LibvirtInventory::new(dir.clone());
    let refresh = inventory.refresh();
    let result = match &refresh.dir_error {
        Some(e) => Err(e.clone()),
        None => Ok(format!(
            "{} running domain(s) in {}{}{}",
            inventory.domains().count(),
            dir.display(),
            if refresh.errors.is_empty() {
                String::new()
            } else {
                format!(", {} unreadable file(s)", refresh.errors.len())
            },
            match can_watch(dir) {
                Ok(_) => String::new(),
                Err(e) => format!(
                    "; inotify unavailable ({e}): serve falls back to a periodic rescan every [pinning] interval_seconds"
                ),
            }
        )),
    };
    vec![CanRun {
        bridge: None,
        result,
        problems: refresh
            .errors
            .iter()
            .map(|(f, e)| format!("{f}: {e}"))
            .collect(),
    }]
}

/// libvirt's default live state directory for the system QEMU driver.
#[cfg(test)]
pub(crate) const DEFAULT_STATE_DIR: &str = "/run/libvirt/qemu";

/// Largest status file pinflow reads (real ones are ~10 KiB; QEMU capability flags make up most of it).
pub(crate) const MAX_XML_BYTES: u64 = 4 * 1024 * 1024;

/// Most vCPUs accepted per domain (QEMU's own limit is far lower); guards against absurd input.
pub(crate) const MAX_VCPUS: u32 = 8192;

/// Namespace URIs of Nova's instance metadata. Nova writes 1.1; 1.0 has the same fields.
pub(crate) const NOVA_NAMESPACES: [&str; 2] = [
    "http://openstack.org/xmlns/libvirt/nova/1.1",
    "http://openstack.org/xmlns/libvirt/nova/1.0",
];

/// How often [`watch_state_dir`] retries when the state directory does not exist (yet).
pub(crate) const WATCH_RETRY: Duration = Duration::from_secs(3);

/// Why a libvirt status file could not be turned into a [`Domain`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DomainXmlError {
    /// The text is not well-formed XML (or uses a DTD, which is refused); the message carries the position.
    #[error("XML syntax error: {0}")]
    Syntax(#[from] roxmltree::Error),
    /// The root element is something else (e.g. a plain `<domain>` from `/etc/libvirt/qemu`).
    #[error("not a <domstatus> document (root element is <{0}>)")]
    NotDomstatus(String),
    /// A required element is absent or empty.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A numeric attribute or text is not a (non-negative, in-range) number.
    #[error("{what} '{value}' is not a number")]
    NotANumber {
        /// What the number is (`vcpu pid`, `vcpupin vcpu`, …).
        what: &'static str,
        /// The text found.
        value: String,
    },
    /// A CPU list attribute does not parse.
    #[error("bad cpuset {input:?} in <{element}>: {reason}")]
    CpuSet {
        /// The element carrying the list (`vcpupin`, `emulatorpin`, `vcpu`).
        element: &'static str,
        /// The attribute text.
        input: String,
        /// What is wrong with it (from [`CpuSetError`]).
        reason: &'static str,
    },
    /// An attribute holds a value libvirt does not write (`scheduler`, numatune `mode`, …).
    #[error("bad {what} '{value}'")]
    BadValue {
        /// What the value is.
        what: &'static str,
        /// The text found.
        value: String,
    },
    /// The domain declares more vCPUs than pinflow accepts.
    #[error("vcpu count {0} exceeds the limit of {MAX_VCPUS}")]
    TooManyVcpus(u32),
    /// The file is larger than [`MAX_XML_BYTES`].
    #[error("file is {0} bytes, larger than the {MAX_XML_BYTES}-byte limit")]
    TooLarge(u64),
    /// The file is not UTF-8.
    #[error("file is not valid UTF-8")]
    NotUtf8,
    /// The file could not be read.
    #[error("cannot read file: {0}")]
    Io(String),
}

/// Parses one libvirt live status document (`/run/libvirt/qemu/NAME.xml`) into a [`Domain`].
///
/// Expected placement follows libvirt's rules: a vCPU's pin is its `<cputune><vcpupin>`, else the
/// `<vcpu cpuset>` attribute, else none (floating). The emulator pin is `<emulatorpin>`, else `<vcpu cpuset>`
/// (libvirt confines emulator threads to that set too — observed with libvirt 9.0), else none.
pub(crate) fn parse_domstatus(xml: &str) -> Result<Domain, DomainXmlError> {
    let doc = roxmltree::Document::parse(xml)?;
    let status = doc.root_element();
    if !status.has_tag_name("domstatus") {
        return Err(DomainXmlError::NotDomstatus(
            status.tag_name().name().to_string(),
        ));
    }
    let pid = status
        .attribute("pid")
        .map(|v| number("domstatus pid", v))
        .transpose()?;
    let dom =
        child(status, "domain").ok_or(DomainXmlError::Missing("<domain> inside <domstatus>"))?;

    let name = child_text(dom, "name").ok_or(DomainXmlError::Missing("<name>"))?;
    let uuid = child_text(dom, "uuid").ok_or(DomainXmlError::Missing("<uuid>"))?;
    // libvirt writes id='-1' for a domain that is not running; treat any negative id as absent.
    let id = match dom.attribute("id").map(str::trim) {
        Some(v) if v.starts_with('-') => None,
        Some(v) => Some(number("domain id", v)?),
        None => None,
    };

    // The running vCPU threads, from the status wrapper (not the <vcpus> hotplug list inside <domain>).
    let mut tids = BTreeMap::new();
    if let Some(list) = child(status, "vcpus") {
        for v in children(list, "vcpu") {
            let vid = number("vcpu id", v.attribute("id").unwrap_or(""))?;
            let tid = number("vcpu pid", v.attribute("pid").unwrap_or(""))?;
            tids.insert(vid, tid);
        }
    }

    let vcpu_el = child(dom, "vcpu").ok_or(DomainXmlError::Missing("<vcpu>"))?;
    let max = number("vcpu count", vcpu_el.text().unwrap_or("").trim())?;
    let current = vcpu_el
        .attribute("current")
        .map(|v| number("vcpu current", v))
        .transpose()?
        .unwrap_or(max);
    if max > MAX_VCPUS || current > MAX_VCPUS {
        return Err(DomainXmlError::TooManyVcpus(max.max(current)));
    }
    let default_pin = cpuset_attr(vcpu_el, "cpuset", "vcpu")?;

    let mut ids = online_vcpu_ids(dom, current)?;
    ids.extend(tids.keys().copied());
    if ids.len() > MAX_VCPUS as usize {
        return Err(DomainXmlError::TooManyVcpus(
            u32::try_from(ids.len()).unwrap_or(u32::MAX),
        ));
    }

    let mut pins = BTreeMap::new();
    let mut emulator_pin = None;
    let mut iothreads = iothread_ids(dom)?;
    let mut vcpu_sched = BTreeMap::new();
    if let Some(cputune) = child(dom, "cputune") {
        for p in children(cputune, "vcpupin") {
            let vid = number("vcpupin vcpu", p.attribute("vcpu").unwrap_or(""))?;
            if let Some(set) = cpuset_attr(p, "cpuset", "vcpupin")? {
                pins.insert(vid, set);
            }
        }
        if let Some(e) = child(cputune, "emulatorpin") {
            emulator_pin = cpuset_attr(e, "cpuset", "emulatorpin")?;
        }
        for p in children(cputune, "iothreadpin") {
            let id = number(
                "iothreadpin iothread",
                p.attribute("iothread").unwrap_or(""),
            )?;
            let pin = cpuset_attr(p, "cpuset", "iothreadpin")?;
            if let Some(t) = iothreads.get_mut(&id) {
                t.pin = pin;
            }
        }
        for (el, attr) in [("vcpusched", "vcpus"), ("iothreadsched", "iothreads")] {
            for p in children(cputune, el) {
                let spec = sched_spec(p)?;
                for id in cpuset_attr(p, attr, el)?.iter().flat_map(CpuSet::iter) {
                    if el == "vcpusched" {
                        vcpu_sched.insert(id, spec);
                    } else if let Some(t) = iothreads.get_mut(&id) {
                        t.sched = Some(spec);
                    }
                }
            }
        }
    }
    let emulator_pin = emulator_pin.or_else(|| default_pin.clone());

    let vcpus = ids
        .into_iter()
        .map(|vid| VcpuSpec {
            id: vid,
            tid: tids.get(&vid).copied(),
            pin: pins.get(&vid).cloned().or_else(|| default_pin.clone()),
            shared_set: !pins.contains_key(&vid) && default_pin.is_some(),
            sched: vcpu_sched.get(&vid).copied(),
        })
        .collect();

    let interfaces = child(dom, "devices")
        .map(|d| {
            children(d, "interface")
                .map(|i| InterfaceSpec {
                    target_dev: child(i, "target")
                        .and_then(|t| t.attribute("dev"))
                        .unwrap_or("")
                        .to_string(),
                    mac: child(i, "mac")
                        .and_then(|m| m.attribute("address"))
                        .unwrap_or("")
                        .to_string(),
                })
                .collect()
        })
        .unwrap_or_default();

    Ok(Domain {
        name,
        uuid,
        id,
        pid,
        nova: child(dom, "metadata").and_then(nova_instance),
        vcpus,
        emulator_pin,
        interfaces,
        iothreads: iothreads.into_values().collect(),
        numa: numa_spec(dom)?,
    })
}

/// The I/O threads: `<iothreadids><iothread id>` when listed, else ids `1..=<iothreads>`.
fn iothread_ids(dom: Node<'_, '_>) -> Result<BTreeMap<u32, IothreadSpec>, DomainXmlError> {
    let spec = |id| IothreadSpec {
        id,
        pin: None,
        sched: None,
    };
    let mut out = BTreeMap::new();
    if let Some(list) = child(dom, "iothreadids") {
        for t in children(list, "iothread") {
            let id = number("iothread id", t.attribute("id").unwrap_or(""))?;
            out.insert(id, spec(id));
            if out.len() > MAX_VCPUS as usize {
                return Err(DomainXmlError::TooManyVcpus(MAX_VCPUS + 1));
            }
        }
    }
    if out.is_empty()
        && let Some(n) = child_text(dom, "iothreads")
    {
        let n = number("iothreads", &n)?;
        if n > MAX_VCPUS {
            return Err(DomainXmlError::TooManyVcpus(n));
        }
        out.extend((1..=n).map(|id| (id, spec(id))));
    }
    Ok(out)
}

/// `scheduler` and `priority` of a `<vcpusched>`/`<iothreadsched>`.
fn sched_spec(n: Node<'_, '_>) -> Result<SchedSpec, DomainXmlError> {
    let value = n.attribute("scheduler").unwrap_or("");
    let policy = SchedPolicy::from_libvirt(value).ok_or(DomainXmlError::BadValue {
        what: "scheduler",
        value: value.to_string(),
    })?;
    let priority = match n.attribute("priority") {
        Some(p) if policy.is_realtime() => Some(number("sched priority", p)?),
        _ => None,
    };
    Ok(SchedSpec { policy, priority })
}

/// `<numatune>` and the guest cells of `<cpu><numa>`.
fn numa_spec(dom: Node<'_, '_>) -> Result<NumaSpec, DomainXmlError> {
    let binding =
        |n: Node<'_, '_>, el: &'static str| -> Result<Option<NumaBinding>, DomainXmlError> {
            let mode_attr = n.attribute("mode");
            let mode = NumaMode::from_libvirt(mode_attr).ok_or(DomainXmlError::BadValue {
                what: "numatune mode",
                value: mode_attr.unwrap_or("").to_string(),
            })?;
            // `placement='auto'` without a nodeset: numad decides; nothing to check against.
            Ok(cpuset_attr(n, "nodeset", el)?.map(|nodeset| NumaBinding { mode, nodeset }))
        };
    let mut spec = NumaSpec::default();
    if let Some(tune) = child(dom, "numatune") {
        if let Some(m) = child(tune, "memory") {
            spec.memory = binding(m, "numatune memory")?;
        }
        for m in children(tune, "memnode") {
            let cell = number("memnode cellid", m.attribute("cellid").unwrap_or(""))?;
            if let Some(b) = binding(m, "numatune memnode")? {
                spec.memnodes.insert(cell, b);
            }
        }
    }
    if let Some(numa) = child(dom, "cpu").and_then(|c| child(c, "numa")) {
        for c in children(numa, "cell") {
            let id = match c.attribute("id") {
                Some(v) => number("cell id", v)?,
                None => u32::try_from(spec.cells.len()).unwrap_or(u32::MAX),
            };
            let vcpus = cpuset_attr(c, "cpus", "numa cell")?.unwrap_or_default();
            let memory_bytes = memory_bytes(c)?;
            spec.cells.push(GuestCell {
                id,
                vcpus,
                memory_bytes,
            });
            if spec.cells.len() > MAX_VCPUS as usize {
                return Err(DomainXmlError::TooManyVcpus(MAX_VCPUS + 1));
            }
        }
    }
    Ok(spec)
}

/// A `<cell memory unit>` in bytes (libvirt's default unit is KiB).
fn memory_bytes(n: Node<'_, '_>) -> Result<u64, DomainXmlError> {
    let text = n.attribute("memory").unwrap_or("0").trim();
    let value: u64 = text.parse().map_err(|_| DomainXmlError::NotANumber {
        what: "cell memory",
        value: text.to_string(),
    })?;
    let unit = match n.attribute("unit").map(str::trim).unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        other => {
            return Err(DomainXmlError::BadValue {
                what: "memory unit",
                value: other.to_string(),
            });
        }
    };
    Ok(value.saturating_mul(unit))
}

/// The vCPU ids that are online: from the hotplug list `<domain><vcpus><vcpu id enabled>` when present,
/// else `0..current`.
fn online_vcpu_ids(
    dom: Node<'_, '_>,
    current: u32,
) -> Result<std::collections::BTreeSet<u32>, DomainXmlError> {
    let mut ids = std::collections::BTreeSet::new();
    let listed: Vec<Node<'_, '_>> = child(dom, "vcpus")
        .map(|l| children(l, "vcpu").collect())
        .unwrap_or_default();
    if listed.is_empty() {
        ids.extend(0..current);
        return Ok(ids);
    }
    for v in listed {
        if v.attribute("enabled") != Some("no") {
            ids.insert(number("vcpu id", v.attribute("id").unwrap_or(""))?);
        }
    }
    Ok(ids)
}

/// Reads `<nova:instance>` (matched by namespace URI, whatever its prefix) from `<metadata>`.
fn nova_instance(metadata: Node<'_, '_>) -> Option<NovaInstance> {
    let inst = metadata
        .children()
        .find(|n| n.is_element() && n.tag_name().name() == "instance" && is_nova(n))?;
    let text = |n: Option<Node<'_, '_>>| n.and_then(|n| n.text()).unwrap_or("").trim().to_string();
    let attr = |n: Option<Node<'_, '_>>, a: &str| {
        n.and_then(|n| n.attribute(a))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let owner = nova_child(inst, "owner");
    let user = owner.and_then(|o| nova_child(o, "user"));
    let project = owner.and_then(|o| nova_child(o, "project"));
    Some(NovaInstance {
        name: text(nova_child(inst, "name")),
        project: text(project),
        project_id: attr(project, "uuid"),
        user: text(user),
        user_id: attr(user, "uuid"),
        flavor: attr(nova_child(inst, "flavor"), "name"),
    })
}

fn is_nova(n: &Node<'_, '_>) -> bool {
    n.tag_name()
        .namespace()
        .is_some_and(|ns| NOVA_NAMESPACES.contains(&ns))
}

fn nova_child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name && is_nova(c))
}

/// First child element named `name` in no namespace.
fn child<'a, 'i: 'a>(n: Node<'a, 'i>, name: &'a str) -> Option<Node<'a, 'i>> {
    children(n, name).next()
}

/// Child elements named `name` in no namespace.
fn children<'a, 'i: 'a>(n: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    n.children().filter(move |c| {
        c.is_element() && c.tag_name().namespace().is_none() && c.tag_name().name() == name
    })
}

/// Trimmed, non-empty text of the child element `name`.
fn child_text(n: Node<'_, '_>, name: &str) -> Option<String> {
    child(n, name)
        .and_then(|c| c.text())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

fn number(what: &'static str, value: &str) -> Result<u32, DomainXmlError> {
    value
        .trim()
        .parse::<u32>()
        .map_err(|_| DomainXmlError::NotANumber {
            what,
            value: value.to_string(),
        })
}

/// Parses an optional CPU list attribute; an absent or blank attribute is `None`.
fn cpuset_attr(
    n: Node<'_, '_>,
    attr: &str,
    element: &'static str,
) -> Result<Option<CpuSet>, DomainXmlError> {
    match n.attribute(attr).map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<CpuSet>()
            .map(Some)
            .map_err(|e: CpuSetError| DomainXmlError::CpuSet {
                element,
                input: e.input,
                reason: e.reason,
            }),
    }
}

/// Reads and parses one status file, refusing files above [`MAX_XML_BYTES`].
pub(crate) fn read_domstatus(path: &Path) -> Result<Domain, DomainXmlError> {
    let file = File::open(path).map_err(|e| DomainXmlError::Io(e.to_string()))?;
    let len = file
        .metadata()
        .map_err(|e| DomainXmlError::Io(e.to_string()))?
        .len();
    if len > MAX_XML_BYTES {
        return Err(DomainXmlError::TooLarge(len));
    }
    let mut buf = Vec::new();
    file.take(MAX_XML_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| DomainXmlError::Io(e.to_string()))?;
    if buf.len() as u64 > MAX_XML_BYTES {
        return Err(DomainXmlError::TooLarge(buf.len() as u64));
    }
    let text = String::from_utf8(buf).map_err(|_| DomainXmlError::NotUtf8)?;
    parse_domstatus(&text)
}

/// Identity of one version of a file: a rewrite changes at least one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    mtime_s: i64,
    mtime_ns: i64,
    len: u64,
    ino: u64,
}

impl FileStamp {
    fn of(m: &std::fs::Metadata) -> Self {
        Self {
            mtime_s: m.mtime(),
            mtime_ns: m.mtime_nsec(),
            len: m.len(),
            ino: m.ino(),
        }
    }
}

/// What pinflow knows about one `NAME.xml`.
#[derive(Debug)]
struct Entry {
    stamp: FileStamp,
    /// Last good parse (kept while the file is broken).
    domain: Option<Domain>,
    /// Why the current version of the file does not parse.
    error: Option<DomainXmlError>,
}

/// Result of one [`LibvirtInventory::refresh`].
#[derive(Debug, Default)]
pub(crate) struct Refresh {
    /// Whether the set of domains or any domain's content changed.
    pub(crate) changed: bool,
    /// Files that were (re-)read in this refresh and failed to parse, by file name. A file that stays broken
    /// and unchanged is not reported again (see [`LibvirtInventory::failing`]).
    pub(crate) errors: Vec<(String, DomainXmlError)>,
    /// The state directory itself could not be listed (missing, permissions…).
    pub(crate) dir_error: Option<String>,
}

/// The running domains of this host, kept in sync with libvirt's state directory by [`refresh`](Self::refresh).
#[derive(Debug)]
pub(crate) struct LibvirtInventory {
    dir: PathBuf,
    files: BTreeMap<String, Entry>,
}

impl LibvirtInventory {
    /// An empty inventory over `state_dir` (normally [`DEFAULT_STATE_DIR`]); nothing is read until `refresh`.
    pub(crate) fn new(state_dir: PathBuf) -> Self {
        Self {
            dir: state_dir,
            files: BTreeMap::new(),
        }
    }

    /// Re-reads only files whose (mtime, len, inode) changed and forgets removed ones.
    ///
    /// A file that fails to parse keeps its last good [`Domain`] (if any) and is reported in
    /// [`Refresh::errors`]; other domains are unaffected. A missing directory (libvirt not running, or
    /// `/run` cleared) empties the inventory; any other directory error leaves it as it was. Never panics.
    pub(crate) fn refresh(&mut self) -> Refresh {
        let mut out = Refresh::default();
        let listing = match std::fs::read_dir(&self.dir) {
            Ok(l) => l,
            Err(e) => {
                out.dir_error = Some(format!(
                    "cannot read libvirt state dir {}: {e}",
                    self.dir.display()
                ));
                if e.kind() == io::ErrorKind::NotFound && !self.files.is_empty() {
                    out.changed = self.files.values().any(|f| f.domain.is_some());
                    self.files.clear();
                }
                return out;
            }
        };

        let mut seen = BTreeMap::new();
        for entry in listing {
            let Ok(entry) = entry else { continue };
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !is_status_file_name(&name) {
                continue;
            }
            // DirEntry::metadata does not follow symlinks: only regular files count.
            match entry.metadata() {
                Ok(m) if m.is_file() => {
                    seen.insert(name, FileStamp::of(&m));
                }
                _ => {}
            }
        }

        self.files.retain(|name, e| {
            let keep = seen.contains_key(name);
            if !keep && e.domain.is_some() {
                out.changed = true;
            }
            keep
        });

        for (name, stamp) in seen {
            if self.files.get(&name).is_some_and(|e| e.stamp == stamp) {
                continue;
            }
            let result = read_domstatus(&self.dir.join(&name));
            let entry = self.files.entry(name.clone()).or_insert(Entry {
                stamp,
                domain: None,
                error: None,
            });
            entry.stamp = stamp;
            match result {
                Ok(d) => {
                    if entry.domain.as_ref() != Some(&d) {
                        out.changed = true;
                        entry.domain = Some(d);
                    }
                    entry.error = None;
                }
                Err(e) => {
                    entry.error = Some(e.clone());
                    out.errors.push((name, e));
                }
            }
        }
        out
    }

    /// Known domains, sorted by name (a broken file contributes its last good version).
    pub(crate) fn domains(&self) -> impl Iterator<Item = &Domain> {
        let mut v: Vec<&Domain> = self
            .files
            .values()
            .filter_map(|e| e.domain.as_ref())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.into_iter()
    }

    /// The domain named `name`, if known.
    #[cfg(test)]
    pub(crate) fn domain(&self, name: &str) -> Option<&Domain> {
        self.files
            .values()
            .filter_map(|e| e.domain.as_ref())
            .find(|d| d.name == name)
    }

    /// Files whose current version does not parse, with the reason (by file name).
    #[cfg(test)]
    pub(crate) fn failing(&self) -> impl Iterator<Item = (&str, &DomainXmlError)> {
        self.files
            .iter()
            .filter_map(|(n, e)| e.error.as_ref().map(|err| (n.as_str(), err)))
    }
}

/// Whether a directory entry name is a domain status file (`NAME.xml`, not hidden, not `NAME.xml.new`).
fn is_status_file_name(name: &str) -> bool {
    name.len() > ".xml".len() && name.ends_with(".xml") && !name.starts_with('.')
}

/// Watches the state directory with inotify and returns a receiver that yields whenever a `*.xml` file is
/// created, written, moved in or out, or deleted there.
///
/// Notifications are coalesced (channel of one): a pending `()` means "refresh now". When the directory does
/// not exist yet (libvirtd not started) or disappears, the watch is retried every few seconds and one
/// notification is sent once it is established. The task ends when the receiver is dropped.
/// Must be called from within a Tokio runtime.
#[must_use = "dropping the receiver stops the watch"]
#[cfg(test)]
pub(crate) fn watch_state_dir(dir: PathBuf) -> mpsc::Receiver<()> {
    watch_state_dir_every(dir, WATCH_RETRY)
}

/// [`watch_state_dir`] with a chosen retry interval.
#[cfg(test)]
pub(crate) fn watch_state_dir_every(dir: PathBuf, retry: Duration) -> mpsc::Receiver<()> {
    watch_state_dir_reporting(dir, retry, Arc::new(AtomicBool::new(false)))
}

/// [`watch_state_dir`] that keeps `watching` true exactly while an inotify watch is established.
/// When inotify itself cannot start (no instances or watches left: `fs.inotify.max_user_*`), the
/// consumer must rescan periodically instead: that is said once at warn level here.
#[must_use = "dropping the receiver stops the watch"]
pub(crate) fn watch_state_dir_reporting(
    dir: PathBuf,
    retry: Duration,
    watching: Arc<AtomicBool>,
) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut announced_error = false;
        loop {
            let end = watch_once(&dir, &tx, &watching).await;
            watching.store(false, Ordering::Relaxed);
            match end {
                WatchEnd::ReceiverGone => return,
                WatchEnd::DirGone => {
                    announced_error = false;
                }
                WatchEnd::Failed(e) => {
                    if !announced_error {
                        if inotify_unavailable(&e) {
                            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the libvirt state dir with inotify; falling back to a periodic rescan");
                        } else {
                            tracing::debug!(dir = %dir.display(), error = %e, "libvirt state dir not watchable yet; retrying");
                        }
                        announced_error = true;
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                () = tx.closed() => return,
            }
        }
    });
    rx
}

/// Whether a watch failed for want of inotify itself (not because the directory is missing yet).
fn inotify_unavailable(e: &io::Error) -> bool {
    !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
}

/// Whether inotify can watch `dir` here, as [`watch_state_dir`] would (for `pinflow check`).
/// `Ok(false)`: the directory does not exist (yet).
pub(crate) fn can_watch(dir: &Path) -> io::Result<bool> {
    let inotify = Inotify::init()?;
    match inotify
        .watches()
        .add(dir, WatchMask::CREATE | WatchMask::ONLYDIR)
    {
        Ok(_) => Ok(true),
        Err(e) if !inotify_unavailable(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

enum WatchEnd {
    ReceiverGone,
    DirGone,
    Failed(io::Error),
}

/// One watch session: set up, announce, forward events until the directory goes away or the receiver drops.
async fn watch_once(dir: &Path, tx: &mpsc::Sender<()>, watching: &AtomicBool) -> WatchEnd {
    let inotify = match Inotify::init() {
        Ok(i) => i,
        Err(e) => return WatchEnd::Failed(e),
    };
    let mask = WatchMask::CREATE
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::DELETE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR;
    if let Err(e) = inotify.watches().add(dir, mask) {
        return WatchEnd::Failed(e);
    }
    let mut stream = match inotify.into_event_stream([0u8; 4096]) {
        Ok(s) => s,
        Err(e) => return WatchEnd::Failed(e),
    };
    watching.store(true, Ordering::Relaxed);
    // The directory may have changed while nobody watched: have the consumer look once.
    if notify(tx).is_err() {
        return WatchEnd::ReceiverGone;
    }
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                Some(Ok(ev)) => {
                    if ev.mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED) {
                        let _ = notify(tx);
                        return WatchEnd::DirGone;
                    }
                    let relevant = ev.mask.contains(EventMask::Q_OVERFLOW)
                        || ev.name.as_deref().and_then(OsStr::to_str).is_some_and(is_status_file_name);
                    if relevant && notify(tx).is_err() {
                        return WatchEnd::ReceiverGone;
                    }
                }
                Some(Err(e)) => return WatchEnd::Failed(e),
                None => return WatchEnd::DirGone,
            },
            () = tx.closed() => return WatchEnd::ReceiverGone,
        }
    }
}

/// Queues one wake-up unless one is already pending. `Err` only when the receiver is gone.
fn notify(tx: &mpsc::Sender<()>) -> Result<(), ()> {
    match tx.try_send(()) {
        Ok(()) | Err(mpsc::error::TrySendError::Full(())) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(())) => Err(()),
    }
}

#[cfg(test)]
mod tests;
