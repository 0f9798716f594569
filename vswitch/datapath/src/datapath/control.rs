//! The control side of the datapath: the port registry (attach, detach,
//! readiness, the indices by MAC, address and underlay address), policy
//! generations and housekeeping.

use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;
use policy::Snapshot;

use super::Datapath;
use crate::conntrack::Conntrack;
use crate::counters::Counters;
use crate::flow_cache::FlowCache;
use crate::parse::Mac;
use crate::ports::{PortId, PortKind, PortState};
use crate::services::{ServiceChange, ServiceTable};

impl Datapath {
    /// Attaches a port; its id is its index.
    pub fn add_port(&mut self, id: PortId, name: &str, mac: Mac, kind: PortKind) {
        let i = id as usize;
        if self.ports.len() <= i {
            self.ports.resize(i + 1, None);
        }
        if let Some(old) = self.ports[i].take() {
            self.unindex(id, &old);
        }
        if matches!(kind, PortKind::Node { .. }) {
            self.node_port = Some(id);
        }
        match &kind {
            PortKind::Pod { ips, .. } => {
                for ip in ips {
                    self.by_ip.insert(*ip, id);
                }
            }
            PortKind::Remote { addr, addrs, cidrs } => {
                // its pods, and its own addresses (so that what this node's
                // pods send its host comes back the way it went)
                for c in cidrs
                    .iter()
                    .copied()
                    .chain(addrs.iter().map(|a| IpNet::from(*a)))
                {
                    self.remote.insert(c, id);
                }
                self.by_underlay.insert(*addr, id);
            }
            PortKind::Node { .. } | PortKind::Overlay => {}
        }
        self.by_mac.insert(mac, id);
        self.ports[i] = Some(PortState {
            name: name.to_string(),
            mac,
            kind,
            mtu: self.cfg.port_mtu,
            counters: Counters::default(),
        });
        self.epoch += 1;
    }

    /// Sets the largest IP packet a local port takes (its device's MTU).
    pub fn set_mtu(&mut self, id: PortId, mtu: u16) {
        if let Some(Some(p)) = self.ports.get_mut(id as usize) {
            p.mtu = mtu;
            self.epoch += 1; // cached flows carry the old one
        }
    }

    fn unindex(&mut self, id: PortId, p: &PortState) {
        self.by_mac.retain(|_, v| *v != id);
        self.by_ip.retain(|_, v| *v != id);
        if matches!(p.kind, PortKind::Remote { .. }) {
            self.remote.remove_port(id);
            self.by_underlay.retain(|_, v| *v != id);
        }
        if self.node_port == Some(id) && !matches!(p.kind, PortKind::Node { .. }) {
            self.node_port = None;
        }
    }

    /// Detaches a port (idempotent). Its connections go with it: those
    /// charged to it and, for a pod, those to or from its addresses (their
    /// flow-cache entries are misses from the new epoch on).
    pub fn remove_port(&mut self, id: PortId) -> Option<PortState> {
        let p = self.ports.get_mut(id as usize)?.take()?;
        self.unindex(id, &p);
        let addresses = match &p.kind {
            PortKind::Pod { ips, .. } => ips.as_slice(),
            _ => &[],
        };
        self.ct.remove_owner(id, addresses);
        if self.node_port == Some(id) {
            self.node_port = None;
        }
        self.epoch += 1;
        Some(p)
    }

    /// Sets the first policy generation a pod's port may pass traffic under.
    pub fn set_ready(&mut self, id: PortId, generation: u64) {
        if let Some(Some(PortState {
            kind: PortKind::Pod {
                ready_generation, ..
            },
            ..
        })) = self.ports.get_mut(id as usize)
        {
            *ready_generation = generation;
            self.epoch += 1;
        }
    }

    pub fn port(&self, id: PortId) -> Option<&PortState> {
        self.ports.get(id as usize)?.as_ref()
    }

    pub fn ports(&self) -> impl Iterator<Item = (PortId, &PortState)> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i as PortId, p)))
    }

    /// Installs a policy generation; it applies from the next packet on.
    pub fn set_policy(&mut self, snapshot: Arc<Snapshot>) {
        if snapshot.generation() != self.policy.generation() {
            self.epoch += 1;
        }
        self.policy = snapshot;
    }

    /// Installs the Services the switch translates; new connections use
    /// them from the next packet on (established ones keep their endpoint).
    pub fn set_services(&mut self, services: Arc<ServiceTable>) {
        self.nat.retain_frontends(|k| services.get(k).is_some());
        for (k, _) in self.services.iter() {
            if !services.is_cluster_ip(k.ip) {
                self.nat.retire(k.ip);
            }
        }
        self.services = services;
    }

    /// Applies changes to the Services the switch translates, in place
    /// (the table is copied first only if someone else holds it); new
    /// connections use them from the next packet on. A removed frontend's
    /// counters go with it.
    pub fn update_services(&mut self, changes: impl IntoIterator<Item = ServiceChange>) {
        let table = Arc::make_mut(&mut self.services);
        for c in changes {
            let removed = match &c {
                ServiceChange::Remove(k) => Some(*k),
                ServiceChange::Set(..) => None,
            };
            table.apply(c);
            if let Some(k) = removed {
                self.nat.forget_frontend(&k);
                if !table.is_cluster_ip(k.ip) {
                    self.nat.retire(k.ip);
                }
            }
        }
    }

    pub fn services(&self) -> &ServiceTable {
        &self.services
    }

    pub fn policy_generation(&self) -> u64 {
        self.policy.generation()
    }

    /// The epoch flow-cache entries must carry to be hits.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The datapath's clock (milliseconds since it started), the unit of
    /// conntrack's `last_seen`.
    pub fn clock_ms(&self, now: Instant) -> u64 {
        self.ms(now)
    }

    pub fn conntrack(&self) -> &Conntrack {
        &self.ct
    }

    /// How many pods' connections to the Service range are remembered (the
    /// way back for kube-proxy's translations), dead ones included until
    /// the next purge.
    pub fn service_legs(&self) -> usize {
        self.legs.len()
    }

    pub fn flow_cache(&self) -> &FlowCache {
        &self.cache
    }

    /// Housekeeping: expires connections, fragments and dead cache entries.
    pub fn expire(&mut self, now: Instant, budget: usize) {
        let ms = self.ms(now);
        self.ct.sweep(ms, budget);
        self.frags.expire(ms);
        let (epoch, ct) = (self.epoch as u32, &self.ct);
        self.cache
            .sweep(|s, r| s.epoch != epoch || ct.get(r).is_none());
    }
}
