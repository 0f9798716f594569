//! Reaching the API server: the client from the in-cluster configuration
//! (the pod's service account) or a kubeconfig file, and the one-shot read
//! of a node's pod CIDRs that `vswitchd install-cni` configures IPAM with.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::{Api, Client, Config};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;

/// Why the client could not be made or the node not read. The causes are
/// kept as text (kube's errors with their whole chain, see
/// `super::error_text`), so that the error compares equal in tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("in-cluster Kubernetes configuration: {0} (outside a pod, give --kubeconfig)")]
    InCluster(String),
    #[error("kubeconfig {}: {message}", path.display())]
    Kubeconfig { path: PathBuf, message: String },
    #[error("Kubernetes client: {0}")]
    Client(String),
    #[error("reading Node {node}: {message}")]
    ReadNode { node: String, message: String },
    #[error("{0}")]
    NodeCidrs(String),
    #[error("Node {0} has no spec.podCIDRs yet (is the controller manager allocating node CIDRs?)")]
    NoPodCidrs(String),
    #[error("tokio runtime: {0}")]
    Runtime(String),
    #[error("reading Node {node}: no answer in {timeout:?}")]
    Timeout { node: String, timeout: Duration },
}

/// How long the blocking node read may take, connecting included.
const NODE_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A client: `None` for the in-cluster configuration, else that kubeconfig
/// file (its current context). Needs a tokio runtime (the client's request
/// queue runs on it).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ConnectError> {
    let config = match kubeconfig {
        None => Config::incluster().map_err(|e| ConnectError::InCluster(e.to_string()))?,
        Some(path) => {
            let at = |e: &dyn std::fmt::Display| ConnectError::Kubeconfig {
                path: path.to_path_buf(),
                message: e.to_string(),
            };
            let file = Kubeconfig::read_from(path).map_err(|e| at(&e))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| at(&e))?
        }
    };
    Client::try_from(config).map_err(|e| ConnectError::Client(super::error_text(&e)))
}

/// The pod CIDRs of `node`: `spec.podCIDRs`, else `spec.podCIDR`. A node
/// without any (the controller manager has not allocated them yet, or does
/// not allocate node CIDRs) is an error, so that a caller may retry.
pub async fn node_pod_cidrs(client: &Client, node: &str) -> Result<Vec<IpNet>, ConnectError> {
    let api: Api<Node> = Api::all(client.clone());
    let n = api.get(node).await.map_err(|e| ConnectError::ReadNode {
        node: node.to_string(),
        message: super::error_text(&e),
    })?;
    let cidrs = super::cluster::node_pod_cidrs(&n).map_err(ConnectError::NodeCidrs)?;
    if cidrs.is_empty() {
        return Err(ConnectError::NoPodCidrs(node.to_string()));
    }
    Ok(cidrs)
}

/// [`node_pod_cidrs`] for callers without a runtime: builds one and the
/// client (see [`client`]), and gives up after 30 seconds.
pub fn node_pod_cidrs_blocking(
    kubeconfig: Option<&Path>,
    node: &str,
) -> Result<Vec<IpNet>, ConnectError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ConnectError::Runtime(e.to_string()))?;
    rt.block_on(async {
        let work = async {
            let c = client(kubeconfig).await?;
            node_pod_cidrs(&c, node).await
        };
        tokio::time::timeout(NODE_READ_TIMEOUT, work)
            .await
            .map_err(|_| ConnectError::Timeout {
                node: node.to_string(),
                timeout: NODE_READ_TIMEOUT,
            })?
    })
}
