//! Frame parsing, in two depths:
//!
//! - [`parse`], the slow path: Ethernet, ARP, IPv4 (etherparse), IPv6 with
//!   its extension headers (here: a fragment's fragmentable part is data,
//!   not headers), then TCP, UDP, ICMPv4 and ICMPv6 (etherparse) and SCTP
//!   (its common header and first chunk type, here). ICMP errors are
//!   parsed down to the flow of the packet they quote. Any inconsistency is
//!   an error: the caller drops and counts the frame, never panics.
//! - [`fast_key`]: the flow-cache key of an ordinary unfragmented TCP or UDP
//!   packet, read at fixed offsets. Anything unusual returns `None` and takes
//!   the slow path.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::err::{LenError, ipv4, ipv6, packet::SliceError, tcp as tcp_err};
use etherparse::{
    ArpPacketSlice, EtherType, Icmpv4Slice, Icmpv6Slice, IpNumber, Ipv4HeaderSlice,
    Ipv6HeaderSlice, NetSlice, SlicedPacket, TcpHeaderSlice, UdpHeaderSlice,
};

use crate::wire::{self, be16, eth, ethertype, icmp, ip_proto, ipv4 as v4, ipv6 as v6, sctp, tcp};

pub type Mac = [u8; 6];

/// A MAC as text: `02:76:73:77:00:01`.
pub fn mac_text(m: Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub const BROADCAST: Mac = [0xff; 6];

/// The flow a packet belongs to, as conntrack and policy see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// Ports; for ICMP echo, the identifier in both.
    pub sport: u16,
    pub dport: u16,
}

/// The transport part of an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Sctp {
        sport: u16,
        dport: u16,
        chunk: u8,
    },
    /// ICMP or ICMPv6 echo request (`request`) or reply.
    Echo {
        request: bool,
        id: u16,
    },
    /// An ICMP error quoting a packet of `inner` (as that packet was sent).
    IcmpError {
        inner: FlowTuple,
    },
    /// IPv6 neighbour discovery: `ty` 133 to 137.
    Ndp {
        ty: u8,
    },
    /// Other ICMP messages.
    OtherIcmp {
        ty: u8,
    },
    /// A non-first fragment: no transport header.
    Fragment,
    /// Another IP protocol.
    Other,
}

/// Fragmentation of an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frag {
    pub id: u32,
    pub first: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPacket {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// TTL or hop limit.
    pub ttl: u8,
    pub frag: Option<Frag>,
    pub l4: L4,
}

