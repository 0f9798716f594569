//! The ceiling of any switch built on TAP devices: a relay that joins two
//! TAPs and does nothing else. Every frame read from one is written to the
//! other, virtio-net header (checksum and segmentation offload) and all: no
//! parsing, no policy, no lookup. `benches/throughput.sh` runs two pods on it
//! beside vswitch and the Linux bridge, so that a figure's gap to the bridge
//! splits into what the TAP path itself costs (the kernel's copies and
//! system calls, which no userspace switch avoids) and what vswitch adds.
//!
//! It uses the switch's own TAP port (the same `readv`/`writev` of header
//! and frame, the same offloads) and one thread, as vswitchd's worker does.
//! Like vswitchd, before it sleeps it polls for a while after traffic
//! (yielding the core between turns), but for a fixed window
//! (`--busy-poll-us`, default 200 µs; 0 sleeps at once) where vswitchd's
//! adapts to the traffic.
//!
//! Across nodes, `--udp LOCAL PEER TAP` joins a TAP to a UDP socket: each
//! frame, virtio-net header and all, travels as one datagram to the relay
//! on the other node, which writes it to its TAP as it came. A 64 KiB
//! segmentation-offload frame stays whole (the script gives the underlay a
//! 64 KiB MTU and the pods a `gso_max_size` that fits a datagram), so the
//! relay cuts nothing and checksums nothing: it is the ceiling of any
//! overlay built on TAPs and UDP sockets, which copies every byte four
//! times (out of a TAP, into a socket, out of it, into a TAP) where the
//! kernel's VXLAN copies none.
//!
//! Usage: `tap_relay TAP-A TAP-B [--busy-poll-us N]`, or
//! `tap_relay --udp LOCAL-ADDR:PORT PEER-ADDR:PORT TAP [--busy-poll-us N]`.
//! It creates the TAPs in the current network namespace, prints `ready`
//! once they are open, and runs until killed; the caller moves them into
//! pods and configures them.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::socket::{MsgFlags, recvmsg, sendmsg, setsockopt, sockopt};
use vswitch_datapath::RxMeta;
use vswitch_datapath::io::port::{Port, VnetHdr};
use vswitch_datapath::io::tap::TapPort;

/// The most frames one side moves before the other gets a turn.
const BATCH: usize = 64;
/// A frame with segmentation offload: up to 64 KiB.
const FRAME: usize = 65_536;
/// The UDP socket's buffers, each way.
const SOCKET_BUFFER: usize = 4 << 20;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tap_relay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut spin_us = 200;
    if let Some(i) = args.iter().position(|a| a == "--busy-poll-us") {
        let n = args
            .get(i + 1)
            .ok_or("--busy-poll-us: a number of microseconds")?;
        spin_us = n
            .parse::<u64>()
            .map_err(|_| format!("--busy-poll-us {n}: not a number of microseconds"))?;
        args.drain(i..i + 2);
    }
    let mut sides: [Box<dyn Port>; 2] = match args.as_slice() {
        [flag, local, peer, tap] if flag == "--udp" => {
            [Box::new(UdpLink::open(local, peer)?), Box::new(open(tap)?)]
        }
        [a, b] => [Box::new(open(a)?), Box::new(open(b)?)],
        _ => {
            return Err("usage: tap_relay TAP-A TAP-B [--busy-poll-us N], or \
                 tap_relay --udp LOCAL-ADDR:PORT PEER-ADDR:PORT TAP [--busy-poll-us N]"
                .into());
        }
    };
    let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
    for (i, side) in sides.iter().enumerate() {
        let fd: RawFd = side.raw_fd().ok_or("a port without a file descriptor")?;
        poll.registry()
            .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
            .map_err(|e| format!("epoll: {e}"))?;
    }
    println!("ready");
    relay(poll, &mut sides, Duration::from_micros(spin_us)).map_err(|e| format!("relaying: {e}"))
}

/// A UDP socket to the relay on the other node: a datagram is a frame's
/// virtio-net header and the frame, sent and received as two pieces of one
/// `sendmsg`/`recvmsg` (the kernel's copy is the only one).
struct UdpLink(UdpSocket);

