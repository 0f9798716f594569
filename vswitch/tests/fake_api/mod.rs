//! A fake Kubernetes API server for the source's tests, through kube's
//! documented mocking (`tower_test::mock::pair` behind `kube::Client::new`).
//!
//! The fake answers as the API server does: lists (`kind: PodList`, items
//! without kind/apiVersion, `metadata.resourceVersion`), watches as
//! newline-delimited events from a resourceVersion (replaying what happened
//! since, or a 410 Expired error when that version is compacted away),
//! BOOKMARK events, single-object GETs, error Statuses, and connections
//! that break. A test changes the cluster and the server the way it would
//! say it: `fake.apply(Kind::Pods, pod(..))`, `fake.expire(Kind::Pods)`,
//! `fake.break_watches()`, `fake.fail(&[Kind::Nodes], 500)`, `fake.heal()`.
//!
//! [`objects`] holds the objects as the API server returns them.

pub mod objects;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tower_test::mock::SendResponse;

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;
pub type Chunk = Result<Frame<Bytes>, std::io::Error>;
pub type Req = http::Request<kube::client::Body>;
pub type Resp = http::Response<Body>;

/// Longest wait for something that should happen promptly.
pub const PROMPT: Duration = Duration::from_secs(5);
/// Longer than the source's debounce: silence this long means nothing was
/// going to be sent.
pub const QUIET: Duration = Duration::from_millis(400);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Namespaces,
    Pods,
    Policies,
    Nodes,
    Services,
    Slices,
    Cnps,
    Anps,
    Banps,
}

pub const KINDS: [Kind; 9] = [
    Kind::Namespaces,
    Kind::Pods,
    Kind::Policies,
    Kind::Nodes,
    Kind::Services,
    Kind::Slices,
    Kind::Cnps,
    Kind::Anps,
    Kind::Banps,
];

