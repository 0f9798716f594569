//! The datapath, frame by frame: crafted frames in, actions and counters out.
//! (Whole connections between real TCP/IP stacks are in `dataplane.rs`.)

mod kit;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use etherparse::{PacketBuilder, SlicedPacket};
use kit::{
    A, A4, A6, B, B4, B6, GW, NODE, NODE4, OUT4, PodExt, Rig, arp_request, echo4, frag6_header,
    fragment4, fragment6, ipv6_raw, neighbor_solicitation, pod, tcp4, udp4,
};
use vswitch_datapath::counters::Outcome;
use vswitch_datapath::parse::{self, Mac, Payload};
use vswitch_datapath::{Action, Config, PortKind};

const DENY_INGRESS_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}\n";

fn parsed(frame: &[u8]) -> parse::Parsed {
    parse::parse(frame).expect("a valid frame")
}

#[test]
fn arp_is_answered_by_the_switch() {
    let mut s = Rig::two_pods();
    // the gateway: the switch's MAC
    let Action::Reply(1, r) = s.send(1, &mut arp_request(A, A4, [169, 254, 1, 1])) else {
        panic!("no reply")
    };
    let p = parsed(&r);
    assert_eq!(p.dst_mac, A);
    let Payload::Arp(arp) = p.payload else {
        panic!("not ARP")
    };
    assert!(!arp.request);
    assert_eq!(
        (arp.sender_mac, arp.sender_ip.octets()),
        (GW, [169, 254, 1, 1])
    );
    // another local pod: its own MAC (pods on one subnet talk at L2)
    let Action::Reply(1, r) = s.send(1, &mut arp_request(A, A4, B4)) else {
        panic!("no reply")
    };
    let Payload::Arp(arp) = parsed(&r).payload else {
        panic!("not ARP")
    };
    assert_eq!(arp.sender_mac, B);
    // the node asking for a pod: the gateway's MAC (it routes through us)
    let Action::Reply(0, r) = s.send(0, &mut arp_request(NODE, NODE4, A4)) else {
        panic!("no reply")
    };
    let Payload::Arp(arp) = parsed(&r).payload else {
        panic!("not ARP")
    };
    assert_eq!(arp.sender_mac, GW);
    // address probes (sender 0.0.0.0) are not answered
    assert_eq!(
        s.send(1, &mut arp_request(A, [0; 4], A4)),
        Action::Drop(Outcome::Unsupported)
    );
    assert_eq!(s.count(Outcome::Replied), 3);
}

#[test]
fn neighbor_solicitations_are_answered_and_dad_is_not() {
    let mut s = Rig::two_pods();
    let gw6 = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let Action::Reply(1, r) = s.send(1, &mut neighbor_solicitation(A, A6, gw6)) else {
        panic!("no reply")
    };
    let sliced = SlicedPacket::from_ethernet(&r).unwrap();
    let Some(etherparse::TransportSlice::Icmpv6(icmp)) = sliced.transport else {
        panic!("not ICMPv6")
    };
    assert_eq!(icmp.type_u8(), 136, "a neighbor advertisement");
    assert_eq!(&r[0..6], &A);
    assert_eq!(&r[6..12], &GW);
    // the target link-layer address option carries the gateway's MAC
    assert_eq!(&r[r.len() - 6..], &GW);
    // duplicate address detection (source ::) must not be answered
    let dad = neighbor_solicitation(A, [0; 16], A6);
    assert_eq!(
        s.send(1, &mut dad.clone()),
        Action::Drop(Outcome::Unsupported)
    );
    // a solicitation from another pod's address is a spoof
    assert_eq!(
        s.send(1, &mut neighbor_solicitation(A, B6, gw6)),
        Action::Drop(Outcome::Spoofed)
    );
}

#[test]
fn spoofed_macs_and_addresses_are_dropped_and_counted() {
    let mut s = Rig::two_pods();
    // source MAC of another pod
    assert_eq!(
        s.send(1, &mut tcp4(B, GW, A4, B4, 1, 80, "S", 64)),
        Action::Drop(Outcome::Spoofed)
    );
    // source IP of another pod
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, B4, A4, 1, 80, "S", 64)),
        Action::Drop(Outcome::Spoofed)
    );
    // ARP claiming another pod's address
    assert_eq!(
        s.send(1, &mut arp_request(A, B4, [169, 254, 1, 1])),
        Action::Drop(Outcome::Spoofed)
    );
    // the node may not impersonate a local pod
    assert_eq!(
        s.send(0, &mut tcp4(NODE, GW, B4, A4, 1, 80, "S", 64)),
        Action::Drop(Outcome::Spoofed)
    );
    assert_eq!(s.count(Outcome::Spoofed), 4);
    assert!(
        s.dp.conntrack().is_empty(),
        "nothing was tracked for a spoofer"
    );
}

