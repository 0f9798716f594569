//! Service benchmarks (issue 14), each beside its peer in the same run:
//!
//! - `service_hit`: flow-cache hits of established connections, batches of
//!   32, 1,000 connections: straight to a pod, and through a cluster IP
//!   (translated on every hit). Target: translated ≤ 1.1x direct. Printed
//!   first: the two measured in alternation, and the median of the pairs'
//!   ratios (this VM's speed wanders more than the difference).
//! - `service_new_connection`: the first packet of a new connection, with
//!   10,000 Services of 10 endpoints each installed: straight to a pod, and
//!   to a cluster IP (frontend lookup, endpoint choice, translation,
//!   conntrack, the translation recorded). Target: ≤ 1 µs.
//! - `endpoint_change`: one Service's endpoints change among 10,000 x 10,
//!   from the update vswitchd receives to the switch's table changed, as
//!   vswitchd does it: the Services and EndpointSlices compared with the
//!   last ones, the changed Service's frontends recomputed
//!   (`policy::ServiceIndex`) and applied in place (`update_services`);
//!   beside it, what vswitchd did before (every frontend rebuilt and the
//!   table replaced). The objects arrive shared, unchanged ones the same
//!   allocations as in the last update, as the Kubernetes source sends
//!   them. Target: p99 ≤ 5 ms (medians and p99s over 200 changes, printed
//!   first).
//!
//! Run: `cargo bench -p vswitch-datapath --bench services`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use policy::endpoint_slice::{self, EndpointSlice, SliceEndpoint, SlicePort};
use policy::{
    Cluster, Engine, Namespace, Pod, PodKey, Protocol, Service, ServiceIndex, ServicePort,
    TargetPort,
};
use vswitch_datapath::parse::Mac;
use vswitch_datapath::services::{Endpoint, Frontend, FrontendKey, ServiceChange, ServiceTable};
use vswitch_datapath::{Action, Config, Datapath, PortKind};

const GW: Mac = [0x02, 0x76, 0x73, 0x77, 0x00, 0x01];
const A: Mac = [0x02, 0, 0, 0, 0, 1];
const B: Mac = [0x02, 0, 0, 0, 0, 2];
const A4: [u8; 4] = [10, 0, 0, 1];
const B4: [u8; 4] = [10, 0, 0, 2];
const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;

/// A 64-byte UDP frame.
fn udp(src_mac: Mac, dst_mac: Mac, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, &[0u8; 22])
        .unwrap();
    v
}

/// The cluster IP of Service `i`.
fn vip(i: usize) -> [u8; 4] {
    let n = u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32;
    Ipv4Addr::from(n).octets()
}

/// 10,000 Services (UDP 53), each to 10 endpoints: ports 1000.. of b.
fn table() -> ServiceTable {
    let mut t = ServiceTable::new();
    for i in 0..SERVICES {
        let endpoints = (0..ENDPOINTS)
            .map(|e| Endpoint {
                ip: IpAddr::from(B4),
                port: 1000 + e as u16,
                ready: true,
                serving: true,
                terminating: false,
                local: true,
            })
            .collect();
        t.insert(
            FrontendKey {
                ip: IpAddr::from(vip(i)),
                proto: 17,
                port: 53,
            },
            Frontend {
                service: format!("x/s{i}"),
                port_name: None,
                endpoints,
                affinity_ms: None,
                local_only: false,
            },
        );
    }
    t
}

/// Two pods, no policy, the Services installed.
fn datapath(cfg: Config, services: Arc<ServiceTable>) -> Datapath {
    let mut dp = Datapath::new(cfg, Instant::now());
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
    dp.set_policy(Arc::new(Engine::from_cluster(c).unwrap().snapshot()));
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
    dp.set_services(services);
    dp
}

/// Cached connections sending batches of frames: straight to a pod or
/// through a cluster IP.
struct Hits {
    dp: Datapath,
    frames: Vec<Vec<u8>>,
    bufs: Vec<Vec<u8>>,
    next: usize,
    actions: Vec<Action>,
    now: Instant,
}

impl Hits {
    const BATCH: usize = 32;
    const FLOWS: usize = 1_000;

    /// `FLOWS` connections from a to `dst`, answered, then cached both ways.
    fn new(services: &Arc<ServiceTable>, dst: [u8; 4]) -> Hits {
        let mut dp = datapath(Config::default(), services.clone());
        let now = Instant::now() + Duration::from_millis(1);
        let mut frames = Vec::new();
        for i in 0..Self::FLOWS {
            let sport = 2000 + i as u16;
            let mut f = udp(A, GW, A4, dst, sport, 53);
            assert_eq!(dp.process(1, &mut f, now), Action::Forward(2));
            let dport = u16::from_be_bytes([f[36], f[37]]);
            let mut r = udp(B, GW, B4, A4, dport, sport);
            assert_eq!(dp.process(2, &mut r, now), Action::Forward(1));
            frames.push(udp(A, GW, A4, dst, sport, 53));
        }
        Hits {
            dp,
            bufs: frames[..Self::BATCH].to_vec(),
            frames,
            next: 0,
            actions: Vec::with_capacity(Self::BATCH),
            now,
        }
    }

