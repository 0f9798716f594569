//! Where the desired cluster comes from: one interface, two sources.
//!
//! A source runs on a thread of its own and sends [`Update`]s: the whole
//! desired cluster each time it changes (a reload, an initial list, a
//! relist), and whether it is in sync with its origin. The daemon swaps the
//! cluster in one step and, while a source is out of sync (the API server
//! unreachable), keeps enforcing the last cluster it had: nothing opens
//! because a source went quiet.
//!
//! - [`ManifestDir`]: a folder of manifests, polled for changes (the
//!   embedded default, for users without a cluster and for tests);
//! - the Kubernetes source (`kube.rs`): watchers and reflectors on the API
//!   server.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use policy::{Cluster, EndpointSlice, Node, Service};

use super::manifests;

/// The Services and their EndpointSlices, as the source has them (the
/// switch translates them with `--service-proxy switch`). Shared: an
/// object the source did not convert anew is the same allocation as in its
/// last update, so the daemon finds what changed without comparing every
/// object field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceSet {
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
}

pub enum Update {
    /// The whole desired cluster, and what was left out of it (each note
    /// names the object and the field at fault).
    Cluster {
        /// Shared: a source sends the same allocation again while the
        /// cluster is unchanged (an update of Services or endpoints only),
        /// so that the daemon sees that without comparing it.
        cluster: Arc<Cluster>,
        services: ServiceSet,
        /// Every node (this one too): where pods live, how nodes reach
        /// each other.
        nodes: Vec<Node>,
        notes: Vec<String>,
        /// Objects served from their last valid version because their
        /// new version was rejected (the notes name them).
        stale: usize,
        /// Rejections first reported by this update.
        rejected: usize,
    },
    /// The source lost or regained its origin.
    Sync { in_sync: bool, message: String },
}

pub trait Source: Send {
    /// Sends updates until `stop` is set or `send` fails.
    fn run(self: Box<Self>, send: &dyn Fn(Update) -> bool, stop: &AtomicBool);
}

/// The manifest folder: re-read when a file's path, size or modification
/// time changes (polling works on every file system, ConfigMap mounts
/// included). The daemon reads the folder once at start itself, so that a
/// broken folder stops it with a clear error, and hands that read over
/// (`folder`): changes are found against it, and an object whose new
/// version is rejected keeps the version read then.
pub struct ManifestDir {
    pub dir: PathBuf,
    pub interval: Duration,
    pub folder: manifests::Folder,
}

impl Source for ManifestDir {
    fn run(self: Box<Self>, send: &dyn Fn(Update) -> bool, stop: &AtomicBool) {
        let ManifestDir {
            dir,
            interval,
            mut folder,
        } = *self;
        let mut in_sync = true;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(interval);
            if manifests::fingerprint(&dir) == folder.seen {
                continue;
            }
            let update = match folder.load(&dir) {
                Ok(d) => {
                    if !in_sync {
                        in_sync = true;
                        send(Update::Sync {
                            in_sync,
                            message: format!("{} is readable again", dir.display()),
                        });
                    }
                    Update::Cluster {
                        cluster: Arc::new(d.cluster),
                        services: d.services,
                        nodes: d.nodes,
                        notes: d.notes,
                        stale: d.stale,
                        rejected: d.rejected,
                    }
                }
                Err(e) => {
                    // Not read: try again at the next change.
                    folder.seen = manifests::fingerprint(&dir);
                    in_sync = false;
                    Update::Sync {
                        in_sync,
                        message: format!("manifests: {e}"),
                    }
                }
            };
            if !send(update) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc;

    use policy::{Decision, Engine, Flow, Protocol};

    use super::*;
    use crate::daemon::metrics::Gauges;

    const PODS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: x, labels: {app: db}}
spec: {containers: [{name: c}]}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec: {containers: [{name: c}]}
status: {podIP: 10.1.0.2}
";

    /// The isolation of `db`: no ingress at all.
    const DENY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-db, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
";

    /// web to db, TCP 5432, as the compiled policy judges it.
    fn web_to_db(cluster: &policy::Cluster) -> Decision {
        let engine = Engine::from_cluster(cluster.clone()).expect("compiles");
        engine
            .verdict(&Flow {
                src: "10.1.0.2".parse().unwrap(),
                dst: "10.1.0.1".parse().unwrap(),
                protocol: Protocol::Tcp,
                dst_port: 5432,
            })
            .ingress
    }

