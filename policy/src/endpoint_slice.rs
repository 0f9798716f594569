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

use std::collections::BTreeMap;
use std::net::IpAddr;

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
