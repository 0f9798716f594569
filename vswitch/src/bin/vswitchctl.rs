//! vswitchctl: the vswitch command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use policy::Protocol;
use vswitch::daemon::cli::ServiceProxy;
use vswitch::tools::scenario::format::{ProbePort, parse_port_protocol};
use vswitch::tools::scenario::{self, Mode};
use vswitch::tools::simulate;
use vswitch::tools::term::Color;
use vswitch::{errln, out};
use vswitch_cni::proto::Request;

#[derive(Parser)]
#[command(name = "vswitchctl", version, about = "Control and test vswitch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// NetworkPolicy scenario files.
    Scenario {
        #[command(subcommand)]
        command: ScenarioCommand,
    },
    /// Policies without a cluster.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The running vswitchd's ports: pods, addresses, readiness, counters.
    Ports {
        #[command(flatten)]
        daemon: Daemon,
    },
    /// Flow-cache entries of the running vswitchd.
    Flows {
        #[command(flatten)]
        daemon: Daemon,
        /// Show at most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Connections tracked by the running vswitchd.
    Conntrack {
        #[command(flatten)]
        daemon: Daemon,
        /// Show at most this many connections.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// The Services the running vswitchd translates (--service-proxy
    /// switch): each frontend, its endpoints with their conditions (`->`:
    /// new connections may go there) and connections through it.
    Services {
        #[command(flatten)]
        daemon: Daemon,
    },
    /// Which policies and rules allow or deny a connection, from the live
    /// state: `explain default/frontend default/db 6379/TCP`, or through a
    /// Service: `explain default/frontend svc:default/db 6379/TCP` (the
    /// Service's port; each endpoint's verdict).
    Explain {
        #[command(flatten)]
        daemon: Daemon,
        /// A pod (namespace/name) or an address.
        src: String,
        /// A pod (namespace/name) or an address.
        dst: String,
        /// PORT/PROTOCOL, for example 80/TCP (PORT 1-65535; TCP, UDP or
        /// SCTP; TCP when left out).
        port: String,
    },
}

/// How to reach vswitchd.
#[derive(clap::Args)]
struct Daemon {
    /// vswitchd's control socket.
    #[arg(long, default_value = vswitch_cni::proto::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ScenarioCommand {
    /// Runs scenario files (or folders of them) and reports PASS/FAIL per file.
    Run {
        /// Which layer answers the probes.
        #[arg(long, value_enum, default_value = "engine")]
        mode: Mode,
        /// Scenario files, or folders whose *.yaml files are run.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// netns mode: spread the pods round-robin over this many simulated
        /// nodes, each with its own switch, joined by the overlay.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        nodes: u16,
        /// `service`: reach every pod through a Service of its own (as the
        /// upstream end-to-end tests do); expected verdicts do not change.
        #[arg(long, value_enum)]
        via: Option<Via>,
        /// Who translates connections to cluster IPs in netns mode: the
        /// switch itself, or kube-proxy's iptables rules on each simulated
        /// node's host (dataplane mode has the switch; engine mode resolves
        /// Services itself).
        #[arg(long, value_enum, default_value_t = ServiceProxy::Switch)]
        service_proxy: ServiceProxy,
        /// How many files run at once (default: 6 in netns mode, where a
        /// run mostly waits for denied probes to time out, each file with
        /// its own namespaces and switch; 1 otherwise). Reports are
        /// printed in the files' order either way.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: Option<u16>,
    },
}

/// `--via`: how probes reach pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Via {
    /// Through a Service of each pod's own.
    Service,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Prints who can reach whom, from a folder of Pod, Namespace,
    /// NetworkPolicy and admin policy (ClusterNetworkPolicy,
    /// AdminNetworkPolicy, BaselineAdminNetworkPolicy, Node) manifests.
    Simulate {
        /// A folder of Pod, Namespace, NetworkPolicy, ClusterNetworkPolicy,
        /// AdminNetworkPolicy, BaselineAdminNetworkPolicy and Node manifests
        /// (YAML or JSON, read recursively).
        #[arg(long)]
        manifests: PathBuf,
        /// Port number (1-65535) or the name of a pod's container port
        /// (default: every container port of the pods).
        #[arg(long)]
        port: Option<String>,
        /// TCP, UDP or SCTP.
        #[arg(long, default_value = "TCP")]
        protocol: String,
        /// Colour the matrices: auto (on a terminal, unless NO_COLOR is set), always, never.
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Scenario {
            command:
                ScenarioCommand::Run {
                    mode,
                    files,
                    nodes,
                    via,
                    service_proxy,
                    jobs,
                },
        } => {
            let jobs = jobs.map_or(if mode == Mode::Netns { 6 } else { 1 }, usize::from);
            scenario_run(
                mode,
                &files,
                nodes as usize,
                via == Some(Via::Service),
                service_proxy,
                jobs,
            )
        }
        Command::Policy {
            command:
                PolicyCommand::Simulate {
                    manifests,
                    port,
                    protocol,
                    color,
                },
        } => policy_simulate(&manifests, port, &protocol, color),
        Command::Ports { daemon } => live(&daemon, Request::Ports {}),
        Command::Flows { daemon, limit } => live(&daemon, Request::Flows { limit }),
        Command::Conntrack { daemon, limit } => live(&daemon, Request::Conntrack { limit }),
        Command::Services { daemon } => live(&daemon, Request::Services {}),
        Command::Explain {
            daemon,
            src,
            dst,
            port,
        } => {
            let (num, proto) = match parse_port_protocol(&port) {
                Ok(p) => p,
                Err(e) => {
                    errln!("vswitchctl: explain: {e}");
                    return ExitCode::from(2);
                }
            };
            live(
                &daemon,
                Request::Explain {
                    src,
                    dst,
                    port: num,
                    protocol: proto.to_string(),
                },
            )
        }
    }
}

