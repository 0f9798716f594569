//! The cluster model: namespaces, pods and NetworkPolicies, as plain data.
//!
//! This is what every other part of the crate reads. It holds no compiled
//! state; `Engine` keeps one of these as its source of truth.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::admin::{AdminKey, AdminPolicy};
use crate::labels::Labels;
use crate::netpol::{Policy, PolicyKey};

/// The label that Kubernetes puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// An L4 protocol. NetworkPolicy names TCP, UDP and SCTP; flows can carry
/// any IP protocol number (ICMP, ...), which only port-less rules match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Other(u8),
}

impl Protocol {
    /// Parses a NetworkPolicy / containerPort protocol name.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
            Protocol::Other(n) => n,
        }
    }

    pub fn from_number(n: u8) -> Protocol {
        match n {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            n => Protocol::Other(n),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("TCP"),
            Protocol::Udp => f.write_str("UDP"),
            Protocol::Sctp => f.write_str("SCTP"),
            Protocol::Other(n) => write!(f, "proto-{n}"),
        }
    }
}

/// A node of the cluster, as far as pod networking cares: where its pods
/// live (`spec.podCIDRs`), the address other nodes reach it at (its
/// first InternalIP), and its labels. Admin policies' `nodes` peers select
/// nodes by label and match their InternalIP addresses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    /// InternalIP addresses, in the order the Node lists them.
    pub addresses: Vec<IpAddr>,
    /// Its other IP addresses (ExternalIP): admin policies' `nodes` peers
    /// match every address of `status.addresses`.
    pub other_addresses: Vec<IpAddr>,
    pub pod_cidrs: Vec<ipnet::IpNet>,
}

/// A named container port of a pod (what named ports in policies resolve to).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// Resolves a port name on a pod's container ports for a protocol.
pub fn resolve_named_port(ports: &[ContainerPort], name: &str, protocol: Protocol) -> Option<u16> {
    ports
        .iter()
        .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
        .map(|p| p.port)
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> PodKey {
        PodKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `namespace/name`.
    pub fn parse(s: &str) -> Option<PodKey> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| PodKey::new(ns, name))
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Always contains `kubernetes.io/metadata.name: <name>`.
    pub labels: Labels,
}

impl Namespace {
    /// A namespace with the given labels plus the automatic name label.
    pub fn new(name: impl Into<String>, mut labels: Labels) -> Namespace {
        let name = name.into();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
        Namespace { name, labels }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub key: PodKey,
    pub labels: Labels,
    /// The pod's addresses (at most one per family in practice).
    pub ips: Vec<IpAddr>,
    pub ports: Vec<ContainerPort>,
}

/// Why a change to the model was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("pod {pod}: namespace {namespace} does not exist")]
    NoNamespace { pod: PodKey, namespace: String },
    #[error("pod {pod}: address {ip} is already used by pod {owner}")]
    AddressInUse {
        pod: PodKey,
        ip: IpAddr,
        owner: PodKey,
    },
    #[error("NetworkPolicy {policy}: namespace {} does not exist", policy.namespace)]
    PolicyNamespace { policy: PolicyKey },
}

/// A cluster node's labels and addresses: what admin policies' `nodes`
/// peers see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    /// Every IP address of `status.addresses`.
    pub addresses: Vec<IpAddr>,
}

impl From<&Node> for NodeInfo {
    fn from(n: &Node) -> NodeInfo {
        NodeInfo {
            name: n.name.clone(),
            labels: n.labels.clone(),
            addresses: n
                .addresses
                .iter()
                .chain(&n.other_addresses)
                .copied()
                .collect(),
        }
    }
}

/// One change to a cluster, as every consumer of the model takes it (the
/// engine's incremental API, the scenario runner, the control plane).
#[derive(Debug, Clone)]
pub enum Change {
    UpsertNamespace(Namespace),
    DeleteNamespace(String),
    UpsertPod(Pod),
    DeletePod(PodKey),
    UpsertPolicy(Policy),
    DeletePolicy(PolicyKey),
    UpsertAdminPolicy(AdminPolicy),
    DeleteAdminPolicy(AdminKey),
    UpsertNode(NodeInfo),
    DeleteNode(String),
}

/// A whole cluster: the input of both the reference evaluator and the compiler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<PodKey, Pod>,
    pub policies: BTreeMap<PolicyKey, Policy>,
    /// ClusterNetworkPolicies, AdminNetworkPolicies and
    /// BaselineAdminNetworkPolicies (cluster-scoped).
    pub admin_policies: BTreeMap<AdminKey, AdminPolicy>,
    /// The cluster's nodes (for admin policies' `nodes` peers).
    pub nodes: BTreeMap<String, NodeInfo>,
}

impl Cluster {
    /// The pod that owns an address, if any.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.pods.values().find(|p| p.ips.contains(&ip))
    }

    pub fn namespace_labels(&self, ns: &str) -> Option<&Labels> {
        self.namespaces.get(ns).map(|n| &n.labels)
    }

    /// Applies a change to the plain model, without any checks (the engine
    /// checks; this is what it must agree with).
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::UpsertNamespace(ns) => {
                self.namespaces.insert(ns.name.clone(), ns.clone());
            }
            Change::DeleteNamespace(name) => {
                self.namespaces.remove(name);
                self.pods.retain(|k, _| &k.namespace != name);
                self.policies.retain(|k, _| &k.namespace != name);
            }
            Change::UpsertPod(p) => {
                self.pods.insert(p.key.clone(), p.clone());
            }
            Change::DeletePod(k) => {
                self.pods.remove(k);
            }
            Change::UpsertPolicy(p) => {
                self.policies.insert(p.key.clone(), p.clone());
            }
            Change::DeletePolicy(k) => {
                self.policies.remove(k);
            }
            Change::UpsertAdminPolicy(p) => {
                self.admin_policies.insert(p.key.clone(), p.clone());
            }
            Change::DeleteAdminPolicy(k) => {
                self.admin_policies.remove(k);
            }
            Change::UpsertNode(n) => {
                self.nodes.insert(n.name.clone(), n.clone());
            }
            Change::DeleteNode(n) => {
                self.nodes.remove(n);
            }
        }
    }

    /// Checks that a pod's namespace exists.
    pub fn check_pod_namespace(&self, pod: &Pod) -> Result<(), ModelError> {
        if self.namespaces.contains_key(&pod.key.namespace) {
            Ok(())
        } else {
            Err(ModelError::NoNamespace {
                pod: pod.key.clone(),
                namespace: pod.key.namespace.clone(),
            })
        }
    }
}
