//! Datapath benchmarks (issue 3): flow-cache hits at 1k, 100k and 1M active
//! flows, the slow path of a new flow on a 10k-pod x 1k-policy cluster, whole
//! datapath packets per second for 64-byte frames through in-memory ports,
//! conntrack memory per entry (counting allocator, printed first), and, for
//! reference, the latency of one random read from memory.
//!
//! Run: `cargo bench --bench datapath`

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use policy::synth::{self, Scale};
use policy::{Cluster, Engine, Flow, Namespace, Pod, PodKey, Protocol};
use vswitch_datapath::conntrack::{Conntrack, Timeouts};
use vswitch_datapath::counters::Outcome;
use vswitch_datapath::io::port::MemPort;
use vswitch_datapath::io::worker::{PolicyHandle, Worker};
use vswitch_datapath::parse::{FlowTuple, L4, Mac};
use vswitch_datapath::wire::ip_proto::UDP as PROTO_UDP;
use vswitch_datapath::{Action, Config, Datapath, PortKind};

#[path = "../../../benches/support/counting_alloc.rs"]
mod counting_alloc;

const GW: Mac = [0x02, 0x76, 0x73, 0x77, 0x00, 0x01];
const A: Mac = [0x02, 0, 0, 0, 0, 1];
const B: Mac = [0x02, 0, 0, 0, 0, 2];
const A4: [u8; 4] = [10, 0, 0, 1];
const B4: [u8; 4] = [10, 0, 0, 2];

/// A 64-byte UDP frame (14 + 20 + 8 + 22).
fn udp(src_mac: Mac, dst_mac: Mac, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, &[0u8; 22])
        .unwrap();
    assert_eq!(v.len(), 64);
    v
}

/// Two pods, no policy: x/a on port 1, x/b on port 2.
fn two_pods(cfg: Config) -> (Datapath, policy::Snapshot) {
    let t0 = Instant::now();
    let mut dp = Datapath::new(cfg, t0);
    let mut c = Cluster::default();
    c.namespaces
        .insert("x".into(), Namespace::new("x", Default::default()));
    for (name, ip) in [("a", A4), ("b", B4)] {
        let p = Pod {
            key: PodKey::new("x", name),
            labels: Default::default(),
            ips: vec![IpAddr::from(ip)],
            ports: vec![],
        };
        c.pods.insert(p.key.clone(), p);
    }
    let engine = Engine::from_cluster(c).unwrap();
    dp.set_policy(Arc::new(engine.snapshot()));
    for (id, mac, ip) in [(1, A, A4), (2, B, B4)] {
        dp.add_port(
            id,
            "pod",
            mac,
            PortKind::Pod {
                ips: vec![IpAddr::from(ip)],
                ready_generation: 0,
            },
        );
    }
    (dp, engine.snapshot())
}

/// `n` established UDP flows from a to b, each in the flow cache; returns
/// the frames of their next packets (addressed at L2, so forwarding them
/// does not change them).
fn established(dp: &mut Datapath, n: usize, now: Instant) -> Vec<Vec<u8>> {
    let mut frames = Vec::with_capacity(n);
    for i in 0..n {
        let (sport, dport) = (1024 + (i % 50_000) as u16, 1 + (i / 50_000) as u16);
        let mut f = udp(A, B, A4, B4, sport, dport);
        assert_eq!(dp.process(1, &mut f, now), Action::Forward(2));
        let mut r = udp(B, A, B4, A4, dport, sport);
        assert_eq!(dp.process(2, &mut r, now), Action::Forward(1));
        let mut f = udp(A, B, A4, B4, sport, dport);
        dp.process(1, &mut f, now);
        frames.push(f);
    }
    // both directions of (nearly) every flow are cached: a full bucket may
    // have replaced a few
    let cached = dp.flow_cache().len();
    assert!(cached >= 2 * n * 99 / 100, "{cached} of {}", 2 * n);
    frames
}

