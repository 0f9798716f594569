//! vswitchd: the daemon that turns the switch into a network plugin.
//!
//! Design. One control thread owns all state: the policy [`Engine`], the
//! attachments (pods wired in by the CNI plugin), the desired cluster from
//! the manifest folder, and the on-disk [`state::Store`]. It serves the
//! control socket one request at a time (requests are short; sequential
//! handling needs no locks) and re-reads the manifests when they change.
//! The switch runs on a thread of its own ([`switch::Switch`]) and gets
//! policy through a [`PolicyHandle`] (lock-free) and ports through a command
//! queue.
//!
//! Attaching a pod (CNI ADD): create a persistent TAP inside the pod's
//! namespace under its final name (from a thread that entered it; the
//! daemon keeps the descriptor), set MAC, MTU, addresses and routes and
//! bring it up (netlink), save the attachment, add the pod to the
//! policy model and publish that generation, and only then attach the port
//! with that generation as its `ready_generation`: the datapath drops the
//! pod's frames until the policy that knows the pod is installed (fail
//! closed). The node's route to the pod goes through the node TAP.
//!
//! Restart: TAP devices are persistent and the attachments are on disk, so
//! a new vswitchd re-attaches to each pod's interface (inside the pod's
//! namespace) and traffic resumes; TCP connections survive a short outage.

pub mod cli;
pub mod control;
pub mod install;
pub mod kube;
pub mod manifests;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod nodes;
pub mod source;
pub mod state;
pub mod switch;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use policy::{Change, Cluster, Engine, PodKey};
use vswitch_cni::proto::{
    AddRequest, Attachment, AttachmentKey, ErrorReply, IpConfig, Reply, Request, RouteConfig, code,
};

use switch::{Command, Switch};
use vswitch_datapath::io::tap::TapPort;
use vswitch_datapath::io::worker::PolicyHandle;
use vswitch_datapath::parse::mac_text;
use vswitch_datapath::{Config, EstablishedPolicy, PortId, PortKind};

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
    /// Where Prometheus metrics are served (off when `None`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Pods on other nodes, through the overlay (off when `None`: one node).
    pub overlay: Option<nodes::OverlayOptions>,
    /// The cluster's pod ranges (addresses there on no known node are
    /// dropped rather than sent to the node).
    pub cluster_cidrs: Vec<IpNet>,
}

/// What the daemon's loop waits for.
pub enum Event {
    /// A request from the control socket, read and waiting for its answer.
    Request(control::Pending),
    Update(source::Update),
}

