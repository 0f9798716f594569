//! The flow cache: an exact-match table per worker that lets the packets of
//! an established connection skip the slow path.
//!
//! # What
//! Key: the port a frame came in on, its addresses, protocol and ports
//! ([`FlowKey`], read at fixed offsets by [`super::parse::fast_key`]).
//! Value: what the slow path decided for that flow: the output port and the
//! MAC/TTL rewrite, the conntrack handle, and the epoch it was computed
//! under.
//!
//! # How
//! A hit needs the current epoch and a live, unexpired conntrack entry (the
//! handle refreshes it without a hash lookup); then the frame is rewritten
//! and sent without parsing beyond the key, without conntrack lookup and
//! without policy. TCP packets with SYN, FIN or RST never take the fast path,
//! since they change connection state.
//!
//! # Invalidation
//! The datapath's epoch changes with every policy generation and every port
//! change; an entry from an older epoch is a miss, the slow path re-checks
//! the flow (policy, conntrack) and overwrites the entry. A closed or expired
//! connection makes its entries misses too. `sweep` removes dead entries.
//!
//! # Insertion and bounds
//! Only flows whose connection is established (both sides have spoken) are
//! inserted, so a port scan, whose probes never get answers, cannot thrash
//! the cache. The cache never grows past its size; when full, new flows
//! simply stay on the slow path until a sweep frees room.
//!
//! # Threading
//! One cache per worker, owned, never shared: no locks, no atomics.

use rustc_hash::FxHashMap;

use super::conntrack::CtRef;
use super::parse::{FlowKey, Mac};

/// What the slow path decided about a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub port: u16,
    /// Routed by the gateway: rewrite MACs and decrement TTL/hop limit.
    pub routed: bool,
    pub src_mac: Mac,
    pub dst_mac: Mac,
}

#[derive(Debug, Clone, Copy)]
pub struct CacheEntry {
    pub fwd: Forward,
    pub ct: CtRef,
    pub epoch: u64,
}

pub struct FlowCache {
    map: FxHashMap<FlowKey, CacheEntry>,
    max: usize,
}

impl FlowCache {
    pub fn new(max: usize) -> FlowCache {
        FlowCache {
            map: FxHashMap::with_capacity_and_hasher(max, Default::default()),
            max,
        }
    }

    #[inline(always)]
    pub fn get(&self, key: &FlowKey) -> Option<&CacheEntry> {
        self.map.get(key)
    }

    /// Inserts or overwrites; returns false when the cache is full.
    pub fn insert(&mut self, key: FlowKey, entry: CacheEntry) -> bool {
        if self.map.len() >= self.max && !self.map.contains_key(&key) {
            return false;
        }
        self.map.insert(key, entry);
        true
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Removes entries for which `dead` holds.
    pub fn sweep(&mut self, mut dead: impl FnMut(&CacheEntry) -> bool) -> usize {
        let before = self.map.len();
        self.map.retain(|_, e| !dead(e));
        before - self.map.len()
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    pub fn entries(&self) -> impl Iterator<Item = (&FlowKey, &CacheEntry)> {
        self.map.iter()
    }
}
