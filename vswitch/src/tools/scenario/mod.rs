//! NetworkPolicy scenario files (`shared/netpol-scenarios.md`, format v1):
//! parsing ([`format`]), the mode-independent runner ([`run`]), and one
//! prober per mode ([`engine`], [`dataplane`]).

pub mod dataplane;
mod engine;
pub mod format;
pub mod netns;
pub mod run;

use std::path::Path;

pub use run::{FileReport, Prober};

use crate::daemon::cli::ServiceProxy;

/// The modes `vswitchctl scenario run --mode` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The compiled policy engine answers each probe.
    Engine,
    /// Real connection attempts between in-process pods through the datapath.
    Dataplane,
    /// Pods as network namespaces behind TAP ports, probed with kernel
    /// sockets (needs root).
    Netns,
}

/// Reads, parses and runs one file; any error becomes a failed report.
/// `nodes`: how many simulated nodes netns mode spreads the pods over.
pub fn run_file(path: &Path, mode: Mode, nodes: usize) -> FileReport {
    run_file_via(path, mode, nodes, false, ServiceProxy::Switch)
}

/// [`run_file`]; with `via_service`, every pod is reached through a Service
/// of its own (`--via service`); `proxy`: who translates Services in netns
/// mode (dataplane mode has the switch; engine mode resolves them itself).
pub fn run_file_via(
    path: &Path,
    mode: Mode,
    nodes: usize,
    via_service: bool,
    proxy: ServiceProxy,
) -> FileReport {
    let failed = |name: String, error: String| FileReport {
        name,
        error: Some(error),
        probes: Vec::new(),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return failed("?".into(), format!("cannot read: {e}")),
    };
    let scenario = match format::parse(&text) {
        Ok(s) => s,
        Err(e) => return failed("?".into(), e.to_string()),
    };
    let mut prober: Box<dyn Prober> = match mode {
        Mode::Engine => Box::new(engine::EngineProber::default()),
        Mode::Dataplane => Box::new(dataplane::DataplaneProber::default()),
        Mode::Netns => Box::new(netns::NetnsProber::with_nodes(nodes).with_proxy(proxy)),
    };
    run::run_via(&scenario, prober.as_mut(), via_service)
}

/// Expands arguments: files as given, directories into their `*.yaml` and
/// `*.yml` files, sorted.
pub fn expand_paths(args: &[std::path::PathBuf]) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for a in args {
        if a.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(a)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(a.clone());
        }
    }
    out
}
