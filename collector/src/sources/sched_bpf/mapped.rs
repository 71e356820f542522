//! A read-only view of a `BPF_F_MMAPABLE` array map, mapped into pinflow's memory: the kernel's
//! writes show up in place, so reading an entry is a memory load instead of a `bpf(2)` lookup.
//!
//! aya (0.14) creates the map with the flags the object declares but cannot map it; this maps
//! its fd with `mmap(2)` (Linux ≥ 5.5: the array's values start at offset 0 of the mapping, one
//! every `round_up(value_size, 8)` bytes, `kernel/bpf/arraymap.c`). A kernel or map that refuses
//! leaves the caller on its per-entry lookups.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd as _, BorrowedFd};
use std::ptr::NonNull;

/// `BPF_F_MMAPABLE` map entries of type `V`, read-only.
pub(crate) struct MappedArray<V> {
    base: NonNull<u8>,
    bytes: usize,
    entries: u32,
    stride: usize,
    _value: PhantomData<V>,
}

// SAFETY: the mapping is read-only shared memory owned by this value; reading it from any
// thread is as sound as from the one that mapped it.
#[allow(unsafe_code)]
unsafe impl<V: Send> Send for MappedArray<V> {}
// SAFETY: as above (`get` only reads).
#[allow(unsafe_code)]
unsafe impl<V: Sync> Sync for MappedArray<V> {}

impl<V: bytemuck::Pod> MappedArray<V> {
    /// Maps the `entries` values of the array map `fd` read-only.
    #[allow(unsafe_code)] // mmap(2) of a map fd the caller owns; checked result.
    pub(crate) fn map(fd: BorrowedFd<'_>, entries: u32) -> io::Result<Self> {
        let stride = size_of::<V>().next_multiple_of(8);
        if align_of::<V>() > 8 || stride == 0 {
            return Err(io::Error::other("value type cannot be read in place"));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = (stride * entries as usize).next_multiple_of(page.max(1));
        // SAFETY: a fresh read-only shared mapping of a file descriptor; nothing else is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self {
            base,
            bytes,
            entries,
            stride,
            _value: PhantomData,
        })
    }

    /// Entry `index` as of now (`None` past the end). The kernel may write it meanwhile: each
    /// aligned 8-byte field is read whole, as with a `bpf(2)` lookup of an array without a lock.
    #[allow(unsafe_code)] // In-bounds, aligned volatile read of a live mapping.
    pub(crate) fn get(&self, index: u32) -> Option<V> {
        if index >= self.entries {
            return None;
        }
        let offset = index as usize * self.stride;
        // SAFETY: `offset + size_of::<V>() <= bytes` (index < entries); the mapping is page
        // aligned and `stride` a multiple of 8 ≥ V's alignment; any bit pattern is a valid `V`
        // (Pod); the mapping lives as long as `self`.
        Some(unsafe { std::ptr::read_volatile(self.base.as_ptr().add(offset).cast::<V>()) })
    }
}

impl<V> Drop for MappedArray<V> {
    #[allow(unsafe_code)] // Unmaps what `map` mapped, once.
    fn drop(&mut self) {
        // SAFETY: `base`/`bytes` are exactly the mapping `map` made; nothing borrows it past here.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.bytes);
        }
    }
}
