//! Receive coalescing for frames from the overlay: consecutive TCP segments
//! of one connection, going to one pod, become one offload frame.
//!
//! # Why
//! The overlay carries packets no larger than its MTU, so a TCP stream from
//! another node arrives as ~1400-byte segments. Written to the pod's TAP one
//! by one, each costs a system call and a trip through the pod's IP stack.
//! Merged, as the kernel's GRO does on a NIC, a run of segments is one
//! write and one packet for the pod's TCP, which takes it as a
//! segmentation-offload frame (the TAP's virtio-net header says so).
//!
//! # What merges
//! IPv4 without options or fragmentation, or IPv6 without extension
//! headers, carrying TCP with only ACK (and PSH on the last segment): each
//! next segment must follow in sequence, carry the same addresses, ports,
//! acknowledgement, window and options, and have the first segment's
//! payload size (a shorter one, or one with PSH, closes the run). At most
//! 64 KiB. Anything else passes unmerged, and the order of frames to a port
//! is kept: the caller flushes before sending anything else.
//!
//! # What the pod receives
//! The first segment's headers with the lengths of the whole, a fresh IPv4
//! header checksum, and the TCP checksum left partial (the pseudo-header
//! sum, `NEEDS_CSUM`), with `gso_type` TCPv4/TCPv6 and `gso_size` the
//! segment size: exactly the form in which a pod's own TAP hands over what
//! its TCP sends.
//!
//! # Nothing copied but the headers
//! A run is the first segment's headers and a list of where each segment's
//! payload lies in the caller's frames ([`Payload`]); the caller sends the
//! headers and the payloads as the pieces of one write, so the kernel's copy
//! into the pod's TAP is the only one. The caller keeps the frames it
//! pushed unchanged until the run's pieces are sent (or copied).

use super::PortId;
use crate::RxMeta;
use crate::wire::checksum::fold;
use crate::wire::eth::HLEN as ETH_HLEN;
use crate::wire::vnet::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use crate::wire::{VnetHdr, be16, eth, ethertype, ip_proto, ipv4, ipv6, tcp};

/// The largest merged frame's IP packet.
const MAX_IP: usize = 65_535;

/// The most segments in one run (a receive batch's worth).
pub const MAX_SEGMENTS: usize = 64;

/// Where one segment's payload lies: `len` bytes from `at` in the frame the
/// caller pushed as `src`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    pub src: usize,
    pub at: usize,
    pub len: usize,
}

/// A run taken for sending: the merged frame is `head` followed by the
/// payloads, in order.
pub struct Run<'a> {
    pub out: PortId,
    pub head: &'a [u8],
    pub payloads: &'a [Payload],
    pub meta: RxMeta,
}

/// A run of segments being merged.
pub struct Coalescer {
    /// The first segment's headers (rewritten when the run is taken).
    head: Vec<u8>,
    payloads: Vec<Payload>,
    /// The merged frame's length so far (headers and payloads).
    len: usize,
    out: PortId,
    /// Headers: IP length (from ETH_HLEN) and TCP length.
    ip_len: usize,
    tcp_len: usize,
    v6: bool,
    /// The payload size of the first segment, the next sequence number.
    seg: usize,
    next_seq: u32,
    count: usize,
    /// No more segments may join (a short one or PSH arrived).
    closed: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer {
            head: Vec::with_capacity(ETH_HLEN + 60 + 60),
            payloads: Vec::with_capacity(MAX_SEGMENTS),
            len: 0,
            out: 0,
            ip_len: 0,
            tcp_len: 0,
            v6: false,
            seg: 0,
            next_seq: 0,
            count: 0,
            closed: false,
        }
    }
}

