//! Deterministic synthetic clusters: small random ones that hit every
//! NetworkPolicy feature (for property tests against the reference), large
//! realistic ones (for benchmarks), and random changes (for incremental
//! compilation tests). Seeded, so every failure can be replayed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::admin::{Action, AdminKey, AdminKind, AdminPeer, AdminPolicy, AdminRule, Subject, Tier};
use crate::labels::{Labels, Operator, Requirement, Selector};
use crate::model::{Change, Cluster, ContainerPort, Namespace, NodeInfo, Pod, PodKey, Protocol};
use crate::netpol::{IpBlock, NamespaceScope, Peer, Policy, PolicyKey, PortMatch, PortRule, Rule};
use crate::verdict::Flow;

/// xorshift64*: small, fast, and good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ----- small random clusters ----------------------------------------------

const KEYS: &[&str] = &["app", "tier", "env"];
const VALUES: &[&str] = &["a", "b", "c"];
const PORT_NAMES: &[&str] = &["web", "dns", "metrics"];
const NUMBERS: &[u16] = &[53, 80, 81, 443, 8080];

fn random_labels(rng: &mut Rng) -> Labels {
    let mut l = Labels::new();
    for k in KEYS {
        if rng.chance(60) {
            l.insert(k.to_string(), rng.pick(VALUES).to_string());
        }
    }
    l
}

fn random_selector(rng: &mut Rng) -> Selector {
    let mut s = Selector::default();
    if rng.chance(40) {
        return s; // empty: everything
    }
    if rng.chance(60) {
        s.match_labels
            .insert(rng.pick(KEYS).to_string(), rng.pick(VALUES).to_string());
    }
    if rng.chance(50) {
        let operator = *rng.pick(&[
            Operator::In,
            Operator::NotIn,
            Operator::Exists,
            Operator::DoesNotExist,
        ]);
        let values = match operator {
            Operator::In | Operator::NotIn => (0..1 + rng.below(2))
                .map(|_| rng.pick(VALUES).to_string())
                .collect(),
            _ => Default::default(),
        };
        s.match_expressions.push(Requirement {
            key: rng.pick(KEYS).to_string(),
            operator,
            values,
        });
    }
    s
}

fn v4(ns: usize, pod: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, ns as u8, 10 + pod as u8)
}

fn v6(ns: usize, pod: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, ns as u16, 0, 0, 0, 0x10 + pod as u16)
}

fn random_pod(rng: &mut Rng, ns: &str, ns_index: usize, index: usize) -> Pod {
    let mut ips = Vec::new();
    if rng.chance(90) {
        ips.push(IpAddr::V4(v4(ns_index, index)));
    }
    if rng.chance(50) || ips.is_empty() {
        ips.push(IpAddr::V6(v6(ns_index, index)));
    }
    let mut ports = Vec::new();
    for name in PORT_NAMES {
        if rng.chance(50) {
            ports.push(ContainerPort {
                name: Some(name.to_string()),
                port: *rng.pick(NUMBERS),
                protocol: *rng.pick(&[Protocol::Tcp, Protocol::Udp, Protocol::Sctp]),
            });
        }
    }
    Pod {
        key: PodKey::new(ns, format!("p{index}")),
        labels: random_labels(rng),
        ips,
        ports,
    }
}

fn random_block(rng: &mut Rng) -> IpBlock {
    let (cidr, excepts): (&str, &[&str]) = *rng.pick(&[
        (
            "10.0.0.0/8",
            &["10.0.1.0/24", "10.0.2.0/24", "10.0.0.16/28"][..],
        ),
        ("10.0.1.0/24", &["10.0.1.10/31", "10.0.1.12/32"][..]),
        ("10.0.0.0/16", &["10.0.3.0/24"][..]),
        ("0.0.0.0/0", &["10.0.0.0/8", "192.0.2.0/24"][..]),
        ("192.0.2.0/24", &["192.0.2.128/25"][..]),
        ("fd00::/16", &["fd00:0:0:1::/64", "fd00:0:0:2::/64"][..]),
        ("fd00:0:0:1::/64", &["fd00:0:0:1::10/127"][..]),
        ("::/0", &["fd00::/16"][..]),
    ]);
    let mut except: Vec<IpNet> = excepts
        .iter()
        .filter(|_| rng.chance(50))
        .map(|e| e.parse().expect("cidr"))
        .collect();
    except.sort();
    IpBlock {
        cidr: cidr.parse().expect("cidr"),
        except,
    }
}

