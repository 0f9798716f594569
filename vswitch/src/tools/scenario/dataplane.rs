//! `--mode dataplane`: every probe is a real connection attempt between
//! in-process pods (smoltcp stacks) through the datapath, in simulated time
//! ([`crate::tools::testnet`]). Policy comes from the engine, published to the
//! datapath as snapshots after every change, as the daemon will. The switch
//! is the service proxy: it is given the Services' frontends and endpoints
//! after every change, and a probe to a cluster IP is served by every
//! endpoint of its port.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use policy::{Backend, Change, Cluster, Engine, Flow, Pod, PodKey};

use super::format::External;
use super::run::{Attempt, Observed, Prober, ProberError, ServiceView};
use crate::tools::testnet::{self, HostId, Net};
use vswitch_datapath::{Config, PortId};

/// How long a denied attempt is given before it counts as denied.
const TIMEOUT_MS: u64 = 3_000;

pub struct DataplaneProber {
    engine: Engine,
    net: Net,
    hosts: BTreeMap<String, HostId>,
    pod_ips: BTreeMap<PodKey, Vec<IpAddr>>,
    next_port: PortId,
}

impl Default for DataplaneProber {
    fn default() -> Self {
        DataplaneProber {
            engine: Engine::new(),
            net: Net::new(Config::default()),
            hosts: BTreeMap::new(),
            pod_ips: BTreeMap::new(),
            next_port: testnet::NODE_PORT + 1,
        }
    }
}

impl DataplaneProber {
    fn publish(&mut self) {
        self.net.dp.set_policy(Arc::new(self.engine.snapshot()));
    }

    fn add_pod(&mut self, pod: &Pod) {
        let port = self.next_port;
        self.next_port += 1;
        let id = self.net.add_pod(
            &pod.key.to_string(),
            port,
            &pod.ips,
            self.engine.generation(),
        );
        self.hosts.insert(pod.key.to_string(), id);
        self.pod_ips.insert(pod.key.clone(), pod.ips.clone());
    }

    fn remove_pod(&mut self, key: &PodKey) {
        if let Some(id) = self.hosts.remove(&key.to_string()) {
            self.net.remove_host(id);
        }
        self.pod_ips.remove(key);
    }
}

impl DataplaneProber {
    /// A probe as the test network makes it. To a Service: a pod's attempt
    /// goes to the cluster IP (the switch translates) and every endpoint
    /// serves; an external's goes to an endpoint directly, as the node's
    /// host translates its own traffic (kube-proxy, which the node keeps
    /// for it; the switch translates pods' traffic only).
    fn attempt(&self, a: &Attempt<'_>) -> testnet::Attempt {
        let from = self.hosts[&a.from.name];
        let host = |b: &Backend| self.hosts.get(&b.pod.to_string()).copied();
        match &a.backends {
            Some(bs) if a.from.pod.is_none() => match bs.iter().find_map(|b| Some((b, host(b)?))) {
                Some((b, to)) => testnet::Attempt {
                    from,
                    to,
                    src: a.src,
                    dst: b.ip,
                    protocol: a.protocol,
                    port: b.port,
                    serve: None,
                },
                // none: the host refuses, nothing reaches a pod
                None => testnet::Attempt {
                    from,
                    to: from,
                    src: a.src,
                    dst: a.dst,
                    protocol: a.protocol,
                    port: a.port,
                    serve: Some(Vec::new()),
                },
            },
            backends => testnet::Attempt {
                from,
                // (a Service is no host: its endpoints serve)
                to: self.hosts.get(&a.to.name).copied().unwrap_or(from),
                src: a.src,
                dst: a.dst,
                protocol: a.protocol,
                port: a.port,
                serve: backends
                    .as_ref()
                    .map(|bs| bs.iter().filter_map(|b| Some((host(b)?, b.port))).collect()),
            },
        }
    }
}

impl Prober for DataplaneProber {
    fn proxies_services(&self) -> bool {
        true
    }

    /// The switch translates, with every endpoint local (one node).
    fn services(&mut self, views: &[ServiceView]) -> Result<(), ProberError> {
        let table = super::run::frontends(views, |_| true);
        self.net.dp.set_services(Arc::new(table));
        Ok(())
    }

    fn counters(&mut self) -> Option<vswitch_datapath::counters::Counters> {
        Some(self.net.dp.counters.clone())
    }

    fn start(&mut self, cluster: &Cluster, externals: &[External]) -> Result<(), ProberError> {
        self.engine = Engine::from_cluster(cluster.clone())?;
        self.publish();
        for pod in cluster.pods.values() {
            self.add_pod(pod);
        }
        for e in externals {
            let ips: Vec<IpAddr> = e
                .ipv4
                .map(IpAddr::V4)
                .into_iter()
                .chain(e.ipv6.map(IpAddr::V6))
                .collect();
            let id = self.net.add_external(&e.name, &ips);
            self.hosts.insert(e.name.clone(), id);
        }
        Ok(())
    }

    fn change(&mut self, change: &Change) -> Result<(), ProberError> {
        self.engine.apply(change.clone())?;
        // Policy first, then ports: a new pod's port only opens once the
        // generation that knows it is installed.
        self.publish();
        let (detach, attach) = super::run::port_changes(change, &self.pod_ips, |ips| ips);
        for k in detach {
            self.remove_pod(&k);
        }
        if let Some(p) = attach {
            self.add_pod(p);
        }
        Ok(())
    }

    fn probe(&mut self, attempts: &[Attempt<'_>]) -> Vec<Observed> {
        let mapped: Vec<testnet::Attempt> = attempts.iter().map(|a| self.attempt(a)).collect();
        let done = self.net.probe(&mapped, TIMEOUT_MS);
        if std::env::var_os("VSWITCH_DEBUG").is_some() {
            eprintln!(
                "counters after batch: {:?} unclaimed {}",
                self.net.dp.counters.nonzero(),
                self.net.unclaimed
            );
        }
        attempts
            .iter()
            .zip(done)
            .map(|(a, ok)| {
                let why = self.engine.explain(&Flow {
                    src: a.src,
                    dst: a.dst,
                    protocol: a.protocol,
                    dst_port: a.port,
                });
                let seen = if ok {
                    "connected".to_string()
                } else {
                    format!("no answer within {} ms (simulated)", TIMEOUT_MS)
                };
                Observed::Verdict {
                    allowed: ok,
                    detail: format!("{seen}; engine says {why}"),
                }
            })
            .collect()
    }
}
