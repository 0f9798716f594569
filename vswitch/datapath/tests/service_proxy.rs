//! The switch as the service proxy: a pod's connection to a cluster IP is
//! translated to an endpoint, its replies back, with checksums right (as an
//! independent parser, etherparse, and a bit-by-bit CRC32c compute them),
//! policy judging the translated connection, refusals, affinity, hairpin,
//! endpoint changes, the flow cache and batches.

mod kit;

use std::net::IpAddr;
use std::sync::Arc;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use kit::*;
use vswitch_datapath::counters::Outcome;
use vswitch_datapath::services::{Endpoint, Frontend, FrontendKey, ServiceTable};
use vswitch_datapath::{Action, Config, Offload};

/// A cluster IP of each family.
const VIP4: [u8; 4] = [10, 96, 0, 10];
const VIP6: [u8; 16] = [0xfd, 0, 0, 0x10, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

fn endpoint(ip: impl Into<IpAddr>, port: u16) -> Endpoint {
    Endpoint {
        ip: ip.into(),
        port,
        ready: true,
        serving: true,
        terminating: false,
        local: true,
    }
}

fn frontend(endpoints: Vec<Endpoint>) -> Frontend {
    Frontend {
        service: "x/web".into(),
        port_name: None,
        endpoints,
        affinity_ms: None,
        local_only: false,
    }
}

fn key(ip: impl Into<IpAddr>, proto: u8, port: u16) -> FrontendKey {
    FrontendKey {
        ip: ip.into(),
        proto,
        port,
    }
}

/// A table of `(frontend key, frontend)`.
fn table(entries: Vec<(FrontendKey, Frontend)>) -> Arc<ServiceTable> {
    let mut t = ServiceTable::new();
    for (k, f) in entries {
        t.insert(k, f);
    }
    Arc::new(t)
}

/// The two-pod rig with VIP4:8080/TCP and VIP6:53/UDP to b (80, 5353).
fn rig() -> Rig {
    let mut rig = Rig::two_pods();
    rig.dp.set_services(table(vec![
        (key(VIP4, TCP, 8080), frontend(vec![endpoint(B4, 80)])),
        (key(VIP6, UDP, 53), frontend(vec![endpoint(B6, 5353)])),
    ]));
    rig
}

/// What an independent parser reads in a frame: addresses and ports,
/// after asserting that every checksum in it is right.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
}

fn seen(frame: &[u8]) -> Seen {
    let p = SlicedPacket::from_ethernet(frame).expect("parses");
    let (src, dst): (IpAddr, IpAddr) = match p.net.as_ref().expect("ip") {
        NetSlice::Ipv4(ip) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.calc_header_checksum(),
                h.header_checksum,
                "IPv4 header checksum"
            );
            (h.source.into(), h.destination.into())
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header().to_header();
            (h.source.into(), h.destination.into())
        }
        NetSlice::Arp(_) => panic!("arp"),
    };
    let (sport, dport) = match p.transport.as_ref().expect("transport") {
        TransportSlice::Tcp(t) => {
            let want = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => t.calc_checksum_ipv4(s.octets(), d.octets()),
                (IpAddr::V6(s), IpAddr::V6(d)) => t.calc_checksum_ipv6(s.octets(), d.octets()),
                _ => unreachable!(),
            };
            assert_eq!(want.unwrap(), t.checksum(), "TCP checksum");
            (t.source_port(), t.destination_port())
        }
        TransportSlice::Udp(u) => {
            let h = u.to_header();
            let want = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    h.calc_checksum_ipv4_raw(s.octets(), d.octets(), u.payload())
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    h.calc_checksum_ipv6_raw(s.octets(), d.octets(), u.payload())
                }
                _ => unreachable!(),
            };
            assert_eq!(want.unwrap(), u.checksum(), "UDP checksum");
            (u.source_port(), u.destination_port())
        }
        TransportSlice::Icmpv4(i) => {
            assert_eq!(ones_sum(i.slice(), 0), 0xffff, "ICMP checksum");
            (0, 0)
        }
        TransportSlice::Icmpv6(i) => {
            let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
                unreachable!()
            };
            assert!(
                i.is_checksum_valid(s.octets(), d.octets()),
                "ICMPv6 checksum"
            );
            (0, 0)
        }
        other => panic!("unexpected {other:?}"),
    };
    Seen {
        src,
        dst,
        sport,
        dport,
    }
}

