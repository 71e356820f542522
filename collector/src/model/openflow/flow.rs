//! A flow as pinflow holds it: its normalized match ([`Matches`] of [`FieldMatch`]es), its
//! semantic actions ([`FlowAction`]) and [`FlowEntry`], which keeps the wire form it was decoded from.

use serde::Serialize;

/// One match field of a flow, normalized: `ovs-ofctl` field name, value, mask and width.
///
/// Values are right-aligned big-endian integers of `len` bytes as on the wire, so detectors can
/// compare any field generically (`value & mask`). An exact match has every bit of `len` bytes set in
/// `mask` (see [`FieldMatch::is_exact`]). Prerequisite fields implied by protocol keywords (`ip` ⇒
/// `dl_type=0x0800`) are present as their own fields. Plain data: no heap allocation per field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub(crate) struct FieldMatch {
    /// Field name as `ovs-ofctl` spells it (`in_port`, `dl_vlan`, `nw_dst`, `reg0`, `tun_id`, …).
    pub(crate) field: &'static str,
    /// Value (already masked for masked matches), right-aligned.
    pub(crate) value: u128,
    /// Mask, right-aligned; all ones of `len` bytes for an exact match.
    pub(crate) mask: u128,
    /// Width of the field in bytes (1..=16).
    pub(crate) len: u8,
}

impl FieldMatch {
    /// An exact match of a `len`-byte field (`len` is clamped to 1..=16, `value` to its width).
    pub(crate) fn exact(field: &'static str, value: u128, len: u8) -> FieldMatch {
        let len = len.clamp(1, 16);
        FieldMatch {
            field,
            value: value & width_mask(len),
            mask: width_mask(len),
            len,
        }
    }

    /// A masked match of a `len`-byte field (value and mask are cut to its width).
    pub(crate) fn masked(field: &'static str, value: u128, mask: u128, len: u8) -> FieldMatch {
        let len = len.clamp(1, 16);
        let mask = mask & width_mask(len);
        FieldMatch {
            field,
            value: value & mask,
            mask,
            len,
        }
    }

    /// Whether every bit of the field is matched.
    pub(crate) fn is_exact(&self) -> bool {
        self.mask == width_mask(self.len)
    }
}

/// All ones over `len` bytes (`len` ≥ 16 gives all 128 bits).
pub(crate) fn width_mask(len: u8) -> u128 {
    if len >= 16 {
        u128::MAX
    } else {
        (1u128 << (u32::from(len) * 8)) - 1
    }
}

/// Field names that `ovs-ofctl` prints in matches (sorted, for binary search); a field's position is
/// its one-byte id in [`Matches`]' encoding. Other names are interned at run time.
const KNOWN_FIELDS: &[&str] = &[
    "actset_output",
    "arp_op",
    "arp_sha",
    "arp_spa",
    "arp_tha",
    "arp_tpa",
    "conj_id",
    "ct_ipv6_dst",
    "ct_ipv6_src",
    "ct_label",
    "ct_mark",
    "ct_nw_dst",
    "ct_nw_proto",
    "ct_nw_src",
    "ct_state",
    "ct_tp_dst",
    "ct_tp_src",
    "ct_zone",
    "dl_dst",
    "dl_src",
    "dl_type",
    "dl_vlan",
    "dl_vlan_pcp",
    "dp_hash",
    "icmp_code",
    "icmp_type",
    "in_port",
    "ipv6_dst",
    "ipv6_label",
    "ipv6_src",
    "metadata",
    "mpls_bos",
    "mpls_label",
    "mpls_tc",
    "nd_sll",
    "nd_target",
    "nd_tll",
    "nw_dst",
    "nw_ecn",
    "nw_frag",
    "nw_proto",
    "nw_src",
    "nw_tos",
    "nw_ttl",
    "pkt_mark",
    "recirc_id",
    "reg0",
    "reg1",
    "reg10",
    "reg11",
    "reg12",
    "reg13",
    "reg14",
    "reg15",
    "reg2",
    "reg3",
    "reg4",
    "reg5",
    "reg6",
    "reg7",
    "reg8",
    "reg9",
    "tcp_flags",
    "tp_dst",
    "tp_src",
    "tun_dst",
    "tun_id",
    "tun_ipv6_dst",
    "tun_ipv6_src",
    "tun_src",
    "unknown",
    "vlan_tci",
];

