//! The control protocol between vswitch-cni (and vswitchctl) and vswitchd.
//!
//! One request per connection on vswitchd's Unix socket: the client writes
//! one JSON object and a newline, the daemon answers with one JSON object
//! and a newline, then closes. Both sides reject unknown fields, so a
//! plugin and a daemon of different versions fail loudly, not silently.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The default path of vswitchd's control socket.
pub const DEFAULT_SOCKET: &str = "/run/vswitch/vswitchd.sock";

/// One attachment: a container's interface, as CNI names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

/// An address for the pod's interface, from IPAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpConfig {
    /// The address with the prefix IPAM gave (10.244.1.5/24, or a /32).
    pub address: IpNet,
    /// The gateway IPAM gave, if any; otherwise the switch's link-local
    /// gateway (169.254.1.1 or fe80::1) is the pod's default route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// A route for the pod's interface, from IPAM (`gw` absent: the gateway of
/// the destination's family).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// What CNI ADD asks of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    #[serde(flatten)]
    pub key: AttachmentKey,
    /// The path of the pod's network namespace (CNI_NETNS).
    pub netns: String,
    /// The pod, from CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME); a missing
    /// namespace is "default", a missing name the container id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The interface MTU; absent: the daemon's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// A request. Variants without fields are written `Status {}`, not
/// `Status`: serde lets a unit variant of an internally tagged enum
/// (`{"op":"status","bogus":1}`) through despite `deny_unknown_fields`, and
/// refuses the unknown field, by name, for a struct variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Creates the pod's TAP in its namespace and attaches it to the switch.
    /// The reply is the attachment. Adding an attachment that exists with
    /// the same settings answers it again; with other settings it is an
    /// error.
    Add(AddRequest),
    /// Detaches and deletes the interface. Succeeds when it is already gone.
    Del(AttachmentKey),
    /// The attachment as the daemon has it, after checking that the
    /// interface still exists in the pod's namespace with its addresses.
    Check(AttachmentKey),
    /// Whether the daemon is ready to add pods.
    Status {},
    /// Every attachment.
    List {},
    /// Removes every attachment not in `valid`; the reply lists what went.
    Gc { valid: Vec<AttachmentKey> },
    /// (vswitchctl) The switch's ports with their counters.
    Ports {},
    /// (vswitchctl) Flow-cache entries, at most `limit`.
    Flows { limit: usize },
    /// (vswitchctl) Tracked connections, at most `limit`.
    Conntrack { limit: usize },
    /// (vswitchctl) The Services the switch translates, with their
    /// endpoints and connections.
    Services {},
    /// (vswitchctl) Which policies and rules allow or deny a connection from
    /// `src` to `dst` (pod "namespace/name" or address) on `port`/`protocol`,
    /// in the live state.
    Explain {
        src: String,
        dst: String,
        port: u16,
        protocol: String,
    },
}

/// A switch port as vswitchctl shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortInfo {
    pub id: u16,
    /// "namespace/pod/ifname", or the node TAP's name.
    pub name: String,
    pub mac: String,
    /// "pod", "node", "remote" (another node, through the overlay; `ips`
    /// are its overlay address and pod CIDRs' network addresses) or
    /// "overlay" (the overlay's socket).
    pub kind: String,
    pub ips: Vec<IpAddr>,
    /// Whether the policy that knows the pod is installed (fail closed).
    pub ready: bool,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames for this port dropped because sending failed (the port's
    /// device is gone or down).
    #[serde(default)]
    pub tx_error: u64,
    /// Frames for this port dropped because its queue of frames waiting
    /// for the port to take them was full.
    #[serde(default)]
    pub tx_queue_full: u64,
    /// Times the switch stopped reading this (pod's) port for a while
    /// because its slow-path budget was spent.
    #[serde(default)]
    pub rx_paused: u64,
    /// Frames for the switch that the port's socket dropped before the
    /// switch read them (the overlay's socket, its receive buffer full).
    #[serde(default)]
    pub rx_dropped: u64,
    /// Packets by outcome (fast_forward, policy_deny, ...), non-zero only.
    pub outcomes: std::collections::BTreeMap<String, u64>,
}

/// One flow-cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowInfo {
    pub in_port: u16,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub sport: u16,
    pub dport: u16,
    pub out_port: u16,
    pub routed: bool,
    /// Computed under the current policy generation and ports (a stale
    /// entry is a miss and is replaced at its next packet).
    pub current: bool,
}

/// A Service frontend (cluster IP, port, protocol) the switch translates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceInfo {
    /// "namespace/name"
    pub service: String,
    pub port_name: Option<String>,
    pub ip: IpAddr,
    pub port: u16,
    /// TCP, UDP or SCTP
    pub protocol: String,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity_seconds: Option<u64>,
    /// `internalTrafficPolicy: Local`.
    pub local_only: bool,
    pub endpoints: Vec<EndpointInfo>,
    /// New connections translated through it, and refused for want of an
    /// endpoint, since it was installed.
    #[serde(default)]
    pub connections_total: u64,
    #[serde(default)]
    pub refused_total: u64,
}

