//! The desired cluster from the stored API objects: the conversions of
//! `policy::k8s`, one note per object left out, and the per-node pod CIDRs.
//!
//! An object whose current version is rejected keeps the version the last
//! published cluster had (`last`): a rejected edit never removes a policy,
//! so never opens what it isolated. It is noted ("keeping its last valid
//! version") and counted as stale. An object deleted from the API is gone,
//! whatever its last version was.
//!
//! The result is the same whatever order the stores list their objects in:
//! objects are taken in key order, and when two pods claim one address the
//! one that keeps it is decided by the pods themselves (see [`build`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use policy::admin_k8s::admin_policy_from_k8s;
use policy::k8s::{
    PodConversion, endpoint_slice_from_k8s, namespace_from_k8s, node_from_k8s, pod_from_k8s,
    policy_from_k8s, service_from_k8s,
};
use policy::{Cluster, NodeInfo, PodKey, PolicyKey};
use rustc_hash::FxHashMap;

use super::admin::{
    AdminNetworkPolicy, AdminResource, BaselineAdminNetworkPolicy, ClusterNetworkPolicy,
};
use crate::daemon::manifests::{Desired, ensure_namespace};
use crate::daemon::source::ServiceSet;

/// The Cluster the objects describe, and a note for each object left out
/// (a NetworkPolicy the API server would have refused, a pod claiming an
/// address another pod has).
///
/// Host-network pods are not part of the model (they have the node's
/// addresses), nor are pods that have finished (phase Succeeded or Failed:
/// their addresses are free for new pods while the objects remain). When
/// two pods claim one address, a pod being deleted gives way to one that
/// is not, then the older pod keeps it; the other is left out with a note.
/// An object rejected now that `last` holds keeps its version there.
/// Services and EndpointSlices are left to [`service_set`].
pub fn build(
    namespaces: &[Arc<Namespace>],
    pods: &[Arc<Pod>],
    policies: &[Arc<NetworkPolicy>],
    nodes: &[Arc<Node>],
    admin: &AdminStores<'_>,
    last: Option<&Desired>,
) -> Desired {
    let mut cluster = Cluster::default();
    let mut notes = Vec::new();
    let mut stale = 0;
    let last_cluster = last.map(|l| &l.cluster);

    for ns in namespaces {
        match namespace_from_k8s(ns) {
            Ok(n) => {
                cluster.namespaces.insert(n.name.clone(), n);
            }
            Err(e) => {
                let kept = ns
                    .metadata
                    .name
                    .as_ref()
                    .and_then(|n| last_cluster?.namespaces.get(n));
                reject(&mut notes, &mut stale, &e, kept.is_some());
                if let Some(n) = kept {
                    cluster.namespaces.insert(n.name.clone(), n.clone());
                }
            }
        }
    }

    // (being deleted, created, key): the order in which pods claim addresses.
    let mut running = Vec::new();
    for p in pods {
        if finished(p) {
            continue;
        }
        match pod_from_k8s(p) {
            Ok(PodConversion::Pod(pod)) => {
                let m = &p.metadata;
                let rank = (
                    m.deletion_timestamp.is_some(),
                    m.creation_timestamp.clone(),
                    pod.key.clone(),
                );
                running.push((rank, pod));
            }
            Ok(PodConversion::HostNetwork(_)) => {}
            Err(e) => {
                let kept = key_of(&p.metadata).and_then(|k| last_cluster?.pods.get(&k));
                reject(&mut notes, &mut stale, &e, kept.is_some());
                if let Some(pod) = kept {
                    let m = &p.metadata;
                    let rank = (
                        m.deletion_timestamp.is_some(),
                        m.creation_timestamp.clone(),
                        pod.key.clone(),
                    );
                    running.push((rank, pod.clone()));
                }
            }
        }
    }
    running.sort_by(|a, b| a.0.cmp(&b.0));
    let mut owner: BTreeMap<IpAddr, PodKey> = BTreeMap::new();
    for (_, pod) in running {
        if let Some((ip, o)) = pod.ips.iter().find_map(|ip| Some((ip, owner.get(ip)?))) {
            notes.push(format!(
                "rejected: Pod {}: status.podIPs: {ip} is already used by Pod {o}",
                pod.key
            ));
            continue;
        }
        for ip in &pod.ips {
            owner.insert(*ip, pod.key.clone());
        }
        ensure_namespace(&mut cluster, &pod.key.namespace);
        cluster.pods.insert(pod.key.clone(), pod);
    }

    for np in policies {
        match policy_from_k8s(np) {
            Ok(p) => {
                ensure_namespace(&mut cluster, &p.key.namespace);
                cluster.policies.insert(p.key.clone(), p);
            }
            Err(e) => {
                let kept = key_of(&np.metadata).and_then(|k| {
                    last_cluster?
                        .policies
                        .get(&PolicyKey::new(k.namespace, k.name))
                });
                reject(&mut notes, &mut stale, &e, kept.is_some());
                if let Some(p) = kept {
                    ensure_namespace(&mut cluster, &p.key.namespace);
                    cluster.policies.insert(p.key.clone(), p.clone());
                }
            }
        }
    }
    let mut out_nodes = Vec::new();
    for n in nodes {
        match node_from_k8s(n) {
            Ok(n) => out_nodes.push(n),
            Err(e) => {
                let kept = n
                    .metadata
                    .name
                    .as_ref()
                    .and_then(|name| last?.nodes.iter().find(|m| &m.name == name));
                reject(&mut notes, &mut stale, &e, kept.is_some());
                if let Some(m) = kept {
                    out_nodes.push(m.clone());
                }
            }
        }
    }
    out_nodes.sort();
    cluster.nodes = out_nodes
        .iter()
        .map(|n| (n.name.clone(), NodeInfo::from(n)))
        .collect();
    admin_policies(
        admin.cnps,
        &mut cluster,
        last_cluster,
        &mut notes,
        &mut stale,
    );
    admin_policies(
        admin.anps,
        &mut cluster,
        last_cluster,
        &mut notes,
        &mut stale,
    );
    admin_policies(
        admin.banps,
        &mut cluster,
        last_cluster,
        &mut notes,
        &mut stale,
    );
    notes.sort();
    Desired {
        cluster,
        services: ServiceSet::default(),
        nodes: out_nodes,
        notes,
        stale,
        rejected: 0,
    }
}