/// The ones' complement sum of `data` (RFC 1071), the slow way.
fn ones_sum(data: &[u8], start: u32) -> u16 {
    let mut sum = start;
    for w in data.chunks(2) {
        let hi = w[0] as u32;
        let lo = w.get(1).copied().unwrap_or(0) as u32;
        sum += hi << 8 | lo;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    sum as u16
}

fn at(ip: impl Into<IpAddr>, port: u16, to: impl Into<IpAddr>, to_port: u16) -> Seen {
    Seen {
        src: ip.into(),
        dst: to.into(),
        sport: port,
        dport: to_port,
    }
}

fn policy(name: &str, of: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\n\
         spec: {{podSelector: {{matchLabels: {{pod: {of}}}}}, {spec}}}\n"
    )
}

/// One TCP handshake and a data segment each way through the cluster IP,
/// asserting each leg's translation. Returns the actions of the client's
/// data segment and the endpoint's (which the flow cache may take).
fn tcp_through(rig: &mut Rig, sport: u16) -> (Action, Action) {
    let mut syn = tcp4(A, GW, A4, VIP4, sport, 8080, "S", 64);
    assert_eq!(rig.send(1, &mut syn), Action::Forward(2));
    assert_eq!(seen(&syn), at(A4, sport, B4, 80), "the SYN, translated");
    let mut syn_ack = tcp4(B, GW, B4, A4, 80, sport, "SA", 64);
    assert_eq!(rig.send(2, &mut syn_ack), Action::Forward(1));
    assert_eq!(
        seen(&syn_ack),
        at(VIP4, 8080, A4, sport),
        "the SYN-ACK, back"
    );
    let mut data = tcp4(A, GW, A4, VIP4, sport, 8080, "A", 64);
    let out = rig.send(1, &mut data);
    assert_eq!(seen(&data), at(A4, sport, B4, 80));
    let mut answer = tcp4(B, GW, B4, A4, 80, sport, "A", 64);
    let back = rig.send(2, &mut answer);
    assert_eq!(seen(&answer), at(VIP4, 8080, A4, sport));
    (out, back)
}

#[test]
fn a_tcp_connection_to_a_cluster_ip_reaches_its_endpoint_and_replies_come_from_the_service() {
    let mut rig = rig();
    assert_eq!(
        tcp_through(&mut rig, 40000),
        (Action::Forward(2), Action::Forward(1))
    );
    // established: the flow cache holds the translation, both ways
    let fast = rig.count(Outcome::FastForward);
    let mut data = tcp4(A, GW, A4, VIP4, 40000, 8080, "A", 64);
    assert_eq!(rig.send(1, &mut data), Action::Forward(2));
    assert_eq!(seen(&data), at(A4, 40000, B4, 80), "a hit, translated");
    let mut answer = tcp4(B, GW, B4, A4, 80, 40000, "A", 64);
    assert_eq!(rig.send(2, &mut answer), Action::Forward(1));
    assert_eq!(seen(&answer), at(VIP4, 8080, A4, 40000), "a hit, back");
    assert_eq!(rig.count(Outcome::FastForward), fast + 2);
    // one connection, between a and b, a's
    assert_eq!(rig.dp.conntrack().len(), 1);
    assert_eq!(rig.dp.conntrack().charged(1), 1);
    assert_eq!(rig.dp.service_counters().translated, 1);
    let web = rig.dp.frontend_counters(&key(VIP4, TCP, 8080));
    assert_eq!((web.translated, web.refused), (1, 0), "per frontend");
    // b's own connection to a is nothing of the Service's
    let mut direct = tcp4(B, GW, B4, A4, 45000, 80, "S", 64);
    assert_eq!(rig.send(2, &mut direct), Action::Forward(1));
    assert_eq!(seen(&direct), at(B4, 45000, A4, 80));
}

#[test]
fn an_ipv6_udp_query_to_a_cluster_ip_is_answered_from_the_service() {
    let mut rig = rig();
    for round in 0..3 {
        let mut q = udp6(A, GW, A6, VIP6, 33000, 53, b"query");
        assert_eq!(rig.send(1, &mut q), Action::Forward(2), "round {round}");
        assert_eq!(seen(&q), at(A6, 33000, B6, 5353));
        let mut r = udp6(B, GW, B6, A6, 5353, 33000, b"answer");
        assert_eq!(rig.send(2, &mut r), Action::Forward(1));
        assert_eq!(seen(&r), at(VIP6, 53, A6, 33000));
    }
    assert!(rig.count(Outcome::FastForward) >= 2, "later rounds hit");
    // a port the Service does not have is not translated (to the node)
    let mut other = udp6(A, GW, A6, VIP6, 33001, 54, b"query");
    assert_eq!(rig.send(1, &mut other), Action::Forward(0));
    assert_eq!(seen(&other), at(A6, 33001, VIP6, 54));
}