/// How many other names (unknown OXM/NXM fields, test names) can be interned; later ones read as
/// `unknown`. Bounded: interned names live for the whole process.
const MAX_INTERNED: usize = 255 - KNOWN_FIELDS.len();

static INTERNED: [std::sync::OnceLock<&'static str>; 256] =
    [const { std::sync::OnceLock::new() }; 256];
static INTERN_LOCK: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

/// Recently seen `&'static` names → id, keyed by address and length (decoders pass the same
/// static strings over and over; this spares a string search per field). Packed as
/// `address << 16 | length << 8 | id`; 0 is empty.
static ID_CACHE: [std::sync::atomic::AtomicU64; 64] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 64];

fn cached_field_id(name: &'static str) -> u8 {
    use std::sync::atomic::Ordering::Relaxed;
    let addr = name.as_ptr() as u64 & 0xffff_ffff_ffff;
    let len = name.len() as u64;
    if len > 0xff {
        return field_id(name);
    }
    let slot = ((addr >> 3) ^ (addr >> 9) ^ len) as usize % ID_CACHE.len();
    let tag = addr << 16 | len << 8;
    if let Some(c) = ID_CACHE.get(slot) {
        let v = c.load(Relaxed);
        if v != 0 && v & !0xff == tag {
            return (v & 0xff) as u8;
        }
        let id = field_id(name);
        c.store(tag | u64::from(id), Relaxed);
        return id;
    }
    field_id(name)
}

fn field_id(name: &str) -> u8 {
    if let Ok(i) = KNOWN_FIELDS.binary_search(&name) {
        return i as u8;
    }
    let unknown = KNOWN_FIELDS.binary_search(&"unknown").unwrap_or(0) as u8;
    let mut n = match INTERN_LOCK.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    for i in 0..*n {
        if INTERNED
            .get(i)
            .and_then(|c| c.get())
            .is_some_and(|s| *s == name)
        {
            return (KNOWN_FIELDS.len() + i) as u8;
        }
    }
    if *n >= MAX_INTERNED {
        return unknown;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    if let Some(cell) = INTERNED.get(*n) {
        let _ = cell.set(leaked);
    }
    *n += 1;
    (KNOWN_FIELDS.len() + *n - 1) as u8
}

/// The `&'static` spelling of a field name (interning names `ovs-ofctl` does not print).
pub(crate) fn intern_field(name: &str) -> &'static str {
    field_name(field_id(name))
}

fn field_name(id: u8) -> &'static str {
    let id = usize::from(id);
    KNOWN_FIELDS.get(id).copied().unwrap_or_else(|| {
        INTERNED
            .get(id - KNOWN_FIELDS.len())
            .and_then(|c| c.get().copied())
            .unwrap_or("unknown")
    })
}

const MASKED: u8 = 0x80;

/// A flow's normalized match: its [`FieldMatch`]es sorted by field name (then value), in a compact
/// byte encoding (one byte of field id, one of width/flags, the value bytes and, for masked fields,
/// the mask bytes) held in one shared allocation. Cloning is a reference-count increment, so a flow
/// and its [`FlowKey`] share the same bytes. Equality and hashing work on the encoding, which is
/// canonical; ordering is that of the field lists.
///
/// The allocation may carry a *tail* after the encoding (see [`Matches::tail`]): a decoded flow keeps
/// its wire form there, so a flow's match and wire form cost one allocation. The tail takes no part
/// in equality, hashing or ordering. Layout: the encoding's length (2 bytes, big-endian), the
/// encoding, the tail.
#[derive(Clone)]
pub(crate) struct Matches(std::sync::Arc<[u8]>);

impl PartialEq for Matches {
    fn eq(&self, other: &Self) -> bool {
        self.enc() == other.enc()
    }
}

impl Eq for Matches {}

impl std::hash::Hash for Matches {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.enc().hash(state);
    }
}

impl Default for Matches {
    fn default() -> Self {
        Matches::new(std::iter::empty())
    }
}