/// An error for a client: the CNI code and a message.
#[derive(Debug)]
pub struct Failure {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl Failure {
    fn new(code: u32, msg: impl Into<String>) -> Failure {
        Failure {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    fn io(msg: &str, e: impl std::fmt::Display) -> Failure {
        Failure {
            code: code::ATTACH_FAILED,
            msg: msg.to_string(),
            details: e.to_string(),
        }
    }
}

pub struct Daemon {
    opts: Options,
    store: state::Store,
    engine: Engine,
    handle: PolicyHandle,
    switch: Switch,
    /// The cluster as the manifests describe it.
    desired: Cluster,
    /// Every node, as the source describes them.
    nodes: Vec<policy::Node>,
    overlay: Option<nodes::Overlay>,
    attachments: BTreeMap<AttachmentKey, Attachment>,
    gateway_v4: Ipv4Addr,
    gateway_v6: Ipv6Addr,
    /// Whether the source has delivered a complete cluster yet; until then
    /// pods are attached but not ready (fail closed).
    synced: bool,
    /// What the metrics endpoint reads (the source's sync state lives
    /// only there).
    pub gauges: std::sync::Arc<metrics::Gauges>,
}

/// The MAC of a pod port: locally administered, from the port number.
fn pod_mac(port: PortId) -> [u8; 6] {
    [0x02, 0x76, 0x73, 0x70, (port >> 8) as u8, port as u8]
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

/// The pod an attachment belongs to: K8S_POD_NAMESPACE and K8S_POD_NAME
/// (podman passes only the name), else namespace "default", and the
/// container id for a name.
fn pod_key(req: &AddRequest) -> PodKey {
    let given = |x: &Option<String>| x.clone().filter(|s| !s.is_empty());
    PodKey::new(
        given(&req.pod_namespace).unwrap_or_else(|| "default".into()),
        given(&req.pod_name).unwrap_or_else(|| req.key.container_id.clone()),
    )
}

fn host_route(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

impl Daemon {
    /// Everything that can fail at startup fails here, with one clear
    /// message: the caller prints it and exits non-zero.
    pub fn start(opts: Options) -> Result<(Daemon, control::Server), String> {
        // Permission for TAP devices first: nothing works without it.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| format!("cannot open /dev/net/tun: {e} (vswitchd needs CAP_NET_ADMIN and access to /dev/net/tun)"))?;
        let (desired, nodes) = match &opts.manifests {
            Some(dir) => {
                if !dir.is_dir() {
                    return Err(format!("--manifests {}: not a folder", dir.display()));
                }
                let d = manifests::load(dir)?;
                for n in &d.notes {
                    tracing::warn!("{n}");
                }
                (d.cluster, d.nodes)
            }
            None => (Cluster::default(), Vec::new()),
        };
        let store = state::Store::open(&opts.state_dir)
            .map_err(|e| format!("state folder {}: {e}", opts.state_dir.display()))?;
        let server = control::Server::bind(&opts.socket)?;
        let cfg = Config {
            established: opts.established,
            cluster_cidrs: opts.cluster_cidrs.clone(),
            vni: opts.overlay.as_ref().map_or(1, |o| o.vni),
            overlay_mtu: opts.mtu.min(u16::MAX as u32) as u16,
            ..Config::default()
        };
        let (gateway_v4, gateway_v6) = (cfg.gateway_v4, cfg.gateway_v6);
        let handle = PolicyHandle::default();
        let switch = Switch::start(cfg, handle.clone()).map_err(|e| format!("switch: {e}"))?;
        let opts_wait = opts.wait_for_source;
        let mut d = Daemon {
            opts,
            store,
            engine: Engine::new(),
            handle,
            switch,
            desired,
            nodes,
            overlay: None,
            attachments: BTreeMap::new(),
            gateway_v4,
            gateway_v6,
            synced: !opts_wait,
            gauges: Default::default(),
        };
        d.set_in_sync(!opts_wait);
        d.sync_model();
        if let Some(addr) = d.opts.metrics_addr {
            metrics::serve(addr, d.switch.handle().clone(), d.gauges.clone())?;
        }
        d.start_node_port()?;
        d.reattach();
        if let Some(o) = d.opts.overlay.clone() {
            let id = d.free_port().ok_or("no switch port for the overlay")?;
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

    /// The first port id (from 1) that no pod and no overlay port uses.
    fn free_port(&self) -> Option<PortId> {
        nodes::free_port(&self.pod_ports(), self.overlay.as_ref())
    }

    /// The switch ports of the attached pods.
    fn pod_ports(&self) -> Vec<PortId> {
        self.attachments.values().map(|a| a.port).collect()
    }

    /// Attaches, re-attaches and detaches other nodes' ports to match the
    /// source's nodes.
    fn sync_nodes(&mut self) {
        let pods = self.pod_ports();
        let Some(ov) = self.overlay.as_mut() else {
            return;
        };
        let names = ov.sync(&self.nodes, self.switch.handle(), &pods);
        self.gauges
            .remote_nodes
            .store(names.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The node TAP: created (or re-attached) in the host namespace with the
    /// gateway addresses; routes to local pods go through it.
    fn start_node_port(&mut self) -> Result<(), String> {
        let Some(name) = self.opts.node_tap.clone() else {
            return Ok(());
        };
        // Persistent, like the pods' TAPs: a restart keeps the device (a
        // new process attaches to it) and the routes through it.
        let tap = TapPort::create_persistent(&name).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                format!("node TAP {name}: {e} (creating TAP devices needs CAP_NET_ADMIN)")
            } else {
                format!("node TAP {name}: {e}")
            }
        })?;
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
        netlink::configure(&name, &cfg).map_err(|e| format!("node TAP {name}: {e}"))?;
        let node_ips = netlink::all_addresses().map_err(|e| format!("node addresses: {e}"))?;
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

    fn attach_port(&mut self, a: &Attachment, tap: TapPort, generation: u64) {
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
    }

    /// Brings the engine to the desired cluster plus the local pods, one
    /// change at a time, and publishes the new generation.
    fn sync_model(&mut self) -> u64 {
        let mut target = self.desired.clone();
        let mut local: BTreeMap<PodKey, Vec<IpAddr>> = BTreeMap::new();
        for a in self.attachments.values() {
            let key = PodKey::parse(&a.pod).unwrap_or_else(|| PodKey::new("default", &a.pod));
            local
                .entry(key)
                .or_default()
                .extend(a.ips.iter().map(|c| c.address.addr()));
        }
        for (key, ips) in local {
            // A manifest pod elsewhere with one of these addresses loses it:
            // the attachment on this node is the truth.
            for p in target.pods.values_mut() {
                if p.key != key {
                    p.ips.retain(|ip| !ips.contains(ip));
                }
            }
            manifests::ensure_namespace(&mut target, &key.namespace);
            let pod = manifests::local_pod(&self.desired, &key, ips);
            target.pods.insert(key, pod);
        }
        let started = std::time::Instant::now();
        for change in diff(self.engine.cluster(), &target) {
            if let Err(e) = self.engine.apply(change) {
                tracing::warn!("policy model: {e}");
            }
        }
        self.handle.publish(self.engine.snapshot());
        let g = self.engine.generation();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.gauges
            .compile_micros
            .store(started.elapsed().as_micros() as u64, relaxed);
        self.gauges.policy_generation.store(g, relaxed);
        self.gauges
            .attachments
            .store(self.attachments.len() as u64, relaxed);
        g
    }

    fn set_in_sync(&self, in_sync: bool) {
        self.gauges
            .source_in_sync
            .store(in_sync as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes an update from the source: a new desired cluster replaces the
    /// old one in one step; losing the origin keeps the last cluster.
    pub fn update(&mut self, u: source::Update) {
        match u {
            source::Update::Cluster {
                cluster,
                nodes,
                notes,
            } => {
                self.gauges
                    .source_updates
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for n in &notes {
                    tracing::warn!("{n}");
                }
                self.desired = cluster;
                self.nodes = nodes;
                self.sync_nodes();
                let g = self.sync_model();
                tracing::info!("desired cluster updated: policy generation {g}");
                if !self.synced {
                    self.synced = true;
                    self.set_in_sync(true);
                    for a in self.attachments.values() {
                        self.switch.send(Command::Ready(a.port, g));
                    }
                    tracing::info!("first complete cluster from the source: pods are ready");
                }
            }
            source::Update::Sync { in_sync, message } => {
                self.set_in_sync(in_sync);
                if in_sync {
                    tracing::info!("source in sync: {message}");
                } else {
                    tracing::warn!("source out of sync, keeping the last policy: {message}");
                }
            }
        }
    }

    /// The source of the desired cluster, to run on a thread of its own.
    pub fn source(&self) -> Option<Box<dyn source::Source>> {
        if let Some(kubeconfig) = &self.opts.kube {
            return Some(Box::new(kube::KubeSource::new(kubeconfig.clone())));
        }
        let dir = self.opts.manifests.clone()?;
        Some(Box::new(source::ManifestDir {
            dir,
            interval: std::time::Duration::from_millis(500),
        }))
    }

    pub fn handle(&mut self, req: Request) -> Reply {
        let r = match req {
            Request::Add(a) => self.add(a).map(Reply::Attachment),
            Request::Del(k) => self.del(&k).map(|_| Reply::Done),
            Request::Check(k) => self.check(&k).map(Reply::Attachment),
            Request::Status => Ok(Reply::Status {
                ready: true,
                message: format!(
                    "ready: {} attachments, policy generation {}",
                    self.attachments.len(),
                    self.engine.generation()
                ),
            }),
            Request::List => Ok(Reply::Attachments(
                self.attachments.values().cloned().collect(),
            )),
            Request::Gc { valid } => self.gc(&valid).map(Reply::Attachments),
            Request::Ports => self.query(switch::Query::Ports),
            Request::Flows { limit } => self.query(switch::Query::Flows(limit)),
            Request::Conntrack { limit } => self.query(switch::Query::Conntrack(limit)),
            Request::Explain {
                src,
                dst,
                port,
                protocol,
            } => self.explain(&src, &dst, port, &protocol),
        };
        r.unwrap_or_else(|f| {
            Reply::Error(ErrorReply {
                code: f.code,
                msg: f.msg,
                details: f.details,
            })
        })
    }

    fn add(&mut self, req: AddRequest) -> Result<Attachment, Failure> {
        let started = std::time::Instant::now();
        let bad = |m: String| Failure::new(code::INVALID_CONFIG, m);
        if req.key.container_id.is_empty() {
            return Err(bad("container_id is empty".into()));
        }
        if req.key.ifname.is_empty()
            || req.key.ifname.len() > 15
            || req.key.ifname.contains(['/', ' ', ':'])
        {
            return Err(bad(format!(
                "ifname {:?}: not a valid interface name",
                req.key.ifname
            )));
        }
        if req.ips.is_empty() {
            return Err(bad("no addresses: IPAM gave none".into()));
        }
        let pod = pod_key(&req).to_string();
        if let Some(old) = self.attachments.get(&req.key) {
            if old.netns == req.netns && old.ips == req.ips && old.pod == pod {
                return Ok(old.clone());
            }
            return Err(bad(format!(
                "container {} interface {} is already attached with other settings",
                req.key.container_id, req.key.ifname
            )));
        }
        for a in self.attachments.values() {
            for ip in &req.ips {
                if a.ips.iter().any(|c| c.address.addr() == ip.address.addr()) {
                    return Err(bad(format!(
                        "address {} is already used by {} ({})",
                        ip.address.addr(),
                        a.pod,
                        a.key.container_id
                    )));
                }
            }
        }
        if !netns::exists(Path::new(&req.netns)) {
            return Err(bad(format!(
                "netns {}: no such network namespace",
                req.netns
            )));
        }
        let port = self
            .free_port()
            .ok_or_else(|| Failure::new(code::TRY_AGAIN_LATER, "every switch port is in use"))?;
        let mac = pod_mac(port);
        let mtu = req.mtu.unwrap_or(self.opts.mtu);
        let routes = self.pod_routes(&req.ips, &req.routes);
        let cfg = netlink::LinkConfig {
            name: req.key.ifname.clone(),
            mac,
            mtu,
            addrs: req.ips.iter().map(|c| c.address).collect(),
            routes: self
                .gateway_link_routes(&routes)
                .into_iter()
                .chain(routes.iter().map(|r| (r.dst, r.gw)))
                .collect(),
        };
        // The TAP is created inside the pod's namespace, under its final
        // name, by a thread that entered it: the daemon holds its descriptor
        // all the same. (Creating it in the host namespace and moving it
        // costs an RCU grace period in the kernel, 15 ms here, most of an
        // attach.)
        let ifname = req.key.ifname.clone();
        let tap = netns::in_netns(Path::new(&req.netns), || {
            let tap = TapPort::create_persistent(&ifname)?;
            match netlink::configure(&ifname, &cfg) {
                Ok(()) => Ok(tap),
                Err(e) => {
                    drop(tap);
                    let _ = netlink::delete_link(&ifname);
                    Err(e)
                }
            }
        })
        .and_then(|r| r)
        .map_err(|e| Failure::io("creating the pod's interface", e))?;
        let a = Attachment {
            key: req.key.clone(),
            netns: req.netns.clone(),
            pod,
            mac: mac_text(mac),
            mtu,
            ips: req.ips.clone(),
            routes,
            port,
        };
        if let Err(e) = self.store.save(&a) {
            drop(tap);
            let _ = self.remove_interface(&a);
            return Err(Failure::io("saving the port state", e));
        }
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

    /// The pod's routes: IPAM's, with a missing gateway filled in; without
    /// any, a default route per family through the family's gateway.
    fn pod_routes(&self, ips: &[IpConfig], routes: &[RouteConfig]) -> Vec<RouteConfig> {
        let gw_for = |v4: bool| -> IpAddr {
            ips.iter()
                .filter(|c| c.address.addr().is_ipv4() == v4)
                .find_map(|c| c.gateway)
                .unwrap_or(if v4 {
                    IpAddr::V4(self.gateway_v4)
                } else {
                    IpAddr::V6(self.gateway_v6)
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
    fn gateway_link_routes(&self, routes: &[RouteConfig]) -> Vec<(IpNet, Option<IpAddr>)> {
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

    /// Deletes the pod's interface inside its namespace (gone is fine).
    fn remove_interface(&self, a: &Attachment) -> std::io::Result<()> {
        let path = PathBuf::from(&a.netns);
        if !netns::exists(&path) {
            return Ok(());
        }
        let ifname = a.key.ifname.clone();
        netns::in_netns(&path, move || netlink::delete_link(&ifname))?
    }

    fn del(&mut self, key: &AttachmentKey) -> Result<(), Failure> {
        let Some(a) = self.attachments.get(key).cloned() else {
            return Ok(()); // already gone: DEL is idempotent
        };
        self.switch.detach(a.port);
        if let Err(e) = self.remove_interface(&a) {
            tracing::warn!("deleting {}'s interface: {e}", a.pod);
        }
        if let Some(node) = &self.opts.node_tap {
            let routes: Vec<IpNet> = a.ips.iter().map(|c| host_route(c.address.addr())).collect();
            let _ = netlink::del_routes(node, &routes);
        }
        self.store
            .remove(key)
            .map_err(|e| Failure::io("removing the port state", e))?;
        self.attachments.remove(key);
        let g = self.sync_model();
        tracing::info!(
            "detached {} ({}), policy generation {g}",
            a.pod,
            key.container_id
        );
        Ok(())
    }

    fn check(&self, key: &AttachmentKey) -> Result<Attachment, Failure> {
        let a = self.attachments.get(key).ok_or_else(|| {
            Failure::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "container {} interface {} is not attached",
                    key.container_id, key.ifname
                ),
            )
        })?;
        let path = PathBuf::from(&a.netns);
        let ifname = a.key.ifname.clone();
        let state = netns::in_netns(&path, move || netlink::link_state(&ifname))
            .and_then(|r| r)
            .map_err(|e| Failure::io("reading the pod's interface", e))?
            .ok_or_else(|| {
                Failure::new(
                    code::ATTACH_FAILED,
                    format!("interface {} is missing in {}", a.key.ifname, a.netns),
                )
            })?;
        if state.mac != parse_mac(&a.mac) {
            return Err(Failure::new(
                code::ATTACH_FAILED,
                format!(
                    "interface {}: MAC is {:?}, expected {}",
                    a.key.ifname,
                    state.mac.map(mac_text),
                    a.mac
                ),
            ));
        }
        for ip in &a.ips {
            if !state.addrs.contains(&ip.address) {
                return Err(Failure::new(
                    code::ATTACH_FAILED,
                    format!(
                        "interface {}: address {} is missing",
                        a.key.ifname, ip.address
                    ),
                ));
            }
        }
        Ok(a.clone())
    }

    fn gc(&mut self, valid: &[AttachmentKey]) -> Result<Vec<Attachment>, Failure> {
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

    fn query(&self, q: switch::Query) -> Result<Reply, Failure> {
        let a = self
            .switch
            .handle()
            .query(q)
            .ok_or_else(|| Failure::new(code::TRY_AGAIN_LATER, "the switch did not answer"))?;
        Ok(match a {
            switch::Answer::Ports(p) => Reply::Ports(p),
            switch::Answer::Totals(_) => {
                return Err(Failure::new(
                    code::IO_FAILURE,
                    "unexpected answer from the switch",
                ));
            }
            switch::Answer::Flows(flows, total) => Reply::Flows { flows, total },
            switch::Answer::Conntrack(connections, total) => {
                Reply::Conntrack { connections, total }
            }
        })
    }

    /// An endpoint for `explain`: a pod "namespace/name" (its first address
    /// of the family asked, else its first) or an address.
    fn endpoint(&self, s: &str) -> Result<IpAddr, Failure> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(ip);
        }
        let key = PodKey::parse(s).ok_or_else(|| {
            Failure::new(
                code::INVALID_CONFIG,
                format!("{s:?}: neither an address nor namespace/name"),
            )
        })?;
        let pod = self.engine.cluster().pods.get(&key).ok_or_else(|| {
            Failure::new(code::UNKNOWN_CONTAINER, format!("no pod {key} is known"))
        })?;
        pod.ips
            .first()
            .copied()
            .ok_or_else(|| Failure::new(code::INVALID_CONFIG, format!("pod {key} has no address")))
    }

    fn explain(&self, src: &str, dst: &str, port: u16, protocol: &str) -> Result<Reply, Failure> {
        let src = self.endpoint(src)?;
        let mut dst_ip = self.endpoint(dst)?;
        if src.is_ipv4() != dst_ip.is_ipv4()
            && let Some(p) = PodKey::parse(dst).and_then(|k| self.engine.cluster().pods.get(&k))
            && let Some(same) = p.ips.iter().find(|ip| ip.is_ipv4() == src.is_ipv4())
        {
            dst_ip = *same;
        }
        let protocol = policy::Protocol::parse(&protocol.to_uppercase()).ok_or_else(|| {
            Failure::new(
                code::INVALID_CONFIG,
                format!("{protocol}: not TCP, UDP or SCTP"),
            )
        })?;
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

/// The changes that turn `from` into `to`: namespaces first, then pods and
/// policies, deletions of namespaces last.
pub fn diff(from: &Cluster, to: &Cluster) -> Vec<Change> {
    let mut out = Vec::new();
    for (name, ns) in &to.namespaces {
        if from.namespaces.get(name) != Some(ns) {
            out.push(Change::UpsertNamespace(ns.clone()));
        }
    }
    // Deleting pods before upserting frees addresses a moved pod reuses.
    for key in from.pods.keys() {
        if !to.pods.contains_key(key) {
            out.push(Change::DeletePod(key.clone()));
        }
    }
    for (key, pod) in &to.pods {
        if from.pods.get(key) != Some(pod) {
            out.push(Change::UpsertPod(pod.clone()));
        }
    }
    for key in from.policies.keys() {
        if !to.policies.contains_key(key) {
            out.push(Change::DeletePolicy(key.clone()));
        }
    }
    for (key, p) in &to.policies {
        if from.policies.get(key) != Some(p) {
            out.push(Change::UpsertPolicy(p.clone()));
        }
    }
    for name in from.namespaces.keys() {
        if !to.namespaces.contains_key(name) {
            out.push(Change::DeleteNamespace(name.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::synth::{Rng, random_change, random_cluster};

    /// Applying the diff of two clusters to an engine holding the first
    /// gives the engine a full compile of the second gives.
    #[test]
    fn diff_turns_one_cluster_into_another() {
        let mut rng = Rng::new(7);
        for _ in 0..60 {
            let a = random_cluster(&mut rng);
            let mut b = a.clone();
            for _ in 0..8 {
                b.apply(&random_change(&mut rng, &b));
            }
            if Engine::from_cluster(b.clone()).is_err() {
                continue;
            }
            let mut e = Engine::from_cluster(a.clone()).expect("valid");
            for c in diff(&a, &b) {
                e.apply(c).expect("diff applies");
            }
            let full = Engine::from_cluster(b).expect("valid");
            assert_eq!(e.canonical(), full.canonical());
        }
    }
}
