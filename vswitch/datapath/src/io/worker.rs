//! A datapath worker: owns its ports, its [`Datapath`] (with its flow cache
//! and conntrack) and moves frames between them. Shared-nothing: a second
//! worker owns other ports and another datapath. Policy arrives through a
//! [`PolicyHandle`], read once per batch with one atomic load, no lock.
//!
//! This loop polls its ports; the daemon's loop (with TAP file descriptors)
//! waits on them with mio and calls the same [`Worker::poll`]. Under that
//! loop ([`Worker::track_edges`]) a port with a descriptor is read only
//! when it may hold frames: after a readable edge, and while it fills its
//! slice each round; a port that answered "nothing waiting" is not read
//! again until its next edge, so a round costs system calls for the busy
//! ports only, not for every pod on the node.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use policy::Snapshot;

use super::budget::Budget;
use super::port::{Port, RxMeta};
use crate::coalesce::{self, Coalescer};
use crate::counters::{Outcome, TxDrops};
use crate::wire::vnet::VIRTIO_NET_HDR_F_NEEDS_CSUM;
use crate::{Action, Datapath, Offload, PortId, PortKind, overlay};

/// Where the control plane publishes policy generations for workers.
#[derive(Clone, Default)]
pub struct PolicyHandle(Arc<ArcSwap<Snapshot>>);

impl PolicyHandle {
    pub fn publish(&self, s: Snapshot) {
        self.0.store(Arc::new(s));
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// The published snapshot if its generation is not `generation`: a
    /// lock-free read, and no reference count touched when nothing changed.
    pub fn newer_than(&self, generation: u64) -> Option<Arc<Snapshot>> {
        let s = self.0.load();
        (s.generation() != generation).then(|| Arc::clone(&s))
    }
}

/// Frames to send that a port could not take yet (backpressure).
#[derive(Default)]
struct Pending {
    frames: VecDeque<(Vec<u8>, RxMeta)>,
    /// The bytes of `frames`.
    bytes: usize,
    drops: TxDrops,
}

impl Pending {
    /// Queues a copy of the frame (its pieces joined) if the bound allows,
    /// in a buffer from `spare`; otherwise drops it and counts it.
    fn push(&mut self, spare: &mut Spare, pieces: &[&[u8]], meta: RxMeta) {
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        if self.frames.len() >= PENDING_FRAMES || self.bytes + len > PENDING_BYTES {
            self.drops.tx_queue_full += 1;
            return;
        }
        let mut b = spare.take();
        for piece in pieces {
            b.extend_from_slice(piece);
        }
        self.bytes += b.len();
        self.frames.push_back((b, meta));
    }

    /// Takes the oldest frame off the queue and gives its buffer back.
    fn pop(&mut self, spare: &mut Spare) {
        if let Some((b, _)) = self.frames.pop_front() {
            self.bytes -= b.len();
            spare.give(b);
        }
    }

    /// Drops everything that waits (the port is gone), buffers back.
    fn clear(&mut self, spare: &mut Spare) {
        while !self.frames.is_empty() {
            self.pop(spare);
        }
    }
}

/// Buffers of pending frames that were sent or dropped, for the next
/// frames that must wait. Bounded too, to one queue's worth (frames, and
/// bytes counted by capacity so that large buffers are not all kept); the
/// rest is freed.
#[derive(Default)]
struct Spare {
    bufs: Vec<Vec<u8>>,
    /// The capacity of `bufs`, in all.
    bytes: usize,
}

impl Spare {
    fn take(&mut self) -> Vec<u8> {
        let b = self.bufs.pop().unwrap_or_default();
        self.bytes -= b.capacity();
        b
    }

