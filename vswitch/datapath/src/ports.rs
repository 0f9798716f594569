//! Ports: who is behind each port of the datapath (a pod, the node,
//! another node through the overlay, the overlay's socket), what the
//! datapath keeps per port, and what a port knows about a received frame.
//! The registry that indexes them (by MAC, by address, by underlay
//! address) is the datapath's, in `datapath/ports.rs`.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::counters::Counters;
use crate::parse::Mac;
use crate::wire;

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
    /// by [`crate::Datapath::process_overlay`] and handed on as a frame of the
    /// sending node's port.
    Overlay,
}

#[derive(Debug, Clone)]
pub struct PortState {
    pub name: String,
    pub mac: Mac,
    pub kind: PortKind,
    /// The largest IP packet the port takes (its device's MTU); what is
    /// bigger is answered with "too big" or dropped, never sent.
    pub mtu: u16,
    pub counters: Counters,
}

impl PortState {
    /// Whether `ip` is an address this port's host may send from.
    pub(crate) fn owns(&self, ip: IpAddr) -> bool {
        match &self.kind {
            PortKind::Pod { ips, .. } | PortKind::Node { ips } => ips.contains(&ip),
            PortKind::Remote { addrs, cidrs, .. } => {
                addrs.contains(&ip) || cidrs.iter().any(|c| c.contains(&ip))
            }
            PortKind::Overlay => false,
        }
    }
}
