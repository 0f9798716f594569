//! The IP packet path between parsing and output: neighbour discovery,
//! anti-spoofing, readiness, routing, fragments, connection tracking and
//! NetworkPolicy, and the flow-cache entry for what is allowed.
//!
//! Policy exempts only the node's own connections to its pods (and their
//! replies); a pod's traffic to its node is egress like any other. An ICMP
//! error passes as part of the connection it quotes, and only from the way
//! to the quoted peer (else `forged_icmp`); Time Exceeded and "too big" are
//! answered only for packets policy lets through.

use std::net::IpAddr;

use policy::{Flow, Protocol};

use super::Datapath;
use crate::Action;
use crate::config::EstablishedPolicy;
use crate::conntrack::{self, CtError, CtRef};
use crate::counters::Outcome;
use crate::flow_cache::{CacheEntry, Forward};
use crate::frag::FragKey;
use crate::nat::{Compiled, Rewrite};
use crate::parse::{self, IpPacket, L4, Mac};
use crate::ports::{PortId, PortKind};

use super::rewrite::{fragmentable, oversize};
use super::service_proxy::{Front, Translation};

/// A packet's translation (Services, see service_proxy.rs).
#[derive(Debug, Clone, Copy)]
pub(super) enum Nat {
    None,
    Packet(Rewrite),
    /// An ICMP error about a translated packet: its own addresses, and the
    /// packet it quotes.
    IcmpError {
        outer: Rewrite,
        inner: Rewrite,
    },
}

/// What the IP path decided for a packet.
#[derive(Debug)]
pub(super) enum IpVerdict {
    /// Forward it, rewritten as these say (the output, the translation).
    Forward(Forward, Nat),
    /// The switch answers instead (a neighbour advertisement, an ICMP
    /// error), or drops the packet when it cannot build the answer: this
    /// action, counted as this outcome.
    Answer(Action, Outcome),
    /// Drop it, counted as this outcome.
    Drop(Outcome),
}

impl From<(Action, Outcome)> for IpVerdict {
    fn from((action, outcome): (Action, Outcome)) -> Self {
        IpVerdict::Answer(action, outcome)
    }
}

impl Datapath {
    pub(super) fn is_node_address(&self, ip: IpAddr) -> bool {
        self.node_port
            .and_then(|p| self.ports[p as usize].as_ref())
            .is_some_and(|p| p.owns(ip))
    }

