//! The Kubernetes API source against a fake API server, through kube's
//! documented mocking (`tower_test::mock::pair` behind `kube::Client::new`).
//!
//! The fake answers as the API server does: lists (`kind: PodList`, items
//! without kind/apiVersion, `metadata.resourceVersion`), watches as
//! newline-delimited events from a resourceVersion (replaying what happened
//! since, or a 410 Expired error when that version is compacted away),
//! BOOKMARK events, single-object GETs, error Statuses, and connections
//! that break.
//!
//! The fake itself is in `fake_api/` (the server) and
//! `fake_api/objects.rs` (the objects it serves).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use policy::{Cluster, PodKey, PolicyKey};
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::timeout;
use vswitch::daemon::kube::{
    API_ACCESS, KubeSource, Stores, node_pod_cidrs, node_pod_cidrs_blocking,
};
use vswitch::daemon::source::{Source, Update};

mod fake_api;
use fake_api::objects::*;
use fake_api::*;

fn describe(u: &Update) -> String {
    match u {
        Update::Cluster { cluster, notes, .. } => format!(
            "Cluster({} namespaces, pods {:?}, policies {:?}, notes {notes:?})",
            cluster.namespaces.len(),
            cluster
                .pods
                .keys()
                .map(|k| k.to_string())
                .collect::<Vec<_>>(),
            cluster
                .policies
                .keys()
                .map(|k| format!("{}/{}", k.namespace, k.name))
                .collect::<Vec<_>>(),
        ),
        Update::Sync { in_sync, message } => format!("Sync({in_sync}, {message})"),
    }
}

/// The source running on a thread of its own, as the daemon runs it.
struct Running {
    updates: UnboundedReceiver<Update>,
    stores: Stores,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(source: KubeSource) -> Running {
        let stores = source.stores();
        let (tx, updates) = unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            Box::new(source).run(&|u| tx.send(u).is_ok(), &flag);
        });
        Running {
            updates,
            stores,
            stop,
            thread: Some(thread),
        }
    }

    fn on(fake: &Fake) -> Running {
        Running::start(KubeSource::with_client(client(fake)))
    }

    async fn next_within(&mut self, limit: Duration) -> Update {
        timeout(limit, self.updates.recv())
            .await
            .unwrap_or_else(|_| panic!("no update within {limit:?}"))
            .expect("the source is running")
    }

    async fn next(&mut self) -> Update {
        self.next_within(PROMPT).await
    }

    async fn cluster(&mut self) -> (Cluster, Vec<String>) {
        match self.next().await {
            Update::Cluster { cluster, notes, .. } => (Arc::unwrap_or_clone(cluster), notes),
            u => panic!("expected a cluster, got {}", describe(&u)),
        }
    }

    async fn sync(&mut self) -> (bool, String) {
        match self.next().await {
            Update::Sync { in_sync, message } => (in_sync, message),
            u => panic!("expected a Sync, got {}", describe(&u)),
        }
    }

    async fn quiet(&mut self) {
        if let Ok(Some(u)) = timeout(QUIET, self.updates.recv()).await {
            panic!("expected nothing, got {}", describe(&u));
        }
    }

    /// Stops the source and waits for its thread (it looks at the flag
    /// every 100 ms).
    async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take().expect("running");
        let joined = tokio::task::spawn_blocking(move || t.join());
        timeout(PROMPT, joined)
            .await
            .expect("the source stops promptly")
            .expect("join")
            .expect("the source thread did not panic");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pk(ns: &str, name: &str) -> PodKey {
    PodKey::new(ns, name)
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().expect("ip")).collect()
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().expect("cidr")).collect()
}

fn labels(c: &Cluster, ns: &str, name: &str) -> BTreeMap<String, String> {
    c.pods
        .get(&pk(ns, name))
        .unwrap_or_else(|| panic!("pod {ns}/{name} in the cluster"))
        .labels
        .clone()
        .into_iter()
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Starts the source on the standard objects and takes its first cluster.
async fn started() -> (Fake, Running, Cluster) {
    let fake = Fake::new(objects());
    let mut run = Running::on(&fake);
    let (c, _) = run.cluster().await;
    fake.watching(&KINDS, 1).await;
    (fake, run, c)
}

// ---- the tests ----

#[tokio::test]
async fn initial_lists_give_one_complete_cluster() {
    let fake = Fake::new(objects());
    let mut run = Running::on(&fake);
    let (c, notes) = run.cluster().await;

    assert_eq!(
        c.namespaces.keys().collect::<Vec<_>>(),
        ["default", "ghost", "prod"],
        "the Namespace objects, and ghost (a pod's) with its automatic label"
    );
    assert_eq!(
        c.namespaces["prod"]
            .labels
            .clone()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        map(&[("kubernetes.io/metadata.name", "prod"), ("team", "a")])
    );
    assert_eq!(
        c.namespaces["ghost"]
            .labels
            .clone()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        map(&[("kubernetes.io/metadata.name", "ghost")])
    );

    assert_eq!(
        c.pods.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
        ["ghost/lost", "prod/db", "prod/web"],
        "no host-network pod, no finished pod, no pod claiming a taken address"
    );
    let web = &c.pods[&pk("prod", "web")];
    assert_eq!(
        web.ips,
        ips(&["10.1.0.5", "fd00:1::5"]),
        "from status.podIPs"
    );
    assert_eq!(labels(&c, "prod", "web"), map(&[("app", "web")]));
    assert_eq!(web.ports.len(), 1);
    assert_eq!(web.ports[0].name.as_deref(), Some("http"));
    assert_eq!(web.ports[0].port, 80);

    assert_eq!(
        c.policies.keys().cloned().collect::<Vec<_>>(),
        [PolicyKey::new("prod", "allow-web")]
    );
    assert_eq!(notes.len(), 3, "notes: {notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("NetworkPolicy prod/bad-port")
                && n.contains("spec.ingress[0].ports[0].port")),
        "notes: {notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("NetworkPolicy prod/bad-cidr")
                && n.contains("spec.ingress[0].from[0].ipBlock.cidr")),
        "notes: {notes:?}"
    );
    assert!(
        notes.iter().any(|n| n.contains("Pod prod/copy")
            && n.contains("10.1.0.6")
            && n.contains("prod/db")),
        "the later pod on a taken address is named: {notes:?}"
    );

    // One cluster for the whole initial list, nothing after it.
    run.quiet().await;
    assert_eq!(
        KINDS.map(|k| fake.count(|s| s.lists.get(&k).copied().unwrap_or(0))),
        [1; 9]
    );
    run.stop().await;
}

