//! A hostile pod against the datapath (issue 13): forged ICMP errors, a
//! pod's egress to its own node, TTL expiry as a liveness probe, frames
//! too big for the destination pod's port.

mod kit;

use std::net::IpAddr;

use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, SlicedPacket, icmpv4};
use kit::*;
use vswitch_datapath::counters::Outcome;
use vswitch_datapath::parse::Mac;
use vswitch_datapath::{Action, Config, Offload, PortKind};

/// Pod c of [`three_pods`], on port 3.
const C: Mac = [0x02, 0, 0, 0, 0, 3];
const C4: [u8; 4] = [10, 0, 0, 3];
const C6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
/// A router somewhere beyond the node.
const ROUTER4: [u8; 4] = [198, 51, 100, 1];

/// [`Rig::two_pods`] plus pod x/c (labelled `pod: c`) on port 3.
fn three_pods() -> Rig {
    let pods = [("a", A4, A6), ("b", B4, B6), ("c", C4, C6)].map(|(name, v4, v6)| {
        pod("x", name, &ips(v4, v6))
            .labelled("pod", name)
            .serving("http", 80)
    });
    let mut rig = Rig::with_cluster(Config::default(), cluster(pods));
    rig.dp.add_port(
        0,
        "node",
        NODE,
        PortKind::Node {
            ips: vec![IpAddr::from(NODE4)],
        },
    );
    let ready = rig.engine.generation();
    for (id, mac, v4, v6) in [(1, A, A4, A6), (2, B, B4, B6), (3, C, C4, C6)] {
        attach_pod(&mut rig.dp, id, "pod", mac, &ips(v4, v6), ready);
    }
    rig
}

/// A NetworkPolicy in namespace x selecting `pod: <of>` with `spec` after
/// its podSelector.
fn policy(name: &str, of: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\n\
         spec: {{podSelector: {{matchLabels: {{pod: {of}}}}}, {spec}}}\n"
    )
}

fn deny_egress(of: &str) -> String {
    policy(&format!("deny-egress-{of}"), of, "policyTypes: [Egress]")
}

fn deny_ingress(of: &str) -> String {
    policy(&format!("deny-ingress-{of}"), of, "policyTypes: [Ingress]")
}

/// The IP header and first 8 transport bytes of `frame`, as an ICMP error
/// quotes them.
fn quote(frame: &[u8], ip_hlen: usize) -> Vec<u8> {
    frame[14..14 + ip_hlen + 8].to_vec()
}

/// An ICMPv4 error from `src` (behind `src_mac`) to `dst`, quoting `quoted`.
fn icmp4_error(src_mac: Mac, src: [u8; 4], dst: [u8; 4], ty: Icmpv4Type, quoted: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, GW)
        .ipv4(src, dst, 64)
        .icmpv4(ty)
        .write(&mut v, quoted)
        .unwrap();
    v
}

/// An ICMPv6 error from `src` (behind `src_mac`) to `dst`, quoting `quoted`.
fn icmp6_error(
    src_mac: Mac,
    src: [u8; 16],
    dst: [u8; 16],
    ty: Icmpv6Type,
    quoted: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, GW)
        .ipv6(src, dst, 64)
        .icmpv6(ty)
        .write(&mut v, quoted)
        .unwrap();
    v
}

const PORT_UNREACHABLE: Icmpv4Type =
    Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port);
const FRAG_NEEDED: Icmpv4Type =
    Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 600,
    });
const TOO_BIG6: Icmpv6Type = Icmpv6Type::PacketTooBig { mtu: 1280 };

