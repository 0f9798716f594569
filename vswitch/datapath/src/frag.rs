//! Fragments: non-first IPv4/IPv6 fragments carry no ports, so they cannot
//! be checked against policy by themselves. The first fragment is checked
//! like any packet; its decision is remembered for a short time under
//! the datagram's key (source, destination, identification, and for IPv4
//! the protocol), and later fragments follow it. A fragment whose first
//! fragment is unknown (never seen, denied, expired, forgotten, or arriving
//! out of order) is dropped: fragments are never a way around policy.
//!
//! The table is bounded and shared fairly between sources (the port a
//! first fragment came in on: a pod, or a remote node). When it is full, a
//! new datagram is always remembered, in place of the oldest datagram of
//! the source that holds the most entries (the newcomer's own when it is
//! among the heaviest): a pod that floods first fragments churns its own
//! entries and leaves the others theirs (no source loses an entry while
//! another holds more). Each source's datagrams wait in a queue, oldest
//! first, and the sources are ordered by their number of entries, so an
//! insert costs a few hash and tree operations whatever the table holds;
//! expired entries go at housekeeping. The keys are what pods send, so the map's hash is
//! keyed (`keyed_hash`: a random key per table), not one a pod can aim at.

use std::collections::{BTreeSet, VecDeque};
use std::net::IpAddr;

use super::PortId;
use super::flow_cache::Forward;
use super::keyed_hash;
use super::nat::Rewrite;
use super::parse::{Frag, IpPacket};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub id: u32,
}

impl FragKey {
    /// The datagram a fragment belongs to, as its receiver reassembles it:
    /// IPv4 by addresses, protocol and identification (RFC 791), IPv6 by
    /// addresses and identification (RFC 8200: the next header after the
    /// Fragment header is the upper layer in the first fragment only).
    pub fn of(ip: &IpPacket, f: Frag) -> FragKey {
        FragKey {
            src: ip.src,
            dst: ip.dst,
            proto: if ip.src.is_ipv6() { 0 } else { ip.proto },
            id: f.id,
        }
    }
}

/// A remembered first fragment.
struct Remembered {
    fwd: Forward,
    /// The first fragment's translation (a Service's), which the later
    /// ones get too.
    nat: Rewrite,
    until: u64,
}

pub struct FragTable {
    map: keyed_hash::Map<FragKey, Remembered>,
    /// Each source's keys, oldest first: one per entry of `map`.
    queues: keyed_hash::Map<PortId, VecDeque<FragKey>>,
    /// (entries, source) of every source that holds any: the heaviest last.
    by_size: BTreeSet<(usize, PortId)>,
    max: usize,
    ttl_ms: u64,
}

impl FragTable {
    pub fn new(max: usize, ttl_ms: u64) -> FragTable {
        FragTable {
            map: keyed_hash::Map::with_hasher(keyed_hash::state()),
            queues: keyed_hash::Map::with_hasher(keyed_hash::state()),
            by_size: BTreeSet::new(),
            max,
            ttl_ms,
        }
    }

    /// Remembers the decision of a first fragment that came from `source`.
    /// When the table is full, the heaviest source's oldest entry goes.
    pub fn remember(&mut self, key: FragKey, source: PortId, fwd: Forward, nat: Rewrite, now: u64) {
        let until = now + self.ttl_ms;
        if let Some(e) = self.map.get_mut(&key) {
            // the same datagram again: refreshed where it is (in the queue
            // of the source that sent it first)
            *e = Remembered { fwd, nat, until };
            return;
        }
        if self.max == 0 {
            return;
        }
        if self.map.len() >= self.max {
            self.evict_for(source);
        }
        self.map.insert(key, Remembered { fwd, nat, until });
        let q = self.queues.entry(source).or_default();
        q.push_back(key);
        let n = q.len();
        if n > 1 {
            self.by_size.remove(&(n - 1, source));
        }
        self.by_size.insert((n, source));
    }