/// The overlay's view: every Node with its InternalIP and pod CIDRs, in
/// the published cluster.
#[tokio::test]
async fn published_clusters_carry_the_nodes() {
    let fake = Fake::new(objects());
    let mut run = Running::on(&fake);
    let Update::Cluster { nodes, .. } = run.next().await else {
        panic!("expected a cluster")
    };
    let seen: Vec<(String, Vec<std::net::IpAddr>, Vec<ipnet::IpNet>)> = nodes
        .into_iter()
        .map(|n| (n.name, n.addresses, n.pod_cidrs))
        .collect();
    let ip: std::net::IpAddr = "192.168.1.10".parse().unwrap();
    assert_eq!(
        seen,
        vec![
            (
                "node-a".to_string(),
                vec![ip],
                nets(&["10.1.0.0/24", "fd00:1::/64"])
            ),
            ("node-b".to_string(), vec![ip], nets(&["10.1.1.0/24"])),
        ]
    );
    run.stop().await;
}

#[tokio::test]
async fn nothing_is_published_before_every_kind_has_listed() {
    let fake = Fake::new(objects());
    fake.hold(Kind::Nodes);
    let mut run = Running::on(&fake);
    fake.watching(&[Kind::Namespaces, Kind::Pods, Kind::Policies], 1)
        .await;
    // Three lists done, the pods watch even delivers a change: still nothing.
    fake.apply(
        Kind::Pods,
        pod("prod", "api", json!({"app": "api"}), &["10.1.0.9"]),
    );
    run.quiet().await;
    assert_eq!(
        fake.count(|s| s.parked.len()),
        1,
        "the nodes list is waiting"
    );

    fake.release(Kind::Nodes);
    let (c, _) = run.cluster().await;
    assert!(c.pods.contains_key(&pk("prod", "api")));
    assert!(c.pods.contains_key(&pk("prod", "web")));
    assert_eq!(c.policies.len(), 1);
    run.quiet().await;
    run.stop().await;
}

#[tokio::test]
async fn an_unreachable_api_at_start_reports_and_publishes_once_listed() {
    let fake = Fake::new(objects());
    fake.fail(&[Kind::Nodes], 500);
    let mut run = Running::on(&fake);
    let (in_sync, message) = run.sync().await;
    assert!(!in_sync);
    assert!(
        message.contains("nodes") && message.contains("500"),
        "the message names the kind and the error: {message}"
    );
    run.quiet().await;

    fake.heal();
    // The watcher retries after its backoff (under 2 s).
    let (c, _) = run.cluster().await;
    assert_eq!(c.pods.len(), 3);
    let (in_sync, _) = run.sync().await;
    assert!(in_sync);
    run.quiet().await;
    run.stop().await;
}

