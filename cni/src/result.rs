//! The CNI success result (interfaces, ips, routes, dns) and its JSON in
//! each spec version the plugin speaks.
//!
//! One in-memory form, `CniResult`, holds every field of the newest result
//! type (1.1.0); `parse` reads any version's JSON into it (0.3.x/0.4.0 put a
//! "version" in each IP, which is implied by the address and dropped) and
//! `to_json` writes it for one version: "version" in IPs before 1.0.0, the
//! interface's mtu/socketPath/pciID and the route's mtu/advmss/priority/
//! table/scope only from 1.1.0, which added them.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::CniError;
use crate::proto::code;
use crate::version;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpEntry {
    /// Index into the result's interfaces; IPAM results leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.as_deref().unwrap_or_default().is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpEntry>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

/// The JSON shape every supported version shares, read leniently: fields
/// of other versions ("version" in IPs, "metadata" in interfaces) are
/// ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    cni_version: Option<String>,
    #[serde(default)]
    interfaces: Option<Vec<Interface>>,
    #[serde(default)]
    ips: Option<Vec<IpEntry>>,
    #[serde(default)]
    routes: Option<Vec<Route>>,
    #[serde(default)]
    dns: Option<Dns>,
}

impl CniResult {
    /// Reads a result of any supported version (a prevResult, or what a
    /// delegated plugin printed) and returns its version with it (empty
    /// when it has none). `what` names it in errors ("prevResult", "IPAM
    /// plugin host-local").
    pub fn parse(value: &Value, what: &str) -> Result<(String, CniResult), CniError> {
        let bad = |msg: String| CniError::new(code::DECODING_FAILURE, msg);
        let wire: Wire = serde_json::from_value(value.clone())
            .map_err(|e| bad(format!("cannot decode the result of {what}: {e}")))?;
        // Without cniVersion the result is read as any version would be.
        let ver = wire.cni_version.unwrap_or_default();
        if !ver.is_empty() && !version::is_supported(&ver) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "the result of {what} has cniVersion {ver:?}, which this plugin does not read"
                ),
            )
            .with_details(format!("supported: {:?}", version::SUPPORTED)));
        }
        let result = CniResult {
            interfaces: wire.interfaces.unwrap_or_default(),
            ips: wire.ips.unwrap_or_default(),
            routes: wire.routes.unwrap_or_default(),
            dns: wire.dns.unwrap_or_default(),
        };
        if let Some(bad_ip) = result
            .ips
            .iter()
            .find(|ip| ip.interface.is_some_and(|i| i >= result.interfaces.len()))
        {
            return Err(bad(format!(
                "the result of {what} has an IP ({}) whose interface index is out of range",
                bad_ip.address
            )));
        }
        Ok((ver, result))
    }

    /// The result as the spec writes it in `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let v1_1 = version::at_least(cni_version, "1.1.0");
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(cni_version));
        if !self.interfaces.is_empty() {
            let ifaces = self.interfaces.iter().map(|i| {
                let mut i = i.clone();
                if !v1_1 {
                    i.mtu = None;
                    i.socket_path = None;
                    i.pci_id = None;
                }
                i.mtu = i.mtu.filter(|m| *m != 0);
                to_value(&i)
            });
            out.insert("interfaces".into(), Value::Array(ifaces.collect()));
        }
        if !self.ips.is_empty() {
            let with_version = version::has_ip_version_field(cni_version);
            let ips = self.ips.iter().map(|ip| {
                let mut v = to_value(ip);
                if with_version && let Value::Object(m) = &mut v {
                    let family = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    m.insert("version".into(), json!(family));
                }
                v
            });
            out.insert("ips".into(), Value::Array(ips.collect()));
        }
        if !self.routes.is_empty() {
            let routes = self.routes.iter().map(|r| {
                if v1_1 {
                    to_value(r)
                } else {
                    to_value(&Route::new(r.dst, r.gw))
                }
            });
            out.insert("routes".into(), Value::Array(routes.collect()));
        }
        if !self.dns.is_empty() {
            out.insert("dns".into(), to_value(&self.dns));
        }
        Value::Object(out)
    }
}

fn to_value<T: Serialize>(t: &T) -> Value {
    // These types hold only strings, numbers and addresses: they always
    // serialize.
    serde_json::to_value(t).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("02:00:00:00:00:01".into()),
                mtu: Some(1400),
                sandbox: Some("/run/netns/x".into()),
                ..Default::default()
            }],
            ips: vec![
                IpEntry {
                    interface: Some(0),
                    address: "10.244.1.5/24".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                },
                IpEntry {
                    interface: Some(0),
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: None,
                },
            ],
            routes: vec![Route {
                mtu: Some(1300),
                ..Route::new("0.0.0.0/0".parse().unwrap(), None)
            }],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn writes_each_version() {
        let r = sample();
        let v11 = r.to_json("1.1.0");
        assert_eq!(v11["interfaces"][0]["mtu"], 1400);
        assert_eq!(v11["routes"][0]["mtu"], 1300);
        assert!(v11["ips"][0].get("version").is_none());
        assert_eq!(v11["ips"][0]["address"], "10.244.1.5/24");
        assert_eq!(v11["ips"][0]["interface"], 0);

        let v10 = r.to_json("1.0.0");
        assert!(v10["interfaces"][0].get("mtu").is_none());
        assert!(v10["routes"][0].get("mtu").is_none());
        assert!(v10["ips"][0].get("version").is_none());

        for old in ["0.3.0", "0.3.1", "0.4.0"] {
            let v = r.to_json(old);
            assert_eq!(v["cniVersion"], old);
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["ips"][1]["version"], "6");
            assert!(v["interfaces"][0].get("mtu").is_none());
        }
    }

    #[test]
    fn round_trips_through_every_version() {
        let r = sample();
        for v in version::SUPPORTED {
            let (ver, back) = CniResult::parse(&r.to_json(v), "test").unwrap();
            assert_eq!(ver, *v);
            assert_eq!(back.ips, r.ips);
            assert_eq!(back.dns, r.dns);
        }
    }

    #[test]
    fn reads_a_result_without_version() {
        let v = json!({"ips": [{"address": "10.0.0.2/24"}]});
        let (ver, r) = CniResult::parse(&v, "x").unwrap();
        assert_eq!((ver.as_str(), r.ips.len()), ("", 1));
    }

    #[test]
    fn empty_dns_is_left_out() {
        // host-local answers "dns": {}.
        let v = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}], "dns": {}});
        let (_, r) = CniResult::parse(&v, "host-local").unwrap();
        assert!(r.dns.is_empty());
        assert!(r.to_json("1.0.0").get("dns").is_none());
    }

    #[test]
    fn rejects_bad_results() {
        let bad_index =
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "interface": 3}]});
        assert_eq!(
            CniResult::parse(&bad_index, "x").unwrap_err().code,
            code::DECODING_FAILURE
        );
        let old = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24"}});
        assert_eq!(
            CniResult::parse(&old, "x").unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
        let junk = json!({"cniVersion": "1.0.0", "ips": [{"address": "nope"}]});
        assert_eq!(
            CniResult::parse(&junk, "x").unwrap_err().code,
            code::DECODING_FAILURE
        );
        let junk = json!({"cniVersion": "1.0.0", "interfaces": {"name": "eth0"}});
        assert_eq!(
            CniResult::parse(&junk, "x").unwrap_err().code,
            code::DECODING_FAILURE
        );
    }
}
