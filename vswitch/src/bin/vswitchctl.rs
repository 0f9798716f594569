//! vswitchctl: the vswitch command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use policy::Protocol;
use vswitch::scenario::{self, Mode};
use vswitch::simulate::{self, PortArg};

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
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Prints who can reach whom, from a folder of Pod, Namespace and
    /// NetworkPolicy manifests.
    Simulate {
        #[arg(long)]
        manifests: PathBuf,
        /// Port number or name (default: every container port of the pods).
        #[arg(long)]
        port: Option<String>,
        /// TCP, UDP or SCTP.
        #[arg(long, default_value = "TCP")]
        protocol: String,
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
}

/// `print!` that ends the program quietly when stdout is closed (`| head`).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if write!(std::io::stdout().lock(), $($t)*).is_err() {
            std::process::exit(1);
        }
    }};
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Scenario {
            command: ScenarioCommand::Run { mode, files },
        } => scenario_run(mode, &files),
        Command::Policy {
            command:
                PolicyCommand::Simulate {
                    manifests,
                    port,
                    protocol,
                    color,
                },
        } => policy_simulate(&manifests, port, &protocol, color),
    }
}

fn scenario_run(mode: Mode, args: &[PathBuf]) -> ExitCode {
    let files = scenario::expand_paths(args);
    let (mut passed, mut failed) = (0, 0);
    for f in &files {
        let report = scenario::run_file(f, mode);
        out!("{}", report.render(&f.display().to_string()));
        if report.passed() {
            passed += 1;
        } else {
            failed += 1;
        }
    }
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
        eprintln!("vswitchctl: --protocol {protocol:?}: must be TCP, UDP or SCTP");
        return ExitCode::from(2);
    };
    let loaded = match simulate::load_dir(dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vswitchctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    for n in &loaded.notes {
        eprintln!("{n}");
    }
    let ports = match port {
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => vec![(PortArg::Number(n), protocol)],
            Ok(_) => {
                eprintln!("vswitchctl: --port 0: must be between 1 and 65535");
                return ExitCode::from(2);
            }
            Err(_) => vec![(PortArg::Named(p), protocol)],
        },
        None => simulate::default_ports(&loaded.engine),
    };
    let color = match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let c = loaded.engine.cluster();
    out!(
        "{} namespaces, {} pods, {} policies loaded; {} objects rejected\n",
        c.namespaces.len(),
        c.pods.len(),
        c.policies.len(),
        loaded.rejected
    );
    for (port, proto) in ports {
        out!(
            "\n{}",
            simulate::matrix(&loaded.engine, &port, proto).render(color)
        );
    }
    ExitCode::SUCCESS
}
