//! `--mode netns`: every pod is a network namespace whose eth0 is a TAP
//! device served by the switch (vswitchd's switch thread: event loop,
//! worker, datapath), configured as the CNI plugin configures pods (/32 and /128,
//! gateways 169.254.1.1 and fe80::1). Externals share one more namespace
//! behind the switch's node port. Probes are real kernel sockets: a small
//! agent runs in each namespace, serves TCP and UDP, and makes the attempts,
//! all of a probe at once. SCTP attempts are reported as skipped where the
//! kernel has no SCTP. Needs root (namespaces, /dev/net/tun).
//!
//! With `nodes` > 1 ([`NetnsProber::with_nodes`]) the pods are spread
//! round-robin over that many simulated nodes: each node is a network
//! namespace with an address on an underlay bridge (one more namespace) and
//! its own switch thread, whose overlay socket lives in the node's
//! namespace; the other nodes are its remote ports (VXLAN), owning their
//! pods' addresses. Each node has its own outside namespace (every
//! external's addresses) behind its node port: an external reaches a pod
//! through the pod's node, as a client outside the cluster reaches the node
//! that hosts its destination.
//!
//! Services, by the proxy chosen ([`NetnsProber::with_proxy`]):
//! - `switch`: each node's switch translates pods' connections, given the
//!   Services' frontends and endpoints after every change (an endpoint is
//!   local on its pod's node), as vswitchd with `--service-proxy switch` is
//!   given them from Services and EndpointSlices.
//! - `kube-proxy`, as on a node that keeps it (the switch runs with
//!   `--service-proxy kube-proxy`'s Service range, [`SERVICE_CIDRS`]).
//!
//! In both, every outside namespace plays its node's host, which keeps
//! kube-proxy for its own traffic (an external's, here): after every change
//! of the Services it gets the rules kube-proxy's iptables mode writes for
//! them ([`crate::tools::kube_proxy`], through `iptables-restore` and
//! `ip6tables-restore`) and forwards.
//!
//! Plumbing uses `ip` here; the daemon uses netlink.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use policy::{Change, Cluster, Engine, Pod, PodKey, Protocol};

use super::format::External;
use super::run::{Attempt, Observed, Prober, ProberError, ServiceView};
use crate::daemon::cli::ServiceProxy;
use crate::daemon::switch::{Answer, Command as SwitchCommand, Query, Switch};
use crate::tools::kube_proxy;
use vswitch_datapath::counters::Counters;
use vswitch_datapath::io::tap::TapPort;
use vswitch_datapath::io::udp::{OverlaySocket, TunnelPort};
use vswitch_datapath::io::worker::PolicyHandle;
use vswitch_datapath::overlay;
use vswitch_datapath::parse::mac_text;
use vswitch_datapath::{Config, PortId, PortKind};

/// What went wrong making or probing the pods, by operation.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("not root (nor in a user namespace)")]
    NotRoot,
    #[error("id -u: {0}")]
    Id(std::io::Error),
    #[error("/dev/net/tun: {0}")]
    Tun(std::io::Error),
    #[error("netns mode needs root (network namespaces, /dev/net/tun): {0}")]
    NotPermitted(Box<NetnsError>),
    #[error("starting the agent in {ns}: {source}")]
    AgentStart { ns: String, source: std::io::Error },
    #[error("agent: {0}")]
    Agent(std::io::Error),
    #[error("the agent exited")]
    AgentExited,
    #[error("ip: {0}")]
    IpSpawn(std::io::Error),
    #[error("ip {args}: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("TAP {tap}: {source}")]
    Tap { tap: String, source: std::io::Error },
    #[error("overlay socket of node {node}: {source}")]
    OverlaySocket { node: usize, source: std::io::Error },
    #[error("tunnel from node {from} to node {to}: {source}")]
    Tunnel {
        from: usize,
        to: usize,
        source: std::io::Error,
    },
    #[error("switch: {0}")]
    Switch(std::io::Error),
    /// The stop flag was set (Ctrl-C) while the pods were being made.
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Policy(Box<policy::ModelError>),
    #[error("kube-proxy's rules in {ns}: {command}: {stderr}")]
    KubeProxy {
        ns: String,
        command: &'static str,
        stderr: String,
    },
    #[error(
        "cluster IP {0} is outside the Service range netns mode gives the switch (10.96.0.0/12, fd00:10:96::/108)"
    )]
    OutsideServiceRange(IpAddr),
}

