//! The manifests in deploy/: every document parses strictly (unknown fields
//! rejected) with the Kubernetes API types; the ClusterRole grants exactly
//! the requests vswitchd makes (`kube::API_ACCESS`, which the Kubernetes
//! source's tests check against the requests they see); the DaemonSet uses
//! that ServiceAccount, only the capabilities vswitchd needs, the devices
//! and folders it uses, and commands that vswitchd's own parser accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use policy::manifest::strict;
use vswitch::daemon::cli::{Cli, Cmd};
use vswitch::daemon::kube::API_ACCESS;

#[derive(Default)]
struct Deploy {
    accounts: Vec<ServiceAccount>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemonsets: Vec<DaemonSet>,
    configmaps: Vec<ConfigMap>,
}

fn load() -> Deploy {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut d = Deploy::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let value = <serde_norway::Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            let at = |e: policy::manifest::ManifestError| format!("{}: {e}", f.display());
            match kind.as_str() {
                "ServiceAccount" => d
                    .accounts
                    .push(strict(i + 1, &kind, &value).unwrap_or_else(|e| panic!("{}", at(e)))),
                "ClusterRole" => d
                    .roles
                    .push(strict(i + 1, &kind, &value).unwrap_or_else(|e| panic!("{}", at(e)))),
                "ClusterRoleBinding" => d
                    .bindings
                    .push(strict(i + 1, &kind, &value).unwrap_or_else(|e| panic!("{}", at(e)))),
                "DaemonSet" => d
                    .daemonsets
                    .push(strict(i + 1, &kind, &value).unwrap_or_else(|e| panic!("{}", at(e)))),
                "ConfigMap" => d
                    .configmaps
                    .push(strict(i + 1, &kind, &value).unwrap_or_else(|e| panic!("{}", at(e)))),
                other => panic!("{}: unexpected kind {other:?}", f.display()),
            }
        }
    }
    d
}

#[test]
fn the_cluster_role_grants_exactly_what_vswitchd_requests() {
    let d = load();
    assert_eq!(d.roles.len(), 1);
    let mut granted = BTreeSet::new();
    for rule in d.roles[0].rules.as_ref().unwrap() {
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let needed: BTreeSet<(String, String, String)> = API_ACCESS
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect();
    let missing: Vec<_> = needed.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&needed).collect();
    assert!(missing.is_empty(), "not granted: {missing:?}");
    assert!(extra.is_empty(), "granted but never used: {extra:?}");
    // the binding gives that role to the DaemonSet's account
    let sa = &d.accounts[0].metadata;
    let b = &d.bindings[0];
    assert_eq!(b.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&b.role_ref.name), d.roles[0].metadata.name.as_ref());
    let subject = &b.subjects.as_ref().unwrap()[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), sa.name.as_ref());
    assert_eq!(subject.namespace, sa.namespace);
    let ds = &d.daemonsets[0];
    let pod = ds.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name, sa.name);
    assert_eq!(ds.metadata.namespace, sa.namespace);
}

/// The container's command with `$(VAR)` replaced as the kubelet would.
fn command(c: &Container, config: &BTreeMap<String, String>) -> Vec<String> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for e in c.env.as_deref().unwrap_or_default() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => {
                if let Some(r) = &from.config_map_key_ref {
                    config
                        .get(&r.key)
                        .unwrap_or_else(|| panic!("ConfigMap key {} is missing", r.key))
                        .clone()
                } else {
                    let field = from.field_ref.as_ref().map(|f| f.field_path.as_str());
                    match field {
                        Some("spec.nodeName") => "node-1".into(),
                        Some("status.hostIP") => "192.0.2.10".into(),
                        other => panic!("unexpected fieldRef {other:?}"),
                    }
                }
            }
            _ => String::new(),
        };
        vars.insert(e.name.clone(), value);
    }
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .map(|a| {
            let mut a = a.clone();
            for (k, v) in &vars {
                a = a.replace(&format!("$({k})"), v);
            }
            assert!(!a.contains("$("), "unresolved variable in {a}");
            a
        })
        .collect()
}

#[test]
fn the_daemonset_runs_vswitchd_with_what_it_needs_and_no_more() {
    let d = load();
    let config = d.configmaps[0].data.clone().unwrap_or_default();
    let ds = &d.daemonsets[0];
    let pod = ds.spec.template.spec.as_ref().unwrap();
    assert_eq!(
        pod.host_network,
        Some(true),
        "the node TAP and routes are the host's"
    );
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "a network plugin runs on every node"
    );
    let main = &pod.containers[0];
    let sc = main.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.as_ref().unwrap();
    let add: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(add, BTreeSet::from(["NET_ADMIN", "SYS_ADMIN"]));
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    // the devices and folders vswitchd uses
    let volumes: BTreeMap<String, String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.clone(), v.host_path.as_ref()?.path.clone())))
        .collect();
    let mounts: BTreeMap<String, String> = main
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.mount_path.clone(), volumes[&m.name].clone()))
        .collect();
    for (path, host) in [
        ("/dev/net/tun", "/dev/net/tun"),
        ("/var/run/netns", "/var/run/netns"),
        ("/run/vswitch", "/run/vswitch"),
        ("/var/lib/vswitch", "/var/lib/vswitch"),
    ] {
        assert_eq!(mounts.get(path).map(String::as_str), Some(host), "{path}");
    }
    // the commands parse with vswitchd's own command line
    let run = command(main, &config);
    match Cli::try_parse_from(&run)
        .unwrap_or_else(|e| panic!("{run:?}: {e}"))
        .command
    {
        Cmd::Run {
            kube,
            metrics_addr,
            socket,
            node_name,
            overlay_addr,
            cluster_cidrs,
            service_proxy,
            service_cidrs,
            mtu,
            ..
        } => {
            assert!(kube, "the DaemonSet watches the API server");
            assert_eq!(node_name.as_deref(), Some("node-1"));
            assert_eq!(
                overlay_addr,
                Some("192.0.2.10".parse().unwrap()),
                "the overlay binds the node's address"
            );
            assert_eq!(cluster_cidrs.len(), 1);
            assert_eq!(service_proxy, vswitch::daemon::cli::ServiceProxy::Switch);
            assert_eq!(
                service_cidrs,
                vec!["10.96.0.0/12".parse::<ipnet::IpNet>().unwrap()],
                "the ConfigMap's Service range"
            );
            assert_eq!(mtu, Some(1450), "room for VXLAN over IPv4");
            assert!(metrics_addr.is_some());
            assert_eq!(socket, PathBuf::from(vswitch_cni::proto::DEFAULT_SOCKET));
        }
        _ => panic!("the main container runs `vswitchd run`"),
    }
    let init = &pod.init_containers.as_ref().unwrap()[0];
    let install = command(init, &config);
    match Cli::try_parse_from(&install)
        .unwrap_or_else(|e| panic!("{install:?}: {e}"))
        .command
    {
        Cmd::InstallCni {
            node,
            bin_dir,
            conf_dir,
            ..
        } => {
            assert_eq!(node.as_deref(), Some("node-1"));
            let host = |p: &PathBuf| {
                init.volume_mounts
                    .iter()
                    .flatten()
                    .find(|m| p.starts_with(&m.mount_path))
                    .map(|m| volumes[&m.name].clone())
            };
            assert_eq!(host(&bin_dir).as_deref(), Some("/opt/cni/bin"));
            assert_eq!(host(&conf_dir).as_deref(), Some("/etc/cni/net.d"));
        }
        _ => panic!("the init container runs `vswitchd install-cni`"),
    }
}
