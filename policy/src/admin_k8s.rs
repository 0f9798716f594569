//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`) and
//! AdminNetworkPolicy / BaselineAdminNetworkPolicy (`v1alpha1`) objects into
//! the model, validated as the API server's CRD schemas (experimental
//! channel: `nodes` peers) and CEL rules do.
//!
//! The types here are written from the API's Go types (network-policy-api
//! v0.2.0 for v1alpha2, v0.1.7 for v1alpha1); k8s-openapi has none. They
//! serialize back to what they read, so a manifest's unknown fields are
//! found and rejected. An object read from the API server has had unknown
//! fields pruned: a peer or protocol left empty is one this build does not
//! know, and fails closed ([`crate::admin`]); in a manifest it is an error.
//!
//! Not implemented, so rejected with an error naming the field (never
//! ignored): `domainNames` peers. From the API server an object cannot be
//! refused, and dropping it would drop its Deny rules: there a peer or
//! protocol this build cannot take (domainNames, a selector or protocol the
//! CRD's schema lets through) makes its rule fail closed instead, and is
//! returned as a warning naming the field.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

use crate::admin::{Action, AdminKey, AdminKind, AdminPeer, AdminPolicy, AdminRule, Subject, Tier};
use crate::k8s::{ValidationError, label_selector};
use crate::labels::Selector;
use crate::model::Protocol;
use crate::netpol::{Direction, PortMatch, PortRule};

/// The API group of all three kinds.
pub const GROUP: &str = "policy.networking.k8s.io";

/// A whole object as a manifest holds it (any of the three kinds).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminObject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<AdminSpec>,
    /// Written by controllers; not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_norway::Value>,
}

/// `spec` of the three kinds (the fields of one kind are checked absent
/// from the others by [`admin_policy_from_k8s`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<SubjectSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<RuleSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<RuleSpec>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubjectSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPodSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// An ingress or egress rule of any version.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<PeerSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<PeerSpec>>,
    /// v1alpha2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolSpec>>,
    /// v1alpha1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<V1PortSpec>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPodSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
}

/// v1alpha2: exactly one of `tcp`, `udp`, `sctp`, `destinationNamedPort`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ProtocolPorts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<ProtocolPorts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ProtocolPorts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolPorts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<PortSpec>,
}

/// Exactly one of `number`, `range`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<RangeSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
}

/// v1alpha1: exactly one of `portNumber`, `namedPort`, `portRange`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V1PortSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<V1Port>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<RangeSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V1Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

/// Which version's rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1alpha2,
    V1alpha1,
}

struct Check {
    object: String,
    kind: AdminKind,
    version: Version,
    /// Read from the API server: unknown fields were pruned, so an empty
    /// peer or protocol is one this build does not know (fail closed).
    pruned: bool,
    /// What a rule failed closed for (from the API server only).
    warnings: std::cell::RefCell<Vec<ValidationError>>,
}