/// A frame's mergeable shape: (IPv6, IP header length, TCP header length,
/// payload length, sequence number, PSH set).
fn shape(f: &[u8]) -> Option<(bool, usize, usize, usize, u32, bool)> {
    let (v6, ip_len, total) = match eth::ethertype(f)? {
        ethertype::IPV4 => {
            let ip = f.get(ETH_HLEN..ETH_HLEN + ipv4::MIN_HLEN)?;
            // no options, TCP, not a fragment (DF alone allowed)
            let [flg_off_high, off_low] = [ip[ipv4::FLG_OFF.start], ip[ipv4::FLG_OFF.start + 1]];
            if ip[ipv4::VER_IHL] != ipv4::VER_IHL_PLAIN
                || ip[ipv4::PROTOCOL] != ip_proto::TCP
                || (flg_off_high & ipv4::MF_OFF_HIGH_BYTE) != 0
                || off_low != 0
            {
                return None;
            }
            (false, ipv4::MIN_HLEN, be16(ip, ipv4::LENGTH) as usize)
        }
        ethertype::IPV6 => {
            let ip = f.get(ETH_HLEN..ETH_HLEN + ipv6::HLEN)?;
            if ip[ipv6::NXT_HDR] != ip_proto::TCP {
                return None;
            }
            (
                true,
                ipv6::HLEN,
                ipv6::HLEN + be16(ip, ipv6::LENGTH) as usize,
            )
        }
        _ => return None,
    };
    if ETH_HLEN + total != f.len() {
        return None; // padding or a lie: leave it alone
    }
    let th = f.get(ETH_HLEN + ip_len..)?;
    let tcp_len = (*th.get(tcp::DATA_OFF)? as usize >> 4) * 4;
    let flags = *th.get(tcp::FLAGS)?;
    // ACK, and perhaps PSH; nothing else (no SYN, FIN, RST, URG, ECE, CWR)
    if tcp_len < tcp::MIN_HLEN || flags & !tcp::FLG_PSH != tcp::FLG_ACK {
        return None;
    }
    let payload = total.checked_sub(ip_len + tcp_len)?;
    if payload == 0 {
        return None;
    }
    let seq = u32::from_be_bytes(th[tcp::SEQ_NUM].try_into().ok()?);
    Some((v6, ip_len, tcp_len, payload, seq, flags & tcp::FLG_PSH != 0))
}

impl Coalescer {
    /// Whether a run is being merged.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds `frame` (for port `out`; the caller's frame number `src`) to
    /// the run, or starts a run with it. `false`: it cannot join (flush the
    /// run, then try again) or cannot start one (send it as it is).
    pub fn push(&mut self, out: PortId, src: usize, frame: &[u8]) -> bool {
        let Some((v6, ip_len, tcp_len, payload, seq, psh)) = shape(frame) else {
            return false;
        };
        let hdr = ETH_HLEN + ip_len + tcp_len;
        let here = Payload {
            src,
            at: hdr,
            len: payload,
        };
        if self.count == 0 {
            if psh {
                return false; // a run of one: nothing to gain
            }
            self.head.clear();
            self.head.extend_from_slice(&frame[..hdr]);
            self.payloads.clear();
            self.payloads.push(here);
            self.len = frame.len();
            (self.out, self.v6, self.ip_len, self.tcp_len) = (out, v6, ip_len, tcp_len);
            (self.seg, self.next_seq, self.count, self.closed) =
                (payload, seq.wrapping_add(payload as u32), 1, false);
            return true;
        }
        if self.closed
            || out != self.out
            || v6 != self.v6
            || tcp_len != self.tcp_len
            || seq != self.next_seq
            || payload > self.seg
            || self.len + payload > ETH_HLEN + MAX_IP
            || self.count == MAX_SEGMENTS
            || !self.same_flow(frame)
        {
            return false;
        }
        self.payloads.push(here);
        self.len += payload;
        self.next_seq = seq.wrapping_add(payload as u32);
        self.count += 1;
        if psh {
            let at = ETH_HLEN + self.ip_len + tcp::FLAGS;
            self.head[at] |= tcp::FLG_PSH;
        }
        self.closed = psh || payload < self.seg;
        true
    }