/// An endpoint of a Service frontend, with its conditions and the switch's
/// connections to it through the frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointInfo {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node.
    pub local: bool,
    /// New connections may go to it (ready; with none ready, serving).
    pub usable: bool,
    pub connections: u64,
}

/// One tracked connection, as its originator opened it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnInfo {
    pub protocol: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// new, established, closing or closed
    pub state: String,
    pub idle_ms: u64,
}

/// An attachment as the daemon holds it (also what it keeps on disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    #[serde(flatten)]
    pub key: AttachmentKey,
    pub netns: String,
    /// "namespace/name"
    pub pod: String,
    pub mac: String,
    pub mtu: u32,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteConfig>,
    /// The switch port number.
    pub port: u16,
}

/// Error codes, as the CNI spec numbers them (the daemon uses the same).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_READY: u32 = 50;
    /// Plugin-specific (100 and up): the daemon refused the attachment.
    pub const ATTACH_FAILED: u32 = 100;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Reply {
    Attachment(Attachment),
    Attachments(Vec<Attachment>),
    Done,
    Status {
        ready: bool,
        message: String,
    },
    Ports(Vec<PortInfo>),
    /// Entries shown and the total.
    Flows {
        flows: Vec<FlowInfo>,
        total: usize,
    },
    Conntrack {
        connections: Vec<ConnInfo>,
        total: usize,
    },
    Explanation {
        allowed: bool,
        text: String,
    },
    Services(Vec<ServiceInfo>),
    Error(ErrorReply),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why `line` was not refused with an error naming `field`, if it was not.
    fn refused_field(line: &str, field: &str) -> Option<String> {
        match serde_json::from_str::<Request>(line) {
            Ok(r) => Some(format!("accepted {line} as {r:?}")),
            Err(e) if !e.to_string().contains(&format!("`{field}`")) => {
                Some(format!("{line}: the error does not name `{field}`: {e}"))
            }
            Err(_) => None,
        }
    }

    #[test]
    fn unknown_request_fields_are_refused_by_name() {
        let lines = [
            (r#"{"op":"status","bogus":1}"#, "bogus"),
            (r#"{"op":"list","bogus":1}"#, "bogus"),
            (r#"{"op":"ports","bogus":1}"#, "bogus"),
            (
                r#"{"op":"explain","src":"a","dst":"b","port":1,"protocol":"tcp","x":1}"#,
                "x",
            ),
            (
                r#"{"op":"del","container_id":"c","ifname":"eth0","bogus":1}"#,
                "bogus",
            ),
            (
                r#"{"op":"check","container_id":"c","ifname":"eth0","bogus":1}"#,
                "bogus",
            ),
            (
                r#"{"op":"add","container_id":"c","ifname":"eth0","netns":"/n","ips":[],"bogus":1}"#,
                "bogus",
            ),
            (
                r#"{"op":"add","container_id":"c","ifname":"eth0","netns":"/n","ips":[{"address":"10.0.0.2/24","bogus":1}]}"#,
                "bogus",
            ),
            (r#"{"op":"flows","limit":3,"bogus":1}"#, "bogus"),
            (
                r#"{"op":"gc","valid":[{"container_id":"c","ifname":"eth0","bogus":1}]}"#,
                "bogus",
            ),
        ];
        let failures: Vec<String> = lines
            .iter()
            .filter_map(|(line, field)| refused_field(line, field))
            .collect();
        assert!(failures.is_empty(), "{failures:#?}");
    }

    /// Every request the plugin and vswitchctl send reads back as itself.
    #[test]
    fn every_request_round_trips() {
        let key = AttachmentKey {
            container_id: "c".into(),
            ifname: "eth0".into(),
        };
        let requests = [
            Request::Add(AddRequest {
                key: key.clone(),
                netns: "/var/run/netns/x".into(),
                pod_namespace: Some("ns".into()),
                pod_name: Some("p".into()),
                ips: vec![IpConfig {
                    address: "10.244.1.5/24".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                }],
                routes: vec![RouteConfig {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw: None,
                }],
                mtu: Some(1450),
            }),
            Request::Add(AddRequest {
                key: key.clone(),
                netns: "/n".into(),
                pod_namespace: None,
                pod_name: None,
                ips: vec![],
                routes: vec![],
                mtu: None,
            }),
            Request::Del(key.clone()),
            Request::Check(key.clone()),
            Request::Status {},
            Request::List {},
            Request::Gc { valid: vec![key] },
            Request::Ports {},
            Request::Flows { limit: 10 },
            Request::Conntrack { limit: 10 },
            Request::Services {},
            Request::Explain {
                src: "a/b".into(),
                dst: "10.0.0.1".into(),
                port: 80,
                protocol: "tcp".into(),
            },
        ];
        for r in requests {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r, "{line}");
        }
    }
}
