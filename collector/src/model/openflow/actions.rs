//! OpenFlow 1.3 instructions and actions (standard + Nicira extensions), decoded straight into
//! their `ovs-ofctl` text and the semantic [`FlowAction`]s detectors use.
//!
//! Instructions are rendered in the order OVS prints them (meter, apply-actions, clear-actions,
//! write-actions, write-metadata, goto-table), whatever their wire order. An action this decoder
//! does not know is rendered in a clear raw form (`unknown_action(type=…,0x…)`,
//! `nx_action(subtype=…,0x…)`) and carried as [`FlowAction::Other`]; it never fails the flow.

use super::bytes::{DecodeError, DecodeResult, NX_EXPERIMENTER, Rd};
use super::flow::FlowAction;
use super::oxm::{
    FieldInfo, Key, Norm, OxmHeader, c_hex, fmt_ipv4, fmt_ipv6, fmt_port, mf_format, push_dec,
    put_hex_bytes, reserved_port_name,
};
use std::fmt::Write as _;

const OFPP_CONTROLLER: u32 = 0xffff_fffd;

/// Decodes OF1.3 instructions, appending their text to `text` (`drop` when there are no actions)
/// and their meaning to `acts`.
pub(crate) fn decode_instructions(
    buf: &[u8],
    text: &mut String,
    acts: &mut Vec<FlowAction>,
) -> DecodeResult<()> {
    let mut r = Rd::new(buf, "instruction");
    let mut meter: Option<u32> = None;
    let mut apply: Option<&[u8]> = None;
    let mut clear = false;
    let mut write: Option<&[u8]> = None;
    let mut metadata: Option<(u64, u64)> = None;
    let mut goto: Option<u8> = None;
    let mut other: Vec<(u16, &[u8])> = Vec::new();
    while !r.is_empty() {
        let ty = r.u16()?;
        let len = r.u16()? as usize;
        if len < 4 || !len.is_multiple_of(8) {
            return Err(DecodeError::Malformed(format!(
                "instruction type {ty} has length {len}"
            )));
        }
        let mut b = Rd::new(r.take(len - 4)?, "instruction");
        match ty {
            1 => goto = Some(b.u8()?),
            2 => {
                b.skip(4)?;
                metadata = Some((b.u64()?, b.u64()?));
            }
            3 => {
                b.skip(4)?;
                write = Some(b.rest());
            }
            4 => {
                b.skip(4)?;
                apply = Some(b.rest());
            }
            5 => clear = true,
            6 => meter = Some(b.u32()?),
            _ => other.push((ty, b.rest())),
        }
    }
    let start = text.len();
    let sep = |t: &mut String| {
        if t.len() > start {
            t.push(',');
        }
    };
    if let Some(m) = meter {
        let _ = write!(text, "meter:{m}");
        acts.push(FlowAction::Other(format!("meter:{m}").into()));
    }
    if let Some(a) = apply {
        sep(text);
        decode_actions(a, text, acts)?;
        if text.ends_with(',') {
            text.pop();
        }
    }
    if clear {
        sep(text);
        text.push_str("clear_actions");
        acts.push(FlowAction::Other("clear_actions".into()));
    }
    if let Some(w) = write {
        sep(text);
        text.push_str("write_actions(");
        decode_actions(w, text, acts)?;
        text.push(')');
    }
    if let Some((v, m)) = metadata {
        sep(text);
        let s0 = text.len();
        text.push_str("write_metadata:");
        c_hex(text, v as u128);
        if m != u64::MAX {
            text.push('/');
            c_hex(text, m as u128);
        }
        let s: Box<str> = text.get(s0..).unwrap_or_default().into();
        acts.push(FlowAction::Other(s));
    }
    if let Some(t) = goto {
        sep(text);
        text.push_str("goto_table:");
        push_dec(text, t as u64);
        acts.push(FlowAction::GotoTable(t));
    }
    for (ty, body) in other {
        sep(text);
        let s0 = text.len();
        let _ = write!(text, "unknown_instruction(type={ty},");
        hex_bytes(text, body);
        text.push(')');
        let s: Box<str> = text.get(s0..).unwrap_or_default().into();
        acts.push(FlowAction::Other(s));
    }
    if text.len() == start {
        text.push_str("drop");
    }
    Ok(())
}

fn hex_bytes(out: &mut String, b: &[u8]) {
    out.push_str("0x");
    for x in b {
        let _ = write!(out, "{x:02x}");
    }
}

/// Deepest nesting of action lists inside actions (`clone(...)`, `ct(exec(...))`) that is decoded;
/// deeper is malformed. Real flows nest two or three levels (OVN's `clone`); without a cap, a
/// 64 KiB message could nest ~4 000 levels and recurse off the end of a task's stack. At this cap
/// the decoder fits in 1 MiB of stack even unoptimized (tested in a thread with that much; tokio's
/// worker threads have 2 MiB).
pub(crate) const MAX_ACTION_NESTING: usize = 32;

/// Decodes an action list, appending comma-separated text (no trailing comma) and semantics.
pub(crate) fn decode_actions(
    buf: &[u8],
    text: &mut String,
    acts: &mut Vec<FlowAction>,
) -> DecodeResult<()> {
    decode_actions_at(buf, text, acts, 0)
}

/// [`decode_actions`] for a list nested `depth` levels inside other actions.
fn decode_actions_at(
    buf: &[u8],
    text: &mut String,
    acts: &mut Vec<FlowAction>,
    depth: usize,
) -> DecodeResult<()> {
    if depth > MAX_ACTION_NESTING {
        return Err(DecodeError::Malformed(format!(
            "actions nested more than {MAX_ACTION_NESTING} levels deep"
        )));
    }
    let mut r = Rd::new(buf, "action");
    let mut first = true;
    while !r.is_empty() {
        let ty = r.u16()?;
        let len = r.u16()? as usize;
        if len < 8 || !len.is_multiple_of(8) {
            return Err(DecodeError::Malformed(format!(
                "action type {ty} has length {len}"
            )));
        }
        let body = r.take(len - 4)?;
        if !first {
            text.push(',');
        }
        first = false;
        let s0 = text.len();
        let sem = decode_one(ty, body, text, acts, depth)?;
        match sem {
            Sem::Done => {}
            Sem::Other => {
                let s: Box<str> = text.get(s0..).unwrap_or_default().into();
                acts.push(FlowAction::Other(s));
            }
        }
    }
    Ok(())
}

