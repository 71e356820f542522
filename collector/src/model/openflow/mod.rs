//! The OpenFlow codec and the flows it yields: [`FlowEntry`] (match, actions, wire form) and the
//! pure encoders/decoders that turn OF1.3 wire bytes into flows and flows into `ovs-ofctl` text.
//!
//! A leaf: it imports nothing of pinflow outside `model` (the socket, session and mirror code in
//! `sources::openflow` imports it, as do the detectors and pipelines that read flows). Its files
//! use each other freely.
//!
//! The codec is hand-written: no maintained Rust crate decodes OF1.3 together with the Nicira/ONF
//! extensions OVS actually emits (NXM/ONF match fields such as registers, `ct_state`, `conj_id`,
//! and actions such as `learn`, `ct`, `conjunction`, `resubmit`, `load`/`move`), and pinflow must
//! render flows byte-for-byte as `ovs-ofctl` does. All decoding is bounds-checked and returns
//! [`DecodeError`]; unknown fields and actions are carried raw, never fatal.
//!
//! Layout: [`flow`] the flow types, [`bytes`] the bounds-checked reader, [`oxm`] match fields,
//! [`actions`] instructions and actions, [`render`] flow entries and the `ovs-ofctl` line.

pub(crate) mod actions;
pub(crate) mod bytes;
pub(crate) mod flow;
pub(crate) mod oxm;
pub(crate) mod render;

pub(crate) use flow::{
    FieldMatch, FlowAction, FlowEntry, FlowKey, Instructions, Matches, width_mask,
};
pub(crate) use render::FlowStats;
