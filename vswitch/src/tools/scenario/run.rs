//! Running a scenario: the runner keeps the model of the cluster (the
//! "world"), applies each step's actions to it and to a [`Prober`], works out
//! the expected verdict of every probed pair, asks the prober, and reports
//! every pair that differs. Modes differ only in their prober.

use std::fmt::Write as _;
use std::net::IpAddr;

use policy::{
    Backend, Change, Cluster, ContainerPort, Namespace, Pod, PodKey, Protocol, Service,
    ServicePort, TargetPort,
};

use super::format::{Action, Except, External, Family, Pattern, Probe, ProbePort, Scenario};

/// Why a prober could not make or change the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ProberError {
    /// The policy engine refused the cluster or the change.
    #[error(transparent)]
    Policy(Box<policy::ModelError>),
    /// Making or changing the network namespaces failed.
    #[error(transparent)]
    Netns(Box<super::netns::NetnsError>),
}

impl From<policy::ModelError> for ProberError {
    fn from(e: policy::ModelError) -> Self {
        ProberError::Policy(Box::new(e))
    }
}

impl From<super::netns::NetnsError> for ProberError {
    fn from(e: super::netns::NetnsError) -> Self {
        ProberError::Netns(Box::new(e))
    }
}

/// What the model of the cluster refuses, as the API server would.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("pod {0} does not exist")]
    NoPod(PodKey),
    #[error("namespace {0} does not exist")]
    NoNamespace(String),
    #[error("NetworkPolicy {0} does not exist")]
    NoPolicy(String),
    #[error(
        "no ClusterNetworkPolicy, AdminNetworkPolicy or BaselineAdminNetworkPolicy is named {0}"
    )]
    NoAdminPolicy(String),
    #[error("{0} names policies of more than one kind: {1}")]
    AmbiguousAdminPolicy(String, String),
    #[error("Service {0} does not exist")]
    NoService(PodKey),
    #[error("pod {0} already exists")]
    PodExists(PodKey),
    #[error("namespace {0} already exists")]
    NamespaceExists(String),
    #[error("pod {pod}: address {ip} is already used by {owner}")]
    AddressInUse {
        pod: PodKey,
        ip: IpAddr,
        owner: String,
    },
    #[error("namespace {0} is not in cluster.namespaces")]
    NamespaceNotListed(String),
    #[error("pod {0} is listed twice")]
    PodListedTwice(PodKey),
    /// The prober could not make the change.
    #[error(transparent)]
    Prober(#[from] ProberError),
}

/// Why a scenario stopped before its end (its probes so far are reported).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cluster.namespaces: namespace {0} is listed twice")]
    NamespaceListedTwice(String),
    #[error("cluster.externals: {0} is listed twice")]
    ExternalListedTwice(String),
    /// A field of the cluster or an action of a step (its path) that the
    /// model or the prober refused.
    #[error("{field}: {source}")]
    At { field: String, source: WorldError },
    #[error("starting the cluster: {0}")]
    Start(ProberError),
    #[error("{field}: {pattern} names no pod, external or Service of the cluster at this step")]
    NoMatch { field: String, pattern: String },
    #[error(
        "this prober cannot reach Services (it has no service proxy); run Services in engine, dataplane or netns mode"
    )]
    NoServiceProxy,
}

/// Something that can be probed: a pod or an external host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `ns/name` for pods, the name for externals.
    pub name: String,
    pub pod: Option<PodKey>,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<ContainerPort>,
    /// A Service (`svc:ns/name`; its cluster IPs and its ports by name).
    pub service: Option<PodKey>,
}

impl Endpoint {
    pub fn address(&self, family: Family) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv6() == (family == Family::Ipv6))
    }

    fn matches(&self, p: &Pattern) -> bool {
        match p {
            Pattern::Service(k) => self.service.as_ref() == Some(k),
            _ if self.service.is_some() => false,
            Pattern::Any => true,
            Pattern::Namespace(ns) => self.pod.as_ref().is_some_and(|k| &k.namespace == ns),
            Pattern::Pod(k) => self.pod.as_ref() == Some(k),
            Pattern::External(n) => self.pod.is_none() && &self.name == n,
        }
    }
}

