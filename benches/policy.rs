//! Policy engine benchmarks (issue 2): full compile, one incremental change,
//! one verdict, on synthetic clusters shaped like real multi-tenant ones
//! (`policy::synth::scale_cluster`). Memory is measured with a counting
//! allocator and printed before the timings.
//!
//! Admin tiers (issue 15): the same cluster with 100 ClusterNetworkPolicies
//! per tier (`synth::scale_admin_policies`) compiled, and its verdicts
//! against the cluster's without them, measured in alternation (the median
//! of the per-round ratios: this VM's noise moves separate runs more than
//! the difference).
//!
//! Run: `cargo bench --bench policy`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group};
use policy::synth::{self, Rng, Scale};
use policy::{Cluster, Engine, Flow, Protocol};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

const SIZES: &[(usize, usize)] = &[(1_000, 100), (10_000, 1_000), (10_000, 10_000)];
/// ClusterNetworkPolicies per tier in the admin benchmarks.
const ADMIN_PER_TIER: usize = 100;

/// The 10,000 x 10,000 cluster with `ADMIN_PER_TIER` admin policies per
/// tier, and nodes for their `nodes` peers.
fn admin_cluster() -> Cluster {
    let scale = Scale::new(10_000, 10_000);
    let mut c = synth::scale_cluster(scale, 7);
    for p in synth::scale_admin_policies(scale, ADMIN_PER_TIER, 11) {
        c.admin_policies.insert(p.key.clone(), p);
    }
    for i in 0..3 {
        let mut labels = policy::Labels::new();
        labels.insert(
            "node-role.kubernetes.io/control-plane".into(),
            String::new(),
        );
        let n = policy::NodeInfo {
            name: format!("cp{i}"),
            labels,
            addresses: vec![format!("192.168.0.{}", 10 + i).parse().expect("ip")],
        };
        c.nodes.insert(n.name.clone(), n);
    }
    c
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Peak and retained heap of one full compile, the input excluded.
fn report_memory() {
    for &(pods, policies) in SIZES {
        let cluster = synth::scale_cluster(Scale::new(pods, policies), 7);
        let input = cluster.clone();
        let base = counting_alloc::reset_peak();
        let t = std::time::Instant::now();
        let engine = Engine::from_cluster(input).expect("valid");
        let took = t.elapsed();
        let peak = counting_alloc::peak() - base;
        let retained = counting_alloc::current() - base;
        println!(
            "memory compile/{pods}x{policies}: peak {:.1} MiB, retained {:.1} MiB (engine incl. its copy of the cluster), \
             {} identities, one compile {:.0} ms",
            mib(peak),
            mib(retained),
            engine.identity_count(),
            took.as_secs_f64() * 1e3
        );
        drop(engine);
        drop(cluster);
    }
    let cluster = admin_cluster();
    let base = counting_alloc::reset_peak();
    let t = std::time::Instant::now();
    let engine = Engine::from_cluster(cluster).expect("valid");
    let took = t.elapsed();
    println!(
        "memory compile/10000x10000+{ADMIN_PER_TIER}cnp-per-tier: peak {:.1} MiB, retained {:.1} MiB, {} identities, one compile {:.0} ms",
        mib(counting_alloc::peak() - base),
        mib(counting_alloc::current() - base),
        engine.identity_count(),
        took.as_secs_f64() * 1e3
    );
}

fn compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    for &(pods, policies) in SIZES {
        let cluster = synth::scale_cluster(Scale::new(pods, policies), 7);
        g.bench_function(format!("{pods}x{policies}"), |b| {
            b.iter_batched(
                || cluster.clone(),
                |c| black_box(Engine::from_cluster(c)),
                BatchSize::PerIteration,
            )
        });
    }
    let cluster = admin_cluster();
    g.bench_function(format!("10000x10000+{ADMIN_PER_TIER}cnp-per-tier"), |b| {
        b.iter_batched(
            || cluster.clone(),
            |c| black_box(Engine::from_cluster(c)),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn incremental(c: &mut Criterion) {
    let scale = Scale::new(10_000, 10_000);
    let cluster = synth::scale_cluster(scale, 7);
    let mut engine = Engine::from_cluster(cluster.clone()).expect("valid");
    let mut g = c.benchmark_group("incremental/10000x10000");

    // Replace one policy, alternating between two versions of it.
    let victim = cluster.policies.keys().nth(5000).expect("policy").clone();
    let mut rng = Rng::new(99);
    let versions: Vec<_> = (0..2)
        .map(|_| {
            let mut p =
                synth::scale_policy(&mut rng, scale, &victim.namespace, &victim.name, false);
            p.key = victim.clone();
            p
        })
        .collect();
    let mut i = 0;
    g.bench_function("replace-policy", |b| {
        b.iter(|| {
            i += 1;
            engine
                .upsert_policy(versions[i % 2].clone())
                .expect("valid");
        })
    });

    // Relabel one pod into a label set no other pod has and back: an identity
    // is created and destroyed, patched into every table whose selectors match.
    let pod = cluster.pods.values().nth(1234).expect("pod").clone();
    let mut relabelled = pod.clone();
    relabelled.labels.insert("version".into(), "canary".into());
    let pods = [relabelled, pod];
    g.bench_function("relabel-pod", |b| {
        b.iter(|| {
            i += 1;
            engine.upsert_pod(pods[i % 2].clone()).expect("valid");
        })
    });
    g.finish();
}

/// 4096 flows of the benchmark cluster, half allowed and half denied by
/// `engine`.
fn flows_of(cluster: &Cluster, engine: &Engine) -> Vec<Flow> {
    // Half allowed, half denied: candidates mostly within one namespace
    // (where the rules are), on the ports the policies name.
    let pods: Vec<_> = cluster.pods.values().collect();
    let mut rng = Rng::new(5);
    let (mut allowed, mut denied) = (Vec::new(), Vec::new());
    while allowed.len() < 2048 || denied.len() < 2048 {
        let src = rng.pick(&pods);
        let dst = if rng.chance(70) {
            let same: Vec<_> = pods
                .iter()
                .filter(|p| p.key.namespace == src.key.namespace)
                .collect();
            **rng.pick(&same)
        } else {
            rng.pick(&pods)
        };
        let flow = Flow {
            src: src.ips[0],
            dst: dst.ips[0],
            protocol: *rng.pick(&[Protocol::Tcp, Protocol::Tcp, Protocol::Udp]),
            dst_port: *rng.pick(&[53, 443, 8080, 8050, 9090, 22]),
        };
        let list = if engine.verdict(&flow).allowed() {
            &mut allowed
        } else {
            &mut denied
        };
        if list.len() < 2048 {
            list.push(flow);
        }
    }
    let mut flows: Vec<Flow> = allowed
        .into_iter()
        .zip(denied)
        .flat_map(|(a, d)| [a, d])
        .collect();
    flows.truncate(4096);
    flows
}

fn verdict(c: &mut Criterion) {
    let cluster = synth::scale_cluster(Scale::new(10_000, 10_000), 7);
    let engine = Engine::from_cluster(cluster.clone()).expect("valid");
    let flows = flows_of(&cluster, &engine);
    // 4096 flows over the whole cluster (tables mostly out of L1/L2), and 16
    // flows (everything in cache): the difference is memory latency.
    let mut g = c.benchmark_group("verdict/10000x10000");
    for (name, n) in [("4096-flows", 4096usize), ("16-flows", 16)] {
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % n;
                black_box(engine.verdict(black_box(&flows[i])))
            })
        });
    }
    g.finish();
}