    /// The same connection in the same state: addresses and ports, and the
    /// TCP header past the sequence number (acknowledgement, window,
    /// options) except the flags' PSH and the checksum.
    fn same_flow(&self, f: &[u8]) -> bool {
        let a = &self.head;
        let ip = ETH_HLEN;
        let (addr, l4) = if self.v6 {
            (
                ip + ipv6::ADDRS.start..ip + ipv6::ADDRS.end,
                ip + ipv6::HLEN,
            )
        } else {
            (
                ip + ipv4::ADDRS.start..ip + ipv4::ADDRS.end,
                ip + ipv4::MIN_HLEN,
            )
        };
        let end = l4 + self.tcp_len;
        // ports; acknowledgement, data offset; window; urgent pointer, options
        let ports = l4 + tcp::SRC_PORT.start..l4 + tcp::DST_PORT.end;
        let ack = l4 + tcp::ACK_NUM.start;
        let (flags, win) = (l4 + tcp::FLAGS, l4 + tcp::WIN_SIZE.start);
        let (win_end, urg) = (l4 + tcp::WIN_SIZE.end, l4 + tcp::URGENT.start);
        a[addr.clone()] == f[addr]
            && a[ports.clone()] == f[ports]
            && a[ack..flags] == f[ack..flags]
            && a[win..win_end] == f[win..win_end]
            && a[urg..end] == f[urg..end]
            // IPv4: the same TOS, TTL and DF; IPv6: the same traffic class,
            // flow label and hop limit
            && if self.v6 {
                let tc_flow = ip + ipv6::VER_TC_FLOW.start..ip + ipv6::VER_TC_FLOW.end;
                a[tc_flow.clone()] == f[tc_flow] && a[ip + ipv6::HOP_LIMIT] == f[ip + ipv6::HOP_LIMIT]
            } else {
                a[ip + ipv4::TOS] == f[ip + ipv4::TOS]
                    && a[ip + ipv4::FLG_OFF.start] == f[ip + ipv4::FLG_OFF.start]
                    && a[ip + ipv4::TTL] == f[ip + ipv4::TTL]
            }
    }

