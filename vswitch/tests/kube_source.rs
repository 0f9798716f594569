//! The Kubernetes API source against a fake API server, through kube's
//! documented mocking (`tower_test::mock::pair` behind `kube::Client::new`).
//!
//! The fake answers as the API server does: lists (`kind: PodList`, items
//! without kind/apiVersion, `metadata.resourceVersion`), watches as
//! newline-delimited events from a resourceVersion (replaying what happened
//! since, or a 410 Expired error when that version is compacted away),
//! BOOKMARK events, single-object GETs, error Statuses, and connections
//! that break.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use ipnet::IpNet;
use policy::{Cluster, PodKey, PolicyKey};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::timeout;
use tower_test::mock::SendResponse;
use vswitch::daemon::kube::{
    API_ACCESS, KubeSource, Stores, node_pod_cidrs, node_pod_cidrs_blocking,
};
use vswitch::daemon::source::{Source, Update};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;
type Chunk = Result<Frame<Bytes>, std::io::Error>;
type Req = http::Request<kube::client::Body>;
type Resp = http::Response<Body>;

/// Longest wait for something that should happen promptly.
const PROMPT: Duration = Duration::from_secs(5);
/// Longer than the source's debounce: silence this long means nothing was
/// going to be sent.
const QUIET: Duration = Duration::from_millis(400);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Namespaces,
    Pods,
    Policies,
    Nodes,
}

const KINDS: [Kind; 4] = [Kind::Namespaces, Kind::Pods, Kind::Policies, Kind::Nodes];

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Namespaces => "/api/v1/namespaces",
            Kind::Pods => "/api/v1/pods",
            Kind::Policies => "/apis/networking.k8s.io/v1/networkpolicies",
            Kind::Nodes => "/api/v1/nodes",
        }
    }

    /// RBAC's names: (API group, resource).
    fn rbac(self) -> (&'static str, &'static str) {
        let resource = self.path().rsplit('/').next().expect("a resource");
        match self {
            Kind::Policies => ("networking.k8s.io", resource),
            _ => ("", resource),
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Kind::Namespaces => "Namespace",
            Kind::Pods => "Pod",
            Kind::Policies => "NetworkPolicy",
            Kind::Nodes => "Node",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::Policies => "networking.k8s.io/v1",
            _ => "v1",
        }
    }

    /// The kind and the object name (a GET) of a request path.
    fn route(path: &str) -> Option<(Kind, Option<String>)> {
        KINDS.into_iter().find_map(|k| {
            let rest = path.strip_prefix(k.path())?;
            match rest.strip_prefix('/') {
                None if rest.is_empty() => Some((k, None)),
                Some(name) if !name.is_empty() && !name.contains('/') => {
                    Some((k, Some(name.to_string())))
                }
                _ => None,
            }
        })
    }
}

