//! The host model: what pinflow knows about this hypervisor right now, and the reports its
//! pipelines publish. It imports nothing else of pinflow: sources fill it, detectors read it,
//! pipelines publish reports into its [`state::SharedState`], exporters encode them.

pub(crate) mod clock;
pub(crate) mod conntrack;
pub mod cpuset;
pub(crate) mod datapath;
pub(crate) mod flows;
pub(crate) mod health;
pub(crate) mod host_cpu;
pub(crate) mod inventory;
pub(crate) mod limits;
pub(crate) mod openflow;
pub(crate) mod ovs_vswitchd;
pub mod pinning;
pub(crate) mod state;

pub(crate) use pinning::{Domain, NovaInstance, ThreadState, VcpuSpec};
