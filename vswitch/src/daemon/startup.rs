//! Starting the daemon: its options, the order of startup (everything that
//! can fail fails here, with one line), the state folder's lock, the node
//! TAP, and re-attaching the pods of the previous run.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use policy::{Cluster, Engine};
use vswitch_datapath::io::tap::TapPort;
use vswitch_datapath::io::worker::PolicyHandle;
use vswitch_datapath::{Config, EstablishedPolicy, PortId, PortKind};

use super::attach::parse_mac;
use super::error::StartError;
use super::switch::{Command, Switch};
use super::{Daemon, control, manifests, metrics, netlink, netns, nodes, state};

/// The node port's id; pods get 1 and up.
const NODE_PORT: PortId = 0;
/// The node TAP's MAC (locally administered).
const NODE_MAC: [u8; 6] = [0x02, 0x76, 0x73, 0x77, 0x00, 0x02];

/// The daemon's settings (from the command line).
#[derive(Debug, Clone)]
pub struct Options {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub manifests: Option<PathBuf>,
    /// Watch the API server (with this kubeconfig, or in-cluster when
    /// `Some(None)`).
    pub kube: Option<Option<PathBuf>>,
    /// Policy comes from a source that starts empty (the API server): pods
    /// pass no traffic until its first complete cluster arrives.
    pub wait_for_source: bool,
    /// The node's TAP in the host namespace; `None`: no node port.
    pub node_tap: Option<String>,
    pub mtu: u32,
    pub established: EstablishedPolicy,
    /// Connections one pod may hold (0: no limit but the table's).
    pub conntrack_per_pod: usize,
    /// How long after a start a TCP segment other than SYN may pick up a
    /// connection (milliseconds; 0: never).
    pub conntrack_pickup_ms: u64,
    /// Slow-path frames a pod may cost per second (0: no limit).
    pub slow_path_per_pod: u32,
    /// The event loop's longest busy poll, in microseconds (0: none).
    pub busy_poll_us: u32,
    /// Where Prometheus metrics are served (off when `None`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Pods on other nodes, through the overlay (off when `None`: one node).
    pub overlay: Option<nodes::OverlayOptions>,
    /// The cluster's pod ranges (addresses there on no known node are
    /// dropped rather than sent to the node).
    pub cluster_cidrs: Vec<IpNet>,
    /// The Service ranges kube-proxy translates on the node (with
    /// `--service-proxy kube-proxy`; empty otherwise).
    pub service_cidrs: Vec<IpNet>,
    /// Who translates pods' connections to cluster IPs.
    pub service_proxy: super::cli::ServiceProxy,
    /// This node's name, as EndpointSlices give it (which endpoints are
    /// local).
    pub node_name: String,
}

impl Daemon {
    /// Everything that can fail at startup fails here, with one clear
    /// message: the caller prints it and exits non-zero.
    pub fn start(opts: Options) -> Result<(Daemon, control::Server), StartError> {
        // Permission for TAP devices first: nothing works without it.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(StartError::OpenTun)?;
        let mut folder = manifests::Folder::default();
        let (desired, services, nodes, rejected) = match &opts.manifests {
            Some(dir) => {
                if !dir.is_dir() {
                    return Err(StartError::ManifestsNotAFolder(dir.clone()));
                }
                let d = folder.load(dir)?;
                for n in &d.notes {
                    tracing::warn!("{n}");
                }
                (d.cluster, d.services, d.nodes, d.rejected)
            }
            None => (Cluster::default(), Default::default(), Vec::new(), 0),
        };
        let lock = lock_state_folder(&opts.state_dir)?;
        let store = state::Store::open(&opts.state_dir).map_err(|e| StartError::StateFolder {
            path: opts.state_dir.clone(),
            source: e,
        })?;
        let mut server = control::Server::bind(&opts.socket)?;
        let cfg = Config {
            established: opts.established,
            conntrack_per_pod_max: opts.conntrack_per_pod,
            conntrack_pickup_ms: opts.conntrack_pickup_ms,
            slow_path_per_pod: opts.slow_path_per_pod,
            busy_poll_us: opts.busy_poll_us,
            cluster_cidrs: opts.cluster_cidrs.clone(),
            service_cidrs: opts.service_cidrs.clone(),
            vni: opts.overlay.as_ref().map_or(1, |o| o.vni),
            overlay_mtu: opts.mtu.min(u16::MAX as u32) as u16,
            // the node's TAP and pods without an MTU of their own
            port_mtu: opts.mtu.min(u16::MAX as u32) as u16,
            ..Config::default()
        };
        let (gateway_v4, gateway_v6) = (cfg.gateway_v4, cfg.gateway_v6);
        let handle = PolicyHandle::default();
        let switch = Switch::start(cfg, handle.clone()).map_err(StartError::StartSwitch)?;
        let opts_wait = opts.wait_for_source;
        let mut d = Daemon {
            opts,
            _lock: lock,
            store,
            engine: Engine::new(),
            handle,
            switch,
            desired: std::sync::Arc::new(desired),
            nodes,
            overlay: None,
            attachments: BTreeMap::new(),
            gateway_v4,
            gateway_v6,
            synced: !opts_wait,
            gauges: Default::default(),
            folder,
            services: Default::default(),
        };
        d.gauges.source_objects(rejected, 0);
        server.count_refusals_in(d.gauges.control_refused.clone());
        d.set_in_sync(!opts_wait);
        d.sync_model();
        d.sync_services(services);
        if let Some(addr) = d.opts.metrics_addr {
            metrics::serve(addr, d.switch.handle().clone(), d.gauges.clone())?;
        }
        d.start_node_port()?;
        d.reattach();
        if let Some(o) = d.opts.overlay.clone() {
            let id = d.free_port().ok_or(StartError::NoOverlayPort)?;
            let tap = d.opts.node_tap.clone();
            d.overlay = Some(nodes::Overlay::start(
                o,
                d.opts.mtu,
                id,
                tap,
                d.switch.handle(),
            )?);
            d.sync_nodes();
        }
        Ok((d, server))
    }