/// The stored admin policies of the three kinds.
pub struct AdminStores<'a> {
    pub cnps: &'a [Arc<ClusterNetworkPolicy>],
    pub anps: &'a [Arc<AdminNetworkPolicy>],
    pub banps: &'a [Arc<BaselineAdminNetworkPolicy>],
}

/// One admin kind's policies into the cluster; one the API server's schema
/// would have refused (or that uses what vswitch does not implement) keeps
/// its last valid version. Read from the API server, so a peer or protocol
/// left empty by pruning fails closed.
fn admin_policies<K: AdminResource>(
    objects: &[Arc<K>],
    cluster: &mut Cluster,
    last: Option<&Cluster>,
    notes: &mut Vec<String>,
    stale: &mut usize,
) {
    for o in objects {
        match admin_policy_from_k8s(K::API_VERSION, K::KIND, o.metadata(), o.spec(), true) {
            Ok((p, warnings)) => {
                // what a rule could not take: the rule fails closed
                for w in warnings {
                    notes.push(format!(
                        "applied failing closed: {w}; the rule holding it matches no traffic (Accept) or denies all (Deny, Pass)"
                    ));
                }
                cluster.admin_policies.insert(p.key.clone(), p);
            }
            Err(e) => {
                let kept = o.metadata().name.as_ref().and_then(|name| {
                    let kind = policy::AdminKind::parse(K::KIND)?;
                    last?.admin_policies.get(&policy::AdminKey::new(kind, name))
                });
                reject(notes, stale, &e, kept.is_some());
                if let Some(p) = kept {
                    cluster.admin_policies.insert(p.key.clone(), p.clone());
                }
            }
        }
    }
}

/// The Services and EndpointSlices converted at the last publish, by the
/// stored object they came from (held, so that its address stays its own):
/// an object the store still holds unchanged is not converted again, and
/// its conversion is the same allocation as before, which the daemon
/// compares by address. (Keyed by the objects' addresses, which no client
/// of the API server chooses: a plain fast hash.)
#[derive(Default)]
pub struct Converted {
    services: FxHashMap<usize, (Arc<Service>, Arc<policy::Service>)>,
    slices: FxHashMap<usize, (Arc<EndpointSlice>, Arc<policy::EndpointSlice>)>,
}

