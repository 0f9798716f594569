//! A hostile pod against connection tracking, frame by frame: floods that
//! would fill the table, a pod that goes away, and a cut connection that
//! one side tries to revive.

mod kit;

use std::net::IpAddr;

use kit::{A, A4, B, B4, GW, Rig, tcp4, udp4};
use vswitch_datapath::counters::Outcome;
use vswitch_datapath::{Action, Config};

/// Pod b takes no ingress at all.
const DENY_INGRESS_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress]}\n";

/// A small table: floods fill it in a few hundred frames.
fn small() -> Config {
    Config {
        conntrack_max: 64,
        ..Config::default()
    }
}

/// The connections whose originator has address `src`.
fn opened_by(s: &Rig, src: [u8; 4]) -> usize {
    let ct = s.dp.conntrack();
    ct.entries()
        .filter(|(r, _)| ct.orig_tuple(*r).unwrap().src == IpAddr::from(src))
        .count()
}

/// b connects to a's port 80 and a answers: both pass.
fn b_connects_to_a(s: &mut Rig, sport: u16) {
    assert_eq!(
        s.send(2, &mut tcp4(B, GW, B4, A4, sport, 80, "S", 64)),
        Action::Forward(1),
        "b's SYN"
    );
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, A4, B4, 80, sport, "SA", 64)),
        Action::Forward(2),
        "a's SYN-ACK"
    );
}

/// Bare ACKs that policy allows, to many ports (within the pickup grace
/// period after a start, when such a segment may still create an entry):
/// the flood fills what a may hold, never what b needs.
#[test]
fn a_bare_ack_flood_from_one_pod_does_not_stop_another_pod_connecting() {
    let mut s = Rig::two_pods_with(small());
    b_connects_to_a(&mut s, 39_999);
    for p in 0..1_000u16 {
        s.send(1, &mut tcp4(A, GW, A4, B4, 10_000 + p, 80, "A", 64));
    }
    // b's connection from before the flood goes on, and b opens a new one
    assert_eq!(
        s.send(2, &mut tcp4(B, GW, B4, A4, 39_999, 80, "A", 64)),
        Action::Forward(1)
    );
    b_connects_to_a(&mut s, 40_000);
    assert_eq!(
        s.send(2, &mut tcp4(B, GW, B4, A4, 40_000, 80, "A", 64)),
        Action::Forward(1)
    );
    // what the flood cost is counted on a's port only
    let b = &s.dp.port(2).unwrap().counters;
    assert_eq!(b.get(Outcome::TableFull), 0);
    assert!(s.dp.conntrack().len() <= 64);
}

/// After the grace period, a segment without SYN of no known connection
/// creates nothing, whatever policy says.
#[test]
fn a_bare_ack_after_the_grace_period_creates_no_entry() {
    let mut s = Rig::two_pods_with(small());
    s.ms += 61_000;
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, A4, B4, 10_000, 80, "A", 64)),
        Action::Drop(Outcome::Untracked)
    );
    assert_eq!(s.dp.conntrack().len(), 0);
    // and b, answering such a segment, opens nothing either
    assert_eq!(
        s.send(2, &mut tcp4(B, GW, B4, A4, 80, 10_000, "A", 64)),
        Action::Drop(Outcome::Untracked)
    );
    assert_eq!(s.dp.conntrack().len(), 0);
}

/// A segment picked up mid-stream during the grace period is not
/// established before the other side answers, and without an answer it
/// is gone after the short unreplied timeout (not five days).
#[test]
fn a_mid_stream_pickup_is_short_lived_until_answered() {
    let mut s = Rig::two_pods_with(small());
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, A4, B4, 10_000, 80, "A", 64)),
        Action::Forward(2)
    );
    assert_eq!(s.dp.conntrack().len(), 1);
    s.ms += 61_000;
    let now = s.now();
    s.dp.expire(now, 1_000);
    assert_eq!(s.dp.conntrack().len(), 0, "an unanswered pickup expires");
    // answered, it lives on
    let mut s = Rig::two_pods_with(small());
    s.send(1, &mut tcp4(A, GW, A4, B4, 10_001, 80, "A", 64));
    assert_eq!(
        s.send(2, &mut tcp4(B, GW, B4, A4, 80, 10_001, "A", 64)),
        Action::Forward(1)
    );
    s.ms += 600_000;
    let now = s.now();
    s.dp.expire(now, 1_000);
    assert_eq!(
        s.dp.conntrack().len(),
        1,
        "an answered pickup is established"
    );
}

/// UDP to many ports that nobody answers.
#[test]
fn a_udp_flood_to_many_ports_does_not_stop_another_pod_connecting() {
    let mut s = Rig::two_pods_with(small());
    for p in 0..1_000u16 {
        s.send(1, &mut udp4(A, GW, A4, B4, 5000, 1 + p));
    }
    assert_eq!(
        s.send(2, &mut udp4(B, GW, B4, A4, 5353, 53)),
        Action::Forward(1),
        "b's new UDP flow"
    );
    assert_eq!(
        s.send(1, &mut udp4(A, GW, A4, B4, 53, 5353)),
        Action::Forward(2),
        "a's answer"
    );
    b_connects_to_a(&mut s, 40_000);
    assert_eq!(s.dp.port(2).unwrap().counters.get(Outcome::TableFull), 0);
}