/// An error quoting a tracked connection passes only from where it can come
/// from: the quoted peer itself, or a router beyond the node port. A third
/// pod (here one under an egress deny-all) that forges one is dropped and
/// counted: it may not make a's socket fail, lower its path MTU, or talk
/// to a through the quoted bytes.
#[test]
fn icmp_errors_quoting_a_connection_pass_only_from_its_peer_or_beyond() {
    let mut s = three_pods();
    s.apply(&deny_egress("c"));
    // a <-> b over UDP (IPv4, IPv6) and TCP, all answered
    let mut udp = udp4(A, GW, A4, B4, 5000, 53);
    let udp_quote = quote(&udp, 20);
    assert_eq!(s.send(1, &mut udp), Action::Forward(2));
    assert_eq!(
        s.send(2, &mut udp4(B, GW, B4, A4, 53, 5000)),
        Action::Forward(1)
    );
    let mut udp6 = kit::udp6(A, GW, A6, B6, 5000, 53, b"hello");
    let udp6_quote = quote(&udp6, 40);
    assert_eq!(s.send(1, &mut udp6), Action::Forward(2));
    assert_eq!(
        s.send(2, &mut kit::udp6(B, GW, B6, A6, 53, 5000, b"hi")),
        Action::Forward(1)
    );
    let mut syn = tcp4(A, GW, A4, B4, 40000, 80, "S", 64);
    let tcp_quote = quote(&syn, 20);
    assert_eq!(s.send(1, &mut syn), Action::Forward(2));
    assert_eq!(
        s.send(2, &mut tcp4(B, GW, B4, A4, 80, 40000, "SA", 64)),
        Action::Forward(1)
    );

    // c forges errors about them to a
    let forged = [
        icmp4_error(C, C4, A4, PORT_UNREACHABLE, &udp_quote),
        icmp4_error(C, C4, A4, FRAG_NEEDED, &tcp_quote),
        icmp6_error(C, C6, A6, TOO_BIG6, &udp6_quote),
    ];
    for mut f in forged {
        let got = s.send(3, &mut f);
        assert_eq!(got, Action::Drop(Outcome::ForgedIcmp), "c's forged error");
    }
    assert_eq!(s.count(Outcome::ForgedIcmp), 3);
    assert_eq!(s.dp.port(3).unwrap().counters.get(Outcome::ForgedIcmp), 3);

    // b, the quoted peer, may send them
    let genuine = [
        icmp4_error(B, B4, A4, PORT_UNREACHABLE, &udp_quote),
        icmp4_error(B, B4, A4, FRAG_NEEDED, &tcp_quote),
        icmp6_error(B, B6, A6, TOO_BIG6, &udp6_quote),
    ];
    for mut f in genuine {
        assert_eq!(s.send(2, &mut f), Action::Forward(1), "b's own error");
    }

    // a router beyond the node, about a's traffic leaving through it
    let mut out = tcp4(A, GW, A4, OUT4, 40001, 443, "S", 64);
    let out_quote = quote(&out, 20);
    assert_eq!(s.send(1, &mut out), Action::Forward(0));
    assert_eq!(
        s.send(
            0,
            &mut icmp4_error(NODE, ROUTER4, A4, FRAG_NEEDED, &out_quote)
        ),
        Action::Forward(1)
    );
    // but not about a's traffic to b, which never went that way
    assert_eq!(
        s.send(
            0,
            &mut icmp4_error(NODE, ROUTER4, A4, PORT_UNREACHABLE, &udp_quote)
        ),
        Action::Drop(Outcome::ForgedIcmp)
    );
    assert_eq!(s.dp.counters.outcome_total(), s.dp.counters.rx_packets);
}

/// Kubernetes exempts traffic from a node to its pods (kubelet probes),
/// not a pod's egress to its node: that is policed like any egress, the
/// node's address an ipBlock peer. Node-initiated connections and their
/// replies stay exempt, across policy changes too.
#[test]
fn a_pods_egress_to_its_own_node_is_policed_and_the_nodes_traffic_to_it_is_not() {
    let mut s = three_pods();
    s.apply(&deny_egress("a"));
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, A4, NODE4, 40000, 10250, "S", 64)),
        Action::Drop(Outcome::PolicyDeny),
        "a under egress deny-all reaching its node"
    );
    assert_eq!(
        s.send(1, &mut udp4(A, GW, A4, NODE4, 5000, 53)),
        Action::Drop(Outcome::PolicyDeny)
    );
    // the node probes a, a answers, also after a policy change
    assert_eq!(
        s.send(0, &mut tcp4(NODE, GW, NODE4, A4, 50000, 80, "S", 64)),
        Action::Forward(1)
    );
    s.apply(&deny_ingress("a"));
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, A4, NODE4, 80, 50000, "SA", 64)),
        Action::Forward(0),
        "the reply to the node's probe"
    );
    assert_eq!(
        s.send(0, &mut tcp4(NODE, GW, NODE4, A4, 50000, 80, "A", 64)),
        Action::Forward(1)
    );
    // an ipBlock egress rule for the node's address opens it
    s.apply(&policy(
        "to-node",
        "a",
        "policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 192.168.0.1/32}}], ports: [{port: 10250}]}]",
    ));
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, A4, NODE4, 40001, 10250, "S", 64)),
        Action::Forward(0)
    );
    assert_eq!(
        s.send(0, &mut tcp4(NODE, GW, NODE4, A4, 10250, 40001, "SA", 64)),
        Action::Forward(1)
    );
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, A4, NODE4, 40002, 22, "S", 64)),
        Action::Drop(Outcome::PolicyDeny),
        "only the port the rule names"
    );
}

