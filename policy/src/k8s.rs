//! Conversion from the standard Kubernetes API types (k8s-openapi) into the
//! model, validating as the API server does (`pkg/apis/networking/validation`).
//!
//! Every error names the object and the field, so that one bad object can be
//! rejected while every other object keeps working.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::labels::{Labels, Selector};
use crate::model::{ContainerPort, Namespace, Node, Pod, PodKey, Protocol};
use crate::netpol::{IpBlock, NamespaceScope, Peer, Policy, PolicyKey, PortMatch, PortRule, Rule};

/// An object the API server would reject, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// `Kind namespace/name`.
    pub object: String,
    /// The field path, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

impl std::error::Error for ValidationError {}

struct Ctx {
    object: String,
}

impl Ctx {
    /// A port's `protocol` (TCP when omitted), at `{field}.protocol`.
    fn protocol(&self, field: &str, p: Option<&str>) -> Result<Protocol, ValidationError> {
        match p.unwrap_or("TCP") {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(self.err(
                format!("{field}.protocol"),
                format!("{other:?}: must be TCP, UDP or SCTP"),
            )),
        }
    }

    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ValidationError {
        ValidationError {
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The namespace an object lives in (`default` when metadata omits it).
fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| "default".to_string())
}

fn name_of(
    kind: &str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<String, ValidationError> {
    match meta.name.as_deref() {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => Err(ValidationError {
            object: format!("{kind} (unnamed)"),
            field: "metadata.name".into(),
            message: "name is required".into(),
        }),
    }
}

fn selector(ctx: &Ctx, field: &str, s: &LabelSelector) -> Result<Selector, ValidationError> {
    let labels: Labels = s.match_labels.clone().unwrap_or_default();
    let exprs = s
        .match_expressions
        .iter()
        .flatten()
        .map(|r| {
            (
                r.key.clone(),
                r.operator.clone(),
                r.values.clone().unwrap_or_default(),
            )
        })
        .collect();
    Selector::build(field, labels, exprs).map_err(|(f, m)| ctx.err(f, m))
}

/// A label selector validated as the API server does, errors naming
/// `object` and `field`.
pub(crate) fn label_selector(
    object: &str,
    field: &str,
    s: &LabelSelector,
) -> Result<Selector, ValidationError> {
    let ctx = Ctx {
        object: object.to_string(),
    };
    selector(&ctx, field, s)
}

/// Converts and validates a NetworkPolicy.
pub fn policy_from_k8s(np: &net::NetworkPolicy) -> Result<Policy, ValidationError> {
    let name = name_of("NetworkPolicy", &np.metadata)?;
    let namespace = namespace_of(&np.metadata);
    let key = PolicyKey::new(namespace.clone(), name);
    let ctx = Ctx {
        object: format!("NetworkPolicy {key}"),
    };
    let spec = np
        .spec
        .as_ref()
        .ok_or_else(|| ctx.err("spec", "spec is required"))?;
    let pod_selector = match &spec.pod_selector {
        Some(s) => selector(&ctx, "spec.podSelector", s)?,
        None => Selector::everything(),
    };

    // policyTypes: explicit, or Ingress plus Egress when egress rules exist.
    let (wants_ingress, wants_egress) = match &spec.policy_types {
        Some(types) if !types.is_empty() => {
            if types.len() > 2 {
                return Err(ctx.err(
                    "spec.policyTypes",
                    "may not specify more than two policyTypes",
                ));
            }
            let mut seen = BTreeSet::new();
            for (i, t) in types.iter().enumerate() {
                if t != "Ingress" && t != "Egress" {
                    return Err(ctx.err(
                        format!("spec.policyTypes[{i}]"),
                        format!(
                            "unsupported value {t:?}: supported values are \"Ingress\", \"Egress\""
                        ),
                    ));
                }
                if !seen.insert(t.as_str()) {
                    return Err(ctx.err(
                        format!("spec.policyTypes[{i}]"),
                        format!("duplicate value {t:?}"),
                    ));
                }
            }
            (seen.contains("Ingress"), seen.contains("Egress"))
        }
        // The API server's defaulting: Ingress, plus Egress when the egress
        // list is non-empty (`egress: []` does not make it an egress policy).
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    };

    // Rules are validated even when policyTypes leaves their direction out,
    // as the API server does; they then have no effect.
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let at = format!("spec.ingress[{i}]");
        ingress.push(rule(
            &ctx,
            &namespace,
            &at,
            "from",
            r.from.as_deref(),
            r.ports.as_deref(),
        )?);
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let at = format!("spec.egress[{i}]");
        egress.push(rule(
            &ctx,
            &namespace,
            &at,
            "to",
            r.to.as_deref(),
            r.ports.as_deref(),
        )?);
    }
    Ok(Policy {
        key,
        pod_selector,
        ingress: wants_ingress.then_some(ingress),
        egress: wants_egress.then_some(egress),
    })
}

fn rule(
    ctx: &Ctx,
    namespace: &str,
    at: &str,
    peers_field: &str,
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
) -> Result<Rule, ValidationError> {
    let mut out = Rule {
        peers: Vec::new(),
        ports: Vec::new(),
    };
    for (i, p) in ports.into_iter().flatten().enumerate() {
        out.ports.push(port(ctx, &format!("{at}.ports[{i}]"), p)?);
    }
    for (i, p) in peers.into_iter().flatten().enumerate() {
        out.peers.push(peer(
            ctx,
            namespace,
            &format!("{at}.{peers_field}[{i}]"),
            p,
        )?);
    }
    Ok(out)
}

fn port(ctx: &Ctx, at: &str, p: &net::NetworkPolicyPort) -> Result<PortRule, ValidationError> {
    let protocol = match p.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(s) => Protocol::parse(s).ok_or_else(|| {
            ctx.err(
                format!("{at}.protocol"),
                format!("unsupported value {s:?}: supported values are \"SCTP\", \"TCP\", \"UDP\""),
            )
        })?,
    };
    let port = match (&p.port, p.end_port) {
        (None, None) => PortMatch::All,
        (None, Some(_)) => {
            return Err(ctx.err(
                format!("{at}.endPort"),
                "may not be specified when port is not specified",
            ));
        }
        (Some(IntOrString::Int(n)), end) => {
            let lo = valid_port(ctx, &format!("{at}.port"), *n)?;
            let hi = match end {
                None => lo,
                Some(e) => {
                    let hi = valid_port(ctx, &format!("{at}.endPort"), e)?;
                    if hi < lo {
                        return Err(ctx.err(
                            format!("{at}.endPort"),
                            "must be greater than or equal to port",
                        ));
                    }
                    hi
                }
            };
            PortMatch::Range(lo, hi)
        }
        (Some(IntOrString::String(s)), end) => {
            if end.is_some() {
                return Err(ctx.err(
                    format!("{at}.endPort"),
                    "may not be specified when port is non-numeric",
                ));
            }
            // A numeric string is not a port name; the API server's IntOrString
            // keeps it a string, and IANA_SVC_NAME validation rejects it.
            validate_port_name(s).map_err(|m| ctx.err(format!("{at}.port"), m))?;
            PortMatch::Named(s.clone())
        }
    };
    Ok(PortRule { protocol, port })
}

