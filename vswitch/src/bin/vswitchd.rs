//! vswitchd: the vswitch daemon (see `vswitch::daemon` for the design).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vswitch::daemon::cli::{Cmd, ServiceProxy};
use vswitch::daemon::nodes::OverlayOptions;
use vswitch::daemon::{Daemon, Event, Options, install};
use vswitch::tools::demo::{DemoError, Pods};
use vswitch::tools::term::Color;
use vswitch::{errln, outln};
use vswitch_datapath::overlay;

#[derive(Parser)]
#[command(
    name = "vswitchd",
    version,
    about = "The vswitch daemon: a userspace switch for Kubernetes pods"
)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

// parsed once; the size of a variant does not matter
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Top {
    /// Shows what vswitch does on a small built-in cluster: who reaches whom
    /// before and after a NetworkPolicy, from real connection attempts.
    Demo {
        /// How pods are made: network namespaces where permitted, else in-process.
        #[arg(long, value_enum, default_value = "auto")]
        pods: Pods,
        /// Colour the matrices: auto (on a terminal, unless NO_COLOR is set), always, never.
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
        /// Pause this many milliseconds after each step (to read along, or
        /// for tests that interrupt the demo).
        #[arg(long, value_name = "MS", default_value_t = 0, hide = true)]
        pause_ms: u64,
    },
    #[command(flatten)]
    Daemon(Cmd),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(vswitch::tools::term::log_ansi())
        // a closed stderr drops log lines; reporting that on stderr would panic
        .log_internal_errors(false)
        .init();
    let cli = Cli::parse();
    let r = match cli.command {
        Top::Demo {
            pods,
            color,
            pause_ms,
        } => return demo(pods, color, Duration::from_millis(pause_ms)),
        Top::Daemon(Cmd::Run {
            socket,
            state_dir,
            manifests,
            kube,
            kubeconfig,
            node_tap,
            no_node_port,
            mtu,
            node_name,
            overlay_addr,
            overlay_port,
            vni,
            cluster_cidrs,
            service_proxy,
            service_cidrs,
            established,
            conntrack_per_pod,
            conntrack_pickup_secs,
            slow_path_per_pod,
            busy_poll_us,
            metrics_addr,
        }) => {
            let node_name = node_name.clone().unwrap_or_else(host_name);
            let overlay = overlay_addr.map(|addr| OverlayOptions {
                node_name: node_name.clone(),
                addr,
                port: overlay_port,
                vni,
            });
            let overhead = overlay_addr.map_or(0, |a| overlay::overhead(a.is_ipv6()));
            run(Options {
                socket,
                state_dir,
                manifests,
                kube: kube.then_some(kubeconfig),
                wait_for_source: kube,
                node_tap: (!no_node_port).then_some(node_tap),
                mtu: mtu.unwrap_or(1500 - overhead),
                established: established.into(),
                conntrack_per_pod,
                conntrack_pickup_ms: conntrack_pickup_secs.saturating_mul(1000),
                slow_path_per_pod,
                busy_poll_us,
                metrics_addr,
                overlay,
                cluster_cidrs,
                service_cidrs: match service_proxy {
                    ServiceProxy::KubeProxy => service_cidrs,
                    ServiceProxy::Switch => Vec::new(),
                },
                service_proxy,
                node_name,
            })
        }
        Top::Daemon(Cmd::InstallCni {
            plugin,
            bin_dir,
            conf_dir,
            conf_name,
            network,
            socket,
            mtu,
            subnets,
            node,
            kubeconfig,
            extra_plugins,
        }) => {
            let plugin = plugin.unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.parent().map(|d| d.join("vswitch-cni")))
                    .unwrap_or_else(|| PathBuf::from("vswitch-cni"))
            });
            let subnets = match node {
                Some(node) => {
                    match vswitch::daemon::kube::node_pod_cidrs_blocking(
                        kubeconfig.as_deref(),
                        &node,
                    ) {
                        Ok(s) => s,
                        Err(e) => {
                            errln!("vswitchd: Node {node}: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                None => subnets,
            };
            install::install(&install::InstallOptions {
                plugin,
                bin_dir,
                conf_dir,
                network,
                socket,
                mtu,
                subnets,
                conf_name,
                extra_plugins,
            })
            .map_err(|e| e.to_string())
            .map(|written| {
                for p in written {
                    outln!("wrote {}", p.display());
                }
            })
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("vswitchd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The host's name (the Node's name when --node-name is not given).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The demo's exit status: 0, 1 on an error, 130 (as a shell reports
/// SIGINT) after Ctrl-C, once what the demo made is removed.
fn demo(pods: Pods, color: Color, pause: Duration) -> ExitCode {
    let color = color.enabled();
    // Ctrl-C stops the demo at its next step, so that it cleans up after itself
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            errln!("vswitchd: demo: signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    }
    match vswitch::tools::demo::run(pods, color, &stop, pause) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ DemoError::Interrupted(_)) => {
            errln!("vswitchd demo: {e}");
            ExitCode::from(130)
        }
        Err(e) => {
            errln!("vswitchd demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: Options) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| format!("signals: {e}"))?;
    }
    let (mut daemon, server) = Daemon::start(opts).map_err(|e| e.to_string())?;
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
            Ok(Event::Request(pending)) => pending.answer(|req| daemon.handle(req)),
            Ok(Event::Update(u)) => daemon.update(u),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => return Err(format!("control socket: {e}")),
        }
    }
    tracing::info!("stopping; pods keep their interfaces until vswitchd returns");
    drop(server);
    Ok(())
}
