//! Connection tracking: NetworkPolicy is stateful.
//!
//! # What
//! A bounded table of connections. A connection is created when a packet that
//! may start one passes policy, and from then on its replies pass whatever
//! the policies say. Each entry knows which side opened it, so a reply can
//! never be mistaken for a new connection (an ICMP echo reply never creates
//! an entry and only matches the reply direction of a tracked echo).
//!
//! # How
//! - One key per connection, normalised so that both directions find it: the
//!   lower (address, port) end first. The entry records whether that end is
//!   the originator. The index from key to slot hashes under a random key
//!   (`keyed_hash`): pods choose the keys, so an unkeyed hash would let one
//!   choose colliding ones.
//! - The index holds slot numbers only (4 bytes a connection; the key is in
//!   the slot), and a new connection hashes its key once: the miss of its
//!   lookup and its creation cost two hashes, not four.
//! - Entries live in a slab; the map finds them. A slot has a version that
//!   changes when it is reused (or its connection cut), so the flow cache can
//!   hold `(slot, version)` and refresh an entry without a hash lookup.
//! - Per protocol: TCP tracks enough to know new / established / closing /
//!   closed (SYN, SYN-ACK or any reply, FIN, RST); UDP and other protocols
//!   new / replied; SCTP by its INIT, INIT-ACK, ABORT and SHUTDOWN-COMPLETE
//!   chunks; ICMP echo by identifier. Each state has a timeout.
//! - ICMP errors never create entries; they pass when the packet they quote
//!   belongs to a tracked connection and they travel back to its sender.
//! - Time is an argument (milliseconds since the datapath started). Expired
//!   entries are treated as absent when met and removed by `sweep`, which
//!   visits a bounded number of slots per call.
//! - `policy_epoch` records the policy generation the connection was last
//!   checked against; the datapath re-checks connections when a new
//!   generation arrives.
//!
//! # Against a hostile pod
//! - Unreplied is short-lived: a connection only one side has spoken on
//!   (state `New`) has a short timeout (TCP SYN 120 s, a mid-stream pickup
//!   30 s, UDP 30 s, ICMP 30 s); only a reply earns the long ones.
//! - No mid-stream pickup as established: a TCP segment without SYN (other
//!   than RST) of no known connection opens nothing, except during a grace
//!   period after the datapath starts (the caller's rule, `Config::
//!   conntrack_pickup_ms`, so that connections open across a restart go
//!   on); then it creates a `New` entry with the pickup timeout, established
//!   only when the other side answers.
//! - Every entry is charged to an owner: the port its first packet came in
//!   on (a pod's port; the node port, and each other node's port, are
//!   owners of their own). The caller gives each creation its owner's share
//!   (pods: `Config::conntrack_per_pod_max`; the node and other nodes: the
//!   whole table). An owner at its share loses its own oldest unreplied
//!   connection to the new one, or, with none, the new one is refused
//!   (`CtError::ShareFull`).
//! - Early drop: when the table is full, the oldest unreplied connection of
//!   the owner with the most unreplied ones makes room (like Linux, which
//!   drops unreplied entries first). Replied connections are never evicted:
//!   with no unreplied one left, the new connection is refused
//!   (`CtError::Full`; the caller drops and counts it; nothing passes
//!   untracked). Each owner keeps its unreplied connections in a list,
//!   oldest first, so either eviction is O(1) (finding the owner is a pass
//!   over the owners, i.e. the ports).
//! - A pod's connections go with it: `remove_owner` removes every entry
//!   charged to a port or with one of its addresses at either end (one pass
//!   over the table, at CNI DEL).
//! - A cut stays a cut: a connection that policy now denies is not removed
//!   but turned into a tombstone (`State::Denied`): its packets are dropped
//!   both ways, each refreshes it, and it expires after `Timeouts::denied`
//!   of silence. Its reply direction therefore never becomes a new
//!   connection while either side keeps trying. Only a new SYN from its
//!   originator, allowed by the policy in force, replaces it
//!   (see `reopens`). Tombstones are not evicted (that would reopen the
//!   hole) and count towards their owner's share.
//! - Checksums are not verified: frames from TAPs with checksum offload
//!   carry partial checksums that only the output completes, and the
//!   datapath is not told which; short unreplied timeouts, early drop and
//!   shares bound what a bad-checksum flood can hold.

use std::net::IpAddr;

use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::keyed_hash;
use super::parse::{FlowTuple, L4};
use crate::wire::ip_proto::{
    ICMP as PROTO_ICMP, ICMPV6 as PROTO_ICMPV6, SCTP as PROTO_SCTP, TCP as PROTO_TCP,
};
use crate::wire::sctp::{
    ABORT as SCTP_ABORT, INIT_ACK as SCTP_INIT_ACK, SHUTDOWN_COMPLETE as SCTP_SHUTDOWN_COMPLETE,
};
use crate::wire::tcp::{
    FLG_ACK as TCP_ACK, FLG_FIN as TCP_FIN, FLG_RST as TCP_RST, FLG_SYN as TCP_SYN,
};

