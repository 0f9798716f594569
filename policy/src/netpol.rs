//! A validated `networking.k8s.io/v1` NetworkPolicy, with the API's defaults
//! made explicit so that no later stage has to remember them:
//!
//! - `policyTypes` is resolved: `ingress` is `Some` exactly when the policy
//!   applies to ingress (rules may be empty: deny all), same for `egress`;
//! - a rule's empty `peers` means every peer, empty `ports` every port and
//!   protocol; an omitted protocol is TCP;
//! - a peer with `podSelector` alone is scoped to the policy's namespace, a
//!   peer with `namespaceSelector` alone selects every pod of those namespaces.
//!
//! Build one with [`crate::k8s::policy_from_k8s`], which validates as the API
//! server does.

use std::fmt;

use ipnet::IpNet;

use crate::labels::{Labels, Selector};
use crate::model::{ContainerPort, Protocol, resolve_named_port};
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub namespace: String,
    pub name: String,
}

impl PolicyKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> PolicyKey {
        PolicyKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub key: PolicyKey,
    pub pod_selector: Selector,
    /// `Some` when the policy applies to ingress; the rules are ORed.
    pub ingress: Option<Vec<Rule>>,
    /// `Some` when the policy applies to egress; the rules are ORed.
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    pub fn rules(&self, dir: Direction) -> Option<&[Rule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Whether the policy selects a pod of its namespace with these labels.
    pub fn selects(&self, namespace: &str, labels: &Labels) -> bool {
        namespace == self.key.namespace && self.pod_selector.matches(labels)
    }
}

/// One ingress or egress rule: traffic to/from any of `peers` on any of `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Empty: every peer, inside the cluster or not.
    pub peers: Vec<Peer>,
    /// Empty: every port of every protocol.
    pub ports: Vec<PortRule>,
}

impl Rule {
    /// Whether the rule's ports admit `(protocol, port)` towards a destination
    /// whose container ports are `dst_ports` (`None`: not a pod).
    pub fn ports_match(
        &self,
        protocol: Protocol,
        port: u16,
        dst_ports: Option<&[ContainerPort]>,
    ) -> bool {
        self.ports.is_empty()
            || self
                .ports
                .iter()
                .any(|p| p.matches(protocol, port, dst_ports))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NamespaceScope {
    /// `podSelector` alone: the policy's own namespace.
    Own(String),
    /// `namespaceSelector` (with or without `podSelector`).
    Selector(Selector),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Pods in the namespaces of `namespaces` whose labels match `pods`.
    Pods {
        namespaces: NamespaceScope,
        pods: Selector,
    },
    /// Any address in `cidr` but not in an `except` block.
    IpBlock(IpBlock),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// No `port`: every port of the protocol.
    All,
    /// `port` (and `endPort`), inclusive.
    Range(u16, u16),
    /// A named port, resolved on the destination pod.
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRule {
    pub protocol: Protocol,
    pub port: PortMatch,
}

impl PortRule {
    pub fn matches(
        &self,
        protocol: Protocol,
        port: u16,
        dst_ports: Option<&[ContainerPort]>,
    ) -> bool {
        if protocol != self.protocol {
            return false;
        }
        match &self.port {
            PortMatch::All => true,
            PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&port),
            PortMatch::Named(name) => dst_ports
                .and_then(|ports| resolve_named_port(ports, name, protocol))
                .is_some_and(|p| p == port),
        }
    }
}

impl fmt::Display for PortRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortMatch::All => write!(f, "*/{}", self.protocol),
            PortMatch::Range(lo, hi) if lo == hi => write!(f, "{lo}/{}", self.protocol),
            PortMatch::Range(lo, hi) => write!(f, "{lo}-{hi}/{}", self.protocol),
            PortMatch::Named(n) => write!(f, "{n}/{}", self.protocol),
        }
    }
}