    /// The IP packet path: forward, answer or drop.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ip(
        &mut self,
        in_port: PortId,
        dst_mac: Mac,
        ip: &IpPacket,
        frame: &[u8],
        gso: u16,
        ms: u64,
    ) -> IpVerdict {
        let port = self.ports[in_port as usize].as_ref().expect("port");
        let from_node = matches!(port.kind, PortKind::Node { .. });
        let from_remote = matches!(port.kind, PortKind::Remote { .. });
        let from_pod = matches!(port.kind, PortKind::Pod { .. });

        // Neighbour discovery is answered here, before anything is routed.
        if let L4::Ndp { ty } = ip.l4 {
            if from_remote {
                return IpVerdict::Drop(Outcome::Unsupported); // not across the overlay
            }
            return match self.ndp(in_port, ty, ip, frame) {
                Ok(answer) => answer.into(),
                Err(o) => IpVerdict::Drop(o),
            };
        }
        // Anti-spoofing: a pod sends from its own addresses only, another
        // node from its pods' and its own; the node may not impersonate a
        // local pod, except to bring back what kube-proxy translated of the
        // pod's own connection to a service (`client`: that pod's port).
        let client = if from_node {
            self.by_ip.get(&ip.src).copied()
        } else {
            None
        };
        let legit = if from_node {
            client.is_none() || self.came_back(ip, ms)
        } else {
            port.owns(ip.src)
        };
        if !legit {
            return IpVerdict::Drop(if from_remote {
                Outcome::Forged
            } else {
                Outcome::Spoofed
            });
        }
        if let PortKind::Pod {
            ready_generation, ..
        } = port.kind
            && self.policy.generation() < ready_generation
        {
            return IpVerdict::Drop(Outcome::NotReady);
        }

        // A pod's connection to a Service is translated to an endpoint
        // here (switch mode, service_proxy.rs): from here on, `ip` is the
        // packet as translated (`arrived`: as it came).
        let arrived = ip;
        let mut front: Option<Translation> = None;
        let translated;
        let ip = if from_pod && (!self.services.is_empty() || self.nat.has_retired()) {
            match self.front(ip, ms) {
                Front::Not => ip,
                Front::To(t) => {
                    translated = t.packet;
                    front = Some(t);
                    &translated
                }
                Front::Refuse => return self.refuse(in_port, frame).into(),
                Front::Untracked => return IpVerdict::Drop(Outcome::Untracked),
            }
        } else {
            ip
        };
        let mut nat = match &front {
            Some(t) => Nat::Packet(t.rewrite),
            None => Nat::None,
        };

        let route = match &front {
            // back to the pod itself (its connection to its own Service)
            Some(t) if t.hairpin => self.to_port(in_port),
            Some(_) => self.route(in_port, self.cfg.gateway_mac, ip.dst),
            None => self.route(in_port, dst_mac, ip.dst),
        };
        let mut fwd = match route {
            Ok(fwd) => fwd,
            Err(o) => return IpVerdict::Drop(o),
        };
        // A pod's connection to a cluster IP that kube-proxy translates on
        // the node: judged when it comes back translated (kube_proxy.rs).
        let to_service = from_pod && self.to_service(fwd.port, ip.dst);
        // The endpoint's side of a connection kube-proxy translated goes
        // back by the node, which undoes the translation.
        let mut back_by_node = false;
        // Time Exceeded tells the sender that the destination is there:
        // answered only for what policy would let through.
        if fwd.routed && ip.ttl <= 1 {
            let node_local = from_node && self.is_node_address(ip.src);
            if !self.would_pass(ip, node_local, ms) {
                return IpVerdict::Drop(Outcome::PolicyDeny);
            }
            return self.ttl_expired(in_port, frame).into();
        }
        if let PortKind::Pod {
            ready_generation, ..
        } = self.ports[fwd.port as usize].as_ref().expect("port").kind
            && self.policy.generation() < ready_generation
        {
            return IpVerdict::Drop(Outcome::NotReady);
        }

        // Later fragments follow their first fragment (and its
        // translation).
        if let Some(f) = ip.frag.filter(|f| !f.first) {
            let key = FragKey::of(arrived, f);
            return match self.frags.follow(&key, ms) {
                Some((fwd, rw)) if rw.is_empty() => IpVerdict::Forward(fwd, Nat::None),
                Some((fwd, rw)) => IpVerdict::Forward(fwd, Nat::Packet(rw)),
                None => IpVerdict::Drop(Outcome::FragmentUnknown),
            };
        }

        let tuple = ip.tuple();
        // The node's own traffic to its pods is exempt from policy (kubelet
        // probes), and so are the replies of its connections; a pod's
        // traffic to its node is egress like any other (the node's
        // addresses are ipBlock peers).
        let node_local = from_node && self.is_node_address(ip.src);
        let ct = if let L4::IcmpError { inner } = ip.l4 {
            // Related to a tracked connection, going back to its sender, and
            // from where an error about it can come: the way to the quoted
            // peer (the peer itself, a router beyond the node or overlay
            // port), or the switch. Anyone else's is forged: an error cannot
            // start a connection, and would make the sender's socket fail,
            // lower its path MTU, or carry data to it past policy.
            match self.ct.lookup(&inner, ms) {
                Some((r, _)) if inner.src == ip.dst => {
                    if !self.may_report(in_port, ip.src, inner.dst) {
                        return IpVerdict::Drop(Outcome::ForgedIcmp);
                    }
                    // A cut connection relates nothing either.
                    if self.ct.is_cut(r) {
                        return IpVerdict::Drop(Outcome::PolicyDeny);
                    }
                    back_by_node = !from_node && self.ct.via_node(r);
                    // about a translated packet: translated back too
                    if let Some(back) = self.translated_back(r) {
                        let outer = Rewrite {
                            // from the endpoint itself: from the Service
                            src: back.src.filter(|_| ip.src == inner.dst),
                            dst: back.dst,
                        };
                        let inner = Rewrite {
                            src: back.dst,
                            dst: back.src,
                        };
                        nat = Nat::IcmpError { outer, inner };
                        if let Some((client, _)) = back.dst {
                            fwd = match self.to_pod(client) {
                                Ok(f) => f,
                                Err(o) => return IpVerdict::Drop(o),
                            };
                        }
                    }
                    r
                }
                _ if node_local => CtRef::default(),
                _ => return IpVerdict::Drop(Outcome::Untracked),
            }
        } else {
            // An echo request belongs to its originator's direction and a
            // reply to the other: a request in the reply direction is a new
            // echo (policy decides), a reply in the originator's is untracked.
            let mut found = self.ct.lookup(&tuple, ms).filter(|(_, dir)| match ip.l4 {
                L4::Echo { request, .. } => request == (*dir == conntrack::Dir::Orig),
                _ => true,
            });
            // A connection cut by policy stays cut both ways: its packets
            // are dropped (and keep it), unless one is its originator's new
            // SYN that the policy in force allows.
            if let Some((r, dir)) = found
                && self.ct.is_cut(r)
                && !(self.ct.reopens(r, dir, &ip.l4)
                    && (node_local || to_service || self.allowed(&tuple)))
            {
                self.ct.update(r, dir, &ip.l4, ms);
                return IpVerdict::Drop(Outcome::PolicyDeny);
            }
            // A new SYN on a connection that has ended is a new connection
            // (whatever kept the old one across policy changes): the old
            // entry goes, and policy judges the SYN.
            let mut reopened = false;
            if let Some((r, dir)) = found
                && self.ct.reopens(r, dir, &ip.l4)
            {
                self.ct.remove(r);
                (found, reopened) = (None, true);
            }
            match found {
                Some((r, dir)) => {
                    // exempt: a connection the node's own address started
                    let by_node = self.is_node_address(match dir {
                        conntrack::Dir::Orig => ip.src,
                        conntrack::Dir::Reply => ip.dst,
                    });
                    // a connection to a Service range is judged as its
                    // translation, both ways
                    let exempt = by_node || to_service || self.ct.to_service(r);
                    if let Err(o) = self.recheck(r, exempt, ms) {
                        return IpVerdict::Drop(o);
                    }
                    self.ct.update(r, dir, &ip.l4, ms);
                    back_by_node =
                        dir == conntrack::Dir::Reply && !from_node && self.ct.via_node(r);
                    // a translated connection's reply: from the Service
                    if dir == conntrack::Dir::Reply
                        && let Some(back) = self.translated_back(r)
                    {
                        nat = Nat::Packet(back);
                        if let Some((client, _)) = back.dst {
                            fwd = match self.to_pod(client) {
                                Ok(f) => f,
                                Err(o) => return IpVerdict::Drop(o),
                            };
                        }
                    }
                    r
                }
                None => {
                    if !conntrack::may_start(&ip.l4) {
                        return IpVerdict::Drop(Outcome::Untracked);
                    }
                    // The node's exemption is for connections it starts,
                    // not for a segment picked up mid-stream (which could
                    // revive a connection that policy cut).
                    let exempt = (node_local && !conntrack::is_pickup(&ip.l4)) || to_service;
                    if !exempt && !self.allowed(&tuple) {
                        if reopened {
                            // The old connection's flow-cache entries (of
                            // either direction) would carry its packets
                            // until their next refresh finds it gone: a new
                            // epoch makes them misses now. Once per
                            // ended connection at most: its entry is gone.
                            self.epoch += 1;
                        }
                        return IpVerdict::Drop(Outcome::PolicyDeny);
                    }
                    // No pickup mid-stream once the grace period is over.
                    if conntrack::is_pickup(&ip.l4) && ms >= self.cfg.conntrack_pickup_ms {
                        return IpVerdict::Drop(Outcome::Untracked);
                    }
                    // (kube-proxy's translation is charged to the node port,
                    // not to the pod, whose share holds its first leg: the
                    // two would evict each other)
                    let (generation, share) = (self.policy.generation(), self.ct_share(in_port));
                    match self
                        .ct
                        .create(&tuple, &ip.l4, ms, generation, in_port, share)
                    {
                        Ok(r) => {
                            if let Some(t) = &front {
                                self.ct.mark_translated(r);
                                self.nat.record(arrived.tuple(), r, t, &self.ct);
                            }
                            if to_service {
                                self.ct.mark_to_service(r);
                                self.legs.record(&tuple, r, &self.ct, ms);
                            }
                            if client.is_some() {
                                self.ct.mark_via_node(r);
                            }
                            r
                        }
                        Err(CtError::Full) => return IpVerdict::Drop(Outcome::TableFull),
                        Err(CtError::ShareFull) => return IpVerdict::Drop(Outcome::ShareFull),
                    }
                }
            }
        };

        if back_by_node {
            fwd = match self.to_node() {
                Ok(f) => f,
                Err(o) => return IpVerdict::Drop(o),
            };
        }

        // Allowed, but too big for its output port: answered as a router
        // would; IPv4 without DF is fragmented by the overlay, and dropped
        // for a local port (the switch does not fragment).
        if fwd.mtu != 0 && oversize(frame, fwd.mtu, gso) {
            if !fragmentable(frame, gso) {
                return self.too_big_reply(in_port, frame, fwd.mtu).into();
            }
            let out = self.ports[fwd.port as usize].as_ref().expect("port");
            if !matches!(out.kind, PortKind::Remote { .. }) {
                return IpVerdict::Drop(Outcome::TooBig);
            }
        }

        let rewrite = match nat {
            Nat::Packet(rw) => Some(rw),
            Nat::None => None,
            Nat::IcmpError { .. } => return IpVerdict::Forward(fwd, nat),
        };
        if let Some(f) = ip.frag {
            let key = FragKey::of(arrived, f);
            self.frags
                .remember(key, in_port, fwd, rewrite.unwrap_or_default(), ms);
        } else if self.ct.cacheable(ct)
            && let Some(key) = parse::cache_key(frame, in_port)
            // (a translation the cache cannot replay leaves it uncached)
            && let Some(nat) = match rewrite {
                None => Some(None),
                Some(rw) => Compiled::of(frame, &rw).map(Some),
            }
        {
            self.cache.insert(
                key,
                CacheEntry {
                    fwd,
                    ct,
                    epoch: self.epoch,
                    nat,
                },
                ms as u32,
            );
        }
        IpVerdict::Forward(fwd, nat)
    }

    /// Whether `ip` would pass the connection and policy checks, without
    /// tracking it: part of a tracked connection, a later fragment of a
    /// first that passed, or a new flow policy allows (`node_local`: the
    /// node's own, exempt). An ICMP error is not (no error answers one).
    fn would_pass(&mut self, ip: &IpPacket, node_local: bool, ms: u64) -> bool {
        if let Some(f) = ip.frag.filter(|f| !f.first) {
            return self.frags.follow(&FragKey::of(ip, f), ms).is_some();
        }
        if matches!(ip.l4, L4::IcmpError { .. }) {
            return false;
        }
        let tuple = ip.tuple();
        node_local
            || self.ct.lookup(&tuple, ms).is_some()
            || (conntrack::may_start(&ip.l4) && self.allowed(&tuple))
    }

    /// Whether an ICMP error from `src`, received on `in_port`, may be
    /// about a packet sent to `peer`: it came in on the port that packet
    /// left by (from the peer, or from a router beyond the node or overlay
    /// port), or from the switch's own address.
    fn may_report(&self, in_port: PortId, src: IpAddr, peer: IpAddr) -> bool {
        src == IpAddr::V4(self.cfg.gateway_v4)
            || src == IpAddr::V6(self.cfg.gateway_v6)
            || self.way_to(peer) == Some(in_port)
    }

    /// NetworkPolicy for a new connection. A hairpin connection through a
    /// Service (from the service-loopback address) is judged with the
    /// pod's identity at both ends.
    fn allowed(&self, t: &parse::FlowTuple) -> bool {
        let dst_port = if conntrack::is_icmp(t.proto) {
            0
        } else {
            t.dport
        };
        let src = if self.is_service_loopback(t.src) {
            t.dst
        } else {
            t.src
        };
        self.policy
            .verdict(&Flow {
                src,
                dst: t.dst,
                protocol: Protocol::from_number(t.proto),
                dst_port,
            })
            .allowed()
    }

    /// The connections a port's packets may open: a pod's share; the node's
    /// and other nodes' ports are bounded by the table only.
    fn ct_share(&self, in_port: PortId) -> usize {
        let pod = self.ports[in_port as usize]
            .as_ref()
            .is_some_and(|p| matches!(p.kind, PortKind::Pod { .. }));
        match self.cfg.conntrack_per_pod_max {
            n if pod && n > 0 => n,
            _ => usize::MAX,
        }
    }

    /// Re-checks a tracked connection against a newer policy generation; a
    /// connection now denied is cut (a tombstone, see conntrack.rs).
    fn recheck(&mut self, r: CtRef, node_local: bool, ms: u64) -> Result<(), Outcome> {
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
            self.ct.cut(r, ms);
            Err(Outcome::PolicyDeny)
        }
    }
}
