//! The slow, obviously correct evaluator, written straight from the
//! NetworkPolicy API reference. It scans every policy for every question and
//! shares no code with the compiler beyond the model types and the selector
//! and port matching primitives. Property tests hold the compiled engine to it.
//!
//! From the reference:
//! - a pod is isolated for ingress (egress) if any policy in its namespace
//!   selects it and has Ingress (Egress) in its policyTypes;
//! - traffic is allowed into an isolated pod if any rule of any such policy
//!   allows it (policies are additive); the same for out of it;
//! - a connection needs the source's egress and the destination's ingress;
//! - a rule matches when one of its peers matches (no peers: every peer) and
//!   one of its ports matches (no ports: every port);
//! - a peer with podSelector alone selects pods in the policy's namespace,
//!   with namespaceSelector pods in matching namespaces (AND podSelector);
//!   an ipBlock matches addresses in the cidr and not in any except;
//! - named ports are resolved on the destination pod.
//!
//! And from the network-policy-api reference (ClusterNetworkPolicy,
//! AdminNetworkPolicy, BaselineAdminNetworkPolicy):
//! - each side is decided by the Admin tier, then NetworkPolicy, then the
//!   Baseline tier, then allowed by default;
//! - in a tier, the policies whose subject selects the pod are taken by
//!   priority (then name, then kind), their rules in order; the first rule
//!   with a matching peer and port decides: Accept, Deny, or Pass (on to
//!   the next tier);
//! - `networks` match any address in them, pods' too; `nodes` the
//!   addresses of the selected Nodes; a peer or protocol not understood
//!   makes an Accept rule match nothing, and a Deny or Pass rule deny
//!   everything.

use crate::admin::{Action, AdminPeer, AdminPolicy, Tier};
use crate::model::{Cluster, Pod};
use crate::netpol::{Direction, NamespaceScope, Peer, Policy};
use crate::verdict::{Explanation, Flow, Reason};
use std::net::IpAddr;

/// Evaluates a new connection against the whole cluster.
pub fn evaluate(cluster: &Cluster, flow: &Flow) -> Explanation {
    let src = cluster.pod_by_ip(flow.src);
    let dst = cluster.pod_by_ip(flow.dst);
    Explanation {
        egress: tiers(cluster, Direction::Egress, src, flow.dst, dst, flow),
        ingress: tiers(cluster, Direction::Ingress, dst, flow.src, src, flow),
    }
}

/// One side through the tiers: Admin, NetworkPolicy, Baseline, default.
fn tiers(
    cluster: &Cluster,
    dir: Direction,
    subject: Option<&Pod>,
    peer_ip: IpAddr,
    peer: Option<&Pod>,
    flow: &Flow,
) -> Reason {
    let Some(pod) = subject else {
        return Reason::NotAPod;
    };
    if let Some(r) = admin_tier(cluster, Tier::Admin, dir, pod, peer_ip, peer, flow) {
        return r;
    }
    let np = side(cluster, dir, subject, peer_ip, peer, flow);
    if np != Reason::NotIsolated {
        return np;
    }
    admin_tier(cluster, Tier::Baseline, dir, pod, peer_ip, peer, flow).unwrap_or(np)
}

/// The decision of one tier's policies selecting `pod`, `None` when no rule
/// matched or a Pass rule did.
fn admin_tier(
    cluster: &Cluster,
    tier: Tier,
    dir: Direction,
    pod: &Pod,
    peer_ip: IpAddr,
    peer: Option<&Pod>,
    flow: &Flow,
) -> Option<Reason> {
    let no_labels = Default::default();
    let ns_labels = cluster
        .namespace_labels(&pod.key.namespace)
        .unwrap_or(&no_labels);
    let mut policies: Vec<&AdminPolicy> = cluster
        .admin_policies
        .values()
        .filter(|p| p.tier == tier && p.subject.selects(ns_labels, &pod.labels))
        .collect();
    policies.sort_by(|a, b| a.order().cmp(&b.order()));
    let dst_pod = match dir {
        Direction::Ingress => Some(pod),
        Direction::Egress => peer,
    };
    for policy in policies {
        for (i, rule) in policy.rules(dir).iter().enumerate() {
            if rule.denies_all() {
                return Some(Reason::Admin {
                    tier,
                    policy: policy.key.clone(),
                    rule: i,
                    name: rule.name.clone(),
                    action: Action::Deny,
                });
            }
            if rule.matches_nothing() {
                continue;
            }
            let peer_ok = rule
                .peers
                .iter()
                .any(|p| admin_peer_matches(cluster, p, peer_ip, peer));
            let port_ok = rule.ports.as_ref().is_none_or(|ports| {
                ports.iter().any(|p| {
                    p.matches(
                        flow.protocol,
                        flow.dst_port,
                        dst_pod.map(|d| d.ports.as_slice()),
                    )
                })
            });
            if peer_ok && port_ok {
                return match rule.action {
                    Action::Pass => None,
                    action => Some(Reason::Admin {
                        tier,
                        policy: policy.key.clone(),
                        rule: i,
                        name: rule.name.clone(),
                        action,
                    }),
                };
            }
        }
    }
    None
}