impl From<policy::ModelError> for NetnsError {
    fn from(e: policy::ModelError) -> Self {
        NetnsError::Policy(Box::new(e))
    }
}

/// How long a denied attempt is given.
const TIMEOUT_S: &str = "1.0";

const AGENT: &str = r#"
import json, socket, struct, sys, threading
servers = {}
def tcp_server(fam, port):
    s = socket.socket(fam)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
    s.listen(128)
    def run():
        while True:
            c, _ = s.accept()
            c.close()
    threading.Thread(target=run, daemon=True).start()
IP_PKTINFO = 8  # Linux; not in python's socket module
def udp_server(fam, port):
    # answers from the address each datagram was sent to (a namespace with
    # several addresses would otherwise answer from its primary one, which
    # a connected client rightly ignores)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    v6 = fam == socket.AF_INET6
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    else:
        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    s.bind(("::" if v6 else "0.0.0.0", port))
    def run():
        while True:
            d, anc, _, a = s.recvmsg(2048, 256)
            info = []
            for level, kind, data in anc:
                if not v6 and level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    # in_pktinfo {ifindex, spec_dst, addr}: send from addr
                    info = [(level, kind, struct.pack("=i4s4s", 0, data[8:12], bytes(4)))]
                elif v6 and level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                    info = [(level, kind, data)]
            s.sendmsg([d], info, 0, a)
    threading.Thread(target=run, daemon=True).start()
def serve(proto, port):
    if (proto, port) in servers:
        return servers[(proto, port)]
    err = None
    try:
        for fam in (socket.AF_INET, socket.AF_INET6):
            if proto == "TCP": tcp_server(fam, port)
            elif proto == "UDP": udp_server(fam, port)
            else: socket.socket(fam, socket.SOCK_STREAM, 132).close(); err = "SCTP sockets open but no SCTP server is implemented"
    except OSError as e:
        err = str(e)
    servers[(proto, port)] = err
    return err
def attempt(src, dst, proto, port, timeout):
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    try:
        if proto == "SCTP":
            try:
                s = socket.socket(fam, socket.SOCK_STREAM, 132)
            except OSError as e:
                return "skip:no SCTP in this kernel (" + str(e) + ")"
            return "skip:SCTP probes are not implemented in netns mode"
        if proto == "TCP":
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.bind((src, 0))
            s.connect((dst, port))
            s.close()
            return "ok"
        # connected: only a reply from the address and port asked counts
        # (through a Service, the cluster IP's, not the endpoint's)
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        s.bind((src, 0))
        s.connect((dst, port))
        s.send(b"probe")
        s.recv(2048)
        return "ok"
    except OSError as e:
        return "fail:" + str(e)
for line in sys.stdin:
    req = json.loads(line)
    if "serve" in req:
        errs = [serve(p, n) for p, n in req["serve"]]
        print(json.dumps({"errors": errs}), flush=True)
    else:
        out = {}
        def run(i, a):
            out[i] = attempt(a[0], a[1], a[2], a[3], req["timeout"])
        ts = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(req["probe"])]
        for t in ts: t.start()
        for t in ts: t.join()
        print(json.dumps({"results": [out[i] for i in range(len(ts))]}), flush=True)
"#;

