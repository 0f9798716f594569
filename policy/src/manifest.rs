//! Kubernetes YAML manifests (one or many documents, `kind: List` too) into
//! the model, through the standard API types.
//!
//! The API types ignore fields they do not know, which would let a typo
//! (`podSelectr`) silently widen a policy. Here every document is read twice:
//! into the typed object, and as plain YAML; a field of the YAML that does not
//! survive the round trip through the typed object is an error, as the API
//! server's strict field validation makes it.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_norway::Value;

use crate::admin_k8s::{AdminObject, admin_policy_from_k8s};
use crate::k8s::{self, PodConversion, ValidationError};
use crate::model::{Namespace, Node, Pod, PodKey};
use crate::netpol::Policy;

/// One object read from a manifest.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    /// A host-network pod, which NetworkPolicy does not cover.
    HostNetworkPod(PodKey),
    NetworkPolicy(Policy),
    /// A Node: where its pods live and how other nodes reach it.
    Node(Node),
    /// A Service (its cluster IPs; headless and ExternalName have none).
    Service(crate::service::Service),
    /// A Service's endpoints.
    EndpointSlice(crate::endpoint_slice::EndpointSlice),
    /// A ClusterNetworkPolicy, AdminNetworkPolicy or
    /// BaselineAdminNetworkPolicy.
    AdminPolicy(crate::admin::AdminPolicy),
}

/// Which object a document describes: kind, namespace (`None` for
/// cluster-scoped kinds, `default` when a namespaced object omits it) and
/// name. A rejected document that still names its object this way lets a
/// reader keep that object's last valid version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

impl Object {
    /// The object's identity, as [`parse_with_ids`] names its document.
    pub fn id(&self) -> ObjectId {
        let namespaced = |kind, key: &PodKey| ObjectId {
            kind,
            namespace: Some(key.namespace.clone()),
            name: key.name.clone(),
        };
        match self {
            Object::Namespace(n) => ObjectId {
                kind: "Namespace",
                namespace: None,
                name: n.name.clone(),
            },
            Object::Pod(p) => namespaced("Pod", &p.key),
            Object::HostNetworkPod(k) => namespaced("Pod", k),
            Object::NetworkPolicy(p) => ObjectId {
                kind: "NetworkPolicy",
                namespace: Some(p.key.namespace.clone()),
                name: p.key.name.clone(),
            },
            Object::Node(n) => ObjectId {
                kind: "Node",
                namespace: None,
                name: n.name.clone(),
            },
            Object::Service(s) => namespaced("Service", &s.key),
            Object::EndpointSlice(s) => namespaced("EndpointSlice", &s.key),
            Object::AdminPolicy(p) => ObjectId {
                kind: p.key.kind.as_str(),
                namespace: None,
                name: p.key.name.clone(),
            },
        }
    }
}

/// The identity a document gives itself, when its kind is supported and it
/// has a name (whether or not the rest of it is valid).
fn document_id(api: &str, kind: &str, value: &Value) -> Option<ObjectId> {
    let (kind, namespaced): (&'static str, bool) = match (api, kind) {
        ("v1", "Namespace") => ("Namespace", false),
        ("v1", "Pod") => ("Pod", true),
        ("v1", "Node") => ("Node", false),
        ("v1", "Service") => ("Service", true),
        ("discovery.k8s.io/v1", "EndpointSlice") => ("EndpointSlice", true),
        ("networking.k8s.io/v1", "NetworkPolicy") => ("NetworkPolicy", true),
        ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy") => {
            ("ClusterNetworkPolicy", false)
        }
        ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy") => {
            ("AdminNetworkPolicy", false)
        }
        ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy") => {
            ("BaselineAdminNetworkPolicy", false)
        }
        _ => return None,
    };
    let meta = value.get("metadata")?;
    let name = meta.get("name").and_then(Value::as_str)?;
    if name.is_empty() {
        return None;
    }
    let namespace = namespaced.then(|| {
        meta.get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string()
    });
    Some(ObjectId {
        kind,
        namespace,
        name: name.to_string(),
    })
}

/// One document's result and the object it names, if it names one.
pub type Named = (Option<ObjectId>, Result<Object, ManifestError>);

/// Why one document could not be used; the other documents are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("document {doc}: not valid YAML: {message}")]
    Yaml { doc: usize, message: String },
    #[error(
        "document {doc}: {kind} is not supported (supported: Namespace, Pod, Node, Service, EndpointSlice, NetworkPolicy, ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy)"
    )]
    Unsupported { doc: usize, kind: String },
    #[error("document {doc}: {object}: {field}: {message}")]
    Decode {
        doc: usize,
        object: String,
        field: String,
        message: String,
    },
    #[error("document {doc}: {0}", doc = .1)]
    Invalid(ValidationError, usize),
}

/// Parses every document of a YAML text. Each document yields its objects or
/// an error, independently.
pub fn parse(text: &str) -> Vec<Result<Object, ManifestError>> {
    parse_with_ids(text).into_iter().map(|(_, r)| r).collect()
}