fn random_peer(rng: &mut Rng, own_ns: &str) -> Peer {
    match rng.below(4) {
        0 => Peer::IpBlock(random_block(rng)),
        1 => Peer::Pods {
            namespaces: NamespaceScope::Own(own_ns.to_string()),
            pods: random_selector(rng),
        },
        2 => Peer::Pods {
            namespaces: NamespaceScope::Selector(random_selector(rng)),
            pods: Selector::everything(),
        },
        _ => Peer::Pods {
            namespaces: NamespaceScope::Selector(random_selector(rng)),
            pods: random_selector(rng),
        },
    }
}

fn random_port(rng: &mut Rng) -> PortRule {
    let protocol = *rng.pick(&[Protocol::Tcp, Protocol::Tcp, Protocol::Udp, Protocol::Sctp]);
    let port = match rng.below(4) {
        0 => PortMatch::All,
        1 => PortMatch::Named(rng.pick(PORT_NAMES).to_string()),
        2 => {
            let lo = *rng.pick(NUMBERS);
            PortMatch::Range(lo, lo + rng.below(600) as u16)
        }
        _ => {
            let p = *rng.pick(NUMBERS);
            PortMatch::Range(p, p)
        }
    };
    PortRule { protocol, port }
}

fn random_rules(rng: &mut Rng, own_ns: &str) -> Vec<Rule> {
    (0..rng.below(4))
        .map(|_| Rule {
            peers: (0..rng.below(3))
                .map(|_| random_peer(rng, own_ns))
                .collect(),
            ports: (0..rng.below(3)).map(|_| random_port(rng)).collect(),
        })
        .collect()
}

/// A random policy named `name` in `namespace`.
pub fn random_policy(rng: &mut Rng, namespace: &str, name: &str) -> Policy {
    let (ingress, egress) = match rng.below(4) {
        0 => (true, false),
        1 => (false, true),
        _ => (true, true),
    };
    Policy {
        key: PolicyKey::new(namespace, name),
        pod_selector: random_selector(rng),
        ingress: ingress.then(|| random_rules(rng, namespace)),
        egress: egress.then(|| random_rules(rng, namespace)),
    }
}

/// Addresses of the random clusters' nodes (outside the pods' ranges, some
/// inside ipBlocks and networks).
const NODE_ADDRS: &[&str] = &["192.0.2.5", "10.0.3.3", "fd00:0:0:9::1", "203.0.113.9"];

fn random_node(rng: &mut Rng, index: usize) -> NodeInfo {
    NodeInfo {
        name: format!("node{index}"),
        labels: random_labels(rng),
        addresses: NODE_ADDRS
            .iter()
            .filter(|_| rng.chance(40))
            .map(|a| a.parse().expect("ip"))
            .collect(),
    }
}

fn random_admin_peer(rng: &mut Rng, egress: bool) -> AdminPeer {
    match rng.below(if egress { 5 } else { 3 }) {
        0 => AdminPeer::Namespaces(random_selector(rng)),
        1 | 2 => AdminPeer::Pods {
            namespaces: random_selector(rng),
            pods: random_selector(rng),
        },
        3 => {
            let nets = [
                "10.0.0.0/16",
                "10.0.1.0/24",
                "10.0.1.10/32",
                "192.0.2.0/25",
                "0.0.0.0/0",
                "fd00::/16",
                "fd00:0:0:9::/64",
            ];
            AdminPeer::Networks(
                (0..1 + rng.below(2))
                    .map(|_| rng.pick(&nets).parse().expect("cidr"))
                    .collect(),
            )
        }
        _ => AdminPeer::Nodes(random_selector(rng)),
    }
}

fn random_admin_rules(rng: &mut Rng, egress: bool, baseline_v1: bool) -> Vec<AdminRule> {
    (0..rng.below(4))
        .map(|i| {
            let action = if baseline_v1 {
                *rng.pick(&[Action::Accept, Action::Deny])
            } else {
                *rng.pick(&[Action::Accept, Action::Deny, Action::Pass])
            };
            let unknown = rng.chance(8);
            let ports = match rng.below(5) {
                0 | 1 => None,
                _ if unknown && rng.chance(50) => Some(vec![]),
                _ => Some((0..1 + rng.below(2)).map(|_| random_port(rng)).collect()),
            };
            AdminRule {
                name: rng.chance(50).then(|| format!("r{i}")),
                action,
                peers: (0..1 + rng.below(2))
                    .map(|_| random_admin_peer(rng, egress))
                    .collect(),
                ports,
                unknown,
            }
        })
        .collect()
}