struct Agent {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Agent {
    fn start(ns: &str) -> Result<Agent, NetnsError> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-u", "-c", AGENT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|source| NetnsError::AgentStart {
                ns: ns.to_string(),
                source,
            })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Agent {
            child,
            stdin,
            stdout,
        })
    }

    fn send(&mut self, req: &str) -> Result<(), NetnsError> {
        writeln!(self.stdin, "{req}").map_err(NetnsError::Agent)
    }

    fn reply(&mut self) -> Result<String, NetnsError> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(NetnsError::Agent)?;
        if line.is_empty() {
            return Err(NetnsError::AgentExited);
        }
        Ok(line)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(NetnsError::IpSpawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Result<(), NetnsError> {
    let mut a = vec!["netns", "exec", ns];
    a.extend_from_slice(args);
    ip(&a)
}

/// Creates a TAP device and makes it `ns`'s eth0 as the CNI plugin will for
/// a pod: its MAC, each address as a /32 or /128 (no DAD), and the switch's
/// link-local gateways 169.254.1.1 and fe80::1 as default routes.
fn tap_into(ns: &str, tap: &str, mac: [u8; 6], addrs: &[IpAddr]) -> Result<TapPort, NetnsError> {
    let tap_error = |source| NetnsError::Tap {
        tap: tap.to_string(),
        source,
    };
    let dev = TapPort::create(tap, true).map_err(tap_error)?;
    let name = dev.name().map_err(tap_error)?;
    ip(&["link", "set", &name, "netns", ns])?;
    in_ns(
        ns,
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{name}.accept_dad=0"),
        ],
    )?;
    in_ns(ns, &["ip", "link", "set", &name, "address", &mac_text(mac)])?;
    for a in addrs {
        let cidr = if a.is_ipv4() {
            format!("{a}/32")
        } else {
            format!("{a}/128")
        };
        let mut args = vec!["ip", "addr", "add", cidr.as_str(), "dev", name.as_str()];
        if a.is_ipv6() {
            args.push("nodad");
        }
        in_ns(ns, &args)?;
    }
    in_ns(ns, &["ip", "link", "set", &name, "up"])?;
    in_ns(
        ns,
        &[
            "ip",
            "route",
            "add",
            "169.254.1.1",
            "dev",
            &name,
            "scope",
            "link",
        ],
    )?;
    in_ns(
        ns,
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            &name,
        ],
    )?;
    in_ns(
        ns,
        &[
            "ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", &name,
        ],
    )?;
    Ok(dev)
}

static RUN: AtomicU32 = AtomicU32::new(0);

/// The agent of the namespace that holds every external behind `node`.
fn outside(node: usize) -> String {
    format!("(outside {node})")
}

/// The Service range of every switch (kube-apiserver's
/// `--service-cluster-ip-range` on a real cluster).
pub const SERVICE_CIDRS: [&str; 2] = ["10.96.0.0/12", "fd00:10:96::/108"];

/// The address of each node's host on its node port (as vswitchd's vsw0
/// has 169.254.1.1): the node's own traffic, kube-proxy's masqueraded
/// hairpin included, comes from it and is exempt from policy.
const NODE_ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 1, 2));

/// The inner MTU of the simulated nodes' overlay.
const OVERLAY_MTU: u16 = 1450;

/// A simulated node of a multi-node run.
struct SimNode {
    /// Its namespace (where its overlay sockets live) and underlay address.
    ns: String,
    addr: IpAddr,
    /// Its overlay socket's port, and its remote ports: other node -> port.
    remote: BTreeMap<usize, PortId>,
}

