//! The Kubernetes API source: the desired cluster from the API server.
//!
//! Design. Watchers (Namespaces, Pods, NetworkPolicies, Nodes, Services,
//! EndpointSlices, and the admin policies' CustomResources:
//! ClusterNetworkPolicies, AdminNetworkPolicies,
//! BaselineAdminNetworkPolicies) run on a tokio runtime of the source's own thread, each
//! feeding a reflector store with trimmed objects (`watch.rs`, `trim.rs`). The
//! stores are the state: a list or relist is swapped into a store whole, so
//! each store is always one complete list plus the changes since. The
//! watchers tell one loop what happened; the loop publishes the whole
//! cluster ([`build`], `cluster.rs`) as one [`Update::Cluster`]:
//!
//! - never before every kind has completed its first list (a cluster
//!   missing its policies would open traffic they deny);
//! - then after each change, debounced: the first change schedules a
//!   publish [`DEBOUNCE`] later, so a burst gives one update; a result
//!   equal to the last one sent is not sent again (pod status churn,
//!   bookmarks, node heartbeats change nothing the model holds);
//! - but a change of Services or EndpointSlices alone is published at
//!   once (at most one publish a [`DEBOUNCE`]), and rebuilds only them:
//!   the cluster, its notes and the unchanged objects' conversions are the
//!   last publish's, sent as the same shared allocations.
//!
//! Errors. A watcher that fails backs off and retries (resuming its watch
//! where it was when it can, relisting after 410 Gone). The first failure
//! while in sync sends `Sync { in_sync: false }` naming it; the stores,
//! and so the daemon's cluster, stay as they were: an error never empties
//! anything. Each kind's client reports its successful responses; once
//! every failing kind has had one, the loop publishes the cluster as it
//! then is and sends `Sync { in_sync: true }`. A 410 Gone is routine (the
//! API server's history is short): it leads to a relist and the relist's
//! cluster, without leaving sync.
//!
//! A rejected new version of an object keeps the version last published
//! (see `cluster.rs`): an edit the source cannot take never opens traffic.
//!
//! A cluster without an admin policy CRD is served without that kind: its
//! 404 counts as an empty list (`admin.rs`).
//!
//! Nodes' labels and addresses are part of the cluster model (admin
//! policies' `nodes` peers); their pod CIDRs are read from the node store
//! on demand ([`Stores::node_pod_cidrs`]).

mod admin;
mod cluster;
mod connect;
mod trim;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ::kube::Client;
use ::kube::runtime::reflector::{self, Store, store::Writer};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::manifests::Desired;
use super::source::{Source, Update};
pub use admin::{AdminNetworkPolicy, BaselineAdminNetworkPolicy, ClusterNetworkPolicy};
pub use cluster::{Converted, build, service_set};
pub use connect::{ConnectError, client, node_pod_cidrs, node_pod_cidrs_blocking};
pub use trim::Trim;
use watch::{Kind, Signal};

/// Every request the source and [`node_pod_cidrs`] make, as RBAC names
/// them: (API group, resource, verb). The ClusterRole grants exactly these.
pub const API_ACCESS: &[(&str, &str, &str)] = &[
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("networking.k8s.io", "networkpolicies", "list"),
    ("networking.k8s.io", "networkpolicies", "watch"),
    ("", "nodes", "list"),
    ("", "nodes", "watch"),
    ("", "nodes", "get"),
    ("", "services", "list"),
    ("", "services", "watch"),
    ("discovery.k8s.io", "endpointslices", "list"),
    ("discovery.k8s.io", "endpointslices", "watch"),
    ("policy.networking.k8s.io", "clusternetworkpolicies", "list"),
    (
        "policy.networking.k8s.io",
        "clusternetworkpolicies",
        "watch",
    ),
    ("policy.networking.k8s.io", "adminnetworkpolicies", "list"),
    ("policy.networking.k8s.io", "adminnetworkpolicies", "watch"),
    (
        "policy.networking.k8s.io",
        "baselineadminnetworkpolicies",
        "list",
    ),
    (
        "policy.networking.k8s.io",
        "baselineadminnetworkpolicies",
        "watch",
    ),
];

/// How long a change waits for the ones that follow it before the cluster
/// is published.
pub const DEBOUNCE: Duration = Duration::from_millis(75);
/// How often the loop looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);
/// Retrying a configuration that cannot be loaded: first and last delay.
const CONNECT_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// The watched objects as stored (trimmed), readable from any thread while
/// the source runs. A store is empty until its first list completes.
#[derive(Clone)]
pub struct Stores {
    pub namespaces: Store<Namespace>,
    pub pods: Store<Pod>,
    pub policies: Store<NetworkPolicy>,
    pub nodes: Store<Node>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub cnps: Store<ClusterNetworkPolicy>,
    pub anps: Store<AdminNetworkPolicy>,
    pub banps: Store<BaselineAdminNetworkPolicy>,
}

