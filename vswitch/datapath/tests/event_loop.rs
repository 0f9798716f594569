//! The event loop with real descriptors (Unix datagram sockets standing in
//! for TAP devices): frames flow, and when the receiving side stops reading,
//! frames wait for writability instead of being lost (up to the pending
//! queue's bound). And a flood: a port that always has frames holds the
//! loop for a bounded number of rounds only, so that commands (a new pod's
//! port) and timers run between them.

mod kit;

use std::net::IpAddr;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kit::{A, A4, B, B4, attach_pod, socket_switch, udp4, udp4_carrying};
use vswitch_datapath::io::event_loop::{DRAIN_ROUNDS, EventLoop};
use vswitch_datapath::io::port::{Port, RxMeta, SocketPort};
use vswitch_datapath::io::worker::{PENDING_FRAMES, PolicyHandle, SHARED_SLICE, Worker};
use vswitch_datapath::{Config, Datapath};

fn frame(seq: u16) -> Vec<u8> {
    udp4_carrying(A, B, A4, B4, 4000, 53, &seq.to_be_bytes())
}

/// A switch with pods a and b on socket ports; returns the pods' ends.
fn switch() -> (EventLoop, UnixDatagram, UnixDatagram) {
    socket_switch(Config::default())
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

/// A pod that floods: a new UDP flow (the slow path) on every receive, as
/// fast as the switch takes them. It ends after `left` frames, so that a
/// loop that drains "until nothing is left" ends too, late, and the test
/// fails instead of hanging; `left` is shared to tell whether the flood is
/// still on.
struct Flood {
    left: Arc<AtomicUsize>,
    sport: u16,
}

impl Port for Flood {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<(usize, RxMeta)>> {
        if self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
        {
            return Ok(None);
        }
        self.sport = self.sport.wrapping_add(1);
        let f = udp4(A, B, A4, B4, self.sport, 53);
        buf[..f.len()].copy_from_slice(&f);
        Ok(Some((f.len(), RxMeta::default())))
    }

    fn send(&mut self, _: &[u8], _: &RxMeta) -> std::io::Result<bool> {
        Ok(true)
    }
}

/// Takes every frame sent to it and forgets it.
struct Sink;

impl Port for Sink {
    fn recv(&mut self, _: &mut [u8]) -> std::io::Result<Option<(usize, RxMeta)>> {
        Ok(None)
    }

    fn send(&mut self, _: &[u8], _: &RxMeta) -> std::io::Result<bool> {
        Ok(true)
    }
}

/// Frames the flood has in all: far more than a bounded drain takes.
const FLOOD: usize = 200_000;

/// Pod a (port 1) floods pod b (port 2, a sink).
fn flooded_switch() -> (EventLoop, Arc<AtomicUsize>) {
    let mut dp = Datapath::new(Config::default(), Instant::now());
    attach_pod(&mut dp, 1, "flood", A, &[IpAddr::from(A4)], 0);
    attach_pod(&mut dp, 2, "sink", B, &[IpAddr::from(B4)], 0);
    let mut worker = Worker::new(dp, PolicyHandle::default());
    let left = Arc::new(AtomicUsize::new(FLOOD));
    let flood = Flood {
        left: left.clone(),
        sport: 0,
    };
    worker.attach(1, Box::new(flood));
    worker.attach(2, Box::new(Sink));
    (EventLoop::new(worker).unwrap(), left)
}

#[test]
fn a_flood_holds_the_loop_for_a_bounded_number_of_rounds() {
    let (mut el, left) = flooded_switch();
    let bound = DRAIN_ROUNDS * Datapath::BATCH; // one port floods
    for _ in 0..3 {
        let got = el.run_once(Duration::ZERO).unwrap();
        assert!(
            got <= bound,
            "one call took {got} frames of the flood (at most {bound} expected): \
             commands and timers waited for all of them"
        );
        assert!(got > 0, "the flood is served too");
    }
    assert!(left.load(Ordering::Relaxed) > 0);
}

/// The daemon's loop: commands between calls of `run_once`. A pod attached
/// while another floods is served within two calls, the flood still on.
#[test]
fn a_pod_attached_during_a_flood_is_served_while_the_flood_goes_on() {
    let (mut el, left) = flooded_switch();
    el.run_once(Duration::ZERO).unwrap(); // the flood has begun
    // the command: pod c (port 3, a real descriptor) attached and ready, with
    // a frame to b waiting
    const C: [u8; 6] = [0x02, 0, 0, 0, 0, 3];
    const C4: [u8; 4] = [10, 0, 0, 3];
    let (pod_c, sw_c) = UnixDatagram::pair().unwrap();
    pod_c.send(&udp4(C, B, C4, B4, 5000, 53)).expect("c sends");
    let attached = Instant::now();
    attach_pod(&mut el.worker.datapath, 3, "new", C, &[IpAddr::from(C4)], 0);
    el.worker
        .attach(3, Box::new(SocketPort::new(sw_c).unwrap()));
    el.register(3).unwrap();
    let served = |el: &EventLoop| {
        el.worker
            .datapath
            .port(3)
            .is_some_and(|p| p.counters.rx_packets > 0)
    };
    let mut calls = 0;
    while !served(&el) && calls < 10 {
        el.run_once(Duration::from_millis(100)).unwrap();
        calls += 1;
    }
    let took = attached.elapsed();
    let flood_left = left.load(Ordering::Relaxed);
    assert!(
        flood_left > 0,
        "the flood had ended ({FLOOD} frames drained) before the new pod was served"
    );
    assert!(served(&el), "the new pod was not served in {calls} calls");
    assert!(calls <= 2, "the new pod waited {calls} calls");
    assert!(took < Duration::from_secs(1), "the new pod waited {took:?}");
    let c = &el.worker.datapath.port(3).unwrap().counters;
    assert_eq!(c.rx_packets, 1);
    assert_eq!(c.outcome_total(), 1);
}

/// Edge-triggered readiness: frames left behind by a bounded drain raise no
/// new edge, so the loop must come back to them without waiting.
#[test]
fn frames_left_by_a_bounded_drain_are_taken_without_a_new_edge() {
    let (mut el, pod_a, _pod_b) = switch();
    el.worker.batch = 1; // one frame per port per round
    pod_a.set_nonblocking(true).unwrap();
    let mut sent = 0usize;
    while sent < 4 * DRAIN_ROUNDS {
        match pod_a.send(&frame(sent as u16)) {
            Ok(_) => sent += 1,
            Err(_) => break,
        }
    }
    assert!(sent > DRAIN_ROUNDS, "more frames than one call drains");
    let mut got = 0;
    let mut calls = 0;
    while got < sent && calls < 4 * sent {
        let t = Instant::now();
        got += el.run_once(Duration::from_secs(10)).unwrap();
        calls += 1;
        // (housekeeping ends a wait after a second at most)
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "call {calls} waited for an edge with {} frames left",
            sent - got + 1
        );
    }
    assert_eq!(got, sent);
    assert!(calls > 1, "the drain was bounded");
}

