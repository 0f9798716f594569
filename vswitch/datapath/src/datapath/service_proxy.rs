//! The switch as the service proxy (`--service-proxy switch`): a pod's new
//! connection to a Service's cluster IP and port is translated to one of
//! its endpoints here, and the endpoint's replies are translated back.
//!
//! - **The front** (`front`): a pod's packet to a frontend of the
//!   [`ServiceTable`]. A packet of a connection already translated finds
//!   it by its tuple as the client sent it (the `fronts` map), and goes to
//!   the same endpoint. A packet that may start a connection gets an
//!   endpoint: the client's affinity if the frontend has one and the
//!   endpoint is still usable, else one picked by a hash of the tuple
//!   (`services.rs`). No usable endpoint: the switch refuses at once, a TCP
//!   RST or an ICMP port unreachable from the cluster IP. Anything else to a
//!   frontend (a mid-stream segment of a connection the switch does not
//!   know) is `untracked`.
//! - **Policy and conntrack** see the translated packet only: conntrack
//!   tracks the connection between the client and the endpoint, and policy
//!   judges it as if the client had connected to the endpoint directly
//!   (the client's egress, the endpoint's ingress), on every node it
//!   crosses. The entry is marked `translated`; `backs` holds, per entry,
//!   how its replies are translated back.
//! - **Hairpin**: a pod that reaches itself through its Service would get
//!   a packet from its own address, which Linux drops. Its source becomes
//!   the service-loopback address (`Config::service_loopback_v4`/`_v6`) and
//!   the reply's destination becomes the pod again. Policy judges it with
//!   the pod's identity at both ends (`Datapath::allowed` reads the
//!   loopback source as the destination pod).
//! - **The way back**: a packet in a translated entry's reply direction
//!   gets the cluster IP and port as its source (and, for hairpin, the pod
//!   as its destination). An ICMP error about a translated packet is
//!   translated too (the quoted packet as the client sent it).
//! - **The flow cache** holds the translation with the forwarding
//!   decision, so a hit translates without the maps; a later fragment
//!   follows its first fragment's translation through the fragment table.
//! - **Changes** to endpoints apply to new connections at their next
//!   packet. An established connection keeps its endpoint while its entry
//!   lives, even if the endpoint left the Service (as kube-proxy's
//!   conntrack does): its pod may still answer it, and policy still judges
//!   it. So do the connections of a deleted Service: its cluster IP is
//!   kept as `retired` while translated connections may use it, so that
//!   their packets still find their translation.
//! - **Bounds**: `fronts` and `backs` hold one entry per translated
//!   connection; dead ones (their conntrack entry gone) are purged when the
//!   maps reach twice the conntrack table's size. The affinity table holds
//!   at most the conntrack table's size: expired ones are purged when it
//!   is full, and a client that finds it full of live ones gets no
//!   affinity (a hashed endpoint; counted).

use std::hash::BuildHasher;
use std::net::IpAddr;

use super::Datapath;
use crate::Action;
use crate::conntrack::{Conntrack, CtRef, Dir};
use crate::counters::Outcome;
use crate::keyed_hash;
use crate::nat::Rewrite;
use crate::parse::{FlowTuple, IpPacket, L4};
use crate::ports::PortId;
use crate::reply;
use crate::services::FrontendKey;

/// Retired cluster IPs kept before a scan prunes those no connection uses.
const RETIRED_MAX: usize = 4096;

/// What the front decided for a pod's packet.
pub(super) enum Front {
    /// Not to a frontend: the packet goes on as it is.
    Not,
    /// Translated: the packet as translated, and the frame's rewrite.
    To(Translation),
    /// A new connection to a frontend without a usable endpoint.
    Refuse,
    /// Not a start, and no known translation.
    Untracked,
}