/// Pushes a structured load ([`Sem::Done`]), or leaves the action to be carried as text.
fn push_load(load: Option<FlowAction>, acts: &mut Vec<FlowAction>) -> Sem {
    match load {
        Some(a) => {
            acts.push(a);
            Sem::Done
        }
        None => Sem::Other,
    }
}

enum Sem {
    /// Semantic action(s) already pushed.
    Done,
    /// Push the rendered text as `FlowAction::Other`.
    Other,
}

fn output(port: u32, max_len: u16, text: &mut String, acts: &mut Vec<FlowAction>) {
    match reserved_port_name(port) {
        Some(name) => {
            text.push_str(name);
            if port == OFPP_CONTROLLER {
                let _ = write!(text, ":{max_len}");
            }
            acts.push(FlowAction::Reserved(name));
        }
        None if port >= 0xff00 => {
            fmt_port(text, port);
            acts.push(FlowAction::Output(port));
        }
        None => {
            text.push_str("output:");
            push_dec(text, port as u64);
            acts.push(FlowAction::Output(port));
        }
    }
}

fn decode_one(
    ty: u16,
    body: &[u8],
    text: &mut String,
    acts: &mut Vec<FlowAction>,
    depth: usize,
) -> DecodeResult<Sem> {
    let mut b = Rd::new(body, "action");
    match ty {
        0 => {
            let port = b.u32()?;
            let max_len = b.u16()?;
            output(port, max_len, text, acts);
            Ok(Sem::Done)
        }
        11 => {
            text.push_str("copy_ttl_out");
            Ok(Sem::Other)
        }
        12 => {
            text.push_str("copy_ttl_in");
            Ok(Sem::Other)
        }
        15 => {
            let _ = write!(text, "set_mpls_ttl({})", b.u8()?);
            Ok(Sem::Other)
        }
        16 => {
            text.push_str("dec_mpls_ttl");
            Ok(Sem::Other)
        }
        17 => {
            let _ = write!(text, "push_vlan:{:#x}", b.u16()?);
            Ok(Sem::Other)
        }
        18 => {
            text.push_str("pop_vlan");
            Ok(Sem::Other)
        }
        19 => {
            let _ = write!(text, "push_mpls:{:#06x}", b.u16()?);
            Ok(Sem::Other)
        }
        20 => {
            let _ = write!(text, "pop_mpls:{:#06x}", b.u16()?);
            Ok(Sem::Other)
        }
        21 => {
            let _ = write!(text, "set_queue:{}", b.u32()?);
            Ok(Sem::Other)
        }
        22 => {
            let _ = write!(text, "group:{}", b.u32()?);
            Ok(Sem::Other)
        }
        23 => {
            let _ = write!(text, "mod_nw_ttl:{}", b.u8()?);
            Ok(Sem::Other)
        }
        24 => {
            text.push_str("dec_ttl");
            Ok(Sem::Other)
        }
        25 => Ok(push_load(set_field(&mut b, text)?, acts)),
        0xffff => {
            let exp = b.u32()?;
            if exp == NX_EXPERIMENTER {
                let subtype = b.u16()?;
                decode_nx(subtype, b, text, acts, depth)
            } else {
                let _ = write!(text, "experimenter_action(experimenter={exp:#010x},");
                hex_bytes(text, b.rest());
                text.push(')');
                Ok(Sem::Other)
            }
        }
        _ => {
            let _ = write!(text, "unknown_action(type={ty},");
            hex_bytes(text, body);
            text.push(')');
            Ok(Sem::Other)
        }
    }
}

fn be_val(b: &[u8]) -> u128 {
    b.iter().fold(0u128, |a, &x| (a << 8) | x as u128)
}

/// Renders a set-field (`OFPAT_SET_FIELD`, `NXAST_REG_LOAD2`); a write into a register is also
/// returned as a [`FlowAction::Load`].
fn set_field(b: &mut Rd<'_>, text: &mut String) -> DecodeResult<Option<FlowAction>> {
    let h = OxmHeader::read(b)?;
    let payload = b.take(h.payload_len())?;
    let (v, m) = if h.has_mask {
        let (a, c) = payload.split_at(payload.len() / 2);
        (a, Some(c))
    } else {
        (payload, None)
    };
    text.push_str("set_field:");
    if let Some(n) = super::oxm::tun_metadata_index(h.class, h.field) {
        // A field as wide as the TLV map says: its value (and mask) as big-endian hex.
        put_hex_bytes(text, v);
        if let Some(m) = m {
            text.push('/');
            put_hex_bytes(text, m);
        }
        let _ = write!(text, "->tun_metadata{n}");
        return Ok(None);
    }
    match h.info() {
        Some(info) if info.bytes as usize == v.len() => {
            let (value, mask) = (be_val(v), m.map(be_val));
            mf_format(text, info, value, mask);
            text.push_str("->");
            text.push_str(info.name);
            Ok(register_load(
                info,
                value,
                mask.unwrap_or(u128::from(u32::MAX)),
                true,
            ))
        }
        _ => {
            hex_bytes(text, v);
            if let Some(m) = m {
                text.push('/');
                hex_bytes(text, m);
            }
            text.push_str("->");
            h.subfield_name(text);
            Ok(None)
        }
    }
}

/// The [`FlowAction::Load`] of `value` into the bits of `mask` when `info` is a 32-bit register
/// and the two say exactly what the printed action says (no value bits outside the mask).
fn register_load(info: &FieldInfo, value: u128, mask: u128, set_field: bool) -> Option<FlowAction> {
    let Norm::Simple(Key::Reg(reg)) = info.norm else {
        return None;
    };
    FlowAction::load(
        reg,
        u32::try_from(value).ok()?,
        u32::try_from(mask).ok()?,
        set_field,
    )
}

