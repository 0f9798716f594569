//! The tests' kit: frames built with etherparse (and smoltcp where
//! etherparse has no builder), clusters, pods on ports, and the two-pod
//! rig most tests start from. Each test file includes it with `mod kit;`
//! and uses its part.
#![allow(dead_code)] // every test file uses only some of it

use std::net::IpAddr;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etherparse::{IpNumber, Ipv4Header, PacketBuilder};
use policy::{Cluster, ContainerPort, Engine, Namespace, Pod, PodKey, Protocol, manifest};
use vswitch_datapath::counters::Outcome;
use vswitch_datapath::io::event_loop::EventLoop;
use vswitch_datapath::io::port::SocketPort;
use vswitch_datapath::io::worker::{PolicyHandle, Worker};
use vswitch_datapath::parse::Mac;
use vswitch_datapath::{Action, Config, Datapath, PortId, PortKind};

// ----- addresses -------------------------------------------------------------

/// The gateway's MAC ([`Config::default`]'s).
pub const GW: Mac = [0x02, 0x76, 0x73, 0x77, 0x00, 0x01];
pub const NODE: Mac = [0x02, 0x6e, 0x6f, 0x64, 0x65, 0x00];
/// Pods a and b of [`Rig::two_pods`].
pub const A: Mac = [0x02, 0, 0, 0, 0, 1];
pub const B: Mac = [0x02, 0, 0, 0, 0, 2];
pub const A4: [u8; 4] = [10, 0, 0, 1];
pub const B4: [u8; 4] = [10, 0, 0, 2];
pub const NODE4: [u8; 4] = [192, 168, 0, 1];
/// An address outside the cluster.
pub const OUT4: [u8; 4] = [203, 0, 113, 9];
pub const A6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const B6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

// ----- frames ----------------------------------------------------------------

/// A TCP segment carrying "data"; `flags` is any of `S`, `A`, `F`, `R`.
#[allow(clippy::too_many_arguments)] // a frame has that many fields
pub fn tcp4(
    src_mac: Mac,
    dst_mac: Mac,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: &str,
    ttl: u8,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, ttl)
        .tcp(sport, dport, 1000, 4096);
    let b = flags.chars().fold(b, |b, f| match f {
        'S' => b.syn(),
        'A' => b.ack(1),
        'F' => b.fin(),
        'R' => b.rst(),
        _ => b,
    });
    let mut v = Vec::new();
    b.write(&mut v, b"data").unwrap();
    v
}

/// A UDP datagram carrying "hello".
pub fn udp4(
    src_mac: Mac,
    dst_mac: Mac,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    udp4_carrying(src_mac, dst_mac, src, dst, sport, dport, b"hello")
}

/// A UDP datagram carrying `payload`.
pub fn udp4_carrying(
    src_mac: Mac,
    dst_mac: Mac,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// An IPv6 UDP datagram carrying `payload`.
pub fn udp6(
    src_mac: Mac,
    dst_mac: Mac,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv6(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// An ICMP echo request (or reply) to the gateway, carrying "ping".
pub fn echo4(src_mac: Mac, src: [u8; 4], dst: [u8; 4], id: u16, request: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, GW).ipv4(src, dst, 64);
    let b = if request {
        b.icmpv4_echo_request(id, 1)
    } else {
        b.icmpv4_echo_reply(id, 1)
    };
    let mut v = Vec::new();
    b.write(&mut v, b"ping").unwrap();
    v
}

/// "Who has `target`? Tell `sender`", broadcast.
pub fn arp_request(src_mac: Mac, sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut v = vec![0xff; 6];
    v.extend_from_slice(&src_mac);
    v.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    v.extend_from_slice(&src_mac);
    v.extend_from_slice(&sender);
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&target);
    v
}

/// A neighbour solicitation for `target`, to its solicited-node address.
pub fn neighbor_solicitation(src_mac: Mac, src: [u8; 16], target: [u8; 16]) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::*;
    let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
        target_addr: target.into(),
        lladdr: Some(RawHardwareAddress::from_bytes(&src_mac)),
    });
    let mut dst = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
    dst[13..].copy_from_slice(&target[13..]);
    let ip = Ipv6Repr {
        src_addr: src.into(),
        dst_addr: dst.into(),
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.buffer_len(),
        hop_limit: 255,
    };
    let mut v = vec![0x33, 0x33, 0xff, dst[13], dst[14], dst[15]];
    v.extend_from_slice(&src_mac);
    v.extend_from_slice(&[0x86, 0xdd]);
    v.resize(14 + 40 + icmp.buffer_len(), 0);
    ip.emit(&mut Ipv6Packet::new_unchecked(&mut v[14..]));
    icmp.emit(
        &src.into(),
        &dst.into(),
        &mut Icmpv6Packet::new_unchecked(&mut v[54..]),
        &ChecksumCapabilities::default(),
    );
    v
}

