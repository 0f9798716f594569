//! vswitchd: the vswitch daemon (see `vswitch::daemon` for the design).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vswitch::daemon::{Daemon, Event, Options, control, install};
use vswitch::datapath::EstablishedPolicy;

#[derive(Parser)]
#[command(
    name = "vswitchd",
    version,
    about = "The vswitch daemon: a userspace switch for Kubernetes pods"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
        #[arg(long)]
        manifests: Option<PathBuf>,
        /// The node's TAP device in the host namespace.
        #[arg(long, default_value = "vsw0")]
        node_tap: String,
        /// Run without a node port (pods reach only each other).
        #[arg(long)]
        no_node_port: bool,
        /// The pods' MTU when the CNI configuration gives none.
        #[arg(long, default_value_t = 1500)]
        mtu: u32,
        /// What a new policy does to established connections it denies.
        #[arg(long, value_enum, default_value_t = EstablishedPolicy::Recheck)]
        established: EstablishedPolicy,
        /// Serve Prometheus metrics at http://ADDR/metrics (off by default).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Installs the CNI plugin and writes its network configuration list.
    InstallCni {
        /// The plugin binary to install (default: vswitch-cni next to vswitchd).
        #[arg(long)]
        plugin: Option<PathBuf>,
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        #[arg(long, default_value = "10-vswitch.conflist")]
        conf_name: String,
        #[arg(long, default_value = "vswitch")]
        network: String,
        #[arg(long, default_value = vswitch_cni::proto::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long, default_value_t = 1500)]
        mtu: u32,
        /// The node's pod subnet(s) for host-local IPAM (repeat for dual stack).
        #[arg(long = "subnet", required = true)]
        subnets: Vec<ipnet::IpNet>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Run {
            socket,
            state_dir,
            manifests,
            node_tap,
            no_node_port,
            mtu,
            established,
            metrics_addr,
        } => run(Options {
            socket,
            state_dir,
            manifests,
            wait_for_source: false,
            node_tap: (!no_node_port).then_some(node_tap),
            mtu,
            established,
            metrics_addr,
        }),
        Cmd::InstallCni {
            plugin,
            bin_dir,
            conf_dir,
            conf_name,
            network,
            socket,
            mtu,
            subnets,
        } => {
            let plugin = plugin.unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.parent().map(|d| d.join("vswitch-cni")))
                    .unwrap_or_else(|| PathBuf::from("vswitch-cni"))
            });
            install::install(&install::InstallOptions {
                plugin,
                bin_dir,
                conf_dir,
                network,
                socket,
                mtu,
                subnets,
                conf_name,
            })
            .map(|written| {
                for p in written {
                    println!("wrote {}", p.display());
                }
            })
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vswitchd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: Options) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| format!("signals: {e}"))?;
    }
    let (mut daemon, server) = Daemon::start(opts)?;
    let (tx, rx) = mpsc::channel::<Event>();
    server
        .spawn_acceptor(tx.clone())
        .map_err(|e| format!("control socket: {e}"))?;
    if let Some(source) = daemon.source() {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("source".into())
            .spawn(move || source.run(&|u| tx.send(Event::Update(u)).is_ok(), &stop))
            .map_err(|e| format!("source: {e}"))?;
    }
    tracing::info!("ready");
    while !stop.load(Ordering::Relaxed) {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Connection(stream)) => control::serve_one(stream, |req| daemon.handle(req)),
            Ok(Event::Update(u)) => daemon.update(u),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => return Err(format!("control socket: {e}")),
        }
    }
    tracing::info!("stopping; pods keep their interfaces until vswitchd returns");
    drop(server);
    Ok(())
}
