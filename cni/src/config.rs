//! The network configuration the runtime writes on stdin.
//!
//! Accepted: the spec's keys (cniVersion, cniVersions, name, type, args,
//! ipMasq, ipam, dns, runtimeConfig, capabilities, prevResult, disableCheck,
//! disableGC), any key under the protocol's reserved `cni.dev/` prefix, and
//! this plugin's own keys: `socket` (vswitchd's control socket) and `mtu`.
//! Any other key is a mistake in this plugin's configuration and is refused
//! with code 7 naming it. Text that is not JSON, or a known key of the wrong
//! type, is code 6 naming the key. Each key is decoded on its own so that the
//! error can name it.
//!
//! The raw object is kept: the IPAM plugin is given the same configuration
//! (with its cniVersion and prevResult rewritten to the version it speaks).

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::CniError;
use crate::proto::{self, AttachmentKey, code};
use crate::result::Dns;

/// The spec's keys (of the plugin configuration, and of the list level that
/// some runtimes copy into it).
pub const STANDARD_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "args",
    "ipMasq",
    "ipam",
    "dns",
    "runtimeConfig",
    "capabilities",
    "prevResult",
    "disableCheck",
    "disableGC",
];

/// This plugin's own keys.
pub const PLUGIN_KEYS: &[&str] = &["socket", "mtu"];

/// The prefix the spec reserves for keys the runtime adds.
pub const RESERVED_PREFIX: &str = "cni.dev/";

/// The GC key of the spec; libcni also writes the older spelling.
pub const VALID_ATTACHMENTS: &[&str] = &["cni.dev/valid-attachments", "cni.dev/attachments"];

#[derive(Debug, Clone, PartialEq)]
pub struct Ipam {
    /// The IPAM plugin's executable name.
    pub plugin: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: Option<String>,
    pub cni_versions: Option<Vec<String>>,
    pub name: String,
    pub plugin_type: String,
    pub ipam: Option<Ipam>,
    pub dns: Dns,
    pub prev_result: Option<Value>,
    pub socket: PathBuf,
    pub mtu: Option<u32>,
    /// The object as given, for delegation.
    pub raw: Map<String, Value>,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                "cannot decode the network configuration",
            )
            .with_details(e.to_string())
        })?;
        let Value::Object(raw) = value else {
            return Err(CniError::new(
                code::DECODING_FAILURE,
                "the network configuration is not a JSON object",
            ));
        };
        for key in raw.keys() {
            let known = STANDARD_KEYS.contains(&key.as_str())
                || PLUGIN_KEYS.contains(&key.as_str())
                || key.starts_with(RESERVED_PREFIX);
            if !known {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("unknown field {key:?} in the network configuration"),
                )
                .with_details(format!(
                    "vswitch-cni accepts the CNI spec's fields and {PLUGIN_KEYS:?}"
                )));
            }
        }
        // Keys of the spec this plugin does not use are still type-checked.
        let _: Option<Map<String, Value>> = field(&raw, "args")?;
        let _: Option<Map<String, Value>> = field(&raw, "runtimeConfig")?;
        let _: Option<Map<String, Value>> = field(&raw, "capabilities")?;
        let _: Option<bool> = field(&raw, "ipMasq")?;
        let _: Option<bool> = field(&raw, "disableCheck")?;
        let _: Option<bool> = field(&raw, "disableGC")?;

        let name: String = required(&raw, "name")?;
        let plugin_type: String = required(&raw, "type")?;
        let ipam = match field::<Map<String, Value>>(&raw, "ipam")? {
            None => None,
            Some(ipam) => {
                let plugin: String = required(&ipam, "type").map_err(|e| prefix(e, "ipam."))?;
                if plugin.contains('/') || plugin.contains('\\') || plugin == "." || plugin == ".."
                {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        format!("field \"ipam.type\": {plugin:?} is not a plugin name"),
                    ));
                }
                Some(Ipam { plugin })
            }
        };
        let prev_result: Option<Map<String, Value>> = field(&raw, "prevResult")?;
        let mtu: Option<u32> = field(&raw, "mtu")?;
        if let Some(mtu) = mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("field \"mtu\": {mtu} is not an MTU (68 to 65535)"),
            ));
        }
        let socket: Option<PathBuf> = field(&raw, "socket")?;
        if socket.as_ref().is_some_and(|s| s.as_os_str().is_empty()) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "field \"socket\" is empty",
            ));
        }
        Ok(NetConf {
            cni_version: field(&raw, "cniVersion")?,
            cni_versions: field(&raw, "cniVersions")?,
            name,
            plugin_type,
            ipam,
            dns: field(&raw, "dns")?.unwrap_or_default(),
            prev_result: prev_result.map(Value::Object),
            socket: socket.unwrap_or_else(|| PathBuf::from(proto::DEFAULT_SOCKET)),
            mtu,
            raw,
        })
    }

    /// The attachments GC must keep (`cni.dev/valid-attachments`). Missing
    /// is an error: collecting with no list would remove every pod.
    pub fn valid_attachments(&self) -> Result<Vec<AttachmentKey>, CniError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Valid {
            #[serde(rename = "containerID")]
            container_id: String,
            ifname: String,
        }
        for key in VALID_ATTACHMENTS {
            if let Some(list) = field::<Vec<Valid>>(&self.raw, key)? {
                let keys = list.into_iter().map(|v| AttachmentKey {
                    container_id: v.container_id,
                    ifname: v.ifname,
                });
                return Ok(keys.collect());
            }
        }
        Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "GC needs the field {:?} in the network configuration",
                VALID_ATTACHMENTS[0]
            ),
        ))
    }
}

