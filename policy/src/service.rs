//! Kubernetes Services (v1, ClusterIP) in the model: a Service's cluster IPs
//! and ports, and its endpoints as the EndpointSlice controller computes
//! them from the pods.
//!
//! - Endpoints: the pods of the Service's namespace whose labels contain
//!   every pair of its `selector` (a Service without a selector has none
//!   here: its endpoints are whatever EndpointSlices say).
//! - A target port by number is that number on every endpoint; by name it
//!   is the endpoint's container port of that name and the Service port's
//!   protocol, and a pod without one is no endpoint for that port (the
//!   controller's `FindPort`).
//! - Headless Services (`clusterIP: None`) have no cluster IP and are never
//!   translated.

use std::net::IpAddr;

use crate::labels::Labels;
use crate::model::{Pod, PodKey, Protocol, resolve_named_port};

/// A Service port's `targetPort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    pub target: TargetPort,
}

/// A ClusterIP Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Namespace and name.
    pub key: PodKey,
    /// The cluster IPs, one per family (empty: headless).
    pub cluster_ips: Vec<IpAddr>,
    /// `None`: no selector (endpoints are managed by hand).
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub local_only: bool,
    /// The `service.kubernetes.io/service-proxy-name` label: the Service is
    /// another proxy's, left alone.
    pub proxy_name: Option<String>,
}

/// One endpoint of a Service port: a pod's address and the port it serves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub pod: PodKey,
    pub ip: IpAddr,
    pub port: u16,
}

impl Service {
    /// Whether the Service selects `pod` (same namespace, selector matches).
    pub fn selects(&self, pod: &Pod) -> bool {
        pod.key.namespace == self.key.namespace
            && self.selector.as_ref().is_some_and(|sel| {
                sel.iter()
                    .all(|(k, v)| pod.labels.get(k).is_some_and(|x| x == v))
            })
    }

    /// The endpoints of `port` among `pods`, every address of each (both
    /// families), in a stable order.
    pub fn backends<'a>(
        &self,
        port: &ServicePort,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Vec<Backend> {
        let mut out: Vec<Backend> = pods
            .into_iter()
            .filter(|p| self.selects(p))
            .filter_map(|p| Some((p, target_on(port, p)?)))
            .flat_map(|(p, n)| {
                p.ips.iter().map(move |ip| Backend {
                    pod: p.key.clone(),
                    ip: *ip,
                    port: n,
                })
            })
            .collect();
        out.sort();
        out
    }

    /// The port a probe names: by number (and protocol) or by name.
    pub fn port_by_number(&self, port: u16, protocol: Protocol) -> Option<&ServicePort> {
        self.ports
            .iter()
            .find(|p| p.port == port && p.protocol == protocol)
    }

    /// The cluster IP of a family.
    pub fn cluster_ip(&self, v6: bool) -> Option<IpAddr> {
        self.cluster_ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv6() == v6)
    }
}

/// A target port on one pod (`None`: the pod has no port of that name).
pub fn target_on(port: &ServicePort, pod: &Pod) -> Option<u16> {
    match &port.target {
        TargetPort::Number(n) => Some(*n),
        TargetPort::Name(name) => resolve_named_port(&pod.ports, name, port.protocol),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ContainerPort;

    fn pod(ns: &str, name: &str, app: &str, ip: &str, ports: &[(&str, u16)]) -> Pod {
        Pod {
            key: PodKey::new(ns, name),
            labels: [("app".to_string(), app.to_string())].into(),
            ips: vec![ip.parse().unwrap()],
            ports: ports
                .iter()
                .map(|(n, p)| ContainerPort {
                    name: Some(n.to_string()),
                    port: *p,
                    protocol: Protocol::Tcp,
                })
                .collect(),
        }
    }

    fn web(target: TargetPort) -> Service {
        Service {
            key: PodKey::new("x", "web"),
            cluster_ips: vec!["10.96.0.1".parse().unwrap()],
            selector: Some([("app".to_string(), "web".to_string())].into()),
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Tcp,
                target,
            }],
            affinity_timeout: None,
            local_only: false,
            proxy_name: None,
        }
    }

    #[test]
    fn endpoints_are_the_selected_pods_of_the_namespace_with_the_named_port() {
        let pods = [
            pod("x", "a", "web", "10.0.0.1", &[("http", 8080)]),
            pod("x", "b", "web", "10.0.0.2", &[("other", 9090)]),
            pod("x", "c", "db", "10.0.0.3", &[("http", 8080)]),
            pod("y", "d", "web", "10.0.0.4", &[("http", 8080)]),
        ];
        let by_name = web(TargetPort::Name("http".into()));
        let b = by_name.backends(&by_name.ports[0], &pods);
        assert_eq!(
            b.iter()
                .map(|b| (b.pod.name.as_str(), b.port))
                .collect::<Vec<_>>(),
            [("a", 8080)],
            "b has no port named http; c is not selected; d is in another namespace"
        );
        let by_number = web(TargetPort::Number(7000));
        let b = by_number.backends(&by_number.ports[0], &pods);
        assert_eq!(
            b.iter()
                .map(|b| (b.pod.name.as_str(), b.port))
                .collect::<Vec<_>>(),
            [("a", 7000), ("b", 7000)]
        );
        let mut none = web(TargetPort::Number(80));
        none.selector = None;
        assert!(none.backends(&none.ports[0], &pods).is_empty());
    }
}