/// Every pod and external host of a cluster, as probes address them.
pub fn endpoints(cluster: &Cluster, externals: &[External]) -> Vec<Endpoint> {
    let mut v: Vec<Endpoint> = cluster
        .pods
        .values()
        .map(|p| Endpoint {
            name: p.key.to_string(),
            pod: Some(p.key.clone()),
            ips: p.ips.clone(),
            ports: p.ports.clone(),
            service: None,
        })
        .collect();
    v.extend(externals.iter().map(|e| {
        Endpoint {
            name: e.name.clone(),
            pod: None,
            ips: e
                .ipv4
                .map(IpAddr::V4)
                .into_iter()
                .chain(e.ipv6.map(IpAddr::V6))
                .collect(),
            ports: e.ports.clone(),
            service: None,
        }
    }));
    v
}

/// A Service as probers see it: cluster IPs, and each port with its
/// endpoints (both families).
#[derive(Debug, Clone)]
pub struct ServiceView {
    pub key: PodKey,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub local_only: bool,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<(ServicePort, Vec<Backend>)>,
}

/// The Services as the switch translates them (`--service-proxy switch`):
/// every cluster IP and port, to the endpoints of its family, all ready;
/// `local` says which are on the switch's node.
pub fn frontends(
    views: &[ServiceView],
    local: impl Fn(&Backend) -> bool,
) -> vswitch_datapath::services::ServiceTable {
    use vswitch_datapath::services::{Endpoint, Frontend, FrontendKey, ServiceTable};
    let mut table = ServiceTable::new();
    for v in views {
        for ip in &v.cluster_ips {
            for (sp, backends) in &v.ports {
                let endpoints = backends
                    .iter()
                    .filter(|b| b.ip.is_ipv6() == ip.is_ipv6())
                    .map(|b| Endpoint {
                        ip: b.ip,
                        port: b.port,
                        ready: true,
                        serving: true,
                        terminating: false,
                        local: local(b),
                    })
                    .collect();
                let key = FrontendKey {
                    ip: *ip,
                    proto: sp.protocol.number(),
                    port: sp.port,
                };
                let fe = Frontend {
                    service: v.key.to_string(),
                    port_name: sp.name.clone(),
                    endpoints,
                    affinity_ms: v.affinity_timeout.map(|s| s as u64 * 1000),
                    local_only: v.local_only,
                };
                table.insert(key, fe);
            }
        }
    }
    table
}

/// One connection attempt to make.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    pub from: &'a Endpoint,
    pub to: &'a Endpoint,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    /// To a cluster IP: the endpoints the Service translates this port to
    /// (of `dst`'s family; empty: none, the connection is refused).
    pub backends: Option<Vec<Backend>>,
}

/// What a prober saw of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// `allowed`, and what decided (the rule, or why it failed).
    Verdict { allowed: bool, detail: String },
    /// The attempt could not be made here (e.g. no SCTP in the kernel).
    Skipped(String),
}

