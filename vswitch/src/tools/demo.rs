//! `vswitchd demo`: the first thing a new user runs. A built-in small
//! cluster (the NetworkPolicy example of the Kubernetes documentation, as in
//! deploy/examples/seed-db) comes up behind the switch, every pod tries to
//! reach every other (and two hosts outside the cluster try too) on
//! 6379/TCP, then the example's policy is applied and they try again. Both
//! matrices come from real connection attempts, not from the policy engine.
//!
//! Where it may (root, or a user namespace with /dev/net/tun), each pod is
//! a network namespace behind a TAP port, probed with kernel sockets;
//! otherwise each pod is an in-process TCP/IP stack (smoltcp) behind an
//! in-memory port. It says which. Namespaces are removed at the end, also
//! after Ctrl-C.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};

use policy::manifest::{self, Object};
use policy::{Change, Cluster, Protocol};

use crate::tools::scenario::dataplane::DataplaneProber;
use crate::tools::scenario::format::External;
use crate::tools::scenario::netns::{NetnsProber, can_make_namespaces};
use crate::tools::scenario::run::{Attempt, Endpoint, Observed, Prober, endpoints};
use crate::tools::simulate::Matrix;
use vswitch_datapath::counters::Outcome;

const CLUSTER: &str = include_str!("../../../deploy/examples/seed-db/cluster.yaml");
const POLICY: &str = include_str!("../../../deploy/examples/seed-db/policy.yaml");
const PORT: u16 = 6379;

/// How the pods are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pods {
    /// Network namespaces if this process may create them, else in-process.
    Auto,
    /// Network namespaces behind TAP ports (root or a user namespace).
    Netns,
    /// In-process TCP/IP stacks (no privilege needed).
    InProcess,
}

fn built_in() -> Result<(Cluster, Change), String> {
    let mut cluster = Cluster::default();
    let mut policy = None;
    for o in manifest::parse(CLUSTER)
        .into_iter()
        .chain(manifest::parse(POLICY))
    {
        match o.map_err(|e| e.to_string())? {
            Object::Namespace(ns) => {
                cluster.namespaces.insert(ns.name.clone(), ns);
            }
            Object::Pod(p) => {
                cluster.pods.insert(p.key.clone(), p);
            }
            Object::NetworkPolicy(p) => policy = Some(Change::UpsertPolicy(p)),
            Object::HostNetworkPod(_) | Object::Node(_) => {}
        }
    }
    Ok((cluster, policy.ok_or("the built-in policy is missing")?))
}

fn externals() -> Vec<External> {
    let host = |name: &str, ip: [u8; 4]| External {
        name: name.into(),
        ipv4: Some(Ipv4Addr::from(ip)),
        ipv6: None,
        ports: vec![],
    };
    // inside 172.17.0.0/16 (allowed by the policy), and inside its except
    vec![
        host("office", [172, 17, 0, 5]),
        host("quarantined", [172, 17, 1, 5]),
    ]
}

/// Every endpoint tries every other on 6379/TCP; the matrix of what passed.
fn observe(prober: &mut dyn Prober, endpoints: &[Endpoint], title: &str) -> Matrix {
    let mut attempts = Vec::new();
    for from in endpoints {
        for to in endpoints {
            if from.name != to.name && !(from.pod.is_none() && to.pod.is_none()) {
                attempts.push(Attempt {
                    from,
                    to,
                    src: from.ips[0],
                    dst: to.ips[0],
                    protocol: Protocol::Tcp,
                    port: PORT,
                });
            }
        }
    }
    let results = prober.probe(&attempts);
    let index = |name: &str| endpoints.iter().position(|e| e.name == name).unwrap();
    let mut cells = vec![vec![None; endpoints.len()]; endpoints.len()];
    for (a, r) in attempts.iter().zip(results) {
        let ok = matches!(r, Observed::Verdict { allowed: true, .. });
        cells[index(&a.from.name)][index(&a.to.name)] = Some(ok);
    }
    Matrix {
        title: title.to_string(),
        pods: endpoints.iter().map(|e| e.name.clone()).collect(),
        cells,
    }
}

/// Runs the demo; `stop` is set by Ctrl-C (checked between steps, so that
/// what was created is removed).
pub fn run(pods: Pods, color: bool, stop: &AtomicBool) -> Result<(), String> {
    let (cluster, policy) = built_in()?;
    let mut prober: Box<dyn Prober> = match (pods, can_make_namespaces()) {
        (Pods::Netns, Err(e)) => return Err(format!("network namespaces: {e}")),
        (Pods::Netns | Pods::Auto, Ok(())) => {
            println!("pods: network namespaces behind TAP ports, probed with kernel TCP");
            Box::new(NetnsProber::default())
        }
        (Pods::Auto, Err(why)) => {
            println!("pods: in-process TCP/IP stacks (smoltcp) behind in-memory ports");
            println!("      (no network namespaces here: {why}; run as root for real ones)");
            Box::new(DataplaneProber::default())
        }
        (Pods::InProcess, _) => {
            println!("pods: in-process TCP/IP stacks (smoltcp) behind in-memory ports");
            Box::new(DataplaneProber::default())
        }
    };
    let externals = externals();
    println!(
        "cluster: {} namespaces, {} pods (the NetworkPolicy example of the Kubernetes documentation), \
         and two hosts outside: office 172.17.0.5, quarantined 172.17.1.5",
        cluster.namespaces.len(),
        cluster.pods.len()
    );
    prober.start(&cluster, &externals)?;
    let endpoints = endpoints(&cluster, &externals);
    if stop.load(Ordering::Relaxed) {
        return Ok(());
    }
    println!("\nBefore any NetworkPolicy: every pod accepts everything.");
    print!(
        "{}",
        observe(
            prober.as_mut(),
            &endpoints,
            &format!("{PORT}/TCP, no policy")
        )
        .render(color)
    );
    if stop.load(Ordering::Relaxed) {
        return Ok(());
    }
    println!(
        "\nApplying test-network-policy: role=db pods accept 6379/TCP only from \
         172.17.0.0/16 except 172.17.1.0/24, from namespaces labelled \
         project=myproject, and from role=frontend pods of their own namespace; \
         they may open only 5978/TCP to 10.0.0.0/24."
    );
    prober.change(&policy)?;
    print!(
        "{}",
        observe(
            prober.as_mut(),
            &endpoints,
            &format!("{PORT}/TCP, with test-network-policy")
        )
        .render(color)
    );
    if let Some(c) = prober.counters() {
        println!("\nDatapath counters (every frame counts once):");
        let shown = [
            (Outcome::FastForward, "forwarded by a flow-cache hit"),
            (
                Outcome::SlowForward,
                "forwarded after the slow path (parse, conntrack, policy)",
            ),
            (Outcome::PolicyDeny, "dropped: denied by NetworkPolicy"),
            (Outcome::Replied, "answered by the switch (ARP, NDP)"),
        ];
        for (o, what) in shown {
            println!("  {:>8}  {what}", c.get(o));
        }
        let other = c.outcome_total() - shown.iter().map(|(o, _)| c.get(*o)).sum::<u64>();
        println!("  {other:>8}  other outcomes");
        println!("  {:>8}  frames in all", c.outcome_total());
    }
    Ok(())
}
