//! EndpointSlices (discovery.k8s.io/v1) in the model: a Service's endpoints
//! as the cluster publishes them, and the frontends a service proxy
//! translates from Services and their slices.
//!
//! - A slice belongs to the Service its `kubernetes.io/service-name` label
//!   names, in its own namespace; a Service may have several slices (one
//!   per address family, and more when large).
//! - Each endpoint has conditions; a nil `ready` or `serving` means true, a
//!   nil `terminating` false (the API's reading).
//! - A slice's ports are matched to the Service's by name (the Service
//!   port's name, empty when it has none) and protocol: kube-proxy's rule.
//!   The endpoint's port for that Service port is the slice port's number.
//! - [`frontends`]: every (cluster IP, protocol, port) of the Services a
//!   proxy translates (not headless, not left to another proxy), with the
//!   endpoints of the cluster IP's family from all their slices, in a
//!   stable order, duplicates (an address in two slices) once.
//! - [`ServiceIndex`]: the same frontends kept up to date change by change.
//!   Given the whole set after a change, it finds the Services whose
//!   object or slices changed and recomputes theirs only, and returns the
//!   frontends added, changed and removed: what a proxy must install. An
//!   endpoint change among 10,000 Services costs a comparison of the sets,
//!   not a rebuild of every frontend.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{PodKey, Protocol};
use crate::service::Service;

/// One port of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    /// The Service port's name (`None`: the Service's only, unnamed port).
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// One endpoint of a slice, with its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Its addresses (of the slice's family; the API allows one).
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The node it is on, if the slice says.
    pub node: Option<String>,
}

/// An EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    /// Namespace and name.
    pub key: PodKey,
    /// The Service it belongs to (its namespace's).
    pub service: String,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// A frontend's endpoint, as a proxy uses it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FrontendEndpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
}

/// One cluster IP and port of a Service, and its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendSpec {
    pub service: PodKey,
    pub port_name: Option<String>,
    pub ip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub endpoints: Vec<FrontendEndpoint>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub local_only: bool,
}

/// The frontends a service proxy translates, from `services` and their
/// `slices` (see the module comment).
pub fn frontends<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Vec<FrontendSpec> {
    let mut by_service: BTreeMap<PodKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        by_service
            .entry(PodKey::new(&s.key.namespace, &s.service))
            .or_default()
            .push(s);
    }
    let mut out = Vec::new();
    for svc in services {
        if svc.proxy_name.is_some() {
            continue; // another proxy's
        }
        let slices = by_service.get(&svc.key).map(Vec::as_slice).unwrap_or(&[]);
        for ip in &svc.cluster_ips {
            for sp in &svc.ports {
                let mut endpoints: Vec<FrontendEndpoint> = Vec::new();
                for slice in slices {
                    let Some(port) = slice
                        .ports
                        .iter()
                        .find(|p| p.name == sp.name && p.protocol == sp.protocol)
                    else {
                        continue;
                    };
                    for e in &slice.endpoints {
                        for a in e.addresses.iter().filter(|a| a.is_ipv6() == ip.is_ipv6()) {
                            endpoints.push(FrontendEndpoint {
                                ip: *a,
                                port: port.port,
                                ready: e.ready,
                                serving: e.serving,
                                terminating: e.terminating,
                                node: e.node.clone(),
                            });
                        }
                    }
                }
                endpoints.sort();
                endpoints.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
                out.push(FrontendSpec {
                    service: svc.key.clone(),
                    port_name: sp.name.clone(),
                    ip: *ip,
                    protocol: sp.protocol,
                    port: sp.port,
                    endpoints,
                    affinity_timeout: svc.affinity_timeout,
                    local_only: svc.local_only,
                });
            }
        }
    }
    out
}

/// A frontend's identity: cluster IP, protocol, port.
pub type FrontendId = (IpAddr, Protocol, u16);

impl FrontendSpec {
    pub fn id(&self) -> FrontendId {
        (self.ip, self.protocol, self.port)
    }
}

/// A change a proxy installs: a frontend added or replaced, or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendChange {
    Set(FrontendSpec),
    Remove(FrontendId),
}

/// The Services and EndpointSlices a proxy translates, and their frontends,
/// kept up to date change by change (see the module comment).
///
/// Two Services that claim one cluster IP, protocol and port (the API
/// server allocates cluster IPs uniquely; a manifest folder may not): the
/// frontend of the greatest namespace/name is the one installed, as a
/// rebuild in key order leaves it, and the other's takes over when it goes.
#[derive(Debug, Default)]
pub struct ServiceIndex {
    services: Objects<Service>,
    slices: Objects<EndpointSlice>,
    /// The slices of each Service (namespace/service name).
    by_service: HashMap<PodKey, BTreeSet<PodKey>>,
    /// Each Service's frontends, as last computed.
    frontends: HashMap<PodKey, Vec<FrontendSpec>>,
    /// Which Services claim a frontend.
    claims: HashMap<FrontendId, BTreeSet<PodKey>>,
}

