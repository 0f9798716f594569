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

use etherparse::{
    ArpPacketSlice, EtherType, Icmpv4Slice, Icmpv6Slice, IpNumber, Ipv4HeaderSlice,
    Ipv6ExtensionSlice, Ipv6HeaderSlice, NetSlice, SlicedPacket, TcpHeaderSlice, UdpHeaderSlice,
};

pub type Mac = [u8; 6];

/// A MAC as text: `02:76:73:77:00:01`.
pub fn mac_text(m: Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub const ETH_HLEN: usize = 14;
pub const BROADCAST: Mac = [0xff; 6];

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// SCTP chunk types the conntrack cares about.
pub const SCTP_INIT: u8 = 1;
pub const SCTP_INIT_ACK: u8 = 2;
pub const SCTP_ABORT: u8 = 6;
pub const SCTP_SHUTDOWN_COMPLETE: u8 = 14;

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

/// Why a frame was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Broken: truncated, inconsistent lengths, bad versions.
    Malformed(String),
    /// Well-formed but not something the switch carries (VLAN tags, other
    /// ethertypes).
    Unsupported(String),
}

fn malformed(e: impl std::fmt::Display) -> ParseError {
    ParseError::Malformed(e.to_string())
}

fn mac(b: &[u8]) -> Mac {
    let mut m = [0; 6];
    m.copy_from_slice(&b[..6]);
    m
}

/// Parses a whole frame (slow path).
pub fn parse(frame: &[u8]) -> Result<Parsed, ParseError> {
    let sliced = SlicedPacket::from_ethernet(frame).map_err(malformed)?;
    if !sliced.link_exts.is_empty() {
        return Err(ParseError::Unsupported(
            "VLAN or MACsec tagged frame".into(),
        ));
    }
    let (dst_mac, src_mac) = (mac(&frame[0..6]), mac(&frame[6..12]));
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
            let et = u16::from_be_bytes([frame[12], frame[13]]);
            return Err(ParseError::Unsupported(format!("ethertype {et:#06x}")));
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
        return Err(ParseError::Unsupported(
            "ARP for other than Ethernet/IPv4".into(),
        ));
    }
    let op = arp.operation();
    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
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
            let h = TcpHeaderSlice::from_slice(payload).map_err(malformed)?;
            let s = h.slice();
            L4::Tcp {
                sport: h.source_port(),
                dport: h.destination_port(),
                flags: s[13],
            }
        }
        IpNumber::UDP => {
            let h = UdpHeaderSlice::from_slice(payload).map_err(malformed)?;
            L4::Udp {
                sport: h.source_port(),
                dport: h.destination_port(),
            }
        }
        IpNumber::SCTP => {
            // Common header (12 bytes) and at least one chunk header (4).
            if payload.len() < 16 {
                return Err(malformed(format!("SCTP packet of {} bytes", payload.len())));
            }
            L4::Sctp {
                sport: u16::from_be_bytes([payload[0], payload[1]]),
                dport: u16::from_be_bytes([payload[2], payload[3]]),
                chunk: payload[12],
            }
        }
        IpNumber::ICMP if !v6 => {
            let icmp = Icmpv4Slice::from_slice(payload).map_err(malformed)?;
            let b = icmp.bytes5to8();
            match icmp.type_u8() {
                8 | 0 => L4::Echo {
                    request: icmp.type_u8() == 8,
                    id: u16::from_be_bytes([b[0], b[1]]),
                },
                3 | 11 | 12 => L4::IcmpError {
                    inner: quoted(icmp.payload(), false)?,
                },
                ty => L4::OtherIcmp { ty },
            }
        }
        IpNumber::IPV6_ICMP if v6 => {
            let icmp = Icmpv6Slice::from_slice(payload).map_err(malformed)?;
            let b = icmp.bytes5to8();
            match icmp.type_u8() {
                128 | 129 => L4::Echo {
                    request: icmp.type_u8() == 128,
                    id: u16::from_be_bytes([b[0], b[1]]),
                },
                1..=4 => L4::IcmpError {
                    inner: quoted(icmp.payload(), true)?,
                },
                ty @ 133..=137 => L4::Ndp { ty },
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
        let h = Ipv6HeaderSlice::from_slice(q).map_err(malformed)?;
        (
            IpAddr::V6(h.source_addr()),
            IpAddr::V6(h.destination_addr()),
            h.next_header().0,
            &q[40..],
        )
    } else {
        let h = Ipv4HeaderSlice::from_slice(q).map_err(malformed)?;
        let hl = h.slice().len();
        (
            IpAddr::V4(h.source_addr()),
            IpAddr::V4(h.destination_addr()),
            h.protocol().0,
            &q[hl..],
        )
    };
    if rest.len() < 8 {
        return Err(malformed(
            "ICMP error quotes less than 8 bytes of transport header",
        ));
    }
    let port = |i: usize| u16::from_be_bytes([rest[i], rest[i + 1]]);
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => (port(0), port(2)),
        PROTO_ICMP | PROTO_ICMPV6 => (port(4), port(4)), // the quoted echo's identifier
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
    let eth: &[u8; ETH_HLEN] = frame.first_chunk()?;
    if eth[6..12] != mac {
        return None;
    }
    cache_key(frame, in_port)
}

/// The key of an unfragmented TCP (without SYN, FIN or RST) or UDP packet
/// with a plain IP header and a whole TCP or UDP header, or `None`. Reads
/// fixed offsets only, through fixed-size arrays, so that there are few
/// bounds checks.
#[inline(always)]
pub fn cache_key(frame: &[u8], in_port: u16) -> Option<FlowKey> {
    // The IP header, and where TCP's or UDP's begins.
    let (proto, l4, src, dst, v6) = match frame.first_chunk::<{ ETH_HLEN + 40 }>() {
        Some(f) if f[12..14] == [0x86, 0xdd] => {
            let ip = f.last_chunk::<40>()?;
            let payload = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            if ip[0] >> 4 != 6 || payload + 40 > frame.len() - ETH_HLEN {
                return None;
            }
            let src = u128::from_be_bytes(*ip[8..].first_chunk()?);
            let dst = u128::from_be_bytes(*ip[24..].first_chunk()?);
            (ip[6], &frame[ETH_HLEN + 40..], src, dst, true)
        }
        _ => {
            let f = frame.first_chunk::<{ ETH_HLEN + 20 }>()?;
            if f[12..14] != [0x08, 0x00] {
                return None;
            }
            let ip = f.last_chunk::<20>()?;
            // version 4, IHL 5, no MF and offset 0, total length fits the frame
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            if ip[0] != 0x45 || (ip[6] & 0x3f) | ip[7] != 0 || total > frame.len() - ETH_HLEN {
                return None;
            }
            let src = u32::from_be_bytes(*ip[12..].first_chunk()?) as u128;
            let dst = u32::from_be_bytes(*ip[16..].first_chunk()?) as u128;
            (ip[9], &frame[ETH_HLEN + 20..], src, dst, false)
        }
    };
    let l4h = match proto {
        PROTO_TCP => {
            let tcp = l4.first_chunk::<20>()?;
            if tcp[13] & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
                return None;
            }
            tcp.first_chunk::<8>()?
        }
        PROTO_UDP => l4.first_chunk::<8>()?,
        _ => return None,
    };
    Some(FlowKey {
        src,
        dst,
        sport: u16::from_be_bytes([l4h[0], l4h[1]]),
        dport: u16::from_be_bytes([l4h[2], l4h[3]]),
        in_port,
        proto,
        v6,
    })
}
