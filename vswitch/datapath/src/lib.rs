//! The datapath: the code every pod packet goes through.
//!
//! Sans-I/O: [`Datapath::process`] takes a frame, the port it came in on and
//! the current time, and returns what to do ([`Action`]): forward it (after
//! rewriting it in place), send a reply the switch built, or drop it. It
//! never touches a file descriptor; [`worker`] moves frames between ports and
//! this core.
//!
//! Addressing: every port belongs to one pod and carries its MAC and IPs;
//! one more port belongs to the node. Pods see an ordinary Ethernet link with
//! a gateway (by default 169.254.1.1 and fe80::1 at [`Config::gateway_mac`]):
//! the switch answers ARP and neighbour solicitations itself (never floods),
//! forwards frames addressed to a pod's MAC at L2 and routes frames addressed
//! to the gateway by destination IP. Destinations in another node's pod
//! CIDRs go to that node's port, which is the [`overlay`] (VXLAN); other
//! destinations that are not local pods leave through the node port. Traffic between the node's own addresses and
//! local pods always passes (kubelet probes); everything else between pods,
//! and between pods and the outside through the node, is subject to
//! NetworkPolicy, statefully ([`conntrack`]), with the [`flow_cache`] in
//! front.

pub mod coalesce;
pub mod conntrack;
pub mod counters;
pub mod flow_cache;
pub mod frag;
pub mod io;
pub mod mem_hints;
pub mod overlay;
pub mod parse;
pub mod reply;
pub mod segment;
pub mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;
use policy::{Flow, Protocol, Snapshot};
use rustc_hash::FxHashMap;

use conntrack::{Conntrack, CtError, CtRef, Timeouts};
use counters::{Counters, Outcome};
use flow_cache::{CacheEntry, FlowCache, Forward, Lookup};
use frag::{FragKey, FragTable};
use parse::{IpPacket, L4, Mac, ParseError, Payload};
use wire::eth::HLEN as ETH_HLEN;

pub type PortId = u16;

/// What a port knows about a received frame besides its bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxMeta {
    pub vnet: wire::VnetHdr,
    /// Who sent it, for ports whose frames come from many senders (the
    /// overlay's socket: the sending node's address).
    pub peer: Option<std::net::IpAddr>,
}

impl RxMeta {
    /// A segmentation-offload frame: it stands for several packets.
    pub fn is_gso(&self) -> bool {
        self.vnet.gso_type != 0
    }
}

/// What to do with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the (rewritten) frame out of this port.
    Forward(PortId),
    /// Drop the frame and send this one out of the port instead.
    Reply(PortId, Vec<u8>),
    Drop(Outcome),
}

/// What to do with established connections that a new policy generation
/// no longer allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EstablishedPolicy {
    /// Re-check them at their next packet and cut the ones now denied
    /// (default: the policy in force is the policy enforced).
    #[default]
    Recheck,
    /// Keep connections that were allowed when they started.
    Keep,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub gateway_mac: Mac,
    pub gateway_v4: Ipv4Addr,
    pub gateway_v6: Ipv6Addr,
    pub established: EstablishedPolicy,
    pub conntrack_max: usize,
    pub flow_cache_max: usize,
    pub frag_max: usize,
    pub frag_ttl_ms: u64,
    pub timeouts: Timeouts,
    /// The cluster's pod address ranges: a destination in them that is on
    /// no known node is dropped (counted), not sent out of the node port.
    pub cluster_cidrs: Vec<IpNet>,
    /// The overlay's VXLAN network identifier.
    pub vni: u32,
    /// The largest inner IP packet the overlay carries unsegmented.
    pub overlay_mtu: u16,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // locally administered, unicast
            gateway_mac: [0x02, 0x76, 0x73, 0x77, 0x00, 0x01],
            gateway_v4: Ipv4Addr::new(169, 254, 1, 1),
            gateway_v6: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
            established: EstablishedPolicy::Recheck,
            conntrack_max: 229_376, // 7/8 of 2^18: the hash table is full at its load limit
            flow_cache_max: 65_536,
            frag_max: 4096,
            frag_ttl_ms: 2_000,
            timeouts: Timeouts::default(),
            cluster_cidrs: Vec::new(),
            vni: overlay::DEFAULT_VNI,
            overlay_mtu: 1450,
        }
    }
}

/// Who is behind a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortKind {
    /// A pod: its traffic is policed; `ready_generation` is the first policy
    /// generation that knows it (no traffic before: fail closed).
    Pod {
        ips: Vec<IpAddr>,
        ready_generation: u64,
    },
    /// The node: its own `ips` always reach local pods; other sources behind
    /// it are outside the cluster.
    Node { ips: Vec<IpAddr> },
    /// Another node, reached through the overlay at `addr`: it owns its pod
    /// CIDRs and its own addresses (sources its frames may carry).
    Remote {
        addr: IpAddr,
        addrs: Vec<IpAddr>,
        cidrs: Vec<IpNet>,
    },
    /// The overlay's socket: what arrives on it is a VXLAN datagram, taken
    /// by [`Datapath::process_overlay`] and handed on as a frame of the
    /// sending node's port.
    Overlay,
}