impl Check {
    /// A peer's or protocol's conversion: from the API server an error
    /// makes the rule fail closed (`unknown`) and is kept as a warning; in
    /// a manifest it rejects the object.
    fn soft<T>(
        &self,
        r: Result<T, ValidationError>,
        unknown: &mut bool,
    ) -> Result<Option<T>, ValidationError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) if self.pruned => {
                *unknown = true;
                self.warnings.borrow_mut().push(e);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ValidationError {
        ValidationError {
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// At most this many items in a list (rules, peers, ports).
    fn max_items(&self) -> usize {
        match self.version {
            Version::V1alpha2 => 25,
            Version::V1alpha1 => 100,
        }
    }

    fn count(&self, field: &str, n: usize, min: usize, max: usize) -> Result<(), ValidationError> {
        if n < min {
            return Err(self.err(field, format!("must have at least {min} item(s)")));
        }
        if n > max {
            return Err(self.err(field, format!("must have at most {max} items, has {n}")));
        }
        Ok(())
    }

    fn selector(&self, field: &str, s: &LabelSelector) -> Result<Selector, ValidationError> {
        label_selector(&self.object, field, s)
    }

    fn namespaced_pod(
        &self,
        field: &str,
        p: &NamespacedPodSpec,
    ) -> Result<(Selector, Selector), ValidationError> {
        let pods = match &p.pod_selector {
            Some(s) => self.selector(&format!("{field}.podSelector"), s)?,
            None => return Err(self.err(format!("{field}.podSelector"), "Required value")),
        };
        let namespaces = match &p.namespace_selector {
            Some(s) => self.selector(&format!("{field}.namespaceSelector"), s)?,
            None if self.version == Version::V1alpha1 => {
                return Err(self.err(format!("{field}.namespaceSelector"), "Required value"));
            }
            None => Selector::everything(),
        };
        Ok((namespaces, pods))
    }

    fn port_number(&self, field: &str, n: Option<i64>) -> Result<u16, ValidationError> {
        match n {
            None => Err(self.err(field, "Required value")),
            Some(n) if (1..=65535).contains(&n) => Ok(n as u16),
            Some(n) => Err(self.err(field, format!("{n}: must be between 1 and 65535"))),
        }
    }

    fn protocol(&self, field: &str, p: Option<&str>) -> Result<Protocol, ValidationError> {
        match p.unwrap_or("TCP") {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(self.err(
                field,
                format!(
                    "Unsupported value: {other:?}: supported values: \"TCP\", \"UDP\", \"SCTP\""
                ),
            )),
        }
    }

    fn action(&self, field: &str, a: Option<&str>) -> Result<Action, ValidationError> {
        let (allowed, list): (&[(&str, Action)], &str) = match self.kind {
            AdminKind::ClusterNetworkPolicy => (
                &[
                    ("Accept", Action::Accept),
                    ("Deny", Action::Deny),
                    ("Pass", Action::Pass),
                ],
                "\"Accept\", \"Deny\", \"Pass\"",
            ),
            AdminKind::AdminNetworkPolicy => (
                &[
                    ("Allow", Action::Accept),
                    ("Deny", Action::Deny),
                    ("Pass", Action::Pass),
                ],
                "\"Allow\", \"Deny\", \"Pass\"",
            ),
            AdminKind::BaselineAdminNetworkPolicy => (
                &[("Allow", Action::Accept), ("Deny", Action::Deny)],
                "\"Allow\", \"Deny\"",
            ),
        };
        let Some(a) = a else {
            return Err(self.err(field, "Required value"));
        };
        allowed
            .iter()
            .find(|(name, _)| *name == a)
            .map(|(_, action)| *action)
            .ok_or_else(|| {
                self.err(
                    field,
                    format!("Unsupported value: {a:?}: supported values: {list}"),
                )
            })
    }
}

/// A CIDR as the API's `isCIDR` takes it: an address and a prefix length
/// (host bits may be set; they are ignored), not an IPv4-mapped IPv6
/// address, at most 43 characters.
fn cidr(check: &Check, field: &str, s: &str) -> Result<ipnet::IpNet, ValidationError> {
    let bad = || check.err(field, format!("{s:?}: Invalid CIDR format provided"));
    if s.len() > 43 {
        return Err(check.err(field, "may not be longer than 43 characters"));
    }
    let net: ipnet::IpNet = s.parse().map_err(|_| bad())?;
    // no leading zeros in IPv4 octets (Go's netip rejects them)
    let addr = s.split('/').next().unwrap_or("");
    if net.addr().is_ipv4() && addr.split('.').any(|o| o.len() > 1 && o.starts_with('0')) {
        return Err(bad());
    }
    if let ipnet::IpNet::V6(n) = net
        && n.addr().to_ipv4_mapped().is_some()
    {
        return Err(bad());
    }
    Ok(net.trunc())
}

/// Converts and validates one of the three kinds. `kind` and `api_version`
/// as the object states them; `pruned`: read from the API server, where
/// what a rule's peers or protocols hold that this build cannot take makes
/// the rule fail closed, each such field returned as a warning (in a
/// manifest it is an error, and the warnings are empty).
pub fn admin_policy_from_k8s(
    api_version: &str,
    kind: &str,
    metadata: &ObjectMeta,
    spec: Option<&AdminSpec>,
    pruned: bool,
) -> Result<(AdminPolicy, Vec<ValidationError>), ValidationError> {
    let unsupported = || ValidationError {
        object: format!("{kind} (unknown)"),
        field: "apiVersion".into(),
        message: format!(
            "{api_version} {kind} is not supported (supported: {GROUP}/v1alpha2 ClusterNetworkPolicy, {GROUP}/v1alpha1 AdminNetworkPolicy and BaselineAdminNetworkPolicy)"
        ),
    };
    let (admin_kind, version) = match (api_version.strip_prefix(GROUP), kind) {
        (Some("/v1alpha2"), "ClusterNetworkPolicy") => {
            (AdminKind::ClusterNetworkPolicy, Version::V1alpha2)
        }
        (Some("/v1alpha1"), "AdminNetworkPolicy") => {
            (AdminKind::AdminNetworkPolicy, Version::V1alpha1)
        }
        (Some("/v1alpha1"), "BaselineAdminNetworkPolicy") => {
            (AdminKind::BaselineAdminNetworkPolicy, Version::V1alpha1)
        }
        _ => return Err(unsupported()),
    };
    let name = match metadata.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => {
            return Err(ValidationError {
                object: format!("{kind} (unnamed)"),
                field: "metadata.name".into(),
                message: "name is required".into(),
            });
        }
    };
    let check = Check {
        object: format!("{kind} {name}"),
        kind: admin_kind,
        version,
        pruned,
        warnings: Default::default(),
    };
    if admin_kind == AdminKind::BaselineAdminNetworkPolicy && name != "default" {
        return Err(check.err(
            "metadata.name",
            "Only one baseline admin network policy with metadata.name=\"default\" can be created in the cluster",
        ));
    }
    let spec = spec.ok_or_else(|| check.err("spec", "Required value"))?;
    let tier = match admin_kind {
        AdminKind::ClusterNetworkPolicy => match spec.tier.as_deref() {
            Some("Admin") => Tier::Admin,
            Some("Baseline") => Tier::Baseline,
            Some(t) => {
                return Err(check.err(
                    "spec.tier",
                    format!("Unsupported value: {t:?}: supported values: \"Admin\", \"Baseline\""),
                ));
            }
            None => return Err(check.err("spec.tier", "Required value")),
        },
        AdminKind::AdminNetworkPolicy => Tier::Admin,
        AdminKind::BaselineAdminNetworkPolicy => Tier::Baseline,
    };
    if version == Version::V1alpha1 && spec.tier.is_some() {
        return Err(check.err("spec.tier", "unknown field (v1alpha1 has no tier)"));
    }
    let priority = match (admin_kind, spec.priority) {
        (AdminKind::BaselineAdminNetworkPolicy, None) => 0,
        (AdminKind::BaselineAdminNetworkPolicy, Some(_)) => {
            return Err(check.err(
                "spec.priority",
                "unknown field (a BaselineAdminNetworkPolicy has no priority)",
            ));
        }
        (_, None) => return Err(check.err("spec.priority", "Required value")),
        (_, Some(p)) if (0..=1000).contains(&p) => p as u32,
        (_, Some(p)) => {
            return Err(check.err("spec.priority", format!("{p}: must be between 0 and 1000")));
        }
    };
    let subject = match &spec.subject {
        None => return Err(check.err("spec.subject", "Required value")),
        Some(SubjectSpec {
            namespaces: Some(ns),
            pods: None,
        }) => Subject::Namespaces(check.selector("spec.subject.namespaces", ns)?),
        Some(SubjectSpec {
            namespaces: None,
            pods: Some(p),
        }) => {
            let (namespaces, pods) = check.namespaced_pod("spec.subject.pods", p)?;
            Subject::Pods { namespaces, pods }
        }
        Some(_) => {
            return Err(check.err(
                "spec.subject",
                "exactly one of namespaces or pods must be set",
            ));
        }
    };
    let mut rules = [Vec::new(), Vec::new()];
    for (d, dir, list) in [
        (0, Direction::Ingress, &spec.ingress),
        (1, Direction::Egress, &spec.egress),
    ] {
        let field = format!("spec.{dir}");
        let list = list.as_deref().unwrap_or_default();
        check.count(&field, list.len(), 0, check.max_items())?;
        for (i, r) in list.iter().enumerate() {
            rules[d].push(rule(&check, &format!("{field}[{i}]"), dir, r)?);
        }
    }
    let [ingress, egress] = rules;
    let policy = AdminPolicy {
        key: AdminKey::new(admin_kind, name),
        tier,
        priority,
        subject,
        ingress,
        egress,
    };
    Ok((policy, check.warnings.into_inner()))
}

fn rule(
    check: &Check,
    field: &str,
    dir: Direction,
    r: &RuleSpec,
) -> Result<AdminRule, ValidationError> {
    if let Some(n) = &r.name
        && n.chars().count() > 100
    {
        return Err(check.err(
            format!("{field}.name"),
            "may not be longer than 100 characters",
        ));
    }
    let action = check.action(&format!("{field}.action"), r.action.as_deref())?;
    let (peers_field, peers, wrong) = match dir {
        Direction::Ingress => ("from", &r.from, r.to.is_some().then_some("to")),
        Direction::Egress => ("to", &r.to, r.from.is_some().then_some("from")),
    };
    if let Some(w) = wrong {
        return Err(check.err(
            format!("{field}.{w}"),
            format!("unknown field ({dir} rules take {peers_field})"),
        ));
    }
    let peers_field = format!("{field}.{peers_field}");
    let list = peers
        .as_deref()
        .ok_or_else(|| check.err(&peers_field, "Required value"))?;
    check.count(&peers_field, list.len(), 1, check.max_items())?;
    let mut unknown = false;
    let mut out = Vec::new();
    let mut address_peer = false;
    for (i, p) in list.iter().enumerate() {
        let f = format!("{peers_field}[{i}]");
        let peer = peer(check, &f, dir, p, &mut address_peer);
        match check.soft(peer, &mut unknown)? {
            Some(Some(p)) => out.push(p),
            Some(None) => unknown = true,
            None => {}
        }
    }
    let ports = rule_ports(check, field, r, &mut unknown)?;
    let named = ports
        .iter()
        .flatten()
        .any(|p| matches!(p.port, PortMatch::Named(_)));
    // (from the API server, a named port beside an address peer simply
    // matches no address: the standard channel's CRD allows it)
    if address_peer && named && !check.pruned {
        return Err(check.err(
            field.to_string(),
            "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames",
        ));
    }
    Ok(AdminRule {
        name: r.name.clone().filter(|n| !n.is_empty()),
        action,
        peers: out,
        ports,
        unknown,
    })
}

/// One peer; `None`: empty from the API server (a field this build does
/// not know).
fn peer(
    check: &Check,
    f: &str,
    dir: Direction,
    p: &PeerSpec,
    address_peer: &mut bool,
) -> Result<Option<AdminPeer>, ValidationError> {
    let set = [
        p.namespaces.is_some(),
        p.pods.is_some(),
        p.networks.is_some(),
        p.nodes.is_some(),
        p.domain_names.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if set == 0 && check.pruned {
        return Ok(None);
    }
    let one_of = match dir {
        Direction::Ingress => "namespaces or pods",
        Direction::Egress => "namespaces, pods, networks or nodes",
    };
    if set != 1 {
        return Err(check.err(f, format!("exactly one of {one_of} must be set")));
    }
    if dir == Direction::Ingress
        && (p.networks.is_some() || p.nodes.is_some() || p.domain_names.is_some())
    {
        let which = if p.networks.is_some() {
            "networks"
        } else if p.nodes.is_some() {
            "nodes"
        } else {
            "domainNames"
        };
        return Err(check.err(
            format!("{f}.{which}"),
            "unknown field (ingress peers are namespaces or pods)",
        ));
    }
    if p.domain_names.is_some() {
        return Err(check.err(
                format!("{f}.domainNames"),
                "domainNames peers are not supported by vswitch (it has no DNS-based policy): use networks with the addresses instead",
            ));
    }
    if let Some(ns) = &p.namespaces {
        return Ok(Some(AdminPeer::Namespaces(
            check.selector(&format!("{f}.namespaces"), ns)?,
        )));
    }
    if let Some(pods) = &p.pods {
        let (namespaces, pods) = check.namespaced_pod(&format!("{f}.pods"), pods)?;
        return Ok(Some(AdminPeer::Pods { namespaces, pods }));
    }
    if let Some(nets) = &p.networks {
        let nf = format!("{f}.networks");
        check.count(&nf, nets.len(), 1, 25)?;
        let mut parsed = Vec::new();
        for (j, n) in nets.iter().enumerate() {
            if nets[..j].contains(n) {
                return Err(check.err(format!("{nf}[{j}]"), format!("Duplicate value: {n:?}")));
            }
            parsed.push(cidr(check, &format!("{nf}[{j}]"), n)?);
        }
        *address_peer = true;
        return Ok(Some(AdminPeer::Networks(parsed)));
    }
    let nodes = p.nodes.as_ref().expect("the one field set");
    *address_peer = true;
    Ok(Some(AdminPeer::Nodes(
        check.selector(&format!("{f}.nodes"), nodes)?,
    )))
}

/// A rule's protocols (v1alpha2) or ports (v1alpha1); `None`: every port.
fn rule_ports(
    check: &Check,
    field: &str,
    r: &RuleSpec,
    unknown: &mut bool,
) -> Result<Option<Vec<PortRule>>, ValidationError> {
    let ports = match check.version {
        Version::V1alpha2 => {
            if r.ports.is_some() {
                return Err(check.err(
                    format!("{field}.ports"),
                    "unknown field (v1alpha2 rules take protocols)",
                ));
            }
            match &r.protocols {
                None => None,
                Some(list) => Some(protocols(check, field, list, unknown)?),
            }
        }
        Version::V1alpha1 => {
            if r.protocols.is_some() {
                return Err(check.err(
                    format!("{field}.protocols"),
                    "unknown field (v1alpha1 rules take ports)",
                ));
            }
            match &r.ports {
                None => None,
                Some(list) => Some(v1_ports(check, field, list, unknown)?),
            }
        }
    };
    Ok(ports)
}

/// A named port of any protocol: the container port's protocol decides.
fn named(name: &str) -> impl Iterator<Item = PortRule> + '_ {
    [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .map(|protocol| PortRule {
            protocol,
            port: PortMatch::Named(name.to_string()),
        })
}

fn protocols(
    check: &Check,
    field: &str,
    list: &[ProtocolSpec],
    unknown: &mut bool,
) -> Result<Vec<PortRule>, ValidationError> {
    let field = format!("{field}.protocols");
    check.count(&field, list.len(), 1, 25)?;
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let entries = [
            (Protocol::Tcp, "tcp", &p.tcp),
            (Protocol::Udp, "udp", &p.udp),
            (Protocol::Sctp, "sctp", &p.sctp),
        ];
        let set = entries.iter().filter(|(_, _, e)| e.is_some()).count()
            + p.destination_named_port.is_some() as usize;
        if set == 0 && check.pruned {
            *unknown = true;
            continue;
        }
        let entry = || -> Result<Vec<PortRule>, ValidationError> {
            if set != 1 {
                return Err(check.err(
                    f.clone(),
                    "exactly one of tcp, udp, sctp or destinationNamedPort must be set",
                ));
            }
            if let Some(name) = &p.destination_named_port {
                if name.is_empty() {
                    return Err(check.err(format!("{f}.destinationNamedPort"), "Required value"));
                }
                return Ok(named(name).collect());
            }
            let (protocol, pname, ports) = entries
                .iter()
                .find_map(|(proto, n, e)| e.as_ref().map(|e| (*proto, *n, e)))
                .expect("one is set");
            let pf = format!("{f}.{pname}.destinationPort");
            let Some(port) = &ports.destination_port else {
                return Err(check.err(pf, "Required value"));
            };
            let port = match port {
                PortSpec {
                    number: Some(n),
                    range: None,
                } => {
                    let n = check.port_number(&format!("{pf}.number"), Some(*n))?;
                    PortMatch::Range(n, n)
                }
                PortSpec {
                    number: None,
                    range: Some(r),
                } => {
                    if r.protocol.is_some() {
                        return Err(check.err(format!("{pf}.range.protocol"), "unknown field"));
                    }
                    let start = check.port_number(&format!("{pf}.range.start"), r.start)?;
                    let end = check.port_number(&format!("{pf}.range.end"), r.end)?;
                    if start >= end {
                        return Err(check.err(
                            format!("{pf}.range"),
                            "Start port must be less than End port",
                        ));
                    }
                    PortMatch::Range(start, end)
                }
                _ => {
                    return Err(check.err(pf, "You must specify either Port or Range"));
                }
            };
            Ok(vec![PortRule { protocol, port }])
        };
        if let Some(v) = check.soft(entry(), unknown)? {
            out.extend(v);
        }
    }
    Ok(out)
}

fn v1_ports(
    check: &Check,
    field: &str,
    list: &[V1PortSpec],
    unknown: &mut bool,
) -> Result<Vec<PortRule>, ValidationError> {
    let field = format!("{field}.ports");
    check.count(&field, list.len(), 1, 100)?;
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let set = p.port_number.is_some() as usize
            + p.named_port.is_some() as usize
            + p.port_range.is_some() as usize;
        if set == 0 && check.pruned {
            *unknown = true;
            continue;
        }
        let entry = || -> Result<Vec<PortRule>, ValidationError> {
            if set != 1 {
                return Err(check.err(
                    f.clone(),
                    "exactly one of portNumber, namedPort or portRange must be set",
                ));
            }
            if let Some(n) = &p.port_number {
                let protocol =
                    check.protocol(&format!("{f}.portNumber.protocol"), n.protocol.as_deref())?;
                let port = check.port_number(&format!("{f}.portNumber.port"), n.port)?;
                return Ok(vec![PortRule {
                    protocol,
                    port: PortMatch::Range(port, port),
                }]);
            } else if let Some(name) = &p.named_port {
                if name.is_empty() {
                    return Err(check.err(format!("{f}.namedPort"), "Required value"));
                }
                return Ok(named(name).collect());
            } else if let Some(r) = &p.port_range {
                let protocol =
                    check.protocol(&format!("{f}.portRange.protocol"), r.protocol.as_deref())?;
                let start = check.port_number(&format!("{f}.portRange.start"), r.start)?;
                let end = check.port_number(&format!("{f}.portRange.end"), r.end)?;
                // v1alpha1's schema does not require start <= end; such a
                // range holds no port, and matches none
                return Ok(vec![PortRule {
                    protocol,
                    port: PortMatch::Range(start, end),
                }]);
            }
            Ok(vec![])
        };
        if let Some(v) = check.soft(entry(), unknown)? {
            out.extend(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{self, Object};

    fn one(yaml: &str) -> Result<AdminPolicy, String> {
        let mut v = manifest::parse(yaml);
        assert_eq!(v.len(), 1);
        match v.remove(0) {
            Ok(Object::AdminPolicy(p)) => Ok(p),
            Ok(_) => panic!("not an admin policy"),
            Err(e) => Err(e.to_string()),
        }
    }

    const CNP: &str = "
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guard}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress:
    - name: from-monitoring
      action: Accept
      from: [{pods: {podSelector: {matchLabels: {app: prom}}}}]
      protocols:
        - tcp: {destinationPort: {number: 9090}}
        - udp: {destinationPort: {range: {start: 5000, end: 5010}}}
        - destinationNamedPort: metrics
  egress:
    - action: Deny
      to: [{networks: [10.0.0.1/8, 'fd00::/16']}, {nodes: {}}]
";

    #[test]
    fn a_cluster_network_policy_converts_with_every_field() {
        let p = one(CNP).expect("valid");
        assert_eq!(
            p.key,
            AdminKey::new(AdminKind::ClusterNetworkPolicy, "guard")
        );
        assert_eq!((p.tier, p.priority), (Tier::Admin, 10));
        let r = &p.ingress[0];
        assert_eq!(r.name.as_deref(), Some("from-monitoring"));
        assert_eq!(r.action, Action::Accept);
        // an omitted namespaceSelector selects every namespace
        assert_eq!(
            r.peers,
            vec![AdminPeer::Pods {
                namespaces: Selector::everything(),
                pods: Selector::build("", [("app".into(), "prom".into())].into(), vec![]).unwrap()
            }]
        );
        let ports = r.ports.as_ref().unwrap();
        assert_eq!(ports[0].to_string(), "9090/TCP");
        assert_eq!(ports[1].to_string(), "5000-5010/UDP");
        // a named port of whichever protocol the container port has
        assert_eq!(ports.len(), 5);
        assert!(
            ports[2..]
                .iter()
                .all(|p| p.port == PortMatch::Named("metrics".into()))
        );
        let e = &p.egress[0];
        // host bits are allowed, and ignored
        assert_eq!(
            e.peers[0],
            AdminPeer::Networks(vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/16".parse().unwrap()
            ])
        );
        assert_eq!(e.peers[1], AdminPeer::Nodes(Selector::everything()));
        assert_eq!(e.ports, None);
    }

    #[test]
    fn v1alpha1_kinds_map_onto_the_tiers() {
        let anp = one("
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: a}
spec:
  priority: 3
  subject: {pods: {namespaceSelector: {}, podSelector: {}}}
  egress:
    - action: Allow
      to: [{namespaces: {}}]
      ports: [{portNumber: {protocol: UDP, port: 53}}, {portRange: {start: 80, end: 80}}, {namedPort: web}]
")
        .expect("valid");
        assert_eq!((anp.tier, anp.priority), (Tier::Admin, 3));
        assert_eq!(anp.egress[0].action, Action::Accept);
        let ports = anp.egress[0].ports.as_ref().unwrap();
        assert_eq!(ports[0].to_string(), "53/UDP");
        // the protocol defaults to TCP
        assert_eq!(ports[1].to_string(), "80/TCP");
        let banp = one("
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
")
        .expect("valid");
        assert_eq!((banp.tier, banp.priority), (Tier::Baseline, 0));
        assert_eq!(banp.ingress[0].action, Action::Deny);
    }

    /// Each error names the object and the field, as the API server would
    /// refuse the object.
    #[test]
    fn invalid_objects_are_rejected_naming_object_and_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "priority: 10",
                "priority: 1001",
                "spec.priority: 1001: must be between 0 and 1000",
            ),
            (
                "tier: Admin",
                "tier: Middle",
                "spec.tier: Unsupported value: \"Middle\"",
            ),
            (
                "action: Accept",
                "action: Allow",
                "spec.ingress[0].action: Unsupported value: \"Allow\"",
            ),
            (
                "{start: 5000, end: 5010}",
                "{start: 5010, end: 5010}",
                "spec.ingress[0].protocols[1].udp.destinationPort.range: Start port must be less than End port",
            ),
            (
                "{number: 9090}",
                "{number: 0}",
                "protocols[0].tcp.destinationPort.number: 0: must be between 1 and 65535",
            ),
            (
                "{number: 9090}",
                "{}",
                "protocols[0].tcp.destinationPort: You must specify either Port or Range",
            ),
            (
                "10.0.0.1/8",
                "10.0.0.300/8",
                "spec.egress[0].to[0].networks[0]: \"10.0.0.300/8\": Invalid CIDR format provided",
            ),
            (
                "'fd00::/16'",
                "'::ffff:10.0.0.0/104'",
                "Invalid CIDR format provided",
            ),
            (
                "{nodes: {}}",
                "{domainNames: ['*.example.com']}",
                "spec.egress[0].to[1].domainNames: domainNames peers are not supported",
            ),
            (
                "{nodes: {}}",
                "{}",
                "spec.egress[0].to[1]: exactly one of namespaces, pods, networks or nodes must be set",
            ),
            (
                "{nodes: {}}",
                "{nodes: {}, namespaces: {}}",
                "spec.egress[0].to[1]: exactly one of",
            ),
            (
                "from: [{pods: {podSelector: {matchLabels: {app: prom}}}}]",
                "from: [{networks: [10.0.0.0/8]}]",
                "spec.ingress[0].from[0].networks: unknown field (ingress peers are namespaces or pods)",
            ),
            (
                "{pods: {podSelector: {matchLabels: {app: prom}}}}",
                "{pods: {namespaceSelector: {}}}",
                "spec.ingress[0].from[0].pods.podSelector: Required value",
            ),
            (
                "subject: {namespaces: {matchLabels: {team: a}}}",
                "subject: {}",
                "spec.subject: exactly one of namespaces or pods",
            ),
            ("name: from-monitoring", "nam: x", "unknown field"),
            (
                "{app: prom}",
                "{app: 'bad value!'}",
                "spec.ingress[0].from[0].pods.podSelector",
            ),
        ];
        for (from, to, want) in cases {
            assert!(CNP.contains(from), "{from}");
            let err = one(&CNP.replacen(from, to, 1)).expect_err(to);
            assert!(err.contains("ClusterNetworkPolicy guard"), "{err}");
            assert!(err.contains(want), "{to}: {err}\nwanted: {want}");
        }
        // 26 rules: the API allows 25
        let many = CNP.replace(
            "  egress:\n",
            &format!(
                "  egress:\n{}",
                "    - {action: Pass, to: [{namespaces: {}}]}\n".repeat(25)
            ),
        );
        let err = one(&many).expect_err("26 rules");
        assert!(
            err.contains("spec.egress: must have at most 25 items"),
            "{err}"
        );
        // a named port with an address peer (the CRD's CEL rule)
        let err = one(&CNP.replace(
            "to: [{networks: [10.0.0.1/8, 'fd00::/16']}, {nodes: {}}]",
            "to: [{networks: [10.0.0.0/8]}]\n      protocols: [{destinationNamedPort: web}]",
        ))
        .expect_err("named port with networks");
        assert!(err.contains("cannot be set with namedPorts"), "{err}");
        let err = one("
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: other}
spec: {subject: {namespaces: {}}}
")
        .expect_err("name");
        assert!(
            err.contains("metadata.name: Only one baseline admin network policy"),
            "{err}"
        );
        let err = one("
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: x}
spec:
  priority: 1
  subject: {pods: {podSelector: {}}}
")
        .expect_err("v1alpha1 needs namespaceSelector");
        assert!(
            err.contains("spec.subject.pods.namespaceSelector: Required value"),
            "{err}"
        );
    }

    /// From the API server (unknown fields pruned), an empty peer or
    /// protocol is one of a newer API: an Accept rule matches nothing of
    /// it, a Deny or Pass rule denies everything.
    #[test]
    fn peers_not_understood_fail_closed() {
        let spec = |action: &str| AdminSpec {
            tier: Some("Admin".into()),
            priority: Some(1),
            subject: Some(SubjectSpec {
                namespaces: Some(LabelSelector::default()),
                pods: None,
            }),
            egress: Some(vec![RuleSpec {
                action: Some(action.into()),
                to: Some(vec![PeerSpec::default()]),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let meta = ObjectMeta {
            name: Some("future".into()),
            ..Default::default()
        };
        let api = "policy.networking.k8s.io/v1alpha2";
        let conv = |a: &str, pruned| {
            admin_policy_from_k8s(api, "ClusterNetworkPolicy", &meta, Some(&spec(a)), pruned)
        };
        let (accept, warnings) = conv("Accept", true).expect("read from the API server");
        assert!(accept.egress[0].matches_nothing() && !accept.egress[0].denies_all());
        assert!(
            warnings.is_empty(),
            "an empty peer is no error: {warnings:?}"
        );
        for a in ["Deny", "Pass"] {
            assert!(conv(a, true).expect("pruned").0.egress[0].denies_all());
        }
        assert!(conv("Deny", false).is_err(), "in a manifest it is an error");
    }

    /// From the API server an object cannot be refused, and dropping it
    /// would drop its Deny rules: what this build cannot take in a peer or
    /// protocol (domainNames, a selector the CRD lets through, a v1alpha1
    /// protocol the CRD does not check) makes its rule fail closed, and is
    /// returned naming the field.
    #[test]
    fn from_the_api_server_what_cannot_be_taken_fails_closed_naming_the_field() {
        let peer = |v: PeerSpec| AdminSpec {
            tier: Some("Admin".into()),
            priority: Some(1),
            subject: Some(SubjectSpec {
                namespaces: Some(LabelSelector::default()),
                pods: None,
            }),
            egress: Some(vec![
                RuleSpec {
                    action: Some("Accept".into()),
                    to: Some(vec![v]),
                    ..Default::default()
                },
                RuleSpec {
                    action: Some("Deny".into()),
                    to: Some(vec![PeerSpec {
                        networks: Some(vec!["0.0.0.0/0".into()]),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let meta = ObjectMeta {
            name: Some("egress".into()),
            ..Default::default()
        };
        let api = "policy.networking.k8s.io/v1alpha2";
        let domains = peer(PeerSpec {
            domain_names: Some(vec!["*.example.com".into()]),
            ..Default::default()
        });
        let (p, warnings) =
            admin_policy_from_k8s(api, "ClusterNetworkPolicy", &meta, Some(&domains), true)
                .expect("applied");
        assert!(p.egress[0].matches_nothing(), "the Accept matches nothing");
        assert_eq!(p.egress[1].action, Action::Deny, "the Deny stays");
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].field, "spec.egress[0].to[0].domainNames");
        // in a manifest the same object is rejected, naming the field
        let e = admin_policy_from_k8s(api, "ClusterNetworkPolicy", &meta, Some(&domains), false)
            .expect_err("rejected");
        assert_eq!(e.field, "spec.egress[0].to[0].domainNames");
        // a selector the API server's schema does not check
        let bad = LabelSelector {
            match_labels: Some([("app".to_string(), "bad value!".to_string())].into()),
            ..Default::default()
        };
        let (p, warnings) = admin_policy_from_k8s(
            api,
            "ClusterNetworkPolicy",
            &meta,
            Some(&peer(PeerSpec {
                namespaces: Some(bad),
                ..Default::default()
            })),
            true,
        )
        .expect("applied");
        assert!(p.egress[0].matches_nothing());
        assert!(
            warnings[0]
                .field
                .starts_with("spec.egress[0].to[0].namespaces"),
            "{warnings:?}"
        );
        // a v1alpha1 protocol its CRD does not check, in a Deny rule
        let mut spec = peer(PeerSpec {
            namespaces: Some(LabelSelector::default()),
            ..Default::default()
        });
        spec.tier = None;
        let rules = spec.egress.as_mut().unwrap();
        rules[0].action = Some("Deny".into());
        rules[0].ports = Some(vec![V1PortSpec {
            port_number: Some(V1Port {
                protocol: Some("tcp".into()),
                port: Some(80),
            }),
            ..Default::default()
        }]);
        rules[1].action = Some("Allow".into());
        let (p, warnings) = admin_policy_from_k8s(
            "policy.networking.k8s.io/v1alpha1",
            "AdminNetworkPolicy",
            &meta,
            Some(&spec),
            true,
        )
        .expect("applied");
        assert!(p.egress[0].denies_all(), "the Deny denies all");
        assert_eq!(
            warnings[0].field,
            "spec.egress[0].ports[0].portNumber.protocol"
        );
    }
}
