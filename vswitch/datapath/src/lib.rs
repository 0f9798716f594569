//! The datapath: the code every pod packet goes through.
//!
//! Sans-I/O: [`Datapath::process`] takes a frame, the port it came in on and
//! the current time, and returns what to do ([`Action`]): forward it (after
//! rewriting it in place), send a reply the switch built, or drop it. It
//! never touches a file descriptor; [`io::worker`] moves frames between
//! ports and this core.
//!
//! Addressing: every port belongs to one pod and carries its MAC and IPs;
//! one more port belongs to the node. Pods see an ordinary Ethernet link with
//! a gateway (by default 169.254.1.1 and fe80::1 at [`Config::gateway_mac`]):
//! the switch answers ARP and neighbour solicitations itself (never floods),
//! forwards frames addressed to a pod's MAC at L2 and routes frames addressed
//! to the gateway by destination IP. Destinations in another node's pod
//! CIDRs go to that node's port, which is the [`overlay`] (VXLAN); other
//! destinations that are not local pods leave through the node port.
//! Traffic between the node's own addresses and local pods always passes
//! (kubelet probes); everything else between pods, and between pods and the
//! outside through the node, is subject to NetworkPolicy, statefully
//! ([`conntrack`]), with the [`flow_cache`] in front.
//!
//! # The map
//!
//! The core, sans-I/O (bytes and time in, decisions out):
//!
//! - [`wire`]: where every header field sits, protocol numbers and flags,
//!   the Internet checksum, the virtio-net header. Everything below reads
//!   frames through it.
//! - [`parse`]: a frame to its addresses, ports and flow (the slow path's
//!   parser), and the flow cache's key read at fixed offsets (the fast
//!   path's).
//! - [`config`]: how a datapath is set up ([`Config`]).
//! - [`ports`]: who is behind a port ([`PortKind`]) and what the datapath
//!   keeps per port ([`PortState`]).
//! - [`datapath`]: [`Datapath`], its packet path ([`Datapath::process`])
//!   and its control side (ports, policy, housekeeping); the IP path,
//!   routing, neighbour answers and the output rewrite are its submodules.
//! - [`flow_cache`], [`conntrack`], [`frag`]: the exact-match cache, the
//!   connection tracker and the fragment table the packet path consults.
//! - [`services`]: the Services the switch proxies (frontends, endpoints,
//!   the choice of one); [`nat`]: a translated packet's rewrite and
//!   checksums.
//! - [`reply`]: frames the switch originates (ARP replies, neighbour
//!   advertisements, ICMP errors).
//! - [`overlay`]: VXLAN to other nodes; [`segment`] and [`coalesce`]: the
//!   offload work for frames that cross it.
//! - [`counters`]: per-port and per-datapath counters, one outcome per
//!   frame.
//! - [`mem_hints`]: memory advice for the big tables (the only `unsafe`).
//!
//! The I/O side, [`io`]: ports (TAP, the overlay's UDP socket, in-memory),
//! the worker that moves frames between them and the core, and the event
//! loop.
//!
//! The layer rule: **the core never imports `io`**; `io` uses the core.

mod coalesce;
mod config;
pub mod conntrack;
pub mod counters;
mod datapath;
mod flow_cache;
mod frag;
pub mod io;
mod keyed_hash;
pub mod mem_hints;
pub mod nat;
pub mod overlay;
pub mod parse;
mod ports;
mod reply;
mod segment;
pub mod services;
pub mod wire;

pub use config::{Config, EstablishedPolicy};
pub use datapath::{Action, Datapath, FrontendCounters, Offload, ServiceCounters};
pub use ports::{PortId, PortKind, PortState, RxMeta};