    /// One batch: the next connections' frames, as received (the last
    /// batch's were translated in place), through the datapath.
    #[inline(always)]
    fn batch(&mut self) {
        for buf in self.bufs.iter_mut() {
            self.next = (self.next + 7) % Self::FLOWS;
            buf.copy_from_slice(&self.frames[self.next]);
        }
        let mut refs: [&mut [u8]; Self::BATCH] = std::array::from_fn(|_| &mut [][..]);
        for (r, buf) in refs.iter_mut().zip(self.bufs.iter_mut()) {
            *r = buf.as_mut_slice();
        }
        self.actions.clear();
        self.dp
            .process_batch(1, &mut refs, &[], self.now, &mut self.actions);
        black_box(&self.actions);
    }

    /// Every frame of the last batch was a hit, forwarded to b.
    fn check(&self, name: &str) {
        assert!(
            self.actions.iter().all(|a| *a == Action::Forward(2)),
            "{name}: {:?}",
            self.actions
        );
        let fast = self
            .dp
            .counters
            .get(vswitch_datapath::counters::Outcome::FastForward);
        assert!(fast > 0, "{name}: hits");
    }
}

fn hit(c: &mut Criterion) {
    let services = Arc::new(table());
    let mut direct = Hits::new(&services, B4);
    let mut translated = Hits::new(&services, vip(7));
    // Paired: the two interleaved, 2,000 batches of each in turn, 300
    // times, so that the VM's slow and fast moments fall on both alike;
    // printed first: the median of each and of the pairs' ratios.
    let time = |h: &mut Hits| {
        let t = Instant::now();
        for _ in 0..2_000 {
            h.batch();
        }
        t.elapsed() / 2_000
    };
    let (mut d, mut t, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..300 {
        let (a, b) = if pair % 2 == 0 {
            let a = time(&mut direct);
            (a, time(&mut translated))
        } else {
            let b = time(&mut translated);
            (time(&mut direct), b)
        };
        ratios.push(b.as_secs_f64() / a.as_secs_f64());
        d.push(a);
        t.push(b);
    }
    direct.check("direct");
    translated.check("translated");
    d.sort();
    t.sort();
    ratios.sort_by(f64::total_cmp);
    println!(
        "flow-cache hits, batches of 32, paired: direct {:?}, translated {:?} per batch (medians), translated/direct {:.3} (median of 300 pairs; quartiles {:.3}, {:.3})",
        d[150], t[150], ratios[150], ratios[75], ratios[225]
    );
    let mut g = c.benchmark_group("service_hit");
    g.throughput(Throughput::Elements(Hits::BATCH as u64));
    for (name, h) in [("direct", &mut direct), ("translated", &mut translated)] {
        g.bench_function(name, |b| b.iter(|| h.batch()));
        h.check(name);
    }
    g.finish();
}

fn new_connection(c: &mut Criterion) {
    let services = Arc::new(table());
    let mut g = c.benchmark_group("service_new_connection");
    for (name, dst) in [("direct", B4), ("10000x10", vip(4242))] {
        let template = udp(A, GW, A4, dst, 0, 53);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let batch = left.min(50_000);
                    left -= batch;
                    let cfg = Config {
                        conntrack_per_pod_max: 0,
                        ..Config::default()
                    };
                    let mut dp = datapath(cfg, services.clone());
                    let frames: Vec<Vec<u8>> = (0..batch)
                        .map(|i| {
                            let mut f = template.clone();
                            f[34..36].copy_from_slice(&(1024 + i as u16).to_be_bytes());
                            f
                        })
                        .collect();
                    let now = Instant::now();
                    let t = Instant::now();
                    for mut f in frames {
                        black_box(dp.process(1, &mut f, now));
                    }
                    total += t.elapsed();
                    assert_eq!(dp.conntrack().len(), batch as usize, "all tracked");
                }
                total
            })
        });
    }
    g.finish();
}

/// Service `i` (UDP 53 on its cluster IP).
fn service(i: usize) -> Service {
    Service {
        key: PodKey::new("x", format!("s{i}")),
        cluster_ips: vec![IpAddr::from(vip(i))],
        selector: None,
        ports: vec![ServicePort {
            name: None,
            port: 53,
            protocol: Protocol::Udp,
            target: TargetPort::Number(53),
        }],
        affinity_timeout: None,
        local_only: false,
        proxy_name: None,
    }
}

