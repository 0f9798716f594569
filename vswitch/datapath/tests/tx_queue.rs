//! The send side under hostile or broken pods: a port whose send fails gets
//! no queue (its frames are dropped and counted), a port that never drains
//! holds at most the bound, and neither costs another port its frames.

mod kit;

use std::io;
use std::net::IpAddr;
use std::time::Instant;

use kit::{A, A4, B, B4, attach_pod, udp4_carrying};
use vswitch_datapath::io::port::{MemPort, Port, RxMeta};
use vswitch_datapath::io::worker::{PENDING_BYTES, PENDING_FRAMES, PolicyHandle, Worker};
use vswitch_datapath::parse::Mac;
use vswitch_datapath::{Config, Datapath};

const C: Mac = [0x02, 0, 0, 0, 0, 3];
const C4: [u8; 4] = [10, 0, 0, 3];

fn frame(dst: Mac, dst4: [u8; 4], seq: u32, len: usize) -> Vec<u8> {
    let mut payload = vec![0u8; len.max(4)];
    payload[..4].copy_from_slice(&seq.to_be_bytes());
    udp4_carrying(A, dst, A4, dst4, 4000, 53, &payload)
}

fn seq_of(f: &[u8]) -> u32 {
    // the payload starts after 14 + 20 + 8 bytes of headers
    u32::from_be_bytes(f[42..46].try_into().unwrap())
}

/// A port whose link is down: every send fails.
struct BrokenPort;

impl Port for BrokenPort {
    fn recv(&mut self, _buf: &mut [u8]) -> io::Result<Option<(usize, RxMeta)>> {
        Ok(None)
    }
    fn send(&mut self, _frame: &[u8], _meta: &RxMeta) -> io::Result<bool> {
        Err(io::Error::from_raw_os_error(100)) // ENETDOWN
    }
}

/// Pods a (port 1), b (port 2) and c (port 3); b's port is `b_port`.
fn worker(b_port: Box<dyn Port>) -> Worker {
    let mut dp = Datapath::new(Config::default(), Instant::now());
    attach_pod(&mut dp, 1, "a", A, &[IpAddr::from(A4)], 0);
    attach_pod(&mut dp, 2, "b", B, &[IpAddr::from(B4)], 0);
    attach_pod(&mut dp, 3, "c", C, &[IpAddr::from(C4)], 0);
    let mut w = Worker::new(dp, PolicyHandle::default());
    w.attach(1, Box::new(MemPort::new()));
    w.attach(2, b_port);
    w.attach(3, Box::new(MemPort::new()));
    w
}

fn mem(w: &mut Worker, id: u16) -> &mut MemPort {
    w.port_mut(id).unwrap().as_mem().unwrap()
}

#[test]
fn a_port_whose_send_fails_gets_no_queue_and_its_drops_are_counted() {
    let mut w = worker(Box::new(BrokenPort));
    const N: u32 = 1_000;
    for seq in 0..N {
        mem(&mut w, 1).rx.push_back(frame(B, B4, seq, 100));
        mem(&mut w, 1).rx.push_back(frame(C, C4, seq, 100));
        w.poll(Instant::now());
    }
    assert_eq!(w.pending(2), 0, "a failing port gets no queue");
    assert_eq!(w.pending_bytes(2), 0);
    let drops = w.tx_drops(2);
    assert_eq!(drops.tx_error, N as u64, "every frame to it is counted");
    assert_eq!(drops.tx_queue_full, 0);
    // c kept receiving, everything, in order
    let got: Vec<u32> = mem(&mut w, 3).tx.iter().map(|f| seq_of(f)).collect();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    assert_eq!(w.tx_drops(3).total(), 0);
    // the outcome invariant holds: send-side drops are not outcomes
    let c = &w.datapath.counters;
    assert_eq!(c.outcome_total(), c.rx_packets);
}

#[test]
fn a_port_that_never_drains_holds_at_most_the_bound() {
    let mut blocked = MemPort::new();
    blocked.tx_limit = Some(0); // every send would block
    let mut w = worker(Box::new(blocked));
    const N: u32 = 2_000;
    for seq in 0..N {
        mem(&mut w, 1).rx.push_back(frame(B, B4, seq, 100));
        mem(&mut w, 1).rx.push_back(frame(C, C4, seq, 100));
        w.poll(Instant::now());
        assert!(w.pending(2) <= PENDING_FRAMES);
        assert!(w.pending_bytes(2) <= PENDING_BYTES);
    }
    assert_eq!(w.pending(2), PENDING_FRAMES, "the bound is reached");
    let drops = w.tx_drops(2);
    assert_eq!(drops.tx_queue_full, (N as usize - PENDING_FRAMES) as u64);
    assert_eq!(drops.tx_error, 0);
    assert_eq!(mem(&mut w, 3).tx.len(), N as usize, "c lost nothing");
    assert_eq!(w.tx_drops(3).total(), 0);

    // b drains: the oldest frames that waited come first, in order, then
    // new frames flow again; no stale backlog beyond the bound
    mem(&mut w, 2).tx_limit = None;
    w.poll(Instant::now());
    assert_eq!(w.pending(2), 0);
    assert_eq!(w.pending_bytes(2), 0);
    for seq in N..N + 10 {
        mem(&mut w, 1).rx.push_back(frame(B, B4, seq, 100));
        w.poll(Instant::now());
    }
    let got: Vec<u32> = mem(&mut w, 2).tx.iter().map(|f| seq_of(f)).collect();
    let want: Vec<u32> = (0..PENDING_FRAMES as u32).chain(N..N + 10).collect();
    assert_eq!(got, want);
}

#[test]
fn large_frames_are_bounded_by_bytes() {
    let mut blocked = MemPort::new();
    blocked.tx_limit = Some(0);
    let mut w = worker(Box::new(blocked));
    w.datapath.set_mtu(2, 9000); // b's device takes jumbo frames
    let len = 8_000;
    for seq in 0..PENDING_FRAMES as u32 {
        mem(&mut w, 1).rx.push_back(frame(B, B4, seq, len));
        w.poll(Instant::now());
        assert!(w.pending_bytes(2) <= PENDING_BYTES);
    }
    let fit = PENDING_BYTES / frame(B, B4, 0, len).len();
    assert_eq!(w.pending(2), fit, "as many as fit in the byte bound");
    assert_eq!(w.tx_drops(2).tx_queue_full, (PENDING_FRAMES - fit) as u64);
}