/// Objects of one kind as last given: by key, and in the order given.
/// Shared with the source: an object it did not convert anew is the same
/// allocation, found unchanged by its address, at its place in the order
/// without a lookup.
#[derive(Debug)]
struct Objects<T> {
    by_key: HashMap<PodKey, Arc<T>>,
    order: Vec<Arc<T>>,
}

impl<T> Default for Objects<T> {
    fn default() -> Self {
        Objects {
            by_key: HashMap::new(),
            order: Vec::new(),
        }
    }
}

impl<T: PartialEq> Objects<T> {
    /// Takes the objects `items` (each key once) and tells `changed` of
    /// each one that changed, came or went (old and new version).
    fn merge(
        &mut self,
        items: Vec<Arc<T>>,
        key: impl Fn(&T) -> &PodKey,
        mut changed: impl FnMut(Option<&T>, Option<&T>),
    ) {
        // The places that differ: those holding another allocation (all of
        // them when the count changed).
        let places: Vec<usize> = if items.len() == self.order.len() {
            (0..items.len())
                .filter(|&i| !Arc::ptr_eq(&items[i], &self.order[i]))
                .collect()
        } else {
            (0..items.len().max(self.order.len())).collect()
        };
        // the old objects there whose key is no longer given: gone (the
        // other places hold the same objects, so the same keys)
        let given: HashSet<&PodKey> = places
            .iter()
            .filter_map(|&i| items.get(i))
            .map(|o| key(o))
            .collect();
        for o in places.iter().filter_map(|&i| self.order.get(i)) {
            if !given.contains(key(o)) && self.by_key.remove(key(o)).is_some() {
                changed(Some(o), None);
            }
        }
        for item in places.iter().filter_map(|&i| items.get(i)) {
            match self.by_key.get(key(item)) {
                Some(old) if Arc::ptr_eq(old, item) || **old == **item => {}
                old => {
                    changed(old.map(|o| &**o), Some(item));
                    self.by_key.insert(key(item).clone(), item.clone());
                }
            }
        }
        self.order = items;
    }

    fn get(&self, key: &PodKey) -> Option<&T> {
        self.by_key.get(key).map(|o| &**o)
    }
}

impl ServiceIndex {
    pub fn new() -> ServiceIndex {
        ServiceIndex::default()
    }

    /// Takes the whole set after a change (each key once) and returns the
    /// changes to the installed frontends: none if nothing a proxy sees
    /// changed.
    pub fn update(
        &mut self,
        services: Vec<Arc<Service>>,
        slices: Vec<Arc<EndpointSlice>>,
    ) -> Vec<FrontendChange> {
        let mut dirty: BTreeSet<PodKey> = BTreeSet::new();
        self.services.merge(
            services,
            |s| &s.key,
            |old, new| {
                dirty.extend(old.or(new).map(|s| s.key.clone()));
            },
        );
        let by_service = &mut self.by_service;
        self.slices.merge(
            slices,
            |s| &s.key,
            |old, new| {
                if let Some(o) = old {
                    let owner = PodKey::new(&o.key.namespace, &o.service);
                    if let Some(set) = by_service.get_mut(&owner) {
                        set.remove(&o.key);
                        if set.is_empty() {
                            by_service.remove(&owner);
                        }
                    }
                    dirty.insert(owner);
                }
                if let Some(n) = new {
                    let owner = PodKey::new(&n.key.namespace, &n.service);
                    by_service
                        .entry(owner.clone())
                        .or_default()
                        .insert(n.key.clone());
                    dirty.insert(owner);
                }
            },
        );
        // each dirty Service's frontends anew; the ids they touch
        let mut touched: BTreeSet<FrontendId> = BTreeSet::new();
        for key in dirty {
            let now = match self.services.get(&key) {
                Some(svc) => {
                    let slices = self
                        .by_service
                        .get(&key)
                        .into_iter()
                        .flatten()
                        .filter_map(|k| self.slices.get(k));
                    frontends([svc], slices)
                }
                None => Vec::new(),
            };
            let before = self.frontends.remove(&key).unwrap_or_default();
            for f in &before {
                if !now.iter().any(|n| n == f) {
                    touched.insert(f.id());
                }
                if !now.iter().any(|n| n.id() == f.id())
                    && let Some(c) = self.claims.get_mut(&f.id())
                {
                    c.remove(&key);
                    if c.is_empty() {
                        self.claims.remove(&f.id());
                    }
                }
            }
            for f in &now {
                if !before.iter().any(|b| b == f) {
                    touched.insert(f.id());
                }
                self.claims.entry(f.id()).or_default().insert(key.clone());
            }
            if !now.is_empty() {
                self.frontends.insert(key, now);
            }
        }
        touched
            .into_iter()
            .map(|id| match self.installed(id) {
                Some(f) => FrontendChange::Set(f.clone()),
                None => FrontendChange::Remove(id),
            })
            .collect()
    }

