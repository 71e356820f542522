//! A minimal reader of kernel BTF (`/sys/kernel/btf/vmlinux`): finds the byte offset and size of one
//! struct member, which is all the placement probe needs in place of CO-RE relocations.
//!
//! Only the type section is walked; anonymous struct/union members are searched recursively.

use std::path::Path;

/// Where the kernel exposes its own BTF.
pub(crate) const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const HEADER_MIN: usize = 24;
const MAX_NESTING: u32 = 16;

// BTF kinds (include/uapi/linux/btf.h).
const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// Why a member offset could not be read from BTF.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BtfError {
    /// The BTF file could not be read (missing file usually means a kernel without `CONFIG_DEBUG_INFO_BTF`).
    #[error("cannot read kernel BTF {path}: {source}")]
    Read {
        /// File that was read.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The data is not (little-endian) BTF or is cut short.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// A type kind this reader does not know (newer kernel).
    #[error("unknown BTF kind {0}")]
    UnknownKind(u8),
    /// No complete struct of that name.
    #[error("struct {0} not found in BTF")]
    StructNotFound(String),
    /// The struct has no such member.
    #[error("struct {strukt} has no member {member}")]
    MemberNotFound {
        /// Struct searched.
        strukt: String,
        /// Member asked for.
        member: String,
    },
    /// The member is a bitfield or not byte aligned.
    #[error("member {0} is a bitfield")]
    Bitfield(String),
}

/// A struct member's location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemberLoc {
    /// Offset from the start of the struct, bytes.
    pub(crate) offset: u32,
    /// Size of the member's type, bytes (0 when it cannot be sized, e.g. a flexible array).
    pub(crate) size: u32,
}

/// One type record of the type section.
#[derive(Clone, Copy)]
struct TypeRec {
    name_off: u32,
    kind: u8,
    vlen: u16,
    kind_flag: bool,
    /// `size` or `type` (a union in the C header).
    size_or_type: u32,
    /// Offset of the kind-specific trailer within the type section.
    trailer: usize,
}