impl Stores {
    /// Each node's pod CIDRs (`spec.podCIDRs`, else `spec.podCIDR`; empty
    /// for a node that has none yet).
    pub fn node_pod_cidrs(&self) -> BTreeMap<String, Vec<IpNet>> {
        cluster::pod_cidrs_by_node(&self.nodes.state())
    }
}

struct Writers {
    namespaces: Writer<Namespace>,
    pods: Writer<Pod>,
    policies: Writer<NetworkPolicy>,
    nodes: Writer<Node>,
    services: Writer<Service>,
    slices: Writer<EndpointSlice>,
    cnps: Writer<ClusterNetworkPolicy>,
    anps: Writer<AdminNetworkPolicy>,
    banps: Writer<BaselineAdminNetworkPolicy>,
}

enum Origin {
    /// Load this configuration (`None`: in-cluster) when the source runs.
    Config(Option<PathBuf>),
    Client(Client),
}

/// The desired cluster from the Kubernetes API server.
pub struct KubeSource {
    origin: Origin,
    stores: Stores,
    writers: Writers,
}

impl KubeSource {
    /// A source reading the API server of `kubeconfig` (its current
    /// context), or with `None` the in-cluster configuration. The
    /// configuration is loaded when the source runs; while it cannot be,
    /// the source reports being out of sync and retries.
    pub fn new(kubeconfig: Option<PathBuf>) -> KubeSource {
        KubeSource::with_origin(Origin::Config(kubeconfig))
    }

    /// A source using `client` (tests give a mocked one). The client's
    /// request queue runs on the runtime it was made on, which must keep
    /// running.
    pub fn with_client(client: Client) -> KubeSource {
        KubeSource::with_origin(Origin::Client(client))
    }

    fn with_origin(origin: Origin) -> KubeSource {
        let (namespaces, ns_w) = reflector::store();
        let (pods, pods_w) = reflector::store();
        let (policies, policies_w) = reflector::store();
        let (nodes, nodes_w) = reflector::store();
        let (services, services_w) = reflector::store();
        let (slices, slices_w) = reflector::store();
        let (cnps, cnps_w) = reflector::store();
        let (anps, anps_w) = reflector::store();
        let (banps, banps_w) = reflector::store();
        KubeSource {
            origin,
            stores: Stores {
                namespaces,
                pods,
                policies,
                nodes,
                services,
                slices,
                cnps,
                anps,
                banps,
            },
            writers: Writers {
                namespaces: ns_w,
                pods: pods_w,
                policies: policies_w,
                nodes: nodes_w,
                services: services_w,
                slices: slices_w,
                cnps: cnps_w,
                anps: anps_w,
                banps: banps_w,
            },
        }
    }

    /// The stores this source fills (take them before running it).
    pub fn stores(&self) -> Stores {
        self.stores.clone()
    }
}

impl Source for KubeSource {
    fn run(self: Box<Self>, send: &dyn Fn(Update) -> bool, stop: &AtomicBool) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                send(Update::Sync {
                    in_sync: false,
                    message: format!("Kubernetes source: tokio runtime: {e}"),
                });
                return;
            }
        };
        rt.block_on(serve(*self, send, stop));
    }
}

/// What the loop knows: which kinds have listed, which are failing, whether
/// the daemon was told of a failure, and what it was sent last.
struct Progress {
    listed: [bool; Kind::ALL.len()],
    failing: [Option<String>; Kind::ALL.len()],
    /// `Sync { in_sync: false }` was sent and not yet undone.
    out_of_sync: bool,
    /// A publish is due then.
    due: Option<Instant>,
    /// ... for a change of the cluster's kinds (not Services alone).
    due_for_cluster: bool,
    /// The last publish.
    published: Option<Instant>,
    last: Option<Desired>,
    /// Conversions kept from the last publish (`cluster.rs`).
    converted: cluster::Converted,
    /// The kinds changed since the last publish.
    dirty: [bool; Kind::ALL.len()],
    /// The last publish's notes and stale count about Services and
    /// EndpointSlices.
    service_notes: Vec<String>,
    service_stale: usize,
    /// The cluster last sent (sent again, the same allocation, while it
    /// does not change).
    sent: Option<Arc<policy::Cluster>>,
}

/// Whether to go on (`send` refused the update: the daemon is gone).
type Go = bool;

