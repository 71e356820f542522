//! Pipelines that tie sources to detectors and publish reports into the shared state.
//!
//! - [`pinning`]: libvirt inventory + procfs/cgroupfs + eBPF placement → pinning checks.
//! - [`flows`]: OVSDB + OpenFlow mirrors → dirty-flow rules.
//! - [`supervise`]: no thread or task of theirs stops silently.

pub mod datapath;
mod findings_log;
pub mod flows;
pub mod pinning;
pub mod supervise;

pub use pinning::{PinningEngine, PinningInputs, observe, snapshot_once, source};