impl IpPacket {
    /// The packet's flow, if it has one (ports or an echo identifier).
    pub fn tuple(&self) -> FlowTuple {
        let (sport, dport) = match self.l4 {
            L4::Tcp { sport, dport, .. }
            | L4::Udp { sport, dport }
            | L4::Sctp { sport, dport, .. } => (sport, dport),
            // Both directions of an echo carry the identifier.
            L4::Echo { id, .. } => (id, id),
            _ => (0, 0),
        };
        FlowTuple {
            src: self.src,
            dst: self.dst,
            proto: self.proto,
            sport,
            dport,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub request: bool,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Arp(Arp),
    Ip(IpPacket),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub dst_mac: Mac,
    pub src_mac: Mac,
    pub payload: Payload,
}

/// Why a frame was not understood: broken, or not something the switch
/// carries. The datapath counts the two apart (`Malformed`, `Unsupported`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed frame: {0}")]
    Malformed(#[from] Malformed),
    #[error("unsupported frame: {0}")]
    Unsupported(#[from] Unsupported),
}

/// A broken frame: truncated, inconsistent lengths, bad versions; each
/// variant names the header whose reading failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// etherparse's slicing of the whole frame: Ethernet, ARP, IPv4, and
    /// the transport header's length.
    #[error("slicing the frame's headers: {0}")]
    Headers(SliceError),
    // (The slicing checks the transport header's length first, so the
    // next four are what reading it again could still find.)
    #[error("reading the IPv6 header: {0}")]
    Ipv6(ipv6::HeaderSliceError),
    #[error("an IPv6 payload of {len} bytes where the header says {need}")]
    Ipv6Length { len: usize, need: usize },
    #[error("reading IPv6 extension header {header}: {len} bytes of the {need} needed")]
    Ipv6Extension { header: u8, len: usize, need: usize },
    #[error("an IPv6 Hop-by-Hop Options header other than first")]
    Ipv6HopByHopNotFirst,
    #[error("an IPv6 Fragment header in a fragment's fragmentable part")]
    Ipv6NestedFragment,
    #[error("reading the TCP header: {0}")]
    Tcp(tcp_err::HeaderSliceError),
    #[error("reading the UDP header: {0}")]
    Udp(LenError),
    #[error("reading an SCTP packet of {len} bytes (its common header and a chunk header need 16)")]
    Sctp { len: usize },
    #[error("reading the ICMP header: {0}")]
    Icmp(LenError),
    #[error("reading the ICMPv6 header: {0}")]
    Icmpv6(LenError),
    #[error("reading the IPv4 header an ICMP error quotes: {0}")]
    QuotedIpv4(ipv4::HeaderSliceError),
    #[error("reading the IPv6 header an ICMP error quotes: {0}")]
    QuotedIpv6(ipv6::HeaderSliceError),
    #[error("reading the transport header an ICMP error quotes: {len} bytes of the 8 needed")]
    QuotedTransport { len: usize },
}

/// A well-formed frame the switch does not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    #[error("VLAN or MACsec tagged frame")]
    Tagged,
    #[error("ARP for other than Ethernet/IPv4")]
    ArpNotEthernetIpv4,
    #[error("ethertype {0:#06x}")]
    Ethertype(u16),
}

fn malformed(e: Malformed) -> ParseError {
    ParseError::Malformed(e)
}

fn mac(b: &[u8]) -> Mac {
    let mut m = [0; 6];
    m.copy_from_slice(&b[..6]);
    m
}

/// Parses a whole frame (slow path).
pub fn parse(frame: &[u8]) -> Result<Parsed, ParseError> {
    // IPv6's extension headers are walked here, not by etherparse: it reads
    // on past a Fragment header, into what is the fragment's data.
    if eth::ethertype(frame) == Some(ethertype::IPV6) {
        return Ok(Parsed {
            dst_mac: mac(&frame[eth::DST]),
            src_mac: mac(&frame[eth::SRC]),
            payload: Payload::Ip(parse_ipv6(&frame[eth::HLEN..])?),
        });
    }
    let sliced =
        SlicedPacket::from_ethernet(frame).map_err(|e| malformed(Malformed::Headers(e)))?;
    if !sliced.link_exts.is_empty() {
        return Err(Unsupported::Tagged.into());
    }
    // (etherparse has checked that the Ethernet header is there)
    let (dst_mac, src_mac) = (mac(&frame[eth::DST]), mac(&frame[eth::SRC]));
    let payload = match sliced.net {
        Some(NetSlice::Arp(arp)) => Payload::Arp(parse_arp(&arp)?),
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            let offset = h.fragments_offset().value();
            let frag = (h.more_fragments() || offset != 0).then_some(Frag {
                id: h.identification() as u32,
                first: offset == 0,
            });
            let proto = h.protocol().0;
            let l4 = transport(proto, ip.payload().payload, frag, false)?;
            Payload::Ip(IpPacket {
                src: IpAddr::V4(h.source_addr()),
                dst: IpAddr::V4(h.destination_addr()),
                proto,
                ttl: h.ttl(),
                frag,
                l4,
            })
        }
        // (taken above: the frame's EtherType is IPv6's)
        Some(NetSlice::Ipv6(_)) => Payload::Ip(parse_ipv6(&frame[eth::HLEN..])?),
        None => {
            return Err(Unsupported::Ethertype(be16(frame, eth::ETHERTYPE)).into());
        }
    };
    Ok(Parsed {
        dst_mac,
        src_mac,
        payload,
    })
}

