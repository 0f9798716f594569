//! Ports: where frames come from and go to. One trait, two kinds:
//! in-memory ports now (tests, benchmarks, in-process pods) and TAP devices
//! (with the daemon). A TAP opened with `IFF_VNET_HDR` puts a virtio-net
//! header before every frame; the port strips it on receive and hands it
//! over in [`RxMeta`], so that offloads (checksum, GSO) can be passed
//! through later without changing the datapath.

use std::collections::VecDeque;
use std::io;

pub use crate::RxMeta;
pub use crate::wire::VnetHdr;

pub trait Port: Send {
    /// Receives one frame into `buf`: its length and metadata, or `None` when
    /// nothing is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, RxMeta)>>;
    /// Sends one frame. `Ok(false)`: it would block; the caller keeps the
    /// frame and waits until the port is writable.
    fn send(&mut self, frame: &[u8], meta: &RxMeta) -> io::Result<bool>;
    /// Sends one frame given as pieces, in order (a merged run: headers,
    /// then payloads where they lie). Ports that can write pieces as they
    /// are (a TAP's `writev`) do; the others get them joined.
    fn send_pieces(&mut self, pieces: &[&[u8]], meta: &RxMeta) -> io::Result<bool> {
        match pieces {
            [one] => self.send(one, meta),
            _ => self.send(&pieces.concat(), meta),
        }
    }
    /// The file descriptor to poll, for ports that have one.
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Frames for the switch that the port's socket dropped before the
    /// switch read them, as the kernel counts them (the overlay's socket,
    /// its receive buffer full); zero where the port cannot tell.
    fn rx_dropped(&self) -> u64 {
        0
    }

    /// The in-memory port behind this one, if it is one (tests, benchmarks).
    fn as_mem(&mut self) -> Option<&mut MemPort> {
        None
    }
}

/// An in-memory port: two queues. The owner of the switch pushes frames
/// into `rx` (as if the pod sent them) and takes them from `tx`. A bounded
/// `tx` models a full TAP: sends beyond it would block.
#[derive(Debug, Default)]
pub struct MemPort {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
    pub tx_limit: Option<usize>,
    /// Spare buffers, reused so that the steady state does not allocate.
    pool: Vec<Vec<u8>>,
}

impl MemPort {
    pub fn new() -> MemPort {
        MemPort::default()
    }

    /// Returns a buffer to the pool.
    pub fn recycle(&mut self, mut b: Vec<u8>) {
        b.clear();
        self.pool.push(b);
    }

    /// Takes the spare buffers (to hand them to another port).
    pub fn take_pool(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.pool)
    }

    pub fn give_pool(&mut self, pool: Vec<Vec<u8>>) {
        self.pool.extend(pool);
    }
}

impl Port for MemPort {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, RxMeta)>> {
        let Some(frame) = self.rx.pop_front() else {
            return Ok(None);
        };
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        self.recycle(frame);
        Ok(Some((n, RxMeta::default())))
    }

    fn send(&mut self, frame: &[u8], _meta: &RxMeta) -> io::Result<bool> {
        if self.tx_limit.is_some_and(|l| self.tx.len() >= l) {
            return Ok(false);
        }
        let mut b = self.pool.pop().unwrap_or_default();
        b.extend_from_slice(frame);
        self.tx.push_back(b);
        Ok(true)
    }

    fn as_mem(&mut self) -> Option<&mut MemPort> {
        Some(self)
    }
}

/// A port over a Unix datagram socket, one frame per datagram: a port with
/// a real descriptor (readiness, `EAGAIN`) that needs no privilege, for the
/// event loop's tests and for connecting test processes to a switch.
pub struct SocketPort(std::os::unix::net::UnixDatagram);

impl SocketPort {
    pub fn new(sock: std::os::unix::net::UnixDatagram) -> io::Result<SocketPort> {
        sock.set_nonblocking(true)?;
        Ok(SocketPort(sock))
    }
}

impl Port for SocketPort {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, RxMeta)>> {
        match self.0.recv(buf) {
            Ok(n) => Ok(Some((n, RxMeta::default()))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn send(&mut self, frame: &[u8], _meta: &RxMeta) -> io::Result<bool> {
        match self.0.send(frame) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.0.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnet_header_round_trips() {
        let h = VnetHdr {
            flags: 1,
            gso_type: 4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut b = [0u8; VnetHdr::LEN];
        h.write(&mut b);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(VnetHdr::parse(&b[..9]), None);
    }
}