/// Parsed view of a BTF blob.
struct Btf<'a> {
    /// Offset of each type's record in `type_data` (4 bytes per type; records are decoded on use).
    types: Vec<u32>,
    type_data: &'a [u8],
    strings: &'a [u8],
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let short = BtfError::Malformed("truncated header");
        if u16_at(data, 0) != Some(BTF_MAGIC) {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4).ok_or(short)? as usize;
        if hdr_len < HEADER_MIN {
            return Err(BtfError::Malformed("header too short"));
        }
        let field = |off| {
            u32_at(data, off)
                .map(|v| v as usize)
                .ok_or(BtfError::Malformed("truncated header"))
        };
        let (type_off, type_len, str_off, str_len) =
            (field(8)?, field(12)?, field(16)?, field(20)?);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            data.get(start..start.checked_add(len)?)
        };
        let type_data =
            section(type_off, type_len).ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings =
            section(str_off, str_len).ok_or(BtfError::Malformed("string section out of bounds"))?;

        // Reserved, not all touched: records are at least 12 bytes, so this never reallocates.
        let mut types = Vec::with_capacity(type_data.len() / 12);
        let mut pos = 0usize;
        while pos < type_data.len() {
            let trunc = BtfError::Malformed("truncated type");
            // name_off, info, size_or_type: 12 bytes.
            u32_at(type_data, pos + 8).ok_or(trunc)?;
            let info = u32_at(type_data, pos + 4).ok_or(BtfError::Malformed("truncated type"))?;
            let vlen = (info & 0xffff) as u16;
            let kind = ((info >> 24) & 0x1f) as u8;
            let trailer = pos + 12;
            let n = usize::from(vlen);
            let trailer_len = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * n,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * n,
                other => return Err(BtfError::UnknownKind(other)),
            };
            types.push(
                u32::try_from(pos).map_err(|_| BtfError::Malformed("type section too large"))?,
            );
            pos = trailer + trailer_len;
        }
        if pos != type_data.len() {
            return Err(BtfError::Malformed(
                "type section does not end on a type boundary",
            ));
        }
        Ok(Self {
            types,
            type_data,
            strings,
        })
    }

    /// Type by id (ids start at 1; 0 is `void`).
    fn ty(&self, id: u32) -> Option<TypeRec> {
        self.rec(*self.types.get((id as usize).checked_sub(1)?)?)
    }

    /// Decodes the record at `pos` (validated by [`Self::parse`]).
    fn rec(&self, pos: u32) -> Option<TypeRec> {
        let pos = pos as usize;
        let info = u32_at(self.type_data, pos + 4)?;
        Some(TypeRec {
            name_off: u32_at(self.type_data, pos)?,
            kind: ((info >> 24) & 0x1f) as u8,
            vlen: (info & 0xffff) as u16,
            kind_flag: info >> 31 != 0,
            size_or_type: u32_at(self.type_data, pos + 8)?,
            trailer: pos + 12,
        })
    }

    /// Every type record, in id order.
    fn records(&self) -> impl Iterator<Item = TypeRec> + '_ {
        self.types.iter().filter_map(|&p| self.rec(p))
    }

    fn name(&self, off: u32) -> &'a [u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> Option<u32> {
        for _ in 0..MAX_NESTING * 2 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some(id),
            }
        }
        None
    }

    /// Size in bytes of a type, when it has one.
    fn size_of(&self, id: u32) -> Option<u32> {
        let t = self.ty(self.resolve(id)?)?;
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Some(t.size_or_type)
            }
            KIND_PTR => Some(8),
            KIND_ARRAY => {
                let elem = u32_at(self.type_data, t.trailer)?;
                let nelems = u32_at(self.type_data, t.trailer + 8)?;
                self.size_of(elem)?.checked_mul(nelems)
            }
            _ => None,
        }
    }

    /// Members of a struct/union as (name_off, type, bit offset, is bitfield).
    fn members(&self, t: &TypeRec) -> impl Iterator<Item = (u32, u32, u32, bool)> + '_ {
        let (base, kind_flag) = (t.trailer, t.kind_flag);
        (0..usize::from(t.vlen)).filter_map(move |i| {
            let m = base + 12 * i;
            let name_off = u32_at(self.type_data, m)?;
            let ty = u32_at(self.type_data, m + 4)?;
            let off = u32_at(self.type_data, m + 8)?;
            if kind_flag {
                Some((name_off, ty, off & 0x00ff_ffff, off >> 24 != 0))
            } else {
                Some((name_off, ty, off, false))
            }
        })
    }

    /// Searches `t`'s members, descending into anonymous structs/unions. Returns (bit offset, type, bitfield).
    fn find_member(&self, t: &TypeRec, member: &[u8], depth: u32) -> Option<(u32, u32, bool)> {
        if depth > MAX_NESTING {
            return None;
        }
        for (name_off, ty, bit_off, bitfield) in self.members(t) {
            if name_off != 0 {
                if self.name(name_off) == member {
                    return Some((bit_off, ty, bitfield));
                }
                continue;
            }
            let inner = self.resolve(ty).and_then(|id| self.ty(id));
            if let Some(inner) = inner.filter(|i| matches!(i.kind, KIND_STRUCT | KIND_UNION))
                && let Some((off, ty, bf)) = self.find_member(&inner, member, depth + 1)
            {
                return Some((bit_off + off, ty, bf));
            }
        }
        None
    }

    /// Id of the typedef named `name`, if there is one.
    fn typedef_id(&self, name: &[u8]) -> Option<u32> {
        let i = self
            .records()
            .position(|t| t.kind == KIND_TYPEDEF && self.name(t.name_off) == name)?;
        u32::try_from(i + 1).ok()
    }
}