/// A packet's translation at the front.
pub(super) struct Translation {
    /// The packet as it will be after the rewrite.
    pub packet: IpPacket,
    pub rewrite: Rewrite,
    /// How its replies are translated back.
    pub back: Rewrite,
    /// The client reaches itself.
    pub hairpin: bool,
    /// The frontend it went through.
    pub frontend: FrontendKey,
}

/// What [`Datapath::service_counters`] returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    pub translated: u64,
    pub refused: u64,
    pub affinity_full: u64,
    pub connections: usize,
}

/// One frontend's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrontendCounters {
    /// New connections translated to an endpoint.
    pub translated: u64,
    /// New connections refused for want of a usable endpoint.
    pub refused: u64,
}

/// A client's affinity to an endpoint, for one frontend.
#[derive(Clone, Copy)]
struct Affinity {
    endpoint: (IpAddr, u16),
    last: u64,
}

/// The service proxy's state: translated connections and affinities.
pub(super) struct ServiceNat {
    /// A translated connection by its tuple as the client sends it.
    fronts: keyed_hash::Map<FlowTuple, (CtRef, Rewrite)>,
    /// How a translated connection's replies are translated back.
    backs: keyed_hash::Map<CtRef, Rewrite>,
    affinity: keyed_hash::Map<(IpAddr, FrontendKey), Affinity>,
    /// Per frontend of the table installed (and no other: bounded by it).
    per_frontend: keyed_hash::Map<FrontendKey, FrontendCounters>,
    /// Cluster IPs no frontend has any more, that translated connections
    /// may still use (pruned with `fronts`, and at [`RETIRED_MAX`]).
    retired: keyed_hash::Map<IpAddr, ()>,
    hash: keyed_hash::State,
    /// New connections refused for want of an endpoint.
    pub refused: u64,
    /// New connections translated.
    pub translated: u64,
    /// Clients left without affinity: the table was full.
    pub affinity_full: u64,
}

impl ServiceNat {
    pub(super) fn new() -> ServiceNat {
        ServiceNat {
            fronts: keyed_hash::Map::with_hasher(keyed_hash::state()),
            backs: keyed_hash::Map::with_hasher(keyed_hash::state()),
            affinity: keyed_hash::Map::with_hasher(keyed_hash::state()),
            per_frontend: keyed_hash::Map::with_hasher(keyed_hash::state()),
            retired: keyed_hash::Map::with_hasher(keyed_hash::state()),
            hash: keyed_hash::state(),
            refused: 0,
            translated: 0,
            affinity_full: 0,
        }
    }

    /// Records a new translated connection `r` (`front`: its tuple as the
    /// client sends it).
    pub(super) fn record(&mut self, front: FlowTuple, r: CtRef, t: &Translation, ct: &Conntrack) {
        if self.fronts.len() >= 2 * ct.capacity() {
            self.fronts.retain(|_, (r, _)| ct.get(*r).is_some());
            self.backs.retain(|r, _| ct.get(*r).is_some());
            self.prune_retired();
        }
        self.fronts.insert(front, (r, t.rewrite));
        self.backs.insert(r, t.back);
        self.translated += 1;
        self.per_frontend.entry(t.frontend).or_default().translated += 1;
    }

    /// Keeps the counters of the frontends `keep` says are still there.
    pub(super) fn retain_frontends(&mut self, keep: impl Fn(&FrontendKey) -> bool) {
        self.per_frontend.retain(|k, _| keep(k));
    }

    /// Drops a removed frontend's counters.
    pub(super) fn forget_frontend(&mut self, k: &FrontendKey) {
        self.per_frontend.remove(k);
    }

    /// Keeps `ip`, no longer a cluster IP, for the translated connections
    /// that may still use it.
    pub(super) fn retire(&mut self, ip: IpAddr) {
        if self.fronts.is_empty() {
            return;
        }
        self.retired.insert(ip, ());
        if self.retired.len() > RETIRED_MAX {
            self.prune_retired();
        }
    }

