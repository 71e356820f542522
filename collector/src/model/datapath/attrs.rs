//! Kinds of a megaflow's key and action attributes (`enum ovs_key_attr`, `enum ovs_action_attr`
//! in the kernel's `include/uapi/linux/openvswitch.h`): what a [`RawAttr`](super::RawAttr)'s `kind` means.
#![allow(dead_code)] // The kernel's enums in full: not every value is read, all are listed.

/// `enum ovs_key_attr`.
pub(crate) mod key {
    /// Nested key inside an 802.1Q encapsulation.
    pub(crate) const ENCAP: u16 = 1;
    /// skb priority (u32).
    pub(crate) const PRIORITY: u16 = 2;
    /// Input port (u32).
    pub(crate) const IN_PORT: u16 = 3;
    /// `struct ovs_key_ethernet`.
    pub(crate) const ETHERNET: u16 = 4;
    /// VLAN TCI (be16).
    pub(crate) const VLAN: u16 = 5;
    /// Ethertype (be16).
    pub(crate) const ETHERTYPE: u16 = 6;
    /// `struct ovs_key_ipv4`.
    pub(crate) const IPV4: u16 = 7;
    /// `struct ovs_key_ipv6`.
    pub(crate) const IPV6: u16 = 8;
    /// `struct ovs_key_tcp`.
    pub(crate) const TCP: u16 = 9;
    /// `struct ovs_key_udp`.
    pub(crate) const UDP: u16 = 10;
    /// `struct ovs_key_icmp`.
    pub(crate) const ICMP: u16 = 11;
    /// `struct ovs_key_icmpv6`.
    pub(crate) const ICMPV6: u16 = 12;
    /// `struct ovs_key_arp`.
    pub(crate) const ARP: u16 = 13;
    /// `struct ovs_key_nd`.
    pub(crate) const ND: u16 = 14;
    /// skb mark (u32).
    pub(crate) const SKB_MARK: u16 = 15;
    /// Nested tunnel key.
    pub(crate) const TUNNEL: u16 = 16;
    /// `struct ovs_key_sctp`.
    pub(crate) const SCTP: u16 = 17;
    /// TCP flags (be16).
    pub(crate) const TCP_FLAGS: u16 = 18;
    /// Datapath hash (u32).
    pub(crate) const DP_HASH: u16 = 19;
    /// Recirculation id (u32).
    pub(crate) const RECIRC_ID: u16 = 20;
    /// MPLS label stack entries.
    pub(crate) const MPLS: u16 = 21;
    /// Conntrack state (u32).
    pub(crate) const CT_STATE: u16 = 22;
    /// Conntrack zone (u16).
    pub(crate) const CT_ZONE: u16 = 23;
    /// Conntrack mark (u32).
    pub(crate) const CT_MARK: u16 = 24;
    /// Conntrack labels (16 bytes).
    pub(crate) const CT_LABELS: u16 = 25;
    /// Conntrack original tuple, IPv4.
    pub(crate) const CT_ORIG_TUPLE_IPV4: u16 = 26;
    /// Conntrack original tuple, IPv6.
    pub(crate) const CT_ORIG_TUPLE_IPV6: u16 = 27;
    /// NSH.
    pub(crate) const NSH: u16 = 28;
    /// Packet type (be32).
    pub(crate) const PACKET_TYPE: u16 = 29;
}

/// `enum ovs_action_attr`.
pub(crate) mod action {
    /// Output to a port (u32).
    pub(crate) const OUTPUT: u16 = 1;
    /// Send to userspace (nested).
    pub(crate) const USERSPACE: u16 = 2;
    /// Set a field (nested key attribute).
    pub(crate) const SET: u16 = 3;
    /// Push a VLAN header.
    pub(crate) const PUSH_VLAN: u16 = 4;
    /// Pop the VLAN header.
    pub(crate) const POP_VLAN: u16 = 5;
    /// Sample (nested).
    pub(crate) const SAMPLE: u16 = 6;
    /// Recirculate (u32 id).
    pub(crate) const RECIRC: u16 = 7;
    /// Compute a hash.
    pub(crate) const HASH: u16 = 8;
    /// Push MPLS.
    pub(crate) const PUSH_MPLS: u16 = 9;
    /// Pop MPLS.
    pub(crate) const POP_MPLS: u16 = 10;
    /// Set a field under a mask (nested key attribute: value then mask).
    pub(crate) const SET_MASKED: u16 = 11;
    /// Conntrack (nested).
    pub(crate) const CT: u16 = 12;
    /// Truncate (u32 max_len).
    pub(crate) const TRUNC: u16 = 13;
    /// Push Ethernet.
    pub(crate) const PUSH_ETH: u16 = 14;
    /// Pop Ethernet.
    pub(crate) const POP_ETH: u16 = 15;
    /// Clear conntrack state.
    pub(crate) const CT_CLEAR: u16 = 16;
    /// Meter (u32).
    pub(crate) const METER: u16 = 19;
    /// Clone (nested).
    pub(crate) const CLONE: u16 = 20;
    /// Check packet length (nested).
    pub(crate) const CHECK_PKT_LEN: u16 = 21;
    /// Decrement TTL (nested).
    pub(crate) const DEC_TTL: u16 = 23;
    /// Explicit drop with a reason (u32; newer kernels).
    pub(crate) const DROP: u16 = 24;
}