    /// Ends the run: the port, the frame's pieces and its virtio-net
    /// header (a single segment goes out as it came, with complete
    /// checksums).
    pub fn take(&mut self) -> Option<Run<'_>> {
        if self.count == 0 {
            return None;
        }
        let count = std::mem::take(&mut self.count);
        if count == 1 {
            return Some(Run {
                out: self.out,
                head: &self.head,
                payloads: &self.payloads,
                meta: RxMeta::default(),
            });
        }
        let ip = ETH_HLEN;
        let l4 = ip + self.ip_len;
        let ip_total = self.len - ETH_HLEN;
        let tcp_total = ip_total - self.ip_len;
        let mut sum: u32 = 0;
        let add = |sum: &mut u32, b: &[u8]| {
            for w in b.chunks(2) {
                *sum += u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32;
            }
        };
        let hdr = &mut self.head[ip..];
        if self.v6 {
            hdr[ipv6::LENGTH].copy_from_slice(&((ip_total - ipv6::HLEN) as u16).to_be_bytes());
            add(&mut sum, &hdr[ipv6::ADDRS]);
        } else {
            hdr[ipv4::LENGTH].copy_from_slice(&(ip_total as u16).to_be_bytes());
            hdr[ipv4::CHECKSUM].copy_from_slice(&[0, 0]);
            let mut h: u32 = 0;
            add(&mut h, &hdr[..ipv4::MIN_HLEN]);
            let h = fold(h.into());
            hdr[ipv4::CHECKSUM].copy_from_slice(&(!h).to_be_bytes());
            add(&mut sum, &hdr[ipv4::ADDRS]);
        }
        sum += ip_proto::TCP as u32 + tcp_total as u32;
        // NEEDS_CSUM: the field holds the pseudo-header sum, not complemented
        self.head[l4..][tcp::CHECKSUM].copy_from_slice(&fold(sum.into()).to_be_bytes());
        let vnet = VnetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: if self.v6 {
                VIRTIO_NET_HDR_GSO_TCPV6
            } else {
                VIRTIO_NET_HDR_GSO_TCPV4
            },
            hdr_len: (l4 + self.tcp_len) as u16,
            gso_size: self.seg as u16,
            csum_start: l4 as u16,
            csum_offset: tcp::CHECKSUM.start as u16,
        };
        Some(Run {
            out: self.out,
            head: &self.head,
            payloads: &self.payloads,
            meta: RxMeta {
                vnet,
                ..RxMeta::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    fn seg4(seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 62)
            .tcp(40000, 80, seq, 500)
            .ack(77);
        let b = if psh { b.psh() } else { b };
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    /// Pushes `frame` as the caller's next frame (kept in `frames`).
    fn push(c: &mut Coalescer, frames: &mut Vec<Vec<u8>>, out: PortId, frame: Vec<u8>) -> bool {
        frames.push(frame);
        c.push(out, frames.len() - 1, &frames[frames.len() - 1])
    }

    /// Takes the run and joins its pieces as the caller's write would.
    fn take(c: &mut Coalescer, frames: &[Vec<u8>]) -> Option<(PortId, Vec<u8>, RxMeta)> {
        let run = c.take()?;
        let mut f = run.head.to_vec();
        for p in run.payloads {
            f.extend_from_slice(&frames[p.src][p.at..p.at + p.len]);
        }
        Some((run.out, f, run.meta))
    }

    fn data(n: usize, salt: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
    }

    /// Completes the partial checksum as the pod's kernel would, and checks
    /// it with etherparse's own computation.
    fn complete_and_check(frame: &mut [u8], meta: &RxMeta) {
        let start = meta.vnet.csum_start as usize;
        let mut s: u32 = u16::from_be_bytes([frame[start + 16], frame[start + 17]]) as u32;
        frame[start + 16..start + 18].copy_from_slice(&[0, 0]);
        for w in frame[start..].chunks(2) {
            s += u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32;
        }
        frame[start + 16..start + 18].copy_from_slice(&(!fold(s.into())).to_be_bytes());
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("not TCP")
        };
        let want = match &p.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                assert_eq!(
                    ip.header().header_checksum(),
                    ip.header().to_header().calc_header_checksum()
                );
                t.to_header()
                    .calc_checksum_ipv4(&ip.header().to_header(), t.payload())
                    .unwrap()
            }
            Some(etherparse::NetSlice::Ipv6(ip)) => t
                .to_header()
                .calc_checksum_ipv6(&ip.header().to_header(), t.payload())
                .unwrap(),
            _ => panic!("not IP"),
        };
        assert_eq!(t.checksum(), want);
    }

    #[test]
    fn a_run_of_segments_becomes_one_offload_frame() {
        let mut c = Coalescer::default();
        let mut frames = Vec::new();
        let parts = [data(1400, 1), data(1400, 2), data(1400, 3), data(700, 4)];
        let mut seq = 1000u32;
        for (i, p) in parts.iter().enumerate() {
            assert!(
                push(&mut c, &mut frames, 3, seg4(seq, p, i == 3)),
                "segment {i} joins"
            );
            seq += p.len() as u32;
        }
        assert!(
            !push(&mut c, &mut frames, 3, seg4(seq, &data(100, 9), false)),
            "the run is closed"
        );
        let (out, mut frame, meta) = take(&mut c, &frames).unwrap();
        assert_eq!(out, 3);
        assert_eq!(meta.vnet.gso_type, 1);
        assert_eq!(meta.vnet.gso_size, 1400);
        assert_eq!(meta.vnet.csum_start, 34);
        complete_and_check(&mut frame, &meta);
        let p = SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            panic!()
        };
        assert_eq!(t.sequence_number(), 1000);
        assert!(t.psh(), "PSH of the last segment");
        assert_eq!(t.payload(), parts.concat().as_slice());
        assert!(c.is_empty());
    }

    #[test]
    fn a_run_ends_at_its_most_segments_and_points_into_the_frames() {
        let mut c = Coalescer::default();
        let f = &mut Vec::new();
        let mut seq = 1u32;
        for i in 0..MAX_SEGMENTS {
            assert!(push(&mut c, f, 2, seg4(seq, &data(100, i as u8), false)));
            seq += 100;
        }
        assert!(
            !push(&mut c, f, 2, seg4(seq, &data(100, 0), false)),
            "one more than a run holds"
        );
        let run = c.take().unwrap();
        assert_eq!(run.head.len(), 14 + 20 + 20, "only the headers are copied");
        let want: Vec<Payload> = (0..MAX_SEGMENTS)
            .map(|src| Payload {
                src,
                at: 54,
                len: 100,
            })
            .collect();
        assert_eq!(run.payloads, want.as_slice());
    }

    #[test]
    fn out_of_order_other_flows_and_other_ports_do_not_join() {
        let mut c = Coalescer::default();
        let f = &mut Vec::new();
        assert!(push(&mut c, f, 3, seg4(1000, &data(1000, 1), false)));
        assert!(
            !push(&mut c, f, 3, seg4(3000, &data(1000, 2), false)),
            "a gap"
        );
        assert!(
            !push(&mut c, f, 4, seg4(2000, &data(1000, 2), false)),
            "another port"
        );
        let mut other = seg4(2000, &data(1000, 2), false);
        other[14 + 20 + 1] ^= 1; // source port
        assert!(!push(&mut c, f, 3, other), "another connection");
        let mut ack = seg4(2000, &data(1000, 2), false);
        ack[14 + 20 + 11] ^= 1; // acknowledgement number
        assert!(!push(&mut c, f, 3, ack), "another acknowledgement");
        assert!(
            !push(&mut c, f, 3, seg4(2000, &data(1200, 2), false)),
            "longer than the first"
        );
        let (_, frame, meta) = take(&mut c, f).unwrap();
        assert_eq!(meta, RxMeta::default(), "a run of one goes as it came");
        assert_eq!(frame, seg4(1000, &data(1000, 1), false));
    }

    #[test]
    fn ipv6_runs_merge_and_other_traffic_does_not_start_one() {
        let mk = |seq: u32, p: &[u8]| {
            let mut v = Vec::new();
            PacketBuilder::ethernet2([2; 6], [4; 6])
                .ipv6([1; 16], [2; 16], 62)
                .tcp(1, 2, seq, 100)
                .ack(5)
                .write(&mut v, p)
                .unwrap();
            v
        };
        let mut c = Coalescer::default();
        let f = &mut Vec::new();
        assert!(push(&mut c, f, 1, mk(7, &data(1200, 1))));
        assert!(push(&mut c, f, 1, mk(1207, &data(1200, 2))));
        let (_, mut frame, meta) = take(&mut c, f).unwrap();
        assert_eq!(meta.vnet.gso_type, 4);
        complete_and_check(&mut frame, &meta);
        // a SYN, UDP, a bare ACK: never merged
        let mut syn = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([1; 4], [2; 4], 64)
            .tcp(1, 2, 0, 100)
            .syn()
            .write(&mut syn, b"")
            .unwrap();
        assert!(!push(&mut c, f, 1, syn));
        let mut udp = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([1; 4], [2; 4], 64)
            .udp(1, 2)
            .write(&mut udp, &data(1000, 0))
            .unwrap();
        assert!(!push(&mut c, f, 1, udp));
        assert!(!push(&mut c, f, 1, seg4(5, b"", false)));
        assert!(c.take().is_none());
    }
}