/// Timeouts in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub tcp_syn: u64,
    /// A TCP connection picked up mid-stream, until the other side answers.
    pub tcp_pickup: u64,
    pub tcp_established: u64,
    pub tcp_closing: u64,
    pub tcp_closed: u64,
    pub udp_new: u64,
    pub udp_replied: u64,
    pub icmp: u64,
    /// A connection cut by policy, after its last packet (either way).
    pub denied: u64,
}

impl Default for Timeouts {
    /// Linux's defaults (nf_conntrack), rounded; the pickup and tombstone
    /// timeouts are ours.
    fn default() -> Self {
        Timeouts {
            tcp_syn: 120_000,
            tcp_pickup: 30_000,
            tcp_established: 432_000_000,
            tcp_closing: 120_000,
            tcp_closed: 10_000,
            udp_new: 30_000,
            udp_replied: 120_000,
            icmp: 30_000,
            denied: 120_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Only the originator has spoken.
    New,
    /// Both sides have spoken.
    Established,
    /// TCP FIN seen.
    Closing,
    /// TCP RST, SCTP ABORT or SHUTDOWN-COMPLETE seen.
    Closed,
    /// Cut by policy: a tombstone that drops its packets both ways.
    Denied,
}

/// Which way a packet travels relative to the connection's originator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Orig,
    Reply,
}

/// What a connection is charged to: the port its first packet came in on.
pub type Owner = u16;

/// A normalised connection key: 40 bytes, 4-byte aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    lo: [u32; 4],
    hi: [u32; 4],
    lo_port: u16,
    hi_port: u16,
    proto: u8,
    v6: bool,
}

fn words(ip: IpAddr) -> [u32; 4] {
    let b = match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    };
    [
        (b >> 96) as u32,
        (b >> 64) as u32,
        (b >> 32) as u32,
        b as u32,
    ]
}

impl CtKey {
    /// The key of a tuple, and whether the tuple's source is the key's low end.
    pub fn of(t: &FlowTuple) -> (CtKey, bool) {
        let (s, d) = ((words(t.src), t.sport), (words(t.dst), t.dport));
        let src_is_lo = s <= d;
        let ((lo, lo_port), (hi, hi_port)) = if src_is_lo { (s, d) } else { (d, s) };
        (
            CtKey {
                lo,
                hi,
                lo_port,
                hi_port,
                proto: t.proto,
                v6: t.src.is_ipv6(),
            },
            src_is_lo,
        )
    }

    /// Whether one of the connection's ends has this address.
    fn has_address(&self, ip: IpAddr) -> bool {
        let w = words(ip);
        self.v6 == ip.is_ipv6() && (self.lo == w || self.hi == w)
    }
}

/// `Entry::flags`: the slot holds a connection.
const LIVE: u8 = 1;
/// `Entry::flags`: the originator is the key's low end.
const ORIG_IS_LO: u8 = 2;
/// `Entry::flags`: in its owner's list of unreplied connections (those
/// early drop may evict).
const UNREPLIED: u8 = 4;
/// `Entry::flags`: a connection kube-proxy translated on the node; its
/// replies go back by the node port (see `datapath/kube_proxy.rs`).
const VIA_NODE: u8 = 8;
/// `Entry::flags`: a pod's connection to a Service range kube-proxy
/// translates on the node: policy judges its translation, not it.
const TO_SERVICE: u8 = 16;
/// `Entry::flags`: a connection the switch translated (a pod's to a
/// Service, `datapath/service_proxy.rs`); its replies are translated back.
const TRANSLATED: u8 = 32;

#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub key: CtKey,
    pub last_seen: u64,
    /// The policy generation last checked (its low 32 bits).
    pub policy_epoch: u32,
    version: u32,
    /// The timeout of the current state, in milliseconds (at most 49 days).
    timeout: u32,
    pub state: State,
    flags: u8,
    /// The port charged with the connection.
    pub owner: Owner,
}

impl Entry {
    #[inline(always)]
    fn live(&self) -> bool {
        self.flags & LIVE != 0
    }

    /// Whether early drop may evict it: nobody answered, not a tombstone.
    pub fn unreplied(&self) -> bool {
        self.flags & UNREPLIED != 0
    }
}

/// A handle the flow cache keeps: slot and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CtRef {
    slot: u32,
    version: u32,
}

/// Why a connection could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CtError {
    #[error("creating a connection: the table is full of replied connections")]
    Full,
    #[error("creating a connection: its owner holds its share, all replied")]
    ShareFull,
}

/// No slot (the end of a list).
const NIL: u32 = u32::MAX;

/// What one owner holds: its connections, and its unreplied ones as a list
/// through `Conntrack::links`, oldest first.
#[derive(Debug, Clone, Copy)]
struct Charge {
    entries: u32,
    unreplied: u32,
    head: u32,
    tail: u32,
}

impl Default for Charge {
    fn default() -> Self {
        Charge {
            entries: 0,
            unreplied: 0,
            head: NIL,
            tail: NIL,
        }
    }
}