/// Finds `strukt.member` in the BTF blob `data`.
pub(crate) fn member_offset(
    data: &[u8],
    strukt: &str,
    member: &str,
) -> Result<MemberLoc, BtfError> {
    member_offset_in(&Btf::parse(data)?, strukt, member)
}

fn member_offset_in(btf: &Btf<'_>, strukt: &str, member: &str) -> Result<MemberLoc, BtfError> {
    let t = btf
        .records()
        .find(|t| t.kind == KIND_STRUCT && t.vlen > 0 && btf.name(t.name_off) == strukt.as_bytes())
        .ok_or_else(|| BtfError::StructNotFound(strukt.to_string()))?;
    let (bit_off, ty, bitfield) =
        btf.find_member(&t, member.as_bytes(), 0)
            .ok_or_else(|| BtfError::MemberNotFound {
                strukt: strukt.to_string(),
                member: member.to_string(),
            })?;
    if bitfield || bit_off % 8 != 0 {
        return Err(BtfError::Bitfield(member.to_string()));
    }
    Ok(MemberLoc {
        offset: bit_off / 8,
        size: btf.size_of(ty).unwrap_or(0),
    })
}

/// Finds `strukt.member` in the BTF file at `path` (normally [`VMLINUX_BTF`]).
pub(crate) fn member_offset_in_file(
    path: &Path,
    strukt: &str,
    member: &str,
) -> Result<MemberLoc, BtfError> {
    member_offset(&FileBytes::open(path)?, strukt, member)
}

/// A BTF file's bytes. The kernel's own BTF (under `/sys/kernel/btf`) is mapped read-only where
/// the kernel allows it (Linux 6.16+): the pages are the kernel's, so reading them costs no
/// process memory (measured: VmRSS +4 KiB for vmlinux's 5.5 MB). Elsewhere, or when mapping fails,
/// the file is read into the heap.
enum FileBytes {
    /// `mmap`ed: address and length, unmapped on drop.
    Mapped(*const u8, usize),
    /// Read.
    Read(Vec<u8>),
}

impl FileBytes {
    fn open(path: &Path) -> Result<Self, BtfError> {
        let err = |source| BtfError::Read {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(err)?;
        if path.starts_with("/sys/kernel/btf")
            && let Some(mapped) = Self::map(&file)
        {
            return Ok(mapped);
        }
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut data).map_err(err)?;
        Ok(FileBytes::Read(data))
    }

    /// Maps the whole file read-only; `None` when the kernel refuses (older kernels).
    #[allow(unsafe_code)] // mmap(2) has no safe wrapper in the workspace's crates.
    fn map(file: &std::fs::File) -> Option<Self> {
        use std::os::fd::AsRawFd as _;
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        if len == 0 {
            return None;
        }
        // SAFETY: a fresh read-only private mapping of an open file; the kernel's BTF never
        // changes while it runs, so the bytes stay valid and constant until munmap in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then(|| FileBytes::Mapped(ptr.cast::<u8>().cast_const(), len))
    }
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];

    #[allow(unsafe_code)] // A slice over the mapping made in FileBytes::map.
    fn deref(&self) -> &[u8] {
        match self {
            // SAFETY: `ptr` maps `len` readable bytes until Drop (see FileBytes::map).
            FileBytes::Mapped(ptr, len) => unsafe { std::slice::from_raw_parts(*ptr, *len) },
            FileBytes::Read(v) => v,
        }
    }
}

impl Drop for FileBytes {
    #[allow(unsafe_code)] // munmap(2) of the mapping made in FileBytes::map.
    fn drop(&mut self) {
        if let FileBytes::Mapped(ptr, len) = *self {
            // SAFETY: exactly the mapping returned by mmap; no slice of it outlives `self`.
            unsafe {
                libc::munmap(ptr.cast_mut().cast(), len);
            }
        }
    }
}

