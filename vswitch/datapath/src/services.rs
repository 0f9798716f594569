//! The Services the switch proxies (`--service-proxy switch`): each
//! frontend (cluster IP, protocol, port) and its endpoints, as the control
//! plane computed them from Services and EndpointSlices.
//!
//! - An endpoint has the conditions EndpointSlices give it: `ready`,
//!   `serving`, `terminating`, and whether it is on this node (`local`).
//! - The endpoints a new connection may take ([`Frontend::usable`]) are
//!   those kube-proxy would use: the ready ones; with none ready, the
//!   serving and terminating ones (so that connections drain to pods that
//!   are going away rather than fail); with `internalTrafficPolicy: Local`,
//!   only this node's.
//! - Which one: a hash of the connection's tuple picks among them, so a
//!   flow always maps to the same endpoint while the set is the same. With
//!   `sessionAffinity: ClientIP`, the client's last endpoint is kept
//!   while it stays usable (the datapath's affinity table, see
//!   `datapath/service_proxy.rs`).
//! - The table is shared by the workers behind an `Arc`. The control plane
//!   sends changes (a frontend set or removed, [`ServiceChange`]), applied
//!   in place when the worker holds the only reference (copied once when
//!   not), or a whole table; the next packet of a new connection sees
//!   them.

use std::net::IpAddr;

use rustc_hash::FxHashMap;

/// A frontend's key: its cluster IP, IP protocol number and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrontendKey {
    pub ip: IpAddr,
    pub proto: u8,
    pub port: u16,
}

/// An endpoint of a frontend, with its EndpointSlice conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node.
    pub local: bool,
}

/// One Service port on one cluster IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    /// The Service's namespace/name and the port's name (for metrics and
    /// `vswitchctl services`).
    pub service: String,
    pub port_name: Option<String>,
    pub endpoints: Vec<Endpoint>,
    /// `sessionAffinity: ClientIP`: how long a client keeps its endpoint
    /// after its last new connection (milliseconds).
    pub affinity_ms: Option<u64>,
    /// `internalTrafficPolicy: Local`.
    pub local_only: bool,
}

impl Frontend {
    /// A service proxy's frontend on the node named `node` (an endpoint is
    /// local when its slice names it), and its key.
    pub fn from_spec(f: policy::FrontendSpec, node: &str) -> (FrontendKey, Frontend) {
        let endpoints = f
            .endpoints
            .iter()
            .map(|e| Endpoint {
                ip: e.ip,
                port: e.port,
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
                local: e.node.as_deref() == Some(node),
            })
            .collect();
        let key = FrontendKey {
            ip: f.ip,
            proto: f.protocol.number(),
            port: f.port,
        };
        let frontend = Frontend {
            service: f.service.to_string(),
            port_name: f.port_name,
            endpoints,
            affinity_ms: f.affinity_timeout.map(|s| s as u64 * 1000),
            local_only: f.local_only,
        };
        (key, frontend)
    }

    /// The endpoints a new connection may be sent to (see the module
    /// comment), in table order.
    pub fn usable(&self) -> impl Iterator<Item = &Endpoint> {
        let local = |e: &&Endpoint| !self.local_only || e.local;
        let any_ready = self.endpoints.iter().filter(local).any(|e| e.ready);
        self.endpoints
            .iter()
            .filter(local)
            .filter(move |e| if any_ready { e.ready } else { e.serving })
    }

    /// Whether `(ip, port)` is one of the usable endpoints.
    pub fn is_usable(&self, ip: IpAddr, port: u16) -> bool {
        self.usable().any(|e| e.ip == ip && e.port == port)
    }

    /// The endpoint for a new connection whose tuple hashes to `hash`.
    pub fn pick(&self, hash: u64) -> Option<&Endpoint> {
        let n = self.usable().count();
        if n == 0 {
            return None;
        }
        // multiply-shift: the hash's high bits pick, evenly
        let i = ((hash >> 32) * n as u64) >> 32;
        self.usable().nth(i as usize)
    }
}

/// Every frontend the switch translates.
#[derive(Debug, Clone, Default)]
pub struct ServiceTable {
    frontends: FxHashMap<FrontendKey, Frontend>,
    /// The cluster IPs of every frontend, with how many frontends each
    /// has (a packet to one of them on a port with no frontend is not
    /// translated).
    ips: FxHashMap<IpAddr, u32>,
}

/// A change to the table: a frontend added or replaced, or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceChange {
    Set(FrontendKey, Frontend),
    Remove(FrontendKey),
}

impl ServiceChange {
    /// The change a service proxy's frontend change makes on the node named
    /// `node`.
    pub fn of(c: policy::FrontendChange, node: &str) -> ServiceChange {
        match c {
            policy::FrontendChange::Set(f) => {
                let (k, f) = Frontend::from_spec(f, node);
                ServiceChange::Set(k, f)
            }
            policy::FrontendChange::Remove((ip, protocol, port)) => {
                ServiceChange::Remove(FrontendKey {
                    ip,
                    proto: protocol.number(),
                    port,
                })
            }
        }
    }
}

impl ServiceTable {
    pub fn new() -> ServiceTable {
        ServiceTable::default()
    }

    /// Adds (or replaces) a frontend.
    pub fn insert(&mut self, key: FrontendKey, frontend: Frontend) {
        if self.frontends.insert(key, frontend).is_none() {
            *self.ips.entry(key.ip).or_default() += 1;
        }
    }

    /// Removes a frontend (and its cluster IP with its last one).
    pub fn remove(&mut self, key: &FrontendKey) -> Option<Frontend> {
        let f = self.frontends.remove(key)?;
        if let Some(n) = self.ips.get_mut(&key.ip) {
            *n -= 1;
            if *n == 0 {
                self.ips.remove(&key.ip);
            }
        }
        Some(f)
    }

    /// Applies a change.
    pub fn apply(&mut self, c: ServiceChange) {
        match c {
            ServiceChange::Set(k, f) => self.insert(k, f),
            ServiceChange::Remove(k) => {
                self.remove(&k);
            }
        }
    }

    pub fn get(&self, key: &FrontendKey) -> Option<&Frontend> {
        self.frontends.get(key)
    }

    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
    }

    pub fn len(&self) -> usize {
        self.frontends.len()
    }

    /// Whether `ip` is a cluster IP of some frontend.
    pub fn is_cluster_ip(&self, ip: IpAddr) -> bool {
        self.ips.contains_key(&ip)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FrontendKey, &Frontend)> {
        self.frontends.iter()
    }

    /// The table of the frontends a service proxy translates
    /// ([`policy::endpoint_slice::frontends`]) on the node named `node`
    /// (an endpoint is local when its slice names it).
    pub fn from_specs(specs: impl IntoIterator<Item = policy::FrontendSpec>, node: &str) -> Self {
        let mut table = ServiceTable::new();
        for f in specs {
            let (key, frontend) = Frontend::from_spec(f, node);
            table.insert(key, frontend);
        }
        table
    }
}
