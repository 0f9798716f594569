//! The scenario file format v1 (`shared/netpol-scenarios.md`): the YAML shape
//! (serde, unknown fields rejected, errors carry the field path) and its
//! conversion into a checked [`Scenario`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policy::manifest::{self, Object};
use policy::{
    AdminPolicy, ContainerPort, Labels, Namespace, NodeInfo, Pod, PodKey, Policy, PolicyKey,
    Protocol, Service,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    cluster: Option<ClusterSpec>,
    steps: Vec<StepSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterSpec {
    #[serde(default)]
    namespaces: Vec<NamespaceSpec>,
    #[serde(default)]
    pods: Vec<PodSpec>,
    #[serde(default)]
    externals: Vec<ExternalSpec>,
    #[serde(default)]
    nodes: Vec<NodeSpec>,
}

/// A host that is also a Kubernetes Node: an external with labels.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSpec {
    name: String,
    #[serde(default)]
    labels: Labels,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    ports: Option<Vec<PortSpec>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct NamespaceSpec {
    name: String,
    #[serde(default)]
    labels: Labels,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct PodSpec {
    namespace: String,
    name: String,
    #[serde(default)]
    labels: Labels,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    ports: Option<Vec<PortSpec>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct PortSpec {
    name: Option<String>,
    port: u16,
    #[serde(default = "tcp")]
    protocol: String,
}

fn tcp() -> String {
    "TCP".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExternalSpec {
    name: String,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    ports: Option<Vec<PortSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    /// One-key maps, decoded by [`action`] (serde_norway reads externally
    /// tagged enums as YAML tags, not as the format's one-key maps).
    #[serde(rename = "do", default)]
    actions: Vec<serde_norway::Value>,
    expect: Vec<ProbeSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPodLabels {
    pod: String,
    labels: Labels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetNamespaceLabels {
    namespace: String,
    labels: Labels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeSpec {
    probe: ProbeTarget,
    #[serde(default)]
    family: Family,
    default: VerdictSpec,
    #[serde(default)]
    except: Vec<ExceptSpec>,
    only: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeTarget {
    port: PortValue,
    #[serde(default = "tcp")]
    protocol: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortValue {
    Number(u64),
    Name(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ExceptSpec {
    Pair(String),
    /// `x/a -> y/b: allow` written without quotes parses as a one-key map.
    Verdict(BTreeMap<String, VerdictSpec>),
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum VerdictSpec {
    Allow,
    Deny,
}

/// The address family of a probe.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        })
    }
}

// ----- the checked scenario --------------------------------------------------

/// A host outside the cluster: it serves and connects, no policy selects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    pub name: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub ports: Vec<ContainerPort>,
}

/// One action of a step, converted to model objects.
#[derive(Debug, Clone)]
pub enum Action {
    Apply(Policy),
    DeletePolicy(PolicyKey),
    SetPodLabels(PodKey, Labels),
    SetNamespaceLabels(String, Labels),
    CreatePod(Pod),
    DeletePod(PodKey),
    CreateNamespace(Namespace),
    /// `apply` of a v1 Service: create, or replace by namespace/name.
    ApplyService(Service),
    DeleteService(PodKey),
    /// `apply` of a ClusterNetworkPolicy, AdminNetworkPolicy or
    /// BaselineAdminNetworkPolicy: create, or replace by kind and name.
    ApplyAdmin(AdminPolicy),
    /// `delete-policy: NAME` (no namespace): the cluster-scoped policy of
    /// that name.
    DeleteAdminPolicy(String),
}

/// One side of a `FROM -> TO` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`: every pod and external.
    Any,
    /// `ns/*`: every pod of a namespace.
    Namespace(String),
    /// `ns/name`: one pod.
    Pod(PodKey),
    /// `name`: one external.
    External(String),
    /// `svc:ns/name`: a Service (only as a target).
    Service(PodKey),
}

impl Pattern {
    fn parse(s: &str) -> Result<Pattern, Problem> {
        let s = s.trim();
        if s == "*" {
            return Ok(Pattern::Any);
        }
        if let Some(svc) = s.strip_prefix("svc:") {
            return PodKey::parse(svc)
                .map(Pattern::Service)
                .ok_or_else(|| Problem::NotPattern(s.to_string()));
        }
        match s.split_once('/') {
            Some((ns, "*")) if !ns.is_empty() => Ok(Pattern::Namespace(ns.to_string())),
            Some(_) => PodKey::parse(s)
                .map(Pattern::Pod)
                .ok_or_else(|| Problem::NotPattern(s.to_string())),
            None if !s.is_empty() && !s.contains(char::is_whitespace) => {
                Ok(Pattern::External(s.to_string()))
            }
            None => Err(Problem::NotEndpoint(s.to_string())),
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Any => f.write_str("*"),
            Pattern::Namespace(ns) => write!(f, "{ns}/*"),
            Pattern::Pod(k) => write!(f, "{k}"),
            Pattern::External(n) => f.write_str(n),
            Pattern::Service(k) => write!(f, "svc:{k}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Except {
    pub from: Pattern,
    pub to: Pattern,
    /// `None`: the opposite of the default.
    pub verdict: Option<bool>,
    /// Field path, for errors about names that match nothing.
    pub field: String,
}

#[derive(Debug, Clone)]
pub enum ProbePort {
    Number(u16),
    Named(String),
}

/// What is wrong with a scenario file: where (the field's path, as in
/// `steps[1].expect[0].probe.port`) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The file does not have the format's shape (a missing or unknown
    /// field, a value of the wrong type), as the YAML reader says.
    #[error("{0}")]
    Shape(String),
    /// A field whose value is wrong.
    #[error("{field}: {problem}")]
    Field { field: String, problem: Problem },
    #[error("steps: at least one step is required")]
    NoSteps,
}

/// What is wrong with one field of a scenario file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("unknown protocol {0:?} (TCP, UDP or SCTP)")]
    Protocol(String),
    #[error("must be between 1 and 65535")]
    PortZero,
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("pod {0} has neither ipv4 nor ipv6")]
    PodWithoutAddress(String),
    #[error("external {0} has neither ipv4 nor ipv6")]
    ExternalWithoutAddress(String),
    #[error("{0:?} may not contain '/' or be '*'")]
    ExternalName(String),
    #[error(
        "only NetworkPolicy, ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy and Service objects can be applied"
    )]
    NotNetworkPolicy,
    #[error(
        "{0} is not supported by this engine (supported: networking.k8s.io/v1 NetworkPolicy, policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy, policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy and BaselineAdminNetworkPolicy, v1 Service)"
    )]
    Unsupported(String),
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("{0}")]
    Manifest(String),
    #[error("empty object")]
    Empty,
    #[error("{0:?} is not of the form \"FROM -> TO\"")]
    NotPair(String),
    #[error("{0:?} is not a pod (namespace/name), namespace/*, * or svc:namespace/name")]
    NotPattern(String),
    #[error("{0:?} is not an endpoint name")]
    NotEndpoint(String),
    #[error("verdict {0:?} must be allow or deny")]
    Verdict(String),
    #[error("expected \"FROM -> TO\" or \"FROM -> TO: allow|deny\"")]
    ExceptShape,
    #[error("{0}")]
    Value(String),
    #[error("an action is a one-key map such as {{apply: ...}}")]
    ActionShape,
    #[error("{0:?} is not namespace/name")]
    NotKey(String),
    #[error(
        "unknown action {0:?} (apply, delete-policy, delete-service, set-pod-labels, set-namespace-labels, create-pod, delete-pod, create-namespace)"
    )]
    UnknownAction(String),
    #[error("a Service ({0}) is never the source of a pair")]
    ServiceSource(String),
}

impl Problem {
    fn at(self, field: &str) -> FormatError {
        FormatError::Field {
            field: field.to_string(),
            problem: self,
        }
    }
}

/// A port as a user writes it that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("{0}: must be a number between 1 and 65535, or a container port's name")]
    OutOfRange(String),
    #[error("{0:?}: expected PORT/PROTOCOL, for example 80/TCP (PORT 1-65535; TCP, UDP or SCTP)")]
    PortProtocol(String),
}