pub struct NetnsProber {
    prefix: String,
    /// Interface names are at most 15 characters.
    tap_prefix: String,
    engine: Engine,
    handle: PolicyHandle,
    /// One switch thread per node, as vswitchd runs it.
    switches: Vec<Switch>,
    /// How many nodes the pods are spread over.
    nodes: usize,
    sim: Vec<SimNode>,
    namespaces: Vec<String>,
    agents: BTreeMap<String, Agent>,
    /// Every pod: its port, namespace, addresses and node.
    ports: BTreeMap<PodKey, (PortId, String, Vec<IpAddr>, usize)>,
    next_port: PortId,
    /// Pods placed so far (round-robin over the nodes).
    placed: usize,
    /// Set by Ctrl-C: making namespaces stops at the next one.
    stop: Option<Arc<AtomicBool>>,
    /// Each node's outside namespace (its host, for kube-proxy).
    outsides: Vec<String>,
    /// Whether the outsides forward (turned on with the first Services).
    forwarding: bool,
    /// Who translates connections to cluster IPs.
    proxy: ServiceProxy,
}

impl Default for NetnsProber {
    fn default() -> Self {
        NetnsProber::with_nodes(1)
    }
}

impl NetnsProber {
    /// Pods spread round-robin over `nodes` simulated nodes (at least 1).
    pub fn with_nodes(nodes: usize) -> NetnsProber {
        let run = RUN.fetch_add(1, Ordering::Relaxed);
        NetnsProber {
            prefix: format!("vs{}-{run}", std::process::id() % 100_000),
            tap_prefix: format!("v{}x{}", std::process::id() % 100_000, run % 1000),
            engine: Engine::new(),
            handle: PolicyHandle::default(),
            switches: Vec::new(),
            nodes: nodes.max(1),
            sim: Vec::new(),
            namespaces: Vec::new(),
            agents: BTreeMap::new(),
            ports: BTreeMap::new(),
            next_port: 1,
            placed: 0,
            stop: None,
            outsides: Vec::new(),
            forwarding: false,
            proxy: ServiceProxy::KubeProxy,
        }
    }

    /// Services translated by `proxy` (the switch, or kube-proxy's rules on
    /// each node's host).
    pub fn with_proxy(mut self, proxy: ServiceProxy) -> NetnsProber {
        self.proxy = proxy;
        self
    }

    /// Stops making namespaces (with [`NetnsError::Interrupted`]) once
    /// `stop` is set, so that Ctrl-C need not wait for the whole cluster.
    pub fn stop_on(mut self, stop: Arc<AtomicBool>) -> NetnsProber {
        self.stop = Some(stop);
        self
    }
}