/// A way of running probes: the policy engine, the datapath, real pods.
pub trait Prober {
    /// Creates the starting cluster (namespaces, pods and externals).
    fn start(&mut self, cluster: &Cluster, externals: &[External]) -> Result<(), ProberError>;
    /// Applies one change of the cluster.
    fn change(&mut self, change: &Change) -> Result<(), ProberError>;
    /// Makes the attempts (possibly concurrently) and reports each, in order.
    fn probe(&mut self, attempts: &[Attempt<'_>]) -> Vec<Observed>;
    /// The datapath's counters, for probers that run one.
    fn counters(&mut self) -> Option<vswitch_datapath::counters::Counters> {
        None
    }
    /// Whether attempts to cluster IPs reach the Services' endpoints here.
    fn proxies_services(&self) -> bool {
        false
    }
    /// The Services and their endpoints now (after every action that may
    /// change them).
    fn services(&mut self, _views: &[ServiceView]) -> Result<(), ProberError> {
        Ok(())
    }
}

/// What a change of the cluster means for the pods a prober has attached
/// (each with the addresses it was attached with): pods to detach, then a
/// pod to attach. A pod whose addresses changed is both.
pub fn port_changes<'a, V>(
    change: &'a Change,
    attached: &std::collections::BTreeMap<PodKey, V>,
    ips: impl Fn(&V) -> &[IpAddr],
) -> (Vec<PodKey>, Option<&'a Pod>) {
    match change {
        Change::UpsertPod(p) => match attached.get(&p.key) {
            Some(v) if ips(v) == p.ips.as_slice() => (vec![], None),
            Some(_) => (vec![p.key.clone()], Some(p)),
            None => (vec![], Some(p)),
        },
        Change::DeletePod(k) => (
            attached
                .contains_key(k)
                .then(|| k.clone())
                .into_iter()
                .collect(),
            None,
        ),
        Change::DeleteNamespace(ns) => (
            attached
                .keys()
                .filter(|k| &k.namespace == ns)
                .cloned()
                .collect(),
            None,
        ),
        _ => (vec![], None),
    }
}

/// The runner's model of the cluster, to resolve names and compute changes.
struct World {
    cluster: Cluster,
    externals: Vec<External>,
    services: std::collections::BTreeMap<PodKey, Service>,
    /// `--via service`: every pod's own Service, by the pod.
    via: Option<Via>,
}

/// `--via service`: a Service `s-<ns>-<pod>` per pod whose only endpoint is
/// the pod, with a port for every port and protocol the file's probes use.
struct Via {
    /// Each pod's number (its cluster IPs), kept for the file's run.
    index: std::collections::BTreeMap<PodKey, u32>,
    /// The probes' ports and protocols.
    probes: Vec<(ProbePort, Protocol)>,
}

impl Via {
    fn service(&mut self, pod: &Pod) -> Service {
        let n = self.index.len() as u32 + 1;
        let i = *self.index.entry(pod.key.clone()).or_insert(n);
        let v4 = std::net::Ipv4Addr::new(10, 96, (i >> 8) as u8, i as u8);
        let v6 = std::net::Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, i as u16);
        let mut ports: Vec<ServicePort> = Vec::new();
        for (p, protocol) in &self.probes {
            let number = match p {
                ProbePort::Number(n) => Some(*n),
                ProbePort::Named(name) => {
                    policy::model::resolve_named_port(&pod.ports, name, *protocol)
                }
            };
            if let Some(port) = number
                && !ports
                    .iter()
                    .any(|q| q.port == port && q.protocol == *protocol)
            {
                ports.push(ServicePort {
                    name: Some(format!("p{}", ports.len())),
                    port,
                    protocol: *protocol,
                    target: TargetPort::Number(port),
                });
            }
        }
        Service {
            key: PodKey::new(
                pod.key.namespace.clone(),
                format!("s-{}-{}", pod.key.namespace, pod.key.name),
            ),
            cluster_ips: vec![IpAddr::V4(v4), IpAddr::V6(v6)],
            selector: None,
            ports,
            affinity_timeout: None,
            local_only: false,
            proxy_name: None,
        }
    }
}

impl World {
    fn endpoints(&self) -> Vec<Endpoint> {
        let mut v = endpoints(&self.cluster, &self.externals);
        v.extend(self.services.values().map(|s| {
            Endpoint {
                name: format!("svc:{}", s.key),
                pod: None,
                ips: s.cluster_ips.clone(),
                ports: s
                    .ports
                    .iter()
                    .map(|p| ContainerPort {
                        name: p.name.clone(),
                        port: p.port,
                        protocol: p.protocol,
                    })
                    .collect(),
                service: Some(s.key.clone()),
            }
        }));
        v
    }

    /// Every Service with its endpoints now, the pods' own (`--via
    /// service`) included.
    fn views(&mut self) -> Vec<ServiceView> {
        let view = |s: &Service, pods: &mut dyn Iterator<Item = &Pod>| {
            let pods: Vec<&Pod> = pods.collect();
            ServiceView {
                key: s.key.clone(),
                affinity_timeout: s.affinity_timeout,
                local_only: s.local_only,
                cluster_ips: s.cluster_ips.clone(),
                ports: s
                    .ports
                    .iter()
                    .map(|p| (p.clone(), s.backends(p, pods.iter().copied())))
                    .collect(),
            }
        };
        let mut out: Vec<ServiceView> = self
            .services
            .values()
            .map(|s| view(s, &mut self.cluster.pods.values()))
            .collect();
        if let Some(via) = &mut self.via {
            for pod in self.cluster.pods.values() {
                let mut s = via.service(pod);
                // its only endpoint is the pod, whatever its labels
                s.selector = Some(pod.labels.clone());
                out.push(view(&s, &mut std::iter::once(pod)));
            }
        }
        out
    }

