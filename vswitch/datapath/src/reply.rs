//! Frames the switch originates: ARP replies, IPv6 neighbour advertisements,
//! ICMP errors (time exceeded, fragmentation needed / packet too big, port
//! unreachable) and TCP resets (a Service's refusals), built with smoltcp's
//! wire module.

use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv4TimeExceeded,
    Icmpv6DstUnreachable, Icmpv6Packet, Icmpv6Repr, Icmpv6TimeExceeded, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags, NdiscRepr, RawHardwareAddress,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use super::parse::Mac;
use crate::wire::eth::HLEN as ETH_HLEN;
use crate::wire::{eth, icmp};

fn ethernet(src: Mac, dst: Mac, ethertype: EthernetProtocol, payload_len: usize) -> Vec<u8> {
    let repr = EthernetRepr {
        src_addr: EthernetAddress(src),
        dst_addr: EthernetAddress(dst),
        ethertype,
    };
    let mut buf = vec![0u8; ETH_HLEN + payload_len];
    repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    buf
}

/// "`ip` is at `answer_mac`", to the host that asked.
pub fn arp_reply(answer_mac: Mac, ip: Ipv4Addr, to_mac: Mac, to_ip: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(answer_mac),
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress(to_mac),
        target_protocol_addr: to_ip,
    };
    let mut buf = ethernet(answer_mac, to_mac, EthernetProtocol::Arp, repr.buffer_len());
    repr.emit(&mut ArpPacket::new_unchecked(&mut buf[ETH_HLEN..]));
    buf
}

/// A solicited neighbour advertisement: "`target` is at `answer_mac`".
pub fn neighbor_advert(
    answer_mac: Mac,
    target: Ipv6Addr,
    router: bool,
    to_mac: Mac,
    to_ip: Ipv6Addr,
) -> Vec<u8> {
    let mut flags = NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE;
    if router {
        flags |= NdiscNeighborFlags::ROUTER;
    }
    let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
        flags,
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from_bytes(&answer_mac)),
    });
    let ip = Ipv6Repr {
        src_addr: target,
        dst_addr: to_ip,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.buffer_len(),
        hop_limit: 255,
    };
    let mut buf = ethernet(
        answer_mac,
        to_mac,
        EthernetProtocol::Ipv6,
        ip.buffer_len() + icmp.buffer_len(),
    );
    let l3 = &mut buf[ETH_HLEN..];
    ip.emit(&mut Ipv6Packet::new_unchecked(&mut *l3));
    icmp.emit(
        &target,
        &to_ip,
        &mut Icmpv6Packet::new_unchecked(&mut l3[ip.buffer_len()..]),
        &ChecksumCapabilities::default(),
    );
    buf
}

/// The most of the offending packet an ICMP error quotes.
const QUOTE_V4: usize = 548 - 28; // RFC 1812: fill a 576-byte datagram
const QUOTE_V6: usize = 1280 - 48; // RFC 4443: fit the minimum MTU

/// ICMP "time exceeded in transit" for `frame`, from the gateway back to the
/// sender. `None` if the frame's IP header cannot be quoted.
pub fn time_exceeded(
    frame: &[u8],
    gw_mac: Mac,
    gw_v4: Ipv4Addr,
    gw_v6: Ipv6Addr,
) -> Option<Vec<u8>> {
    icmp_error(frame, gw_mac, gw_v4, gw_v6, Kind::TimeExceeded)
}

/// ICMP "fragmentation needed and DF set" (RFC 1191, with the next hop's
/// `mtu`) or ICMPv6 "packet too big" for `frame`, from the gateway back to
/// the sender.
pub fn too_big(
    frame: &[u8],
    gw_mac: Mac,
    gw_v4: Ipv4Addr,
    gw_v6: Ipv6Addr,
    mtu: u16,
) -> Option<Vec<u8>> {
    icmp_error(frame, gw_mac, gw_v4, gw_v6, Kind::TooBig(mtu))
}