    fn give(&mut self, mut b: Vec<u8>) {
        if self.bufs.len() < PENDING_FRAMES && self.bytes + b.capacity() <= PENDING_BYTES {
            b.clear();
            self.bytes += b.capacity();
            self.bufs.push(b);
        }
    }
}

/// The bound of one port's pending queue, in frames and in bytes. A port
/// that never drains (its pod stopped reading, its link is down) must cost
/// only its own frames: beyond the bound, frames to it are dropped and
/// counted. 256 frames is four full receive batches ([`Datapath::BATCH`]),
/// enough to ride out a burst while a TAP's queue empties; 1 MiB caps the
/// memory when the frames are large (16 GSO frames of 64 KiB), so the
/// worst case over 1,000 ports stays about 1 GiB instead of growing without
/// limit. What waits is also what a port gets late when it comes back, so
/// the bound is also the most stale frames it can receive.
pub const PENDING_FRAMES: usize = 256;
pub const PENDING_BYTES: usize = 1 << 20;

pub struct Worker {
    pub datapath: Datapath,
    ports: Vec<Option<Box<dyn Port>>>,
    pending: Vec<Pending>,
    spare: Spare,
    policy: PolicyHandle,
    /// Receive buffers, one per frame of a batch.
    bufs: Vec<Vec<u8>>,
    lens: Vec<(usize, RxMeta)>,
    actions: Vec<Action>,
    /// Segments from the overlay being merged for a pod.
    merge: Coalescer,
    /// Frames received per port per poll.
    pub batch: usize,
    /// Per port: it filled its batch in the last round.
    full: Vec<bool>,
    /// Ports that received anything in the last round.
    busy: usize,
    /// Per port: its slow-path budget (pods' ports only).
    budgets: Vec<Budget>,
    /// Per port: read it in the next round. Cleared once a port with a
    /// descriptor is drained, when edges are tracked; set again by
    /// [`Worker::wake`].
    ready: Vec<bool>,
    /// Per port: it has a descriptor (so edges say when it has frames).
    has_fd: Vec<bool>,
    /// Whether an event loop reports edges ([`Worker::wake`]).
    edges: bool,
}

/// A port's slice of a round while others have frames too, if it filled
/// its batch the round before: a flooding port cannot make every other
/// port's packets wait for a whole batch of its own each round.
pub const SHARED_SLICE: usize = 8;

impl Worker {
    pub fn new(datapath: Datapath, policy: PolicyHandle) -> Worker {
        Worker {
            datapath,
            ports: Vec::new(),
            pending: Vec::new(),
            spare: Spare::default(),
            policy,
            bufs: (0..Datapath::BATCH).map(|_| vec![0; 65_536]).collect(),
            lens: Vec::with_capacity(Datapath::BATCH),
            actions: Vec::with_capacity(Datapath::BATCH),
            merge: Coalescer::default(),
            batch: Datapath::BATCH,
            full: Vec::new(),
            busy: 0,
            budgets: Vec::new(),
            ready: Vec::new(),
            has_fd: Vec::new(),
            edges: false,
        }
    }

    pub fn attach(&mut self, id: PortId, port: Box<dyn Port>) {
        let i = id as usize;
        if self.ports.len() <= i {
            self.ports.resize_with(i + 1, || None);
            self.pending.resize_with(i + 1, Pending::default);
            self.ready.resize(i + 1, false);
            self.has_fd.resize(i + 1, false);
        }
        // read at once: frames may have come before its first edge is seen
        self.ready[i] = true;
        self.has_fd[i] = port.raw_fd().is_some();
        self.ports[i] = Some(port);
    }

    /// From now on, ports with a descriptor are read only after
    /// [`Worker::wake`] (the event loop's readable edges) and while they
    /// have frames left.
    pub fn track_edges(&mut self) {
        self.edges = true;
    }

    /// A port's descriptor became readable: read it in the next round.
    pub fn wake(&mut self, id: PortId) {
        if let Some(r) = self.ready.get_mut(id as usize) {
            *r = true;
        }
    }

    /// Whether a port will be read in the next round (it had an edge or
    /// frames left, or edges are not tracked).
    pub fn ready(&self, id: PortId) -> bool {
        self.ready.get(id as usize).is_some_and(|r| *r)
    }

    pub fn detach(&mut self, id: PortId) -> Option<Box<dyn Port>> {
        if let Some(p) = self.pending.get_mut(id as usize) {
            p.clear(&mut self.spare);
        }
        if let Some(b) = self.budgets.get_mut(id as usize) {
            *b = Budget::default();
        }
        self.ports.get_mut(id as usize)?.take()
    }

    pub fn port_mut(&mut self, id: PortId) -> Option<&mut Box<dyn Port>> {
        self.ports.get_mut(id as usize)?.as_mut()
    }

    /// Frames waiting for a port to become writable.
    pub fn pending(&self, id: PortId) -> usize {
        self.pending.get(id as usize).map_or(0, |p| p.frames.len())
    }

    /// The bytes of the frames waiting for a port.
    pub fn pending_bytes(&self, id: PortId) -> usize {
        self.pending.get(id as usize).map_or(0, |p| p.bytes)
    }

    /// Times a port was paused for exceeding its slow-path budget.
    pub fn slow_path_pauses(&self, id: PortId) -> u64 {
        self.budgets.get(id as usize).map_or(0, |b| b.pauses)
    }

    /// Frames the port's socket dropped before the switch read them.
    pub fn rx_dropped(&self, id: PortId) -> u64 {
        self.ports
            .get(id as usize)
            .and_then(Option::as_ref)
            .map_or(0, |p| p.rx_dropped())
    }

    /// Frames dropped at send time on a port.
    pub fn tx_drops(&self, id: PortId) -> TxDrops {
        self.pending
            .get(id as usize)
            .map_or_else(TxDrops::default, |p| p.drops)
    }