/// Decodes `obj[key]` when present (null counts as absent).
fn field<T: DeserializeOwned>(obj: &Map<String, Value>, key: &str) -> Result<Option<T>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => T::deserialize(v)
            .map(Some)
            .map_err(|e| CniError::new(code::DECODING_FAILURE, format!("field {key:?}: {e}"))),
    }
}

/// Decodes `obj[key]`, which must be present and, for a string, not empty.
fn required<T: DeserializeOwned>(obj: &Map<String, Value>, key: &str) -> Result<T, CniError> {
    if obj.get(key).and_then(Value::as_str) == Some("") {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("field {key:?} is empty"),
        ));
    }
    field(obj, key)?
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, format!("field {key:?} is missing")))
}

/// Puts `path` before the field name in an error about a nested field.
fn prefix(mut e: CniError, path: &str) -> CniError {
    e.msg = e.msg.replacen("field \"", &format!("field \"{path}"), 1);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn reads_the_standard_and_own_fields() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","cniVersions":["1.0.0","1.1.0"],"name":"pods","type":"vswitch-cni",
                "args":{"labels":{}},"ipMasq":false,"runtimeConfig":{"portMappings":[]},
                "capabilities":{"portMappings":true},"disableCheck":false,
                "ipam":{"type":"host-local","subnet":"10.0.0.0/24"},
                "dns":{"nameservers":["10.96.0.10"],"search":["svc.cluster.local"]},
                "socket":"/tmp/v.sock","mtu":1400,"cni.dev/valid-attachments":[]}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version.as_deref(), Some("1.1.0"));
        assert_eq!(c.cni_versions, Some(vec!["1.0.0".into(), "1.1.0".into()]));
        assert_eq!(c.name, "pods");
        assert_eq!(
            c.ipam,
            Some(Ipam {
                plugin: "host-local".into()
            })
        );
        assert_eq!(c.dns.search, ["svc.cluster.local"]);
        assert_eq!(c.socket, PathBuf::from("/tmp/v.sock"));
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.raw["ipam"]["subnet"], "10.0.0.0/24");
    }

    #[test]
    fn defaults() {
        let c = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#).unwrap();
        assert_eq!(c.socket, PathBuf::from(proto::DEFAULT_SOCKET));
        assert_eq!(c.mtu, None);
        assert_eq!(c.ipam, None);
        assert!(c.dns.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let e =
            parse(r#"{"cniVersion":"1.0.0","name":"n","type":"t","bridge":"br0"}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("\"bridge\""), "{e}");

        let e = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":"big"}"#).unwrap_err();
        assert_eq!(e.code, code::DECODING_FAILURE);
        assert!(e.msg.contains("\"mtu\""), "{e}");

        let e = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":9}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);

        let e = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{}}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("\"ipam.type\""), "{e}");

        let e = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"../x"}}"#)
            .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);

        let e = parse(r#"{"cniVersion":"1.0.0","type":"t"}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("\"name\""), "{e}");

        let e =
            parse(r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipMasq":"yes"}"#).unwrap_err();
        assert_eq!(e.code, code::DECODING_FAILURE);
        assert!(e.msg.contains("\"ipMasq\""), "{e}");

        assert_eq!(parse("{not json").unwrap_err().code, code::DECODING_FAILURE);
        assert_eq!(parse("[1]").unwrap_err().code, code::DECODING_FAILURE);
    }

    #[test]
    fn valid_attachments_in_either_spelling() {
        for key in VALID_ATTACHMENTS {
            let c = parse(&format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"t","{key}":[{{"containerID":"c1","ifname":"eth0"}}]}}"#
            ))
            .unwrap();
            let v = c.valid_attachments().unwrap();
            assert_eq!(
                v,
                [AttachmentKey {
                    container_id: "c1".into(),
                    ifname: "eth0".into()
                }]
            );
        }
        let c = parse(r#"{"cniVersion":"1.1.0","name":"n","type":"t"}"#).unwrap();
        assert_eq!(
            c.valid_attachments().unwrap_err().code,
            code::INVALID_CONFIG
        );
    }
}
