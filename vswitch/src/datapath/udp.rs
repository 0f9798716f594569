//! The overlay's UDP sockets as ports.
//!
//! - [`OverlaySocket`]: bound to this node's overlay address and the VXLAN
//!   port; every datagram from every node arrives here, with the sender's
//!   address in [`RxMeta::peer`] (the datapath checks it is a node).
//! - [`TunnelPort`]: one per other node, a UDP socket connected to that
//!   node's VXLAN port. A frame sent to it goes out as one or more VXLAN
//!   datagrams: a pod's segmentation-offload frame is cut into packets that
//!   fit the overlay and partial checksums are completed first
//!   ([`super::segment`]), since the far end's pods get plain frames.
//!
//! Sockets are non-blocking. A datagram the kernel refuses for a reason
//! other than a full buffer (the node's address unreachable, its vswitchd
//! down: ICMP errors on a connected socket) is dropped and counted, as a
//! router drops: the pods' transports retransmit.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use super::overlay;
use super::port::{Port, RxMeta};
use super::segment::{self, SegError};

pub struct OverlaySocket {
    sock: UdpSocket,
}

impl OverlaySocket {
    /// Binds `addr` (this node's overlay address) on `port`.
    pub fn bind(addr: IpAddr, port: u16) -> io::Result<OverlaySocket> {
        let sock = UdpSocket::bind(SocketAddr::new(addr, port))?;
        sock.set_nonblocking(true)?;
        Ok(OverlaySocket { sock })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }
}

impl Port for OverlaySocket {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, RxMeta)>> {
        match self.sock.recv_from(buf) {
            Ok((n, from)) => Ok(Some((
                n,
                RxMeta {
                    peer: Some(from.ip().to_canonical()),
                    ..RxMeta::default()
                },
            ))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
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
    /// Segments of the frame being sent, back to back, and their lengths.
    segments: Vec<u8>,
    lens: Vec<usize>,
    /// One datagram: VXLAN header and frame.
    datagram: Vec<u8>,
    pub drops: TunnelDrops,
}

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
            segments: Vec::with_capacity(65_536 + 4096),
            lens: Vec::with_capacity(64),
            datagram: Vec::with_capacity(65_536),
            drops: TunnelDrops::default(),
        })
    }

    /// Sends one datagram. `Ok(false)`: the socket's buffer is full.
    fn send_one(&mut self, frame: &[u8]) -> io::Result<bool> {
        self.datagram.clear();
        self.datagram.extend_from_slice(&self.header);
        self.datagram.extend_from_slice(frame);
        match self.sock.send(&self.datagram) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
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
            return self.send_one(frame);
        }
        let (mut segments, mut lens) = (
            std::mem::take(&mut self.segments),
            std::mem::take(&mut self.lens),
        );
        segments.clear();
        lens.clear();
        let r = match segment::for_wire(frame, &meta.vnet, self.mtu, &mut segments, &mut lens) {
            Ok(()) => {
                let mut at = 0;
                let mut result = Ok(true);
                for (i, n) in lens.iter().enumerate() {
                    match self.send_one(&segments[at..at + n]) {
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
                    at += n;
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
        self.segments = segments;
        self.lens = lens;
        r
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.sock.as_raw_fd())
    }
}