    /// Forgets the oldest entry of the heaviest source, or of `source`
    /// itself when it holds as many.
    fn evict_for(&mut self, source: PortId) {
        let Some(&(most, heaviest)) = self.by_size.last() else {
            return;
        };
        let own = self.queues.get(&source).map_or(0, VecDeque::len);
        let victim = if own >= most { source } else { heaviest };
        let Some(q) = self.queues.get_mut(&victim) else {
            return;
        };
        let n = q.len();
        if let Some(key) = q.pop_front() {
            self.map.remove(&key);
        }
        self.by_size.remove(&(n, victim));
        if n > 1 {
            self.by_size.insert((n - 1, victim));
        } else {
            self.queues.remove(&victim);
        }
    }

    /// The decision for a later fragment, if its first fragment passed and
    /// is still remembered.
    pub fn follow(&self, key: &FragKey, now: u64) -> Option<(Forward, Rewrite)> {
        self.map
            .get(key)
            .filter(|e| e.until >= now)
            .map(|e| (e.fwd, e.nat))
    }

    /// Housekeeping: forgets expired entries (a pass over the table).
    pub fn expire(&mut self, now: u64) {
        self.map.retain(|_, e| e.until >= now);
        let map = &self.map;
        self.queues.retain(|_, q| {
            q.retain(|k| map.contains_key(k));
            !q.is_empty()
        });
        self.by_size = self.queues.iter().map(|(s, q)| (q.len(), *s)).collect();
    }

    /// Entries in all.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Entries held for `source`.
    #[cfg(test)]
    pub fn held_by(&self, source: PortId) -> usize {
        self.queues.get(&source).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: u8, id: u32) -> FragKey {
        FragKey {
            src: IpAddr::from([10, 0, 0, src]),
            dst: IpAddr::from([10, 0, 0, 99]),
            proto: 17,
            id,
        }
    }

    fn fwd() -> Forward {
        Forward {
            port: 9,
            routed: false,
            src_mac: [0; 6],
            dst_mac: [0; 6],
            mtu: 0,
        }
    }

    /// Every entry in exactly one queue, the sizes as the queues say.
    fn consistent(t: &FragTable) {
        let queued: usize = t.queues.values().map(VecDeque::len).sum();
        assert_eq!(queued, t.map.len());
        assert!(t.map.len() <= t.max);
        assert_eq!(t.by_size.len(), t.queues.len());
        for (n, s) in &t.by_size {
            assert_eq!(t.held_by(*s), *n);
        }
        let keys: std::collections::HashSet<_> = t.queues.values().flatten().collect();
        assert_eq!(keys.len(), queued, "no key in two places");
        assert!(keys.iter().all(|k| t.map.contains_key(k)));
    }

    #[test]
    fn a_heavy_source_gives_way_until_shares_are_even() {
        let mut t = FragTable::new(100, 1000);
        for id in 0..100 {
            t.remember(key(1, id), 1, fwd(), Rewrite::default(), 0);
        }
        assert_eq!(t.held_by(1), 100);
        // three newcomers, one datagram at a time: source 1 pays for each
        for id in 0..20 {
            for s in 2..=4u16 {
                t.remember(key(s as u8, id), s, fwd(), Rewrite::default(), 0);
            }
            consistent(&t);
        }
        assert_eq!(t.len(), 100);
        assert_eq!(t.held_by(1), 40);
        // now all four flood: the shares meet at a quarter each
        for id in 1000..1400 {
            for s in 1..=4u16 {
                t.remember(key(s as u8, id), s, fwd(), Rewrite::default(), 0);
            }
        }
        consistent(&t);
        for s in 1..=4u16 {
            assert_eq!(t.held_by(s), 25, "source {s}");
        }
    }

    #[test]
    fn expiry_keeps_the_queues_and_sizes_true() {
        let mut t = FragTable::new(10, 100);
        for id in 0..6 {
            t.remember(key(1, id), 1, fwd(), Rewrite::default(), id as u64 * 10);
        }
        t.remember(key(2, 0), 2, fwd(), Rewrite::default(), 90);
        t.remember(key(1, 0), 1, fwd(), Rewrite::default(), 95); // refreshed in place
        assert_eq!(t.follow(&key(1, 1), 111), None, "expired");
        t.expire(125);
        consistent(&t);
        // 0 (refreshed), 3, 4, 5 of source 1; source 2's one
        assert_eq!((t.held_by(1), t.held_by(2)), (4, 1));
        assert!(t.follow(&key(1, 0), 125).is_some());
        t.expire(1000);
        consistent(&t);
        assert_eq!(t.len(), 0);
    }
}
