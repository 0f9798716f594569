//! The daemon's errors: one enum for what stops vswitchd from starting and
//! one for what a request from the plugin or vswitchctl can fail on. Each
//! variant names the operation that failed.
//!
//! vswitchd prints a start error as one line and exits, so these messages
//! carry their cause in the text. A request error goes back to the client
//! as the CNI error of [`RequestError::code`] (the codes of
//! `vswitch_cni::proto::code`, unchanged), with the cause as its details.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use policy::PodKey;
use vswitch_cni::proto::{ErrorReply, code};

/// Why vswitchd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot open /dev/net/tun: {0} (vswitchd needs CAP_NET_ADMIN and access to /dev/net/tun)"
    )]
    OpenTun(#[source] io::Error),
    #[error("--manifests {}: not a folder", .0.display())]
    ManifestsNotAFolder(PathBuf),
    #[error(transparent)]
    Manifests(#[from] super::manifests::ManifestError),
    #[error("state folder {}: {source}", path.display())]
    StateFolder { path: PathBuf, source: io::Error },
    #[error(
        "state folder {} is in use by another vswitchd{}",
        path.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    StateFolderInUse { path: PathBuf, pid: Option<u32> },
    #[error(transparent)]
    ControlSocket(#[from] super::control::BindError),
    #[error("switch: {0}")]
    StartSwitch(#[source] io::Error),
    #[error(transparent)]
    Metrics(#[from] super::metrics::ServeError),
    #[error("node TAP {name}: {source}")]
    NodeTap { name: String, source: io::Error },
    #[error("node TAP {name}: {source} (creating TAP devices needs CAP_NET_ADMIN)")]
    NodeTapDenied { name: String, source: io::Error },
    #[error(
        "node TAP {name} is busy: another vswitchd probably runs in this network namespace (give this one another --node-tap, or --no-node-port)"
    )]
    NodeTapBusy { name: String },
    #[error("node TAP {name}: {source}")]
    ConfigureNodeTap { name: String, source: io::Error },
    #[error("node addresses: {0}")]
    NodeAddresses(#[source] io::Error),
    #[error("no switch port for the overlay")]
    NoOverlayPort,
    #[error(transparent)]
    Overlay(#[from] super::nodes::OverlayError),
}

/// Why a request (ADD, DEL, CHECK, GC, a query) failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("container_id is empty")]
    EmptyContainerId,
    #[error("ifname {0:?}: not a valid interface name")]
    BadIfname(String),
    #[error("no addresses: IPAM gave none")]
    NoAddresses,
    #[error("container {container} interface {ifname} is already attached with other settings")]
    AttachedOtherwise { container: String, ifname: String },
    #[error("address {ip} is already used by {pod} ({container})")]
    AddressInUse {
        ip: IpAddr,
        pod: String,
        container: String,
    },
    #[error("netns {0}: no such network namespace")]
    NoSuchNetns(String),
    #[error("every switch port is in use")]
    NoFreePort,
    #[error("creating the pod's interface")]
    CreateInterface(#[source] io::Error),
    #[error("saving the port state")]
    SaveState(#[source] io::Error),
    #[error("removing the port state")]
    RemoveState(#[source] io::Error),
    #[error("container {container} interface {ifname} is not attached")]
    NotAttached { container: String, ifname: String },
    #[error("reading the pod's interface")]
    ReadInterface(#[source] io::Error),
    #[error("interface {ifname} is missing in {netns}")]
    InterfaceMissing { ifname: String, netns: String },
    #[error("interface {ifname}: MAC is {found:?}, expected {expected}")]
    WrongMac {
        ifname: String,
        found: Option<String>,
        expected: String,
    },
    #[error("interface {ifname}: address {address} is missing")]
    AddressMissing {
        ifname: String,
        address: ipnet::IpNet,
    },
    #[error("the switch did not answer")]
    SwitchSilent,
    #[error("unexpected answer from the switch")]
    SwitchUnexpected,
    #[error("{0:?}: neither an address nor namespace/name")]
    BadEndpoint(String),
    #[error("no pod {0} is known")]
    UnknownPod(PodKey),
    #[error("no Service {0} is known")]
    UnknownService(PodKey),
    #[error(
        "Service {service} has no port {port}/{protocol} with a cluster IP of the source's family"
    )]
    NoServicePort {
        service: PodKey,
        port: u16,
        protocol: String,
    },
    #[error("pod {0} has no address")]
    PodWithoutAddress(PodKey),
    #[error("{0}: not TCP, UDP or SCTP")]
    BadProtocol(String),
}

impl RequestError {
    /// The CNI error code the client gets.
    pub fn code(&self) -> u32 {
        use RequestError::*;
        match self {
            EmptyContainerId
            | BadIfname(_)
            | NoAddresses
            | AttachedOtherwise { .. }
            | AddressInUse { .. }
            | NoSuchNetns(_)
            | BadEndpoint(_)
            | PodWithoutAddress(_)
            | BadProtocol(_) => code::INVALID_CONFIG,
            NoFreePort | SwitchSilent => code::TRY_AGAIN_LATER,
            CreateInterface(_)
            | SaveState(_)
            | RemoveState(_)
            | ReadInterface(_)
            | InterfaceMissing { .. }
            | WrongMac { .. }
            | AddressMissing { .. } => code::ATTACH_FAILED,
            NotAttached { .. } | UnknownPod(_) | UnknownService(_) | NoServicePort { .. } => {
                code::UNKNOWN_CONTAINER
            }
            SwitchUnexpected => code::IO_FAILURE,
        }
    }

    /// The reply for the client: code, message, and the cause as details.
    pub fn reply(&self) -> ErrorReply {
        ErrorReply {
            code: self.code(),
            msg: self.to_string(),
            details: std::error::Error::source(self)
                .map(|e| e.to_string())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plugin and the end-to-end tests read these codes: they are the
    /// ones the hand-built failures had.
    #[test]
    fn codes_and_details_are_what_the_client_always_got() {
        let r = RequestError::NoSuchNetns("/var/run/netns/x".into()).reply();
        assert_eq!(r.code, code::INVALID_CONFIG);
        assert_eq!(r.msg, "netns /var/run/netns/x: no such network namespace");
        assert_eq!(r.details, "");
        let r = RequestError::CreateInterface(io::Error::other("boom")).reply();
        assert_eq!(r.code, code::ATTACH_FAILED);
        assert_eq!(r.msg, "creating the pod's interface");
        assert_eq!(r.details, "boom");
        assert_eq!(RequestError::NoFreePort.code(), code::TRY_AGAIN_LATER);
        assert_eq!(
            RequestError::NotAttached {
                container: "c".into(),
                ifname: "eth0".into()
            }
            .code(),
            code::UNKNOWN_CONTAINER
        );
        assert_eq!(RequestError::SwitchUnexpected.code(), code::IO_FAILURE);
    }
}
