//! The manifest-directory source: Namespaces, Pods, NetworkPolicies and Nodes read
//! from a folder (recursively), re-read when a file changes.
//!
//! Changes are found by polling (every file's path, size and modification
//! time, twice a second): it works on every file system, including
//! ConfigMap mounts whose files change by symlink swaps. A rejected object
//! is reported naming its file, object and field; the rest of the folder
//! still applies.
//!
//! Fail safe on a broken edit ([`Folder`]): a typo must not remove a policy
//! (that would open what it isolated). The folder remembers the objects it
//! last read from each file. A rejected document that names its object
//! (kind, namespace, name) keeps that object's last valid version; a file
//! that does not parse as YAML, or holds a rejected document that names no
//! object, keeps every object last read from it that its new content does
//! not give validly. Each object so kept is noted ("keeping its last valid
//! version") and counted as stale. A deleted file removes its objects; an
//! object never read valid is left out, as before.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use policy::manifest::{self, Object, ObjectId};
use policy::{Cluster, Namespace, Node, NodeInfo, Pod, PodKey};

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
    pub services: super::source::ServiceSet,
    /// Every node, sorted by name.
    pub nodes: Vec<Node>,
    pub notes: Vec<String>,
    /// Objects served from their last valid version (a newer one was
    /// rejected).
    pub stale: usize,
    /// Rejections (notes) not given by the previous read: first seen now.
    pub rejected: usize,
}

/// The folder as last read: what each file held (kept versions included),
/// the notes given, and the fingerprint the read saw.
#[derive(Debug, Clone, Default)]
pub struct Folder {
    files: BTreeMap<PathBuf, Vec<(ObjectId, Object)>>,
    notes: BTreeSet<String>,
    /// The folder's fingerprint taken just before the last read.
    pub seen: Vec<(PathBuf, u64, Option<SystemTime>)>,
}

impl Folder {
    /// Reads the folder, keeping the last valid version of each object
    /// whose new version is rejected (see the top of this file). A folder
    /// that cannot be listed or a file that cannot be read changes nothing.
    pub fn load(&mut self, dir: &Path) -> Result<Desired, ManifestError> {
        let seen = fingerprint(dir);
        let mut texts = Vec::new();
        for f in manifest_files(dir).map_err(|source| ManifestError::ListFolder {
            dir: dir.to_path_buf(),
            source,
        })? {
            let text = std::fs::read_to_string(&f).map_err(|source| ManifestError::ReadFile {
                file: f.clone(),
                source,
            })?;
            texts.push((f, text));
        }
        let d = self.take(texts);
        self.seen = seen;
        Ok(d)
    }

    /// The read itself, without I/O: the text of every manifest file (by
    /// path) now. A file not given is gone, and so are its objects.
    pub fn take(&mut self, texts: Vec<(PathBuf, String)>) -> Desired {
        let last: BTreeMap<&ObjectId, &Object> =
            self.files.values().flatten().map(|(i, o)| (i, o)).collect();
        let mut files = BTreeMap::new();
        let mut notes = Vec::new();
        let mut stale = 0;
        let parsed: Vec<(PathBuf, Vec<manifest::Named>)> = texts
            .into_iter()
            .map(|(f, text)| (f, manifest::parse_with_ids(&text)))
            .collect();
        // What this read gives validly (from files that parse): a kept
        // version never stands in for it.
        let given: BTreeSet<ObjectId> = parsed
            .iter()
            .filter(|(_, rs)| !rs.iter().any(|(_, r)| is_syntax_error(r)))
            .flat_map(|(_, rs)| {
                rs.iter()
                    .filter_map(|(_, r)| r.as_ref().ok().map(Object::id))
            })
            .collect();
        for (f, results) in parsed {
            let before: Vec<(ObjectId, Object)> = self
                .files
                .get(&f)
                .into_iter()
                .flatten()
                .filter(|(i, _)| !given.contains(i))
                .cloned()
                .collect();
            let (objects, kept) = read_file(&f, results, &before, &last, &given, &mut notes);
            stale += kept;
            files.insert(f, objects);
        }
        let objects = files.values().flatten().map(|(_, o)| o.clone()).collect();
        let mut d = assemble(objects, notes);
        d.stale = stale;
        d.rejected = d
            .notes
            .iter()
            .filter(|n| n.starts_with("rejected:") && !self.notes.contains(*n))
            .count();
        self.notes = d.notes.iter().cloned().collect();
        self.files = files;
        d
    }
}

