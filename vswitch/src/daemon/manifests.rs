//! The manifest-directory source: Namespaces, Pods, NetworkPolicies and Nodes read
//! from a folder (recursively), re-read when a file changes.
//!
//! Changes are found by polling (every file's path, size and modification
//! time, twice a second): it works on every file system, including
//! ConfigMap mounts whose files change by symlink swaps. A rejected object
//! is reported naming its file, object and field, and left out; the rest of
//! the folder still applies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use policy::manifest::{self, Object};
use policy::{Cluster, Namespace, Node, Pod, PodKey};

/// Why the manifest folder could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: {source}", dir.display())]
    ListFolder {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", file.display())]
    ReadFile {
        file: PathBuf,
        source: std::io::Error,
    },
}

/// What the folder holds, as the cluster model wants it.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub cluster: Cluster,
    /// Every node, sorted by name.
    pub nodes: Vec<Node>,
    pub notes: Vec<String>,
}

/// Reads the folder. Pods keep only the addresses their manifests give
/// (local pods get theirs from IPAM when they are attached).
pub fn load(dir: &Path) -> Result<Desired, ManifestError> {
    let (objects, mut notes) = read_objects(dir)?;
    let mut cluster = Cluster::default();
    let mut nodes: Vec<Node> = Vec::new();
    for o in &objects {
        if let Object::Namespace(ns) = o {
            cluster.namespaces.insert(ns.name.clone(), ns.clone());
        }
    }
    for o in objects {
        match o {
            Object::Namespace(_) => {}
            Object::HostNetworkPod(_) => {}
            Object::Node(n) => {
                if nodes.iter().any(|m| m.name == n.name) {
                    notes.push(format!("rejected: Node {}: defined twice", n.name));
                } else {
                    nodes.push(n);
                }
            }
            Object::Pod(p) => {
                ensure_namespace(&mut cluster, &p.key.namespace);
                cluster.pods.insert(p.key.clone(), p);
            }
            Object::NetworkPolicy(np) => {
                ensure_namespace(&mut cluster, &np.key.namespace);
                cluster.policies.insert(np.key.clone(), np);
            }
        }
    }
    // Two pods claiming one address: both are reported, the later dropped.
    let mut owner: BTreeMap<std::net::IpAddr, PodKey> = BTreeMap::new();
    let mut dropped = Vec::new();
    for p in cluster.pods.values() {
        for ip in &p.ips {
            if let Some(o) = owner.get(ip) {
                notes.push(format!(
                    "rejected: Pod {}: status.podIPs: {ip} is already used by Pod {o}",
                    p.key
                ));
                dropped.push(p.key.clone());
            } else {
                owner.insert(*ip, p.key.clone());
            }
        }
    }
    for k in dropped {
        cluster.pods.remove(&k);
    }
    nodes.sort();
    Ok(Desired {
        cluster,
        nodes,
        notes,
    })
}

/// A namespace that has pods or policies but no Namespace object exists
/// with its automatic label only, as the API server would create it.
pub fn ensure_namespace(cluster: &mut Cluster, ns: &str) {
    if !cluster.namespaces.contains_key(ns) {
        cluster
            .namespaces
            .insert(ns.to_string(), Namespace::new(ns, Default::default()));
    }
}

/// A pod attached on this node: its labels and ports from the manifests when
/// they describe it, its addresses from IPAM.
pub fn local_pod(desired: &Cluster, key: &PodKey, ips: Vec<std::net::IpAddr>) -> Pod {
    match desired.pods.get(key) {
        Some(p) => Pod { ips, ..p.clone() },
        None => Pod {
            key: key.clone(),
            labels: Default::default(),
            ips,
            ports: Vec::new(),
        },
    }
}

/// A fingerprint of the folder: every file's path, size and mtime.
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            // metadata() follows symlinks (ConfigMap mounts swap them)
            let Ok(m) = std::fs::metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else {
                out.push((p, m.len(), m.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

fn manifest_files(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Every object of every manifest under `dir` (recursively), and a note for
/// each document that was rejected (file, object, field).
pub fn read_objects(dir: &Path) -> Result<(Vec<Object>, Vec<String>), ManifestError> {
    let files = manifest_files(dir).map_err(|source| ManifestError::ListFolder {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut objects = Vec::new();
    let mut notes = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|source| ManifestError::ReadFile {
            file: f.clone(),
            source,
        })?;
        for r in manifest::parse(&text) {
            match r {
                Ok(o) => objects.push(o),
                Err(e) => notes.push(format!("rejected: {}: {e}", f.display())),
            }
        }
    }
    Ok((objects, notes))
}