/// An SCTP packet (common header and one chunk of `chunk` type) with its
/// CRC32c, over IPv4.
fn sctp4(
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    chunk: u8,
) -> Vec<u8> {
    let mut sctp = Vec::new();
    sctp.extend_from_slice(&sport.to_be_bytes());
    sctp.extend_from_slice(&dport.to_be_bytes());
    sctp.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // verification tag
    sctp.extend_from_slice(&[0; 4]); // checksum
    // the chunk: type, flags, length 20, and 16 bytes of INIT fields
    sctp.extend_from_slice(&[chunk, 0, 0, 20]);
    sctp.extend_from_slice(&[7; 16]);
    let crc = crc32c_bitwise(&sctp);
    sctp[8..12].copy_from_slice(&crc.to_le_bytes());
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, GW)
        .ipv4(src, dst, 64)
        .write(&mut v, etherparse::IpNumber(SCTP), &sctp)
        .unwrap();
    v
}

/// CRC32c (Castagnoli, reflected, RFC 9260 appendix A), one bit at a time.
fn crc32c_bitwise(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The SCTP ports of a frame, after asserting its CRC32c.
fn sctp_seen(frame: &[u8]) -> (IpAddr, IpAddr, u16, u16) {
    let ip = &frame[14..];
    let l4 = &ip[20..];
    let mut copy = l4.to_vec();
    copy[8..12].fill(0);
    let crc = u32::from_le_bytes(l4[8..12].try_into().unwrap());
    assert_eq!(crc32c_bitwise(&copy), crc, "SCTP CRC32c");
    let addr = |r: std::ops::Range<usize>| IpAddr::from(<[u8; 4]>::try_from(&ip[r]).unwrap());
    let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    (addr(12..16), addr(16..20), port(0), port(2))
}

#[test]
fn an_sctp_association_is_translated_with_its_crc32c_recomputed() {
    let mut rig = Rig::two_pods();
    rig.dp.set_services(table(vec![(
        key(VIP4, SCTP, 3868),
        frontend(vec![endpoint(B4, 3869)]),
    )]));
    let mut init = sctp4(A, A4, VIP4, 5000, 3868, 1);
    assert_eq!(rig.send(1, &mut init), Action::Forward(2));
    assert_eq!(
        sctp_seen(&init),
        (A4.into(), B4.into(), 5000, 3869),
        "INIT, translated"
    );
    let mut ack = sctp4(B, B4, A4, 3869, 5000, 2);
    assert_eq!(rig.send(2, &mut ack), Action::Forward(1));
    assert_eq!(
        sctp_seen(&ack),
        (VIP4.into(), A4.into(), 3868, 5000),
        "INIT-ACK, back"
    );
}

/// The partial checksum a TAP frame with NEEDS_CSUM carries: the folded
/// pseudo-header sum, not complemented.
fn make_partial(frame: &mut [u8]) {
    let ip = &frame[14..34];
    let len = u16::from_be_bytes([ip[2], ip[3]]) - 20;
    let mut pseudo = ip[12..20].to_vec();
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&len.to_be_bytes());
    let at = 34 + if ip[9] == TCP { 16 } else { 6 };
    let p = ones_sum(&pseudo, 0);
    frame[at..at + 2].copy_from_slice(&p.to_be_bytes());
}