fn is_syntax_error(r: &Result<Object, manifest::ManifestError>) -> bool {
    matches!(r, Err(manifest::ManifestError::Yaml { .. }))
}

/// One file's objects: its valid documents, plus the last valid version of
/// what a rejected document stands for (unless `given` validly elsewhere);
/// and how many were kept so. `before` is what the file held and is not
/// given now.
fn read_file(
    f: &Path,
    results: Vec<manifest::Named>,
    before: &[(ObjectId, Object)],
    last: &BTreeMap<&ObjectId, &Object>,
    given: &BTreeSet<ObjectId>,
    notes: &mut Vec<String>,
) -> (Vec<(ObjectId, Object)>, usize) {
    let file = f.display();
    if let Some(Err(e)) = results.iter().map(|(_, r)| r).find(|r| is_syntax_error(r)) {
        // The file cannot be read as a whole: what it held stays.
        if before.is_empty() {
            notes.push(format!("rejected: {file}: {e}"));
        } else {
            let names: Vec<String> = before.iter().map(|(i, _)| i.to_string()).collect();
            notes.push(format!(
                "rejected: {file}: {e}; keeping the last valid version of {}",
                names.join(", ")
            ));
        }
        return (before.to_vec(), before.len());
    }
    let mut objects = Vec::new();
    let mut kept = 0;
    let mut unnamed = false;
    let mut named: BTreeSet<ObjectId> = BTreeSet::new();
    for (id, r) in results {
        match (r, id) {
            (Ok(o), _) => {
                let id = o.id();
                named.insert(id.clone());
                objects.push((id, o));
            }
            (Err(e), Some(id)) => {
                named.insert(id.clone());
                match last.get(&id).filter(|_| !given.contains(&id)) {
                    Some(o) => {
                        notes.push(format!(
                            "rejected: {file}: {e}; keeping its last valid version"
                        ));
                        objects.push((id, (*o).clone()));
                        kept += 1;
                    }
                    None => notes.push(format!("rejected: {file}: {e}")),
                }
            }
            (Err(e), None) => {
                unnamed = true;
                notes.push(format!("rejected: {file}: {e}"));
            }
        }
    }
    if unnamed {
        // A rejected document that names no object may be any of those the
        // file held: keep the ones its new content does not give.
        let missing: Vec<&(ObjectId, Object)> =
            before.iter().filter(|(i, _)| !named.contains(i)).collect();
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|(i, _)| i.to_string()).collect();
            notes.push(format!(
                "kept: {file}: a rejected document names no object; keeping the last valid version of {}",
                names.join(", ")
            ));
            kept += missing.len();
            objects.extend(missing.into_iter().cloned());
        }
    }
    (objects, kept)
}