/// [`parse`], each result with the object its document names (`None` for
/// a syntax error, an unsupported kind or a document without a name).
pub fn parse_with_ids(text: &str) -> Vec<Named> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let doc_no = i + 1;
        let value = match <Value as serde::Deserialize>::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                out.push((
                    None,
                    Err(ManifestError::Yaml {
                        doc: doc_no,
                        message: e.to_string(),
                    }),
                ));
                // The YAML stream cannot be resynchronised after a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue; // an empty document (e.g. a trailing `---`)
        }
        parse_named(doc_no, value, &mut out);
    }
    out
}

/// Converts one already-parsed object (used for `kind: List` items and by
/// callers that hold YAML values, such as scenario files).
pub fn parse_value(doc: usize, value: Value, out: &mut Vec<Result<Object, ManifestError>>) {
    let mut named = Vec::new();
    parse_named(doc, value, &mut named);
    out.extend(named.into_iter().map(|(_, r)| r));
}

fn parse_named(doc: usize, value: Value, out: &mut Vec<Named>) {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let api = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let id = document_id(&api, &kind, &value);
    let result = match (api.as_str(), kind.as_str()) {
        ("v1", "List") => {
            let items = value
                .get("items")
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default();
            for item in items {
                parse_named(doc, item, out);
            }
            return;
        }
        ("v1", "Namespace") => strict::<core::Namespace>(doc, &kind, &value)
            .and_then(|ns| k8s::namespace_from_k8s(&ns).map_err(|e| ManifestError::Invalid(e, doc)))
            .map(Object::Namespace),
        ("v1", "Pod") => strict::<core::Pod>(doc, &kind, &value).and_then(|p| {
            match k8s::pod_from_k8s(&p).map_err(|e| ManifestError::Invalid(e, doc))? {
                PodConversion::Pod(p) => Ok(Object::Pod(p)),
                PodConversion::HostNetwork(k) => Ok(Object::HostNetworkPod(k)),
            }
        }),
        ("v1", "Node") => strict::<core::Node>(doc, &kind, &value)
            .and_then(|n| k8s::node_from_k8s(&n).map_err(|e| ManifestError::Invalid(e, doc)))
            .map(Object::Node),
        ("v1", "Service") => strict::<core::Service>(doc, &kind, &value)
            .and_then(|s| k8s::service_from_k8s(&s).map_err(|e| ManifestError::Invalid(e, doc)))
            .map(Object::Service),
        ("discovery.k8s.io/v1", "EndpointSlice") => strict::<
            k8s_openapi::api::discovery::v1::EndpointSlice,
        >(doc, &kind, &value)
        .and_then(|s| k8s::endpoint_slice_from_k8s(&s).map_err(|e| ManifestError::Invalid(e, doc)))
        .map(Object::EndpointSlice),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            strict::<net::NetworkPolicy>(doc, &kind, &value)
                .and_then(|np| {
                    k8s::policy_from_k8s(&np).map_err(|e| ManifestError::Invalid(e, doc))
                })
                .map(Object::NetworkPolicy)
        }
        ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy")
        | (
            "policy.networking.k8s.io/v1alpha1",
            "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy",
        ) => strict::<AdminObject>(doc, &kind, &value)
            .and_then(|o| {
                admin_policy_from_k8s(&api, &kind, &o.metadata, o.spec.as_ref(), false)
                    .map(|(p, _)| p)
                    .map_err(|e| ManifestError::Invalid(e, doc))
            })
            .map(Object::AdminPolicy),
        _ => Err(ManifestError::Unsupported {
            doc,
            kind: if kind.is_empty() {
                "a document without kind".to_string()
            } else {
                format!("{api} {kind}")
            },
        }),
    };
    out.push((id, result));
}