#[test]
fn routing_rewrites_macs_and_ttl_and_l2_delivery_does_not() {
    let mut s = Rig::two_pods();
    let mut f = tcp4(A, GW, A4, B4, 40000, 80, "S", 64);
    assert_eq!(s.send(1, &mut f), Action::Forward(2));
    let p = SlicedPacket::from_ethernet(&f).unwrap();
    assert_eq!((&f[0..6], &f[6..12]), (&B[..], &GW[..]));
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!()
    };
    assert_eq!(ip.header().ttl(), 63);
    let h = ip.header().to_header();
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "checksum updated with the TTL"
    );
    // at L2, to the pod's own MAC: delivered as is
    let mut f = tcp4(A, B, A4, B4, 40001, 80, "S", 64);
    assert_eq!(s.send(1, &mut f), Action::Forward(2));
    assert_eq!(f[14 + 8], 64, "TTL untouched");
    // to a pod's MAC but another address: no route (no bypass through L2)
    assert_eq!(
        s.send(1, &mut tcp4(A, B, A4, OUT4, 40002, 80, "S", 64)),
        Action::Drop(Outcome::NoRoute)
    );
    // unknown MAC: never flooded
    assert_eq!(
        s.send(
            1,
            &mut tcp4(A, [2, 9, 9, 9, 9, 9], A4, B4, 40003, 80, "S", 64)
        ),
        Action::Drop(Outcome::NoRoute)
    );
    // IPv6: hop limit
    let mut v = Vec::new();
    PacketBuilder::ethernet2(A, GW)
        .ipv6(A6, B6, 9)
        .udp(5, 53)
        .write(&mut v, b"x")
        .unwrap();
    assert_eq!(s.send(1, &mut v), Action::Forward(2));
    assert_eq!(v[14 + 7], 8);
}

#[test]
fn an_expired_ttl_gets_time_exceeded() {
    let mut s = Rig::two_pods();
    let Action::Reply(1, r) = s.send(1, &mut tcp4(A, GW, A4, B4, 40000, 80, "S", 1)) else {
        panic!("no reply")
    };
    let p = SlicedPacket::from_ethernet(&r).unwrap();
    let Some(etherparse::TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMP")
    };
    assert_eq!((icmp.type_u8(), icmp.code_u8()), (11, 0));
    assert_eq!(&r[0..6], &A, "back to the sender");
    let mut v = Vec::new();
    PacketBuilder::ethernet2(A, GW)
        .ipv6(A6, B6, 1)
        .udp(5, 53)
        .write(&mut v, b"x")
        .unwrap();
    let Action::Reply(1, r) = s.send(1, &mut v) else {
        panic!("no reply")
    };
    let p = SlicedPacket::from_ethernet(&r).unwrap();
    let Some(etherparse::TransportSlice::Icmpv6(icmp)) = p.transport else {
        panic!("not ICMPv6")
    };
    assert_eq!(icmp.type_u8(), 3);
    assert_eq!(s.count(Outcome::TtlExpired), 2);
}

/// a's UDP datagram from `sport` to b's port 53, and b's answer; both pass.
fn udp_exchange(s: &mut Rig, sport: u16) {
    assert_eq!(
        s.send(1, &mut udp4(A, GW, A4, B4, sport, 53)),
        Action::Forward(2)
    );
    assert_eq!(
        s.send(2, &mut udp4(B, GW, B4, A4, 53, sport)),
        Action::Forward(1)
    );
}