/// What the sched probe needs from kernel BTF, read in one pass over the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SchedFacts {
    /// `task_struct.pid`.
    pub(crate) task_pid: MemberLoc,
    /// `task_struct.flags` (`PF_KTHREAD`), when found as a 4-byte member.
    pub(crate) task_flags: Option<MemberLoc>,
    /// Type id of the typedef `btf_trace_sched_switch` (what `tp_btf/sched_switch` attaches to).
    pub(crate) sched_switch_typedef: Option<u32>,
}

/// The typedef a `tp_btf/sched_switch` program names as its attach target.
pub(crate) const SCHED_SWITCH_TYPEDEF: &str = "btf_trace_sched_switch";

/// Reads [`SchedFacts`] from the BTF file at `path` (normally [`VMLINUX_BTF`]). The file (~5 MiB,
/// mapped where the kernel allows it) and the record index (4 bytes per type) are freed on return.
pub(crate) fn sched_facts_in_file(path: &Path) -> Result<SchedFacts, BtfError> {
    let data = FileBytes::open(path)?;
    let btf = Btf::parse(&data)?;
    Ok(SchedFacts {
        task_pid: member_offset_in(&btf, "task_struct", "pid")?,
        task_flags: member_offset_in(&btf, "task_struct", "flags")
            .ok()
            .filter(|l| l.size == 4),
        sched_switch_typedef: btf.typedef_id(SCHED_SWITCH_TYPEDEF.as_bytes()),
    })
}

