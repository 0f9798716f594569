//! The Services the switch proxies (`--service-proxy switch`): from the
//! source's Services and EndpointSlices to the switch's table of frontends
//! (cluster IP, protocol and port to endpoints with their conditions). The
//! daemon keeps them in a [`ServiceIndex`], which after each update
//! recomputes the frontends of the Services whose object or slices changed
//! only, and sends the switch those changes (new connections use them from
//! their next packet). An endpoint is local when its slice names this node.
//! With `--service-proxy kube-proxy` the switch gets no frontends:
//! kube-proxy on the node translates. `explain` through a Service judges
//! each of its endpoints, in either mode.

use std::net::IpAddr;

use policy::{PodKey, ServiceIndex};
use vswitch_cni::proto::Reply;
use vswitch_datapath::services::ServiceChange;

use super::Daemon;
use super::cli::ServiceProxy;
use super::error::RequestError;
use super::source::ServiceSet;
use super::switch::Command;

/// Brings `index` to `set` and returns the switch's changes on the node
/// named `node` (none when nothing a proxy sees changed).
pub fn changes(index: &mut ServiceIndex, set: ServiceSet, node: &str) -> Vec<ServiceChange> {
    index
        .update(set.services, set.slices)
        .into_iter()
        .map(|c| ServiceChange::of(c, node))
        .collect()
}

impl Daemon {
    /// Keeps `set` (for `explain`) and sends the switch the changes to its
    /// frontends (switch mode only).
    pub(super) fn sync_services(&mut self, set: ServiceSet) {
        let changes = changes(&mut self.services, set, &self.opts.node_name);
        if self.opts.service_proxy == ServiceProxy::Switch && !changes.is_empty() {
            self.gauges.frontends.store(
                self.services.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            self.switch.send(Command::Services(changes));
        }
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
        if self.services.service(&key).is_none() {
            return Err(RequestError::UnknownService(key));
        }
        let f = self
            .services
            .frontends_of(&key)
            .iter()
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
