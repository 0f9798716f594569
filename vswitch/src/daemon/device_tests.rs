//! ADD's device logic without root: a fake [`Devices`] records every call
//! and fails where a test asks, a fake store saves into a list.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Mutex;

use ipnet::IpNet;
use vswitch_cni::proto::{AddRequest, Attachment, AttachmentKey, IpConfig, RouteConfig};

use super::*;
use crate::daemon::error::RequestError;
use crate::daemon::state::Saver;

const GATEWAYS: (Ipv4Addr, Ipv6Addr) = (
    Ipv4Addr::new(169, 254, 1, 1),
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
);

/// Calls as they happen, and where to fail.
#[derive(Default)]
struct FakeDevices {
    calls: Mutex<Vec<String>>,
    fail_configure: bool,
    fail_tap: bool,
    /// Namespaces that do not exist.
    missing: Vec<String>,
}

impl FakeDevices {
    fn record(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn failing_configure() -> FakeDevices {
        FakeDevices {
            fail_configure: true,
            ..Default::default()
        }
    }
}

/// A fake TAP that says when it is closed.
struct FakeTap<'a>(&'a FakeDevices, String);

impl Drop for FakeTap<'_> {
    fn drop(&mut self) {
        self.0.record(format!("close {}", self.1));
    }
}

impl<'a> Devices for &'a FakeDevices {
    type Tap = FakeTap<'a>;
    fn in_netns<T: Send>(&self, netns: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        if !self.netns_exists(netns) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        self.record(format!("enter {}", netns.display()));
        Ok(f())
    }
    fn netns_exists(&self, netns: &Path) -> bool {
        !self.missing.iter().any(|m| Path::new(m) == netns)
    }
    fn create_tap(&self, ifname: &str) -> io::Result<FakeTap<'a>> {
        self.record(format!("tap {ifname}"));
        if self.fail_tap {
            return Err(io::Error::from_raw_os_error(16));
        }
        Ok(FakeTap(self, ifname.to_string()))
    }
    fn configure(&self, cfg: &LinkConfig) -> io::Result<()> {
        self.record(format!("configure {}", cfg.name));
        if self.fail_configure {
            return Err(io::Error::other("address refused"));
        }
        Ok(())
    }
    fn delete_link(&self, ifname: &str) -> io::Result<()> {
        self.record(format!("delete {ifname}"));
        Ok(())
    }
}

/// A store in memory; `fail` makes every save fail.
#[derive(Default)]
struct FakeStore {
    saved: Mutex<Vec<Attachment>>,
    fail: bool,
}

