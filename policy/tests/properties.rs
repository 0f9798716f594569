//! The compiled engine against the reference evaluator, over random clusters,
//! policies, flows and change sequences. Seeds are fixed and printed, so a
//! failure can be replayed with `SEED=n`.

use policy::synth::{self, Rng};
use policy::{Action, Cluster, Engine, Explanation, Reason, Tier, reference};

/// How many sides each kind of rule decided, to show the generator reaches
/// every tier and action.
#[derive(Debug, Default)]
struct Tally {
    allowed: usize,
    /// Admin tier accepts and denies, Baseline tier accepts and denies.
    tiers: [usize; 4],
    /// NetworkPolicy decided a side of a pod some admin policy selects.
    after_pass_or_no_match: usize,
}

/// `SEED=N` reruns one seed; `SEED=A..B` runs a range (for long runs).
fn seeds(default_count: u64) -> Vec<u64> {
    match std::env::var("SEED") {
        Ok(s) => match s.split_once("..") {
            Some((a, b)) => {
                let n = |x: &str| x.parse::<u64>().expect("SEED is N or A..B");
                (n(a)..n(b)).collect()
            }
            None => vec![s.parse().expect("SEED is N or A..B")],
        },
        Err(_) => (1..=default_count).collect(),
    }
}

fn check_flows(
    engine: &Engine,
    cluster: &Cluster,
    rng: &mut Rng,
    n: usize,
    context: &str,
    tally: &mut Tally,
) {
    for _ in 0..n {
        let flow = synth::random_flow(rng, cluster);
        let want: Explanation = reference::evaluate(cluster, &flow);
        let got = engine.explain(&flow);
        assert_eq!(got, want, "{context}: flow {flow:?}\ncluster: {cluster:#?}");
        assert_eq!(engine.verdict(&flow).allowed(), want.allowed());
        tally.allowed += want.allowed() as usize;
        for side in [&want.egress, &want.ingress] {
            match side {
                Reason::Admin { tier, action, .. } => {
                    let i = match (tier, action) {
                        (Tier::Admin, Action::Accept) => 0,
                        (Tier::Admin, _) => 1,
                        (Tier::Baseline, Action::Accept) => 2,
                        (Tier::Baseline, _) => 3,
                    };
                    tally.tiers[i] += 1;
                }
                Reason::Allowed { .. } | Reason::Denied { .. }
                    if !cluster.admin_policies.is_empty() =>
                {
                    tally.after_pass_or_no_match += 1
                }
                _ => {}
            }
        }
    }
}

#[test]
fn compiled_verdicts_equal_the_reference() {
    let (mut tally, mut total) = (Tally::default(), 0);
    for seed in seeds(600) {
        let mut rng = Rng::new(seed);
        let cluster = synth::random_cluster(&mut rng);
        let engine = Engine::from_cluster(cluster.clone()).expect("valid cluster");
        let context = format!("seed {seed}");
        check_flows(&engine, &cluster, &mut rng, 200, &context, &mut tally);
        total += 200;
    }
    // The generator must produce both outcomes in earnest, or this proves little.
    let allowed = tally.allowed;
    assert!(
        allowed > total / 10 && allowed < total * 9 / 10,
        "allowed {allowed} of {total}"
    );
    // and every tier's every decision, and NetworkPolicy under admin policies
    if std::env::var("SEED").is_err() {
        assert!(
            tally.tiers.iter().all(|&n| n > total / 200) && tally.after_pass_or_no_match > 0,
            "{tally:?} of {total}"
        );
    }
}

#[test]
fn incremental_updates_equal_a_full_recompile() {
    for seed in seeds(250) {
        let mut rng = Rng::new(seed ^ 0xABCD);
        let mut cluster = synth::random_cluster(&mut rng);
        let mut engine = Engine::from_cluster(cluster.clone()).expect("valid cluster");
        for step in 0..30 {
            let change = synth::random_change(&mut rng, &cluster);
            let before = engine.generation();
            cluster.apply(&change);
            engine.apply(change.clone()).expect("valid change");
            assert!(
                engine.generation() > before,
                "every change bumps the generation"
            );
            let full = Engine::from_cluster(cluster.clone()).expect("valid cluster");
            let context = format!("seed {seed} step {step} after {change:?}");
            assert_eq!(engine.canonical(), full.canonical(), "{context}");
            check_flows(
                &engine,
                &cluster,
                &mut rng,
                20,
                &context,
                &mut Tally::default(),
            );
        }
    }
}

