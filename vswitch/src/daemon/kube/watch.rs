//! One watcher per kind, feeding a reflector store and telling the
//! source's loop what happened ([`Signal`]).
//!
//! Each kind runs kube-runtime's `watcher` (list, then watch from the
//! list's resourceVersion; a watch that ends is resumed from the last
//! version seen; 410 Gone starts over with a fresh list) with the default
//! backoff after errors, trims every object, and stores it with
//! `reflector`: a (re)list is buffered and swapped into the store whole at
//! its end, so a reader never sees half a list.
//!
//! The watcher reports errors but not its recovery: after an error it
//! retries quietly, and a resumed watch yields nothing until an object
//! changes. So each kind's client reports every successful API response
//! ([`Signal::Reached`]): after an error, the first one means that kind is
//! talking to the API server again.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use ::kube::Resource;
use ::kube::api::Api;
use ::kube::client::Body;
use ::kube::runtime::reflector::{self, store::Writer};
use ::kube::runtime::{WatchStreamExt, watcher};
use ::kube::{Client, Error};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;

use super::trim::Trim;

/// The kinds the source watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Namespaces,
    Pods,
    NetworkPolicies,
    Nodes,
    Services,
    EndpointSlices,
    ClusterNetworkPolicies,
    AdminNetworkPolicies,
    BaselineAdminNetworkPolicies,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Namespaces,
        Kind::Pods,
        Kind::NetworkPolicies,
        Kind::Nodes,
        Kind::Services,
        Kind::EndpointSlices,
        Kind::ClusterNetworkPolicies,
        Kind::AdminNetworkPolicies,
        Kind::BaselineAdminNetworkPolicies,
    ];

    /// A CustomResource kind: the cluster may not have its CRD.
    pub fn optional(self) -> bool {
        matches!(
            self,
            Kind::ClusterNetworkPolicies
                | Kind::AdminNetworkPolicies
                | Kind::BaselineAdminNetworkPolicies
        )
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespaces => "namespaces",
            Kind::Pods => "pods",
            Kind::NetworkPolicies => "networkpolicies",
            Kind::Nodes => "nodes",
            Kind::Services => "services",
            Kind::EndpointSlices => "endpointslices",
            Kind::ClusterNetworkPolicies => "clusternetworkpolicies",
            Kind::AdminNetworkPolicies => "adminnetworkpolicies",
            Kind::BaselineAdminNetworkPolicies => "baselineadminnetworkpolicies",
        }
    }
}

/// What a kind's watcher tells the source's loop.
#[derive(Debug)]
pub enum Signal {
    /// An API request of this kind succeeded.
    Reached(Kind),
    /// A list (the first or a relist) is complete: the store holds it.
    Listed(Kind),
    /// An object was added, changed or deleted.
    Changed(Kind),
    /// The watch expired (410 Gone): a relist follows.
    Expired(Kind),
    /// The list or watch failed; the watcher backs off and retries.
    Failed(Kind, String),
    /// An optional kind's list answered 404 (its CRD is not installed) or
    /// 403 (the ClusterRole does not grant it yet): the status code. It
    /// counts as listed and empty; the watcher retries.
    Absent(Kind, u16),
}

/// Starts watching `kind` on the current runtime; the task ends when the
/// loop stops listening.
pub fn spawn<K>(client: &Client, kind: Kind, writer: Writer<K>, tx: UnboundedSender<Signal>)
where
    K: Resource<DynamicType = ()> + Trim + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let api: Api<K> = Api::all(observed(client, kind, tx.clone()));
    let events = watcher(api, watcher::Config::default())
        .modify(K::trim)
        .default_backoff();
    let stream = reflector::reflector(writer, events);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let signal = match event {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Ok(watcher::Event::InitDone) => Signal::Listed(kind),
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Signal::Changed(kind),
                Err(watcher::Error::WatchError(s)) if s.code == 410 => Signal::Expired(kind),
                Err(
                    watcher::Error::InitialListFailed(Error::Api(s))
                    | watcher::Error::WatchStartFailed(Error::Api(s)),
                ) if kind.optional() && (s.code == 404 || s.code == 403) => {
                    Signal::Absent(kind, s.code)
                }
                Err(e) => Signal::Failed(kind, super::error_text(&e)),
            };
            if tx.send(signal).is_err() {
                return;
            }
        }
    });
}

/// `client`, reporting each successful response as [`Signal::Reached`].
fn observed(client: &Client, kind: Kind, tx: UnboundedSender<Signal>) -> Client {
    let inner = client.clone();
    let ns = client.default_namespace().to_string();
    Client::new(
        Observe {
            client: inner,
            kind,
            tx,
        },
        ns,
    )
}

#[derive(Clone)]
struct Observe {
    client: Client,
    kind: Kind,
    tx: UnboundedSender<Signal>,
}

type Reply = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Error>> + Send>>;

impl tower_service::Service<http::Request<Body>> for Observe {
    type Response = http::Response<Body>;
    type Error = Error;
    type Future = Reply;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // The inner client queues requests itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Reply {
        let this = self.clone();
        Box::pin(async move {
            let res = this.client.send(req).await;
            if matches!(&res, Ok(r) if r.status().is_success()) {
                let _ = this.tx.send(Signal::Reached(this.kind));
            }
            res
        })
    }
}