/// A cached flow whose connection expired does not keep its hole open: the
/// fast path checks the connection (at least once a second) before it
/// trusts the cache.
#[test]
fn an_expired_connection_closes_its_fast_path() {
    let mut s = Rig::two_pods();
    s.apply(DENY_INGRESS_A);
    // a -> b over UDP, b answers: both directions established and cached
    for _ in 0..3 {
        udp_exchange(&mut s, 5000);
    }
    let fast = s.count(Outcome::FastForward);
    assert_eq!(
        s.send(2, &mut udp4(B, GW, B4, A4, 53, 5000)),
        Action::Forward(1)
    );
    assert_eq!(
        s.count(Outcome::FastForward),
        fast + 1,
        "the reply takes the fast path"
    );
    // Idle past the UDP timeout (120 s): b's packet is a new flow into an
    // isolated a, and the cache must not pass it.
    s.ms += 130_000;
    assert_eq!(
        s.send(2, &mut udp4(B, GW, B4, A4, 53, 5000)),
        Action::Drop(Outcome::PolicyDeny)
    );
    // Busy flows stay on the fast path across many refreshes.
    udp_exchange(&mut s, 5001);
    assert_eq!(
        s.send(1, &mut udp4(A, GW, A4, B4, 5001, 53)),
        Action::Forward(2)
    );
    let fast = s.count(Outcome::FastForward);
    for _ in 0..200 {
        s.ms += 999;
        assert_eq!(
            s.send(2, &mut udp4(B, GW, B4, A4, 53, 5001)),
            Action::Forward(1)
        );
    }
    assert_eq!(
        s.count(Outcome::FastForward),
        fast + 200,
        "200 s of hits, all fast"
    );
}

#[test]
fn replies_pass_a_deny_all_ingress_and_new_connections_do_not() {
    let mut s = Rig::two_pods();
    s.apply(DENY_INGRESS_A);
    // a opens to b: allowed (only a's ingress is isolated)
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, A4, B4, 40000, 80, "S", 64)),
        Action::Forward(2)
    );
    // b's reply reaches a
    assert_eq!(
        s.send(2, &mut tcp4(B, GW, B4, A4, 80, 40000, "SA", 64)),
        Action::Forward(1)
    );
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, A4, B4, 40000, 80, "A", 64)),
        Action::Forward(2)
    );
    // but b cannot open a connection to a
    assert_eq!(
        s.send(2, &mut tcp4(B, GW, B4, A4, 40001, 80, "S", 64)),
        Action::Drop(Outcome::PolicyDeny)
    );
    // nor sneak in with a non-SYN packet of an unknown connection
    assert_eq!(
        s.send(2, &mut tcp4(B, GW, B4, A4, 40002, 80, "A", 64)),
        Action::Drop(Outcome::PolicyDeny)
    );
}

#[test]
fn an_echo_reply_does_not_open_ingress() {
    let mut s = Rig::two_pods();
    s.apply(DENY_INGRESS_A);
    // an unsolicited echo reply towards a: dropped, and it opens nothing
    assert_eq!(
        s.send(2, &mut echo4(B, B4, A4, 7, false)),
        Action::Drop(Outcome::Untracked)
    );
    assert_eq!(
        s.send(2, &mut echo4(B, B4, A4, 7, true)),
        Action::Drop(Outcome::PolicyDeny)
    );
    // a pings b; b's reply comes back
    assert_eq!(
        s.send(1, &mut echo4(A, A4, B4, 9, true)),
        Action::Forward(2)
    );
    assert_eq!(
        s.send(2, &mut echo4(B, B4, A4, 9, false)),
        Action::Forward(1)
    );
    // b cannot use that identifier to send requests the other way
    assert_eq!(
        s.send(2, &mut echo4(B, B4, A4, 9, true)),
        Action::Drop(Outcome::PolicyDeny)
    );
}

#[test]
fn fragments_follow_their_first_fragment() {
    let mut s = Rig::two_pods();
    s.apply(DENY_INGRESS_A);
    // a UDP header (ports 5 -> 53, length 24) and 8 bytes: the first fragment
    let first: Vec<u8> = [0, 5, 0, 53, 0, 24, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8].to_vec();
    assert_eq!(
        s.send(1, &mut fragment4(A, A4, B4, 77, 0, true, &first)),
        Action::Forward(2)
    );
    assert_eq!(
        s.send(1, &mut fragment4(A, A4, B4, 77, 2, false, &[9; 8])),
        Action::Forward(2)
    );
    // a later fragment whose first fragment never passed
    assert_eq!(
        s.send(1, &mut fragment4(A, A4, B4, 78, 2, false, &[9; 8])),
        Action::Drop(Outcome::FragmentUnknown)
    );
    // towards the isolated pod: the first is denied, so the rest is too
    assert_eq!(
        s.send(2, &mut fragment4(B, B4, A4, 79, 0, true, &first)),
        Action::Drop(Outcome::PolicyDeny)
    );
    assert_eq!(
        s.send(2, &mut fragment4(B, B4, A4, 79, 2, false, &[9; 8])),
        Action::Drop(Outcome::FragmentUnknown)
    );
}

