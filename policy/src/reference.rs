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

use crate::model::{Cluster, Pod};
use crate::netpol::{Direction, NamespaceScope, Peer, Policy};
use crate::verdict::{Explanation, Flow, Reason};
use std::net::IpAddr;

/// Evaluates a new connection against the whole cluster.
pub fn evaluate(cluster: &Cluster, flow: &Flow) -> Explanation {
    let src = cluster.pod_by_ip(flow.src);
    let dst = cluster.pod_by_ip(flow.dst);
    Explanation {
        egress: side(cluster, Direction::Egress, src, flow.dst, dst, flow),
        ingress: side(cluster, Direction::Ingress, dst, flow.src, src, flow),
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