    /// The endpoints an attempt to `to` on `port`/`protocol` reaches, of
    /// `dst`'s family: `None` for a direct attempt.
    fn backends(
        &mut self,
        to: &Endpoint,
        port: u16,
        protocol: Protocol,
        dst: IpAddr,
    ) -> Option<Vec<Backend>> {
        let of_family = |b: &Backend| b.ip.is_ipv6() == dst.is_ipv6();
        if let Some(k) = &to.service {
            let s = self.services.get(k)?;
            return Some(match s.port_by_number(port, protocol) {
                Some(p) => s
                    .backends(p, self.cluster.pods.values())
                    .into_iter()
                    .filter(of_family)
                    .collect(),
                None => Vec::new(),
            });
        }
        self.via.as_ref()?;
        let pod = self.cluster.pods.get(to.pod.as_ref()?)?;
        Some(vec![Backend {
            pod: pod.key.clone(),
            ip: dst,
            port,
        }])
    }

    /// The cluster IP a direct attempt to a pod takes with `--via service`.
    fn via_address(&mut self, to: &Endpoint, family_v6: bool) -> Option<IpAddr> {
        let pod = self.cluster.pods.get(to.pod.as_ref()?)?.clone();
        let s = self.via.as_mut()?.service(&pod);
        s.cluster_ip(family_v6)
    }

    /// Turns an action into the change it makes, checking it against the
    /// current state as the API server would.
    fn change_for(&self, action: &Action) -> Result<Change, WorldError> {
        let pod = |k: &PodKey| {
            self.cluster
                .pods
                .get(k)
                .ok_or_else(|| WorldError::NoPod(k.clone()))
        };
        let ns = |n: &str| {
            self.cluster
                .namespaces
                .get(n)
                .ok_or_else(|| WorldError::NoNamespace(n.to_string()))
        };
        Ok(match action {
            Action::Apply(p) => {
                ns(&p.key.namespace)?;
                Change::UpsertPolicy(p.clone())
            }
            Action::DeletePolicy(k) => {
                if !self.cluster.policies.contains_key(k) {
                    return Err(WorldError::NoPolicy(k.to_string()));
                }
                Change::DeletePolicy(k.clone())
            }
            Action::SetPodLabels(k, labels) => {
                let mut p = pod(k)?.clone();
                p.labels = labels.clone();
                Change::UpsertPod(p)
            }
            Action::SetNamespaceLabels(n, labels) => {
                ns(n)?;
                Change::UpsertNamespace(Namespace::new(n.clone(), labels.clone()))
            }
            Action::CreatePod(p) => {
                ns(&p.key.namespace)?;
                if self.cluster.pods.contains_key(&p.key) {
                    return Err(WorldError::PodExists(p.key.clone()));
                }
                self.check_addresses(p)?;
                Change::UpsertPod(p.clone())
            }
            Action::DeletePod(k) => {
                pod(k)?;
                Change::DeletePod(k.clone())
            }
            Action::CreateNamespace(n) => {
                if self.cluster.namespaces.contains_key(&n.name) {
                    return Err(WorldError::NamespaceExists(n.name.clone()));
                }
                Change::UpsertNamespace(n.clone())
            }
            Action::ApplyAdmin(p) => Change::UpsertAdminPolicy(p.clone()),
            Action::DeleteAdminPolicy(name) => {
                let keys: Vec<&policy::AdminKey> = self
                    .cluster
                    .admin_policies
                    .keys()
                    .filter(|k| &k.name == name)
                    .collect();
                match keys.as_slice() {
                    [] => return Err(WorldError::NoAdminPolicy(name.clone())),
                    [k] => Change::DeleteAdminPolicy((*k).clone()),
                    many => {
                        let kinds: Vec<&str> = many.iter().map(|k| k.kind.as_str()).collect();
                        return Err(WorldError::AmbiguousAdminPolicy(
                            name.clone(),
                            kinds.join(", "),
                        ));
                    }
                }
            }
            Action::ApplyService(_) | Action::DeleteService(_) => {
                unreachable!("Services are no change of the policy model")
            }
        })
    }