/// `NAME[]`, `NAME[n]` or `NAME[a..b]` as OVS's `mf_format_subfield` prints it.
fn subfield(text: &mut String, h: &OxmHeader, ofs: u16, n_bits: u16) {
    h.subfield_name(text);
    if ofs == 0 && n_bits == h.n_bits() {
        text.push_str("[]");
    } else if n_bits == 1 {
        text.push('[');
        push_dec(text, u64::from(ofs));
        text.push(']');
    } else {
        text.push('[');
        push_dec(text, u64::from(ofs));
        text.push_str("..");
        push_dec(text, (u64::from(ofs) + u64::from(n_bits)).saturating_sub(1));
        text.push(']');
    }
}

fn ofs_nbits(v: u16) -> (u16, u16) {
    (v >> 6, (v & 0x3f) + 1)
}

fn decode_nx(
    subtype: u16,
    mut b: Rd<'_>,
    text: &mut String,
    acts: &mut Vec<FlowAction>,
    depth: usize,
) -> DecodeResult<Sem> {
    match subtype {
        1 | 14 | 44 => {
            let port = b.u16()?;
            let table = if subtype == 1 { 0xff } else { b.u8()? };
            let port32 = if port >= 0xff00 {
                port as u32 | 0xffff_0000
            } else {
                port as u32
            };
            let ct = subtype == 44;
            let in_port = port32 == 0xffff_fff8;
            if !in_port && table == 0xff {
                text.push_str("resubmit:");
                fmt_port(text, port32);
            } else {
                text.push_str("resubmit(");
                if !in_port {
                    fmt_port(text, port32);
                }
                text.push(',');
                if table != 0xff {
                    push_dec(text, table as u64);
                }
                if ct {
                    text.push_str(",ct");
                }
                text.push(')');
            }
            acts.push(FlowAction::Resubmit {
                port: (!in_port).then_some(port32),
                table: (table != 0xff).then_some(table),
            });
            Ok(Sem::Done)
        }
        2 => {
            b.skip(2)?;
            let _ = write!(text, "set_tunnel:{:#x}", b.u32()?);
            Ok(Sem::Other)
        }
        9 => {
            b.skip(6)?;
            let _ = write!(text, "set_tunnel64:{:#x}", b.u64()?);
            Ok(Sem::Other)
        }
        5 => {
            text.push_str("pop_queue");
            Ok(Sem::Other)
        }
        6 => {
            let n_bits = b.u16()?;
            let src_ofs = b.u16()?;
            let dst_ofs = b.u16()?;
            let src = OxmHeader::read(&mut b)?;
            let dst = OxmHeader::read(&mut b)?;
            text.push_str("move:");
            subfield(text, &src, src_ofs, n_bits);
            text.push_str("->");
            subfield(text, &dst, dst_ofs, n_bits);
            Ok(Sem::Other)
        }
        7 => {
            let (ofs, n) = ofs_nbits(b.u16()?);
            let dst = OxmHeader::read(&mut b)?;
            let value = b.u64()?;
            text.push_str("load:");
            c_hex(text, value as u128);
            text.push_str("->");
            subfield(text, &dst, ofs, n);
            let load = dst
                .info()
                .filter(|_| ofs < 32 && n <= 32 - ofs)
                .and_then(|info| {
                    let bits = (1u128 << n) - 1;
                    (u128::from(value) <= bits)
                        .then(|| register_load(info, u128::from(value) << ofs, bits << ofs, false))
                        .flatten()
                });
            Ok(push_load(load, acts))
        }
        33 => {
            // reg_load2: an OXM TLV, rendered as set_field.
            Ok(push_load(set_field(&mut b, text)?, acts))
        }
        8 => {
            text.push_str("note:");
            for (i, x) in b.rest().iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                let _ = write!(text, "{x:02x}");
            }
            Ok(Sem::Other)
        }
        10 => {
            let fields = b.u16()?;
            let basis = b.u16()?;
            b.skip(2)?;
            let alg = b.u16()?;
            let max_link = b.u16()?;
            let arg = b.u32()?;
            b.skip(2)?;
            let (ofs, n) = ofs_nbits(b.u16()?);
            let dst = OxmHeader::read(&mut b)?;
            let _ = write!(
                text,
                "multipath({},{basis},{},{},{arg},",
                hash_fields(fields),
                mp_alg(alg),
                max_link as u32 + 1
            );
            subfield(text, &dst, ofs, n);
            text.push(')');
            Ok(Sem::Other)
        }
        12 | 13 => {
            let alg = b.u16()?;
            let fields = b.u16()?;
            let basis = b.u16()?;
            let slave_type = b.u32()?;
            let n_slaves = b.u16()?;
            let (ofs, n) = ofs_nbits(b.u16()?);
            let dst = OxmHeader::read(&mut b)?;
            b.skip(4)?;
            let alg_s = if alg == 0 { "active_backup" } else { "hrw" };
            // The member type is the NXM header of NXM_OF_IN_PORT (ofport numbers).
            let st = if slave_type == 0x0000_0002 {
                "ofport"
            } else {
                "unknown"
            };
            if subtype == 12 {
                let _ = write!(
                    text,
                    "bundle({},{basis},{alg_s},{st},members:",
                    hash_fields(fields)
                );
            } else {
                let _ = write!(
                    text,
                    "bundle_load({},{basis},{alg_s},{st},",
                    hash_fields(fields)
                );
                subfield(text, &dst, ofs, n);
                text.push_str(",members:");
            }
            for i in 0..n_slaves {
                if i > 0 {
                    text.push(',');
                }
                let _ = write!(text, "{}", b.u16()?);
            }
            text.push(')');
            Ok(Sem::Other)
        }
        15 => {
            let (ofs, n) = ofs_nbits(b.u16()?);
            let src = OxmHeader::read(&mut b)?;
            text.push_str("output:");
            subfield(text, &src, ofs, n);
            Ok(Sem::Other)
        }
        32 => {
            let (ofs, n) = ofs_nbits(b.u16()?);
            let _max_len = b.u16()?;
            let src = OxmHeader::read(&mut b)?;
            text.push_str("output:");
            subfield(text, &src, ofs, n);
            Ok(Sem::Other)
        }
        16 | 45 => {
            learn(&mut b, text, subtype == 45)?;
            Ok(Sem::Other)
        }
        46 => {
            encap(&mut b, text)?;
            Ok(Sem::Other)
        }
        47 => {
            b.skip(2)?;
            let pt = b.u32()?;
            text.push_str("decap(");
            // PT_USE_NEXT_PROTO: the default, printed as `decap()`.
            if pt != 0x0000_fffe {
                let _ = write!(text, "packet_type(ns={},type=", pt >> 16);
                c_hex(text, u128::from(pt & 0xffff));
                text.push(')');
            }
            text.push(')');
            Ok(Sem::Other)
        }
        48 => {
            text.push_str("dec_nsh_ttl");
            Ok(Sem::Other)
        }
        49 => {
            let len = b.u16()?;
            let ofs = b.u16()?;
            let dst = OxmHeader::read(&mut b)?;
            let _ = write!(text, "check_pkt_larger({len})->");
            subfield(text, &dst, ofs, 1);
            Ok(Sem::Other)
        }
        50 => {
            let h = OxmHeader::read(&mut b)?;
            text.push_str("delete_field:");
            field_name(text, &h);
            Ok(Sem::Other)
        }
        17 => {
            text.push_str("exit");
            Ok(Sem::Other)
        }
        18 => {
            text.push_str("dec_ttl");
            Ok(Sem::Other)
        }
        19 => {
            let idle = b.u16()?;
            let hard = b.u16()?;
            text.push_str("fin_timeout(");
            let s = text.len();
            if idle != 0 {
                let _ = write!(text, "idle_timeout={idle},");
            }
            if hard != 0 {
                let _ = write!(text, "hard_timeout={hard},");
            }
            if text.len() > s && text.ends_with(',') {
                text.pop();
            }
            text.push(')');
            Ok(Sem::Other)
        }
        20 => {
            let max_len = b.u16()?;
            let id = b.u16()?;
            let reason = b.u8()?;
            controller(text, acts, max_len, id, reason, None, false, None);
            Ok(Sem::Done)
        }
        37 => {
            b.skip(6)?;
            let mut max_len = 0xffff;
            let mut id = 0;
            let mut reason = 1;
            let mut userdata: Option<&[u8]> = None;
            let mut pause = false;
            let mut meter_id = None;
            while b.len() >= 4 {
                let pt = b.u16()?;
                let pl = b.u16()? as usize;
                if pl < 4 {
                    return Err(DecodeError::Malformed(format!(
                        "controller2 property length {pl}"
                    )));
                }
                let mut p = Rd::new(b.take(pl - 4)?, "controller2 property");
                b.skip((pl.div_ceil(8) * 8 - pl).min(b.len()))?;
                match pt {
                    0 => max_len = p.u16()?,
                    1 => id = p.u16()?,
                    2 => reason = p.u8()?,
                    3 => userdata = Some(p.rest()),
                    4 => pause = true,
                    5 => meter_id = Some(p.u32()?),
                    _ => {}
                }
            }
            // NX_CTLR_NO_METER: no meter.
            let meter_id = meter_id.filter(|m| *m != u32::MAX);
            controller(text, acts, max_len, id, reason, userdata, pause, meter_id);
            Ok(Sem::Done)
        }
        21 => {
            let n = b.u16()?;
            b.skip(4)?;
            text.push_str("dec_ttl(");
            for i in 0..n {
                if i > 0 {
                    text.push(',');
                }
                let _ = write!(text, "{}", b.u16()?);
            }
            text.push(')');
            Ok(Sem::Other)
        }
        22 => {
            b.skip(6)?;
            let v = b.u64()?;
            let m = b.u64()?;
            text.push_str("write_metadata:");
            c_hex(text, v as u128);
            if m != u64::MAX {
                text.push('/');
                c_hex(text, m as u128);
            }
            Ok(Sem::Other)
        }
        27 | 28 => {
            let ofs = b.u16()?;
            let h = OxmHeader::read(&mut b)?;
            let n = b.u16()?;
            text.push_str(if subtype == 27 { "push:" } else { "pop:" });
            subfield(text, &h, ofs, n);
            Ok(Sem::Other)
        }
        29 | 38 | 41 => {
            let prob = b.u16()?;
            let cs = b.u32()?;
            let od = b.u32()?;
            let op = b.u32()?;
            let _ = write!(
                text,
                "sample(probability={prob},collector_set_id={cs},obs_domain_id={od},obs_point_id={op}"
            );
            if subtype != 29 {
                let port = b.u16()?;
                if port != 0xffff {
                    text.push_str(",sampling_port=");
                    fmt_port(text, port as u32);
                }
                if subtype == 41 {
                    match b.u8()? {
                        1 => text.push_str(",ingress"),
                        2 => text.push_str(",egress"),
                        _ => {}
                    }
                }
            }
            text.push(')');
            Ok(Sem::Other)
        }
        34 => {
            let clause = b.u8()?;
            let n = b.u8()?;
            let id = b.u32()?;
            // OVS refuses the same (`OFPERR_NXBAC_BAD_CONJUNCTION`): 2..=64 clauses, the clause
            // index (0-based on the wire) below their number. Checked before `clause + 1`.
            if !(2..=64).contains(&n) || clause >= n {
                return Err(DecodeError::Malformed(format!(
                    "conjunction clause {clause} of {n} clauses"
                )));
            }
            let _ = write!(text, "conjunction({id},{}/{n})", u32::from(clause) + 1);
            acts.push(FlowAction::Conjunction {
                id,
                clause: clause.saturating_add(1),
                n_clauses: n,
            });
            Ok(Sem::Done)
        }
        35 => {
            ct(&mut b, text, acts, depth)?;
            Ok(Sem::Done)
        }
        36 => {
            nat(&mut b, text)?;
            Ok(Sem::Other)
        }
        39 => {
            let port = b.u16()?;
            let max_len = b.u32()?;
            text.push_str("output(port=");
            fmt_port(
                text,
                if port >= 0xff00 {
                    port as u32 | 0xffff_0000
                } else {
                    port as u32
                },
            );
            let _ = write!(text, ",max_len={max_len})");
            Ok(Sem::Other)
        }
        42 => {
            b.skip(6)?;
            text.push_str("clone(");
            let mut inner = Vec::new();
            decode_actions_at(b.rest(), text, &mut inner, depth + 1)?;
            text.push(')');
            acts.extend(
                inner
                    .into_iter()
                    .filter(|a| !matches!(a, FlowAction::Other(_) | FlowAction::Load { .. })),
            );
            Ok(Sem::Other)
        }
        43 => {
            text.push_str("ct_clear");
            Ok(Sem::Other)
        }
        _ => {
            let _ = write!(text, "nx_action(subtype={subtype},");
            hex_bytes(text, b.rest());
            text.push(')');
            Ok(Sem::Other)
        }
    }
}

