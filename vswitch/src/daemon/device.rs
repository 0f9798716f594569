//! A pod's device: what ADD creates ([`plan`]: name, MAC, MTU, addresses,
//! routes, and the attachment saved), and the one function that creates
//! and configures it ([`create`]), with its rollback, over [`Devices`]: the
//! netlink and TAP calls ([`System`] in the daemon, a recording fake in
//! the tests below, which need no root).
//!
//! The TAP is created inside the pod's namespace, under its final name, by
//! a thread that entered it: the daemon holds its descriptor all the same.
//! (Creating it in the host namespace and moving it costs an RCU grace
//! period in the kernel, 15 ms here, most of an attach.)

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::IpNet;
use policy::PodKey;
use vswitch_cni::proto::{AddRequest, Attachment, IpConfig, RouteConfig};
use vswitch_datapath::PortId;
use vswitch_datapath::io::tap::TapPort;
use vswitch_datapath::parse::mac_text;

use super::error::RequestError;
use super::netlink::{self, LinkConfig};
use super::netns;
use super::state::Saver;

/// The system calls a pod's device needs. `create_tap`, `configure` and
/// `delete_link` act in the calling thread's namespace: [`create`] calls
/// them inside [`Devices::in_netns`].
pub(crate) trait Devices: Sync {
    type Tap: Send;
    /// Runs `f` on a thread inside the network namespace at `netns`.
    fn in_netns<T: Send>(&self, netns: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T>;
    fn netns_exists(&self, netns: &Path) -> bool;
    /// A persistent TAP named `ifname`.
    fn create_tap(&self, ifname: &str) -> io::Result<Self::Tap>;
    fn configure(&self, cfg: &LinkConfig) -> io::Result<()>;
    fn delete_link(&self, ifname: &str) -> io::Result<()>;
}

/// The real thing: netlink and `/dev/net/tun`.
pub(crate) struct System;

impl Devices for System {
    type Tap = TapPort;
    fn in_netns<T: Send>(&self, path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        netns::in_netns(path, f)
    }
    fn netns_exists(&self, path: &Path) -> bool {
        netns::exists(path)
    }
    fn create_tap(&self, ifname: &str) -> io::Result<TapPort> {
        TapPort::create_persistent(ifname)
    }
    fn configure(&self, cfg: &LinkConfig) -> io::Result<()> {
        netlink::configure(&cfg.name, cfg)
    }
    fn delete_link(&self, ifname: &str) -> io::Result<()> {
        netlink::delete_link(ifname)
    }
}

/// What ADD makes for a pod: the link's configuration and the attachment
/// that is saved (and answered).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub link: LinkConfig,
    pub attachment: Attachment,
}

/// The MAC of a pod port: locally administered, from the port number.
pub(crate) fn pod_mac(port: PortId) -> [u8; 6] {
    [0x02, 0x76, 0x73, 0x70, (port >> 8) as u8, port as u8]
}

/// The pod an attachment belongs to: K8S_POD_NAMESPACE and K8S_POD_NAME
/// (podman passes only the name), else namespace "default", and the
/// container id for a name.
pub(crate) fn pod_key(req: &AddRequest) -> PodKey {
    let given = |x: &Option<String>| x.clone().filter(|s| !s.is_empty());
    PodKey::new(
        given(&req.pod_namespace).unwrap_or_else(|| "default".into()),
        given(&req.pod_name).unwrap_or_else(|| req.key.container_id.clone()),
    )
}

/// The device for `req` on switch port `port`: MAC from the port, the
/// request's MTU or `default_mtu`, IPAM's addresses, the pod's routes
/// (after the link routes their gateways need).
pub(crate) fn plan(
    req: &AddRequest,
    port: PortId,
    default_mtu: u32,
    gateways: (Ipv4Addr, Ipv6Addr),
) -> Plan {
    let mac = pod_mac(port);
    let mtu = req.mtu.unwrap_or(default_mtu);
    let routes = pod_routes(&req.ips, &req.routes, gateways);
    let link = LinkConfig {
        name: req.key.ifname.clone(),
        mac,
        mtu,
        addrs: req.ips.iter().map(|c| c.address).collect(),
        routes: gateway_link_routes(&routes)
            .into_iter()
            .chain(routes.iter().map(|r| (r.dst, r.gw)))
            .collect(),
    };
    let attachment = Attachment {
        key: req.key.clone(),
        netns: req.netns.clone(),
        pod: pod_key(req).to_string(),
        mac: mac_text(mac),
        mtu,
        ips: req.ips.clone(),
        routes,
        port,
    };
    Plan { link, attachment }
}