/// What the output does for NEEDS_CSUM: the sum from the transport header
/// on, the partial value included, complemented.
fn complete(frame: &mut [u8]) {
    let at = 34 + if frame[23] == TCP { 16 } else { 6 };
    let c = !ones_sum(&frame[34..], 0);
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn a_partial_checksum_is_patched_as_one_so_that_the_output_completes_it_right() {
    let mut rig = rig();
    let partial = Offload {
        gso: 0,
        partial_csum: true,
    };
    for (i, flags) in ["S", "A", "A"].iter().enumerate() {
        let mut f = tcp4(A, GW, A4, VIP4, 40100, 8080, flags, 64);
        make_partial(&mut f);
        let now = rig.now();
        assert_eq!(
            rig.dp.process_frame(1, &mut f, partial, now),
            Action::Forward(2),
            "segment {i}"
        );
        complete(&mut f);
        assert_eq!(seen(&f), at(A4, 40100, B4, 80), "segment {i}");
        if i == 0 {
            let mut sa = tcp4(B, GW, B4, A4, 80, 40100, "SA", 64);
            make_partial(&mut sa);
            let now = rig.now();
            assert_eq!(
                rig.dp.process_frame(2, &mut sa, partial, now),
                Action::Forward(1)
            );
            complete(&mut sa);
            assert_eq!(seen(&sa), at(VIP4, 8080, A4, 40100));
        }
    }
}

#[test]
fn a_service_without_endpoints_refuses_at_once_from_its_cluster_ip() {
    let mut rig = Rig::two_pods();
    rig.dp.set_services(table(vec![
        (key(VIP4, TCP, 8080), frontend(vec![])),
        (key(VIP4, UDP, 53), frontend(vec![])),
    ]));
    let mut syn = tcp4(A, GW, A4, VIP4, 40200, 8080, "S", 64);
    let Action::Reply(1, rst) = rig.send(1, &mut syn) else {
        panic!("no refusal")
    };
    assert_eq!(
        seen(&rst),
        at(VIP4, 8080, A4, 40200),
        "RST from the Service"
    );
    let p = SlicedPacket::from_ethernet(&rst).unwrap();
    let Some(TransportSlice::Tcp(t)) = p.transport else {
        panic!("tcp")
    };
    assert!(t.rst() && t.ack(), "RST and ACK");
    // the SYN's sequence number (1000), plus one for the SYN and four for
    // its data
    assert_eq!(t.acknowledgment_number(), 1005);
    assert_eq!(&rst[0..6], &A, "to a");
    // UDP: an ICMP port unreachable from the cluster IP, quoting the query
    let mut q = udp4(A, GW, A4, VIP4, 33100, 53);
    let Action::Reply(1, unreach) = rig.send(1, &mut q) else {
        panic!("no refusal")
    };
    let s = seen(&unreach);
    assert_eq!((s.src, s.dst), (VIP4.into(), A4.into()));
    let p = SlicedPacket::from_ethernet(&unreach).unwrap();
    let Some(TransportSlice::Icmpv4(i)) = p.transport else {
        panic!("icmp")
    };
    assert_eq!((i.type_u8(), i.code_u8()), (3, 3), "port unreachable");
    assert_eq!(rig.count(Outcome::Refused), 2);
    assert_eq!(rig.dp.service_counters().refused, 2);
    for k in [key(VIP4, TCP, 8080), key(VIP4, UDP, 53)] {
        assert_eq!(rig.dp.frontend_counters(&k).refused, 1, "{k:?}");
    }
    // a frontend gone takes its counters with it
    rig.dp
        .set_services(table(vec![(key(VIP4, UDP, 53), frontend(vec![]))]));
    assert_eq!(rig.dp.frontend_counters(&key(VIP4, TCP, 8080)).refused, 0);
    assert_eq!(rig.dp.frontend_counters(&key(VIP4, UDP, 53)).refused, 1);
    assert_eq!(rig.dp.conntrack().len(), 0, "nothing tracked");
}

#[test]
fn policy_judges_the_translated_connection_as_if_direct() {
    let mut rig = rig();
    // a may reach only b on 80: the cluster IP is no peer, yet the
    // connection passes, as one to b:80 would
    rig.apply(&policy(
        "a-to-b",
        "a",
        "policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]",
    ));
    assert_eq!(
        tcp_through(&mut rig, 40300),
        (Action::Forward(2), Action::Forward(1))
    );
    // b now takes nothing: a new connection through the Service is denied
    // (and the established one is cut at its next packet)
    rig.apply(&policy("deny-b", "b", "policyTypes: [Ingress]"));
    let mut syn = tcp4(A, GW, A4, VIP4, 40301, 8080, "S", 64);
    assert_eq!(rig.send(1, &mut syn), Action::Drop(Outcome::PolicyDeny));
    let mut data = tcp4(A, GW, A4, VIP4, 40300, 8080, "A", 64);
    assert_eq!(rig.send(1, &mut data), Action::Drop(Outcome::PolicyDeny));
    // a's egress to b on another port: denied through a Service as well
    let mut rig = Rig::two_pods();
    rig.dp.set_services(table(vec![(
        key(VIP4, TCP, 8080),
        frontend(vec![endpoint(B4, 81)]),
    )]));
    rig.apply(&policy(
        "a-to-b",
        "a",
        "policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]",
    ));
    let mut syn = tcp4(A, GW, A4, VIP4, 40302, 8080, "S", 64);
    assert_eq!(rig.send(1, &mut syn), Action::Drop(Outcome::PolicyDeny));
}

#[test]
fn a_pod_reaching_itself_through_its_service_gets_the_service_loopback_source() {
    let loopback: IpAddr = Config::default().service_loopback_v4.into();
    let mut rig = Rig::two_pods();
    rig.dp.set_services(table(vec![(
        key(VIP4, TCP, 8080),
        frontend(vec![endpoint(A4, 80)]),
    )]));
    let mut syn = tcp4(A, GW, A4, VIP4, 40400, 8080, "S", 64);
    assert_eq!(rig.send(1, &mut syn), Action::Forward(1), "back to a");
    assert_eq!(seen(&syn), at(loopback, 40400, A4, 80));
    assert_eq!(&syn[0..6], &A, "to a's MAC");
    let mut sa = tcp4(A, GW, A4, loopback_octets(), 80, 40400, "SA", 64);
    assert_eq!(rig.send(1, &mut sa), Action::Forward(1));
    assert_eq!(
        seen(&sa),
        at(VIP4, 8080, A4, 40400),
        "from the Service to a"
    );
    // through the flow cache too
    for _ in 0..2 {
        let mut d = tcp4(A, GW, A4, VIP4, 40400, 8080, "A", 64);
        assert_eq!(rig.send(1, &mut d), Action::Forward(1));
        assert_eq!(seen(&d), at(loopback, 40400, A4, 80));
        let mut r = tcp4(A, GW, A4, loopback_octets(), 80, 40400, "A", 64);
        assert_eq!(rig.send(1, &mut r), Action::Forward(1));
        assert_eq!(seen(&r), at(VIP4, 8080, A4, 40400));
    }
    // policy judges it with a's identity at both ends: ingress from b only
    // denies it, ingress from a allows it
    rig.apply(&policy(
        "from-b",
        "a",
        "policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
    ));
    let mut syn = tcp4(A, GW, A4, VIP4, 40401, 8080, "S", 64);
    assert_eq!(rig.send(1, &mut syn), Action::Drop(Outcome::PolicyDeny));
    rig.apply(&policy(
        "from-a",
        "a",
        "policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]",
    ));
    let mut syn = tcp4(A, GW, A4, VIP4, 40402, 8080, "S", 64);
    assert_eq!(rig.send(1, &mut syn), Action::Forward(1));
}

fn loopback_octets() -> [u8; 4] {
    Config::default().service_loopback_v4.octets()
}

/// Endpoints b:80 and b:81, with ClientIP affinity of `affinity_ms`.
fn two_endpoints(affinity_ms: Option<u64>) -> Arc<ServiceTable> {
    let mut fe = frontend(vec![endpoint(B4, 80), endpoint(B4, 81)]);
    fe.affinity_ms = affinity_ms;
    table(vec![(key(VIP4, TCP, 8080), fe)])
}

/// The endpoint port a new connection from a:`sport` lands on.
fn lands_on(rig: &mut Rig, sport: u16) -> u16 {
    let mut syn = tcp4(A, GW, A4, VIP4, sport, 8080, "S", 64);
    assert_eq!(rig.send(1, &mut syn), Action::Forward(2));
    seen(&syn).dport
}

#[test]
fn connections_spread_over_endpoints_and_client_ip_affinity_keeps_one_until_its_timeout() {
    let mut rig = Rig::two_pods();
    rig.dp.set_services(two_endpoints(None));
    let ports: Vec<u16> = (0..64).map(|i| lands_on(&mut rig, 41000 + i)).collect();
    let to_80 = ports.iter().filter(|p| **p == 80).count();
    assert!(
        (8..=56).contains(&to_80),
        "64 connections spread over two endpoints: {to_80} on one"
    );
    // with affinity, every connection from a lands where its first did
    let mut rig = Rig::two_pods();
    rig.dp.set_services(two_endpoints(Some(10_000)));
    let first = lands_on(&mut rig, 42000);
    for i in 1..64 {
        assert_eq!(lands_on(&mut rig, 42000 + i), first, "connection {i}");
    }
    // the endpoint leaves: the affinity moves to the one left, and stays
    let other = if first == 80 { 81 } else { 80 };
    rig.dp.set_services(table(vec![(key(VIP4, TCP, 8080), {
        let mut fe = frontend(vec![endpoint(B4, other)]);
        fe.affinity_ms = Some(10_000);
        fe
    })]));
    assert_eq!(lands_on(&mut rig, 42100), other);
    rig.dp.set_services(two_endpoints(Some(10_000)));
    for i in 1..16 {
        assert_eq!(lands_on(&mut rig, 42100 + i), other, "connection {i}");
    }
    // after the timeout of silence, a new choice (by hash): over many
    // clients' worth of timeouts both endpoints are chosen
    let mut chosen = std::collections::BTreeSet::new();
    for i in 0..32 {
        rig.ms += 10_001;
        chosen.insert(lands_on(&mut rig, 43000 + i));
    }
    assert_eq!(chosen.len(), 2, "after each timeout, a fresh choice");
}

#[test]
fn endpoint_changes_apply_to_new_connections_and_established_ones_keep_their_endpoint() {
    let mut rig = Rig::two_pods();
    rig.dp.set_services(table(vec![(
        key(VIP4, TCP, 8080),
        frontend(vec![endpoint(B4, 80)]),
    )]));
    tcp_through(&mut rig, 44000);
    // b:80 leaves the Service for b:81
    rig.dp.set_services(table(vec![(
        key(VIP4, TCP, 8080),
        frontend(vec![endpoint(B4, 81)]),
    )]));
    assert_eq!(lands_on(&mut rig, 44001), 81, "a new connection");
    // the established one goes on to b:80, through the cache and not
    for _ in 0..3 {
        let mut d = tcp4(A, GW, A4, VIP4, 44000, 8080, "A", 64);
        assert_eq!(rig.send(1, &mut d), Action::Forward(2));
        assert_eq!(seen(&d), at(A4, 44000, B4, 80));
        let mut r = tcp4(B, GW, B4, A4, 80, 44000, "A", 64);
        assert_eq!(rig.send(2, &mut r), Action::Forward(1));
        assert_eq!(seen(&r), at(VIP4, 8080, A4, 44000));
    }
    // no endpoint left: refused, while the established connection goes on
    rig.dp
        .set_services(table(vec![(key(VIP4, TCP, 8080), frontend(vec![]))]));
    let mut syn = tcp4(A, GW, A4, VIP4, 44002, 8080, "S", 64);
    assert!(matches!(rig.send(1, &mut syn), Action::Reply(1, _)));
    let mut d = tcp4(A, GW, A4, VIP4, 44000, 8080, "A", 64);
    assert_eq!(rig.send(1, &mut d), Action::Forward(2));
    assert_eq!(seen(&d), at(A4, 44000, B4, 80));
}

#[test]
fn terminating_endpoints_serve_only_when_none_is_ready_and_local_policy_keeps_to_the_node() {
    let mut rig = Rig::two_pods();
    let terminating = |port| Endpoint {
        ready: false,
        serving: true,
        terminating: true,
        ..endpoint(B4, port)
    };
    let not_serving = |port| Endpoint {
        ready: false,
        serving: false,
        terminating: true,
        ..endpoint(B4, port)
    };
    rig.dp.set_services(table(vec![(
        key(VIP4, TCP, 8080),
        frontend(vec![terminating(81), endpoint(B4, 80)]),
    )]));
    for i in 0..16 {
        assert_eq!(lands_on(&mut rig, 45000 + i), 80, "the ready one");
    }
    rig.dp.set_services(table(vec![(
        key(VIP4, TCP, 8080),
        frontend(vec![terminating(81), not_serving(82)]),
    )]));
    for i in 0..16 {
        assert_eq!(lands_on(&mut rig, 45100 + i), 81, "the serving one");
    }
    // internalTrafficPolicy: Local with its only endpoint elsewhere
    let mut fe = frontend(vec![Endpoint {
        local: false,
        ..endpoint(B4, 80)
    }]);
    fe.local_only = true;
    rig.dp.set_services(table(vec![(key(VIP4, TCP, 8080), fe)]));
    let mut syn = tcp4(A, GW, A4, VIP4, 45200, 8080, "S", 64);
    assert!(
        matches!(rig.send(1, &mut syn), Action::Reply(1, _)),
        "refused"
    );
}

#[test]
fn a_mid_stream_segment_to_a_cluster_ip_with_no_translation_is_untracked() {
    // (after the pickup grace period that follows a start)
    let mut rig = Rig::two_pods_with(Config {
        conntrack_pickup_ms: 0,
        ..Config::default()
    });
    rig.dp.set_services(table(vec![(
        key(VIP4, TCP, 8080),
        frontend(vec![endpoint(B4, 80)]),
    )]));
    let mut ack = tcp4(A, GW, A4, VIP4, 46000, 8080, "A", 64);
    assert_eq!(rig.send(1, &mut ack), Action::Drop(Outcome::Untracked));
    assert_eq!(rig.dp.service_counters().translated, 0);
}

#[test]
fn an_icmp_error_from_the_endpoint_comes_back_from_the_service_quoting_what_the_client_sent() {
    let mut rig = Rig::two_pods();
    rig.dp.set_services(table(vec![(
        key(VIP4, UDP, 53),
        frontend(vec![endpoint(B4, 5353)]),
    )]));
    let mut q = udp4(A, GW, A4, VIP4, 33200, 53);
    assert_eq!(rig.send(1, &mut q), Action::Forward(2));
    // b answers with a port unreachable quoting the translated query
    let mut err = Vec::new();
    PacketBuilder::ethernet2(B, GW)
        .ipv4(B4, A4, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut err, &q[14..])
        .unwrap();
    assert_eq!(rig.send(2, &mut err), Action::Forward(1));
    let s = seen(&err);
    assert_eq!((s.src, s.dst), (VIP4.into(), A4.into()), "from the Service");
    // the quoted packet is a's query as a sent it
    let quoted = &err[14 + 20 + 8..];
    let p = etherparse::SlicedPacket::from_ip(quoted).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("ipv4")
    };
    let h = ip.header().to_header();
    assert_eq!(h.calc_header_checksum(), h.header_checksum);
    assert_eq!((h.source, h.destination), (A4, VIP4));
    let Some(TransportSlice::Udp(u)) = &p.transport else {
        panic!("udp")
    };
    assert_eq!((u.source_port(), u.destination_port()), (33200, 53));
}

