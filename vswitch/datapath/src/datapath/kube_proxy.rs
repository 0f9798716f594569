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
//!   the client's port; the endpoint's replies (and ICMP errors about it)
//!   leave by the node port, so that the kernel undoes the translation.
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
    /// translation of that pod's live connection to a service.
    pub(super) fn came_back(&self, ip: &IpPacket) -> bool {
        !self.cfg.service_cidrs.is_empty() && self.legs.came_back(&ip.tuple(), &self.ct)
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

/// Pods' connections that left for kube-proxy's service ranges.
pub(super) struct ServiceLegs {
    map: keyed_hash::Map<ClientEnd, CtRef>,
}

impl ServiceLegs {
    pub(super) fn new() -> ServiceLegs {
        ServiceLegs {
            map: keyed_hash::Map::with_hasher(keyed_hash::state()),
        }
    }

    /// Records a pod's new connection to a service range (`t` from the
    /// pod), tracked as `r`.
    pub(super) fn record(&mut self, t: &FlowTuple, r: CtRef, ct: &Conntrack) {
        if self.map.len() >= 2 * ct.capacity() {
            self.map.retain(|_, r| ct.get(*r).is_some());
        }
        self.map.insert(ClientEnd::of(t), r);
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether a packet from the node with a local pod's source (`t`) is
    /// the translation of a live connection that pod opened to a service.
    pub(super) fn came_back(&self, t: &FlowTuple, ct: &Conntrack) -> bool {
        self.map
            .get(&ClientEnd::of(t))
            .is_some_and(|r| ct.get(*r).is_some())
    }
}
