//! `vswitchctl policy simulate`: load Pods, Namespaces and NetworkPolicies
//! from a folder of manifests and show who can reach whom, before the
//! policies are applied to a cluster.
//!
//! Bad objects are reported (object and field) and left out; everything else
//! is simulated. Pods without `status.podIPs` (manifests usually have none)
//! get an address from 198.18.0.0/15, the benchmarking range, and the output
//! says so, since ipBlock rules see those addresses.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use policy::manifest::Object;

use crate::daemon::manifests::read_objects;
use policy::{Cluster, Engine, Flow, Namespace, Protocol};

/// Why a simulation cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The folder cannot be read (its name is in the message).
    #[error(transparent)]
    Read(#[from] crate::daemon::manifests::ManifestError),
    #[error("compiling the policies: {0}")]
    Compile(String),
    #[error(
        "--port {name}: no container port of any pod is named {name:?} for {protocol}; the named ports are: {known}"
    )]
    UnknownPortName {
        name: String,
        protocol: Protocol,
        known: String,
    },
}

/// What loading a folder produced.
pub struct Loaded {
    pub engine: Engine,
    /// Objects left out, and other things the user should know.
    pub notes: Vec<String>,
    pub rejected: usize,
}

/// Reads every manifest under `dir` (recursively).
pub fn load_dir(dir: &Path) -> Result<Loaded, SimulateError> {
    let (objects, mut notes) = read_objects(dir)?;
    let mut rejected = notes.len();
    let mut cluster = Cluster::default();
    for o in &objects {
        if let Object::Namespace(ns) = o {
            cluster.namespaces.insert(ns.name.clone(), ns.clone());
        }
    }
    let mut implicit = BTreeSet::new();
    let mut need_ns = |ns: &str, cluster: &mut Cluster| {
        if !cluster.namespaces.contains_key(ns) {
            cluster
                .namespaces
                .insert(ns.to_string(), Namespace::new(ns, Default::default()));
            implicit.insert(ns.to_string());
        }
    };
    let mut next_synthetic = u32::from(Ipv4Addr::new(198, 18, 0, 1));
    let mut used: BTreeSet<IpAddr> = BTreeSet::new();
    for o in objects {
        match o {
            Object::Namespace(_) | Object::Service(_) | Object::EndpointSlice(_) => {}
            Object::Node(n) => {
                cluster.nodes.insert(n.name.clone(), (&n).into());
            }
            Object::AdminPolicy(p) => {
                cluster.admin_policies.insert(p.key.clone(), p);
            }
            Object::HostNetworkPod(k) => notes.push(format!(
                "skipped: Pod {k} uses the host network; NetworkPolicy does not apply to it"
            )),
            Object::Pod(mut p) => {
                need_ns(&p.key.namespace, &mut cluster);
                if let Some(ip) = p.ips.iter().find(|ip| used.contains(ip)) {
                    rejected += 1;
                    notes.push(format!(
                        "rejected: Pod {}: address {ip} is used by another pod",
                        p.key
                    ));
                    continue;
                }
                if p.ips.is_empty() {
                    let ip = IpAddr::V4(Ipv4Addr::from(next_synthetic));
                    next_synthetic += 1;
                    notes.push(format!(
                        "note: Pod {} has no status.podIPs; simulated as {ip}",
                        p.key
                    ));
                    p.ips.push(ip);
                }
                used.extend(p.ips.iter().copied());
                cluster.pods.insert(p.key.clone(), p);
            }
            Object::NetworkPolicy(np) => {
                need_ns(&np.key.namespace, &mut cluster);
                cluster.policies.insert(np.key.clone(), np);
            }
        }
    }
    for ns in implicit {
        notes.push(format!(
            "note: namespace {ns} has no Namespace object; simulated with no labels"
        ));
    }
    let engine =
        Engine::from_cluster(cluster).map_err(|e| SimulateError::Compile(e.to_string()))?;
    Ok(Loaded {
        engine,
        notes,
        rejected,
    })
}

/// A port to probe: a number, or a name resolved on each target pod (the
/// same notion as a scenario probe's port).
pub use crate::tools::scenario::format::ProbePort as PortArg;

/// The ports worth showing when the user names none: every container port
/// of every pod (named ports in policies resolve to these), else 80/TCP.
pub fn default_ports(engine: &Engine) -> Vec<(PortArg, Protocol)> {
    let set: BTreeSet<(u16, Protocol)> = engine
        .cluster()
        .pods
        .values()
        .flat_map(|p| p.ports.iter().map(|c| (c.port, c.protocol)))
        .collect();
    if set.is_empty() {
        return vec![(PortArg::Number(80), Protocol::Tcp)];
    }
    set.into_iter()
        .map(|(p, proto)| (PortArg::Number(p), proto))
        .collect()
}

