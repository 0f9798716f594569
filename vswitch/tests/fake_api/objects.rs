//! Objects as the API server returns them (no kind/apiVersion in list
//! items, managed fields, creation times), and the small cluster most
//! tests start from.

use serde_json::{Value, json};

use super::Kind;

pub const CREATED: &str = "2024-05-01T10:00:00Z";

pub fn managed_fields() -> Value {
    json!([{
        "manager": "kubectl-client-side-apply",
        "operation": "Update",
        "apiVersion": "v1",
        "time": CREATED,
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}},
    }])
}

pub fn namespace(name: &str, labels: Value) -> Value {
    json!({
        "metadata": {
            "name": name,
            "uid": format!("uid-ns-{name}"),
            "labels": labels,
            "creationTimestamp": CREATED,
            "managedFields": managed_fields(),
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

pub fn pod_at(ns: &str, name: &str, labels: Value, ips: &[&str], created: &str) -> Value {
    let mut status = json!({
        "phase": "Running",
        "hostIP": "192.168.1.10",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": created}],
        "containerStatuses": [{
            "name": "app", "ready": true, "restartCount": 0,
            "image": "nginx:1.27", "imageID": "docker.io/library/nginx@sha256:00",
        }],
    });
    if let Some(first) = ips.first() {
        status["podIP"] = json!(first);
        status["podIPs"] = json!(ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>());
    }
    json!({
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": format!("uid-pod-{ns}-{name}"),
            "labels": labels,
            "creationTimestamp": created,
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\",\"kind\":\"Pod\"}",
            },
            "managedFields": managed_fields(),
        },
        "spec": {
            "nodeName": "node-a",
            "containers": [{
                "name": "app",
                "image": "nginx:1.27",
                "env": [{"name": "MODE", "value": "prod"}],
                "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
            }],
        },
        "status": status,
    })
}

pub fn pod(ns: &str, name: &str, labels: Value, ips: &[&str]) -> Value {
    pod_at(ns, name, labels, ips, CREATED)
}

pub fn allow_from_db(ns: &str, name: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-np-{name}"), "creationTimestamp": CREATED},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                "ports": [{"protocol": "TCP", "port": 80}],
            }],
        },
    })
}

pub fn policy_with_port(ns: &str, name: &str, port: i64) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": CREATED},
        "spec": {
            "podSelector": {},
            "ingress": [{"ports": [{"protocol": "TCP", "port": port}]}],
        },
    })
}

pub fn node(name: &str, spec: Value) -> Value {
    json!({
        "metadata": {"name": name, "uid": format!("uid-node-{name}"), "creationTimestamp": CREATED,
                     "labels": {"kubernetes.io/hostname": name}, "managedFields": managed_fields()},
        "spec": spec,
        "status": {
            "addresses": [{"type": "Hostname", "address": name},
                          {"type": "ExternalIP", "address": "203.0.113.7"},
                          {"type": "InternalIP", "address": "192.168.1.10"}],
            "images": [{"names": ["docker.io/library/nginx:1.27"], "sizeBytes": 72000000}],
        },
    })
}

/// A small cluster: two namespaces, pods (one in a namespace that has no
/// Namespace object, one host-network, one finished, one claiming another's
/// address), a valid policy and two the API server would refuse, two nodes.
pub fn objects() -> Vec<(Kind, Value)> {
    vec![
        (Kind::Namespaces, namespace("prod", json!({"team": "a"}))),
        (Kind::Namespaces, namespace("default", json!({}))),
        (
            Kind::Pods,
            pod(
                "prod",
                "web",
                json!({"app": "web"}),
                &["10.1.0.5", "fd00:1::5"],
            ),
        ),
        (
            Kind::Pods,
            pod("prod", "db", json!({"app": "db"}), &["10.1.0.6"]),
        ),
        (
            Kind::Pods,
            pod("ghost", "lost", json!({"app": "lost"}), &["10.1.0.7"]),
        ),
        (Kind::Pods, {
            let mut p = pod("default", "agent", json!({}), &["192.168.1.10"]);
            p["spec"]["hostNetwork"] = json!(true);
            p
        }),
        (Kind::Pods, {
            let mut p = pod("prod", "job", json!({"app": "job"}), &["10.1.0.5"]);
            p["status"]["phase"] = json!("Succeeded");
            p
        }),
        (
            Kind::Pods,
            pod_at(
                "prod",
                "copy",
                json!({"app": "copy"}),
                &["10.1.0.6"],
                "2024-05-02T10:00:00Z",
            ),
        ),
        (Kind::Policies, allow_from_db("prod", "allow-web")),
        (Kind::Policies, policy_with_port("prod", "bad-port", 99999)),
        (Kind::Policies, {
            let mut p = policy_with_port("prod", "bad-cidr", 80);
            p["spec"]["ingress"][0]["from"] = json!([{"ipBlock": {"cidr": "10.0.0.0/33"}}]);
            p
        }),
        (
            Kind::Nodes,
            node(
                "node-a",
                json!({"podCIDR": "10.1.0.0/24", "podCIDRs": ["10.1.0.0/24", "fd00:1::/64"]}),
            ),
        ),
        (
            Kind::Nodes,
            node("node-b", json!({"podCIDR": "10.1.1.0/24"})),
        ),
    ]
}

/// A ClusterIP Service as the API server returns it (with the fields a
/// proxy does not read: status, managed fields).
pub fn service(ns: &str, name: &str, cluster_ip: &str, ports: Value) -> Value {
    json!({
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("uid-svc-{ns}-{name}"),
            "managedFields": managed_fields(),
        },
        "spec": {
            "type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ports": ports, "selector": {"app": name}, "sessionAffinity": "None",
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    })
}

/// An EndpointSlice of `service` (IPv4) as the EndpointSlice controller
/// writes it: `endpoints` are (address, ready, serving, terminating, node).
pub fn endpoint_slice(
    ns: &str,
    name: &str,
    service: &str,
    ports: Value,
    endpoints: &[(&str, bool, bool, bool, &str)],
) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(a, ready, serving, terminating, node)| {
            json!({
                "addresses": [a],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("pod-{a}")},
                "zone": "z1",
            })
        })
        .collect();
    json!({
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("uid-eps-{ns}-{name}"),
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
            "managedFields": managed_fields(),
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": ports,
    })
}
