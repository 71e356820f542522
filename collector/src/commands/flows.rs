//! `pinflow flows`: a bridge's OpenFlow tables as `ovs-ofctl dump-flows` prints them (`--json`
//! too), its dirty flows (`--dirty`, exit 1 when there are any), or the kernel datapath's
//! megaflows (`--datapath`).

use crate::cli::{FlowsArgs, SourceArgs};
use crate::config::Config;
use crate::detect::flows::DirtyFlowIndex;
use crate::engine::flows;
use crate::export::table;
use crate::model::clock::monotonic_ns;
use crate::model::limits::MAX_FLOWS_PER_BRIDGE;
use crate::model::openflow::FlowStats;
use crate::model::openflow::render::{LineRenderer, UndecodableFlow};
use crate::sources::openflow::{self, OfError, OpenFlowClient};
use crate::sources::ovs_dp::DatapathClient;
use crate::sources::ovs_dp::render::render_megaflows;
use crate::sources::{bridge_socket, ovsdb};
use anyhow::Context as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

/// The error for `--bridge B` when B has no OpenFlow socket: the bridges OVSDB knows, or why
/// OVS could not be asked.
async fn no_such_bridge(run_dir: &Path, bridge: &str) -> anyhow::Error {
    match ovsdb::bridges_once(run_dir).await {
        Ok(all) if all.is_empty() => anyhow::anyhow!("no such bridge: {bridge} (OVSDB has none)"),
        Ok(all) => anyhow::anyhow!(
            "no such bridge: {bridge} (bridges: {})",
            all.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
        Err(e) => anyhow::anyhow!(
            "no such bridge: {bridge} (no {}; is ovs-vswitchd running? {e})",
            bridge_socket(run_dir, bridge).display()
        ),
    }
}

pub(super) fn flows(s: &SourceArgs, a: &FlowsArgs) -> anyhow::Result<ExitCode> {
    if a.datapath {
        return datapath_flows(a);
    }
    let config = Config::load(s.config.as_deref())?;
    let rt = super::current_thread_runtime()?;
    rt.block_on(async {
        let bridges = match (&a.bridge, a.dirty) {
            (Some(b), false) => {
                if !bridge_socket(&s.ovs_run_dir, b).exists() {
                    return Err(no_such_bridge(&s.ovs_run_dir, b).await);
                }
                std::iter::once((b.clone(), Default::default())).collect()
            }
            _ => {
                let mut all = ovsdb::bridges_once(&s.ovs_run_dir)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                if let Some(b) = &a.bridge {
                    if !all.contains_key(b) {
                        return Err(no_such_bridge(&s.ovs_run_dir, b).await);
                    }
                    all.retain(|name, _| name == b);
                }
                all
            }
        };
        let timeout = std::time::Duration::from_secs(10);
        if a.dirty {
            let mut index = DirtyFlowIndex::new(&config.flows)?;
            let now = std::time::Instant::now();
            index.sync_bridges(&bridges, now);
            for name in bridges.keys() {
                let (_, _, flows) =
                    openflow::dump_bridge(&s.ovs_run_dir, name, timeout, MAX_FLOWS_PER_BRIDGE)
                        .await
                        .with_context(|| format!("cannot dump flows of {name}"))?;
                flows::load_dump_aged(&mut index, name, flows, now);
            }
            let dirty = flows::dirty_flows_once(&index, &bridges, &s.libvirt_state_dir);
            if a.json {
                super::emit_json(&dirty)?;
            } else {
                super::emit(table::dirty_flows_table(&dirty).as_bytes())?;
            }
            return Ok(ExitCode::from(if dirty.is_empty() {
                0
            } else {
                super::EXIT_FOUND
            }));
        }
        if a.json {
            let mut out = Vec::new();
            for name in bridges.keys() {
                let path = bridge_socket(&s.ovs_run_dir, name);
                let mut client = openflow::OpenFlowClient::connect(&path, timeout)
                    .await
                    .with_context(|| format!("cannot connect to {}", path.display()))?;
                let flows = client
                    .dump_flows(MAX_FLOWS_PER_BRIDGE)
                    .await
                    .with_context(|| format!("cannot dump flows of {name}"))?;
                // Flows that do not decode are skipped by the dump and shown raw here.
                let (bad, n_bad) = client.take_undecodable();
                let mut bridge = serde_json::json!({
                    "bridge": name,
                    "flows": flows.iter().map(|f| flow_json(f, !a.no_stats)).collect::<Vec<_>>(),
                });
                if n_bad > 0 {
                    bridge["undecodable"] = serde_json::json!(bad);
                    bridge["undecodable_total"] = serde_json::json!(n_bad);
                }
                out.push(bridge);
            }
            super::emit_json(&serde_json::json!({ "bridges": out }))?;
            return Ok(ExitCode::SUCCESS);
        }
        let several = bridges.len() > 1;
        let mut undecodable = 0usize;
        for (i, name) in bridges.keys().enumerate() {
            if several {
                let sep = if i == 0 { "" } else { "\n" };
                super::emit(format!("{sep}==> {name} <==\n").as_bytes())?;
            }
            let path = bridge_socket(&s.ovs_run_dir, name);
            let mut client = openflow::OpenFlowClient::connect_reading(
                &path,
                timeout,
                openflow::ONE_SHOT_READ_CHUNK,
            )
            .await
            .with_context(|| format!("cannot connect to {}", path.display()))?;
            let dumped = print_dump(&mut client, !a.no_stats)
                .await
                .with_context(|| format!("cannot dump flows of {name}"))?;
            // Skipped, not printed: said on stderr, and the exit status says the table is
            // incomplete (`--json` carries them raw).
            for u in &dumped.undecodable {
                eprintln!(
                    "pinflow: {name}: a flow does not decode and is not shown (table={} \
                     priority={} cookie={:#x}): {}",
                    u.table, u.priority, u.cookie, u.error
                );
            }
            undecodable += dumped.undecodable_total;
            if dumped.reader_gone {
                break;
            }
        }
        if undecodable > 0 {
            eprintln!(
                "pinflow: {undecodable} flow(s) did not decode (raw in `pinflow flows --json`)"
            );
            return Ok(ExitCode::from(super::EXIT_ERROR));
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// One flow of `pinflow flows --json`.
fn flow_json(f: &FlowStats, stats: bool) -> serde_json::Value {
    let e = &f.entry;
    let mut v = serde_json::json!({
        "table": e.table,
        "priority": e.priority,
        "cookie": format!("{:#x}", e.cookie),
        "flow": e.text(),
    });
    if stats {
        v["duration_seconds"] =
            serde_json::json!(f64::from(f.duration_sec) + f64::from(f.duration_nsec) / 1e9);
        v["n_packets"] = f.n_packets.into();
        v["n_bytes"] = f.n_bytes.into();
    }
    v
}

/// Prints every flow of the bridge behind `client` as `ovs-ofctl -O OpenFlow13 dump-flows` does
/// (with statistics when `stats`). Each reply is rendered straight from the socket buffer into
/// one text buffer, written out in large chunks: no flow is kept and nothing is allocated per
/// flow, so a 100 000-flow table costs a few tens of ms.
/// Flows that do not decode are skipped (as the daemon skips them) and returned.
async fn print_dump(client: &mut OpenFlowClient, stats: bool) -> anyhow::Result<Dumped> {
    const MAX_FLOWS: usize = 1_000_000;
    // Written out in 64 KiB chunks (a pipe's default capacity): the text buffer stays in cache
    // and needs few fresh pages.
    const CHUNK: usize = 1 << 16;
    let mut lines = LineRenderer::default();
    let mut text = String::with_capacity(2 * CHUNK);
    let mut stdout = std::io::stdout().lock();
    widen_stdout_pipe();
    let mut n = 0usize;
    let mut write_error = None;
    let dumped = client
        .dump_flows_raw(|body| {
            n += lines.push_flow_stats(body, stats, &mut text)?;
            if n > MAX_FLOWS {
                return Err(OfError::TooManyFlows(MAX_FLOWS));
            }
            if text.len() >= CHUNK {
                if let Err(e) = stdout.write_all(text.as_bytes()) {
                    write_error = Some(e);
                    // Not shown: the write error is reported instead.
                    return Err(OfError::Closed);
                }
                text.clear();
            }
            Ok(())
        })
        .await;
    let closed = |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe;
    let (undecodable, undecodable_total) = lines.take_undecodable();
    let mut out = Dumped {
        reader_gone: false,
        undecodable,
        undecodable_total,
    };
    match write_error {
        Some(e) if closed(&e) => {
            out.reader_gone = true;
            return Ok(out);
        }
        Some(e) => return Err(anyhow::anyhow!("cannot write to stdout: {e}")),
        None => {}
    }
    dumped?;
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => {}
        Err(e) if closed(&e) => out.reader_gone = true,
        Err(e) => return Err(anyhow::anyhow!("cannot write to stdout: {e}")),
    }
    Ok(out)
}

/// Size [`widen_stdout_pipe`] gives a pipe on stdout (Linux's limit for unprivileged users).
const STDOUT_PIPE_BYTES: libc::c_int = 1 << 20;

/// When stdout is a pipe smaller than [`STDOUT_PIPE_BYTES`], enlarges it: a large table's text
/// (~150 bytes a flow) then goes out without the writer waiting for the reader after every
/// 64 KiB (each wait is a sleep and a wake-up, tens of µs on a VM). Anything else (a file, a
/// terminal, a refusal) is left as it is.
fn widen_stdout_pipe() {
    #[allow(unsafe_code)] // fcntl on fd 1 with integer arguments only; no memory is passed.
    // SAFETY: F_GETPIPE_SZ/F_SETPIPE_SZ take and return plain integers; on a descriptor that
    // is not a pipe they fail with EBADF, which is ignored.
    unsafe {
        let size = libc::fcntl(libc::STDOUT_FILENO, libc::F_GETPIPE_SZ);
        if size > 0 && size < STDOUT_PIPE_BYTES {
            libc::fcntl(libc::STDOUT_FILENO, libc::F_SETPIPE_SZ, STDOUT_PIPE_BYTES);
        }
    }
}

/// What [`print_dump`] did.
struct Dumped {
    /// stdout was closed (`| head`): the output ended quietly.
    reader_gone: bool,
    /// The first flows that did not decode (skipped).
    undecodable: Vec<UndecodableFlow>,
    /// How many did not decode.
    undecodable_total: usize,
}

/// `pinflow flows --datapath`: the kernel datapath's megaflows over generic netlink.
fn datapath_flows(a: &FlowsArgs) -> anyhow::Result<ExitCode> {
    let t0 = std::time::Instant::now();
    let mut client = DatapathClient::open()?;
    if a.capture.is_some() {
        client.capture();
    }
    let dps = client.datapaths()?;
    let mut all = Vec::new();
    for dp in &dps {
        client.megaflows(dp.ifindex, |f| all.push(f))?;
    }
    let took = t0.elapsed();
    if let Some(p) = &a.capture {
        let mut text = String::new();
        for d in client.captured() {
            for b in d {
                text.push_str(&format!("{b:02x}"));
            }
            text.push('\n');
        }
        std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let text = if a.count {
        format!(
            "{} megaflows in {} datapath(s), dumped and decoded in {:.3} s\n",
            all.len(),
            dps.len(),
            took.as_secs_f64()
        )
    } else {
        render_megaflows(&all, monotonic_ns() / 1_000_000)
    };
    super::emit(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
