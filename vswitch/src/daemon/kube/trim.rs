//! Trimming objects before the reflector stores them: each object keeps
//! only what the cluster model reads (names, labels, the pod fields
//! `policy::k8s` converts, a node's pod CIDRs). Everything else, managed
//! fields and annotations (`last-applied-configuration` can be as large as
//! the object) first, would only take memory: a node agent holds every pod
//! of the cluster.

use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Drops what the cluster model does not read.
pub trait Trim {
    fn trim(&mut self);
}

/// Identity (name, namespace, uid, resourceVersion), labels and the two
/// timestamps that decide which pod keeps a contested address.
fn meta(m: &mut ObjectMeta) -> ObjectMeta {
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
        // needs only its InternalIP addresses.
        let spec = self.spec.take().map(|s| NodeSpec {
            pod_cidr: s.pod_cidr,
            pod_cidrs: s.pod_cidrs,
            ..NodeSpec::default()
        });
        let status = self.status.take().map(|s| NodeStatus {
            addresses: s
                .addresses
                .map(|a| a.into_iter().filter(|a| a.type_ == "InternalIP").collect()),
            ..NodeStatus::default()
        });
        *self = Node {
            metadata: meta(&mut self.metadata),
            spec,
            status,
        };
    }
}