/// A port named on the command line must be some pod's container port
/// name (with that protocol): otherwise every pair would show as denied for
/// a typo.
pub fn check_port(
    engine: &Engine,
    port: &PortArg,
    protocol: Protocol,
) -> Result<(), SimulateError> {
    let PortArg::Named(name) = port else {
        return Ok(());
    };
    let pods = &engine.cluster().pods;
    let all = || pods.values().flat_map(|p| p.ports.iter());
    if all().any(|c| c.protocol == protocol && c.name.as_deref() == Some(name.as_str())) {
        return Ok(());
    }
    let known: BTreeSet<String> = all()
        .filter_map(|c| c.name.as_ref().map(|n| format!("{n} ({})", c.protocol)))
        .collect();
    Err(SimulateError::UnknownPortName {
        name: name.clone(),
        protocol,
        known: if known.is_empty() {
            "none".into()
        } else {
            known.into_iter().collect::<Vec<_>>().join(", ")
        },
    })
}

/// The reachability matrix of one port: `cells[from][to]`, `None` on the
/// diagonal.
pub struct Matrix {
    pub title: String,
    /// Row and column labels: `namespace/name` for pods.
    pub pods: Vec<String>,
    pub cells: Vec<Vec<Option<bool>>>,
}

pub fn matrix(engine: &Engine, port: &PortArg, protocol: Protocol) -> Matrix {
    let pods: Vec<&policy::Pod> = engine.cluster().pods.values().collect();
    let cells = pods
        .iter()
        .map(|from| {
            pods.iter()
                .map(|to| {
                    if from.key == to.key {
                        return None;
                    }
                    let port = match port {
                        PortArg::Number(n) => Some(*n),
                        PortArg::Named(name) => {
                            policy::model::resolve_named_port(&to.ports, name, protocol)
                        }
                    };
                    let pair = from.ips.iter().find_map(|s| {
                        to.ips
                            .iter()
                            .find(|d| d.is_ipv6() == s.is_ipv6())
                            .map(|d| (*s, *d))
                    });
                    Some(match (port, pair) {
                        (Some(port), Some((src, dst))) => engine
                            .verdict(&Flow {
                                src,
                                dst,
                                protocol,
                                dst_port: port,
                            })
                            .allowed(),
                        _ => false,
                    })
                })
                .collect()
        })
        .collect();
    Matrix {
        title: format!("{port}/{protocol}"),
        pods: pods.iter().map(|p| p.key.to_string()).collect(),
        cells,
    }
}

impl Matrix {
    /// Rows are sources, columns destinations; `.` allowed, `X` denied,
    /// `-` not probed (a pod to itself, or two hosts outside the cluster),
    /// as the legend under the matrix says. With `color`, allowed cells are
    /// green and denied ones red.
    pub fn render(&self, color: bool) -> String {
        let (green, red, reset) = if color {
            ("\x1b[32m", "\x1b[31m", "\x1b[0m")
        } else {
            ("", "", "")
        };
        let width = self.pods.iter().map(|p| p.len()).max().unwrap_or(0);
        let num = self.pods.len().to_string().len().max(2);
        let mut out = format!(
            "Reachability {} (rows: from, columns: to; . allowed, X denied)\n",
            self.title
        );
        out.push_str(&format!("{:>w$}  ", "", w = num + 1 + width));
        for i in 0..self.pods.len() {
            out.push_str(&format!("{:>num$} ", i + 1));
        }
        out.push('\n');
        for (i, (pod, row)) in self.pods.iter().zip(&self.cells).enumerate() {
            out.push_str(&format!("{:>num$} {:<width$}  ", i + 1, pod));
            for cell in row {
                let s = match cell {
                    None => format!("{:>num$} ", "-"),
                    Some(true) => format!("{green}{:>num$}{reset} ", "."),
                    Some(false) => format!("{red}{:>num$}{reset} ", "X"),
                };
                out.push_str(&s);
            }
            out.push('\n');
        }
        out.push_str(&self.legend());
        out
    }

    /// The line under the matrix that says what its symbols mean (`-` only
    /// where the matrix has one).
    fn legend(&self) -> String {
        let mut s = String::from("  . allowed   X denied");
        if self.cells.iter().flatten().any(Option::is_none) {
            let externals = self.pods.iter().filter(|p| !p.contains('/')).count();
            s.push_str(if externals > 1 {
                "   - not probed (a pod to itself, or between two hosts outside the cluster)"
            } else {
                "   - not probed (a pod to itself)"
            });
        }
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legend_explains_every_symbol_of_the_matrix() {
        let m = Matrix {
            title: "80/TCP".into(),
            pods: vec!["a/x".into(), "a/y".into()],
            cells: vec![vec![None, Some(true)], vec![Some(false), None]],
        };
        let text = m.render(false);
        let legend = text.lines().last().unwrap();
        assert!(legend.contains(". allowed"), "{text}");
        assert!(legend.contains("X denied"), "{text}");
        assert!(legend.contains("- not probed (a pod to itself)"), "{text}");
    }
}
