//! In-process pods: real TCP/IP stacks (smoltcp) on in-memory ports of a
//! [`Datapath`], in simulated time.
//!
//! Each pod is a smoltcp interface on an Ethernet link to its port: it
//! resolves its gateway and its subnet neighbours by ARP and neighbour
//! discovery (answered by the switch), opens TCP connections, answers UDP
//! requests, and speaks enough SCTP to answer an INIT with an INIT-ACK
//! ([`sctp`]). Pods get a /32 (/128) address and the switch's link-local
//! gateway (169.254.1.1, fe80::1), so everything they send is routed by the
//! switch. Hosts outside the cluster
//! ("externals") are IP-only stacks behind the node port.
//!
//! Time is simulated: [`Net::tick`] moves frames until nothing moves, then
//! advances the clock. A probe is a real connection attempt; a denied one
//! is an attempt that has not completed when its time is up.

mod sctp;

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use policy::Protocol;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use vswitch_datapath::parse::Mac;
use vswitch_datapath::wire::eth::HLEN as ETH_HLEN;
use vswitch_datapath::{Action, Config, Datapath, PortId, PortKind};

/// A link as smoltcp sees it: two queues.
pub struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    medium: Medium,
}

pub struct Rx(Vec<u8>);
pub struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _t: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _t: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = self.medium;
        c.max_transmission_unit = if self.medium == Medium::Ethernet {
            1514
        } else {
            1500
        };
        c
    }
}

pub type HostId = usize;

/// A pod or an external host.
pub struct Host {
    pub name: String,
    pub mac: Mac,
    pub ips: Vec<IpAddr>,
    /// The pod's port; `None` for hosts behind the node port.
    pub port: Option<PortId>,
    iface: Interface,
    dev: QueueDevice,
    sockets: SocketSet<'static>,
    udp_servers: BTreeMap<u16, SocketHandle>,
    listeners: Vec<SocketHandle>,
    sctp_ports: std::collections::BTreeSet<u16>,
}

/// One connection attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub from: HostId,
    pub to: HostId,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    /// Where servers listen for it (`None`: `to`, on `port`): a Service's
    /// endpoints, each on its own port (none: the Service refuses).
    pub serve: Option<Vec<(HostId, u16)>>,
}

impl Attempt {
    /// The hosts and ports that serve the attempt.
    fn servers(&self) -> Vec<(HostId, u16)> {
        match &self.serve {
            None => vec![(self.to, self.port)],
            Some(s) => s.clone(),
        }
    }
}

enum Pending {
    Tcp(SocketHandle),
    Udp(SocketHandle),
    Sctp { sport: u16, tag: u32 },
}

/// An established TCP connection kept open by a test.
#[derive(Debug, Clone, Copy)]
pub struct TcpConn {
    pub client: HostId,
    pub server: HostId,
    client_sock: SocketHandle,
    server_sock: SocketHandle,
}

pub const NODE_PORT: PortId = 0;
pub const NODE_MAC: Mac = [0x02, 0x6e, 0x6f, 0x64, 0x65, 0x00];

pub struct Net {
    pub dp: Datapath,
    hosts: Vec<Option<Host>>,
    base: Instant,
    pub clock_ms: u64,
    next_ephemeral: u16,
    next_tag: u32,
    sctp_acks: Vec<sctp::Chunk>,
    /// Frames dropped for lack of a host behind the node port.
    pub unclaimed: usize,
}

/// The link-local address a pod's stack also carries, so that it can learn
/// its gateway's MAC (smoltcp, like any host, only takes ARP and NDP
/// answers from its own subnets). The pod's own address stays its only
/// routable one and the source of everything it sends beyond the link.
fn link_local(ip: IpAddr, index: u16) -> (IpCidr, IpAddr) {
    match ip {
        IpAddr::V4(_) => {
            let a = Ipv4Addr::new(169, 254, 100 + (index >> 8) as u8, index as u8);
            (
                IpCidr::new(IpAddress::Ipv4(a), 16),
                IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1)),
            )
        }
        IpAddr::V6(_) => {
            let a = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0x100, index);
            (
                IpCidr::new(IpAddress::Ipv6(a), 64),
                IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
            )
        }
    }
}

