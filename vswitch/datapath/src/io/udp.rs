//! The overlay's UDP sockets as ports.
//!
//! - [`OverlaySocket`]: bound to this node's overlay address and the VXLAN
//!   port; every datagram from every node arrives here, with the sender's
//!   address in [`RxMeta::peer`] (the datapath checks it is a node).
//! - [`TunnelPort`]: one per other node, a UDP socket connected to that
//!   node's VXLAN port. A frame sent to it goes out as one or more VXLAN
//!   datagrams: a pod's segmentation-offload frame is cut into packets that
//!   fit the overlay and partial checksums are completed first
//!   ([`crate::segment`]), since the far end's pods get plain frames. A
//!   segment's payload is not copied: each datagram goes to the kernel as
//!   three pieces, the VXLAN header, the segment's rewritten headers and its
//!   payload where it lies in the pod's frame.
//!
//! Both use the kernel's UDP offloads where it has them: a tunnel port
//! hands the datagrams of one offload frame to the kernel in one `sendmsg`
//! (`UDP_SEGMENT`: equal-sized datagrams the kernel cuts apart, or passes
//! whole to a receiver that takes them so), and the overlay socket asks for
//! them whole (`UDP_GRO`) and hands them out one by one. Either falls back
//! to one datagram per system call.
//!
//! Sockets are non-blocking. A datagram the kernel refuses for a reason
//! other than a full buffer (the node's address unreachable, its vswitchd
//! down: ICMP errors on a connected socket) is dropped and counted, as a
//! router drops: the pods' transports retransmit.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg, setsockopt,
    sockopt,
};

use super::port::{Port, RxMeta};
use crate::overlay;
use crate::segment::{self, SegError, WireFrame};

/// The overlay socket's receive buffer, in bytes (the kernel doubles it
/// for its bookkeeping). Every node's datagrams wait here until the worker
/// reads them, and an offload batch (`UDP_GRO`) is up to 64 kB: the
/// kernel's default, 208 KiB, held three of them, and at 7 Gbit/s across
/// nodes dropped one datagram in eleven. 8 MiB holds some 6 ms at 10
/// Gbit/s; it is the kernel's memory, fixed per node, not per pod.
pub const RECEIVE_BUFFER: usize = 8 << 20;

pub struct OverlaySocket {
    sock: UdpSocket,
    /// What one receive brought: datagrams of `seg` bytes (the last may be
    /// shorter) from `peer`, handed out from `at`.
    batch: Vec<u8>,
    len: usize,
    at: usize,
    seg: usize,
    peer: Option<IpAddr>,
    /// The kernel's count of datagrams the socket dropped (`SO_RXQ_OVFL`,
    /// a wrapping 32-bit count: `dropped` adds up its steps).
    overflow: u32,
    dropped: u64,
}

impl OverlaySocket {
    /// Binds `addr` (this node's overlay address) on `port`.
    pub fn bind(addr: IpAddr, port: u16) -> io::Result<OverlaySocket> {
        let sock = UdpSocket::bind(SocketAddr::new(addr, port))?;
        sock.set_nonblocking(true)?;
        // Whole offload batches where the kernel can (Linux 5.0 and up).
        if let Err(e) = setsockopt(&sock, sockopt::UdpGroSegment, &true) {
            tracing::debug!("overlay: no UDP_GRO: {e}");
        }
        // Room for a burst (see RECEIVE_BUFFER): past net.core.rmem_max,
        // which takes CAP_NET_ADMIN (vswitchd has it); without it, as much
        // as the limit allows.
        if let Err(e) = setsockopt(&sock, sockopt::RcvBufForce, &RECEIVE_BUFFER) {
            setsockopt(&sock, sockopt::RcvBuf, &RECEIVE_BUFFER)?;
            tracing::warn!(
                "overlay: receive buffer limited by net.core.rmem_max ({e}); \
                 bursts from other nodes may be dropped (raise it, or run with CAP_NET_ADMIN)"
            );
        }
        // The kernel's drop count with every datagram, for the counters.
        setsockopt(&sock, sockopt::RxqOvfl, &1)?;
        Ok(OverlaySocket {
            sock,
            batch: vec![0; 65_536],
            len: 0,
            at: 0,
            seg: 0,
            peer: None,
            overflow: 0,
            dropped: 0,
        })
    }