/// Time Exceeded tells the sender that the address is there: answered only
/// for packets policy would let through.
#[test]
fn ttl_expiry_is_answered_only_for_what_policy_lets_through() {
    let mut s = three_pods();
    s.apply(&deny_ingress("b"));
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, A4, B4, 40000, 80, "S", 1)),
        Action::Drop(Outcome::PolicyDeny),
        "an isolated pod probed with TTL 1"
    );
    let mut v6 = Vec::new();
    PacketBuilder::ethernet2(A, GW)
        .ipv6(A6, B6, 1)
        .udp(5, 53)
        .write(&mut v6, b"x")
        .unwrap();
    assert_eq!(s.send(1, &mut v6), Action::Drop(Outcome::PolicyDeny));
    assert_eq!(s.count(Outcome::TtlExpired), 0);
    // c is not isolated: a's probe of it is answered
    let Action::Reply(1, r) = s.send(1, &mut tcp4(A, GW, A4, C4, 40000, 80, "S", 1)) else {
        panic!("no time exceeded for an allowed packet")
    };
    let p = SlicedPacket::from_ethernet(&r).unwrap();
    let Some(etherparse::TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMP")
    };
    assert_eq!((icmp.type_u8(), icmp.code_u8()), (11, 0));
    // and so is a packet of a connection b accepted before its isolation
    let mut s = three_pods();
    assert_eq!(
        s.send(1, &mut udp4(A, GW, A4, B4, 5000, 53)),
        Action::Forward(2)
    );
    assert_eq!(
        s.send(2, &mut udp4(B, GW, B4, A4, 53, 5000)),
        Action::Forward(1)
    );
    let mut f = udp4(A, GW, A4, B4, 5000, 53);
    f[14 + 8] = 1; // TTL
    assert!(matches!(s.send(1, &mut f), Action::Reply(1, _)));
    assert_eq!(s.count(Outcome::TtlExpired), 1);
}

/// A UDP datagram to b of `ip_len` bytes in all (IPv4, DF set).
fn udp4_sized(ip_len: usize) -> Vec<u8> {
    udp4_carrying(A, GW, A4, B4, 5000, 53, &vec![7; ip_len - 28])
}

fn icmp_of(reply: &[u8]) -> (u8, u8, [u8; 4]) {
    let p = SlicedPacket::from_ethernet(reply).unwrap();
    match p.transport {
        Some(etherparse::TransportSlice::Icmpv4(i)) => {
            let h = i.slice();
            (h[0], h[1], h[4..8].try_into().unwrap())
        }
        Some(etherparse::TransportSlice::Icmpv6(i)) => {
            let h = i.slice();
            (h[0], h[1], h[4..8].try_into().unwrap())
        }
        _ => panic!("not ICMP"),
    }
}

