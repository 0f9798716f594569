//! `--mode dataplane`: every probe is a real connection attempt between
//! in-process pods (smoltcp stacks) through the datapath, in simulated time
//! ([`crate::tools::testnet`]). Policy comes from the engine, published to the
//! datapath as snapshots after every change, as the daemon will.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use policy::{Change, Cluster, Engine, Flow, Pod, PodKey};

use super::format::External;
use super::run::{Attempt, Observed, Prober, ProberError};
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

impl Prober for DataplaneProber {
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
        let mapped: Vec<testnet::Attempt> = attempts
            .iter()
            .map(|a| testnet::Attempt {
                from: self.hosts[&a.from.name],
                to: self.hosts[&a.to.name],
                src: a.src,
                dst: a.dst,
                protocol: a.protocol,
                port: a.port,
            })
            .collect();
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
