//! TAP devices as ports: every use of tun-rs (and so every ioctl) is here.
//!
//! Devices are opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (tun-rs
//! checks the kernel's features), non-blocking and close-on-exec. With the
//! virtio-net header, every frame read is preceded by a `virtio_net_hdr`
//! (checksum and segmentation offload state); the port strips it into
//! [`RxMeta`] and puts it back on send, so offloaded frames cross the switch
//! intact.

use std::io;
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
    /// Reused for header + frame on send, and for reads.
    scratch: Vec<u8>,
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
        Ok(TapPort {
            dev,
            vnet_hdr,
            scratch: vec![0; 65_536 + VnetHdr::LEN],
        })
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
        Ok(TapPort {
            dev,
            vnet_hdr,
            scratch: vec![0; 65_536 + VnetHdr::LEN],
        })
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
        if !self.vnet_hdr {
            return match self.dev.recv(buf) {
                Ok(n) => Ok(Some((n, RxMeta::default()))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            };
        }
        let n = match self.dev.recv(&mut self.scratch) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        };
        let vnet =
            VnetHdr::parse(&self.scratch[..n]).ok_or(TapError::ShortVnetHeader { len: n })?;
        let len = (n - VnetHdr::LEN).min(buf.len());
        buf[..len].copy_from_slice(&self.scratch[VnetHdr::LEN..VnetHdr::LEN + len]);
        Ok(Some((
            len,
            RxMeta {
                vnet,
                ..RxMeta::default()
            },
        )))
    }

    fn send(&mut self, frame: &[u8], meta: &RxMeta) -> io::Result<bool> {
        let r = if self.vnet_hdr {
            self.scratch.clear();
            self.scratch.resize(VnetHdr::LEN, 0);
            meta.vnet.write(&mut self.scratch[..VnetHdr::LEN]);
            self.scratch.extend_from_slice(frame);
            let r = self.dev.send(&self.scratch);
            self.scratch.resize(65_536 + VnetHdr::LEN, 0);
            r
        } else {
            self.dev.send(frame)
        };
        r.map(|_| true).or_else(would_block)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.dev.as_raw_fd())
    }
}