    /// One receive: a datagram, or several of one size back to back.
    fn fill(&mut self) -> io::Result<bool> {
        let mut cmsg = nix::cmsg_space!(i32, u32);
        let mut iov = [IoSliceMut::new(&mut self.batch)];
        let msg = match recvmsg::<SockaddrStorage>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EAGAIN) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let mut seg = msg.bytes;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::UdpGroSegments(n) if n > 0 => seg = n as usize,
                    ControlMessageOwned::RxqOvfl(n) => {
                        self.dropped += u64::from(n.wrapping_sub(self.overflow));
                        self.overflow = n;
                    }
                    _ => {}
                }
            }
        }
        self.peer = msg.address.and_then(|a: SockaddrStorage| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| IpAddr::V6(v6.ip()).to_canonical())
                })
        });
        self.len = msg.bytes;
        self.at = 0;
        self.seg = seg.max(1);
        Ok(true)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }
}

impl Port for OverlaySocket {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, RxMeta)>> {
        if self.at >= self.len && !self.fill()? {
            return Ok(None);
        }
        let end = (self.at + self.seg).min(self.len);
        let n = (end - self.at).min(buf.len());
        buf[..n].copy_from_slice(&self.batch[self.at..self.at + n]);
        self.at = end;
        Ok(Some((
            n,
            RxMeta {
                peer: self.peer,
                ..RxMeta::default()
            },
        )))
    }

    /// Datagrams the socket dropped (its receive buffer full), as of the
    /// last datagram received: the kernel reports its count with each.
    fn rx_dropped(&self) -> u64 {
        self.dropped
    }

    /// Nothing is sent through the receiving socket.
    fn send(&mut self, _frame: &[u8], _meta: &RxMeta) -> io::Result<bool> {
        Ok(true)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.sock.as_raw_fd())
    }
}

/// What a tunnel port did not deliver.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TunnelDrops {
    /// Refused by the kernel (unreachable node, its vswitchd down).
    pub refused: u64,
    /// Frames that could not be cut for the overlay (malformed, a segment
    /// larger than the overlay's MTU).
    pub unfit: u64,
}

pub struct TunnelPort {
    sock: UdpSocket,
    header: [u8; overlay::HLEN],
    mtu: usize,
    /// The frame being sent, cut for the wire: each piece's own bytes
    /// (headers, or a whole copied frame) back to back, and their shapes.
    own: Vec<u8>,
    shapes: Vec<WireFrame>,
    /// Whether the kernel takes `UDP_SEGMENT` (until it refuses once).
    gso: bool,
    pub drops: TunnelDrops,
}

/// The most datagrams one `UDP_SEGMENT` send may carry (the kernel's
/// `UDP_MAX_SEGMENTS`), and the most bytes (one UDP datagram's payload).
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65_000;

impl TunnelPort {
    /// A socket from this node's overlay address (`local`, any port) to
    /// `peer`, for inner packets of at most `mtu` bytes.
    pub fn connect(
        local: IpAddr,
        peer: SocketAddr,
        vni: u32,
        mtu: usize,
    ) -> io::Result<TunnelPort> {
        let sock = UdpSocket::bind(SocketAddr::new(local, 0))?;
        sock.connect(peer)?;
        sock.set_nonblocking(true)?;
        Ok(TunnelPort {
            sock,
            header: overlay::header(vni),
            mtu,
            own: Vec::with_capacity(65_536 + 4096),
            shapes: Vec::with_capacity(64),
            gso: true,
            drops: TunnelDrops::default(),
        })
    }

    /// Sends equal-sized frames (the last may be shorter; at most
    /// [`GSO_MAX_SEGMENTS`]) as VXLAN datagrams in one system call, each
    /// datagram as three pieces of the message: the VXLAN header, the
    /// frame's own bytes (a segment's headers, copied and rewritten) and its
    /// tail in `frame` (a segment's payload, which only the kernel copies).
    /// `None`: the kernel refused the offload (the caller sends them one by
    /// one).
    fn send_batch(
        &mut self,
        frame: &[u8],
        own: &[u8],
        shapes: &[WireFrame],
        size: usize,
    ) -> Option<io::Result<bool>> {
        debug_assert!(shapes.len() <= GSO_MAX_SEGMENTS);
        let mut iov: [IoSlice; 3 * GSO_MAX_SEGMENTS] = std::array::from_fn(|_| IoSlice::new(&[]));
        let mut at = 0;
        for (three, w) in iov.chunks_mut(3).zip(shapes) {
            three[0] = IoSlice::new(&self.header);
            three[1] = IoSlice::new(&own[at..at + w.own]);
            three[2] = IoSlice::new(&frame[w.tail_at..w.tail_at + w.tail_len]);
            at += w.own;
        }
        let pieces = 3 * shapes.len();
        let seg = (overlay::HLEN + size) as u16;
        let r = sendmsg::<SockaddrStorage>(
            self.sock.as_raw_fd(),
            &iov[..pieces],
            &[ControlMessage::UdpGsoSegments(&seg)],
            MsgFlags::MSG_DONTWAIT,
            None,
        );
        match r {
            Ok(_) => Some(Ok(true)),
            Err(nix::errno::Errno::EAGAIN) => Some(Ok(false)),
            Err(e @ (nix::errno::Errno::EIO | nix::errno::Errno::EINVAL)) => {
                tracing::info!(
                    "overlay: the kernel refuses UDP_SEGMENT ({e}); one datagram per send"
                );
                self.gso = false;
                None
            }
            Err(e) => {
                self.drops.refused += 1;
                tracing::debug!("overlay: {e}");
                Some(Ok(true))
            }
        }
    }