impl UdpLink {
    fn open(local: &str, peer: &str) -> Result<UdpLink, String> {
        let addr = |a: &str| {
            a.parse::<SocketAddr>()
                .map_err(|_| format!("{a}: not an ADDRESS:PORT"))
        };
        let sock = UdpSocket::bind(addr(local)?).map_err(|e| format!("binding {local}: {e}"))?;
        sock.connect(addr(peer)?)
            .map_err(|e| format!("connecting to {peer}: {e}"))?;
        sock.set_nonblocking(true)
            .map_err(|e| format!("UDP socket: {e}"))?;
        // Room for a few dozen 64 KiB datagrams each way (the default,
        // about three, would drop a TCP window's worth and understate the
        // ceiling). Needs root, as the benchmark does.
        setsockopt(&sock, sockopt::RcvBufForce, &SOCKET_BUFFER)
            .and_then(|()| setsockopt(&sock, sockopt::SndBufForce, &SOCKET_BUFFER))
            .map_err(|e| format!("UDP socket buffers of {SOCKET_BUFFER} bytes: {e}"))?;
        Ok(UdpLink(sock))
    }
}

impl Port for UdpLink {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, RxMeta)>> {
        let mut hdr = [0u8; VnetHdr::LEN];
        let mut iov = [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)];
        let n = match recvmsg::<()>(self.0.as_raw_fd(), &mut iov, None, MsgFlags::empty()) {
            Ok(m) => m.bytes,
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            // An ICMP error for an earlier datagram (the other relay not up
            // yet): that datagram was lost; nothing arrived.
            Err(
                nix::errno::Errno::ECONNREFUSED
                | nix::errno::Errno::EHOSTUNREACH
                | nix::errno::Errno::ENETUNREACH,
            ) => return Ok(Some((0, RxMeta::default()))),
            Err(e) => return Err(e.into()),
        };
        let Some(vnet) = VnetHdr::parse(&hdr[..n.min(VnetHdr::LEN)]) else {
            return Ok(Some((0, RxMeta::default()))); // a runt: sent on as nothing
        };
        let meta = RxMeta {
            vnet,
            ..RxMeta::default()
        };
        Ok(Some((n - VnetHdr::LEN, meta)))
    }

    fn send(&mut self, frame: &[u8], meta: &RxMeta) -> io::Result<bool> {
        let mut hdr = [0u8; VnetHdr::LEN];
        meta.vnet.write(&mut hdr);
        let iov = [IoSlice::new(&hdr), IoSlice::new(frame)];
        match sendmsg::<()>(self.0.as_raw_fd(), &iov, &[], MsgFlags::empty(), None) {
            Ok(_) => Ok(true),
            Err(nix::errno::Errno::EAGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.0.as_raw_fd())
    }
}

fn open(name: &str) -> Result<TapPort, String> {
    let tap = TapPort::create(name, true).map_err(|e| format!("opening TAP {name}: {e}"))?;
    if !tap.has_vnet_hdr() {
        return Err(format!(
            "TAP {name}: the kernel offers no virtio-net header"
        ));
    }
    Ok(tap)
}

/// Moves frames both ways until an error. Edge-triggered: a side is read
/// until it has nothing, a batch at a time, the two sides in turn.
fn relay(mut poll: Poll, sides: &mut [Box<dyn Port>; 2], spin: Duration) -> io::Result<()> {
    let mut buf = vec![0u8; FRAME];
    let mut events = Events::with_capacity(4);
    let mut pending = [true, true];
    let mut last_traffic: Option<Instant> = None;
    loop {
        let busy = pending[0] || pending[1];
        let spinning = last_traffic.is_some_and(|t| t.elapsed() < spin);
        let timeout = (busy || spinning).then_some(Duration::ZERO);
        poll.poll(&mut events, timeout)?;
        for e in &events {
            pending[e.token().0] = true;
        }
        let mut moved = false;
        for (from, more) in pending.iter_mut().enumerate() {
            if !*more {
                continue;
            }
            let (a, b) = sides.split_at_mut(1);
            let (src, dst) = if from == 0 {
                (&mut a[0], &mut b[0])
            } else {
                (&mut b[0], &mut a[0])
            };
            let frames = pass(src.as_mut(), dst.as_mut(), &mut buf)?;
            // A full batch may have left frames behind: read again.
            *more = frames == BATCH;
            moved |= frames > 0;
        }
        if moved {
            last_traffic = Some(Instant::now());
        } else if !busy && spinning {
            std::thread::yield_now();
        }
    }
}

/// Moves up to a batch of frames from `src` to `dst`; how many it read.
fn pass(src: &mut dyn Port, dst: &mut dyn Port, buf: &mut [u8]) -> io::Result<usize> {
    let mut frames = 0;
    while frames < BATCH {
        let Some((n, meta)) = src.recv(buf)? else {
            break;
        };
        frames += 1;
        // A TAP write does not block (the kernel queues or drops); to a TAP
        // whose link is down it fails (EIO), and a full socket buffer
        // refuses: the frame is lost, as on any link that is down or full.
        if n > 0 {
            let _ = dst.send(&buf[..n], &meta);
        }
    }
    Ok(frames)
}