impl Drop for NetnsProber {
    fn drop(&mut self) {
        self.agents.clear();
        self.switches.clear();
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn mac_of(port: PortId) -> [u8; 6] {
    [0x02, 0x5e, 0, 0, (port >> 8) as u8, port as u8]
}

impl NetnsProber {
    fn new_ns(&mut self, tag: &str) -> Result<String, NetnsError> {
        if self
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            return Err(NetnsError::Interrupted);
        }
        let ns = format!("{}-{tag}", self.prefix);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        in_ns(&ns, &["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn next_port(&mut self) -> PortId {
        let p = self.next_port;
        self.next_port += 1;
        p
    }

    /// A pod: its namespace, its TAP as eth0, its port on its node's switch.
    fn add_pod(&mut self, pod: &Pod) -> Result<(), NetnsError> {
        let port = self.next_port();
        let node = self.placed % self.nodes;
        self.placed += 1;
        let ns = self.new_ns(&format!("p{port}"))?;
        let tap = format!("{}p{port}", self.tap_prefix);
        let mac = mac_of(port);
        let dev = tap_into(&ns, &tap, mac, &pod.ips)?;
        let kind = PortKind::Pod {
            ips: pod.ips.clone(),
            ready_generation: self.engine.generation(),
        };
        self.attach(node, port, pod.key.to_string(), mac, kind, Box::new(dev));
        self.agents.insert(pod.key.to_string(), Agent::start(&ns)?);
        self.ports
            .insert(pod.key.clone(), (port, ns, pod.ips.clone(), node));
        self.refresh_remotes(node)
    }

    fn remove_pod(&mut self, key: &PodKey) -> Result<(), NetnsError> {
        if let Some((port, ns, _, node)) = self.ports.remove(key) {
            self.agents.remove(&key.to_string());
            self.switches[node].detach(port);
            let _ = ip(&["netns", "del", &ns]);
            self.namespaces.retain(|n| *n != ns);
            self.refresh_remotes(node)?;
        }
        Ok(())
    }

    /// The simulated nodes: an underlay bridge, each node a namespace on it
    /// with its overlay socket attached to its switch.
    fn add_nodes(&mut self) -> Result<(), NetnsError> {
        let underlay = self.new_ns("u")?;
        in_ns(&underlay, &["ip", "link", "add", "br0", "type", "bridge"])?;
        in_ns(&underlay, &["ip", "link", "set", "br0", "up"])?;
        for i in 0..self.nodes {
            let ns = self.new_ns(&format!("n{i}"))?;
            let (a, b) = (
                format!("{}n{i}", self.tap_prefix),
                format!("{}u{i}", self.tap_prefix),
            );
            ip(&[
                "link", "add", &a, "netns", &ns, "type", "veth", "peer", "name", &b, "netns",
                &underlay,
            ])?;
            in_ns(&underlay, &["ip", "link", "set", &b, "master", "br0", "up"])?;
            let addr: IpAddr = format!("192.168.77.{}", i + 1).parse().expect("valid");
            in_ns(
                &ns,
                &["ip", "addr", "add", &format!("{addr}/24"), "dev", &a],
            )?;
            in_ns(&ns, &["ip", "link", "set", &a, "up"])?;
            let path = std::path::PathBuf::from(format!("/var/run/netns/{ns}"));
            let sock = crate::daemon::netns::in_netns(&path, move || {
                OverlaySocket::bind(addr, overlay::VXLAN_PORT)
            })
            .and_then(|r| r)
            .map_err(|source| NetnsError::OverlaySocket { node: i, source })?;
            let id = self.next_port();
            self.attach(
                i,
                id,
                "overlay".into(),
                [0x02, 0x5e, 1, 0, 0, i as u8],
                PortKind::Overlay,
                Box::new(sock),
            );
            self.sim.push(SimNode {
                ns,
                addr,
                remote: BTreeMap::new(),
            });
        }
        Ok(())
    }

    /// Re-attaches `node`'s port on every other node, with the addresses of
    /// the pods it holds now (the simulated nodes' "pod CIDRs").
    fn refresh_remotes(&mut self, node: usize) -> Result<(), NetnsError> {
        if self.nodes < 2 {
            return Ok(());
        }
        let cidrs: Vec<ipnet::IpNet> = self
            .ports
            .values()
            .filter(|p| p.3 == node)
            .flat_map(|p| p.2.iter().map(|ip| ipnet::IpNet::from(*ip)))
            .collect();
        let addr = self.sim[node].addr;
        for other in 0..self.nodes {
            if other == node {
                continue;
            }
            if let Some(old) = self.sim[other].remote.remove(&node) {
                self.switches[other].detach(old);
            }
            let local = self.sim[other].addr;
            let path = std::path::PathBuf::from(format!("/var/run/netns/{}", self.sim[other].ns));
            let peer = std::net::SocketAddr::new(addr, overlay::VXLAN_PORT);
            let tunnel = crate::daemon::netns::in_netns(&path, move || {
                TunnelPort::connect(local, peer, overlay::DEFAULT_VNI, OVERLAY_MTU as usize)
            })
            .and_then(|r| r)
            .map_err(|source| NetnsError::Tunnel {
                from: other,
                to: node,
                source,
            })?;
            let id = self.next_port();
            let kind = PortKind::Remote {
                addr,
                addrs: vec![addr],
                cidrs: cidrs.clone(),
            };
            let name = format!("node/{node}");
            let mac = overlay::node_mac(addr);
            self.attach(other, id, name, mac, kind, Box::new(tunnel));
            self.sim[other].remote.insert(node, id);
        }
        Ok(())
    }

    /// The outside of `node`: one namespace behind its node port with every
    /// external's addresses, and routes to the pods through the switch.
    fn add_outside(&mut self, node: usize, externals: &[External]) -> Result<(), NetnsError> {
        let ns = self.new_ns(&format!("out{node}"))?;
        let tap = format!("{}o{node}", self.tap_prefix);
        let mac = mac_of(0);
        // the host's own address first (kube-proxy's masquerade takes it,
        // and the kernel's ARP speaks from it), then every external's
        let addrs: Vec<IpAddr> = std::iter::once(NODE_ADDRESS)
            .chain(externals.iter().flat_map(|e| {
                e.ipv4
                    .map(IpAddr::V4)
                    .into_iter()
                    .chain(e.ipv6.map(IpAddr::V6))
            }))
            .collect();
        let dev = tap_into(&ns, &tap, mac, &addrs)?;
        let kind = PortKind::Node {
            ips: vec![NODE_ADDRESS],
        };
        self.attach(node, 0, "node".into(), mac, kind, Box::new(dev));
        self.agents.insert(outside(node), Agent::start(&ns)?);
        self.outsides.push(ns);
        Ok(())
    }

    fn start_switches(&mut self) -> Result<(), NetnsError> {
        for _ in 0..self.nodes {
            let service_cidrs = match self.proxy {
                ServiceProxy::KubeProxy => SERVICE_CIDRS
                    .iter()
                    .map(|c| c.parse().expect("a CIDR"))
                    .collect(),
                ServiceProxy::Switch => Vec::new(),
            };
            let cfg = Config {
                overlay_mtu: OVERLAY_MTU,
                service_cidrs,
                ..Config::default()
            };
            let switch = Switch::start(cfg, self.handle.clone()).map_err(NetnsError::Switch)?;
            self.switches.push(switch);
        }
        Ok(())
    }

    fn attach(
        &self,
        node: usize,
        id: PortId,
        name: String,
        mac: [u8; 6],
        kind: PortKind,
        port: Box<dyn vswitch_datapath::io::port::Port>,
    ) {
        self.switches[node].send(SwitchCommand::Attach {
            id,
            name,
            mac,
            kind,
            port,
        });
    }

    /// Writes kube-proxy's rules for `ports` into every node's host.
    fn sync_kube_proxy(&mut self, ports: &[kube_proxy::ServicePort]) -> Result<(), NetnsError> {
        for ns in self.outsides.clone() {
            if !self.forwarding {
                in_ns(
                    &ns,
                    &[
                        "sysctl",
                        "-qw",
                        "net.ipv4.ip_forward=1",
                        "net.ipv6.conf.all.forwarding=1",
                    ],
                )?;
            }
            for (command, v6) in [("iptables-restore", false), ("ip6tables-restore", true)] {
                let rules = kube_proxy::rules(ports, None, v6);
                let failed = |stderr: String| NetnsError::KubeProxy {
                    ns: ns.clone(),
                    command,
                    stderr,
                };
                let mut child = Command::new("ip")
                    .args(["netns", "exec", &ns, command])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| failed(e.to_string()))?;
                if let Some(mut stdin) = child.stdin.take() {
                    stdin
                        .write_all(rules.as_bytes())
                        .map_err(|e| failed(e.to_string()))?;
                }
                let out = child
                    .wait_with_output()
                    .map_err(|e| failed(e.to_string()))?;
                if !out.status.success() {
                    return Err(failed(
                        String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    ));
                }
            }
        }
        self.forwarding = true;
        Ok(())
    }

    /// The node an endpoint lives on: its pod's, else node 0.
    fn node_of(&self, endpoint: &str) -> usize {
        self.ports
            .iter()
            .find(|(k, _)| k.to_string() == endpoint)
            .map_or(0, |(_, p)| p.3)
    }

    /// The agent that makes an attempt from `from` to `to`: the source pod's,
    /// or, for an external, the outside of the destination's node.
    fn source_agent(&self, from: &str, to: &str) -> String {
        if self.agents.contains_key(from) {
            from.to_string()
        } else {
            outside(self.node_of(to))
        }
    }

    /// The agents that serve for `target`: its pod's, or every outside.
    fn target_agents(&self, target: &str) -> Vec<String> {
        if self.agents.contains_key(target) {
            vec![target.to_string()]
        } else {
            (0..self.nodes)
                .map(outside)
                .filter(|a| self.agents.contains_key(a))
                .collect()
        }
    }
}

/// Whether this process may make pods of network namespaces and TAP
/// devices (root, or root in a user namespace), and if not, why.
pub fn can_make_namespaces() -> Result<(), NetnsError> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(NetnsError::Id)?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err(NetnsError::NotRoot);
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(NetnsError::Tun)?;
    Command::new("ip")
        .arg("-V")
        .output()
        .map_err(NetnsError::IpSpawn)?;
    Ok(())
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        _ => "SCTP",
    }
}

