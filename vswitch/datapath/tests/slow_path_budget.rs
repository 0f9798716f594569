//! A pod's slow-path budget through the worker and the event loop: a pod
//! that floods new flows is read no faster than its budget while another
//! pod's frames go through every round; a server's answers to new
//! connections cost it nothing; and a paused port is read again when its
//! pause ends, without a new frame to wake the loop.

mod kit;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use kit::{A, A4, B, B4, attach_pod, socket_switch, tcp4, udp4};
use vswitch_datapath::io::budget::Budget;
use vswitch_datapath::io::port::MemPort;
use vswitch_datapath::io::worker::{PolicyHandle, Worker};
use vswitch_datapath::parse::Mac;
use vswitch_datapath::{Config, Datapath, PortId};

const C: Mac = [0x02, 0, 0, 0, 0, 3];
const C4: [u8; 4] = [10, 0, 0, 3];

fn datapath(rate: u32) -> Datapath {
    let cfg = Config {
        slow_path_per_pod: rate,
        ..Config::default()
    };
    let mut dp = Datapath::new(cfg, Instant::now());
    for (id, mac, ip) in [(1, A, A4), (2, B, B4), (3, C, C4)] {
        attach_pod(&mut dp, id, "pod", mac, &[IpAddr::from(ip)], 0);
    }
    dp
}

/// Pods a, b and c (ports 1, 2, 3) on in-memory ports, no policy.
fn worker(rate: u32) -> Worker {
    let mut w = Worker::new(datapath(rate), PolicyHandle::default());
    for id in 1..=3 {
        w.attach(id, Box::new(MemPort::new()));
    }
    w
}

fn mem(w: &mut Worker, id: PortId) -> &mut MemPort {
    w.port_mut(id).unwrap().as_mem().unwrap()
}

#[test]
fn a_flooding_pod_is_read_no_faster_than_its_budget() {
    let rate = 1000;
    let mut w = worker(rate);
    let flood = 5000;
    for i in 0..flood {
        let f = udp4(A, B, A4, B4, 1024 + (i % 60_000) as u16, 9);
        mem(&mut w, 1).rx.push_back(f);
    }
    let t0 = Instant::now();
    // one simulated second, a round every millisecond; c opens a new flow
    // every millisecond meanwhile (its own rate, within its budget)
    for ms in 0..1000u64 {
        let f = udp4(C, B, C4, B4, 2000 + ms as u16, 53);
        mem(&mut w, 3).rx.push_back(f);
        w.poll(t0 + Duration::from_millis(ms));
        assert!(
            mem(&mut w, 3).rx.is_empty(),
            "ms {ms}: c's frame waits while a floods"
        );
    }
    let taken = flood - mem(&mut w, 1).rx.len();
    let most = Budget::burst(rate) as usize + rate as usize + Datapath::BATCH;
    assert!(
        (rate as usize..=most).contains(&taken),
        "in one second the switch took {taken} of a's new flows; its budget allows {rate} a second, a burst and a batch of debt ({most})"
    );
    assert_eq!(w.slow_path_pauses(3), 0, "c stayed within its budget");
    let to_b = mem(&mut w, 2).tx.len();
    assert_eq!(to_b, taken + 1000, "everything taken reached b");
}

#[test]
fn answers_to_new_connections_cost_the_server_nothing() {
    // a budget of 64 a second (the smallest burst: one batch)
    let mut w = worker(10);
    let t0 = Instant::now();
    // a and c each open 60 connections to b: within their budgets
    for i in 0..60 {
        let f = tcp4(A, B, A4, B4, 1000 + i, 80, "S", 64);
        mem(&mut w, 1).rx.push_back(f);
        let f = tcp4(C, B, C4, B4, 1000 + i, 80, "S", 64);
        mem(&mut w, 3).rx.push_back(f);
    }
    w.poll(t0);
    assert_eq!(mem(&mut w, 2).tx.len(), 120, "b got every SYN");
    // b answers all 120: twice its burst, none of it charged
    for i in 0..60 {
        let f = tcp4(B, A, B4, A4, 80, 1000 + i, "SA", 64);
        mem(&mut w, 2).rx.push_back(f);
        let f = tcp4(B, C, B4, C4, 80, 1000 + i, "SA", 64);
        mem(&mut w, 2).rx.push_back(f);
    }
    let t1 = t0 + Duration::from_millis(1);
    w.poll(t1);
    w.poll(t1);
    assert!(
        mem(&mut w, 2).rx.is_empty(),
        "b's answers all taken at once"
    );
    assert_eq!(w.slow_path_pauses(2), 0, "b paid nothing for its answers");
    assert_eq!(mem(&mut w, 1).tx.len(), 60);
    assert_eq!(mem(&mut w, 3).tx.len(), 60);
    // while a's own new connections are charged: of 64 more, a can pay
    // for the 4 left of its burst, and one of debt
    for i in 0..64 {
        let f = tcp4(A, B, A4, B4, 3000 + i, 80, "S", 64);
        mem(&mut w, 1).rx.push_back(f);
    }
    w.poll(t1);
    w.poll(t1);
    w.poll(t1);
    assert_eq!(
        w.slow_path_pauses(1),
        1,
        "a's 65th new connection is a debt"
    );
    assert_eq!(mem(&mut w, 1).rx.len(), 64 - 5, "a's frames beyond wait");
}

#[test]
fn a_paused_port_is_read_again_when_its_pause_ends_without_a_new_frame() {
    // 10,000 a second: a burst of 1,000, then a batch per 6.4 ms
    let (mut el, pod_a, _pod_b) = socket_switch(Config {
        slow_path_per_pod: 10_000,
        ..Config::default()
    });
    pod_a.set_nonblocking(true).unwrap();
    let mut sent = 0u64;
    let send_all = |sent: &mut u64| {
        // new flows, as many as the socket takes
        while pod_a
            .send(&udp4(A, B, A4, B4, 1024 + *sent as u16, 9))
            .is_ok()
        {
            *sent += 1;
        }
    };
    // until a is paused
    while el.worker.slow_path_pauses(1) == 0 {
        send_all(&mut sent);
        el.run_once(Duration::ZERO).unwrap();
        assert!(sent < 10_000, "{sent} new flows and a was never paused");
    }
    // frames that arrive during the pause wait: not read, and the loop is
    // not woken for them
    send_all(&mut sent);
    let waiting = sent - el.worker.datapath.counters.rx_packets;
    assert!(waiting > 0, "frames wait while a is paused");
    let pauses = el.worker.slow_path_pauses(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut calls = 0;
    while el.worker.datapath.counters.rx_packets < sent && Instant::now() < deadline {
        // a timeout far beyond the pause: a loop that waited for a new
        // frame (none comes) would sleep through it
        el.run_once(Duration::from_secs(10)).unwrap();
        calls += 1;
    }
    assert_eq!(
        el.worker.datapath.counters.rx_packets, sent,
        "the {waiting} frames that waited are taken when the pause ends, with no new frame sent"
    );
    // each call sleeps until a pause ends (or housekeeping is due), then
    // reads a batch: about one call per pause, not a loop that spins
    let pauses = el.worker.slow_path_pauses(1) - pauses;
    assert!(
        calls <= 2 * pauses + 3,
        "{calls} calls for {pauses} pauses: the loop spun"
    );
}
