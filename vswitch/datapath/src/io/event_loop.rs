//! The event loop: the only code that waits on file descriptors.
//!
//! It registers every port that has a descriptor with mio (edge-triggered),
//! sleeps until one is readable (or, when frames wait for it, writable) or
//! until housekeeping is due, then lets the [`Worker`] take frames from its
//! ports. Everything else, parsing to policy, happens in the sans-I/O core
//! behind `Worker::poll`.
//!
//! The drain is bounded: one call of [`EventLoop::run_once`] runs at most
//! [`DRAIN_ROUNDS`] rounds (each round takes at most one batch from every
//! port, in turn) and at most [`DRAIN_TIME`], then returns, so that the
//! caller's commands (a new pod's port, queries) and the housekeeping timer
//! run between calls whatever a pod sends: a flood costs others one batch
//! per round, never the loop. Readiness is edge-triggered, so frames left
//! behind raise no new edge: when the last round received anything, the
//! next call does not sleep but polls again at once.
//!
//! Readable edges go to the worker ([`Worker::wake`]), which reads only
//! the ports that had one or still hold frames.
//!
//! Before it sleeps, the loop may poll for a while (adaptive busy
//! polling, as KVM's halt polling): a request's answer often comes a few
//! tens of microseconds after the request went through, and sleeping in
//! epoll costs a wakeup of the switch thread on top of the round trip.
//! The window is never longer than the datapath `Config::busy_poll_us`
//! (200 µs by default, as KVM's halt polling; on the 2-core VM it gave a
//! lower request/response p99 than 100 µs at the same CPU; 0 turns busy
//! polling off). It opens when a sleep ended by traffic was shorter than
//! that (a spin would have caught it) and the call before took a frame or
//! two ([`BUSY_POLL_FRAMES`]: a request, not a stream); it doubles each
//! time a spin waits for traffic and catches it, and halves each time a
//! spin catches nothing or catches frames at once (a stream or a flood,
//! which a sleep takes in larger batches: spinning cost a UDP flood a
//! quarter of its rate). An idle switch does not spin at all, and the end
//! of a burst costs a few spins at most. The spin asks epoll (with no
//! wait) for readiness, one system call per turn whatever the ports, and
//! yields the core between turns: on a node whose cores are all busy (pods
//! and the switch), a spin gives way to any thread that is ready to run
//! instead of holding its core for the whole window. (Measured on the
//! 2-core VM: with `spin_loop` in place of the yield, the two switches of
//! the overlay test spent their spare time spinning against the pods.)
//!
//! A pod's port paused for its slow-path budget (`budget.rs`) is not
//! watched while the pause lasts (its frames would wake the loop for
//! nothing); the wait ends when the first pause does, and the round after
//! it reads the port whatever edges were missed.
//!
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::worker::Worker;
use crate::PortId;

pub struct EventLoop {
    poll: Poll,
    events: Events,
    pub worker: Worker,
    /// Ports with a descriptor: id, descriptor, and what is asked of it
    /// (None: not registered, a paused port with nothing to send).
    fds: Vec<(PortId, RawFd, Option<Interest>)>,
    next_housekeeping: Instant,
    /// The last round received frames: some may be left (no new edge will
    /// say so), so the next call polls without waiting.
    more: bool,
    /// The busy-poll window (zero: sleep at once).
    spin: Duration,
    /// Frames the last call received.
    last: usize,
    /// The longest window (zero: no busy polling).
    spin_max: Duration,
}

/// The most frames the call before may have received for the loop to
/// busy poll: a request and its answer come a frame or two at a time; a
/// stream or a flood brings more, and then a sleep serves better (frames
/// gather in the ports meanwhile and are taken in larger batches, where a
/// spin takes them one or two per round).
pub const BUSY_POLL_FRAMES: usize = 2;

/// A spin that catches traffic sooner than this halves the window instead
/// of doubling it: frames are coming faster than a sleep costs.
const BUSY_POLL_QUICK: Duration = Duration::from_micros(5);

/// The window a busy poll starts with.
const BUSY_POLL_START: Duration = Duration::from_micros(10);

/// The waker's token: above every port id.
const WAKE: Token = Token(1 << 20);

/// Most rounds one call of [`EventLoop::run_once`] drains (each round takes
/// at most one batch from every port).
pub const DRAIN_ROUNDS: usize = 8;

/// The time after which a call of [`EventLoop::run_once`] starts no new
/// round (with many busy ports, eight rounds can take long).
pub const DRAIN_TIME: Duration = Duration::from_millis(2);

/// How often expired connections and cache entries are swept.
const HOUSEKEEPING: Duration = Duration::from_millis(1000);

impl EventLoop {
    pub fn new(mut worker: Worker) -> io::Result<EventLoop> {
        worker.track_edges();
        let spin_max = Duration::from_micros(worker.datapath.config().busy_poll_us.into());
        Ok(EventLoop {
            poll: Poll::new()?,
            events: Events::with_capacity(256),
            worker,
            fds: Vec::new(),
            next_housekeeping: Instant::now() + HOUSEKEEPING,
            more: false,
            spin: Duration::ZERO,
            last: 0,
            spin_max,
        })
    }

    /// The longest busy-poll window (zero: off).
    pub fn busy_poll_max(&self) -> Duration {
        self.spin_max
    }

    /// The current busy-poll window.
    pub fn busy_poll_window(&self) -> Duration {
        self.spin
    }

