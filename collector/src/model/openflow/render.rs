//! Flow entries: decoding OF1.3 flow-stats replies and ONF flow-monitor updates into
//! [`FlowEntry`]s, and rendering them in `ovs-ofctl -O OpenFlow13 dump-flows` text form.

use super::actions::decode_instructions;
use super::bytes::{DecodeError, DecodeResult, Rd};
use super::flow::{FlowEntry, FlowSource};
use super::oxm::{Match, push_dec, push_hex, render_match};
use std::fmt::Write as _;

/// A flow from a flow-stats dump, with the statistics that are not part of [`FlowEntry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FlowStats {
    /// The flow.
    pub(crate) entry: FlowEntry,
    /// Seconds since the flow was installed.
    pub(crate) duration_sec: u32,
    /// Nanoseconds part of the duration.
    pub(crate) duration_nsec: u32,
    /// Packets matched.
    pub(crate) n_packets: u64,
    /// Bytes matched.
    pub(crate) n_bytes: u64,
    /// Flow-mod flags (`OFPFF_*`).
    pub(crate) flags: u16,
}

/// One flow-monitor update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FlowUpdate {
    /// A flow was added (or was present at monitor start, when requested).
    Added(FlowEntry),
    /// A flow was deleted; the entry is the flow as it was.
    Deleted(FlowEntry),
    /// A flow's actions (or timeouts/cookie) changed; the entry is the new flow.
    Modified(FlowEntry),
    /// An abbreviated update for a change made over this same connection (never requested by
    /// pinflow, which does not modify flows).
    Abbreviated {
        /// Xid of the flow mod that caused it.
        xid: u32,
    },
}

/// A flow the switch sent that does not decode (a malformed or unsupported match or instruction):
/// it is skipped — never applied to the mirror or the dirty-flow index, and never the end of the
/// dump or the session — counted in `pinflow_source_errors_total{source="openflow"}`, and carried
/// raw so it can be shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UndecodableFlow {
    /// Table id from the entry's fixed part.
    pub(crate) table: u8,
    /// Priority from the entry's fixed part.
    pub(crate) priority: u16,
    /// Cookie from the entry's fixed part.
    pub(crate) cookie: u64,
    /// Why it does not decode.
    pub(crate) error: String,
    /// The entry as received (`ofp_flow_stats` or `nx_flow_update_full`), truncated to
    /// [`UndecodableFlow::MAX_RAW`] bytes.
    pub(crate) raw: Box<[u8]>,
}

impl UndecodableFlow {
    /// Bytes of the raw entry kept.
    pub(crate) const MAX_RAW: usize = 1024;

    fn new(table: u8, priority: u16, cookie: u64, error: &DecodeError, raw: &[u8]) -> Self {
        Self {
            table,
            priority,
            cookie,
            error: error.to_string(),
            raw: raw.get(..Self::MAX_RAW).unwrap_or(raw).into(),
        }
    }