fn valid_port(ctx: &Ctx, field: &str, n: i32) -> Result<u16, ValidationError> {
    if (1..=65535).contains(&n) {
        Ok(n as u16)
    } else {
        Err(ctx.err(
            field,
            format!("must be between 1 and 65535, inclusive (got {n})"),
        ))
    }
}

/// IANA_SVC_NAME: 1-15 characters of a-z, 0-9 and '-', at least one letter,
/// no '-' at either end and no "--".
pub fn validate_port_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid port name {s:?}: must be 1-15 characters of a-z, 0-9 and '-', \
             contain a letter, and not begin, end or repeat '-'"
        ))
    }
}

fn peer(
    ctx: &Ctx,
    namespace: &str,
    at: &str,
    p: &net::NetworkPolicyPeer,
) -> Result<Peer, ValidationError> {
    let has_selector = p.pod_selector.is_some() || p.namespace_selector.is_some();
    match (&p.ip_block, has_selector) {
        (None, false) => Err(ctx.err(at.to_string(), "must specify a peer")),
        (Some(_), true) => Err(ctx.err(at.to_string(), "may not specify more than 1 peer type")),
        (Some(b), false) => ip_block(ctx, &format!("{at}.ipBlock"), b).map(Peer::IpBlock),
        (None, true) => {
            let pods = match &p.pod_selector {
                Some(s) => selector(ctx, &format!("{at}.podSelector"), s)?,
                None => Selector::everything(),
            };
            let namespaces = match &p.namespace_selector {
                Some(s) => {
                    NamespaceScope::Selector(selector(ctx, &format!("{at}.namespaceSelector"), s)?)
                }
                None => NamespaceScope::Own(namespace.to_string()),
            };
            Ok(Peer::Pods { namespaces, pods })
        }
    }
}

