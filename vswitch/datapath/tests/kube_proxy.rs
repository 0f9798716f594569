//! kube-proxy on the node: a pod's connection to a cluster IP leaves by the
//! node port, kube-proxy DNATs it to an endpoint, and the translated packet
//! comes back by the node port with the pod's own source. Such a packet is
//! taken (only for a connection the pod opened to the service range), policy
//! judges the translated connection, and the endpoint's replies go back by
//! the node port so that the kernel can undo the translation.

mod kit;

use kit::*;
use vswitch_datapath::counters::Outcome;
use vswitch_datapath::{Action, Config};

/// A cluster IP in the service range the tests configure.
const VIP: [u8; 4] = [10, 96, 0, 10];

fn rig() -> Rig {
    Rig::two_pods_with(Config {
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        ..Config::default()
    })
}

fn policy(name: &str, of: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\n\
         spec: {{podSelector: {{matchLabels: {{pod: {of}}}}}, {spec}}}\n"
    )
}

/// The four legs of one TCP handshake step through kube-proxy: a -> VIP,
/// (node) a -> b, b -> a, (node) VIP -> a. Returns each leg's action.
fn handshake(rig: &mut Rig, sport: u16) -> [Action; 4] {
    let mut out = tcp4(A, GW, A4, VIP, sport, 8080, "S", 64);
    let first = rig.send(1, &mut out);
    let mut dnat = tcp4(NODE, GW, A4, B4, sport, 80, "S", 63);
    let second = rig.send(0, &mut dnat);
    let mut reply = tcp4(B, GW, B4, A4, 80, sport, "SA", 64);
    let third = rig.send(2, &mut reply);
    if third == Action::Forward(0) {
        assert_eq!(&reply[0..6], &NODE, "to the node's MAC");
    }
    let mut undone = tcp4(NODE, GW, VIP, A4, 8080, sport, "SA", 63);
    let fourth = rig.send(0, &mut undone);
    [first, second, third, fourth]
}

/// The four legs of one UDP exchange through kube-proxy, as `handshake`:
/// a:`sport` -> VIP:53, (node) a -> b:5353, b -> a, (node) VIP -> a.
fn udp_exchange(rig: &mut Rig, sport: u16) -> [Action; 4] {
    let mut q = udp4(A, GW, A4, VIP, sport, 53);
    let first = rig.send(1, &mut q);
    let mut dnat = udp4(NODE, GW, A4, B4, sport, 5353);
    let second = rig.send(0, &mut dnat);
    let mut answer = udp4(B, GW, B4, A4, 5353, sport);
    let third = rig.send(2, &mut answer);
    let mut undone = udp4(NODE, GW, VIP, A4, 53, sport);
    let fourth = rig.send(0, &mut undone);
    [first, second, third, fourth]
}

/// Every leg forwarded where it belongs.
const THROUGH: [Action; 4] = [
    Action::Forward(0),
    Action::Forward(2),
    Action::Forward(0),
    Action::Forward(1),
];

#[test]
fn a_connection_through_kube_proxy_reaches_its_endpoint_and_replies_go_back_by_the_node() {
    let mut rig = rig();
    assert_eq!(handshake(&mut rig, 40000), THROUGH);
    // later segments, through the flow cache, take the same ways
    assert_eq!(handshake(&mut rig, 40000), THROUGH);
    // the first leg is a's, its translation the node port's (a's share
    // holding both, the translation could evict its own first leg)
    assert_eq!(rig.dp.conntrack().charged(1), 1, "the first leg is a's");
    assert_eq!(
        rig.dp.conntrack().charged(0),
        1,
        "the translation the node's"
    );
    // b's own connection to a, not translated, still goes straight to a
    let mut direct = tcp4(B, GW, B4, A4, 45000, 80, "S", 64);
    assert_eq!(rig.send(2, &mut direct), Action::Forward(1));
}

#[test]
fn only_a_connection_a_pod_opened_to_the_service_range_comes_back_with_its_source() {
    let mut rig = rig();
    // nothing left for a service from a:40001: the node may not speak as a
    let mut forged = tcp4(NODE, GW, A4, B4, 40001, 80, "S", 63);
    let spoofed = rig.count(Outcome::Spoofed);
    assert_eq!(rig.send(0, &mut forged), Action::Drop(Outcome::Spoofed));
    assert_eq!(rig.count(Outcome::Spoofed), spoofed + 1);
    // a's connection to an address outside the service range does not
    // open the way either
    let mut out = tcp4(A, GW, A4, OUT4, 40002, 443, "S", 64);
    assert_eq!(rig.send(1, &mut out), Action::Forward(0));
    let mut back = tcp4(NODE, GW, A4, B4, 40002, 80, "S", 63);
    assert_eq!(rig.send(0, &mut back), Action::Drop(Outcome::Spoofed));
    assert_eq!(rig.count(Outcome::Spoofed), spoofed + 2);
    // nor a UDP flow for a TCP segment on the same port
    let mut udp = udp4(A, GW, A4, VIP, 40003, 53);
    assert_eq!(rig.send(1, &mut udp), Action::Forward(0));
    let mut tcp = tcp4(NODE, GW, A4, B4, 40003, 53, "S", 63);
    assert_eq!(rig.send(0, &mut tcp), Action::Drop(Outcome::Spoofed));
    // and without a service range configured, nothing comes back
    let mut off = Rig::two_pods();
    let mut out = tcp4(A, GW, A4, VIP, 40004, 8080, "S", 64);
    assert_eq!(off.send(1, &mut out), Action::Forward(0));
    let mut back = tcp4(NODE, GW, A4, B4, 40004, 80, "S", 63);
    assert_eq!(off.send(0, &mut back), Action::Drop(Outcome::Spoofed));
}

