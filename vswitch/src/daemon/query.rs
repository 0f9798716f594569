//! Answers about the live state: status, the switch's ports, flows and
//! connections, and `explain` (the policy's verdict on one flow, naming
//! the rule that decided it).

use std::net::IpAddr;

use policy::PodKey;
use vswitch_cni::proto::Reply;

use super::error::RequestError;
use super::{Daemon, switch};

impl Daemon {
    pub(super) fn status(&self) -> Reply {
        Reply::Status {
            ready: true,
            message: format!(
                "ready: {} attachments, policy generation {}",
                self.attachments.len(),
                self.engine.generation()
            ),
        }
    }

    pub(super) fn query(&self, q: switch::Query) -> Result<Reply, RequestError> {
        let a = self
            .switch
            .handle()
            .query(q)
            .ok_or(RequestError::SwitchSilent)?;
        Ok(match a {
            switch::Answer::Ports(p) => Reply::Ports(p),
            switch::Answer::Totals(_) => return Err(RequestError::SwitchUnexpected),
            switch::Answer::Flows(flows, total) => Reply::Flows { flows, total },
            switch::Answer::Conntrack(connections, total) => {
                Reply::Conntrack { connections, total }
            }
            switch::Answer::Services(s) => Reply::Services(s),
        })
    }

    /// An endpoint for `explain`: a pod "namespace/name" (its first address
    /// of the family asked, else its first) or an address.
    fn endpoint(&self, s: &str) -> Result<IpAddr, RequestError> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(ip);
        }
        let key = PodKey::parse(s).ok_or_else(|| RequestError::BadEndpoint(s.to_string()))?;
        let pod = self
            .engine
            .cluster()
            .pods
            .get(&key)
            .ok_or_else(|| RequestError::UnknownPod(key.clone()))?;
        pod.ips
            .first()
            .copied()
            .ok_or(RequestError::PodWithoutAddress(key))
    }

    pub(super) fn explain(
        &self,
        src: &str,
        dst: &str,
        port: u16,
        protocol: &str,
    ) -> Result<Reply, RequestError> {
        let src = self.endpoint(src)?;
        if let Some(service) = dst.strip_prefix("svc:") {
            let protocol = policy::Protocol::parse(&protocol.to_uppercase())
                .ok_or_else(|| RequestError::BadProtocol(protocol.to_string()))?;
            return self.explain_service(src, service, port, protocol);
        }
        let mut dst_ip = self.endpoint(dst)?;
        if src.is_ipv4() != dst_ip.is_ipv4()
            && let Some(p) = PodKey::parse(dst).and_then(|k| self.engine.cluster().pods.get(&k))
            && let Some(same) = p.ips.iter().find(|ip| ip.is_ipv4() == src.is_ipv4())
        {
            dst_ip = *same;
        }
        let protocol = policy::Protocol::parse(&protocol.to_uppercase())
            .ok_or_else(|| RequestError::BadProtocol(protocol.to_string()))?;
        let e = self.engine.explain(&policy::Flow {
            src,
            dst: dst_ip,
            protocol,
            dst_port: port,
        });
        Ok(Reply::Explanation {
            allowed: e.allowed(),
            text: format!(
                "{src} -> {dst_ip} {port}/{}: {} (policy generation {})\n  {e}",
                format!("{protocol:?}").to_uppercase(),
                if e.allowed() { "allowed" } else { "denied" },
                self.engine.generation()
            ),
        })
    }
}