/// An IPv6 packet (from its header on): the extension-header chain walked
/// as a receiver does (RFC 8200 section 4.5). The first Fragment header
/// that fragments (more fragments, or an offset) is the packet's: what
/// follows it is the fragmentable part. A first fragment is judged by the
/// upper-layer header found in it; in a later fragment nothing after the
/// Fragment header is a header. An atomic fragment (offset 0, no more) is
/// a whole packet and read on, as a receiver does.
fn parse_ipv6(packet: &[u8]) -> Result<IpPacket, ParseError> {
    use wire::ipv6_ext as x;
    let h = Ipv6HeaderSlice::from_slice(packet).map_err(|e| malformed(Malformed::Ipv6(e)))?;
    let after = &packet[v6::HLEN..];
    // (a length of 0, a jumbogram's, is read as the rest of the frame)
    let len = match h.payload_length() as usize {
        0 => after.len(),
        n => n,
    };
    let mut rest = after.get(..len).ok_or(Malformed::Ipv6Length {
        len: after.len(),
        need: len,
    })?;
    let mut next = h.next_header().0;
    let mut frag: Option<Frag> = None;
    let mut first_header = true;
    loop {
        let header = next;
        let short = |need: usize| Malformed::Ipv6Extension {
            header,
            len: rest.len(),
            need,
        };
        match header {
            x::HOP_BY_HOP if !first_header => {
                return Err(Malformed::Ipv6HopByHopNotFirst.into());
            }
            x::HOP_BY_HOP | x::ROUTING | x::DST_OPTS | x::AUTH => {
                let b = rest.get(..x::MIN_HLEN).ok_or(short(x::MIN_HLEN))?;
                let hlen = if header == x::AUTH {
                    (b[x::HDR_LEN] as usize + 2) * 4
                } else {
                    (b[x::HDR_LEN] as usize + 1) * 8
                };
                if rest.len() < hlen {
                    return Err(short(hlen).into());
                }
                next = b[x::NXT_HDR];
                rest = &rest[hlen..];
            }
            x::FRAGMENT => {
                if frag.is_some() {
                    // a Fragment header in a first fragment's fragmentable
                    // part: fragments of fragments, nothing to carry
                    return Err(Malformed::Ipv6NestedFragment.into());
                }
                let b = rest.get(..x::FRAG_HLEN).ok_or(short(x::FRAG_HLEN))?;
                let off_mf = be16(b, x::FRAG_OFF);
                let offset = off_mf >> x::FRAG_OFF_SHIFT;
                let id = u32::from_be_bytes(b[x::FRAG_IDENT].try_into().expect("4 bytes"));
                next = b[x::NXT_HDR];
                rest = &rest[x::FRAG_HLEN..];
                if off_mf & x::FRAG_MF != 0 || offset != 0 {
                    frag = Some(Frag {
                        id,
                        first: offset == 0,
                    });
                    if offset != 0 {
                        break; // the rest is data
                    }
                }
            }
            _ => break,
        }
        first_header = false;
    }
    let l4 = transport(next, rest, frag, true)?;
    Ok(IpPacket {
        src: IpAddr::V6(h.source_addr()),
        dst: IpAddr::V6(h.destination_addr()),
        proto: next,
        ttl: h.hop_limit(),
        frag,
        l4,
    })
}

fn parse_arp(arp: &ArpPacketSlice<'_>) -> Result<Arp, ParseError> {
    if arp.hw_addr_type() != etherparse::ArpHardwareId::ETHERNET
        || arp.proto_addr_type() != EtherType::IPV4
        || arp.hw_addr_size() != 6
        || arp.proto_addr_size() != 4
    {
        return Err(Unsupported::ArpNotEthernetIpv4.into());
    }
    let op = arp.operation();
    let ip = |b: &[u8]| Ipv4Addr::from(<[u8; 4]>::try_from(b).expect("size checked: 4"));
    Ok(Arp {
        request: op == etherparse::ArpOperation::REQUEST,
        sender_mac: mac(arp.sender_hw_addr()),
        sender_ip: ip(arp.sender_protocol_addr()),
        target_ip: ip(arp.target_protocol_addr()),
    })
}

fn transport(proto: u8, payload: &[u8], frag: Option<Frag>, v6: bool) -> Result<L4, ParseError> {
    if frag.is_some_and(|f| !f.first) {
        return Ok(L4::Fragment);
    }
    Ok(match IpNumber(proto) {
        IpNumber::TCP => {
            let h =
                TcpHeaderSlice::from_slice(payload).map_err(|e| malformed(Malformed::Tcp(e)))?;
            let s = h.slice();
            L4::Tcp {
                sport: h.source_port(),
                dport: h.destination_port(),
                flags: s[tcp::FLAGS],
            }
        }
        IpNumber::UDP => {
            let h =
                UdpHeaderSlice::from_slice(payload).map_err(|e| malformed(Malformed::Udp(e)))?;
            L4::Udp {
                sport: h.source_port(),
                dport: h.destination_port(),
            }
        }
        IpNumber::SCTP => {
            // Common header (12 bytes) and at least one chunk header (4).
            if payload.len() < sctp::MIN_LEN {
                let len = payload.len();
                return Err(malformed(Malformed::Sctp { len }));
            }
            L4::Sctp {
                sport: be16(payload, sctp::SRC_PORT),
                dport: be16(payload, sctp::DST_PORT),
                chunk: payload[sctp::CHUNK_TYPE],
            }
        }
        IpNumber::ICMP if !v6 => {
            let msg =
                Icmpv4Slice::from_slice(payload).map_err(|e| malformed(Malformed::Icmp(e)))?;
            match msg.type_u8() {
                icmp::V4_ECHO_REQUEST | icmp::V4_ECHO_REPLY => L4::Echo {
                    request: msg.type_u8() == icmp::V4_ECHO_REQUEST,
                    id: be16(msg.slice(), icmp::IDENT),
                },
                icmp::V4_DST_UNREACHABLE | icmp::V4_TIME_EXCEEDED | icmp::V4_PARAM_PROBLEM => {
                    L4::IcmpError {
                        inner: quoted(msg.payload(), false)?,
                    }
                }
                ty => L4::OtherIcmp { ty },
            }
        }
        IpNumber::IPV6_ICMP if v6 => {
            let msg =
                Icmpv6Slice::from_slice(payload).map_err(|e| malformed(Malformed::Icmpv6(e)))?;
            match msg.type_u8() {
                icmp::V6_ECHO_REQUEST | icmp::V6_ECHO_REPLY => L4::Echo {
                    request: msg.type_u8() == icmp::V6_ECHO_REQUEST,
                    id: be16(msg.slice(), icmp::IDENT),
                },
                ty if icmp::V6_ERRORS.contains(&ty) => L4::IcmpError {
                    inner: quoted(msg.payload(), true)?,
                },
                ty if icmp::V6_NDP.contains(&ty) => L4::Ndp { ty },
                ty => L4::OtherIcmp { ty },
            }
        }
        _ => L4::Other,
    })
}

