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
//! after Ctrl-C (which stops the demo at the next step and says so).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use policy::manifest::{self, Object};
use policy::{Change, Cluster, Protocol};

use crate::tools::scenario::dataplane::DataplaneProber;
use crate::tools::scenario::format::External;
use crate::tools::scenario::netns::{NetnsError, NetnsProber, can_make_namespaces};
use crate::tools::scenario::run::{Attempt, Endpoint, Observed, Prober, ProberError, endpoints};
use crate::tools::simulate::Matrix;
use crate::tools::term;
use crate::{out, outln};
use vswitch_datapath::counters::{Counters, Outcome};

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

/// Why the demo stopped short.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the built-in example cluster: {0}")]
    BuiltIn(#[from] manifest::ManifestError),
    #[error("the built-in example cluster: its policy is missing")]
    NoPolicy,
    #[error(
        "--pods netns: no network namespaces here ({0}); run as root, or use --pods in-process"
    )]
    NoNamespaces(NetnsError),
    #[error("starting the pods: {0}")]
    Start(ProberError),
    #[error("applying test-network-policy: {0}")]
    Apply(ProberError),
    /// Ctrl-C (or SIGTERM): everything the demo made is gone by the time
    /// this is returned.
    #[error("interrupted; {0}")]
    Interrupted(&'static str),
}