#[expect(clippy::too_many_arguments, reason = "the options of one action")]
fn controller(
    text: &mut String,
    acts: &mut Vec<FlowAction>,
    max_len: u16,
    id: u16,
    reason: u8,
    userdata: Option<&[u8]>,
    pause: bool,
    meter_id: Option<u32>,
) {
    if reason == 1
        && id == 0
        && userdata.is_none_or(<[u8]>::is_empty)
        && !pause
        && meter_id.is_none()
    {
        let _ = write!(text, "CONTROLLER:{max_len}");
    } else {
        text.push_str("controller(");
        let s = text.len();
        if reason != 1 {
            let r = match reason {
                0 => "no_match",
                2 => "invalid_ttl",
                3 => "action_set",
                4 => "group",
                5 => "packet_out",
                _ => "",
            };
            if r.is_empty() {
                let _ = write!(text, "reason={reason},");
            } else {
                let _ = write!(text, "reason={r},");
            }
        }
        if max_len != 0xffff {
            let _ = write!(text, "max_len={max_len},");
        }
        if id != 0 {
            let _ = write!(text, "id={id},");
        }
        if let Some(u) = userdata.filter(|u| !u.is_empty()) {
            text.push_str("userdata=");
            for (i, x) in u.iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                let _ = write!(text, "{x:02x}");
            }
            text.push(',');
        }
        if pause {
            text.push_str("pause,");
        }
        if let Some(m) = meter_id {
            let _ = write!(text, "meter_id={m},");
        }
        if text.len() > s && text.ends_with(',') {
            text.pop();
        }
        text.push(')');
    }
    acts.push(FlowAction::Reserved("CONTROLLER"));
}