async fn serve(source: KubeSource, send: &dyn Fn(Update) -> bool, stop: &AtomicBool) {
    let mut progress = Progress {
        listed: [false; Kind::ALL.len()],
        failing: Default::default(),
        out_of_sync: false,
        due: None,
        due_for_cluster: false,
        published: None,
        last: None,
        converted: Default::default(),
        dirty: Default::default(),
        service_notes: Vec::new(),
        service_stale: 0,
        sent: None,
    };
    let client = match source.origin {
        Origin::Client(c) => c,
        Origin::Config(path) => match connect_retrying(path, &mut progress, send, stop).await {
            Some(c) => c,
            None => return,
        },
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let w = source.writers;
    watch::spawn(&client, Kind::Namespaces, w.namespaces, tx.clone());
    watch::spawn(&client, Kind::Pods, w.pods, tx.clone());
    watch::spawn(&client, Kind::NetworkPolicies, w.policies, tx.clone());
    watch::spawn(&client, Kind::Nodes, w.nodes, tx.clone());
    watch::spawn(&client, Kind::Services, w.services, tx.clone());
    watch::spawn(&client, Kind::EndpointSlices, w.slices, tx.clone());
    watch::spawn(&client, Kind::ClusterNetworkPolicies, w.cnps, tx.clone());
    watch::spawn(&client, Kind::AdminNetworkPolicies, w.anps, tx.clone());
    watch::spawn(&client, Kind::BaselineAdminNetworkPolicies, w.banps, tx);
    let mut tick = tokio::time::interval(STOP_POLL);
    loop {
        let due = progress.due;
        let go = tokio::select! {
            signal = rx.recv() => match signal {
                Some(s) => progress.take(s, send),
                None => false,
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                progress.publish(&source.stores, send)
            }
            _ = tick.tick() => !stop.load(Ordering::Relaxed),
        };
        if !go || stop.load(Ordering::Relaxed) {
            // Dropping the runtime (in `run`) ends the watchers.
            return;
        }
    }
}

/// Loads the configuration and makes the client, retrying with backoff
/// while it fails; `None` when stopped.
async fn connect_retrying(
    path: Option<PathBuf>,
    progress: &mut Progress,
    send: &dyn Fn(Update) -> bool,
    stop: &AtomicBool,
) -> Option<Client> {
    let mut delay = CONNECT_RETRY.0;
    loop {
        match connect::client(path.as_deref()).await {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::debug!("Kubernetes source: {e}");
                if !progress.out_of_sync {
                    progress.out_of_sync = true;
                    let sent = send(Update::Sync {
                        in_sync: false,
                        message: format!("Kubernetes API: {e}"),
                    });
                    if !sent {
                        return None;
                    }
                }
            }
        }
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            tokio::time::sleep(STOP_POLL).await;
        }
        delay = (delay * 2).min(CONNECT_RETRY.1);
    }
}

/// An error with its causes: kube's and hyper's messages leave the cause
/// out ("client error (Connect)") where the operator wants "Connection
/// refused".
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    // Each client layer wraps a body error once more.
    while text.contains("ServiceError: ServiceError: ") {
        text = text.replace("ServiceError: ServiceError: ", "ServiceError: ");
    }
    text
}

impl Progress {
    /// Schedules a publish for a change of kind `k`: a change to the
    /// cluster's kinds [`DEBOUNCE`] later (a policy deleted and created
    /// again, say, never shows its gap); a change of Services or
    /// EndpointSlices alone at once, or [`DEBOUNCE`] after the last publish
    /// (an endpoint's change reaches the switch without waiting, and a
    /// burst still gives one publish a period).
    fn schedule(&mut self, k: Kind) {
        let now = Instant::now();
        if matches!(k, Kind::Services | Kind::EndpointSlices) {
            if self.due.is_none() {
                let next = self.published.map_or(now, |p| (p + DEBOUNCE).max(now));
                self.due = Some(next);
            }
        } else if !self.due_for_cluster {
            self.due_for_cluster = true;
            self.due = Some(self.due.map_or(now + DEBOUNCE, |d| d.max(now + DEBOUNCE)));
        }
    }