pub struct Conntrack {
    /// Slot numbers, found by their slot's key.
    map: HashTable<u32>,
    hasher: keyed_hash::State,
    slots: Vec<Entry>,
    /// Per slot: the previous and next unreplied connection of its owner.
    links: Vec<[u32; 2]>,
    /// Per owner (indexed by port id, grown on demand: at most 65,536).
    charges: Vec<Charge>,
    free: Vec<u32>,
    max: usize,
    timeouts: Timeouts,
    sweep_cursor: usize,
    /// Unreplied connections evicted to make room.
    evicted: u64,
    /// Connections created.
    created: u64,
}

impl Conntrack {
    pub fn new(max: usize, timeouts: Timeouts) -> Conntrack {
        Conntrack {
            map: HashTable::with_capacity(max),
            hasher: keyed_hash::state(),
            slots: Vec::with_capacity(max),
            links: Vec::with_capacity(max),
            charges: Vec::new(),
            free: Vec::new(),
            max,
            timeouts,
            sweep_cursor: 0,
            evicted: 0,
            created: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.max
    }

    /// Unreplied connections evicted to make room so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Connections created so far.
    pub fn created(&self) -> u64 {
        self.created
    }

    /// The connections charged to an owner.
    pub fn charged(&self, owner: Owner) -> usize {
        self.charges
            .get(owner as usize)
            .map_or(0, |c| c.entries as usize)
    }

    /// The slot of a live key.
    #[inline]
    fn find(&self, key: &CtKey, hash: u64) -> Option<u32> {
        let slots = &self.slots;
        self.map
            .find(hash, |&s| slots[s as usize].key == *key)
            .copied()
    }

    #[inline]
    fn expired(&self, e: &Entry, now: u64) -> bool {
        now.saturating_sub(e.last_seen) > e.timeout as u64
    }

    /// Finds the live connection of a tuple and the packet's direction.
    pub fn lookup(&mut self, t: &FlowTuple, now: u64) -> Option<(CtRef, Dir)> {
        let (key, src_is_lo) = CtKey::of(t);
        let slot = self.find(&key, self.hasher.hash_one(key))?;
        let e = &self.slots[slot as usize];
        if self.expired(e, now) {
            self.remove_slot(slot);
            return None;
        }
        let dir = if (e.flags & ORIG_IS_LO != 0) == src_is_lo {
            Dir::Orig
        } else {
            Dir::Reply
        };
        Some((
            CtRef {
                slot,
                version: e.version,
            },
            dir,
        ))
    }

    pub fn get(&self, r: CtRef) -> Option<&Entry> {
        self.slots
            .get(r.slot as usize)
            .filter(|e| e.live() && e.version == r.version)
    }

    /// Reads a connection's slot so that a batch's slots are fetched
    /// together; fold the result into `black_box`.
    #[inline(always)]
    pub fn warm(&self, r: CtRef) -> u32 {
        self.slots.get(r.slot as usize).map_or(0, |e| e.version)
    }

    /// The flow cache's refresh: marks the connection seen if it is still the
    /// same, live and unexpired one (a cut changes the version).
    #[inline(always)]
    pub fn touch(&mut self, r: CtRef, now: u64) -> bool {
        let Some(e) = self.slots.get(r.slot as usize) else {
            return false;
        };
        if !e.live() || e.version != r.version || self.expired(e, now) {
            return false;
        }
        self.slots[r.slot as usize].last_seen = now;
        true
    }

    /// Creates a connection originated by the tuple's source, charged to
    /// `owner`, which may hold `share` connections. A TCP segment other
    /// than SYN or RST is a mid-stream pickup (the caller decides whether
    /// one may be made).
    pub fn create(
        &mut self,
        t: &FlowTuple,
        l4: &L4,
        now: u64,
        policy_epoch: u64,
        owner: Owner,
        share: usize,
    ) -> Result<CtRef, CtError> {
        let policy_epoch = policy_epoch as u32;
        let (key, src_is_lo) = CtKey::of(t);
        let hash = self.hasher.hash_one(key);
        // An entry under the same key (an echo seen the other way round) is
        // replaced, never left behind unreachable.
        if let Some(old) = self.find(&key, hash) {
            self.remove_slot(old);
        }
        if self.charges.len() <= owner as usize {
            self.charges.resize(owner as usize + 1, Charge::default());
        }
        // The owner's share first (one as big as the table is the table's
        // limit): its own oldest unreplied connection goes.
        if share < self.max && self.charges[owner as usize].entries as usize >= share {
            let victim = self.charges[owner as usize].head;
            if victim == NIL {
                return Err(CtError::ShareFull);
            }
            self.remove_slot(victim);
            self.evicted += 1;
        }
        // Then the table: early drop, from the owner with most unreplied.
        if self.map.len() >= self.max {
            let victim = self
                .charges
                .iter()
                .filter(|c| c.unreplied > 0)
                .max_by_key(|c| c.unreplied)
                .map(|c| c.head);
            let Some(victim) = victim else {
                return Err(CtError::Full);
            };
            self.remove_slot(victim);
            self.evicted += 1;
        }
        let (state, timeout) = match *l4 {
            L4::Tcp { flags, .. } if flags & TCP_RST != 0 => {
                (State::Closed, self.timeouts.tcp_closed)
            }
            L4::Tcp { flags, .. } if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 => {
                (State::New, self.timeouts.tcp_syn)
            }
            // Picked up mid-stream: unreplied, and short-lived until answered.
            L4::Tcp { .. } => (State::New, self.timeouts.tcp_pickup),
            _ => (State::New, timeout_ms(&self.timeouts, t.proto, State::New)),
        };
        let entry = |version| Entry {
            key,
            last_seen: now,
            policy_epoch,
            version,
            timeout: timeout.min(u32::MAX as u64) as u32,
            state,
            flags: LIVE | if src_is_lo { ORIG_IS_LO } else { 0 },
            owner,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                let v = self.slots[s as usize].version.wrapping_add(1);
                self.slots[s as usize] = entry(v);
                s
            }
            None => {
                self.slots.push(entry(0));
                self.links.push([NIL, NIL]);
                self.slots.len() as u32 - 1
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.map
            .insert_unique(hash, slot, |&s| hasher.hash_one(slots[s as usize].key));
        self.created += 1;
        self.charges[owner as usize].entries += 1;
        self.link_unreplied(slot);
        Ok(CtRef {
            slot,
            version: self.slots[slot as usize].version,
        })
    }

    /// Appends a connection to its owner's unreplied list (the newest).
    fn link_unreplied(&mut self, slot: u32) {
        let e = &mut self.slots[slot as usize];
        e.flags |= UNREPLIED;
        let c = &mut self.charges[e.owner as usize];
        self.links[slot as usize] = [c.tail, NIL];
        match c.tail {
            NIL => c.head = slot,
            t => self.links[t as usize][1] = slot,
        }
        c.tail = slot;
        c.unreplied += 1;
    }

    /// Takes a connection out of its owner's unreplied list, if it is in it.
    fn unlink_unreplied(&mut self, slot: u32) {
        let e = &mut self.slots[slot as usize];
        if e.flags & UNREPLIED == 0 {
            return;
        }
        e.flags &= !UNREPLIED;
        let c = &mut self.charges[e.owner as usize];
        let [prev, next] = self.links[slot as usize];
        match prev {
            NIL => c.head = next,
            p => self.links[p as usize][1] = next,
        }
        match next {
            NIL => c.tail = prev,
            n => self.links[n as usize][0] = prev,
        }
        c.unreplied -= 1;
    }

    /// Marks a connection as translated on the node (its replies go back
    /// by the node port).
    pub fn mark_via_node(&mut self, r: CtRef) {
        if self.get(r).is_some() {
            self.slots[r.slot as usize].flags |= VIA_NODE;
        }
    }

    /// Whether a connection was translated on the node.
    pub fn via_node(&self, r: CtRef) -> bool {
        self.get(r).is_some_and(|e| e.flags & VIA_NODE != 0)
    }

    /// Marks a connection the switch translated (a Service's).
    pub fn mark_translated(&mut self, r: CtRef) {
        if self.get(r).is_some() {
            self.slots[r.slot as usize].flags |= TRANSLATED;
        }
    }

    /// Whether the switch translated a connection.
    pub fn translated(&self, r: CtRef) -> bool {
        self.get(r).is_some_and(|e| e.flags & TRANSLATED != 0)
    }

    /// Marks a pod's connection to a Service range (never judged itself).
    pub fn mark_to_service(&mut self, r: CtRef) {
        if self.get(r).is_some() {
            self.slots[r.slot as usize].flags |= TO_SERVICE;
        }
    }

    /// Whether a connection is a pod's to a Service range.
    pub fn to_service(&self, r: CtRef) -> bool {
        self.get(r).is_some_and(|e| e.flags & TO_SERVICE != 0)
    }

    /// Whether a handle is still its live, unexpired connection at `now`.
    pub fn live_at(&self, r: CtRef, now: u64) -> bool {
        self.get(r).is_some_and(|e| !self.expired(e, now))
    }

    /// Advances the connection's state with a packet seen in `dir`.
    pub fn update(&mut self, r: CtRef, dir: Dir, l4: &L4, now: u64) {
        if self.get(r).is_none() {
            return;
        }
        let e = &self.slots[r.slot as usize];
        if dir == Dir::Reply && e.state != State::Denied {
            self.unlink_unreplied(r.slot);
        }
        let e = &mut self.slots[r.slot as usize];
        e.last_seen = now;
        let state = match (*l4, e.state) {
            (_, State::Denied) => State::Denied,
            (_, State::Closed) => State::Closed,
            (L4::Tcp { flags, .. }, _) if flags & TCP_RST != 0 => State::Closed,
            (L4::Tcp { flags, .. }, _) if flags & TCP_FIN != 0 => State::Closing,
            (L4::Tcp { .. }, State::New) if dir == Dir::Reply => State::Established,
            (L4::Sctp { chunk, .. }, _)
                if chunk == SCTP_ABORT || chunk == SCTP_SHUTDOWN_COMPLETE =>
            {
                State::Closed
            }
            (L4::Sctp { chunk, .. }, State::New) if dir == Dir::Reply && chunk == SCTP_INIT_ACK => {
                State::Established
            }
            (L4::Sctp { .. }, s) => s,
            (_, State::New) if dir == Dir::Reply => State::Established,
            (_, s) => s,
        };
        // (a state keeps the timeout it was given: a pickup stays short)
        if state != e.state {
            e.state = state;
            e.timeout = timeout_of(&self.timeouts, e.key.proto, state);
        }
    }

    /// Cuts a connection that policy now denies: it becomes a tombstone
    /// that drops its packets both ways until `Timeouts::denied` of silence.
    /// Its version changes, so flow-cache entries holding it are misses.
    pub fn cut(&mut self, r: CtRef, now: u64) {
        if self.get(r).is_none() {
            return;
        }
        self.unlink_unreplied(r.slot);
        let e = &mut self.slots[r.slot as usize];
        e.state = State::Denied;
        e.timeout = timeout_of(&self.timeouts, e.key.proto, State::Denied);
        e.last_seen = now;
        e.version = e.version.wrapping_add(1);
    }

    /// Whether a connection is a tombstone (cut by policy).
    pub fn is_cut(&self, r: CtRef) -> bool {
        self.get(r).is_some_and(|e| e.state == State::Denied)
    }

    /// Whether a packet ends a connection that is over and starts a new one
    /// under its 5-tuple: a bare SYN (no ACK) on a TCP connection that has
    /// seen FIN or RST, or, on one cut by policy, from its originator. The
    /// caller removes the old entry and judges the packet as the first of a
    /// new connection, by the policy in force now (and keeps a tombstone
    /// when that policy denies it).
    pub fn reopens(&self, r: CtRef, dir: Dir, l4: &L4) -> bool {
        let L4::Tcp { flags, .. } = *l4 else {
            return false;
        };
        flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
            && self.get(r).is_some_and(|e| match e.state {
                State::Closing | State::Closed => true,
                State::Denied => dir == Dir::Orig,
                State::New | State::Established => false,
            })
    }

    /// Whether a packet in this state and direction may use the flow cache.
    pub fn cacheable(&self, r: CtRef) -> bool {
        self.get(r).is_some_and(|e| e.state == State::Established)
    }

    pub fn set_policy_epoch(&mut self, r: CtRef, epoch: u64) {
        let epoch = epoch as u32;
        if let Some(e) = self
            .slots
            .get_mut(r.slot as usize)
            .filter(|e| e.live() && e.version == r.version)
        {
            e.policy_epoch = epoch;
        }
    }

    /// The connection as its originator opened it.
    pub fn orig_tuple(&self, r: CtRef) -> Option<FlowTuple> {
        let e = self.get(r)?;
        let ip = |w: [u32; 4]| {
            let b =
                (w[0] as u128) << 96 | (w[1] as u128) << 64 | (w[2] as u128) << 32 | w[3] as u128;
            if e.key.v6 {
                IpAddr::V6(b.into())
            } else {
                IpAddr::V4((b as u32).into())
            }
        };
        let (lo, hi) = ((ip(e.key.lo), e.key.lo_port), (ip(e.key.hi), e.key.hi_port));
        let ((src, sport), (dst, dport)) = if e.flags & ORIG_IS_LO != 0 {
            (lo, hi)
        } else {
            (hi, lo)
        };
        Some(FlowTuple {
            src,
            dst,
            proto: e.key.proto,
            sport,
            dport,
        })
    }

    pub fn remove(&mut self, r: CtRef) {
        if self.get(r).is_some() {
            self.remove_slot(r.slot);
        }
    }

    fn remove_slot(&mut self, slot: u32) {
        self.unlink_unreplied(slot);
        let e = &mut self.slots[slot as usize];
        e.flags &= !LIVE;
        self.charges[e.owner as usize].entries -= 1;
        let hash = self.hasher.hash_one(e.key);
        if let Ok(found) = self.map.find_entry(hash, |&s| s == slot) {
            found.remove();
        }
        self.free.push(slot);
    }

    /// Removes every connection charged to `owner` or with one of
    /// `addresses` at either end (a pod that goes away): one pass over the
    /// table. Returns how many went.
    pub fn remove_owner(&mut self, owner: Owner, addresses: &[IpAddr]) -> usize {
        let mut removed = 0;
        for s in 0..self.slots.len() {
            let e = &self.slots[s];
            if e.live() && (e.owner == owner || addresses.iter().any(|a| e.key.has_address(*a))) {
                self.remove_slot(s as u32);
                removed += 1;
            }
        }
        removed
    }

    /// Removes expired entries among the next `budget` slots.
    pub fn sweep(&mut self, now: u64, budget: usize) -> usize {
        let mut removed = 0;
        for _ in 0..budget.min(self.slots.len()) {
            if self.sweep_cursor >= self.slots.len() {
                self.sweep_cursor = 0;
            }
            let s = self.sweep_cursor;
            self.sweep_cursor += 1;
            let e = &self.slots[s];
            if e.live() && self.expired(e, now) {
                self.remove_slot(s as u32);
                removed += 1;
            }
        }
        removed
    }

    /// Every live connection (for `vswitchctl conntrack` and tests).
    pub fn entries(&self) -> impl Iterator<Item = (CtRef, &Entry)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, e)| e.live())
            .map(|(i, e)| {
                (
                    CtRef {
                        slot: i as u32,
                        version: e.version,
                    },
                    e,
                )
            })
    }
}