fn admin_peer_matches(cluster: &Cluster, peer: &AdminPeer, ip: IpAddr, pod: Option<&Pod>) -> bool {
    let ns_matches = |pod: &Pod, sel: &crate::labels::Selector| {
        cluster
            .namespace_labels(&pod.key.namespace)
            .is_some_and(|l| sel.matches(l))
    };
    match peer {
        AdminPeer::Namespaces(sel) => pod.is_some_and(|p| ns_matches(p, sel)),
        AdminPeer::Pods { namespaces, pods } => {
            pod.is_some_and(|p| ns_matches(p, namespaces) && pods.matches(&p.labels))
        }
        AdminPeer::Networks(nets) => nets.iter().any(|n| n.contains(&ip)),
        AdminPeer::Nodes(sel) => cluster
            .nodes
            .values()
            .any(|n| sel.matches(&n.labels) && n.addresses.contains(&ip)),
    }
}

/// The decision of `subject`'s policies for `dir` about traffic with
/// `peer_ip` (the pod `peer`, if it is one).
fn side(
    cluster: &Cluster,
    dir: Direction,
    subject: Option<&Pod>,
    peer_ip: IpAddr,
    peer: Option<&Pod>,
    flow: &Flow,
) -> Reason {
    let Some(subject) = subject else {
        return Reason::NotAPod;
    };
    // BTreeMap order: policies sorted by namespace/name; rules by index.
    let selecting: Vec<&Policy> = cluster
        .policies
        .values()
        .filter(|p| p.selects(&subject.key.namespace, &subject.labels) && p.rules(dir).is_some())
        .collect();
    if selecting.is_empty() {
        return Reason::NotIsolated;
    }
    // The destination of the flow is where named ports are looked up.
    let dst_pod = match dir {
        Direction::Ingress => Some(subject),
        Direction::Egress => peer,
    };
    for policy in &selecting {
        for (i, rule) in policy.rules(dir).unwrap_or_default().iter().enumerate() {
            let peer_ok = rule.peers.is_empty()
                || rule
                    .peers
                    .iter()
                    .any(|p| peer_matches(cluster, p, peer_ip, peer));
            let port_ok = rule.ports_match(
                flow.protocol,
                flow.dst_port,
                dst_pod.map(|p| p.ports.as_slice()),
            );
            if peer_ok && port_ok {
                return Reason::Allowed {
                    policy: policy.key.clone(),
                    rule: i,
                };
            }
        }
    }
    Reason::Denied {
        isolated_by: selecting.iter().map(|p| p.key.clone()).collect(),
    }
}

fn peer_matches(cluster: &Cluster, peer: &Peer, ip: IpAddr, pod: Option<&Pod>) -> bool {
    match peer {
        Peer::IpBlock(block) => block.contains(ip),
        Peer::Pods { namespaces, pods } => {
            let Some(pod) = pod else { return false };
            let ns_ok = match namespaces {
                NamespaceScope::Own(ns) => &pod.key.namespace == ns,
                NamespaceScope::Selector(sel) => cluster
                    .namespace_labels(&pod.key.namespace)
                    .is_some_and(|labels| sel.matches(labels)),
            };
            ns_ok && pods.matches(&pod.labels)
        }
    }
}