#[test]
fn a_full_conntrack_table_drops_new_flows_and_keeps_old_ones() {
    let mut s = Rig::two_pods_with(Config {
        conntrack_max: 2,
        ..Config::default()
    });
    // two answered flows fill it (unanswered ones would make room: early drop)
    for sport in [1, 2] {
        udp_exchange(&mut s, sport);
    }
    assert_eq!(
        s.send(1, &mut udp4(A, GW, A4, B4, 3, 53)),
        Action::Drop(Outcome::TableFull)
    );
    assert_eq!(
        s.send(2, &mut udp4(B, GW, B4, A4, 53, 1)),
        Action::Forward(1),
        "tracked flows still pass"
    );
    assert_eq!(s.count(Outcome::TableFull), 1);
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    let mut s = Rig::two_pods();
    let good = tcp4(A, GW, A4, B4, 40000, 80, "S", 64);
    let mut cases: Vec<Vec<u8>> = vec![
        A[..4].to_vec(),              // runt
        good[..14 + 10].to_vec(),     // truncated IPv4 header
        good[..14 + 20 + 8].to_vec(), // truncated TCP header
    ];
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x43;
    cases.push(bad_ihl);
    let mut bad_len = good.clone();
    bad_len[14 + 2] = 0xff; // total length beyond the frame
    cases.push(bad_len);
    for (i, mut c) in cases.into_iter().enumerate() {
        if c.len() >= 12 {
            c[6..12].copy_from_slice(&A);
        }
        assert_eq!(
            s.send(1, &mut c),
            Action::Drop(Outcome::Malformed),
            "case {i}"
        );
    }
    let mut other = good.clone();
    other[12..14].copy_from_slice(&[0x88, 0xcc]); // LLDP
    assert_eq!(s.send(1, &mut other), Action::Drop(Outcome::Unsupported));
    assert_eq!(s.count(Outcome::Malformed), 5);
}

#[test]
fn established_flows_take_the_fast_path_until_the_policy_changes() {
    let mut s = Rig::two_pods();
    s.send(1, &mut tcp4(A, GW, A4, B4, 40000, 80, "S", 64));
    s.send(2, &mut tcp4(B, GW, B4, A4, 80, 40000, "SA", 64));
    for _ in 0..5 {
        assert_eq!(
            s.send(1, &mut tcp4(A, GW, A4, B4, 40000, 80, "A", 64)),
            Action::Forward(2)
        );
    }
    assert_eq!(
        s.count(Outcome::FastForward),
        4,
        "the first data packet fills the cache"
    );
    let mut f = tcp4(A, GW, A4, B4, 40000, 80, "A", 64);
    s.send(1, &mut f);
    assert_eq!(
        (&f[0..6], f[14 + 8]),
        (&B[..], 63),
        "the fast path rewrites too"
    );
    // a new generation: the next packet is checked again on the slow path
    s.apply(DENY_INGRESS_A);
    let before = s.count(Outcome::SlowForward);
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, A4, B4, 40000, 80, "A", 64)),
        Action::Forward(2)
    );
    assert_eq!(s.count(Outcome::SlowForward), before + 1);
}

#[test]
fn a_policy_change_cuts_established_connections_unless_told_to_keep_them() {
    for (keep, expect) in [
        (false, Action::Drop(Outcome::PolicyDeny)),
        (true, Action::Forward(1)),
    ] {
        let mut s = Rig::two_pods_with(Config {
            established: if keep {
                vswitch_datapath::EstablishedPolicy::Keep
            } else {
                vswitch_datapath::EstablishedPolicy::Recheck
            },
            ..Config::default()
        });
        // b connects to a and the connection is established and cached
        s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "S", 64));
        s.send(1, &mut tcp4(A, GW, A4, B4, 80, 40000, "SA", 64));
        s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "A", 64));
        s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "A", 64));
        s.apply(DENY_INGRESS_A);
        assert_eq!(
            s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "A", 64)),
            expect,
            "keep={keep}"
        );
    }
}