/// A pod that answers its own flood (or a peer that does) has replied
/// connections, which early drop does not touch: its share bounds it.
#[test]
fn a_pod_whose_flood_is_answered_is_held_to_its_share() {
    let mut s = Rig::two_pods_with(Config {
        conntrack_max: 64,
        conntrack_per_pod_max: 16,
        ..Config::default()
    });
    // a opens 40 UDP flows to b and b answers every one
    for p in 0..40u16 {
        s.send(1, &mut udp4(A, GW, A4, B4, 1000 + p, 53));
        s.send(2, &mut udp4(B, GW, B4, A4, 53, 1000 + p));
    }
    assert_eq!(opened_by(&s, A4), 16, "a holds its share and no more");
    let a = &s.dp.port(1).unwrap().counters;
    assert_eq!(a.get(Outcome::ShareFull), 24, "the rest were refused");
    b_connects_to_a(&mut s, 40_000);
}

/// A pod's connections go with its port (CNI DEL).
#[test]
fn a_removed_pods_connections_go_with_it() {
    let mut s = Rig::two_pods_with(small());
    // a opens to b (answered), b opens to a (answered), a sends unanswered
    s.send(1, &mut udp4(A, GW, A4, B4, 1000, 53));
    s.send(2, &mut udp4(B, GW, B4, A4, 53, 1000));
    b_connects_to_a(&mut s, 40_000);
    for p in 0..5u16 {
        s.send(1, &mut udp4(A, GW, A4, B4, 2000 + p, 53));
    }
    assert_eq!(s.dp.conntrack().len(), 7);
    s.dp.remove_port(1);
    assert_eq!(
        s.dp.conntrack().len(),
        0,
        "no connection to or from the pod is left"
    );
}

/// Under `recheck`, a connection that a new policy denies stays cut both
/// ways: the server's next segment is not a new connection towards the
/// client, and the client's segments do not pass as its replies.
#[test]
fn a_cut_tcp_connection_stays_cut_in_both_directions() {
    let mut s = Rig::two_pods();
    // a connects to b, established and cached both ways
    s.send(1, &mut tcp4(A, GW, A4, B4, 40_000, 80, "S", 64));
    s.send(2, &mut tcp4(B, GW, B4, A4, 80, 40_000, "SA", 64));
    for _ in 0..3 {
        assert_eq!(
            s.send(1, &mut tcp4(A, GW, A4, B4, 40_000, 80, "A", 64)),
            Action::Forward(2)
        );
        assert_eq!(
            s.send(2, &mut tcp4(B, GW, B4, A4, 80, 40_000, "A", 64)),
            Action::Forward(1)
        );
    }
    s.apply(DENY_INGRESS_B);
    for i in 0..4 {
        assert_eq!(
            s.send(1, &mut tcp4(A, GW, A4, B4, 40_000, 80, "A", 64)),
            Action::Drop(Outcome::PolicyDeny),
            "a's segment {i}"
        );
        assert_eq!(
            s.send(2, &mut tcp4(B, GW, B4, A4, 80, 40_000, "A", 64)),
            Action::Drop(Outcome::PolicyDeny),
            "b's segment {i}"
        );
        assert_eq!(opened_by(&s, B4), 0, "no connection from b appears");
    }
    // b's SYN from the server port is no way back in either
    assert_eq!(
        s.send(2, &mut tcp4(B, GW, B4, A4, 80, 40_000, "S", 64)),
        Action::Drop(Outcome::PolicyDeny)
    );
    assert_eq!(opened_by(&s, B4), 0);
    // a's new SYN is judged by the policy in force: still denied, still cut
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, A4, B4, 40_000, 80, "S", 64)),
        Action::Drop(Outcome::PolicyDeny)
    );
    assert_eq!(
        s.send(2, &mut tcp4(B, GW, B4, A4, 80, 40_000, "A", 64)),
        Action::Drop(Outcome::PolicyDeny)
    );
    assert_eq!(opened_by(&s, B4), 0);
}

/// The same for UDP: after the cut, b's datagrams are not a new flow
/// towards a, and a's do not pass.
#[test]
fn a_cut_udp_flow_stays_cut_in_both_directions() {
    let mut s = Rig::two_pods();
    for _ in 0..3 {
        s.send(1, &mut udp4(A, GW, A4, B4, 5000, 53));
        assert_eq!(
            s.send(2, &mut udp4(B, GW, B4, A4, 53, 5000)),
            Action::Forward(1)
        );
    }
    s.apply(DENY_INGRESS_B);
    for i in 0..4 {
        assert_eq!(
            s.send(1, &mut udp4(A, GW, A4, B4, 5000, 53)),
            Action::Drop(Outcome::PolicyDeny),
            "a's datagram {i}"
        );
        assert_eq!(
            s.send(2, &mut udp4(B, GW, B4, A4, 53, 5000)),
            Action::Drop(Outcome::PolicyDeny),
            "b's datagram {i}"
        );
        assert_eq!(opened_by(&s, B4), 0, "no flow from b appears");
    }
}

/// A cut connection whose policy allows it again: a new SYN from the
/// client opens a new connection.
#[test]
fn a_cut_connection_reopens_with_a_new_syn_once_allowed() {
    let mut s = Rig::two_pods();
    s.send(1, &mut tcp4(A, GW, A4, B4, 40_000, 80, "S", 64));
    s.send(2, &mut tcp4(B, GW, B4, A4, 80, 40_000, "SA", 64));
    s.apply(DENY_INGRESS_B);
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, A4, B4, 40_000, 80, "A", 64)),
        Action::Drop(Outcome::PolicyDeny)
    );
    s.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspec: {podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress], ingress: [{ports: [{protocol: TCP, port: 80}]}]}\n",
    );
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, A4, B4, 40_000, 80, "S", 64)),
        Action::Forward(2)
    );
    assert_eq!(
        s.send(2, &mut tcp4(B, GW, B4, A4, 80, 40_000, "SA", 64)),
        Action::Forward(1)
    );
}
