//! Address and port translation of a frame in place: what the service
//! proxy does to a packet of a translated connection (DNAT to an endpoint
//! and back, and the source of a hairpin connection).
//!
//! - A [`Rewrite`] replaces a packet's source and/or destination address
//!   and port. IPv4's header checksum and the TCP or UDP checksum are
//!   patched incrementally (RFC 1624): the pseudo-header's addresses and
//!   the ports are the words that change. SCTP's CRC32c is not a sum: it
//!   is recomputed over the packet.
//! - A partial checksum (a TAP frame with `VIRTIO_NET_HDR_F_NEEDS_CSUM`)
//!   holds the pseudo-header's sum only, not complemented, and the output
//!   completes it over the transport header and payload: there, only the
//!   addresses are patched, uncomplemented, and the ports are left to the
//!   completion.
//! - An ICMP error about a translated packet is translated too: its outer
//!   addresses as any packet's, and the packet it quotes (whose inner IPv4
//!   header checksum is recomputed; the ICMP checksum is recomputed over
//!   the message).
//! - A later fragment has no transport header: its addresses change (the
//!   first fragment's transport checksum covers the whole datagram).
//!
//! The frame was parsed before it gets here; offsets are still checked, and
//! a frame that does not have the headers it should is left unchanged
//! (`false`).

use std::net::IpAddr;

use crate::wire::{self, checksum, eth, ethertype, icmp, ip_proto, ipv4, ipv6, ipv6_ext};

/// New addresses and ports for a packet: `None` keeps that end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rewrite {
    pub src: Option<(IpAddr, u16)>,
    pub dst: Option<(IpAddr, u16)>,
}

impl Rewrite {
    pub fn is_empty(&self) -> bool {
        self.src.is_none() && self.dst.is_none()
    }
}

/// Where the IP and transport headers are.
struct Layout {
    v6: bool,
    /// Start of the IP header in the frame.
    l3: usize,
    /// Start of the transport header (or of the fragment's payload).
    l4: usize,
    proto: u8,
    /// A later fragment (no transport header).
    later_fragment: bool,
    /// A fragment at all (first or later).
    fragmented: bool,
    /// End of the IP packet.
    end: usize,
}

fn layout(frame: &[u8], l3: usize) -> Option<Layout> {
    let ip = frame.get(l3..)?;
    match ip.first()? >> 4 {
        4 => {
            let ihl = (*ip.get(ipv4::VER_IHL)? as usize & 0x0f) * 4;
            let total = wire::be16(ip.get(..ipv4::MIN_HLEN)?, ipv4::LENGTH) as usize;
            let fo = wire::be16(ip, ipv4::FLG_OFF);
            if ihl < ipv4::MIN_HLEN || total < ihl || total > ip.len() {
                return None;
            }
            Some(Layout {
                v6: false,
                l3,
                l4: l3 + ihl,
                proto: ip[ipv4::PROTOCOL],
                later_fragment: fo & ipv4::OFF_MASK != 0,
                fragmented: fo & (ipv4::OFF_MASK | ipv4::FLG_MF) != 0,
                end: l3 + total,
            })
        }
        6 => {
            let hdr = ip.get(..ipv6::HLEN)?;
            let end = l3 + ipv6::HLEN + wire::be16(hdr, ipv6::LENGTH) as usize;
            if end > frame.len() {
                return None;
            }
            let (mut next, mut at) = (hdr[ipv6::NXT_HDR], l3 + ipv6::HLEN);
            let (mut later, mut fragmented) = (false, false);
            loop {
                match next {
                    ipv6_ext::HOP_BY_HOP | ipv6_ext::ROUTING | ipv6_ext::DST_OPTS => {
                        let h = frame.get(at..at + ipv6_ext::MIN_HLEN)?;
                        next = h[ipv6_ext::NXT_HDR];
                        at += (h[ipv6_ext::HDR_LEN] as usize + 1) * 8;
                    }
                    ipv6_ext::FRAGMENT => {
                        let h = frame.get(at..at + ipv6_ext::FRAG_HLEN)?;
                        next = h[ipv6_ext::NXT_HDR];
                        fragmented = true;
                        later = wire::be16(h, ipv6_ext::FRAG_OFF) >> ipv6_ext::FRAG_OFF_SHIFT != 0;
                        at += ipv6_ext::FRAG_HLEN;
                    }
                    _ => break,
                }
                if at > end {
                    return None;
                }
            }
            Some(Layout {
                v6: true,
                l3,
                l4: at,
                proto: next,
                later_fragment: later,
                fragmented,
                end,
            })
        }
        _ => None,
    }
}

