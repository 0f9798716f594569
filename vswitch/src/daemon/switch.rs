//! The switch thread: the event loop with its worker, and a command queue
//! through which the daemon attaches and detaches ports. A command wakes the
//! loop at once (a mio waker), so a new pod's port is served without waiting
//! for the loop's timeout. Commands are taken between calls of
//! `EventLoop::run_once`, whose drain is bounded: a flood from one pod
//! delays them by a few batches, not until it stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::net::IpAddr;

use vswitch_cni::proto::{ConnInfo, EndpointInfo, FlowInfo, PortInfo, ServiceInfo};

use vswitch_datapath::counters::Counters;
use vswitch_datapath::io::event_loop::EventLoop;
use vswitch_datapath::io::port::Port;
use vswitch_datapath::io::worker::{PolicyHandle, Worker};
use vswitch_datapath::parse::mac_text;
use vswitch_datapath::services::{ServiceChange, ServiceTable};
use vswitch_datapath::{Config, Datapath, PortId, PortKind};

pub enum Command {
    Attach {
        id: PortId,
        name: String,
        mac: [u8; 6],
        kind: PortKind,
        port: Box<dyn Port>,
    },
    /// Marks a pod's port ready from this policy generation on.
    Ready(PortId, u64),
    /// A port's MTU (its device's): bigger packets are not sent to it.
    Mtu(PortId, u16),
    /// Detaches a port; the reply comes once its descriptor is closed.
    Detach(PortId, mpsc::Sender<()>),
    /// Changes to the Services the switch translates (`--service-proxy
    /// switch`).
    Services(Vec<ServiceChange>),
    /// The whole table, replacing the last one.
    ServiceTable(Arc<ServiceTable>),
    /// What vswitchctl and the metrics endpoint show.
    Query(Query, mpsc::Sender<Answer>),
}

pub enum Query {
    /// The datapath's counters and table sizes.
    Totals,
    /// Every port with its counters.
    Ports,
    Flows(usize),
    Conntrack(usize),
    /// The Services' frontends, endpoints and connections.
    Services,
}

pub enum Answer {
    Totals(Box<Totals>),
    Ports(Vec<PortInfo>),
    Flows(Vec<FlowInfo>, usize),
    Conntrack(Vec<ConnInfo>, usize),
    Services(Vec<ServiceInfo>),
}

#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub datapath: Counters,
    /// The Services' translations and refusals.
    pub services: vswitch_datapath::ServiceCounters,
    pub policy_generation: u64,
    pub conntrack: usize,
    /// Unanswered connections evicted to make room for new ones.
    pub conntrack_evicted: u64,
    pub flow_cache: usize,
}

pub struct Switch {
    handle: SwitchHandle,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What other threads hold to talk to the switch thread.
#[derive(Clone)]
pub struct SwitchHandle {
    tx: mpsc::Sender<Command>,
    waker: Arc<mio::Waker>,
}

impl SwitchHandle {
    pub fn send(&self, c: Command) {
        if self.tx.send(c).is_ok() {
            let _ = self.waker.wake();
        }
    }

    pub fn query(&self, q: Query) -> Option<Answer> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Query(q, tx));
        rx.recv_timeout(Duration::from_secs(5)).ok()
    }

    /// Detaches a port and waits until its descriptor is closed.
    pub fn detach(&self, id: PortId) {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Detach(id, tx));
        let _ = rx.recv_timeout(Duration::from_secs(5));
    }
}