fn report_memory() {
    for max in [229_376usize, 917_504] {
        let base = counting_alloc::current();
        let mut ct = Conntrack::new(max, Timeouts::default());
        let t0 = Instant::now();
        for i in 0..max {
            let t = FlowTuple {
                src: IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
                dst: IpAddr::from([10, 255, 0, 1]),
                proto: PROTO_UDP,
                sport: 1000,
                dport: 53,
            };
            ct.create(
                &t,
                &L4::Udp {
                    sport: 1000,
                    dport: 53,
                },
                0,
                1,
                1,
                usize::MAX,
            )
            .unwrap();
        }
        let bytes = counting_alloc::current() - base;
        println!(
            "memory conntrack: {max} entries (full) take {:.1} MiB, {:.1} bytes per entry (filled in {:.0} ms)",
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / max as f64,
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
}

fn cache_hit(c: &mut Criterion) {
    const BATCH: usize = 32;
    for n in [1_000usize, 100_000, 1_000_000] {
        let (mut dp, _) = two_pods(Config {
            conntrack_max: 2 * n,
            conntrack_per_pod_max: 0, // one pod opens them all
            flow_cache_max: 2 * n + 16,
            ..Config::default()
        });
        let now = Instant::now() + Duration::from_millis(1);
        let frames = established(&mut dp, n, now);
        // Received frames are in cache (the port just wrote them): hot
        // buffers, with the next flows' ports written in, in a scattered order.
        let template = frames[0].clone();
        drop(frames);
        let ports = |i: usize| (1024 + (i % 50_000) as u16, 1 + (i / 50_000) as u16);
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| template.clone()).collect();
        let (mut i, step) = (0, 7_919 % n);
        let mut next = |buf: &mut Vec<u8>| {
            // the next of a scattered order (7 919 is prime); no division
            i += step;
            if i >= n {
                i -= n;
            }
            let (sport, dport) = ports(i);
            buf[34..36].copy_from_slice(&sport.to_be_bytes());
            buf[36..38].copy_from_slice(&dport.to_be_bytes());
        };
        let mut g = c.benchmark_group("flow_cache_hit_single");
        g.bench_function(format!("{n}-flows"), |b| {
            b.iter(|| {
                next(&mut bufs[0]);
                black_box(dp.process(1, &mut bufs[0], now))
            })
        });
        g.finish();
        let mut g = c.benchmark_group("flow_cache_hit_batch32");
        g.throughput(Throughput::Elements(BATCH as u64));
        let mut actions = Vec::with_capacity(BATCH);
        g.bench_function(format!("{n}-flows"), |b| {
            b.iter(|| {
                for buf in bufs.iter_mut() {
                    next(buf);
                }
                let mut refs: [&mut [u8]; BATCH] = std::array::from_fn(|_| &mut [][..]);
                for (r, buf) in refs.iter_mut().zip(bufs.iter_mut()) {
                    *r = buf.as_mut_slice();
                }
                actions.clear();
                dp.process_batch(1, &mut refs, &[], now, &mut actions);
                black_box(&actions);
            })
        });
        g.finish();
        let c = &dp.counters;
        let (fast, slow) = (c.get(Outcome::FastForward), c.get(Outcome::SlowForward));
        // setting up took three slow-path packets per flow; what was measured hit
        assert!(
            slow <= 3 * n as u64 + (fast + slow) / 100,
            "fast {fast} slow {slow}"
        );
    }
}

fn miss(c: &mut Criterion) {
    // The first packet of new, allowed flows between two pods of a 10k-pod,
    // 1k-policy cluster: parse, verdict, conntrack insert.
    let cluster = synth::scale_cluster(Scale::new(10_000, 1_000), 7);
    let engine = Engine::from_cluster(cluster.clone()).unwrap();
    let snap = Arc::new(engine.snapshot());
    let pods: Vec<&Pod> = cluster.pods.values().collect();
    let mut rng = synth::Rng::new(3);
    let (src, dst, port) = loop {
        let (s, d) = (rng.pick(&pods), rng.pick(&pods));
        let port = *rng.pick(&[53u16, 443, 8080, 8050]);
        let flow = Flow {
            src: s.ips[0],
            dst: d.ips[0],
            protocol: Protocol::Udp,
            dst_port: port,
        };
        if s.key != d.key && engine.verdict(&flow).allowed() {
            break (*s, *d, port);
        }
    };
    let ip4 = |p: &Pod| match p.ips[0] {
        IpAddr::V4(a) => a.octets(),
        _ => unreachable!(),
    };
    let fresh = || {
        // one pod opens every flow: no share, the insert is what is timed
        let cfg = Config {
            conntrack_per_pod_max: 0,
            ..Config::default()
        };
        let mut dp = Datapath::new(cfg, Instant::now());
        dp.set_policy(snap.clone());
        dp.add_port(
            1,
            "src",
            A,
            PortKind::Pod {
                ips: src.ips.clone(),
                ready_generation: 0,
            },
        );
        dp.add_port(
            2,
            "dst",
            B,
            PortKind::Pod {
                ips: dst.ips.clone(),
                ready_generation: 0,
            },
        );
        dp
    };
    let template = udp(A, GW, ip4(src), ip4(dst), 0, port);
    c.bench_function("slow_path_new_flow/10000x1000", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let batch = left.min(50_000);
                left -= batch;
                let mut dp = fresh();
                let frames: Vec<Vec<u8>> = (0..batch)
                    .map(|i| {
                        let mut f = template.clone();
                        let sport = 1024 + i as u16;
                        f[34..36].copy_from_slice(&sport.to_be_bytes());
                        f
                    })
                    .collect();
                let now = Instant::now();
                let t = Instant::now();
                for mut f in frames {
                    black_box(dp.process(1, &mut f, now));
                }
                total += t.elapsed();
                assert_eq!(
                    dp.conntrack().len(),
                    batch as usize,
                    "every flow was allowed and tracked"
                );
            }
            total
        })
    });
}