fn parse_cidr(ctx: &Ctx, field: &str, s: &str) -> Result<IpNet, ValidationError> {
    s.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
        ctx.err(
            field,
            format!("invalid CIDR {s:?}: must be an address and a prefix length, e.g. 10.0.0.0/16"),
        )
    })
}

fn ip_block(ctx: &Ctx, at: &str, b: &net::IPBlock) -> Result<IpBlock, ValidationError> {
    if b.cidr.is_empty() {
        return Err(ctx.err(format!("{at}.cidr"), "cidr is required"));
    }
    let cidr = parse_cidr(ctx, &format!("{at}.cidr"), &b.cidr)?;
    let mut except = Vec::new();
    for (i, e) in b.except.iter().flatten().enumerate() {
        let field = format!("{at}.except[{i}]");
        let net = parse_cidr(ctx, &field, e)?;
        // The API server requires each except block to be a strict subset.
        let strict_subset = matches!(
            (cidr, net),
            (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
        ) && cidr.contains(&net.network())
            && net.prefix_len() > cidr.prefix_len();
        if !strict_subset {
            return Err(ctx.err(
                field,
                format!("{e} must be a strict subset of the cidr {}", b.cidr),
            ));
        }
        except.push(net);
    }
    except.sort();
    except.dedup();
    Ok(IpBlock { cidr, except })
}

/// Converts a Namespace (its labels gain `kubernetes.io/metadata.name`).
pub fn namespace_from_k8s(ns: &core::Namespace) -> Result<Namespace, ValidationError> {
    let name = name_of("Namespace", &ns.metadata)?;
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    let ctx = Ctx {
        object: format!("Namespace {name}"),
    };
    check_labels(&ctx, &labels)?;
    Ok(Namespace::new(name, labels))
}

fn check_labels(ctx: &Ctx, labels: &Labels) -> Result<(), ValidationError> {
    for (k, v) in labels {
        crate::labels::validate_qualified_name(k).map_err(|m| ctx.err("metadata.labels", m))?;
        crate::labels::validate_label_value(v)
            .map_err(|m| ctx.err(format!("metadata.labels[{k}]"), m))?;
    }
    Ok(())
}

/// Converts a Node: its InternalIP addresses (`status.addresses`) and its
/// pod CIDRs (`spec.podCIDRs`, else `spec.podCIDR`). Either may be empty:
/// a node that has none yet is known but not reachable for pods.
pub fn node_from_k8s(node: &core::Node) -> Result<Node, ValidationError> {
    let name = name_of("Node", &node.metadata)?;
    let ctx = Ctx {
        object: format!("Node {name}"),
    };
    let labels: Labels = node
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    check_labels(&ctx, &labels)?;
    let mut addresses = Vec::new();
    let mut other_addresses = Vec::new();
    let listed = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, a) in listed.into_iter().flatten().enumerate() {
        if a.type_ == "Hostname" || a.type_ == "InternalDNS" || a.type_ == "ExternalDNS" {
            continue;
        }
        let ip: IpAddr = match a.address.parse() {
            Ok(ip) => ip,
            // only the InternalIP is needed (the overlay's); another
            // address that does not parse is left out, not the Node
            Err(_) if a.type_ != "InternalIP" => continue,
            Err(_) => {
                return Err(ctx.err(
                    format!("status.addresses[{i}].address"),
                    format!("invalid IP address {:?}", a.address),
                ));
            }
        };
        let list = if a.type_ == "InternalIP" {
            &mut addresses
        } else {
            &mut other_addresses
        };
        if !list.contains(&ip) {
            list.push(ip);
        }
    }
    let spec = node.spec.as_ref();
    let cidrs: Vec<(String, String)> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("spec.podCIDRs[{i}]"), c.clone()))
            .collect(),
        _ => spec
            .and_then(|s| s.pod_cidr.clone())
            .map(|c| ("spec.podCIDR".to_string(), c))
            .into_iter()
            .collect(),
    };
    let mut pod_cidrs = Vec::new();
    for (field, c) in cidrs {
        let net: ipnet::IpNet = c
            .parse()
            .map_err(|_| ctx.err(field, format!("invalid CIDR {c:?}")))?;
        pod_cidrs.push(net.trunc());
    }
    Ok(Node {
        name,
        labels,
        addresses,
        other_addresses,
        pod_cidrs,
    })
}