#[derive(Debug, Clone)]
pub struct PortState {
    pub name: String,
    pub mac: Mac,
    pub kind: PortKind,
    pub counters: Counters,
}

impl PortState {
    fn owns(&self, ip: IpAddr) -> bool {
        match &self.kind {
            PortKind::Pod { ips, .. } | PortKind::Node { ips } => ips.contains(&ip),
            PortKind::Remote { addrs, cidrs, .. } => {
                addrs.contains(&ip) || cidrs.iter().any(|c| c.contains(&ip))
            }
            PortKind::Overlay => false,
        }
    }
}

pub struct Datapath {
    cfg: Config,
    ports: Vec<Option<PortState>>,
    by_mac: FxHashMap<Mac, PortId>,
    /// Local pod addresses.
    by_ip: FxHashMap<IpAddr, PortId>,
    node_port: Option<PortId>,
    /// Other nodes' pod CIDRs, to their ports.
    remote: overlay::Routes,
    /// Other nodes' overlay addresses, to their ports.
    by_underlay: FxHashMap<IpAddr, PortId>,
    policy: Arc<Snapshot>,
    /// Changes with every policy generation and port change; flow-cache
    /// entries of another epoch are misses.
    epoch: u64,
    ct: Conntrack,
    frags: FragTable,
    cache: FlowCache,
    pub counters: Counters,
    start: Instant,
    last_now: (Instant, u64),
    /// A batch's flow-cache lookups (kept to be reused, not refilled).
    lookups: Vec<Option<Lookup>>,
}

/// The result of routing a packet: where it goes and how it is rewritten.
type Route = Result<Forward, Outcome>;