#[tokio::test]
async fn watch_events_lead_to_new_clusters() {
    let (fake, mut run, _) = started().await;

    // ADDED
    fake.apply(
        Kind::Pods,
        pod("prod", "api", json!({"app": "api"}), &["10.1.0.9"]),
    );
    let (c, _) = run.cluster().await;
    assert_eq!(c.pods[&pk("prod", "api")].ips, ips(&["10.1.0.9"]));

    // MODIFIED: relabelled
    fake.apply(
        Kind::Pods,
        pod(
            "prod",
            "web",
            json!({"app": "web", "tier": "front"}),
            &["10.1.0.5", "fd00:1::5"],
        ),
    );
    let (c, _) = run.cluster().await;
    assert_eq!(
        labels(&c, "prod", "web"),
        map(&[("app", "web"), ("tier", "front")])
    );

    // MODIFIED: a namespace's labels
    fake.apply(Kind::Namespaces, namespace("prod", json!({"team": "b"})));
    let (c, _) = run.cluster().await;
    assert_eq!(
        c.namespaces["prod"].labels.get("team").map(String::as_str),
        Some("b")
    );

    // DELETED: a policy
    fake.delete(Kind::Policies, "prod/allow-web");
    let (c, notes) = run.cluster().await;
    assert!(c.policies.is_empty());
    assert_eq!(notes.len(), 3, "the invalid ones are still noted");

    // BOOKMARKs change nothing; nor does a status change the model does
    // not hold (a restart count).
    fake.bookmark(Kind::Pods);
    fake.bookmark(Kind::Policies);
    let mut db = pod("prod", "db", json!({"app": "db"}), &["10.1.0.6"]);
    db["status"]["containerStatuses"][0]["restartCount"] = json!(3);
    fake.apply(Kind::Pods, db);
    run.quiet().await;

    // An invalid policy arriving by watch: noted, left out; the rest stays.
    fake.apply(Kind::Policies, policy_with_port("prod", "bad-too", 0));
    let (c, notes) = run.cluster().await;
    assert!(c.policies.is_empty());
    assert!(c.pods.contains_key(&pk("prod", "api")));
    assert!(
        notes
            .iter()
            .any(|n| n.contains("NetworkPolicy prod/bad-too")),
        "notes: {notes:?}"
    );

    // A pod deleted
    fake.delete(Kind::Pods, "prod/api");
    let (c, _) = run.cluster().await;
    assert!(!c.pods.contains_key(&pk("prod", "api")));

    // A burst (events a few ms apart) gives one cluster holding all of it
    // (two at most on a slow machine; without the debounce, five).
    for i in 0..5 {
        fake.apply(
            Kind::Pods,
            pod(
                "prod",
                &format!("burst-{i}"),
                json!({"app": "burst"}),
                &[&format!("10.1.0.{}", 20 + i)],
            ),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut clusters = 0;
    loop {
        let (c, _) = run.cluster().await;
        clusters += 1;
        let seen = c
            .pods
            .keys()
            .filter(|k| k.name.starts_with("burst-"))
            .count();
        if seen == 5 {
            break;
        }
    }
    assert!(clusters <= 2, "{clusters} clusters for one burst");
    run.quiet().await;

    // A node's CIDRs change: the node view follows, and an update carries
    // the node (nodes are in the cluster now: admin policies select them
    // by label), the policy model unchanged.
    fake.apply(
        Kind::Nodes,
        node(
            "node-b",
            json!({"podCIDR": "10.1.2.0/24", "podCIDRs": ["10.1.2.0/24"]}),
        ),
    );
    let stores = run.stores.clone();
    fake.until("the node store to follow", |_| {
        stores.node_pod_cidrs().get("node-b") == Some(&nets(&["10.1.2.0/24"]))
    })
    .await;
    let Update::Cluster { nodes, .. } = run.next().await else {
        panic!("expected a cluster");
    };
    let b = nodes.iter().find(|n| n.name == "node-b").expect("node-b");
    assert_eq!(b.pod_cidrs, nets(&["10.1.2.0/24"]));
    run.quiet().await;
    assert_eq!(
        KINDS.map(|k| fake.count(|s| s.lists.get(&k).copied().unwrap_or(0))),
        [1; 9],
        "no relist: every change came by watch"
    );
    run.stop().await;
}

#[tokio::test]
async fn gone_leads_to_a_relist_that_replaces_the_state() {
    let (fake, mut run, c) = started().await;
    assert!(c.pods.contains_key(&pk("prod", "db")));

    // Changes the watch never hears of, then the watch expires.
    fake.remove(Kind::Pods, "prod/db", false);
    fake.apply_unheard(
        Kind::Pods,
        pod("prod", "fresh", json!({"app": "fresh"}), &["10.1.0.30"]),
    );
    fake.expire(Kind::Pods);

    // The next update is the relisted cluster: 410 is not an outage.
    let (c, notes) = run.cluster().await;
    assert!(
        !c.pods.contains_key(&pk("prod", "db")),
        "gone after the relist"
    );
    assert!(c.pods.contains_key(&pk("prod", "fresh")));
    assert!(c.pods.contains_key(&pk("prod", "web")));
    assert!(
        c.pods.contains_key(&pk("prod", "copy")),
        "db's address is free now"
    );
    assert!(!notes.iter().any(|n| n.contains("prod/copy")));
    assert_eq!(
        fake.count(|s| s.lists[&Kind::Pods]),
        2,
        "pods were relisted"
    );
    fake.watching(&[Kind::Pods], 2).await;

    // And the new watch works.
    fake.apply(Kind::Pods, pod("prod", "after", json!({}), &["10.1.0.31"]));
    let (c, _) = run.cluster().await;
    assert!(c.pods.contains_key(&pk("prod", "after")));
    run.quiet().await;
    run.stop().await;
}

#[tokio::test]
async fn an_outage_keeps_the_last_cluster_and_recovery_resyncs() {
    let (fake, mut run, before) = started().await;

    // The API server goes away: connections break, requests get 500.
    fake.fail(&KINDS, 500);
    fake.break_watches();
    let (in_sync, message) = run.sync().await;
    assert!(!in_sync);
    assert!(message.contains("Kubernetes API"), "{message}");

    // The watchers retry (and fail) while things change on the server.
    fake.until("a retry to fail", |s| s.failed >= 1).await;
    fake.apply(
        Kind::Pods,
        pod(
            "prod",
            "web",
            json!({"app": "web", "tier": "back"}),
            &["10.1.0.5", "fd00:1::5"],
        ),
    );
    fake.delete(Kind::Pods, "prod/db");
    // Nothing was sent during the outage: no empty or partial cluster, no
    // second Sync.
    assert!(
        run.updates.try_recv().is_err(),
        "nothing is sent while the API is unreachable"
    );
    assert_eq!(
        run.stores.pods.state().len(),
        6,
        "the stores keep what they had"
    );
    assert_eq!(before.pods.len(), 3);

    // Back: the watches resume from where they were and catch up. The
    // retry comes after the watcher's backoff (a few seconds by now).
    fake.heal();
    let mut last: Option<Cluster> = None;
    loop {
        match run.next_within(Duration::from_secs(8)).await {
            Update::Cluster { cluster, .. } => {
                assert!(
                    cluster.pods.contains_key(&pk("prod", "web")) && !cluster.policies.is_empty(),
                    "never an empty or partial cluster"
                );
                last = Some(Arc::unwrap_or_clone(cluster));
            }
            Update::Sync { in_sync, message } => {
                assert!(in_sync, "no second Sync false: {message}");
                break;
            }
        }
    }
    let c = last.expect("a fresh cluster comes with the return to sync");
    assert_eq!(
        labels(&c, "prod", "web"),
        map(&[("app", "web"), ("tier", "back")])
    );
    assert!(!c.pods.contains_key(&pk("prod", "db")));
    assert!(c.pods.contains_key(&pk("prod", "copy")));
    assert_eq!(
        KINDS.map(|k| fake.count(|s| s.lists.get(&k).copied().unwrap_or(0))),
        [1; 9],
        "the watches resumed from their resourceVersion: no relist"
    );
    fake.watching(&KINDS, 2).await;

    // In sync again: changes flow as before.
    fake.apply(Kind::Pods, pod("prod", "later", json!({}), &["10.1.0.40"]));
    let (c, _) = run.cluster().await;
    assert!(c.pods.contains_key(&pk("prod", "later")));
    run.stop().await;
}

#[tokio::test]
async fn stored_objects_are_trimmed() {
    let (_fake, run, _) = started().await;
    let pods = run.stores.pods.state();
    assert_eq!(
        pods.len(),
        6,
        "every pod is stored, host-network and finished too"
    );
    for p in &pods {
        assert!(p.metadata.managed_fields.is_none(), "{:?}", p.metadata.name);
        assert!(p.metadata.annotations.is_none(), "{:?}", p.metadata.name);
        let spec = p.spec.as_ref().expect("spec kept");
        assert!(spec.containers[0].env.is_none() && spec.containers[0].image.is_none());
        assert!(spec.containers[0].ports.is_some(), "ports are kept");
        let status = p.status.as_ref().expect("status kept");
        assert!(status.conditions.is_none() && status.container_statuses.is_none());
        assert!(status.pod_ips.is_some());
        assert!(p.metadata.labels.is_some(), "labels are kept");
    }
    for n in run.stores.nodes.state() {
        let status = n.status.as_ref().expect("the addresses are kept");
        assert!(status.images.is_none(), "the rest of the status is dropped");
        let addresses = status.addresses.as_ref().expect("addresses");
        // InternalIP (the overlay's) and ExternalIP (admin policies'
        // `nodes` peers match every IP address), not the Hostname
        let types: Vec<&str> = addresses.iter().map(|a| a.type_.as_str()).collect();
        assert_eq!(types, ["ExternalIP", "InternalIP"], "{addresses:?}");
        assert!(n.metadata.managed_fields.is_none());
    }
    for ns in run.stores.namespaces.state() {
        assert!(ns.metadata.managed_fields.is_none());
        assert!(ns.metadata.labels.is_some());
    }
    assert_eq!(
        run.stores.node_pod_cidrs(),
        BTreeMap::from([
            ("node-a".to_string(), nets(&["10.1.0.0/24", "fd00:1::/64"])),
            ("node-b".to_string(), nets(&["10.1.1.0/24"])),
        ])
    );
    run.stop().await;
}

#[test]
fn trim_drops_managed_fields_and_annotations() {
    use vswitch::daemon::kube::Trim;
    let mut p: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(pod("prod", "web", json!({"app": "web"}), &["10.1.0.5"]))
            .expect("a pod");
    assert!(p.metadata.managed_fields.is_some());
    p.trim();
    assert!(p.metadata.managed_fields.is_none());
    assert!(p.metadata.annotations.is_none());
    assert_eq!(p.metadata.name.as_deref(), Some("web"));
    assert_eq!(p.metadata.resource_version, None, "none was given");
}

#[tokio::test]
async fn node_pod_cidrs_reads_the_node() {
    let fake = Fake::new(vec![
        (
            Kind::Nodes,
            node(
                "node-a",
                json!({"podCIDR": "10.1.0.0/24", "podCIDRs": ["10.1.0.0/24", "fd00:1::/64"]}),
            ),
        ),
        (
            Kind::Nodes,
            node("node-b", json!({"podCIDR": "10.1.1.0/24"})),
        ),
        (Kind::Nodes, node("node-c", json!({}))),
        (
            Kind::Nodes,
            node("node-d", json!({"podCIDRs": ["10.1.3.0/33"]})),
        ),
    ]);
    let client = client(&fake);
    assert_eq!(
        node_pod_cidrs(&client, "node-a").await,
        Ok(nets(&["10.1.0.0/24", "fd00:1::/64"]))
    );
    assert_eq!(
        node_pod_cidrs(&client, "node-b").await,
        Ok(nets(&["10.1.1.0/24"])),
        "spec.podCIDR when podCIDRs is absent"
    );
    let e = node_pod_cidrs(&client, "node-c")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("node-c") && e.contains("podCIDRs"), "{e}");
    let e = node_pod_cidrs(&client, "node-d")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.podCIDRs[0]") && e.contains("10.1.3.0/33"),
        "{e}"
    );
    let e = node_pod_cidrs(&client, "nowhere")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("nowhere") && e.contains("not found"), "{e}");
    assert!(
        fake.with(|s| s.log.iter().any(|l| l.starts_with("/api/v1/nodes/node-a?"))),
        "a GET of the node: {:?}",
        fake.with(|s| s.log.clone())
    );
}

