//! The event loop: the only code that waits on file descriptors.
//!
//! It registers every port that has a descriptor with mio (edge-triggered),
//! sleeps until one is readable (or, when frames wait for it, writable) or
//! until housekeeping is due, then lets the [`Worker`] drain its ports until
//! nothing is left. Everything else, parsing to policy, happens in the
//! sans-I/O core behind `Worker::poll`.

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
    /// Registered ports: id, descriptor, and whether writability is asked.
    fds: Vec<(PortId, RawFd, bool)>,
    next_housekeeping: Instant,
}

/// The waker's token: above every port id.
const WAKE: Token = Token(1 << 20);

/// How often expired connections and cache entries are swept.
const HOUSEKEEPING: Duration = Duration::from_millis(1000);

impl EventLoop {
    pub fn new(worker: Worker) -> io::Result<EventLoop> {
        Ok(EventLoop {
            poll: Poll::new()?,
            events: Events::with_capacity(256),
            worker,
            fds: Vec::new(),
            next_housekeeping: Instant::now() + HOUSEKEEPING,
        })
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
        self.fds.push((id, fd, false));
        Ok(())
    }

    pub fn deregister(&mut self, id: PortId) -> io::Result<()> {
        if let Some(i) = self.fds.iter().position(|(p, _, _)| *p == id) {
            let (_, fd, _) = self.fds.remove(i);
            self.poll.registry().deregister(&mut SourceFd(&fd))?;
        }
        Ok(())
    }

    /// One round: wait (at most `timeout`), drain every port, ask for
    /// writability where frames wait. Returns the frames received.
    pub fn run_once(&mut self, timeout: Duration) -> io::Result<usize> {
        let now = Instant::now();
        let wait = timeout.min(self.next_housekeeping.saturating_duration_since(now));
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        // Edge-triggered: drain until a round receives nothing.
        let mut total = 0;
        loop {
            let n = self.worker.poll(Instant::now());
            total += n;
            if n == 0 {
                break;
            }
        }
        for (id, fd, writable) in &mut self.fds {
            let want = self.worker.pending(*id) > 0;
            if want != *writable {
                let interest = if want {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                self.poll.registry().reregister(
                    &mut SourceFd(fd),
                    Token(*id as usize),
                    interest,
                )?;
                *writable = want;
            }
        }
        let now = Instant::now();
        if now >= self.next_housekeeping {
            self.worker.datapath.expire(now, 4096);
            self.next_housekeeping = now + HOUSEKEEPING;
        }
        Ok(total)
    }

    /// Runs rounds until `stop` says so.
    pub fn run(&mut self, mut stop: impl FnMut(&Worker) -> bool) -> io::Result<()> {
        while !stop(&self.worker) {
            self.run_once(Duration::from_millis(100))?;
        }
        Ok(())
    }
}