impl Matches {
    /// Encodes `fields` (in any order; they are sorted).
    pub(crate) fn new(fields: impl IntoIterator<Item = FieldMatch>) -> Matches {
        let mut v: Vec<FieldMatch> = fields.into_iter().collect();
        Matches::from_fields(&mut v)
    }

    /// Encodes `fields`, sorting the slice in place (lets decoders reuse one buffer).
    pub(crate) fn from_fields(fields: &mut [FieldMatch]) -> Matches {
        Matches::from_fields_with_tail(fields, &[])
    }

    /// Like [`Matches::from_fields`], appending the concatenation of `tail` after the encoding in
    /// the same allocation (see [`Matches::tail`]).
    pub(crate) fn from_fields_with_tail(fields: &mut [FieldMatch], tail: &[&[u8]]) -> Matches {
        fields.sort_unstable();
        let mut buf = [0u8; 512];
        let mut n = 2;
        let mut heap: Vec<u8> = Vec::new();
        for f in fields.iter() {
            let len = f.len.clamp(1, 16);
            let exact = f.mask == width_mask(len);
            let mut rec = [0u8; 34];
            rec[0] = cached_field_id(f.field);
            rec[1] = len | if exact { 0 } else { MASKED };
            let l = usize::from(len);
            rec[2..2 + l].copy_from_slice(&f.value.to_be_bytes()[16 - l..]);
            let mut end = 2 + l;
            if !exact {
                rec[end..end + l].copy_from_slice(&f.mask.to_be_bytes()[16 - l..]);
                end += l;
            }
            if heap.is_empty() && n + end <= buf.len() {
                buf[n..n + end].copy_from_slice(&rec[..end]);
                n += end;
            } else {
                if heap.is_empty() {
                    heap.extend_from_slice(&buf[..n]);
                }
                heap.extend_from_slice(&rec[..end]);
            }
        }
        let enc: &mut [u8] = if heap.is_empty() {
            buf.get_mut(..n).unwrap_or_default()
        } else {
            &mut heap
        };
        let enc_len = u16::try_from(enc.len().saturating_sub(2)).unwrap_or(u16::MAX);
        if let Some(h) = enc.get_mut(..2) {
            h.copy_from_slice(&enc_len.to_be_bytes());
        }
        // One exact-size allocation holding the encoding and the tail (assembled on the stack
        // when small, as nearly all flows are).
        let tail_len: usize = tail.iter().map(|t| t.len()).sum();
        let total = enc.len() + tail_len;
        let mut small = [0u8; 1024];
        if let Some(dst) = small.get_mut(..total) {
            let (head, mut rest) = dst.split_at_mut(enc.len());
            head.copy_from_slice(enc);
            for t in tail {
                let (d, r) = rest.split_at_mut(t.len());
                d.copy_from_slice(t);
                rest = r;
            }
            return Matches(std::sync::Arc::from(&*dst));
        }
        let mut v = Vec::with_capacity(total);
        v.extend_from_slice(enc);
        tail.iter().for_each(|t| v.extend_from_slice(t));
        Matches(std::sync::Arc::from(v))
    }

    /// The encoding (without the length prefix and the tail).
    fn enc(&self) -> &[u8] {
        let len = self
            .0
            .get(..2)
            .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
        self.0.get(2..2 + len).unwrap_or_default()
    }

    /// The bytes stored after the encoding (a decoded flow's wire form; empty otherwise).
    pub(crate) fn tail(&self) -> &[u8] {
        self.0.get(2 + self.enc().len()..).unwrap_or_default()
    }

    /// The fields, sorted by name.
    pub(crate) fn iter(&self) -> MatchesIter<'_> {
        MatchesIter { rest: self.enc() }
    }

    /// Whether the match is empty (matches every packet).
    pub(crate) fn is_empty(&self) -> bool {
        self.enc().is_empty()
    }

    /// The first field named `field`, if matched.
    pub(crate) fn get(&self, field: &str) -> Option<FieldMatch> {
        self.iter().find(|m| m.field == field)
    }

    /// Whether both share the same allocation and tail bytes (used by [`FlowEntry`]'s equality,
    /// which unlike the match's own equality must see the wire form).
    fn same_bytes(&self, other: &Matches) -> bool {
        self.0 == other.0
    }
}

