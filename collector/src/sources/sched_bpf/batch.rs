//! `BPF_MAP_LOOKUP_BATCH` for a hash (or LRU hash) map: the whole map in a few syscalls.
//!
//! aya (0.14) has no batch operations, and reading the placement map (or the intruder table) one
//! key at a time costs a syscall or two per entry per tick. This is the one raw `bpf(2)` call pinflow makes itself;
//! the map comes from aya (its fd), the layout of `union bpf_attr`'s `batch` member from
//! `include/uapi/linux/bpf.h` (Linux ≥ 5.6).

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd};

/// `BPF_MAP_LOOKUP_BATCH` in `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of the hash map `fd` with keys `K` and values `V`. `hint` is the expected number
/// of entries (the buffers grow when a hash bucket does not fit).
pub(crate) fn lookup_all<K: bytemuck::Pod, V: bytemuck::Pod>(
    fd: BorrowedFd<'_>,
    hint: usize,
) -> io::Result<Vec<(K, V)>> {
    let mut capacity = hint.clamp(64, 1 << 16) + 64;
    let mut out = Vec::with_capacity(hint);
    // The htab cursor is a u32 bucket index; 8 bytes leave room for any key-sized cursor.
    let (mut cursor_in, mut cursor_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut keys = vec![K::zeroed(); capacity];
        let mut values = vec![V::zeroed(); capacity];
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::from_ref(&cursor_in) as u64
            },
            out_batch: std::ptr::from_mut(&mut cursor_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: capacity as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let rc = bpf(&mut attr);
        let err = (rc < 0).then(io::Error::last_os_error);
        let got = (attr.count as usize).min(capacity);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {
                out.extend(keys.into_iter().zip(values).take(got));
                if err.is_some() {
                    return Ok(out);
                }
                cursor_in = cursor_out;
                first = false;
            }
            // One bucket holds more entries than the buffers: retry it with larger ones.
            Some(libc::ENOSPC) if capacity < 1 << 20 => capacity *= 4,
            _ => return Err(err.unwrap_or_else(|| io::Error::other("bpf batch lookup"))),
        }
    }
}

/// `bpf(BPF_MAP_LOOKUP_BATCH, attr, sizeof attr)`.
#[allow(unsafe_code)] // The bpf(2) syscall has no safe wrapper for batch operations in aya.
fn bpf(attr: &mut BatchAttr) -> libc::c_long {
    // SAFETY: `attr` is a valid, initialised `bpf_attr.batch` whose pointers (cursors, key and
    // value buffers of `count` elements) outlive the call; the kernel writes within them only.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            std::ptr::from_mut(attr),
            std::mem::size_of::<BatchAttr>(),
        )
    }
}