/// A random Service set: a few Services (some sharing a cluster IP, some
/// headless or another proxy's) and slices (some of no Service, some moving
/// between Services), small enough that changes collide.
fn random_services(rng: &mut Rng) -> (Vec<policy::Service>, Vec<policy::EndpointSlice>) {
    use policy::endpoint_slice::{SliceEndpoint, SlicePort};
    use policy::{PodKey, Protocol, ServicePort, TargetPort};
    use std::net::IpAddr;
    let protocols = [Protocol::Tcp, Protocol::Udp];
    let names = [None, Some("a".to_string()), Some("b".to_string())];
    let mut services = Vec::new();
    for i in 0..rng.below(6) {
        let ns = *rng.pick(&["x", "y"]);
        let name = format!("s{i}");
        let ips: Vec<IpAddr> = match rng.below(4) {
            0 => vec![],
            1 => vec![format!("10.96.0.{}", rng.below(4)).parse().unwrap()],
            2 => vec![format!("fd00::{}", rng.below(4)).parse().unwrap()],
            _ => vec![
                format!("10.96.0.{}", rng.below(4)).parse().unwrap(),
                format!("fd00::{}", rng.below(4)).parse().unwrap(),
            ],
        };
        let ports = (0..1 + rng.below(2))
            .map(|_| ServicePort {
                name: rng.pick(&names).clone(),
                port: 80 + rng.below(2) as u16,
                protocol: *rng.pick(&protocols),
                target: TargetPort::Number(8080),
            })
            .collect();
        services.push(policy::Service {
            key: PodKey::new(ns, name),
            cluster_ips: ips,
            selector: None,
            ports,
            affinity_timeout: rng.chance(20).then_some(10),
            local_only: rng.chance(20),
            proxy_name: rng.chance(10).then(|| "other".to_string()),
        });
    }
    services.sort_by(|a, b| a.key.cmp(&b.key));
    services.dedup_by(|a, b| a.key == b.key);
    let mut slices = Vec::new();
    for i in 0..rng.below(8) {
        let ns = *rng.pick(&["x", "y"]);
        let endpoints = (0..rng.below(4))
            .map(|_| {
                let a: IpAddr = if rng.chance(50) {
                    format!("10.0.0.{}", rng.below(6)).parse().unwrap()
                } else {
                    format!("fd00:1::{}", rng.below(6)).parse().unwrap()
                };
                SliceEndpoint {
                    addresses: vec![a],
                    ready: rng.chance(70),
                    serving: rng.chance(80),
                    terminating: rng.chance(20),
                    node: Some(rng.pick(&["n1", "n2"]).to_string()),
                }
            })
            .collect();
        slices.push(policy::EndpointSlice {
            key: PodKey::new(ns, format!("e{i}")),
            service: format!("s{}", rng.below(6)),
            ports: (0..1 + rng.below(2))
                .map(|_| SlicePort {
                    name: rng.pick(&names).clone(),
                    port: 8080 + rng.below(2) as u16,
                    protocol: *rng.pick(&protocols),
                })
                .collect(),
            endpoints,
        });
    }
    slices.sort_by(|a, b| a.key.cmp(&b.key));
    slices.dedup_by(|a, b| a.key == b.key);
    (services, slices)
}

#[test]
fn service_index_changes_equal_a_full_rebuild() {
    use policy::endpoint_slice::{FrontendChange, FrontendId, frontends};
    use std::collections::BTreeMap;
    let (mut changes_seen, mut removes_seen) = (0, 0);
    for seed in seeds(300) {
        let mut rng = Rng::new(seed ^ 0x5E41);
        let mut index = policy::ServiceIndex::new();
        // what a proxy holds: the changes applied one after another
        let mut installed: BTreeMap<FrontendId, policy::FrontendSpec> = BTreeMap::new();
        let (mut services, mut slices) = random_services(&mut rng);
        for step in 0..20 {
            // mostly small edits to the last set, sometimes a new one
            if rng.chance(20) {
                (services, slices) = random_services(&mut rng);
            } else {
                let (s2, e2) = random_services(&mut rng);
                if !s2.is_empty() && !services.is_empty() && rng.chance(50) {
                    let i = rng.below(services.len());
                    let mut s = s2[0].clone();
                    s.key = services[i].key.clone();
                    services[i] = s;
                }
                if !e2.is_empty() && !slices.is_empty() && rng.chance(70) {
                    let i = rng.below(slices.len());
                    let mut e = e2[0].clone();
                    e.key = slices[i].key.clone();
                    slices[i] = e;
                }
                if !slices.is_empty() && rng.chance(20) {
                    slices.remove(rng.below(slices.len()));
                }
            }
            let shared_services = services.iter().cloned().map(std::sync::Arc::new).collect();
            let shared_slices = slices.iter().cloned().map(std::sync::Arc::new).collect();
            for c in index.update(shared_services, shared_slices) {
                changes_seen += 1;
                match c {
                    FrontendChange::Set(f) => {
                        installed.insert(f.id(), f);
                    }
                    FrontendChange::Remove(id) => {
                        removes_seen += 1;
                        assert!(
                            installed.remove(&id).is_some(),
                            "seed {seed} step {step}: removes what is not there: {id:?}"
                        );
                    }
                }
            }
            // the rebuild, in key order: the last Service claiming an id wins
            let mut want: BTreeMap<FrontendId, policy::FrontendSpec> = BTreeMap::new();
            for f in frontends(&services, &slices) {
                want.insert(f.id(), f);
            }
            assert_eq!(
                installed, want,
                "seed {seed} step {step}: services {services:#?} slices {slices:#?}"
            );
            let all: BTreeMap<FrontendId, policy::FrontendSpec> =
                index.all().map(|f| (f.id(), f.clone())).collect();
            assert_eq!(all, want, "seed {seed} step {step}: the index's own view");
            assert_eq!(
                index.len(),
                want.len(),
                "seed {seed} step {step}: its count"
            );
        }
    }
    assert!(
        changes_seen > 1000 && removes_seen > 100,
        "{changes_seen} changes, {removes_seen} removals"
    );
}
