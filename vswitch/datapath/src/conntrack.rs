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
//!   the originator.
//! - Entries live in a slab; a hash map from key to slot finds them. A slot
//!   has a version that changes when it is reused, so the flow cache can hold
//!   `(slot, version)` and refresh an entry without a hash lookup.
//! - Per protocol: TCP tracks enough to know new / established / closing /
//!   closed (SYN, SYN-ACK or any reply, FIN, RST); UDP and other protocols
//!   new / replied; SCTP by its INIT, INIT-ACK, ABORT and SHUTDOWN-COMPLETE
//!   chunks; ICMP echo by identifier. Each state has a timeout.
//! - ICMP errors never create entries; they pass when the packet they quote
//!   belongs to a tracked connection and they travel back to its sender.
//! - The table is allocated at its maximum size. When it is full, new
//!   connections are refused (the caller drops and counts them); nothing is
//!   evicted to make room, and nothing is let through untracked.
//! - Time is an argument (milliseconds since the datapath started). Expired
//!   entries are treated as absent when met and removed by `sweep`, which
//!   visits a bounded number of slots per call.
//! - `policy_epoch` records the policy generation the connection was last
//!   checked against; the datapath re-checks (and may cut) connections when a
//!   new generation arrives.

use rustc_hash::FxHashMap;

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
    pub tcp_established: u64,
    pub tcp_closing: u64,
    pub tcp_closed: u64,
    pub udp_new: u64,
    pub udp_replied: u64,
    pub icmp: u64,
}

impl Default for Timeouts {
    /// Linux's defaults (nf_conntrack), rounded.
    fn default() -> Self {
        Timeouts {
            tcp_syn: 120_000,
            tcp_established: 432_000_000,
            tcp_closing: 120_000,
            tcp_closed: 10_000,
            udp_new: 30_000,
            udp_replied: 120_000,
            icmp: 30_000,
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
}

/// Which way a packet travels relative to the connection's originator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Orig,
    Reply,
}

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

fn words(ip: std::net::IpAddr) -> [u32; 4] {
    let b = match ip {
        std::net::IpAddr::V4(a) => u32::from(a) as u128,
        std::net::IpAddr::V6(a) => u128::from(a),
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
}

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
    /// The originator is the key's low end.
    orig_is_lo: bool,
    live: bool,
}

/// A handle the flow cache keeps: slot and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtRef {
    slot: u32,
    version: u32,
}

/// Why a connection could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CtError {
    #[error("creating a connection: the table is full")]
    Full,
}

pub struct Conntrack {
    map: FxHashMap<CtKey, u32>,
    slots: Vec<Entry>,
    free: Vec<u32>,
    max: usize,
    timeouts: Timeouts,
    sweep_cursor: usize,
}