fn hash_fields(f: u16) -> &'static str {
    match f {
        0 => "eth_src",
        1 => "symmetric_l4",
        2 => "symmetric_l3l4",
        3 => "symmetric_l3l4+udp",
        4 => "nw_src",
        5 => "nw_dst",
        6 => "symmetric_l3",
        _ => "unknown",
    }
}

fn mp_alg(a: u16) -> &'static str {
    match a {
        0 => "modulo_n",
        1 => "hash_threshold",
        2 => "hrw",
        3 => "iter_hash",
        _ => "unknown",
    }
}

fn ct(
    b: &mut Rd<'_>,
    text: &mut String,
    acts: &mut Vec<FlowAction>,
    depth: usize,
) -> DecodeResult<()> {
    let flags = b.u16()?;
    let zone_src = b.u32()?;
    let zone = b.u16()?;
    let table = b.u8()?;
    b.skip(3)?;
    let alg = b.u16()?;
    text.push_str("ct(");
    let s = text.len();
    if flags & 1 != 0 {
        text.push_str("commit,");
    }
    if flags & 2 != 0 {
        text.push_str("force,");
    }
    if table != 0xff {
        text.push_str("table=");
        push_dec(text, u64::from(table));
        text.push(',');
    }
    if zone_src != 0 {
        let bytes = zone_src.to_be_bytes();
        let mut hr = Rd::new(&bytes, "ct zone");
        let h = OxmHeader::read(&mut hr)?;
        let (ofs, n) = ofs_nbits(zone);
        text.push_str("zone=");
        subfield(text, &h, ofs, n);
        text.push(',');
    } else if zone != 0 {
        let _ = write!(text, "zone={zone},");
    }
    // Nested actions: a leading NAT is printed outside exec(...).
    let mut nested = Rd::new(b.rest(), "ct nested action");
    let mut exec_start = nested.rest();
    if nested.len() >= 10 {
        let mut peek = nested;
        let ty = peek.u16()?;
        let len = peek.u16()? as usize;
        let exp = peek.u32()?;
        let sub = peek.u16()?;
        if ty == 0xffff && exp == NX_EXPERIMENTER && sub == 36 && len >= 10 {
            let body = nested.take(len)?;
            let mut nb = Rd::new(body.get(10..).unwrap_or_default(), "nat");
            nat(&mut nb, text)?;
            text.push(',');
            exec_start = nested.rest();
        }
    }
    if !exec_start.is_empty() {
        text.push_str("exec(");
        let mut inner = Vec::new();
        decode_actions_at(exec_start, text, &mut inner, depth + 1)?;
        text.push_str("),");
    }
    match alg {
        0 => {}
        21 => text.push_str("alg=ftp,"),
        69 => text.push_str("alg=tftp,"),
        a => {
            let _ = write!(text, "alg={a},");
        }
    }
    if text.len() > s && text.ends_with(',') {
        text.pop();
    }
    text.push(')');
    acts.push(FlowAction::Ct {
        commit: flags & 1 != 0,
        table: (table != 0xff).then_some(table),
    });
    Ok(())
}