/// The bytes of an address, as it sits in a header.
fn bytes(a: IpAddr) -> ([u8; 16], usize) {
    match a {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}

/// A running ones' complement adjustment: the sum of the new words minus
/// the sum of the old ones (each old word added as its complement), in a
/// wide accumulator folded once at the end.
#[derive(Default, Clone, Copy)]
struct Delta(u64);

impl Delta {
    #[inline(always)]
    fn change(&mut self, old: &[u8], new: &[u8]) {
        for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
            self.0 += u64::from(!u16::from_be_bytes([o[0], o[1]]));
            self.0 += u64::from(u16::from_be_bytes([n[0], n[1]]));
        }
    }

    /// `check` (a complemented checksum) updated: RFC 1624, eqn. 3.
    #[inline(always)]
    fn full(&self, check: u16) -> u16 {
        !checksum::fold(self.0 + u64::from(!check))
    }

    /// `partial` (an uncomplemented pseudo-header sum) updated.
    #[inline(always)]
    fn partial(&self, partial: u16) -> u16 {
        checksum::fold(self.0 + u64::from(partial))
    }
}

/// Rewrites the frame's packet in place (`partial`: its transport checksum
/// is a partial one, completed on output). False, and the frame unchanged,
/// if it lacks the headers to rewrite.
#[inline]
pub fn apply(frame: &mut [u8], rw: &Rewrite, partial: bool) -> bool {
    if rw.is_empty() {
        return true;
    }
    let Some(l) = layout(frame, eth::HLEN) else {
        return false;
    };
    if wire::be16(frame, eth::ETHERTYPE)
        != if l.v6 {
            ethertype::IPV6
        } else {
            ethertype::IPV4
        }
    {
        return false;
    }
    let ports = !l.later_fragment
        && matches!(l.proto, ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP)
        && frame.len() >= l.l4 + 4;
    if !ports && !l.later_fragment && (has_port(rw)) {
        return false;
    }
    let (mut addrs, mut port_words) = (Delta::default(), Delta::default());
    let (src_at, dst_at, alen) = addr_offsets(&l);
    for (end, at, port_at) in [(rw.src, src_at, 0), (rw.dst, dst_at, 2)] {
        let Some((addr, port)) = end else { continue };
        let (new, n) = bytes(addr);
        if n != alen {
            return false; // another family: never asked for
        }
        addrs.change(&frame[at..at + n], &new[..n]);
        frame[at..at + n].copy_from_slice(&new[..n]);
        if ports {
            let p = l.l4 + port_at;
            port_words.change(&frame[p..p + 2], &port.to_be_bytes());
            frame[p..p + 2].copy_from_slice(&port.to_be_bytes());
        }
    }
    if !l.v6 {
        let c = wire::be16(&frame[l.l3..], ipv4::CHECKSUM);
        let c = addrs.full(c);
        frame[l.l3 + ipv4::CHECKSUM.start..l.l3 + ipv4::CHECKSUM.end]
            .copy_from_slice(&c.to_be_bytes());
    }
    if l.later_fragment {
        return true;
    }
    match l.proto {
        ip_proto::TCP | ip_proto::UDP => {
            let at = l.l4 + if l.proto == ip_proto::TCP { 16 } else { 6 };
            let Some(field) = frame.get(at..at + 2) else {
                return true; // a first fragment too short to hold it
            };
            let old = u16::from_be_bytes([field[0], field[1]]);
            let new = if partial {
                addrs.partial(old)
            } else if l.proto == ip_proto::UDP && old == 0 && !l.v6 {
                0 // IPv4 UDP without a checksum
            } else {
                let d = Delta(addrs.0 + port_words.0);
                match d.full(old) {
                    0 if l.proto == ip_proto::UDP => 0xffff,
                    c => c,
                }
            };
            frame[at..at + 2].copy_from_slice(&new.to_be_bytes());
        }
        ip_proto::SCTP if !l.fragmented => sctp_crc(&mut frame[l.l4..l.end]),
        _ => {}
    }
    true
}

