//! TAP devices as ports: every use of tun-rs (and so every ioctl) is here.
//!
//! Devices are opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (tun-rs
//! checks the kernel's features), non-blocking and close-on-exec. With the
//! virtio-net header, every frame read is preceded by a `virtio_net_hdr`
//! (checksum and segmentation offload state); the port strips it into
//! [`RxMeta`] and puts it back on send, so offloaded frames cross the switch
//! intact. Header and frame travel as pieces of one `readv`/`writev` (two,
//! or for a run of overlay segments merged for a pod, its headers and each
//! segment's payload): a frame (up to 64 kB with segmentation offload) is
//! copied only by the kernel, straight into the caller's buffer and out of
//! it.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};

use tun_rs::{DeviceBuilder, Layer, SyncDevice};

use super::port::{Port, RxMeta, VnetHdr};

/// What went wrong reading a TAP device, beyond the system call's own
/// errors (which stay `io::Error`s); carried inside an `io::Error` (kind
/// `Other`, as before), as the [`Port`] trait returns `io::Result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TapError {
    #[error("reading a frame from a TAP: {len} bytes, shorter than the virtio-net header")]
    ShortVnetHeader { len: usize },
}

impl From<TapError> for io::Error {
    fn from(e: TapError) -> io::Error {
        io::Error::other(e)
    }
}

pub struct TapPort {
    dev: SyncDevice,
    vnet_hdr: bool,
}

impl TapPort {
    /// Creates (or attaches to) the TAP device `name` in the current network
    /// namespace.
    pub fn create(name: &str, vnet_hdr: bool) -> io::Result<TapPort> {
        let dev = DeviceBuilder::new()
            .name(name)
            .layer(Layer::L2)
            .offload(vnet_hdr)
            .enable(false)
            .build_sync()?;
        dev.set_nonblocking(true)?;
        let vnet_hdr = vnet_hdr && dev.tcp_gso();
        Ok(TapPort { dev, vnet_hdr })
    }

    /// Creates a persistent TAP device (it outlives this process, so that a
    /// restart of the daemon does not take the pod's interface away).
    pub fn create_persistent(name: &str) -> io::Result<TapPort> {
        let tap = TapPort::create(name, true)?;
        tap.dev.persist()?;
        Ok(tap)
    }

    /// Attaches to the existing (persistent) TAP device `name` in the current
    /// network namespace, leaving its configuration and state alone. (Where
    /// no such device exists, the kernel creates a blank one: callers check
    /// first.)
    pub fn attach(name: &str) -> io::Result<TapPort> {
        let dev = DeviceBuilder::new()
            .name(name)
            .layer(Layer::L2)
            .offload(true)
            .inherit_enable_state()
            .build_sync()?;
        dev.set_nonblocking(true)?;
        let vnet_hdr = dev.tcp_gso();
        Ok(TapPort { dev, vnet_hdr })
    }

    pub fn name(&self) -> io::Result<String> {
        self.dev.name()
    }

    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }
}

fn would_block(e: io::Error) -> io::Result<bool> {
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

impl Port for TapPort {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, RxMeta)>> {
        let mut hdr = [0u8; VnetHdr::LEN];
        let n = if self.vnet_hdr {
            self.dev
                .recv_vectored(&mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)])
        } else {
            self.dev.recv(buf)
        };
        let n = match n {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        };
        if !self.vnet_hdr {
            return Ok(Some((n, RxMeta::default())));
        }
        let vnet = VnetHdr::parse(&hdr[..n.min(VnetHdr::LEN)])
            .ok_or(TapError::ShortVnetHeader { len: n })?;
        Ok(Some((
            n - VnetHdr::LEN,
            RxMeta {
                vnet,
                ..RxMeta::default()
            },
        )))
    }

    fn send(&mut self, frame: &[u8], meta: &RxMeta) -> io::Result<bool> {
        let r = if self.vnet_hdr {
            let mut hdr = [0u8; VnetHdr::LEN];
            meta.vnet.write(&mut hdr);
            self.dev
                .send_vectored(&[IoSlice::new(&hdr), IoSlice::new(frame)])
        } else {
            self.dev.send(frame)
        };
        r.map(|_| true).or_else(would_block)
    }

    /// The virtio-net header and the pieces in one `writev`: a merged run
    /// is copied once, by the kernel.
    fn send_pieces(&mut self, pieces: &[&[u8]], meta: &RxMeta) -> io::Result<bool> {
        if let [one] = pieces {
            return self.send(one, meta);
        }
        if !self.vnet_hdr || pieces.len() > MAX_PIECES {
            return self.send(&pieces.concat(), meta);
        }
        let mut hdr = [0u8; VnetHdr::LEN];
        meta.vnet.write(&mut hdr);
        let mut iov: [IoSlice; 1 + MAX_PIECES] = std::array::from_fn(|_| IoSlice::new(&[]));
        iov[0] = IoSlice::new(&hdr);
        for (slot, piece) in iov[1..].iter_mut().zip(pieces) {
            *slot = IoSlice::new(piece);
        }
        self.dev
            .send_vectored(&iov[..1 + pieces.len()])
            .map(|_| true)
            .or_else(would_block)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.dev.as_raw_fd())
    }
}

/// The most pieces one write takes as they are, more than a merged run has
/// (its headers and up to 64 segments' payloads); more are joined first.
const MAX_PIECES: usize = 128;
