//! The Services the switch proxies (`--service-proxy switch`): from the
//! source's Services and EndpointSlices to the switch's table of frontends
//! ([`policy::endpoint_slice::frontends`]: cluster IP, protocol and port to
//! endpoints with their conditions), sent to the switch after every update
//! (new connections use it from their next packet). An endpoint is local
//! when its slice names this node. With `--service-proxy kube-proxy` the
//! switch gets no frontends: kube-proxy on the node translates.

use std::sync::Arc;

use vswitch_datapath::services::{Endpoint, Frontend, FrontendKey, ServiceTable};

use super::Daemon;
use super::cli::ServiceProxy;
use super::source::ServiceSet;
use super::switch::Command;

/// The switch's table for `set`, on the node named `node`.
pub fn table(set: &ServiceSet, node: &str) -> ServiceTable {
    let mut table = ServiceTable::new();
    for f in policy::endpoint_slice::frontends(&set.services, &set.slices) {
        let endpoints = f
            .endpoints
            .iter()
            .map(|e| Endpoint {
                ip: e.ip,
                port: e.port,
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
                local: e.node.as_deref() == Some(node),
            })
            .collect();
        table.insert(
            FrontendKey {
                ip: f.ip,
                proto: f.protocol.number(),
                port: f.port,
            },
            Frontend {
                service: f.service.to_string(),
                port_name: f.port_name,
                endpoints,
                affinity_ms: f.affinity_timeout.map(|s| s as u64 * 1000),
                local_only: f.local_only,
            },
        );
    }
    table
}

impl Daemon {
    /// Sends the switch the frontends of `set` (switch mode only).
    pub(super) fn sync_services(&mut self, set: ServiceSet) {
        if self.opts.service_proxy != ServiceProxy::Switch {
            return;
        }
        let table = table(&set, &self.opts.node_name);
        self.gauges
            .frontends
            .store(table.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.switch.send(Command::Services(Arc::new(table)));
    }
}
