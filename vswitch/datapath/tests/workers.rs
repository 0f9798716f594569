//! Two workers on two threads, shared-nothing (own ports, own flow cache and
//! conntrack), one policy handle: a generation published once reaches both.

mod kit;

use std::net::IpAddr;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use kit::{GW, attach_pod, pod, tcp4};
use policy::{Engine, manifest};
use vswitch_datapath::counters::Outcome;
use vswitch_datapath::io::port::MemPort;
use vswitch_datapath::io::worker::{PolicyHandle, Worker};
use vswitch_datapath::{Config, Datapath};

fn syn(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16) -> Vec<u8> {
    tcp4(src_mac, GW, src, dst, sport, 80, "S", 64)
}

#[test]
fn two_workers_share_one_policy_and_nothing_else() {
    // four pods: worker w serves x/a<w> (port 1) and y/b<w> (port 2)
    let ip = |w: u8, i: u8| [10, w, 0, i];
    let pods = (1..=2u8).flat_map(|w| {
        [("x", 1u8), ("y", 2)].map(|(ns, i)| pod(ns, &format!("p{w}"), &[IpAddr::from(ip(w, i))]))
    });
    let mut engine = Engine::from_cluster(kit::cluster(pods)).unwrap();
    let handle = PolicyHandle::default();
    handle.publish(engine.snapshot());
    let barrier = Arc::new(Barrier::new(3));
    let threads: Vec<_> = (1..=2u8)
        .map(|w| {
            let (handle, barrier) = (handle.clone(), barrier.clone());
            std::thread::spawn(move || {
                let (ma, mb) = ([2, w, 0, 0, 0, 1], [2, w, 0, 0, 0, 2]);
                let mut dp = Datapath::new(Config::default(), Instant::now());
                attach_pod(&mut dp, 1, "a", ma, &[IpAddr::from(ip(w, 1))], 1);
                attach_pod(&mut dp, 2, "b", mb, &[IpAddr::from(ip(w, 2))], 1);
                let mut worker = Worker::new(dp, handle);
                let mut a = MemPort::new();
                a.rx.push_back(syn(ma, ip(w, 1), ip(w, 2), 1000));
                worker.attach(1, Box::new(a));
                worker.attach(2, Box::new(MemPort::new()));
                worker.poll(Instant::now());
                let before = worker.datapath.counters.clone();
                barrier.wait(); // the first generation was used
                barrier.wait(); // the second is published
                worker
                    .port_mut(1)
                    .unwrap()
                    .as_mem()
                    .unwrap()
                    .rx
                    .push_back(syn(ma, ip(w, 1), ip(w, 2), 1001));
                worker.poll(Instant::now());
                (
                    before,
                    worker.datapath.counters.clone(),
                    worker.datapath.conntrack().len(),
                )
            })
        })
        .collect();
    barrier.wait();
    for o in manifest::parse(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: y}\nspec: {podSelector: {}}\n",
    ) {
        let manifest::Object::NetworkPolicy(p) = o.unwrap() else {
            panic!()
        };
        engine.upsert_policy(p).unwrap();
    }
    handle.publish(engine.snapshot());
    barrier.wait();
    for t in threads {
        let (before, after, tracked) = t.join().unwrap();
        assert_eq!(
            before.get(Outcome::SlowForward),
            1,
            "allowed under the first generation"
        );
        assert_eq!(after.get(Outcome::PolicyDeny), 1, "denied under the second");
        assert_eq!(tracked, 1, "each worker tracks only its own connection");
    }
}