fn object_name(kind: &str, value: &Value) -> String {
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Decodes a typed object and rejects fields the type does not know.
pub fn strict<T: DeserializeOwned + Serialize>(
    doc: usize,
    kind: &str,
    value: &Value,
) -> Result<T, ManifestError> {
    let object = object_name(kind, value);
    let typed: T = serde_path_like(value).map_err(|(field, message)| ManifestError::Decode {
        doc,
        object: object.clone(),
        field,
        message,
    })?;
    let back = serde_norway::to_value(&typed).map_err(|e| ManifestError::Decode {
        doc,
        object: object.clone(),
        field: "".into(),
        message: e.to_string(),
    })?;
    if let Some(field) = unknown_field(value, &back, String::new()) {
        return Err(ManifestError::Decode {
            doc,
            object,
            field,
            message: "unknown field".into(),
        });
    }
    Ok(typed)
}

fn serde_path_like<T: DeserializeOwned>(value: &Value) -> Result<T, (String, String)> {
    serde_norway::from_value(value.clone()).map_err(|e| {
        // serde_norway reports the path inside the message when it has one.
        let msg = e.to_string();
        match msg.split_once(": ") {
            Some((path, rest)) if !path.contains(' ') => (path.to_string(), rest.to_string()),
            _ => ("(document)".to_string(), msg),
        }
    })
}

/// The first path present in `input` (with a non-null value) but missing
/// from `typed`.
fn unknown_field(input: &Value, typed: &Value, path: String) -> Option<String> {
    match (input, typed) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            for (k, v) in a {
                let key = k
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{k:?}"));
                let here = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                match b.get(k) {
                    None if v.is_null() => {}
                    None => return Some(here),
                    Some(w) => {
                        if let Some(f) = unknown_field(v, w, here) {
                            return Some(f);
                        }
                    }
                }
            }
            None
        }
        (Value::Sequence(a), Value::Sequence(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| unknown_field(v, w, format!("{path}[{i}]"))),
        (Value::Tagged(a), _) => unknown_field(&a.value, typed, path),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_files_keep_good_objects_next_to_bad_ones() {
        let text = "\
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/40}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: typo, namespace: x}
spec:
  podSelectr: {matchLabels: {app: db}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {containers: [{name: c}]}
status: {podIP: 10.1.0.1}
---
";
        let r = parse(text);
        assert_eq!(r.len(), 5);
        assert!(
            matches!(&r[0], Ok(Object::Namespace(n)) if n.labels["kubernetes.io/metadata.name"] == "x")
        );
        match &r[1] {
            Err(ManifestError::Invalid(e, 2)) => {
                assert_eq!(e.object, "NetworkPolicy x/bad");
                assert_eq!(e.field, "spec.ingress[0].from[0].ipBlock.cidr");
            }
            other => panic!("unexpected {other:?}"),
        }
        match &r[2] {
            Err(ManifestError::Decode { object, field, .. }) => {
                assert_eq!(object, "NetworkPolicy x/typo");
                assert_eq!(field, "spec.podSelectr");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            &r[3],
            Err(ManifestError::Unsupported { doc: 4, .. })
        ));
        assert!(matches!(&r[4], Ok(Object::Pod(p)) if p.ips.len() == 1));
    }

    #[test]
    fn nodes_give_internal_addresses_and_pod_cidrs() {
        let r = parse(
            "apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24, 'fd00:1::/64']}
status:
  addresses:
  - {type: Hostname, address: n1}
  - {type: ExternalIP, address: 203.0.113.9}
  - {type: InternalIP, address: 192.168.7.11}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
spec: {podCIDR: 10.244.2.7/24}
---
apiVersion: v1
kind: Node
metadata: {name: bad}
spec: {podCIDRs: [10.244.3.0/33]}
",
        );
        match &r[0] {
            Ok(Object::Node(n)) => {
                assert_eq!(n.name, "n1");
                assert_eq!(
                    n.addresses,
                    vec!["192.168.7.11".parse::<std::net::IpAddr>().unwrap()]
                );
                let want: Vec<ipnet::IpNet> = vec![
                    "10.244.1.0/24".parse().unwrap(),
                    "fd00:1::/64".parse().unwrap(),
                ];
                assert_eq!(n.pod_cidrs, want);
            }
            other => panic!("unexpected {other:?}"),
        }
        match &r[1] {
            // podCIDR alone, host bits cleared; no InternalIP yet
            Ok(Object::Node(n)) => {
                assert!(n.addresses.is_empty());
                assert_eq!(
                    n.pod_cidrs,
                    vec!["10.244.2.0/24".parse::<ipnet::IpNet>().unwrap()]
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        match &r[2] {
            Err(ManifestError::Invalid(e, 3)) => {
                assert_eq!(e.object, "Node bad");
                assert_eq!(e.field, "spec.podCIDRs[0]");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A rejected document still names its object, as a valid one would.
    #[test]
    fn rejected_documents_name_their_object() {
        let r = parse_with_ids(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelectr: {}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}\n---\nkind: NetworkPolicyy\nmetadata: {name: q}\n",
        );
        assert_eq!(r.len(), 3);
        let id = ObjectId {
            kind: "NetworkPolicy",
            namespace: Some("default".into()),
            name: "p".into(),
        };
        assert!(r[0].1.is_err());
        assert_eq!(r[0].0.as_ref(), Some(&id));
        assert_eq!(r[1].0.as_ref(), Some(&id));
        assert_eq!(r[1].1.as_ref().map(Object::id).ok(), Some(id));
        assert!(
            r[2].0.is_none() && r[2].1.is_err(),
            "an unsupported kind names nothing"
        );
    }

    #[test]
    fn lists_are_expanded() {
        let r = parse(
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n",
        );
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|o| o.is_ok()));
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let r = parse(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {ingress: [{ports: [{endPort: many}]}]}\n",
        );
        match &r[0] {
            Err(ManifestError::Decode { message, .. }) => {
                assert!(message.contains("invalid"), "{message}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