/// Service `i`'s slice: 10 endpoints, moved `shift` addresses on.
fn slice(i: usize, shift: usize) -> EndpointSlice {
    EndpointSlice {
        key: PodKey::new("x", format!("s{i}-1")),
        service: format!("s{i}"),
        ports: vec![SlicePort {
            name: None,
            port: 53,
            protocol: Protocol::Udp,
        }],
        endpoints: (0..ENDPOINTS)
            .map(|e| SliceEndpoint {
                addresses: vec![IpAddr::from(Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(10, 1, 0, 0)) + (i * ENDPOINTS + e + shift) as u32,
                ))],
                ready: true,
                serving: true,
                terminating: false,
                node: Some("n1".into()),
            })
            .collect(),
    }
}

/// The Services and slices as a source sends them: shared objects.
type Set = (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>);

/// Every Service and slice, s0's endpoints moved `shift` on. `base`: the
/// objects of the last update, reused where unchanged (as the source
/// reuses its conversions).
fn service_set(shift: usize, base: Option<&Set>) -> Set {
    match base {
        Some((services, slices)) => {
            let mut slices = slices.clone();
            slices[0] = Arc::new(slice(0, shift));
            (services.clone(), slices)
        }
        None => (
            (0..SERVICES).map(|i| Arc::new(service(i))).collect(),
            (0..SERVICES)
                .map(|i| Arc::new(slice(i, if i == 0 { shift } else { 0 })))
                .collect(),
        ),
    }
}

/// What vswitchd did for an update before the index: every frontend
/// from Services and slices, a new table, installed.
fn rebuild(dp: &mut Datapath, (services, slices): &Set) {
    let specs =
        endpoint_slice::frontends(services.iter().map(|s| &**s), slices.iter().map(|s| &**s));
    dp.set_services(Arc::new(ServiceTable::from_specs(specs, "n1")));
}

/// What vswitchd does for an update: the index brought to the new set, its
/// changes applied to the switch's table.
fn incremental(dp: &mut Datapath, index: &mut ServiceIndex, set: Set) {
    let changes = index.update(set.0, set.1);
    dp.update_services(changes.into_iter().map(|c| ServiceChange::of(c, "n1")));
}

/// The median and p99 of `times`.
fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    let at = |q: usize| times[(times.len() * q / 100).min(times.len() - 1)];
    format!("median {:?}, p99 {:?}", at(50), at(99))
}

fn endpoint_change(c: &mut Criterion) {
    const CHANGES: usize = 200;
    const ROUNDS: usize = 4;
    let first = service_set(0, None);
    // what vswitchd does: the sets arrive (made outside the timing),
    // compared, the change applied
    let mut dp = datapath(Config::default(), Arc::new(ServiceTable::new()));
    let mut index = ServiceIndex::new();
    incremental(&mut dp, &mut index, first.clone());
    assert_eq!(dp.services().len(), SERVICES);
    let mut times = Vec::with_capacity(CHANGES);
    for r in 1..=CHANGES {
        let set = service_set(r % ROUNDS, Some(&first));
        let t = Instant::now();
        incremental(&mut dp, &mut index, set);
        times.push(t.elapsed());
        // the change arrived: s0's endpoints moved with the round
        let fe = dp.services().get(&FrontendKey {
            ip: IpAddr::from(vip(0)),
            proto: 17,
            port: 53,
        });
        let lowest = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + (r % ROUNDS) as u32);
        assert_eq!(
            fe.unwrap().endpoints[0].ip,
            IpAddr::from(lowest),
            "change {r}"
        );
    }
    println!(
        "endpoint change, 10000 Services x 10 endpoints, incremental: {} ({CHANGES} changes)",
        summary(times)
    );
    // before: every frontend rebuilt
    let mut old = datapath(Config::default(), Arc::new(ServiceTable::new()));
    let times = (0..CHANGES)
        .map(|r| {
            let set = service_set(r % ROUNDS, Some(&first));
            let t = Instant::now();
            rebuild(&mut old, &set);
            t.elapsed()
        })
        .collect();
    println!(
        "endpoint change, 10000 Services x 10 endpoints, rebuilt: {} ({CHANGES} changes)",
        summary(times)
    );
    let mut r = 0;
    c.bench_function("endpoint_change/10000x10/incremental", |b| {
        b.iter_batched(
            || {
                r += 1;
                service_set(r % ROUNDS, Some(&first))
            },
            |set| incremental(&mut dp, &mut index, set),
            criterion::BatchSize::LargeInput,
        )
    });
}

criterion_group!(benches, hit, new_connection, endpoint_change);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
