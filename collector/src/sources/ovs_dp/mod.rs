//! The OVS kernel datapath over generic netlink (`ovs_datapath`, `ovs_vport`, `ovs_flow`).
//!
//! Family ids are resolved through `nlctrl` on every poll, so a module reload (new ids) or a
//! datapath deleted and re-created is picked up on the next tick; a missing family means the
//! `openvswitch` module is not loaded, and the source reports itself down with that reason.
//!
//! Framing comes from `netlink-packet-core`/`netlink-packet-generic`; the OVS payloads
//! (`struct ovs_header`, `OVS_DP_ATTR_*`, `OVS_VPORT_ATTR_*`, `OVS_FLOW_ATTR_*`, `OVS_KEY_ATTR_*`,
//! `OVS_ACTION_ATTR_*`) are decoded here ([`uapi`], [`decode`], [`render`]): no crate covers them.

pub(crate) mod bpf;
pub(crate) mod decode;
pub(crate) mod genl;
pub(crate) mod render;
pub(crate) mod uapi;
pub(crate) mod upcalls;

#[cfg(test)]
mod render_tests;
#[cfg(test)]
mod tests;

use crate::model::datapath::{Datapath, Megaflow};
use crate::sources::{CanRun, SourceDef};
use genl::{GenlSocket, OvsMessage};

/// Source name in `pinflow_source_*`.
pub(crate) const SOURCE: SourceDef = SourceDef {
    name: "ovs_datapath",
    collector: "datapath",
    can_run: |_| CanRun::of(datapaths_once().map(|d| describe(&d))),
};

/// Every datapath, read once (for `pinflow check`).
pub(crate) fn datapaths_once() -> Result<Vec<Datapath>, String> {
    DatapathClient::open()
        .and_then(|mut c| {
            c.resolve()?;
            c.datapaths()
        })
        .map_err(|e| e.to_string())
}

/// `2 datapath(s) ovs-system, ovs-netdev`.
fn describe(dps: &[Datapath]) -> String {
    let names: Vec<&str> = dps.iter().map(|d| d.name.as_str()).collect();
    format!("{} datapath(s) {}", dps.len(), names.join(", "))
        .trim_end()
        .to_string()
}

/// Errors of the datapath source.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OvsDpError {
    /// The netlink socket failed.
    #[error("generic netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel answered with an error.
    #[error("kernel error {errno}: {message}")]
    Kernel {
        /// errno (positive).
        errno: i32,
        /// strerror text.
        message: String,
    },
    /// A reply could not be decoded (truncated or malformed).
    #[error("malformed reply: {0}")]
    Decode(String),
    /// The openvswitch module is not loaded (a generic netlink family is missing).
    #[error("generic netlink family {0} not found (openvswitch kernel module not loaded)")]
    NoFamily(&'static str),
}

/// Resolved family ids of the three OVS families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Families {
    /// `ovs_datapath`.
    pub(crate) datapath: u16,
    /// `ovs_vport`.
    pub(crate) vport: u16,
    /// `ovs_flow`.
    pub(crate) flow: u16,
}

/// A client of the kernel datapath.
#[derive(Debug)]
pub(crate) struct DatapathClient {
    sock: GenlSocket,
    families: Option<Families>,
}

impl DatapathClient {
    /// Opens the generic netlink socket (does not need the module yet).
    pub(crate) fn open() -> Result<Self, OvsDpError> {
        Ok(Self {
            sock: GenlSocket::open()?,
            families: None,
        })
    }

    /// Records every received datagram (for fixtures); see [`DatapathClient::captured`].
    pub(crate) fn capture(&mut self) {
        self.sock.capture = Some(Vec::new());
    }

    /// The datagrams recorded since [`DatapathClient::capture`].
    pub(crate) fn captured(&mut self) -> Vec<Vec<u8>> {
        self.sock.capture.take().unwrap_or_default()
    }

    /// Resolves the three families (again: ids change when the module is reloaded).
    pub(crate) fn resolve(&mut self) -> Result<Families, OvsDpError> {
        let all = self.sock.families()?;
        let id = |name: &'static str| -> Result<u16, OvsDpError> {
            all.iter()
                .find(|(n, _)| n == name)
                .map(|(_, i)| *i)
                .ok_or(OvsDpError::NoFamily(name))
        };
        let f = Families {
            datapath: id(uapi::DATAPATH_FAMILY)?,
            vport: id(uapi::VPORT_FAMILY)?,
            flow: id(uapi::FLOW_FAMILY)?,
        };
        self.families = Some(f);
        Ok(f)
    }

    fn families(&mut self) -> Result<Families, OvsDpError> {
        match self.families {
            Some(f) => Ok(f),
            None => self.resolve(),
        }
    }

    /// Every datapath, as [`datapaths`](Self::datapaths), resolving the family ids again once
    /// when they went stale (the module was reloaded).
    pub(crate) fn datapaths_resolving_again(&mut self) -> Result<Vec<Datapath>, OvsDpError> {
        match self.datapaths() {
            Ok(d) => Ok(d),
            Err(OvsDpError::Kernel { .. } | OvsDpError::NoFamily(_)) => {
                self.forget_families();
                self.datapaths()
            }
            Err(e) => Err(e),
        }
    }

    /// Forgets the resolved family ids: the next call resolves them again.
    pub(crate) fn forget_families(&mut self) {
        self.families = None;
    }

    /// Dumps every datapath with its vports.
    pub(crate) fn datapaths(&mut self) -> Result<Vec<Datapath>, OvsDpError> {
        let f = self.families()?;
        let mut dps = Vec::new();
        let req = OvsMessage {
            cmd: uapi::CMD_GET,
            version: uapi::DATAPATH_VERSION,
            dp_ifindex: 0,
            attrs: Vec::new(),
        };
        self.sock.request(f.datapath, req, true, |m| {
            dps.push(decode::datapath(&m)?);
            Ok(())
        })?;
        for dp in &mut dps {
            let req = OvsMessage {
                cmd: uapi::CMD_GET,
                version: uapi::VPORT_VERSION,
                dp_ifindex: dp.ifindex,
                attrs: Vec::new(),
            };
            let mut vports = Vec::new();
            match self.sock.request(f.vport, req, true, |m| {
                vports.push(decode::vport(&m)?);
                Ok(())
            }) {
                Ok(()) => {}
                // The datapath went away between the two dumps.
                Err(OvsDpError::Kernel { errno, .. }) if errno == libc::ENODEV => {}
                Err(e) => return Err(e),
            }
            vports.sort_by_key(|v| v.port_no);
            dp.vports = vports;
        }
        Ok(dps)
    }

    /// Dumps the megaflows of the datapath with ifindex `dp_ifindex`, calling `each` per flow.
    pub(crate) fn megaflows(
        &mut self,
        dp_ifindex: i32,
        mut each: impl FnMut(Megaflow),
    ) -> Result<(), OvsDpError> {
        let f = self.families()?;
        let req = OvsMessage {
            cmd: uapi::CMD_GET,
            version: uapi::FLOW_VERSION,
            dp_ifindex,
            attrs: Vec::new(),
        };
        self.sock.request(f.flow, req, true, |m| {
            each(decode::megaflow(&m)?);
            Ok(())
        })
    }
}
