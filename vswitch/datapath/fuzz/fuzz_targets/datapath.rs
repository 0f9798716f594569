//! Arbitrary frames into the datapath, from any port: it must never panic,
//! every frame must bump exactly one outcome, and a batch must act exactly
//! as its frames one by one (a second datapath takes each frame's two
//! copies as one batch). The conntrack's limits hold throughout: the
//! table never exceeds its size nor a pod its share. Inputs of more than
//! about 54 frames cross the end of the window in which a TCP segment
//! without SYN may pick up a connection. A Service range is set, so that
//! frames from the node port with a pod's source (kube-proxy's way back)
//! are taken for connections the pod opened there. Services are set too, so
//! that pods' connections to their cluster IPs are translated (to the other
//! pod, to the pod itself, or refused for want of an endpoint), and changed
//! as frames pass (a frontend removed and set again, a cluster IP's only
//! frontend removed), so that connections outlive their Service.
//!
//! Run: `cd vswitch/datapath/fuzz && cargo fuzz run datapath` (see README).

#![no_main]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use policy::{Cluster, Engine, Namespace, Pod, PodKey};
use vswitch_datapath::services::{Endpoint, Frontend, FrontendKey, ServiceChange, ServiceTable};
use vswitch_datapath::{Config, Datapath, PortKind};

/// Frontends (one endpoint each: the two datapaths hash under keys of
/// their own, and would choose among several differently): TCP
/// 10.96.0.10:80 to b:80 and 10.96.0.10:81 to a:80 (hairpin), UDP
/// 10.96.0.10:53 to b:53, SCTP 10.96.0.10:9 to b:9, TCP [fd00:10:96::a]:80
/// to [fd00::2]:8080 with affinity, and TCP 10.96.0.11:80 with none.
fn services() -> ServiceTable {
    let ep = |ip: &str, port| Endpoint { ip: ip.parse().unwrap(), port, ready: true, serving: true, terminating: false, local: true };
    let fe = |endpoints, affinity_ms| Frontend { service: "x/s".into(), port_name: None, endpoints, affinity_ms, local_only: false };
    let key = |ip: &str, proto, port| FrontendKey { ip: ip.parse().unwrap(), proto, port };
    let mut t = ServiceTable::new();
    t.insert(key("10.96.0.10", 6, 80), fe(vec![ep("10.0.0.2", 80)], None));
    t.insert(key("10.96.0.10", 6, 81), fe(vec![ep("10.0.0.1", 80)], None));
    t.insert(key("10.96.0.10", 17, 53), fe(vec![ep("10.0.0.2", 53)], None));
    t.insert(key("10.96.0.10", 132, 9), fe(vec![ep("10.0.0.2", 9)], None));
    t.insert(key("fd00:10:96::a", 6, 80), fe(vec![ep("fd00::2", 8080)], Some(1_000)));
    t.insert(key("10.96.0.11", 6, 80), fe(vec![], None));
    t
}

/// A datapath started at `t0` (both of an input start at the same instant:
/// their clocks, in whole milliseconds since the start, must agree).
fn datapath(t0: Instant) -> Datapath {
    let mut dp = Datapath::new(
        Config {
            conntrack_max: 64,
            conntrack_per_pod_max: 24,
            conntrack_pickup_ms: 2_000,
            flow_cache_max: 64,
            frag_max: 16,
            // kube-proxy's translations may come back through the node port
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap(), "fd00:10:96::/108".parse().unwrap()],
            ..Config::default()
        },
        t0,
    );
    let mut c = Cluster::default();
    c.namespaces.insert("x".into(), Namespace::new("x", Default::default()));
    for (name, ip4, ip6) in [("a", "10.0.0.1", "fd00::1"), ("b", "10.0.0.2", "fd00::2")] {
        let p = Pod {
            key: PodKey::new("x", name),
            labels: [("pod".to_string(), name.to_string())].into(),
            ips: vec![ip4.parse().unwrap(), ip6.parse().unwrap()],
            ports: vec![],
        };
        c.pods.insert(p.key.clone(), p);
    }
    let engine = Engine::from_cluster(c).unwrap();
    dp.set_policy(Arc::new(engine.snapshot()));
    dp.set_services(Arc::new(services()));
    dp.add_port(0, "node", [2, 0x6e, 0, 0, 0, 0], PortKind::Node { ips: vec!["192.168.0.1".parse().unwrap()] });
    for (id, ip4, ip6) in [(1u16, "10.0.0.1", "fd00::1"), (2, "10.0.0.2", "fd00::2")] {
        let ips: Vec<IpAddr> = vec![ip4.parse().unwrap(), ip6.parse().unwrap()];
        dp.add_port(id, "pod", [2, 0, 0, 0, 0, id as u8], PortKind::Pod { ips, ready_generation: 0 });
    }
    dp
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut dp = datapath(t0);
    let mut batched = datapath(t0);
    // The input is a sequence of frames: [port, len_hi, len_lo, bytes...]...
    let mut rest = data;
    let mut n = 0u64;
    while rest.len() >= 3 {
        let port = (rest[0] % 4) as u16; // port 3 does not exist
        let len = (u16::from_be_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
        let mut frame = rest[3..3 + len].to_vec();
        rest = &rest[3 + len..];
        // Frames that pass the MAC check get further: let the fuzzer aim.
        if frame.len() >= 12 && port < 3 && rest.first().is_some_and(|b| b & 1 == 1) {
            frame[6..12].copy_from_slice(&[2, if port == 0 { 0x6e } else { 0 }, 0, 0, 0, if port == 0 { 0 } else { port as u8 }]);
        }
        n += 1;
        let now = t0 + Duration::from_millis(n * 37);
        let (mut b1, mut b2) = (frame.clone(), frame.clone());
        let singles = [
            dp.process(port, &mut frame.clone(), now),
            dp.process(port, &mut frame, now), // twice: the second may hit the flow cache
        ];
        let mut actions = Vec::new();
        batched.process_batch(port, &mut [&mut b1[..], &mut b2[..]], &[], now, &mut actions);
        assert_eq!(&singles[..], &actions[..]);
        assert_eq!(frame, b2, "the same rewrite");
        let ct = dp.conntrack();
        assert!(ct.len() <= ct.capacity());
        for pod in [1, 2] {
            assert!(ct.charged(pod) <= 24, "pod {pod} holds {} connections", ct.charged(pod));
        }
        if n % 8 == 0 {
            dp.expire(now, 16);
            batched.expire(now, 16);
        }
        // Services change: web and 10.96.0.11 go, then come back
        let t = services();
        let web = FrontendKey { ip: "10.96.0.10".parse().unwrap(), proto: 6, port: 80 };
        let none = FrontendKey { ip: "10.96.0.11".parse().unwrap(), proto: 6, port: 80 };
        let changes = match n % 16 {
            5 => vec![ServiceChange::Remove(web), ServiceChange::Remove(none)],
            13 => vec![
                ServiceChange::Set(web, t.get(&web).unwrap().clone()),
                ServiceChange::Set(none, t.get(&none).unwrap().clone()),
            ],
            _ => vec![],
        };
        if !changes.is_empty() {
            dp.update_services(changes.clone());
            batched.update_services(changes);
        }
    }
    assert_eq!(dp.counters.outcome_total(), dp.counters.rx_packets);
    assert_eq!(dp.counters, batched.counters);
});