impl ProbePort {
    /// A port as a user writes it: a number 1-65535 or a container port's
    /// name (a word with a letter in it).
    pub fn parse(s: &str) -> Result<ProbePort, PortError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(PortError::OutOfRange(format!("{s:?}")));
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u16>() {
                Ok(n) if n > 0 => Ok(ProbePort::Number(n)),
                _ => Err(PortError::OutOfRange(s.to_string())),
            };
        }
        Ok(ProbePort::Named(s.to_string()))
    }
}

/// `PORT/PROTOCOL` (`80/TCP`; the protocol defaults to TCP and may be in
/// lower case): a numeric port, as `vswitchctl explain` takes it.
pub fn parse_port_protocol(s: &str) -> Result<(u16, Protocol), PortError> {
    let bad = || PortError::PortProtocol(s.to_string());
    let (num, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port = match ProbePort::parse(num).map_err(|_| bad())? {
        ProbePort::Number(n) => n,
        ProbePort::Named(_) => return Err(bad()),
    };
    let protocol = Protocol::parse(&proto.to_ascii_uppercase()).ok_or_else(bad)?;
    Ok((port, protocol))
}

impl std::fmt::Display for ProbePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbePort::Number(n) => write!(f, "{n}"),
            ProbePort::Named(n) => f.write_str(n),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Probe {
    pub port: ProbePort,
    pub protocol: Protocol,
    pub family: Family,
    /// `true`: allow.
    pub default: bool,
    pub except: Vec<Except>,
    pub only: Option<Vec<(Pattern, Pattern, String)>>,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub actions: Vec<Action>,
    pub probes: Vec<Probe>,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    /// Hosts that serve and connect (`cluster.externals` and
    /// `cluster.nodes`).
    pub externals: Vec<External>,
    /// `cluster.nodes`: also Kubernetes Nodes (their labels and addresses).
    pub nodes: Vec<NodeInfo>,
    pub steps: Vec<Step>,
}

/// The standard port set: 80 and 81 on TCP, UDP and SCTP, named
/// `serve-<port>-<proto>`.
pub fn standard_ports() -> Vec<ContainerPort> {
    let mut v = Vec::new();
    for port in [80u16, 81] {
        for (protocol, p) in [
            (Protocol::Tcp, "tcp"),
            (Protocol::Udp, "udp"),
            (Protocol::Sctp, "sctp"),
        ] {
            v.push(ContainerPort {
                name: Some(format!("serve-{port}-{p}")),
                port,
                protocol,
            });
        }
    }
    v
}

/// The standard 3 x 3 cluster of the upstream NetworkPolicy e2e tests.
fn standard_cluster() -> (Vec<Namespace>, Vec<Pod>) {
    let mut namespaces = Vec::new();
    let mut pods = Vec::new();
    for (n, ns) in ["x", "y", "z"].iter().enumerate() {
        namespaces.push(Namespace::new(
            *ns,
            [("ns".to_string(), ns.to_string())].into(),
        ));
        for (m, pod) in ["a", "b", "c"].iter().enumerate() {
            let (n, m) = (n as u8 + 1, m as u8 + 10);
            pods.push(Pod {
                key: PodKey::new(*ns, *pod),
                labels: [("pod".to_string(), pod.to_string())].into(),
                ips: vec![
                    IpAddr::V4(Ipv4Addr::new(10, 244, n, m)),
                    IpAddr::V6(Ipv6Addr::new(
                        0xfd00, 0x10, 0x244, n as u16, 0, 0, 0, m as u16,
                    )),
                ],
                ports: standard_ports(),
            });
        }
    }
    (namespaces, pods)
}

fn protocol(field: &str, s: &str) -> Result<Protocol, FormatError> {
    Protocol::parse(s).ok_or_else(|| Problem::Protocol(s.to_string()).at(field))
}

fn ports(field: &str, spec: Option<Vec<PortSpec>>) -> Result<Vec<ContainerPort>, FormatError> {
    let Some(spec) = spec else {
        return Ok(standard_ports());
    };
    spec.into_iter()
        .enumerate()
        .map(|(i, p)| {
            let f = format!("{field}.ports[{i}]");
            if p.port == 0 {
                return Err(Problem::PortZero.at(&format!("{f}.port")));
            }
            Ok(ContainerPort {
                name: p.name,
                port: p.port,
                protocol: protocol(&format!("{f}.protocol"), &p.protocol)?,
            })
        })
        .collect()
}

/// A host outside the cluster (`cluster.externals`, and the hosts of
/// `cluster.nodes`), checked.
fn external(f: &str, e: ExternalSpec) -> Result<External, FormatError> {
    if e.name.contains('/') || e.name == "*" {
        return Err(Problem::ExternalName(e.name).at(&format!("{f}.name")));
    }
    if e.ipv4.is_none() && e.ipv6.is_none() {
        return Err(Problem::ExternalWithoutAddress(e.name).at(f));
    }
    Ok(External {
        name: e.name,
        ipv4: e.ipv4,
        ipv6: e.ipv6,
        ports: ports(f, e.ports)?,
    })
}

fn pod(field: &str, p: PodSpec) -> Result<Pod, FormatError> {
    let mut ips = Vec::new();
    ips.extend(p.ipv4.map(IpAddr::V4));
    ips.extend(p.ipv6.map(IpAddr::V6));
    if ips.is_empty() {
        return Err(Problem::PodWithoutAddress(format!("{}/{}", p.namespace, p.name)).at(field));
    }
    Ok(Pod {
        key: PodKey::new(p.namespace, p.name),
        labels: p.labels,
        ips,
        ports: ports(field, p.ports)?,
    })
}

fn applied(field: &str, value: serde_norway::Value) -> Result<Action, FormatError> {
    let mut out = Vec::new();
    manifest::parse_value(1, value, &mut out);
    match out.pop() {
        Some(Ok(Object::NetworkPolicy(p))) if out.is_empty() => Ok(Action::Apply(p)),
        Some(Ok(Object::Service(s))) if out.is_empty() => Ok(Action::ApplyService(s)),
        Some(Ok(Object::AdminPolicy(p))) if out.is_empty() => Ok(Action::ApplyAdmin(p)),
        Some(Ok(_)) => Err(Problem::NotNetworkPolicy.at(field)),
        Some(Err(manifest::ManifestError::Unsupported { kind, .. })) => {
            Err(Problem::Unsupported(kind.to_string()).at(field))
        }
        Some(Err(manifest::ManifestError::Invalid(e, _))) => {
            Err(Problem::Rejected(e.to_string()).at(field))
        }
        Some(Err(e)) => Err(Problem::Manifest(
            e.to_string().trim_start_matches("document 1: ").to_string(),
        )
        .at(field)),
        None => Err(Problem::Empty.at(field)),
    }
}

fn pair(field: &str, s: &str) -> Result<(Pattern, Pattern), FormatError> {
    let (from, to) = s
        .split_once("->")
        .ok_or_else(|| Problem::NotPair(s.to_string()).at(field))?;
    let from = Pattern::parse(from).map_err(|e| e.at(field))?;
    if let Pattern::Service(k) = &from {
        return Err(Problem::ServiceSource(k.to_string()).at(field));
    }
    let to = Pattern::parse(to).map_err(|e| e.at(field))?;
    Ok((from, to))
}

fn except(field: &str, e: ExceptSpec) -> Result<Except, FormatError> {
    let (text, verdict) = match e {
        ExceptSpec::Pair(s) => match s.rsplit_once(':') {
            Some((p, v)) if matches!(v.trim(), "allow" | "deny") => {
                (p.to_string(), Some(v.trim() == "allow"))
            }
            // the colon of a `svc:ns/name` target, not a verdict's
            Some((p, _)) if p.ends_with("svc") => (s, None),
            Some((_, v)) => {
                return Err(Problem::Verdict(v.trim().to_string()).at(field));
            }
            None => (s, None),
        },
        ExceptSpec::Verdict(map) => {
            let mut it = map.into_iter();
            match (it.next(), it.next()) {
                (Some((k, v)), None) => (k, Some(v == VerdictSpec::Allow)),
                _ => {
                    return Err(Problem::ExceptShape.at(field));
                }
            }
        }
    };
    let (from, to) = pair(field, &text)?;
    Ok(Except {
        from,
        to,
        verdict,
        field: field.to_string(),
    })
}

fn probe(field: &str, p: ProbeSpec) -> Result<Probe, FormatError> {
    let port = match p.probe.port {
        PortValue::Number(n) => ProbePort::parse(&n.to_string()),
        PortValue::Name(s) => ProbePort::parse(&s),
    }
    .map_err(|e| Problem::Port(e).at(&format!("{field}.probe.port")))?;
    let protocol = protocol(&format!("{field}.probe.protocol"), &p.probe.protocol)?;
    let except = p
        .except
        .into_iter()
        .enumerate()
        .map(|(i, e)| except(&format!("{field}.except[{i}]"), e))
        .collect::<Result<Vec<_>, _>>()?;
    let only = match p.only {
        None => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, s)| {
                    let f = format!("{field}.only[{i}]");
                    pair(&f, s).map(|(a, b)| (a, b, f))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Probe {
        port,
        protocol,
        family: p.family,
        default: p.default == VerdictSpec::Allow,
        except,
        only,
    })
}

fn decode<T: serde::de::DeserializeOwned>(
    field: &str,
    v: serde_norway::Value,
) -> Result<T, FormatError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let problem = Problem::Value(e.inner().to_string());
        if path == "." {
            problem.at(field)
        } else {
            problem.at(&format!("{field}.{path}"))
        }
    })
}

