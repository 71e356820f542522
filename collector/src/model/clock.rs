//! The kernel's monotonic clock as a number: the clock of `bpf_ktime_get_ns` and of
//! `OVS_FLOW_ATTR_USED`, which the model compares against (std's `Instant` is opaque).
#![allow(unsafe_code)]

/// `CLOCK_MONOTONIC` in ns (0 if the clock cannot be read, which Linux never does).
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}