fn has_port(rw: &Rewrite) -> bool {
    rw.src.is_some() || rw.dst.is_some()
}

/// Where the source and destination addresses are, and their length.
fn addr_offsets(l: &Layout) -> (usize, usize, usize) {
    if l.v6 {
        (l.l3 + ipv6::SRC_ADDR.start, l.l3 + ipv6::DST_ADDR.start, 16)
    } else {
        (l.l3 + ipv4::SRC_ADDR.start, l.l3 + ipv4::DST_ADDR.start, 4)
    }
}

/// Recomputes an SCTP packet's CRC32c (RFC 9260, appendix A): over the
/// whole packet with the checksum field zero, stored little-endian.
fn sctp_crc(sctp: &mut [u8]) {
    const CHECKSUM: std::ops::Range<usize> = 8..12;
    if sctp.len() < 12 {
        return;
    }
    sctp[CHECKSUM].fill(0);
    let crc = crc32c::crc32c(sctp);
    sctp[CHECKSUM].copy_from_slice(&crc.to_le_bytes());
}

/// Rewrites an ICMP error about a translated packet: the outer packet by
/// `outer` (addresses only: an ICMP error has no ports), the packet it
/// quotes by `inner`. False, and the frame unchanged, if it is not an ICMP
/// error with a quoted IP header.
pub fn apply_icmp_error(frame: &mut [u8], outer: &Rewrite, inner: &Rewrite) -> bool {
    let Some(l) = layout(frame, eth::HLEN) else {
        return false;
    };
    let icmp_proto = if l.v6 {
        ip_proto::ICMPV6
    } else {
        ip_proto::ICMP
    };
    if l.proto != icmp_proto || l.fragmented {
        return false;
    }
    let quoted = l.l4 + icmp::HLEN;
    let Some(q) = layout_quoted(frame, quoted, l.end) else {
        return false;
    };
    // the quoted packet: addresses, ports when quoted, its IPv4 checksum
    let (src_at, dst_at, alen) = addr_offsets(&q);
    for (end, at, port_at) in [(inner.src, src_at, 0), (inner.dst, dst_at, 2)] {
        let Some((addr, port)) = end else { continue };
        let (new, n) = bytes(addr);
        if n != alen {
            return false;
        }
        frame[at..at + n].copy_from_slice(&new[..n]);
        let p = q.l4 + port_at;
        if !q.later_fragment && p + 2 <= l.end {
            frame[p..p + 2].copy_from_slice(&port.to_be_bytes());
        }
    }
    if !q.v6 {
        let h = q.l3..q.l4;
        frame[q.l3 + ipv4::CHECKSUM.start..q.l3 + ipv4::CHECKSUM.end].fill(0);
        let c = checksum::ipv4_header(&frame[h]);
        frame[q.l3 + ipv4::CHECKSUM.start..q.l3 + ipv4::CHECKSUM.end]
            .copy_from_slice(&c.to_be_bytes());
    }
    // the outer addresses
    let (src_at, dst_at, alen) = addr_offsets(&l);
    for (end, at) in [(outer.src, src_at), (outer.dst, dst_at)] {
        let Some((addr, _)) = end else { continue };
        let (new, n) = bytes(addr);
        if n != alen {
            return false;
        }
        frame[at..at + n].copy_from_slice(&new[..n]);
    }
    if !l.v6 {
        frame[l.l3 + ipv4::CHECKSUM.start..l.l3 + ipv4::CHECKSUM.end].fill(0);
        let c = checksum::ipv4_header(&frame[l.l3..l.l4]);
        frame[l.l3 + ipv4::CHECKSUM.start..l.l3 + ipv4::CHECKSUM.end]
            .copy_from_slice(&c.to_be_bytes());
    }
    // the ICMP checksum, over the message (and ICMPv6's pseudo-header)
    let c = l.l4 + icmp::CHECKSUM.start;
    frame[c..c + 2].fill(0);
    let mut sum = checksum::add(0, &frame[l.l4..l.end]);
    if l.v6 {
        sum = checksum::add(
            sum,
            &frame[l.l3 + ipv6::ADDRS.start..l.l3 + ipv6::ADDRS.end],
        );
        let len = (l.end - l.l4) as u32;
        sum = checksum::add(sum, &len.to_be_bytes());
        sum = checksum::add(sum, &[0, 0, 0, ip_proto::ICMPV6]);
    }
    let sum = !checksum::fold(sum);
    frame[c..c + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

/// The layout of a quoted packet, which may be cut short: its IP header
/// must be whole, its length is what is there.
fn layout_quoted(frame: &[u8], l3: usize, end: usize) -> Option<Layout> {
    let ip = frame.get(l3..end)?;
    match ip.first()? >> 4 {
        4 => {
            let ihl = (*ip.get(ipv4::VER_IHL)? as usize & 0x0f) * 4;
            if ihl < ipv4::MIN_HLEN || ihl > ip.len() {
                return None;
            }
            let fo = wire::be16(ip, ipv4::FLG_OFF);
            Some(Layout {
                v6: false,
                l3,
                l4: l3 + ihl,
                proto: ip[ipv4::PROTOCOL],
                later_fragment: fo & ipv4::OFF_MASK != 0,
                fragmented: fo & (ipv4::OFF_MASK | ipv4::FLG_MF) != 0,
                end,
            })
        }
        6 if ip.len() >= ipv6::HLEN => Some(Layout {
            v6: true,
            l3,
            l4: l3 + ipv6::HLEN,
            proto: ip[ipv6::NXT_HDR],
            // extension headers in a quote are not walked: the ports
            // are written only where a transport header follows directly
            later_fragment: !matches!(
                ip[ipv6::NXT_HDR],
                ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP
            ),
            fragmented: false,
            end,
        }),
        _ => None,
    }
}

/// A translation made ready for the flow cache's hits: the frames of one
/// cached flow all have the same headers where it writes (the cache's key
/// admits only IPv4 without options or IPv6 without extension headers,
/// unfragmented TCP or UDP), so the checksum adjustments are the same for
/// every packet, computed once from the first and folded to 16 bits. A hit
/// writes the new addresses and ports and adds the adjustments. One cache
/// line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C, align(64))]
pub struct Compiled {
    src_addr: [u8; 16],
    dst_addr: [u8; 16],
    sport: u16,
    dport: u16,
    /// Adjustments (uncomplemented, folded): the IPv4 header's
    /// (addresses); the transport's, full (addresses and ports) and
    /// partial (addresses).
    ip: u16,
    full: u16,
    partial: u16,
    /// `SRC`, `DST`, `V6`, `UDP`.
    flags: u8,
}

const SRC: u8 = 1;
const DST: u8 = 2;
const V6: u8 = 4;
const UDP: u8 = 8;

/// Where a cached flow's headers are.
const V4_SRC: usize = eth::HLEN + ipv4::SRC_ADDR.start;
const V4_DST: usize = eth::HLEN + ipv4::DST_ADDR.start;
const V4_L4: usize = eth::HLEN + ipv4::MIN_HLEN;
const V6_SRC: usize = eth::HLEN + ipv6::SRC_ADDR.start;
const V6_DST: usize = eth::HLEN + ipv6::DST_ADDR.start;
const V6_L4: usize = eth::HLEN + ipv6::HLEN;

/// A 16-bit ones' complement sum of `a` and `b` (each up to 16 bits).
#[inline(always)]
fn add16(a: u16, b: u16) -> u16 {
    let s = a as u32 + b as u32;
    ((s & 0xffff) + (s >> 16)) as u16
}

impl Compiled {
    /// The translation `rw` of `frame`'s flow, for its later packets; `None`
    /// if the frame is not one the flow cache takes.
    pub fn of(frame: &[u8], rw: &Rewrite) -> Option<Compiled> {
        let l = layout(frame, eth::HLEN)?;
        let (src_at, dst_at, l4_at) = if l.v6 {
            (V6_SRC, V6_DST, V6_L4)
        } else {
            (V4_SRC, V4_DST, V4_L4)
        };
        if l.fragmented || l.l4 != l4_at || !matches!(l.proto, ip_proto::TCP | ip_proto::UDP) {
            return None;
        }
        let alen = if l.v6 { 16 } else { 4 };
        let mut c = Compiled::default();
        c.flags |= if l.v6 { V6 } else { 0 } | if l.proto == ip_proto::UDP { UDP } else { 0 };
        let (mut addrs, mut ports) = (Delta::default(), Delta::default());
        for (end, at, port_at, is_src) in [
            (rw.src, src_at, l4_at, true),
            (rw.dst, dst_at, l4_at + 2, false),
        ] {
            let Some((addr, port)) = end else { continue };
            let (new, n) = bytes(addr);
            if n != alen {
                return None;
            }
            addrs.change(frame.get(at..at + n)?, &new[..n]);
            ports.change(frame.get(port_at..port_at + 2)?, &port.to_be_bytes());
            if is_src {
                (c.src_addr, c.sport, c.flags) = (new, port, c.flags | SRC);
            } else {
                (c.dst_addr, c.dport, c.flags) = (new, port, c.flags | DST);
            }
        }
        c.ip = checksum::fold(addrs.0);
        c.full = checksum::fold(addrs.0 + ports.0);
        c.partial = c.ip;
        Some(c)
    }

    /// Translates a packet of the flow (`partial`: its transport checksum is
    /// partial), and when it is `routed` decrements its TTL or hop limit
    /// too (IPv4's header checksum updated once for both). False, and the
    /// frame unchanged, if it is too short or its TTL would reach zero.
    #[inline(always)]
    pub fn apply(&self, frame: &mut [u8], partial: bool, routed: bool) -> bool {
        match (self.flags & V6 != 0, self.flags & UDP != 0) {
            (false, false) => self.apply_at::<4, false>(frame, partial, routed),
            (false, true) => self.apply_at::<4, true>(frame, partial, routed),
            (true, false) => self.apply_at::<16, false>(frame, partial, routed),
            (true, true) => self.apply_at::<16, true>(frame, partial, routed),
        }
    }

    /// [`Compiled::apply`] for one family (`N`: its address length) and
    /// transport, so that every offset is a constant: the copies have fixed
    /// sizes and one length check covers every write.
    #[inline(always)]
    fn apply_at<const N: usize, const UDP_: bool>(
        &self,
        frame: &mut [u8],
        partial: bool,
        routed: bool,
    ) -> bool {
        let v6 = N == 16;
        let udp = UDP_;
        let (src_at, dst_at, l4_at) = if v6 {
            (V6_SRC, V6_DST, V6_L4)
        } else {
            (V4_SRC, V4_DST, V4_L4)
        };
        let csum_at = l4_at + if udp { 6 } else { 16 };
        let Some(frame) = frame.get_mut(..csum_at + 2) else {
            return false;
        };
        let ttl_at = eth::HLEN + if v6 { ipv6::HOP_LIMIT } else { ipv4::TTL };
        if routed {
            if frame[ttl_at] <= 1 {
                return false;
            }
            frame[ttl_at] -= 1;
        }
        if self.flags & SRC != 0 {
            frame[src_at..src_at + N].copy_from_slice(&self.src_addr[..N]);
            frame[l4_at..l4_at + 2].copy_from_slice(&self.sport.to_be_bytes());
        }
        if self.flags & DST != 0 {
            frame[dst_at..dst_at + N].copy_from_slice(&self.dst_addr[..N]);
            frame[l4_at + 2..l4_at + 4].copy_from_slice(&self.dport.to_be_bytes());
        }
        if !v6 {
            let at = eth::HLEN + ipv4::CHECKSUM.start;
            let mut c = !add16(!u16::from_be_bytes([frame[at], frame[at + 1]]), self.ip);
            if routed {
                c = checksum::ttl_decremented(c);
            }
            frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        let old = u16::from_be_bytes([frame[csum_at], frame[csum_at + 1]]);
        let new = if partial {
            add16(old, self.partial)
        } else if udp && old == 0 && !v6 {
            0
        } else {
            match !add16(!old, self.full) {
                0 if udp => 0xffff,
                c => c,
            }
        };
        frame[csum_at..csum_at + 2].copy_from_slice(&new.to_be_bytes());
        true
    }
}