impl From<Vec<FieldMatch>> for Matches {
    fn from(mut v: Vec<FieldMatch>) -> Matches {
        Matches::from_fields(&mut v)
    }
}

impl<'a> IntoIterator for &'a Matches {
    type Item = FieldMatch;
    type IntoIter = MatchesIter<'a>;
    fn into_iter(self) -> MatchesIter<'a> {
        self.iter()
    }
}

impl PartialOrd for Matches {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Matches {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if self.enc() == other.enc() {
            return std::cmp::Ordering::Equal;
        }
        self.iter().cmp(other.iter())
    }
}

impl std::fmt::Debug for Matches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Matches {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// Iterator over the fields of [`Matches`].
#[derive(Clone, Debug)]
pub(crate) struct MatchesIter<'a> {
    rest: &'a [u8],
}

fn be(b: &[u8]) -> u128 {
    b.iter().fold(0u128, |a, &x| (a << 8) | u128::from(x))
}

impl Iterator for MatchesIter<'_> {
    type Item = FieldMatch;

    fn next(&mut self) -> Option<FieldMatch> {
        let (&id, rest) = self.rest.split_first()?;
        let (&lf, rest) = rest.split_first()?;
        let len = lf & !MASKED;
        let l = usize::from(len);
        let masked = lf & MASKED != 0;
        let need = if masked { 2 * l } else { l };
        let Some(body) = rest.get(..need) else {
            self.rest = &[];
            return None;
        };
        self.rest = rest.get(need..).unwrap_or_default();
        let value = be(body.get(..l).unwrap_or_default());
        let mask = if masked {
            be(body.get(l..).unwrap_or_default())
        } else {
            width_mask(len)
        };
        Some(FieldMatch {
            field: field_name(id),
            value,
            mask,
            len,
        })
    }
}

/// The parts of a flow's actions that detectors reason about. Everything else is `Other`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub(crate) enum FlowAction {
    /// `output:N` (a physical or logical ofport number; reserved ports are `Reserved`).
    Output(u32),
    /// `enqueue:N:Q`: OpenFlow 1.0 only (1.3 says `set_queue` + `output`), so the OF1.3 decoder
    /// never makes one; the text form of the unit tests does.
    #[cfg_attr(not(test), allow(dead_code))]
    Enqueue(u32),
    /// Output to a reserved port (`NORMAL`, `LOCAL`, `IN_PORT`, `CONTROLLER`, `FLOOD`, `ALL`, …).
    Reserved(&'static str),
    /// `goto_table:T` (OpenFlow 1.1+ instruction).
    GotoTable(u8),
    /// `resubmit(port,table)` (Nicira); either part may be absent.
    Resubmit {
        /// In-port to pretend, `None` = the current one.
        port: Option<u32>,
        /// Table to resubmit to, `None` = the current one.
        table: Option<u8>,
    },
    /// `conjunction(id,clause/n_clauses)`; `clause` is 1-based as printed.
    Conjunction {
        /// Conjunction id (matched by `conj_id=` in another flow).
        id: u32,
        /// Clause number, 1-based.
        clause: u8,
        /// Number of clauses.
        n_clauses: u8,
    },
    /// `ct(...)`: send to conntrack, optionally recirculating to `table`.
    Ct {
        /// Whether the connection is committed.
        commit: bool,
        /// `table=` to recirculate to, `None` = no recirculation.
        table: Option<u8>,
    },
    /// A write into the 32-bit register `reg<reg>`: the bits set in `mask` take `value`'s, the
    /// others are kept. Decoded from `NXAST_REG_LOAD` (`load:0x11->NXM_NX_REG5[]`) and from a
    /// set-field of a register (`OFPAT_SET_FIELD`, `NXAST_REG_LOAD2`: `set_field:0x11->reg5`).
    Load {
        /// Register number (`reg0`…`reg15`).
        reg: u8,
        /// Value, already shifted into place (`value & !mask == 0`).
        value: u32,
        /// Bits written.
        mask: u32,
        /// Whether it was a set-field (`ovs-ofctl` prints it `set_field:`) rather than a
        /// `load:`: kept so that two action lists are equal exactly when they print the same.
        set_field: bool,
    },
    /// Any other action, carried as its rendered text (exact-size: one per flow is kept).
    Other(Box<str>),
}

