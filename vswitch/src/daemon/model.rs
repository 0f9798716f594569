//! The policy model: the desired cluster (from the source) plus the pods
//! attached here, brought into the [`Engine`](policy::Engine) change by
//! change ([`policy::diff`]) and published to the switch; and the source's
//! updates (a new cluster, in or out of sync, other nodes).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

use policy::PodKey;

use super::switch::Command;
use super::{Daemon, kube, manifests, source};

impl Daemon {
    /// Attaches, re-attaches and detaches other nodes' ports to match the
    /// source's nodes.
    pub(super) fn sync_nodes(&mut self) {
        let pods = self.pod_ports();
        let Some(ov) = self.overlay.as_mut() else {
            return;
        };
        let names = ov.sync(&self.nodes, self.switch.handle(), &pods);
        self.gauges.remote_nodes.store(names.len() as u64, Relaxed);
    }

    /// Brings the engine to the desired cluster plus the local pods, one
    /// change at a time, and publishes the new generation.
    pub(super) fn sync_model(&mut self) -> u64 {
        let mut target = (*self.desired).clone();
        let mut local: BTreeMap<PodKey, Vec<IpAddr>> = BTreeMap::new();
        for a in self.attachments.values() {
            let key = PodKey::parse(&a.pod).unwrap_or_else(|| PodKey::new("default", &a.pod));
            local
                .entry(key)
                .or_default()
                .extend(a.ips.iter().map(|c| c.address.addr()));
        }
        for (key, ips) in local {
            // A manifest pod elsewhere with one of these addresses loses it:
            // the attachment on this node is the truth.
            for p in target.pods.values_mut() {
                if p.key != key {
                    p.ips.retain(|ip| !ips.contains(ip));
                }
            }
            manifests::ensure_namespace(&mut target, &key.namespace);
            let pod = manifests::local_pod(&self.desired, &key, ips);
            target.pods.insert(key, pod);
        }
        let started = std::time::Instant::now();
        for change in policy::diff(self.engine.cluster(), &target) {
            if let Err(e) = self.engine.apply(change) {
                tracing::warn!("policy model: {e}");
            }
        }
        self.handle.publish(self.engine.snapshot());
        let g = self.engine.generation();
        self.gauges
            .compile_micros
            .store(started.elapsed().as_micros() as u64, Relaxed);
        self.gauges.policy_generation.store(g, Relaxed);
        self.gauges
            .attachments
            .store(self.attachments.len() as u64, Relaxed);
        g
    }

    pub(super) fn set_in_sync(&self, in_sync: bool) {
        self.gauges.source_in_sync.store(in_sync as u64, Relaxed);
    }

    /// Takes an update from the source: a new desired cluster replaces the
    /// old one in one step; losing the origin keeps the last cluster.
    pub fn update(&mut self, u: source::Update) {
        match u {
            source::Update::Cluster {
                cluster,
                services,
                nodes,
                notes,
                stale,
                rejected,
            } => {
                self.gauges.source_updates.fetch_add(1, Relaxed);
                self.gauges.source_objects(rejected, stale);
                for n in &notes {
                    tracing::warn!("{n}");
                }
                // An update that changes only Services or endpoints (the
                // common one) costs no policy work: the model is compared,
                // not recompiled.
                let model_changed = !self.synced
                    || !(std::sync::Arc::ptr_eq(&self.desired, &cluster)
                        || self.desired == cluster);
                self.desired = cluster;
                self.nodes = nodes;
                self.sync_nodes();
                let g = if model_changed {
                    self.sync_model()
                } else {
                    self.engine.generation()
                };
                self.sync_services(services);
                tracing::info!("desired cluster updated: policy generation {g}");
                if !self.synced {
                    self.synced = true;
                    self.set_in_sync(true);
                    for a in self.attachments.values() {
                        self.switch.send(Command::Ready(a.port, g));
                    }
                    tracing::info!("first complete cluster from the source: pods are ready");
                }
            }
            source::Update::Sync { in_sync, message } => {
                self.set_in_sync(in_sync);
                if in_sync {
                    tracing::info!("source in sync: {message}");
                } else {
                    tracing::warn!("source out of sync, keeping the last policy: {message}");
                }
            }
        }
    }

    /// The source of the desired cluster, to run on a thread of its own.
    pub fn source(&self) -> Option<Box<dyn source::Source>> {
        if let Some(kubeconfig) = &self.opts.kube {
            return Some(Box::new(kube::KubeSource::new(kubeconfig.clone())));
        }
        let dir = self.opts.manifests.clone()?;
        Some(Box::new(source::ManifestDir {
            dir,
            interval: std::time::Duration::from_millis(500),
            folder: self.folder.clone(),
        }))
    }
}