impl Prober for NetnsProber {
    fn counters(&mut self) -> Option<Counters> {
        let mut sum = Counters::default();
        for s in &self.switches {
            let Answer::Totals(t) = s.handle().query(Query::Totals)? else {
                return None;
            };
            sum.add(&t.datapath);
        }
        Some(sum)
    }

    fn proxies_services(&self) -> bool {
        true
    }

    fn services(&mut self, views: &[ServiceView]) -> Result<(), ProberError> {
        // The switch translates pods' connections; each node's host keeps
        // kube-proxy for its own (an external's, here) in either mode.
        if self.proxy == ServiceProxy::Switch {
            for node in 0..self.switches.len() {
                // an endpoint is local on its pod's node
                let table = super::run::frontends(views, |b| {
                    self.ports.get(&b.pod).is_some_and(|p| p.3 == node)
                });
                self.switches[node].send(SwitchCommand::ServiceTable(Arc::new(table)));
            }
        }
        let ranges: Vec<ipnet::IpNet> = SERVICE_CIDRS
            .iter()
            .map(|c| c.parse().expect("a CIDR"))
            .collect();
        let mut ports = Vec::new();
        for v in views {
            for ip in &v.cluster_ips {
                if !ranges.iter().any(|r| r.contains(ip)) {
                    return Err(NetnsError::OutsideServiceRange(*ip).into());
                }
                // SCTP is not in this kernel: its probes are skipped here,
                // and iptables could not load its match
                for (sp, backends) in v.ports.iter().filter(|(p, _)| p.protocol != Protocol::Sctp) {
                    ports.push(kube_proxy::ServicePort {
                        name: format!("{}:{}", v.key, sp.name.as_deref().unwrap_or("")),
                        protocol: match sp.protocol {
                            Protocol::Tcp => "tcp",
                            Protocol::Udp => "udp",
                            _ => "sctp",
                        },
                        cluster_ip: *ip,
                        port: sp.port,
                        endpoints: backends.iter().map(|b| (b.ip, b.port)).collect(),
                        affinity_seconds: v.affinity_timeout,
                    });
                }
            }
        }
        Ok(self.sync_kube_proxy(&ports)?)
    }

