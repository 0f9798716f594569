//! The datapath proper: [`Datapath`] and its packet path.
//!
//! [`Datapath::process_frame`] is the one function where a frame's path
//! reads top to bottom: the flow cache's fast path, then
//! the slow path, which parses the frame and hands it to the neighbour
//! answers (`neighbor.rs`: ARP, NDP) or to the IP path (`ip.rs`:
//! anti-spoofing, the Services' translation (`service_proxy.rs`),
//! conntrack, policy; it routes with `route.rs`), and finally the
//! translation and output rewrite (`nat.rs`, `rewrite.rs`) for its port.
//! [`Datapath::process_batch`] does the same for a batch, with the flow
//! cache's lookups overlapped. The control side (the port registry,
//! policy, housekeeping) is in `control.rs`.

mod control;
mod ip;
mod kube_proxy;
mod neighbor;
mod rewrite;
mod route;
mod service_proxy;

pub use service_proxy::{FrontendCounters, ServiceCounters};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use policy::Snapshot;
use rustc_hash::FxHashMap;

use crate::config::Config;
use crate::conntrack::Conntrack;
use crate::counters::{Counters, Outcome};
use crate::flow_cache::{self, FlowCache, Lookup};
use crate::frag::FragTable;
use crate::nat;
use crate::overlay;
use crate::parse::{self, Mac, ParseError, Payload};
use crate::ports::{PortId, PortState};
use crate::reply;
use crate::services::ServiceTable;
use crate::wire::eth;

use ip::{IpVerdict, Nat};
use rewrite::{oversize, rewrite};

/// What to do with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the (rewritten) frame out of this port.
    Forward(PortId),
    /// Drop the frame and send this one out of the port instead.
    Reply(PortId, Vec<u8>),
    Drop(Outcome),
}

/// What a port said of a frame's offloads (its virtio-net header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offload {
    /// The segment size of a segmentation-offload frame (0: a plain frame).
    pub gso: u16,
    /// Its transport checksum is partial (`VIRTIO_NET_HDR_F_NEEDS_CSUM`):
    /// the field holds the pseudo-header's sum, the output completes it.
    pub partial_csum: bool,
}

impl Offload {
    /// A plain frame with complete checksums.
    pub const NONE: Offload = Offload {
        gso: 0,
        partial_csum: false,
    };
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
    /// Pods' connections to kube-proxy's service ranges (their way back).
    legs: kube_proxy::ServiceLegs,
    /// The Services the switch translates (`--service-proxy switch`).
    services: Arc<ServiceTable>,
    /// Their translated connections and clients' affinities.
    nat: service_proxy::ServiceNat,
    frags: FragTable,
    cache: FlowCache,
    pub counters: Counters,
    start: Instant,
    last_now: (Instant, u64),
    /// A batch's flow-cache lookups (kept to be reused, not refilled).
    lookups: Vec<Option<Lookup>>,
}

