//! The other nodes: one switch port each, through the overlay.
//!
//! The source sends every Node (name, InternalIP addresses, pod CIDRs).
//! This node binds the overlay's UDP socket on its own overlay address at
//! start; every other node with an address of the same family and at least
//! one pod CIDR becomes a [`PortKind::Remote`] port whose frames go out as
//! VXLAN datagrams to that address ([`TunnelPort`]). A node that appears,
//! changes (address, CIDRs) or leaves is attached, re-attached or detached
//! live; traffic to a node that left then finds no port (dropped, counted as
//! `no_node` for addresses in `--cluster-cidr`).
//!
//! The node's own routing learns the other nodes' pod CIDRs too: a route to
//! each through the node TAP, from this node's overlay address, so that the
//! node itself (and what kube-proxy sends on from it) reaches pods on other
//! nodes through the overlay; their replies come back the same way.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use policy::Node;

use vswitch_datapath::io::udp::{OverlaySocket, TunnelPort};
use vswitch_datapath::overlay;
use vswitch_datapath::{PortId, PortKind};

use super::switch::{Command, SwitchHandle};

/// How this node takes part in the overlay (from the command line).
#[derive(Debug, Clone)]
pub struct OverlayOptions {
    /// This node's name in the Node objects (its own entry is skipped).
    pub node_name: String,
    /// This node's address on the network between nodes.
    pub addr: IpAddr,
    /// The UDP port every node listens on (4789, VXLAN's).
    pub port: u16,
    pub vni: u32,
}

/// The overlay's ports, kept in step with the cluster's nodes.
pub struct Overlay {
    pub opts: OverlayOptions,
    /// The largest inner IP packet (the pods' MTU).
    mtu: u32,
    /// Other nodes attached: name -> (port, the Node as attached).
    remote: BTreeMap<String, (PortId, Node)>,
    /// The overlay socket's port.
    socket: PortId,
    /// The node TAP, through which the node routes to other nodes' pods.
    node_tap: Option<String>,
}

/// A node's attachable form: its overlay address (the first of the
/// overlay's family) and pod CIDRs; `None` if it has either missing.
fn reachable(n: &Node, v6: bool) -> Option<IpAddr> {
    if n.pod_cidrs.is_empty() {
        return None;
    }
    n.addresses.iter().copied().find(|a| a.is_ipv6() == v6)
}

/// Why the overlay could not start.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("overlay: cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Overlay {
    /// Binds the overlay socket and attaches it as port `id`.
    pub fn start(
        opts: OverlayOptions,
        mtu: u32,
        id: PortId,
        node_tap: Option<String>,
        switch: &SwitchHandle,
    ) -> Result<Overlay, OverlayError> {
        let sock =
            OverlaySocket::bind(opts.addr, opts.port).map_err(|source| OverlayError::Bind {
                addr: SocketAddr::new(opts.addr, opts.port),
                source,
            })?;
        tracing::info!(
            "overlay: VXLAN VNI {} on {}, pod MTU {mtu}",
            opts.vni,
            SocketAddr::new(opts.addr, opts.port)
        );
        switch.send(Command::Attach {
            id,
            name: "overlay".into(),
            mac: [0x02, 0x76, 0x73, 0x77, 0x00, 0x03],
            kind: PortKind::Overlay,
            port: Box::new(sock),
        });
        Ok(Overlay {
            opts,
            mtu,
            remote: BTreeMap::new(),
            socket: id,
            node_tap,
        })
    }

    /// Whether `id` is one of the overlay's ports.
    pub fn uses(&self, id: PortId) -> bool {
        id == self.socket || self.remote.values().any(|(p, _)| *p == id)
    }

    /// Brings the remote ports in line with `nodes`; new ports take ids that
    /// neither the `pods` nor the overlay use. Returns the names of the nodes
    /// attached now.
    pub fn sync(&mut self, nodes: &[Node], switch: &SwitchHandle, pods: &[PortId]) -> Vec<String> {
        let v6 = self.opts.addr.is_ipv6();
        let mut want: BTreeMap<&str, &Node> = BTreeMap::new();
        let mut claimed: Vec<(IpNet, &str)> = Vec::new();
        for n in nodes {
            if n.name == self.opts.node_name || reachable(n, v6).is_none() {
                continue;
            }
            let clash = n.pod_cidrs.iter().find_map(|c| {
                claimed
                    .iter()
                    .find(|(d, _)| d.contains(c) || c.contains(d))
                    .map(|(d, o)| (c, d, *o))
            });
            if let Some((c, d, o)) = clash {
                tracing::warn!(
                    "overlay: Node {}: spec.podCIDRs: {c} overlaps {d} of Node {o}; node left out",
                    n.name
                );
                continue;
            }
            claimed.extend(n.pod_cidrs.iter().map(|c| (*c, n.name.as_str())));
            want.insert(&n.name, n);
        }
        let gone: Vec<String> = self
            .remote
            .iter()
            .filter(|(name, (_, n))| want.get(name.as_str()) != Some(&n))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let (id, n) = self.remote.remove(&name).expect("listed");
            switch.detach(id);
            if let Some(tap) = &self.node_tap
                && let Err(e) = super::netlink::del_routes(tap, &n.pod_cidrs)
            {
                tracing::warn!("overlay: routes to node {name}'s pods: {e}");
            }
            tracing::info!("overlay: node {name} detached (port {id})");
        }
        for (name, n) in want {
            if self.remote.contains_key(name) {
                continue;
            }
            let addr = reachable(n, v6).expect("filtered");
            let Some(id) = free_port(pods, Some(self)) else {
                tracing::error!("overlay: node {name}: every switch port is in use");
                continue;
            };
            let peer = SocketAddr::new(addr, self.opts.port);
            let tunnel =
                match TunnelPort::connect(self.opts.addr, peer, self.opts.vni, self.mtu as usize) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!("overlay: node {name} at {peer}: {e}");
                        continue;
                    }
                };
            switch.send(Command::Attach {
                id,
                name: format!("node/{name}"),
                mac: overlay::node_mac(addr),
                kind: PortKind::Remote {
                    addr,
                    addrs: n.addresses.clone(),
                    cidrs: n.pod_cidrs.clone(),
                },
                port: Box::new(tunnel),
            });
            if let Some(tap) = &self.node_tap
                && let Err(e) = super::netlink::add_routes_from(tap, &n.pod_cidrs, self.opts.addr)
            {
                tracing::warn!("overlay: routes to node {name}'s pods via {tap}: {e}");
            }
            tracing::info!(
                "overlay: node {name} at {peer}, pods {:?} (port {id})",
                n.pod_cidrs
            );
            self.remote.insert(name.to_string(), (id, n.clone()));
        }
        self.remote.keys().cloned().collect()
    }
}

/// The first port id (from 1) that none of the `pods` and no port of the
/// `overlay` uses.
pub fn free_port(pods: &[PortId], overlay: Option<&Overlay>) -> Option<PortId> {
    (1..=PortId::MAX).find(|p| !pods.contains(p) && !overlay.is_some_and(|o| o.uses(*p)))
}
