//! The CNI verbs: ADD (validate, plan and create the pod's device, save
//! it, publish the policy that knows the pod, then attach its port), DEL
//! (idempotent), CHECK (the device still as ADD made it) and GC.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use vswitch_cni::proto::{AddRequest, Attachment, AttachmentKey};
use vswitch_datapath::PortKind;
use vswitch_datapath::io::tap::TapPort;
use vswitch_datapath::parse::mac_text;

use super::device::{self, Devices, System, pod_key, pod_mac};
use super::error::RequestError;
use super::switch::Command;
use super::{Daemon, netlink, netns, nodes};

pub(crate) fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

fn host_route(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// Checks an ADD request against the attachments: `Ok(Some(a))` when the
/// same attachment exists already (ADD answers it again), `Ok(None)` when
/// it is new.
pub(crate) fn validate(
    req: &AddRequest,
    attachments: &BTreeMap<AttachmentKey, Attachment>,
) -> Result<Option<Attachment>, RequestError> {
    if req.key.container_id.is_empty() {
        return Err(RequestError::EmptyContainerId);
    }
    if req.key.ifname.is_empty()
        || req.key.ifname.len() > 15
        || req.key.ifname.contains(['/', ' ', ':'])
    {
        return Err(RequestError::BadIfname(req.key.ifname.clone()));
    }
    if req.ips.is_empty() {
        return Err(RequestError::NoAddresses);
    }
    let pod = pod_key(req).to_string();
    if let Some(old) = attachments.get(&req.key) {
        if old.netns == req.netns && old.ips == req.ips && old.pod == pod {
            return Ok(Some(old.clone()));
        }
        return Err(RequestError::AttachedOtherwise {
            container: req.key.container_id.clone(),
            ifname: req.key.ifname.clone(),
        });
    }
    for a in attachments.values() {
        for ip in &req.ips {
            if a.ips.iter().any(|c| c.address.addr() == ip.address.addr()) {
                return Err(RequestError::AddressInUse {
                    ip: ip.address.addr(),
                    pod: a.pod.clone(),
                    container: a.key.container_id.clone(),
                });
            }
        }
    }
    Ok(None)
}

impl Daemon {
    /// The first port id (from 1) that no pod and no overlay port uses.
    pub(super) fn free_port(&self) -> Option<vswitch_datapath::PortId> {
        nodes::free_port(&self.pod_ports(), self.overlay.as_ref())
    }

    /// The switch ports of the attached pods.
    pub(super) fn pod_ports(&self) -> Vec<vswitch_datapath::PortId> {
        self.attachments.values().map(|a| a.port).collect()
    }

    pub(super) fn attach_port(&mut self, a: &Attachment, tap: TapPort, generation: u64) {
        let ips: Vec<IpAddr> = a.ips.iter().map(|c| c.address.addr()).collect();
        if let Some(node) = &self.opts.node_tap {
            let routes: Vec<IpNet> = ips.iter().map(|ip| host_route(*ip)).collect();
            if let Err(e) = netlink::add_routes(node, &routes) {
                tracing::error!("routes to {} via {node}: {e}", a.pod);
            }
        }
        self.switch.send(Command::Attach {
            id: a.port,
            name: format!("{}/{}", a.pod, a.key.ifname),
            mac: parse_mac(&a.mac).unwrap_or(pod_mac(a.port)),
            kind: PortKind::Pod {
                ips,
                // before the source's first cluster, never: fail closed
                ready_generation: if self.synced { generation } else { u64::MAX },
            },
            port: Box::new(tap),
        });
        let mtu = a.mtu.min(u16::MAX as u32) as u16;
        self.switch.send(Command::Mtu(a.port, mtu));
    }

    pub(super) fn add(&mut self, req: AddRequest) -> Result<Attachment, RequestError> {
        let started = std::time::Instant::now();
        if let Some(same) = validate(&req, &self.attachments)? {
            return Ok(same);
        }
        if !netns::exists(Path::new(&req.netns)) {
            return Err(RequestError::NoSuchNetns(req.netns.clone()));
        }
        let port = self.free_port().ok_or(RequestError::NoFreePort)?;
        let plan = device::plan(
            &req,
            port,
            self.opts.mtu,
            (self.gateway_v4, self.gateway_v6),
        );
        let tap = device::create(&System, &self.store, &plan)?;
        let a = plan.attachment;
        self.attachments.insert(a.key.clone(), a.clone());
        let generation = self.sync_model();
        self.attach_port(&a, tap, generation);
        tracing::info!(
            "attached {} ({}) on port {port}, policy generation {generation}, in {:.1} ms",
            a.pod,
            a.key.container_id,
            started.elapsed().as_secs_f64() * 1000.0
        );
        Ok(a)
    }

    pub(super) fn del(&mut self, key: &AttachmentKey) -> Result<(), RequestError> {
        let Some(a) = self.attachments.get(key).cloned() else {
            return Ok(()); // already gone: DEL is idempotent
        };
        self.switch.detach(a.port);
        if let Err(e) = device::remove(&System, &a) {
            tracing::warn!("deleting {}'s interface: {e}", a.pod);
        }
        if let Some(node) = &self.opts.node_tap {
            let routes: Vec<IpNet> = a.ips.iter().map(|c| host_route(c.address.addr())).collect();
            let _ = netlink::del_routes(node, &routes);
        }
        self.store.remove(key).map_err(RequestError::RemoveState)?;
        self.attachments.remove(key);
        let g = self.sync_model();
        tracing::info!(
            "detached {} ({}), policy generation {g}",
            a.pod,
            key.container_id
        );
        Ok(())
    }

    pub(super) fn check(&self, key: &AttachmentKey) -> Result<Attachment, RequestError> {
        let a = self
            .attachments
            .get(key)
            .ok_or_else(|| RequestError::NotAttached {
                container: key.container_id.clone(),
                ifname: key.ifname.clone(),
            })?;
        let ifname = a.key.ifname.clone();
        let state = System
            .in_netns(Path::new(&a.netns), move || netlink::link_state(&ifname))
            .and_then(|r| r)
            .map_err(RequestError::ReadInterface)?
            .ok_or_else(|| RequestError::InterfaceMissing {
                ifname: a.key.ifname.clone(),
                netns: a.netns.clone(),
            })?;
        if state.mac != parse_mac(&a.mac) {
            return Err(RequestError::WrongMac {
                ifname: a.key.ifname.clone(),
                found: state.mac.map(mac_text),
                expected: a.mac.clone(),
            });
        }
        for ip in &a.ips {
            if !state.addrs.contains(&ip.address) {
                return Err(RequestError::AddressMissing {
                    ifname: a.key.ifname.clone(),
                    address: ip.address,
                });
            }
        }
        Ok(a.clone())
    }

    pub(super) fn gc(&mut self, valid: &[AttachmentKey]) -> Result<Vec<Attachment>, RequestError> {
        let stale: Vec<Attachment> = self
            .attachments
            .values()
            .filter(|a| !valid.contains(&a.key))
            .cloned()
            .collect();
        for a in &stale {
            self.del(&a.key)?;
        }
        Ok(stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vswitch_cni::proto::IpConfig;

    fn request(container: &str, ifname: &str, ip: &str) -> AddRequest {
        AddRequest {
            key: AttachmentKey {
                container_id: container.into(),
                ifname: ifname.into(),
            },
            netns: "/var/run/netns/p".into(),
            pod_namespace: Some("default".into()),
            pod_name: Some("p".into()),
            ips: vec![IpConfig {
                address: ip.parse().unwrap(),
                gateway: None,
            }],
            routes: vec![],
            mtu: None,
        }
    }

    fn attached(req: &AddRequest) -> BTreeMap<AttachmentKey, Attachment> {
        let p = device::plan(
            req,
            1,
            1500,
            ("169.254.1.1".parse().unwrap(), "fe80::1".parse().unwrap()),
        );
        BTreeMap::from([(req.key.clone(), p.attachment)])
    }

    #[test]
    fn a_request_is_checked_before_anything_is_created() {
        let none = BTreeMap::new();
        let codes = |r: Result<Option<Attachment>, RequestError>| r.unwrap_err().code();
        use vswitch_cni::proto::code::INVALID_CONFIG;
        assert_eq!(
            codes(validate(&request("", "eth0", "10.0.0.1/32"), &none)),
            INVALID_CONFIG
        );
        for bad in ["", "a/b", "a b", "a:b", "sixteen-chars-xx"] {
            let e = validate(&request("c", bad, "10.0.0.1/32"), &none).unwrap_err();
            assert!(matches!(e, RequestError::BadIfname(_)), "{bad:?}: {e:?}");
        }
        let mut no_ips = request("c", "eth0", "10.0.0.1/32");
        no_ips.ips.clear();
        assert!(matches!(
            validate(&no_ips, &none),
            Err(RequestError::NoAddresses)
        ));
        assert_eq!(
            validate(&request("c", "eth0", "10.0.0.1/32"), &none).unwrap(),
            None
        );
    }

    #[test]
    fn the_same_add_twice_answers_the_attachment_and_another_is_refused() {
        let first = request("c", "eth0", "10.0.0.1/32");
        let now = attached(&first);
        let again = validate(&first, &now).unwrap();
        assert_eq!(again.as_ref(), now.get(&first.key));
        let other_address = request("c", "eth0", "10.0.0.2/32");
        let e = validate(&other_address, &now).unwrap_err();
        assert_eq!(
            e.to_string(),
            "container c interface eth0 is already attached with other settings"
        );
        let same_address = request("d", "eth0", "10.0.0.1/32");
        let e = validate(&same_address, &now).unwrap_err();
        assert_eq!(
            e.to_string(),
            "address 10.0.0.1 is already used by default/p (c)"
        );
    }
}