/// The desired cluster from the objects read. Pods keep only the addresses
/// their manifests give (local pods get theirs from IPAM when they are
/// attached).
fn assemble(objects: Vec<Object>, mut notes: Vec<String>) -> Desired {
    let mut cluster = Cluster::default();
    let mut services = super::source::ServiceSet::default();
    let (mut service_keys, mut slice_keys) = (BTreeSet::new(), BTreeSet::new());
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
            // the switch translates them (--service-proxy switch)
            // (each once: the proxy keys them by namespace/name)
            Object::Service(s) => {
                if !service_keys.insert(s.key.clone()) {
                    notes.push(format!("rejected: Service {}: defined twice", s.key));
                } else {
                    services.services.push(Arc::new(s));
                }
            }
            Object::EndpointSlice(s) => {
                if !slice_keys.insert(s.key.clone()) {
                    notes.push(format!("rejected: EndpointSlice {}: defined twice", s.key));
                } else {
                    services.slices.push(Arc::new(s));
                }
            }
            Object::Node(n) => {
                if nodes.iter().any(|m| m.name == n.name) {
                    notes.push(format!("rejected: Node {}: defined twice", n.name));
                } else {
                    cluster.nodes.insert(n.name.clone(), NodeInfo::from(&n));
                    nodes.push(n);
                }
            }
            Object::AdminPolicy(p) => {
                if cluster.admin_policies.contains_key(&p.key) {
                    notes.push(format!("rejected: {}: defined twice", p.key));
                } else {
                    cluster.admin_policies.insert(p.key.clone(), p);
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
    Desired {
        cluster,
        services,
        nodes,
        notes,
        stale: 0,
        rejected: 0,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A rejected document that names no object (here `metadata.nme`) keeps
    /// what its file held and does not give anew; an object the file gives
    /// validly takes its new version.
    #[test]
    fn a_document_naming_no_object_keeps_the_files_objects() {
        let dir = std::env::temp_dir().join(format!("vsw-unnamed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.yaml");
        let policy = |meta: &str, app: &str| {
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {meta}\nspec: {{podSelector: {{matchLabels: {{app: {app}}}}}}}\n"
            )
        };
        std::fs::write(
            &f,
            format!(
                "{}---\n{}",
                policy("{name: a}", "a"),
                policy("{name: b}", "b")
            ),
        )
        .unwrap();
        let mut folder = Folder::default();
        let d = folder.load(&dir).unwrap();
        assert_eq!(d.cluster.policies.len(), 2);

        std::fs::write(
            &f,
            format!(
                "{}---\n{}",
                policy("{name: a}", "a2"),
                policy("{nme: b}", "b")
            ),
        )
        .unwrap();
        let d = folder.load(&dir).unwrap();
        let a = &d.cluster.policies[&policy::PolicyKey::new("default", "a")];
        let b = &d.cluster.policies[&policy::PolicyKey::new("default", "b")];
        assert_eq!(a.pod_selector.match_labels["app"], "a2", "a's new version");
        assert_eq!(b.pod_selector.match_labels["app"], "b", "b kept");
        assert_eq!((d.stale, d.rejected), (1, 1), "{:?}", d.notes);
        assert!(
            d.notes
                .iter()
                .any(|n| n.contains("keeping the last valid version of NetworkPolicy default/b")),
            "{:?}",
            d.notes
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A kept version never stands in for a valid one read now from
    /// another file (an object moved while its old file broke).
    #[test]
    fn a_valid_version_elsewhere_wins_over_a_kept_one() {
        let policy = |app: &str| {
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p}}\nspec: {{podSelector: {{matchLabels: {{app: {app}}}}}}}\n"
            )
        };
        let mut folder = Folder::default();
        let d = folder.take(vec![("a.yaml".into(), policy("old"))]);
        assert_eq!(d.cluster.policies.len(), 1);
        for broken in [
            policy("old").replace("podSelector", "podSelectr"),
            "{{{".into(),
        ] {
            let d = folder.take(vec![
                ("a.yaml".into(), broken.clone()),
                ("b.yaml".into(), policy("new")),
            ]);
            let p = &d.cluster.policies[&policy::PolicyKey::new("default", "p")];
            assert_eq!(p.pod_selector.match_labels["app"], "new", "{broken}");
            assert_eq!(d.stale, 0, "{:?}", d.notes);
            folder = Folder::default();
            folder.take(vec![("a.yaml".into(), policy("old"))]);
        }
    }
}
