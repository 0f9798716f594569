//! Two workers on two threads, shared-nothing (own ports, own flow cache and
//! conntrack), one policy handle: a generation published once reaches both.

use std::net::IpAddr;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use policy::{Cluster, Engine, Namespace, Pod, PodKey, manifest};
use vswitch_datapath::counters::Outcome;
use vswitch_datapath::io::port::MemPort;
use vswitch_datapath::io::worker::{PolicyHandle, Worker};
use vswitch_datapath::{Config, Datapath, PortKind};

const GW: [u8; 6] = [0x02, 0x76, 0x73, 0x77, 0x00, 0x01];

fn syn(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, GW)
        .ipv4(src, dst, 64)
        .tcp(sport, 80, 1, 1024)
        .syn()
        .write(&mut v, &[])
        .unwrap();
    v
}

#[test]
fn two_workers_share_one_policy_and_nothing_else() {
    // four pods: worker w serves x/a<w> (port 1) and y/b<w> (port 2)
    let mut c = Cluster::default();
    for ns in ["x", "y"] {
        c.namespaces
            .insert(ns.into(), Namespace::new(ns, Default::default()));
    }
    let ip = |w: u8, i: u8| [10, w, 0, i];
    for w in 1..=2u8 {
        for (ns, i) in [("x", 1u8), ("y", 2)] {
            let p = Pod {
                key: PodKey::new(ns, format!("p{w}")),
                labels: Default::default(),
                ips: vec![IpAddr::from(ip(w, i))],
                ports: vec![],
            };
            c.pods.insert(p.key.clone(), p);
        }
    }
    let mut engine = Engine::from_cluster(c).unwrap();
    let handle = PolicyHandle::default();
    handle.publish(engine.snapshot());
    let barrier = Arc::new(Barrier::new(3));
    let threads: Vec<_> = (1..=2u8)
        .map(|w| {
            let (handle, barrier) = (handle.clone(), barrier.clone());
            std::thread::spawn(move || {
                let (ma, mb) = ([2, w, 0, 0, 0, 1], [2, w, 0, 0, 0, 2]);
                let mut dp = Datapath::new(Config::default(), Instant::now());
                dp.add_port(
                    1,
                    "a",
                    ma,
                    PortKind::Pod {
                        ips: vec![IpAddr::from(ip(w, 1))],
                        ready_generation: 1,
                    },
                );
                dp.add_port(
                    2,
                    "b",
                    mb,
                    PortKind::Pod {
                        ips: vec![IpAddr::from(ip(w, 2))],
                        ready_generation: 1,
                    },
                );
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
