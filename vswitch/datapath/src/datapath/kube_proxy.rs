//! kube-proxy on the node: the way back for translated connections.
//!
//! Where kube-proxy is the service proxy, a pod's packet to a cluster IP
//! leaves by the node port, the node's kernel DNATs it to an endpoint, and
//! when the endpoint is a pod (of this node or another) the translated
//! packet comes back by the node port with the client pod's own source. The
//! anti-spoofing rule (the node may not speak as a local pod) would drop it.
//!
//! - The switch learns which connections may come back that way: a pod's
//!   new connection to the service ranges (`Config::service_cidrs`) that
//!   leaves by the node port is recorded here by its client end (protocol,
//!   address, port: DNAT changes the destination only), as long as its
//!   conntrack entry lives. From the node port, a packet with a local pod's
//!   source passes the anti-spoofing check only if its client end is
//!   recorded: only there, and only for connections that went that way.
//! - Policy judges the translated connection, with the client's identity,
//!   as if the client had connected to the endpoint. The first leg (pod to
//!   cluster IP) is not judged: the switch cannot know the endpoint yet.
//! - The translated connection's entry is marked `via node` and charged to
//!   the node port (the client's share holds the first leg; the two would
//!   evict each other); the endpoint's replies (and ICMP errors about it)
//!   leave by the node port, so that the kernel undoes the translation. The
//!   first leg is marked `to service`: policy re-checks neither direction
//!   of it after a change (its translation is re-checked).
//! - One client end may have several connections at once (one UDP socket
//!   asking two Services): up to [`PER_CLIENT_END`] are kept, the oldest
//!   dropped beyond.
//! - Later fragments from the node with a pod's source carry no ports:
//!   they pass the anti-spoofing check and follow their first fragment,
//!   which passed it as the translation of a recorded connection.
//! - Bounded: entries are dropped with their connection; the map is purged
//!   of dead ones when it holds twice the conntrack table's size.
//!
//! Limit: an endpoint that is not a pod behind a switch (a host-network
//! pod, the API server) is reached by the kernel directly, and the switch
//! never sees the translated connection: policy does not judge it.

use std::net::IpAddr;

use super::Datapath;
use crate::conntrack::{Conntrack, CtRef};
use crate::keyed_hash;
use crate::parse::{FlowTuple, IpPacket};
use crate::ports::PortId;

impl Datapath {
    /// Whether a pod's packet to `dst`, leaving by `out`, is for kube-proxy
    /// to translate: out of the node port, to a service range.
    pub(super) fn to_service(&self, out: PortId, dst: IpAddr) -> bool {
        self.node_port == Some(out) && self.cfg.service_cidrs.iter().any(|c| c.contains(&dst))
    }

    /// Whether a packet from the node with a local pod's source is the
    /// translation of that pod's live connection to a service (or a later
    /// fragment, which must follow a first fragment that was).
    pub(super) fn came_back(&self, ip: &IpPacket, ms: u64) -> bool {
        !self.cfg.service_cidrs.is_empty()
            && (ip.frag.is_some_and(|f| !f.first) || self.legs.came_back(&ip.tuple(), &self.ct, ms))
    }
}

/// A client's end of a connection: protocol, address, port (or echo id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ClientEnd {
    proto: u8,
    addr: IpAddr,
    port: u16,
}

impl ClientEnd {
    fn of(t: &FlowTuple) -> ClientEnd {
        ClientEnd {
            proto: t.proto,
            addr: t.src,
            port: t.sport,
        }
    }
}

/// The connections kept per client end.
pub(super) const PER_CLIENT_END: usize = 4;

/// Pods' connections that left for kube-proxy's service ranges.
pub(super) struct ServiceLegs {
    map: keyed_hash::Map<ClientEnd, Vec<CtRef>>,
}

impl ServiceLegs {
    pub(super) fn new() -> ServiceLegs {
        ServiceLegs {
            map: keyed_hash::Map::with_hasher(keyed_hash::state()),
        }
    }

    /// Records a pod's new connection to a service range (`t` from the
    /// pod), tracked as `r`.
    pub(super) fn record(&mut self, t: &FlowTuple, r: CtRef, ct: &Conntrack, ms: u64) {
        if self.map.len() >= 2 * ct.capacity() {
            self.map.retain(|_, refs| {
                refs.retain(|r| ct.live_at(*r, ms));
                !refs.is_empty()
            });
        }
        let refs = self.map.entry(ClientEnd::of(t)).or_default();
        refs.retain(|r| ct.live_at(*r, ms));
        if refs.len() == PER_CLIENT_END {
            refs.remove(0);
        }
        refs.push(r);
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether a packet from the node with a local pod's source (`t`) is
    /// the translation of a live connection that pod opened to a service.
    pub(super) fn came_back(&self, t: &FlowTuple, ct: &Conntrack, ms: u64) -> bool {
        self.map
            .get(&ClientEnd::of(t))
            .is_some_and(|refs| refs.iter().any(|r| ct.live_at(*r, ms)))
    }
}