    fn start(&mut self, cluster: &Cluster, externals: &[External]) -> Result<(), ProberError> {
        can_make_namespaces().map_err(|why| NetnsError::NotPermitted(Box::new(why)))?;
        self.engine = Engine::from_cluster(cluster.clone()).map_err(NetnsError::from)?;
        self.handle.publish(self.engine.snapshot());
        self.start_switches()?;
        if self.nodes > 1 {
            self.add_nodes()?;
        }
        for node in 0..self.nodes {
            self.add_outside(node, externals)?;
        }
        for pod in cluster.pods.values() {
            self.add_pod(pod)?;
        }
        Ok(())
    }

    fn change(&mut self, change: &Change) -> Result<(), ProberError> {
        self.engine
            .apply(change.clone())
            .map_err(NetnsError::from)?;
        self.handle.publish(self.engine.snapshot());
        let (detach, attach) = super::run::port_changes(change, &self.ports, |p| &p.2);
        for k in detach {
            self.remove_pod(&k)?;
        }
        if let Some(p) = attach {
            self.add_pod(p)?;
        }
        // let the switch thread pick up the generation
        std::thread::sleep(Duration::from_millis(30));
        Ok(())
    }

    fn probe(&mut self, attempts: &[Attempt<'_>]) -> Vec<Observed> {
        // servers first, on every target
        let mut serve: BTreeMap<String, Vec<(String, u16)>> = BTreeMap::new();
        for a in attempts {
            // through a Service: every endpoint serves its target port
            let targets: Vec<(String, u16)> = match &a.backends {
                Some(b) => b.iter().map(|b| (b.pod.to_string(), b.port)).collect(),
                None => vec![(a.to.name.clone(), a.port)],
            };
            for (target, port) in targets {
                let v = serve.entry(target).or_default();
                let s = (proto_name(a.protocol).to_string(), port);
                if !v.contains(&s) {
                    v.push(s);
                }
            }
        }
        for (target, list) in &serve {
            let req = format!(
                "{{\"serve\": [{}]}}",
                list.iter()
                    .map(|(p, n)| format!("[\"{p}\", {n}]"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for name in self.target_agents(target) {
                if let Some(agent) = self.agents.get_mut(&name) {
                    let _ = agent.send(&req).and_then(|_| agent.reply());
                }
            }
        }
        // then every attempt of each source at once, all sources in parallel
        let mut by_source: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, a) in attempts.iter().enumerate() {
            let key = self.source_agent(&a.from.name, &a.to.name);
            by_source.entry(key).or_default().push(i);
        }
        let mut results: Vec<Observed> = vec![Observed::Skipped("not run".into()); attempts.len()];
        for (source, idx) in &by_source {
            let list = idx
                .iter()
                .map(|&i| {
                    let a = &attempts[i];
                    format!(
                        "[\"{}\", \"{}\", \"{}\", {}]",
                        a.src,
                        a.dst,
                        proto_name(a.protocol),
                        a.port
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let req = format!("{{\"probe\": [{list}], \"timeout\": {TIMEOUT_S}}}");
            if let Some(agent) = self.agents.get_mut(source)
                && let Err(e) = agent.send(&req)
            {
                for &i in idx {
                    results[i] = Observed::Skipped(e.to_string());
                }
            }
        }
        for (source, idx) in &by_source {
            let Some(agent) = self.agents.get_mut(source) else {
                continue;
            };
            let line = match agent.reply() {
                Ok(l) => l,
                Err(e) => {
                    for &i in idx {
                        results[i] = Observed::Skipped(e.to_string());
                    }
                    continue;
                }
            };
            let parsed: serde_norway::Value = serde_norway::from_str(&line).unwrap_or_default();
            let list = parsed
                .get("results")
                .and_then(|r| r.as_sequence())
                .cloned()
                .unwrap_or_default();
            for (k, &i) in idx.iter().enumerate() {
                let r = list
                    .get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("fail:no answer from the agent");
                results[i] = if r == "ok" {
                    Observed::Verdict {
                        allowed: true,
                        detail: "connected".into(),
                    }
                } else if let Some(why) = r.strip_prefix("skip:") {
                    Observed::Skipped(why.to_string())
                } else {
                    Observed::Verdict {
                        allowed: false,
                        detail: r.trim_start_matches("fail:").to_string(),
                    }
                };
            }
        }
        results
    }
}
