//! The `pinflow` command: everything it does is in [`pinflow::commands`].
//!
//! The static musl build (`cargo xtask dist`, what ships) also gets its `memcpy` and `memmove`
//! from [`copy`] instead of musl's: see there.

fn main() -> std::process::ExitCode {
    pinflow::commands::main()
}

/// `memcpy`/`memmove` for the static musl binary. musl's x86_64 `memcpy` copies with `rep movsq`
/// and byte loops, whose start-up costs tens of cycles on every call; pinflow makes many short
/// copies (a one-shot dump builds each line from pieces of a few to a few dozen bytes, ~9 copies a
/// flow), which made the static binary ~1 ms slower than the glibc build per 10 000 flows of
/// `pinflow flows` (interleaved `perf stat`: 7.2 ms against 6.1 ms of task-clock; with these
/// copies 5.8 ms). Up to 64 bytes are moved with unaligned 2- to 16-byte loads and stores (every
/// load of a copy before its stores, so overlap is fine); longer copies with `rep movsb`, which
/// the CPUs pinflow runs on (ERMSB) do fast, backwards when a `memmove` needs it.
///
/// Built for the musl target, and for tests on any x86_64 target so that they run with the usual
/// `cargo test`; the `memcpy`/`memmove` symbols are exported only in the musl build (the glibc
/// build keeps glibc's, which are fast already). musl's `memcpy.o` also defines the `__memcpy_fwd` its
/// `memmove` uses, so both are replaced (with one, the link fails on a duplicate `memcpy`).
#[cfg(all(target_arch = "x86_64", any(test, target_env = "musl")))]
#[allow(unsafe_code)] // Raw copies between pointers: what memcpy and memmove are.
mod copy {
    /// Copies `n ≤ 64` bytes from `src` to `dst` (the ranges may overlap) and returns `true`;
    /// `false` (nothing copied) for longer copies.
    ///
    /// # Safety
    /// `src` must be valid for reads and `dst` for writes of `n` bytes.
    #[inline(always)]
    unsafe fn short(dst: *mut u8, src: *const u8, n: usize) -> bool {
        // SAFETY: every access below is within the first `n` bytes of `src` or `dst` (the
        // caller's contract): the pairs of loads and stores overlap in the middle instead of
        // running past the end. All loads of a size class precede its stores.
        unsafe {
            if n <= 16 {
                if n >= 8 {
                    let a = src.cast::<u64>().read_unaligned();
                    let b = src.add(n - 8).cast::<u64>().read_unaligned();
                    dst.cast::<u64>().write_unaligned(a);
                    dst.add(n - 8).cast::<u64>().write_unaligned(b);
                } else if n >= 4 {
                    let a = src.cast::<u32>().read_unaligned();
                    let b = src.add(n - 4).cast::<u32>().read_unaligned();
                    dst.cast::<u32>().write_unaligned(a);
                    dst.add(n - 4).cast::<u32>().write_unaligned(b);
                } else if n >= 2 {
                    let a = src.cast::<u16>().read_unaligned();
                    let b = src.add(n - 2).cast::<u16>().read_unaligned();
                    dst.cast::<u16>().write_unaligned(a);
                    dst.add(n - 2).cast::<u16>().write_unaligned(b);
                } else if n == 1 {
                    *dst = *src;
                }
                return true;
            }
            if n <= 32 {
                let a = src.cast::<u128>().read_unaligned();
                let b = src.add(n - 16).cast::<u128>().read_unaligned();
                dst.cast::<u128>().write_unaligned(a);
                dst.add(n - 16).cast::<u128>().write_unaligned(b);
                return true;
            }
            if n <= 64 {
                let a = src.cast::<u128>().read_unaligned();
                let b = src.add(16).cast::<u128>().read_unaligned();
                let c = src.add(n - 32).cast::<u128>().read_unaligned();
                let d = src.add(n - 16).cast::<u128>().read_unaligned();
                dst.cast::<u128>().write_unaligned(a);
                dst.add(16).cast::<u128>().write_unaligned(b);
                dst.add(n - 32).cast::<u128>().write_unaligned(c);
                dst.add(n - 16).cast::<u128>().write_unaligned(d);
                return true;
            }
            false
        }
    }