fn live(daemon: &Daemon, req: Request) -> ExitCode {
    match vswitch::tools::live::ask(&daemon.socket, &req) {
        Ok(reply) => {
            if daemon.json {
                out!(
                    "{}\n",
                    serde_json::to_string_pretty(&reply).unwrap_or_default()
                );
            } else {
                out!("{}", vswitch::tools::live::render(&reply));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            errln!("vswitchctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the files, `jobs` at once, and prints each report in the files'
/// order as soon as it and those before it are done.
fn scenario_run(
    mode: Mode,
    args: &[PathBuf],
    nodes: usize,
    via_service: bool,
    proxy: ServiceProxy,
    jobs: usize,
) -> ExitCode {
    let files = scenario::expand_paths(args);
    let (mut passed, mut failed) = (0, 0);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (done, reports) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, files.len().max(1)) {
            let done = done.clone();
            let (files, next) = (&files, &next);
            s.spawn(move || {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(f) = files.get(i) else { break };
                    // a file whose run panics fails alone: the others still
                    // run and every report is still printed in order
                    let report = std::panic::catch_unwind(|| {
                        scenario::run_file_via(f, mode, nodes, via_service, proxy)
                    })
                    .unwrap_or_else(|panic| {
                        let why = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        scenario::FileReport {
                            name: String::new(),
                            error: Some(format!("the runner failed: {why}")),
                            probes: Vec::new(),
                        }
                    });
                    if done.send((i, report)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done);
        let mut waiting = std::collections::BTreeMap::new();
        let mut printed = 0;
        for (i, report) in reports {
            waiting.insert(i, report);
            while let Some(report) = waiting.remove(&printed) {
                out!("{}", report.render(&files[printed].display().to_string()));
                if report.passed() {
                    passed += 1;
                } else {
                    failed += 1;
                }
                printed += 1;
            }
        }
    });
    out!("{passed} passed, {failed} failed\n");
    if failed > 0 || files.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn policy_simulate(
    dir: &std::path::Path,
    port: Option<String>,
    protocol: &str,
    color: Color,
) -> ExitCode {
    let Some(protocol) = Protocol::parse(&protocol.to_ascii_uppercase()) else {
        errln!("vswitchctl: --protocol {protocol:?}: must be TCP, UDP or SCTP");
        return ExitCode::from(2);
    };
    let port = match port.as_deref().map(ProbePort::parse).transpose() {
        Ok(p) => p,
        Err(e) => {
            errln!("vswitchctl: --port {e}");
            return ExitCode::from(2);
        }
    };
    let loaded = match simulate::load_dir(dir) {
        Ok(l) => l,
        Err(e) => {
            errln!("vswitchctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    for n in &loaded.notes {
        errln!("{n}");
    }
    let ports = match port {
        Some(p) => {
            if let Err(e) = simulate::check_port(&loaded.engine, &p, protocol) {
                errln!("vswitchctl: {e}");
                return ExitCode::FAILURE;
            }
            vec![(p, protocol)]
        }
        None => simulate::default_ports(&loaded.engine),
    };
    let color = color.enabled();
    let c = loaded.engine.cluster();
    out!(
        "{} namespaces, {} pods, {} policies, {} admin policies loaded; {} objects rejected\n",
        c.namespaces.len(),
        c.pods.len(),
        c.policies.len(),
        c.admin_policies.len(),
        loaded.rejected
    );
    for (port, proto) in ports {
        out!(
            "\n{}",
            simulate::matrix(&loaded.engine, &port, proto).render(color)
        );
    }
    if loaded.rejected > 0 {
        // the matrix is of what was left: a policy with a typo is not in it
        let objects = if loaded.rejected == 1 {
            "1 object"
        } else {
            &format!("{} objects", loaded.rejected)
        };
        errln!(
            "vswitchctl: {objects} rejected and left out of the simulation (see above); fix them for a matrix of every object"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