    /// One round: pick up a new policy generation, flush what waits, then
    /// receive up to `batch` frames from every port and act on each (up to
    /// [`SHARED_SLICE`] from a port that filled its share of the last round
    /// while other ports had frames too; from a pod's port, no more than
    /// its slow-path budget can pay for, and nothing while it is in debt:
    /// see `budget.rs`). Returns the number of frames received.
    pub fn poll(&mut self, now: Instant) -> usize {
        if let Some(snap) = self.policy.newer_than(self.datapath.policy_generation()) {
            self.datapath.set_policy(snap);
        }
        for id in 0..self.ports.len() {
            self.flush(id);
        }
        let mut received = 0;
        let batch = self.batch.clamp(1, Datapath::BATCH);
        let shared = self.busy > 1;
        self.busy = 0;
        self.full.resize(self.ports.len(), false);
        self.budgets.resize_with(self.ports.len(), Budget::default);
        let rate = self.datapath.config().slow_path_per_pod;
        for id in 0..self.ports.len() {
            if !self.ready[id] {
                continue;
            }
            let mut slice = if shared && self.full[id] {
                batch.min(SHARED_SLICE)
            } else {
                batch
            };
            // A pod's port in debt of its slow-path budget waits.
            let budgeted = rate > 0
                && self
                    .datapath
                    .port(id as PortId)
                    .is_some_and(|p| matches!(p.kind, PortKind::Pod { .. }));
            if budgeted {
                if !self.budgets[id].may_read(now) {
                    continue;
                }
                // no more than it can pay for (one at least): a port back
                // from a pause takes a few frames a round, not a batch
                slice = slice.min(self.budgets[id].available(rate, now).max(1));
            }
            // Receive a batch, act on it as one, then send.
            self.lens.clear();
            let Some(port) = self.ports[id].as_mut() else {
                continue;
            };
            while self.lens.len() < slice {
                match port.recv(&mut self.bufs[self.lens.len()]) {
                    Ok(Some(x)) => self.lens.push(x),
                    Ok(None) | Err(_) => {
                        // drained (or failing): wait for the next edge
                        self.ready[id] = !(self.edges && self.has_fd[id]);
                        break;
                    }
                }
            }
            // Full: it had a batch's worth, or would have (its slice was full).
            self.full[id] = self.lens.len() == slice;
            if self.lens.is_empty() {
                continue;
            }
            self.busy += 1;
            received += self.lens.len();
            let count = self.lens.len();
            self.actions.clear();
            // The overlay's datagrams carry a frame after their VXLAN header,
            // with complete checksums.
            let overlay = self
                .datapath
                .port(id as PortId)
                .is_some_and(|p| p.kind == PortKind::Overlay);
            if overlay {
                for (buf, (n, meta)) in self.bufs.iter_mut().zip(&self.lens) {
                    let a =
                        self.datapath
                            .process_overlay(id as PortId, meta.peer, &mut buf[..*n], now);
                    self.actions.push(a);
                }
            } else {
                let before = self.slow_path_work();
                // The batch's frames as slices, on the stack: no allocation
                // per poll.
                let mut frames: [&mut [u8]; Datapath::BATCH] = std::array::from_fn(|_| &mut [][..]);
                let mut offload = [Offload::NONE; Datapath::BATCH];
                for (((slot, o), buf), (n, meta)) in frames
                    .iter_mut()
                    .zip(offload.iter_mut())
                    .zip(self.bufs.iter_mut())
                    .zip(&self.lens)
                {
                    *slot = &mut buf[..*n];
                    *o = Offload {
                        gso: if meta.is_gso() { meta.vnet.gso_size } else { 0 },
                        partial_csum: meta.vnet.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0,
                    };
                }
                self.datapath.process_batch(
                    id as PortId,
                    &mut frames[..count],
                    &offload[..count],
                    now,
                    &mut self.actions,
                );
                if budgeted {
                    let after = self.slow_path_work();
                    let (opened, forwarded) = (after.0 - before.0, after.1 - before.1);
                    let charge = (count as u64 + opened).saturating_sub(forwarded);
                    self.budgets[id].charge(rate, charge as usize, now);
                }
            }
            let start = if overlay { overlay::HLEN } else { 0 };
            for (k, action) in self.actions.drain(..).enumerate() {
                let (n, meta) = self.lens[k];
                let meta = if overlay { RxMeta::default() } else { meta };
                // An overlay datagram's inner frame (empty when the datagram
                // is shorter than its VXLAN header: anyone may send one, and
                // the datapath has dropped it).
                let frame = self.bufs[k].get(start..n).unwrap_or_default();
                if overlay {
                    // Runs of TCP segments to one pod are merged (order to
                    // every port kept: a run is flushed before anything
                    // else is sent).
                    if let Action::Forward(out) = action
                        && self.merge.push(out, k, frame)
                    {
                        continue;
                    }
                    Self::flush_merged(
                        &mut self.merge,
                        &self.bufs,
                        start,
                        &mut self.ports,
                        &mut self.pending,
                        &mut self.spare,
                    );
                    if let Action::Forward(out) = action
                        && self.merge.push(out, k, frame)
                    {
                        continue;
                    }
                }
                match action {
                    Action::Forward(out) => Self::send(
                        &mut self.ports,
                        &mut self.pending,
                        &mut self.spare,
                        out as usize,
                        frame,
                        meta,
                    ),
                    Action::Reply(out, reply) => Self::send(
                        &mut self.ports,
                        &mut self.pending,
                        &mut self.spare,
                        out as usize,
                        &reply,
                        RxMeta::default(),
                    ),
                    Action::Drop(_) => {}
                }
            }
            // before the next batch overwrites the frames a run points into
            Self::flush_merged(
                &mut self.merge,
                &self.bufs,
                start,
                &mut self.ports,
                &mut self.pending,
                &mut self.spare,
            );
        }
        received
    }