impl Datapath {
    pub fn new(cfg: Config, start: Instant) -> Datapath {
        Datapath {
            ct: Conntrack::new(cfg.conntrack_max, cfg.timeouts),
            frags: FragTable::new(cfg.frag_max, cfg.frag_ttl_ms),
            cache: FlowCache::new(cfg.flow_cache_max),
            cfg,
            ports: Vec::new(),
            by_mac: FxHashMap::default(),
            by_ip: FxHashMap::default(),
            node_port: None,
            remote: overlay::Routes::default(),
            by_underlay: FxHashMap::default(),
            policy: Arc::new(Snapshot::default()),
            epoch: 1,
            counters: Counters::default(),
            start,
            last_now: (start, 0),
            lookups: Vec::with_capacity(Self::BATCH),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_millis() as u64
    }

    // ----- control -------------------------------------------------------

    /// Attaches a port; its id is its index.
    pub fn add_port(&mut self, id: PortId, name: &str, mac: Mac, kind: PortKind) {
        let i = id as usize;
        if self.ports.len() <= i {
            self.ports.resize(i + 1, None);
        }
        if let Some(old) = self.ports[i].take() {
            self.unindex(id, &old);
        }
        if matches!(kind, PortKind::Node { .. }) {
            self.node_port = Some(id);
        }
        match &kind {
            PortKind::Pod { ips, .. } => {
                for ip in ips {
                    self.by_ip.insert(*ip, id);
                }
            }
            PortKind::Remote { addr, addrs, cidrs } => {
                // its pods, and its own addresses (so that what this node's
                // pods send its host comes back the way it went)
                for c in cidrs
                    .iter()
                    .copied()
                    .chain(addrs.iter().map(|a| IpNet::from(*a)))
                {
                    self.remote.insert(c, id);
                }
                self.by_underlay.insert(*addr, id);
            }
            PortKind::Node { .. } | PortKind::Overlay => {}
        }
        self.by_mac.insert(mac, id);
        self.ports[i] = Some(PortState {
            name: name.to_string(),
            mac,
            kind,
            counters: Counters::default(),
        });
        self.epoch += 1;
    }

    fn unindex(&mut self, id: PortId, p: &PortState) {
        self.by_mac.retain(|_, v| *v != id);
        self.by_ip.retain(|_, v| *v != id);
        if matches!(p.kind, PortKind::Remote { .. }) {
            self.remote.remove_port(id);
            self.by_underlay.retain(|_, v| *v != id);
        }
        if self.node_port == Some(id) && !matches!(p.kind, PortKind::Node { .. }) {
            self.node_port = None;
        }
    }

    /// Detaches a port (idempotent).
    pub fn remove_port(&mut self, id: PortId) -> Option<PortState> {
        let p = self.ports.get_mut(id as usize)?.take()?;
        self.unindex(id, &p);
        if self.node_port == Some(id) {
            self.node_port = None;
        }
        self.epoch += 1;
        Some(p)
    }

    /// Sets the first policy generation a pod's port may pass traffic under.
    pub fn set_ready(&mut self, id: PortId, generation: u64) {
        if let Some(Some(PortState {
            kind: PortKind::Pod {
                ready_generation, ..
            },
            ..
        })) = self.ports.get_mut(id as usize)
        {
            *ready_generation = generation;
            self.epoch += 1;
        }
    }

    pub fn port(&self, id: PortId) -> Option<&PortState> {
        self.ports.get(id as usize)?.as_ref()
    }

    pub fn ports(&self) -> impl Iterator<Item = (PortId, &PortState)> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i as PortId, p)))
    }

    /// Installs a policy generation; it applies from the next packet on.
    pub fn set_policy(&mut self, snapshot: Arc<Snapshot>) {
        if snapshot.generation() != self.policy.generation() {
            self.epoch += 1;
        }
        self.policy = snapshot;
    }

    pub fn policy_generation(&self) -> u64 {
        self.policy.generation()
    }

    /// The epoch flow-cache entries must carry to be hits.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The datapath's clock (milliseconds since it started), the unit of
    /// conntrack's `last_seen`.
    pub fn clock_ms(&self, now: Instant) -> u64 {
        self.ms(now)
    }

    pub fn conntrack(&self) -> &Conntrack {
        &self.ct
    }

    pub fn flow_cache(&self) -> &FlowCache {
        &self.cache
    }

    /// Housekeeping: expires connections, fragments and dead cache entries.
    pub fn expire(&mut self, now: Instant, budget: usize) {
        let ms = self.ms(now);
        self.ct.sweep(ms, budget);
        self.frags.expire(ms);
        let (epoch, ct) = (self.epoch as u32, &self.ct);
        self.cache
            .sweep(|s, r| s.epoch != epoch || ct.get(r).is_none());
    }

    // ----- the packet path -----------------------------------------------

    /// Decides what happens to one frame received on `in_port`; the frame is
    /// rewritten in place when it is forwarded. Every call bumps exactly one
    /// outcome counter, on the port and on the datapath.
    #[inline]
    pub fn process(&mut self, in_port: PortId, frame: &mut [u8], now: Instant) -> Action {
        self.process_frame(in_port, frame, 0, now)
    }

    /// [`Datapath::process`] for a frame that may be a segmentation-offload
    /// frame: `gso` is its segment size (its port's virtio-net header says
    /// so; 0: a plain frame). Such a frame stands for several packets, which
    /// the output cuts to size; it is held to the overlay's MTU by the size
    /// of those packets.
    pub fn process_frame(
        &mut self,
        in_port: PortId,
        frame: &mut [u8],
        gso: u16,
        now: Instant,
    ) -> Action {
        let ms = self.clock(now);
        let Some(mac) = self.port(in_port).map(|p| p.mac) else {
            return Action::Drop(Outcome::NoRoute); // not ours to count: no such port
        };
        // Fast path: a packet of an established flow, by exact match on the
        // sender's port and the packet's addresses and ports.
        if let Some(key) = parse::fast_key(frame, in_port, mac)
            && let Some(idx) = self.cache.find(FlowCache::hash(&key), &key)
            && let Some(out) = self.hit(mac, frame, idx, ms, gso)
        {
            let len = frame.len() as u64;
            self.count_received(in_port, Outcome::FastForward, 1, len);
            self.count_sent(out, 1, len);
            return Action::Forward(out);
        }

        let (action, outcome) = self.slow_path(in_port, frame, gso, ms);
        self.account(in_port, frame.len(), outcome, action)
    }

    /// A datagram from the overlay socket (`in_port`, a [`PortKind::Overlay`]
    /// port) sent by `peer`: accepted only from a known node and with our
    /// VNI, its inner frame then goes the way of every frame, as a frame of
    /// that node's port (whose sources are checked like a pod's). The inner
    /// frame starts at [`overlay::HLEN`]; its MACs are rewritten to the
    /// virtual link between the node's port and the gateway.
    pub fn process_overlay(
        &mut self,
        in_port: PortId,
        peer: Option<IpAddr>,
        datagram: &mut [u8],
        now: Instant,
    ) -> Action {
        let Some(&via) = peer.and_then(|p| self.by_underlay.get(&p)) else {
            let drop = Action::Drop(Outcome::Forged);
            return self.account(in_port, datagram.len(), Outcome::Forged, drop);
        };
        if !overlay::check(datagram, self.cfg.vni) {
            let drop = Action::Drop(Outcome::Malformed);
            return self.account(via, datagram.len(), Outcome::Malformed, drop);
        }
        let mac = self.ports[via as usize].as_ref().expect("indexed").mac;
        let inner = &mut datagram[overlay::HLEN..];
        inner[0..6].copy_from_slice(&self.cfg.gateway_mac);
        inner[6..12].copy_from_slice(&mac);
        self.process(via, inner, now)
    }

    /// Counts a frame that took the slow path: received on `in_port`, its
    /// one outcome, and what was sent.
    fn account(&mut self, in_port: PortId, len: usize, outcome: Outcome, action: Action) -> Action {
        let len = len as u64;
        self.count_received(in_port, outcome, 1, len);
        match &action {
            Action::Forward(out) => self.count_sent(*out, 1, len),
            Action::Reply(out, f) => self.count_sent(*out, 1, f.len() as u64),
            Action::Drop(_) => {}
        }
        action
    }

    /// Most frames [`Datapath::process_batch`] takes at once.
    pub const BATCH: usize = 64;

    /// Processes frames received together on one port, as `process` would
    /// one by one (same actions, same counters), but with the flow-cache
    /// lookups of the whole batch overlapped: keys and hashes first, asking
    /// for every bucket line, then the buckets, asking for every slot line,
    /// then the hits, so that their memory fetches overlap instead of
    /// following each other. `actions`
    /// receives one action per frame, in order.
    ///
    /// `gso` gives the frames' segment sizes (see
    /// [`Datapath::process_frame`]); frames beyond its length are plain.
    pub fn process_batch(
        &mut self,
        in_port: PortId,
        frames: &mut [&mut [u8]],
        gso: &[u16],
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        for (i, chunk) in frames.chunks_mut(Self::BATCH).enumerate() {
            let from = (i * Self::BATCH).min(gso.len());
            let to = (from + Self::BATCH).min(gso.len());
            self.batch(in_port, chunk, &gso[from..to], now, actions);
        }
    }

    fn batch(
        &mut self,
        in_port: PortId,
        frames: &mut [&mut [u8]],
        gso: &[u16],
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let ms = self.clock(now);
        let Some(mac) = self.port(in_port).map(|p| p.mac) else {
            actions.extend(frames.iter().map(|_| Action::Drop(Outcome::NoRoute)));
            return;
        };
        let mut lookups = std::mem::take(&mut self.lookups);
        self.cache
            .lookup_batch(frames, |f| parse::fast_key(f, in_port, mac), &mut lookups);
        // hits received, and the current run of hits sent to one port
        let (mut packets, mut bytes) = (0, 0);
        let (mut run_port, mut run_packets, mut run_bytes) = (0, 0, 0);
        for (i, (f, l)) in frames.iter_mut().zip(&lookups).enumerate() {
            let seg = gso.get(i).copied().unwrap_or(0);
            let idx = l.as_ref().and_then(|l| self.cache.resolve(l));
            match idx.and_then(|j| self.hit(mac, f, j, ms, seg)) {
                Some(out) => {
                    let len = f.len() as u64;
                    packets += 1;
                    bytes += len;
                    if out != run_port {
                        self.count_sent(run_port, run_packets, run_bytes);
                        (run_port, run_packets, run_bytes) = (out, 0, 0);
                    }
                    run_packets += 1;
                    run_bytes += len;
                    actions.push(Action::Forward(out));
                }
                // (the whole path, which also finds flows that earlier
                // frames of the batch put in the cache)
                None => actions.push(self.process_frame(in_port, f, seg, now)),
            }
        }
        self.count_received(in_port, Outcome::FastForward, packets, bytes);
        self.count_sent(run_port, run_packets, run_bytes);
        self.lookups = lookups;
    }

    /// The fast path for a frame whose cache entry is known: the frame
    /// rewritten and its output port (the caller counts). `None` when the
    /// entry is stale (the caller takes the whole path).
    #[inline(always)]
    fn hit(
        &mut self,
        port_mac: Mac,
        frame: &mut [u8],
        idx: u32,
        ms: u64,
        gso: u16,
    ) -> Option<PortId> {
        let s = self.cache.slot(idx);
        if s.epoch != self.epoch as u32 || (s.mtu != 0 && too_big(frame, s.mtu, gso)) {
            return None;
        }
        let fwd = s.forward(self.cfg.gateway_mac, port_mac);
        // The connection: refreshed (and found live) at most once a second.
        let now = ms as u32;
        if now.wrapping_sub(s.refreshed) >= flow_cache::REFRESH_MS {
            if !self.ct.touch(self.cache.ct(idx), ms) {
                return None;
            }
            self.cache.refreshed(idx, now);
        }
        rewrite(frame, &fwd).then_some(fwd.port)
    }

    /// Counts `packets` frames, `bytes` in all, received on `in_port` with
    /// one `outcome`, on the port and on the datapath (a batch counts its
    /// hits at once).
    #[inline(always)]
    fn count_received(&mut self, in_port: PortId, outcome: Outcome, packets: u64, bytes: u64) {
        if let Some(p) = self
            .ports
            .get_mut(in_port as usize)
            .and_then(Option::as_mut)
        {
            p.counters.received(outcome, packets, bytes);
        }
        self.counters.received(outcome, packets, bytes);
    }

    /// Counts `packets` frames, `bytes` in all, sent to `out` (a batch
    /// counts each run of hits to one port at once).
    #[inline(always)]
    fn count_sent(&mut self, out: PortId, packets: u64, bytes: u64) {
        if let Some(p) = self.ports.get_mut(out as usize).and_then(Option::as_mut) {
            p.counters.tx_packets += packets;
            p.counters.tx_bytes += bytes;
        }
    }

    /// Milliseconds since the datapath started, computed once per distinct
    /// `now` (a batch of frames shares one).
    #[inline]
    fn clock(&mut self, now: Instant) -> u64 {
        if self.last_now.0 != now {
            self.last_now = (now, self.ms(now));
        }
        self.last_now.1
    }

    /// Everything the flow cache did not answer. Never inlined: the hit
    /// path stays small, with few registers to save.
    #[inline(never)]
    fn slow_path(
        &mut self,
        in_port: PortId,
        frame: &mut [u8],
        gso: u16,
        ms: u64,
    ) -> (Action, Outcome) {
        let drop = |o: Outcome| (Action::Drop(o), o);
        if frame.len() < ETH_HLEN {
            return drop(Outcome::Malformed);
        }
        let port_mac = self.ports[in_port as usize]
            .as_ref()
            .map(|p| p.mac)
            .unwrap_or_default();
        if frame[6..12] != port_mac {
            return drop(Outcome::Spoofed);
        }
        let parsed = match parse::parse(frame) {
            Ok(p) => p,
            Err(ParseError::Malformed(_)) => return drop(Outcome::Malformed),
            Err(ParseError::Unsupported(_)) => return drop(Outcome::Unsupported),
        };
        match parsed.payload {
            Payload::Arp(arp) => self.arp(in_port, &arp),
            Payload::Ip(ip) => match self.ip(in_port, parsed.dst_mac, &ip, frame, gso, ms) {
                Ok(fwd) => {
                    if rewrite(frame, &fwd) {
                        (Action::Forward(fwd.port), Outcome::SlowForward)
                    } else {
                        self.ttl_expired(in_port, frame)
                    }
                }
                Err(Ok(reply)) => reply,
                Err(Err(o)) => drop(o),
            },
        }
    }

    fn too_big_reply(&self, in_port: PortId, frame: &[u8], mtu: u16) -> (Action, Outcome) {
        match reply::too_big(
            frame,
            self.cfg.gateway_mac,
            self.cfg.gateway_v4,
            self.cfg.gateway_v6,
            mtu,
        ) {
            Some(r) => (Action::Reply(in_port, r), Outcome::TooBig),
            None => (Action::Drop(Outcome::Malformed), Outcome::Malformed),
        }
    }

    fn ttl_expired(&self, in_port: PortId, frame: &[u8]) -> (Action, Outcome) {
        match reply::time_exceeded(
            frame,
            self.cfg.gateway_mac,
            self.cfg.gateway_v4,
            self.cfg.gateway_v6,
        ) {
            Some(r) => (Action::Reply(in_port, r), Outcome::TtlExpired),
            None => (Action::Drop(Outcome::Malformed), Outcome::Malformed),
        }
    }

    /// ARP: the switch answers for every address (local pods with their MAC
    /// when the asker shares their link, anything else with the gateway's).
    fn arp(&self, in_port: PortId, arp: &parse::Arp) -> (Action, Outcome) {
        let drop = |o: Outcome| (Action::Drop(o), o);
        let port = self.ports[in_port as usize].as_ref().expect("port");
        if arp.sender_mac != port.mac {
            return drop(Outcome::Spoofed);
        }
        if !arp.request {
            return drop(Outcome::Unsupported); // gratuitous replies teach us nothing
        }
        if arp.sender_ip.is_unspecified() || arp.sender_ip == arp.target_ip {
            return drop(Outcome::Unsupported); // address probes and announcements
        }
        let sender = IpAddr::V4(arp.sender_ip);
        // A pod may ask from its own address or a link-local one (the
        // switch learns nothing from ARP, so this poisons nothing).
        let legit = match &port.kind {
            PortKind::Pod { .. } => port.owns(sender) || arp.sender_ip.is_link_local(),
            PortKind::Node { .. } => !self.by_ip.contains_key(&sender),
            // nothing to resolve across the overlay
            PortKind::Remote { .. } | PortKind::Overlay => {
                return drop(Outcome::Unsupported);
            }
        };
        if !legit {
            return drop(Outcome::Spoofed);
        }
        let answer = self.neighbor_mac(in_port, IpAddr::V4(arp.target_ip));
        let r = reply::arp_reply(answer, arp.target_ip, arp.sender_mac, arp.sender_ip);
        (Action::Reply(in_port, r), Outcome::Replied)
    }

    /// The MAC the switch gives for `target` to the host on `in_port`: a
    /// local pod's own MAC to another pod (so that pods sharing a subnet talk
    /// at L2), the gateway's otherwise.
    fn neighbor_mac(&self, in_port: PortId, target: IpAddr) -> Mac {
        let from_pod = self.node_port != Some(in_port);
        match self.by_ip.get(&target) {
            Some(&p) if from_pod && p != in_port => self.ports[p as usize].as_ref().map(|p| p.mac),
            _ => None,
        }
        .unwrap_or(self.cfg.gateway_mac)
    }

    fn is_node_address(&self, ip: IpAddr) -> bool {
        self.node_port
            .and_then(|p| self.ports[p as usize].as_ref())
            .is_some_and(|p| p.owns(ip))
    }

    /// The IP packet path. `Ok`: forward; `Err(Ok)`: a reply; `Err(Err)`: drop.
    #[allow(clippy::too_many_arguments)]
    fn ip(
        &mut self,
        in_port: PortId,
        dst_mac: Mac,
        ip: &IpPacket,
        frame: &[u8],
        gso: u16,
        ms: u64,
    ) -> Result<Forward, Result<(Action, Outcome), Outcome>> {
        let port = self.ports[in_port as usize].as_ref().expect("port");
        let from_node = matches!(port.kind, PortKind::Node { .. });
        let from_remote = matches!(port.kind, PortKind::Remote { .. });

        // Neighbour discovery is answered here, before anything is routed.
        if let L4::Ndp { ty } = ip.l4 {
            if from_remote {
                return Err(Err(Outcome::Unsupported)); // not across the overlay
            }
            return Err(self.ndp(in_port, ty, ip, frame));
        }
        // Anti-spoofing: a pod sends from its own addresses only, another
        // node from its pods' and its own; the node may not impersonate a
        // local pod.
        let legit = if from_node {
            !self.by_ip.contains_key(&ip.src)
        } else {
            port.owns(ip.src)
        };
        if !legit {
            return Err(Err(if from_remote {
                Outcome::Forged
            } else {
                Outcome::Spoofed
            }));
        }
        if let PortKind::Pod {
            ready_generation, ..
        } = port.kind
            && self.policy.generation() < ready_generation
        {
            return Err(Err(Outcome::NotReady));
        }

        let fwd = self.route(in_port, dst_mac, ip.dst).map_err(Err)?;
        if fwd.routed && ip.ttl <= 1 {
            return Err(Ok(self.ttl_expired(in_port, frame)));
        }
        if let PortKind::Pod {
            ready_generation, ..
        } = self.ports[fwd.port as usize].as_ref().expect("port").kind
            && self.policy.generation() < ready_generation
        {
            return Err(Err(Outcome::NotReady));
        }

        // Later fragments follow their first fragment.
        if let Some(f) = ip.frag.filter(|f| !f.first) {
            let key = FragKey {
                src: ip.src,
                dst: ip.dst,
                proto: ip.proto,
                id: f.id,
            };
            return self
                .frags
                .follow(&key, ms)
                .ok_or(Err(Outcome::FragmentUnknown));
        }

        let tuple = ip.tuple();
        let node_local =
            (from_node && self.is_node_address(ip.src)) || self.is_node_address(ip.dst);
        let ct = if let L4::IcmpError { inner } = ip.l4 {
            // Related to a tracked connection, and going back to its sender.
            match self.ct.lookup(&inner, ms) {
                Some((r, _)) if inner.src == ip.dst => r,
                _ if node_local => CtRef::default(),
                _ => return Err(Err(Outcome::Untracked)),
            }
        } else {
            // An echo request belongs to its originator's direction and a
            // reply to the other: a request in the reply direction is a new
            // echo (policy decides), a reply in the originator's is untracked.
            let found = self.ct.lookup(&tuple, ms).filter(|(_, dir)| match ip.l4 {
                L4::Echo { request, .. } => request == (*dir == conntrack::Dir::Orig),
                _ => true,
            });
            match found {
                Some((r, dir)) => {
                    self.recheck(r, node_local).map_err(Err)?;
                    self.ct.update(r, dir, &ip.l4, ms);
                    r
                }
                None => {
                    if !conntrack::may_start(&ip.l4) {
                        return Err(Err(Outcome::Untracked));
                    }
                    if !node_local && !self.allowed(&tuple) {
                        return Err(Err(Outcome::PolicyDeny));
                    }
                    match self.ct.create(&tuple, &ip.l4, ms, self.policy.generation()) {
                        Ok(r) => r,
                        Err(CtError::Full) => return Err(Err(Outcome::TableFull)),
                    }
                }
            }
        };

        // Allowed, but too big for the overlay: answered as a router would
        // (IPv4 without DF is fragmented by the overlay instead).
        if fwd.mtu != 0 && too_big(frame, fwd.mtu, gso) {
            return Err(Ok(self.too_big_reply(in_port, frame, fwd.mtu)));
        }

        if let Some(f) = ip.frag {
            let key = FragKey {
                src: ip.src,
                dst: ip.dst,
                proto: ip.proto,
                id: f.id,
            };
            self.frags.remember(key, fwd, ms);
        } else if self.ct.cacheable(ct)
            && let Some(key) = parse::cache_key(frame, in_port)
        {
            self.cache.insert(
                key,
                CacheEntry {
                    fwd,
                    ct,
                    epoch: self.epoch,
                },
                ms as u32,
            );
        }
        Ok(fwd)
    }

    /// NetworkPolicy for a new connection.
    fn allowed(&self, t: &parse::FlowTuple) -> bool {
        let dst_port = if conntrack::is_icmp(t.proto) {
            0
        } else {
            t.dport
        };
        self.policy
            .verdict(&Flow {
                src: t.src,
                dst: t.dst,
                protocol: Protocol::from_number(t.proto),
                dst_port,
            })
            .allowed()
    }

    /// Re-checks a tracked connection against a newer policy generation.
    fn recheck(&mut self, r: CtRef, node_local: bool) -> Result<(), Outcome> {
        let generation = self.policy.generation();
        let Some(e) = self.ct.get(r) else {
            return Ok(());
        };
        if e.policy_epoch == generation as u32
            || node_local
            || self.cfg.established == EstablishedPolicy::Keep
        {
            return Ok(());
        }
        let orig = self.ct.orig_tuple(r).expect("live entry");
        if self.allowed(&orig) {
            self.ct.set_policy_epoch(r, generation);
            Ok(())
        } else {
            self.ct.remove(r);
            Err(Outcome::PolicyDeny)
        }
    }

    /// Where a packet goes. A frame to the gateway's MAC is routed by
    /// destination address; a frame to a local pod's MAC is delivered at L2
    /// if that pod owns the destination address. Nothing is flooded.
    ///
    /// By destination address: a local pod; else another node's pod CIDR or
    /// address (not for what came from another node, which goes only to
    /// local pods and this node's own addresses: no transit); else, from a
    /// pod, out of the node port, unless the address is in the cluster's pod
    /// range (a pod of a node that is gone: dropped).
    fn route(&self, in_port: PortId, dst_mac: Mac, dst: IpAddr) -> Route {
        let fwd = |port: PortId, routed: bool| -> Route {
            if port == in_port {
                return Err(Outcome::NoRoute); // no hairpin
            }
            let out = self.ports[port as usize].as_ref().ok_or(Outcome::NoRoute)?;
            let mtu = match out.kind {
                PortKind::Remote { .. } => self.cfg.overlay_mtu,
                _ => 0,
            };
            Ok(Forward {
                port,
                routed,
                src_mac: self.cfg.gateway_mac,
                dst_mac: out.mac,
                mtu,
            })
        };
        if dst_mac == self.cfg.gateway_mac {
            if let Some(&p) = self.by_ip.get(&dst) {
                return fwd(p, true);
            }
            let from = &self.ports[in_port as usize].as_ref().expect("port").kind;
            if matches!(from, PortKind::Remote { .. }) {
                // to this node's own host, else nowhere (no transit)
                return match self.node_port {
                    Some(p) if self.is_node_address(dst) => fwd(p, true),
                    _ => Err(Outcome::NoRoute),
                };
            }
            if let Some(p) = self.remote.lookup(dst) {
                return fwd(p, true);
            }
            if matches!(from, PortKind::Node { .. }) {
                return Err(Outcome::NoRoute);
            }
            if self.cfg.cluster_cidrs.iter().any(|c| c.contains(&dst)) {
                return Err(Outcome::NoNode);
            }
            fwd(self.node_port.ok_or(Outcome::NoRoute)?, true)
        } else {
            // At L2 only on this node's link, to the owner of the address.
            match self.by_mac.get(&dst_mac) {
                Some(&p)
                    if self.ports[p as usize].as_ref().is_some_and(|s| {
                        matches!(s.kind, PortKind::Pod { .. } | PortKind::Node { .. })
                            && s.owns(dst)
                    }) =>
                {
                    let mut f = fwd(p, false)?;
                    f.src_mac = self.ports[in_port as usize].as_ref().expect("port").mac;
                    Ok(f)
                }
                _ => Err(Outcome::NoRoute),
            }
        }
    }

    /// Neighbour solicitations are answered like ARP; router solicitations,
    /// advertisements and redirects from pods are not for the switch to take.
    fn ndp(
        &self,
        in_port: PortId,
        ty: u8,
        ip: &IpPacket,
        frame: &[u8],
    ) -> Result<(Action, Outcome), Outcome> {
        let port = self.ports[in_port as usize].as_ref().expect("port");
        if ty != 135 {
            return Err(Outcome::Unsupported);
        }
        let IpAddr::V6(src) = ip.src else {
            return Err(Outcome::Malformed);
        };
        if src.is_unspecified() {
            return Err(Outcome::Unsupported); // duplicate address detection: stay silent
        }
        let link_local = src.segments()[0] & 0xffc0 == 0xfe80;
        let legit = match &port.kind {
            PortKind::Pod { .. } => link_local || port.owns(ip.src),
            PortKind::Node { .. } => !self.by_ip.contains_key(&ip.src),
            PortKind::Remote { .. } | PortKind::Overlay => return Err(Outcome::Unsupported),
        };
        if !legit {
            return Err(Outcome::Spoofed);
        }
        if ip.ttl != 255 {
            return Err(Outcome::Malformed); // RFC 4861: NDP arrives with hop limit 255
        }
        // The target address follows the ICMPv6 header's 8 bytes (NDP packets
        // carry no extension headers).
        if frame.get(ETH_HLEN + 6) != Some(&wire::ip_proto::ICMPV6) {
            return Err(Outcome::Unsupported);
        }
        let l4 = ETH_HLEN + 40;
        let target: [u8; 16] = frame
            .get(l4 + 8..l4 + 24)
            .ok_or(Outcome::Malformed)?
            .try_into()
            .expect("16");
        let target = Ipv6Addr::from(target);
        let answer = self.neighbor_mac(in_port, IpAddr::V6(target));
        let src_mac: Mac = frame[6..12].try_into().expect("6");
        let router = answer == self.cfg.gateway_mac;
        let r = reply::neighbor_advert(answer, target, router, src_mac, src);
        Ok((Action::Reply(in_port, r), Outcome::Replied))
    }
}