    /// A waker for other threads: it ends the current wait at once (the
    /// daemon wakes the loop after it queues a port change).
    pub fn waker(&self) -> io::Result<Waker> {
        Waker::new(self.poll.registry(), WAKE)
    }

    /// Starts watching a port the worker already holds (ports without a
    /// descriptor are polled on every round anyway).
    pub fn register(&mut self, id: PortId) -> io::Result<()> {
        let Some(fd) = self.worker.port_mut(id).and_then(|p| p.raw_fd()) else {
            return Ok(());
        };
        self.poll.registry().register(
            &mut SourceFd(&fd),
            Token(id as usize),
            Interest::READABLE,
        )?;
        self.fds.push((id, fd, Some(Interest::READABLE)));
        Ok(())
    }

    pub fn deregister(&mut self, id: PortId) -> io::Result<()> {
        if let Some(i) = self.fds.iter().position(|(p, _, _)| *p == id) {
            let (_, fd, asked) = self.fds.remove(i);
            if asked.is_some() {
                self.poll.registry().deregister(&mut SourceFd(&fd))?;
            }
        }
        Ok(())
    }

    /// One call: wait (at most `timeout`; not at all when frames may be
    /// left), take frames from every port for a bounded number of rounds,
    /// ask for writability where frames wait, run housekeeping when due.
    /// Returns the frames received.
    pub fn run_once(&mut self, timeout: Duration) -> io::Result<usize> {
        let now = Instant::now();
        let wait = if self.more {
            Duration::ZERO
        } else {
            // housekeeping, or a paused port's resumption if sooner
            let due = self
                .worker
                .resumes_at()
                .map_or(self.next_housekeeping, |r| r.min(self.next_housekeeping));
            timeout.min(due.saturating_duration_since(now))
        };
        self.wait(wait)?;
        for event in self.events.iter() {
            // (an error is read too: a tunnel port counts its socket's)
            if event.token() != WAKE && (event.is_readable() || event.is_error()) {
                self.worker.wake(event.token().0 as PortId);
            }
        }
        // Bounded: until a round receives nothing, or the bound.
        let start = Instant::now();
        let mut total = 0;
        self.more = false;
        for _ in 0..DRAIN_ROUNDS {
            let n = self.worker.poll(Instant::now());
            total += n;
            self.more = n > 0;
            if n == 0 || start.elapsed() >= DRAIN_TIME {
                break;
            }
        }
        // Readable unless paused (a paused port's frames would wake the
        // loop for nothing), writable while frames wait for it.
        let now = Instant::now();
        for (id, fd, asked) in &mut self.fds {
            let read = (!self.worker.paused(*id, now)).then_some(Interest::READABLE);
            let write = (self.worker.pending(*id) > 0).then_some(Interest::WRITABLE);
            let want = match (read, write) {
                (Some(r), Some(w)) => Some(r | w),
                (r, w) => r.or(w),
            };
            if want == *asked {
                continue;
            }
            let (registry, source, token) =
                (self.poll.registry(), &mut SourceFd(fd), Token(*id as usize));
            match (*asked, want) {
                (None, Some(i)) => registry.register(source, token, i)?,
                (Some(_), Some(i)) => registry.reregister(source, token, i)?,
                (Some(_), None) => registry.deregister(source)?,
                (None, None) => {}
            }
            *asked = want;
        }
        if now >= self.next_housekeeping {
            self.worker.datapath.expire(now, 4096);
            self.next_housekeeping = now + HOUSEKEEPING;
        }
        self.last = total;
        Ok(total)
    }

    /// Waits for events at most `wait`: first a busy poll within the
    /// window, then a sleep for the rest; adapts the window to what came.
    fn wait(&mut self, wait: Duration) -> io::Result<()> {
        if wait.is_zero() {
            return self.poll_events(Duration::ZERO);
        }
        let start = Instant::now();
        if !self.spin.is_zero() && self.last <= BUSY_POLL_FRAMES {
            let until = start + self.spin.min(wait);
            loop {
                self.poll_events(Duration::ZERO)?;
                if !self.events.is_empty() {
                    // caught at once: frames come faster than a sleep
                    // would cost, and a sleep lets more of them gather
                    self.spin = if start.elapsed() < BUSY_POLL_QUICK {
                        self.spin / 2
                    } else {
                        (self.spin * 2).min(self.spin_max)
                    };
                    return Ok(());
                }
                if Instant::now() >= until {
                    break;
                }
                std::thread::yield_now();
            }
            self.spin /= 2;
            if self.spin < Duration::from_micros(1) {
                self.spin = Duration::ZERO;
            }
        }
        let slept = Instant::now();
        self.poll_events(wait.saturating_sub(slept - start))?;
        // traffic that a spin would have caught: start spinning
        if self.spin.is_zero()
            && self.last <= BUSY_POLL_FRAMES
            && !self.events.is_empty()
            && slept.elapsed() <= self.spin_max
        {
            self.spin = BUSY_POLL_START.min(self.spin_max);
        }
        Ok(())
    }

    fn poll_events(&mut self, timeout: Duration) -> io::Result<()> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.events.clear();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Runs rounds until `stop` says so.
    pub fn run(&mut self, mut stop: impl FnMut(&Worker) -> bool) -> io::Result<()> {
        while !stop(&self.worker) {
            self.run_once(Duration::from_millis(100))?;
        }
        Ok(())
    }
}