    /// The raw entry in hex (what a log line or the API shows).
    pub(crate) fn raw_hex(&self) -> String {
        let mut s = String::with_capacity(self.raw.len() * 2);
        for b in &self.raw {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

/// `{table, priority, cookie (hex), error, raw (hex)}`, as `/api/v1/flows` and `pinflow flows
/// --json` show it.
impl serde::Serialize for UndecodableFlow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("UndecodableFlow", 5)?;
        st.serialize_field("table", &self.table)?;
        st.serialize_field("priority", &self.priority)?;
        st.serialize_field("cookie", &format!("{:#x}", self.cookie))?;
        st.serialize_field("error", &self.error)?;
        st.serialize_field("raw", &self.raw_hex())?;
        st.end()
    }
}

/// Reusable buffers for decoding many flows (keeps per-flow allocations exact-sized).
#[derive(Debug, Default)]
struct Scratch {
    text: String,
    actions: Vec<super::flow::FlowAction>,
    fields: Vec<super::flow::FieldMatch>,
}

/// The header fields a flow's text shows besides its match and instructions.
#[derive(Clone, Copy, Debug)]
struct Head {
    table: u8,
    priority: u16,
    cookie: u64,
    idle_timeout: u16,
    hard_timeout: u16,
    flags: u16,
}

/// Writes the `--no-stats` text of a flow into `text` (cleared first), collecting its semantic
/// actions into `actions` (cleared first).
fn render_into(
    h: Head,
    m: &Match,
    instructions: &[u8],
    text: &mut String,
    actions: &mut Vec<super::flow::FlowAction>,
) -> DecodeResult<()> {
    text.clear();
    push_text(h, m, instructions, text, actions)
}

/// Appends the `--no-stats` text of a flow to `text`, collecting its semantic actions into
/// `actions` (cleared first).
fn push_text(
    h: Head,
    m: &Match,
    instructions: &[u8],
    text: &mut String,
    actions: &mut Vec<super::flow::FlowAction>,
) -> DecodeResult<()> {
    push_head_and_match(h, m, text);
    actions.clear();
    decode_instructions(instructions, text, actions)
}

/// Appends a flow's text up to and including `actions=`.
fn push_head_and_match(h: Head, m: &Match, text: &mut String) {
    if h.cookie != 0 {
        text.push_str("cookie=");
        push_hex(text, h.cookie as u128);
        text.push_str(", ");
    }
    if h.table != 0 {
        text.push_str("table=");
        push_dec(text, h.table as u64);
        text.push_str(", ");
    }
    if h.idle_timeout != 0 {
        let _ = write!(text, "idle_timeout={}, ", h.idle_timeout);
    }
    if h.hard_timeout != 0 {
        let _ = write!(text, "hard_timeout={}, ", h.hard_timeout);
    }
    if h.flags != 0 {
        for (bit, name) in [
            (1u16, "send_flow_rem "),
            (2, "check_overlap "),
            (4, "reset_counts "),
            (8, "no_packet_counts "),
            (16, "no_byte_counts "),
        ] {
            if h.flags & bit != 0 {
                text.push_str(name);
            }
        }
    }
    let before = text.len();
    render_match(text, m, h.priority);
    if text.len() != before {
        text.push(' ');
    }
    text.push_str("actions=");
}

/// The OXM TLVs of the `ofp_match` at the start of `buf` (which must have decoded already).
fn match_tlvs(buf: &[u8]) -> &[u8] {
    let len = buf
        .get(2..4)
        .map_or(4, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    buf.get(4..len).unwrap_or_default()
}

/// The TLV length of a stored wire form whose TLVs were left out: its normalized match renders
/// it ([`Match::normalizes_back`]). No real TLV list has this length (an `ofp_match` holds at
/// most 65 531 bytes of them).
const TLVS_OMITTED: u16 = u16::MAX;

/// The header of the compact wire form of [`FlowSource::Wire`] (flags, TLV length, or
/// [`TLVS_OMITTED`] when `tlvs` is `None`); the TLVs (if kept) and instructions follow it.
fn wire_head(flags: u16, tlvs: Option<&[u8]>) -> DecodeResult<[u8; 4]> {
    let tlv_len = match tlvs {
        None => TLVS_OMITTED,
        Some(t) => u16::try_from(t.len())
            .ok()
            .filter(|l| *l != TLVS_OMITTED)
            .ok_or_else(|| DecodeError::Malformed(format!("match of {} bytes", t.len())))?,
    };
    let [a, b] = flags.to_be_bytes();
    let [c, d] = tlv_len.to_be_bytes();
    Ok([a, b, c, d])
}

/// A stored wire form's parts: flow-mod flags and the match TLVs (`None`: left out, see
/// [`TLVS_OMITTED`]).
pub(crate) fn split_wire(w: &[u8]) -> DecodeResult<(u16, Option<&[u8]>)> {
    let mut r = Rd::new(w, "stored flow");
    let flags = r.u16()?;
    let tlvs = match r.u16()? {
        TLVS_OMITTED => None,
        n => Some(r.take(usize::from(n))?),
    };
    Ok((flags, tlvs))
}

/// The semantic actions of stored instructions ([`FlowEntry::actions`]).
pub(crate) fn wire_actions(instructions: &[u8]) -> DecodeResult<Vec<super::flow::FlowAction>> {
    let mut text = String::new();
    let mut actions = Vec::new();
    decode_instructions(instructions, &mut text, &mut actions)?;
    Ok(actions)
}

/// Renders a flow's `ovs-ofctl -O OpenFlow13 dump-flows --no-stats` text from its
/// [`FlowSource`] (see [`FlowEntry::text`]). A wire form that no longer decodes (impossible for
/// entries built by the decoder, which decoded it once) renders as a comment saying so.
pub(crate) fn flow_text(e: &FlowEntry) -> String {
    match &e.source {
        #[cfg(test)]
        FlowSource::Text(t) => t.text.to_string(),
        FlowSource::Wire(i) => render_wire(e, e.wire(), i.bytes()).unwrap_or_else(|err| {
            format!(
                "table={}, priority={} <undecodable flow: {err}>",
                e.table, e.priority
            )
        }),
    }
}

fn render_wire(e: &FlowEntry, w: &[u8], instructions: &[u8]) -> DecodeResult<String> {
    let (flags, tlvs) = split_wire(w)?;
    let m = match tlvs {
        Some(t) => Match::decode_tlvs(t)?,
        None => Match::from_normalized(&e.matches).ok_or_else(|| {
            DecodeError::Malformed("stored match does not map back to fields".into())
        })?,
    };
    let mut text = String::with_capacity(128);
    let mut actions = Vec::new();
    render_into(
        Head {
            table: e.table,
            priority: e.priority,
            cookie: e.cookie,
            idle_timeout: e.idle_timeout,
            hard_timeout: e.hard_timeout,
            flags,
        },
        &m,
        instructions,
        &mut text,
        &mut actions,
    )?;
    Ok(text)
}

/// Builds the entry from decoded parts (decoding its instructions once, which validates them; the
/// text is not kept).
#[expect(clippy::too_many_arguments, reason = "mirrors the wire fields")]
fn build_entry(
    table: u8,
    priority: u16,
    cookie: u64,
    idle_timeout: u16,
    hard_timeout: u16,
    flags: u16,
    m: &Match,
    tlvs: &[u8],
    instructions: &[u8],
    scratch: &mut Scratch,
) -> DecodeResult<FlowEntry> {
    // Decoding the instructions once validates them (the text is rendered later, on demand,
    // from the stored wire form with this same decoder); a list some live flow shares already
    // decoded, and is taken as it is.
    let Scratch { text, actions, .. } = scratch;
    let instructions = super::flow::Instructions::intern(instructions, |b| {
        text.clear();
        actions.clear();
        decode_instructions(b, text, actions)
    })?;
    // The TLVs are kept only when the normalized match does not render the flow by itself.
    m.normalized_fields(&mut scratch.fields);
    let tlvs = (!m.normalizes_back(&scratch.fields)).then_some(tlvs);
    let head = wire_head(flags, tlvs)?;
    Ok(FlowEntry {
        table,
        priority,
        cookie,
        // One allocation: the match with the wire form as its tail.
        matches: super::flow::Matches::from_fields_with_tail(
            &mut scratch.fields,
            &[&head, tlvs.unwrap_or_default()],
        ),
        source: FlowSource::Wire(instructions),
        idle_timeout,
        hard_timeout,
    })
}

/// The fixed fields of one `ofp_flow_stats`.
struct StatsHead {
    table: u8,
    duration_sec: u32,
    duration_nsec: u32,
    priority: u16,
    idle_timeout: u16,
    hard_timeout: u16,
    flags: u16,
    cookie: u64,
    packets: u64,
    bytes: u64,
}

/// Takes the `ofp_flow_stats` at `r`: its fixed fields, and a reader over the rest of it (the
/// match, then the instructions).
fn take_flow_stats<'a>(r: &mut Rd<'a>) -> DecodeResult<(StatsHead, Rd<'a>)> {
    let mut peek = *r;
    let length = peek.u16()? as usize;
    if length < 56 {
        return Err(DecodeError::Malformed(format!(
            "flow stats entry length {length} < 56"
        )));
    }
    let mut f = Rd::new(r.take(length)?, "ofp_flow_stats");
    f.skip(2)?;
    let table = f.u8()?;
    f.skip(1)?;
    let duration_sec = f.u32()?;
    let duration_nsec = f.u32()?;
    let priority = f.u16()?;
    let idle_timeout = f.u16()?;
    let hard_timeout = f.u16()?;
    let flags = f.u16()?;
    f.skip(4)?;
    let head = StatsHead {
        table,
        duration_sec,
        duration_nsec,
        priority,
        idle_timeout,
        hard_timeout,
        flags,
        cookie: f.u64()?,
        packets: f.u64()?,
        bytes: f.u64()?,
    };
    Ok((head, f))
}

/// Decodes the body of an `OFPMP_FLOW` reply (a sequence of `ofp_flow_stats`), appending flows.
/// An entry whose match or instructions do not decode goes to `bad` and the rest still decode; an
/// error is returned only when the framing itself is broken (the next entry cannot be found).
pub(crate) fn decode_flow_stats(
    body: &[u8],
    out: &mut Vec<FlowStats>,
    bad: &mut Vec<UndecodableFlow>,
) -> DecodeResult<()> {
    let mut r = Rd::new(body, "ofp_flow_stats");
    let mut m = Match::default();
    let mut scratch = Scratch::default();
    out.reserve(body.len() / 120);
    while !r.is_empty() {
        let r_start = body.len() - r.len();
        let (
            StatsHead {
                table,
                duration_sec,
                duration_nsec,
                priority,
                idle_timeout: idle,
                hard_timeout: hard,
                flags,
                cookie,
                packets,
                bytes,
            },
            mut f,
        ) = take_flow_stats(&mut r)?;
        let mbuf = f.rest();
        let entry = m.read_ofp_match_into(&mut f).and_then(|()| {
            build_entry(
                table,
                priority,
                cookie,
                idle,
                hard,
                flags,
                &m,
                match_tlvs(mbuf),
                f.rest(),
                &mut scratch,
            )
        });
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let raw = body.get(r_start..body.len() - r.len()).unwrap_or_default();
                bad.push(UndecodableFlow::new(table, priority, cookie, &e, raw));
                continue;
            }
        };
        out.push(FlowStats {
            entry,
            duration_sec,
            duration_nsec,
            n_packets: packets,
            n_bytes: bytes,
            flags,
        });
    }
    Ok(())
}