/// `namespace/name`, or `name` for cluster-scoped objects.
fn key_of(obj: &Value) -> String {
    let m = &obj["metadata"];
    let name = m["name"].as_str().expect("object has a name");
    match m["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// The fake API server's state.
#[derive(Default)]
struct Server {
    /// The etcd revision: every change bumps it.
    rv: u64,
    objects: HashMap<Kind, BTreeMap<String, Value>>,
    /// Each kind's events with their revisions (for watches that resume).
    history: HashMap<Kind, Vec<(u64, String)>>,
    /// Watches from a revision older than this get 410 Expired.
    compacted: HashMap<Kind, u64>,
    /// The open watch of each kind.
    watches: HashMap<Kind, UnboundedSender<Chunk>>,
    /// Watches opened, lists served, per kind.
    opened: HashMap<Kind, usize>,
    lists: HashMap<Kind, usize>,
    /// Kinds whose every request gets this error status.
    failing: HashMap<Kind, u16>,
    /// Requests answered with an error status.
    failed: usize,
    /// Kinds whose lists are not answered until released, and the lists
    /// waiting.
    held: HashSet<Kind>,
    parked: Vec<(Kind, SendResponse<Resp>)>,
    /// Every request: `path?query`.
    log: Vec<String>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Server>>);

enum Answer {
    Now(Resp),
    Park(Kind),
}

fn json_response(code: u16, body: &Value) -> Resp {
    let bytes = Bytes::from(serde_json::to_vec(body).expect("json"));
    http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(
            Full::new(bytes)
                .map_err(|never: Infallible| match never {})
                .boxed_unsync(),
        )
        .expect("response")
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn line(v: &Value) -> Chunk {
    let mut s = serde_json::to_string(v).expect("json");
    s.push('\n');
    Ok(Frame::data(Bytes::from(s)))
}

/// A streaming body fed by a channel: the watch stays open while the
/// sender lives.
fn stream_body(rx: UnboundedReceiver<Chunk>) -> Body {
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        let c = rx.recv().await?;
        Some((c, rx))
    });
    StreamBody::new(chunks).boxed_unsync()
}

fn query_pairs(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

/// The requests of a log as RBAC sees them: (group, resource, verb).
fn access(log: &[String]) -> BTreeSet<(String, String, String)> {
    log.iter()
        .map(|l| {
            let (path, query) = l.split_once('?').expect("path?query");
            let Some((kind, name)) = Kind::route(path) else {
                return ("?".into(), path.to_string(), "?".into());
            };
            let (group, resource) = kind.rbac();
            let verb = if name.is_some() {
                "get"
            } else if query_pairs(query).get("watch").map(String::as_str) == Some("true") {
                "watch"
            } else {
                "list"
            };
            (group.to_string(), resource.to_string(), verb.to_string())
        })
        .collect()
}

impl Fake {
    fn new(objects: Vec<(Kind, Value)>) -> Fake {
        let f = Fake::default();
        for (k, o) in objects {
            f.put(k, o, false);
        }
        f
    }

    fn with<R>(&self, f: impl FnOnce(&mut Server) -> R) -> R {
        f(&mut self.0.lock().expect("fake server lock"))
    }

    /// Adds or replaces an object; `notify`: the open watch hears of it.
    /// Either way the history has it (a watch resuming from before replays it).
    fn put(&self, kind: Kind, mut obj: Value, notify: bool) {
        self.with(|s| {
            s.rv += 1;
            obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            let key = key_of(&obj);
            let objects = s.objects.entry(kind).or_default();
            let ty = if objects.contains_key(&key) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            objects.insert(key, obj.clone());
            s.record(kind, ty, obj, notify);
        });
    }

    fn apply(&self, kind: Kind, obj: Value) {
        self.put(kind, obj, true);
    }

    /// A change the open watch misses (only a resumed watch or a list sees it).
    fn apply_unheard(&self, kind: Kind, obj: Value) {
        self.put(kind, obj, false);
    }

    fn remove(&self, kind: Kind, key: &str, notify: bool) {
        self.with(|s| {
            let mut obj = s
                .objects
                .entry(kind)
                .or_default()
                .remove(key)
                .unwrap_or_else(|| panic!("no {kind:?} {key}"));
            s.rv += 1;
            obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            s.record(kind, "DELETED", obj, notify);
        });
    }

    fn delete(&self, kind: Kind, key: &str) {
        self.remove(kind, key, true);
    }

    fn bookmark(&self, kind: Kind) {
        self.with(|s| {
            let ev = json!({
                "type": "BOOKMARK",
                "object": {
                    "kind": kind.kind(),
                    "apiVersion": kind.api_version(),
                    "metadata": {"resourceVersion": s.rv.to_string()},
                },
            });
            let tx = s.watches.get(&kind).expect("an open watch");
            tx.send(line(&ev)).expect("watch body alive");
        });
    }

    /// The history of `kind` is compacted to now, and its open watch gets
    /// 410 Expired and ends, as the API server does.
    fn expire(&self, kind: Kind) {
        self.with(|s| {
            s.compacted.insert(kind, s.rv);
            let tx = s.watches.remove(&kind).expect("an open watch");
            let ev = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
            tx.send(line(&ev)).expect("watch body alive");
        });
    }

    /// Every open watch connection breaks (reset, not a clean end).
    fn break_watches(&self) {
        self.with(|s| {
            for (_, tx) in s.watches.drain() {
                let _ = tx.send(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset by peer",
                )));
            }
        });
    }

    fn fail(&self, kinds: &[Kind], code: u16) {
        self.with(|s| {
            for k in kinds {
                s.failing.insert(*k, code);
            }
        });
    }

    fn heal(&self) {
        self.with(|s| s.failing.clear());
    }

    fn hold(&self, kind: Kind) {
        self.with(|s| s.held.insert(kind));
    }

    fn release(&self, kind: Kind) {
        let parked: Vec<SendResponse<Resp>> = self.with(|s| {
            s.held.remove(&kind);
            let (mine, others) = s.parked.drain(..).partition(|(k, _)| *k == kind);
            s.parked = others;
            mine.into_iter().map(|(_, tx)| tx).collect()
        });
        for tx in parked {
            tx.send_response(self.with(|s| s.list(kind)));
        }
    }

    fn count(&self, f: impl Fn(&Server) -> usize) -> usize {
        self.with(|s| f(s))
    }

    /// Waits until `f` holds (polling the fake; at most [`PROMPT`]).
    async fn until(&self, what: &str, f: impl Fn(&Server) -> bool) {
        let deadline = tokio::time::Instant::now() + PROMPT;
        while !self.with(|s| f(s)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn watching(&self, kinds: &[Kind], n: usize) {
        self.until(&format!("{n} watches of {kinds:?}"), |s| {
            kinds
                .iter()
                .all(|k| s.opened.get(k).copied().unwrap_or(0) >= n && s.watches.contains_key(k))
        })
        .await;
    }

    fn answer(&self, req: &Req) -> Answer {
        self.with(|s| s.answer(req))
    }

    fn park(&self, kind: Kind, tx: SendResponse<Resp>) {
        self.with(|s| s.parked.push((kind, tx)));
    }
}

impl Server {
    fn record(&mut self, kind: Kind, ty: &str, mut obj: Value, notify: bool) {
        obj["kind"] = json!(kind.kind());
        obj["apiVersion"] = json!(kind.api_version());
        let ev = json!({"type": ty, "object": obj});
        let text = serde_json::to_string(&ev).expect("json");
        self.history
            .entry(kind)
            .or_default()
            .push((self.rv, text.clone()));
        if notify && let Some(tx) = self.watches.get(&kind) {
            tx.send(line(&ev)).expect("watch body alive");
        }
    }

    fn list(&mut self, kind: Kind) -> Resp {
        *self.lists.entry(kind).or_default() += 1;
        // List items carry no kind or apiVersion: the list says them.
        let items: Vec<&Value> = self
            .objects
            .get(&kind)
            .map(|m| m.values().collect())
            .unwrap_or_default();
        json_response(
            200,
            &json!({
                "kind": format!("{}List", kind.kind()),
                "apiVersion": kind.api_version(),
                "metadata": {"resourceVersion": self.rv.to_string()},
                "items": items,
            }),
        )
    }

    fn answer(&mut self, req: &Req) -> Answer {
        let path = req.uri().path().to_string();
        let query = query_pairs(req.uri().query().unwrap_or(""));
        self.log
            .push(format!("{path}?{}", req.uri().query().unwrap_or("")));
        assert_eq!(req.method(), http::Method::GET, "the source only reads");
        let Some((kind, name)) = Kind::route(&path) else {
            return Answer::Now(json_response(
                404,
                &status(404, "NotFound", &format!("no route {path}")),
            ));
        };
        if let Some(code) = self.failing.get(&kind) {
            self.failed += 1;
            let reason = if *code == 403 {
                "Forbidden"
            } else {
                "InternalError"
            };
            return Answer::Now(json_response(
                *code,
                &status(*code, reason, "the fake API server is failing"),
            ));
        }
        if let Some(name) = name {
            let obj = self.objects.get(&kind).and_then(|m| m.get(&name)).cloned();
            return Answer::Now(match obj {
                Some(mut o) => {
                    o["kind"] = json!(kind.kind());
                    o["apiVersion"] = json!(kind.api_version());
                    json_response(200, &o)
                }
                None => json_response(
                    404,
                    &status(404, "NotFound", &format!("nodes \"{name}\" not found")),
                ),
            });
        }
        if query.get("watch").map(String::as_str) == Some("true") {
            let from: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .expect("a watch names the resourceVersion it starts from");
            let (tx, rx) = unbounded_channel();
            if from < self.compacted.get(&kind).copied().unwrap_or(0) {
                let ev = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
                tx.send(line(&ev)).expect("open");
                // the connection ends after the error
            } else {
                for (rv, text) in self.history.get(&kind).into_iter().flatten() {
                    if *rv > from {
                        tx.send(Ok(Frame::data(Bytes::from(format!("{text}\n")))))
                            .expect("open");
                    }
                }
                *self.opened.entry(kind).or_default() += 1;
                self.watches.insert(kind, tx);
            }
            let resp = http::Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(stream_body(rx))
                .expect("response");
            return Answer::Now(resp);
        }
        if self.held.contains(&kind) {
            return Answer::Park(kind);
        }
        Answer::Now(self.list(kind))
    }
}

/// Answers the client's requests until it is gone.
async fn serve(mut handle: tower_test::mock::Handle<Req, Resp>, fake: Fake) {
    while let Some((req, tx)) = handle.next_request().await {
        match fake.answer(&req) {
            Answer::Now(r) => tx.send_response(r),
            Answer::Park(kind) => fake.park(kind, tx),
        }
    }
}

/// A client talking to the fake (call inside a tokio runtime).
fn client(fake: &Fake) -> kube::Client {
    let (svc, handle) = tower_test::mock::pair::<Req, Resp>();
    tokio::spawn(serve(handle, fake.clone()));
    kube::Client::new(svc, "default")
}

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
            Update::Cluster { cluster, notes, .. } => (cluster, notes),
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

// ---- objects, as the API server returns them ----

const CREATED: &str = "2024-05-01T10:00:00Z";

fn managed_fields() -> Value {
    json!([{
        "manager": "kubectl-client-side-apply",
        "operation": "Update",
        "apiVersion": "v1",
        "time": CREATED,
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}},
    }])
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({
        "metadata": {
            "name": name,
            "uid": format!("uid-ns-{name}"),
            "labels": labels,
            "creationTimestamp": CREATED,
            "managedFields": managed_fields(),
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

fn pod_at(ns: &str, name: &str, labels: Value, ips: &[&str], created: &str) -> Value {
    let mut status = json!({
        "phase": "Running",
        "hostIP": "192.168.1.10",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": created}],
        "containerStatuses": [{
            "name": "app", "ready": true, "restartCount": 0,
            "image": "nginx:1.27", "imageID": "docker.io/library/nginx@sha256:00",
        }],
    });
    if let Some(first) = ips.first() {
        status["podIP"] = json!(first);
        status["podIPs"] = json!(ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>());
    }
    json!({
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": format!("uid-pod-{ns}-{name}"),
            "labels": labels,
            "creationTimestamp": created,
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\",\"kind\":\"Pod\"}",
            },
            "managedFields": managed_fields(),
        },
        "spec": {
            "nodeName": "node-a",
            "containers": [{
                "name": "app",
                "image": "nginx:1.27",
                "env": [{"name": "MODE", "value": "prod"}],
                "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
            }],
        },
        "status": status,
    })
}

fn pod(ns: &str, name: &str, labels: Value, ips: &[&str]) -> Value {
    pod_at(ns, name, labels, ips, CREATED)
}

fn allow_from_db(ns: &str, name: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-np-{name}"), "creationTimestamp": CREATED},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                "ports": [{"protocol": "TCP", "port": 80}],
            }],
        },
    })
}