    fn check_addresses(&self, pod: &Pod) -> Result<(), WorldError> {
        for ip in &pod.ips {
            let by_pod = self
                .cluster
                .pods
                .values()
                .find(|p| p.key != pod.key && p.ips.contains(ip));
            let by_ext = self.externals.iter().find(|e| {
                e.ipv4.map(IpAddr::V4) == Some(*ip) || e.ipv6.map(IpAddr::V6) == Some(*ip)
            });
            if let Some(owner) = by_pod
                .map(|p| p.key.to_string())
                .or(by_ext.map(|e| e.name.clone()))
            {
                return Err(WorldError::AddressInUse {
                    pod: pod.key.clone(),
                    ip: *ip,
                    owner,
                });
            }
        }
        Ok(())
    }
}

/// One pair whose observed verdict differs from the expected one.
#[derive(Debug, Clone)]
pub struct Mismatch {
    pub from: String,
    pub to: String,
    pub expected: bool,
    pub observed: bool,
    pub detail: String,
}

/// The outcome of one probe of one step.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub step: usize,
    pub probe: usize,
    pub label: String,
    pub pairs: usize,
    pub skipped: Vec<(String, String, String)>,
    pub mismatches: Vec<Mismatch>,
}

/// The outcome of one file.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub name: String,
    pub error: Option<String>,
    pub probes: Vec<ProbeReport>,
}

impl FileReport {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.probes.iter().all(|p| p.mismatches.is_empty())
    }

    pub fn pairs(&self) -> usize {
        self.probes.iter().map(|p| p.pairs).sum()
    }

    pub fn skipped(&self) -> usize {
        self.probes.iter().map(|p| p.skipped.len()).sum()
    }

    /// The human-readable report: PASS/FAIL line, then every difference.
    pub fn render(&self, file: &str) -> String {
        let mut out = String::new();
        // a file that cannot be run at all: one line, the field and what is wrong
        if let (Some(e), true) = (&self.error, self.probes.is_empty()) {
            let _ = writeln!(out, "FAIL {file}: {e}");
            return out;
        }
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let skipped = match self.skipped() {
            0 => String::new(),
            n => format!(", {n} skipped"),
        };
        let _ = writeln!(
            out,
            "{verdict} {file} ({}: {} pairs probed{skipped})",
            self.name,
            self.pairs()
        );
        if let Some(e) = &self.error {
            let _ = writeln!(out, "  error: {e}");
        }
        for p in &self.probes {
            if !p.mismatches.is_empty() {
                let _ = writeln!(
                    out,
                    "  step {} probe {} ({}): {} of {} pairs differ",
                    p.step + 1,
                    p.probe + 1,
                    p.label,
                    p.mismatches.len(),
                    p.pairs
                );
                for m in &p.mismatches {
                    let v = |b: bool| if b { "allow" } else { "deny" };
                    let _ = writeln!(
                        out,
                        "    {} -> {}  {}  expected {}, observed {}: {}",
                        m.from,
                        m.to,
                        p.label,
                        v(m.expected),
                        v(m.observed),
                        m.detail
                    );
                }
            }
            let mut reasons: Vec<&str> = p.skipped.iter().map(|(_, _, r)| r.as_str()).collect();
            reasons.dedup();
            for r in reasons {
                let n = p.skipped.iter().filter(|(_, _, x)| x == r).count();
                let _ = writeln!(
                    out,
                    "  step {} probe {} ({}): {n} pairs skipped: {r}",
                    p.step + 1,
                    p.probe + 1,
                    p.label
                );
            }
        }
        out
    }
}

fn check_names(patterns: &[(&Pattern, &str)], endpoints: &[Endpoint]) -> Result<(), RunError> {
    for (p, field) in patterns {
        if !endpoints.iter().any(|e| e.matches(p)) {
            return Err(RunError::NoMatch {
                field: field.to_string(),
                pattern: p.to_string(),
            });
        }
    }
    Ok(())
}

fn expected(probe: &Probe, from: &Endpoint, to: &Endpoint) -> bool {
    let mut v = probe.default;
    for Except {
        from: f,
        to: t,
        verdict,
        ..
    } in &probe.except
    {
        if from.matches(f) && to.matches(t) {
            v = verdict.unwrap_or(!probe.default);
        }
    }
    v
}