impl FlowAction {
    /// A [`FlowAction::Load`] of `value` into the bits of `mask` of `reg<reg>`; `None` when
    /// `value` has bits outside `mask` (no such load prints as one).
    pub(crate) fn load(reg: u8, value: u32, mask: u32, set_field: bool) -> Option<FlowAction> {
        (value & !mask == 0).then_some(FlowAction::Load {
            reg,
            value,
            mask,
            set_field,
        })
    }
}

/// A flow's OpenFlow 1.3 instructions as received, shared by every flow with the same bytes (see
/// [`Instructions::intern`]): a table repeats a few hundred distinct instruction lists over
/// thousands of flows. One pointer wide.
#[derive(Clone)]
pub(crate) struct Instructions(std::sync::Arc<Box<[u8]>>);

impl Instructions {
    /// The instruction bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The address of the shared bytes: while a holder keeps these instructions alive, every flow
    /// decoded with the same bytes gets this very copy (unless two decoders raced), so equal
    /// addresses mean equal bytes.
    pub(crate) fn addr(&self) -> usize {
        std::sync::Arc::as_ptr(&self.0) as usize
    }

    /// The shared copy of `bytes`: a live one when some flow holds it (it decoded once already, so
    /// `validate` is not called), else a new one once `validate` accepts the bytes.
    pub(crate) fn intern<E>(
        bytes: &[u8],
        validate: impl FnOnce(&[u8]) -> Result<(), E>,
    ) -> Result<Instructions, E> {
        let h = instr_hash(bytes);
        if let Some(i) = interner().find(h, bytes) {
            return Ok(i);
        }
        validate(bytes)?;
        let i = Instructions(std::sync::Arc::new(bytes.into()));
        interner().insert(h, &i);
        Ok(i)
    }
}

impl PartialEq for Instructions {
    fn eq(&self, o: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &o.0) || self.bytes() == o.bytes()
    }
}

impl Eq for Instructions {}

impl std::hash::Hash for Instructions {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes().hash(state);
    }
}

impl std::fmt::Debug for Instructions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Instructions({} bytes)", self.bytes().len())
    }
}

/// FNV-1a over the bytes (the interner's hash: short inputs, no DoS concern for local data).
fn instr_hash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The process-wide table of live instruction lists, held weakly: a list is freed with its last
/// flow, and dead entries are swept whenever the table has doubled since the last sweep.
#[derive(Default)]
struct Interner {
    table: hashbrown::HashTable<(u64, std::sync::Weak<Box<[u8]>>)>,
    live_at_sweep: usize,
}

struct SharedInterner(std::sync::Mutex<Interner>);

fn interner() -> &'static SharedInterner {
    static I: std::sync::OnceLock<SharedInterner> = std::sync::OnceLock::new();
    I.get_or_init(|| SharedInterner(std::sync::Mutex::new(Interner::default())))
}

impl SharedInterner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Interner> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn find(&self, h: u64, bytes: &[u8]) -> Option<Instructions> {
        let t = self.lock();
        let mut found = None;
        // Several entries may share the hash (dead copies, collisions): take a live equal one.
        for (eh, w) in t.table.iter_hash(h) {
            if *eh == h
                && let Some(a) = w.upgrade()
                && **a == *bytes
            {
                found = Some(Instructions(a));
                break;
            }
        }
        found
    }

    fn insert(&self, h: u64, i: &Instructions) {
        let mut t = self.lock();
        if t.table.len() >= 2 * t.live_at_sweep + 64 {
            t.table.retain(|(_, w)| w.strong_count() > 0);
            t.live_at_sweep = t.table.len();
        }
        t.table
            .insert_unique(h, (h, std::sync::Arc::downgrade(&i.0)), |(eh, _)| *eh);
    }
}

