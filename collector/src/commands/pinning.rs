//! `pinflow pinning`: one pinning pass (libvirt + procfs/cgroupfs, no eBPF) as a table or JSON.
//! Exit status: 0 clean, 1 drift, 2 blind (a source could not be read).

use crate::cli::SourceArgs;
use crate::config::Config;
use crate::engine::pinning::snapshot_once;
use crate::export::table;
use crate::sources::procfs::HostFs;
use std::process::ExitCode;

pub(super) fn pinning(s: &SourceArgs, json: bool) -> anyhow::Result<ExitCode> {
    Config::load(s.config.as_deref())?;
    let host = super::host_paths(s);
    let hostfs = HostFs::new(host.proc_root.clone(), host.sys_root.clone());
    if let Err(e) = hostfs.probe() {
        anyhow::bail!("procfs: {e}");
    }
    let (report, refresh, proc_errors) = snapshot_once(&host);
    if let Some(e) = &refresh.dir_error {
        // Without the state dir nothing is known: no table that could read as "no drift".
        anyhow::bail!("libvirt state: {e}");
    }
    let mut unread = Vec::new();
    for (f, e) in &refresh.errors {
        unread.push(format!("{f}: {e}"));
    }
    if proc_errors > 0 {
        unread.push(format!(
            "{proc_errors} procfs/cgroupfs read error(s) (--log.level debug names them)"
        ));
    }
    if json {
        super::emit_json(&report)?;
    } else {
        let mut t = table::pinning_table(&report);
        t.push_str("(placement needs the eBPF probe of `pinflow serve`; see /api/v1/pinning)\n");
        super::emit(t.as_bytes())?;
    }
    for u in &unread {
        eprintln!("pinflow: cannot read {u}");
    }
    Ok(ExitCode::from(if !unread.is_empty() {
        super::EXIT_ERROR
    } else if report.domains.iter().any(|d| !d.drifts.is_empty()) {
        super::EXIT_FOUND
    } else {
        0
    }))
}