#[test]
fn a_new_pod_gets_no_traffic_before_its_policy_generation() {
    let mut s = Rig::two_pods();
    let c: Mac = [0x02, 0, 0, 0, 0, 3];
    s.dp.add_port(
        3,
        "x/c",
        c,
        PortKind::Pod {
            ips: vec![IpAddr::from([10, 0, 0, 3])],
            ready_generation: s.engine.generation() + 1,
        },
    );
    assert_eq!(
        s.send(3, &mut udp4(c, GW, [10, 0, 0, 3], B4, 1, 53)),
        Action::Drop(Outcome::NotReady)
    );
    assert_eq!(
        s.send(1, &mut udp4(A, GW, A4, [10, 0, 0, 3], 1, 53)),
        Action::Drop(Outcome::NotReady)
    );
    let p = pod("x", "c", &[IpAddr::from([10, 0, 0, 3])])
        .labelled("pod", "c")
        .serving("http", 80);
    s.engine.upsert_pod(p).unwrap();
    s.dp.set_policy(Arc::new(s.engine.snapshot()));
    assert_eq!(
        s.send(3, &mut udp4(c, GW, [10, 0, 0, 3], B4, 1, 53)),
        Action::Forward(2)
    );
}

/// A daemon whose policy source has not delivered its first cluster marks
/// ports never ready; the first cluster makes them ready.
#[test]
fn a_port_waiting_for_the_source_is_closed_until_marked_ready() {
    let mut s = Rig::two_pods();
    s.dp.set_ready(1, u64::MAX);
    assert_eq!(
        s.send(1, &mut udp4(A, GW, A4, B4, 1, 53)),
        Action::Drop(Outcome::NotReady)
    );
    s.dp.set_ready(1, s.engine.generation());
    assert_eq!(
        s.send(1, &mut udp4(A, GW, A4, B4, 1, 53)),
        Action::Forward(2)
    );
}

#[test]
fn the_node_reaches_isolated_pods_and_pods_reach_outside_through_it() {
    let mut s = Rig::two_pods();
    s.apply(DENY_INGRESS_A);
    s.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: out, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: b}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24}}], ports: [{port: 443}]}]}\n",
    );
    // kubelet probe: node address to an isolated pod
    assert_eq!(
        s.send(0, &mut tcp4(NODE, GW, NODE4, A4, 50000, 80, "S", 64)),
        Action::Forward(1)
    );
    // an outside address through the node port is policed like any peer
    assert_eq!(
        s.send(0, &mut tcp4(NODE, GW, OUT4, A4, 50001, 80, "S", 64)),
        Action::Drop(Outcome::PolicyDeny)
    );
    // b may reach 203.0.113.0/24 on 443 only, through the node port
    let mut f = tcp4(B, GW, B4, OUT4, 40000, 443, "S", 64);
    assert_eq!(s.send(2, &mut f), Action::Forward(0));
    assert_eq!(&f[0..6], &NODE);
    assert_eq!(
        s.send(2, &mut tcp4(B, GW, B4, OUT4, 40001, 80, "S", 64)),
        Action::Drop(Outcome::PolicyDeny)
    );
    // and its reply comes back in
    assert_eq!(
        s.send(0, &mut tcp4(NODE, GW, OUT4, B4, 443, 40000, "SA", 64)),
        Action::Forward(2)
    );
    // the node port does not hairpin outside traffic
    assert_eq!(
        s.send(0, &mut tcp4(NODE, GW, OUT4, [8, 8, 8, 8], 1, 80, "S", 64)),
        Action::Drop(Outcome::NoRoute)
    );
}

#[test]
fn outcomes_add_up_to_packets_received() {
    let mut s = Rig::two_pods_with(Config {
        conntrack_max: 16,
        ..Config::default()
    });
    s.apply(DENY_INGRESS_A);
    let mut rng = policy::synth::Rng::new(42);
    let macs = [A, B, NODE, GW];
    let ips = [A4, B4, NODE4, OUT4];
    for i in 0..5_000 {
        let port = rng.below(3) as u16;
        let own = [NODE, A, B][port as usize];
        let src_mac = if rng.chance(90) {
            own
        } else {
            *rng.pick(&macs)
        };
        let dst_mac = if rng.chance(80) { GW } else { *rng.pick(&macs) };
        let (src, dst) = (*rng.pick(&ips), *rng.pick(&ips));
        let mut f = match rng.below(6) {
            0 => udp4(src_mac, dst_mac, src, dst, rng.below(4) as u16, 53),
            1 => echo4(src_mac, src, dst, rng.below(3) as u16, rng.chance(50)),
            2 => arp_request(src_mac, src, dst),
            3 => {
                let mut f = tcp4(src_mac, dst_mac, src, dst, 1, 80, "S", 64);
                let cut = rng.below(f.len());
                f.truncate(cut);
                f
            }
            _ => tcp4(
                src_mac,
                dst_mac,
                src,
                dst,
                rng.below(5) as u16,
                80,
                ["S", "SA", "A", "F", "R"][rng.below(5)],
                rng.below(3) as u8,
            ),
        };
        if i % 100 == 0 {
            s.dp.expire(s.t0 + Duration::from_millis(s.ms), 64);
        }
        s.send(port, &mut f);
    }
    assert_eq!(s.dp.counters.rx_packets, 5_000);
    assert_eq!(s.dp.counters.outcome_total(), 5_000);
    for (_, p) in s.dp.ports() {
        assert_eq!(
            p.counters.outcome_total(),
            p.counters.rx_packets,
            "port {}",
            p.name
        );
    }
    // the mix must have exercised most outcomes, or the sum proves little
    let seen = s.dp.counters.nonzero().len();
    assert!(
        seen >= 8,
        "only {seen} outcomes: {:?}",
        s.dp.counters.nonzero()
    );
}

