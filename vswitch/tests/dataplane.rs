//! Whole connections between real TCP/IP stacks (smoltcp pods) through the
//! datapath, in simulated time.

use std::net::IpAddr;
use std::sync::Arc;

use policy::{Cluster, Engine, Namespace, Pod, PodKey, Protocol, manifest};
use vswitch::tools::testnet::{Attempt, HostId, Net};
use vswitch_datapath::counters::Outcome;
use vswitch_datapath::{Config, EstablishedPolicy};

struct World {
    net: Net,
    engine: Engine,
    a: HostId,
    b: HostId,
    ips: Vec<Vec<IpAddr>>,
}

fn world(cfg: Config) -> World {
    let ips: Vec<Vec<IpAddr>> = vec![
        vec![
            "10.244.1.10".parse().unwrap(),
            "fd00:10:244:1::a".parse().unwrap(),
        ],
        vec![
            "10.244.2.10".parse().unwrap(),
            "fd00:10:244:2::a".parse().unwrap(),
        ],
    ];
    let mut c = Cluster::default();
    for ns in ["x", "y"] {
        c.namespaces
            .insert(ns.into(), Namespace::new(ns, Default::default()));
    }
    for (i, (ns, name)) in [("x", "a"), ("y", "b")].iter().enumerate() {
        let p = Pod {
            key: PodKey::new(*ns, *name),
            labels: [("pod".to_string(), name.to_string())].into(),
            ips: ips[i].clone(),
            ports: vec![],
        };
        c.pods.insert(p.key.clone(), p);
    }
    let engine = Engine::from_cluster(c).unwrap();
    let mut net = Net::new(cfg);
    net.dp.set_policy(Arc::new(engine.snapshot()));
    let a = net.add_pod("x/a", 1, &ips[0], engine.generation());
    let b = net.add_pod("y/b", 2, &ips[1], engine.generation());
    World {
        net,
        engine,
        a,
        b,
        ips,
    }
}

impl World {
    fn apply(&mut self, yaml: &str) {
        for o in manifest::parse(yaml) {
            let manifest::Object::NetworkPolicy(p) = o.unwrap() else {
                panic!("not a policy")
            };
            self.engine.upsert_policy(p).unwrap();
        }
        self.net.dp.set_policy(Arc::new(self.engine.snapshot()));
    }

    fn attempt(
        &self,
        from: HostId,
        to: HostId,
        family: usize,
        protocol: Protocol,
        port: u16,
    ) -> Attempt {
        let (fi, ti) = (
            if from == self.a { 0 } else { 1 },
            if to == self.a { 0 } else { 1 },
        );
        Attempt {
            from,
            to,
            src: self.ips[fi][family],
            dst: self.ips[ti][family],
            protocol,
            port,
            serve: None,
        }
    }
}

const DENY_INGRESS_X: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n";

#[test]
fn tcp_udp_and_sctp_connect_over_both_families() {
    let mut w = world(Config::default());
    for family in [0, 1] {
        let attempts: Vec<Attempt> = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .iter()
            .flat_map(|p| {
                [
                    w.attempt(w.a, w.b, family, *p, 80),
                    w.attempt(w.b, w.a, family, *p, 80),
                ]
            })
            .collect();
        assert_eq!(
            w.net.probe(&attempts, 3_000),
            vec![true; 6],
            "family {family}"
        );
    }
    assert_eq!(w.net.dp.counters.get(Outcome::PolicyDeny), 0);
}

#[test]
fn replies_of_allowed_connections_pass_a_deny_all_ingress() {
    let mut w = world(Config::default());
    w.apply(DENY_INGRESS_X);
    // a (isolated for ingress) connects out and gets its answers
    let out = [
        w.attempt(w.a, w.b, 0, Protocol::Tcp, 80),
        w.attempt(w.a, w.b, 0, Protocol::Udp, 53),
        w.attempt(w.a, w.b, 1, Protocol::Sctp, 80),
    ];
    assert_eq!(w.net.probe(&out, 3_000), vec![true; 3]);
    // nothing gets in
    let inward = [
        w.attempt(w.b, w.a, 0, Protocol::Tcp, 80),
        w.attempt(w.b, w.a, 0, Protocol::Udp, 53),
        w.attempt(w.b, w.a, 1, Protocol::Sctp, 80),
    ];
    assert_eq!(w.net.probe(&inward, 3_000), vec![false; 3]);
    assert!(w.net.dp.counters.get(Outcome::PolicyDeny) >= 3);
}

#[test]
fn a_policy_change_cuts_an_established_connection() {
    let mut w = world(Config::default());
    let conn = w
        .net
        .open_tcp(&w.attempt(w.b, w.a, 0, Protocol::Tcp, 80), 3_000)
        .expect("connected");
    assert!(w.net.exchange(&conn, b"before", 2_000));
    let fast_before = w.net.dp.counters.get(Outcome::FastForward);
    assert!(w.net.exchange(&conn, b"cached", 2_000));
    assert!(
        w.net.dp.counters.get(Outcome::FastForward) > fast_before,
        "data of an established flow is fast-pathed"
    );
    w.apply(DENY_INGRESS_X);
    assert!(
        !w.net.exchange(&conn, b"after", 3_000),
        "the connection must be cut"
    );
    assert!(w.net.dp.counters.get(Outcome::PolicyDeny) > 0);
}

#[test]
fn with_keep_an_established_connection_survives_a_policy_change() {
    let mut w = world(Config {
        established: EstablishedPolicy::Keep,
        ..Config::default()
    });
    let conn = w
        .net
        .open_tcp(&w.attempt(w.b, w.a, 0, Protocol::Tcp, 80), 3_000)
        .expect("connected");
    assert!(w.net.exchange(&conn, b"before", 2_000));
    w.apply(DENY_INGRESS_X);
    assert!(w.net.exchange(&conn, b"after", 2_000), "kept");
    // new connections follow the new policy
    assert_eq!(
        w.net
            .probe(&[w.attempt(w.b, w.a, 0, Protocol::Tcp, 81)], 3_000),
        vec![false]
    );
}
