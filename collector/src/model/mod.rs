//! The host model: what pinflow knows about this hypervisor right now, and the reports its
//! pipelines publish. It imports nothing else of pinflow: sources fill it, detectors read it,
//! pipelines publish reports into its [`state::SharedState`], exporters encode them.

pub mod clock;
pub mod cpuset;
pub mod datapath;
pub mod flows;
pub mod health;
pub mod inventory;
pub mod limits;
pub mod openflow;
pub mod pinning;
pub mod state;

pub use pinning::{Domain, EmulatorPin, InterfaceSpec, NovaInstance, ThreadState, VcpuSpec};