    /// The node TAP: created (or re-attached) in the host namespace with the
    /// gateway addresses; routes to local pods go through it.
    fn start_node_port(&mut self) -> Result<(), StartError> {
        let Some(name) = self.opts.node_tap.clone() else {
            return Ok(());
        };
        // Persistent, like the pods' TAPs: a restart keeps the device (a
        // new process attaches to it) and the routes through it.
        let tap = TapPort::create_persistent(&name).map_err(|e| node_tap_error(&name, e))?;
        let cfg = netlink::LinkConfig {
            name: name.clone(),
            mac: NODE_MAC,
            mtu: self.opts.mtu,
            addrs: vec![
                IpNet::from(IpAddr::V4(self.gateway_v4)),
                IpNet::new(IpAddr::V6(self.gateway_v6), 64).expect("valid prefix"),
            ],
            routes: vec![],
        };
        netlink::configure(&name, &cfg).map_err(|e| StartError::ConfigureNodeTap {
            name: name.clone(),
            source: e,
        })?;
        let node_ips = netlink::all_addresses().map_err(StartError::NodeAddresses)?;
        tracing::info!("node port {name}: node addresses {node_ips:?}");
        self.switch.send(Command::Attach {
            id: NODE_PORT,
            name,
            mac: NODE_MAC,
            kind: PortKind::Node { ips: node_ips },
            port: Box::new(tap),
        });
        Ok(())
    }

    /// Re-attaches to the pods of the previous run: each stored attachment
    /// whose namespace and interface still exist.
    fn reattach(&mut self) {
        let (stored, problems) = match self.store.load() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("reading the state folder: {e}");
                return;
            }
        };
        for p in problems {
            tracing::warn!("state: {p}");
        }
        let mut ports = Vec::new();
        for a in stored {
            let path = PathBuf::from(&a.netns);
            let ifname = a.key.ifname.clone();
            let mac = parse_mac(&a.mac);
            // Attaching by name would create a blank device if the pod's
            // were gone: look first.
            let opened = netns::in_netns(&path, move || match netlink::link_state(&ifname)? {
                Some(st) if st.mac == mac => TapPort::attach(&ifname),
                Some(_) => Err(std::io::Error::other(format!("{ifname} has another MAC"))),
                None => Err(std::io::Error::other(format!("{ifname} does not exist"))),
            });
            match opened {
                Ok(Ok(tap)) => {
                    tracing::info!("re-attached {} ({}) in {}", a.key.ifname, a.pod, a.netns);
                    self.attachments.insert(a.key.clone(), a.clone());
                    ports.push((a, tap));
                }
                Ok(Err(e)) | Err(e) => {
                    tracing::warn!(
                        "pod {} ({}, {}) is gone ({e}); forgetting it",
                        a.pod,
                        a.key.container_id,
                        a.netns
                    );
                    let _ = self.store.remove(&a.key);
                }
            }
        }
        let generation = self.sync_model();
        for (a, tap) in ports {
            self.attach_port(&a, tap, generation);
        }
    }
}

/// Locks the state folder for this daemon's life.
fn lock_state_folder(dir: &std::path::Path) -> Result<state::Lock, StartError> {
    state::Lock::take(dir).map_err(|e| match e {
        state::LockError::Held(pid) => StartError::StateFolderInUse {
            path: dir.to_path_buf(),
            pid,
        },
        state::LockError::Io(e) => StartError::StateFolder {
            path: dir.to_path_buf(),
            source: e,
        },
    })
}

/// Why the node TAP could not be created, in words: a busy device is
/// another vswitchd's (a TAP has one owner at a time).
fn node_tap_error(name: &str, e: std::io::Error) -> StartError {
    let name = name.to_string();
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        StartError::NodeTapDenied { name, source: e }
    } else if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) {
        StartError::NodeTapBusy { name }
    } else {
        StartError::NodeTap { name, source: e }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_node_tap_names_the_way_out() {
        let e = node_tap_error("vsw0", std::io::Error::from_raw_os_error(16)).to_string();
        assert!(
            e.starts_with("node TAP vsw0")
                && e.contains("another vswitchd")
                && e.contains("--node-tap")
                && e.contains("--no-node-port"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        let e = node_tap_error("vsw0", std::io::Error::from_raw_os_error(1)).to_string();
        assert!(e.contains("CAP_NET_ADMIN"), "{e}");
    }

    #[test]
    fn a_locked_state_folder_names_the_other_daemon() {
        let dir = std::env::temp_dir().join(format!("vsw-startlock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _held = lock_state_folder(&dir).unwrap();
        let e = lock_state_folder(&dir).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "state folder {} is in use by another vswitchd (pid {})",
                dir.display(),
                std::process::id()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