    /// Sends one datagram (the header, the frame's own bytes and its tail
    /// as three pieces). `Ok(false)`: the socket's buffer is full.
    fn send_one(&mut self, own: &[u8], tail: &[u8]) -> io::Result<bool> {
        match sendmsg::<SockaddrStorage>(
            self.sock.as_raw_fd(),
            &[
                IoSlice::new(&self.header),
                IoSlice::new(own),
                IoSlice::new(tail),
            ],
            &[],
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(_) => Ok(true),
            Err(nix::errno::Errno::EAGAIN) => Ok(false),
            Err(e) => {
                self.drops.refused += 1;
                tracing::debug!("overlay: {e}");
                Ok(true)
            }
        }
    }
}

impl Port for TunnelPort {
    /// Nothing arrives on the sending socket (replies come to the
    /// overlay's socket); errors the kernel queued are read and counted.
    fn recv(&mut self, _buf: &mut [u8]) -> io::Result<Option<(usize, RxMeta)>> {
        if let Ok(Some(_)) = self.sock.take_error() {
            self.drops.refused += 1;
        }
        Ok(None)
    }

    fn send(&mut self, frame: &[u8], meta: &RxMeta) -> io::Result<bool> {
        let plain = meta.vnet.flags & 1 == 0 && !meta.is_gso();
        if plain && frame.len() <= 14 + self.mtu {
            return self.send_one(frame, &[]);
        }
        let (mut own, mut shapes) = (
            std::mem::take(&mut self.own),
            std::mem::take(&mut self.shapes),
        );
        own.clear();
        shapes.clear();
        let r = match segment::for_wire(frame, &meta.vnet, self.mtu, &mut own, &mut shapes) {
            Ok(()) => 'sent: {
                // Equal segments (an offload frame cut up): in batches.
                let size = shapes[0].len();
                let n = shapes.len();
                if self.gso
                    && n > 1
                    && shapes[..n - 1].iter().all(|w| w.len() == size)
                    && shapes[n - 1].len() <= size
                {
                    let per = GSO_MAX_SEGMENTS
                        .min(GSO_MAX_BYTES / (overlay::HLEN + size))
                        .max(1);
                    let mut result = Ok(true);
                    let mut at = 0;
                    for (i, batch) in shapes.chunks(per).enumerate() {
                        let own_len: usize = batch.iter().map(|w| w.own).sum();
                        let sent = self.send_batch(frame, &own[at..at + own_len], batch, size);
                        at += own_len;
                        match sent {
                            Some(Ok(true)) => {}
                            Some(Ok(false)) if i == 0 => {
                                result = Ok(false);
                                break;
                            }
                            Some(Ok(false)) => {
                                self.drops.refused += 1;
                                break;
                            }
                            Some(Err(e)) => {
                                result = Err(e);
                                break;
                            }
                            None if i == 0 => break,
                            None => break 'sent Ok(true),
                        }
                    }
                    if self.gso {
                        break 'sent result;
                    }
                }
                let mut at = 0;
                let mut result = Ok(true);
                for (i, w) in shapes.iter().enumerate() {
                    let tail = &frame[w.tail_at..w.tail_at + w.tail_len];
                    match self.send_one(&own[at..at + w.own], tail) {
                        Ok(true) => {}
                        // Only the first segment may wait (the caller
                        // retries the whole frame); later ones are lost,
                        // as on a full link.
                        Ok(false) if i == 0 => {
                            result = Ok(false);
                            break;
                        }
                        Ok(false) => {
                            self.drops.refused += 1;
                            break;
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                    at += w.own;
                }
                result
            }
            Err(e) => {
                self.drops.unfit += 1;
                if !matches!(e, SegError::TooBig { .. }) {
                    tracing::debug!("overlay: frame not sent: {e:?}");
                }
                Ok(true)
            }
        };
        self.own = own;
        self.shapes = shapes;
        r
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.sock.as_raw_fd())
    }
}