/// Resolves a probe's port on the target: a number, or the target's port of
/// that name (same protocol first).
fn target_port(probe: &Probe, to: &Endpoint) -> Option<u16> {
    match &probe.port {
        ProbePort::Number(n) => Some(*n),
        ProbePort::Named(name) => {
            let named = |p: &&ContainerPort| p.name.as_deref() == Some(name.as_str());
            to.ports
                .iter()
                .filter(named)
                .find(|p| p.protocol == probe.protocol)
                .or_else(|| to.ports.iter().find(named))
                .map(|p| p.port)
        }
    }
}

/// Runs one parsed scenario through a prober.
pub fn run(scenario: &Scenario, prober: &mut dyn Prober) -> FileReport {
    run_via(scenario, prober, false)
}

/// [`run`], with every pod reached through a Service of its own when
/// `via_service` (the runner's `--via service`).
pub fn run_via(scenario: &Scenario, prober: &mut dyn Prober, via_service: bool) -> FileReport {
    let mut report = FileReport {
        name: scenario.name.clone(),
        error: None,
        probes: Vec::new(),
    };
    if let Err(e) = run_steps(scenario, prober, &mut report, via_service) {
        report.error = Some(e.to_string());
    }
    report
}

fn run_steps(
    scenario: &Scenario,
    prober: &mut dyn Prober,
    report: &mut FileReport,
    via_service: bool,
) -> Result<(), RunError> {
    let has_services = scenario.steps.iter().any(|s| {
        s.actions
            .iter()
            .any(|a| matches!(a, Action::ApplyService(_) | Action::DeleteService(_)))
    });
    if (has_services || via_service) && !prober.proxies_services() {
        return Err(RunError::NoServiceProxy);
    }
    let via = via_service.then(|| Via {
        index: Default::default(),
        probes: scenario
            .steps
            .iter()
            .flat_map(|s| &s.probes)
            .map(|p| (p.port.clone(), p.protocol))
            .collect(),
    });
    let mut world = World {
        cluster: Cluster {
            nodes: scenario
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.clone()))
                .collect(),
            ..Cluster::default()
        },
        externals: scenario.externals.clone(),
        services: Default::default(),
        via,
    };
    for ns in &scenario.namespaces {
        if world
            .cluster
            .namespaces
            .insert(ns.name.clone(), ns.clone())
            .is_some()
        {
            return Err(RunError::NamespaceListedTwice(ns.name.clone()));
        }
    }
    for (i, pod) in scenario.pods.iter().enumerate() {
        let at = |source| RunError::At {
            field: format!("cluster.pods[{i}]"),
            source,
        };
        if !world.cluster.namespaces.contains_key(&pod.key.namespace) {
            return Err(at(WorldError::NamespaceNotListed(
                pod.key.namespace.clone(),
            )));
        }
        if world.cluster.pods.contains_key(&pod.key) {
            return Err(at(WorldError::PodListedTwice(pod.key.clone())));
        }
        world.check_addresses(pod).map_err(at)?;
        world.cluster.pods.insert(pod.key.clone(), pod.clone());
    }
    let mut names = std::collections::BTreeSet::new();
    for e in &world.externals {
        if !names.insert(e.name.clone()) {
            return Err(RunError::ExternalListedTwice(e.name.clone()));
        }
    }
    prober
        .start(&world.cluster, &world.externals)
        .map_err(RunError::Start)?;
    if world.via.is_some() {
        let views = world.views();
        prober.services(&views).map_err(RunError::Start)?;
    }

    for (si, step) in scenario.steps.iter().enumerate() {
        for (ai, action) in step.actions.iter().enumerate() {
            let at = |source| RunError::At {
                field: format!("steps[{si}].do[{ai}]"),
                source,
            };
            match action {
                Action::ApplyService(s) => {
                    if !world.cluster.namespaces.contains_key(&s.key.namespace) {
                        return Err(at(WorldError::NoNamespace(s.key.namespace.clone())));
                    }
                    world.services.insert(s.key.clone(), s.clone());
                }
                Action::DeleteService(k) => {
                    if world.services.remove(k).is_none() {
                        return Err(at(WorldError::NoService(k.clone())));
                    }
                }
                _ => {
                    let change = world.change_for(action).map_err(at)?;
                    prober
                        .change(&change)
                        .map_err(|e| at(WorldError::Prober(e)))?;
                    world.cluster.apply(&change);
                }
            }
            // endpoints follow every change, as the EndpointSlice
            // controller's do
            if !world.services.is_empty() || world.via.is_some() || has_services {
                let views = world.views();
                prober
                    .services(&views)
                    .map_err(|e| at(WorldError::Prober(e)))?;
            }
        }
        let endpoints = world.endpoints();
        for (pi, probe) in step.probes.iter().enumerate() {
            let mut patterns: Vec<(&Pattern, &str)> = Vec::new();
            for e in &probe.except {
                patterns.push((&e.from, &e.field));
                patterns.push((&e.to, &e.field));
            }
            for (a, b, f) in probe.only.iter().flatten() {
                patterns.push((a, f));
                patterns.push((b, f));
            }
            check_names(&patterns, &endpoints)?;
            report
                .probes
                .push(run_probe(si, pi, probe, &endpoints, prober, &mut world));
        }
    }
    Ok(())
}