fn action(field: &str, a: serde_norway::Value) -> Result<Action, FormatError> {
    let map = match a {
        serde_norway::Value::Mapping(m) if m.len() == 1 => m,
        _ => return Err(Problem::ActionShape.at(field)),
    };
    let (k, v) = map.into_iter().next().expect("one entry");
    let verb = k.as_str().unwrap_or("").to_string();
    let at = format!("{field}.{verb}");
    let key = |s: &str| PodKey::parse(s).ok_or_else(|| Problem::NotKey(s.to_string()).at(&at));
    Ok(match verb.as_str() {
        "apply" => applied(&at, v)?,
        "delete-service" => Action::DeleteService(key(&decode::<String>(&at, v)?)?),
        "delete-policy" => {
            let name = decode::<String>(&at, v)?;
            if !name.contains('/') && !name.is_empty() {
                Action::DeleteAdminPolicy(name)
            } else {
                let k = key(&name)?;
                Action::DeletePolicy(PolicyKey::new(k.namespace, k.name))
            }
        }
        "set-pod-labels" => {
            let s: SetPodLabels = decode(&at, v)?;
            Action::SetPodLabels(key(&s.pod)?, s.labels)
        }
        "set-namespace-labels" => {
            let s: SetNamespaceLabels = decode(&at, v)?;
            Action::SetNamespaceLabels(s.namespace, s.labels)
        }
        "create-pod" => Action::CreatePod(pod(&at, decode(&at, v)?)?),
        "delete-pod" => Action::DeletePod(key(&decode::<String>(&at, v)?)?),
        "create-namespace" => {
            let n: NamespaceSpec = decode(&at, v)?;
            Action::CreateNamespace(Namespace::new(n.name, n.labels))
        }
        other => return Err(Problem::UnknownAction(other.to_string()).at(field)),
    })
}

