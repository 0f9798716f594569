//! # policy: Kubernetes NetworkPolicy, exactly and fast
//!
//! A pure library: no I/O, no clock, no API client. It is layered like this,
//! each layer using only the ones above it:
//!
//! - [`labels`]: labels and label selectors;
//! - [`model`] and [`netpol`]: the cluster (namespaces, pods, policies) and a
//!   validated NetworkPolicy with the API's defaults made explicit;
//! - [`admin`]: ClusterNetworkPolicy and the v1alpha1 AdminNetworkPolicy
//!   and BaselineAdminNetworkPolicy, validated, in tiers around
//!   NetworkPolicy;
//! - [`k8s`] and [`manifest`]: the standard Kubernetes API types and YAML
//!   manifests into the model, validated as the API server does;
//! - [`service`]: ClusterIP Services and their endpoints;
//!   [`endpoint_slice`]: the endpoints the cluster publishes, and the
//!   frontends a service proxy translates;
//! - [`verdict`]: flows and verdicts that name the deciding rule;
//! - [`reference`]: the slow evaluator written from the API reference;
//! - [`compile`]: the [`Engine`], which compiles the cluster into identity and
//!   port tables, keeps them up to date incrementally, and answers verdicts in
//!   a few lookups;
//! - [`diff`]: the changes that turn one cluster into another, in an order
//!   the [`Engine`] accepts;
//! - [`synth`]: deterministic synthetic clusters for tests and benchmarks.

pub mod admin;
#[cfg(feature = "k8s")]
pub mod admin_k8s;
mod compact;
pub mod compile;
pub mod diff;
pub mod endpoint_slice;
#[cfg(feature = "k8s")]
pub mod k8s;
pub mod labels;
#[cfg(feature = "k8s")]
pub mod manifest;
pub mod model;
pub mod netpol;
pub mod reference;
pub mod service;
pub mod synth;
pub mod verdict;

pub use admin::{Action, AdminKey, AdminKind, AdminPeer, AdminPolicy, AdminRule, Subject, Tier};
pub use compile::{Engine, Snapshot};
pub use diff::diff;
pub use endpoint_slice::{EndpointSlice, FrontendChange, FrontendSpec, ServiceIndex};
pub use labels::{Labels, Selector};
pub use model::{
    Change, Cluster, ContainerPort, ModelError, Namespace, Node, NodeInfo, Pod, PodKey, Protocol,
};
pub use netpol::{Direction, Policy, PolicyKey};
pub use service::{Backend, Service, ServicePort, TargetPort};
pub use verdict::{Decision, Explanation, Flow, Reason, Verdict};