/// A packet bigger than the destination pod's port takes is answered as a
/// router would (IPv4 with DF, IPv6) or dropped (IPv4 without DF: the
/// switch does not fragment for local delivery), on the slow path and on
/// the fast one.
#[test]
fn packets_too_big_for_the_destination_pod_are_answered_or_dropped() {
    let mut s = three_pods();
    // the default port MTU, 1500
    assert_eq!(s.send(1, &mut udp4_sized(1500)), Action::Forward(2));
    assert_eq!(
        s.send(2, &mut udp4(B, GW, B4, A4, 53, 5000)),
        Action::Forward(1)
    );
    for _ in 0..2 {
        assert_eq!(s.send(1, &mut udp4_sized(1500)), Action::Forward(2));
    }
    assert_eq!(s.count(Outcome::FastForward), 1, "the flow is cached");
    let Action::Reply(1, r) = s.send(1, &mut udp4_sized(1501)) else {
        panic!("a 1501-byte packet with DF passed")
    };
    assert_eq!(
        icmp_of(&r),
        (3, 4, [0, 0, 0x05, 0xdc]),
        "frag needed, MTU 1500"
    );
    let mut no_df = udp4_sized(1501);
    no_df[14 + 6] &= !0x40;
    assert_eq!(s.send(1, &mut no_df), Action::Drop(Outcome::TooBig));
    let Action::Reply(1, r) = s.send(1, &mut kit::udp6(A, GW, A6, B6, 1, 53, &[0; 1501 - 48]))
    else {
        panic!("a 1501-byte IPv6 packet passed")
    };
    assert_eq!(
        icmp_of(&r),
        (2, 0, [0, 0, 0x05, 0xdc]),
        "packet too big, MTU 1500"
    );
    assert_eq!(s.count(Outcome::TooBig), 3);

    // a port's own MTU; offload frames judged by their segments
    s.dp.set_mtu(2, 1400);
    let Action::Reply(1, r) = s.send(1, &mut udp4_sized(1401)) else {
        panic!("a 1401-byte packet passed a 1400-byte port")
    };
    assert_eq!(
        icmp_of(&r),
        (3, 4, [0, 0, 0x05, 0x78]),
        "frag needed, MTU 1400"
    );
    assert_eq!(s.send(1, &mut udp4_sized(1400)), Action::Forward(2));
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, A4, B4, 40000, 80, "S", 64)),
        Action::Forward(2)
    );
    assert_eq!(
        s.send(2, &mut tcp4(B, GW, B4, A4, 80, 40000, "SA", 64)),
        Action::Forward(1)
    );
    let offload = |seg: u16, s: &mut Rig| {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(A, GW)
            .ipv4(A4, B4, 64)
            .tcp(40000, 80, 1, 4096)
            .ack(1)
            .write(&mut f, &[1; 9000])
            .unwrap();
        let now = s.now();
        s.dp.process_frame(
            1,
            &mut f,
            Offload {
                gso: seg,
                partial_csum: false,
            },
            now,
        )
    };
    for _ in 0..2 {
        // 20 + 20 + 1360 bytes a segment: slow path, then fast
        assert_eq!(offload(1360, &mut s), Action::Forward(2));
    }
    assert!(matches!(offload(1361, &mut s), Action::Reply(1, _)));
    assert_eq!(s.count(Outcome::TooBig), 5);
}

/// A connection cut by a policy change relates nothing: an error quoting
/// it, even from its own peer, is no way past the cut.
#[test]
fn a_cut_connection_relates_no_icmp_error() {
    let mut s = three_pods();
    let mut first = udp4(A, GW, A4, B4, 5000, 53);
    let quoted = quote(&first, 20);
    assert_eq!(s.send(1, &mut first), Action::Forward(2));
    assert_eq!(
        s.send(2, &mut udp4(B, GW, B4, A4, 53, 5000)),
        Action::Forward(1)
    );
    s.apply(&deny_ingress("b"));
    assert_eq!(
        s.send(1, &mut udp4(A, GW, A4, B4, 5000, 53)),
        Action::Drop(Outcome::PolicyDeny),
        "the flow is cut"
    );
    assert_eq!(
        s.send(2, &mut icmp4_error(B, B4, A4, PORT_UNREACHABLE, &quoted)),
        Action::Drop(Outcome::PolicyDeny),
        "b's error about the cut flow"
    );
}

/// The node's exemption covers the connections it starts, not a segment
/// picked up mid-stream (in the grace period after a start): that one is
/// judged by the pod's ingress like any other.
#[test]
fn the_nodes_mid_stream_segment_is_judged_by_policy() {
    let mut s = three_pods();
    s.apply(&deny_ingress("a"));
    assert_eq!(
        s.send(0, &mut tcp4(NODE, GW, NODE4, A4, 50000, 80, "A", 64)),
        Action::Drop(Outcome::PolicyDeny),
        "a bare ACK from the node to an isolated pod"
    );
    assert_eq!(
        s.send(0, &mut tcp4(NODE, GW, NODE4, A4, 50001, 80, "S", 64)),
        Action::Forward(1),
        "the node's SYN (a probe) is exempt"
    );
}
