//! The host model: what pinflow knows about this hypervisor right now.
//!
//! Sources fill it, detectors read it. It lives only in memory.

pub mod datapath;
pub mod flows;
pub mod pinning;

pub use pinning::{Domain, EmulatorPin, InterfaceSpec, NovaInstance, ThreadState, VcpuSpec};