    /// Keeps the retired IPs some remembered connection was sent to.
    fn prune_retired(&mut self) {
        if self.retired.is_empty() {
            return;
        }
        let mut used: keyed_hash::Map<IpAddr, ()> =
            keyed_hash::Map::with_hasher(keyed_hash::state());
        for t in self.fronts.keys() {
            if self.retired.contains_key(&t.dst) {
                used.insert(t.dst, ());
            }
        }
        self.retired = used;
    }

    /// Whether some cluster IP is retired.
    pub(super) fn has_retired(&self) -> bool {
        !self.retired.is_empty()
    }

    /// Whether `ip` is a retired cluster IP.
    pub(super) fn is_retired(&self, ip: IpAddr) -> bool {
        !self.retired.is_empty() && self.retired.contains_key(&ip)
    }

    /// How a translated connection's replies are translated back.
    pub(super) fn back(&self, r: CtRef) -> Option<Rewrite> {
        self.backs.get(&r).copied()
    }

    pub(super) fn len(&self) -> usize {
        self.fronts.len()
    }

    /// Remembers that `client` was sent to `endpoint` by `frontend`.
    fn remember(
        &mut self,
        client: IpAddr,
        frontend: FrontendKey,
        endpoint: (IpAddr, u16),
        ms: u64,
        timeout: u64,
        max: usize,
    ) {
        let key = (client, frontend);
        if !self.affinity.contains_key(&key) && self.affinity.len() >= max {
            self.affinity
                .retain(|_, a| ms.saturating_sub(a.last) < timeout);
            if self.affinity.len() >= max {
                self.affinity_full += 1;
                return;
            }
        }
        self.affinity.insert(key, Affinity { endpoint, last: ms });
    }
}

impl Datapath {
    /// The front: whether a pod's packet `ip` goes to a Service, and to
    /// which endpoint.
    pub(super) fn front(&mut self, ip: &IpPacket, ms: u64) -> Front {
        if !self.services.is_cluster_ip(ip.dst) && !self.nat.is_retired(ip.dst) {
            return Front::Not;
        }
        let (sport, dport) = match ip.l4 {
            L4::Tcp { sport, dport, .. }
            | L4::Udp { sport, dport }
            | L4::Sctp { sport, dport, .. } => (sport, dport),
            // a later fragment follows its first (the fragment table);
            // ICMP to a cluster IP is not translated
            _ => return Front::Not,
        };
        let tuple = ip.tuple();
        let frontend = FrontendKey {
            ip: ip.dst,
            proto: ip.proto,
            port: dport,
        };
        if let Some(&(r, rewrite)) = self.nat.fronts.get(&tuple)
            && self.ct.get(r).is_some()
            && !self.ct.reopens(r, Dir::Orig, &ip.l4)
        {
            let back = self.nat.back(r).unwrap_or_default();
            return Front::To(translation(ip, rewrite, back, frontend));
        }
        let Some(fe) = self.services.get(&frontend) else {
            return Front::Not; // a port no Service has: not ours
        };
        if !crate::conntrack::may_start(&ip.l4) {
            return Front::Untracked;
        }
        // the client's affinity, while its endpoint is usable
        let timeout = fe.affinity_ms;
        let kept = timeout.and_then(|t| {
            let a = self.nat.affinity.get(&(ip.src, frontend))?;
            (ms.saturating_sub(a.last) < t && fe.is_usable(a.endpoint.0, a.endpoint.1))
                .then_some(a.endpoint)
        });
        let endpoint = match kept {
            Some(e) => e,
            None => match fe.pick(self.nat.hash.hash_one(tuple)) {
                Some(e) => (e.ip, e.port),
                None => {
                    self.nat.refused += 1;
                    self.nat.per_frontend.entry(frontend).or_default().refused += 1;
                    return Front::Refuse;
                }
            },
        };
        if let Some(t) = timeout {
            let max = self.ct.capacity();
            self.nat.remember(ip.src, frontend, endpoint, ms, t, max);
        }
        let hairpin = endpoint.0 == ip.src;
        let loopback = self.service_loopback(ip.src.is_ipv6());
        let rewrite = Rewrite {
            src: hairpin.then_some((loopback, sport)),
            dst: Some(endpoint),
        };
        let back = Rewrite {
            src: Some((ip.dst, dport)),
            dst: hairpin.then_some((ip.src, sport)),
        };
        Front::To(translation(ip, rewrite, back, frontend))
    }

