//! The switch thread: the event loop with its worker, and a command queue
//! through which the daemon attaches and detaches ports. A command wakes the
//! loop at once (a mio waker), so a new pod's port is served without waiting
//! for the loop's timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::datapath::counters::Counters;
use crate::datapath::event_loop::EventLoop;
use crate::datapath::port::Port;
use crate::datapath::worker::{PolicyHandle, Worker};
use crate::datapath::{Config, Datapath, PortId, PortKind};

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
    /// Detaches a port; the reply comes once its descriptor is closed.
    Detach(PortId, mpsc::Sender<()>),
    /// Counters: the datapath's and every port's.
    Stats(mpsc::Sender<Stats>),
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub datapath: Counters,
    pub ports: Vec<(PortId, String, Counters)>,
    pub policy_generation: u64,
    pub conntrack: usize,
    pub flow_cache: usize,
}

pub struct Switch {
    tx: mpsc::Sender<Command>,
    waker: Arc<mio::Waker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
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
            tx,
            waker,
            stop,
            thread: Some(thread),
        })
    }

    pub fn send(&self, c: Command) {
        if self.tx.send(c).is_ok() {
            let _ = self.waker.wake();
        }
    }

    pub fn detach(&self, id: PortId) {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Detach(id, tx));
        let _ = rx.recv_timeout(Duration::from_secs(5));
    }

    pub fn stats(&self) -> Stats {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Stats(tx));
        rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default()
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
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
        Command::Detach(id, done) => {
            let _ = el.deregister(id);
            drop(el.worker.detach(id));
            el.worker.datapath.remove_port(id);
            let _ = done.send(());
        }
        Command::Stats(reply) => {
            let dp = &el.worker.datapath;
            let _ = reply.send(Stats {
                datapath: dp.counters.clone(),
                ports: dp
                    .ports()
                    .map(|(id, p)| (id, p.name.clone(), p.counters.clone()))
                    .collect(),
                policy_generation: dp.policy_generation(),
                conntrack: dp.conntrack().len(),
                flow_cache: dp.flow_cache().len(),
            });
        }
    }
}