impl Net {
    /// A switch with only its node port (addresses 100.64.0.1, fd00:ffff::1).
    pub fn new(cfg: Config) -> Net {
        let base = Instant::now();
        let mut dp = Datapath::new(cfg, base);
        dp.add_port(
            NODE_PORT,
            "node",
            NODE_MAC,
            PortKind::Node {
                ips: vec![
                    "100.64.0.1".parse().expect("ip"),
                    "fd00:ffff::1".parse().expect("ip"),
                ],
            },
        );
        Net {
            dp,
            hosts: Vec::new(),
            base,
            clock_ms: 0,
            next_ephemeral: 20_000,
            next_tag: 1,
            sctp_acks: Vec::new(),
            unclaimed: 0,
        }
    }

    pub fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.clock_ms)
    }

    fn smol_now(&self) -> SmolInstant {
        SmolInstant::from_millis(self.clock_ms as i64)
    }

    pub fn host(&self, id: HostId) -> &Host {
        self.hosts[id].as_ref().expect("live host")
    }

    fn host_mut(&mut self, id: HostId) -> &mut Host {
        self.hosts[id].as_mut().expect("live host")
    }

    fn new_host(&mut self, name: &str, mac: Mac, ips: &[IpAddr], port: Option<PortId>) -> HostId {
        let medium = if port.is_some() {
            Medium::Ethernet
        } else {
            Medium::Ip
        };
        let mut dev = QueueDevice {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            medium,
        };
        let hw = if port.is_some() {
            HardwareAddress::Ethernet(EthernetAddress(mac))
        } else {
            HardwareAddress::Ip
        };
        let mut cfg = IfaceConfig::new(hw);
        cfg.random_seed = self.hosts.len() as u64 + 1;
        let mut iface = Interface::new(cfg, &mut dev, self.smol_now());
        iface.update_ip_addrs(|a| {
            for ip in ips {
                let len = if ip.is_ipv4() { 32 } else { 128 };
                a.push(IpCidr::new(IpAddress::from(*ip), len))
                    .expect("room for addresses");
            }
            if let Some(p) = port {
                for ip in ips {
                    a.push(link_local(*ip, p).0).expect("room for addresses");
                }
            }
        });
        for ip in ips {
            let gw = if let Some(p) = port {
                link_local(*ip, p).1
            } else if ip.is_ipv4() {
                IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1))
            } else {
                "fd00:ffff::1".parse().expect("ip")
            };
            match gw {
                IpAddr::V4(g) => {
                    iface.routes_mut().add_default_ipv4_route(g).expect("route");
                }
                IpAddr::V6(g) => {
                    iface.routes_mut().add_default_ipv6_route(g).expect("route");
                }
            }
        }
        let host = Host {
            name: name.to_string(),
            mac,
            ips: ips.to_vec(),
            port,
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            udp_servers: BTreeMap::new(),
            listeners: Vec::new(),
            sctp_ports: Default::default(),
        };
        match self.hosts.iter().position(Option::is_none) {
            Some(i) => {
                self.hosts[i] = Some(host);
                i
            }
            None => {
                self.hosts.push(Some(host));
                self.hosts.len() - 1
            }
        }
    }

    /// A pod on port `port` with a /32 (/128) address and the switch's
    /// link-local gateway, as the CNI plugin configures real pods.
    pub fn add_pod(
        &mut self,
        name: &str,
        port: PortId,
        ips: &[IpAddr],
        ready_generation: u64,
    ) -> HostId {
        let mac = [0x02, 0x00, 0x00, 0x00, (port >> 8) as u8, port as u8];
        self.dp.add_port(
            port,
            name,
            mac,
            PortKind::Pod {
                ips: ips.to_vec(),
                ready_generation,
            },
        );
        self.new_host(name, mac, ips, Some(port))
    }

    /// A host outside the cluster, reached through the node port.
    pub fn add_external(&mut self, name: &str, ips: &[IpAddr]) -> HostId {
        self.new_host(name, NODE_MAC, ips, None)
    }

    pub fn remove_host(&mut self, id: HostId) {
        if let Some(h) = self.hosts[id].take()
            && let Some(p) = h.port
        {
            self.dp.remove_port(p);
        }
    }

    fn ephemeral(&mut self) -> u16 {
        self.next_ephemeral = if self.next_ephemeral >= 60_000 {
            20_000
        } else {
            self.next_ephemeral + 1
        };
        self.next_ephemeral
    }

    // ----- moving frames ---------------------------------------------------

    /// Delivers a frame that left the switch on `port`.
    fn deliver(&mut self, port: PortId, frame: Vec<u8>, work: &mut VecDeque<(HostId, Vec<u8>)>) {
        let (host, payload) = if port == NODE_PORT {
            let ip = frame[ETH_HLEN..].to_vec();
            let dst = match sctp_or_ip_dst(&ip) {
                Some(d) => d,
                None => return,
            };
            match self.external_owning(dst) {
                Some(h) => (h, ip),
                None => {
                    self.unclaimed += 1;
                    return;
                }
            }
        } else {
            match self
                .hosts
                .iter()
                .position(|h| h.as_ref().is_some_and(|h| h.port == Some(port)))
            {
                Some(h) => (h, frame),
                None => return,
            }
        };
        let is_eth = self.host(host).port.is_some();
        let ip = if is_eth {
            &payload[ETH_HLEN.min(payload.len())..]
        } else {
            &payload[..]
        };
        if let Some(c) = sctp::parse(ip) {
            if c.init_ack {
                self.sctp_acks.push(c);
            } else if self.host(host).sctp_ports.contains(&c.dport) {
                let tag = self.next_tag;
                self.next_tag += 1;
                work.push_back((host, self.frame_from(host, sctp::init_ack(&c, tag))));
            }
            return;
        }
        self.host_mut(host).dev.rx.push_back(payload);
    }

    fn external_owning(&self, ip: IpAddr) -> Option<HostId> {
        self.hosts.iter().position(|h| {
            h.as_ref()
                .is_some_and(|h| h.port.is_none() && h.ips.contains(&ip))
        })
    }

    /// Wraps an IP packet a host sends (without smoltcp) for its link.
    fn frame_from(&self, host: HostId, ip: Vec<u8>) -> Vec<u8> {
        let h = self.host(host);
        if h.port.is_none() {
            return ip;
        }
        // The switch's gateway MAC: routed like any off-subnet packet.
        let mut f = Vec::with_capacity(ETH_HLEN + ip.len());
        f.extend_from_slice(&self.dp.config().gateway_mac);
        f.extend_from_slice(&h.mac);
        f.extend_from_slice(if ip[0] >> 4 == 6 {
            &[0x86, 0xdd]
        } else {
            &[0x08, 0x00]
        });
        f.extend_from_slice(&ip);
        f
    }

    /// Hands a frame a host sent to the switch and delivers what comes out.
    fn inject(&mut self, host: HostId, frame: Vec<u8>, work: &mut VecDeque<(HostId, Vec<u8>)>) {
        let now = self.now();
        let h = self.host(host);
        let (port, mut frame) = match h.port {
            Some(p) => (p, frame),
            // Between two outside hosts: the outside network, not the switch.
            None if sctp_or_ip_dst(&frame).is_some_and(|d| self.external_owning(d).is_some()) => {
                let to = self
                    .external_owning(sctp_or_ip_dst(&frame).expect("dst"))
                    .expect("host");
                self.host_mut(to).dev.rx.push_back(frame);
                return;
            }
            None => {
                let mut f = Vec::with_capacity(ETH_HLEN + frame.len());
                f.extend_from_slice(&self.dp.config().gateway_mac);
                f.extend_from_slice(&NODE_MAC);
                f.extend_from_slice(if frame.first().is_some_and(|b| b >> 4 == 6) {
                    &[0x86, 0xdd]
                } else {
                    &[0x08, 0x00]
                });
                f.extend_from_slice(&frame);
                (NODE_PORT, f)
            }
        };
        let trace = std::env::var_os("VSWITCH_TRACE").is_some();
        if trace {
            eprintln!(
                "t={} from host {host} port {port}: {:?}",
                self.clock_ms,
                vswitch_datapath::parse::parse(&frame)
            );
        }
        let action = self.dp.process(port, &mut frame, now);
        if trace {
            eprintln!(
                "   -> {:?}",
                match &action {
                    Action::Reply(p, _) => format!("reply on {p}"),
                    a => format!("{a:?}"),
                }
            );
        }
        match action {
            Action::Forward(out) => self.deliver(out, frame, work),
            Action::Reply(out, r) => self.deliver(out, r, work),
            Action::Drop(_) => {}
        }
    }

    /// Polls every host and moves frames until nothing moves.
    fn settle(&mut self) {
        let now = self.smol_now();
        let mut work: VecDeque<(HostId, Vec<u8>)> = VecDeque::new();
        for _round in 0..64 {
            let mut moved = false;
            for id in 0..self.hosts.len() {
                let Some(h) = self.hosts[id].as_mut() else {
                    continue;
                };
                h.iface.poll(now, &mut h.dev, &mut h.sockets);
                serve_udp(h);
                h.iface.poll(now, &mut h.dev, &mut h.sockets);
                while let Some(f) = h.dev.tx.pop_front() {
                    work.push_back((id, f));
                }
            }
            while let Some((id, f)) = work.pop_front() {
                moved = true;
                if self.hosts[id].is_some() {
                    self.inject(id, f, &mut work);
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// Settles, then advances the clock by `ms`.
    pub fn tick(&mut self, ms: u64) {
        self.settle();
        self.clock_ms += ms;
    }

    /// Settles, then advances the clock to the next moment any stack has
    /// something to do (at least 10 ms, at most `limit`): waiting costs
    /// nothing in simulated time.
    fn tick_to_next_event(&mut self, limit: u64) {
        self.settle();
        let now = self.smol_now();
        let next = self
            .hosts
            .iter_mut()
            .flatten()
            .filter_map(|h| h.iface.poll_delay(now, &h.sockets))
            .map(|d| d.total_millis())
            .min()
            .unwrap_or(limit);
        self.clock_ms += next.clamp(10, limit.max(10));
    }

    // ----- connections -----------------------------------------------------

    fn listen_tcp(&mut self, host: HostId, port: u16) -> SocketHandle {
        let h = self.host_mut(host);
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 2048]),
            tcp::SocketBuffer::new(vec![0; 2048]),
        );
        s.listen(port).expect("listen");
        let handle = h.sockets.add(s);
        h.listeners.push(handle);
        handle
    }

    fn serve_udp_on(&mut self, host: HostId, port: u16) {
        let h = self.host_mut(host);
        if h.udp_servers.contains_key(&port) {
            return;
        }
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 8192]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 8192]),
        );
        s.bind(port).expect("bind");
        let handle = h.sockets.add(s);
        h.udp_servers.insert(port, handle);
    }

    fn connect_tcp(&mut self, a: &Attempt) -> SocketHandle {
        let local = self.ephemeral();
        let h = self.host_mut(a.from);
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 2048]),
            tcp::SocketBuffer::new(vec![0; 2048]),
        );
        s.connect(
            h.iface.context(),
            IpEndpoint::new(a.dst.into(), a.port),
            (IpAddress::from(a.src), local),
        )
        .expect("connect");
        h.sockets.add(s)
    }

    fn send_udp(&mut self, a: &Attempt) -> SocketHandle {
        let local = self.ephemeral();
        let h = self.host_mut(a.from);
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 512]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 512]),
        );
        s.bind((IpAddress::from(a.src), local)).expect("bind");
        let mut meta = udp::UdpMetadata::from(IpEndpoint::new(a.dst.into(), a.port));
        meta.local_address = Some(a.src.into());
        s.send_slice(b"probe", meta).expect("send");
        h.sockets.add(s)
    }

    /// Makes every attempt at once and waits up to `timeout_ms` of simulated
    /// time; returns which completed (TCP handshake, UDP reply, SCTP INIT-ACK).
    pub fn probe(&mut self, attempts: &[Attempt], timeout_ms: u64) -> Vec<bool> {
        let mut pending = Vec::with_capacity(attempts.len());
        for a in attempts {
            pending.push(match a.protocol {
                Protocol::Tcp => {
                    for (host, port) in a.servers() {
                        self.listen_tcp(host, port);
                    }
                    Pending::Tcp(self.connect_tcp(a))
                }
                Protocol::Udp => {
                    for (host, port) in a.servers() {
                        self.serve_udp_on(host, port);
                    }
                    Pending::Udp(self.send_udp(a))
                }
                _ => {
                    for (host, port) in a.servers() {
                        self.host_mut(host).sctp_ports.insert(port);
                    }
                    let sport = self.ephemeral();
                    let tag = self.next_tag;
                    self.next_tag += 1;
                    let init =
                        self.frame_from(a.from, sctp::init(a.src, a.dst, sport, a.port, tag));
                    self.host_mut(a.from).dev.tx.push_back(init);
                    Pending::Sctp { sport, tag }
                }
            });
        }
        let mut done = vec![false; attempts.len()];
        let deadline = self.clock_ms + timeout_ms;
        loop {
            self.tick_to_next_event(deadline.saturating_sub(self.clock_ms));
            for (i, (a, p)) in attempts.iter().zip(&pending).enumerate() {
                if done[i] {
                    continue;
                }
                let h = self.hosts[a.from].as_mut().expect("host");
                done[i] = match p {
                    Pending::Tcp(s) => {
                        h.sockets.get::<tcp::Socket>(*s).state() == tcp::State::Established
                    }
                    Pending::Udp(s) => h.sockets.get::<udp::Socket>(*s).can_recv(),
                    Pending::Sctp { sport, tag } => self
                        .sctp_acks
                        .iter()
                        .any(|c| c.dport == *sport && c.tag == *tag && c.dst == a.src),
                };
            }
            if done.iter().all(|d| *d) || self.clock_ms >= deadline {
                break;
            }
        }
        // Tear down: reset the connections, let the resets travel, free sockets.
        for (a, p) in attempts.iter().zip(&pending) {
            let h = self.hosts[a.from].as_mut().expect("host");
            match p {
                Pending::Tcp(s) => h.sockets.get_mut::<tcp::Socket>(*s).abort(),
                Pending::Udp(s) => h.sockets.get_mut::<udp::Socket>(*s).close(),
                Pending::Sctp { .. } => {}
            }
        }
        for h in self.hosts.iter_mut().flatten() {
            for l in std::mem::take(&mut h.listeners) {
                h.sockets.get_mut::<tcp::Socket>(l).abort();
            }
        }
        self.tick(10);
        for (a, p) in attempts.iter().zip(&pending) {
            let h = self.hosts[a.from].as_mut().expect("host");
            match p {
                Pending::Tcp(s) | Pending::Udp(s) => {
                    h.sockets.remove(*s);
                }
                Pending::Sctp { .. } => {}
            }
        }
        for h in self.hosts.iter_mut().flatten() {
            let dead: Vec<SocketHandle> = h
                .sockets
                .iter()
                .filter_map(|(handle, s)| match s {
                    smoltcp::socket::Socket::Tcp(t) if t.state() == tcp::State::Closed => {
                        Some(handle)
                    }
                    _ => None,
                })
                .collect();
            for d in dead {
                h.sockets.remove(d);
            }
        }
        self.sctp_acks.clear();
        done
    }

    /// Opens a TCP connection and keeps it; `None` if it did not establish.
    pub fn open_tcp(&mut self, a: &Attempt, timeout_ms: u64) -> Option<TcpConn> {
        let server_sock = self.listen_tcp(a.to, a.port);
        self.host_mut(a.to).listeners.retain(|l| *l != server_sock);
        let client_sock = self.connect_tcp(a);
        let deadline = self.clock_ms + timeout_ms;
        while self.clock_ms < deadline {
            self.tick(10);
            if self
                .host_mut(a.from)
                .sockets
                .get::<tcp::Socket>(client_sock)
                .state()
                == tcp::State::Established
            {
                return Some(TcpConn {
                    client: a.from,
                    server: a.to,
                    client_sock,
                    server_sock,
                });
            }
        }
        None
    }

    /// Sends `data` from client to server on an open connection and reports
    /// whether the server received all of it within `timeout_ms`.
    pub fn exchange(&mut self, c: &TcpConn, data: &[u8], timeout_ms: u64) -> bool {
        let sent = self
            .host_mut(c.client)
            .sockets
            .get_mut::<tcp::Socket>(c.client_sock)
            .send_slice(data);
        if sent != Ok(data.len()) {
            return false;
        }
        let mut got = Vec::new();
        let deadline = self.clock_ms + timeout_ms;
        while self.clock_ms < deadline {
            self.tick(10);
            let s = self
                .host_mut(c.server)
                .sockets
                .get_mut::<tcp::Socket>(c.server_sock);
            let mut buf = [0u8; 2048];
            while let Ok(n) = s.recv_slice(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            if got.len() >= data.len() {
                return got == data;
            }
        }
        false
    }
}

/// Echoes every datagram a host's UDP servers received.
fn serve_udp(h: &mut Host) {
    for handle in h.udp_servers.values() {
        let s = h.sockets.get_mut::<udp::Socket>(*handle);
        let mut buf = [0u8; 1500];
        while let Ok((n, meta)) = s.recv_slice(&mut buf) {
            let mut out = udp::UdpMetadata::from(meta.endpoint);
            out.local_address = meta.local_address;
            let _ = s.send_slice(&buf[..n], out);
        }
    }
}

fn sctp_or_ip_dst(ip: &[u8]) -> Option<IpAddr> {
    match ip.first()? >> 4 {
        4 => {
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            Some(IpAddr::from(d))
        }
        6 => {
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            Some(IpAddr::from(d))
        }
        _ => None,
    }
}
