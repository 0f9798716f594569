//! Where a packet goes: the output port, and whether it is routed (MACs
//! rewritten to the gateway's, TTL decremented) or delivered at L2.

use std::net::IpAddr;

use super::Datapath;
use crate::counters::Outcome;
use crate::flow_cache::Forward;
use crate::parse::Mac;
use crate::ports::{PortId, PortKind};

/// The result of routing a packet: where it goes and how it is rewritten.
type Route = Result<Forward, Outcome>;

impl Datapath {
    /// The port a local pod's packet to `dst` leaves by (a local pod,
    /// another node, else the node port), whether or not it would be
    /// allowed.
    pub(super) fn way_to(&self, dst: IpAddr) -> Option<PortId> {
        self.by_ip
            .get(&dst)
            .copied()
            .or_else(|| self.remote.lookup(dst))
            .or(self.node_port)
    }

    /// Out of `port`, routed (from the gateway's MAC) or not.
    fn out_of(&self, port: PortId, routed: bool) -> Route {
        let out = self.ports[port as usize].as_ref().ok_or(Outcome::NoRoute)?;
        let mtu = match out.kind {
            PortKind::Remote { .. } => self.cfg.overlay_mtu,
            PortKind::Pod { .. } | PortKind::Node { .. } => out.mtu,
            PortKind::Overlay => 0,
        };
        Ok(Forward {
            port,
            routed,
            src_mac: self.cfg.gateway_mac,
            dst_mac: out.mac,
            mtu,
        })
    }

    /// Routed out of the node port (replies of connections kube-proxy
    /// translated, so that the node undoes the translation).
    pub(super) fn to_node(&self) -> Route {
        self.out_of(self.node_port.ok_or(Outcome::NoRoute)?, true)
    }

    /// Routed out of `port`, whichever port the packet came in on (a pod's
    /// connection to itself through a Service goes back where it came from).
    pub(super) fn to_port(&self, port: PortId) -> Route {
        self.out_of(port, true)
    }

    /// Routed to a local pod's address.
    pub(super) fn to_pod(&self, addr: IpAddr) -> Route {
        self.out_of(*self.by_ip.get(&addr).ok_or(Outcome::NoRoute)?, true)
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
    pub(super) fn route(&self, in_port: PortId, dst_mac: Mac, dst: IpAddr) -> Route {
        let fwd = |port: PortId, routed: bool| -> Route {
            if port == in_port {
                return Err(Outcome::NoRoute); // no hairpin
            }
            self.out_of(port, routed)
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
}
