//! Policy engine benchmarks (issue 2): full compile, one incremental change,
//! one verdict, on synthetic clusters shaped like real multi-tenant ones
//! (`policy::synth::scale_cluster`). Memory is measured with a counting
//! allocator and printed before the timings.
//!
//! Run: `cargo bench --bench policy`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group};
use policy::synth::{self, Rng, Scale};
use policy::{Engine, Flow, Protocol};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

const SIZES: &[(usize, usize)] = &[(1_000, 100), (10_000, 1_000), (10_000, 10_000)];

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

fn verdict(c: &mut Criterion) {
    let cluster = synth::scale_cluster(Scale::new(10_000, 10_000), 7);
    let engine = Engine::from_cluster(cluster.clone()).expect("valid");
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

criterion_group!(benches, compile, incremental, verdict);

fn main() {
    report_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