#[test]
fn ipv6_fragments_behind_an_extension_header_follow_their_first() {
    let mut s = Rig::two_pods();
    s.apply(DENY_INGRESS_A);
    let first: Vec<u8> = [0, 5, 0, 53, 0, 24, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8].to_vec();
    assert_eq!(
        s.send(1, &mut fragment6(A, A6, B6, 5, 0, true, &first)),
        Action::Forward(2)
    );
    assert_eq!(
        s.send(1, &mut fragment6(A, A6, B6, 5, 2, false, &[9; 8])),
        Action::Forward(2)
    );
    assert_eq!(
        s.send(2, &mut fragment6(B, B6, A6, 6, 0, true, &first)),
        Action::Drop(Outcome::PolicyDeny)
    );
    assert_eq!(
        s.send(2, &mut fragment6(B, B6, A6, 6, 2, false, &[9; 8])),
        Action::Drop(Outcome::FragmentUnknown)
    );
}

#[test]
fn batches_act_exactly_like_single_frames() {
    // A small flow cache fills, and new flows stay on the slow path; the
    // two datapaths share its hash key, or a bucket that fills in one (its
    // flows replacing each other) but not in the other would make them
    // differ (one run in about 300 did, with keys of their own).
    use std::hash::BuildHasher;
    let key = std::collections::hash_map::RandomState::new().hash_one(0u8);
    let cfg = || Config {
        conntrack_max: 32,
        flow_cache_max: 16,
        flow_cache_key: Some(key),
        ..Config::default()
    };
    let (mut one, mut many) = (Rig::two_pods_with(cfg()), Rig::two_pods_with(cfg()));
    one.apply(DENY_INGRESS_A);
    many.apply(DENY_INGRESS_A);
    let mut rng = policy::synth::Rng::new(7);
    let ips = [A4, B4, NODE4, OUT4];
    let mut t = 0u64;
    for _round in 0..300 {
        let port = 1 + rng.below(2) as u16;
        let mac = [A, B][port as usize - 1];
        let n = 1 + rng.below(80);
        let mut frames: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                let (src, dst) = ([A4, B4][port as usize - 1], *rng.pick(&ips));
                match rng.below(3) {
                    0 => udp4(mac, GW, src, dst, rng.below(6) as u16, 53),
                    1 => {
                        // a client's segment, or a server's (a reply when
                        // the other pod opened that connection)
                        let (client, server) = (rng.below(6) as u16, 80);
                        let (sport, dport) = if rng.chance(50) {
                            (client, server)
                        } else {
                            (server, client)
                        };
                        let flags = ["S", "SA", "A", "A", "A", "A", "F"][rng.below(7)];
                        tcp4(mac, GW, src, dst, sport, dport, flags, 64)
                    }
                    _ => udp4(mac, B, src, dst, rng.below(6) as u16, 53),
                }
            })
            .collect();
        t += 1 + rng.below(2000) as u64;
        let now = one.t0 + Duration::from_millis(t);
        let singles: Vec<Action> = frames
            .clone()
            .iter_mut()
            .map(|f| one.dp.process(port, f, now))
            .collect();
        let mut refs: Vec<&mut [u8]> = frames.iter_mut().map(|f| f.as_mut_slice()).collect();
        let mut batched = Vec::new();
        many.dp.process_batch(
            port,
            &mut refs,
            &[],
            many.t0 + Duration::from_millis(t),
            &mut batched,
        );
        assert_eq!(singles, batched);
    }
    assert_eq!(one.dp.counters, many.dp.counters);
    // per port too: what each received and sent (a batch counts its hits
    // at once)
    let ports = |s: &Rig| -> Vec<_> {
        s.dp.ports()
            .map(|(id, p)| (id, p.counters.clone()))
            .collect()
    };
    assert_eq!(ports(&one), ports(&many));
    // (the mix's SYNs after FINs open new connections, not established
    // until a reply, so hits are fewer than the frames might suggest)
    assert!(
        many.dp.counters.get(Outcome::FastForward) > 40,
        "{:?}",
        many.dp.counters.nonzero()
    );
}