    fn take(&mut self, signal: Signal, send: &dyn Fn(Update) -> bool) -> Go {
        match signal {
            Signal::Reached(k) => {
                if self.failing[k.index()].take().is_some() {
                    tracing::debug!("Kubernetes API: {} reachable again", k.name());
                    self.schedule(k);
                }
            }
            Signal::Listed(k) => {
                self.listed[k.index()] = true;
                self.dirty[k.index()] = true;
                self.schedule(k);
            }
            Signal::Absent(k, code) => {
                // no CRD, or no permission yet: an empty kind (logged once,
                // at the first list)
                if !self.listed[k.index()] {
                    if code == 403 {
                        tracing::warn!(
                            "Kubernetes API: {} are forbidden to vswitch (re-apply deploy/rbac.yaml); going on without them",
                            k.name()
                        );
                    } else {
                        tracing::info!(
                            "Kubernetes API: {} are not served (their CRD is not installed); going on without them",
                            k.name()
                        );
                    }
                    self.listed[k.index()] = true;
                    self.dirty[k.index()] = true;
                    self.schedule(k);
                }
                if self.failing[k.index()].take().is_some() {
                    self.schedule(k);
                }
            }
            Signal::Changed(k) => {
                self.dirty[k.index()] = true;
                self.schedule(k);
            }
            Signal::Expired(k) => {
                tracing::debug!("Kubernetes API: the {} watch expired; relisting", k.name());
            }
            Signal::Failed(k, e) => {
                tracing::debug!("Kubernetes API: {}: {e}", k.name());
                let message = format!("Kubernetes API: {}: {e}", k.name());
                self.failing[k.index()] = Some(e);
                if !self.out_of_sync {
                    self.out_of_sync = true;
                    return send(Update::Sync {
                        in_sync: false,
                        message,
                    });
                }
            }
        }
        true
    }

    /// Sends the cluster if every kind has listed and it changed (or the
    /// source is coming back in sync), then the return to sync if every
    /// kind is healthy.
    fn publish(&mut self, stores: &Stores, send: &dyn Fn(Update) -> bool) -> Go {
        self.due = None;
        self.due_for_cluster = false;
        if !self.listed.iter().all(|l| *l) {
            return true;
        }
        self.published = Some(Instant::now());
        let healthy = self.failing.iter().all(Option::is_none);
        let recovered = self.out_of_sync && healthy;
        // Only Services or EndpointSlices changed (the common update: an
        // endpoint's conditions): the cluster is the last one, not rebuilt.
        let services_only = !recovered
            && self.last.is_some()
            && Kind::ALL.iter().all(|k| {
                !self.dirty[k.index()] || matches!(k, Kind::Services | Kind::EndpointSlices)
            });
        self.dirty = Default::default();
        let last = self.last.take();
        let last_notes = last.as_ref().map(|l| l.notes.clone()).unwrap_or_default();
        let last_services = last.as_ref().map(|l| l.services.clone());
        let (mut now, cluster_changed) = match last {
            Some(mut now) if services_only => {
                // the last cluster and its notes, without the last
                // Services' notes
                now.notes.retain(|n| !self.service_notes.contains(n));
                now.stale -= self.service_stale;
                (now, false)
            }
            last => {
                let admin = cluster::AdminStores {
                    cnps: &stores.cnps.state(),
                    anps: &stores.anps.state(),
                    banps: &stores.banps.state(),
                };
                let mut now = build(
                    &stores.namespaces.state(),
                    &stores.pods.state(),
                    &stores.policies.state(),
                    &stores.nodes.state(),
                    &admin,
                    last.as_ref(),
                );
                let changed = !last
                    .as_ref()
                    .is_some_and(|l| l.cluster == now.cluster && l.nodes == now.nodes);
                now.services = last.map(|l| l.services).unwrap_or_default();
                (now, changed)
            }
        };
        // The Services, converted anew only where their objects changed; a
        // rejected one keeps its version of the last publish (`now` holds
        // the last set until it is replaced).
        let (mut notes, mut stale) = (Vec::new(), 0);
        let set = cluster::service_set(
            &stores.services.state(),
            &stores.slices.state(),
            last_services.is_some().then_some(&now),
            &mut self.converted,
            &mut notes,
            &mut stale,
        );
        now.services = set;
        now.notes.extend(notes.iter().cloned());
        now.notes.sort();
        now.stale += stale;
        (self.service_notes, self.service_stale) = (notes, stale);
        if cluster_changed || self.sent.is_none() {
            // the daemon gets the last cluster's allocation while it is the
            // same
            self.sent = Some(Arc::new(now.cluster.clone()));
        }
        let changed = cluster_changed
            || last_services.as_ref() != Some(&now.services)
            || now.notes != last_notes;
        if changed || recovered {
            // Rejections first seen now (a note repeats while it holds).
            let rejected = now.notes.iter().filter(|n| !last_notes.contains(n)).count();
            let update = Update::Cluster {
                cluster: self.sent.clone().unwrap_or_default(),
                services: now.services.clone(),
                nodes: now.nodes.clone(),
                notes: now.notes.clone(),
                stale: now.stale,
                rejected,
            };
            self.last = Some(now);
            if !send(update) {
                return false;
            }
        } else {
            self.last = Some(now);
        }
        if recovered {
            self.out_of_sync = false;
            let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            return send(Update::Sync {
                in_sync: true,
                message: format!("Kubernetes API: watching {} again", names.join(", ")),
            });
        }
        true
    }
}