#[test]
fn a_batch_does_what_the_same_frames_one_by_one_do() {
    // two connections through the Service, set up one frame at a time
    let (mut one, mut batched) = (rig(), rig());
    for rig in [&mut one, &mut batched] {
        for sport in [47000, 47001] {
            let mut syn = tcp4(A, GW, A4, VIP4, sport, 8080, "S", 64);
            rig.send(1, &mut syn);
            let mut sa = tcp4(B, GW, B4, A4, 80, sport, "SA", 64);
            rig.send(2, &mut sa);
        }
    }
    // then a's frames: both connections' segments (misses, then hits), a
    // new connection's SYN and a mid-stream segment nobody translated
    let mut frames = Vec::new();
    for _ in 0..3 {
        frames.push(tcp4(A, GW, A4, VIP4, 47000, 8080, "A", 64));
        frames.push(tcp4(A, GW, A4, VIP4, 47001, 8080, "A", 64));
    }
    frames.push(tcp4(A, GW, A4, VIP4, 47002, 8080, "S", 64));
    frames.push(tcp4(A, GW, A4, VIP4, 47003, 8080, "A", 64));
    let now = one.now();
    let singles: Vec<(Action, Vec<u8>)> = frames
        .iter()
        .map(|f| {
            let mut f = f.clone();
            (one.dp.process(1, &mut f, now), f)
        })
        .collect();
    let mut run = frames.clone();
    let mut slices: Vec<&mut [u8]> = run.iter_mut().map(|f| f.as_mut_slice()).collect();
    let mut actions = Vec::new();
    let now = batched.now();
    batched
        .dp
        .process_batch(1, &mut slices, &[], now, &mut actions);
    let got: Vec<(Action, Vec<u8>)> = actions.into_iter().zip(run).collect();
    assert_eq!(got, singles);
    assert_eq!(batched.dp.counters, one.dp.counters);
    assert!(one.count(Outcome::FastForward) > 0, "some were hits");
}

