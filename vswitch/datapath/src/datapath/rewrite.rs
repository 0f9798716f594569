//! What happens to a frame on its way out: the MACs, TTL or hop limit
//! rewritten in place, and whether it is too big for its output port (a
//! hit with oversize packets takes the slow path, which answers or drops
//! them, or lets the overlay fragment them). Both run on every fast-path
//! hit.

use crate::flow_cache::Forward;
use crate::wire::{self, checksum, eth, ethertype, ip_proto, ipv4, ipv6, tcp, udp};

/// Whether a frame's IP packets are larger than `mtu`: the frame's, or the
/// segments of an offload frame (`gso`: its segment size).
#[inline(always)]
pub(super) fn oversize(frame: &[u8], mtu: u16, gso: u16) -> bool {
    if gso != 0 {
        return segment_len(frame, gso).is_some_and(|n| n > mtu as usize);
    }
    frame.len().saturating_sub(eth::HLEN) > mtu as usize
}

/// Whether a frame's packet may be fragmented on the way: IPv4 without DF,
/// not an offload frame (whose segments are cut, never fragmented), and
/// what is not IP.
pub(super) fn fragmentable(frame: &[u8], gso: u16) -> bool {
    gso == 0
        && match wire::be16(frame, eth::ETHERTYPE) {
            ethertype::IPV4 => frame
                .get(eth::HLEN + ipv4::FLG_OFF.start)
                .is_some_and(|f| f & ipv4::DF_BYTE == 0),
            ethertype::IPV6 => false,
            _ => true,
        }
}

/// The IP packet length of an offload frame's segments: its IP and TCP or
/// UDP headers plus `gso` bytes (`None` if the headers are not there).
fn segment_len(frame: &[u8], gso: u16) -> Option<usize> {
    let l3 = frame.get(eth::HLEN..)?;
    let (ip_len, proto) = match eth::ethertype(frame)? {
        ethertype::IPV4 => (
            (*l3.get(ipv4::VER_IHL)? as usize & 0x0f) * 4,
            *l3.get(ipv4::PROTOCOL)?,
        ),
        ethertype::IPV6 => (ipv6::HLEN, *l3.get(ipv6::NXT_HDR)?),
        _ => return None,
    };
    let l4_len = match proto {
        ip_proto::TCP => (*l3.get(ip_len + tcp::DATA_OFF)? as usize >> 4) * 4,
        _ => udp::HLEN,
    };
    Some(ip_len + l4_len + gso as usize)
}

/// Rewrites a frame for its output: MACs, and TTL or hop limit when routed
/// (IPv4's header checksum updated incrementally, RFC 1624). Returns false,
/// leaving the frame as it was, if the TTL would reach zero.
#[inline(always)]
pub(super) fn rewrite(frame: &mut [u8], fwd: &Forward) -> bool {
    if fwd.routed {
        match wire::be16(frame, eth::ETHERTYPE) {
            ethertype::IPV4 => {
                let ip = &mut frame[eth::HLEN..];
                let ttl = &mut ip[ipv4::TTL];
                if *ttl <= 1 {
                    return false;
                }
                *ttl -= 1;
                let c = checksum::ttl_decremented(wire::be16(ip, ipv4::CHECKSUM));
                ip[ipv4::CHECKSUM].copy_from_slice(&c.to_be_bytes());
            }
            ethertype::IPV6 => {
                let hl = &mut frame[eth::HLEN + ipv6::HOP_LIMIT];
                if *hl <= 1 {
                    return false;
                }
                *hl -= 1;
            }
            _ => {}
        }
    }
    macs(frame, fwd);
    true
}

/// Writes a frame's MACs for its output (a translated hit's rewrite does
/// the TTL itself, `nat::Compiled::apply`).
#[inline(always)]
pub(super) fn macs(frame: &mut [u8], fwd: &Forward) {
    frame[eth::DST].copy_from_slice(&fwd.dst_mac);
    frame[eth::SRC].copy_from_slice(&fwd.src_mac);
}