/// What a flow's `ovs-ofctl` text and semantic actions come from (the text itself is not stored: at
/// 100 000 flows it was the largest part of a flow's memory).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FlowSource {
    /// The flow's wire form: its shared [`Instructions`], and in the tail of its
    /// [`FlowEntry::matches`] allocation (see [`FlowEntry::wire`]) the flow-mod flags (2 bytes,
    /// big-endian), the length of the OXM match TLVs (2 bytes, big-endian; `0xffff` when the TLVs
    /// are left out because the normalized match renders the flow by itself, see
    /// `Match::normalizes_back`) and the TLVs (no `ofp_match` header or padding). Rendering decodes
    /// it with the same code as the decoder, so the text is exactly what the decoder would have
    /// printed; the actions are decoded on demand too.
    Wire(Instructions),
    /// The text and actions as given: flows built by hand in unit tests (the daemon only ever
    /// holds decoded flows, so builds other than tests have no such variant).
    #[cfg(test)]
    Text(Box<TextFlow>),
}

/// A hand-built flow's text and semantic actions (`FlowSource::Text`, unit tests only).
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TextFlow {
    /// The `ovs-ofctl` text.
    pub(crate) text: Box<str>,
    /// Semantic actions, in order.
    pub(crate) actions: Box<[FlowAction]>,
}

#[cfg(test)]
impl FlowSource {
    /// A hand-built source: `text` as [`FlowEntry::text`] returns it, with these actions.
    pub(crate) fn text(
        text: impl Into<Box<str>>,
        actions: impl Into<Box<[FlowAction]>>,
    ) -> FlowSource {
        FlowSource::Text(Box::new(TextFlow {
            text: text.into(),
            actions: actions.into(),
        }))
    }
}

/// One OpenFlow flow entry as dumped or reported by a flow monitor.
///
/// Counters are not part of it (a dump's [`FlowStats`](super::render::FlowStats) has
/// them). Stored compactly: the header fields inline, the normalized match and (for decoded flows) the
/// wire form in one shared allocation. Its `ovs-ofctl dump-flows --no-stats` text is rendered on
/// demand by [`FlowEntry::text`], its semantic actions decoded by [`FlowEntry::actions`]. Cloning
/// is cheap (a reference-count increment).
#[derive(Clone, Debug)]
pub(crate) struct FlowEntry {
    /// OpenFlow table id.
    pub(crate) table: u8,
    /// Priority.
    pub(crate) priority: u16,
    /// Cookie.
    pub(crate) cookie: u64,
    /// Normalized match, sorted by field name (shared with the flow's [`FlowKey`]); its tail holds
    /// the wire form of a [`FlowSource::Wire`] flow.
    pub(crate) matches: Matches,
    /// What [`FlowEntry::text`] and [`FlowEntry::actions`] decode.
    pub(crate) source: FlowSource,
    /// Idle timeout, seconds (0 = none).
    pub(crate) idle_timeout: u16,
    /// Hard timeout, seconds (0 = none).
    pub(crate) hard_timeout: u16,
}

impl PartialEq for FlowEntry {
    fn eq(&self, o: &Self) -> bool {
        self.table == o.table
            && self.priority == o.priority
            && self.cookie == o.cookie
            && self.idle_timeout == o.idle_timeout
            && self.hard_timeout == o.hard_timeout
            && self.source == o.source
            && self.matches == o.matches
            && (self.matches.same_bytes(&o.matches) || self.matches.tail() == o.matches.tail())
    }
}

impl Eq for FlowEntry {}

impl Serialize for FlowEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("FlowEntry", 8)?;
        st.serialize_field("table", &self.table)?;
        st.serialize_field("priority", &self.priority)?;
        // As ovs-ofctl prints it: a JSON number loses precision above 2^53.
        st.serialize_field("cookie", &format!("{:#x}", self.cookie))?;
        st.serialize_field("matches", &self.matches)?;
        st.serialize_field("actions", &self.actions())?;
        st.serialize_field("text", &self.text())?;
        st.serialize_field("idle_timeout", &self.idle_timeout)?;
        st.serialize_field("hard_timeout", &self.hard_timeout)?;
        st.end()
    }
}