#[test]
fn node_pod_cidrs_blocking_names_a_missing_kubeconfig() {
    let e = node_pod_cidrs_blocking(Some(Path::new("/nonexistent/kubeconfig")), "n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/kubeconfig"), "{e}");
}

#[tokio::test]
async fn a_missing_kubeconfig_is_reported_and_the_source_stops() {
    let mut run = Running::start(KubeSource::new(Some("/nonexistent/kubeconfig".into())));
    let (in_sync, message) = run.sync().await;
    assert!(!in_sync);
    assert!(message.contains("/nonexistent/kubeconfig"), "{message}");
    run.quiet().await;
    run.stop().await;
}

#[tokio::test]
async fn the_requests_made_are_the_documented_api_access() {
    let (fake, run, _) = started().await;
    node_pod_cidrs(&client(&fake), "node-a")
        .await
        .expect("node-a has CIDRs");
    let seen = access(&fake.with(|s| s.log.clone()));
    let documented: BTreeSet<(String, String, String)> = API_ACCESS
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect();
    assert_eq!(seen, documented);
    run.stop().await;
}

/// A kubeconfig for an HTTPS API server on a loopback port nobody listens
/// on: the real client (rustls with ring) is built, and fails to connect.
fn unreachable_kubeconfig() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("vswitch-kube-test-{}.yaml", std::process::id()));
    let text = "apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:9
    insecure-skip-tls-verify: true