/// What a Pod manifest turned into.
pub enum PodConversion {
    Pod(Pod),
    /// A host-network pod: NetworkPolicy does not apply to it (it has the
    /// node's addresses), so it is not part of the model.
    HostNetwork(PodKey),
}

/// Converts a Pod. Addresses come from `status.podIPs` (or `status.podIP`);
/// container ports from every container and init container.
pub fn pod_from_k8s(pod: &core::Pod) -> Result<PodConversion, ValidationError> {
    let name = name_of("Pod", &pod.metadata)?;
    let key = PodKey::new(namespace_of(&pod.metadata), name);
    let ctx = Ctx {
        object: format!("Pod {key}"),
    };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    check_labels(&ctx, &labels)?;
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return Ok(PodConversion::HostNetwork(key));
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    if let Some(status) = &pod.status {
        let listed: Vec<(String, String)> = match &status.pod_ips {
            Some(list) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.clone()))
                .collect(),
            _ => status
                .pod_ip
                .iter()
                .map(|ip| ("status.podIP".to_string(), ip.clone()))
                .collect(),
        };
        for (field, ip) in listed {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| ctx.err(field, format!("invalid IP address {ip:?}")))?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    let mut ports = Vec::new();
    if let Some(spec) = spec {
        let containers = spec.containers.iter().map(|c| ("containers", c)).chain(
            spec.init_containers
                .iter()
                .flatten()
                .map(|c| ("initContainers", c)),
        );
        let mut index = std::collections::BTreeMap::<&str, usize>::new();
        for (list, c) in containers {
            let ci = index.entry(list).or_default();
            for (pi, p) in c.ports.iter().flatten().enumerate() {
                let at = format!("spec.{list}[{ci}].ports[{pi}]");
                let port = valid_port(&ctx, &format!("{at}.containerPort"), p.container_port)?;
                let protocol = match p.protocol.as_deref() {
                    None => Protocol::Tcp,
                    Some(s) => Protocol::parse(s).ok_or_else(|| {
                        ctx.err(format!("{at}.protocol"), format!("unsupported value {s:?}"))
                    })?,
                };
                if let Some(n) = &p.name {
                    validate_port_name(n).map_err(|m| ctx.err(format!("{at}.name"), m))?;
                }
                ports.push(ContainerPort {
                    name: p.name.clone(),
                    port,
                    protocol,
                });
            }
            *ci += 1;
        }
    }
    Ok(PodConversion::Pod(Pod {
        key,
        labels,
        ips,
        ports,
    }))
}