fn throughput(c: &mut Criterion) {
    // Whole datapath: a worker moving 64-byte frames of 64 established flows
    // from one in-memory port to another, one core. Frames are handed back
    // to the first port between iterations, outside the timing.
    let (mut dp, snapshot) = two_pods(Config::default());
    let now = Instant::now() + Duration::from_millis(1);
    let frames = established(&mut dp, 64, now);
    let handle = PolicyHandle::default();
    handle.publish(snapshot);
    let mut worker = Worker::new(dp, handle);
    worker.batch = 256;
    let mut port_a = MemPort::new();
    for _ in 0..64 {
        port_a.rx.extend(frames.iter().cloned());
    }
    let n = port_a.rx.len();
    worker.attach(1, Box::new(port_a));
    worker.attach(2, Box::new(MemPort::new()));
    let setup_rx = worker.datapath.counters.rx_packets;
    let mut g = c.benchmark_group("datapath");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("64B-frames-64-flows", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let mut got = 0;
                while got < n {
                    got += worker.poll(now);
                }
                total += t.elapsed();
                recycle(&mut worker);
            }
            total
        })
    });
    g.finish();
    let c = &worker.datapath.counters;
    let fast = c.get(Outcome::FastForward);
    // (when the benchmark is filtered out, nothing more was received)
    assert!(
        c.rx_packets == setup_rx || fast >= n as u64,
        "the frames took the fast path"
    );
}

/// Moves what port 2 sent back into port 1's receive queue, and the spare
/// buffers back to port 2, so that the steady state allocates nothing.
fn recycle(worker: &mut Worker) {
    let out: Vec<Vec<u8>> = worker
        .port_mut(2)
        .unwrap()
        .as_mem()
        .unwrap()
        .tx
        .drain(..)
        .collect();
    let a = worker.port_mut(1).unwrap().as_mem().unwrap();
    for mut f in out {
        // back to a's view: a -> b at L2
        f[0..6].copy_from_slice(&B);
        f[6..12].copy_from_slice(&A);
        a.rx.push_back(f);
    }
    let spare = a.take_pool();
    worker
        .port_mut(2)
        .unwrap()
        .as_mem()
        .unwrap()
        .give_pool(spare);
}

/// The floor under a single-frame hit once the tables outgrow the caches:
/// one random read from memory, each read's address taken from the one
/// before (a pointer chase, as a lone frame's bucket then slot), in tables
/// on huge pages like the flow cache's.
fn memory_latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_read_dependent");
    for mib in [16usize, 64] {
        let lines = (mib << 20) / 64;
        // one u32 per 64-byte line: the next line to read, a random cycle
        let mut next: Vec<[u32; 16]> = Vec::with_capacity(lines);
        vswitch_datapath::mem_hints::advise_huge(next.as_ptr() as *const u8, mib << 20);
        next.resize(lines, [0; 16]);
        let mut order: Vec<u32> = (0..lines as u32).collect();
        let mut rng = synth::Rng::new(3);
        for i in (1..lines).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for w in order.windows(2) {
            next[w[0] as usize][0] = w[1];
        }
        next[order[lines - 1] as usize][0] = order[0];
        let mut at = order[0];
        g.bench_function(format!("{mib}MiB"), |b| {
            b.iter(|| {
                at = next[at as usize][0];
                black_box(at)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, cache_hit, miss, throughput, memory_latency);

fn main() {
    report_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