/// The flow of the packet quoted by an ICMP error (its IP header and at
/// least 8 bytes of transport header).
fn quoted(q: &[u8], v6: bool) -> Result<FlowTuple, ParseError> {
    let (src, dst, proto, rest) = if v6 {
        let h = Ipv6HeaderSlice::from_slice(q).map_err(|e| malformed(Malformed::QuotedIpv6(e)))?;
        (
            IpAddr::V6(h.source_addr()),
            IpAddr::V6(h.destination_addr()),
            h.next_header().0,
            &q[v6::HLEN..],
        )
    } else {
        let h = Ipv4HeaderSlice::from_slice(q).map_err(|e| malformed(Malformed::QuotedIpv4(e)))?;
        let hl = h.slice().len();
        (
            IpAddr::V4(h.source_addr()),
            IpAddr::V4(h.destination_addr()),
            h.protocol().0,
            &q[hl..],
        )
    };
    // TCP's, UDP's and SCTP's ports and an echo's identifier all lie in
    // the first 8 bytes
    if rest.len() < icmp::HLEN {
        let len = rest.len();
        return Err(malformed(Malformed::QuotedTransport { len }));
    }
    let (sport, dport) = match proto {
        ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP => {
            (be16(rest, tcp::SRC_PORT), be16(rest, tcp::DST_PORT))
        }
        // the quoted echo's identifier
        ip_proto::ICMP | ip_proto::ICMPV6 => (be16(rest, icmp::IDENT), be16(rest, icmp::IDENT)),
        _ => (0, 0),
    };
    Ok(FlowTuple {
        src,
        dst,
        proto,
        sport,
        dport,
    })
}

// ----- the fast path's key ---------------------------------------------------

/// The exact-match key of the flow cache: the port a frame came in on and
/// its addresses and ports. IPv4 addresses sit in the low 32 bits. Packed to
/// 8-byte alignment, 40 bytes, so that key and value share a cache line.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, packed(8))]
pub struct FlowKey {
    pub src: u128,
    pub dst: u128,
    pub sport: u16,
    pub dport: u16,
    pub in_port: u16,
    pub proto: u8,
    pub v6: bool,
}

impl FlowKey {
    /// The small fields in one word.
    #[inline(always)]
    fn meta(&self) -> u64 {
        self.sport as u64
            | (self.dport as u64) << 16
            | (self.in_port as u64) << 32
            | (self.proto as u64) << 48
            | (self.v6 as u64) << 56
    }

    pub fn from_tuple(in_port: u16, t: &FlowTuple) -> FlowKey {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        };
        FlowKey {
            src: bits(t.src),
            dst: bits(t.dst),
            sport: t.sport,
            dport: t.dport,
            in_port,
            proto: t.proto,
            v6: t.src.is_ipv6(),
        }
    }
}

// Compared as three words, not field by field: this runs on every hit.
impl PartialEq for FlowKey {
    #[inline(always)]
    fn eq(&self, o: &FlowKey) -> bool {
        self.src == o.src && self.dst == o.dst && self.meta() == o.meta()
    }
}

impl Eq for FlowKey {}

impl std::hash::Hash for FlowKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (self.src, self.dst, self.meta()).hash(h)
    }
}