fn built_in() -> Result<(Cluster, Change), DemoError> {
    let mut cluster = Cluster::default();
    let mut policy = None;
    for o in manifest::parse(CLUSTER)
        .into_iter()
        .chain(manifest::parse(POLICY))
    {
        match o? {
            Object::Namespace(ns) => {
                cluster.namespaces.insert(ns.name.clone(), ns);
            }
            Object::Pod(p) => {
                cluster.pods.insert(p.key.clone(), p);
            }
            Object::NetworkPolicy(p) => policy = Some(Change::UpsertPolicy(p)),
            Object::HostNetworkPod(_)
            | Object::Node(_)
            | Object::Service(_)
            | Object::EndpointSlice(_)
            | Object::AdminPolicy(_) => {}
        }
    }
    let policy = policy.ok_or(DemoError::NoPolicy)?;
    Ok((cluster, policy))
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
                    backends: None,
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

/// Whether to go on after a step: `Ok(true)` to go on, `Ok(false)` when
/// stdout was closed (`| head`: the reader has seen enough, so stop
/// quietly), `Err(Interrupted)` after Ctrl-C. Waits `pause` first, watching
/// `stop`.
fn go_on(stop: &AtomicBool, pause: Duration, cleaned: &'static str) -> Result<bool, DemoError> {
    let until = Instant::now() + pause;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(DemoError::Interrupted(cleaned));
        }
        if term::stdout_closed() {
            return Ok(false);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(true);
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

/// The demo's counters: the four outcomes a reader looks for, always, and
/// every other outcome that happened, by name.
fn counter_lines(c: &Counters) -> String {
    use std::fmt::Write as _;
    let main = [
        Outcome::FastForward,
        Outcome::SlowForward,
        Outcome::PolicyDeny,
        Outcome::Replied,
    ];
    let mut out = String::new();
    let width = Outcome::ALL
        .iter()
        .map(|o| o.name().len())
        .max()
        .unwrap_or(0);
    for o in main
        .into_iter()
        .chain(Outcome::ALL.into_iter().filter(|o| !main.contains(o)))
    {
        let n = c.get(o);
        if n > 0 || main.contains(&o) {
            let _ = writeln!(out, "  {n:>8}  {:<width$}  {}", o.name(), describe(o));
        }
    }
    let _ = writeln!(out, "  {:>8}  frames in all", c.outcome_total());
    out
}

/// What an outcome means, for a reader who does not know the datapath.
fn describe(o: Outcome) -> &'static str {
    match o {
        Outcome::FastForward => "forwarded by a flow-cache hit",
        Outcome::SlowForward => "forwarded after the slow path (parse, conntrack, policy)",
        Outcome::Replied => "answered by the switch (ARP, NDP, ICMP errors)",
        Outcome::PolicyDeny => "dropped: denied by NetworkPolicy",
        Outcome::Spoofed => "dropped: source MAC or IP is not the port's",
        Outcome::Malformed => "dropped: the frame does not parse",
        Outcome::NoRoute => "dropped: no port serves the destination",
        Outcome::TableFull => "dropped: the conntrack table is full",
        Outcome::TtlExpired => "dropped: TTL or hop limit expired",
        Outcome::FragmentUnknown => "dropped: a fragment whose first fragment is unknown",
        Outcome::Untracked => "dropped: not a connection start and not part of a tracked one",
        Outcome::NotReady => "dropped: the pod's policy is not installed yet",
        Outcome::Unsupported => {
            "dropped: traffic the switch does not carry (other ethertypes, \
             multicast it does not answer, DAD probes)"
        }
        Outcome::Forged => "dropped: an overlay packet from no known node",
        Outcome::NoNode => "dropped: in the cluster's pod range but on no known node",
        Outcome::TooBig => "dropped: too big for its output port",
        Outcome::ForgedIcmp => {
            "dropped: an ICMP error from where none about its connection can come"
        }
        Outcome::ShareFull => "dropped: the pod holds its conntrack share",
        Outcome::Refused => "refused: a Service without a usable endpoint (RST, ICMP)",
    }
}

/// Runs the demo. `stop` is set by Ctrl-C: the demo then stops at the next
/// step, removes what it made and returns [`DemoError::Interrupted`].
/// `pause`: how long to wait after each step. A closed stdout ends the demo
/// early and quietly.
pub fn run(
    pods: Pods,
    color: bool,
    stop: &Arc<AtomicBool>,
    pause: Duration,
) -> Result<(), DemoError> {
    let (cluster, policy) = built_in()?;
    let (mut prober, cleaned): (Box<dyn Prober>, &str) = match (pods, can_make_namespaces()) {
        (Pods::Netns, Err(e)) => return Err(DemoError::NoNamespaces(e)),
        (Pods::Netns | Pods::Auto, Ok(())) => {
            outln!("pods: network namespaces behind TAP ports, probed with kernel TCP");
            (
                Box::new(NetnsProber::default().stop_on(stop.clone())),
                "removed the demo's network namespaces and TAP devices",
            )
        }
        (Pods::Auto, Err(why)) => {
            outln!("pods: in-process TCP/IP stacks (smoltcp) behind in-memory ports");
            outln!("      (no network namespaces here: {why}; run as root for real ones)");
            (
                Box::new(DataplaneProber::default()),
                "stopped the in-process pods (nothing on the host to remove)",
            )
        }
        (Pods::InProcess, _) => {
            outln!("pods: in-process TCP/IP stacks (smoltcp) behind in-memory ports");
            (
                Box::new(DataplaneProber::default()),
                "stopped the in-process pods (nothing on the host to remove)",
            )
        }
    };
    // every return below drops the prober first: namespaces and TAP devices
    // are removed before the caller reports
    let step = || go_on(stop, pause, cleaned);
    let externals = externals();
    outln!(
        "cluster: {} namespaces, {} pods (the NetworkPolicy example of the Kubernetes documentation), \
         and two hosts outside: office 172.17.0.5, quarantined 172.17.1.5",
        cluster.namespaces.len(),
        cluster.pods.len()
    );
    prober
        .start(&cluster, &externals)
        .map_err(|e| match stop.load(Ordering::Relaxed) {
            true => DemoError::Interrupted(cleaned),
            false => DemoError::Start(e),
        })?;
    let endpoints = endpoints(&cluster, &externals);
    if !step()? {
        return Ok(());
    }
    let before = observe(
        prober.as_mut(),
        &endpoints,
        &format!("{PORT}/TCP, no policy"),
    );
    if !step()? {
        return Ok(());
    }
    outln!("\nBefore any NetworkPolicy: every pod accepts everything.");
    out!("{}", before.render(color));
    outln!(
        "\nApplying test-network-policy: role=db pods accept 6379/TCP only from \
         172.17.0.0/16 except 172.17.1.0/24, from namespaces labelled \
         project=myproject, and from role=frontend pods of their own namespace; \
         they may open only 5978/TCP to 10.0.0.0/24."
    );
    prober.change(&policy).map_err(DemoError::Apply)?;
    if !step()? {
        return Ok(());
    }
    let after = observe(
        prober.as_mut(),
        &endpoints,
        &format!("{PORT}/TCP, with test-network-policy"),
    );
    if !step()? {
        return Ok(());
    }
    out!("{}", after.render(color));
    if let Some(c) = prober.counters() {
        outln!("\nDatapath counters (every frame counts once):");
        out!("{}", counter_lines(&c));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_name_every_outcome_that_happened() {
        let mut c = Counters::default();
        c.received(Outcome::SlowForward, 1, 60);
        c.received(Outcome::Unsupported, 2, 120);
        let text = counter_lines(&c);
        assert!(!text.contains("other outcomes"), "{text}");
        let line = text
            .lines()
            .find(|l| l.contains("unsupported"))
            .expect("the unsupported line");
        assert!(line.trim_start().starts_with("2 "), "{text}");
        assert!(line.contains("traffic the switch does not carry"), "{text}");
        // the main four are always there, others only when they happened
        assert!(text.contains("policy_deny"), "{text}");
        assert!(!text.contains("spoofed"), "{text}");
        assert_eq!(text.lines().last().map(str::trim), Some("3  frames in all"));
    }
}
