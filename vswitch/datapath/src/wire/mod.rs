//! Wire formats: where every field the datapath reads or writes sits, the
//! numbers that name protocols and flags, the Internet checksum and the
//! virtio-net header, in one place.
//!
//! # The contract
//!
//! The modules below are offsets, not views: `eth::SRC` is the range of
//! the source MAC within an Ethernet header, `ipv4::TTL` the TTL's byte
//! within an IPv4 header, and so on (smoltcp's `mod field`). Indexing a
//! buffer with them is only as safe as the length check before it, so the
//! rule is: **whoever indexes has checked the length first**, in one of
//! three ways, all in the datapath already:
//!
//! - the slow path: [`crate::parse::parse`] accepted the frame (etherparse,
//!   or its own walk of IPv6's extension headers, checked every header
//!   length it reports), or the frame is at least
//!   [`eth::HLEN`] long (the slow path checks that before anything);
//! - the fast path: [`crate::parse::cache_key`] reads through
//!   `first_chunk::<N>()`, which proves the length once for all the
//!   offsets below `N`;
//! - the rest (segment, coalesce, reply, overlay) uses `get(..)` or an
//!   explicit `len()` comparison against the `*HLEN` constants, and returns
//!   `None` or an error, never panics, on a short frame.
//!
//! Offsets inside a header are relative to that header's start; add
//! [`eth::HLEN`] (and the IP header's length) to get a frame offset.
//! Multi-byte fields are big-endian, except the virtio-net header's.

pub mod checksum;
pub mod vnet;

pub use vnet::VnetHdr;

/// Reads the big-endian 16-bit field at `r` (a two-byte range) of `b`.
#[inline(always)]
pub fn be16(b: &[u8], r: core::ops::Range<usize>) -> u16 {
    u16::from_be_bytes([b[r.start], b[r.start + 1]])
}

/// Ethernet II (no VLAN tag: tagged frames are not carried).
pub mod eth {
    use core::ops::Range;

    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const HLEN: usize = 14;

    /// A frame's EtherType (`None` if the frame is shorter than that).
    #[inline(always)]
    pub fn ethertype(frame: &[u8]) -> Option<u16> {
        let b: &[u8; 2] = frame.get(ETHERTYPE)?.try_into().ok()?;
        Some(u16::from_be_bytes(*b))
    }
}

/// EtherType values, as numbers and as the bytes on the wire.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86dd;
    pub const IPV4_BYTES: [u8; 2] = IPV4.to_be_bytes();
    pub const IPV6_BYTES: [u8; 2] = IPV6.to_be_bytes();
}

/// IP protocol numbers (IPv4's protocol, IPv6's next header).
pub mod ip_proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// IPv4 (RFC 791).
pub mod ipv4 {
    use core::ops::Range;

    /// Version (high nibble) and header length in 32-bit words (low).
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    /// Flags and fragment offset: its first byte holds DF, MF and the
    /// offset's high bits.
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
    /// Both addresses, as the pseudo-header sums them.
    pub const ADDRS: Range<usize> = 12..20;
    pub const MIN_HLEN: usize = 20;

    /// `VER_IHL` of a header without options.
    pub const VER_IHL_PLAIN: u8 = 0x45;
    /// In `FLG_OFF`.
    pub const FLG_RF: u16 = 0x8000;
    pub const FLG_DF: u16 = 0x4000;
    pub const FLG_MF: u16 = 0x2000;
    pub const OFF_MASK: u16 = 0x1fff;
    /// DF within the first byte of `FLG_OFF`.
    pub const DF_BYTE: u8 = 0x40;
    /// MF and the offset's high bits within the first byte of `FLG_OFF`.
    pub const MF_OFF_HIGH_BYTE: u8 = 0x3f;
}

/// IPv6 (RFC 8200), the fixed header.
pub mod ipv6 {
    use core::ops::Range;

    /// Version, traffic class and flow label.
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;
    /// Both addresses, as the pseudo-header sums them.
    pub const ADDRS: Range<usize> = 8..40;
    pub const HLEN: usize = 40;
}

/// IPv6 extension headers (RFC 8200, RFC 4302): the chain between the
/// IPv6 header and the upper-layer header.
pub mod ipv6_ext {
    use core::ops::Range;

    /// Next-header values naming extension headers.
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTH: u8 = 51;
    pub const DST_OPTS: u8 = 60;

    /// Every extension header starts with its next header; all but the
    /// Fragment header then give their length.
    pub const NXT_HDR: usize = 0;
    /// Hop-by-Hop, Routing, Destination Options: in 8-byte units, not
    /// counting the first 8; Authentication: in 4-byte units, not counting
    /// the first 8.
    pub const HDR_LEN: usize = 1;
    /// The bytes before the length is known.
    pub const MIN_HLEN: usize = 2;

    /// Fragment header: offset (in 8-byte units, the high 13 bits) and
    /// more-fragments (the low bit).
    pub const FRAG_OFF: Range<usize> = 2..4;
    pub const FRAG_IDENT: Range<usize> = 4..8;
    pub const FRAG_HLEN: usize = 8;
    pub const FRAG_MF: u16 = 0x0001;
    pub const FRAG_OFF_SHIFT: u32 = 3;
}

