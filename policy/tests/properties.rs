//! The compiled engine against the reference evaluator, over random clusters,
//! policies, flows and change sequences. Seeds are fixed and printed, so a
//! failure can be replayed with `SEED=n`.

use policy::synth::{self, Rng};
use policy::{Cluster, Engine, Explanation, reference};

fn seeds(default_count: u64) -> Vec<u64> {
    match std::env::var("SEED") {
        Ok(s) => vec![s.parse().expect("SEED is a number")],
        Err(_) => (1..=default_count).collect(),
    }
}

fn check_flows(
    engine: &Engine,
    cluster: &Cluster,
    rng: &mut Rng,
    n: usize,
    context: &str,
) -> usize {
    let mut allowed = 0;
    for _ in 0..n {
        let flow = synth::random_flow(rng, cluster);
        let want: Explanation = reference::evaluate(cluster, &flow);
        let got = engine.explain(&flow);
        assert_eq!(got, want, "{context}: flow {flow:?}\ncluster: {cluster:#?}");
        assert_eq!(engine.verdict(&flow).allowed(), want.allowed());
        allowed += want.allowed() as usize;
    }
    allowed
}

#[test]
fn compiled_verdicts_equal_the_reference() {
    let (mut allowed, mut total) = (0, 0);
    for seed in seeds(600) {
        let mut rng = Rng::new(seed);
        let cluster = synth::random_cluster(&mut rng);
        let engine = Engine::from_cluster(cluster.clone()).expect("valid cluster");
        allowed += check_flows(&engine, &cluster, &mut rng, 200, &format!("seed {seed}"));
        total += 200;
    }
    // The generator must produce both outcomes in earnest, or this proves little.
    assert!(
        allowed > total / 10 && allowed < total * 9 / 10,
        "allowed {allowed} of {total}"
    );
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
            check_flows(&engine, &cluster, &mut rng, 20, &context);
        }
    }
}