/// A random admin policy of any of the three kinds.
pub fn random_admin_policy(rng: &mut Rng, name: &str) -> AdminPolicy {
    let kind = *rng.pick(&[
        AdminKind::ClusterNetworkPolicy,
        AdminKind::ClusterNetworkPolicy,
        AdminKind::AdminNetworkPolicy,
        AdminKind::BaselineAdminNetworkPolicy,
    ]);
    let tier = match kind {
        AdminKind::ClusterNetworkPolicy => *rng.pick(&[Tier::Admin, Tier::Baseline]),
        AdminKind::AdminNetworkPolicy => Tier::Admin,
        AdminKind::BaselineAdminNetworkPolicy => Tier::Baseline,
    };
    let v1_baseline = kind == AdminKind::BaselineAdminNetworkPolicy;
    let subject = if rng.chance(50) {
        Subject::Namespaces(random_selector(rng))
    } else {
        Subject::Pods {
            namespaces: random_selector(rng),
            pods: random_selector(rng),
        }
    };
    AdminPolicy {
        key: AdminKey::new(kind, name),
        tier,
        // few values, so that ties (ordered by name, then kind) happen
        priority: if v1_baseline { 0 } else { rng.below(3) as u32 },
        subject,
        ingress: random_admin_rules(rng, false, v1_baseline),
        egress: random_admin_rules(rng, true, v1_baseline),
    }
}

/// A small random cluster: 1-3 namespaces, up to 12 pods, up to 6 policies,
/// and (in two clusters of three) up to 4 admin policies and 3 nodes.
pub fn random_cluster(rng: &mut Rng) -> Cluster {
    let mut c = Cluster::default();
    let namespaces = 1 + rng.below(3);
    for n in 0..namespaces {
        let name = format!("n{n}");
        c.namespaces
            .insert(name.clone(), Namespace::new(name, random_labels(rng)));
    }
    for i in 0..rng.below(13) {
        let n = rng.below(namespaces);
        let pod = random_pod(rng, &format!("n{n}"), n, i);
        c.pods.insert(pod.key.clone(), pod);
    }
    for i in 0..rng.below(7) {
        let ns = format!("n{}", rng.below(namespaces));
        let p = random_policy(rng, &ns, &format!("np{i}"));
        c.policies.insert(p.key.clone(), p);
    }
    if rng.chance(66) {
        for i in 0..rng.below(5) {
            let p = random_admin_policy(rng, &format!("ap{}", i % 3));
            c.admin_policies.insert(p.key.clone(), p);
        }
        for i in 0..rng.below(4) {
            let n = random_node(rng, i);
            c.nodes.insert(n.name.clone(), n);
        }
    }
    c
}

/// A random flow between the cluster's pods and a few outside addresses.
pub fn random_flow(rng: &mut Rng, c: &Cluster) -> Flow {
    let v6 = rng.chance(40);
    let mut candidates: Vec<IpAddr> = c
        .pods
        .values()
        .flat_map(|p| p.ips.iter().copied())
        .filter(|ip| ip.is_ipv6() == v6)
        .collect();
    let outside: &[&str] = if v6 {
        &["fd00:0:0:1::11", "2001:db8::1", "fd00:0:0:9::1"]
    } else {
        &[
            "10.0.1.11",
            "192.0.2.200",
            "192.0.2.5",
            "10.0.3.3",
            "203.0.113.9",
        ]
    };
    candidates.extend(outside.iter().map(|s| s.parse::<IpAddr>().expect("ip")));
    let src = *rng.pick(&candidates);
    let dst = *rng.pick(&candidates);
    let protocol = *rng.pick(&[
        Protocol::Tcp,
        Protocol::Tcp,
        Protocol::Udp,
        Protocol::Sctp,
        Protocol::Other(1),
    ]);
    let dst_port = match protocol {
        Protocol::Other(_) => 0,
        _ if rng.chance(80) => *rng.pick(NUMBERS),
        _ => rng.pick(NUMBERS) + rng.below(700) as u16,
    };
    Flow {
        src,
        dst,
        protocol,
        dst_port,
    }
}