/// Renders flow-stats replies straight to `ovs-ofctl` lines, for one-shot dumps (`pinflow flows`):
/// no [`FlowEntry`] is built and nothing is allocated per flow (the match and the action list are
/// reused from flow to flow).
#[derive(Debug, Default)]
pub(crate) struct LineRenderer {
    m: Match,
    actions: Vec<super::flow::FlowAction>,
    /// Rendered instruction lists by their bytes, direct-mapped: a flow's actions text depends
    /// on its instruction bytes alone, and a table repeats a few hundred distinct ones. Boxed, so
    /// that the empty table is 16 KiB to set up rather than 96 KiB (a one-shot dump pays for it).
    cache: Vec<Option<Box<CachedActions>>>,
    /// The last cookie and its hex text (flows of one agent share a cookie).
    cookie_hex: (u64, String),
    /// Flows that did not decode (skipped, not printed): the first [`MAX_UNDECODABLE_KEPT`],
    /// and how many in all.
    undecodable: (Vec<UndecodableFlow>, usize),
}

/// One entry of [`LineRenderer`]'s actions cache: instruction bytes and their rendered text.
type CachedActions = (Vec<u8>, String);

/// Undecodable flows of one dump kept raw (the rest are only counted).
pub(crate) const MAX_UNDECODABLE_KEPT: usize = 32;

