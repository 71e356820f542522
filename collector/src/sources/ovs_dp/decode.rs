//! Decoders of `ovs_datapath`, `ovs_vport` and `ovs_flow` replies into the model.
//!
//! Unknown attribute types (a newer kernel) are skipped; truncated attributes and short
//! fixed-size structs are errors, never panics.

use super::OvsDpError;
use super::genl::{OvsMessage, attr_list};
use super::uapi::{dp_attr, flow_attr, vport_attr, vport_type_name};
use crate::model::datapath::{Datapath, Megaflow, RawAttr, Vport, VportStats};

/// Reads the `i`-th native-endian u64 of `b`.
fn u64_at(b: &[u8], i: usize) -> Result<u64, OvsDpError> {
    let s = b
        .get(i * 8..i * 8 + 8)
        .ok_or_else(|| OvsDpError::Decode(format!("struct of {} bytes too short", b.len())))?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_ne_bytes(a))
}

/// A native-endian u32 attribute value.
pub(crate) fn u32_of(b: &[u8]) -> Result<u32, OvsDpError> {
    let s = b
        .get(..4)
        .ok_or_else(|| OvsDpError::Decode(format!("u32 attribute of {} bytes", b.len())))?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Ok(u32::from_ne_bytes(a))
}

/// A NUL-terminated string attribute.
fn string_of(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(b.get(..end).unwrap_or(b)).into_owned()
}

/// Decodes one `OVS_DP_CMD_NEW` reply.
pub(crate) fn datapath(m: &OvsMessage) -> Result<Datapath, OvsDpError> {
    let mut dp = Datapath {
        ifindex: m.dp_ifindex,
        ..Default::default()
    };
    for a in attr_list(&m.attrs)? {
        match a.kind {
            dp_attr::NAME => dp.name = string_of(a.value),
            dp_attr::STATS => {
                dp.hit = u64_at(a.value, 0)?;
                dp.missed = u64_at(a.value, 1)?;
                dp.lost = u64_at(a.value, 2)?;
                dp.flows = u64_at(a.value, 3)?;
            }
            dp_attr::MEGAFLOW_STATS => {
                dp.mask_hit = u64_at(a.value, 0)?;
                dp.masks = u32_of(a.value.get(8..).unwrap_or(&[]))?;
                dp.cache_hit = u64_at(a.value, 2)?;
            }
            _ => {}
        }
    }
    if dp.name.is_empty() {
        return Err(OvsDpError::Decode("datapath without a name".into()));
    }
    Ok(dp)
}

/// Decodes one `OVS_VPORT_CMD_NEW` reply.
pub(crate) fn vport(m: &OvsMessage) -> Result<Vport, OvsDpError> {
    let mut v = Vport::default();
    let mut have_port = false;
    for a in attr_list(&m.attrs)? {
        match a.kind {
            vport_attr::PORT_NO => {
                v.port_no = u32_of(a.value)?;
                have_port = true;
            }
            vport_attr::TYPE => v.kind = vport_type_name(u32_of(a.value)?).to_string(),
            vport_attr::NAME => v.name = string_of(a.value),
            vport_attr::IFINDEX => v.ifindex = Some(u32_of(a.value)?),
            vport_attr::STATS => {
                let s = a.value;
                v.stats = VportStats {
                    rx_packets: u64_at(s, 0)?,
                    tx_packets: u64_at(s, 1)?,
                    rx_bytes: u64_at(s, 2)?,
                    tx_bytes: u64_at(s, 3)?,
                    rx_errors: u64_at(s, 4)?,
                    tx_errors: u64_at(s, 5)?,
                    rx_dropped: u64_at(s, 6)?,
                    tx_dropped: u64_at(s, 7)?,
                };
            }
            vport_attr::UPCALL_STATS => {
                let (mut ok, mut fail) = (0, 0);
                for u in attr_list(a.value)? {
                    match u.kind {
                        vport_attr::UPCALL_SUCCESS => ok = u64_at(u.value, 0)?,
                        vport_attr::UPCALL_FAIL => fail = u64_at(u.value, 0)?,
                        _ => {}
                    }
                }
                v.upcalls = Some((ok, fail));
            }
            _ => {}
        }
    }
    if !have_port {
        return Err(OvsDpError::Decode("vport without a port number".into()));
    }
    Ok(v)
}

fn raw_list(b: &[u8]) -> Result<Vec<RawAttr>, OvsDpError> {
    Ok(attr_list(b)?
        .into_iter()
        .map(|a| RawAttr {
            kind: a.kind,
            value: a.value.to_vec(),
        })
        .collect())
}

/// Decodes one `OVS_FLOW_CMD_NEW` reply (a megaflow).
pub(crate) fn megaflow(m: &OvsMessage) -> Result<Megaflow, OvsDpError> {
    let mut f = Megaflow {
        dp_ifindex: m.dp_ifindex,
        ..Default::default()
    };
    for a in attr_list(&m.attrs)? {
        match a.kind {
            flow_attr::KEY => f.key = raw_list(a.value)?,
            flow_attr::MASK => f.mask = raw_list(a.value)?,
            flow_attr::ACTIONS => f.actions = raw_list(a.value)?,
            flow_attr::STATS => {
                f.packets = u64_at(a.value, 0)?;
                f.bytes = u64_at(a.value, 1)?;
            }
            flow_attr::USED => f.used_ms = Some(u64_at(a.value, 0)?),
            flow_attr::TCP_FLAGS => f.tcp_flags = a.value.first().copied().unwrap_or(0),
            flow_attr::UFID => f.ufid = Some(a.value.to_vec()),
            _ => {}
        }
    }
    Ok(f)
}