fn nat(b: &mut Rd<'_>, text: &mut String) -> DecodeResult<()> {
    b.skip(2)?;
    let flags = b.u16()?;
    let range = b.u16()?;
    text.push_str("nat");
    if flags & 3 == 0 {
        return Ok(());
    }
    text.push('(');
    text.push_str(if flags & 1 != 0 { "src" } else { "dst" });
    let v4min = if range & 1 != 0 { Some(b.u32()?) } else { None };
    let v4max = if range & 2 != 0 { Some(b.u32()?) } else { None };
    let v6min = if range & 4 != 0 {
        Some(be_val(b.take(16)?))
    } else {
        None
    };
    let v6max = if range & 8 != 0 {
        Some(be_val(b.take(16)?))
    } else {
        None
    };
    let pmin = if range & 16 != 0 {
        Some(b.u16()?)
    } else {
        None
    };
    let pmax = if range & 32 != 0 {
        Some(b.u16()?)
    } else {
        None
    };
    let has_port = pmin.is_some_and(|p| p != 0);
    if let Some(min) = v4min {
        text.push('=');
        fmt_ipv4(text, min as u128);
        if let Some(max) = v4max.filter(|m| *m != 0 && *m != min) {
            text.push('-');
            fmt_ipv4(text, max as u128);
        }
    } else if let Some(min) = v6min {
        text.push('=');
        let br = |t: &mut String, a: u128| {
            if has_port {
                t.push('[');
                fmt_ipv6(t, a);
                t.push(']');
            } else {
                fmt_ipv6(t, a);
            }
        };
        br(text, min);
        if let Some(max) = v6max.filter(|m| *m != 0 && *m != min) {
            text.push('-');
            br(text, max);
        }
    }
    if (v4min.is_some() || v6min.is_some())
        && let Some(p) = pmin.filter(|p| *p != 0)
    {
        let _ = write!(text, ":{p}");
        if let Some(q) = pmax.filter(|q| *q != 0 && *q != p) {
            let _ = write!(text, "-{q}");
        }
    }
    text.push(',');
    if flags & 4 != 0 {
        text.push_str("persistent,");
    }
    if flags & 8 != 0 {
        text.push_str("hash,");
    }
    if flags & 16 != 0 {
        text.push_str("random,");
    }
    if text.ends_with(',') {
        text.pop();
    }
    text.push(')');
    Ok(())
}

/// `encap(...)` (`NXAST_ENCAP`): the new packet type and its properties (NSH MD type, TLVs).
fn encap(b: &mut Rd<'_>, text: &mut String) -> DecodeResult<()> {
    b.skip(2)?;
    let pt = b.u32()?;
    text.push_str("encap(");
    match pt {
        0 => text.push_str("ethernet"),
        0x0001_894f => text.push_str("nsh"),
        0x0001_8847 => text.push_str("mpls"),
        0x0001_8848 => text.push_str("mpls_mc"),
        _ => text.push_str("UNKNOWN"),
    }
    let mut first = true;
    while b.len() >= 4 {
        let class = b.u16()?;
        let ty = b.u8()?;
        let len = usize::from(b.u8()?);
        if len < 4 {
            return Err(DecodeError::Malformed(format!(
                "encap property length {len}"
            )));
        }
        let mut p = Rd::new(b.take(len - 4)?, "encap property");
        b.skip((len.div_ceil(8) * 8 - len).min(b.len()))?;
        text.push_str(if first { "(" } else { "," });
        first = false;
        match (class, ty) {
            // OFPPPC_NSH: MD type, TLV.
            (4, 1) => {
                let _ = write!(text, "md_type={}", p.u8()?);
            }
            (4, 2) => {
                let tlv_class = p.u16()?;
                let tlv_type = p.u8()?;
                let tlv_len = p.u8()?;
                let _ = write!(text, "tlv({tlv_class:#06x},{tlv_type},");
                put_hex_bytes(text, p.take(usize::from(tlv_len))?);
                text.push(')');
            }
            _ => {
                let _ = write!(text, "prop(class={class:#x},type={ty},");
                hex_bytes(text, p.rest());
                text.push(')');
            }
        }
    }
    if !first {
        text.push(')');
    }
    text.push(')');
    Ok(())
}

/// OVS's name of a field in `delete_field:` (`mf->name`).
fn field_name(text: &mut String, h: &OxmHeader) {
    if let Some(n) = super::oxm::tun_metadata_index(h.class, h.field) {
        let _ = write!(text, "tun_metadata{n}");
        return;
    }
    match h.info() {
        Some(i) => text.push_str(i.name),
        None => h.subfield_name(text),
    }
}