/// Keeps `bad` in `kept` up to [`MAX_UNDECODABLE_KEPT`], counting all of them in `total`.
pub(crate) fn keep_undecodable(
    kept: &mut Vec<UndecodableFlow>,
    total: &mut usize,
    bad: impl IntoIterator<Item = UndecodableFlow>,
) {
    for u in bad {
        *total += 1;
        if kept.len() < MAX_UNDECODABLE_KEPT {
            kept.push(u);
        }
    }
}

/// Slots of [`LineRenderer`]'s actions cache (a power of two).
const ACTIONS_CACHE_SLOTS: usize = 2048;

/// Cheap hash of instruction bytes (for the actions cache slot).
fn slot_hash(b: &[u8]) -> usize {
    let mut h = b.len() as u64;
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(a)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    for &x in words.remainder() {
        h = (h.rotate_left(5) ^ u64::from(x)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    // Fold, mix once more and keep the top bits (they depend on every input bit).
    h ^= h >> 29;
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> (64 - ACTIONS_CACHE_SLOTS.trailing_zeros())) as usize
}

impl LineRenderer {
    /// Appends one line per flow of the body of an `OFPMP_FLOW` reply to `out`: `" <flow>\n"`,
    /// where `<flow>` is the flow's [`FlowEntry::text`] (`ovs-ofctl -O OpenFlow13 --no-stats
    /// dump-flows`) or, with `stats`, its [`stats_line`]. Returns the number of flows printed.
    /// A flow whose match or instructions do not decode is skipped, as the mirror skips it, and
    /// kept for [`take_undecodable`](Self::take_undecodable); a body whose entries cannot be
    /// delimited is an error, with `out` left as it was before the failing entry.
    pub(crate) fn push_flow_stats(
        &mut self,
        body: &[u8],
        stats: bool,
        out: &mut String,
    ) -> DecodeResult<usize> {
        let mut r = Rd::new(body, "ofp_flow_stats");
        let mut n = 0;
        while !r.is_empty() {
            let start = out.len();
            let rest = r.rest();
            let (head, f) = take_flow_stats(&mut r)?;
            let raw = &rest[..rest.len() - r.len()];
            let (table, priority, cookie) = (head.table, head.priority, head.cookie);
            match self.push_one(head, f, stats, out) {
                Ok(()) => n += 1,
                Err(e) => {
                    out.truncate(start);
                    let (kept, total) = &mut self.undecodable;
                    let bad = UndecodableFlow::new(table, priority, cookie, &e, raw);
                    keep_undecodable(kept, total, [bad]);
                }
            }
        }
        Ok(n)
    }

    /// The flows skipped because they did not decode since the last call (the first few, and
    /// how many in all).
    pub(crate) fn take_undecodable(&mut self) -> (Vec<UndecodableFlow>, usize) {
        std::mem::take(&mut self.undecodable)
    }

    /// Decodes the rest of one `ofp_flow_stats` (after its fixed head) and appends its line.
    fn push_one(
        &mut self,
        head: StatsHead,
        mut f: Rd<'_>,
        stats: bool,
        out: &mut String,
    ) -> DecodeResult<()> {
        let StatsHead {
            table,
            duration_sec,
            duration_nsec,
            priority,
            idle_timeout,
            hard_timeout,
            flags,
            cookie,
            packets,
            bytes,
        } = head;
        self.m.read_ofp_match_into(&mut f)?;
        let mut h = Head {
            table,
            priority,
            cookie,
            idle_timeout,
            hard_timeout,
            flags,
        };
        if self.cookie_hex.1.is_empty() || self.cookie_hex.0 != cookie {
            self.cookie_hex.0 = cookie;
            self.cookie_hex.1.clear();
            push_hex(&mut self.cookie_hex.1, u128::from(cookie));
        }
        let cookie_hex = self.cookie_hex.1.as_str();
        out.push(' ');
        if stats {
            // Same text as `stats_line`: cookie and table move to the statistics prefix.
            push_stats_prefix(
                out,
                cookie_hex,
                duration_sec,
                duration_nsec,
                table,
                packets,
                bytes,
            );
            h.table = 0;
        } else if cookie != 0 {
            // What `push_head_and_match` prints first.
            out.push_str("cookie=");
            out.push_str(cookie_hex);
            out.push_str(", ");
        }
        h.cookie = 0;
        push_head_and_match(h, &self.m, out);
        self.push_actions(f.rest(), out)?;
        out.push('\n');
        Ok(())
    }

    /// Appends the actions text of `instructions`, from the cache when they were seen before.
    fn push_actions(&mut self, instructions: &[u8], out: &mut String) -> DecodeResult<()> {
        if self.cache.is_empty() {
            self.cache.resize_with(ACTIONS_CACHE_SLOTS, || None);
        }
        let slot = self.cache.get_mut(slot_hash(instructions));
        if let Some(Some(hit)) = &slot
            && hit.0.as_slice() == instructions
        {
            out.push_str(&hit.1);
            return Ok(());
        }
        let start = out.len();
        self.actions.clear();
        decode_instructions(instructions, out, &mut self.actions)?;
        if let Some(slot) = slot {
            let (bytes, text) = &mut **slot.get_or_insert_with(Default::default);
            bytes.clear();
            bytes.extend_from_slice(instructions);
            text.clear();
            text.push_str(out.get(start..).unwrap_or_default());
        }
        Ok(())
    }
}

/// A flow's age as `ovs-ofctl` prints it (OVS `ofp_print_duration`): whole seconds without
/// decimals; a fraction that is whole milliseconds with exactly three decimals (`401.490s`: OVS
/// keeps millisecond precision, so dumps line up); any other fraction with as many of its nine
/// nanosecond digits as it needs (trailing zeros dropped). Values that are not valid nanosecond
/// counts (≥ 10⁹) are printed the same way OVS prints them, digit for digit.
pub(crate) fn push_duration(s: &mut String, sec: u32, nsec: u32) {
    push_dec(s, u64::from(sec));
    if nsec > 0 {
        let msec = nsec / 1_000_000;
        s.push('.');
        if msec * 1_000_000 == nsec {
            let _ = write!(s, "{msec:03}");
        } else {
            let start = s.len();
            let _ = write!(s, "{nsec:09}");
            let end = s.trim_end_matches('0').len().max(start);
            s.truncate(end);
        }
    }
    s.push('s');
}

/// `cookie=…, duration=…s, table=…, n_packets=…, n_bytes=…, ` (the start of a [`stats_line`]).
fn push_stats_prefix(
    s: &mut String,
    cookie_hex: &str,
    duration_sec: u32,
    duration_nsec: u32,
    table: u8,
    packets: u64,
    bytes: u64,
) {
    s.push_str("cookie=");
    s.push_str(cookie_hex);
    s.push_str(", duration=");
    push_duration(s, duration_sec, duration_nsec);
    s.push_str(", table=");
    push_dec(s, u64::from(table));
    s.push_str(", n_packets=");
    push_dec(s, packets);
    s.push_str(", n_bytes=");
    push_dec(s, bytes);
    s.push_str(", ");
}

/// Decodes the body of an ONF flow-monitor reply (`nx_flow_update_*` records with OF1.3 matches
/// and instructions), appending updates. A record whose match or instructions do not decode goes to
/// `bad` (see [`decode_flow_stats`]).
pub(crate) fn decode_flow_updates(
    body: &[u8],
    out: &mut Vec<FlowUpdate>,
    bad: &mut Vec<UndecodableFlow>,
) -> DecodeResult<()> {
    let mut r = Rd::new(body, "flow update");
    let mut scratch = Scratch::default();
    while !r.is_empty() {
        let mut peek = r;
        let length = peek.u16()? as usize;
        let event = peek.u16()?;
        if length < 8 || !length.is_multiple_of(8) {
            return Err(DecodeError::Malformed(format!(
                "flow update length {length} is not a positive multiple of 8"
            )));
        }
        let record = r.take(length)?;
        let mut u = Rd::new(record, "flow update");
        u.skip(4)?;
        if event == 3 {
            out.push(FlowUpdate::Abbreviated { xid: u.u32()? });
            continue;
        }
        if event > 3 {
            return Err(DecodeError::Malformed(format!(
                "unknown flow update event {event}"
            )));
        }
        let _reason = u.u16()?;
        let priority = u.u16()?;
        let idle = u.u16()?;
        let hard = u.u16()?;
        let _match_len = u.u16()?;
        let table = u.u8()?;
        u.skip(1)?;
        let cookie = u.u64()?;
        let mbuf = u.rest();
        let entry = Match::read_ofp_match(&mut u).and_then(|m| {
            build_entry(
                table,
                priority,
                cookie,
                idle,
                hard,
                0,
                &m,
                match_tlvs(mbuf),
                u.rest(),
                &mut scratch,
            )
        });
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                bad.push(UndecodableFlow::new(table, priority, cookie, &e, record));
                continue;
            }
        };
        out.push(match event {
            0 => FlowUpdate::Added(entry),
            1 => FlowUpdate::Deleted(entry),
            _ => FlowUpdate::Modified(entry),
        });
    }
    Ok(())
}

