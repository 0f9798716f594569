//! vswitchd: the daemon that turns the switch into a network plugin.
//!
//! Design. One control thread owns all state: the policy [`Engine`], the
//! attachments (pods wired in by the CNI plugin), the desired cluster from
//! the manifest folder, and the on-disk [`state::Store`]. It serves the
//! control socket one request at a time (requests are short; sequential
//! handling needs no locks) and re-reads the manifests when they change.
//! The switch runs on a thread of its own ([`switch::Switch`]) and gets
//! policy through a [`PolicyHandle`] (lock-free) and ports through a command
//! queue.
//!
//! Attaching a pod (CNI ADD): create a persistent TAP inside the pod's
//! namespace under its final name (from a thread that entered it; the
//! daemon keeps the descriptor), set MAC, MTU, addresses and routes and
//! bring it up (netlink), save the attachment, add the pod to the
//! policy model and publish that generation, and only then attach the port
//! with that generation as its `ready_generation`: the datapath drops the
//! pod's frames until the policy that knows the pod is installed (fail
//! closed). The node's route to the pod goes through the node TAP.
//!
//! Restart: TAP devices are persistent and the attachments are on disk, so
//! a new vswitchd re-attaches to each pod's interface (inside the pod's
//! namespace) and traffic resumes; TCP connections survive a short outage.
//! One vswitchd per state folder: it is locked for the daemon's life.
//!
//! The files, one concern each (the [`Daemon`] struct and the dispatch of
//! requests stay here). Public is only what the binaries, the tests and
//! the fuzz targets use (`manifests`, `parse_request`); the rest is
//! `pub(crate)` (the tools wing uses `switch` and `netns`) or private:
//!
//! - `startup.rs`: [`Options`], [`Daemon::start`], the state folder's lock,
//!   the node TAP, re-attaching the previous run's pods;
//! - `attach.rs`: the CNI verbs ADD, DEL, CHECK and GC;
//! - `device.rs`: a pod's device: the plan ADD makes (name, MAC, MTU,
//!   addresses, routes, the attachment saved) and the one function that
//!   creates and configures it and undoes it on failure, over a small
//!   trait for the netlink and TAP I/O (a fake in its tests);
//! - `model.rs`: the policy model (desired cluster plus local pods, brought
//!   up to date with [`policy::diff`]) and the source's updates;
//! - `query.rs`: answers about the live state (ports, flows, conntrack,
//!   explain);
//! - `services.rs`: the Services the switch proxies, from Services and
//!   EndpointSlices to the switch's frontends;
//! - `error.rs`: [`StartError`] and `RequestError` (with its CNI codes);
//! - and the helpers: `cli`, `control` (the socket), `install`, `kube` and
//!   `manifests` and `source` (where the desired cluster comes from),
//!   `metrics`, `netlink`, `netns`, `nodes` (the overlay), `state` (the
//!   folder), `switch` (the switch's thread).

mod attach;
pub mod cli;
mod control;
mod device;
mod error;
pub mod install;
pub mod kube;
pub mod manifests;
pub(crate) mod metrics;
mod model;
pub(crate) mod netlink;
pub mod netns;
pub mod nodes;
mod query;
pub mod services;
pub mod source;
mod startup;
pub(crate) mod state;
pub(crate) mod switch;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use policy::{Cluster, Engine};
use vswitch_cni::proto::{Attachment, AttachmentKey, Reply, Request};

use switch::Switch;
use vswitch_datapath::io::worker::PolicyHandle;

pub use control::parse_request;
pub use error::StartError;
pub use startup::Options;

/// What the daemon's loop waits for.
pub enum Event {
    /// A request from the control socket, read and waiting for its answer.
    Request(control::Pending),
    Update(source::Update),
}

pub struct Daemon {
    opts: Options,
    /// Held for the daemon's life: one vswitchd per state folder.
    _lock: state::Lock,
    store: state::Store,
    engine: Engine,
    handle: PolicyHandle,
    switch: Switch,
    /// The cluster as the manifests describe it.
    desired: std::sync::Arc<Cluster>,
    /// Every node, as the source describes them.
    nodes: Vec<policy::Node>,
    overlay: Option<nodes::Overlay>,
    attachments: BTreeMap<AttachmentKey, Attachment>,
    gateway_v4: Ipv4Addr,
    gateway_v6: Ipv6Addr,
    /// Whether the source has delivered a complete cluster yet; until then
    /// pods are attached but not ready (fail closed).
    synced: bool,
    /// What the metrics endpoint reads (the source's sync state lives
    /// only there).
    gauges: std::sync::Arc<metrics::Gauges>,
    /// The manifest folder as read at start, handed to its source.
    folder: manifests::Folder,
    /// The Services and EndpointSlices, as the source last gave them.
    services: policy::ServiceIndex,
}

impl Daemon {
    /// Answers one request from the control socket.
    pub fn handle(&mut self, req: Request) -> Reply {
        let r = match req {
            Request::Add(a) => self.add(a).map(Reply::Attachment),
            Request::Del(k) => self.del(&k).map(|_| Reply::Done),
            Request::Check(k) => self.check(&k).map(Reply::Attachment),
            Request::Status {} => Ok(self.status()),
            Request::List {} => Ok(Reply::Attachments(
                self.attachments.values().cloned().collect(),
            )),
            Request::Gc { valid } => self.gc(&valid).map(Reply::Attachments),
            Request::Ports {} => self.query(switch::Query::Ports),
            Request::Flows { limit } => self.query(switch::Query::Flows(limit)),
            Request::Conntrack { limit } => self.query(switch::Query::Conntrack(limit)),
            Request::Services {} => self.query(switch::Query::Services),
            Request::Explain {
                src,
                dst,
                port,
                protocol,
            } => self.explain(&src, &dst, port, &protocol),
        };
        r.unwrap_or_else(|e| Reply::Error(e.reply()))
    }
}