/// The timeout of a state, in milliseconds, as an entry keeps it.
fn timeout_of(t: &Timeouts, proto: u8, state: State) -> u32 {
    timeout_ms(t, proto, state).min(u32::MAX as u64) as u32
}

fn timeout_ms(t: &Timeouts, proto: u8, state: State) -> u64 {
    match (proto, state) {
        (_, State::Denied) => t.denied,
        (_, State::Closed) => t.tcp_closed,
        (PROTO_TCP, State::New) => t.tcp_syn,
        (PROTO_TCP, State::Established) => t.tcp_established,
        (PROTO_TCP, State::Closing) => t.tcp_closing,
        (PROTO_SCTP, State::Established) => t.tcp_established,
        (PROTO_ICMP | PROTO_ICMPV6, _) => t.icmp,
        (_, State::New) => t.udp_new,
        _ => t.udp_replied,
    }
}

/// Whether a protocol's first packet may create a connection.
pub fn may_start(l4: &L4) -> bool {
    !matches!(
        l4,
        L4::Echo { request: false, .. } | L4::IcmpError { .. } | L4::Fragment
    )
}

/// Whether a packet that may start a connection would pick one up
/// mid-stream: a TCP segment other than a bare SYN or a RST.
pub fn is_pickup(l4: &L4) -> bool {
    matches!(*l4, L4::Tcp { flags, .. }
        if flags & TCP_RST == 0 && flags & (TCP_SYN | TCP_ACK) != TCP_SYN)
}

