//! vswitchd's daemon commands, `run` and `install-cni` (in the library, so
//! that tests can check that the commands in deploy/ parse). The binary adds
//! `demo` from the tools wing.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use vswitch_datapath::EstablishedPolicy;

#[derive(Parser)]
#[command(
    name = "vswitchd",
    version,
    about = "The vswitch daemon: a userspace switch for Kubernetes pods"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Runs the switch and serves the control socket.
    Run {
        /// The control socket (mode 0600).
        #[arg(long, default_value = vswitch_cni::proto::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Where port state is kept across restarts.
        #[arg(long, default_value = "/var/lib/vswitch")]
        state_dir: PathBuf,
        /// A folder of Namespace, Pod and NetworkPolicy manifests, re-read
        /// when its files change.
        #[arg(long, conflicts_with = "kube")]
        manifests: Option<PathBuf>,
        /// Watch the Kubernetes API server for Pods, Namespaces,
        /// NetworkPolicies and Nodes (in-cluster, or --kubeconfig).
        #[arg(long)]
        kube: bool,
        /// A kubeconfig file for --kube (default: the in-cluster service account).
        #[arg(long, requires = "kube")]
        kubeconfig: Option<PathBuf>,
        /// The node's TAP device in the host namespace.
        #[arg(long, default_value = "vsw0")]
        node_tap: String,
        /// Run without a node port (pods reach only each other).
        #[arg(long)]
        no_node_port: bool,
        /// The pods' MTU when the CNI configuration gives none (default
        /// 1500, or 1500 less the overlay's 50 or 70 bytes with
        /// --overlay-addr). With the overlay, also the largest packet it
        /// carries whole.
        #[arg(long)]
        mtu: Option<u32>,
        /// This node's name in the Node objects (default: $NODE_NAME, else
        /// the host name).
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
        /// This node's address between nodes: turns on the overlay (VXLAN
        /// over UDP) to the other nodes' pods.
        #[arg(long)]
        overlay_addr: Option<std::net::IpAddr>,
        /// The overlay's UDP port, the same on every node.
        #[arg(long, default_value_t = vswitch_datapath::overlay::VXLAN_PORT)]
        overlay_port: u16,
        /// The overlay's VXLAN network identifier, the same on every node.
        #[arg(long, default_value_t = vswitch_datapath::overlay::DEFAULT_VNI)]
        vni: u32,
        /// The cluster's pod range (repeat for dual stack): an address there
        /// that is on no known node is dropped, not sent out of the node.
        #[arg(long = "cluster-cidr")]
        cluster_cidrs: Vec<ipnet::IpNet>,
        /// Who translates pods' connections to cluster IPs. switch: the
        /// switch, from Services and EndpointSlices (kube-proxy on the node
        /// keeps NodePort, LoadBalancer and the node's own traffic).
        /// kube-proxy: kube-proxy on the node (iptables or nftables); the
        /// switch only lets its translations come back (see --service-cidr).
        #[arg(long, value_enum, default_value_t = ServiceProxy::Switch)]
        service_proxy: ServiceProxy,
        /// The cluster's Service range (kube-apiserver
        /// --service-cluster-ip-range; repeat for dual stack). With
        /// --service-proxy kube-proxy, a pod's connection there leaves by
        /// the node unjudged and is judged when it comes back translated.
        #[arg(long = "service-cidr", default_value = "10.96.0.0/12")]
        service_cidrs: Vec<ipnet::IpNet>,
        /// What a new policy does to established connections it denies.
        #[arg(long, value_enum, default_value_t = Established::Recheck)]
        established: Established,
        /// The most connections one pod may open and hold in the conntrack
        /// table (beyond it, its oldest unanswered one makes room, else its
        /// new one is dropped); 0: no limit but the table's.
        #[arg(long, default_value_t = vswitch_datapath::Config::default().conntrack_per_pod_max)]
        conntrack_per_pod: usize,
        /// Seconds after a start during which a TCP segment of an unknown
        /// connection other than SYN picks it up (so that connections open
        /// across a restart go on); after them, such a segment opens
        /// nothing. 0: never.
        #[arg(long, default_value_t = vswitch_datapath::Config::default().conntrack_pickup_ms / 1000)]
        conntrack_pickup_secs: u64,
        /// The slow-path frames one pod may cost the switch each second
        /// (new connections, denied and other dropped frames; not its
        /// answers to connections others opened). Beyond it the switch
        /// stops reading the pod's device for a while, and the pod's own
        /// kernel drops what does not fit in the device's queue. 0: no
        /// limit.
        #[arg(long, default_value_t = vswitch_datapath::Config::default().slow_path_per_pod)]
        slow_path_per_pod: u32,
        /// The longest the switch polls for traffic before it sleeps, in
        /// microseconds, after traffic that came soon after a sleep
        /// (request and answer): lower latency for some CPU while pods
        /// talk. 0: never; it always sleeps.
        #[arg(long, default_value_t = vswitch_datapath::Config::default().busy_poll_us)]
        busy_poll_us: u32,
        /// Serve Prometheus metrics at http://ADDR/metrics (off by default).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Installs the CNI plugin and writes its network configuration list.
    InstallCni {
        /// The plugin binary to install (default: vswitch-cni next to vswitchd).
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// Where the CNI plugins are installed (the container runtime's CNI
        /// bin directory).
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// Where the network configuration list is written (the container
        /// runtime's CNI configuration directory).
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The configuration list's file name in --conf-dir (the runtime uses
        /// the first in lexical order).
        #[arg(long, default_value = "10-vswitch.conflist")]
        conf_name: String,
        /// The network's name in the configuration list.
        #[arg(long, default_value = "vswitch")]
        network: String,
        /// vswitchd's control socket, as the plugin is to reach it (the same
        /// as `run --socket`).
        #[arg(long, default_value = vswitch_cni::proto::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The pods' MTU in the configuration (default: none, vswitchd's
        /// `--mtu` applies).
        #[arg(long)]
        mtu: Option<u32>,
        /// The node's pod subnet(s) for host-local IPAM (repeat for dual stack).
        #[arg(long = "subnet", required_unless_present = "node")]
        subnets: Vec<ipnet::IpNet>,
        /// Read the pod subnets from this Node's spec.podCIDRs instead.
        #[arg(long, conflicts_with = "subnets")]
        node: Option<String>,
        /// A kubeconfig file for --node (default: the in-cluster service account).
        #[arg(long, requires = "node")]
        kubeconfig: Option<PathBuf>,
        /// More plugins to install beside vswitch-cni (the IPAM and chained
        /// plugins the conflist names, e.g. /usr/lib/cni/host-local).
        #[arg(long = "extra-plugin")]
        extra_plugins: Vec<PathBuf>,
    },
}

/// `--service-proxy`: who translates connections to cluster IPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceProxy {
    /// The switch translates pods' connections to cluster IPs itself, from
    /// the source's Services and EndpointSlices.
    Switch,
    /// kube-proxy on the node translates; the switch takes the translated
    /// packets back from the node and sends the replies by the node.
    KubeProxy,
}

/// `--established`: what a new policy does to established connections it
/// now denies (the datapath's [`EstablishedPolicy`], as a command-line value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Established {
    /// Re-check them at their next packet and cut the ones now denied.
    Recheck,
    /// Keep connections that were allowed when they started.
    Keep,
}

impl From<Established> for EstablishedPolicy {
    fn from(e: Established) -> Self {
        match e {
            Established::Recheck => EstablishedPolicy::Recheck,
            Established::Keep => EstablishedPolicy::Keep,
        }
    }
}