impl Conntrack {
    pub fn new(max: usize, timeouts: Timeouts) -> Conntrack {
        Conntrack {
            map: FxHashMap::with_capacity_and_hasher(max, Default::default()),
            slots: Vec::with_capacity(max),
            free: Vec::new(),
            max,
            timeouts,
            sweep_cursor: 0,
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

    /// The timeout of a state, kept in the entry so that the flow cache's
    /// refresh does not recompute it.
    fn timeout(&self, proto: u8, state: State) -> u32 {
        timeout_of(&self.timeouts, proto, state)
    }

    #[inline]
    fn expired(&self, e: &Entry, now: u64) -> bool {
        now.saturating_sub(e.last_seen) > e.timeout as u64
    }

    /// Finds the live connection of a tuple and the packet's direction.
    pub fn lookup(&mut self, t: &FlowTuple, now: u64) -> Option<(CtRef, Dir)> {
        let (key, src_is_lo) = CtKey::of(t);
        let slot = *self.map.get(&key)?;
        let e = &self.slots[slot as usize];
        if self.expired(e, now) {
            self.remove_slot(slot);
            return None;
        }
        let dir = if e.orig_is_lo == src_is_lo {
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
            .filter(|e| e.live && e.version == r.version)
    }

    /// Reads a connection's slot so that a batch's slots are fetched
    /// together; fold the result into `black_box`.
    #[inline(always)]
    pub fn warm(&self, r: CtRef) -> u32 {
        self.slots.get(r.slot as usize).map_or(0, |e| e.version)
    }

    /// The flow cache's refresh: marks the connection seen if it is still the
    /// same, live and unexpired one.
    #[inline(always)]
    pub fn touch(&mut self, r: CtRef, now: u64) -> bool {
        let Some(e) = self.slots.get(r.slot as usize) else {
            return false;
        };
        if !e.live || e.version != r.version || self.expired(e, now) {
            return false;
        }
        self.slots[r.slot as usize].last_seen = now;
        true
    }

    /// Creates a connection originated by the tuple's source.
    pub fn create(
        &mut self,
        t: &FlowTuple,
        l4: &L4,
        now: u64,
        policy_epoch: u64,
    ) -> Result<CtRef, CtError> {
        let policy_epoch = policy_epoch as u32;
        let (key, src_is_lo) = CtKey::of(t);
        // An entry under the same key (an echo seen the other way round) is
        // replaced, never left behind unreachable.
        if let Some(&old) = self.map.get(&key) {
            self.remove_slot(old);
        }
        if self.map.len() >= self.max {
            return Err(CtError::Full);
        }
        let state = match *l4 {
            // A TCP packet other than a bare SYN picks up a connection that
            // was open before (e.g. across a restart of the switch).
            L4::Tcp { flags, .. } if flags & TCP_RST != 0 => State::Closed,
            L4::Tcp { flags, .. } if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 => State::New,
            L4::Tcp { .. } => State::Established,
            _ => State::New,
        };
        let timeout = self.timeout(t.proto, state);
        let entry = |version| Entry {
            key,
            last_seen: now,
            policy_epoch,
            version,
            timeout,
            state,
            orig_is_lo: src_is_lo,
            live: true,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                let v = self.slots[s as usize].version.wrapping_add(1);
                self.slots[s as usize] = entry(v);
                s
            }
            None => {
                self.slots.push(entry(0));
                self.slots.len() as u32 - 1
            }
        };
        self.map.insert(key, slot);
        Ok(CtRef {
            slot,
            version: self.slots[slot as usize].version,
        })
    }

    /// Advances the connection's state with a packet seen in `dir`.
    pub fn update(&mut self, r: CtRef, dir: Dir, l4: &L4, now: u64) {
        let timeouts = self.timeouts;
        let Some(e) = self
            .slots
            .get_mut(r.slot as usize)
            .filter(|e| e.live && e.version == r.version)
        else {
            return;
        };
        e.last_seen = now;
        let state = match (*l4, e.state) {
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
        e.state = state;
        e.timeout = timeout_of(&timeouts, e.key.proto, state);
    }

    /// Whether a packet ends a connection that is over and starts a new one
    /// under its 5-tuple: a bare SYN (no ACK) on a TCP connection that has
    /// seen FIN or RST. The caller removes the old entry and judges the
    /// packet as the first of a new connection, by the policy in force now.
    pub fn reopens(&self, r: CtRef, l4: &L4) -> bool {
        let L4::Tcp { flags, .. } = *l4 else {
            return false;
        };
        flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
            && self
                .get(r)
                .is_some_and(|e| matches!(e.state, State::Closing | State::Closed))
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
            .filter(|e| e.live && e.version == r.version)
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
                std::net::IpAddr::V6(b.into())
            } else {
                std::net::IpAddr::V4((b as u32).into())
            }
        };
        let (lo, hi) = ((ip(e.key.lo), e.key.lo_port), (ip(e.key.hi), e.key.hi_port));
        let ((src, sport), (dst, dport)) = if e.orig_is_lo { (lo, hi) } else { (hi, lo) };
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
        let e = &mut self.slots[slot as usize];
        e.live = false;
        self.map.remove(&e.key);
        self.free.push(slot);
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
            if e.live && self.expired(e, now) {
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
            .filter(|(_, e)| e.live)
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

/// The timeout of a state, in milliseconds.
fn timeout_of(t: &Timeouts, proto: u8, state: State) -> u32 {
    let ms = match (proto, state) {
        (_, State::Closed) => t.tcp_closed,
        (PROTO_TCP, State::New) => t.tcp_syn,
        (PROTO_TCP, State::Established) => t.tcp_established,
        (PROTO_TCP, State::Closing) => t.tcp_closing,
        (PROTO_SCTP, State::Established) => t.tcp_established,
        (PROTO_ICMP | PROTO_ICMPV6, _) => t.icmp,
        (_, State::New) => t.udp_new,
        _ => t.udp_replied,
    };
    ms.min(u32::MAX as u64) as u32
}

/// Whether a protocol's first packet may create a connection.
pub fn may_start(l4: &L4) -> bool {
    !matches!(
        l4,
        L4::Echo { request: false, .. } | L4::IcmpError { .. } | L4::Fragment
    )
}

/// Protocols whose echo identifier stands in for ports.
pub fn is_icmp(proto: u8) -> bool {
    proto == PROTO_ICMP || proto == PROTO_ICMPV6
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip_proto::UDP as PROTO_UDP;
    use std::net::IpAddr;

    fn t(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> FlowTuple {
        FlowTuple {
            src: src.parse::<IpAddr>().unwrap(),
            dst: dst.parse::<IpAddr>().unwrap(),
            proto,
            sport,
            dport,
        }
    }

    #[test]
    fn both_directions_find_one_entry() {
        let mut ct = Conntrack::new(8, Timeouts::default());
        let fwd = t("10.0.0.2", "10.0.0.1", PROTO_TCP, 40000, 80);
        let syn = L4::Tcp {
            sport: 40000,
            dport: 80,
            flags: TCP_SYN,
        };
        let r = ct.create(&fwd, &syn, 0, 1).unwrap();
        let back = t("10.0.0.1", "10.0.0.2", PROTO_TCP, 80, 40000);
        assert_eq!(ct.lookup(&fwd, 1), Some((r, Dir::Orig)));
        assert_eq!(ct.lookup(&back, 1), Some((r, Dir::Reply)));
        assert_eq!(ct.get(r).unwrap().state, State::New);
        ct.update(
            r,
            Dir::Reply,
            &L4::Tcp {
                sport: 80,
                dport: 40000,
                flags: TCP_SYN | TCP_ACK,
            },
            2,
        );
        assert_eq!(ct.get(r).unwrap().state, State::Established);
        assert_eq!(ct.orig_tuple(r), Some(fwd));
    }

    #[test]
    fn a_full_table_refuses_and_expiry_frees() {
        let mut ct = Conntrack::new(2, Timeouts::default());
        let udp = |p| {
            (
                t("10.0.0.2", "10.0.0.1", PROTO_UDP, p, 53),
                L4::Udp {
                    sport: p,
                    dport: 53,
                },
            )
        };
        for p in [1, 2] {
            let (tu, l4) = udp(p);
            ct.create(&tu, &l4, 0, 1).unwrap();
        }
        let (tu, l4) = udp(3);
        assert_eq!(ct.create(&tu, &l4, 0, 1), Err(CtError::Full));
        assert_eq!(ct.sweep(30_001, 10), 2, "unreplied UDP expires after 30 s");
        assert!(ct.create(&tu, &l4, 30_001, 1).is_ok());
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
        let ra = ct.create(&a, &l4, 0, 1).unwrap();
        ct.remove(ra);
        let rb = ct.create(&b, &l4, 0, 1).unwrap();
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
        let first = ct.create(&a_to_b, &echo, 0, 1).unwrap();
        let second = ct.create(&b_to_a, &echo, 1, 1).unwrap();
        assert_eq!(ct.len(), 1, "one connection per key");
        assert!(
            ct.get(first).is_none(),
            "the old entry is gone, not orphaned"
        );
        assert_eq!(ct.lookup(&b_to_a, 2), Some((second, Dir::Orig)));
        assert_eq!(ct.entries().count(), 1);
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