#[test]
fn an_endpoint_on_the_nodes_own_address_is_reached_by_the_node_port_and_judged_as_an_ip_block() {
    // the API server behind default/kubernetes: its endpoint is a node's
    // address, here this node's own
    let mut rig = Rig::two_pods();
    rig.dp.set_services(table(vec![(
        key(VIP4, TCP, 443),
        frontend(vec![endpoint(NODE4, 6443)]),
    )]));
    let mut syn = tcp4(A, GW, A4, VIP4, 48000, 443, "S", 64);
    assert_eq!(
        rig.send(1, &mut syn),
        Action::Forward(0),
        "by the node port"
    );
    assert_eq!(seen(&syn), at(A4, 48000, NODE4, 6443));
    let mut sa = tcp4(NODE, GW, NODE4, A4, 6443, 48000, "SA", 64);
    assert_eq!(rig.send(0, &mut sa), Action::Forward(1));
    assert_eq!(seen(&sa), at(VIP4, 443, A4, 48000), "from the Service");
    // a's egress allows nothing: the translated connection (to the node's
    // address, an ipBlock peer) is denied, as a direct one would be
    rig.apply(&policy("deny-a", "a", "policyTypes: [Egress]"));
    let mut syn = tcp4(A, GW, A4, VIP4, 48001, 443, "S", 64);
    assert_eq!(rig.send(1, &mut syn), Action::Drop(Outcome::PolicyDeny));
    // and an ipBlock with the node's address allows it again
    rig.apply(&policy(
        "deny-a",
        "a",
        "policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 192.168.0.1/32}}], ports: [{port: 6443}]}]",
    ));
    let mut syn = tcp4(A, GW, A4, VIP4, 48002, 443, "S", 64);
    assert_eq!(rig.send(1, &mut syn), Action::Forward(0));
}