/// The flow-cache key of a frame from `in_port` whose source MAC is the
/// port's `mac` (else `None`: the slow path judges it). See [`cache_key`].
#[inline(always)]
pub fn fast_key(frame: &[u8], in_port: u16, mac: Mac) -> Option<FlowKey> {
    let eth: &[u8; eth::HLEN] = frame.first_chunk()?;
    if eth[eth::SRC] != mac {
        return None;
    }
    cache_key(frame, in_port)
}

/// The bytes of a TCP or UDP header `cache_key` reads from (the ports, at
/// the same offsets in both, within the first 8).
const PORTS_LEN: usize = wire::udp::HLEN;

/// The key of an unfragmented TCP (without SYN, FIN or RST) or UDP packet
/// with a plain IP header and a whole TCP or UDP header, or `None`. Reads
/// fixed offsets only, through fixed-size arrays, so that there are few
/// bounds checks.
#[inline(always)]
pub fn cache_key(frame: &[u8], in_port: u16) -> Option<FlowKey> {
    // The IP header, and where TCP's or UDP's begins.
    const V6_END: usize = eth::HLEN + v6::HLEN;
    const V4_END: usize = eth::HLEN + v4::MIN_HLEN;
    let (proto, l4, src, dst, v6) = match frame.first_chunk::<V6_END>() {
        Some(f) if f[eth::ETHERTYPE] == ethertype::IPV6_BYTES => {
            let ip = f.last_chunk::<{ v6::HLEN }>()?;
            let payload = be16(ip, v6::LENGTH) as usize;
            if ip[v6::VER_TC_FLOW.start] >> 4 != 6 || payload + v6::HLEN > frame.len() - eth::HLEN {
                return None;
            }
            let src = u128::from_be_bytes(*ip[v6::SRC_ADDR].first_chunk()?);
            let dst = u128::from_be_bytes(*ip[v6::DST_ADDR].first_chunk()?);
            (ip[v6::NXT_HDR], &frame[V6_END..], src, dst, true)
        }
        _ => {
            let f = frame.first_chunk::<V4_END>()?;
            if f[eth::ETHERTYPE] != ethertype::IPV4_BYTES {
                return None;
            }
            let ip = f.last_chunk::<{ v4::MIN_HLEN }>()?;
            // version 4, IHL 5, no MF and offset 0, total length fits the frame
            let total = be16(ip, v4::LENGTH) as usize;
            let [flags_off_high, off_low] = [ip[v4::FLG_OFF.start], ip[v4::FLG_OFF.start + 1]];
            if ip[v4::VER_IHL] != v4::VER_IHL_PLAIN
                || (flags_off_high & v4::MF_OFF_HIGH_BYTE) | off_low != 0
                || total > frame.len() - eth::HLEN
            {
                return None;
            }
            let src = u32::from_be_bytes(*ip[v4::SRC_ADDR].first_chunk()?) as u128;
            let dst = u32::from_be_bytes(*ip[v4::DST_ADDR].first_chunk()?) as u128;
            (ip[v4::PROTOCOL], &frame[V4_END..], src, dst, false)
        }
    };
    let l4h = match proto {
        ip_proto::TCP => {
            let h = l4.first_chunk::<{ tcp::MIN_HLEN }>()?;
            if h[tcp::FLAGS] & (tcp::FLG_SYN | tcp::FLG_FIN | tcp::FLG_RST) != 0 {
                return None;
            }
            h.first_chunk::<{ PORTS_LEN }>()?
        }
        ip_proto::UDP => l4.first_chunk::<{ PORTS_LEN }>()?,
        _ => return None,
    };
    Some(FlowKey {
        src,
        dst,
        sport: be16(l4h, tcp::SRC_PORT),
        dport: be16(l4h, tcp::DST_PORT),
        in_port,
        proto,
        v6,
    })
}

#[cfg(test)]
mod tests {
    //! Byte fixtures: real frames written out in hex (checksums correct),
    //! each parsed and checked field by field; the fast path's key read
    //! from the same bytes; and the one frame the switch builds from these
    //! fields (an ARP reply) checked byte for byte.

    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    const A: Mac = [0x02, 0, 0, 0, 0, 1];
    const GW: Mac = [0x02, 0x76, 0x73, 0x77, 0x00, 0x01];
    const A4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

