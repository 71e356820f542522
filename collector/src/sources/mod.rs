//! Sources: everything that reads the host. Each reports whether it is up, its errors and its cost.

pub mod libvirt;
pub mod openflow;
pub mod ovs_dp;
pub mod ovsdb;
pub mod procfs;
pub mod rtnl;
pub mod sched_bpf;