/// TCP (RFC 9293).
pub mod tcp {
    use core::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    /// Data offset (header length in 32-bit words) in the high nibble.
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WIN_SIZE: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
    pub const MIN_HLEN: usize = 20;

    /// Flag bits of the `FLAGS` byte.
    pub const FLG_FIN: u8 = 0x01;
    pub const FLG_SYN: u8 = 0x02;
    pub const FLG_RST: u8 = 0x04;
    pub const FLG_PSH: u8 = 0x08;
    pub const FLG_ACK: u8 = 0x10;
    pub const FLG_CWR: u8 = 0x80;
}

/// UDP (RFC 768).
pub mod udp {
    use core::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
    pub const HLEN: usize = 8;
}

/// SCTP (RFC 9260): the common header and the first chunk's type.
pub mod sctp {
    use core::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const CHUNK_TYPE: usize = 12;
    /// The common header (12 bytes) and one chunk header (4).
    pub const MIN_LEN: usize = 16;

    /// Chunk types the conntrack cares about.
    pub const INIT: u8 = 1;
    pub const INIT_ACK: u8 = 2;
    pub const ABORT: u8 = 6;
    pub const SHUTDOWN_COMPLETE: u8 = 14;
}

/// ICMP (RFC 792) and ICMPv6 (RFC 4443): the common 8-byte header.
pub mod icmp {
    use core::ops::Range;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    /// An echo's identifier; the first 16 bits of "rest of header".
    pub const IDENT: Range<usize> = 4..6;
    /// The next-hop MTU of "fragmentation needed" (its low 16 bits in
    /// ICMPv6's "packet too big").
    pub const MTU: Range<usize> = 6..8;
    pub const HLEN: usize = 8;

    /// ICMPv4 types.
    pub const V4_ECHO_REPLY: u8 = 0;
    pub const V4_DST_UNREACHABLE: u8 = 3;
    pub const V4_ECHO_REQUEST: u8 = 8;
    pub const V4_TIME_EXCEEDED: u8 = 11;
    pub const V4_PARAM_PROBLEM: u8 = 12;

    /// ICMPv6 types: errors are 1 to 4, neighbour discovery 133 to 137.
    pub const V6_ERRORS: core::ops::RangeInclusive<u8> = 1..=4;
    pub const V6_ECHO_REQUEST: u8 = 128;
    pub const V6_ECHO_REPLY: u8 = 129;
    pub const V6_NDP: core::ops::RangeInclusive<u8> = 133..=137;
    pub const V6_NEIGHBOR_SOLICIT: u8 = 135;
    /// A neighbour solicitation's target address, after the 8-byte header.
    pub const NS_TARGET: Range<usize> = 8..24;
}

/// ARP for IPv4 over Ethernet (RFC 826).
pub mod arp {
    use core::ops::Range;

    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
    pub const LEN: usize = 28;
}

/// VXLAN (RFC 7348).
pub mod vxlan {
    use core::ops::Range;

    pub const FLAGS: usize = 0;
    /// The 24-bit VNI.
    pub const VNI: Range<usize> = 4..7;
    pub const HLEN: usize = 8;
    /// The I flag: the VNI is valid.
    pub const FLG_I: u8 = 0x08;
    /// The IANA port.
    pub const PORT: u16 = 4789;

    /// The low 24 bits of `vni`, as they sit in [`VNI`].
    pub fn vni_bytes(vni: u32) -> [u8; 3] {
        let [_, a, b, c] = vni.to_be_bytes();
        [a, b, c]
    }

    /// The VNI of the bytes at [`VNI`].
    pub fn vni_from(b: [u8; 3]) -> u32 {
        let [a, b, c] = b;
        u32::from_be_bytes([0, a, b, c])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_what_they_name() {
        // an Ethernet header carrying IPv6
        let f = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
        assert_eq!(f[eth::DST], [2, 0, 0, 0, 0, 2]);
        assert_eq!(f[eth::SRC], [2, 0, 0, 0, 0, 1]);
        assert_eq!(be16(&f, eth::ETHERTYPE), ethertype::IPV6);
        assert_eq!(eth::ethertype(&f), Some(ethertype::IPV6));
        assert_eq!(eth::ethertype(&f[..13]), None);
        assert_eq!(f[eth::ETHERTYPE], ethertype::IPV6_BYTES);
    }

    #[test]
    fn vni_bytes_round_trip_and_drop_the_high_byte() {
        assert_eq!(vxlan::vni_bytes(0xff12_3456), [0x12, 0x34, 0x56]);
        assert_eq!(vxlan::vni_from([0x12, 0x34, 0x56]), 0x12_3456);
    }

    #[test]
    fn a_virtio_net_header_round_trips_little_endian() {
        // NEEDS_CSUM, TCPv4, hdr_len 54, gso_size 1448, csum at 34 + 16
        let bytes = [1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0];
        let h = VnetHdr::parse(&bytes).unwrap();
        assert_eq!(
            h,
            VnetHdr {
                flags: vnet::VIRTIO_NET_HDR_F_NEEDS_CSUM,
                gso_type: vnet::VIRTIO_NET_HDR_GSO_TCPV4,
                hdr_len: 54,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
            }
        );
        let mut out = [0xff; VnetHdr::LEN];
        h.write(&mut out);
        assert_eq!(out, bytes);
        assert_eq!(VnetHdr::parse(&bytes[..9]), None);
    }
}
