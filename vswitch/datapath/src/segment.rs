//! Software segmentation, checksum completion and IPv4 fragmentation for
//! frames that leave the node through the overlay.
//!
//! # What
//!
//! Pods are attached through TAP devices opened with `IFF_VNET_HDR` and the
//! offloads `TUN_F_CSUM | TSO4 | TSO6 | USO4 | USO6`. A frame read from such a
//! device may therefore be
//!
//! * a GSO super-frame (TCP or UDP, up to 64 KiB) that the "hardware" is
//!   expected to cut into `gso_size` pieces, and/or
//! * carry a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`): the L4 checksum
//!   field only holds the folded pseudo-header sum, and the "hardware" must
//!   finish it.
//!
//! The overlay (VXLAN to another node) has no such hardware, so [`for_wire`]
//! does the work in software and produces ordinary Ethernet frames with
//! complete checksums, each at most `14 + mtu` bytes:
//!
//! 1. no GSO, `NEEDS_CSUM`: the checksum is completed (`0` becomes `0xffff`
//!    when the field is at offset 6, i.e. UDP);
//! 2. TCP GSO (v4/v6): cut into `gso_size` segments; IP length/id/checksum,
//!    TCP sequence number, FIN/PSH (last segment only), CWR (first segment
//!    only) and the full TCP checksum are rewritten per segment;
//! 3. UDP GSO (`UDP_L4`, v4/v6): cut into `gso_size` datagrams, each with its
//!    own UDP length and checksum (and IPv4 id/length/checksum);
//! 4. non-GSO frames whose IP packet exceeds `mtu`: IPv4 without DF is
//!    fragmented per RFC 791 (also packets that already are fragments);
//!    IPv4 with DF and IPv6 yield [`SegError::TooBig`] so the caller can send
//!    ICMP "fragmentation needed" / ICMPv6 "packet too big";
//! 5. anything else that fits is copied unchanged.
//!
//! # Why this shape
//!
//! This runs on the packet path for all cross-node traffic, so it never
//! allocates (beyond growing the caller's reusable `out`/`frames`), and sums
//! checksums 8 bytes at a time into a `u64` with end-around carry (which is
//! equivalent to the RFC 1071 16-bit ones' complement sum, since 2^64 - 1 is
//! a multiple of 2^16 - 1). A GSO segment's payload is not copied at all: a
//! produced [`WireFrame`] is its rewritten headers (in `out`) followed by a
//! range of the pod's frame, and the caller hands both pieces to the kernel
//! in one `sendmsg`, which makes the only copy. Fragments and frames that
//! fit are copied once, into `out`.
//!
//! The input is never trusted: header lengths are taken from the packet
//! itself (virtio's `hdr_len` is only a hint and is ignored), every offset is
//! bounds checked, and garbage yields [`SegError::Malformed`], never a panic.
//! On error nothing is left behind in `out`/`frames`.
//!
//! # What is not handled
//!
//! * VLAN-tagged frames: copied/checksummed like any non-IP frame when they
//!   fit, but a too-big one is `TooBig` and GSO on one is `Unsupported`.
//! * `VIRTIO_NET_HDR_GSO_UDP` (UFO) and unknown GSO types: `Unsupported`.
//! * IPv6 extension headers are not walked: for GSO frames the transport
//!   header is taken to start at `csum_start` (which the kernel sets to the
//!   transport offset). A routing header's final destination is not used for
//!   the pseudo-header. IPv6 is never fragmented (no fragment header is
//!   generated), matching IPv6 semantics: the sender must shrink.
//! * Trailing bytes after the IP packet (Ethernet padding) are dropped from
//!   segments and fragments, kept when a fitting frame is copied unchanged.
//! * TCP urgent pointers are not adjusted across segments (like Linux).
//! * A GSO frame whose segments would not fit is `TooBig`, not re-segmented
//!   with a smaller size: the sender is expected to learn the path MTU.
//! * `TooBig` is also returned for too-big non-IP frames; the caller should
//!   only answer IPv4/IPv6 with ICMP.

use crate::wire::checksum::{self, fold};
use crate::wire::eth::HLEN as ETH_HLEN;
use crate::wire::ethertype::{IPV4 as ETHERTYPE_IPV4, IPV6 as ETHERTYPE_IPV6};
use crate::wire::ip_proto::{TCP as IPPROTO_TCP, UDP as IPPROTO_UDP};
use crate::wire::ipv4::{
    FLG_DF as IP_DF, FLG_MF as IP_MF, FLG_RF as IP_RF, MIN_HLEN as IPV4_MIN_HLEN,
    OFF_MASK as IP_OFFMASK,
};
use crate::wire::ipv6::HLEN as IPV6_HLEN;
use crate::wire::tcp::MIN_HLEN as TCP_MIN_HLEN;
use crate::wire::tcp::{FLG_CWR as TCP_CWR, FLG_FIN as TCP_FIN, FLG_PSH as TCP_PSH};
use crate::wire::udp::HLEN as UDP_HLEN;
use crate::wire::vnet::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4,
};
use crate::wire::{VnetHdr, eth, ipv4, ipv6, tcp, udp};

/// Why a frame could not be made fit for the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegError {
    /// The frame (or each of its GSO segments) does not fit into `mtu` and may
    /// not be fragmented (IPv4 DF, IPv6, GSO, non-IP). The caller may answer
    /// with ICMP "fragmentation needed" / ICMPv6 "packet too big" carrying
    /// this MTU.
    #[error("making a frame fit the wire: packet exceeds MTU {mtu}")]
    TooBig { mtu: usize },
    /// Truncated headers, inconsistent lengths, `gso_size` 0, bad offsets.
    #[error("reading a frame for the wire: malformed frame or virtio-net header")]
    Malformed,
    /// A valid but unsupported offload (UFO, unknown GSO type, GSO on a
    /// non-IP frame).
    #[error("segmenting a frame: unsupported offload")]
    Unsupported,
}

/// One frame made for the wire: its first `own` bytes are the next ones in
/// `out` (following the previous frame's), the rest is `tail_len` bytes of
/// the pod's frame from `tail_at`, not copied (a GSO segment's payload;
/// empty for a copied frame or a fragment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireFrame {
    pub own: usize,
    pub tail_at: usize,
    pub tail_len: usize,
}

impl WireFrame {
    fn copied(own: usize) -> WireFrame {
        WireFrame {
            own,
            tail_at: 0,
            tail_len: 0,
        }
    }

    /// The frame's length on the wire.
    pub fn len(&self) -> usize {
        self.own + self.tail_len
    }
}