    // Who has 10.0.0.2? Tell 10.0.0.1 (02:00:00:00:00:01), broadcast.
    const ARP_REQUEST: &[u8] = &[
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x0a, 0x00,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x02,
    ];
    // 10.0.0.1:40000 > 10.0.0.2:80 SYN, seq 0x01020304, MSS 1460, TTL 64, DF.
    const TCP_SYN: &[u8] = &[
        0x02, 0x76, 0x73, 0x77, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x2c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x0a, 0x84, 0x0a, 0x00, 0x00, 0x01,
        0x0a, 0x00, 0x00, 0x02, 0x9c, 0x40, 0x00, 0x50, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00,
        0x00, 0x60, 0x02, 0xfa, 0xf0, 0xe8, 0x9c, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
    ];
    // [fd00::1]:5353 > [fd00::2]:53 UDP, 4 bytes, hop limit 64.
    const IPV6_UDP: &[u8] = &[
        0x02, 0x76, 0x73, 0x77, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x86, 0xdd, 0x60,
        0x00, 0x00, 0x00, 0x00, 0x0c, 0x11, 0x40, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x14, 0xe9, 0x00, 0x35, 0x00, 0x0c,
        0x53, 0x16, 0xde, 0xad, 0xbe, 0xef,
    ];
    // fd00::1 > fd00::2: hop-by-hop options (PadN), then a fragment header
    // (id 0x12345678, offset 0, more fragments), then UDP 5353 > 53.
    const IPV6_HBH_FRAGMENT: &[u8] = &[
        0x02, 0x76, 0x73, 0x77, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x86, 0xdd, 0x60,
        0x00, 0x00, 0x00, 0x00, 0x20, 0x00, 0x40, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x2c, 0x00, 0x01, 0x04, 0x00, 0x00,
        0x00, 0x00, 0x11, 0x00, 0x00, 0x01, 0x12, 0x34, 0x56, 0x78, 0x14, 0xe9, 0x00, 0x35, 0x00,
        0x10, 0xe0, 0x97, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
    ];
    // fd00::1 > fd00::2: hop-by-hop options (PadN), a fragment header (id
    // 0xcafef00d, offset 0, more fragments), then the fragmentable part:
    // destination options (PadN), UDP 5353 > 53, 4 bytes.
    const IPV6_HBH_FRAGMENT_DSTOPTS: &[u8] = &[
        0x02, 0x76, 0x73, 0x77, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x86, 0xdd, 0x60,
        0x00, 0x00, 0x00, 0x00, 0x24, 0x00, 0x40, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x2c, 0x00, 0x01, 0x04, 0x00, 0x00,
        0x00, 0x00, 0x3c, 0x00, 0x00, 0x01, 0xca, 0xfe, 0xf0, 0x0d, 0x11, 0x00, 0x01, 0x04, 0x00,
        0x00, 0x00, 0x00, 0x14, 0xe9, 0x00, 0x35, 0x00, 0x14, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef,
    ];
    // 10.0.0.1 > 10.0.0.2 ICMP echo request, id 0x1234, seq 1, TTL 63.
    const ICMP_ECHO: &[u8] = &[
        0x02, 0x76, 0x73, 0x77, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x20, 0x1c, 0x46, 0x40, 0x00, 0x3f, 0x01, 0x0b, 0x95, 0x0a, 0x00, 0x00, 0x01,
        0x0a, 0x00, 0x00, 0x02, 0x08, 0x00, 0x06, 0xfa, 0x12, 0x34, 0x00, 0x01, 0x70, 0x69, 0x6e,
        0x67,
    ];
    // An IPv4 header claiming IHL 4 (16 bytes: less than the minimum).
    const BAD_IHL: &[u8] = &[
        0x02, 0x76, 0x73, 0x77, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x44,
        0x00, 0x00, 0x1c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0x0b, 0x89, 0x0a, 0x00, 0x00, 0x01,
        0x0a, 0x00, 0x00, 0x02, 0x00, 0x01, 0x00, 0x02, 0x00, 0x08, 0x00, 0x00,
    ];
    // IPv4 whose TCP header stops after 10 of its 20 bytes.
    const TRUNCATED_TCP: &[u8] = &[
        0x02, 0x76, 0x73, 0x77, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x1e, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x0a, 0x92, 0x0a, 0x00, 0x00, 0x01,
        0x0a, 0x00, 0x00, 0x02, 0x9c, 0x40, 0x00, 0x50, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
    ];
    // 10.0.0.2 is at 02:76:73:77:00:01, to 10.0.0.1 (02:00:00:00:00:01).
    const ARP_REPLY: &[u8] = &[
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x76, 0x73, 0x77, 0x00, 0x01, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, 0x02, 0x76, 0x73, 0x77, 0x00, 0x01, 0x0a, 0x00,
        0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x01,
    ];

    fn ip(frame: &[u8]) -> IpPacket {
        match parse(frame).expect("a valid frame").payload {
            Payload::Ip(ip) => ip,
            other => panic!("not IP: {other:?}"),
        }
    }