users:
- name: me
  user:
    token: not-a-real-token
contexts:
- name: here
  context:
    cluster: local
    user: me
current-context: here
";
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

#[tokio::test]
async fn an_unreachable_api_server_is_reported_by_the_real_client() {
    let path = unreachable_kubeconfig();
    let p = path.clone();
    let e = tokio::task::spawn_blocking(move || node_pod_cidrs_blocking(Some(&p), "node-a"))
        .await
        .expect("no panic")
        .unwrap_err()
        .to_string();
    assert!(e.contains("reading Node node-a"), "{e}");
    assert!(e.contains("Connection refused"), "the cause is named: {e}");

    let mut run = Running::start(KubeSource::new(Some(path.clone())));
    let (in_sync, message) = run.sync().await;
    assert!(!in_sync);
    assert!(message.contains("Kubernetes API"), "{message}");
    run.quiet().await;
    run.stop().await;
    let _ = std::fs::remove_file(path);
}

/// A watch event carrying a new version of a NetworkPolicy that fails
/// validation keeps the previous version in force (a rejected edit must not
/// open what the policy isolated); a valid version replaces it, a deletion
/// removes it.
#[tokio::test]
async fn an_invalid_update_keeps_the_last_valid_version() {
    let (fake, mut run, c) = started().await;
    let key = PolicyKey::new("prod", "allow-web");
    let valid = c.policies.get(&key).expect("allow-web listed").clone();

    let mut broken = allow_from_db("prod", "allow-web");
    broken["spec"]["ingress"][0]["ports"][0]["port"] = json!(0);
    fake.apply(Kind::Policies, broken);
    let Update::Cluster {
        cluster: c,
        notes,
        stale,
        rejected,
        ..
    } = run.next().await
    else {
        panic!("expected a cluster");
    };
    assert_eq!(
        c.policies.get(&key),
        Some(&valid),
        "the rejected update removed or changed the policy"
    );
    assert_eq!((stale, rejected), (1, 1), "stale, newly rejected");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("NetworkPolicy prod/allow-web")
                && n.contains("spec.ingress[0].ports[0].port")
                && n.contains("last valid version")),
        "notes: {notes:?}"
    );

    // A valid new version applies.
    let mut fixed = allow_from_db("prod", "allow-web");
    fixed["spec"]["ingress"][0]["ports"][0]["port"] = json!(8080);
    fake.apply(Kind::Policies, fixed);
    let (c, notes) = run.cluster().await;
    let now = c.policies.get(&key).expect("allow-web applies");
    assert_ne!(now, &valid, "the new version replaced the old");
    assert!(
        !notes.iter().any(|n| n.contains("prod/allow-web")),
        "notes: {notes:?}"
    );

    // Rejected again, then deleted: the deletion removes it.
    let mut broken = allow_from_db("prod", "allow-web");
    broken["spec"]["ingress"][0]["ports"][0]["port"] = json!(70000);
    fake.apply(Kind::Policies, broken);
    let (c, _) = run.cluster().await;
    assert_eq!(c.policies.get(&key), Some(now));
    fake.delete(Kind::Policies, "prod/allow-web");
    let (c, notes) = run.cluster().await;
    assert!(!c.policies.contains_key(&key));
    assert!(
        !notes.iter().any(|n| n.contains("prod/allow-web")),
        "notes: {notes:?}"
    );
    run.stop().await;
}