impl Switch {
    pub fn start(cfg: Config, policy: PolicyHandle) -> std::io::Result<Switch> {
        let worker = Worker::new(Datapath::new(cfg, Instant::now()), policy);
        let mut el = EventLoop::new(worker)?;
        let waker = Arc::new(el.waker()?);
        let (tx, rx) = mpsc::channel::<Command>();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("switch".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    while let Ok(c) = rx.try_recv() {
                        handle(&mut el, c);
                    }
                    if let Err(e) = el.run_once(Duration::from_millis(500)) {
                        tracing::error!("event loop: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })?;
        Ok(Switch {
            handle: SwitchHandle { tx, waker },
            stop,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> &SwitchHandle {
        &self.handle
    }

    pub fn send(&self, c: Command) {
        self.handle.send(c);
    }

    pub fn detach(&self, id: PortId) {
        self.handle.detach(id);
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(el: &mut EventLoop, c: Command) {
    match c {
        Command::Attach {
            id,
            name,
            mac,
            kind,
            port,
        } => {
            el.worker.datapath.add_port(id, &name, mac, kind);
            el.worker.attach(id, port);
            if let Err(e) = el.register(id) {
                tracing::error!("port {name}: cannot poll it: {e}");
            }
        }
        Command::Ready(id, generation) => el.worker.datapath.set_ready(id, generation),
        Command::Mtu(id, mtu) => el.worker.datapath.set_mtu(id, mtu),
        Command::Services(changes) => el.worker.datapath.update_services(changes),
        Command::ServiceTable(table) => el.worker.datapath.set_services(table),
        Command::Detach(id, done) => {
            let _ = el.deregister(id);
            drop(el.worker.detach(id));
            el.worker.datapath.remove_port(id);
            let _ = done.send(());
        }
        Command::Query(q, reply) => {
            let _ = reply.send(answer(&el.worker, q));
        }
    }
}

fn ip_of(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(v.into())
    } else {
        IpAddr::V4((v as u32).into())
    }
}

fn answer(worker: &Worker, q: Query) -> Answer {
    let dp = &worker.datapath;
    match q {
        Query::Totals => Answer::Totals(Box::new(Totals {
            datapath: dp.counters.clone(),
            services: dp.service_counters(),
            policy_generation: dp.policy_generation(),
            conntrack: dp.conntrack().len(),
            conntrack_evicted: dp.conntrack().evicted(),
            flow_cache: dp.flow_cache().len(),
        })),
        Query::Ports => Answer::Ports(
            dp.ports()
                .map(|(id, p)| {
                    let (kind, ips, ready) = match &p.kind {
                        PortKind::Pod {
                            ips,
                            ready_generation,
                        } => (
                            "pod",
                            ips.clone(),
                            dp.policy_generation() >= *ready_generation,
                        ),
                        PortKind::Node { ips } => ("node", ips.clone(), true),
                        PortKind::Remote { addr, cidrs, .. } => (
                            "remote",
                            std::iter::once(*addr)
                                .chain(cidrs.iter().map(|c| c.network()))
                                .collect(),
                            true,
                        ),
                        PortKind::Overlay => ("overlay", Vec::new(), true),
                    };
                    let tx_drops = worker.tx_drops(id);
                    PortInfo {
                        id,
                        name: p.name.clone(),
                        mac: mac_text(p.mac),
                        kind: kind.into(),
                        ips,
                        ready,
                        rx_packets: p.counters.rx_packets,
                        rx_bytes: p.counters.rx_bytes,
                        tx_packets: p.counters.tx_packets,
                        tx_bytes: p.counters.tx_bytes,
                        tx_error: tx_drops.tx_error,
                        tx_queue_full: tx_drops.tx_queue_full,
                        rx_paused: worker.slow_path_pauses(id),
                        rx_dropped: worker.rx_dropped(id),
                        outcomes: p
                            .counters
                            .nonzero()
                            .into_iter()
                            .map(|(o, n)| (o.name().to_string(), n))
                            .collect(),
                    }
                })
                .collect(),
        ),
        Query::Flows(limit) => {
            let epoch = dp.epoch();
            let cache = dp.flow_cache();
            let flows = cache
                .entries()
                .take(limit)
                .map(|s| {
                    let k = s.key;
                    FlowInfo {
                        in_port: k.in_port,
                        src: ip_of(k.src, k.v6),
                        dst: ip_of(k.dst, k.v6),
                        protocol: k.proto,
                        sport: k.sport,
                        dport: k.dport,
                        out_port: s.port,
                        routed: s.routed,
                        current: s.epoch == epoch as u32,
                    }
                })
                .collect();
            Answer::Flows(flows, cache.len())
        }
        Query::Conntrack(limit) => {
            let ct = dp.conntrack();
            let now = dp.clock_ms(Instant::now());
            let connections = ct
                .entries()
                .take(limit)
                .filter_map(|(r, e)| {
                    let t = ct.orig_tuple(r)?;
                    Some(ConnInfo {
                        protocol: t.proto,
                        src: t.src,
                        sport: t.sport,
                        dst: t.dst,
                        dport: t.dport,
                        state: format!("{:?}", e.state).to_lowercase(),
                        idle_ms: now.saturating_sub(e.last_seen),
                    })
                })
                .collect();
            Answer::Conntrack(connections, ct.len())
        }
        Query::Services => {
            let counts = dp.service_connections();
            let mut out: Vec<ServiceInfo> = dp
                .services()
                .iter()
                .map(|(k, f)| ServiceInfo {
                    connections_total: dp.frontend_counters(k).translated,
                    refused_total: dp.frontend_counters(k).refused,
                    service: f.service.clone(),
                    port_name: f.port_name.clone(),
                    ip: k.ip,
                    port: k.port,
                    protocol: format!("{:?}", policy::Protocol::from_number(k.proto))
                        .to_uppercase(),
                    affinity_seconds: f.affinity_ms.map(|ms| ms / 1000),
                    local_only: f.local_only,
                    endpoints: f
                        .endpoints
                        .iter()
                        .map(|e| EndpointInfo {
                            ip: e.ip,
                            port: e.port,
                            ready: e.ready,
                            serving: e.serving,
                            terminating: e.terminating,
                            local: e.local,
                            usable: f.is_usable(e.ip, e.port),
                            connections: counts.get(&(*k, e.ip, e.port)).copied().unwrap_or(0),
                        })
                        .collect(),
                })
                .collect();
            out.sort_by(|a, b| (&a.service, a.ip, a.port).cmp(&(&b.service, b.ip, b.port)));
            Answer::Services(out)
        }
    }
}