    /// C's `memcpy`.
    ///
    /// # Safety
    /// C's contract: `src` valid for reads and `dst` for writes of `n` bytes, not overlapping.
    #[cfg_attr(target_env = "musl", unsafe(no_mangle))]
    pub(crate) unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the caller's contract; `rep movsb` copies `rcx` bytes from `rsi` to `rdi`
        // forwards (the direction flag is clear at a call, as the ABI requires).
        unsafe {
            if !short(dst, src, n) {
                core::arch::asm!(
                    "rep movsb",
                    inout("rcx") n => _,
                    inout("rdi") dst => _,
                    inout("rsi") src => _,
                    options(nostack, preserves_flags)
                );
            }
        }
        dst
    }

    /// C's `memmove`.
    ///
    /// # Safety
    /// C's contract: `src` valid for reads and `dst` for writes of `n` bytes (they may overlap).
    #[cfg_attr(target_env = "musl", unsafe(no_mangle))]
    pub(crate) unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the caller's contract. A forward copy is right unless `dst` starts inside
        // `src`'s range; then the copy runs backwards from the last byte (direction flag set for
        // the one instruction and cleared again, as the ABI requires it clear).
        unsafe {
            if short(dst, src, n) {
                return dst;
            }
            let (d, s) = (dst as usize, src as usize);
            if d <= s || d >= s + n {
                core::arch::asm!(
                    "rep movsb",
                    inout("rcx") n => _,
                    inout("rdi") dst => _,
                    inout("rsi") src => _,
                    options(nostack, preserves_flags)
                );
            } else {
                core::arch::asm!(
                    "std",
                    "rep movsb",
                    "cld",
                    inout("rcx") n => _,
                    inout("rdi") dst.add(n - 1) => _,
                    inout("rsi") src.add(n - 1) => _,
                    options(nostack)
                );
            }
        }
        dst
    }

    #[cfg(test)]
    mod tests {
        /// A buffer of distinct bytes.
        fn pattern(len: usize) -> Vec<u8> {
            (0..len).map(|i| (i * 7 + 3) as u8).collect()
        }

        #[test]
        fn memcpy_copies_every_length_and_alignment_exactly() {
            for n in 0..300 {
                for (so, doff) in [(0, 0), (1, 3), (5, 0), (0, 7), (3, 11)] {
                    let src = pattern(n + so + 16);
                    let mut dst = vec![0xeeu8; n + doff + 16];
                    let want = {
                        let mut w = dst.clone();
                        w[doff..doff + n].copy_from_slice(&src[so..so + n]);
                        w
                    };
                    // SAFETY: both ranges are inside their vectors and do not overlap.
                    let r = unsafe {
                        super::memcpy(dst.as_mut_ptr().add(doff), src.as_ptr().add(so), n)
                    };
                    assert_eq!(r, dst.as_mut_ptr().wrapping_add(doff), "n={n}");
                    assert_eq!(dst, want, "n={n} src+{so} dst+{doff}");
                }
            }
        }

        #[test]
        fn memmove_handles_overlap_both_ways() {
            for n in 0..300 {
                for shift in [1usize, 2, 7, 8, 15, 16, 33, 64, 65, 200] {
                    for backwards in [false, true] {
                        let mut buf = pattern(n + shift + 8);
                        let (from, to) = if backwards { (shift, 0) } else { (0, shift) };
                        let mut want = buf.clone();
                        want.copy_within(from..from + n, to);
                        let p = buf.as_mut_ptr();
                        // SAFETY: both ranges are inside `buf`; memmove allows the overlap.
                        unsafe { super::memmove(p.add(to), p.add(from), n) };
                        assert_eq!(buf, want, "n={n} shift={shift} backwards={backwards}");
                    }
                }
            }
        }
    }
}