/// A pod that sends what the test queues for it, a frame or so per round.
struct Trickle(Arc<Mutex<Vec<Vec<u8>>>>);

impl Port for Trickle {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<(usize, RxMeta)>> {
        Ok(self.0.lock().unwrap().pop().map(|f| {
            buf[..f.len()].copy_from_slice(&f);
            (f.len(), RxMeta::default())
        }))
    }

    fn send(&mut self, _: &[u8], _: &RxMeta) -> std::io::Result<bool> {
        Ok(true)
    }
}

/// While another pod has frames, a flooding pod takes a slice of each round
/// (its packets never make the other's wait a whole batch of its own); alone,
/// it takes whole batches again.
#[test]
fn a_flooding_pod_takes_a_slice_of_each_round_while_another_pod_sends() {
    let (mut el, _left) = flooded_switch();
    const C: [u8; 6] = [0x02, 0, 0, 0, 0, 3];
    const C4: [u8; 4] = [10, 0, 0, 3];
    attach_pod(
        &mut el.worker.datapath,
        3,
        "quiet",
        C,
        &[IpAddr::from(C4)],
        0,
    );
    let queue = Arc::new(Mutex::new(Vec::new()));
    el.worker.attach(3, Box::new(Trickle(queue.clone())));
    let now = Instant::now();
    assert_eq!(
        el.worker.poll(now),
        Datapath::BATCH,
        "the flood alone: a batch"
    );
    for round in 0..10 {
        queue
            .lock()
            .unwrap()
            .push(udp4(C, B, C4, B4, 6000 + round, 53));
        let got = el.worker.poll(now);
        assert!(
            (2..=SHARED_SLICE + 1).contains(&got) || round == 0,
            "round {round}: {got} frames, the flood's slice is {SHARED_SLICE} while c sends"
        );
    }
    el.worker.poll(now); // c is quiet again
    assert_eq!(
        el.worker.poll(now),
        Datapath::BATCH,
        "the flood alone again: a batch"
    );
    assert_eq!(el.worker.datapath.port(3).unwrap().counters.rx_packets, 10);
}

/// A socket port that counts its reads.
struct Counted(SocketPort, Arc<AtomicUsize>);

impl Port for Counted {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<(usize, RxMeta)>> {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.recv(buf)
    }