impl Datapath {
    pub fn new(cfg: Config, start: Instant) -> Datapath {
        Datapath {
            ct: Conntrack::new(cfg.conntrack_max, cfg.timeouts),
            legs: kube_proxy::ServiceLegs::new(),
            services: Arc::new(ServiceTable::new()),
            nat: service_proxy::ServiceNat::new(),
            frags: FragTable::new(cfg.frag_max, cfg.frag_ttl_ms),
            cache: match cfg.flow_cache_key {
                Some(key) => FlowCache::with_key(cfg.flow_cache_max, key),
                None => FlowCache::new(cfg.flow_cache_max),
            },
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

    // ----- the packet path -----------------------------------------------

    /// Decides what happens to one frame received on `in_port`; the frame is
    /// rewritten in place when it is forwarded. Every call bumps exactly one
    /// outcome counter, on the port and on the datapath.
    #[inline]
    pub fn process(&mut self, in_port: PortId, frame: &mut [u8], now: Instant) -> Action {
        self.process_frame(in_port, frame, Offload::NONE, now)
    }

    /// [`Datapath::process`] for a frame with offloads: a
    /// segmentation-offload frame (`off.gso`, its segment size) stands for
    /// several packets, which the output cuts to size, and is held to the
    /// overlay's MTU by the size of those packets; a partial checksum is
    /// patched as one when the packet is translated.
    pub fn process_frame(
        &mut self,
        in_port: PortId,
        frame: &mut [u8],
        off: Offload,
        now: Instant,
    ) -> Action {
        let ms = self.clock(now);
        let Some(mac) = self.port(in_port).map(|p| p.mac) else {
            return Action::Drop(Outcome::NoRoute); // not ours to count: no such port
        };
        // Fast path: a packet of an established flow, by exact match on the
        // sender's port and the packet's addresses and ports.
        if let Some(key) = parse::fast_key(frame, in_port, mac)
            && let Some(idx) = self.cache.find(self.cache.hash(&key), &key)
            && let Some(out) = self.hit(mac, frame, idx, ms, off)
        {
            let len = frame.len() as u64;
            self.count_received(in_port, Outcome::FastForward, 1, len);
            self.count_sent(out, 1, len);
            return Action::Forward(out);
        }

        let (action, outcome) = self.slow_path(in_port, frame, off, ms);
        self.account(in_port, frame.len(), outcome, action)
    }

    /// Everything the flow cache did not answer. Never inlined: the hit
    /// path stays small, with few registers to save.
    #[inline(never)]
    fn slow_path(
        &mut self,
        in_port: PortId,
        frame: &mut [u8],
        off: Offload,
        ms: u64,
    ) -> (Action, Outcome) {
        let drop = |o: Outcome| (Action::Drop(o), o);
        if frame.len() < eth::HLEN {
            return drop(Outcome::Malformed);
        }
        let port_mac = self.ports[in_port as usize]
            .as_ref()
            .map(|p| p.mac)
            .unwrap_or_default();
        if frame[eth::SRC] != port_mac {
            return drop(Outcome::Spoofed);
        }
        let parsed = match parse::parse(frame) {
            Ok(p) => p,
            Err(ParseError::Malformed(_)) => return drop(Outcome::Malformed),
            Err(ParseError::Unsupported(_)) => return drop(Outcome::Unsupported),
        };
        match parsed.payload {
            Payload::Arp(arp) => self.arp(in_port, &arp),
            Payload::Ip(ip) => match self.ip(in_port, parsed.dst_mac, &ip, frame, off.gso, ms) {
                IpVerdict::Forward(fwd, translate) => {
                    let translated = match translate {
                        Nat::None => true,
                        Nat::Packet(rw) => nat::apply(frame, &rw, off.partial_csum),
                        Nat::IcmpError { outer, inner } => {
                            nat::apply_icmp_error(frame, &outer, &inner)
                        }
                    };
                    if !translated {
                        drop(Outcome::Malformed)
                    } else if rewrite(frame, &fwd) {
                        (Action::Forward(fwd.port), Outcome::SlowForward)
                    } else {
                        self.ttl_expired(in_port, frame)
                    }
                }
                IpVerdict::Answer(action, outcome) => (action, outcome),
                IpVerdict::Drop(o) => drop(o),
            },
        }
    }

    /// A datagram from the overlay socket (`in_port`, a [`crate::PortKind::Overlay`]
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
        inner[eth::DST].copy_from_slice(&self.cfg.gateway_mac);
        inner[eth::SRC].copy_from_slice(&mac);
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
    /// `offload` gives the frames' offloads (see
    /// [`Datapath::process_frame`]); frames beyond its length are plain.
    pub fn process_batch(
        &mut self,
        in_port: PortId,
        frames: &mut [&mut [u8]],
        offload: &[Offload],
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        for (i, chunk) in frames.chunks_mut(Self::BATCH).enumerate() {
            let from = (i * Self::BATCH).min(offload.len());
            let to = (from + Self::BATCH).min(offload.len());
            self.batch(in_port, chunk, &offload[from..to], now, actions);
        }
    }

    fn batch(
        &mut self,
        in_port: PortId,
        frames: &mut [&mut [u8]],
        offload: &[Offload],
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
            let seg = offload.get(i).copied().unwrap_or_default();
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
        off: Offload,
    ) -> Option<PortId> {
        let s = self.cache.slot(idx);
        if s.epoch != self.epoch as u32 || (s.mtu != 0 && oversize(frame, s.mtu, off.gso)) {
            return None;
        }
        let fwd = s.forward(self.cfg.gateway_mac, port_mac);
        let translated = s.nat;
        // The connection: refreshed (and found live) at most once a second.
        let now = ms as u32;
        if now.wrapping_sub(s.refreshed) >= flow_cache::REFRESH_MS {
            if !self.ct.touch(self.cache.ct(idx), ms) {
                return None;
            }
            self.cache.refreshed(idx, now);
        }
        // a translated connection's packet: translated, its TTL with it
        // (service_proxy.rs)
        if translated {
            if !self
                .cache
                .nat(idx)
                .apply(frame, off.partial_csum, fwd.routed)
            {
                return None;
            }
            rewrite::macs(frame, &fwd);
            return Some(fwd.port);
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
}