impl Saver for FakeStore {
    fn save(&self, a: &Attachment) -> io::Result<()> {
        if self.fail {
            return Err(io::Error::other("disk full"));
        }
        self.saved.lock().unwrap().push(a.clone());
        Ok(())
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// An ADD for pod `default/web` with one address per family, no routes.
fn add_request() -> AddRequest {
    AddRequest {
        key: AttachmentKey {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        },
        netns: "/var/run/netns/web".into(),
        pod_namespace: Some("default".into()),
        pod_name: Some("web".into()),
        ips: vec![
            IpConfig {
                address: net("10.244.1.5/32"),
                gateway: None,
            },
            IpConfig {
                address: net("fd00::5/128"),
                gateway: None,
            },
        ],
        routes: vec![],
        mtu: None,
    }
}

#[test]
fn the_plan_takes_mac_from_the_port_and_routes_through_the_gateways() {
    let p = plan(&add_request(), 0x0102, 1450, GATEWAYS);
    assert_eq!(p.link.name, "eth0");
    assert_eq!(p.link.mac, [0x02, 0x76, 0x73, 0x70, 0x01, 0x02]);
    assert_eq!(
        p.link.mtu, 1450,
        "the daemon's MTU when the request has none"
    );
    assert_eq!(p.link.addrs, vec![net("10.244.1.5/32"), net("fd00::5/128")]);
    let gw4 = IpAddr::V4(GATEWAYS.0);
    let gw6 = IpAddr::V6(GATEWAYS.1);
    assert_eq!(
        p.link.routes,
        vec![
            // 169.254.1.1 lies outside a /32: a link route to it first
            (net("169.254.1.1/32"), None),
            (net("0.0.0.0/0"), Some(gw4)),
            (net("::/0"), Some(gw6)),
        ]
    );
    let a = &p.attachment;
    assert_eq!(a.pod, "default/web");
    assert_eq!(a.mac, "02:76:73:70:01:02");
    assert_eq!(a.port, 0x0102);
    assert_eq!(a.mtu, 1450);
    assert_eq!(a.netns, "/var/run/netns/web");
    assert_eq!(
        a.routes,
        vec![
            RouteConfig {
                dst: net("0.0.0.0/0"),
                gw: Some(gw4)
            },
            RouteConfig {
                dst: net("::/0"),
                gw: Some(gw6)
            },
        ]
    );
}

#[test]
fn the_plan_keeps_ipam_routes_and_fills_in_their_gateways() {
    let mut req = add_request();
    req.mtu = Some(9000);
    req.pod_namespace = None;
    req.pod_name = None;
    req.ips[0].gateway = Some("10.244.1.1".parse().unwrap());
    req.routes = vec![RouteConfig {
        dst: net("10.96.0.0/12"),
        gw: None,
    }];
    let p = plan(&req, 3, 1500, GATEWAYS);
    assert_eq!(p.link.mtu, 9000);
    assert_eq!(p.attachment.pod, "default/c1", "the container id names it");
    assert_eq!(
        p.link.routes,
        vec![
            (net("10.96.0.0/12"), Some("10.244.1.1".parse().unwrap())),
            (net("::/0"), Some(IpAddr::V6(GATEWAYS.1))),
        ],
        "IPAM's gateway, no link route, a default only for IPv6"
    );
}

#[test]
fn create_makes_the_tap_in_the_pods_namespace_configures_it_and_saves() {
    let dev = FakeDevices::default();
    let store = FakeStore::default();
    let p = plan(&add_request(), 1, 1500, GATEWAYS);
    let tap = create(&&dev, &store, &p).expect("created");
    assert_eq!(
        dev.calls(),
        ["enter /var/run/netns/web", "tap eth0", "configure eth0"]
    );
    assert_eq!(*store.saved.lock().unwrap(), vec![p.attachment.clone()]);
    drop(tap);
    assert_eq!(dev.calls().last().unwrap(), "close eth0");
}

#[test]
fn a_failed_configuration_deletes_the_new_device_and_saves_nothing() {
    let dev = FakeDevices::failing_configure();
    let store = FakeStore::default();
    let p = plan(&add_request(), 1, 1500, GATEWAYS);
    let e = create(&&dev, &store, &p).err().expect("fails");
    assert!(matches!(e, RequestError::CreateInterface(_)), "{e:?}");
    assert_eq!(e.reply().details, "address refused");
    assert_eq!(
        dev.calls(),
        [
            "enter /var/run/netns/web",
            "tap eth0",
            "configure eth0",
            "close eth0",
            "delete eth0"
        ],
        "the descriptor is closed before the link is deleted"
    );
    assert!(store.saved.lock().unwrap().is_empty());
}

#[test]
fn a_tap_that_cannot_be_created_leaves_nothing_to_undo() {
    let dev = FakeDevices {
        fail_tap: true,
        ..Default::default()
    };
    let store = FakeStore::default();
    let p = plan(&add_request(), 1, 1500, GATEWAYS);
    let e = create(&&dev, &store, &p).err().expect("fails");
    assert!(matches!(e, RequestError::CreateInterface(_)), "{e:?}");
    assert_eq!(dev.calls(), ["enter /var/run/netns/web", "tap eth0"]);
    assert!(store.saved.lock().unwrap().is_empty());
}

#[test]
fn a_failed_save_removes_the_configured_device() {
    let dev = FakeDevices::default();
    let store = FakeStore {
        fail: true,
        ..Default::default()
    };
    let p = plan(&add_request(), 1, 1500, GATEWAYS);
    let e = create(&&dev, &store, &p).err().expect("fails");
    assert!(matches!(e, RequestError::SaveState(_)), "{e:?}");
    assert_eq!(e.reply().msg, "saving the port state");
    assert_eq!(
        dev.calls(),
        [
            "enter /var/run/netns/web",
            "tap eth0",
            "configure eth0",
            "close eth0",
            "enter /var/run/netns/web",
            "delete eth0"
        ]
    );
}

#[test]
fn a_gone_namespace_is_an_error_for_create_and_nothing_for_remove() {
    let dev = FakeDevices {
        missing: vec!["/var/run/netns/web".into()],
        ..Default::default()
    };
    let store = FakeStore::default();
    let p = plan(&add_request(), 1, 1500, GATEWAYS);
    let e = create(&&dev, &store, &p).err().expect("fails");
    assert!(matches!(e, RequestError::CreateInterface(_)), "{e:?}");
    remove(&&dev, &p.attachment).expect("gone is fine");
    assert!(dev.calls().is_empty());
}
