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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use policy::{Cluster, Node};

use super::manifests;

pub enum Update {
    /// The whole desired cluster, and what was left out of it (each note
    /// names the object and the field at fault).
    Cluster {
        cluster: Cluster,
        /// Every node (this one too): where pods live, how nodes reach
        /// each other.
        nodes: Vec<Node>,
        notes: Vec<String>,
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
/// broken folder stops it with a clear error; this source sends changes.
pub struct ManifestDir {
    pub dir: PathBuf,
    pub interval: Duration,
}

impl Source for ManifestDir {
    fn run(self: Box<Self>, send: &dyn Fn(Update) -> bool, stop: &AtomicBool) {
        let mut seen = manifests::fingerprint(&self.dir);
        let mut in_sync = true;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(self.interval);
            let now = manifests::fingerprint(&self.dir);
            if now == seen {
                continue;
            }
            seen = now;
            let update = match manifests::load(&self.dir) {
                Ok(d) => {
                    if !in_sync {
                        in_sync = true;
                        send(Update::Sync {
                            in_sync,
                            message: format!("{} is readable again", self.dir.display()),
                        });
                    }
                    Update::Cluster {
                        cluster: d.cluster,
                        nodes: d.nodes,
                        notes: d.notes,
                    }
                }
                Err(e) => {
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