    /// What the slow-path budget counts, as two running totals: frames
    /// that opened a connection, and frames the datapath forwarded (cache
    /// hits, and slow-path frames of connections already tracked). A
    /// batch's charge is its frames, plus the first's growth, less the
    /// second's.
    fn slow_path_work(&self) -> (u64, u64) {
        let c = &self.datapath.counters;
        (
            self.datapath.conntrack().created(),
            c.get(Outcome::FastForward) + c.get(Outcome::SlowForward),
        )
    }

    /// Whether a port is paused for its slow-path budget at `now`.
    pub fn paused(&self, id: PortId, now: Instant) -> bool {
        self.budgets.get(id as usize).is_some_and(|b| b.paused(now))
    }

    /// When the first paused port may be read again.
    pub fn resumes_at(&self) -> Option<Instant> {
        self.budgets.iter().filter_map(Budget::resumes_at).min()
    }

    /// Sends the merged run, if there is one: its headers, then its
    /// segments' payloads where they lie in this batch's buffers (`start`:
    /// where the frames begin in them).
    fn flush_merged(
        merge: &mut Coalescer,
        bufs: &[Vec<u8>],
        start: usize,
        ports: &mut [Option<Box<dyn Port>>],
        pending: &mut [Pending],
        spare: &mut Spare,
    ) {
        let Some(run) = merge.take() else {
            return;
        };
        let mut pieces: [&[u8]; 1 + coalesce::MAX_SEGMENTS] = [&[]; 1 + coalesce::MAX_SEGMENTS];
        pieces[0] = run.head;
        for (slot, p) in pieces[1..].iter_mut().zip(run.payloads) {
            let at = start + p.at;
            *slot = &bufs[p.src][at..at + p.len];
        }
        let pieces = &pieces[..1 + run.payloads.len()];
        Self::send_pieces(ports, pending, spare, run.out as usize, pieces, run.meta);
    }

    /// Sends now, or copies the frame behind what already waits (order is
    /// kept; the common case copies nothing). Only "would block" queues a
    /// frame, up to the bound; a port that fails otherwise (link down,
    /// device gone) would fail again, so its frame is dropped and counted.
    fn send(
        ports: &mut [Option<Box<dyn Port>>],
        pending: &mut [Pending],
        spare: &mut Spare,
        id: usize,
        frame: &[u8],
        meta: RxMeta,
    ) {
        Self::send_pieces(ports, pending, spare, id, &[frame], meta);
    }

    /// [`Worker::send`] of a frame given as pieces, in order.
    fn send_pieces(
        ports: &mut [Option<Box<dyn Port>>],
        pending: &mut [Pending],
        spare: &mut Spare,
        id: usize,
        pieces: &[&[u8]],
        meta: RxMeta,
    ) {
        let Some(port) = ports.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        let p = &mut pending[id];
        if p.frames.is_empty() {
            match port.send_pieces(pieces, &meta) {
                Ok(true) => return,
                Ok(false) => {}
                Err(_) => {
                    p.drops.tx_error += 1;
                    return;
                }
            }
        }
        p.push(spare, pieces, meta);
    }

    /// Sends what waits for a port, oldest first, until it would block.
    fn flush(&mut self, id: usize) {
        let Some(port) = self.ports[id].as_mut() else {
            return;
        };
        let p = &mut self.pending[id];
        while let Some((f, m)) = p.frames.front() {
            match port.send(f, m) {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) => p.drops.tx_error += 1,
            }
            p.pop(&mut self.spare);
        }
    }
}