/// `NXAST_LEARN` or, with `learn2`, `NXAST_LEARN2` (adds `limit` and `result_dst`).
fn learn(b: &mut Rd<'_>, text: &mut String, learn2: bool) -> DecodeResult<()> {
    let idle = b.u16()?;
    let hard = b.u16()?;
    let prio = b.u16()?;
    let cookie = b.u64()?;
    let flags = b.u16()?;
    let table = b.u8()?;
    b.skip(1)?;
    let fin_idle = b.u16()?;
    let fin_hard = b.u16()?;
    let mut limit = 0;
    let mut result_dst = None;
    if learn2 {
        limit = b.u32()?;
        let ofs = b.u16()?;
        b.skip(2)?;
        // NX_LEARN_F_WRITE_RESULT
        if flags & 4 != 0 {
            result_dst = Some((OxmHeader::read(b)?, ofs));
        }
    }
    let _ = write!(text, "learn(table={table}");
    if idle != 0 {
        let _ = write!(text, ",idle_timeout={idle}");
    }
    if hard != 0 {
        let _ = write!(text, ",hard_timeout={hard}");
    }
    if fin_idle != 0 {
        let _ = write!(text, ",fin_idle_timeout={fin_idle}");
    }
    if fin_hard != 0 {
        let _ = write!(text, ",fin_hard_timeout={fin_hard}");
    }
    if prio != 32768 {
        let _ = write!(text, ",priority={prio}");
    }
    if flags & 1 != 0 {
        text.push_str(",send_flow_rem");
    }
    if flags & 2 != 0 {
        text.push_str(",delete_learned");
    }
    if cookie != 0 {
        let _ = write!(text, ",cookie={cookie:#x}");
    }
    if limit != 0 {
        let _ = write!(text, ",limit={limit}");
    }
    if let Some((h, ofs)) = result_dst {
        text.push_str(",result_dst=");
        subfield(text, &h, ofs, 1);
    }
    while b.len() >= 2 {
        let hdr = b.u16()?;
        if hdr == 0 {
            break;
        }
        let n_bits = hdr & 0x3ff;
        let src_imm = hdr & (1 << 13) != 0;
        let dst_type = (hdr >> 11) & 3;
        text.push(',');
        let mut imm: &[u8] = &[];
        let mut src: Option<(OxmHeader, u16)> = None;
        if src_imm {
            imm = b.take(n_bits.div_ceil(16) as usize * 2)?;
        } else {
            let h = OxmHeader::read(b)?;
            src = Some((h, b.u16()?));
        }
        let dst = if dst_type == 0 || dst_type == 1 {
            let h = OxmHeader::read(b)?;
            Some((h, b.u16()?))
        } else {
            None
        };
        match (dst_type, src, dst) {
            (0, None, Some((dh, dofs))) => {
                let info: Option<&FieldInfo> = dh.info();
                match info {
                    Some(i) if dofs == 0 && n_bits == i.n_bits => {
                        text.push_str(i.name);
                        text.push('=');
                        mf_format(text, i, be_val(imm), None);
                    }
                    _ => {
                        subfield(text, &dh, dofs, n_bits);
                        text.push('=');
                        put_hex_bytes(text, imm);
                    }
                }
            }
            (0, Some((sh, sofs)), Some((dh, dofs))) => {
                subfield(text, &dh, dofs, n_bits);
                if sh.class != dh.class
                    || sh.field != dh.field
                    || sh.experimenter != dh.experimenter
                    || sofs != dofs
                {
                    text.push('=');
                    subfield(text, &sh, sofs, n_bits);
                }
            }
            (1, None, Some((dh, dofs))) => {
                text.push_str("load:");
                put_hex_bytes(text, imm);
                text.push_str("->");
                subfield(text, &dh, dofs, n_bits);
            }
            (1, Some((sh, sofs)), Some((dh, dofs))) => {
                text.push_str("load:");
                subfield(text, &sh, sofs, n_bits);
                text.push_str("->");
                subfield(text, &dh, dofs, n_bits);
            }
            (2, Some((sh, sofs)), None) => {
                text.push_str("output:");
                subfield(text, &sh, sofs, n_bits);
            }
            _ => {
                let _ = write!(text, "unknown_learn_spec({hdr:#x})");
            }
        }
    }
    text.push(')');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(ty: u16, body: &[u8]) -> Vec<u8> {
        let mut v = ty.to_be_bytes().to_vec();
        v.extend(((body.len() + 4) as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn nx(sub: u16, body: &[u8]) -> Vec<u8> {
        let mut b = NX_EXPERIMENTER.to_be_bytes().to_vec();
        b.extend(sub.to_be_bytes());
        b.extend_from_slice(body);
        while !(b.len() + 4).is_multiple_of(8) {
            b.push(0);
        }
        act(0xffff, &b)
    }

    fn render(actions: &[u8]) -> (String, Vec<FlowAction>) {
        let mut ins = 4u16.to_be_bytes().to_vec();
        ins.extend(((actions.len() + 8) as u16).to_be_bytes());
        ins.extend([0; 4]);
        ins.extend_from_slice(actions);
        let mut t = String::new();
        let mut a = Vec::new();
        decode_instructions(&ins, &mut t, &mut a).unwrap();
        (t, a)
    }

    #[test]
    fn outputs_and_resubmits() {
        let mut b = act(0, &[0, 0, 0, 5, 0xff, 0xff, 0, 0, 0, 0, 0, 0]);
        b.extend(act(0, &[0xff, 0xff, 0xff, 0xfa, 0, 0, 0, 0, 0, 0, 0, 0]));
        b.extend(nx(14, &[0xff, 0xf8, 60]));
        b.extend(nx(1, &[0, 5]));
        let (t, a) = render(&b);
        assert_eq!(t, "output:5,NORMAL,resubmit(,60),resubmit:5");
        assert_eq!(a[0], FlowAction::Output(5));
        assert_eq!(a[1], FlowAction::Reserved("NORMAL"));
        assert_eq!(
            a[2],
            FlowAction::Resubmit {
                port: None,
                table: Some(60)
            }
        );
    }

    /// `NXAST_REG_LOAD` of `value` into `n` bits at `ofs` of the NXM field `header`.
    fn reg_load(header: u32, ofs: u16, n: u16, value: u64) -> Vec<u8> {
        let mut b = ((ofs << 6) | (n - 1)).to_be_bytes().to_vec();
        b.extend(header.to_be_bytes());
        b.extend(value.to_be_bytes());
        nx(7, &b)
    }

    /// An OXM TLV of a 4-byte field `header`, masked when `mask` is given.
    fn oxm32(header: u32, value: u32, mask: Option<u32>) -> Vec<u8> {
        let mut b = header.to_be_bytes().to_vec();
        b.extend(value.to_be_bytes());
        if let Some(m) = mask {
            b.extend(m.to_be_bytes());
        }
        b
    }

    fn set_field_action(tlv: &[u8]) -> Vec<u8> {
        let mut b = tlv.to_vec();
        while !(b.len() + 4).is_multiple_of(8) {
            b.push(0);
        }
        act(25, &b)
    }

    fn load(reg: u8, value: u32, mask: u32, set_field: bool) -> FlowAction {
        FlowAction::load(reg, value, mask, set_field).unwrap()
    }

    #[test]
    fn register_writes_are_structured_and_print_as_ovs_ofctl_does() {
        const REG5: u32 = 0x0001_0a04;
        const REG5_MASKED: u32 = 0x0001_0b08;
        const REG6: u32 = 0x0001_0c04;
        const VLAN_TCI: u32 = 0x0000_0802;
        let cases: Vec<(Vec<u8>, &str, FlowAction)> = vec![
            (
                reg_load(REG5, 0, 32, 0x11),
                "load:0x11->NXM_NX_REG5[]",
                load(5, 0x11, u32::MAX, false),
            ),
            (
                reg_load(REG5, 0, 16, 0x12),
                "load:0x12->NXM_NX_REG5[0..15]",
                load(5, 0x12, 0xffff, false),
            ),
            (
                reg_load(REG5, 16, 8, 0x3),
                "load:0x3->NXM_NX_REG5[16..23]",
                load(5, 0x3_0000, 0xff_0000, false),
            ),
            (
                reg_load(REG6, 0, 32, 0x13),
                "load:0x13->NXM_NX_REG6[]",
                load(6, 0x13, u32::MAX, false),
            ),
            (
                set_field_action(&oxm32(REG5, 0x12, None)),
                "set_field:0x12->reg5",
                load(5, 0x12, u32::MAX, true),
            ),
            (
                set_field_action(&oxm32(REG5_MASKED, 0x1200, Some(0xff00))),
                "set_field:0x1200/0xff00->reg5",
                load(5, 0x1200, 0xff00, true),
            ),
            (
                nx(33, &oxm32(REG5, 0x14, None)),
                "set_field:0x14->reg5",
                load(5, 0x14, u32::MAX, true),
            ),
        ];
        for (bytes, text, action) in cases {
            let (t, a) = render(&bytes);
            assert_eq!(t, text);
            assert_eq!(a, [action], "{text}");
        }
        // What a structured load cannot say exactly stays text: a value wider than the loaded
        // bits, value bits outside a set-field's mask, a field that is not a register.
        for bytes in [
            reg_load(REG5, 0, 8, 0x1ff),
            set_field_action(&oxm32(REG5_MASKED, 0x1234, Some(0xff00))),
            reg_load(VLAN_TCI, 0, 12, 0x5),
        ] {
            let (t, a) = render(&bytes);
            assert_eq!(a, [FlowAction::Other(t.clone().into())], "{t}");
        }
    }

    fn conjunction(clause: u8, n: u8) -> Vec<u8> {
        nx(34, &[clause, n, 0, 0, 0, 7])
    }

    #[test]
    fn conjunction_clause_out_of_range_is_malformed_not_an_overflow() {
        let (t, a) = render(&conjunction(1, 2));
        assert_eq!(t, "conjunction(7,2/2)");
        assert_eq!(
            a,
            [FlowAction::Conjunction {
                id: 7,
                clause: 2,
                n_clauses: 2
            }]
        );
        // clause 255 used to overflow `clause + 1` (a panic with overflow checks on).
        for (clause, n) in [(255, 255), (255, 64), (2, 2), (0, 1), (0, 65), (0, 0)] {
            let (mut t, mut a) = (String::new(), Vec::new());
            let err = decode_actions(&conjunction(clause, n), &mut t, &mut a).unwrap_err();
            assert!(err.to_string().contains("conjunction clause"), "{err}");
        }
    }

    /// `clone(clone(…(output:1)…))` nested `levels` deep.
    fn nested_clones(levels: usize) -> Vec<u8> {
        let mut b = act(0, &[0, 0, 0, 1, 0xff, 0xff, 0, 0, 0, 0, 0, 0]);
        for _ in 0..levels {
            let mut body = vec![0; 6];
            body.extend(&b);
            b = nx(42, &body);
        }
        b
    }

    #[test]
    fn action_nesting_is_capped() {
        // At the cap it decodes, in a thread with a small stack.
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(|| {
                let (t, a) = render(&nested_clones(MAX_ACTION_NESTING));
                assert_eq!(t.matches("clone(").count(), MAX_ACTION_NESTING);
                assert_eq!(a.first(), Some(&FlowAction::Output(1)));
            })
            .unwrap()
            .join()
            .unwrap();
        // One level more is malformed; so is what a 64 KiB message can hold (~4 000 levels),
        // without recursing into it.
        for levels in [MAX_ACTION_NESTING + 1, 4000] {
            let (mut t, mut a) = (String::new(), Vec::new());
            let err = decode_actions(&nested_clones(levels), &mut t, &mut a).unwrap_err();
            assert!(err.to_string().contains("nested more than"), "{err}");
        }
        // ct(exec(...)) counts as nesting too.
        let mut ct = vec![0u8; 14];
        ct[8] = 0xff; // table: none
        ct.extend(nested_clones(MAX_ACTION_NESTING));
        let (mut t, mut a) = (String::new(), Vec::new());
        let err = decode_actions(&nx(35, &ct), &mut t, &mut a).unwrap_err();
        assert!(err.to_string().contains("nested more than"), "{err}");
    }

    #[test]
    fn empty_is_drop_and_unknown_is_raw() {
        let (t, _) = render(&[]);
        assert_eq!(t, "drop");
        let (t, a) = render(&act(99, &[1, 2, 3, 4]));
        assert_eq!(t, "unknown_action(type=99,0x01020304)");
        assert!(matches!(&a[0], FlowAction::Other(s) if **s == *t));
    }

    #[test]
    fn truncated_action_is_an_error() {
        let mut t = String::new();
        let mut a = Vec::new();
        assert!(decode_actions(&[0, 0, 0, 16, 0, 0], &mut t, &mut a).is_err());
        assert!(decode_actions(&[0, 0, 0, 3, 0, 0, 0, 0], &mut t, &mut a).is_err());
        assert!(decode_instructions(&[0, 4, 0, 200, 0, 0, 0, 0], &mut t, &mut a).is_err());
    }
}