#[test]
fn changes_apply_in_place_and_a_deleted_services_established_connections_go_on() {
    use vswitch_datapath::services::ServiceChange;
    let mut rig = Rig::two_pods();
    let web = key(VIP4, TCP, 8080);
    let admin = key(VIP4, TCP, 9090);
    rig.dp.update_services([
        ServiceChange::Set(web, frontend(vec![endpoint(B4, 80)])),
        ServiceChange::Set(admin, frontend(vec![endpoint(B4, 90)])),
    ]);
    assert_eq!(rig.dp.services().len(), 2);
    tcp_through(&mut rig, 46000);
    // a table someone else holds is copied, never changed under them
    let held = Arc::new(rig.dp.services().clone());
    rig.dp.set_services(held.clone());
    rig.dp
        .update_services([ServiceChange::Set(web, frontend(vec![endpoint(B4, 81)]))]);
    assert_eq!(
        held.get(&web).unwrap().endpoints[0].port,
        80,
        "the holder's"
    );
    assert_eq!(lands_on(&mut rig, 46001), 81, "the switch's, changed");
    // one of the cluster IP's two frontends goes: the other stays
    rig.dp.update_services([ServiceChange::Remove(admin)]);
    assert!(rig.dp.services().is_cluster_ip(IpAddr::from(VIP4)));
    let mut syn = tcp4(A, GW, A4, VIP4, 46002, 8080, "S", 64);
    assert_eq!(rig.send(1, &mut syn), Action::Forward(2));
    assert_eq!(seen(&syn), at(A4, 46002, B4, 81));
    // the Service goes: no new connection is translated
    rig.dp.update_services([ServiceChange::Remove(web)]);
    assert!(rig.dp.services().is_empty());
    assert!(!rig.dp.services().is_cluster_ip(IpAddr::from(VIP4)));
    let mut syn = tcp4(A, GW, A4, VIP4, 46003, 8080, "S", 64);
    rig.send(1, &mut syn);
    assert_eq!(seen(&syn).dst, IpAddr::from(VIP4), "not translated");
    // the established one goes on to b:80 (as conntrack keeps kube-proxy's
    // translations), from the cache and, after a policy change empties it,
    // from the slow path
    for round in 0..2 {
        let mut d = tcp4(A, GW, A4, VIP4, 46000, 8080, "A", 64);
        assert_eq!(rig.send(1, &mut d), Action::Forward(2), "round {round}");
        assert_eq!(seen(&d), at(A4, 46000, B4, 80), "round {round}");
        let mut r = tcp4(B, GW, B4, A4, 80, 46000, "A", 64);
        assert_eq!(rig.send(2, &mut r), Action::Forward(1), "round {round}");
        assert_eq!(seen(&r), at(VIP4, 8080, A4, 46000), "round {round}");
        rig.apply(&policy("allow-all", "b", "ingress: [{}]"));
    }
}