fn policy_with_port(ns: &str, name: &str, port: i64) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": CREATED},
        "spec": {
            "podSelector": {},
            "ingress": [{"ports": [{"protocol": "TCP", "port": port}]}],
        },
    })
}

fn node(name: &str, spec: Value) -> Value {
    json!({
        "metadata": {"name": name, "uid": format!("uid-node-{name}"), "creationTimestamp": CREATED,
                     "labels": {"kubernetes.io/hostname": name}, "managedFields": managed_fields()},
        "spec": spec,
        "status": {
            "addresses": [{"type": "Hostname", "address": name},
                          {"type": "ExternalIP", "address": "203.0.113.7"},
                          {"type": "InternalIP", "address": "192.168.1.10"}],
            "images": [{"names": ["docker.io/library/nginx:1.27"], "sizeBytes": 72000000}],
        },
    })
}

/// A small cluster: two namespaces, pods (one in a namespace that has no
/// Namespace object, one host-network, one finished, one claiming another's
/// address), a valid policy and two the API server would refuse, two nodes.
fn objects() -> Vec<(Kind, Value)> {
    vec![
        (Kind::Namespaces, namespace("prod", json!({"team": "a"}))),
        (Kind::Namespaces, namespace("default", json!({}))),
        (
            Kind::Pods,
            pod(
                "prod",
                "web",
                json!({"app": "web"}),
                &["10.1.0.5", "fd00:1::5"],
            ),
        ),
        (
            Kind::Pods,
            pod("prod", "db", json!({"app": "db"}), &["10.1.0.6"]),
        ),
        (
            Kind::Pods,
            pod("ghost", "lost", json!({"app": "lost"}), &["10.1.0.7"]),
        ),
        (Kind::Pods, {
            let mut p = pod("default", "agent", json!({}), &["192.168.1.10"]);
            p["spec"]["hostNetwork"] = json!(true);
            p
        }),
        (Kind::Pods, {
            let mut p = pod("prod", "job", json!({"app": "job"}), &["10.1.0.5"]);
            p["status"]["phase"] = json!("Succeeded");
            p
        }),
        (
            Kind::Pods,
            pod_at(
                "prod",
                "copy",
                json!({"app": "copy"}),
                &["10.1.0.6"],
                "2024-05-02T10:00:00Z",
            ),
        ),
        (Kind::Policies, allow_from_db("prod", "allow-web")),
        (Kind::Policies, policy_with_port("prod", "bad-port", 99999)),
        (Kind::Policies, {
            let mut p = policy_with_port("prod", "bad-cidr", 80);
            p["spec"]["ingress"][0]["from"] = json!([{"ipBlock": {"cidr": "10.0.0.0/33"}}]);
            p
        }),
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
    ]
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
        [1; 4]
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

    // A node's CIDRs change: the node view follows, the cluster is not resent.
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
    run.quiet().await;
    assert_eq!(
        KINDS.map(|k| fake.count(|s| s.lists.get(&k).copied().unwrap_or(0))),
        [1; 4],
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
                last = Some(cluster);
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
        [1; 4],
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
        assert_eq!(addresses.len(), 1, "InternalIP only: {addresses:?}");
        assert_eq!(addresses[0].type_, "InternalIP");
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
    let e = node_pod_cidrs(&client, "node-c").await.unwrap_err();
    assert!(e.contains("node-c") && e.contains("podCIDRs"), "{e}");
    let e = node_pod_cidrs(&client, "node-d").await.unwrap_err();
    assert!(
        e.contains("spec.podCIDRs[0]") && e.contains("10.1.3.0/33"),
        "{e}"
    );
    let e = node_pod_cidrs(&client, "nowhere").await.unwrap_err();
    assert!(e.contains("nowhere") && e.contains("not found"), "{e}");
    assert!(
        fake.with(|s| s.log.iter().any(|l| l.starts_with("/api/v1/nodes/node-a?"))),
        "a GET of the node: {:?}",
        fake.with(|s| s.log.clone())
    );
}

#[test]
fn node_pod_cidrs_blocking_names_a_missing_kubeconfig() {
    let e = node_pod_cidrs_blocking(Some(Path::new("/nonexistent/kubeconfig")), "n").unwrap_err();
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
        .unwrap_err();
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