/// Turns one frame as a pod sent it (with its virtio-net header) into frames
/// fit for the wire: appends their own bytes to `out` back to back and
/// pushes each one's shape to `frames` (see [`WireFrame`]: a segment's
/// payload stays in `frame`). `mtu` is the inner IP MTU of the overlay;
/// every produced frame is at most `14 + mtu` bytes.
///
/// On error, `out` and `frames` are left as they were.
pub fn for_wire(
    frame: &[u8],
    vnet: &VnetHdr,
    mtu: usize,
    out: &mut Vec<u8>,
    frames: &mut Vec<WireFrame>,
) -> Result<(), SegError> {
    let (out_mark, frames_mark) = (out.len(), frames.len());
    let result = match vnet.gso_type & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE => single(frame, vnet, mtu, out, frames),
        VIRTIO_NET_HDR_GSO_TCPV4 => gso(frame, vnet, mtu, Family::V4, L4::Tcp, out, frames),
        VIRTIO_NET_HDR_GSO_TCPV6 => gso(frame, vnet, mtu, Family::V6, L4::Tcp, out, frames),
        VIRTIO_NET_HDR_GSO_UDP_L4 => match ethertype(frame)? {
            ETHERTYPE_IPV4 => gso(frame, vnet, mtu, Family::V4, L4::Udp, out, frames),
            ETHERTYPE_IPV6 => gso(frame, vnet, mtu, Family::V6, L4::Udp, out, frames),
            _ => Err(SegError::Unsupported),
        },
        _ => Err(SegError::Unsupported),
    };
    if result.is_err() {
        out.truncate(out_mark);
        frames.truncate(frames_mark);
    }
    result
}

// ---------------------------------------------------------------------------
// Checksums
// ---------------------------------------------------------------------------

// In `wire::checksum`: `checksum::add` and `fold` (RFC 1071) and the IPv4
// header checksum.

fn ipv4_header_checksum(hdr: &[u8]) -> u16 {
    checksum::ipv4_header(hdr)
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    fn proto(self) -> u8 {
        match self {
            L4::Tcp => IPPROTO_TCP,
            L4::Udp => IPPROTO_UDP,
        }
    }
    /// Offset of the checksum field in the L4 header.
    fn csum_offset(self) -> usize {
        match self {
            L4::Tcp => tcp::CHECKSUM.start,
            L4::Udp => udp::CHECKSUM.start,
        }
    }
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn ethertype(frame: &[u8]) -> Result<u16, SegError> {
    if frame.len() < ETH_HLEN {
        return Err(SegError::Malformed);
    }
    Ok(get16(frame, eth::ETHERTYPE.start))
}

/// A validated IPv4 header: returns (header length, end of the IP packet in
/// the frame). Bytes after the end are Ethernet padding.
fn parse_ipv4(frame: &[u8]) -> Result<(usize, usize), SegError> {
    let ip = frame.get(ETH_HLEN..).ok_or(SegError::Malformed)?;
    if ip.len() < IPV4_MIN_HLEN || ip[ipv4::VER_IHL] >> 4 != 4 {
        return Err(SegError::Malformed);
    }
    let ihl = usize::from(ip[ipv4::VER_IHL] & 0x0f) * 4;
    let tot_len = usize::from(get16(ip, ipv4::LENGTH.start));
    if ihl < IPV4_MIN_HLEN || tot_len < ihl || tot_len > ip.len() {
        return Err(SegError::Malformed);
    }
    Ok((ihl, ETH_HLEN + tot_len))
}

/// A validated IPv6 header: returns the end of the IP packet in the frame.
fn parse_ipv6(frame: &[u8]) -> Result<usize, SegError> {
    let ip = frame.get(ETH_HLEN..).ok_or(SegError::Malformed)?;
    if ip.len() < IPV6_HLEN || ip[ipv6::VER_TC_FLOW.start] >> 4 != 6 {
        return Err(SegError::Malformed);
    }
    let end = ETH_HLEN + IPV6_HLEN + usize::from(get16(ip, ipv6::LENGTH.start));
    if end > frame.len() {
        return Err(SegError::Malformed);
    }
    Ok(end)
}

/// A two-byte value to be written at an offset of the *original* frame while
/// copying it out (used to complete a checksum without mutating the input).
#[derive(Clone, Copy)]
struct Patch {
    at: usize,
    bytes: [u8; 2],
}

impl Patch {
    /// Applies the patch to `dst`, a copy of `frame[src_start..]` (or of a
    /// prefix of it); bytes that fall outside the copy are skipped.
    fn apply(self, dst: &mut [u8], src_start: usize) {
        for (k, byte) in self.bytes.into_iter().enumerate() {
            if let Some(i) = (self.at + k).checked_sub(src_start)
                && let Some(d) = dst.get_mut(i)
            {
                *d = byte;
            }
        }
    }
}

/// Appends `frame` unchanged (but patched).
fn emit_copy(frame: &[u8], patch: Option<Patch>, out: &mut Vec<u8>, frames: &mut Vec<WireFrame>) {
    let start = out.len();
    out.extend_from_slice(frame);
    if let Some(p) = patch {
        p.apply(&mut out[start..], 0);
    }
    frames.push(WireFrame::copied(frame.len()));
}

// ---------------------------------------------------------------------------
// Cases 1, 4, 5: one frame in, not GSO
// ---------------------------------------------------------------------------

fn single(
    frame: &[u8],
    vnet: &VnetHdr,
    mtu: usize,
    out: &mut Vec<u8>,
    frames: &mut Vec<WireFrame>,
) -> Result<(), SegError> {
    let ethertype = ethertype(frame)?;
    let patch = if vnet.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        Some(complete_checksum(frame, vnet, ethertype)?)
    } else {
        None
    };

    if frame.len() - ETH_HLEN <= mtu {
        emit_copy(frame, patch, out, frames);
        return Ok(());
    }

    match ethertype {
        ETHERTYPE_IPV4 => fragment_ipv4(frame, mtu, patch, out, frames),
        ETHERTYPE_IPV6 => {
            // Only Ethernet padding might make it too big; never fragment.
            let end = parse_ipv6(frame)?;
            if end - ETH_HLEN > mtu {
                return Err(SegError::TooBig { mtu });
            }
            emit_copy(&frame[..end], patch, out, frames);
            Ok(())
        }
        _ => Err(SegError::TooBig { mtu }),
    }
}

/// Computes the value that completes a partial (`NEEDS_CSUM`) checksum.
fn complete_checksum(frame: &[u8], vnet: &VnetHdr, ethertype: u16) -> Result<Patch, SegError> {
    // The summed region ends with the IP packet (padding is not part of it)
    // and must not start inside the IP header.
    let (min_start, end) = match ethertype {
        ETHERTYPE_IPV4 => {
            let (ihl, end) = parse_ipv4(frame)?;
            (ETH_HLEN + ihl, end)
        }
        ETHERTYPE_IPV6 => (ETH_HLEN + IPV6_HLEN, parse_ipv6(frame)?),
        _ => (ETH_HLEN, frame.len()),
    };
    let start = usize::from(vnet.csum_start);
    let at = start + usize::from(vnet.csum_offset);
    if start < min_start || at + 2 > end {
        return Err(SegError::Malformed);
    }
    // The field holds the pseudo-header sum, so summing it along with the
    // rest yields the full sum.
    let mut csum = !fold(checksum::add(0, &frame[start..end]));
    // UDP (and UDP-Lite/DCCP, which also keep it at offset 6) transmit a
    // zero result as all ones, zero meaning "no checksum". For the others
    // 0xffff would be equally valid (ones' complement -0 == +0), so this
    // never hurts.
    if csum == 0 && vnet.csum_offset == 6 {
        csum = 0xffff;
    }
    Ok(Patch {
        at,
        bytes: csum.to_be_bytes(),
    })
}