/// A random change that keeps the cluster valid (pods only in existing
/// namespaces, addresses unique).
pub fn random_change(rng: &mut Rng, c: &Cluster) -> Change {
    let ns_names: Vec<&String> = c.namespaces.keys().collect();
    match rng.below(10) {
        0 if ns_names.len() < 4 => {
            let name = format!("n{}", ns_names.len() + rng.below(3));
            Change::UpsertNamespace(Namespace::new(name, random_labels(rng)))
        }
        1 => {
            let ns = rng.pick(&ns_names);
            Change::UpsertNamespace(Namespace::new(ns.as_str(), random_labels(rng)))
        }
        2 if ns_names.len() > 1 && rng.chance(30) => {
            Change::DeleteNamespace(rng.pick(&ns_names).to_string())
        }
        3 | 4 => {
            // relabel, move or create a pod; its addresses follow its index
            let index = rng.below(14);
            let ns_index = ns_names
                .iter()
                .position(|n| n.as_str() == format!("n{}", rng.below(4)))
                .unwrap_or(0);
            let ns = ns_names[ns_index].clone();
            let ns_number: usize = ns[1..].parse().unwrap_or(0);
            let mut pod = random_pod(rng, &ns, ns_number, index);
            // keep addresses unique: reuse the old pod's when replacing it
            if let Some(old) = c.pods.get(&pod.key)
                && rng.chance(50)
            {
                pod.ips = old.ips.clone();
                pod.ports = old.ports.clone();
            }
            let taken = c
                .pods
                .values()
                .any(|p| p.key != pod.key && p.ips.iter().any(|ip| pod.ips.contains(ip)));
            if taken {
                match c
                    .pods
                    .values()
                    .find(|p| p.ips.iter().any(|ip| pod.ips.contains(ip)))
                {
                    Some(owner) => Change::DeletePod(owner.key.clone()),
                    None => Change::UpsertPod(pod),
                }
            } else {
                Change::UpsertPod(pod)
            }
        }
        5 if !c.pods.is_empty() => {
            let keys: Vec<&PodKey> = c.pods.keys().collect();
            Change::DeletePod((*rng.pick(&keys)).clone())
        }
        6 if !c.policies.is_empty() => {
            let keys: Vec<&PolicyKey> = c.policies.keys().collect();
            Change::DeletePolicy((*rng.pick(&keys)).clone())
        }
        7 if rng.chance(60) => {
            let name = format!("ap{}", rng.below(3));
            Change::UpsertAdminPolicy(random_admin_policy(rng, &name))
        }
        7 if !c.admin_policies.is_empty() => {
            let keys: Vec<&AdminKey> = c.admin_policies.keys().collect();
            Change::DeleteAdminPolicy((*rng.pick(&keys)).clone())
        }
        8 if rng.chance(50) => {
            if !c.nodes.is_empty() && rng.chance(30) {
                let names: Vec<&String> = c.nodes.keys().collect();
                Change::DeleteNode((*rng.pick(&names)).clone())
            } else {
                let i = rng.below(3);
                Change::UpsertNode(random_node(rng, i))
            }
        }
        _ => {
            let ns = rng.pick(&ns_names).to_string();
            let name = format!("np{}", rng.below(8));
            Change::UpsertPolicy(random_policy(rng, &ns, &name))
        }
    }
}

// ----- large realistic clusters --------------------------------------------

/// The shape of a benchmark cluster.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub pods: usize,
    pub policies: usize,
    pub namespaces: usize,
    /// Applications per namespace (pods of one app and version share labels).
    pub apps: usize,
}

impl Scale {
    pub fn new(pods: usize, policies: usize) -> Scale {
        Scale {
            pods,
            policies,
            namespaces: (pods / 50).max(1),
            apps: 10,
        }
    }
}