impl FlowEntry {
    /// The flow in `ovs-ofctl -O OpenFlow13 dump-flows --no-stats` text form (cookie, table,
    /// priority, match, `actions=`), exactly as ovs-ofctl prints it. Rendered on each call (a few
    /// microseconds): callers that need it repeatedly should keep the string.
    pub(crate) fn text(&self) -> String {
        super::render::flow_text(self)
    }

    /// The semantic actions, in order: decoded from the wire form on each call (no text is
    /// rendered). A wire form that no longer decodes (impossible for
    /// entries built by the decoder, which decoded it once) gives no actions.
    pub(crate) fn actions(&self) -> std::borrow::Cow<'_, [FlowAction]> {
        match &self.source {
            #[cfg(test)]
            FlowSource::Text(t) => std::borrow::Cow::Borrowed(&t.actions),
            FlowSource::Wire(i) => {
                std::borrow::Cow::Owned(super::render::wire_actions(i.bytes()).unwrap_or_default())
            }
        }
    }

    /// The stored wire form of the flow (see [`FlowSource::Wire`]).
    pub(crate) fn wire(&self) -> &[u8] {
        match self.source {
            FlowSource::Wire(_) => self.matches.tail(),
            #[cfg(test)]
            FlowSource::Text(_) => &[],
        }
    }

    /// The OpenFlow 1.3 instructions of the wire form.
    /// The shared instructions of a decoded flow (`None` for a hand-built one).
    pub(crate) fn instructions(&self) -> Option<&Instructions> {
        match &self.source {
            FlowSource::Wire(i) => Some(i),
            #[cfg(test)]
            FlowSource::Text(_) => None,
        }
    }

    /// Whether both flows have the same actions (compares the instructions' bytes).
    pub(crate) fn same_actions(&self, other: &FlowEntry) -> bool {
        match (&self.source, &other.source) {
            (FlowSource::Wire(a), FlowSource::Wire(b)) => a == b,
            #[cfg(test)]
            _ => self.actions() == other.actions(),
        }
    }

    /// The flow's identity in its bridge: table, priority and match (OpenFlow's own identity rule).
    /// Cheap: the key shares the entry's match bytes.
    pub(crate) fn key(&self) -> FlowKey {
        FlowKey {
            table: self.table,
            priority: self.priority,
            matches: self.matches.clone(),
        }
    }
}

impl From<std::sync::Arc<FlowEntry>> for FlowEntry {
    fn from(a: std::sync::Arc<FlowEntry>) -> FlowEntry {
        std::sync::Arc::unwrap_or_clone(a)
    }
}

/// Identity of a flow within a bridge: OpenFlow identifies a flow by table, priority and match.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub(crate) struct FlowKey {
    /// OpenFlow table id.
    pub(crate) table: u8,
    /// Priority.
    pub(crate) priority: u16,
    /// Normalized match (the same bytes as the entry's [`FlowEntry::matches`]).
    pub(crate) matches: Matches,
}

#[cfg(test)]
mod instruction_tests {
    use super::Instructions;

    #[test]
    fn instructions_are_shared_while_alive_and_validated_once() {
        let bytes = [0u8, 4, 0, 8, 0xde, 0xad, 0xbe, 0xef];
        let validated = std::cell::Cell::new(0);
        let ok = |_: &[u8]| -> Result<(), ()> {
            validated.set(validated.get() + 1);
            Ok(())
        };
        let a = Instructions::intern(&bytes, ok).unwrap();
        let b = Instructions::intern(&bytes, ok).unwrap();
        assert_eq!(a.addr(), b.addr());
        assert_eq!(b.bytes(), bytes);
        let other = Instructions::intern(&bytes[..4], ok).unwrap();
        assert_ne!(other.addr(), a.addr());
        assert_eq!(validated.get(), 2);
        // Bytes that do not validate are refused, and not remembered.
        let bad = [1u8, 2, 3];
        assert!(Instructions::intern(&bad, |_| Err(())).is_err());
        assert!(Instructions::intern(&bad, |_| Err(())).is_err());
        // Once the last holder is gone, the next flow validates again (a fresh copy).
        drop((a, b));
        let _c = Instructions::intern(&bytes, ok).unwrap();
        assert_eq!(validated.get(), 3);
    }
}