    fn send(&mut self, frame: &[u8], meta: &RxMeta) -> std::io::Result<bool> {
        self.0.send(frame, meta)
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        self.0.raw_fd()
    }
}

/// A round reads the ports that had an edge (or frames left), not every
/// port: traffic between two pods costs the node's idle pods no system
/// call, however many there are.
#[test]
fn idle_ports_are_not_read_while_others_have_traffic() {
    let (mut el, pod_a, pod_b) = switch();
    let mut idle = Vec::new();
    for id in 3..43 {
        let (pod, sw) = UnixDatagram::pair().unwrap();
        let reads = Arc::new(AtomicUsize::new(0));
        el.worker.attach(
            id,
            Box::new(Counted(SocketPort::new(sw).unwrap(), reads.clone())),
        );
        el.register(id).unwrap();
        idle.push((pod, reads));
    }
    pod_b
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for seq in 0..50 {
        pod_a.send(&frame(seq)).unwrap();
        let mut calls = 0;
        while el.worker.datapath.counters.rx_packets <= seq as u64 && calls < 100 {
            el.run_once(Duration::from_millis(100)).unwrap();
            calls += 1;
        }
        pod_b.recv(&mut buf).expect("the frame arrives");
    }
    for (_, reads) in &idle {
        // read once when attached (frames may precede the first edge)
        assert_eq!(reads.load(Ordering::Relaxed), 1, "an idle port was read");
    }
    // and an idle port that sends is read again
    let (pod, reads) = &idle[7];
    pod.send(&udp4(
        [0x02, 0, 0, 0, 0, 0x10],
        B,
        [10, 0, 0, 16],
        B4,
        1,
        53,
    ))
    .unwrap();
    el.run_once(Duration::from_millis(100)).unwrap();
    assert!(reads.load(Ordering::Relaxed) > 1, "its edge was missed");
}

/// The busy poll adapts: traffic right after a sleep starts it, and with
/// no traffic it dies out within a few calls, so an idle switch sleeps.
#[test]
fn the_busy_poll_starts_with_traffic_and_stops_when_idle() {
    let (mut el, pod_a, _pod_b) = switch();
    assert_eq!(el.busy_poll_window(), Duration::ZERO, "no spin at start");
    // a frame that is waiting when the loop sleeps wakes it at once: a
    // spin would have caught it (retried: a preempted test thread can
    // sleep longer than the window)
    let mut tries = 0;
    while el.busy_poll_window().is_zero() && tries < 50 {
        pod_a.send(&frame(tries)).unwrap();
        el.run_once(Duration::from_millis(100)).unwrap();
        el.run_once(Duration::from_millis(100)).unwrap();
        tries += 1;
    }
    assert!(!el.busy_poll_window().is_zero(), "traffic started no spin");
    assert!(el.busy_poll_window() <= el.busy_poll_max());
    // a frame already waiting when the loop would spin is caught at once:
    // frames come faster than a sleep costs, so the window shrinks (it
    // grows only when the spin waited for what it caught)
    let mut halved = false;
    for seq in 0..20 {
        let before = el.busy_poll_window();
        if before.is_zero() {
            break;
        }
        pod_a.send(&frame(100 + seq)).unwrap();
        el.run_once(Duration::from_millis(100)).unwrap();
        el.run_once(Duration::from_millis(100)).unwrap();
        if el.busy_poll_window() < before {
            halved = true;
            break;
        }
    }
    assert!(halved, "a spin that caught waiting frames grew the window");
    // no traffic: each call's spin fails and halves the window
    for _ in 0..16 {
        el.run_once(Duration::from_millis(1)).unwrap();
    }
    assert_eq!(
        el.busy_poll_window(),
        Duration::ZERO,
        "idle, still spinning"
    );
    // and it stays off: sleeps that end without traffic start nothing
    for _ in 0..5 {
        el.run_once(Duration::from_millis(1)).unwrap();
        assert_eq!(el.busy_poll_window(), Duration::ZERO);
    }
}

/// `busy_poll_us: 0` turns busy polling off: the traffic that opens the
/// window otherwise opens nothing.
#[test]
fn no_busy_poll_when_it_is_turned_off() {
    let (mut el, pod_a, _pod_b) = socket_switch(Config {
        busy_poll_us: 0,
        ..Config::default()
    });
    assert_eq!(el.busy_poll_max(), Duration::ZERO);
    for seq in 0..20 {
        pod_a.send(&frame(seq)).unwrap();
        el.run_once(Duration::from_millis(100)).unwrap();
        el.run_once(Duration::from_millis(100)).unwrap();
        assert_eq!(el.busy_poll_window(), Duration::ZERO);
    }
    assert_eq!(el.worker.datapath.counters.rx_packets, 20);
}