fn run_probe(
    si: usize,
    pi: usize,
    probe: &Probe,
    endpoints: &[Endpoint],
    prober: &mut dyn Prober,
    world: &mut World,
) -> ProbeReport {
    let label = format!("{}/{} {}", probe.port, probe.protocol, probe.family);
    let mut out = ProbeReport {
        step: si,
        probe: pi,
        label,
        pairs: 0,
        skipped: Vec::new(),
        mismatches: Vec::new(),
    };
    // (from, to, expected, attempt or the reason none can be made)
    let mut planned: Vec<(&Endpoint, &Endpoint, bool, Result<Attempt<'_>, String>)> = Vec::new();
    for from in endpoints.iter().filter(|e| e.service.is_none()) {
        for to in endpoints {
            if from.name == to.name {
                continue;
            }
            // Services are targets only where `only:` names them
            if to.service.is_some() && probe.only.is_none() {
                continue;
            }
            let listed = |only: &Vec<(Pattern, Pattern, String)>| {
                only.iter()
                    .any(|(a, b, _)| from.matches(a) && to.matches(b))
            };
            if probe.only.as_ref().is_some_and(|only| !listed(only)) {
                continue;
            }
            let want = expected(probe, from, to);
            let attempt = match (
                from.address(probe.family),
                to.address(probe.family),
                target_port(probe, to),
            ) {
                (None, _, _) => Err(format!("{} has no {} address", from.name, probe.family)),
                (_, None, _) => Err(format!("{} has no {} address", to.name, probe.family)),
                (_, _, None) => Err(format!("{} has no port named {}", to.name, probe.port)),
                (Some(src), Some(dst), Some(port)) => {
                    let backends = world.backends(to, port, probe.protocol, dst);
                    let dst = match (&to.service, &backends) {
                        (None, Some(_)) => world
                            .via_address(to, probe.family == Family::Ipv6)
                            .unwrap_or(dst),
                        _ => dst,
                    };
                    Ok(Attempt {
                        from,
                        to,
                        src,
                        dst,
                        protocol: probe.protocol,
                        port,
                        backends,
                    })
                }
            };
            planned.push((from, to, want, attempt));
        }
    }
    let attempts: Vec<Attempt<'_>> = planned
        .iter()
        .filter_map(|(_, _, _, a)| a.as_ref().ok().cloned())
        .collect();
    let mut observed = prober.probe(&attempts).into_iter();
    for (from, to, want, attempt) in &planned {
        let seen = match attempt {
            // No connection can be attempted: the pair is a deny.
            Err(why) => Observed::Verdict {
                allowed: false,
                detail: why.clone(),
            },
            Ok(_) => observed
                .next()
                .unwrap_or(Observed::Skipped("the prober returned no result".into())),
        };
        match seen {
            Observed::Skipped(why) => out.skipped.push((from.name.clone(), to.name.clone(), why)),
            Observed::Verdict { allowed, detail } => {
                out.pairs += 1;
                if allowed != *want {
                    out.mismatches.push(Mismatch {
                        from: from.name.clone(),
                        to: to.name.clone(),
                        expected: *want,
                        observed: allowed,
                        detail,
                    });
                }
            }
        }
    }
    out
}