#[test]
fn policy_judges_the_translated_connection() {
    // a may send only to b, on 80: the cluster IP is no peer of its policy,
    // yet the connection through it passes, as one to b directly would
    let mut rig = rig();
    rig.apply(&policy(
        "a-to-b",
        "a",
        "policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]",
    ));
    assert_eq!(handshake(&mut rig, 41000), THROUGH);
    // b's ingress denies everything: the translated SYN is dropped
    rig.apply(&policy("deny-b", "b", "policyTypes: [Ingress]"));
    let denied = rig.count(Outcome::PolicyDeny);
    let [first, second, ..] = handshake(&mut rig, 41001);
    assert_eq!(
        first,
        Action::Forward(0),
        "the first leg waits for the node"
    );
    assert_eq!(second, Action::Drop(Outcome::PolicyDeny));
    assert!(rig.count(Outcome::PolicyDeny) > denied);
}

#[test]
fn a_udp_service_answers_like_dns() {
    let mut rig = rig();
    assert_eq!(udp_exchange(&mut rig, 50000), THROUGH);
}

#[test]
fn a_pod_opening_endless_service_connections_holds_a_bounded_map() {
    // a table of 64 connections, a pod that opens 10,000 to the Service
    // range, each evicting an older one of its own
    let mut rig = Rig::two_pods_with(Config {
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        conntrack_max: 64,
        conntrack_per_pod_max: 32,
        ..Config::default()
    });
    let mut most = 0;
    for i in 0..10_000u16 {
        let mut syn = tcp4(A, GW, A4, VIP, 1024 + i, 80, "S", 64);
        assert_eq!(rig.send(1, &mut syn), Action::Forward(0));
        most = most.max(rig.dp.service_legs());
    }
    assert!(
        most <= 2 * 64 + 1,
        "the map held {most} entries for a table of 64"
    );
    assert!(rig.dp.conntrack().charged(1) <= 32);
    // and the live ones still come back
    let mut back = tcp4(NODE, GW, A4, B4, 1024 + 9_999, 80, "S", 63);
    assert_eq!(rig.send(0, &mut back), Action::Forward(2));
}

#[test]
fn a_policy_change_keeps_a_connection_through_kube_proxy_that_policy_allows() {
    // a may send only to b on 80: the cluster IP is no peer of its policy
    let mut rig = rig();
    rig.apply(&policy(
        "a-to-b",
        "a",
        "policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]",
    ));
    assert_eq!(handshake(&mut rig, 42000), THROUGH);
    // any new generation re-checks established connections: the translated
    // one is still allowed, and its first leg is no judged connection
    rig.apply(&policy("unrelated", "c", "policyTypes: [Ingress]"));
    assert_eq!(handshake(&mut rig, 42000), THROUGH, "after a policy change");
}

#[test]
fn later_fragments_of_a_translated_datagram_follow_their_first() {
    let mut rig = rig();
    let mut q = udp4(A, GW, A4, VIP, 50100, 53);
    assert_eq!(rig.send(1, &mut q), Action::Forward(0));
    // kube-proxy's translation of a fragmented datagram: first, then rest
    let mut head = Vec::new();
    head.extend_from_slice(&50100u16.to_be_bytes());
    head.extend_from_slice(&5353u16.to_be_bytes());
    head.extend_from_slice(&32u16.to_be_bytes()); // 8 + 24 bytes of data
    head.extend_from_slice(&[0, 0]);
    head.extend_from_slice(b"abcdefgh");
    let mut first = fragment4(NODE, A4, B4, 77, 0, true, &head);
    assert_eq!(rig.send(0, &mut first), Action::Forward(2));
    let mut rest = fragment4(NODE, A4, B4, 77, 2, false, b"ijklmnopqrstuvwx");
    assert_eq!(rig.send(0, &mut rest), Action::Forward(2));
    // a later fragment with no first is still nothing
    let mut stray = fragment4(NODE, A4, B4, 78, 2, false, b"abcdefgh");
    assert_ne!(rig.send(0, &mut stray), Action::Forward(2));
}

#[test]
fn one_socket_to_two_services_keeps_both_ways_back() {
    // one UDP socket of a's asks a Service, which answers ...
    let mut rig = rig();
    assert_eq!(udp_exchange(&mut rig, 50200), THROUGH);
    // ... then a second Service from the same socket, which never answers
    let mut q2 = udp4(A, GW, A4, [10, 96, 0, 11], 50200, 53);
    assert_eq!(rig.send(1, &mut q2), Action::Forward(0));
    // the unanswered one expires (30 s) and is swept; the first lives on
    rig.ms += 31_000;
    let now = rig.now();
    rig.dp.expire(now, 1_000);
    let mut again = udp4(NODE, GW, A4, B4, 50200, 5353);
    assert_eq!(rig.send(0, &mut again), Action::Forward(2));
}