/// A BTF blob in which the typedef `name` has type id `id` and nothing else has a name: `id - 1`
/// anonymous `void *` records come first. aya's `BtfTracePoint::load` only looks the attach
/// target's id up by name, so this stands in for the kernel's whole BTF (126 000 types, ~30 MiB
/// once aya has parsed them) at ~12 bytes per id below the target's (ids of `btf_trace_*`
/// typedefs are low: ~10 000 on a 6.18 kernel).
pub(crate) fn typedef_stub(name: &str, id: u32) -> Vec<u8> {
    let fillers = id.saturating_sub(1) as usize;
    let type_len = (fillers + 1) * 12;
    let strings: Vec<u8> = [b"\0", name.as_bytes(), b"\0"].concat();
    let mut out = Vec::with_capacity(HEADER_MIN + type_len + strings.len());
    out.extend(BTF_MAGIC.to_le_bytes());
    out.extend([1u8, 0]);
    let (type_len32, str_len32) = (
        u32::try_from(type_len).unwrap_or(u32::MAX),
        u32::try_from(strings.len()).unwrap_or(u32::MAX),
    );
    for v in [HEADER_MIN as u32, 0, type_len32, type_len32, str_len32] {
        out.extend(v.to_le_bytes());
    }
    for _ in 0..fillers {
        for v in [0u32, u32::from(KIND_PTR) << 24, 0] {
            out.extend(v.to_le_bytes());
        }
    }
    for v in [1u32, u32::from(KIND_TYPEDEF) << 24, 0] {
        out.extend(v.to_le_bytes());
    }
    out.extend(strings);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `int` (id 1), `pid_t` typedef (id 2), an anonymous union (id 3) holding
    /// `u32 tgid` at bit 0, and `struct task_struct { long state; union {..}; pid_t pid; }` (id 4).
    fn fixture() -> Vec<u8> {
        let strings = b"\0int\0pid_t\0tgid\0task_struct\0state\0pid\0";
        let s = |name: &str| {
            let needle = [b"\0", name.as_bytes(), b"\0"].concat();
            let pos = strings
                .windows(needle.len())
                .position(|w| w == needle.as_slice())
                .unwrap_or(0);
            (pos + 1) as u32
        };
        let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
        let mut types: Vec<u32> = Vec::new();
        // 1: int, size 4, encoding signed, 32 bits
        types.extend([s("int"), info(1, 0), 4, (1 << 24) | 32]);
        // 2: typedef pid_t -> 1
        types.extend([s("pid_t"), info(8, 0), 1]);
        // 3: anonymous union { int tgid; }
        types.extend([0, info(5, 1), 4, s("tgid"), 1, 0]);
        // 4: struct task_struct { int state @0; union @32; pid_t pid @64 }
        types.extend([
            s("task_struct"),
            info(4, 3),
            12,
            s("state"),
            1,
            0,
            0,
            3,
            32,
            s("pid"),
            2,
            64,
        ]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend(BTF_MAGIC.to_le_bytes());
        out.extend([1u8, 0]);
        for v in [
            24u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            out.extend(v.to_le_bytes());
        }
        out.extend(type_bytes);
        out.extend(strings);
        out
    }

    #[test]
    fn finds_members_in_fixture() {
        let data = fixture();
        assert_eq!(
            member_offset(&data, "task_struct", "pid").expect("pid"),
            MemberLoc { offset: 8, size: 4 }
        );
        assert_eq!(
            member_offset(&data, "task_struct", "tgid").expect("tgid in anonymous union"),
            MemberLoc { offset: 4, size: 4 }
        );
        assert!(matches!(
            member_offset(&data, "task_struct", "comm"),
            Err(BtfError::MemberNotFound { .. })
        ));
        assert!(matches!(
            member_offset(&data, "mm_struct", "pid"),
            Err(BtfError::StructNotFound(_))
        ));
    }

    #[test]
    fn typedef_stub_puts_the_name_at_the_id() {
        for id in [1u32, 2, 10_300] {
            let stub = typedef_stub("btf_trace_sched_switch", id);
            let btf = Btf::parse(&stub).expect("stub parses");
            assert_eq!(btf.types.len(), id as usize);
            assert_eq!(btf.typedef_id(b"btf_trace_sched_switch"), Some(id));
            assert_eq!(btf.typedef_id(b"btf_trace_sched_wakeup"), None);
            let aya_btf = aya::Btf::parse(&stub, aya::Endianness::default()).expect("aya parses");
            drop(aya_btf);
        }
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(matches!(
            member_offset(b"nope", "a", "b"),
            Err(BtfError::Malformed(_))
        ));
        let data = fixture();
        for cut in [3, 20, 30, data.len() - 1] {
            assert!(
                member_offset(&data[..cut], "task_struct", "pid").is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn vmlinux_mapped_or_read_alike() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            println!("SKIP: {VMLINUX_BTF} missing (kernel without BTF)");
            return;
        }
        let read = std::fs::read(path).expect("read");
        let bytes = FileBytes::open(path).expect("open");
        if !matches!(bytes, FileBytes::Mapped(..)) {
            println!("note: this kernel does not map its BTF; read instead");
        }
        assert!(*bytes == *read.as_slice());
    }

    #[test]
    fn task_struct_pid_in_vmlinux() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            println!("SKIP: {VMLINUX_BTF} missing (kernel without BTF)");
            return;
        }
        let loc = member_offset_in_file(path, "task_struct", "pid")
            .expect("task_struct.pid in vmlinux BTF");
        assert_eq!(loc.size, 4, "pid_t is 4 bytes");
        assert!(
            loc.offset > 0 && loc.offset.is_multiple_of(4) && loc.offset < 16384,
            "offset {}",
            loc.offset
        );
        let facts = sched_facts_in_file(path).expect("sched facts");
        assert_eq!(facts.task_pid, loc);
        assert!(facts.sched_switch_typedef.is_some_and(|id| id > 0));
        assert!(
            facts.task_flags.is_some_and(|f| f.offset > 0),
            "task_struct.flags in vmlinux BTF"
        );
        let tgid = member_offset_in_file(path, "task_struct", "tgid").expect("tgid");
        assert_eq!(
            tgid.offset,
            loc.offset + 4,
            "tgid follows pid in task_struct"
        );
    }
}