    /// An admin policy in the folder decides before NetworkPolicy; a
    /// rejected edit of it keeps its last valid version; deleting the file
    /// removes it.
    #[test]
    fn a_cluster_network_policy_in_the_folder_is_enforced_and_kept_when_broken() {
        const CNP: &str = "\
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guard-db}
spec:
  tier: Admin
  priority: 10
  subject: {pods: {podSelector: {matchLabels: {app: db}}}}
  ingress:
    - {name: no-web, action: Deny, from: [{pods: {podSelector: {matchLabels: {app: web}}}}]}
";
        let dir = std::env::temp_dir().join(format!("vsw-cnp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir.join("pods.yaml"), PODS);
        let cnp = dir.join("cnp.yaml");
        write(&cnp, CNP);
        let mut folder = manifests::Folder::default();
        let d = folder.load(&dir).unwrap();
        assert!(d.notes.is_empty(), "{:?}", d.notes);
        assert!(matches!(web_to_db(&d.cluster), Decision::AdminDenied(_)));
        // priority out of range: rejected, the last valid version stays
        write(&cnp, &CNP.replace("priority: 10", "priority: 1010"));
        let d = folder.load(&dir).unwrap();
        assert!(matches!(web_to_db(&d.cluster), Decision::AdminDenied(_)));
        assert!(
            d.notes
                .iter()
                .any(|n| n.contains("ClusterNetworkPolicy guard-db")
                    && n.contains("spec.priority")
                    && n.contains("last valid version")),
            "{:?}",
            d.notes
        );
        std::fs::remove_file(&cnp).unwrap();
        let d = folder.load(&dir).unwrap();
        assert!(d.cluster.admin_policies.is_empty());
        assert_eq!(web_to_db(&d.cluster), Decision::NotIsolated);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The folder source running on a thread, as the daemon runs it.
    struct Running {
        updates: mpsc::Receiver<Update>,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Running {
        fn start(source: ManifestDir) -> Running {
            let (tx, updates) = mpsc::channel();
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let thread = std::thread::spawn(move || {
                Box::new(source).run(&|u| tx.send(u).is_ok(), &flag);
            });
            Running {
                updates,
                stop,
                thread: Some(thread),
            }
        }

        /// The next cluster the source sends (Sync updates are skipped).
        fn cluster(&self) -> (policy::Cluster, Vec<String>, usize, usize) {
            loop {
                match self.updates.recv_timeout(Duration::from_secs(5)) {
                    Ok(Update::Cluster {
                        cluster,
                        notes,
                        stale,
                        rejected,
                        ..
                    }) => return (Arc::unwrap_or_clone(cluster), notes, stale, rejected),
                    Ok(Update::Sync { .. }) => {}
                    Err(e) => panic!("no cluster from the folder source: {e}"),
                }
            }
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Rewrites a file so that the poller sees it change (its size differs
    /// from the last version in every step of the test below).
    fn write(path: &std::path::Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    /// A rejected new version of a policy (a typo, then a YAML syntax error)
    /// leaves the last valid version in force; a valid one replaces it; a
    /// deleted file removes it.
    #[test]
    fn a_broken_edit_keeps_the_last_valid_version() {
        let dir = std::env::temp_dir().join(format!("vsw-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir.join("pods.yaml"), PODS);
        let policy = dir.join("policy.yaml");
        write(&policy, DENY);

        let mut folder = manifests::Folder::default();
        let d = folder.load(&dir).unwrap();
        assert!(d.notes.is_empty(), "{:?}", d.notes);
        assert_eq!(web_to_db(&d.cluster), Decision::Denied);
        let gauges = Gauges::default();
        gauges.source_objects(d.rejected, d.stale);

        let run = Running::start(ManifestDir {
            dir: dir.clone(),
            interval: Duration::from_millis(20),
            folder,
        });
        // What the metrics say after each update, as the daemon keeps them.
        let metrics = |stale: usize, rejected: usize| {
            gauges.source_objects(rejected, stale);
            (
                gauges.objects_rejected.load(Ordering::Relaxed),
                gauges.objects_stale.load(Ordering::Relaxed),
            )
        };

        // A typo in a field name: the new version is rejected, the old one stays.
        write(&policy, &DENY.replace("podSelector", "podSelectr"));
        let (c, notes, stale, rejected) = run.cluster();
        assert_eq!(web_to_db(&c), Decision::Denied, "the typo opened db");
        assert_eq!(metrics(stale, rejected), (1, 1), "rejected, stale");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("NetworkPolicy x/isolate-db")
                    && n.contains("spec.podSelectr")
                    && n.contains("last valid version")),
            "notes: {notes:?}"
        );

        // A YAML syntax error: the file cannot be read at all.
        write(&policy, &format!("{DENY}  ingress: [{{from: [\n"));
        let (c, notes, stale, rejected) = run.cluster();
        assert_eq!(
            web_to_db(&c),
            Decision::Denied,
            "the syntax error opened db"
        );
        assert_eq!(metrics(stale, rejected), (2, 1), "rejected, stale");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("not valid YAML") && n.contains("NetworkPolicy x/isolate-db")),
            "notes: {notes:?}"
        );

        // A valid new version applies: web may now reach db on 5432.
        write(
            &policy,
            &format!(
                "{DENY}  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: web}}}}}}]}}]\n"
            ),
        );
        let (c, notes, stale, rejected) = run.cluster();
        assert!(notes.is_empty(), "{notes:?}");
        assert!(
            matches!(web_to_db(&c), Decision::Allowed(_)),
            "the fixed version applies"
        );
        assert_eq!(metrics(stale, rejected), (2, 0), "rejected, stale");

        // Broken again, then deleted: deleting the file removes the policy.
        write(&policy, "{{{");
        let (c, _, stale, rejected) = run.cluster();
        assert!(matches!(web_to_db(&c), Decision::Allowed(_)));
        assert_eq!(metrics(stale, rejected), (3, 1), "rejected, stale");
        std::fs::remove_file(&policy).unwrap();
        let (c, notes, stale, rejected) = run.cluster();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(metrics(stale, rejected), (3, 0), "rejected, stale");
        assert!(c.policies.is_empty());
        assert_eq!(web_to_db(&c), Decision::NotIsolated);

        drop(run);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
