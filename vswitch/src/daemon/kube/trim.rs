//! Trimming objects before the reflector stores them: each object keeps
//! only what the cluster model reads (names, labels, the pod fields
//! `policy::k8s` converts, a node's pod CIDRs, a Service's addresses and
//! ports, a slice's endpoints). Everything else, managed
//! fields and annotations (`last-applied-configuration` can be as large as
//! the object) first, would only take memory: a node agent holds every pod
//! of the cluster.

use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus, Service, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Drops what the cluster model does not read.
pub trait Trim {
    fn trim(&mut self);
}

/// Identity (name, namespace, uid, resourceVersion), labels and the two
/// timestamps that decide which pod keeps a contested address.
pub(super) fn meta(m: &mut ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.take(),
        namespace: m.namespace.take(),
        uid: m.uid.take(),
        resource_version: m.resource_version.take(),
        labels: m.labels.take(),
        creation_timestamp: m.creation_timestamp.take(),
        deletion_timestamp: m.deletion_timestamp.take(),
        ..ObjectMeta::default()
    }
}

/// A container's name and ports (named ports resolve through them).
fn ports_only(c: Container) -> Container {
    Container {
        name: c.name,
        ports: c.ports,
        ..Container::default()
    }
}

impl Trim for Pod {
    fn trim(&mut self) {
        let spec = self.spec.take().map(|s| PodSpec {
            host_network: s.host_network,
            containers: s.containers.into_iter().map(ports_only).collect(),
            init_containers: s
                .init_containers
                .map(|cs| cs.into_iter().map(ports_only).collect()),
            ..PodSpec::default()
        });
        let status = self.status.take().map(|s| PodStatus {
            phase: s.phase,
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            ..PodStatus::default()
        });
        *self = Pod {
            metadata: meta(&mut self.metadata),
            spec,
            status,
        };
    }
}

impl Trim for Namespace {
    fn trim(&mut self) {
        *self = Namespace {
            metadata: meta(&mut self.metadata),
            ..Namespace::default()
        };
    }
}

impl Trim for NetworkPolicy {
    fn trim(&mut self) {
        *self = NetworkPolicy {
            metadata: meta(&mut self.metadata),
            spec: self.spec.take(),
        };
    }
}

impl Trim for Node {
    fn trim(&mut self) {
        // A node's status (images, conditions) is most of it; the overlay
        // needs only its InternalIP addresses, admin policies' `nodes`
        // peers its IP addresses (InternalIP and ExternalIP).
        let spec = self.spec.take().map(|s| NodeSpec {
            pod_cidr: s.pod_cidr,
            pod_cidrs: s.pod_cidrs,
            ..NodeSpec::default()
        });
        let status = self.status.take().map(|s| NodeStatus {
            addresses: s.addresses.map(|a| {
                a.into_iter()
                    .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                    .collect()
            }),
            ..NodeStatus::default()
        });
        *self = Node {
            metadata: meta(&mut self.metadata),
            spec,
            status,
        };
    }
}

impl Trim for Service {
    fn trim(&mut self) {
        // what a proxy reads: type, cluster IPs, ports, affinity, traffic
        // policy (the selector is the EndpointSlice controller's)
        let spec = self.spec.take().map(|s| ServiceSpec {
            type_: s.type_,
            cluster_ip: s.cluster_ip,
            cluster_ips: s.cluster_ips,
            ports: s.ports,
            session_affinity: s.session_affinity,
            session_affinity_config: s.session_affinity_config,
            internal_traffic_policy: s.internal_traffic_policy,
            ..ServiceSpec::default()
        });
        *self = Service {
            metadata: meta(&mut self.metadata),
            spec,
            status: None,
        };
    }
}

impl Trim for EndpointSlice {
    fn trim(&mut self) {
        // an endpoint's addresses, conditions and node (not its target
        // reference, hints or zone)
        let endpoints = self.endpoints.take().map(|es| {
            es.into_iter()
                .map(|e| Endpoint {
                    addresses: e.addresses,
                    conditions: e.conditions,
                    node_name: e.node_name,
                    ..Endpoint::default()
                })
                .collect()
        });
        *self = EndpointSlice {
            metadata: meta(&mut self.metadata),
            address_type: std::mem::take(&mut self.address_type),
            endpoints,
            ports: self.ports.take(),
        };
    }
}