/// A cluster shaped like a real multi-tenant one: `namespaces` namespaces in
/// 10 teams, pods labelled app/version/tier, and policies that select an app
/// and allow from apps of the same namespace, from apps of the same team's
/// namespaces, from monitoring, and from CIDRs, on numeric, ranged and named
/// ports; every tenth policy is a namespace-wide default deny.
pub fn scale_cluster(scale: Scale, seed: u64) -> Cluster {
    let mut rng = Rng::new(seed);
    let mut c = Cluster::default();
    let tiers = ["web", "api", "db"];
    for n in 0..scale.namespaces {
        let mut labels = Labels::new();
        labels.insert("team".into(), format!("t{}", n % 10));
        labels.insert("env".into(), if n % 3 == 0 { "prod" } else { "dev" }.into());
        let name = format!("ns{n}");
        c.namespaces
            .insert(name.clone(), Namespace::new(name, labels));
    }
    for i in 0..scale.pods {
        let n = i % scale.namespaces;
        let app = (i / scale.namespaces) % scale.apps;
        let mut labels = Labels::new();
        labels.insert("app".into(), format!("app{app}"));
        labels.insert("version".into(), format!("v{}", rng.below(2)));
        labels.insert("tier".into(), tiers[app % 3].into());
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + i as u32 + 1));
        let pod = Pod {
            key: PodKey::new(format!("ns{n}"), format!("pod{i}")),
            labels,
            ips: vec![ip],
            ports: vec![
                ContainerPort {
                    name: Some("http".into()),
                    port: 8080,
                    protocol: Protocol::Tcp,
                },
                ContainerPort {
                    name: Some("metrics".into()),
                    port: 9090,
                    protocol: Protocol::Tcp,
                },
            ],
        };
        c.pods.insert(pod.key.clone(), pod);
    }
    for i in 0..scale.policies {
        let n = rng.below(scale.namespaces);
        let ns = format!("ns{n}");
        let p = scale_policy(&mut rng, scale, &ns, &format!("np{i}"), i % 10 == 0);
        c.policies.insert(p.key.clone(), p);
    }
    c
}

fn app_selector(app: usize) -> Selector {
    let mut s = Selector::default();
    s.match_labels.insert("app".into(), format!("app{app}"));
    s
}

/// One policy of a benchmark cluster.
pub fn scale_policy(rng: &mut Rng, scale: Scale, ns: &str, name: &str, deny_all: bool) -> Policy {
    let key = PolicyKey::new(ns, name);
    if deny_all {
        return Policy {
            key,
            pod_selector: Selector::everything(),
            ingress: Some(vec![]),
            egress: None,
        };
    }
    let mut team = Selector::default();
    team.match_labels
        .insert("team".into(), format!("t{}", rng.below(10)));
    let mut monitoring = Selector::default();
    monitoring.match_expressions.push(Requirement {
        key: "env".into(),
        operator: Operator::In,
        values: ["prod".to_string()].into(),
    });
    let ports = |rng: &mut Rng| match rng.below(3) {
        0 => vec![PortRule {
            protocol: Protocol::Tcp,
            port: PortMatch::Named("http".into()),
        }],
        1 => vec![PortRule {
            protocol: Protocol::Tcp,
            port: PortMatch::Range(8000, 8100),
        }],
        _ => vec![
            PortRule {
                protocol: Protocol::Tcp,
                port: PortMatch::Range(443, 443),
            },
            PortRule {
                protocol: Protocol::Udp,
                port: PortMatch::Range(53, 53),
            },
        ],
    };
    let ingress = vec![
        Rule {
            peers: vec![Peer::Pods {
                namespaces: NamespaceScope::Own(ns.to_string()),
                pods: app_selector(rng.below(scale.apps)),
            }],
            ports: ports(rng),
        },
        Rule {
            peers: vec![
                Peer::Pods {
                    namespaces: NamespaceScope::Selector(team),
                    pods: app_selector(rng.below(scale.apps)),
                },
                {
                    let b = 16 + rng.below(16);
                    Peer::IpBlock(IpBlock {
                        cidr: format!("172.{b}.0.0/16").parse().expect("cidr"),
                        except: vec![format!("172.{b}.1.0/24").parse().expect("cidr")],
                    })
                },
            ],
            ports: ports(rng),
        },
        Rule {
            peers: vec![Peer::Pods {
                namespaces: NamespaceScope::Selector(monitoring),
                pods: app_selector(0),
            }],
            ports: vec![PortRule {
                protocol: Protocol::Tcp,
                port: PortMatch::Named("metrics".into()),
            }],
        },
    ];
    let egress = rng.chance(50).then(|| {
        vec![
            Rule {
                peers: vec![Peer::Pods {
                    namespaces: NamespaceScope::Own(ns.to_string()),
                    pods: app_selector(rng.below(scale.apps)),
                }],
                ports: ports(rng),
            },
            Rule {
                peers: vec![Peer::IpBlock(IpBlock {
                    cidr: "0.0.0.0/0".parse().expect("cidr"),
                    except: vec!["10.0.0.0/8".parse().expect("cidr")],
                })],
                ports: vec![],
            },
        ]
    });
    Policy {
        key,
        pod_selector: app_selector(rng.below(scale.apps)),
        ingress: Some(ingress),
        egress,
    }
}

