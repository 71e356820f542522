//! Detectors: pure functions from the host model to findings.

pub mod datapath;
pub mod flows;
pub mod pinning;