impl Kind {
    pub fn path(self) -> &'static str {
        match self {
            Kind::Namespaces => "/api/v1/namespaces",
            Kind::Pods => "/api/v1/pods",
            Kind::Policies => "/apis/networking.k8s.io/v1/networkpolicies",
            Kind::Nodes => "/api/v1/nodes",
            Kind::Services => "/api/v1/services",
            Kind::Slices => "/apis/discovery.k8s.io/v1/endpointslices",
            Kind::Cnps => "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies",
            Kind::Anps => "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies",
            Kind::Banps => "/apis/policy.networking.k8s.io/v1alpha1/baselineadminnetworkpolicies",
        }
    }

    /// RBAC's names: (API group, resource).
    pub fn rbac(self) -> (&'static str, &'static str) {
        let resource = self.path().rsplit('/').next().expect("a resource");
        match self {
            Kind::Policies => ("networking.k8s.io", resource),
            Kind::Slices => ("discovery.k8s.io", resource),
            Kind::Cnps | Kind::Anps | Kind::Banps => ("policy.networking.k8s.io", resource),
            _ => ("", resource),
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Kind::Namespaces => "Namespace",
            Kind::Pods => "Pod",
            Kind::Policies => "NetworkPolicy",
            Kind::Nodes => "Node",
            Kind::Services => "Service",
            Kind::Slices => "EndpointSlice",
            Kind::Cnps => "ClusterNetworkPolicy",
            Kind::Anps => "AdminNetworkPolicy",
            Kind::Banps => "BaselineAdminNetworkPolicy",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Policies => "networking.k8s.io/v1",
            Kind::Slices => "discovery.k8s.io/v1",
            Kind::Cnps => "policy.networking.k8s.io/v1alpha2",
            Kind::Anps | Kind::Banps => "policy.networking.k8s.io/v1alpha1",
            _ => "v1",
        }
    }

    /// The kind and the object name (a GET) of a request path.
    pub fn route(path: &str) -> Option<(Kind, Option<String>)> {
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
pub fn key_of(obj: &Value) -> String {
    let m = &obj["metadata"];
    let name = m["name"].as_str().expect("object has a name");
    match m["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// The fake API server's state.
#[derive(Default)]
pub struct Server {
    /// The etcd revision: every change bumps it.
    pub rv: u64,
    pub objects: HashMap<Kind, BTreeMap<String, Value>>,
    /// Each kind's events with their revisions (for watches that resume).
    pub history: HashMap<Kind, Vec<(u64, String)>>,
    /// Watches from a revision older than this get 410 Expired.
    pub compacted: HashMap<Kind, u64>,
    /// The open watch of each kind.
    pub watches: HashMap<Kind, UnboundedSender<Chunk>>,
    /// Watches opened, lists served, per kind.
    pub opened: HashMap<Kind, usize>,
    pub lists: HashMap<Kind, usize>,
    /// Kinds whose every request gets this error status.
    pub failing: HashMap<Kind, u16>,
    /// Requests answered with an error status.
    pub failed: usize,
    /// Kinds whose lists are not answered until released, and the lists
    /// waiting.
    pub held: HashSet<Kind>,
    pub parked: Vec<(Kind, SendResponse<Resp>)>,
    /// Every request: `path?query`.
    pub log: Vec<String>,
    /// Kinds whose CRD is not installed: every request gets 404.
    pub absent: HashSet<Kind>,
}

#[derive(Clone, Default)]
pub struct Fake(pub Arc<Mutex<Server>>);

pub enum Answer {
    Now(Resp),
    Park(Kind),
}

pub fn json_response(code: u16, body: &Value) -> Resp {
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

pub fn status(code: u16, reason: &str, message: &str) -> Value {
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

pub fn line(v: &Value) -> Chunk {
    let mut s = serde_json::to_string(v).expect("json");
    s.push('\n');
    Ok(Frame::data(Bytes::from(s)))
}

/// A streaming body fed by a channel: the watch stays open while the
/// sender lives.
pub fn stream_body(rx: UnboundedReceiver<Chunk>) -> Body {
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        let c = rx.recv().await?;
        Some((c, rx))
    });
    StreamBody::new(chunks).boxed_unsync()
}

pub fn query_pairs(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

/// The requests of a log as RBAC sees them: (group, resource, verb).
pub fn access(log: &[String]) -> BTreeSet<(String, String, String)> {
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
    pub fn new(objects: Vec<(Kind, Value)>) -> Fake {
        let f = Fake::default();
        for (k, o) in objects {
            f.put(k, o, false);
        }
        f
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Server) -> R) -> R {
        f(&mut self.0.lock().expect("fake server lock"))
    }

    /// Adds or replaces an object; `notify`: the open watch hears of it.
    /// Either way the history has it (a watch resuming from before replays it).
    pub fn put(&self, kind: Kind, mut obj: Value, notify: bool) {
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

    pub fn apply(&self, kind: Kind, obj: Value) {
        self.put(kind, obj, true);
    }

    /// A change the open watch misses (only a resumed watch or a list sees it).
    pub fn apply_unheard(&self, kind: Kind, obj: Value) {
        self.put(kind, obj, false);
    }

    pub fn remove(&self, kind: Kind, key: &str, notify: bool) {
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

    pub fn delete(&self, kind: Kind, key: &str) {
        self.remove(kind, key, true);
    }

    pub fn bookmark(&self, kind: Kind) {
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
    pub fn expire(&self, kind: Kind) {
        self.with(|s| {
            s.compacted.insert(kind, s.rv);
            let tx = s.watches.remove(&kind).expect("an open watch");
            let ev = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
            tx.send(line(&ev)).expect("watch body alive");
        });
    }

    /// Every open watch connection breaks (reset, not a clean end).
    pub fn break_watches(&self) {
        self.with(|s| {
            for (_, tx) in s.watches.drain() {
                let _ = tx.send(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset by peer",
                )));
            }
        });
    }

    pub fn fail(&self, kinds: &[Kind], code: u16) {
        self.with(|s| {
            for k in kinds {
                s.failing.insert(*k, code);
            }
        });
    }

    pub fn heal(&self) {
        self.with(|s| s.failing.clear());
    }

    pub fn hold(&self, kind: Kind) {
        self.with(|s| s.held.insert(kind));
    }

    pub fn release(&self, kind: Kind) {
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

    pub fn count(&self, f: impl Fn(&Server) -> usize) -> usize {
        self.with(|s| f(s))
    }

    /// Waits until `f` holds (polling the fake; at most [`PROMPT`]).
    pub async fn until(&self, what: &str, f: impl Fn(&Server) -> bool) {
        let deadline = tokio::time::Instant::now() + PROMPT;
        while !self.with(|s| f(s)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn watching(&self, kinds: &[Kind], n: usize) {
        self.until(&format!("{n} watches of {kinds:?}"), |s| {
            kinds
                .iter()
                .all(|k| s.opened.get(k).copied().unwrap_or(0) >= n && s.watches.contains_key(k))
        })
        .await;
    }

    pub fn answer(&self, req: &Req) -> Answer {
        self.with(|s| s.answer(req))
    }

    pub fn park(&self, kind: Kind, tx: SendResponse<Resp>) {
        self.with(|s| s.parked.push((kind, tx)));
    }
}

impl Server {
    pub fn record(&mut self, kind: Kind, ty: &str, mut obj: Value, notify: bool) {
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

    pub fn list(&mut self, kind: Kind) -> Resp {
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

    pub fn answer(&mut self, req: &Req) -> Answer {
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
        if self.absent.contains(&kind) {
            return Answer::Now(json_response(
                404,
                &status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            ));
        }
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
pub async fn serve(mut handle: tower_test::mock::Handle<Req, Resp>, fake: Fake) {
    while let Some((req, tx)) = handle.next_request().await {
        match fake.answer(&req) {
            Answer::Now(r) => tx.send_response(r),
            Answer::Park(kind) => fake.park(kind, tx),
        }
    }
}

/// A client talking to the fake (call inside a tokio runtime).
pub fn client(fake: &Fake) -> kube::Client {
    let (svc, handle) = tower_test::mock::pair::<Req, Resp>();
    tokio::spawn(serve(handle, fake.clone()));
    kube::Client::new(svc, "default")
}
