//! How a datapath is set up: the gateway's addresses, table sizes and
//! shares, a pod's slow-path budget, timeouts, the overlay's VNI and MTU,
//! local ports' MTU, and what happens to established connections when
//! policy changes.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

pub use crate::conntrack::Timeouts;
use crate::overlay;
use crate::parse::Mac;

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
    /// The most connections one pod may hold (those its own packets
    /// opened); 0: no limit but the table's.
    pub conntrack_per_pod_max: usize,
    /// For this long after the datapath starts, a TCP segment of an unknown
    /// connection other than SYN picks it up (unreplied until the other side
    /// answers), so that connections open across a restart go on; after it,
    /// such a segment opens nothing. 0: never.
    pub conntrack_pickup_ms: u64,
    /// The slow-path frames a pod's port may cost each second: frames the
    /// flow cache did not answer, except those of connections already
    /// tracked (a server's answers to new connections cost it nothing).
    /// Beyond it the worker stops reading the port for a while (see
    /// `io/budget.rs`); 0: no limit.
    pub slow_path_per_pod: u32,
    /// The longest the event loop busy polls before it sleeps, in
    /// microseconds (see `io/event_loop.rs`); 0: it never spins.
    pub busy_poll_us: u32,
    pub flow_cache_max: usize,
    /// The flow cache's hash key. `None` (always, outside tests): drawn from
    /// the OS's randomness, so that pods cannot craft flows that collide.
    /// Tests that compare two datapaths give both the same key.
    pub flow_cache_key: Option<u64>,
    pub frag_max: usize,
    pub frag_ttl_ms: u64,
    pub timeouts: Timeouts,
    /// The cluster's pod address ranges: a destination in them that is on
    /// no known node is dropped (counted), not sent out of the node port.
    pub cluster_cidrs: Vec<IpNet>,
    /// The cluster IP ranges kube-proxy translates on the node (empty: the
    /// switch knows of none). A pod's connection to one leaves by the node
    /// port unjudged, and its translation may come back by the node port
    /// with the pod's own source; policy judges the translated connection
    /// (see `datapath/kube_proxy.rs`).
    pub service_cidrs: Vec<IpNet>,
    /// The source a pod's connection to itself through a Service gets
    /// (hairpin: Linux drops a packet from its own address), per family.
    pub service_loopback_v4: Ipv4Addr,
    pub service_loopback_v6: Ipv6Addr,
    /// The overlay's VXLAN network identifier.
    pub vni: u32,
    /// The largest inner IP packet the overlay carries unsegmented.
    pub overlay_mtu: u16,
    /// The largest IP packet a local port (a pod's, the node's) takes, for
    /// ports not told their own ([`crate::Datapath::set_mtu`]).
    pub port_mtu: u16,
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
            conntrack_per_pod_max: 229_376 / 8,
            conntrack_pickup_ms: 60_000,
            slow_path_per_pod: 10_000,
            busy_poll_us: 200,
            flow_cache_max: 65_536,
            flow_cache_key: None,
            frag_max: 4096,
            frag_ttl_ms: 2_000,
            timeouts: Timeouts::default(),
            cluster_cidrs: Vec::new(),
            service_cidrs: Vec::new(),
            // link-local, beside the gateway; and a unique local address
            service_loopback_v4: Ipv4Addr::new(169, 254, 1, 253),
            service_loopback_v6: Ipv6Addr::new(0xfd00, 0x7673, 0x7700, 0, 0, 0, 0, 0xfd),
            vni: overlay::DEFAULT_VNI,
            overlay_mtu: 1450,
            port_mtu: 1500,
        }
    }
}
