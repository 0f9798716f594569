//! Admin policies: `ClusterNetworkPolicy` (policy.networking.k8s.io
//! v1alpha2) and its predecessors `AdminNetworkPolicy` and
//! `BaselineAdminNetworkPolicy` (v1alpha1), as one validated model.
//!
//! # Semantics (from the network-policy-api reference)
//! Each side of a connection (the source's egress, the destination's
//! ingress) is decided by tiers, in order:
//! 1. the **Admin** tier: the policies of that tier whose subject selects
//!    the pod, by `priority` (0 first), and their rules in order. The first
//!    rule whose peers and ports match decides: `Accept` allows, `Deny`
//!    denies, `Pass` skips the rest of the tier;
//! 2. **NetworkPolicy** (v1): if one isolates the pod in that direction,
//!    it decides (allowed by a rule, or denied);
//! 3. the **Baseline** tier, as the Admin tier (`Pass` falls through);
//! 4. the default: allowed.
//!
//! Two policies of one tier with the same priority are ordered by name,
//! then by kind (ClusterNetworkPolicy, AdminNetworkPolicy,
//! BaselineAdminNetworkPolicy): the API leaves that order to the
//! implementation, and this one never depends on when an object arrived.
//!
//! A peer or protocol this build does not understand (an empty one, left
//! after the API server pruned a field it does not know, or one it cannot
//! take) fails closed, as the API's types say: an `Accept` rule holding one
//! matches no traffic; a `Deny` or `Pass` rule holding one is treated as a
//! rule that denies everything.
//!
//! Build one with [`crate::admin_k8s`], which validates as the API
//! server's schema does.

use std::fmt;

use ipnet::IpNet;

use crate::labels::{Labels, Selector};
use crate::netpol::{Direction, PortRule};

/// Which API object an admin policy came from. Part of its key: a
/// ClusterNetworkPolicy and an AdminNetworkPolicy may share a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdminKind {
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

impl AdminKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            AdminKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            AdminKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }

    pub fn parse(s: &str) -> Option<AdminKind> {
        [
            AdminKind::ClusterNetworkPolicy,
            AdminKind::AdminNetworkPolicy,
            AdminKind::BaselineAdminNetworkPolicy,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl fmt::Display for AdminKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cluster-scoped admin policy's identity: its kind and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AdminKey {
    pub kind: AdminKind,
    pub name: String,
}

impl AdminKey {
    pub fn new(kind: AdminKind, name: impl Into<String>) -> AdminKey {
        AdminKey {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for AdminKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// The tier a policy belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Before NetworkPolicy.
    Admin,
    /// After NetworkPolicy, before the default.
    Baseline,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        })
    }
}

/// What a matching rule does (v1alpha1's `Allow` is `Accept`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Accept,
    Deny,
    /// Skip the rest of the tier: to NetworkPolicy from the Admin tier, to
    /// the default from the Baseline tier.
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        })
    }
}

/// The pods a policy applies to. Host-network pods are not pods of the
/// model, so no subject ever selects them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// Every pod of the namespaces the selector matches.
    Namespaces(Selector),
    /// The pods matching `pods` in the namespaces matching `namespaces`.
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
}

impl Subject {
    pub fn selects(&self, namespace_labels: &Labels, pod_labels: &Labels) -> bool {
        match self {
            Subject::Namespaces(ns) => ns.matches(namespace_labels),
            Subject::Pods { namespaces, pods } => {
                namespaces.matches(namespace_labels) && pods.matches(pod_labels)
            }
        }
    }
}

/// One peer of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdminPeer {
    /// Every pod of the matching namespaces.
    Namespaces(Selector),
    /// Matching pods of matching namespaces.
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
    /// Egress only: addresses in any of the CIDRs, pods' addresses included,
    /// for every protocol.
    Networks(Vec<IpNet>),
    /// Egress only: the addresses of the Nodes the selector matches.
    Nodes(Selector),
}

/// One rule of one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRule {
    /// `name`, when the rule has one (verdicts show it).
    pub name: Option<String>,
    pub action: Action,
    /// The peers understood (those not understood are left out).
    pub peers: Vec<AdminPeer>,
    /// `None`: every port of every protocol (and protocols without ports).
    /// `Some`: the entries understood; none left matches nothing.
    pub ports: Option<Vec<PortRule>>,
    /// A peer or protocol entry was not understood.
    pub unknown: bool,
}

impl AdminRule {
    /// A `Deny` or `Pass` rule with something not understood: it fails
    /// closed, denying every connection it is asked about.
    pub fn denies_all(&self) -> bool {
        self.unknown && self.action != Action::Accept
    }

    /// An `Accept` rule with something not understood: it fails closed,
    /// matching no traffic.
    pub fn matches_nothing(&self) -> bool {
        self.unknown && self.action == Action::Accept
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPolicy {
    pub key: AdminKey,
    pub tier: Tier,
    /// 0..=1000, lower first.
    pub priority: u32,
    pub subject: Subject,
    pub ingress: Vec<AdminRule>,
    pub egress: Vec<AdminRule>,
}

impl AdminPolicy {
    pub fn rules(&self, dir: Direction) -> &[AdminRule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// The order of policies within a tier: priority, then name, then kind.
    pub fn order(&self) -> (Tier, u32, &str, AdminKind) {
        (self.tier, self.priority, &self.key.name, self.key.kind)
    }

    /// The rule's label in verdicts: `egress[2] "name"`.
    pub fn rule_label(&self, dir: Direction, index: usize) -> String {
        match self.rules(dir).get(index).and_then(|r| r.name.as_deref()) {
            Some(n) => format!("{dir}[{index}] \"{n}\""),
            None => format!("{dir}[{index}]"),
        }
    }
}