    /// How a translated connection's replies are translated back (`None`:
    /// not a translated connection).
    pub(super) fn translated_back(&self, r: CtRef) -> Option<Rewrite> {
        if !self.ct.translated(r) {
            return None;
        }
        self.nat.back(r)
    }

    /// The refusal of a new connection to a Service without endpoints, from
    /// the cluster IP: a TCP RST, else an ICMP port unreachable.
    pub(super) fn refuse(&self, in_port: PortId, frame: &[u8]) -> (Action, Outcome) {
        match reply::refusal(frame, self.cfg.gateway_mac) {
            Some(r) => (Action::Reply(in_port, r), Outcome::Refused),
            None => (Action::Drop(Outcome::Malformed), Outcome::Malformed),
        }
    }

    /// Service counters: connections translated, refused for want of an
    /// endpoint; clients left without affinity (the table full); translated
    /// connections remembered (dead ones until the next purge).
    pub fn service_counters(&self) -> ServiceCounters {
        ServiceCounters {
            translated: self.nat.translated,
            refused: self.nat.refused,
            affinity_full: self.nat.affinity_full,
            connections: self.nat.len(),
        }
    }

    /// A frontend's counters (zero for one never used).
    pub fn frontend_counters(&self, k: &FrontendKey) -> FrontendCounters {
        self.nat.per_frontend.get(k).copied().unwrap_or_default()
    }

    /// Live translated connections per frontend and endpoint.
    pub fn service_connections(
        &self,
    ) -> std::collections::HashMap<(FrontendKey, IpAddr, u16), u64> {
        let mut out = std::collections::HashMap::new();
        for (t, (r, rw)) in &self.nat.fronts {
            if self.ct.get(*r).is_none() {
                continue;
            }
            let Some((ip, port)) = rw.dst else { continue };
            let fe = FrontendKey {
                ip: t.dst,
                proto: t.proto,
                port: t.dport,
            };
            *out.entry((fe, ip, port)).or_default() += 1;
        }
        out
    }

    /// The service-loopback address of a family: the source of a pod's
    /// connection to itself through a Service.
    pub(super) fn service_loopback(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.cfg.service_loopback_v6)
        } else {
            IpAddr::V4(self.cfg.service_loopback_v4)
        }
    }

    pub(super) fn is_service_loopback(&self, ip: IpAddr) -> bool {
        ip == IpAddr::V4(self.cfg.service_loopback_v4)
            || ip == IpAddr::V6(self.cfg.service_loopback_v6)
    }
}

/// The packet as `rewrite` leaves it.
fn translation(
    ip: &IpPacket,
    rewrite: Rewrite,
    back: Rewrite,
    frontend: FrontendKey,
) -> Translation {
    let mut packet = *ip;
    if let Some((a, p)) = rewrite.src {
        packet.src = a;
        set_port(&mut packet.l4, Some(p), None);
    }
    if let Some((a, p)) = rewrite.dst {
        packet.dst = a;
        set_port(&mut packet.l4, None, Some(p));
    }
    Translation {
        packet,
        rewrite,
        back,
        hairpin: rewrite.src.is_some(),
        frontend,
    }
}

/// Sets a transport's ports.
pub(super) fn set_port(l4: &mut L4, src: Option<u16>, dst: Option<u16>) {
    if let L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } | L4::Sctp { sport, dport, .. } =
        l4
    {
        if let Some(p) = src {
            *sport = p;
        }
        if let Some(p) = dst {
            *dport = p;
        }
    }
}