/// `per_tier` admin policies for each tier (ClusterNetworkPolicies),
/// shaped like a platform team's: each selects the namespaces of a team or
/// an environment (or the pods of an app cluster-wide), and guards them:
/// deny from another team's namespaces, accept monitoring on its port, pass
/// the team's own traffic to NetworkPolicy, deny egress to a private range
/// except through a named gateway network, accept the nodes' API port.
/// Priorities spread over 0..1000, with some ties.
pub fn scale_admin_policies(scale: Scale, per_tier: usize, seed: u64) -> Vec<AdminPolicy> {
    let mut rng = Rng::new(seed);
    let label = |k: &str, v: String| {
        let mut s = Selector::default();
        s.match_labels.insert(k.into(), v);
        s
    };
    let mut out = Vec::new();
    for tier in [Tier::Admin, Tier::Baseline] {
        for i in 0..per_tier {
            let team = rng.below(10);
            let subject = match rng.below(3) {
                0 => Subject::Namespaces(label("team", format!("t{team}"))),
                1 => Subject::Namespaces(label(
                    "env",
                    if rng.chance(50) { "prod" } else { "dev" }.into(),
                )),
                _ => Subject::Pods {
                    namespaces: Selector::everything(),
                    pods: label("app", format!("app{}", rng.below(scale.apps))),
                },
            };
            let tcp = |lo: u16, hi: u16| PortRule {
                protocol: Protocol::Tcp,
                port: PortMatch::Range(lo, hi),
            };
            let rule = |name: &str, action: Action, peers: Vec<AdminPeer>, ports| AdminRule {
                name: Some(name.into()),
                action,
                peers,
                ports,
                unknown: false,
            };
            let other = (team + 1 + rng.below(9)) % 10;
            let ingress = vec![
                rule(
                    "monitoring",
                    Action::Accept,
                    vec![AdminPeer::Pods {
                        namespaces: label("env", "prod".into()),
                        pods: label("app", "app0".into()),
                    }],
                    Some(vec![PortRule {
                        protocol: Protocol::Tcp,
                        port: PortMatch::Named("metrics".into()),
                    }]),
                ),
                rule(
                    "other-team",
                    Action::Deny,
                    vec![AdminPeer::Namespaces(label("team", format!("t{other}")))],
                    None,
                ),
                rule(
                    "own-team",
                    Action::Pass,
                    vec![AdminPeer::Namespaces(label("team", format!("t{team}")))],
                    Some(vec![tcp(8000, 8100), tcp(443, 443)]),
                ),
            ];
            let b = 16 + rng.below(16);
            let egress = vec![
                rule(
                    "api-server",
                    Action::Accept,
                    vec![AdminPeer::Nodes(label(
                        "node-role.kubernetes.io/control-plane",
                        "".into(),
                    ))],
                    Some(vec![tcp(6443, 6443)]),
                ),
                rule(
                    "gateway",
                    Action::Accept,
                    vec![AdminPeer::Networks(vec![
                        format!("172.{b}.1.0/24").parse().expect("cidr"),
                    ])],
                    None,
                ),
                rule(
                    "private",
                    Action::Deny,
                    vec![AdminPeer::Networks(vec![
                        "172.16.0.0/12".parse().expect("cidr"),
                    ])],
                    None,
                ),
            ];
            out.push(AdminPolicy {
                key: AdminKey::new(
                    AdminKind::ClusterNetworkPolicy,
                    format!(
                        "{}-{i}",
                        if tier == Tier::Admin {
                            "admin"
                        } else {
                            "baseline"
                        }
                    ),
                ),
                tier,
                priority: (rng.below(100) * 10) as u32,
                subject,
                ingress,
                egress,
            });
        }
    }
    out
}