/// A connection closed by FIN both ways or by RST is over: a new SYN with
/// its 5-tuple opens a new connection, judged by the policy in force now,
/// even when established connections are kept across policy changes.
#[test]
fn a_new_syn_reusing_a_closed_connections_tuple_is_judged_by_the_policy_now() {
    for keep in [true, false] {
        for close in ["fin", "rst"] {
            let mut s = Rig::two_pods_with(Config {
                established: if keep {
                    vswitch_datapath::EstablishedPolicy::Keep
                } else {
                    vswitch_datapath::EstablishedPolicy::Recheck
                },
                ..Config::default()
            });
            let what = format!("keep={keep} close={close}");
            // b connects to a, allowed, established and cached
            s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "S", 64));
            s.send(1, &mut tcp4(A, GW, A4, B4, 80, 40000, "SA", 64));
            s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "A", 64));
            s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "A", 64));
            // and closed
            if close == "fin" {
                s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "FA", 64));
                s.send(1, &mut tcp4(A, GW, A4, B4, 80, 40000, "FA", 64));
                s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "A", 64));
            } else {
                s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "R", 64));
            }
            s.apply(DENY_INGRESS_A);
            let denied = s.count(Outcome::PolicyDeny);
            assert_eq!(
                s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "S", 64)),
                Action::Drop(Outcome::PolicyDeny),
                "{what}"
            );
            assert_eq!(s.count(Outcome::PolicyDeny), denied + 1, "{what}");
            // and again: the denied SYN left nothing behind to pass the next
            assert_eq!(
                s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "S", 64)),
                Action::Drop(Outcome::PolicyDeny),
                "{what}"
            );
            assert_eq!(
                s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "A", 64)),
                Action::Drop(Outcome::PolicyDeny),
                "{what}"
            );
        }
    }
}

/// Under Keep, a connection still open when the policy denies it goes on,
/// and only its end lets a new SYN be judged again.
#[test]
fn a_kept_connection_passes_after_a_deny_until_it_closes() {
    let mut s = Rig::two_pods_with(Config {
        established: vswitch_datapath::EstablishedPolicy::Keep,
        ..Config::default()
    });
    s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "S", 64));
    s.send(1, &mut tcp4(A, GW, A4, B4, 80, 40000, "SA", 64));
    s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "A", 64));
    s.apply(DENY_INGRESS_A);
    for _ in 0..3 {
        assert_eq!(
            s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "A", 64)),
            Action::Forward(1)
        );
        assert_eq!(
            s.send(1, &mut tcp4(A, GW, A4, B4, 80, 40000, "A", 64)),
            Action::Forward(2)
        );
    }
    // then it closes, and a new SYN is judged by the policy now; the flow
    // cache's entry for the old connection (filled under the new policy)
    // carries nothing of the new one either
    assert_eq!(
        s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "FA", 64)),
        Action::Forward(1)
    );
    assert_eq!(
        s.send(1, &mut tcp4(A, GW, A4, B4, 80, 40000, "FA", 64)),
        Action::Forward(2)
    );
    assert_eq!(
        s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "S", 64)),
        Action::Drop(Outcome::PolicyDeny)
    );
    for _ in 0..3 {
        assert_eq!(
            s.send(2, &mut tcp4(B, GW, B4, A4, 40000, 80, "A", 64)),
            Action::Drop(Outcome::PolicyDeny)
        );
    }
}

/// Pod b takes TCP 80 and UDP 53 only.
const B_SERVES_80_AND_53: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspec: {podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress], ingress: [{ports: [{protocol: TCP, port: 80}, {protocol: UDP, port: 53}]}]}\n";

