//! The event loop with real descriptors (Unix datagram sockets standing in
//! for TAP devices): frames flow, and when the receiving side stops reading,
//! frames wait for writability instead of being lost (up to the pending
//! queue's bound).

mod kit;

use std::net::IpAddr;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kit::{A, A4, B, B4, attach_pod, udp4_carrying};
use vswitch_datapath::io::event_loop::EventLoop;
use vswitch_datapath::io::port::SocketPort;
use vswitch_datapath::io::worker::{PENDING_FRAMES, PolicyHandle, Worker};
use vswitch_datapath::{Config, Datapath};

fn frame(seq: u16) -> Vec<u8> {
    udp4_carrying(A, B, A4, B4, 4000, 53, &seq.to_be_bytes())
}

/// A switch with pods a and b on socket ports; returns the pods' ends.
fn switch() -> (EventLoop, UnixDatagram, UnixDatagram) {
    let mut dp = Datapath::new(Config::default(), Instant::now());
    attach_pod(&mut dp, 1, "pod", A, &[IpAddr::from(A4)], 0);
    attach_pod(&mut dp, 2, "pod", B, &[IpAddr::from(B4)], 0);
    let mut worker = Worker::new(dp, PolicyHandle::default());
    let (pod_a, sw_a) = UnixDatagram::pair().unwrap();
    let (pod_b, sw_b) = UnixDatagram::pair().unwrap();
    worker.attach(1, Box::new(SocketPort::new(sw_a).unwrap()));
    worker.attach(2, Box::new(SocketPort::new(sw_b).unwrap()));
    let mut el = EventLoop::new(worker).unwrap();
    el.register(1).unwrap();
    el.register(2).unwrap();
    (el, pod_a, pod_b)
}

#[test]
fn frames_flow_through_the_event_loop() {
    let (mut el, pod_a, pod_b) = switch();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let t = std::thread::spawn(move || {
        el.run(|_| s.load(Ordering::Relaxed)).unwrap();
        el
    });
    pod_b
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for seq in 0..10 {
        pod_a.send(&frame(seq)).unwrap();
        let n = pod_b.recv(&mut buf).expect("the frame arrives");
        assert_eq!(&buf[n - 2..n], &seq.to_be_bytes());
    }
    stop.store(true, Ordering::Relaxed);
    let el = t.join().unwrap();
    assert_eq!(el.worker.datapath.counters.rx_packets, 10);
}

#[test]
fn a_full_receiver_gets_every_frame_later_in_order() {
    let (mut el, pod_a, pod_b) = switch();
    // a sends until half the pending bound waits for b (more than that
    // would be dropped and counted: see tests/tx_queue.rs)
    let mut n: u16 = 0;
    while el.worker.pending(2) < PENDING_FRAMES / 2 {
        let seq = n;
        n += 1;
        // the switch's end of a's socket takes them all as we go
        loop {
            match pod_a.send(&frame(seq)) {
                Ok(_) => break,
                Err(_) => {
                    el.run_once(Duration::from_millis(10)).unwrap();
                }
            }
        }
        el.run_once(Duration::ZERO).unwrap();
    }
    // b has not read anything: its queue filled and frames wait in the worker
    let waiting = el.worker.pending(2);
    assert!(waiting > 0, "the receiver's queue should have filled");
    // now b reads; the loop is woken by writability and flushes in order
    pod_b.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < n as usize && Instant::now() < deadline {
        while let Ok(n) = pod_b.recv(&mut buf) {
            got.push(u16::from_be_bytes([buf[n - 2], buf[n - 1]]));
        }
        el.run_once(Duration::from_millis(10)).unwrap();
    }
    assert_eq!(
        got.len(),
        n as usize,
        "no frame was lost ({waiting} had to wait)"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(el.worker.pending(2), 0);
    assert_eq!(el.worker.tx_drops(2).total(), 0);
}

#[test]
fn a_receiver_that_is_gone_gets_no_queue_its_frames_are_counted() {
    let (mut el, pod_a, pod_b) = switch();
    drop(pod_b); // b's link is down: every send to it fails (not EAGAIN)
    for seq in 0..100u16 {
        pod_a.send(&frame(seq)).unwrap();
        el.run_once(Duration::from_millis(10)).unwrap();
    }
    assert_eq!(el.worker.datapath.counters.rx_packets, 100);
    assert_eq!(el.worker.pending(2), 0, "nothing waits for a dead port");
    assert_eq!(el.worker.tx_drops(2).tx_error, 100);
    assert_eq!(el.worker.tx_drops(2).tx_queue_full, 0);
}