    #[test]
    fn an_arp_request_deconstructs() {
        assert_eq!(
            parse(ARP_REQUEST),
            Ok(Parsed {
                dst_mac: BROADCAST,
                src_mac: A,
                payload: Payload::Arp(Arp {
                    request: true,
                    sender_mac: A,
                    sender_ip: A4,
                    target_ip: B4,
                }),
            })
        );
        assert_eq!(cache_key(ARP_REQUEST, 1), None, "not for the flow cache");
    }

    #[test]
    fn an_arp_reply_constructs_and_deconstructs() {
        assert_eq!(crate::reply::arp_reply(GW, B4, A, A4), ARP_REPLY);
        let Payload::Arp(arp) = parse(ARP_REPLY).unwrap().payload else {
            panic!("not ARP")
        };
        assert_eq!(
            arp,
            Arp {
                request: false,
                sender_mac: GW,
                sender_ip: B4,
                target_ip: A4,
            }
        );
    }

    #[test]
    fn a_tcp_syn_deconstructs_and_stays_off_the_fast_path() {
        let p = parse(TCP_SYN).unwrap();
        assert_eq!((p.dst_mac, p.src_mac), (GW, A));
        let ip = ip(TCP_SYN);
        assert_eq!(
            ip,
            IpPacket {
                src: IpAddr::V4(A4),
                dst: IpAddr::V4(B4),
                proto: ip_proto::TCP,
                ttl: 64,
                frag: None,
                l4: L4::Tcp {
                    sport: 40000,
                    dport: 80,
                    flags: tcp::FLG_SYN,
                },
            }
        );
        assert_eq!(fast_key(TCP_SYN, 1, A), None, "a SYN takes the slow path");
        // the same segment as a plain ACK: its key, at fixed offsets
        let mut ack = TCP_SYN.to_vec();
        ack[eth::HLEN + v4::MIN_HLEN + tcp::FLAGS] = tcp::FLG_ACK;
        let key = FlowKey::from_tuple(1, &ip.tuple());
        assert_eq!(fast_key(&ack, 1, A), Some(key));
        assert_eq!(fast_key(&ack, 1, GW), None, "another sender's MAC");
    }

    #[test]
    fn an_ipv6_udp_datagram_deconstructs_and_has_a_key() {
        let ip = ip(IPV6_UDP);
        assert_eq!(
            ip,
            IpPacket {
                src: IpAddr::V6(A6),
                dst: IpAddr::V6(B6),
                proto: ip_proto::UDP,
                ttl: 64,
                frag: None,
                l4: L4::Udp {
                    sport: 5353,
                    dport: 53
                },
            }
        );
        let key = cache_key(IPV6_UDP, 7).expect("a plain UDP datagram");
        assert_eq!(key, FlowKey::from_tuple(7, &ip.tuple()));
        assert!(key.v6);
    }

    #[test]
    fn ipv6_extension_headers_are_walked_to_the_fragment_and_transport() {
        let ip = ip(IPV6_HBH_FRAGMENT);
        assert_eq!(
            ip,
            IpPacket {
                src: IpAddr::V6(A6),
                dst: IpAddr::V6(B6),
                proto: ip_proto::UDP,
                ttl: 64,
                frag: Some(Frag {
                    id: 0x1234_5678,
                    first: true,
                }),
                l4: L4::Udp {
                    sport: 5353,
                    dport: 53
                },
            }
        );
        assert_eq!(
            cache_key(IPV6_HBH_FRAGMENT, 1),
            None,
            "extension headers: slow path"
        );
        // a later fragment (offset 8 bytes) has no transport header to read
        let mut later = IPV6_HBH_FRAGMENT.to_vec();
        let frag_hdr = eth::HLEN + v6::HLEN + 8;
        later[frag_hdr + 2..frag_hdr + 4].copy_from_slice(&[0x00, 0x09]);
        let ip = self::ip(&later);
        assert_eq!(
            ip.frag,
            Some(Frag {
                id: 0x1234_5678,
                first: false
            })
        );
        assert_eq!(ip.l4, L4::Fragment);
    }