/// Converts and validates a v1 Service of type ClusterIP (the API server's
/// rules for what the model uses: ports, protocols, target ports, cluster
/// IPs, session affinity, internal traffic policy).
pub fn service_from_k8s(svc: &core::Service) -> Result<crate::service::Service, ValidationError> {
    use crate::service::{Service, ServicePort, TargetPort};
    let name = name_of("Service", &svc.metadata)?;
    let key = PodKey::new(namespace_of(&svc.metadata), name);
    let ctx = Ctx {
        object: format!("Service {key}"),
    };
    let spec = svc
        .spec
        .as_ref()
        .ok_or_else(|| ctx.err("spec", "spec is required"))?;
    // NodePort and LoadBalancer Services have a cluster IP too (their node
    // ports and load balancers are kube-proxy's); an ExternalName Service
    // is a DNS name only: nothing to translate.
    let proxy_name = svc
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("service.kubernetes.io/service-proxy-name"))
        .cloned();
    match spec.type_.as_deref() {
        None | Some("ClusterIP" | "NodePort" | "LoadBalancer") => {}
        Some("ExternalName") => {
            return Ok(Service {
                key,
                cluster_ips: Vec::new(),
                selector: None,
                ports: Vec::new(),
                affinity_timeout: None,
                local_only: false,
                proxy_name,
            });
        }
        Some(t) => {
            return Err(ctx.err(
                "spec.type",
                format!("{t:?}: must be ClusterIP, NodePort, LoadBalancer or ExternalName"),
            ));
        }
    }
    let mut texts: Vec<&str> = spec
        .cluster_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if let Some(ip) = spec.cluster_ip.as_deref() {
        match texts.first() {
            None => texts.push(ip),
            Some(first) if *first != ip => {
                return Err(ctx.err(
                    "spec.clusterIPs[0]",
                    format!("{first} must equal spec.clusterIP ({ip})"),
                ));
            }
            _ => {}
        }
    }
    let headless = texts.first() == Some(&"None");
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    if !headless {
        if texts.is_empty() {
            return Err(ctx.err(
                "spec.clusterIP",
                "is required here (no API server allocates one): an address, or None",
            ));
        }
        if texts.len() > 2 {
            return Err(ctx.err("spec.clusterIPs", "at most two addresses, one per family"));
        }
        for (i, t) in texts.iter().enumerate() {
            let ip: IpAddr = t.parse().map_err(|_| {
                ctx.err(
                    format!("spec.clusterIPs[{i}]"),
                    format!("{t:?} is not an IP address"),
                )
            })?;
            if cluster_ips.iter().any(|o| o.is_ipv6() == ip.is_ipv6()) {
                return Err(ctx.err(format!("spec.clusterIPs[{i}]"), "one address per family"));
            }
            cluster_ips.push(ip);
        }
    }
    let ports_in = spec.ports.as_deref().unwrap_or_default();
    if ports_in.is_empty() && !headless {
        return Err(ctx.err("spec.ports", "at least one port is required"));
    }
    let mut ports = Vec::new();
    for (i, p) in ports_in.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        if !(1..=65535).contains(&p.port) {
            return Err(ctx.err(format!("{f}.port"), format!("{} is not 1-65535", p.port)));
        }
        let protocol = ctx.protocol(&f, p.protocol.as_deref())?;
        if let Some(n) = &p.name {
            validate_port_name(n).map_err(|m| ctx.err(format!("{f}.name"), m))?;
        } else if ports_in.len() > 1 {
            return Err(ctx.err(
                format!("{f}.name"),
                "required when a Service has several ports",
            ));
        }
        let target = match &p.target_port {
            None => TargetPort::Number(p.port as u16),
            Some(IntOrString::Int(n)) if (1..=65535).contains(n) => TargetPort::Number(*n as u16),
            Some(IntOrString::Int(n)) => {
                return Err(ctx.err(format!("{f}.targetPort"), format!("{n} is not 1-65535")));
            }
            Some(IntOrString::String(s)) => {
                validate_port_name(s).map_err(|m| ctx.err(format!("{f}.targetPort"), m))?;
                TargetPort::Name(s.clone())
            }
        };
        if ports
            .iter()
            .any(|q: &ServicePort| q.port == p.port as u16 && q.protocol == protocol)
        {
            return Err(ctx.err(f, "duplicate port and protocol"));
        }
        ports.push(ServicePort {
            name: p.name.clone(),
            port: p.port as u16,
            protocol,
            target,
        });
    }
    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800);
            if !(1..=86400).contains(&t) {
                return Err(ctx.err(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{t} is not 1-86400"),
                ));
            }
            Some(t as u32)
        }
        Some(other) => {
            return Err(ctx.err(
                "spec.sessionAffinity",
                format!("{other:?}: must be None or ClientIP"),
            ));
        }
    };
    let local_only = match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            return Err(ctx.err(
                "spec.internalTrafficPolicy",
                format!("{other:?}: must be Cluster or Local"),
            ));
        }
    };
    Ok(Service {
        key,
        cluster_ips,
        selector: spec.selector.clone(),
        ports,
        affinity_timeout,
        local_only,
        proxy_name,
    })
}