/// Collects the options of an IPv4 header that must be copied into every
/// fragment (copy flag, bit 0x80 of the type, set; RFC 791), padded with
/// end-of-list bytes to a multiple of 4. Returns their length in `buf`.
fn copied_options(opts: &[u8], buf: &mut [u8; 40]) -> Result<usize, SegError> {
    let mut len = 0;
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => break,  // end of option list
            1 => i += 1, // no-operation, not copied
            kind => {
                let olen = usize::from(*opts.get(i + 1).ok_or(SegError::Malformed)?);
                if olen < 2 || i + olen > opts.len() {
                    return Err(SegError::Malformed);
                }
                if kind & 0x80 != 0 {
                    // The copied options never exceed the original ones, which
                    // fit into 40 bytes.
                    buf[len..len + olen].copy_from_slice(&opts[i..i + olen]);
                    len += olen;
                }
                i += olen;
            }
        }
    }
    let padded = len.next_multiple_of(4);
    buf[len..padded].fill(0);
    Ok(padded)
}

/// Case 4: fragments an IPv4 packet that does not fit (RFC 791).
fn fragment_ipv4(
    frame: &[u8],
    mtu: usize,
    patch: Option<Patch>,
    out: &mut Vec<u8>,
    frames: &mut Vec<WireFrame>,
) -> Result<(), SegError> {
    let (ihl, end) = parse_ipv4(frame)?;
    if end - ETH_HLEN <= mtu {
        // It only looked too big because of trailing padding.
        emit_copy(&frame[..end], patch, out, frames);
        return Ok(());
    }
    let frag = get16(frame, ETH_HLEN + ipv4::FLG_OFF.start);
    if frag & IP_DF != 0 {
        return Err(SegError::TooBig { mtu });
    }

    let payload_start = ETH_HLEN + ihl;
    let payload = &frame[payload_start..end];
    let orig_offset = usize::from(frag & IP_OFFMASK) * 8;
    // A fragment reaching past the 64 KiB datagram limit cannot be cut into
    // pieces whose offsets fit the 13-bit field.
    if orig_offset + payload.len() > 0xffff {
        return Err(SegError::Malformed);
    }

    let mut opts = [0u8; 40];
    let later_hlen =
        IPV4_MIN_HLEN + copied_options(&frame[ETH_HLEN + IPV4_MIN_HLEN..payload_start], &mut opts)?;
    // Every fragment but the last carries a multiple of 8 payload bytes; the
    // header (with options) must leave room for at least 8.
    let first_max = mtu.saturating_sub(ihl) & !7;
    let later_max = mtu.saturating_sub(later_hlen) & !7;
    if first_max == 0 || later_max == 0 {
        return Err(SegError::TooBig { mtu });
    }

    let kept_flags = frag & (IP_RF | IP_MF);
    out.reserve(payload.len() + (payload.len() / later_max + 1) * (ETH_HLEN + ihl));
    let mut rel = 0;
    loop {
        let first = rel == 0;
        let (hlen, max) = if first {
            (ihl, first_max)
        } else {
            (later_hlen, later_max)
        };
        let take = max.min(payload.len() - rel);
        let last = rel + take == payload.len();

        let start = out.len();
        if first {
            out.extend_from_slice(&frame[..payload_start]);
        } else {
            out.extend_from_slice(&frame[..ETH_HLEN + IPV4_MIN_HLEN]);
            out.extend_from_slice(&opts[..later_hlen - IPV4_MIN_HLEN]);
        }
        let data_start = out.len();
        out.extend_from_slice(&payload[rel..rel + take]);
        if let Some(p) = patch {
            p.apply(&mut out[data_start..], payload_start + rel);
        }

        let ip = &mut out[start + ETH_HLEN..data_start];
        ip[ipv4::VER_IHL] = 0x40 | (hlen / 4) as u8;
        put16(ip, ipv4::LENGTH.start, (hlen + take) as u16);
        let more = if last { kept_flags & IP_MF } else { IP_MF };
        let offset = ((orig_offset + rel) / 8) as u16;
        put16(
            ip,
            ipv4::FLG_OFF.start,
            (kept_flags & IP_RF) | more | offset,
        );
        put16(ip, ipv4::CHECKSUM.start, 0);
        let csum = ipv4_header_checksum(ip);
        put16(ip, ipv4::CHECKSUM.start, csum);
        frames.push(WireFrame::copied(ETH_HLEN + hlen + take));

        rel += take;
        if last {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------
// Cases 2, 3: GSO
// ---------------------------------------------------------------------------

fn gso(
    frame: &[u8],
    vnet: &VnetHdr,
    mtu: usize,
    family: Family,
    l4: L4,
    out: &mut Vec<u8>,
    frames: &mut Vec<WireFrame>,
) -> Result<(), SegError> {
    let ethertype = ethertype(frame)?;
    // Locate the transport header and the end of the IP packet, and the
    // address part of the pseudo-header sum.
    let (l4_start, end, addr_sum) = match family {
        Family::V4 => {
            if ethertype != ETHERTYPE_IPV4 {
                return Err(SegError::Malformed);
            }
            let (ihl, end) = parse_ipv4(frame)?;
            let ip = &frame[ETH_HLEN..];
            // A super-frame is never a fragment.
            if ip[ipv4::PROTOCOL] != l4.proto()
                || get16(ip, ipv4::FLG_OFF.start) & (IP_MF | IP_OFFMASK) != 0
            {
                return Err(SegError::Malformed);
            }
            (ETH_HLEN + ihl, end, checksum::add(0, &ip[ipv4::ADDRS]))
        }
        Family::V6 => {
            if ethertype != ETHERTYPE_IPV6 {
                return Err(SegError::Malformed);
            }
            let end = parse_ipv6(frame)?;
            let ip = &frame[ETH_HLEN..];
            // Extension headers are not walked: the transport header starts
            // at csum_start (0 if the sender did not set it: no extensions).
            let fixed = ETH_HLEN + IPV6_HLEN;
            let l4_start = match usize::from(vnet.csum_start) {
                0 => fixed,
                s => s,
            };
            if l4_start < fixed || (l4_start == fixed && ip[ipv6::NXT_HDR] != l4.proto()) {
                return Err(SegError::Malformed);
            }
            (l4_start, end, checksum::add(0, &ip[ipv6::ADDRS]))
        }
    };

    // The real header length, from the packet (virtio's hdr_len is a hint).
    let l4_hlen = match l4 {
        L4::Tcp => {
            let doff = frame
                .get(l4_start + tcp::DATA_OFF)
                .filter(|_| l4_start + TCP_MIN_HLEN <= end)
                .map(|b| usize::from(b >> 4) * 4)
                .ok_or(SegError::Malformed)?;
            if doff < TCP_MIN_HLEN {
                return Err(SegError::Malformed);
            }
            doff
        }
        L4::Udp => UDP_HLEN,
    };
    let hdr_end = l4_start + l4_hlen;
    if hdr_end > end {
        return Err(SegError::Malformed);
    }

    let mss = usize::from(vnet.gso_size);
    if mss == 0 {
        return Err(SegError::Malformed);
    }
    let payload = &frame[hdr_end..end];
    if hdr_end - ETH_HLEN + mss.min(payload.len()) > mtu {
        return Err(SegError::TooBig { mtu });
    }

    let headers = &frame[..hdr_end];
    let pseudo = checksum::add(addr_sum, &[0, l4.proto()]);
    let ip_id = get16(frame, ETH_HLEN + ipv4::IDENT.start);
    // Only read for TCP: a UDP header is just 8 bytes.
    let (seq, tcp_flags) = match l4 {
        L4::Tcp => (
            u32::from_be_bytes(frame[l4_start..][tcp::SEQ_NUM].try_into().unwrap()),
            frame[l4_start + tcp::FLAGS],
        ),
        L4::Udp => (0, 0),
    };
    let count = payload.len().div_ceil(mss).max(1);
    out.reserve(count * hdr_end);

    // `chunks` yields nothing for an empty payload; still send the headers.
    let empty: &[u8] = &[];
    let chunks = payload.chunks(mss);
    let chunks = chunks.chain(payload.is_empty().then_some(empty));
    for (i, chunk) in chunks.enumerate() {
        let offset = i * mss;
        let last = i + 1 == count;
        let start = out.len();
        // The segment's headers are copied and rewritten; its payload
        // stays where it is (`chunk`, in the pod's frame).
        out.extend_from_slice(headers);
        let seg = &mut out[start..];
        let seg_len = hdr_end + chunk.len();

        match family {
            Family::V4 => {
                let ip = &mut seg[ETH_HLEN..l4_start];
                put16(ip, ipv4::LENGTH.start, (seg_len - ETH_HLEN) as u16);
                put16(ip, ipv4::IDENT.start, ip_id.wrapping_add(i as u16));
                put16(ip, ipv4::CHECKSUM.start, 0);
                let csum = ipv4_header_checksum(ip);
                put16(ip, ipv4::CHECKSUM.start, csum);
            }
            Family::V6 => put16(
                seg,
                ETH_HLEN + ipv6::LENGTH.start,
                (seg_len - ETH_HLEN - IPV6_HLEN) as u16,
            ),
        }

        let l4_len = seg_len - l4_start;
        let th = &mut seg[l4_start..];
        match l4 {
            L4::Tcp => {
                // Sequence numbers wrap modulo 2^32.
                th[tcp::SEQ_NUM].copy_from_slice(&seq.wrapping_add(offset as u32).to_be_bytes());
                let mut flags = tcp_flags;
                if !last {
                    flags &= !(TCP_FIN | TCP_PSH);
                }
                if i != 0 {
                    flags &= !TCP_CWR;
                }
                th[tcp::FLAGS] = flags;
            }
            L4::Udp => put16(th, udp::LENGTH.start, l4_len as u16),
        }
        let at = l4.csum_offset();
        put16(th, at, 0);
        // The transport header's length is even (a multiple of 4, or 8),
        // so the payload's sum may be added on.
        let sum = checksum::add(checksum::add(pseudo + l4_len as u64, th), chunk);
        let mut csum = !fold(sum);
        if csum == 0 && l4 == L4::Udp {
            csum = 0xffff;
        }
        put16(th, at, csum);
        frames.push(WireFrame {
            own: hdr_end,
            tail_at: hdr_end + offset,
            tail_len: chunk.len(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vnet::VIRTIO_NET_HDR_GSO_UDP;
    use etherparse::{Ipv4Header, Ipv6Header, TcpHeader, UdpHeader};

    const SRC4: [u8; 4] = [10, 1, 2, 3];
    const DST4: [u8; 4] = [10, 4, 5, 6];
    const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    // --- Independent reference arithmetic (deliberately naive) -----------

    /// Plain 16-bit ones' complement sum, folded, the textbook way.
    fn naive_sum(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for (i, b) in data.iter().enumerate() {
            s += if i % 2 == 0 {
                u32::from(*b) << 8
            } else {
                u32::from(*b)
            };
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    fn add16(a: u16, b: u16) -> u16 {
        let s = u32::from(a) + u32::from(b);
        ((s & 0xffff) + (s >> 16)) as u16
    }

    /// The partial checksum the kernel leaves for NEEDS_CSUM: the folded,
    /// uncomplemented pseudo-header sum.
    fn pseudo_partial(src: &[u8], dst: &[u8], proto: u8, l4_len: usize) -> u16 {
        let mut s = add16(naive_sum(src), naive_sum(dst));
        s = add16(s, u16::from(proto));
        if src.len() == 16 {
            s = add16(s, (l4_len >> 16) as u16);
        }
        add16(s, l4_len as u16)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    // --- Frame builders ----------------------------------------------------

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// IPv4 header; the checksum is left 0 (the code under test must not
    /// care for GSO, and fragmentation recomputes it anyway) unless `csum`.
    fn ipv4_hdr(proto: u8, l4_len: usize, id: u16, frag: u16, options: &[u8]) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let hlen = 20 + options.len();
        let mut h = vec![0x40 | (hlen / 4) as u8, 0];
        h.extend_from_slice(&((hlen + l4_len) as u16).to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&frag.to_be_bytes());
        h.extend_from_slice(&[64, proto, 0, 0]);
        h.extend_from_slice(&SRC4);
        h.extend_from_slice(&DST4);
        h.extend_from_slice(options);
        let c = !naive_sum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    fn ipv6_hdr(next: u8, payload_len: usize) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(payload_len as u16).to_be_bytes());
        h.extend_from_slice(&[next, 64]);
        h.extend_from_slice(&SRC6);
        h.extend_from_slice(&DST6);
        h
    }

    /// TCP header with 12 bytes of options (NOP NOP timestamp) and the
    /// given partial checksum.
    fn tcp_hdr(seq: u32, flags: u8, partial: u16) -> Vec<u8> {
        let mut h = vec![0x1f, 0x90, 0xc3, 0x50];
        h.extend_from_slice(&seq.to_be_bytes());
        h.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        h.extend_from_slice(&[(32 / 4) << 4, flags, 0xff, 0xff]);
        h.extend_from_slice(&partial.to_be_bytes());
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        h
    }

    fn udp_hdr(len: usize, partial: u16) -> Vec<u8> {
        let mut h = vec![0x30, 0x39, 0x12, 0xb5];
        h.extend_from_slice(&(len as u16).to_be_bytes());
        h.extend_from_slice(&partial.to_be_bytes());
        h
    }

    const ACK: u8 = 0x10;

    struct Built {
        frame: Vec<u8>,
        vnet: VnetHdr,
        payload: Vec<u8>,
    }

    fn tcp4_frame(payload: Vec<u8>, flags: u8, gso_size: u16, ip_opts: &[u8], df: bool) -> Built {
        let l4_len = 32 + payload.len();
        let frag = if df { IP_DF } else { 0 };
        let mut frame = eth(ETHERTYPE_IPV4);
        frame.extend(ipv4_hdr(IPPROTO_TCP, l4_len, 0xfffe, frag, ip_opts));
        let tcp = tcp_hdr(0xffff_f000, flags, pseudo_partial(&SRC4, &DST4, 6, l4_len));
        built(frame, tcp, payload, gso_size, VIRTIO_NET_HDR_GSO_TCPV4, 16)
    }

    fn tcp6_frame(payload: Vec<u8>, flags: u8, gso_size: u16) -> Built {
        let l4_len = 32 + payload.len();
        let mut frame = eth(ETHERTYPE_IPV6);
        frame.extend(ipv6_hdr(IPPROTO_TCP, l4_len));
        let tcp = tcp_hdr(7, flags, pseudo_partial(&SRC6, &DST6, 6, l4_len));
        built(frame, tcp, payload, gso_size, VIRTIO_NET_HDR_GSO_TCPV6, 16)
    }

    /// Ethernet and IP headers, then the L4 header `l4` (its checksum at
    /// `csum_offset`) and `payload`, with the virtio-net header a TAP gives
    /// such a frame (GSO when `gso_size` > 0).
    fn built(
        mut frame: Vec<u8>,
        l4: impl IntoIterator<Item = u8>,
        payload: Vec<u8>,
        gso_size: u16,
        gso: u8,
        csum_offset: u16,
    ) -> Built {
        let csum_start = frame.len() as u16;
        frame.extend(l4);
        let hdr_len = frame.len() as u16;
        frame.extend_from_slice(&payload);
        let vnet = VnetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: if gso_size > 0 { gso } else { 0 },
            hdr_len,
            gso_size,
            csum_start,
            csum_offset,
        };
        Built {
            frame,
            vnet,
            payload,
        }
    }

    fn udp4_frame(payload: Vec<u8>, gso_size: u16, frag: u16) -> Built {
        let l4_len = 8 + payload.len();
        let mut frame = eth(ETHERTYPE_IPV4);
        frame.extend(ipv4_hdr(IPPROTO_UDP, l4_len, 0x1234, frag, &[]));
        let udp = udp_hdr(l4_len, pseudo_partial(&SRC4, &DST4, 17, l4_len));
        built(frame, udp, payload, gso_size, VIRTIO_NET_HDR_GSO_UDP_L4, 6)
    }

    fn udp6_frame(payload: Vec<u8>, gso_size: u16) -> Built {
        let l4_len = 8 + payload.len();
        let mut frame = eth(ETHERTYPE_IPV6);
        frame.extend(ipv6_hdr(IPPROTO_UDP, l4_len));
        let udp = udp_hdr(l4_len, pseudo_partial(&SRC6, &DST6, 17, l4_len));
        built(frame, udp, payload, gso_size, VIRTIO_NET_HDR_GSO_UDP_L4, 6)
    }

    fn run(b: &Built, mtu: usize) -> Result<Vec<Vec<u8>>, SegError> {
        let mut out = Vec::new();
        let mut shapes = Vec::new();
        for_wire(&b.frame, &b.vnet, mtu, &mut out, &mut shapes)?;
        Ok(joined(&b.frame, &out, &shapes, mtu))
    }

    /// The frames `for_wire` made, each its own bytes then its tail.
    fn joined(frame: &[u8], out: &[u8], shapes: &[WireFrame], mtu: usize) -> Vec<Vec<u8>> {
        assert_eq!(shapes.iter().map(|w| w.own).sum::<usize>(), out.len());
        let mut frames = Vec::new();
        let mut at = 0;
        for w in shapes {
            let l = w.len();
            assert!(l <= ETH_HLEN + mtu, "frame of {l} bytes exceeds mtu {mtu}");
            let mut f = out[at..at + w.own].to_vec();
            f.extend_from_slice(&frame[w.tail_at..w.tail_at + w.tail_len]);
            frames.push(f);
            at += w.own;
        }
        frames
    }

    // --- Verifiers (etherparse only) -----------------------------------------

    /// Checks the IPv4 header of a wire frame; returns it and its payload.
    fn check_ipv4(f: &[u8]) -> (Ipv4Header, &[u8]) {
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        let (ip, rest) = Ipv4Header::from_slice(&f[14..]).expect("ipv4 header");
        assert_eq!(
            ip.header_checksum,
            ip.calc_header_checksum(),
            "ipv4 header checksum"
        );
        assert_eq!(usize::from(ip.total_len), f.len() - 14, "ipv4 total length");
        (ip, rest)
    }

    fn check_ipv6(f: &[u8]) -> (Ipv6Header, &[u8]) {
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        let (ip, rest) = Ipv6Header::from_slice(&f[14..]).expect("ipv6 header");
        assert_eq!(
            usize::from(ip.payload_length),
            rest.len(),
            "ipv6 payload length"
        );
        (ip, rest)
    }

    enum Ip {
        V4(Ipv4Header),
        V6(Ipv6Header),
    }

    fn check_ip(f: &[u8]) -> (Ip, &[u8]) {
        if f[12] == 0x08 {
            let (h, p) = check_ipv4(f);
            (Ip::V4(h), p)
        } else {
            let (h, p) = check_ipv6(f);
            (Ip::V6(h), p)
        }
    }

    fn check_tcp(f: &[u8]) -> (Ip, TcpHeader, Vec<u8>) {
        let (ip, l4) = check_ip(f);
        let (tcp, payload) = TcpHeader::from_slice(l4).expect("tcp header");
        let want = match &ip {
            Ip::V4(h) => tcp.calc_checksum_ipv4(h, payload),
            Ip::V6(h) => tcp.calc_checksum_ipv6(h, payload),
        }
        .unwrap();
        assert_eq!(tcp.checksum, want, "tcp checksum");
        (ip, tcp, payload.to_vec())
    }

    fn check_udp(f: &[u8]) -> (Ip, UdpHeader, Vec<u8>) {
        let (ip, l4) = check_ip(f);
        let (udp, payload) = UdpHeader::from_slice(l4).expect("udp header");
        assert_eq!(usize::from(udp.length), l4.len(), "udp length");
        let want = match &ip {
            Ip::V4(h) => udp.calc_checksum_ipv4(h, payload),
            Ip::V6(h) => udp.calc_checksum_ipv6(h, payload),
        }
        .unwrap();
        assert_eq!(udp.checksum, want, "udp checksum");
        assert_ne!(udp.checksum, 0, "udp checksum must never be 0");
        (ip, udp, payload.to_vec())
    }

    // --- Checksum helpers --------------------------------------------------

    #[test]
    fn checksum_rfc1071_example() {
        // RFC 1071 section 3: the sum of these bytes is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(checksum::add(0, &data)), 0xddf2);
    }

    #[test]
    fn checksum_matches_naive_on_all_lengths() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for len in 0..300 {
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            assert_eq!(fold(checksum::add(0, &data)), naive_sum(&data), "len {len}");
            // All-ones data stresses the carries.
            let ones = vec![0xff; len];
            assert_eq!(
                fold(checksum::add(0, &ones)),
                naive_sum(&ones),
                "ones len {len}"
            );
        }
        // A large starting sum must carry correctly.
        let data = pattern(65535, 3);
        let seeded = checksum::add(u64::MAX - 5, &data);
        assert_eq!(fold(seeded), add16(naive_sum(&data), fold(u64::MAX - 5)));
    }

    // --- Case 2: TCP GSO -----------------------------------------------------

    fn check_tcp_segments(b: &Built, frames: &[Vec<u8>], mss: usize, first_flags: u8, v4: bool) {
        let expected = b.payload.len().div_ceil(mss);
        assert_eq!(frames.len(), expected);
        let l4 = usize::from(b.vnet.csum_start);
        let seq0 = TcpHeader::from_slice(&b.frame[l4..])
            .unwrap()
            .0
            .sequence_number;
        let mut joined = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let last = i + 1 == frames.len();
            let (ip, tcp, payload) = check_tcp(f);
            if let Ip::V4(h) = ip {
                assert!(v4);
                assert_eq!(h.identification, 0xfffeu16.wrapping_add(i as u16), "ip id");
                assert!(h.dont_fragment);
                assert!(!h.more_fragments);
            }
            assert_eq!(tcp.sequence_number, seq0.wrapping_add((i * mss) as u32));
            assert_eq!(tcp.acknowledgment_number, 0x0102_0304);
            assert!(tcp.ack);
            assert_eq!(tcp.psh, last && first_flags & TCP_PSH != 0, "psh seg {i}");
            assert_eq!(tcp.fin, last && first_flags & TCP_FIN != 0, "fin seg {i}");
            assert_eq!(tcp.cwr, i == 0 && first_flags & TCP_CWR != 0, "cwr seg {i}");
            assert_eq!(
                tcp.options.as_slice(),
                &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]
            );
            assert_eq!(
                payload.len(),
                if last { b.payload.len() - i * mss } else { mss }
            );
            joined.extend_from_slice(&payload);
        }
        assert_eq!(joined, b.payload);
    }

    #[test]
    fn tcp4_gso_is_segmented() {
        let flags = ACK | TCP_PSH | TCP_FIN | TCP_CWR;
        let mut b = tcp4_frame(pattern(10000, 1), flags, 1400, &[], true);
        b.vnet.gso_type |= VIRTIO_NET_HDR_GSO_ECN;
        let frames = run(&b, 1500).unwrap();
        check_tcp_segments(&b, &frames, 1400, flags, true);
    }

    #[test]
    fn tcp4_gso_with_ip_options_and_bad_hdr_len() {
        // IHL 6 (one NOP NOP NOP EOL word); hdr_len from the sender is wrong
        // and must be ignored.
        let mut b = tcp4_frame(pattern(5000, 2), ACK | TCP_PSH, 1000, &[1, 1, 1, 0], true);
        b.vnet.hdr_len = 54;
        let frames = run(&b, 1500).unwrap();
        for f in &frames {
            assert_eq!(f[14], 0x46);
        }
        check_tcp_segments(&b, &frames, 1000, ACK | TCP_PSH, true);
    }

    #[test]
    fn tcp6_gso_is_segmented() {
        let flags = ACK | TCP_PSH | TCP_CWR;
        let b = tcp6_frame(pattern(10000, 3), flags, 1400);
        let frames = run(&b, 1500).unwrap();
        check_tcp_segments(&b, &frames, 1400, flags, false);
    }

    #[test]
    fn tcp_gso_single_segment_and_exact_fit() {
        // Payload smaller than gso_size: one segment, checksum completed.
        let b = tcp4_frame(pattern(300, 4), ACK | TCP_FIN, 1448, &[], true);
        let frames = run(&b, 1500).unwrap();
        check_tcp_segments(&b, &frames, 1448, ACK | TCP_FIN, true);
        // Segments of exactly mtu bytes: 20 + 32 + 1448 = 1500.
        let b = tcp4_frame(pattern(1448 * 3, 5), ACK, 1448, &[], true);
        let frames = run(&b, 1500).unwrap();
        assert!(frames.iter().all(|f| f.len() == 1514));
        check_tcp_segments(&b, &frames, 1448, ACK, true);
    }

    #[test]
    fn gso_payloads_are_not_copied() {
        // TCP (v4, with IP options) and UDP: each segment's own bytes are its
        // headers only; its payload is the frame's, in order.
        let cases = [
            (
                tcp4_frame(pattern(5000, 30), ACK, 1000, &[1, 1, 1, 1], true),
                14 + 24 + 32,
            ),
            (udp6_frame(pattern(3000, 31), 1000), 14 + 40 + 8),
        ];
        for (b, hdr_end) in cases {
            let (mut out, mut shapes) = (Vec::new(), Vec::new());
            for_wire(&b.frame, &b.vnet, 1500, &mut out, &mut shapes).unwrap();
            assert_eq!(out.len(), shapes.len() * hdr_end);
            let mut next = hdr_end;
            for w in &shapes {
                assert_eq!((w.own, w.tail_at), (hdr_end, next));
                next += w.tail_len;
            }
            assert_eq!(next, b.frame.len(), "every payload byte, once");
        }
    }

    #[test]
    fn tcp_gso_too_big_for_mtu() {
        let b = tcp4_frame(pattern(10000, 6), ACK, 1448, &[], true);
        assert_eq!(run(&b, 1450), Err(SegError::TooBig { mtu: 1450 }));
        let b = tcp6_frame(pattern(10000, 6), ACK, 1440);
        // 40 + 32 + 1440 = 1512 > 1500.
        assert_eq!(run(&b, 1500), Err(SegError::TooBig { mtu: 1500 }));
    }

    // --- Case 3: UDP GSO ------------------------------------------------------

    fn check_udp_segments(b: &Built, frames: &[Vec<u8>], mss: usize) {
        assert_eq!(frames.len(), b.payload.len().div_ceil(mss));
        let mut joined = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let (ip, udp, payload) = check_udp(f);
            if let Ip::V4(h) = ip {
                assert_eq!(h.identification, 0x1234 + i as u16);
                assert!(!h.more_fragments);
            }
            assert_eq!((udp.source_port, udp.destination_port), (12345, 4789));
            let want = if i + 1 == frames.len() {
                b.payload.len() - i * mss
            } else {
                mss
            };
            assert_eq!(payload.len(), want);
            joined.extend_from_slice(&payload);
        }
        assert_eq!(joined, b.payload);
    }

    #[test]
    fn udp4_gso_is_segmented() {
        let b = udp4_frame(pattern(10000, 7), 1400, IP_DF);
        let frames = run(&b, 1500).unwrap();
        check_udp_segments(&b, &frames, 1400);
    }

    #[test]
    fn udp6_gso_is_segmented() {
        let b = udp6_frame(pattern(9999, 8), 1200);
        let frames = run(&b, 1500).unwrap();
        check_udp_segments(&b, &frames, 1200);
    }

    #[test]
    fn udp_gso_too_big_for_mtu() {
        let b = udp6_frame(pattern(5000, 8), 1472);
        assert_eq!(run(&b, 1500), Err(SegError::TooBig { mtu: 1500 }));
    }

    // --- Case 1: checksum completion -----------------------------------------

    #[test]
    fn tcp4_and_tcp6_checksum_completed() {
        let b = tcp4_frame(pattern(1001, 9), ACK | TCP_PSH, 0, &[], true);
        let frames = run(&b, 1500).unwrap();
        assert_eq!(frames.len(), 1);
        let (_, tcp, payload) = check_tcp(&frames[0]);
        assert_eq!(payload, b.payload);
        assert!(tcp.psh);
        // Nothing but the checksum changed.
        let mut expect = b.frame.clone();
        expect[14 + 20 + 16..14 + 20 + 18].copy_from_slice(&tcp.checksum.to_be_bytes());
        assert_eq!(frames[0], expect);

        let b = tcp6_frame(pattern(777, 10), ACK, 0);
        let frames = run(&b, 1500).unwrap();
        assert_eq!(frames.len(), 1);
        let (_, _, payload) = check_tcp(&frames[0]);
        assert_eq!(payload, b.payload);
    }

    #[test]
    fn udp_checksum_completed_v4_v6() {
        let b = udp4_frame(pattern(513, 11), 0, 0);
        let frames = run(&b, 1500).unwrap();
        assert_eq!(check_udp(&frames[0]).2, b.payload);
        let b = udp6_frame(pattern(100, 12), 0);
        let frames = run(&b, 1500).unwrap();
        assert_eq!(check_udp(&frames[0]).2, b.payload);
    }

    #[test]
    fn udp_zero_checksum_becomes_ffff() {
        // Choose the last two payload bytes so that the full sum is 0xffff,
        // i.e. the computed checksum is 0.
        let mut payload = pattern(100, 13);
        payload[98] = 0;
        payload[99] = 0;
        let b = udp4_frame(payload.clone(), 0, 0);
        let (mut udp, _) = UdpHeader::from_slice(&b.frame[34..]).unwrap();
        udp.checksum = 0;
        let (ip, _) = Ipv4Header::from_slice(&b.frame[14..]).unwrap();
        let c = udp.calc_checksum_ipv4(&ip, &payload).unwrap();
        payload[98..100].copy_from_slice(&c.to_be_bytes());
        let b = udp4_frame(payload, 0, 0);
        let frames = run(&b, 1500).unwrap();
        let (_, udp, _) = check_udp(&frames[0]);
        assert_eq!(udp.checksum, 0xffff);
    }

    #[test]
    fn bad_csum_offsets_are_malformed() {
        let mut b = udp4_frame(pattern(10, 14), 0, 0);
        b.vnet.csum_start = b.frame.len() as u16 - 1;
        assert_eq!(run(&b, 1500), Err(SegError::Malformed));
        let mut b = udp4_frame(pattern(10, 14), 0, 0);
        b.vnet.csum_start = 20; // inside the IP header
        assert_eq!(run(&b, 1500), Err(SegError::Malformed));
        let mut b = udp4_frame(pattern(10, 14), 0, 0);
        b.vnet.csum_offset = u16::MAX;
        assert_eq!(run(&b, 1500), Err(SegError::Malformed));
    }

    // --- Cases 4, 5: fragmentation and plain copies ----------------------------

    struct Frag {
        offset: usize,
        more: bool,
        options: Vec<u8>,
        payload: Vec<u8>,
    }

    fn parse_frags(frames: &[Vec<u8>]) -> Vec<Frag> {
        frames
            .iter()
            .map(|f| {
                let (ip, payload) = check_ipv4(f);
                assert!(!ip.dont_fragment);
                assert_eq!(ip.identification, 0x1234);
                Frag {
                    offset: usize::from(ip.fragment_offset.value()) * 8,
                    more: ip.more_fragments,
                    options: ip.options.as_slice().to_vec(),
                    payload: payload.to_vec(),
                }
            })
            .collect()
    }

    /// Reassembles fragments by their offsets; checks they are contiguous.
    fn reassemble(frags: &[Frag], base: usize) -> Vec<u8> {
        let mut data = Vec::new();
        for (i, fr) in frags.iter().enumerate() {
            assert_eq!(fr.offset, base + data.len(), "fragment {i} offset");
            if fr.more {
                assert_eq!(fr.payload.len() % 8, 0, "fragment {i} size");
            }
            data.extend_from_slice(&fr.payload);
        }
        data
    }

    #[test]
    fn ipv4_fragmented_without_df() {
        // A 4000-byte UDP datagram with a partial checksum, mtu 1500.
        let b = udp4_frame(pattern(4000, 15), 0, 0);
        let frames = run(&b, 1500).unwrap();
        assert_eq!(frames.len(), 3);
        let frags = parse_frags(&frames);
        assert!(frags[..2].iter().all(|f| f.more && f.payload.len() == 1480));
        assert!(!frags[2].more);
        let datagram = reassemble(&frags, 0);
        // The reassembled datagram has a valid, completed UDP checksum.
        let (udp, payload) = UdpHeader::from_slice(&datagram).unwrap();
        assert_eq!(payload, &b.payload[..]);
        let ip = Ipv4Header::from_slice(&b.frame[14..]).unwrap().0;
        assert_eq!(udp.checksum, udp.calc_checksum_ipv4(&ip, payload).unwrap());

        // An mtu that leaves a non-multiple of 8 for the payload.
        let frags = parse_frags(&run(&b, 1499).unwrap());
        assert_eq!(frags[0].payload.len(), 1472);
        assert_eq!(reassemble(&frags, 0), datagram);
    }

    #[test]
    fn ipv4_fragment_options_follow_copy_flag() {
        // Router alert (copied), record route (not copied), NOP, EOL.
        let opts = [0x94, 4, 0, 0, 0x07, 7, 4, 0, 0, 0, 0, 1];
        let payload = pattern(3000, 16);
        let mut frame = eth(ETHERTYPE_IPV4);
        frame.extend(ipv4_hdr(253, payload.len(), 0x1234, 0, &opts));
        frame.extend_from_slice(&payload);
        let b = Built {
            frame,
            vnet: VnetHdr::default(),
            payload,
        };
        let frames = run(&b, 1003).unwrap();
        let frags = parse_frags(&frames);
        assert_eq!(frags[0].options, opts);
        for f in &frags[1..] {
            assert_eq!(f.options, [0x94, 4, 0, 0]);
        }
        assert_eq!(frags[0].payload.len(), 968);
        assert_eq!(frags[1].payload.len(), 976);
        assert_eq!(reassemble(&frags, 0), b.payload);
    }

    #[test]
    fn ipv4_fragment_is_refragmented() {
        // A middle fragment (offset 1480, MF) of 2960 bytes.
        let payload = pattern(2960, 17);
        let mut frame = eth(ETHERTYPE_IPV4);
        frame.extend(ipv4_hdr(
            IPPROTO_UDP,
            payload.len(),
            0x1234,
            IP_MF | 185,
            &[],
        ));
        frame.extend_from_slice(&payload);
        let b = Built {
            frame,
            vnet: VnetHdr::default(),
            payload,
        };
        let frags = parse_frags(&run(&b, 1300).unwrap());
        assert!(frags.iter().all(|f| f.more), "MF kept on all pieces");
        assert_eq!(reassemble(&frags, 1480), b.payload);

        // The last fragment (no MF): only the last piece lacks MF.
        let payload = pattern(2001, 18);
        let mut frame = eth(ETHERTYPE_IPV4);
        frame.extend(ipv4_hdr(IPPROTO_UDP, payload.len(), 0x1234, 185, &[]));
        frame.extend_from_slice(&payload);
        let b = Built {
            frame,
            vnet: VnetHdr::default(),
            payload,
        };
        let frags = parse_frags(&run(&b, 1300).unwrap());
        assert_eq!(frags.len(), 2);
        assert!(frags[0].more && !frags[1].more);
        assert_eq!(reassemble(&frags, 1480), b.payload);
    }

    #[test]
    fn ipv4_with_df_too_big() {
        let b = tcp4_frame(pattern(3000, 19), ACK, 0, &[], true);
        let mut out = vec![0xaa; 3];
        let mut shapes = vec![WireFrame::copied(3)];
        let r = for_wire(&b.frame, &b.vnet, 1500, &mut out, &mut shapes);
        assert_eq!(r, Err(SegError::TooBig { mtu: 1500 }));
        assert_eq!(
            (out, shapes),
            (vec![0xaa; 3], vec![WireFrame::copied(3)]),
            "outputs untouched"
        );
    }

    #[test]
    fn ipv6_too_big() {
        let b = udp6_frame(pattern(1500, 20), 0);
        assert_eq!(run(&b, 1500), Err(SegError::TooBig { mtu: 1500 }));
        // Exactly fitting is fine.
        let b = udp6_frame(pattern(1452, 20), 0);
        assert_eq!(run(&b, 1500).unwrap()[0].len(), 1514);
    }

    #[test]
    fn mtu_too_small_to_fragment() {
        let b = udp4_frame(pattern(100, 21), 0, 0);
        assert_eq!(run(&b, 27), Err(SegError::TooBig { mtu: 27 }));
    }

    #[test]
    fn fitting_frames_copied_unchanged() {
        let b = udp4_frame(pattern(200, 22), 0, 0);
        let vnet = VnetHdr::default();
        let mut out = vec![1, 2];
        let mut shapes = vec![WireFrame::copied(2)];
        for_wire(&b.frame, &vnet, 1500, &mut out, &mut shapes).unwrap();
        // ARP request, with Ethernet padding.
        let mut arp = eth(0x0806);
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp.resize(60, 0);
        for_wire(&arp, &vnet, 1500, &mut out, &mut shapes).unwrap();
        let lens: Vec<usize> = shapes.iter().map(|w| w.own).collect();
        assert_eq!(lens, [2, b.frame.len(), 60]);
        assert!(shapes.iter().all(|w| w.tail_len == 0), "copied whole");
        assert_eq!(&out[2..2 + b.frame.len()], &b.frame[..]);
        assert_eq!(&out[2 + b.frame.len()..], &arp[..]);
    }

    // --- Garbage --------------------------------------------------------------

    #[test]
    fn unsupported_gso_types() {
        let mut b = udp4_frame(pattern(3000, 23), 1000, 0);
        b.vnet.gso_type = VIRTIO_NET_HDR_GSO_UDP;
        assert_eq!(run(&b, 1500), Err(SegError::Unsupported));
        b.vnet.gso_type = 7;
        assert_eq!(run(&b, 1500), Err(SegError::Unsupported));
    }

    #[test]
    fn malformed_gso() {
        let mut b = tcp4_frame(pattern(3000, 24), ACK, 0, &[], true);
        b.vnet.gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
        b.vnet.gso_size = 0;
        assert_eq!(run(&b, 1500), Err(SegError::Malformed));
        // Wrong family.
        b.vnet.gso_size = 1000;
        b.vnet.gso_type = VIRTIO_NET_HDR_GSO_TCPV6;
        assert_eq!(run(&b, 1500), Err(SegError::Malformed));
        // TCP GSO on a UDP packet.
        let mut b = udp4_frame(pattern(3000, 24), 1000, 0);
        b.vnet.gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
        assert_eq!(run(&b, 1500), Err(SegError::Malformed));
        // TCP data offset below 5.
        let mut b = tcp6_frame(pattern(3000, 24), ACK, 1000);
        b.frame[54 + 12] = 0x40;
        assert_eq!(run(&b, 1500), Err(SegError::Malformed));
        // IPv4 total length disagreeing with the frame.
        let mut b = tcp4_frame(pattern(3000, 24), ACK, 1000, &[], true);
        b.frame[16] = 0xff;
        assert_eq!(run(&b, 1500), Err(SegError::Malformed));
    }

    #[test]
    fn truncated_frames_are_malformed() {
        let builds = [
            tcp4_frame(pattern(3000, 25), ACK, 1000, &[], true),
            tcp6_frame(pattern(3000, 25), ACK, 1000),
            udp4_frame(pattern(3000, 25), 1000, 0),
            udp6_frame(pattern(3000, 25), 1000),
            udp4_frame(pattern(3000, 25), 0, 0),
        ];
        for b in builds {
            for len in 0..b.frame.len() {
                let cut = Built {
                    frame: b.frame[..len].to_vec(),
                    vnet: b.vnet,
                    payload: vec![],
                };
                assert_eq!(run(&cut, 1500), Err(SegError::Malformed), "len {len}");
            }
        }
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn fuzz_never_panics() {
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        let seeds = [
            tcp4_frame(pattern(3000, 26), ACK | TCP_FIN, 700, &[1, 1, 1, 0], true),
            tcp6_frame(pattern(3000, 26), ACK, 700),
            udp4_frame(pattern(3000, 26), 700, 0),
            udp6_frame(pattern(3000, 26), 700),
            udp4_frame(pattern(3000, 26), 0, 0),
        ];
        let mut out = Vec::new();
        let mut shapes = Vec::new();
        let mut oks = 0;
        for iter in 0..30_000 {
            let r = rng.next();
            let (frame, mut vnet) = if iter % 4 == 0 {
                // Pure random bytes, with an IP ethertype half of the time.
                let len = (rng.next() % 200) as usize;
                let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if len >= 14 && r & 1 == 0 {
                    f[12..14].copy_from_slice(if r & 2 == 0 { &[8, 0] } else { &[0x86, 0xdd] });
                    f[14.min(len - 1)] = if r & 2 == 0 { 0x45 } else { 0x60 };
                }
                (f, VnetHdr::default())
            } else {
                // A valid frame with a few bytes flipped and maybe truncated.
                let s = &seeds[(r % seeds.len() as u64) as usize];
                let mut f = s.frame.clone();
                for _ in 0..(rng.next() % 4) {
                    let i = (rng.next() % 80) as usize % f.len();
                    f[i] = rng.next() as u8;
                }
                if rng.next().is_multiple_of(4) {
                    f.truncate((rng.next() as usize) % (f.len() + 1));
                }
                (f, s.vnet)
            };
            let r2 = rng.next();
            match r2 % 8 {
                0 => vnet.gso_type = [0, 1, 3, 4, 5, 0x81, 0x85, 9][(r2 >> 8) as usize % 8],
                1 => vnet.gso_size = (r2 >> 8) as u16 % 3000,
                2 => vnet.csum_start = (r2 >> 8) as u16 % 200,
                3 => vnet.csum_offset = (r2 >> 8) as u16 % 40,
                4 => vnet.flags = (r2 >> 8) as u8,
                _ => {}
            }
            let mtu = [1500, 1450, 576, 68, 20, 9000][(r2 >> 32) as usize % 6];
            out.clear();
            shapes.clear();
            if for_wire(&frame, &vnet, mtu, &mut out, &mut shapes).is_ok() {
                oks += 1;
                // every tail lies inside the frame; joined() checks the rest
                assert!(shapes.iter().all(|w| w.tail_at + w.tail_len <= frame.len()));
                joined(&frame, &out, &shapes, mtu);
            } else {
                assert!(out.is_empty() && shapes.is_empty());
            }
        }
        // The fuzzer must actually reach the success paths too.
        assert!(oks > 1000, "only {oks} successes");
    }
}