/// An IPv4 UDP fragment to the gateway (`offset8`: in 8-byte units).
pub fn fragment4(
    src_mac: Mac,
    src: [u8; 4],
    dst: [u8; 4],
    id: u16,
    offset8: u16,
    more: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut h = Ipv4Header::new(payload.len() as u16, 64, IpNumber::UDP, src, dst).unwrap();
    h.identification = id;
    h.more_fragments = more;
    h.fragment_offset = offset8.try_into().unwrap();
    h.header_checksum = h.calc_header_checksum();
    let mut v = GW.to_vec();
    v.extend_from_slice(&src_mac);
    v.extend_from_slice(&[0x08, 0x00]);
    h.write(&mut v).unwrap();
    v.extend_from_slice(payload);
    v
}

/// An IPv6 UDP fragment to the gateway, behind a fragment header.
pub fn fragment6(
    src_mac: Mac,
    src: [u8; 16],
    dst: [u8; 16],
    id: u32,
    offset8: u16,
    more: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = GW.to_vec();
    v.extend_from_slice(&src_mac);
    v.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[44, 64]); // next header: Fragment; hop limit
    v.extend_from_slice(&src);
    v.extend_from_slice(&dst);
    v.extend_from_slice(&[17, 0]);
    v.extend_from_slice(&((offset8 << 3) | more as u16).to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// An IPv6 packet to the gateway whose header names `next` and whose
/// payload is `chain`, byte for byte (extension headers and what follows).
pub fn ipv6_raw(src_mac: Mac, src: [u8; 16], dst: [u8; 16], next: u8, chain: &[u8]) -> Vec<u8> {
    let mut v = GW.to_vec();
    v.extend_from_slice(&src_mac);
    v.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    v.extend_from_slice(&(chain.len() as u16).to_be_bytes());
    v.extend_from_slice(&[next, 64]);
    v.extend_from_slice(&src);
    v.extend_from_slice(&dst);
    v.extend_from_slice(chain);
    v
}

/// An IPv6 Fragment header (`offset8`: in 8-byte units).
pub fn frag6_header(next: u8, id: u32, offset8: u16, more: bool) -> [u8; 8] {
    let mut h = [next, 0, 0, 0, 0, 0, 0, 0];
    h[2..4].copy_from_slice(&((offset8 << 3) | more as u16).to_be_bytes());
    h[4..].copy_from_slice(&id.to_be_bytes());
    h
}

// ----- clusters and ports ----------------------------------------------------

/// A pod with addresses, no labels and no named ports.
pub fn pod(ns: &str, name: &str, ips: &[IpAddr]) -> Pod {
    Pod {
        key: PodKey::new(ns, name),
        labels: Default::default(),
        ips: ips.to_vec(),
        ports: vec![],
    }
}

/// What a test says about a pod besides its addresses.
pub trait PodExt {
    fn labelled(self, key: &str, value: &str) -> Pod;
    /// Serves TCP `port` under `name`.
    fn serving(self, name: &str, port: u16) -> Pod;
}

impl PodExt for Pod {
    fn labelled(mut self, key: &str, value: &str) -> Pod {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    fn serving(mut self, name: &str, port: u16) -> Pod {
        self.ports.push(ContainerPort {
            name: Some(name.into()),
            port,
            protocol: Protocol::Tcp,
        });
        self
    }
}

/// A cluster of `pods`, with the namespaces they are in.
pub fn cluster(pods: impl IntoIterator<Item = Pod>) -> Cluster {
    let mut c = Cluster::default();
    for p in pods {
        let ns = p.key.namespace.to_string();
        c.namespaces
            .entry(ns.clone())
            .or_insert_with(|| Namespace::new(&ns, Default::default()));
        c.pods.insert(p.key.clone(), p);
    }
    c
}

/// Both of an address pair.
pub fn ips(v4: [u8; 4], v6: [u8; 16]) -> Vec<IpAddr> {
    vec![IpAddr::from(v4), IpAddr::from(v6)]
}

/// Attaches a pod's port, ready from policy generation `ready_generation`.
pub fn attach_pod(
    dp: &mut Datapath,
    id: PortId,
    name: &str,
    mac: Mac,
    ips: &[IpAddr],
    ready_generation: u64,
) {
    dp.add_port(
        id,
        name,
        mac,
        PortKind::Pod {
            ips: ips.to_vec(),
            ready_generation,
        },
    );
}

/// An event loop over a datapath with `cfg` and pods a and b (ports 1 and
/// 2) on socket ports (real descriptors); returns the pods' ends.
pub fn socket_switch(cfg: Config) -> (EventLoop, UnixDatagram, UnixDatagram) {
    let mut dp = Datapath::new(cfg, Instant::now());
    attach_pod(&mut dp, 1, "pod", A, &[IpAddr::from(A4)], 0);
    attach_pod(&mut dp, 2, "pod", B, &[IpAddr::from(B4)], 0);
    let mut worker = Worker::new(dp, PolicyHandle::default());
    let (pod_a, sw_a) = UnixDatagram::pair().unwrap();
    let (pod_b, sw_b) = UnixDatagram::pair().unwrap();
    worker.attach(1, Box::new(SocketPort::new(sw_a).unwrap()));
    worker.attach(2, Box::new(SocketPort::new(sw_b).unwrap()));
    let mut el = EventLoop::new(worker).unwrap();
    el.register(1).unwrap();
    el.register(2).unwrap();
    (el, pod_a, pod_b)
}

// ----- the rig ---------------------------------------------------------------

/// A datapath with its policy engine and a clock that moves 1 ms a frame.
pub struct Rig {
    pub dp: Datapath,
    pub engine: Engine,
    pub t0: Instant,
    pub ms: u64,
}

impl Rig {
    /// Node port 0; pods x/a on port 1 and x/b on port 2 (labelled
    /// `pod: a` and `pod: b`, serving `http` on 80), ready now.
    pub fn two_pods() -> Rig {
        Rig::two_pods_with(Config::default())
    }

    /// [`Rig::two_pods`] with `cfg`.
    pub fn two_pods_with(cfg: Config) -> Rig {
        let pods = [("a", A4, A6), ("b", B4, B6)].map(|(name, v4, v6)| {
            pod("x", name, &ips(v4, v6))
                .labelled("pod", name)
                .serving("http", 80)
        });
        let mut rig = Rig::with_cluster(cfg, cluster(pods));
        rig.dp.add_port(
            0,
            "node",
            NODE,
            PortKind::Node {
                ips: vec![IpAddr::from(NODE4)],
            },
        );
        let ready = rig.engine.generation();
        for (id, mac, v4, v6) in [(1, A, A4, A6), (2, B, B4, B6)] {
            attach_pod(&mut rig.dp, id, "pod", mac, &ips(v4, v6), ready);
        }
        rig
    }

    /// A datapath with `cluster`'s policy in force and no ports yet.
    pub fn with_cluster(cfg: Config, cluster: Cluster) -> Rig {
        let t0 = Instant::now();
        let mut dp = Datapath::new(cfg, t0);
        let engine = Engine::from_cluster(cluster).unwrap();
        dp.set_policy(Arc::new(engine.snapshot()));
        Rig {
            dp,
            engine,
            t0,
            ms: 0,
        }
    }

    /// The clock, one millisecond on.
    pub fn now(&mut self) -> Instant {
        self.ms += 1;
        self.t0 + Duration::from_millis(self.ms)
    }

    /// `frame` arrives on `port`.
    pub fn send(&mut self, port: PortId, frame: &mut [u8]) -> Action {
        let now = self.now();
        self.dp.process(port, frame, now)
    }

    /// Applies NetworkPolicy manifests and installs the new generation.
    pub fn apply(&mut self, yaml: &str) {
        for o in manifest::parse(yaml) {
            match o.unwrap() {
                manifest::Object::NetworkPolicy(p) => self.engine.upsert_policy(p).unwrap(),
                other => panic!("unexpected {other:?}"),
            }
        }
        self.dp.set_policy(Arc::new(self.engine.snapshot()));
    }

    /// The datapath's count of `o`.
    pub fn count(&self, o: Outcome) -> u64 {
        self.dp.counters.get(o)
    }
}