    #[test]
    fn an_ipv6_fragment_is_the_first_fragment_header_and_its_fragmentable_part_is_data() {
        let frag = Some(Frag {
            id: 0xcafe_f00d,
            first: true,
        });
        // the first fragment: judged by the UDP header behind the
        // destination options
        assert_eq!(
            ip(IPV6_HBH_FRAGMENT_DSTOPTS),
            IpPacket {
                src: IpAddr::V6(A6),
                dst: IpAddr::V6(B6),
                proto: ip_proto::UDP,
                ttl: 64,
                frag,
                l4: L4::Udp {
                    sport: 5353,
                    dport: 53
                },
            }
        );
        let frag_hdr = eth::HLEN + v6::HLEN + 8;
        let part = frag_hdr + 8;
        // a later fragment (offset 16 bytes): what follows the Fragment
        // header is data, whatever it looks like: bytes that would not
        // parse as destination options, or a decoy Fragment header claiming
        // offset 0 followed by a TCP SYN
        let mut later = IPV6_HBH_FRAGMENT_DSTOPTS.to_vec();
        later[frag_hdr + 2..frag_hdr + 4].copy_from_slice(&[0x00, 0x10]);
        later[part..].fill(0xff);
        let mut decoy = later.clone();
        decoy[frag_hdr] = 44;
        decoy[part..part + 8].copy_from_slice(&[6, 0, 0, 1, 0, 0, 0, 5]);
        decoy[part + 8..part + 12].copy_from_slice(&[0x9c, 0x40, 0x00, 0x16]);
        decoy[part + 12..].fill(0);
        for (f, proto) in [(&later, 60), (&decoy, 44)] {
            let ip = ip(f);
            assert_eq!(
                ip.frag,
                Some(Frag {
                    id: 0xcafe_f00d,
                    first: false
                })
            );
            assert_eq!((ip.proto, ip.l4), (proto, L4::Fragment));
        }
        // a Fragment header inside a first fragment's fragmentable part
        let mut nested = IPV6_HBH_FRAGMENT_DSTOPTS.to_vec();
        nested[part] = 44;
        assert_eq!(
            parse(&nested),
            Err(ParseError::Malformed(Malformed::Ipv6NestedFragment))
        );
        // destination options longer than the packet
        let mut long = IPV6_HBH_FRAGMENT_DSTOPTS.to_vec();
        long[part + 1] = 9;
        assert!(matches!(
            parse(&long),
            Err(ParseError::Malformed(Malformed::Ipv6Extension {
                header: 60,
                need: 80,
                ..
            }))
        ));
    }

    #[test]
    fn an_icmp_echo_request_deconstructs() {
        let ip = ip(ICMP_ECHO);
        assert_eq!(
            ip,
            IpPacket {
                src: IpAddr::V4(A4),
                dst: IpAddr::V4(B4),
                proto: ip_proto::ICMP,
                ttl: 63,
                frag: None,
                l4: L4::Echo {
                    request: true,
                    id: 0x1234
                },
            }
        );
        // both directions of an echo carry its identifier
        let t = ip.tuple();
        assert_eq!((t.sport, t.dport), (0x1234, 0x1234));
        assert_eq!(cache_key(ICMP_ECHO, 1), None);
    }

    #[test]
    fn a_runt_frame_is_malformed() {
        let runt = &TCP_SYN[..10];
        assert!(matches!(
            parse(runt),
            Err(ParseError::Malformed(Malformed::Headers(_)))
        ));
        assert_eq!(fast_key(runt, 1, A), None);
        assert_eq!(fast_key(&[], 1, A), None);
    }

    #[test]
    fn a_bad_ihl_is_malformed() {
        assert!(matches!(
            parse(BAD_IHL),
            Err(ParseError::Malformed(Malformed::Headers(_)))
        ));
        assert_eq!(cache_key(BAD_IHL, 1), None);
    }

    #[test]
    fn a_truncated_tcp_header_is_malformed_and_says_so() {
        let e = parse(TRUNCATED_TCP).unwrap_err();
        let ParseError::Malformed(Malformed::Headers(SliceError::Len(len))) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(len.layer, etherparse::err::Layer::TcpHeader);
        assert_eq!((len.required_len, len.len), (20, 10));
        assert!(
            e.to_string()
                .starts_with("malformed frame: slicing the frame's headers"),
            "{e}"
        );
        assert_eq!(cache_key(TRUNCATED_TCP, 1), None);
    }

    #[test]
    fn tagged_frames_and_other_ethertypes_are_unsupported() {
        // the SYN behind an 802.1Q tag
        let mut tagged = TCP_SYN[..eth::ETHERTYPE.start].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&TCP_SYN[eth::ETHERTYPE.start..]);
        assert_eq!(
            parse(&tagged),
            Err(ParseError::Unsupported(Unsupported::Tagged))
        );
        // LLDP
        let mut lldp = TCP_SYN.to_vec();
        lldp[eth::ETHERTYPE].copy_from_slice(&[0x88, 0xcc]);
        assert_eq!(
            parse(&lldp),
            Err(ParseError::Unsupported(Unsupported::Ethertype(0x88cc)))
        );
    }
}