const FRAG: u8 = 44;
const DST_OPTS: u8 = 60;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// A TCP SYN header from port 40000 to `dport` (checksum not computed: the
/// switch does not check it).
fn syn_header(dport: u16) -> Vec<u8> {
    let mut h = vec![
        0x9c, 0x40, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0x10, 0, 0, 0, 0, 0,
    ];
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h
}

/// An IPv6 packet is a fragment by its FIRST Fragment header; what follows
/// it is the fragmentable part, data to the receiver, not headers: a decoy
/// Fragment header there makes neither a first fragment nor a follower.
#[test]
fn a_decoy_fragment_header_behind_the_first_is_not_a_header() {
    let mut s = Rig::two_pods();
    s.apply(B_SERVES_80_AND_53);
    // an allowed datagram, id 5: its first fragment (a SYN to 80) passes
    let mut first = frag6_header(TCP, 5, 0, true).to_vec();
    first.extend(syn_header(80));
    assert_eq!(
        s.send(1, &mut ipv6_raw(A, A6, B6, FRAG, &first)),
        Action::Forward(2)
    );
    // non-first fragments of an unknown datagram (id 9) carrying a decoy
    // Fragment header that claims offset 0 (of datagram 5, or of its own)
    // and a SYN to a denied port, or to an allowed one
    for (decoy_id, dport) in [(5, 22), (9, 22), (5, 80), (9, 80)] {
        let mut f = frag6_header(FRAG, 9, 3, true).to_vec();
        f.extend(frag6_header(TCP, decoy_id, 0, true));
        f.extend(syn_header(dport));
        let unknown = s.count(Outcome::FragmentUnknown);
        assert_eq!(
            s.send(1, &mut ipv6_raw(A, A6, B6, FRAG, &f)),
            Action::Drop(Outcome::FragmentUnknown),
            "decoy id {decoy_id}, port {dport}"
        );
        assert_eq!(s.count(Outcome::FragmentUnknown), unknown + 1);
    }
    // a first fragment (id 9) carrying a decoy that claims to follow the
    // allowed datagram 5, and a SYN to a denied port: a Fragment header in
    // a fragment's fragmentable part is nothing the switch carries
    let mut f = frag6_header(FRAG, 9, 0, true).to_vec();
    f.extend(frag6_header(TCP, 5, 3, true));
    f.extend(syn_header(22));
    let malformed = s.count(Outcome::Malformed);
    assert_eq!(
        s.send(1, &mut ipv6_raw(A, A6, B6, FRAG, &f)),
        Action::Drop(Outcome::Malformed)
    );
    assert_eq!(s.count(Outcome::Malformed), malformed + 1);
    // and datagram 5's real followers still follow
    assert_eq!(
        s.send(
            1,
            &mut ipv6_raw(A, A6, B6, FRAG, &frag6_header(TCP, 5, 3, false))
        ),
        Action::Forward(2)
    );
}

/// A fragmentable part may start with a Destination Options header: the
/// first fragment is judged by the UDP header behind it, and the later
/// fragments (data, whatever their bytes) follow.
#[test]
fn fragments_whose_fragmentable_part_starts_with_destination_options_pass() {
    let mut s = Rig::two_pods();
    s.apply(B_SERVES_80_AND_53);
    // Destination Options (8 bytes: a PadN), UDP (8 bytes), 8 bytes of data
    let dst_opts = [UDP, 0, 1, 4, 0, 0, 0, 0];
    for (id, dport, expect) in [
        (11, 53, Action::Forward(2)),
        (12, 9999, Action::Drop(Outcome::PolicyDeny)),
    ] {
        let mut first = frag6_header(DST_OPTS, id, 0, true).to_vec();
        first.extend(dst_opts);
        first.extend([0x14, 0xe9]); // source port 5353
        first.extend(u16::to_be_bytes(dport));
        first.extend([0, 40, 0, 0]); // length (of the whole datagram), checksum
        first.extend([1; 8]);
        assert_eq!(
            s.send(1, &mut ipv6_raw(A, A6, B6, FRAG, &first)),
            expect,
            "port {dport}"
        );
        // the rest: bytes that would not parse as Destination Options
        let mut last = frag6_header(DST_OPTS, id, 3, false).to_vec();
        last.extend([0xff; 16]);
        let expect = if dport == 53 {
            Action::Forward(2)
        } else {
            Action::Drop(Outcome::FragmentUnknown)
        };
        assert_eq!(
            s.send(1, &mut ipv6_raw(A, A6, B6, FRAG, &last)),
            expect,
            "port {dport}"
        );
    }
}