/// The next cluster update's Services and EndpointSlices.
async fn service_set(run: &mut Running) -> (vswitch::daemon::source::ServiceSet, Vec<String>) {
    match run.next().await {
        Update::Cluster {
            services, notes, ..
        } => (services, notes),
        u => panic!("expected a cluster, got {}", describe(&u)),
    }
}

/// Each frontend's endpoints as the switch would get them on node-a:
/// "ip:port/proto -> ip:port ready|serving|terminating local".
fn frontends(set: &vswitch::daemon::source::ServiceSet) -> Vec<String> {
    // as the daemon makes them: the index's changes, applied to a table
    let mut table = vswitch_datapath::services::ServiceTable::new();
    let mut index = policy::ServiceIndex::new();
    for c in vswitch::daemon::services::changes(&mut index, set.clone(), "node-a") {
        table.apply(c);
    }
    let mut out: Vec<String> = table
        .iter()
        .map(|(k, f)| {
            let eps: Vec<String> = f
                .endpoints
                .iter()
                .map(|e| {
                    format!(
                        "{}:{}{}{}{}{}",
                        e.ip,
                        e.port,
                        if e.ready { " ready" } else { "" },
                        if e.serving { " serving" } else { "" },
                        if e.terminating { " terminating" } else { "" },
                        if e.local { " local" } else { "" },
                    )
                })
                .collect();
            format!("{}:{}/{} -> {}", k.ip, k.port, k.proto, eps.join(", "))
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn services_and_endpoint_slices_are_listed_watched_and_relisted() {
    let web = service(
        "prod",
        "web",
        "10.96.0.10",
        json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]),
    );
    let slice = |eps: &[(&str, bool, bool, bool, &str)]| {
        endpoint_slice(
            "prod",
            "web-abc12",
            "web",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            eps,
        )
    };
    let mut objs = objects();
    objs.push((Kind::Services, web.clone()));
    objs.push((
        Kind::Slices,
        slice(&[
            ("10.1.0.5", true, true, false, "node-a"),
            ("10.1.1.7", true, true, false, "node-b"),
        ]),
    ));
    let fake = Fake::new(objs);
    let mut run = Running::on(&fake);
    let (set, _) = service_set(&mut run).await;
    assert_eq!(
        frontends(&set),
        ["10.96.0.10:80/6 -> 10.1.0.5:8080 ready serving local, 10.1.1.7:8080 ready serving"]
    );
    fake.watching(&KINDS, 1).await;

    // a watch event: the endpoint on node-b is terminating, not ready
    fake.apply(
        Kind::Slices,
        slice(&[
            ("10.1.0.5", true, true, false, "node-a"),
            ("10.1.1.7", false, true, true, "node-b"),
        ]),
    );
    let (set, _) = service_set(&mut run).await;
    assert_eq!(
        frontends(&set),
        ["10.96.0.10:80/6 -> 10.1.0.5:8080 ready serving local, 10.1.1.7:8080 serving terminating"]
    );

    // an edit the API server would refuse keeps the last valid Service
    let mut bad = web.clone();
    bad["spec"]["sessionAffinity"] = json!("Sticky");
    fake.apply(Kind::Services, bad);
    let (set, notes) = service_set(&mut run).await;
    assert_eq!(set.services.len(), 1, "the last valid version is kept");
    assert!(
        notes.iter().any(|n| n.contains("Service prod/web")
            && n.contains("spec.sessionAffinity")
            && n.contains("keeping its last valid version")),
        "{notes:?}"
    );

    // unheard changes, then the slices' watch expires: the relist replaces
    fake.remove(Kind::Slices, "prod/web-abc12", false);
    fake.expire(Kind::Slices);
    let (set, _) = service_set(&mut run).await;
    assert_eq!(
        frontends(&set),
        ["10.96.0.10:80/6 -> "],
        "no endpoints left"
    );

    // the Service deleted: no frontend
    fake.delete(Kind::Services, "prod/web");
    let (set, _) = service_set(&mut run).await;
    assert!(frontends(&set).is_empty());
    run.stop().await;
}

/// The next cluster update, whole.
async fn whole(
    run: &mut Running,
) -> (
    Arc<Cluster>,
    vswitch::daemon::source::ServiceSet,
    Vec<String>,
) {
    match run.next().await {
        Update::Cluster {
            cluster,
            services,
            notes,
            ..
        } => (cluster, services, notes),
        u => panic!("expected a cluster, got {}", describe(&u)),
    }
}

#[tokio::test]
async fn an_endpoint_change_reuses_the_last_cluster_and_the_unchanged_objects() {
    let ports = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
    let slice = |name: &str, service: &str, ready: bool| {
        endpoint_slice(
            "prod",
            name,
            service,
            ports.clone(),
            &[("10.1.0.5", ready, true, false, "node-a")],
        )
    };
    let svc_ports = json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]);
    let mut objs = objects();
    objs.push((
        Kind::Services,
        service("prod", "web", "10.96.0.10", svc_ports.clone()),
    ));
    objs.push((
        Kind::Services,
        service("prod", "db", "10.96.0.11", svc_ports.clone()),
    ));
    objs.push((Kind::Slices, slice("web-1", "web", true)));
    objs.push((Kind::Slices, slice("db-1", "db", true)));
    let fake = Fake::new(objs);
    let mut run = Running::on(&fake);
    let (c1, s1, notes1) = whole(&mut run).await;
    fake.watching(&KINDS, 1).await;

    // web's endpoint is no longer ready: only its slice is new
    fake.apply(Kind::Slices, slice("web-1", "web", false));
    let (c2, s2, notes2) = whole(&mut run).await;
    assert!(Arc::ptr_eq(&c1, &c2), "the same cluster, not rebuilt");
    assert_eq!(notes1, notes2, "the cluster's notes kept");
    assert_eq!(s2.services.len(), 2);
    for (a, b) in s1.services.iter().zip(&s2.services) {
        assert!(Arc::ptr_eq(a, b), "unchanged Service {} shared", a.key);
    }
    let by_name = |s: &vswitch::daemon::source::ServiceSet, n: &str| {
        s.slices.iter().find(|e| e.key.name == n).cloned().unwrap()
    };
    assert!(Arc::ptr_eq(&by_name(&s1, "db-1"), &by_name(&s2, "db-1")));
    assert!(!by_name(&s2, "web-1").endpoints[0].ready, "the change");

    // a rejected Service edit is noted, and the note goes with the fix
    let mut bad = service("prod", "db", "10.96.0.11", svc_ports.clone());
    bad["spec"]["sessionAffinity"] = json!("Sticky");
    fake.apply(Kind::Services, bad);
    let (c3, s3, notes3) = whole(&mut run).await;
    assert!(Arc::ptr_eq(&c1, &c3));
    assert!(
        notes3.iter().any(|n| n.contains("Service prod/db")),
        "{notes3:?}"
    );
    assert!(s3.services.iter().any(|s| s.key.name == "db"), "kept");
    fake.apply(
        Kind::Services,
        service("prod", "db", "10.96.0.11", svc_ports),
    );
    let (_, _, notes4) = whole(&mut run).await;
    assert_eq!(notes4, notes1, "the rejection's note gone");

    // a pod changes: a new cluster, the Services still shared
    fake.apply(
        Kind::Pods,
        pod("prod", "api", json!({"app": "api"}), &["10.1.0.9"]),
    );
    let (c5, s5, _) = whole(&mut run).await;
    assert!(!Arc::ptr_eq(&c1, &c5));
    assert!(c5.pods.contains_key(&pk("prod", "api")));
    assert!(Arc::ptr_eq(&by_name(&s2, "db-1"), &by_name(&s5, "db-1")));
    run.stop().await;
}

