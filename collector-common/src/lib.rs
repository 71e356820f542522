//! Types shared by pinflow's kernel-side eBPF programs and its userspace loader.
//!
//! Every type here is `#[repr(C)]`, `Copy` and plain old data so both sides agree on the byte layout
//! of BPF map keys and values.
#![no_std]

pub mod ovs_dp;
pub mod pin_events;
pub mod sched;
