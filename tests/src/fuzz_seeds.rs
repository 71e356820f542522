//! Seed inputs of the fuzz targets (`fuzz/fuzz_targets/<name>.rs`, each calling
//! `pinflow::fuzzing::<name>`), made from the captured fixtures: `cargo xtask fuzz` writes them as
//! libFuzzer's seed corpora, and `tests/tests/fuzz_smoke.rs` mutates them in CI.

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};

/// Every fuzz target.
pub const TARGETS: [&str; 9] = [
    "libvirt_xml",
    "openflow_flow_stats",
    "openflow_flow_monitor",
    "oxm_actions",
    "ovsdb",
    "genetlink",
    "cpuset",
    "config",
    "ovs_unixctl",
];

/// Every target's seeds, from the fixtures of the workspace at `root`: `(target, input)` in a
/// stable order. Fails when a target gets none (a fixture moved).
pub fn seeds(root: &Path) -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    let fx = root.join("collector/tests/fixtures");
    let mut w = Seeds::default();

    for f in files_under(&fx.join("libvirt"), "xml")? {
        w.put("libvirt_xml", &read(&f)?)?;
    }

    // OpenFlow: every captured message; each flow of a dump also alone in a reply of its own, and
    // its match and instructions in the stored wire form.
    for f in files_under(&fx.join("openflow"), "bin")? {
        let stream = read(&f)?;
        let monitor = f.to_string_lossy().contains("monitor");
        for msg in of_messages(&stream) {
            w.put(
                if monitor {
                    "openflow_flow_monitor"
                } else {
                    "openflow_flow_stats"
                },
                msg,
            )?;
            // OFPT_MULTIPART_REPLY of OFPMP_FLOW: header (8), type, flags, pad (8), flows.
            if msg.get(1) == Some(&19) && msg.get(8..10) == Some(&[0, 1]) {
                for entry in flow_stats_entries(msg.get(16..).unwrap_or_default()) {
                    let mut one = msg.get(..16).unwrap_or_default().to_vec();
                    one.extend_from_slice(entry);
                    let len = u16::try_from(one.len()).unwrap_or(u16::MAX).to_be_bytes();
                    one[2..4].copy_from_slice(&len);
                    w.put("openflow_flow_stats", &one)?;
                    if let Some(wire) = stored_wire_form(entry) {
                        w.put("oxm_actions", &wire)?;
                    }
                }
            }
        }
    }

    // OVSDB: each captured step as one byte stream, fed in 255-byte and in 7-byte chunks.
    for name in ["capture.json", "links.json"] {
        let capture: serde_json::Value =
            serde_json::from_slice(&read(&fx.join("ovsdb").join(name))?)
                .with_context(|| format!("ovsdb {name}"))?;
        if let Some(steps) = capture.as_object() {
            for msgs in steps.values() {
                let mut stream = Vec::new();
                for m in msgs.as_array().into_iter().flatten() {
                    stream.extend(serde_json::to_vec(m).context("ovsdb capture")?);
                    stream.push(b'\n');
                }
                for chunk in [255u8, 7] {
                    let mut s = vec![chunk];
                    s.extend_from_slice(&stream);
                    w.put("ovsdb", &s)?;
                }
            }
        }
    }

    for f in files_under(&root.join("collector/src/sources/ovs_dp/fixtures"), "hex")? {
        let text = std::fs::read_to_string(&f).with_context(|| format!("{}", f.display()))?;
        for line in text.lines() {
            let bytes: Option<Vec<u8>> = (0..line.len() / 2)
                .map(|i| {
                    line.get(2 * i..2 * i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect();
            if let Some(b) = bytes {
                w.put("genetlink", &b)?;
            }
        }
    }

    for f in files_under(&fx.join("hostfs"), "")? {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("cpuset.") || name == "online" {
            w.put("cpuset", &read(&f)?)?;
        }
        if name == "status" {
            // Cpus_allowed (hex mask) and Cpus_allowed_list.
            for line in String::from_utf8_lossy(&read(&f)?).lines() {
                if let Some(v) = line.strip_prefix("Cpus_allowed") {
                    let v = v.trim_start_matches("_list").trim_start_matches(':').trim();
                    w.put("cpuset", v.as_bytes())?;
                }
            }
        }
    }
    for s in ["0-3,8,10-11", "0-4,^2", "ff,ffffffff", "8191", ""] {
        w.put("cpuset", s.as_bytes())?;
    }

    for f in [
        root.join("deploy/pinflow.example.toml"),
        root.join("deploy/kubernetes/base/pinflow.toml"),
    ] {
        w.put("config", &read(&f)?)?;
    }
    // ovs-vswitchd's and ovsdb-server's unixctl: the captured reply texts, the raw JSON-RPC replies, and the
    // captured /proc/PID/stat and status joined by a NUL.
    let ux = fx.join("ovs_unixctl");
    for name in [
        "coverage-show.txt",
        "memory-show.txt",
        "upcall-show.txt",
        "bond-show.txt",
        "replies.json",
        "ovsdb-server-coverage-show.txt",
        "ovsdb-server-memory-show.txt",
    ] {
        w.put("ovs_unixctl", &read(&ux.join(name))?)?;
    }
    let mut proc_pair = read(&ux.join("proc-stat.txt"))?;
    proc_pair.push(0);
    proc_pair.extend(read(&ux.join("proc-status.txt"))?);
    w.put("ovs_unixctl", &proc_pair)?;

    for t in TARGETS {
        if !w.0.iter().any(|(name, _)| *name == t) {
            bail!("no seeds for fuzz target {t}: a fixture moved?");
        }
    }
    Ok(w.0)
}

/// Seeds collected per target.
#[derive(Default)]
struct Seeds(Vec<(&'static str, Vec<u8>)>);

impl Seeds {
    fn put(&mut self, target: &'static str, data: &[u8]) -> anyhow::Result<()> {
        self.0.push((target, data.to_vec()));
        Ok(())
    }
}

fn read(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

/// Files under `dir` (recursively) whose name ends with `.ext` (any file when `ext` is empty).
fn files_under(dir: &Path, ext: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else if ext.is_empty() || p.extension().is_some_and(|x| x == ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The OpenFlow messages of a byte stream (length at bytes 2..4 of each header).
fn of_messages(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    while let Some(len) = rest
        .get(2..4)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    {
        let Some(msg) = rest.get(..len).filter(|_| len >= 8) else {
            break;
        };
        out.push(msg);
        rest = rest.get(len..).unwrap_or_default();
    }
    out
}

/// The `ofp_flow_stats` entries of an `OFPMP_FLOW` reply body (length at bytes 0..2 of each).
fn flow_stats_entries(body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(len) = rest
        .get(..2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    {
        let Some(e) = rest.get(..len).filter(|_| len >= 56) else {
            break;
        };
        out.push(e);
        rest = rest.get(len..).unwrap_or_default();
    }
    out
}

/// `priority, match TLV length, TLVs, instructions` of one `ofp_flow_stats` (the input of the
/// `oxm_actions` target): the `ofp_match` starts at byte 48, padded to 8 bytes.
fn stored_wire_form(entry: &[u8]) -> Option<Vec<u8>> {
    let priority = entry.get(12..14)?;
    let m = entry.get(48..)?;
    let mlen = usize::from(u16::from_be_bytes([*m.get(2)?, *m.get(3)?]));
    let tlvs = m.get(4..mlen)?;
    let instructions = m.get(mlen.div_ceil(8) * 8..)?;
    let mut out = priority.to_vec();
    out.extend(u16::try_from(tlvs.len()).ok()?.to_be_bytes());
    out.extend_from_slice(tlvs);
    out.extend_from_slice(instructions);
    Some(out)
}