/// `from`'s conversion: the last one if `from` is the object it came from,
/// else a new one; kept in `next` either way.
fn convert<K, T, E>(
    from: &Arc<K>,
    last: &FxHashMap<usize, (Arc<K>, Arc<T>)>,
    next: &mut FxHashMap<usize, (Arc<K>, Arc<T>)>,
    f: impl Fn(&K) -> Result<T, E>,
) -> Result<Arc<T>, E> {
    let key = Arc::as_ptr(from) as usize;
    let t = match last.get(&key) {
        Some((k, t)) if Arc::ptr_eq(k, from) => t.clone(),
        _ => Arc::new(f(from)?),
    };
    next.insert(key, (from.clone(), t.clone()));
    Ok(t)
}

/// The Services and their EndpointSlices, in the stores' order (which
/// stays while the objects do; the daemon finds changes by key); one the
/// API server would have refused keeps its last valid version, as policies
/// do. Not sorted: at 10,000 Services sorting cost more than the rest of a
/// publish.
pub fn service_set(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    last: Option<&Desired>,
    converted: &mut Converted,
    notes: &mut Vec<String>,
    stale: &mut usize,
) -> ServiceSet {
    let mut set = ServiceSet::default();
    let mut next = Converted {
        services: FxHashMap::with_capacity_and_hasher(services.len(), Default::default()),
        slices: FxHashMap::with_capacity_and_hasher(slices.len(), Default::default()),
    };
    // the last versions by key, made at the first rejection (so that many
    // rejected objects cost a lookup each, not a search of the last set)
    let mut last_services: Option<HashMap<&PodKey, &Arc<policy::Service>>> = None;
    let mut last_slices: Option<HashMap<&PodKey, &Arc<policy::EndpointSlice>>> = None;
    for s in services {
        match convert(s, &converted.services, &mut next.services, service_from_k8s) {
            Ok(s) => set.services.push(s),
            Err(e) => {
                let key = key_of(&s.metadata);
                let by_key = last_services.get_or_insert_with(|| {
                    let all = last.map(|l| l.services.services.as_slice()).unwrap_or(&[]);
                    all.iter().map(|s| (&s.key, s)).collect()
                });
                let kept = key.as_ref().and_then(|k| by_key.get(k).copied());
                reject(notes, stale, &e, kept.is_some());
                set.services.extend(kept.cloned());
            }
        }
    }
    for s in slices {
        match convert(
            s,
            &converted.slices,
            &mut next.slices,
            endpoint_slice_from_k8s,
        ) {
            Ok(s) => set.slices.push(s),
            Err(e) => {
                let key = key_of(&s.metadata);
                let by_key = last_slices.get_or_insert_with(|| {
                    let all = last.map(|l| l.services.slices.as_slice()).unwrap_or(&[]);
                    all.iter().map(|s| (&s.key, s)).collect()
                });
                let kept = key.as_ref().and_then(|k| by_key.get(k).copied());
                reject(notes, stale, &e, kept.is_some());
                set.slices.extend(kept.cloned());
            }
        }
    }
    *converted = next;
    set
}

/// Notes a rejection, and whether the last valid version is kept.
fn reject(notes: &mut Vec<String>, stale: &mut usize, e: &dyn std::fmt::Display, kept: bool) {
    if kept {
        *stale += 1;
        notes.push(format!("rejected: {e}; keeping its last valid version"));
    } else {
        notes.push(format!("rejected: {e}"));
    }
}

/// A namespaced object's key (`default` when metadata omits the namespace).
fn key_of(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<PodKey> {
    let name = m.name.as_deref().filter(|n| !n.is_empty())?;
    Some(PodKey::new(
        m.namespace.as_deref().unwrap_or("default"),
        name,
    ))
}

/// A pod whose containers have all ended for good: it holds no address.
fn finished(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// A node's pod CIDRs: `spec.podCIDRs`, else `spec.podCIDR`; empty when
/// none is allocated yet.
pub fn node_pod_cidrs(node: &Node) -> Result<Vec<IpNet>, String> {
    node_from_k8s(node)
        .map(|n| n.pod_cidrs)
        .map_err(|e| e.to_string())
}

/// Every node's pod CIDRs (nodes whose CIDRs do not parse are left out).
pub fn pod_cidrs_by_node(nodes: &[Arc<Node>]) -> BTreeMap<String, Vec<IpNet>> {
    let mut out = BTreeMap::new();
    for n in nodes {
        let Some(name) = n.metadata.name.clone() else {
            continue;
        };
        match node_pod_cidrs(n) {
            Ok(cidrs) => {
                out.insert(name, cidrs);
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }
    out
}