/// An EndpointSlice (discovery.k8s.io/v1) into the model. Slices of
/// address type FQDN carry no addresses a proxy can use: they are read as
/// having no endpoints. Errors name the slice and the field.
pub fn endpoint_slice_from_k8s(
    s: &k8s_openapi::api::discovery::v1::EndpointSlice,
) -> Result<crate::endpoint_slice::EndpointSlice, ValidationError> {
    use crate::endpoint_slice::{EndpointSlice, SliceEndpoint, SlicePort};
    let name = name_of("EndpointSlice", &s.metadata)?;
    let key = PodKey::new(namespace_of(&s.metadata), name);
    let ctx = Ctx {
        object: format!("EndpointSlice {key}"),
    };
    let service = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/service-name"))
        .cloned()
        .ok_or_else(|| {
            ctx.err(
                "metadata.labels",
                "kubernetes.io/service-name is required: it names the Service the slice belongs to",
            )
        })?;
    let v6 = match s.address_type.as_str() {
        "IPv4" => false,
        "IPv6" => true,
        "FQDN" => {
            return Ok(EndpointSlice {
                key,
                service,
                ports: Vec::new(),
                endpoints: Vec::new(),
            });
        }
        other => {
            return Err(ctx.err(
                "addressType",
                format!("{other:?}: must be IPv4, IPv6 or FQDN"),
            ));
        }
    };
    let mut ports = Vec::new();
    for (i, p) in s.ports.iter().flatten().enumerate() {
        let f = format!("ports[{i}]");
        let Some(n) = p.port else {
            continue; // all ports: a headless Service's, nothing to translate
        };
        if !(1..=65535).contains(&n) {
            return Err(ctx.err(format!("{f}.port"), format!("{n} is not 1-65535")));
        }
        let protocol = ctx.protocol(&f, p.protocol.as_deref())?;
        ports.push(SlicePort {
            // "" and none both mean the Service's unnamed port
            name: p.name.clone().filter(|n| !n.is_empty()),
            port: n as u16,
            protocol,
        });
    }
    let mut endpoints = Vec::new();
    for (i, e) in s.endpoints.iter().flatten().enumerate() {
        let mut addresses = Vec::new();
        for (j, a) in e.addresses.iter().enumerate() {
            let ip: IpAddr = a.parse().map_err(|_| {
                ctx.err(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("{a:?} is not an IP address"),
                )
            })?;
            if ip.is_ipv6() != v6 {
                return Err(ctx.err(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("{a} is not of the slice's addressType"),
                ));
            }
            addresses.push(ip);
        }
        let c = e.conditions.as_ref();
        endpoints.push(SliceEndpoint {
            addresses,
            ready: c.and_then(|c| c.ready).unwrap_or(true),
            serving: c.and_then(|c| c.serving).unwrap_or(true),
            terminating: c.and_then(|c| c.terminating).unwrap_or(false),
            node: e.node_name.clone(),
        });
    }
    Ok(EndpointSlice {
        key,
        service,
        ports,
        endpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(yaml: &str) -> Result<Policy, ValidationError> {
        let np: net::NetworkPolicy = serde_norway::from_str(yaml).expect("yaml");
        policy_from_k8s(&np)
    }

    const HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n";

    fn err_field(spec: &str) -> String {
        let e = np(&format!("{HEAD}spec: {spec}")).unwrap_err();
        assert_eq!(e.object, "NetworkPolicy x/p");
        e.field
    }

    #[test]
    fn policy_types_default_from_the_spec() {
        let p = np(&format!("{HEAD}spec: {{podSelector: {{}}}}")).unwrap();
        assert_eq!(
            p.ingress,
            Some(vec![]),
            "ingress applies even with no rules"
        );
        assert_eq!(p.egress, None, "egress only when egress rules exist");
        let p = np(&format!("{HEAD}spec: {{podSelector: {{}}, egress: []}}")).unwrap();
        assert_eq!(
            p.egress, None,
            "an empty egress list does not default Egress in"
        );
        let p = np(&format!(
            "{HEAD}spec: {{podSelector: {{}}, egress: [{{}}]}}"
        ))
        .unwrap();
        assert_eq!(p.egress.map(|r| r.len()), Some(1));
        assert_eq!(p.ingress, Some(vec![]), "ingress is always defaulted in");
        let p = np(&format!(
            "{HEAD}spec: {{podSelector: {{}}, policyTypes: [Egress], ingress: [{{}}]}}"
        ))
        .unwrap();
        assert_eq!(p.ingress, None, "policyTypes excludes ingress");
        assert_eq!(p.egress, Some(vec![]));
    }

    #[test]
    fn peers_are_scoped_as_the_api_says() {
        let p = np(&format!(
            "{HEAD}spec: {{podSelector: {{}}, ingress: [{{from: [{{podSelector: {{}}}}, {{namespaceSelector: {{}}}}]}}]}}"
        ))
        .unwrap();
        let rules = p.ingress.unwrap();
        assert_eq!(
            rules[0].peers[0],
            Peer::Pods {
                namespaces: NamespaceScope::Own("x".into()),
                pods: Selector::everything()
            }
        );
        assert_eq!(
            rules[0].peers[1],
            Peer::Pods {
                namespaces: NamespaceScope::Selector(Selector::everything()),
                pods: Selector::everything()
            }
        );
    }

    #[test]
    fn ports_default_to_tcp_and_ranges_are_inclusive() {
        let p = np(&format!(
            "{HEAD}spec: {{podSelector: {{}}, ingress: [{{ports: [{{port: 80}}, {{protocol: UDP, port: 1000, endPort: 2000}}, {{port: web, protocol: SCTP}}, {{protocol: UDP}}]}}]}}"
        ))
        .unwrap();
        let ports = &p.ingress.unwrap()[0].ports;
        assert_eq!(
            ports[0],
            PortRule {
                protocol: Protocol::Tcp,
                port: PortMatch::Range(80, 80)
            }
        );
        assert_eq!(
            ports[1],
            PortRule {
                protocol: Protocol::Udp,
                port: PortMatch::Range(1000, 2000)
            }
        );
        assert_eq!(
            ports[2],
            PortRule {
                protocol: Protocol::Sctp,
                port: PortMatch::Named("web".into())
            }
        );
        assert_eq!(
            ports[3],
            PortRule {
                protocol: Protocol::Udp,
                port: PortMatch::All
            }
        );
    }

    #[test]
    fn invalid_policies_name_the_field() {
        assert_eq!(
            err_field("{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}"),
            "spec.ingress[0].from[0].ipBlock.cidr"
        );
        assert_eq!(
            err_field("{ingress: [{from: [{ipBlock: {cidr: nonsense}}]}]}"),
            "spec.ingress[0].from[0].ipBlock.cidr"
        );
        assert_eq!(
            err_field("{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]}"),
            "spec.egress[0].to[0].ipBlock.except[0]"
        );
        assert_eq!(
            err_field("{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]}]}"),
            "spec.egress[0].to[0].ipBlock.except[0]",
            "except equal to the cidr is not a strict subset"
        );
        assert_eq!(
            err_field("{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: ['fd00::/64']}}]}]}"),
            "spec.egress[0].to[0].ipBlock.except[0]"
        );
        assert_eq!(
            err_field("{ingress: [{ports: [{port: 90, endPort: 80}]}]}"),
            "spec.ingress[0].ports[0].endPort"
        );
        assert_eq!(
            err_field("{ingress: [{ports: [{port: http, endPort: 80}]}]}"),
            "spec.ingress[0].ports[0].endPort"
        );
        assert_eq!(
            err_field("{ingress: [{ports: [{endPort: 80}]}]}"),
            "spec.ingress[0].ports[0].endPort"
        );
        assert_eq!(
            err_field("{ingress: [{ports: [{port: 0}]}]}"),
            "spec.ingress[0].ports[0].port"
        );
        assert_eq!(
            err_field("{ingress: [{ports: [{port: 70000}]}]}"),
            "spec.ingress[0].ports[0].port"
        );
        assert_eq!(
            err_field("{ingress: [{ports: [{port: Bad_Name}]}]}"),
            "spec.ingress[0].ports[0].port"
        );
        assert_eq!(
            err_field("{ingress: [{ports: [{protocol: ICMP}]}]}"),
            "spec.ingress[0].ports[0].protocol"
        );
        assert_eq!(
            err_field("{ingress: [{from: [{}]}]}"),
            "spec.ingress[0].from[0]"
        );
        assert_eq!(
            err_field("{ingress: [{from: [{podSelector: {}, ipBlock: {cidr: 10.0.0.0/8}}]}]}"),
            "spec.ingress[0].from[0]"
        );
        assert_eq!(
            err_field("{podSelector: {matchExpressions: [{key: a, operator: Like}]}}"),
            "spec.podSelector.matchExpressions[0].operator"
        );
        assert_eq!(
            err_field(
                "{ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: a, operator: In}]}}]}]}"
            ),
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values"
        );
        assert_eq!(
            err_field("{policyTypes: [Ingress, Sideways]}"),
            "spec.policyTypes[1]"
        );
        assert_eq!(
            err_field("{policyTypes: [Ingress, Ingress]}"),
            "spec.policyTypes[1]"
        );
    }

    #[test]
    fn host_bits_in_a_cidr_are_masked() {
        let p = np(&format!(
            "{HEAD}spec: {{ingress: [{{from: [{{ipBlock: {{cidr: 10.1.2.3/16}}}}]}}]}}"
        ))
        .unwrap();
        match &p.ingress.unwrap()[0].peers[0] {
            Peer::IpBlock(b) => assert_eq!(b.cidr.to_string(), "10.1.0.0/16"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn pods_take_addresses_and_named_ports() {
        let pod: core::Pod = serde_norway::from_str(
            "metadata: {name: a, namespace: x, labels: {app: web}}\n\
             spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}, {containerPort: 53, protocol: UDP}]}]}\n\
             status: {podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]}",
        )
        .unwrap();
        let PodConversion::Pod(p) = pod_from_k8s(&pod).unwrap() else {
            panic!("host network?")
        };
        assert_eq!(p.ips.len(), 2);
        assert_eq!(
            p.ports[0],
            ContainerPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(p.ports[1].protocol, Protocol::Udp);
    }

    #[test]
    fn a_service_is_validated_field_by_field() {
        let svc = |spec: &str| -> core::Service {
            serde_norway::from_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: x}}\nspec: {spec}\n"
            ))
            .unwrap()
        };
        let ok = service_from_k8s(&svc(
            "{clusterIP: 10.96.0.1, selector: {app: web}, ports: [{port: 80, targetPort: http}], sessionAffinity: ClientIP}",
        ))
        .unwrap();
        assert_eq!(
            ok.ports[0].target,
            crate::service::TargetPort::Name("http".into())
        );
        assert_eq!(ok.ports[0].protocol, Protocol::Tcp, "TCP when omitted");
        assert_eq!(ok.affinity_timeout, Some(10800), "the default timeout");
        for (spec, field) in [
            (
                "{clusterIP: 10.96.0.1, ports: [{port: 0}]}",
                "spec.ports[0].port",
            ),
            (
                "{clusterIP: 10.96.0.1, ports: [{port: 80, protocol: ICMP}]}",
                "spec.ports[0].protocol",
            ),
            (
                "{clusterIP: 10.96.0.1, ports: [{port: 80}, {port: 81}]}",
                "spec.ports[0].name",
            ),
            (
                "{clusterIP: nope, ports: [{port: 80}]}",
                "spec.clusterIPs[0]",
            ),
            ("{ports: [{port: 80}]}", "spec.clusterIP"),
            (
                "{type: Bogus, clusterIP: 10.96.0.1, ports: [{port: 80}]}",
                "spec.type",
            ),
            (
                "{clusterIP: 10.96.0.1, ports: [{port: 80, targetPort: Bad_Name}]}",
                "spec.ports[0].targetPort",
            ),
        ] {
            let e = service_from_k8s(&svc(spec)).unwrap_err();
            assert_eq!(
                (e.object.as_str(), e.field.as_str()),
                ("Service x/web", field),
                "{spec}: {e}"
            );
        }
    }
}
