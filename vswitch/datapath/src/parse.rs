//! Frame parsing, in two depths:
//!
//! - [`parse`], the slow path: Ethernet, ARP, IPv4, IPv6 with its extension
//!   headers (etherparse), then TCP, UDP, ICMPv4 and ICMPv6 (etherparse) and
//!   SCTP (its common header and first chunk type, here). ICMP errors are
//!   parsed down to the flow of the packet they quote. Any inconsistency is
//!   an error: the caller drops and counts the frame, never panics.
//! - [`fast_key`]: the flow-cache key of an ordinary unfragmented TCP or UDP
//!   packet, read at fixed offsets. Anything unusual returns `None` and takes
//!   the slow path.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::err::{LenError, ipv4, ipv6, packet::SliceError, tcp as tcp_err};
use etherparse::{
    ArpPacketSlice, EtherType, Icmpv4Slice, Icmpv6Slice, IpNumber, Ipv4HeaderSlice,
    Ipv6ExtensionSlice, Ipv6HeaderSlice, NetSlice, SlicedPacket, TcpHeaderSlice, UdpHeaderSlice,
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
    #[error("reading the Ethernet, ARP or IP headers: {0}")]
    Headers(SliceError),
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
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            let mut frag = None;
            for ext in ip.extensions().clone().into_iter() {
                if let Ipv6ExtensionSlice::Fragment(f) = ext {
                    let offset = f.fragment_offset().value();
                    if f.more_fragments() || offset != 0 {
                        frag = Some(Frag {
                            id: f.identification(),
                            first: offset == 0,
                        });
                    }
                }
            }
            let proto = ip.payload().ip_number.0;
            let l4 = transport(proto, ip.payload().payload, frag, true)?;
            Payload::Ip(IpPacket {
                src: IpAddr::V6(h.source_addr()),
                dst: IpAddr::V6(h.destination_addr()),
                proto,
                ttl: h.hop_limit(),
                frag,
                l4,
            })
        }
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