/// Protocols whose echo identifier stands in for ports.
pub fn is_icmp(proto: u8) -> bool {
    proto == PROTO_ICMP || proto == PROTO_ICMPV6
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip_proto::UDP as PROTO_UDP;

    /// No share: the whole table.
    const ALL: usize = usize::MAX;

    fn t(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> FlowTuple {
        FlowTuple {
            src: src.parse::<IpAddr>().unwrap(),
            dst: dst.parse::<IpAddr>().unwrap(),
            proto,
            sport,
            dport,
        }
    }

    /// A UDP datagram from `src` port `p` to 10.0.0.1:53.
    fn udp(src: &str, p: u16) -> (FlowTuple, L4) {
        (
            t(src, "10.0.0.1", PROTO_UDP, p, 53),
            L4::Udp {
                sport: p,
                dport: 53,
            },
        )
    }

    /// The answer to `udp(src, p)`.
    fn answer(ct: &mut Conntrack, src: &str, p: u16, now: u64) {
        let back = t("10.0.0.1", src, PROTO_UDP, 53, p);
        let (r, dir) = ct.lookup(&back, now).expect("tracked");
        assert_eq!(dir, Dir::Reply);
        ct.update(
            r,
            dir,
            &L4::Udp {
                sport: 53,
                dport: p,
            },
            now,
        );
    }

    fn tcp(flags: u8) -> L4 {
        L4::Tcp {
            sport: 40000,
            dport: 80,
            flags,
        }
    }

    #[test]
    fn both_directions_find_one_entry() {
        let mut ct = Conntrack::new(8, Timeouts::default());
        let fwd = t("10.0.0.2", "10.0.0.1", PROTO_TCP, 40000, 80);
        let r = ct.create(&fwd, &tcp(TCP_SYN), 0, 1, 1, ALL).unwrap();
        let back = t("10.0.0.1", "10.0.0.2", PROTO_TCP, 80, 40000);
        assert_eq!(ct.lookup(&fwd, 1), Some((r, Dir::Orig)));
        assert_eq!(ct.lookup(&back, 1), Some((r, Dir::Reply)));
        assert_eq!(ct.get(r).unwrap().state, State::New);
        ct.update(r, Dir::Reply, &tcp(TCP_SYN | TCP_ACK), 2);
        assert_eq!(ct.get(r).unwrap().state, State::Established);
        assert_eq!(ct.orig_tuple(r), Some(fwd));
    }

    #[test]
    fn a_table_full_of_replied_connections_refuses_and_expiry_frees() {
        let mut ct = Conntrack::new(2, Timeouts::default());
        for p in [1, 2] {
            let (tu, l4) = udp("10.0.0.2", p);
            ct.create(&tu, &l4, 0, 1, 1, ALL).unwrap();
            answer(&mut ct, "10.0.0.2", p, 0);
        }
        let (tu, l4) = udp("10.0.0.2", 3);
        assert_eq!(ct.create(&tu, &l4, 0, 1, 1, ALL), Err(CtError::Full));
        assert_eq!(ct.create(&tu, &l4, 0, 1, 2, ALL), Err(CtError::Full));
        assert_eq!(ct.sweep(120_001, 10), 2, "replied UDP expires after 120 s");
        assert!(ct.create(&tu, &l4, 120_001, 1, 1, ALL).is_ok());
    }

    #[test]
    fn unreplied_connections_are_short_lived_and_replied_ones_are_not() {
        let mut ct = Conntrack::new(8, Timeouts::default());
        let syn = t("10.0.0.2", "10.0.0.1", PROTO_TCP, 40000, 80);
        let pickup = t("10.0.0.2", "10.0.0.1", PROTO_TCP, 40001, 80);
        let answered = t("10.0.0.2", "10.0.0.1", PROTO_TCP, 40002, 80);
        ct.create(&syn, &tcp(TCP_SYN), 0, 1, 1, ALL).unwrap();
        let p = ct.create(&pickup, &tcp(TCP_ACK), 0, 1, 1, ALL).unwrap();
        assert_eq!(ct.get(p).unwrap().state, State::New, "not established");
        let a = ct.create(&answered, &tcp(TCP_ACK), 0, 1, 1, ALL).unwrap();
        ct.update(a, Dir::Orig, &tcp(TCP_ACK), 20_000);
        ct.update(a, Dir::Reply, &tcp(TCP_ACK), 20_000);
        assert_eq!(ct.get(a).unwrap().state, State::Established);
        // the originator's own packets do not lengthen a pickup
        ct.update(p, Dir::Orig, &tcp(TCP_ACK), 20_000);
        assert_eq!(ct.sweep(50_001, 10), 1, "the pickup: 30 s");
        assert_eq!(ct.sweep(120_001, 10), 1, "the SYN: 120 s");
        assert_eq!(ct.sweep(400_000_000, 10), 0, "the answered one lives");
        assert_eq!(ct.len(), 1);
    }

    #[test]
    fn a_full_table_evicts_the_oldest_unreplied_of_the_biggest_owner() {
        let mut ct = Conntrack::new(6, Timeouts::default());
        // owner 1: two replied, two unreplied; owner 2: one unreplied, one replied
        for p in 1..=4 {
            let (tu, l4) = udp("10.0.0.2", p);
            ct.create(&tu, &l4, p as u64, 1, 1, ALL).unwrap();
        }
        answer(&mut ct, "10.0.0.2", 1, 5);
        answer(&mut ct, "10.0.0.2", 3, 5);
        for p in 1..=2 {
            let (tu, l4) = udp("10.0.0.3", p);
            ct.create(&tu, &l4, 5, 1, 2, ALL).unwrap();
        }
        answer(&mut ct, "10.0.0.3", 2, 6);
        // owner 2 needs room: owner 1's oldest unreplied (port 2) goes
        let (tu, l4) = udp("10.0.0.3", 9);
        ct.create(&tu, &l4, 7, 1, 2, ALL).unwrap();
        assert_eq!(ct.evicted(), 1);
        assert!(ct.lookup(&udp("10.0.0.2", 2).0, 7).is_none());
        assert!(ct.lookup(&udp("10.0.0.2", 4).0, 7).is_some());
        assert_eq!((ct.charged(1), ct.charged(2)), (3, 3));
        // owner 1 and 2 now hold one and two unreplied: 2's oldest goes
        let (tu, l4) = udp("10.0.0.2", 10);
        ct.create(&tu, &l4, 8, 1, 1, ALL).unwrap();
        assert!(ct.lookup(&udp("10.0.0.3", 1).0, 8).is_none());
        // replied connections are never evicted
        for p in [4, 10] {
            answer(&mut ct, "10.0.0.2", p, 9);
        }
        answer(&mut ct, "10.0.0.3", 9, 9);
        let (tu, l4) = udp("10.0.0.3", 11);
        assert_eq!(ct.create(&tu, &l4, 10, 1, 2, ALL), Err(CtError::Full));
        assert_eq!(ct.len(), 6);
        assert!(ct.entries().all(|(_, e)| !e.unreplied()));
    }

    #[test]
    fn an_owner_at_its_share_evicts_its_own_unreplied_then_is_refused() {
        let mut ct = Conntrack::new(100, Timeouts::default());
        for p in 1..=3 {
            let (tu, l4) = udp("10.0.0.2", p);
            ct.create(&tu, &l4, 0, 1, 1, 3).unwrap();
        }
        // another owner's connections are untouched by owner 1's share
        let (tu, l4) = udp("10.0.0.3", 1);
        ct.create(&tu, &l4, 0, 1, 2, 3).unwrap();
        answer(&mut ct, "10.0.0.2", 2, 1);
        let (tu, l4) = udp("10.0.0.2", 4);
        ct.create(&tu, &l4, 2, 1, 1, 3).unwrap();
        assert!(ct.lookup(&udp("10.0.0.2", 1).0, 2).is_none(), "its oldest");
        assert_eq!(ct.charged(1), 3);
        assert_eq!(ct.charged(2), 1);
        for p in [3, 4] {
            answer(&mut ct, "10.0.0.2", p, 3);
        }
        let (tu, l4) = udp("10.0.0.2", 5);
        assert_eq!(ct.create(&tu, &l4, 4, 1, 1, 3), Err(CtError::ShareFull));
        let (tu, l4) = udp("10.0.0.3", 5);
        assert!(ct.create(&tu, &l4, 4, 1, 2, 3).is_ok());
    }

    #[test]
    fn a_cut_connection_is_a_tombstone_both_ways_until_silence() {
        let mut ct = Conntrack::new(8, Timeouts::default());
        let fwd = t("10.0.0.2", "10.0.0.1", PROTO_TCP, 40000, 80);
        let back = t("10.0.0.1", "10.0.0.2", PROTO_TCP, 80, 40000);
        let r = ct.create(&fwd, &tcp(TCP_SYN), 0, 1, 1, ALL).unwrap();
        ct.update(r, Dir::Reply, &tcp(TCP_SYN | TCP_ACK), 1);
        ct.cut(r, 2);
        assert!(!ct.touch(r, 3), "the flow cache's handle is stale");
        let (c, dir) = ct.lookup(&back, 3).unwrap();
        assert!(ct.is_cut(c) && dir == Dir::Reply);
        assert!(!ct.cacheable(c));
        // packets keep it: a FIN or RST does not end it
        ct.update(c, Dir::Reply, &tcp(TCP_RST), 100_000);
        assert!(ct.is_cut(c));
        // only the originator's bare SYN may reopen it
        assert!(!ct.reopens(c, Dir::Reply, &tcp(TCP_SYN)));
        assert!(!ct.reopens(c, Dir::Orig, &tcp(TCP_ACK)));
        assert!(ct.reopens(c, Dir::Orig, &tcp(TCP_SYN)));
        // never evicted to make room
        assert!(!ct.get(c).unwrap().unreplied());
        assert_eq!(ct.sweep(220_000, 10), 0);
        assert_eq!(ct.sweep(220_001, 10), 1, "gone after 120 s of silence");
    }

    #[test]
    fn removing_an_owner_removes_its_connections_and_those_to_it() {
        let mut ct = Conntrack::new(8, Timeouts::default());
        let (a, b) = ("10.0.0.2", "10.0.0.3");
        let (tu, l4) = udp(a, 1);
        ct.create(&tu, &l4, 0, 1, 1, ALL).unwrap();
        answer(&mut ct, a, 1, 0);
        let (tu, l4) = udp(a, 2);
        ct.create(&tu, &l4, 0, 1, 1, ALL).unwrap();
        // b's connection to a, charged to b
        let to_a = t(b, a, PROTO_UDP, 7, 7);
        ct.create(&to_a, &L4::Udp { sport: 7, dport: 7 }, 0, 1, 2, ALL)
            .unwrap();
        let (tu, l4) = udp(b, 3);
        ct.create(&tu, &l4, 0, 1, 2, ALL).unwrap();
        assert_eq!(ct.remove_owner(1, &[a.parse().unwrap()]), 3);
        assert_eq!(ct.len(), 1);
        assert_eq!((ct.charged(1), ct.charged(2)), (0, 1));
        // and the lists still work
        for p in 10..20 {
            let (tu, l4) = udp(a, p);
            ct.create(&tu, &l4, 1, 1, 1, 4).unwrap();
        }
        assert_eq!(ct.charged(1), 4);
    }

    #[test]
    fn a_reused_slot_invalidates_old_handles() {
        let mut ct = Conntrack::new(2, Timeouts::default());
        let (a, b) = (
            t("10.0.0.2", "10.0.0.1", PROTO_UDP, 1, 53),
            t("10.0.0.2", "10.0.0.1", PROTO_UDP, 2, 53),
        );
        let l4 = L4::Udp {
            sport: 1,
            dport: 53,
        };
        let ra = ct.create(&a, &l4, 0, 1, 1, ALL).unwrap();
        ct.remove(ra);
        let rb = ct.create(&b, &l4, 0, 1, 1, ALL).unwrap();
        assert!(
            !ct.touch(ra, 1),
            "a stale handle must not refresh the new entry"
        );
        assert!(ct.touch(rb, 1));
    }

    #[test]
    fn a_connection_created_under_a_taken_key_replaces_the_old_one() {
        let mut ct = Conntrack::new(4, Timeouts::default());
        let a_to_b = t("10.0.0.1", "10.0.0.2", PROTO_ICMP, 9, 9);
        let b_to_a = t("10.0.0.2", "10.0.0.1", PROTO_ICMP, 9, 9);
        let echo = L4::Echo {
            request: true,
            id: 9,
        };
        let first = ct.create(&a_to_b, &echo, 0, 1, 1, ALL).unwrap();
        let second = ct.create(&b_to_a, &echo, 1, 1, 2, ALL).unwrap();
        assert_eq!(ct.len(), 1, "one connection per key");
        assert!(
            ct.get(first).is_none(),
            "the old entry is gone, not orphaned"
        );
        assert_eq!(ct.lookup(&b_to_a, 2), Some((second, Dir::Orig)));
        assert_eq!(ct.entries().count(), 1);
        assert_eq!((ct.charged(1), ct.charged(2)), (0, 1));
    }

    #[test]
    fn pickups_are_tcp_segments_other_than_syn_and_rst() {
        assert!(!is_pickup(&tcp(TCP_SYN)));
        assert!(!is_pickup(&tcp(TCP_RST | TCP_ACK)));
        assert!(is_pickup(&tcp(TCP_ACK)));
        assert!(is_pickup(&tcp(TCP_SYN | TCP_ACK)));
        assert!(is_pickup(&tcp(TCP_FIN)));
        assert!(!is_pickup(&L4::Udp { sport: 1, dport: 2 }));
    }

    #[test]
    fn entries_fit_the_budget() {
        assert!(
            std::mem::size_of::<Entry>() <= 64,
            "{}",
            std::mem::size_of::<Entry>()
        );
        assert_eq!(std::mem::size_of::<CtKey>(), 40);
    }
}