    /// The frontend installed for `id`: the greatest claimer's (its last
    /// port of that number and protocol, if it repeats one).
    pub fn installed(&self, id: FrontendId) -> Option<&FrontendSpec> {
        let owner = self.claims.get(&id)?.last()?;
        self.frontends.get(owner)?.iter().rfind(|f| f.id() == id)
    }

    /// How many frontends are installed (each claimed id has one).
    pub fn len(&self) -> usize {
        self.claims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    /// Every installed frontend.
    pub fn all(&self) -> impl Iterator<Item = &FrontendSpec> {
        self.claims.keys().filter_map(|id| self.installed(*id))
    }

    /// A Service, as last given.
    pub fn service(&self, key: &PodKey) -> Option<&Service> {
        self.services.get(key)
    }

    /// A Service's frontends (none for a headless one, or another proxy's).
    pub fn frontends_of(&self, key: &PodKey) -> &[FrontendSpec] {
        self.frontends.get(key).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{ServicePort, TargetPort};

    fn svc(name: &str, ips: &[&str], ports: &[(Option<&str>, u16, Protocol)]) -> Service {
        Service {
            key: PodKey::new("x", name),
            cluster_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            selector: None,
            ports: ports
                .iter()
                .map(|(n, p, proto)| ServicePort {
                    name: n.map(str::to_string),
                    port: *p,
                    protocol: *proto,
                    target: TargetPort::Number(*p),
                })
                .collect(),
            affinity_timeout: None,
            local_only: false,
            proxy_name: None,
        }
    }

    fn ep(addr: &str, ready: bool) -> SliceEndpoint {
        SliceEndpoint {
            addresses: vec![addr.parse().unwrap()],
            ready,
            serving: true,
            terminating: false,
            node: Some("n1".into()),
        }
    }

    fn slice(
        name: &str,
        service: &str,
        ports: &[(Option<&str>, u16)],
        eps: Vec<SliceEndpoint>,
    ) -> EndpointSlice {
        EndpointSlice {
            key: PodKey::new("x", name),
            service: service.into(),
            ports: ports
                .iter()
                .map(|(n, p)| SlicePort {
                    name: n.map(str::to_string),
                    port: *p,
                    protocol: Protocol::Tcp,
                })
                .collect(),
            endpoints: eps,
        }
    }

    #[test]
    fn ports_match_by_name_and_protocol_and_families_stay_apart() {
        let s = svc(
            "web",
            &["10.96.0.1", "fd00::1"],
            &[
                (Some("http"), 80, Protocol::Tcp),
                (Some("dns"), 53, Protocol::Udp),
            ],
        );
        let v4 = slice(
            "web-a",
            "web",
            &[(Some("http"), 8080), (Some("dns"), 5353)],
            vec![ep("10.0.0.1", true), ep("10.0.0.2", false)],
        );
        let v6 = slice(
            "web-b",
            "web",
            &[(Some("http"), 8080)],
            vec![ep("fd00::a", true)],
        );
        // a slice of another Service, and of another namespace
        let other = slice(
            "other",
            "db",
            &[(Some("http"), 1)],
            vec![ep("10.0.0.9", true)],
        );
        let f = frontends([&s], [&v4, &v6, &other]);
        assert_eq!(f.len(), 4, "two IPs by two ports");
        let http4 = f.iter().find(|f| f.ip.is_ipv4() && f.port == 80).unwrap();
        let got: Vec<(String, u16, bool)> = http4
            .endpoints
            .iter()
            .map(|e| (e.ip.to_string(), e.port, e.ready))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.1".into(), 8080, true),
                ("10.0.0.2".into(), 8080, false)
            ]
        );
        let http6 = f.iter().find(|f| f.ip.is_ipv6() && f.port == 80).unwrap();
        assert_eq!(http6.endpoints.len(), 1);
        // UDP 53: the slice's "dns" port is TCP here, so no endpoint
        let dns4 = f.iter().find(|f| f.ip.is_ipv4() && f.port == 53).unwrap();
        assert!(dns4.endpoints.is_empty());
    }

    #[test]
    fn headless_services_and_other_proxies_services_have_no_frontends() {
        let headless = svc("h", &[], &[(None, 80, Protocol::Tcp)]);
        let mut other = svc("o", &["10.96.0.2"], &[(None, 80, Protocol::Tcp)]);
        other.proxy_name = Some("someone-else".into());
        let s = slice("h-1", "h", &[(None, 80)], vec![ep("10.0.0.1", true)]);
        assert!(frontends([&headless, &other], [&s]).is_empty());
    }

    #[test]
    fn an_address_in_two_slices_is_one_endpoint() {
        let s = svc("web", &["10.96.0.1"], &[(None, 80, Protocol::Tcp)]);
        let a = slice("a", "web", &[(None, 80)], vec![ep("10.0.0.1", true)]);
        let b = slice("b", "web", &[(None, 80)], vec![ep("10.0.0.1", true)]);
        assert_eq!(frontends([&s], [&a, &b])[0].endpoints.len(), 1);
    }
}
