//! pinflow's eBPF object: one binary holding every program.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod ovs_dp;
#[cfg(target_arch = "bpf")]
mod pin_events;
#[cfg(target_arch = "bpf")]
mod sched_switch;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