/// Verdicts with 100 ClusterNetworkPolicies per tier against the same
/// flows without them: criterion's figures, then the paired ratio.
fn verdict_admin(c: &mut Criterion) {
    let plain_cluster = synth::scale_cluster(Scale::new(10_000, 10_000), 7);
    let plain = Engine::from_cluster(plain_cluster.clone()).expect("valid");
    let admin = Engine::from_cluster(admin_cluster()).expect("valid");
    let flows = flows_of(&plain_cluster, &plain);
    let decided = flows
        .iter()
        .filter(|f| {
            let v = admin.verdict(f);
            matches!(
                (v.egress, v.ingress),
                (
                    policy::Decision::AdminAccepted(_) | policy::Decision::AdminDenied(_),
                    _
                ) | (
                    _,
                    policy::Decision::AdminAccepted(_) | policy::Decision::AdminDenied(_)
                )
            )
        })
        .count();
    println!(
        "verdict/10000x10000+{ADMIN_PER_TIER}cnp-per-tier: {decided} of {} flows decided by an admin rule on a side",
        flows.len()
    );
    let mut g = c.benchmark_group(format!("verdict/10000x10000+{ADMIN_PER_TIER}cnp-per-tier"));
    for (name, n) in [("4096-flows", 4096usize), ("16-flows", 16)] {
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % n;
                black_box(admin.verdict(black_box(&flows[i])))
            })
        });
    }
    g.finish();
    // In alternation: 301 rounds of every flow through each engine.
    for (name, n) in [("4096-flows", 4096usize), ("16-flows", 16)] {
        let reps = 4096 / n;
        let time = |e: &Engine| {
            let t = std::time::Instant::now();
            for _ in 0..reps {
                for f in &flows[..n] {
                    black_box(e.verdict(black_box(f)));
                }
            }
            t.elapsed().as_secs_f64() * 1e9 / 4096.0
        };
        let (mut ratios, mut ns_plain, mut ns_admin) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..301 {
            let (p, a) = if round % 2 == 0 {
                let p = time(&plain);
                (p, time(&admin))
            } else {
                let a = time(&admin);
                (time(&plain), a)
            };
            ratios.push(a / p);
            ns_plain.push(p);
            ns_admin.push(a);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "paired verdict/{name}: without admin tiers {:.1} ns, with {ADMIN_PER_TIER} per tier {:.1} ns, median ratio {:.3}",
            median(&mut ns_plain),
            median(&mut ns_admin),
            median(&mut ratios)
        );
    }
}

criterion_group!(benches, compile, incremental, verdict, verdict_admin);

fn main() {
    report_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
