//! Small process helpers for xtask.

use anyhow::{Context as _, bail};
use std::path::PathBuf;
use std::process::Command;

/// The workspace root (parent of xtask/).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Runs a command with inherited stdio; error when it fails.
pub fn sh(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new(cmd)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {cmd}"))?;
    if !st.success() {
        bail!("`{cmd} {}` failed ({st})", args.join(" "));
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout (None when it cannot run or fails).
pub fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(cmd).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Runs cargo (the one running xtask) in the workspace root.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !st.success() {
        bail!("`cargo {}` failed ({st})", args.join(" "));
    }
    Ok(())
}

/// Prints a step header.
pub fn step(msg: &str) {
    eprintln!("==> {msg}");
}