/// A ClusterNetworkPolicy as the API server returns it (status, managed
/// fields), denying ingress into `prod` from namespaces labelled `team: b`.
fn cnp(name: &str, priority: i64) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "uid": format!("uid-cnp-{name}"), "managedFields": managed_fields()},
        "spec": {
            "tier": "Admin",
            "priority": priority,
            "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "prod"}}},
            "ingress": [{"name": "no-team-b", "action": "Deny",
                         "from": [{"namespaces": {"matchLabels": {"team": "b"}}}]}],
            "egress": [{"action": "Accept", "to": [{"nodes": {"matchLabels": {"kubernetes.io/hostname": "node-a"}}}],
                        "protocols": [{"tcp": {"destinationPort": {"number": 6443}}}]}],
        },
        "status": {"conditions": []},
    })
}

fn admin_objects() -> Vec<(Kind, serde_json::Value)> {
    let mut v = objects();
    v.push((Kind::Cnps, cnp("guard", 5)));
    v.push((
        Kind::Anps,
        json!({"metadata": {"name": "old-style"}, "spec": {
            "priority": 7,
            "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "db"}}}},
            "egress": [{"action": "Pass", "to": [{"networks": ["10.0.0.0/8"]}],
                        "ports": [{"portRange": {"protocol": "UDP", "start": 53, "end": 54}}]}]}}),
    ));
    v.push((
        Kind::Banps,
        json!({"metadata": {"name": "default"}, "spec": {
            "subject": {"namespaces": {}},
            "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}}),
    ));
    v
}

/// The three admin kinds are listed, watched and converted (nodes with
/// their labels and addresses too, for `nodes` peers); a rejected edit
/// keeps the last valid version, a deletion removes.
#[tokio::test]
async fn admin_policies_are_listed_watched_and_converted() {
    use policy::{Action, AdminKey, AdminKind, AdminPeer, Tier};
    let fake = Fake::new(admin_objects());
    let mut run = Running::on(&fake);
    let (c, notes) = run.cluster().await;
    assert!(
        !notes
            .iter()
            .any(|n| n.contains("ClusterNetworkPolicy") || n.contains("AdminNetworkPolicy")),
        "{notes:?}"
    );
    let guard = AdminKey::new(AdminKind::ClusterNetworkPolicy, "guard");
    let keys: Vec<String> = c.admin_policies.keys().map(|k| k.to_string()).collect();
    assert_eq!(
        keys,
        [
            "ClusterNetworkPolicy guard",
            "AdminNetworkPolicy old-style",
            "BaselineAdminNetworkPolicy default"
        ]
    );
    let g = &c.admin_policies[&guard];
    assert_eq!((g.tier, g.priority), (Tier::Admin, 5));
    assert_eq!(g.ingress[0].name.as_deref(), Some("no-team-b"));
    assert_eq!(g.ingress[0].action, Action::Deny);
    assert!(matches!(g.egress[0].peers[0], AdminPeer::Nodes(_)));
    let banp = &c.admin_policies[&AdminKey::new(AdminKind::BaselineAdminNetworkPolicy, "default")];
    assert_eq!(banp.tier, Tier::Baseline);
    // the nodes, with every IP address of status.addresses
    let a = &c.nodes["node-a"];
    assert_eq!(
        a.labels.get("kubernetes.io/hostname").map(String::as_str),
        Some("node-a")
    );
    assert_eq!(a.addresses, ips(&["192.168.1.10", "203.0.113.7"]));
    fake.watching(&KINDS, 1).await;

    // a watched change
    fake.apply(Kind::Cnps, cnp("guard", 9));
    let (c, _) = run.cluster().await;
    assert_eq!(c.admin_policies[&guard].priority, 9);
    // an edit the API's schema refuses keeps the last valid version
    fake.apply(Kind::Cnps, cnp("guard", 1001));
    let Update::Cluster {
        cluster: c,
        notes,
        stale,
        ..
    } = run.next().await
    else {
        panic!("expected a cluster");
    };
    assert_eq!(c.admin_policies[&guard].priority, 9);
    assert_eq!(stale, 1);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("ClusterNetworkPolicy guard")
                && n.contains("spec.priority")
                && n.contains("last valid version")),
        "{notes:?}"
    );
    // a peer whose only field this build does not know (pruned to {} by
    // the API server would be the same): the Deny rule fails closed
    let mut future = cnp("guard", 2);
    future["spec"]["ingress"][0]["from"] = json!([{"serviceAccounts": {"name": "x"}}]);
    fake.apply(Kind::Cnps, future);
    let (c, _) = run.cluster().await;
    assert!(c.admin_policies[&guard].ingress[0].denies_all());
    // a relabelled node is a new cluster (its labels select it)
    let mut n = node("node-b", json!({"podCIDR": "10.1.1.0/24"}));
    n["metadata"]["labels"]["role"] = json!("edge");
    fake.apply(Kind::Nodes, n);
    let (c, _) = run.cluster().await;
    assert_eq!(
        c.nodes["node-b"].labels.get("role").map(String::as_str),
        Some("edge")
    );
    fake.delete(Kind::Cnps, "guard");
    let (c, _) = run.cluster().await;
    assert!(!c.admin_policies.contains_key(&guard));
    run.stop().await;
}

/// A cluster without the admin policy CRDs (their lists answer 404) is
/// published without them, the other kinds unaffected, and in sync; a CRD
/// installed later is picked up.
#[tokio::test]
async fn a_missing_crd_is_skipped_and_picked_up_when_installed() {
    let fake = Fake::new(objects());
    fake.with(|s| s.absent.extend([Kind::Cnps, Kind::Anps, Kind::Banps]));
    let mut run = Running::on(&fake);
    let (c, _) = run.cluster().await;
    assert!(c.admin_policies.is_empty());
    assert_eq!(c.pods.len(), 3, "the other kinds are there");
    // installed, with an object
    fake.with(|s| s.absent.remove(&Kind::Cnps));
    fake.apply_unheard(Kind::Cnps, cnp("guard", 5));
    let mut got = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if let Ok(Update::Cluster { cluster, .. }) = timeout(Duration::from_secs(1), run.next())
            .await
            .map_err(|_| ())
            && !cluster.admin_policies.is_empty()
        {
            got = Some(cluster);
            break;
        }
    }
    let c = got.expect("the ClusterNetworkPolicy arrives once its CRD is there");
    assert_eq!(c.admin_policies.len(), 1);
    run.stop().await;
}

/// A ClusterRole from before the admin kinds (403 for them): the rest of
/// the cluster is still published, in sync.
#[tokio::test]
async fn a_forbidden_admin_kind_does_not_hold_back_the_rest() {
    let fake = Fake::new(objects());
    fake.fail(&[Kind::Cnps, Kind::Anps, Kind::Banps], 403);
    let mut run = Running::on(&fake);
    let (c, _) = run.cluster().await;
    assert!(c.admin_policies.is_empty());
    assert_eq!(c.pods.len(), 3, "the other kinds are there");
    run.quiet().await;
    run.stop().await;
}
