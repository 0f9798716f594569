//! The Services the switch proxies (`--service-proxy switch`): from the
//! source's Services and EndpointSlices to the switch's table of frontends
//! ([`policy::endpoint_slice::frontends`]: cluster IP, protocol and port to
//! endpoints with their conditions), sent to the switch after every update
//! (new connections use it from their next packet). An endpoint is local
//! when its slice names this node. With `--service-proxy kube-proxy` the
//! switch gets no frontends: kube-proxy on the node translates. `explain`
//! through a Service judges each of its endpoints.

use std::net::IpAddr;
use std::sync::Arc;

use policy::PodKey;
use vswitch_cni::proto::Reply;
use vswitch_datapath::services::ServiceTable;

use super::Daemon;
use super::cli::ServiceProxy;
use super::error::RequestError;
use super::source::ServiceSet;
use super::switch::Command;

/// The switch's table for `set`, on the node named `node`.
pub fn table(set: &ServiceSet, node: &str) -> ServiceTable {
    ServiceTable::from_specs(
        policy::endpoint_slice::frontends(&set.services, &set.slices),
        node,
    )
}

impl Daemon {
    /// Keeps `set` (for `explain`) and sends the switch its frontends
    /// (switch mode only).
    pub(super) fn sync_services(&mut self, set: ServiceSet) {
        if self.opts.service_proxy == ServiceProxy::Switch {
            let table = table(&set, &self.opts.node_name);
            self.gauges
                .frontends
                .store(table.len() as u64, std::sync::atomic::Ordering::Relaxed);
            self.switch.send(Command::Services(Arc::new(table)));
        }
        self.services = set;
    }

    /// `explain` through a Service (`svc:namespace/name`): the frontend of
    /// `port`/`protocol` of the source's family, and the verdict on each
    /// endpoint a new connection may take (ready; with none ready, serving),
    /// as policy judges the translated connection.
    pub(super) fn explain_service(
        &self,
        src: IpAddr,
        service: &str,
        port: u16,
        protocol: policy::Protocol,
    ) -> Result<Reply, RequestError> {
        let key = PodKey::parse(service)
            .ok_or_else(|| RequestError::BadEndpoint(format!("svc:{service}")))?;
        let svc = self
            .services
            .services
            .iter()
            .find(|s| s.key == key)
            .ok_or_else(|| RequestError::UnknownService(key.clone()))?;
        let f = policy::endpoint_slice::frontends([svc], &self.services.slices)
            .into_iter()
            .find(|f| f.port == port && f.protocol == protocol && f.ip.is_ipv4() == src.is_ipv4())
            .ok_or_else(|| RequestError::NoServicePort {
                service: key.clone(),
                port,
                protocol: format!("{protocol:?}").to_uppercase(),
            })?;
        let any_ready = f.endpoints.iter().any(|e| e.ready);
        let usable: Vec<_> = f
            .endpoints
            .iter()
            .filter(|e| if any_ready { e.ready } else { e.serving })
            .collect();
        let proto = format!("{protocol:?}").to_uppercase();
        let mut text = format!(
            "{src} -> svc:{key} {}:{port}/{proto}: {} endpoints (policy generation {})",
            f.ip,
            usable.len(),
            self.engine.generation()
        );
        if usable.is_empty() {
            text.push_str("\n  no endpoint: new connections are refused");
        }
        let mut allowed = !usable.is_empty();
        for e in usable {
            let x = self.engine.explain(&policy::Flow {
                src,
                dst: e.ip,
                protocol,
                dst_port: e.port,
            });
            allowed &= x.allowed();
            text.push_str(&format!(
                "\n  -> {}:{}/{proto}: {}\n     {x}",
                e.ip,
                e.port,
                if x.allowed() { "allowed" } else { "denied" }
            ));
        }
        Ok(Reply::Explanation { allowed, text })
    }
}