#[test]
fn a_cached_translated_packet_loses_one_ttl_and_one_at_the_end_is_answered_as_expired() {
    let mut rig = rig();
    tcp_through(&mut rig, 47000);
    let fast = rig.count(Outcome::FastForward);
    // a hit: translated, TTL 64 -> 63, both checksums right (seen checks)
    let mut d = tcp4(A, GW, A4, VIP4, 47000, 8080, "A", 64);
    assert_eq!(rig.send(1, &mut d), Action::Forward(2));
    assert_eq!(seen(&d), at(A4, 47000, B4, 80));
    assert_eq!(d[14 + 8], 63, "TTL");
    let mut r = tcp4(B, GW, B4, A4, 80, 47000, "A", 9);
    assert_eq!(rig.send(2, &mut r), Action::Forward(1));
    assert_eq!(seen(&r), at(VIP4, 8080, A4, 47000));
    assert_eq!(r[14 + 8], 8, "TTL of the reply");
    assert_eq!(rig.count(Outcome::FastForward), fast + 2, "both hits");
    // TTL 1: not forwarded, untouched by the hit; the slow path answers
    let mut last = tcp4(A, GW, A4, VIP4, 47000, 8080, "A", 1);
    let action = rig.send(1, &mut last);
    assert!(matches!(action, Action::Reply(1, _)), "{action:?}");
    assert_eq!(rig.count(Outcome::FastForward), fast + 2, "no hit");
}