/// Whether a frame's IP packets are larger than `mtu` and may not be
/// fragmented on the way: IPv6, IPv4 with DF set, and the segments of an
/// offload frame (`gso`: its segment size), which are cut, never
/// fragmented.
#[inline(always)]
fn too_big(frame: &[u8], mtu: u16, gso: u16) -> bool {
    if gso != 0 {
        return segment_len(frame, gso).is_some_and(|n| n > mtu as usize);
    }
    let len = frame.len().saturating_sub(ETH_HLEN);
    len > mtu as usize
        && match frame[12..14] {
            [0x08, 0x00] => frame.get(ETH_HLEN + 6).is_some_and(|f| f & 0x40 != 0),
            [0x86, 0xdd] => true,
            _ => false,
        }
}

/// The IP packet length of an offload frame's segments: its IP and TCP or
/// UDP headers plus `gso` bytes (`None` if the headers are not there).
fn segment_len(frame: &[u8], gso: u16) -> Option<usize> {
    let l3 = frame.get(ETH_HLEN..)?;
    let (ip_len, proto) = match frame.get(12..14)? {
        [0x08, 0x00] => ((*l3.first()? as usize & 0x0f) * 4, *l3.get(9)?),
        [0x86, 0xdd] => (40, *l3.get(6)?),
        _ => return None,
    };
    let l4_len = match proto {
        wire::ip_proto::TCP => (*l3.get(ip_len + 12)? as usize >> 4) * 4,
        _ => 8,
    };
    Some(ip_len + l4_len + gso as usize)
}

/// Rewrites a frame for its output: MACs, and TTL or hop limit when routed
/// (IPv4's header checksum updated incrementally, RFC 1624). Returns false,
/// leaving the frame as it was, if the TTL would reach zero.
#[inline(always)]
fn rewrite(frame: &mut [u8], fwd: &Forward) -> bool {
    if fwd.routed {
        match frame[12..14] {
            [0x08, 0x00] => {
                let ttl = &mut frame[ETH_HLEN + 8];
                if *ttl <= 1 {
                    return false;
                }
                *ttl -= 1;
                let c = u16::from_be_bytes([frame[ETH_HLEN + 10], frame[ETH_HLEN + 11]]);
                let sum = c as u32 + 0x0100;
                let c = (sum + (sum >> 16)) as u16;
                frame[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
            }
            [0x86, 0xdd] => {
                let hl = &mut frame[ETH_HLEN + 7];
                if *hl <= 1 {
                    return false;
                }
                *hl -= 1;
            }
            _ => {}
        }
    }
    frame[0..6].copy_from_slice(&fwd.dst_mac);
    frame[6..12].copy_from_slice(&fwd.src_mac);
    true
}