/// The flow in `ovs-ofctl -O OpenFlow13 dump-flows` form *with* statistics
/// (`cookie=…, duration=…s, table=…, n_packets=…, n_bytes=…, …`), without the leading space.
pub(crate) fn stats_line(f: &FlowStats) -> String {
    let e = &f.entry;
    let text = e.text();
    let mut rest = text.as_str();
    if e.cookie != 0 {
        rest = rest.split_once(", ").map(|(_, r)| r).unwrap_or(rest);
    }
    if e.table != 0 {
        rest = rest.split_once(", ").map(|(_, r)| r).unwrap_or(rest);
    }
    let mut s = String::with_capacity(text.len() + 64);
    let _ = write!(s, "cookie={:#x}, duration=", e.cookie);
    push_duration(&mut s, f.duration_sec, f.duration_nsec);
    let _ = write!(
        s,
        ", table={}, n_packets={}, n_bytes={}, {rest}",
        e.table, f.n_packets, f.n_bytes
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_render_like_ofp_print_duration() {
        // (sec, nsec, what OVS's ofp_print_duration prints): whole ms → 3 decimals, finer →
        // trailing zeros dropped, none → no decimals, out-of-range nsec printed digit for digit.
        for (sec, nsec, want) in [
            (401, 490_000_000, "401.490s"),
            (0, 0, "0s"),
            (7, 1_000_000, "7.001s"),
            (7, 500_000_000, "7.500s"),
            (7, 999_000_000, "7.999s"),
            (7, 1, "7.000000001s"),
            (7, 5, "7.000000005s"),
            (7, 123_456_789, "7.123456789s"),
            (7, 123_450_000, "7.12345s"),
            (7, 999_999_999, "7.999999999s"),
            (7, 1_000_000_000, "7.1000s"),
            (7, u32::MAX, "7.4294967295s"),
            (u32::MAX, 10_000_000, "4294967295.010s"),
        ] {
            let mut s = String::new();
            push_duration(&mut s, sec, nsec);
            assert_eq!(s, want, "{sec} s {nsec} ns");
        }
    }
}