/// Parses and checks a scenario file. The error names the field (with its
/// path: `steps[1].expect[0].probe.port`) and what is wrong with it.
pub fn parse(text: &str) -> Result<Scenario, FormatError> {
    let de = serde_norway::Deserializer::from_str(text);
    let spec: FileSpec = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        if path == "." || path.is_empty() || inner.starts_with(&path) {
            FormatError::Shape(inner)
        } else {
            Problem::Value(inner).at(&path)
        }
    })?;
    let (namespaces, pods, externals, nodes) = match spec.cluster {
        None => {
            let (n, p) = standard_cluster();
            (n, p, Vec::new(), Vec::new())
        }
        Some(c) => {
            let namespaces = c
                .namespaces
                .into_iter()
                .map(|n| Namespace::new(n.name, n.labels))
                .collect();
            let pods = c
                .pods
                .into_iter()
                .enumerate()
                .map(|(i, p)| pod(&format!("cluster.pods[{i}]"), p))
                .collect::<Result<Vec<_>, _>>()?;
            let mut externals = c
                .externals
                .into_iter()
                .enumerate()
                .map(|(i, e)| external(&format!("cluster.externals[{i}]"), e))
                .collect::<Result<Vec<_>, _>>()?;
            // a node is an external host with labels
            let mut nodes = Vec::new();
            for (i, n) in c.nodes.into_iter().enumerate() {
                let host = ExternalSpec {
                    name: n.name,
                    ipv4: n.ipv4,
                    ipv6: n.ipv6,
                    ports: n.ports,
                };
                let host = external(&format!("cluster.nodes[{i}]"), host)?;
                nodes.push(NodeInfo {
                    name: host.name.clone(),
                    labels: n.labels,
                    addresses: host
                        .ipv4
                        .map(IpAddr::V4)
                        .into_iter()
                        .chain(host.ipv6.map(IpAddr::V6))
                        .collect(),
                });
                externals.push(host);
            }
            (namespaces, pods, externals, nodes)
        }
    };
    if spec.steps.is_empty() {
        return Err(FormatError::NoSteps);
    }
    let mut steps = Vec::new();
    for (i, s) in spec.steps.into_iter().enumerate() {
        let actions = s
            .actions
            .into_iter()
            .enumerate()
            .map(|(j, a)| action(&format!("steps[{i}].do[{j}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        let probes = s
            .expect
            .into_iter()
            .enumerate()
            .map(|(j, p)| probe(&format!("steps[{i}].expect[{j}]"), p))
            .collect::<Result<Vec<_>, _>>()?;
        steps.push(Step { actions, probes });
    }
    Ok(Scenario {
        name: spec.name,
        namespaces,
        pods,
        externals,
        nodes,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_cluster_addresses_follow_the_format() {
        let s = parse(
            "name: t\nsteps: [{expect: [{probe: {port: 80, protocol: TCP}, default: allow}]}]",
        )
        .unwrap();
        let yb = s
            .pods
            .iter()
            .find(|p| p.key == PodKey::new("y", "b"))
            .unwrap();
        assert_eq!(yb.ips[0].to_string(), "10.244.2.11");
        assert_eq!(yb.ips[1].to_string(), "fd00:10:244:2::b");
        assert_eq!(yb.ports.len(), 6);
        assert_eq!(s.namespaces[1].labels["kubernetes.io/metadata.name"], "y");
    }

    #[test]
    fn errors_name_the_step_and_field() {
        let e = parse(
            "name: t\nsteps: [{expect: [{probe: {port: 80, protocol: TCP}, default: maybe}]}]",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("steps[0].expect[0].default"), "{e}");
        let e = parse(
            "name: t\nsteps: [{expect: [{probe: {port: 80, protocol: ICMP}, default: allow}]}]",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("steps[0].expect[0].probe.protocol"), "{e}");
        let e = parse("name: t\nsteps: [{expect: [{probe: {port: 80}, default: allow, except: [\"x/a y/b\"]}]}]")
            .unwrap_err()
        .to_string();
        assert!(e.starts_with("steps[0].expect[0].except[0]"), "{e}");
        let e = parse("name: t\nsteps: [{expekt: []}]")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("steps[0]"), "{e}");
        let e = parse(
            "name: t\nsteps: [{do: [{apply: {apiVersion: networking.k8s.io/v1, kind: Ingress, metadata: {name: a}}}], expect: []}]",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("steps[0].do[0].apply") && e.contains("not supported"),
            "{e}"
        );
        // an admin policy the API would refuse names its field
        let e = parse(
            "name: t\nsteps: [{do: [{apply: {apiVersion: policy.networking.k8s.io/v1alpha1, kind: AdminNetworkPolicy, metadata: {name: a}}}], expect: []}]",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "steps[0].do[0].apply: rejected: AdminNetworkPolicy a: spec: Required value"
            ),
            "{e}"
        );
    }

    #[test]
    fn except_entries_take_both_spellings() {
        let s = parse(
            "name: t\nsteps: [{expect: [{probe: {port: 80}, default: deny, except: [\"x/a -> y/*\", \"* -> ext: allow\", {x/b -> z/c: deny}]}]}]",
        )
        .unwrap();
        let e = &s.steps[0].probes[0].except;
        assert_eq!(e[0].verdict, None);
        assert_eq!(e[1].verdict, Some(true));
        assert_eq!(e[1].to, Pattern::External("ext".into()));
        assert_eq!(e[2].verdict, Some(false));
        assert_eq!(e[2].from, Pattern::Pod(PodKey::new("x", "b")));
        // the colon of a Service target is no verdict's
        let s = parse(
            "name: t\nsteps: [{expect: [{probe: {port: 80}, default: deny, only: [\"* -> svc:x/web\"], except: [\"x/a -> svc:x/web\", \"x/b -> svc:x/web: deny\"]}]}]",
        )
        .unwrap();
        let e = &s.steps[0].probes[0].except;
        assert_eq!(e[0].to, Pattern::Service(PodKey::new("x", "web")));
        assert_eq!((e[0].verdict, e[1].verdict), (None, Some(false)));
    }
}