/// Creates and configures the pod's device inside its namespace and saves
/// the attachment. A configuration that fails deletes the new device; a
/// save that fails deletes it too: nothing is left behind.
pub(crate) fn create<D: Devices>(
    dev: &D,
    store: &dyn Saver,
    plan: &Plan,
) -> Result<D::Tap, RequestError> {
    let ifname = &plan.link.name;
    let tap = dev
        .in_netns(Path::new(&plan.attachment.netns), || {
            let tap = dev.create_tap(ifname)?;
            match dev.configure(&plan.link) {
                Ok(()) => Ok(tap),
                Err(e) => {
                    drop(tap);
                    let _ = dev.delete_link(ifname);
                    Err(e)
                }
            }
        })
        .and_then(|r| r)
        .map_err(RequestError::CreateInterface)?;
    if let Err(e) = store.save(&plan.attachment) {
        drop(tap);
        let _ = remove(dev, &plan.attachment);
        return Err(RequestError::SaveState(e));
    }
    Ok(tap)
}

/// Deletes the pod's interface inside its namespace (gone is fine).
pub(crate) fn remove<D: Devices>(dev: &D, a: &Attachment) -> io::Result<()> {
    let path = Path::new(&a.netns);
    if !dev.netns_exists(path) {
        return Ok(());
    }
    let ifname = a.key.ifname.as_str();
    dev.in_netns(path, move || dev.delete_link(ifname))?
}

/// The pod's routes: IPAM's, with a missing gateway filled in; without
/// any, a default route per family through the family's gateway.
fn pod_routes(
    ips: &[IpConfig],
    routes: &[RouteConfig],
    (gateway_v4, gateway_v6): (Ipv4Addr, Ipv6Addr),
) -> Vec<RouteConfig> {
    let gw_for = |v4: bool| -> IpAddr {
        ips.iter()
            .filter(|c| c.address.addr().is_ipv4() == v4)
            .find_map(|c| c.gateway)
            .unwrap_or(if v4 {
                IpAddr::V4(gateway_v4)
            } else {
                IpAddr::V6(gateway_v6)
            })
    };
    let mut out: Vec<RouteConfig> = routes
        .iter()
        .map(|r| RouteConfig {
            dst: r.dst,
            gw: Some(r.gw.unwrap_or_else(|| gw_for(r.dst.addr().is_ipv4()))),
        })
        .collect();
    for v4 in [true, false] {
        let has_family = ips.iter().any(|c| c.address.addr().is_ipv4() == v4);
        let routed = out.iter().any(|r| r.dst.addr().is_ipv4() == v4);
        if has_family && !routed {
            let dst = if v4 {
                IpNet::new(Ipv4Addr::UNSPECIFIED.into(), 0)
            } else {
                IpNet::new(Ipv6Addr::UNSPECIFIED.into(), 0)
            }
            .expect("valid prefix");
            out.push(RouteConfig {
                dst,
                gw: Some(gw_for(v4)),
            });
        }
    }
    out
}

/// An IPv4 gateway outside every address's subnet (169.254.1.1 next to
/// a /32) needs a link route first.
fn gateway_link_routes(routes: &[RouteConfig]) -> Vec<(IpNet, Option<IpAddr>)> {
    let mut out: Vec<(IpNet, Option<IpAddr>)> = Vec::new();
    for r in routes {
        if let Some(IpAddr::V4(gw)) = r.gw
            && gw.is_link_local()
            && !out.iter().any(|(d, _)| d.addr() == IpAddr::V4(gw))
        {
            out.insert(0, (IpNet::from(IpAddr::V4(gw)), None));
        }
    }
    out
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