/// The refusal of a new connection `frame` opens, from the address and
/// port it was sent to: a TCP RST for TCP (RFC 9293, 3.10.7.1: to a SYN,
/// with the SYN's sequence number and length acknowledged), an ICMP or
/// ICMPv6 port unreachable for the rest.
pub fn refusal(frame: &[u8], gw_mac: Mac) -> Option<Vec<u8>> {
    let l3 = frame.get(ETH_HLEN..)?;
    let caps = ChecksumCapabilities::ignored();
    let (src, dst, proto, payload) = match l3.first()? >> 4 {
        4 => {
            let p = Ipv4Packet::new_checked(l3).ok()?;
            let r = Ipv4Repr::parse(&p, &caps).ok()?;
            (
                IpAddress::Ipv4(r.src_addr),
                IpAddress::Ipv4(r.dst_addr),
                r.next_header,
                p.payload(),
            )
        }
        6 => {
            let p = Ipv6Packet::new_checked(l3).ok()?;
            let r = Ipv6Repr::parse(&p).ok()?;
            (
                IpAddress::Ipv6(r.src_addr),
                IpAddress::Ipv6(r.dst_addr),
                r.next_header,
                p.payload(),
            )
        }
        _ => return None,
    };
    if proto != IpProtocol::Tcp {
        let (v4, v6) = match dst {
            IpAddress::Ipv4(a) => (a, Ipv6Addr::UNSPECIFIED),
            IpAddress::Ipv6(a) => (Ipv4Addr::UNSPECIFIED, a),
        };
        return icmp_error(frame, gw_mac, v4, v6, Kind::PortUnreachable);
    }
    let seg = TcpPacket::new_checked(payload).ok()?;
    let len = seg.payload().len() + seg.syn() as usize + seg.fin() as usize;
    let (seq, ack) = if seg.ack() {
        (seg.ack_number(), None)
    } else {
        (TcpSeqNumber(0), Some(seg.seq_number() + len))
    };
    let rst = TcpRepr {
        src_port: seg.dst_port(),
        dst_port: seg.src_port(),
        control: TcpControl::Rst,
        seq_number: seq,
        ack_number: ack,
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let src_mac: Mac = frame.get(eth::SRC)?.try_into().ok()?;
    let checksums = ChecksumCapabilities::default();
    match (dst, src) {
        (IpAddress::Ipv4(from), IpAddress::Ipv4(to)) => {
            let ip = Ipv4Repr {
                src_addr: from,
                dst_addr: to,
                next_header: IpProtocol::Tcp,
                payload_len: rst.buffer_len(),
                hop_limit: 64,
            };
            let mut buf = ethernet(
                gw_mac,
                src_mac,
                EthernetProtocol::Ipv4,
                ip.buffer_len() + rst.buffer_len(),
            );
            let out = &mut buf[ETH_HLEN..];
            ip.emit(&mut Ipv4Packet::new_unchecked(&mut *out), &checksums);
            rst.emit(
                &mut TcpPacket::new_unchecked(&mut out[ip.buffer_len()..]),
                &dst,
                &src,
                &checksums,
            );
            Some(buf)
        }
        (IpAddress::Ipv6(from), IpAddress::Ipv6(to)) => {
            let ip = Ipv6Repr {
                src_addr: from,
                dst_addr: to,
                next_header: IpProtocol::Tcp,
                payload_len: rst.buffer_len(),
                hop_limit: 64,
            };
            let mut buf = ethernet(
                gw_mac,
                src_mac,
                EthernetProtocol::Ipv6,
                ip.buffer_len() + rst.buffer_len(),
            );
            let out = &mut buf[ETH_HLEN..];
            ip.emit(&mut Ipv6Packet::new_unchecked(&mut *out));
            rst.emit(
                &mut TcpPacket::new_unchecked(&mut out[ip.buffer_len()..]),
                &dst,
                &src,
                &checksums,
            );
            Some(buf)
        }
        _ => None,
    }
}

/// Which ICMP error.
#[derive(Clone, Copy)]
enum Kind {
    TimeExceeded,
    /// Too big for this MTU.
    TooBig(u16),
    PortUnreachable,
}

/// An ICMP error quoting `frame`, from `from_v4` or `from_v6` (the
/// gateway's, or the address a refused packet was sent to).
fn icmp_error(
    frame: &[u8],
    gw_mac: Mac,
    gw_v4: Ipv4Addr,
    gw_v6: Ipv6Addr,
    kind: Kind,
) -> Option<Vec<u8>> {
    let src_mac: Mac = frame.get(eth::SRC)?.try_into().ok()?;
    let l3 = frame.get(ETH_HLEN..)?;
    let caps = ChecksumCapabilities::ignored();
    match l3.first()? >> 4 {
        4 => {
            let p = Ipv4Packet::new_checked(l3).ok()?;
            let header = Ipv4Repr::parse(&p, &caps).ok()?;
            let data = &p.payload()[..p.payload().len().min(QUOTE_V4)];
            let icmp = match kind {
                Kind::TimeExceeded => Icmpv4Repr::TimeExceeded {
                    reason: Icmpv4TimeExceeded::TtlExpired,
                    header,
                    data,
                },
                Kind::TooBig(_) => Icmpv4Repr::DstUnreachable {
                    reason: Icmpv4DstUnreachable::FragRequired,
                    header,
                    data,
                },
                Kind::PortUnreachable => Icmpv4Repr::DstUnreachable {
                    reason: Icmpv4DstUnreachable::PortUnreachable,
                    header,
                    data,
                },
            };
            let ip = Ipv4Repr {
                src_addr: gw_v4,
                dst_addr: header.src_addr,
                next_header: IpProtocol::Icmp,
                payload_len: icmp.buffer_len(),
                hop_limit: 64,
            };
            let mut buf = ethernet(
                gw_mac,
                src_mac,
                EthernetProtocol::Ipv4,
                ip.buffer_len() + icmp.buffer_len(),
            );
            let out = &mut buf[ETH_HLEN..];
            ip.emit(
                &mut Ipv4Packet::new_unchecked(&mut *out),
                &ChecksumCapabilities::default(),
            );
            let icmp_buf = &mut out[ip.buffer_len()..];
            icmp.emit(
                &mut Icmpv4Packet::new_unchecked(&mut *icmp_buf),
                &ChecksumCapabilities::default(),
            );
            if let Kind::TooBig(mtu) = kind {
                // the next-hop MTU (RFC 1191), which smoltcp does not write
                icmp_buf[icmp::MTU].copy_from_slice(&mtu.to_be_bytes());
                Icmpv4Packet::new_unchecked(&mut *icmp_buf).fill_checksum();
            }
            Some(buf)
        }
        6 => {
            let p = Ipv6Packet::new_checked(l3).ok()?;
            let header = Ipv6Repr::parse(&p).ok()?;
            let data = &p.payload()[..p.payload().len().min(QUOTE_V6)];
            let icmp = match kind {
                Kind::TimeExceeded => Icmpv6Repr::TimeExceeded {
                    reason: Icmpv6TimeExceeded::HopLimitExceeded,
                    header,
                    data,
                },
                Kind::TooBig(mtu) => Icmpv6Repr::PktTooBig {
                    mtu: mtu as u32,
                    header,
                    data,
                },
                Kind::PortUnreachable => Icmpv6Repr::DstUnreachable {
                    reason: Icmpv6DstUnreachable::PortUnreachable,
                    header,
                    data,
                },
            };
            let ip = Ipv6Repr {
                src_addr: gw_v6,
                dst_addr: header.src_addr,
                next_header: IpProtocol::Icmpv6,
                payload_len: icmp.buffer_len(),
                hop_limit: 64,
            };
            let mut buf = ethernet(
                gw_mac,
                src_mac,
                EthernetProtocol::Ipv6,
                ip.buffer_len() + icmp.buffer_len(),
            );
            let out = &mut buf[ETH_HLEN..];
            ip.emit(&mut Ipv6Packet::new_unchecked(&mut *out));
            icmp.emit(
                &gw_v6,
                &header.src_addr,
                &mut Icmpv6Packet::new_unchecked(&mut out[ip.buffer_len()..]),
                &ChecksumCapabilities::default(),
            );
            Some(buf)
        }
        _ => None,
    }
}
