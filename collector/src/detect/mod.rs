//! Detectors: pure functions from the host model to findings.

pub(crate) mod datapath;
pub(crate) mod flows;
pub(crate) mod host_cpu;
pub(crate) mod pinning;
